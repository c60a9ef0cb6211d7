// change_detection: warehouse on Databricks: the dialect's SQL and named
// parameters; against the fake Statement Execution API the shared checks of
// ../warehouse_sql/testing (which rows are candidates, which stored entries
// come back and in what order, the last write winning, key types, pass
// tables left behind, the engine in warehouse mode against local mode over
// random rounds) plus what only Databricks' wire and privileges show.
#include <gtest/gtest.h>

#include "backflow/sources/databricks/databricks_source.h"
#include "backflow/sources/databricks/fake_databricks_server.h"
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
using ::testing::Not;
using warehouse_testing::Fp;

constexpr char kPat[] = "dapi0123456789abcdef0123456789abcdef";
constexpr char kUser[] = "etl@example.com";
constexpr char kWarehouse[] = "abcdef0123456789";

// --- The dialect alone -----------------------------------------------------------

TEST(DatabricksNamedMarkersTest, QuestionMarksBecomeNumberedNamesOutsideQuotesAndComments) {
  auto named = DatabricksNamedMarkers(
      "SELECT '?', \"?\", `a?b`, 'it''s ?', 'x\\'?' FROM t -- why?\nWHERE a = ? AND b IN (?, ?)",
      3);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(*named,
            "SELECT '?', \"?\", `a?b`, 'it''s ?', 'x\\'?' FROM t -- why?\nWHERE a = :p1 AND b IN "
            "(:p2, :p3)");
  EXPECT_EQ(DatabricksNamedMarkers("SELECT ?", 2).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(*DatabricksNamedMarkers("SELECT 1", 0), "SELECT 1");
  EXPECT_EQ(DatabricksQuoteIdentifier("we`ird"), "`we``ird`");
}

class EmptyReader : public RowReader {
 public:
  explicit EmptyReader(std::vector<Row> rows = {}) : rows_(std::move(rows)) {}
  const Schema& schema() const override { return schema_; }
  absl::StatusOr<bool> Next(Row& row) override {
    if (next_ >= rows_.size()) return false;
    row = rows_[next_++];
    return true;
  }

 private:
  Schema schema_;
  std::vector<Row> rows_;
  size_t next_ = 0;
};

struct Sent {
  std::string sql;
  std::vector<DatabricksParameter> parameters;
};

std::unique_ptr<WarehouseSql> RecordingDialect(std::vector<Sent>& sent) {
  return NewDatabricksWarehouseSql(
      [&sent](const std::string& sql, const std::vector<DatabricksParameter>& parameters,
              const std::atomic<bool>*) -> absl::StatusOr<std::unique_ptr<RowReader>> {
        sent.push_back({sql, parameters});
        std::vector<Row> rows;
        if (sql.find("current_user()") != std::string::npos) {
          rows.push_back({Value::String("sp@example.com"), Value::String("main")});
        }
        return std::unique_ptr<RowReader>(new EmptyReader(std::move(rows)));
      });
}

TEST(DatabricksDialectTest, StatementsCarryNamedStringParametersInOrder) {
  std::vector<Sent> sent;
  auto sql = RecordingDialect(sent);
  ASSERT_TRUE(sql->Run("SELECT a FROM t WHERE a = ? AND b = CAST(? AS BIGINT)", {"x", "7"}).ok());
  ASSERT_TRUE(sql->Run("CREATE SCHEMA IF NOT EXISTS s", {}).ok());
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].sql, "SELECT a FROM t WHERE a = :p1 AND b = CAST(:p2 AS BIGINT)");
  ASSERT_EQ(sent[0].parameters.size(), 2u);
  EXPECT_EQ(sent[0].parameters[0].name, "p1");
  EXPECT_EQ(sent[0].parameters[0].value, "x");
  EXPECT_EQ(sent[0].parameters[1].name, "p2");
  EXPECT_TRUE(sent[1].parameters.empty());
}

TEST(DatabricksDialectTest, TextHashKeysAndJsonInDatabricksSql) {
  std::vector<Sent> sent;
  auto sql = RecordingDialect(sent);
  Schema schema = {{"id", ValueType::kInt64, "BIGINT"},
                   {"tags", ValueType::kJson, "ARRAY<STRING>"},
                   {"raw", ValueType::kBytes, "BINARY"},
                   {"name", ValueType::kString, "STRING"}};
  const std::string hash = pass_sql::RowHash(*sql, schema, "m");
  EXPECT_THAT(hash,
              HasSubstr("md5(CASE WHEN m.`id` IS NULL THEN 'n' ELSE 'v' || "
                        "LENGTH(CAST(m.`id` AS STRING)) || ':' || CAST(m.`id` AS STRING) END"));
  EXPECT_THAT(hash, HasSubstr("to_json(m.`tags`)"));
  EXPECT_THAT(hash, HasSubstr("hex(m.`raw`)"));
  EXPECT_TRUE(sql->KeyTypeSupported(schema[0]));
  EXPECT_FALSE(sql->KeyTypeSupported(schema[1]));
  EXPECT_TRUE(sql->KeyTypeSupported(schema[3]));
  EXPECT_TRUE(sql->KeyTypeSupported({"c", ValueType::kString, "VARCHAR(10)"}));
  EXPECT_FALSE(sql->KeyTypeSupported({"d", ValueType::kDecimal, "DECIMAL(10,2)"}));
  EXPECT_FALSE(sql->KeyTypeSupported({"i", ValueType::kString, "INTERVAL DAY"}));
  EXPECT_EQ(sql->KeyCastAdvice("id"), "CAST(`id` AS STRING) AS `id`");
  EXPECT_EQ(sql->KeyType(), "STRING COLLATE UTF8_BINARY");
  EXPECT_FALSE(sql->BindingsInCreateTableAs());
  EXPECT_EQ(sql->PrimaryKey("mapping, record_key"), "");

  BoundSql merge = pass_sql::Merge(*sql, "s.CHECKPOINTS", "m", "[]");
  EXPECT_THAT(merge.sql, HasSubstr("USING (SELECT get_json_object(j.value, '$[0]') AS record_key"));
  EXPECT_THAT(
      merge.sql,
      HasSubstr("FROM (SELECT explode(from_json(?, 'ARRAY<STRING>')) AS value) AS j) AS w"));
  EXPECT_THAT(merge.sql, HasSubstr("WHEN MATCHED AND w.op = 'D' THEN DELETE"));
  EXPECT_THAT(merge.bindings, ElementsAre("[]", "m", "m"));

  // Privilege advice names the principal and catalog Databricks reports.
  const std::string advice = sql->PrivilegeAdvice(WarehouseSql::Step::kCreateSchema, "bf");
  EXPECT_THAT(advice,
              HasSubstr("GRANT USE CATALOG, CREATE SCHEMA ON CATALOG `main` TO `sp@example.com`;"));
  EXPECT_THAT(advice, HasSubstr("GRANT USE SCHEMA, CREATE TABLE, SELECT, MODIFY ON SCHEMA "
                                "`main`.bf TO `sp@example.com`;"));
  EXPECT_TRUE(sql->IsPrivilegeError(absl::PermissionDeniedError(
      "Databricks denied the statement (BAD_REQUEST, SQLSTATE 42501): [INSUFFICIENT_PERMISSIONS] "
      "Insufficient privileges")));
  EXPECT_FALSE(sql->IsPrivilegeError(absl::InvalidArgumentError("[INSUFFICIENT_PERMISSIONS]")));
  EXPECT_FALSE(sql->IsPrivilegeError(absl::PermissionDeniedError("HTTP 403: no CAN USE")));
}

// --- Against the fake ---------------------------------------------------------------

class DatabricksChangeDetectionTest : public warehouse_testing::WarehouseSnapshotTest {
 protected:
  void SetUp() override {
    FakeDatabricksOptions options;
    options.clock = &clock_;
    options.chunk_rows = 3;  // several chunks per result
    fake_ = std::make_unique<FakeDatabricksServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    fake_->AddPersonalAccessToken(kPat, kUser);
    ASSERT_TRUE(fake_->CreateSchema("crm").ok());
    Exec(
        "CREATE TABLE crm.customers (id STRING TEXT, plan STRING TEXT, age BIGINT, "
        "seen TIMESTAMP_NTZ)");
    customers_ = "crm.customers";
    sql_ = "SELECT id, plan, age, seen FROM crm.customers";
    key_ = "id";
    seen_text_ = "2024-01-01T00:00:00";
  }

  json Settings() {
    return {{"base_url", fake_->BaseUrl()},
            {"warehouse_id", kWarehouse},
            {"token", kPat},
            {"catalog", "main"},
            {"schema", "crm"},
            {"max_retries", 0},
            {"state_schema", "bf_state"}};
  }

  std::unique_ptr<Source> MakeSource() override {
    SourceDefinition def = DatabricksSourceDefinition();
    EXPECT_TRUE(def.warehouse_change_detection);
    return SourceOrFail(def.create(Settings(), ConnectorEnv{http_.get(), &clock_}));
  }

  void WarehouseExec(const std::string& sql) override { ExpectRan(fake_->Exec(sql), sql); }

  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return TextRowsOf(fake_->QueryRows(sql), sql);
  }

  std::unique_ptr<FakeDatabricksServer> fake_;
};

TEST_F(DatabricksChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCandidatesAndEntries(*source);
  // Every statement with values sent them as named STRING parameters.
  for (const FakeDatabricksRequest& r : fake_->Requests()) {
    if (r.method != "execute") continue;
    json body = json::parse(r.body);
    EXPECT_THAT(body["statement"].get<std::string>(), Not(HasSubstr("?)")));
    for (const json& p : body.value("parameters", json::array())) {
      EXPECT_EQ(p["type"], "STRING");
      EXPECT_THAT(body["statement"].get<std::string>(),
                  HasSubstr(":" + p["name"].get<std::string>()));
    }
  }
}

TEST_F(DatabricksChangeDetectionTest, RemovesAndUpsertsAreOneMergeAndLastWriteWins) {
  Exec("INSERT INTO crm.customers VALUES ('a','free',1,NULL), ('b','free',2,NULL)");
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  Deliver(*cd, "m", Fp(1), first);
  const int64_t before = fake_->CountRequests("execute");
  ASSERT_TRUE(cd->Apply("m", LastWriteWins(first)).ok());
  EXPECT_EQ(fake_->CountRequests("execute") - before, 1);
  const json body = fake_->LastExecuteBody();
  EXPECT_THAT(body["statement"].get<std::string>(), HasSubstr("MERGE INTO bf_state.CHECKPOINTS"));
  EXPECT_THAT(body["statement"].get<std::string>(), HasSubstr("ON t.mapping = :p2"));
  EXPECT_EQ(body["parameters"][1], json({{"name", "p2"}, {"value", "m"}, {"type", "STRING"}}));

  ExpectStoredAfterLastWriteWins();
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("a"));
  ExpectOtherMappingUntouched(*cd, first, 2);
}

TEST_F(DatabricksChangeDetectionTest, KeyTypesWhoseTextCouldDifferAreRefused) {
  Exec("CREATE TABLE crm.scores (id DECIMAL TEXT(10,2), n BIGINT)");
  Exec("INSERT INTO crm.scores VALUES ('1.50', 7)");
  auto source = MakeSource();
  ExpectKeyRefused(*source, "SELECT id, n FROM crm.scores", "id", "CAST(`id` AS STRING) AS `id`");

  // An integer key works, its text as Backflow writes it; so does the cast.
  EXPECT_EQ(FirstCandidate(*source, "SELECT id, n FROM crm.scores", "n").second.at(1).ToString(),
            "7");
  EXPECT_EQ(FirstCandidate(*source, "SELECT CAST(`id` AS STRING) AS `id`, n FROM crm.scores", "id")
                .second.at(0)
                .ToString(),
            "1.50");
}

TEST_F(DatabricksChangeDetectionTest, MissingPrivilegesSayWhatToGrant) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  fake_->DenyPrivilege("CREATE SCHEMA", "CREATE SCHEMA", "Catalog 'main'");
  fake_->DenyPrivilege("CREATE TABLE IF NOT EXISTS", "CREATE TABLE", "Schema 'main.bf_state'");
  auto snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  std::string message(snapshot.status().message());
  EXPECT_THAT(message,
              HasSubstr("GRANT USE CATALOG, CREATE SCHEMA ON CATALOG `main` TO `etl@example.com`"));
  EXPECT_THAT(message, HasSubstr("state_schema"));
  EXPECT_THAT(message, HasSubstr("User does not have CREATE SCHEMA on Catalog 'main'"));
  EXPECT_THAT(message, Not(HasSubstr("model")));

  // The schema exists (made by an administrator) but tables cannot be made in it.
  fake_->ClearDenials();
  ASSERT_TRUE(fake_->CreateSchema("bf_state").ok());
  fake_->DenyPrivilege("CREATE SCHEMA", "CREATE SCHEMA", "Catalog 'main'");
  fake_->DenyPrivilege("CREATE TABLE", "CREATE TABLE", "Schema 'main.bf_state'");
  snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr("GRANT USE CATALOG, CREATE SCHEMA ON CATALOG `main`"));
  fake_->ClearDenials();
  fake_->DenyPrivilege("CREATE SCHEMA", "CREATE SCHEMA", "Catalog 'main'");
  fake_->DenyPrivilege("CREATE TABLE bf_state.PASS_", "CREATE TABLE", "Schema 'main.bf_state'");
  snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr("may not create tables in schema `main`.bf_state. Have an administrator "
                        "run `GRANT USE CATALOG ON CATALOG `main` TO `etl@example.com`; GRANT USE "
                        "SCHEMA, CREATE TABLE, SELECT, MODIFY ON SCHEMA `main`.bf_state TO "
                        "`etl@example.com`;`"));
  // Writes refused.
  fake_->ClearDenials();
  fake_->DenyPrivilege("MERGE INTO", "MODIFY", "Table 'main.bf_state.checkpoints'");
  WarehouseCheckpointWrite w;
  w.key = "a";
  absl::Status applied = cd->Apply("m", {w});
  EXPECT_EQ(applied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(applied.message()), HasSubstr("may not read and write the tables"));
  EXPECT_THAT(std::string(applied.message()), HasSubstr("SELECT, MODIFY ON SCHEMA"));
}

TEST_F(DatabricksChangeDetectionTest, PassTablesGoOnCloseOnFailureAndWhenStale) {
  auto source = MakeSource();
  ExpectPassTablesGoOnCloseOnFailureAndWhenStale(
      *source, "SELECT id, plan, age, seen, no_such_column FROM crm.customers");
}

TEST_F(DatabricksChangeDetectionTest, StateSchemaMustBeAPlainName) {
  json settings = Settings();
  settings["state_schema"] = "bad-name";
  EXPECT_EQ(ParseDatabricksSettings(settings).status().code(), absl::StatusCode::kInvalidArgument);
  settings["state_schema"] = "a$b";
  EXPECT_EQ(ParseDatabricksSettings(settings).status().code(), absl::StatusCode::kInvalidArgument);
  settings.erase("state_schema");
  EXPECT_EQ(ParseDatabricksSettings(settings)->state_schema, "backflow_state");
}

// --- The engine: warehouse mode against local mode -----------------------------

class DatabricksWarehouseModeTest
    : public warehouse_testing::PassTableWarehouseModeTest<DatabricksChangeDetectionTest> {
 protected:
  std::string WarehouseName() const override { return "databricks"; }
  SourceDefinition WarehouseDefinition() const override { return DatabricksSourceDefinition(); }
  std::string SourceYaml() const override {
    return fmt::format(R"(    type: databricks
    base_url: "{}"
    warehouse_id: "{}"
    token: {}
    catalog: main
    schema: crm
    max_retries: 0
    state_schema: wm_state
)",
                       fake_->BaseUrl(), kWarehouse, kPat);
  }
  std::string NewModelTable(int seed) override {
    const std::string table = fmt::format("crm.people{}", seed);
    Exec(fmt::format(
        "CREATE TABLE {} (id BIGINT, email STRING TEXT, plan STRING TEXT, age BIGINT, note "
        "STRING TEXT)",
        table));
    (void)fake_->Exec("DROP TABLE IF EXISTS wm_state.checkpoints");
    return table;
  }
};

TEST_F(DatabricksWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  warehouse_testing::ExpectSameChangeSetsAsLocalMode(*this, {});
}

}  // namespace
}  // namespace backflow
