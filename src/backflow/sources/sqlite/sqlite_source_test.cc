#include "backflow/sources/sqlite/sqlite_source.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "backflow/sources/source.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow {
namespace {

class SqliteSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = sqlite::Database::Open(path_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)
                    ->Exec(R"(
      CREATE TABLE t (id INTEGER, name TEXT, price NUMERIC, score REAL, active BOOLEAN,
                      seen TIMESTAMP, born DATE, doc JSON, raw BLOB);
      INSERT INTO t VALUES (1, 'Zoë', 12.5, 0.25, 1, '2024-01-02T03:04:05Z', '1990-05-06',
                            '{"a":[1,2]}', x'00ff');
      INSERT INTO t VALUES (9223372036854775807, NULL, 3, NULL, 0, NULL, NULL, NULL, NULL);
    )")
                    .ok());
    auto source = SqliteSourceDefinition().create({{"path", path_}}, ConnectorEnv{});
    ASSERT_TRUE(source.ok());
    source_ = std::move(*source);
  }
  testing::ScratchDir scratch_{"sqlite-source"};
  const std::string path_ = (scratch_.path() / "source.db").string();
  std::unique_ptr<Source> source_;
};

TEST_F(SqliteSourceTest, MapsDeclaredTypesAndValues) {
  auto reader = source_->Query("SELECT * FROM t ORDER BY id");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const Schema& s = (*reader)->schema();
  ASSERT_EQ(s.size(), 9u);
  EXPECT_EQ(s[0].type, ValueType::kInt64);
  EXPECT_EQ(s[2].type, ValueType::kDecimal);
  EXPECT_EQ(s[3].type, ValueType::kDouble);
  EXPECT_EQ(s[4].type, ValueType::kBool);
  EXPECT_EQ(s[5].type, ValueType::kTimestamp);
  EXPECT_EQ(s[6].type, ValueType::kDate);
  EXPECT_EQ(s[7].type, ValueType::kJson);
  EXPECT_EQ(s[8].type, ValueType::kBytes);
  Row row;
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[1], Value::String("Zoë"));
  EXPECT_EQ(row[4], Value::Bool(true));
  EXPECT_EQ(row[5], Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05Z"));
  EXPECT_EQ(row[7], Value::Text(ValueType::kJson, R"({"a":[1,2]})"));
  EXPECT_EQ(row[8], Value::Text(ValueType::kBytes, std::string("\x00\xff", 2)));
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[0], Value::Int64(9223372036854775807));
  EXPECT_TRUE(row[1].is_null());
  EXPECT_EQ(row[2], Value::Text(ValueType::kDecimal, "3"));
  EXPECT_FALSE(*(*reader)->Next(row));
  EXPECT_FALSE(*(*reader)->Next(row));
}

TEST_F(SqliteSourceTest, ExpressionColumnsTakeTheirValueType) {
  auto reader = source_->Query("SELECT id * 2 AS twice, 'x' || name AS label FROM t");
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ((*reader)->schema()[0].type, ValueType::kInt64);
  EXPECT_EQ((*reader)->schema()[1].type, ValueType::kString);
}

TEST_F(SqliteSourceTest, ErrorsAreActionable) {
  auto bad = source_->Query("SELECT nope FROM t");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("no such column: nope"), std::string::npos);
  auto missing = SqliteSourceDefinition().create({{"path", "/nonexistent/x.db"}}, ConnectorEnv{});
  EXPECT_EQ((*missing)->CheckConnection().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(source_->CheckConnection().ok());
}

TEST_F(SqliteSourceTest, LimitQueryWrapsModelSql) {
  auto reader = source_->Query(LimitQuery("SELECT id FROM t -- trailing comment\n;", 1));
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  EXPECT_TRUE(*(*reader)->Next(row));
  EXPECT_FALSE(*(*reader)->Next(row));
}

}  // namespace
}  // namespace backflow
