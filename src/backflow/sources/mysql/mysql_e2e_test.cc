// End to end through the real `backflow` binary with a real MariaDB (the
// ctest `mariadb` fixture): a model with `change_detection: warehouse` synced
// to the webhook receiver again and again; only changed rows leave MariaDB.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>

#include "backflow/sources/mysql/mysql_test_server.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "warehouse_e2e.h"

namespace backflow {
namespace {

using e2e::CliResult;
using e2e::RunCli;

class MysqlE2eTest : public mysql_testing::MariadbTest {
 protected:
  void SetUp() override {
    MariadbTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    table_ = mysql_testing::UniqueName("e2e_customers");
    state_schema_ = mysql_testing::UniqueName("backflow_e2e_state");
    setenv("BACKFLOW_E2E_MYSQL_PASSWORD", server().password.c_str(), 1);
  }
  void TearDown() override {
    if (IsSkipped()) return;
    MYSQL* m = Connect();
    if (m == nullptr) return;
    (void)mysql_query(m, fmt::format("DROP DATABASE IF EXISTS {}", state_schema_).c_str());
    (void)mysql_query(m, fmt::format("DROP TABLE IF EXISTS {}", table_).c_str());
    mysql_close(m);
  }

  testing::ScratchDir scratch_{"mysql-e2e"};
  const std::string dir_ = scratch_.string();
  std::string table_, state_schema_;
};

TEST_F(MysqlE2eTest, WarehouseChangeDetectionThroughTheBinary) {
  Exec(fmt::format("CREATE TABLE {} (id bigint, email varchar(80), plan varchar(20), seen int)",
                   table_));
  Exec(
      fmt::format("INSERT INTO {} SELECT seq, CONCAT('user', seq, '@example.com'), 'free', 0 "
                  "FROM seq_1_to_500",
                  table_));
  auto receiver = e2e::StartWebhookReceiver(/*signed_requests=*/false);
  ASSERT_NE(receiver, nullptr);
  std::ofstream(dir_ + "/backflow.yaml")
      << fmt::format(R"(
state: sqlite:.backflow/state.db
sources:
  - name: warehouse
    type: mysql
    url: {}
    password: ${{env:BACKFLOW_E2E_MYSQL_PASSWORD}}
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
                     server().url, state_schema_, table_, receiver->Url());
  CliResult valid = RunCli(dir_, {"validate"});
  EXPECT_EQ(valid.exit_code, 0) << valid.out << valid.err;
  CliResult r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json s = e2e::Summary(r);
  EXPECT_EQ(s["extracted"], 500);
  EXPECT_EQ(s["added"], 500);
  EXPECT_EQ(receiver->State().size(), 500u);
  EXPECT_EQ(Rows(fmt::format("SELECT COUNT(*) FROM {}.checkpoints", state_schema_)).at(0).at(0),
            "500");

  // Nothing changed: nothing leaves MariaDB.
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = e2e::Summary(r);
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["unchanged"], 500);

  Exec(fmt::format("UPDATE {} SET plan = 'pro' WHERE id IN (2, 4)", table_));
  Exec(fmt::format("UPDATE {} SET seen = 1 WHERE id = 6", table_));  // not mapped
  Exec(fmt::format("DELETE FROM {} WHERE id = 8", table_));
  Exec(fmt::format("INSERT INTO {} VALUES (1000, 'late@example.com', 'free', 0)", table_));
  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = e2e::Summary(r);
  EXPECT_EQ(s["extracted"], 4);  // 2, 4, 6 and 1000: only those left MariaDB
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 2);
  EXPECT_EQ(s["deleted"], 1);
  EXPECT_EQ(s["unchanged"], 497);
  auto state = receiver->State();
  EXPECT_EQ(state.size(), 500u);
  EXPECT_EQ(state.count("8"), 0u);
  EXPECT_EQ(state["2"]["plan"], "pro");

  r = RunCli(dir_, {"sync", "to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = e2e::Summary(r);
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["unchanged"], 500);
}

}  // namespace
}  // namespace backflow
