// change_detection: warehouse on ClickHouse: purging removed keys from the
// checkpoint table (ReplacingMergeTree of versioned rows and tombstones),
// against the fake HTTP interface: every row of a removed key goes and
// nothing else (rows at the mapping's newest version stay), in an order that
// never shows a removed key again, also when the purge fails half-way; when
// the purge runs; a key removed then re-added; a table made before the purge
// existed; and the engine in warehouse mode (purging after every remove)
// against local mode over random rounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/sources/clickhouse/clickhouse_source.h"
#include "backflow/sources/clickhouse/fake_clickhouse_server.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

Fingerprint Fp(uint64_t n) { return Fingerprint{n, n * 7}; }

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
  WarehouseCheckpointWrite w;
  w.key = key;
  w.fingerprint = Fp(key.size());
  w.identity = "id:" + key;
  w.row_hash = hash;
  w.version = Fp(1);
  return w;
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
    auto snapshot = cd.Begin("SELECT id, plan FROM customers", "id");
    EXPECT_TRUE(snapshot.ok()) << snapshot.status();
    if (!snapshot.ok()) return pass;
    WarehouseCandidateFilter filter;
    filter.mappings = {{"m", Fp(1)}};
    auto reader = (*snapshot)->ReadCandidates(filter);
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return pass;
    Row row;
    while (true) {
      auto more = (*reader)->Next(row);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      pass.candidates.insert(row[0].ToString());
      pass.hashes[row[0].ToString()] = row[2].ToString();
    }
    auto scanner = (*snapshot)->ScanEntries("m");
    EXPECT_TRUE(scanner.ok()) << scanner.status();
    WarehouseCheckpointEntry entry;
    while (scanner.ok()) {
      auto more = (*scanner)->Next(entry);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      pass.entries.push_back(entry.key);
    }
    auto count = (*snapshot)->CountEntries("m");
    EXPECT_TRUE(count.ok()) << count.status();
    if (count.ok()) pass.count = *count;
    EXPECT_TRUE((*snapshot)->Close().ok());
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

struct Side {
  Registry registry;
  std::shared_ptr<testing::MemoryDestinationState> m =
      std::make_shared<testing::MemoryDestinationState>();
  std::shared_ptr<testing::MemoryDestinationState> m2 =
      std::make_shared<testing::MemoryDestinationState>();
  Workspace workspace;
  std::unique_ptr<StateStore> state;
  fs::path dir;
};

class ClickHousePurgeWarehouseModeTest : public ClickHousePurgeTest {
 protected:
  void SetUp() override {
    ClickHousePurgeTest::SetUp();
    dir_ = fs::path(::testing::TempDir()) /
           fmt::format("clickhouse-purge-mode-{}-{}", getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Setup(Side& side, const std::string& name, const std::string& mode,
             const std::string& table) {
    side.dir = dir_ / name;
    fs::create_directories(side.dir);
    ASSERT_TRUE(side.registry.AddSource(ClickHouseDefinitionPurging(Eager())).ok());
    ASSERT_TRUE(side.registry.AddDestination(testing::MemoryDestinationDefinition(side.m)).ok());
    DestinationDefinition second = testing::MemoryDestinationDefinition(side.m2);
    second.type = "memory2";
    ASSERT_TRUE(side.registry.AddDestination(second).ok());
    const std::string yaml = fmt::format(R"(
sources:
  - name: ch
    type: clickhouse
    base_url: "{url}"
    max_retries: 0
    state_schema: wm_state
models:
  - name: people
    source: ch
    sql: "SELECT id, email, plan, age FROM {table}"
    primary_key: id
    change_detection: {mode}
destinations:
  - {{ name: mem, type: memory }}
  - {{ name: mem2, type: memory2 }}
mappings:
  - name: m
    model: people
    destination: mem
    action: upsert
    batch_size: 3
    fields: {{ customer_id: id, email: email, plan: plan }}
  - name: m2
    model: people
    destination: mem2
    action: upsert
    records: added_or_updated
    max_deletes: 100%
    fields: {{ customer_id: id, age: age }}
)",
                                         fmt::arg("url", fake_->BaseUrl()),
                                         fmt::arg("table", table), fmt::arg("mode", mode));
    LoadResult r =
        LoadWorkspaceFromString(yaml, (side.dir / "backflow.yaml").string(), side.registry);
    ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].ToString());
    side.workspace = std::move(r.workspace);
    auto state = OpenSqliteStateStore((side.dir / "state.db").string());
    ASSERT_TRUE(state.ok()) << state.status();
    side.state = std::move(*state);
  }

  std::vector<MappingRunResult> Sync(Side& side, SyncOptions options = {}) {
    SyncEngine engine(side.workspace, side.registry, *side.state,
                      ConnectorEnv{http_.get(), &clock_}, (side.dir / ".backflow").string());
    auto results = engine.Run("people", {"m", "m2"}, options);
    EXPECT_TRUE(results.ok()) << results.status();
    return results.ok() ? *results : std::vector<MappingRunResult>{};
  }

  static std::string Counts(const RunCounts& c) {
    return fmt::format(
        "added {} updated {} deleted {} unchanged {} skipped {} succeeded {} failed {} rejected {}",
        c.added, c.updated, c.deleted, c.unchanged, c.skipped, c.succeeded, c.failed, c.rejected);
  }

  fs::path dir_;
};

TEST_F(ClickHousePurgeWarehouseModeTest, SameChangeSetsAsLocalModeWhilePurging) {
  for (int seed : {11, 12, 13}) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    const std::string table = fmt::format("people{}", seed);
    ASSERT_TRUE(fake_
                    ->CreateTable("default", table,
                                  {{"id", "Nullable(Int64)"},
                                   {"email", "Nullable(String)"},
                                   {"plan", "Nullable(String)"},
                                   {"age", "Int64"}})
                    .ok());
    (void)fake_->Exec("DROP TABLE IF EXISTS wm_state.checkpoints");
    Side local, warehouse;
    Setup(local, fmt::format("local-{}", seed), "local", table);
    Setup(warehouse, fmt::format("warehouse-{}", seed), "warehouse", table);
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
    const std::vector<std::string> plans = {"free", "pro", "team"};
    int next_id = 1;
    for (int i = 0; i < 15; ++i, ++next_id) {
      Exec(fmt::format("INSERT INTO {} VALUES ({}, 'u{}@x.io', 'free', {})", table, next_id,
                       next_id, 20 + pick(50)));
    }
    std::vector<int> deleted;  // ids deleted, some added again later
    for (int round = 0; round < 12; ++round) {
      SCOPED_TRACE(fmt::format("round {}", round));
      if (round > 0) {
        auto random_id = [&]() { return 1 + pick(next_id - 1); };
        for (int i = pick(3); i > 0; --i, ++next_id) {
          Exec(fmt::format("INSERT INTO {} VALUES ({}, 'u{}@x.io', '{}', {})", table, next_id,
                           next_id, plans[pick(3)], 20 + pick(50)));
        }
        for (int i = pick(4); i > 0; --i) {
          Exec(fmt::format("UPDATE {} SET plan = '{}' WHERE id = {}", table, plans[pick(3)],
                           random_id()));
        }
        for (int i = pick(3); i > 0; --i) {
          Exec(fmt::format("UPDATE {} SET age = age + 1 WHERE id = {}", table, random_id()));
        }
        for (int i = 1 + pick(3); i > 0; --i) {  // removes every round: purges every round
          const int id = random_id();
          Exec(fmt::format("DELETE FROM {} WHERE id = {}", table, id));
          deleted.push_back(id);
        }
        if (!deleted.empty() && pick(2) == 0) {  // a removed key comes back
          const int id = deleted[static_cast<size_t>(pick(static_cast<int>(deleted.size())))];
          Exec(fmt::format("DELETE FROM {} WHERE id = {}", table, id));
          Exec(fmt::format("INSERT INTO {} VALUES ({}, 'back{}@x.io', '{}', {})", table, id, id,
                           plans[pick(3)], 20 + pick(50)));
        }
        if (pick(3) == 0) {  // a duplicate key
          Exec(
              fmt::format("INSERT INTO {0} SELECT id, email, 'dup', age FROM {0} WHERE id = {1} "
                          "LIMIT 1",
                          table, random_id()));
        }
        if (pick(3) == 0) {  // a duplicate resolved
          Exec(fmt::format(
              "DELETE FROM {0} WHERE rowid IN (SELECT min(rowid) FROM {0} WHERE id IS NOT NULL "
              "GROUP BY id HAVING count(*) > 1 LIMIT 1)",
              table));
        }
        if (pick(4) == 0) {
          Exec(fmt::format("INSERT INTO {} VALUES (NULL, 'null@x.io', 'free', 1)", table));
        }
        if (pick(4) == 0) Exec(fmt::format("DELETE FROM {} WHERE id IS NULL", table));
      }
      std::set<std::string> reject;
      if (pick(3) == 0) reject.insert(std::to_string(1 + pick(next_id - 1)));
      for (Side* side : {&local, &warehouse}) {
        side->m->reject_keys = reject;
        side->m->sent_keys.clear();
        side->m2->sent_keys.clear();
      }
      SyncOptions options;
      options.full_resync = round == 8;
      std::vector<MappingRunResult> l = Sync(local, options);
      std::vector<MappingRunResult> w = Sync(warehouse, options);
      ASSERT_EQ(l.size(), 2u);
      ASSERT_EQ(w.size(), 2u);
      for (size_t i = 0; i < 2; ++i) {
        SCOPED_TRACE(l[i].run.mapping);
        EXPECT_EQ(w[i].run.status, l[i].run.status) << w[i].run.error << " / " << l[i].run.error;
        EXPECT_EQ(Counts(w[i].run.counts), Counts(l[i].run.counts));
      }
      for (auto [lm, wm] : {std::pair{local.m, warehouse.m}, std::pair{local.m2, warehouse.m2}}) {
        std::vector<std::string> ls = lm->sent_keys, ws = wm->sent_keys;
        std::sort(ls.begin(), ls.end());
        std::sort(ws.begin(), ws.end());
        EXPECT_EQ(ws, ls);
        EXPECT_EQ(wm->records, lm->records);
      }
    }
    // Purges ran, and no removed key keeps a row below the newest version
    // of its mapping other than tombstones written since the last purge.
    size_t purges = 0;
    for (const auto& q : fake_->Queries()) {
      if (q.sql.find("DELETE FROM wm_state.CHECKPOINTS") != std::string::npos) ++purges;
    }
    EXPECT_GT(purges, 0u);
    auto stale = fake_->Select(
        "SELECT count(*) FROM wm_state.checkpoints AS c WHERE c.deleted = 0 AND EXISTS (SELECT 1 "
        "FROM wm_state.checkpoints AS t WHERE t.mapping = c.mapping AND t.record_key = "
        "c.record_key AND t.deleted = 1 AND t.version > c.version)");
    ASSERT_TRUE(stale.ok()) << stale.status();
    EXPECT_EQ((*stale)[0][0], 0);  // every remove was followed by a purge
  }
}

}  // namespace
}  // namespace backflow
