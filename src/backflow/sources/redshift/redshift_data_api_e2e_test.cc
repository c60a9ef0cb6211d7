// End-to-end: the real `backflow` binary reads a model through the Redshift
// Data API (the SQLite-backed fake on loopback, which checks every SigV4
// signature) and syncs it to a protocol-faithful webhook receiver; the
// receiver's state must equal the table, after changes too.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <map>

#include "backflow/sources/redshift/fake_redshift_aws_server.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "warehouse_e2e.h"

namespace backflow {
namespace {

using e2e::CliResult;
using e2e::RunCli;
using e2e::Summary;
using json = nlohmann::json;

constexpr char kAwsSecret[] = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

class RedshiftDataApiE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeRedshiftAwsOptions options;
    options.page_rows = 40;
    options.column_types = {{"ltv", "numeric"}, {"updated_at", "timestamptz"}};
    fake_ = std::make_unique<FakeRedshiftAwsServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    Exec(
        "CREATE TABLE customers (id bigint, email varchar(256), plan varchar(16), ltv text, "
        "updated_at text, attrs super)");
    Insert(1, 230);
    setenv("BACKFLOW_E2E_AWS_SECRET", kAwsSecret, 1);

    receiver_ = e2e::StartWebhookReceiver(/*signed_requests=*/true);
    ASSERT_NE(receiver_, nullptr);
    WriteWorkspace();
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(fake_->Exec(sql).ok()) << sql; }

  static json Row(int i, const std::string& plan) {
    return {{"customer_id", i},
            {"email", fmt::format("user{}@example.com", i)},
            {"plan", plan},
            {"ltv", json::parse(fmt::format("{}12345678901.5{}", i, i % 10))},
            {"updated_at",
             fmt::format("2024-06-{:02}T08:{:02}:00.12345{}Z", i % 28 + 1, i % 60, i % 9 + 1)},
            {"attrs", i % 4 == 0 ? json() : json{{"tier", i % 5}}}};
  }

  void Insert(int from, int to) {
    Exec("BEGIN");
    for (int i = from; i <= to; ++i) {
      Exec(fmt::format(
          "INSERT INTO customers VALUES ({0}, 'user{0}@example.com', '{1}', '{0}12345678901.5{2}', "
          "'2024-06-{3:02} 08:{4:02}:00.12345{5}+00', {6})",
          i, i % 3 == 0 ? "pro" : "free", i % 10, i % 28 + 1, i % 60, i % 9 + 1,
          i % 4 == 0 ? "NULL" : fmt::format("'{{\"tier\": {}}}'", i % 5)));
      expected_[std::to_string(i)] = Row(i, i % 3 == 0 ? "pro" : "free");
    }
    Exec("COMMIT");
  }

  void WriteWorkspace(const std::string& sql =
                          "SELECT id, email, plan, ltv, updated_at, attrs "
                          "FROM customers") {
    e2e::WarehouseWorkspace w;
    w.source = {"type: redshift_data_api",
                "access_key_id: AKIDEXAMPLE",
                "secret_access_key: ${env:BACKFLOW_E2E_AWS_SECRET}",
                "region: us-east-1",
                "database: dev",
                "cluster_identifier: examplecluster",
                "db_user: analytics",
                "base_url: " + fake_->Url(),
                "max_retries: 2"};
    w.model_sql = sql;
    w.hook_url = receiver_->Url("/ingest");
    w.signed_hook = true;
    w.fields =
        "customer_id: id, email: email, plan: plan, ltv: ltv, updated_at: updated_at, attrs: "
        "attrs";
    e2e::WriteWarehouseWorkspace(dir_, w);
  }

  CliResult Sync() { return e2e::SyncCustomers(dir_); }

  testing::ScratchDir scratch_{"rsdata-e2e"};
  const std::string dir_ = scratch_.string();
  std::unique_ptr<FakeRedshiftAwsServer> fake_;
  std::unique_ptr<WebhookReceiver> receiver_;
  std::map<std::string, json> expected_;
};

TEST_F(RedshiftDataApiE2eTest, TestConnectionAndPreview) {
  CliResult t = RunCli(dir_, {"test-connection", "warehouse", "--json"});
  ASSERT_EQ(t.exit_code, 0) << t.out << t.err;
  json checked = json::parse(t.LastLine());
  EXPECT_EQ(checked["ok"], true);
  EXPECT_EQ(checked["type"], "redshift_data_api");

  CliResult p = RunCli(dir_, {"preview", "customers", "--json"});
  ASSERT_EQ(p.exit_code, 0) << p.out << p.err;
  json preview = json::parse(p.LastLine());
  std::vector<std::pair<std::string, std::string>> columns;
  for (const json& c : preview["columns"]) columns.emplace_back(c["name"], c["type"]);
  EXPECT_EQ(columns, (std::vector<std::pair<std::string, std::string>>{{"id", "integer"},
                                                                       {"email", "string"},
                                                                       {"plan", "string"},
                                                                       {"ltv", "decimal"},
                                                                       {"updated_at", "timestamp"},
                                                                       {"attrs", "json"}}));
  ASSERT_EQ(preview["rows"].size(), 10u);
  EXPECT_EQ(preview["rows"][0], json::parse(R"([1,"user1@example.com","free",112345678901.51,
                            "2024-06-02T08:01:00.123452Z",{"tier":1}])"));
  EXPECT_EQ(fake_->auth_refusals(), 0);

  // A wrong secret fails with a message that says what to fix (and not the secret).
  setenv("BACKFLOW_E2E_AWS_SECRET", "not-the-secret", 1);
  t = RunCli(dir_, {"test-connection", "warehouse"});
  EXPECT_EQ(t.exit_code, 1);
  EXPECT_NE(t.out.find("secret_access_key"), std::string::npos) << t.out;
  EXPECT_EQ(t.out.find("not-the-secret"), std::string::npos) << t.out;
  EXPECT_EQ(t.err.find("not-the-secret"), std::string::npos) << t.err;
  setenv("BACKFLOW_E2E_AWS_SECRET", kAwsSecret, 1);

  // SQL Redshift rejects: the statement's Error text.
  WriteWorkspace("SELECT id, email FROM customerz");
  p = RunCli(dir_, {"preview", "customers"});
  EXPECT_EQ(p.exit_code, 1);
  EXPECT_NE(p.err.find("no such table: customerz"), std::string::npos) << p.err;
  EXPECT_EQ(receiver_->request_count(), 0);
}

TEST_F(RedshiftDataApiE2eTest, SyncsEveryPageThenExactlyTheChanges) {
  fake_->InjectError({"GetStatementResult", 1, 400, "ThrottlingException", "Rate exceeded"});
  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["extracted"], 230);
  EXPECT_EQ(s["added"], 230);
  EXPECT_EQ(receiver_->State(), expected_);
  EXPECT_EQ(fake_->Calls("GetStatementResult"), 7);  // 6 pages of 40 rows, one throttled
  EXPECT_TRUE(fake_->CancelRequests().empty());

  Insert(231, 231);
  Exec("UPDATE customers SET plan = 'enterprise' WHERE id = 7");
  expected_["7"]["plan"] = "enterprise";
  Exec("DELETE FROM customers WHERE id IN (9, 10)");
  expected_.erase("9");
  expected_.erase("10");
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["deleted"], 2);
  EXPECT_EQ(receiver_->State(), expected_);

  // A statement that keeps failing on the server side sends nothing.
  int64_t sent = receiver_->request_count();
  fake_->InjectError({"DescribeStatement", 10, 500, "InternalServerException", "oops"});
  r = Sync();
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_EQ(Summary(r)["status"], "failed");
  EXPECT_EQ(receiver_->request_count(), sent);
}

}  // namespace
}  // namespace backflow
