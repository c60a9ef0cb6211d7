// End-to-end: the real `backflow` binary reads a model from the fake
// ClickHouse HTTP interface (RowBinaryWithNamesAndTypes, gzip, DateTime in a
// non-UTC zone) and syncs it to the webhook receiver; after each sync the
// receiver must hold exactly the rows the fake's tables hold. A model with
// `change_detection: warehouse` is synced through the binary again and
// again: only changed rows leave ClickHouse.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backflow/sources/clickhouse/fake_clickhouse_server.h"
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

constexpr char kModelSql[] =
    "SELECT id, email, plan, ltv, updated_at, traits FROM customers ORDER BY id";

class ClickHouseE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeClickHouseOptions options;
    options.block_rows = 25;
    fake_ = std::make_unique<FakeClickHouseServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    FakeClickHouseUser user;
    user.name = "retl";
    user.password = "e2e-secret";
    user.grants = {"analytics.customers"};
    fake_->AddUser(user);
    setenv("BACKFLOW_E2E_CLICKHOUSE_PASSWORD", "e2e-secret", 1);
    ASSERT_TRUE(fake_->CreateDatabase("analytics").ok());
    ASSERT_TRUE(fake_
                    ->CreateTable("analytics", "customers",
                                  {{"id", "UInt64"},
                                   {"email", "String"},
                                   {"plan", "LowCardinality(String)"},
                                   {"ltv", "Decimal(12, 2)"},
                                   {"updated_at", "DateTime('Europe/Berlin')"},
                                   {"traits", "Tuple(seats UInt32, tags Array(String))"}})
                    .ok());
    Insert(1, 120);

    receiver_ = e2e::StartWebhookReceiver(/*signed_requests=*/false);
    ASSERT_NE(receiver_, nullptr);
    WriteConfig("e2e-secret");
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(fake_->Exec(sql).ok()) << sql; }

  void Insert(int from, int to) {
    for (int i = from; i <= to; ++i) {
      Exec(fmt::format(
          "INSERT INTO analytics.customers VALUES ({0}, 'user{0}@example.com', '{1}', "
          "'{2}.{3:02d}', "
          "'2024-06-{4:02d} 10:{5:02d}:00', '{{\"seats\":{0},\"tags\":[\"a\",\"b\"]}}')",
          i, i % 3 == 0 ? "pro" : "free", i * 10, i % 100, 1 + i % 28, i % 60));
    }
  }

  void WriteConfig(const std::string& password_env_value) {
    setenv("BACKFLOW_E2E_CLICKHOUSE_PASSWORD", password_env_value.c_str(), 1);
    e2e::WarehouseWorkspace w;
    w.source = {"type: clickhouse",    fmt::format("base_url: \"{}\"", fake_->BaseUrl()),
                "user: retl",          "password: ${env:BACKFLOW_E2E_CLICKHOUSE_PASSWORD}",
                "database: analytics", "max_retries: 1"};
    w.model_sql = kModelSql;
    w.hook_url = receiver_->Url("/ingest");
    w.batch_size = 40;
    w.fields =
        "customer_id: id, email: email, plan: plan, ltv: ltv, updated_at: updated_at, traits: "
        "traits";
    e2e::WriteWarehouseWorkspace(dir_, w);
  }

  // The fake's rows as the receiver should hold them, by key. updated_at is
  // stored as Berlin wall time (UTC+2 in June) and must arrive in UTC.
  std::map<std::string, json> Model() {
    auto rows = fake_->Select(
        "SELECT id, email, plan, ltv, strftime('%Y-%m-%dT%H:%M:%SZ', updated_at, '-2 hours'), "
        "traits FROM analytics.customers");
    EXPECT_TRUE(rows.ok()) << rows.status();
    std::map<std::string, json> out;
    if (!rows.ok()) return out;
    for (const auto& r : *rows) {
      out[std::to_string(r[0].get<int64_t>())] = {
          {"customer_id", r[0]}, {"email", r[1]},
          {"plan", r[2]},        {"ltv", json::parse(r[3].get<std::string>())},
          {"updated_at", r[4]},  {"traits", json::parse(r[5].get<std::string>())}};
    }
    return out;
  }

  CliResult Sync() { return e2e::SyncCustomers(dir_); }

  std::vector<ClickHouseQueryLog> Selects() {
    std::vector<ClickHouseQueryLog> out;
    for (auto& q : fake_->Queries()) {
      if (!q.sql.starts_with("KILL")) out.push_back(q);
    }
    return out;
  }

  testing::ScratchDir scratch_{"clickhouse-e2e"};
  const std::string dir_ = scratch_.string();
  std::unique_ptr<FakeClickHouseServer> fake_;
  std::unique_ptr<WebhookReceiver> receiver_;
};

TEST_F(ClickHouseE2eTest, TestConnectionAndPreview) {
  CliResult r = RunCli(dir_, {"test-connection", "warehouse", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json check = json::parse(r.LastLine());
  EXPECT_EQ(check["ok"], true);
  EXPECT_EQ(check["type"], "clickhouse");

  r = RunCli(dir_, {"preview", "customers", "--limit", "30", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json preview = json::parse(r.LastLine());
  std::vector<std::pair<std::string, std::string>> columns;
  for (const json& c : preview["columns"]) columns.emplace_back(c["name"], c["type"]);
  EXPECT_EQ(columns, (std::vector<std::pair<std::string, std::string>>{{"id", "integer"},
                                                                       {"email", "string"},
                                                                       {"plan", "string"},
                                                                       {"ltv", "decimal"},
                                                                       {"updated_at", "timestamp"},
                                                                       {"traits", "json"}}));
  EXPECT_EQ(preview["columns"][3]["source_type"], "Decimal(12, 2)");
  EXPECT_EQ(preview["columns"][4]["source_type"], "DateTime('Europe/Berlin')");
  ASSERT_EQ(preview["rows"].size(), 30u);  // across two blocks
  EXPECT_EQ(preview["rows"][0],
            json::parse(R"([1,"user1@example.com","free",10.01,"2024-06-02T08:01:00Z",
                            {"seats":1,"tags":["a","b"]}])"));
  std::vector<ClickHouseQueryLog> selects = Selects();
  ASSERT_FALSE(selects.empty());
  EXPECT_NE(selects.back().sql.find("LIMIT 30"), std::string::npos) << selects.back().sql;
  EXPECT_EQ(selects.back().user, "retl");
  EXPECT_EQ(selects.back().auth, "headers");
  EXPECT_EQ(selects.back().params["readonly"], "2");
  EXPECT_TRUE(selects.back().compressed);

  // A wrong password is reported with what to fix.
  WriteConfig("wrong");
  r = RunCli(dir_, {"test-connection", "warehouse", "--json"});
  EXPECT_NE(r.exit_code, 0);
  check = json::parse(r.LastLine());
  EXPECT_EQ(check["ok"], false);
  EXPECT_NE(check["error"].get<std::string>().find("check `user` and `password`"),
            std::string::npos)
      << check;
}

TEST_F(ClickHouseE2eTest, SyncThenExactlyTheChanges) {
  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["extracted"], 120);
  EXPECT_EQ(s["added"], 120);
  EXPECT_EQ(s["succeeded"], 120);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(receiver_->request_count(), 3);  // 120 records in batches of 40
  std::vector<ClickHouseQueryLog> selects = Selects();
  ASSERT_EQ(selects.size(), 1u);
  EXPECT_EQ(selects[0].outcome, ClickHouseQueryLog::Outcome::kFinished);
  EXPECT_EQ(selects[0].rows_sent, 120);
  EXPECT_TRUE(fake_->Kills().empty());

  Insert(121, 122);
  Exec("UPDATE analytics.customers SET plan = 'enterprise', ltv = '999.99' WHERE id = 7");
  Exec("DELETE FROM analytics.customers WHERE id IN (8, 90)");
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
  EXPECT_EQ(Selects().size(), 3u);
}

TEST_F(ClickHouseE2eTest, AFailureMidStreamSendsNothingAndKillsTheQuery) {
  ASSERT_EQ(Sync().exit_code, 0);
  Exec("UPDATE analytics.customers SET plan = 'churned' WHERE id <= 10");
  // The server fails after 50 of 120 rows, with a 200 already sent.
  fake_->FailNext(FakeClickHouseFailure::MidStream(
      50, 241, "Memory limit (for query) exceeded: would use 9.31 GiB, maximum: 9.31 GiB"));
  size_t seen = receiver_->Requests().size();
  CliResult r = Sync();
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE((r.out + r.err).find("MEMORY_LIMIT_EXCEEDED"), std::string::npos) << r.out << r.err;
  EXPECT_EQ(receiver_->Requests().size(), seen);
  std::vector<ClickHouseQueryLog> selects = Selects();
  ASSERT_EQ(fake_->Kills().size(), 1u);
  EXPECT_EQ(fake_->Kills()[0].query_id, selects.back().query_id);

  // The next run delivers the changes.
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Summary(r)["updated"], 10);
  EXPECT_EQ(receiver_->State(), Model());
}

TEST_F(ClickHouseE2eTest, WarehouseChangeDetectionThroughTheBinary) {
  FakeClickHouseUser writer;
  writer.name = "sync";
  fake_->AddUser(writer);
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
state: sqlite:.backflow/state.db
sources:
  - name: warehouse
    type: clickhouse
    base_url: "{}"
    user: sync
    database: analytics
    max_retries: 1
    state_schema: backflow_e2e_state
models:
  - name: customers
    source: warehouse
    sql: SELECT id, email, plan, ltv FROM customers
    primary_key: id
    change_detection: warehouse
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{}" }} }}
mappings:
  - name: to_hook
    model: customers
    destination: hook
    action: send_batch
    batch_size: 50
    fields: {{ id: id, email: email, plan: plan }}
)",
                                                        fake_->BaseUrl(), receiver_->Url());
  CliResult valid = RunCli(dir_, {"validate"});
  EXPECT_EQ(valid.exit_code, 0) << valid.out << valid.err;
  CliResult r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["extracted"], 120);
  EXPECT_EQ(s["added"], 120);
  EXPECT_EQ(receiver_->State().size(), 120u);
  auto stored = fake_->Select("SELECT COUNT(*) FROM backflow_e2e_state.checkpoints");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)[0][0], 120);

  // Nothing changed: nothing leaves ClickHouse.
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["unchanged"], 120);

  Exec("UPDATE analytics.customers SET plan = 'enterprise' WHERE id IN (2, 4)");
  Exec("UPDATE analytics.customers SET ltv = '1.00' WHERE id = 6");  // not mapped
  Exec("DELETE FROM analytics.customers WHERE id = 8");
  Insert(500, 500);
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 4);  // 2, 4, 6 and 500: only those left ClickHouse
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 2);
  EXPECT_EQ(s["deleted"], 1);
  EXPECT_EQ(s["unchanged"], 117);
  auto state = receiver_->State();
  EXPECT_EQ(state.size(), 120u);
  EXPECT_EQ(state.count("8"), 0u);
  EXPECT_EQ(state["2"]["plan"], "enterprise");
  EXPECT_EQ(state["500"]["email"], "user500@example.com");

  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["unchanged"], 120);
  // The pass tables are gone; the checkpoint holds versioned rows and one tombstone.
  auto tables = fake_->Select(
      "SELECT name FROM backflow_e2e_state.sqlite_master WHERE type = 'table' ORDER BY name");
  ASSERT_TRUE(tables.ok()) << tables.status();
  EXPECT_EQ(*tables, (std::vector<std::vector<json>>{{"CHECKPOINTS"}, {"PASS_TABLES"}}));
  auto tombstones =
      fake_->Select("SELECT record_key FROM backflow_e2e_state.checkpoints WHERE deleted = 1");
  ASSERT_TRUE(tombstones.ok()) << tombstones.status();
  EXPECT_EQ(*tombstones, (std::vector<std::vector<json>>{{"8"}}));
}

}  // namespace
}  // namespace backflow
