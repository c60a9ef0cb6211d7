#include "backflow/destinations/destination.h"

#include "gtest/gtest.h"

namespace backflow {
namespace {

TEST(RecordPayloadTest, ExpandsDottedPathsAndKeepsTypes) {
  FieldLayout layout;
  layout.fields = {"userId",  "traits.email", "traits.plan", "traits.address.city",
                   "context", "score"};
  layout.identity = {"userId"};
  OutgoingRecord r;
  r.values = {Value::String("u1"),
              Value::String("a@b.c"),
              Value::Null(),
              Value::String("Oslo"),
              Value::Text(ValueType::kJson, R"({"ip":"1.2.3.4"})"),
              Value::Text(ValueType::kDecimal, "12.50")};
  nlohmann::json p = RecordPayload(layout, r);
  EXPECT_EQ(p.dump(),
            R"({"context":{"ip":"1.2.3.4"},"score":12.5,"traits":{"address":{"city":"Oslo"},)"
            R"("email":"a@b.c","plan":null},"userId":"u1"})");

  r.change = ChangeKind::kDeleted;
  r.values = {Value::String("u1")};
  EXPECT_EQ(RecordPayload(layout, r).dump(), R"({"userId":"u1"})");
}

TEST(ValueToJsonTest, KeepsExactDecimalsAndEncodesBytes) {
  EXPECT_EQ(ValueToJson(Value::Text(ValueType::kDecimal, "123456789012345678901234.5")),
            "123456789012345678901234.5");
  EXPECT_EQ(ValueToJson(Value::Text(ValueType::kDecimal, "42")), 42);
  EXPECT_EQ(ValueToJson(Value::Text(ValueType::kBytes, "hi")), "aGk=");
  EXPECT_EQ(ValueToJson(Value::Text(ValueType::kTimestamp, "2026-01-02T03:04:05Z")),
            "2026-01-02T03:04:05Z");
  EXPECT_EQ(ValueToJson(Value::Bool(true)), true);
  EXPECT_TRUE(ValueToJson(Value::Null()).is_null());
}

}  // namespace
}  // namespace backflow
