// End to end: a PostgreSQL model (the ctest `postgres` fixture) synced by the
// real `backflow` binary to FakeIterableServer through update_users; after
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

#include "backflow/destinations/iterable/fake_iterable_server.h"
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

const char kApiKey[] = "itbl-e2e-server-key-7c1d";

class IterableE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("iterable_users")) return;
    setenv("BACKFLOW_E2E_ITERABLE_KEY", kApiKey, 1);
    FakeIterableOptions options;
    options.api_keys[kApiKey] = IterableKeyType::kServerSide;
    fake_ = std::make_unique<FakeIterableServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
  }

  // userId -> {email, dataFields} as the model's active rows should be in
  // Iterable (timestamps in Iterable's date format, NULL as null).
  std::map<std::string, json> ModelUsers() {
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    std::map<std::string, json> out;
    if (!conn.ok()) return out;
    auto result = (*conn)->Exec(
        fmt::format("SELECT 'user-' || id, email, plan, seats, "
                    "to_char(signed_up AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' +00:00' "
                    "FROM {} WHERE active ORDER BY id",
                    table_));
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return out;
    PGresult* r = result->get();
    for (int i = 0; i < PQntuples(r); ++i) {
      auto text = [&](int col) {
        return PQgetisnull(r, i, col) ? json(nullptr) : json(PQgetvalue(r, i, col));
      };
      json seats = PQgetisnull(r, i, 3) ? json(nullptr) : json(std::stoll(PQgetvalue(r, i, 3)));
      out[PQgetvalue(r, i, 0)] = {
          {"email", text(1)},
          {"dataFields", {{"plan", text(2)}, {"seats", seats}, {"signedUpAt", text(4)}}}};
    }
    return out;
  }

  // The fake's users in the same shape.
  std::map<std::string, json> IterableUsers() {
    std::map<std::string, json> out;
    for (const FakeIterableUser& u : fake_->AllUsers()) {
      out[u.user_id] = {{"email", u.email.empty() ? json(nullptr) : json(u.email)},
                        {"dataFields", u.data_fields}};
    }
    return out;
  }

  std::unique_ptr<FakeIterableServer> fake_;
};

TEST_F(IterableE2eTest, PostgresModelToIterableUsers) {
  ExecOrFail(
      fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, email text, plan text, seats int, "
                  "signed_up timestamptz, active boolean)",
                  table_));
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT g, 'user' || g || '@example.com', "
      "CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END, CASE WHEN g % 7 = 0 THEN NULL ELSE g END, "
      "timestamptz '2026-01-01 00:00:00+00' + g * interval '1 hour 1 minute 1.5 second', "
      "g % 10 <> 0 FROM generate_series(1, 130) g",
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
    sql: SELECT 'user-' || id AS user_id, email, plan, seats, signed_up FROM {} WHERE active
    primary_key: user_id
destinations:
  - name: iterable
    type: iterable
    settings:
      api_key: ${{env:BACKFLOW_E2E_ITERABLE_KEY}}
      base_url: "{}"
mappings:
  - name: users_to_iterable
    model: users
    destination: iterable
    action: update_users
    records: all
    batch_size: 50
    fields:
      userId: user_id
      email: email
      dataFields.plan: plan
      dataFields.seats: seats
      dataFields.signedUpAt: signed_up
)",
                                                        server().url, table_, fake_->BaseUrl());

  CliResult check = RunCli(dir_, {"test-connection", "iterable", "--json"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  EXPECT_EQ(json::parse(check.LastLine())["ok"], true) << check.out;
  EXPECT_TRUE(fake_->AllUsers().empty());

  CliResult r = RunCli(dir_, {"sync", "users_to_iterable", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 117);
  EXPECT_EQ(s["succeeded"], 117);
  EXPECT_EQ(s["failed"], 0);
  std::map<std::string, json> model = ModelUsers();
  ASSERT_EQ(model.size(), 117u);
  EXPECT_EQ(IterableUsers(), model);
  EXPECT_EQ(
      IterableUsers()["user-7"]["dataFields"],
      json::parse(R"({"plan":"free","seats":null,"signedUpAt":"2026-01-01 07:07:10 +00:00"})"));
  // The check, then batches of 50, 50 and 17, each with the key.
  EXPECT_EQ(fake_->count_for_path("/api/users/bulkUpdate"), 1 + 3);
  for (const FakeIterableRequest& req : fake_->Requests()) EXPECT_EQ(req.api_key, kApiKey);
  EXPECT_EQ(fake_->UserFieldTypes()["signedUpAt"], "date");

  // Updates (a value to NULL and back), inserts, rows leaving the model and a
  // row deleted outright.
  ExecOrFail(
      fmt::format("UPDATE {} SET plan = 'enterprise', seats = 500 WHERE id IN (3, 4)", table_));
  ExecOrFail(fmt::format("UPDATE {} SET seats = NULL WHERE id = 5", table_));
  ExecOrFail(fmt::format("UPDATE {} SET seats = 70 WHERE id = 7", table_));
  ExecOrFail(fmt::format("UPDATE {} SET active = false WHERE id IN (11, 12)", table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id = 13", table_));
  ExecOrFail(fmt::format("UPDATE {} SET active = true WHERE id = 20", table_));
  ExecOrFail(fmt::format(
      "INSERT INTO {} VALUES (500, 'late@example.com', 'pro', 2, '2026-03-04 05:06:07+00', true), "
      "(501, 'later@example.com', NULL, NULL, NULL, true)",
      table_));
  r = RunCli(dir_, {"sync", "users_to_iterable", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 3);
  EXPECT_EQ(s["updated"], 4);
  EXPECT_EQ(s["deleted"], 3);
  EXPECT_EQ(s["failed"], 0);
  model = ModelUsers();
  EXPECT_EQ(model.size(), 117u);
  EXPECT_EQ(IterableUsers(), model);
  EXPECT_EQ(IterableUsers()["user-3"]["dataFields"]["plan"], "enterprise");
  EXPECT_TRUE(IterableUsers()["user-5"]["dataFields"]["seats"].is_null());
  EXPECT_TRUE(IterableUsers()["user-501"]["dataFields"]["signedUpAt"].is_null());
  std::vector<std::string> deleted = fake_->Deleted();
  std::sort(deleted.begin(), deleted.end());
  EXPECT_EQ(deleted,
            (std::vector<std::string>{"userId:user-11", "userId:user-12", "userId:user-13"}));

  // Nothing changed: nothing is sent.
  const int64_t before = fake_->request_count();
  r = RunCli(dir_, {"sync", "users_to_iterable", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(s["deleted"], 0);
  EXPECT_EQ(fake_->request_count(), before);
  EXPECT_EQ(IterableUsers(), model);
  for (const CliResult* c : {&check, &r}) {
    EXPECT_EQ(c->out.find(kApiKey), std::string::npos);
    EXPECT_EQ(c->err.find(kApiKey), std::string::npos);
  }
}

TEST_F(IterableE2eTest, WrongKeyFailsConnectionCheckAndSync) {
  ExecOrFail(fmt::format("CREATE TABLE {} (id bigint, email text)", table_));
  ExecOrFail(fmt::format("INSERT INTO {} VALUES (1, 'a@example.com')", table_));
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources:
  - {{ name: warehouse, type: postgres, url: "{}", password: "${{env:BACKFLOW_E2E_PG_PASSWORD}}" }}
models:
  - {{ name: users, source: warehouse, primary_key: id, sql: "SELECT id, email FROM {}" }}
destinations:
  - {{ name: iterable, type: iterable, settings: {{ api_key: not-the-key, base_url: "{}" }} }}
mappings:
  - {{ name: users_to_iterable, model: users, destination: iterable, action: update_users,
      fields: {{ userId: id, email: email }} }}
)",
                                                        server().url, table_, fake_->BaseUrl());
  CliResult check = RunCli(dir_, {"test-connection", "iterable", "--json"});
  EXPECT_NE(check.exit_code, 0) << check.out;
  EXPECT_NE(json::parse(check.LastLine())["error"].get<std::string>().find("api_key"),
            std::string::npos)
      << check.out;
  CliResult r = RunCli(dir_, {"sync", "users_to_iterable", "--json"});
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("api_key"), std::string::npos) << r.out;
  EXPECT_TRUE(fake_->AllUsers().empty());
  EXPECT_EQ(fake_->unauthorized_count(), 2);
}

}  // namespace
}  // namespace backflow
