#include <gtest/gtest.h>

#include "backflow/catalog/registry.h"

namespace backflow {
namespace {

// Every built-in definition passes the registry's checks (BuiltinRegistry
// aborts otherwise) and is complete enough to document and validate.
TEST(BuiltinRegistryTest, DefinitionsAreComplete) {
  const Registry& r = BuiltinRegistry();
  std::vector<std::string> sources, destinations;
  for (const SourceDefinition& s : r.sources()) {
    sources.push_back(s.type);
    EXPECT_FALSE(s.title.empty()) << s.type;
    EXPECT_FALSE(s.description.empty()) << s.type;
    for (const SettingSpec& setting : s.settings) {
      EXPECT_FALSE(setting.description.empty()) << s.type << "." << setting.key;
    }
  }
  for (const DestinationDefinition& d : r.destinations()) {
    destinations.push_back(d.type);
    EXPECT_FALSE(d.title.empty()) << d.type;
    EXPECT_FALSE(d.actions.empty()) << d.type;
    for (const SettingSpec& setting : d.settings) {
      EXPECT_FALSE(setting.description.empty()) << d.type << "." << setting.key;
    }
    for (const ActionSpec& a : d.actions) {
      EXPECT_FALSE(a.title.empty()) << d.type << "." << a.id;
      EXPECT_GE(a.max_batch_records, a.default_batch_records) << d.type << "." << a.id;
    }
  }
  EXPECT_EQ(sources, (std::vector<std::string>{"sqlite", "postgres", "mysql", "snowflake",
                                               "bigquery", "redshift", "redshift_data_api",
                                               "databricks", "clickhouse"}));
  EXPECT_EQ(destinations, (std::vector<std::string>{"webhook", "segment", "hubspot", "braze",
                                                    "mixpanel", "google_sheets", "meta_capi",
                                                    "iterable", "salesforce", "file", "postgres"}));
}

TEST(BuiltinRegistryTest, RejectsDuplicateRegistration) {
  Registry r;
  SourceDefinition def = BuiltinRegistry().sources()[0];
  EXPECT_TRUE(r.AddSource(def).ok());
  EXPECT_EQ(r.AddSource(def).code(), absl::StatusCode::kAlreadyExists);
}

}  // namespace
}  // namespace backflow
