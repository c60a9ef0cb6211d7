#include "backflow/sources/redshift/redshift_source.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/pg/testing/test_server.h"
#include "backflow/sources/redshift/fake_redshift_aws_server.h"
#include "backflow/sources/redshift/fake_redshift_server.h"
#include "backflow/testing/process.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

// --- Definition and settings ------------------------------------------------

TEST(RedshiftSourceDefinitionTest, DeclaresItsSettingsWithSafeDefaults) {
  SourceDefinition def = RedshiftSourceDefinition();
  EXPECT_EQ(def.type, "redshift");
  const SettingSpec* url = FindSetting(def.settings, "url");
  ASSERT_NE(url, nullptr);
  EXPECT_TRUE(url->required);
  const SettingSpec* password = FindSetting(def.settings, "password");
  ASSERT_NE(password, nullptr);
  EXPECT_TRUE(password->secret);
  const SettingSpec* sslmode = FindSetting(def.settings, "sslmode");
  ASSERT_NE(sslmode, nullptr);
  EXPECT_EQ(sslmode->default_value, "verify-full");
  EXPECT_EQ(sslmode->type, SettingType::kEnum);
  const SettingSpec* fetch = FindSetting(def.settings, "fetch_size");
  ASSERT_NE(fetch, nullptr);
  EXPECT_EQ(fetch->default_value, 1000);
  EXPECT_TRUE(FindSetting(def.settings, "sslrootcert")->is_path);

  json settings = {{"url", "postgresql://analytics@example.redshift.amazonaws.com/dev"}};
  EXPECT_TRUE(CheckSettings(def.settings, settings).empty());
  EXPECT_EQ(settings["sslmode"], "verify-full");  // filled in
  EXPECT_TRUE(def.create(settings, ConnectorEnv{}).ok());
  json missing = json::object();
  EXPECT_EQ(CheckSettings(def.settings, missing).size(), 1u);
}

TEST(RedshiftSourceDefinitionTest, ParsesSettingsAndRejectsTlsOptionsInTheUrl) {
  absl::StatusOr<RedshiftConfig> config = ParseRedshiftSettings(
      {{"url", "jdbc:redshift://examplecluster.abc123.us-east-1.redshift.amazonaws.com:5439/dev"},
       {"password", "pw"},
       {"fetch_size", 4000},
       {"query_group", "etl"},
       {"statement_timeout_s", 600}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->sslmode, "verify-full");
  EXPECT_EQ(config->fetch_size, 4000);
  EXPECT_EQ(config->max_retries, 2);
  EXPECT_EQ(config->query_group, "etl");

  absl::StatusOr<RedshiftConfig> in_url =
      ParseRedshiftSettings({{"url", "postgresql://u@h:5439/dev?sslmode=disable"}});
  ASSERT_FALSE(in_url.ok());
  EXPECT_EQ(in_url.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(in_url.status().message(), HasSubstr("`sslmode` setting"));

  EXPECT_FALSE(ParseRedshiftSettings({{"url", "postgresql://u@h/dev"}, {"fetch_size", 0}}).ok());
  EXPECT_FALSE(
      ParseRedshiftSettings({{"url", "postgresql://u@h/dev"}, {"fetch_size", 1000000}}).ok());
  EXPECT_FALSE(ParseRedshiftSettings({{"url", "postgresql://u@h/dev"}, {"sslmode", "on"}}).ok());
  absl::StatusOr<RedshiftConfig> no_url = ParseRedshiftSettings({{"password", "pw"}});
  ASSERT_FALSE(no_url.ok());
  EXPECT_THAT(no_url.status().message(), HasSubstr("url"));
}

TEST(RedshiftSourceDefinitionTest, SessionSqlPinsTheSessionWithRedshiftParametersOnly) {
  RedshiftConfig config;
  EXPECT_EQ(RedshiftSessionSql(config),
            "SET timezone TO 'UTC'; SET datestyle TO 'ISO, MDY'; SET extra_float_digits TO 2; ");
  config.statement_timeout_s = 90;
  config.query_group = "o'brien";
  EXPECT_THAT(RedshiftSessionSql(config), HasSubstr("SET statement_timeout TO 90000; "));
  EXPECT_THAT(RedshiftSessionSql(config), HasSubstr("SET query_group TO 'o''brien'; "));
}

// --- SQL splitting ----------------------------------------------------------

TEST(SplitSqlStatementsTest, SplitsOnlyAtTopLevelSemicolons) {
  EXPECT_THAT(SplitSqlStatements("SELECT 1"), ElementsAre("SELECT 1"));
  EXPECT_THAT(SplitSqlStatements("  SELECT 1 ;; \n"), ElementsAre("SELECT 1"));
  EXPECT_THAT(SplitSqlStatements("SELECT 1; SELECT 2"), ElementsAre("SELECT 1", "SELECT 2"));
  EXPECT_THAT(SplitSqlStatements("SELECT ';' AS a, \"x;y\" FROM t"),
              ElementsAre("SELECT ';' AS a, \"x;y\" FROM t"));
  EXPECT_THAT(SplitSqlStatements("SELECT 'it''s; fine', 'a\\';b'"),
              ElementsAre("SELECT 'it''s; fine', 'a\\';b'"));
  EXPECT_THAT(SplitSqlStatements("SELECT 1 -- a; comment\n; /* x; /* nested; */ y */"),
              ElementsAre("SELECT 1 -- a; comment"));
  EXPECT_THAT(SplitSqlStatements("SELECT $$a;b$$, $tag$c;d$tag$, $1"),
              ElementsAre("SELECT $$a;b$$, $tag$c;d$tag$, $1"));
  EXPECT_TRUE(SplitSqlStatements(" ; -- only a comment\n").empty());
}

TEST(SplitSqlStatementsTest, AModelMustBeExactlyOneStatement) {
  absl::StatusOr<std::string> one = SingleModelStatement("  SELECT ';' FROM t ;\n", "why");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(*one, "SELECT ';' FROM t");

  absl::StatusOr<std::string> empty = SingleModelStatement(" ; -- nothing\n", "why");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.status().message(), "the model's SQL is empty; a model must be one SELECT");

  absl::StatusOr<std::string> two = SingleModelStatement("SELECT 1; SELECT 2", "one at a time");
  EXPECT_EQ(two.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(two.status().message(),
            "the model's SQL holds 2 statements; a model must be one SELECT (one at a time)");
}

// --- Type mapping -----------------------------------------------------------

TEST(RedshiftTypesTest, MapsRedshiftOnlyTypes) {
  EXPECT_EQ(RedshiftValueTypeForOid(kRedshiftSuperOid), ValueType::kJson);
  EXPECT_EQ(DecodeRedshiftText(kRedshiftSuperOid, R"({"a": [1, 2], "b": "x y"})"),
            Value::Text(ValueType::kJson, R"({"a":[1,2],"b":"x y"})"));
  EXPECT_EQ(DecodeRedshiftText(kRedshiftSuperOid, R"("just a string")"),
            Value::Text(ValueType::kJson, R"("just a string")"));
  EXPECT_EQ(RedshiftValueTypeForOid(kRedshiftVarbyteOid), ValueType::kBytes);
  EXPECT_EQ(DecodeRedshiftText(kRedshiftVarbyteOid, "00ff10"),
            Value::Text(ValueType::kBytes, std::string("\x00\xff\x10", 3)));
  EXPECT_EQ(DecodeRedshiftText(kRedshiftVarbyteOid, "\\x6162"),
            Value::Text(ValueType::kBytes, "ab"));
  EXPECT_EQ(DecodeRedshiftText(kRedshiftVarbyteOid, "xyz"), Value::String("xyz"));
  for (Oid oid : {kRedshiftGeometryOid, kRedshiftGeographyOid, kRedshiftHllSketchOid,
                  kRedshiftIntervalY2MOid, kRedshiftIntervalD2SOid}) {
    EXPECT_EQ(RedshiftValueTypeForOid(oid), ValueType::kString) << oid;
  }
  EXPECT_EQ(DecodeRedshiftText(kRedshiftGeometryOid, "0101000000000000000000F03F"),
            Value::String("0101000000000000000000F03F"));
  EXPECT_EQ(RedshiftTypeName(kRedshiftSuperOid, -1), "super");
  EXPECT_EQ(RedshiftTypeName(kRedshiftVarbyteOid, 68), "varbyte(64)");
  EXPECT_EQ(RedshiftTypeName(kRedshiftHllSketchOid, -1), "hllsketch");
  EXPECT_EQ(RedshiftTypeName(1700, ((38 << 16) | 10) + 4), "numeric(38,10)");
  // Standard types decode as on PostgreSQL (session pinned to UTC).
  EXPECT_EQ(DecodeRedshiftText(1184, "2024-06-01 12:00:00.5+00"),
            Value::Text(ValueType::kTimestamp, "2024-06-01T12:00:00.5Z"));
  EXPECT_EQ(DecodeRedshiftText(20, "-9223372036854775808"),
            Value::Int64(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(DecodeRedshiftText(1700, "12345678901234567890.123"),
            Value::Text(ValueType::kDecimal, "12345678901234567890.123"));
  EXPECT_EQ(DecodeRedshiftText(701, "0.10000000000000001"), Value::Double(0.1));
}

TEST(RedshiftErrorsTest, SerializableViolationIsRetryableAndTlsIsConfiguration) {
  absl::Status serializable = ClassifyRedshiftError(absl::InternalError(
      "query failed: Redshift at h:5439 reported: 1023 (SQLSTATE XX000). Detail: Serializable "
      "isolation violation on table - 100167, transactions forming the cycle are: 1, 2"));
  EXPECT_EQ(serializable.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(serializable.message(), HasSubstr("retrying"));
  EXPECT_EQ(ClassifyRedshiftError(
                absl::UnknownError("Redshift at h:5439 reported: could not complete because "
                                   "of conflict with concurrent transaction (SQLSTATE XX000)"))
                .code(),
            absl::StatusCode::kUnavailable);
  absl::Status tls = ClassifyRedshiftError(absl::UnavailableError(
      "cannot connect to Redshift at h:5439: server does not support SSL, but SSL was required"));
  EXPECT_EQ(tls.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(tls.message(), HasSubstr("`sslmode`"));
  EXPECT_EQ(ClassifyRedshiftError(
                absl::UnavailableError("lost the connection to Redshift at h:5439: SSL SYSCALL "
                                       "error: EOF detected"))
                .code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(ClassifyRedshiftError(absl::InvalidArgumentError("x")).code(),
            absl::StatusCode::kInvalidArgument);
}

// --- Against the fake (a Redshift personality in front of PostgreSQL) ------

class RedshiftSourceTest : public pg::testing::PostgresTest {
 protected:
  void SetUp() override {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFailure()) return;
    StartFake(FakeRedshiftOptions{});
  }

  void StartFake(FakeRedshiftOptions options) {
    fake_.reset();
    options.upstream_port = server().port;
    fake_ = std::make_unique<FakeRedshiftServer>(std::move(options));
    ASSERT_TRUE(fake_->Start().ok());
  }

  RedshiftConfig Config(const std::string& query = "") const {
    RedshiftConfig config;
    config.url = fake_->Url("backflow", "backflow_test") + (query.empty() ? "" : "?" + query);
    config.password = server().password;
    config.sslmode = "disable";  // the fake does not speak TLS
    config.fetch_size = 10;
    config.cancel_wait = std::chrono::milliseconds(3000);
    return config;
  }

  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();

  std::unique_ptr<Source> Make(RedshiftConfig config) {
    return NewRedshiftSource(std::move(config), ConnectorEnv{nullptr, &clock_});
  }

  // Reads every row; fails the test on error.
  std::vector<Row> ReadAll(Source& source, const std::string& sql, Schema* schema = nullptr) {
    std::vector<Row> rows;
    auto reader = source.Query(sql);
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

  bool SawStatement(std::string_view sql) const {
    for (const FakeRedshiftStatement& s : fake_->Statements()) {
      if (s.sql == sql && !s.refused) return true;
    }
    return false;
  }

  FakeClock clock_;
  std::unique_ptr<FakeRedshiftServer> fake_;
};

TEST_F(RedshiftSourceTest, CheckConnectionPinsTheSessionWithRedshiftSettings) {
  absl::Status status = Make(Config())->CheckConnection();
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(SawStatement("SET timezone TO 'UTC'"));
  EXPECT_TRUE(SawStatement("SET extra_float_digits TO 2"));
  EXPECT_TRUE(SawStatement("SELECT 1"));
  RedshiftConfig config = Config();
  config.query_group = "reverse_etl";
  ASSERT_TRUE(Make(config)->CheckConnection().ok());
  EXPECT_TRUE(SawStatement("SET query_group TO 'reverse_etl'"));
}

TEST_F(RedshiftSourceTest, EveryTypeMapsExactly) {
  FakeRedshiftOptions options;
  options.column_types = {{"sup", kRedshiftSuperOid},
                          {"sup_str", kRedshiftSuperOid},
                          {"vb", kRedshiftVarbyteOid},
                          {"geo", kRedshiftGeometryOid},
                          {"hll", kRedshiftHllSketchOid}};
  StartFake(options);
  Schema schema;
  auto source = Make(Config());
  std::vector<Row> rows = ReadAll(*source, R"sql(
    SELECT true AS b, NULL::boolean AS b_null,
           (-9223372036854775807 - 1)::int8 AS i8_min, 9223372036854775807::int8 AS i8_max,
           (-32768)::int2 AS i2, 2147483647::int4 AS i4, NULL::int8 AS i_null,
           1.5::float4 AS f4, 0.1::float8 AS f8,
           '1234567890123456789012345678.0123456789'::numeric(38,10) AS num,
           'héllo'::varchar(20) AS vc, 'ab'::char(3) AS bp,
           '2024-01-02'::date AS d,
           '2024-01-02 05:04:05.123456+02'::timestamptz AS tstz,
           '2024-01-02 03:04:05.5'::timestamp AS ts,
           '{"b": [1, 2, "x y"], "a": {"n": null}}'::text AS sup,
           '"plain"'::text AS sup_str, '00ff10'::text AS vb,
           '0101000000000000000000F03F'::text AS geo, '{"version":1}'::text AS hll,
           '12:30:00'::time AS tm, NULL::text AS t_null)sql",
                                  &schema);
  ASSERT_EQ(rows.size(), 1u);
  const Row& r = rows[0];
  auto col = [&](const char* name) -> const Value& {
    int i = FindColumn(schema, name);
    EXPECT_GE(i, 0) << name;
    return r.at(i < 0 ? 0 : i);
  };
  auto column = [&](const char* name) -> const Column& {
    int i = FindColumn(schema, name);
    EXPECT_GE(i, 0) << name;
    return schema.at(i < 0 ? 0 : i);
  };
  EXPECT_EQ(col("b"), Value::Bool(true));
  EXPECT_TRUE(col("b_null").is_null());
  EXPECT_EQ(column("b_null").type, ValueType::kBool);
  EXPECT_EQ(col("i8_min"), Value::Int64(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(col("i8_max"), Value::Int64(std::numeric_limits<int64_t>::max()));
  EXPECT_EQ(col("i2"), Value::Int64(-32768));
  EXPECT_EQ(col("i4"), Value::Int64(2147483647));
  EXPECT_EQ(column("i_null").type, ValueType::kInt64);
  EXPECT_EQ(col("f4"), Value::Double(1.5));
  EXPECT_EQ(col("f8"), Value::Double(0.1));  // extra_float_digits 2 round-trips
  EXPECT_EQ(col("num"),
            Value::Text(ValueType::kDecimal, "1234567890123456789012345678.0123456789"));
  EXPECT_EQ(column("num").source_type, "numeric(38,10)");
  EXPECT_EQ(col("vc"), Value::String("héllo"));
  EXPECT_EQ(col("bp"), Value::String("ab "));
  EXPECT_EQ(col("d"), Value::Text(ValueType::kDate, "2024-01-02"));
  EXPECT_EQ(col("tstz"), Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.123456Z"));
  EXPECT_EQ(col("ts"), Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.5"));
  EXPECT_EQ(col("sup"), Value::Text(ValueType::kJson, R"({"b":[1,2,"x y"],"a":{"n":null}})"));
  EXPECT_EQ(column("sup").source_type, "super");
  EXPECT_EQ(col("sup_str"), Value::Text(ValueType::kJson, R"("plain")"));
  EXPECT_EQ(col("vb"), Value::Text(ValueType::kBytes, std::string("\x00\xff\x10", 3)));
  EXPECT_EQ(column("vb").source_type, "varbyte");
  EXPECT_EQ(col("geo"), Value::String("0101000000000000000000F03F"));
  EXPECT_EQ(column("geo").source_type, "geometry");
  EXPECT_EQ(col("hll"), Value::String(R"({"version":1})"));
  EXPECT_EQ(col("tm"), Value::String("12:30:00"));
  EXPECT_TRUE(col("t_null").is_null());
  EXPECT_EQ(fake_->violations(), 0);
}

TEST_F(RedshiftSourceTest, ReadsThroughACursorInBoundedBatches) {
  auto source = Make(Config());
  std::vector<Row> rows =
      ReadAll(*source, "SELECT g::int8 AS g FROM generate_series(1, 25) g ORDER BY g");
  ASSERT_EQ(rows.size(), 25u);
  for (int i = 0; i < 25; ++i) EXPECT_EQ(rows[i][0], Value::Int64(i + 1));
  // 10 + 10 + 5: the short batch is the last, no fourth round trip.
  EXPECT_THAT(fake_->FetchCounts(), ElementsAre(10, 10, 10));
  EXPECT_EQ(fake_->CountStatements("FETCH"), 3);
  EXPECT_LE(fake_->max_rows_per_response(), 10);
  EXPECT_TRUE(SawStatement("BEGIN READ ONLY"));
  EXPECT_TRUE(SawStatement(
      "DECLARE backflow_cursor CURSOR FOR\nSELECT g::int8 AS g FROM generate_series(1, 25) g "
      "ORDER BY g"));
  EXPECT_TRUE(SawStatement("CLOSE backflow_cursor"));
  EXPECT_TRUE(SawStatement("COMMIT"));
  EXPECT_EQ(fake_->CountStatements("COPY"), 0);
  EXPECT_EQ(fake_->sessions(), 1);

  // An exact multiple ends with an empty batch.
  fake_->ClearHistory();
  rows = ReadAll(*source, "SELECT g FROM generate_series(1, 20) g");
  EXPECT_EQ(rows.size(), 20u);
  EXPECT_EQ(fake_->CountStatements("FETCH"), 3);
}

TEST_F(RedshiftSourceTest, SchemaIsKnownForAnEmptyResult) {
  auto reader = Make(Config())->Query("SELECT 1::int8 AS a, 'x'::text AS b WHERE false");
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ((*reader)->schema().size(), 2u);
  EXPECT_EQ((*reader)->schema()[0].name, "a");
  EXPECT_EQ((*reader)->schema()[0].type, ValueType::kInt64);
  Row row;
  absl::StatusOr<bool> more = (*reader)->Next(row);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_FALSE(*more);
  EXPECT_FALSE(*(*reader)->Next(row));
  EXPECT_EQ(fake_->CountStatements("FETCH"), 1);
}

TEST_F(RedshiftSourceTest, TrailingSemicolonsAndCommentsAreFine) {
  auto source = Make(Config());
  for (const char* sql :
       {"SELECT 1::int8 AS a;", "SELECT 1::int8 AS a ; ;\n",
        "SELECT 1::int8 AS a -- trailing comment", "SELECT 1::int8 AS a /* b */"}) {
    std::vector<Row> rows = ReadAll(*source, sql);
    ASSERT_EQ(rows.size(), 1u) << sql;
    EXPECT_EQ(rows[0][0], Value::Int64(1)) << sql;
  }
}

TEST_F(RedshiftSourceTest, SeveralStatementsAreRefusedBeforeConnecting) {
  auto reader = Make(Config())->Query("SELECT 1; SELECT 2");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reader.status().message(), HasSubstr("2 statements"));
  EXPECT_EQ(fake_->sessions(), 0);
}

TEST_F(RedshiftSourceTest, SqlErrorsQuoteRedshiftWithThePositionInTheModel) {
  auto reader = Make(Config())->Query("SELECT no_such_column FROM generate_series(1, 3) g");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("column \"no_such_column\" does not exist"));
  EXPECT_THAT(reader.status().message(), HasSubstr("42703"));
  EXPECT_THAT(reader.status().message(), HasSubstr("at character 8"));
  EXPECT_THAT(reader.status().message(),
              HasSubstr(fmt::format("Redshift at 127.0.0.1:{}", fake_->port())));
  EXPECT_EQ(clock_.total_slept(), Clock::Duration(0));  // not retried
}

TEST_F(RedshiftSourceTest, TheTransactionIsReadOnly) {
  std::string seq = pg::testing::UniqueName("rs_seq");
  ExecOrFail("CREATE SEQUENCE " + seq);
  auto reader = Make(Config())->Query(fmt::format("SELECT nextval('{}')", seq));
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("read-only"));
  ExecOrFail("DROP SEQUENCE " + seq);
}

TEST_F(RedshiftSourceTest, AnErrorAfterRowsIsAStickyErrorNotACleanEnd) {
  auto reader = Make(Config())->Query("SELECT g, 1 / (g - 45) AS q FROM generate_series(1, 100) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int rows = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  EXPECT_EQ(rows, 40);  // four full batches, then the FETCH that hits g = 45 fails
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kInvalidArgument) << more.status();
  EXPECT_THAT(more.status().message(), HasSubstr("division by zero"));
  EXPECT_FALSE((*reader)->Next(row).ok());
  reader->reset();
  EXPECT_TRUE(SawStatement("ROLLBACK"));
}

TEST_F(RedshiftSourceTest, WrongPasswordIsUnauthenticatedAndNeverEchoed) {
  const std::string secret = "Wr0ng-Secret-Pw";
  RedshiftConfig config = Config();
  config.password = secret;
  absl::Status status = Make(config)->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << status;
  EXPECT_THAT(status.message(), HasSubstr("Redshift at"));
  EXPECT_THAT(status.message(), HasSubstr("backflow"));  // the user
  EXPECT_THAT(status.message(), Not(HasSubstr(secret)));
  auto reader = Make(config)->Query("SELECT 1");
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(clock_.total_slept(), Clock::Duration(0));  // not retried
}

TEST_F(RedshiftSourceTest, UnknownDatabaseIsAConfigurationError) {
  RedshiftConfig config = Config();
  config.url = fake_->Url("backflow", "no_such_db");
  absl::Status status = Make(config)->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("no_such_db"));
  EXPECT_THAT(status.message(), HasSubstr("Check the database name"));
}

TEST_F(RedshiftSourceTest, NothingListeningIsUnavailableAfterRetriesWithBackoff) {
  int port = testing::UnusedPort();
  RedshiftConfig config = Config();
  config.url = fmt::format("postgresql://backflow@127.0.0.1:{}/dev", port);
  auto source = Make(config);
  absl::Status status = source->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr(fmt::format("127.0.0.1:{}", port)));
  auto reader = source->Query("SELECT 1");
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(clock_.total_slept(), std::chrono::seconds(3));  // 1 s, then 2 s
}

TEST_F(RedshiftSourceTest, PortDefaultsTo5439) {
  RedshiftConfig config = Config();
  config.url = "postgresql://backflow@127.0.0.1/dev";
  config.max_retries = 0;
  absl::Status status = Make(config)->CheckConnection();
  EXPECT_THAT(status.message(), HasSubstr("127.0.0.1:5439"));
}

TEST_F(RedshiftSourceTest, TlsRequiredAgainstAServerWithoutTlsNamesTheSetting) {
  for (const char* mode : {"verify-full", "require"}) {
    RedshiftConfig config = Config();
    config.sslmode = mode;
    absl::Status status = Make(config)->CheckConnection();
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << mode << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr("`sslmode`"));
  }
}

TEST_F(RedshiftSourceTest, SerializableViolationBeforeTheFirstRowIsRetried) {
  fake_->AddFault(FakeRedshiftFault::SerializableViolation("DECLARE"));
  std::vector<Row> rows;
  {
    auto source = Make(Config());
    rows = ReadAll(*source, "SELECT g FROM generate_series(1, 15) g");
  }
  EXPECT_EQ(rows.size(), 15u);
  EXPECT_EQ(fake_->CountStatements("DECLARE"), 2);
  EXPECT_EQ(clock_.total_slept(), std::chrono::seconds(1));

  // Persistent: reported after max_retries, quoting Redshift's error 1023.
  fake_->AddFault(FakeRedshiftFault::SerializableViolation("FETCH", 0, 10));
  auto reader = Make(Config())->Query("SELECT 1");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnavailable) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("1023"));
  EXPECT_THAT(reader.status().message(), HasSubstr("Serializable isolation violation"));
  EXPECT_EQ(clock_.total_slept(), std::chrono::seconds(1 + 1 + 2));
}

TEST_F(RedshiftSourceTest, ConnectionLostWhileDeclaringIsRetried) {
  fake_->AddFault(FakeRedshiftFault::ConnectionLoss("DECLARE"));
  auto source = Make(Config());
  std::vector<Row> rows = ReadAll(*source, "SELECT g FROM generate_series(1, 5) g");
  EXPECT_EQ(rows.size(), 5u);
  EXPECT_EQ(fake_->sessions(), 2);
}

TEST_F(RedshiftSourceTest, SerializableViolationMidStreamIsAnErrorNotRetried) {
  // The third FETCH fails: 20 rows were handed out, the read cannot resume.
  fake_->AddFault(FakeRedshiftFault::SerializableViolation("FETCH", 2));
  auto reader = Make(Config())->Query("SELECT g FROM generate_series(1, 100) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int rows = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  EXPECT_EQ(rows, 20);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kUnavailable) << more.status();
  EXPECT_EQ(fake_->sessions(), 1);
}

TEST_F(RedshiftSourceTest, ConnectionLossMidStreamIsAnErrorNotACleanEnd) {
  fake_->DropAfterRows(25);
  auto reader = Make(Config())->Query("SELECT g FROM generate_series(1, 100) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int rows = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
  EXPECT_EQ(rows, 20);  // the third batch was cut after 5 of its rows
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kUnavailable) << more.status();
  EXPECT_THAT(more.status().message(), HasSubstr("Redshift"));
  EXPECT_FALSE((*reader)->Next(row).ok());
}

TEST_F(RedshiftSourceTest, AbandonedReaderClosesTheCursorAndRollsBack) {
  std::string app = pg::testing::UniqueName("rs_drop");
  auto reader =
      Make(Config("application_name=" + app))->Query("SELECT g FROM generate_series(1, 1000) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(*(*reader)->Next(row));
  usleep(200'000);  // the prefetched batch has arrived
  reader->reset();
  EXPECT_TRUE(SawStatement("CLOSE backflow_cursor"));
  EXPECT_TRUE(SawStatement("ROLLBACK"));
  EXPECT_FALSE(SawStatement("COMMIT"));
  EXPECT_EQ(Backends(app), 0);
}

TEST_F(RedshiftSourceTest, AbandoningWhileAFetchRunsCancelsIt) {
  std::string app = pg::testing::UniqueName("rs_cancel");
  // Rows past the first batch take 30 s each: the prefetched FETCH is still
  // running on the server when the reader is dropped. The cancel may take a
  // few seconds to land on a loaded machine (it goes through the fake to
  // PostgreSQL), so the reader may wait up to 20 s for it: what matters is
  // that it does not wait for the statement's 30 s.
  RedshiftConfig config = Config("application_name=" + app);
  config.cancel_wait = std::chrono::seconds(20);
  auto reader = Make(config)->Query(
      "SELECT g, pg_sleep(CASE WHEN g > 10 THEN 30 ELSE 0 END)::text AS s "
      "FROM generate_series(1, 100) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(*(*reader)->Next(row));
  auto start = std::chrono::steady_clock::now();
  reader->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(25));
  EXPECT_GE(fake_->cancel_requests(), 1);  // repeated until the statement stops
  EXPECT_TRUE(SawStatement("ROLLBACK"));
  EXPECT_EQ(Backends(app), 0);
}

TEST_F(RedshiftSourceTest, CancelWhileTheFirstFetchRunsCancelsTheQuery) {
  std::string app = pg::testing::UniqueName("rs_qcancel");
  auto source = Make(Config("application_name=" + app));
  std::atomic<bool> cancel{false};
  // Another thread cancels the run once the first FETCH (which runs for
  // 60 s) has reached the server: it waits for that event, not for time.
  std::thread canceller([&] {
    while (fake_->CountStatements("FETCH") == 0) std::this_thread::yield();
    cancel.store(true);
  });
  auto start = std::chrono::steady_clock::now();
  auto reader =
      source->Query("SELECT g AS id, pg_sleep(60)::text AS s FROM generate_series(1, 2) g",
                    QueryOptions{"id", &cancel});
  canceller.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_GE(fake_->cancel_requests(), 1);  // repeated until the statement stops
  EXPECT_EQ(fake_->CountStatements("FETCH"), 1);
  EXPECT_EQ(Backends(app), 0);

  // Already cancelled: nothing is sent.
  const int64_t sessions = fake_->sessions();
  reader = source->Query("SELECT 1 AS id", QueryOptions{"id", &cancel});
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_EQ(fake_->sessions(), sessions);
}

TEST_F(RedshiftSourceTest, FetchSizeAboveTheSingleNodeLimitIsRefusedByTheCluster) {
  FakeRedshiftOptions options;
  options.single_node = true;
  StartFake(options);
  RedshiftConfig config = Config();
  config.fetch_size = 1000;
  EXPECT_EQ(ReadAll(*Make(config), "SELECT g FROM generate_series(1, 1500) g").size(), 1500u);
  config.fetch_size = 4000;
  auto reader = Make(config)->Query("SELECT 1");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("single-node"));
}

}  // namespace
}  // namespace backflow

namespace backflow {
namespace {

// auth: iam through the Redshift proxy: the temporary password comes from
// the SigV4-checking fake AWS endpoint (which hands out the test server's
// real credentials), and a refused password is re-fetched once.
class RedshiftIamSourceTest : public RedshiftSourceTest {
 protected:
  std::unique_ptr<FakeRedshiftAwsServer> StartAws(const std::string& password) {
    FakeRedshiftAwsOptions options;
    options.clock = &clock_;
    options.db_user = "backflow";
    options.db_password = password;
    auto aws = std::make_unique<FakeRedshiftAwsServer>(options);
    EXPECT_TRUE(aws->Start().ok());
    return aws;
  }

  RedshiftConfig IamConfig(const FakeRedshiftAwsServer& aws) const {
    RedshiftConfig config = Config();
    config.password.clear();
    config.auth = RedshiftAuth::kIam;
    config.iam.credentials = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
    config.iam.region = "us-east-1";
    config.iam.aws_endpoint = aws.Url();
    config.iam.cluster_identifier = "examplecluster";
    config.iam.db_user = "analytics";
    config.iam.db_name = "backflow_test";
    return config;
  }
};

TEST_F(RedshiftIamSourceTest, ConnectsWithATemporaryPassword) {
  auto aws = StartAws(server().password);
  auto source = NewRedshiftSource(IamConfig(*aws), ConnectorEnv{http_.get(), &clock_});
  ASSERT_TRUE(source->CheckConnection().ok());
  std::vector<Row> rows = ReadAll(*source, "SELECT 41 + 1 AS answer");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][0].int_value(), 42);
  EXPECT_EQ(aws->Calls("GetClusterCredentials"), 1);  // cached between connections
  auto requests = aws->CredentialRequests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0]["DbUser"], "analytics");
  EXPECT_EQ(requests[0]["DbName"], "backflow_test");
}

TEST_F(RedshiftIamSourceTest, RefusedPasswordIsFetchedAgainOnceThenUnauthenticated) {
  auto aws = StartAws("Wr0ng-Temp-Pw");
  auto source = NewRedshiftSource(IamConfig(*aws), ConnectorEnv{http_.get(), &clock_});
  absl::Status status = source->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << status;
  EXPECT_THAT(status.message(), HasSubstr("temporary IAM password"));
  EXPECT_THAT(status.message(), Not(HasSubstr("Wr0ng-Temp-Pw")));
  EXPECT_EQ(aws->Calls("GetClusterCredentials"), 2);
}

TEST_F(RedshiftIamSourceTest, AwsRefusingTheKeyIsAConfigurationError) {
  auto aws = StartAws(server().password);
  RedshiftConfig config = IamConfig(*aws);
  config.iam.credentials.secret_access_key = "wrong";
  auto source = NewRedshiftSource(config, ConnectorEnv{http_.get(), &clock_});
  absl::Status status = source->CheckConnection();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << status;
  EXPECT_THAT(status.message(), HasSubstr("secret_access_key"));
  EXPECT_EQ(fake_->sessions(), 0);  // never reached the database
}

}  // namespace
}  // namespace backflow
