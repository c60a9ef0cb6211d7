#include "backflow/common/json_writer.h"

#include <gtest/gtest.h>

#include "fmt/format.h"

namespace backflow {
namespace {

TEST(JsonWriterTest, WritesNestedStructuresWithCommas) {
  JsonWriter w;
  w.BeginObject()
      .Key("a")
      .Int(1)
      .Key("b")
      .BeginArray()
      .String("x")
      .Null()
      .Bool(true)
      .Double(1.5)
      .EndArray()
      .Key("c")
      .BeginObject()
      .EndObject()
      .Key("d")
      .Raw("[1,2]")
      .EndObject();
  EXPECT_EQ(w.str(), R"({"a":1,"b":["x",null,true,1.5],"c":{},"d":[1,2]})");
}

TEST(JsonWriterTest, EscapesControlCharactersAndQuotes) {
  std::string out;
  AppendJsonString(out, "q\"b\\n\n\x01 é");
  EXPECT_EQ(out, "\"q\\\"b\\\\n\\n\\u0001 é\"");
}

// The escaper one byte at a time, as the JSON grammar states it.
std::string ReferenceEscape(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          out += fmt::format("\\u{:04x}", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

// Every byte value at every position of strings long enough for the
// eight-bytes-at-a-time scan, on plain and on high (UTF-8) filler.
TEST(JsonWriterTest, EscapesEveryByteAtEveryPosition) {
  for (char filler : {'a', '\xc3'}) {
    for (size_t size : {1, 7, 8, 9, 16, 23}) {
      for (size_t at = 0; at < size; ++at) {
        for (int byte = 0; byte < 256; ++byte) {
          std::string s(size, filler);
          s[at] = static_cast<char>(byte);
          if (at + 3 < size) s[at + 3] = '"';  // two to escape in one word
          std::string out;
          AppendJsonString(out, s);
          ASSERT_EQ(out, ReferenceEscape(s))
              << "size " << size << ", byte " << byte << " at " << at;
        }
      }
    }
  }
}

TEST(JsonWriterTest, NonFiniteDoublesBecomeNull) {
  JsonWriter w;
  w.BeginArray().Double(1.0 / 0.0).EndArray();
  EXPECT_EQ(w.str(), "[null]");
}

}  // namespace
}  // namespace backflow
