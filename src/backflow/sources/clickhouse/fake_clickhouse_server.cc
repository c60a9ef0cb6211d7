#include "backflow/sources/clickhouse/fake_clickhouse_server.h"

#include <arpa/inet.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <random>
#include <regex>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "backflow/common/civil_date.h"
#include "backflow/common/crypto.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/url.h"
#include "backflow/sources/clickhouse/clickhouse_rowbinary.h"
#include "fmt/format.h"
#include "openssl/evp.h"

namespace backflow {
namespace {

using json = nlohmann::json;
using Kind = ClickHouseType::Kind;
using Outcome = ClickHouseQueryLog::Outcome;
using Step = TestResponse::StreamStep;

constexpr char kRowBinary[] = "RowBinaryWithNamesAndTypes";

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string TrimCopy(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::string RandomTag() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::lock_guard<std::mutex> lock(mu);
  std::string tag;
  for (int i = 0; i < 16; ++i) tag.push_back(kChars[rng() % 36]);
  return tag;
}

std::string NewUuid() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  uint64_t hi = (rng() & ~uint64_t{0xF000}) | 0x4000;
  uint64_t lo = (rng() & ~(uint64_t{0xC0} << 56)) | (uint64_t{0x80} << 56);
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF,
                     hi & 0xFFFF, lo >> 48, lo & 0xFFFFFFFFFFFFULL);
}

// --- Exceptions -------------------------------------------------------------------

const char* ExceptionName(int code) {
  switch (code) {
    case 36:
      return "BAD_ARGUMENTS";
    case 46:
      return "UNKNOWN_FUNCTION";
    case 47:
      return "UNKNOWN_IDENTIFIER";
    case 48:
      return "NOT_IMPLEMENTED";
    case 60:
      return "UNKNOWN_TABLE";
    case 57:
      return "TABLE_ALREADY_EXISTS";
    case 82:
      return "DATABASE_ALREADY_EXISTS";
    case 119:
      return "ENGINE_REQUIRED";
    case 456:
      return "UNKNOWN_QUERY_PARAMETER";
    case 457:
      return "BAD_QUERY_PARAMETER";
    case 62:
      return "SYNTAX_ERROR";
    case 70:
      return "CANNOT_CONVERT_TYPE";
    case 73:
      return "UNKNOWN_FORMAT";
    case 76:
      return "CANNOT_OPEN_FILE";
    case 81:
      return "UNKNOWN_DATABASE";
    case 115:
      return "UNKNOWN_SETTING";
    case 158:
      return "TOO_MANY_ROWS";
    case 159:
      return "TIMEOUT_EXCEEDED";
    case 164:
      return "READONLY";
    case 192:
      return "UNKNOWN_USER";
    case 193:
      return "WRONG_PASSWORD";
    case 194:
      return "REQUIRED_PASSWORD";
    case 202:
      return "TOO_MANY_SIMULTANEOUS_QUERIES";
    case 209:
      return "SOCKET_TIMEOUT";
    case 210:
      return "NETWORK_ERROR";
    case 211:
      return "EMPTY_QUERY";
    case 216:
      return "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING";
    case 229:
      return "QUERY_IS_TOO_LARGE";
    case 241:
      return "MEMORY_LIMIT_EXCEEDED";
    case 291:
      return "DATABASE_ACCESS_DENIED";
    case 394:
      return "QUERY_WAS_CANCELLED";
    case 395:
      return "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO";
    case 396:
      return "TOO_MANY_ROWS_OR_BYTES";
    case 439:
      return "CANNOT_SCHEDULE_TASK";
    case 497:
      return "ACCESS_DENIED";
    case 516:
      return "AUTHENTICATION_FAILED";
    default:
      return "STD_EXCEPTION";
  }
}

// The status ClickHouse's exceptionCodeToHTTPStatus gives a code (subset).
int StatusForCode(int code) {
  switch (code) {
    case 194:
      return 401;
    case 192:
    case 193:
    case 516:
    case 512:
    case 497:
      return 403;
    case 36:
    case 62:
    case 456:
    case 457:
    case 6:
    case 27:
    case 38:
    case 41:
    case 53:
    case 117:
    case 321:
      return 400;
    case 46:
    case 47:
    case 50:
    case 60:
    case 73:
    case 81:
    case 115:
    case 511:
      return 404;
    case 229:
      return 413;
    case 48:
      return 501;
    case 76:
    case 209:
    case 439:
      return 503;
    case 159:
      return 408;
    default:
      return 500;
  }
}

// --- Encoding ---------------------------------------------------------------------------

void AppendLeb128(std::string& out, uint64_t v) {
  do {
    unsigned char b = v & 0x7F;
    v >>= 7;
    if (v != 0) b |= 0x80;
    out.push_back(static_cast<char>(b));
  } while (v != 0);
}

void AppendString(std::string& out, std::string_view s) {
  AppendLeb128(out, s.size());
  out.append(s);
}

void AppendLe(std::string& out, uint64_t v, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

// Decimal digits (optionally '-') -> `bytes` little-endian two's complement.
absl::StatusOr<std::string> DigitsToLe(std::string_view text, size_t bytes, bool is_signed) {
  bool neg = false;
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) {
    neg = text[0] == '-';
    text.remove_prefix(1);
  }
  if (text.empty() ||
      !std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); })) {
    return absl::InvalidArgumentError(fmt::format("\"{}\" is not an integer", text));
  }
  if (neg && !is_signed && text.find_first_not_of('0') != std::string_view::npos) {
    return absl::InvalidArgumentError("negative value for an unsigned type");
  }
  std::vector<uint32_t> limbs((bytes + 3) / 4 + 1, 0);
  for (char c : text) {
    uint64_t carry = static_cast<uint64_t>(c - '0');
    for (uint32_t& limb : limbs) {
      uint64_t x = static_cast<uint64_t>(limb) * 10 + carry;
      limb = static_cast<uint32_t>(x);
      carry = x >> 32;
    }
    if (carry != 0) return absl::InvalidArgumentError("integer out of range");
  }
  std::string full;
  for (uint32_t limb : limbs) AppendLe(full, limb, 4);
  for (size_t i = bytes; i < full.size(); ++i) {
    if (full[i] != 0) return absl::InvalidArgumentError("integer out of range");
  }
  std::string out = full.substr(0, bytes);
  if (is_signed && (static_cast<unsigned char>(out.back()) & 0x80) != 0) {
    // Only -2^(8*bytes-1) has its top bit set before negation.
    const bool min_value = neg && static_cast<unsigned char>(out.back()) == 0x80 &&
                           std::all_of(out.begin(), out.end() - 1, [](char c) { return c == 0; });
    if (!min_value) return absl::InvalidArgumentError("integer out of range");
  }
  if (neg) {
    unsigned carry = 1;
    for (char& c : out) {
      unsigned x = static_cast<unsigned char>(~static_cast<unsigned char>(c)) + carry;
      c = static_cast<char>(x & 0xFF);
      carry = x >> 8;
    }
  }
  return out;
}

std::optional<int64_t> ParseDate(std::string_view s) {
  int y, m, d;
  if (s.size() < 10 ||
      std::sscanf(std::string(s.substr(0, 10)).c_str(), "%4d-%2d-%2d", &y, &m, &d) != 3) {
    return std::nullopt;
  }
  return DaysFromCivil(y, m, d);
}

// "YYYY-MM-DD[ T]hh:mm:ss[.frac][Z]" in `tz` (or UTC with 'Z') -> ticks of
// 10^-precision seconds; an integer is epoch seconds.
absl::StatusOr<int64_t> ParseDateTime(const json& v, const std::string& tz_name, int precision) {
  int64_t unit = 1;
  for (int i = 0; i < precision; ++i) unit *= 10;
  if (v.is_number_integer()) return v.get<int64_t>() * unit;
  if (v.is_number_float()) return static_cast<int64_t>(std::llround(v.get<double>() * unit));
  if (!v.is_string()) return absl::InvalidArgumentError("not a date-time");
  std::string s = v.get<std::string>();
  bool utc = !s.empty() && s.back() == 'Z';
  if (utc) s.pop_back();
  int y, mo, d, h = 0, mi = 0, sec = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2d%*c%2d:%2d:%2d", &y, &mo, &d, &h, &mi, &sec) < 3) {
    return absl::InvalidArgumentError(fmt::format("\"{}\" is not a date-time", s));
  }
  int64_t frac = 0;
  if (size_t dot = s.find('.'); dot != std::string::npos) {
    std::string f = s.substr(dot + 1);
    f.resize(static_cast<size_t>(precision), '0');
    if (precision > 0) frac = std::stoll(f);
  }
  absl::TimeZone tz = absl::UTCTimeZone();
  if (!utc && !tz_name.empty() && !absl::LoadTimeZone(tz_name, &tz)) {
    return absl::InvalidArgumentError(fmt::format("unknown time zone {}", tz_name));
  }
  absl::Time t = absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, sec), tz);
  return absl::ToUnixSeconds(t) * unit + frac;
}

json AsJson(const json& v) {
  if (v.is_string()) {
    json parsed = json::parse(v.get<std::string>(), nullptr, false);
    if (!parsed.is_discarded()) return parsed;
  }
  return v;
}

std::string Text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "1" : "0";
  return v.dump();
}

absl::Status Encode(const ClickHouseType& t, const json& v, std::string& out);

// Decimal text -> scaled integer digits.
absl::StatusOr<std::string> ScaledDigits(std::string text, int scale) {
  bool neg = false;
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) {
    neg = text[0] == '-';
    text.erase(0, 1);
  }
  if (text.find_first_of("eE") != std::string::npos) {
    return absl::InvalidArgumentError("exponent in a decimal (store decimals as text)");
  }
  size_t dot = text.find('.');
  std::string whole = dot == std::string::npos ? text : text.substr(0, dot);
  std::string frac = dot == std::string::npos ? "" : text.substr(dot + 1);
  frac.resize(static_cast<size_t>(scale), '0');
  std::string digits = whole + frac;
  size_t nz = digits.find_first_not_of('0');
  digits = nz == std::string::npos ? "0" : digits.substr(nz);
  return (neg && digits != "0" ? "-" : "") + digits;
}

absl::Status Encode(const ClickHouseType& t, const json& v, std::string& out) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        fmt::format("cannot store {} as {}: {}", v.dump(), t.name, why));
  };
  if (t.kind == Kind::kNullable) {
    if (v.is_null()) {
      out.push_back(1);
      return absl::OkStatus();
    }
    out.push_back(0);
    return Encode(t.elements[0], v, out);
  }
  if (v.is_null()) {
    if (t.kind == Kind::kNothing) return absl::OkStatus();
    return bad("NULL in a column that is not Nullable");
  }
  switch (t.kind) {
    case Kind::kInt:
    case Kind::kUInt:
    case Kind::kInterval: {
      std::string text = v.is_boolean() ? (v.get<bool>() ? "1" : "0") : Text(v);
      auto le = DigitsToLe(text, static_cast<size_t>(t.size), t.kind != Kind::kUInt);
      if (!le.ok()) return bad(std::string(le.status().message()));
      out += *le;
      return absl::OkStatus();
    }
    case Kind::kFloat32:
    case Kind::kFloat64:
    case Kind::kBFloat16: {
      double d;
      if (v.is_number()) {
        d = v.get<double>();
      } else {
        std::string s = Lower(Text(v));
        if (s == "nan") {
          d = std::nan("");
        } else if (s == "inf" || s == "+inf") {
          d = HUGE_VAL;
        } else if (s == "-inf") {
          d = -HUGE_VAL;
        } else {
          d = std::strtod(s.c_str(), nullptr);
        }
      }
      if (t.kind == Kind::kFloat64) {
        uint64_t bits;
        std::memcpy(&bits, &d, 8);
        AppendLe(out, bits, 8);
      } else {
        float f = static_cast<float>(d);
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        if (t.kind == Kind::kBFloat16) {
          AppendLe(out, bits >> 16, 2);
        } else {
          AppendLe(out, bits, 4);
        }
      }
      return absl::OkStatus();
    }
    case Kind::kBool: {
      std::string s = Lower(Text(v));
      if (s == "1" || s == "true") {
        out.push_back(1);
      } else if (s == "0" || s == "false") {
        out.push_back(0);
      } else {
        return bad("not a boolean");
      }
      return absl::OkStatus();
    }
    case Kind::kDecimal: {
      auto digits = ScaledDigits(v.is_number_float() ? v.dump() : Text(v), t.scale);
      if (!digits.ok()) return bad(std::string(digits.status().message()));
      auto le = DigitsToLe(*digits, static_cast<size_t>(t.size), true);
      if (!le.ok()) return bad(std::string(le.status().message()));
      out += *le;
      return absl::OkStatus();
    }
    case Kind::kString:
      AppendString(out, Text(v));
      return absl::OkStatus();
    case Kind::kFixedString: {
      std::string s = Text(v);
      if (s.size() > static_cast<size_t>(t.size)) return bad("too long");
      s.resize(static_cast<size_t>(t.size), '\0');
      out += s;
      return absl::OkStatus();
    }
    case Kind::kDate:
    case Kind::kDate32: {
      std::optional<int64_t> days = ParseDate(Text(v));
      if (!days) return bad("not YYYY-MM-DD");
      if (t.kind == Kind::kDate) {
        if (*days < 0 || *days > 65535) return bad("outside Date's range");
        AppendLe(out, static_cast<uint64_t>(*days), 2);
      } else {
        AppendLe(out, static_cast<uint64_t>(*days), 4);
      }
      return absl::OkStatus();
    }
    case Kind::kDateTime:
    case Kind::kDateTime64: {
      // The fake's server time zone applies when the column has none.
      absl::StatusOr<int64_t> ticks =
          ParseDateTime(v, t.timezone, t.kind == Kind::kDateTime64 ? t.scale : 0);
      if (!ticks.ok()) return bad(std::string(ticks.status().message()));
      if (t.kind == Kind::kDateTime) {
        if (*ticks < 0 || *ticks > 0xFFFFFFFFLL) return bad("outside DateTime's range");
        AppendLe(out, static_cast<uint64_t>(*ticks), 4);
      } else {
        AppendLe(out, static_cast<uint64_t>(*ticks), 8);
      }
      return absl::OkStatus();
    }
    case Kind::kUuid: {
      std::string hex;
      for (char c : Text(v)) {
        if (c != '-') hex.push_back(c);
      }
      if (hex.size() != 32) return bad("not a UUID");
      std::string bytes;
      for (size_t i = 0; i < 32; i += 2) {
        bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
      }
      // Each half is a little-endian UInt64.
      std::reverse(bytes.begin(), bytes.begin() + 8);
      std::reverse(bytes.begin() + 8, bytes.end());
      out += bytes;
      return absl::OkStatus();
    }
    case Kind::kIpv4: {
      in_addr a{};
      if (inet_pton(AF_INET, Text(v).c_str(), &a) != 1) return bad("not an IPv4 address");
      AppendLe(out, ntohl(a.s_addr), 4);
      return absl::OkStatus();
    }
    case Kind::kIpv6: {
      std::string s = Text(v);
      in6_addr a{};
      if (inet_pton(AF_INET6, s.c_str(), &a) != 1) {
        in_addr a4{};
        if (inet_pton(AF_INET, s.c_str(), &a4) != 1) return bad("not an IP address");
        std::memset(&a, 0, sizeof(a));
        a.s6_addr[10] = 0xFF;
        a.s6_addr[11] = 0xFF;
        std::memcpy(&a.s6_addr[12], &a4, 4);
      }
      out.append(reinterpret_cast<const char*>(&a), 16);
      return absl::OkStatus();
    }
    case Kind::kEnum8:
    case Kind::kEnum16: {
      for (const auto& [label, value] : t.enum_values) {
        if ((v.is_string() && v.get<std::string>() == label) ||
            (v.is_number_integer() && v.get<int64_t>() == value)) {
          AppendLe(out, static_cast<uint64_t>(value), static_cast<size_t>(t.size));
          return absl::OkStatus();
        }
      }
      return bad("not one of the enum's values");
    }
    case Kind::kNothing:
      return bad("Nothing holds no values");
    case Kind::kArray: {
      json a = AsJson(v);
      if (!a.is_array()) return bad("not a JSON array");
      AppendLeb128(out, a.size());
      for (const json& e : a) {
        if (absl::Status s = Encode(t.elements[0], e, out); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    case Kind::kMap: {
      json m = AsJson(v);
      if (!m.is_object()) return bad("not a JSON object");
      AppendLeb128(out, m.size());
      for (auto& [key, value] : m.items()) {
        const bool numeric_key =
            t.elements[0].kind == Kind::kInt || t.elements[0].kind == Kind::kUInt;
        json k = numeric_key ? json::parse(key, nullptr, false) : json(key);
        if (k.is_discarded()) return bad("a map key that does not fit the key type");
        if (absl::Status s = Encode(t.elements[0], k, out); !s.ok()) return s;
        if (absl::Status s = Encode(t.elements[1], value, out); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    case Kind::kTuple: {
      json tu = AsJson(v);
      for (size_t i = 0; i < t.elements.size(); ++i) {
        json e;
        if (tu.is_array() && i < tu.size()) {
          e = tu[i];
        } else if (tu.is_object() && !t.element_names.empty() && tu.contains(t.element_names[i])) {
          e = tu[t.element_names[i]];
        } else {
          return bad("a tuple needs a JSON array (or an object for named tuples)");
        }
        if (absl::Status s = Encode(t.elements[i], e, out); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    case Kind::kVariant: {
      // The first type (in discriminant order) that takes the value; String
      // only takes JSON strings unless nothing else fits.
      for (int pass = 0; pass < 2; ++pass) {
        for (size_t i = 0; i < t.elements.size(); ++i) {
          const bool textual =
              t.elements[i].kind == Kind::kString || t.elements[i].kind == Kind::kFixedString;
          if (pass == 0 && textual && !v.is_string()) continue;
          std::string attempt;
          if (Encode(t.elements[i], v, attempt).ok()) {
            out.push_back(static_cast<char>(i));
            out += attempt;
            return absl::OkStatus();
          }
        }
      }
      return bad("no variant takes the value");
    }
    case Kind::kJsonString:
      AppendString(out, AsJson(v).dump());
      return absl::OkStatus();
    case Kind::kNullable:
      break;
  }
  return bad("unsupported");
}

std::string TsvEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

bool Is64BitOrWider(const ClickHouseType& t) {
  const ClickHouseType& base = t.kind == Kind::kNullable ? t.elements[0] : t;
  return (base.kind == Kind::kInt || base.kind == Kind::kUInt) && base.size >= 8;
}

const std::set<std::string>& KnownSettings() {
  static const std::set<std::string> kSettings = {"readonly",
                                                  "max_execution_time",
                                                  "cancel_http_readonly_queries_on_client_close",
                                                  "enable_http_compression",
                                                  "output_format_binary_write_json_as_string",
                                                  "max_result_rows",
                                                  "max_result_bytes",
                                                  "result_overflow_mode",
                                                  "wait_end_of_query",
                                                  "http_write_exception_in_output_format",
                                                  "max_block_size",
                                                  "replace_running_query",
                                                  "send_progress_in_http_headers",
                                                  "max_threads",
                                                  "max_memory_usage",
                                                  "http_response_buffer_size",
                                                  "buffer_size",
                                                  "output_format_json_quote_64bit_integers",
                                                  "output_format_json_quote_decimals",
                                                  "session_timezone",
                                                  "date_time_output_format",
                                                  "max_rows_to_read",
                                                  "log_comment",
                                                  "use_query_cache",
                                                  "join_use_nulls",
                                                  "http_headers_progress_interval_ms",
                                                  "max_bytes_before_external_sort",
                                                  "max_bytes_before_external_group_by",
                                                  "http_zlib_compression_level"};
  return kSettings;
}

bool IsParameter(const std::string& name) {
  static const std::set<std::string> kParams = {
      "query",      "database",        "user",          "password",  "query_id", "default_format",
      "session_id", "session_timeout", "session_check", "quota_key", "role",     "compress",
      "decompress"};
  return kParams.count(name) != 0 || name.starts_with("param_");
}

// --- The ClickHouse forms the fake translates to SQLite (see the header) ---------------

// A statement after translation.
struct Translated {
  std::string sql;                                     // SQLite SQL
  std::map<std::string, std::string> parameter_types;  // {name:Type} placeholders
  // CREATE DATABASE: done by the fake itself.
  std::string create_database;
  bool if_not_exists = false;
  // CREATE TABLE with a column list: the table ("db.table") and its types.
  std::string table;
  std::vector<std::pair<std::string, std::string>> columns;
  // CREATE TABLE ... AS SELECT: the table and the SELECT (for the types).
  std::string ctas_select;
  // DROP TABLE: the table forgotten.
  std::string dropped;
};

// "db.t" / "t" with the session's database, lowercase, unquoted.
std::string QualifiedName(std::string name, const std::string& database) {
  name.erase(std::remove_if(name.begin(), name.end(), [](char c) { return c == '`' || c == '"'; }),
             name.end());
  if (name.find('.') == std::string::npos) name = database + "." + name;
  return Lower(name);
}

// Splits `text` at top-level commas.
std::vector<std::string> SplitTopLevel(std::string_view text) {
  std::vector<std::string> out;
  int depth = 0;
  std::string cur;
  for (char c : text) {
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (c == ',' && depth == 0) {
      out.push_back(TrimCopy(cur));
      cur.clear();
      continue;
    }
    cur.push_back(c);
  }
  if (!TrimCopy(cur).empty()) out.push_back(TrimCopy(cur));
  return out;
}

// {name:Type} placeholders (outside quotes) become SQLite :name parameters.
std::string NamedParameters(const std::string& sql, std::map<std::string, std::string>& types) {
  std::string out;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c == '\'' || c == '"' || c == '`') {
      size_t j = i + 1;
      while (j < sql.size() && sql[j] != c) j += sql[j] == '\\' ? 2 : 1;
      j = std::min(j, sql.size() - 1);
      out.append(sql, i, j - i + 1);
      i = j;
      continue;
    }
    static const std::regex kParam(R"(^\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([^{}]+?)\s*\})");
    std::smatch m;
    std::string rest = sql.substr(i, std::min<size_t>(200, sql.size() - i));
    if (c == '{' && std::regex_search(rest, m, kParam)) {
      types[m[1].str()] = m[2].str();
      out += ":" + m[1].str();
      i += static_cast<size_t>(m.length(0)) - 1;
      continue;
    }
    out.push_back(c);
  }
  return out;
}

// Translates the ClickHouse forms; 0, or an exception code with `message`.
int TranslateClickHouse(const std::string& sql, const std::string& database, Translated& t,
                        std::string& message) {
  t.sql = NamedParameters(sql, t.parameter_types);
  std::smatch m;
  static const std::regex kCreateDatabase(
      R"(^CREATE\s+DATABASE\s+(IF\s+NOT\s+EXISTS\s+)?`?([A-Za-z_][A-Za-z0-9_]*)`?$)",
      std::regex::icase);
  if (std::regex_match(t.sql, m, kCreateDatabase)) {
    t.if_not_exists = m[1].matched;
    t.create_database = m[2].str();
    return 0;
  }
  static const std::regex kEngine(
      R"(\s*ENGINE\s*=\s*(\w+)\s*(\([^()]*\))?\s*ORDER\s+BY\s+(tuple\(\)|\([^()]*\)|\w+)\s*)",
      std::regex::icase);
  static const std::regex kCreateAs(
      R"(^CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?([\w.`"]+)\s+AS\s+(SELECT[\s\S]*)$)",
      std::regex::icase);
  static const std::regex kCreateColumns(
      R"(^CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?([\w.`"]+)\s*\(([\s\S]*)\)\s*$)",
      std::regex::icase);
  static const std::regex kCreate(R"(^CREATE\s+TABLE\b)", std::regex::icase);
  if (std::regex_search(t.sql, kCreate)) {
    std::smatch e;
    if (!std::regex_search(t.sql, e, kEngine)) {
      message = "Table engine is not specified in CREATE query";
      return 119;
    }
    if (Lower(e[1].str()).find("mergetree") == std::string::npos) {
      message = fmt::format("the fake knows only MergeTree engines, not {}", e[1].str());
      return 36;
    }
    const std::string stripped =
        std::regex_replace(t.sql, kEngine, " ", std::regex_constants::format_first_only);
    if (std::regex_match(stripped, m, kCreateAs)) {
      t.table = QualifiedName(m[2].str(), database);
      t.ctas_select = m[3].str();
      t.sql = stripped;
    } else if (std::regex_match(stripped, m, kCreateColumns)) {
      t.table = QualifiedName(m[2].str(), database);
      std::string names;
      for (const std::string& def : SplitTopLevel(m[3].str())) {
        size_t space = def.find_first_of(" \t\n");
        if (space == std::string::npos) {
          message = fmt::format("Syntax error: the column {} has no type", def);
          return 62;
        }
        t.columns.emplace_back(def.substr(0, space), TrimCopy(def.substr(space)));
        names += fmt::format("{}\"{}\"", names.empty() ? "" : ", ", t.columns.back().first);
      }
      t.sql = fmt::format("CREATE TABLE {}{} ({})", m[1].matched ? "IF NOT EXISTS " : "",
                          m[2].str(), names);
    } else {
      message =
          "Syntax error: the fake understands CREATE TABLE t (cols) ENGINE = ... ORDER BY ... "
          "and CREATE TABLE t ENGINE = ... ORDER BY ... AS SELECT ...";
      return 62;
    }
  }
  static const std::regex kDrop(R"(^DROP\s+TABLE\s+(IF\s+EXISTS\s+)?([\w.`"]+)\s*$)",
                                std::regex::icase);
  if (std::regex_match(t.sql, m, kDrop)) t.dropped = QualifiedName(m[2].str(), database);
  static const std::regex kUnionDistinct(R"(\bUNION\s+DISTINCT\b)", std::regex::icase);
  t.sql = std::regex_replace(t.sql, kUnionDistinct, "UNION");
  // The rows of a JSON array: arrayJoin(JSONExtractArrayRaw(x)) in a SELECT
  // without FROM, each element's JSON text.
  static const std::regex kArrayJoin(
      R"(SELECT\s+arrayJoin\s*\(\s*JSONExtractArrayRaw\s*\(\s*([^()]+?)\s*\)\s*\)\s+AS\s+(\w+)\s*\))",
      std::regex::icase);
  t.sql = std::regex_replace(t.sql, kArrayJoin,
                             "SELECT ($1) -> json_each.fullkey AS $2 FROM json_each($1))");
  if (!t.ctas_select.empty() && std::regex_match(t.sql, m, kCreateAs)) t.ctas_select = m[3].str();
  return 0;
}

std::string ValueText(sqlite3_value* v) {
  const void* p = sqlite3_value_type(v) == SQLITE_BLOB
                      ? sqlite3_value_blob(v)
                      : static_cast<const void*>(sqlite3_value_text(v));
  const int n = sqlite3_value_bytes(v);
  return p == nullptr ? std::string()
                      : std::string(static_cast<const char*>(p), static_cast<size_t>(n));
}

// toString(x): NULL stays NULL.
void ToStringFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return sqlite3_result_null(ctx);
  std::string text = ValueText(argv[0]);
  sqlite3_result_text(ctx, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

// length(s): bytes, as ClickHouse counts them.
void LengthFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return sqlite3_result_null(ctx);
  sqlite3_result_int64(ctx, static_cast<int64_t>(ValueText(argv[0]).size()));
}

// MD5(s): the 16 bytes of the digest.
void Md5Function(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return sqlite3_result_null(ctx);
  const std::string text = ValueText(argv[0]);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest, &length, EVP_md5(), nullptr);
  sqlite3_result_blob(ctx, digest, static_cast<int>(length), SQLITE_TRANSIENT);
}

// concat(a, ...): NULL if any argument is NULL.
void ConcatFunction(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    if (sqlite3_value_type(argv[i]) == SQLITE_NULL) return sqlite3_result_null(ctx);
    out += ValueText(argv[i]);
  }
  sqlite3_result_text(ctx, out.data(), static_cast<int>(out.size()), SQLITE_TRANSIENT);
}

void AssumeNotNullFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) {
    return sqlite3_result_text(ctx, "", 0, SQLITE_STATIC);  // the type's default
  }
  sqlite3_result_value(ctx, argv[0]);
}

// toInt64(s): decimal text (0 when it is not a number, like toInt64OrZero).
void ToInt64Function(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return sqlite3_result_null(ctx);
  const std::string text = ValueText(argv[0]);
  int64_t v = 0;
  std::from_chars(text.data(), text.data() + text.size(), v);
  sqlite3_result_int64(ctx, v);
}

// JSONExtractString(json[, index]): the string (at the 1-based index of an
// array), '' when absent or not a string.
void JsonExtractStringFunction(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  json doc = json::parse(ValueText(argv[0]), nullptr, false);
  if (argc == 2 && doc.is_array()) {
    const int64_t i = sqlite3_value_int64(argv[1]);
    const int64_t n = static_cast<int64_t>(doc.size());
    const int64_t at = i > 0 ? i - 1 : n + i;
    doc = at >= 0 && at < n ? doc[static_cast<size_t>(at)] : json();
  } else if (argc == 2) {
    doc = json();
  }
  const std::string out = doc.is_string() ? doc.get<std::string>() : std::string();
  sqlite3_result_text(ctx, out.data(), static_cast<int>(out.size()), SQLITE_TRANSIENT);
}

// JSONExtract(json, 'Array(String)'): the array, carried as JSON text (the
// fake has no array values); [] when `json` is not an array of strings, as
// ClickHouse gives the type's default. Other types are an error.
void JsonExtractFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (ValueText(argv[1]) != "Array(String)") {
    return sqlite3_result_error(ctx, "the fake's JSONExtract knows only 'Array(String)'", -1);
  }
  json doc = json::parse(ValueText(argv[0]), nullptr, false);
  bool strings = doc.is_array();
  for (const json& item : strings ? doc : json::array()) strings = strings && item.is_string();
  const std::string out = strings ? doc.dump() : "[]";
  sqlite3_result_text(ctx, out.data(), static_cast<int>(out.size()), SQLITE_TRANSIENT);
}

// has(array, x): whether the array (JSON text of strings, from JSONExtract)
// holds x.
void HasFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[1]) == SQLITE_NULL) return sqlite3_result_int(ctx, 0);
  json doc = json::parse(ValueText(argv[0]), nullptr, false);
  const std::string x = ValueText(argv[1]);
  bool found = false;
  for (const json& item : doc.is_array() ? doc : json::array()) {
    found = found || (item.is_string() && item.get<std::string>() == x);
  }
  sqlite3_result_int(ctx, found ? 1 : 0);
}

// argMax(value, version): the value of the row with the largest version.
struct ArgMaxState {
  bool set = false;
  sqlite3_value* value = nullptr;
  sqlite3_value* version = nullptr;
};
void ArgMaxStep(sqlite3_context* ctx, int, sqlite3_value** argv) {
  auto* st = static_cast<ArgMaxState*>(sqlite3_aggregate_context(ctx, sizeof(ArgMaxState)));
  if (st == nullptr) return;
  bool take = !st->set;
  if (!take) {
    take = sqlite3_value_type(argv[1]) == SQLITE_INTEGER &&
           sqlite3_value_int64(argv[1]) > sqlite3_value_int64(st->version);
  }
  if (!take) return;
  sqlite3_value_free(st->value);
  sqlite3_value_free(st->version);
  st->value = sqlite3_value_dup(argv[0]);
  st->version = sqlite3_value_dup(argv[1]);
  st->set = true;
}
void ArgMaxFinal(sqlite3_context* ctx) {
  auto* st = static_cast<ArgMaxState*>(sqlite3_aggregate_context(ctx, 0));
  if (st == nullptr || !st->set) return sqlite3_result_null(ctx);
  sqlite3_result_value(ctx, st->value);
  sqlite3_value_free(st->value);
  sqlite3_value_free(st->version);
}
}  // namespace

// --- State ----------------------------------------------------------------------------------

struct FakeClickHouseServer::Session {
  std::string user;
  std::string database;
};

struct FakeClickHouseServer::Run {
  ClickHouseQueryLog log;
  Session session;
  std::vector<std::string> names;
  std::vector<std::string> type_texts;
  std::vector<ClickHouseType> types;
  std::vector<std::vector<json>> rows;
  // Where the query fails mid-stream (rows before it are sent), or -1.
  int64_t fail_at_row = -1;
  int fail_code = 0;
  std::string fail_message;
  std::string tag;
  bool gzip = false;
  bool cancel_on_close = false;
  // Streaming state (guarded by the server's mutex).
  bool header_sent = false;
  int64_t next_row = 0;
  int64_t stall_after = -1;
  uint64_t release_generation = 0;
  bool held = false;  // waiting before its headers (StallBeforeHeaders)
  bool killed = false;
  bool client_gone = false;
  bool ended = false;
  int64_t bytes_produced = 0;
  std::shared_ptr<z_stream> zs;
  // The SQLite SQL (empty: log.sql) and its parameters: name -> (type, value).
  std::string exec_sql;
  std::map<std::string, std::pair<std::string, std::string>> bindings;
};

struct FakeClickHouseSqlFunctions {
  static void Version(sqlite3_context* ctx, int, sqlite3_value**) {
    auto* self = static_cast<FakeClickHouseServer*>(sqlite3_user_data(ctx));
    sqlite3_result_text(ctx, self->options_.version.c_str(), -1, SQLITE_TRANSIENT);
  }
  static void CurrentUser(sqlite3_context* ctx, int, sqlite3_value**) {
    auto* self = static_cast<FakeClickHouseServer*>(sqlite3_user_data(ctx));
    const auto* s = self->current_session_;
    sqlite3_result_text(ctx, s ? s->user.c_str() : "default", -1, SQLITE_TRANSIENT);
  }
  static void CurrentDatabase(sqlite3_context* ctx, int, sqlite3_value**) {
    auto* self = static_cast<FakeClickHouseServer*>(sqlite3_user_data(ctx));
    const auto* s = self->current_session_;
    sqlite3_result_text(ctx, s ? s->database.c_str() : "default", -1, SQLITE_TRANSIENT);
  }
  static void Timezone(sqlite3_context* ctx, int, sqlite3_value**) {
    auto* self = static_cast<FakeClickHouseServer*>(sqlite3_user_data(ctx));
    sqlite3_result_text(ctx, self->options_.server_timezone.c_str(), -1, SQLITE_TRANSIENT);
  }
  static void ThrowIf(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
    if (sqlite3_value_int64(argv[0]) != 0) {
      std::string msg = argc > 1 && sqlite3_value_type(argv[1]) == SQLITE_TEXT
                            ? reinterpret_cast<const char*>(sqlite3_value_text(argv[1]))
                            : "Value passed to 'throwIf' function is non-zero";
      std::string full = "__throwIf__:" + msg;
      sqlite3_result_error(ctx, full.c_str(), -1);
      return;
    }
    sqlite3_result_int(ctx, 0);
  }
  static int Authorizer(void* user, int action, const char* table, const char*,
                        const char* database, const char*) {
    auto* self = static_cast<FakeClickHouseServer*>(user);
    if (action == SQLITE_READ && table != nullptr &&
        !std::string_view(table).starts_with("sqlite_")) {
      std::string db = database == nullptr || std::string_view(database) == "main"
                           ? "default"
                           : std::string(database);
      self->tables_read_.insert(Lower(db + "." + table));
    }
    return SQLITE_OK;
  }
  static void Register(FakeClickHouseServer* self, sqlite3* db) {
    sqlite3_create_function_v2(db, "version", 0, SQLITE_UTF8, self, &Version, nullptr, nullptr,
                               nullptr);
    sqlite3_create_function_v2(db, "currentUser", 0, SQLITE_UTF8, self, &CurrentUser, nullptr,
                               nullptr, nullptr);
    sqlite3_create_function_v2(db, "currentDatabase", 0, SQLITE_UTF8, self, &CurrentDatabase,
                               nullptr, nullptr, nullptr);
    sqlite3_create_function_v2(db, "timezone", 0, SQLITE_UTF8, self, &Timezone, nullptr, nullptr,
                               nullptr);
    sqlite3_create_function_v2(db, "throwIf", 1, SQLITE_UTF8, self, &ThrowIf, nullptr, nullptr,
                               nullptr);
    sqlite3_create_function_v2(db, "throwIf", 2, SQLITE_UTF8, self, &ThrowIf, nullptr, nullptr,
                               nullptr);
    const int pure = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
    struct Scalar {
      const char* name;
      int args;
      void (*fn)(sqlite3_context*, int, sqlite3_value**);
    };
    for (const Scalar& f :
         {Scalar{"toString", 1, &ToStringFunction}, Scalar{"length", 1, &LengthFunction},
          Scalar{"MD5", 1, &Md5Function}, Scalar{"concat", -1, &ConcatFunction},
          Scalar{"assumeNotNull", 1, &AssumeNotNullFunction},
          Scalar{"toInt64", 1, &ToInt64Function},
          Scalar{"JSONExtractString", 1, &JsonExtractStringFunction},
          Scalar{"JSONExtractString", 2, &JsonExtractStringFunction},
          Scalar{"JSONExtract", 2, &JsonExtractFunction}, Scalar{"has", 2, &HasFunction}}) {
      sqlite3_create_function_v2(db, f.name, f.args, pure, nullptr, f.fn, nullptr, nullptr,
                                 nullptr);
    }
    sqlite3_create_function_v2(db, "argMax", 2, pure, nullptr, nullptr, &ArgMaxStep, &ArgMaxFinal,
                               nullptr);
  }
};

FakeClickHouseFailure FakeClickHouseFailure::Before(int code, std::string message,
                                                    std::string match) {
  FakeClickHouseFailure f;
  f.code = code;
  f.message = std::move(message);
  f.match = std::move(match);
  return f;
}

FakeClickHouseFailure FakeClickHouseFailure::MidStream(int64_t after_rows, int code,
                                                       std::string message, std::string match) {
  FakeClickHouseFailure f = Before(code, std::move(message), std::move(match));
  f.after_rows = after_rows;
  return f;
}

FakeClickHouseFailure FakeClickHouseFailure::Reset(std::string match) {
  FakeClickHouseFailure f;
  f.match = std::move(match);
  f.reset_connection = true;
  return f;
}

FakeClickHouseServer::FakeClickHouseServer(FakeClickHouseOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {
  auto db = sqlite::Database::Open(":memory:", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (db.ok()) {
    db_ = *std::move(db);
    FakeClickHouseSqlFunctions::Register(this, db_->raw());
  }
}

FakeClickHouseServer::~FakeClickHouseServer() { Stop(); }

absl::Status FakeClickHouseServer::Start() {
  if (!db_) return absl::InternalError("the fake's SQLite database could not be opened");
  return server_.Start();
}

void FakeClickHouseServer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& run : runs_) {
      if (!run->ended && run->client_gone) Finish(*run, run->log.outcome);
    }
  }
  cv_.notify_all();
  server_.Stop();
}

std::string FakeClickHouseServer::BaseUrl() const {
  std::string url = server_.Url("/");
  url.pop_back();
  return url;
}

void FakeClickHouseServer::AddUser(FakeClickHouseUser user) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string name = user.name;
  users_[name] = std::move(user);
}

absl::Status FakeClickHouseServer::CreateDatabase(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  if (databases_.count(name) != 0) return absl::OkStatus();
  absl::Status s = db_->Exec(fmt::format("ATTACH DATABASE ':memory:' AS \"{}\"", name));
  if (s.ok()) databases_.insert(name);
  return s;
}

absl::Status FakeClickHouseServer::CreateTable(
    const std::string& database, const std::string& table,
    const std::vector<std::pair<std::string, std::string>>& columns) {
  std::lock_guard<std::mutex> lock(mu_);
  if (databases_.count(database) == 0) {
    return absl::InvalidArgumentError(fmt::format("no database {}", database));
  }
  std::string ddl =
      fmt::format("CREATE TABLE \"{}\".\"{}\" (", database == "default" ? "main" : database, table);
  auto& types = column_types_[Lower(database + "." + table)];
  for (size_t i = 0; i < columns.size(); ++i) {
    ClickHouseTypeOptions opts;
    opts.json_as_string = true;
    absl::StatusOr<ClickHouseType> t = ParseClickHouseType(columns[i].second, opts);
    if (!t.ok()) return t.status();
    types[Lower(columns[i].first)] = columns[i].second;
    ddl += fmt::format("{}\"{}\"", i ? ", " : "", columns[i].first);
  }
  ddl += ")";
  return db_->Exec(ddl);
}

absl::Status FakeClickHouseServer::Exec(const std::string& sql) {
  std::lock_guard<std::mutex> lock(mu_);
  return db_->Exec(sql);
}

void FakeClickHouseServer::set_block_rows(int64_t rows) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.block_rows = std::max<int64_t>(1, rows);
}

void FakeClickHouseServer::set_framing(ClickHouseExceptionFraming framing) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.framing = framing;
}

void FakeClickHouseServer::set_max_concurrent_queries(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.max_concurrent_queries = n;
}

void FakeClickHouseServer::FailNext(FakeClickHouseFailure failure) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_.push_back(std::move(failure));
}

void FakeClickHouseServer::StallAfterRows(int64_t rows) {
  std::lock_guard<std::mutex> lock(mu_);
  stall_after_rows_ = rows;
}

void FakeClickHouseServer::StallBeforeHeaders(bool on, std::string match) {
  std::lock_guard<std::mutex> lock(mu_);
  stall_before_headers_ = on;
  stall_match_ = std::move(match);
}

void FakeClickHouseServer::ReleaseStalled() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++release_generation_;
    stall_after_rows_ = -1;
    stall_before_headers_ = false;
    // A stalled query whose client left runs to its end with nobody reading.
    for (auto& run : runs_) {
      if (!run->ended && run->client_gone) Finish(*run, Outcome::kClientGone);
    }
  }
  cv_.notify_all();
}

std::vector<ClickHouseQueryLog> FakeClickHouseServer::Queries() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ClickHouseQueryLog> out;
  for (const auto& run : runs_) out.push_back(run->log);
  return out;
}

std::vector<ClickHouseKill> FakeClickHouseServer::Kills() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kills_;
}

int64_t FakeClickHouseServer::RunningQueries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(runs_.begin(), runs_.end(), [](const auto& r) { return !r->ended; });
}

std::optional<std::string> FakeClickHouseServer::WaitForHeldQuery(
    std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  std::optional<std::string> id;
  cv_.wait_for(lock, timeout, [&] {
    for (const auto& run : runs_) {
      if (run->held) id = run->log.query_id;
    }
    return id.has_value();
  });
  return id;
}

bool FakeClickHouseServer::WaitUntilIdle(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [this] {
    return std::none_of(runs_.begin(), runs_.end(), [](const auto& r) { return !r->ended; });
  });
}

int64_t FakeClickHouseServer::BytesProduced(const std::string& query_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& run : runs_) {
    if (run->log.query_id == query_id) return run->bytes_produced;
  }
  return 0;
}

absl::StatusOr<std::vector<std::vector<json>>> FakeClickHouseServer::Select(
    const std::string& sql) const {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<sqlite::Statement> stmt = db_->Prepare(sql);
  if (!stmt.ok()) return stmt.status();
  std::vector<std::vector<json>> rows;
  const int n = sqlite3_column_count(stmt->raw());
  while (true) {
    absl::StatusOr<bool> more = stmt->Step();
    if (!more.ok()) return more.status();
    if (!*more) break;
    std::vector<json> row;
    for (int i = 0; i < n; ++i) {
      switch (sqlite3_column_type(stmt->raw(), i)) {
        case SQLITE_INTEGER:
          row.emplace_back(stmt->ColumnInt(i));
          break;
        case SQLITE_FLOAT:
          row.emplace_back(stmt->ColumnDouble(i));
          break;
        case SQLITE_NULL:
          row.emplace_back(nullptr);
          break;
        default:
          row.emplace_back(std::string(stmt->ColumnText(i)));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

void FakeClickHouseServer::Finish(Run& run, Outcome outcome) {
  if (run.ended) return;
  run.ended = true;
  run.log.outcome = outcome;
  cv_.notify_all();
}

TestResponse FakeClickHouseServer::ErrorReply(int code, const std::string& message,
                                              const std::string& tag, int status_override) const {
  TestResponse r;
  r.status = status_override != 0 ? status_override : StatusForCode(code);
  r.headers.emplace_back("Content-Type", "text/plain; charset=UTF-8");
  r.headers.emplace_back("X-ClickHouse-Server-Display-Name", options_.display_name);
  r.headers.emplace_back("X-ClickHouse-Exception-Code", std::to_string(code));
  if (!tag.empty()) r.headers.emplace_back("X-ClickHouse-Exception-Tag", tag);
  r.body = fmt::format("Code: {}. DB::Exception: {}. ({}) (version {} (official build))\n", code,
                       message, ExceptionName(code), options_.version);
  return r;
}

int FakeClickHouseServer::Execute(Run& run, const Session& session, std::string& message) {
  sqlite3* db = db_->raw();
  tables_read_.clear();
  sqlite3_set_authorizer(db, &FakeClickHouseSqlFunctions::Authorizer, this);
  sqlite3_stmt* raw = nullptr;
  const char* tail = nullptr;
  const std::string& text = run.exec_sql.empty() ? run.log.sql : run.exec_sql;
  int rc = sqlite3_prepare_v2(db, text.c_str(), static_cast<int>(text.size()), &raw, &tail);
  sqlite3_set_authorizer(db, nullptr, nullptr);
  std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)> stmt(raw, &sqlite3_finalize);
  auto sqlite_error = [&](const std::string& err) {
    auto after = [&](std::string_view prefix) {
      return err.substr(err.find(prefix) + prefix.size());
    };
    if (err.find("no such table:") != std::string::npos) {
      message = fmt::format("Unknown table expression identifier '{}' in scope {}",
                            TrimCopy(after("no such table:")), run.log.sql);
      return 60;
    }
    if (err.find("no such column:") != std::string::npos) {
      message = fmt::format("Unknown expression identifier `{}` in scope {}",
                            TrimCopy(after("no such column:")), run.log.sql);
      return 47;
    }
    if (err.find("already exists") != std::string::npos) {
      message = fmt::format("Table {} already exists", TrimCopy(after("table")));
      return 57;
    }
    if (err.find("no such function:") != std::string::npos) {
      message = fmt::format("Function with name `{}` does not exist",
                            TrimCopy(after("no such function:")));
      return 46;
    }
    if (err.find("syntax error") != std::string::npos ||
        err.find("incomplete input") != std::string::npos) {
      message = fmt::format("Syntax error: failed at position 1 ({}): {}", err, run.log.sql);
      return 62;
    }
    message = err;
    return 1001;
  };
  if (rc != SQLITE_OK || !stmt) {
    if (rc == SQLITE_OK) {  // nothing but whitespace or comments
      message = "Empty query";
      return 211;
    }
    return sqlite_error(sqlite3_errmsg(db));
  }
  if (tail != nullptr && !TrimCopy(tail).empty()) {
    message = "Syntax error (Multi-statements are not allowed)";
    return 62;
  }
  // Query parameters.
  for (int i = 1; i <= sqlite3_bind_parameter_count(stmt.get()); ++i) {
    const char* name = sqlite3_bind_parameter_name(stmt.get(), i);
    auto it = name == nullptr ? run.bindings.end() : run.bindings.find(name + 1);
    if (it == run.bindings.end()) {
      message = "Query parameter without a {name:Type} placeholder";
      return 456;
    }
    const auto& [type, value] = it->second;
    if (type.starts_with("Int") || type.starts_with("UInt")) {
      int64_t v = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
      if (ec != std::errc() || end != value.data() + value.size()) {
        message =
            fmt::format("Cannot parse input: expected {} for query parameter {}", type, it->first);
        return 457;
      }
      sqlite3_bind_int64(stmt.get(), i, v);
    } else {
      sqlite3_bind_text(stmt.get(), i, value.data(), static_cast<int>(value.size()),
                        SQLITE_TRANSIENT);
    }
  }
  // Grants.
  const FakeClickHouseUser& user = users_[session.user];
  if (!user.grants.empty()) {
    for (const std::string& table : tables_read_) {
      if (user.grants.count(table) == 0) {
        message = fmt::format(
            "{}: Not enough privileges. To execute this query, it's necessary to have the grant "
            "SELECT ON {}",
            session.user, table);
        return 497;
      }
    }
  }
  const int n = sqlite3_column_count(stmt.get());
  for (int i = 0; i < n; ++i) {
    run.names.push_back(sqlite3_column_name(stmt.get(), i));
    std::string type;
    const char* table = sqlite3_column_table_name(stmt.get(), i);
    const char* origin = sqlite3_column_origin_name(stmt.get(), i);
    const char* dbname = sqlite3_column_database_name(stmt.get(), i);
    if (table != nullptr && origin != nullptr) {
      std::string db_name =
          dbname == nullptr || std::string_view(dbname) == "main" ? "default" : std::string(dbname);
      auto t = column_types_.find(Lower(db_name + "." + table));
      if (t != column_types_.end()) {
        auto c = t->second.find(Lower(origin));
        if (c != t->second.end()) type = c->second;
      }
    }
    run.type_texts.push_back(type);
  }
  current_session_ = &session;
  int failure = 0;
  while (true) {
    rc = sqlite3_step(stmt.get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) {
      current_session_ = nullptr;
      std::string err = sqlite3_errmsg(db);
      if (!err.starts_with("__throwIf__:")) return sqlite_error(err);
      // The rows before it exist; the caller decides whether any was sent.
      message = err.substr(12);
      run.fail_at_row = static_cast<int64_t>(run.rows.size());
      failure = 395;
      break;
    }
    std::vector<json> row;
    for (int i = 0; i < n; ++i) {
      switch (sqlite3_column_type(stmt.get(), i)) {
        case SQLITE_INTEGER:
          row.emplace_back(static_cast<int64_t>(sqlite3_column_int64(stmt.get(), i)));
          break;
        case SQLITE_FLOAT:
          row.emplace_back(sqlite3_column_double(stmt.get(), i));
          break;
        case SQLITE_NULL:
          row.emplace_back(nullptr);
          break;
        default: {
          const void* p = sqlite3_column_blob(stmt.get(), i);
          int len = sqlite3_column_bytes(stmt.get(), i);
          row.emplace_back(std::string(static_cast<const char*>(p), static_cast<size_t>(len)));
        }
      }
    }
    run.rows.push_back(std::move(row));
  }
  current_session_ = nullptr;
  // Types of computed columns come from their values.
  for (int i = 0; i < n; ++i) {
    if (!run.type_texts[i].empty()) continue;
    std::string base;
    bool has_null = false;
    for (const auto& row : run.rows) {
      const json& v = row[static_cast<size_t>(i)];
      if (v.is_null()) {
        has_null = true;
      } else if (base.empty() || base == "Int64") {
        base = v.is_number_integer() ? "Int64" : v.is_number_float() ? "Float64" : "String";
      } else if (base == "Float64" && v.is_string()) {
        base = "String";
      }
    }
    if (base.empty()) {
      run.type_texts[i] = "Nullable(Nothing)";
    } else {
      run.type_texts[i] = has_null ? "Nullable(" + base + ")" : base;
    }
  }
  for (const std::string& text : run.type_texts) {
    ClickHouseTypeOptions opts;
    opts.json_as_string = true;
    absl::StatusOr<ClickHouseType> t = ParseClickHouseType(text, opts);
    if (!t.ok()) {
      message = std::string(t.status().message());
      return 50;
    }
    run.types.push_back(*std::move(t));
  }
  return failure;
}

void FakeClickHouseServer::RecordTypes(const std::string& table, const std::string& select) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db_->raw(), select.c_str(), static_cast<int>(select.size()), &raw,
                         nullptr) != SQLITE_OK) {
    sqlite3_finalize(raw);
    return;
  }
  std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)> stmt(raw, &sqlite3_finalize);
  auto& types = column_types_[table];
  types.clear();
  for (int i = 0; i < sqlite3_column_count(stmt.get()); ++i) {
    const char* origin_table = sqlite3_column_table_name(stmt.get(), i);
    const char* origin = sqlite3_column_origin_name(stmt.get(), i);
    const char* dbname = sqlite3_column_database_name(stmt.get(), i);
    if (origin_table == nullptr || origin == nullptr) continue;
    std::string db_name =
        dbname == nullptr || std::string_view(dbname) == "main" ? "default" : std::string(dbname);
    auto t = column_types_.find(Lower(db_name + "." + origin_table));
    if (t == column_types_.end()) continue;
    auto c = t->second.find(Lower(origin));
    if (c != t->second.end()) types[Lower(sqlite3_column_name(stmt.get(), i))] = c->second;
  }
}

TestResponse FakeClickHouseServer::Handle(const TestRequest& req) {
  // Target: path and parameters, in order.
  std::string path = req.target;
  std::vector<std::pair<std::string, std::string>> params;
  if (size_t q = path.find('?'); q != std::string::npos) {
    params = ParseQueryPairs(std::string_view(path).substr(q + 1));
    path.resize(q);
  }
  auto param = [&](const std::string& name) -> std::optional<std::string> {
    for (const auto& [k, v] : params) {
      if (k == name) return v;
    }
    return std::nullopt;
  };
  if (path == "/ping" && req.method == "GET") {
    TestResponse r;
    r.body = "Ok.\n";
    return r;
  }
  if (path != "/") {
    TestResponse r;
    r.status = 404;
    r.body = fmt::format("There is no handle {}\n\nUse / or /ping for health checks.\n", path);
    return r;
  }
  if (req.method != "GET" && req.method != "POST") {
    TestResponse r;
    r.status = 405;
    r.body = "Method not allowed\n";
    return r;
  }

  std::unique_lock<std::mutex> lock(mu_);
  const std::string tag =
      options_.framing == ClickHouseExceptionFraming::kTag ? RandomTag() : std::string();
  auto run = std::make_shared<Run>();
  run->tag = tag;
  ClickHouseQueryLog& log = run->log;
  for (const auto& [k, v] : params) {
    if (k != "password") log.params[k] = v;
  }
  log.accept_encoding = req.Header("accept-encoding").value_or("");
  runs_.push_back(run);
  auto reject = [&](int code, const std::string& message, int status = 0) {
    log.status = status != 0 ? status : StatusForCode(code);
    log.exception_code = code;
    Finish(*run, Outcome::kRejected);
    return ErrorReply(code, message, tag, status);
  };

  // 1. Auth.
  std::optional<std::string> h_user = req.Header("x-clickhouse-user");
  std::optional<std::string> h_key = req.Header("x-clickhouse-key");
  std::optional<std::string> authorization = req.Header("authorization");
  const bool by_headers = h_user.has_value() || h_key.has_value();
  const bool by_basic = authorization.has_value() && authorization->starts_with("Basic ");
  const bool by_url = param("user").has_value() || param("password").has_value();
  if (int(by_headers) + int(by_basic) + int(by_url) > 1) {
    return reject(516,
                  "Invalid authentication: it is not allowed to use several authentication "
                  "methods (X-ClickHouse-User/Key headers, Authorization, user/password "
                  "parameters) simultaneously");
  }
  std::string user_name = "default";
  std::string password;
  if (by_headers) {
    log.auth = "headers";
    user_name = h_user.value_or("default");
    password = h_key.value_or("");
  } else if (by_basic) {
    log.auth = "basic";
    absl::StatusOr<std::string> decoded = Base64Decode(authorization->substr(6));
    std::string creds = decoded.ok() ? *decoded : "";
    size_t colon = creds.find(':');
    user_name = creds.substr(0, colon);
    password = colon == std::string::npos ? "" : creds.substr(colon + 1);
  } else if (by_url) {
    log.auth = "url";
    user_name = param("user").value_or("default");
    password = param("password").value_or("");
  } else {
    log.auth = "none";
  }
  if (users_.count("default") == 0) {
    FakeClickHouseUser implicit;
    implicit.name = "default";
    users_["default"] = implicit;
  }
  auto user_it = users_.find(user_name);
  log.user = user_name;
  const std::string auth_failed = fmt::format(
      "{}: Authentication failed: password is incorrect, or there is no user with such name",
      user_name);
  if (user_it == users_.end() || user_it->second.password != password) {
    if (log.auth == "none" && user_it != users_.end()) return reject(194, auth_failed);
    return reject(516, auth_failed);
  }
  const FakeClickHouseUser& user = user_it->second;

  // 2. Database and settings.
  std::string database =
      param("database").value_or(req.Header("x-clickhouse-database").value_or(""));
  if (database.empty()) database = user.default_database;
  log.database = database;
  if (databases_.count(database) == 0) {
    return reject(81, fmt::format("Database {} does not exist", database));
  }
  int readonly = user.profile_readonly;
  std::map<std::string, std::string> settings;
  for (const auto& [k, v] : params) {
    if (IsParameter(k)) continue;
    if (KnownSettings().count(k) == 0) {
      return reject(115, fmt::format("Setting {} is neither a builtin setting nor started with "
                                     "the prefix 'SQL_' registered for user-defined settings",
                                     k));
    }
    if (readonly == 1) {
      return reject(164, fmt::format("Cannot modify '{}' setting in readonly mode", k));
    }
    if (k == "readonly") {
      int value = std::atoi(v.c_str());
      if (value < 0 || value > 2 || (readonly > 0 && value < readonly)) {
        return reject(164, "Cannot modify 'readonly' setting in readonly mode");
      }
      readonly = value;
    }
    settings[k] = v;
  }

  // 3. The statement.
  std::string sql = param("query").value_or("");
  if (req.method == "POST" && !req.body.empty())
    sql = sql.empty() ? req.body : sql + "\n" + req.body;
  sql = TrimCopy(sql);
  while (!sql.empty() && sql.back() == ';') sql = TrimCopy(sql.substr(0, sql.size() - 1));
  std::string format =
      param("default_format").value_or(req.Header("x-clickhouse-format").value_or("TabSeparated"));
  static const std::regex kFormatClause(R"(\s+FORMAT\s+([A-Za-z0-9_]+)\s*$)", std::regex::icase);
  std::smatch m;
  if (std::regex_search(sql, m, kFormatClause)) {
    format = m[1].str();
    sql = TrimCopy(sql.substr(0, static_cast<size_t>(m.position(0))));
  }
  log.sql = sql;
  log.format = format;
  if (sql.empty()) return reject(211, "Empty query");
  std::string keyword;
  for (char c : sql) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (keyword.empty() && (std::isspace(u) || c == '(')) continue;
    if (!std::isalpha(u)) break;
    keyword.push_back(static_cast<char>(std::toupper(u)));
  }
  static const std::set<std::string> kWrites = {
      "INSERT", "CREATE", "DROP",   "ALTER",  "TRUNCATE", "RENAME", "OPTIMIZE", "SYSTEM",
      "GRANT",  "REVOKE", "DELETE", "UPDATE", "ATTACH",   "DETACH", "EXCHANGE", "UNDROP"};
  if (readonly > 0 && kWrites.count(keyword) != 0) {
    return reject(164, fmt::format("{}: Cannot execute query in readonly mode", user_name));
  }
  static const std::regex kKill(
      R"(^KILL\s+QUERY\s+WHERE\s+query_id\s*=\s*'([^']*)'(\s+(ASYNC|SYNC|TEST))?\s*$)",
      std::regex::icase);
  if (keyword == "KILL") {
    if (!std::regex_match(sql, m, kKill)) {
      return reject(62, "Syntax error: the fake understands KILL QUERY WHERE query_id = '...'");
    }
    const std::string target = m[1].str();
    ClickHouseKill kill;
    kill.query_id = target;
    kill.user = user_name;
    std::string body;
    for (auto& other : runs_) {
      if (other->log.query_id == target && !other->ended) {
        kill.was_running = true;
        other->killed = true;
        // A query whose reader left is not streaming any more: it stops now.
        if (other->client_gone) Finish(*other, Outcome::kKilled);
        body = fmt::format("waiting\t{}\t{}\t{}\n", target, other->log.user,
                           TsvEscape(other->log.sql));
      }
    }
    kills_.push_back(kill);
    cv_.notify_all();
    log.query_id = param("query_id").value_or(NewUuid());
    log.status = 200;
    Finish(*run, Outcome::kFinished);
    TestResponse r;
    r.headers.emplace_back("Content-Type", "text/tab-separated-values; charset=UTF-8");
    r.headers.emplace_back("X-ClickHouse-Query-Id", log.query_id);
    r.headers.emplace_back("X-ClickHouse-Format", "TabSeparated");
    if (!tag.empty()) r.headers.emplace_back("X-ClickHouse-Exception-Tag", tag);
    r.body = body;
    return r;
  }

  // 4. Scripted failures, concurrency and query ids.
  std::optional<FakeClickHouseFailure> failure;
  for (auto it = failures_.begin(); it != failures_.end(); ++it) {
    if (sql.find(it->match) != std::string::npos) {
      failure = *it;
      failures_.erase(it);
      break;
    }
  }
  log.query_id = param("query_id").value_or("");
  if (log.query_id.empty()) log.query_id = NewUuid();
  if (failure && failure->reset_connection) {
    Finish(*run, Outcome::kRejected);
    return TestResponse::Reset();
  }
  if (failure && failure->after_rows < 0) {
    return reject(failure->code, failure->message, failure->http_status);
  }
  const int64_t running = std::count_if(runs_.begin(), runs_.end(),
                                        [&](const auto& r) { return !r->ended && r != run; });
  if (running >= options_.max_concurrent_queries) {
    return reject(202, fmt::format("Too many simultaneous queries. Maximum: {}",
                                   options_.max_concurrent_queries));
  }
  for (auto& other : runs_) {
    if (other != run && !other->ended && other->log.query_id == log.query_id) {
      if (settings["replace_running_query"] == "1") {
        other->killed = true;
        if (other->client_gone) Finish(*other, Outcome::kKilled);
      } else {
        return reject(216, fmt::format("Query with id = {} is already running", log.query_id));
      }
    }
  }
  if (format != kRowBinary && format != "TabSeparated" && format != "TabSeparatedWithNames" &&
      format != "JSONEachRow") {
    return reject(73, fmt::format("Unknown format {}", format));
  }

  // 5. Run on SQLite, the ClickHouse forms translated.
  Session session{user_name, database};
  run->session = session;
  std::string message;
  Translated translated;
  if (int c = TranslateClickHouse(sql, database, translated, message); c != 0) {
    return reject(c, message);
  }
  for (const auto& [name, type] : translated.parameter_types) {
    std::optional<std::string> value = param("param_" + name);
    if (!value) return reject(456, fmt::format("Substitution `{}` is not set", name));
    run->bindings[name] = {type, *value};
  }
  run->exec_sql = translated.sql;
  int code = 0;
  if (!translated.create_database.empty()) {
    const std::string& name = translated.create_database;
    if (databases_.count(name) != 0) {
      if (!translated.if_not_exists) {
        return reject(82, fmt::format("Database {} already exists", name));
      }
    } else if (absl::Status s =
                   db_->Exec(fmt::format("ATTACH DATABASE ':memory:' AS \"{}\"", name));
               !s.ok()) {
      return reject(1001, std::string(s.message()));
    } else {
      databases_.insert(name);
    }
  } else {
    code = Execute(*run, session, message);
  }
  if (code == 0) {
    if (!translated.columns.empty()) {
      auto& types = column_types_[translated.table];
      for (const auto& [column, type] : translated.columns) types[Lower(column)] = type;
    }
    if (!translated.ctas_select.empty()) RecordTypes(translated.table, translated.ctas_select);
    if (!translated.dropped.empty()) column_types_.erase(translated.dropped);
  }
  if (code != 0) {
    // A failure inside the first block comes before any byte is sent.
    if (code == 395 && run->fail_at_row >= options_.block_rows) {
      run->fail_at_row = run->fail_at_row / options_.block_rows * options_.block_rows;
      run->fail_code = code;
      run->fail_message = message;
    } else {
      run->rows.clear();
      return reject(code, message);
    }
  }
  if (failure) {
    run->fail_at_row =
        std::min<int64_t>(failure->after_rows, static_cast<int64_t>(run->rows.size()));
    run->fail_code = failure->code;
    run->fail_message = failure->message;
  }
  run->gzip = options_.compression && settings["enable_http_compression"] == "1" &&
              Lower(log.accept_encoding).find("gzip") != std::string::npos;
  run->cancel_on_close =
      readonly > 0 && settings["cancel_http_readonly_queries_on_client_close"] == "1";
  run->stall_after = stall_after_rows_;
  run->release_generation = release_generation_;
  log.compressed = run->gzip;
  if (stall_before_headers_ && sql.find(stall_match_) != std::string::npos) {
    // Computing the first block: nothing is sent until it is ready.
    run->held = true;
    cv_.notify_all();
    cv_.wait(lock, [&] {
      return run->killed || stopping_ || release_generation_ != run->release_generation;
    });
    run->held = false;
    if (run->killed) {
      log.status = StatusForCode(394);
      log.exception_code = 394;
      Finish(*run, Outcome::kKilled);
      return ErrorReply(394, "Query was cancelled", tag);
    }
    if (stopping_) {
      Finish(*run, Outcome::kRejected);
      return TestResponse::Reset();
    }
  }
  log.status = 200;
  lock.unlock();
  return Stream(run);
}

TestResponse FakeClickHouseServer::Stream(std::shared_ptr<Run> run) {
  TestResponse r;
  const ClickHouseQueryLog& log = run->log;
  r.headers.emplace_back("Content-Type", log.format == kRowBinary ? "application/octet-stream"
                                         : log.format == "JSONEachRow"
                                             ? "application/x-ndjson; charset=UTF-8"
                                             : "text/tab-separated-values; charset=UTF-8");
  r.headers.emplace_back("X-ClickHouse-Query-Id", log.query_id);
  r.headers.emplace_back("X-ClickHouse-Format", log.format);
  r.headers.emplace_back("X-ClickHouse-Timezone", options_.server_timezone);
  r.headers.emplace_back("X-ClickHouse-Server-Display-Name", options_.display_name);
  r.headers.emplace_back("Keep-Alive", "timeout=10, max=9999");
  if (!run->tag.empty()) r.headers.emplace_back("X-ClickHouse-Exception-Tag", run->tag);
  const std::string n = std::to_string(run->rows.size());
  r.headers.emplace_back(
      "X-ClickHouse-Summary",
      fmt::format(R"({{"read_rows":"{0}","read_bytes":"0","written_rows":"0","written_bytes":"0",)"
                  R"("total_rows_to_read":"{0}","result_rows":"{0}","result_bytes":"0",)"
                  R"("elapsed_ns":"1000000"}})",
                  n));
  if (run->gzip) {
    r.headers.emplace_back("Content-Encoding", "gzip");
    run->zs = std::shared_ptr<z_stream>(new z_stream{}, [](z_stream* z) {
      deflateEnd(z);
      delete z;
    });
    deflateInit2(run->zs.get(), Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8,
                 Z_DEFAULT_STRATEGY);
  }

  // Appends `plain` to `piece`, compressed when the body is gzip.
  auto emit = [run](std::string& piece, const std::string& plain, bool finish) {
    run->bytes_produced += static_cast<int64_t>(plain.size());
    if (!run->zs) {
      piece += plain;
      return;
    }
    run->zs->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(plain.data()));
    run->zs->avail_in = static_cast<uInt>(plain.size());
    char buf[65536];
    do {
      run->zs->next_out = reinterpret_cast<Bytef*>(buf);
      run->zs->avail_out = sizeof(buf);
      deflate(run->zs.get(), finish ? Z_FINISH : Z_SYNC_FLUSH);
      piece.append(buf, sizeof(buf) - run->zs->avail_out);
    } while (run->zs->avail_out == 0);
  };

  auto encode_rows = [this, run](int64_t from, int64_t to, std::string& out) -> absl::Status {
    const std::string& format = run->log.format;
    for (int64_t i = from; i < to; ++i) {
      const auto& row = run->rows[static_cast<size_t>(i)];
      if (format == kRowBinary) {
        for (size_t c = 0; c < row.size(); ++c) {
          json v = row[c];
          if (run->types[c].kind == Kind::kDateTime || run->types[c].kind == Kind::kDateTime64 ||
              (run->types[c].kind == Kind::kNullable &&
               (run->types[c].elements[0].kind == Kind::kDateTime ||
                run->types[c].elements[0].kind == Kind::kDateTime64))) {
            // Text without a zone is read in the column's zone, else the server's.
            ClickHouseType t = run->types[c];
            ClickHouseType& base = t.kind == Kind::kNullable ? t.elements[0] : t;
            if (base.timezone.empty()) base.timezone = options_.server_timezone;
            if (absl::Status s = Encode(t, v, out); !s.ok()) return s;
            continue;
          }
          if (absl::Status s = Encode(run->types[c], v, out); !s.ok()) return s;
        }
      } else if (format == "JSONEachRow") {
        json obj = json::object();
        for (size_t c = 0; c < row.size(); ++c) {
          obj[run->names[c]] = Is64BitOrWider(run->types[c]) && row[c].is_number_integer()
                                   ? json(std::to_string(row[c].get<int64_t>()))
                                   : row[c];
        }
        out += obj.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
      } else {
        for (size_t c = 0; c < row.size(); ++c) {
          if (c > 0) out.push_back('\t');
          out += row[c].is_null() ? "\\N" : TsvEscape(Text(row[c]));
        }
        out.push_back('\n');
      }
    }
    return absl::OkStatus();
  };

  auto exception_block = [this, run](int code, const std::string& message) {
    const std::string text =
        fmt::format("Code: {}. DB::Exception: {}. ({}) (version {} (official build))", code,
                    message, ExceptionName(code), options_.version);
    switch (options_.framing) {
      case ClickHouseExceptionFraming::kAppendedText:
        return text + "\n";
      case ClickHouseExceptionFraming::kMarker:
        return "\r\n__exception__\r\n" + text + "\n";
      case ClickHouseExceptionFraming::kTag:
        return fmt::format("\r\n__exception__\r\n{0}\r\n{1}\n{2} {0}\r\n__exception__\r\n",
                           run->tag, text, text.size() + 1);
    }
    return text;
  };

  // Ends the body with an exception in the configured framing.
  auto fail = [this, run, emit, exception_block](std::string& piece, TestHeaders& trailers,
                                                 int code, const std::string& message,
                                                 Outcome outcome) {
    const bool appended = options_.framing == ClickHouseExceptionFraming::kAppendedText;
    emit(piece, exception_block(code, message), appended);
    run->log.exception_code = code;
    Finish(*run, outcome);
    if (!appended) return Step::kAbort;
    if (options_.exception_code_trailer) {
      trailers.emplace_back("X-ClickHouse-Exception-Code", std::to_string(code));
    }
    return Step::kEnd;
  };

  r.stream = [this, run, emit, encode_rows, fail](std::string& piece, TestHeaders& trailers) {
    std::unique_lock<std::mutex> lock(mu_);
    Run& q = *run;
    if (q.ended && !q.killed) return Step::kAbort;  // finished elsewhere (server stopping)
    if (!q.header_sent) {
      q.header_sent = true;
      std::string plain;
      if (q.names.empty()) {
        // DDL and INSERT answer with an empty body.
      } else if (q.log.format == kRowBinary) {
        AppendLeb128(plain, q.names.size());
        for (const auto& name : q.names) AppendString(plain, name);
        for (const auto& type : q.type_texts) AppendString(plain, type);
      } else if (q.log.format == "TabSeparatedWithNames") {
        for (size_t c = 0; c < q.names.size(); ++c) {
          plain += (c ? "\t" : "") + TsvEscape(q.names[c]);
        }
        plain.push_back('\n');
      }
      emit(piece, plain, false);
      return Step::kMore;
    }
    if (stopping_) {
      Finish(q, Outcome::kFailedMidStream);
      return Step::kAbort;
    }
    if (q.killed) return fail(piece, trailers, 394, "Query was cancelled", Outcome::kKilled);
    const int64_t total = static_cast<int64_t>(q.rows.size());
    const int64_t stop_at = q.fail_at_row >= 0 ? std::min(q.fail_at_row, total) : total;
    const bool stalled = q.stall_after >= 0 && q.release_generation == release_generation_;
    if (stalled && q.next_row >= q.stall_after && q.next_row < stop_at) {
      cv_.wait_for(lock, std::chrono::milliseconds(10));
      return Step::kMore;  // nothing to send: the server checks the connection
    }
    if (q.next_row < stop_at) {
      int64_t end = std::min(stop_at, q.next_row + options_.block_rows);
      if (stalled) end = std::min(end, std::max(q.stall_after, q.next_row + 1));
      std::string plain;
      if (absl::Status s = encode_rows(q.next_row, end, plain); !s.ok()) {
        return fail(piece, trailers, 70, std::string(s.message()), Outcome::kFailedMidStream);
      }
      q.next_row = end;
      q.log.rows_sent = end;
      emit(piece, plain, false);
      return Step::kMore;
    }
    if (q.fail_at_row >= 0) {
      return fail(piece, trailers, q.fail_code, q.fail_message, Outcome::kFailedMidStream);
    }
    emit(piece, "", true);
    Finish(q, Outcome::kFinished);
    return Step::kEnd;
  };

  r.on_client_gone = [this, run] {
    std::lock_guard<std::mutex> lock(mu_);
    run->client_gone = true;
    if (run->ended) return;
    if (run->killed) {  // KILL QUERY came first
      Finish(*run, Outcome::kKilled);
      return;
    }
    if (run->cancel_on_close) {
      Finish(*run, Outcome::kCancelledOnClose);
      return;
    }
    run->log.outcome = Outcome::kClientGone;
    // ClickHouse runs the query on; a stalled one stays until KILL QUERY.
    const bool stalled = run->stall_after >= 0 && run->release_generation == release_generation_;
    if (!stalled || stopping_) Finish(*run, Outcome::kClientGone);
  };
  return r;
}

}  // namespace backflow
