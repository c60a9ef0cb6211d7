#include "backflow/sources/snowflake/snowflake_source.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <zlib.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/sources/snowflake/fake_snowflake_server.h"
#include "backflow/testing/cancelling_clock.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

constexpr char kAccount[] = "myorg-myaccount";
constexpr char kUser[] = "SYNC_USER";

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// --- Auth helpers ------------------------------------------------------------

TEST(SnowflakeAuthTest, JwtAccountNormalisation) {
  EXPECT_EQ(SnowflakeJwtAccount("myorg-myaccount"), "MYORG-MYACCOUNT");
  EXPECT_EQ(SnowflakeJwtAccount("xy12345"), "XY12345");
  EXPECT_EQ(SnowflakeJwtAccount("xy12345.us-east-2.aws"), "XY12345");
  EXPECT_EQ(SnowflakeJwtAccount("xy12345.us-east-2.privatelink"), "XY12345");
  EXPECT_EQ(SnowflakeJwtAccount("https://MyOrg-MyAccount.snowflakecomputing.com/"),
            "MYORG-MYACCOUNT");
  EXPECT_EQ(SnowflakeJwtAccount("myaccount-abc123.global"), "MYACCOUNT");
  EXPECT_EQ(SnowflakeJwtAccount("myorg-my_account"), "MYORG-MY_ACCOUNT");
}

TEST(SnowflakeAuthTest, DefaultBaseUrl) {
  EXPECT_EQ(SnowflakeDefaultBaseUrl("MyOrg-My_Account"),
            "https://myorg-my-account.snowflakecomputing.com");
  EXPECT_EQ(SnowflakeDefaultBaseUrl("xy12345.us-east-2.aws"),
            "https://xy12345.us-east-2.aws.snowflakecomputing.com");
}

// The fingerprint computed the way Snowflake's docs describe it:
// i2d_PUBKEY -> SHA256 -> EVP_EncodeBlock.
std::string ReferenceFingerprint(const std::string& public_pem) {
  BIO* bio = BIO_new_mem_buf(public_pem.data(), static_cast<int>(public_pem.size()));
  EVP_PKEY* pkey = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(pkey, &der);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(der, static_cast<size_t>(len), digest);
  unsigned char b64[64];
  EVP_EncodeBlock(b64, digest, SHA256_DIGEST_LENGTH);
  OPENSSL_free(der);
  EVP_PKEY_free(pkey);
  return std::string("SHA256:") + reinterpret_cast<char*>(b64);
}

TEST(SnowflakeAuthTest, FingerprintIsBase64OfSpkiSha256) {
  auto pair = GenerateRsaKeyPair();
  ASSERT_TRUE(pair.ok());
  auto key = Rs256Key::FromPrivateKeyPem(pair->private_key_pem);
  ASSERT_TRUE(key.ok());
  std::string fp = SnowflakePublicKeyFingerprint(**key);
  EXPECT_EQ(fp, ReferenceFingerprint(pair->public_key_pem));
  EXPECT_EQ(fp.size(), 7u + 44u);  // standard base64 with '=' padding
  EXPECT_EQ(fp.back(), '=');
}

TEST(SnowflakeAuthTest, JwtClaims) {
  auto pair = GenerateRsaKeyPair();
  ASSERT_TRUE(pair.ok());
  auto key = Rs256Key::FromPrivateKeyPem(pair->private_key_pem);
  ASSERT_TRUE(key.ok());
  auto pub = Rs256Key::FromPublicKeyPem(pair->public_key_pem);
  ASSERT_TRUE(pub.ok());
  Clock::TimePoint now{seconds(1'717'200'000)};
  auto jwt = SignSnowflakeJwt(**key, "MYORG-MYACCOUNT", "sync_user", now, minutes(59));
  ASSERT_TRUE(jwt.ok()) << jwt.status();
  auto decoded = VerifyJwtRs256(*jwt, **pub);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->header, json({{"alg", "RS256"}, {"typ", "JWT"}}));
  const std::string fp = ReferenceFingerprint(pair->public_key_pem);
  EXPECT_EQ(decoded->claims, json({{"iss", "MYORG-MYACCOUNT.SYNC_USER." + fp},
                                   {"sub", "MYORG-MYACCOUNT.SYNC_USER"},
                                   {"iat", 1'717'200'000},
                                   {"exp", 1'717'200'000 + 59 * 60}}));
}

std::string EncryptedPem(const std::string& private_pem, const std::string& passphrase) {
  BIO* in = BIO_new_mem_buf(private_pem.data(), static_cast<int>(private_pem.size()));
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(in, nullptr, nullptr, nullptr);
  BIO_free(in);
  BIO* out = BIO_new(BIO_s_mem());
  PEM_write_bio_PKCS8PrivateKey(out, pkey, EVP_aes_256_cbc(), nullptr, 0, nullptr,
                                const_cast<char*>(passphrase.c_str()));
  char* data = nullptr;
  long len = BIO_get_mem_data(out, &data);  // NOLINT(runtime/int)
  std::string pem(data, static_cast<size_t>(len));
  BIO_free(out);
  EVP_PKEY_free(pkey);
  return pem;
}

TEST(SnowflakeAuthTest, EncryptedPrivateKey) {
  auto pair = GenerateRsaKeyPair();
  ASSERT_TRUE(pair.ok());
  std::string encrypted = EncryptedPem(pair->private_key_pem, "s3cret");
  ASSERT_TRUE(Contains(encrypted, "BEGIN ENCRYPTED PRIVATE KEY"));
  auto plain = DecryptSnowflakePrivateKey(encrypted, "s3cret");
  ASSERT_TRUE(plain.ok()) << plain.status();
  auto key = Rs256Key::FromPrivateKeyPem(*plain);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ((*key)->PublicKeyPem(), pair->public_key_pem);

  auto wrong = DecryptSnowflakePrivateKey(encrypted, "nope");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(wrong.status().message()), "passphrase"));
  auto missing = DecryptSnowflakePrivateKey(encrypted, "");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*DecryptSnowflakePrivateKey(pair->private_key_pem, ""), pair->private_key_pem);
}

// --- Type mapping ------------------------------------------------------------

SnowflakeColumnType Col(json entry) {
  if (!entry.contains("name")) entry["name"] = "C";
  auto t = ParseSnowflakeRowType(entry);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : SnowflakeColumnType{};
}

Value Decode(const json& entry, const json& cell) {
  auto v = DecodeSnowflakeCell(Col(entry), cell);
  EXPECT_TRUE(v.ok()) << entry.dump() << " " << cell.dump() << ": " << v.status();
  return v.ok() ? *v : Value::Null();
}

TEST(SnowflakeTypesTest, ColumnTypes) {
  struct Case {
    json entry;
    ValueType type;
    std::string source_type;
  };
  for (const Case& c : std::vector<Case>{
           {{{"type", "fixed"}, {"precision", 38}, {"scale", 0}},
            ValueType::kInt64,
            "NUMBER(38,0)"},
           {{{"type", "FIXED"}, {"precision", 10}, {"scale", 2}},
            ValueType::kDecimal,
            "NUMBER(10,2)"},
           {{{"type", "real"}}, ValueType::kDouble, "FLOAT"},
           {{{"type", "decfloat"}}, ValueType::kDecimal, "DECFLOAT"},
           {{{"type", "text"}, {"length", 16777216}}, ValueType::kString, "VARCHAR(16777216)"},
           {{{"type", "binary"}, {"length", 8}}, ValueType::kBytes, "BINARY(8)"},
           {{{"type", "boolean"}}, ValueType::kBool, "BOOLEAN"},
           {{{"type", "date"}}, ValueType::kDate, "DATE"},
           {{{"type", "time"}, {"scale", 9}}, ValueType::kString, "TIME(9)"},
           {{{"type", "TIMESTAMP_NTZ"}, {"scale", 9}}, ValueType::kTimestamp, "TIMESTAMP_NTZ(9)"},
           {{{"type", "timestamp_ltz"}, {"scale", 3}}, ValueType::kTimestamp, "TIMESTAMP_LTZ(3)"},
           {{{"type", "timestamp_tz"}, {"scale", 9}}, ValueType::kTimestamp, "TIMESTAMP_TZ(9)"},
           {{{"type", "variant"}}, ValueType::kJson, "VARIANT"},
           {{{"type", "OBJECT"}}, ValueType::kJson, "OBJECT"},
           {{{"type", "array"}}, ValueType::kJson, "ARRAY"},
           {{{"type", "geography"}}, ValueType::kString, "GEOGRAPHY"},
       }) {
    SnowflakeColumnType t = Col(c.entry);
    EXPECT_EQ(t.column.type, c.type) << c.entry.dump();
    EXPECT_EQ(t.column.source_type, c.source_type) << c.entry.dump();
  }
  EXPECT_EQ(ParseSnowflakeRowType(json{{"type", "fixed"}}).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(SnowflakeTypesTest, NumbersStayExact) {
  json int_col = {{"type", "fixed"}, {"precision", 38}, {"scale", 0}};
  EXPECT_EQ(Decode(int_col, "123"), Value::Int64(123));
  EXPECT_EQ(Decode(int_col, "-9223372036854775808"), Value::Int64(INT64_MIN));
  EXPECT_EQ(Decode(int_col, "9223372036854775808"),
            Value::Text(ValueType::kDecimal, "9223372036854775808"));
  EXPECT_EQ(Decode(int_col, "99999999999999999999999999999999999999"),
            Value::Text(ValueType::kDecimal, "99999999999999999999999999999999999999"));
  EXPECT_TRUE(Decode(int_col, nullptr).is_null());
  json dec = {{"type", "fixed"}, {"precision", 10}, {"scale", 2}};
  EXPECT_EQ(Decode(dec, "12.50"), Value::Text(ValueType::kDecimal, "12.50"));
  EXPECT_EQ(Decode(dec, "-0.05"), Value::Text(ValueType::kDecimal, "-0.05"));
  json decfloat = {{"type", "decfloat"}};
  EXPECT_EQ(Decode(decfloat, "1.5e3"), Value::Text(ValueType::kDecimal, "1500"));
  EXPECT_EQ(Decode(decfloat, "-2.5E-2"), Value::Text(ValueType::kDecimal, "-0.025"));
  EXPECT_EQ(Decode(decfloat, "1.23456789012345678901234567890123456789e+45"),
            Value::Text(ValueType::kDecimal, "1234567890123456789012345678901234567890000000"));
  json real = {{"type", "real"}};
  EXPECT_EQ(Decode(real, "1.5"), Value::Double(1.5));
  EXPECT_TRUE(std::isnan(Decode(real, "NaN").double_value()));
  EXPECT_EQ(Decode(real, "inf").double_value(), std::numeric_limits<double>::infinity());
  EXPECT_EQ(Decode(real, "-inf").double_value(), -std::numeric_limits<double>::infinity());
  for (const char* bad : {"12.5x", "", "1e5"}) {
    auto v = DecodeSnowflakeCell(Col(int_col), bad);
    EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss) << bad;
  }
}

TEST(SnowflakeTypesTest, DatesTimesAndTimestamps) {
  EXPECT_EQ(Decode({{"type", "date"}}, "18262"), Value::Text(ValueType::kDate, "2020-01-01"));
  EXPECT_EQ(Decode({{"type", "date"}}, "-1"), Value::Text(ValueType::kDate, "1969-12-31"));
  EXPECT_EQ(Decode({{"type", "time"}}, "82919.000000000"), Value::String("23:01:59"));
  EXPECT_EQ(Decode({{"type", "time"}}, "27000.250000000"), Value::String("07:30:00.25"));
  json ntz = {{"type", "timestamp_ntz"}, {"scale", 9}};
  json ltz = {{"type", "timestamp_ltz"}, {"scale", 9}};
  json tz = {{"type", "timestamp_tz"}, {"scale", 9}};
  // The brief's examples.
  EXPECT_EQ(Decode(ntz, "1717200123.123000000"),
            Value::Text(ValueType::kTimestamp, "2024-06-01T00:02:03.123"));
  EXPECT_EQ(Decode(ltz, "1717200123.123000000"),
            Value::Text(ValueType::kTimestamp, "2024-06-01T00:02:03.123Z"));
  EXPECT_EQ(Decode(tz, "1616173619.000000000 1500"),
            Value::Text(ValueType::kTimestamp, "2021-03-19T17:06:59Z"));
  EXPECT_EQ(Decode(ltz, "1611871777123456789"),
            Value::Text(ValueType::kTimestamp, "2021-01-28T22:09:37.123456789Z"));
  EXPECT_EQ(Decode(tz, "1611871777123456789 1440"),
            Value::Text(ValueType::kTimestamp, "2021-01-28T22:09:37.123456789Z"));
  EXPECT_EQ(Decode(ntz, "-1.500000000"),
            Value::Text(ValueType::kTimestamp, "1969-12-31T23:59:58.5"));
  EXPECT_EQ(Decode(ntz, "0.000000001"),
            Value::Text(ValueType::kTimestamp, "1970-01-01T00:00:00.000000001"));
  EXPECT_EQ(Decode(ltz, "253402300799.999999999"),
            Value::Text(ValueType::kTimestamp, "9999-12-31T23:59:59.999999999Z"));
  for (const char* bad : {"abc", "1.5 9999", "1.2.3", "12.1234567890"}) {
    EXPECT_EQ(DecodeSnowflakeCell(Col(tz), bad).status().code(), absl::StatusCode::kDataLoss)
        << bad;
  }
}

TEST(SnowflakeTypesTest, TextBooleanJsonBinary) {
  EXPECT_EQ(Decode({{"type", "text"}}, "héllo"), Value::String("héllo"));
  EXPECT_EQ(Decode({{"type", "text"}}, "null"), Value::String("null"));
  EXPECT_EQ(Decode({{"type", "boolean"}}, "true"), Value::Bool(true));
  EXPECT_EQ(Decode({{"type", "boolean"}}, "false"), Value::Bool(false));
  EXPECT_EQ(Decode({{"type", "variant"}},
                   "{\n  \"a\": \"x y\",\n  \"n\": 12345678901234567890123,\n  \"l\": [\n    1,\n"
                   "    2\n  ]\n}"),
            Value::Text(ValueType::kJson, R"({"a":"x y","n":12345678901234567890123,"l":[1,2]})"));
  EXPECT_EQ(Decode({{"type", "array"}}, "[]"), Value::Text(ValueType::kJson, "[]"));
  EXPECT_EQ(Decode({{"type", "variant"}}, "\"str\""), Value::Text(ValueType::kJson, "\"str\""));
  EXPECT_EQ(Decode({{"type", "binary"}}, "48454C4C4F"), Value::Text(ValueType::kBytes, "HELLO"));
  EXPECT_EQ(Decode({{"type", "binary"}}, "00ff"),
            Value::Text(ValueType::kBytes, std::string("\x00\xff", 2)));
  EXPECT_EQ(DecodeSnowflakeCell(Col({{"type", "variant"}}), "{bad").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeSnowflakeCell(Col({{"type", "binary"}}), "ABC").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeSnowflakeCell(Col({{"type", "boolean"}}), "yes").status().code(),
            absl::StatusCode::kDataLoss);
}

// --- Settings ----------------------------------------------------------------

TEST(SnowflakeSettingsTest, ParsesAndValidates) {
  SourceDefinition def = SnowflakeSourceDefinition();
  EXPECT_EQ(def.type, "snowflake");
  json s = {{"account", "xy12345.us-east-2.aws"}, {"user", "u"}, {"private_key", "PEM"}};
  EXPECT_TRUE(CheckSettings(def.settings, s).empty());
  auto c = ParseSnowflakeSettings(s);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->http.base_url, "https://xy12345.us-east-2.aws.snowflakecomputing.com");
  EXPECT_EQ(c->auth, SnowflakeAuth::kKeyPair);
  EXPECT_EQ(c->statement_timeout_s, 3600);
  EXPECT_EQ(c->query_tag, "backflow");
  EXPECT_EQ(c->http.retry.max_retries, 5);

  json t = {{"account", "a"}, {"token", "tok"}, {"token_type", "oauth"}, {"base_url", "http://x/"}};
  EXPECT_TRUE(CheckSettings(def.settings, t).empty());
  c = ParseSnowflakeSettings(t);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->auth, SnowflakeAuth::kOAuth);
  EXPECT_EQ(c->http.base_url, "http://x");

  auto error = [](json settings) {
    auto r = ParseSnowflakeSettings(settings);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << settings.dump();
    return std::string(r.status().message());
  };
  EXPECT_TRUE(Contains(error({{"user", "u"}, {"private_key", "k"}}), "account"));
  EXPECT_TRUE(Contains(error({{"account", "a"}}), "private_key"));
  EXPECT_TRUE(Contains(error({{"account", "a"}, {"private_key", "k"}}), "user"));
  EXPECT_TRUE(Contains(
      error({{"account", "a"}, {"user", "u"}, {"private_key", "k"}, {"token", "t"}}), "not both"));
  EXPECT_TRUE(Contains(error({{"account", "a"}, {"token", "t"}, {"statement_timeout_s", -1}}),
                       "statement_timeout_s"));
  EXPECT_TRUE(
      Contains(error({{"account", "a"}, {"token", "t"}, {"base_url", "ftp://x"}}), "base_url"));
  EXPECT_TRUE(
      Contains(error({{"account", "a"}, {"user", "u"}, {"private_key_path", "/nope"}}), "/nope"));

  json bad_key = {{"account", "a"}, {"user", "u"}, {"private_key", "not a key"}};
  FakeClock clock;
  auto http = NewCurlHttpClient();
  auto source = def.create(bad_key, ConnectorEnv{http.get(), &clock});
  EXPECT_EQ(source.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(source.status().message()), "private_key"));
}

// --- Against the fake ----------------------------------------------------------

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

class SnowflakeSourceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartFake(FakeSnowflakeOptions{}); }

  void StartFake(FakeSnowflakeOptions options) {
    options.clock = &clock_;
    fake_ = std::make_unique<FakeSnowflakeServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    auto pair = GenerateRsaKeyPair();
    ASSERT_TRUE(pair.ok());
    keys_ = *pair;
    FakeSnowflakeUser user;
    user.name = kUser;
    user.public_keys_pem = {keys_.public_key_pem};
    user.roles = {"PUBLIC", "RETL"};
    fake_->AddUser(user);
    ASSERT_TRUE(fake_
                    ->CreateTable("USERS", {{"ID", "NUMBER(38,0)"},
                                            {"EMAIL", "VARCHAR"},
                                            {"SCORE", "NUMBER(10,2)"},
                                            {"BIG", "NUMBER(38,0)"},
                                            {"RATIO", "FLOAT"},
                                            {"ACTIVE", "BOOLEAN"},
                                            {"BORN", "DATE"},
                                            {"WAKES", "TIME"},
                                            {"UPDATED_AT", "TIMESTAMP_NTZ"},
                                            {"SEEN_AT", "TIMESTAMP_LTZ"},
                                            {"SIGNED_AT", "TIMESTAMP_TZ"},
                                            {"PROFILE", "VARIANT"},
                                            {"TAGS", "ARRAY"},
                                            {"AVATAR", "BINARY"}})
                    .ok());
    ASSERT_TRUE(fake_
                    ->Exec("INSERT INTO USERS VALUES (1, 'a@example.com', '12.50', "
                           "'123456789012345678901234567890', 1.5, 1, '2024-02-29', "
                           "'07:30:00.25', '2024-06-01 00:02:03.123', '2024-03-05 14:30:15+02:00', "
                           "'2024-03-05 14:30:15+02:00', "
                           "'{\"plan\":\"pro\",\"n\":12345678901234567890123}', '[1,2]', "
                           "X'48454C4C4F')")
                    .ok());
    ASSERT_TRUE(fake_
                    ->Exec("INSERT INTO USERS (ID, EMAIL, SCORE, ACTIVE) VALUES "
                           "(2, NULL, 0, 0), (3, 'c@example.com', '7', 1), "
                           "(4, 'd@example.com', '7.1', 1), (5, 'e@example.com', 1, 0), "
                           "(6, 'f@example.com', 2.25, 1), (7, 'g@example.com', '-3.5', 0)")
                    .ok());
  }

  json Settings() {
    return {{"account", kAccount},
            {"user", "sync_user"},
            {"private_key", keys_.private_key_pem},
            {"warehouse", "COMPUTE_WH"},
            {"database", "ANALYTICS"},
            {"schema", "PUBLIC"},
            {"role", "RETL"},
            {"query_tag", "backflow-test"},
            {"base_url", fake_->BaseUrl()},
            {"max_retries", 3}};
  }

  std::unique_ptr<Source> MakeSource(json settings) {
    SourceDefinition def = SnowflakeSourceDefinition();
    std::vector<std::string> problems = CheckSettings(def.settings, settings);
    EXPECT_TRUE(problems.empty()) << problems[0];
    auto source = def.create(settings, ConnectorEnv{http_.get(), &clock_});
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }
  std::unique_ptr<Source> MakeSource() { return MakeSource(Settings()); }

  absl::StatusOr<std::vector<Row>> Run(Source& source, const std::string& sql) {
    auto reader = source.Query(sql);
    if (!reader.ok()) return reader.status();
    return ReadAll(**reader);
  }

  std::atomic<bool> cancel_{false};  // set by clock_ when a test asks
  CancellingClock clock_{&cancel_};
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeSnowflakeServer> fake_;
  RsaKeyPair keys_;
};

TEST_F(SnowflakeSourceTest, SchemaFirstThenEveryTypeAcrossGzipPartitions) {
  fake_->set_rows_per_partition(3);
  auto source = MakeSource();
  auto reader = source->Query("SELECT * FROM USERS ORDER BY ID;\n");
  ASSERT_TRUE(reader.ok()) << reader.status();
  // The schema is known before the first row and before partitions 1..N.
  const Schema& schema = (*reader)->schema();
  ASSERT_EQ(schema.size(), 14u);
  std::vector<std::pair<std::string, ValueType>> want = {{"ID", ValueType::kInt64},
                                                         {"EMAIL", ValueType::kString},
                                                         {"SCORE", ValueType::kDecimal},
                                                         {"BIG", ValueType::kInt64},
                                                         {"RATIO", ValueType::kDouble},
                                                         {"ACTIVE", ValueType::kBool},
                                                         {"BORN", ValueType::kDate},
                                                         {"WAKES", ValueType::kString},
                                                         {"UPDATED_AT", ValueType::kTimestamp},
                                                         {"SEEN_AT", ValueType::kTimestamp},
                                                         {"SIGNED_AT", ValueType::kTimestamp},
                                                         {"PROFILE", ValueType::kJson},
                                                         {"TAGS", ValueType::kJson},
                                                         {"AVATAR", ValueType::kBytes}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(schema[i].name, want[i].first);
    EXPECT_EQ(schema[i].type, want[i].second) << schema[i].name;
  }
  EXPECT_EQ(schema[2].source_type, "NUMBER(10,2)");
  EXPECT_EQ(fake_->CountRequests("partition="), 0);

  Row row;
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[0], Value::Int64(1));
  EXPECT_EQ(row[1], Value::String("a@example.com"));
  EXPECT_EQ(row[2], Value::Text(ValueType::kDecimal, "12.50"));
  EXPECT_EQ(row[3], Value::Text(ValueType::kDecimal, "123456789012345678901234567890"));
  EXPECT_EQ(row[4], Value::Double(1.5));
  EXPECT_EQ(row[5], Value::Bool(true));
  EXPECT_EQ(row[6], Value::Text(ValueType::kDate, "2024-02-29"));
  EXPECT_EQ(row[7], Value::String("07:30:00.25"));
  EXPECT_EQ(row[8], Value::Text(ValueType::kTimestamp, "2024-06-01T00:02:03.123"));
  EXPECT_EQ(row[9], Value::Text(ValueType::kTimestamp, "2024-03-05T12:30:15Z"));
  EXPECT_EQ(row[10], Value::Text(ValueType::kTimestamp, "2024-03-05T12:30:15Z"));
  EXPECT_EQ(row[11],
            Value::Text(ValueType::kJson, R"({"plan":"pro","n":12345678901234567890123})"));
  EXPECT_EQ(row[12], Value::Text(ValueType::kJson, "[1,2]"));
  EXPECT_EQ(row[13], Value::Text(ValueType::kBytes, "HELLO"));
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[0], Value::Int64(2));
  EXPECT_TRUE(row[1].is_null());
  EXPECT_EQ(row[2], Value::Text(ValueType::kDecimal, "0.00"));
  EXPECT_EQ(row[5], Value::Bool(false));
  for (size_t i = 6; i < row.size(); ++i) EXPECT_TRUE(row[i].is_null()) << i;
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[2], Value::Text(ValueType::kDecimal, "7.00"));
  // Partition 1 is fetched only when the reader reaches it.
  EXPECT_EQ(fake_->CountRequests("partition="), 0);
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[0], Value::Int64(4));
  EXPECT_EQ(row[2], Value::Text(ValueType::kDecimal, "7.10"));
  EXPECT_EQ(fake_->CountRequests("GET /api/v2/statements/", 200), 1);
  EXPECT_EQ(fake_->CountRequests("partition=1"), 1);
  EXPECT_EQ(fake_->CountRequests("partition=2"), 0);
  auto rest = ReadAll(**reader);
  ASSERT_TRUE(rest.ok()) << rest.status();
  ASSERT_EQ(rest->size(), 3u);
  EXPECT_EQ((*rest)[2][0], Value::Int64(7));
  EXPECT_EQ((*rest)[2][2], Value::Text(ValueType::kDecimal, "-3.50"));
  EXPECT_EQ(fake_->CountRequests("partition=2"), 1);
  EXPECT_EQ(fake_->CountRequests("partition=3"), 0);
  // The clean end after reading everything: nothing to cancel.
  reader->reset();
  EXPECT_TRUE(fake_->cancellations().empty());
  EXPECT_EQ(fake_->executions(), 1);

  // What went over the wire.
  std::vector<SnowflakeRequestLog> log = fake_->Requests();
  ASSERT_FALSE(log.empty());
  for (const SnowflakeRequestLog& r : log) {
    EXPECT_EQ(r.token_type, "KEYPAIR_JWT");
    EXPECT_EQ(r.user, kUser);
  }
  EXPECT_TRUE(Contains(log.back().accept_encoding, "gzip")) << log.back().accept_encoding;
  json body = fake_->LastSubmitBody();
  EXPECT_EQ(body["statement"], "SELECT * FROM USERS ORDER BY ID");
  EXPECT_EQ(body["timeout"], 3600);
  EXPECT_EQ(body["warehouse"], "COMPUTE_WH");
  EXPECT_EQ(body["database"], "ANALYTICS");
  EXPECT_EQ(body["schema"], "PUBLIC");
  EXPECT_EQ(body["role"], "RETL");
  EXPECT_EQ(body["parameters"]["timezone"], "UTC");
  EXPECT_EQ(body["parameters"]["query_tag"], "backflow-test");
  EXPECT_TRUE(Contains(log[0].target, "requestId="));
  EXPECT_FALSE(Contains(log[0].target, "retry=true"));
}

// Wraps the curl client: records partition replies' Content-Encoding and, when
// `regzip` is set, hands the reader the body gzip-compressed again (an HTTP
// client that does not decode Content-Encoding).
class PartitionSpy : public HttpClient {
 public:
  PartitionSpy(HttpClient* inner, bool regzip) : inner_(inner), regzip_(regzip) {}
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request) override {
    absl::StatusOr<HttpResponse> r = inner_->Send(request);
    if (!r.ok() || request.url.find("partition=") == std::string::npos) return r;
    encodings.push_back(r->Header("content-encoding").value_or(""));
    bodies.push_back(r->body);
    if (regzip_) {
      z_stream zs{};
      deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
      std::string out(deflateBound(&zs, r->body.size()) + 32, '\0');
      zs.next_in = reinterpret_cast<Bytef*>(r->body.data());
      zs.avail_in = static_cast<uInt>(r->body.size());
      zs.next_out = reinterpret_cast<Bytef*>(out.data());
      zs.avail_out = static_cast<uInt>(out.size());
      deflate(&zs, Z_FINISH);
      out.resize(zs.total_out);
      deflateEnd(&zs);
      r->body = out;
    }
    return r;
  }
  std::vector<std::string> encodings;
  std::vector<std::string> bodies;

 private:
  HttpClient* inner_;
  bool regzip_;
};

TEST_F(SnowflakeSourceTest, PartitionsAreGzipOnTheWire) {
  fake_->set_rows_per_partition(3);
  for (bool regzip : {false, true}) {
    PartitionSpy spy(http_.get(), regzip);
    json settings = Settings();
    SourceDefinition def = SnowflakeSourceDefinition();
    EXPECT_TRUE(CheckSettings(def.settings, settings).empty());
    auto source = def.create(settings, ConnectorEnv{&spy, &clock_});
    ASSERT_TRUE(source.ok());
    auto rows = Run(**source, "SELECT ID FROM USERS ORDER BY ID");
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_EQ(rows->size(), 7u);
    EXPECT_EQ(spy.encodings, (std::vector<std::string>{"gzip", "gzip"}));
    // The curl client decoded it: the envelope is {"data":[...]} without metadata.
    ASSERT_EQ(spy.bodies.size(), 2u);
    EXPECT_EQ(spy.bodies[0], R"({"data":[["4"],["5"],["6"]]})");
    EXPECT_EQ(spy.bodies[1], R"({"data":[["7"]]})");
  }
}

TEST_F(SnowflakeSourceTest, AlternativeEncodingsDecodeTheSame) {
  FakeSnowflakeOptions options;
  options.timestamps_as_nanoseconds = true;
  options.uppercase_type_names = true;
  options.pretty_print_json = false;
  options.gzip_partitions = false;
  options.rows_per_partition = 1;
  StartFake(options);
  auto source = MakeSource();
  auto rows = Run(*source,
                  "SELECT ID, UPDATED_AT, SEEN_AT, SIGNED_AT, PROFILE FROM USERS "
                  "WHERE ID <= 2 ORDER BY ID");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0][1], Value::Text(ValueType::kTimestamp, "2024-06-01T00:02:03.123"));
  EXPECT_EQ((*rows)[0][2], Value::Text(ValueType::kTimestamp, "2024-03-05T12:30:15Z"));
  EXPECT_EQ((*rows)[0][3], Value::Text(ValueType::kTimestamp, "2024-03-05T12:30:15Z"));
  EXPECT_EQ((*rows)[0][4],
            Value::Text(ValueType::kJson, R"({"plan":"pro","n":12345678901234567890123})"));
  EXPECT_EQ(fake_->CountRequests("partition=1"), 1);
}

TEST_F(SnowflakeSourceTest, ExpressionColumnsAndQuotedNames) {
  auto source = MakeSource();
  auto reader = source->Query(
      "SELECT ID AS \"id\", EMAIL AS mail, 1 + 1 AS two, 0.5 AS half "
      "FROM USERS WHERE ID = 1");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const Schema& schema = (*reader)->schema();
  ASSERT_EQ(schema.size(), 4u);
  EXPECT_EQ(schema[0].name, "id");  // quoted: case kept
  EXPECT_EQ(schema[1].name, "MAIL");
  EXPECT_EQ(schema[2].name, "TWO");
  EXPECT_EQ(schema[2].type, ValueType::kInt64);
  EXPECT_EQ(schema[3].type, ValueType::kDouble);
  auto rows = ReadAll(**reader);
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ((*rows)[0][2], Value::Int64(2));
}

TEST_F(SnowflakeSourceTest, AsyncStatementIsPolledWithBackoffOnTheClock) {
  fake_->set_still_running_polls(4);
  auto source = MakeSource();
  auto rows = Run(*source, "SELECT ID FROM USERS ORDER BY ID");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 7u);
  EXPECT_EQ(fake_->CountRequests("POST /api/v2/statements?", 202), 1);
  EXPECT_EQ(fake_->CountRequests("GET /api/v2/statements/", 202), 4);
  EXPECT_EQ(fake_->CountRequests("GET /api/v2/statements/", 200), 1);
  // 100 + 200 + 400 + 800 + 1600 ms, slept on the injected clock.
  EXPECT_EQ(clock_.total_slept(), milliseconds(3100));
  EXPECT_EQ(fake_->executions(), 1);
}

TEST_F(SnowflakeSourceTest, A429WhilePollingMeansStillRunning) {
  FakeSnowflakeOptions options;
  options.still_running_polls = 7;
  options.still_running_status = 429;
  StartFake(options);
  auto source = MakeSource();
  auto rows = Run(*source, "SELECT ID FROM USERS");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 7u);
  EXPECT_EQ(fake_->CountRequests("GET /api/v2/statements/", 429), 7);
  // The wait doubles up to the 5 s cap: 100..3200, then 5000 twice.
  EXPECT_EQ(clock_.total_slept(), milliseconds(100 + 200 + 400 + 800 + 1600 + 3200 + 5000 + 5000));
}

TEST_F(SnowflakeSourceTest, LostSubmitReplyIsResubmittedWithRetryTrueAndNotRunTwice) {
  fake_->EnqueueReply(FakeSnowflakeReply::ApplyThenReset("POST /api/v2/statements?"));
  FakeSnowflakeReply lost = FakeSnowflakeReply::Error(503, "POST /api/v2/statements?");
  lost.apply_first = true;
  fake_->EnqueueReply(lost);
  auto source = MakeSource();
  auto rows = Run(*source, "SELECT ID FROM USERS");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 7u);
  EXPECT_EQ(fake_->executions(), 1);
  std::vector<SnowflakeRequestLog> log = fake_->Requests();
  ASSERT_EQ(log.size(), 3u);
  auto request_id = [](const std::string& target) {
    size_t at = target.find("requestId=");
    return target.substr(at + 10, 36);
  };
  EXPECT_EQ(log[0].status, 0);
  EXPECT_EQ(log[1].status, 503);
  EXPECT_EQ(log[2].status, 200);
  EXPECT_FALSE(Contains(log[0].target, "retry=true"));
  EXPECT_TRUE(Contains(log[1].target, "retry=true"));
  EXPECT_TRUE(Contains(log[2].target, "retry=true"));
  EXPECT_EQ(request_id(log[0].target), request_id(log[1].target));
  EXPECT_EQ(request_id(log[0].target), request_id(log[2].target));
  EXPECT_GT(clock_.total_slept(), milliseconds(0));
}

TEST_F(SnowflakeSourceTest, RateLimitedSubmitIsRetried) {
  fake_->EnqueueReply(FakeSnowflakeReply::Error(429, "POST"));
  FakeSnowflakeReply with_wait = FakeSnowflakeReply::Error(429, "POST");
  with_wait.headers = {{"Retry-After", "7"}};
  fake_->EnqueueReply(with_wait);
  auto source = MakeSource();
  auto rows = Run(*source, "SELECT ID FROM USERS");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(fake_->CountRequests("POST", 429), 2);
  EXPECT_GE(clock_.total_slept(), seconds(7));
  EXPECT_EQ(fake_->executions(), 1);
}

TEST_F(SnowflakeSourceTest, PersistentErrorsMapToRetryClasses) {
  auto source = MakeSource();
  struct Case {
    int status;
    absl::StatusCode code;
    std::string says;
    int requests;
  };
  for (const Case& c : std::vector<Case>{
           {429, absl::StatusCode::kResourceExhausted, "Too many requests", 4},
           {503, absl::StatusCode::kUnavailable, "HTTP 503", 4},
           {500, absl::StatusCode::kUnavailable, "HTTP 500", 4},
           {403, absl::StatusCode::kPermissionDenied, "network policy", 1},
           {404, absl::StatusCode::kFailedPrecondition, "orgname-accountname", 1},
           {408, absl::StatusCode::kFailedPrecondition, "statement_timeout_s", 1},
           {400, absl::StatusCode::kInvalidArgument, "390142", 1},
           {415, absl::StatusCode::kFailedPrecondition, "base_url", 1},
       }) {
    for (int i = 0; i < c.requests; ++i) {
      fake_->EnqueueReply(FakeSnowflakeReply::Error(c.status, "POST"));
    }
    int64_t before = fake_->CountRequests("POST", c.status);
    auto r = source->Query("SELECT 1");
    EXPECT_EQ(r.status().code(), c.code) << c.status << ": " << r.status();
    EXPECT_TRUE(Contains(std::string(r.status().message()), c.says))
        << c.status << ": " << r.status();
    EXPECT_EQ(fake_->CountRequests("POST", c.status) - before, c.requests) << c.status;
  }
  ASSERT_TRUE(Run(*source, "SELECT 1").ok());
}

TEST_F(SnowflakeSourceTest, SqlErrorsAreInvalidArgumentWithSnowflakesMessage) {
  auto source = MakeSource();
  auto r = source->Query("SELECT NOPE FROM USERS");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  std::string m(r.status().message());
  EXPECT_TRUE(Contains(m, "no such column")) << m;
  EXPECT_TRUE(Contains(m, "code 001003")) << m;
  EXPECT_TRUE(Contains(m, "SQL state 42000")) << m;
  EXPECT_TRUE(fake_->cancellations().empty());

  r = source->Query("SELECT 1; SELECT 2");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(r.status().message()), "statement count"));
}

TEST_F(SnowflakeSourceTest, ExpiredTokenIsReMintedOnceThenReported) {
  auto source = MakeSource();
  fake_->RejectNextAuth(1);
  ASSERT_TRUE(Run(*source, "SELECT 1").ok());
  EXPECT_EQ(fake_->CountRequests("POST", 401), 1);
  EXPECT_EQ(fake_->CountRequests("POST", 200), 1);

  fake_->RejectNextAuth(2);
  auto r = source->Query("SELECT 1");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  std::string m(r.status().message());
  auto key = Rs256Key::FromPrivateKeyPem(keys_.private_key_pem);
  EXPECT_TRUE(Contains(m, SnowflakePublicKeyFingerprint(**key))) << m;
  EXPECT_TRUE(Contains(m, "DESCRIBE USER SYNC_USER")) << m;
  EXPECT_TRUE(Contains(m, "MYORG-MYACCOUNT")) << m;
  EXPECT_TRUE(Contains(m, "390144")) << m;
  EXPECT_EQ(fake_->CountRequests("POST", 401), 3);
}

TEST_F(SnowflakeSourceTest, JwtIsRenewedBeforeItExpires) {
  auto source = MakeSource();
  ASSERT_TRUE(Run(*source, "SELECT 1").ok());
  clock_.Advance(minutes(30));
  ASSERT_TRUE(Run(*source, "SELECT 1").ok());
  clock_.Advance(minutes(31));  // the first JWT (59 min) has expired
  ASSERT_TRUE(Run(*source, "SELECT 1").ok());
  EXPECT_EQ(fake_->CountRequests("", 401), 0) << fake_->LastAuthFailure();
}

TEST_F(SnowflakeSourceTest, WrongAccountOrKeyIsUnauthenticated) {
  json settings = Settings();
  settings["account"] = "otherorg-otheraccount";
  auto source = MakeSource(settings);
  auto r = source->Query("SELECT 1");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(Contains(std::string(r.status().message()), "OTHERORG-OTHERACCOUNT"));
  EXPECT_TRUE(Contains(fake_->LastAuthFailure(), "is not this account"));

  // A locator with region normalises to the canonical account.
  FakeSnowflakeOptions options;
  options.account = "XY12345";
  StartFake(options);
  settings = Settings();
  settings["account"] = "xy12345.us-east-2.aws";
  ASSERT_TRUE(Run(*MakeSource(settings), "SELECT 1").ok()) << fake_->LastAuthFailure();

  auto other = GenerateRsaKeyPair();
  ASSERT_TRUE(other.ok());
  settings["private_key"] = other->private_key_pem;
  r = MakeSource(settings)->Query("SELECT 1");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(Contains(fake_->LastAuthFailure(), "matches no public key"));
}

TEST_F(SnowflakeSourceTest, EncryptedKeyWithPassphrase) {
  json settings = Settings();
  settings["private_key"] = EncryptedPem(keys_.private_key_pem, "pw");
  settings["private_key_passphrase"] = "pw";
  ASSERT_TRUE(Run(*MakeSource(settings), "SELECT 1").ok()) << fake_->LastAuthFailure();
}

TEST_F(SnowflakeSourceTest, ProgrammaticAccessTokenAndOAuth) {
  fake_->AddToken("pat-123", kUser, "PROGRAMMATIC_ACCESS_TOKEN");
  fake_->AddToken("oauth-456", kUser, "OAUTH", clock_.Now() + minutes(10));
  json settings = Settings();
  settings.erase("private_key");
  settings.erase("user");
  settings["token"] = "pat-123";
  ASSERT_TRUE(Run(*MakeSource(settings), "SELECT 1").ok()) << fake_->LastAuthFailure();
  EXPECT_EQ(fake_->Requests().back().token_type, "PROGRAMMATIC_ACCESS_TOKEN");

  settings["token"] = "oauth-456";
  settings["token_type"] = "oauth";
  auto oauth = MakeSource(settings);
  ASSERT_TRUE(Run(*oauth, "SELECT 1").ok()) << fake_->LastAuthFailure();
  EXPECT_EQ(fake_->Requests().back().token_type, "OAUTH");

  // An expired token is not re-sent: there is nothing to refresh.
  clock_.Advance(minutes(11));
  int64_t before = fake_->CountRequests("POST", 401);
  auto r = oauth->Query("SELECT 1");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(Contains(std::string(r.status().message()), "OAuth access token"));
  EXPECT_TRUE(Contains(std::string(r.status().message()), "390303"));
  EXPECT_EQ(fake_->CountRequests("POST", 401) - before, 1);
}

TEST_F(SnowflakeSourceTest, PartitionFetchRetriesTransientErrors) {
  fake_->set_rows_per_partition(2);
  fake_->EnqueueReply(FakeSnowflakeReply::Error(503, "partition=1"));
  FakeSnowflakeReply reset;
  reset.match = "partition=2";
  reset.reset_connection = true;
  fake_->EnqueueReply(reset);
  fake_->EnqueueReply(FakeSnowflakeReply::Error(429, "partition=3"));
  auto source = MakeSource();
  auto rows = Run(*source, "SELECT ID FROM USERS ORDER BY ID");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 7u);
  for (int i = 0; i < 7; ++i) EXPECT_EQ((*rows)[i][0], Value::Int64(i + 1));
  EXPECT_EQ(fake_->CountRequests("partition=1", 200), 1);
  EXPECT_EQ(fake_->CountRequests("partition=2", 200), 1);
  EXPECT_EQ(fake_->CountRequests("partition=3", 200), 1);
  EXPECT_EQ(fake_->executions(), 1);
}

TEST_F(SnowflakeSourceTest, MidStreamFailureIsAnErrorAndCancels) {
  fake_->set_rows_per_partition(2);
  for (int i = 0; i < 4; ++i) fake_->EnqueueReply(FakeSnowflakeReply::Error(503, "partition=2"));
  auto source = MakeSource();
  auto reader = source->Query("SELECT ID FROM USERS ORDER BY ID");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  int delivered = 0;
  absl::StatusOr<bool> more;
  while ((more = (*reader)->Next(row)).ok() && *more) ++delivered;
  EXPECT_EQ(delivered, 4);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kUnavailable) << more.status();
  EXPECT_TRUE(Contains(std::string(more.status().message()), "partition 2"));
  // Sticky.
  EXPECT_EQ((*reader)->Next(row).status().code(), absl::StatusCode::kUnavailable);
  reader->reset();
  ASSERT_EQ(fake_->cancellations().size(), 1u);
}

TEST_F(SnowflakeSourceTest, RateLimitedPartitionKeepsTheRequestedDelay) {
  fake_->set_rows_per_partition(4);
  FakeSnowflakeReply limited = FakeSnowflakeReply::Error(429, "partition=1");
  limited.headers = {{"Retry-After", "9"}};
  for (int i = 0; i < 4; ++i) fake_->EnqueueReply(limited);
  auto source = MakeSource();
  auto rows = Run(*source, "SELECT ID FROM USERS ORDER BY ID");
  ASSERT_EQ(rows.status().code(), absl::StatusCode::kResourceExhausted) << rows.status();
  EXPECT_EQ(RetryAfter(rows.status()), seconds(9));
  EXPECT_TRUE(Contains(std::string(rows.status().message()), "partition 1 of 2"));
  EXPECT_EQ(fake_->CountRequests("partition=1", 429), 4);
  EXPECT_EQ(clock_.total_slept(), seconds(27));
}

TEST_F(SnowflakeSourceTest, ShortPartitionIsDataLossNotACleanEnd) {
  fake_->set_rows_per_partition(3);
  FakeSnowflakeReply short_body;
  short_body.match = "partition=1";
  short_body.status = 200;
  short_body.body = R"({"data":[["4"],["5"]]})";
  short_body.apply_first = true;
  fake_->EnqueueReply(short_body);
  auto source = MakeSource();
  auto reader = source->Query("SELECT ID FROM USERS ORDER BY ID");
  ASSERT_TRUE(reader.ok());
  auto rows = ReadAll(**reader);
  ASSERT_FALSE(rows.ok());
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kDataLoss) << rows.status();
  EXPECT_TRUE(Contains(std::string(rows.status().message()), "announced 3"));
}

TEST_F(SnowflakeSourceTest, DroppingAReaderEarlyCancelsTheStatement) {
  fake_->set_rows_per_partition(2);
  auto source = MakeSource();
  {
    auto reader = source->Query("SELECT ID FROM USERS ORDER BY ID");
    ASSERT_TRUE(reader.ok());
    Row row;
    ASSERT_TRUE(*(*reader)->Next(row));
  }
  std::vector<SnowflakeCancellation> cancelled = fake_->cancellations();
  ASSERT_EQ(cancelled.size(), 1u);
  EXPECT_EQ(fake_->CountRequests("/cancel", 200), 1);
  EXPECT_EQ(fake_->CountRequests("partition="), 0);
}

TEST_F(SnowflakeSourceTest, StatementStillRunningAfterTheTimeoutIsCancelled) {
  fake_->set_still_running_polls(1'000'000);
  json settings = Settings();
  settings["statement_timeout_s"] = 60;
  auto r = MakeSource(settings)->Query("SELECT ID FROM USERS");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_TRUE(Contains(std::string(r.status().message()), "statement_timeout_s"));
  std::vector<SnowflakeCancellation> cancelled = fake_->cancellations();
  ASSERT_EQ(cancelled.size(), 1u);
  EXPECT_TRUE(cancelled[0].was_running);
  EXPECT_LE(clock_.total_slept(), seconds(60) + minutes(5));
  EXPECT_GE(clock_.total_slept(), seconds(60) + minutes(5) - seconds(5));
}

TEST_F(SnowflakeSourceTest, CancelWhilePollingCancelsTheStatementAndStopsPolling) {
  fake_->set_still_running_polls(1'000'000);
  clock_.CancelDuringSleep(3);  // two polls answered 202, then the run is cancelled
  auto r = MakeSource()->Query("SELECT ID FROM USERS", QueryOptions{"ID", &cancel_});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_TRUE(Contains(std::string(r.status().message()), "cancelled")) << r.status();
  std::vector<SnowflakeCancellation> cancelled = fake_->cancellations();
  ASSERT_EQ(cancelled.size(), 1u);
  EXPECT_TRUE(cancelled[0].was_running);
  EXPECT_TRUE(Contains(std::string(r.status().message()), cancelled[0].handle)) << r.status();
  EXPECT_EQ(fake_->CountRequests("GET /api/v2/statements/" + cancelled[0].handle, 202), 2);
  // The cancel is the last request: no poll after it.
  std::vector<SnowflakeRequestLog> requests = fake_->Requests();
  ASSERT_FALSE(requests.empty());
  EXPECT_EQ(requests.back().method + " " + requests.back().target,
            "POST /api/v2/statements/" + cancelled[0].handle + "/cancel");
  EXPECT_EQ(clock_.sleeps(), 3);
}

TEST_F(SnowflakeSourceTest, AlreadyCancelledRunSubmitsNothing) {
  cancel_ = true;
  auto r = MakeSource()->Query("SELECT ID FROM USERS", QueryOptions{"ID", &cancel_});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_TRUE(fake_->Requests().empty());
}

TEST_F(SnowflakeSourceTest, CancelBetweenPartitionsCancelsAndFetchesNoMore) {
  fake_->set_rows_per_partition(2);
  auto source = MakeSource();
  auto reader = source->Query("SELECT ID FROM USERS ORDER BY ID", QueryOptions{"ID", &cancel_});
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  ASSERT_TRUE(*(*reader)->Next(row));
  ASSERT_TRUE(*(*reader)->Next(row));
  cancel_ = true;
  auto next = (*reader)->Next(row);
  ASSERT_EQ(next.status().code(), absl::StatusCode::kCancelled) << next.status();
  EXPECT_EQ((*reader)->Next(row).status().code(), absl::StatusCode::kCancelled);
  reader->reset();  // no second cancel when dropped
  EXPECT_EQ(fake_->cancellations().size(), 1u);
  EXPECT_EQ(fake_->CountRequests("partition="), 0);
}

TEST_F(SnowflakeSourceTest, CheckConnection) {
  EXPECT_TRUE(MakeSource()->CheckConnection().ok());
  EXPECT_TRUE(fake_->cancellations().empty());

  json settings = Settings();
  settings["warehouse"] = "compute_wh";  // names are case-sensitive
  absl::Status s = MakeSource(settings)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(Contains(std::string(s.message()), "CURRENT_WAREHOUSE() is NULL")) << s;

  settings = Settings();
  settings["database"] = "NOPE";
  s = MakeSource(settings)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(Contains(std::string(s.message()), "database \"NOPE\"")) << s;

  settings = Settings();
  settings["role"] = "ADMIN";
  s = MakeSource(settings)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(Contains(std::string(s.message()), "not granted")) << s;

  settings = Settings();
  settings.erase("warehouse");  // and the user has no default
  s = MakeSource(settings)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(Contains(std::string(s.message()), "set `warehouse`")) << s;
  auto r = MakeSource(settings)->Query("SELECT ID FROM USERS");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_TRUE(Contains(std::string(r.status().message()), "000606")) << r.status();
}

TEST_F(SnowflakeSourceTest, ConcurrentSourcesShareTheFake) {
  fake_->set_rows_per_partition(2);
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(4);
  std::vector<std::unique_ptr<Source>> sources;
  for (int i = 0; i < 4; ++i) sources.push_back(MakeSource());
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int round = 0; round < 3; ++round) {
        auto rows = Run(*sources[i], "SELECT ID, EMAIL FROM USERS ORDER BY ID");
        if (!rows.ok()) {
          results[i] = rows.status();
          return;
        }
        if (rows->size() != 7u) {
          results[i] = absl::InternalError("wrong row count");
          return;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(fake_->executions(), 12);
  EXPECT_TRUE(fake_->cancellations().empty());
}

}  // namespace
}  // namespace backflow
