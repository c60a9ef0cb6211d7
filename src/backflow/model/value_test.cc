#include "backflow/model/value.h"

#include <gtest/gtest.h>

#include <cstring>
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

// Every type, with the edge values of its payload.
Row AllKindsOfValues() {
  return {Value::Null(),
          Value::Bool(false),
          Value::Bool(true),
          Value::Int64(0),
          Value::Int64(-1),
          Value::Int64(std::numeric_limits<int64_t>::min()),
          Value::Int64(std::numeric_limits<int64_t>::max()),
          Value::Double(-2.25),
          Value::Double(std::numeric_limits<double>::infinity()),
          Value::Text(ValueType::kDecimal, "-0.001"),
          Value::String(""),
          Value::String(std::string("nul\0byte", 8)),
          Value::String(std::string(300, 'x')),  // a two-byte length
          Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05Z"),
          Value::Text(ValueType::kDate, "2024-01-02"),
          Value::Text(ValueType::kJson, R"({"a":1})"),
          Value::Text(ValueType::kBytes, std::string("\x00\xff", 2))};
}

TEST(ValueTest, RowEncoderWritesWhatEncodeRowWrites) {
  const Row row = AllKindsOfValues();
  std::string whole;
  EncodeRow(row, whole);
  RowEncoder encoder;
  for (int pass = 0; pass < 3; ++pass) {  // rows after the first reuse the buffer
    encoder.Begin(row.size());
    for (const Value& v : row) encoder.Append(v);
    EXPECT_EQ(encoder.row(), whole) << pass;
  }

  encoder.Begin(4);
  encoder.AppendNull();
  encoder.AppendInt(ValueType::kInt64, -7);
  encoder.AppendDouble(0.5);
  encoder.AppendText(ValueType::kString, std::string(5000, 'y'));  // grows the buffer
  std::string expected;
  EncodeRow(
      {Value::Null(), Value::Int64(-7), Value::Double(0.5), Value::String(std::string(5000, 'y'))},
      expected);
  EXPECT_EQ(encoder.row(), expected);
}

// Texts written in place: one-byte lengths written after the text, room
// left unused, the longer lengths of a max_size of 128 and more, a buffer
// that grows on the way.
TEST(ValueTest, TextsWrittenInPlaceEncodeAsAppendTextDoes) {
  const std::vector<std::pair<size_t, std::string>> cases = {{0, ""},
                                                             {5, ""},
                                                             {5, "12.50"},
                                                             {127, std::string(127, 'a')},
                                                             {127, "-3"},
                                                             {128, ""},
                                                             {200, "x"},
                                                             {200, std::string(200, 'b')},
                                                             {4000, std::string(3000, 'c')}};
  RowEncoder in_place, copied;
  for (int pass = 0; pass < 2; ++pass) {
    in_place.Begin(cases.size() + 1);
    copied.Begin(cases.size() + 1);
    for (const auto& c : cases) {
      const std::string& text = c.second;  // (clang 14 cannot capture a structured binding)
      in_place.AppendTextInPlace(ValueType::kDecimal, c.first, [&text](char* p) {
        std::memcpy(p, text.data(), text.size());
        return p + text.size();
      });
      copied.AppendText(ValueType::kDecimal, text);
    }
    in_place.AppendInt(ValueType::kInt64, 9);
    copied.AppendInt(ValueType::kInt64, 9);
    EXPECT_EQ(in_place.row(), copied.row()) << pass;
  }
  Row decoded;
  ASSERT_TRUE(DecodeRowInto(in_place.row(), decoded).ok());
  ASSERT_EQ(decoded.size(), cases.size() + 1);
  EXPECT_EQ(decoded[2], Value::Text(ValueType::kDecimal, "12.50"));
}

TEST(ValueTest, DecodesIntoARowItReuses) {
  const Row row = AllKindsOfValues();
  std::string encoded;
  EncodeRow(row, encoded);
  Row into = {Value::String("left over"), Value::Int64(3)};  // other width, other values
  ASSERT_TRUE(DecodeRowInto(encoded, into).ok());
  EXPECT_EQ(into, row);
  std::string shorter;
  EncodeRow({Value::Bool(true)}, shorter);
  ASSERT_TRUE(DecodeRowInto(shorter, into).ok());
  EXPECT_EQ(into, Row{Value::Bool(true)});
}

TEST(ValueTest, ViewsReadEachValueInPlace) {
  const Row row = AllKindsOfValues();
  std::string encoded;
  EncodeRow(row, encoded);
  std::vector<ValueView> views;
  ASSERT_TRUE(DecodeRowViews(encoded, views).ok());
  ASSERT_EQ(views.size(), row.size());
  RowEncoder rebuilt;
  rebuilt.Begin(views.size());
  for (size_t i = 0; i < row.size(); ++i) {
    const Value& v = row[i];
    const ValueView& view = views[i];
    EXPECT_EQ(view.type(), v.type()) << i;
    EXPECT_EQ(view.is_null(), v.is_null()) << i;
    EXPECT_EQ(view.ToString(), v.ToString()) << i;
    if (v.type() == ValueType::kInt64 || v.type() == ValueType::kBool) {
      EXPECT_EQ(view.int_value(), v.int_value()) << i;
      EXPECT_EQ(view.bool_value(), v.bool_value()) << i;
    }
    if (v.type() == ValueType::kDouble) {
      EXPECT_EQ(view.double_value(), v.double_value()) << i;
    }
    EXPECT_EQ(view.text(), v.text()) << i;
    // The text points into the encoding, not at a copy.
    if (!view.text().empty()) {
      EXPECT_GE(view.text().data(), encoded.data());
      EXPECT_LE(view.text().data() + view.text().size(), encoded.data() + encoded.size());
    }
    rebuilt.AppendEncoded(view.encoded());
  }
  EXPECT_EQ(rebuilt.row(), encoded);  // the values' encodings tile the row

  for (size_t cut = 0; cut < encoded.size(); ++cut) {
    EXPECT_FALSE(DecodeRowViews(std::string_view(encoded).substr(0, cut), views).ok()) << cut;
    Row into;
    EXPECT_FALSE(DecodeRowInto(std::string_view(encoded).substr(0, cut), into).ok()) << cut;
  }
}

TEST(ValueTest, FindsColumnsByName) {
  Schema s = {{"id", ValueType::kInt64, "int8"}, {"email", ValueType::kString, "text"}};
  EXPECT_EQ(FindColumn(s, "email"), 1);
  EXPECT_EQ(FindColumn(s, "nope"), -1);
}

}  // namespace
}  // namespace backflow
