#include "backflow/pg/types.h"

#include <charconv>
#include <cmath>
#include <limits>

#include "fmt/format.h"

namespace backflow::pg {
namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// "YYYY-MM-DD" at the start of `text` (four-digit years only).
bool StartsWithIsoDate(std::string_view text) {
  return text.size() >= 10 && IsDigit(text[0]) && IsDigit(text[1]) && IsDigit(text[2]) &&
         IsDigit(text[3]) && text[4] == '-' && IsDigit(text[5]) && IsDigit(text[6]) &&
         text[7] == '-' && IsDigit(text[8]) && IsDigit(text[9]);
}

// PostgreSQL ISO output ("2024-01-02 03:04:05.5+00") to ISO-8601
// ("2024-01-02T03:04:05.5Z"). Returns false for forms ISO-8601 cannot hold
// (infinity, BC, five-digit years).
bool IsoTimestamp(std::string_view text, bool with_zone, std::string& out) {
  if (!StartsWithIsoDate(text) || text.size() < 19 || text[10] != ' ' || text.ends_with(" BC")) {
    return false;
  }
  out.assign(text);
  out[10] = 'T';
  if (!with_zone) return true;
  size_t sign = out.find_last_of("+-");
  if (sign == std::string::npos || sign < 19) return false;
  std::string_view offset = std::string_view(out).substr(sign + 1);
  if (offset == "00" || offset == "00:00" || offset == "00:00:00") {
    out.resize(sign);
    out.push_back('Z');
  } else if (offset.size() == 2) {
    out += ":00";  // "+05" -> "+05:00"
  }
  return true;
}

int HexNibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Value DecodeBytea(std::string_view text) {
  if (!text.starts_with("\\x")) return Value::String(std::string(text));
  std::string bytes;
  bytes.reserve((text.size() - 2) / 2);
  for (size_t i = 2; i + 1 < text.size(); i += 2) {
    int hi = HexNibble(text[i]);
    int lo = HexNibble(text[i + 1]);
    if (hi < 0 || lo < 0) return Value::String(std::string(text));
    bytes.push_back(static_cast<char>(hi * 16 + lo));
  }
  return Value::Text(ValueType::kBytes, std::move(bytes));
}

Value DecodeDouble(std::string_view text) {
  if (text == "NaN") return Value::Double(std::numeric_limits<double>::quiet_NaN());
  if (text == "Infinity") return Value::Double(std::numeric_limits<double>::infinity());
  if (text == "-Infinity") return Value::Double(-std::numeric_limits<double>::infinity());
  double d = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), d);
  if (ec != std::errc() || ptr != text.data() + text.size()) {
    return Value::String(std::string(text));
  }
  return Value::Double(d);
}

}  // namespace

ValueType ValueTypeForOid(Oid oid) {
  switch (oid) {
    case kBoolOid:
      return ValueType::kBool;
    case kInt2Oid:
    case kInt4Oid:
    case kInt8Oid:
      return ValueType::kInt64;
    case kFloat4Oid:
    case kFloat8Oid:
      return ValueType::kDouble;
    case kNumericOid:
      return ValueType::kDecimal;
    case kDateOid:
      return ValueType::kDate;
    case kTimestampOid:
    case kTimestamptzOid:
      return ValueType::kTimestamp;
    case kJsonOid:
    case kJsonbOid:
      return ValueType::kJson;
    case kByteaOid:
      return ValueType::kBytes;
    default:
      return ValueType::kString;
  }
}

std::string TypeNameForOid(Oid oid, int typmod) {
  switch (oid) {
    case kBoolOid:
      return "boolean";
    case kByteaOid:
      return "bytea";
    case kNameOid:
      return "name";
    case kInt8Oid:
      return "bigint";
    case kInt2Oid:
      return "smallint";
    case kInt4Oid:
      return "integer";
    case kTextOid:
      return "text";
    case kJsonOid:
      return "json";
    case kJsonbOid:
      return "jsonb";
    case kFloat4Oid:
      return "real";
    case kFloat8Oid:
      return "double precision";
    case kUuidOid:
      return "uuid";
    case kDateOid:
      return "date";
    case kBpcharOid:
      return typmod >= 4 ? fmt::format("character({})", typmod - 4) : "character";
    case kVarcharOid:
      return typmod >= 4 ? fmt::format("character varying({})", typmod - 4) : "character varying";
    case kTimestampOid:
      return typmod >= 0 ? fmt::format("timestamp({}) without time zone", typmod)
                         : "timestamp without time zone";
    case kTimestamptzOid:
      return typmod >= 0 ? fmt::format("timestamp({}) with time zone", typmod)
                         : "timestamp with time zone";
    case kNumericOid:
      if (typmod < 4) return "numeric";
      return fmt::format("numeric({},{})", ((typmod - 4) >> 16) & 0xffff,
                         static_cast<int16_t>((typmod - 4) & 0xffff));
    case 1000:
      return "boolean[]";
    case 1005:
      return "smallint[]";
    case 1007:
      return "integer[]";
    case 1009:
      return "text[]";
    case 1015:
      return "character varying[]";
    case 1016:
      return "bigint[]";
    case 1021:
      return "real[]";
    case 1022:
      return "double precision[]";
    case 1182:
      return "date[]";
    case 1115:
      return "timestamp without time zone[]";
    case 1185:
      return "timestamp with time zone[]";
    case 1231:
      return "numeric[]";
    case 2951:
      return "uuid[]";
    case 3807:
      return "jsonb[]";
    case 199:
      return "json[]";
    case 1083:
      return "time without time zone";
    case 1266:
      return "time with time zone";
    case 1186:
      return "interval";
    case 26:
      return "oid";
    case 18:
      return "\"char\"";
    case 869:
      return "inet";
    case 650:
      return "cidr";
    case 142:
      return "xml";
    default:
      return fmt::format("oid {}", oid);
  }
}

Schema SchemaFromResult(const PGresult* result) {
  Schema schema;
  int n = PQnfields(result);
  schema.reserve(n);
  for (int i = 0; i < n; ++i) {
    Oid oid = PQftype(result, i);
    schema.push_back(
        Column{PQfname(result, i), ValueTypeForOid(oid), TypeNameForOid(oid, PQfmod(result, i))});
  }
  return schema;
}

Value DecodeText(Oid oid, std::string_view text) {
  switch (oid) {
    case kBoolOid:
      return Value::Bool(text == "t" || text == "true");
    case kInt2Oid:
    case kInt4Oid:
    case kInt8Oid: {
      int64_t i = 0;
      auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), i);
      if (ec != std::errc() || ptr != text.data() + text.size()) {
        return Value::String(std::string(text));
      }
      return Value::Int64(i);
    }
    case kFloat4Oid:
    case kFloat8Oid:
      return DecodeDouble(text);
    case kNumericOid:
      if (text == "NaN" || text == "Infinity" || text == "-Infinity") {
        return Value::String(std::string(text));
      }
      return Value::Text(ValueType::kDecimal, std::string(text));
    case kDateOid:
      if (text.size() == 10 && StartsWithIsoDate(text)) {
        return Value::Text(ValueType::kDate, std::string(text));
      }
      return Value::String(std::string(text));
    case kTimestampOid:
    case kTimestamptzOid: {
      std::string iso;
      if (IsoTimestamp(text, oid == kTimestamptzOid, iso)) {
        return Value::Text(ValueType::kTimestamp, std::move(iso));
      }
      return Value::String(std::string(text));
    }
    case kJsonOid:
    case kJsonbOid:
      return Value::Text(ValueType::kJson, CompactJson(text));
    case kByteaOid:
      return DecodeBytea(text);
    default:
      return Value::String(std::string(text));
  }
}

}  // namespace backflow::pg
