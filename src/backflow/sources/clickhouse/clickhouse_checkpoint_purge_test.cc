// change_detection: warehouse on ClickHouse: purging removed keys from the
// checkpoint table (ReplacingMergeTree of versioned rows and tombstones),
// against the fake HTTP interface: every row of a removed key goes and
// nothing else (rows at the mapping's newest version stay), in an order that
// never shows a removed key again, also when the purge fails half-way; when
// the purge runs; a key removed then re-added; a table made before the purge
// existed; and the engine in warehouse mode (purging after every remove)
// against local mode over random rounds.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
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
using ::testing::UnorderedElementsAre;

using warehouse_testing::Fp;

// Purges whenever an Apply() wrote a remove.
ClickHouseCheckpointPurge Eager() {
  ClickHouseCheckpointPurge p;
  p.min_tombstones = 0;
  p.min_fraction = 0;
  return p;
}

// The "clickhouse" source type, its change detection purging as `purge` says.
SourceDefinition ClickHouseDefinitionPurging(ClickHouseCheckpointPurge purge) {
  SourceDefinition def = ClickHouseSourceDefinition();
  def.create = [purge](const json& settings,
                       const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Source>> {
    absl::StatusOr<ClickHouseConfig> config = ParseClickHouseSettings(settings);
    if (!config.ok()) return config.status();
    config->checkpoint_purge = purge;
    return NewClickHouseSource(*std::move(config), env);
  };
  return def;
}

WarehouseCheckpointWrite Upsert(const std::string& key, const std::string& hash = "h") {
  return warehouse_testing::DeliveredWrite(key, hash, Fp(1));
}

WarehouseCheckpointWrite Remove(const std::string& key) {
  WarehouseCheckpointWrite w;
  w.kind = WarehouseCheckpointWrite::Kind::kRemove;
  w.key = key;
  return w;
}

class ClickHousePurgeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_ = std::make_unique<FakeClickHouseServer>();
    ASSERT_TRUE(fake_->Start().ok());
    ASSERT_TRUE(fake_
                    ->CreateTable("default", "customers",
                                  {{"id", "Nullable(String)"}, {"plan", "Nullable(String)"}})
                    .ok());
  }

  std::unique_ptr<Source> MakeSource(ClickHouseCheckpointPurge purge = Eager()) {
    json settings = {
        {"base_url", fake_->BaseUrl()}, {"max_retries", 0}, {"state_schema", "bf_state"}};
    auto source =
        ClickHouseDefinitionPurging(purge).create(settings, ConnectorEnv{http_.get(), &clock_});
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(fake_->Exec(sql).ok()) << sql; }

  // The checkpoint rows of `mapping`: "key@version" or "key@versionD" for a
  // tombstone, in key and version order.
  std::vector<std::string> Rows(const std::string& mapping) {
    std::vector<std::string> out;
    auto rows = fake_->Select(
        fmt::format("SELECT record_key, version, deleted FROM bf_state.checkpoints WHERE mapping "
                    "= '{}' ORDER BY record_key, version",
                    mapping));
    EXPECT_TRUE(rows.ok()) << rows.status();
    if (!rows.ok()) return out;
    for (const auto& r : *rows) {
      out.push_back(fmt::format("{}@{}{}", r[0].get<std::string>(), r[1].get<int64_t>(),
                                r[2].get<int64_t>() == 1 ? "D" : ""));
    }
    return out;
  }

  // One pass of the customers model for mapping m: the candidate keys, the
  // stored entries' keys and their count.
  struct Pass {
    std::set<std::string> candidates;
    std::map<std::string, std::string> hashes;
    std::vector<std::string> entries;
    int64_t count = -1;
  };
  Pass RunPass(WarehouseChangeDetection& cd) {
    Pass pass;
    WarehouseCandidateFilter filter;
    filter.mappings = {{"m", Fp(1)}};
    warehouse_testing::StoredEntries stored = warehouse_testing::PassOver(
        cd, "SELECT id, plan FROM customers", "id", filter, "m", [&](const Row& row) {
          pass.candidates.insert(row[0].ToString());
          pass.hashes[row[0].ToString()] = row[2].ToString();
        });
    for (const WarehouseCheckpointEntry& entry : stored.entries) pass.entries.push_back(entry.key);
    pass.count = stored.count;
    return pass;
  }

  size_t Deletes() {
    size_t n = 0;
    for (const auto& q : fake_->Queries()) {
      if (q.sql.find("DELETE FROM bf_state.CHECKPOINTS") != std::string::npos) ++n;
    }
    return n;
  }

  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeClickHouseServer> fake_;
};

TEST_F(ClickHousePurgeTest, EveryVersionOfRemovedKeysGoesAndNothingElse) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);
  // Another mapping removed "a" too: its rows are its own.
  ASSERT_TRUE(cd->Apply("n", {Upsert("a")}).ok());
  ASSERT_TRUE(cd->Apply("n", {Remove("a")}).ok());
  EXPECT_THAT(Rows("n"), ElementsAre("a@2D"));  // the older row went; the newest stays

  const std::string quoted = "q'\"\xC3\xA9,\\";  // quotes, non-ASCII, comma, backslash
  ASSERT_TRUE(cd->Apply("m", {Upsert("a"), Upsert("b"), Upsert("c"), Upsert("d"), Upsert("e"),
                              Upsert(quoted)})
                  .ok());
  ASSERT_TRUE(cd->Apply("m", {Upsert("a", "h2"), Upsert("b", "h2")}).ok());
  EXPECT_EQ(Deletes(), 2u);  // n's purge; no remove in m yet
  ASSERT_TRUE(cd->Apply("m", {Remove("a"), Remove("c"), Remove(quoted)}).ok());
  // The older rows of the removed keys are gone; their tombstones are at the
  // mapping's newest version and stay for now; b's older version is not a
  // removed key's and stays (merges collapse it).
  EXPECT_THAT(Rows("m"), ElementsAre("a@3D", "b@1", "b@2", "c@3D", "d@1", "e@1", quoted + "@3D"));
  ASSERT_TRUE(cd->Apply("m", {Remove("d"), Upsert("e", "h4")}).ok());
  EXPECT_THAT(Rows("m"), ElementsAre("b@1", "b@2", "d@4D", "e@1", "e@4"));
  EXPECT_THAT(Rows("n"), ElementsAre("a@2D"));

  // Reads see the same entries as before the purge.
  Exec("INSERT INTO customers VALUES ('b', 'x'), ('e', 'y')");
  Pass pass = RunPass(*cd);
  EXPECT_EQ(pass.count, 2);
  EXPECT_THAT(pass.entries, ElementsAre("b", "e"));

  // The DELETEs: live rows of removed keys first, then their tombstones.
  std::vector<std::string> deletes;
  for (const auto& q : fake_->Queries()) {
    if (q.sql.find("DELETE FROM bf_state.CHECKPOINTS") != std::string::npos)
      deletes.push_back(q.sql);
  }
  ASSERT_EQ(deletes.size(), 6u);
  EXPECT_THAT(deletes[2], HasSubstr("version <= toInt64({p1:String}) AND deleted = 0 AND "
                                    "has(JSONExtract({p2:String}, 'Array(String)'), record_key)"));
  EXPECT_THAT(deletes[3], HasSubstr("version < toInt64({p1:String}) AND deleted = 1 AND has("));
}

TEST_F(ClickHousePurgeTest, AFailedPurgeNeverShowsARemovedKeyAgain) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Exec("INSERT INTO customers VALUES ('b', 'x')");
  ASSERT_TRUE(cd->Apply("m", {Upsert("a"), Upsert("b")}).ok());
  ASSERT_TRUE(cd->Apply("m", {Upsert("a", "h2")}).ok());
  ASSERT_TRUE(cd->Apply("m", {Upsert("b", "h3")}).ok());
  // The first DELETE (live rows of removed keys) fails: the tombstone stays,
  // so "a" stays removed; the Apply says its writes landed.
  fake_->FailNext(FakeClickHouseFailure::Before(241, "Memory limit exceeded", "AND deleted = 0"));
  absl::Status applied = cd->Apply("m", {Remove("a")});
  ASSERT_FALSE(applied.ok());
  EXPECT_THAT(std::string(applied.message()),
              HasSubstr("the checkpoint writes were applied, but purging the removed keys of "
                        "mapping m failed"));
  EXPECT_THAT(Rows("m"), ElementsAre("a@1", "a@2", "a@4D", "b@1", "b@3"));
  Pass pass = RunPass(*cd);
  EXPECT_EQ(pass.count, 1);
  EXPECT_THAT(pass.entries, ElementsAre("b"));
  EXPECT_EQ(pass.candidates, std::set<std::string>{"b"});  // b's stored hash is "h3"

  // The tombstones' DELETE fails after the first went through: nothing shows
  // again either (the older rows are gone already).
  fake_->FailNext(FakeClickHouseFailure::Before(241, "Memory limit exceeded", "AND deleted = 1"));
  EXPECT_FALSE(cd->Apply("m", {Remove("z")}).ok());
  EXPECT_THAT(Rows("m"), ElementsAre("a@4D", "b@1", "b@3", "z@5D"));
  EXPECT_EQ(RunPass(*cd).count, 1);
  // The next purge finishes the work.
  ASSERT_TRUE(cd->Apply("m", {Remove("y")}).ok());
  EXPECT_THAT(Rows("m"), ElementsAre("b@1", "b@3", "y@6D"));
  EXPECT_EQ(RunPass(*cd).count, 1);
}

TEST_F(ClickHousePurgeTest, AServerWithoutLightweightDeleteKeepsItsTombstones) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_TRUE(cd->Apply("m", {Upsert("a"), Upsert("b")}).ok());
  fake_->FailNext(FakeClickHouseFailure::Before(62, "Syntax error: failed at position 1 ('DELETE')",
                                                "DELETE FROM bf_state.CHECKPOINTS"));
  ASSERT_TRUE(cd->Apply("m", {Remove("a")}).ok());  // the write stands, the purge is off
  ASSERT_TRUE(cd->Apply("m", {Remove("b")}).ok());
  EXPECT_THAT(Rows("m"), ElementsAre("a@1", "a@2D", "b@1", "b@3D"));
  EXPECT_EQ(Deletes(), 1u);  // the refused one only
  EXPECT_EQ(RunPass(*cd).count, 0);
}

TEST_F(ClickHousePurgeTest, AKeyRemovedThenAddedAgainIsNewAgain) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Exec("INSERT INTO customers VALUES ('a', 'free'), ('b', 'free')");
  Pass first = RunPass(*cd);
  EXPECT_EQ(first.candidates, (std::set<std::string>{"a", "b"}));
  ASSERT_TRUE(
      cd->Apply("m", {Upsert("a", first.hashes["a"]), Upsert("b", first.hashes["b"])}).ok());

  // "a" leaves the model: a gone key, removed; later writes move the newest
  // version on and the purge takes every row of "a".
  Exec("DELETE FROM customers WHERE id = 'a'");
  Pass gone = RunPass(*cd);
  EXPECT_THAT(gone.entries, ElementsAre("a"));
  ASSERT_TRUE(cd->Apply("m", {Remove("a")}).ok());
  ASSERT_TRUE(cd->Apply("m", {Remove("x")}).ok());
  EXPECT_THAT(Rows("m"), ElementsAre("b@1", "x@3D"));

  // "a" comes back with the same row: a candidate without a stored entry
  // (new), delivered, then unchanged.
  Exec("INSERT INTO customers VALUES ('a', 'free')");
  Pass back = RunPass(*cd);
  EXPECT_EQ(back.candidates, std::set<std::string>{"a"});
  EXPECT_TRUE(back.entries.empty());
  EXPECT_EQ(back.count, 1);
  ASSERT_TRUE(cd->Apply("m", {Upsert("a", back.hashes["a"])}).ok());
  EXPECT_THAT(Rows("m"), ElementsAre("a@4", "b@1", "x@3D"));
  Pass after = RunPass(*cd);
  EXPECT_TRUE(after.candidates.empty());
  EXPECT_EQ(after.count, 2);
}

TEST_F(ClickHousePurgeTest, PurgesOnlyWhenTombstonesReachTheThresholds) {
  ClickHouseCheckpointPurge purge;
  purge.min_tombstones = 3;
  purge.min_fraction = 0.5;
  auto source = MakeSource(purge);
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_TRUE(cd->Apply("m", {Upsert("a"), Upsert("b"), Upsert("c"), Upsert("d")}).ok());
  auto counts = [&]() {
    size_t n = 0;
    for (const auto& q : fake_->Queries()) {
      if (q.sql.find("sum(deleted)") != std::string::npos) ++n;
    }
    return n;
  };
  EXPECT_EQ(counts(), 0u);  // no remove: no statement
  ASSERT_TRUE(cd->Apply("m", {Remove("a")}).ok());
  EXPECT_EQ(counts(), 1u);  // the first count: 1 tombstone of 5 rows
  ASSERT_TRUE(cd->Apply("m", {Remove("b")}).ok());
  EXPECT_EQ(counts(), 1u);  // 2 tombstones at most: not counted again
  EXPECT_EQ(Deletes(), 0u);
  ASSERT_TRUE(cd->Apply("m", {Remove("c")}).ok());
  EXPECT_EQ(counts(), 1u);  // 3 of 7 rows at most: under half
  EXPECT_EQ(Deletes(), 0u);
  ASSERT_TRUE(cd->Apply("m", {Remove("d")}).ok());
  EXPECT_EQ(counts(), 2u);  // 4 of 8 at most: counted, and due
  EXPECT_EQ(Deletes(), 2u);
  EXPECT_THAT(Rows("m"), ElementsAre("d@5D"));
}

TEST_F(ClickHousePurgeTest, ATableMadeBeforeThePurgeExistedIsPurgedToo) {
  // The checkpoint table as earlier versions made it, with their rows: "a"
  // updated then removed, "b" live, "c" removed, another mapping's "a".
  ASSERT_TRUE(fake_->CreateDatabase("bf_state").ok());
  ASSERT_TRUE(fake_
                  ->CreateTable("bf_state", "CHECKPOINTS",
                                {{"mapping", "String"},
                                 {"record_key", "String"},
                                 {"row_hash", "String"},
                                 {"mapping_version", "String"},
                                 {"fingerprint", "String"},
                                 {"record_identity", "String"},
                                 {"version", "UInt64"},
                                 {"deleted", "UInt8"}})
                  .ok());
  const std::string fp = Fp(1).ToHex();
  for (const std::string& row : {fmt::format("('m', 'a', 'h', '{0}', '{0}', '6964', 1, 0)", fp),
                                 fmt::format("('m', 'b', 'h', '{0}', '{0}', '6964', 1, 0)", fp),
                                 fmt::format("('m', 'c', 'h', '{0}', '{0}', '6964', 1, 0)", fp),
                                 fmt::format("('m', 'a', 'h2', '{0}', '{0}', '6964', 2, 0)", fp),
                                 std::string("('m', 'a', '', '', '', '', 3, 1)"),
                                 std::string("('m', 'c', '', '', '', '', 3, 1)"),
                                 fmt::format("('n', 'a', 'h', '{0}', '{0}', '6964', 1, 0)", fp)}) {
    Exec("INSERT INTO bf_state.checkpoints VALUES " + row);
  }
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Exec("INSERT INTO customers VALUES ('b', 'x')");
  Pass before = RunPass(*cd);
  EXPECT_EQ(before.count, 1);
  EXPECT_THAT(before.entries, ElementsAre("b"));
  ASSERT_TRUE(cd->Apply("m", {Remove("z")}).ok());
  EXPECT_THAT(Rows("m"), ElementsAre("b@1", "z@4D"));
  EXPECT_THAT(Rows("n"), ElementsAre("a@1"));
  Pass after = RunPass(*cd);
  EXPECT_EQ(after.count, 1);
  EXPECT_THAT(after.entries, ElementsAre("b"));
}

// --- The engine: warehouse mode (purging) against local mode ----------------------

// The property test of warehouse_mode_property.h with a source purging after
// every remove, keys removed every round and removed keys coming back.
class ClickHousePurgeWarehouseModeTest : public ClickHousePurgeTest,
                                         public warehouse_testing::WarehouseModeFixture {
 protected:
  std::string WarehouseName() const override { return "clickhouse-purge"; }
  SourceDefinition WarehouseDefinition() const override {
    return ClickHouseDefinitionPurging(Eager());
  }
  std::string SourceYaml() const override {
    return clickhouse_testing::WarehouseModeSourceYaml(*fake_);
  }
  ConnectorEnv WarehouseEnv() override { return ConnectorEnv{http_.get(), &clock_}; }
  std::string NewModelTable(int seed) override {
    return clickhouse_testing::NewWarehouseModeTable(*fake_, seed);
  }
  void WarehouseExec(const std::string& sql) override { Exec(sql); }
  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    auto rows = fake_->Select(sql);
    EXPECT_TRUE(rows.ok()) << rows.status() << "\n" << sql;
    return rows.ok() ? warehouse_testing::TextRows(*rows) : std::vector<std::vector<std::string>>{};
  }

  // Every remove was followed by a purge: no removed key keeps a live row
  // below a tombstone of its mapping.
  void ExpectAfterRound() override {
    EXPECT_EQ(WarehouseRows("SELECT count(*) AS c0 FROM wm_state.checkpoints AS c WHERE "
                            "c.deleted = 0 AND EXISTS (SELECT 1 FROM wm_state.checkpoints AS t "
                            "WHERE t.mapping = c.mapping AND t.record_key = c.record_key AND "
                            "t.deleted = 1 AND t.version > c.version)"),
              (std::vector<std::vector<std::string>>{{"0"}}));
  }
  // Purges ran.
  void ExpectNothingLeftBehind() override {
    size_t purges = 0;
    for (const auto& q : fake_->Queries()) {
      if (q.sql.find("DELETE FROM wm_state.CHECKPOINTS") != std::string::npos) ++purges;
    }
    EXPECT_GT(purges, 0u);
  }
};

TEST_F(ClickHousePurgeWarehouseModeTest, SameChangeSetsAsLocalModeWhilePurging) {
  warehouse_testing::PropertyRounds rounds;
  rounds.seeds = {11, 12, 13};
  rounds.initial_rows = 15;
  rounds.rounds = 12;
  rounds.full_resync_round = 8;
  rounds.min_deletes = 1;  // removes every round: purges every round
  rounds.deleted_keys_come_back = true;
  warehouse_testing::ExpectSameChangeSetsAsLocalMode(*this, rounds);
}

}  // namespace
}  // namespace backflow
