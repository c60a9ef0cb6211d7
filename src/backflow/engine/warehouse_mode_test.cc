// The engine with `change_detection: warehouse` on a real PostgreSQL: the
// same model synced in local mode and in warehouse mode (two workspaces, each
// with its own state store and destinations) must produce the same change
// sets, round after round of random inserts, updates of mapped and unmapped
// columns, deletes, duplicate and NULL keys; plus retries, an interrupted
// checkpoint write and dry runs.
#include "backflow/engine/warehouse_mode.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "backflow/common/clock.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/pg/testing/test_server.h"
#include "backflow/sources/postgres/postgres_source.h"
#include "fmt/format.h"

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

class WarehouseModeTest : public pg::testing::PostgresTest {
 protected:
  void SetUp() override {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    dir_ = fs::path(::testing::TempDir()) /
           fmt::format("warehouse-mode-{}-{}", getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    table_ = pg::testing::UniqueName("wm");
    schema_ = pg::testing::UniqueName("wm_state");
    ExecOrFail(
        fmt::format("CREATE TABLE {} (id int, email text, plan text, age int, note text)", table_));
  }
  void TearDown() override {
    if (IsSkipped()) return;
    auto conn = Connect();
    if (conn.ok()) (void)(*conn)->Exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", schema_));
  }

  void Setup(Side& side, const std::string& name, const std::string& mode,
             const std::string& m_extra = "") {
    side.dir = dir_ / name;
    fs::create_directories(side.dir);
    ASSERT_TRUE(side.registry.AddSource(PostgresSourceDefinition()).ok());
    ASSERT_TRUE(side.registry.AddDestination(MemoryDestinationDefinition(side.m)).ok());
    DestinationDefinition second = MemoryDestinationDefinition(side.m2);
    second.type = "memory2";
    ASSERT_TRUE(side.registry.AddDestination(second).ok());
    std::string yaml =
        fmt::format(R"(
sources:
  - {{ name: wh, type: postgres, url: "{url}", password: "{password}", state_schema: {schema} }}
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
{m_extra}
  - name: m2
    model: customers
    destination: mem2
    action: upsert
    records: added_or_updated
    max_deletes: 100%
    fields: {{ customer_id: id, age: age }}
)",
                    fmt::arg("url", server().url), fmt::arg("password", server().password),
                    fmt::arg("schema", schema_), fmt::arg("table", table_), fmt::arg("mode", mode),
                    fmt::arg("m_extra", m_extra));
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

  int64_t Scalar(const std::string& sql) {
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return -1;
    auto r = (*conn)->Exec(sql);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::stoll(PQgetvalue(r->get(), 0, 0)) : -1;
  }

  // The model's rows whose key is not NULL, by key (several for duplicates).
  std::map<std::string, std::vector<std::vector<std::string>>> ModelRows() {
    std::map<std::string, std::vector<std::vector<std::string>>> rows;
    auto conn = Connect();
    EXPECT_TRUE(conn.ok());
    if (!conn.ok()) return rows;
    auto r = (*conn)->Exec(fmt::format(
        "SELECT id::text, email, plan, age::text FROM {} WHERE id IS NOT NULL", table_));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return rows;
    for (int i = 0; i < PQntuples(r->get()); ++i) {
      rows[PQgetvalue(r->get(), i, 0)].push_back(
          {PQgetvalue(r->get(), i, 1), PQgetvalue(r->get(), i, 2), PQgetvalue(r->get(), i, 3)});
    }
    return rows;
  }

  static std::string Counts(const RunCounts& c) {
    return fmt::format(
        "added {} updated {} deleted {} unchanged {} skipped {} succeeded {} failed {} rejected {}",
        c.added, c.updated, c.deleted, c.unchanged, c.skipped, c.succeeded, c.failed, c.rejected);
  }

  fs::path dir_;
  std::string table_, schema_;
};

TEST_F(WarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  for (int seed : {1, 2, 3}) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    ExecOrFail(fmt::format("TRUNCATE {}", table_));
    ExecOrFail(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", schema_));
    Side local, warehouse;
    Setup(local, fmt::format("local-{}", seed), "local");
    Setup(warehouse, fmt::format("warehouse-{}", seed), "warehouse");
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
    const std::vector<std::string> plans = {"free", "pro", "team"};
    int next_id = 1;
    for (int i = 0; i < 30; ++i, ++next_id) {
      ExecOrFail(fmt::format("INSERT INTO {} VALUES ({}, 'u{}@x.io', 'free', {}, 'n')", table_,
                             next_id, next_id, 20 + pick(50)));
    }
    for (int round = 0; round < 14; ++round) {
      SCOPED_TRACE(fmt::format("round {}", round));
      if (round > 0) {
        for (int i = pick(4); i > 0; --i, ++next_id) {
          ExecOrFail(fmt::format("INSERT INTO {} VALUES ({}, 'u{}@x.io', '{}', {}, 'n')", table_,
                                 next_id, next_id, plans[pick(3)], 20 + pick(50)));
        }
        auto random_id = [&]() { return 1 + pick(next_id - 1); };
        for (int i = pick(4); i > 0; --i) {  // mapped by m
          ExecOrFail(fmt::format("UPDATE {} SET plan = '{}' WHERE id = {}", table_, plans[pick(3)],
                                 random_id()));
        }
        for (int i = pick(3); i > 0; --i) {  // mapped by m2 only
          ExecOrFail(fmt::format("UPDATE {} SET age = age + 1 WHERE id = {}", table_, random_id()));
        }
        for (int i = pick(4); i > 0; --i) {  // mapped by neither
          ExecOrFail(
              fmt::format("UPDATE {} SET note = note || 'x' WHERE id = {}", table_, random_id()));
        }
        for (int i = pick(3); i > 0; --i) {
          ExecOrFail(fmt::format("DELETE FROM {} WHERE id = {}", table_, random_id()));
        }
        if (pick(3) == 0) {  // a duplicate key, identical or not
          ExecOrFail(fmt::format(
              "INSERT INTO {0} SELECT id, email, {1}, age, note FROM {0} WHERE id = {2} LIMIT 1",
              table_, pick(2) == 0 ? "plan" : "'dup'", random_id()));
        }
        if (pick(3) == 0) {  // a duplicate resolved
          ExecOrFail(fmt::format(
              "DELETE FROM {0} WHERE ctid IN (SELECT min(ctid) FROM {0} WHERE id IS NOT NULL "
              "GROUP BY id HAVING count(*) > 1 LIMIT 1)",
              table_));
        }
        if (pick(4) == 0) {
          ExecOrFail(
              fmt::format("INSERT INTO {} VALUES (NULL, 'null@x.io', 'free', 1, 'n')", table_));
        }
        if (pick(4) == 0) ExecOrFail(fmt::format("DELETE FROM {} WHERE id IS NULL", table_));
      }
      // Sometimes a record the destination refuses (on both sides).
      std::set<std::string> reject;
      if (pick(3) == 0) reject.insert(std::to_string(1 + pick(next_id - 1)));
      for (Side* side : {&local, &warehouse}) {
        side->m->reject_keys = reject;
        side->m->sent_keys.clear();
        side->m2->sent_keys.clear();
      }
      SyncOptions options;
      options.full_resync = round == 9;
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
      if (round > 0 && round != 9) {
        // Only what changed was pulled (plus NULL and duplicated keys).
        EXPECT_LT(w[0].run.counts.extracted, l[0].run.counts.extracted);
      }
      if (!reject.empty() || l[0].run.status == RunStatus::kFailed) continue;
      // The destinations hold the model: every unique key as it is now, and
      // (for m, which sends deletes) no key the model lost.
      auto model = ModelRows();
      for (const auto& [key, rows] : model) {
        if (rows.size() != 1) continue;
        const auto& r = rows[0];
        EXPECT_EQ(warehouse.m->records[key],
                  fmt::format(R"({{"customer_id":{},"email":"{}","plan":"{}"}})", key, r[0], r[1]));
        EXPECT_EQ(warehouse.m2->records[key],
                  fmt::format(R"({{"customer_id":{},"age":{}}})", key, r[2]));
      }
      for (const auto& [key, payload] : warehouse.m->records) {
        EXPECT_EQ(model.count(key), 1u) << "deleted key still in the destination: " << key;
      }
    }
  }
}

TEST_F(WarehouseModeTest, FailedRecordIsRetriedNextRun) {
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT g, 'u' || g || '@x.io', 'free', 30, 'n' FROM generate_series(1, 8) g",
      table_));
  Side side;
  Setup(side, "w", "warehouse");
  side.m->reject_keys = {"3"};
  auto first = Sync(side, {}, {"m"});
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].run.status, RunStatus::kPartial);
  EXPECT_EQ(first[0].run.counts.failed, 1);
  EXPECT_EQ(side.m->records.count("3"), 0u);

  side.m->reject_keys.clear();
  side.m->sent_keys.clear();
  auto second = Sync(side, {}, {"m"});
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].run.status, RunStatus::kSucceeded) << second[0].run.error;
  EXPECT_EQ(second[0].run.counts.extracted, 1);  // only the failed record was pulled
  EXPECT_EQ(second[0].run.counts.added, 1);
  EXPECT_EQ(second[0].run.counts.unchanged, 7);
  EXPECT_EQ(side.m->sent_keys, std::vector<std::string>{"3"});
  EXPECT_EQ(side.m->records.size(), 8u);

  side.m->sent_keys.clear();
  auto third = Sync(side, {}, {"m"});
  EXPECT_EQ(third[0].run.counts.extracted, 0);
  EXPECT_EQ(third[0].run.counts.unchanged, 8);
  EXPECT_TRUE(side.m->sent_keys.empty());
}

TEST_F(WarehouseModeTest, InterruptedCheckpointWriteResendsOnlyTheBatchInFlight) {
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT g, 'u' || g || '@x.io', 'free', 30, 'n' FROM generate_series(1, 10) "
      "g",
      table_));
  Side side;
  Setup(side, "w", "warehouse");
  // The second batch reaches the destination, then the warehouse refuses the
  // checkpoint write that should follow it.
  const std::string table = schema_ + ".checkpoints";
  side.m->on_batch = [&](int batches) {
    if (batches != 2) return;
    auto conn = Connect();
    ASSERT_TRUE(conn.ok());
    ASSERT_TRUE(
        (*conn)->Exec(fmt::format("ALTER TABLE {} RENAME TO checkpoints_away", table)).ok());
  };
  auto first = Sync(side, {}, {"m"});
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].run.status, RunStatus::kFailed);
  EXPECT_NE(first[0].run.error.find("delivery stopped"), std::string::npos) << first[0].run.error;
  std::vector<std::string> sent_first = side.m->sent_keys;
  ASSERT_EQ(sent_first.size(), 6u);
  std::set<std::string> batch2(sent_first.begin() + 3, sent_first.end());

  side.m->on_batch = nullptr;
  ExecOrFail(fmt::format("ALTER TABLE {}.checkpoints_away RENAME TO checkpoints", schema_));
  side.m->sent_keys.clear();
  auto second = Sync(side, {}, {"m"});
  EXPECT_EQ(second[0].run.status, RunStatus::kSucceeded) << second[0].run.error;
  std::set<std::string> resent;
  for (const std::string& k : side.m->sent_keys) {
    if (std::find(sent_first.begin(), sent_first.end(), k) != sent_first.end()) resent.insert(k);
  }
  EXPECT_EQ(resent, batch2);  // the batch in flight, nothing else
  // As in local mode: records never checkpointed count as added, in flight or not.
  EXPECT_EQ(second[0].run.counts.added, 7);
  EXPECT_EQ(side.m->records.size(), 10u);
  EXPECT_EQ(Scalar(fmt::format("SELECT count(*) FROM {} WHERE mapping = 'm'", table)), 10);
}

TEST_F(WarehouseModeTest, DryRunWritesNothingToTheWarehouseCheckpoint) {
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT g, 'u' || g || '@x.io', 'free', 30, 'n' FROM generate_series(1, 5) g",
      table_));
  Side side;
  Setup(side, "w", "warehouse");
  SyncOptions dry;
  dry.dry_run = true;
  auto planned = Sync(side, dry, {"m"});
  EXPECT_EQ(planned[0].run.counts.added, 5);
  EXPECT_TRUE(side.m->sent_keys.empty());
  // The table exists (created by the dry run) and is empty.
  EXPECT_EQ(Scalar(fmt::format("SELECT count(*) FROM {}.checkpoints", schema_)), 0);

  Sync(side, {}, {"m"});
  ExecOrFail(fmt::format("UPDATE {} SET note = 'changed', plan = 'pro' WHERE id <= 2", table_));
  ExecOrFail(fmt::format("UPDATE {} SET note = 'changed' WHERE id = 3", table_));
  const std::string hashes = fmt::format(
      "SELECT count(DISTINCT row_hash::text || encode(fingerprint, 'hex')) FROM {}.checkpoints",
      schema_);
  int64_t before = Scalar(hashes);
  planned = Sync(side, dry, {"m"});
  EXPECT_EQ(planned[0].run.counts.updated, 2);
  EXPECT_EQ(planned[0].run.counts.unchanged, 3);
  EXPECT_EQ(planned[0].sample.size(), 2u);
  // Nothing changed in the warehouse: the rows with a new hash are pulled again.
  EXPECT_EQ(Scalar(hashes), before);
  auto again = Sync(side, dry, {"m"});
  EXPECT_EQ(again[0].run.counts.extracted, 3);

  // A real run stores the new hashes, also of row 3 whose payload did not change.
  auto real = Sync(side, {}, {"m"});
  EXPECT_EQ(real[0].run.counts.updated, 2);
  EXPECT_EQ(real[0].run.counts.unchanged, 3);
  auto after = Sync(side, {}, {"m"});
  EXPECT_EQ(after[0].run.counts.extracted, 0);
  EXPECT_EQ(after[0].run.counts.unchanged, 5);
}

TEST_F(WarehouseModeTest, ChangingTheMappingResendsWhatItChanges) {
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT g, 'u' || g || '@x.io', 'free', 30, 'n' FROM generate_series(1, 4) g",
      table_));
  Side side;
  Setup(side, "w", "warehouse");
  Sync(side, {}, {"m"});
  // The same mapping name with another field: every record's payload changes.
  Side changed;
  changed.dir = side.dir;
  ASSERT_TRUE(changed.registry.AddSource(PostgresSourceDefinition()).ok());
  changed.m = side.m;
  ASSERT_TRUE(changed.registry.AddDestination(MemoryDestinationDefinition(changed.m)).ok());
  std::string yaml = fmt::format(R"(
sources:
  - {{ name: wh, type: postgres, url: "{}", password: "{}", state_schema: {} }}
models:
  - {{ name: customers, source: wh, sql: "SELECT id, email, plan, age, note FROM {}", primary_key: id, change_detection: warehouse }}
destinations:
  - {{ name: mem, type: memory }}
mappings:
  - {{ name: m, model: customers, destination: mem, action: upsert, fields: {{ customer_id: id, email: email, plan: plan, age: age }} }}
)",
                                 server().url, server().password, schema_, table_);
  LoadResult r = LoadWorkspaceFromString(yaml, (side.dir / "b.yaml").string(), changed.registry);
  ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].ToString());
  changed.workspace = std::move(r.workspace);
  changed.state = std::move(side.state);
  auto run = Sync(changed, {}, {"m"});
  ASSERT_EQ(run.size(), 1u);
  EXPECT_EQ(run[0].run.counts.updated, 4);
  EXPECT_EQ(changed.m->records["1"],
            R"({"customer_id":1,"email":"u1@x.io","plan":"free","age":30})");
}

TEST(WarehouseModeHelpers, RowHashRoundTripsThroughIdentities) {
  std::string bytes = "identity";
  AppendRowHash(bytes, "hash-1");
  std::string_view view = bytes;
  auto hash = SplitRowHash(view);
  ASSERT_TRUE(hash.ok());
  EXPECT_EQ(*hash, "hash-1");
  EXPECT_EQ(view, "identity");
  std::string_view empty;
  EXPECT_EQ(SplitRowHash(empty).status().code(), absl::StatusCode::kDataLoss);

  CheckpointUpdate upsert{
      .key = "a", .kind = CheckpointUpdate::Kind::kUpsert, .fingerprint = {1, 2}, .identity = "id"};
  AppendRowHash(upsert.identity, "h");
  CheckpointUpdate settle{.key = "b", .kind = CheckpointUpdate::Kind::kSettle};
  AppendRowHash(settle.identity, "");
  std::vector<WarehouseCheckpointWrite> writes;
  std::vector<CheckpointUpdate> settles;
  ASSERT_TRUE(ToWarehouseWrites({upsert, settle}, Fingerprint{7, 7}, writes, settles).ok());
  ASSERT_EQ(writes.size(), 1u);
  EXPECT_EQ(writes[0].identity, "id");
  EXPECT_EQ(writes[0].row_hash, "h");
  EXPECT_EQ(writes[0].version, (Fingerprint{7, 7}));
  ASSERT_EQ(settles.size(), 2u);
  EXPECT_EQ(settles[1].kind, CheckpointUpdate::Kind::kSettle);
}

}  // namespace
}  // namespace backflow
