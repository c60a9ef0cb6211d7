// The fake enforces the protocol the destination is tested against: these
// tests talk to it directly, as Google's clients would.
#include "backflow/destinations/google_sheets/fake_sheets_server.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/jwt_bearer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using Grid = std::vector<std::vector<json>>;
using std::chrono::seconds;

constexpr char kEmail[] = "svc@fake-test.iam.gserviceaccount.com";
constexpr char kDoc[] = "doc1";

class FakeSheetsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeSheetsOptions options;
    options.clock = &clock_;
    options.write_requests_per_minute = 5;
    options.max_request_bytes = 4096;
    fake_ = std::make_unique<FakeSheetsServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    key_ = json::parse(fake_->AddServiceAccount(kEmail));
    fake_->CreateSpreadsheet(kDoc, "Sheet1");
    fake_->Share(kDoc, kEmail);
  }

  JwtBearerConfig Jwt() {
    JwtBearerConfig c;
    c.vendor = "Google";
    c.token_url = fake_->TokenUrl();
    c.private_key_pem = key_["private_key"];
    c.key_id = key_["private_key_id"];
    c.issuer = kEmail;
    c.scope = "https://www.googleapis.com/auth/spreadsheets";
    c.max_retries = 0;
    return c;
  }

  absl::StatusOr<std::string> Mint(JwtBearerConfig c) {
    auto source = JwtBearerTokenSource::Create(std::move(c), http_.get(), &clock_);
    if (!source.ok()) return source.status();
    return (*source)->Token(false);
  }

  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "", bool auth = true) {
    HttpRequest req;
    req.method = method;
    req.url = fake_->BaseUrl() + "/v4/spreadsheets/" + path;
    req.body = body;
    if (auth) {
      if (token_.empty()) token_ = *Mint(Jwt());
      req.headers.emplace_back("Authorization", "Bearer " + token_);
    }
    absl::StatusOr<HttpResponse> r = http_->Send(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  static std::string Message(const HttpResponse& r) {
    json body = json::parse(r.body, nullptr, false);
    return body.is_object() ? body["error"].value("message", "") : "";
  }

  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeSheetsServer> fake_;
  json key_;
  std::string token_;
};

TEST_F(FakeSheetsServerTest, TokenEndpointChecksTheAssertion) {
  absl::StatusOr<std::string> t = Mint(Jwt());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(fake_->tokens_issued(), 1);

  JwtBearerConfig c = Jwt();
  c.audience = "https://oauth2.googleapis.com/token";
  EXPECT_THAT(std::string(Mint(c).status().message()), HasSubstr("Failed audience check"));
  c = Jwt();
  c.scope = "https://www.googleapis.com/auth/drive";
  EXPECT_THAT(std::string(Mint(c).status().message()), HasSubstr("invalid_scope"));
  c = Jwt();
  c.assertion_lifetime = seconds(3601);
  EXPECT_THAT(std::string(Mint(c).status().message()), HasSubstr("short-lived token"));
  c = Jwt();
  c.issuer = "stranger@x.iam.gserviceaccount.com";
  EXPECT_THAT(std::string(Mint(c).status().message()), HasSubstr("account not found"));
  c = Jwt();
  c.key_id = "0123";
  EXPECT_THAT(std::string(Mint(c).status().message()), HasSubstr("Invalid JWT Signature."));
  EXPECT_EQ(fake_->tokens_issued(), 1);
}

TEST_F(FakeSheetsServerTest, EnforcesAuthSharingAndQuota) {
  EXPECT_EQ(Call("GET", kDoc, "", /*auth=*/false).status, 401);
  EXPECT_EQ(Call("GET", kDoc).status, 200);
  clock_.Advance(seconds(3600));  // the token expired
  EXPECT_EQ(Call("GET", kDoc).status, 401);
  token_.clear();
  EXPECT_EQ(Call("GET", "nope").status, 404);
  fake_->Unshare(kDoc, kEmail);
  HttpResponse r = Call("GET", kDoc);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(json::parse(r.body)["error"]["status"], "PERMISSION_DENIED");
  fake_->Share(kDoc, kEmail);

  // 5 writes per minute: the 6th is refused until the next minute.
  std::string put = R"({"values":[["x"]]})";
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Call("PUT", std::string(kDoc) + "/values/A1?valueInputOption=RAW", put).status, 200);
  }
  r = Call("PUT", std::string(kDoc) + "/values/A1?valueInputOption=RAW", put);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(json::parse(r.body)["error"]["status"], "RESOURCE_EXHAUSTED");
  EXPECT_EQ(r.Header("retry-after"), std::nullopt);
  EXPECT_EQ(Call("GET", kDoc).status, 200);  // reads have their own quota
  clock_.Advance(seconds(60));
  EXPECT_EQ(Call("PUT", std::string(kDoc) + "/values/A1?valueInputOption=RAW", put).status, 200);

  // Payload size.
  std::string big = R"({"values":[[")" + std::string(5000, 'x') + R"("]]})";
  r = Call("PUT", std::string(kDoc) + "/values/A1?valueInputOption=RAW", big);
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(Message(r), HasSubstr("payload size exceeds the limit"));
}

TEST_F(FakeSheetsServerTest, ValuesApiSemantics) {
  auto path = [](const std::string& rest) { return std::string(kDoc) + rest; };
  // Ranges are parsed; writes need valueInputOption and must fit the range.
  EXPECT_THAT(Message(Call("GET", path("/values/Nope%21A1"))), HasSubstr("Unable to parse range"));
  EXPECT_THAT(Message(Call("GET", path("/values/Sheet1%21A1%3A"))),
              HasSubstr("Unable to parse range"));
  EXPECT_THAT(Message(Call("PUT", path("/values/A1"), R"({"values":[["a"]]})")),
              HasSubstr("'valueInputOption' is required"));
  EXPECT_THAT(Message(Call("PUT", path("/values/A1%3AB1?valueInputOption=RAW"),
                           R"({"values":[["a","b","c"]]})")),
              HasSubstr("tried writing to column [C]"));
  EXPECT_THAT(
      Message(Call("PUT", path("/values/A1?valueInputOption=RAW"), R"({"values":[[{"x":1}]]})")),
      HasSubstr("struct_value"));
  EXPECT_THAT(Message(Call("PUT", path("/values/A1000%3AA1001?valueInputOption=RAW"),
                           R"({"values":[["a"],["b"]]})")),
              HasSubstr("exceeds grid limits. Max rows: 1000, max columns: 26"));
  EXPECT_TRUE(fake_->Values(kDoc, "Sheet1").empty());

  // A table, then an append after its last row; null leaves a cell alone.
  clock_.Advance(seconds(60));  // a new quota minute
  ASSERT_EQ(Call("PUT", path("/values/%27Sheet1%27%21A1%3AC2?valueInputOption=RAW"),
                 R"({"range":"'Sheet1'!A1:C2","values":[["id","n","ok"],["a",1,true]]})")
                .status,
            200);
  HttpResponse r = Call("POST",
                        path("/values/Sheet1%21A1%3AC1:append?valueInputOption=RAW&"
                             "insertDataOption=INSERT_ROWS"),
                        R"({"values":[["b",2.5,null],["c","",false]]})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["updates"]["updatedRange"], "Sheet1!A3:C4");
  EXPECT_EQ(fake_->GridSize(kDoc, "Sheet1").first, 1002);
  EXPECT_EQ(fake_->Values(kDoc, "Sheet1"),
            (Grid{{"id", "n", "ok"}, {"a", 1, true}, {"b", 2.5}, {"c", "", false}}));

  // batchUpdate is atomic: one bad range and nothing is written.
  r = Call("POST", path("/values:batchUpdate"),
           R"({"valueInputOption":"RAW","data":[{"range":"Sheet1!B2","values":[[9]]},)"
           R"({"range":"Nope!A1","values":[[1]]}]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(fake_->Values(kDoc, "Sheet1")[1], (std::vector<json>{"a", 1, true}));

  // Reads: COLUMNS, formatted and unformatted.
  r = Call("GET", path("/values:batchGet?ranges=Sheet1%211%3A1&ranges=Sheet1%21B2%3AB&"
                       "majorDimension=COLUMNS&valueRenderOption=UNFORMATTED_VALUE"));
  ASSERT_EQ(r.status, 200) << r.body;
  json ranges = json::parse(r.body)["valueRanges"];
  EXPECT_EQ(ranges[0]["values"], json::parse(R"([["id"],["n"],["ok"]])"));
  EXPECT_EQ(ranges[1]["values"], json::parse(R"([[1,2.5]])"));
  r = Call("GET", path("/values/Sheet1%21B2%3AC3"));
  EXPECT_EQ(json::parse(r.body)["values"], json::parse(R"([["1","TRUE"],["2.5"]])"));

  // Structural: deleting rows shifts the ones below; deleting every row is refused.
  clock_.Advance(seconds(60));
  r = Call("POST", path(":batchUpdate"),
           R"({"requests":[{"deleteDimension":{"range":{"sheetId":0,"dimension":"ROWS",)"
           R"("startIndex":1,"endIndex":2}}}]})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(fake_->Values(kDoc, "Sheet1"), (Grid{{"id", "n", "ok"}, {"b", 2.5}, {"c", "", false}}));
  r = Call("POST", path(":batchUpdate"),
           R"({"requests":[{"deleteDimension":{"range":{"sheetId":0,"dimension":"ROWS",)"
           R"("startIndex":0,"endIndex":1001}}}]})");
  EXPECT_THAT(Message(r), HasSubstr("You can't delete all the rows"));
  r = Call("POST", path(":batchUpdate"),
           R"({"requests":[{"deleteDimension":{"range":{"sheetId":7,"dimension":"ROWS",)"
           R"("startIndex":0,"endIndex":1}}}]})");
  EXPECT_THAT(Message(r), HasSubstr("No grid with id: 7"));
}

}  // namespace
}  // namespace backflow
