// End-to-end scenarios with a real PostgreSQL server (the ctest `postgres`
// fixture): PostgreSQL as a source synced to the webhook receiver, and as a
// destination fed from a SQLite model, both through the real binary.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "backflow/pg/testing/test_server.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/webhook_receiver.h"
#include "cli_runner.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "pg_e2e.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using e2e::CliResult;
using e2e::RunCli;

class PostgresE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override { SetUpE2e("customers"); }

  // Rows of `sql` on the test server, each as "v1|v2|...".
  std::vector<std::string> Query(const std::string& sql) {
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    auto result = (*conn)->Exec(sql);
    EXPECT_TRUE(result.ok()) << result.status();
    std::vector<std::string> rows;
    PGresult* r = result->get();
    for (int i = 0; i < PQntuples(r); ++i) {
      std::string row;
      for (int j = 0; j < PQnfields(r); ++j) {
        if (j > 0) row += "|";
        row += PQgetisnull(r, i, j) ? "NULL" : PQgetvalue(r, i, j);
      }
      rows.push_back(row);
    }
    return rows;
  }
};

TEST_F(PostgresE2eTest, PostgresModelToWebhook) {
  ExecOrFail(
      fmt::format("CREATE TABLE {} (id bigint, email text, ltv numeric(14,2), active boolean, "
                  "updated_at timestamptz)",
                  table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g, 'user' || g || '@example.com', g * 1.5, g % 4 <> 0, "
                  "timestamptz '2025-01-01 00:00:00+00' + g * interval '1 minute' "
                  "FROM generate_series(1, 300) g",
                  table_));
  WebhookReceiver receiver;
  ASSERT_TRUE(receiver.Start().ok());
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources:
  - name: warehouse
    type: postgres
    url: {}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
models:
  - name: customers
    source: warehouse
    sql: SELECT id, email, ltv, updated_at FROM {} WHERE active
    primary_key: id
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{}" }} }}
mappings:
  - name: to_hook
    model: customers
    destination: hook
    action: send_batch
    batch_size: 100
    fields: {{ id: id, email: email, ltv: ltv, updated_at: updated_at }}
)",
                                                        server().url, table_, receiver.Url());
  CliResult check = RunCli(dir_, {"test-connection", "warehouse"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  CliResult preview = RunCli(dir_, {"preview", "customers", "--json"});
  ASSERT_EQ(preview.exit_code, 0) << preview.err;
  nlohmann::json p = nlohmann::json::parse(preview.LastLine());
  EXPECT_EQ(p["columns"][2]["type"], "decimal");
  EXPECT_EQ(p["columns"][3]["type"], "timestamp");

  CliResult tested = RunCli(dir_, {"mapping", "test", "to_hook", "--record", "2", "--json"});
  ASSERT_EQ(tested.exit_code, 0) << tested.out << tested.err;
  EXPECT_EQ(nlohmann::json::parse(tested.LastLine())["payload"]["ltv"], 3.0);

  CliResult r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json s = nlohmann::json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 225);
  EXPECT_EQ(s["succeeded"], 225);
  auto state = receiver.State();
  ASSERT_EQ(state.size(), 225u);
  EXPECT_EQ(state["1"], nlohmann::json::parse(R"({"id":1,"email":"user1@example.com",
      "ltv":1.50,"updated_at":"2025-01-01T00:01:00Z"})"));

  ExecOrFail(fmt::format("UPDATE {} SET ltv = 99.99 WHERE id = 2", table_));
  ExecOrFail(fmt::format("UPDATE {} SET active = false WHERE id = 3", table_));  // leaves the model
  ExecOrFail(
      fmt::format("INSERT INTO {} VALUES (1000, 'late@example.com', 1, true, now())", table_));
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = nlohmann::json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["deleted"], 1);
  state = receiver.State();
  EXPECT_EQ(state.size(), 225u);
  EXPECT_EQ(state.count("3"), 0u);
  EXPECT_EQ(state["2"]["ltv"], 99.99);

  // A query that fails part-way: the run fails, nothing is sent or deleted.
  std::ofstream(dir_ + "/broken.yaml") << fmt::format(R"(
sources:
  - {{ name: warehouse, type: postgres, url: "{}", password: "${{env:BACKFLOW_E2E_PG_PASSWORD}}" }}
models:
  - {{ name: customers, source: warehouse, primary_key: id,
      sql: "SELECT id, email, ltv / (id - 201) AS ltv, updated_at FROM {} WHERE active ORDER BY id" }}
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{}" }} }}
mappings:
  - {{ name: to_hook, model: customers, destination: hook, action: send_batch,
      fields: {{ id: id, email: email, ltv: ltv, updated_at: updated_at }} }}
)",
                                                      server().url, table_, receiver.Url());
  int64_t before = receiver.request_count();
  r = RunCli(dir_, {"-c", "broken.yaml", "sync", "to_hook", "--json"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  s = nlohmann::json::parse(r.LastLine());
  EXPECT_EQ(s["status"], "failed");
  EXPECT_NE(s["error"].get<std::string>().find("division by zero"), std::string::npos) << s;
  EXPECT_EQ(s["deleted"], 0);
  EXPECT_EQ(receiver.request_count(), before);
  EXPECT_EQ(receiver.State().size(), 225u);
  EXPECT_EQ(r.out.find(server().password), std::string::npos);
  EXPECT_EQ(r.err.find(server().password), std::string::npos);
}

TEST_F(PostgresE2eTest, SqliteModelToPostgresTable) {
  auto db =
      sqlite::Database::Open(dir_ + "/warehouse.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  ASSERT_TRUE(db.ok());
  ASSERT_TRUE((*db)
                  ->Exec("CREATE TABLE accounts (id INTEGER, name TEXT, seats INTEGER);"
                         "INSERT INTO accounts VALUES (1, 'Acme', 10), (2, 'Globex', 20), "
                         "(3, 'Initech', 30);")
                  .ok());
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources: [{{ name: local, type: sqlite, path: warehouse.db }}]
models: [{{ name: accounts, source: local, sql: "SELECT id, name, seats FROM accounts", primary_key: id }}]
destinations:
  - name: app_db
    type: postgres
    settings:
      url: {}
      password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
      table: {}
      key_column: account_id
      create_table: true
mappings:
  - {{ name: accounts_to_app, model: accounts, destination: app_db, action: upsert,
      fields: {{ account_id: id, account_name: name, seats: seats }} }}
)",
                                                        server().url, table_);
  CliResult r = RunCli(dir_, {"sync", "accounts_to_app", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Query(fmt::format("SELECT account_id, account_name, seats FROM {} ORDER BY 1", table_)),
            (std::vector<std::string>{"1|Acme|10", "2|Globex|20", "3|Initech|30"}));

  ASSERT_TRUE((*db)
                  ->Exec("UPDATE accounts SET seats = 25 WHERE id = 2;"
                         "DELETE FROM accounts WHERE id = 3;"
                         "INSERT INTO accounts VALUES (4, 'Umbrella', 40);")
                  .ok());
  r = RunCli(dir_, {"sync", "accounts_to_app", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json s = nlohmann::json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["deleted"], 1);
  EXPECT_EQ(Query(fmt::format("SELECT account_id, account_name, seats FROM {} ORDER BY 1", table_)),
            (std::vector<std::string>{"1|Acme|10", "2|Globex|25", "4|Umbrella|40"}));
}

// The same model synced over one connection and over parallel_connections: 2
// (two key ranges in one snapshot) leaves the same destination state, run
// after run, including rejected NULL and duplicate keys.
TEST_F(PostgresE2eTest, ParallelExtractionGivesTheSameDestinationState) {
  ExecOrFail(fmt::format("CREATE TABLE {} (id bigint, email text, ltv numeric(14,2))", table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g * 7, 'user' || g || '@example.com', g * 1.25 "
                  "FROM generate_series(-40, 1500) g "
                  "UNION ALL VALUES (NULL, 'nokey@example.com', 1), (35, 'dup@example.com', 2)",
                  table_));
  WebhookReceiver one_receiver;
  WebhookReceiver two_receiver;
  WebhookReceiver pid_receiver;
  ASSERT_TRUE(one_receiver.Start().ok());
  ASSERT_TRUE(two_receiver.Start().ok());
  ASSERT_TRUE(pid_receiver.Start().ok());
  auto workspace = [&](const std::string& name, int connections, const WebhookReceiver& hook) {
    std::string ws = dir_ + "/" + name;
    fs::create_directories(ws);
    std::ofstream(ws + "/backflow.yaml")
        << fmt::format(R"(
sources:
  - name: warehouse
    type: postgres
    url: {0}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
    parallel_connections: {1}
models:
  - {{ name: customers, source: warehouse, primary_key: id,
      sql: "SELECT id, email, ltv FROM {2}" }}
  - {{ name: backends, source: warehouse, primary_key: id,
      sql: "SELECT id, pg_backend_pid() AS pid FROM {2} WHERE id IS NOT NULL AND id <> 35" }}
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{3}" }} }}
  - {{ name: pids, type: webhook, settings: {{ url: "{4}" }} }}
mappings:
  - {{ name: to_hook, model: customers, destination: hook, action: send_batch, batch_size: 200,
      fields: {{ id: id, email: email, ltv: ltv }} }}
  - {{ name: to_pids, model: backends, destination: pids, action: send_batch,
      fields: {{ id: id, pid: pid }} }}
)",
                       server().url, connections, table_, hook.Url(), pid_receiver.Url());
    return ws;
  };
  const std::string one = workspace("one", 1, one_receiver);
  const std::string two = workspace("two", 2, two_receiver);
  auto sync = [&](const std::string& ws) {
    CliResult r = RunCli(ws, {"sync", "to_hook", "--json"});
    // 2: the run finished with rejected records (the NULL and duplicate keys).
    EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
    return nlohmann::json::parse(r.LastLine());
  };
  auto counts = [](const nlohmann::json& s) {
    return fmt::format("extracted {} added {} updated {} deleted {} rejected {} succeeded {}",
                       s["extracted"].dump(), s["added"].dump(), s["updated"].dump(),
                       s["deleted"].dump(), s["rejected"].dump(), s["succeeded"].dump());
  };

  nlohmann::json s1 = sync(one);
  nlohmann::json s2 = sync(two);
  EXPECT_EQ(s1["extracted"], 1543);
  EXPECT_EQ(s1["added"], 1540);  // 1541 ids, less id 35 (twice)
  EXPECT_EQ(s1["rejected"], 3);  // the NULL key and both rows of id 35
  EXPECT_EQ(counts(s2), counts(s1));
  ASSERT_EQ(one_receiver.State().size(), 1540u);
  EXPECT_EQ(two_receiver.State(), one_receiver.State());

  ExecOrFail(fmt::format("UPDATE {} SET ltv = ltv + 1 WHERE id % 100 = 0", table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id BETWEEN 5000 AND 5100", table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g, 'new' || g || '@example.com', 3 FROM "
                  "generate_series(20000, 20010) g",
                  table_));
  s1 = sync(one);
  s2 = sync(two);
  EXPECT_EQ(s1["added"], 11);
  EXPECT_GT(s1["updated"].get<int>(), 0);
  EXPECT_GT(s1["deleted"].get<int>(), 0);
  EXPECT_EQ(counts(s2), counts(s1));
  EXPECT_EQ(two_receiver.State(), one_receiver.State());

  // The parallel workspace did read over two connections: the rows of its
  // `backends` model came from two server processes.
  CliResult r = RunCli(two, {"sync", "to_pids", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  std::set<std::string> pids;
  for (const auto& [id, record] : pid_receiver.State()) pids.insert(record["pid"].dump());
  EXPECT_EQ(pids.size(), 2u);
}

TEST_F(PostgresE2eTest, WarehouseChangeDetectionThroughTheBinary) {
  ExecOrFail(fmt::format("CREATE TABLE {} (id bigint, email text, plan text, seen int)", table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g, 'user' || g || '@example.com', 'free', 0 "
                  "FROM generate_series(1, 500) g",
                  table_));
  const std::string state_schema = table_ + "_state";
  WebhookReceiver receiver;
  ASSERT_TRUE(receiver.Start().ok());
  std::ofstream(dir_ + "/backflow.yaml")
      << fmt::format(R"(
sources:
  - name: warehouse
    type: postgres
    url: {}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
    state_schema: {}
models:
  - name: customers
    source: warehouse
    sql: SELECT id, email, plan, seen FROM {}
    primary_key: id
    change_detection: warehouse
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{}" }} }}
mappings:
  - name: to_hook
    model: customers
    destination: hook
    action: send_batch
    batch_size: 100
    fields: {{ id: id, email: email, plan: plan }}
)",
                     server().url, state_schema, table_, receiver.Url());
  CliResult valid = RunCli(dir_, {"validate"});
  EXPECT_EQ(valid.exit_code, 0) << valid.out << valid.err;
  CliResult r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json s = nlohmann::json::parse(r.LastLine());
  EXPECT_EQ(s["extracted"], 500);
  EXPECT_EQ(s["added"], 500);
  EXPECT_EQ(receiver.State().size(), 500u);
  EXPECT_EQ(Query(fmt::format("SELECT count(*) FROM {}.checkpoints", state_schema)),
            std::vector<std::string>{"500"});

  ExecOrFail(fmt::format("UPDATE {} SET plan = 'pro' WHERE id IN (2, 4)", table_));
  ExecOrFail(fmt::format("UPDATE {} SET seen = 1 WHERE id = 6", table_));  // not mapped
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id = 8", table_));
  ExecOrFail(fmt::format("INSERT INTO {} VALUES (1000, 'late@example.com', 'free', 0)", table_));
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = nlohmann::json::parse(r.LastLine());
  EXPECT_EQ(s["extracted"], 4);  // 2, 4, 6 and 1000: only those left PostgreSQL
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 2);
  EXPECT_EQ(s["deleted"], 1);
  EXPECT_EQ(s["unchanged"], 497);
  auto state = receiver.State();
  EXPECT_EQ(state.size(), 500u);
  EXPECT_EQ(state.count("8"), 0u);
  EXPECT_EQ(state["2"]["plan"], "pro");

  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = nlohmann::json::parse(r.LastLine());
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["unchanged"], 500);
  ExecOrFail(fmt::format("DROP SCHEMA {} CASCADE", state_schema));
}

}  // namespace
}  // namespace backflow
