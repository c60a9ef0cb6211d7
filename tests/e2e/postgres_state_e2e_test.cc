// End-to-end: the real binary with its state in PostgreSQL (`state:
// postgresql://...`, ctest fixture `postgres`): syncs, run history and a
// checkpoint reset all go through the shared store, nothing is kept in a
// local state file, and the password in the url never shows.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "backflow/pg/connection.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/webhook_receiver.h"
#include "cli_runner.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "pg_e2e.h"

namespace backflow {
namespace {

using e2e::CliResult;
using e2e::RunCli;

class PostgresStateE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("pgstate")) return;
    db_ = table_;  // unique to this test
    auto admin = Admin();
    ASSERT_TRUE(admin.ok()) << admin.status();
    ASSERT_TRUE((*admin)->Exec(fmt::format("CREATE DATABASE {} OWNER backflow", db_)).ok());
  }
  void TearDown() override {
    if (db_.empty()) return;
    auto admin = Admin();
    if (admin.ok()) (void)(*admin)->Exec(fmt::format("DROP DATABASE {} WITH (FORCE)", db_));
  }
  absl::StatusOr<std::unique_ptr<pg::Connection>> Admin() const {
    return pg::Connection::Open({server().admin_url, server().admin_password, 10, {}});
  }
  // The first column of the first row of `sql` on the state database.
  std::string StateValue(const std::string& sql) {
    auto conn = pg::Connection::Open(
        {fmt::format("postgresql://backflow@127.0.0.1:{}/{}", server().port, db_),
         server().password,
         10,
         {}});
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return "";
    auto result = (*conn)->Exec(sql);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok() || PQntuples(result->get()) == 0) return "";
    return PQgetvalue(result->get(), 0, 0);
  }
  void ExpectNoPassword(const CliResult& r) {
    EXPECT_EQ(r.out.find(server().password), std::string::npos) << r.out;
    EXPECT_EQ(r.err.find(server().password), std::string::npos) << r.err;
  }

  std::string db_;
};

TEST_F(PostgresStateE2eTest, SyncsKeepTheirStateInPostgres) {
  auto db =
      sqlite::Database::Open(dir_ + "/warehouse.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  ASSERT_TRUE(db.ok());
  ASSERT_TRUE((*db)
                  ->Exec("CREATE TABLE accounts (id INTEGER, name TEXT);"
                         "INSERT INTO accounts VALUES (1, 'Acme'), (2, 'Globex'), (3, 'Initech');")
                  .ok());
  WebhookReceiver receiver;
  ASSERT_TRUE(receiver.Start().ok());
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
state: postgresql://backflow:${{env:BACKFLOW_E2E_PG_PASSWORD}}@127.0.0.1:{}/{}
sources: [{{ name: local, type: sqlite, path: warehouse.db }}]
models: [{{ name: accounts, source: local, sql: "SELECT id, name FROM accounts", primary_key: id }}]
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{}" }} }}
mappings:
  - {{ name: to_hook, model: accounts, destination: hook, action: send_batch, batch_size: 2,
      fields: {{ id: id, name: name }} }}
)",
                                                        server().port, db_, receiver.Url());
  CliResult r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  ExpectNoPassword(r);
  EXPECT_EQ(nlohmann::json::parse(r.LastLine())["added"], 3);
  EXPECT_EQ(receiver.State().size(), 3u);
  EXPECT_EQ(StateValue("SELECT count(*) FROM backflow.checkpoints WHERE mapping = 'to_hook'"), "3");
  EXPECT_EQ(StateValue("SELECT count(*) FROM backflow.in_flight"), "0");
  EXPECT_EQ(StateValue("SELECT status FROM backflow.runs ORDER BY id DESC LIMIT 1"), "succeeded");

  ASSERT_TRUE((*db)
                  ->Exec("UPDATE accounts SET name = 'Globex Corp' WHERE id = 2;"
                         "DELETE FROM accounts WHERE id = 3;"
                         "INSERT INTO accounts VALUES (4, 'Umbrella');")
                  .ok());
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json s = nlohmann::json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["deleted"], 1);
  EXPECT_EQ(s["unchanged"], 1);
  auto state = receiver.State();
  EXPECT_EQ(state.count("3"), 0u);
  EXPECT_EQ(state["2"]["name"], "Globex Corp");

  CliResult runs = RunCli(dir_, {"runs", "list"});
  ASSERT_EQ(runs.exit_code, 0) << runs.out << runs.err;
  ExpectNoPassword(runs);
  EXPECT_NE(runs.out.find("to_hook"), std::string::npos) << runs.out;
  EXPECT_EQ(StateValue("SELECT count(*) FROM backflow.runs"), "2");

  CliResult reset = RunCli(dir_, {"checkpoint", "reset", "to_hook"});
  ASSERT_EQ(reset.exit_code, 0) << reset.out << reset.err;
  EXPECT_EQ(StateValue("SELECT count(*) FROM backflow.checkpoints"), "0");
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.LastLine())["added"], 3);

  // No local state file anywhere in the workspace.
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_)) {
    EXPECT_EQ(entry.path().filename().string().rfind("state.db", 0), std::string::npos)
        << "unexpected local state file " << entry.path();
  }
}

TEST_F(PostgresStateE2eTest, AWrongPasswordIsReportedWithoutIt) {
  std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
state: postgresql://backflow:N0tTheRightOne@127.0.0.1:{}/{}
sources: [{{ name: local, type: sqlite, path: warehouse.db }}]
)",
                                                        server().port, db_);
  CliResult r = RunCli(dir_, {"runs", "list"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("rejected the login"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("N0tTheRightOne"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("N0tTheRightOne"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace backflow
