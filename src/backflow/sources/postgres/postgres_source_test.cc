#include "backflow/sources/postgres/postgres_source.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <iostream>
#include <limits>
#include <map>
#include <random>

#include "backflow/pg/testing/test_server.h"
#include "backflow/testing/process.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class PostgresSourceTest : public pg::testing::PostgresTest {
 protected:
  // A source reading with `extraction` (the default mode unless a test says
  // otherwise).
  std::unique_ptr<Source> MakeSource(
      PostgresExtraction extraction = PostgresExtraction::kCopy) const {
    return NewPostgresSource(server().url, server().password, extraction);
  }

  // Runs `sql` and returns every row; fails the test on error.
  std::vector<Row> ReadAll(const std::string& sql, Schema* schema = nullptr,
                           PostgresExtraction extraction = PostgresExtraction::kCopy) {
    std::vector<Row> rows;
    auto reader = MakeSource(extraction)->Query(sql);
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

// The tests that must hold for both extraction modes.
class PostgresReaderTest : public PostgresSourceTest,
                           public ::testing::WithParamInterface<PostgresExtraction> {
 protected:
  std::unique_ptr<Source> MakeSource() const { return PostgresSourceTest::MakeSource(GetParam()); }
  std::unique_ptr<Source> MakeSourceFor(const std::string& url) const {
    return NewPostgresSource(url, server().password, GetParam());
  }
  std::vector<Row> ReadAll(const std::string& sql, Schema* schema = nullptr) {
    return PostgresSourceTest::ReadAll(sql, schema, GetParam());
  }
};

std::string ModeName(const ::testing::TestParamInfo<PostgresExtraction>& info) {
  return info.param == PostgresExtraction::kCopy ? "Copy" : "Rows";
}

INSTANTIATE_TEST_SUITE_P(BothModes, PostgresReaderTest,
                         ::testing::Values(PostgresExtraction::kCopy, PostgresExtraction::kRows),
                         ModeName);

// Values equal in type and content; doubles compared bit for bit (NaN, -0).
bool SameValue(const Value& a, const Value& b) {
  if (a.type() != b.type()) return false;
  if (a.type() == ValueType::kDouble) {
    return std::bit_cast<uint64_t>(a.double_value()) == std::bit_cast<uint64_t>(b.double_value());
  }
  return a == b;
}

std::string Show(const Value& v) {
  return fmt::format(
      "{}:{:?}", ValueTypeName(v.type()),
      v.type() == ValueType::kDouble ? fmt::format("{}", v.double_value()) : v.ToString());
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

TEST(PostgresSourceDefinitionTest, ExtractionIsCopyOrRowsDefaultingToCopy) {
  SourceDefinition def = PostgresSourceDefinition();
  const SettingSpec* extraction = FindSetting(def.settings, "extraction");
  ASSERT_NE(extraction, nullptr);
  EXPECT_EQ(extraction->type, SettingType::kEnum);
  EXPECT_FALSE(extraction->required);
  EXPECT_EQ(extraction->default_value, "copy");
  EXPECT_EQ(extraction->allowed_values, (std::vector<std::string>{"copy", "rows"}));
  EXPECT_THAT(extraction->description, HasSubstr("rows"));
  const nlohmann::json url = "postgresql://x@127.0.0.1/db";
  nlohmann::json rows = {{"url", url}, {"extraction", "rows"}};
  EXPECT_TRUE(CheckSettings(def.settings, rows).empty());
  nlohmann::json cursor = {{"url", url}, {"extraction", "cursor"}};
  EXPECT_EQ(CheckSettings(def.settings, cursor).size(), 1u);
  EXPECT_TRUE(def.create({{"url", url}, {"extraction", "rows"}}, ConnectorEnv{}).ok());
  EXPECT_TRUE(def.create({{"url", url}, {"extraction", "copy"}}, ConnectorEnv{}).ok());
  EXPECT_FALSE(def.create({{"url", url}, {"extraction", "cursor"}}, ConnectorEnv{}).ok());
}

TEST_F(PostgresSourceTest, CheckConnectionRunsSelectOne) {
  EXPECT_TRUE(MakeSource()->CheckConnection().ok());
}

TEST_P(PostgresReaderTest, EveryTypeRoundTrips) {
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

TEST_P(PostgresReaderTest, SchemaIsKnownForAnEmptyResult) {
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
  // Single-row mode runs the statement; the read-only session refuses it.
  auto reader = MakeSource(PostgresExtraction::kRows)
                    ->Query("CREATE TABLE backflow_should_not_exist (a int)");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reader.status().message(), HasSubstr("read-only"));
}

TEST_P(PostgresReaderTest, UndefinedColumnIsInvalidArgumentWithTheServerMessage) {
  auto reader = MakeSource()->Query("SELECT no_such_column FROM generate_series(1, 3) g");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reader.status().message(), HasSubstr("column \"no_such_column\" does not exist"));
  EXPECT_THAT(reader.status().message(), HasSubstr("42703"));
  EXPECT_THAT(reader.status().message(), HasSubstr("at character 8"));
}

TEST_P(PostgresReaderTest, ErrorAfterRowsIsAnErrorNotACleanEnd) {
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

TEST_P(PostgresReaderTest, TerminatedBackendIsUnavailableNotACleanEnd) {
  std::string app = pg::testing::UniqueName("src_kill");
  auto source = MakeSourceFor(server().UrlWith("application_name=" + app));
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
  int port = testing::UnusedPort();
  auto source = NewPostgresSource(
      fmt::format("postgresql://backflow@127.0.0.1:{}/backflow_test", port), "pw");
  absl::Status status = source->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr(fmt::format("127.0.0.1:{}", port)));
  auto reader = source->Query("SELECT 1");
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnavailable);
}

TEST_P(PostgresReaderTest, AbandoningAReaderMidStreamIsFine) {
  std::string app = pg::testing::UniqueName("src_drop");
  auto reader = MakeSourceFor(server().UrlWith("application_name=" + app))
                    ->Query("SELECT g FROM generate_series(1, 10000000) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  ASSERT_TRUE((*reader)->Next(row).ok());
  reader->reset();  // cancels the query; must not hang
  EXPECT_TRUE(MakeSource()->CheckConnection().ok());
  // The server-side backend goes away (the connection was owned by the reader).
  EXPECT_EQ(Backends(app), 0) << "the abandoned query's backend is still there";
}

TEST_P(PostgresReaderTest, MultipleStatementsAreRejected) {
  auto reader = MakeSource()->Query("SELECT 1; SELECT 2");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("multiple commands"));
}

TEST_P(PostgresReaderTest, WritesAreRefusedByTheReadOnlySession) {
  std::string table = pg::testing::UniqueName("src_ro");
  ExecOrFail(fmt::format("CREATE TABLE {} (a int)", table));
  auto reader = MakeSource()->Query(fmt::format("INSERT INTO {} VALUES (1) RETURNING a", table));
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("read-only"));
  ExecOrFail(fmt::format("DROP TABLE {}", table));
}

TEST_P(PostgresReaderTest, PlanTimeErrorComesBeforeAnyRow) {
  // Rows of the first branch could be produced before the second fails if the
  // statement were not checked first.
  auto reader = MakeSource()->Query(
      "SELECT g FROM generate_series(1, 1000) g UNION ALL SELECT nope FROM generate_series(1, 2)");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("column \"nope\" does not exist"));
}

TEST_F(PostgresSourceTest, CopyAcceptsTrailingSemicolonsAndComments) {
  for (const char* sql : {"SELECT 1::int8 AS a;", "SELECT 1::int8 AS a ; ;\n\t ",
                          "SELECT 1::int8 AS a -- a trailing comment",
                          "SELECT 1::int8 AS a /* block */", "\n  SELECT 1::int8 AS a\n"}) {
    Schema schema;
    std::vector<Row> rows = ReadAll(sql, &schema);
    ASSERT_EQ(rows.size(), 1u) << sql;
    EXPECT_EQ(schema.at(0).name, "a");
    EXPECT_EQ(rows[0].at(0), Value::Int64(1)) << sql;
  }
}

TEST_F(PostgresSourceTest, CopyRejectsWhatItCannotWrapAndSuggestsRows) {
  // Valid SQL that returns rows but cannot be the query of COPY (...).
  for (const char* sql : {"SHOW TimeZone", "SELECT 1 AS a; -- done"}) {
    auto reader = MakeSource(PostgresExtraction::kCopy)->Query(sql);
    ASSERT_FALSE(reader.ok()) << sql;
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument) << reader.status();
    EXPECT_THAT(reader.status().message(), HasSubstr("extraction: rows")) << reader.status();
    EXPECT_THAT(reader.status().message(), HasSubstr("COPY")) << reader.status();
  }
  // The row-by-row reader runs them.
  std::vector<Row> rows = ReadAll("SHOW TimeZone", nullptr, PostgresExtraction::kRows);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].at(0), Value::String("UTC"));
}

TEST_F(PostgresSourceTest, CopyDoesNotRunStatementsWithoutResultRows) {
  auto reader = MakeSource(PostgresExtraction::kCopy)
                    ->Query("CREATE TABLE backflow_should_not_exist (a int)");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reader.status().message(), HasSubstr("no result set"));
}

// Property: over a table holding every supported type, edge values and
// thousands of random values made of the characters COPY escapes, both
// readers give identical schemas and identical rows.
TEST_F(PostgresSourceTest, CopyAndRowsReadersAgreeOnEveryTypeAndValue) {
  std::string table = pg::testing::UniqueName("src_agree");
  ExecOrFail(fmt::format(R"sql(
    CREATE TABLE {} (
      id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
      num numeric(38,10), num_any numeric, t text, vc varchar(40), bp char(6), nm name,
      u uuid, d date, ts timestamp, tstz timestamptz, js json, jb jsonb, bin bytea,
      arr_t text[], arr_i int8[], iv interval, empty text))sql",
                         table));
  // Edge values, one row each, then an all-NULL row.
  ExecOrFail(fmt::format(R"sql(
    INSERT INTO {} VALUES
      (1, true, -32768, -2147483648, -9223372036854775808, 'NaN', '-Infinity',
       '-1234567890123456789012345678.0123456789', 'NaN', E'tab\there\nnew\rline\\back',
       E'\\N', 'ab', 'nm', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
       '2024-01-02 03:04:05.000001', '2024-01-02 05:04:05.123456+02',
       E'{{"s": "tab\\t nl\\n bs\\\\ q\\" u\\u00e9 \\ud83d\\ude00", "n": [1, {{"x": null}}]}}',
       E'{{"s": "tab\\t nl\\n bs\\\\ u\\u00e9 😀", "deep": {{"a": [true, 1.50]}}}}',
       '\x00ff005c0a09ff00', ARRAY[E'a\tb', NULL, 'NULL', '', E'q"\\', '{{}}', 'x y'],
       ARRAY[1, NULL, -9223372036854775808], '1 year 2 mons 3 days 04:05:06.789', ''),
      (2, false, 32767, 2147483647, 9223372036854775807, 1.5, 0.1,
       '9999999999999999999999999999.9999999999', '-0.000000000000000000001', '\N', '',
       '', '', '00000000-0000-0000-0000-000000000000', '4713-01-01 BC',
       'infinity', '-infinity', '[]', '"just a string"', '\x', '{{}}', '{{}}',
       '-1 days -00:00:01', ' '),
      (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL))sql",
                         table));
  // Random rows: text built from the characters COPY escapes, bytes with
  // 0x00/0xff, random numbers and instants.
  ExecOrFail(fmt::format(R"sql(
    INSERT INTO {0}
    SELECT g, random() < 0.5, (random() * 65535 - 32768)::int2,
           (random() * 4e9 - 2e9)::int4, (random() * 1.8e19 - 9e18)::int8,
           (random() * 1e6 - 5e5)::float4, (random() - 0.5) * 10 ^ (random() * 600 - 300),
           round((random() * 2e27 - 1e27)::numeric, 10), (random() * 1e6)::numeric / 7,
           s, left(s, 40), left(s, 6), left(s, 20)::name, gen_random_uuid(),
           date '2000-01-01' + (random() * 20000)::int,
           timestamp '1990-01-01' + random() * interval '20000 days',
           timestamptz '1990-01-01 UTC' + random() * interval '20000 days',
           json_build_object('s', s, 'nested', json_build_object('v', s, 'n', g)),
           jsonb_build_object('s', s, 'arr', jsonb_build_array(s, g, NULL, random())),
           '\x00ff'::bytea || convert_to(s, 'UTF8') || '\xff00'::bytea,
           ARRAY[s, NULL, left(s, 3)], ARRAY[g, NULL], random() * interval '1000 hours',
           CASE WHEN g % 7 = 0 THEN '' ELSE s END
    FROM (SELECT g, (SELECT coalesce(string_agg(
                   (ARRAY[E'\t', E'\n', E'\r', E'\\', '\N', 'N', 'é', '😀', '"', '''', ',',
                          '{{', '}}', ' ', 'a', E'\x01', E'\x7f', E'\b', E'\f', E'\v',
                          '\x41', '\101', 'ab\', 'NULL'])[1 + floor(random() * 24)::int], ''), '')
                 FROM generate_series(1, floor(random() * 14)::int + 0 * g)) AS s
          FROM generate_series(10, 3009) g) r)sql",
                         table));

  const std::string sql = fmt::format("SELECT * FROM {} ORDER BY id", table);
  Schema copy_schema;
  Schema rows_schema;
  std::vector<Row> copy_rows = ReadAll(sql, &copy_schema, PostgresExtraction::kCopy);
  std::vector<Row> rows_rows = ReadAll(sql, &rows_schema, PostgresExtraction::kRows);
  ASSERT_EQ(rows_rows.size(), 3003u);
  ASSERT_EQ(copy_rows.size(), rows_rows.size());
  ASSERT_EQ(copy_schema.size(), rows_schema.size());
  for (size_t c = 0; c < copy_schema.size(); ++c) {
    EXPECT_EQ(copy_schema[c].name, rows_schema[c].name);
    EXPECT_EQ(copy_schema[c].type, rows_schema[c].type) << copy_schema[c].name;
    EXPECT_EQ(copy_schema[c].source_type, rows_schema[c].source_type) << copy_schema[c].name;
  }
  int mismatches = 0;
  std::vector<int> special_chars(copy_schema.size(), 0);
  for (size_t r = 0; r < copy_rows.size(); ++r) {
    ASSERT_EQ(copy_rows[r].size(), copy_schema.size());
    ASSERT_EQ(rows_rows[r].size(), copy_schema.size());
    for (size_t c = 0; c < copy_schema.size(); ++c) {
      const Value& a = copy_rows[r][c];
      const Value& b = rows_rows[r][c];
      if (!SameValue(a, b) && ++mismatches <= 20) {
        ADD_FAILURE() << "row id " << rows_rows[r][0].ToString() << ", column "
                      << copy_schema[c].name << ": copy " << Show(a) << " vs rows " << Show(b);
      }
      if (a.text().find_first_of(std::string("\t\n\\\0", 4)) != std::string::npos) {
        ++special_chars[c];
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
  // The random data did exercise the escapes.
  EXPECT_GT(special_chars[FindColumn(copy_schema, "t")], 1000);
  EXPECT_GT(special_chars[FindColumn(copy_schema, "bin")], 1000);
  EXPECT_GT(special_chars[FindColumn(copy_schema, "jb")], 1000);
  // Spot checks on the edge rows (the decoding itself is pg/types_test.cc's).
  const Row& edge = copy_rows[0];
  EXPECT_EQ(edge[FindColumn(copy_schema, "t")], Value::String("tab\there\nnew\rline\\back"));
  EXPECT_EQ(edge[FindColumn(copy_schema, "vc")], Value::String("\\N"));
  EXPECT_EQ(edge[FindColumn(copy_schema, "bin")],
            Value::Text(ValueType::kBytes, std::string("\x00\xff\x00\\\n\t\xff\x00", 8)));
  EXPECT_EQ(edge[FindColumn(copy_schema, "i8")], Value::Int64(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(edge[FindColumn(copy_schema, "num")],
            Value::Text(ValueType::kDecimal, "-1234567890123456789012345678.0123456789"));
  EXPECT_EQ(edge[FindColumn(copy_schema, "num_any")], Value::String("NaN"));
  EXPECT_EQ(edge[FindColumn(copy_schema, "tstz")],
            Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.123456Z"));
  EXPECT_EQ(edge[FindColumn(copy_schema, "empty")], Value::String(""));
  EXPECT_EQ(copy_rows[1][FindColumn(copy_schema, "vc")], Value::String(""));
  EXPECT_EQ(copy_rows[1][FindColumn(copy_schema, "t")], Value::String("\\N"));
  for (size_t c = 1; c < copy_rows[2].size(); ++c) {
    EXPECT_TRUE(copy_rows[2][c].is_null()) << copy_schema[c].name << " " << Show(copy_rows[2][c]);
  }
  ExecOrFail(fmt::format("DROP TABLE {}", table));
}

// The COPY reader waits for the socket with a low-water mark of tens of KB
// and a short timeout: rows that trickle in (each its own packet, far below
// the mark, 50 ms apart), rows larger than the mark and than
// libpq's buffer, and a short end all arrive; and the mark is gone once the
// COPY ends (the connection's later blocking calls in
// postgres_change_detection_test would hang on small replies otherwise).
TEST_F(PostgresSourceTest, CopyReadsTricklesHugeRowsAndShortEnds) {
  struct Case {
    int rows;
    int width;
    const char* sleep;
  };
  for (const Case& c : {Case{12, 9000, "0.05"}, Case{6, 200'000, "0"}, Case{3, 3'000'000, "0.02"},
                        Case{1, 1, "0"}}) {
    SCOPED_TRACE(fmt::format("{} rows of {} bytes, {} s apart", c.rows, c.width, c.sleep));
    std::vector<Row> rows = ReadAll(
        fmt::format("SELECT g, repeat(chr(96 + g), {}) AS pad, pg_sleep({}) IS NOT NULL AS slept "
                    "FROM generate_series(1, {}) g",
                    c.width, c.sleep, c.rows));
    ASSERT_EQ(rows.size(), static_cast<size_t>(c.rows));
    for (int i = 0; i < c.rows; ++i) {
      EXPECT_EQ(rows[i][0].int_value(), i + 1);
      EXPECT_EQ(rows[i][1].text(), std::string(c.width, static_cast<char>('a' + i)));
      EXPECT_TRUE(rows[i][2].bool_value());
    }
  }
}

TEST_F(PostgresSourceTest, StreamsMillionsOfRowsInBoundedMemory) {
  const std::string sql =
      "SELECT g AS id, md5(g::text) AS hash, g::numeric / 7 AS ratio, "
      "timestamptz '2024-01-01' + g * interval '1 second' AS at, repeat('x', 40) AS pad "
      "FROM generate_series(1, {}) g";
  auto stream = [&](int n, PostgresExtraction extraction) -> long {
    auto reader = MakeSource(extraction)->Query(fmt::format(fmt::runtime(sql), n));
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
  // Warm up allocator caches and libpq buffers, then measure the peak. Peak
  // RSS only grows, so the bound covers both modes together and the buffered
  // control comes last.
  ASSERT_EQ(stream(50000, PostgresExtraction::kCopy), 50000);
  ASSERT_EQ(stream(50000, PostgresExtraction::kRows), 50000);
  long before_kb = testing::PeakRssKb();
  constexpr int kRows = 2'000'000;
  for (PostgresExtraction extraction : {PostgresExtraction::kCopy, PostgresExtraction::kRows}) {
    const char* name = extraction == PostgresExtraction::kCopy ? "copy" : "rows";
    ASSERT_EQ(stream(kRows, extraction), kRows) << name;
    long growth_mb = (testing::PeakRssKb() - before_kb) / 1024;
    RecordProperty(fmt::format("peak_rss_growth_mb_{}", name), static_cast<int>(growth_mb));
    std::cout << "peak RSS growth after streaming " << kRows << " rows (" << name
              << "): " << growth_mb << " MB\n";
    // Buffering the result would take several hundred MB; streaming needs ~0.
    EXPECT_LT(growth_mb, 48) << "peak RSS grew by " << growth_mb << " MB while streaming " << kRows
                             << " rows (" << name << ")";
  }

  // Control: the same result fully buffered (plain PQexec) does exceed the
  // bound, so the measurement above is meaningful (also under ASan).
  auto conn = Connect();
  ASSERT_TRUE(conn.ok()) << conn.status();
  long control_before_kb = testing::PeakRssKb();
  auto buffered = (*conn)->Exec(fmt::format(fmt::runtime(sql), kRows));
  ASSERT_TRUE(buffered.ok()) << buffered.status();
  ASSERT_EQ(PQntuples(buffered->get()), kRows);
  long control_mb = (testing::PeakRssKb() - control_before_kb) / 1024;
  std::cout << "peak RSS growth when buffering the same result: " << control_mb << " MB\n";
  EXPECT_GT(control_mb, 48);
}

// ----------------------------------------------------------------------------
// Parallel extraction (parallel_connections > 1).

TEST(PostgresSourceDefinitionTest, ParallelConnectionsIsAnIntegerDefaultingToOne) {
  SourceDefinition def = PostgresSourceDefinition();
  const SettingSpec* parallel = FindSetting(def.settings, "parallel_connections");
  ASSERT_NE(parallel, nullptr);
  EXPECT_EQ(parallel->type, SettingType::kInteger);
  EXPECT_FALSE(parallel->required);
  EXPECT_EQ(parallel->default_value, 1);
  EXPECT_THAT(parallel->description, HasSubstr("snapshot"));
  EXPECT_THAT(parallel->description, HasSubstr("hash"));
  const nlohmann::json url = "postgresql://x@127.0.0.1/db";
  nlohmann::json from_env = {{"url", url}, {"parallel_connections", "4"}};
  EXPECT_TRUE(CheckSettings(def.settings, from_env).empty());
  EXPECT_EQ(from_env["parallel_connections"], 4);
  nlohmann::json wrong = {{"url", url}, {"parallel_connections", "many"}};
  EXPECT_EQ(CheckSettings(def.settings, wrong).size(), 1u);
  EXPECT_TRUE(def.create({{"url", url}, {"parallel_connections", 4}}, ConnectorEnv{}).ok());
  for (int n : {0, -1, kMaxPostgresParallelConnections + 1}) {
    auto created = def.create({{"url", url}, {"parallel_connections", n}}, ConnectorEnv{});
    ASSERT_FALSE(created.ok()) << n;
    EXPECT_THAT(created.status().message(), HasSubstr("parallel_connections")) << n;
  }
  auto rows = def.create({{"url", url}, {"parallel_connections", 2}, {"extraction", "rows"}},
                         ConnectorEnv{});
  ASSERT_FALSE(rows.ok());
  EXPECT_THAT(rows.status().message(), HasSubstr("extraction: copy"));
}

class PostgresParallelTest : public PostgresSourceTest {
 protected:
  std::unique_ptr<Source> MakeParallel(int n, const std::string& app = "",
                                       PostgresSourceOptions options = {}) const {
    options.parallel_connections = n;
    std::string url = app.empty() ? server().url : server().UrlWith("application_name=" + app);
    return NewPostgresSource(url, server().password, std::move(options));
  }

  // Every row of `sql` read with `key` as the key column, each rendered as
  // "v1|v2|..." (NULL as "<null>"), sorted: a multiset.
  std::vector<std::string> ReadSorted(Source& source, const std::string& sql,
                                      const std::string& key, Schema* schema = nullptr) {
    std::vector<std::string> rows;
    auto reader = source.Query(sql, QueryOptions{key});
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return rows;
    if (schema != nullptr) *schema = (*reader)->schema();
    Row row;
    while (true) {
      absl::StatusOr<bool> more = (*reader)->Next(row);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      std::string text;
      for (size_t i = 0; i < row.size(); ++i) {
        if (i > 0) text += "|";
        text += row[i].is_null() ? "<null>" : row[i].ToString();
      }
      rows.push_back(std::move(text));
    }
    std::sort(rows.begin(), rows.end());
    return rows;
  }

  // A table with integer keys that have gaps, negative values, duplicates and
  // NULLs, plus a text column.
  std::string MakeGappyTable() {
    std::string table = pg::testing::UniqueName("src_par");
    ExecOrFail(fmt::format("CREATE TABLE {} (id int8, v text)", table));
    ExecOrFail(fmt::format(R"sql(
      INSERT INTO {0}
      SELECT g * 3, 'a' || g FROM generate_series(1, 2000) g                        -- gaps
      UNION ALL SELECT g, 'far' || g FROM generate_series(1000000, 1000040) g
      UNION ALL SELECT g, 'neg' || g FROM generate_series(-520, -500) g
      UNION ALL VALUES (7, 'dup1'), (7, 'dup2'), (6, 'dup-of-a2'),
                       (NULL, 'null1'), (NULL, 'null2'), (NULL, 'null1'))sql",
                           table));
    return table;
  }
};

TEST_F(PostgresParallelTest, SameRowsOverOneTwoAndFourConnectionsForIntegerKeys) {
  std::string table = MakeGappyTable();
  for (const char* model :
       {"SELECT id, v FROM {}", "SELECT id::int4 AS id, v FROM {}",
        "SELECT id::int2 AS id, v FROM {} WHERE id IS NULL OR id BETWEEN -32768 AND 32767",
        "SELECT v, id FROM {} ORDER BY v;"}) {
    std::string sql = fmt::format(fmt::runtime(model), table);
    std::vector<std::string> one = ReadSorted(*MakeSource(), sql, "id");
    ASSERT_GT(one.size(), 2000u) << sql;
    EXPECT_EQ(std::count(one.begin(), one.end(), "<null>|null1") +
                  std::count(one.begin(), one.end(), "null1|<null>"),
              2)
        << sql;
    for (int n : {2, 4}) {
      Schema schema;
      EXPECT_EQ(ReadSorted(*MakeParallel(n), sql, "id", &schema), one) << sql << ", " << n;
      EXPECT_EQ(schema.size(), 2u);
    }
  }
  // More connections than key values, and a single key value.
  std::string few = fmt::format("SELECT id, v FROM {} WHERE id IN (3, 6) OR id IS NULL", table);
  EXPECT_EQ(ReadSorted(*MakeParallel(8), few, "id"), ReadSorted(*MakeSource(), few, "id"));
  std::string single = fmt::format("SELECT id, v FROM {} WHERE id = 7", table);
  EXPECT_EQ(ReadSorted(*MakeParallel(4), single, "id").size(), 2u);
  // No rows at all; only NULL keys.
  EXPECT_TRUE(
      ReadSorted(*MakeParallel(4), fmt::format("SELECT id, v FROM {} WHERE false", table), "id")
          .empty());
  EXPECT_EQ(ReadSorted(*MakeParallel(4),
                       fmt::format("SELECT id, v FROM {} WHERE id IS NULL", table), "id")
                .size(),
            3u);
  ExecOrFail(fmt::format("DROP TABLE {}", table));
}

TEST_F(PostgresParallelTest, ExtremeIntegerKeysDoNotOverflowTheRanges) {
  std::string sql =
      "SELECT * FROM (VALUES ((-9223372036854775808)::int8), (0::int8), (1::int8), "
      "(9223372036854775807::int8), (NULL::int8)) AS t(id)";
  std::vector<std::string> want = {"-9223372036854775808", "0", "1", "9223372036854775807",
                                   "<null>"};
  std::sort(want.begin(), want.end());
  for (int n : {2, 3, 16}) EXPECT_EQ(ReadSorted(*MakeParallel(n), sql, "id"), want) << n;
}

TEST_F(PostgresParallelTest, SameRowsOverOneTwoAndFourConnectionsForTextKeys) {
  std::string table = MakeGappyTable();
  for (const char* model : {"SELECT id::text AS k, v FROM {}",
                            "SELECT md5(coalesce(id, 0)::text)::uuid AS k, id, v FROM {}",
                            "SELECT v AS k, id FROM {}"}) {
    std::string sql = fmt::format(fmt::runtime(model), table);
    std::vector<std::string> one = ReadSorted(*MakeSource(), sql, "k");
    ASSERT_GT(one.size(), 2000u) << sql;
    for (int n : {2, 4}) EXPECT_EQ(ReadSorted(*MakeParallel(n), sql, "k"), one) << sql << n;
  }
  ExecOrFail(fmt::format("DROP TABLE {}", table));
}

TEST_F(PostgresParallelTest, WithoutAUsableKeyColumnOneConnectionReadsEverything) {
  std::string table = MakeGappyTable();
  std::string sql = fmt::format("SELECT id, v FROM {}", table);
  std::vector<std::string> one = ReadSorted(*MakeSource(), sql, "id");
  EXPECT_EQ(ReadSorted(*MakeParallel(4), sql, "no_such_column"), one);
  // A key column returned twice cannot be referenced: one connection.
  std::string twice = fmt::format("SELECT id, v, id FROM {}", table);
  EXPECT_EQ(ReadSorted(*MakeParallel(4), twice, "id").size(), one.size());
  // Statements COPY cannot wrap keep their usual error.
  auto show = MakeParallel(2)->Query("SHOW TimeZone", QueryOptions{"TimeZone"});
  ASSERT_FALSE(show.ok());
  EXPECT_THAT(show.status().message(), HasSubstr("extraction: rows"));
  // SQL errors come from Query(), with the position in the user's SQL.
  auto bad = MakeParallel(2)->Query("SELECT nope FROM generate_series(1, 3) g", QueryOptions{"g"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("at character 8"));
  ExecOrFail(fmt::format("DROP TABLE {}", table));
}

TEST_F(PostgresParallelTest, ReadsOverNConnectionsAndDroppingTheReaderEndsThemAll) {
  for (const char* key_type : {"", "::text"}) {
    for (int n : {2, 4}) {
      std::string app = pg::testing::UniqueName("src_par_drop");
      auto reader = MakeParallel(n, app)->Query(
          fmt::format("SELECT g{} AS id, md5(g::text) AS h FROM generate_series(1, 2000000) g",
                      key_type),
          QueryOptions{"id"});
      ASSERT_TRUE(reader.ok()) << reader.status();
      Row row;
      for (int i = 0; i < 100; ++i) {
        absl::StatusOr<bool> more = (*reader)->Next(row);
        ASSERT_TRUE(more.ok() && *more) << more.status();
      }
      // Every share is still being read (the queue is far smaller than a share).
      EXPECT_EQ(Backends(app, n), n) << key_type << " " << n;
      reader->reset();  // cancels every query; must not hang
      EXPECT_EQ(Backends(app, 0), 0) << "a dropped parallel reader left backends, " << n;
    }
  }
}

TEST_F(PostgresParallelTest, AnErrorOnOneConnectionIsAnErrorNotACleanEnd) {
  std::string app = pg::testing::UniqueName("src_par_err");
  // Only the second range (ids > 100000) fails, after rows were delivered.
  auto reader = MakeParallel(2, app)->Query(
      "SELECT g AS id, CASE WHEN g = 190000 THEN 1 / (g - g) ELSE 0 END AS q "
      "FROM generate_series(1, 200000) g",
      QueryOptions{"id"});
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  long rows = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  ASSERT_FALSE(more.ok()) << "clean end after " << rows << " rows";
  EXPECT_EQ(more.status().code(), absl::StatusCode::kInvalidArgument) << more.status();
  EXPECT_THAT(more.status().message(), HasSubstr("division by zero"));
  EXPECT_LT(rows, 200000);
  EXPECT_FALSE((*reader)->Next(row).ok());  // sticky
  // The other connection was stopped too.
  EXPECT_EQ(Backends(app, 0), 0);
}

TEST_F(PostgresParallelTest, ATerminatedBackendIsUnavailableNotACleanEnd) {
  std::string app = pg::testing::UniqueName("src_par_kill");
  auto reader = MakeParallel(3, app)->Query(
      "SELECT g AS id, md5(g::text) FROM generate_series(1, 3000000) g", QueryOptions{"id"});
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  for (int i = 0; i < 1000; ++i) {
    absl::StatusOr<bool> more = (*reader)->Next(row);
    ASSERT_TRUE(more.ok() && *more) << more.status();
  }
  ASSERT_EQ(Backends(app, 3), 3);
  auto admin = Connect();
  ASSERT_TRUE(admin.ok()) << admin.status();
  // Terminate one of the three backends (the newest: not the snapshot's exporter).
  auto killed = (*admin)->Exec(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 "
      "ORDER BY backend_start DESC LIMIT 1",
      {app.c_str()});
  ASSERT_TRUE(killed.ok()) << killed.status();
  ASSERT_EQ(PQntuples(killed->get()), 1);
  absl::StatusOr<bool> more;
  long rows = 1000;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  ASSERT_FALSE(more.ok()) << "clean end after " << rows << " rows";
  EXPECT_EQ(more.status().code(), absl::StatusCode::kUnavailable) << more.status();
  EXPECT_LT(rows, 3000000);
  reader->reset();
  EXPECT_EQ(Backends(app, 0), 0);
}

// Every row is updated after the first connection took its snapshot and
// before the others start: they must still see the old version.
TEST_F(PostgresParallelTest, EveryConnectionReadsTheSameSnapshot) {
  std::string table = pg::testing::UniqueName("src_par_snap");
  ExecOrFail(fmt::format("CREATE TABLE {} (id int8 PRIMARY KEY, version int8)", table));
  ExecOrFail(fmt::format("INSERT INTO {} SELECT g, 1 FROM generate_series(1, 20000) g", table));
  const std::string sql = fmt::format("SELECT id, version FROM {}", table);
  int next_version = 1;
  auto read_versions = [&](bool share_snapshot) {
    PostgresSourceOptions options;
    options.share_snapshot = share_snapshot;
    int held = 0;
    options.after_snapshot_export_for_testing = [&] {
      ++held;
      ExecOrFail(fmt::format("UPDATE {} SET version = {}", table, ++next_version));
    };
    std::map<int64_t, long> versions;  // version -> rows
    auto reader = MakeParallel(4, "", options)->Query(sql, QueryOptions{"id"});
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return versions;
    Row row;
    absl::StatusOr<bool> more;
    long rows = 0;
    while ((more = (*reader)->Next(row)).ok() && *more) {
      ++rows;
      ++versions[row[1].int_value()];
    }
    EXPECT_TRUE(more.ok()) << more.status();
    EXPECT_EQ(rows, 20000);
    EXPECT_EQ(held, 1);
    return versions;
  };
  // All 20000 rows come from the version before the update.
  EXPECT_EQ(read_versions(true), (std::map<int64_t, long>{{1, 20000}}));
  // Control: without importing the snapshot, the later connections see the
  // update, so the hold does fall between the connections' starts.
  std::map<int64_t, long> mixed = read_versions(false);
  EXPECT_EQ(mixed.size(), 2u);
  EXPECT_EQ(mixed[2], 5000);   // the first of four ranges: the exporter's snapshot
  EXPECT_EQ(mixed[3], 15000);  // the other three: after the update
  ExecOrFail(fmt::format("DROP TABLE {}", table));
}

TEST_F(PostgresParallelTest, StreamsMillionsOfRowsInBoundedMemory) {
  const std::string sql =
      "SELECT g AS id, md5(g::text) AS hash, g::numeric / 7 AS ratio, "
      "timestamptz '2024-01-01' + g * interval '1 second' AS at, repeat('x', 40) AS pad "
      "FROM generate_series(1, {}) g";
  auto stream = [&](int n) -> long {
    auto reader = MakeParallel(2)->Query(fmt::format(fmt::runtime(sql), n), QueryOptions{"id"});
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
  ASSERT_EQ(stream(50000), 50000);
  long before_kb = testing::PeakRssKb();
  constexpr int kRows = 2'000'000;
  ASSERT_EQ(stream(kRows), kRows);
  long growth_mb = (testing::PeakRssKb() - before_kb) / 1024;
  RecordProperty("peak_rss_growth_mb_parallel", static_cast<int>(growth_mb));
  std::cout << "peak RSS growth after streaming " << kRows
            << " rows over 2 connections: " << growth_mb << " MB\n";
  // Buffering would take several hundred MB (see the single-connection test's control).
  EXPECT_LT(growth_mb, 48);
}

}  // namespace
}  // namespace backflow
