// change_detection: warehouse on Databricks stops when its run is cancelled:
// the pass's statement that is running (the copy of the model in Begin, the
// candidate keys in ReadCandidates) is cancelled (POST .../cancel) between
// status polls, the step returns kCancelled, the pass tables are dropped on
// Close, and the next pass works. Against the fake, whose statements answer
// PENDING once and RUNNING twice first.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "backflow/sources/databricks/databricks_source.h"
#include "backflow/sources/databricks/fake_databricks_server.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_pass_cancel.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kPat[] = "dapi0123456789abcdef0123456789abcdef";

class DatabricksPassCancelTest : public warehouse_testing::WarehousePassCancelTest {
 protected:
  void SetUp() override {
    FakeDatabricksOptions options;
    options.clock = &cancel_clock_;
    options.pending_polls = 1;  // every statement is polled while it runs
    options.running_polls = 2;
    fake_ = std::make_unique<FakeDatabricksServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    fake_->AddPersonalAccessToken(kPat, "etl@example.com");
    ASSERT_TRUE(fake_->CreateSchema("crm").ok());
    Exec(
        "CREATE TABLE crm.customers (id STRING TEXT, plan STRING TEXT, age BIGINT, "
        "seen TIMESTAMP_NTZ)");
    AddCustomers("crm.customers", "crm.customers");
  }

  std::unique_ptr<Source> MakeSource() override {
    json settings = {{"base_url", fake_->BaseUrl()},
                     {"warehouse_id", "abcdef0123456789"},
                     {"token", kPat},
                     {"catalog", "main"},
                     {"schema", "crm"},
                     {"max_retries", 0},
                     {"state_schema", "bf_state"}};
    return SourceOrFail(
        DatabricksSourceDefinition().create(settings, ConnectorEnv{http_.get(), &cancel_clock_}));
  }

  void WarehouseExec(const std::string& sql) override { ExpectRan(fake_->Exec(sql), sql); }

  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return TextRowsOf(fake_->QueryRows(sql), sql);
  }

  // The statement ids of the executes whose SQL contains `part`.
  std::vector<std::string> StatementsOf(const std::string& part) {
    std::vector<std::string> ids;
    for (const auto& [sql, reply] : Executes()) {
      if (sql.find(part) != std::string::npos) ids.push_back(reply.value("statement_id", ""));
    }
    return ids;
  }
  // The SQL of each statement execute, with its reply.
  std::vector<std::pair<std::string, json>> Executes() {
    return warehouse_testing::SqlSent(fake_->Requests(), "execute", "statement");
  }

  void CancelDuring(const std::string& part) override {
    part_ = part;
    cancel_clock_.when = [this, part] {
      auto executes = Executes();
      return !executes.empty() && executes.back().first.find(part) != std::string::npos;
    };
  }
  void StopCancelling() override { cancel_clock_.when = nullptr; }
  // The keys are chosen by CREATE TABLE, then INSERT ... SELECT.
  std::string KeysPart() const override { return "_K (record_key)\n"; }

  // Cancels of statements still running: a reader dropped before its end
  // also cancels its statement, which may have finished by then.
  int64_t StatementsCancelled() override {
    std::set<std::string> ended;
    std::vector<std::string> cancelled;
    for (const FakeDatabricksRequest& r : fake_->Requests()) {
      json reply = json::parse(r.reply, nullptr, false);
      if (r.method == "cancel") {
        // POST /api/2.0/sql/statements/{id}/cancel
        const std::string prefix = "/api/2.0/sql/statements/";
        const std::string id = r.target.substr(prefix.size(), r.target.size() - prefix.size() - 7);
        if (ended.count(id) == 0) cancelled.push_back(id);
        // No poll of it follows (checked below).
        ended.insert(id);
        continue;
      }
      if (!reply.is_object() || !reply.contains("status")) continue;
      const std::string state = reply["status"].value("state", "");
      const std::string id = reply.value("statement_id", "");
      if (r.method == "status" && std::count(cancelled.begin(), cancelled.end(), id) != 0) {
        ADD_FAILURE() << "polled after its cancel: " << id;
      }
      if (state != "PENDING" && state != "RUNNING") ended.insert(id);
    }
    if (!cancelled.empty() && !part_.empty()) {
      // The last statement cancelled is the one the cancel was meant for.
      std::vector<std::string> ids = StatementsOf(part_);
      EXPECT_FALSE(ids.empty()) << "no statement ran " << part_;
      if (!ids.empty()) {
        EXPECT_EQ(cancelled.back(), ids.back());
      }
    }
    return static_cast<int64_t>(cancelled.size());
  }

  std::unique_ptr<FakeDatabricksServer> fake_;
  std::string part_;
};

TEST_F(DatabricksPassCancelTest, CancelDuringBeginCancelsTheCopyOfTheModelAndDropsIt) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCancelDuringBegin(*source);
}

TEST_F(DatabricksPassCancelTest, CancelDuringReadCandidatesCancelsTheKeysStatementAndDropsThePass) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCancelDuringReadCandidates(*source);
}

}  // namespace
}  // namespace backflow
