// A run's cancel flag (QueryOptions::cancel) stops a MySQL/MariaDB query:
// against the real server of the `mariadb` fixture.
#include <mysql.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "backflow/sources/mysql/mysql_source.h"
#include "backflow/sources/mysql/mysql_test_server.h"
#include "backflow/testing/process.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::HasSubstr;

class MysqlCancelTest : public mysql_testing::MariadbTest {
 protected:
  // How many statements other than `m`'s own contain `marker`.
  int Running(MYSQL* m, const std::string& marker) {
    std::string sql = fmt::format(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
        "AND INFO LIKE '%{}%'",
        marker);
    if (mysql_query(m, sql.c_str()) != 0) {
      ADD_FAILURE() << mysql_error(m);
      return -1;
    }
    MYSQL_RES* r = mysql_store_result(m);
    MYSQL_ROW row = r != nullptr ? mysql_fetch_row(r) : nullptr;
    int n = row != nullptr ? std::atoi(row[0]) : -1;
    if (r != nullptr) mysql_free_result(r);
    return n;
  }

  // Polls the processlist until a statement containing `marker` runs (the
  // event the test waits for), at most 30 s.
  bool WaitUntilRunning(MYSQL* m, const std::string& marker) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      int n = Running(m, marker);
      if (n < 0) return false;
      if (n > 0) return true;
      std::this_thread::yield();
    }
    return false;
  }

  // Polls the processlist until no statement contains `marker`, at most 10 s;
  // kills what is left on failure (the statements would burn CPU for minutes).
  bool WaitUntilGone(const std::string& marker) {
    MYSQL* m = Connect();
    if (m == nullptr) return false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    bool gone = false;
    while (!gone && std::chrono::steady_clock::now() < deadline) {
      int n = Running(m, marker);
      if (n < 0) break;
      gone = n == 0;
    }
    if (!gone) {
      (void)mysql_query(m, fmt::format("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> "
                                       "CONNECTION_ID() AND INFO LIKE '%{}%'",
                                       marker)
                               .c_str());
      if (MYSQL_RES* r = mysql_store_result(m)) {
        std::vector<std::string> ids;
        while (MYSQL_ROW row = mysql_fetch_row(r)) ids.emplace_back(row[0]);
        mysql_free_result(r);
        for (const auto& id : ids) (void)mysql_query(m, ("KILL QUERY " + id).c_str());
      }
    }
    mysql_close(m);
    return gone;
  }

  // Sets `cancel` from another thread once the server shows the statement
  // containing `marker` running (or after 30 s, so a test cannot hang).
  std::thread CancelWhenRunning(std::atomic<bool>& cancel, const std::string& marker) {
    return std::thread([this, &cancel, marker] {
      MYSQL* m = Connect();
      if (m != nullptr) {
        EXPECT_TRUE(WaitUntilRunning(m, marker)) << "the query never showed as running";
        mysql_close(m);
      }
      cancel = true;
    });
  }
};

// Minutes of computing that, unlike SLEEP(), never checks whether the client
// is still connected: only KILL QUERY stops it early.
constexpr const char* kBusy = "BENCHMARK(2000000000, MD5('backflow'))";

TEST_F(MysqlCancelTest, CancelWhileTheQueryRunsKillsItOnTheServer) {
  const std::string marker = mysql_testing::UniqueName("backflow_cancel_running");
  std::atomic<bool> cancel{false};
  QueryOptions options;
  options.cancel = &cancel;
  auto source = NewMysqlSource(server().url, server().password);
  std::thread helper = CancelWhenRunning(cancel, marker);
  auto start = std::chrono::steady_clock::now();
  auto reader = source->Query(fmt::format("SELECT {} AS {}", kBusy, marker), options);
  auto elapsed = std::chrono::steady_clock::now() - start;
  helper.join();
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("MySQL"));
  // The computation was cut short.
  EXPECT_LT(elapsed, std::chrono::seconds(15));
  EXPECT_TRUE(WaitUntilGone(marker)) << "the query still runs on the server";
  // The source still works for the next run.
  std::atomic<bool> not_cancelled{false};
  options.cancel = &not_cancelled;
  auto again = source->Query("SELECT 7", options);
  ASSERT_TRUE(again.ok()) << again.status();
  Row row;
  ASSERT_TRUE(*(*again)->Next(row));
  EXPECT_EQ(row[0], Value::Int64(7));
  EXPECT_FALSE(*(*again)->Next(row));
}

TEST_F(MysqlCancelTest, AFlagAlreadySetOpensNoQueryAndNoConnection) {
  std::atomic<bool> cancel{true};
  QueryOptions options;
  options.cancel = &cancel;
  // Nothing listens there: a connection attempt would be kUnavailable.
  auto nowhere = NewMysqlSource(
      fmt::format("mysql://backflow@127.0.0.1:{}/backflow_test", testing::UnusedPort()), "pw");
  auto reader = nowhere->Query("SELECT 1", options);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();

  const std::string marker = mysql_testing::UniqueName("backflow_cancel_preset");
  auto real = NewMysqlSource(server().url, server().password);
  reader = real->Query(fmt::format("SELECT {} AS {}", kBusy, marker), options);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  MYSQL* m = Connect();
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(Running(m, marker), 0);
  mysql_close(m);
}

// The first row is large enough for the server to flush it at once; the
// second row's computation then runs while the reader waits.
std::string SlowSecondRow(const std::string& marker) {
  return fmt::format(
      "SELECT t.n, IF(t.n = 1, REPEAT('x', 100000), {}) AS {} "
      "FROM (SELECT 1 AS n UNION ALL SELECT 2) AS t ORDER BY t.n",
      kBusy, marker);
}

TEST_F(MysqlCancelTest, NextBetweenRowsHonoursTheFlag) {
  const std::string marker = mysql_testing::UniqueName("backflow_cancel_between");
  std::atomic<bool> cancel{false};
  QueryOptions options;
  options.cancel = &cancel;
  auto reader =
      NewMysqlSource(server().url, server().password)->Query(SlowSecondRow(marker), options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[0], Value::Int64(1));
  cancel = true;
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<bool> more = (*reader)->Next(row);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(15));
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kCancelled) << more.status();
  EXPECT_EQ((*reader)->Next(row).status().code(), absl::StatusCode::kCancelled);  // sticky
  EXPECT_TRUE(WaitUntilGone(marker)) << "the query still runs on the server";
  reader->reset();
}

TEST_F(MysqlCancelTest, CancelWhileNextWaitsForARowKillsTheQuery) {
  const std::string marker = mysql_testing::UniqueName("backflow_cancel_waiting");
  std::atomic<bool> cancel{false};
  QueryOptions options;
  options.cancel = &cancel;
  auto reader =
      NewMysqlSource(server().url, server().password)->Query(SlowSecondRow(marker), options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  ASSERT_TRUE(*(*reader)->Next(row));
  // The server is computing the second row while Next() waits.
  std::thread helper = CancelWhenRunning(cancel, marker);
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<bool> more = (*reader)->Next(row);
  auto elapsed = std::chrono::steady_clock::now() - start;
  helper.join();
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kCancelled) << more.status();
  EXPECT_LT(elapsed, std::chrono::seconds(15));
  EXPECT_TRUE(WaitUntilGone(marker)) << "the query still runs on the server";
}

TEST_F(MysqlCancelTest, AnUnsetFlagChangesNothing) {
  std::atomic<bool> cancel{false};
  QueryOptions options;
  options.cancel = &cancel;
  auto reader = NewMysqlSource(server().url, server().password)
                    ->Query("SELECT seq FROM seq_1_to_5000", options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int64_t rows = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_EQ(rows, 5000);
}

}  // namespace
}  // namespace backflow
