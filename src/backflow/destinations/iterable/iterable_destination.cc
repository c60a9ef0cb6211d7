#include "backflow/destinations/iterable/iterable_destination.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/civil_date.h"
#include "backflow/common/clock.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/common/status_macros.h"
#include "backflow/common/url.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/destinations/destination.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kWhat[] = "Iterable";
constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kDefaultBaseUrl[] = "https://api.iterable.com";
constexpr char kEuBaseUrl[] = "https://api.eu.iterable.com";
constexpr char kUpdateUsers[] = "update_users";
constexpr char kTrackEvents[] = "track_events";
constexpr int kMaxBulkRecords = 1000;
constexpr int kDefaultBulkRecords = 100;
constexpr int64_t kDefaultBulkUpdatePerSecond = 5;
constexpr int64_t kDefaultTrackBulkPerSecond = 10;
constexpr int64_t kDefaultDeletePerSecond = 100;
// Event times at or above this are read as milliseconds, below as seconds.
constexpr double kMillisecondsThreshold = 1e11;

}  // namespace

std::optional<std::string> IterableDateString(std::string_view iso) {
  std::optional<IsoInstant> t = ParseIsoInstant(iso);
  if (!t || !t->has_time) return std::nullopt;
  std::time_t secs = static_cast<std::time_t>(t->seconds);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S +00:00", &tm);
  return std::string(buf);
}

std::optional<int64_t> IterableEpochSeconds(std::string_view iso) {
  std::optional<IsoInstant> t = ParseIsoInstant(iso);
  if (!t) return std::nullopt;
  return t->seconds;
}

std::string IterablePathSegment(std::string_view text) {
  return PercentEncode(text, /*also_keep=*/"@");
}

namespace {

// ---------------------------------------------------------------- replies

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string Trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t start = 0;
  while (start < s.size() && std::isspace(static_cast<unsigned char>(s[start]))) ++start;
  return s.substr(start);
}

bool Is2xx(int status) { return status >= 200 && status < 300; }

json ParseBody(std::string_view body) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  return doc.is_discarded() ? json() : doc;
}

std::string StringMember(const json& doc, const char* key) {
  if (!doc.is_object()) return "";
  auto it = doc.find(key);
  return it != doc.end() && it->is_string() ? it->get<std::string>() : "";
}

// The "code" of Iterable's {"msg","code","params"} envelope, "" when absent.
std::string ReplyCode(const HttpResponse& r) { return StringMember(ParseBody(r.body), "code"); }

// What Iterable said: "msg (code)", or the raw body.
std::string IterableSaid(const HttpResponse& r) {
  json doc = ParseBody(r.body);
  std::string msg = StringMember(doc, "msg");
  std::string code = StringMember(doc, "code");
  if (msg.empty() && code.empty()) return r.body.empty() ? "(empty body)" : BodySnippet(r.body);
  if (code.empty()) return BodySnippet(msg);
  if (msg.empty()) return code;
  return BodySnippet(fmt::format("{} ({})", msg, code));
}

bool AuthCode(const std::string& code) {
  return code == "BadApiKey" || code == "BadAuthorizationHeader" || code == "InvalidApiKey";
}
bool RateLimitCode(const std::string& code) { return code == "RateLimitExceeded"; }
bool TransientCode(const std::string& code) {
  return code == "GenericError" || code == "DatabaseError";
}

// Retried by HttpDelivery: 408, 425, 429, 5xx, and rate-limit or internal
// error codes inside a 2xx (or a rate-limit code on any status).
bool IterableRetryable(const HttpResponse& r) {
  if (DefaultRetryableStatus(r.status)) return true;
  std::string code = ReplyCode(r);
  if (RateLimitCode(code)) return true;
  return Is2xx(r.status) && TransientCode(code);
}

// Whether a delete reply says the user does not exist.
bool NoSuchUser(const HttpResponse& r) {
  json doc = ParseBody(r.body);
  std::string code = StringMember(doc, "code");
  if (code == "error.users.noUserWithIdExists" || code == "UserNotFound") return true;
  std::string msg = Lower(StringMember(doc, "msg"));
  return msg.find("does not exist") != std::string::npos ||
         msg.find("not found") != std::string::npos || msg.find("no user") != std::string::npos;
}

// ---------------------------------------------------------------- config

struct IterableConfig {
  std::string api_key;
  HttpSettings http;
  bool prefer_user_id = true;
  bool merge_nested_objects = false;
  std::optional<bool> create_new_fields;
  int64_t bulk_update_per_second = kDefaultBulkUpdatePerSecond;
  int64_t track_bulk_per_second = kDefaultTrackBulkPerSecond;
  int64_t delete_per_second = kDefaultDeletePerSecond;
};

absl::StatusOr<IterableConfig> ParseConfig(const json& settings) {
  if (!settings.is_object()) return absl::InvalidArgumentError("iterable settings must be a map");
  IterableConfig cfg;
  cfg.api_key = Trim(StringMember(settings, "api_key"));
  if (cfg.api_key.empty()) {
    return absl::InvalidArgumentError(
        "api_key: required; a server-side Iterable API key (Integrations > API Keys)");
  }
  if (cfg.api_key.find_first_of(" \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        "api_key: contains whitespace; paste only the key itself, without \"Api-Key:\"");
  }
  auto boolean = [&](const char* name, bool* out) -> absl::Status {
    auto it = settings.find(name);
    if (it == settings.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_boolean())
      return absl::InvalidArgumentError(fmt::format("{}: true or false", name));
    *out = it->get<bool>();
    return absl::OkStatus();
  };
  BACKFLOW_RETURN_IF_ERROR(boolean("prefer_user_id", &cfg.prefer_user_id));
  BACKFLOW_RETURN_IF_ERROR(boolean("merge_nested_objects", &cfg.merge_nested_objects));
  if (auto it = settings.find("create_new_fields"); it != settings.end() && !it->is_null()) {
    bool v = false;
    BACKFLOW_RETURN_IF_ERROR(boolean("create_new_fields", &v));
    cfg.create_new_fields = v;
  }
  auto rate = [&](const char* name, int64_t* out) -> absl::Status {
    auto it = settings.find(name);
    if (it == settings.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > 100'000) {
      return absl::InvalidArgumentError(
          fmt::format("{}: must be a whole number from 1 to 100000", name));
    }
    *out = it->get<int64_t>();
    return absl::OkStatus();
  };
  BACKFLOW_RETURN_IF_ERROR(rate("bulk_update_requests_per_second", &cfg.bulk_update_per_second));
  BACKFLOW_RETURN_IF_ERROR(rate("track_bulk_requests_per_second", &cfg.track_bulk_per_second));
  BACKFLOW_RETURN_IF_ERROR(rate("delete_requests_per_second", &cfg.delete_per_second));
  BACKFLOW_ASSIGN_OR_RETURN(cfg.http, ParseHttpSettings(settings));
  return cfg;
}

// ---------------------------------------------------------------- destination

enum class Endpoint { kBulkUpdate, kTrackBulk, kDelete };

class IterableDestination final : public Destination {
 public:
  IterableDestination(IterableConfig cfg, HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)),
        http_(http),
        clock_(clock),
        bulk_update_limiter_(*clock, cfg_.bulk_update_per_second, std::chrono::seconds(1)),
        track_bulk_limiter_(*clock, cfg_.track_bulk_per_second, std::chrono::seconds(1)),
        delete_limiter_(*clock, cfg_.delete_per_second, std::chrono::seconds(1)),
        user_limiter_(cfg_.http.UserLimiter(*clock)) {}

  absl::Status CheckConnection() override;
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override;
  int concurrency() const override { return cfg_.http.concurrency; }

  // A sender for one endpoint: its vendor limiter plus the user's cap.
  HttpDelivery NewDelivery(Endpoint e) {
    RateLimiter* vendor = e == Endpoint::kBulkUpdate  ? &bulk_update_limiter_
                          : e == Endpoint::kTrackBulk ? &track_bulk_limiter_
                                                      : &delete_limiter_;
    VendorRules rules;
    rules.retryable = IterableRetryable;
    return HttpDelivery(http_, clock_, {vendor, user_limiter_.get()}, cfg_.http.retry, rules);
  }

  HttpRequest Request(std::string method, const std::string& path, std::string body) const {
    HttpRequest req;
    req.method = std::move(method);
    req.url = cfg_.http.base_url + path;
    req.body = std::move(body);
    req.timeout = cfg_.http.timeout;
    req.headers.emplace_back("Api-Key", cfg_.api_key);
    req.headers.emplace_back("User-Agent", kUserAgent);
    req.headers.emplace_back("Accept", "application/json");
    if (!req.body.empty()) req.headers.emplace_back("Content-Type", "application/json");
    return req;
  }

  absl::Status AuthError(const HttpResponse& r) const {
    return absl::UnauthenticatedError(fmt::format(
        "Iterable refused the API key (HTTP {}): check api_key. It must be a server-side key of "
        "the project (Iterable: Integrations > API Keys), and a key only works in its own data "
        "center: projects on app.eu.iterable.com need base_url {} (this destination uses {}). "
        "Iterable said: {}",
        r.status, kEuBaseUrl, cfg_.http.base_url, IterableSaid(r)));
  }

  absl::Status ForbiddenError(const HttpResponse& r, std::string_view doing) const {
    return absl::PermissionDeniedError(fmt::format(
        "Iterable denied {} (HTTP 403): the API key's type has no access to this endpoint "
        "(JavaScript, mobile and read-only keys cannot call the bulk and delete APIs). Create a "
        "key of type Server-side (Integrations > API Keys) and put it in api_key. Iterable said: "
        "{}",
        doing, IterableSaid(r)));
  }

  // 404 and 3xx replies: the request did not reach Iterable's API.
  absl::Status EndpointError(const HttpResponse& r, std::string_view method,
                             std::string_view path) const {
    if (r.status >= 300 && r.status < 400) {
      return absl::FailedPreconditionError(fmt::format(
          "Iterable answered HTTP {} for {} {}{} redirecting to {}; redirects are not followed: "
          "set base_url to {} (or {} for EU projects)",
          r.status, method, cfg_.http.base_url, path,
          r.Header("location").value_or("(no Location)"), kDefaultBaseUrl, kEuBaseUrl));
    }
    return absl::FailedPreconditionError(fmt::format(
        "Iterable answered HTTP {} for {} {}{}: check base_url ({}, or {} for EU projects). "
        "Iterable said: {}",
        r.status, method, cfg_.http.base_url, path, kDefaultBaseUrl, kEuBaseUrl, IterableSaid(r)));
  }

  const IterableConfig& cfg() const { return cfg_; }

 private:
  IterableConfig cfg_;
  HttpClient* http_;
  Clock* clock_;
  RateLimiter bulk_update_limiter_;  // shared by every session of this destination
  RateLimiter track_bulk_limiter_;
  RateLimiter delete_limiter_;
  std::unique_ptr<RateLimiter> user_limiter_;  // null without max_requests_per_second
};

absl::Status IterableDestination::CheckConnection() {
  HttpDelivery delivery = NewDelivery(Endpoint::kBulkUpdate);
  const std::string body = R"({"users":[]})";
  DeliveryResult d = delivery.Send([&] { return Request("POST", kIterableBulkUpdatePath, body); },
                                   /*retry=*/false);
  if (!d.response.ok()) {
    return absl::UnavailableError(fmt::format(
        "could not reach Iterable at {}: {}; check base_url ({}, or {} for EU projects) and the "
        "network path to it",
        cfg_.http.base_url, d.response.status().message(), kDefaultBaseUrl, kEuBaseUrl));
  }
  const HttpResponse& r = *d.response;
  const std::string code = ReplyCode(r);
  if (r.status == 401 || AuthCode(code)) return AuthError(r);
  if (r.status == 403) {
    return ForbiddenError(r, "the connection check (POST /api/users/bulkUpdate without users)");
  }
  if (r.status == 404 || (r.status >= 300 && r.status < 400)) {
    return EndpointError(r, "POST", kIterableBulkUpdatePath);
  }
  if (r.status == 429 || RateLimitCode(code)) {
    return absl::UnavailableError(fmt::format(
        "Iterable is rate limiting this project right now (HTTP {}), so the key could not be "
        "checked; try again in a few seconds. Iterable said: {}",
        r.status, IterableSaid(r)));
  }
  if (IterableRetryable(r)) {
    return absl::UnavailableError(
        fmt::format("Iterable at {} is not available (HTTP {}); try again later. Iterable said: {}",
                    cfg_.http.base_url, r.status, IterableSaid(r)));
  }
  // The key was accepted: an empty update is answered 200, or 400 for the
  // empty list; either way nothing was written.
  if (Is2xx(r.status) || (r.status == 400 && !code.empty())) return absl::OkStatus();
  return absl::FailedPreconditionError(
      fmt::format("Iterable at {} answered the connection check with HTTP {}: {}",
                  cfg_.http.base_url, r.status, IterableSaid(r)));
}

// ---------------------------------------------------------------- session

// One record ready to send.
struct Prepared {
  json object;                       // the user or event object (upserts)
  std::string email_key;             // lowercased email, "" when none
  std::string user_id;               // "" when none
  std::string event_name;            // events
  std::set<std::string> data_paths;  // dataFields keys, nested ones dotted
  // Deletes.
  std::string delete_path;
  std::string delete_key;  // "e:<lowercased email>" or "u:<userId>"
  std::string delete_label;
};

// Replaces ISO-8601 date-times in `v` (at any depth) by Iterable's format.
void ConvertDates(json& v) {
  if (v.is_string()) {
    if (std::optional<std::string> d = IterableDateString(v.get_ref<const std::string&>())) {
      v = *d;
    }
  } else if (v.is_object() || v.is_array()) {
    for (json& item : v) ConvertDates(item);
  }
}

void CollectPaths(const json& object, const std::string& prefix, std::set<std::string>& out) {
  for (const auto& [k, v] : object.items()) {
    std::string path = prefix.empty() ? k : prefix + "." + k;
    out.insert(path);
    if (v.is_object()) CollectPaths(v, path, out);
  }
}

// An identifier value as text: strings as-is (trimmed), integers as digits;
// "" for null or empty. kInvalidArgument for other types.
absl::StatusOr<std::string> IdentifierText(const json& payload, const char* key) {
  auto it = payload.find(key);
  if (it == payload.end() || it->is_null()) return std::string();
  if (it->is_string()) return Trim(it->get<std::string>());
  if (it->is_number_integer()) return it->dump();
  return absl::InvalidArgumentError(
      fmt::format("{} must be text, got {}", key, BodySnippet(it->dump(), 80)));
}

absl::StatusOr<int64_t> IntegerField(const json& v, const char* key) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float() && std::trunc(v.get<double>()) == v.get<double>()) {
    return static_cast<int64_t>(v.get<double>());
  }
  if (v.is_string()) {
    try {
      size_t used = 0;
      int64_t n = std::stoll(v.get<std::string>(), &used);
      if (used == v.get<std::string>().size()) return n;
    } catch (...) {
    }
  }
  return absl::InvalidArgumentError(
      fmt::format("{} must be a whole number, got {}", key, BodySnippet(v.dump(), 80)));
}

// The status of a record named in failedUpdates.<list>.
absl::Status ListStatus(const std::string& list, const std::string& id, bool events) {
  const bool email = list.find("Email") != std::string::npos;
  const std::string what = fmt::format("{} \"{}\"", email ? "email" : "userId", id);
  const std::string where = "failedUpdates." + list;
  if (list.starts_with("forgotten")) return absl::OkStatus();  // skipped: never writable
  if (list.starts_with("invalidData")) {
    return absl::InvalidArgumentError(fmt::format(
        "Iterable refused the data of the user with {} ({}): a dataFields value does not fit the "
        "project's field types or limits; check the mapped values against the field's type in "
        "Iterable's data schema",
        what, where));
  }
  if (list.starts_with("invalid")) {
    return absl::InvalidArgumentError(fmt::format(
        "Iterable rejected the {} as malformed ({}); fix the value in the model", what, where));
  }
  if (list.starts_with("notFound")) {
    return absl::InvalidArgumentError(fmt::format(
        "Iterable has no user with {} ({}){}. In userId-based projects users are created by "
        "userId (map userId); in email-based projects a user given only a userId is created only "
        "with prefer_user_id: true",
        what, where, events ? ", so the event was not tracked" : ""));
  }
  if (list.starts_with("conflict")) {
    return absl::InvalidArgumentError(fmt::format(
        "the email and userId of this record belong to different Iterable users ({} names {}); "
        "fix the model's data, or merge the two users in Iterable",
        where, what));
  }
  return absl::InvalidArgumentError(
      fmt::format("Iterable did not apply this record: {} names its {}", where, what));
}

class IterableSession final : public ActionSession {
 public:
  IterableSession(IterableDestination* dest, SessionOptions options, bool events)
      : dest_(dest),
        options_(std::move(options)),
        events_(events),
        bulk_delivery_(dest->NewDelivery(events ? Endpoint::kTrackBulk : Endpoint::kBulkUpdate)),
        delete_delivery_(dest->NewDelivery(Endpoint::kDelete)) {
    // Deletes identify the user by what the model's primary key is mapped
    // to: userId first, else email.
    const std::vector<std::string>& identity = options_.layout.identity;
    for (const char* field : {"userId", "email"}) {
      auto it = std::find(identity.begin(), identity.end(), field);
      if (it != identity.end()) {
        delete_pos_ = static_cast<int>(it - identity.begin());
        delete_by_user_id_ = std::string_view(field) == "userId";
        break;
      }
    }
  }

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override;
  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  const char* label() const { return events_ ? "event" : "user"; }
  const char* path() const { return events_ ? kIterableTrackBulkPath : kIterableBulkUpdatePath; }
  absl::Status Prepare(const OutgoingRecord& r, Prepared& p) const;
  absl::Status PrepareDelete(const OutgoingRecord& r, Prepared& p) const;
  // One bulk request for `items`; non-OK stops the run.
  absl::StatusOr<PartOutcome> SendBulk(std::span<const Prepared* const> items);
  // Matches a bulk reply to `items` by identifier, re-sending records in
  // doubt in halves until their outcome is known.
  absl::StatusOr<PartOutcome> Resolve(const json& doc, std::span<const Prepared* const> items);
  // One delete: sets `result` to the record's outcome, or returns non-OK
  // to stop the run.
  absl::Status Delete(const Prepared& p, absl::Status& result);

  IterableDestination* dest_;
  SessionOptions options_;
  bool events_;
  HttpDelivery bulk_delivery_;
  HttpDelivery delete_delivery_;
  int delete_pos_ = -1;  // in FieldLayout::identity; -1 when deletes cannot be identified
  bool delete_by_user_id_ = false;
  absl::Status stop_;  // set once Iterable refused the key or URL: nothing more is sent
};

absl::Status IterableSession::Prepare(const OutgoingRecord& r, Prepared& p) const {
  json payload = RecordPayload(options_.layout, r);
  BACKFLOW_ASSIGN_OR_RETURN(std::string email, IdentifierText(payload, "email"));
  BACKFLOW_ASSIGN_OR_RETURN(std::string user_id, IdentifierText(payload, "userId"));
  if (email.empty() && user_id.empty()) {
    return absl::InvalidArgumentError(fmt::format(
        "no user identifier: email and userId are both null or empty, and Iterable needs one of "
        "them to find the user{}",
        events_ ? " the event belongs to" : ""));
  }
  json data = json::object();
  if (auto it = payload.find("dataFields"); it != payload.end() && !it->is_null()) {
    if (!it->is_object()) {
      return absl::InvalidArgumentError(
          fmt::format("dataFields must be a JSON object of field names to values, got {}",
                      BodySnippet(it->dump(), 80)));
    }
    data = *it;
  }
  ConvertDates(data);
  CollectPaths(data, "", p.data_paths);
  p.email_key = Lower(email);
  p.user_id = user_id;

  json object = json::object();
  if (!email.empty()) object["email"] = email;
  if (!user_id.empty()) object["userId"] = user_id;
  if (!events_) {
    if (!data.empty()) object["dataFields"] = std::move(data);
    object["preferUserId"] = dest_->cfg().prefer_user_id;
    object["mergeNestedObjects"] = dest_->cfg().merge_nested_objects;
    p.object = std::move(object);
    return absl::OkStatus();
  }

  auto name = payload.find("eventName");
  if (name == payload.end() || !name->is_string() || Trim(name->get<std::string>()).empty()) {
    return absl::InvalidArgumentError(
        "eventName is empty; Iterable needs an event name (map a column, or a text literal such "
        "as \"'Order Completed'\")");
  }
  p.event_name = name->get<std::string>();
  object["eventName"] = p.event_name;
  std::string id = r.dedup_id;
  if (auto it = payload.find("id"); it != payload.end() && !it->is_null()) {
    BACKFLOW_ASSIGN_OR_RETURN(std::string mapped, IdentifierText(payload, "id"));
    if (!mapped.empty()) id = mapped;
  }
  if (!id.empty()) object["id"] = id;
  if (auto it = payload.find("createdAt"); it != payload.end() && !it->is_null()) {
    if (it->is_number()) {
      double v = it->get<double>();
      if (v >= kMillisecondsThreshold) v /= 1000;
      object["createdAt"] = static_cast<int64_t>(std::floor(v));
    } else if (std::optional<int64_t> secs =
                   it->is_string() ? IterableEpochSeconds(it->get<std::string>()) : std::nullopt) {
      object["createdAt"] = *secs;
    } else {
      return absl::InvalidArgumentError(fmt::format(
          "createdAt {} is not a timestamp (ISO-8601 expected)", BodySnippet(it->dump(), 80)));
    }
  }
  object["dataFields"] = std::move(data);
  for (const char* key : {"campaignId", "templateId"}) {
    auto it = payload.find(key);
    if (it == payload.end() || it->is_null()) continue;
    BACKFLOW_ASSIGN_OR_RETURN(int64_t v, IntegerField(*it, key));
    object[key] = v;
  }
  p.object = std::move(object);
  return absl::OkStatus();
}

absl::Status IterableSession::PrepareDelete(const OutgoingRecord& r, Prepared& p) const {
  const char* field = delete_by_user_id_ ? "userId" : "email";
  if (delete_pos_ < 0 || delete_pos_ >= static_cast<int>(r.values.size()) ||
      r.values[delete_pos_].is_null()) {
    return absl::InvalidArgumentError(
        fmt::format("cannot delete the Iterable user: its {} is null", field));
  }
  const Value& v = r.values[delete_pos_];
  std::string id = Trim(v.type() == ValueType::kString ? v.text() : v.ToString());
  if (id.empty()) {
    return absl::InvalidArgumentError(
        fmt::format("cannot delete the Iterable user: its {} is empty", field));
  }
  if (delete_by_user_id_) {
    p.delete_path = kIterableUsersByIdPath + IterablePathSegment(id);
    p.delete_key = "u:" + id;
  } else {
    p.delete_path = kIterableUsersPath + IterablePathSegment(id);
    p.delete_key = "e:" + Lower(id);
  }
  p.delete_label = fmt::format("{} \"{}\"", field, id);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<absl::Status>> IterableSession::SendBatch(
    std::span<const OutgoingRecord> batch) {
  std::vector<absl::Status> results(batch.size(), absl::OkStatus());
  if (batch.empty()) return results;
  if (!stop_.ok()) return stop_;

  std::vector<Prepared> prepared(batch.size());
  std::vector<size_t> upserts, deletes;
  for (size_t i = 0; i < batch.size(); ++i) {
    const OutgoingRecord& r = batch[i];
    if (events_ && r.change != ChangeKind::kAdded) {
      results[i] = absl::FailedPreconditionError(fmt::format(
          "track_events sends only added records (each new row is one event), not {} ones; set "
          "records: added on mapping \"{}\"",
          ChangeKindName(r.change), options_.mapping));
      continue;
    }
    if (r.is_delete()) {
      if (delete_pos_ < 0) {
        return absl::FailedPreconditionError(fmt::format(
            "mapping \"{}\" sends deleted records, but deleting an Iterable user needs the "
            "model's primary key mapped to userId or email; map it, or set records: "
            "added_or_updated",
            options_.mapping));
      }
      results[i] = PrepareDelete(r, prepared[i]);
      if (results[i].ok()) deletes.push_back(i);
    } else {
      results[i] = Prepare(r, prepared[i]);
      if (results[i].ok()) upserts.push_back(i);
    }
  }

  // Users go in rounds in which no email or userId repeats (the last record
  // of a user is in the last round, so it wins); events in one group.
  std::vector<std::vector<size_t>> groups;
  std::set<std::string> upserted;
  if (events_) {
    if (!upserts.empty()) groups.push_back(upserts);
  } else {
    std::vector<std::set<std::string>> round_keys;
    for (size_t i : upserts) {
      std::vector<std::string> keys;
      if (!prepared[i].email_key.empty()) keys.push_back("e:" + prepared[i].email_key);
      if (!prepared[i].user_id.empty()) keys.push_back("u:" + prepared[i].user_id);
      size_t round = 0;
      while (round < groups.size() &&
             std::any_of(keys.begin(), keys.end(),
                         [&](const std::string& k) { return round_keys[round].count(k) > 0; })) {
        ++round;
      }
      if (round == groups.size()) {
        groups.emplace_back();
        round_keys.emplace_back();
      }
      groups[round].push_back(i);
      round_keys[round].insert(keys.begin(), keys.end());
      upserted.insert(keys.begin(), keys.end());
    }
  }

  bool delivered = false;
  absl::Status stopped;
  for (const std::vector<size_t>& group : groups) {
    if (!stopped.ok()) {
      for (size_t i : group) results[i] = stopped;
      continue;
    }
    // SendBisecting splits spans of records; the parallel vector maps a
    // part back to its prepared records by offset.
    std::vector<OutgoingRecord> records;
    std::vector<const Prepared*> items;
    for (size_t i : group) {
      records.push_back(batch[i]);
      items.push_back(&prepared[i]);
    }
    absl::StatusOr<std::vector<absl::Status>> sent =
        SendBisecting(records, [&](std::span<const OutgoingRecord> part) {
          size_t offset = static_cast<size_t>(part.data() - records.data());
          return SendBulk(std::span<const Prepared* const>(items).subspan(offset, part.size()));
        });
    if (!sent.ok()) {
      stopped = sent.status();
      for (size_t i : group) results[i] = stopped;
      continue;
    }
    for (size_t k = 0; k < group.size(); ++k) {
      results[group[k]] = (*sent)[k];
      delivered |= (*sent)[k].ok();
    }
  }

  for (size_t i : deletes) {
    if (!stopped.ok()) {
      results[i] = stopped;
      continue;
    }
    // Another record of this batch writes the same user: deleting it
    // afterwards would undo that write.
    if (upserted.count(prepared[i].delete_key)) continue;
    if (absl::Status stop = Delete(prepared[i], results[i]); !stop.ok()) {
      stopped = stop;
      results[i] = stopped;
      continue;
    }
    delivered |= results[i].ok();
  }
  if (!stopped.ok() && !delivered) return stopped;
  return results;
}

absl::StatusOr<PartOutcome> IterableSession::SendBulk(std::span<const Prepared* const> items) {
  if (!stop_.ok()) return stop_;
  const size_t n = items.size();
  json list = json::array();
  for (const Prepared* p : items) list.push_back(p->object);
  json body = json::object();
  body[events_ ? "events" : "users"] = std::move(list);
  if (!events_ && dest_->cfg().create_new_fields) {
    body["createNewFields"] = *dest_->cfg().create_new_fields;
  }
  const std::string text = body.dump(-1, ' ', false, json::error_handler_t::replace);
  DeliveryResult d = bulk_delivery_.Send([&] { return dest_->Request("POST", path(), text); });
  if (!d.response.ok()) return PartOutcome::AllRecords(n, bulk_delivery_.FailureStatus(d, kWhat));
  const HttpResponse& r = *d.response;
  const std::string code = ReplyCode(r);
  if (r.status == 401 || AuthCode(code)) {
    stop_ = dest_->AuthError(r);
    return stop_;
  }
  if (r.status == 403) {
    stop_ = dest_->ForbiddenError(r, fmt::format("POST {}", path()));
    return stop_;
  }
  if (r.status == 404 || (r.status >= 300 && r.status < 400)) {
    stop_ = dest_->EndpointError(r, "POST", path());
    return stop_;
  }
  if (r.status == 429 || RateLimitCode(code)) {
    return PartOutcome::AllRecords(
        n, absl::ResourceExhaustedError(fmt::format(
               "Iterable's rate limit for POST {} was still exceeded {} (HTTP {}): {}; the records "
               "are sent again by the next run. If other tools use this project's API, lower "
               "{}_requests_per_second",
               path(), d.AttemptsText(), r.status, IterableSaid(r),
               events_ ? "track_bulk" : "bulk_update")));
  }
  if (IterableRetryable(r)) {
    return PartOutcome::AllRecords(n, absl::UnavailableError(fmt::format(
                                          "Iterable answered HTTP {} for POST {} {}: {}", r.status,
                                          path(), d.AttemptsText(), IterableSaid(r))));
  }
  if (Is2xx(r.status)) {
    json doc = ParseBody(r.body);
    if (!code.empty() && code != "Success") {
      return PartOutcome::Split(absl::InvalidArgumentError(
          fmt::format("Iterable rejected the request carrying this {} (HTTP {}): {}", label(),
                      r.status, IterableSaid(r))));
    }
    if (!doc.is_object()) {
      return PartOutcome::AllRecords(
          n, absl::UnavailableError(fmt::format(
                 "Iterable answered HTTP {} for POST {} with a body that is not a bulk result "
                 "({}); the outcome is unknown, so the records are sent again",
                 r.status, path(), BodySnippet(r.body, 200))));
    }
    return Resolve(doc, items);
  }
  absl::Status bad = absl::InvalidArgumentError(
      fmt::format("Iterable rejected the request carrying this {} (HTTP {}): {}", label(), r.status,
                  IterableSaid(r)));
  if (r.status == 400 || r.status == 413 || r.status == 422) return PartOutcome::Split(bad);
  return PartOutcome::AllRecords(n, bad);
}

absl::StatusOr<PartOutcome> IterableSession::Resolve(const json& doc,
                                                     std::span<const Prepared* const> items) {
  const size_t n = items.size();
  std::map<std::string, std::vector<size_t>> by_email, by_user_id;
  for (size_t i = 0; i < n; ++i) {
    if (!items[i]->email_key.empty()) by_email[items[i]->email_key].push_back(i);
    if (!items[i]->user_id.empty()) by_user_id[items[i]->user_id].push_back(i);
  }
  std::vector<std::optional<absl::Status>> out(n);
  std::set<size_t> doubt;
  int64_t named = 0;  // failures the reply ties to records (or to records in doubt)

  auto failed = doc.find("failedUpdates");
  if (failed != doc.end() && failed->is_object()) {
    for (const auto& [list, entries] : failed->items()) {
      if (!entries.is_array()) continue;
      const bool by_mail = list.find("Email") != std::string::npos;
      std::map<std::string, int64_t> counts;
      std::map<std::string, std::string> shown;
      for (const json& e : entries) {
        if (!e.is_string()) continue;
        std::string key = by_mail ? Lower(e.get<std::string>()) : e.get<std::string>();
        ++counts[key];
        shown.emplace(key, e.get<std::string>());
      }
      const auto& index = by_mail ? by_email : by_user_id;
      for (const auto& [key, count] : counts) {
        auto it = index.find(key);
        if (it == index.end()) continue;  // not a sent identifier: counts as unattributed
        const std::vector<size_t>& hits = it->second;
        if (count >= static_cast<int64_t>(hits.size())) {
          // Every record with this identifier failed (an identifier
          // problem applies to all of them).
          for (size_t i : hits) {
            if (!out[i]) out[i] = ListStatus(list, shown[key], events_);
          }
          named += static_cast<int64_t>(hits.size());
        } else {
          // Fewer failures than records with this identifier: which ones
          // is unknown.
          for (size_t i : hits) {
            if (!out[i]) doubt.insert(i);
          }
          named += count;
        }
      }
    }
  }
  if (auto it = doc.find("disallowedEventNames"); it != doc.end() && it->is_array()) {
    std::set<std::string> names;
    for (const json& e : *it) {
      if (e.is_string()) names.insert(e.get<std::string>());
    }
    for (size_t i = 0; i < n; ++i) {
      if (out[i] || !names.count(items[i]->event_name)) continue;
      doubt.erase(i);
      out[i] = absl::InvalidArgumentError(fmt::format(
          "Iterable does not accept events named \"{}\" in this project (disallowedEventNames); "
          "allow the event name in Iterable's project settings, or stop sending it",
          items[i]->event_name));
      ++named;
    }
  }
  if (auto it = doc.find("filteredOutFields"); it != doc.end() && it->is_array()) {
    std::set<std::string> dropped;
    for (const json& e : *it) {
      if (e.is_string()) dropped.insert(e.get<std::string>());
    }
    // The list is for the whole request: with several records carrying a
    // dropped field, whose value was dropped is unknown.
    for (size_t i = 0; i < n; ++i) {
      if (out[i] || doubt.count(i)) continue;
      for (const std::string& path : items[i]->data_paths) {
        if (!dropped.count(path)) continue;
        if (n > 1) {
          doubt.insert(i);
          break;
        }
        out[i] = absl::InvalidArgumentError(fmt::format(
            "Iterable stored this {} without dataFields.{} (filteredOutFields): the value's type "
            "does not match the field's type in the project's schema, or the project does not "
            "create new fields. Send the value with the field's type (or change the field in "
            "Iterable); the record is sent again when it changes",
            label(), path));
        break;
      }
    }
  }
  if (auto fc = doc.find("failCount");
      fc != doc.end() && fc->is_number_integer() && fc->get<int64_t>() > named) {
    // Iterable counted failures it did not tie to an identifier we sent.
    for (size_t i = 0; i < n; ++i) {
      if (out[i]) continue;
      if (n > 1) {
        doubt.insert(i);
      } else {
        out[i] = absl::InvalidArgumentError(
            fmt::format("Iterable counted this {} as failed (failCount {}) without naming it: {}",
                        label(), fc->get<int64_t>(), BodySnippet(doc.dump(), 300)));
      }
    }
  }

  // Records in doubt are sent again, in two halves that resolve their own
  // doubts the same way, down to single records whose failures can only be
  // their own.
  std::vector<size_t> pending;
  for (size_t i : doubt) {
    if (!out[i]) pending.push_back(i);
  }
  std::vector<std::vector<size_t>> parts;
  if (pending.size() == 1) {
    parts.push_back(pending);
  } else if (!pending.empty()) {
    const auto mid = pending.begin() + static_cast<std::ptrdiff_t>(pending.size() / 2);
    parts.emplace_back(pending.begin(), mid);
    parts.emplace_back(mid, pending.end());
  }
  for (const std::vector<size_t>& part : parts) {
    std::vector<const Prepared*> again;
    for (size_t i : part) again.push_back(items[i]);
    // SendBisecting splits spans of records; offsets into `slots` map a
    // part back to `again` (a half refused as a whole is bisected too).
    std::vector<OutgoingRecord> slots(again.size());
    absl::StatusOr<std::vector<absl::Status>> sent =
        SendBisecting(slots, [&](std::span<const OutgoingRecord> sub) {
          size_t offset = static_cast<size_t>(sub.data() - slots.data());
          return SendBulk(std::span<const Prepared* const>(again).subspan(offset, sub.size()));
        });
    if (!sent.ok()) {
      // The run stops; the other records of this request keep their outcome.
      for (size_t i : pending) {
        if (!out[i]) out[i] = sent.status();
      }
      break;
    }
    for (size_t k = 0; k < part.size(); ++k) out[part[k]] = (*sent)[k];
  }
  std::vector<absl::Status> results(n, absl::OkStatus());
  for (size_t i = 0; i < n; ++i) {
    if (out[i]) results[i] = *out[i];
  }
  return PartOutcome::PerRecord(std::move(results));
}

absl::Status IterableSession::Delete(const Prepared& p, absl::Status& result) {
  if (!stop_.ok()) return stop_;
  DeliveryResult d =
      delete_delivery_.Send([&] { return dest_->Request("DELETE", p.delete_path, ""); });
  if (!d.response.ok()) {
    result = delete_delivery_.FailureStatus(d, kWhat);
    return absl::OkStatus();
  }
  const HttpResponse& r = *d.response;
  const std::string code = ReplyCode(r);
  if (r.status == 401 || AuthCode(code)) {
    stop_ = dest_->AuthError(r);
    return stop_;
  }
  if (r.status == 403) {
    stop_ = dest_->ForbiddenError(r, "deleting users (DELETE /api/users/...)");
    return stop_;
  }
  // A 404 in Iterable's own envelope is about the user; anything else
  // means the URL does not lead to Iterable's API.
  if ((r.status == 404 && code.empty()) || (r.status >= 300 && r.status < 400)) {
    stop_ = dest_->EndpointError(r, "DELETE", p.delete_path);
    return stop_;
  }
  if (r.status == 429 || RateLimitCode(code)) {
    result = absl::ResourceExhaustedError(
        fmt::format("Iterable's rate limit for deleting users was still exceeded {} (HTTP {}): {}",
                    d.AttemptsText(), r.status, IterableSaid(r)));
  } else if (IterableRetryable(r)) {
    result = absl::UnavailableError(fmt::format("Iterable answered HTTP {} for the delete {}: {}",
                                                r.status, d.AttemptsText(), IterableSaid(r)));
  } else if (NoSuchUser(r)) {
    result = absl::OkStatus();  // nothing to delete
  } else if (Is2xx(r.status) && (code.empty() || code == "Success")) {
    result = absl::OkStatus();
  } else {
    result = absl::InvalidArgumentError(
        fmt::format("Iterable refused to delete the user with {} (HTTP {}): {}", p.delete_label,
                    r.status, IterableSaid(r)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ActionSession>> IterableDestination::StartSession(
    const SessionOptions& options) {
  if (options.action == nullptr ||
      (options.action->id != kUpdateUsers && options.action->id != kTrackEvents)) {
    return absl::InvalidArgumentError(
        fmt::format("iterable has no action \"{}\"; use update_users or track_events",
                    options.action == nullptr ? std::string() : options.action->id));
  }
  const std::vector<std::string>& fields = options.layout.fields;
  if (std::find(fields.begin(), fields.end(), "email") == fields.end() &&
      std::find(fields.begin(), fields.end(), "userId") == fields.end()) {
    return absl::FailedPreconditionError(fmt::format(
        "mapping \"{}\": Iterable identifies users by email or userId, and neither is mapped: "
        "map at least one of them (email: <column>, userId: <column>; by default the model's "
        "email and user_id columns are used)",
        options.mapping));
  }
  bool events = options.action->id == kTrackEvents;
  return std::unique_ptr<ActionSession>(std::make_unique<IterableSession>(this, options, events));
}

// ---------------------------------------------------------------- definition

FieldSpec Field(std::string key, std::string label, FieldType type, std::string description,
                std::string default_column = "") {
  FieldSpec f;
  f.key = std::move(key);
  f.label = std::move(label);
  f.type = type;
  f.description = std::move(description);
  f.default_column = std::move(default_column);
  return f;
}

SettingSpec Setting(std::string key, std::string label, SettingType type, std::string description,
                    json default_value = nullptr) {
  SettingSpec s;
  s.key = std::move(key);
  s.label = std::move(label);
  s.type = type;
  s.description = std::move(description);
  s.default_value = std::move(default_value);
  return s;
}

std::vector<FieldSpec> IdentifierFields(bool events) {
  const std::string whose = events ? "of the user the event belongs to" : "of the user";
  return {
      Field("email", "Email", FieldType::kString,
            fmt::format("The email address {}: the identifier of email-based and hybrid "
                        "projects. Map email, userId or both (a record needs at least one "
                        "non-empty). Unmapped: the model's `email` column, if any.",
                        whose),
            "email"),
      Field("userId", "User ID", FieldType::kString,
            fmt::format("The userId {}: the identifier of userId-based and hybrid projects. "
                        "Unmapped: the model's `user_id` column, if any.{}",
                        whose,
                        events ? ""
                               : " Map the model's primary key to userId (or email) so deleted "
                                 "rows delete the user."),
            "user_id"),
  };
}

ActionSpec UpdateUsersAction() {
  ActionSpec a;
  a.id = kUpdateUsers;
  a.title = "Update users";
  a.description =
      "Creates or updates Iterable users from added and updated records (POST "
      "/api/users/bulkUpdate: data fields are merged, fields not sent are kept), and deletes the "
      "users of deleted records (DELETE /api/users/{email} or /api/users/byUserId/{userId}).";
  a.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                  RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                  RecordSelection::kAll};
  a.fields = IdentifierFields(/*events=*/false);
  a.fields.push_back(Field(
      "dataFields", "Data fields", FieldType::kObject,
      "User profile fields: map `dataFields.<name>: <column>` (e.g. `dataFields.plan: plan`, "
      "`dataFields.firstName: first_name`), nested objects as `dataFields.address.city`, or the "
      "whole object from a JSON column. NULL sets the field to null; timestamps are sent in "
      "Iterable's date format."));
  a.extra_field_parents = {"dataFields"};
  a.max_batch_records = kMaxBulkRecords;
  a.default_batch_records = kDefaultBulkRecords;
  return a;
}

ActionSpec TrackEventsAction() {
  ActionSpec a;
  a.id = kTrackEvents;
  a.title = "Track events";
  a.description =
      "Tracks one Iterable custom event per added record (POST /api/events/trackBulk), such as "
      "one \"Order Completed\" per new row of an orders model. Each event carries a "
      "deterministic id, so an event sent again overwrites itself instead of counting twice.";
  a.selections = {RecordSelection::kAdded};
  a.fields = IdentifierFields(/*events=*/true);
  FieldSpec name = Field("eventName", "Event name", FieldType::kString,
                         "The event's name: a column, or a text literal such as \"'Order "
                         "Completed'\" when every row is the same event.");
  name.required = true;
  a.fields.push_back(name);
  a.fields.push_back(
      Field("id", "Event ID", FieldType::kString,
            "The event's id: an event sent again with the same id overwrites the earlier one. "
            "Unmapped: a hash of the mapping, the row's key and its values, which is stable across "
            "retries and runs. Map a column (e.g. an order id) to make the id your own."));
  a.fields.push_back(Field("createdAt", "Created at", FieldType::kTimestamp,
                           "When the event happened (sent as epoch seconds; a timestamp without "
                           "a zone is read as UTC). Unmapped or NULL: when Iterable receives it.",
                           "created_at"));
  a.fields.push_back(Field("dataFields", "Data fields", FieldType::kObject,
                           "Event fields: map `dataFields.<name>: <column>` (e.g. "
                           "`dataFields.total: amount`), or the whole object from a JSON column."));
  a.fields.push_back(Field("campaignId", "Campaign ID", FieldType::kInteger,
                           "The Iterable campaign the event is attributed to (optional)."));
  a.fields.push_back(Field("templateId", "Template ID", FieldType::kInteger,
                           "The Iterable template the event is attributed to (optional)."));
  a.extra_field_parents = {"dataFields"};
  a.max_batch_records = kMaxBulkRecords;
  a.default_batch_records = kDefaultBulkRecords;
  return a;
}

constexpr char kNotes[] = R"md(## Identifying users

Iterable finds a user by **email** or **userId**; which one a project uses depends on how it was
set up (email-based, userId-based or hybrid). Map one or both:

```yaml
mappings:
  - name: users_to_iterable
    model: users                 # primary_key: user_id
    destination: iterable
    action: update_users
    fields:
      userId: user_id            # the primary key: deleted rows delete this user
      email: email
      dataFields.plan: plan
      dataFields.firstName: first_name
      dataFields.signedUpAt: signed_up_at
```

- A record whose email and userId are both NULL or empty fails on its own and is not sent.
- `prefer_user_id` (default `true`) sends `"preferUserId": true`: in an email-based project, a user
  given only a userId that Iterable does not know yet is created (Iterable gives it a placeholder
  email). With `false`, such records fail as not found.
- Deletes use the identifier the model's `primary_key` is mapped to: `userId` (`DELETE
  /api/users/byUserId/{userId}`), else `email` (`DELETE /api/users/{email}`). Deleting a user is
  permanent; use `records: added_or_updated` to never delete, and keep `max_deletes` on the
  mapping. Iterable processes deletes asynchronously.

## Wire format

Every request carries `Api-Key: <api_key>`; bodies are JSON.

`update_users`, added and updated records (at most 1,000 users per request):

```
POST /api/users/bulkUpdate
{"users":[{"email":"ada@example.com","userId":"u_42","dataFields":{"plan":"pro",
   "signedUpAt":"2026-01-02 03:04:05 +00:00"},"preferUserId":true,"mergeNestedObjects":false}]}
```

`track_events`, added records:

```
POST /api/events/trackBulk
{"events":[{"userId":"u_42","eventName":"Order Completed","id":"9f2c…","createdAt":1767322245,
   "dataFields":{"orderId":"o_9","total":14.99}}]}
```

- **Data fields are merged**: fields that are not sent keep their value in Iterable. NULL sets a
  field to null. With `merge_nested_objects: true`, nested objects are merged too instead of
  replaced.
- **Dates**: ISO-8601 date-times in `dataFields` (timestamp columns included) are sent as
  `yyyy-MM-dd HH:mm:ss +00:00` (UTC, whole seconds), the format Iterable recognises as a date;
  date-only values are sent as `YYYY-MM-DD`.
- **Field types**: Iterable infers a field's type from the first value it sees and drops later
  values of another type (`filteredOutFields`). Keep a column's type stable.
  `create_new_fields` (unset: the project's own setting) controls whether unknown fields are
  added to the schema or dropped.
- **Event ids**: `id` is the mapped `id` or else a hash of the mapping, the row's key and its
  values. Iterable overwrites an event sent again with the same id, so a batch re-sent after a
  timeout does not count the events twice.
- A user occurs at most once per request; a second record for the same email or userId goes in
  the next request, so the last one wins.
- The connection check (`backflow test-connection`) posts `{"users":[]}` to
  `/api/users/bulkUpdate`: it checks the key and its access to the write endpoint and changes
  nothing.

## Replies

Iterable answers bulk requests with HTTP 200 even when some users or events failed, and names
the failures **by email or userId, not by position**:

```json
{"successCount":98,"failCount":2,"filteredOutFields":["ltv"],"createdFields":["plan"],
 "failedUpdates":{"invalidEmails":["not-an-email"],"notFoundUserIds":["u_7"],
   "forgottenEmails":["gdpr@example.com"], "conflictEmails":[], "invalidDataEmails":[]}}
```

| reply | outcome |
| --- | --- |
| 200, nothing listed | every record accepted |
| `failedUpdates.invalidEmails` / `invalidUserIds` | the records with that email / userId fail (malformed identifier) |
| `notFoundEmails` / `notFoundUserIds` | the records fail: the user does not exist and is not created (see `prefer_user_id`) |
| `conflictEmails` / `conflictUserIds` | the records fail: their email and userId belong to different users |
| `invalidDataEmails` / `invalidDataUserIds` | the records fail: a data field does not fit the project's schema |
| `forgottenEmails` / `forgottenUserIds` | counted as delivered: the user was forgotten (GDPR) and Iterable will never store data for them |
| `disallowedEventNames` | the events with that name fail |
| `filteredOutFields` | the record whose value was dropped fails (the rest of the user was stored) and is sent again when it changes; the list is for the whole request, so when several records carry the field they are re-sent in halves to find which |
| an identifier listed fewer times than records carry it, or `failCount` higher than what is listed | the records in doubt are re-sent in halves, down to single records, to find out (updates merge and events overwrite by id, so this is harmless) |
| 200 with `"code"` other than `Success` | `BadApiKey`: the run stops; `RateLimitExceeded`: retried like a 429; `GenericError`: retried like a 5xx; any other code: the request is split in halves until the refused record is isolated |
| 400, 413, 422 | the request is split in halves and re-sent until the refused record is isolated; it fails with Iterable's message |
| 429 | retried with exponential backoff and jitter (Iterable sends no Retry-After), up to `max_retries`; then the records fail and are sent again next run |
| 5xx, 408, timeouts | retried the same way |
| 401 | the run stops: the key is wrong, or belongs to a project in the other data center |
| 403 | the run stops: the key's type (JavaScript, mobile, read-only) cannot call this endpoint; use a Server-side key |
| 404, 3xx | the run stops: check `base_url` |
| delete of a user Iterable does not have | counted as deleted |

## Limits

Iterable limits requests per project and endpoint and signals excess with 429. Backflow keeps
below `bulk_update_requests_per_second` (5; not confirmed by Iterable's docs),
`track_bulk_requests_per_second` (10) and `delete_requests_per_second` (100) for all mappings of
the destination together, retries included; `max_requests_per_second` caps further. Lower them
when other tools use the same project's API. Requests carry at most 1,000 users or events (the
mapping's `batch_size`, default 100).
)md";

}  // namespace

DestinationDefinition IterableDestinationDefinition() {
  DestinationDefinition def;
  def.type = "iterable";
  def.title = "Iterable";
  def.description =
      "Keeps Iterable user profiles in step with a model (bulk user updates by email or userId, "
      "deletes) and tracks custom events with deterministic ids, matching Iterable's per-user "
      "failures by identifier.";
  def.maturity = "beta";

  SettingSpec key = Setting(
      "api_key", "API key", SettingType::kString,
      "A Server-side Iterable API key (Iterable: Integrations > API Keys), sent as the Api-Key "
      "header. JavaScript, mobile and read-only keys cannot call the bulk and delete APIs. A key "
      "works only in its project's data center (see base_url).");
  key.required = true;
  key.secret = true;
  def.settings.push_back(key);
  def.settings.push_back(Setting(
      "prefer_user_id", "Prefer userId", SettingType::kBoolean,
      "Sends \"preferUserId\" on user updates: in email-based projects, a user given only a "
      "userId that does not exist yet is created. With false, such records fail as not found.",
      true));
  def.settings.push_back(Setting(
      "merge_nested_objects", "Merge nested objects", SettingType::kBoolean,
      "Sends \"mergeNestedObjects\": with true, an object-valued data field is merged into the "
      "user's existing object; with false (Iterable's default) it replaces it.",
      false));
  def.settings.push_back(Setting(
      "create_new_fields", "Create new fields", SettingType::kBoolean,
      "Sends \"createNewFields\" on user updates: true adds data fields the project does not "
      "know yet to its schema, false drops them (the records carrying them then fail). Unset: "
      "the project's own setting."));
  def.settings.push_back(Setting(
      "bulk_update_requests_per_second", "bulkUpdate requests per second", SettingType::kInteger,
      "Iterable's rate limit for POST /api/users/bulkUpdate in this project (5 per second; not "
      "confirmed by Iterable's docs). Backflow never sends faster, retries included.",
      kDefaultBulkUpdatePerSecond));
  def.settings.push_back(Setting(
      "track_bulk_requests_per_second", "trackBulk requests per second", SettingType::kInteger,
      "Iterable's rate limit for POST /api/events/trackBulk in this project (10 per second).",
      kDefaultTrackBulkPerSecond));
  def.settings.push_back(Setting(
      "delete_requests_per_second", "Delete requests per second", SettingType::kInteger,
      "Requests per second for deleting users (one request per user); Iterable's limit for the "
      "single-user endpoints is higher.",
      kDefaultDeletePerSecond));

  HttpSettingsDefaults http;
  http.base_url = kDefaultBaseUrl;
  http.base_url_help = fmt::format(
      "Projects in Iterable's EU data center (app.eu.iterable.com) must use {}; their keys are "
      "refused by the US host.",
      kEuBaseUrl);
  http.concurrency = 4;
  for (SettingSpec& s : HttpSettingSpecs(http)) def.settings.push_back(std::move(s));

  def.actions.push_back(UpdateUsersAction());
  def.actions.push_back(TrackEventsAction());
  def.notes = kNotes;

  def.create = HttpDestinationFactory<IterableDestination>(def.type, ParseConfig);
  return def;
}

}  // namespace backflow
