#include "backflow/sources/snowflake/snowflake_source.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"
#include "backflow/common/civil_date.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/common/status_macros.h"
#include "backflow/common/url.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kStatementsPath[] = "/api/v2/statements";
// Snowflake answers a synchronous submit after at most 45 s.
constexpr std::chrono::milliseconds kMinSubmitTimeout{60'000};
constexpr std::chrono::minutes kPollGrace{5};
constexpr int64_t kMaxStatementTimeoutS = 604'800;
constexpr char kCheckSql[] =
    "SELECT CURRENT_USER(), CURRENT_ROLE(), CURRENT_WAREHOUSE(), CURRENT_DATABASE(), "
    "CURRENT_SCHEMA()";

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// The account identifier without a scheme, path or Snowflake host suffix.
std::string BareAccount(std::string_view account) {
  std::string a(account);
  if (size_t p = a.find("://"); p != std::string::npos) a = a.substr(p + 3);
  if (size_t p = a.find('/'); p != std::string::npos) a = a.substr(0, p);
  std::string lower = Lower(a);
  for (std::string_view suffix : {".snowflakecomputing.com", ".snowflakecomputing.cn"}) {
    if (lower.size() > suffix.size() && lower.ends_with(suffix)) {
      a.resize(a.size() - suffix.size());
      break;
    }
  }
  return a;
}

std::string NewUuid() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t hi, lo;
  {
    std::lock_guard<std::mutex> lock(mu);
    hi = rng();
    lo = rng();
  }
  hi = (hi & ~0xF000ULL) | 0x4000ULL;              // version 4
  lo = (lo & ~(0xC0ULL << 56)) | (0x80ULL << 56);  // RFC 4122 variant
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF,
                     hi & 0xFFFF, lo >> 48, lo & 0xFFFFFFFFFFFFULL);
}

std::string OpenSslError() {
  unsigned long e = ERR_get_error();  // NOLINT(runtime/int): OpenSSL's type
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

// Inflates a gzip body (for an HttpClient that did not decode it).
absl::StatusOr<std::string> Gunzip(std::string_view in) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) return absl::InternalError("inflateInit2 failed");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  std::string out;
  std::array<char, 65536> buf;
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(buf.data());
    zs.avail_out = static_cast<uInt>(buf.size());
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&zs);
      return absl::DataLossError(fmt::format("corrupt gzip partition body (zlib error {})", rc));
    }
    out.append(buf.data(), buf.size() - zs.avail_out);
    if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0) {
      inflateEnd(&zs);
      return absl::DataLossError("truncated gzip partition body");
    }
  }
  inflateEnd(&zs);
  return out;
}

// --- Cell decoding ----------------------------------------------------------

int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

std::string FormatDate(int64_t days) {
  const CivilDate date = CivilFromDays(days);
  return fmt::format("{:04d}-{:02d}-{:02d}", date.year, date.month, date.day);
}

bool AllDigits(std::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

// "-12.50" style: optional sign, digits, optional '.' digits.
bool IsPlainDecimal(std::string_view s) {
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  size_t dot = s.find('.');
  if (dot == std::string_view::npos) return AllDigits(s);
  return AllDigits(s.substr(0, dot)) && AllDigits(s.substr(dot + 1));
}

// Canonical kDecimal text: no '+', and "-0" kept as Snowflake sent it.
std::string DecimalText(std::string_view s) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  return std::string(s);
}

// "1.5e3" -> "1500", "-2.5E-2" -> "-0.025"; plain decimals unchanged.
std::optional<std::string> ExpandExponent(std::string_view s) {
  size_t e = s.find_first_of("eE");
  if (e == std::string_view::npos) {
    if (!IsPlainDecimal(s)) return std::nullopt;
    return DecimalText(s);
  }
  std::string_view mant = s.substr(0, e);
  std::string_view exps = s.substr(e + 1);
  if (!IsPlainDecimal(mant) || exps.empty()) return std::nullopt;
  int64_t exp = 0;
  std::string exp_text(exps[0] == '+' ? exps.substr(1) : exps);
  auto [p, ec] = std::from_chars(exp_text.data(), exp_text.data() + exp_text.size(), exp);
  if (ec != std::errc() || p != exp_text.data() + exp_text.size() || std::abs(exp) > 400) {
    return std::nullopt;
  }
  bool neg = false;
  if (mant[0] == '-' || mant[0] == '+') {
    neg = mant[0] == '-';
    mant.remove_prefix(1);
  }
  size_t dot = mant.find('.');
  std::string digits(mant.substr(0, dot));
  int64_t point = static_cast<int64_t>(digits.size());  // digits before the point
  if (dot != std::string_view::npos) digits += mant.substr(dot + 1);
  point += exp;
  std::string out;
  if (point <= 0) {
    out = "0." + std::string(static_cast<size_t>(-point), '0') + digits;
  } else if (point >= static_cast<int64_t>(digits.size())) {
    out = digits + std::string(static_cast<size_t>(point) - digits.size(), '0');
  } else {
    out = digits.substr(0, static_cast<size_t>(point)) + "." +
          digits.substr(static_cast<size_t>(point));
  }
  // Strip leading zeros of the integer part and trailing zeros of the fraction.
  size_t dot2 = out.find('.');
  if (dot2 != std::string::npos) {
    while (out.back() == '0') out.pop_back();
    if (out.back() == '.') out.pop_back();
  }
  size_t int_end = out.find('.');
  if (int_end == std::string::npos) int_end = out.size();
  size_t lead = 0;
  while (lead + 1 < int_end && out[lead] == '0') ++lead;
  out.erase(0, lead);
  if (neg && out != "0") out.insert(out.begin(), '-');
  return out;
}

// Seconds since the epoch (or midnight) with up to 9 fraction digits, or, when
// `allow_nanos`, an integer of more than 12 digits counting nanoseconds
// (seconds need at most 12 digits until the year 33658): -> floor seconds and
// nanoseconds in [0, 1e9).
bool ParseEpoch(std::string_view s, bool allow_nanos, int64_t& secs, int64_t& nanos) {
  bool neg = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    neg = s[0] == '-';
    s.remove_prefix(1);
  }
  size_t dot = s.find('.');
  std::string_view whole = s.substr(0, dot);
  if (!AllDigits(whole) || whole.size() > 19) return false;
  if (dot == std::string_view::npos && allow_nanos && whole.size() > 12) {
    uint64_t ns = 0;
    auto [p, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), ns);
    if (ec != std::errc() || ns > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return false;
    }
    int64_t v = neg ? -static_cast<int64_t>(ns) : static_cast<int64_t>(ns);
    secs = FloorDiv(v, 1'000'000'000);
    nanos = v - secs * 1'000'000'000;
    return true;
  }
  int64_t w = 0;
  auto [p, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), w);
  if (ec != std::errc() || w > 400'000'000'000LL) return false;  // beyond year 9999
  int64_t frac = 0;
  if (dot != std::string_view::npos) {
    std::string_view f = s.substr(dot + 1);
    if (!AllDigits(f) || f.size() > 9) return false;
    std::string padded(f);
    padded.resize(9, '0');
    frac = std::stoll(padded);
  }
  if (!neg) {
    secs = w;
    nanos = frac;
  } else if (frac == 0) {
    secs = -w;
    nanos = 0;
  } else {
    secs = -w - 1;
    nanos = 1'000'000'000 - frac;
  }
  return true;
}

std::string FractionText(int64_t nanos) {
  if (nanos == 0) return "";
  std::string f = fmt::format("{:09d}", nanos);
  while (f.back() == '0') f.pop_back();
  return "." + f;
}

std::string FormatClock(int64_t seconds_of_day, int64_t nanos) {
  return fmt::format("{:02d}:{:02d}:{:02d}{}", seconds_of_day / 3600, seconds_of_day / 60 % 60,
                     seconds_of_day % 60, FractionText(nanos));
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string JsonString(const json& j, std::string_view key) {
  auto it = j.find(std::string(key));
  if (it == j.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

std::optional<int64_t> JsonInt(const json& j, std::string_view key) {
  auto it = j.find(std::string(key));
  if (it == j.end()) return std::nullopt;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) {
    int64_t v = 0;
    const std::string& s = it->get_ref<const std::string&>();
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec == std::errc() && p == s.data() + s.size()) return v;
  }
  return std::nullopt;
}

// --- Auth ---------------------------------------------------------------------

std::string_view TokenTypeHeader(SnowflakeAuth auth) {
  switch (auth) {
    case SnowflakeAuth::kKeyPair:
      return "KEYPAIR_JWT";
    case SnowflakeAuth::kOAuth:
      return "OAUTH";
    case SnowflakeAuth::kProgrammaticAccessToken:
      return "PROGRAMMATIC_ACCESS_TOKEN";
  }
  return "";
}

// Mints key-pair JWTs, reusing one until renew_after has passed.
class KeyPairTokens : public TokenSource {
 public:
  KeyPairTokens(std::unique_ptr<Rs256Key> key, std::string account, std::string user, Clock* clock,
                std::chrono::seconds lifetime, std::chrono::seconds renew_after)
      : key_(std::move(key)),
        account_(std::move(account)),
        user_(std::move(user)),
        clock_(clock),
        lifetime_(lifetime),
        renew_after_(renew_after) {}

  absl::StatusOr<std::string> Token(bool refresh) override {
    std::lock_guard<std::mutex> lock(mu_);
    Clock::TimePoint now = clock_->Now();
    if (!refresh && !jwt_.empty() && now < minted_ + renew_after_) return jwt_;
    absl::StatusOr<std::string> jwt = SignSnowflakeJwt(*key_, account_, user_, now, lifetime_);
    if (!jwt.ok()) return jwt.status();
    jwt_ = *jwt;
    minted_ = now;
    return jwt_;
  }

 private:
  const std::unique_ptr<Rs256Key> key_;
  const std::string account_;
  const std::string user_;
  Clock* const clock_;
  const std::chrono::seconds lifetime_;
  const std::chrono::seconds renew_after_;
  std::mutex mu_;
  std::string jwt_;
  Clock::TimePoint minted_;
};

// A PAT or OAuth token: nothing to refresh, so a refused one is final.
class StaticToken : public TokenSource {
 public:
  explicit StaticToken(std::string token) : token_(std::move(token)) {}
  absl::StatusOr<std::string> Token(bool refresh) override {
    if (refresh) return absl::UnauthenticatedError("Snowflake refused the token");
    return token_;
  }

 private:
  const std::string token_;
};

// --- The API client -----------------------------------------------------------

// What Snowflake said in an error or status body.
struct SnowflakeMessage {
  std::string code;
  std::string message;
  std::string sql_state;
  std::string handle;

  static SnowflakeMessage From(const std::string& body) {
    SnowflakeMessage m;
    json j = json::parse(body, nullptr, false);
    if (j.is_object()) {
      m.code = JsonString(j, "code");
      m.message = JsonString(j, "message");
      m.sql_state = JsonString(j, "sqlState");
      m.handle = JsonString(j, "statementHandle");
    }
    if (m.message.empty()) m.message = BodySnippet(body, 300);
    return m;
  }

  std::string Describe() const {
    std::string out = message.empty() ? "(no message)" : message;
    std::vector<std::string> parts;
    if (!code.empty()) parts.push_back("code " + code);
    if (!sql_state.empty()) parts.push_back("SQL state " + sql_state);
    if (!parts.empty()) {
      out += " (";
      for (size_t i = 0; i < parts.size(); ++i) out += (i ? ", " : "") + parts[i];
      out += ")";
    }
    return out;
  }
};

// A finished statement's metadata and partition 0.
struct ResultSet {
  std::string handle;
  std::vector<SnowflakeColumnType> columns;
  std::vector<int64_t> partition_rows;  // rowCount per partition
  int64_t num_rows = 0;
  json data;  // partition 0
};

enum class Step { kSubmit, kPoll, kPartition, kCancel };

bool RetryableStatus(int status) {
  return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

class SnowflakeClient {
 public:
  SnowflakeClient(SnowflakeConfig config, const ConnectorEnv& env,
                  std::unique_ptr<TokenSource> tokens, std::string fingerprint)
      : config_(std::move(config)),
        http_(env.http),
        clock_(env.clock),
        tokens_(std::move(tokens)),
        fingerprint_(std::move(fingerprint)),
        jwt_account_(SnowflakeJwtAccount(config_.account)) {}

  const SnowflakeConfig& config() const { return config_; }

  // Submits `sql` (with TEXT `bindings` for its `?`s) and waits for it to
  // finish; `cancel` as in QueryOptions.
  absl::StatusOr<ResultSet> Execute(const std::string& sql,
                                    const std::vector<std::string>& bindings = {},
                                    const std::atomic<bool>* cancel = nullptr) {
    if (QueryCancelRequested(cancel)) {
      return absl::CancelledError("the run was cancelled before the Snowflake query was submitted");
    }
    const std::string request_id = NewUuid();
    json body = json::object();
    body["statement"] = sql;
    if (!bindings.empty()) {
      json b = json::object();
      for (size_t i = 0; i < bindings.size(); ++i) {
        b[std::to_string(i + 1)] = {{"type", "TEXT"}, {"value", bindings[i]}};
      }
      body["bindings"] = std::move(b);
    }
    body["timeout"] = config_.statement_timeout_s;
    for (auto [key, value] :
         {std::pair{"warehouse", &config_.warehouse}, std::pair{"database", &config_.database},
          std::pair{"schema", &config_.schema}, std::pair{"role", &config_.role}}) {
      if (!value->empty()) body[key] = *value;
    }
    json params = {{"timezone", "UTC"}, {"binary_output_format", "HEX"}};
    if (!config_.query_tag.empty()) params["query_tag"] = config_.query_tag;
    body["parameters"] = params;
    const std::string payload = Dump(body);

    int attempt = 0;
    HttpDelivery delivery = Delivery(/*poll=*/false);
    const Clock::TimePoint started = clock_->Now();
    DeliveryResult d = delivery.Send([&] {
      ++attempt;
      HttpRequest r =
          Request("POST", fmt::format("{}{}?requestId={}{}", config_.http.base_url, kStatementsPath,
                                      request_id, attempt > 1 ? "&retry=true" : ""));
      r.body = payload;
      r.timeout = std::max(config_.http.timeout, kMinSubmitTimeout);
      // A re-send must carry retry=true, so the transport may not repeat it.
      r.idempotent = false;
      return r;
    });
    if (!d.response.ok() || (d.response->status != 200 && d.response->status != 202)) {
      return Failure(d, Step::kSubmit);
    }
    if (d.response->status == 200) return ParseResultSet(d.response->body);

    SnowflakeMessage status = SnowflakeMessage::From(d.response->body);
    if (status.handle.empty()) {
      return absl::DataLossError(fmt::format("Snowflake answered 202 without a statementHandle: {}",
                                             BodySnippet(d.response->body)));
    }
    json j = json::parse(d.response->body, nullptr, false);
    std::string status_path = j.is_object() ? JsonString(j, "statementStatusUrl") : "";
    if (!status_path.starts_with("/")) {
      status_path = fmt::format("{}/{}", kStatementsPath, PercentEncode(status.handle));
    }
    absl::StatusOr<ResultSet> result = Poll(status.handle, status_path, started, cancel);
    if (!result.ok() && ShouldCancelAfter(result.status())) Cancel(status.handle);
    return result;
  }

  // Fetches partition `n` (>= 1) of a finished statement: its `data` array.
  absl::StatusOr<json> FetchPartition(const std::string& handle, size_t n) {
    HttpDelivery delivery = Delivery(/*poll=*/false);
    const std::string url = fmt::format("{}{}/{}?partition={}", config_.http.base_url,
                                        kStatementsPath, PercentEncode(handle), n);
    DeliveryResult d = delivery.Send([&] { return Request("GET", url); });
    if (!d.response.ok() || d.response->status != 200) return Failure(d, Step::kPartition);
    std::string body = std::move(d.response->body);
    if (body.size() >= 2 && static_cast<unsigned char>(body[0]) == 0x1f &&
        static_cast<unsigned char>(body[1]) == 0x8b) {
      BACKFLOW_ASSIGN_OR_RETURN(body, Gunzip(body));
    }
    json j = json::parse(body, nullptr, false);
    if (j.is_object() && j.contains("data")) j = std::move(j["data"]);
    if (!j.is_array()) {
      return absl::DataLossError(
          fmt::format("Snowflake partition {} of statement {} is not a JSON rows array: {}", n,
                      handle, BodySnippet(body, 200)));
    }
    return j;
  }

  // Best effort: one attempt, errors ignored.
  void Cancel(const std::string& handle) {
    HttpDelivery delivery = Delivery(/*poll=*/false);
    const std::string url = fmt::format("{}{}/{}/cancel", config_.http.base_url, kStatementsPath,
                                        PercentEncode(handle));
    delivery.Send(
        [&] {
          HttpRequest r = Request("POST", url);
          r.timeout = std::min(config_.http.timeout, std::chrono::milliseconds(10'000));
          return r;
        },
        /*retry=*/false);
  }

 private:
  HttpDelivery Delivery(bool poll) {
    RetryPolicy policy = config_.http.retry;
    VendorRules rules;
    if (poll) {
      // While polling, 429 means "still running": the poll loop handles it.
      rules.retryable = [](const HttpResponse& r) {
        return r.status != 429 && RetryableStatus(r.status);
      };
    } else {
      rules.retryable = [](const HttpResponse& r) { return RetryableStatus(r.status); };
    }
    return HttpDelivery(http_, clock_, {}, policy, std::move(rules), tokens_.get());
  }

  HttpRequest Request(std::string method, std::string url) const {
    HttpRequest r;
    r.method = std::move(method);
    r.url = std::move(url);
    r.timeout = config_.http.timeout;
    r.headers = {
        {"Accept", "application/json"},
        {"User-Agent", kUserAgent},
        {"X-Snowflake-Authorization-Token-Type", std::string(TokenTypeHeader(config_.auth))}};
    if (r.method == "POST") r.headers.emplace_back("Content-Type", "application/json");
    return r;
  }

  // Polls until the statement finishes. A cancel, a timeout or a failure
  // returns an error; Execute() then cancels the statement.
  absl::StatusOr<ResultSet> Poll(const std::string& handle, const std::string& status_path,
                                 Clock::TimePoint started, const std::atomic<bool>* cancel) {
    const auto budget = config_.statement_timeout_s > 0
                            ? std::chrono::seconds(config_.statement_timeout_s)
                            : std::chrono::seconds(kMaxStatementTimeoutS);
    const Clock::TimePoint deadline = started + budget + kPollGrace;
    std::chrono::milliseconds wait = config_.poll_initial;
    HttpDelivery delivery = Delivery(/*poll=*/true);
    const std::string url = config_.http.base_url + status_path;
    const std::string what = fmt::format("Snowflake statement {}", handle);
    while (true) {
      if (QueryCancelRequested(cancel)) return QueryCancelledError(what);
      if (clock_->Now() + wait > deadline) {
        return absl::DeadlineExceededError(fmt::format(
            "Snowflake statement {} was still running {} s after it was submitted; it was "
            "cancelled. Raise statement_timeout_s, use a larger warehouse or simplify the model",
            handle,
            std::chrono::duration_cast<std::chrono::seconds>(clock_->Now() - started).count()));
      }
      clock_->SleepFor(wait);
      wait = std::min(wait * 2, config_.poll_max);
      if (QueryCancelRequested(cancel)) return QueryCancelledError(what);
      DeliveryResult d = delivery.Send([&] { return Request("GET", url); });
      if (!d.response.ok()) return Failure(d, Step::kPoll);
      const int status = d.response->status;
      if (status == 200) return ParseResultSet(d.response->body);
      if (status == 202) continue;
      if (status == 429) {
        if (auto ra = d.response->Header("retry-after")) {
          if (auto w = ParseRetryAfter(*ra, clock_->Now())) wait = std::max(wait, *w);
        }
        continue;
      }
      return Failure(d, Step::kPoll);
    }
  }

  // Whether a failed Execute() may have left the statement running.
  static bool ShouldCancelAfter(const absl::Status& s) {
    switch (s.code()) {
      case absl::StatusCode::kInvalidArgument:  // 422: the statement failed
      case absl::StatusCode::kNotFound:
        return false;
      default:
        return true;
    }
  }

  absl::StatusOr<ResultSet> ParseResultSet(const std::string& body) const {
    json j = json::parse(body, nullptr, false);
    if (!j.is_object()) {
      return absl::UnavailableError(
          fmt::format("Snowflake returned an unreadable result: {}", BodySnippet(body, 200)));
    }
    if (JsonString(j, "code") == "391908") {
      return absl::FailedPreconditionError(fmt::format(
          "Snowflake could not return the whole result ({}); reduce the model's result size",
          SnowflakeMessage::From(body).Describe()));
    }
    if (auto it = j.find("statementHandles"); it != j.end() && it->is_array() && it->size() > 1) {
      return absl::InvalidArgumentError(
          "the model's SQL holds several statements; a model must be one SELECT");
    }
    ResultSet rs;
    rs.handle = JsonString(j, "statementHandle");
    auto meta = j.find("resultSetMetaData");
    if (meta == j.end() || !meta->is_object()) {
      return absl::DataLossError(
          fmt::format("Snowflake result {} has no resultSetMetaData", rs.handle));
    }
    auto row_type = meta->find("rowType");
    if (row_type == meta->end() || !row_type->is_array()) {
      return absl::DataLossError(fmt::format("Snowflake result {} has no rowType", rs.handle));
    }
    for (const json& entry : *row_type) {
      BACKFLOW_ASSIGN_OR_RETURN(SnowflakeColumnType c, ParseSnowflakeRowType(entry));
      rs.columns.push_back(std::move(c));
    }
    auto data = j.find("data");
    if (data != j.end() && data->is_array()) rs.data = std::move(*data);
    if (!rs.data.is_array()) rs.data = json::array();
    auto info = meta->find("partitionInfo");
    if (info != meta->end() && info->is_array() && !info->empty()) {
      for (const json& p : *info) {
        std::optional<int64_t> n = p.is_object() ? JsonInt(p, "rowCount") : std::nullopt;
        if (!n || *n < 0) {
          return absl::DataLossError(
              fmt::format("Snowflake result {} has a malformed partitionInfo", rs.handle));
        }
        rs.partition_rows.push_back(*n);
      }
    } else {
      rs.partition_rows.push_back(static_cast<int64_t>(rs.data.size()));
    }
    std::optional<int64_t> num_rows = JsonInt(*meta, "numRows");
    int64_t sum = 0;
    for (int64_t n : rs.partition_rows) sum += n;
    rs.num_rows = num_rows.value_or(sum);
    if (rs.num_rows != sum) {
      return absl::DataLossError(
          fmt::format("Snowflake result {} announces {} rows but its partitions hold {}", rs.handle,
                      rs.num_rows, sum));
    }
    if (rs.partition_rows.size() > 1 && rs.handle.empty()) {
      return absl::DataLossError("Snowflake result has several partitions but no statementHandle");
    }
    return rs;
  }

  absl::Status Failure(const DeliveryResult& d, Step step) const {
    const bool has_reply = d.response.ok();
    if (!has_reply || d.response->status != 401) {
      if (!d.auth_error.ok()) return d.auth_error;
    }
    if (!has_reply) {
      const absl::Status& s = d.response.status();
      std::string message = fmt::format(
          "could not reach Snowflake at {} {}: {}. Check `account` (or base_url) and the network",
          config_.http.base_url, d.AttemptsText(), s.message());
      return s.code() == absl::StatusCode::kDeadlineExceeded ? absl::DeadlineExceededError(message)
                                                             : absl::UnavailableError(message);
    }
    const HttpResponse& r = *d.response;
    const SnowflakeMessage said = SnowflakeMessage::From(r.body);
    switch (r.status) {
      case 401:
        return Unauthenticated(said);
      case 403:
        return absl::PermissionDeniedError(fmt::format(
            "Snowflake denied the request (HTTP 403): {}. Check that the SQL API is available to "
            "the account, that no network policy blocks this address, and that the user may use "
            "the role",
            said.Describe()));
      case 404:
        if (step == Step::kSubmit) {
          return absl::FailedPreconditionError(fmt::format(
              "no Snowflake SQL API at {} (HTTP 404): check `account`: the account identifier "
              "is orgname-accountname (or the account locator with its region, e.g. "
              "xy12345.us-east-2.aws), or set base_url. Snowflake said: {}",
              config_.http.base_url, said.Describe()));
        }
        return absl::NotFoundError(
            fmt::format("Snowflake no longer knows the statement (HTTP 404): {}", said.Describe()));
      case 408:
        return absl::FailedPreconditionError(fmt::format(
            "the query ran longer than statement_timeout_s ({} s) and Snowflake cancelled it: {}. "
            "Raise statement_timeout_s, use a larger warehouse or simplify the model",
            config_.statement_timeout_s, said.Describe()));
      case 422:
        if (said.code == "000606") {
          return absl::FailedPreconditionError(fmt::format(
              "Snowflake has no warehouse to run the query: {}. Set `warehouse` to a warehouse "
              "the role may use (names are case-sensitive, usually UPPERCASE)",
              said.Describe()));
        }
        return absl::InvalidArgumentError(
            fmt::format("Snowflake rejected the query: {}", said.Describe()));
      case 429: {
        absl::Status s = absl::ResourceExhaustedError(fmt::format(
            "Snowflake is throttling requests (HTTP 429 {}): {}; the warehouse's concurrency "
            "may be exhausted",
            d.AttemptsText(), said.Describe()));
        if (auto ra = r.Header("retry-after")) {
          if (auto w = ParseRetryAfter(*ra, clock_->Now())) s = WithRetryAfter(s, *w);
        }
        return s;
      }
      case 400:
        return absl::InvalidArgumentError(
            fmt::format("Snowflake rejected the request (HTTP 400): {}", said.Describe()));
      default:
        break;
    }
    if (RetryableStatus(r.status)) {
      return absl::UnavailableError(fmt::format("Snowflake answered HTTP {} {}: {}", r.status,
                                                d.AttemptsText(), said.Describe()));
    }
    return absl::FailedPreconditionError(fmt::format(
        "unexpected reply from {} (HTTP {}): {}. Check that base_url points to Snowflake",
        config_.http.base_url, r.status, said.Describe()));
  }

  absl::Status Unauthenticated(const SnowflakeMessage& said) const {
    if (config_.auth == SnowflakeAuth::kKeyPair) {
      return absl::UnauthenticatedError(fmt::format(
          "Snowflake refused the key-pair JWT of user {} (HTTP 401: {}). Check that the public "
          "key with fingerprint {} is set on the user (DESCRIBE USER {} shows RSA_PUBLIC_KEY_FP "
          "or RSA_PUBLIC_KEY_2_FP), that `user` is the login name, that `account` is the account "
          "identifier (orgname-accountname, or the locator such as xy12345.us-east-2.aws; the "
          "JWT named account {}), and that this machine's clock is right",
          Upper(config_.user), said.Describe(), fingerprint_, Upper(config_.user), jwt_account_));
    }
    return absl::UnauthenticatedError(fmt::format(
        "Snowflake refused the {} (HTTP 401: {}). Check that `token` is current (not expired or "
        "revoked), that token_type matches it, and that `account` is right",
        config_.auth == SnowflakeAuth::kOAuth ? "OAuth access token" : "programmatic access token",
        said.Describe()));
  }

  const SnowflakeConfig config_;
  HttpClient* const http_;
  Clock* const clock_;
  const std::unique_ptr<TokenSource> tokens_;
  const std::string fingerprint_;
  const std::string jwt_account_;
};

// --- Reader and source ----------------------------------------------------------

class SnowflakeRowReader : public RowReader {
 public:
  SnowflakeRowReader(std::shared_ptr<SnowflakeClient> client, ResultSet rs,
                     const std::atomic<bool>* cancel)
      : client_(std::move(client)),
        cancel_(cancel),
        handle_(std::move(rs.handle)),
        columns_(std::move(rs.columns)),
        partition_rows_(std::move(rs.partition_rows)),
        num_rows_(rs.num_rows),
        rows_(std::move(rs.data)) {
    for (const SnowflakeColumnType& c : columns_) schema_.push_back(c.column);
  }

  ~SnowflakeRowReader() override {
    if (!finished_ && !all_read_ && !handle_.empty()) client_->Cancel(handle_);
  }

  // Checks partition 0 against partitionInfo.
  absl::Status Init() {
    if (num_rows_ == 0) all_read_ = true;
    return CheckPartition();
  }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!status_.ok()) return status_;
    if (finished_) return false;
    while (index_ >= rows_.size()) {
      if (partition_ + 1 >= partition_rows_.size()) {
        if (delivered_ != num_rows_) {
          return Fail(absl::DataLossError(fmt::format(
              "Snowflake statement {} delivered {} rows of {}", handle_, delivered_, num_rows_)));
        }
        finished_ = true;
        return false;
      }
      if (QueryCancelRequested(cancel_)) {
        client_->Cancel(handle_);
        finished_ = true;  // nothing left to cancel when dropped
        return Fail(QueryCancelledError(fmt::format("Snowflake statement {}", handle_)));
      }
      ++partition_;
      rows_ = json();  // release the previous partition first
      index_ = 0;
      absl::StatusOr<json> next = client_->FetchPartition(handle_, partition_);
      if (!next.ok()) {
        absl::Status s(
            next.status().code(),
            fmt::format("reading partition {} of {} of Snowflake statement {}: {}", partition_,
                        partition_rows_.size(), handle_, next.status().message()));
        // Keep payloads such as the server's requested retry delay.
        next.status().ForEachPayload(
            [&](absl::string_view url, const absl::Cord& payload) { s.SetPayload(url, payload); });
        return Fail(s);
      }
      rows_ = *std::move(next);
      if (absl::Status s = CheckPartition(); !s.ok()) return Fail(s);
    }
    const json& cells = rows_[index_++];
    if (!cells.is_array() || cells.size() != columns_.size()) {
      return Fail(absl::DataLossError(
          fmt::format("Snowflake statement {}: a row of partition {} has {} cells for {} columns",
                      handle_, partition_, cells.is_array() ? cells.size() : 0, columns_.size())));
    }
    row.resize(columns_.size());
    for (size_t i = 0; i < columns_.size(); ++i) {
      absl::StatusOr<Value> v = DecodeSnowflakeCell(columns_[i], cells[i]);
      if (!v.ok()) return Fail(v.status());
      row[i] = *std::move(v);
    }
    ++delivered_;
    // The last row of the last partition: nothing is left to cancel.
    if (index_ >= rows_.size() && partition_ + 1 >= partition_rows_.size()) all_read_ = true;
    return true;
  }

 private:
  absl::Status CheckPartition() {
    if (!rows_.is_array()) rows_ = json::array();
    const int64_t want = partition_rows_[partition_];
    if (static_cast<int64_t>(rows_.size()) != want) {
      return absl::DataLossError(fmt::format(
          "Snowflake statement {}: partition {} holds {} rows but partitionInfo announced {}",
          handle_, partition_, rows_.size(), want));
    }
    return absl::OkStatus();
  }

  absl::Status Fail(absl::Status s) {
    status_ = s;
    rows_ = json();
    return s;
  }

  std::shared_ptr<SnowflakeClient> client_;
  const std::atomic<bool>* const cancel_;
  std::string handle_;
  std::vector<SnowflakeColumnType> columns_;
  std::vector<int64_t> partition_rows_;
  int64_t num_rows_ = 0;
  Schema schema_;
  json rows_;
  size_t partition_ = 0;
  size_t index_ = 0;
  int64_t delivered_ = 0;
  bool finished_ = false;
  bool all_read_ = false;
  absl::Status status_;
};

class SnowflakeSource : public Source {
 public:
  SnowflakeSource(std::shared_ptr<SnowflakeClient> client, Clock* clock)
      : client_(std::move(client)), clock_(clock) {}

  WarehouseChangeDetection* warehouse_change_detection() override {
    if (change_detection_ == nullptr) {
      std::shared_ptr<SnowflakeClient> client = client_;
      auto sql = NewSnowflakeWarehouseSql(
          [client](const std::string& statement, const std::vector<std::string>& bindings,
                   const std::atomic<bool>* cancel) -> absl::StatusOr<std::unique_ptr<RowReader>> {
            BACKFLOW_ASSIGN_OR_RETURN(ResultSet rs, client->Execute(statement, bindings, cancel));
            auto reader = std::make_unique<SnowflakeRowReader>(client, std::move(rs), cancel);
            BACKFLOW_RETURN_IF_ERROR(reader->Init());
            return std::unique_ptr<RowReader>(std::move(reader));
          });
      PassChangeDetectionOptions options;
      options.state_schema = client_->config().state_schema;
      options.clock = clock_;
      change_detection_ = NewPassChangeDetection(std::move(sql), std::move(options));
    }
    return change_detection_.get();
  }

  absl::Status CheckConnection() override {
    absl::StatusOr<std::unique_ptr<RowReader>> reader = Query(kCheckSql);
    if (!reader.ok()) {
      if (reader.status().code() == absl::StatusCode::kInvalidArgument) {
        return absl::FailedPreconditionError(fmt::format(
            "{}. Check warehouse, database, schema and role (case-sensitive names, as SHOW "
            "returns them)",
            reader.status().message()));
      }
      return reader.status();
    }
    Row row;
    BACKFLOW_ASSIGN_OR_RETURN(bool any, (*reader)->Next(row));
    if (!any || row.size() != 5) {
      return absl::DataLossError("Snowflake returned no row for the connection check");
    }
    const SnowflakeConfig& c = client_->config();
    const std::string role = row[1].is_null() ? "(none)" : row[1].ToString();
    struct Check {
      const char* setting;
      const char* function;
      const std::string* configured;
      const Value* actual;
    };
    for (const Check& check : {Check{"warehouse", "CURRENT_WAREHOUSE()", &c.warehouse, &row[2]},
                               Check{"database", "CURRENT_DATABASE()", &c.database, &row[3]},
                               Check{"schema", "CURRENT_SCHEMA()", &c.schema, &row[4]}}) {
      if (check.configured->empty()) continue;
      if (check.actual->is_null() || Upper(check.actual->ToString()) != Upper(*check.configured)) {
        return absl::FailedPreconditionError(fmt::format(
            "Snowflake did not select {} \"{}\" ({} is {}): check the name (case-sensitive, as "
            "SHOW returns it, usually UPPERCASE) and that role {} has USAGE on it",
            check.setting, *check.configured, check.function,
            check.actual->is_null() ? "NULL" : "\"" + check.actual->ToString() + "\"", role));
      }
    }
    if (row[2].is_null()) {
      return absl::FailedPreconditionError(
          fmt::format("no warehouse is in effect for user {} with role {}: set `warehouse`",
                      row[0].ToString(), role));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    return Query(sql, QueryOptions{});
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql,
                                                   const QueryOptions& options) override {
    BACKFLOW_ASSIGN_OR_RETURN(ResultSet rs,
                              client_->Execute(TrimModelSql(sql), {}, options.cancel));
    auto reader = std::make_unique<SnowflakeRowReader>(client_, std::move(rs), options.cancel);
    BACKFLOW_RETURN_IF_ERROR(reader->Init());
    return std::unique_ptr<RowReader>(std::move(reader));
  }

 private:
  std::shared_ptr<SnowflakeClient> client_;
  Clock* clock_;
  std::unique_ptr<WarehouseChangeDetection> change_detection_;
};

}  // namespace

// --- Public helpers ---------------------------------------------------------

std::string SnowflakeJwtAccount(std::string_view account) {
  std::string a = Upper(BareAccount(account));
  if (a.find(".GLOBAL") != std::string::npos) {
    if (size_t dash = a.find('-'); dash != std::string::npos && dash > 0) a.resize(dash);
  } else if (size_t dot = a.find('.'); dot != std::string::npos && dot > 0) {
    a.resize(dot);
  }
  std::replace(a.begin(), a.end(), '.', '-');
  return a;
}

std::string SnowflakeDefaultBaseUrl(std::string_view account) {
  std::string host = Lower(BareAccount(account));
  std::replace(host.begin(), host.end(), '_', '-');
  return fmt::format("https://{}.snowflakecomputing.com", host);
}

std::string SnowflakePublicKeyFingerprint(const Rs256Key& key) {
  std::string pem = key.PublicKeyPem();
  std::string b64;
  std::istringstream lines(pem);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("-----")) continue;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    b64 += line;
  }
  absl::StatusOr<std::string> der = Base64Decode(b64);
  if (!der.ok()) return "";
  return "SHA256:" + Base64Encode(Sha256(*der));
}

absl::StatusOr<std::string> SignSnowflakeJwt(const Rs256Key& key, std::string_view account,
                                             std::string_view user, Clock::TimePoint now,
                                             std::chrono::seconds lifetime) {
  const std::string fingerprint = SnowflakePublicKeyFingerprint(key);
  if (fingerprint.empty()) return absl::InternalError("could not fingerprint the public key");
  const std::string subject = fmt::format("{}.{}", account, Upper(user));
  const int64_t iat =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  json claims = {{"iss", subject + "." + fingerprint},
                 {"sub", subject},
                 {"iat", iat},
                 {"exp", iat + lifetime.count()}};
  return SignJwtRs256(key, "", claims);
}

absl::StatusOr<std::string> DecryptSnowflakePrivateKey(std::string_view pem,
                                                       std::string_view passphrase) {
  if (pem.find("ENCRYPTED") == std::string_view::npos) return std::string(pem);
  if (passphrase.empty()) {
    return absl::InvalidArgumentError(
        "private_key is encrypted: set private_key_passphrase (or export the key without one)");
  }
  std::string text(pem);
  std::string pass(passphrase);
  std::unique_ptr<BIO, decltype(&BIO_free)> in(
      BIO_new_mem_buf(text.data(), static_cast<int>(text.size())), BIO_free);
  if (!in) return absl::InternalError("out of memory reading the private key");
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(in.get(), nullptr, nullptr, pass.data());
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(fmt::format(
        "private_key could not be decrypted with private_key_passphrase ({}): check the "
        "passphrase",
        OpenSslError()));
  }
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> holder(pkey, EVP_PKEY_free);
  std::unique_ptr<BIO, decltype(&BIO_free)> out(BIO_new(BIO_s_mem()), BIO_free);
  if (!out ||
      PEM_write_bio_PKCS8PrivateKey(out.get(), pkey, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return absl::InternalError(
        fmt::format("re-encoding the private key failed: {}", OpenSslError()));
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(out.get(), &data);  // NOLINT(runtime/int): OpenSSL's type
  std::string result(data, static_cast<size_t>(len));
  OPENSSL_cleanse(pass.data(), pass.size());
  return result;
}

absl::StatusOr<SnowflakeColumnType> ParseSnowflakeRowType(const json& entry) {
  if (!entry.is_object()) return absl::DataLossError("a rowType entry is not an object");
  SnowflakeColumnType t;
  t.column.name = JsonString(entry, "name");
  t.type = Lower(JsonString(entry, "type"));
  if (t.column.name.empty() || t.type.empty()) {
    return absl::DataLossError(fmt::format("a rowType entry has no name or type: {}", Dump(entry)));
  }
  t.precision = JsonInt(entry, "precision").value_or(0);
  t.scale = JsonInt(entry, "scale").value_or(0);
  std::optional<int64_t> length = JsonInt(entry, "length");
  auto with_length = [&](const char* name) {
    return length ? fmt::format("{}({})", name, *length) : std::string(name);
  };
  ValueType vt = ValueType::kString;
  std::string source_type;
  if (t.type == "fixed") {
    vt = t.scale == 0 ? ValueType::kInt64 : ValueType::kDecimal;
    source_type = t.precision > 0 ? fmt::format("NUMBER({},{})", t.precision, t.scale) : "NUMBER";
  } else if (t.type == "decfloat") {
    vt = ValueType::kDecimal;
    source_type = "DECFLOAT";
  } else if (t.type == "real") {
    vt = ValueType::kDouble;
    source_type = "FLOAT";
  } else if (t.type == "text") {
    source_type = with_length("VARCHAR");
  } else if (t.type == "binary") {
    vt = ValueType::kBytes;
    source_type = with_length("BINARY");
  } else if (t.type == "boolean") {
    vt = ValueType::kBool;
    source_type = "BOOLEAN";
  } else if (t.type == "date") {
    vt = ValueType::kDate;
    source_type = "DATE";
  } else if (t.type == "time") {
    source_type = fmt::format("TIME({})", t.scale);
  } else if (t.type == "timestamp_ntz" || t.type == "timestamp_ltz" || t.type == "timestamp_tz") {
    vt = ValueType::kTimestamp;
    source_type = fmt::format("{}({})", Upper(t.type), t.scale);
  } else if (t.type == "variant" || t.type == "object" || t.type == "array") {
    vt = ValueType::kJson;
    source_type = Upper(t.type);
  } else {
    source_type = Upper(t.type);
  }
  t.column.type = vt;
  t.column.source_type = std::move(source_type);
  return t;
}

absl::StatusOr<Value> DecodeSnowflakeCell(const SnowflakeColumnType& t, const json& cell) {
  if (cell.is_null()) return Value::Null();
  std::string text = cell.is_string() ? cell.get<std::string>() : Dump(cell);
  auto bad = [&]() {
    return absl::DataLossError(fmt::format("column {} ({}): cannot decode Snowflake value \"{}\"",
                                           t.column.name, t.column.source_type,
                                           BodySnippet(text, 80)));
  };
  if (t.type == "fixed") {
    if (!IsPlainDecimal(text)) return bad();
    if (t.scale == 0) {
      if (text.find('.') != std::string::npos) return bad();
      std::string digits = DecimalText(text);
      int64_t v = 0;
      auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
      if (ec == std::errc() && p == digits.data() + digits.size()) return Value::Int64(v);
      if (ec == std::errc::result_out_of_range) {
        return Value::Text(ValueType::kDecimal, std::move(digits));
      }
      return bad();
    }
    return Value::Text(ValueType::kDecimal, DecimalText(text));
  }
  if (t.type == "decfloat") {
    std::optional<std::string> d = ExpandExponent(text);
    if (!d) return bad();
    return Value::Text(ValueType::kDecimal, *std::move(d));
  }
  if (t.type == "real") {
    std::string lower = Lower(text);
    if (lower == "nan") return Value::Double(std::numeric_limits<double>::quiet_NaN());
    if (lower == "inf" || lower == "infinity") {
      return Value::Double(std::numeric_limits<double>::infinity());
    }
    if (lower == "-inf" || lower == "-infinity") {
      return Value::Double(-std::numeric_limits<double>::infinity());
    }
    char* end = nullptr;
    double d = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size()) return bad();
    return Value::Double(d);
  }
  if (t.type == "text") return Value::String(std::move(text));
  if (t.type == "boolean") {
    std::string lower = Lower(text);
    if (lower == "true" || lower == "1") return Value::Bool(true);
    if (lower == "false" || lower == "0") return Value::Bool(false);
    return bad();
  }
  if (t.type == "date") {
    int64_t days = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), days);
    if (ec != std::errc() || p != text.data() + text.size() || std::abs(days) > 3'000'000) {
      return bad();
    }
    return Value::Text(ValueType::kDate, FormatDate(days));
  }
  if (t.type == "time") {
    int64_t secs = 0, nanos = 0;
    if (!ParseEpoch(text, /*allow_nanos=*/false, secs, nanos) || secs < 0 || secs >= 86400) {
      return bad();
    }
    return Value::String(FormatClock(secs, nanos));
  }
  if (t.type == "timestamp_ntz" || t.type == "timestamp_ltz" || t.type == "timestamp_tz") {
    std::string_view instant = text;
    if (size_t sp = instant.find(' '); sp != std::string_view::npos) {
      // TIMESTAMP_TZ: "<epoch> <offset minutes + 1440>"; the instant is UTC.
      std::string_view offset = instant.substr(sp + 1);
      int64_t off = 0;
      auto [p, ec] = std::from_chars(offset.data(), offset.data() + offset.size(), off);
      if (ec != std::errc() || p != offset.data() + offset.size() || off < 0 || off > 2880) {
        return bad();
      }
      instant = instant.substr(0, sp);
    }
    int64_t secs = 0, nanos = 0;
    if (!ParseEpoch(instant, /*allow_nanos=*/true, secs, nanos)) return bad();
    const int64_t days = FloorDiv(secs, 86400);
    std::string out =
        fmt::format("{}T{}", FormatDate(days), FormatClock(secs - days * 86400, nanos));
    if (t.type != "timestamp_ntz") out.push_back('Z');
    return Value::Text(ValueType::kTimestamp, std::move(out));
  }
  if (t.type == "variant" || t.type == "object" || t.type == "array") {
    if (!json::accept(text)) return bad();
    return Value::Text(ValueType::kJson, CompactJson(text));
  }
  if (t.type == "binary") {
    if (text.size() % 2 != 0) return bad();
    std::string bytes;
    bytes.reserve(text.size() / 2);
    for (size_t i = 0; i < text.size(); i += 2) {
      int hi = HexValue(text[i]);
      int lo = HexValue(text[i + 1]);
      if (hi < 0 || lo < 0) return bad();
      bytes.push_back(static_cast<char>(hi * 16 + lo));
    }
    return Value::Text(ValueType::kBytes, std::move(bytes));
  }
  return Value::String(std::move(text));
}

absl::StatusOr<SnowflakeConfig> ParseSnowflakeSettings(const json& settings) {
  if (!settings.is_object()) return absl::InvalidArgumentError("snowflake settings must be a map");
  auto text = [&](const char* name) -> std::string {
    auto it = settings.find(name);
    return it != settings.end() && it->is_string() ? it->get<std::string>() : "";
  };
  SnowflakeConfig c;
  c.account = text("account");
  if (c.account.empty()) {
    return absl::InvalidArgumentError(
        "account: required; the account identifier, e.g. myorg-myaccount (orgname-accountname) "
        "or xy12345.us-east-2.aws (account locator with region)");
  }
  c.user = text("user");
  c.private_key_pem = text("private_key");
  const std::string key_path = text("private_key_path");
  c.private_key_passphrase = text("private_key_passphrase");
  c.token = text("token");
  if (!key_path.empty()) {
    if (!c.private_key_pem.empty()) {
      return absl::InvalidArgumentError(
          "private_key_path: set private_key or private_key_path, "
          "not both");
    }
    std::ifstream in(key_path, std::ios::binary);
    if (!in) {
      return absl::InvalidArgumentError(
          fmt::format("private_key_path: cannot read \"{}\"", key_path));
    }
    c.private_key_pem.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const bool has_key = !c.private_key_pem.empty();
  const bool has_token = !c.token.empty();
  if (has_key == has_token) {
    return absl::InvalidArgumentError(
        has_key ? "token: set either a key pair (private_key) or a token, not both"
                : "private_key: required unless `token` is set; the user's PKCS#8 private key "
                  "(rsa_key.p8), e.g. ${env:SNOWFLAKE_PRIVATE_KEY}");
  }
  if (has_key) {
    c.auth = SnowflakeAuth::kKeyPair;
    if (c.user.empty()) {
      return absl::InvalidArgumentError(
          "user: required with a key pair; the Snowflake login name the public key is set on");
    }
  } else {
    std::string type = text("token_type");
    if (type.empty() || type == "programmatic_access_token") {
      c.auth = SnowflakeAuth::kProgrammaticAccessToken;
    } else if (type == "oauth") {
      c.auth = SnowflakeAuth::kOAuth;
    } else {
      return absl::InvalidArgumentError("token_type: use programmatic_access_token or oauth");
    }
  }
  c.warehouse = text("warehouse");
  c.database = text("database");
  c.schema = text("schema");
  c.role = text("role");
  c.query_tag = text("query_tag");
  if (auto it = settings.find("statement_timeout_s"); it != settings.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 ||
        it->get<int64_t>() > kMaxStatementTimeoutS) {
      return absl::InvalidArgumentError(fmt::format(
          "statement_timeout_s: must be an integer from 0 to {} (0: Snowflake's maximum)",
          kMaxStatementTimeoutS));
    }
    c.statement_timeout_s = it->get<int64_t>();
  }
  if (auto it = settings.find("state_schema"); it != settings.end() && !it->is_null()) {
    if (!it->is_string() || !IsPlainSqlIdentifier(it->get<std::string>())) {
      return absl::InvalidArgumentError(
          "state_schema: must be a plain schema name (letters, digits, '_', '$'; not starting "
          "with a digit), e.g. backflow_state");
    }
    c.state_schema = it->get<std::string>();
  }
  json http = settings;
  if (text("base_url").empty()) http["base_url"] = SnowflakeDefaultBaseUrl(c.account);
  BACKFLOW_ASSIGN_OR_RETURN(c.http, ParseHttpSettings(http));
  return c;
}

absl::StatusOr<std::unique_ptr<Source>> NewSnowflakeSource(SnowflakeConfig config,
                                                           const ConnectorEnv& env) {
  if (env.http == nullptr || env.clock == nullptr) {
    return absl::InternalError("the Snowflake source needs an HTTP client and a clock");
  }
  std::unique_ptr<TokenSource> tokens;
  std::string fingerprint;
  if (config.auth == SnowflakeAuth::kKeyPair) {
    BACKFLOW_ASSIGN_OR_RETURN(
        std::string pem,
        DecryptSnowflakePrivateKey(config.private_key_pem, config.private_key_passphrase));
    absl::StatusOr<std::unique_ptr<Rs256Key>> key = Rs256Key::FromPrivateKeyPem(pem);
    if (!key.ok()) {
      return absl::InvalidArgumentError(fmt::format("private_key: {}", key.status().message()));
    }
    fingerprint = SnowflakePublicKeyFingerprint(**key);
    tokens = std::make_unique<KeyPairTokens>(*std::move(key), SnowflakeJwtAccount(config.account),
                                             config.user, env.clock, config.jwt_lifetime,
                                             config.jwt_renew_after);
  } else {
    tokens = std::make_unique<StaticToken>(config.token);
  }
  auto client = std::make_shared<SnowflakeClient>(std::move(config), env, std::move(tokens),
                                                  std::move(fingerprint));
  return std::unique_ptr<Source>(new SnowflakeSource(std::move(client), env.clock));
}

SourceDefinition SnowflakeSourceDefinition() {
  SourceDefinition def;
  def.type = "snowflake";
  def.title = "Snowflake";
  def.description =
      "Runs model SQL on Snowflake through the SQL API v2 (key-pair JWT, programmatic access "
      "token or OAuth) and streams the result one partition at a time. Integers stay exact "
      "(int64, or exact decimals beyond it), NUMBER with a scale stays an exact decimal, "
      "timestamps become ISO-8601 (UTC with Z for TIMESTAMP_LTZ/TZ), VARIANT/OBJECT/ARRAY "
      "become compact JSON and BINARY becomes bytes. Unquoted column names come back "
      "UPPERCASE.";
  def.maturity = "beta";

  SettingSpec account = MakeSetting(
      "account", "Account identifier",
      "orgname-accountname (e.g. myorg-myaccount), or the account locator with its region and "
      "cloud (e.g. xy12345.us-east-2.aws). The API address and the key-pair JWT are derived "
      "from it.");
  account.required = true;
  def.settings.push_back(account);
  def.settings.push_back(MakeSetting("user", "User",
                                     "The login name of the user (required with a key pair; the "
                                     "public key must be set on this user)."));
  SettingSpec key = MakeSetting(
      "private_key", "Private key",
      "Key-pair auth: the content of the user's PEM private key (rsa_key.p8, RSA 2048+), e.g. "
      "${env:SNOWFLAKE_PRIVATE_KEY}. Register the public half with ALTER USER ... SET "
      "RSA_PUBLIC_KEY. Set this, private_key_path or token.");
  key.secret = true;
  def.settings.push_back(key);
  SettingSpec key_path = MakeSetting("private_key_path", "Private key file",
                                     "Key-pair auth: the path of the PEM private key file, instead "
                                     "of private_key.");
  key_path.is_path = true;
  def.settings.push_back(key_path);
  SettingSpec passphrase =
      MakeSetting("private_key_passphrase", "Private key passphrase",
                  "The passphrase of an encrypted private key (\"BEGIN ENCRYPTED PRIVATE KEY\").");
  passphrase.secret = true;
  def.settings.push_back(passphrase);
  SettingSpec token = MakeSetting(
      "token", "Token",
      "Instead of a key pair: a programmatic access token, or an OAuth access token (set "
      "token_type: oauth), e.g. ${env:SNOWFLAKE_TOKEN}.");
  token.secret = true;
  def.settings.push_back(token);
  SettingSpec token_type =
      MakeSetting("token_type", "Token type", "What `token` is.", SettingType::kEnum);
  token_type.allowed_values = {"programmatic_access_token", "oauth"};
  token_type.default_value = "programmatic_access_token";
  def.settings.push_back(token_type);
  def.settings.push_back(MakeSetting("warehouse", "Warehouse",
                                     "The warehouse that runs the queries; case-sensitive, as SHOW "
                                     "WAREHOUSES returns it (usually UPPERCASE). Default: the "
                                     "user's DEFAULT_WAREHOUSE."));
  def.settings.push_back(MakeSetting("database", "Database",
                                     "Database for unqualified names (case-sensitive, usually "
                                     "UPPERCASE). Default: the user's default namespace."));
  def.settings.push_back(
      MakeSetting("schema", "Schema", "Schema for unqualified names (case-sensitive)."));
  def.settings.push_back(MakeSetting("role", "Role",
                                     "The role to run as (case-sensitive); it needs USAGE on the "
                                     "warehouse and SELECT on the model's tables. Default: the "
                                     "user's DEFAULT_ROLE."));
  def.settings.push_back(
      MakeSetting("statement_timeout_s", "Statement timeout (s)",
                  "Snowflake cancels a query that runs longer (0: Snowflake's maximum, 7 days).",
                  SettingType::kInteger, 3600));
  def.settings.push_back(MakeSetting("query_tag", "Query tag",
                                     "QUERY_TAG of Backflow's queries, to find them in the query "
                                     "history.",
                                     SettingType::kString, "backflow"));

  def.settings.push_back(MakeSetting(
      "state_schema", "State schema",
      "For models with change_detection: warehouse: the schema, in the connection's database, "
      "where Backflow keeps what each mapping last delivered (table CHECKPOINTS) and the "
      "tables of running passes (dropped when a pass ends). Created when missing; the role "
      "needs CREATE SCHEMA on the database, or USAGE and CREATE TABLE on this schema, and "
      "SELECT, INSERT, UPDATE, DELETE on its tables.",
      SettingType::kString, "backflow_state"));
  def.warehouse_change_detection = true;

  SettingSpec base = MakeSetting(
      "base_url", "Base URL",
      "The SQL API's address. Default: https://<account>.snowflakecomputing.com. Set it for "
      "PrivateLink hosts, a proxy or a test server.");
  def.settings.push_back(base);
  def.settings.push_back(MakeSetting(
      "timeout_ms", "Timeout (ms)",
      "How long to wait for each reply before retrying (a query's first request waits at "
      "least 60 s: Snowflake answers it after up to 45 s).",
      SettingType::kInteger, 30'000));
  def.settings.push_back(MakeSetting(
      "max_retries", "Max retries",
      "Retries per request after 429, 500/502/503/504 and connection errors (a resubmitted "
      "query is never run twice).",
      SettingType::kInteger, 5));
  def.settings.push_back(MakeSetting("max_retry_wait_s", "Max retry wait (s)",
                                     "Upper bound on any single wait between retries.",
                                     SettingType::kInteger, 300));

  def.create = [](const json& settings,
                  const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Source>> {
    BACKFLOW_ASSIGN_OR_RETURN(SnowflakeConfig config, ParseSnowflakeSettings(settings));
    return NewSnowflakeSource(std::move(config), env);
  };
  return def;
}

}  // namespace backflow
