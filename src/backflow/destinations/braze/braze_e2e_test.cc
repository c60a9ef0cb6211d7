// End to end: a PostgreSQL model (the ctest `postgres` fixture) synced by the
// real `backflow` binary to FakeBrazeServer through track_attributes; after
// inserts, updates and deletes in the table the fake's users equal the
// model's rows, and a sync without changes sends nothing.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "backflow/destinations/braze/fake_braze_server.h"
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

const char kApiKey[] = "braze-e2e-rest-key";

class BrazeE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("braze_users")) return;
    setenv("BACKFLOW_E2E_BRAZE_KEY", kApiKey, 1);
  }

  // external_id -> the attributes the model's rows should give in Braze
  // (NULL columns absent, as a null removes the attribute).
  std::map<std::string, json> ModelUsers() {
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    std::map<std::string, json> out;
    if (!conn.ok()) return out;
    auto result = (*conn)->Exec(fmt::format(
        "SELECT id, email, first_name, plan, ltv FROM {} WHERE active ORDER BY id", table_));
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return out;
    PGresult* r = result->get();
    const char* names[] = {"", "email", "first_name", "plan", "lifetime_value"};
    for (int i = 0; i < PQntuples(r); ++i) {
      json attrs = json::object();
      for (int j = 1; j < 5; ++j) {
        if (PQgetisnull(r, i, j)) continue;
        std::string v = PQgetvalue(r, i, j);
        attrs[names[j]] = j == 4 ? json(std::stod(v)) : json(v);
      }
      out[PQgetvalue(r, i, 0)] = attrs;
    }
    return out;
  }
};

TEST_F(BrazeE2eTest, PostgresModelToBrazeUsers) {
  ExecOrFail(
      fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, email text, first_name text, plan text, "
                  "ltv numeric(10,2), active boolean)",
                  table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g, 'user' || g || '@example.com', "
                  "CASE WHEN g = 5 THEN NULL ELSE 'First' || g END, "
                  "CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END, g * 1.25, g % 10 <> 0 "
                  "FROM generate_series(1, 120) g",
                  table_));
  FakeBrazeOptions options;
  options.api_keys[kApiKey] = {kBrazeUsersTrack, kBrazeUsersDelete};
  FakeBrazeServer braze(options);
  ASSERT_TRUE(braze.Start().ok());
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources:
  - name: warehouse
    type: postgres
    url: {}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
models:
  - name: users
    source: warehouse
    sql: SELECT id, email, first_name, plan, ltv FROM {} WHERE active
    primary_key: id
destinations:
  - name: braze
    type: braze
    settings:
      api_key: ${{env:BACKFLOW_E2E_BRAZE_KEY}}
      base_url: "{}"
mappings:
  - name: to_braze
    model: users
    destination: braze
    action: track_attributes
    records: all
    fields:
      external_id: id
      email: email
      first_name: first_name
      plan: plan
      lifetime_value: ltv
)",
                                                        server().url, table_, braze.BaseUrl());

  CliResult check = RunCli(dir_, {"test-connection", "braze"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  EXPECT_TRUE(braze.AllUsers().empty());

  CliResult r = RunCli(dir_, {"sync", "to_braze", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 108);
  EXPECT_EQ(s["succeeded"], 108);
  EXPECT_EQ(s["failed"], 0);
  std::map<std::string, json> model = ModelUsers();
  ASSERT_EQ(model.size(), 108u);
  EXPECT_EQ(braze.Users(), model);
  EXPECT_EQ(braze.Users()["1"], json::parse(R"({"email":"user1@example.com",
      "first_name":"First1","plan":"free","lifetime_value":1.25})"));
  EXPECT_FALSE(braze.Users()["5"].contains("first_name"));
  // 108 records in batches of at most 75 objects, all sent with the key.
  for (const FakeBrazeRequest& req : braze.Requests()) {
    EXPECT_EQ(req.authorization, std::string("Bearer ") + kApiKey);
    if (req.path == "/users/track" && req.status == 201) {
      EXPECT_LE(json::parse(req.body)["attributes"].size(), 75u);
    }
  }
  EXPECT_EQ(braze.count_with_status(201), 2);

  ExecOrFail(fmt::format("UPDATE {} SET plan = 'enterprise' WHERE id IN (1, 2, 3)", table_));
  ExecOrFail(fmt::format("UPDATE {} SET first_name = NULL WHERE id = 4", table_));
  ExecOrFail(fmt::format("UPDATE {} SET first_name = 'Fifth' WHERE id = 5", table_));
  ExecOrFail(fmt::format("UPDATE {} SET active = false WHERE id IN (11, 12)", table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id = 13", table_));
  ExecOrFail(fmt::format("UPDATE {} SET active = true WHERE id = 20", table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} VALUES (200, 'late@example.com', 'Late', 'pro', 9.99, true), "
                  "(201, 'later@example.com', NULL, NULL, NULL, true)",
                  table_));
  r = RunCli(dir_, {"sync", "to_braze", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 3);
  EXPECT_EQ(s["updated"], 5);
  EXPECT_EQ(s["deleted"], 3);
  EXPECT_EQ(s["failed"], 0);
  model = ModelUsers();
  EXPECT_EQ(model.size(), 108u);
  EXPECT_EQ(braze.Users(), model);
  EXPECT_EQ(braze.Users()["1"]["plan"], "enterprise");
  EXPECT_FALSE(braze.Users()["4"].contains("first_name"));
  EXPECT_EQ(braze.Users()["201"], json::parse(R"({"email":"later@example.com"})"));
  std::vector<std::string> deleted = braze.Deleted();
  std::sort(deleted.begin(), deleted.end());
  EXPECT_EQ(deleted, (std::vector<std::string>{"11", "12", "13"}));

  // Nothing changed: nothing is sent.
  const int64_t before = braze.request_count();
  r = RunCli(dir_, {"sync", "to_braze", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(s["deleted"], 0);
  EXPECT_EQ(braze.request_count(), before);
  EXPECT_EQ(braze.Users(), model);
  EXPECT_EQ(r.out.find(kApiKey), std::string::npos);
  EXPECT_EQ(r.err.find(kApiKey), std::string::npos);
}

}  // namespace
}  // namespace backflow
