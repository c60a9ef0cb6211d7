#include "backflow/sources/clickhouse/clickhouse_source.h"

#include <chrono>
#include <deque>
#include <iostream>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/sources/clickhouse/fake_clickhouse_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {

void PrintTo(const Value& v, std::ostream* os);  // clickhouse_rowbinary_test.cc

namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Outcome = ClickHouseQueryLog::Outcome;
using json = nlohmann::json;

Value Text(ValueType t, std::string s) { return Value::Text(t, std::move(s)); }

// Reads every row; returns them, and the error that ended the result (OK at a clean end).
std::pair<std::vector<Row>, absl::Status> Drain(RowReader& reader) {
  std::vector<Row> rows;
  while (true) {
    Row row;
    absl::StatusOr<bool> more = reader.Next(row);
    if (!more.ok()) return {rows, more.status()};
    if (!*more) return {rows, absl::OkStatus()};
    rows.push_back(std::move(row));
  }
}

class ClickHouseSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_ = std::make_unique<FakeClickHouseServer>();
    ASSERT_TRUE(fake_->Start().ok());
    FakeClickHouseUser user;
    user.name = "retl";
    user.password = "s3cret";
    fake_->AddUser(user);
    ASSERT_TRUE(fake_->CreateDatabase("analytics").ok());
    ASSERT_TRUE(fake_
                    ->CreateTable("analytics", "users",
                                  {{"id", "UInt64"},
                                   {"email", "Nullable(String)"},
                                   {"score", "Decimal(9, 2)"},
                                   {"updated_at", "DateTime('Europe/Berlin')"}})
                    .ok());
    http_ = NewCurlHttpClient();
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(fake_->Exec(sql).ok()) << sql; }

  // Users 1..n: id, email (NULL for multiples of 7), score, updated_at.
  void InsertUsers(int n) {
    Exec(fmt::format(
        "INSERT INTO analytics.users WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM "
        "c WHERE i < {}) SELECT i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'user' || i || "
        "'@example.com' END, (i * 10) || '.' || printf('%02d', i % 100), "
        "'2024-06-01 02:02:03' FROM c",
        n));
  }

  ClickHouseConfig Config() {
    ClickHouseConfig c;
    c.base_url = fake_->BaseUrl();
    c.user = "retl";
    c.password = "s3cret";
    c.database = "analytics";
    c.timeout = std::chrono::milliseconds(5000);
    c.retry.max_retries = 3;
    return c;
  }

  std::unique_ptr<Source> NewSource(ClickHouseConfig config) {
    ConnectorEnv env;
    env.http = http_.get();
    env.clock = &clock_;
    absl::StatusOr<std::unique_ptr<Source>> source = NewClickHouseSource(std::move(config), env);
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }

  std::unique_ptr<Source> NewSource() { return NewSource(Config()); }

  // The fake's log of the query with this id.
  ClickHouseQueryLog Log(const std::string& query_id) {
    for (const auto& q : fake_->Queries()) {
      if (q.query_id == query_id) return q;
    }
    ADD_FAILURE() << "no query " << query_id;
    return {};
  }

  std::vector<ClickHouseQueryLog> Selects() {
    std::vector<ClickHouseQueryLog> out;
    for (const auto& q : fake_->Queries()) {
      if (!q.sql.starts_with("KILL")) out.push_back(q);
    }
    return out;
  }

  FakeClock clock_;
  std::unique_ptr<HttpClient> http_;
  std::unique_ptr<FakeClickHouseServer> fake_;
};

TEST_F(ClickHouseSourceTest, DecodesEveryTypeExactly) {
  ASSERT_TRUE(fake_
                  ->CreateTable("analytics", "types",
                                {{"k", "UInt8"},
                                 {"i64", "Int64"},
                                 {"u64", "UInt64"},
                                 {"i128", "Int128"},
                                 {"dec", "Decimal(38, 9)"},
                                 {"f64", "Float64"},
                                 {"flag", "Bool"},
                                 {"s", "String"},
                                 {"fs", "FixedString(4)"},
                                 {"d", "Date"},
                                 {"d32", "Date32"},
                                 {"dt", "DateTime('Asia/Kolkata')"},
                                 {"dt64", "DateTime64(3, 'America/New_York')"},
                                 {"u", "UUID"},
                                 {"ip4", "IPv4"},
                                 {"ip6", "IPv6"},
                                 {"e", "Enum8('free' = 1, 'pro' = 2)"},
                                 {"lc", "LowCardinality(Nullable(String))"},
                                 {"arr", "Array(Nullable(Int32))"},
                                 {"m", "Map(String, UInt64)"},
                                 {"t", "Tuple(plan String, seats UInt16)"},
                                 {"v", "Variant(String, UInt64)"},
                                 {"n", "Nullable(Decimal(18, 4))"}})
                  .ok());
  Exec(R"(INSERT INTO analytics.types VALUES (1, '-9223372036854775808', '18446744073709551615',
        '-170141183460469231731687303715884105728', '12345678901234567890.123456789', 0.1, 'true',
        'caf' || char(233), 'ab', '2024-06-01', '1900-01-01', '2024-06-01 05:32:03',
        '2024-05-31 20:02:03.123', '61f0c404-5cb3-11e7-907b-a6006ad3dba0', '10.1.2.3', '2001:db8::1',
        'pro', 'x', '[1, null, 3]', '{"a": 18446744073709551615}', '["team", 5]', 'hello', NULL))");
  Exec(
      R"(INSERT INTO analytics.types VALUES (2, 42, 7, 0, '-0.5', -2.5, 0, '', 'abcd', '1970-01-01',
        '2299-12-31', '1970-01-01 05:30:00', '1969-12-31 19:00:00', '00000000-0000-0000-0000-000000000001',
        '0.0.0.0', '::ffff:1.2.3.4', 'free', NULL, '[]', '{}', '{"plan": "free", "seats": 1}', 99,
        '-12.3'))");
  auto source = NewSource();
  auto reader = source->Query("SELECT * FROM types ORDER BY k");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const Schema& schema = (*reader)->schema();
  ASSERT_EQ(schema.size(), 23u);
  std::vector<ValueType> want_types = {
      ValueType::kInt64,     ValueType::kInt64,  ValueType::kInt64,  ValueType::kDecimal,
      ValueType::kDecimal,   ValueType::kDouble, ValueType::kBool,   ValueType::kString,
      ValueType::kString,    ValueType::kDate,   ValueType::kDate,   ValueType::kTimestamp,
      ValueType::kTimestamp, ValueType::kString, ValueType::kString, ValueType::kString,
      ValueType::kString,    ValueType::kString, ValueType::kJson,   ValueType::kJson,
      ValueType::kJson,      ValueType::kJson,   ValueType::kDecimal};
  for (size_t i = 0; i < schema.size(); ++i) EXPECT_EQ(schema[i].type, want_types[i]) << i;
  EXPECT_EQ(schema[11].name, "dt");
  EXPECT_EQ(schema[11].source_type, "DateTime('Asia/Kolkata')");

  auto [rows, end] = Drain(**reader);
  ASSERT_TRUE(end.ok()) << end;
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], (Row{Value::Int64(1),
                          Value::Int64(std::numeric_limits<int64_t>::min()),
                          Text(ValueType::kDecimal, "18446744073709551615"),
                          Text(ValueType::kDecimal, "-170141183460469231731687303715884105728"),
                          Text(ValueType::kDecimal, "12345678901234567890.123456789"),
                          Value::Double(0.1),
                          Value::Bool(true),
                          Value::String("caf\xC3\xA9"),
                          Value::String("ab"),
                          Text(ValueType::kDate, "2024-06-01"),
                          Text(ValueType::kDate, "1900-01-01"),
                          Text(ValueType::kTimestamp, "2024-06-01T00:02:03Z"),
                          Text(ValueType::kTimestamp, "2024-06-01T00:02:03.123Z"),
                          Value::String("61f0c404-5cb3-11e7-907b-a6006ad3dba0"),
                          Value::String("10.1.2.3"),
                          Value::String("2001:db8::1"),
                          Value::String("pro"),
                          Value::String("x"),
                          Text(ValueType::kJson, "[1,null,3]"),
                          Text(ValueType::kJson, R"({"a":18446744073709551615})"),
                          Text(ValueType::kJson, R"({"plan":"team","seats":5})"),
                          Text(ValueType::kJson, R"("hello")"),
                          Value::Null()}));
  EXPECT_EQ(rows[1], (Row{Value::Int64(2),
                          Value::Int64(42),
                          Value::Int64(7),
                          Text(ValueType::kDecimal, "0"),
                          Text(ValueType::kDecimal, "-0.500000000"),
                          Value::Double(-2.5),
                          Value::Bool(false),
                          Value::String(""),
                          Value::String("abcd"),
                          Text(ValueType::kDate, "1970-01-01"),
                          Text(ValueType::kDate, "2299-12-31"),
                          Text(ValueType::kTimestamp, "1970-01-01T00:00:00Z"),
                          Text(ValueType::kTimestamp, "1970-01-01T00:00:00Z"),
                          Value::String("00000000-0000-0000-0000-000000000001"),
                          Value::String("0.0.0.0"),
                          Value::String("::ffff:1.2.3.4"),
                          Value::String("free"),
                          Value::Null(),
                          Text(ValueType::kJson, "[]"),
                          Text(ValueType::kJson, "{}"),
                          Text(ValueType::kJson, R"({"plan":"free","seats":1})"),
                          Text(ValueType::kJson, "99"),
                          Text(ValueType::kDecimal, "-12.3000")}));
}

TEST_F(ClickHouseSourceTest, SendsTheDocumentedRequest) {
  InsertUsers(3);
  auto source = NewSource();
  auto reader = source->Query("  SELECT id, email FROM users ORDER BY id;  ");
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto* ch = dynamic_cast<ClickHouseRowReader*>(reader->get());
  ASSERT_NE(ch, nullptr);
  EXPECT_THAT(ch->query_id(), StartsWith("backflow-"));
  auto [rows, end] = Drain(**reader);
  ASSERT_TRUE(end.ok()) << end;
  EXPECT_EQ(rows.size(), 3u);
  ClickHouseQueryLog log = Log(ch->query_id());
  EXPECT_EQ(log.sql, "SELECT id, email FROM users ORDER BY id");
  EXPECT_EQ(log.auth, "headers");
  EXPECT_EQ(log.user, "retl");
  EXPECT_EQ(log.database, "analytics");
  EXPECT_EQ(log.format, "RowBinaryWithNamesAndTypes");
  EXPECT_EQ(log.params["readonly"], "2");
  EXPECT_EQ(log.params["max_execution_time"], "3600");
  EXPECT_EQ(log.params["cancel_http_readonly_queries_on_client_close"], "1");
  EXPECT_EQ(log.params["enable_http_compression"], "1");
  EXPECT_THAT(log.accept_encoding, HasSubstr("gzip"));
  EXPECT_TRUE(log.compressed);
  EXPECT_EQ(log.outcome, Outcome::kFinished);
  // A clean end leaves nothing to cancel.
  reader->reset();
  EXPECT_TRUE(fake_->Kills().empty());

  // Basic auth, no compression, extra settings, a custom query id prefix.
  ClickHouseConfig c = Config();
  c.auth = ClickHouseAuth::kBasic;
  c.compression = false;
  c.readonly = false;
  c.query_id_prefix = "retl-42";
  c.settings = {{"max_threads", "2"}};
  source = NewSource(c);
  reader = source->Query("SELECT id FROM users");
  ASSERT_TRUE(reader.ok()) << reader.status();
  ch = dynamic_cast<ClickHouseRowReader*>(reader->get());
  EXPECT_THAT(ch->query_id(), StartsWith("retl-42-"));
  ASSERT_TRUE(Drain(**reader).second.ok());
  log = Log(ch->query_id());
  EXPECT_EQ(log.auth, "basic");
  EXPECT_EQ(log.params.count("enable_http_compression"), 0u);
  EXPECT_EQ(log.params.count("readonly"), 0u);
  EXPECT_EQ(log.params["max_threads"], "2");
  EXPECT_FALSE(log.compressed);
}

TEST_F(ClickHouseSourceTest, CheckConnectionReportsWhatToFix) {
  EXPECT_TRUE(NewSource()->CheckConnection().ok());

  ClickHouseConfig c = Config();
  c.password = "wrong";
  absl::Status s = NewSource(c)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(s.message(), HasSubstr("AUTHENTICATION_FAILED"));
  EXPECT_THAT(s.message(), HasSubstr("check `user` and `password`"));

  c = Config();
  c.user = "nobody";
  EXPECT_EQ(NewSource(c)->CheckConnection().code(), absl::StatusCode::kUnauthenticated);

  // A missing password: the user is named, the key is not.
  c = Config();
  c.password = "";
  s = NewSource(c)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(s.message(), HasSubstr("user \"retl\""));

  c = Config();
  c.database = "analytcs";
  s = NewSource(c)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("Check `database`"));

  // Nothing here is worth retrying.
  EXPECT_EQ(clock_.total_slept(), Clock::Duration(0));
}

TEST_F(ClickHouseSourceTest, ModelErrorsAreInvalidArgument) {
  auto source = NewSource();
  auto r = source->Query("SELEC 1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("SYNTAX_ERROR"));
  r = source->Query("SELECT * FROM missing_table");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("Code: 60. DB::Exception"));
  EXPECT_THAT(r.status().message(), HasSubstr("HTTP 404"));
  r = source->Query("SELECT 1; SELECT 2");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  // throwIf() inside the first block fails before the body: a real status.
  InsertUsers(10);
  r = source->Query("SELECT id, throwIf(id = 3, 'bad id') FROM users");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("bad id"));
  EXPECT_THAT(r.status().message(), HasSubstr("HTTP 500"));
  // The model chose its own format: refused, and the query is killed.
  r = source->Query("SELECT id FROM users FORMAT JSONEachRow");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("Remove its FORMAT clause"));
  EXPECT_EQ(fake_->Kills().size(), 1u);
  // None of these was retried.
  EXPECT_EQ(Selects().size(), 5u);
}

TEST_F(ClickHouseSourceTest, PermissionsAndSettingsAreConfigurationErrors) {
  FakeClickHouseUser limited;
  limited.name = "limited";
  limited.grants = {"analytics.orders"};
  fake_->AddUser(limited);
  ClickHouseConfig c = Config();
  c.user = "limited";
  c.password = "";
  auto r = NewSource(c)->Query("SELECT * FROM users");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("GRANT SELECT"));

  FakeClickHouseUser ro;
  ro.name = "ro";
  ro.profile_readonly = 1;
  fake_->AddUser(ro);
  c.user = "ro";
  r = NewSource(c)->Query("SELECT 1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("readonly=2"));

  c = Config();
  c.settings = {{"max_theads", "4"}};
  r = NewSource(c)->Query("SELECT 1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("UNKNOWN_SETTING"));
  EXPECT_THAT(r.status().message(), HasSubstr("remove it from `settings`"));
}

TEST_F(ClickHouseSourceTest, RetriesTransientFailuresWithNewQueryIds) {
  InsertUsers(5);
  fake_->FailNext(FakeClickHouseFailure::Before(202, "Too many simultaneous queries. Maximum: 8"));
  fake_->FailNext(FakeClickHouseFailure::Before(209, "Timeout exceeded while reading from socket"));
  fake_->FailNext(FakeClickHouseFailure::Reset());
  auto source = NewSource();
  auto reader = source->Query("SELECT id FROM users");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(Drain(**reader).first.size(), 5u);
  std::vector<ClickHouseQueryLog> selects = Selects();
  ASSERT_EQ(selects.size(), 4u);
  EXPECT_EQ(selects[0].status, 500);
  EXPECT_EQ(selects[1].status, 503);
  EXPECT_EQ(selects[2].status, 0);  // reset
  EXPECT_EQ(selects[3].outcome, Outcome::kFinished);
  std::set<std::string> ids;
  for (const auto& q : selects) ids.insert(q.query_id);
  EXPECT_EQ(ids.size(), 4u);
  // The reset attempt may have left its query running: it was killed.
  std::vector<ClickHouseKill> kills = fake_->Kills();
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_EQ(kills[0].query_id, selects[2].query_id);
  EXPECT_GT(clock_.total_slept(), Clock::Duration(0));

  // Exhausted: a server at its concurrency limit is a rate limit.
  ClickHouseConfig c = Config();
  c.retry.max_retries = 2;
  for (int i = 0; i < 3; ++i) fake_->FailNext(FakeClickHouseFailure::Before(202, "Too many"));
  auto r = NewSource(c)->Query("SELECT id FROM users");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("after 3 attempts"));
  EXPECT_EQ(ClassifyStatus(r.status()), RetryClass::kRateLimited);
}

TEST_F(ClickHouseSourceTest, MemoryLimitIsRetriedOnlyWhenServerWide) {
  InsertUsers(2);
  auto source = NewSource();
  fake_->FailNext(FakeClickHouseFailure::Before(
      241, "Memory limit (for query) exceeded: would use 9.31 GiB, maximum: 9.31 GiB"));
  auto r = source->Query("SELECT id FROM users");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("max_memory_usage"));
  EXPECT_EQ(Selects().size(), 1u);

  fake_->FailNext(FakeClickHouseFailure::Before(
      241, "Memory limit (total) exceeded: would use 60.00 GiB, maximum: 56.00 GiB"));
  r = source->Query("SELECT id FROM users");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Selects().size(), 3u);
}

TEST_F(ClickHouseSourceTest, TheServersConcurrencyLimitIsHonoured) {
  InsertUsers(20);
  fake_->set_block_rows(5);
  fake_->set_max_concurrent_queries(1);
  fake_->StallAfterRows(5);
  auto source = NewSource();
  auto first = source->Query("SELECT id FROM users ORDER BY id");
  ASSERT_TRUE(first.ok()) << first.status();
  Row row;
  ASSERT_TRUE((*first)->Next(row).value_or(false));
  ClickHouseConfig c = Config();
  c.retry.max_retries = 1;
  auto second = NewSource(c)->Query("SELECT id FROM users");
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr("TOO_MANY_SIMULTANEOUS_QUERIES"));
  fake_->ReleaseStalled();
  auto [rows, end] = Drain(**first);
  ASSERT_TRUE(end.ok()) << end;
  EXPECT_EQ(rows.size(), 19u);
}

struct FramingCase {
  ClickHouseExceptionFraming framing;
  bool compression;
};

class ClickHouseMidStreamTest : public ClickHouseSourceTest,
                                public ::testing::WithParamInterface<FramingCase> {};

TEST_P(ClickHouseMidStreamTest, AFailureAfterRowsIsAnErrorNeverAnEnd) {
  InsertUsers(1000);
  fake_->set_framing(GetParam().framing);
  fake_->set_block_rows(100);
  ClickHouseConfig c = Config();
  c.compression = GetParam().compression;
  auto source = NewSource(c);

  fake_->FailNext(FakeClickHouseFailure::MidStream(
      250, 241, "Memory limit (for query) exceeded: would use 9.31 GiB"));
  auto reader = source->Query("SELECT id, email, score FROM users ORDER BY id");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::string query_id = dynamic_cast<ClickHouseRowReader&>(**reader).query_id();
  auto [rows, error] = Drain(**reader);
  EXPECT_EQ(rows.size(), 250u);  // the exception is never read as rows
  EXPECT_EQ(error.code(), absl::StatusCode::kFailedPrecondition) << error;
  EXPECT_THAT(error.message(), HasSubstr("Code: 241. DB::Exception: Memory limit (for query)"));
  EXPECT_THAT(error.message(), HasSubstr("while sending rows"));
  EXPECT_THAT(error.message(), HasSubstr("after 250 rows"));
  EXPECT_THAT(error.message(), ::testing::Not(HasSubstr("__exception__")));
  Row row;
  EXPECT_EQ((*reader)->Next(row).status(), error);  // sticky
  reader->reset();
  // A failed reader cancels its query.
  ASSERT_EQ(fake_->Kills().size(), 1u);
  EXPECT_EQ(fake_->Kills()[0].query_id, query_id);
  EXPECT_EQ(Log(query_id).outcome, Outcome::kFailedMidStream);

  // A runtime error of the model's SQL after the first block: kInvalidArgument.
  reader = source->Query("SELECT id, throwIf(id = 777, 'id 777 is cursed') AS t FROM users");
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::tie(rows, error) = Drain(**reader);
  EXPECT_EQ(rows.size(), 700u);  // the blocks before the failing one
  EXPECT_EQ(error.code(), absl::StatusCode::kInvalidArgument) << error;
  EXPECT_THAT(error.message(), HasSubstr("id 777 is cursed"));

  // A transient exception (the query was killed elsewhere): kUnavailable.
  fake_->FailNext(FakeClickHouseFailure::MidStream(100, 394, "Query was cancelled"));
  reader = source->Query("SELECT id FROM users");
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::tie(rows, error) = Drain(**reader);
  EXPECT_EQ(rows.size(), 100u);
  EXPECT_EQ(error.code(), absl::StatusCode::kUnavailable) << error;
  EXPECT_THAT(error.message(), HasSubstr("QUERY_WAS_CANCELLED"));

  // An exception right after the header, before any row.
  fake_->FailNext(FakeClickHouseFailure::MidStream(0, 395, "nothing to see"));
  reader = source->Query("SELECT id FROM users");
  if (reader.ok()) {
    std::tie(rows, error) = Drain(**reader);
    EXPECT_TRUE(rows.empty());
  } else {
    error = reader.status();
  }
  EXPECT_EQ(error.code(), absl::StatusCode::kInvalidArgument) << error;
  EXPECT_THAT(error.message(), HasSubstr("nothing to see"));
}

INSTANTIATE_TEST_SUITE_P(
    Framings, ClickHouseMidStreamTest,
    ::testing::Values(FramingCase{ClickHouseExceptionFraming::kTag, true},
                      FramingCase{ClickHouseExceptionFraming::kTag, false},
                      FramingCase{ClickHouseExceptionFraming::kMarker, true},
                      FramingCase{ClickHouseExceptionFraming::kMarker, false},
                      FramingCase{ClickHouseExceptionFraming::kAppendedText, true},
                      FramingCase{ClickHouseExceptionFraming::kAppendedText, false}));

TEST_F(ClickHouseSourceTest, DroppingAReaderKillsItsQuery) {
  InsertUsers(400);
  fake_->set_block_rows(50);
  fake_->StallAfterRows(150);
  // Without readonly, closing the connection does not stop the query: only KILL does.
  ClickHouseConfig c = Config();
  c.readonly = false;
  auto source = NewSource(c);
  auto reader = source->Query("SELECT id FROM users");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::string query_id = dynamic_cast<ClickHouseRowReader&>(**reader).query_id();
  Row row;
  for (int i = 0; i < 100; ++i) ASSERT_TRUE((*reader)->Next(row).value_or(false));
  EXPECT_EQ(fake_->RunningQueries(), 1);
  reader->reset();
  std::vector<ClickHouseKill> kills = fake_->Kills();
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_EQ(kills[0].query_id, query_id);
  EXPECT_EQ(kills[0].user, "retl");
  EXPECT_TRUE(kills[0].was_running);
  EXPECT_TRUE(fake_->WaitUntilIdle(std::chrono::seconds(10)));
  EXPECT_EQ(Log(query_id).outcome, Outcome::kKilled);

  // Read-only queries also stop when the connection closes; either way the query ends.
  source = NewSource();
  reader = source->Query("SELECT id FROM users");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::string second = dynamic_cast<ClickHouseRowReader&>(**reader).query_id();
  ASSERT_TRUE((*reader)->Next(row).value_or(false));
  reader->reset();
  EXPECT_TRUE(fake_->WaitUntilIdle(std::chrono::seconds(10)));
  EXPECT_THAT(Log(second).outcome, AnyOf(Outcome::kCancelledOnClose, Outcome::kKilled));
  kills = fake_->Kills();
  ASSERT_EQ(kills.size(), 2u);
  EXPECT_EQ(kills[1].query_id, second);
}

TEST_F(ClickHouseSourceTest, LargeResultsStreamWithBoundedMemory) {
  // 150,000 rows of ~100 bytes: 15 MB that must never be held at once.
  Exec(
      "CREATE TABLE big AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE "
      "i < 150000) SELECT i AS id, printf('%090d', i) AS payload FROM c");
  fake_->set_block_rows(1000);
  ClickHouseConfig c = Config();
  c.compression = false;
  c.stream_buffer_bytes = 16 * 1024;
  auto source = NewSource(c);
  auto reader = source->Query("SELECT id, payload FROM big");
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto& ch = dynamic_cast<ClickHouseRowReader&>(**reader);
  Row row;
  ASSERT_TRUE((*reader)->Next(row).value_or(false));
  // The server is held back while the reader does not read.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int64_t produced = fake_->BytesProduced(ch.query_id());
  EXPECT_LT(produced, 8'000'000) << "the result was buffered, not streamed";
  std::cout << "bytes produced while the reader held back: " << produced << "\n";
  int64_t count = 1, sum = row[0].int_value();
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(row);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    ++count;
    sum += row[0].int_value();
    if (count % 50000 == 0) {
      ASSERT_EQ(row[1].text().size(), 90u);
    }
  }
  EXPECT_EQ(count, 150000);
  EXPECT_EQ(sum, int64_t{150000} * 150001 / 2);
  EXPECT_EQ(fake_->BytesProduced(ch.query_id()), 150000 * 99 + 25);  // rows + header
  // One network piece plus a partial row, never the result.
  EXPECT_LE(ch.peak_buffered_bytes(), 40u * 1024);

  // Compressed, the same result arrives whole, still within bounds.
  c.compression = true;
  reader = NewSource(c)->Query("SELECT id, payload FROM big");
  ASSERT_TRUE(reader.ok()) << reader.status();
  count = 0;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(row);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    ++count;
    if (count == 150000) {
      EXPECT_EQ(row[1].text(), fmt::format("{:090d}", 150000));
    }
  }
  EXPECT_EQ(count, 150000);
  EXPECT_LE(dynamic_cast<ClickHouseRowReader&>(**reader).peak_buffered_bytes(), 40u * 1024);
}

TEST_F(ClickHouseSourceTest, JsonColumnsNeedTheJsonAsStringSetting) {
  ASSERT_TRUE(fake_->CreateTable("analytics", "docs", {{"id", "UInt8"}, {"doc", "JSON"}}).ok());
  Exec(R"(INSERT INTO analytics.docs VALUES (1, '{"a": {"b": [1, 2]}}'))");
  auto r = NewSource()->Query("SELECT * FROM docs");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("output_format_binary_write_json_as_string"));
  ClickHouseConfig c = Config();
  c.settings = {{"output_format_binary_write_json_as_string", "1"}};
  r = NewSource(c)->Query("SELECT * FROM docs");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->schema()[1].type, ValueType::kJson);
  auto [rows, end] = Drain(**r);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][1], Text(ValueType::kJson, R"({"a":{"b":[1,2]}})"));
}

TEST_F(ClickHouseSourceTest, UnreachableServerIsUnavailable) {
  ClickHouseConfig c = Config();
  fake_->Stop();
  c.retry.max_retries = 1;
  auto r = NewSource(c)->Query("SELECT 1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("could not reach ClickHouse at " + c.base_url));
  EXPECT_THAT(r.status().message(), HasSubstr("after 2 attempts"));
}

// --- Replies the fake does not produce, through a canned stream. -----------------

class CannedStream : public HttpResponseStream {
 public:
  int status_code = 200;
  HttpHeaders header_list;
  std::deque<std::string> pieces;
  absl::Status final_status;  // after the pieces: OK = clean end
  HttpHeaders trailer_list;

  int status() const override { return status_code; }
  const HttpHeaders& headers() const override { return header_list; }
  const HttpHeaders& trailers() const override { return trailer_list; }
  size_t peak_buffered_bytes() const override { return 0; }
  absl::StatusOr<bool> Read(std::string& piece) override {
    if (!pieces.empty()) {
      piece = pieces.front();
      pieces.pop_front();
      return true;
    }
    if (!final_status.ok()) return final_status;
    return false;
  }
};

class CannedClient : public HttpStreamClient {
 public:
  std::function<std::unique_ptr<CannedStream>()> make;
  absl::StatusOr<std::unique_ptr<HttpResponseStream>> Open(const HttpRequest&,
                                                           const HttpStreamOptions&) override {
    return std::unique_ptr<HttpResponseStream>(make());
  }
};

std::string Leb(size_t n) { return std::string(1, static_cast<char>(n)); }

// Header for one UInt32 column "n", then the rows.
std::string OneColumn(std::vector<uint32_t> values) {
  std::string out = Leb(1) + Leb(1) + "n" + Leb(6) + "UInt32";
  for (uint32_t v : values) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  }
  return out;
}

class ClickHouseCannedTest : public ::testing::Test {
 protected:
  std::unique_ptr<Source> Make(std::function<std::unique_ptr<CannedStream>()> make,
                               int max_retries = 0) {
    auto client = std::make_shared<CannedClient>();
    client->make = std::move(make);
    ClickHouseConfig c;
    c.base_url = "http://127.0.0.1:1";  // KILL QUERY goes nowhere
    c.retry.max_retries = max_retries;
    c.timeout = std::chrono::milliseconds(200);
    ConnectorEnv env;
    env.http = http_.get();
    env.clock = &clock_;
    return *NewClickHouseSource(c, env, client);
  }
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

TEST_F(ClickHouseCannedTest, BrokenBodiesAreErrors) {
  // Split across pieces anywhere: still decoded.
  auto source = Make([] {
    auto s = std::make_unique<CannedStream>();
    std::string body = OneColumn({1, 2, 3});
    for (char c : body) s->pieces.push_back(std::string(1, c));
    return s;
  });
  auto reader = source->Query("SELECT n");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(Drain(**reader).first.size(), 3u);

  // A clean end inside a row.
  source = Make([] {
    auto s = std::make_unique<CannedStream>();
    std::string body = OneColumn({1, 2});
    body.pop_back();
    s->pieces.push_back(body);
    return s;
  });
  reader = source->Query("SELECT n");
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto [rows, error] = Drain(**reader);
  EXPECT_EQ(rows.size(), 1u);
  EXPECT_EQ(error.code(), absl::StatusCode::kUnavailable) << error;
  EXPECT_THAT(error.message(), HasSubstr("ended inside row 2"));

  // The connection breaks without an exception.
  source = Make([] {
    auto s = std::make_unique<CannedStream>();
    s->pieces.push_back(OneColumn({1}));
    s->final_status = absl::UnavailableError("transfer closed with outstanding read data");
    return s;
  });
  reader = source->Query("SELECT n");
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::tie(rows, error) = Drain(**reader);
  EXPECT_EQ(rows.size(), 1u);
  EXPECT_EQ(error.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(error.message(), HasSubstr("broke after 1 rows"));

  // An exception code in the trailers.
  source = Make([] {
    auto s = std::make_unique<CannedStream>();
    s->pieces.push_back(OneColumn({1, 2}));
    s->trailer_list = {{"x-clickhouse-exception-code", "159"}};
    return s;
  });
  reader = source->Query("SELECT n");
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::tie(rows, error) = Drain(**reader);
  EXPECT_EQ(rows.size(), 2u);
  EXPECT_EQ(error.code(), absl::StatusCode::kFailedPrecondition) << error;
  EXPECT_THAT(error.message(), HasSubstr("query_timeout_s"));

  // Bytes that contradict the types.
  source = Make([] {
    auto s = std::make_unique<CannedStream>();
    const std::string type = "Enum8('a' = 1)";
    s->pieces.push_back(Leb(1) + Leb(1) + "e" + Leb(type.size()) + type + "\x09");
    return s;
  });
  reader = source->Query("SELECT e");
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::tie(rows, error) = Drain(**reader);
  EXPECT_EQ(error.code(), absl::StatusCode::kDataLoss) << error;
  EXPECT_THAT(error.message(), HasSubstr("enum value 9"));
}

TEST_F(ClickHouseCannedTest, RepliesThatAreNotClickHouse) {
  auto source = Make([] {
    auto s = std::make_unique<CannedStream>();
    s->status_code = 400;
    s->pieces.push_back(
        "Port 9000 is for clickhouse-client program\nYou must use port 8123 for HTTP.\n");
    return s;
  });
  auto r = source->Query("SELECT 1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("native protocol port"));

  // An exception code on a 200 (an error before the data, after the status).
  source = Make([] {
    auto s = std::make_unique<CannedStream>();
    s->header_list = {{"x-clickhouse-exception-code", "497"}};
    s->pieces.push_back("Code: 497. DB::Exception: retl: Not enough privileges. (ACCESS_DENIED)");
    return s;
  });
  r = source->Query("SELECT 1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();

  // A proxy's 502, retried, then given up.
  int opened = 0;
  source = Make(
      [&opened] {
        ++opened;
        auto s = std::make_unique<CannedStream>();
        s->status_code = 502;
        s->pieces.push_back("<html>Bad Gateway</html>");
        return s;
      },
      /*max_retries=*/2);
  r = source->Query("SELECT 1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_EQ(opened, 3);

  // REQUIRED_PASSWORD (no credentials at all, behind a proxy that strips them).
  source = Make([] {
    auto s = std::make_unique<CannedStream>();
    s->status_code = 401;
    s->header_list = {{"x-clickhouse-exception-code", "194"}};
    s->pieces.push_back(
        "Code: 194. DB::Exception: default: Authentication failed: password is incorrect, or "
        "there is no user with such name. (REQUIRED_PASSWORD) (version 25.3.1.1)");
    return s;
  });
  r = source->Query("SELECT 1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("needs a password"));

  // An empty 200 body.
  source = Make([] { return std::make_unique<CannedStream>(); });
  r = source->Query("SELECT 1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("header"));
}

// --- Exception text -----------------------------------------------------------------

TEST(ClickHouseExceptionTest, ParsesCodeAndName) {
  ClickHouseException ex = ParseClickHouseException(
      "Code: 60. DB::Exception: Table analytics.userz does not exist. (UNKNOWN_TABLE) (version "
      "25.3.2.39 (official build))\n");
  EXPECT_EQ(ex.code, 60);
  EXPECT_EQ(ex.name, "UNKNOWN_TABLE");
  EXPECT_THAT(ex.message, StartsWith("Code: 60. DB::Exception: Table analytics.userz"));
  EXPECT_EQ(ParseClickHouseException("Code: 164. DB::Exception: x. (READONLY)").name, "READONLY");
  ex = ParseClickHouseException(
      "Code: 59, e.displayText() = DB::Exception: Syntax error, e.what() = DB::Exception");
  EXPECT_EQ(ex.code, 59);
  ex = ParseClickHouseException("<html>oops</html>");
  EXPECT_EQ(ex.code, 0);
  EXPECT_EQ(ex.name, "");
}

TEST(ClickHouseExceptionTest, ScansWhereARowWouldStart) {
  using Scan = ClickHouseExceptionScan;
  const std::string tag = "pu1fnufh98abcdef";
  EXPECT_EQ(ScanClickHouseException("\r\n__exception__\r\n" + tag + "\r\nCode: 1", tag),
            Scan::kFound);
  EXPECT_EQ(ScanClickHouseException("__exception__" + tag + "\nboom", tag), Scan::kFound);
  EXPECT_EQ(ScanClickHouseException("\r\n__exception__\r\nCode: 395.", ""), Scan::kFound);
  EXPECT_EQ(ScanClickHouseException("__exception__\nCode: 395.", ""), Scan::kFound);
  EXPECT_EQ(ScanClickHouseException("Code: 241. DB::Exception: Memory", ""), Scan::kFound);
  EXPECT_EQ(ScanClickHouseException("\nCode: 59, e.displayText() = DB::Exception", ""),
            Scan::kFound);
  // Prefixes need more bytes; anything else is a row.
  EXPECT_EQ(ScanClickHouseException("\r\n__exc", tag), Scan::kNeedMore);
  EXPECT_EQ(ScanClickHouseException("\n", ""), Scan::kNeedMore);
  EXPECT_EQ(ScanClickHouseException("Code: 24", ""), Scan::kNeedMore);
  EXPECT_EQ(ScanClickHouseException("Code: 241. DB::Exc", ""), Scan::kNeedMore);
  EXPECT_EQ(ScanClickHouseException("\n2024-06-01", ""), Scan::kNotFound);
  EXPECT_EQ(ScanClickHouseException("Code: 241 is a string", ""), Scan::kNotFound);
  EXPECT_EQ(ScanClickHouseException("\x01\x02\x03", tag), Scan::kNotFound);
  EXPECT_EQ(ScanClickHouseException("", tag), Scan::kNotFound);
}

TEST(ClickHouseExceptionTest, ExtractsTheMessageOfEachFraming) {
  const std::string tag = "pu1fnufh98abcdef";
  const std::string text =
      "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED) (version "
      "25.11.1.1)";
  std::string tagged =
      fmt::format("rowbytes\r\n__exception__\r\n{0}\r\n{1}\n{2} {0}\r\n__exception__\r\n", tag,
                  text, text.size() + 1);
  auto ex = FindClickHouseException(tagged, tag);
  ASSERT_TRUE(ex.has_value());
  EXPECT_EQ(ex->code, 241);
  EXPECT_EQ(ex->name, "MEMORY_LIMIT_EXCEEDED");
  EXPECT_EQ(ex->message, text);
  ex = FindClickHouseException("rows\r\n__exception__\r\n" + text + "\n", "");
  ASSERT_TRUE(ex.has_value());
  EXPECT_EQ(ex->message, text);
  ex = FindClickHouseException("\x05rows" + text + "\n", "");
  ASSERT_TRUE(ex.has_value());
  EXPECT_EQ(ex->code, 241);
  EXPECT_FALSE(FindClickHouseException("just rows", tag).has_value());
  EXPECT_TRUE(IsRetryableClickHouseCode(241, text));
  EXPECT_FALSE(IsRetryableClickHouseCode(241, "Memory limit (for query) exceeded"));
  EXPECT_TRUE(IsRetryableClickHouseCode(202, ""));
  EXPECT_FALSE(IsRetryableClickHouseCode(60, ""));
}

TEST(ClickHouseSettingsTest, ParsesAndValidates) {
  json s = {{"base_url", "https://abc.clickhouse.cloud:8443/"},
            {"user", "retl"},
            {"password", "pw"},
            {"auth", "basic"},
            {"database", "analytics"},
            {"readonly", false},
            {"compression", false},
            {"query_timeout_s", 60},
            {"settings", {{"max_threads", "4"}, {"use_query_cache", true}}},
            {"query_id_prefix", "retl-1"},
            {"timeout_ms", 1000},
            {"max_retries", 2},
            {"max_retry_wait_s", 30}};
  auto c = ParseClickHouseSettings(s);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->base_url, "https://abc.clickhouse.cloud:8443");
  EXPECT_EQ(c->auth, ClickHouseAuth::kBasic);
  EXPECT_FALSE(c->readonly);
  EXPECT_FALSE(c->compression);
  EXPECT_EQ(c->query_timeout_s, 60);
  EXPECT_EQ(c->settings["use_query_cache"], "1");
  EXPECT_EQ(c->retry.max_retries, 2);
  EXPECT_EQ(c->retry.max_wait, std::chrono::seconds(30));

  auto bad = [&](json patch, std::string_view want) {
    json copy = s;
    copy.merge_patch(patch);
    auto r = ParseClickHouseSettings(copy);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << patch;
    EXPECT_THAT(r.status().message(), HasSubstr(want));
  };
  bad({{"base_url", nullptr}}, "base_url: required");
  bad({{"base_url", "clickhouse:8123"}}, "http:// or https://");
  bad({{"settings", {{"readonly", "1"}}}}, "settings.readonly");
  bad({{"settings", {{"max threads", "1"}}}}, "not a ClickHouse setting name");
  bad({{"query_id_prefix", "a b"}}, "query_id_prefix");
  bad({{"auth", "token"}}, "auth");
  bad({{"query_timeout_s", 0}}, "query_timeout_s");

  SourceDefinition def = ClickHouseSourceDefinition();
  EXPECT_EQ(def.type, "clickhouse");
  const SettingSpec* password = FindSetting(def.settings, "password");
  ASSERT_NE(password, nullptr);
  EXPECT_TRUE(password->secret);
  EXPECT_TRUE(FindSetting(def.settings, "base_url")->required);
}

}  // namespace
}  // namespace backflow
