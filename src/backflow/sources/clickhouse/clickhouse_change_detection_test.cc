// change_detection: warehouse on ClickHouse: the dialect's statements, then
// against the fake HTTP interface the shared checks of ../warehouse_sql/testing
// (which rows are candidates, which stored entries come back and in what
// order, key types, pass tables left behind, the engine in warehouse mode
// against local mode over random rounds) plus what only ClickHouse shows:
// writes as versioned rows and tombstones read through argMax, readonly
// settings, privileges.
#include <gtest/gtest.h>

#include <algorithm>

#include "backflow/sources/clickhouse/clickhouse_source.h"
#include "backflow/sources/clickhouse/clickhouse_warehouse_mode_testing.h"
#include "backflow/sources/clickhouse/fake_clickhouse_server.h"
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
using ::testing::Not;
using warehouse_testing::Fp;

Column Col(const std::string& name, ValueType type, const std::string& source_type) {
  Column c;
  c.name = name;
  c.type = type;
  c.source_type = source_type;
  return c;
}

TEST(ClickHouseNamedParametersTest, PlaceholdersOutsideQuotesAndCommentsBecomeParameters) {
  auto sql = ClickHouseNamedParameters(
      "SELECT '?', 'it''s ?', 'a\\'?', `c?`, \"d?\" -- ?\n, ? /* ? */, x = ?", 2);
  ASSERT_TRUE(sql.ok()) << sql.status();
  EXPECT_EQ(*sql,
            "SELECT '?', 'it''s ?', 'a\\'?', `c?`, \"d?\" -- ?\n, {p0:String} /* ? */, x = "
            "{p1:String}");
  EXPECT_EQ(ClickHouseNamedParameters("SELECT ?", 2).status().code(), absl::StatusCode::kInternal);
}

TEST(ClickHouseWarehouseSqlTest, StatementsAreClickHouseForms) {
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> sent;
  auto sql = NewClickHouseWarehouseSql(
      [&](const std::string& statement,
          const std::vector<std::pair<std::string, std::string>>& params,
          const std::atomic<bool>*) -> absl::StatusOr<std::unique_ptr<RowReader>> {
        sent.emplace_back(statement, params);
        return absl::UnavailableError("not connected");
      });
  // Bindings become typed query parameters; the model's SQL (no bindings,
  // `?` the ternary operator) travels untouched.
  (void)sql->Run("SELECT a FROM t WHERE b = ? AND c = ?", {"x", "y"});
  (void)sql->Run("SELECT a > 1 ? 'p' : 'q' FROM t", {});
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].first, "SELECT a FROM t WHERE b = {p0:String} AND c = {p1:String}");
  EXPECT_EQ(sent[0].second,
            (std::vector<std::pair<std::string, std::string>>{{"p0", "x"}, {"p1", "y"}}));
  EXPECT_EQ(sent[1].first, "SELECT a > 1 ? 'p' : 'q' FROM t");
  EXPECT_TRUE(sent[1].second.empty());

  EXPECT_EQ(sql->CreateSchemaSql("bf"), "CREATE DATABASE IF NOT EXISTS bf");
  EXPECT_THAT(sql->CreateCheckpointsSql("bf.CHECKPOINTS"),
              HasSubstr("version UInt64,\n  deleted UInt8\n) ENGINE = "
                        "ReplacingMergeTree(version) ORDER BY (mapping, record_key)"));
  EXPECT_THAT(sql->CreateRegistrySql("bf.PASS_TABLES"),
              HasSubstr("ENGINE = MergeTree ORDER BY tuple()"));
  EXPECT_EQ(sql->RegisterPassSql("bf.PASS_TABLES"),
            "INSERT INTO bf.PASS_TABLES (table_name, created_at) SELECT ?, toInt64(?)");
  Schema schema = {Col("id", ValueType::kInt64, "UInt64"),
                   Col("na`me", ValueType::kString, "Nullable(String)")};
  BoundSql pass = sql->CreatePassTableSql("bf.PASS_1_a", "SELECT 1", schema, 0);
  EXPECT_THAT(pass.sql, HasSubstr("CREATE TABLE bf.PASS_1_a ENGINE = MergeTree ORDER BY tuple() "
                                  "AS\nSELECT m.*, toString(m.`id`) AS BACKFLOW_PASS_KEY"));
  EXPECT_THAT(pass.sql, HasSubstr("lower(hex(MD5(assumeNotNull(concat('',"));
  EXPECT_THAT(pass.sql, HasSubstr("CASE WHEN m.`na\\`me` IS NULL THEN 'n' ELSE concat('v', "
                                  "toString(length(toString(m.`na\\`me`))), ':'"));
  EXPECT_TRUE(pass.bindings.empty());

  // No MERGE: one INSERT of versioned rows, removes as tombstones.
  BoundSql apply = sql->ApplySql("bf.CHECKPOINTS", "m", "[]");
  EXPECT_THAT(apply.sql, HasSubstr("INSERT INTO bf.CHECKPOINTS (mapping, record_key, row_hash, "
                                   "mapping_version, fingerprint, record_identity, version, "
                                   "deleted)\nSELECT ?, JSONExtractString(j.VALUE, 1)"));
  EXPECT_THAT(apply.sql, HasSubstr("(SELECT coalesce(max(c.version), 0) + 1 FROM bf.CHECKPOINTS "
                                   "AS c WHERE c.mapping = ?)"));
  EXPECT_THAT(apply.sql, HasSubstr("JSONExtractString(j.VALUE, 2) = 'D'"));
  EXPECT_THAT(apply.sql, Not(HasSubstr("MERGE")));
  EXPECT_EQ(apply.bindings, (std::vector<std::string>{"m", "m", "[]"}));
  // Reads take each key's latest row and skip tombstones.
  EXPECT_THAT(sql->CheckpointsToRead("bf.CHECKPOINTS"),
              HasSubstr("argMax(deleted, version) AS d FROM bf.CHECKPOINTS GROUP BY mapping, "
                        "record_key) WHERE d = 0)"));

  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fp(1)}, {"n", Fp(2)}};
  filter.in_flight_keys = {"k"};
  BoundSql keys = sql->CreateKeysTableSql("bf.CHECKPOINTS", "bf.P", "bf.P_K", filter);
  EXPECT_THAT(keys.sql, HasSubstr("\nUNION DISTINCT\n"));
  EXPECT_THAT(keys.sql, Not(HasSubstr("EXISTS")));
  EXPECT_THAT(keys.sql, Not(HasSubstr("JOIN")));
  EXPECT_EQ(keys.bindings, (std::vector<std::string>{"[\"k\"]", Fp(1).ToHex(), "m", Fp(2).ToHex(),
                                                     "n", "m", "n"}));
  EXPECT_EQ(static_cast<size_t>(std::count(keys.sql.begin(), keys.sql.end(), '?')),
            keys.bindings.size());

  EXPECT_TRUE(sql->KeyTypeSupported(Col("id", ValueType::kInt64, "UInt64")));
  EXPECT_TRUE(sql->KeyTypeSupported(Col("id", ValueType::kInt64, "Nullable(Int32)")));
  EXPECT_TRUE(sql->KeyTypeSupported(Col("id", ValueType::kString, "LowCardinality(String)")));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("id", ValueType::kString, "FixedString(4)")));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("id", ValueType::kString, "UUID")));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("id", ValueType::kDouble, "Float64")));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("id", ValueType::kDecimal, "Decimal(10, 2)")));
  EXPECT_EQ(sql->KeyCastAdvice("id"), "toString(`id`) AS `id`");
}

class ClickHouseChangeDetectionTest : public warehouse_testing::WarehouseSnapshotTest {
 protected:
  void SetUp() override {
    FakeClickHouseOptions options;
    options.block_rows = 3;  // several blocks per result
    fake_ = std::make_unique<FakeClickHouseServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    ASSERT_TRUE(fake_
                    ->CreateTable("default", "customers",
                                  {{"id", "Nullable(String)"},
                                   {"plan", "Nullable(String)"},
                                   {"age", "Int64"},
                                   {"seen", "Nullable(DateTime)"}})
                    .ok());
    customers_ = "customers";
    sql_ = "SELECT id, plan, age, seen FROM customers";
    key_ = "id";
    seen_text_ = "2024-01-01T00:00:00Z";
  }

  json Settings() {
    return {{"base_url", fake_->BaseUrl()}, {"max_retries", 0}, {"state_schema", "bf_state"}};
  }

  std::unique_ptr<Source> MakeSource() override {
    SourceDefinition def = ClickHouseSourceDefinition();
    EXPECT_TRUE(def.warehouse_change_detection);
    return SourceOrFail(def.create(Settings(), ConnectorEnv{http_.get(), &clock_}));
  }

  void WarehouseExec(const std::string& sql) override { ExpectRan(fake_->Exec(sql), sql); }

  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return TextRowsOf(fake_->Select(sql), sql);
  }

  void ExpectCandidateSchema(const Schema& schema) override {
    EXPECT_EQ(schema[3].source_type, "Nullable(DateTime)");
  }

  // The queries whose SQL contains `text`.
  std::vector<ClickHouseQueryLog> Queries(const std::string& text) {
    std::vector<ClickHouseQueryLog> out;
    for (auto& q : fake_->Queries()) {
      if (q.sql.find(text) != std::string::npos) out.push_back(q);
    }
    return out;
  }

  std::unique_ptr<FakeClickHouseServer> fake_;
};

TEST_F(ClickHouseChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCandidatesAndEntries(*source);

  // Backflow's statements write without readonly and carry their values as
  // query parameters; the model itself is still read with readonly=2.
  std::vector<ClickHouseQueryLog> keys = Queries("CREATE TABLE bf_state.PASS_");
  ASSERT_FALSE(keys.empty());
  for (const auto& q : keys) EXPECT_EQ(q.params.count("readonly"), 0u) << q.sql;
  std::vector<ClickHouseQueryLog> counts = Queries("SELECT COUNT(*) FROM (SELECT mapping");
  ASSERT_FALSE(counts.empty());
  EXPECT_EQ(counts.back().params["param_p0"], "other");
  ASSERT_TRUE(source->Query(sql_).ok());
  std::vector<ClickHouseQueryLog> model = Queries(sql_);
  ASSERT_FALSE(model.empty());
  EXPECT_EQ(model.back().sql, sql_);
  EXPECT_EQ(model.back().params["readonly"], "2");
}

TEST_F(ClickHouseChangeDetectionTest, WritesAreVersionedRowsAndTombstonesReadThroughArgMax) {
  Exec("INSERT INTO customers VALUES ('a','free',1,NULL), ('b','free',2,NULL)");
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  Deliver(*cd, "m", Fp(1), first);
  const size_t before = Queries("INSERT INTO bf_state.CHECKPOINTS").size();
  ASSERT_TRUE(cd->Apply("m", LastWriteWins(first)).ok());
  std::vector<ClickHouseQueryLog> inserts = Queries("INSERT INTO bf_state.CHECKPOINTS");
  ASSERT_EQ(inserts.size(), before + 1);  // one statement
  EXPECT_EQ(inserts.back().params["param_p0"], "m");
  EXPECT_EQ(inserts.back().params.count("readonly"), 0u);

  // Nothing is updated in place: every write is a new row with a higher
  // version; the remove is a tombstone.
  auto rows = fake_->Select(
      "SELECT record_key, fingerprint, record_identity, mapping_version, version, deleted FROM "
      "bf_state.checkpoints WHERE mapping = 'm' ORDER BY version, record_key");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 4u);
  EXPECT_EQ((*rows)[0], (std::vector<json>{"a", Fp(1).ToHex(), "69643a61", Fp(1).ToHex(), 1, 0}));
  EXPECT_EQ((*rows)[2][0], "a");
  EXPECT_EQ((*rows)[2][4], 2);
  EXPECT_EQ((*rows)[2][5], 1);
  EXPECT_EQ((*rows)[3], (std::vector<json>{"b", Fp(1).ToHex(), "69643a62", Fp(1).ToHex(), 2, 0}));

  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("a"));  // removed: a candidate again
  EXPECT_EQ(second.counts["m"], 1);
  EXPECT_THAT(second.entries["m"], ElementsAre());

  // A row with a lower version (as a merge could leave in any order) never
  // wins over the latest one, whatever was inserted last.
  Exec(
      fmt::format("INSERT INTO bf_state.checkpoints VALUES ('m', 'b', 'stale', '{}', '{}', "
                  "'6964', 1, 0)",
                  Fp(1).ToHex(), Fp(1).ToHex()));
  Pass third = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(third), ElementsAre("a"));
  EXPECT_EQ(third.counts["m"], 1);

  ExpectOtherMappingUntouched(*cd, first, 2);
}

TEST_F(ClickHouseChangeDetectionTest, KeyTypesWhoseTextCouldDifferAreRefused) {
  ASSERT_TRUE(fake_->CreateTable("default", "scores", {{"id", "Float64"}, {"n", "UInt64"}}).ok());
  Exec("INSERT INTO scores VALUES (1.5, 7)");
  auto source = MakeSource();
  ExpectKeyRefused(*source, "SELECT id, n FROM scores", "id", "toString(`id`) AS `id`");

  // An integer key works, its text as Backflow writes it.
  auto [schema, row] = FirstCandidate(*source, "SELECT id, n FROM scores", "n");
  ASSERT_EQ(row.size(), 3u);
  EXPECT_EQ(row[1].ToString(), "7");
  EXPECT_EQ(schema[1].source_type, "UInt64");
}

TEST_F(ClickHouseChangeDetectionTest, MissingPrivilegesSayWhatToGrant) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  const std::string denied =
      "default: Not enough privileges. To execute this query, it's necessary to have the grant ";
  fake_->FailNext(FakeClickHouseFailure::Before(497, denied + "CREATE DATABASE ON bf_state.*",
                                                "CREATE DATABASE"));
  fake_->FailNext(FakeClickHouseFailure::Before(497, denied + "CREATE TABLE ON bf_state.*",
                                                "CREATE TABLE IF NOT EXISTS"));
  auto snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  std::string message(snapshot.status().message());
  EXPECT_THAT(message, HasSubstr("GRANT CREATE DATABASE ON bf_state.* TO `default`;"));
  EXPECT_THAT(message, HasSubstr("state_schema"));
  EXPECT_THAT(message, HasSubstr("Not enough privileges"));

  // The database exists but pass tables cannot be made in it.
  fake_->FailNext(FakeClickHouseFailure::Before(497, denied + "CREATE TABLE ON bf_state.*",
                                                "CREATE TABLE bf_state.PASS_"));
  snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr("may not create tables in database bf_state. Have an administrator run "
                        "`GRANT CREATE TABLE, DROP TABLE, SELECT, INSERT, ALTER DELETE ON "
                        "bf_state.* TO `default`;`"));
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
  // Writes refused.
  fake_->FailNext(FakeClickHouseFailure::Before(497, denied + "INSERT ON bf_state.CHECKPOINTS",
                                                "INSERT INTO bf_state.CHECKPOINTS"));
  WarehouseCheckpointWrite w;
  w.key = "a";
  absl::Status applied = cd->Apply("m", {w});
  EXPECT_EQ(applied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(applied.message()), HasSubstr("may not read and write the tables"));
  EXPECT_THAT(std::string(applied.message()), HasSubstr("ALTER DELETE ON bf_state.*"));
}

TEST_F(ClickHouseChangeDetectionTest, PassTablesGoOnCloseOnFailureAndWhenStale) {
  auto source = MakeSource();
  EXPECT_THAT(
      ExpectPassTablesGoOnCloseOnFailureAndWhenStale(
          *source, "SELECT id, plan, age, seen, throwIf(age > 0, 'boom') AS bad FROM customers"),
      HasSubstr("boom"));
}

// --- The engine: warehouse mode against local mode -----------------------------

class ClickHouseWarehouseModeTest
    : public warehouse_testing::PassTableWarehouseModeTest<ClickHouseChangeDetectionTest> {
 protected:
  std::string WarehouseName() const override { return "clickhouse"; }
  SourceDefinition WarehouseDefinition() const override { return ClickHouseSourceDefinition(); }
  std::string SourceYaml() const override {
    return clickhouse_testing::WarehouseModeSourceYaml(*fake_);
  }
  std::string NewModelTable(int seed) override {
    return clickhouse_testing::NewWarehouseModeTable(*fake_, seed);
  }
};

TEST_F(ClickHouseWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  warehouse_testing::ExpectSameChangeSetsAsLocalMode(*this, {});
}

}  // namespace
}  // namespace backflow
