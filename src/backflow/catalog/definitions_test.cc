#include "backflow/catalog/definitions.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

TEST(DefinitionsTest, MakeSettingFillsKeyLabelDescriptionTypeAndDefaultOnly) {
  SettingSpec plain = MakeSetting("schema", "Schema", "The default schema.");
  EXPECT_EQ(plain.key, "schema");
  EXPECT_EQ(plain.label, "Schema");
  EXPECT_EQ(plain.description, "The default schema.");
  EXPECT_EQ(plain.type, SettingType::kString);
  EXPECT_FALSE(plain.required);
  EXPECT_FALSE(plain.secret);
  EXPECT_FALSE(plain.is_path);
  EXPECT_TRUE(plain.default_value.is_null());
  EXPECT_TRUE(plain.allowed_values.empty());

  SettingSpec retries =
      MakeSetting("max_retries", "Max retries", "Retries.", SettingType::kInteger, 5);
  EXPECT_EQ(retries.type, SettingType::kInteger);
  EXPECT_EQ(retries.default_value, 5);
  EXPECT_EQ(FindSetting({plain, retries}, "max_retries")->label, "Max retries");
}

}  // namespace
}  // namespace backflow
