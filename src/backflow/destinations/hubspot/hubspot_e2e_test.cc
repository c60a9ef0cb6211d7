// End-to-end: a PostgreSQL model (the ctest `postgres` fixture) synced through
// the real `backflow` binary to the fake HubSpot API as contacts keyed by
// email; after every sync the fake's live contacts must equal the model's
// rows exactly (deleted rows archived), and a sync without changes sends
// nothing.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "backflow/destinations/hubspot/fake_hubspot_server.h"
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
using Properties = std::map<std::string, std::string>;

constexpr char kToken[] = "pat-na1-e2e-7d1f0c2a";

class HubSpotE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("hubspot_contacts")) return;
    setenv("BACKFLOW_E2E_HUBSPOT_TOKEN", kToken, 1);
    FakeHubSpotOptions options;
    options.tokens = {{kToken, {"crm.objects.contacts.read", "crm.objects.contacts.write"}}};
    fake_ = std::make_unique<FakeHubSpotServer>(options);
    fake_->AddProperty("contacts", "plan");
    fake_->AddProperty("contacts", "seats");
    ASSERT_TRUE(fake_->Start().ok());
  }

  // The model's rows as HubSpot should hold them: email -> properties, a
  // NULL column being an absent property.
  std::map<std::string, Properties> Expected() {
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return {};
    auto result = (*conn)->Exec(fmt::format(
        "SELECT email, first_name, last_name, plan, seats FROM {} ORDER BY email", table_));
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    static const char* kNames[] = {"email", "firstname", "lastname", "plan", "seats"};
    std::map<std::string, Properties> out;
    PGresult* r = result->get();
    for (int i = 0; i < PQntuples(r); ++i) {
      Properties p;
      for (int j = 0; j < 5; ++j) {
        if (!PQgetisnull(r, i, j)) p[kNames[j]] = PQgetvalue(r, i, j);
      }
      out[PQgetvalue(r, i, 0)] = p;
    }
    return out;
  }

  std::map<std::string, Properties> Live(bool archived = false) {
    std::map<std::string, Properties> out;
    for (const FakeHubSpotRecord& r : fake_->Records("contacts", archived)) {
      out[r.properties.at("email")] = r.properties;
    }
    return out;
  }

  json Sync() {
    CliResult r = RunCli(dir_, {"sync", "contacts_to_hubspot", "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(r.out.find(kToken), std::string::npos);
    EXPECT_EQ(r.err.find(kToken), std::string::npos);
    json s = json::parse(r.LastLine(), nullptr, false);
    EXPECT_FALSE(s.is_discarded()) << r.out;
    return s;
  }

  std::unique_ptr<FakeHubSpotServer> fake_;
};

TEST_F(HubSpotE2eTest, PostgresModelToHubSpotContacts) {
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (email text PRIMARY KEY, first_name text, last_name text, plan text, "
      "seats int)",
      table_));
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT 'user' || g || '@example.com', 'First' || g, 'Last' || g, "
      "CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END, CASE WHEN g % 7 = 0 THEN NULL ELSE g END "
      "FROM generate_series(1, 150) g",
      table_));
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources:
  - name: warehouse
    type: postgres
    url: {}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
models:
  - name: contacts
    source: warehouse
    sql: SELECT email, first_name, last_name, plan, seats FROM {}
    primary_key: email
destinations:
  - name: crm
    type: hubspot
    settings:
      access_token: ${{env:BACKFLOW_E2E_HUBSPOT_TOKEN}}
      base_url: "{}"
mappings:
  - name: contacts_to_hubspot
    model: contacts
    destination: crm
    action: upsert_contact
    fields:
      properties.email: email
      properties.firstname: first_name
      properties.lastname: last_name
      properties.plan: plan
      properties.seats: seats
)",
                                                        server().url, table_, fake_->BaseUrl());
  CliResult check = RunCli(dir_, {"test-connection", "crm"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;

  json s = Sync();
  EXPECT_EQ(s["added"], 150) << s;
  EXPECT_EQ(s["succeeded"], 150) << s;
  EXPECT_EQ(s["failed"], 0) << s;
  EXPECT_EQ(Live(), Expected());
  EXPECT_EQ(fake_->CountOperation("upsert"), 2);  // 100 + 50
  EXPECT_EQ(fake_->CountStatus(429), 0);

  // Updates (one clearing a value), deletes and inserts in the warehouse.
  ExecOrFail(
      fmt::format("UPDATE {} SET plan = 'enterprise' WHERE email IN "
                  "('user1@example.com', 'user2@example.com')",
                  table_));
  ExecOrFail(
      fmt::format("UPDATE {} SET last_name = NULL, seats = 99 WHERE email = "
                  "'user4@example.com'",
                  table_));
  ExecOrFail(
      fmt::format("DELETE FROM {} WHERE email IN ('user10@example.com', "
                  "'user11@example.com', 'user12@example.com')",
                  table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} VALUES ('new1@example.com', 'New', 'One', 'free', 1), "
                  "('new2@example.com', NULL, 'Two', 'pro', NULL)",
                  table_));
  s = Sync();
  EXPECT_EQ(s["added"], 2) << s;
  EXPECT_EQ(s["updated"], 3) << s;
  EXPECT_EQ(s["deleted"], 3) << s;
  EXPECT_EQ(s["failed"], 0) << s;
  std::map<std::string, Properties> live = Live();
  EXPECT_EQ(live, Expected());
  EXPECT_EQ(live.size(), 149u);
  EXPECT_EQ(live["user4@example.com"].count("lastname"), 0u);
  std::map<std::string, Properties> archived = Live(/*archived=*/true);
  EXPECT_EQ(archived.size(), 3u);
  EXPECT_EQ(archived.count("user11@example.com"), 1u);
  EXPECT_EQ(fake_->CountOperation("read"), 1);
  EXPECT_EQ(fake_->CountOperation("archive"), 1);

  // Nothing changed: nothing is sent.
  int64_t before = fake_->request_count();
  s = Sync();
  EXPECT_EQ(s["added"], 0) << s;
  EXPECT_EQ(s["updated"], 0) << s;
  EXPECT_EQ(s["deleted"], 0) << s;
  EXPECT_EQ(fake_->request_count(), before);
  EXPECT_EQ(Live(), Expected());
}

TEST_F(HubSpotE2eTest, RevokedTokenStopsTheRunWithAnActionableError) {
  ExecOrFail(fmt::format("CREATE TABLE {} (email text PRIMARY KEY, first_name text)", table_));
  ExecOrFail(fmt::format("INSERT INTO {} VALUES ('a@example.com', 'A')", table_));
  setenv("BACKFLOW_E2E_HUBSPOT_TOKEN", "pat-na1-revoked", 1);
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources: [{{ name: warehouse, type: postgres, url: "{}", password: "${{env:BACKFLOW_E2E_PG_PASSWORD}}" }}]
models: [{{ name: contacts, source: warehouse, primary_key: email,
            sql: "SELECT email, first_name FROM {}" }}]
destinations:
  - {{ name: crm, type: hubspot,
      settings: {{ access_token: "${{env:BACKFLOW_E2E_HUBSPOT_TOKEN}}", base_url: "{}" }} }}
mappings:
  - {{ name: contacts_to_hubspot, model: contacts, destination: crm, action: upsert_contact,
      fields: {{ properties.email: email, properties.firstname: first_name }} }}
)",
                                                        server().url, table_, fake_->BaseUrl());
  CliResult check = RunCli(dir_, {"test-connection", "crm"});
  EXPECT_NE(check.exit_code, 0);
  EXPECT_NE((check.out + check.err).find("access_token"), std::string::npos)
      << check.out << check.err;
  CliResult r = RunCli(dir_, {"sync", "contacts_to_hubspot", "--json"});
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  json s = json::parse(r.LastLine(), nullptr, false);
  ASSERT_FALSE(s.is_discarded()) << r.out << r.err;
  EXPECT_NE(s.dump().find("HTTP 401"), std::string::npos) << s;
  EXPECT_EQ(s["succeeded"], 0) << s;
  EXPECT_TRUE(fake_->Records("contacts").empty());
  // One request for the check, one for the batch: a 401 is not retried.
  EXPECT_EQ(fake_->request_count(), 2);
  EXPECT_EQ(fake_->CountStatus(401), 2);
}

}  // namespace
}  // namespace backflow
