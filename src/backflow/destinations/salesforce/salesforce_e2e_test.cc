// End-to-end: a PostgreSQL model (the ctest `postgres` fixture) synced through
// the real `backflow` binary to the fake Salesforce (JWT token endpoint,
// describe, Bulk API 2.0, sObject Collections, query and delete) as Contacts
// keyed by an External ID field; after every sync the fake's Contacts must
// equal the model's rows exactly, and a sync without changes sends nothing.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "backflow/delivery/jwt_bearer.h"
#include "backflow/destinations/salesforce/fake_salesforce_server.h"
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
using Fields = std::map<std::string, json>;

constexpr char kConsumerKey[] = "3MVG9e2e.backflow.consumer";
constexpr char kUser[] = "e2e-integration@acme.test";

class SalesforceE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("sf_customers")) return;
    FakeSalesforceOptions options;
    options.bulk_polls_in_progress = 1;  // one InProgress answer, then JobComplete
    fake_ = std::make_unique<FakeSalesforceServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    private_key_ = fake_->AddConnectedApp(kConsumerKey);
    ASSERT_FALSE(private_key_.empty());
    fake_->AddUser(kUser);
    setenv("BACKFLOW_E2E_SF_KEY", private_key_.c_str(), 1);
  }

  void WriteConfig(const std::string& username = kUser) {
    std::ofstream(dir_ + "/backflow.yaml")
        << fmt::format(R"(
sources:
  - name: warehouse
    type: postgres
    url: {}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
models:
  - name: customers
    source: warehouse
    sql: SELECT id, first_name, last_name, email, plan, seats FROM {}
    primary_key: id
destinations:
  - name: crm
    type: salesforce
    settings:
      consumer_key: {}
      username: {}
      private_key: ${{env:BACKFLOW_E2E_SF_KEY}}
      login_url: "{}"
      object: Contact
      bulk_threshold: 100
mappings:
  - name: customers_to_salesforce
    model: customers
    destination: crm
    action: upsert_record
    fields:
      Warehouse_Id__c: id
      FirstName: first_name
      LastName: last_name
      Email: lower(email)
      Plan__c: plan
      Seats__c: seats
)",
                       server().url, table_, kConsumerKey, username, fake_->BaseUrl());
  }

  // The model's rows as Salesforce should hold them: external id -> fields,
  // a NULL column being an absent field.
  std::map<std::string, Fields> Expected() {
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return {};
    auto result = (*conn)->Exec(fmt::format(
        "SELECT id, first_name, last_name, lower(email), plan, seats FROM {} ORDER BY id", table_));
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    std::map<std::string, Fields> out;
    PGresult* r = result->get();
    static const char* kNames[] = {"FirstName", "LastName", "Email", "Plan__c"};
    for (int i = 0; i < PQntuples(r); ++i) {
      Fields f;
      for (int j = 0; j < 4; ++j) {
        if (!PQgetisnull(r, i, j + 1)) f[kNames[j]] = PQgetvalue(r, i, j + 1);
      }
      if (!PQgetisnull(r, i, 5)) f["Seats__c"] = std::stod(PQgetvalue(r, i, 5));
      out[PQgetvalue(r, i, 0)] = f;
    }
    return out;
  }

  // The fake's Contacts: external id -> fields (without it). Fails the test
  // on a duplicated external id.
  std::map<std::string, Fields> Contacts() {
    std::map<std::string, Fields> out;
    for (FakeSalesforceRecord& r : fake_->Records("Contact")) {
      std::string key = r.fields["Warehouse_Id__c"].get<std::string>();
      r.fields.erase("Warehouse_Id__c");
      EXPECT_EQ(out.count(key), 0u) << "duplicate " << key;
      out[key] = r.fields;
    }
    return out;
  }

  json Sync() {
    CliResult r = RunCli(dir_, {"sync", "customers_to_salesforce", "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(r.out.find("PRIVATE KEY"), std::string::npos);
    EXPECT_EQ(r.err.find("PRIVATE KEY"), std::string::npos);
    json s = json::parse(r.LastLine(), nullptr, false);
    EXPECT_FALSE(s.is_discarded()) << r.out << r.err;
    return s;
  }

  std::string private_key_;
  std::unique_ptr<FakeSalesforceServer> fake_;
};

TEST_F(SalesforceE2eTest, PostgresModelToSalesforceContacts) {
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (id bigint PRIMARY KEY, first_name text, last_name text NOT NULL, "
      "email text, plan text, seats int)",
      table_));
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT g, CASE WHEN g % 4 = 0 THEN NULL ELSE 'First' || g END, "
      "'Last' || g, 'User' || g || '@Example.com', CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' "
      "END, CASE WHEN g % 7 = 0 THEN NULL ELSE g END FROM generate_series(1, 150) g",
      table_));
  WriteConfig();
  CliResult check = RunCli(dir_, {"test-connection", "crm"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;

  // 150 new rows: one Bulk API 2.0 job (bulk_threshold 100).
  json s = Sync();
  EXPECT_EQ(s["added"], 150) << s;
  EXPECT_EQ(s["succeeded"], 150) << s;
  EXPECT_EQ(s["failed"], 0) << s;
  EXPECT_EQ(Contacts(), Expected());
  ASSERT_EQ(fake_->Jobs().size(), 1u);
  EXPECT_EQ(fake_->Jobs()[0].state, "JobComplete");
  EXPECT_EQ(fake_->Jobs()[0].processed, 150);
  EXPECT_EQ(fake_->CountRequests("upsert"), 0);

  // Updates (one clearing values), deletes and inserts: sObject Collections,
  // then a query and a delete.
  ExecOrFail(fmt::format("UPDATE {} SET plan = 'enterprise' WHERE id IN (1, 2)", table_));
  ExecOrFail(fmt::format("UPDATE {} SET first_name = NULL, seats = 99 WHERE id = 5", table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id IN (10, 11, 12)", table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} VALUES (1001, 'New', 'One', 'new1@example.com', 'free', 1), "
                  "(1002, NULL, 'Two, Jr.', NULL, 'pro', NULL)",
                  table_));
  s = Sync();
  EXPECT_EQ(s["added"], 2) << s;
  EXPECT_EQ(s["updated"], 3) << s;
  EXPECT_EQ(s["deleted"], 3) << s;
  EXPECT_EQ(s["failed"], 0) << s;
  std::map<std::string, Fields> live = Contacts();
  EXPECT_EQ(live, Expected());
  EXPECT_EQ(live.size(), 149u);
  EXPECT_EQ(live["5"].count("FirstName"), 0u);
  EXPECT_EQ(live["1002"]["LastName"], "Two, Jr.");
  EXPECT_EQ(fake_->recycle_bin_size(), 3u);
  EXPECT_EQ(fake_->CountRequests("upsert"), 1);
  EXPECT_EQ(fake_->CountRequests("query"), 1);
  EXPECT_EQ(fake_->CountRequests("delete"), 1);
  EXPECT_EQ(fake_->Jobs().size(), 1u);

  // Nothing changed: nothing is sent.
  int64_t before = fake_->request_count();
  int64_t tokens = fake_->sessions_issued();
  s = Sync();
  EXPECT_EQ(s["added"], 0) << s;
  EXPECT_EQ(s["updated"], 0) << s;
  EXPECT_EQ(s["deleted"], 0) << s;
  EXPECT_EQ(fake_->request_count(), before);
  EXPECT_EQ(fake_->sessions_issued(), tokens);
  EXPECT_EQ(Contacts(), Expected());
}

TEST_F(SalesforceE2eTest, UnapprovedUserStopsTheRunWithAnActionableError) {
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (id bigint PRIMARY KEY, first_name text, last_name text, email text, "
      "plan text, seats int)",
      table_));
  ExecOrFail(fmt::format("INSERT INTO {} VALUES (1, 'A', 'B', 'a@example.com', 'pro', 1)", table_));
  fake_->AddUser("not.approved@acme.test", /*pre_authorized=*/false);
  WriteConfig("not.approved@acme.test");
  CliResult check = RunCli(dir_, {"test-connection", "crm"});
  EXPECT_NE(check.exit_code, 0);
  EXPECT_NE((check.out + check.err).find("user hasn't approved this consumer"), std::string::npos)
      << check.out << check.err;
  EXPECT_NE((check.out + check.err).find("pre-authorized"), std::string::npos)
      << check.out << check.err;

  CliResult r = RunCli(dir_, {"sync", "customers_to_salesforce", "--json"});
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  json s = json::parse(r.LastLine(), nullptr, false);
  ASSERT_FALSE(s.is_discarded()) << r.out << r.err;
  EXPECT_EQ(s["succeeded"], 0) << s;
  EXPECT_EQ((r.out + r.err).find("PRIVATE KEY"), std::string::npos);
  EXPECT_TRUE(fake_->Records("Contact").empty());
  EXPECT_EQ(fake_->request_count(), 0);  // no API call without a session
  EXPECT_EQ(fake_->CountRequests("token", 400), 2);
}

}  // namespace
}  // namespace backflow
