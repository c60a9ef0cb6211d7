#include "backflow/sources/mysql/mysql_source.h"

#include <arpa/inet.h>
#include <mysql.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <thread>

#include "backflow/common/fmt_absl.h"
#include "backflow/testing/process.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

struct TestServer {
  std::string url;
  std::string password;
  int port = 0;
};

std::string ReadLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (in) std::getline(in, line);
  return line;
}

bool RunningInCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && ci[0] != '\0';
}

// Loads the server the `mariadb` ctest fixture started
// (scripts/mariadb-test-server.sh); skips without one, fails under CI.
class MysqlSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* dir = std::getenv("BACKFLOW_TEST_MARIADB_DIR");
    std::string problem;
    if (dir == nullptr || dir[0] == '\0') {
      problem =
          "BACKFLOW_TEST_MARIADB_DIR is not set; run through ctest (fixture `mariadb`) or start "
          "scripts/mariadb-test-server.sh start DIR and export BACKFLOW_TEST_MARIADB_DIR=DIR";
    } else {
      server_.url = ReadLine(std::string(dir) + "/url");
      server_.password = ReadLine(std::string(dir) + "/password");
      server_.port = std::atoi(ReadLine(std::string(dir) + "/port").c_str());
      if (server_.url.empty() || server_.password.empty()) {
        problem = fmt::format("no MariaDB test server in {}", dir);
      }
    }
    if (!problem.empty()) {
      if (RunningInCi()) FAIL() << "CI is set but no MariaDB test server is available: " << problem;
      GTEST_SKIP() << problem;
    }
  }

  std::unique_ptr<Source> MakeSource() const {
    return NewMysqlSource(server_.url, server_.password);
  }

  // A direct client connection (as `backflow`) for setup and KILL QUERY.
  MYSQL* Admin() {
    MYSQL* m = mysql_init(nullptr);
    unsigned protocol = MYSQL_PROTOCOL_TCP;
    mysql_optionsv(m, MYSQL_OPT_PROTOCOL, &protocol);
    EXPECT_NE(mysql_real_connect(m, "127.0.0.1", "backflow", server_.password.c_str(),
                                 "backflow_test", server_.port, nullptr, 0),
              nullptr)
        << mysql_error(m);
    return m;
  }

  void Exec(const std::string& sql) {
    MYSQL* m = Admin();
    EXPECT_EQ(mysql_query(m, sql.c_str()), 0) << mysql_error(m) << "\nSQL: " << sql;
    mysql_close(m);
  }

  std::vector<Row> ReadAll(const std::string& sql, Schema* schema = nullptr) {
    std::vector<Row> rows;
    auto reader = MakeSource()->Query(sql);
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return rows;
    if (schema != nullptr) *schema = (*reader)->schema();
    Row row;
    while (true) {
      absl::StatusOr<bool> more = (*reader)->Next(row);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      rows.push_back(row);
    }
    return rows;
  }

  TestServer server_;
};

TEST(MysqlUrlTest, ParsesAndPercentDecodes) {
  auto url = ParseMysqlUrl("mysql://us%40er:p%2Fw@db.example.com:3307/my%20db");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->user, "us@er");
  EXPECT_EQ(url->password, "p/w");
  EXPECT_EQ(url->host, "db.example.com");
  EXPECT_EQ(url->port, 3307);
  EXPECT_EQ(url->database, "my db");
  auto v6 = ParseMysqlUrl("mariadb://u@[::1]/d");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 3306);
  EXPECT_FALSE(ParseMysqlUrl("postgresql://u@h/d").ok());
  EXPECT_FALSE(ParseMysqlUrl("mysql://u@h:99999/d").ok());
  EXPECT_FALSE(ParseMysqlUrl("mysql://u@h/d?ssl=1").ok());
  EXPECT_FALSE(ParseMysqlUrl("mysql://h/d").ok());
  auto bad = ParseMysqlUrl("mysql://u:sec%zzret@h/d");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), Not(HasSubstr("sec")));
}

TEST(MysqlSourceDefinitionTest, DeclaresUrlAndSecretPassword) {
  SourceDefinition def = MysqlSourceDefinition();
  EXPECT_EQ(def.type, "mysql");
  const SettingSpec* url = FindSetting(def.settings, "url");
  ASSERT_NE(url, nullptr);
  EXPECT_TRUE(url->required);
  const SettingSpec* password = FindSetting(def.settings, "password");
  ASSERT_NE(password, nullptr);
  EXPECT_TRUE(password->secret);
  EXPECT_TRUE(def.create({{"url", "mysql://x@127.0.0.1/db"}}, ConnectorEnv{}).ok());
  EXPECT_FALSE(def.create({{"url", "http://x@127.0.0.1/db"}}, ConnectorEnv{}).ok());
}

TEST_F(MysqlSourceTest, CheckConnectionWorks) {
  absl::Status status = MakeSource()->CheckConnection();
  EXPECT_TRUE(status.ok()) << status;
}

TEST_F(MysqlSourceTest, EveryTypeRoundTrips) {
  Exec("DROP TABLE IF EXISTS types_rt");
  Exec(R"sql(CREATE TABLE types_rt (
      id INT PRIMARY KEY, b BOOL, ti TINYINT, si SMALLINT, mi MEDIUMINT, i INT,
      bi BIGINT, ubi BIGINT UNSIGNED, ui INT UNSIGNED, dec38 DECIMAL(38,10), f FLOAT,
      d DOUBLE, dt DATE, dtm DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME, y YEAR,
      j JSON, bl BLOB, vb VARBINARY(16), vc VARCHAR(20), tx TEXT, en ENUM('a','b'),
      bit1 BIT(1), bit8 BIT(8))
      CHARACTER SET utf8mb4)sql");
  Exec(R"sql(SET time_zone = '+00:00')sql");
  Exec(R"sql(INSERT INTO types_rt VALUES
      (1, TRUE, -128, -32768, -8388608, -2147483648, -9223372036854775808,
       18446744073709551615, 4294967295, -1234567890123456789012345678.0123456789, 1.5,
       0.1, '2024-01-02', '2024-01-02 03:04:05.123456', NULL, '-838:59:59', 2024,
       '{"a": [1, 2.50, "x y"], "b": null}', X'00FF00FF', X'FF00', 'héllo ☃', 'text',
       'b', b'1', b'10000001'),
      (2, FALSE, 127, 32767, 8388607, 2147483647, 9223372036854775807, 0, 0,
       0.0000000001, -2.25, -1e300, '0000-00-00', '0000-00-00 00:00:00', NULL,
       '12:34:56.5', 1901, '[]', X'', X'', '', '', 'a', b'0', b'0'),
      (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL))sql");
  // A TIMESTAMP written in another zone comes back in UTC.
  Exec("SET time_zone = '+05:00'");
  {
    MYSQL* m = Admin();
    ASSERT_EQ(mysql_query(m, "SET time_zone = '+05:00'"), 0);
    ASSERT_EQ(mysql_query(m, "UPDATE types_rt SET ts = '2024-01-02 08:04:05.120' WHERE id = 1"), 0)
        << mysql_error(m);
    mysql_close(m);
  }
  Schema schema;
  std::vector<Row> rows = ReadAll("SELECT * FROM types_rt ORDER BY id;", &schema);
  ASSERT_EQ(rows.size(), 3u);
  auto col = [&](const char* name) {
    int c = FindColumn(schema, name);
    EXPECT_GE(c, 0) << name;
    return c;
  };
  auto type_of = [&](const char* name) { return schema[col(name)].type; };
  EXPECT_EQ(type_of("b"), ValueType::kBool);
  EXPECT_EQ(type_of("ti"), ValueType::kInt64);
  EXPECT_EQ(type_of("bi"), ValueType::kInt64);
  EXPECT_EQ(type_of("ubi"), ValueType::kDecimal);
  EXPECT_EQ(type_of("ui"), ValueType::kInt64);
  EXPECT_EQ(type_of("dec38"), ValueType::kDecimal);
  EXPECT_EQ(type_of("f"), ValueType::kDouble);
  EXPECT_EQ(type_of("dt"), ValueType::kDate);
  EXPECT_EQ(type_of("dtm"), ValueType::kTimestamp);
  EXPECT_EQ(type_of("ts"), ValueType::kTimestamp);
  EXPECT_EQ(type_of("tm"), ValueType::kString);
  EXPECT_EQ(type_of("j"), ValueType::kJson);
  EXPECT_EQ(type_of("bl"), ValueType::kBytes);
  EXPECT_EQ(type_of("vb"), ValueType::kBytes);
  EXPECT_EQ(type_of("vc"), ValueType::kString);
  EXPECT_EQ(type_of("tx"), ValueType::kString);
  EXPECT_EQ(type_of("bit1"), ValueType::kBool);

  const Row& r1 = rows[0];
  EXPECT_EQ(r1[col("b")], Value::Bool(true));
  EXPECT_EQ(r1[col("ti")], Value::Int64(-128));
  EXPECT_EQ(r1[col("si")], Value::Int64(-32768));
  EXPECT_EQ(r1[col("mi")], Value::Int64(-8388608));
  EXPECT_EQ(r1[col("i")], Value::Int64(-2147483648LL));
  EXPECT_EQ(r1[col("bi")], Value::Int64(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(r1[col("ubi")], Value::Text(ValueType::kDecimal, "18446744073709551615"));
  EXPECT_EQ(r1[col("ui")], Value::Int64(4294967295LL));
  EXPECT_EQ(r1[col("dec38")],
            Value::Text(ValueType::kDecimal, "-1234567890123456789012345678.0123456789"));
  EXPECT_EQ(r1[col("f")], Value::Double(1.5));
  EXPECT_EQ(r1[col("d")], Value::Double(0.1));
  EXPECT_EQ(r1[col("dt")], Value::Text(ValueType::kDate, "2024-01-02"));
  EXPECT_EQ(r1[col("dtm")], Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.123456"));
  EXPECT_EQ(r1[col("ts")], Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.120Z"));
  EXPECT_EQ(r1[col("tm")], Value::String("-838:59:59"));
  EXPECT_EQ(r1[col("y")], Value::Int64(2024));
  EXPECT_EQ(r1[col("j")], Value::Text(ValueType::kJson, R"({"a":[1,2.50,"x y"],"b":null})"));
  EXPECT_EQ(r1[col("bl")], Value::Text(ValueType::kBytes, std::string("\x00\xff\x00\xff", 4)));
  EXPECT_EQ(r1[col("vb")], Value::Text(ValueType::kBytes, std::string("\xff\x00", 2)));
  EXPECT_EQ(r1[col("vc")], Value::String("héllo ☃"));
  EXPECT_EQ(r1[col("tx")], Value::String("text"));
  EXPECT_EQ(r1[col("en")], Value::String("b"));
  EXPECT_EQ(r1[col("bit1")], Value::Bool(true));
  EXPECT_EQ(r1[col("bit8")], Value::Int64(129));

  const Row& r2 = rows[1];
  EXPECT_EQ(r2[col("b")], Value::Bool(false));
  EXPECT_EQ(r2[col("ti")], Value::Int64(127));
  EXPECT_EQ(r2[col("bi")], Value::Int64(std::numeric_limits<int64_t>::max()));
  EXPECT_EQ(r2[col("ubi")], Value::Text(ValueType::kDecimal, "0"));
  EXPECT_EQ(r2[col("dec38")], Value::Text(ValueType::kDecimal, "0.0000000001"));
  EXPECT_EQ(r2[col("d")], Value::Double(-1e300));
  EXPECT_TRUE(r2[col("dt")].is_null()) << "zero date";
  EXPECT_TRUE(r2[col("dtm")].is_null()) << "zero datetime";
  EXPECT_EQ(r2[col("tm")], Value::String("12:34:56"));
  EXPECT_EQ(r2[col("j")], Value::Text(ValueType::kJson, "[]"));
  EXPECT_EQ(r2[col("bl")], Value::Text(ValueType::kBytes, ""));
  EXPECT_EQ(r2[col("vc")], Value::String(""));
  EXPECT_EQ(r2[col("bit1")], Value::Bool(false));

  for (size_t c = 1; c < rows[2].size(); ++c) {
    EXPECT_TRUE(rows[2][c].is_null()) << schema[c].name;
  }
  Exec("DROP TABLE types_rt");
}

TEST_F(MysqlSourceTest, ExpressionsHaveTypesToo) {
  Schema schema;
  std::vector<Row> rows = ReadAll(
      "SELECT NULL AS n, CAST('2024-05-01 12:00:00' AS DATETIME) AS dt, 1.50 AS dec_lit, "
      "18446744073709551615 AS big, JSON_OBJECT('k', 1) AS jo",
      &schema);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_TRUE(rows[0][0].is_null());
  EXPECT_EQ(rows[0][1], Value::Text(ValueType::kTimestamp, "2024-05-01T12:00:00"));
  EXPECT_EQ(rows[0][2], Value::Text(ValueType::kDecimal, "1.50"));
  EXPECT_EQ(rows[0][3].text(), "18446744073709551615");
  EXPECT_EQ(rows[0][4].text(), R"({"k":1})");
}

TEST_F(MysqlSourceTest, SqlErrorsAreInvalidArgumentBeforeAnyRow) {
  for (const char* sql :
       {"SELEC 1", "SELECT no_such_column FROM (SELECT 1 AS a) t", "SELECT * FROM no_such_table"}) {
    auto reader = MakeSource()->Query(sql);
    ASSERT_FALSE(reader.ok()) << sql;
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument) << reader.status();
  }
  auto reader = MakeSource()->Query("SELECT * FROM no_such_table");
  EXPECT_THAT(reader.status().message(), HasSubstr("no_such_table"));
  EXPECT_THAT(reader.status().message(), HasSubstr("1146"));
}

TEST_F(MysqlSourceTest, SessionIsReadOnly) {
  Exec("CREATE TABLE IF NOT EXISTS ro_check (a INT)");
  auto reader = MakeSource()->Query("INSERT INTO ro_check VALUES (1)");
  EXPECT_FALSE(reader.ok());
  Exec("DROP TABLE ro_check");
}

TEST_F(MysqlSourceTest, RuntimeErrorMidStreamIsAnErrorNotACleanEnd) {
  // The scalar subquery returns two rows only once seq reaches 5000.
  auto reader = MakeSource()->Query(
      "SELECT seq, (SELECT 1 FROM seq_1_to_2 WHERE seq >= 5000 OR s.seq < 5000 LIMIT "
      "1) AS ok, IF(seq < 5000, seq, (SELECT seq FROM seq_1_to_2 t WHERE s.seq >= 5000)) AS v "
      "FROM seq_1_to_10000 s");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int rows = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  ASSERT_FALSE(more.ok()) << "clean end after " << rows << " rows";
  EXPECT_GT(rows, 0);
  EXPECT_LT(rows, 10000);
  EXPECT_THAT(more.status().message(), HasSubstr("1242"));
  // Sticky.
  EXPECT_FALSE((*reader)->Next(row).ok());
}

TEST_F(MysqlSourceTest, KilledQueryMidStreamIsAnError) {
  auto reader = MakeSource()->Query("SELECT seq, 'kill_me_marker' AS m FROM seq_1_to_100000000");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(*(*reader)->Next(row));
  MYSQL* admin = Admin();
  ASSERT_EQ(mysql_query(admin,
                        "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE "
                        "'%kill_me_marker%' AND INFO NOT LIKE '%PROCESSLIST%'"),
            0)
      << mysql_error(admin);
  MYSQL_RES* res = mysql_store_result(admin);
  ASSERT_NE(res, nullptr);
  MYSQL_ROW id = mysql_fetch_row(res);
  ASSERT_NE(id, nullptr);
  std::string kill = fmt::format("KILL QUERY {}", id[0]);
  mysql_free_result(res);
  ASSERT_EQ(mysql_query(admin, kill.c_str()), 0) << mysql_error(admin);
  mysql_close(admin);
  absl::StatusOr<bool> more;
  long rows = 0;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  ASSERT_FALSE(more.ok()) << "clean end after " << rows << " more rows";
  EXPECT_EQ(more.status().code(), absl::StatusCode::kUnavailable) << more.status();
}

TEST_F(MysqlSourceTest, DroppingAReaderMidStreamDoesNotHang) {
  auto start = std::chrono::steady_clock::now();
  {
    auto reader = MakeSource()->Query("SELECT seq FROM seq_1_to_100000000");
    ASSERT_TRUE(reader.ok()) << reader.status();
    Row row;
    for (int i = 0; i < 100; ++i) ASSERT_TRUE(*(*reader)->Next(row));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST_F(MysqlSourceTest, WrongPasswordIsUnauthenticatedWithoutThePassword) {
  const std::string wrong = "Wr0ngPassw0rdXYZ";
  auto source = NewMysqlSource(server_.url, wrong);
  absl::Status status = source->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << status;
  EXPECT_THAT(status.message(), Not(HasSubstr(wrong)));
  EXPECT_THAT(status.message(), HasSubstr("password"));
  auto reader = source->Query("SELECT 1");
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(MysqlSourceTest, UnknownDatabaseIsFailedPrecondition) {
  // `backflow` may use every backflow_% database, so MariaDB reports 1049
  // (not 1044, access denied).
  std::string url = fmt::format("mysql://backflow@127.0.0.1:{}/backflow_no_such_db", server_.port);
  absl::Status status = NewMysqlSource(url, server_.password)->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("backflow_no_such_db"));
}

TEST_F(MysqlSourceTest, NothingListeningIsUnavailableNamingHostAndPort) {
  int port = testing::UnusedPort();
  auto source =
      NewMysqlSource(fmt::format("mysql://backflow@127.0.0.1:{}/backflow_test", port), "secret-pw");
  absl::Status status = source->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr(fmt::format("127.0.0.1:{}", port)));
  EXPECT_THAT(status.message(), Not(HasSubstr("secret-pw")));
}

TEST_F(MysqlSourceTest, LimitQueryPreviewsTenRows) {
  Schema schema;
  std::vector<Row> rows = ReadAll(
      LimitQuery("SELECT seq AS n, CAST(seq AS SIGNED) AS i FROM seq_1_to_1000;\n", 10), &schema);
  ASSERT_EQ(rows.size(), 10u);
  // The sequence engine's seq is BIGINT UNSIGNED: an exact decimal.
  EXPECT_EQ(schema[0].type, ValueType::kDecimal);
  EXPECT_EQ(rows[0][0], Value::Text(ValueType::kDecimal, "1"));
  EXPECT_EQ(rows[9][1], Value::Int64(10));
}

TEST_F(MysqlSourceTest, StreamsMillionsOfRowsInBoundedMemory) {
  const std::string sql =
      "SELECT CAST(seq AS SIGNED) AS id, MD5(seq) AS hash, seq / 7 AS ratio, "
      "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND AS at, REPEAT('x', 40) AS pad "
      "FROM seq_1_to_{}";
  auto stream = [&](long n) -> long {
    auto reader = MakeSource()->Query(fmt::format(fmt::runtime(sql), n));
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return 0;
    Row row;
    long rows = 0;
    long id_sum = 0;
    absl::StatusOr<bool> more;
    while ((more = (*reader)->Next(row)).ok() && *more) {
      ++rows;
      id_sum += row[0].int_value();
    }
    EXPECT_TRUE(more.ok()) << more.status();
    EXPECT_EQ(id_sum, n * (n + 1) / 2);
    return rows;
  };
  ASSERT_EQ(stream(50000), 50000);
  long before_kb = testing::PeakRssKb();
  constexpr long kRows = 1'000'000;
  ASSERT_EQ(stream(kRows), kRows);
  long growth_mb = (testing::PeakRssKb() - before_kb) / 1024;
  RecordProperty("peak_rss_growth_mb", static_cast<int>(growth_mb));
  std::cout << "peak RSS growth after streaming " << kRows << " rows: " << growth_mb << " MB\n";
  // Buffering the result would take well over 100 MB; streaming needs ~0.
  EXPECT_LT(growth_mb, 32);

  // Control: the same result fully buffered (mysql_store_result) does exceed
  // the bound, so the measurement above is meaningful (also under ASan).
  MYSQL* m = Admin();
  long control_before_kb = testing::PeakRssKb();
  std::string query = fmt::format(fmt::runtime(sql), kRows);
  ASSERT_EQ(mysql_query(m, query.c_str()), 0) << mysql_error(m);
  MYSQL_RES* buffered = mysql_store_result(m);
  ASSERT_NE(buffered, nullptr) << mysql_error(m);
  EXPECT_EQ(mysql_num_rows(buffered), static_cast<uint64_t>(kRows));
  long control_mb = (testing::PeakRssKb() - control_before_kb) / 1024;
  mysql_free_result(buffered);
  mysql_close(m);
  std::cout << "peak RSS growth when buffering the same result: " << control_mb << " MB\n";
  EXPECT_GT(control_mb, 32);
}

}  // namespace
}  // namespace backflow
