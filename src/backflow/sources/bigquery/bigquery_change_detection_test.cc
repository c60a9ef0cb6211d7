// change_detection: warehouse on BigQuery: the dialect's statements, and
// against the fake REST API the shared checks of ../warehouse_sql/testing
// (which rows are candidates, which stored entries come back and in what
// order, the last write winning, key types, pass tables left behind, the
// engine in warehouse mode against local mode over random rounds) plus what
// only BigQuery's wire and privileges show.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "backflow/sources/bigquery/bigquery_source.h"
#include "backflow/sources/bigquery/fake_bigquery_server.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_mode_property.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using warehouse_testing::Fp;

constexpr char kAccount[] = "sync@test-project.iam.gserviceaccount.com";

// --- The dialect's SQL --------------------------------------------------------

std::unique_ptr<WarehouseSql> Dialect() {
  return NewBigQueryWarehouseSql(
      [](const std::string&, const std::vector<std::string>&,
         const std::atomic<bool>*) -> absl::StatusOr<std::unique_ptr<RowReader>> {
        return absl::InternalError("not run in this test");
      },
      BigQueryWarehouseContext{"my-proj", "EU", "sa@my-proj.iam.gserviceaccount.com"});
}

Column Col(std::string name, ValueType type, std::string source_type) {
  Column c;
  c.name = std::move(name);
  c.type = type;
  c.source_type = std::move(source_type);
  return c;
}

TEST(BigQueryWarehouseSqlTest, StatementsAreGoogleSql) {
  auto sql = Dialect();
  const Schema schema = {
      Col("id", ValueType::kInt64, "INTEGER"), Col("name", ValueType::kString, "STRING"),
      Col("raw", ValueType::kBytes, "BYTES"), Col("tags", ValueType::kJson, "STRING REPEATED"),
      Col("at", ValueType::kTimestamp, "TIMESTAMP")};
  EXPECT_EQ(pass_sql::RowHash(*sql, {schema[1]}, "m"),
            "TO_HEX(MD5(CASE WHEN m.`name` IS NULL THEN 'n' ELSE 'v' || "
            "CAST(LENGTH(m.`name`) AS STRING) || ':' || m.`name` END))");
  const std::string hash = pass_sql::RowHash(*sql, schema, "m");
  EXPECT_THAT(hash, HasSubstr("CAST(m.`id` AS STRING)"));
  EXPECT_THAT(hash, HasSubstr("TO_BASE64(m.`raw`)"));
  EXPECT_THAT(hash, HasSubstr("TO_JSON_STRING(m.`tags`)"));
  EXPECT_THAT(hash, HasSubstr("CAST(m.`at` AS STRING)"));
  // The length of each column's text, cast to STRING for `||`.
  EXPECT_THAT(hash, HasSubstr("'v' || CAST(LENGTH(CAST(m.`id` AS STRING)) AS STRING) || ':'"));

  BoundSql create = pass_sql::CreatePassTable(*sql, "bf.PASS_1_ab", "SELECT 1", schema, 0);
  EXPECT_THAT(create.sql, HasSubstr("CREATE TABLE bf.PASS_1_ab AS\nSELECT m.*, CAST(m.`id` AS "
                                    "STRING) AS BACKFLOW_PASS_KEY"));

  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fp(1)}, {"n", Fp(2)}};
  filter.in_flight_keys = {"k"};
  BoundSql keys = pass_sql::CreateKeysTable(*sql, "bf.CHECKPOINTS", "bf.P", "bf.P_K", filter);
  EXPECT_THAT(keys.sql, HasSubstr("IN (SELECT JSON_VALUE(j) FROM UNNEST(JSON_EXTRACT_ARRAY(?)) AS "
                                  "j)"));
  EXPECT_THAT(keys.sql, HasSubstr("\nUNION DISTINCT\n"));
  EXPECT_EQ(keys.bindings, (std::vector<std::string>{"m", "n", "[\"k\"]", Fp(1).ToHex(),
                                                     Fp(2).ToHex(), "m", "n"}));
  EXPECT_EQ(std::count(keys.sql.begin(), keys.sql.end(), '?'), 7);

  BoundSql merge = pass_sql::Merge(*sql, "bf.CHECKPOINTS", "m", "[]");
  EXPECT_THAT(merge.sql, HasSubstr("USING (SELECT JSON_VALUE(j, '$[0]') AS record_key, "
                                   "JSON_VALUE(j, '$[1]') AS op"));
  EXPECT_THAT(merge.sql, HasSubstr("FROM UNNEST(JSON_EXTRACT_ARRAY(?)) AS j) AS w"));

  EXPECT_EQ(sql->CreateSchemaSql("bf"), "CREATE SCHEMA IF NOT EXISTS bf OPTIONS(location = 'EU')");
  EXPECT_EQ(sql->PrimaryKey("a, b"), "PRIMARY KEY (a, b) NOT ENFORCED");
  EXPECT_EQ(sql->IntegerParameter(), "CAST(? AS INT64)");
  EXPECT_EQ(sql->QuoteIdentifier("a`b"), "`a\\`b`");

  // Keys: INT64 and STRING only.
  EXPECT_TRUE(sql->KeyTypeSupported(schema[0]));
  EXPECT_TRUE(sql->KeyTypeSupported(schema[1]));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("n", ValueType::kDecimal, "NUMERIC")));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("t", ValueType::kString, "TIME")));
  EXPECT_FALSE(sql->KeyTypeSupported(schema[3]));
}

TEST(BigQueryWarehouseSqlTest, PrivilegeAdviceNamesRolesAndGrant) {
  auto sql = Dialect();
  const std::string schema_advice = sql->PrivilegeAdvice(WarehouseSql::Step::kCreateSchema, "bf");
  EXPECT_THAT(schema_advice, HasSubstr("bigquery.datasets.create"));
  EXPECT_THAT(schema_advice, HasSubstr("--role=roles/bigquery.dataEditor"));
  EXPECT_THAT(schema_advice, HasSubstr("CREATE SCHEMA `my-proj.bf` OPTIONS(location = 'EU');"));
  const std::string use = sql->PrivilegeAdvice(WarehouseSql::Step::kUseTables, "bf");
  EXPECT_THAT(use, HasSubstr("GRANT `roles/bigquery.dataEditor` ON SCHEMA `my-proj.bf` TO "
                             "\"serviceAccount:sa@my-proj.iam.gserviceaccount.com\";"));
  EXPECT_THAT(use, HasSubstr("roles/bigquery.jobUser"));
  EXPECT_TRUE(sql->IsPrivilegeError(absl::PermissionDeniedError("... Access Denied: Table x")));
  EXPECT_FALSE(sql->IsPrivilegeError(absl::PermissionDeniedError("the API is not enabled")));
  EXPECT_FALSE(sql->IsPrivilegeError(absl::InvalidArgumentError("Access Denied")));
}

// --- Against the fake ----------------------------------------------------------

class BigQueryChangeDetectionTest : public warehouse_testing::WarehouseSnapshotTest {
 protected:
  void SetUp() override {
    FakeBigQueryOptions options;
    options.clock = &clock_;
    options.default_page_rows = 3;  // several pages per result
    options.max_page_rows = 3;
    fake_ = std::make_unique<FakeBigQueryServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    account_key_ = fake_->AddServiceAccount(kAccount);
    ASSERT_TRUE(fake_->CreateDataset("crm", "EU").ok());
    Exec(
        "CREATE TABLE crm.customers (id STRING TEXT, plan STRING TEXT, age INT64, seen TIMESTAMP)");
    customers_ = "crm.customers";
    sql_ = "SELECT id, plan, age, seen FROM `test-project.crm.customers`";
    key_ = "id";
    seen_text_ = "2024-01-01T00:00:00Z";
  }

  json Settings() {
    return {
        {"service_account_key", account_key_}, {"project_id", "test-project"}, {"location", "EU"},
        {"token_url", fake_->TokenUrl()},      {"base_url", fake_->BaseUrl()}, {"max_retries", 0},
        {"state_schema", "bf_state"}};
  }

  std::unique_ptr<Source> MakeSource() override {
    SourceDefinition def = BigQuerySourceDefinition();
    EXPECT_TRUE(def.warehouse_change_detection);
    return SourceOrFail(def.create(Settings(), ConnectorEnv{http_.get(), &clock_}));
  }

  void WarehouseExec(const std::string& sql) override { ExpectRan(fake_->Exec(sql), sql); }

  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return TextRowsOf(fake_->QueryRows(sql), sql);
  }

  // The bodies of the jobs.query calls whose SQL contains `text`.
  std::vector<json> QueryBodies(const std::string& text) {
    std::vector<json> out;
    for (const FakeBigQueryRequest& r : fake_->Requests()) {
      if (r.method != "query") continue;
      json body = json::parse(r.body);
      if (body["query"].get<std::string>().find(text) != std::string::npos) {
        out.push_back(body);
        out.back()["reply"] = json::parse(r.reply);
      }
    }
    return out;
  }

  std::unique_ptr<FakeBigQueryServer> fake_;
  std::string account_key_;  // the service account's key
};

TEST_F(BigQueryChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCandidatesAndEntries(*source);

  // The wire: the dataset was made in the source's location; parameters are
  // positional STRING query parameters; DDL answers no schema.
  std::vector<json> schema = QueryBodies("CREATE SCHEMA");
  ASSERT_EQ(schema.size(), 1u);  // once per change detection
  EXPECT_EQ(schema[0]["query"], "CREATE SCHEMA IF NOT EXISTS bf_state OPTIONS(location = 'EU')");
  EXPECT_EQ(schema[0]["location"], "EU");
  EXPECT_EQ(schema[0]["reply"]["statementType"], "CREATE_SCHEMA");
  EXPECT_FALSE(schema[0]["reply"].contains("schema"));
  std::vector<json> counts = QueryBodies("SELECT COUNT(*)");
  ASSERT_FALSE(counts.empty());
  EXPECT_EQ(counts[0]["parameterMode"], "POSITIONAL");
  EXPECT_EQ(counts[0]["queryParameters"],
            json::parse(R"([{"parameterType":{"type":"STRING"},"parameterValue":{"value":"m"}}])"));
  std::vector<json> merges = QueryBodies("MERGE INTO bf_state.CHECKPOINTS");
  ASSERT_EQ(merges.size(), 2u);
  EXPECT_EQ(merges[0]["reply"]["statementType"], "MERGE");
  EXPECT_EQ(merges[0]["reply"]["numDmlAffectedRows"], "5");
  std::vector<json> ctas = QueryBodies("CREATE TABLE bf_state.PASS_");
  ASSERT_FALSE(ctas.empty());
  EXPECT_EQ(ctas[0]["reply"]["statementType"], "CREATE_TABLE_AS_SELECT");
}

TEST_F(BigQueryChangeDetectionTest, RemovesAndUpsertsAreOneMergeAndLastWriteWins) {
  Exec("INSERT INTO crm.customers VALUES ('a','free',1,NULL), ('b','free',2,NULL)");
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  Deliver(*cd, "m", Fp(1), first);
  const size_t before = QueryBodies("MERGE").size();
  ASSERT_TRUE(cd->Apply("m", LastWriteWins(first)).ok());
  std::vector<json> merges = QueryBodies("MERGE");
  ASSERT_EQ(merges.size() - before, 1u);
  EXPECT_EQ(merges.back()["queryParameters"][1]["parameterValue"]["value"], "m");
  EXPECT_EQ(merges.back()["reply"]["numDmlAffectedRows"], "2");  // a deleted, b updated

  ExpectStoredAfterLastWriteWins();
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("a"));
  ExpectOtherMappingUntouched(*cd, first, 2);
}

TEST_F(BigQueryChangeDetectionTest, KeyTypesWhoseTextCouldDifferAreRefused) {
  Exec("CREATE TABLE crm.scores (id NUMERIC TEXT, n INT64)");
  Exec("INSERT INTO crm.scores VALUES ('1.50', 7)");
  const std::string sql = "SELECT id, n FROM crm.scores";
  auto source = MakeSource();
  EXPECT_THAT(ExpectKeyRefused(*source, sql, "id", "CAST(`id` AS STRING) AS `id`"),
              HasSubstr("NUMERIC"));

  // An integer key works, its text as Backflow writes it.
  Row row = FirstCandidate(*source, sql, "n").second;
  ASSERT_EQ(row.size(), 3u);
  EXPECT_EQ(row[1].ToString(), "7");
  EXPECT_EQ(row[0].ToString(), "1.5");
  std::vector<json> ctas = QueryBodies("AS BACKFLOW_PASS_KEY,");
  ASSERT_FALSE(ctas.empty());
  EXPECT_THAT(ctas.back()["query"].get<std::string>(),
              HasSubstr("CAST(m.`n` AS STRING) AS BACKFLOW_PASS_KEY"));
}

TEST_F(BigQueryChangeDetectionTest, MissingPrivilegesSayWhatToGrant) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  fake_->DenyDatasetCreate(kAccount);
  auto snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  std::string message(snapshot.status().message());
  EXPECT_THAT(message, HasSubstr("may not create dataset `test-project.bf_state`"));
  EXPECT_THAT(message, HasSubstr("gcloud projects add-iam-policy-binding test-project "
                                 "--member=serviceAccount:" +
                                 std::string(kAccount) + " --role=roles/bigquery.dataEditor"));
  EXPECT_THAT(message, HasSubstr("state_schema"));
  EXPECT_THAT(message, HasSubstr("User does not have bigquery.datasets.create permission"));

  // The dataset exists (made by an administrator) but tables cannot be made in it.
  ASSERT_TRUE(fake_->CreateDataset("bf_state", "EU").ok());
  fake_->DenyDatasetWrite(kAccount, "bf_state");
  snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  message = std::string(snapshot.status().message());
  EXPECT_THAT(message, HasSubstr("GRANT `roles/bigquery.dataEditor` ON SCHEMA "
                                 "`test-project.bf_state` TO \"serviceAccount:" +
                                 std::string(kAccount) + "\";"));
  bool refused = false;
  for (const FakeBigQueryRequest& r : fake_->Requests()) {
    refused |= r.status == 403 && r.reply.find(
                                      "Permission bigquery.tables.create denied on dataset "
                                      "test-project:bf_state") != std::string::npos;
  }
  EXPECT_TRUE(refused);

  // Tables made, then writes refused.
  fake_->ClearDenials(kAccount);
  fake_->DenyDatasetCreate(kAccount);
  snapshot = cd->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  ASSERT_TRUE((*snapshot)->Close().ok());
  fake_->DenyDatasetWrite(kAccount, "bf_state");
  WarehouseCheckpointWrite w;
  w.key = "a";
  absl::Status applied = cd->Apply("m", {w});
  EXPECT_EQ(applied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(applied.message()), HasSubstr("may not read and write the tables"));
  EXPECT_THAT(std::string(applied.message()), HasSubstr("GRANT `roles/bigquery.dataEditor`"));
  EXPECT_THAT(std::string(applied.message()), HasSubstr("bigquery.tables.updateData"));
  // Reading refused.
  fake_->ClearDenials(kAccount);
  fake_->DenyDataset(kAccount, "bf_state");
  snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("GRANT"));
}

TEST_F(BigQueryChangeDetectionTest, PassTablesGoOnCloseOnFailureAndWhenStale) {
  auto source = MakeSource();
  ExpectPassTablesGoOnCloseOnFailureAndWhenStale(
      *source, "SELECT id, plan, age, seen, json_extract(plan, '$') AS bad FROM crm.customers");
}

TEST_F(BigQueryChangeDetectionTest, StateDatasetMustBeADatasetName) {
  json settings = Settings();
  settings["state_schema"] = "bf-state";
  auto source = BigQuerySourceDefinition().create(settings, ConnectorEnv{http_.get(), &clock_});
  ASSERT_FALSE(source.ok());
  EXPECT_THAT(std::string(source.status().message()), HasSubstr("state_schema"));
}

// --- The engine: warehouse mode against local mode -----------------------------

class BigQueryWarehouseModeTest
    : public warehouse_testing::PassTableWarehouseModeTest<BigQueryChangeDetectionTest> {
 protected:
  void SetUp() override {
    PassTableWarehouseModeTest::SetUp();
    setenv("BACKFLOW_TEST_BQ_KEY", account_key_.c_str(), 1);
  }
  std::string WarehouseName() const override { return "bigquery"; }
  SourceDefinition WarehouseDefinition() const override { return BigQuerySourceDefinition(); }
  std::string SourceYaml() const override {
    return fmt::format(R"(    type: bigquery
    service_account_key: ${{env:BACKFLOW_TEST_BQ_KEY}}
    project_id: test-project
    location: EU
    token_url: "{}"
    base_url: "{}"
    max_retries: 0
    state_schema: wm_state
)",
                       fake_->TokenUrl(), fake_->BaseUrl());
  }
  std::string NewModelTable(int seed) override {
    const std::string table = fmt::format("crm.people{}", seed);
    Exec(fmt::format(
        "CREATE TABLE {} (id INT64, email STRING TEXT, plan STRING TEXT, age INT64, note "
        "STRING TEXT)",
        table));
    (void)fake_->Exec("DROP TABLE IF EXISTS wm_state.checkpoints");
    return table;
  }
};

TEST_F(BigQueryWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  warehouse_testing::ExpectSameChangeSetsAsLocalMode(*this, {});
}

}  // namespace
}  // namespace backflow
