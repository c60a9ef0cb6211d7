// The ClickHouse side of the property test of
// ../warehouse_sql/testing/warehouse_mode_property.h over the fake HTTP
// interface, shared by the tests that run it. Test-only.
#pragma once

#include <string>

#include "backflow/sources/clickhouse/fake_clickhouse_server.h"
#include "fmt/format.h"
#include "gtest/gtest.h"

namespace backflow::clickhouse_testing {

// The settings of a source over `fake` whose checkpoint is in wm_state
// (WarehouseModeFixture::SourceYaml()).
inline std::string WarehouseModeSourceYaml(const FakeClickHouseServer& fake) {
  return fmt::format(R"(    type: clickhouse
    base_url: "{}"
    max_retries: 0
    state_schema: wm_state
)",
                     fake.BaseUrl());
}

// A new model table people<seed> on `fake`, and no checkpoint table left by
// earlier seeds (WarehouseModeFixture::NewModelTable()).
inline std::string NewWarehouseModeTable(FakeClickHouseServer& fake, int seed) {
  const std::string table = fmt::format("people{}", seed);
  EXPECT_TRUE(fake.CreateTable("default", table,
                               {{"id", "Nullable(Int64)"},
                                {"email", "Nullable(String)"},
                                {"plan", "Nullable(String)"},
                                {"age", "Int64"},
                                {"note", "Nullable(String)"}})
                  .ok());
  (void)fake.Exec("DROP TABLE IF EXISTS wm_state.checkpoints");
  return table;
}

}  // namespace backflow::clickhouse_testing
