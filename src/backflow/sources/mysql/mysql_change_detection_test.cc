// The SQL of warehouse change detection on MariaDB: database and table
// creation, which rows are candidates, which stored entries come back and in
// what order (bytes, not the collation's), writes and their atomicity,
// privileges.
#include <algorithm>
#include <set>

#include "backflow/sources/mysql/mysql_source.h"
#include "backflow/sources/mysql/mysql_test_server.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;

using warehouse_testing::Fp;

// The pass helpers of the shared checks over a real MariaDB: a model of three
// columns (id, plan, age) in a case-insensitive collation.
class MysqlChangeDetectionTest : public mysql_testing::MariadbTest,
                                 public warehouse_testing::WarehouseSnapshotChecks {
 protected:
  using MariadbTest::Exec;

  void SetUp() override {
    MariadbTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    table_ = mysql_testing::UniqueName("cd");
    schema_ = mysql_testing::UniqueName("backflow_cd_state");
    Exec(fmt::format(
        "CREATE TABLE {} (id varchar(40), plan varchar(20), age int) CHARACTER SET utf8mb4 "
        "COLLATE utf8mb4_unicode_ci",
        table_));
    customers_ = table_;
    sql_ = fmt::format("SELECT id, plan, age FROM {}", table_);
    key_ = "id";
    model_columns_ = 3;
    sql_suffix_ = ";";
  }
  void TearDown() override {
    if (IsSkipped()) return;
    MYSQL* m = Connect();
    if (m == nullptr) return;
    (void)mysql_query(m, fmt::format("DROP DATABASE IF EXISTS {}", schema_).c_str());
    (void)mysql_query(m, fmt::format("DROP TABLE IF EXISTS {}", table_).c_str());
    mysql_close(m);
  }

  std::unique_ptr<Source> MakeSource(const std::string& url, const std::string& password) {
    return SourceOrFail(MysqlSourceDefinition().create(
        {{"url", url}, {"password", password}, {"state_schema", schema_}}, ConnectorEnv{}));
  }
  std::unique_ptr<Source> MakeSource() override {
    return MakeSource(server().url, server().password);
  }

  void WarehouseExec(const std::string& sql) override { Exec(sql); }  // fails the test on failure
  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return Rows(sql);
  }

  std::string table_, schema_;
};

TEST_F(MysqlChangeDetectionTest, OnlyChangedNewNullAndDuplicatedRowsAreCandidates) {
  // 'a' and 'A' are equal in the table's collation but distinct keys.
  Exec(fmt::format(
      "INSERT INTO {} VALUES ('a','free',1), ('B','free',2), ('_','pro',3), ('c','free',4), "
      "(NULL,'free',5), ('A','',6), ('\xC3\xA9t\xC3\xA9',NULL,7), ('z','free',8)",
      table_));
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  ASSERT_NE(cd, nullptr);

  // First pass: nothing stored, every row is a candidate; the table was created.
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_EQ(first.rows.size(), 8u);
  EXPECT_EQ(first.duplicates, 0);  // 'a' and 'A' are not duplicates
  EXPECT_EQ(first.rows["\xC3\xA9t\xC3\xA9"], "|7");
  EXPECT_EQ(first.rows["A"], "|6");
  EXPECT_EQ(first.counts["m"], 0);
  EXPECT_TRUE(first.entries["m"].empty());
  Deliver(*cd, "m", Fp(1), first);

  // Nothing changed: only the NULL key comes back, with the same hash.
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(second.rows,
              ElementsAre(std::pair<const std::string, std::string>("<null>#0", "free|5")));
  EXPECT_EQ(second.counts["m"], 7);
  EXPECT_TRUE(second.entries["m"].empty());
  EXPECT_EQ(second.hashes["<null>#0"], first.hashes["<null>#0"]);

  // NULL and '' differ; so do values differing only in case.
  Exec(fmt::format("UPDATE {} SET plan = NULL WHERE id = BINARY 'A'", table_));
  Exec(fmt::format("UPDATE {} SET plan = '' WHERE id = BINARY '\xC3\xA9t\xC3\xA9'", table_));
  Exec(fmt::format("UPDATE {} SET plan = 'FREE' WHERE id = BINARY 'z'", table_));
  Pass nulls = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(nulls), UnorderedElementsAre("A", "\xC3\xA9t\xC3\xA9", "z", "<null>#0"));
  // In byte order: 'A' (0x41) < 'z' (0x7A) < 'é' (0xC3 0xA9).
  EXPECT_THAT(nulls.entries["m"], ElementsAre("A", "z", "\xC3\xA9t\xC3\xA9"));
  Deliver(*cd, "m", Fp(1), nulls);

  // An update (any column), an insert, a delete, a duplicated key.
  Exec(fmt::format("UPDATE {} SET age = 40 WHERE id = BINARY 'a'", table_));
  Exec(fmt::format("INSERT INTO {} VALUES ('d','free',6), ('c','free',4)", table_));
  Exec(fmt::format("DELETE FROM {} WHERE id = '_'", table_));
  Pass third = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(third), UnorderedElementsAre("a", "c", "d", "<null>#0"));
  EXPECT_EQ(third.duplicates, 1);  // both rows of "c"
  EXPECT_NE(third.hashes["a"], first.hashes["a"]);
  // Stored entries of candidate keys and of the gone key, in byte order,
  // with what was written.
  EXPECT_THAT(third.entries["m"], ElementsAre("_", "a", "c"));
  ASSERT_EQ(third.full["m"].size(), 3u);
  EXPECT_EQ(third.full["m"][1].fingerprint, Fp(1));
  EXPECT_EQ(third.full["m"][1].identity, "id:a");

  // In-flight keys and a full resync force rows out; another version too.
  WarehouseCandidateFilter flight = Filter({{"m", Fp(1)}});
  flight.in_flight_keys = {"B"};
  Deliver(*cd, "m", Fp(1), third, {"c"});
  Pass fourth = RunPass(*cd, flight);
  EXPECT_THAT(Keys(fourth), UnorderedElementsAre("B", "c", "<null>#0"));
  EXPECT_THAT(fourth.entries["m"], ElementsAre("B", "_", "c"));

  WarehouseCandidateFilter all = Filter({{"m", Fp(1)}});
  all.all_rows = true;
  EXPECT_EQ(RunPass(*cd, all).rows.size(), 8u);
  EXPECT_EQ(RunPass(*cd, Filter({{"m", Fp(2)}})).rows.size(), 8u);
  // A second mapping with nothing stored makes every row a candidate; the
  // first mapping's entries of those keys come back, in byte order.
  Pass both = RunPass(*cd, Filter({{"m", Fp(1)}, {"other", Fp(1)}}));
  EXPECT_EQ(both.rows.size(), 8u);
  EXPECT_THAT(both.entries["m"],
              ElementsAre("A", "B", "_", "a", "c", "d", "z", "\xC3\xA9t\xC3\xA9"));
  EXPECT_TRUE(both.entries["other"].empty());
  EXPECT_EQ(both.counts["other"], 0);
}

TEST_F(MysqlChangeDetectionTest, APassReadsOneSnapshotWithoutBlockingWriters) {
  Exec(fmt::format("INSERT INTO {} VALUES ('a','free',1), ('b','free',2)", table_));
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Deliver(*cd, "m", Fp(1), RunPass(*cd, Filter({{"m", Fp(1)}})));
  Exec(fmt::format("UPDATE {} SET plan = 'pro' WHERE id = 'a'", table_));

  auto snapshot = cd->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  // Writers are not blocked by the pass, whose reads take no locks; what
  // they change after Begin() is not seen.
  MYSQL* writer = Connect();
  ASSERT_NE(writer, nullptr);
  ASSERT_TRUE(Exec("SET SESSION innodb_lock_wait_timeout = 1", writer));
  ASSERT_TRUE(Exec(fmt::format("UPDATE {} SET plan = 'team' WHERE id = 'b'", table_), writer));
  auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  std::vector<std::string> keys;
  while (true) {
    auto more = (*reader)->Next(row);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    keys.push_back(row[0].ToString());
    EXPECT_EQ(row[1].ToString(), "pro");
  }
  EXPECT_EQ(keys, std::vector<std::string>{"a"});
  ASSERT_TRUE(Exec(fmt::format("UPDATE {} SET plan = 'team' WHERE id = 'a'", table_), writer));
  ASSERT_TRUE(Exec(fmt::format("DELETE FROM {} WHERE id = 'b'", table_), writer));
  auto scanner = (*snapshot)->ScanEntries("m");
  ASSERT_TRUE(scanner.ok()) << scanner.status();
  WarehouseCheckpointEntry entry;
  std::vector<std::string> entries;
  while (true) {
    auto more = (*scanner)->Next(entry);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    entries.push_back(entry.key);
  }
  EXPECT_EQ(entries, std::vector<std::string>{"a"});  // "b" is not gone in the snapshot
  // Writes to the checkpoint are not blocked either.
  WarehouseCheckpointWrite remove;
  remove.kind = WarehouseCheckpointWrite::Kind::kRemove;
  remove.key = "a";
  EXPECT_TRUE(cd->Apply("m", {remove}).ok());
  ASSERT_TRUE((*snapshot)->Close().ok());
  mysql_close(writer);
  EXPECT_THAT(Keys(RunPass(*cd, Filter({{"m", Fp(1)}}))), UnorderedElementsAre("a"));
}

TEST_F(MysqlChangeDetectionTest, RemovesAndUpsertsAreCommittedAndLastWriteWins) {
  Exec(fmt::format("INSERT INTO {} VALUES ('a','free',1), ('b','free',2)", table_));
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
  upsert.identity = std::string("\x00\x01", 2);
  upsert.row_hash = first.hashes["b"];
  upsert.version = Fp(1);
  WarehouseCheckpointWrite upsert_again = upsert;
  upsert_again.fingerprint = Fp(100);
  ASSERT_TRUE(cd->Apply("m", {remove, upsert, upsert_again}).ok());

  auto rows = Rows(fmt::format(
      "SELECT record_key, LOWER(HEX(fingerprint)), HEX(identity), LOWER(HEX(row_hash)) FROM "
      "{}.checkpoints WHERE mapping = 'm' ORDER BY 1",
      schema_));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][0], "b");
  EXPECT_EQ(rows[0][1], Fp(100).ToHex());
  EXPECT_EQ(rows[0][2], "0001");
  EXPECT_EQ(rows[0][3], first.hashes["b"]);
  // "a" is a candidate again (no entry); "b" is not.
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_EQ(Keys(second), std::set<std::string>{"a"});
}

TEST_F(MysqlChangeDetectionTest, ManyKeysGoThroughBatchedStatements) {
  // Enough keys that the writes and the key loads take several statements.
  Exec(fmt::format("INSERT INTO {} SELECT CONCAT('k', seq), 'free', seq FROM seq_1_to_20000",
                   table_));
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  entries_as_delivered_ = false;  // the entries below are written with other identities
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  ASSERT_EQ(first.rows.size(), 20000u);
  std::vector<WarehouseCheckpointWrite> writes;
  for (const auto& [key, hash] : first.hashes) {
    WarehouseCheckpointWrite w;
    w.key = key;
    w.fingerprint = Fp(1);
    w.identity = std::string(40, 'i') + key;  // > 1 MiB of upserts in all
    w.row_hash = hash;
    w.version = Fp(1);
    writes.push_back(w);
  }
  ASSERT_TRUE(cd->Apply("m", writes).ok());
  EXPECT_EQ(Rows(fmt::format("SELECT COUNT(*) FROM {}.checkpoints", schema_))[0][0], "20000");

  // Every key a candidate again for a new mapping: all 20000 entries of m
  // come back, in byte order.
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}, {"m2", Fp(1)}}));
  EXPECT_EQ(second.rows.size(), 20000u);
  ASSERT_EQ(second.entries["m"].size(), 20000u);
  EXPECT_TRUE(std::is_sorted(second.entries["m"].begin(), second.entries["m"].end()));
  EXPECT_EQ(second.counts["m"], 20000);

  // Delete them all in one Apply.
  for (auto& w : writes) w.kind = WarehouseCheckpointWrite::Kind::kRemove;
  ASSERT_TRUE(cd->Apply("m", writes).ok());
  EXPECT_EQ(Rows(fmt::format("SELECT COUNT(*) FROM {}.checkpoints", schema_))[0][0], "0");
}

TEST_F(MysqlChangeDetectionTest, IntegerKeysWorkAndKeyTypesWhoseTextCouldDifferAreRefused) {
  Exec(fmt::format("INSERT INTO {} VALUES ('a','free',-1), ('b','free',20)", table_));
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  sql_ = fmt::format("SELECT age AS id, plan, age FROM {}", table_);
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_EQ(Keys(first), (std::set<std::string>{"-1", "20"}));
  Deliver(*cd, "m", Fp(1), first);
  EXPECT_TRUE(RunPass(*cd, Filter({{"m", Fp(1)}})).rows.empty());

  for (const char* key :
       {"CAST(age AS DECIMAL(10,2))", "CAST(id AS BINARY)", "CAST(age AS DOUBLE)", "CURDATE()"}) {
    SCOPED_TRACE(key);
    auto snapshot = cd->Begin(fmt::format("SELECT {} AS id, plan FROM {}", key, table_), "id");
    ASSERT_TRUE(snapshot.ok()) << snapshot.status();
    auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
    ASSERT_FALSE(reader.ok());
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(reader.status().message()), HasSubstr("CAST(id AS CHAR) AS id"));
  }
}

TEST_F(MysqlChangeDetectionTest, TheModelCannotWrite) {
  const std::string fn = mysql_testing::UniqueName("cd_write");
  Exec(fmt::format(
      "CREATE FUNCTION {0}() RETURNS INT MODIFIES SQL DATA BEGIN DELETE FROM {1}; RETURN 1; END",
      fn, table_));
  Exec(fmt::format("INSERT INTO {} VALUES ('a','free',1)", table_));
  sql_ = fmt::format("SELECT id, plan, {}() AS age FROM {}", fn, table_);
  auto source = MakeSource();
  auto snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  if (snapshot.ok()) {
    auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
    bool failed = !reader.ok();
    if (!failed) {
      Row row;
      while (true) {
        auto more = (*reader)->Next(row);
        if (!more.ok()) failed = true;
        if (!more.ok() || !*more) break;
      }
    }
    EXPECT_TRUE(failed);
  }
  EXPECT_EQ(Rows(fmt::format("SELECT COUNT(*) FROM {}", table_))[0][0], "1");
  Exec(fmt::format("DROP FUNCTION {}", fn));
}

TEST_F(MysqlChangeDetectionTest, AnInterruptedApplyLeavesThePreviousState) {
  Exec(fmt::format("INSERT INTO {} VALUES ('a','free',1), ('b','free',2), ('c','free',3)", table_));
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  Deliver(*cd, "m", Fp(1), first);
  auto stored = [&] {
    return Rows(fmt::format(
        "SELECT record_key, HEX(fingerprint) FROM {}.checkpoints WHERE mapping = 'm' ORDER BY 1",
        schema_));
  };
  const auto before = stored();
  ASSERT_EQ(before.size(), 3u);
  // The server refuses the upserts after it has run the deletes.
  Exec(fmt::format(
      "CREATE TRIGGER {0}.refuse BEFORE INSERT ON {0}.checkpoints FOR EACH ROW "
      "IF NEW.record_key = 'boom' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'; "
      "END IF",
      schema_));
  WarehouseCheckpointWrite remove;
  remove.kind = WarehouseCheckpointWrite::Kind::kRemove;
  remove.key = "a";
  WarehouseCheckpointWrite update;
  update.key = "b";
  update.fingerprint = Fp(50);
  update.version = Fp(1);
  WarehouseCheckpointWrite boom = update;
  boom.key = "boom";
  absl::Status applied = cd->Apply("m", {remove, update, boom});
  ASSERT_FALSE(applied.ok());
  EXPECT_THAT(std::string(applied.message()), HasSubstr("refused"));
  EXPECT_EQ(stored(), before);
  // The next Apply works (on a fresh connection).
  Exec(fmt::format("DROP TRIGGER {}.refuse", schema_));
  ASSERT_TRUE(cd->Apply("m", {remove, update, boom}).ok());
  EXPECT_EQ(stored().size(), 3u);  // b, boom, c
}

TEST_F(MysqlChangeDetectionTest, MissingPrivilegesSayWhatToGrant) {
  MYSQL* admin = Admin();
  ASSERT_NE(admin, nullptr);
  const std::string user = mysql_testing::UniqueName("cd_reader");
  const std::string password = "pw-" + user;
  ASSERT_TRUE(Exec(fmt::format("CREATE USER '{}'@'%' IDENTIFIED BY '{}'", user, password), admin));
  ASSERT_TRUE(Exec(fmt::format("GRANT SELECT ON backflow_test.* TO '{}'@'%'", user), admin));
  std::string url = server().url;
  url.replace(url.find("backflow@"), 9, user + "@");
  auto source = MakeSource(url, password);
  const std::string grant = fmt::format(
      "GRANT CREATE, SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES ON `{}`.* TO "
      "'{}'@'%'",
      schema_, user);

  // The database does not exist and the user may not create it.
  auto snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  std::string message(snapshot.status().message());
  EXPECT_THAT(message, HasSubstr(grant));
  EXPECT_THAT(message, HasSubstr("state_schema"));
  EXPECT_THAT(message, Not(HasSubstr(password)));

  // The table exists (made by an administrator) but the user may not use it.
  ASSERT_TRUE(Exec(fmt::format("CREATE DATABASE {}", schema_), admin));
  ASSERT_TRUE(Exec(fmt::format("CREATE TABLE {}.checkpoints (a int)", schema_), admin));
  snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr(grant));

  // Everything but temporary tables.
  ASSERT_TRUE(Exec(fmt::format("DROP TABLE {}.checkpoints", schema_), admin));
  ASSERT_TRUE(Exec(fmt::format("GRANT CREATE, SELECT, INSERT, UPDATE, DELETE ON {}.* TO '{}'@'%'",
                               schema_, user),
                   admin));
  snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_FALSE(snapshot.ok());
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("temporary table"));
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr(grant));

  // With the grant the message names, a pass works.
  ASSERT_TRUE(
      Exec(fmt::format("GRANT CREATE TEMPORARY TABLES ON {}.* TO '{}'@'%'", schema_, user), admin));
  Exec(fmt::format("INSERT INTO {} VALUES ('a','free',1)", table_));
  snapshot = source->warehouse_change_detection()->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  snapshot->reset();
  Pass pass = RunPass(*source->warehouse_change_detection(), Filter({{"m", Fp(1)}}));
  EXPECT_EQ(Keys(pass), std::set<std::string>{"a"});
  Deliver(*source->warehouse_change_detection(), "m", Fp(1), pass);
  EXPECT_TRUE(RunPass(*source->warehouse_change_detection(), Filter({{"m", Fp(1)}})).rows.empty());
  (void)Exec(fmt::format("DROP USER '{}'@'%'", user), admin);
  mysql_close(admin);
}

}  // namespace
}  // namespace backflow
