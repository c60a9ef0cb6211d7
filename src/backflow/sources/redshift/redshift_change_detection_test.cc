// change_detection: warehouse on Redshift: the dialect's SQL (placeholders,
// no IS DISTINCT FROM, Apply without MERGE), and against the Data API fake:
// which rows are candidates, which stored entries come back and in what
// order, writes, key types, privileges, pass tables left behind; and the
// engine in warehouse mode against local mode over random rounds. The libpq
// source runs the same dialect; see redshift_change_detection_pg_test.cc.
#include "backflow/sources/redshift/redshift_change_detection.h"

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
#include "backflow/sources/redshift/fake_redshift_aws_server.h"
#include "backflow/sources/redshift/redshift_data_api.h"
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

Fingerprint Fp(uint64_t n) { return Fingerprint{n, n * 7}; }

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

class RedshiftDataChangeDetectionTest : public ::testing::Test {
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
    sql_ = "SELECT id, plan, age, seen FROM customers";
  }

  json Settings() {
    return {{"access_key_id", "AKIDEXAMPLE"},
            {"secret_access_key", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"},
            {"region", "us-east-1"},
            {"database", "dev"},
            {"cluster_identifier", "examplecluster"},
            {"db_user", "analytics"},
            {"base_url", fake_->Url()},
            {"max_retries", 0},
            {"state_schema", "bf_state"}};
  }

  std::unique_ptr<Source> MakeSource() {
    SourceDefinition def = RedshiftDataApiSourceDefinition();
    EXPECT_TRUE(def.warehouse_change_detection);
    auto source = def.create(Settings(), ConnectorEnv{http_.get(), &clock_});
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(fake_->Exec(sql).ok()) << sql; }

  std::vector<std::string> Tables() {
    std::vector<std::string> names;
    auto rows =
        fake_->Select("SELECT name FROM bf_state.sqlite_master WHERE type = 'table' ORDER BY name");
    EXPECT_TRUE(rows.ok()) << rows.status();
    if (rows.ok()) {
      for (const auto& r : *rows) names.push_back(r[0]);
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
  std::unique_ptr<FakeRedshiftAwsServer> fake_;
  std::string sql_;
};

TEST_F(RedshiftDataChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  Exec(
      "INSERT INTO customers VALUES ('a','free',1,'2024-01-01 00:00:00'), ('B','free',2,NULL), "
      "('_','pro',3,NULL), ('c','',4,NULL), (NULL,'free',5,NULL), ('\xC3\xA9','free',6,NULL)");
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

  // Nothing changed: only the NULL key comes back.
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("<null>#0"));
  EXPECT_EQ(second.counts["m"], 5);
  EXPECT_TRUE(second.entries["m"].empty());
  EXPECT_EQ(second.hashes["<null>#0"], first.hashes["<null>#0"]);

  // An update (any column, '' to NULL too), an insert, a delete, a duplicated key.
  Exec("UPDATE customers SET seen = '2024-01-02 00:00:00' WHERE id = 'a'");
  Exec("UPDATE customers SET plan = NULL WHERE id = 'c'");
  Exec("INSERT INTO customers VALUES ('d','free',7,NULL), ('B','free',2,NULL)");
  Exec("DELETE FROM customers WHERE id = '_'");
  Pass third = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(third), UnorderedElementsAre("a", "B", "c", "d", "<null>#0"));
  EXPECT_EQ(third.duplicates, 1);  // both rows of "B"
  EXPECT_NE(third.hashes["a"], first.hashes["a"]);
  EXPECT_NE(third.hashes["c"], first.hashes["c"]);
  // Stored entries of candidate keys and of the gone key, in byte order
  // ("B" < "_" < "a" < "c" < "é"; case order would put "_" first).
  EXPECT_THAT(third.entries["m"], ElementsAre("B", "_", "a", "c"));

  // In-flight keys, a full resync, another version, a second mapping.
  Deliver(*cd, "m", Fp(1), third, {"B"});
  Exec("DELETE FROM customers WHERE id = 'B' AND rowid = (SELECT max(rowid) FROM customers)");
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
  WarehouseCheckpointWrite insert = upsert_again;  // a key not stored yet
  insert.key = "c";
  insert.fingerprint = Fp(1);
  insert.identity = "id:c";
  insert.row_hash = first.hashes["c"];
  const size_t before = fake_->ExecuteRequests().size();
  ASSERT_TRUE(cd->Apply("m", {upsert, remove, upsert_again, insert}).ok());
  const std::vector<json> requests = fake_->ExecuteRequests();
  ASSERT_EQ(requests.size() - before, 3u);  // DELETE, UPDATE, INSERT
  EXPECT_THAT(requests[before]["Sql"].get<std::string>(), HasSubstr("DELETE FROM bf_state."));

  auto rows = fake_->Select(
      "SELECT record_key, fingerprint, record_identity, mapping_version FROM bf_state.checkpoints "
      "WHERE mapping = 'm' ORDER BY 1");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0][0], "b");
  EXPECT_EQ((*rows)[0][1], Fp(1).ToHex());
  EXPECT_EQ((*rows)[0][2], "69643a62");  // "id:b"
  EXPECT_EQ((*rows)[0][3], Fp(1).ToHex());
  EXPECT_EQ((*rows)[1][0], "c");
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("a"));
  // Another mapping's entries are untouched by this one's writes.
  Deliver(*cd, "n", Fp(1), first);
  ASSERT_TRUE(cd->Apply("m", {remove}).ok());
  EXPECT_EQ(RunPass(*cd, Filter({{"n", Fp(1)}})).counts["n"], 3);

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
  sql_ = "SELECT id, n FROM scores";
  auto source = MakeSource();
  auto snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(reader.status().message()),
              HasSubstr("CAST(\"id\" AS VARCHAR(256)) AS \"id\""));
  ASSERT_TRUE((*snapshot)->Close().ok());

  // An integer key works, its text as Backflow writes it.
  snapshot = source->warehouse_change_detection()->Begin(sql_, "n");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[1].ToString(), "7");
  ASSERT_TRUE((*snapshot)->Close().ok());
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
  Exec("INSERT INTO customers VALUES ('a','free',1,NULL)");
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
  auto failed =
      cd->Begin("SELECT id, plan, age, seen, json_extract(plan, '$') AS bad FROM customers", "id");
  EXPECT_FALSE(failed.ok());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
  auto registered = fake_->Select("SELECT count(*) FROM bf_state.pass_tables");
  ASSERT_TRUE(registered.ok());
  EXPECT_EQ((*registered)[0][0], "0");

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

class RedshiftDataWarehouseModeTest : public RedshiftDataChangeDetectionTest {
 protected:
  void SetUp() override {
    RedshiftDataChangeDetectionTest::SetUp();
    dir_ = fs::path(::testing::TempDir()) /
           fmt::format("redshift-data-warehouse-mode-{}-{}", getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Setup(Side& side, const std::string& name, const std::string& mode,
             const std::string& table) {
    side.dir = dir_ / name;
    fs::create_directories(side.dir);
    ASSERT_TRUE(side.registry.AddSource(RedshiftDataApiSourceDefinition()).ok());
    ASSERT_TRUE(side.registry.AddDestination(testing::MemoryDestinationDefinition(side.m)).ok());
    DestinationDefinition second = testing::MemoryDestinationDefinition(side.m2);
    second.type = "memory2";
    ASSERT_TRUE(side.registry.AddDestination(second).ok());
    const std::string yaml =
        fmt::format(R"(
sources:
  - name: rs
    type: redshift_data_api
    access_key_id: AKIDEXAMPLE
    secret_access_key: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
    region: us-east-1
    database: dev
    cluster_identifier: examplecluster
    db_user: analytics
    base_url: "{url}"
    max_retries: 0
    state_schema: {schema}
models:
  - name: people
    source: rs
    sql: "SELECT id, email, plan, age, note FROM {table}"
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
                    fmt::arg("url", fake_->Url()), fmt::arg("schema", "wm_state"),
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

TEST_F(RedshiftDataWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  for (int seed : {1, 2, 3}) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    const std::string table = fmt::format("people{}", seed);
    Exec(
        fmt::format("CREATE TABLE {} (id bigint, email varchar(64), plan varchar(16), "
                    "age bigint, note varchar(64))",
                    table));
    (void)fake_->Exec("DROP TABLE IF EXISTS wm_state.checkpoints");
    Side local, warehouse;
    Setup(local, fmt::format("local-{}", seed), "local", table);
    Setup(warehouse, fmt::format("warehouse-{}", seed), "warehouse", table);
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
    const std::vector<std::string> plans = {"free", "pro", "team"};
    int next_id = 1;
    for (int i = 0; i < 20; ++i, ++next_id) {
      Exec(fmt::format("INSERT INTO {} VALUES ({}, 'u{}@x.io', 'free', {}, 'n')", table, next_id,
                       next_id, 20 + pick(50)));
    }
    for (int round = 0; round < 10; ++round) {
      SCOPED_TRACE(fmt::format("round {}", round));
      if (round > 0) {
        for (int i = pick(4); i > 0; --i, ++next_id) {
          Exec(fmt::format("INSERT INTO {} VALUES ({}, 'u{}@x.io', '{}', {}, 'n')", table, next_id,
                           next_id, plans[pick(3)], 20 + pick(50)));
        }
        auto random_id = [&]() { return 1 + pick(next_id - 1); };
        for (int i = pick(4); i > 0; --i) {  // mapped by m
          Exec(fmt::format("UPDATE {} SET plan = '{}' WHERE id = {}", table, plans[pick(3)],
                           random_id()));
        }
        for (int i = pick(3); i > 0; --i) {  // mapped by m2 only
          Exec(fmt::format("UPDATE {} SET age = age + 1 WHERE id = {}", table, random_id()));
        }
        for (int i = pick(4); i > 0; --i) {  // mapped by neither; sometimes NULL vs ''
          Exec(fmt::format("UPDATE {} SET note = {} WHERE id = {}", table,
                           pick(2) == 0 ? "note || 'x'" : (pick(2) == 0 ? "''" : "NULL"),
                           random_id()));
        }
        for (int i = pick(3); i > 0; --i) {
          Exec(fmt::format("DELETE FROM {} WHERE id = {}", table, random_id()));
        }
        if (pick(3) == 0) {  // a duplicate key, identical or not
          Exec(fmt::format(
              "INSERT INTO {0} SELECT id, email, {1}, age, note FROM {0} WHERE id = {2} LIMIT 1",
              table, pick(2) == 0 ? "plan" : "'dup'", random_id()));
        }
        if (pick(3) == 0) {  // a duplicate resolved
          Exec(fmt::format(
              "DELETE FROM {0} WHERE rowid IN (SELECT min(rowid) FROM {0} WHERE id IS NOT NULL "
              "GROUP BY id HAVING count(*) > 1 LIMIT 1)",
              table));
        }
        if (pick(4) == 0) {
          Exec(fmt::format("INSERT INTO {} VALUES (NULL, 'null@x.io', 'free', 1, 'n')", table));
        }
        if (pick(4) == 0) Exec(fmt::format("DELETE FROM {} WHERE id IS NULL", table));
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
    auto tables = fake_->Select(
        "SELECT count(*) FROM wm_state.sqlite_master WHERE type = 'table' AND name LIKE 'PASS\\_%' "
        "ESCAPE '\\' AND name <> 'PASS_TABLES'");
    ASSERT_TRUE(tables.ok()) << tables.status();
    EXPECT_EQ((*tables)[0][0], "0");
  }
}

}  // namespace
}  // namespace backflow
