// change_detection: warehouse on BigQuery stops when its run is cancelled:
// the pass's job that is running (the copy of the model in Begin, the
// candidate keys in ReadCandidates) is cancelled (jobs.cancel) between polls,
// the step returns kCancelled, the pass tables are dropped on Close, and the
// next pass works. Against the fake, whose jobs answer "not complete" twice.
#include <gtest/gtest.h>

#include "backflow/sources/bigquery/bigquery_source.h"
#include "backflow/sources/bigquery/fake_bigquery_server.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_pass_cancel.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

class BigQueryPassCancelTest : public warehouse_testing::WarehousePassCancelTest {
 protected:
  void SetUp() override {
    FakeBigQueryOptions options;
    options.clock = &cancel_clock_;
    options.polls_before_complete = 2;  // every job is polled while it runs
    fake_ = std::make_unique<FakeBigQueryServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    account_key_ = fake_->AddServiceAccount("sync@test-project.iam.gserviceaccount.com");
    ASSERT_TRUE(fake_->CreateDataset("crm", "EU").ok());
    Exec(
        "CREATE TABLE crm.customers (id STRING TEXT, plan STRING TEXT, age INT64, seen TIMESTAMP)");
    AddCustomers("crm.customers", "`test-project.crm.customers`");
  }

  std::unique_ptr<Source> MakeSource() override {
    json settings = {
        {"service_account_key", account_key_}, {"project_id", "test-project"}, {"location", "EU"},
        {"token_url", fake_->TokenUrl()},      {"base_url", fake_->BaseUrl()}, {"max_retries", 0},
        {"state_schema", "bf_state"}};
    return SourceOrFail(
        BigQuerySourceDefinition().create(settings, ConnectorEnv{http_.get(), &cancel_clock_}));
  }

  void WarehouseExec(const std::string& sql) override { ExpectRan(fake_->Exec(sql), sql); }

  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return TextRowsOf(fake_->QueryRows(sql), sql);
  }

  // The job ids of the jobs.query calls whose SQL contains `part`.
  std::vector<std::string> JobsOf(const std::string& part) {
    std::vector<std::string> ids;
    for (const auto& [sql, reply] : Queries()) {
      if (sql.find(part) != std::string::npos)
        ids.push_back(reply["jobReference"].value("jobId", ""));
    }
    return ids;
  }
  // The SQL of each jobs.query call, with its reply.
  std::vector<std::pair<std::string, json>> Queries() {
    return warehouse_testing::SqlSent(fake_->Requests(), "query", "query");
  }

  void CancelDuring(const std::string& part) override {
    part_ = part;
    cancel_clock_.when = [this, part] {
      auto queries = Queries();
      return !queries.empty() && queries.back().first.find(part) != std::string::npos;
    };
  }
  void StopCancelling() override { cancel_clock_.when = nullptr; }

  int64_t StatementsCancelled() override {
    std::vector<FakeBigQueryCancel> cancels = fake_->Cancels();
    if (!cancels.empty() && !part_.empty()) {
      // The last cancel is of the job of the statement cancelled, in the
      // source's location, and no poll of it followed.
      std::vector<std::string> jobs = JobsOf(part_);
      if (jobs.empty()) {
        ADD_FAILURE() << "no job ran " << part_;
        return -1;
      }
      EXPECT_EQ(cancels.back().job_id, jobs.back());
      EXPECT_EQ(cancels.back().location, "EU");
      bool after = false;
      for (const FakeBigQueryRequest& r : fake_->Requests()) {
        if (r.target.find(cancels.back().job_id) == std::string::npos) continue;
        if (r.method == "cancel") after = true;
        EXPECT_FALSE(after && r.method == "getQueryResults") << r.target;
      }
    }
    return static_cast<int64_t>(cancels.size());
  }

  std::unique_ptr<FakeBigQueryServer> fake_;
  std::string account_key_;
  std::string part_;
};

TEST_F(BigQueryPassCancelTest, CancelDuringBeginCancelsTheCopyOfTheModelAndDropsIt) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCancelDuringBegin(*source);
}

TEST_F(BigQueryPassCancelTest, CancelDuringReadCandidatesCancelsTheKeysJobAndDropsThePass) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCancelDuringReadCandidates(*source);
}

}  // namespace
}  // namespace backflow
