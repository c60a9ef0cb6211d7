// The engine with `change_detection: warehouse` on a real MariaDB: the same
// model synced in local mode and in warehouse mode (two workspaces, each with
// its own state store and destinations) must produce the same change sets,
// round after round of random inserts, updates of mapped and unmapped
// columns, deletes, duplicate and NULL keys. The keys are strings whose byte
// order differs from the table's collation order (case, '_', multi-byte
// UTF-8), some equal under that collation. Plus a retried record and an
// interrupted checkpoint write.
#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "backflow/common/clock.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/sources/mysql/mysql_source.h"
#include "backflow/sources/mysql/mysql_test_server.h"
#include "fmt/format.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using testing::MemoryDestinationState;

// One workspace syncing the model with two mappings: m (id, email, plan; all
// records) and m2 (id, age; added_or_updated) to two memory destinations.
struct Side {
  Registry registry;
  std::shared_ptr<MemoryDestinationState> m = std::make_shared<MemoryDestinationState>();
  std::shared_ptr<MemoryDestinationState> m2 = std::make_shared<MemoryDestinationState>();
  Workspace workspace;
  std::unique_ptr<StateStore> state;
  fs::path dir;
};

// Key n: 'k0', 'K0' (equal to 'k0' in utf8mb4_unicode_ci), 'é0', '_0', 'k1'...
std::string Key(int n) {
  static const char* const kPrefixes[] = {"k", "K", "\xC3\xA9", "_"};
  return fmt::format("{}{}", kPrefixes[n % 4], n / 4);
}

class MysqlWarehouseModeTest : public mysql_testing::MariadbTest {
 protected:
  void SetUp() override {
    MariadbTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    dir_ = fs::path(::testing::TempDir()) /
           fmt::format("mysql-warehouse-mode-{}-{}", getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    table_ = mysql_testing::UniqueName("wm");
    schema_ = mysql_testing::UniqueName("backflow_wm_state");
    Exec(fmt::format(
        "CREATE TABLE {} (id varchar(40), email varchar(80), plan varchar(20), age int, note "
        "text) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        table_));
  }
  void TearDown() override {
    if (IsSkipped()) return;
    MYSQL* m = Connect();
    if (m == nullptr) return;
    (void)mysql_query(m, fmt::format("DROP DATABASE IF EXISTS {}", schema_).c_str());
    (void)mysql_query(m, fmt::format("DROP TABLE IF EXISTS {}", table_).c_str());
    mysql_close(m);
  }

  void Setup(Side& side, const std::string& name, const std::string& mode) {
    side.dir = dir_ / name;
    fs::create_directories(side.dir);
    ASSERT_TRUE(side.registry.AddSource(MysqlSourceDefinition()).ok());
    ASSERT_TRUE(side.registry.AddDestination(MemoryDestinationDefinition(side.m)).ok());
    DestinationDefinition second = MemoryDestinationDefinition(side.m2);
    second.type = "memory2";
    ASSERT_TRUE(side.registry.AddDestination(second).ok());
    std::string yaml =
        fmt::format(R"(
sources:
  - {{ name: wh, type: mysql, url: "{url}", password: "{password}", state_schema: {schema} }}
models:
  - name: customers
    source: wh
    sql: "SELECT id, email, plan, age, note FROM {table}"
    primary_key: id
    change_detection: {mode}
destinations:
  - {{ name: mem, type: memory }}
  - {{ name: mem2, type: memory2 }}
mappings:
  - name: m
    model: customers
    destination: mem
    action: upsert
    batch_size: 3
    fields: {{ customer_id: id, email: email, plan: plan }}
  - name: m2
    model: customers
    destination: mem2
    action: upsert
    records: added_or_updated
    max_deletes: 100%
    fields: {{ customer_id: id, age: age }}
)",
                    fmt::arg("url", server().url), fmt::arg("password", server().password),
                    fmt::arg("schema", schema_), fmt::arg("table", table_), fmt::arg("mode", mode));
    LoadResult r =
        LoadWorkspaceFromString(yaml, (side.dir / "backflow.yaml").string(), side.registry);
    ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].ToString());
    side.workspace = std::move(r.workspace);
    auto state = OpenSqliteStateStore((side.dir / "state.db").string());
    ASSERT_TRUE(state.ok()) << state.status();
    side.state = std::move(*state);
  }

  std::vector<MappingRunResult> Sync(Side& side, SyncOptions options = {},
                                     std::vector<std::string> mappings = {"m", "m2"}) {
    FakeClock clock;
    SyncEngine engine(side.workspace, side.registry, *side.state, ConnectorEnv{nullptr, &clock},
                      (side.dir / ".backflow").string());
    auto results = engine.Run("customers", mappings, options);
    EXPECT_TRUE(results.ok()) << results.status();
    return results.ok() ? *results : std::vector<MappingRunResult>{};
  }

  void Insert(int n, const std::string& plan, int age) {
    Exec(fmt::format("INSERT INTO {} VALUES ('{}', 'u{}@x.io', '{}', {}, 'n')", table_, Key(n), n,
                     plan, age));
  }

  // The model's keys that are not NULL and how many rows have each.
  std::map<std::string, int> ModelKeys() {
    std::map<std::string, int> keys;
    for (const auto& row : Rows(fmt::format(
             "SELECT id, COUNT(*) FROM {} WHERE id IS NOT NULL GROUP BY BINARY id", table_))) {
      keys[row[0]] = std::stoi(row[1]);
    }
    return keys;
  }

  static std::string Counts(const RunCounts& c) {
    return fmt::format(
        "added {} updated {} deleted {} unchanged {} skipped {} succeeded {} failed {} rejected {}",
        c.added, c.updated, c.deleted, c.unchanged, c.skipped, c.succeeded, c.failed, c.rejected);
  }

  fs::path dir_;
  std::string table_, schema_;
};

TEST_F(MysqlWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  for (int seed : {1, 2, 3}) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    Exec(fmt::format("TRUNCATE TABLE {}", table_));
    Exec(fmt::format("DROP DATABASE IF EXISTS {}", schema_));
    Side local, warehouse;
    Setup(local, fmt::format("local-{}", seed), "local");
    Setup(warehouse, fmt::format("warehouse-{}", seed), "warehouse");
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
    const std::vector<std::string> plans = {"free", "pro", "team"};
    int next = 0;
    for (int i = 0; i < 30; ++i) Insert(next++, "free", 20 + pick(50));
    for (int round = 0; round < 12; ++round) {
      SCOPED_TRACE(fmt::format("round {}", round));
      if (round > 0) {
        for (int i = pick(4); i > 0; --i) Insert(next++, plans[pick(3)], 20 + pick(50));
        auto random_key = [&]() { return Key(pick(next)); };
        for (int i = pick(4); i > 0; --i) {  // mapped by m
          Exec(fmt::format("UPDATE {} SET plan = '{}' WHERE BINARY id = '{}'", table_,
                           plans[pick(3)], random_key()));
        }
        for (int i = pick(3); i > 0; --i) {  // mapped by m2 only
          Exec(fmt::format("UPDATE {} SET age = age + 1 WHERE BINARY id = '{}'", table_,
                           random_key()));
        }
        for (int i = pick(4); i > 0; --i) {  // mapped by neither
          Exec(fmt::format("UPDATE {} SET note = CONCAT(note, 'x') WHERE BINARY id = '{}'", table_,
                           random_key()));
        }
        for (int i = pick(3); i > 0; --i) {
          Exec(fmt::format("DELETE FROM {} WHERE BINARY id = '{}'", table_, random_key()));
        }
        if (pick(3) == 0) {  // a duplicate key, identical or not
          Exec(fmt::format(
              "INSERT INTO {0} SELECT id, email, {1}, age, note FROM {0} WHERE BINARY id = '{2}' "
              "LIMIT 1",
              table_, pick(2) == 0 ? "plan" : "'dup'", random_key()));
        }
        if (pick(3) == 0) {  // a duplicate resolved
          Exec(fmt::format(
              "DELETE FROM {0} WHERE BINARY id = (SELECT k FROM (SELECT BINARY id AS k FROM {0} "
              "WHERE id IS NOT NULL GROUP BY BINARY id HAVING COUNT(*) > 1 LIMIT 1) AS x) LIMIT 1",
              table_));
        }
        if (pick(4) == 0) {
          Exec(fmt::format("INSERT INTO {} VALUES (NULL, 'null@x.io', 'free', 1, 'n')", table_));
        }
        if (pick(4) == 0) Exec(fmt::format("DELETE FROM {} WHERE id IS NULL", table_));
      }
      // Sometimes a record the destination refuses (on both sides).
      std::set<std::string> reject;
      if (pick(3) == 0) reject.insert(Key(pick(next)));
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
        EXPECT_LE(w[i].run.counts.extracted, l[i].run.counts.extracted);
      }
      for (auto [lm, wm] : {std::pair{local.m, warehouse.m}, std::pair{local.m2, warehouse.m2}}) {
        std::vector<std::string> ls = lm->sent_keys, ws = wm->sent_keys;
        std::sort(ls.begin(), ls.end());
        std::sort(ws.begin(), ws.end());
        EXPECT_EQ(ws, ls);
        EXPECT_EQ(wm->records, lm->records);
      }
      if (round > 0 && round != 8) {
        // Only what changed was pulled (plus NULL and duplicated keys).
        EXPECT_LT(w[0].run.counts.extracted, l[0].run.counts.extracted);
      }
      if (!reject.empty() || l[0].run.status == RunStatus::kFailed) continue;
      // m's destination holds every unique key of the model, and no key the
      // model lost (a duplicated key keeps what it had).
      auto model = ModelKeys();
      for (const auto& [key, rows] : model) {
        if (rows == 1) {
          EXPECT_EQ(warehouse.m->records.count(key), 1u) << key;
        }
      }
      for (const auto& [key, payload] : warehouse.m->records) {
        EXPECT_EQ(model.count(key), 1u) << "deleted key still in the destination: " << key;
      }
    }
  }
}

TEST_F(MysqlWarehouseModeTest, FailedRecordIsRetriedNextRun) {
  for (int n = 0; n < 8; ++n) Insert(n, "free", 30);
  Side side;
  Setup(side, "w", "warehouse");
  side.m->reject_keys = {Key(3)};
  auto first = Sync(side, {}, {"m"});
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].run.status, RunStatus::kPartial);
  EXPECT_EQ(first[0].run.counts.failed, 1);

  side.m->reject_keys.clear();
  side.m->sent_keys.clear();
  auto second = Sync(side, {}, {"m"});
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].run.status, RunStatus::kSucceeded) << second[0].run.error;
  EXPECT_EQ(second[0].run.counts.extracted, 1);  // only the failed record was pulled
  EXPECT_EQ(second[0].run.counts.added, 1);
  EXPECT_EQ(second[0].run.counts.unchanged, 7);
  EXPECT_EQ(side.m->sent_keys, std::vector<std::string>{Key(3)});

  side.m->sent_keys.clear();
  auto third = Sync(side, {}, {"m"});
  EXPECT_EQ(third[0].run.counts.extracted, 0);
  EXPECT_EQ(third[0].run.counts.unchanged, 8);
  EXPECT_TRUE(side.m->sent_keys.empty());
}

TEST_F(MysqlWarehouseModeTest, InterruptedCheckpointWriteResendsOnlyTheBatchInFlight) {
  for (int n = 0; n < 10; ++n) Insert(n, "free", 30);
  Side side;
  Setup(side, "w", "warehouse");
  // The second batch reaches the destination, then the warehouse refuses the
  // checkpoint write that should follow it.
  side.m->on_batch = [&](int batches) {
    if (batches != 2) return;
    Exec(fmt::format("RENAME TABLE {0}.checkpoints TO {0}.checkpoints_away", schema_));
  };
  auto first = Sync(side, {}, {"m"});
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].run.status, RunStatus::kFailed);
  EXPECT_NE(first[0].run.error.find("delivery stopped"), std::string::npos) << first[0].run.error;
  std::vector<std::string> sent_first = side.m->sent_keys;
  ASSERT_EQ(sent_first.size(), 6u);
  std::set<std::string> batch2(sent_first.begin() + 3, sent_first.end());

  side.m->on_batch = nullptr;
  Exec(fmt::format("RENAME TABLE {0}.checkpoints_away TO {0}.checkpoints", schema_));
  side.m->sent_keys.clear();
  auto second = Sync(side, {}, {"m"});
  EXPECT_EQ(second[0].run.status, RunStatus::kSucceeded) << second[0].run.error;
  std::set<std::string> resent;
  for (const std::string& k : side.m->sent_keys) {
    if (std::find(sent_first.begin(), sent_first.end(), k) != sent_first.end()) resent.insert(k);
  }
  EXPECT_EQ(resent, batch2);  // the batch in flight, nothing else
  EXPECT_EQ(second[0].run.counts.added, 7);
  EXPECT_EQ(side.m->records.size(), 10u);
  EXPECT_EQ(Rows(fmt::format("SELECT COUNT(*) FROM {}.checkpoints WHERE mapping = 'm'", schema_))
                .at(0)
                .at(0),
            "10");
}

}  // namespace
}  // namespace backflow
