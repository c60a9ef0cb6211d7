// change_detection: warehouse on Databricks: the dialect's SQL and named
// parameters; against the fake Statement Execution API, which rows are
// candidates, which stored entries come back and in what order, writes, key
// types, privileges, pass tables left behind; and the engine in warehouse
// mode against local mode over random rounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/sources/databricks/databricks_source.h"
#include "backflow/sources/databricks/fake_databricks_server.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;

constexpr char kPat[] = "dapi0123456789abcdef0123456789abcdef";
constexpr char kUser[] = "etl@example.com";
constexpr char kWarehouse[] = "abcdef0123456789";

Fingerprint Fp(uint64_t n) { return Fingerprint{n, n * 7}; }

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

class DatabricksChangeDetectionTest : public ::testing::Test {
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
    sql_ = "SELECT id, plan, age, seen FROM crm.customers";
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

  std::unique_ptr<Source> MakeSource() {
    SourceDefinition def = DatabricksSourceDefinition();
    EXPECT_TRUE(def.warehouse_change_detection);
    auto source = def.create(Settings(), ConnectorEnv{http_.get(), &clock_});
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(fake_->Exec(sql).ok()) << sql; }

  json Query(const std::string& sql) {
    auto rows = fake_->QueryRows(sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() ? *rows : json::array();
  }

  std::vector<std::string> Tables() {
    std::vector<std::string> names;
    for (const json& r :
         Query("SELECT name FROM bf_state.sqlite_master WHERE type = 'table' ORDER BY name")) {
      names.push_back(r["name"].get<std::string>());
    }
    return names;
  }

  struct Pass {
    std::map<std::string, std::string> rows;  // key (or "<null>#n") -> "plan|age|seen"
    std::map<std::string, std::string> hashes;
    std::map<std::string, std::vector<std::string>> entries;  // mapping -> keys in order
    std::map<std::string, int64_t> counts;
    int duplicates = 0;
  };

  Pass RunPass(WarehouseChangeDetection& cd, const WarehouseCandidateFilter& filter) {
    Pass pass;
    auto snapshot = cd.Begin(sql_ + ";\n", "id");
    EXPECT_TRUE(snapshot.ok()) << snapshot.status();
    if (!snapshot.ok()) return pass;
    EXPECT_EQ((*snapshot)->schema().size(), 4u);
    auto reader = (*snapshot)->ReadCandidates(filter);
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return pass;
    EXPECT_EQ((*reader)->schema().size(), 5u);
    EXPECT_EQ((*reader)->schema()[2].type, ValueType::kInt64);
    EXPECT_EQ((*reader)->schema()[3].type, ValueType::kTimestamp);
    Row row;
    int nulls = 0;
    while (true) {
      auto more = (*reader)->Next(row);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      std::string key = row[0].is_null() ? fmt::format("<null>#{}", nulls++) : row[0].text();
      if (pass.rows.count(key)) ++pass.duplicates;
      pass.rows[key] = row[1].ToString() + "|" + row[2].ToString() + "|" + row[3].ToString();
      pass.hashes[key] = row[4].ToString();
      EXPECT_EQ(row[4].ToString().size(), 32u);
    }
    for (const auto& [mapping, version] : filter.mappings) {
      auto scanner = (*snapshot)->ScanEntries(mapping);
      EXPECT_TRUE(scanner.ok()) << scanner.status();
      if (!scanner.ok()) continue;
      WarehouseCheckpointEntry entry;
      auto& keys = pass.entries[mapping];
      while (true) {
        auto more = (*scanner)->Next(entry);
        EXPECT_TRUE(more.ok()) << more.status();
        if (!more.ok() || !*more) break;
        keys.push_back(entry.key);
        EXPECT_EQ(entry.identity, "id:" + entry.key);
        EXPECT_EQ(entry.fingerprint, Fp(entry.key.size()));
      }
      auto count = (*snapshot)->CountEntries(mapping);
      EXPECT_TRUE(count.ok()) << count.status();
      pass.counts[mapping] = count.ok() ? *count : -1;
    }
    EXPECT_TRUE((*snapshot)->Close().ok());
    return pass;
  }

  void Deliver(WarehouseChangeDetection& cd, const std::string& mapping, const Fingerprint& version,
               const Pass& pass, const std::set<std::string>& skip = {}) {
    std::vector<WarehouseCheckpointWrite> writes;
    for (const auto& [key, hash] : pass.hashes) {
      if (key.rfind("<null>", 0) == 0 || skip.count(key)) continue;
      WarehouseCheckpointWrite w;
      w.key = key;
      w.fingerprint = Fp(key.size());
      w.identity = "id:" + key;
      w.row_hash = hash;
      w.version = version;
      writes.push_back(w);
    }
    absl::Status applied = cd.Apply(mapping, writes);
    EXPECT_TRUE(applied.ok()) << applied;
  }

  static WarehouseCandidateFilter Filter(
      std::vector<std::pair<std::string, Fingerprint>> mappings) {
    WarehouseCandidateFilter f;
    f.mappings = std::move(mappings);
    return f;
  }

  static std::set<std::string> Keys(const Pass& pass) {
    std::set<std::string> keys;
    for (const auto& [k, v] : pass.rows) keys.insert(k);
    return keys;
  }

  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeDatabricksServer> fake_;
  std::string sql_;
};

TEST_F(DatabricksChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  Exec(
      "INSERT INTO crm.customers VALUES ('a','free',1,'2024-01-01 00:00:00'), "
      "('B','free',2,NULL), ('_','pro',3,NULL), ('c','',4,NULL), (NULL,'free',5,NULL), "
      "('\xC3\xA9','free',6,NULL)");
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);

  // First pass: nothing stored, every row is a candidate; the tables were created.
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_EQ(first.rows.size(), 6u);
  EXPECT_EQ(first.rows["a"], "free|1|2024-01-01T00:00:00");
  EXPECT_EQ(first.counts["m"], 0);
  EXPECT_TRUE(first.entries["m"].empty());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));  // the pass's tables are gone
  Deliver(*cd, "m", Fp(1), first);
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

  // Nothing changed: only the NULL key comes back.
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("<null>#0"));
  EXPECT_EQ(second.counts["m"], 5);
  EXPECT_TRUE(second.entries["m"].empty());
  EXPECT_EQ(second.hashes["<null>#0"], first.hashes["<null>#0"]);

  // An update (any column, '' to NULL too), an insert, a delete, a duplicated key.
  Exec("UPDATE crm.customers SET seen = '2024-01-02 00:00:00' WHERE id = 'a'");
  Exec("UPDATE crm.customers SET plan = NULL WHERE id = 'c'");
  Exec("INSERT INTO crm.customers VALUES ('d','free',7,NULL), ('B','free',2,NULL)");
  Exec("DELETE FROM crm.customers WHERE id = '_'");
  Pass third = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(third), UnorderedElementsAre("a", "B", "c", "d", "<null>#0"));
  EXPECT_EQ(third.duplicates, 1);  // both rows of "B"
  EXPECT_NE(third.hashes["a"], first.hashes["a"]);
  EXPECT_NE(third.hashes["c"], first.hashes["c"]);
  // Stored entries of candidate keys and of the gone key, in byte order
  // ("B" < "_" < "a" < "c" < "é"; a case-insensitive order would differ).
  EXPECT_THAT(third.entries["m"], ElementsAre("B", "_", "a", "c"));

  // In-flight keys, a full resync, another version, a second mapping.
  Deliver(*cd, "m", Fp(1), third, {"B"});
  Exec(
      "DELETE FROM crm.customers WHERE id = 'B' AND rowid = (SELECT max(rowid) FROM "
      "crm.customers)");
  WarehouseCandidateFilter flight = Filter({{"m", Fp(1)}});
  flight.in_flight_keys = {"\xC3\xA9", "zz"};
  Pass fourth = RunPass(*cd, flight);
  EXPECT_THAT(Keys(fourth), UnorderedElementsAre("\xC3\xA9", "<null>#0"));
  EXPECT_THAT(fourth.entries["m"], ElementsAre("_", "\xC3\xA9"));  // "_" is still stored

  WarehouseCandidateFilter all = Filter({{"m", Fp(1)}});
  all.all_rows = true;
  EXPECT_EQ(RunPass(*cd, all).rows.size(), 6u);
  EXPECT_EQ(RunPass(*cd, Filter({{"m", Fp(2)}})).rows.size(), 6u);
  Pass both = RunPass(*cd, Filter({{"m", Fp(1)}, {"other", Fp(1)}}));
  EXPECT_EQ(both.rows.size(), 6u);
  EXPECT_THAT(both.entries["m"], ElementsAre("B", "_", "a", "c", "d", "\xC3\xA9"));
  EXPECT_TRUE(both.entries["other"].empty());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
}

TEST_F(DatabricksChangeDetectionTest, RemovesAndUpsertsAreOneMergeAndLastWriteWins) {
  Exec("INSERT INTO crm.customers VALUES ('a','free',1,NULL), ('b','free',2,NULL)");
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  Deliver(*cd, "m", Fp(1), first);
  WarehouseCheckpointWrite remove;
  remove.kind = WarehouseCheckpointWrite::Kind::kRemove;
  remove.key = "a";
  WarehouseCheckpointWrite upsert;
  upsert.key = "b";
  upsert.fingerprint = Fp(99);
  upsert.identity = std::string("\x00\x01'\"", 4);
  upsert.row_hash = first.hashes["b"];
  upsert.version = Fp(1);
  WarehouseCheckpointWrite upsert_again = upsert;
  upsert_again.fingerprint = Fp(1);
  upsert_again.identity = "id:b";
  const int64_t before = fake_->CountRequests("execute");
  ASSERT_TRUE(cd->Apply("m", {upsert, remove, upsert_again}).ok());
  EXPECT_EQ(fake_->CountRequests("execute") - before, 1);
  const json body = fake_->LastExecuteBody();
  EXPECT_THAT(body["statement"].get<std::string>(), HasSubstr("MERGE INTO bf_state.CHECKPOINTS"));
  EXPECT_THAT(body["statement"].get<std::string>(), HasSubstr("ON t.mapping = :p2"));
  EXPECT_EQ(body["parameters"][1], json({{"name", "p2"}, {"value", "m"}, {"type", "STRING"}}));

  json rows = Query(
      "SELECT record_key, fingerprint, record_identity, mapping_version FROM bf_state.checkpoints "
      "WHERE mapping = 'm' ORDER BY 1");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["record_key"], "b");
  EXPECT_EQ(rows[0]["fingerprint"], Fp(1).ToHex());
  EXPECT_EQ(rows[0]["record_identity"], "69643a62");  // "id:b"
  EXPECT_EQ(rows[0]["mapping_version"], Fp(1).ToHex());
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("a"));
  // Another mapping's entries are untouched by this one's writes.
  Deliver(*cd, "n", Fp(1), first);
  ASSERT_TRUE(cd->Apply("m", {remove}).ok());
  EXPECT_EQ(RunPass(*cd, Filter({{"n", Fp(1)}})).counts["n"], 2);
}

TEST_F(DatabricksChangeDetectionTest, KeyTypesWhoseTextCouldDifferAreRefused) {
  Exec("CREATE TABLE crm.scores (id DECIMAL TEXT(10,2), n BIGINT)");
  Exec("INSERT INTO crm.scores VALUES ('1.50', 7)");
  sql_ = "SELECT id, n FROM crm.scores";
  auto source = MakeSource();
  auto snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(reader.status().message()), HasSubstr("CAST(`id` AS STRING) AS `id`"));
  ASSERT_TRUE((*snapshot)->Close().ok());

  // An integer key works, its text as Backflow writes it; so does the cast.
  for (const std::string sql : {"SELECT id, n FROM crm.scores",
                                "SELECT CAST(`id` AS STRING) AS "
                                "`id`, n FROM crm.scores"}) {
    SCOPED_TRACE(sql);
    const bool cast = sql.find("CAST") != std::string::npos;
    snapshot = source->warehouse_change_detection()->Begin(sql, cast ? "id" : "n");
    ASSERT_TRUE(snapshot.ok()) << snapshot.status();
    reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
    ASSERT_TRUE(reader.ok()) << reader.status();
    Row row;
    ASSERT_TRUE(*(*reader)->Next(row));
    EXPECT_EQ(row[cast ? 0 : 1].ToString(), cast ? "1.50" : "7");
    ASSERT_TRUE((*snapshot)->Close().ok());
  }
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
  Exec("INSERT INTO crm.customers VALUES ('a','free',1,NULL)");
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  {
    auto snapshot = cd->Begin(sql_, "id");
    ASSERT_TRUE(snapshot.ok()) << snapshot.status();
    ASSERT_TRUE((*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}})).ok());
    EXPECT_EQ(Tables().size(), 4u);  // CHECKPOINTS, PASS_TABLES, PASS_x, PASS_x_K
    // Dropped without Close(): the destructor ends the pass.
  }
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));

  // A model that fails while the pass table is made.
  auto failed = cd->Begin("SELECT id, plan, age, seen, no_such_column FROM crm.customers", "id");
  EXPECT_FALSE(failed.ok());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
  EXPECT_EQ(Query("SELECT count(*) AS n FROM bf_state.pass_tables")[0]["n"], 0);

  // A pass that never ended (a crash): dropped by a Begin more than a day later.
  Exec("CREATE TABLE bf_state.PASS_1_ab (x)");
  Exec("CREATE TABLE bf_state.PASS_1_ab_K (x)");
  Exec(fmt::format("INSERT INTO bf_state.pass_tables VALUES ('PASS_1_ab', {})",
                   static_cast<int64_t>(ToUnixSeconds(clock_.Now()))));
  auto snapshot = cd->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok());
  ASSERT_TRUE((*snapshot)->Close().ok());
  EXPECT_EQ(Tables().size(), 4u);  // still young
  clock_.Advance(std::chrono::hours(25));
  snapshot = cd->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok());
  ASSERT_TRUE((*snapshot)->Close().ok());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
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

// One workspace syncing the model with two mappings: m (id, email, plan; all
// records) and m2 (id, age; added_or_updated) to two memory destinations.
struct Side {
  Registry registry;
  std::shared_ptr<testing::MemoryDestinationState> m =
      std::make_shared<testing::MemoryDestinationState>();
  std::shared_ptr<testing::MemoryDestinationState> m2 =
      std::make_shared<testing::MemoryDestinationState>();
  Workspace workspace;
  std::unique_ptr<StateStore> state;
  fs::path dir;
};

class DatabricksWarehouseModeTest : public DatabricksChangeDetectionTest {
 protected:
  void SetUp() override {
    DatabricksChangeDetectionTest::SetUp();
    dir_ = fs::path(::testing::TempDir()) /
           fmt::format("databricks-warehouse-mode-{}-{}", getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Setup(Side& side, const std::string& name, const std::string& mode,
             const std::string& table) {
    side.dir = dir_ / name;
    fs::create_directories(side.dir);
    ASSERT_TRUE(side.registry.AddSource(DatabricksSourceDefinition()).ok());
    ASSERT_TRUE(side.registry.AddDestination(testing::MemoryDestinationDefinition(side.m)).ok());
    DestinationDefinition second = testing::MemoryDestinationDefinition(side.m2);
    second.type = "memory2";
    ASSERT_TRUE(side.registry.AddDestination(second).ok());
    const std::string yaml =
        fmt::format(R"(
sources:
  - name: dbx
    type: databricks
    base_url: "{url}"
    warehouse_id: "{warehouse}"
    token: {token}
    catalog: main
    schema: crm
    max_retries: 0
    state_schema: {schema}
models:
  - name: people
    source: dbx
    sql: "SELECT id, email, plan, age, note FROM crm.{table}"
    primary_key: id
    change_detection: {mode}
destinations:
  - {{ name: mem, type: memory }}
  - {{ name: mem2, type: memory2 }}
mappings:
  - name: m
    model: people
    destination: mem
    action: upsert
    batch_size: 3
    fields: {{ customer_id: id, email: email, plan: plan }}
  - name: m2
    model: people
    destination: mem2
    action: upsert
    records: added_or_updated
    max_deletes: 100%
    fields: {{ customer_id: id, age: age }}
)",
                    fmt::arg("url", fake_->BaseUrl()), fmt::arg("warehouse", kWarehouse),
                    fmt::arg("token", kPat), fmt::arg("schema", "wm_state"),
                    fmt::arg("table", table), fmt::arg("mode", mode));
    LoadResult r =
        LoadWorkspaceFromString(yaml, (side.dir / "backflow.yaml").string(), side.registry);
    ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].ToString());
    side.workspace = std::move(r.workspace);
    auto state = OpenSqliteStateStore((side.dir / "state.db").string());
    ASSERT_TRUE(state.ok()) << state.status();
    side.state = std::move(*state);
  }

  std::vector<MappingRunResult> Sync(Side& side, SyncOptions options = {}) {
    SyncEngine engine(side.workspace, side.registry, *side.state,
                      ConnectorEnv{http_.get(), &clock_}, (side.dir / ".backflow").string());
    auto results = engine.Run("people", {"m", "m2"}, options);
    EXPECT_TRUE(results.ok()) << results.status();
    return results.ok() ? *results : std::vector<MappingRunResult>{};
  }

  static std::string Counts(const RunCounts& c) {
    return fmt::format(
        "added {} updated {} deleted {} unchanged {} skipped {} succeeded {} failed {} rejected {}",
        c.added, c.updated, c.deleted, c.unchanged, c.skipped, c.succeeded, c.failed, c.rejected);
  }

  fs::path dir_;
};

TEST_F(DatabricksWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  for (int seed : {1, 2, 3}) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    const std::string table = fmt::format("people{}", seed);
    Exec(fmt::format(
        "CREATE TABLE crm.{} (id BIGINT, email STRING TEXT, plan STRING TEXT, age BIGINT, note "
        "STRING TEXT)",
        table));
    (void)fake_->Exec("DROP TABLE IF EXISTS wm_state.checkpoints");
    Side local, warehouse;
    Setup(local, fmt::format("local-{}", seed), "local", table);
    Setup(warehouse, fmt::format("warehouse-{}", seed), "warehouse", table);
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
    const std::vector<std::string> plans = {"free", "pro", "team"};
    const std::string t = "crm." + table;
    int next_id = 1;
    for (int i = 0; i < 20; ++i, ++next_id) {
      Exec(fmt::format("INSERT INTO {} VALUES ({}, 'u{}@x.io', 'free', {}, 'n')", t, next_id,
                       next_id, 20 + pick(50)));
    }
    for (int round = 0; round < 10; ++round) {
      SCOPED_TRACE(fmt::format("round {}", round));
      if (round > 0) {
        for (int i = pick(4); i > 0; --i, ++next_id) {
          Exec(fmt::format("INSERT INTO {} VALUES ({}, 'u{}@x.io', '{}', {}, 'n')", t, next_id,
                           next_id, plans[pick(3)], 20 + pick(50)));
        }
        auto random_id = [&]() { return 1 + pick(next_id - 1); };
        for (int i = pick(4); i > 0; --i) {  // mapped by m
          Exec(fmt::format("UPDATE {} SET plan = '{}' WHERE id = {}", t, plans[pick(3)],
                           random_id()));
        }
        for (int i = pick(3); i > 0; --i) {  // mapped by m2 only
          Exec(fmt::format("UPDATE {} SET age = age + 1 WHERE id = {}", t, random_id()));
        }
        for (int i = pick(4); i > 0; --i) {  // mapped by neither; sometimes NULL vs ''
          Exec(fmt::format("UPDATE {} SET note = {} WHERE id = {}", t,
                           pick(2) == 0 ? "note || 'x'" : (pick(2) == 0 ? "''" : "NULL"),
                           random_id()));
        }
        for (int i = pick(3); i > 0; --i) {
          Exec(fmt::format("DELETE FROM {} WHERE id = {}", t, random_id()));
        }
        if (pick(3) == 0) {  // a duplicate key, identical or not
          Exec(fmt::format(
              "INSERT INTO {0} SELECT id, email, {1}, age, note FROM {0} WHERE id = {2} LIMIT 1", t,
              pick(2) == 0 ? "plan" : "'dup'", random_id()));
        }
        if (pick(3) == 0) {  // a duplicate resolved
          Exec(fmt::format(
              "DELETE FROM {0} WHERE rowid IN (SELECT min(rowid) FROM {0} WHERE id IS NOT NULL "
              "GROUP BY id HAVING count(*) > 1 LIMIT 1)",
              t));
        }
        if (pick(4) == 0) {
          Exec(fmt::format("INSERT INTO {} VALUES (NULL, 'null@x.io', 'free', 1, 'n')", t));
        }
        if (pick(4) == 0) Exec(fmt::format("DELETE FROM {} WHERE id IS NULL", t));
      }
      std::set<std::string> reject;
      if (pick(3) == 0) reject.insert(std::to_string(1 + pick(next_id - 1)));
      for (Side* side : {&local, &warehouse}) {
        side->m->reject_keys = reject;
        side->m->sent_keys.clear();
        side->m2->sent_keys.clear();
      }
      SyncOptions options;
      options.full_resync = round == 7;
      std::vector<MappingRunResult> l = Sync(local, options);
      std::vector<MappingRunResult> w = Sync(warehouse, options);
      ASSERT_EQ(l.size(), 2u);
      ASSERT_EQ(w.size(), 2u);
      for (size_t i = 0; i < 2; ++i) {
        SCOPED_TRACE(l[i].run.mapping);
        EXPECT_EQ(w[i].run.status, l[i].run.status) << w[i].run.error << " / " << l[i].run.error;
        EXPECT_EQ(Counts(w[i].run.counts), Counts(l[i].run.counts));
        EXPECT_LE(w[i].run.counts.extracted, l[i].run.counts.extracted);
      }
      for (auto [lm, wm] : {std::pair{local.m, warehouse.m}, std::pair{local.m2, warehouse.m2}}) {
        std::vector<std::string> ls = lm->sent_keys, ws = wm->sent_keys;
        std::sort(ls.begin(), ls.end());
        std::sort(ws.begin(), ws.end());
        EXPECT_EQ(ws, ls);
        EXPECT_EQ(wm->records, lm->records);
      }
      if (round > 0 && round != 7) {
        EXPECT_LT(w[0].run.counts.extracted, l[0].run.counts.extracted);
      }
    }
    // Nothing of the passes is left behind.
    EXPECT_EQ(Query("SELECT count(*) AS n FROM wm_state.sqlite_master WHERE type = 'table' AND "
                    "name LIKE 'PASS\\_%' ESCAPE '\\' AND name <> 'PASS_TABLES'")[0]["n"],
              0);
  }
}

}  // namespace
}  // namespace backflow
