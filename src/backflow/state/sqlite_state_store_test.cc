#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <thread>

#include "backflow/model/value.h"
#include "backflow/sqlite/database.h"
#include "backflow/state/checkpoint_prefetch.h"
#include "backflow/state/state_store.h"
#include "backflow/state/state_store_contract.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

class SqliteStateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = OpenSqliteStateStore(path_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  std::vector<CheckpointEntry> Scan(const std::string& mapping) {
    auto scanner = store_->ScanCheckpoint(mapping);
    EXPECT_TRUE(scanner.ok());
    std::vector<CheckpointEntry> out;
    CheckpointEntry e;
    while (*(*scanner)->Next(e)) out.push_back(e);
    return out;
  }

  testing::ScratchDir scratch_{"state"};
  const std::string path_ = (scratch_.path() / "state.db").string();
  std::unique_ptr<StateStore> store_;
};

TEST_F(SqliteStateStoreTest, RunsRoundTripNewestFirst) {
  RunInfo run;
  run.mapping = "m";
  run.model = "customers";
  run.destination = "hook";
  run.started_at = "2026-01-01T00:00:00.000Z";
  run.pid = getpid();
  auto id1 = store_->CreateRun(run);
  auto id2 = store_->CreateRun(run);
  ASSERT_TRUE(id1.ok() && id2.ok());
  run.id = *id2;
  run.status = RunStatus::kPartial;
  run.counts.extracted = 10;
  run.counts.failed = 2;
  run.error = "";
  run.finished_at = "2026-01-01T00:00:05.000Z";
  run.duration_s = 5;
  ASSERT_TRUE(store_->UpdateRun(run).ok());
  auto got = store_->GetRun(*id2);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status, RunStatus::kPartial);
  EXPECT_EQ(got->counts.failed, 2);
  EXPECT_EQ(got->finished_at, "2026-01-01T00:00:05.000Z");
  auto runs = store_->ListRuns("m", 10);
  ASSERT_EQ(runs->size(), 2u);
  EXPECT_EQ((*runs)[0].id, *id2);
  EXPECT_TRUE(store_->ListRuns("other", 10)->empty());
  EXPECT_EQ(store_->GetRun(999).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SqliteStateStoreTest, RunRecordsKeepOrderAndFilterByOutcome) {
  RunInfo run;
  run.mapping = "m";
  auto id = store_->CreateRun(run);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(store_
                  ->AddRunRecords(*id, {{.key = "1", .outcome = "failed", .error = "a"},
                                        {.key = "2", .outcome = "rejected", .error = "b"}})
                  .ok());
  ASSERT_TRUE(store_->AddRunRecords(*id, {{.key = "3", .outcome = "failed", .error = "c"}}).ok());
  auto all = store_->GetRunRecords(*id, "", 10);
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[2].key, "3");
  auto failed = store_->GetRunRecords(*id, "failed", 10);
  ASSERT_EQ(failed->size(), 2u);
  EXPECT_EQ((*failed)[1].error, "c");
}

TEST_F(SqliteStateStoreTest, RunsOfDeadProcessesAreMarkedInterrupted) {
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);  // a pid that no longer exists
  RunInfo dead;
  dead.mapping = "m";
  dead.pid = child;
  RunInfo alive = dead;
  alive.pid = getpid();
  auto dead_id = store_->CreateRun(dead);
  auto alive_id = store_->CreateRun(alive);
  EXPECT_EQ(*store_->MarkInterruptedRuns(), 1);
  EXPECT_EQ(store_->GetRun(*dead_id)->status, RunStatus::kInterrupted);
  EXPECT_EQ(store_->GetRun(*alive_id)->status, RunStatus::kRunning);
}

TEST_F(SqliteStateStoreTest, CheckpointScansInKeyOrderAndAppliesAtomically) {
  auto fp = [](const char* s) { return Fingerprint128(s); };
  ASSERT_TRUE(store_
                  ->ApplyCheckpoint("m", {{.key = "b", .fingerprint = fp("b"), .identity = "ib"},
                                          {.key = "a", .fingerprint = fp("a"), .identity = "ia"},
                                          {.key = "c", .fingerprint = fp("c"), .identity = "ic"}})
                  .ok());
  ASSERT_TRUE(store_->ApplyCheckpoint("other", {{.key = "z", .fingerprint = fp("z")}}).ok());
  std::vector<CheckpointEntry> entries = Scan("m");
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0].key, "a");
  EXPECT_EQ(entries[0].fingerprint, fp("a"));
  EXPECT_EQ(entries[0].identity, "ia");
  EXPECT_EQ(entries[2].key, "c");

  ASSERT_TRUE(store_
                  ->ApplyCheckpoint("m", {{.key = "a", .kind = CheckpointUpdate::Kind::kRemove},
                                          {.key = "b", .fingerprint = fp("b2"), .identity = "x"}})
                  .ok());
  entries = Scan("m");
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].key, "b");
  EXPECT_EQ(entries[0].fingerprint, fp("b2"));
  EXPECT_EQ(*store_->CheckpointSize("m"), 2);
  EXPECT_EQ(*store_->CheckpointSize("other"), 1);
}

TEST_F(SqliteStateStoreTest, ScannerSeesASnapshotWhileCommitsHappen) {
  auto fp = Fingerprint128("x");
  std::vector<CheckpointUpdate> initial;
  for (int i = 0; i < 100; ++i)
    initial.push_back({.key = fmt::format("k{:03}", i), .fingerprint = fp});
  ASSERT_TRUE(store_->ApplyCheckpoint("m", initial).ok());
  auto scanner = store_->ScanCheckpoint("m");
  ASSERT_TRUE(scanner.ok());
  CheckpointEntry e;
  ASSERT_TRUE(*(*scanner)->Next(e));
  // Commit while the scan is open: it must neither block nor change what the scan sees.
  ASSERT_TRUE(store_
                  ->ApplyCheckpoint("m", {{.key = "k050", .kind = CheckpointUpdate::Kind::kRemove},
                                          {.key = "k100", .fingerprint = fp}})
                  .ok());
  int count = 1;
  while (*(*scanner)->Next(e)) ++count;
  EXPECT_EQ(count, 100);
  EXPECT_EQ(*store_->CheckpointSize("m"), 100);
}

TEST_F(SqliteStateStoreTest, ReopeningKeepsDataAndSchema) {
  RunInfo run;
  run.mapping = "m";
  ASSERT_TRUE(store_->CreateRun(run).ok());
  store_.reset();
  auto reopened = OpenSqliteStateStore(path_);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->ListRuns("", 10)->size(), 1u);
}

// State files from before checkpoints became files keep them in the
// `checkpoints` table: the first use of a mapping moves them, verified.
TEST_F(SqliteStateStoreTest, TableCheckpointsOfOlderStateFilesMoveToFiles) {
  store_.reset();
  auto fp = Fingerprint128("x");
  auto fp_bytes = fp.ToBytes();
  std::string fp_blob(reinterpret_cast<const char*>(fp_bytes.data()), fp_bytes.size());
  auto write_old_rows = [&](int n, bool consistent) {
    auto db = sqlite::Database::Open(path_, SQLITE_OPEN_READWRITE);
    ASSERT_TRUE(db.ok());
    uint64_t checksum = 0;
    for (int i = 0; i < n; ++i) {
      std::string key = fmt::format("k{:03}", i);
      auto s = (*db)->Prepare(
          "INSERT INTO checkpoints (mapping, record_key, fingerprint, identity) VALUES (?,?,?,?)");
      ASSERT_TRUE(s.ok());
      ASSERT_TRUE(s->Bind(1, "m").Bind(2, key).BindBlob(3, fp_blob).BindBlob(4, "id").Run().ok());
      Hasher128 h;
      h.Add(key).Add(fp_blob).Add("id");
      checksum += h.Finish().low;
    }
    auto meta =
        (*db)->Prepare("INSERT INTO checkpoint_meta (mapping, records, checksum) VALUES (?,?,?)");
    ASSERT_TRUE(meta.ok());
    ASSERT_TRUE(meta->Bind(1, "m")
                    .Bind(2, int64_t{n + (consistent ? 0 : 1)})
                    .Bind(3, static_cast<int64_t>(checksum))
                    .Run()
                    .ok());
  };
  write_old_rows(120, /*consistent=*/true);
  {
    // In-flight marks of that time lived in a table too (k005 also has an entry).
    auto db = sqlite::Database::Open(path_, SQLITE_OPEN_READWRITE);
    ASSERT_TRUE(db.ok());
    for (const char* key : {"k005", "zz"}) {
      auto s =
          (*db)->Prepare("INSERT INTO in_flight (mapping, record_key, identity) VALUES (?,?,?)");
      ASSERT_TRUE(s.ok());
      ASSERT_TRUE(s->Bind(1, "m").Bind(2, key).BindBlob(3, std::string("i-") + key).Run().ok());
    }
  }
  auto reopened = OpenSqliteStateStore(path_);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  store_ = std::move(*reopened);
  EXPECT_EQ(*store_->CheckpointSize("m"), 120);
  auto entries = Scan("m");
  ASSERT_EQ(entries.size(), 120u);
  EXPECT_EQ(entries[7].key, "k007");
  EXPECT_EQ(entries[7].fingerprint, fp);
  EXPECT_EQ(entries[7].identity, "id");
  {
    auto db = sqlite::Database::Open(path_, SQLITE_OPEN_READONLY);
    auto q = (*db)->Prepare("SELECT COUNT(*) FROM checkpoints");
    ASSERT_TRUE(*q->Step());
    EXPECT_EQ(q->ColumnInt(0), 0) << "the rows were moved, not copied";
    auto f = (*db)->Prepare("SELECT COUNT(*) FROM in_flight");
    ASSERT_TRUE(*f->Step());
    EXPECT_EQ(f->ColumnInt(0), 0) << "the marks were moved, not copied";
  }
  auto flights = store_->ScanInFlight("m");
  ASSERT_TRUE(flights.ok()) << flights.status();
  std::vector<std::string> marked;
  CheckpointEntry mark;
  while (*(*flights)->Next(mark)) marked.push_back(mark.key + "=" + mark.identity);
  EXPECT_EQ(marked, (std::vector<std::string>{"k005=i-k005", "zz=i-zz"}));

  // Damaged rows are not moved: the mapping's scan reports the damage.
  ASSERT_TRUE(store_->ResetCheckpoint("m").ok());
  store_.reset();
  write_old_rows(10, /*consistent=*/false);
  store_ = std::move(*OpenSqliteStateStore(path_));
  auto scanner = store_->ScanCheckpoint("m");
  ASSERT_FALSE(scanner.ok());
  EXPECT_EQ(scanner.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(scanner.status().message().find("backflow checkpoint reset m"), absl::string_view::npos)
      << scanner.status();
}

TEST_F(SqliteStateStoreTest, PrefetchedScanYieldsTheSameEntriesAndTheSameDamage) {
  std::vector<CheckpointUpdate> initial;
  for (int i = 0; i < 5000; ++i) {
    initial.push_back({.key = fmt::format("k{:05}", i),
                       .fingerprint = Fingerprint128(std::to_string(i)),
                       .identity = std::string(i % 7, 'i')});
  }
  ASSERT_TRUE(store_->ApplyCheckpoint("m", initial).ok());
  ASSERT_TRUE(store_->CommitCheckpoint("m").ok());
  // Journal entries on top of the base: the scan merges them on the fly.
  ASSERT_TRUE(
      store_
          ->ApplyCheckpoint("m", {{.key = "k00010", .kind = CheckpointUpdate::Kind::kRemove},
                                  {.key = "k02500a", .fingerprint = Fingerprint128("new")},
                                  {.key = "k04999", .fingerprint = Fingerprint128("upd")}})
          .ok());
  const std::vector<CheckpointEntry> direct = Scan("m");
  ASSERT_EQ(direct.size(), 5000u);
  auto scanner = store_->ScanCheckpoint("m");
  ASSERT_TRUE(scanner.ok());
  std::unique_ptr<CheckpointScanner> prefetched = PrefetchCheckpointScanner(*std::move(scanner));
  CheckpointEntryView view;
  CheckpointEntry entry;
  for (size_t i = 0; i < direct.size(); ++i) {
    absl::StatusOr<bool> more = i % 2 == 0 ? prefetched->NextView(view) : prefetched->Next(entry);
    ASSERT_TRUE(more.ok()) << more.status();
    ASSERT_TRUE(*more);
    if (i % 2 == 1) view = {entry.key, entry.fingerprint, entry.identity};
    ASSERT_EQ(view.key, direct[i].key);
    ASSERT_EQ(view.fingerprint, direct[i].fingerprint);
    ASSERT_EQ(view.identity, direct[i].identity);
  }
  EXPECT_FALSE(*prefetched->NextView(view));
  prefetched.reset();

  // Damage in the middle of a base file: the prefetched scan reports it like
  // the direct one (DamagedCheckpointFileIsDataLoss).
  ASSERT_TRUE(store_->ApplyCheckpoint("d", initial).ok());
  ASSERT_TRUE(store_->CommitCheckpoint("d").ok());
  for (const auto& f : std::filesystem::directory_iterator(path_ + "-checkpoints/d")) {
    if (f.path().string().ends_with(".ckpt")) {
      std::filesystem::resize_file(f.path(), std::filesystem::file_size(f.path()) - 40);
    }
  }
  auto damaged = store_->ScanCheckpoint("d");
  ASSERT_TRUE(damaged.ok()) << damaged.status();
  prefetched = PrefetchCheckpointScanner(*std::move(damaged));
  absl::Status status;
  while (status.ok()) {
    auto more = prefetched->NextView(view);
    if (!more.ok())
      status = more.status();
    else if (!*more)
      break;
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
}

TEST_F(SqliteStateStoreTest, DamagedCheckpointFileIsDataLoss) {
  auto fp = Fingerprint128("x");
  std::vector<CheckpointUpdate> initial;
  for (int i = 0; i < 3000; ++i) {
    initial.push_back({.key = fmt::format("k{:04}", i), .fingerprint = fp});
  }
  ASSERT_TRUE(store_->ApplyCheckpoint("m", initial).ok());
  ASSERT_TRUE(store_->CommitCheckpoint("m").ok());
  EXPECT_EQ(Scan("m").size(), 3000u);
  // Damage behind the store's back.
  std::string base;
  for (const auto& f : std::filesystem::directory_iterator(path_ + "-checkpoints/m")) {
    base = f.path().string();
  }
  ASSERT_TRUE(base.ends_with(".ckpt")) << base;
  std::filesystem::resize_file(base, std::filesystem::file_size(base) - 40);
  auto scanner = store_->ScanCheckpoint("m");
  ASSERT_TRUE(scanner.ok());
  CheckpointEntry e;
  absl::Status status;
  while (status.ok()) {
    auto more = (*scanner)->Next(e);
    if (!more.ok())
      status = more.status();
    else if (!*more)
      break;
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(status.message().find("backflow checkpoint reset m"), absl::string_view::npos)
      << status;
  ASSERT_TRUE(store_->ResetCheckpoint("m").ok());
  EXPECT_TRUE(Scan("m").empty());
}

// UseApiToken notes the last use (a write) at most once a minute. That write
// must wait for another connection's write transaction (the busy timeout)
// instead of failing with "database is locked", which is what happens when it
// is attempted while the token's SELECT still holds a read snapshot: SQLite
// does not wait on a lock upgrade. Under load every API thread does this
// write at the same minute boundary while a worker writes run progress.
TEST_F(SqliteStateStoreTest, TokenUseWaitsForAnotherWriterInsteadOfFailing) {
  ApiToken t{"bench", std::string(64, 'c'), false, "2026-01-01T00:00:00.000Z", ""};
  ASSERT_TRUE(store_->CreateApiToken(t).ok());
  auto writer = sqlite::Database::Open(path_, SQLITE_OPEN_READWRITE);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Exec("BEGIN IMMEDIATE").ok());
  ASSERT_TRUE((*writer)->Exec("UPDATE api_tokens SET created_at = created_at").ok());

  auto use = std::async(std::launch::async, [&] {
    return store_->UseApiToken(t.token_hash, absl::FromUnixSeconds(1'800'000'000));
  });
  // The lock is held until COMMIT below: the lookup must be waiting for it,
  // not have failed at once.
  EXPECT_EQ(use.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  ASSERT_TRUE((*writer)->Exec("COMMIT").ok());
  auto found = use.get();
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->name, "bench");
  EXPECT_FALSE((*store_->ListApiTokens())[0].last_used_at.empty());
}

}  // namespace
}  // namespace backflow

namespace backflow::testing {
namespace {

// Opens the running test's store in the test's scratch folder: opening the
// next test's store replaces (removes, unless that test failed) the previous
// folder; the last goes at exit. Called on the test thread only.
absl::StatusOr<std::unique_ptr<StateStore>> OpenContractStore(const std::string& /*test*/,
                                                              bool reopen) {
  static std::unique_ptr<ScratchDir> scratch;
  if (!reopen) {
    scratch.reset();
    scratch = std::make_unique<ScratchDir>("state-contract");
  }
  if (scratch == nullptr) return absl::FailedPreconditionError("reopen of a store never opened");
  return OpenSqliteStateStore((scratch->path() / "state.db").string());
}

INSTANTIATE_TEST_SUITE_P(Sqlite, StateStoreContractTest,
                         ::testing::Values(StateStoreFactory{"sqlite", OpenContractStore}),
                         [](const ::testing::TestParamInfo<StateStoreFactory>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace backflow::testing
