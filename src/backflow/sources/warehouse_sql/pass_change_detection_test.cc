// The SQL of the pass-table change detection, with a minimal dialect: the
// row hash's NULL-safe text, the candidate keys' conditions and the order of
// their bindings, the MERGE of writes, and what Apply sends.
#include "backflow/sources/warehouse_sql/pass_change_detection.h"

#include <gtest/gtest.h>

#include "gmock/gmock.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

class EmptyReader : public RowReader {
 public:
  const Schema& schema() const override { return schema_; }
  absl::StatusOr<bool> Next(Row&) override { return false; }

 private:
  Schema schema_;
};

// Dialect "T": records statements, answers every one with no rows.
class TestSql : public WarehouseSql {
 public:
  absl::StatusOr<std::unique_ptr<RowReader>> Run(
      const std::string& sql, const std::vector<std::string>& bindings) override {
    statements.push_back({sql, bindings});
    return std::unique_ptr<RowReader>(new EmptyReader());
  }
  std::string QuoteIdentifier(std::string_view name) const override {
    return "`" + std::string(name) + "`";
  }
  std::string ToText(const Column&, const std::string& expr) const override {
    return "TXT(" + expr + ")";
  }
  bool KeyTypeSupported(const Column& c) const override { return c.type == ValueType::kInt64; }
  std::string KeyCastAdvice(const std::string& key) const override { return "TXT(" + key + ")"; }
  std::string Md5Hex(const std::string& expr) const override { return "MD5(" + expr + ")"; }
  std::string TextType() const override { return "STR"; }
  std::string KeyType() const override { return "BYTESTR"; }
  std::string IntegerType() const override { return "I64"; }
  std::string JsonArrayTable(const std::string& alias) const override {
    return "ARR(?) AS " + alias;
  }
  std::string JsonValueText(const std::string& alias) const override { return alias + ".S"; }
  std::string JsonItemText(const std::string& alias, int index) const override {
    return alias + ".S" + std::to_string(index);
  }
  bool IsPrivilegeError(const absl::Status&) const override { return false; }
  std::string PrivilegeAdvice(Step, const std::string&) override { return ""; }
  size_t MaxBindingBytes() const override { return max_bytes; }

  std::vector<BoundSql> statements;
  size_t max_bytes = size_t{4} << 20;
};

int Count(const std::string& text, const std::string& part) {
  int n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

TEST(PassSqlTest, JsonArrayChunksKeepEachArrayWithinTheLimitAndEveryItemInOrder) {
  JsonArrayChunks chunks(12);  // "[" + items + "]"
  std::vector<std::string> out;
  for (std::string_view item : {"\"a\"", "\"bb\"", "\"ccc\"", "\"a-long-item\"", "1"}) {
    if (auto full = chunks.Add(item)) out.push_back(*full);
  }
  if (auto last = chunks.Finish()) out.push_back(*last);
  // An item that does not fit starts the next array; one longer than the
  // limit gets an array of its own.
  EXPECT_THAT(out, ElementsAre("[\"a\",\"bb\"]", "[\"ccc\"]", "[\"a-long-item\"]", "[1]"));
  EXPECT_FALSE(chunks.Finish());
  JsonArrayChunks none(100);
  EXPECT_FALSE(none.Finish());
}

TEST(PassSqlTest, RowHashIsNullSafeAndLengthPrefixed) {
  TestSql sql;
  Schema schema = {{"ID", ValueType::kInt64, "NUMBER"}, {"NOTE", ValueType::kString, "VARCHAR"}};
  EXPECT_EQ(pass_sql::RowHash(sql, schema, "m"),
            "MD5(CASE WHEN m.`ID` IS NULL THEN 'n' ELSE 'v' || LENGTH(TXT(m.`ID`)) || ':' || "
            "TXT(m.`ID`) END || CASE WHEN m.`NOTE` IS NULL THEN 'n' ELSE 'v' || "
            "LENGTH(TXT(m.`NOTE`)) || ':' || TXT(m.`NOTE`) END)");
  BoundSql create = pass_sql::CreatePassTable(sql, "s.PASS_1_a", "SELECT 1", schema, 1);
  EXPECT_THAT(create.sql, HasSubstr("CREATE TABLE s.PASS_1_a AS\nSELECT m.*, TXT(m.`NOTE`) AS "
                                    "BACKFLOW_PASS_KEY, MD5("));
  EXPECT_THAT(create.sql, HasSubstr("FROM (\nSELECT 1\n) AS m"));
  EXPECT_TRUE(create.bindings.empty());
}

TEST(PassSqlTest, CandidateKeysBindMappingsInFlightKeysAndVersionsInOrder) {
  TestSql sql;
  WarehouseCandidateFilter filter;
  filter.mappings = {{"m1", Fingerprint{1, 2}}, {"m2", Fingerprint{3, 4}}};
  filter.in_flight_keys = {"k'1", "k\"2"};
  BoundSql keys = pass_sql::CreateKeysTable(sql, "s.CHECKPOINTS", "s.P", "s.P_K", filter);
  EXPECT_EQ(Count(keys.sql, "?"), static_cast<int>(keys.bindings.size()));
  EXPECT_THAT(keys.bindings, ElementsAre("m1", "m2", R"(["k'1","k\"2"])", Fingerprint{1, 2}.ToHex(),
                                         Fingerprint{3, 4}.ToHex(), "m1", "m2"));
  EXPECT_THAT(keys.sql, HasSubstr("LEFT JOIN s.CHECKPOINTS AS c1 ON c1.mapping = ? AND "
                                  "c1.record_key = p.BACKFLOW_PASS_KEY"));
  EXPECT_THAT(keys.sql, HasSubstr("GROUP BY d.BACKFLOW_PASS_KEY HAVING COUNT(*) > 1"));
  EXPECT_THAT(keys.sql, HasSubstr("c1.row_hash IS DISTINCT FROM p.BACKFLOW_ROW_HASH OR "
                                  "c1.mapping_version IS DISTINCT FROM ?"));
  EXPECT_THAT(keys.sql, HasSubstr("WHERE c.mapping IN (?, ?)\n  AND NOT EXISTS"));
  EXPECT_THAT(keys.sql, Not(HasSubstr("k'1")));  // values travel as bindings only

  // A full resync takes every key; without mappings nothing is gone.
  filter.all_rows = true;
  keys = pass_sql::CreateKeysTable(sql, "s.CHECKPOINTS", "s.P", "s.P_K", filter);
  EXPECT_THAT(keys.sql, HasSubstr("IS NOT NULL AND (TRUE)"));
  EXPECT_THAT(keys.bindings, ElementsAre("m1", "m2"));
  filter.mappings.clear();
  keys = pass_sql::CreateKeysTable(sql, "s.CHECKPOINTS", "s.P", "s.P_K", filter);
  EXPECT_THAT(keys.sql, Not(HasSubstr("UNION")));
  EXPECT_TRUE(keys.bindings.empty());
}

TEST(PassSqlTest, CandidatesAndEntries) {
  TestSql sql;
  Schema schema = {{"ID", ValueType::kInt64, "NUMBER"}, {"A", ValueType::kString, "VARCHAR"}};
  EXPECT_EQ(pass_sql::SelectCandidates(sql, "s.P", "s.P_K", schema).sql,
            "SELECT p.`ID`, p.`A`, p.BACKFLOW_ROW_HASH FROM s.P AS p\n"
            "WHERE p.BACKFLOW_PASS_KEY IS NULL OR p.BACKFLOW_PASS_KEY IN (SELECT k.record_key "
            "FROM s.P_K AS k)");
  BoundSql entries = pass_sql::SelectEntries("s.CHECKPOINTS", "s.P_K", "m'");
  EXPECT_THAT(entries.sql, HasSubstr("ORDER BY c.record_key"));
  EXPECT_THAT(entries.bindings, ElementsAre("m'"));
}

TEST(PassChangeDetectionTest, ApplyMergesTheLastWriteOfEachKeyInBoundChunks) {
  auto owned = std::make_unique<TestSql>();
  TestSql* sql = owned.get();
  sql->max_bytes = 120;
  FakeClock clock;
  auto cd = NewPassChangeDetection(std::move(owned), {"st", &clock});
  std::vector<WarehouseCheckpointWrite> writes;
  for (int i = 0; i < 6; ++i) {
    WarehouseCheckpointWrite w;
    w.key = "k" + std::to_string(i % 3);
    w.fingerprint = Fingerprint{static_cast<uint64_t>(i), 0};
    w.identity = std::string("\x00\xff", 2);
    w.row_hash = "h";
    w.version = Fingerprint{9, 9};
    if (i == 5) w.kind = WarehouseCheckpointWrite::Kind::kRemove;
    writes.push_back(w);
  }
  ASSERT_TRUE(cd->Apply("m", writes).ok());
  // The tables were made first (schema, CHECKPOINTS, PASS_TABLES).
  ASSERT_GE(sql->statements.size(), 4u);
  EXPECT_EQ(sql->statements[0].sql, "CREATE SCHEMA IF NOT EXISTS st");
  EXPECT_THAT(sql->statements[1].sql, HasSubstr("record_key BYTESTR NOT NULL"));
  nlohmann::json all = nlohmann::json::array();
  for (size_t i = 3; i < sql->statements.size(); ++i) {
    const BoundSql& merge = sql->statements[i];
    EXPECT_THAT(merge.sql, HasSubstr("MERGE INTO st.CHECKPOINTS AS t\nUSING (SELECT j.S0 AS "
                                     "record_key, j.S1 AS op"));
    ASSERT_EQ(merge.bindings.size(), 3u);
    EXPECT_LE(merge.bindings[0].size(), 120u);
    EXPECT_THAT(merge.bindings, ElementsAre(::testing::_, "m", "m"));
    for (const auto& item : nlohmann::json::parse(merge.bindings[0])) all.push_back(item);
  }
  EXPECT_GT(sql->statements.size(), 4u);  // split in chunks
  EXPECT_EQ(all,
            nlohmann::json::parse(R"([["k0","U","h",")" + Fingerprint{9, 9}.ToHex() + R"(",")" +
                                  Fingerprint{3, 0}.ToHex() + R"(","00ff"],["k1","U","h",")" +
                                  Fingerprint{9, 9}.ToHex() + R"(",")" + Fingerprint{4, 0}.ToHex() +
                                  R"(","00ff"],["k2","D","","","",""]])"));
}

TEST(PassChangeDetectionTest, PlainIdentifiers) {
  EXPECT_TRUE(IsPlainSqlIdentifier("backflow_state"));
  EXPECT_TRUE(IsPlainSqlIdentifier("S$1"));
  EXPECT_FALSE(IsPlainSqlIdentifier(""));
  EXPECT_FALSE(IsPlainSqlIdentifier("1abc"));
  EXPECT_FALSE(IsPlainSqlIdentifier("a.b"));
  EXPECT_FALSE(IsPlainSqlIdentifier("a\"b"));
}

// --- Cancel -------------------------------------------------------------------

class OneColumnReader : public RowReader {
 public:
  const Schema& schema() const override { return schema_; }
  absl::StatusOr<bool> Next(Row&) override { return false; }

 private:
  Schema schema_ = {{"ID", ValueType::kInt64, "NUMBER"}};
};

// A warehouse whose statement containing `long_marker` runs until the run is
// cancelled: the fake sets the flag while it runs (as another thread would)
// and then behaves as the sources do with QueryOptions::cancel, returning
// kCancelled, but only when the statement was given the flag.
class CancellingSql : public TestSql {
 public:
  struct Sent {
    std::string sql;
    const std::atomic<bool>* cancel;
  };

  absl::StatusOr<std::unique_ptr<RowReader>> Run(
      const std::string& sql, const std::vector<std::string>& bindings) override {
    sent.push_back({sql, cancel()});
    statements.push_back({sql, bindings});
    if (!long_marker.empty() && sql.find(long_marker) != std::string::npos) {
      flag->store(true);
      if (cancel() == flag) {
        ++cancelled;
        return QueryCancelledError("the test statement");
      }
    }
    if (fail_drops && sql.starts_with("DROP TABLE")) return absl::UnavailableError("unreachable");
    if (sql.find("LIMIT 0") != std::string::npos) {
      return std::unique_ptr<RowReader>(new OneColumnReader());
    }
    return std::unique_ptr<RowReader>(new EmptyReader());
  }

  std::atomic<bool>* flag = nullptr;
  std::string long_marker;
  bool fail_drops = false;
  int cancelled = 0;
  std::vector<Sent> sent;
};

class PassCancelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto owned = std::make_unique<CancellingSql>();
    sql_ = owned.get();
    sql_->flag = &cancel_;
    cd_ = NewPassChangeDetection(std::move(owned), {"st", &clock_});
  }

  // The statements sent from the `from`th on.
  std::vector<CancellingSql::Sent> SentFrom(size_t from) {
    return std::vector<CancellingSql::Sent>(sql_->sent.begin() + static_cast<long>(from),
                                            sql_->sent.end());
  }

  FakeClock clock_;
  std::atomic<bool> cancel_{false};
  CancellingSql* sql_ = nullptr;
  std::unique_ptr<WarehouseChangeDetection> cd_;
};

TEST_F(PassCancelTest, CancelDuringBeginsCreateTableStopsItAndDropsThePassTables) {
  sql_->long_marker = "CREATE TABLE st.PASS_";  // the copy of the model
  auto snapshot = cd_->Begin("SELECT ID FROM T", "ID", WarehousePassOptions{&cancel_});
  ASSERT_EQ(snapshot.status().code(), absl::StatusCode::kCancelled) << snapshot.status();
  EXPECT_EQ(sql_->cancelled, 1);
  // Every statement of the pass carried the flag; the cleanup after the
  // cancelled statement did not, and removed the table and its registry row.
  size_t at = 0;
  while (at < sql_->sent.size() && sql_->sent[at].sql.find("CREATE TABLE st.PASS_") != 0) {
    EXPECT_EQ(sql_->sent[at].cancel, &cancel_) << sql_->sent[at].sql;
    ++at;
  }
  ASSERT_LT(at, sql_->sent.size());
  EXPECT_EQ(sql_->sent[at].cancel, &cancel_);
  std::vector<CancellingSql::Sent> after = SentFrom(at + 1);
  ASSERT_EQ(after.size(), 3u);
  EXPECT_THAT(after[0].sql, HasSubstr("DROP TABLE IF EXISTS st.PASS_"));
  EXPECT_THAT(after[1].sql, HasSubstr("DROP TABLE IF EXISTS st.PASS_"));
  EXPECT_THAT(after[1].sql, HasSubstr("_K"));
  EXPECT_EQ(after[2].sql, "DELETE FROM st.PASS_TABLES WHERE table_name = ?");
  for (const auto& s : after) EXPECT_EQ(s.cancel, nullptr) << s.sql;
  EXPECT_EQ(sql_->cancel(), nullptr);  // nothing keeps the flag after the step

  // The checkpoint's writes are never given the flag.
  const size_t before = sql_->sent.size();
  WarehouseCheckpointWrite w;
  w.key = "1";
  ASSERT_TRUE(cd_->Apply("m", {w}).ok());
  ASSERT_GT(sql_->sent.size(), before);
  for (const auto& s : SentFrom(before)) EXPECT_EQ(s.cancel, nullptr) << s.sql;
}

TEST_F(PassCancelTest, CancelDuringReadCandidatesStopsTheKeysTableAndDropsThePassTables) {
  auto snapshot = cd_->Begin("SELECT ID FROM T", "ID", WarehousePassOptions{&cancel_});
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  sql_->long_marker = "_K AS";  // the candidate keys
  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fingerprint{1, 2}}};
  const size_t from = sql_->sent.size();
  auto reader = (*snapshot)->ReadCandidates(filter);
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_EQ(sql_->cancelled, 1);
  std::vector<CancellingSql::Sent> step = SentFrom(from);
  ASSERT_EQ(step.size(), 1u);  // the candidates' SELECT was never sent
  EXPECT_EQ(step[0].cancel, &cancel_);
  // Later steps send nothing once the flag is set.
  EXPECT_EQ((*snapshot)->ScanEntries("m").status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ((*snapshot)->CountEntries("m").status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(sql_->sent.size(), from + 1);
  ASSERT_TRUE((*snapshot)->Close().ok());
  std::vector<CancellingSql::Sent> cleanup = SentFrom(from + 1);
  ASSERT_EQ(cleanup.size(), 3u);
  EXPECT_THAT(cleanup[0].sql, HasSubstr("DROP TABLE IF EXISTS st.PASS_"));
  EXPECT_THAT(cleanup[1].sql, HasSubstr("_K"));
  EXPECT_EQ(cleanup[2].sql, "DELETE FROM st.PASS_TABLES WHERE table_name = ?");
  for (const auto& s : cleanup) EXPECT_EQ(s.cancel, nullptr) << s.sql;
}

TEST_F(PassCancelTest, CleanupAfterACancelStopsAtItsFirstFailure) {
  auto snapshot = cd_->Begin("SELECT ID FROM T", "ID", WarehousePassOptions{&cancel_});
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  cancel_ = true;
  sql_->fail_drops = true;  // e.g. the warehouse is unreachable
  const size_t from = sql_->sent.size();
  EXPECT_EQ((*snapshot)->Close().code(), absl::StatusCode::kUnavailable);
  // One attempt at the first DROP; the registry row stays for a later
  // Begin(), which drops stale passes.
  std::vector<CancellingSql::Sent> cleanup = SentFrom(from);
  ASSERT_EQ(cleanup.size(), 1u);
  EXPECT_THAT(cleanup[0].sql, HasSubstr("DROP TABLE IF EXISTS st.PASS_"));
}

TEST_F(PassCancelTest, AnAlreadyCancelledRunSendsNothing) {
  cancel_ = true;
  auto snapshot = cd_->Begin("SELECT ID FROM T", "ID", WarehousePassOptions{&cancel_});
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(sql_->sent.empty());
}

}  // namespace
}  // namespace backflow
