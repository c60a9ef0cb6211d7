#include "backflow/sources/clickhouse/clickhouse_rowbinary.h"

#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {

// Readable failures for Value comparisons (declared in the other test files).
void PrintTo(const Value& v, std::ostream* os) {
  *os << ValueTypeName(v.type()) << "("
      << (v.type() == ValueType::kDouble ? std::to_string(v.double_value()) : v.ToString()) << ")";
}

namespace {

using Kind = ClickHouseType::Kind;
using ::testing::HasSubstr;

std::string Le(uint64_t v, size_t bytes) {
  std::string out;
  for (size_t i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return out;
}

std::string Str(std::string_view s) {
  std::string out;
  uint64_t n = s.size();
  do {
    unsigned char b = n & 0x7F;
    n >>= 7;
    if (n) b |= 0x80;
    out.push_back(static_cast<char>(b));
  } while (n);
  return out + std::string(s);
}

ClickHouseType Type(std::string_view text, bool json_as_string = false) {
  ClickHouseTypeOptions options;
  options.json_as_string = json_as_string;
  absl::StatusOr<ClickHouseType> t = ParseClickHouseType(text, options);
  EXPECT_TRUE(t.ok()) << text << ": " << t.status();
  return t.ok() ? *t : ClickHouseType{};
}

// Decodes `bytes` as one value of `type`, requiring every byte to be used.
Value Decode(std::string_view type, const std::string& bytes) {
  ClickHouseType t = Type(type, true);
  RowBinaryDecoder dec(bytes);
  Value v;
  RowBinaryResult r = dec.ReadValue(t, v);
  EXPECT_EQ(r, RowBinaryResult::kOk) << type << ": " << dec.error();
  EXPECT_EQ(dec.position(), bytes.size()) << type;
  return v;
}

Value Text(ValueType t, std::string s) { return Value::Text(t, std::move(s)); }

TEST(ClickHouseTypeTest, ParsesNestedTypes) {
  ClickHouseType t = Type("Nullable(Decimal(18, 4))");
  ASSERT_EQ(t.kind, Kind::kNullable);
  EXPECT_EQ(t.elements[0].kind, Kind::kDecimal);
  EXPECT_EQ(t.elements[0].precision, 18);
  EXPECT_EQ(t.elements[0].scale, 4);
  EXPECT_EQ(t.elements[0].size, 8);
  EXPECT_EQ(ClickHouseValueType(t), ValueType::kDecimal);

  t = Type("DateTime64(3, 'Europe/Berlin')");
  EXPECT_EQ(t.kind, Kind::kDateTime64);
  EXPECT_EQ(t.scale, 3);
  EXPECT_EQ(t.timezone, "Europe/Berlin");
  EXPECT_EQ(Type("DateTime('Asia/Kolkata')").timezone, "Asia/Kolkata");

  t = Type(R"(Enum8('a' = 1, 'it\'s = ok' = -2))");
  ASSERT_EQ(t.enum_values.size(), 2u);
  EXPECT_EQ(t.enum_values[1].first, "it's = ok");
  EXPECT_EQ(t.enum_values[1].second, -2);

  t = Type("Tuple(id UInt64, `the tags` Array(LowCardinality(String)))");
  ASSERT_EQ(t.kind, Kind::kTuple);
  EXPECT_EQ(t.element_names, (std::vector<std::string>{"id", "the tags"}));
  EXPECT_EQ(t.elements[1].elements[0].kind, Kind::kString);
  EXPECT_TRUE(Type("Tuple(UInt8, String)").element_names.empty());

  t = Type("LowCardinality(Nullable(String))");
  EXPECT_EQ(t.kind, Kind::kNullable);
  EXPECT_EQ(t.name, "LowCardinality(Nullable(String))");
  EXPECT_EQ(ClickHouseValueType(t), ValueType::kString);

  t = Type("Variant(UInt64, String, Array(UInt8))");
  ASSERT_EQ(t.elements.size(), 3u);  // discriminants follow the sorted names
  EXPECT_EQ(t.elements[0].name, "Array(UInt8)");
  EXPECT_EQ(t.elements[1].name, "String");
  EXPECT_EQ(t.elements[2].name, "UInt64");

  EXPECT_EQ(Type("SimpleAggregateFunction(sum, UInt64)").kind, Kind::kUInt);
  EXPECT_EQ(Type("Point").kind, Kind::kTuple);
  EXPECT_EQ(Type("MultiPolygon").kind, Kind::kArray);
  EXPECT_EQ(Type("Map(String, UInt64)").elements.size(), 2u);
  EXPECT_EQ(Type("Decimal128(3)").size, 16);
  EXPECT_EQ(Type("Decimal(76, 10)").size, 32);
  EXPECT_EQ(Type("IntervalSecond").kind, Kind::kInterval);

  struct Mapping {
    const char* type;
    ValueType value;
  };
  for (Mapping m :
       {Mapping{"Int8", ValueType::kInt64}, Mapping{"UInt64", ValueType::kInt64},
        Mapping{"Int128", ValueType::kDecimal}, Mapping{"UInt256", ValueType::kDecimal},
        Mapping{"Float32", ValueType::kDouble}, Mapping{"Bool", ValueType::kBool},
        Mapping{"Date32", ValueType::kDate}, Mapping{"DateTime", ValueType::kTimestamp},
        Mapping{"UUID", ValueType::kString}, Mapping{"IPv6", ValueType::kString},
        Mapping{"Enum16('x' = 1000)", ValueType::kString},
        Mapping{"Array(Int32)", ValueType::kJson}, Mapping{"FixedString(3)", ValueType::kString}}) {
    EXPECT_EQ(ClickHouseValueType(Type(m.type)), m.value) << m.type;
  }
}

TEST(ClickHouseTypeTest, RejectsWhatItCannotRead) {
  auto dynamic = ParseClickHouseType("Dynamic");
  EXPECT_EQ(dynamic.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dynamic.status().message(), HasSubstr("toString(col)"));
  auto json_type = ParseClickHouseType("JSON");
  EXPECT_THAT(json_type.status().message(), HasSubstr("output_format_binary_write_json_as_string"));
  ClickHouseTypeOptions options;
  options.json_as_string = true;
  EXPECT_EQ(ParseClickHouseType("JSON(a UInt32)", options)->kind, Kind::kJsonString);
  for (const char* bad : {"", "Array(", "Decimal(80, 2)", "DateTime64(12)", "Enum8(a = 1)",
                          "Nullable(Nullable(Int8))", "Tuple(a UInt8, String)", "Foo(1)",
                          "AggregateFunction(sum, UInt64)", "Decimal(5, 7)"}) {
    EXPECT_FALSE(ParseClickHouseType(bad).ok()) << bad;
  }
}

TEST(ClickHouseRowBinaryTest, IntegersAreExact) {
  EXPECT_EQ(Decode("Int8", Le(0xFF, 1)), Value::Int64(-1));
  EXPECT_EQ(Decode("Int64", Le(0x8000000000000000ULL, 8)),
            Value::Int64(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(Decode("UInt32", Le(0xFFFFFFFF, 4)), Value::Int64(4294967295));
  EXPECT_EQ(Decode("UInt64", Le(0x7FFFFFFFFFFFFFFFULL, 8)),
            Value::Int64(std::numeric_limits<int64_t>::max()));
  // Above int64: an exact decimal, never a double.
  EXPECT_EQ(Decode("UInt64", Le(~0ULL, 8)), Text(ValueType::kDecimal, "18446744073709551615"));
  EXPECT_EQ(Decode("Int128", std::string(16, '\xFF')), Text(ValueType::kDecimal, "-1"));
  EXPECT_EQ(Decode("UInt128", Le(0, 8) + Le(1, 8)),
            Text(ValueType::kDecimal, "18446744073709551616"));
  EXPECT_EQ(Decode("UInt256", std::string(32, '\xFF')),
            Text(ValueType::kDecimal,
                 "115792089237316195423570985008687907853269984665640564039457584007913129639935"));
  EXPECT_EQ(Decode("Int256", std::string(31, '\0') + "\x80"),
            Text(ValueType::kDecimal,
                 "-57896044618658097711785492504343953926634992332820282019728792003956564819968"));
  EXPECT_EQ(Decode("IntervalDay", Le(static_cast<uint64_t>(-3), 8)), Value::Int64(-3));
}

TEST(ClickHouseRowBinaryTest, DecimalsKeepTheirScale) {
  EXPECT_EQ(Decode("Decimal(9, 2)", Le(static_cast<uint32_t>(-1250), 4)),
            Text(ValueType::kDecimal, "-12.50"));
  EXPECT_EQ(Decode("Decimal(9, 2)", Le(5, 4)), Text(ValueType::kDecimal, "0.05"));
  EXPECT_EQ(Decode("Decimal(18, 0)", Le(42, 8)), Text(ValueType::kDecimal, "42"));
  // 12345678901234567890.123456789 as Decimal128(9).
  std::string v128 = Le(0x46BEC9B16E398115ULL, 8) + Le(0x27E41B32ULL, 8);
  EXPECT_EQ(ClickHouseIntegerText(v128, true), "12345678901234567890123456789");
  EXPECT_EQ(Decode("Decimal(38, 9)", v128),
            Text(ValueType::kDecimal, "12345678901234567890.123456789"));
  EXPECT_EQ(Decode("Decimal(76, 70)", std::string(32, '\xFF')),
            Text(ValueType::kDecimal, "-0." + std::string(69, '0') + "1"));
}

TEST(ClickHouseRowBinaryTest, FloatsAndBooleans) {
  float f = 1.5f;
  uint32_t fb;
  std::memcpy(&fb, &f, 4);
  EXPECT_EQ(Decode("Float32", Le(fb, 4)), Value::Double(1.5));
  double d = -0.1;
  uint64_t db;
  std::memcpy(&db, &d, 8);
  EXPECT_EQ(Decode("Float64", Le(db, 8)), Value::Double(-0.1));
  EXPECT_EQ(Decode("BFloat16", Le(fb >> 16, 2)), Value::Double(1.5));
  EXPECT_EQ(Decode("Bool", "\x01"), Value::Bool(true));
  EXPECT_EQ(Decode("Bool", std::string(1, '\0')), Value::Bool(false));
}

TEST(ClickHouseRowBinaryTest, TextTypes) {
  EXPECT_EQ(Decode("String", Str("caf\xC3\xA9")), Value::String("caf\xC3\xA9"));
  // Bytes are kept as they are, even when they are not UTF-8.
  EXPECT_EQ(Decode("String", Str(std::string("\xFF\x00z", 3))),
            Value::String(std::string("\xFF\x00z", 3)));
  EXPECT_EQ(Decode("FixedString(5)", std::string("ab\0\0\0", 5)), Value::String("ab"));
  // UUID 61f0c404-5cb3-11e7-907b-a6006ad3dba0: each 8-byte half reversed.
  std::string uuid("\xE7\x11\xB3\x5C\x04\xC4\xF0\x61\xA0\xDB\xD3\x6A\x00\xA6\x7B\x90", 16);
  EXPECT_EQ(Decode("UUID", uuid), Value::String("61f0c404-5cb3-11e7-907b-a6006ad3dba0"));
  EXPECT_EQ(Decode("IPv4", Le(0x7F000001, 4)), Value::String("127.0.0.1"));
  std::string v6(16, '\0');
  v6[0] = '\x20';
  v6[1] = '\x01';
  v6[2] = '\x0d';
  v6[3] = '\xb8';
  v6[15] = '\x01';
  EXPECT_EQ(Decode("IPv6", v6), Value::String("2001:db8::1"));
  EXPECT_EQ(Decode("Enum8('a' = 1, 'b' = -2)", "\xFE"), Value::String("b"));
  EXPECT_EQ(Decode("Enum16('x' = 1000)", Le(1000, 2)), Value::String("x"));
}

TEST(ClickHouseRowBinaryTest, DatesAndTimestampsAreUtc) {
  EXPECT_EQ(Decode("Date", Le(19875, 2)), Text(ValueType::kDate, "2024-06-01"));
  EXPECT_EQ(Decode("Date32", Le(static_cast<uint32_t>(-25567), 4)),
            Text(ValueType::kDate, "1900-01-01"));
  // The zone in the type only changes how ClickHouse displays the instant.
  EXPECT_EQ(Decode("DateTime('Europe/Berlin')", Le(1717200123, 4)),
            Text(ValueType::kTimestamp, "2024-06-01T00:02:03Z"));
  EXPECT_EQ(Decode("DateTime64(3, 'Asia/Tokyo')", Le(1717200123123ULL, 8)),
            Text(ValueType::kTimestamp, "2024-06-01T00:02:03.123Z"));
  EXPECT_EQ(Decode("DateTime64(6)", Le(1717200123500000ULL, 8)),
            Text(ValueType::kTimestamp, "2024-06-01T00:02:03.5Z"));
  EXPECT_EQ(Decode("DateTime64(3)", Le(static_cast<uint64_t>(-1), 8)),
            Text(ValueType::kTimestamp, "1969-12-31T23:59:59.999Z"));
  EXPECT_EQ(Decode("DateTime64(9)", Le(0, 8)), Text(ValueType::kTimestamp, "1970-01-01T00:00:00Z"));
}

TEST(ClickHouseRowBinaryTest, NullableAndLowCardinality) {
  EXPECT_EQ(Decode("Nullable(Int32)", "\x01"), Value::Null());
  EXPECT_EQ(Decode("Nullable(Int32)", std::string(1, '\0') + Le(7, 4)), Value::Int64(7));
  EXPECT_EQ(Decode("LowCardinality(Nullable(String))", std::string(1, '\0') + Str("x")),
            Value::String("x"));
  EXPECT_EQ(Decode("Nullable(Nothing)", "\x01"), Value::Null());
}

TEST(ClickHouseRowBinaryTest, ContainersBecomeCompactJson) {
  // [1, NULL, 3]
  std::string arr =
      "\x03" + std::string(1, '\0') + Le(1, 4) + "\x01" + std::string(1, '\0') + Le(3, 4);
  EXPECT_EQ(Decode("Array(Nullable(Int32))", arr), Text(ValueType::kJson, "[1,null,3]"));
  EXPECT_EQ(Decode("Array(String)", std::string(1, '\0')), Text(ValueType::kJson, "[]"));
  // {'a': 18446744073709551615, 'b"': 2}: exact integers, escaped keys.
  std::string map = "\x02" + Str("a") + Le(~0ULL, 8) + Str("b\"") + Le(2, 8);
  EXPECT_EQ(Decode("Map(String, UInt64)", map),
            Text(ValueType::kJson, R"({"a":18446744073709551615,"b\"":2})"));
  EXPECT_EQ(Decode("Map(UInt8, Date)", "\x01\x07" + Le(19875, 2)),
            Text(ValueType::kJson, R"({"7":"2024-06-01"})"));
  // Named tuples are objects, unnamed ones arrays.
  std::string tuple = Le(5, 8) + Str("x") + Le(static_cast<uint32_t>(-1250), 4);
  EXPECT_EQ(Decode("Tuple(id UInt64, s String, d Decimal(9, 2))", tuple),
            Text(ValueType::kJson, R"({"id":5,"s":"x","d":-12.50})"));
  EXPECT_EQ(Decode("Tuple(UInt64, String, Decimal(9, 2))", tuple),
            Text(ValueType::kJson, R"([5,"x",-12.50])"));
  // Variant(UInt64, String): discriminants follow the sorted names (String = 0).
  EXPECT_EQ(Decode("Variant(UInt64, String)", std::string(1, '\0') + Str("hi")),
            Text(ValueType::kJson, R"("hi")"));
  EXPECT_EQ(Decode("Variant(UInt64, String)", "\x01" + Le(9, 8)), Text(ValueType::kJson, "9"));
  EXPECT_EQ(Decode("Variant(UInt64, String)", "\xFF"), Text(ValueType::kJson, "null"));
  // Strings inside JSON must stay valid UTF-8.
  EXPECT_EQ(Decode("Array(String)", "\x01" + Str("a\xFFz")),
            Text(ValueType::kJson, "[\"a\xEF\xBF\xBDz\"]"));
  // Floats, booleans, timestamps and UUIDs inside JSON.
  double d = 0.25;
  uint64_t db;
  std::memcpy(&db, &d, 8);
  std::string inf_bits = Le(0x7FF0000000000000ULL, 8);
  EXPECT_EQ(Decode("Array(Float64)", "\x02" + Le(db, 8) + inf_bits),
            Text(ValueType::kJson, "[0.25,null]"));
  EXPECT_EQ(Decode("Tuple(Bool, DateTime)", "\x01" + Le(1717200123, 4)),
            Text(ValueType::kJson, R"([true,"2024-06-01T00:02:03Z"])"));
  EXPECT_EQ(Decode("Point", Le(db, 8) + Le(db, 8)), Text(ValueType::kJson, "[0.25,0.25]"));
  EXPECT_EQ(Decode("JSON", Str(R"({"a": [1, 2]})")), Text(ValueType::kJson, R"({"a":[1,2]})"));
}

TEST(ClickHouseRowBinaryTest, HeaderAndRows) {
  std::string bytes = "\x02" + Str("id") + Str("name") + Str("UInt64") + Str("Nullable(String)");
  std::string row1 = Le(1, 8) + std::string(1, '\0') + Str("ann");
  std::string row2 = Le(2, 8) + "\x01";
  bytes += row1 + row2;
  RowBinaryDecoder dec(bytes);
  std::vector<std::string> names, types;
  ASSERT_EQ(dec.ReadHeader(names, types), RowBinaryResult::kOk);
  EXPECT_EQ(names, (std::vector<std::string>{"id", "name"}));
  EXPECT_EQ(types, (std::vector<std::string>{"UInt64", "Nullable(String)"}));
  std::vector<ClickHouseType> columns = {Type("UInt64"), Type("Nullable(String)")};
  Row row;
  ASSERT_EQ(dec.ReadRow(columns, row), RowBinaryResult::kOk);
  EXPECT_EQ(row, (Row{Value::Int64(1), Value::String("ann")}));
  ASSERT_EQ(dec.ReadRow(columns, row), RowBinaryResult::kOk);
  EXPECT_EQ(row, (Row{Value::Int64(2), Value::Null()}));
  EXPECT_EQ(dec.position(), bytes.size());
  EXPECT_EQ(dec.ReadRow(columns, row), RowBinaryResult::kNeedMore);
}

TEST(ClickHouseRowBinaryTest, EveryTruncationNeedsMoreAndConsumesNothing) {
  std::vector<ClickHouseType> columns = {
      Type("Nullable(String)"), Type("Array(Map(String, Tuple(a Int32, b Nullable(UInt8))))"),
      Type("Decimal(38, 2)"), Type("Variant(String, UInt64)")};
  std::string row = std::string(1, '\0') + Str(std::string(200, 'x'));  // 2-byte length
  row += "\x01\x01" + Str("k") + Le(static_cast<uint32_t>(-5), 4) + std::string(1, '\0') + "\x07";
  row += Le(12345, 8) + Le(0, 8);
  row += "\x01" + Le(99, 8);
  for (size_t n = 0; n < row.size(); ++n) {
    RowBinaryDecoder dec(std::string_view(row).substr(0, n));
    Row out;
    ASSERT_EQ(dec.ReadRow(columns, out), RowBinaryResult::kNeedMore) << n;
    EXPECT_EQ(dec.position(), 0u) << n;
  }
  RowBinaryDecoder dec(row);
  Row out;
  ASSERT_EQ(dec.ReadRow(columns, out), RowBinaryResult::kOk);
  EXPECT_EQ(out[1], Text(ValueType::kJson, R"([{"k":{"a":-5,"b":7}}])"));
  EXPECT_EQ(out[2], Text(ValueType::kDecimal, "123.45"));
  EXPECT_EQ(out[3], Text(ValueType::kJson, "99"));
}

TEST(ClickHouseRowBinaryTest, CorruptBytesAreReported) {
  auto corrupt = [](std::string_view type, const std::string& bytes) {
    RowBinaryDecoder dec(bytes);
    Value v;
    EXPECT_EQ(dec.ReadValue(Type(type), v), RowBinaryResult::kCorrupt) << type;
    EXPECT_EQ(dec.position(), 0u);
    return dec.error();
  };
  EXPECT_THAT(corrupt("Nullable(Int8)", "\x02\x01"), HasSubstr("Nullable flag"));
  EXPECT_THAT(corrupt("Enum8('a' = 1)", "\x05"), HasSubstr("enum value 5"));
  EXPECT_THAT(corrupt("Variant(String, UInt64)", "\x02"), HasSubstr("discriminant"));
  EXPECT_THAT(corrupt("String", std::string(11, '\xFF')), HasSubstr("LEB128"));
  std::vector<std::string> names, types;
  RowBinaryDecoder dec("\xFF\xFF\xFF\x7F");
  EXPECT_EQ(dec.ReadHeader(names, types), RowBinaryResult::kCorrupt);
}

}  // namespace
}  // namespace backflow
