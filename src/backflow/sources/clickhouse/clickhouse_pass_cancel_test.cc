// change_detection: warehouse on ClickHouse stops when its run is cancelled:
// the pass's query that is running (the copy of the model in Begin, the
// candidate keys in ReadCandidates) is killed (KILL QUERY on a second
// request, from the source's watcher), the step returns kCancelled, the pass
// tables are dropped on Close, and the next pass works. Against the fake,
// which holds the query before its response (as one still computing) until
// killed; the flag is set once the fake holds it.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>

#include "backflow/sources/clickhouse/clickhouse_source.h"
#include "backflow/sources/clickhouse/fake_clickhouse_server.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_pass_cancel.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;
using Outcome = ClickHouseQueryLog::Outcome;

class ClickHousePassCancelTest : public warehouse_testing::WarehousePassCancelTest {
 protected:
  void SetUp() override {
    fake_ = std::make_unique<FakeClickHouseServer>();
    ASSERT_TRUE(fake_->Start().ok());
    ASSERT_TRUE(fake_
                    ->CreateTable("default", "customers",
                                  {{"id", "Nullable(String)"},
                                   {"plan", "Nullable(String)"},
                                   {"age", "Int64"},
                                   {"seen", "Nullable(DateTime)"}})
                    .ok());
    AddCustomers("customers", "customers");
  }

  void TearDown() override { StopCancelling(); }

  std::unique_ptr<Source> MakeSource() override {
    json settings = {
        {"base_url", fake_->BaseUrl()}, {"max_retries", 0}, {"state_schema", "bf_state"}};
    return SourceOrFail(
        ClickHouseSourceDefinition().create(settings, ConnectorEnv{http_.get(), &cancel_clock_}));
  }

  void WarehouseExec(const std::string& sql) override { ExpectRan(fake_->Exec(sql), sql); }

  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return TextRowsOf(fake_->Select(sql), sql);
  }

  // The fake holds the query containing `part`; once it does (an event, not
  // a timer), the flag is set.
  void CancelDuring(const std::string& part) override {
    part_ = part;
    held_.reset();
    fake_->StallBeforeHeaders(true, part);
    helper_ = std::thread([this] {
      held_ = fake_->WaitForHeldQuery(std::chrono::seconds(30));
      cancel_ = true;
    });
  }
  void StopCancelling() override {
    if (helper_.joinable()) helper_.join();
    fake_->StallBeforeHeaders(false);
  }

  int64_t StatementsCancelled() override {
    std::vector<ClickHouseKill> kills = fake_->Kills();
    if (!kills.empty() && held_) {
      // The last KILL named the held query, which was running and ended
      // killed (QUERY_WAS_CANCELLED).
      EXPECT_EQ(kills.back().query_id, *held_);
      EXPECT_TRUE(kills.back().was_running);
      bool found = false;
      for (const ClickHouseQueryLog& q : fake_->Queries()) {
        if (q.query_id != *held_ || q.sql.find("KILL") != std::string::npos) continue;
        found = true;
        EXPECT_NE(q.sql.find(part_), std::string::npos) << q.sql;
        EXPECT_EQ(q.outcome, Outcome::kKilled);
        EXPECT_EQ(q.exception_code, 394);
      }
      EXPECT_TRUE(found);
    }
    return static_cast<int64_t>(
        std::count_if(kills.begin(), kills.end(), [](const auto& k) { return k.was_running; }));
  }

  std::string KeysPart() const override { return "_K ENGINE"; }

  std::unique_ptr<FakeClickHouseServer> fake_;
  std::string part_;
  std::optional<std::string> held_;
  std::thread helper_;
};

TEST_F(ClickHousePassCancelTest, CancelDuringBeginKillsTheCopyOfTheModelAndDropsIt) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCancelDuringBegin(*source);
  EXPECT_TRUE(fake_->WaitUntilIdle(std::chrono::seconds(10)));
}

TEST_F(ClickHousePassCancelTest, CancelDuringReadCandidatesKillsTheKeysQueryAndDropsThePass) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCancelDuringReadCandidates(*source);
  EXPECT_TRUE(fake_->WaitUntilIdle(std::chrono::seconds(10)));
}

}  // namespace
}  // namespace backflow
