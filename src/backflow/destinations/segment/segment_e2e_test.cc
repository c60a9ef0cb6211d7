// End-to-end: a PostgreSQL model (the ctest `postgres` fixture) synced through
// the real `backflow` binary to the fake Segment tracking API as identify
// calls; after each sync the fake's per-user traits must equal the model.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "backflow/destinations/segment/fake_segment_server.h"
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

constexpr char kWriteKey[] = "e2e_write_key_4f9c";

class SegmentE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("segment_users")) return;
    setenv("BACKFLOW_E2E_SEGMENT_KEY", kWriteKey, 1);
    FakeSegmentOptions options;
    options.write_keys = {kWriteKey};
    fake_ = std::make_unique<FakeSegmentServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
  }

  // The model's rows as Segment should know them: userId -> traits.
  std::map<std::string, json> ExpectedTraits() {
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
      json seats = PQgetisnull(r, i, 3) ? json(nullptr) : json(std::stoll(PQgetvalue(r, i, 3)));
      out[PQgetvalue(r, i, 0)] = {
          {"email", PQgetvalue(r, i, 1)}, {"plan", PQgetvalue(r, i, 2)}, {"seats", seats}};
    }
    return out;
  }

  std::unique_ptr<FakeSegmentServer> fake_;
};

TEST_F(SegmentE2eTest, PostgresModelToSegmentIdentify) {
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (id bigint PRIMARY KEY, email text, plan text, seats int, active boolean)",
      table_));
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT g, 'user' || g || '@example.com', "
      "CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END, CASE WHEN g % 5 = 0 THEN NULL ELSE g END, "
      "true FROM generate_series(1, 120) g",
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
  - name: segment
    type: segment
    settings:
      write_key: ${{env:BACKFLOW_E2E_SEGMENT_KEY}}
      base_url: "{}"
mappings:
  - name: users_to_segment
    model: users
    destination: segment
    action: identify
    records: added_or_updated
    batch_size: 50
    fields:
      userId: user_id
      traits.email: email
      traits.plan: plan
      traits.seats: seats
)",
                                                        server().url, table_, fake_->BaseUrl());

  CliResult check = RunCli(dir_, {"test-connection", "segment", "--json"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  EXPECT_EQ(json::parse(check.LastLine())["ok"], true) << check.out;
  EXPECT_EQ(fake_->accepted_count(), 0);

  CliResult r = RunCli(dir_, {"sync", "users_to_segment", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 120);
  EXPECT_EQ(s["succeeded"], 120);
  EXPECT_EQ(fake_->request_count(), 1 + 3);  // the check, then batches of 50, 50, 20
  EXPECT_EQ(fake_->UserTraits(), ExpectedTraits());
  EXPECT_EQ(fake_->UserTraits()["user-5"],
            json({{"email", "user5@example.com"}, {"plan", "free"}, {"seats", nullptr}}));

  // Inserts and updates, plus a row leaving the model (its delete is not selected).
  ExecOrFail(
      fmt::format("UPDATE {} SET plan = 'enterprise', seats = 500 WHERE id IN (3, 7)", table_));
  ExecOrFail(fmt::format("UPDATE {} SET email = 'renamed@example.com', seats = NULL WHERE id = 11",
                         table_));
  ExecOrFail(fmt::format("UPDATE {} SET active = false WHERE id = 12", table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g, 'late' || g || '@example.com', 'trial', 1, true "
                  "FROM generate_series(1001, 1004) g",
                  table_));
  int64_t before = fake_->request_count();
  r = RunCli(dir_, {"sync", "users_to_segment", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 4);
  EXPECT_EQ(s["updated"], 3);
  EXPECT_EQ(s["succeeded"], 7);
  EXPECT_EQ(fake_->request_count(), before + 1);
  std::map<std::string, json> expected = ExpectedTraits();
  // Segment keeps the traits of a user who left the model: identify cannot delete.
  std::map<std::string, json> got = fake_->UserTraits();
  ASSERT_TRUE(got.contains("user-12"));
  got.erase("user-12");
  EXPECT_EQ(got, expected);
  EXPECT_EQ(got["user-3"]["plan"], "enterprise");
  EXPECT_EQ(got["user-11"]["seats"], nullptr);
  EXPECT_EQ(got["user-1004"]["plan"], "trial");
  EXPECT_TRUE(fake_->DroppedItems().empty());
  EXPECT_EQ(fake_->duplicate_count(), 0);

  // Nothing changed: nothing is sent.
  before = fake_->request_count();
  r = RunCli(dir_, {"sync", "users_to_segment", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(fake_->request_count(), before);

  for (const CliResult* c : {&check, &r}) {
    EXPECT_EQ(c->out.find(kWriteKey), std::string::npos);
    EXPECT_EQ(c->err.find(kWriteKey), std::string::npos);
  }
}

TEST_F(SegmentE2eTest, WrongWriteKeyFailsConnectionCheckAndSync) {
  ExecOrFail(fmt::format("CREATE TABLE {} (id bigint, email text)", table_));
  ExecOrFail(fmt::format("INSERT INTO {} VALUES (1, 'a@example.com')", table_));
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources:
  - {{ name: warehouse, type: postgres, url: "{}", password: "${{env:BACKFLOW_E2E_PG_PASSWORD}}" }}
models:
  - {{ name: users, source: warehouse, primary_key: id, sql: "SELECT id, email FROM {}" }}
destinations:
  - {{ name: segment, type: segment, settings: {{ write_key: not-the-key, base_url: "{}" }} }}
mappings:
  - {{ name: users_to_segment, model: users, destination: segment, action: identify,
      records: added_or_updated, fields: {{ userId: id, traits.email: email }} }}
)",
                                                        server().url, table_, fake_->BaseUrl());
  CliResult check = RunCli(dir_, {"test-connection", "segment", "--json"});
  EXPECT_NE(check.exit_code, 0) << check.out;
  EXPECT_NE(json::parse(check.LastLine())["error"].get<std::string>().find("write_key"),
            std::string::npos)
      << check.out;
  CliResult r = RunCli(dir_, {"sync", "users_to_segment", "--json"});
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("write_key"), std::string::npos) << r.out;
  EXPECT_TRUE(fake_->UserTraits().empty());
  EXPECT_EQ(fake_->unauthorized_count(), 2);
}

}  // namespace
}  // namespace backflow
