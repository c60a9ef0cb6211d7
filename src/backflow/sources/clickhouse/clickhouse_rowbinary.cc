#include "backflow/sources/clickhouse/clickhouse_rowbinary.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "absl/status/status.h"
#include "backflow/common/civil_date.h"
#include "backflow/common/json_writer.h"
#include "backflow/common/numbers.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using Kind = ClickHouseType::Kind;

// Types nest at most this deep (ClickHouse's own limit is lower in practice).
constexpr int kMaxTypeDepth = 64;
constexpr uint64_t kMaxStringBytes = uint64_t{1} << 31;
constexpr uint64_t kMaxColumns = 100'000;

std::string_view TrimView(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool IsIdentifierChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Splits the text between a type's parentheses at top-level commas, keeping
// quoted strings ('...' with backslash escapes) and `...` names whole.
std::optional<std::vector<std::string_view>> SplitArguments(std::string_view s) {
  std::vector<std::string_view> out;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '\'' || c == '`') {
      const char quote = c;
      for (++i; i < s.size() && s[i] != quote; ++i) {
        if (s[i] == '\\') ++i;
      }
      if (i >= s.size()) return std::nullopt;
    } else if (c == '(') {
      ++depth;
    } else if (c == ')') {
      if (--depth < 0) return std::nullopt;
    } else if (c == ',' && depth == 0) {
      out.push_back(TrimView(s.substr(start, i - start)));
      start = i + 1;
    }
  }
  if (depth != 0) return std::nullopt;
  std::string_view last = TrimView(s.substr(start));
  if (!last.empty() || !out.empty()) out.push_back(last);
  return out;
}

// A quoted string literal ('...', backslash escapes) -> its text.
std::optional<std::string> Unquote(std::string_view s) {
  s = TrimView(s);
  if (s.size() < 2 || s.front() != '\'' || s.back() != '\'') return std::nullopt;
  std::string out;
  for (size_t i = 1; i + 1 < s.size(); ++i) {
    char c = s[i];
    if (c == '\\' && i + 2 < s.size()) {
      char e = s[++i];
      switch (e) {
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case '0':
          out.push_back('\0');
          break;
        default:
          out.push_back(e);
      }
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::optional<int64_t> ParseInt(std::string_view s) { return ParseInt64(TrimView(s)); }

absl::Status BadType(std::string_view text, std::string_view why) {
  return absl::InvalidArgumentError(
      fmt::format("cannot read ClickHouse type \"{}\": {}", text, why));
}

absl::Status Unsupported(std::string_view text, std::string_view hint) {
  return absl::InvalidArgumentError(
      fmt::format("ClickHouse type {} is not supported by Backflow; {}", text, hint));
}

absl::StatusOr<ClickHouseType> Parse(std::string_view text, const ClickHouseTypeOptions& options,
                                     int depth);

ClickHouseType Simple(Kind kind, std::string_view text, int size = 0) {
  ClickHouseType t;
  t.kind = kind;
  t.size = size;
  t.name = std::string(text);
  return t;
}

absl::StatusOr<ClickHouseType> Parse(std::string_view text, const ClickHouseTypeOptions& options,
                                     int depth) {
  text = TrimView(text);
  if (depth > kMaxTypeDepth) return BadType(text, "nested too deeply");
  if (text.empty()) return BadType(text, "empty type");
  const size_t paren = text.find('(');
  std::string_view name = text;
  std::vector<std::string_view> args;
  bool has_args = false;
  if (paren != std::string_view::npos) {
    if (text.back() != ')') return BadType(text, "unbalanced parentheses");
    name = TrimView(text.substr(0, paren));
    auto split = SplitArguments(text.substr(paren + 1, text.size() - paren - 2));
    if (!split) return BadType(text, "unbalanced parentheses or quotes");
    args = *std::move(split);
    has_args = true;
  }
  if (name.empty() || !std::all_of(name.begin(), name.end(), IsIdentifierChar)) {
    return BadType(text, "not a type name");
  }
  auto arity = [&](size_t lo, size_t hi) -> absl::Status {
    if (args.size() < lo || args.size() > hi) {
      return BadType(text, "wrong number of type arguments");
    }
    return absl::OkStatus();
  };
  auto child = [&](std::string_view arg) { return Parse(arg, options, depth + 1); };

  static constexpr std::pair<std::string_view, int> kInts[] = {{"8", 1},  {"16", 2},   {"32", 4},
                                                               {"64", 8}, {"128", 16}, {"256", 32}};
  for (auto [bits, bytes] : kInts) {
    if (name == fmt::format("Int{}", bits)) return Simple(Kind::kInt, text, bytes);
    if (name == fmt::format("UInt{}", bits)) return Simple(Kind::kUInt, text, bytes);
  }
  if (name == "Float32") return Simple(Kind::kFloat32, text, 4);
  if (name == "Float64") return Simple(Kind::kFloat64, text, 8);
  if (name == "BFloat16") return Simple(Kind::kBFloat16, text, 2);
  if (name == "Bool" || name == "Boolean") return Simple(Kind::kBool, text, 1);
  if (name == "String") return Simple(Kind::kString, text);
  if (name == "Date") return Simple(Kind::kDate, text, 2);
  if (name == "Date32") return Simple(Kind::kDate32, text, 4);
  if (name == "UUID") return Simple(Kind::kUuid, text, 16);
  if (name == "IPv4") return Simple(Kind::kIpv4, text, 4);
  if (name == "IPv6") return Simple(Kind::kIpv6, text, 16);
  if (name == "Nothing") return Simple(Kind::kNothing, text);
  if (name.starts_with("Interval") && !has_args) return Simple(Kind::kInterval, text, 8);

  if (name == "Decimal" || name == "Decimal32" || name == "Decimal64" || name == "Decimal128" ||
      name == "Decimal256") {
    ClickHouseType t = Simple(Kind::kDecimal, text);
    std::optional<int64_t> p, s;
    if (name == "Decimal") {
      if (auto st = arity(1, 2); !st.ok()) return st;
      p = ParseInt(args[0]);
      s = args.size() > 1 ? ParseInt(args[1]) : std::optional<int64_t>(0);
    } else {
      if (auto st = arity(1, 1); !st.ok()) return st;
      s = ParseInt(args[0]);
      p = name == "Decimal32" ? 9 : name == "Decimal64" ? 18 : name == "Decimal128" ? 38 : 76;
    }
    if (!p || !s || *p < 1 || *p > 76 || *s < 0 || *s > *p) {
      return BadType(text, "bad precision or scale");
    }
    t.precision = static_cast<int>(*p);
    t.scale = static_cast<int>(*s);
    t.size = *p <= 9 ? 4 : *p <= 18 ? 8 : *p <= 38 ? 16 : 32;
    return t;
  }
  if (name == "FixedString") {
    if (auto st = arity(1, 1); !st.ok()) return st;
    std::optional<int64_t> n = ParseInt(args[0]);
    if (!n || *n < 1 || *n > (int64_t{1} << 30)) return BadType(text, "bad length");
    return Simple(Kind::kFixedString, text, static_cast<int>(*n));
  }
  if (name == "DateTime" || name == "DateTime32") {
    if (auto st = arity(0, 1); !st.ok()) return st;
    ClickHouseType t = Simple(Kind::kDateTime, text, 4);
    if (!args.empty()) {
      std::optional<std::string> tz = Unquote(args[0]);
      if (!tz) return BadType(text, "the time zone must be a quoted string");
      t.timezone = *tz;
    }
    return t;
  }
  if (name == "DateTime64") {
    if (auto st = arity(1, 2); !st.ok()) return st;
    ClickHouseType t = Simple(Kind::kDateTime64, text, 8);
    std::optional<int64_t> p = ParseInt(args[0]);
    if (!p || *p < 0 || *p > 9) return BadType(text, "precision must be 0 to 9");
    t.scale = static_cast<int>(*p);
    if (args.size() > 1) {
      std::optional<std::string> tz = Unquote(args[1]);
      if (!tz) return BadType(text, "the time zone must be a quoted string");
      t.timezone = *tz;
    }
    return t;
  }
  if (name == "Enum8" || name == "Enum16" || name == "Enum") {
    if (args.empty()) return BadType(text, "an enum needs values");
    ClickHouseType t =
        Simple(name == "Enum16" ? Kind::kEnum16 : Kind::kEnum8, text, name == "Enum16" ? 2 : 1);
    for (std::string_view arg : args) {
      // 'label' = value; the label may contain '=' and escaped quotes.
      size_t close = std::string_view::npos;
      if (!arg.empty() && arg[0] == '\'') {
        for (size_t i = 1; i < arg.size(); ++i) {
          if (arg[i] == '\\') {
            ++i;
          } else if (arg[i] == '\'') {
            close = i;
            break;
          }
        }
      }
      if (close == std::string_view::npos) return BadType(text, "enum labels must be quoted");
      std::optional<std::string> label = Unquote(arg.substr(0, close + 1));
      std::string_view rest = TrimView(arg.substr(close + 1));
      if (!label || rest.empty() || rest[0] != '=') return BadType(text, "malformed enum value");
      std::optional<int64_t> v = ParseInt(rest.substr(1));
      if (!v) return BadType(text, "malformed enum value");
      t.enum_values.emplace_back(*label, *v);
    }
    if (name == "Enum") {  // an Enum8 unless a value needs 16 bits
      for (const auto& [label, v] : t.enum_values) {
        if (v < -128 || v > 127) {
          t.kind = Kind::kEnum16;
          t.size = 2;
        }
      }
    }
    return t;
  }
  if (name == "Nullable" || name == "LowCardinality") {
    if (auto st = arity(1, 1); !st.ok()) return st;
    absl::StatusOr<ClickHouseType> inner = child(args[0]);
    if (!inner.ok()) return inner.status();
    if (name == "LowCardinality") {
      inner->name = std::string(text);
      return inner;
    }
    if (inner->kind == Kind::kNullable) return BadType(text, "Nullable inside Nullable");
    ClickHouseType t = Simple(Kind::kNullable, text);
    t.elements.push_back(*std::move(inner));
    return t;
  }
  if (name == "SimpleAggregateFunction") {
    if (args.size() != 2) return BadType(text, "wrong number of type arguments");
    absl::StatusOr<ClickHouseType> inner = child(args[1]);
    if (!inner.ok()) return inner.status();
    inner->name = std::string(text);
    return inner;
  }
  if (name == "Array") {
    if (auto st = arity(1, 1); !st.ok()) return st;
    absl::StatusOr<ClickHouseType> inner = child(args[0]);
    if (!inner.ok()) return inner.status();
    ClickHouseType t = Simple(Kind::kArray, text);
    t.elements.push_back(*std::move(inner));
    return t;
  }
  if (name == "Map") {
    if (auto st = arity(2, 2); !st.ok()) return st;
    ClickHouseType t = Simple(Kind::kMap, text);
    for (std::string_view arg : args) {
      absl::StatusOr<ClickHouseType> inner = child(arg);
      if (!inner.ok()) return inner.status();
      t.elements.push_back(*std::move(inner));
    }
    return t;
  }
  if (name == "Tuple") {
    ClickHouseType t = Simple(Kind::kTuple, text);
    bool named = false;
    for (std::string_view arg : args) {
      // "name Type" (or "`a name` Type") when the element has a name.
      std::string element_name;
      std::string_view type_text = arg;
      if (!arg.empty() && arg[0] == '`') {
        size_t close = arg.find('`', 1);
        if (close == std::string_view::npos) return BadType(text, "unterminated `name`");
        element_name = std::string(arg.substr(1, close - 1));
        type_text = arg.substr(close + 1);
      } else {
        size_t i = 0;
        while (i < arg.size() && IsIdentifierChar(arg[i])) ++i;
        if (i > 0 && i < arg.size() && std::isspace(static_cast<unsigned char>(arg[i]))) {
          element_name = std::string(arg.substr(0, i));
          type_text = arg.substr(i);
        }
      }
      if (!element_name.empty()) named = true;
      absl::StatusOr<ClickHouseType> inner = child(type_text);
      if (!inner.ok()) return inner.status();
      t.elements.push_back(*std::move(inner));
      t.element_names.push_back(std::move(element_name));
    }
    if (!named) {
      t.element_names.clear();
    } else if (std::any_of(t.element_names.begin(), t.element_names.end(),
                           [](const std::string& n) { return n.empty(); })) {
      return BadType(text, "some tuple elements are named and some are not");
    }
    return t;
  }
  if (name == "Variant") {
    if (args.empty() || args.size() > 255) return BadType(text, "bad number of variants");
    ClickHouseType t = Simple(Kind::kVariant, text);
    for (std::string_view arg : args) {
      absl::StatusOr<ClickHouseType> inner = child(arg);
      if (!inner.ok()) return inner.status();
      t.elements.push_back(*std::move(inner));
    }
    std::stable_sort(
        t.elements.begin(), t.elements.end(),
        [](const ClickHouseType& a, const ClickHouseType& b) { return a.name < b.name; });
    return t;
  }
  // Geo types are aliases of tuples and arrays of Float64.
  if (name == "Point") return Parse("Tuple(Float64, Float64)", options, depth + 1);
  if (name == "Ring" || name == "LineString") {
    return Parse("Array(Tuple(Float64, Float64))", options, depth + 1);
  }
  if (name == "Polygon" || name == "MultiLineString") {
    return Parse("Array(Array(Tuple(Float64, Float64)))", options, depth + 1);
  }
  if (name == "MultiPolygon") {
    return Parse("Array(Array(Array(Tuple(Float64, Float64))))", options, depth + 1);
  }
  if (name == "JSON" || name == "Object") {
    if (options.json_as_string) return Simple(Kind::kJsonString, text);
    return Unsupported(text,
                       "add `output_format_binary_write_json_as_string: 1` to the source's "
                       "`settings`, or cast the column in the model: toJSONString(col)");
  }
  if (name == "Dynamic") {
    return Unsupported(text, "cast the column in the model, e.g. toString(col) or CAST(col AS T)");
  }
  if (name == "AggregateFunction") {
    return Unsupported(text, "finalize it in the model, e.g. finalizeAggregation(col) or -Merge");
  }
  return Unsupported(text, "cast the column to a supported type in the model, e.g. toString(col)");
}

// --- Integers and text ------------------------------------------------------

uint64_t LoadLe(std::string_view b) {
  uint64_t v = 0;
  for (size_t i = b.size(); i-- > 0;) v = (v << 8) | static_cast<unsigned char>(b[i]);
  return v;
}

int64_t SignExtend(uint64_t v, size_t bytes) {
  if (bytes >= 8) return static_cast<int64_t>(v);
  const unsigned shift = static_cast<unsigned>(64 - 8 * bytes);
  return static_cast<int64_t>(v << shift) >> shift;
}

std::string InsertPoint(std::string digits, int scale) {
  if (scale <= 0) return digits;
  bool neg = !digits.empty() && digits[0] == '-';
  if (neg) digits.erase(0, 1);
  if (digits.size() <= static_cast<size_t>(scale)) {
    digits.insert(0, static_cast<size_t>(scale) + 1 - digits.size(), '0');
  }
  digits.insert(digits.size() - static_cast<size_t>(scale), ".");
  return neg ? "-" + digits : digits;
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

constexpr int64_t kPow10[] = {1,      10,      100,      1000,      10000,
                              100000, 1000000, 10000000, 100000000, 1000000000};

void AppendUtf8Sanitized(std::string& out, std::string_view s) {
  // Appends `s` as a JSON string, replacing invalid UTF-8 with U+FFFD.
  std::string clean;
  clean.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80           ? 1
                 : (c >> 5) == 0x6  ? 2
                 : (c >> 4) == 0xE  ? 3
                 : (c >> 3) == 0x1E ? 4
                                    : 0;
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    }
    if (ok && len == 2) ok = c >= 0xC2;
    if (ok && len == 3) {
      unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
      ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
    }
    if (ok && len == 4) {
      unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
      ok = c <= 0xF4 && !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);
    }
    if (ok) {
      clean.append(s.substr(i, len));
      i += len;
    } else {
      clean.append("\xEF\xBF\xBD");
      ++i;
    }
  }
  AppendJsonString(out, clean);
}

// A scalar Value as a JSON value (inside kJson).
void AppendValueJson(const Value& v, std::string& out) {
  switch (v.type()) {
    case ValueType::kNull:
      out.append("null");
      return;
    case ValueType::kBool:
      out.append(v.bool_value() ? "true" : "false");
      return;
    case ValueType::kInt64:
      out.append(std::to_string(v.int_value()));
      return;
    case ValueType::kDouble: {
      if (!std::isfinite(v.double_value())) {
        out.append("null");
        return;
      }
      JsonWriter w;
      w.Double(v.double_value());
      out.append(w.str());
      return;
    }
    case ValueType::kDecimal:
    case ValueType::kJson:
      out.append(v.text());
      return;
    default:
      AppendUtf8Sanitized(out, v.text());
      return;
  }
}

}  // namespace

// --- Public helpers -------------------------------------------------------------

std::string ClickHouseIntegerText(std::string_view le, bool is_signed) {
  // Base 2^32 limbs, least significant first.
  std::vector<uint32_t> limbs((le.size() + 3) / 4, 0);
  for (size_t i = 0; i < le.size(); ++i) {
    limbs[i / 4] |= static_cast<uint32_t>(static_cast<unsigned char>(le[i])) << (8 * (i % 4));
  }
  bool neg = is_signed && !le.empty() && (static_cast<unsigned char>(le.back()) & 0x80) != 0;
  if (neg) {  // two's complement negation
    uint64_t carry = 1;
    for (uint32_t& limb : limbs) {
      uint64_t x = static_cast<uint64_t>(static_cast<uint32_t>(~limb)) + carry;
      limb = static_cast<uint32_t>(x);
      carry = x >> 32;
    }
  }
  std::string digits;
  while (std::any_of(limbs.begin(), limbs.end(), [](uint32_t l) { return l != 0; })) {
    uint64_t rem = 0;
    for (size_t i = limbs.size(); i-- > 0;) {
      uint64_t cur = (rem << 32) | limbs[i];
      limbs[i] = static_cast<uint32_t>(cur / 1'000'000'000);
      rem = cur % 1'000'000'000;
    }
    std::string chunk = std::to_string(rem);
    bool more = std::any_of(limbs.begin(), limbs.end(), [](uint32_t l) { return l != 0; });
    if (more) chunk.insert(0, 9 - chunk.size(), '0');
    digits.insert(0, chunk);
  }
  if (digits.empty()) digits = "0";
  return neg ? "-" + digits : digits;
}

std::string ClickHouseDateText(int64_t days) {
  const CivilDate date = CivilFromDays(days);
  return fmt::format("{:04d}-{:02d}-{:02d}", date.year, date.month, date.day);
}

std::string ClickHouseTimestampText(int64_t ticks, int precision) {
  const int64_t unit = kPow10[std::clamp(precision, 0, 9)];
  const int64_t secs = FloorDiv(ticks, unit);
  const int64_t frac = ticks - secs * unit;
  const int64_t days = FloorDiv(secs, 86400);
  const int64_t sod = secs - days * 86400;
  std::string out = fmt::format("{}T{:02d}:{:02d}:{:02d}", ClickHouseDateText(days), sod / 3600,
                                sod / 60 % 60, sod % 60);
  if (frac != 0) {
    std::string f = fmt::format("{:0{}d}", frac, precision);
    while (!f.empty() && f.back() == '0') f.pop_back();
    out += "." + f;
  }
  out.push_back('Z');
  return out;
}

absl::StatusOr<ClickHouseType> ParseClickHouseType(std::string_view text,
                                                   const ClickHouseTypeOptions& options) {
  return Parse(text, options, 0);
}

ValueType ClickHouseValueType(const ClickHouseType& t) {
  switch (t.kind) {
    case Kind::kInt:
      return t.size <= 8 ? ValueType::kInt64 : ValueType::kDecimal;
    case Kind::kUInt:
      return t.size <= 8 ? ValueType::kInt64 : ValueType::kDecimal;
    case Kind::kInterval:
      return ValueType::kInt64;
    case Kind::kFloat32:
    case Kind::kFloat64:
    case Kind::kBFloat16:
      return ValueType::kDouble;
    case Kind::kBool:
      return ValueType::kBool;
    case Kind::kDecimal:
      return ValueType::kDecimal;
    case Kind::kDate:
    case Kind::kDate32:
      return ValueType::kDate;
    case Kind::kDateTime:
    case Kind::kDateTime64:
      return ValueType::kTimestamp;
    case Kind::kNullable:
      return ClickHouseValueType(t.elements[0]);
    case Kind::kArray:
    case Kind::kMap:
    case Kind::kTuple:
    case Kind::kVariant:
    case Kind::kJsonString:
      return ValueType::kJson;
    case Kind::kNothing:
    case Kind::kString:
    case Kind::kFixedString:
    case Kind::kUuid:
    case Kind::kIpv4:
    case Kind::kIpv6:
    case Kind::kEnum8:
    case Kind::kEnum16:
      return ValueType::kString;
  }
  return ValueType::kString;
}

// --- Decoder ----------------------------------------------------------------------

RowBinaryResult RowBinaryDecoder::Corrupt(std::string message) {
  error_ = std::move(message);
  return RowBinaryResult::kCorrupt;
}

RowBinaryResult RowBinaryDecoder::ReadLeb128(uint64_t& v) {
  v = 0;
  for (int i = 0; i < 10; ++i) {
    if (pos_ + static_cast<size_t>(i) >= data_.size()) return RowBinaryResult::kNeedMore;
    const unsigned char b = static_cast<unsigned char>(data_[pos_ + static_cast<size_t>(i)]);
    v |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
    if ((b & 0x80) == 0) {
      pos_ += static_cast<size_t>(i) + 1;
      return RowBinaryResult::kOk;
    }
  }
  return Corrupt("a length (LEB128) longer than 10 bytes");
}

RowBinaryResult RowBinaryDecoder::ReadBytes(size_t n, std::string_view& out) {
  if (data_.size() - pos_ < n) return RowBinaryResult::kNeedMore;
  out = data_.substr(pos_, n);
  pos_ += n;
  return RowBinaryResult::kOk;
}

RowBinaryResult RowBinaryDecoder::ReadString(std::string_view& out) {
  const size_t start = pos_;
  uint64_t len = 0;
  RowBinaryResult r = ReadLeb128(len);
  if (r != RowBinaryResult::kOk) return r;
  if (len > kMaxStringBytes) {
    pos_ = start;
    return Corrupt(fmt::format("a string of {} bytes", len));
  }
  r = ReadBytes(static_cast<size_t>(len), out);
  if (r != RowBinaryResult::kOk) pos_ = start;
  return r;
}

RowBinaryResult RowBinaryDecoder::ReadHeader(std::vector<std::string>& names,
                                             std::vector<std::string>& types) {
  const size_t start = pos_;
  auto fail = [&](RowBinaryResult r) {
    pos_ = start;
    return r;
  };
  uint64_t n = 0;
  RowBinaryResult r = ReadLeb128(n);
  if (r != RowBinaryResult::kOk) return fail(r);
  if (n > kMaxColumns) return fail(Corrupt(fmt::format("a header announcing {} columns", n)));
  names.assign(static_cast<size_t>(n), "");
  types.assign(static_cast<size_t>(n), "");
  for (auto* list : {&names, &types}) {
    for (std::string& s : *list) {
      std::string_view v;
      r = ReadString(v);
      if (r != RowBinaryResult::kOk) return fail(r);
      s = std::string(v);
    }
  }
  return RowBinaryResult::kOk;
}

RowBinaryResult RowBinaryDecoder::ReadRow(const std::vector<ClickHouseType>& columns, Row& row) {
  const size_t start = pos_;
  row.resize(columns.size());
  for (size_t i = 0; i < columns.size(); ++i) {
    RowBinaryResult r = ReadValue(columns[i], row[i]);
    if (r != RowBinaryResult::kOk) {
      pos_ = start;
      return r;
    }
  }
  return RowBinaryResult::kOk;
}

RowBinaryResult RowBinaryDecoder::ReadValue(const ClickHouseType& t, Value& out) {
  const size_t start = pos_;
  RowBinaryResult r = RowBinaryResult::kOk;
  switch (t.kind) {
    case Kind::kNullable: {
      std::string_view flag;
      r = ReadBytes(1, flag);
      if (r != RowBinaryResult::kOk) break;
      if (flag[0] == 1) {
        out = Value::Null();
        return RowBinaryResult::kOk;
      }
      if (flag[0] != 0) {
        r = Corrupt(fmt::format("a Nullable flag byte of {}", static_cast<int>(flag[0])));
        break;
      }
      r = ReadValue(t.elements[0], out);
      break;
    }
    case Kind::kNothing:
      out = Value::Null();
      return RowBinaryResult::kOk;
    case Kind::kArray:
    case Kind::kMap:
    case Kind::kTuple:
    case Kind::kVariant:
    case Kind::kJsonString: {
      std::string json;
      r = ReadJson(t, json);
      if (r == RowBinaryResult::kOk) out = Value::Text(ValueType::kJson, std::move(json));
      break;
    }
    default:
      r = ReadScalar(t, out);
  }
  if (r != RowBinaryResult::kOk) pos_ = start;
  return r;
}

RowBinaryResult RowBinaryDecoder::ReadJson(const ClickHouseType& t, std::string& out) {
  const size_t start = pos_;
  const size_t out_size = out.size();
  auto fail = [&](RowBinaryResult r) {
    pos_ = start;
    out.resize(out_size);
    return r;
  };
  switch (t.kind) {
    case Kind::kNullable: {
      std::string_view flag;
      RowBinaryResult r = ReadBytes(1, flag);
      if (r != RowBinaryResult::kOk) return fail(r);
      if (flag[0] == 1) {
        out.append("null");
        return RowBinaryResult::kOk;
      }
      if (flag[0] != 0) {
        return fail(Corrupt(fmt::format("a Nullable flag byte of {}", static_cast<int>(flag[0]))));
      }
      r = ReadJson(t.elements[0], out);
      return r == RowBinaryResult::kOk ? r : fail(r);
    }
    case Kind::kNothing:
      out.append("null");
      return RowBinaryResult::kOk;
    case Kind::kArray:
    case Kind::kMap: {
      uint64_t n = 0;
      RowBinaryResult r = ReadLeb128(n);
      if (r != RowBinaryResult::kOk) return fail(r);
      // Every element takes at least one byte except Nothing and empty tuples.
      if (n > data_.size() - pos_ && n > (uint64_t{1} << 24)) {
        return fail(Corrupt(fmt::format("an array of {} elements", n)));
      }
      const bool is_map = t.kind == Kind::kMap;
      out.push_back(is_map ? '{' : '[');
      for (uint64_t i = 0; i < n; ++i) {
        if (i > 0) out.push_back(',');
        if (is_map) {
          Value key;
          r = ReadValue(t.elements[0], key);
          if (r != RowBinaryResult::kOk) return fail(r);
          std::string key_text = key.type() == ValueType::kJson ? key.text() : key.ToString();
          AppendUtf8Sanitized(out, key_text);
          out.push_back(':');
          r = ReadJson(t.elements[1], out);
        } else {
          r = ReadJson(t.elements[0], out);
        }
        if (r != RowBinaryResult::kOk) return fail(r);
      }
      out.push_back(is_map ? '}' : ']');
      return RowBinaryResult::kOk;
    }
    case Kind::kTuple: {
      const bool named = !t.element_names.empty();
      out.push_back(named ? '{' : '[');
      for (size_t i = 0; i < t.elements.size(); ++i) {
        if (i > 0) out.push_back(',');
        if (named) {
          AppendUtf8Sanitized(out, t.element_names[i]);
          out.push_back(':');
        }
        RowBinaryResult r = ReadJson(t.elements[i], out);
        if (r != RowBinaryResult::kOk) return fail(r);
      }
      out.push_back(named ? '}' : ']');
      return RowBinaryResult::kOk;
    }
    case Kind::kVariant: {
      std::string_view d;
      RowBinaryResult r = ReadBytes(1, d);
      if (r != RowBinaryResult::kOk) return fail(r);
      const unsigned index = static_cast<unsigned char>(d[0]);
      if (index == 0xFF) {
        out.append("null");
        return RowBinaryResult::kOk;
      }
      if (index >= t.elements.size()) {
        return fail(
            Corrupt(fmt::format("Variant discriminant {} of {} types", index, t.elements.size())));
      }
      r = ReadJson(t.elements[index], out);
      return r == RowBinaryResult::kOk ? r : fail(r);
    }
    case Kind::kJsonString: {
      std::string_view text;
      RowBinaryResult r = ReadString(text);
      if (r != RowBinaryResult::kOk) return fail(r);
      nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
      if (j.is_discarded()) return fail(Corrupt("a JSON value that is not valid JSON"));
      out.append(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      return RowBinaryResult::kOk;
    }
    default: {
      Value v;
      RowBinaryResult r = ReadScalar(t, v);
      if (r != RowBinaryResult::kOk) return fail(r);
      AppendValueJson(v, out);
      return RowBinaryResult::kOk;
    }
  }
}

RowBinaryResult RowBinaryDecoder::ReadScalar(const ClickHouseType& t, Value& out) {
  std::string_view b;
  if (t.kind == Kind::kString) {
    RowBinaryResult r = ReadString(b);
    if (r == RowBinaryResult::kOk) out = Value::String(std::string(b));
    return r;
  }
  const size_t start = pos_;
  RowBinaryResult r = ReadBytes(static_cast<size_t>(t.size), b);
  if (r != RowBinaryResult::kOk) return r;
  switch (t.kind) {
    case Kind::kInt:
    case Kind::kInterval:
      if (t.size <= 8) {
        out = Value::Int64(SignExtend(LoadLe(b), b.size()));
      } else {
        out = Value::Text(ValueType::kDecimal, ClickHouseIntegerText(b, true));
      }
      return RowBinaryResult::kOk;
    case Kind::kUInt: {
      if (t.size > 8) {
        out = Value::Text(ValueType::kDecimal, ClickHouseIntegerText(b, false));
        return RowBinaryResult::kOk;
      }
      const uint64_t v = LoadLe(b);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        out = Value::Text(ValueType::kDecimal, std::to_string(v));
      } else {
        out = Value::Int64(static_cast<int64_t>(v));
      }
      return RowBinaryResult::kOk;
    }
    case Kind::kFloat32: {
      uint32_t bits = static_cast<uint32_t>(LoadLe(b));
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      out = Value::Double(f);
      return RowBinaryResult::kOk;
    }
    case Kind::kBFloat16: {
      uint32_t bits = static_cast<uint32_t>(LoadLe(b)) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      out = Value::Double(f);
      return RowBinaryResult::kOk;
    }
    case Kind::kFloat64: {
      uint64_t bits = LoadLe(b);
      double d;
      std::memcpy(&d, &bits, sizeof(d));
      out = Value::Double(d);
      return RowBinaryResult::kOk;
    }
    case Kind::kBool:
      out = Value::Bool(b[0] != 0);
      return RowBinaryResult::kOk;
    case Kind::kDecimal:
      out = Value::Text(ValueType::kDecimal, InsertPoint(ClickHouseIntegerText(b, true), t.scale));
      return RowBinaryResult::kOk;
    case Kind::kFixedString: {
      std::string s(b);
      while (!s.empty() && s.back() == '\0') s.pop_back();
      out = Value::String(std::move(s));
      return RowBinaryResult::kOk;
    }
    case Kind::kDate:
      out = Value::Text(ValueType::kDate, ClickHouseDateText(static_cast<int64_t>(LoadLe(b))));
      return RowBinaryResult::kOk;
    case Kind::kDate32:
      out = Value::Text(ValueType::kDate, ClickHouseDateText(SignExtend(LoadLe(b), 4)));
      return RowBinaryResult::kOk;
    case Kind::kDateTime:
      out = Value::Text(ValueType::kTimestamp,
                        ClickHouseTimestampText(static_cast<int64_t>(LoadLe(b)), 0));
      return RowBinaryResult::kOk;
    case Kind::kDateTime64:
      out = Value::Text(ValueType::kTimestamp,
                        ClickHouseTimestampText(static_cast<int64_t>(LoadLe(b)), t.scale));
      return RowBinaryResult::kOk;
    case Kind::kUuid: {
      // Each 8-byte half is a little-endian UInt64: reverse it for the text.
      std::string hex;
      for (int half = 0; half < 2; ++half) {
        for (int i = 7; i >= 0; --i) {
          hex += fmt::format("{:02x}", static_cast<unsigned char>(b[half * 8 + i]));
        }
      }
      out = Value::String(fmt::format("{}-{}-{}-{}-{}", hex.substr(0, 8), hex.substr(8, 4),
                                      hex.substr(12, 4), hex.substr(16, 4), hex.substr(20)));
      return RowBinaryResult::kOk;
    }
    case Kind::kIpv4: {
      const uint64_t v = LoadLe(b);
      out = Value::String(fmt::format("{}.{}.{}.{}", (v >> 24) & 0xFF, (v >> 16) & 0xFF,
                                      (v >> 8) & 0xFF, v & 0xFF));
      return RowBinaryResult::kOk;
    }
    case Kind::kIpv6: {
      char text[INET6_ADDRSTRLEN] = {0};
      if (inet_ntop(AF_INET6, b.data(), text, sizeof(text)) == nullptr) {
        pos_ = start;
        return Corrupt("an IPv6 address that cannot be printed");
      }
      out = Value::String(text);
      return RowBinaryResult::kOk;
    }
    case Kind::kEnum8:
    case Kind::kEnum16: {
      const int64_t v = SignExtend(LoadLe(b), b.size());
      for (const auto& [label, value] : t.enum_values) {
        if (value == v) {
          out = Value::String(label);
          return RowBinaryResult::kOk;
        }
      }
      pos_ = start;
      return Corrupt(fmt::format("enum value {} not in {}", v, t.name));
    }
    default:
      pos_ = start;
      return Corrupt(fmt::format("no decoder for {}", t.name));
  }
}

}  // namespace backflow
