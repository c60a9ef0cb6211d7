// change_detection: warehouse on the libpq `redshift` source stops when its
// run is cancelled: the pass's statement that is running (the copy of the
// model in Begin, the candidate keys in ReadCandidates) is cancelled with
// PQcancel (relayed by the Redshift-personality proxy to the test
// PostgreSQL, which ends it), the step returns kCancelled within the
// source's one-second poll, the pass tables are dropped on Close, and the
// next pass works. The statement is kept running by pg_sleep in the model
// (Begin) or by a lock another connection holds on the checkpoint table
// (ReadCandidates); the flag is set once PostgreSQL shows it running.
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "backflow/common/clock.h"
#include "backflow/pg/testing/test_server.h"
#include "backflow/sources/redshift/fake_redshift_server.h"
#include "backflow/sources/redshift/redshift_source.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::StartsWith;

class RedshiftPassCancelTest : public pg::testing::PostgresTest {
 protected:
  void SetUp() override {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    FakeRedshiftOptions options;
    options.upstream_port = server().port;
    fake_ = std::make_unique<FakeRedshiftServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    table_ = pg::testing::UniqueName("rs_pc");
    schema_ = pg::testing::UniqueName("rs_pc_state");
    ExecOrFail(
        fmt::format("CREATE TABLE {} (id varchar(32), plan varchar(16), age bigint)", table_));
    ExecOrFail(
        fmt::format("INSERT INTO {} VALUES ('a','free',1), ('b','free',2), ('c','pro',3)", table_));
    auto admin = AdminConnect();
    ASSERT_TRUE(admin.ok()) << admin.status();
    admin_ = *std::move(admin);
  }
  void TearDown() override {
    if (helper_.joinable()) helper_.join();
    if (!IsSkipped()) {
      ExecOrFail(fmt::format("DROP TABLE IF EXISTS {}", table_));
      ExecOrFail(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", schema_));
    }
  }

  std::unique_ptr<Source> Make() {
    RedshiftConfig config;
    config.url = fake_->Url("backflow", "backflow_test");
    config.password = server().password;
    config.sslmode = "disable";  // the fake does not speak TLS
    config.state_schema = schema_;
    return NewRedshiftSource(std::move(config), ConnectorEnv{nullptr, &clock_});
  }

  // One text value of an admin query.
  std::string AdminValue(const std::string& sql) {
    auto r = admin_->Exec(sql);
    EXPECT_TRUE(r.ok()) << r.status() << "\n" << sql;
    if (!r.ok() || PQntuples(r->get()) != 1) return "";
    return PQgetvalue(r->get(), 0, 0);
  }

  // Statements of other sessions now running whose text contains `part` and
  // this test's schema (tests running at once on the server run passes too).
  int64_t Running(const std::string& part) { return std::stoll(AdminValue(ActiveCountSql(part))); }
  std::string ActiveCountSql(const std::string& part) const {
    return fmt::format(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = "
        "'active' AND position('{}' in query) > 0 AND position('{}' in query) > 0",
        part, schema_);
  }

  // Sets cancel_ once PostgreSQL runs a statement of this test containing `part` (polled
  // every 10 ms, for at most 30 s).
  void CancelWhenRunning(const std::string& part) {
    auto admin = AdminConnect();
    ASSERT_TRUE(admin.ok()) << admin.status();
    helper_ = std::thread([this, part, conn = std::shared_ptr<pg::Connection>(*std::move(admin))] {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (std::chrono::steady_clock::now() < deadline) {
        auto r = conn->Exec(ActiveCountSql(part));
        if (r.ok() && std::string(PQgetvalue(r->get(), 0, 0)) != "0") {
          seen_ = true;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      cancel_ = true;
    });
  }

  // Until no statement containing `part` runs (polled every 10 ms, at most 10 s).
  bool Ended(const std::string& part) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (Running(part) != 0) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }

  std::vector<std::string> Tables() {
    std::vector<std::string> names;
    auto r = admin_->Exec(fmt::format(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = '{}' ORDER BY 1",
        schema_));
    EXPECT_TRUE(r.ok()) << r.status();
    for (int i = 0; r.ok() && i < PQntuples(r->get()); ++i) {
      names.push_back(PQgetvalue(r->get(), i, 0));
    }
    return names;
  }

  std::string Registered() {
    return AdminValue(fmt::format("SELECT count(*) FROM {}.pass_tables", schema_));
  }

  void ExpectNextPassWorks(WarehouseChangeDetection& cd) {
    cancel_ = false;
    WarehouseCandidateFilter filter;
    filter.mappings = {{"m", Fingerprint{1, 2}}};
    int rows = 0;
    auto snapshot = warehouse_testing::PassReadingCandidates(
        cd, fmt::format("SELECT id, plan, age FROM {}", table_), "id", filter, &cancel_, rows);
    ASSERT_NE(snapshot, nullptr);
    EXPECT_EQ(rows, 3);
    ASSERT_TRUE(snapshot->Close().ok());
    EXPECT_THAT(Tables(), ElementsAre("checkpoints", "pass_tables"));
    EXPECT_EQ(Registered(), "0");
  }

  std::unique_ptr<FakeRedshiftServer> fake_;
  std::unique_ptr<pg::Connection> admin_;
  std::string table_;
  std::string schema_;
  FakeClock clock_;
  std::atomic<bool> cancel_{false};
  std::atomic<bool> seen_{false};
  std::thread helper_;
};

TEST_F(RedshiftPassCancelTest, CancelDuringBeginCancelsTheCopyOfTheModelAndDropsIt) {
  auto source = Make();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);
  const int64_t cancels = fake_->cancel_requests();
  // A copy that would take a minute; cancelled once the copy itself runs (the
  // schema probe before it has the model's text too, but LIMIT 0 ends it at once).
  CancelWhenRunning("AS\nSELECT m.*");
  const auto start = std::chrono::steady_clock::now();
  auto snapshot = cd->Begin(
      fmt::format("SELECT t.id, t.plan, t.age FROM {} AS t CROSS JOIN pg_sleep(60) AS s", table_),
      "id", {&cancel_});
  const auto elapsed = std::chrono::steady_clock::now() - start;
  helper_.join();
  EXPECT_TRUE(seen_.load());
  ASSERT_EQ(snapshot.status().code(), absl::StatusCode::kCancelled) << snapshot.status();
  EXPECT_LT(elapsed, std::chrono::seconds(20));
  EXPECT_GE(fake_->cancel_requests(), cancels + 1);  // repeated until the statement stops
  EXPECT_TRUE(Ended("pg_sleep(60)"));
  EXPECT_THAT(Tables(), ElementsAre("checkpoints", "pass_tables"));
  EXPECT_EQ(Registered(), "0");
  ExpectNextPassWorks(*cd);
}

TEST_F(RedshiftPassCancelTest, CancelDuringReadCandidatesCancelsTheKeysStatementAndDropsThePass) {
  auto source = Make();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);
  auto snapshot = cd->Begin(fmt::format("SELECT id, plan, age FROM {}", table_), "id", {&cancel_});
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  ASSERT_EQ(Tables().size(), 3u);
  EXPECT_THAT(Tables()[0], "checkpoints");
  EXPECT_THAT(Tables()[2], StartsWith("pass_"));
  // Another session holds the checkpoint table: choosing the keys waits.
  auto locker = Connect();
  ASSERT_TRUE(locker.ok()) << locker.status();
  ASSERT_TRUE((*locker)->Exec("BEGIN").ok());
  ASSERT_TRUE((*locker)
                  ->Exec(fmt::format("LOCK TABLE {}.checkpoints IN ACCESS EXCLUSIVE MODE", schema_))
                  .ok());
  const int64_t cancels = fake_->cancel_requests();
  CancelWhenRunning("_K (record_key)\n");
  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fingerprint{1, 2}}};
  const auto start = std::chrono::steady_clock::now();
  auto reader = (*snapshot)->ReadCandidates(filter);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  helper_.join();
  EXPECT_TRUE(seen_.load());
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_LT(elapsed, std::chrono::seconds(20));
  const int64_t cancelled = fake_->cancel_requests();
  EXPECT_GE(cancelled, cancels + 1);        // repeated until the statement stops
  EXPECT_TRUE(Ended("_K (record_key)\n"));  // ended while the lock is still held: cancelled
  EXPECT_EQ((*snapshot)->ScanEntries("m").status().code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE((*locker)->Exec("ROLLBACK").ok());
  ASSERT_TRUE((*snapshot)->Close().ok());
  EXPECT_THAT(Tables(), ElementsAre("checkpoints", "pass_tables"));
  EXPECT_EQ(Registered(), "0");
  EXPECT_EQ(fake_->cancel_requests(), cancelled);  // the later steps sent nothing
  ExpectNextPassWorks(*cd);
}

}  // namespace
}  // namespace backflow
