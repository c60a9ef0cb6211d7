#include "backflow/engine/sync_engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>

#include <filesystem>
#include <set>

#include "backflow/common/clock.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/model/value.h"
#include "backflow/sources/sqlite/sqlite_source.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "fmt/ranges.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using testing::MemoryDestinationState;

class SyncEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dest_ = std::make_shared<MemoryDestinationState>();
    ASSERT_TRUE(registry_.AddSource(SqliteSourceDefinition()).ok());
    ASSERT_TRUE(registry_.AddDestination(MemoryDestinationDefinition(dest_)).ok());
    auto db = sqlite::Database::Open((dir_ / "wh.db").string(),
                                     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    warehouse_ = std::move(*db);
    Exec("CREATE TABLE customers (id INTEGER, email TEXT, plan TEXT, age INTEGER)");
    for (int i = 1; i <= 10; ++i) {
      Exec(fmt::format("INSERT INTO customers VALUES ({0}, 'u{0}@x.io', 'free', {1})", i, 20 + i));
    }
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(warehouse_->Exec(sql).ok()) << sql; }

  // Loads a workspace with one mapping `m` of model `customers`.
  void Load(const std::string& mapping_extra = "",
            const std::string& sql = "SELECT id, email, plan, age FROM customers") {
    std::string yaml = fmt::format(R"(
state: sqlite:state.db
sources:
  - {{ name: wh, type: sqlite, path: wh.db }}
models:
  - name: customers
    source: wh
    sql: "{}"
    primary_key: id
destinations:
  - {{ name: mem, type: memory }}
mappings:
  - name: m
    model: customers
    destination: mem
    action: upsert
    fields: {{ customer_id: id, email: email, plan: plan }}
{}
)",
                                   sql, mapping_extra);
    LoadResult r = LoadWorkspaceFromString(yaml, (dir_ / "backflow.yaml").string(), registry_);
    ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].ToString());
    workspace_ = std::move(r.workspace);
    if (!state_) {
      auto state = OpenSqliteStateStore((dir_ / "state.db").string());
      ASSERT_TRUE(state.ok()) << state.status();
      state_ = std::move(*state);
    }
  }

  RunInfo Sync(SyncOptions options = {}) {
    FakeClock clock;
    SyncEngine engine(workspace_, registry_, *state_, ConnectorEnv{nullptr, &clock},
                      (dir_ / ".backflow").string());
    auto results = engine.Run("customers", {"m"}, options);
    EXPECT_TRUE(results.ok()) << results.status();
    if (!results.ok() || results->empty()) return {};
    last_sample_ = (*results)[0].sample;
    return (*results)[0].run;
  }

  testing::ScratchDir scratch_{"engine"};
  const fs::path dir_ = scratch_.path();
  Registry registry_;
  std::shared_ptr<MemoryDestinationState> dest_;
  std::unique_ptr<sqlite::Database> warehouse_;
  Workspace workspace_;
  std::unique_ptr<StateStore> state_;
  std::vector<PlannedChange> last_sample_;
};

TEST_F(SyncEngineTest, FirstRunAddsEverythingSecondRunSendsNothing) {
  Load();
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  EXPECT_EQ(run.counts.extracted, 10);
  EXPECT_EQ(run.counts.added, 10);
  EXPECT_EQ(run.counts.succeeded, 10);
  EXPECT_EQ(dest_->records.size(), 10u);
  EXPECT_EQ(dest_->records["3"], R"({"customer_id":3,"email":"u3@x.io","plan":"free"})");
  EXPECT_EQ(dest_->batch_sizes, (std::vector<int>{3, 3, 3, 1}));

  dest_->sent_keys.clear();
  run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded);
  EXPECT_EQ(run.counts.unchanged, 10);
  EXPECT_EQ(run.counts.added + run.counts.updated + run.counts.deleted, 0);
  EXPECT_TRUE(dest_->sent_keys.empty());
}

TEST_F(SyncEngineTest, SendsExactlyTheInsertsUpdatesAndDeletes) {
  Load();
  Sync();
  Exec("INSERT INTO customers VALUES (11, 'new@x.io', 'pro', 40)");
  Exec("UPDATE customers SET plan = 'pro' WHERE id = 2");
  Exec("UPDATE customers SET age = 99 WHERE id = 3");  // unmapped column: no change
  Exec("DELETE FROM customers WHERE id = 5");
  dest_->sent_keys.clear();
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  EXPECT_EQ(run.counts.added, 1);
  EXPECT_EQ(run.counts.updated, 1);
  EXPECT_EQ(run.counts.deleted, 1);
  EXPECT_EQ(run.counts.unchanged, 8);
  std::vector<std::string> sent = dest_->sent_keys;
  std::sort(sent.begin(), sent.end());
  EXPECT_EQ(sent, (std::vector<std::string>{"11", "2", "5"}));
  EXPECT_EQ(dest_->records.count("5"), 0u);
  EXPECT_EQ(dest_->records["2"], R"({"customer_id":2,"email":"u2@x.io","plan":"pro"})");
  EXPECT_EQ(dest_->records.size(), 10u);
}

TEST_F(SyncEngineTest, RejectedRecordIsRetriedNextRunUntilItSucceeds) {
  Load();
  dest_->reject_keys = {"4"};
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kPartial);
  EXPECT_EQ(run.counts.failed, 1);
  EXPECT_EQ(run.counts.succeeded, 9);
  auto records = state_->GetRunRecords(run.id, "failed", 10);
  ASSERT_TRUE(records.ok());
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ((*records)[0].key, "4");
  EXPECT_EQ((*records)[0].payload, R"({"customer_id":4,"email":"u4@x.io","plan":"free"})");
  EXPECT_EQ((*records)[0].error_class, "record");
  EXPECT_FALSE((*records)[0].recommended_action.empty());

  // Unchanged in the model, but never delivered: sent again.
  dest_->sent_keys.clear();
  run = Sync();
  EXPECT_EQ(dest_->sent_keys, (std::vector<std::string>{"4"}));
  EXPECT_EQ(run.counts.failed, 1);

  dest_->reject_keys.clear();
  dest_->sent_keys.clear();
  run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded);
  EXPECT_EQ(dest_->sent_keys, (std::vector<std::string>{"4"}));
  EXPECT_EQ(dest_->records.size(), 10u);
  dest_->sent_keys.clear();
  Sync();
  EXPECT_TRUE(dest_->sent_keys.empty());
}

TEST_F(SyncEngineTest, DuplicateAndNullKeysAreRejectedAndNeverDeleted) {
  Load();
  Sync();
  Exec("INSERT INTO customers VALUES (7, 'dup@x.io', 'free', 1)");
  Exec("INSERT INTO customers VALUES (NULL, 'nokey@x.io', 'free', 1)");
  dest_->sent_keys.clear();
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kPartial);
  EXPECT_EQ(run.counts.rejected, 3);  // both copies of 7, and the NULL key
  EXPECT_EQ(run.counts.deleted, 0);
  EXPECT_TRUE(dest_->sent_keys.empty());
  EXPECT_EQ(dest_->records.count("7"), 1u);
  auto records = state_->GetRunRecords(run.id, "rejected", 10);
  ASSERT_TRUE(records.ok());
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[0].error, "the unique identifier id is NULL");
  EXPECT_EQ((*records)[1].key, "7");
  EXPECT_NE((*records)[1].error.find("2 rows have id = 7"), std::string::npos);
}

TEST_F(SyncEngineTest, KeysSortedOnDiskGiveTheSameChangesAsInMemory) {
  // Text keys arrive in no particular order; duplicates and NULL keys are
  // spread over many spilled runs (a 4 KiB sort budget holds ~80 keys).
  Exec("DELETE FROM customers");
  for (int i = 0; i < 3000; ++i) {
    Exec(fmt::format("INSERT INTO customers VALUES ({}, 'u{}@x.io', 'free', {})",
                     i % 1000 == 7 ? "NULL" : std::to_string((i * 7919) % 3000), i, i % 90));
  }
  Exec("INSERT INTO customers VALUES (42, 'dup@x.io', 'pro', 1)");  // a duplicate of id 42
  Load("    records: all\n", "SELECT CAST(id AS TEXT) AS id, email, plan, age FROM customers");
  SyncOptions spilled;
  spilled.sort_memory_bytes = 4096;
  RunInfo run = Sync(spilled);
  EXPECT_EQ(run.status, RunStatus::kPartial) << run.error;
  EXPECT_EQ(run.counts.extracted, 3001);
  EXPECT_EQ(run.counts.rejected, 3 + 2);  // 3 NULL keys, 2 rows with id 42
  EXPECT_EQ(run.counts.added, 3001 - 5);
  EXPECT_EQ(dest_->records.size(), 3001u - 5);

  Exec("UPDATE customers SET plan = 'pro' WHERE age = 5");  // ~33 rows
  Exec("DELETE FROM customers WHERE age = 6");              // ~33 rows
  Exec("DELETE FROM customers WHERE email = 'dup@x.io'");   // 42 becomes unique: added
  int64_t updated = 0, deleted = 0;
  {
    auto q = warehouse_->Prepare(
        "SELECT (SELECT COUNT(*) FROM customers WHERE age = 5 AND id IS NOT NULL AND id <> 42), "
        "(SELECT 3000 - 3 - 1 - COUNT(*) FROM customers WHERE id IS NOT NULL AND id <> 42)");
    ASSERT_TRUE(q.ok());
    ASSERT_TRUE(*q->Step());
    updated = q->ColumnInt(0);
    deleted = q->ColumnInt(1);
  }
  run = Sync(spilled);
  EXPECT_EQ(run.counts.updated, updated);
  EXPECT_EQ(run.counts.deleted, deleted);
  EXPECT_EQ(run.counts.added, 1);
  EXPECT_EQ(run.counts.rejected, 3);
  // The destination now equals the model's keyed rows.
  auto q = warehouse_->Prepare("SELECT COUNT(*) FROM customers WHERE id IS NOT NULL");
  ASSERT_TRUE(q.ok());
  ASSERT_TRUE(*q->Step());
  EXPECT_EQ(static_cast<int64_t>(dest_->records.size()), q->ColumnInt(0));
  EXPECT_EQ(dest_->records["42"], R"({"customer_id":"42","email":"u1518@x.io","plan":"free"})")
      << "the surviving row of the former duplicate";

  // A third run, in memory this time, finds nothing left to do.
  run = Sync();
  EXPECT_EQ(run.counts.added + run.counts.updated + run.counts.deleted, 0);
  EXPECT_EQ(run.counts.unchanged, static_cast<int64_t>(dest_->records.size()));
}

TEST_F(SyncEngineTest, ExtractionFailureMidStreamSendsAndDeletesNothing) {
  Load();
  Sync();
  // abs() of INT64_MIN raises "integer overflow" when row 6 is reached.
  Load("",
       "SELECT id, email, plan, CASE WHEN id = 6 THEN abs(-9223372036854775807 - 1) "
       "ELSE age END AS age FROM customers");
  dest_->sent_keys.clear();
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kFailed);
  EXPECT_NE(run.error.find("extraction failed after 5 rows"), std::string::npos) << run.error;
  EXPECT_NE(run.error.find("integer overflow"), std::string::npos) << run.error;
  EXPECT_EQ(run.counts.deleted, 0);
  EXPECT_TRUE(dest_->sent_keys.empty());
  EXPECT_EQ(dest_->records.size(), 10u);
}

TEST_F(SyncEngineTest, MissingMappedColumnFailsBeforeSending) {
  Load("", "SELECT id, email FROM customers");
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kFailed);
  EXPECT_NE(run.error.find("maps column plan that model \"customers\" no longer returns"),
            std::string::npos)
      << run.error;
  EXPECT_TRUE(dest_->sent_keys.empty());
}

TEST_F(SyncEngineTest, DryRunShowsChangesAndSendsNothing) {
  Load();
  SyncOptions options;
  options.dry_run = true;
  RunInfo run = Sync(options);
  EXPECT_EQ(run.status, RunStatus::kSucceeded);
  EXPECT_EQ(run.counts.added, 10);
  EXPECT_EQ(run.counts.succeeded, 0);
  EXPECT_TRUE(dest_->sent_keys.empty());
  ASSERT_EQ(last_sample_.size(), 10u);
  EXPECT_EQ(last_sample_[0].change, "added");
  EXPECT_EQ(*state_->CheckpointSize("m"), 0);
  // A real run afterwards still sends everything.
  run = Sync();
  EXPECT_EQ(run.counts.succeeded, 10);
}

TEST_F(SyncEngineTest, RecordSelectionSkipsButAdvancesUnselectedChanges) {
  Load("    records: deleted");
  RunInfo run = Sync();
  EXPECT_EQ(run.counts.added, 10);
  EXPECT_EQ(run.counts.skipped, 10);
  EXPECT_TRUE(dest_->sent_keys.empty());
  Exec("DELETE FROM customers WHERE id IN (1, 2)");
  Exec("UPDATE customers SET plan = 'x' WHERE id = 3");
  run = Sync();
  EXPECT_EQ(run.counts.deleted, 2);
  EXPECT_EQ(run.counts.updated, 1);
  EXPECT_EQ(run.counts.skipped, 1);
  EXPECT_EQ(dest_->sent_keys, (std::vector<std::string>{"1", "2"}));
}

TEST_F(SyncEngineTest, FullResyncResendsEveryRecord) {
  Load();
  Sync();
  dest_->sent_keys.clear();
  SyncOptions options;
  options.full_resync = true;
  RunInfo run = Sync(options);
  EXPECT_EQ(run.counts.updated, 10);
  EXPECT_EQ(dest_->sent_keys.size(), 10u);
}

TEST_F(SyncEngineTest, WholeBatchRefusalStopsTheRunAndLosesNothing) {
  Load();
  dest_->batch_error = absl::UnauthenticatedError("bad token");
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kFailed);
  EXPECT_EQ(dest_->batches, 1);  // stopped after the first refusal
  EXPECT_EQ(run.counts.failed, 10);
  EXPECT_NE(run.error.find("bad token"), std::string::npos);
  dest_->batch_error = absl::OkStatus();
  run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded);
  EXPECT_EQ(run.counts.succeeded, 10);
}

TEST_F(SyncEngineTest, ConcurrentSessionsDeliverEveryRecordOnce) {
  for (int i = 11; i <= 200; ++i) {
    Exec(fmt::format("INSERT INTO customers VALUES ({0}, 'u{0}@x.io', 'free', 30)", i));
  }
  Load("    batch_size: 10");
  dest_->concurrency = 4;
  dest_->send_delay = std::chrono::milliseconds(5);
  dest_->reject_keys = {"17", "150"};
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kPartial) << run.error;
  EXPECT_EQ(run.counts.succeeded, 198);
  EXPECT_EQ(run.counts.failed, 2);
  EXPECT_EQ(dest_->records.size(), 198u);
  EXPECT_EQ(dest_->sent_keys.size(), 200u);  // each record sent once
  EXPECT_GE(dest_->max_in_flight, 2);
  EXPECT_LE(dest_->max_in_flight, 4);
  EXPECT_EQ(dest_->finished_sessions, 4);

  // The rejected records, and only they, are retried.
  dest_->reject_keys.clear();
  dest_->sent_keys.clear();
  run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  std::vector<std::string> sent = dest_->sent_keys;
  std::sort(sent.begin(), sent.end());
  EXPECT_EQ(sent, (std::vector<std::string>{"150", "17"}));
  EXPECT_EQ(dest_->records.size(), 200u);
}

TEST_F(SyncEngineTest, ConcurrentRefusalStopsNewBatchesAndLosesNothing) {
  for (int i = 11; i <= 200; ++i) {
    Exec(fmt::format("INSERT INTO customers VALUES ({0}, 'u{0}@x.io', 'free', 30)", i));
  }
  Load("    batch_size: 10");
  dest_->concurrency = 4;
  dest_->send_delay = std::chrono::milliseconds(2);
  dest_->batch_error = absl::UnauthenticatedError("bad token");
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kFailed);
  EXPECT_LE(dest_->batches, 4);  // only the batches already in flight
  EXPECT_EQ(run.counts.failed, 200);
  EXPECT_EQ(run.counts.succeeded, 0);
  dest_->batch_error = absl::OkStatus();
  run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  EXPECT_EQ(run.counts.succeeded, 200);
  EXPECT_EQ(dest_->records.size(), 200u);
}

TEST_F(SyncEngineTest, TypedFieldsAreCoercedAndBadValuesRejected) {
  std::string yaml = R"(
sources: [{ name: wh, type: sqlite, path: wh.db }]
models:
  - { name: customers, source: wh, primary_key: id,
      sql: "SELECT id, email, CASE WHEN id = 2 THEN 'old' ELSE CAST(age AS TEXT) END AS age, 1 AS vip FROM customers" }
destinations: [{ name: mem, type: memory }]
mappings:
  - { name: m, model: customers, destination: mem, action: typed, records: all,
      fields: { email: email, age: age } }
)";
  LoadResult r = LoadWorkspaceFromString(yaml, (dir_ / "backflow.yaml").string(), registry_);
  ASSERT_TRUE(r.ok()) << r.diagnostics[0].ToString();
  workspace_ = std::move(r.workspace);
  auto state = OpenSqliteStateStore((dir_ / "state.db").string());
  ASSERT_TRUE(state.ok());
  state_ = std::move(*state);
  RunInfo run = Sync();
  EXPECT_EQ(run.counts.rejected, 1);
  EXPECT_EQ(run.counts.succeeded, 9);
  EXPECT_EQ(dest_->records["1"], R"({"email":"u1@x.io","age":21,"vip":true})");
  auto records = state_->GetRunRecords(run.id, "rejected", 10);
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ((*records)[0].error,
            "field \"age\": cannot convert string value \"old\" to an integer");
}

TEST_F(SyncEngineTest, CommitOnFinishFailureKeepsRecordsPending) {
  auto deferred = std::make_shared<MemoryDestinationState>();
  registry_ = Registry();
  ASSERT_TRUE(registry_.AddSource(SqliteSourceDefinition()).ok());
  ASSERT_TRUE(registry_.AddDestination(MemoryDestinationDefinition(deferred, true)).ok());
  Load();
  deferred->finish_error = absl::UnavailableError("disk full");
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kFailed);
  EXPECT_EQ(run.counts.succeeded, 0);
  EXPECT_EQ(run.counts.failed, 10);
  EXPECT_EQ(*state_->CheckpointSize("m"), 0);
  deferred->finish_error = absl::OkStatus();
  run = Sync();
  EXPECT_EQ(run.counts.succeeded, 10);
  EXPECT_EQ(*state_->CheckpointSize("m"), 10);
}

TEST_F(SyncEngineTest, AMappingIsNeverSyncedTwiceAtOnce) {
  Load();
  fs::create_directories(dir_ / ".backflow" / "locks");
  int fd = open((dir_ / ".backflow" / "locks" / "m.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX | LOCK_NB), 0);  // as another process syncing "m" would
  FakeClock clock;
  SyncEngine engine(workspace_, registry_, *state_, ConnectorEnv{nullptr, &clock},
                    (dir_ / ".backflow").string());
  auto results = engine.Run("customers", {"m"}, {});
  EXPECT_EQ(results.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(state_->ListRuns("m", 10)->empty());
  EXPECT_TRUE(dest_->sent_keys.empty());
  // Nor is its checkpoint reset under a sync.
  EXPECT_TRUE(IsMappingBusy(engine.ResetCheckpoint("m")));
  close(fd);
  EXPECT_EQ(Sync().status, RunStatus::kSucceeded);
  EXPECT_EQ(*state_->CheckpointSize("m"), 10);
  ASSERT_TRUE(engine.ResetCheckpoint("m").ok());
  EXPECT_EQ(*state_->CheckpointSize("m"), 0);
}

TEST_F(SyncEngineTest, MassDeleteIsRefusedUnlessAllowed) {
  Load();
  Sync();
  Exec("DELETE FROM customers WHERE id > 4");  // 6 of 10: above the default 50%
  dest_->sent_keys.clear();
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kFailed);
  EXPECT_EQ(run.counts.deleted, 6);
  EXPECT_NE(run.error.find("would delete 6 records, more than max_deletes allows (50% of the 10 "
                           "records last synced)"),
            std::string::npos)
      << run.error;
  EXPECT_NE(run.error.find("--allow-mass-delete"), std::string::npos);
  EXPECT_TRUE(dest_->sent_keys.empty());
  EXPECT_EQ(*state_->CheckpointSize("m"), 10);

  SyncOptions dry;
  dry.dry_run = true;
  EXPECT_EQ(Sync(dry).status, RunStatus::kFailed);  // a dry run says the real one would be refused

  SyncOptions allow;
  allow.allow_mass_delete = true;
  run = Sync(allow);
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  EXPECT_EQ(dest_->records.size(), 4u);
}

TEST_F(SyncEngineTest, MaxDeletesAcceptsCountsAndPercentages) {
  Load("    max_deletes: 2");
  Sync();
  Exec("DELETE FROM customers WHERE id > 7");  // 3 deletes, limit 2
  EXPECT_EQ(Sync().status, RunStatus::kFailed);
  Load("    max_deletes: 100%");
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  EXPECT_EQ(run.counts.deleted, 3);
}

TEST_F(SyncEngineTest, RefusedRunDoesNotAdvanceSkippedChanges) {
  Load("    records: added_or_updated");
  Sync();
  Exec("DELETE FROM customers WHERE id > 2");  // 8 skipped deletes: still over the limit
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kFailed);
  EXPECT_EQ(*state_->CheckpointSize("m"), 10);  // nothing advanced
  SyncOptions allow;
  allow.allow_mass_delete = true;
  run = Sync(allow);
  EXPECT_EQ(run.counts.skipped, 8);
  EXPECT_EQ(*state_->CheckpointSize("m"), 2);
}

TEST_F(SyncEngineTest, RunsRecordTheTimeOfEachPhase) {
  Load();
  RunInfo run = Sync();
  EXPECT_GT(run.extract_s, 0);
  EXPECT_GT(run.diff_s, 0);
  EXPECT_GT(run.deliver_s, 0);
  EXPECT_LE(run.extract_s + run.diff_s + run.deliver_s, run.duration_s + 1e-3);
  auto stored = state_->GetRun(run.id);
  ASSERT_TRUE(stored.ok());
  EXPECT_DOUBLE_EQ(stored->deliver_s, run.deliver_s);
}

TEST_F(SyncEngineTest, RecordsLeftInFlightAreResentOrDeleted) {
  Load();
  Sync();
  // As if a process died after sending these and before recording the outcome:
  // "3" is unchanged in the model, "77" was being added and is gone from it.
  std::string identity;
  EncodeRow({Value::Int64(77)}, identity);
  ASSERT_TRUE(
      state_->MarkInFlight("m", {{.key = "3", .identity = ""}, {.key = "77", .identity = identity}})
          .ok());
  dest_->sent_keys.clear();
  dest_->records["77"] = "{}";
  RunInfo run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  EXPECT_EQ(run.counts.updated, 1);
  EXPECT_EQ(run.counts.deleted, 1);
  std::vector<std::string> sent = dest_->sent_keys;
  std::sort(sent.begin(), sent.end());
  EXPECT_EQ(sent, (std::vector<std::string>{"3", "77"}));
  EXPECT_EQ(dest_->records.count("77"), 0u);
  // Settled: the next run has nothing to do.
  dest_->sent_keys.clear();
  Sync();
  EXPECT_TRUE(dest_->sent_keys.empty());
}

TEST_F(SyncEngineTest, AnAmbiguousFailureIsCleanedUpWhenTheModelDropsTheRecord) {
  Load();
  Sync();
  Exec("INSERT INTO customers VALUES (11, 'late@x.io', 'free', 1)");
  dest_->lost_reply_keys = {"11"};  // written, but the reply never came
  RunInfo run = Sync();
  EXPECT_EQ(run.counts.failed, 1);
  EXPECT_EQ(dest_->records.count("11"), 1u);
  dest_->lost_reply_keys.clear();
  Exec("DELETE FROM customers WHERE id = 11");
  run = Sync();
  EXPECT_EQ(run.counts.deleted, 1);
  EXPECT_EQ(dest_->records.count("11"), 0u);
  EXPECT_EQ(dest_->records.size(), 10u);
}

TEST_F(SyncEngineTest, DefiniteRefusalsAreSettled) {
  Load();
  dest_->batch_error = absl::PermissionDeniedError("forbidden");  // nothing accepted
  Sync();
  dest_->batch_error = absl::OkStatus();
  dest_->reject_keys = {"1"};
  Sync();
  auto scanner = state_->ScanInFlight("m");
  ASSERT_TRUE(scanner.ok());
  CheckpointEntry e;
  EXPECT_FALSE(*(*scanner)->Next(e));  // nothing left in flight
}

// What is durable when each batch goes out: exactly that batch is in flight
// (the next one is not marked yet) and every batch before it is in the
// checkpoint (its outcome was written with this batch's marks). With one
// session the engine thread only reads the spool while a batch is being sent,
// so reading the store from the send is safe.
TEST_F(SyncEngineTest, EachBatchGoesOutAfterThePreviousOutcomesAndOnlyItsOwnMarks) {
  Load();
  auto keys = [](absl::StatusOr<std::unique_ptr<CheckpointScanner>> scanner) {
    std::set<std::string> out;
    if (!scanner.ok()) {
      out.insert("error: " + std::string(scanner.status().message()));
      return out;
    }
    CheckpointEntry e;
    while (true) {
      absl::StatusOr<bool> row = (*scanner)->Next(e);
      if (!row.ok() || !*row) break;
      out.insert(e.key);
    }
    return out;
  };
  std::vector<std::string> problems;
  dest_->on_batch = [&](int batch) {
    const size_t size = static_cast<size_t>(dest_->batch_sizes.back());
    const auto end = dest_->sent_keys.end();
    const std::set<std::string> this_batch(end - static_cast<std::ptrdiff_t>(size), end);
    const std::set<std::string> before(dest_->sent_keys.begin(),
                                       end - static_cast<std::ptrdiff_t>(size));
    if (keys(state_->ScanInFlight("m")) != this_batch) {
      problems.push_back(fmt::format("batch {}: in flight is not exactly this batch", batch));
    }
    if (keys(state_->ScanCheckpoint("m")) != before) {
      problems.push_back(
          fmt::format("batch {}: earlier outcomes are not in the checkpoint", batch));
    }
  };
  RunInfo run = Sync();
  dest_->on_batch = nullptr;
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  EXPECT_EQ(dest_->batch_sizes, (std::vector<int>{3, 3, 3, 1}));
  EXPECT_TRUE(problems.empty()) << fmt::format("{}", fmt::join(problems, "; "));
  // The last batch's outcome is durable when the run ends.
  EXPECT_EQ(keys(state_->ScanCheckpoint("m")).size(), 10u);
  EXPECT_TRUE(keys(state_->ScanInFlight("m")).empty());
}

TEST_F(SyncEngineTest, AQueuedRunIsReportedIntoItsOwnRow) {
  Load();
  RunInfo queued;
  queued.mapping = "m";
  queued.model = "customers";
  queued.destination = "mem";
  queued.trigger = "api";
  queued.requested_at = "2026-01-01T00:00:00.000Z";
  auto ids = state_->EnqueueRunsUnlessActive({queued});
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->ids.size(), 1u);
  auto claimed = state_->ClaimRuns("w1", absl::Now(), absl::Seconds(30));
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  SyncOptions options;
  options.queued_runs["m"] = (*claimed)[0];
  RunInfo run = Sync(options);
  EXPECT_EQ(run.id, ids->ids[0]);
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  EXPECT_EQ(run.trigger, "api");
  auto stored = state_->GetRun(ids->ids[0]);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->status, RunStatus::kSucceeded);
  EXPECT_EQ(stored->counts.succeeded, 10);
  EXPECT_EQ(stored->requested_at, "2026-01-01T00:00:00.000Z");
  EXPECT_EQ(state_->ListRuns("m", 10)->size(), 1u);
}

TEST_F(SyncEngineTest, CancellingDuringDeliveryStopsNewBatchesAndTheNextRunFinishes) {
  Exec(
      "WITH RECURSIVE n(i) AS (SELECT 11 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
      "INSERT INTO customers SELECT i, 'u' || i || '@x.io', 'free', 30 FROM n");
  Load("    batch_size: 10");
  std::atomic<bool> cancel{false};
  dest_->on_batch = [&](int batches) {
    if (batches == 3) cancel.store(true);
  };
  SyncOptions options;
  options.cancel = &cancel;
  RunInfo run = Sync(options);
  EXPECT_EQ(run.status, RunStatus::kCancelled) << run.error;
  EXPECT_NE(run.error.find("cancelled after sending 30 of 100"), std::string::npos) << run.error;
  EXPECT_EQ(run.counts.succeeded, 30);
  EXPECT_EQ(run.counts.failed, 0);
  EXPECT_EQ(dest_->records.size(), 30u);

  dest_->on_batch = nullptr;
  dest_->sent_keys.clear();
  run = Sync();
  EXPECT_EQ(run.status, RunStatus::kSucceeded) << run.error;
  EXPECT_EQ(run.counts.added, 70);
  EXPECT_EQ(dest_->sent_keys.size(), 70u);  // nothing sent twice
  EXPECT_EQ(dest_->records.size(), 100u);
}

TEST_F(SyncEngineTest, CancellingDuringExtractionSendsNothing) {
  Exec(
      "WITH RECURSIVE n(i) AS (SELECT 11 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) "
      "INSERT INTO customers SELECT i, 'u' || i || '@x.io', 'free', 30 FROM n");
  Load();
  std::atomic<bool> cancel{true};
  SyncOptions options;
  options.cancel = &cancel;
  RunInfo run = Sync(options);
  EXPECT_EQ(run.status, RunStatus::kCancelled);
  EXPECT_NE(run.error.find("during extraction"), std::string::npos) << run.error;
  EXPECT_LT(run.counts.extracted, 3000);
  EXPECT_TRUE(dest_->sent_keys.empty());
  EXPECT_EQ(*state_->CheckpointSize("m"), 0);
}

TEST_F(SyncEngineTest, CancellingOneMappingOfAModelRunLetsTheOthersFinish) {
  Exec(
      "WITH RECURSIVE n(i) AS (SELECT 11 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
      "INSERT INTO customers SELECT i, 'u' || i || '@x.io', 'free', 30 FROM n");
  Load(R"(    batch_size: 10
  - name: other
    model: customers
    destination: mem
    action: upsert
    batch_size: 10
    fields: { other_id: id })");
  std::atomic<bool> cancel_m{false};
  dest_->on_batch = [&](int batches) {
    if (batches == 2) cancel_m.store(true);
  };
  SyncOptions options;
  options.cancel_mapping = [&](const std::string& mapping) {
    return mapping == "m" && cancel_m.load();
  };
  FakeClock clock;
  SyncEngine engine(workspace_, registry_, *state_, ConnectorEnv{nullptr, &clock},
                    (dir_ / ".backflow").string());
  auto results = engine.Run("customers", {"m", "other"}, options);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 2u);
  EXPECT_EQ((*results)[0].run.status, RunStatus::kCancelled) << (*results)[0].run.error;
  EXPECT_EQ((*results)[0].run.counts.succeeded, 20);
  EXPECT_EQ((*results)[1].run.status, RunStatus::kSucceeded) << (*results)[1].run.error;
  EXPECT_EQ((*results)[1].run.counts.succeeded, 100);
}

}  // namespace
}  // namespace backflow
