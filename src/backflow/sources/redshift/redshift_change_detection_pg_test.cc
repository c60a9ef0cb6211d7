// change_detection: warehouse on the libpq `redshift` source, through the
// Redshift-personality proxy in front of the test PostgreSQL: the same
// dialect as the Data API (redshift_change_detection_test.cc) with `$n`
// parameters, single-row reads, Apply in one transaction, byte order of
// keys, and real privilege refusals (SQLSTATE 42501).
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "backflow/common/clock.h"
#include "backflow/pg/testing/test_server.h"
#include "backflow/sources/redshift/fake_redshift_server.h"
#include "backflow/sources/redshift/redshift_source.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

using warehouse_testing::Fp;

class RedshiftLibpqChangeDetectionTest : public pg::testing::PostgresTest {
 protected:
  void SetUp() override {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    FakeRedshiftOptions options;
    options.upstream_port = server().port;
    fake_ = std::make_unique<FakeRedshiftServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    table_ = pg::testing::UniqueName("rs_cd");
    schema_ = pg::testing::UniqueName("rs_state");
    ExecOrFail(
        fmt::format("CREATE TABLE {} (id varchar(32), plan varchar(16), age bigint)", table_));
  }
  void TearDown() override {
    if (!IsSkipped()) {
      ExecOrFail(fmt::format("DROP TABLE IF EXISTS {}", table_));
      ExecOrFail(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", schema_));
    }
  }

  std::unique_ptr<Source> Make(const std::string& user, const std::string& password) {
    RedshiftConfig config;
    config.url = fake_->Url(user, "backflow_test");
    config.password = password;
    config.sslmode = "disable";  // the fake does not speak TLS
    config.state_schema = schema_;
    return NewRedshiftSource(std::move(config), ConnectorEnv{nullptr, &clock_});
  }

  // Candidate keys ("<null>" for NULL) with their hashes, and the stored
  // entries' keys in the order they came.
  struct Pass {
    std::map<std::string, std::string> hashes;
    std::vector<std::string> entries;
    int64_t count = -1;
  };
  Pass RunPass(WarehouseChangeDetection& cd, const WarehouseCandidateFilter& filter) {
    Pass pass;
    warehouse_testing::StoredEntries stored = warehouse_testing::PassOver(
        cd, fmt::format("SELECT id, plan, age FROM {};", table_), "id", filter,
        filter.mappings[0].first, [&](const Row& row) {
          pass.hashes[row[0].is_null() ? "<null>" : row[0].text()] = row[3].ToString();
        });
    for (const WarehouseCheckpointEntry& entry : stored.entries) {
      pass.entries.push_back(entry.key);
      EXPECT_EQ(entry.identity, "id:" + entry.key);
    }
    pass.count = stored.count;
    return pass;
  }

  static absl::Status Deliver(WarehouseChangeDetection& cd, const Pass& pass) {
    std::vector<WarehouseCheckpointWrite> writes;
    for (const auto& [key, hash] : pass.hashes) {
      if (key != "<null>") writes.push_back(warehouse_testing::DeliveredWrite(key, hash, Fp(1)));
    }
    return cd.Apply("m", writes);
  }

  static WarehouseCandidateFilter Filter() {
    WarehouseCandidateFilter f;
    f.mappings = {{"m", Fp(1)}};
    return f;
  }

  FakeClock clock_;
  std::unique_ptr<FakeRedshiftServer> fake_;
  std::string table_, schema_;
};

TEST_F(RedshiftLibpqChangeDetectionTest, PassesAndWritesThroughTheRedshiftProxy) {
  ExecOrFail(fmt::format(
      "INSERT INTO {} VALUES ('a','free',1), ('B','free',2), ('_','pro',3), (NULL,'x',4), "
      "('\xC3\xA9','free',5)",
      table_));
  auto source = Make("backflow", server().password);
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);
  Pass first = RunPass(*cd, Filter());
  EXPECT_EQ(first.hashes.size(), 5u);
  EXPECT_EQ(first.count, 0);
  ASSERT_TRUE(Deliver(*cd, first).ok());

  Pass second = RunPass(*cd, Filter());
  EXPECT_THAT(second.hashes, ::testing::SizeIs(1));
  EXPECT_EQ(second.hashes.count("<null>"), 1u);
  EXPECT_EQ(second.count, 4);

  ExecOrFail(fmt::format("UPDATE {} SET plan = 'pro' WHERE id = 'a'", table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id = 'B'", table_));
  WarehouseCandidateFilter flight = Filter();
  flight.in_flight_keys = {"\xC3\xA9"};
  Pass third = RunPass(*cd, flight);
  std::set<std::string> keys;
  for (const auto& [k, h] : third.hashes) keys.insert(k);
  EXPECT_THAT(keys, UnorderedElementsAre("a", "<null>", "\xC3\xA9"));
  EXPECT_NE(third.hashes["a"], first.hashes["a"]);
  // Byte order (COLLATE case_sensitive became "C"): "B" < "_" < "a" < "é".
  EXPECT_THAT(third.entries, ElementsAre("B", "a", "\xC3\xA9"));

  // Nothing Redshift would refuse was sent; Apply ran in one transaction.
  int begins = 0, commits = 0;
  for (const FakeRedshiftStatement& s : fake_->Statements()) {
    EXPECT_FALSE(s.refused) << s.sql << ": " << s.error;
    EXPECT_THAT(s.sql, ::testing::Not(HasSubstr("DISTINCT FROM")));
    begins += s.sql == "BEGIN";
    commits += s.sql == "COMMIT";
  }
  EXPECT_GE(begins, 1);
  EXPECT_EQ(begins, commits);
  EXPECT_EQ(fake_->violations(), 0);

  // Only the checkpoint tables are left.
  auto conn = Connect();
  ASSERT_TRUE(conn.ok());
  auto tables = (*conn)->Exec(fmt::format(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = '{}' ORDER BY 1",
      schema_));
  ASSERT_TRUE(tables.ok()) << tables.status();
  ASSERT_EQ(PQntuples(tables->get()), 2);
  EXPECT_STREQ(PQgetvalue(tables->get(), 0, 0), "checkpoints");
  EXPECT_STREQ(PQgetvalue(tables->get(), 1, 0), "pass_tables");
}

TEST_F(RedshiftLibpqChangeDetectionTest, TheProxyRefusesWhatRedshiftRefuses) {
  auto conn = pg::Connection::Open(pg::ConnectOptions{
      fake_->Url("backflow", "backflow_test") + "?sslmode=disable", server().password});
  ASSERT_TRUE(conn.ok()) << conn.status();
  auto distinct = (*conn)->Exec("SELECT 1 IS DISTINCT FROM 2");
  ASSERT_FALSE(distinct.ok());
  EXPECT_THAT(std::string(distinct.status().message()), HasSubstr("Not implemented"));
  auto collate = (*conn)->Exec("SELECT 'a' COLLATE \"C\" < 'b'");
  ASSERT_FALSE(collate.ok());
  auto redshift = (*conn)->Exec(
      "SELECT CAST(j[1] AS VARCHAR(65535)), CAST(j AS VARCHAR(65535)) IS NULL FROM (SELECT "
      "JSON_PARSE($1) AS elements) AS j_array, j_array.elements AS j WHERE 'B' < 'a' COLLATE "
      "case_sensitive",
      {"[[\"k\", \"v\"]]"});
  ASSERT_TRUE(redshift.ok()) << redshift.status();
  ASSERT_EQ(PQntuples(redshift->get()), 1);
  EXPECT_STREQ(PQgetvalue(redshift->get(), 0, 0), "v");
}

TEST_F(RedshiftLibpqChangeDetectionTest, PermissionDeniedSaysWhatToGrant) {
  const std::string role = pg::testing::UniqueName("rs_limited");
  auto admin = AdminConnect();
  ASSERT_TRUE(admin.ok()) << admin.status();
  ASSERT_TRUE((*admin)->Exec(fmt::format("CREATE ROLE {} LOGIN PASSWORD 'pw-limited'", role)).ok());
  ASSERT_TRUE((*admin)->Exec(fmt::format("GRANT SELECT ON {} TO {}", table_, role)).ok());
  auto source = Make(role, "pw-limited");
  auto snapshot = source->warehouse_change_detection()->Begin(
      fmt::format("SELECT id, plan FROM {}", table_), "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr(fmt::format("GRANT CREATE ON DATABASE backflow_test TO {};", role)));
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr("permission denied for database backflow_test"));

  // The schema exists (an administrator made it), without CREATE for the role.
  ExecOrFail(fmt::format("CREATE SCHEMA {}", schema_));
  ASSERT_TRUE((*admin)->Exec(fmt::format("GRANT USAGE ON SCHEMA {} TO {}", schema_, role)).ok());
  source = Make(role, "pw-limited");
  snapshot = source->warehouse_change_detection()->Begin(
      fmt::format("SELECT id, plan FROM {}", table_), "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr(fmt::format("GRANT USAGE, CREATE ON SCHEMA {} TO {};", schema_, role)));
  (void)(*admin)->Exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", schema_));
  (void)(*admin)->Exec(fmt::format("DROP OWNED BY {}", role));
  (void)(*admin)->Exec(fmt::format("DROP ROLE {}", role));
}

}  // namespace
}  // namespace backflow
