#include "backflow/sources/bigquery/bigquery_source.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "backflow/common/civil_date.h"
#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/common/json_writer.h"
#include "backflow/common/numbers.h"
#include "backflow/common/status_macros.h"
#include "backflow/common/url.h"
#include "backflow/delivery/google_service_account.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/delivery/rate_limiter.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr int64_t kDefaultMaxResults = 10'000;
constexpr int64_t kMaxMaxResults = 100'000;
constexpr int64_t kDefaultTimeoutMs = 60'000;
constexpr int kDefaultMaxRetries = 5;
constexpr int64_t kDefaultQueryTimeoutS = 3600;
// The server-side wait of one jobs.query / getQueryResults call (BigQuery's
// default; it answers by ~200 s whatever is asked).
constexpr int64_t kMaxServerWaitMs = 10'000;
// Micros of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z.
constexpr int64_t kMinMicros = -62'135'596'800'000'000;
constexpr int64_t kMaxMicros = 253'402'300'799'999'999;
constexpr int64_t kMaxSafeJsonInteger = int64_t{1} << 53;
// Consecutive empty pages that still carry a pageToken before giving up.
constexpr int kMaxEmptyPages = 100;

std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// ------------------------------------------------------------------ numbers

// A decimal number in text: sign, digits without leading zeros, and the power
// of ten they are scaled by (value = digits * 10^exponent).
struct DecimalText {
  bool negative = false;
  std::string digits;  // empty for zero
  int64_t exponent = 0;
};

// Parses [-+]digits[.digits][(e|E)[-+]digits], also ".5" and "5.".
std::optional<DecimalText> ParseDecimal(std::string_view s) {
  DecimalText out;
  size_t i = 0;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) out.negative = s[i++] == '-';
  bool any_digit = false;
  int64_t fraction_digits = 0;
  bool in_fraction = false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (IsDigit(c)) {
      any_digit = true;
      if (!(out.digits.empty() && c == '0')) out.digits.push_back(c);
      if (in_fraction) ++fraction_digits;
      if (out.digits.size() > 200) return std::nullopt;
    } else if (c == '.' && !in_fraction) {
      in_fraction = true;
    } else {
      break;
    }
  }
  if (!any_digit) return std::nullopt;
  int64_t exp = 0;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool neg_exp = false;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) neg_exp = s[i++] == '-';
    if (i >= s.size()) return std::nullopt;
    for (; i < s.size(); ++i) {
      if (!IsDigit(s[i])) return std::nullopt;
      exp = exp * 10 + (s[i] - '0');
      if (exp > 100'000) return std::nullopt;
    }
    if (neg_exp) exp = -exp;
  }
  if (i != s.size()) return std::nullopt;
  out.exponent = exp - fraction_digits;
  // Trailing zeros of the digits move into the exponent.
  while (!out.digits.empty() && out.digits.back() == '0') {
    out.digits.pop_back();
    ++out.exponent;
  }
  if (out.digits.empty()) out.negative = false;
  return out;
}

// value * 10^shift rounded half away from zero to an integer; nullopt when
// it does not fit in int64.
std::optional<int64_t> ScaleToInteger(const DecimalText& d, int64_t shift) {
  if (d.digits.empty()) return 0;
  int64_t exp = d.exponent + shift;
  std::string digits = d.digits;
  bool round_up = false;
  if (exp >= 0) {
    if (static_cast<int64_t>(digits.size()) + exp > 19) return std::nullopt;
    digits.append(static_cast<size_t>(exp), '0');
  } else {
    int64_t cut = -exp;
    if (cut > static_cast<int64_t>(digits.size())) {
      round_up = cut == static_cast<int64_t>(digits.size()) && digits[0] >= '5';
      digits.clear();
    } else {
      round_up = digits[digits.size() - static_cast<size_t>(cut)] >= '5';
      digits.resize(digits.size() - static_cast<size_t>(cut));
    }
  }
  if (digits.size() > 19) return std::nullopt;
  uint64_t magnitude = 0;
  for (char c : digits) magnitude = magnitude * 10 + static_cast<uint64_t>(c - '0');
  if (round_up) ++magnitude;
  if (magnitude > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  int64_t v = static_cast<int64_t>(magnitude);
  return d.negative ? -v : v;
}

// Plain decimal text ("-12.5", "0.001", "1200") of a parsed decimal.
std::string PlainDecimal(const DecimalText& d) {
  if (d.digits.empty()) return "0";
  std::string out = d.negative ? "-" : "";
  int64_t n = static_cast<int64_t>(d.digits.size());
  if (d.exponent >= 0) {
    out += d.digits;
    out.append(static_cast<size_t>(d.exponent), '0');
  } else if (-d.exponent >= n) {
    out += "0.";
    out.append(static_cast<size_t>(-d.exponent - n), '0');
    out += d.digits;
  } else {
    out += d.digits.substr(0, static_cast<size_t>(n + d.exponent));
    out += '.';
    out += d.digits.substr(static_cast<size_t>(n + d.exponent));
  }
  return out;
}

// BigQuery's integers may carry a '+'.
std::optional<int64_t> ParseSignedInt64(std::string_view s) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  return ParseInt64(s);
}

std::optional<double> ParseFloat(std::string_view s) {
  if (s == "NaN" || s == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (s == "Infinity" || s == "inf" || s == "+Infinity") {
    return std::numeric_limits<double>::infinity();
  }
  if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  double d = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty()) return std::nullopt;
  return d;
}

// ---------------------------------------------------------------- time

int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

bool IsIsoTimestampZ(std::string_view s) {
  // YYYY-MM-DDTHH:MM:SS[.f+]Z
  if (s.size() < 20 || s.back() != 'Z') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18}) {
    if (!IsDigit(s[i])) return false;
  }
  if (s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') || s[13] != ':' ||
      s[16] != ':') {
    return false;
  }
  std::string_view rest = s.substr(19, s.size() - 20);
  if (rest.empty()) return true;
  if (rest[0] != '.' || rest.size() < 2) return false;
  return std::all_of(rest.begin() + 1, rest.end(), IsDigit);
}

// ------------------------------------------------------------- decoding

enum class Kind {
  kInt64,
  kFloat,
  kNumeric,
  kBool,
  kString,
  kBytes,
  kDate,
  kDatetime,
  kTimestamp,
  kJson,
  kRecord,
  kOther,
};

Kind KindOf(const std::string& type) {
  if (type == "INTEGER" || type == "INT64") return Kind::kInt64;
  if (type == "FLOAT" || type == "FLOAT64") return Kind::kFloat;
  if (type == "NUMERIC" || type == "BIGNUMERIC" || type == "DECIMAL" || type == "BIGDECIMAL") {
    return Kind::kNumeric;
  }
  if (type == "BOOLEAN" || type == "BOOL") return Kind::kBool;
  if (type == "STRING") return Kind::kString;
  if (type == "BYTES") return Kind::kBytes;
  if (type == "DATE") return Kind::kDate;
  if (type == "DATETIME") return Kind::kDatetime;
  if (type == "TIMESTAMP") return Kind::kTimestamp;
  if (type == "JSON") return Kind::kJson;
  if (type == "RECORD" || type == "STRUCT") return Kind::kRecord;
  return Kind::kOther;  // TIME, GEOGRAPHY, INTERVAL, RANGE, future types
}

absl::Status BadCell(const std::string& path, const std::string& type, const json& v) {
  std::string text = Dump(v);
  if (text.size() > 64) text = text.substr(0, 64) + "...";
  return absl::InternalError(
      fmt::format("BigQuery sent {} for column {} of type {}", text, path, type));
}

const std::string* CellText(const json& v) {
  return v.is_string() ? &v.get_ref<const std::string&>() : nullptr;
}

std::string TypeText(const BigQueryField& f) {
  if (KindOf(f.type) != Kind::kRecord) return f.type;
  std::string out = f.type + "<";
  for (size_t i = 0; i < f.fields.size(); ++i) {
    if (i > 0) out += ", ";
    out += f.fields[i].name + " " + TypeText(f.fields[i]);
    if (f.fields[i].mode == "REPEATED") out += " REPEATED";
  }
  return out + ">";
}

absl::Status AppendJsonValue(const BigQueryField& f, const std::string& path, const json& v,
                             bool element, std::string& out);

// Appends a non-repeated value of `f` (a scalar or RECORD) as JSON.
absl::Status AppendJsonScalar(const BigQueryField& f, const std::string& path, const json& v,
                              std::string& out) {
  if (v.is_null()) {
    out += "null";
    return absl::OkStatus();
  }
  Kind kind = KindOf(f.type);
  if (kind == Kind::kRecord) {
    auto cells = v.is_object() ? v.find("f") : v.end();
    if (cells == v.end() || !cells->is_array() || cells->size() != f.fields.size()) {
      return BadCell(path, TypeText(f), v);
    }
    out.push_back('{');
    for (size_t i = 0; i < f.fields.size(); ++i) {
      if (i > 0) out.push_back(',');
      AppendJsonString(out, f.fields[i].name);
      out.push_back(':');
      const json& cell = (*cells)[i];
      auto inner = cell.is_object() ? cell.find("v") : cell.end();
      if (inner == cell.end()) return BadCell(path, TypeText(f), v);
      BACKFLOW_RETURN_IF_ERROR(
          AppendJsonValue(f.fields[i], path + "." + f.fields[i].name, *inner, false, out));
    }
    out.push_back('}');
    return absl::OkStatus();
  }
  const std::string* text = CellText(v);
  if (text == nullptr) return BadCell(path, f.type, v);
  switch (kind) {
    case Kind::kInt64: {
      std::optional<int64_t> i = ParseSignedInt64(*text);
      if (!i) return BadCell(path, f.type, v);
      if (*i >= -kMaxSafeJsonInteger && *i <= kMaxSafeJsonInteger) {
        out += std::to_string(*i);
      } else {
        AppendJsonString(out, std::to_string(*i));
      }
      return absl::OkStatus();
    }
    case Kind::kFloat: {
      std::optional<double> d = ParseFloat(*text);
      if (!d) return BadCell(path, f.type, v);
      if (std::isnan(*d)) {
        AppendJsonString(out, "NaN");
      } else if (std::isinf(*d)) {
        AppendJsonString(out, *d > 0 ? "Infinity" : "-Infinity");
      } else {
        out += fmt::format("{}", *d);
      }
      return absl::OkStatus();
    }
    case Kind::kNumeric: {
      std::optional<DecimalText> d = ParseDecimal(*text);
      if (!d) return BadCell(path, f.type, v);
      AppendJsonString(out, PlainDecimal(*d));
      return absl::OkStatus();
    }
    case Kind::kBool:
      if (*text == "true" || *text == "false") {
        out += *text;
        return absl::OkStatus();
      }
      return BadCell(path, f.type, v);
    case Kind::kTimestamp: {
      absl::StatusOr<std::string> iso = BigQueryTimestampText(*text);
      if (!iso.ok()) return BadCell(path, f.type, v);
      AppendJsonString(out, *iso);
      return absl::OkStatus();
    }
    case Kind::kJson: {
      if (!json::accept(*text)) return BadCell(path, f.type, v);
      out += CompactJson(*text);
      return absl::OkStatus();
    }
    case Kind::kDatetime: {
      std::string s = *text;
      if (s.size() > 10 && s[10] == ' ') s[10] = 'T';
      AppendJsonString(out, s);
      return absl::OkStatus();
    }
    default:
      AppendJsonString(out, *text);
      return absl::OkStatus();
  }
}

// Appends the value of `f` as JSON: an array for a REPEATED field (unless
// `element`), else AppendJsonScalar.
absl::Status AppendJsonValue(const BigQueryField& f, const std::string& path, const json& v,
                             bool element, std::string& out) {
  if (element || f.mode != "REPEATED") return AppendJsonScalar(f, path, v, out);
  if (v.is_null()) {  // never sent by BigQuery, but an empty array is what it means
    out += "[]";
    return absl::OkStatus();
  }
  if (!v.is_array()) return BadCell(path, TypeText(f) + " REPEATED", v);
  out.push_back('[');
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) out.push_back(',');
    const json& item = v[i];
    auto inner = item.is_object() ? item.find("v") : item.end();
    if (inner == item.end()) return BadCell(path, TypeText(f) + " REPEATED", v);
    BACKFLOW_RETURN_IF_ERROR(AppendJsonScalar(f, fmt::format("{}[{}]", path, i), *inner, out));
  }
  out.push_back(']');
  return absl::OkStatus();
}

// ---------------------------------------------------------------- errors

// Google's error envelope: {"error":{"code","message","status","errors":[{"reason",
// "message","location","locationType","domain"}]}}, or a job's errorResult.
struct ApiError {
  int http_status = 0;  // 0 for a job's errorResult
  std::string reason;
  std::string message;
  std::string location;
  std::string status;
};

ApiError ErrorFromProto(const json& proto) {
  ApiError e;
  if (!proto.is_object()) return e;
  auto text = [&](const char* key) {
    auto it = proto.find(key);
    return it != proto.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  e.reason = text("reason");
  e.message = text("message");
  e.location = text("location");
  return e;
}

ApiError ParseApiError(const HttpResponse& r) {
  ApiError e;
  e.http_status = r.status;
  json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  auto err = body.is_object() ? body.find("error") : body.end();
  if (err == body.end() || !err->is_object()) {
    e.message = BodySnippet(r.body, 300);
    return e;
  }
  auto errors = err->find("errors");
  if (errors != err->end() && errors->is_array() && !errors->empty()) {
    e = ErrorFromProto((*errors)[0]);
    e.http_status = r.status;
  }
  if (auto m = err->find("message"); m != err->end() && m->is_string()) e.message = *m;
  if (auto s = err->find("status"); s != err->end() && s->is_string()) e.status = *s;
  if (e.reason.empty() && e.message.empty()) e.message = BodySnippet(r.body, 300);
  return e;
}

bool IsRetryableReason(const std::string& reason) {
  return reason == "rateLimitExceeded" || reason == "jobRateLimitExceeded" ||
         reason == "backendError" || reason == "internalError" || reason == "badGateway";
}

bool IsPermanentReason(const std::string& reason) {
  return reason == "invalidQuery" || reason == "invalid" || reason == "notFound" ||
         reason == "accessDenied" || reason == "quotaExceeded" || reason == "duplicate" ||
         reason == "responseTooLarge" || reason == "stopped" || reason == "billingNotEnabled" ||
         reason == "bytesBilledLimitExceeded" || reason == "resourcesExceeded";
}

bool RetryableResponse(const HttpResponse& r) {
  if (r.status >= 200 && r.status < 300) return false;
  ApiError e = ParseApiError(r);
  if (IsRetryableReason(e.reason)) return true;
  if (IsPermanentReason(e.reason)) return false;
  return DefaultRetryableStatus(r.status);
}

// The role that grants `permission`, when it is one a query needs.
std::string RoleFor(const std::string& permission) {
  if (permission == "bigquery.jobs.create") return "roles/bigquery.jobUser";
  if (permission == "bigquery.datasets.create" || permission == "bigquery.tables.create" ||
      permission == "bigquery.tables.updateData" || permission == "bigquery.tables.update" ||
      permission == "bigquery.tables.delete") {
    return "roles/bigquery.dataEditor";
  }
  if (permission.starts_with("bigquery.tables.") || permission.starts_with("bigquery.datasets.") ||
      permission.starts_with("bigquery.routines.")) {
    return "roles/bigquery.dataViewer";
  }
  if (permission.starts_with("bigquery.readsessions.")) return "roles/bigquery.readSessionUser";
  if (permission.starts_with("bigquery.jobs.")) return "roles/bigquery.jobUser";
  return "";
}

// The first "bigquery.x.y" permission named in `message`.
std::string PermissionIn(const std::string& message) {
  size_t at = message.find("bigquery.");
  while (at != std::string::npos) {
    size_t end = at;
    while (end < message.size() &&
           (std::isalnum(static_cast<unsigned char>(message[end])) || message[end] == '.')) {
      ++end;
    }
    std::string permission = message.substr(at, end - at);
    while (!permission.empty() && permission.back() == '.') permission.pop_back();
    if (std::count(permission.begin(), permission.end(), '.') >= 2) return permission;
    at = message.find("bigquery.", end);
  }
  return "";
}

}  // namespace

// ------------------------------------------------------------ public helpers

bool IsBigQueryDatasetName(std::string_view name) {
  if (name.empty() || name.size() > 1024) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

std::string IsoFromUnixMicros(int64_t micros) {
  int64_t seconds = FloorDiv(micros, 1'000'000);
  int64_t frac = micros - seconds * 1'000'000;
  int64_t days = FloorDiv(seconds, 86'400);
  int64_t sod = seconds - days * 86'400;
  const CivilDate date = CivilFromDays(days);
  std::string out = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", date.year, date.month,
                                date.day, sod / 3600, (sod / 60) % 60, sod % 60);
  if (frac != 0) {
    std::string f = fmt::format("{:06}", frac);
    while (f.back() == '0') f.pop_back();
    out += "." + f;
  }
  out += "Z";
  return out;
}

absl::StatusOr<std::string> BigQueryTimestampText(std::string_view v) {
  auto bad = [&]() {
    return absl::InvalidArgumentError(
        fmt::format("not a BigQuery TIMESTAMP value: {:?}", std::string(v.substr(0, 64))));
  };
  if (IsIsoTimestampZ(v)) {
    std::string s(v);
    s[10] = 'T';
    // Drop trailing fraction zeros (and the dot) to match the other encodings.
    size_t dot = s.find('.');
    if (dot != std::string::npos) {
      size_t end = s.size() - 1;  // the Z
      size_t last = end;
      while (last > dot + 1 && s[last - 1] == '0') --last;
      if (last == dot + 1) last = dot;
      s = s.substr(0, last) + "Z";
    }
    return s;
  }
  std::optional<int64_t> micros;
  bool integer_text =
      !v.empty() && std::all_of(v.begin() + (v[0] == '-' ? 1 : 0), v.end(), IsDigit);
  if (integer_text && v != "-") {
    micros = ParseSignedInt64(v);  // useInt64Timestamp: microseconds
  } else {
    std::optional<DecimalText> d = ParseDecimal(v);  // float seconds
    if (!d) return bad();
    micros = ScaleToInteger(*d, 6);
  }
  if (!micros || *micros < kMinMicros || *micros > kMaxMicros) return bad();
  return IsoFromUnixMicros(*micros);
}

absl::StatusOr<BigQueryField> ParseBigQueryField(const json& field) {
  if (!field.is_object()) {
    return absl::InternalError("BigQuery sent a schema field that is not an object");
  }
  BigQueryField out;
  auto text = [&](const char* key) {
    auto it = field.find(key);
    return it != field.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  out.name = text("name");
  out.type = Upper(text("type"));
  out.mode = Upper(text("mode"));
  if (out.mode.empty()) out.mode = "NULLABLE";
  if (out.type.empty()) {
    return absl::InternalError(
        fmt::format("BigQuery sent a schema field without a type: {}", Dump(field)));
  }
  if (auto sub = field.find("fields"); sub != field.end() && sub->is_array()) {
    for (const json& f : *sub) {
      BACKFLOW_ASSIGN_OR_RETURN(BigQueryField child, ParseBigQueryField(f));
      out.fields.push_back(std::move(child));
    }
  }
  if (KindOf(out.type) == Kind::kRecord && out.fields.empty()) {
    return absl::InternalError(
        fmt::format("BigQuery sent RECORD field {} without its fields", out.name));
  }
  return out;
}

Column BigQueryColumn(const BigQueryField& field) {
  Column c;
  c.name = field.name;
  c.source_type = TypeText(field);
  if (field.mode == "REPEATED") {
    c.type = ValueType::kJson;
    c.source_type += " REPEATED";
    return c;
  }
  switch (KindOf(field.type)) {
    case Kind::kInt64:
      c.type = ValueType::kInt64;
      break;
    case Kind::kFloat:
      c.type = ValueType::kDouble;
      break;
    case Kind::kNumeric:
      c.type = ValueType::kDecimal;
      break;
    case Kind::kBool:
      c.type = ValueType::kBool;
      break;
    case Kind::kBytes:
      c.type = ValueType::kBytes;
      break;
    case Kind::kDate:
      c.type = ValueType::kDate;
      break;
    case Kind::kDatetime:
    case Kind::kTimestamp:
      c.type = ValueType::kTimestamp;
      break;
    case Kind::kJson:
    case Kind::kRecord:
      c.type = ValueType::kJson;
      break;
    case Kind::kString:
    case Kind::kOther:
      c.type = ValueType::kString;
      break;
  }
  return c;
}

absl::StatusOr<Value> DecodeBigQueryCell(const BigQueryField& field, const json& v) {
  Kind kind = KindOf(field.type);
  if (field.mode == "REPEATED" || kind == Kind::kRecord) {
    if (v.is_null() && field.mode != "REPEATED") return Value::Null();
    std::string out;
    BACKFLOW_RETURN_IF_ERROR(AppendJsonValue(field, field.name, v, false, out));
    return Value::Text(ValueType::kJson, std::move(out));
  }
  if (v.is_null()) return Value::Null();
  const std::string* text = CellText(v);
  if (text == nullptr) return BadCell(field.name, field.type, v);
  switch (kind) {
    case Kind::kInt64: {
      std::optional<int64_t> i = ParseSignedInt64(*text);
      if (!i) return BadCell(field.name, field.type, v);
      return Value::Int64(*i);
    }
    case Kind::kFloat: {
      std::optional<double> d = ParseFloat(*text);
      if (!d) return BadCell(field.name, field.type, v);
      return Value::Double(*d);
    }
    case Kind::kNumeric: {
      std::optional<DecimalText> d = ParseDecimal(*text);
      if (!d) return BadCell(field.name, field.type, v);
      return Value::Text(ValueType::kDecimal, PlainDecimal(*d));
    }
    case Kind::kBool:
      if (*text == "true") return Value::Bool(true);
      if (*text == "false") return Value::Bool(false);
      return BadCell(field.name, field.type, v);
    case Kind::kBytes: {
      absl::StatusOr<std::string> bytes = Base64Decode(*text);
      if (!bytes.ok()) return BadCell(field.name, field.type, v);
      return Value::Text(ValueType::kBytes, *std::move(bytes));
    }
    case Kind::kDate:
      return Value::Text(ValueType::kDate, *text);
    case Kind::kDatetime: {
      std::string s = *text;
      if (s.size() > 10 && s[10] == ' ') s[10] = 'T';
      return Value::Text(ValueType::kTimestamp, std::move(s));
    }
    case Kind::kTimestamp: {
      absl::StatusOr<std::string> iso = BigQueryTimestampText(*text);
      if (!iso.ok()) return BadCell(field.name, field.type, v);
      return Value::Text(ValueType::kTimestamp, *std::move(iso));
    }
    case Kind::kJson:
      if (!json::accept(*text)) return BadCell(field.name, field.type, v);
      return Value::Text(ValueType::kJson, CompactJson(*text));
    case Kind::kRecord:  // handled above
    case Kind::kString:
    case Kind::kOther:
      return Value::String(*text);
  }
  return BadCell(field.name, field.type, v);
}

namespace {

// ------------------------------------------------------------ the source

struct BigQueryConfig {
  GoogleServiceAccountKey key;
  std::string project_id;
  std::string location;
  std::string token_url;
  int64_t max_results = kDefaultMaxResults;
  std::chrono::seconds query_timeout{kDefaultQueryTimeoutS};  // 0: none
  std::optional<int64_t> maximum_bytes_billed;
  // The dataset of change_detection: warehouse's tables.
  std::string state_schema = "backflow_state";
  HttpSettings http;
};

// What a call was for, for messages.
struct CallContext {
  std::string what;  // "run the query", "fetch page 3 of job job_x"
  std::string job_id;
  std::string location;
};

class BigQueryClient {
 public:
  BigQueryClient(BigQueryConfig cfg, std::unique_ptr<JwtBearerTokenSource> tokens, HttpClient* http,
                 Clock* clock)
      : cfg_(std::move(cfg)),
        tokens_(std::move(tokens)),
        http_(http),
        clock_(clock),
        limiter_(cfg_.http.UserLimiter(*clock)),
        rng_(std::random_device{}()) {}

  const BigQueryConfig& cfg() const { return cfg_; }
  Clock* clock() const { return clock_; }

  HttpDelivery NewDelivery() const {
    VendorRules rules;
    rules.retryable = RetryableResponse;
    return HttpDelivery(http_, clock_, {limiter_.get()}, cfg_.http.retry, std::move(rules),
                        tokens_.get());
  }

  std::string NewRequestId() {
    std::uniform_int_distribution<uint64_t> dist;
    uint64_t a = dist(rng_), b = dist(rng_);
    a = (a & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
    b = (b & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // variant 10
    std::string hex = fmt::format("{:016x}{:016x}", a, b);
    return fmt::format("{}-{}-{}-{}-{}", hex.substr(0, 8), hex.substr(8, 4), hex.substr(12, 4),
                       hex.substr(16, 4), hex.substr(20, 12));
  }

  std::string ProjectUrl() const {
    return fmt::format("{}/bigquery/v2/projects/{}", cfg_.http.base_url,
                       PercentEncode(cfg_.project_id));
  }

  // The server-side wait of one call: at most 10 s and half the HTTP timeout.
  int64_t ServerWaitMs() const {
    return std::max<int64_t>(1, std::min<int64_t>(kMaxServerWaitMs, cfg_.http.timeout.count() / 2));
  }

  // The status for a failed call (transport error, token failure or non-2xx
  // reply, already retried).
  absl::Status Failure(const DeliveryResult& d, const CallContext& ctx) const {
    if (!d.auth_error.ok()) return d.auth_error;
    if (!d.response.ok()) {
      const absl::Status& s = d.response.status();
      std::string message =
          fmt::format("could not reach BigQuery at {} to {} {}: {}", cfg_.http.base_url, ctx.what,
                      d.AttemptsText(), s.message());
      return s.code() == absl::StatusCode::kDeadlineExceeded ? absl::DeadlineExceededError(message)
                                                             : absl::UnavailableError(message);
    }
    ApiError e = ParseApiError(*d.response);
    std::string attempts = d.attempts > 1 ? " " + d.AttemptsText() : "";
    return ErrorStatus(e, ctx, attempts);
  }

  // The status for an API error or a job's errorResult.
  absl::Status ErrorStatus(const ApiError& e, const CallContext& ctx,
                           const std::string& attempts = "") const {
    std::string said = e.message.empty() ? "(no message)" : e.message;
    if (!e.location.empty()) said += fmt::format(" (error location: {})", e.location);
    std::string code = e.http_status > 0 ? fmt::format("HTTP {}", e.http_status) : "job error";
    if (!e.reason.empty()) code += " " + e.reason;
    const std::string& r = e.reason;
    const std::string location = ctx.location.empty() ? cfg_.location : ctx.location;
    const std::string location_text = location.empty()
                                          ? "not set (BigQuery then uses the datasets' location)"
                                          : fmt::format("\"{}\"", location);

    if (r == "rateLimitExceeded" || r == "jobRateLimitExceeded" || e.http_status == 429) {
      return absl::ResourceExhaustedError(fmt::format(
          "BigQuery rate limit exceeded while trying to {} ({}){}: the project's API request "
          "rate is used up by this and other clients; the run is retried later. BigQuery said: "
          "{}",
          ctx.what, code, attempts, said));
    }
    if (r == "quotaExceeded") {
      return absl::ResourceExhaustedError(fmt::format(
          "BigQuery quota exceeded while trying to {} ({}): a project quota (e.g. concurrent "
          "queries or bytes scanned per day) is used up; it refills over time, or raise it in "
          "IAM & Admin > Quotas. BigQuery said: {}",
          ctx.what, code, said));
    }
    if (IsRetryableReason(r) || (e.http_status >= 500 && !IsPermanentReason(r))) {
      return absl::UnavailableError(fmt::format(
          "BigQuery failed to {} ({}){}: a transient server error; the run is retried later. "
          "BigQuery said: {}",
          ctx.what, code, attempts, said));
    }
    if (r == "stopped") {
      return absl::UnavailableError(fmt::format(
          "BigQuery job {} was cancelled before it finished ({}): someone or something stopped "
          "it; the run is retried later. BigQuery said: {}",
          ctx.job_id, code, said));
    }
    if (r == "timeout") {
      return absl::DeadlineExceededError(fmt::format(
          "BigQuery job {} ran out of time ({}): raise query_timeout_s or make the model cheaper. "
          "BigQuery said: {}",
          ctx.job_id, code, said));
    }
    if (r == "bytesBilledLimitExceeded") {
      return absl::FailedPreconditionError(fmt::format(
          "the query would bill more bytes than maximum_bytes_billed allows ({}): raise "
          "maximum_bytes_billed or make the model scan less. BigQuery said: {}",
          code, said));
    }
    if (r == "authError" || e.http_status == 401) {
      return absl::UnauthenticatedError(fmt::format(
          "BigQuery refused the access token of {} ({}) even after minting a new one: check that "
          "service_account_key is a current key of an enabled service account. BigQuery said: {}",
          cfg_.key.client_email, code, said));
    }
    if (r == "notFound" || e.http_status == 404) {
      if (said.find("Not found: Job") != std::string::npos ||
          (!ctx.job_id.empty() && said.find(ctx.job_id) != std::string::npos)) {
        return absl::FailedPreconditionError(fmt::format(
            "BigQuery cannot find job {} in location {} ({}): a job is only found in the "
            "location it ran in; set `location` to the region of the model's datasets (e.g. US, "
            "EU, europe-west2). BigQuery said: {}",
            ctx.job_id, location_text, code, said));
      }
      if (said.find("Not found: Project") != std::string::npos) {
        return absl::FailedPreconditionError(fmt::format(
            "BigQuery project \"{}\" was not found ({}): check project_id (the project ID shown "
            "in the Google Cloud console, e.g. my-project-123456). BigQuery said: {}",
            cfg_.project_id, code, said));
      }
      return absl::InvalidArgumentError(fmt::format(
          "BigQuery could not find a dataset or table the model reads ({}): check the names in "
          "the model's SQL (dataset.table or `project.dataset.table`) and that `location` ({}) "
          "is where the dataset lives. BigQuery said: {}",
          code, location_text, said));
    }
    if (r == "accessDenied" || r == "billingNotEnabled" || e.http_status == 403) {
      if (said.find("has not been used") != std::string::npos ||
          said.find("is disabled") != std::string::npos ||
          said.find("SERVICE_DISABLED") != std::string::npos) {
        return absl::PermissionDeniedError(fmt::format(
            "the BigQuery API is not enabled for project \"{}\" ({}): enable it (APIs & Services "
            "> Library > BigQuery API) and retry in a few minutes. BigQuery said: {}",
            cfg_.project_id, code, said));
      }
      if (r == "billingNotEnabled") {
        return absl::PermissionDeniedError(fmt::format(
            "billing is not enabled for project \"{}\" ({}): enable billing or use another "
            "project_id. BigQuery said: {}",
            cfg_.project_id, code, said));
      }
      std::string permission = PermissionIn(said);
      std::string role = RoleFor(permission);
      if (role.empty() && said.find("permission to query table") != std::string::npos) {
        role = "roles/bigquery.dataViewer";
        permission = "bigquery.tables.getData";
      }
      std::string fix;
      if (role == "roles/bigquery.jobUser") {
        fix = fmt::format("grant {} the role {} (BigQuery Job User) on project \"{}\"",
                          cfg_.key.client_email, role, cfg_.project_id);
      } else if (role == "roles/bigquery.dataEditor") {
        fix = fmt::format(
            "grant {} the role {} (BigQuery Data Editor) on the dataset it writes (on project "
            "\"{}\" to create datasets)",
            cfg_.key.client_email, role, cfg_.project_id);
      } else if (!role.empty()) {
        fix = fmt::format(
            "grant {} the role {} (BigQuery Data Viewer) on the datasets or tables the model "
            "reads",
            cfg_.key.client_email, role);
      } else {
        fix = fmt::format(
            "{} needs roles/bigquery.jobUser on project \"{}\" and roles/bigquery.dataViewer on "
            "the datasets the model reads",
            cfg_.key.client_email, cfg_.project_id);
      }
      return absl::PermissionDeniedError(fmt::format(
          "BigQuery denied access while trying to {} ({}{}): {}. BigQuery said: {}", ctx.what, code,
          permission.empty() ? "" : ", missing " + permission, fix, said));
    }
    if (r == "invalidQuery" || r == "invalid" || r == "responseTooLarge" ||
        r == "resourcesExceeded" || e.http_status == 400) {
      return absl::InvalidArgumentError(
          fmt::format("BigQuery rejected the query ({}): {}", code, said));
    }
    if (r == "duplicate" || e.http_status == 409) {
      return absl::FailedPreconditionError(
          fmt::format("BigQuery refused to {} ({}): {}", ctx.what, code, said));
    }
    return absl::UnknownError(
        fmt::format("BigQuery failed to {} ({}){}: {}", ctx.what, code, attempts, said));
  }

  // Sends one request with retries and returns the parsed 2xx body.
  absl::StatusOr<json> Call(HttpDelivery& delivery, const std::function<HttpRequest()>& build,
                            const CallContext& ctx) const {
    DeliveryResult d = delivery.Send(build);
    if (!d.auth_error.ok() || !d.response.ok() || d.response->status < 200 ||
        d.response->status >= 300) {
      return Failure(d, ctx);
    }
    json body = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
    if (!body.is_object()) {
      return absl::UnavailableError(
          fmt::format("BigQuery answered HTTP {} to {} with a body that is not a JSON object: {}",
                      d.response->status, ctx.what, BodySnippet(d.response->body, 200)));
    }
    return body;
  }

  // Best effort, one attempt: asks BigQuery to stop the job.
  void Cancel(const std::string& job_id, const std::string& location) const {
    HttpDelivery delivery = NewDelivery();
    std::string url = fmt::format("{}/jobs/{}/cancel", ProjectUrl(), PercentEncode(job_id));
    if (!location.empty()) url += "?location=" + PercentEncode(location);
    delivery.Send(
        [&] {
          HttpRequest req;
          req.method = "POST";
          req.url = url;
          req.timeout = std::min<std::chrono::milliseconds>(cfg_.http.timeout,
                                                            std::chrono::milliseconds(10'000));
          req.headers.emplace_back("Content-Type", "application/json");
          req.headers.emplace_back("Accept", "application/json");
          return req;
        },
        /*retry=*/false);
  }

 private:
  const BigQueryConfig cfg_;
  const std::unique_ptr<JwtBearerTokenSource> tokens_;
  HttpClient* const http_;
  Clock* const clock_;
  const std::unique_ptr<RateLimiter> limiter_;
  std::mt19937_64 rng_;
};

// One query: the job, its schema and the page being read.
class BigQueryRowReader : public RowReader {
 public:
  // `cancel` as in QueryOptions (may be null).
  BigQueryRowReader(BigQueryClient* client, std::string job_id, std::string location,
                    const std::atomic<bool>* cancel)
      : client_(client),
        cancel_(cancel),
        delivery_(client->NewDelivery()),
        job_id_(std::move(job_id)),
        location_(std::move(location)) {}

  // Dropped before the clean end: cancels the job unless every page was
  // already fetched (the job is then done and there is nothing to stop).
  ~BigQueryRowReader() override {
    if (!finished_ && !job_id_.empty() && (!complete_ || !page_token_.empty())) {
      client_->Cancel(job_id_, location_);
    }
  }

  const Schema& schema() const override { return schema_; }

  // Runs jobs.query and polls until the job is complete; reads the first page.
  // With `parameters` the SQL is a statement of change_detection: warehouse:
  // its `?` take the values as positional STRING query parameters, and a
  // statement without a result (DDL, DML) reads as no rows and no columns.
  absl::Status Start(const std::string& sql, const std::vector<std::string>* parameters = nullptr) {
    const BigQueryConfig& cfg = client_->cfg();
    Clock* clock = client_->clock();
    if (QueryCancelRequested(cancel_)) {
      finished_ = true;  // no job to cancel
      return absl::CancelledError("the run was cancelled before the BigQuery query was submitted");
    }
    Clock::TimePoint started = clock->Now();
    json request = {{"query", sql},
                    {"useLegacySql", false},
                    {"timeoutMs", client_->ServerWaitMs()},
                    {"maxResults", cfg.max_results},
                    {"formatOptions", {{"useInt64Timestamp", true}}},
                    {"requestId", client_->NewRequestId()}};
    if (!cfg.location.empty()) request["location"] = cfg.location;
    if (parameters != nullptr) {
      statement_ = true;
      if (!parameters->empty()) {
        request["parameterMode"] = "POSITIONAL";
        json list = json::array();
        for (const std::string& value : *parameters) {
          list.push_back(
              {{"parameterType", {{"type", "STRING"}}}, {"parameterValue", {{"value", value}}}});
        }
        request["queryParameters"] = std::move(list);
      }
    }
    if (cfg.query_timeout.count() > 0) {
      request["jobTimeoutMs"] = std::to_string(cfg.query_timeout.count() * 1000);
    }
    if (cfg.maximum_bytes_billed) {
      request["maximumBytesBilled"] = std::to_string(*cfg.maximum_bytes_billed);
    }
    std::string body = Dump(request);
    std::string url = client_->ProjectUrl() + "/queries";
    CallContext ctx{statement_ ? "run a statement of change_detection: warehouse" : "run the query",
                    "", cfg.location};
    absl::StatusOr<json> reply = client_->Call(
        delivery_,
        [&] {
          HttpRequest req;
          req.method = "POST";
          req.url = url;
          req.body = body;
          req.timeout = cfg.http.timeout;
          req.headers.emplace_back("Content-Type", "application/json");
          req.headers.emplace_back("Accept", "application/json");
          return req;  // the requestId makes a repeat return the same job
        },
        ctx);
    if (!reply.ok()) {
      finished_ = true;  // no job to cancel
      return reply.status();
    }
    TakeJobReference(*reply);
    int polls = 0;
    while (true) {
      if (absl::Status s = CheckErrorsInside200(*reply); !s.ok()) return Fail(s);
      if (reply->value("jobComplete", false)) {
        complete_ = true;
        break;
      }
      if (job_id_.empty()) {
        return Fail(absl::InternalError(
            "BigQuery answered jobComplete=false without a jobReference to poll"));
      }
      if (QueryCancelRequested(cancel_)) return Fail(Cancelled());
      if (cfg.query_timeout.count() > 0 && clock->Now() - started >= cfg.query_timeout) {
        return Fail(absl::DeadlineExceededError(fmt::format(
            "BigQuery job {} was still running after query_timeout_s ({} s); it was cancelled: "
            "raise query_timeout_s or make the model cheaper",
            job_id_, cfg.query_timeout.count())));
      }
      if (polls > 0) {
        clock->SleepFor(std::min<std::chrono::milliseconds>(
            std::chrono::milliseconds(100) * (int64_t{1} << std::min(polls - 1, 4)),
            std::chrono::milliseconds(1000)));
        if (QueryCancelRequested(cancel_)) return Fail(Cancelled());
      }
      ++polls;
      absl::StatusOr<json> polled = GetQueryResults("", "wait for job " + job_id_);
      if (!polled.ok()) return Fail(polled.status());
      reply = std::move(polled);
    }
    auto fields = reply->find("schema");
    if (statement_ && fields == reply->end()) {  // DDL or DML: no result set
      finished_ = true;
      return absl::OkStatus();
    }
    if (fields == reply->end() || !fields->is_object() || !fields->contains("fields") ||
        !(*fields)["fields"].is_array()) {
      return Fail(absl::InvalidArgumentError(
          "the query returned no result set (no schema): a model must be a SELECT"));
    }
    for (const json& f : (*fields)["fields"]) {
      absl::StatusOr<BigQueryField> field = ParseBigQueryField(f);
      if (!field.ok()) return Fail(field.status());
      schema_.push_back(BigQueryColumn(*field));
      fields_.push_back(*std::move(field));
    }
    if (auto total = reply->find("totalRows"); total != reply->end()) {
      std::optional<int64_t> n;
      if (total->is_string()) n = ParseSignedInt64(total->get<std::string>());
      if (total->is_number_integer()) n = total->get<int64_t>();
      total_rows_ = n;
    }
    return TakePage(std::move(*reply));
  }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!error_.ok()) return error_;
    if (finished_) return false;
    int empty_pages = 0;
    while (next_row_ >= page_rows_.size()) {
      if (page_token_.empty()) {
        if (total_rows_ && *total_rows_ != delivered_) {
          return Fail(absl::UnavailableError(fmt::format(
              "BigQuery job {} reported {} rows but its pages held {}: the result was cut "
              "short; the run is retried later",
              job_id_, *total_rows_, delivered_)));
        }
        finished_ = true;
        return false;
      }
      if (++empty_pages > kMaxEmptyPages) {
        return Fail(absl::UnavailableError(fmt::format(
            "BigQuery job {} returned {} empty pages in a row; giving up", job_id_, empty_pages)));
      }
      if (QueryCancelRequested(cancel_)) return Fail(Cancelled());
      ++page_number_;
      absl::StatusOr<json> page = GetQueryResults(
          page_token_, fmt::format("fetch page {} of job {}", page_number_, job_id_));
      if (!page.ok()) return Fail(page.status());
      if (absl::Status s = CheckErrorsInside200(*page); !s.ok()) return Fail(s);
      if (!page->value("jobComplete", true)) {
        return Fail(absl::UnavailableError(fmt::format(
            "BigQuery answered jobComplete=false for page {} of job {}, which was complete",
            page_number_, job_id_)));
      }
      absl::Status taken = TakePage(*std::move(page));
      if (!taken.ok()) return Fail(taken);
    }
    const json& r = page_rows_[next_row_++];
    auto cells = r.is_object() ? r.find("f") : r.end();
    if (cells == r.end() || !cells->is_array() || cells->size() != fields_.size()) {
      return Fail(absl::InternalError(
          fmt::format("BigQuery sent a row that does not match the schema's {} columns: {}",
                      fields_.size(), BodySnippet(Dump(r), 200))));
    }
    row.resize(fields_.size());
    for (size_t i = 0; i < fields_.size(); ++i) {
      const json& cell = (*cells)[i];
      auto v = cell.is_object() ? cell.find("v") : cell.end();
      if (v == cell.end()) {
        return Fail(absl::InternalError(
            fmt::format("BigQuery sent a cell without \"v\" for column {}", fields_[i].name)));
      }
      absl::StatusOr<Value> value = DecodeBigQueryCell(fields_[i], *v);
      if (!value.ok()) return Fail(value.status());
      row[i] = *std::move(value);
    }
    ++delivered_;
    return true;
  }

 private:
  absl::Status Fail(absl::Status status) {
    error_ = status;
    if (!finished_ && !job_id_.empty()) client_->Cancel(job_id_, location_);
    finished_ = true;
    return status;
  }

  // After a cancel request: Fail() sends jobs.cancel.
  absl::Status Cancelled() const {
    return QueryCancelledError(fmt::format("BigQuery job {}", job_id_));
  }

  void TakeJobReference(const json& reply) {
    auto ref = reply.find("jobReference");
    if (ref == reply.end() || !ref->is_object()) return;
    if (auto id = ref->find("jobId"); id != ref->end() && id->is_string()) job_id_ = *id;
    if (auto loc = ref->find("location");
        loc != ref->end() && loc->is_string() && !loc->get_ref<const std::string&>().empty()) {
      location_ = *loc;
    }
  }

  // A 200 carrying errors[]: the job's status decides whether it failed.
  absl::Status CheckErrorsInside200(const json& reply) {
    auto errors = reply.find("errors");
    if (errors == reply.end() || !errors->is_array() || errors->empty() || warnings_only_) {
      return absl::OkStatus();
    }
    CallContext ctx{"check the status of job " + job_id_, job_id_, location_};
    if (job_id_.empty()) return client_->ErrorStatus(ErrorFromProto((*errors)[0]), ctx);
    std::string url = fmt::format("{}/jobs/{}", client_->ProjectUrl(), PercentEncode(job_id_));
    if (!location_.empty()) url += "?location=" + PercentEncode(location_);
    absl::StatusOr<json> job = client_->Call(
        delivery_,
        [&] {
          HttpRequest req;
          req.method = "GET";
          req.url = url;
          req.timeout = client_->cfg().http.timeout;
          req.headers.emplace_back("Accept", "application/json");
          return req;
        },
        ctx);
    if (!job.ok()) return job.status();
    auto status = job->find("status");
    if (status != job->end() && status->is_object()) {
      auto result = status->find("errorResult");
      if (result != status->end() && result->is_object()) {
        return client_->ErrorStatus(ErrorFromProto(*result), ctx);
      }
      // A finished job without errorResult: its errors[] are warnings.
      warnings_only_ = status->value("state", "") == "DONE";
    }
    return absl::OkStatus();  // warnings only
  }

  absl::StatusOr<json> GetQueryResults(const std::string& page_token, const std::string& what) {
    const BigQueryConfig& cfg = client_->cfg();
    std::string url = fmt::format(
        "{}/queries/{}?maxResults={}&timeoutMs={}"
        "&formatOptions.useInt64Timestamp=true",
        client_->ProjectUrl(), PercentEncode(job_id_), cfg.max_results, client_->ServerWaitMs());
    if (!location_.empty()) url += "&location=" + PercentEncode(location_);
    if (!page_token.empty()) url += "&pageToken=" + PercentEncode(page_token);
    CallContext ctx{what, job_id_, location_};
    absl::StatusOr<json> reply = client_->Call(
        delivery_,
        [&] {
          HttpRequest req;
          req.method = "GET";
          req.url = url;
          req.timeout = cfg.http.timeout;
          req.headers.emplace_back("Accept", "application/json");
          return req;
        },
        ctx);
    return reply;
  }

  // Keeps the page's rows (the previous page is released) and its pageToken.
  absl::Status TakePage(json page) {
    page_rows_ = json::array();
    next_row_ = 0;
    if (auto rows = page.find("rows"); rows != page.end()) {
      if (!rows->is_array()) {
        return absl::InternalError("BigQuery sent \"rows\" that is not an array");
      }
      page_rows_ = std::move(*rows);
    }
    page_token_.clear();
    if (auto token = page.find("pageToken"); token != page.end() && token->is_string()) {
      page_token_ = *token;
    }
    if (!page_token_.empty() && job_id_.empty()) {
      return absl::InternalError("BigQuery sent a pageToken without a jobReference");
    }
    return absl::OkStatus();
  }

  BigQueryClient* client_;
  const std::atomic<bool>* const cancel_;
  HttpDelivery delivery_;
  std::string job_id_;
  std::string location_;
  Schema schema_;
  std::vector<BigQueryField> fields_;
  std::optional<int64_t> total_rows_;
  json page_rows_ = json::array();
  size_t next_row_ = 0;
  std::string page_token_;
  int page_number_ = 1;
  int64_t delivered_ = 0;
  bool statement_ = false;      // Start() was given parameters
  bool complete_ = false;       // the job finished running
  bool warnings_only_ = false;  // jobs.get found the job DONE without errorResult
  bool finished_ = false;       // clean end, failure, or nothing to cancel
  absl::Status error_;
};

class BigQuerySource : public Source {
 public:
  explicit BigQuerySource(std::unique_ptr<BigQueryClient> client) : client_(std::move(client)) {}

  WarehouseChangeDetection* warehouse_change_detection() override {
    if (change_detection_ == nullptr) {
      BigQueryClient* client = client_.get();
      const BigQueryConfig& cfg = client->cfg();
      auto sql = NewBigQueryWarehouseSql(
          [client](const std::string& statement, const std::vector<std::string>& parameters,
                   const std::atomic<bool>* cancel) -> absl::StatusOr<std::unique_ptr<RowReader>> {
            auto reader =
                std::make_unique<BigQueryRowReader>(client, "", client->cfg().location, cancel);
            BACKFLOW_RETURN_IF_ERROR(reader->Start(statement, &parameters));
            return std::unique_ptr<RowReader>(std::move(reader));
          },
          BigQueryWarehouseContext{cfg.project_id, cfg.location, cfg.key.client_email});
      PassChangeDetectionOptions options;
      options.state_schema = cfg.state_schema;
      options.clock = client->clock();
      change_detection_ = NewPassChangeDetection(std::move(sql), std::move(options));
    }
    return change_detection_.get();
  }

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, Run("SELECT 1 AS backflow_check"));
    Row row;
    int rows = 0;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool more, reader->Next(row));
      if (!more) break;
      ++rows;
    }
    if (rows != 1) {
      return absl::InternalError(fmt::format("BigQuery returned {} rows for SELECT 1", rows));
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
  absl::StatusOr<std::unique_ptr<BigQueryRowReader>> Run(
      const std::string& sql, const std::atomic<bool>* cancel = nullptr) {
    auto reader =
        std::make_unique<BigQueryRowReader>(client_.get(), "", client_->cfg().location, cancel);
    BACKFLOW_RETURN_IF_ERROR(reader->Start(sql));
    return reader;
  }

  std::unique_ptr<BigQueryClient> client_;
  // Declared after client_, which its statements use: destroyed first.
  std::unique_ptr<WarehouseChangeDetection> change_detection_;
};

absl::StatusOr<BigQueryConfig> ParseConfig(const json& settings) {
  if (!settings.is_object()) return absl::InvalidArgumentError("bigquery settings must be a map");
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
  BigQueryConfig cfg;
  std::string key_text = text("service_account_key");
  if (key_text.empty()) {
    return absl::InvalidArgumentError(
        "service_account_key: required; the content of the service account's JSON key file, "
        "e.g. ${env:BIGQUERY_SA_KEY}");
  }
  BACKFLOW_ASSIGN_OR_RETURN(cfg.key, ParseGoogleServiceAccountKey(key_text));
  cfg.project_id = text("project_id");
  if (cfg.project_id.empty()) cfg.project_id = cfg.key.project_id;
  if (cfg.project_id.empty()) {
    return absl::InvalidArgumentError(
        "project_id: required (the key has no project_id); the ID of the project that runs and "
        "pays for the queries");
  }
  cfg.location = text("location");
  cfg.token_url = text("token_url");
  if (cfg.token_url.empty()) cfg.token_url = kGoogleDefaultTokenUrl;
  BACKFLOW_ASSIGN_OR_RETURN(cfg.max_results,
                            integer("max_results", kDefaultMaxResults, 1, kMaxMaxResults));
  BACKFLOW_ASSIGN_OR_RETURN(int64_t query_timeout,
                            integer("query_timeout_s", kDefaultQueryTimeoutS, 0, 6 * 3600));
  cfg.query_timeout = std::chrono::seconds(query_timeout);
  if (auto it = settings.find("maximum_bytes_billed"); it != settings.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1) {
      return absl::InvalidArgumentError("maximum_bytes_billed: must be a whole number >= 1");
    }
    cfg.maximum_bytes_billed = it->get<int64_t>();
  }
  if (auto it = settings.find("state_schema"); it != settings.end() && !it->is_null()) {
    if (!it->is_string() || !IsBigQueryDatasetName(it->get<std::string>())) {
      return absl::InvalidArgumentError(
          "state_schema: must be a dataset name of the project (letters, digits and '_', at most "
          "1024), e.g. backflow_state");
    }
    cfg.state_schema = it->get<std::string>();
  }
  json http_settings = settings;
  if (!http_settings.contains("base_url") || http_settings["base_url"].is_null()) {
    http_settings["base_url"] = kBigQueryDefaultBaseUrl;
  }
  if (!http_settings.contains("timeout_ms") || http_settings["timeout_ms"].is_null()) {
    http_settings["timeout_ms"] = kDefaultTimeoutMs;
  }
  if (!http_settings.contains("max_retries") || http_settings["max_retries"].is_null()) {
    http_settings["max_retries"] = kDefaultMaxRetries;
  }
  BACKFLOW_ASSIGN_OR_RETURN(cfg.http, ParseHttpSettings(http_settings));
  return cfg;
}

}  // namespace

SourceDefinition BigQuerySourceDefinition() {
  SourceDefinition def;
  def.type = "bigquery";
  def.title = "Google BigQuery";
  def.description =
      "Runs model SQL (GoogleSQL) with the BigQuery REST API as a service account: jobs.query, "
      "then jobs.getQueryResults page by page as rows are consumed, so only one page is held in "
      "memory. Authenticates with the service account's JSON key (a signed JWT exchanged for an "
      "access token). INT64 stays a 64-bit integer, NUMERIC and BIGNUMERIC exact decimals, "
      "TIMESTAMP an ISO-8601 UTC timestamp (requested as integer microseconds), DATETIME a "
      "timestamp without zone, DATE a date, JSON, STRUCT and ARRAY columns JSON (structs as "
      "objects keyed by field name), BYTES bytes, TIME and GEOGRAPHY text. Rate limits (403 "
      "rateLimitExceeded) and server errors are retried with backoff; a query abandoned "
      "before its end is cancelled with jobs.cancel. The service account needs BigQuery Job "
      "User on project_id and BigQuery Data Viewer on the datasets it reads.";
  def.maturity = "beta";

  SettingSpec key =
      MakeSetting("service_account_key", "Service account key",
                  "The content (not the path) of the service account's JSON key file, e.g. "
                  "${env:BIGQUERY_SA_KEY} after export BIGQUERY_SA_KEY=\"$(cat key.json)\".");
  key.required = true;
  key.secret = true;
  def.settings.push_back(key);
  def.settings.push_back(MakeSetting("project_id", "Project ID",
                                     "The project that runs (and is billed for) the queries; the "
                                     "key's project_id when empty. Models may read tables of other "
                                     "projects as `project.dataset.table`."));
  def.settings.push_back(MakeSetting(
      "location", "Location",
      "Where the queries run, e.g. US, EU or europe-west2: the location of the datasets the "
      "models read. Needed for datasets in a single region; empty lets BigQuery choose."));
  def.settings.push_back(MakeSetting(
      "max_results", "Rows per page",
      "Rows fetched per request (BigQuery also caps a page at 10 MB); one page is held in "
      "memory at a time. 1 to 100000.",
      SettingType::kInteger, kDefaultMaxResults));
  def.settings.push_back(
      MakeSetting("query_timeout_s", "Query timeout (s)",
                  "How long a query may run before it is cancelled (sent as jobTimeoutMs too); 0 "
                  "means no limit.",
                  SettingType::kInteger, kDefaultQueryTimeoutS));
  def.settings.push_back(
      MakeSetting("maximum_bytes_billed", "Maximum bytes billed",
                  "When set, a query that would bill more bytes fails instead of "
                  "running (a cost guard).",
                  SettingType::kInteger));
  def.settings.push_back(MakeSetting(
      "state_schema", "State dataset",
      "For models with change_detection: warehouse: the dataset, in project_id, where Backflow "
      "keeps what each mapping last delivered (table CHECKPOINTS) and the tables of running "
      "passes (dropped when a pass ends). Created in `location` when missing; it must be in the "
      "location of the datasets the models read. The service account needs BigQuery Data Editor "
      "on this dataset (and bigquery.datasets.create on the project to create it).",
      SettingType::kString, "backflow_state"));
  def.warehouse_change_detection = true;
  def.settings.push_back(MakeSetting("token_url", "Token URL",
                                     "Google's OAuth 2.0 token endpoint, where the signed JWT is "
                                     "exchanged for an access token (and the JWT's audience). "
                                     "Change it only for a proxy or a test server.",
                                     SettingType::kString, kGoogleDefaultTokenUrl));
  def.settings.push_back(
      MakeSetting("base_url", "Base URL",
                  "The BigQuery API's address (requests go to "
                  "{base_url}/bigquery/v2/...). Change it for a regional endpoint "
                  "(https://bigquery.<region>.rep.googleapis.com), an egress proxy or "
                  "a test server.",
                  SettingType::kString, kBigQueryDefaultBaseUrl));
  def.settings.push_back(
      MakeSetting("timeout_ms", "Timeout (ms)",
                  "How long to wait for each reply before retrying; BigQuery is "
                  "asked to answer within half of it (at most 10 s) while a query "
                  "runs.",
                  SettingType::kInteger, kDefaultTimeoutMs));
  def.settings.push_back(MakeSetting("max_retries", "Max retries",
                                     "Retries per request after timeouts, connection errors, rate "
                                     "limiting (403 rateLimitExceeded, 429) and server errors.",
                                     SettingType::kInteger, kDefaultMaxRetries));
  def.settings.push_back(MakeSetting("max_retry_wait_s", "Max retry wait (s)",
                                     "Upper bound on any single wait between retries.",
                                     SettingType::kInteger, 300));

  def.create = [](const json& settings,
                  const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Source>> {
    BACKFLOW_ASSIGN_OR_RETURN(BigQueryConfig cfg, ParseConfig(settings));
    if (env.http == nullptr) {
      return absl::InternalError("bigquery source needs an HTTP client (ConnectorEnv.http)");
    }
    Clock* clock = env.clock != nullptr ? env.clock : &SystemClock();
    JwtBearerConfig jwt;
    jwt.vendor = "Google";
    jwt.token_url = cfg.token_url;
    jwt.private_key_pem = cfg.key.private_key;
    jwt.key_id = cfg.key.private_key_id;
    jwt.issuer = cfg.key.client_email;
    jwt.scope = kBigQueryScope;
    jwt.assertion_lifetime = std::chrono::seconds(3600);
    jwt.timeout = cfg.http.timeout;
    jwt.max_retries = cfg.http.retry.max_retries;
    jwt.hint = fmt::format(
        "Check service_account_key: it must be a current JSON key of {} (keys deleted in IAM & "
        "Admin > Service accounts stop working at once)",
        cfg.key.client_email);
    absl::StatusOr<std::unique_ptr<JwtBearerTokenSource>> tokens =
        JwtBearerTokenSource::Create(std::move(jwt), env.http, clock);
    if (!tokens.ok()) {
      return absl::InvalidArgumentError(
          fmt::format("service_account_key: private_key: {}", tokens.status().message()));
    }
    return std::unique_ptr<Source>(std::make_unique<BigQuerySource>(
        std::make_unique<BigQueryClient>(std::move(cfg), *std::move(tokens), env.http, clock)));
  };
  return def;
}

}  // namespace backflow
