// change_detection: warehouse on MySQL/MariaDB stops when its run is
// cancelled: the pass's statement that is running (Begin's first read of the
// model, ReadCandidates' candidate SELECT) is killed by the pass's
// QueryCanceller (KILL QUERY), the step returns kCancelled, the pass's
// session (and with it its temporary table) is gone once the snapshot is
// closed, and the next pass works. Against the real server of the `mariadb`
// fixture; the statement is kept waiting by a table lock another connection
// holds (LOCK TABLES ... WRITE), and the flag is set once the processlist
// shows it.
#include <mysql.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "backflow/sources/mysql/mysql_source.h"
#include "backflow/sources/mysql/mysql_test_server.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

class MysqlPassCancelTest : public mysql_testing::MariadbTest {
 protected:
  void SetUp() override {
    MariadbTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    table_ = mysql_testing::UniqueName("pc");
    schema_ = mysql_testing::UniqueName("backflow_pc_state");
    Exec(fmt::format("CREATE TABLE {} (id varchar(40), plan varchar(20), age int)", table_));
    Exec(
        fmt::format("INSERT INTO {} VALUES ('a','free',1), ('b','free',2), ('c','pro',3)", table_));
    sql_ = fmt::format("SELECT id, plan, age FROM {}", table_);
    watcher_ = Connect();
    ASSERT_NE(watcher_, nullptr);
  }
  void TearDown() override {
    if (IsSkipped()) return;
    if (helper_.joinable()) helper_.join();
    if (locker_ != nullptr) mysql_close(locker_);
    if (watcher_ != nullptr) mysql_close(watcher_);
    MYSQL* m = Connect();
    if (m == nullptr) return;
    (void)mysql_query(m, fmt::format("DROP DATABASE IF EXISTS {}", schema_).c_str());
    (void)mysql_query(m, fmt::format("DROP TABLE IF EXISTS {}", table_).c_str());
    mysql_close(m);
  }

  std::unique_ptr<Source> MakeSource() {
    auto source = MysqlSourceDefinition().create(
        {{"url", server().url}, {"password", server().password}, {"state_schema", schema_}},
        ConnectorEnv{});
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }

  // One number of a query on `m`; -1 on failure.
  static int64_t Number(MYSQL* m, const std::string& sql) {
    if (mysql_query(m, sql.c_str()) != 0) {
      ADD_FAILURE() << mysql_error(m) << "\nSQL: " << sql;
      return -1;
    }
    MYSQL_RES* r = mysql_store_result(m);
    MYSQL_ROW row = r != nullptr ? mysql_fetch_row(r) : nullptr;
    const int64_t n = row != nullptr && row[0] != nullptr ? std::atoll(row[0]) : -1;
    if (r != nullptr) mysql_free_result(r);
    return n;
  }

  // Statements of other sessions containing `marker`.
  static int64_t Running(MYSQL* m, const std::string& marker) {
    return Number(m, fmt::format("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> "
                                 "CONNECTION_ID() AND INFO LIKE '%{}%'",
                                 marker));
  }
  // Another connection holds `table` (LOCK TABLES ... WRITE): who reads it waits.
  void Lock(const std::string& table) {
    locker_ = Connect();
    ASSERT_NE(locker_, nullptr);
    ASSERT_TRUE(Exec(fmt::format("LOCK TABLES {} WRITE", table), locker_));
  }
  void Unlock() { ASSERT_TRUE(Exec("UNLOCK TABLES", locker_)); }

  // Sets cancel_ once a statement containing `marker` runs, noting its
  // session (processlist polled for at most 30 s, on a connection of its own).
  void CancelWhenRunning(const std::string& marker) {
    helper_ = std::thread([this, marker] {
      MYSQL* m = Connect();
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (m != nullptr && std::chrono::steady_clock::now() < deadline) {
        const int64_t id =
            Number(m, fmt::format("SELECT COALESCE(MIN(ID), 0) FROM information_schema.PROCESSLIST "
                                  "WHERE ID <> CONNECTION_ID() AND INFO LIKE '%{}%'",
                                  marker));
        if (id != 0) {
          pass_session_ = id;
          break;
        }
        std::this_thread::yield();
      }
      if (m != nullptr) mysql_close(m);
      cancel_ = true;
    });
  }

  // Until the session `id` is gone (at most 10 s).
  bool SessionGone(int64_t id) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (Number(watcher_,
                  fmt::format("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {}",
                              id)) != 0) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::yield();
    }
    return true;
  }

  // Until no statement containing `marker` runs (at most 10 s).
  bool Gone(const std::string& marker) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (Running(watcher_, marker) != 0) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::yield();
    }
    return true;
  }

  void ExpectNextPassWorks(WarehouseChangeDetection& cd) {
    cancel_ = false;
    WarehouseCandidateFilter filter;
    filter.mappings = {{"m", Fingerprint{1, 2}}};
    int rows = 0;
    auto snapshot =
        warehouse_testing::PassReadingCandidates(cd, sql_, "id", filter, &cancel_, rows);
    ASSERT_NE(snapshot, nullptr);
    EXPECT_EQ(rows, 3);
    auto count = snapshot->CountEntries("m");
    ASSERT_TRUE(count.ok()) << count.status();
    EXPECT_EQ(*count, 0);
    ASSERT_TRUE(snapshot->Close().ok());
  }

  std::string table_;
  std::string schema_;
  std::string sql_;
  MYSQL* watcher_ = nullptr;
  MYSQL* locker_ = nullptr;
  std::atomic<bool> cancel_{false};
  std::atomic<int64_t> pass_session_{0};  // the session that ran the marker
  std::thread helper_;
};

TEST_F(MysqlPassCancelTest, CancelDuringBeginKillsTheReadOfTheModel) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);
  Lock(table_);
  const std::string marker = fmt::format("FROM {}%LIMIT 0", table_);
  CancelWhenRunning(marker);
  const auto start = std::chrono::steady_clock::now();
  auto snapshot = cd->Begin(sql_, "id", WarehousePassOptions{&cancel_});
  const auto elapsed = std::chrono::steady_clock::now() - start;
  helper_.join();
  ASSERT_NE(pass_session_.load(), 0) << "the statement was never seen running";
  ASSERT_EQ(snapshot.status().code(), absl::StatusCode::kCancelled) << snapshot.status();
  EXPECT_LT(elapsed, std::chrono::seconds(20));
  // Gone while the lock is still held: killed, not finished.
  EXPECT_TRUE(Gone(marker));
  // The pass's session (and with it its temporary table) is closed.
  EXPECT_TRUE(SessionGone(pass_session_));
  Unlock();
  ExpectNextPassWorks(*cd);
}

TEST_F(MysqlPassCancelTest, CancelDuringReadCandidatesKillsTheCandidatesSelect) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);
  auto snapshot = cd->Begin(sql_, "id", WarehousePassOptions{&cancel_});
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  // The pass has not read the checkpoint table yet: another session can hold it.
  Lock(fmt::format("{}.checkpoints", schema_));
  const std::string marker = fmt::format("{}`.`checkpoints`", schema_);
  CancelWhenRunning(marker);
  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fingerprint{1, 2}}};
  const auto start = std::chrono::steady_clock::now();
  auto reader = (*snapshot)->ReadCandidates(filter);
  absl::Status status = reader.status();
  // The candidates may stream before the checkpoint is read: then Next waits.
  if (reader.ok()) {
    Row row;
    while (status.ok()) {
      absl::StatusOr<bool> more = (*reader)->Next(row);
      status = more.status();
      if (status.ok() && !*more) break;
    }
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  helper_.join();
  ASSERT_NE(pass_session_.load(), 0) << "the statement was never seen running";
  ASSERT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_LT(elapsed, std::chrono::seconds(20));
  EXPECT_TRUE(Gone(marker));  // while the lock is still held: killed
  EXPECT_EQ((*snapshot)->ScanEntries("m").status().code(), absl::StatusCode::kCancelled);
  if (reader.ok()) reader->reset();
  ASSERT_TRUE((*snapshot)->Close().ok());
  EXPECT_TRUE(SessionGone(pass_session_));  // with its temporary table
  Unlock();
  ExpectNextPassWorks(*cd);
}

}  // namespace
}  // namespace backflow
