// change_detection: warehouse on the Redshift Data API stops when its run is
// cancelled: the pass's statement that is running (the copy of the model in
// Begin, the candidate keys in ReadCandidates) is cancelled (CancelStatement)
// between DescribeStatement polls, the step returns kCancelled, the pass
// tables are dropped on Close, and the next pass works. Against the fake,
// whose statements answer SUBMITTED and STARTED twice each first.
#include <gtest/gtest.h>

#include <algorithm>

#include "backflow/sources/redshift/fake_redshift_aws_server.h"
#include "backflow/sources/redshift/redshift_data_api.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_pass_cancel.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

class RedshiftDataApiPassCancelTest : public warehouse_testing::WarehousePassCancelTest {
 protected:
  void SetUp() override {
    FakeRedshiftAwsOptions options;
    options.clock = &cancel_clock_;
    options.polls_submitted = 2;  // every statement is polled while it runs
    options.polls_started = 2;
    options.column_types = {{"seen", "timestamp"}};
    fake_ = std::make_unique<FakeRedshiftAwsServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    Exec("CREATE TABLE customers (id varchar(64), plan varchar(16), age bigint, seen timestamp)");
    AddCustomers("customers", "customers");
  }

  std::unique_ptr<Source> MakeSource() override {
    json settings = {{"access_key_id", "AKIDEXAMPLE"},
                     {"secret_access_key", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"},
                     {"region", "us-east-1"},
                     {"database", "dev"},
                     {"cluster_identifier", "examplecluster"},
                     {"db_user", "analytics"},
                     {"base_url", fake_->Url()},
                     {"max_retries", 0},
                     {"state_schema", "bf_state"}};
    return SourceOrFail(RedshiftDataApiSourceDefinition().create(
        settings, ConnectorEnv{http_.get(), &cancel_clock_}));
  }

  void WarehouseExec(const std::string& sql) override { ExpectRan(fake_->Exec(sql), sql); }

  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return TextRowsOf(fake_->Select(sql), sql);
  }

  void CancelDuring(const std::string& part) override {
    cancel_clock_.when = [this, part] {
      std::vector<json> executed = fake_->ExecuteRequests();
      return !executed.empty() && executed.back().value("Sql", "").find(part) != std::string::npos;
    };
  }
  void StopCancelling() override { cancel_clock_.when = nullptr; }
  // The keys are chosen by CREATE TABLE, then INSERT ... SELECT.
  std::string KeysPart() const override { return "_K (record_key)\n"; }

  // Statements CancelStatement stopped while they ran (they ended ABORTED).
  int64_t StatementsCancelled() override {
    std::vector<std::string> cancels = fake_->CancelRequests();
    return std::count_if(cancels.begin(), cancels.end(), [this](const std::string& id) {
      return fake_->StatementStatus(id) == "ABORTED";
    });
  }

  std::unique_ptr<FakeRedshiftAwsServer> fake_;
};

TEST_F(RedshiftDataApiPassCancelTest, CancelDuringBeginCancelsTheCopyOfTheModelAndDropsIt) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCancelDuringBegin(*source);
}

TEST_F(RedshiftDataApiPassCancelTest, CancelDuringReadCandidatesCancelsTheKeysStatement) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCancelDuringReadCandidates(*source);
}

}  // namespace
}  // namespace backflow
