// The fake enforces the protocol it stands for: these talk to it over raw
// HTTP, without the source.
#include "backflow/sources/bigquery/fake_bigquery_server.h"

#include <gtest/gtest.h>

#include "backflow/common/http_client.h"
#include "backflow/common/url.h"
#include "backflow/delivery/jwt_bearer.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kAccount[] = "svc@test-project.iam.gserviceaccount.com";
constexpr char kScope[] = "https://www.googleapis.com/auth/bigquery";

class FakeBigQueryServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeBigQueryOptions options;
    options.clock = &clock_;
    options.max_page_bytes = 200;
    fake_ = std::make_unique<FakeBigQueryServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    key_ = json::parse(fake_->AddServiceAccount(kAccount));
    ASSERT_TRUE(fake_->CreateDataset("crm", "US").ok());
    ASSERT_TRUE(fake_->CreateDataset("local", "europe-west2").ok());
    ASSERT_TRUE(fake_->Exec("CREATE TABLE crm.t (id INT64, name STRING TEXT)").ok());
    ASSERT_TRUE(fake_->Exec("CREATE TABLE local.t (id INT64)").ok());
    for (int i = 1; i <= 25; ++i) {
      ASSERT_TRUE(fake_->Exec(fmt::format("INSERT INTO crm.t VALUES ({0}, 'name-{0}')", i)).ok());
    }
    ASSERT_TRUE(fake_->Exec("INSERT INTO local.t VALUES (1)").ok());
  }

  std::string Assertion(json claims_override = json::object(), const std::string& pem = "") {
    int64_t now =
        std::chrono::duration_cast<std::chrono::seconds>(clock_.Now().time_since_epoch()).count();
    json claims = {{"iss", kAccount},
                   {"scope", kScope},
                   {"aud", fake_->TokenUrl()},
                   {"iat", now},
                   {"exp", now + 3600}};
    claims.update(claims_override);
    auto key =
        Rs256Key::FromPrivateKeyPem(pem.empty() ? key_["private_key"].get<std::string>() : pem);
    EXPECT_TRUE(key.ok());
    return *SignJwtRs256(**key, key_["private_key_id"].get<std::string>(), claims);
  }

  HttpResponse TokenCall(const std::string& assertion,
                         const std::string& grant = kJwtBearerGrantType) {
    HttpRequest req;
    req.method = "POST";
    req.url = fake_->TokenUrl();
    req.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
    req.body =
        fmt::format("grant_type={}&assertion={}", FormUrlEncode(grant), FormUrlEncode(assertion));
    auto r = http_->Send(req);
    EXPECT_TRUE(r.ok());
    return r.ok() ? *r : HttpResponse{};
  }

  std::string Token() {
    HttpResponse r = TokenCall(Assertion());
    EXPECT_EQ(r.status, 200) << r.body;
    return json::parse(r.body)["access_token"];
  }

  HttpResponse Api(const std::string& method, const std::string& path, const json& body = nullptr,
                   const std::string& token = "") {
    HttpRequest req;
    req.method = method;
    req.url = fake_->BaseUrl() + "/bigquery/v2/projects/" + path;
    if (!body.is_null()) {
      req.body = body.dump();
      req.headers.emplace_back("Content-Type", "application/json");
    }
    std::string t = token.empty() ? token_ : token;
    if (t != "none") req.headers.emplace_back("Authorization", "Bearer " + t);
    auto r = http_->Send(req);
    EXPECT_TRUE(r.ok());
    return r.ok() ? *r : HttpResponse{};
  }

  static std::string Reason(const HttpResponse& r) {
    json body = json::parse(r.body, nullptr, false);
    if (body.is_discarded() || !body.contains("error")) return "";
    return body["error"]["errors"][0].value("reason", "");
  }

  FakeClock clock_;
  std::unique_ptr<FakeBigQueryServer> fake_;
  json key_;
  std::string token_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

TEST_F(FakeBigQueryServerTest, TokenEndpointChecksTheAssertion) {
  HttpResponse ok = TokenCall(Assertion());
  ASSERT_EQ(ok.status, 200) << ok.body;
  json token = json::parse(ok.body);
  EXPECT_EQ(token["token_type"], "Bearer");
  EXPECT_EQ(token["expires_in"], 3599);

  EXPECT_EQ(json::parse(TokenCall(Assertion({{"aud", "https://elsewhere/token"}})).body)["error"],
            "invalid_grant");
  EXPECT_EQ(
      json::parse(
          TokenCall(Assertion({{"scope", "https://www.googleapis.com/auth/drive"}})).body)["error"],
      "invalid_scope");
  int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(clock_.Now().time_since_epoch()).count();
  EXPECT_EQ(json::parse(TokenCall(Assertion({{"exp", now - 1}})).body)["error"], "invalid_grant");
  EXPECT_EQ(json::parse(TokenCall(Assertion({{"exp", now + 7200}})).body)["error"],
            "invalid_grant");
  auto other = GenerateRsaKeyPair();
  ASSERT_TRUE(other.ok());
  HttpResponse forged = TokenCall(Assertion(json::object(), other->private_key_pem));
  EXPECT_EQ(forged.status, 400);
  EXPECT_NE(forged.body.find("Invalid JWT Signature."), std::string::npos);
  EXPECT_EQ(json::parse(TokenCall(Assertion(), "client_credentials").body)["error"],
            "unsupported_grant_type");
  // The cloud-platform scope is accepted too.
  EXPECT_EQ(
      TokenCall(Assertion({{"scope", "https://www.googleapis.com/auth/cloud-platform"}})).status,
      200);
}

TEST_F(FakeBigQueryServerTest, TokensAreRequiredAndExpire) {
  EXPECT_EQ(Api("POST", "test-project/queries", {{"query", "SELECT 1"}}, "none").status, 401);
  token_ = Token();
  json q = {{"query", "SELECT 1 AS x"}, {"useLegacySql", false}};
  EXPECT_EQ(Api("POST", "test-project/queries", q).status, 200);
  clock_.Advance(std::chrono::seconds(3600));
  HttpResponse expired = Api("POST", "test-project/queries", q);
  EXPECT_EQ(expired.status, 401);
  EXPECT_EQ(Reason(expired), "authError");
}

TEST_F(FakeBigQueryServerTest, QueryRequestRules) {
  token_ = Token();
  HttpResponse legacy = Api("POST", "test-project/queries", {{"query", "SELECT id FROM crm.t"}});
  EXPECT_EQ(legacy.status, 400);
  EXPECT_EQ(Reason(legacy), "invalidQuery");
  HttpResponse project =
      Api("POST", "nope/queries", {{"query", "SELECT 1"}, {"useLegacySql", false}});
  EXPECT_EQ(project.status, 404);
  EXPECT_NE(project.body.find("Not found: Project nope"), std::string::npos);
  HttpResponse syntax =
      Api("POST", "test-project/queries", {{"query", "SELECT FROM"}, {"useLegacySql", false}});
  EXPECT_EQ(syntax.status, 400);
  EXPECT_EQ(json::parse(syntax.body)["error"]["errors"][0]["location"], "q");

  // Paging: INT64 as strings, totalRows a string, pages capped by rows and bytes.
  json q = {{"query", "SELECT id, name FROM crm.t ORDER BY id"},
            {"useLegacySql", false},
            {"maxResults", 10}};
  HttpResponse first = Api("POST", "test-project/queries", q);
  ASSERT_EQ(first.status, 200) << first.body;
  json page = json::parse(first.body);
  EXPECT_EQ(page["totalRows"], "25");
  EXPECT_EQ(page["schema"]["fields"][0],
            json({{"name", "id"}, {"type", "INTEGER"}, {"mode", "NULLABLE"}}));
  EXPECT_EQ(page["rows"][0], json::parse(R"({"f":[{"v":"1"},{"v":"name-1"}]})"));
  size_t got = page["rows"].size();
  EXPECT_LT(got, 10u);  // 200 bytes of rows
  std::string job = page["jobReference"]["jobId"];
  std::string token = page["pageToken"];
  while (!token.empty()) {
    HttpResponse next = Api(
        "GET",
        fmt::format("test-project/queries/{}?location=US&maxResults=10&pageToken={}", job, token));
    ASSERT_EQ(next.status, 200) << next.body;
    json p = json::parse(next.body);
    got += p.value("rows", json::array()).size();
    token = p.value("pageToken", "");
  }
  EXPECT_EQ(got, 25u);
  HttpResponse bad_token =
      Api("GET", fmt::format("test-project/queries/{}?location=US&pageToken=forged", job));
  EXPECT_EQ(bad_token.status, 400);
  HttpResponse wrong_place = Api("GET", fmt::format("test-project/queries/{}?location=EU", job));
  EXPECT_EQ(wrong_place.status, 404);
  EXPECT_NE(wrong_place.body.find("Not found: Job test-project:EU." + job), std::string::npos);
}

TEST_F(FakeBigQueryServerTest, RegionalJobsNeedTheirLocation) {
  token_ = Token();
  HttpResponse r = Api("POST", "test-project/queries",
                       {{"query", "SELECT id FROM local.t"}, {"useLegacySql", false}});
  ASSERT_EQ(r.status, 200) << r.body;
  json ref = json::parse(r.body)["jobReference"];
  EXPECT_EQ(ref["location"], "europe-west2");
  std::string job = ref["jobId"];
  EXPECT_EQ(Api("GET", "test-project/queries/" + job).status, 404);
  EXPECT_EQ(Api("GET", "test-project/queries/" + job + "?location=europe-west2").status, 200);
  HttpResponse mismatch =
      Api("POST", "test-project/queries",
          {{"query", "SELECT id FROM local.t"}, {"useLegacySql", false}, {"location", "US"}});
  EXPECT_EQ(mismatch.status, 404);
  EXPECT_NE(
      mismatch.body.find("Not found: Dataset test-project:local was not found in location US"),
      std::string::npos);
}

TEST_F(FakeBigQueryServerTest, CancellingARunningJobStopsIt) {
  token_ = Token();
  fake_->SetPollsBeforeComplete(5);
  HttpResponse r = Api("POST", "test-project/queries",
                       {{"query", "SELECT id FROM crm.t"}, {"useLegacySql", false}});
  json reply = json::parse(r.body);
  EXPECT_EQ(reply["jobComplete"], false);
  EXPECT_FALSE(reply.contains("schema"));
  EXPECT_FALSE(reply.contains("rows"));
  std::string job = reply["jobReference"]["jobId"];
  json state = json::parse(Api("GET", "test-project/jobs/" + job + "?location=US").body);
  EXPECT_EQ(state["status"]["state"], "RUNNING");
  EXPECT_EQ(Api("POST", "test-project/jobs/" + job + "/cancel?location=US").status, 200);
  state = json::parse(Api("GET", "test-project/jobs/" + job + "?location=US").body);
  EXPECT_EQ(state["status"]["state"], "DONE");
  EXPECT_EQ(state["status"]["errorResult"]["reason"], "stopped");
  HttpResponse after = Api("GET", "test-project/queries/" + job + "?location=US");
  EXPECT_EQ(after.status, 400);
  EXPECT_EQ(Reason(after), "stopped");
  ASSERT_EQ(fake_->Cancels().size(), 1u);
  EXPECT_EQ(fake_->Cancels()[0].job_id, job);
}

TEST_F(FakeBigQueryServerTest, StatementsTakePositionalStringParametersAndAnswerNoResult) {
  token_ = Token();
  auto param = [](const std::string& v) {
    return json{{"parameterType", {{"type", "STRING"}}}, {"parameterValue", {{"value", v}}}};
  };
  json query = {{"useLegacySql", false},
                {"query", "UPDATE crm.t SET name = ? WHERE id < CAST(? AS INT64)"},
                {"parameterMode", "POSITIONAL"},
                {"queryParameters", {param("x"), param("4")}}};
  HttpResponse r = Api("POST", "test-project/queries", query);
  ASSERT_EQ(r.status, 200) << r.body;
  json reply = json::parse(r.body);
  EXPECT_EQ(reply["jobComplete"], true);
  EXPECT_EQ(reply["statementType"], "UPDATE");
  EXPECT_EQ(reply["numDmlAffectedRows"], "3");
  EXPECT_FALSE(reply.contains("schema"));
  EXPECT_FALSE(reply.contains("totalRows"));
  // getQueryResults of the job answers the same.
  r = Api("GET", "test-project/queries/" + reply["jobReference"]["jobId"].get<std::string>() +
                     "?location=US");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["numDmlAffectedRows"], "3");

  // Parameters must match the `?`, be positional and STRING.
  query["queryParameters"] = json::array({param("x")});
  EXPECT_EQ(Reason(Api("POST", "test-project/queries", query)), "invalidQuery");
  query["queryParameters"] = {param("x"), param("4")};
  query["parameterMode"] = "NAMED";
  EXPECT_EQ(Reason(Api("POST", "test-project/queries", query)), "invalid");
  query["parameterMode"] = "POSITIONAL";
  query["queryParameters"][1]["parameterType"]["type"] = "INT64";
  EXPECT_EQ(Reason(Api("POST", "test-project/queries", query)), "invalid");

  // DDL: a dataset in a location, a table with a STRING column keeping text.
  json ddl = {{"useLegacySql", false},
              {"query", "CREATE SCHEMA IF NOT EXISTS st OPTIONS(location = 'EU')"}};
  r = Api("POST", "test-project/queries", ddl);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["statementType"], "CREATE_SCHEMA");
  EXPECT_EQ(json::parse(r.body)["jobReference"]["location"], "EU");
  ddl["query"] = "CREATE SCHEMA st";
  EXPECT_EQ(Reason(Api("POST", "test-project/queries", ddl)), "duplicate");
  ddl["query"] = "CREATE TABLE st.k (k STRING NOT NULL, PRIMARY KEY (k) NOT ENFORCED)";
  ddl["location"] = "EU";
  r = Api("POST", "test-project/queries", ddl);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["statementType"], "CREATE_TABLE");
  ASSERT_TRUE(fake_->Exec("INSERT INTO st.k VALUES ('007')").ok());
  auto rows = fake_->QueryRows("SELECT k FROM st.k");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ((*rows)[0]["k"], "007");

  // Refusals.
  fake_->DenyDatasetWrite(kAccount, "st");
  ddl["query"] = "DROP TABLE st.k";
  r = Api("POST", "test-project/queries", ddl);
  EXPECT_EQ(r.status, 403);
  EXPECT_NE(r.body.find("Permission bigquery.tables.delete denied on table test-project:st.k"),
            std::string::npos)
      << r.body;
  fake_->DenyDatasetCreate(kAccount);
  ddl["query"] = "CREATE SCHEMA IF NOT EXISTS other";
  r = Api("POST", "test-project/queries", ddl);
  EXPECT_EQ(r.status, 403);
  EXPECT_NE(r.body.find("bigquery.datasets.create"), std::string::npos) << r.body;
}

}  // namespace
}  // namespace backflow
