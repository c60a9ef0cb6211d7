#include "backflow/pg/types.h"

#include "gtest/gtest.h"

namespace backflow::pg {
namespace {

TEST(TypesTest, MapsOidsToValueTypes) {
  EXPECT_EQ(ValueTypeForOid(kBoolOid), ValueType::kBool);
  EXPECT_EQ(ValueTypeForOid(kInt2Oid), ValueType::kInt64);
  EXPECT_EQ(ValueTypeForOid(kInt8Oid), ValueType::kInt64);
  EXPECT_EQ(ValueTypeForOid(kFloat4Oid), ValueType::kDouble);
  EXPECT_EQ(ValueTypeForOid(kNumericOid), ValueType::kDecimal);
  EXPECT_EQ(ValueTypeForOid(kUuidOid), ValueType::kString);
  EXPECT_EQ(ValueTypeForOid(kTimestamptzOid), ValueType::kTimestamp);
  EXPECT_EQ(ValueTypeForOid(kJsonbOid), ValueType::kJson);
  EXPECT_EQ(ValueTypeForOid(kByteaOid), ValueType::kBytes);
  EXPECT_EQ(ValueTypeForOid(1007), ValueType::kString);  // int4[]
  EXPECT_EQ(ValueTypeForOid(99999), ValueType::kString);
}

TEST(TypesTest, NamesTypesWithModifiers) {
  EXPECT_EQ(TypeNameForOid(kNumericOid, ((38 << 16) | 10) + 4), "numeric(38,10)");
  EXPECT_EQ(TypeNameForOid(kNumericOid, -1), "numeric");
  EXPECT_EQ(TypeNameForOid(kVarcharOid, 14), "character varying(10)");
  EXPECT_EQ(TypeNameForOid(99999, -1), "oid 99999");
}

TEST(TypesTest, DecodesTimestamps) {
  EXPECT_EQ(DecodeText(kTimestamptzOid, "2024-01-02 03:04:05+00"),
            Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05Z"));
  EXPECT_EQ(DecodeText(kTimestamptzOid, "2024-01-02 03:04:05.000123+00"),
            Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.000123Z"));
  EXPECT_EQ(DecodeText(kTimestamptzOid, "2024-01-02 03:04:05+05:30"),
            Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05+05:30"));
  EXPECT_EQ(DecodeText(kTimestamptzOid, "2024-01-02 03:04:05-08"),
            Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05-08:00"));
  EXPECT_EQ(DecodeText(kTimestampOid, "2024-01-02 03:04:05.25"),
            Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.25"));
  EXPECT_EQ(DecodeText(kTimestampOid, "0044-03-15 00:00:00 BC"),
            Value::String("0044-03-15 00:00:00 BC"));
  EXPECT_EQ(DecodeText(kTimestamptzOid, "-infinity"), Value::String("-infinity"));
  EXPECT_EQ(DecodeText(kDateOid, "2024-02-29"), Value::Text(ValueType::kDate, "2024-02-29"));
  EXPECT_EQ(DecodeText(kDateOid, "infinity"), Value::String("infinity"));
}

TEST(TypesTest, DecodesNumbersAndBytes) {
  EXPECT_EQ(DecodeText(kInt8Oid, "-9223372036854775808"),
            Value::Int64(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(DecodeText(kFloat8Oid, "0.1"), Value::Double(0.1));
  EXPECT_EQ(DecodeText(kFloat8Oid, "-Infinity"),
            Value::Double(-std::numeric_limits<double>::infinity()));
  EXPECT_EQ(DecodeText(kNumericOid, "-0.000000001"),
            Value::Text(ValueType::kDecimal, "-0.000000001"));
  EXPECT_EQ(DecodeText(kNumericOid, "Infinity"), Value::String("Infinity"));
  EXPECT_EQ(DecodeText(kBoolOid, "f"), Value::Bool(false));
  EXPECT_EQ(DecodeText(kByteaOid, "\\x"), Value::Text(ValueType::kBytes, ""));
  EXPECT_EQ(DecodeText(kByteaOid, "\\xDEad"), Value::Text(ValueType::kBytes, "\xde\xad"));
}

TEST(TypesTest, CompactsJsonOutsideStrings) {
  EXPECT_EQ(CompactJson("{\"a b\": [1, 2], \"c\": \"x \\\" y\"}"),
            "{\"a b\":[1,2],\"c\":\"x \\\" y\"}");
  EXPECT_EQ(CompactJson(" \"\\\\\" "), "\"\\\\\"");
}

}  // namespace
}  // namespace backflow::pg
