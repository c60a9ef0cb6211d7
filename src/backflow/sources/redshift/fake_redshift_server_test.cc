// The fake enforces Redshift's restrictions on raw libpq clients, so that a
// client relying on PostgreSQL-only features fails against it.
#include "backflow/sources/redshift/fake_redshift_server.h"

#include <string>
#include <vector>

#include "backflow/pg/connection.h"
#include "backflow/pg/testing/test_server.h"
#include "backflow/sources/postgres/postgres_source.h"
#include "backflow/sources/redshift/redshift_source.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Field(const PGresult* result, int code) {
  const char* v = result != nullptr ? PQresultErrorField(result, code) : nullptr;
  return v != nullptr ? v : "";
}

class FakeRedshiftServerTest : public pg::testing::PostgresTest {
 protected:
  void SetUp() override {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    StartFake(FakeRedshiftOptions{});
  }

  void StartFake(FakeRedshiftOptions options) {
    fake_.reset();
    options.upstream_port = server().port;
    fake_ = std::make_unique<FakeRedshiftServer>(std::move(options));
    ASSERT_TRUE(fake_->Start().ok());
  }

  // A plain libpq connection through the fake (sslmode=prefer: declined).
  std::unique_ptr<pg::Connection> Client() {
    pg::ConnectOptions options;
    options.url = fake_->Url("backflow", "backflow_test");
    options.password = server().password;
    absl::StatusOr<std::unique_ptr<pg::Connection>> conn = pg::Connection::Open(options);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? *std::move(conn) : nullptr;
  }

  // Runs `sql` (simple query); returns the result, whatever its status.
  static pg::Result Exec(pg::Connection& conn, const std::string& sql) {
    return pg::Result(PQexec(conn.get(), sql.c_str()));
  }
  static void ExpectOk(pg::Connection& conn, const std::string& sql) {
    pg::Result r = Exec(conn, sql);
    ExecStatusType st = PQresultStatus(r.get());
    EXPECT_TRUE(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        << sql << ": " << PQresultErrorMessage(r.get());
  }
  // Expects `sql` to fail with `sqlstate`; returns the primary message.
  static std::string ExpectError(pg::Connection& conn, const std::string& sql,
                                 const std::string& sqlstate) {
    pg::Result r = Exec(conn, sql);
    EXPECT_EQ(PQresultStatus(r.get()), PGRES_FATAL_ERROR) << sql;
    EXPECT_EQ(Field(r.get(), PG_DIAG_SQLSTATE), sqlstate)
        << sql << ": " << PQresultErrorMessage(r.get());
    return Field(r.get(), PG_DIAG_MESSAGE_PRIMARY);
  }

  std::unique_ptr<FakeRedshiftServer> fake_;
};

TEST_F(FakeRedshiftServerTest, ReportsRedshiftsServerVersionAndRelaysQueries) {
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  EXPECT_STREQ(PQparameterStatus(conn->get(), "server_version"), "8.0.2");
  EXPECT_EQ(PQserverVersion(conn->get()), 80002);
  pg::Result r = Exec(*conn, "SELECT 40 + 2 AS answer");
  ASSERT_EQ(PQresultStatus(r.get()), PGRES_TUPLES_OK);
  EXPECT_STREQ(PQgetvalue(r.get(), 0, 0), "42");
  EXPECT_EQ(fake_->sessions(), 1);
  EXPECT_EQ(fake_->Statements().back().sql, "SELECT 40 + 2 AS answer");
}

TEST_F(FakeRedshiftServerTest, RefusesCopyWithRedshiftsSyntaxError) {
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  pg::Result r = Exec(*conn, "COPY (SELECT 1) TO STDOUT");
  EXPECT_EQ(PQresultStatus(r.get()), PGRES_FATAL_ERROR);
  EXPECT_EQ(Field(r.get(), PG_DIAG_SQLSTATE), "42601");
  EXPECT_EQ(Field(r.get(), PG_DIAG_MESSAGE_PRIMARY),
            "syntax error at or near \"(\" in context \"COPY (\", at line 1");
  EXPECT_EQ(Field(r.get(), PG_DIAG_STATEMENT_POSITION), "6");
  EXPECT_THAT(ExpectError(*conn, "COPY t TO STDOUT", "42601"),
              HasSubstr("syntax error at or near \"TO\""));
  EXPECT_THAT(ExpectError(*conn, "COPY t (a, b) FROM STDIN", "42601"),
              HasSubstr("at or near \"STDIN\""));
  EXPECT_THAT(ExpectError(*conn, "copy (select 1) to stdout with (format binary)", "42601"),
              HasSubstr("\"(\""));
  // The session is still usable; inside a transaction the refusal aborts it.
  ExpectOk(*conn, "SELECT 1");
  ExpectOk(*conn, "BEGIN");
  ExpectError(*conn, "COPY (SELECT 1) TO STDOUT", "42601");
  ExpectError(*conn, "SELECT 1", "25P02");
  ExpectOk(*conn, "ROLLBACK");
  EXPECT_EQ(fake_->violations(), 0);
  int refused = 0;
  for (const FakeRedshiftStatement& s : fake_->Statements()) refused += s.refused;
  EXPECT_EQ(refused, 5);
}

TEST_F(FakeRedshiftServerTest, TheSimpleProtocolRefusesTheWholeMessage) {
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  std::string table = pg::testing::UniqueName("rs_fake");
  ExpectError(*conn, "CREATE TABLE " + table + " (a int); COPY (SELECT 1) TO STDOUT", "42601");
  // Nothing ran: the table does not exist.
  ExpectError(*conn, "SELECT * FROM " + table, "42P01");
}

TEST_F(FakeRedshiftServerTest, AllowsOnlyRedshiftCursors) {
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  // Outside a transaction block: PostgreSQL itself refuses, as Redshift does.
  ExpectError(*conn, "DECLARE c CURSOR FOR SELECT 1", "25P01");
  ExpectOk(*conn, "BEGIN");
  EXPECT_THAT(ExpectError(*conn, "DECLARE c SCROLL CURSOR FOR SELECT 1", "42601"),
              HasSubstr("\"SCROLL\""));
  ExpectOk(*conn, "ROLLBACK");
  ExpectOk(*conn, "BEGIN");
  EXPECT_THAT(ExpectError(*conn, "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "42601"),
              HasSubstr("\"WITH\""));
  ExpectOk(*conn, "ROLLBACK");
  ExpectOk(*conn, "BEGIN");
  ExpectOk(*conn, "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 30) g");
  EXPECT_THAT(ExpectError(*conn, "DECLARE d CURSOR FOR SELECT 1", "0A000"),
              HasSubstr("one cursor"));
  ExpectOk(*conn, "ROLLBACK");
  ExpectOk(*conn, "BEGIN");
  ExpectOk(*conn, "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 30) g");
  EXPECT_THAT(ExpectError(*conn, "FETCH 5 FROM c", "42601"), HasSubstr("\"5\""));
  ExpectOk(*conn, "ROLLBACK");
  ExpectOk(*conn, "BEGIN");
  ExpectOk(*conn, "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 30) g");
  EXPECT_THAT(ExpectError(*conn, "FETCH BACKWARD 1 FROM c", "42601"), HasSubstr("BACKWARD"));
  ExpectOk(*conn, "ROLLBACK");
  ExpectOk(*conn, "BEGIN");
  ExpectOk(*conn, "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 30) g");
  EXPECT_THAT(ExpectError(*conn, "FETCH FORWARD 5 IN c", "42601"), HasSubstr("\"IN\""));
  ExpectOk(*conn, "ROLLBACK");
  ExpectOk(*conn, "BEGIN READ ONLY");
  ExpectOk(*conn, "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 30) g");
  pg::Result r = Exec(*conn, "FETCH FORWARD 12 FROM c");
  ASSERT_EQ(PQresultStatus(r.get()), PGRES_TUPLES_OK);
  EXPECT_EQ(PQntuples(r.get()), 12);
  ExpectOk(*conn, "FETCH NEXT FROM c");
  ExpectOk(*conn, "FETCH ALL FROM c");
  ExpectOk(*conn, "CLOSE c");
  // After CLOSE a new cursor may be declared.
  ExpectOk(*conn, "DECLARE d CURSOR FOR SELECT 1");
  ExpectOk(*conn, "COMMIT");
  EXPECT_THAT(fake_->FetchCounts(), ElementsAre(12, 1, -1));
  EXPECT_EQ(fake_->max_rows_per_response(), 17);
  EXPECT_THAT(ExpectError(*conn, "BEGIN ISOLATION LEVEL SERIALIZABLE DEFERRABLE", "42601"),
              HasSubstr("DEFERRABLE"));
}

TEST_F(FakeRedshiftServerTest, SingleNodeClustersCapFetch) {
  FakeRedshiftOptions options;
  options.single_node = true;
  StartFake(options);
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  ExpectOk(*conn, "BEGIN");
  ExpectOk(*conn, "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 3000) g");
  ExpectOk(*conn, "FETCH FORWARD 1000 FROM c");
  ExpectError(*conn, "FETCH FORWARD 1001 FROM c", "0A000");
  ExpectOk(*conn, "ROLLBACK");
  ExpectOk(*conn, "BEGIN");
  ExpectOk(*conn, "DECLARE c CURSOR FOR SELECT 1");
  EXPECT_THAT(ExpectError(*conn, "FETCH ALL FROM c", "0A000"), HasSubstr("single-node"));
  ExpectOk(*conn, "ROLLBACK");
}

TEST_F(FakeRedshiftServerTest, AcceptsOnlyRedshiftConfigurationParameters) {
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  EXPECT_EQ(ExpectError(*conn, "SET bytea_output TO hex", "42704"),
            "unrecognized configuration parameter \"bytea_output\"");
  ExpectError(*conn, "SET IntervalStyle = iso_8601", "42704");
  EXPECT_THAT(ExpectError(*conn, "SET extra_float_digits TO 3", "22023"), HasSubstr("(-15 .. 2)"));
  ExpectOk(*conn, "SET extra_float_digits TO 2");
  ExpectOk(*conn, "SET TIME ZONE 'UTC'");
  ExpectOk(*conn, "SET datestyle TO 'ISO, MDY'");
  // Redshift-only parameters work (PostgreSQL sees redshift_fake.<name>).
  ExpectOk(*conn, "SET query_group TO 'etl'; SET wlm_query_slot_count TO 2");
  pg::Result r = Exec(*conn, "SELECT current_setting('redshift_fake.query_group')");
  ASSERT_EQ(PQresultStatus(r.get()), PGRES_TUPLES_OK);
  EXPECT_STREQ(PQgetvalue(r.get(), 0, 0), "etl");
  ExpectOk(*conn, "RESET query_group");
  // set_config, literal or bound.
  ExpectError(*conn, "SELECT set_config('IntervalStyle', 'iso_8601', false)", "42704");
  const char* params[] = {"bytea_output", "hex"};
  pg::Result bound(PQexecParams(conn->get(), "SELECT set_config($1, $2, false)", 2, nullptr, params,
                                nullptr, nullptr, 0));
  EXPECT_EQ(Field(bound.get(), PG_DIAG_SQLSTATE), "42704");
  const char* ok_params[] = {"TimeZone", "UTC"};
  pg::Result fine(PQexecParams(conn->get(), "SELECT set_config($1, $2, false)", 2, nullptr,
                               ok_params, nullptr, nullptr, 0));
  EXPECT_EQ(PQresultStatus(fine.get()), PGRES_TUPLES_OK) << PQresultErrorMessage(fine.get());
}

TEST_F(FakeRedshiftServerTest, RefusesBinaryResults) {
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  pg::Result binary(
      PQexecParams(conn->get(), "SELECT 1::int8", 0, nullptr, nullptr, nullptr, nullptr, 1));
  EXPECT_EQ(PQresultStatus(binary.get()), PGRES_FATAL_ERROR);
  EXPECT_EQ(Field(binary.get(), PG_DIAG_SQLSTATE), "0A000");
  pg::Result text(
      PQexecParams(conn->get(), "SELECT 1::int8", 0, nullptr, nullptr, nullptr, nullptr, 0));
  EXPECT_EQ(PQresultStatus(text.get()), PGRES_TUPLES_OK);
}

TEST_F(FakeRedshiftServerTest, ReportsRedshiftTypeOidsByColumnName) {
  FakeRedshiftOptions options;
  options.column_types = {{"payload", kRedshiftSuperOid}};
  StartFake(options);
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  pg::Result r = Exec(*conn, "SELECT '{\"a\":1}'::text AS payload, 'x'::text AS other");
  ASSERT_EQ(PQresultStatus(r.get()), PGRES_TUPLES_OK);
  EXPECT_EQ(PQftype(r.get(), 0), kRedshiftSuperOid);
  EXPECT_EQ(PQftype(r.get(), 1), 25u);
  EXPECT_STREQ(PQgetvalue(r.get(), 0, 0), "{\"a\":1}");
}

TEST_F(FakeRedshiftServerTest, PostgresClientsRelyingOnPostgresOnlyFeaturesFail) {
  // The PostgreSQL source pins settings Redshift lacks and reads with COPY:
  // through the fake it must fail, whatever the extraction mode.
  for (PostgresExtraction mode : {PostgresExtraction::kCopy, PostgresExtraction::kRows}) {
    auto source =
        NewPostgresSource(fake_->Url("backflow", "backflow_test"), server().password, mode);
    auto reader = source->Query("SELECT 1");
    ASSERT_FALSE(reader.ok());
    EXPECT_THAT(reader.status().message(), HasSubstr("unrecognized configuration parameter"));
  }
  EXPECT_EQ(fake_->violations(), 0);
}

TEST_F(FakeRedshiftServerTest, InjectsFaults) {
  fake_->AddFault(FakeRedshiftFault::SerializableViolation("SELECT", 1));
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  ExpectOk(*conn, "SELECT 1");  // skipped
  pg::Result r = Exec(*conn, "SELECT 2");
  EXPECT_EQ(Field(r.get(), PG_DIAG_SQLSTATE), "XX000");
  EXPECT_EQ(Field(r.get(), PG_DIAG_MESSAGE_PRIMARY), "1023");
  EXPECT_THAT(Field(r.get(), PG_DIAG_MESSAGE_DETAIL),
              HasSubstr("Serializable isolation violation on table"));
  ExpectOk(*conn, "SELECT 3");  // spent

  fake_->DropAfterRows(50);
  r = Exec(*conn, "SELECT g FROM generate_series(1, 100) g");
  EXPECT_EQ(PQresultStatus(r.get()), PGRES_FATAL_ERROR);
  EXPECT_TRUE(conn->broken());
  fake_->DropAfterRows(0);

  fake_->AddFault(FakeRedshiftFault::ConnectionLoss("SHOW"));
  auto other = Client();
  ASSERT_NE(other, nullptr);
  r = Exec(*other, "SHOW timezone");
  EXPECT_EQ(PQresultStatus(r.get()), PGRES_FATAL_ERROR);
  EXPECT_TRUE(other->broken());
}

TEST_F(FakeRedshiftServerTest, RelaysCancelRequests) {
  auto conn = Client();
  ASSERT_NE(conn, nullptr);
  ASSERT_EQ(PQsendQuery(conn->get(), "SELECT pg_sleep(30)"), 1);
  usleep(200'000);
  PGcancel* cancel = PQgetCancel(conn->get());
  char err[256];
  EXPECT_EQ(PQcancel(cancel, err, sizeof(err)), 1) << err;
  PQfreeCancel(cancel);
  pg::Result r(PQgetResult(conn->get()));
  EXPECT_EQ(Field(r.get(), PG_DIAG_SQLSTATE), "57014");
  while (pg::Result rest{PQgetResult(conn->get())}) {
  }
  EXPECT_EQ(fake_->cancel_requests(), 1);
}

}  // namespace
}  // namespace backflow
