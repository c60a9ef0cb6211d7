// change_detection: warehouse on ClickHouse: the dialect's statements, then
// against the fake HTTP interface which rows are candidates, which stored
// entries come back and in what order, writes (versioned rows and
// tombstones read through argMax), key types, privileges, pass tables left
// behind; and the engine in warehouse mode against local mode over random
// rounds.
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
#include "backflow/sources/clickhouse/clickhouse_source.h"
#include "backflow/sources/clickhouse/fake_clickhouse_server.h"
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

Column Col(const std::string& name, ValueType type, const std::string& source_type) {
  Column c;
  c.name = name;
  c.type = type;
  c.source_type = source_type;
  return c;
}

TEST(ClickHouseNamedParametersTest, PlaceholdersOutsideQuotesAndCommentsBecomeParameters) {
  auto sql = ClickHouseNamedParameters(
      "SELECT '?', 'it''s ?', 'a\\'?', `c?`, \"d?\" -- ?\n, ? /* ? */, x = ?", 2);
  ASSERT_TRUE(sql.ok()) << sql.status();
  EXPECT_EQ(*sql,
            "SELECT '?', 'it''s ?', 'a\\'?', `c?`, \"d?\" -- ?\n, {p0:String} /* ? */, x = "
            "{p1:String}");
  EXPECT_EQ(ClickHouseNamedParameters("SELECT ?", 2).status().code(), absl::StatusCode::kInternal);
}

TEST(ClickHouseWarehouseSqlTest, StatementsAreClickHouseForms) {
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> sent;
  auto sql = NewClickHouseWarehouseSql(
      [&](const std::string& statement,
          const std::vector<std::pair<std::string, std::string>>& params,
          const std::atomic<bool>*) -> absl::StatusOr<std::unique_ptr<RowReader>> {
        sent.emplace_back(statement, params);
        return absl::UnavailableError("not connected");
      });
  // Bindings become typed query parameters; the model's SQL (no bindings,
  // `?` the ternary operator) travels untouched.
  (void)sql->Run("SELECT a FROM t WHERE b = ? AND c = ?", {"x", "y"});
  (void)sql->Run("SELECT a > 1 ? 'p' : 'q' FROM t", {});
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].first, "SELECT a FROM t WHERE b = {p0:String} AND c = {p1:String}");
  EXPECT_EQ(sent[0].second,
            (std::vector<std::pair<std::string, std::string>>{{"p0", "x"}, {"p1", "y"}}));
  EXPECT_EQ(sent[1].first, "SELECT a > 1 ? 'p' : 'q' FROM t");
  EXPECT_TRUE(sent[1].second.empty());

  EXPECT_EQ(sql->CreateSchemaSql("bf"), "CREATE DATABASE IF NOT EXISTS bf");
  EXPECT_THAT(sql->CreateCheckpointsSql("bf.CHECKPOINTS"),
              HasSubstr("version UInt64,\n  deleted UInt8\n) ENGINE = "
                        "ReplacingMergeTree(version) ORDER BY (mapping, record_key)"));
  EXPECT_THAT(sql->CreateRegistrySql("bf.PASS_TABLES"),
              HasSubstr("ENGINE = MergeTree ORDER BY tuple()"));
  EXPECT_EQ(sql->RegisterPassSql("bf.PASS_TABLES"),
            "INSERT INTO bf.PASS_TABLES (table_name, created_at) SELECT ?, toInt64(?)");
  Schema schema = {Col("id", ValueType::kInt64, "UInt64"),
                   Col("na`me", ValueType::kString, "Nullable(String)")};
  BoundSql pass = sql->CreatePassTableSql("bf.PASS_1_a", "SELECT 1", schema, 0);
  EXPECT_THAT(pass.sql, HasSubstr("CREATE TABLE bf.PASS_1_a ENGINE = MergeTree ORDER BY tuple() "
                                  "AS\nSELECT m.*, toString(m.`id`) AS BACKFLOW_PASS_KEY"));
  EXPECT_THAT(pass.sql, HasSubstr("lower(hex(MD5(assumeNotNull(concat('',"));
  EXPECT_THAT(pass.sql, HasSubstr("CASE WHEN m.`na\\`me` IS NULL THEN 'n' ELSE concat('v', "
                                  "toString(length(toString(m.`na\\`me`))), ':'"));
  EXPECT_TRUE(pass.bindings.empty());

  // No MERGE: one INSERT of versioned rows, removes as tombstones.
  BoundSql apply = sql->ApplySql("bf.CHECKPOINTS", "m", "[]");
  EXPECT_THAT(apply.sql, HasSubstr("INSERT INTO bf.CHECKPOINTS (mapping, record_key, row_hash, "
                                   "mapping_version, fingerprint, record_identity, version, "
                                   "deleted)\nSELECT ?, JSONExtractString(j.VALUE, 1)"));
  EXPECT_THAT(apply.sql, HasSubstr("(SELECT coalesce(max(c.version), 0) + 1 FROM bf.CHECKPOINTS "
                                   "AS c WHERE c.mapping = ?)"));
  EXPECT_THAT(apply.sql, HasSubstr("JSONExtractString(j.VALUE, 2) = 'D'"));
  EXPECT_THAT(apply.sql, Not(HasSubstr("MERGE")));
  EXPECT_EQ(apply.bindings, (std::vector<std::string>{"m", "m", "[]"}));
  // Reads take each key's latest row and skip tombstones.
  EXPECT_THAT(sql->CheckpointsToRead("bf.CHECKPOINTS"),
              HasSubstr("argMax(deleted, version) AS d FROM bf.CHECKPOINTS GROUP BY mapping, "
                        "record_key) WHERE d = 0)"));

  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fp(1)}, {"n", Fp(2)}};
  filter.in_flight_keys = {"k"};
  BoundSql keys = sql->CreateKeysTableSql("bf.CHECKPOINTS", "bf.P", "bf.P_K", filter);
  EXPECT_THAT(keys.sql, HasSubstr("\nUNION DISTINCT\n"));
  EXPECT_THAT(keys.sql, Not(HasSubstr("EXISTS")));
  EXPECT_THAT(keys.sql, Not(HasSubstr("JOIN")));
  EXPECT_EQ(keys.bindings, (std::vector<std::string>{"[\"k\"]", Fp(1).ToHex(), "m", Fp(2).ToHex(),
                                                     "n", "m", "n"}));
  EXPECT_EQ(static_cast<size_t>(std::count(keys.sql.begin(), keys.sql.end(), '?')),
            keys.bindings.size());

  EXPECT_TRUE(sql->KeyTypeSupported(Col("id", ValueType::kInt64, "UInt64")));
  EXPECT_TRUE(sql->KeyTypeSupported(Col("id", ValueType::kInt64, "Nullable(Int32)")));
  EXPECT_TRUE(sql->KeyTypeSupported(Col("id", ValueType::kString, "LowCardinality(String)")));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("id", ValueType::kString, "FixedString(4)")));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("id", ValueType::kString, "UUID")));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("id", ValueType::kDouble, "Float64")));
  EXPECT_FALSE(sql->KeyTypeSupported(Col("id", ValueType::kDecimal, "Decimal(10, 2)")));
  EXPECT_EQ(sql->KeyCastAdvice("id"), "toString(`id`) AS `id`");
}

class ClickHouseChangeDetectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeClickHouseOptions options;
    options.block_rows = 3;  // several blocks per result
    fake_ = std::make_unique<FakeClickHouseServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    ASSERT_TRUE(fake_
                    ->CreateTable("default", "customers",
                                  {{"id", "Nullable(String)"},
                                   {"plan", "Nullable(String)"},
                                   {"age", "Int64"},
                                   {"seen", "Nullable(DateTime)"}})
                    .ok());
    sql_ = "SELECT id, plan, age, seen FROM customers";
  }

  json Settings() {
    return {{"base_url", fake_->BaseUrl()}, {"max_retries", 0}, {"state_schema", "bf_state"}};
  }

  std::unique_ptr<Source> MakeSource() {
    SourceDefinition def = ClickHouseSourceDefinition();
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
      for (const auto& r : *rows) names.push_back(r[0].get<std::string>());
    }
    return names;
  }

  // The queries whose SQL contains `text`.
  std::vector<ClickHouseQueryLog> Queries(const std::string& text) {
    std::vector<ClickHouseQueryLog> out;
    for (auto& q : fake_->Queries()) {
      if (q.sql.find(text) != std::string::npos) out.push_back(q);
    }
    return out;
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
    EXPECT_EQ((*reader)->schema()[3].source_type, "Nullable(DateTime)");
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
      EXPECT_EQ(row[4].ToString().find_first_not_of("0123456789abcdef"), std::string::npos);
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
  std::unique_ptr<FakeClickHouseServer> fake_;
  std::string sql_;
};

TEST_F(ClickHouseChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  Exec(
      "INSERT INTO customers VALUES ('a','free',1,'2024-01-01 00:00:00'), ('B','free',2,NULL), "
      "('_','pro',3,NULL), ('c','',4,NULL), (NULL,'free',5,NULL), ('\xC3\xA9','free',6,NULL)");
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);

  // First pass: nothing stored, every row is a candidate; the database and
  // tables were created.
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_EQ(first.rows.size(), 6u);
  EXPECT_EQ(first.rows["a"], "free|1|2024-01-01T00:00:00Z");
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
  // ("B" < "_" < "a" < "c" < "é").
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

  // Backflow's statements write without readonly and carry their values as
  // query parameters; the model itself is still read with readonly=2.
  std::vector<ClickHouseQueryLog> keys = Queries("CREATE TABLE bf_state.PASS_");
  ASSERT_FALSE(keys.empty());
  for (const auto& q : keys) EXPECT_EQ(q.params.count("readonly"), 0u) << q.sql;
  std::vector<ClickHouseQueryLog> counts = Queries("SELECT COUNT(*) FROM (SELECT mapping");
  ASSERT_FALSE(counts.empty());
  EXPECT_EQ(counts.back().params["param_p0"], "other");
  ASSERT_TRUE(source->Query(sql_).ok());
  std::vector<ClickHouseQueryLog> model = Queries(sql_);
  ASSERT_FALSE(model.empty());
  EXPECT_EQ(model.back().sql, sql_);
  EXPECT_EQ(model.back().params["readonly"], "2");
}

TEST_F(ClickHouseChangeDetectionTest, WritesAreVersionedRowsAndTombstonesReadThroughArgMax) {
  Exec("INSERT INTO customers VALUES ('a','free',1,NULL), ('b','free',2,NULL)");
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
  const size_t before = Queries("INSERT INTO bf_state.CHECKPOINTS").size();
  ASSERT_TRUE(cd->Apply("m", {upsert, remove, upsert_again}).ok());
  std::vector<ClickHouseQueryLog> inserts = Queries("INSERT INTO bf_state.CHECKPOINTS");
  ASSERT_EQ(inserts.size(), before + 1);  // one statement
  EXPECT_EQ(inserts.back().params["param_p0"], "m");
  EXPECT_EQ(inserts.back().params.count("readonly"), 0u);

  // Nothing is updated in place: every write is a new row with a higher
  // version; the remove is a tombstone.
  auto rows = fake_->Select(
      "SELECT record_key, fingerprint, record_identity, mapping_version, version, deleted FROM "
      "bf_state.checkpoints WHERE mapping = 'm' ORDER BY version, record_key");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 4u);
  EXPECT_EQ((*rows)[0], (std::vector<json>{"a", Fp(1).ToHex(), "69643a61", Fp(1).ToHex(), 1, 0}));
  EXPECT_EQ((*rows)[2][0], "a");
  EXPECT_EQ((*rows)[2][4], 2);
  EXPECT_EQ((*rows)[2][5], 1);
  EXPECT_EQ((*rows)[3], (std::vector<json>{"b", Fp(1).ToHex(), "69643a62", Fp(1).ToHex(), 2, 0}));

  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("a"));  // removed: a candidate again
  EXPECT_EQ(second.counts["m"], 1);
  EXPECT_THAT(second.entries["m"], ElementsAre());

  // A row with a lower version (as a merge could leave in any order) never
  // wins over the latest one, whatever was inserted last.
  Exec(
      fmt::format("INSERT INTO bf_state.checkpoints VALUES ('m', 'b', 'stale', '{}', '{}', "
                  "'6964', 1, 0)",
                  Fp(1).ToHex(), Fp(1).ToHex()));
  Pass third = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(third), ElementsAre("a"));
  EXPECT_EQ(third.counts["m"], 1);

  // Another mapping's entries are untouched by this one's writes.
  Deliver(*cd, "n", Fp(1), first);
  ASSERT_TRUE(cd->Apply("m", {remove}).ok());
  EXPECT_EQ(RunPass(*cd, Filter({{"n", Fp(1)}})).counts["n"], 2);
}

TEST_F(ClickHouseChangeDetectionTest, KeyTypesWhoseTextCouldDifferAreRefused) {
  ASSERT_TRUE(fake_->CreateTable("default", "scores", {{"id", "Float64"}, {"n", "UInt64"}}).ok());
  Exec("INSERT INTO scores VALUES (1.5, 7)");
  sql_ = "SELECT id, n FROM scores";
  auto source = MakeSource();
  auto snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(reader.status().message()), HasSubstr("toString(`id`) AS `id`"));
  ASSERT_TRUE((*snapshot)->Close().ok());

  // An integer key works, its text as Backflow writes it.
  snapshot = source->warehouse_change_detection()->Begin(sql_, "n");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[1].ToString(), "7");
  EXPECT_EQ((*reader)->schema()[1].source_type, "UInt64");
  ASSERT_TRUE((*snapshot)->Close().ok());
}

TEST_F(ClickHouseChangeDetectionTest, MissingPrivilegesSayWhatToGrant) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  const std::string denied =
      "default: Not enough privileges. To execute this query, it's necessary to have the grant ";
  fake_->FailNext(FakeClickHouseFailure::Before(497, denied + "CREATE DATABASE ON bf_state.*",
                                                "CREATE DATABASE"));
  fake_->FailNext(FakeClickHouseFailure::Before(497, denied + "CREATE TABLE ON bf_state.*",
                                                "CREATE TABLE IF NOT EXISTS"));
  auto snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  std::string message(snapshot.status().message());
  EXPECT_THAT(message, HasSubstr("GRANT CREATE DATABASE ON bf_state.* TO `default`;"));
  EXPECT_THAT(message, HasSubstr("state_schema"));
  EXPECT_THAT(message, HasSubstr("Not enough privileges"));

  // The database exists but pass tables cannot be made in it.
  fake_->FailNext(FakeClickHouseFailure::Before(497, denied + "CREATE TABLE ON bf_state.*",
                                                "CREATE TABLE bf_state.PASS_"));
  snapshot = cd->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(snapshot.status().message()),
              HasSubstr("may not create tables in database bf_state. Have an administrator run "
                        "`GRANT CREATE TABLE, DROP TABLE, SELECT, INSERT, ALTER DELETE ON "
                        "bf_state.* TO `default`;`"));
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
  // Writes refused.
  fake_->FailNext(FakeClickHouseFailure::Before(497, denied + "INSERT ON bf_state.CHECKPOINTS",
                                                "INSERT INTO bf_state.CHECKPOINTS"));
  WarehouseCheckpointWrite w;
  w.key = "a";
  absl::Status applied = cd->Apply("m", {w});
  EXPECT_EQ(applied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(applied.message()), HasSubstr("may not read and write the tables"));
  EXPECT_THAT(std::string(applied.message()), HasSubstr("ALTER DELETE ON bf_state.*"));
}

TEST_F(ClickHouseChangeDetectionTest, PassTablesGoOnCloseOnFailureAndWhenStale) {
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
      cd->Begin("SELECT id, plan, age, seen, throwIf(age > 0, 'boom') AS bad FROM customers", "id");
  EXPECT_FALSE(failed.ok());
  EXPECT_THAT(std::string(failed.status().message()), HasSubstr("boom"));
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
  auto registered = fake_->Select("SELECT count(*) FROM bf_state.pass_tables");
  ASSERT_TRUE(registered.ok());
  EXPECT_EQ((*registered)[0][0], 0);

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

class ClickHouseWarehouseModeTest : public ClickHouseChangeDetectionTest {
 protected:
  void SetUp() override {
    ClickHouseChangeDetectionTest::SetUp();
    dir_ = fs::path(::testing::TempDir()) /
           fmt::format("clickhouse-warehouse-mode-{}-{}", getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Setup(Side& side, const std::string& name, const std::string& mode,
             const std::string& table) {
    side.dir = dir_ / name;
    fs::create_directories(side.dir);
    ASSERT_TRUE(side.registry.AddSource(ClickHouseSourceDefinition()).ok());
    ASSERT_TRUE(side.registry.AddDestination(testing::MemoryDestinationDefinition(side.m)).ok());
    DestinationDefinition second = testing::MemoryDestinationDefinition(side.m2);
    second.type = "memory2";
    ASSERT_TRUE(side.registry.AddDestination(second).ok());
    const std::string yaml =
        fmt::format(R"(
sources:
  - name: ch
    type: clickhouse
    base_url: "{url}"
    max_retries: 0
    state_schema: {schema}
models:
  - name: people
    source: ch
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
                    fmt::arg("url", fake_->BaseUrl()), fmt::arg("schema", "wm_state"),
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

TEST_F(ClickHouseWarehouseModeTest, SameChangeSetsAsLocalModeOverRandomRounds) {
  for (int seed : {1, 2, 3}) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    const std::string table = fmt::format("people{}", seed);
    ASSERT_TRUE(fake_
                    ->CreateTable("default", table,
                                  {{"id", "Nullable(Int64)"},
                                   {"email", "Nullable(String)"},
                                   {"plan", "Nullable(String)"},
                                   {"age", "Int64"},
                                   {"note", "Nullable(String)"}})
                    .ok());
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
    EXPECT_EQ((*tables)[0][0], 0);
  }
}

}  // namespace
}  // namespace backflow
