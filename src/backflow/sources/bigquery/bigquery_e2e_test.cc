// End-to-end: the real `backflow` binary reads a model from BigQuery (the
// SQLite-backed fake of the token endpoint and the REST query API, on
// loopback) and syncs it to a protocol-faithful webhook receiver; the
// receiver's state must equal the rows the fake holds, after changes too;
// also with change_detection: warehouse (the checkpoint in BigQuery).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <iterator>
#include <map>

#include "backflow/sources/bigquery/fake_bigquery_server.h"
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

constexpr char kAccount[] = "backflow@analytics-prod.iam.gserviceaccount.com";

class BigQueryE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeBigQueryOptions options;
    options.project_id = "analytics-prod";
    fake_ = std::make_unique<FakeBigQueryServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    setenv("BACKFLOW_E2E_BQ_KEY", fake_->AddServiceAccount(kAccount).c_str(), 1);
    ASSERT_TRUE(fake_->CreateDataset("crm", "EU").ok());
    Exec(
        "CREATE TABLE crm.customers (id INT64, email STRING TEXT, plan STRING TEXT, ltv NUMERIC "
        "TEXT, updated_at TIMESTAMP TEXT, tags JSON TEXT)");
    fake_->SetColumnSchema("tags", {{"type", "STRING"}, {"mode", "REPEATED"}});
    InsertCustomers(1, 230);

    receiver_ = e2e::StartWebhookReceiver(/*signed_requests=*/true);
    ASSERT_NE(receiver_, nullptr);
    WriteWorkspace();
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(fake_->Exec(sql).ok()) << sql; }

  void InsertCustomers(int from, int to) {
    Exec("BEGIN");
    for (int i = from; i <= to; ++i) {
      Exec(
          fmt::format("INSERT INTO crm.customers VALUES ({0}, 'user{0}@example.com', '{1}', "
                      "'{0}12345678901234.5', '2024-06-{2:02} 08:{3:02}:00.12345{4}', '{5}')",
                      i, i % 3 == 0 ? "pro" : "free", i % 28 + 1, i % 60, i % 9 + 1,
                      i % 4 == 0 ? "[]" : fmt::format(R"(["t{}","vip"])", i % 5)));
    }
    Exec("COMMIT");
  }

  void WriteWorkspace(const std::string& sql =
                          "SELECT id, email, plan, ltv, updated_at, tags FROM "
                          "`analytics-prod.crm.customers`",
                      const std::string& key_env = "BACKFLOW_E2E_BQ_KEY") {
    e2e::WarehouseWorkspace w;
    w.source = {"type: bigquery",
                fmt::format("service_account_key: ${{env:{}}}", key_env),
                "location: EU",
                "max_results: 40",
                "max_retries: 1",
                "token_url: " + fake_->TokenUrl(),
                "base_url: " + fake_->BaseUrl()};
    w.model_sql = sql;
    w.hook_url = receiver_->Url("/ingest");
    w.signed_hook = true;
    w.fields =
        "customer_id: id, email: email, plan: plan, ltv: ltv, updated_at: updated_at, tags: tags";
    e2e::WriteWarehouseWorkspace(dir_, w);
  }

  CliResult Sync() { return e2e::SyncCustomers(dir_); }

  // The model as the receiver should hold it, read from the fake's SQLite.
  std::map<std::string, json> Model() {
    std::map<std::string, json> out;
    absl::StatusOr<json> rows =
        fake_->QueryRows("SELECT id, email, plan, ltv, updated_at, tags FROM crm.customers");
    EXPECT_TRUE(rows.ok()) << rows.status();
    if (!rows.ok()) return out;
    for (const json& r : *rows) {
      std::string ts = r["updated_at"];  // "2024-06-01 08:01:00.123452" in UTC
      ts[10] = 'T';
      out[std::to_string(r["id"].get<int64_t>())] = {
          {"customer_id", r["id"]},
          {"email", r["email"]},
          {"plan", r["plan"]},
          {"ltv", json::parse(r["ltv"].get<std::string>())},
          {"updated_at", ts + "Z"},
          {"tags",
           r["tags"].is_null() ? json::array() : json::parse(r["tags"].get<std::string>())}};
    }
    return out;
  }

  testing::ScratchDir scratch_{"bq-e2e"};
  const std::string dir_ = scratch_.string();
  std::unique_ptr<FakeBigQueryServer> fake_;
  std::unique_ptr<WebhookReceiver> receiver_;
};

TEST_F(BigQueryE2eTest, TestConnectionAndPreview) {
  CliResult t = RunCli(dir_, {"test-connection", "warehouse", "--json"});
  ASSERT_EQ(t.exit_code, 0) << t.out << t.err;
  json checked = json::parse(t.LastLine());
  EXPECT_EQ(checked["ok"], true);
  EXPECT_EQ(checked["type"], "bigquery");

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
                                                                       {"tags", "json"}}));
  EXPECT_EQ(preview["columns"][5]["source_type"], "STRING REPEATED");
  ASSERT_EQ(preview["rows"].size(), 10u);
  EXPECT_EQ(preview["rows"][0], json::parse(R"([1,"user1@example.com","free",112345678901234.5,
                            "2024-06-02T08:01:00.123452Z",["t1","vip"]])"));
  // The preview ran the wrapped model in the dataset's location.
  std::vector<FakeBigQueryRequest> requests = fake_->Requests();
  bool wrapped = false;
  for (const auto& r : requests) {
    if (r.method != "query") continue;
    json body = json::parse(r.body);
    EXPECT_EQ(body["location"], "EU");
    wrapped |= body["query"].get<std::string>().find("LIMIT 10") != std::string::npos;
  }
  EXPECT_TRUE(wrapped);

  // Actionable failures: a key the token endpoint refuses, a broken model.
  setenv("BACKFLOW_E2E_BQ_OTHER_KEY",
         FakeBigQueryServer().AddServiceAccount("ghost@elsewhere.iam.gserviceaccount.com").c_str(),
         1);
  WriteWorkspace("SELECT id FROM crm.customers", "BACKFLOW_E2E_BQ_OTHER_KEY");
  t = RunCli(dir_, {"test-connection", "warehouse"});
  EXPECT_EQ(t.exit_code, 1);
  EXPECT_NE(t.out.find("invalid_grant"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("service_account_key"), std::string::npos) << t.out;

  WriteWorkspace("SELECT id, email FROM crm.customerz");
  p = RunCli(dir_, {"preview", "customers"});
  EXPECT_EQ(p.exit_code, 1);
  EXPECT_NE(p.err.find("Not found: Table analytics-prod:crm.customerz"), std::string::npos)
      << p.err;
  EXPECT_EQ(receiver_->request_count(), 0);
}

TEST_F(BigQueryE2eTest, SyncsEveryPageThenExactlyTheChanges) {
  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["extracted"], 230);
  EXPECT_EQ(s["added"], 230);
  EXPECT_EQ(s["succeeded"], 230);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(fake_->CountRequests("getQueryResults"), 5);  // pages 2..6 of 40 rows
  EXPECT_TRUE(fake_->Cancels().empty());

  Exec(
      "INSERT INTO crm.customers VALUES (231, 'new@example.com', 'pro', '5', "
      "'2024-07-01 00:00:00', '[\"new\"]')");
  Exec("UPDATE crm.customers SET plan = 'enterprise', tags = '[\"big\"]' WHERE id = 7");
  Exec("UPDATE crm.customers SET updated_at = '2024-06-30 23:59:59.999999' WHERE id = 8");
  Exec("DELETE FROM crm.customers WHERE id IN (9, 10)");
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 2);
  EXPECT_EQ(s["deleted"], 2);
  EXPECT_EQ(receiver_->State(), Model());

  // Nothing changed: nothing sent.
  int64_t sent = receiver_->request_count();
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(receiver_->request_count(), sent);
}

TEST_F(BigQueryE2eTest, AnExtractionCutShortSendsNothingAndTheNextRunCatchesUp) {
  ASSERT_EQ(Sync().exit_code, 0);
  int64_t sent = receiver_->request_count();
  Exec("DELETE FROM crm.customers WHERE id > 200");  // would be 30 deletes
  // Page 3 keeps failing: the run must not mistake the rows it got for the model.
  FakeBigQueryFault fault = FakeBigQueryFault::BackendError("getQueryResults", 2);
  fault.skip = 1;
  fake_->AddFault(fault);
  CliResult r = Sync();
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "failed");
  EXPECT_NE(s["error"].get<std::string>().find("backendError"), std::string::npos) << s.dump();
  EXPECT_EQ(receiver_->request_count(), sent);
  EXPECT_EQ(fake_->Cancels().size(), 1u);

  fake_->ClearFaults();
  // Rate limits are retried within the run.
  fake_->AddFault(FakeBigQueryFault::RateLimit("query", 1));
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Summary(r)["deleted"], 30);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(receiver_->State().size(), 200u);
}

TEST_F(BigQueryE2eTest, WarehouseModeSyncsOnlyTheChanges) {
  // The same workspace with change_detection: warehouse on the model.
  const std::string path = dir_ + "/backflow.yaml";
  std::string yaml;
  {
    std::ifstream in(path);
    yaml.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const std::string key_line = "    primary_key: id\n";
  const size_t at = yaml.find(key_line);
  ASSERT_NE(at, std::string::npos) << yaml;
  yaml.insert(at + key_line.size(), "    change_detection: warehouse\n");
  std::ofstream(path) << yaml;

  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["added"], 230);
  EXPECT_EQ(receiver_->State(), Model());
  // The checkpoint is in the warehouse, in the dataset made in the source's location.
  absl::StatusOr<json> stored =
      fake_->QueryRows("SELECT count(*) AS n FROM backflow_state.checkpoints");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)[0]["n"], 230);

  // Again: nothing changed, nothing sent, no candidate read.
  int64_t sent = receiver_->request_count();
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 0) << s.dump();
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(s["deleted"], 0);
  EXPECT_EQ(receiver_->request_count(), sent);

  // An update is sent, a delete deleted; only those rows leave BigQuery.
  Exec("UPDATE crm.customers SET plan = 'enterprise' WHERE id = 7");
  Exec("DELETE FROM crm.customers WHERE id = 9");
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["deleted"], 1);
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["extracted"], 1) << s.dump();
  EXPECT_EQ(receiver_->State(), Model());
  stored = fake_->QueryRows(
      "SELECT count(*) AS n FROM backflow_state.sqlite_master WHERE name LIKE 'PASS\\_%' ESCAPE "
      "'\\' AND name <> 'PASS_TABLES'");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)[0]["n"], 0);  // no pass table left behind
}

}  // namespace
}  // namespace backflow
