#include "backflow/delivery/oauth_client_credentials.h"

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/http_client.h"
#include "backflow/testing/http_test_server.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;
using std::chrono::seconds;

std::map<std::string, std::string> ParseForm(const std::string& body) {
  auto decode = [](std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '+') {
        out.push_back(' ');
      } else if (s[i] == '%' && i + 2 < s.size()) {
        out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
        i += 2;
      } else {
        out.push_back(s[i]);
      }
    }
    return out;
  };
  std::map<std::string, std::string> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t amp = body.find('&', pos);
    if (amp == std::string::npos) amp = body.size();
    std::string_view pair(body.data() + pos, amp - pos);
    size_t eq = pair.find('=');
    if (eq != std::string_view::npos) out[decode(pair.substr(0, eq))] = decode(pair.substr(eq + 1));
    pos = amp + 1;
  }
  return out;
}

// A token endpoint that checks the client's credentials the way an OAuth
// server does (RFC 6749 §4.4, §5.2) and records what it was sent.
class TokenEndpoint {
 public:
  TokenEndpoint()
      : server_([this](const TestRequest& req) {
          std::lock_guard<std::mutex> lock(mu_);
          requests_.push_back(req);
          if (!scripted_.empty()) {
            TestResponse r = scripted_.front();
            scripted_.erase(scripted_.begin());
            return r;
          }
          return Answer(req);
        }) {}

  absl::Status Start() { return server_.Start(); }
  std::string Url() const { return server_.Url("/oidc/v1/token"); }

  void Script(TestResponse r) {
    std::lock_guard<std::mutex> lock(mu_);
    scripted_.push_back(std::move(r));
  }
  std::vector<TestRequest> Requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  int issued() const {
    std::lock_guard<std::mutex> lock(mu_);
    return issued_;
  }
  int64_t expires_in = 3600;
  bool include_expires_in = true;

 private:
  TestResponse Answer(const TestRequest& req) {
    auto oauth_error = [](int status, const std::string& error, const std::string& description) {
      return TestResponse::Json(status,
                                json{{"error", error}, {"error_description", description}}.dump());
    };
    if (req.method != "POST" || req.target != "/oidc/v1/token") {
      return TestResponse::Json(404, R"({"error_code":"NOT_FOUND"})");
    }
    if (req.Header("content-type").value_or("") != "application/x-www-form-urlencoded") {
      return oauth_error(400, "invalid_request", "Content-Type must be form-urlencoded");
    }
    std::map<std::string, std::string> form = ParseForm(req.body);
    std::string id, secret;
    if (std::optional<std::string> auth = req.Header("authorization");
        auth && auth->starts_with("Basic ")) {
      absl::StatusOr<std::string> decoded = Base64Decode(auth->substr(6));
      if (!decoded.ok()) return oauth_error(401, "invalid_client", "bad Basic header");
      size_t colon = decoded->find(':');
      id = decoded->substr(0, colon);
      secret = colon == std::string::npos ? "" : decoded->substr(colon + 1);
    } else {
      id = form["client_id"];
      secret = form["client_secret"];
    }
    if (id != "sp-client-id" || secret != "dose-secret+/=") {
      return oauth_error(401, "invalid_client", "Client authentication failed");
    }
    if (form["grant_type"] != "client_credentials") {
      return oauth_error(400, "unsupported_grant_type", "grant_type " + form["grant_type"]);
    }
    if (form["scope"] != "all-apis") return oauth_error(400, "invalid_scope", form["scope"]);
    ++issued_;
    json reply = {{"access_token", fmt::format("eyJ.token-{}", issued_)},
                  {"token_type", "Bearer"},
                  {"scope", "all-apis"}};
    if (include_expires_in) reply["expires_in"] = expires_in;
    return TestResponse::Json(200, reply.dump());
  }

  HttpTestServer server_;
  mutable std::mutex mu_;
  std::vector<TestRequest> requests_;
  std::vector<TestResponse> scripted_;
  int issued_ = 0;
};

class ClientCredentialsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(endpoint_.Start().ok()); }

  ClientCredentialsConfig Config() const {
    ClientCredentialsConfig c;
    c.vendor = "Databricks";
    c.token_url = endpoint_.Url();
    c.client_id = "sp-client-id";
    c.client_secret = "dose-secret+/=";
    c.scope = "all-apis";
    c.hint = "Check client_id and client_secret";
    return c;
  }

  std::unique_ptr<ClientCredentialsTokenSource> Source(ClientCredentialsConfig c) {
    auto s = ClientCredentialsTokenSource::Create(std::move(c), http_.get(), &clock_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  TokenEndpoint endpoint_;
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

TEST_F(ClientCredentialsTest, SendsTheGrantWithBasicClientAuth) {
  auto source = Source(Config());
  absl::StatusOr<std::string> token = source->Token(false);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "eyJ.token-1");
  std::vector<TestRequest> reqs = endpoint_.Requests();
  ASSERT_EQ(reqs.size(), 1u);
  // The brief's exact wire form: Basic base64(client_id:client_secret), raw.
  EXPECT_EQ(reqs[0].Header("authorization"),
            "Basic " + Base64Encode("sp-client-id:dose-secret+/="));
  EXPECT_EQ(ParseForm(reqs[0].body),
            (std::map<std::string, std::string>{{"grant_type", "client_credentials"},
                                                {"scope", "all-apis"}}));
  EXPECT_EQ(reqs[0].body, "grant_type=client_credentials&scope=all-apis");
  EXPECT_EQ(source->LastTokenResponse()["token_type"], "Bearer");
  EXPECT_EQ(source->mint_count(), 1);
}

TEST_F(ClientCredentialsTest, RequestBodyClientAuthAndExtraParams) {
  ClientCredentialsConfig c = Config();
  c.client_auth = ClientAuthMethod::kRequestBody;
  c.extra_params = {{"audience", "https://api.example.com/x y"}};
  auto source = Source(c);
  ASSERT_TRUE(source->Token(false).ok());
  TestRequest req = endpoint_.Requests().at(0);
  EXPECT_FALSE(req.Header("authorization").has_value());
  std::map<std::string, std::string> form = ParseForm(req.body);
  EXPECT_EQ(form["client_id"], "sp-client-id");
  EXPECT_EQ(form["client_secret"], "dose-secret+/=");  // form-encoded on the wire, decoded here
  EXPECT_EQ(form["audience"], "https://api.example.com/x y");
  EXPECT_THAT(req.body, HasSubstr("client_secret=dose-secret%2B%2F%3D"));

  // RFC 6749 §2.3.1 form of Basic: encoded before base64.
  c = Config();
  c.form_encode_basic_credentials = true;
  HttpRequest encoded = Source(c)->TokenRequest();
  bool found = false;
  for (const auto& [name, value] : encoded.headers) {
    if (name == "Authorization") {
      found = true;
      EXPECT_EQ(value, "Basic " + Base64Encode("sp-client-id:dose-secret%2B%2F%3D"));
    }
  }
  EXPECT_TRUE(found);
}

TEST_F(ClientCredentialsTest, CachesUntilTheMarginBeforeExpiryThenRequestsAgain) {
  auto source = Source(Config());  // margin 300 s of a 3600 s token
  ASSERT_EQ(*source->Token(false), "eyJ.token-1");
  clock_.Advance(seconds(3299));
  EXPECT_EQ(*source->Token(false), "eyJ.token-1");
  clock_.Advance(seconds(1));
  EXPECT_EQ(*source->Token(false), "eyJ.token-2");
  EXPECT_EQ(endpoint_.issued(), 2);
  // A refused token is replaced at once.
  EXPECT_EQ(*source->Token(true), "eyJ.token-3");
  EXPECT_EQ(*source->Token(false), "eyJ.token-3");

  // A short-lived token keeps at least half its life.
  endpoint_.expires_in = 60;
  ASSERT_EQ(*source->Token(true), "eyJ.token-4");
  clock_.Advance(seconds(29));
  EXPECT_EQ(*source->Token(false), "eyJ.token-4");
  clock_.Advance(seconds(1));
  EXPECT_EQ(*source->Token(false), "eyJ.token-5");
}

TEST_F(ClientCredentialsTest, WithoutExpiresInTheTokenIsKeptUntilRefused) {
  endpoint_.include_expires_in = false;
  auto source = Source(Config());
  ASSERT_EQ(*source->Token(false), "eyJ.token-1");
  clock_.Advance(seconds(100'000));
  EXPECT_EQ(*source->Token(false), "eyJ.token-1");
  EXPECT_EQ(*source->Token(true), "eyJ.token-2");

  ClientCredentialsConfig c = Config();
  c.lifetime_without_expires_in = seconds(600);
  auto bounded = Source(c);
  ASSERT_EQ(*bounded->Token(false), "eyJ.token-3");
  clock_.Advance(seconds(301));  // 600 - min(300, 600 / 2)
  EXPECT_EQ(*bounded->Token(false), "eyJ.token-4");
}

TEST_F(ClientCredentialsTest, RefusedCredentialsAreUnauthenticatedWithoutTheSecret) {
  ClientCredentialsConfig c = Config();
  c.client_secret = "wrong-secret";
  auto source = Source(c);
  absl::StatusOr<std::string> token = source->Token(false);
  ASSERT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated) << token.status();
  EXPECT_THAT(token.status().message(), HasSubstr("HTTP 401"));
  EXPECT_THAT(token.status().message(), HasSubstr("invalid_client: Client authentication failed"));
  EXPECT_THAT(token.status().message(), HasSubstr("sp-client-id"));
  EXPECT_THAT(token.status().message(), HasSubstr("Check client_id and client_secret"));
  EXPECT_THAT(token.status().message(), Not(HasSubstr("wrong-secret")));
  EXPECT_EQ(endpoint_.Requests().size(), 1u);  // not retried

  c = Config();
  c.scope = "sql";
  token = Source(c)->Token(false);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(token.status().message(), HasSubstr("invalid_scope"));
  EXPECT_THAT(token.status().message(), HasSubstr("the scope \"sql\" was refused"));
}

TEST_F(ClientCredentialsTest, ServerErrorsAreRetriedWithBackoffOnTheClock) {
  endpoint_.Script(TestResponse::Json(503, R"({"error":"temporarily_unavailable"})"));
  endpoint_.Script(TestResponse::Json(429, "{}"));
  auto source = Source(Config());
  absl::StatusOr<std::string> token = source->Token(false);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(endpoint_.Requests().size(), 3u);
  EXPECT_GT(clock_.total_slept(), std::chrono::nanoseconds(0));

  for (int i = 0; i < 3; ++i) endpoint_.Script(TestResponse::Json(502, "bad gateway"));
  token = source->Token(true);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(token.status().message(), HasSubstr("HTTP 502 after 3 attempts"));
  // Not cached: the next call tries again.
  EXPECT_TRUE(source->Token(false).ok());
}

TEST_F(ClientCredentialsTest, WrongTokenUrlIsAConfigurationError) {
  ClientCredentialsConfig c = Config();
  c.token_url = endpoint_.Url() + "/nope";
  absl::StatusOr<std::string> token = Source(c)->Token(false);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(token.status().message(), HasSubstr("HTTP 404"));

  endpoint_.Script(TestResponse::Json(200, R"({"token_type":"Bearer"})"));
  token = Source(Config())->Token(false);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(token.status().message(), HasSubstr("without an access_token"));

  c = Config();
  c.token_url = "http://127.0.0.1:1/oidc/v1/token";
  c.max_retries = 0;
  token = Source(c)->Token(false);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(token.status().message(), HasSubstr("could not reach Databricks's token endpoint"));
}

TEST_F(ClientCredentialsTest, MissingSettingsAreRefusedAtCreation) {
  for (auto clear : {+[](ClientCredentialsConfig& c) { c.token_url.clear(); },
                     +[](ClientCredentialsConfig& c) { c.client_id.clear(); },
                     +[](ClientCredentialsConfig& c) { c.client_secret.clear(); }}) {
    ClientCredentialsConfig c = Config();
    clear(c);
    EXPECT_EQ(ClientCredentialsTokenSource::Create(c, http_.get(), &clock_).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(ClientCredentialsTest, ConcurrentCallersShareOneGrant) {
  auto source = Source(Config());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      absl::StatusOr<std::string> t = source->Token(false);
      if (t.ok() && *t == "eyJ.token-1") ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8);
  EXPECT_EQ(endpoint_.issued(), 1);
}

}  // namespace
}  // namespace backflow
