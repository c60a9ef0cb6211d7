// change_detection: warehouse on Snowflake, against the fake SQL API: the
// shared checks of ../warehouse_sql/testing (which rows are candidates, which
// stored entries come back and in what order, the last write winning, key
// types, pass tables left behind, the engine in warehouse mode against local
// mode over random rounds) plus what only Snowflake's wire and privileges show.
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "backflow/sources/snowflake/fake_snowflake_server.h"
#include "backflow/sources/snowflake/snowflake_source.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_mode_property.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using warehouse_testing::Fp;

class SnowflakeChangeDetectionTest : public warehouse_testing::WarehouseSnapshotTest {
 protected:
  void SetUp() override {
    FakeSnowflakeOptions options;
    options.clock = &clock_;
    options.rows_per_partition = 3;  // several partitions per result
    fake_ = std::make_unique<FakeSnowflakeServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    FakeSnowflakeUser user;
    user.name = "SYNC_USER";
    user.roles = {"PUBLIC", "RETL"};
    fake_->AddUser(user);
    fake_->AddToken("pat-1", "SYNC_USER", "PROGRAMMATIC_ACCESS_TOKEN");
    ASSERT_TRUE(fake_
                    ->CreateTable("CUSTOMERS", {{"ID", "VARCHAR"},
                                                {"PLAN", "VARCHAR"},
                                                {"AGE", "NUMBER(38,0)"},
                                                {"SEEN", "TIMESTAMP_NTZ"}})
                    .ok());
    customers_ = "customers";
    sql_ = "SELECT id, plan, age, seen FROM customers";
    key_ = "ID";
    seen_text_ = "2024-01-01T00:00:00";
  }

  json Settings() {
    return {{"account", "myorg-myaccount"}, {"token", "pat-1"},   {"warehouse", "COMPUTE_WH"},
            {"database", "ANALYTICS"},      {"schema", "PUBLIC"}, {"role", "RETL"},
            {"base_url", fake_->BaseUrl()}, {"max_retries", 0},   {"state_schema", "bf_state"}};
  }

  std::unique_ptr<Source> MakeSource() override {
    SourceDefinition def = SnowflakeSourceDefinition();
    EXPECT_TRUE(def.warehouse_change_detection);
    return SourceOrFail(def.create(Settings(), ConnectorEnv{http_.get(), &clock_}));
  }

  void WarehouseExec(const std::string& sql) override { ExpectRan(fake_->Exec(sql), sql); }

  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return TextRowsOf(fake_->Select(sql), sql);
  }

  std::unique_ptr<FakeSnowflakeServer> fake_;
};

TEST_F(SnowflakeChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCandidatesAndEntries(*source);
}

TEST_F(SnowflakeChangeDetectionTest, RemovesAndUpsertsAreOneMergeAndLastWriteWins) {
  Exec("INSERT INTO customers VALUES ('a','free',1,NULL), ('b','free',2,NULL)");
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  Deliver(*cd, "m", Fp(1), first);
  const int64_t before = fake_->CountRequests("POST /api/v2/statements");
  ASSERT_TRUE(cd->Apply("m", LastWriteWins(first)).ok());
  EXPECT_EQ(fake_->CountRequests("POST /api/v2/statements") - before, 1);
  const json body = fake_->LastSubmitBody();
  EXPECT_THAT(body["statement"].get<std::string>(), HasSubstr("MERGE INTO bf_state.CHECKPOINTS"));
  EXPECT_EQ(body["bindings"]["2"], json({{"type", "TEXT"}, {"value", "m"}}));

  ExpectStoredAfterLastWriteWins();
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("a"));
  ExpectOtherMappingUntouched(*cd, first, 2);
}

TEST_F(SnowflakeChangeDetectionTest, KeyTypesWhoseTextCouldDifferAreRefused) {
  ASSERT_TRUE(fake_->CreateTable("SCORES", {{"ID", "NUMBER(10,2)"}, {"N", "NUMBER(38,0)"}}).ok());
  Exec("INSERT INTO scores VALUES ('1.50', 7)");
  auto source = MakeSource();
  ExpectKeyRefused(*source, "SELECT id, n FROM scores", "ID", "TO_VARCHAR(\"ID\") AS \"ID\"");
  // An integer key works, its text as Backflow writes it.
  EXPECT_EQ(FirstCandidate(*source, "SELECT id, n FROM scores", "N").second.at(1).ToString(), "7");
}

TEST_F(SnowflakeChangeDetectionTest, MissingPrivilegesSayWhatToGrant) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  fake_->DenyPrivilege("CREATE SCHEMA", "database 'ANALYTICS'");
  fake_->DenyPrivilege("CREATE TABLE IF NOT EXISTS", "schema 'BF_STATE'");
  auto snapshot = cd->Begin(sql_, "ID");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  std::string message(snapshot.status().message());
  EXPECT_THAT(message, HasSubstr("GRANT CREATE SCHEMA ON DATABASE \"ANALYTICS\" TO ROLE \"RETL\""));
  EXPECT_THAT(message, HasSubstr("state_schema"));
  EXPECT_THAT(message, HasSubstr("Insufficient privileges"));

  // The schema exists (made by an administrator) but tables cannot be made in it.
  fake_->ClearDenials();
  Exec("ATTACH DATABASE ':memory:' AS bf_state");
  fake_->DenyPrivilege("CREATE SCHEMA", "database 'ANALYTICS'");
  fake_->DenyPrivilege("CREATE TABLE", "schema 'BF_STATE'");
  snapshot = cd->Begin(sql_, "ID");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr("GRANT CREATE SCHEMA ON DATABASE \"ANALYTICS\" TO ROLE \"RETL\""));
  fake_->ClearDenials();
  fake_->DenyPrivilege("CREATE SCHEMA", "database 'ANALYTICS'");
  fake_->DenyPrivilege("CREATE TABLE bf_state.PASS_", "schema 'BF_STATE'");
  snapshot = cd->Begin(sql_, "ID");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr("GRANT USAGE, CREATE TABLE ON SCHEMA \"ANALYTICS\".bf_state TO ROLE "
                        "\"RETL\""));
  // Writes refused.
  fake_->ClearDenials();
  fake_->DenyPrivilege("MERGE INTO", "table 'CHECKPOINTS'");
  WarehouseCheckpointWrite w;
  w.key = "a";
  absl::Status applied = cd->Apply("m", {w});
  EXPECT_EQ(applied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(applied.message()),
              HasSubstr("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA"));
}

TEST_F(SnowflakeChangeDetectionTest, PassTablesGoOnCloseOnFailureAndWhenStale) {
  auto source = MakeSource();
  ExpectPassTablesGoOnCloseOnFailureAndWhenStale(
      *source, "SELECT id, plan, age, seen, json_extract(plan, '$') AS bad FROM customers");
}

// --- The engine: warehouse mode against local mode -----------------------------

class SnowflakeWarehouseModeTest
    : public warehouse_testing::PassTableWarehouseModeTest<SnowflakeChangeDetectionTest> {
 protected:
  std::string WarehouseName() const override { return "snowflake"; }
  SourceDefinition WarehouseDefinition() const override { return SnowflakeSourceDefinition(); }
  std::string SourceYaml() const override {
    return fmt::format(R"(    type: snowflake
    account: myorg-myaccount
    token: pat-1
    warehouse: COMPUTE_WH
    database: ANALYTICS
    schema: PUBLIC
    role: RETL
    base_url: "{}"
    max_retries: 0
    state_schema: wm_state
)",
                       fake_->BaseUrl());
  }
  std::string ColumnName(const std::string& name) const override {
    return absl::AsciiStrToUpper(name);
  }
  std::string NewModelTable(int seed) override {
    const std::string table = fmt::format("PEOPLE{}", seed);
    EXPECT_TRUE(fake_
                    ->CreateTable(table, {{"ID", "NUMBER(38,0)"},
                                          {"EMAIL", "VARCHAR"},
                                          {"PLAN", "VARCHAR"},
                                          {"AGE", "NUMBER(38,0)"},
                                          {"NOTE", "VARCHAR"}})
                    .ok());
    (void)fake_->Exec("DROP TABLE IF EXISTS wm_state.checkpoints");
    return table;
  }
};

TEST_F(SnowflakeWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  warehouse_testing::ExpectSameChangeSetsAsLocalMode(*this, {});
}

}  // namespace
}  // namespace backflow
