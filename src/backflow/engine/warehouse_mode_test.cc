// The engine with `change_detection: warehouse` on a real PostgreSQL: the
// shared checks of sources/warehouse_sql/testing (the same change sets as
// local mode over random rounds, a retried record, an interrupted checkpoint
// write), plus dry runs and a changed mapping.
#include "backflow/engine/warehouse_mode.h"

#include <gtest/gtest.h>

#include "backflow/common/clock.h"
#include "backflow/pg/testing/test_server.h"
#include "backflow/sources/postgres/postgres_source.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_mode_property.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using testing::MemoryDestinationDefinition;
using warehouse_testing::Side;

class WarehouseModeTest : public pg::testing::PostgresTest,
                          public warehouse_testing::WarehouseModeFixture {
 protected:
  void SetUp() override {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    table_ = pg::testing::UniqueName("wm");
    schema_ = pg::testing::UniqueName("wm_state");
    ExecOrFail(
        fmt::format("CREATE TABLE {} (id int, email text, plan text, age int, note text)", table_));
    harness_ = std::make_unique<warehouse_testing::WarehouseModeHarness>(*this);
  }
  void TearDown() override {
    harness_.reset();
    if (IsSkipped()) return;
    auto conn = Connect();
    if (conn.ok()) (void)(*conn)->Exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", schema_));
  }

  std::string WarehouseName() const override { return "postgres"; }
  SourceDefinition WarehouseDefinition() const override { return PostgresSourceDefinition(); }
  std::string SourceYaml() const override {
    return fmt::format(
        "    type: postgres\n    url: \"{}\"\n    password: \"{}\"\n    "
        "state_schema: {}\n",
        server().url, server().password, schema_);
  }
  ConnectorEnv WarehouseEnv() override { return ConnectorEnv{nullptr, &clock_}; }
  std::string NewModelTable(int) override {
    ExecOrFail(fmt::format("TRUNCATE {}", table_));
    ExecOrFail(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", schema_));
    return table_;
  }
  void WarehouseExec(const std::string& sql) override { ExecOrFail(sql); }
  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    std::vector<std::vector<std::string>> rows;
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return rows;
    auto r = (*conn)->Exec(sql);
    EXPECT_TRUE(r.ok()) << r.status() << "\n" << sql;
    if (!r.ok()) return rows;
    for (int i = 0; i < PQntuples(r->get()); ++i) {
      rows.emplace_back();
      for (int j = 0; j < PQnfields(r->get()); ++j) {
        rows.back().push_back(PQgetisnull(r->get(), i, j) ? "NULL" : PQgetvalue(r->get(), i, j));
      }
    }
    return rows;
  }
  std::string ResolveOneDuplicateSql(const std::string& table) const override {
    return fmt::format(
        "DELETE FROM {0} WHERE ctid IN (SELECT min(ctid) FROM {0} WHERE id IS NOT NULL GROUP BY "
        "id HAVING count(*) > 1 LIMIT 1)",
        table);
  }

  void SetUpSide(Side& side, const std::string& name, const std::string& mode,
                 const std::string& m_extra = "") {
    harness_->Setup(side, name, mode, table_, m_extra);
  }
  std::vector<MappingRunResult> Sync(Side& side, SyncOptions options = {},
                                     std::vector<std::string> mappings = {"m", "m2"}) {
    return harness_->Sync(side, options, mappings);
  }
  int64_t Scalar(const std::string& sql) {
    auto rows = WarehouseRows(sql);
    return rows.empty() || rows[0].empty() ? -1 : std::stoll(rows[0][0]);
  }

  FakeClock clock_;
  std::unique_ptr<warehouse_testing::WarehouseModeHarness> harness_;
  std::string table_, schema_;
};

TEST_F(WarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  warehouse_testing::ExpectSameChangeSetsAsLocalMode(
      *this, {.initial_rows = 30, .rounds = 14, .full_resync_round = 9});
}

TEST_F(WarehouseModeTest, FailedRecordIsRetriedNextRun) {
  warehouse_testing::ExpectFailedRecordRetriedNextRun(*this);
}

TEST_F(WarehouseModeTest, InterruptedCheckpointWriteResendsOnlyTheBatchInFlight) {
  warehouse_testing::ExpectInterruptedCheckpointWriteResendsOnlyTheBatchInFlight(
      *this, fmt::format("ALTER TABLE {}.checkpoints RENAME TO checkpoints_away", schema_),
      fmt::format("ALTER TABLE {}.checkpoints_away RENAME TO checkpoints", schema_),
      fmt::format("SELECT count(*) AS c0 FROM {}.checkpoints WHERE mapping = 'm'", schema_));
}

TEST_F(WarehouseModeTest, DryRunWritesNothingToTheWarehouseCheckpoint) {
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT g, 'u' || g || '@x.io', 'free', 30, 'n' FROM generate_series(1, 5) g",
      table_));
  Side side;
  SetUpSide(side, "w", "warehouse");
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
  SetUpSide(side, "w", "warehouse");
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
  - {{ name: people, source: wh, sql: "SELECT id, email, plan, age, note FROM {}", primary_key: id, change_detection: warehouse }}
destinations:
  - {{ name: mem, type: memory }}
mappings:
  - {{ name: m, model: people, destination: mem, action: upsert, fields: {{ customer_id: id, email: email, plan: plan, age: age }} }}
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
