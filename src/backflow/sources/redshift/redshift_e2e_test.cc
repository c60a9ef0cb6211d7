// End-to-end: the real `backflow` binary reads a model from "Redshift" (the
// Redshift-personality proxy in front of the ctest `postgres` server) and
// syncs it to a protocol-faithful webhook receiver; the receiver's state
// must equal the table, after inserts, updates and deletes too.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <map>
#include <sstream>

#include "backflow/sources/redshift/fake_redshift_aws_server.h"
#include "backflow/sources/redshift/fake_redshift_server.h"
#include "backflow/sources/redshift/redshift_source.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "pg_e2e.h"
#include "warehouse_e2e.h"

namespace backflow {
namespace {

using e2e::CliResult;
using e2e::RunCli;
using e2e::Summary;
using json = nlohmann::json;

class RedshiftE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("rs_customers")) return;
    ExecOrFail(fmt::format(
        "CREATE TABLE {} (id bigint PRIMARY KEY, email varchar(256), plan varchar(16), ltv "
        "numeric(12,2), updated_at timestamptz, attrs text)",
        table_));
    Insert(1, 230);

    FakeRedshiftOptions options;
    options.upstream_port = server().port;
    options.column_types = {{"attrs", kRedshiftSuperOid}};  // a SUPER column
    fake_ = std::make_unique<FakeRedshiftServer>(options);
    ASSERT_TRUE(fake_->Start().ok());

    receiver_ = e2e::StartWebhookReceiver(/*signed_requests=*/true);
    ASSERT_NE(receiver_, nullptr);
    WriteWorkspace();
  }

  void Insert(int from, int to) {
    ExecOrFail(fmt::format(
        "INSERT INTO {} SELECT g, 'user' || g || '@example.com', CASE WHEN g % 3 = 0 THEN 'pro' "
        "ELSE 'free' END, g * 10.25, timestamptz '2024-06-01 08:00:00.123451+02' + g * "
        "interval '61 minutes 1 second', CASE WHEN g % 4 = 0 THEN NULL ELSE "
        "'{{\"tier\": ' || (g % 5) || ', \"tags\": [\"vip\", \"t' || g || '\"]}}' END "
        "FROM generate_series({}, {}) g",
        table_, from, to));
  }

  void WriteWorkspace(const std::string& password_env = "BACKFLOW_E2E_PG_PASSWORD") {
    e2e::WarehouseWorkspace w;
    w.source = {"type: redshift",
                "url: " + fake_->Url("backflow", "backflow_test"),
                fmt::format("password: ${{env:{}}}", password_env),
                "sslmode: disable",
                "fetch_size: 40",
                "query_group: reverse_etl",
                "max_retries: 1"};
    w.model_sql = "SELECT id, email, plan, ltv, updated_at, attrs FROM " + table_;
    w.hook_url = receiver_->Url("/ingest");
    w.signed_hook = true;
    w.fields =
        "customer_id: id, email: email, plan: plan, ltv: ltv, updated_at: updated_at, attrs: "
        "attrs";
    e2e::WriteWarehouseWorkspace(dir_, w);
  }

  CliResult Sync() { return e2e::SyncCustomers(dir_); }

  // The table as the receiver should hold it, read from PostgreSQL directly.
  std::map<std::string, json> Model() {
    std::map<std::string, json> out;
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return out;
    auto result = (*conn)->Exec(
        fmt::format("SELECT id, email, plan, ltv::text, to_char(updated_at AT TIME ZONE 'UTC', "
                    "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), attrs FROM {}",
                    table_));
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return out;
    PGresult* r = result->get();
    for (int i = 0; i < PQntuples(r); ++i) {
      std::string id = PQgetvalue(r, i, 0);
      out[id] = {{"customer_id", std::stoll(id)},
                 {"email", PQgetvalue(r, i, 1)},
                 {"plan", PQgetvalue(r, i, 2)},
                 {"ltv", json::parse(PQgetvalue(r, i, 3))},
                 {"updated_at", PQgetvalue(r, i, 4)},
                 {"attrs", PQgetisnull(r, i, 5) ? json() : json::parse(PQgetvalue(r, i, 5))}};
    }
    return out;
  }

  std::unique_ptr<FakeRedshiftServer> fake_;
  std::unique_ptr<WebhookReceiver> receiver_;
};

TEST_F(RedshiftE2eTest, TestConnectionAndPreview) {
  CliResult t = RunCli(dir_, {"test-connection", "warehouse", "--json"});
  ASSERT_EQ(t.exit_code, 0) << t.out << t.err;
  json checked = json::parse(t.LastLine());
  EXPECT_EQ(checked["ok"], true);
  EXPECT_EQ(checked["type"], "redshift");

  CliResult p = RunCli(dir_, {"preview", "customers", "--json"});
  ASSERT_EQ(p.exit_code, 0) << p.out << p.err;
  json preview = json::parse(p.LastLine());
  std::vector<std::pair<std::string, std::string>> columns;
  for (const json& c : preview["columns"]) columns.emplace_back(c["name"], c["type"]);
  EXPECT_EQ(columns, (std::vector<std::pair<std::string, std::string>>{{"id", "integer"},
                                                                       {"email", "string"},
                                                                       {"plan", "string"},
                                                                       {"ltv", "decimal"},
                                                                       {"updated_at", "timestamp"},
                                                                       {"attrs", "json"}}));
  EXPECT_EQ(preview["columns"][5]["source_type"], "super");
  EXPECT_EQ(preview["columns"][3]["source_type"], "numeric(12,2)");
  ASSERT_EQ(preview["rows"].size(), 10u);
  // The preview ran the wrapped model through the cursor, never COPY.
  bool wrapped = false;
  for (const FakeRedshiftStatement& s : fake_->Statements()) {
    if (s.sql.starts_with("DECLARE backflow_cursor CURSOR FOR")) {
      wrapped |= s.sql.find("LIMIT 10") != std::string::npos;
    }
  }
  EXPECT_TRUE(wrapped);
  EXPECT_EQ(fake_->CountStatements("COPY"), 0);
  EXPECT_EQ(fake_->violations(), 0);

  // Actionable failures: a wrong password, a broken model.
  setenv("BACKFLOW_E2E_RS_WRONG", "not-the-password", 1);
  WriteWorkspace("BACKFLOW_E2E_RS_WRONG");
  t = RunCli(dir_, {"test-connection", "warehouse"});
  EXPECT_EQ(t.exit_code, 1);
  EXPECT_NE(t.out.find("rejected the login"), std::string::npos) << t.out << t.err;
  EXPECT_EQ(t.out.find("not-the-password"), std::string::npos);
  WriteWorkspace();
  ExecOrFail(fmt::format("ALTER TABLE {} RENAME COLUMN plan TO tier", table_));
  p = RunCli(dir_, {"preview", "customers"});
  EXPECT_EQ(p.exit_code, 1);
  EXPECT_NE(p.err.find("column \"plan\" does not exist"), std::string::npos) << p.out << p.err;
  EXPECT_EQ(receiver_->request_count(), 0);
}

TEST_F(RedshiftE2eTest, SyncsEveryBatchThenExactlyTheChanges) {
  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["extracted"], 230);
  EXPECT_EQ(s["added"], 230);
  EXPECT_EQ(s["succeeded"], 230);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(fake_->CountStatements("FETCH"), 6);  // 5 x 40 + 30
  EXPECT_LE(fake_->max_rows_per_response(), 40);
  EXPECT_EQ(fake_->CountStatements("COPY"), 0);

  Insert(231, 233);
  ExecOrFail(fmt::format(
      "UPDATE {} SET plan = 'enterprise', attrs = '{{\"tier\": 9}}' WHERE id = 7", table_));
  ExecOrFail(fmt::format("UPDATE {} SET updated_at = '2024-07-01 00:00:00.000001+00' WHERE id = 8",
                         table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id IN (9, 10)", table_));
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["added"], 3);
  EXPECT_EQ(s["updated"], 2);
  EXPECT_EQ(s["deleted"], 2);
  EXPECT_EQ(receiver_->State(), Model());

  int64_t sent = receiver_->request_count();
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(receiver_->request_count(), sent);
}

TEST_F(RedshiftE2eTest, AnExtractionCutShortSendsNothingAndTheNextRunCatchesUp) {
  ASSERT_EQ(Sync().exit_code, 0);
  int64_t sent = receiver_->request_count();
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id > 200", table_));  // would be 30 deletes
  // The connection drops after 100 rows: the run must not take the rows it
  // got for the model.
  fake_->DropAfterRows(100);
  CliResult r = Sync();
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "failed");
  EXPECT_EQ(receiver_->request_count(), sent);

  fake_->DropAfterRows(0);
  // A serializable isolation violation before the first row is retried.
  fake_->AddFault(FakeRedshiftFault::SerializableViolation("DECLARE"));
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Summary(r)["deleted"], 30);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(receiver_->State().size(), 200u);
}

// auth: iam: the binary gets a temporary password from the SigV4-checking
// fake AWS endpoint (GetClusterCredentials, which hands out the test
// server's credentials) and logs on with it through the proxy.
TEST_F(RedshiftE2eTest, IamAuthFetchesATemporaryPasswordThenSyncs) {
  FakeRedshiftAwsOptions options;
  options.db_user = "backflow";  // the user AWS names: the test server's
  options.db_password = server().password;
  FakeRedshiftAwsServer aws(options);
  ASSERT_TRUE(aws.Start().ok());
  setenv("BACKFLOW_E2E_AWS_SECRET", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", 1);
  e2e::WarehouseWorkspace w;
  w.source = {"type: redshift",
              "url: " + fake_->Url("backflow", "backflow_test"),
              "auth: iam",
              "access_key_id: AKIDEXAMPLE",
              "secret_access_key: ${env:BACKFLOW_E2E_AWS_SECRET}",
              "region: us-east-1",
              "cluster_identifier: examplecluster",
              "aws_endpoint: " + aws.Url(),
              "sslmode: disable",
              "fetch_size: 40",
              "max_retries: 1"};
  w.model_sql = "SELECT id, email, plan, ltv, updated_at, attrs FROM " + table_;
  w.hook_url = receiver_->Url("/ingest");
  w.signed_hook = true;
  w.fields =
      "customer_id: id, email: email, plan: plan, ltv: ltv, updated_at: updated_at, attrs: "
      "attrs";
  e2e::WriteWarehouseWorkspace(dir_, w);

  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["extracted"], 230);
  EXPECT_EQ(s["added"], 230);
  EXPECT_EQ(receiver_->State(), Model());
  EXPECT_EQ(fake_->CountStatements("FETCH"), 6);
  // The temporary password was fetched for the url's user and database,
  // with a valid signature, and never printed.
  EXPECT_GE(aws.Calls("GetClusterCredentials"), 1);
  EXPECT_EQ(aws.auth_refusals(), 0);
  std::vector<std::map<std::string, std::string>> requests = aws.CredentialRequests();
  ASSERT_FALSE(requests.empty());
  EXPECT_EQ(requests[0]["DbUser"], "backflow");
  EXPECT_EQ(requests[0]["DbName"], "backflow_test");
  EXPECT_EQ(requests[0]["ClusterIdentifier"], "examplecluster");
  EXPECT_EQ(r.out.find(server().password), std::string::npos);
  EXPECT_EQ(r.err.find(server().password), std::string::npos);

  // A key AWS refuses: an actionable configuration error, nothing sent.
  const int64_t sent = receiver_->request_count();
  setenv("BACKFLOW_E2E_AWS_SECRET", "not-the-secret", 1);
  r = Sync();
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE((r.out + r.err).find("secret_access_key"), std::string::npos) << r.out << r.err;
  EXPECT_EQ((r.out + r.err).find("not-the-secret"), std::string::npos);
  EXPECT_EQ(receiver_->request_count(), sent);
}

// change_detection: warehouse: the pass runs in Redshift (pass tables in
// state_schema, through the proxy): only changed rows leave it; the sync is
// the same as in local mode.
TEST_F(RedshiftE2eTest, WarehouseChangeDetectionSendsOnlyTheChanges) {
  const std::string state = table_ + "_state";
  e2e::WarehouseWorkspace w;
  w.source = {"type: redshift",
              "url: " + fake_->Url("backflow", "backflow_test"),
              "password: ${env:BACKFLOW_E2E_PG_PASSWORD}",
              "sslmode: disable",
              "fetch_size: 40",
              "max_retries: 1",
              "state_schema: " + state};
  w.model_sql = "SELECT id, email, plan, ltv, updated_at, attrs FROM " + table_;
  w.hook_url = receiver_->Url("/ingest");
  w.signed_hook = true;
  w.fields =
      "customer_id: id, email: email, plan: plan, ltv: ltv, updated_at: updated_at, attrs: "
      "attrs";
  e2e::WriteWarehouseWorkspace(dir_, w);
  {  // the model's change_detection
    std::ifstream in(dir_ + "/backflow.yaml");
    std::stringstream text;
    text << in.rdbuf();
    std::string yaml = text.str();
    const std::string anchor = "    schedule: manual\n";
    ASSERT_NE(yaml.find(anchor), std::string::npos);
    yaml.insert(yaml.find(anchor) + anchor.size(), "    change_detection: warehouse\n");
    std::ofstream(dir_ + "/backflow.yaml") << yaml;
  }

  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["added"], 230);
  EXPECT_EQ(receiver_->State(), Model());

  // Nothing changed: nothing is extracted, nothing sent.
  int64_t sent = receiver_->request_count();
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 0);
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(s["deleted"], 0);
  EXPECT_EQ(receiver_->request_count(), sent);

  // An update and a delete.
  ExecOrFail(fmt::format("UPDATE {} SET plan = 'enterprise' WHERE id = 7", table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id = 9", table_));
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["extracted"], 1);  // only the updated row left the warehouse
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["deleted"], 1);
  EXPECT_EQ(receiver_->State(), Model());

  // Nothing Redshift refuses was sent, no COPY; only the checkpoint tables stay.
  for (const FakeRedshiftStatement& st : fake_->Statements()) {
    EXPECT_FALSE(st.refused) << st.sql << ": " << st.error;
  }
  EXPECT_EQ(fake_->violations(), 0);
  auto conn = Connect();
  ASSERT_TRUE(conn.ok());
  auto tables = (*conn)->Exec(fmt::format(
      "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}'", state));
  ASSERT_TRUE(tables.ok()) << tables.status();
  EXPECT_STREQ(PQgetvalue(tables->get(), 0, 0), "2");
  ExecOrFail(fmt::format("DROP SCHEMA {} CASCADE", state));
}

}  // namespace
}  // namespace backflow
