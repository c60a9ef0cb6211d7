#include "backflow/sources/bigquery/bigquery_source.h"

#include <gtest/gtest.h>

#include <regex>
#include <thread>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/sources/bigquery/fake_bigquery_server.h"
#include "backflow/testing/cancelling_clock.h"
#include "backflow/testing/http_test_server.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;
using namespace std::string_literals;

constexpr char kAccount[] = "etl@my-proj.iam.gserviceaccount.com";

BigQueryField Field(std::string name, std::string type, std::string mode = "NULLABLE",
                    std::vector<BigQueryField> fields = {}) {
  return BigQueryField{std::move(name), std::move(type), std::move(mode), std::move(fields)};
}

Value Decode(const BigQueryField& f, const json& v) {
  absl::StatusOr<Value> out = DecodeBigQueryCell(f, v);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : Value::Null();
}

// ------------------------------------------------------------ value decoding

TEST(BigQueryTimestampTest, IntegerMicrosAndFloatSecondsGiveTheSameInstant) {
  EXPECT_EQ(*BigQueryTimestampText("1717200123123000"), "2024-06-01T00:02:03.123Z");
  EXPECT_EQ(*BigQueryTimestampText("1.7172001231230001E9"), "2024-06-01T00:02:03.123Z");
  EXPECT_EQ(*BigQueryTimestampText("1717200123.123"), "2024-06-01T00:02:03.123Z");
  EXPECT_EQ(*BigQueryTimestampText("1717200123123456"), "2024-06-01T00:02:03.123456Z");
  // The double nearest to 1717200123.123456 is off by far less than half a
  // microsecond: exact decimal arithmetic recovers the microseconds.
  EXPECT_EQ(*BigQueryTimestampText(fmt::format("{}", 1717200123.123456)),
            "2024-06-01T00:02:03.123456Z");
  EXPECT_EQ(*BigQueryTimestampText("1717200456000000"), "2024-06-01T00:07:36Z");
  EXPECT_EQ(*BigQueryTimestampText("1.717200456E9"), "2024-06-01T00:07:36Z");
  EXPECT_EQ(*BigQueryTimestampText("-1.9954383398377106E10"), "1337-09-02T11:43:21.622894Z");
  EXPECT_EQ(*BigQueryTimestampText("-1"), "1969-12-31T23:59:59.999999Z");
  EXPECT_EQ(*BigQueryTimestampText("0"), "1970-01-01T00:00:00Z");
  EXPECT_EQ(*BigQueryTimestampText("0.0"), "1970-01-01T00:00:00Z");
  EXPECT_EQ(*BigQueryTimestampText("1.5E-6"), "1970-01-01T00:00:00.000002Z");  // half rounds up
  EXPECT_EQ(*BigQueryTimestampText("-62135596800000000"), "0001-01-01T00:00:00Z");
  EXPECT_EQ(*BigQueryTimestampText("253402300799999999"), "9999-12-31T23:59:59.999999Z");
  EXPECT_EQ(*BigQueryTimestampText("2024-06-01T00:02:03.123000Z"), "2024-06-01T00:02:03.123Z");
  EXPECT_EQ(*BigQueryTimestampText("2024-06-01T00:02:03Z"), "2024-06-01T00:02:03Z");
  for (const char* bad : {"", "abc", "1.2.3", "1e", "253402300800000000", "9.3E18", "1E400", "-",
                          "12:00", "2024-06-01"}) {
    EXPECT_FALSE(BigQueryTimestampText(bad).ok()) << bad;
  }
}

TEST(BigQueryDecodeTest, TheBriefsExampleRows) {
  // §2.9 of the brief: the first page of jobs.query, verbatim.
  json reply = json::parse(R"({"kind":"bigquery#queryResponse","jobComplete":true,
 "jobReference":{"projectId":"my-proj","jobId":"job_Zx81","location":"US"},"queryId":"job_Zx81",
 "schema":{"fields":[{"name":"id","type":"INTEGER","mode":"NULLABLE"},
                     {"name":"email","type":"STRING","mode":"NULLABLE"},
                     {"name":"score","type":"NUMERIC","mode":"NULLABLE"},
                     {"name":"updated_at","type":"TIMESTAMP","mode":"NULLABLE"},
                     {"name":"tags","type":"STRING","mode":"REPEATED"}]},
 "totalRows":"25000","pageToken":"BHDEPFTJSQAQAAASA4EAAEEAQCAAKGQIBD77777777",
 "rows":[{"f":[{"v":"1"},{"v":"a@example.com"},{"v":"12.5"},{"v":"1717200123123000"},{"v":[{"v":"vip"},{"v":"eu"}]}]},
         {"f":[{"v":"2"},{"v":null},{"v":"0"},{"v":"1717200456000000"},{"v":[]}]}],
 "totalBytesProcessed":"1048576","cacheHit":false})");
  std::vector<BigQueryField> fields;
  Schema schema;
  for (const json& f : reply["schema"]["fields"]) {
    absl::StatusOr<BigQueryField> field = ParseBigQueryField(f);
    ASSERT_TRUE(field.ok()) << field.status();
    schema.push_back(BigQueryColumn(*field));
    fields.push_back(*field);
  }
  ASSERT_EQ(schema.size(), 5u);
  EXPECT_EQ(schema[0].type, ValueType::kInt64);
  EXPECT_EQ(schema[1].type, ValueType::kString);
  EXPECT_EQ(schema[2].type, ValueType::kDecimal);
  EXPECT_EQ(schema[3].type, ValueType::kTimestamp);
  EXPECT_EQ(schema[4].type, ValueType::kJson);
  EXPECT_EQ(schema[4].source_type, "STRING REPEATED");
  std::vector<Row> rows;
  for (const json& r : reply["rows"]) {
    Row row;
    for (size_t i = 0; i < fields.size(); ++i) row.push_back(Decode(fields[i], r["f"][i]["v"]));
    rows.push_back(row);
  }
  EXPECT_EQ(rows[0], (Row{Value::Int64(1), Value::String("a@example.com"),
                          Value::Text(ValueType::kDecimal, "12.5"),
                          Value::Text(ValueType::kTimestamp, "2024-06-01T00:02:03.123Z"),
                          Value::Text(ValueType::kJson, R"(["vip","eu"])")}));
  EXPECT_EQ(rows[1], (Row{Value::Int64(2), Value::Null(), Value::Text(ValueType::kDecimal, "0"),
                          Value::Text(ValueType::kTimestamp, "2024-06-01T00:07:36Z"),
                          Value::Text(ValueType::kJson, "[]")}));
}

TEST(BigQueryDecodeTest, EveryScalarTypeByTheSchemaNotTheCell) {
  EXPECT_EQ(Decode(Field("i", "INT64"), "9223372036854775807"),
            Value::Int64(9223372036854775807LL));
  EXPECT_EQ(Decode(Field("i", "INTEGER"), "-9223372036854775808"),
            Value::Int64(std::numeric_limits<int64_t>::min()));
  EXPECT_FALSE(DecodeBigQueryCell(Field("i", "INTEGER"), "9223372036854775808").ok());
  EXPECT_FALSE(DecodeBigQueryCell(Field("i", "INTEGER"), 12).ok());  // must be a string
  EXPECT_EQ(Decode(Field("n", "BIGNUMERIC"), "-123456789012345678901234567890.123456789012"),
            Value::Text(ValueType::kDecimal, "-123456789012345678901234567890.123456789012"));
  EXPECT_EQ(Decode(Field("n", "NUMERIC"), "1.5E3"), Value::Text(ValueType::kDecimal, "1500"));
  EXPECT_EQ(Decode(Field("n", "NUMERIC"), "0.000"), Value::Text(ValueType::kDecimal, "0"));
  EXPECT_FALSE(DecodeBigQueryCell(Field("n", "NUMERIC"), "12,5").ok());
  EXPECT_EQ(Decode(Field("f", "FLOAT"), "1.5"), Value::Double(1.5));
  EXPECT_EQ(Decode(Field("f", "FLOAT64"), "1.0E10"), Value::Double(1e10));
  EXPECT_TRUE(std::isnan(Decode(Field("f", "FLOAT"), "NaN").double_value()));
  EXPECT_EQ(Decode(Field("f", "FLOAT"), "-Infinity"),
            Value::Double(-std::numeric_limits<double>::infinity()));
  EXPECT_EQ(Decode(Field("b", "BOOLEAN"), "true"), Value::Bool(true));
  EXPECT_EQ(Decode(Field("b", "BOOL"), "false"), Value::Bool(false));
  EXPECT_FALSE(DecodeBigQueryCell(Field("b", "BOOL"), "1").ok());
  EXPECT_EQ(Decode(Field("s", "STRING"), "007"), Value::String("007"));
  EXPECT_EQ(Decode(Field("y", "BYTES"), "AP8Q"), Value::Text(ValueType::kBytes, "\x00\xff\x10"s));
  EXPECT_FALSE(DecodeBigQueryCell(Field("y", "BYTES"), "not base64!").ok());
  EXPECT_EQ(Decode(Field("d", "DATE"), "2024-06-01"), Value::Text(ValueType::kDate, "2024-06-01"));
  EXPECT_EQ(Decode(Field("dt", "DATETIME"), "2024-06-01T12:34:56.5"),
            Value::Text(ValueType::kTimestamp, "2024-06-01T12:34:56.5"));
  EXPECT_EQ(Decode(Field("t", "TIME"), "12:34:56.123456"), Value::String("12:34:56.123456"));
  EXPECT_EQ(Decode(Field("g", "GEOGRAPHY"), "POINT(1 2)"), Value::String("POINT(1 2)"));
  EXPECT_EQ(Decode(Field("j", "JSON"), R"({"a": [1, 2.50], "b": "x y"})"),
            Value::Text(ValueType::kJson, R"({"a":[1,2.50],"b":"x y"})"));
  EXPECT_FALSE(DecodeBigQueryCell(Field("j", "JSON"), "{not json").ok());
  EXPECT_EQ(Decode(Field("r", "RANGE"), "[2024-01-01, UNBOUNDED)"),
            Value::String("[2024-01-01, UNBOUNDED)"));
  for (const char* type : {"INTEGER", "NUMERIC", "TIMESTAMP", "JSON", "BYTES", "STRING"}) {
    EXPECT_EQ(Decode(Field("x", type), nullptr), Value::Null()) << type;
  }
}

TEST(BigQueryDecodeTest, RecordsAndRepeatedFieldsBecomeJsonWithFieldNames) {
  BigQueryField address = Field("address", "RECORD", "NULLABLE",
                                {Field("city", "STRING"), Field("zip", "INTEGER"),
                                 Field("since", "TIMESTAMP"), Field("geo", "JSON")});
  BigQueryField orders =
      Field("orders", "RECORD", "REPEATED",
            {Field("id", "INT64"), Field("total", "NUMERIC"), Field("big", "INT64"),
             Field("paid", "BOOL"), Field("rate", "FLOAT"), Field("skus", "STRING", "REPEATED")});
  Column c = BigQueryColumn(orders);
  EXPECT_EQ(c.type, ValueType::kJson);
  EXPECT_EQ(c.source_type,
            "RECORD<id INT64, total NUMERIC, big INT64, paid BOOL, rate FLOAT, skus STRING "
            "REPEATED> REPEATED");
  json addr = json::parse(R"({"f":[{"v":"Paris"},{"v":"75001"},{"v":"1717200123123000"},
                                   {"v":"{\"lat\": 48.8}"}]})");
  EXPECT_EQ(
      Decode(address, addr).text(),
      R"({"city":"Paris","zip":75001,"since":"2024-06-01T00:02:03.123Z","geo":{"lat":48.8}})");
  EXPECT_EQ(Decode(address, nullptr), Value::Null());
  json list = json::parse(R"([
      {"v":{"f":[{"v":"1"},{"v":"19.90"},{"v":"9007199254740993"},{"v":"true"},{"v":"NaN"},
                 {"v":[{"v":"a"},{"v":"b"}]}]}},
      {"v":{"f":[{"v":"2"},{"v":null},{"v":"-5"},{"v":"false"},{"v":"0.5"},{"v":[]}]}}])");
  EXPECT_EQ(
      Decode(orders, list).text(),
      R"([{"id":1,"total":"19.9","big":"9007199254740993","paid":true,"rate":"NaN",)"
      R"("skus":["a","b"]},{"id":2,"total":null,"big":-5,"paid":false,"rate":0.5,"skus":[]}])");
  EXPECT_EQ(Decode(orders, json::array()).text(), "[]");
  // A record whose cells do not match its fields is an error, not a guess.
  EXPECT_FALSE(DecodeBigQueryCell(address, json::parse(R"({"f":[{"v":"x"}]})")).ok());
  EXPECT_FALSE(DecodeBigQueryCell(orders, json::parse(R"({"v":"x"})")).ok());
}

TEST(BigQueryDecodeTest, ColumnTypesAndSourceTypes) {
  struct Case {
    const char* type;
    ValueType want;
  } cases[] = {{"INTEGER", ValueType::kInt64},       {"INT64", ValueType::kInt64},
               {"FLOAT", ValueType::kDouble},        {"NUMERIC", ValueType::kDecimal},
               {"BIGNUMERIC", ValueType::kDecimal},  {"BOOLEAN", ValueType::kBool},
               {"STRING", ValueType::kString},       {"BYTES", ValueType::kBytes},
               {"DATE", ValueType::kDate},           {"DATETIME", ValueType::kTimestamp},
               {"TIMESTAMP", ValueType::kTimestamp}, {"TIME", ValueType::kString},
               {"JSON", ValueType::kJson},           {"GEOGRAPHY", ValueType::kString},
               {"INTERVAL", ValueType::kString}};
  for (const Case& c : cases) {
    absl::StatusOr<BigQueryField> f =
        ParseBigQueryField(json{{"name", "x"}, {"type", c.type}, {"mode", "NULLABLE"}});
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(BigQueryColumn(*f).type, c.want) << c.type;
    EXPECT_EQ(BigQueryColumn(*f).source_type, c.type);
  }
  EXPECT_FALSE(ParseBigQueryField(json{{"name", "x"}}).ok());
  EXPECT_FALSE(ParseBigQueryField(json{{"name", "x"}, {"type", "RECORD"}}).ok());
  absl::StatusOr<BigQueryField> lower = ParseBigQueryField(json{{"name", "x"}, {"type", "int64"}});
  ASSERT_TRUE(lower.ok());
  EXPECT_EQ(lower->mode, "NULLABLE");
  EXPECT_EQ(BigQueryColumn(*lower).type, ValueType::kInt64);
}

// -------------------------------------------------------------- settings

TEST(BigQuerySettingsTest, InvalidSettingsAreReportedWithTheKey) {
  SourceDefinition def = BigQuerySourceDefinition();
  auto http = NewCurlHttpClient();
  FakeClock clock;
  ConnectorEnv env{http.get(), &clock};
  absl::StatusOr<RsaKeyPair> pair = GenerateRsaKeyPair();
  ASSERT_TRUE(pair.ok());
  json key = {{"type", "service_account"},
              {"project_id", "key-proj"},
              {"private_key_id", "k1"},
              {"private_key", pair->private_key_pem},
              {"client_email", kAccount}};
  auto create = [&](json settings) {
    EXPECT_TRUE(CheckSettings(def.settings, settings).empty()) << settings.dump();
    return def.create(settings, env);
  };
  EXPECT_TRUE(create({{"service_account_key", key.dump()}}).ok());  // project from the key
  auto missing = def.create(json::object(), env);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("service_account_key"), std::string::npos);
  auto not_json = create({{"service_account_key", "/path/to/key.json"}});
  EXPECT_NE(not_json.status().message().find("content (not the path)"), std::string::npos);
  json user = key;
  user["type"] = "authorized_user";
  auto wrong_type = create({{"service_account_key", user.dump()}});
  EXPECT_NE(wrong_type.status().message().find("authorized_user"), std::string::npos);
  json no_project = key;
  no_project.erase("project_id");
  EXPECT_NE(
      create({{"service_account_key", no_project.dump()}}).status().message().find("project_id"),
      std::string::npos);
  json bad_pem = key;
  bad_pem["private_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
  EXPECT_NE(
      create({{"service_account_key", bad_pem.dump()}}).status().message().find("private_key"),
      std::string::npos);
  EXPECT_NE(create({{"service_account_key", key.dump()}, {"max_results", 0}})
                .status()
                .message()
                .find("max_results"),
            std::string::npos);
  EXPECT_NE(create({{"service_account_key", key.dump()}, {"base_url", "ftp://x"}})
                .status()
                .message()
                .find("base_url"),
            std::string::npos);
  // Secrets are marked so they are never echoed.
  EXPECT_TRUE(FindSetting(def.settings, "service_account_key")->secret);
}

// ------------------------------------------------------------- with the fake

class BigQuerySourceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartFake(FakeBigQueryOptions{}); }

  void StartFake(FakeBigQueryOptions options) {
    options.clock = &clock_;
    options.project_id = "my-proj";
    fake_ = std::make_unique<FakeBigQueryServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    key_ = fake_->AddServiceAccount(kAccount);
    ASSERT_TRUE(fake_->CreateDataset("crm", "US").ok());
    Exec(
        "CREATE TABLE crm.users (id INT64, email STRING TEXT, score NUMERIC TEXT, updated_at "
        "TIMESTAMP TEXT)");
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(fake_->Exec(sql).ok()) << sql; }

  void InsertUsers(int from, int to) {
    Exec("BEGIN");
    for (int i = from; i <= to; ++i) {
      Exec(
          fmt::format("INSERT INTO crm.users VALUES ({0}, 'user{0}@example.com', '{0}.{1:02}', "
                      "'2024-06-01 00:02:03.{2:06}')",
                      i, i % 100, i * 7 % 1000000));
    }
    Exec("COMMIT");
  }

  json Settings() const {
    return {{"service_account_key", key_},
            {"project_id", "my-proj"},
            {"location", "US"},
            {"token_url", fake_->TokenUrl()},
            {"base_url", fake_->BaseUrl()},
            {"max_retries", 3},
            {"timeout_ms", 10'000}};
  }

  std::unique_ptr<Source> NewSource(const json& overrides = json::object()) {
    SourceDefinition def = BigQuerySourceDefinition();
    json settings = Settings();
    settings.update(overrides);
    for (auto it = settings.begin(); it != settings.end();) {
      it = it->is_null() ? settings.erase(it) : std::next(it);
    }
    std::vector<std::string> problems = CheckSettings(def.settings, settings);
    EXPECT_TRUE(problems.empty()) << problems[0];
    auto source = def.create(settings, ConnectorEnv{http_.get(), &clock_});
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }

  // Reads to the end; the error if the stream failed.
  absl::StatusOr<std::vector<Row>> ReadAll(RowReader& reader) {
    std::vector<Row> rows;
    Row row;
    while (true) {
      absl::StatusOr<bool> more = reader.Next(row);
      if (!more.ok()) return more.status();
      if (!*more) return rows;
      rows.push_back(row);
    }
  }

  absl::StatusOr<std::vector<Row>> QueryAll(Source& source, const std::string& sql) {
    absl::StatusOr<std::unique_ptr<RowReader>> reader = source.Query(sql);
    if (!reader.ok()) return reader.status();
    return ReadAll(**reader);
  }

  std::vector<FakeBigQueryRequest> RequestsOf(const std::string& method) const {
    std::vector<FakeBigQueryRequest> out;
    for (const auto& r : fake_->Requests()) {
      if (r.method == method) out.push_back(r);
    }
    return out;
  }

  std::atomic<bool> cancel_{false};  // set by clock_ when a test asks
  CancellingClock clock_{&cancel_};
  std::unique_ptr<FakeBigQueryServer> fake_;
  std::string key_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

TEST_F(BigQuerySourceTest, TheJwtCarriesGoogleClaimsAndTheTokenIsReused) {
  auto source = NewSource();
  ASSERT_TRUE(source->CheckConnection().ok());
  ASSERT_TRUE(source->CheckConnection().ok());
  EXPECT_EQ(fake_->tokens_issued(), 1);  // cached between calls
  DecodedJwt jwt = fake_->LastAssertion();
  EXPECT_EQ(jwt.header["alg"], "RS256");
  EXPECT_EQ(jwt.header["kid"], json::parse(key_)["private_key_id"]);
  EXPECT_EQ(jwt.claims["iss"], kAccount);
  EXPECT_EQ(jwt.claims["scope"], kBigQueryScope);
  EXPECT_EQ(jwt.claims["aud"], fake_->TokenUrl());
  EXPECT_EQ(jwt.claims["exp"].get<int64_t>() - jwt.claims["iat"].get<int64_t>(), 3600);
  EXPECT_FALSE(jwt.claims.contains("sub"));
  // The connection check runs SELECT 1 to the end: nothing to cancel.
  std::vector<FakeBigQueryRequest> queries = RequestsOf("query");
  ASSERT_EQ(queries.size(), 2u);
  EXPECT_EQ(json::parse(queries[0].body)["query"], "SELECT 1 AS backflow_check");
  EXPECT_TRUE(fake_->Cancels().empty());
}

TEST_F(BigQuerySourceTest, StreamsOnePageAtATimeWithTheProtocolsParameters) {
  InsertUsers(1, 2500);
  auto source = NewSource({{"max_results", 1000}});
  auto reader = source->Query("SELECT id, email, score, updated_at FROM crm.users ORDER BY id;\n");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const Schema& schema = (*reader)->schema();
  ASSERT_EQ(schema.size(), 4u);
  EXPECT_EQ(schema[0].type, ValueType::kInt64);
  EXPECT_EQ(schema[2].type, ValueType::kDecimal);
  EXPECT_EQ(schema[3].type, ValueType::kTimestamp);

  Row row;
  int64_t n = 0;
  auto next = [&]() {
    absl::StatusOr<bool> more = (*reader)->Next(row);
    EXPECT_TRUE(more.ok()) << more.status();
    if (more.ok() && *more) {
      ++n;
      EXPECT_EQ(row[0], Value::Int64(n));
      EXPECT_EQ(row[1], Value::String(fmt::format("user{}@example.com", n)));
      std::string score = fmt::format("{}.{:02}", n, n % 100);
      while (score.back() == '0') score.pop_back();
      if (score.back() == '.') score.pop_back();
      EXPECT_EQ(row[2], Value::Text(ValueType::kDecimal, score));
    }
    return more.ok() && *more;
  };
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(next());
  EXPECT_EQ(fake_->CountRequests("getQueryResults"), 0);  // the first page only
  ASSERT_TRUE(next());
  EXPECT_EQ(fake_->CountRequests("getQueryResults"), 1);
  for (int i = 0; i < 999; ++i) ASSERT_TRUE(next());
  EXPECT_EQ(fake_->CountRequests("getQueryResults"), 1);
  while (next()) {
  }
  EXPECT_EQ(n, 2500);
  EXPECT_EQ(fake_->CountRequests("getQueryResults"), 2);
  reader->reset();
  EXPECT_TRUE(fake_->Cancels().empty());

  std::vector<FakeBigQueryRequest> queries = RequestsOf("query");
  ASSERT_EQ(queries.size(), 1u);
  json body = json::parse(queries[0].body);
  EXPECT_EQ(body["query"], "SELECT id, email, score, updated_at FROM crm.users ORDER BY id");
  EXPECT_EQ(body["useLegacySql"], false);
  EXPECT_EQ(body["formatOptions"], json({{"useInt64Timestamp", true}}));
  EXPECT_EQ(body["maxResults"], 1000);
  EXPECT_EQ(body["location"], "US");
  EXPECT_EQ(body["timeoutMs"], 5000);  // half of timeout_ms
  EXPECT_EQ(body["jobTimeoutMs"], "3600000");
  EXPECT_FALSE(body.contains("maximumBytesBilled"));
  EXPECT_TRUE(std::regex_match(body["requestId"].get<std::string>(),
                               std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                                          "[0-9a-f]{12}")))
      << body["requestId"];
  std::set<std::string> tokens;
  for (const auto& r : RequestsOf("getQueryResults")) {
    EXPECT_EQ(r.params.at("location"), "US");
    EXPECT_EQ(r.params.at("maxResults"), "1000");
    EXPECT_EQ(r.params.at("formatOptions.useInt64Timestamp"), "true");
    tokens.insert(r.params.at("pageToken"));
  }
  EXPECT_EQ(tokens.size(), 2u);
}

TEST_F(BigQuerySourceTest, EveryTypeArrivesExactlyWithAndWithoutInt64Timestamps) {
  Exec(
      "CREATE TABLE crm.types (i INT64, n NUMERIC TEXT, bn BIGNUMERIC TEXT, f FLOAT64, b BOOL, s "
      "STRING TEXT, y BYTES, d DATE TEXT, dt DATETIME TEXT, t TIME TEXT, ts TIMESTAMP TEXT, j JSON "
      "TEXT, g GEOGRAPHY TEXT)");
  Exec(
      "INSERT INTO crm.types VALUES (9223372036854775807, "
      "'12345678901234567890123456789.123456789',"
      " '-0.00000000000000000000000000000000000001', 1.5e10, 1, '007', x'00ff10', '2024-06-01', "
      "'2024-06-01 12:34:56.5', '23:59:59.999999', '2024-06-01 02:02:03.123456+02:00', "
      "'{\"a\": [1, 2.50]}', 'POINT(1 2)')");
  Exec(
      "INSERT INTO crm.types VALUES (-9223372036854775808, '0.50', '1', -0.001, 0, '', x'', "
      "'0001-01-01', '9999-12-31 23:59:59.999999', '00:00:00', '1969-12-31 23:59:59.999999', "
      "'null', 'LINESTRING(0 0, 1 1)')");
  Exec(
      "INSERT INTO crm.types VALUES (NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,"
      "NULL)");
  std::vector<Row> want = {
      {Value::Int64(9223372036854775807LL),
       Value::Text(ValueType::kDecimal, "12345678901234567890123456789.123456789"),
       Value::Text(ValueType::kDecimal, "-0.00000000000000000000000000000000000001"),
       Value::Double(1.5e10), Value::Bool(true), Value::String("007"),
       Value::Text(ValueType::kBytes, "\x00\xff\x10"s), Value::Text(ValueType::kDate, "2024-06-01"),
       Value::Text(ValueType::kTimestamp, "2024-06-01T12:34:56.5"),
       Value::String("23:59:59.999999"),
       Value::Text(ValueType::kTimestamp, "2024-06-01T00:02:03.123456Z"),
       Value::Text(ValueType::kJson, R"({"a":[1,2.50]})"), Value::String("POINT(1 2)")},
      {Value::Int64(std::numeric_limits<int64_t>::min()), Value::Text(ValueType::kDecimal, "0.5"),
       Value::Text(ValueType::kDecimal, "1"), Value::Double(-0.001), Value::Bool(false),
       Value::String(""), Value::Text(ValueType::kBytes, ""),
       Value::Text(ValueType::kDate, "0001-01-01"),
       Value::Text(ValueType::kTimestamp, "9999-12-31T23:59:59.999999"), Value::String("00:00:00"),
       Value::Text(ValueType::kTimestamp, "1969-12-31T23:59:59.999999Z"),
       Value::Text(ValueType::kJson, "null"), Value::String("LINESTRING(0 0, 1 1)")},
      Row(13, Value::Null())};
  auto source = NewSource();
  auto rows = QueryAll(*source, "SELECT * FROM `my-proj.crm.types` ORDER BY i DESC NULLS LAST");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(*rows, want);

  // A server that ignores useInt64Timestamp sends E-notation float seconds:
  // present-day microseconds survive the double, and decode to the same text.
  fake_->SetHonorInt64Timestamp(false);
  fake_->ClearRequests();
  rows = QueryAll(*source, "SELECT * FROM `my-proj.crm.types` ORDER BY i DESC NULLS LAST");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(*rows, want);
}

TEST_F(BigQuerySourceTest, FloatTimestampsAreENotationOnTheWireAndDecodeExactly) {
  InsertUsers(1, 1);
  Exec("INSERT INTO crm.users VALUES (2, 'old@example.com', '0', '1337-09-02 11:43:21.622894')");
  fake_->SetHonorInt64Timestamp(false);
  auto source = NewSource();
  auto rows = QueryAll(*source, "SELECT updated_at FROM crm.users ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ((*rows)[0][0], Value::Text(ValueType::kTimestamp, "2024-06-01T00:02:03.000007Z"));
  // Far from the epoch a double cannot hold microseconds: BigQuery's float
  // form is lossy, which is why useInt64Timestamp is always requested.
  EXPECT_EQ((*rows)[1][0], Value::Text(ValueType::kTimestamp, "1337-09-02T11:43:21.622894Z"));
  std::string reply = RequestsOf("query")[0].reply;
  EXPECT_NE(reply.find(R"({"v":"1.717200123000007E9"})"), std::string::npos) << reply;
  EXPECT_NE(reply.find(R"({"v":"-1.9954383398377106E10"})"), std::string::npos) << reply;

  fake_->SetHonorInt64Timestamp(true);
  fake_->ClearRequests();
  ASSERT_TRUE(QueryAll(*source, "SELECT updated_at FROM crm.users ORDER BY id").ok());
  reply = RequestsOf("query")[0].reply;
  EXPECT_NE(reply.find(R"({"v":"1717200123000007"})"), std::string::npos) << reply;
}

TEST_F(BigQuerySourceTest, RecordAndRepeatedColumnsFromTheSchemaOption) {
  Exec("CREATE TABLE crm.profiles (id INT64, address JSON TEXT, tags JSON TEXT, orders JSON TEXT)");
  Exec(R"(INSERT INTO crm.profiles VALUES (1, '{"city":"Paris","zip":75001}', '["vip","eu"]',
          '[{"id":10,"at":"2024-06-01 00:02:03.5","skus":["a"]},{"id":11,"at":null,"skus":[]}]'))");
  Exec("INSERT INTO crm.profiles VALUES (2, NULL, NULL, '[]')");
  fake_->SetColumnSchema(
      "address",
      {{"type", "RECORD"},
       {"mode", "NULLABLE"},
       {"fields",
        {{{"name", "city"}, {"type", "STRING"}}, {{"name", "zip"}, {"type", "INTEGER"}}}}});
  fake_->SetColumnSchema("tags", {{"type", "STRING"}, {"mode", "REPEATED"}});
  fake_->SetColumnSchema("orders",
                         {{"type", "RECORD"},
                          {"mode", "REPEATED"},
                          {"fields",
                           {{{"name", "id"}, {"type", "INTEGER"}},
                            {{"name", "at"}, {"type", "TIMESTAMP"}},
                            {{"name", "skus"}, {"type", "STRING"}, {"mode", "REPEATED"}}}}});
  auto source = NewSource();
  auto reader = source->Query("SELECT id, address, tags, orders FROM crm.profiles ORDER BY id");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->schema()[1].source_type, "RECORD<city STRING, zip INTEGER>");
  EXPECT_EQ((*reader)->schema()[2].source_type, "STRING REPEATED");
  auto rows = ReadAll(**reader);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0][1], Value::Text(ValueType::kJson, R"({"city":"Paris","zip":75001})"));
  EXPECT_EQ((*rows)[0][2], Value::Text(ValueType::kJson, R"(["vip","eu"])"));
  EXPECT_EQ((*rows)[0][3], Value::Text(ValueType::kJson,
                                       R"([{"id":10,"at":"2024-06-01T00:02:03.5Z","skus":["a"]},)"
                                       R"({"id":11,"at":null,"skus":[]}])"));
  EXPECT_EQ((*rows)[1][1], Value::Null());
  EXPECT_EQ((*rows)[1][2], Value::Text(ValueType::kJson, "[]"));  // REPEATED is never null
  EXPECT_EQ((*rows)[1][3], Value::Text(ValueType::kJson, "[]"));
}

TEST_F(BigQuerySourceTest, SchemaIsKnownBeforeTheFirstRowAndSurvivesThePreviewWrapper) {
  InsertUsers(1, 20);
  auto source = NewSource();
  auto empty = source->Query("SELECT id, score FROM crm.users WHERE id < 0");
  ASSERT_TRUE(empty.ok()) << empty.status();
  ASSERT_EQ((*empty)->schema().size(), 2u);
  EXPECT_EQ((*empty)->schema()[1].type, ValueType::kDecimal);
  Row row;
  EXPECT_FALSE(*(*empty)->Next(row));

  auto limited = source->Query(LimitQuery("SELECT id, score, updated_at FROM crm.users", 5));
  ASSERT_TRUE(limited.ok()) << limited.status();
  EXPECT_EQ((*limited)->schema()[0].type, ValueType::kInt64);
  EXPECT_EQ((*limited)->schema()[2].type, ValueType::kTimestamp);
  auto rows = ReadAll(**limited);
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->size(), 5u);
}

TEST_F(BigQuerySourceTest, LongPollsUntilTheJobIsComplete) {
  InsertUsers(1, 3);
  fake_->SetPollsBeforeComplete(3);
  auto source = NewSource({{"location", nullptr}});
  auto rows = QueryAll(*source, "SELECT id FROM crm.users ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 3u);
  std::vector<FakeBigQueryRequest> polls = RequestsOf("getQueryResults");
  ASSERT_EQ(polls.size(), 4u);  // 3 × jobComplete=false, then the rows
  for (const auto& p : polls) {
    EXPECT_EQ(p.params.at("timeoutMs"), "5000");
    EXPECT_EQ(p.params.at("location"), "US");  // from the jobReference
    EXPECT_FALSE(p.params.contains("pageToken"));
  }
  EXPECT_FALSE(json::parse(RequestsOf("query")[0].body).contains("location"));
  EXPECT_GT(clock_.total_slept(), std::chrono::milliseconds(0));
  EXPECT_LT(clock_.total_slept(), std::chrono::seconds(2));
}

TEST_F(BigQuerySourceTest, JobsInARegionArePolledInTheirLocation) {
  ASSERT_TRUE(fake_->CreateDataset("eu_crm", "europe-west2").ok());
  Exec("CREATE TABLE eu_crm.users (id INT64)");
  Exec("INSERT INTO eu_crm.users VALUES (1), (2), (3)");
  fake_->SetPollsBeforeComplete(1);
  auto source = NewSource({{"location", nullptr}, {"max_results", 2}});
  auto rows = QueryAll(*source, "SELECT id FROM eu_crm.users");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 3u);
  for (const auto& p : RequestsOf("getQueryResults")) {
    EXPECT_EQ(p.params.at("location"), "europe-west2");
  }

  // A location that is not the dataset's: the query is not found there.
  auto wrong = NewSource({{"location", "US"}});
  auto status = QueryAll(*wrong, "SELECT id FROM eu_crm.users").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("`location`"), std::string::npos) << status;
  EXPECT_NE(status.message().find("Not found: Dataset my-proj:eu_crm"), std::string::npos);
}

TEST_F(BigQuerySourceTest, AQueryThatRunsTooLongIsCancelled) {
  fake_->SetPollsBeforeComplete(1'000'000);
  auto source = NewSource({{"query_timeout_s", 5}});
  auto reader = source->Query("SELECT id FROM crm.users");
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kDeadlineExceeded) << reader.status();
  EXPECT_NE(reader.status().message().find("query_timeout_s"), std::string::npos);
  std::vector<FakeBigQueryCancel> cancels = fake_->Cancels();
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0].job_id, "job_fake0001");
  EXPECT_EQ(RequestsOf("cancel")[0].params.at("location"), "US");
  EXPECT_EQ(json::parse(RequestsOf("query")[0].body)["jobTimeoutMs"], "5000");
}

TEST_F(BigQuerySourceTest, RateLimit403IsRetriedWithTheSameRequestId) {
  InsertUsers(1, 3);
  fake_->AddFault(FakeBigQueryFault::RateLimit("query", 2));
  auto source = NewSource();
  auto rows = QueryAll(*source, "SELECT id FROM crm.users");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 3u);
  std::vector<FakeBigQueryRequest> queries = RequestsOf("query");
  ASSERT_EQ(queries.size(), 3u);
  EXPECT_EQ(queries[0].status, 403);
  EXPECT_EQ(queries[2].status, 200);
  EXPECT_EQ(json::parse(queries[0].body)["requestId"], json::parse(queries[2].body)["requestId"]);
  EXPECT_EQ(fake_->jobs_created(), 1);
  EXPECT_GT(clock_.total_slept(), std::chrono::milliseconds(0));
}

TEST_F(BigQuerySourceTest, ALostReplyIsRetriedWithoutCreatingASecondJob) {
  InsertUsers(1, 3);
  FakeBigQueryFault lost;
  lost.method = "query";
  lost.reset_connection = true;
  lost.apply_first = true;  // the job is created, the reply is lost
  fake_->AddFault(lost);
  auto source = NewSource();
  auto rows = QueryAll(*source, "SELECT id FROM crm.users");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 3u);
  EXPECT_EQ(RequestsOf("query").size(), 2u);
  EXPECT_EQ(fake_->jobs_created(), 1);  // requestId made the retry idempotent
}

TEST_F(BigQuerySourceTest, ServerErrorsOnAPageAreRetried) {
  InsertUsers(1, 30);
  fake_->AddFault(FakeBigQueryFault::BackendError("getQueryResults", 2));
  FakeBigQueryFault unavailable;
  unavailable.method = "getQueryResults";
  unavailable.status = 503;
  unavailable.reason = "";
  unavailable.message = "Service Unavailable";
  unavailable.skip = 1;
  fake_->AddFault(unavailable);
  auto source = NewSource({{"max_results", 10}});
  auto rows = QueryAll(*source, "SELECT id FROM crm.users ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 30u);
  for (int i = 0; i < 30; ++i) EXPECT_EQ((*rows)[i][0], Value::Int64(i + 1));
  EXPECT_EQ(fake_->CountRequests("getQueryResults", 500), 2);
  EXPECT_EQ(fake_->CountRequests("getQueryResults", 503), 1);
}

TEST_F(BigQuerySourceTest, PersistentRateLimitIsResourceExhausted) {
  fake_->AddFault(FakeBigQueryFault::RateLimit("query", 4));
  auto source = NewSource();
  absl::Status s = QueryAll(*source, "SELECT id FROM crm.users").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("rateLimitExceeded"), std::string::npos);
  EXPECT_NE(s.message().find("after 4 attempts"), std::string::npos) << s;
  EXPECT_EQ(fake_->CountRequests("query"), 4);  // max_retries 3

  fake_->ClearRequests();
  FakeBigQueryFault quota = FakeBigQueryFault::RateLimit("query");
  quota.reason = "quotaExceeded";
  fake_->AddFault(quota);
  s = QueryAll(*source, "SELECT id FROM crm.users").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("quota"), std::string::npos);
  EXPECT_EQ(fake_->CountRequests("query"), 1);  // a quota window is not retried
}

TEST_F(BigQuerySourceTest, PersistentServerErrorsAreUnavailable) {
  fake_->AddFault(FakeBigQueryFault::BackendError("query", 10));
  auto source = NewSource();
  absl::Status s = QueryAll(*source, "SELECT id FROM crm.users").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("backendError"), std::string::npos);
  EXPECT_EQ(fake_->CountRequests("query"), 4);
}

TEST_F(BigQuerySourceTest, InvalidQueryQuotesBigQueryAndIsNotRetried) {
  auto source = NewSource();
  absl::Status s = QueryAll(*source, "SELEC id FROM crm.users").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("invalidQuery"), std::string::npos) << s;
  EXPECT_NE(s.message().find("Syntax error: near \"SELEC\""), std::string::npos) << s;
  EXPECT_NE(s.message().find("(error location: q)"), std::string::npos) << s;
  EXPECT_EQ(fake_->CountRequests("query"), 1);
  EXPECT_TRUE(fake_->Cancels().empty());

  fake_->AddFault(FakeBigQueryFault::InvalidQuery(
      "Unrecognized name: emial; Did you mean email? at [1:8]", "query"));
  s = QueryAll(*source, "SELECT emial FROM crm.users").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("Did you mean email? at [1:8] (error location: query)"),
            std::string::npos)
      << s;

  s = QueryAll(*source, "SELECT id FROM nowhere").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("must be qualified with a dataset"), std::string::npos) << s;
}

TEST_F(BigQuerySourceTest, MissingTablesProjectsAndJobsSayWhatToCheck) {
  auto source = NewSource();
  absl::Status s = QueryAll(*source, "SELECT id FROM crm.nope").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("Not found: Table my-proj:crm.nope"), std::string::npos) << s;
  EXPECT_NE(s.message().find("`location` (\"US\")"), std::string::npos) << s;

  auto other = NewSource({{"project_id", "no-such-project"}});
  s = other->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("check project_id"), std::string::npos) << s;

  InsertUsers(1, 5);
  FakeBigQueryFault gone;
  gone.method = "getQueryResults";
  gone.status = 404;
  gone.reason = "notFound";
  gone.message = "Not found: Job my-proj:US.job_fake0003";
  fake_->AddFault(gone);
  fake_->SetPollsBeforeComplete(1);  // the 404 answers a poll
  auto reader = source->Query("SELECT id FROM crm.users");
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition) << reader.status();
  EXPECT_NE(reader.status().message().find("set `location`"), std::string::npos);
}

TEST_F(BigQuerySourceTest, ATokenRefusedMidStreamIsReMintedOnce) {
  InsertUsers(1, 30);
  auto source = NewSource({{"max_results", 10}});
  auto reader = source->Query("SELECT id FROM crm.users");
  ASSERT_TRUE(reader.ok());
  Row row;
  ASSERT_TRUE(*(*reader)->Next(row));
  fake_->RevokeTokens();
  auto rows = ReadAll(**reader);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 29u);
  EXPECT_EQ(fake_->tokens_issued(), 2);
  EXPECT_EQ(fake_->CountRequests("getQueryResults", 401), 1);

  FakeBigQueryFault refused;
  refused.method = "query";
  refused.status = 401;
  refused.reason = "authError";
  refused.message = "Request had invalid authentication credentials.";
  refused.times = 2;
  fake_->AddFault(refused);
  absl::Status s = QueryAll(*source, "SELECT id FROM crm.users").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_NE(s.message().find("service_account_key"), std::string::npos);
  EXPECT_EQ(fake_->tokens_issued(), 3);
}

TEST_F(BigQuerySourceTest, ARefusedKeyIsUnauthenticated) {
  FakeBigQueryServer other;
  ASSERT_TRUE(other.Start().ok());
  std::string foreign = other.AddServiceAccount("stranger@elsewhere.iam.gserviceaccount.com");
  auto source = NewSource({{"service_account_key", foreign}});
  absl::Status s = source->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_NE(s.message().find("invalid_grant"), std::string::npos) << s;
  EXPECT_NE(s.message().find("service_account_key"), std::string::npos) << s;
  EXPECT_EQ(fake_->CountRequests("query"), 0);
}

TEST_F(BigQuerySourceTest, AccessDeniedNamesTheMissingRole) {
  fake_->DenyJobsCreate(kAccount);
  auto source = NewSource();
  absl::Status s = source->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_NE(s.message().find("missing bigquery.jobs.create"), std::string::npos) << s;
  EXPECT_NE(s.message().find("roles/bigquery.jobUser"), std::string::npos) << s;
  EXPECT_EQ(fake_->CountRequests("query"), 1);  // not retried

  std::string reader_key = fake_->AddServiceAccount("reader@my-proj.iam.gserviceaccount.com");
  fake_->DenyDataset("reader@my-proj.iam.gserviceaccount.com", "crm");
  auto reader = NewSource({{"service_account_key", reader_key}});
  EXPECT_TRUE(reader->CheckConnection().ok());
  s = QueryAll(*reader, "SELECT id FROM crm.users").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_NE(s.message().find("roles/bigquery.dataViewer"), std::string::npos) << s;
}

TEST_F(BigQuerySourceTest, AnErrorResultInsideA200FailsTheQuery) {
  InsertUsers(1, 3);
  fake_->FailNextJob({"invalidQuery", "Division by zero: 1 / 0", "", 200, false});
  auto source = NewSource();
  absl::Status s = QueryAll(*source, "SELECT id FROM crm.users").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("Division by zero"), std::string::npos) << s;
  EXPECT_EQ(fake_->CountRequests("jobs.get"), 1);
  EXPECT_EQ(RequestsOf("jobs.get")[0].params.at("location"), "US");

  // errors[] that are only warnings: the job's status has no errorResult.
  fake_->ClearRequests();
  fake_->FailNextJob({"invalid", "Some rows were skipped", "", 200, true});
  auto paged = NewSource({{"max_results", 1}});
  auto rows = QueryAll(*paged, "SELECT id FROM crm.users");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 3u);
  EXPECT_EQ(fake_->CountRequests("getQueryResults"), 2);  // every page repeats errors[]
  EXPECT_EQ(fake_->CountRequests("jobs.get"), 1);         // checked once: DONE, no errorResult
}

TEST_F(BigQuerySourceTest, AJobThatFailsWhileRunningIsAnError) {
  Exec("CREATE TABLE crm.docs (id INT64, body STRING TEXT)");
  Exec("INSERT INTO crm.docs VALUES (1, '{}'), (2, 'not json')");
  auto source = NewSource();
  // Fails within jobs.query's wait: an HTTP error of jobs.query.
  absl::Status s = QueryAll(*source, "SELECT id, json(body) AS j FROM crm.docs").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("malformed JSON"), std::string::npos) << s;
  // Fails after polls: the HTTP error of getQueryResults.
  fake_->SetPollsBeforeComplete(2);
  s = QueryAll(*source, "SELECT id, json(body) AS j FROM crm.docs").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("malformed JSON"), std::string::npos) << s;
  EXPECT_EQ(fake_->CountRequests("getQueryResults", 400), 1);
}

TEST_F(BigQuerySourceTest, AFailureMidStreamIsAnErrorNotACleanEnd) {
  InsertUsers(1, 30);
  fake_->AddFault(FakeBigQueryFault::BackendError("getQueryResults", 10));  // page 2 never comes
  auto source = NewSource({{"max_results", 10}});
  auto reader = source->Query("SELECT id FROM crm.users ORDER BY id");
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<Row> rows;
  Row row;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) rows.push_back(row);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kUnavailable) << more.status();
  EXPECT_NE(more.status().message().find("fetch page 2"), std::string::npos) << more.status();
  EXPECT_EQ(rows.size(), 10u);
  EXPECT_EQ((*reader)->Next(row).status(), more.status());  // sticky
  ASSERT_EQ(fake_->Cancels().size(), 1u);
  reader->reset();
  EXPECT_EQ(fake_->Cancels().size(), 1u);  // once
}

TEST_F(BigQuerySourceTest, FailingOnALaterPageAfterRowsWereDelivered) {
  InsertUsers(1, 30);
  FakeBigQueryFault later = FakeBigQueryFault::BackendError("getQueryResults", 4);
  later.skip = 1;  // page 2 is served, page 3 fails every attempt
  fake_->AddFault(later);
  auto source = NewSource({{"max_results", 10}});
  auto reader = source->Query("SELECT id FROM crm.users ORDER BY id");
  ASSERT_TRUE(reader.ok());
  auto rows = ReadAll(**reader);
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kUnavailable) << rows.status();
  EXPECT_NE(rows.status().message().find("fetch page 3"), std::string::npos) << rows.status();
  EXPECT_EQ(fake_->CountRequests("getQueryResults", 500), 4);
}

TEST_F(BigQuerySourceTest, CancelWhilePollingCancelsTheJobAndStopsPolling) {
  fake_->SetPollsBeforeComplete(1'000'000);
  clock_.CancelDuringSleep(2);  // polled twice (the first without a wait), then cancelled
  auto source = NewSource();
  auto reader = source->Query("SELECT id FROM crm.users", QueryOptions{"id", &cancel_});
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_NE(reader.status().message().find("job_fake0001"), std::string::npos) << reader.status();
  std::vector<FakeBigQueryCancel> cancels = fake_->Cancels();
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0].job_id, "job_fake0001");
  EXPECT_EQ(cancels[0].location, "US");
  EXPECT_EQ(RequestsOf("getQueryResults").size(), 2u);
  // The cancel is the last request: no poll after it.
  std::vector<FakeBigQueryRequest> requests = fake_->Requests();
  ASSERT_FALSE(requests.empty());
  EXPECT_EQ(requests.back().method, "cancel");
  EXPECT_EQ(clock_.sleeps(), 2);
}

TEST_F(BigQuerySourceTest, AlreadyCancelledRunCreatesNoJob) {
  cancel_ = true;
  auto reader = NewSource()->Query("SELECT id FROM crm.users", QueryOptions{"id", &cancel_});
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_EQ(fake_->jobs_created(), 0);
  EXPECT_TRUE(RequestsOf("query").empty());
  EXPECT_TRUE(fake_->Cancels().empty());
}

TEST_F(BigQuerySourceTest, CancelBetweenPagesCancelsTheJobAndFetchesNoMore) {
  InsertUsers(1, 30);
  auto source = NewSource({{"max_results", 10}});
  auto reader = source->Query("SELECT id FROM crm.users", QueryOptions{"id", &cancel_});
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(*(*reader)->Next(row));
  const size_t pages = RequestsOf("getQueryResults").size();
  cancel_ = true;
  EXPECT_EQ((*reader)->Next(row).status().code(), absl::StatusCode::kCancelled);
  reader->reset();  // no second cancel when dropped
  EXPECT_EQ(fake_->Cancels().size(), 1u);
  EXPECT_EQ(RequestsOf("getQueryResults").size(), pages);
}

TEST_F(BigQuerySourceTest, DroppingAReaderEarlyCancelsTheJob) {
  InsertUsers(1, 30);
  auto source = NewSource({{"max_results", 10}});
  {
    auto reader = source->Query("SELECT id FROM crm.users");
    ASSERT_TRUE(reader.ok());
    Row row;
    ASSERT_TRUE(*(*reader)->Next(row));
  }
  std::vector<FakeBigQueryCancel> cancels = fake_->Cancels();
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0].job_id, "job_fake0001");
  EXPECT_EQ(cancels[0].location, "US");
  EXPECT_EQ(RequestsOf("cancel")[0].params.at("location"), "US");

  // Read to the end: nothing to cancel.
  fake_->ClearRequests();
  {
    auto reader = source->Query("SELECT id FROM crm.users");
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE(ReadAll(**reader).ok());
  }
  EXPECT_TRUE(fake_->Cancels().empty());
}

TEST_F(BigQuerySourceTest, ConcurrentSourcesShareTheFake) {
  InsertUsers(1, 500);
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<std::vector<Row>>> results(4);
  std::vector<std::unique_ptr<Source>> sources;
  for (int i = 0; i < 4; ++i) sources.push_back(NewSource({{"max_results", 50}}));
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = QueryAll(*sources[i], "SELECT id FROM crm.users ORDER BY id"); });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->size(), 500u);
  }
  EXPECT_EQ(fake_->jobs_created(), 4);
}

TEST_F(BigQuerySourceTest, MaximumBytesBilledIsSent) {
  auto source = NewSource({{"maximum_bytes_billed", 1000000000}, {"query_timeout_s", 0}});
  ASSERT_TRUE(source->CheckConnection().ok());
  json body = json::parse(RequestsOf("query")[0].body);
  EXPECT_EQ(body["maximumBytesBilled"], "1000000000");
  EXPECT_FALSE(body.contains("jobTimeoutMs"));
}

// A hand-written server for replies the fake does not produce.
TEST(BigQueryProtocolTest, ARowCountShortOfTotalRowsIsAnError) {
  FakeClock clock;
  HttpTestServer server([](const TestRequest& req) {
    if (req.target == "/token") {
      return TestResponse::Json(200, R"({"access_token":"t","expires_in":3599})");
    }
    if (req.target.find("/cancel") != std::string::npos) return TestResponse::Json(200, "{}");
    return TestResponse::Json(
        200, R"({"jobComplete":true,"jobReference":{"projectId":"p","jobId":"j","location":"US"},
                 "schema":{"fields":[{"name":"id","type":"INTEGER"}]},"totalRows":"3",
                 "rows":[{"f":[{"v":"1"}]},{"f":[{"v":"2"}]}]})");
  });
  ASSERT_TRUE(server.Start().ok());
  absl::StatusOr<RsaKeyPair> pair = GenerateRsaKeyPair();
  ASSERT_TRUE(pair.ok());
  json key = {{"type", "service_account"},
              {"project_id", "p"},
              {"private_key", pair->private_key_pem},
              {"client_email", "a@p.iam.gserviceaccount.com"}};
  json settings = {{"service_account_key", key.dump()},
                   {"token_url", server.Url("/token")},
                   {"base_url", server.Url("/")}};
  SourceDefinition def = BigQuerySourceDefinition();
  ASSERT_TRUE(CheckSettings(def.settings, settings).empty());
  auto http = NewCurlHttpClient();
  auto source = def.create(settings, ConnectorEnv{http.get(), &clock});
  ASSERT_TRUE(source.ok()) << source.status();
  auto reader = (*source)->Query("SELECT id FROM t");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  EXPECT_TRUE(*(*reader)->Next(row));
  EXPECT_TRUE(*(*reader)->Next(row));
  absl::StatusOr<bool> end = (*reader)->Next(row);
  EXPECT_EQ(end.status().code(), absl::StatusCode::kUnavailable) << end.status();
  EXPECT_NE(end.status().message().find("reported 3 rows but its pages held 2"), std::string::npos);
}

}  // namespace
}  // namespace backflow
