// The fake enforces the protocol on its own: raw requests against it, without
// the source.
#include "backflow/sources/databricks/fake_databricks_server.h"

#include <gtest/gtest.h>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/http_client.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

constexpr char kPat[] = "dapi-fake-test";

class FakeDatabricksServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeDatabricksOptions options;
    options.clock = &clock_;
    options.chunk_rows = 2;
    options.link_lifetime = std::chrono::seconds(60);
    fake_ = std::make_unique<FakeDatabricksServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    fake_->AddPersonalAccessToken(kPat, "me@example.com");
    fake_->AddPersonalAccessToken("dapi-other", "other@example.com");
    fake_->AddServicePrincipal("sp", "sp-secret");
    ASSERT_TRUE(fake_->CreateSchema("crm").ok());
    ASSERT_TRUE(fake_->Exec("CREATE TABLE crm.users (id BIGINT, name STRING TEXT)").ok());
    ASSERT_TRUE(
        fake_->Exec("INSERT INTO crm.users VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e')")
            .ok());
  }

  HttpResponse Send(const std::string& method, const std::string& path, const std::string& body,
                    HttpHeaders headers) {
    HttpRequest req;
    req.method = method;
    req.url = path.starts_with("http") ? path : fake_->BaseUrl() + path;
    req.body = body;
    req.headers = std::move(headers);
    absl::StatusOr<HttpResponse> r = http_->Send(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  HttpResponse Api(const std::string& method, const std::string& path, const json& body = nullptr,
                   const std::string& token = kPat) {
    HttpHeaders headers = {{"Content-Type", "application/json"}};
    if (!token.empty()) headers.emplace_back("Authorization", "Bearer " + token);
    return Send(method, path, body.is_null() ? "" : body.dump(), headers);
  }

  json Execute(json overrides = json::object(), const std::string& token = kPat) {
    json body = {{"statement", "SELECT id, name FROM crm.users ORDER BY id"},
                 {"warehouse_id", "abcdef0123456789"},
                 {"disposition", "EXTERNAL_LINKS"},
                 {"format", "JSON_ARRAY"}};
    body.update(overrides);
    HttpResponse r = Api("POST", "/api/2.0/sql/statements", body, token);
    EXPECT_EQ(r.status, 200) << r.body;
    return json::parse(r.body, nullptr, false);
  }

  HttpResponse Token(const std::string& credentials, const std::string& form) {
    return Send("POST", "/oidc/v1/token", form,
                {{"Content-Type", "application/x-www-form-urlencoded"},
                 {"Authorization", "Basic " + Base64Encode(credentials)}});
  }

  FakeClock clock_;
  std::unique_ptr<FakeDatabricksServer> fake_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

TEST_F(FakeDatabricksServerTest, TokenEndpointChecksTheClientCredentialsGrant) {
  HttpResponse r = Token("sp:wrong", "grant_type=client_credentials&scope=all-apis");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(json::parse(r.body)["error"], "invalid_client");
  r = Token("sp:sp-secret", "grant_type=password&scope=all-apis");
  EXPECT_EQ(json::parse(r.body)["error"], "unsupported_grant_type");
  r = Token("sp:sp-secret", "grant_type=client_credentials&scope=sql");
  EXPECT_EQ(json::parse(r.body)["error"], "invalid_scope");
  r = Token("sp:sp-secret", "grant_type=client_credentials&scope=all-apis");
  ASSERT_EQ(r.status, 200) << r.body;
  json token = json::parse(r.body);
  EXPECT_EQ(token["token_type"], "Bearer");
  EXPECT_EQ(token["expires_in"], 3600);
  // The token works until it expires by the fake's clock.
  std::string access = token["access_token"];
  EXPECT_EQ(Api("POST", "/api/2.0/sql/statements/",
                {{"statement", "SELECT 1"}, {"warehouse_id", "abcdef0123456789"}}, access)
                .status,
            200);
  clock_.Advance(std::chrono::seconds(3600));
  r = Api("POST", "/api/2.0/sql/statements/",
          {{"statement", "SELECT 1"}, {"warehouse_id", "abcdef0123456789"}}, access);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(json::parse(r.body)["error_code"], "UNAUTHENTICATED");
  EXPECT_EQ(Api("POST", "/api/2.0/sql/statements", {{"statement", "SELECT 1"}}, "").status, 401);
}

TEST_F(FakeDatabricksServerTest, ExecuteValidatesTheRequest) {
  auto error_of = [&](json body) {
    json base = {{"statement", "SELECT 1"}, {"warehouse_id", "abcdef0123456789"}};
    base.update(body);
    HttpResponse r = Api("POST", "/api/2.0/sql/statements", base);
    return std::make_pair(r.status, json::parse(r.body, nullptr, false).value("message", ""));
  };
  EXPECT_EQ(error_of({{"wait_timeout", "3s"}}).first, 400);
  EXPECT_EQ(error_of({{"wait_timeout", "51s"}}).first, 400);
  EXPECT_EQ(error_of({{"wait_timeout", "ten"}}).first, 400);
  EXPECT_THAT(error_of({{"format", "ARROW_STREAM"}}).second, HasSubstr("EXTERNAL_LINKS"));
  EXPECT_EQ(error_of({{"disposition", "INLINE_OR_EXTERNAL_LINKS"}}).first, 400);
  EXPECT_EQ(error_of({{"on_wait_timeout", "WAIT"}}).first, 400);
  EXPECT_EQ(error_of({{"warehouse_id", ""}}).first, 400);
  EXPECT_EQ(error_of({{"warehouse_id", "nope"}}).first, 404);
  EXPECT_EQ(error_of({{"statement", std::string(16 * 1024 * 1024 + 1, ' ')}}).first, 400);
  fake_->DenyWarehouse("me@example.com", "abcdef0123456789");
  EXPECT_EQ(error_of(json::object()).first, 403);
}

TEST_F(FakeDatabricksServerTest, StateMachineAndOnWaitTimeoutCancel) {
  fake_->SetPolls(1, 1);
  json reply = Execute({{"wait_timeout", "5s"}, {"on_wait_timeout", "CANCEL"}});
  EXPECT_EQ(reply["status"]["state"], "CANCELED");
  reply = Execute({{"wait_timeout", "5s"}});
  EXPECT_EQ(reply["status"]["state"], "PENDING");
  std::string id = reply["statement_id"];
  EXPECT_FALSE(reply.contains("manifest"));
  // Chunks cannot be read while it runs.
  EXPECT_EQ(Api("GET", fmt::format("/api/2.0/sql/statements/{}/result/chunks/0", id)).status, 400);
  EXPECT_EQ(json::parse(Api("GET", "/api/2.0/sql/statements/" + id).body)["status"]["state"],
            "PENDING");
  EXPECT_EQ(json::parse(Api("GET", "/api/2.0/sql/statements/" + id).body)["status"]["state"],
            "RUNNING");
  json done = json::parse(Api("GET", "/api/2.0/sql/statements/" + id).body);
  ASSERT_EQ(done["status"]["state"], "SUCCEEDED");
  EXPECT_EQ(done["manifest"]["total_row_count"], 5);
  EXPECT_EQ(done["manifest"]["total_chunk_count"], 3);
  EXPECT_EQ(
      done["manifest"]["schema"]["columns"][0],
      json({{"name", "id"}, {"type_text", "BIGINT"}, {"type_name", "LONG"}, {"position", 0}}));
  EXPECT_EQ(done["result"]["external_links"][0]["next_chunk_index"], 1);
  // Someone else's statement does not exist for us; indexes are checked.
  EXPECT_EQ(Api("GET", "/api/2.0/sql/statements/" + id, nullptr, "dapi-other").status, 404);
  EXPECT_EQ(Api("GET", fmt::format("/api/2.0/sql/statements/{}/result/chunks/3", id)).status, 400);
  // Cancel of a running statement; unknown paths.
  json running = Execute({{"wait_timeout", "0s"}});
  std::string rid = running["statement_id"];
  EXPECT_EQ(Api("POST", fmt::format("/api/2.0/sql/statements/{}/cancel", rid)).body, "{}");
  EXPECT_EQ(json::parse(Api("GET", "/api/2.0/sql/statements/" + rid).body)["status"]["state"],
            "CANCELED");
  EXPECT_EQ(fake_->Cancels(), std::vector<std::string>{rid});
  EXPECT_EQ(Api("GET", "/api/2.1/unity-catalog/catalogs").status, 404);
}

TEST_F(FakeDatabricksServerTest, PresignedLinksBehaveLikeCloudStorage) {
  json reply = Execute();
  json link = reply["result"]["external_links"][0];
  std::string url = link["external_link"];
  HttpHeaders sse;
  for (const auto& [k, v] : link["http_headers"].items()) sse.emplace_back(k, v.get<std::string>());
  HttpResponse ok = Send("GET", url, "", sse);
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(ok.body, R"([["1","a"],["2","b"]])");

  HttpHeaders with_token = sse;
  with_token.emplace_back("Authorization", std::string("Bearer ") + kPat);
  HttpResponse r = Send("GET", url, "", with_token);
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("Only one auth mechanism allowed"));
  r = Send("GET", url, "", {});
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("Server Side Encryption"));
  std::string tampered = url;
  tampered.back() = tampered.back() == '0' ? '1' : '0';
  EXPECT_THAT(Send("GET", tampered, "", sse).body, HasSubstr("SignatureDoesNotMatch"));
  clock_.Advance(std::chrono::seconds(60));
  r = Send("GET", url, "", sse);
  EXPECT_EQ(r.status, 403);
  EXPECT_THAT(r.body, HasSubstr("Request has expired"));
  // A fresh link for the same chunk works again.
  std::string id = reply["statement_id"];
  json fresh =
      json::parse(Api("GET", fmt::format("/api/2.0/sql/statements/{}/result/chunks/0", id)).body);
  EXPECT_EQ(Send("GET", fresh["external_links"][0]["external_link"], "", sse).status, 200);
  EXPECT_EQ(fake_->CountRequests("download", 200), 2);
}

TEST_F(FakeDatabricksServerTest, SqlIsRewrittenAndFailuresComeInA200) {
  json reply = Execute({{"statement",
                         "SELECT 'main.crm.users' AS s, u.id -- main.crm.x\n"
                         "FROM `main`.`crm`.`users` u WHERE u.id = 1"},
                        {"disposition", "INLINE"}});
  ASSERT_EQ(reply["status"]["state"], "SUCCEEDED") << reply.dump();
  EXPECT_EQ(reply["result"]["data_array"], json::parse(R"([["main.crm.users","1"]])"));

  reply = Execute({{"statement", "SELECT id FROM main.crm.nope"}, {"disposition", "INLINE"}});
  EXPECT_EQ(reply["status"]["state"], "FAILED");
  EXPECT_EQ(reply["status"]["error"]["error_code"], "BAD_REQUEST");
  EXPECT_EQ(reply["status"]["sql_state"], "42P01");
  reply = Execute({{"statement", "SELECT 1"}, {"catalog", "nope"}});
  EXPECT_THAT(reply["status"]["error"]["message"].get<std::string>(),
              HasSubstr("NO_SUCH_CATALOG_EXCEPTION"));

  // A reply lost after the statement was created.
  FakeDatabricksFault lost = FakeDatabricksFault::Unavailable("execute");
  lost.apply_first = true;
  fake_->AddFault(lost);
  int64_t before = fake_->statements_created();
  HttpResponse r = Api("POST", "/api/2.0/sql/statements",
                       {{"statement", "SELECT 1"}, {"warehouse_id", "abcdef0123456789"}});
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(fake_->statements_created(), before + 1);
}

}  // namespace
}  // namespace backflow

namespace backflow {
namespace {

// The Databricks SQL that change_detection: warehouse issues.
TEST_F(FakeDatabricksServerTest, NamedParametersDdlAndDmlReplies) {
  json r = Execute(
      {{"disposition", "INLINE"},
       {"statement",
        "SELECT name FROM crm.users WHERE id = CAST(:id AS BIGINT) AND "
        "name = :n"},
       {"parameters",
        {{{"name", "id"}, {"value", "2"}}, {{"name", "n"}, {"value", "b"}, {"type", "STRING"}}}}});
  ASSERT_EQ(r["status"]["state"], "SUCCEEDED") << r.dump();
  EXPECT_EQ(r["result"]["data_array"], json::parse(R"([["b"]])"));

  // Positional markers are not supported by the API; unbound names fail too.
  for (const char* sql : {"SELECT name FROM crm.users WHERE id = ?",
                          "SELECT name FROM crm.users WHERE id = :missing"}) {
    r = Execute({{"disposition", "INLINE"}, {"statement", sql}});
    ASSERT_EQ(r["status"]["state"], "FAILED") << sql;
    EXPECT_THAT(r["status"]["error"]["message"].get<std::string>(),
                HasSubstr("[UNBOUND_SQL_PARAMETER]"));
  }

  // DDL succeeds without columns; DML answers its counts.
  r = Execute({{"disposition", "INLINE"}, {"statement", "CREATE SCHEMA IF NOT EXISTS st"}});
  ASSERT_EQ(r["status"]["state"], "SUCCEEDED") << r.dump();
  EXPECT_EQ(r["manifest"]["schema"]["column_count"], 0);
  EXPECT_EQ(r["manifest"]["total_row_count"], 0);
  r = Execute(
      {{"disposition", "INLINE"},
       {"statement",
        "CREATE TABLE IF NOT EXISTS st.t (k STRING COLLATE UTF8_BINARY NOT NULL, n BIGINT)"}});
  ASSERT_EQ(r["status"]["state"], "SUCCEEDED") << r.dump();
  r = Execute(
      {{"disposition", "INLINE"},
       {"statement", "INSERT INTO st.t (k, n) VALUES (:k, CAST(:n AS BIGINT))"},
       {"parameters", {{{"name", "k"}, {"value", "007"}}, {{"name", "n"}, {"value", "7"}}}}});
  ASSERT_EQ(r["status"]["state"], "SUCCEEDED") << r.dump();
  EXPECT_EQ(r["manifest"]["schema"]["columns"][0]["name"], "num_affected_rows");
  EXPECT_EQ(r["result"]["data_array"], json::parse(R"([["1","1"]])"));
  r = Execute({{"disposition", "INLINE"},
               {"statement",
                "SELECT k, n, md5(k) AS h, get_json_object(value, '$[1]') AS j FROM st.t, "
                "(SELECT explode(from_json(:a, 'ARRAY<STRING>')) AS value) AS e"},
               {"parameters", {{{"name", "a"}, {"value", R"([["x","y"]])"}}}}});
  ASSERT_EQ(r["status"]["state"], "SUCCEEDED") << r.dump();
  // STRING keeps "007" as text; md5 is lowercase hex; a nested array is its JSON text.
  EXPECT_EQ(r["result"]["data_array"],
            json({{"007", "7", "9e94b15ed312fa42232fd87a55db0d39", "y"}}));

  // A refused privilege.
  fake_->DenyPrivilege("DROP TABLE", "MANAGE", "Table 'main.st.t'");
  r = Execute({{"disposition", "INLINE"}, {"statement", "DROP TABLE st.t"}});
  ASSERT_EQ(r["status"]["state"], "FAILED");
  EXPECT_EQ(r["status"]["sql_state"], "42501");
  EXPECT_THAT(r["status"]["error"]["message"].get<std::string>(),
              HasSubstr("[INSUFFICIENT_PERMISSIONS] Insufficient privileges: User does not have "
                        "MANAGE on Table 'main.st.t'."));
}

}  // namespace
}  // namespace backflow
