// End-to-end: the real `backflow` binary reads a model from Databricks (the
// SQLite-backed fake of the Statement Execution API, its OAuth token endpoint
// and the presigned storage behind external links, on loopback) and syncs it
// to a protocol-faithful webhook receiver; the receiver's state must equal
// the rows the fake holds, after changes too.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <map>

#include "backflow/sources/databricks/fake_databricks_server.h"
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

constexpr char kPat[] = "dapie2e0123456789abcdef0123456789ab";
constexpr char kClientId[] = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
constexpr char kClientSecret[] = "dosee2e0123456789abcdef";
constexpr char kWarehouse[] = "abcdef0123456789";

class DatabricksE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeDatabricksOptions options;
    options.chunk_rows = 40;
    fake_ = std::make_unique<FakeDatabricksServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    fake_->AddPersonalAccessToken(kPat, "analyst@example.com");
    fake_->AddServicePrincipal(kClientId, kClientSecret);
    setenv("BACKFLOW_E2E_DBX_TOKEN", kPat, 1);
    setenv("BACKFLOW_E2E_DBX_CLIENT_SECRET", kClientSecret, 1);
    ASSERT_TRUE(fake_->CreateSchema("crm").ok());
    Exec(
        "CREATE TABLE crm.customers (id BIGINT, email STRING TEXT, plan STRING TEXT, ltv DECIMAL "
        "TEXT(20,2), updated_at TIMESTAMP, tags TEXT)");
    fake_->SetColumnType("tags", "ARRAY<STRING>");
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
                      "'{0}12345678901.5{2}', '2024-06-{3:02} 08:{4:02}:00.12345{5}', '{6}')",
                      i, i % 3 == 0 ? "pro" : "free", i % 10, i % 28 + 1, i % 60, i % 9 + 1,
                      i % 4 == 0 ? "[]" : fmt::format(R"(["t{}","vip"])", i % 5)));
    }
    Exec("COMMIT");
  }

  // `auth` is the credentials' settings; `extra` one more source setting.
  void WriteWorkspace(
      const std::string& sql =
          "SELECT id, email, plan, ltv, updated_at, tags FROM "
          "main.crm.customers",
      const std::vector<std::string>& auth = {"token: ${env:BACKFLOW_E2E_DBX_TOKEN}"},
      const std::string& extra = "disposition: external_links") {
    e2e::WarehouseWorkspace w;
    w.source = {"type: databricks", "host: " + fake_->BaseUrl(), "warehouse_id: " + warehouse_,
                "catalog: main", "schema: crm"};
    w.source.insert(w.source.end(), auth.begin(), auth.end());
    w.source.push_back(extra);
    w.source.push_back("max_retries: 1");
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
          {"customer_id", r["id"]}, {"email", r["email"]},
          {"plan", r["plan"]},      {"ltv", json::parse(r["ltv"].get<std::string>())},
          {"updated_at", ts + "Z"}, {"tags", json::parse(r["tags"].get<std::string>())}};
    }
    return out;
  }

  testing::ScratchDir scratch_{"dbx-e2e"};
  const std::string dir_ = scratch_.string();
  std::string warehouse_ = kWarehouse;
  std::unique_ptr<FakeDatabricksServer> fake_;
  std::unique_ptr<WebhookReceiver> receiver_;
};

TEST_F(DatabricksE2eTest, TestConnectionAndPreview) {
  CliResult t = RunCli(dir_, {"test-connection", "warehouse", "--json"});
  ASSERT_EQ(t.exit_code, 0) << t.out << t.err;
  json checked = json::parse(t.LastLine());
  EXPECT_EQ(checked["ok"], true);
  EXPECT_EQ(checked["type"], "databricks");

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
  EXPECT_EQ(preview["columns"][3]["source_type"], "DECIMAL(20,2)");
  EXPECT_EQ(preview["columns"][5]["source_type"], "ARRAY<STRING>");
  ASSERT_EQ(preview["rows"].size(), 10u);
  EXPECT_EQ(preview["rows"][0], json::parse(R"([1,"user1@example.com","free",112345678901.51,
                            "2024-06-02T08:01:00.123452Z",["t1","vip"]])"));
  // The preview ran the wrapped model with the source's defaults.
  bool wrapped = false;
  for (const auto& r : fake_->Requests()) {
    if (r.method != "execute") continue;
    json body = json::parse(r.body);
    EXPECT_EQ(body["warehouse_id"], kWarehouse);
    EXPECT_EQ(body["catalog"], "main");
    EXPECT_EQ(body["format"], "JSON_ARRAY");
    wrapped |= body["statement"].get<std::string>().find("LIMIT 10") != std::string::npos;
  }
  EXPECT_TRUE(wrapped);
  for (const auto& r : fake_->Requests()) {
    if (r.method == "download") {
      EXPECT_FALSE(r.had_authorization);
    }
  }

  // Actionable failures: a refused token, a missing warehouse, a broken model.
  setenv("BACKFLOW_E2E_DBX_TOKEN", "dapi-revoked", 1);
  t = RunCli(dir_, {"test-connection", "warehouse"});
  EXPECT_EQ(t.exit_code, 1);
  EXPECT_NE(t.out.find("check `token`"), std::string::npos) << t.out;
  setenv("BACKFLOW_E2E_DBX_TOKEN", kPat, 1);

  warehouse_ = "deadbeef00000000";
  WriteWorkspace("SELECT id FROM main.crm.customers");
  t = RunCli(dir_, {"test-connection", "warehouse"});
  EXPECT_EQ(t.exit_code, 1) << t.out << t.err;
  EXPECT_NE(t.out.find("warehouse_id \"deadbeef00000000\""), std::string::npos) << t.out;
  warehouse_ = kWarehouse;

  WriteWorkspace("SELECT id, email FROM main.crm.customerz");
  p = RunCli(dir_, {"preview", "customers"});
  EXPECT_EQ(p.exit_code, 1);
  EXPECT_NE(p.err.find("[TABLE_OR_VIEW_NOT_FOUND]"), std::string::npos) << p.err;
  EXPECT_EQ(receiver_->request_count(), 0);
}

TEST_F(DatabricksE2eTest, SyncsEveryChunkThroughExternalLinksThenExactlyTheChanges) {
  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["extracted"], 230);
  EXPECT_EQ(s["added"], 230);
  EXPECT_EQ(s["succeeded"], 230);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(fake_->CountRequests("download", 200), 6);  // 6 chunks of 40 rows
  EXPECT_EQ(fake_->CountRequests("chunk"), 5);
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
  std::map<std::string, json> model = Model();
  EXPECT_EQ(receiver_->State(), model);
  EXPECT_EQ(model["231"]["updated_at"], "2024-07-01T00:00:00Z");

  // Nothing changed: nothing sent.
  int64_t sent = receiver_->request_count();
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(receiver_->request_count(), sent);
}

TEST_F(DatabricksE2eTest, OAuthInlineAndAnExtractionCutShortSendsNothing) {
  WriteWorkspace("SELECT id, email, plan, ltv, updated_at, tags FROM main.crm.customers",
                 {fmt::format("client_id: {}", kClientId),
                  "client_secret: ${env:BACKFLOW_E2E_DBX_CLIENT_SECRET}"},
                 "disposition: inline");
  ASSERT_EQ(Sync().exit_code, 0);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(fake_->CountRequests("token"), 1);
  EXPECT_EQ(fake_->CountRequests("download"), 0);
  int64_t sent = receiver_->request_count();

  Exec("DELETE FROM crm.customers WHERE id > 200");  // would be 30 deletes
  // Chunk 3 keeps failing: the run must not mistake the rows it got for the model.
  FakeDatabricksFault fault = FakeDatabricksFault::Unavailable("chunk", 2);
  fault.skip = 1;
  fake_->AddFault(fault);
  CliResult r = Sync();
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "failed");
  EXPECT_NE(s["error"].get<std::string>().find("TEMPORARILY_UNAVAILABLE"), std::string::npos)
      << s.dump();
  EXPECT_EQ(receiver_->request_count(), sent);
  EXPECT_EQ(fake_->Cancels().size(), 1u);

  fake_->ClearFaults();
  // A rate-limited submit and a statement that fails transiently are retried within the run.
  fake_->AddFault(FakeDatabricksFault::RateLimit("execute", 1, "1"));
  fake_->FailNextStatement({"TEMPORARILY_UNAVAILABLE", "warehouse restarting", ""});
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Summary(r)["deleted"], 30);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(receiver_->State().size(), 200u);
}

TEST_F(DatabricksE2eTest, WarehouseChangeDetectionThroughTheBinary) {
  std::ofstream(dir_ + "/backflow.yaml")
      << fmt::format(R"(
state: sqlite:.backflow/state.db
sources:
  - name: warehouse
    type: databricks
    host: {}
    warehouse_id: "{}"
    catalog: main
    schema: crm
    token: ${{env:BACKFLOW_E2E_DBX_TOKEN}}
    max_retries: 1
    state_schema: backflow_e2e_state
models:
  - name: customers
    source: warehouse
    sql: SELECT id, email, plan FROM main.crm.customers
    primary_key: id
    change_detection: warehouse
destinations:
  - name: hook
    type: webhook
    settings: {{ url: "{}", signing_secret: "${{env:HOOK_SECRET}}" }}
mappings:
  - name: to_hook
    model: customers
    destination: hook
    action: send_batch
    batch_size: 100
    fields: {{ id: id, email: email, plan: plan }}
)",
                     fake_->BaseUrl(), kWarehouse, receiver_->Url("/ingest"));
  CliResult valid = RunCli(dir_, {"validate"});
  EXPECT_EQ(valid.exit_code, 0) << valid.out << valid.err;
  CliResult r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["extracted"], 230);
  EXPECT_EQ(s["added"], 230);
  EXPECT_EQ(receiver_->State().size(), 230u);
  auto stored = fake_->QueryRows("SELECT count(*) AS n FROM backflow_e2e_state.checkpoints");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)[0]["n"], 230);

  // Nothing changed: nothing leaves Databricks.
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["unchanged"], 230);

  Exec("UPDATE crm.customers SET plan = 'enterprise' WHERE id IN (2, 4)");
  Exec("UPDATE crm.customers SET ltv = '1.00' WHERE id = 6");  // not in the model
  Exec("DELETE FROM crm.customers WHERE id = 8");
  Exec(
      "INSERT INTO crm.customers VALUES (1000, 'late@example.com', 'free', '0', "
      "'2024-07-01 00:00:00', '[]')");
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 3);  // 2, 4 and 1000: only those left Databricks
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 2);
  EXPECT_EQ(s["deleted"], 1);
  EXPECT_EQ(s["unchanged"], 227);
  auto state = receiver_->State();
  EXPECT_EQ(state.size(), 230u);
  EXPECT_EQ(state.count("8"), 0u);
  EXPECT_EQ(state["2"]["plan"], "enterprise");
  EXPECT_EQ(state["1000"]["email"], "late@example.com");

  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["unchanged"], 230);
  // Every value went as a named parameter; no pass table is left.
  for (const auto& req : fake_->Requests()) {
    if (req.method != "execute") continue;
    json body = json::parse(req.body);
    for (const json& p : body.value("parameters", json::array())) EXPECT_EQ(p["type"], "STRING");
  }
  auto tables = fake_->QueryRows(
      "SELECT name FROM backflow_e2e_state.sqlite_master WHERE type = 'table' ORDER BY name");
  ASSERT_TRUE(tables.ok()) << tables.status();
  EXPECT_EQ(*tables, json::parse(R"([{"name":"CHECKPOINTS"},{"name":"PASS_TABLES"}])"));
}

}  // namespace
}  // namespace backflow
