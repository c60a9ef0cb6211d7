// End-to-end: a PostgreSQL model (the ctest `postgres` fixture) synced through
// the real `backflow` binary to the fake Mixpanel API. set_profile: after
// each sync the fake's profiles must equal the model's rows exactly (inserts,
// updates, NULLs and deletes included); track_event: each new row is one
// event, never sent twice.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "backflow/destinations/mixpanel/fake_mixpanel_server.h"
#include "backflow/pg/testing/test_server.h"
#include "cli_runner.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "pg_e2e.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using e2e::CliResult;
using e2e::RunCli;
using json = nlohmann::json;

constexpr char kToken[] = "e2e_project_token_7d1a";
constexpr char kSecret[] = "e2e_sa_secret_93bf";

class MixpanelE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("mixpanel_users")) return;
    setenv("BACKFLOW_E2E_MIXPANEL_TOKEN", kToken, 1);
    setenv("BACKFLOW_E2E_MIXPANEL_SECRET", kSecret, 1);
    FakeMixpanelOptions options;
    options.project_token = kToken;
    options.project_id = 777;
    options.service_accounts = {{"sa.e2e", kSecret}};
    fake_ = std::make_unique<FakeMixpanelServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
  }

  // The model's rows as Mixpanel profiles should hold them: NULLs absent.
  std::map<std::string, json> ExpectedProfiles() {
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return {};
    auto result = (*conn)->Exec(fmt::format(
        "SELECT 'user-' || id, email, plan, seats FROM {} WHERE active ORDER BY id", table_));
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    std::map<std::string, json> out;
    PGresult* r = result->get();
    for (int i = 0; i < PQntuples(r); ++i) {
      json p = json::object();
      if (!PQgetisnull(r, i, 1)) p["$email"] = PQgetvalue(r, i, 1);
      if (!PQgetisnull(r, i, 2)) p["plan"] = PQgetvalue(r, i, 2);
      if (!PQgetisnull(r, i, 3)) p["seats"] = std::stoll(PQgetvalue(r, i, 3));
      out[PQgetvalue(r, i, 0)] = p;
    }
    return out;
  }

  std::unique_ptr<FakeMixpanelServer> fake_;
};

TEST_F(MixpanelE2eTest, PostgresModelToMixpanelProfiles) {
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (id bigint PRIMARY KEY, email text, plan text, seats int, active boolean)",
      table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g, 'user' || g || '@example.com', "
                  "CASE WHEN g % 7 = 0 THEN NULL WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END, "
                  "CASE WHEN g % 5 = 0 THEN NULL ELSE g END, true FROM generate_series(1, 120) g",
                  table_));
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources:
  - name: warehouse
    type: postgres
    url: {}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
models:
  - name: users
    source: warehouse
    sql: SELECT 'user-' || id AS user_id, email, plan, seats FROM {} WHERE active
    primary_key: user_id
destinations:
  - name: mixpanel
    type: mixpanel
    settings:
      project_token: ${{env:BACKFLOW_E2E_MIXPANEL_TOKEN}}
      service_account_username: sa.e2e
      service_account_secret: ${{env:BACKFLOW_E2E_MIXPANEL_SECRET}}
      project_id: 777
      base_url: "{}"
mappings:
  - name: users_to_mixpanel
    model: users
    destination: mixpanel
    action: set_profile
    records: all
    batch_size: 50
    fields:
      distinct_id: user_id
      email: email
      properties.plan: plan
      properties.seats: seats
)",
                                                        server().url, table_, fake_->BaseUrl());

  CliResult check = RunCli(dir_, {"test-connection", "mixpanel", "--json"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  EXPECT_EQ(json::parse(check.LastLine())["ok"], true) << check.out;
  EXPECT_EQ(fake_->import_request_count(), 2);  // the service account, then the token
  EXPECT_TRUE(fake_->Events().empty());

  CliResult r = RunCli(dir_, {"sync", "users_to_mixpanel", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 120);
  EXPECT_EQ(s["succeeded"], 120);
  EXPECT_EQ(fake_->engage_request_count(), 3);  // batches of 50, 50, 20
  EXPECT_EQ(fake_->Profiles(), ExpectedProfiles());
  EXPECT_EQ(fake_->Profiles()["user-5"], json({{"$email", "user5@example.com"}, {"plan", "free"}}));

  // Updates (a value turning NULL among them), rows leaving the model, inserts.
  ExecOrFail(
      fmt::format("UPDATE {} SET plan = 'enterprise', seats = 500 WHERE id IN (3, 7)", table_));
  ExecOrFail(fmt::format(
      "UPDATE {} SET email = 'renamed@example.com', seats = NULL, plan = NULL WHERE id = 11",
      table_));
  ExecOrFail(fmt::format("UPDATE {} SET active = false WHERE id = 12", table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id IN (20, 21)", table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g, 'late' || g || '@example.com', 'trial', NULL, true "
                  "FROM generate_series(1001, 1004) g",
                  table_));
  int64_t before = fake_->engage_request_count();
  r = RunCli(dir_, {"sync", "users_to_mixpanel", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 4);
  EXPECT_EQ(s["updated"], 3);
  EXPECT_EQ(s["deleted"], 3);
  EXPECT_EQ(s["succeeded"], 10);
  EXPECT_EQ(s["failed"], 0);
  EXPECT_EQ(fake_->engage_request_count(), before + 1);
  std::map<std::string, json> profiles = fake_->Profiles();
  EXPECT_EQ(profiles, ExpectedProfiles());
  EXPECT_EQ(profiles.size(), 121u);
  EXPECT_FALSE(profiles.contains("user-12"));
  EXPECT_FALSE(profiles.contains("user-20"));
  EXPECT_EQ(profiles["user-7"],
            json({{"$email", "user7@example.com"}, {"plan", "enterprise"}, {"seats", 500}}));
  EXPECT_EQ(profiles["user-11"], json({{"$email", "renamed@example.com"}}));
  EXPECT_EQ(profiles["user-1004"], json({{"$email", "late1004@example.com"}, {"plan", "trial"}}));

  // Nothing changed: nothing is sent.
  before = fake_->request_count();
  r = RunCli(dir_, {"sync", "users_to_mixpanel", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(s["deleted"], 0);
  EXPECT_EQ(fake_->request_count(), before);
  EXPECT_EQ(fake_->Profiles(), ExpectedProfiles());

  for (const CliResult* c : {&check, &r}) {
    for (const char* secret : {kToken, kSecret}) {
      EXPECT_EQ(c->out.find(secret), std::string::npos);
      EXPECT_EQ(c->err.find(secret), std::string::npos);
    }
  }
}

TEST_F(MixpanelE2eTest, PostgresModelToMixpanelEvents) {
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (order_id bigint PRIMARY KEY, user_id text, amount numeric(10,2), "
      "created_at timestamptz)",
      table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g, 'user-' || (g % 10), g * 2.5, "
                  "timestamptz '2025-03-01 12:00:00+00' + g * interval '1 minute' "
                  "FROM generate_series(1, 30) g",
                  table_));
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources:
  - {{ name: warehouse, type: postgres, url: "{}", password: "${{env:BACKFLOW_E2E_PG_PASSWORD}}" }}
models:
  - {{ name: orders, source: warehouse, primary_key: order_id,
      sql: "SELECT order_id, user_id, amount, created_at FROM {}" }}
destinations:
  - {{ name: mixpanel, type: mixpanel,
      settings: {{ project_token: "${{env:BACKFLOW_E2E_MIXPANEL_TOKEN}}", base_url: "{}" }} }}
mappings:
  - name: orders_to_mixpanel
    model: orders
    destination: mixpanel
    action: track_event
    records: added
    fields:
      event: "'Order Completed'"
      distinct_id: user_id
      time: created_at
      properties.order_id: order_id
      properties.revenue: amount
)",
                                                        server().url, table_, fake_->BaseUrl());
  CliResult r = RunCli(dir_, {"sync", "orders_to_mixpanel", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(json::parse(r.LastLine())["succeeded"], 30);
  std::vector<json> events = fake_->Events();
  ASSERT_EQ(events.size(), 30u);
  std::map<int64_t, json> by_order;
  for (const json& e : events) by_order[e["properties"]["order_id"].get<int64_t>()] = e;
  ASSERT_TRUE(by_order.contains(4));
  EXPECT_EQ(by_order[4]["event"], "Order Completed");
  EXPECT_EQ(by_order[4]["properties"]["distinct_id"], "user-4");
  EXPECT_EQ(by_order[4]["properties"]["revenue"], 10);
  EXPECT_EQ(by_order[4]["properties"]["time"], int64_t{1740830640000});  // 12:04 UTC
  EXPECT_EQ(fake_->Requests().back().auth, "project_token");

  // New rows are new events; changed old rows send nothing (records: added).
  ExecOrFail(fmt::format("UPDATE {} SET amount = 0 WHERE order_id = 1", table_));
  ExecOrFail(fmt::format(
      "INSERT INTO {} VALUES (31, 'user-1', 1.25, timestamptz '2025-03-02 00:00:00+00')", table_));
  r = RunCli(dir_, {"sync", "orders_to_mixpanel", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(json::parse(r.LastLine())["succeeded"], 1);
  EXPECT_EQ(fake_->Events().size(), 31u);
  EXPECT_EQ(fake_->duplicate_count(), 0);
}

TEST_F(MixpanelE2eTest, WrongTokenFailsConnectionCheckAndSync) {
  ExecOrFail(fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, email text)", table_));
  ExecOrFail(fmt::format("INSERT INTO {} VALUES (1, 'a@example.com')", table_));
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources:
  - {{ name: warehouse, type: postgres, url: "{}", password: "${{env:BACKFLOW_E2E_PG_PASSWORD}}" }}
models:
  - {{ name: users, source: warehouse, primary_key: id, sql: "SELECT id, email FROM {}" }}
destinations:
  - {{ name: mixpanel, type: mixpanel, settings: {{ project_token: not-the-token, base_url: "{}" }} }}
mappings:
  - {{ name: users_to_mixpanel, model: users, destination: mixpanel, action: set_profile,
      fields: {{ distinct_id: id, email: email }} }}
)",
                                                        server().url, table_, fake_->BaseUrl());
  CliResult check = RunCli(dir_, {"test-connection", "mixpanel", "--json"});
  EXPECT_NE(check.exit_code, 0) << check.out;
  EXPECT_NE(json::parse(check.LastLine())["error"].get<std::string>().find("project_token"),
            std::string::npos)
      << check.out;
  CliResult r = RunCli(dir_, {"sync", "users_to_mixpanel", "--json"});
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("project_token"), std::string::npos) << r.out;
  EXPECT_TRUE(fake_->Profiles().empty());
  EXPECT_EQ(fake_->unauthorized_count(), 1);  // the check's /import
}

}  // namespace
}  // namespace backflow
