#include "backflow/sources/clickhouse/clickhouse_source.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <mutex>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/common/status_macros.h"
#include "backflow/common/url.h"
#include "backflow/sources/clickhouse/clickhouse_rowbinary.h"
#include "backflow/sources/query_cancel_watcher.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kFormat[] = "RowBinaryWithNamesAndTypes";
constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kMarker[] = "__exception__";
// Body bytes read to find an exception's text, and of an error reply.
constexpr size_t kMaxExceptionBytes = 1 << 20;
constexpr size_t kMaxErrorBody = 64 * 1024;
constexpr size_t kMaxMessage = 2000;
// The reader waits this much longer than max_execution_time for data.
constexpr std::chrono::seconds kQueryGrace{60};
// The longest backoff sleep between checks of a run's cancel flag.
constexpr std::chrono::seconds kCancelCheckStep{1};
constexpr char kCheckSql[] = "SELECT version(), currentUser(), currentDatabase()";

// Settings Backflow sets itself (or that would break the exchange).
const std::set<std::string>& ReservedSettings() {
  static const std::set<std::string> kReserved = {
      "database",   "query_id",           "default_format",
      "readonly",   "max_execution_time", "enable_http_compression",
      "user",       "password",           "query",
      "session_id", "session_timeout",    "session_check",
      "compress",   "decompress"};
  return kReserved;
}

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::string Cut(std::string s, size_t max) {
  if (s.size() > max) {
    s.resize(max);
    s += "...";
  }
  return s;
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
  hi = (hi & ~uint64_t{0xF000}) | uint64_t{0x4000};              // version 4
  lo = (lo & ~(uint64_t{0xC0} << 56)) | (uint64_t{0x80} << 56);  // RFC 4122 variant
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF,
                     hi & 0xFFFF, lo >> 48, lo & 0xFFFFFFFFFFFFULL);
}

bool IsName(std::string_view s, bool allow_dash) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [&](unsigned char c) {
    return std::isalnum(c) || c == '_' || (allow_dash && c == '-');
  });
}

bool Truthy(std::string_view v) { return v == "1" || v == "true" || v == "True" || v == "TRUE"; }

std::string_view SkipNewline(std::string_view s) {
  if (s.starts_with("\r\n")) return s.substr(2);
  if (s.starts_with("\n")) return s.substr(1);
  return s;
}

// Offset of "Code: <digits>[.,] " ... "DB::Exception" in `s`, if any.
std::optional<size_t> FindLegacyException(std::string_view s) {
  for (size_t p = s.find("Code: "); p != std::string_view::npos; p = s.find("Code: ", p + 1)) {
    size_t i = p + 6;
    size_t digits = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])) && digits < 7) {
      ++i;
      ++digits;
    }
    if (digits == 0 || i >= s.size() || (s[i] != '.' && s[i] != ',')) continue;
    std::string_view after = s.substr(i, 64);
    if (after.find("DB::Exception") != std::string_view::npos) return p;
  }
  return std::nullopt;
}

// --- Classification -------------------------------------------------------------

// What a failed attempt means: the error, and whether another attempt may
// succeed (with the server's requested wait, if any).
struct Verdict {
  absl::Status status;
  bool retry = false;
  std::optional<std::chrono::milliseconds> wait;
};

std::string Describe(const ClickHouseException& ex, std::string_view body) {
  if (!ex.message.empty()) return ex.message;
  std::string b = Trim(body);
  return b.empty() ? "(no message)" : Cut(b, 300);
}

}  // namespace

// --- Exception text -------------------------------------------------------------

ClickHouseException ParseClickHouseException(std::string_view text) {
  ClickHouseException ex;
  std::string t = Trim(text);
  if (auto p = FindLegacyException(t); p && *p < 8) {
    size_t i = *p + 6;
    int code = 0;
    auto [end, ec] = std::from_chars(t.data() + i, t.data() + t.size(), code);
    if (ec == std::errc()) ex.code = code;
  }
  // "... (UNKNOWN_TABLE) (version 25.3.1.1)": the name is the last
  // parenthesized word of uppercase letters, digits and '_' before the version.
  std::string_view head = t;
  if (size_t v = head.rfind(" (version "); v != std::string_view::npos) head = head.substr(0, v);
  while (!head.empty() && std::isspace(static_cast<unsigned char>(head.back()))) {
    head.remove_suffix(1);
  }
  if (head.ends_with(")")) {
    size_t open = head.rfind('(');
    if (open != std::string_view::npos) {
      std::string_view inside = head.substr(open + 1, head.size() - open - 2);
      if (inside.size() >= 2 &&
          std::all_of(
              inside.begin(), inside.end(),
              [](unsigned char c) { return std::isupper(c) || std::isdigit(c) || c == '_'; }) &&
          std::any_of(inside.begin(), inside.end(),
                      [](unsigned char c) { return std::isupper(c); })) {
        ex.name = std::string(inside);
      }
    }
  }
  ex.message = Cut(std::move(t), kMaxMessage);
  return ex;
}

ClickHouseExceptionScan ScanClickHouseException(std::string_view bytes, std::string_view tag) {
  if (bytes.empty()) return ClickHouseExceptionScan::kNotFound;
  bool prefix = false;
  auto check = [&](const std::string& opening) {
    if (bytes.starts_with(opening)) return true;
    if (bytes.size() < opening.size() && std::string_view(opening).starts_with(bytes)) {
      prefix = true;
    }
    return false;
  };
  for (std::string_view nl : {"", "\n", "\r\n"}) {
    const std::string marker = std::string(nl) + kMarker;
    if (check(marker + "\r\n") || check(marker + "\n")) return ClickHouseExceptionScan::kFound;
    if (!tag.empty() && check(marker + std::string(tag))) return ClickHouseExceptionScan::kFound;
  }
  // Older servers append "Code: NNN. DB::Exception: ..." to the data.
  std::string_view s = SkipNewline(bytes);
  constexpr std::string_view kCode = "Code: ";
  if (s.starts_with(kCode)) {
    size_t i = kCode.size();
    size_t digits = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])) && digits < 7) {
      ++i;
      ++digits;
    }
    if (i == s.size()) return ClickHouseExceptionScan::kNeedMore;
    if (digits == 0 || (s[i] != '.' && s[i] != ',')) {
      return prefix ? ClickHouseExceptionScan::kNeedMore : ClickHouseExceptionScan::kNotFound;
    }
    std::string_view rest = s.substr(i + 1);
    for (std::string_view expected : {std::string_view(" DB::Exception"),
                                      std::string_view(" e.displayText() = DB::Exception")}) {
      if (rest.starts_with(expected)) return ClickHouseExceptionScan::kFound;
      if (rest.size() < expected.size() && expected.starts_with(rest)) {
        return ClickHouseExceptionScan::kNeedMore;
      }
    }
  } else if (s.size() < kCode.size() && kCode.starts_with(s)) {
    prefix = true;
  }
  return prefix ? ClickHouseExceptionScan::kNeedMore : ClickHouseExceptionScan::kNotFound;
}

std::optional<ClickHouseException> FindClickHouseException(std::string_view bytes,
                                                           std::string_view tag) {
  if (size_t p = bytes.find(kMarker); p != std::string_view::npos) {
    std::string_view rest = SkipNewline(bytes.substr(p + std::string_view(kMarker).size()));
    if (!tag.empty() && rest.starts_with(tag)) {
      rest = SkipNewline(rest.substr(tag.size()));
      // The block ends "<message>\n<length> <tag>\r\n__exception__\r\n".
      if (size_t t = rest.rfind(" " + std::string(tag)); t != std::string_view::npos) {
        size_t d = t;
        while (d > 0 && std::isdigit(static_cast<unsigned char>(rest[d - 1]))) --d;
        if (d < t) rest = rest.substr(0, d);
      }
    } else if (size_t end = rest.find(kMarker); end != std::string_view::npos) {
      rest = rest.substr(0, end);
    }
    ClickHouseException ex = ParseClickHouseException(rest);
    if (ex.message.empty()) ex.message = "(ClickHouse sent no message)";
    return ex;
  }
  if (std::optional<size_t> p = FindLegacyException(bytes)) {
    return ParseClickHouseException(bytes.substr(*p));
  }
  return std::nullopt;
}

bool IsRetryableClickHouseCode(int code, std::string_view message) {
  switch (code) {
    case 202:  // TOO_MANY_SIMULTANEOUS_QUERIES
    case 203:  // NO_FREE_CONNECTION
    case 209:  // SOCKET_TIMEOUT
    case 210:  // NETWORK_ERROR
    case 216:  // QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING
    case 279:  // ALL_CONNECTION_TRIES_FAILED
    case 394:  // QUERY_WAS_CANCELLED
    case 439:  // CANNOT_SCHEDULE_TASK
      return true;
    case 241:  // MEMORY_LIMIT_EXCEEDED: only the server-wide limit passes with time
      return message.find("(total)") != std::string_view::npos;
    default:
      return false;
  }
}

namespace {

// --- The HTTP client ----------------------------------------------------------------

class ClickHouseClient {
 public:
  ClickHouseClient(ClickHouseConfig config, const ConnectorEnv& env,
                   std::shared_ptr<HttpStreamClient> stream)
      : config_(std::move(config)), http_(env.http), clock_(env.clock), stream_(std::move(stream)) {
    auto it = config_.settings.find("output_format_binary_write_json_as_string");
    type_options_.json_as_string = it != config_.settings.end() && Truthy(it->second);
    stream_options_.connect_timeout = config_.timeout;
    stream_options_.idle_timeout =
        config_.query_timeout_s > 0
            ? std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::seconds(config_.query_timeout_s) + kQueryGrace)
            : std::chrono::milliseconds(std::chrono::hours(24));
    stream_options_.max_buffered_bytes = config_.stream_buffer_bytes;
  }

  const ClickHouseConfig& config() const { return config_; }
  const ClickHouseTypeOptions& type_options() const { return type_options_; }
  Clock* clock() const { return clock_; }

  std::string NewQueryId() const { return config_.query_id_prefix + "-" + NewUuid(); }

  // `bindings`: query parameters; `writes`: the statement writes (no readonly).
  absl::StatusOr<std::unique_ptr<HttpResponseStream>> Open(
      const std::string& sql, const std::string& query_id,
      const std::vector<std::pair<std::string, std::string>>& bindings = {}, bool writes = false) {
    std::vector<std::pair<std::string, std::string>> params;
    if (!config_.database.empty()) params.emplace_back("database", config_.database);
    params.emplace_back("query_id", query_id);
    params.emplace_back("default_format", kFormat);
    if (config_.readonly && !writes) params.emplace_back("readonly", "2");
    for (const auto& [name, value] : bindings) params.emplace_back("param_" + name, value);
    params.emplace_back("max_execution_time", std::to_string(config_.query_timeout_s));
    params.emplace_back("cancel_http_readonly_queries_on_client_close", "1");
    if (config_.compression) params.emplace_back("enable_http_compression", "1");
    for (const auto& [k, v] : config_.settings) params.emplace_back(k, v);
    HttpRequest r = Request(params);
    r.body = sql;
    r.headers.emplace_back("Content-Type", "text/plain; charset=UTF-8");
    return stream_->Open(r, stream_options_);
  }

  // Best effort: one attempt, errors ignored. Thread-safe (a cancel watcher
  // calls it while another thread waits for the query's answer).
  void Kill(const std::string& query_id) const {
    if (http_ == nullptr) return;
    HttpRequest r = Request({});
    r.body = fmt::format("KILL QUERY WHERE query_id = '{}' ASYNC", query_id);
    r.headers.emplace_back("Content-Type", "text/plain; charset=UTF-8");
    r.timeout = std::min(config_.timeout, std::chrono::milliseconds(10'000));
    (void)http_->Send(r);
  }

 private:
  HttpRequest Request(const std::vector<std::pair<std::string, std::string>>& params) const {
    HttpRequest r;
    r.method = "POST";
    std::string url = config_.base_url + "/";
    for (size_t i = 0; i < params.size(); ++i) {
      url += fmt::format("{}{}={}", i == 0 ? "?" : "&", params[i].first,
                         PercentEncode(params[i].second));
    }
    r.url = std::move(url);
    r.headers.emplace_back("User-Agent", kUserAgent);
    if (config_.auth == ClickHouseAuth::kBasic) {
      r.headers.emplace_back("Authorization",
                             "Basic " + Base64Encode(config_.user + ":" + config_.password));
    } else {
      r.headers.emplace_back("X-ClickHouse-User", config_.user);
      if (!config_.password.empty()) r.headers.emplace_back("X-ClickHouse-Key", config_.password);
    }
    return r;
  }

  const ClickHouseConfig config_;
  HttpClient* const http_;
  Clock* const clock_;
  const std::shared_ptr<HttpStreamClient> stream_;
  ClickHouseTypeOptions type_options_;
  HttpStreamOptions stream_options_;
};

// The status of a ClickHouse exception or error reply. `http_status` is 0 for
// an exception that arrived inside a 200 body.
Verdict Classify(const ClickHouseConfig& c, int http_status, const ClickHouseException& ex,
                 std::string_view body, const HttpResponseStream* reply, Clock::TimePoint now) {
  const std::string said = Describe(ex, body);
  const bool mid_stream = http_status == 0;
  const std::string where = mid_stream
                                ? std::string("ClickHouse failed the query while sending rows")
                                : fmt::format("ClickHouse answered HTTP {}", http_status);
  Verdict v;
  if (ex.code != 0) {
    if (IsRetryableClickHouseCode(ex.code, ex.message) || (!mid_stream && http_status == 503)) {
      v.retry = !mid_stream;
      if (ex.code == 202) {
        v.status = absl::ResourceExhaustedError(fmt::format(
            "{}: {}. The server runs too many queries at once (max_concurrent_queries or the "
            "user's limit); schedule the model when the server is less busy",
            where, said));
      } else {
        v.status = absl::UnavailableError(fmt::format("{}: {}", where, said));
      }
      return v;
    }
    switch (ex.code) {
      case 194:  // REQUIRED_PASSWORD
        v.status = absl::UnauthenticatedError(
            fmt::format("{}: {}. ClickHouse needs a password for user \"{}\": set `password` (e.g. "
                        "${{env:CLICKHOUSE_PASSWORD}})",
                        where, said, c.user));
        return v;
      case 192:  // UNKNOWN_USER
      case 193:  // WRONG_PASSWORD
      case 516:  // AUTHENTICATION_FAILED
        v.status = absl::UnauthenticatedError(fmt::format(
            "{}: {}. ClickHouse refused the credentials of user \"{}\": check `user` and "
            "`password`, and that the user may log in over HTTP{}",
            where, said, c.user,
            c.auth == ClickHouseAuth::kBasic ? " (sent as HTTP Basic auth)"
                                             : " (sent as X-ClickHouse-User/X-ClickHouse-Key)"));
        return v;
      case 195:  // IP_ADDRESS_NOT_ALLOWED
        v.status = absl::PermissionDeniedError(fmt::format(
            "{}: {}. User \"{}\" may not connect from this address: check the user's HOST "
            "restrictions",
            where, said, c.user));
        return v;
      case 497:  // ACCESS_DENIED
      case 291:  // DATABASE_ACCESS_DENIED
        v.status = absl::PermissionDeniedError(fmt::format(
            "{}: {}. Grant user \"{}\" what the message names, e.g. GRANT SELECT ON db.table TO "
            "{}",
            where, said, c.user, c.user));
        return v;
      case 511:  // UNKNOWN_ROLE
      case 512:  // SET_NON_GRANTED_ROLE
        v.status = absl::PermissionDeniedError(
            fmt::format("{}: {}. Check the roles granted to user \"{}\"", where, said, c.user));
        return v;
      case 164:  // READONLY
      case 472:  // READONLY_SETTING
      case 452:  // SETTING_CONSTRAINT_VIOLATION
        v.status = absl::FailedPreconditionError(fmt::format(
            "{}: {}. The user's profile forbids a setting Backflow sends (readonly{}, "
            "max_execution_time, default_format, cancel_http_readonly_queries_on_client_close{}"
            "{}). Give the profile readonly=2 instead of 1 (reads only, settings allowed), or "
            "relax its constraints",
            where, said, c.readonly ? "=2" : "", c.compression ? ", enable_http_compression" : "",
            c.settings.empty() ? "" : " and `settings`"));
        return v;
      case 115:  // UNKNOWN_SETTING
        v.status = absl::FailedPreconditionError(
            fmt::format("{}: {}. The server does not know a setting in the request: remove it from "
                        "`settings` (or upgrade the server)",
                        where, said));
        return v;
      case 73:  // UNKNOWN_FORMAT
        v.status = absl::FailedPreconditionError(
            fmt::format("{}: {}. The server does not offer {}; it is too old for Backflow", where,
                        said, kFormat));
        return v;
      case 159:  // TIMEOUT_EXCEEDED
        v.status = absl::FailedPreconditionError(fmt::format(
            "{}: {}. The query ran longer than query_timeout_s ({} s): raise it or make the "
            "model cheaper",
            where, said, c.query_timeout_s));
        return v;
      case 158:  // TOO_MANY_ROWS
      case 307:  // TOO_MANY_BYTES
      case 396:  // TOO_MANY_ROWS_OR_BYTES
        v.status = absl::FailedPreconditionError(
            fmt::format("{}: {}. A limit of the user's profile (max_result_rows, max_result_bytes, "
                        "max_rows_to_read...) stops the query: raise it for this user",
                        where, said));
        return v;
      case 241:  // MEMORY_LIMIT_EXCEEDED for the query or user
        v.status = absl::FailedPreconditionError(fmt::format(
            "{}: {}. The query needs more memory than allowed: raise max_memory_usage (in "
            "`settings` or the profile) or make the model cheaper",
            where, said));
        return v;
      case 81:  // UNKNOWN_DATABASE
        if (!c.database.empty() && ex.message.find(c.database) != std::string::npos) {
          v.status = absl::FailedPreconditionError(fmt::format(
              "{}: {}. Check `database` (\"{}\"): it must exist and be visible to user \"{}\"",
              where, said, c.database, c.user));
          return v;
        }
        break;
      default:
        break;
    }
    v.status = absl::InvalidArgumentError(fmt::format("{}: {}", where, said));
    return v;
  }
  if (mid_stream) {
    v.status = absl::UnavailableError(fmt::format("{}: {}", where, said));
    return v;
  }
  if (body.find("clickhouse-client") != std::string_view::npos &&
      body.find("Port ") != std::string_view::npos) {
    v.status = absl::FailedPreconditionError(fmt::format(
        "{} is ClickHouse's native protocol port, not its HTTP interface ({}): set base_url to "
        "the HTTP port, usually http://host:8123 or https://host:8443",
        c.base_url, said));
    return v;
  }
  switch (http_status) {
    case 401:
      v.status = absl::UnauthenticatedError(
          fmt::format("{}: {}. Check `user` and `password` (and `auth` for a proxy)", where, said));
      return v;
    case 403:
      v.status = absl::PermissionDeniedError(fmt::format("{}: {}", where, said));
      return v;
    case 429: {
      v.retry = true;
      v.status = absl::ResourceExhaustedError(fmt::format("{}: {}", where, said));
      if (reply != nullptr) {
        if (auto ra = reply->Header("retry-after")) {
          v.wait = ParseRetryAfter(*ra, now);
          if (v.wait) v.status = WithRetryAfter(v.status, *v.wait);
        }
      }
      return v;
    }
    case 500:
    case 502:
    case 503:
    case 504:
      v.retry = true;
      v.status = absl::UnavailableError(fmt::format("{}: {}", where, said));
      return v;
    case 404:
      v.status = absl::FailedPreconditionError(fmt::format(
          "no ClickHouse HTTP interface at {} ({}: {}): check base_url", c.base_url, where, said));
      return v;
    default:
      v.status = absl::FailedPreconditionError(fmt::format(
          "unexpected reply from {} ({}: {}): check that base_url is ClickHouse's HTTP interface",
          c.base_url, where, said));
      return v;
  }
}

// --- Reader ---------------------------------------------------------------------------

class ClickHouseReader : public ClickHouseRowReader {
 public:
  // `may_be_empty`: an empty body is a result without columns (DDL, INSERT).
  // `cancel` (QueryOptions::cancel, may be null) and `watcher` (which kills
  // the query once it is set; null without a flag) stop the query.
  ClickHouseReader(std::shared_ptr<ClickHouseClient> client, std::string query_id,
                   std::unique_ptr<HttpResponseStream> stream, bool may_be_empty = false,
                   const std::atomic<bool>* cancel = nullptr,
                   std::unique_ptr<QueryCancelWatcher> watcher = nullptr)
      : client_(std::move(client)),
        query_id_(std::move(query_id)),
        stream_(std::move(stream)),
        may_be_empty_(may_be_empty),
        cancel_(cancel),
        watcher_(std::move(watcher)) {
    tag_ = stream_->Header("x-clickhouse-exception-tag").value_or("");
  }

  ~ClickHouseReader() override {
    const bool killed = StopWatching();
    if (finished_ || cancelled_) return;
    stream_.reset();  // closes the connection
    if (!killed) client_->Kill(query_id_);
  }

  const Schema& schema() const override { return schema_; }
  const std::string& query_id() const override { return query_id_; }
  size_t peak_buffered_bytes() const override { return peak_; }

  // Reads the names and types that open the body. On failure, `retryable`
  // says whether a new attempt may succeed (nothing was handed out yet).
  absl::Status ReadHeader(bool& retryable) {
    retryable = false;
    std::vector<std::string> names, types;
    while (true) {
      std::string_view avail = View();
      if (!avail.empty()) {
        ClickHouseExceptionScan scan = ScanClickHouseException(avail, tag_);
        if (scan == ClickHouseExceptionScan::kFound) {
          absl::Status s = ExceptionFromBody(&retryable);
          return s;
        }
        if (scan == ClickHouseExceptionScan::kNeedMore && !eof_) {
          if (absl::Status s = More(&retryable); !s.ok()) return s;
          continue;
        }
      }
      RowBinaryDecoder dec(avail);
      RowBinaryResult r = dec.ReadHeader(names, types);
      if (r == RowBinaryResult::kOk) {
        pos_ += dec.position();
        break;
      }
      if (r == RowBinaryResult::kCorrupt) return Fail(CorruptStatus(dec.error(), "the header"));
      if (eof_ && avail.empty() && may_be_empty_) {
        finished_ = true;
        return absl::OkStatus();
      }
      if (eof_) {
        return Fail(absl::UnavailableError(fmt::format(
            "ClickHouse ended the result before its {} header was complete ({} bytes); check "
            "that base_url is ClickHouse's HTTP interface",
            kFormat, avail.size())));
      }
      if (absl::Status s = More(&retryable); !s.ok()) return s;
    }
    for (size_t i = 0; i < names.size(); ++i) {
      absl::StatusOr<ClickHouseType> t = ParseClickHouseType(types[i], client_->type_options());
      if (!t.ok()) {
        return Fail(absl::InvalidArgumentError(
            fmt::format("column {}: {}", names[i], t.status().message())));
      }
      Column column;
      column.name = names[i];
      column.type = ClickHouseValueType(*t);
      column.source_type = types[i];
      schema_.push_back(std::move(column));
      types_.push_back(*std::move(t));
    }
    Compact();
    return absl::OkStatus();
  }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!status_.ok()) return status_;
    if (finished_) return false;
    if (QueryCancelRequested(cancel_)) return Fail(absl::CancelledError());
    while (true) {
      std::string_view avail = View();
      if (avail.empty()) {
        if (eof_) return End();
        if (absl::Status s = More(nullptr); !s.ok()) return s;
        continue;
      }
      ClickHouseExceptionScan scan = ScanClickHouseException(avail, tag_);
      if (scan == ClickHouseExceptionScan::kFound) return ExceptionFromBody(nullptr);
      if (scan == ClickHouseExceptionScan::kNeedMore && !eof_) {
        if (absl::Status s = More(nullptr); !s.ok()) return s;
        continue;
      }
      RowBinaryDecoder dec(avail);
      switch (dec.ReadRow(types_, row)) {
        case RowBinaryResult::kOk:
          pos_ += dec.position();
          ++rows_;
          Compact();
          return true;
        case RowBinaryResult::kCorrupt:
          return Fail(CorruptStatus(dec.error(), fmt::format("row {}", rows_ + 1)));
        case RowBinaryResult::kNeedMore:
          if (eof_) {
            if (auto ex = FindClickHouseException(avail, tag_)) return FailWith(*ex, nullptr);
            return Fail(absl::UnavailableError(fmt::format(
                "the ClickHouse result (query {}) ended inside row {} ({} bytes left over)",
                query_id_, rows_ + 1, avail.size())));
          }
          if (absl::Status s = More(nullptr); !s.ok()) return s;
          continue;
      }
    }
  }

 private:
  std::string_view View() const { return std::string_view(buf_).substr(pos_); }

  // Drops the decoded bytes when nothing else is held (cheap).
  void Compact() {
    if (pos_ > 0 && pos_ == buf_.size()) {
      buf_.clear();
      pos_ = 0;
    }
  }

  // Appends the next piece of the body, or notes its clean end.
  absl::Status More(bool* retryable) {
    std::string piece;
    absl::StatusOr<bool> r = stream_->Read(piece);
    if (!r.ok()) {
      // A broken body often carries the exception that broke it.
      if (auto ex = FindClickHouseException(View(), tag_)) return FailWith(*ex, retryable);
      if (retryable != nullptr) *retryable = true;
      return Fail(absl::Status(
          r.status().code(),
          fmt::format("the connection to ClickHouse broke after {} rows of query {}: {}", rows_,
                      query_id_, r.status().message())));
    }
    if (!*r) {
      eof_ = true;
      return absl::OkStatus();
    }
    // More is needed only when what is held is a partial row: keep just that.
    if (pos_ > 0) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
    buf_.append(piece);
    peak_ = std::max(peak_, buf_.size());
    return absl::OkStatus();
  }

  // The body holds an exception from View() on: read the rest and report it.
  absl::Status ExceptionFromBody(bool* retryable) {
    while (!eof_ && buf_.size() - pos_ < kMaxExceptionBytes) {
      std::string piece;
      absl::StatusOr<bool> r = stream_->Read(piece);
      if (!r.ok() || !*r) break;  // servers break the framing after the message
      buf_.append(piece);
    }
    std::optional<ClickHouseException> ex = FindClickHouseException(View(), tag_);
    if (!ex) ex = ParseClickHouseException(View());
    return FailWith(*ex, retryable);
  }

  absl::Status FailWith(const ClickHouseException& ex, bool* retryable) {
    Verdict v = Classify(client_->config(), 0, ex, "", nullptr, client_->clock()->Now());
    if (retryable != nullptr) *retryable = IsRetryableClickHouseCode(ex.code, ex.message);
    return Fail(absl::Status(v.status.code(), fmt::format("{} (query {}, after {} rows)",
                                                          v.status.message(), query_id_, rows_)));
  }

  absl::Status CorruptStatus(const std::string& error, const std::string& what) {
    // Bytes that do not decode may be an exception the scan did not expect.
    while (!eof_ && buf_.size() - pos_ < kMaxExceptionBytes) {
      std::string piece;
      absl::StatusOr<bool> r = stream_->Read(piece);
      if (!r.ok() || !*r) break;
      buf_.append(piece);
    }
    if (auto ex = FindClickHouseException(View(), tag_)) {
      return Classify(client_->config(), 0, *ex, "", nullptr, client_->clock()->Now()).status;
    }
    return absl::DataLossError(
        fmt::format("ClickHouse sent {} of query {} that does not decode as {}: {}", what,
                    query_id_, kFormat, error));
  }

  absl::StatusOr<bool> End() {
    // A killed query may end its body early without an exception.
    if (QueryCancelRequested(cancel_)) return Fail(absl::CancelledError());
    for (const auto& [name, value] : stream_->trailers()) {
      if (name == "x-clickhouse-exception-code") {
        ClickHouseException ex;
        ex.code = std::atoi(value.c_str());
        ex.message = fmt::format("exception code {} in the HTTP trailers", value);
        return FailWith(ex, nullptr);
      }
    }
    finished_ = true;
    stream_.reset();
    buf_.clear();
    buf_.shrink_to_fit();
    return false;
  }

  // Every failure goes through here: once the run is cancelled, whatever
  // broke the result (the KILL's exception, a cut body) is the cancel.
  absl::Status Fail(absl::Status s) {
    if (QueryCancelRequested(cancel_)) s = Cancel();
    status_ = s;
    return s;
  }

  // Ends the watch; true when the watcher sent the KILL.
  bool StopWatching() {
    if (watcher_ == nullptr) return false;
    watcher_->Stop();
    return watcher_->fired();
  }

  // Closes the connection and kills the query unless the watcher did.
  absl::Status Cancel() {
    if (!cancelled_) {
      cancelled_ = true;
      const bool killed = StopWatching();
      stream_.reset();
      if (!killed && !finished_) client_->Kill(query_id_);
    }
    return QueryCancelledError(fmt::format("ClickHouse query {}", query_id_));
  }

  std::shared_ptr<ClickHouseClient> client_;
  const std::string query_id_;
  std::unique_ptr<HttpResponseStream> stream_;
  const bool may_be_empty_;
  const std::atomic<bool>* const cancel_;
  std::unique_ptr<QueryCancelWatcher> watcher_;
  bool cancelled_ = false;
  std::string tag_;
  Schema schema_;
  std::vector<ClickHouseType> types_;
  std::string buf_;
  size_t pos_ = 0;
  size_t peak_ = 0;
  bool eof_ = false;
  bool finished_ = false;
  int64_t rows_ = 0;
  absl::Status status_;
};

// --- Source ---------------------------------------------------------------------------

class ClickHouseSource : public Source {
 public:
  explicit ClickHouseSource(std::shared_ptr<ClickHouseClient> client)
      : client_(std::move(client)), rng_(std::random_device{}()) {}

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(std::unique_ptr<RowReader> reader, Query(kCheckSql));
    Row row;
    BACKFLOW_ASSIGN_OR_RETURN(bool any, reader->Next(row));
    if (!any || row.size() != 3) {
      return absl::DataLossError("ClickHouse returned no row for the connection check");
    }
    Row extra;
    BACKFLOW_ASSIGN_OR_RETURN(bool more, reader->Next(extra));
    if (more) return absl::DataLossError("ClickHouse returned several rows for the check");
    const ClickHouseConfig& c = client_->config();
    if (!c.database.empty() && row[2].ToString() != c.database) {
      return absl::FailedPreconditionError(fmt::format(
          "ClickHouse did not select database \"{}\" (currentDatabase() is \"{}\" for user "
          "\"{}\"): check `database`",
          c.database, row[2].ToString(), row[1].ToString()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    return Execute(TrimModelSql(sql), {}, /*writes=*/false);
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql,
                                                   const QueryOptions& options) override {
    return Execute(TrimModelSql(sql), {}, /*writes=*/false, options.cancel);
  }

  WarehouseChangeDetection* warehouse_change_detection() override {
    if (change_detection_ == nullptr) {
      auto sql = NewClickHouseWarehouseSql(
          [this](const std::string& statement,
                 const std::vector<std::pair<std::string, std::string>>& params,
                 const std::atomic<bool>* cancel) {
            return Execute(statement, params, /*writes=*/true, cancel);
          },
          client_->config().checkpoint_purge);
      PassChangeDetectionOptions options;
      options.state_schema = client_->config().state_schema;
      options.clock = client_->clock();
      change_detection_ = NewPassChangeDetection(std::move(sql), std::move(options));
    }
    return change_detection_.get();
  }

 private:
  absl::StatusOr<std::unique_ptr<RowReader>> Execute(
      const std::string& text, const std::vector<std::pair<std::string, std::string>>& params,
      bool writes, const std::atomic<bool>* cancel = nullptr) {
    const ClickHouseConfig& c = client_->config();
    for (int attempt = 1;; ++attempt) {
      // A cancelled run sends no (further) query.
      if (QueryCancelRequested(cancel)) return QueryCancelledError("the ClickHouse query");
      std::unique_ptr<RowReader> reader;
      Verdict v = Attempt(text, params, writes, cancel, reader);
      if (reader) return reader;
      if (v.status.code() == absl::StatusCode::kCancelled) return v.status;
      if (!v.retry || attempt > c.retry.max_retries) {
        if (attempt > 1) {
          return absl::Status(v.status.code(),
                              fmt::format("{} (after {} attempts)", v.status.message(), attempt));
        }
        return v.status;
      }
      // The backoff in steps, so that a cancel is seen within one.
      for (Clock::Duration left = Backoff(attempt, v.wait); left > Clock::Duration::zero();) {
        if (QueryCancelRequested(cancel)) break;
        Clock::Duration step = std::min<Clock::Duration>(left, kCancelCheckStep);
        client_->clock()->SleepFor(step);
        left -= step;
      }
    }
  }

  // `cancel`: QueryOptions::cancel (may be null); once it is set while the
  // request waits for the answer, a watcher kills the query, and the
  // attempt's verdict is kCancelled.
  Verdict Attempt(const std::string& sql,
                  const std::vector<std::pair<std::string, std::string>>& params, bool writes,
                  const std::atomic<bool>* cancel, std::unique_ptr<RowReader>& out) {
    const ClickHouseConfig& c = client_->config();
    const std::string query_id = client_->NewQueryId();
    std::unique_ptr<QueryCancelWatcher> watcher;
    if (cancel != nullptr) {
      watcher = std::make_unique<QueryCancelWatcher>(
          cancel, [client = client_, query_id] { client->Kill(query_id); });
    }
    // Ends the watch; true when the watcher sent the KILL.
    auto stop_watching = [&] {
      if (watcher == nullptr) return false;
      watcher->Stop();
      return watcher->fired();
    };
    absl::StatusOr<std::unique_ptr<HttpResponseStream>> stream =
        client_->Open(sql, query_id, params, writes);
    Verdict v;
    if (QueryCancelRequested(cancel)) {
      // Whatever came back (most likely the KILL's QUERY_WAS_CANCELLED, 394)
      // is the cancel; a result that had started is abandoned.
      if (stream.ok()) stream->reset();
      if (!stop_watching()) client_->Kill(query_id);
      v.status = QueryCancelledError(fmt::format("ClickHouse query {}", query_id));
      return v;
    }
    if (!stream.ok()) {
      // The request may have reached the server: make sure the query stops.
      if (!stop_watching()) client_->Kill(query_id);
      v.retry = true;
      v.status = absl::Status(
          stream.status().code(),
          fmt::format("could not reach ClickHouse at {}: {}. Check base_url (http://host:8123 "
                      "or https://host:8443) and the network",
                      c.base_url, stream.status().message()));
      return v;
    }
    HttpResponseStream& reply = **stream;
    std::optional<std::string> code_header = reply.Header("x-clickhouse-exception-code");
    if (reply.status() != 200 || code_header) {
      stop_watching();  // the query has ended
      std::string body;
      std::string piece;
      while (body.size() < kMaxErrorBody) {
        absl::StatusOr<bool> r = reply.Read(piece);
        if (!r.ok() || !*r) break;
        body += piece;
      }
      ClickHouseException ex = ParseClickHouseException(body);
      if (code_header) {
        int code = std::atoi(code_header->c_str());
        if (code != 0) ex.code = code;
      }
      return Classify(c, reply.status(), ex, body, &reply, client_->clock()->Now());
    }
    if (auto format = reply.Header("x-clickhouse-format"); format && *format != kFormat) {
      stream->reset();
      if (!stop_watching()) client_->Kill(query_id);
      v.status = absl::InvalidArgumentError(fmt::format(
          "ClickHouse answered in format {}: the model's SQL chooses its own output format. "
          "Remove its FORMAT clause (Backflow reads {})",
          *format, kFormat));
      return v;
    }
    auto reader = std::make_unique<ClickHouseReader>(client_, query_id, *std::move(stream), writes,
                                                     cancel, std::move(watcher));
    bool retryable = false;
    absl::Status s = reader->ReadHeader(retryable);
    if (!s.ok()) {
      v.status = s;
      v.retry = retryable && s.code() != absl::StatusCode::kCancelled;
      return v;  // the reader's destructor closes the connection and kills the query
    }
    out = std::move(reader);
    return v;
  }

  Clock::Duration Backoff(int attempt, std::optional<std::chrono::milliseconds> requested) {
    const RetryPolicy& p = client_->config().retry;
    if (requested) return std::min(*requested, p.max_wait);
    double cap = static_cast<double>(p.base_backoff.count());
    for (int i = 1; i < attempt; ++i) cap *= p.multiplier;
    cap = std::min(cap, static_cast<double>(p.max_wait.count()));
    std::uniform_real_distribution<double> jitter(0.0, cap);
    return std::chrono::milliseconds(static_cast<int64_t>(jitter(rng_)));
  }

  std::shared_ptr<ClickHouseClient> client_;
  std::mt19937_64 rng_;
  std::unique_ptr<WarehouseChangeDetection> change_detection_;
};

}  // namespace

// --- Settings and definition --------------------------------------------------------------

absl::StatusOr<ClickHouseConfig> ParseClickHouseSettings(const json& settings) {
  if (!settings.is_object()) return absl::InvalidArgumentError("clickhouse settings must be a map");
  auto text = [&](const char* name) -> std::string {
    auto it = settings.find(name);
    return it != settings.end() && it->is_string() ? it->get<std::string>() : "";
  };
  auto boolean = [&](const char* name, bool def) {
    auto it = settings.find(name);
    return it != settings.end() && it->is_boolean() ? it->get<bool>() : def;
  };
  auto integer = [&](const char* name, int64_t def, int64_t lo,
                     int64_t hi) -> absl::StatusOr<int64_t> {
    auto it = settings.find(name);
    if (it == settings.end() || it->is_null()) return def;
    if (!it->is_number_integer() || it->get<int64_t>() < lo || it->get<int64_t>() > hi) {
      return absl::InvalidArgumentError(
          fmt::format("{}: must be an integer from {} to {}", name, lo, hi));
    }
    return it->get<int64_t>();
  };

  ClickHouseConfig c;
  c.base_url = text("base_url");
  while (!c.base_url.empty() && c.base_url.back() == '/') c.base_url.pop_back();
  if (c.base_url.empty()) {
    return absl::InvalidArgumentError(
        "base_url: required; the HTTP interface, e.g. https://abc123.clickhouse.cloud:8443 or "
        "http://clickhouse.internal:8123");
  }
  if ((!c.base_url.starts_with("http://") && !c.base_url.starts_with("https://")) ||
      c.base_url.find_first_of("?#") != std::string::npos) {
    return absl::InvalidArgumentError(fmt::format(
        "base_url: \"{}\" must be an http:// or https:// address without a query string, e.g. "
        "http://host:8123",
        c.base_url));
  }
  if (std::string u = text("user"); !u.empty()) c.user = u;
  c.password = text("password");
  std::string auth = text("auth");
  if (auth.empty() || auth == "headers") {
    c.auth = ClickHouseAuth::kHeaders;
  } else if (auth == "basic") {
    c.auth = ClickHouseAuth::kBasic;
  } else {
    return absl::InvalidArgumentError("auth: use headers or basic");
  }
  c.database = text("database");
  c.readonly = boolean("readonly", true);
  c.compression = boolean("compression", true);
  BACKFLOW_ASSIGN_OR_RETURN(c.query_timeout_s, integer("query_timeout_s", 3600, 1, 604'800));
  if (std::string p = text("query_id_prefix"); !p.empty()) {
    if (!IsName(p, /*allow_dash=*/true) || p.size() > 64) {
      return absl::InvalidArgumentError(
          "query_id_prefix: use letters, digits, '_' and '-' (at most 64)");
    }
    c.query_id_prefix = p;
  }
  if (auto it = settings.find("settings"); it != settings.end() && !it->is_null()) {
    if (!it->is_object()) return absl::InvalidArgumentError("settings: must be a map");
    for (auto& [key, value] : it->items()) {
      if (!IsName(key, /*allow_dash=*/false)) {
        return absl::InvalidArgumentError(
            fmt::format("settings.{}: not a ClickHouse setting name", key));
      }
      if (ReservedSettings().count(key) != 0) {
        return absl::InvalidArgumentError(fmt::format(
            "settings.{}: Backflow sets this itself (see database, readonly, compression, "
            "query_timeout_s)",
            key));
      }
      if (value.is_string()) {
        c.settings[key] = value.get<std::string>();
      } else if (value.is_boolean()) {
        c.settings[key] = value.get<bool>() ? "1" : "0";
      } else if (value.is_number()) {
        c.settings[key] = value.dump();
      } else {
        return absl::InvalidArgumentError(fmt::format("settings.{}: must be a string", key));
      }
    }
  }
  if (auto it = settings.find("state_schema"); it != settings.end() && !it->is_null()) {
    if (!it->is_string() || !IsPlainSqlIdentifier(it->get<std::string>()) ||
        it->get<std::string>().find('$') != std::string::npos) {
      return absl::InvalidArgumentError(
          "state_schema: must be a plain database name (letters, digits, '_'; not starting with "
          "a digit), e.g. backflow_state");
    }
    c.state_schema = it->get<std::string>();
  }
  BACKFLOW_ASSIGN_OR_RETURN(int64_t timeout_ms, integer("timeout_ms", 30'000, 100, 3'600'000));
  c.timeout = std::chrono::milliseconds(timeout_ms);
  BACKFLOW_ASSIGN_OR_RETURN(int64_t retries, integer("max_retries", 5, 0, 100));
  c.retry.max_retries = static_cast<int>(retries);
  BACKFLOW_ASSIGN_OR_RETURN(int64_t max_wait_s, integer("max_retry_wait_s", 300, 1, 86'400));
  c.retry.max_wait = std::chrono::seconds(max_wait_s);
  return c;
}

absl::StatusOr<std::unique_ptr<Source>> NewClickHouseSource(
    ClickHouseConfig config, const ConnectorEnv& env, std::shared_ptr<HttpStreamClient> stream) {
  if (env.clock == nullptr) return absl::InternalError("the ClickHouse source needs a clock");
  if (stream == nullptr) stream = NewCurlHttpStreamClient();
  auto client = std::make_shared<ClickHouseClient>(std::move(config), env, std::move(stream));
  return std::unique_ptr<Source>(new ClickHouseSource(std::move(client)));
}

SourceDefinition ClickHouseSourceDefinition() {
  SourceDefinition def;
  def.type = "clickhouse";
  def.title = "ClickHouse";
  def.description =
      "Runs model SQL on ClickHouse through its HTTP interface and decodes the "
      "RowBinaryWithNamesAndTypes result as it arrives (memory holds one network buffer, not "
      "the result). Integers and decimals stay exact (UInt64 above 2^63-1 and (U)Int128/256 as "
      "exact decimals), DateTime/DateTime64 become ISO-8601 UTC timestamps whatever their time "
      "zone, Array/Map/Tuple become JSON, and a query that fails while rows are streaming fails "
      "the run instead of ending it early. Queries carry a query_id and are stopped with KILL "
      "QUERY when a run is abandoned.";
  def.maturity = "beta";

  SettingSpec base = MakeSetting(
      "base_url", "Base URL",
      "ClickHouse's HTTP interface: http://host:8123, or https://host:8443 with TLS (ClickHouse "
      "Cloud: https://<service>.clickhouse.cloud:8443). A path is kept for proxies.");
  base.required = true;
  def.settings.push_back(base);
  def.settings.push_back(
      MakeSetting("user", "User", "The ClickHouse user.", SettingType::kString, "default"));
  SettingSpec password =
      MakeSetting("password", "Password", "The user's password, e.g. ${env:CLICKHOUSE_PASSWORD}.");
  password.secret = true;
  def.settings.push_back(password);
  SettingSpec auth = MakeSetting("auth", "Credentials transport",
                                 "headers: X-ClickHouse-User and X-ClickHouse-Key (ClickHouse's "
                                 "preferred way); basic: an HTTP Basic Authorization header, for "
                                 "proxies that require it.",
                                 SettingType::kEnum);
  auth.allowed_values = {"headers", "basic"};
  auth.default_value = "headers";
  def.settings.push_back(auth);
  def.settings.push_back(MakeSetting("database", "Database",
                                     "Database for unqualified table names. Default: the user's "
                                     "default database."));
  def.settings.push_back(MakeSetting(
      "readonly", "Read-only",
      "Send readonly=2 so the server refuses anything but reads (settings may still be set). "
      "Turn off only if the user's profile forbids changing `readonly`.",
      SettingType::kBoolean, true));
  def.settings.push_back(
      MakeSetting("query_timeout_s", "Query timeout (s)",
                  "max_execution_time of Backflow's queries; the client also gives up when no data "
                  "arrives for this long plus a minute.",
                  SettingType::kInteger, 3600));
  def.settings.push_back(
      MakeSetting("compression", "Compression",
                  "Ask for a compressed response (enable_http_compression=1 with Accept-Encoding "
                  "gzip/deflate/br/zstd), decoded as it streams.",
                  SettingType::kBoolean, true));
  def.settings.push_back(MakeSetting(
      "settings", "Query settings",
      "Extra ClickHouse settings for every query, sent as URL parameters, e.g. {max_threads: "
      "\"8\", max_memory_usage: \"10000000000\"}. `output_format_binary_write_json_as_string: "
      "\"1\"` lets models return JSON-type columns.",
      SettingType::kStringMap));
  def.settings.push_back(
      MakeSetting("query_id_prefix", "Query id prefix",
                  "Backflow's queries get query_id <prefix>-<uuid>, to find them in "
                  "system.query_log and to KILL them.",
                  SettingType::kString, "backflow"));
  def.settings.push_back(
      MakeSetting("timeout_ms", "Connect timeout (ms)",
                  "Limit for connecting to the server, and for the KILL QUERY request.",
                  SettingType::kInteger, 30'000));
  def.settings.push_back(MakeSetting(
      "max_retries", "Max retries",
      "Retries of a query that failed before its first row: connection errors, 502/503/504, "
      "TOO_MANY_SIMULTANEOUS_QUERIES and other transient exceptions (each with a new query_id).",
      SettingType::kInteger, 5));
  def.settings.push_back(MakeSetting("max_retry_wait_s", "Max retry wait (s)",
                                     "Upper bound on any single wait between retries.",
                                     SettingType::kInteger, 300));

  def.settings.push_back(MakeSetting(
      "state_schema", "State database",
      "For models with change_detection: warehouse: the database where Backflow keeps what each "
      "mapping last delivered (table CHECKPOINTS, a ReplacingMergeTree) and the tables of "
      "running passes (dropped when a pass ends). Created when missing; the user needs CREATE "
      "DATABASE, or CREATE TABLE, DROP TABLE, SELECT, INSERT and ALTER DELETE on this "
      "database. These statements are sent without readonly.",
      SettingType::kString, "backflow_state"));
  def.warehouse_change_detection = true;

  def.create = [](const json& settings,
                  const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Source>> {
    BACKFLOW_ASSIGN_OR_RETURN(ClickHouseConfig config, ParseClickHouseSettings(settings));
    return NewClickHouseSource(std::move(config), env);
  };
  return def;
}

}  // namespace backflow
