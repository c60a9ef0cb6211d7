#include "backflow/sources/databricks/databricks_source.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/civil_date.h"
#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/common/numbers.h"
#include "backflow/common/status_macros.h"
#include "backflow/common/url.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/oauth_client_credentials.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr int64_t kDefaultTimeoutMs = 60'000;
constexpr int kDefaultMaxRetries = 5;
// Extra time the submit request gets on top of the server-side wait.
constexpr int64_t kSubmitSlackMs = 10'000;
constexpr int kMaxEmptyChunks = 1000;

std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool ContainsNoCase(const std::string& haystack, const std::string& needle) {
  return Lower(haystack).find(Lower(needle)) != std::string::npos;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

std::string TextOf(const json& object, const char* key) {
  if (!object.is_object()) return "";
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

std::optional<int64_t> IntOf(const json& object, const char* key) {
  if (!object.is_object()) return std::nullopt;
  auto it = object.find(key);
  if (it == object.end()) return std::nullopt;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) {
    const std::string& s = it->get_ref<const std::string&>();
    int64_t v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec == std::errc() && ptr == s.data() + s.size() && !s.empty()) return v;
  }
  return std::nullopt;
}

// ------------------------------------------------------------- numbers

std::optional<double> ParseDouble(std::string_view s) {
  if (s == "NaN" || s == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (s == "Infinity" || s == "+Infinity" || s == "inf") {
    return std::numeric_limits<double>::infinity();
  }
  if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return std::nullopt;
  double d = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
  if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return d;
}

// Exact decimal text: "[-]digits[.digits]". Plain input keeps its digits and
// scale ("12.50"); an exponent ("1.5E3", "0E-10") is expanded exactly.
std::optional<std::string> DecimalText(std::string_view s) {
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  std::string whole, fraction;
  size_t i = 0;
  while (i < s.size() && IsDigit(s[i])) whole.push_back(s[i++]);
  bool point = i < s.size() && s[i] == '.';
  if (point) {
    ++i;
    while (i < s.size() && IsDigit(s[i])) fraction.push_back(s[i++]);
  }
  if (whole.empty() && fraction.empty()) return std::nullopt;
  std::optional<int64_t> exponent;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    std::string_view e = s.substr(i + 1);
    if (!e.empty() && e[0] == '+') e.remove_prefix(1);
    exponent = ParseInt64(e);
    if (!exponent || *exponent > 1000 || *exponent < -1000) return std::nullopt;
    i = s.size();
  }
  if (i != s.size()) return std::nullopt;
  if (exponent) {
    std::string digits = whole + fraction;
    int64_t at = static_cast<int64_t>(whole.size()) + *exponent;  // the point's new position
    if (at <= 0) {
      whole = "0";
      fraction = std::string(static_cast<size_t>(-at), '0') + digits;
    } else if (at >= static_cast<int64_t>(digits.size())) {
      whole = digits + std::string(static_cast<size_t>(at) - digits.size(), '0');
      fraction.clear();
    } else {
      whole = digits.substr(0, static_cast<size_t>(at));
      fraction = digits.substr(static_cast<size_t>(at));
    }
  }
  size_t lead = 0;
  while (lead + 1 < whole.size() && whole[lead] == '0') ++lead;
  whole.erase(0, lead);
  if (whole.empty()) whole = "0";
  std::string out = negative ? "-" : "";
  out += whole;
  if (!fraction.empty()) out += "." + fraction;
  return out;
}

// ---------------------------------------------------------------- time

int64_t DaysInMonth(int64_t y, int64_t m) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : kDays[m - 1];
}

int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

struct ParsedTimestamp {
  int64_t days = 0;      // since 1970-01-01
  int64_t seconds = 0;   // of the day, local to the offset
  std::string fraction;  // digits, trailing zeros dropped
  bool has_zone = false;
  int64_t offset_seconds = 0;
};

std::optional<ParsedTimestamp> ParseTimestamp(std::string_view s) {
  auto y = FixedDigits(s, 0, 4), mo = FixedDigits(s, 5, 2), d = FixedDigits(s, 8, 2);
  if (!y || !mo || !d || s.size() < 16 || s[4] != '-' || s[7] != '-') return std::nullopt;
  if (s[10] != 'T' && s[10] != ' ' && s[10] != 't') return std::nullopt;
  auto h = FixedDigits(s, 11, 2), mi = FixedDigits(s, 14, 2);
  if (!h || !mi || s[13] != ':') return std::nullopt;
  if (*mo < 1 || *mo > 12 || *d < 1 || *d > DaysInMonth(*y, *mo) || *y < 1 || *h > 23 || *mi > 59) {
    return std::nullopt;
  }
  ParsedTimestamp out;
  size_t i = 16;
  int64_t sec = 0;
  if (i < s.size() && s[i] == ':') {
    auto sv = FixedDigits(s, i + 1, 2);
    if (!sv || *sv > 59) return std::nullopt;
    sec = *sv;
    i += 3;
    if (i < s.size() && s[i] == '.') {
      ++i;
      size_t start = i;
      while (i < s.size() && IsDigit(s[i])) ++i;
      if (i == start || i - start > 9) return std::nullopt;
      out.fraction = std::string(s.substr(start, i - start));
      while (!out.fraction.empty() && out.fraction.back() == '0') out.fraction.pop_back();
    }
  }
  std::string_view zone = s.substr(i);
  if (!zone.empty() && zone[0] == ' ') zone.remove_prefix(1);
  if (zone.empty()) {
    out.has_zone = false;
  } else if (zone == "Z" || zone == "z" || zone == "UTC") {
    out.has_zone = true;
  } else if (zone[0] == '+' || zone[0] == '-') {
    auto zh = FixedDigits(zone, 1, 2);
    std::optional<int64_t> zm = 0;
    if (zone.size() == 3) {
    } else if (zone.size() == 5) {
      zm = FixedDigits(zone, 3, 2);
    } else if (zone.size() == 6 && zone[3] == ':') {
      zm = FixedDigits(zone, 4, 2);
    } else {
      return std::nullopt;
    }
    if (!zh || !zm || *zh > 18 || *zm > 59) return std::nullopt;
    out.has_zone = true;
    out.offset_seconds = (zone[0] == '-' ? -1 : 1) * (*zh * 3600 + *zm * 60);
  } else {
    return std::nullopt;
  }
  out.days = DaysFromCivil(*y, *mo, *d);
  out.seconds = *h * 3600 + *mi * 60 + sec;
  return out;
}

std::string FormatTimestamp(int64_t days, int64_t seconds, const std::string& fraction) {
  const CivilDate date = CivilFromDays(days);
  std::string out = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", date.year, date.month,
                                date.day, seconds / 3600, (seconds / 60) % 60, seconds % 60);
  if (!fraction.empty()) out += "." + fraction;
  return out;
}

// ----------------------------------------------------------- column kinds

// The canonical keyword for a type name or the leading keyword of a
// type_text; "" when unknown.
std::string CanonicalKind(const std::string& word) {
  static const std::pair<const char*, const char*> kAliases[] = {
      {"BIGINT", "BIGINT"},
      {"LONG", "BIGINT"},
      {"INT", "INT"},
      {"INTEGER", "INT"},
      {"SMALLINT", "SMALLINT"},
      {"SHORT", "SMALLINT"},
      {"TINYINT", "TINYINT"},
      {"BYTE", "TINYINT"},
      {"DECIMAL", "DECIMAL"},
      {"DEC", "DECIMAL"},
      {"NUMERIC", "DECIMAL"},
      {"DOUBLE", "DOUBLE"},
      {"FLOAT", "FLOAT"},
      {"REAL", "FLOAT"},
      {"BOOLEAN", "BOOLEAN"},
      {"DATE", "DATE"},
      {"TIMESTAMP", "TIMESTAMP"},
      {"TIMESTAMP_LTZ", "TIMESTAMP"},
      {"TIMESTAMP_NTZ", "TIMESTAMP_NTZ"},
      {"STRING", "STRING"},
      {"VARCHAR", "STRING"},
      {"CHAR", "STRING"},
      {"BINARY", "BINARY"},
      {"ARRAY", "ARRAY"},
      {"MAP", "MAP"},
      {"STRUCT", "STRUCT"},
      {"VARIANT", "VARIANT"},
      {"OBJECT", "VARIANT"},
      {"INTERVAL", "INTERVAL"},
      {"VOID", "VOID"},
      {"NULL", "VOID"},
      {"GEOGRAPHY", "STRING"},
      {"GEOMETRY", "STRING"},
      {"USER_DEFINED_TYPE", "STRING"},
  };
  for (const auto& [alias, kind] : kAliases) {
    if (word == alias) return kind;
  }
  return "";
}

ValueType ValueTypeOfKind(const std::string& kind) {
  if (kind == "BIGINT" || kind == "INT" || kind == "SMALLINT" || kind == "TINYINT") {
    return ValueType::kInt64;
  }
  if (kind == "DECIMAL") return ValueType::kDecimal;
  if (kind == "DOUBLE" || kind == "FLOAT") return ValueType::kDouble;
  if (kind == "BOOLEAN") return ValueType::kBool;
  if (kind == "DATE") return ValueType::kDate;
  if (kind == "TIMESTAMP" || kind == "TIMESTAMP_NTZ") return ValueType::kTimestamp;
  if (kind == "BINARY") return ValueType::kBytes;
  if (kind == "ARRAY" || kind == "MAP" || kind == "STRUCT" || kind == "VARIANT") {
    return ValueType::kJson;
  }
  return ValueType::kString;
}

absl::Status BadCell(const DatabricksColumnType& type, const json& cell, std::string fix = "") {
  std::string text = Dump(cell);
  if (text.size() > 64) text = text.substr(0, 64) + "...";
  std::string message = fmt::format("Databricks sent {} for column {} of type {}", text,
                                    type.column.name, type.column.source_type);
  if (!fix.empty()) message += ": " + fix;
  return absl::DataLossError(message);
}

}  // namespace

// ------------------------------------------------------------ public helpers

std::string DatabricksDefaultBaseUrl(std::string_view host) {
  std::string h(host);
  std::string scheme = "https://";
  std::string lower = Lower(h);
  if (lower.starts_with("https://")) {
    h = h.substr(8);
  } else if (lower.starts_with("http://")) {
    h = h.substr(7);
    scheme = "http://";
  }
  size_t end = h.find_first_of("/?#");
  if (end != std::string::npos) h = h.substr(0, end);
  return scheme + Lower(h);
}

absl::StatusOr<std::string> DatabricksTimestampText(std::string_view text) {
  std::optional<ParsedTimestamp> t = ParseTimestamp(text);
  if (!t) {
    return absl::InvalidArgumentError(
        fmt::format("not a Databricks TIMESTAMP value: {:?}", std::string(text.substr(0, 64))));
  }
  int64_t total = t->days * 86'400 + t->seconds - t->offset_seconds;
  int64_t days = FloorDiv(total, 86'400);
  int64_t seconds = total - days * 86'400;
  const int64_t y = CivilFromDays(days).year;
  if (y < 1 || y > 9999) {
    return absl::InvalidArgumentError(
        fmt::format("TIMESTAMP value out of range: {:?}", std::string(text.substr(0, 64))));
  }
  return FormatTimestamp(days, seconds, t->fraction) + "Z";
}

absl::StatusOr<DatabricksColumnType> ParseDatabricksColumn(const json& column) {
  if (!column.is_object()) {
    return absl::DataLossError("Databricks sent a schema column that is not an object");
  }
  DatabricksColumnType out;
  out.column.name = TextOf(column, "name");
  out.type_name = Upper(TextOf(column, "type_name"));
  std::string type_text = TextOf(column, "type_text");
  if (type_text.empty()) type_text = out.type_name;
  if (out.column.name.empty() && !column.contains("name")) {
    return absl::DataLossError(
        fmt::format("Databricks sent a schema column without a name: {}", Dump(column)));
  }
  if (type_text.empty()) {
    return absl::DataLossError(
        fmt::format("Databricks sent column {} without a type", out.column.name));
  }
  std::string upper_text = Upper(type_text);
  std::string word = upper_text.substr(0, upper_text.find_first_of("(< "));
  out.kind = CanonicalKind(word);
  if (out.kind.empty()) out.kind = CanonicalKind(out.type_name);
  if (out.kind.empty()) out.kind = "STRING";  // future types arrive as their rendering
  out.column.type = ValueTypeOfKind(out.kind);
  out.column.source_type = type_text;
  return out;
}

absl::StatusOr<Value> DecodeDatabricksCell(const DatabricksColumnType& type, const json& cell) {
  if (cell.is_null()) return Value::Null();
  const std::string& kind = type.kind;
  ValueType vt = type.column.type;
  if (vt == ValueType::kJson) {
    if (cell.is_array() || cell.is_object()) return Value::Text(ValueType::kJson, Dump(cell));
    if (!cell.is_string()) return BadCell(type, cell);
    const std::string& text = cell.get_ref<const std::string&>();
    if (json::accept(text)) return Value::Text(ValueType::kJson, CompactJson(text));
    // Not strict JSON (e.g. ARRAY<DATE> as [2021-07-20]): keep the rendering
    // as a JSON string rather than guess.
    std::string quoted;
    quoted = Dump(json(text));
    return Value::Text(ValueType::kJson, std::move(quoted));
  }
  if (vt == ValueType::kBool && cell.is_boolean()) return Value::Bool(cell.get<bool>());
  if (vt == ValueType::kInt64 && cell.is_number_integer()) {
    return Value::Int64(cell.get<int64_t>());
  }
  if (!cell.is_string()) return BadCell(type, cell);
  const std::string& text = cell.get_ref<const std::string&>();
  switch (vt) {
    case ValueType::kInt64: {
      std::optional<int64_t> i = ParseInt64(text);
      if (!i) return BadCell(type, cell);
      return Value::Int64(*i);
    }
    case ValueType::kDecimal: {
      std::optional<std::string> d = DecimalText(text);
      if (!d) return BadCell(type, cell);
      return Value::Text(ValueType::kDecimal, *std::move(d));
    }
    case ValueType::kDouble: {
      std::optional<double> d = ParseDouble(text);
      if (!d) return BadCell(type, cell);
      return Value::Double(*d);
    }
    case ValueType::kBool: {
      std::string lower = Lower(text);
      if (lower == "true") return Value::Bool(true);
      if (lower == "false") return Value::Bool(false);
      return BadCell(type, cell);
    }
    case ValueType::kDate: {
      auto y = FixedDigits(text, 0, 4), m = FixedDigits(text, 5, 2), d = FixedDigits(text, 8, 2);
      if (text.size() != 10 || !y || !m || !d || text[4] != '-' || text[7] != '-' || *m < 1 ||
          *m > 12 || *d < 1 || *d > DaysInMonth(*y, *m)) {
        return BadCell(type, cell);
      }
      return Value::Text(ValueType::kDate, text);
    }
    case ValueType::kTimestamp: {
      if (kind == "TIMESTAMP_NTZ") {
        std::optional<ParsedTimestamp> t = ParseTimestamp(text);
        if (!t || t->offset_seconds != 0) return BadCell(type, cell);
        return Value::Text(ValueType::kTimestamp,
                           FormatTimestamp(t->days, t->seconds, t->fraction));
      }
      absl::StatusOr<std::string> iso = DatabricksTimestampText(text);
      if (!iso.ok()) return BadCell(type, cell);
      return Value::Text(ValueType::kTimestamp, *std::move(iso));
    }
    case ValueType::kBytes: {
      absl::StatusOr<std::string> bytes = Base64Decode(text);
      if (!bytes.ok()) {
        return BadCell(type, cell,
                       "expected base64; select base64(col) or hex(col) as a string instead");
      }
      return Value::Text(ValueType::kBytes, *std::move(bytes));
    }
    default:
      return Value::String(text);
  }
}

absl::StatusOr<bool> JsonArrayRowScanner::Next(json& row) {
  auto skip_ws = [&] {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\r' || text_[pos_] == '\t')) {
      ++pos_;
    }
  };
  auto bad = [&](const char* what) {
    done_ = true;
    return absl::DataLossError(
        fmt::format("Databricks sent a result chunk that is not a JSON array of rows ({} at byte "
                    "{} of {})",
                    what, pos_, text_.size()));
  };
  auto finish = [&]() -> absl::StatusOr<bool> {
    ++pos_;  // the closing ']'
    skip_ws();
    if (pos_ != text_.size()) return bad("text after the array");
    done_ = true;
    text_.clear();
    text_.shrink_to_fit();
    return false;
  };
  if (done_) return false;
  skip_ws();
  if (!started_) {
    if (pos_ >= text_.size() || text_[pos_] != '[') return bad("no opening '['");
    started_ = true;
    ++pos_;
    skip_ws();
    if (pos_ < text_.size() && text_[pos_] == ']') return finish();
  } else if (after_row_) {
    if (pos_ >= text_.size()) return bad("cut short");
    if (text_[pos_] == ']') return finish();
    if (text_[pos_] != ',') return bad("no ',' between rows");
    ++pos_;
    skip_ws();
  }
  if (pos_ >= text_.size()) return bad("cut short");
  if (text_[pos_] != '[') return bad("a row that is not an array");
  int depth = 0;
  bool in_string = false;
  size_t end = std::string::npos;
  for (size_t i = pos_; i < text_.size(); ++i) {
    char c = text_[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if (c == ']' || c == '}') {
      if (--depth == 0) {
        end = i;
        break;
      }
    }
  }
  if (end == std::string::npos) return bad("cut short");
  row = json::parse(std::string_view(text_).substr(pos_, end - pos_ + 1), nullptr,
                    /*allow_exceptions=*/false);
  if (row.is_discarded() || !row.is_array()) return bad("a malformed row");
  pos_ = end + 1;
  after_row_ = true;
  return true;
}

namespace {

// ---------------------------------------------------------------- errors

// The usual Databricks REST error body: {"error_code","message"}.
struct ApiError {
  int http_status = 0;
  std::string error_code;
  std::string message;

  std::string Said() const {
    if (error_code.empty()) return message;
    return message.empty() ? error_code : error_code + ": " + message;
  }
};

ApiError ParseApiError(const HttpResponse& r) {
  ApiError e;
  e.http_status = r.status;
  json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_object()) {
    e.error_code = TextOf(body, "error_code");
    e.message = TextOf(body, "message");
    if (e.error_code.empty() && e.message.empty()) {
      e.error_code = TextOf(body, "error");
      e.message = TextOf(body, "error_description");
    }
  }
  if (e.error_code.empty() && e.message.empty()) e.message = BodySnippet(r.body, 300);
  return e;
}

// 400s the SDKs treat as transient: the warehouse's compute is not ready.
bool ClusterNotReady(const std::string& body) {
  return ContainsNoCase(body, "ClusterNotReadyException") ||
         ContainsNoCase(body, "worker environment not found") ||
         ContainsNoCase(body, "does not have any associated worker environments");
}

bool RetryableApiReply(const HttpResponse& r) {
  if (r.status >= 200 && r.status < 300) return false;
  if (DefaultRetryableStatus(r.status)) return true;
  return r.status == 400 && ClusterNotReady(r.body);
}

// Cloud storage errors are XML (S3, GCS) or XML-ish (Azure): keep only the
// <Code> and <Message>, so that nothing of the signed URL is quoted.
std::string StorageErrorText(const HttpResponse& r) {
  auto element = [&](const std::string& name) -> std::string {
    size_t open = r.body.find("<" + name + ">");
    if (open == std::string::npos) return "";
    open += name.size() + 2;
    size_t close = r.body.find("</" + name + ">", open);
    if (close == std::string::npos) return "";
    return r.body.substr(open, std::min<size_t>(close - open, 200));
  };
  std::string code = element("Code");
  std::string message = element("Message");
  if (code.empty() && message.empty()) return fmt::format("HTTP {}", r.status);
  return fmt::format("HTTP {} {}{}{}", r.status, code, message.empty() ? "" : ": ", message);
}

struct StatementError {
  std::string error_code;
  std::string message;
  std::string sql_state;
};

bool RetryableErrorCode(const std::string& code) {
  return code == "TEMPORARILY_UNAVAILABLE" || code == "WORKSPACE_TEMPORARILY_UNAVAILABLE" ||
         code == "SERVICE_UNDER_MAINTENANCE";
}

bool InlineLimitExceeded(const StatementError& e) {
  return ContainsNoCase(e.message, "Inline byte limit exceeded") ||
         (ContainsNoCase(e.message, "disposition=INLINE") &&
          ContainsNoCase(e.message, "EXTERNAL_LINKS"));
}

// ---------------------------------------------------------------- client

struct CallContext {
  std::string what;  // "run the query", "fetch chunk 3 of statement X"
  bool submit = false;
};

class DatabricksClient {
 public:
  DatabricksClient(DatabricksConfig cfg, std::unique_ptr<ClientCredentialsTokenSource> tokens,
                   HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)),
        tokens_(std::move(tokens)),
        http_(http),
        clock_(clock),
        limiter_(cfg_.http.UserLimiter(*clock)) {}

  const DatabricksConfig& cfg() const { return cfg_; }
  Clock* clock() const { return clock_; }

  HttpDelivery NewApiDelivery() const {
    VendorRules rules;
    rules.retryable = RetryableApiReply;
    return HttpDelivery(http_, clock_, {limiter_.get()}, cfg_.http.retry, std::move(rules),
                        tokens_.get());
  }

  // For presigned cloud-storage links: no limiter, no token.
  HttpDelivery NewDownloadDelivery() const {
    return HttpDelivery(http_, clock_, {}, cfg_.http.retry);
  }

  std::string StatementsUrl() const { return cfg_.http.base_url + kDatabricksStatementsPath; }

  std::string StatementUrl(const std::string& id) const {
    return StatementsUrl() + "/" + PercentEncode(id);
  }

  HttpRequest ApiRequest(std::string method, std::string url, std::string body,
                         std::chrono::milliseconds timeout) const {
    HttpRequest req;
    req.method = std::move(method);
    req.url = std::move(url);
    req.body = std::move(body);
    req.timeout = timeout;
    req.headers.emplace_back("Accept", "application/json");
    if (req.method == "POST") req.headers.emplace_back("Content-Type", "application/json");
    if (cfg_.auth == DatabricksAuth::kPersonalAccessToken) {
      req.headers.emplace_back("Authorization", "Bearer " + cfg_.token);
    }
    return req;
  }

  // Sends one API request with retries; the parsed 2xx JSON object.
  absl::StatusOr<json> Call(HttpDelivery& delivery, const HttpRequest& req,
                            const CallContext& ctx) const {
    DeliveryResult d = delivery.Send([&] { return req; });
    if (!d.auth_error.ok() || !d.response.ok() || d.response->status < 200 ||
        d.response->status >= 300) {
      return Failure(d, ctx);
    }
    json body = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
    if (!body.is_object()) {
      return absl::UnavailableError(
          fmt::format("Databricks answered HTTP {} to {} with a body that is not a JSON object: {}",
                      d.response->status, ctx.what, BodySnippet(d.response->body, 200)));
    }
    return body;
  }

  // The status for a failed API call (already retried).
  absl::Status Failure(const DeliveryResult& d, const CallContext& ctx) const {
    if (!d.auth_error.ok()) return d.auth_error;
    if (!d.response.ok()) {
      const absl::Status& s = d.response.status();
      std::string message = fmt::format(
          "could not reach Databricks at {} to {} {}: {}. Check `host` (or base_url) and the "
          "network",
          cfg_.http.base_url, ctx.what, d.AttemptsText(), s.message());
      return s.code() == absl::StatusCode::kDeadlineExceeded ? absl::DeadlineExceededError(message)
                                                             : absl::UnavailableError(message);
    }
    const HttpResponse& r = *d.response;
    ApiError e = ParseApiError(r);
    std::string said = e.Said();
    std::string attempts = d.attempts > 1 ? " " + d.AttemptsText() : "";
    if (r.status == 429) {
      absl::Status s = absl::ResourceExhaustedError(fmt::format(
          "Databricks rate-limited the request to {} (HTTP 429{}); the run is retried later. "
          "Databricks said: {}",
          ctx.what, attempts, said));
      if (auto ra = r.Header("retry-after")) {
        if (auto wait = ParseRetryAfter(*ra, clock_->Now())) s = WithRetryAfter(s, *wait);
      }
      return s;
    }
    if (r.status >= 500 || RetryableApiReply(r)) {
      return absl::UnavailableError(fmt::format(
          "Databricks failed to {} (HTTP {}{}): a transient server error; the run is retried "
          "later. Databricks said: {}",
          ctx.what, r.status, attempts, said));
    }
    if (r.status == 401) {
      if (cfg_.auth == DatabricksAuth::kOAuthM2M) {
        return absl::UnauthenticatedError(fmt::format(
            "Databricks refused the OAuth token of service principal {} (HTTP 401) even after "
            "minting a new one: check that the service principal is added to this workspace and "
            "enabled, and that host points to the workspace the secret belongs to. Databricks "
            "said: {}",
            cfg_.client_id, said));
      }
      return absl::UnauthenticatedError(fmt::format(
          "Databricks refused the personal access token (HTTP 401): check `token` (expired or "
          "revoked? create one in User Settings > Developer > Access tokens) and that host is the "
          "token's workspace. Databricks said: {}",
          said));
    }
    if (r.status == 403) {
      return absl::PermissionDeniedError(fmt::format(
          "Databricks denied access while trying to {} (HTTP 403): the {} needs access to the "
          "workspace (Databricks SQL access entitlement) and CAN USE on SQL warehouse {}. "
          "Databricks said: {}",
          ctx.what,
          cfg_.auth == DatabricksAuth::kOAuthM2M ? "service principal " + cfg_.client_id
                                                 : "token's user",
          cfg_.warehouse_id, said));
    }
    bool about_warehouse = ContainsNoCase(said, "warehouse");
    if ((r.status == 404 || r.status == 400) && about_warehouse) {
      return absl::FailedPreconditionError(fmt::format(
          "Databricks did not accept warehouse_id \"{}\" (HTTP {}): use the ID shown in SQL "
          "Warehouses > (warehouse) > Connection details (the last part of the HTTP path "
          "/sql/1.0/warehouses/<id>). Databricks said: {}",
          cfg_.warehouse_id, r.status, said));
    }
    if (r.status == 404 && ctx.submit) {
      return absl::FailedPreconditionError(fmt::format(
          "no Statement Execution API at {} (HTTP 404): check `host` (the workspace URL, e.g. "
          "dbc-a1b2c3d4-e5f6.cloud.databricks.com) or base_url. Databricks said: {}",
          cfg_.http.base_url, said));
    }
    if (r.status == 404) {
      return absl::UnavailableError(fmt::format(
          "Databricks no longer knows the statement while trying to {} (HTTP 404): its results "
          "expired or it was closed; the run is retried later. Databricks said: {}",
          ctx.what, said));
    }
    if (r.status == 400) {
      return absl::InvalidArgumentError(
          fmt::format("Databricks rejected the request to {} (HTTP 400): {}", ctx.what, said));
    }
    return absl::FailedPreconditionError(fmt::format(
        "unexpected reply from Databricks to {} (HTTP {}): {}. Check that base_url points to "
        "the workspace",
        ctx.what, r.status, said));
  }

  // The status for a statement that ended FAILED (not retryable here).
  // `state`: a statement of change_detection: warehouse on its own tables
  // (a refused privilege is then not about the model).
  absl::Status StatementFailure(const StatementError& e, const std::string& statement_id,
                                bool state = false) const {
    std::string code = e.error_code.empty() ? "UNKNOWN" : e.error_code;
    if (!e.sql_state.empty()) code += ", SQLSTATE " + e.sql_state;
    std::string said = e.message.empty() ? "(no message)" : e.message;
    const std::string& c = e.error_code;
    if (InlineLimitExceeded(e)) {
      return absl::FailedPreconditionError(fmt::format(
          "the result is larger than Databricks allows inline (25 MiB) ({}): set disposition: "
          "external_links (or auto) on the source. Databricks said: {}",
          code, said));
    }
    if (RetryableErrorCode(c) || c == "INTERNAL_ERROR" || c == "IO_ERROR" || c == "UNKNOWN" ||
        c == "ABORTED" || c == "CANCELLED") {
      return absl::UnavailableError(fmt::format(
          "Databricks statement {} failed ({}): a transient failure; the run is retried later. "
          "Databricks said: {}",
          statement_id, code, said));
    }
    if (c == "RESOURCE_EXHAUSTED") {
      return absl::ResourceExhaustedError(fmt::format(
          "Databricks statement {} failed ({}): a limit of the workspace or warehouse is used "
          "up; the run is retried later. Databricks said: {}",
          statement_id, code, said));
    }
    if (c == "DEADLINE_EXCEEDED") {
      return absl::DeadlineExceededError(fmt::format(
          "Databricks statement {} ran out of time ({}): the warehouse's STATEMENT_TIMEOUT "
          "stopped it; make the model cheaper or raise the timeout. Databricks said: {}",
          statement_id, code, said));
    }
    if (c == "UNAUTHENTICATED") {
      return absl::UnauthenticatedError(
          fmt::format("Databricks statement {} failed ({}): check the credentials. Databricks "
                      "said: {}",
                      statement_id, code, said));
    }
    const bool denied = ContainsNoCase(said, "INSUFFICIENT_PERMISSIONS") ||
                        c == "PERMISSION_DENIED" || e.sql_state == "42501";
    if (denied && state) {
      return absl::PermissionDeniedError(
          fmt::format("Databricks denied the statement ({}): {}", code, said));
    }
    if (denied) {
      return absl::PermissionDeniedError(fmt::format(
          "Databricks denied the query ({}): grant the {} USE CATALOG and USE SCHEMA on the "
          "model's catalog and schema and SELECT on its tables. Databricks said: {}",
          code,
          cfg_.auth == DatabricksAuth::kOAuthM2M ? "service principal " + cfg_.client_id
                                                 : "token's user",
          said));
    }
    bool no_catalog =
        ContainsNoCase(said, "NO_SUCH_CATALOG") || ContainsNoCase(said, "CATALOG_NOT_FOUND");
    if (no_catalog && !cfg_.catalog.empty() && ContainsNoCase(said, cfg_.catalog)) {
      return absl::FailedPreconditionError(fmt::format(
          "catalog \"{}\" does not exist or is not visible ({}): check the source's `catalog` "
          "setting. Databricks said: {}",
          cfg_.catalog, code, said));
    }
    bool no_schema =
        ContainsNoCase(said, "SCHEMA_NOT_FOUND") || ContainsNoCase(said, "NO_SUCH_DATABASE");
    if (no_schema && !cfg_.schema.empty() && ContainsNoCase(said, cfg_.schema)) {
      return absl::FailedPreconditionError(fmt::format(
          "schema \"{}\" does not exist in the catalog or is not visible ({}): check the "
          "source's `schema` setting. Databricks said: {}",
          cfg_.schema, code, said));
    }
    return absl::InvalidArgumentError(
        fmt::format("Databricks rejected the query ({}): {}", code, said));
  }

  // Best effort, one attempt: asks Databricks to stop the statement.
  void Cancel(const std::string& statement_id) const {
    HttpDelivery delivery = NewApiDelivery();
    HttpRequest req = ApiRequest(
        "POST", StatementUrl(statement_id) + "/cancel", "",
        std::min<std::chrono::milliseconds>(cfg_.http.timeout, std::chrono::milliseconds(10'000)));
    delivery.Send([&] { return req; }, /*retry=*/false);
  }

 private:
  const DatabricksConfig cfg_;
  const std::unique_ptr<ClientCredentialsTokenSource> tokens_;
  HttpClient* const http_;
  Clock* const clock_;
  const std::unique_ptr<RateLimiter> limiter_;
};

std::string DispositionName(bool external) { return external ? "EXTERNAL_LINKS" : "INLINE"; }

// The rows of one chunk: a parsed data_array (INLINE) or the downloaded body
// of an external link, scanned row by row.
struct Chunk {
  int64_t index = -1;
  std::optional<int64_t> row_count;
  json inline_rows = json::array();
  size_t next_inline = 0;
  bool scanned = false;
  JsonArrayRowScanner scanner;
  int64_t rows_read = 0;
  // Where the next chunk is, as the reply said.
  std::optional<int64_t> next_index;
  std::string next_link;
};

// One statement: its state, schema and the chunk being read.
class DatabricksRowReader : public RowReader {
 public:
  // `cancel` as in QueryOptions (may be null).
  DatabricksRowReader(DatabricksClient* client, const std::atomic<bool>* cancel)
      : client_(client),
        cancel_(cancel),
        api_(client->NewApiDelivery()),
        download_(client->NewDownloadDelivery()) {}

  // Dropped before its end: cancels the statement.
  ~DatabricksRowReader() override {
    if (!finished_ && !statement_id_.empty()) client_->Cancel(statement_id_);
  }

  const Schema& schema() const override { return schema_; }

  // Submits the statement, waits for it, reads the manifest and chunk 0.
  // `parameters`: the statement's named STRING parameters. `state`: a
  // statement of change_detection: warehouse, which may return no result
  // (DDL: zero rows) and whose privilege refusals name no model grants.
  absl::Status Start(const std::string& sql, std::vector<DatabricksParameter> parameters = {},
                     bool state = false) {
    parameters_ = std::move(parameters);
    state_ = state;
    const DatabricksConfig& cfg = client_->cfg();
    if (sql.size() > kDatabricksMaxStatementBytes) {
      finished_ = true;
      return absl::InvalidArgumentError(fmt::format(
          "the model's SQL is {} bytes; Databricks accepts statements of at most 16 MiB",
          sql.size()));
    }
    external_ = cfg.disposition == DatabricksDisposition::kExternalLinks;
    int resubmits = 0;
    json reply;
    while (true) {
      absl::StatusOr<json> done = Run(sql);
      if (!done.ok()) return done.status();
      reply = *std::move(done);
      std::string state = Upper(TextOf(reply["status"], "state"));
      if (state == "SUCCEEDED") break;
      finished_ = true;  // a terminal statement: nothing to cancel
      if (state == "FAILED") {
        StatementError e = ErrorOf(reply);
        if (!external_ && cfg.disposition == DatabricksDisposition::kAuto &&
            InlineLimitExceeded(e)) {
          external_ = true;  // too big for INLINE: run it again with links
          statement_id_.clear();
          finished_ = false;
          continue;
        }
        if (RetryableErrorCode(e.error_code) && resubmits < cfg.http.retry.max_retries) {
          std::chrono::milliseconds wait = std::min<std::chrono::milliseconds>(
              cfg.http.retry.base_backoff * (int64_t{1} << std::min(resubmits, 10)),
              cfg.http.retry.max_wait);
          ++resubmits;
          client_->clock()->SleepFor(wait);
          statement_id_.clear();
          finished_ = false;
          continue;
        }
        absl::Status s = client_->StatementFailure(e, statement_id_, state_);
        if (resubmits > 0 && RetryableErrorCode(e.error_code)) {
          s = absl::UnavailableError(
              fmt::format("{} (after {} re-submissions)", s.message(), resubmits));
        }
        return s;
      }
      if (state == "CANCELED") {
        return absl::UnavailableError(fmt::format(
            "Databricks statement {} was canceled before it finished (by a user, an admin or "
            "the warehouse stopping); the run is retried later",
            statement_id_));
      }
      if (state == "CLOSED") {
        return absl::UnavailableError(fmt::format(
            "Databricks statement {} is CLOSED: its results were released before they were "
            "read; the run is retried later",
            statement_id_));
      }
      return absl::InternalError(
          fmt::format("Databricks statement {} is in unknown state \"{}\"", statement_id_, state));
    }
    absl::Status taken = TakeManifest(std::move(reply));
    if (!taken.ok()) return Fail(taken);
    return absl::OkStatus();
  }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!error_.ok()) return error_;
    if (finished_ && done_) return false;
    int empty = 0;
    while (true) {
      absl::StatusOr<bool> got = NextCellRow();
      if (!got.ok()) return Fail(got.status());
      if (*got) break;
      // The chunk is used up.
      if (chunk_.row_count && chunk_.rows_read != *chunk_.row_count) {
        return Fail(absl::DataLossError(fmt::format(
            "chunk {} of Databricks statement {} held {} rows but said {}: the result was cut "
            "short; the run is retried later",
            chunk_.index, statement_id_, chunk_.rows_read, *chunk_.row_count)));
      }
      std::optional<int64_t> next = chunk_.next_index;
      std::string link = chunk_.next_link;
      if (!next && link.empty() && chunk_.index + 1 < total_chunks_) next = chunk_.index + 1;
      if (!next && link.empty()) {
        if (total_rows_ && delivered_ != *total_rows_) {
          return Fail(absl::DataLossError(fmt::format(
              "Databricks statement {} reported {} rows but its chunks held {}: the result was "
              "cut short; the run is retried later",
              statement_id_, *total_rows_, delivered_)));
        }
        finished_ = true;
        done_ = true;
        return false;
      }
      if (++empty > kMaxEmptyChunks) {
        return Fail(absl::DataLossError(fmt::format(
            "Databricks statement {} returned {} empty chunks in a row", statement_id_, empty)));
      }
      if (QueryCancelRequested(cancel_)) return Fail(Cancelled());
      absl::Status fetched = FetchChunk(next, link);
      if (!fetched.ok()) return Fail(fetched);
    }
    row.resize(columns_.size());
    for (size_t i = 0; i < columns_.size(); ++i) {
      absl::StatusOr<Value> v = DecodeDatabricksCell(columns_[i], cells_[i]);
      if (!v.ok()) return Fail(v.status());
      row[i] = *std::move(v);
    }
    ++delivered_;
    return true;
  }

 private:
  absl::Status Fail(absl::Status status) {
    error_ = status;
    if (!finished_ && !statement_id_.empty()) client_->Cancel(statement_id_);
    finished_ = true;
    return status;
  }

  static bool HasColumns(const json& reply) {
    auto manifest = reply.find("manifest");
    if (manifest == reply.end() || !manifest->is_object()) return false;
    auto schema = manifest->find("schema");
    if (schema == manifest->end() || !schema->is_object()) return false;
    auto columns = schema->find("columns");
    return columns != schema->end() && columns->is_array() && !columns->empty();
  }

  static StatementError ErrorOf(const json& reply) {
    StatementError e;
    const json& status = reply.contains("status") ? reply["status"] : json();
    const json& error = status.is_object() && status.contains("error") ? status["error"] : json();
    e.error_code = TextOf(error, "error_code");
    e.message = TextOf(error, "message");
    e.sql_state = TextOf(status, "sql_state");
    if (e.sql_state.empty()) e.sql_state = TextOf(error, "sql_state");
    return e;
  }

  // After a cancel request: Fail() sends the statement's cancel.
  absl::Status Cancelled() const {
    return QueryCancelledError(fmt::format("Databricks statement {}", statement_id_));
  }

  // Submits and polls until the statement is terminal; the last reply.
  absl::StatusOr<json> Run(const std::string& sql) {
    const DatabricksConfig& cfg = client_->cfg();
    Clock* clock = client_->clock();
    if (QueryCancelRequested(cancel_)) {
      finished_ = true;  // no statement to cancel
      return absl::CancelledError(
          "the run was cancelled before the Databricks statement was submitted");
    }
    json request = {{"statement", sql},
                    {"warehouse_id", cfg.warehouse_id},
                    {"wait_timeout", fmt::format("{}s", cfg.wait_timeout_s)},
                    {"on_wait_timeout", "CONTINUE"},
                    {"disposition", DispositionName(external_)},
                    {"format", "JSON_ARRAY"}};
    if (!cfg.catalog.empty()) request["catalog"] = cfg.catalog;
    if (!cfg.schema.empty()) request["schema"] = cfg.schema;
    if (!parameters_.empty()) {
      json list = json::array();
      for (const DatabricksParameter& p : parameters_) {
        list.push_back({{"name", p.name}, {"value", p.value}, {"type", "STRING"}});
      }
      request["parameters"] = std::move(list);
    }
    Clock::TimePoint started = clock->Now();
    std::chrono::milliseconds timeout = std::max<std::chrono::milliseconds>(
        cfg.http.timeout, std::chrono::milliseconds(cfg.wait_timeout_s * 1000 + kSubmitSlackMs));
    HttpRequest submit =
        client_->ApiRequest("POST", client_->StatementsUrl() + "/", Dump(request), timeout);
    submit.idempotent = false;  // never sent twice by the transport itself
    absl::StatusOr<json> reply = client_->Call(api_, submit, {"run the query", true});
    if (!reply.ok()) {
      finished_ = true;  // no statement to cancel
      return reply.status();
    }
    statement_id_ = TextOf(*reply, "statement_id");
    finished_ = false;
    std::chrono::milliseconds wait = cfg.poll_initial;
    while (true) {
      std::string state = Upper(TextOf((*reply)["status"], "state"));
      if (state != "PENDING" && state != "RUNNING") return reply;
      if (statement_id_.empty()) {
        finished_ = true;
        return absl::InternalError(
            fmt::format("Databricks answered state {} without a statement_id to poll", state));
      }
      if (QueryCancelRequested(cancel_)) return Fail(Cancelled());
      if (cfg.query_timeout_s > 0 &&
          clock->Now() - started >= std::chrono::seconds(cfg.query_timeout_s)) {
        return Fail(absl::DeadlineExceededError(fmt::format(
            "Databricks statement {} was still {} after query_timeout_s ({} s); it was "
            "cancelled: raise query_timeout_s, make the model cheaper or use a larger warehouse",
            statement_id_, state, cfg.query_timeout_s)));
      }
      clock->SleepFor(wait);
      wait = std::min(wait * 2, cfg.poll_max);
      if (QueryCancelRequested(cancel_)) return Fail(Cancelled());
      HttpRequest poll =
          client_->ApiRequest("GET", client_->StatementUrl(statement_id_), "", cfg.http.timeout);
      reply = client_->Call(api_, poll, {"check the status of statement " + statement_id_});
      if (!reply.ok()) return Fail(reply.status());
    }
  }

  absl::Status TakeManifest(json reply) {
    auto manifest = reply.find("manifest");
    if (state_ && !HasColumns(reply)) {  // DDL: no result
      finished_ = true;
      done_ = true;
      return absl::OkStatus();
    }
    if (manifest == reply.end() || !manifest->is_object()) {
      return Fail(absl::InvalidArgumentError(fmt::format(
          "Databricks statement {} returned no result set (no manifest): a model must be a "
          "query that returns rows",
          statement_id_)));
    }
    std::string format = Upper(TextOf(*manifest, "format"));
    if (!format.empty() && format != "JSON_ARRAY") {
      return Fail(absl::DataLossError(
          fmt::format("Databricks sent results as {} instead of JSON_ARRAY", format)));
    }
    const json* cols = nullptr;
    if (auto schema = manifest->find("schema"); schema != manifest->end() && schema->is_object()) {
      if (auto c = schema->find("columns"); c != schema->end() && c->is_array()) cols = &*c;
    }
    if (cols != nullptr) {
      std::vector<std::pair<int64_t, json>> ordered;
      for (const json& c : *cols) {
        ordered.emplace_back(IntOf(c, "position").value_or(static_cast<int64_t>(ordered.size())),
                             c);
      }
      std::stable_sort(ordered.begin(), ordered.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      for (const auto& [position, c] : ordered) {
        absl::StatusOr<DatabricksColumnType> column = ParseDatabricksColumn(c);
        if (!column.ok()) return Fail(column.status());
        schema_.push_back(column->column);
        columns_.push_back(*std::move(column));
      }
    }
    if (columns_.empty()) {
      return Fail(absl::InvalidArgumentError(fmt::format(
          "Databricks statement {} returned no columns: a model must be a query that returns "
          "rows",
          statement_id_)));
    }
    if (manifest->value("truncated", false)) {
      return Fail(absl::FailedPreconditionError(fmt::format(
          "Databricks truncated the result of statement {} (manifest.truncated): the rows would "
          "not be the whole model. Results over 100 GiB are cut; make the model smaller",
          statement_id_)));
    }
    total_rows_ = IntOf(*manifest, "total_row_count");
    total_chunks_ = IntOf(*manifest, "total_chunk_count").value_or(0);
    if (auto chunks = manifest->find("chunks"); chunks != manifest->end() && chunks->is_array()) {
      for (const json& c : *chunks) {
        std::optional<int64_t> index = IntOf(c, "chunk_index");
        std::optional<int64_t> rows = IntOf(c, "row_count");
        if (index && rows) manifest_rows_.emplace_back(*index, *rows);
      }
    }
    auto result = reply.find("result");
    if (result != reply.end() && result->is_object() && !result->empty()) {
      return TakeResult(*std::move(result), 0);
    }
    // No rows in the reply: chunk 0 is fetched when there is one.
    chunk_ = Chunk();
    chunk_.index = -1;
    return absl::OkStatus();
  }

  std::optional<int64_t> ManifestRowCount(int64_t index) const {
    for (const auto& [i, rows] : manifest_rows_) {
      if (i == index) return rows;
    }
    return std::nullopt;
  }

  // Takes a ResultData (a status reply's "result" or a chunk reply) for
  // chunk `expected`.
  absl::Status TakeResult(json result, int64_t expected) {
    chunk_ = Chunk();  // releases the previous chunk
    auto links = result.find("external_links");
    if (links != result.end() && links->is_array() && !links->empty()) {
      if (links->size() != 1) {
        // Databricks sends one link per reply today; more would be read in order.
        return absl::DataLossError(fmt::format(
            "Databricks sent {} external links in one reply; expected one", links->size()));
      }
      json link = std::move((*links)[0]);
      chunk_.index = IntOf(link, "chunk_index").value_or(expected);
      if (chunk_.index != expected) return WrongChunk(expected, chunk_.index);
      chunk_.row_count = IntOf(link, "row_count");
      chunk_.next_index = IntOf(link, "next_chunk_index");
      chunk_.next_link = TextOf(link, "next_chunk_internal_link");
      BACKFLOW_ASSIGN_OR_RETURN(std::string body, Download(std::move(link), chunk_.index));
      chunk_.scanner = JsonArrayRowScanner(std::move(body));
      chunk_.scanned = true;
    } else {
      chunk_.index = IntOf(result, "chunk_index").value_or(expected);
      if (chunk_.index != expected) return WrongChunk(expected, chunk_.index);
      chunk_.row_count = IntOf(result, "row_count");
      if (auto data = result.find("data_array"); data != result.end()) {
        if (!data->is_array()) {
          return absl::DataLossError("Databricks sent a data_array that is not an array");
        }
        chunk_.inline_rows = std::move(*data);
      } else if (chunk_.row_count.value_or(0) > 0) {
        return absl::DataLossError(fmt::format(
            "Databricks sent chunk {} of statement {} with {} rows but neither data_array nor "
            "external_links",
            chunk_.index, statement_id_, *chunk_.row_count));
      }
    }
    if (!chunk_.next_index) chunk_.next_index = IntOf(result, "next_chunk_index");
    if (chunk_.next_link.empty()) chunk_.next_link = TextOf(result, "next_chunk_internal_link");
    if (!chunk_.row_count) chunk_.row_count = ManifestRowCount(chunk_.index);
    return absl::OkStatus();
  }

  absl::Status WrongChunk(int64_t expected, int64_t got) const {
    return absl::DataLossError(
        fmt::format("Databricks sent chunk {} of statement {} when chunk {} was asked for", got,
                    statement_id_, expected));
  }

  // The next row's cells into cells_; false when the chunk is used up.
  absl::StatusOr<bool> NextCellRow() {
    if (chunk_.index < 0) return false;
    if (chunk_.scanned) {
      BACKFLOW_ASSIGN_OR_RETURN(bool more, chunk_.scanner.Next(cells_));
      if (!more) return false;
    } else {
      if (chunk_.next_inline >= chunk_.inline_rows.size()) return false;
      cells_ = std::move(chunk_.inline_rows[chunk_.next_inline++]);
    }
    ++chunk_.rows_read;
    if (!cells_.is_array() || cells_.size() != columns_.size()) {
      return absl::DataLossError(
          fmt::format("Databricks sent a row that does not match the schema's {} columns: {}",
                      columns_.size(), BodySnippet(Dump(cells_), 200)));
    }
    return true;
  }

  // GETs chunk `index` (or follows `link`, an absolute path).
  absl::StatusOr<json> GetChunk(std::optional<int64_t> index, const std::string& link) {
    const DatabricksConfig& cfg = client_->cfg();
    std::string url;
    if (!link.empty() && link[0] == '/') {
      url = cfg.http.base_url + link;
    } else {
      url = fmt::format("{}/result/chunks/{}", client_->StatementUrl(statement_id_),
                        index.value_or(0));
    }
    HttpRequest req = client_->ApiRequest("GET", url, "", cfg.http.timeout);
    return client_->Call(api_, req,
                         {fmt::format("fetch chunk {} of statement {}",
                                      index ? std::to_string(*index) : link, statement_id_)});
  }

  absl::Status FetchChunk(std::optional<int64_t> index, const std::string& link) {
    int64_t expected = index.value_or(chunk_.index + 1);
    BACKFLOW_ASSIGN_OR_RETURN(json reply, GetChunk(index, link));
    // A chunk reply is a bare ResultData; tolerate one wrapped in "result".
    if (auto inner = reply.find("result"); inner != reply.end() && inner->is_object()) {
      json result = std::move(*inner);
      reply = std::move(result);
    }
    return TakeResult(std::move(reply), expected);
  }

  // Downloads an external link's body: exactly its http_headers, no
  // Authorization; a link about to expire, or refused by the storage, is
  // replaced by a fresh one.
  absl::StatusOr<std::string> Download(json link, int64_t index) {
    const DatabricksConfig& cfg = client_->cfg();
    Clock* clock = client_->clock();
    int refreshes = 0;
    std::string last_error;
    while (true) {
      std::string url = TextOf(link, "external_link");
      if (url.empty()) {
        return absl::DataLossError(fmt::format(
            "Databricks sent an external link without a URL for chunk {} of statement {}", index,
            statement_id_));
      }
      std::optional<Clock::TimePoint> expires;
      if (std::string exp = TextOf(link, "expiration"); !exp.empty()) {
        absl::StatusOr<std::string> iso = DatabricksTimestampText(exp);
        std::optional<ParsedTimestamp> t = iso.ok() ? ParseTimestamp(*iso) : std::nullopt;
        if (t) {
          expires = Clock::TimePoint(std::chrono::seconds(t->days * 86'400 + t->seconds));
        }
      }
      bool stale = expires && clock->Now() + cfg.link_refresh_margin >= *expires;
      if (!stale) {
        HttpRequest req;
        req.method = "GET";
        req.url = url;
        req.timeout = cfg.http.timeout;
        if (auto headers = link.find("http_headers");
            headers != link.end() && headers->is_object()) {
          for (const auto& [name, value] : headers->items()) {
            if (value.is_string()) req.headers.emplace_back(name, value.get<std::string>());
          }
        }
        DeliveryResult d = download_.Send([&] { return req; });
        if (d.response.ok() && d.response->status >= 200 && d.response->status < 300) {
          return std::move(d.response->body);
        }
        if (!d.response.ok()) {
          const absl::Status& s = d.response.status();
          std::string message = fmt::format(
              "could not download chunk {} of Databricks statement {} from cloud storage {}: {}. "
              "Check that this machine can reach the workspace's storage (firewall, private "
              "link), or set disposition: inline for results under 25 MiB",
              index, statement_id_, d.AttemptsText(), s.message());
          return s.code() == absl::StatusCode::kDeadlineExceeded
                     ? absl::DeadlineExceededError(message)
                     : absl::UnavailableError(message);
        }
        int status = d.response->status;
        last_error = StorageErrorText(*d.response);
        if (status != 400 && status != 401 && status != 403 && status != 404) {
          return absl::UnavailableError(fmt::format(
              "cloud storage failed to serve chunk {} of Databricks statement {} ({}{}); the run "
              "is retried later",
              index, statement_id_, last_error, d.attempts > 1 ? ", " + d.AttemptsText() : ""));
        }
      }
      if (refreshes >= cfg.max_link_refreshes) {
        return absl::FailedPreconditionError(fmt::format(
            "cloud storage refused chunk {} of Databricks statement {} even after {} fresh "
            "links ({}): check that this machine can reach the workspace's storage (firewall, "
            "private link, clock skew), or set disposition: inline for results under 25 MiB",
            index, statement_id_, refreshes,
            last_error.empty() ? "the links expired before they could be used" : last_error));
      }
      ++refreshes;
      BACKFLOW_ASSIGN_OR_RETURN(json fresh, GetChunk(index, ""));
      if (auto inner = fresh.find("result"); inner != fresh.end() && inner->is_object()) {
        json result = std::move(*inner);
        fresh = std::move(result);
      }
      auto links = fresh.find("external_links");
      if (links == fresh.end() || !links->is_array() || links->empty()) {
        return absl::DataLossError(fmt::format(
            "Databricks sent no external link when chunk {} of statement {} was asked for again",
            index, statement_id_));
      }
      link = std::move((*links)[0]);
      if (IntOf(link, "chunk_index").value_or(index) != index) {
        return WrongChunk(index, IntOf(link, "chunk_index").value_or(-1));
      }
    }
  }

  DatabricksClient* client_;
  const std::atomic<bool>* const cancel_;
  HttpDelivery api_;
  HttpDelivery download_;
  bool external_ = false;
  std::string statement_id_;
  Schema schema_;
  std::vector<DatabricksColumnType> columns_;
  std::optional<int64_t> total_rows_;
  int64_t total_chunks_ = 0;
  std::vector<std::pair<int64_t, int64_t>> manifest_rows_;  // chunk index -> rows
  Chunk chunk_;
  json cells_;
  int64_t delivered_ = 0;
  std::vector<DatabricksParameter> parameters_;
  bool state_ = false;
  bool finished_ = false;  // clean end, failure, or nothing to cancel
  bool done_ = false;      // clean end
  absl::Status error_;
};

class DatabricksSource : public Source {
 public:
  explicit DatabricksSource(std::unique_ptr<DatabricksClient> client)
      : client_(std::move(client)) {}

  WarehouseChangeDetection* warehouse_change_detection() override {
    if (change_detection_ == nullptr) {
      DatabricksClient* client = client_.get();
      auto sql = NewDatabricksWarehouseSql(
          [client](const std::string& statement, const std::vector<DatabricksParameter>& parameters,
                   const std::atomic<bool>* cancel) -> absl::StatusOr<std::unique_ptr<RowReader>> {
            auto reader = std::make_unique<DatabricksRowReader>(client, cancel);
            BACKFLOW_RETURN_IF_ERROR(reader->Start(statement, parameters, /*state=*/true));
            return std::unique_ptr<RowReader>(std::move(reader));
          });
      PassChangeDetectionOptions options;
      options.state_schema = client_->cfg().state_schema;
      options.clock = client_->clock();
      change_detection_ = NewPassChangeDetection(std::move(sql), std::move(options));
    }
    return change_detection_.get();
  }

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(
        auto reader,
        Run("SELECT current_user() AS backflow_user, current_catalog() AS backflow_catalog, "
            "current_schema() AS backflow_schema"));
    Row row;
    std::vector<Row> rows;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool more, reader->Next(row));
      if (!more) break;
      rows.push_back(row);
    }
    if (rows.size() != 1 || rows[0].size() != 3) {
      return absl::InternalError(
          fmt::format("Databricks returned {} rows for the connection check", rows.size()));
    }
    const DatabricksConfig& cfg = client_->cfg();
    auto differs = [](const Value& v, const std::string& want) {
      return !want.empty() && Lower(v.ToString()) != Lower(want);
    };
    if (differs(rows[0][1], cfg.catalog)) {
      return absl::FailedPreconditionError(
          fmt::format("the statements run in catalog \"{}\", not the configured \"{}\": check "
                      "`catalog`",
                      rows[0][1].ToString(), cfg.catalog));
    }
    if (differs(rows[0][2], cfg.schema)) {
      return absl::FailedPreconditionError(
          fmt::format("the statements run in schema \"{}\", not the configured \"{}\": check "
                      "`schema`",
                      rows[0][2].ToString(), cfg.schema));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    return Query(sql, QueryOptions{});
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql,
                                                   const QueryOptions& options) override {
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, Run(TrimModelSql(sql), options.cancel));
    return std::unique_ptr<RowReader>(std::move(reader));
  }

 private:
  absl::StatusOr<std::unique_ptr<DatabricksRowReader>> Run(
      const std::string& sql, const std::atomic<bool>* cancel = nullptr) {
    auto reader = std::make_unique<DatabricksRowReader>(client_.get(), cancel);
    BACKFLOW_RETURN_IF_ERROR(reader->Start(sql));
    return reader;
  }

  // Declared after client_, which its statements use: destroyed first.
  std::unique_ptr<DatabricksClient> client_;
  std::unique_ptr<WarehouseChangeDetection> change_detection_;
};

}  // namespace

absl::StatusOr<DatabricksConfig> ParseDatabricksSettings(const json& settings) {
  if (!settings.is_object()) {
    return absl::InvalidArgumentError("databricks settings must be a map");
  }
  auto text = [&](const char* name) -> std::string {
    auto it = settings.find(name);
    return it != settings.end() && it->is_string() ? it->get<std::string>() : "";
  };
  auto integer = [&](const char* name, int64_t def, int64_t min,
                     int64_t max) -> absl::StatusOr<int64_t> {
    auto it = settings.find(name);
    if (it == settings.end() || it->is_null()) return def;
    if (!it->is_number_integer() || it->get<int64_t>() < min || it->get<int64_t>() > max) {
      return absl::InvalidArgumentError(
          fmt::format("{}: must be a whole number from {} to {}", name, min, max));
    }
    return it->get<int64_t>();
  };
  DatabricksConfig c;
  c.host = text("host");
  c.warehouse_id = text("warehouse_id");
  c.catalog = text("catalog");
  c.schema = text("schema");
  c.token = text("token");
  c.client_id = text("client_id");
  c.client_secret = text("client_secret");
  if (c.warehouse_id.empty()) {
    return absl::InvalidArgumentError(
        "warehouse_id: required; the SQL warehouse's ID (SQL Warehouses > the warehouse > "
        "Connection details: the last part of /sql/1.0/warehouses/<id>)");
  }
  bool oauth = !c.client_id.empty() || !c.client_secret.empty();
  if (!c.token.empty() && oauth) {
    return absl::InvalidArgumentError(
        "token: set either token (a personal access token) or client_id + client_secret (OAuth "
        "M2M for a service principal), not both");
  }
  if (oauth && (c.client_id.empty() || c.client_secret.empty())) {
    return absl::InvalidArgumentError(
        fmt::format("{}: OAuth M2M needs both client_id and client_secret (the service principal's "
                    "application ID and an OAuth secret generated for it)",
                    c.client_id.empty() ? "client_id" : "client_secret"));
  }
  if (c.token.empty() && !oauth) {
    return absl::InvalidArgumentError(
        "token: no credentials; set token to a personal access token (e.g. "
        "${env:DATABRICKS_TOKEN}) "
        "or client_id + client_secret for a service principal (OAuth M2M)");
  }
  c.auth = oauth ? DatabricksAuth::kOAuthM2M : DatabricksAuth::kPersonalAccessToken;
  std::string disposition = Lower(text("disposition"));
  if (disposition.empty() || disposition == "auto") {
    c.disposition = DatabricksDisposition::kAuto;
  } else if (disposition == "inline") {
    c.disposition = DatabricksDisposition::kInline;
  } else if (disposition == "external_links") {
    c.disposition = DatabricksDisposition::kExternalLinks;
  } else {
    return absl::InvalidArgumentError(fmt::format(
        "disposition: must be auto, inline or external_links, got \"{}\"", disposition));
  }
  BACKFLOW_ASSIGN_OR_RETURN(c.wait_timeout_s, integer("wait_timeout_s", 10, 0, 50));
  if (c.wait_timeout_s > 0 && c.wait_timeout_s < 5) {
    return absl::InvalidArgumentError(
        "wait_timeout_s: must be 0 (answer at once, then poll) or from 5 to 50");
  }
  BACKFLOW_ASSIGN_OR_RETURN(c.query_timeout_s, integer("query_timeout_s", 3600, 0, 48 * 3600));
  BACKFLOW_ASSIGN_OR_RETURN(int64_t refreshes, integer("max_link_refreshes", 3, 0, 100));
  c.max_link_refreshes = static_cast<int>(refreshes);
  if (auto it = settings.find("state_schema"); it != settings.end() && !it->is_null()) {
    if (!it->is_string() || !IsPlainSqlIdentifier(it->get<std::string>()) ||
        it->get<std::string>().find('$') != std::string::npos) {
      return absl::InvalidArgumentError(
          "state_schema: must be a plain schema name (letters, digits and '_'; not starting "
          "with a digit), e.g. backflow_state");
    }
    c.state_schema = it->get<std::string>();
  }

  json http = settings;
  if (text("base_url").empty()) {
    if (c.host.empty()) {
      return absl::InvalidArgumentError(
          "host: required; the workspace URL, e.g. dbc-a1b2c3d4-e5f6.cloud.databricks.com or "
          "adb-1234567890123456.7.azuredatabricks.net");
    }
    http["base_url"] = DatabricksDefaultBaseUrl(c.host);
  }
  if (!http.contains("timeout_ms") || http["timeout_ms"].is_null()) {
    http["timeout_ms"] = kDefaultTimeoutMs;
  }
  if (!http.contains("max_retries") || http["max_retries"].is_null()) {
    http["max_retries"] = kDefaultMaxRetries;
  }
  BACKFLOW_ASSIGN_OR_RETURN(c.http, ParseHttpSettings(http));
  c.token_url = text("token_url");
  if (c.token_url.empty()) c.token_url = c.http.base_url + kDatabricksTokenPath;
  return c;
}

absl::StatusOr<std::unique_ptr<Source>> NewDatabricksSource(DatabricksConfig config,
                                                            const ConnectorEnv& env) {
  if (env.http == nullptr) {
    return absl::InternalError("databricks source needs an HTTP client (ConnectorEnv.http)");
  }
  Clock* clock = env.clock != nullptr ? env.clock : &SystemClock();
  std::unique_ptr<ClientCredentialsTokenSource> tokens;
  if (config.auth == DatabricksAuth::kOAuthM2M) {
    ClientCredentialsConfig cc;
    cc.vendor = "Databricks";
    cc.token_url = config.token_url;
    cc.client_id = config.client_id;
    cc.client_secret = config.client_secret;
    cc.scope = kDatabricksOAuthScope;
    cc.client_auth = ClientAuthMethod::kBasic;
    cc.expiry_margin = std::chrono::seconds(300);
    cc.timeout = config.http.timeout;
    cc.max_retries = config.http.retry.max_retries;
    cc.hint = fmt::format(
        "Check client_id (the service principal's application ID) and client_secret (an OAuth "
        "secret of that service principal, not a personal access token), and that token_url ({}) "
        "is the workspace's /oidc/v1/token",
        config.token_url);
    BACKFLOW_ASSIGN_OR_RETURN(tokens,
                              ClientCredentialsTokenSource::Create(std::move(cc), env.http, clock));
  }
  return std::unique_ptr<Source>(std::make_unique<DatabricksSource>(
      std::make_unique<DatabricksClient>(std::move(config), std::move(tokens), env.http, clock)));
}

SourceDefinition DatabricksSourceDefinition() {
  SourceDefinition def;
  def.type = "databricks";
  def.title = "Databricks SQL";
  def.description =
      "Runs model SQL on a Databricks SQL warehouse through the SQL Statement Execution API "
      "2.0 (JSON_ARRAY results) as a user with a personal access token or as a service "
      "principal with OAuth M2M, and streams the result one chunk at a time: inline in the API "
      "replies, or downloaded from presigned cloud-storage links (EXTERNAL_LINKS, never sent "
      "the token; expired links are refreshed) for results over 25 MiB. BIGINT/INT stay 64-bit "
      "integers, DECIMAL exact decimals, TIMESTAMP ISO-8601 UTC timestamps (TIMESTAMP_NTZ "
      "without zone), DATE dates, BINARY bytes, and ARRAY/MAP/STRUCT/VARIANT JSON (use "
      "to_json(col) for strict JSON: warehouses render some nested values, e.g. arrays of "
      "dates, without quotes, which arrive as JSON strings). Rate limits (429) and 503s are "
      "retried with backoff; a query abandoned before its end is cancelled. The user or "
      "service principal needs CAN USE on the warehouse and USE CATALOG, USE SCHEMA and SELECT "
      "on what the models read.";
  def.maturity = "beta";

  def.settings.push_back(MakeSetting(
      "host", "Workspace host",
      "The workspace URL or host, e.g. dbc-a1b2c3d4-e5f6.cloud.databricks.com (AWS), "
      "adb-1234567890123456.7.azuredatabricks.net (Azure) or 1234567890123456.7.gcp.databricks."
      "com (GCP). The API address is https://<host> unless base_url is set."));
  SettingSpec warehouse =
      MakeSetting("warehouse_id", "SQL warehouse ID",
                  "The SQL warehouse that runs the queries: SQL Warehouses > the warehouse > "
                  "Connection details, the last part of the HTTP path /sql/1.0/warehouses/<id> "
                  "(quote it in YAML when it is all digits). A stopped warehouse is started by the "
                  "first query (it waits while PENDING).");
  warehouse.required = true;
  def.settings.push_back(warehouse);
  def.settings.push_back(MakeSetting("catalog", "Catalog",
                                     "Default catalog for unqualified names (like USE CATALOG); "
                                     "the workspace default when empty."));
  def.settings.push_back(MakeSetting("schema", "Schema",
                                     "Default schema for unqualified names (like USE SCHEMA); "
                                     "`default` when empty."));
  SettingSpec token =
      MakeSetting("token", "Personal access token",
                  "A personal access token (dapi...) of the user the queries run as, e.g. "
                  "${env:DATABRICKS_TOKEN}. Set this or client_id + client_secret.");
  token.secret = true;
  def.settings.push_back(token);
  def.settings.push_back(MakeSetting("client_id", "OAuth client ID",
                                     "OAuth M2M: the service principal's application ID (a UUID). "
                                     "Set with client_secret instead of token."));
  SettingSpec secret =
      MakeSetting("client_secret", "OAuth client secret",
                  "OAuth M2M: an OAuth secret generated for the service principal, "
                  "e.g. ${env:DATABRICKS_CLIENT_SECRET}.");
  secret.secret = true;
  def.settings.push_back(secret);
  def.settings.push_back(MakeSetting("token_url", "OAuth token URL",
                                     "OAuth M2M: where the client credentials are exchanged for an "
                                     "access token (scope all-apis). Default: "
                                     "{base_url}/oidc/v1/token, the workspace's endpoint."));
  SettingSpec disposition = MakeSetting(
      "disposition", "Result disposition",
      "How rows come back. inline: in the API replies (the whole result must be under 25 "
      "MiB, else Databricks fails the query). external_links: downloaded from presigned "
      "cloud-storage URLs (any size; this machine must reach the workspace's storage). "
      "auto: inline, and when Databricks refuses a result over 25 MiB the query is run "
      "again with external links (use external_links for large models to avoid running "
      "them twice).",
      SettingType::kEnum);
  disposition.allowed_values = {"auto", "inline", "external_links"};
  disposition.default_value = "auto";
  def.settings.push_back(disposition);
  def.settings.push_back(
      MakeSetting("wait_timeout_s", "Wait timeout (s)",
                  "How long Databricks holds the first reply while the query runs "
                  "(wait_timeout; 0, or 5 to 50); a query still running is then "
                  "polled (on_wait_timeout CONTINUE).",
                  SettingType::kInteger, 10));
  def.settings.push_back(
      MakeSetting("query_timeout_s", "Query timeout (s)",
                  "How long a query may stay PENDING/RUNNING before it is cancelled; 0 means no "
                  "limit (the warehouse's STATEMENT_TIMEOUT still applies).",
                  SettingType::kInteger, 3600));
  def.settings.push_back(
      MakeSetting("max_link_refreshes", "Max link refreshes",
                  "External links: how many fresh links to ask for per chunk when the storage "
                  "refuses one (links expire after at most 15 minutes).",
                  SettingType::kInteger, 3));
  def.settings.push_back(MakeSetting(
      "state_schema", "State schema",
      "For models with change_detection: warehouse: the schema, in the statements' catalog "
      "(`catalog`, else the workspace default), where Backflow keeps what each mapping last "
      "delivered (Delta table CHECKPOINTS) and the tables of running passes (dropped when a "
      "pass ends). Created when missing; the user or service principal needs USE CATALOG and "
      "CREATE SCHEMA on the catalog, or USE SCHEMA, CREATE TABLE, SELECT and MODIFY on this "
      "schema.",
      SettingType::kString, "backflow_state"));
  def.warehouse_change_detection = true;

  SettingSpec base = MakeSetting("base_url", "Base URL",
                                 "The workspace API's address. Default: https://<host>. Set it for "
                                 "a proxy or a test server.");
  def.settings.push_back(base);
  def.settings.push_back(
      MakeSetting("timeout_ms", "Timeout (ms)",
                  "How long to wait for each reply before retrying (the first request of a query "
                  "waits at least wait_timeout_s + 10 s).",
                  SettingType::kInteger, kDefaultTimeoutMs));
  def.settings.push_back(
      MakeSetting("max_retries", "Max retries",
                  "Retries per request after 429, 5xx and connection errors, and "
                  "re-submissions of a query that failed with "
                  "TEMPORARILY_UNAVAILABLE.",
                  SettingType::kInteger, kDefaultMaxRetries));
  def.settings.push_back(MakeSetting("max_retry_wait_s", "Max retry wait (s)",
                                     "Upper bound on any single wait between retries.",
                                     SettingType::kInteger, 300));

  def.create = [](const json& settings,
                  const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Source>> {
    BACKFLOW_ASSIGN_OR_RETURN(DatabricksConfig config, ParseDatabricksSettings(settings));
    return NewDatabricksSource(std::move(config), env);
  };
  return def;
}

}  // namespace backflow
