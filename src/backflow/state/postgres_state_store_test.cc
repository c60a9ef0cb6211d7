#include "backflow/state/postgres_state_store.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "backflow/pg/connection.h"
#include "backflow/pg/testing/test_server.h"
#include "backflow/state/open_state_store.h"
#include "backflow/state/state_store.h"
#include "backflow/state/state_store_contract.h"
#include "backflow/state/state_store_testing.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using pg::testing::TestServer;

// The url of database `db` on the test server as `backflow`, with the
// password embedded (as a workspace's `state:` would hold it).
std::string UrlOf(const TestServer& server, const std::string& db) {
  return fmt::format("postgresql://backflow:{}@127.0.0.1:{}/{}", server.password, server.port, db);
}

absl::StatusOr<std::unique_ptr<pg::Connection>> Admin(const TestServer& server) {
  return pg::Connection::Open(
      {server.admin_url, server.admin_password, 10, {{"client_min_messages", "warning"}}});
}

// Creates an empty database owned by `backflow` (replacing one of that name).
absl::Status CreateDatabase(const TestServer& server, const std::string& db,
                            const std::string& owner = "backflow") {
  auto admin = Admin(server);
  if (!admin.ok()) return admin.status();
  auto dropped = (*admin)->Exec(
      fmt::format("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg::QuoteIdentifier(db)));
  if (!dropped.ok()) return dropped.status();
  return (*admin)
      ->Exec(fmt::format("CREATE DATABASE {} OWNER {}", pg::QuoteIdentifier(db), owner))
      .status();
}

void DropDatabase(const TestServer& server, const std::string& db) {
  auto admin = Admin(server);
  if (admin.ok()) {
    (void)(*admin)->Exec(
        fmt::format("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg::QuoteIdentifier(db)));
  }
}

class PostgresStateStoreTest : public pg::testing::PostgresTest {
 protected:
  void SetUp() override {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    db_ = pg::testing::UniqueName("bf_state");
    ASSERT_TRUE(CreateDatabase(server(), db_).ok());
    url_ = UrlOf(server(), db_);
    store_ = Open();
    ASSERT_NE(store_, nullptr);
  }

  void TearDown() override {
    store_.reset();
    if (!db_.empty()) DropDatabase(server(), db_);
  }

  std::unique_ptr<StateStore> Open(const PostgresStateStoreOptions& options = {}) {
    auto store = OpenPostgresStateStore(url_, options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  // Runs `sql` on the test database as `backflow`, behind the store's back.
  void Sql(const std::string& sql) {
    auto conn = pg::Connection::Open({url_, "", 10, {}});
    ASSERT_TRUE(conn.ok()) << conn.status();
    auto result = (*conn)->Exec(sql);
    ASSERT_TRUE(result.ok()) << result.status() << "\nSQL: " << sql;
  }
  std::string SqlValue(const std::string& sql) {
    auto conn = pg::Connection::Open({url_, "", 10, {}});
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return "";
    auto result = (*conn)->Exec(sql);
    EXPECT_TRUE(result.ok()) << result.status() << "\nSQL: " << sql;
    if (!result.ok() || PQntuples(result->get()) == 0) return "";
    return PQgetvalue(result->get(), 0, 0);
  }

  static std::vector<CheckpointEntry> Drain(absl::StatusOr<std::unique_ptr<CheckpointScanner>> s) {
    EXPECT_TRUE(s.ok()) << s.status();
    std::vector<CheckpointEntry> out;
    if (!s.ok()) return out;
    CheckpointEntry e;
    while (true) {
      auto more = (*s)->Next(e);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      out.push_back(e);
    }
    return out;
  }
  std::vector<CheckpointEntry> Scan(const std::string& mapping) {
    return Drain(store_->ScanCheckpoint(mapping));
  }
  std::vector<CheckpointEntry> ScanInFlight(const std::string& mapping) {
    return Drain(store_->ScanInFlight(mapping));
  }
  absl::Status ScanStatus(const std::string& mapping) {
    auto scanner = store_->ScanCheckpoint(mapping);
    if (!scanner.ok()) return scanner.status();
    CheckpointEntry e;
    while (true) {
      auto more = (*scanner)->Next(e);
      if (!more.ok()) return more.status();
      if (!*more) return absl::OkStatus();
    }
  }
  static std::vector<std::string> Keys(const std::vector<CheckpointEntry>& entries) {
    std::vector<std::string> keys;
    for (const CheckpointEntry& e : entries) keys.push_back(e.key);
    return keys;
  }

  std::string db_;
  std::string url_;
  std::unique_ptr<StateStore> store_;
};

CheckpointUpdate Upsert(std::string key, const std::string& payload, std::string identity = "") {
  return {.key = std::move(key),
          .fingerprint = Fingerprint128(payload),
          .identity = std::move(identity)};
}
CheckpointUpdate Remove(std::string key) {
  return {.key = std::move(key), .kind = CheckpointUpdate::Kind::kRemove};
}
CheckpointUpdate Settle(std::string key) {
  return {.key = std::move(key), .kind = CheckpointUpdate::Kind::kSettle};
}

TEST_F(PostgresStateStoreTest, RunsRoundTripNewestFirst) {
  RunInfo run;
  run.mapping = "m";
  run.model = "customers";
  run.destination = "hook";
  run.started_at = "2026-01-01T00:00:00.000Z";
  run.pid = getpid();
  auto id1 = store_->CreateRun(run);
  auto id2 = store_->CreateRun(run);
  ASSERT_TRUE(id1.ok() && id2.ok()) << id1.status() << id2.status();
  EXPECT_GT(*id2, *id1);
  run.id = *id2;
  run.status = RunStatus::kPartial;
  run.counts = {.extracted = 10, .added = 3, .skipped = 1, .failed = 2, .rejected = 4};
  // Destination text cut inside a UTF-8 character, with a NUL: stored as valid text.
  run.error = std::string("bad \xC3", 5) + std::string("\0x", 2);
  run.finished_at = "2026-01-01T00:00:05.000Z";
  run.duration_s = 5.25;
  run.extract_s = 0.125;
  ASSERT_TRUE(store_->UpdateRun(run).ok());
  auto got = store_->GetRun(*id2);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status, RunStatus::kPartial);
  EXPECT_EQ(got->counts.failed, 2);
  EXPECT_EQ(got->counts.rejected, 4);
  EXPECT_EQ(got->counts.skipped, 1);
  EXPECT_EQ(got->error, "bad \xEF\xBF\xBD\xEF\xBF\xBDx");
  EXPECT_EQ(got->finished_at, "2026-01-01T00:00:05.000Z");
  EXPECT_DOUBLE_EQ(got->duration_s, 5.25);
  EXPECT_DOUBLE_EQ(got->extract_s, 0.125);
  EXPECT_EQ(got->pid, getpid());
  EXPECT_EQ(got->trigger, "cli");
  EXPECT_EQ(store_->GetRun(*id1)->finished_at, "");
  auto runs = store_->ListRuns("m", 10);
  ASSERT_TRUE(runs.ok()) << runs.status();
  ASSERT_EQ(runs->size(), 2u);
  EXPECT_EQ((*runs)[0].id, *id2);
  EXPECT_TRUE(store_->ListRuns("other", 10)->empty());
  EXPECT_EQ(store_->GetRun(999).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(PostgresStateStoreTest, RunRecordsKeepOrderAndFilterByOutcome) {
  RunInfo run;
  run.mapping = "m";
  auto id = store_->CreateRun(run);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(store_
                  ->AddRunRecords(*id, {{.key = "1", .outcome = "failed", .error = "a"},
                                        {.key = "2", .outcome = "rejected", .error = "b"}})
                  .ok());
  ASSERT_TRUE(store_
                  ->AddRunRecords(*id, {{.key = "3",
                                         .outcome = "failed",
                                         .change = "updated",
                                         .error = "c",
                                         .error_class = "permanent",
                                         .payload = "{\"email\":\"a@b\"}",
                                         .recommended_action = "fix it"}})
                  .ok());
  auto all = store_->GetRunRecords(*id, "", 10);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].key, "1");
  EXPECT_EQ((*all)[2].key, "3");
  EXPECT_EQ((*all)[2].payload, "{\"email\":\"a@b\"}");
  EXPECT_EQ((*all)[2].recommended_action, "fix it");
  auto failed = store_->GetRunRecords(*id, "failed", 10);
  ASSERT_EQ(failed->size(), 2u);
  EXPECT_EQ((*failed)[1].error, "c");
  EXPECT_EQ(store_->GetRunRecords(*id, "", 1)->size(), 1u);
  EXPECT_EQ(store_->GetRunRecords(*id, "", -1)->size(), 3u);  // no limit
}

TEST_F(PostgresStateStoreTest, ManyRunRecordsAreWrittenInBatches) {
  store_ = Open({.write_batch_rows = 7});
  RunInfo run;
  run.mapping = "m";
  auto id = store_->CreateRun(run);
  ASSERT_TRUE(id.ok());
  std::vector<RunRecord> records;
  for (int i = 0; i < 50; ++i) {
    records.push_back({.key = std::to_string(i), .outcome = "failed", .error = "e"});
  }
  ASSERT_TRUE(store_->AddRunRecords(*id, records).ok());
  auto all = store_->GetRunRecords(*id, "", 100);
  ASSERT_EQ(all->size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ((*all)[i].key, std::to_string(i));
}

TEST_F(PostgresStateStoreTest, OnlyThisHostsRunsOfDeadProcessesAreMarkedInterrupted) {
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
  auto elsewhere_id = store_->CreateRun(dead);
  ASSERT_TRUE(dead_id.ok() && alive_id.ok() && elsewhere_id.ok());
  // The same dead pid, but recorded by another machine: it cannot be judged here.
  Sql(fmt::format("UPDATE backflow.runs SET host = 'another-host' WHERE id = {}", *elsewhere_id));
  // A run under a lease is left to ClaimRuns, whatever its pid.
  auto queued = testing::QueueRuns(*store_, {{.mapping = "q"}});
  ASSERT_TRUE(queued.ok());
  ASSERT_EQ(store_->ClaimRuns("w", absl::Now(), absl::Seconds(30))->size(), 1u);
  Sql(fmt::format("UPDATE backflow.runs SET pid = {} WHERE id = {}", child, (*queued)[0]));

  auto marked = store_->MarkInterruptedRuns();
  ASSERT_TRUE(marked.ok()) << marked.status();
  EXPECT_EQ(*marked, 1);
  EXPECT_EQ(store_->GetRun(*dead_id)->status, RunStatus::kInterrupted);
  EXPECT_NE(store_->GetRun(*dead_id)->error, "");
  EXPECT_EQ(store_->GetRun(*alive_id)->status, RunStatus::kRunning);
  EXPECT_EQ(store_->GetRun(*elsewhere_id)->status, RunStatus::kRunning);
  EXPECT_EQ(store_->GetRun((*queued)[0])->status, RunStatus::kRunning);
  EXPECT_EQ(*store_->MarkInterruptedRuns(), 0);
}

TEST_F(PostgresStateStoreTest, CheckpointScansInKeyOrderAndAppliesAtomically) {
  ASSERT_TRUE(store_
                  ->ApplyCheckpoint(
                      "m", {Upsert("b", "b", "ib"), Upsert("a", "a", "ia"), Upsert("c", "c", "ic")})
                  .ok());
  ASSERT_TRUE(store_->ApplyCheckpoint("other", {Upsert("z", "z")}).ok());
  std::vector<CheckpointEntry> entries = Scan("m");
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0].key, "a");
  EXPECT_EQ(entries[0].fingerprint, Fingerprint128("a"));
  EXPECT_EQ(entries[0].identity, "ia");
  EXPECT_EQ(entries[2].key, "c");

  ASSERT_TRUE(store_->ApplyCheckpoint("m", {Remove("a"), Upsert("b", "b2", "x")}).ok());
  entries = Scan("m");
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].key, "b");
  EXPECT_EQ(entries[0].fingerprint, Fingerprint128("b2"));
  EXPECT_EQ(entries[0].identity, "x");
  EXPECT_EQ(*store_->CheckpointSize("m"), 2);
  EXPECT_EQ(*store_->CheckpointSize("other"), 1);
  EXPECT_TRUE(Scan("never-ran").empty());
  // Removing what is not there is not damage.
  ASSERT_TRUE(store_->ApplyCheckpoint("m", {Remove("nope")}).ok());
  EXPECT_EQ(Scan("m").size(), 2u);
}

TEST_F(PostgresStateStoreTest, KeysAreScannedInByteOrderWhateverTheirBytes) {
  // Bytes >= 0x80 (UTF-8 and not), NUL, an empty key and prefixes.
  std::vector<std::string> keys = {"b",
                                   "a",
                                   "\xC3\xA9t\xC3\xA9",  // "été"
                                   "\x80",
                                   "\xFF\xFE",
                                   "\xFF",
                                   std::string("a\0b", 3),
                                   std::string("\0", 1),
                                   "",
                                   "ab",
                                   "Z",
                                   "\x7F",
                                   "\xC3("};  // invalid UTF-8
  std::vector<CheckpointUpdate> updates;
  for (const std::string& k : keys) updates.push_back(Upsert(k, "p" + k, "id" + k));
  ASSERT_TRUE(store_->ApplyCheckpoint("m", updates).ok());
  std::vector<std::string> expected = keys;
  std::sort(expected.begin(), expected.end());  // std::string compares bytes as unsigned
  std::vector<CheckpointEntry> entries = Scan("m");
  EXPECT_EQ(Keys(entries), expected);
  for (const CheckpointEntry& e : entries) {
    EXPECT_EQ(e.fingerprint, Fingerprint128("p" + e.key));
    EXPECT_EQ(e.identity, "id" + e.key);
  }
  // The same keys in flight come back in the same order.
  std::vector<InFlightEntry> in_flight;
  for (const std::string& k : keys) in_flight.push_back({k, "i" + k});
  ASSERT_TRUE(store_->MarkInFlight("m", in_flight).ok());
  EXPECT_EQ(Keys(ScanInFlight("m")), expected);
}

TEST_F(PostgresStateStoreTest, RepeatedKeysInOneUpdateEndAsTheLastChangeSaysAndStayConsistent) {
  ASSERT_TRUE(store_->ApplyCheckpoint("m", {Upsert("gone", "g"), Upsert("kept", "k0")}).ok());
  ASSERT_TRUE(store_->MarkInFlight("m", {{"kept", ""}, {"gone", ""}, {"new", ""}}).ok());
  ASSERT_TRUE(store_
                  ->ApplyCheckpoint(
                      "m", {Upsert("new", "n1"), Upsert("new", "n2", "id2"), Upsert("kept", "k1"),
                            Settle("kept"), Remove("gone"), Upsert("gone", "g2"), Remove("gone")})
                  .ok());
  std::vector<CheckpointEntry> entries = Scan("m");  // also verifies the summary
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].key, "kept");
  EXPECT_EQ(entries[0].fingerprint, Fingerprint128("k1"));
  EXPECT_EQ(entries[1].key, "new");
  EXPECT_EQ(entries[1].fingerprint, Fingerprint128("n2"));
  EXPECT_EQ(entries[1].identity, "id2");
  EXPECT_TRUE(ScanInFlight("m").empty());
}

TEST_F(PostgresStateStoreTest, ScannerSeesASnapshotWhileCommitsHappen) {
  // A small fetch size: most of the scan is fetched after the commit.
  store_ = Open({.scan_fetch_rows = 7});
  std::vector<CheckpointUpdate> initial;
  for (int i = 0; i < 100; ++i) initial.push_back(Upsert(fmt::format("k{:03}", i), "x"));
  ASSERT_TRUE(store_->ApplyCheckpoint("m", initial).ok());
  auto scanner = store_->ScanCheckpoint("m");
  ASSERT_TRUE(scanner.ok()) << scanner.status();
  CheckpointEntry e;
  ASSERT_TRUE(*(*scanner)->Next(e));
  // Commit while the scan is open, from this handle and from another one (as
  // another process would): neither blocks nor changes what the scan sees.
  ASSERT_TRUE(store_->ApplyCheckpoint("m", {Remove("k050"), Upsert("k100", "x")}).ok());
  auto other = Open();
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->ApplyCheckpoint("m", {Remove("k099"), Upsert("k001", "changed")}).ok());
  std::vector<std::string> seen = {e.key};
  while (true) {
    auto more = (*scanner)->Next(e);
    ASSERT_TRUE(more.ok()) << more.status();  // the snapshot's summary matches
    if (!*more) break;
    seen.push_back(e.key);
    if (e.key == "k001") {
      EXPECT_EQ(e.fingerprint, Fingerprint128("x"));
    }
  }
  ASSERT_EQ(seen.size(), 100u);
  EXPECT_EQ(seen[50], "k050");
  EXPECT_EQ(seen.back(), "k099");
  EXPECT_GE(GetPostgresScanStats(**scanner)->fetches, 100 / 7);
  scanner->reset();
  EXPECT_EQ(*store_->CheckpointSize("m"), 99);
  EXPECT_EQ(Scan("m").size(), 99u);
}

TEST_F(PostgresStateStoreTest, AFailedApplyChangesNothing) {
  store_ = Open({.write_batch_rows = 2});
  ASSERT_TRUE(store_->ApplyCheckpoint("m", {Upsert("a", "a"), Upsert("b", "b")}).ok());
  ASSERT_TRUE(store_->MarkInFlight("m", {{"a", ""}, {"c", ""}}).ok());
  // The server refuses the third chunk's key, after two chunks were written.
  Sql(R"sql(
CREATE FUNCTION public.refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.record_key = 'boom'::bytea THEN RAISE EXCEPTION 'refused'; END IF;
  RETURN NEW;
END $$
)sql");
  Sql(R"sql(
CREATE TRIGGER refuse_boom BEFORE INSERT ON backflow.checkpoints
  FOR EACH ROW EXECUTE FUNCTION public.refuse_boom();
)sql");
  absl::Status failed = store_->ApplyCheckpoint(
      "m",
      {Remove("a"), Upsert("c", "c"), Upsert("d", "d"), Upsert("e", "e"), Upsert("boom", "x")});
  EXPECT_FALSE(failed.ok());
  EXPECT_NE(failed.message().find("refused"), absl::string_view::npos) << failed;
  EXPECT_EQ(Keys(Scan("m")), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(Keys(ScanInFlight("m")), (std::vector<std::string>{"a", "c"}));
  // The store goes on working after the failure.
  Sql("DROP TRIGGER refuse_boom ON backflow.checkpoints");
  ASSERT_TRUE(store_->ApplyCheckpoint("m", {Remove("a"), Upsert("c", "c")}).ok());
  EXPECT_EQ(Keys(Scan("m")), (std::vector<std::string>{"b", "c"}));
  EXPECT_TRUE(ScanInFlight("m").empty());
}

TEST_F(PostgresStateStoreTest, DamagedCheckpointIsDetectedAtTheEndOfTheScan) {
  std::vector<CheckpointUpdate> initial;
  for (int i = 0; i < 50; ++i) initial.push_back(Upsert(fmt::format("k{:02}", i), "x"));
  ASSERT_TRUE(store_->ApplyCheckpoint("m", initial).ok());
  ASSERT_TRUE(store_->ApplyCheckpoint("m", {Remove("k03"), Upsert("k04", "y")}).ok());
  EXPECT_EQ(Scan("m").size(), 49u);  // consistent: no error

  // Damage behind the store's back: a lost row.
  Sql("DELETE FROM backflow.checkpoints WHERE record_key = 'k10'::bytea");
  absl::Status status = ScanStatus("m");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_NE(status.message().find("read 48 of its 49 records"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("backflow checkpoint reset m"), absl::string_view::npos);

  ASSERT_TRUE(store_->ResetCheckpoint("m").ok());
  ASSERT_TRUE(store_->ApplyCheckpoint("m", initial).ok());
  EXPECT_TRUE(ScanStatus("m").ok());
  // A changed fingerprint.
  Sql("UPDATE backflow.checkpoints SET fingerprint = '\\x00000000000000000000000000000000' "
      "WHERE record_key = 'k20'::bytea");
  EXPECT_EQ(ScanStatus("m").code(), absl::StatusCode::kDataLoss);
  // A changed identity, then an invented row.
  ASSERT_TRUE(store_->ResetCheckpoint("m").ok());
  ASSERT_TRUE(store_->ApplyCheckpoint("m", initial).ok());
  Sql("UPDATE backflow.checkpoints SET identity = 'x'::bytea WHERE record_key = 'k30'::bytea");
  EXPECT_EQ(ScanStatus("m").code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE(store_->ResetCheckpoint("m").ok());
  ASSERT_TRUE(store_->ApplyCheckpoint("m", initial).ok());
  Sql("INSERT INTO backflow.checkpoints VALUES ('m', 'zz'::bytea, "
      "'\\x00000000000000000000000000000000', ''::bytea)");
  EXPECT_EQ(ScanStatus("m").code(), absl::StatusCode::kDataLoss);
}

TEST_F(PostgresStateStoreTest, InFlightRecordsAreJournaledAndSettled) {
  ASSERT_TRUE(store_->MarkInFlight("m", {{"b", "ib"}, {"a", "ia"}, {"b", "ib2"}}).ok());
  ASSERT_TRUE(store_->MarkInFlight("other", {{"z", ""}}).ok());
  auto in_flight = ScanInFlight("m");
  ASSERT_EQ(in_flight.size(), 2u);
  EXPECT_EQ(in_flight[0].key, "a");
  EXPECT_EQ(in_flight[0].identity, "ia");
  EXPECT_EQ(in_flight[1].identity, "ib2");  // the last mark wins
  EXPECT_EQ(in_flight[0].fingerprint, Fingerprint{});
  // Settled by an acknowledgement or a settle; the checkpoint is untouched by a settle.
  ASSERT_TRUE(store_->ApplyCheckpoint("m", {Upsert("a", "a"), Settle("b")}).ok());
  EXPECT_TRUE(ScanInFlight("m").empty());
  EXPECT_EQ(Keys(Scan("m")), (std::vector<std::string>{"a"}));
  EXPECT_EQ(ScanInFlight("other").size(), 1u);
  // Many records in one call go in batches, all or nothing.
  store_ = Open({.write_batch_rows = 3});
  std::vector<InFlightEntry> many;
  for (int i = 0; i < 20; ++i) many.push_back({fmt::format("k{:02}", i), "i"});
  ASSERT_TRUE(store_->MarkInFlight("m", many).ok());
  EXPECT_EQ(ScanInFlight("m").size(), 20u);
  // A reset forgets checkpoint and journal.
  ASSERT_TRUE(store_->ResetCheckpoint("m").ok());
  EXPECT_TRUE(ScanInFlight("m").empty());
  EXPECT_TRUE(Scan("m").empty());
  EXPECT_EQ(*store_->CheckpointSize("m"), 0);
  EXPECT_EQ(ScanInFlight("other").size(), 1u);
}

TEST_F(PostgresStateStoreTest, ScheduleStateRoundTrip) {
  auto none = store_->GetScheduleState("customers");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  ASSERT_TRUE(store_->SetScheduleState("customers", {1'800'000'000, 2, 3}).ok());
  ASSERT_TRUE(store_->SetScheduleState("customers", {1'800'003'600, 4, 5}).ok());
  ASSERT_TRUE(store_->SetScheduleState("orders", {7, 0, 0}).ok());
  auto got = store_->GetScheduleState("customers");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->last_tick, 1'800'003'600);
  EXPECT_EQ((*got)->skipped_ticks, 4);
  EXPECT_EQ((*got)->missed_ticks, 5);
  EXPECT_EQ((*store_->GetScheduleState("orders"))->last_tick, 7);
}

TEST_F(PostgresStateStoreTest, ReopeningKeepsDataAndSchemaAndConcurrentOpensMigrateOnce) {
  RunInfo run;
  run.mapping = "m";
  ASSERT_TRUE(store_->CreateRun(run).ok());
  store_.reset();
  store_ = Open();
  ASSERT_NE(store_, nullptr);
  EXPECT_EQ(store_->ListRuns("", 10)->size(), 1u);
  EXPECT_EQ(SqlValue("SELECT count(*) FROM backflow.schema_migrations"), "1");

  // Several processes starting at once on an empty database.
  std::string fresh = pg::testing::UniqueName("bf_state_race");
  ASSERT_TRUE(CreateDatabase(server(), fresh).ok());
  std::vector<absl::Status> results(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = OpenStateStore(UrlOf(server(), fresh)).status(); });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
  auto conn = pg::Connection::Open({UrlOf(server(), fresh), "", 10, {}});
  ASSERT_TRUE(conn.ok());
  auto count = (*conn)->Exec("SELECT count(*) FROM backflow.schema_migrations");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_STREQ(PQgetvalue(count->get(), 0, 0), "1");
  conn->reset();
  DropDatabase(server(), fresh);
}

TEST_F(PostgresStateStoreTest, NewerSchemaIsRefused) {
  Sql("INSERT INTO backflow.schema_migrations VALUES (99, 'later')");
  auto store = OpenPostgresStateStore(url_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("upgrade backflow"), absl::string_view::npos);
}

TEST_F(PostgresStateStoreTest, AUserWithoutCreateUsesASchemaPreparedForIt) {
  std::string locked = pg::testing::UniqueName("bf_state_locked");
  ASSERT_TRUE(CreateDatabase(server(), locked, "postgres").ok());
  auto admin = pg::Connection::Open(
      {server().admin_url.substr(0, server().admin_url.rfind('/') + 1) + locked,
       server().admin_password,
       10,
       {}});
  ASSERT_TRUE(admin.ok()) << admin.status();
  ASSERT_TRUE((*admin)->Exec("REVOKE CREATE ON DATABASE " + locked + " FROM PUBLIC").ok());
  auto refused = OpenPostgresStateStore(UrlOf(server(), locked));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
  EXPECT_NE(refused.status().message().find("create the schema backflow"), absl::string_view::npos)
      << refused.status();
  EXPECT_EQ(refused.status().message().find(server().password), absl::string_view::npos);
  ASSERT_TRUE((*admin)->Exec("CREATE SCHEMA backflow AUTHORIZATION backflow").ok());
  auto opened = OpenPostgresStateStore(UrlOf(server(), locked));
  EXPECT_TRUE(opened.ok()) << opened.status();
  opened = absl::UnknownError("closed");
  admin->reset();
  DropDatabase(server(), locked);
}

TEST_F(PostgresStateStoreTest, WrongPasswordIsUnauthenticatedAndNeverEchoed) {
  std::string url =
      fmt::format("postgresql://backflow:Wr0ngPassw0rd@127.0.0.1:{}/{}", server().port, db_);
  auto store = OpenStateStore(url);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnauthenticated) << store.status();
  EXPECT_EQ(store.status().message().find("Wr0ngPassw0rd"), absl::string_view::npos)
      << store.status();
  // Through OpenStateStore with the short scheme too.
  auto ok = OpenStateStore("postgres" + url_.substr(strlen("postgresql")));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST_F(PostgresStateStoreTest, ALostConnectionIsReplacedOnTheNextCall) {
  ASSERT_TRUE(testing::QueueRuns(*store_, {{.mapping = "a"}}).ok());
  auto admin = Admin(server());
  ASSERT_TRUE(admin.ok());
  auto killed = (*admin)->Exec(fmt::format(
      "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}' AND "
      "pid <> pg_backend_pid()",
      db_));
  ASSERT_TRUE(killed.ok()) << killed.status();
  EXPECT_STRNE(PQgetvalue(killed->get(), 0, 0), "0");
  // The call that finds the connection gone fails as retryable; the next works.
  auto first = store_->CountRuns(RunStatus::kQueued);
  if (!first.ok()) {
    EXPECT_EQ(first.status().code(), absl::StatusCode::kUnavailable) << first.status();
    first = store_->CountRuns(RunStatus::kQueued);
  }
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, 1);
}

TEST_F(PostgresStateStoreTest, AMappingIsLockedByOneHandleAndTheBusyErrorNamesTheHolder) {
  auto other = Open();
  ASSERT_NE(other, nullptr);
  auto held = store_->LockMapping("to_hook");
  ASSERT_TRUE(held.ok()) << held.status();
  auto busy = other->LockMapping("to_hook");
  ASSERT_FALSE(busy.ok());
  EXPECT_TRUE(IsMappingBusy(busy.status())) << busy.status();
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(busy.status().message());
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  EXPECT_NE(message.find("\"to_hook\""), std::string::npos) << message;
  EXPECT_NE(message.find(fmt::format("backflow {} pid {}", host, getpid())), std::string::npos)
      << message;
  EXPECT_NE(message.find("from 127.0.0.1"), std::string::npos) << message;
  EXPECT_NE(message.find("connected since"), std::string::npos) << message;
  EXPECT_EQ(message.find(server().password), std::string::npos);
  // Another mapping is not affected.
  auto unrelated = other->LockMapping("to_crm");
  EXPECT_TRUE(unrelated.ok()) << unrelated.status();
  // Released with its handle, which may outlive its store.
  store_.reset();
  EXPECT_FALSE(other->LockMapping("to_hook").ok());
  held->reset();
  auto now_free = other->LockMapping("to_hook");
  EXPECT_TRUE(now_free.ok()) << now_free.status();
}

TEST_F(PostgresStateStoreTest, AMappingLockIsReleasedWhenItsProcessIsKilled) {
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t child = fork();
  if (child == 0) {
    close(ready[0]);
    auto store = OpenPostgresStateStore(url_);
    if (!store.ok()) _exit(2);
    auto held = (*store)->LockMapping("to_hook");
    if (!held.ok()) _exit(3);
    char byte = 1;
    if (write(ready[1], &byte, 1) != 1) _exit(4);
    while (true) pause();  // holds the lock until killed
  }
  close(ready[1]);
  char byte = 0;
  ASSERT_EQ(read(ready[0], &byte, 1), 1) << "the child could not take the lock";
  close(ready[0]);
  auto busy = store_->LockMapping("to_hook");
  EXPECT_TRUE(IsMappingBusy(busy.status())) << busy.status();
  EXPECT_NE(std::string(busy.status().message()).find(fmt::format("pid {}", child)),
            std::string::npos)
      << busy.status();
  ASSERT_EQ(kill(child, SIGKILL), 0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);
  // The server sees the socket close and ends the session, releasing its locks.
  absl::StatusOr<std::unique_ptr<MappingLockHandle>> taken = absl::UnknownError("not tried");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    taken = store_->LockMapping("to_hook");
    if (taken.ok() || !IsMappingBusy(taken.status())) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(taken.ok()) << taken.status();
}

TEST_F(PostgresStateStoreTest, ConcurrentClaimersNeverTakeTheSameRequest) {
  // Requests of one and of two runs (a model's mappings run together).
  std::map<int64_t, int64_t> request_of;  // run id -> request id
  for (int i = 0; i < 150; ++i) {
    std::vector<RunInfo> runs = {{.mapping = fmt::format("a{}", i)}};
    if (i % 3 == 0) runs.push_back({.mapping = fmt::format("b{}", i)});
    auto ids = testing::QueueRuns(*store_, runs);
    ASSERT_TRUE(ids.ok()) << ids.status();
    for (int64_t id : *ids) request_of[id] = (*ids)[0];
  }
  const absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  std::vector<std::vector<RunInfo>> claimed(2);
  std::vector<absl::Status> errors(2);
  std::atomic<bool> go{false};
  auto worker = [&](int w) {
    auto store = Open();  // a separate handle, as another process would have
    if (store == nullptr) return;
    while (!go.load()) std::this_thread::yield();
    while (true) {
      auto got = store->ClaimRuns(fmt::format("w{}", w), now, absl::Seconds(60));
      if (!got.ok()) {
        errors[w] = got.status();
        return;
      }
      if (got->empty()) return;
      for (RunInfo& r : *got) claimed[w].push_back(std::move(r));
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  go = true;
  t0.join();
  t1.join();
  ASSERT_TRUE(errors[0].ok()) << errors[0];
  ASSERT_TRUE(errors[1].ok()) << errors[1];

  std::map<int64_t, std::string> owner;  // run id -> worker
  std::map<int64_t, std::set<std::string>> request_owners;
  for (int w = 0; w < 2; ++w) {
    for (const RunInfo& r : claimed[w]) {
      EXPECT_TRUE(owner.emplace(r.id, r.worker).second) << "run " << r.id << " claimed twice";
      EXPECT_EQ(r.worker, fmt::format("w{}", w));
      EXPECT_EQ(r.status, RunStatus::kRunning);
      request_owners[r.request_id].insert(r.worker);
    }
  }
  EXPECT_EQ(owner.size(), request_of.size());
  for (const auto& [request, owners] : request_owners) {
    EXPECT_EQ(owners.size(), 1u) << "request " << request << " split between workers";
  }
  EXPECT_EQ(*store_->CountRuns(RunStatus::kQueued), 0);
  EXPECT_EQ(*store_->CountRuns(RunStatus::kRunning), static_cast<int64_t>(request_of.size()));
  std::printf("[ claims   ] w0 took %zu runs, w1 took %zu runs\n", claimed[0].size(),
              claimed[1].size());

  // At the same time the leases all hold: nothing is left to claim.
  claimed = {{}, {}};
  std::thread t2(worker, 0), t3(worker, 1);
  t2.join();
  t3.join();
  EXPECT_EQ(claimed[0].size() + claimed[1].size(), 0u);  // leases still valid at `now`
}

TEST_F(PostgresStateStoreTest, ExpiredLeasesAreTakenOverOnceUnderConcurrency) {
  for (int i = 0; i < 60; ++i) {
    ASSERT_TRUE(testing::QueueRuns(*store_, {{.mapping = fmt::format("m{}", i)}}).ok());
  }
  const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
  while (!store_->ClaimRuns("dead", t0, absl::Seconds(10))->empty()) {
  }
  std::vector<std::set<int64_t>> taken(2);
  auto worker = [&](int w) {
    auto store = Open();
    if (store == nullptr) return;
    while (true) {
      auto got = store->ClaimRuns(fmt::format("w{}", w), t0 + absl::Seconds(11), absl::Seconds(60));
      if (!got.ok() || got->empty()) return;
      for (const RunInfo& r : *got) taken[w].insert(r.id);
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  EXPECT_EQ(taken[0].size() + taken[1].size(), 60u);
  for (int64_t id : taken[0]) EXPECT_EQ(taken[1].count(id), 0u);
  auto lost =
      store_->RenewLeases("dead", {*taken[0].begin()}, t0 + absl::Seconds(12), absl::Seconds(10));
  ASSERT_TRUE(lost.ok());
  EXPECT_EQ(lost->lost.size(), 1u);
}

TEST_F(PostgresStateStoreTest, RenewalsRacingATakeOverAgreeWithItAndNeverDeadlock) {
  std::vector<int64_t> ids;
  for (int i = 0; i < 40; ++i) {
    auto got = testing::QueueRuns(*store_, {{.mapping = fmt::format("a{}", i)},
                                            {.mapping = fmt::format("b{}", i)},
                                            {.mapping = fmt::format("c{}", i)}});
    ASSERT_TRUE(got.ok());
    ids.insert(ids.end(), got->begin(), got->end());
  }
  const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
  while (!store_->ClaimRuns("old", t0, absl::Seconds(10))->empty()) {
  }
  // "old" renews late (its leases ended) while "new" takes its runs over.
  const absl::Time late = t0 + absl::Seconds(11);
  std::vector<absl::Status> errors(2);
  std::set<int64_t> taken;
  std::thread renewer([&] {
    auto store = Open();
    if (store == nullptr) return;
    for (int i = 0; i < 30 && errors[0].ok(); ++i) {
      errors[0] = store->RenewLeases("old", ids, late, absl::Seconds(10)).status();
    }
  });
  std::thread claimer([&] {
    auto store = Open();
    if (store == nullptr) return;
    while (true) {
      auto got = store->ClaimRuns("new", late, absl::Seconds(60));
      if (!got.ok()) {
        errors[1] = got.status();
        return;
      }
      if (got->empty()) return;
      for (const RunInfo& r : *got) taken.insert(r.id);
    }
  });
  renewer.join();
  claimer.join();
  ASSERT_TRUE(errors[0].ok()) << errors[0];
  ASSERT_TRUE(errors[1].ok()) << errors[1];
  // Whatever the interleaving: each run is with exactly one worker, whole
  // requests move together, and "old" is told exactly which ones it lost.
  auto renewal = store_->RenewLeases("old", ids, late + absl::Seconds(1), absl::Seconds(10));
  ASSERT_TRUE(renewal.ok()) << renewal.status();
  std::set<int64_t> lost(renewal->lost.begin(), renewal->lost.end());
  EXPECT_EQ(lost, taken);
  for (int64_t id : ids) {
    auto run = store_->GetRun(id);
    ASSERT_TRUE(run.ok());
    EXPECT_EQ(run->worker, taken.count(id) > 0 ? "new" : "old") << "run " << id;
    EXPECT_EQ(taken.count(id), taken.count(run->request_id)) << "request split at run " << id;
  }
  std::printf("[ take-over ] %zu of %zu runs taken over, the rest renewed\n", taken.size(),
              ids.size());
}

// The engine's pattern at scale: 200,000 acknowledgements applied in the
// engine's chunks of 5,000, then one scan. Checks order, count and that the
// scan holds one fetch of rows at a time; prints throughput (no timing
// assertions).
TEST_F(PostgresStateStoreTest, LargeCheckpointAppliesInBatchesAndScansWithBoundedMemory) {
  constexpr int kKeys = 200'000;
  constexpr int kFetch = 1'000;
  store_ = Open({.scan_fetch_rows = kFetch});
  // Keys in scrambled order, with high bytes, so the scan order is the store's work.
  std::vector<CheckpointUpdate> chunk;
  std::vector<std::string> expected;
  expected.reserve(kKeys);
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kKeys; ++i) {
    uint32_t scrambled = static_cast<uint32_t>(i) * 2654435761u;
    std::string key = fmt::format("{:08x}", scrambled);
    if (i % 5 == 0) key.insert(0, "\xE2\x82\xAC");  // "€"
    expected.push_back(key);
    chunk.push_back(Upsert(key, key, "{\"id\":" + std::to_string(i) + "}"));
    if (chunk.size() == 5'000) {
      ASSERT_TRUE(store_->ApplyCheckpoint("big", chunk).ok());
      chunk.clear();
    }
  }
  double apply_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::sort(expected.begin(), expected.end());
  ASSERT_EQ(std::adjacent_find(expected.begin(), expected.end()), expected.end());

  // Updates of existing keys (the summary takes the old entries out).
  start = std::chrono::steady_clock::now();
  std::vector<CheckpointUpdate> rewrite;
  for (int i = 0; i < 50'000; ++i) {
    const std::string& key = expected[static_cast<size_t>(i) * 4];
    rewrite.push_back(i % 10 == 0 ? Remove(key) : Upsert(key, key + "v2"));
  }
  ASSERT_TRUE(store_->ApplyCheckpoint("big", rewrite).ok());
  double rewrite_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::set<std::string> removed;
  for (int i = 0; i < 50'000; i += 10) removed.insert(expected[static_cast<size_t>(i) * 4]);

  start = std::chrono::steady_clock::now();
  auto scanner = store_->ScanCheckpoint("big");
  ASSERT_TRUE(scanner.ok()) << scanner.status();
  CheckpointEntry e;
  size_t n = 0;
  size_t next_expected = 0;
  std::string previous;
  while (true) {
    auto more = (*scanner)->Next(e);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    while (removed.count(expected[next_expected]) > 0) ++next_expected;
    ASSERT_EQ(e.key, expected[next_expected]) << "at entry " << n;
    ++next_expected;
    if (n > 0) {
      ASSERT_LT(previous, e.key);
    }
    previous = e.key;
    ++n;
  }
  double scan_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(n, kKeys - removed.size());
  auto stats = GetPostgresScanStats(**scanner);
  ASSERT_TRUE(stats.has_value());
  EXPECT_EQ(stats->rows, static_cast<int64_t>(n));
  EXPECT_LE(stats->max_rows_held, kFetch);
  EXPECT_GE(stats->fetches, static_cast<int64_t>(n) / kFetch);
  EXPECT_EQ(*store_->CheckpointSize("big"), static_cast<int64_t>(n));
  std::printf(
      "[ throughput ] ApplyCheckpoint: %d new keys in chunks of 5000: %.2f s (%.0f keys/s); "
      "50000 updates/removes in one call: %.2f s (%.0f keys/s); scan of %zu keys: %.2f s "
      "(%.0f keys/s, %lld fetches, at most %lld rows held)\n",
      kKeys, apply_s, kKeys / apply_s, rewrite_s, 50'000 / rewrite_s, n, scan_s, n / scan_s,
      static_cast<long long>(stats->fetches), static_cast<long long>(stats->max_rows_held));
}

}  // namespace
}  // namespace backflow

namespace backflow::testing {
namespace {

INSTANTIATE_TEST_SUITE_P(
    Postgres, StateStoreContractTest,
    ::testing::Values(StateStoreFactory{
        "postgres",
        [](const std::string& test, bool reopen) -> absl::StatusOr<std::unique_ptr<StateStore>> {
          absl::StatusOr<pg::testing::TestServer> server = pg::testing::LoadTestServer();
          if (!server.ok()) return server.status();
          std::string db = fmt::format("bf_contract_{}_{}", getpid(), test);
          std::transform(db.begin(), db.end(), db.begin(),
                         [](unsigned char c) { return std::tolower(c); });
          db = db.substr(0, 63);
          if (!reopen) {
            absl::Status created = CreateDatabase(*server, db);
            if (!created.ok()) return created;
          }
          return OpenPostgresStateStore(UrlOf(*server, db));
        }}),
    [](const ::testing::TestParamInfo<StateStoreFactory>& info) { return info.param.name; });

}  // namespace
}  // namespace backflow::testing
