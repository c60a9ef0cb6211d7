// End-to-end: the real `backflow` binary reads a model from the fake
// Snowflake SQL API (key-pair JWT, async polling, gzip partitions) and syncs
// it to the webhook receiver; after each sync the receiver must hold exactly
// the rows the fake's tables hold.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backflow/sources/snowflake/fake_snowflake_server.h"
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

constexpr char kModelSql[] = "SELECT ID, EMAIL, PLAN, LTV, UPDATED_AT, TRAITS FROM CUSTOMERS";

class SnowflakeE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeSnowflakeOptions options;
    options.rows_per_partition = 25;
    options.still_running_polls = 2;
    fake_ = std::make_unique<FakeSnowflakeServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    auto keys = GenerateRsaKeyPair();
    ASSERT_TRUE(keys.ok());
    FakeSnowflakeUser user;
    user.name = "SYNC_USER";
    user.public_keys_pem = {keys->public_key_pem};
    user.roles = {"PUBLIC", "RETL"};
    fake_->AddUser(user);
    setenv("BACKFLOW_E2E_SNOWFLAKE_KEY", keys->private_key_pem.c_str(), 1);
    ASSERT_TRUE(fake_
                    ->CreateTable("CUSTOMERS", {{"ID", "NUMBER(38,0)"},
                                                {"EMAIL", "VARCHAR(200)"},
                                                {"PLAN", "VARCHAR"},
                                                {"LTV", "NUMBER(12,2)"},
                                                {"UPDATED_AT", "TIMESTAMP_LTZ"},
                                                {"TRAITS", "VARIANT"}})
                    .ok());
    Insert(1, 120);

    receiver_ = e2e::StartWebhookReceiver(/*signed_requests=*/false);
    ASSERT_NE(receiver_, nullptr);
    WriteConfig();
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(fake_->Exec(sql).ok()) << sql; }

  void Insert(int from, int to) {
    for (int i = from; i <= to; ++i) {
      Exec(fmt::format(
          "INSERT INTO CUSTOMERS VALUES ({0}, 'user{0}@example.com', '{1}', '{2}.{3:02d}', "
          "'2024-06-{4:02d} 10:{5:02d}:00', '{{\"seats\":{0},\"tags\":[\"a\",\"b\"]}}')",
          i, i % 3 == 0 ? "pro" : "free", i * 10, i % 100, 1 + i % 28, i % 60));
    }
  }

  void WriteConfig() {
    e2e::WarehouseWorkspace w;
    w.source = {"type: snowflake",
                "account: myorg-myaccount",
                "user: sync_user",
                "private_key: ${env:BACKFLOW_E2E_SNOWFLAKE_KEY}",
                "warehouse: COMPUTE_WH",
                "database: ANALYTICS",
                "schema: PUBLIC",
                "role: RETL",
                fmt::format("base_url: \"{}\"", fake_->BaseUrl()),
                "max_retries: 1"};
    w.model_sql = kModelSql;
    w.primary_key = "ID";
    w.hook_url = receiver_->Url("/ingest");
    w.batch_size = 40;
    w.fields =
        "customer_id: ID, email: EMAIL, plan: PLAN, ltv: LTV, updated_at: UPDATED_AT, traits: "
        "TRAITS";
    e2e::WriteWarehouseWorkspace(dir_, w);
  }

  // The fake's rows as the receiver should hold them, by key.
  std::map<std::string, json> Model() {
    auto rows = fake_->Select(kModelSql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    std::map<std::string, json> out;
    if (!rows.ok()) return out;
    for (const auto& r : *rows) {
      std::string at = r[4].get<std::string>();
      at[10] = 'T';
      out[std::to_string(r[0].get<int64_t>())] = {
          {"customer_id", r[0]},    {"email", r[1]},
          {"plan", r[2]},           {"ltv", json::parse(r[3].get<std::string>())},
          {"updated_at", at + "Z"}, {"traits", json::parse(r[5].get<std::string>())}};
    }
    return out;
  }

  CliResult Sync() { return e2e::SyncCustomers(dir_); }

  testing::ScratchDir scratch_{"snowflake-e2e"};
  const std::string dir_ = scratch_.string();
  std::unique_ptr<FakeSnowflakeServer> fake_;
  std::unique_ptr<WebhookReceiver> receiver_;
};

TEST_F(SnowflakeE2eTest, TestConnectionAndPreview) {
  CliResult r = RunCli(dir_, {"test-connection", "warehouse", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json check = json::parse(r.LastLine());
  EXPECT_EQ(check["ok"], true);
  EXPECT_EQ(check["type"], "snowflake");

  r = RunCli(dir_, {"preview", "customers", "--limit", "30", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json preview = json::parse(r.LastLine());
  std::vector<std::pair<std::string, std::string>> columns;
  for (const json& c : preview["columns"]) columns.emplace_back(c["name"], c["type"]);
  EXPECT_EQ(columns, (std::vector<std::pair<std::string, std::string>>{{"ID", "integer"},
                                                                       {"EMAIL", "string"},
                                                                       {"PLAN", "string"},
                                                                       {"LTV", "decimal"},
                                                                       {"UPDATED_AT", "timestamp"},
                                                                       {"TRAITS", "json"}}));
  EXPECT_EQ(preview["columns"][3]["source_type"], "NUMBER(12,2)");
  ASSERT_EQ(preview["rows"].size(), 30u);  // across two partitions
  EXPECT_EQ(preview["rows"][0],
            json::parse(R"([1,"user1@example.com","free",10.01,"2024-06-02T10:01:00Z",
                            {"seats":1,"tags":["a","b"]}])"));
  EXPECT_EQ(fake_->CountRequests("partition=1", 200), 1);
  EXPECT_TRUE(fake_->LastSubmitBody()["statement"].get<std::string>().find("LIMIT 30") !=
              std::string::npos);

  // A wrong warehouse name is reported with what to fix.
  std::string config;
  {
    std::ifstream in(dir_ + "/backflow.yaml");
    config.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  config.replace(config.find("COMPUTE_WH"), 10, "compute_wh");
  std::ofstream(dir_ + "/backflow.yaml") << config;
  r = RunCli(dir_, {"test-connection", "warehouse", "--json"});
  EXPECT_NE(r.exit_code, 0);
  check = json::parse(r.LastLine());
  EXPECT_EQ(check["ok"], false);
  EXPECT_NE(check["error"].get<std::string>().find("warehouse \"compute_wh\""), std::string::npos)
      << check;
}

TEST_F(SnowflakeE2eTest, SyncThenExactlyTheChanges) {
  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["extracted"], 120);
  EXPECT_EQ(s["added"], 120);
  EXPECT_EQ(s["succeeded"], 120);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(receiver_->request_count(), 3);  // 120 records in batches of 40
  // Partitions 1..4 fetched once each; the statement ran once, polled twice.
  for (int p = 1; p <= 4; ++p) {
    EXPECT_EQ(fake_->CountRequests(fmt::format("partition={}", p), 200), 1) << p;
  }
  EXPECT_EQ(fake_->CountRequests("partition=5"), 0);
  EXPECT_EQ(fake_->executions(), 1);
  EXPECT_EQ(fake_->CountRequests("GET /api/v2/statements/", 202), 2);
  EXPECT_TRUE(fake_->cancellations().empty());

  Insert(121, 122);
  Exec("UPDATE CUSTOMERS SET PLAN = 'enterprise', LTV = '999.99' WHERE ID = 7");
  Exec("DELETE FROM CUSTOMERS WHERE ID IN (8, 90)");
  size_t seen = receiver_->Requests().size();
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["added"], 2);
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["deleted"], 2);
  EXPECT_EQ(s["succeeded"], 5);
  EXPECT_EQ(receiver_->Requests().size(), seen + 1);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(receiver_->State()["7"]["ltv"], 999.99);

  // Nothing changed: nothing sent.
  seen = receiver_->Requests().size();
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(receiver_->Requests().size(), seen);
  EXPECT_EQ(fake_->executions(), 3);
}

TEST_F(SnowflakeE2eTest, FailedExtractionSendsNothingAndCancels) {
  ASSERT_EQ(Sync().exit_code, 0);
  Exec("UPDATE CUSTOMERS SET PLAN = 'churned' WHERE ID <= 10");
  // Partition 3 keeps failing (max_retries: 1 -> two attempts).
  for (int i = 0; i < 2; ++i) fake_->EnqueueReply(FakeSnowflakeReply::Error(503, "partition=3"));
  size_t seen = receiver_->Requests().size();
  CliResult r = Sync();
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE((r.out + r.err).find("partition 3"), std::string::npos) << r.out << r.err;
  EXPECT_EQ(receiver_->Requests().size(), seen);
  EXPECT_EQ(fake_->cancellations().size(), 1u);

  // The next run delivers the changes.
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Summary(r)["updated"], 10);
  EXPECT_EQ(receiver_->State(), Model());
}

TEST_F(SnowflakeE2eTest, WarehouseChangeDetectionThroughTheBinary) {
  std::ofstream(dir_ + "/backflow.yaml")
      << fmt::format(R"(
state: sqlite:.backflow/state.db
sources:
  - name: warehouse
    type: snowflake
    account: myorg-myaccount
    user: sync_user
    private_key: ${{env:BACKFLOW_E2E_SNOWFLAKE_KEY}}
    warehouse: COMPUTE_WH
    database: ANALYTICS
    schema: PUBLIC
    role: RETL
    base_url: "{}"
    max_retries: 1
    state_schema: BACKFLOW_E2E_STATE
models:
  - name: customers
    source: warehouse
    sql: SELECT ID, EMAIL, PLAN FROM CUSTOMERS
    primary_key: ID
    change_detection: warehouse
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{}" }} }}
mappings:
  - name: to_hook
    model: customers
    destination: hook
    action: send_batch
    batch_size: 50
    fields: {{ id: ID, email: EMAIL, plan: PLAN }}
)",
                     fake_->BaseUrl(), receiver_->Url("/ingest"));
  CliResult valid = RunCli(dir_, {"validate"});
  EXPECT_EQ(valid.exit_code, 0) << valid.out << valid.err;
  CliResult r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["extracted"], 120);
  EXPECT_EQ(s["added"], 120);
  EXPECT_EQ(receiver_->State().size(), 120u);
  auto stored = fake_->Select("SELECT count(*) FROM BACKFLOW_E2E_STATE.CHECKPOINTS");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)[0][0], 120);

  // Nothing changed: nothing leaves Snowflake.
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["unchanged"], 120);

  Exec("UPDATE CUSTOMERS SET PLAN = 'enterprise' WHERE ID IN (2, 4)");
  Exec("UPDATE CUSTOMERS SET LTV = '1.00' WHERE ID = 6");  // not in the model
  Exec("DELETE FROM CUSTOMERS WHERE ID = 8");
  Exec(
      "INSERT INTO CUSTOMERS VALUES (1000, 'late@example.com', 'free', '0', '2024-07-01 "
      "00:00:00', '{}')");
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 3);  // 2, 4 and 1000: only those left Snowflake
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 2);
  EXPECT_EQ(s["deleted"], 1);
  EXPECT_EQ(s["unchanged"], 117);
  auto state = receiver_->State();
  EXPECT_EQ(state.size(), 120u);
  EXPECT_EQ(state.count("8"), 0u);
  EXPECT_EQ(state["2"]["plan"], "enterprise");
  EXPECT_EQ(state["1000"]["email"], "late@example.com");

  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["unchanged"], 120);
  // No pass table is left behind.
  auto tables = fake_->Select(
      "SELECT name FROM BACKFLOW_E2E_STATE.sqlite_master WHERE type = 'table' ORDER BY name");
  ASSERT_TRUE(tables.ok()) << tables.status();
  EXPECT_EQ(*tables, json::parse(R"([["CHECKPOINTS"],["PASS_TABLES"]])"));
}

}  // namespace
}  // namespace backflow
