#include "backflow/destinations/google_sheets/google_sheets_destination.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/common/status_macros.h"
#include "backflow/common/url.h"
#include "backflow/delivery/google_service_account.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/destinations/destination.h"
#include "fmt/format.h"
#include "fmt/ranges.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kDefaultBaseUrl[] = "https://sheets.googleapis.com";
constexpr char kDefaultTokenUrl[] = "https://oauth2.googleapis.com/token";
constexpr int64_t kDefaultRequestsPerMinute = 60;
constexpr int kDefaultMaxRetries = 6;
// Google asks for truncated exponential backoff after a 429 (the quota
// refills each minute): 2, 4, 8, ... s ceilings with full jitter.
constexpr std::chrono::milliseconds kBaseBackoff{2000};
constexpr int64_t kMaxExactInt = int64_t{1} << 53;
constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
// Per deleteDimension request list, to stay far below the payload limit.
constexpr size_t kMaxDeletesPerRequest = 5000;
// JSON around a row in a request body: the range and the brackets.
constexpr size_t kRowOverheadBytes = 64;

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

struct SheetsConfig {
  GoogleServiceAccountKey key;
  std::string spreadsheet_id;
  std::string sheet;
  std::string token_url;
  std::string subject;
  int64_t reads_per_minute = kDefaultRequestsPerMinute;
  int64_t writes_per_minute = kDefaultRequestsPerMinute;
  HttpSettings http;
};

// Google's error envelope: {"error":{"code":403,"message":"...","status":"PERMISSION_DENIED"}}.
struct GoogleError {
  std::string status;
  std::string message;
};

GoogleError ParseGoogleError(const HttpResponse& r) {
  GoogleError out;
  json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_object() && body.contains("error") && body["error"].is_object()) {
    const json& e = body["error"];
    if (e.contains("status") && e["status"].is_string()) out.status = e["status"];
    if (e.contains("message") && e["message"].is_string()) out.message = e["message"];
  }
  if (out.message.empty()) out.message = BodySnippet(r.body);
  return out;
}

bool IsStop(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnauthenticated ||
         s.code() == absl::StatusCode::kPermissionDenied ||
         s.code() == absl::StatusCode::kFailedPrecondition;
}

// A sheet that cannot be prepared (a 400 for the header, say) stops the run
// as a configuration problem; transient and quota errors keep their class.
absl::Status SetUpError(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kInvalidArgument) {
    return absl::FailedPreconditionError(
        fmt::format("could not prepare the sheet's header row: {}", s.message()));
  }
  return s;
}

// A record's value as a cell for valueInputOption=RAW: strings, numbers
// and booleans as-is; NULL as "" (writing null would leave the old value);
// integers beyond 2^53 and non-finite numbers as text (a cell holds a
// double); objects and arrays as their JSON text.
json CellValue(const Value& v) {
  json j = ValueToJson(v);
  switch (j.type()) {
    case json::value_t::null:
    case json::value_t::discarded:
      return "";
    case json::value_t::number_integer: {
      int64_t i = j.get<int64_t>();
      if (i > kMaxExactInt || i < -kMaxExactInt) return j.dump();
      return j;
    }
    case json::value_t::number_unsigned:
      if (j.get<uint64_t>() > static_cast<uint64_t>(kMaxExactInt)) return j.dump();
      return j;
    case json::value_t::number_float: {
      double d = j.get<double>();
      if (!std::isfinite(d)) return std::isnan(d) ? "NaN" : (d > 0 ? "Infinity" : "-Infinity");
      return j;
    }
    case json::value_t::object:
    case json::value_t::array:
    case json::value_t::binary:
      return Dump(j);
    default:
      return j;
  }
}

class GoogleSheetsDestination final : public Destination {
 public:
  GoogleSheetsDestination(SheetsConfig cfg, std::unique_ptr<JwtBearerTokenSource> tokens,
                          HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)),
        tokens_(std::move(tokens)),
        http_(http),
        clock_(clock),
        read_limiter_(*clock, cfg_.reads_per_minute, std::chrono::minutes(1)),
        write_limiter_(*clock, cfg_.writes_per_minute, std::chrono::minutes(1)),
        user_limiter_(cfg_.http.UserLimiter(*clock)) {}

  absl::Status CheckConnection() override;
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override;

  const SheetsConfig& config() const { return cfg_; }
  Clock* clock() const { return clock_; }

  // Reads and writes, paced by the per-minute limiters. Reads and
  // idempotent writes are sent with retries (429, 5xx, transport errors);
  // writes that must not be repeated blindly are sent once (retry = false)
  // and the caller re-reads the sheet before trying again.
  HttpDelivery Reads() { return Delivery(&read_limiter_); }
  HttpDelivery Writes() { return Delivery(&write_limiter_); }

  // A write that must never reach the sheet twice (append, deleteDimension).
  HttpRequest OnceOnlyRequest(std::string method, std::string url, std::string body) const {
    HttpRequest req = Request(std::move(method), std::move(url), std::move(body));
    req.idempotent = false;
    return req;
  }

  HttpRequest Request(std::string method, std::string url, std::string body = "") const {
    HttpRequest req;
    req.method = std::move(method);
    req.url = std::move(url);
    req.body = std::move(body);
    req.timeout = cfg_.http.timeout;
    if (req.method != "GET") req.headers.emplace_back("Content-Type", "application/json");
    req.headers.emplace_back("Accept", "application/json");
    req.headers.emplace_back("User-Agent", kUserAgent);
    return req;
  }

  std::string SpreadsheetUrl() const {
    return cfg_.http.base_url + "/v4/spreadsheets/" + PercentEncode(cfg_.spreadsheet_id);
  }
  std::string ValuesUrl(std::string_view range) const {
    return SpreadsheetUrl() + "/values/" + PercentEncode(range);
  }
  std::string SheetRange(std::string_view a1) const {
    return SheetsQuotedName(cfg_.sheet) + "!" + std::string(a1);
  }

  // The status a failed exchange maps to; `op` says what was attempted.
  absl::Status Failure(const DeliveryResult& d, std::string_view op) const;

  struct SheetInfo {
    int64_t sheet_id = 0;
    int64_t rows = 0;
    int64_t columns = 0;
  };
  // Finds the configured sheet in the spreadsheet's metadata.
  absl::StatusOr<SheetInfo> ReadSheetInfo(HttpDelivery& reads, bool retry = true);
  // The header row's cells as text (trailing empty cells left out).
  absl::StatusOr<std::vector<std::string>> ReadHeader(HttpDelivery& reads, bool retry = true);

 private:
  HttpDelivery Delivery(RateLimiter* limiter) {
    RetryPolicy policy = cfg_.http.retry;
    policy.base_backoff = kBaseBackoff;
    return HttpDelivery(http_, clock_, {limiter, user_limiter_.get()}, policy, VendorRules{},
                        tokens_.get());
  }

  SheetsConfig cfg_;
  std::unique_ptr<JwtBearerTokenSource> tokens_;
  HttpClient* http_;
  Clock* clock_;
  RateLimiter read_limiter_;
  RateLimiter write_limiter_;
  std::unique_ptr<RateLimiter> user_limiter_;
};

absl::Status GoogleSheetsDestination::Failure(const DeliveryResult& d, std::string_view op) const {
  if (!d.auth_error.ok()) return d.auth_error;
  if (!d.response.ok()) {
    const absl::Status& s = d.response.status();
    std::string message =
        fmt::format("could not reach Google Sheets at {} to {} {}: {}", cfg_.http.base_url, op,
                    d.AttemptsText(), std::string(s.message()));
    return s.code() == absl::StatusCode::kDeadlineExceeded ? absl::DeadlineExceededError(message)
                                                           : absl::UnavailableError(message);
  }
  const HttpResponse& r = *d.response;
  GoogleError e = ParseGoogleError(r);
  std::string said = e.status.empty() ? e.message : e.status + ": " + e.message;
  switch (r.status) {
    case 401:
      return absl::UnauthenticatedError(fmt::format(
          "Google Sheets refused the access token of {} (HTTP 401) even after minting a new one: "
          "check that service_account_key is a current key of an enabled service account. "
          "Google said: {}",
          cfg_.key.client_email, said));
    case 403:
      if (e.message.find("has not been used") != std::string::npos ||
          e.message.find("is disabled") != std::string::npos ||
          r.body.find("SERVICE_DISABLED") != std::string::npos) {
        return absl::PermissionDeniedError(fmt::format(
            "the Google Sheets API is not enabled for the service account's project{}: enable "
            "it (APIs & Services > Library > Google Sheets API) and retry in a few minutes. "
            "Google said: {}",
            cfg_.key.project_id.empty() ? "" : " (" + cfg_.key.project_id + ")", said));
      }
      return absl::PermissionDeniedError(fmt::format(
          "{} may not {} in spreadsheet {} (HTTP 403): share the spreadsheet with {} as an Editor "
          "(Share button in Google Sheets). Google said: {}",
          cfg_.key.client_email, op, cfg_.spreadsheet_id, cfg_.key.client_email, said));
    case 404:
      return absl::FailedPreconditionError(fmt::format(
          "spreadsheet {} was not found (HTTP 404): check spreadsheet_id (the part of the sheet's "
          "URL after /spreadsheets/d/) and base_url ({}). Google said: {}",
          cfg_.spreadsheet_id, cfg_.http.base_url, said));
    case 429: {
      return absl::ResourceExhaustedError(fmt::format(
          "Google Sheets quota exceeded while trying to {} (HTTP 429) {}; the quota refills "
          "every minute: lower write_requests_per_minute / read_requests_per_minute if other "
          "tools share the service account, or raise the quota. Google said: {}",
          op, d.AttemptsText(), said));
    }
    default:
      break;
  }
  if (r.status == 400 && (e.message.find("exceeds grid limits") != std::string::npos ||
                          e.message.find("above the limit of") != std::string::npos)) {
    return absl::FailedPreconditionError(fmt::format(
        "Google Sheets refused to {}: the spreadsheet is at a size limit (HTTP 400). Remove "
        "other sheets or data, or sync fewer rows or columns. Google said: {}",
        op, said));
  }
  if (r.status == 408 || r.status >= 500) {
    return absl::UnavailableError(
        fmt::format("Google Sheets answered HTTP {} to the request to {} {}: {}", r.status, op,
                    d.AttemptsText(), said));
  }
  return absl::InvalidArgumentError(
      fmt::format("Google Sheets rejected the request to {} (HTTP {}): {}", op, r.status, said));
}

absl::StatusOr<GoogleSheetsDestination::SheetInfo> GoogleSheetsDestination::ReadSheetInfo(
    HttpDelivery& reads, bool retry) {
  std::string url = SpreadsheetUrl() +
                    "?fields=" + PercentEncode("sheets.properties(sheetId,title,gridProperties)");
  DeliveryResult d = reads.Send([&] { return Request("GET", url); }, retry);
  if (!d.response.ok() || d.response->status != 200) {
    return Failure(d, "read the list of sheets");
  }
  json body = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> titles;
  if (body.is_object() && body.contains("sheets") && body["sheets"].is_array()) {
    for (const json& s : body["sheets"]) {
      if (!s.is_object() || !s.contains("properties")) continue;
      const json& p = s["properties"];
      std::string title = p.value("title", "");
      if (title == cfg_.sheet) {
        SheetInfo info;
        info.sheet_id = p.value("sheetId", int64_t{0});
        json grid = p.value("gridProperties", json::object());
        info.rows = grid.value("rowCount", int64_t{1000});
        info.columns = grid.value("columnCount", int64_t{26});
        return info;
      }
      titles.push_back(fmt::format("\"{}\"", title));
    }
  }
  return absl::FailedPreconditionError(fmt::format(
      "spreadsheet {} has no sheet named \"{}\" (it has: {}): set sheet to one of them, or add "
      "a sheet with that name",
      cfg_.spreadsheet_id, cfg_.sheet,
      titles.empty() ? "none" : fmt::format("{}", fmt::join(titles, ", "))));
}

absl::StatusOr<std::vector<std::string>> GoogleSheetsDestination::ReadHeader(HttpDelivery& reads,
                                                                             bool retry) {
  std::string url = ValuesUrl(SheetRange("1:1")) + "?valueRenderOption=UNFORMATTED_VALUE";
  DeliveryResult d = reads.Send([&] { return Request("GET", url); }, retry);
  if (!d.response.ok() || d.response->status != 200) {
    return Failure(d, "read the header row");
  }
  json body = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> header;
  if (body.is_object() && body.contains("values") && body["values"].is_array() &&
      !body["values"].empty() && body["values"][0].is_array()) {
    for (const json& cell : body["values"][0]) header.push_back(SheetsKeyText(cell));
  }
  while (!header.empty() && header.back().empty()) header.pop_back();
  return header;
}

absl::Status GoogleSheetsDestination::CheckConnection() {
  absl::StatusOr<std::string> token = tokens_->Token(false);
  if (!token.ok()) return token.status();
  HttpDelivery reads = Reads();
  absl::StatusOr<SheetInfo> info = ReadSheetInfo(reads, /*retry=*/false);
  if (!info.ok()) return info.status();
  absl::StatusOr<std::vector<std::string>> header = ReadHeader(reads, /*retry=*/false);
  return header.status();
}

// One record, checked and converted, ready to be written.
struct Prepared {
  std::string key;
  std::vector<json> cells;  // per layout field; empty for deletes
  size_t bytes = 0;         // estimated size of its row in a request body
  bool is_delete = false;
  absl::Status status;
};

class SheetsSession final : public ActionSession {
 public:
  SheetsSession(GoogleSheetsDestination* dest, SessionOptions options)
      : dest_(dest),
        options_(std::move(options)),
        reads_(dest->Reads()),
        writes_(dest->Writes()),
        rng_(std::random_device{}()) {
    const std::vector<std::string>& fields = options_.layout.fields;
    key_field_ = static_cast<size_t>(
        std::find(fields.begin(), fields.end(), options_.layout.identity.front()) - fields.begin());
  }

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override;
  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  // Reads the sheet's metadata and header, adds missing header names (and
  // grid columns) and resolves each field's column.
  absl::Status SetUp();
  Prepared Prepare(const OutgoingRecord& record) const;
  // The record's row from column A: its cells at their columns, null (left
  // as it is) in the columns the mapping does not write.
  json RowJson(const Prepared& p) const;
  // key -> 1-based row numbers, from the header check and key column read.
  absl::StatusOr<std::map<std::string, std::vector<int64_t>>> ReadKeys();
  absl::StatusOr<PartOutcome> SendPart(std::span<const Prepared* const> part);
  // Writes that each return OK, or the failure of the first request that failed.
  absl::Status UpdateRows(const std::vector<std::pair<const Prepared*, int64_t>>& rows);
  absl::Status DeleteRows(std::vector<int64_t> rows);
  absl::Status AppendRows(const std::vector<const Prepared*>& rows, std::vector<bool>& done_rows);
  void Backoff(int attempt);

  GoogleSheetsDestination* dest_;
  SessionOptions options_;
  HttpDelivery reads_;
  HttpDelivery writes_;
  std::mt19937_64 rng_;
  size_t key_field_ = 0;  // index in layout.fields of the key field

  bool set_up_ = false;
  int64_t sheet_id_ = 0;
  std::vector<int> columns_;  // 0-based column per layout field
  int width_ = 0;             // columns written per row (A .. last mapped)
};

absl::Status SheetsSession::SetUp() {
  const std::vector<std::string>& fields = options_.layout.fields;
  absl::Status last;
  for (int attempt = 0; attempt <= 2; ++attempt) {
    if (attempt > 0) Backoff(attempt);
    absl::StatusOr<GoogleSheetsDestination::SheetInfo> info = dest_->ReadSheetInfo(reads_);
    if (!info.ok()) return info.status();
    absl::StatusOr<std::vector<std::string>> header = dest_->ReadHeader(reads_);
    if (!header.ok()) return header.status();
    std::vector<int> columns;
    std::vector<std::string> missing;
    const int first_new = static_cast<int>(header->size());
    for (const std::string& f : fields) {
      auto it = std::find(header->begin(), header->end(), f);
      if (it != header->end()) {
        columns.push_back(static_cast<int>(it - header->begin()));
      } else {
        columns.push_back(first_new + static_cast<int>(missing.size()));
        missing.push_back(f);
      }
    }
    int width = *std::max_element(columns.begin(), columns.end()) + 1;
    if (width > info->columns) {
      // The grid must have the columns before values can be written there.
      json body = {{"requests",
                    {{{"appendDimension",
                       {{"sheetId", info->sheet_id},
                        {"dimension", "COLUMNS"},
                        {"length", width - info->columns}}}}}}};
      std::string text = Dump(body);
      std::string url = dest_->SpreadsheetUrl() + ":batchUpdate";
      DeliveryResult d =
          writes_.Send([&] { return dest_->OnceOnlyRequest("POST", url, text); }, /*retry=*/false);
      if (!d.response.ok() || d.response->status != 200) {
        last = dest_->Failure(d, "add columns to the sheet");
        if (IsRetryable(last)) continue;  // re-read: the columns may have been added
        return SetUpError(last);
      }
    }
    if (!missing.empty()) {
      std::string range = dest_->SheetRange(
          fmt::format("{}1:{}1", SheetsColumnName(first_new),
                      SheetsColumnName(first_new + static_cast<int>(missing.size()) - 1)));
      json names = json::array();
      for (const std::string& m : missing) names.push_back(m);
      std::string text = Dump({{"range", range}, {"majorDimension", "ROWS"}, {"values", {names}}});
      std::string url = dest_->ValuesUrl(range) + "?valueInputOption=RAW";
      DeliveryResult d = writes_.Send([&] { return dest_->Request("PUT", url, text); });
      if (!d.response.ok() || d.response->status != 200) {
        return SetUpError(dest_->Failure(d, "write the header row"));
      }
    }
    sheet_id_ = info->sheet_id;
    columns_ = std::move(columns);
    width_ = width;
    set_up_ = true;
    return absl::OkStatus();
  }
  return last;
}

Prepared SheetsSession::Prepare(const OutgoingRecord& record) const {
  Prepared p;
  p.is_delete = record.is_delete();
  const Value* key_value = nullptr;
  if (p.is_delete) {
    if (!record.values.empty()) key_value = &record.values.front();
  } else if (key_field_ < record.values.size()) {
    key_value = &record.values[key_field_];
  }
  if (key_value != nullptr) p.key = SheetsKeyText(CellValue(*key_value));
  if (p.key.empty()) {
    p.status = absl::InvalidArgumentError(fmt::format(
        "the key field \"{}\" is empty, so the record's row cannot be found: make sure the "
        "model's unique identifier is never empty",
        options_.layout.identity.front()));
    return p;
  }
  if (p.is_delete) return p;
  const std::vector<std::string>& fields = options_.layout.fields;
  p.bytes = kRowOverheadBytes + 2 * dest_->config().sheet.size() + 5 * static_cast<size_t>(width_);
  for (size_t i = 0; i < fields.size() && i < record.values.size(); ++i) {
    json cell = CellValue(record.values[i]);
    if (cell.is_string()) {
      size_t chars = 0;  // UTF-8 code points
      for (unsigned char ch : cell.get_ref<const std::string&>()) chars += (ch & 0xC0) != 0x80;
      if (chars > kSheetsMaxCellChars) {
        p.status = absl::InvalidArgumentError(fmt::format(
            "field \"{}\" has {} characters, more than the {} a Google Sheets cell holds, so the "
            "row was not written: shorten the value in the model (e.g. left(column, 50000))",
            fields[i], chars, kSheetsMaxCellChars));
        return p;
      }
    }
    p.bytes += Dump(cell).size() + 1;
    p.cells.push_back(std::move(cell));
  }
  if (p.bytes > kSheetsMaxRequestBytes) {
    p.status = absl::InvalidArgumentError(fmt::format(
        "the row is {} bytes as JSON, over the {} bytes Backflow sends to Google Sheets per "
        "request: map fewer or shorter fields",
        p.bytes, kSheetsMaxRequestBytes));
  }
  return p;
}

json SheetsSession::RowJson(const Prepared& p) const {
  json row = json::array();
  for (int c = 0; c < width_; ++c) row.push_back(nullptr);
  for (size_t i = 0; i < p.cells.size() && i < columns_.size(); ++i) row[columns_[i]] = p.cells[i];
  return row;
}

absl::StatusOr<std::map<std::string, std::vector<int64_t>>> SheetsSession::ReadKeys() {
  for (int pass = 0; pass < 2; ++pass) {
    std::string key_col = SheetsColumnName(columns_[key_field_]);
    std::string url =
        dest_->SpreadsheetUrl() +
        "/values:batchGet?ranges=" + PercentEncode(dest_->SheetRange("1:1")) +
        "&ranges=" + PercentEncode(dest_->SheetRange(fmt::format("{0}2:{0}", key_col))) +
        "&majorDimension=COLUMNS&valueRenderOption=UNFORMATTED_VALUE";
    DeliveryResult d = reads_.Send([&] { return dest_->Request("GET", url); });
    if (!d.response.ok() || d.response->status != 200) {
      absl::Status s = dest_->Failure(d, "read the key column");
      if (s.code() == absl::StatusCode::kInvalidArgument) {
        // A range Google cannot parse: the sheet was renamed or removed.
        return absl::FailedPreconditionError(fmt::format("{}; check that sheet \"{}\" still exists",
                                                         s.message(), dest_->config().sheet));
      }
      return s;
    }
    json body = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
    auto ranges = body.is_object() ? body.find("valueRanges") : body.end();
    if (ranges == body.end() || !ranges->is_array() || ranges->size() != 2) {
      return absl::UnavailableError(
          fmt::format("Google Sheets answered values:batchGet without two valueRanges: {}",
                      BodySnippet(d.response->body)));
    }
    auto column_cells = [](const json& range) -> std::vector<json> {
      // majorDimension=COLUMNS: "values" is a list of columns.
      std::vector<json> out;
      auto v = range.find("values");
      if (v == range.end() || !v->is_array()) return out;
      for (const json& column : *v) out.push_back(column.is_array() ? column : json::array());
      return out;
    };
    std::vector<json> header_columns = column_cells((*ranges)[0]);
    bool header_ok = true;
    for (size_t i = 0; i < columns_.size(); ++i) {
      size_t c = static_cast<size_t>(columns_[i]);
      std::string name = c < header_columns.size() && !header_columns[c].empty()
                             ? SheetsKeyText(header_columns[c][0])
                             : "";
      if (name != options_.layout.fields[i]) header_ok = false;
    }
    if (!header_ok) {
      // Someone moved or renamed header cells since the session started.
      if (pass == 1) {
        return absl::FailedPreconditionError(fmt::format(
            "the header row of sheet \"{}\" keeps changing while syncing: row 1 must hold the "
            "mapped field names; leave it alone during syncs",
            dest_->config().sheet));
      }
      BACKFLOW_RETURN_IF_ERROR(SetUp());
      continue;
    }
    std::map<std::string, std::vector<int64_t>> rows;
    std::vector<json> key_columns = column_cells((*ranges)[1]);
    if (!key_columns.empty()) {
      const json& cells = key_columns.front();
      for (size_t i = 0; i < cells.size(); ++i) {
        std::string key = SheetsKeyText(cells[i]);
        if (!key.empty()) rows[key].push_back(static_cast<int64_t>(i) + 2);
      }
    }
    return rows;
  }
  return absl::InternalError("unreachable");
}

absl::Status SheetsSession::UpdateRows(
    const std::vector<std::pair<const Prepared*, int64_t>>& rows) {
  const std::string url = dest_->SpreadsheetUrl() + "/values:batchUpdate";
  const std::string last_col = SheetsColumnName(width_ - 1);
  size_t begin = 0;
  while (begin < rows.size()) {
    json data = json::array();
    size_t bytes = 64;
    size_t end = begin;
    while (end < rows.size() &&
           (end == begin || bytes + rows[end].first->bytes <= kSheetsMaxRequestBytes)) {
      bytes += rows[end].first->bytes;
      data.push_back(
          {{"range", dest_->SheetRange(fmt::format("A{0}:{1}{0}", rows[end].second, last_col))},
           {"majorDimension", "ROWS"},
           {"values", {RowJson(*rows[end].first)}}});
      ++end;
    }
    std::string text = Dump({{"valueInputOption", "RAW"}, {"data", std::move(data)}});
    DeliveryResult d = writes_.Send([&] { return dest_->Request("POST", url, text); });
    if (!d.response.ok() || d.response->status != 200) return dest_->Failure(d, "update rows");
    begin = end;
  }
  return absl::OkStatus();
}

absl::Status SheetsSession::DeleteRows(std::vector<int64_t> rows) {
  // Bottom-up, merged into runs: deleting a row never moves a row above it,
  // so every index of the request (and of later requests) stays valid.
  std::sort(rows.begin(), rows.end(), std::greater<>());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  std::vector<std::pair<int64_t, int64_t>> runs;  // [start, end) 0-based
  for (int64_t r : rows) {
    int64_t index = r - 1;
    if (!runs.empty() && runs.back().first == index + 1) {
      runs.back().first = index;
    } else {
      runs.emplace_back(index, index + 1);
    }
  }
  const std::string url = dest_->SpreadsheetUrl() + ":batchUpdate";
  for (size_t begin = 0; begin < runs.size(); begin += kMaxDeletesPerRequest) {
    json requests = json::array();
    for (size_t i = begin; i < std::min(runs.size(), begin + kMaxDeletesPerRequest); ++i) {
      requests.push_back({{"deleteDimension",
                           {{"range",
                             {{"sheetId", sheet_id_},
                              {"dimension", "ROWS"},
                              {"startIndex", runs[i].first},
                              {"endIndex", runs[i].second}}}}}});
    }
    std::string text = Dump({{"requests", std::move(requests)}});
    DeliveryResult d =
        writes_.Send([&] { return dest_->OnceOnlyRequest("POST", url, text); }, /*retry=*/false);
    if (!d.response.ok() || d.response->status != 200) return dest_->Failure(d, "delete rows");
  }
  return absl::OkStatus();
}

absl::Status SheetsSession::AppendRows(const std::vector<const Prepared*>& rows,
                                       std::vector<bool>& done_rows) {
  // The table starts at A1 (the header), so rows are appended from column A.
  std::string range = dest_->SheetRange(fmt::format("A1:{}1", SheetsColumnName(width_ - 1)));
  const std::string url =
      dest_->ValuesUrl(range) + ":append?valueInputOption=RAW&" + "insertDataOption=INSERT_ROWS";
  size_t begin = 0;
  while (begin < rows.size()) {
    json values = json::array();
    size_t bytes = 128;
    size_t end = begin;
    while (end < rows.size() &&
           (end == begin || bytes + rows[end]->bytes <= kSheetsMaxRequestBytes)) {
      bytes += rows[end]->bytes;
      values.push_back(RowJson(*rows[end]));
      ++end;
    }
    std::string text =
        Dump({{"range", range}, {"majorDimension", "ROWS"}, {"values", std::move(values)}});
    DeliveryResult d =
        writes_.Send([&] { return dest_->OnceOnlyRequest("POST", url, text); }, /*retry=*/false);
    if (!d.response.ok() || d.response->status != 200) return dest_->Failure(d, "append rows");
    for (size_t i = begin; i < end; ++i) done_rows[i] = true;
    begin = end;
  }
  return absl::OkStatus();
}

void SheetsSession::Backoff(int attempt) {
  const RetryPolicy& policy = dest_->config().http.retry;
  double ceiling =
      static_cast<double>(kBaseBackoff.count()) * std::pow(2.0, std::min(attempt - 1, 30));
  ceiling = std::min(ceiling, static_cast<double>(policy.max_wait.count()));
  std::uniform_int_distribution<int64_t> dist(0, std::max<int64_t>(0, std::llround(ceiling)));
  dest_->clock()->SleepFor(std::chrono::milliseconds(dist(rng_)));
}

absl::StatusOr<PartOutcome> SheetsSession::SendPart(std::span<const Prepared* const> part) {
  const size_t n = part.size();
  std::vector<bool> done(n, false);
  bool any_done = false;
  absl::Status last = absl::UnavailableError("not sent");
  // Ends the part: records done are OK, the others carry `why`; a stop before
  // anything was written stops the run.
  auto finish = [&](const absl::Status& why) -> absl::StatusOr<PartOutcome> {
    if (IsStop(why) && !any_done) return why;
    std::vector<absl::Status> results(n);
    for (size_t i = 0; i < n; ++i) results[i] = done[i] ? absl::OkStatus() : why;
    return PartOutcome::PerRecord(std::move(results));
  };
  // What a failed step means: nullopt to read the sheet again and redo the
  // remaining records (the write may or may not have happened).
  auto on_failure = [&](const absl::Status& s,
                        bool idempotent) -> std::optional<absl::StatusOr<PartOutcome>> {
    last = s;
    if (s.code() == absl::StatusCode::kInvalidArgument) return PartOutcome::Split(s);
    if (IsRetryable(s) && !idempotent) return std::nullopt;
    return finish(s);
  };

  const int max_attempts = dest_->config().http.retry.max_retries + 1;
  for (int attempt = 1; attempt <= max_attempts; ++attempt) {
    if (attempt > 1) Backoff(attempt - 1);
    absl::StatusOr<std::map<std::string, std::vector<int64_t>>> keys = ReadKeys();
    if (!keys.ok()) return finish(keys.status());

    std::vector<std::pair<const Prepared*, int64_t>> updates;
    std::vector<size_t> update_records;
    std::vector<int64_t> deletes;
    std::vector<size_t> delete_records;
    std::vector<const Prepared*> appends;
    std::vector<size_t> append_records;
    for (size_t i = 0; i < n; ++i) {
      if (done[i]) continue;
      const Prepared* p = part[i];
      auto found = keys->find(p->key);
      if (p->is_delete) {
        if (found == keys->end()) {
          done[i] = true;  // not (or no longer) in the sheet
          continue;
        }
        deletes.insert(deletes.end(), found->second.begin(), found->second.end());
        delete_records.push_back(i);
      } else if (found != keys->end()) {
        for (int64_t row : found->second) updates.emplace_back(p, row);
        update_records.push_back(i);
      } else {
        appends.push_back(p);
        append_records.push_back(i);
      }
    }
    if (!updates.empty()) {
      absl::Status s = UpdateRows(updates);
      if (!s.ok()) {
        if (auto out = on_failure(s, /*idempotent=*/true)) return *std::move(out);
        continue;
      }
      for (size_t i : update_records) done[i] = any_done = true;
    }
    if (!deletes.empty()) {
      absl::Status s = DeleteRows(std::move(deletes));
      if (!s.ok()) {
        if (auto out = on_failure(s, /*idempotent=*/false)) return *std::move(out);
        continue;
      }
      for (size_t i : delete_records) done[i] = any_done = true;
    }
    if (!appends.empty()) {
      std::vector<bool> appended(appends.size(), false);
      absl::Status s = AppendRows(appends, appended);
      for (size_t k = 0; k < appends.size(); ++k) {
        if (appended[k]) done[append_records[k]] = any_done = true;
      }
      if (!s.ok()) {
        if (auto out = on_failure(s, /*idempotent=*/false)) return *std::move(out);
        continue;
      }
    }
    if (std::all_of(done.begin(), done.end(), [](bool b) { return b; })) return finish(last);
  }
  return finish(last);
}

absl::StatusOr<std::vector<absl::Status>> SheetsSession::SendBatch(
    std::span<const OutgoingRecord> batch) {
  if (!set_up_) {
    BACKFLOW_RETURN_IF_ERROR(SetUp());
  }
  std::vector<absl::Status> out(batch.size(), absl::OkStatus());
  std::vector<Prepared> prepared;
  prepared.reserve(batch.size());
  for (const OutgoingRecord& r : batch) prepared.push_back(Prepare(r));

  // One change per key: a later record of the same key supersedes an
  // earlier one, which gets the later one's outcome.
  std::map<std::string, size_t> last_of_key;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (prepared[i].status.ok()) last_of_key[prepared[i].key] = i;
  }
  std::vector<size_t> sent;  // indices into batch, in order
  std::vector<OutgoingRecord> records;
  std::vector<const Prepared*> items;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!prepared[i].status.ok()) {
      out[i] = prepared[i].status;
    } else if (last_of_key[prepared[i].key] == i) {
      sent.push_back(i);
      records.push_back(batch[i]);
      items.push_back(&prepared[i]);
    }
  }
  if (!records.empty()) {
    std::span<const OutgoingRecord> all = records;
    absl::StatusOr<std::vector<absl::Status>> results =
        SendBisecting(all, [&](std::span<const OutgoingRecord> part) {
          size_t offset = static_cast<size_t>(part.data() - all.data());
          return SendPart(std::span<const Prepared* const>(items).subspan(offset, part.size()));
        });
    if (!results.ok()) return results.status();
    for (size_t k = 0; k < sent.size(); ++k) out[sent[k]] = (*results)[k];
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    if (prepared[i].status.ok()) out[i] = out[last_of_key[prepared[i].key]];
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ActionSession>> GoogleSheetsDestination::StartSession(
    const SessionOptions& options) {
  if (options.action == nullptr || options.action->id != "upsert_rows") {
    return absl::InvalidArgumentError(
        fmt::format("Google Sheets has no action \"{}\"; use upsert_rows",
                    options.action == nullptr ? "" : options.action->id));
  }
  if (options.layout.identity.empty()) {
    return absl::FailedPreconditionError(
        "the mapping does not map the model's unique identifier (primary_key) to any field, so "
        "rows cannot be found again: add e.g. id: <primary key column> to its fields");
  }
  return std::unique_ptr<ActionSession>(std::make_unique<SheetsSession>(this, options));
}

constexpr char kNotes[] = R"md(## Example

```yaml
destinations:
  - name: sheet
    type: google_sheets
    settings:
      # The service account's JSON key file, as text: export GOOGLE_SA_KEY="$(cat key.json)"
      service_account_key: ${env:GOOGLE_SA_KEY}
      spreadsheet_id: 1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms
      sheet: Customers
mappings:
  - name: customers_to_sheet
    model: customers
    destination: sheet
    action: upsert_rows
    fields:
      id: customer_id        # the model's primary key: the key column
      Email: email
      Plan: plan
      "Lifetime value": ltv
```

## Setup

1. In Google Cloud, create a service account (IAM & Admin > Service accounts), add a JSON key
   and enable the Google Sheets API for its project (APIs & Services > Library).
2. Share the spreadsheet with the service account's `client_email`
   (`name@project.iam.gserviceaccount.com`) as an **Editor**, as you would with a person. Without
   this every call is refused with `403 PERMISSION_DENIED`.
3. Pass the key file's content in `service_account_key`, through an environment variable.
   `backflow test-connection` mints a token and reads the sheet's header row; it writes nothing,
   so it cannot tell a Viewer from an Editor.

## How the sheet is kept

Row 1 is the header: one cell per mapped field, named by the field's key. Missing names are added
after the last header cell on the first sync; columns with other names are never written, so you
may keep your own columns (formulas, notes) beside the synced ones. Each other row is one record.
The field mapped from the model's `primary_key` is the key column that finds a record's row.

Each batch:

1. reads the header row and the key column (`values:batchGet`, `UNFORMATTED_VALUE`), so rows
   sorted or moved by hand between batches are still found;
2. overwrites the rows of added or updated records whose key is in the sheet
   (`values:batchUpdate`, `RAW`, exact ranges such as `'Customers'!A7:D7`);
3. deletes the rows of deleted records (`spreadsheets:batchUpdate` with `deleteDimension`,
   bottom-up so row numbers stay valid);
4. appends the other records after the table (`values:append`, `RAW`, `INSERT_ROWS`).

`values:append` has no idempotency key and a repeated `deleteDimension` deletes another row, so
neither is ever repeated blindly: after a timeout, a dropped connection or a 5xx (the write may
have happened) Backflow reads the key column again and carries on from what the sheet holds. A
record that was appended is then found and updated in place; a deleted one is gone. A retry never
duplicates or loses rows. Every request is atomic in Google Sheets.

Values are written with `valueInputOption=RAW`: text stays text (a value starting with `=` is not
a formula), numbers and booleans are typed, NULL blanks the cell, JSON values are written as JSON
text, integers beyond 2^53 as text (a cell holds a double). Timestamps and dates are ISO-8601
text.

Keep one mapping per sheet, and leave the header row alone while a sync runs. A key that appears
in several rows (e.g. rows copied by hand) has all of its rows updated or deleted.

## Limits

| limit | value | what Backflow does |
| --- | --- | --- |
| characters per cell | 50,000 | a longer value fails its record, which is not sent |
| request payload | 2 MB recommended | batches are split into requests of at most 2 MB |
| cells per spreadsheet | 10 million (all sheets) | Google's 400 stops the run with a message |
| requests per minute per user (the service account) | 60 reads, 60 writes | `read_requests_per_minute` / `write_requests_per_minute` pace requests on Backflow's side |
| requests per minute per project | 300 reads, 300 writes | shared by every service account of the project |

A batch costs one read and up to three writes, so larger batches sync faster under the
per-minute quotas (default 1,000 records, at most 10,000).

## Replies

| reply | outcome |
| --- | --- |
| 2xx | the batch's records are written |
| 429 `RESOURCE_EXHAUSTED` (per-minute quota; no Retry-After) | retried with exponential backoff (2 s, 4 s, 8 s … with jitter, each wait at most `max_retry_wait_s`); after `max_retries` the records fail and are sent by the next run |
| 5xx, timeout, connection error | reads and row updates are retried as they are; appends and deletes are re-planned from a fresh read of the key column (see above); after `max_retries` the records fail and are sent by the next run |
| 401 `UNAUTHENTICATED` | a new token is minted once and the request repeated; a second 401 stops the run |
| token endpoint `invalid_grant` | the run stops: the key was deleted, rotated or is not this service account's; or the machine's clock is wrong |
| 403 `PERMISSION_DENIED` | the run stops: share the spreadsheet with the service account's `client_email` as an Editor (or enable the Sheets API when Google says it is disabled) |
| 404 `NOT_FOUND` | the run stops: check `spreadsheet_id` |
| 400 `INVALID_ARGUMENT` | the request is split in halves until the rows Google refuses are isolated; they fail with Google's message. A sheet that no longer exists, the cell limit or grid limits stop the run |
)md";

absl::StatusOr<SheetsConfig> ParseConfig(const json& settings) {
  if (!settings.is_object()) {
    return absl::InvalidArgumentError("google_sheets settings must be a map");
  }
  auto text = [&](const char* name) -> std::string {
    auto it = settings.find(name);
    return it != settings.end() && it->is_string() ? it->get<std::string>() : "";
  };
  SheetsConfig cfg;
  std::string key_text = text("service_account_key");
  if (key_text.empty()) {
    return absl::InvalidArgumentError(
        "service_account_key: required; the service account's JSON key file content, e.g. "
        "${env:GOOGLE_SA_KEY}");
  }
  absl::StatusOr<GoogleServiceAccountKey> key = ParseGoogleServiceAccountKey(key_text);
  if (!key.ok()) return key.status();
  cfg.key = *std::move(key);
  cfg.spreadsheet_id = SheetsSpreadsheetId(text("spreadsheet_id"));
  if (cfg.spreadsheet_id.empty()) {
    return absl::InvalidArgumentError(
        "spreadsheet_id: required; the id in the spreadsheet's URL "
        "(https://docs.google.com/spreadsheets/d/<id>/edit)");
  }
  cfg.sheet = text("sheet");
  if (cfg.sheet.empty()) cfg.sheet = "Sheet1";
  cfg.token_url = text("token_url");
  if (cfg.token_url.empty()) cfg.token_url = kDefaultTokenUrl;
  cfg.subject = text("subject");
  for (auto [name, target] : {std::pair{"read_requests_per_minute", &cfg.reads_per_minute},
                              std::pair{"write_requests_per_minute", &cfg.writes_per_minute}}) {
    auto it = settings.find(name);
    if (it == settings.end() || it->is_null()) continue;
    if (!it->is_number_integer() || it->get<int64_t>() < 1) {
      return absl::InvalidArgumentError(fmt::format("{}: must be an integer >= 1", name));
    }
    *target = it->get<int64_t>();
  }
  absl::StatusOr<HttpSettings> http = ParseHttpSettings(settings);
  if (!http.ok()) return http.status();
  cfg.http = *std::move(http);
  return cfg;
}

}  // namespace

std::string SheetsColumnName(int index) {
  std::string out;
  for (int n = index + 1; n > 0; n = (n - 1) / 26) {
    out.insert(out.begin(), static_cast<char>('A' + (n - 1) % 26));
  }
  return out;
}

std::string SheetsQuotedName(std::string_view sheet) {
  std::string out = "'";
  for (char c : sheet) {
    out.push_back(c);
    if (c == '\'') out.push_back('\'');
  }
  out.push_back('\'');
  return out;
}

std::string SheetsSpreadsheetId(std::string_view text) {
  constexpr std::string_view kMarker = "/spreadsheets/d/";
  size_t at = text.find(kMarker);
  if (at == std::string_view::npos) return std::string(text);
  std::string_view rest = text.substr(at + kMarker.size());
  return std::string(rest.substr(0, rest.find_first_of("/?#")));
}

std::string SheetsKeyText(const json& cell) {
  switch (cell.type()) {
    case json::value_t::string:
      return cell.get<std::string>();
    case json::value_t::boolean:
      return cell.get<bool>() ? "TRUE" : "FALSE";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return cell.dump();
    case json::value_t::number_float: {
      double d = cell.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) <= kMaxExactInteger) {
        return fmt::format("{}", static_cast<int64_t>(d));
      }
      return fmt::format("{}", d);
    }
    default:
      return "";
  }
}

DestinationDefinition GoogleSheetsDestinationDefinition() {
  DestinationDefinition def;
  def.type = "google_sheets";
  def.title = "Google Sheets";
  def.description =
      "Keeps a sheet of a Google spreadsheet equal to a model: a header row of the mapped "
      "fields, then one row per record, found by its key column; rows are updated in place, "
      "added and deleted, and a retry never duplicates a row.";
  def.maturity = "beta";

  SettingSpec key = MakeSetting(
      "service_account_key", "Service account key",
      "The content (not the path) of the service account's JSON key file, e.g. "
      "${env:GOOGLE_SA_KEY} after export GOOGLE_SA_KEY=\"$(cat key.json)\". Its client_email must "
      "be an Editor of the spreadsheet.");
  key.required = true;
  key.secret = true;
  def.settings.push_back(key);
  SettingSpec id =
      MakeSetting("spreadsheet_id", "Spreadsheet ID",
                  "The id in the spreadsheet's URL "
                  "(https://docs.google.com/spreadsheets/d/<id>/edit); the whole URL is "
                  "accepted too.");
  id.required = true;
  def.settings.push_back(id);
  def.settings.push_back(
      MakeSetting("sheet", "Sheet",
                  "The name of the sheet (tab) to keep; it must exist. One mapping "
                  "per sheet.",
                  SettingType::kString, "Sheet1"));
  SettingSpec subject =
      MakeSetting("subject", "Impersonated user",
                  "With domain-wide delegation only: the Google Workspace user the "
                  "service account acts as (the JWT's sub claim).");
  def.settings.push_back(subject);
  def.settings.push_back(MakeSetting("token_url", "Token URL",
                                     "Google's OAuth 2.0 token endpoint, where the signed JWT is "
                                     "exchanged for an access token (and the JWT's audience). "
                                     "Change it only for a proxy or a test server.",
                                     SettingType::kString, kDefaultTokenUrl));
  def.settings.push_back(
      MakeSetting("read_requests_per_minute", "Read requests per minute",
                  "Reads sent per minute at most, below Google's quota of 60 read "
                  "requests per minute per user (a service account is one user).",
                  SettingType::kInteger, kDefaultRequestsPerMinute));
  def.settings.push_back(
      MakeSetting("write_requests_per_minute", "Write requests per minute",
                  "Writes sent per minute at most, below Google's quota of 60 write "
                  "requests per minute per user; raise it with the quota.",
                  SettingType::kInteger, kDefaultRequestsPerMinute));

  HttpSettingsDefaults http;
  http.base_url = kDefaultBaseUrl;
  http.max_retries = kDefaultMaxRetries;
  for (SettingSpec& s : HttpSettingSpecs(http)) def.settings.push_back(std::move(s));

  ActionSpec upsert;
  upsert.id = "upsert_rows";
  upsert.title = "Upsert rows";
  upsert.description =
      "Writes each added or updated record to the row holding its key (appending a row for a "
      "new key) and deletes the rows of deleted records. Each mapped field is a column, named "
      "by the field's key in the header row; the field mapped from the model's unique "
      "identifier is the key column.";
  upsert.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                       RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                       RecordSelection::kAll};
  upsert.allows_extra_fields = true;
  upsert.max_batch_records = 10'000;
  upsert.default_batch_records = 1'000;
  def.actions.push_back(upsert);

  def.notes = kNotes;
  def.create = [](const json& settings,
                  const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Destination>> {
    absl::StatusOr<SheetsConfig> cfg = ParseConfig(settings);
    if (!cfg.ok()) return cfg.status();
    absl::StatusOr<HttpServices> services = HttpServicesOf("google_sheets", env);
    if (!services.ok()) return services.status();
    Clock* clock = services->clock;
    JwtBearerConfig jwt;
    jwt.vendor = "Google";
    jwt.token_url = cfg->token_url;
    jwt.private_key_pem = cfg->key.private_key;
    jwt.key_id = cfg->key.private_key_id;
    jwt.issuer = cfg->key.client_email;
    jwt.subject = cfg->subject;
    jwt.scope = kSheetsScope;
    jwt.assertion_lifetime = std::chrono::seconds(3600);
    jwt.timeout = cfg->http.timeout;
    jwt.hint = fmt::format(
        "Check service_account_key: it must be a current JSON key of {} (keys deleted in IAM & "
        "Admin > Service accounts stop working at once)",
        cfg->key.client_email);
    absl::StatusOr<std::unique_ptr<JwtBearerTokenSource>> tokens =
        JwtBearerTokenSource::Create(std::move(jwt), services->http, clock);
    if (!tokens.ok()) {
      return absl::InvalidArgumentError(
          fmt::format("service_account_key: private_key: {}", tokens.status().message()));
    }
    return std::unique_ptr<Destination>(std::make_unique<GoogleSheetsDestination>(
        *std::move(cfg), *std::move(tokens), services->http, clock));
  };
  return def;
}

}  // namespace backflow
