#include "backflow/catalog/json_schema.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

TEST(JsonSchemaTest, SettingsBecomeAnObjectSchema) {
  std::vector<SettingSpec> settings = {
      {.key = "url", .label = "URL", .description = "where", .required = true},
      {.key = "token", .description = "secret", .secret = true},
      {.key = "format",
       .type = SettingType::kEnum,
       .default_value = "jsonl",
       .allowed_values = {"jsonl", "csv"}},
      {.key = "headers", .type = SettingType::kStringMap},
      {.key = "retries", .type = SettingType::kInteger, .default_value = 5}};
  nlohmann::ordered_json schema = SettingsJsonSchema(settings);
  EXPECT_EQ(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
  EXPECT_EQ(schema["required"], nlohmann::ordered_json({"url"}));
  EXPECT_EQ(schema["additionalProperties"], false);
  EXPECT_EQ(
      schema["properties"]["url"],
      nlohmann::ordered_json({{"type", "string"}, {"title", "URL"}, {"description", "where"}}));
  EXPECT_EQ(schema["properties"]["token"]["writeOnly"], true);
  EXPECT_EQ(schema["properties"]["format"]["enum"], nlohmann::ordered_json({"jsonl", "csv"}));
  EXPECT_EQ(schema["properties"]["format"]["default"], "jsonl");
  EXPECT_EQ(schema["properties"]["headers"]["additionalProperties"]["type"], "string");
  EXPECT_EQ(schema["properties"]["retries"]["type"], "integer");
}

TEST(JsonSchemaTest, ActionFieldsKeepTypesRequiredAndExtras) {
  ActionSpec a;
  a.id = "upsert_contact";
  a.fields = {{.key = "email", .type = FieldType::kString, .required = true, .identifier = true},
              {.key = "signed_up", .type = FieldType::kTimestamp, .default_column = "created_at"}};
  nlohmann::ordered_json schema = ActionFieldsJsonSchema(a);
  EXPECT_EQ(schema["required"], nlohmann::ordered_json({"email"}));
  EXPECT_EQ(schema["properties"]["email"]["x-backflow-identifier"], true);
  EXPECT_EQ(schema["properties"]["signed_up"]["format"], "date-time");
  EXPECT_EQ(schema["properties"]["signed_up"]["x-backflow-default-column"], "created_at");
  EXPECT_EQ(schema["additionalProperties"], false);
  a.allows_extra_fields = true;
  EXPECT_EQ(ActionFieldsJsonSchema(a)["additionalProperties"], true);
}

}  // namespace
}  // namespace backflow
