#include "backflow/sources/postgres/postgres_source.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <iostream>
#include <limits>

#include "backflow/pg/testing/test_server.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class PostgresSourceTest : public pg::testing::PostgresTest {
 protected:
  std::unique_ptr<Source> MakeSource() const {
    return NewPostgresSource(server().url, server().password);
  }

  // Runs `sql` and returns every row; fails the test on error.
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
};

// A TCP port on 127.0.0.1 that nothing listens on.
int UnusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

long PeakRssKb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

TEST(PostgresSourceDefinitionTest, DeclaresUrlAndSecretPassword) {
  SourceDefinition def = PostgresSourceDefinition();
  EXPECT_EQ(def.type, "postgres");
  const SettingSpec* url = FindSetting(def.settings, "url");
  ASSERT_NE(url, nullptr);
  EXPECT_TRUE(url->required);
  const SettingSpec* password = FindSetting(def.settings, "password");
  ASSERT_NE(password, nullptr);
  EXPECT_TRUE(password->secret);
  EXPECT_FALSE(password->required);
  nlohmann::json settings = nlohmann::json::object();
  EXPECT_EQ(CheckSettings(def.settings, settings).size(), 1u);
  EXPECT_TRUE(def.create({{"url", "postgresql://x@127.0.0.1/db"}}, ConnectorEnv{}).ok());
}

TEST_F(PostgresSourceTest, CheckConnectionRunsSelectOne) {
  EXPECT_TRUE(MakeSource()->CheckConnection().ok());
}

TEST_F(PostgresSourceTest, EveryTypeRoundTrips) {
  Schema schema;
  std::vector<Row> rows = ReadAll(R"sql(
    SELECT true AS b, NULL::boolean AS b_null,
           (-9223372036854775807 - 1)::int8 AS i8_min, 9223372036854775807::int8 AS i8_max,
           (-32768)::int2 AS i2, 2147483647::int4 AS i4, NULL::int8 AS i_null,
           1.5::float4 AS f4, 0.1::float8 AS f8, 'NaN'::float8 AS f_nan,
           '1234567890123456789012345678.0123456789'::numeric(38,10) AS num,
           'NaN'::numeric AS num_nan, NULL::numeric AS num_null,
           'héllo'::text AS t, 'v'::varchar(10) AS vc, 'ab'::char(3) AS bp, 'nm'::name AS nm,
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id,
           '2024-01-02'::date AS d, NULL::date AS d_null,
           '2024-01-02 05:04:05.123456+02'::timestamptz AS tstz,
           '2024-01-02 03:04:05+00'::timestamptz AS tstz_whole,
           '2024-01-02 03:04:05.5'::timestamp AS ts,
           'infinity'::timestamptz AS ts_inf,
           '{"b": [1, 2, "x y"], "a": {"n": null}}'::jsonb AS jb,
           '{ "k" : "v w" }'::json AS js,
           '\x00ff10'::bytea AS bin, ARRAY[1,2,3] AS arr,
           '1 day 2 hours'::interval AS iv, NULL::text AS t_null)sql",
                                  &schema);
  ASSERT_EQ(rows.size(), 1u);
  const Row& r = rows[0];
  ASSERT_EQ(r.size(), schema.size());
  auto col = [&](const char* name) -> const Value& {
    int i = FindColumn(schema, name);
    EXPECT_GE(i, 0) << name;
    return r.at(i < 0 ? 0 : i);
  };
  auto type = [&](const char* name) { return schema.at(FindColumn(schema, name)).type; };

  EXPECT_EQ(col("b"), Value::Bool(true));
  EXPECT_EQ(type("b"), ValueType::kBool);
  EXPECT_TRUE(col("b_null").is_null());
  EXPECT_EQ(col("i8_min"), Value::Int64(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(col("i8_max"), Value::Int64(std::numeric_limits<int64_t>::max()));
  EXPECT_EQ(col("i2"), Value::Int64(-32768));
  EXPECT_EQ(col("i4"), Value::Int64(2147483647));
  EXPECT_EQ(type("i4"), ValueType::kInt64);
  EXPECT_TRUE(col("i_null").is_null());
  EXPECT_EQ(type("i_null"), ValueType::kInt64);
  EXPECT_EQ(col("f4"), Value::Double(1.5));
  EXPECT_EQ(col("f8"), Value::Double(0.1));  // extra_float_digits=3: exact round trip
  EXPECT_EQ(col("f_nan").type(), ValueType::kDouble);
  EXPECT_TRUE(std::isnan(col("f_nan").double_value()));
  EXPECT_EQ(col("num"),
            Value::Text(ValueType::kDecimal, "1234567890123456789012345678.0123456789"));
  EXPECT_EQ(type("num"), ValueType::kDecimal);
  EXPECT_EQ(schema.at(FindColumn(schema, "num")).source_type, "numeric(38,10)");
  EXPECT_EQ(col("num_nan"), Value::String("NaN"));
  EXPECT_TRUE(col("num_null").is_null());
  EXPECT_EQ(col("t"), Value::String("héllo"));
  EXPECT_EQ(col("vc"), Value::String("v"));
  EXPECT_EQ(col("bp"), Value::String("ab "));
  EXPECT_EQ(col("nm"), Value::String("nm"));
  EXPECT_EQ(col("id"), Value::String("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
  EXPECT_EQ(col("d"), Value::Text(ValueType::kDate, "2024-01-02"));
  EXPECT_TRUE(col("d_null").is_null());
  EXPECT_EQ(type("d_null"), ValueType::kDate);
  EXPECT_EQ(col("tstz"), Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.123456Z"));
  EXPECT_EQ(col("tstz_whole"), Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05Z"));
  EXPECT_EQ(col("ts"), Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.5"));
  EXPECT_EQ(col("ts_inf"), Value::String("infinity"));
  EXPECT_EQ(col("jb"), Value::Text(ValueType::kJson, R"({"a":{"n":null},"b":[1,2,"x y"]})"));
  EXPECT_EQ(col("js"), Value::Text(ValueType::kJson, R"({"k":"v w"})"));
  EXPECT_EQ(col("bin"), Value::Text(ValueType::kBytes, std::string("\x00\xff\x10", 3)));
  EXPECT_EQ(col("arr"), Value::String("{1,2,3}"));
  EXPECT_EQ(col("iv"), Value::String("P1DT2H"));
  EXPECT_TRUE(col("t_null").is_null());
  EXPECT_EQ(type("t_null"), ValueType::kString);
}

TEST_F(PostgresSourceTest, SchemaIsKnownForAnEmptyResult) {
  auto reader = MakeSource()->Query("SELECT 1::int8 AS a, 'x'::text AS b WHERE false");
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ((*reader)->schema().size(), 2u);
  EXPECT_EQ((*reader)->schema()[0].name, "a");
  EXPECT_EQ((*reader)->schema()[0].type, ValueType::kInt64);
  Row row;
  absl::StatusOr<bool> more = (*reader)->Next(row);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_FALSE(*more);
  more = (*reader)->Next(row);
  ASSERT_TRUE(more.ok());
  EXPECT_FALSE(*more);
}

TEST_F(PostgresSourceTest, SessionIsReadOnly) {
  auto reader = MakeSource()->Query("CREATE TABLE backflow_should_not_exist (a int)");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reader.status().message(), HasSubstr("read-only"));
}

TEST_F(PostgresSourceTest, UndefinedColumnIsInvalidArgumentWithTheServerMessage) {
  auto reader = MakeSource()->Query("SELECT no_such_column FROM generate_series(1, 3) g");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reader.status().message(), HasSubstr("column \"no_such_column\" does not exist"));
  EXPECT_THAT(reader.status().message(), HasSubstr("42703"));
  EXPECT_THAT(reader.status().message(), HasSubstr("at character 8"));
}

TEST_F(PostgresSourceTest, ErrorAfterRowsIsAnErrorNotACleanEnd) {
  auto reader =
      MakeSource()->Query("SELECT g, 1 / (g - 5000) AS q FROM generate_series(1, 10000) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int rows = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  EXPECT_GT(rows, 0);  // rows were delivered before the error
  EXPECT_LT(rows, 5000);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(more.status().message(), HasSubstr("division by zero"));
  // The error is sticky.
  EXPECT_FALSE((*reader)->Next(row).ok());
}

TEST_F(PostgresSourceTest, TerminatedBackendIsUnavailableNotACleanEnd) {
  std::string app = pg::testing::UniqueName("src_kill");
  auto source = NewPostgresSource(server().UrlWith("application_name=" + app), server().password);
  auto reader = source->Query("SELECT g, md5(g::text) FROM generate_series(1, 5000000) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  for (int i = 0; i < 1000; ++i) {
    absl::StatusOr<bool> more = (*reader)->Next(row);
    ASSERT_TRUE(more.ok() && *more) << more.status();
  }
  auto admin = Connect();
  ASSERT_TRUE(admin.ok()) << admin.status();
  auto killed = (*admin)->Exec(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
      {app.c_str()});
  ASSERT_TRUE(killed.ok()) << killed.status();
  ASSERT_EQ(PQntuples(killed->get()), 1);
  absl::StatusOr<bool> more;
  long rows = 1000;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  ASSERT_FALSE(more.ok()) << "clean end after " << rows << " rows";
  EXPECT_EQ(more.status().code(), absl::StatusCode::kUnavailable) << more.status();
  EXPECT_LT(rows, 5000000);
}

TEST_F(PostgresSourceTest, WrongPasswordIsUnauthenticatedAndNeverEchoed) {
  const std::string secret = "Wr0ng-Secret-Pw";
  auto source = NewPostgresSource(server().url, secret);
  absl::Status status = source->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << status;
  EXPECT_THAT(status.message(), HasSubstr("password"));
  EXPECT_THAT(status.message(), HasSubstr("backflow"));  // the user
  EXPECT_THAT(status.message(), Not(HasSubstr(secret)));

  // A password embedded in the url is not echoed either.
  std::string url =
      fmt::format("postgresql://backflow:{}@127.0.0.1:{}/backflow_test", secret, server().port);
  auto reader = NewPostgresSource(url, "")->Query("SELECT 1");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(reader.status().message(), Not(HasSubstr(secret)));
  EXPECT_THAT(reader.status().message(), Not(HasSubstr(url)));
}

TEST_F(PostgresSourceTest, NothingListeningIsUnavailableWithHostAndPort) {
  int port = UnusedPort();
  auto source = NewPostgresSource(
      fmt::format("postgresql://backflow@127.0.0.1:{}/backflow_test", port), "pw");
  absl::Status status = source->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr(fmt::format("127.0.0.1:{}", port)));
  auto reader = source->Query("SELECT 1");
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(PostgresSourceTest, AbandoningAReaderMidStreamIsFine) {
  auto reader = MakeSource()->Query("SELECT g FROM generate_series(1, 10000000) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  ASSERT_TRUE((*reader)->Next(row).ok());
  reader->reset();  // cancels the query; must not hang
  EXPECT_TRUE(MakeSource()->CheckConnection().ok());
}

TEST_F(PostgresSourceTest, StreamsMillionsOfRowsInBoundedMemory) {
  const std::string sql =
      "SELECT g AS id, md5(g::text) AS hash, g::numeric / 7 AS ratio, "
      "timestamptz '2024-01-01' + g * interval '1 second' AS at, repeat('x', 40) AS pad "
      "FROM generate_series(1, {}) g";
  auto stream = [&](int n) -> long {
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
    EXPECT_EQ(id_sum, static_cast<long>(n) * (n + 1) / 2);
    return rows;
  };
  // Warm up allocator caches and libpq buffers, then measure the peak.
  ASSERT_EQ(stream(50000), 50000);
  long before_kb = PeakRssKb();
  constexpr int kRows = 2'000'000;
  ASSERT_EQ(stream(kRows), kRows);
  long growth_mb = (PeakRssKb() - before_kb) / 1024;
  RecordProperty("peak_rss_growth_mb", static_cast<int>(growth_mb));
  std::cout << "peak RSS growth while streaming " << kRows << " rows: " << growth_mb << " MB\n";
  // Buffering the result would take several hundred MB; streaming needs ~0.
  EXPECT_LT(growth_mb, 48) << "peak RSS grew by " << growth_mb << " MB while streaming " << kRows
                           << " rows";

  // Control: the same result fully buffered (plain PQexec) does exceed the
  // bound, so the measurement above is meaningful (also under ASan).
  auto conn = Connect();
  ASSERT_TRUE(conn.ok()) << conn.status();
  long control_before_kb = PeakRssKb();
  auto buffered = (*conn)->Exec(fmt::format(fmt::runtime(sql), kRows));
  ASSERT_TRUE(buffered.ok()) << buffered.status();
  ASSERT_EQ(PQntuples(buffered->get()), kRows);
  long control_mb = (PeakRssKb() - control_before_kb) / 1024;
  std::cout << "peak RSS growth when buffering the same result: " << control_mb << " MB\n";
  EXPECT_GT(control_mb, 48);
}

}  // namespace
}  // namespace backflow
