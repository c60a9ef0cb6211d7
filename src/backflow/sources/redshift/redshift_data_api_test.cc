// The redshift_data_api source: Field decoding, and whole queries against
// the SigV4-checking fake (submit, SUBMITTED→STARTED→FINISHED polling on a
// FakeClock, NextToken paging, every error class, cancel).
#include "backflow/sources/redshift/redshift_data_api.h"

#include <gtest/gtest.h>

#include "backflow/common/clock.h"
#include "backflow/sources/redshift/fake_redshift_aws_server.h"
#include "backflow/testing/cancelling_clock.h"

namespace backflow {
namespace {

using json = nlohmann::json;

RedshiftDataColumn Col(const std::string& type) {
  absl::StatusOr<RedshiftDataColumn> c =
      ParseRedshiftDataColumn({{"name", "c"}, {"typeName", type}});
  EXPECT_TRUE(c.ok());
  return *c;
}

Value Decode(const std::string& type, const json& field) {
  absl::StatusOr<Value> v = DecodeRedshiftDataField(Col(type), field);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : Value::Null();
}

TEST(RedshiftDataDecodeTest, DecodesByColumnType) {
  // int8 stays exact beyond 2^53.
  Value big = Decode("int8", json::parse(R"({"longValue": 9007199254740993})"));
  EXPECT_EQ(big.type(), ValueType::kInt64);
  EXPECT_EQ(big.int_value(), 9007199254740993);
  EXPECT_EQ(Decode("int4", {{"longValue", -5}}).int_value(), -5);
  // numeric stays decimal text as sent.
  Value dec = Decode("numeric", {{"stringValue", "12345678901234567890.10"}});
  EXPECT_EQ(dec.type(), ValueType::kDecimal);
  EXPECT_EQ(dec.text(), "12345678901234567890.10");
  Value tz = Decode("timestamptz", {{"stringValue", "2024-06-01 08:00:00.123+00"}});
  EXPECT_EQ(tz.type(), ValueType::kTimestamp);
  EXPECT_EQ(tz.text(), "2024-06-01T08:00:00.123Z");
  Value ts = Decode("timestamp", {{"stringValue", "2024-06-01 08:00:00"}});
  EXPECT_EQ(ts.text(), "2024-06-01T08:00:00");
  Value b = Decode("bool", {{"booleanValue", true}});
  EXPECT_EQ(b.type(), ValueType::kBool);
  EXPECT_TRUE(b.bool_value());
  Value super = Decode("super", {{"stringValue", "{\"a\": [1, 2]}"}});
  EXPECT_EQ(super.type(), ValueType::kJson);
  EXPECT_EQ(super.text(), R"({"a":[1,2]})");
  Value d = Decode("float8", {{"doubleValue", 1.5}});
  EXPECT_EQ(d.type(), ValueType::kDouble);
  EXPECT_EQ(d.double_value(), 1.5);
  Value blob = Decode("varbyte", {{"blobValue", "AAH/"}});
  EXPECT_EQ(blob.type(), ValueType::kBytes);
  EXPECT_EQ(blob.text(), std::string("\x00\x01\xff", 3));
  EXPECT_EQ(Decode("date", {{"stringValue", "2024-06-01"}}).type(), ValueType::kDate);
  EXPECT_EQ(Decode("character varying", {{"stringValue", "x"}}).text(), "x");
  EXPECT_TRUE(Decode("int8", {{"isNull", true}}).is_null());
  // A long for a numeric column becomes exact decimal text.
  EXPECT_EQ(Decode("numeric", {{"longValue", 42}}).text(), "42");

  EXPECT_EQ(Col("numeric").column.type, ValueType::kDecimal);
  EXPECT_EQ(Col("int8").column.type, ValueType::kInt64);
  EXPECT_EQ(Col("geometry").column.type, ValueType::kString);

  EXPECT_FALSE(DecodeRedshiftDataField(Col("int8"), {{"stringValue", "x"}}).ok());
  EXPECT_FALSE(DecodeRedshiftDataField(Col("int8"), json::array()).ok());
  EXPECT_FALSE(DecodeRedshiftDataField(Col("int8"), {{"longValue", 1}, {"isNull", true}}).ok());
  EXPECT_FALSE(DecodeRedshiftDataField(Col("varbyte"), {{"blobValue", "!!"}}).ok());
}

class RedshiftDataApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeRedshiftAwsOptions options;
    options.clock = &clock_;
    options.page_rows = 7;
    options.polls_submitted = 2;
    options.polls_started = 2;
    options.column_types = {{"ltv", "numeric"}, {"updated_at", "timestamptz"}};
    fake_ = std::make_unique<FakeRedshiftAwsServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    ASSERT_TRUE(fake_
                    ->Exec("CREATE TABLE users (id bigint, email varchar(64), ltv text, "
                           "updated_at text, active boolean, attrs super);"
                           "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g "
                           "WHERE n < 50) INSERT INTO users SELECT n + 9007199254740000, "
                           "'user' || n || '@example.com', n || '.25', "
                           "'2024-06-01 08:00:0' || (n % 10) || '.5+00', n % 2, "
                           "CASE WHEN n % 5 = 0 THEN NULL ELSE '{\"n\": ' || n || '}' END "
                           "FROM g;")
                    .ok());
    http_ = NewCurlHttpClient();
  }

  json Settings() {
    return {{"access_key_id", "AKIDEXAMPLE"},
            {"secret_access_key", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"},
            {"region", "us-east-1"},
            {"database", "dev"},
            {"cluster_identifier", "examplecluster"},
            {"db_user", "analytics"},
            {"base_url", fake_->Url()},
            {"max_retries", 3},
            {"timeout_ms", 10000},
            {"max_retry_wait_s", 5}};
  }

  std::unique_ptr<Source> NewSource(json settings) {
    absl::StatusOr<RedshiftDataApiConfig> c = ParseRedshiftDataApiSettings(settings);
    EXPECT_TRUE(c.ok()) << c.status();
    absl::StatusOr<std::unique_ptr<Source>> s =
        NewRedshiftDataApiSource(*c, ConnectorEnv{http_.get(), &clock_});
    EXPECT_TRUE(s.ok()) << s.status();
    return std::move(*s);
  }

  std::atomic<bool> cancel_{false};  // set by clock_ when a test asks
  CancellingClock clock_{&cancel_};
  std::unique_ptr<FakeRedshiftAwsServer> fake_;
  std::unique_ptr<HttpClient> http_;
};

TEST_F(RedshiftDataApiTest, FullMultiPageExtraction) {
  auto source = NewSource(Settings());
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      source->Query("SELECT id, email, ltv, updated_at, active, attrs FROM users ORDER BY id;");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const Schema& schema = (*reader)->schema();
  ASSERT_EQ(schema.size(), 6u);
  EXPECT_EQ(schema[0].type, ValueType::kInt64);
  EXPECT_EQ(schema[2].type, ValueType::kDecimal);
  EXPECT_EQ(schema[3].type, ValueType::kTimestamp);
  EXPECT_EQ(schema[4].type, ValueType::kBool);
  EXPECT_EQ(schema[5].type, ValueType::kJson);
  Row row;
  int n = 0;
  while (true) {
    absl::StatusOr<bool> got = (*reader)->Next(row);
    ASSERT_TRUE(got.ok()) << got.status();
    if (!*got) break;
    ++n;
    EXPECT_EQ(row[0].int_value(), 9007199254740000 + n);
    EXPECT_EQ(row[1].text(), "user" + std::to_string(n) + "@example.com");
    EXPECT_EQ(row[2].text(), std::to_string(n) + ".25");
    EXPECT_EQ(row[3].text(), "2024-06-01T08:00:0" + std::to_string(n % 10) + ".5Z");
    EXPECT_EQ(row[4].bool_value(), n % 2 == 1);
    if (n % 5 == 0) {
      EXPECT_TRUE(row[5].is_null());
    } else {
      EXPECT_EQ(row[5].text(), "{\"n\":" + std::to_string(n) + "}");
    }
  }
  EXPECT_EQ(n, 50);
  EXPECT_EQ(fake_->Calls("GetStatementResult"), 8);  // 7 rows per page
  EXPECT_EQ(fake_->Calls("DescribeStatement"), 5);   // 2 SUBMITTED, 2 STARTED, FINISHED
  EXPECT_GE(clock_.total_slept(), std::chrono::milliseconds(100 + 200 + 400 + 800));
  auto execs = fake_->ExecuteRequests();
  ASSERT_EQ(execs.size(), 1u);
  EXPECT_EQ(execs[0]["Database"], "dev");
  EXPECT_EQ(execs[0]["ClusterIdentifier"], "examplecluster");
  EXPECT_EQ(execs[0]["DbUser"], "analytics");
  EXPECT_EQ(execs[0]["Sql"],
            "SELECT id, email, ltv, updated_at, active, attrs FROM users ORDER BY id");
  EXPECT_FALSE(execs[0].value("ClientToken", "").empty());
  EXPECT_TRUE(fake_->CancelRequests().empty());  // read to the end: nothing cancelled
  EXPECT_EQ(fake_->auth_refusals(), 0);
}

TEST_F(RedshiftDataApiTest, CheckConnectionAndServerless) {
  json s = Settings();
  s.erase("cluster_identifier");
  s.erase("db_user");
  s["workgroup_name"] = "retl-wg";
  auto source = NewSource(s);
  EXPECT_TRUE(source->CheckConnection().ok());
  EXPECT_EQ(fake_->ExecuteRequests().back()["WorkgroupName"], "retl-wg");
  EXPECT_FALSE(fake_->ExecuteRequests().back().contains("DbUser"));
}

TEST_F(RedshiftDataApiTest, PreviewStopsEarlyAndCancels) {
  auto source = NewSource(Settings());
  {
    absl::StatusOr<std::unique_ptr<RowReader>> reader =
        source->Query(LimitQuery("SELECT id FROM users", 10));
    ASSERT_TRUE(reader.ok()) << reader.status();
    Row row;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(*(*reader)->Next(row));
  }  // dropped before its end
  EXPECT_EQ(fake_->CancelRequests().size(), 1u);
  EXPECT_EQ(fake_->Calls("GetStatementResult"), 1);  // only the page in use was read
}

TEST_F(RedshiftDataApiTest, WrongSecretIsAConfigurationError) {
  json s = Settings();
  s["secret_access_key"] = "wrong";
  auto source = NewSource(s);
  absl::Status st = source->CheckConnection();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(st.message().find("InvalidSignatureException"), std::string::npos);
  EXPECT_NE(st.message().find("secret_access_key"), std::string::npos);
  EXPECT_EQ(fake_->auth_refusals(), 1);
}

TEST_F(RedshiftDataApiTest, FailedStatementIsAQueryError) {
  auto source = NewSource(Settings());
  absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query("SELECT nope FROM users");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(reader.status().message().find("no such column: nope"), std::string::npos);
  EXPECT_TRUE(fake_->CancelRequests().empty());  // a failed statement needs no cancel
}

TEST_F(RedshiftDataApiTest, ValidationExceptionIsNotRetried) {
  fake_->InjectError({"ExecuteStatement", 1, 400, "ValidationException", "Sql is too long"});
  auto source = NewSource(Settings());
  absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query("SELECT 1");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(reader.status().message().find("Sql is too long"), std::string::npos);
  EXPECT_EQ(fake_->Calls("ExecuteStatement"), 1);
}

TEST_F(RedshiftDataApiTest, ThrottlingAndActiveStatementsAreRetried) {
  fake_->InjectError({"ExecuteStatement", 1, 400, "ThrottlingException", "Rate exceeded"});
  fake_->InjectError({"ExecuteStatement", 1, 400, "ActiveStatementsExceededException",
                      "Active statements exceeded the allowed quota (500)."});
  fake_->InjectError({"DescribeStatement", 1, 429, "ThrottlingException", "Rate exceeded"});
  fake_->InjectError({"GetStatementResult", 1, 500, "InternalServerException", "oops"});
  auto source = NewSource(Settings());
  absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query("SELECT id FROM users");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int n = 0;
  while (*(*reader)->Next(row)) ++n;
  EXPECT_EQ(n, 50);
  // The re-sent submit carried the same ClientToken: one statement.
  auto execs = fake_->ExecuteRequests();
  ASSERT_EQ(execs.size(), 3u);
  EXPECT_EQ(execs[0]["ClientToken"], execs[2]["ClientToken"]);
}

TEST_F(RedshiftDataApiTest, PersistentThrottlingIsRateLimited) {
  fake_->InjectError({"ExecuteStatement", 10, 400, "ThrottlingException", "Rate exceeded"});
  auto source = NewSource(Settings());
  absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query("SELECT 1");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(fake_->Calls("ExecuteStatement"), 4);
}

TEST_F(RedshiftDataApiTest, PersistentServerErrorIsTransientAndCancels) {
  fake_->InjectError({"DescribeStatement", 10, 500, "InternalServerException", "oops"});
  auto source = NewSource(Settings());
  absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query("SELECT 1");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnavailable);
  ASSERT_EQ(fake_->CancelRequests().size(), 1u);
}

TEST_F(RedshiftDataApiTest, TimeoutCancelsTheRunningStatement) {
  fake_->SetPollsBeforeFinish(1, 1000000);
  json s = Settings();
  s["query_timeout_s"] = 30;
  auto source = NewSource(s);
  absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query("SELECT 1");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kDeadlineExceeded);
  auto cancels = fake_->CancelRequests();
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(fake_->StatementStatus(cancels[0]), "ABORTED");
}

TEST_F(RedshiftDataApiTest, CancelWhilePollingCancelsTheStatementAndStopsPolling) {
  fake_->SetPollsBeforeFinish(1, 1000000);
  clock_.CancelDuringSleep(3);  // three DescribeStatement calls, then the run is cancelled
  auto source = NewSource(Settings());
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      source->Query("SELECT id FROM users", QueryOptions{"id", &cancel_});
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  auto cancels = fake_->CancelRequests();
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_NE(reader.status().message().find(cancels[0]), std::string::npos) << reader.status();
  EXPECT_EQ(fake_->StatementStatus(cancels[0]), "ABORTED");
  EXPECT_EQ(fake_->Calls("DescribeStatement"), 3);  // none after the cancel
  EXPECT_EQ(fake_->Calls("GetStatementResult"), 0);
  EXPECT_EQ(clock_.sleeps(), 3);
}

TEST_F(RedshiftDataApiTest, AlreadyCancelledRunSubmitsNothing) {
  cancel_ = true;
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      NewSource(Settings())->Query("SELECT id FROM users", QueryOptions{"id", &cancel_});
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_EQ(fake_->Calls("ExecuteStatement"), 0);
  EXPECT_TRUE(fake_->CancelRequests().empty());
}

TEST_F(RedshiftDataApiTest, CancelBetweenPagesStopsFetching) {
  auto source = NewSource(Settings());
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      source->Query("SELECT id FROM users ORDER BY id", QueryOptions{"id", &cancel_});
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(*(*reader)->Next(row));  // the first page
  cancel_ = true;
  EXPECT_EQ((*reader)->Next(row).status().code(), absl::StatusCode::kCancelled);
  reader->reset();  // no second CancelStatement when dropped
  EXPECT_EQ(fake_->CancelRequests().size(), 1u);
  EXPECT_EQ(fake_->Calls("GetStatementResult"), 1);
}

TEST_F(RedshiftDataApiTest, AbortedStatementIsTransient) {
  fake_->AbortAtPoll(3);  // cancelled elsewhere (a user, WLM) while STARTED
  auto source = NewSource(Settings());
  absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query("SELECT 1");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(reader.status().message().find("aborted"), std::string::npos);
  EXPECT_TRUE(fake_->CancelRequests().empty());
}

TEST(RedshiftDataApiSettingsTest, Validates) {
  json base = {{"access_key_id", "AK"}, {"secret_access_key", "s"},  {"region", "us-east-1"},
               {"database", "dev"},     {"cluster_identifier", "c"}, {"db_user", "u"}};
  absl::StatusOr<RedshiftDataApiConfig> c = ParseRedshiftDataApiSettings(base);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->http.base_url, "https://redshift-data.us-east-1.amazonaws.com");
  json no_user = base;
  no_user.erase("db_user");
  EXPECT_NE(ParseRedshiftDataApiSettings(no_user).status().message().find("db_user"),
            std::string::npos);
  no_user["secret_arn"] = "arn:aws:secretsmanager:us-east-1:1:secret:x";
  EXPECT_TRUE(ParseRedshiftDataApiSettings(no_user).ok());
  json both = base;
  both["workgroup_name"] = "wg";
  EXPECT_FALSE(ParseRedshiftDataApiSettings(both).ok());
  json bad_region = base;
  bad_region["region"] = "US East";
  EXPECT_NE(ParseRedshiftDataApiSettings(bad_region).status().message().find("region"),
            std::string::npos);
}

}  // namespace
}  // namespace backflow
