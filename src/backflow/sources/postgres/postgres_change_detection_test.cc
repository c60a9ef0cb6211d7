// The SQL of warehouse change detection on PostgreSQL: schema and table
// creation, which rows are candidates, which stored entries come back and in
// what order, writes, privileges.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "backflow/pg/testing/test_server.h"
#include "backflow/sources/postgres/postgres_source.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

using warehouse_testing::Fp;

// The pass helpers of the shared checks over a real PostgreSQL: a model of
// three columns (id, plan, age) and uuid row hashes.
class PostgresChangeDetectionTest : public pg::testing::PostgresTest,
                                    public warehouse_testing::WarehouseSnapshotChecks {
 protected:
  void SetUp() override {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    table_ = pg::testing::UniqueName("cd");
    schema_ = pg::testing::UniqueName("cd_state");
    ExecOrFail(fmt::format("CREATE TABLE {} (id text, plan text, age int)", table_));
    customers_ = table_;
    sql_ = fmt::format("SELECT id, plan, age FROM {}", table_);
    key_ = "id";
    model_columns_ = 3;
    sql_suffix_ = " ";
  }

  std::unique_ptr<Source> MakeSource(const std::string& url, const std::string& password) {
    return SourceOrFail(PostgresSourceDefinition().create(
        {{"url", url}, {"password", password}, {"state_schema", schema_}}, ConnectorEnv{}));
  }
  std::unique_ptr<Source> MakeSource() override {
    return MakeSource(server().url, server().password);
  }
  void WarehouseExec(const std::string& sql) override { ExecOrFail(sql); }
  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    std::vector<std::vector<std::string>> out;
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return out;
    auto rows = (*conn)->Exec(sql);
    EXPECT_TRUE(rows.ok()) << rows.status() << "\n" << sql;
    if (!rows.ok()) return out;
    for (int r = 0; r < PQntuples(rows->get()); ++r) {
      out.emplace_back();
      for (int c = 0; c < PQnfields(rows->get()); ++c) {
        out.back().push_back(PQgetvalue(rows->get(), r, c));
      }
    }
    return out;
  }
  void ExpectRowHash(const std::string& hash) override { EXPECT_EQ(hash.size(), 36u); }

  std::string table_, schema_;
};

TEST_F(PostgresChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  ExecOrFail(
      fmt::format("INSERT INTO {} VALUES ('a','free',1), ('B','free',2), ('_','pro',3), "
                  "('c','free',4), (NULL,'free',5)",
                  table_));
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);

  // First pass: nothing stored, every row is a candidate; the table was created.
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_EQ(first.rows.size(), 5u);
  EXPECT_EQ(first.counts["m"], 0);
  EXPECT_TRUE(first.entries["m"].empty());
  Deliver(*cd, "m", Fp(1), first);

  // Nothing changed: only the NULL key comes back.
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(second.rows,
              ElementsAre(std::pair<const std::string, std::string>("<null>#0", "free|5")));
  EXPECT_EQ(second.counts["m"], 4);
  EXPECT_TRUE(second.entries["m"].empty());
  EXPECT_EQ(second.hashes["<null>#0"], first.hashes["<null>#0"]);

  // An update (any column), an insert, a delete, a duplicated key.
  ExecOrFail(fmt::format("UPDATE {} SET age = 40 WHERE id = 'a'", table_));
  ExecOrFail(fmt::format("INSERT INTO {} VALUES ('d','free',6), ('c','free',4)", table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id = '_'", table_));
  Pass third = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(third), UnorderedElementsAre("a", "c", "d", "<null>#0"));
  EXPECT_EQ(third.duplicates, 1);  // both rows of "c"
  EXPECT_NE(third.hashes["a"], first.hashes["a"]);
  // Stored entries of candidate keys and of the gone key, in byte order.
  EXPECT_THAT(third.entries["m"], ElementsAre("_", "a", "c"));

  // In-flight keys and a full resync force rows out; another version too.
  WarehouseCandidateFilter flight = Filter({{"m", Fp(1)}});
  flight.in_flight_keys = {"B"};
  Deliver(*cd, "m", Fp(1), third, {"c"});
  Pass fourth = RunPass(*cd, flight);
  EXPECT_THAT(Keys(fourth), UnorderedElementsAre("B", "c", "<null>#0"));
  EXPECT_THAT(fourth.entries["m"], ElementsAre("B", "_", "c"));

  WarehouseCandidateFilter all = Filter({{"m", Fp(1)}});
  all.all_rows = true;
  EXPECT_EQ(RunPass(*cd, all).rows.size(), 5u);
  EXPECT_EQ(RunPass(*cd, Filter({{"m", Fp(2)}})).rows.size(), 5u);
  // A second mapping with nothing stored makes every row a candidate; the
  // first mapping's entries of those keys come back.
  Pass both = RunPass(*cd, Filter({{"m", Fp(1)}, {"other", Fp(1)}}));
  EXPECT_EQ(both.rows.size(), 5u);
  EXPECT_THAT(both.entries["m"], ElementsAre("B", "_", "a", "c", "d"));
  EXPECT_TRUE(both.entries["other"].empty());
}

TEST_F(PostgresChangeDetectionTest, RemovesAndUpsertsAreCommittedAndLastWriteWins) {
  ExecOrFail(fmt::format("INSERT INTO {} VALUES ('a','free',1), ('b','free',2)", table_));
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  Deliver(*cd, "m", Fp(1), first);
  WarehouseCheckpointWrite remove;
  remove.kind = WarehouseCheckpointWrite::Kind::kRemove;
  remove.key = "a";
  WarehouseCheckpointWrite upsert;
  upsert.key = "b";
  upsert.fingerprint = Fp(99);
  upsert.identity = std::string("\x00\x01", 2);
  upsert.row_hash = first.hashes["b"];
  upsert.version = Fp(1);
  WarehouseCheckpointWrite upsert_again = upsert;
  upsert_again.fingerprint = Fp(100);
  ASSERT_TRUE(cd->Apply("m", {remove, upsert, upsert_again}).ok());

  auto conn = Connect();
  ASSERT_TRUE(conn.ok());
  auto rows = (*conn)->Exec(fmt::format(
      "SELECT record_key, encode(fingerprint, 'hex'), encode(identity, 'hex') FROM {}.checkpoints "
      "WHERE mapping = 'm' ORDER BY 1",
      schema_));
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(PQntuples(rows->get()), 1);
  EXPECT_STREQ(PQgetvalue(rows->get(), 0, 0), "b");
  EXPECT_EQ(std::string(PQgetvalue(rows->get(), 0, 1)), Fp(100).ToHex());
  EXPECT_STREQ(PQgetvalue(rows->get(), 0, 2), "0001");
  // "a" is a candidate again (no entry); "b" is not.
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_EQ(second.rows.size(), 1u);
  EXPECT_EQ(second.rows.count("a"), 1u);
}

TEST_F(PostgresChangeDetectionTest, KeyTypesWhoseTextCouldDifferAreRefused) {
  sql_ = fmt::format("SELECT age::numeric AS id, plan FROM {}", table_);
  auto source = MakeSource();
  auto snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(reader.status().message()), HasSubstr("id::text AS id"));
}

TEST_F(PostgresChangeDetectionTest, TheModelCannotWrite) {
  sql_ = fmt::format("WITH gone AS (DELETE FROM {} RETURNING *) SELECT id, plan, age FROM gone",
                     table_);
  ExecOrFail(fmt::format("INSERT INTO {} VALUES ('a','free',1)", table_));
  auto source = MakeSource();
  auto snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  if (snapshot.ok()) {
    auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
    EXPECT_FALSE(reader.ok());
  }
  auto conn = Connect();
  ASSERT_TRUE(conn.ok());
  auto count = (*conn)->Exec(fmt::format("SELECT count(*) FROM {}", table_));
  ASSERT_TRUE(count.ok());
  EXPECT_STREQ(PQgetvalue(count->get(), 0, 0), "1");
}

TEST_F(PostgresChangeDetectionTest, MissingCreatePrivilegeSaysWhatToGrant) {
  auto admin = AdminConnect();
  ASSERT_TRUE(admin.ok()) << admin.status();
  const std::string role = pg::testing::UniqueName("cd_reader");
  ASSERT_TRUE(
      (*admin)->Exec(fmt::format("CREATE ROLE {} LOGIN PASSWORD 'pw-{}'", role, role)).ok());
  ASSERT_TRUE((*admin)->Exec(fmt::format("GRANT SELECT ON {} TO {}", table_, role)).ok());
  std::string url = server().url;
  url.replace(url.find("backflow@"), 9, role + "@");
  auto source = MakeSource(url, "pw-" + role);
  auto snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  const std::string message(snapshot.status().message());
  EXPECT_THAT(message,
              HasSubstr(fmt::format("GRANT CREATE ON DATABASE \"backflow_test\" TO \"{}\"", role)));
  EXPECT_THAT(message, HasSubstr(schema_));
  EXPECT_THAT(message, HasSubstr("state_schema"));

  // The schema exists but the role may not create tables in it.
  ASSERT_TRUE((*admin)->Exec(fmt::format("CREATE SCHEMA {}", schema_)).ok());
  ASSERT_TRUE((*admin)->Exec(fmt::format("GRANT USAGE ON SCHEMA {} TO {}", schema_, role)).ok());
  snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_THAT(
      std::string(snapshot.status().message()),
      HasSubstr(fmt::format("GRANT USAGE, CREATE ON SCHEMA \"{}\" TO \"{}\"", schema_, role)));

  // The table exists (made by an administrator) without the role's grants.
  ASSERT_TRUE((*admin)->Exec(fmt::format("GRANT CREATE ON SCHEMA {} TO {}", schema_, role)).ok());
  ASSERT_TRUE((*admin)
                  ->Exec(fmt::format("CREATE TABLE {}.checkpoints (mapping text, record_key text, "
                                     "row_hash uuid, version uuid, fingerprint bytea, identity "
                                     "bytea, PRIMARY KEY (mapping, record_key))",
                                     schema_))
                  .ok());
  snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_THAT(
      std::string(snapshot.status().message()),
      HasSubstr(fmt::format("GRANT SELECT, INSERT, UPDATE, DELETE ON \"{}\".checkpoints TO \"{}\"",
                            schema_, role)));
  (void)(*admin)->Exec(fmt::format("DROP SCHEMA {} CASCADE", schema_));
  (void)(*admin)->Exec(fmt::format("REVOKE ALL ON {} FROM {}", table_, role));
  (void)(*admin)->Exec(fmt::format("DROP ROLE {}", role));
}

// --- Cancel ---------------------------------------------------------------------

// The number of server sessions whose state matches `where` (over
// pg_stat_activity), -1 on error.
int64_t Sessions(pg::Connection& conn, const std::string& where) {
  auto r = conn.Exec("SELECT count(*) FROM pg_stat_activity WHERE " + where);
  if (!r.ok()) return -1;
  return std::stoll(PQgetvalue(r->get(), 0, 0));
}

// Sets `flag` once a server session matches `where` (an event the pass's
// statement reaches: waiting for a lock, sleeping), as a run's cancel would.
class CancelWhenSeen {
 public:
  CancelWhenSeen(std::unique_ptr<pg::Connection> observer, std::string where,
                 std::atomic<bool>* flag)
      : thread_([this, observer = std::move(observer), where, flag] {
          const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
          while (!stop_ && std::chrono::steady_clock::now() < give_up) {
            if (Sessions(*observer, where) > 0) {
              flag->store(true);
              return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
          }
        }) {}
  ~CancelWhenSeen() {
    stop_ = true;
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST_F(PostgresChangeDetectionTest, CancelDuringBeginStopsTheBlockedStatement) {
  ExecOrFail(fmt::format("INSERT INTO {} VALUES ('a','free',1)", table_));
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_TRUE(cd->Begin(sql_, "id").ok());  // creates the checkpoint table
  // Another session holds the model's table: the pass's first statement
  // over the model waits for it.
  auto locker = Connect();
  ASSERT_TRUE(locker.ok()) << locker.status();
  ASSERT_TRUE((*locker)->Exec("BEGIN").ok());
  ASSERT_TRUE((*locker)->Exec(fmt::format("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", table_)).ok());
  auto observer = Connect();
  ASSERT_TRUE(observer.ok()) << observer.status();
  std::atomic<bool> cancel{false};
  const std::string waiting =
      "wait_event_type = 'Lock' AND query LIKE '%backflow_candidates%' AND pid <> "
      "pg_backend_pid()";
  const auto started = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<WarehouseSnapshot>> snapshot;
  {
    CancelWhenSeen canceller(*std::move(observer), waiting, &cancel);
    snapshot = cd->Begin(sql_, "id", WarehousePassOptions{&cancel});
  }
  // Returned while the lock is still held: the server stopped the statement.
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kCancelled) << snapshot.status();
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(20));
  auto admin = Connect();
  ASSERT_TRUE(admin.ok());
  EXPECT_EQ(Sessions(**admin, waiting), 0);
  ASSERT_TRUE((*locker)->Exec("ROLLBACK").ok());
  // The next pass works.
  Pass pass = RunPass(*cd, WarehouseCandidateFilter{{{"m", Fp(1)}}, {}, false});
  EXPECT_EQ(pass.rows.size(), 1u);
}

TEST_F(PostgresChangeDetectionTest, CancelDuringReadCandidatesStopsTheModelAndLeavesNothing) {
  ExecOrFail(fmt::format("INSERT INTO {} VALUES ('a','free',1)", table_));
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  // The model sleeps once it runs (not when Begin only plans it).
  const std::string slow = sql_ + " WHERE (SELECT true FROM pg_sleep(60))";
  std::atomic<bool> cancel{false};
  auto snapshot = cd->Begin(slow, "id", WarehousePassOptions{&cancel});
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  auto observer = Connect();
  ASSERT_TRUE(observer.ok()) << observer.status();
  const std::string sleeping = "wait_event = 'PgSleep' AND query LIKE '%backflow_candidates%'";
  const auto started = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<RowReader>> reader;
  {
    CancelWhenSeen canceller(*std::move(observer), sleeping, &cancel);
    reader = (*snapshot)->ReadCandidates(WarehouseCandidateFilter{{{"m", Fp(1)}}, {}, false});
  }
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(20));
  EXPECT_EQ((*snapshot)->ScanEntries("m").status().code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE((*snapshot)->Close().ok());
  snapshot->reset();
  // The statement is gone from the server, and so is the pass's session with
  // its temporary tables (a backend drops them as it exits).
  auto admin = Connect();
  ASSERT_TRUE(admin.ok());
  EXPECT_EQ(Sessions(**admin, sleeping), 0);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int64_t temp = -1;
  while (std::chrono::steady_clock::now() < give_up) {
    auto r = (*admin)->Exec(
        "SELECT count(*) FROM pg_class WHERE relname IN ('backflow_candidates', 'backflow_gone')");
    ASSERT_TRUE(r.ok());
    temp = std::stoll(PQgetvalue(r->get(), 0, 0));
    if (temp == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(temp, 0);
}

}  // namespace
}  // namespace backflow
