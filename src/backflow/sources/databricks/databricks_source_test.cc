#include "backflow/sources/databricks/databricks_source.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <thread>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/sources/databricks/fake_databricks_server.h"
#include "backflow/testing/cancelling_clock.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::string_literals;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kPat[] = "dapi0123456789abcdef0123456789abcdef";
constexpr char kUser[] = "etl@example.com";
constexpr char kClientId[] = "6f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8";
constexpr char kClientSecret[] = "dose0123456789abcdef";
constexpr char kWarehouse[] = "abcdef0123456789";

DatabricksColumnType Col(const std::string& name, const std::string& type_text,
                         const std::string& type_name = "") {
  json c = {{"name", name}, {"type_text", type_text}, {"position", 0}};
  if (!type_name.empty()) c["type_name"] = type_name;
  absl::StatusOr<DatabricksColumnType> out = ParseDatabricksColumn(c);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : DatabricksColumnType{};
}

Value Decode(const DatabricksColumnType& c, const json& cell) {
  absl::StatusOr<Value> v = DecodeDatabricksCell(c, cell);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : Value::Null();
}

Value Ts(std::string s) { return Value::Text(ValueType::kTimestamp, std::move(s)); }
Value Dec(std::string s) { return Value::Text(ValueType::kDecimal, std::move(s)); }
Value Js(std::string s) { return Value::Text(ValueType::kJson, std::move(s)); }

// ------------------------------------------------------------ pure helpers

TEST(DatabricksUrlTest, DefaultBaseUrlFromTheWorkspaceHost) {
  EXPECT_EQ(DatabricksDefaultBaseUrl("dbc-a1b2c3d4-e5f6.cloud.databricks.com"),
            "https://dbc-a1b2c3d4-e5f6.cloud.databricks.com");
  EXPECT_EQ(DatabricksDefaultBaseUrl("https://adb-1234567890123456.7.azuredatabricks.net/?o=12#"),
            "https://adb-1234567890123456.7.azuredatabricks.net");
  EXPECT_EQ(DatabricksDefaultBaseUrl("HTTPS://Dbc-X.cloud.databricks.com/"),
            "https://dbc-x.cloud.databricks.com");
  EXPECT_EQ(DatabricksDefaultBaseUrl("http://127.0.0.1:8080/"), "http://127.0.0.1:8080");
}

TEST(DatabricksTimestampTest, BothSuffixesAndOffsetsBecomeUtcWithZ) {
  EXPECT_EQ(*DatabricksTimestampText("2016-02-14T16:52:13.000Z"), "2016-02-14T16:52:13Z");
  EXPECT_EQ(*DatabricksTimestampText("2024-06-01T00:02:03.123Z"), "2024-06-01T00:02:03.123Z");
  EXPECT_EQ(*DatabricksTimestampText("2024-06-01T00:02:03.123+0000"), "2024-06-01T00:02:03.123Z");
  EXPECT_EQ(*DatabricksTimestampText("2024-06-01T00:02:03.123+00:00"), "2024-06-01T00:02:03.123Z");
  EXPECT_EQ(*DatabricksTimestampText("2024-06-01 00:02:03.123456"), "2024-06-01T00:02:03.123456Z");
  EXPECT_EQ(*DatabricksTimestampText("2024-06-01T02:02:03.5+0200"), "2024-06-01T00:02:03.5Z");
  EXPECT_EQ(*DatabricksTimestampText("2024-05-31T21:00:00-03:00"), "2024-06-01T00:00:00Z");
  EXPECT_EQ(*DatabricksTimestampText("2024-01-01T00:30:00+01"), "2023-12-31T23:30:00Z");
  EXPECT_EQ(*DatabricksTimestampText("2024-06-01T00:02Z"), "2024-06-01T00:02:00Z");
  EXPECT_EQ(*DatabricksTimestampText("2024-02-29T12:00:00.123456789Z"),
            "2024-02-29T12:00:00.123456789Z");
  EXPECT_EQ(*DatabricksTimestampText("0001-01-01T00:00:00Z"), "0001-01-01T00:00:00Z");
  for (const char* bad :
       {"", "2024-06-01", "1717200123", "2024-13-01T00:00:00Z", "2023-02-29T00:00:00Z",
        "2024-06-01T24:00:00Z", "2024-06-01T00:00:00X", "2024-06-01T00:00:00+5",
        "0001-01-01T00:00:00+0100", "2024-06-01T00:00:00.1234567890Z"}) {
    EXPECT_FALSE(DatabricksTimestampText(bad).ok()) << bad;
  }
}

TEST(DatabricksDecodeTest, TheBriefsExampleManifestAndRows) {
  // §3.8: the manifest's columns and the rows of the external link.
  json manifest = json::parse(R"json({"format":"JSON_ARRAY",
   "schema":{"column_count":4,"columns":[
     {"name":"id","type_text":"BIGINT","type_name":"LONG","position":0},
     {"name":"email","type_text":"STRING","type_name":"STRING","position":1},
     {"name":"score","type_text":"DECIMAL(10,2)","type_name":"DECIMAL","type_precision":10,"type_scale":2,"position":2},
     {"name":"updated_at","type_text":"TIMESTAMP","type_name":"TIMESTAMP","position":3}]}})json");
  std::vector<DatabricksColumnType> cols;
  for (const json& c : manifest["schema"]["columns"]) {
    absl::StatusOr<DatabricksColumnType> col = ParseDatabricksColumn(c);
    ASSERT_TRUE(col.ok()) << col.status();
    cols.push_back(*col);
  }
  EXPECT_EQ(cols[0].column.type, ValueType::kInt64);
  EXPECT_EQ(cols[1].column.type, ValueType::kString);
  EXPECT_EQ(cols[2].column.type, ValueType::kDecimal);
  EXPECT_EQ(cols[2].column.source_type, "DECIMAL(10,2)");
  EXPECT_EQ(cols[3].column.type, ValueType::kTimestamp);
  JsonArrayRowScanner rows(
      R"([["1","a@example.com","12.50","2024-06-01T00:02:03.123Z"],["2",null,"0.00","2024-06-01T00:07:36.000Z"]])");
  std::vector<Row> decoded;
  json r;
  while (true) {
    absl::StatusOr<bool> more = rows.Next(r);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    Row row;
    for (size_t i = 0; i < cols.size(); ++i) row.push_back(Decode(cols[i], r[i]));
    decoded.push_back(row);
  }
  ASSERT_EQ(decoded.size(), 2u);
  EXPECT_EQ(decoded[0], (Row{Value::Int64(1), Value::String("a@example.com"), Dec("12.50"),
                             Ts("2024-06-01T00:02:03.123Z")}));
  EXPECT_EQ(decoded[1],
            (Row{Value::Int64(2), Value::Null(), Dec("0.00"), Ts("2024-06-01T00:07:36Z")}));
}

TEST(DatabricksDecodeTest, EveryTypeByTheColumnNotTheCell) {
  EXPECT_EQ(Decode(Col("i", "BIGINT"), "9223372036854775807"),
            Value::Int64(std::numeric_limits<int64_t>::max()));
  EXPECT_EQ(Decode(Col("i", "BIGINT"), "-9223372036854775808"),
            Value::Int64(std::numeric_limits<int64_t>::min()));
  EXPECT_FALSE(DecodeDatabricksCell(Col("i", "BIGINT"), "9223372036854775808").ok());
  EXPECT_FALSE(DecodeDatabricksCell(Col("i", "INT"), "1.5").ok());
  EXPECT_EQ(Decode(Col("i", "SMALLINT"), "-7"), Value::Int64(-7));
  EXPECT_EQ(Decode(Col("i", "TINYINT"), "7"), Value::Int64(7));
  EXPECT_EQ(Decode(Col("i", "INT"), 42), Value::Int64(42));  // tolerated: a JSON integer
  EXPECT_EQ(Decode(Col("d", "DECIMAL(38,10)"), "-12345678901234567890.1234567890"),
            Dec("-12345678901234567890.1234567890"));
  EXPECT_EQ(Decode(Col("d", "DECIMAL(38,10)"), "0E-10"), Dec("0.0000000000"));
  EXPECT_EQ(Decode(Col("d", "DECIMAL(10,0)"), "1.5E3"), Dec("1500"));
  EXPECT_EQ(Decode(Col("d", "DECIMAL(10,2)"), "+007.10"), Dec("7.10"));
  EXPECT_FALSE(DecodeDatabricksCell(Col("d", "DECIMAL(10,2)"), "12,50").ok());
  EXPECT_FALSE(DecodeDatabricksCell(Col("d", "DECIMAL(10,2)"), 12.5).ok());  // never a double
  EXPECT_EQ(Decode(Col("f", "DOUBLE"), "1.5"), Value::Double(1.5));
  EXPECT_EQ(Decode(Col("f", "DOUBLE"), "1.0E10"), Value::Double(1e10));
  EXPECT_EQ(Decode(Col("f", "FLOAT"), "-Infinity"),
            Value::Double(-std::numeric_limits<double>::infinity()));
  EXPECT_TRUE(std::isnan(Decode(Col("f", "DOUBLE"), "NaN").double_value()));
  EXPECT_EQ(Decode(Col("b", "BOOLEAN"), "true"), Value::Bool(true));
  EXPECT_EQ(Decode(Col("b", "BOOLEAN"), "false"), Value::Bool(false));
  EXPECT_FALSE(DecodeDatabricksCell(Col("b", "BOOLEAN"), "1").ok());
  EXPECT_EQ(Decode(Col("d", "DATE"), "2024-02-29"), Value::Text(ValueType::kDate, "2024-02-29"));
  EXPECT_FALSE(DecodeDatabricksCell(Col("d", "DATE"), "2023-02-29").ok());
  EXPECT_EQ(Decode(Col("t", "TIMESTAMP"), "2024-06-01T00:02:03.120+0000"),
            Ts("2024-06-01T00:02:03.12Z"));
  EXPECT_FALSE(DecodeDatabricksCell(Col("t", "TIMESTAMP"), "1717200123").ok());
  EXPECT_EQ(Decode(Col("t", "TIMESTAMP_NTZ"), "2024-06-01T00:02:03.100"),
            Ts("2024-06-01T00:02:03.1"));
  EXPECT_EQ(Decode(Col("t", "TIMESTAMP_NTZ"), "2024-06-01 00:02:03"), Ts("2024-06-01T00:02:03"));
  EXPECT_FALSE(DecodeDatabricksCell(Col("t", "TIMESTAMP_NTZ"), "2024-06-01T00:02:03+0100").ok());
  EXPECT_EQ(Decode(Col("s", "STRING"), "007"), Value::String("007"));
  EXPECT_EQ(Decode(Col("s", "VARCHAR(10)"), "x"), Value::String("x"));
  EXPECT_EQ(Decode(Col("s", "INTERVAL DAY TO SECOND"), "1 02:03:04.000000000"),
            Value::String("1 02:03:04.000000000"));
  EXPECT_EQ(Decode(Col("y", "BINARY"), "AP8Q"), Value::Text(ValueType::kBytes, "\x00\xff\x10"s));
  absl::StatusOr<Value> bad_binary = DecodeDatabricksCell(Col("y", "BINARY"), "not base64!");
  EXPECT_EQ(bad_binary.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bad_binary.status().message(), HasSubstr("base64(col)"));
  for (const char* type : {"BIGINT", "DECIMAL(5,1)", "TIMESTAMP", "ARRAY<INT>", "BINARY", "DATE"}) {
    EXPECT_EQ(Decode(Col("x", type), nullptr), Value::Null()) << type;
  }
}

TEST(DatabricksDecodeTest, NestedTypesAreJsonWhenStrictElseAJsonString) {
  EXPECT_EQ(Decode(Col("a", "ARRAY<INT>"), "[1, 2, 3]"), Js("[1,2,3]"));
  EXPECT_EQ(Decode(Col("m", "MAP<STRING,INT>"), R"({"a": 1, "b c": 2})"), Js(R"({"a":1,"b c":2})"));
  EXPECT_EQ(Decode(Col("s", "STRUCT<a:INT,b:STRING>"), R"({"a":1,"b":"x"})"),
            Js(R"({"a":1,"b":"x"})"));
  EXPECT_EQ(Decode(Col("v", "VARIANT"), R"({"k":[true,null]})"), Js(R"({"k":[true,null]})"));
  // The warehouse rendering of ARRAY<DATE> is not JSON: kept as a JSON string.
  EXPECT_EQ(Decode(Col("a", "ARRAY<DATE>"), "[2021-07-20,2021-07-19]"),
            Js(R"("[2021-07-20,2021-07-19]")"));
  EXPECT_EQ(Decode(Col("a", "ARRAY<INT>"), json::array({1, 2})), Js("[1,2]"));
}

TEST(DatabricksDecodeTest, ColumnKindsPreferTypeText) {
  DatabricksColumnType ntz = Col("t", "TIMESTAMP_NTZ", "TIMESTAMP");
  EXPECT_EQ(ntz.kind, "TIMESTAMP_NTZ");
  EXPECT_EQ(Col("i", "BIGINT", "LONG").column.type, ValueType::kInt64);
  EXPECT_EQ(Col("a", "array<struct<a:int>>", "ARRAY").column.type, ValueType::kJson);
  EXPECT_EQ(Col("a", "array<struct<a:int>>", "ARRAY").column.source_type, "array<struct<a:int>>");
  // type_name alone (no type_text) and unknown types.
  absl::StatusOr<DatabricksColumnType> by_name =
      ParseDatabricksColumn(json{{"name", "n"}, {"type_name", "LONG"}});
  ASSERT_TRUE(by_name.ok());
  EXPECT_EQ(by_name->column.type, ValueType::kInt64);
  EXPECT_EQ(Col("g", "GEOGRAPHY(4326)").column.type, ValueType::kString);
  EXPECT_EQ(Col("x", "SOMETHING_NEW", "SOMETHING_NEW").column.type, ValueType::kString);
  EXPECT_EQ(ParseDatabricksColumn(json{{"name", "n"}}).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseDatabricksColumn(json::array()).status().code(), absl::StatusCode::kDataLoss);
}

TEST(DatabricksScannerTest, ReadsRowsOneAtATime) {
  JsonArrayRowScanner s(" [ [\"a]\\\"[\", null ] ,\n[\"{x}\",\"2\"],[]] \n");
  json row;
  ASSERT_TRUE(*s.Next(row));
  EXPECT_EQ(row, json::parse(R"(["a]\"[",null])"));
  ASSERT_TRUE(*s.Next(row));
  EXPECT_EQ(row, json::parse(R"(["{x}","2"])"));
  ASSERT_TRUE(*s.Next(row));
  EXPECT_EQ(row, json::array());
  EXPECT_FALSE(*s.Next(row));
  EXPECT_FALSE(*s.Next(row));

  JsonArrayRowScanner empty("[]");
  EXPECT_FALSE(*empty.Next(row));
  for (const char* bad : {"", "{}", "[[\"a\"],", "[[\"a\"]", "[[\"a\"] [\"b\"]]", "[[\"a]]",
                          "[\"a\"]", "[[\"a\"]] x", "[[1,]]"}) {
    JsonArrayRowScanner b(bad);
    absl::StatusOr<bool> r = b.Next(row);
    while (r.ok() && *r) r = b.Next(row);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << bad;
  }
}

// -------------------------------------------------------------- settings

TEST(DatabricksSettingsTest, ValidatesAndReportsTheKey) {
  SourceDefinition def = DatabricksSourceDefinition();
  auto http = NewCurlHttpClient();
  FakeClock clock;
  ConnectorEnv env{http.get(), &clock};
  auto create = [&](json settings) {
    std::vector<std::string> problems = CheckSettings(def.settings, settings);
    EXPECT_TRUE(problems.empty()) << problems[0];
    return def.create(settings, env);
  };
  auto message = [&](json settings) { return std::string(create(settings).status().message()); };
  json ok = {{"host", "dbc-1.cloud.databricks.com"}, {"warehouse_id", kWarehouse}, {"token", kPat}};
  EXPECT_TRUE(create(ok).ok());
  absl::StatusOr<DatabricksConfig> cfg = ParseDatabricksSettings(ok);
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->http.base_url, "https://dbc-1.cloud.databricks.com");
  EXPECT_EQ(cfg->token_url, "https://dbc-1.cloud.databricks.com/oidc/v1/token");
  EXPECT_EQ(cfg->auth, DatabricksAuth::kPersonalAccessToken);
  EXPECT_EQ(cfg->disposition, DatabricksDisposition::kAuto);
  EXPECT_EQ(cfg->wait_timeout_s, 10);

  json oauth = ok;
  oauth.erase("token");
  oauth["client_id"] = kClientId;
  oauth["client_secret"] = kClientSecret;
  oauth["base_url"] = "http://127.0.0.1:9/";
  cfg = ParseDatabricksSettings(oauth);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->auth, DatabricksAuth::kOAuthM2M);
  EXPECT_EQ(cfg->token_url, "http://127.0.0.1:9/oidc/v1/token");

  json no_host = ok;
  no_host.erase("host");
  EXPECT_THAT(message(no_host), HasSubstr("host: required"));
  json no_wh = ok;
  no_wh.erase("warehouse_id");
  EXPECT_EQ(def.create(no_wh, env).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(def.create(no_wh, env).status().message()), HasSubstr("warehouse_id"));
  json none = ok;
  none.erase("token");
  EXPECT_THAT(message(none), HasSubstr("no credentials"));
  json both = oauth;
  both["token"] = kPat;
  EXPECT_THAT(message(both), HasSubstr("not both"));
  json half = ok;
  half.erase("token");
  half["client_id"] = kClientId;
  EXPECT_THAT(message(half), HasSubstr("client_secret"));
  json wait = ok;
  wait["wait_timeout_s"] = 3;
  EXPECT_THAT(message(wait), HasSubstr("wait_timeout_s"));
  json bad_url = ok;
  bad_url["base_url"] = "ftp://x";
  EXPECT_THAT(message(bad_url), HasSubstr("base_url"));
  json bad_disposition = ok;
  bad_disposition["disposition"] = "arrow";
  EXPECT_FALSE(CheckSettings(def.settings, bad_disposition).empty());
  EXPECT_TRUE(FindSetting(def.settings, "token")->secret);
  EXPECT_TRUE(FindSetting(def.settings, "client_secret")->secret);
  EXPECT_TRUE(FindSetting(def.settings, "warehouse_id")->required);
}

// ------------------------------------------------------------- with the fake

class DatabricksSourceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartFake(FakeDatabricksOptions{}); }

  void StartFake(FakeDatabricksOptions options) {
    options.clock = &clock_;
    fake_ = std::make_unique<FakeDatabricksServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    fake_->AddPersonalAccessToken(kPat, kUser);
    fake_->AddServicePrincipal(kClientId, kClientSecret);
    ASSERT_TRUE(fake_->CreateSchema("crm").ok());
    Exec(
        "CREATE TABLE crm.users (id BIGINT, email STRING TEXT, score DECIMAL(10,2), "
        "updated_at TIMESTAMP)");
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
    return {{"base_url", fake_->BaseUrl()},
            {"warehouse_id", kWarehouse},
            {"token", kPat},
            {"catalog", "main"},
            {"schema", "crm"},
            {"max_retries", 3},
            {"timeout_ms", 10'000}};
  }

  std::unique_ptr<Source> NewSource(const json& overrides = json::object()) {
    SourceDefinition def = DatabricksSourceDefinition();
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

  json OAuth() const {
    return {{"token", nullptr}, {"client_id", kClientId}, {"client_secret", kClientSecret}};
  }

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

  std::vector<FakeDatabricksRequest> RequestsOf(const std::string& method) const {
    std::vector<FakeDatabricksRequest> out;
    for (const auto& r : fake_->Requests()) {
      if (r.method == method) out.push_back(r);
    }
    return out;
  }

  static std::string Score(int n) { return fmt::format("{}.{:02}", n, n % 100); }

  void ExpectUsers(const std::vector<Row>& rows, int from, int to) {
    ASSERT_EQ(rows.size(), static_cast<size_t>(to - from + 1));
    for (int i = from; i <= to; ++i) {
      const Row& r = rows[static_cast<size_t>(i - from)];
      ASSERT_EQ(r.size(), 4u);
      EXPECT_EQ(r[0], Value::Int64(i));
      EXPECT_EQ(r[1], Value::String(fmt::format("user{}@example.com", i)));
      EXPECT_EQ(r[2], Dec(Score(i)));
    }
  }

  std::atomic<bool> cancel_{false};  // set by clock_ when a test asks
  CancellingClock clock_{&cancel_};
  std::unique_ptr<FakeDatabricksServer> fake_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

TEST_F(DatabricksSourceTest, InlineChunksAreFetchedOneAtATimeAsTheReaderAdvances) {
  InsertUsers(1, 250);
  fake_->SetChunkRows(100);
  auto source = NewSource();
  auto reader = source->Query("SELECT id, email, score, updated_at FROM users ORDER BY id;\n");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const Schema& schema = (*reader)->schema();
  ASSERT_EQ(schema.size(), 4u);
  EXPECT_EQ(schema[0].type, ValueType::kInt64);
  EXPECT_EQ(schema[0].source_type, "BIGINT");
  EXPECT_EQ(schema[2].type, ValueType::kDecimal);
  EXPECT_EQ(schema[2].source_type, "DECIMAL(10,2)");
  EXPECT_EQ(schema[3].type, ValueType::kTimestamp);

  Row row;
  int n = 0;
  auto next = [&] {
    absl::StatusOr<bool> more = (*reader)->Next(row);
    EXPECT_TRUE(more.ok()) << more.status();
    if (more.ok() && *more) {
      ++n;
      EXPECT_EQ(row[0], Value::Int64(n));
      EXPECT_EQ(row[2], Dec(Score(n)));
      std::string fraction = fmt::format("{:06}", n * 7);
      while (!fraction.empty() && fraction.back() == '0') fraction.pop_back();
      EXPECT_EQ(row[3], Ts("2024-06-01T00:02:03" + (fraction.empty() ? "" : "." + fraction) + "Z"));
    }
    return more.ok() && *more;
  };
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(next());
  EXPECT_EQ(fake_->CountRequests("chunk"), 0);  // chunk 0 came with the reply
  ASSERT_TRUE(next());
  EXPECT_EQ(fake_->CountRequests("chunk"), 1);
  for (int i = 0; i < 99; ++i) ASSERT_TRUE(next());
  EXPECT_EQ(fake_->CountRequests("chunk"), 1);
  while (next()) {
  }
  EXPECT_EQ(n, 250);
  EXPECT_EQ(fake_->CountRequests("chunk"), 2);
  reader->reset();
  EXPECT_TRUE(fake_->Cancels().empty());  // read to the end: nothing to cancel

  std::vector<FakeDatabricksRequest> execs = RequestsOf("execute");
  ASSERT_EQ(execs.size(), 1u);
  EXPECT_EQ(execs[0].target, "/api/2.0/sql/statements/");
  EXPECT_EQ(execs[0].principal, kUser);
  json body = json::parse(execs[0].body);
  EXPECT_EQ(body, json({{"statement", "SELECT id, email, score, updated_at FROM users ORDER BY id"},
                        {"warehouse_id", kWarehouse},
                        {"catalog", "main"},
                        {"schema", "crm"},
                        {"wait_timeout", "10s"},
                        {"on_wait_timeout", "CONTINUE"},
                        {"disposition", "INLINE"},
                        {"format", "JSON_ARRAY"}}));
  // The chunks were reached through next_chunk_internal_link.
  std::vector<FakeDatabricksRequest> chunks = RequestsOf("chunk");
  EXPECT_THAT(chunks[0].target, HasSubstr("/result/chunks/1"));
  EXPECT_THAT(chunks[1].target, HasSubstr("/result/chunks/2"));
  for (const auto& r : fake_->Requests()) {
    EXPECT_TRUE(r.had_authorization) << r.target;
  }
}

TEST_F(DatabricksSourceTest, EveryTypeArrivesExactlyWithEitherTimestampSuffix) {
  Exec(
      "CREATE TABLE crm.types (id BIGINT, i INT, s SMALLINT, t TINYINT, d DECIMAL(10,2), big "
      "DECIMAL TEXT(38,10), f DOUBLE, fl FLOAT, b BOOLEAN, dt DATE, ts TIMESTAMP, ntz "
      "TIMESTAMP_NTZ, str STRING TEXT, bin BINARY, arr TEXT, dates TEXT, m TEXT, st TEXT, v "
      "TEXT)");
  fake_->SetColumnType("arr", "ARRAY<INT>");
  fake_->SetColumnType("dates", "ARRAY<DATE>");
  fake_->SetColumnType("m", "MAP<STRING,INT>");
  fake_->SetColumnType("st", "STRUCT<a:INT,b:STRING>");
  fake_->SetColumnType("v", "VARIANT");
  Exec(
      "INSERT INTO crm.types VALUES (9223372036854775807, -2147483648, 32767, -128, 12.5, "
      "'12345678901234567890.1234567890', 1.5, 1e10, 1, '2024-02-29', '2024-06-01 "
      "02:02:03.123456+02:00', '2024-06-01 00:02:03', '007', x'00ff10', '[1, 2]', "
      "'[2021-07-20,2021-07-19]', '{\"a\": 1}', '{\"a\":1,\"b\":\"x\"}', '{\"k\":[true,null]}')");
  Exec(
      "INSERT INTO crm.types VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL, "
      "1717200123, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)");
  for (const char* suffix : {"Z", "+0000"}) {
    fake_->SetTimestampSuffix(suffix);
    auto source = NewSource();
    absl::StatusOr<std::unique_ptr<RowReader>> reader =
        source->Query("SELECT * FROM main.crm.types ORDER BY id DESC");
    ASSERT_TRUE(reader.ok()) << reader.status();
    std::vector<std::pair<std::string, ValueType>> types;
    for (const Column& c : (*reader)->schema()) types.emplace_back(c.source_type, c.type);
    EXPECT_EQ(types, (std::vector<std::pair<std::string, ValueType>>{
                         {"BIGINT", ValueType::kInt64},
                         {"INT", ValueType::kInt64},
                         {"SMALLINT", ValueType::kInt64},
                         {"TINYINT", ValueType::kInt64},
                         {"DECIMAL(10,2)", ValueType::kDecimal},
                         {"DECIMAL(38,10)", ValueType::kDecimal},
                         {"DOUBLE", ValueType::kDouble},
                         {"FLOAT", ValueType::kDouble},
                         {"BOOLEAN", ValueType::kBool},
                         {"DATE", ValueType::kDate},
                         {"TIMESTAMP", ValueType::kTimestamp},
                         {"TIMESTAMP_NTZ", ValueType::kTimestamp},
                         {"STRING", ValueType::kString},
                         {"BINARY", ValueType::kBytes},
                         {"ARRAY<INT>", ValueType::kJson},
                         {"ARRAY<DATE>", ValueType::kJson},
                         {"MAP<STRING,INT>", ValueType::kJson},
                         {"STRUCT<A:INT,B:STRING>", ValueType::kJson},
                         {"VARIANT", ValueType::kJson}}));
    absl::StatusOr<std::vector<Row>> rows = ReadAll(**reader);
    ASSERT_TRUE(rows.ok()) << rows.status();
    ASSERT_EQ(rows->size(), 2u);
    EXPECT_EQ((*rows)[0],
              (Row{Value::Int64(std::numeric_limits<int64_t>::max()), Value::Int64(-2147483648LL),
                   Value::Int64(32767), Value::Int64(-128), Dec("12.50"),
                   Dec("12345678901234567890.1234567890"), Value::Double(1.5), Value::Double(1e10),
                   Value::Bool(true), Value::Text(ValueType::kDate, "2024-02-29"),
                   Ts("2024-06-01T00:02:03.123456Z"), Ts("2024-06-01T00:02:03"),
                   Value::String("007"), Value::Text(ValueType::kBytes, "\x00\xff\x10"s),
                   Js("[1,2]"), Js(R"("[2021-07-20,2021-07-19]")"), Js(R"({"a":1})"),
                   Js(R"({"a":1,"b":"x"})"), Js(R"({"k":[true,null]})")}))
        << suffix;
    Row nulls(19, Value::Null());
    nulls[0] = Value::Int64(2);
    nulls[8] = Value::Bool(false);
    nulls[10] = Ts("2024-06-01T00:02:03Z");
    EXPECT_EQ((*rows)[1], nulls) << suffix;
    // The wire really carried the suffix under test.
    std::string reply = RequestsOf("execute").back().reply;
    EXPECT_THAT(reply, HasSubstr(fmt::format("\"2024-06-01T00:02:03.123456{}\"", suffix)));
  }
}

TEST_F(DatabricksSourceTest, ExternalLinksAreDownloadedWithoutTheTokenAndWithTheirHeaders) {
  InsertUsers(1, 230);
  fake_->SetChunkRows(50);
  auto source = NewSource({{"disposition", "external_links"}});
  absl::StatusOr<std::vector<Row>> rows =
      QueryAll(*source, "SELECT id, email, score, updated_at FROM crm.users ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ExpectUsers(*rows, 1, 230);
  EXPECT_EQ(json::parse(RequestsOf("execute")[0].body)["disposition"], "EXTERNAL_LINKS");
  std::vector<FakeDatabricksRequest> downloads = RequestsOf("download");
  ASSERT_EQ(downloads.size(), 5u);
  for (const auto& d : downloads) {
    EXPECT_FALSE(d.had_authorization);
    EXPECT_EQ(d.status, 200) << d.reply;
  }
  EXPECT_EQ(fake_->CountRequests("chunk"), 4);
  EXPECT_TRUE(fake_->Cancels().empty());
}

TEST_F(DatabricksSourceTest, ALinkThatExpiredDuringRetriesIsRefreshed) {
  InsertUsers(1, 120);
  fake_->SetChunkRows(50);
  fake_->SetLinkLifetime(seconds(60));
  // Chunk 1's first download is throttled for longer than the link lives.
  FakeDatabricksFault slow = FakeDatabricksFault::Unavailable("download", 1);
  slow.retry_after = "90";
  slow.skip = 1;
  fake_->AddFault(slow);
  auto source = NewSource({{"disposition", "external_links"}});
  absl::StatusOr<std::vector<Row>> rows =
      QueryAll(*source, "SELECT id, email, score, updated_at FROM crm.users ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ExpectUsers(*rows, 1, 120);
  std::vector<FakeDatabricksRequest> downloads = RequestsOf("download");
  ASSERT_EQ(downloads.size(), 5u);
  EXPECT_EQ(downloads[1].status, 503);
  EXPECT_EQ(downloads[2].status, 403);
  EXPECT_THAT(downloads[2].reply, HasSubstr("Request has expired"));
  EXPECT_EQ(downloads[3].status, 200);
  // chunk 1 was asked for twice (once more for a fresh link), chunk 2 once.
  std::vector<FakeDatabricksRequest> chunks = RequestsOf("chunk");
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_THAT(chunks[1].target, HasSubstr("/result/chunks/1"));
  EXPECT_GE(clock_.total_slept(), seconds(90));
}

TEST_F(DatabricksSourceTest, LinksThatAreStaleOnArrivalAreRefreshedThenReported) {
  InsertUsers(1, 10);
  FakeClock fake_clock(clock_.Now() - seconds(45));  // the storage's clock is behind ours
  FakeDatabricksOptions options;
  options.clock = &fake_clock;
  options.link_lifetime = seconds(60);
  fake_ = std::make_unique<FakeDatabricksServer>(options);
  ASSERT_TRUE(fake_->Start().ok());
  fake_->AddPersonalAccessToken(kPat, kUser);
  ASSERT_TRUE(fake_->CreateSchema("crm").ok());
  Exec("CREATE TABLE crm.users (id BIGINT)");
  Exec("INSERT INTO crm.users VALUES (1)");
  auto source = NewSource({{"disposition", "external_links"}, {"max_link_refreshes", 2}});
  absl::StatusOr<std::vector<Row>> rows = QueryAll(*source, "SELECT id FROM crm.users");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kFailedPrecondition) << rows.status();
  EXPECT_THAT(rows.status().message(), HasSubstr("even after 2 fresh links"));
  EXPECT_THAT(rows.status().message(), HasSubstr("clock skew"));
  EXPECT_THAT(rows.status().message(), Not(HasSubstr("X-Amz-Signature")));
  EXPECT_EQ(fake_->CountRequests("download"), 0);  // never sent a link known to be stale
  EXPECT_EQ(fake_->CountRequests("chunk"), 2);
  EXPECT_EQ(fake_->Cancels().size(), 1u);
}

TEST_F(DatabricksSourceTest, StorageThatRefusesEveryLinkIsAConfigurationError) {
  InsertUsers(1, 10);
  FakeDatabricksFault denied;
  denied.method = "download";
  denied.status = 403;
  denied.message = "Access Denied";
  denied.times = 100;
  fake_->AddFault(denied);
  auto source = NewSource({{"disposition", "external_links"}});
  absl::StatusOr<std::vector<Row>> rows = QueryAll(*source, "SELECT id FROM crm.users");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kFailedPrecondition) << rows.status();
  EXPECT_THAT(rows.status().message(), HasSubstr("even after 3 fresh links"));
  EXPECT_THAT(rows.status().message(), HasSubstr("HTTP 403 AccessDenied: Access Denied"));
  EXPECT_THAT(rows.status().message(), HasSubstr("disposition: inline"));
  EXPECT_EQ(fake_->CountRequests("download"), 4);
}

TEST_F(DatabricksSourceTest, AutoDispositionFallsBackToExternalLinksForLargeResults) {
  FakeDatabricksOptions options;
  options.inline_byte_limit = 2000;
  StartFake(options);
  InsertUsers(1, 100);
  fake_->SetChunkRows(30);
  auto source = NewSource();
  absl::StatusOr<std::vector<Row>> rows =
      QueryAll(*source, "SELECT id, email, score, updated_at FROM crm.users ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ExpectUsers(*rows, 1, 100);
  std::vector<FakeDatabricksRequest> execs = RequestsOf("execute");
  ASSERT_EQ(execs.size(), 2u);
  EXPECT_EQ(json::parse(execs[0].body)["disposition"], "INLINE");
  EXPECT_THAT(execs[0].reply, HasSubstr("Inline byte limit exceeded"));
  EXPECT_EQ(json::parse(execs[1].body)["disposition"], "EXTERNAL_LINKS");
  EXPECT_EQ(fake_->CountRequests("download"), 4);

  // Small results stay inline: one statement, no downloads.
  fake_->ClearRequests();
  rows = QueryAll(*source, "SELECT id FROM crm.users WHERE id < 5");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 4u);
  EXPECT_EQ(fake_->CountRequests("execute"), 1);
  EXPECT_EQ(fake_->CountRequests("download"), 0);

  // disposition: inline reports the limit with the fix.
  auto inline_only = NewSource({{"disposition", "inline"}});
  rows = QueryAll(*inline_only, "SELECT id, email, score, updated_at FROM crm.users");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kFailedPrecondition) << rows.status();
  EXPECT_THAT(rows.status().message(), HasSubstr("disposition: external_links"));
}

TEST_F(DatabricksSourceTest, PendingAndRunningStatementsArePolledWithBackoffOnTheClock) {
  InsertUsers(1, 3);
  fake_->SetPolls(2, 3);
  auto source = NewSource();
  absl::StatusOr<std::vector<Row>> rows =
      QueryAll(*source, "SELECT id, email, score, updated_at FROM crm.users ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ExpectUsers(*rows, 1, 3);
  std::vector<FakeDatabricksRequest> polls = RequestsOf("status");
  ASSERT_EQ(polls.size(), 6u);
  EXPECT_THAT(polls[0].reply, HasSubstr("PENDING"));
  EXPECT_THAT(polls[2].reply, HasSubstr("RUNNING"));
  EXPECT_THAT(polls[5].reply, HasSubstr("SUCCEEDED"));
  // 100, 200, 400, 800, 1600, then capped at 2000 ms.
  EXPECT_EQ(clock_.total_slept(), milliseconds(5100));

  // wait_timeout_s 0: asynchronous from the start.
  fake_->SetPolls(0, 0);
  fake_->ClearRequests();
  auto async = NewSource({{"wait_timeout_s", 0}});
  rows = QueryAll(*async, "SELECT id FROM crm.users");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(json::parse(RequestsOf("execute")[0].body)["wait_timeout"], "0s");
  EXPECT_EQ(fake_->CountRequests("status"), 1);
}

TEST_F(DatabricksSourceTest, AStatementRunningPastTheQueryTimeoutIsCancelled) {
  fake_->SetPolls(0, 1'000'000);
  auto source = NewSource({{"query_timeout_s", 10}});
  absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query("SELECT id FROM crm.users");
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kDeadlineExceeded) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("query_timeout_s (10 s)"));
  ASSERT_EQ(fake_->Cancels().size(), 1u);
  EXPECT_EQ(RequestsOf("cancel")[0].target,
            fmt::format("/api/2.0/sql/statements/{}/cancel", fake_->Cancels()[0]));
}

TEST_F(DatabricksSourceTest, CancelWhilePollingCancelsTheStatementAndStopsPolling) {
  fake_->SetPolls(2, 1'000'000);
  clock_.CancelDuringSleep(4);  // three polls answered, then the run is cancelled
  auto source = NewSource({{"wait_timeout_s", 0}});
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      source->Query("SELECT id FROM crm.users", QueryOptions{"id", &cancel_});
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  ASSERT_EQ(fake_->Cancels().size(), 1u);
  const std::string id = fake_->Cancels()[0];
  EXPECT_THAT(reader.status().message(), HasSubstr(id));
  EXPECT_EQ(RequestsOf("status").size(), 3u);
  // The cancel is the last request: no poll after it.
  std::vector<FakeDatabricksRequest> requests = fake_->Requests();
  ASSERT_FALSE(requests.empty());
  EXPECT_EQ(requests.back().method, "cancel");
  EXPECT_EQ(requests.back().target, fmt::format("/api/2.0/sql/statements/{}/cancel", id));
  EXPECT_EQ(clock_.sleeps(), 4);
}

TEST_F(DatabricksSourceTest, AlreadyCancelledRunSubmitsNothing) {
  cancel_ = true;
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      NewSource()->Query("SELECT id FROM crm.users", QueryOptions{"id", &cancel_});
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  EXPECT_EQ(fake_->statements_created(), 0);
  EXPECT_TRUE(fake_->Cancels().empty());
}

TEST_F(DatabricksSourceTest, CancelBetweenChunksCancelsAndFetchesNoMore) {
  InsertUsers(1, 250);
  fake_->SetChunkRows(100);
  auto source = NewSource();
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      source->Query("SELECT id FROM crm.users", QueryOptions{"id", &cancel_});
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(*(*reader)->Next(row));
  cancel_ = true;
  EXPECT_EQ((*reader)->Next(row).status().code(), absl::StatusCode::kCancelled);
  reader->reset();  // no second cancel when dropped
  EXPECT_EQ(fake_->Cancels().size(), 1u);
  EXPECT_EQ(fake_->CountRequests("chunk"), 0);
}

TEST_F(DatabricksSourceTest, FailedInsideA200IsInvalidArgumentWithDatabricksWords) {
  fake_->FailNextStatement(
      {"BAD_REQUEST",
       "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column with name `emial` cannot be resolved.",
       "42703"});
  auto source = NewSource();
  absl::StatusOr<std::vector<Row>> rows = QueryAll(*source, "SELECT emial FROM crm.users");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kInvalidArgument) << rows.status();
  EXPECT_THAT(rows.status().message(), HasSubstr("BAD_REQUEST, SQLSTATE 42703"));
  EXPECT_THAT(rows.status().message(), HasSubstr("[UNRESOLVED_COLUMN.WITH_SUGGESTION]"));
  EXPECT_EQ(fake_->statements_created(), 1);  // not retried
  EXPECT_TRUE(fake_->Cancels().empty());

  // The same from the SQL engine, after polling.
  fake_->SetPolls(1, 1);
  rows = QueryAll(*source, "SELECT id FROM crm.nope");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kInvalidArgument) << rows.status();
  EXPECT_THAT(rows.status().message(), HasSubstr("[TABLE_OR_VIEW_NOT_FOUND]"));
  EXPECT_THAT(rows.status().message(), HasSubstr("42P01"));
}

TEST_F(DatabricksSourceTest, TransientStatementFailuresAreResubmitted) {
  InsertUsers(1, 2);
  fake_->FailNextStatement({"TEMPORARILY_UNAVAILABLE", "The warehouse is restarting", ""});
  auto source = NewSource();
  absl::StatusOr<std::vector<Row>> rows = QueryAll(*source, "SELECT id FROM crm.users");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 2u);
  EXPECT_EQ(fake_->statements_created(), 2);

  for (int i = 0; i < 4; ++i) {
    fake_->FailNextStatement({"SERVICE_UNDER_MAINTENANCE", "Down for maintenance", ""});
  }
  rows = QueryAll(*source, "SELECT id FROM crm.users");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kUnavailable) << rows.status();
  EXPECT_THAT(rows.status().message(), HasSubstr("after 3 re-submissions"));
  EXPECT_EQ(fake_->statements_created(), 6);

  fake_->FailNextStatement({"RESOURCE_EXHAUSTED", "Too many concurrent queries", ""});
  EXPECT_EQ(QueryAll(*source, "SELECT 1").status().code(), absl::StatusCode::kResourceExhausted);
  fake_->FailNextStatement({"INTERNAL_ERROR", "boom", "XX000"});
  EXPECT_EQ(QueryAll(*source, "SELECT 1").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(DatabricksSourceTest, RateLimitsAndUnavailabilityAreRetriedOnEveryCall) {
  InsertUsers(1, 30);
  fake_->SetChunkRows(10);
  fake_->SetPolls(0, 1);
  fake_->AddFault(FakeDatabricksFault::RateLimit("execute", 1, "7"));
  fake_->AddFault(FakeDatabricksFault::Unavailable("status", 1));
  fake_->AddFault(FakeDatabricksFault::RateLimit("chunk", 2));
  auto source = NewSource();
  absl::StatusOr<std::vector<Row>> rows =
      QueryAll(*source, "SELECT id, email, score, updated_at FROM crm.users ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ExpectUsers(*rows, 1, 30);
  EXPECT_EQ(fake_->CountRequests("execute", 429), 1);
  EXPECT_EQ(fake_->CountRequests("execute", 200), 1);
  EXPECT_EQ(fake_->CountRequests("status", 503), 1);
  EXPECT_EQ(fake_->CountRequests("chunk", 429), 2);
  EXPECT_EQ(fake_->statements_created(), 1);
  EXPECT_GE(clock_.total_slept(), seconds(7));  // Retry-After honoured

  fake_->AddFault(FakeDatabricksFault::RateLimit("execute", 10, "30"));
  rows = QueryAll(*source, "SELECT id FROM crm.users");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kResourceExhausted) << rows.status();
  EXPECT_EQ(RetryAfter(rows.status()), milliseconds(30'000));
  EXPECT_THAT(rows.status().message(), HasSubstr("after 4 attempts"));
  fake_->ClearFaults();
  fake_->AddFault(FakeDatabricksFault::Unavailable("execute", 10));
  rows = QueryAll(*source, "SELECT id FROM crm.users");
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kUnavailable) << rows.status();
  EXPECT_THAT(rows.status().message(), HasSubstr("TEMPORARILY_UNAVAILABLE"));
  fake_->ClearFaults();

  // A warehouse whose compute is not ready yet answers 400: retried too.
  FakeDatabricksFault not_ready;
  not_ready.method = "execute";
  not_ready.status = 400;
  not_ready.error_code = "INVALID_STATE";
  not_ready.message = "ClusterNotReadyException: the warehouse is starting";
  fake_->AddFault(not_ready);
  rows = QueryAll(*source, "SELECT id FROM crm.users");
  ASSERT_TRUE(rows.ok()) << rows.status();
}

TEST_F(DatabricksSourceTest, AFailureMidStreamIsAnErrorNotACleanEndAndCancels) {
  InsertUsers(1, 100);
  fake_->SetChunkRows(20);
  FakeDatabricksFault broken = FakeDatabricksFault::Unavailable("chunk", 10);
  broken.skip = 2;  // chunks 1 and 2 arrive, chunk 3 keeps failing
  fake_->AddFault(broken);
  auto source = NewSource();
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      source->Query("SELECT id FROM crm.users ORDER BY id");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int read = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++read;
  EXPECT_EQ(read, 60);
  ASSERT_EQ(more.status().code(), absl::StatusCode::kUnavailable) << more.status();
  EXPECT_THAT(more.status().message(), HasSubstr("fetch chunk 3"));
  EXPECT_EQ((*reader)->Next(row).status(), more.status());  // sticky
  ASSERT_EQ(fake_->Cancels().size(), 1u);
  reader->reset();
  EXPECT_EQ(fake_->Cancels().size(), 1u);  // not twice

  // Results released mid-stream (CLOSED): an error, not an end.
  fake_->ClearFaults();
  reader = source->Query("SELECT id FROM crm.users ORDER BY id");
  ASSERT_TRUE(reader.ok());
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(*(*reader)->Next(row));
  fake_->ExpireResults();
  more = (*reader)->Next(row);
  EXPECT_EQ(more.status().code(), absl::StatusCode::kUnavailable) << more.status();
  EXPECT_THAT(more.status().message(), HasSubstr("expired or it was closed"));
}

TEST_F(DatabricksSourceTest, DroppingAReaderEarlyCancelsTheStatement) {
  InsertUsers(1, 50);
  fake_->SetChunkRows(10);
  auto source = NewSource();
  {
    absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query("SELECT id FROM crm.users");
    ASSERT_TRUE(reader.ok());
    Row row;
    ASSERT_TRUE(*(*reader)->Next(row));
  }
  ASSERT_EQ(fake_->Cancels().size(), 1u);
  EXPECT_EQ(RequestsOf("cancel")[0].principal, kUser);
  // A statement still running when dropped is really cancelled.
  fake_->SetPolls(0, 5);
  FakeDatabricksFault lost = FakeDatabricksFault::Unavailable("status", 10);
  fake_->AddFault(lost);
  absl::StatusOr<std::unique_ptr<RowReader>> failed = source->Query("SELECT id FROM crm.users");
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(fake_->Cancels().size(), 2u);
  fake_->ClearFaults();
  // Read to the end: no cancel.
  fake_->SetPolls(0, 0);
  ASSERT_TRUE(QueryAll(*source, "SELECT id FROM crm.users").ok());
  EXPECT_EQ(fake_->Cancels().size(), 2u);
}

TEST_F(DatabricksSourceTest, TruncatedResultsAreRefused) {
  InsertUsers(1, 20);
  fake_->SetMaxResultRows(10);
  auto source = NewSource();
  absl::StatusOr<std::vector<Row>> rows = QueryAll(*source, "SELECT id FROM crm.users");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kFailedPrecondition) << rows.status();
  EXPECT_THAT(rows.status().message(), HasSubstr("truncated"));
}

TEST_F(DatabricksSourceTest, PersonalAccessTokenProblemsSayWhatToCheck) {
  auto source = NewSource({{"token", "dapi-wrong"}});
  absl::Status s = source->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(s.message(), HasSubstr("check `token`"));
  EXPECT_THAT(s.message(), HasSubstr("Invalid access token"));
  EXPECT_EQ(fake_->CountRequests("execute"), 1);  // a PAT is not re-minted

  fake_->DenyWarehouse(kUser, kWarehouse);
  s = NewSource()->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("CAN USE on SQL warehouse abcdef0123456789"));

  s = NewSource({{"warehouse_id", "0000000000000000"}})->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("warehouse_id \"0000000000000000\""));

  s = NewSource({{"base_url", fake_->BaseUrl() + "/not-databricks"}})->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("check `host`"));

  s = NewSource({{"base_url", "http://127.0.0.1:1"}, {"max_retries", 0}})->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("could not reach Databricks"));
}

TEST_F(DatabricksSourceTest, UnknownWarehouseAs400AlsoNamesTheSetting) {
  FakeDatabricksOptions options;
  options.unknown_warehouse_status = 400;
  StartFake(options);
  absl::Status s = NewSource({{"warehouse_id", "nope"}})->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("warehouse_id"));
}

TEST_F(DatabricksSourceTest, CatalogSchemaAndGrantsAreCheckedByTheConnectionTest) {
  auto source = NewSource();
  ASSERT_TRUE(source->CheckConnection().ok());
  json body = json::parse(RequestsOf("execute")[0].body);
  EXPECT_THAT(body["statement"].get<std::string>(), HasSubstr("current_user()"));
  EXPECT_TRUE(fake_->Cancels().empty());

  absl::Status s = NewSource({{"catalog", "prod"}})->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("check the source's `catalog`"));
  s = NewSource({{"schema", "sales"}})->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("check the source's `schema`"));

  fake_->DenySchema(kUser, "crm");
  absl::StatusOr<std::vector<Row>> rows = QueryAll(*NewSource(), "SELECT id FROM crm.users");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kPermissionDenied) << rows.status();
  EXPECT_THAT(rows.status().message(), HasSubstr("USE SCHEMA"));
}

TEST_F(DatabricksSourceTest, OAuthM2MTokenIsMintedOnceCachedAndRenewed) {
  InsertUsers(1, 3);
  auto source = NewSource(OAuth());
  ASSERT_TRUE(source->CheckConnection().ok());
  ASSERT_TRUE(QueryAll(*source, "SELECT id FROM crm.users").ok());
  EXPECT_EQ(fake_->oauth_tokens_issued(), 1);
  std::vector<FakeDatabricksRequest> tokens = RequestsOf("token");
  ASSERT_EQ(tokens.size(), 1u);
  EXPECT_EQ(tokens[0].body, "grant_type=client_credentials&scope=all-apis");
  for (const auto& r : RequestsOf("execute")) EXPECT_EQ(r.principal, kClientId);
  // The connection check saw the service principal as current_user().
  EXPECT_THAT(RequestsOf("execute")[0].reply, HasSubstr(kClientId));

  // Renewed before it expires (1 h minus 5 min).
  clock_.Advance(seconds(3300));
  ASSERT_TRUE(QueryAll(*source, "SELECT id FROM crm.users").ok());
  EXPECT_EQ(fake_->oauth_tokens_issued(), 2);

  // A token the workspace stops accepting is re-minted once.
  fake_->RevokeOAuthTokens();
  ASSERT_TRUE(QueryAll(*source, "SELECT id FROM crm.users").ok());
  EXPECT_EQ(fake_->oauth_tokens_issued(), 3);
}

TEST_F(DatabricksSourceTest, RefusedClientCredentialsAreUnauthenticated) {
  json settings = OAuth();
  settings["client_secret"] = "dose-wrong";
  absl::Status s = NewSource(settings)->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(s.message(), HasSubstr("invalid_client"));
  EXPECT_THAT(s.message(), HasSubstr("client_secret"));
  EXPECT_THAT(s.message(), Not(HasSubstr("dose-wrong")));
  EXPECT_EQ(fake_->CountRequests("execute"), 0);

  // A service principal that is not in the workspace: 401 even with a fresh token.
  fake_->AddServicePrincipal("other-sp", "secret");
  auto source =
      NewSource({{"token", nullptr}, {"client_id", "other-sp"}, {"client_secret", "secret"}});
  fake_->RevokeOAuthTokens();
  // Every token this principal gets is revoked before use.
  FakeDatabricksFault unauthorized;
  unauthorized.method = "execute";
  unauthorized.status = 401;
  unauthorized.error_code = "UNAUTHENTICATED";
  unauthorized.message = "Invalid access token.";
  unauthorized.times = 2;
  fake_->AddFault(unauthorized);
  s = source->CheckConnection();
  ASSERT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(s.message(), HasSubstr("even after minting a new one"));
  EXPECT_EQ(fake_->oauth_tokens_issued(), 2);
}

TEST_F(DatabricksSourceTest, ThePreviewWrapperKeepsTheSchema) {
  InsertUsers(1, 30);
  auto source = NewSource();
  absl::StatusOr<std::unique_ptr<RowReader>> reader = source->Query(
      LimitQuery("SELECT id, email, score, updated_at FROM main.crm.users -- note", 10));
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->schema()[2].source_type, "DECIMAL(10,2)");
  absl::StatusOr<std::vector<Row>> rows = ReadAll(**reader);
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->size(), 10u);
}

TEST_F(DatabricksSourceTest, EmptyResultsEndCleanly) {
  for (const char* disposition : {"inline", "external_links"}) {
    auto source = NewSource({{"disposition", disposition}});
    absl::StatusOr<std::unique_ptr<RowReader>> reader =
        source->Query("SELECT id, email FROM crm.users");
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ((*reader)->schema().size(), 2u);
    absl::StatusOr<std::vector<Row>> rows = ReadAll(**reader);
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_TRUE(rows->empty());
  }
  EXPECT_TRUE(fake_->Cancels().empty());
}

TEST_F(DatabricksSourceTest, ConcurrentSourcesShareTheFake) {
  InsertUsers(1, 200);
  fake_->SetChunkRows(25);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto source = NewSource(t % 2 == 0 ? json{{"disposition", "external_links"}} : OAuth());
      absl::StatusOr<std::vector<Row>> rows =
          QueryAll(*source, "SELECT id, email, score, updated_at FROM crm.users ORDER BY id");
      if (rows.ok() && rows->size() == 200) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
}

}  // namespace
}  // namespace backflow
