#include "backflow/mapping/mapper.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

ActionSpec TypedAction() {
  ActionSpec a;
  a.id = "typed";
  a.fields = {{.key = "email", .type = FieldType::kString, .required = true},
              {.key = "age", .type = FieldType::kInteger},
              {.key = "vip", .type = FieldType::kBoolean},
              {.key = "country", .type = FieldType::kString, .default_column = "country"}};
  a.allows_extra_fields = true;
  return a;
}

Schema TestSchema() {
  return {{"id", ValueType::kInt64, ""},
          {"email", ValueType::kString, ""},
          {"age", ValueType::kString, ""},
          {"vip", ValueType::kInt64, ""},
          {"country", ValueType::kString, ""}};
}

TEST(MapperTest, MapsCoercesAndAddsDefaultColumns) {
  ActionSpec action = TypedAction();
  auto m = Mapper::Create("m", "customers",
                          {{"id", "id"}, {"email", "email"}, {"age", "age"}, {"vip", "vip"}},
                          action, TestSchema(), "id");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->layout().fields, (std::vector<std::string>{"id", "email", "age", "vip", "country"}));
  EXPECT_EQ(m->layout().identity, (std::vector<std::string>{"id"}));
  Row payload;
  Row row = {Value::Int64(7), Value::String("a@b.c"), Value::String("42"), Value::Int64(1),
             Value::String("FR")};
  ASSERT_TRUE(m->Map(row, payload).ok());
  EXPECT_EQ(payload[2], Value::Int64(42));
  EXPECT_EQ(payload[3], Value::Bool(true));
  EXPECT_EQ(m->Identity(payload), (Row{Value::Int64(7)}));

  row[2] = Value::String("forty");
  absl::Status bad = m->Map(row, payload);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(), "field \"age\": cannot convert string value \"forty\" to an integer");
  row[2] = Value::Null();
  row[1] = Value::Null();
  EXPECT_EQ(m->Map(row, payload).message(), "required field \"email\" is null");
}

TEST(MapperTest, FingerprintChangesWithPayloadAndFieldNames) {
  ActionSpec action;
  action.allows_extra_fields = true;
  Schema schema = {{"id", ValueType::kInt64, ""}, {"email", ValueType::kString, ""}};
  auto a = Mapper::Create("m", "c", {{"id", "id"}, {"email", "email"}}, action, schema, "id");
  auto b = Mapper::Create("m", "c", {{"id", "id"}, {"mail", "email"}}, action, schema, "id");
  Row p1 = {Value::Int64(1), Value::String("x")};
  Row p2 = {Value::Int64(1), Value::String("y")};
  EXPECT_EQ(a->PayloadFingerprint(p1), a->PayloadFingerprint(p1));
  EXPECT_NE(a->PayloadFingerprint(p1), a->PayloadFingerprint(p2));
  EXPECT_NE(a->PayloadFingerprint(p1), b->PayloadFingerprint(p1));
  Fingerprint fp = a->PayloadFingerprint(p1);
  EXPECT_EQ(a->DedupId("1", "added", fp), a->DedupId("1", "added", fp));
  EXPECT_NE(a->DedupId("1", "added", fp), a->DedupId("1", "updated", fp));
  EXPECT_EQ(a->DedupId("1", "added", fp).size(), 32u);

  // Checkpoints store these values: the definition must never drift. It is
  // XXH3-128 over length-prefixed pieces: each field name, then the encoded payload.
  Hasher128 h;
  h.Add("id").Add("email");
  std::string encoded;
  EncodeRow(p1, encoded);
  h.Add(encoded);
  EXPECT_EQ(fp, h.Finish());
  EXPECT_EQ(fp.ToHex(), "da9bd4c12dd72b06b055019e879f8a66");
}

// The shortcut gives PayloadFingerprint(Map(row)) exactly when the payload is
// the row, and declines otherwise.
TEST(MapperTest, FingerprintOfARowThatIsItsOwnPayload) {
  ActionSpec action;
  action.fields = {{.key = "id", .type = FieldType::kInteger, .required = true},
                   {.key = "email", .type = FieldType::kString, .required = true},
                   {.key = "plan", .type = FieldType::kString, .allowed_values = {"free", "pro"}}};
  action.allows_extra_fields = true;
  Schema schema = {{"id", ValueType::kInt64, ""},
                   {"email", ValueType::kString, ""},
                   {"plan", ValueType::kString, ""},
                   {"score", ValueType::kDecimal, ""}};
  auto whole = Mapper::Create(
      "m", "c", {{"id", "id"}, {"email", "email"}, {"plan", "plan"}, {"score", "score"}}, action,
      schema, "id");
  ASSERT_TRUE(whole.ok()) << whole.status();
  // Asked with the row's values and with views of its encoding: same answer.
  auto fingerprint_of = [&](const Mapper& m, const Row& row) -> std::optional<Fingerprint> {
    std::string encoded;
    EncodeRow(row, encoded);
    std::vector<ValueView> views;
    EXPECT_TRUE(DecodeRowViews(encoded, views).ok());
    std::optional<Fingerprint> of_values = m.FingerprintOfRowAsPayload(row, encoded);
    std::optional<Fingerprint> of_views = m.FingerprintOfRowAsPayload(views, encoded);
    EXPECT_EQ(of_values.has_value(), of_views.has_value());
    if (of_values.has_value() && of_views.has_value()) {
      EXPECT_EQ(*of_values, *of_views);
    }
    return of_values;
  };
  Row payload;
  for (const Row& row :
       {Row{Value::Int64(1), Value::String("a@x.io"), Value::String("pro"),
            Value::Text(ValueType::kDecimal, "12.50")},
        Row{Value::Int64(2), Value::String("b@x.io"), Value::Null(), Value::Null()}}) {
    std::optional<Fingerprint> fp = fingerprint_of(*whole, row);
    ASSERT_TRUE(fp.has_value());
    ASSERT_TRUE(whole->Map(row, payload).ok());
    EXPECT_EQ(*fp, whole->PayloadFingerprint(payload));
  }
  // Rows whose payload differs from them, or that do not map: declined.
  for (const Row& row : {Row{Value::String("1"), Value::String("a@x.io"), Value::String("pro"),
                             Value::Null()},  // "1" becomes the integer 1
                         Row{Value::Int64(1), Value::Null(), Value::String("pro"),
                             Value::Null()},  // a required field is NULL
                         Row{Value::Int64(1), Value::String("a@x.io"), Value::String("gold"),
                             Value::Null()}}) {  // not an allowed value
    EXPECT_FALSE(fingerprint_of(*whole, row).has_value());
  }
  // Mappings whose payload is not the row: another order, a subset, an expression.
  Row row = {Value::Int64(1), Value::String("a@x.io"), Value::String("pro"), Value::Null()};
  for (const std::vector<MappedField>& fields :
       {std::vector<MappedField>{
            {"email", "email"}, {"id", "id"}, {"plan", "plan"}, {"score", "score"}},
        std::vector<MappedField>{{"id", "id"}, {"email", "email"}, {"plan", "plan"}},
        std::vector<MappedField>{
            {"id", "id"}, {"email", "email"}, {"plan", "plan"}, {"score", "upper(email)"}}}) {
    auto m = Mapper::Create("m", "c", fields, action, schema, "id");
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_FALSE(fingerprint_of(*m, row).has_value());
  }
}

TEST(MapperTest, MissingColumnsFailWithTheColumnsTheModelReturns) {
  ActionSpec action = TypedAction();
  auto m = Mapper::Create("to_crm", "customers", {{"email", "mail"}, {"plan", "plan"}}, action,
                          TestSchema(), "id");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(m.status().message(),
            "mapping \"to_crm\" maps columns mail, plan that model \"customers\" no longer "
            "returns (its SQL returns: id, email, age, vip, country); nothing was sent. Fix the "
            "model's SQL or the mapping's fields (a text literal is written in single quotes, "
            "inside double quotes in YAML: plan: \"'pro'\").");
}

TEST(MapperTest, ExpressionsComputeFieldsAndFailPerRecord) {
  ActionSpec action = TypedAction();
  action.fields.push_back(
      {.key = "tier", .type = FieldType::kString, .allowed_values = {"gold", "silver"}});
  action.fields.push_back({.key = "seen", .type = FieldType::kTimestamp});
  auto m = Mapper::Create("m", "customers",
                          {{"user", "concat('u_', id)"},
                           {"email", "lower(email)"},
                           {"tier", "coalesce(country, 'silver')"},
                           {"seen", "age"},
                           {"source", "'warehouse'"}},
                          action, TestSchema(), "id");
  ASSERT_TRUE(m.ok()) << m.status();
  // A field computed from the unique identifier alone identifies the record.
  EXPECT_EQ(m->layout().identity, (std::vector<std::string>{"user"}));
  Row payload;
  Row row = {Value::Int64(7), Value::String("A@B.C"), Value::String("2026-01-02 03:04:05"),
             Value::Int64(1), Value::Null()};
  ASSERT_TRUE(m->Map(row, payload).ok());
  EXPECT_EQ(payload[0], Value::String("u_7"));
  EXPECT_EQ(payload[1], Value::String("a@b.c"));
  EXPECT_EQ(payload[2], Value::String("silver"));
  EXPECT_EQ(payload[3], Value::Text(ValueType::kTimestamp, "2026-01-02T03:04:05Z"));
  EXPECT_EQ(payload[4], Value::String("warehouse"));
  EXPECT_EQ(m->Identity(payload), (Row{Value::String("u_7")}));

  // A value outside allowed_values, or text that is not a timestamp, fails the record.
  row[4] = Value::String("bronze");
  absl::Status s = m->Map(row, payload);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "field \"tier\": \"bronze\" is not one of gold, silver");
  row[4] = Value::String("gold");
  row[2] = Value::String("yesterday");
  s = m->Map(row, payload);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("to a timestamp"), std::string_view::npos) << s;
}

TEST(MapperTest, DefaultColumnFromTheUniqueIdentifierIsAnIdentityField) {
  ActionSpec action = TypedAction();
  action.fields.push_back(
      {.key = "external_id", .type = FieldType::kString, .default_column = "id"});
  auto m = Mapper::Create("m", "customers", {{"email", "email"}}, action, TestSchema(), "id");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->layout().identity, (std::vector<std::string>{"external_id"}));
}

TEST(MapperTest, ExpressionErrorsNameFieldAndExpression) {
  ActionSpec action = TypedAction();
  auto m = Mapper::Create("m", "customers", {{"email", "json(email)"}}, action, TestSchema(), "id");
  ASSERT_TRUE(m.ok()) << m.status();
  Row payload;
  Row row = {Value::Int64(7), Value::String("not json"), Value::Null(), Value::Null(),
             Value::Null()};
  absl::Status s = m->Map(row, payload);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "field \"email\" = json(email): json: \"not json\" is not valid JSON");
}

TEST(CoerceValueTest, ConvertsBetweenCompatibleTypesOnly) {
  EXPECT_EQ(*CoerceValue(Value::Text(ValueType::kDecimal, "12.000"), FieldType::kInteger),
            Value::Int64(12));
  EXPECT_FALSE(CoerceValue(Value::Text(ValueType::kDecimal, "12.5"), FieldType::kInteger).ok());
  EXPECT_EQ(*CoerceValue(Value::Double(3.0), FieldType::kInteger), Value::Int64(3));
  EXPECT_EQ(*CoerceValue(Value::Int64(5), FieldType::kString), Value::String("5"));
  EXPECT_EQ(*CoerceValue(Value::String("2.5"), FieldType::kNumber),
            Value::Text(ValueType::kDecimal, "2.5"));
  EXPECT_FALSE(CoerceValue(Value::String("abc"), FieldType::kNumber).ok());
  EXPECT_EQ(*CoerceValue(Value::String("false"), FieldType::kBoolean), Value::Bool(false));
  EXPECT_EQ(
      *CoerceValue(Value::Text(ValueType::kTimestamp, "2024-01-02T00:00:00Z"), FieldType::kDate),
      Value::Text(ValueType::kDate, "2024-01-02"));
}

}  // namespace
}  // namespace backflow
