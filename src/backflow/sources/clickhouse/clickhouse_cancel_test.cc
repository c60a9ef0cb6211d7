// A run's cancel flag (QueryOptions::cancel) stops a ClickHouse query: while
// the request waits for its first byte, between rows, and during a retry's
// backoff. Against the fake server.
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/sources/clickhouse/clickhouse_source.h"
#include "backflow/sources/clickhouse/fake_clickhouse_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::HasSubstr;
using Outcome = ClickHouseQueryLog::Outcome;

// A FakeClock on which every sleep (a retry's backoff) cancels the run.
class CancellingClock : public FakeClock {
 public:
  explicit CancellingClock(std::atomic<bool>* cancel) : cancel_(cancel) {}
  void SleepFor(Duration d) override {
    cancel_->store(true);
    FakeClock::SleepFor(d);
  }

 private:
  std::atomic<bool>* cancel_;
};

class ClickHouseCancelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_ = std::make_unique<FakeClickHouseServer>();
    ASSERT_TRUE(fake_->Start().ok());
    FakeClickHouseUser user;
    user.name = "retl";
    user.password = "s3cret";
    fake_->AddUser(user);
    ASSERT_TRUE(fake_->CreateTable("default", "users", {{"id", "UInt64"}}).ok());
    ASSERT_TRUE(fake_
                    ->Exec("INSERT INTO users WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL "
                           "SELECT i + 1 FROM c WHERE i < 100) SELECT i FROM c")
                    .ok());
    http_ = NewCurlHttpClient();
    options_.cancel = &cancel_;
  }

  std::unique_ptr<Source> NewSource(Clock* clock = nullptr) {
    ClickHouseConfig c;
    c.base_url = fake_->BaseUrl();
    c.user = "retl";
    c.password = "s3cret";
    c.timeout = std::chrono::milliseconds(5000);
    c.retry.max_retries = 3;
    ConnectorEnv env;
    env.http = http_.get();
    env.clock = clock != nullptr ? clock : &clock_;
    absl::StatusOr<std::unique_ptr<Source>> source = NewClickHouseSource(std::move(c), env);
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }

  std::unique_ptr<FakeClickHouseServer> fake_;
  std::unique_ptr<HttpClient> http_;
  FakeClock clock_;
  std::atomic<bool> cancel_{false};
  QueryOptions options_;
};

TEST_F(ClickHouseCancelTest, CancelBeforeTheFirstByteKillsTheQuery) {
  fake_->StallBeforeHeaders(true);
  std::optional<std::string> held;
  // Cancels once the fake holds the query (an event, not a timer).
  std::thread helper([&] {
    held = fake_->WaitForHeldQuery(std::chrono::seconds(30));
    cancel_ = true;
  });
  auto source = NewSource();
  auto start = std::chrono::steady_clock::now();
  auto reader = source->Query("SELECT id FROM users", options_);
  auto elapsed = std::chrono::steady_clock::now() - start;
  helper.join();
  ASSERT_TRUE(held.has_value()) << "the fake never held the query";
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr(*held));
  EXPECT_LT(elapsed, std::chrono::seconds(15));
  // One KILL, for that query, which then answered QUERY_WAS_CANCELLED.
  std::vector<ClickHouseKill> kills = fake_->Kills();
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_EQ(kills[0].query_id, *held);
  EXPECT_TRUE(kills[0].was_running);
  // No retry and nothing else: the query and the KILL.
  std::vector<ClickHouseQueryLog> queries = fake_->Queries();
  ASSERT_EQ(queries.size(), 2u);
  EXPECT_EQ(queries[0].query_id, *held);
  EXPECT_EQ(queries[0].outcome, Outcome::kKilled);
  EXPECT_EQ(queries[0].exception_code, 394);
  EXPECT_EQ(queries[0].status, 500);
  EXPECT_THAT(queries[1].sql, HasSubstr("KILL QUERY"));
  EXPECT_TRUE(fake_->WaitUntilIdle(std::chrono::seconds(10)));
}

TEST_F(ClickHouseCancelTest, CancelWhileNextWaitsKillsTheQuery) {
  fake_->set_block_rows(5);
  fake_->StallAfterRows(5);
  auto reader = NewSource()->Query("SELECT id FROM users ORDER BY id", options_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::string query_id = dynamic_cast<ClickHouseRowReader&>(**reader).query_id();
  Row row;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE((*reader)->Next(row).value_or(false));
  // The fake computes nothing more until the query is killed; the flag is
  // set while (or just before) the next Next() waits.
  std::thread helper([&] { cancel_ = true; });
  absl::StatusOr<bool> more = (*reader)->Next(row);
  helper.join();
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kCancelled) << more.status();
  EXPECT_EQ((*reader)->Next(row).status().code(), absl::StatusCode::kCancelled);  // sticky
  reader->reset();
  std::vector<ClickHouseKill> kills = fake_->Kills();
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_EQ(kills[0].query_id, query_id);
  EXPECT_EQ(fake_->Queries().size(), 2u);
  EXPECT_TRUE(fake_->WaitUntilIdle(std::chrono::seconds(10)));
}

TEST_F(ClickHouseCancelTest, AFlagAlreadySetSendsNothing) {
  cancel_ = true;
  auto reader = NewSource()->Query("SELECT id FROM users", options_);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_TRUE(fake_->Queries().empty());
  EXPECT_TRUE(fake_->Kills().empty());
}

TEST_F(ClickHouseCancelTest, CancelDuringARetryBackoffSendsNoFurtherAttempt) {
  fake_->FailNext(FakeClickHouseFailure::Before(202, "Too many simultaneous queries"));
  CancellingClock clock(&cancel_);
  auto reader = NewSource(&clock)->Query("SELECT id FROM users", options_);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  // The rejected attempt only: it had ended, so nothing was killed.
  EXPECT_EQ(fake_->Queries().size(), 1u);
  EXPECT_TRUE(fake_->Kills().empty());
}

TEST_F(ClickHouseCancelTest, AnUnsetFlagReadsEverything) {
  fake_->set_block_rows(7);
  auto reader = NewSource()->Query("SELECT id FROM users", options_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int rows = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_EQ(rows, 100);
  reader->reset();
  EXPECT_TRUE(fake_->Kills().empty());
}

}  // namespace
}  // namespace backflow
