#include "backflow/common/json_writer.h"

#include <gtest/gtest.h>

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

TEST(JsonWriterTest, NonFiniteDoublesBecomeNull) {
  JsonWriter w;
  w.BeginArray().Double(1.0 / 0.0).EndArray();
  EXPECT_EQ(w.str(), "[null]");
}

}  // namespace
}  // namespace backflow
