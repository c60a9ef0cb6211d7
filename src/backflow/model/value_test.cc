#include "backflow/model/value.h"

#include <gtest/gtest.h>

#include <limits>

namespace backflow {
namespace {

TEST(ValueTest, RendersJsonWithoutLosingPrecision) {
  auto json = [](const Value& v) {
    std::string out;
    v.AppendJson(out);
    return out;
  };
  EXPECT_EQ(json(Value::Null()), "null");
  EXPECT_EQ(json(Value::Bool(true)), "true");
  EXPECT_EQ(json(Value::Int64(std::numeric_limits<int64_t>::min())), "-9223372036854775808");
  EXPECT_EQ(json(Value::Text(ValueType::kDecimal, "12345678901234567890.123456789")),
            "12345678901234567890.123456789");
  EXPECT_EQ(json(Value::Double(0.1)), "0.1");
  EXPECT_EQ(json(Value::String("a\"b")), "\"a\\\"b\"");
  EXPECT_EQ(json(Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05Z")),
            "\"2024-01-02T03:04:05Z\"");
  EXPECT_EQ(json(Value::Text(ValueType::kJson, R"({"a":[1]})")), R"({"a":[1]})");
  EXPECT_EQ(json(Value::Text(ValueType::kBytes, std::string("\x00\xff", 2))), "\"AP8=\"");
}

TEST(ValueTest, RowEncodingRoundTrips) {
  Row row = {Value::Null(),
             Value::Bool(false),
             Value::Int64(-5),
             Value::Int64(std::numeric_limits<int64_t>::max()),
             Value::Double(-2.25),
             Value::String(std::string("nul\0byte", 8)),
             Value::Text(ValueType::kDecimal, "-0.001")};
  std::string encoded;
  EncodeRow(row, encoded);
  auto decoded = DecodeRow(encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, row);
}

TEST(ValueTest, CorruptEncodingIsAnErrorNotACrash) {
  std::string encoded;
  EncodeRow({Value::String("hello")}, encoded);
  for (size_t cut = 0; cut < encoded.size(); ++cut) {
    EXPECT_FALSE(DecodeRow(std::string_view(encoded).substr(0, cut)).ok()) << cut;
  }
}

TEST(ValueTest, FindsColumnsByName) {
  Schema s = {{"id", ValueType::kInt64, "int8"}, {"email", ValueType::kString, "text"}};
  EXPECT_EQ(FindColumn(s, "email"), 1);
  EXPECT_EQ(FindColumn(s, "nope"), -1);
}

}  // namespace
}  // namespace backflow
