// The engine with `change_detection: warehouse` on a real MariaDB: the shared
// checks of ../warehouse_sql/testing (the same change sets as local mode over
// random rounds, a retried record, an interrupted checkpoint write). The keys
// are strings whose byte order differs from the table's collation order (case,
// '_', multi-byte UTF-8), some equal under that collation.
#include <gtest/gtest.h>

#include "backflow/common/clock.h"
#include "backflow/sources/mysql/mysql_source.h"
#include "backflow/sources/mysql/mysql_test_server.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_mode_property.h"
#include "fmt/format.h"

namespace backflow {
namespace {

// Key n: 'k0', 'K0' (equal to 'k0' in utf8mb4_unicode_ci), 'é0', '_0', 'k1'...
std::string Key(int n) {
  static const char* const kPrefixes[] = {"k", "K", "\xC3\xA9", "_"};
  return fmt::format("{}{}", kPrefixes[n % 4], n / 4);
}

class MysqlWarehouseModeTest : public mysql_testing::MariadbTest,
                               public warehouse_testing::WarehouseModeFixture {
 protected:
  void SetUp() override {
    MariadbTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    table_ = mysql_testing::UniqueName("wm");
    schema_ = mysql_testing::UniqueName("backflow_wm_state");
    Exec(fmt::format(
        "CREATE TABLE {} (id varchar(40), email varchar(80), plan varchar(20), age int, note "
        "text) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        table_));
  }
  void TearDown() override {
    if (IsSkipped()) return;
    MYSQL* m = Connect();
    if (m == nullptr) return;
    (void)mysql_query(m, fmt::format("DROP DATABASE IF EXISTS {}", schema_).c_str());
    (void)mysql_query(m, fmt::format("DROP TABLE IF EXISTS {}", table_).c_str());
    mysql_close(m);
  }

  std::string WarehouseName() const override { return "mysql"; }
  SourceDefinition WarehouseDefinition() const override { return MysqlSourceDefinition(); }
  std::string SourceYaml() const override {
    return fmt::format(
        "    type: mysql\n    url: \"{}\"\n    password: \"{}\"\n    "
        "state_schema: {}\n",
        server().url, server().password, schema_);
  }
  ConnectorEnv WarehouseEnv() override { return ConnectorEnv{nullptr, &clock_}; }
  std::string NewModelTable(int) override {
    Exec(fmt::format("TRUNCATE TABLE {}", table_));
    Exec(fmt::format("DROP DATABASE IF EXISTS {}", schema_));
    return table_;
  }
  void WarehouseExec(const std::string& sql) override { Exec(sql); }
  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return Rows(sql);
  }
  std::string KeyLiteral(int n) const override { return "'" + Key(n) + "'"; }
  std::string KeyText(int n) const override { return Key(n); }
  std::string KeyIs(int n) const override { return "BINARY id = " + KeyLiteral(n); }
  std::string Concat(const std::string& a, const std::string& b) const override {
    return fmt::format("CONCAT({}, {})", a, b);
  }
  std::string ResolveOneDuplicateSql(const std::string& table) const override {
    return fmt::format(
        "DELETE FROM {0} WHERE BINARY id = (SELECT k FROM (SELECT BINARY id AS k FROM {0} WHERE "
        "id IS NOT NULL GROUP BY BINARY id HAVING COUNT(*) > 1 LIMIT 1) AS x) LIMIT 1",
        table);
  }

  FakeClock clock_;
  std::string table_, schema_;
};

TEST_F(MysqlWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  warehouse_testing::ExpectSameChangeSetsAsLocalMode(
      *this, {.initial_rows = 30, .rounds = 12, .full_resync_round = 8});
}

TEST_F(MysqlWarehouseModeTest, FailedRecordIsRetriedNextRun) {
  warehouse_testing::ExpectFailedRecordRetriedNextRun(*this);
}

TEST_F(MysqlWarehouseModeTest, InterruptedCheckpointWriteResendsOnlyTheBatchInFlight) {
  warehouse_testing::ExpectInterruptedCheckpointWriteResendsOnlyTheBatchInFlight(
      *this, fmt::format("RENAME TABLE {0}.checkpoints TO {0}.checkpoints_away", schema_),
      fmt::format("RENAME TABLE {0}.checkpoints_away TO {0}.checkpoints", schema_),
      fmt::format("SELECT COUNT(*) AS c0 FROM {}.checkpoints WHERE mapping = 'm'", schema_));
}

}  // namespace
}  // namespace backflow
