// change_detection: warehouse on Redshift: the dialect's SQL (placeholders,
// no IS DISTINCT FROM, Apply without MERGE), and against the Data API fake
// the shared checks of ../warehouse_sql/testing (which rows are candidates,
// which stored entries come back and in what order, writes, key types, pass
// tables left behind, the engine in warehouse mode against local mode over
// random rounds) plus what only Redshift's wire and privileges show. The
// libpq source runs the same dialect; see redshift_change_detection_pg_test.cc.
#include "backflow/sources/redshift/redshift_change_detection.h"

#include <gtest/gtest.h>

#include "backflow/sources/redshift/fake_redshift_aws_server.h"
#include "backflow/sources/redshift/redshift_data_api.h"
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

// Records statements instead of running them.
class RecordingTransport : public RedshiftSqlTransport {
 public:
  explicit RecordingTransport(std::vector<BoundSql>* log) : log_(log) {}
  absl::StatusOr<std::unique_ptr<RowReader>> Run(const std::string& sql,
                                                 const std::vector<std::string>& bindings,
                                                 const std::atomic<bool>*) override {
    log_->push_back({sql, bindings});
    return absl::UnavailableError("not connected");
  }
  absl::Status RunAll(const std::vector<BoundSql>& statements) override {
    log_->insert(log_->end(), statements.begin(), statements.end());
    return absl::OkStatus();
  }

 private:
  std::vector<BoundSql>* log_;
};

int Placeholders(const std::string& sql) {
  int n = 0;
  RewritePlaceholders(sql, [&](int) {
    ++n;
    return std::string("$");
  });
  return n;
}

TEST(RedshiftChangeDetectionSqlTest, PlaceholdersOutsideQuotesAndCommentsAreNumbered) {
  auto numbered = [](int n) { return fmt::format("${}", n); };
  EXPECT_EQ(RewritePlaceholders("SELECT ?, '?''?', \"a?\" -- ?\n, /* ? */ ? FROM t WHERE x = ?",
                                numbered),
            "SELECT $1, '?''?', \"a?\" -- ?\n, /* ? */ $2 FROM t WHERE x = $3");
  EXPECT_EQ(RewritePlaceholders("SELECT 'a\\'?' , ?", numbered), "SELECT 'a\\'?' , $1");
}

TEST(RedshiftChangeDetectionSqlTest, StatementsUseRedshiftForms) {
  std::vector<BoundSql> log;
  auto sql = NewRedshiftWarehouseSql(std::make_unique<RecordingTransport>(&log));
  const Schema schema = {Column{"id", ValueType::kInt64, "bigint"},
                         Column{"ok", ValueType::kBool, "boolean"},
                         Column{"doc", ValueType::kJson, "super"},
                         Column{"name", ValueType::kString, "character varying(64)"}};
  const std::string hash = pass_sql::RowHash(*sql, schema, "m");
  EXPECT_THAT(hash, HasSubstr("MD5("));
  EXPECT_THAT(hash, HasSubstr("CAST(m.\"id\" AS VARCHAR(65535))"));
  EXPECT_THAT(hash, HasSubstr("CASE WHEN m.\"ok\" THEN 'true' ELSE 'false' END"));
  EXPECT_THAT(hash, HasSubstr("JSON_SERIALIZE(m.\"doc\")"));
  EXPECT_TRUE(sql->KeyTypeSupported(schema[0]));
  EXPECT_TRUE(sql->KeyTypeSupported(schema[3]));
  EXPECT_FALSE(sql->KeyTypeSupported(Column{"c", ValueType::kString, "character(4)"}));
  EXPECT_FALSE(sql->KeyTypeSupported(Column{"d", ValueType::kDecimal, "numeric(10,2)"}));
  EXPECT_EQ(sql->KeyType(), "VARCHAR(65535) COLLATE case_sensitive");

  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fp(1)}, {"n", Fp(2)}};
  filter.in_flight_keys = {"k"};
  BoundSql keys =
      pass_sql::CreateKeysTable(*sql, "s.CHECKPOINTS", "s.PASS_1", "s.PASS_1_K", filter);
  EXPECT_THAT(keys.sql, Not(HasSubstr("DISTINCT")));  // Redshift: "Not implemented"
  EXPECT_THAT(keys.sql, HasSubstr("(c0.row_hash IS NULL OR c0.row_hash <> p.BACKFLOW_ROW_HASH)"));
  EXPECT_THAT(keys.sql, HasSubstr("(SELECT JSON_PARSE(?) AS elements) AS j_array, "
                                  "j_array.elements AS j"));
  EXPECT_EQ(Placeholders(keys.sql), static_cast<int>(keys.bindings.size()));

  // Apply: no MERGE; each statement's placeholders match its bindings.
  std::vector<BoundSql> apply = sql->ApplyBatch("s.CHECKPOINTS", "m", "[]");
  ASSERT_EQ(apply.size(), 3u);
  EXPECT_THAT(apply[0].sql, HasSubstr("DELETE FROM s.CHECKPOINTS WHERE mapping = ?"));
  EXPECT_THAT(apply[1].sql, HasSubstr("UPDATE s.CHECKPOINTS SET"));
  EXPECT_THAT(apply[1].sql, HasSubstr("WHERE CHECKPOINTS.mapping = ?"));
  EXPECT_THAT(apply[2].sql, HasSubstr("INSERT INTO s.CHECKPOINTS"));
  EXPECT_THAT(apply[2].sql, HasSubstr("NOT EXISTS"));
  for (const BoundSql& s : apply) {
    EXPECT_THAT(s.sql, Not(HasSubstr("MERGE")));
    EXPECT_EQ(Placeholders(s.sql), static_cast<int>(s.bindings.size())) << s.sql;
  }
  EXPECT_EQ(apply[0].bindings, (std::vector<std::string>{"m", "[]"}));
  EXPECT_EQ(apply[1].bindings, (std::vector<std::string>{"[]", "m"}));
  EXPECT_EQ(apply[2].bindings, (std::vector<std::string>{"m", "[]", "m"}));
  EXPECT_LE(sql->MaxBindingBytes(), 65535u);

  // The advice names the user and database it could learn (here: none).
  EXPECT_THAT(sql->PrivilegeAdvice(WarehouseSql::Step::kCreateSchema, "bf_state"),
              HasSubstr("GRANT CREATE ON DATABASE <database> TO <user>;"));
  EXPECT_EQ(log.back().sql, "SELECT CURRENT_USER AS u, CURRENT_DATABASE() AS d");
}

class RedshiftDataChangeDetectionTest : public warehouse_testing::WarehouseSnapshotTest {
 protected:
  void SetUp() override {
    FakeRedshiftAwsOptions options;
    options.clock = &clock_;
    options.page_rows = 3;  // several pages per result
    options.polls_submitted = 0;
    options.polls_started = 0;
    // SQLite's CREATE TABLE AS forgets declared types; Redshift keeps them.
    options.column_types = {{"seen", "timestamp"}};
    fake_ = std::make_unique<FakeRedshiftAwsServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    Exec("CREATE TABLE customers (id varchar(64), plan varchar(16), age bigint, seen timestamp)");
    customers_ = "customers";
    sql_ = "SELECT id, plan, age, seen FROM customers";
    key_ = "id";
    seen_text_ = "2024-01-01T00:00:00";
  }

  json Settings() { return fake_->SourceSettings(); }

  std::unique_ptr<Source> MakeSource() override {
    SourceDefinition def = RedshiftDataApiSourceDefinition();
    EXPECT_TRUE(def.warehouse_change_detection);
    return SourceOrFail(def.create(Settings(), ConnectorEnv{http_.get(), &clock_}));
  }

  void WarehouseExec(const std::string& sql) override { ExpectRan(fake_->Exec(sql), sql); }

  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return TextRowsOf(fake_->Select(sql), sql);
  }

  std::unique_ptr<FakeRedshiftAwsServer> fake_;
};

TEST_F(RedshiftDataChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  ExpectCandidatesAndEntries(*source);

  // Bindings travelled as Parameters, never as an empty value.
  bool parameters = false;
  for (const json& body : fake_->ExecuteRequests()) {
    if (!body.contains("Parameters")) continue;
    parameters = true;
    for (const json& p : body["Parameters"]) EXPECT_FALSE(p["value"].get<std::string>().empty());
  }
  EXPECT_TRUE(parameters);
}

TEST_F(RedshiftDataChangeDetectionTest, RemovesAndUpsertsWithoutMergeAndLastWriteWins) {
  Exec("INSERT INTO customers VALUES ('a','free',1,NULL), ('b','free',2,NULL), ('c','x',3,NULL)");
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  Deliver(*cd, "m", Fp(1), first, {"c"});
  std::vector<WarehouseCheckpointWrite> writes = LastWriteWins(first);
  WarehouseCheckpointWrite insert = writes.back();  // a key not stored yet
  insert.key = "c";
  insert.fingerprint = Fp(1);
  insert.identity = "id:c";
  insert.row_hash = first.hashes["c"];
  const size_t before = fake_->ExecuteRequests().size();
  writes.push_back(insert);
  ASSERT_TRUE(cd->Apply("m", writes).ok());
  const std::vector<json> requests = fake_->ExecuteRequests();
  ASSERT_EQ(requests.size() - before, 3u);  // DELETE, UPDATE, INSERT
  EXPECT_THAT(requests[before]["Sql"].get<std::string>(), HasSubstr("DELETE FROM bf_state."));

  ExpectStoredAfterLastWriteWins({{"c", Fp(1).ToHex(), "69643a63", Fp(1).ToHex()}});  // "id:c"
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("a"));
  ExpectOtherMappingUntouched(*cd, first, 3);

  // A batch above 60000 bytes of JSON is split; every write lands.
  std::vector<WarehouseCheckpointWrite> many;
  for (int i = 0; i < 1500; ++i) {
    WarehouseCheckpointWrite w = insert;
    w.key = fmt::format("key-{:05d}", i);
    w.identity = "id:" + w.key;
    many.push_back(w);
  }
  ASSERT_TRUE(cd->Apply("bulk", many).ok());
  auto count = fake_->Select("SELECT count(*) FROM bf_state.checkpoints WHERE mapping = 'bulk'");
  ASSERT_TRUE(count.ok());
  EXPECT_EQ((*count)[0][0], "1500");
  EXPECT_GE(fake_->ExecuteRequests().size() - requests.size(), 6u);
}

TEST_F(RedshiftDataChangeDetectionTest, KeyTypesWhoseTextCouldDifferAreRefused) {
  Exec("CREATE TABLE scores (id numeric(10,2), n bigint)");
  Exec("INSERT INTO scores VALUES ('1.50', 7)");
  auto source = MakeSource();
  ExpectKeyRefused(*source, "SELECT id, n FROM scores", "id",
                   "CAST(\"id\" AS VARCHAR(256)) AS \"id\"");
  // An integer key works, its text as Backflow writes it.
  EXPECT_EQ(FirstCandidate(*source, "SELECT id, n FROM scores", "n").second.at(1).ToString(), "7");
}

TEST_F(RedshiftDataChangeDetectionTest, MissingPrivilegesSayWhatToGrant) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  fake_->DenyPrivilege("CREATE SCHEMA", "database dev");
  fake_->DenyPrivilege("CREATE TABLE IF NOT EXISTS", "schema bf_state");
  auto snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  std::string message(snapshot.status().message());
  EXPECT_THAT(message, HasSubstr("GRANT CREATE ON DATABASE dev TO \"IAM:analytics\";"));
  EXPECT_THAT(message, HasSubstr("state_schema"));
  EXPECT_THAT(message, HasSubstr("permission denied for database dev"));

  // The schema exists (made by an administrator) but tables cannot be made in it.
  fake_->ClearDenials();
  Exec("ATTACH DATABASE ':memory:' AS bf_state");
  fake_->DenyPrivilege("CREATE SCHEMA", "database dev");
  fake_->DenyPrivilege("CREATE TABLE bf_state.PASS_", "schema bf_state");
  snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr("GRANT USAGE, CREATE ON SCHEMA bf_state TO \"IAM:analytics\";"));
  // Writes refused.
  fake_->ClearDenials();
  fake_->DenyPrivilege("DELETE FROM bf_state.CHECKPOINTS", "relation checkpoints");
  WarehouseCheckpointWrite w;
  w.key = "a";
  absl::Status applied = cd->Apply("m", {w});
  EXPECT_EQ(applied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(applied.message()),
              HasSubstr("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA bf_state TO "
                        "\"IAM:analytics\";"));
}

TEST_F(RedshiftDataChangeDetectionTest, PassTablesGoOnCloseOnFailureAndWhenStale) {
  auto source = MakeSource();
  ExpectPassTablesGoOnCloseOnFailureAndWhenStale(
      *source, "SELECT id, plan, age, seen, json_extract(plan, '$') AS bad FROM customers");
}

// --- The engine: warehouse mode against local mode -----------------------------

class RedshiftDataWarehouseModeTest
    : public warehouse_testing::PassTableWarehouseModeTest<RedshiftDataChangeDetectionTest> {
 protected:
  std::string WarehouseName() const override { return "redshift-data"; }
  SourceDefinition WarehouseDefinition() const override {
    return RedshiftDataApiSourceDefinition();
  }
  std::string SourceYaml() const override {
    return fmt::format(R"(    type: redshift_data_api
    access_key_id: AKIDEXAMPLE
    secret_access_key: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
    region: us-east-1
    database: dev
    cluster_identifier: examplecluster
    db_user: analytics
    base_url: "{}"
    max_retries: 0
    state_schema: wm_state
)",
                       fake_->Url());
  }
  std::string NewModelTable(int seed) override {
    const std::string table = fmt::format("people{}", seed);
    Exec(
        fmt::format("CREATE TABLE {} (id bigint, email varchar(64), plan varchar(16), "
                    "age bigint, note varchar(64))",
                    table));
    (void)fake_->Exec("DROP TABLE IF EXISTS wm_state.checkpoints");
    return table;
  }
};

TEST_F(RedshiftDataWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  warehouse_testing::ExpectSameChangeSetsAsLocalMode(*this, {});
}

}  // namespace
}  // namespace backflow
