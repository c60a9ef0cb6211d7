#include "backflow/delivery/jwt_bearer.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/common/url.h"
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

// One 2048-bit key pair for the whole test binary (generation is slow).
const RsaKeyPair& TestKeys() {
  static const RsaKeyPair* keys = [] {
    absl::StatusOr<RsaKeyPair> k = GenerateRsaKeyPair();
    EXPECT_TRUE(k.ok()) << k.status();
    return new RsaKeyPair(*k);
  }();
  return *keys;
}

std::string WritePem(EVP_PKEY* pkey, bool traditional) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (traditional) {
    PEM_write_bio_PrivateKey_traditional(bio, pkey, nullptr, nullptr, 0, nullptr, nullptr);
  } else {
    PEM_write_bio_PKCS8PrivateKey(bio, pkey, nullptr, nullptr, 0, nullptr, nullptr);
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);  // NOLINT(runtime/int)
  std::string out(data, static_cast<size_t>(len));
  BIO_free(bio);
  return out;
}

// Decodes an application/x-www-form-urlencoded body.
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
  while (pos <= body.size()) {
    size_t amp = body.find('&', pos);
    if (amp == std::string::npos) amp = body.size();
    std::string_view pair(body.data() + pos, amp - pos);
    size_t eq = pair.find('=');
    if (eq != std::string_view::npos) out[decode(pair.substr(0, eq))] = decode(pair.substr(eq + 1));
    pos = amp + 1;
  }
  return out;
}

TEST(JwtEncodingTest, Base64UrlRoundTripsWithoutPadding) {
  std::string bytes = "\xfb\xff\xfe?>~";
  std::string enc = Base64UrlEncode(bytes);
  EXPECT_EQ(enc, "-__-Pz5-");
  EXPECT_EQ(Base64UrlEncode("ab"), "YWI");
  ASSERT_TRUE(Base64UrlDecode(enc).ok());
  EXPECT_EQ(*Base64UrlDecode(enc), bytes);
  EXPECT_EQ(*Base64UrlDecode("YWI"), "ab");
  EXPECT_FALSE(Base64UrlDecode("+/==").ok());
  EXPECT_EQ(FormUrlEncode("a b+c/d=e&f~g.h_i-j"), "a+b%2Bc%2Fd%3De%26f~g.h_i-j");
  EXPECT_EQ(FormUrlEncode(kJwtBearerGrantType),
            "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer");
}

TEST(Rs256Test, SignsAndVerifiesWithTheGeneratedKey) {
  auto priv = Rs256Key::FromPrivateKeyPem(TestKeys().private_key_pem);
  ASSERT_TRUE(priv.ok()) << priv.status();
  auto pub = Rs256Key::FromPublicKeyPem(TestKeys().public_key_pem);
  ASSERT_TRUE(pub.ok()) << pub.status();
  EXPECT_TRUE((*priv)->has_private_key());
  EXPECT_FALSE((*pub)->has_private_key());
  EXPECT_EQ((*priv)->PublicKeyPem(), TestKeys().public_key_pem);

  json claims = {{"iss", "svc@p.iam.gserviceaccount.com"}, {"aud", "https://x/token"}};
  absl::StatusOr<std::string> jwt = SignJwtRs256(**priv, "kid-1", claims);
  ASSERT_TRUE(jwt.ok()) << jwt.status();
  EXPECT_EQ(std::count(jwt->begin(), jwt->end(), '.'), 2);
  EXPECT_EQ(jwt->find_first_of("+/="), std::string::npos);

  absl::StatusOr<DecodedJwt> decoded = VerifyJwtRs256(*jwt, **pub);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->header, json({{"alg", "RS256"}, {"typ", "JWT"}, {"kid", "kid-1"}}));
  EXPECT_EQ(decoded->claims, claims);
  // The signature is PKCS#1 v1.5 over the first two parts: 256 bytes for 2048 bits.
  EXPECT_EQ(Base64UrlDecode(jwt->substr(jwt->rfind('.') + 1))->size(), 256u);

  // Without a key id there is no kid.
  absl::StatusOr<std::string> no_kid = SignJwtRs256(**priv, "", claims);
  ASSERT_TRUE(no_kid.ok());
  EXPECT_FALSE(DecodeJwt(*no_kid)->header.contains("kid"));

  // Tampered claims, a wrong key and a wrong alg are refused.
  std::string tampered = *jwt;
  size_t dot = tampered.find('.');
  std::string other_claims = Base64UrlEncode(R"({"iss":"evil","aud":"https://x/token"})");
  tampered.replace(dot + 1, tampered.find('.', dot + 1) - dot - 1, other_claims);
  EXPECT_EQ(VerifyJwtRs256(tampered, **pub).status().code(), absl::StatusCode::kUnauthenticated);
  absl::StatusOr<RsaKeyPair> other = GenerateRsaKeyPair();
  ASSERT_TRUE(other.ok());
  auto other_pub = Rs256Key::FromPublicKeyPem(other->public_key_pem);
  ASSERT_TRUE(other_pub.ok());
  EXPECT_EQ(VerifyJwtRs256(*jwt, **other_pub).status().code(), absl::StatusCode::kUnauthenticated);
  std::string none_alg = Base64UrlEncode(R"({"alg":"none"})") + jwt->substr(jwt->find('.'));
  EXPECT_EQ(VerifyJwtRs256(none_alg, **pub).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyJwtRs256("a.b", **pub).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeJwt("e30.!!!.x").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Rs256Test, AcceptsPkcs1AndEscapedNewlines) {
  auto pkcs8 = Rs256Key::FromPrivateKeyPem(TestKeys().private_key_pem);
  ASSERT_TRUE(pkcs8.ok());
  // Re-export the same key as PKCS#1 ("BEGIN RSA PRIVATE KEY").
  BIO* bio = BIO_new_mem_buf(TestKeys().private_key_pem.data(),
                             static_cast<int>(TestKeys().private_key_pem.size()));
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(pkey, nullptr);
  std::string pkcs1 = WritePem(pkey, /*traditional=*/true);
  EVP_PKEY_free(pkey);
  EXPECT_THAT(pkcs1, HasSubstr("BEGIN RSA PRIVATE KEY"));
  auto key1 = Rs256Key::FromPrivateKeyPem(pkcs1);
  ASSERT_TRUE(key1.ok()) << key1.status();
  EXPECT_EQ((*key1)->PublicKeyPem(), TestKeys().public_key_pem);

  // As pasted from a key file's JSON string: literal backslash-n.
  std::string escaped;
  for (char c : TestKeys().private_key_pem)
    escaped += c == '\n' ? std::string("\\n") : std::string(1, c);
  auto key2 = Rs256Key::FromPrivateKeyPem(escaped);
  ASSERT_TRUE(key2.ok()) << key2.status();
}

TEST(Rs256Test, RefusesBadAndUnsupportedKeys) {
  auto expect_invalid = [](std::string_view pem, std::string_view words) {
    absl::StatusOr<std::unique_ptr<Rs256Key>> k = Rs256Key::FromPrivateKeyPem(pem);
    ASSERT_FALSE(k.ok());
    EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument) << k.status();
    EXPECT_THAT(std::string(k.status().message()), HasSubstr(words));
  };
  expect_invalid("", "not PEM");
  expect_invalid("my-secret-key", "not PEM");
  expect_invalid("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                 "could not be read");
  std::string truncated = TestKeys().private_key_pem.substr(0, 200);
  expect_invalid(truncated, "could not be read");
  expect_invalid(
      "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
      "encrypted");

  EVP_PKEY* ec = EVP_EC_gen("P-256");
  ASSERT_NE(ec, nullptr);
  expect_invalid(WritePem(ec, false), "not an RSA key");
  EVP_PKEY_free(ec);

  EVP_PKEY* small = EVP_RSA_gen(1024);
  ASSERT_NE(small, nullptr);
  expect_invalid(WritePem(small, false), "1024 bits");
  EVP_PKEY_free(small);

  EXPECT_EQ(Rs256Key::FromPublicKeyPem("nope").status().code(), absl::StatusCode::kInvalidArgument);

  JwtBearerConfig config;
  config.token_url = "http://127.0.0.1:1/token";
  config.issuer = "svc";
  config.private_key_pem = "garbage";
  FakeClock clock;
  auto http = NewCurlHttpClient();
  EXPECT_EQ(JwtBearerTokenSource::Create(config, http.get(), &clock).status().code(),
            absl::StatusCode::kInvalidArgument);
  config.private_key_pem = TestKeys().private_key_pem;
  config.issuer = "";
  EXPECT_EQ(JwtBearerTokenSource::Create(config, http.get(), &clock).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A loopback token endpoint that checks the grant the way Google does.
class TokenEndpoint {
 public:
  explicit TokenEndpoint(Clock* clock)
      : clock_(clock), server_([this](const TestRequest& r) { return Handle(r); }) {
    auto key = Rs256Key::FromPublicKeyPem(TestKeys().public_key_pem);
    EXPECT_TRUE(key.ok());
    key_ = *std::move(key);
    EXPECT_TRUE(server_.Start().ok());
  }

  std::string Url() const { return server_.Url("/token"); }

  // Statuses to answer (before checking anything) for the next requests.
  void Script(std::vector<int> statuses) {
    std::lock_guard<std::mutex> lock(mu_);
    script_ = std::move(statuses);
  }
  void SetExpiresIn(std::optional<int> s) {
    std::lock_guard<std::mutex> lock(mu_);
    expires_in_ = s;
  }
  int requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  int issued() const {
    std::lock_guard<std::mutex> lock(mu_);
    return issued_;
  }
  json last_claims() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_claims_;
  }

 private:
  TestResponse Handle(const TestRequest& r) {
    std::lock_guard<std::mutex> lock(mu_);
    ++requests_;
    if (!script_.empty()) {
      int status = script_.front();
      script_.erase(script_.begin());
      if (status == 0) return TestResponse::Reset();
      return TestResponse::Json(status, R"({"error":"backend_error"})");
    }
    auto invalid = [](const std::string& error, const std::string& description) {
      return TestResponse::Json(400,
                                json{{"error", error}, {"error_description", description}}.dump());
    };
    if (r.method != "POST" || r.target != "/token") return TestResponse::Json(404, "{}");
    if (r.Header("content-type") != "application/x-www-form-urlencoded") {
      return invalid("invalid_request", "expected a form-encoded body");
    }
    std::map<std::string, std::string> form = ParseForm(r.body);
    if (form["grant_type"] != kJwtBearerGrantType) {
      return invalid("unsupported_grant_type", "Invalid grant_type: " + form["grant_type"]);
    }
    absl::StatusOr<DecodedJwt> jwt = VerifyJwtRs256(form["assertion"], *key_);
    if (!jwt.ok()) return invalid("invalid_grant", std::string(jwt.status().message()));
    int64_t now = std::chrono::duration_cast<seconds>(clock_->Now().time_since_epoch()).count();
    const json& c = jwt->claims;
    if (c.value("aud", "") != Url()) return invalid("invalid_grant", "Invalid JWT: audience");
    if (!c.contains("exp") || c["exp"].get<int64_t>() <= now ||
        c["exp"].get<int64_t>() - c["iat"].get<int64_t>() > 3600) {
      return invalid("invalid_grant", "Invalid JWT: Token must be a short-lived token");
    }
    if (c.value("iss", "") == "revoked@p.iam.gserviceaccount.com") {
      return invalid("invalid_grant", "Invalid JWT Signature.");
    }
    last_claims_ = c;
    ++issued_;
    json reply = {{"access_token", fmt::format("tok-{}", issued_)}, {"token_type", "Bearer"}};
    if (expires_in_) reply["expires_in"] = *expires_in_;
    return TestResponse::Json(200, reply.dump());
  }

  Clock* clock_;
  std::unique_ptr<Rs256Key> key_;
  mutable std::mutex mu_;
  std::vector<int> script_;
  std::optional<int> expires_in_ = 3599;
  int requests_ = 0;
  int issued_ = 0;
  json last_claims_;
  HttpTestServer server_;
};

class JwtBearerTokenSourceTest : public ::testing::Test {
 protected:
  JwtBearerConfig Config() {
    JwtBearerConfig c;
    c.vendor = "Google";
    c.token_url = endpoint_.Url();
    c.private_key_pem = TestKeys().private_key_pem;
    c.key_id = "k-123";
    c.issuer = "svc@p.iam.gserviceaccount.com";
    c.scope = "https://www.googleapis.com/auth/spreadsheets";
    c.hint = "Check the service account key.";
    return c;
  }

  std::unique_ptr<JwtBearerTokenSource> Source(JwtBearerConfig c) {
    auto s = JwtBearerTokenSource::Create(std::move(c), http_.get(), &clock_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  FakeClock clock_;
  TokenEndpoint endpoint_{&clock_};
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

TEST_F(JwtBearerTokenSourceTest, AssertionCarriesTheConfiguredClaims) {
  JwtBearerConfig c = Config();
  c.subject = "admin@example.com";
  c.assertion_lifetime = seconds(180);
  auto source = Source(c);
  absl::StatusOr<std::string> jwt = source->MintAssertion();
  ASSERT_TRUE(jwt.ok());
  auto pub = Rs256Key::FromPublicKeyPem(TestKeys().public_key_pem);
  absl::StatusOr<DecodedJwt> d = VerifyJwtRs256(*jwt, **pub);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->header, json({{"alg", "RS256"}, {"typ", "JWT"}, {"kid", "k-123"}}));
  const int64_t now = 1'700'000'000;  // FakeClock's start, in epoch seconds (not ms)
  EXPECT_EQ(d->claims, json({{"iss", "svc@p.iam.gserviceaccount.com"},
                             {"sub", "admin@example.com"},
                             {"aud", endpoint_.Url()},
                             {"scope", "https://www.googleapis.com/auth/spreadsheets"},
                             {"iat", now},
                             {"exp", now + 180}}));
  // Salesforce-style: explicit audience, no scope, no kid.
  c = Config();
  c.audience = "https://login.salesforce.com";
  c.scope = "";
  c.key_id = "";
  source = Source(c);
  d = DecodeJwt(*source->MintAssertion());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->claims["aud"], "https://login.salesforce.com");
  EXPECT_FALSE(d->claims.contains("scope"));
  EXPECT_FALSE(d->claims.contains("sub"));
  EXPECT_FALSE(d->header.contains("kid"));
}

TEST_F(JwtBearerTokenSourceTest, CachesUntilShortlyBeforeExpiryThenReMints) {
  auto source = Source(Config());
  absl::StatusOr<std::string> t1 = source->Token(false);
  ASSERT_TRUE(t1.ok()) << t1.status();
  EXPECT_EQ(*t1, "tok-1");
  EXPECT_EQ(endpoint_.last_claims()["iss"], "svc@p.iam.gserviceaccount.com");
  EXPECT_EQ(*source->Token(false), "tok-1");
  EXPECT_EQ(source->LastTokenResponse()["token_type"], "Bearer");
  clock_.Advance(seconds(3500));  // 3599 - 60 s margin not reached yet
  EXPECT_EQ(*source->Token(false), "tok-1");
  EXPECT_EQ(endpoint_.issued(), 1);
  clock_.Advance(seconds(40));  // past expires_in - margin: a fresh assertion is minted
  EXPECT_EQ(*source->Token(false), "tok-2");
  EXPECT_EQ(endpoint_.issued(), 2);
  // The new assertion is dated by the clock.
  EXPECT_EQ(endpoint_.last_claims()["iat"], 1'700'000'000 + 3540);
  EXPECT_EQ(source->mint_count(), 2);
}

TEST_F(JwtBearerTokenSourceTest, RefreshAlwaysMintsANewToken) {
  auto source = Source(Config());
  EXPECT_EQ(*source->Token(false), "tok-1");
  EXPECT_EQ(*source->Token(true), "tok-2");
  EXPECT_EQ(*source->Token(false), "tok-2");
  EXPECT_EQ(endpoint_.issued(), 2);
}

TEST_F(JwtBearerTokenSourceTest, WithoutExpiresInTheTokenIsKeptUntilRefreshed) {
  endpoint_.SetExpiresIn(std::nullopt);
  auto source = Source(Config());
  EXPECT_EQ(*source->Token(false), "tok-1");
  clock_.Advance(std::chrono::hours(24));
  EXPECT_EQ(*source->Token(false), "tok-1");
  EXPECT_EQ(*source->Token(true), "tok-2");

  JwtBearerConfig c = Config();
  c.lifetime_without_expires_in = seconds(600);
  source = Source(c);
  EXPECT_EQ(*source->Token(false), "tok-3");
  clock_.Advance(seconds(600));
  EXPECT_EQ(*source->Token(false), "tok-4");
}

TEST_F(JwtBearerTokenSourceTest, RefusedGrantIsUnauthenticatedWithTheVendorsWords) {
  JwtBearerConfig c = Config();
  c.issuer = "revoked@p.iam.gserviceaccount.com";
  auto source = Source(c);
  absl::StatusOr<std::string> t = source->Token(false);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnauthenticated);
  std::string m(t.status().message());
  EXPECT_THAT(m, HasSubstr("Google refused the JWT bearer grant (HTTP 400"));
  EXPECT_THAT(m, HasSubstr("invalid_grant: Invalid JWT Signature."));
  EXPECT_THAT(m, HasSubstr("not deleted or rotated"));
  EXPECT_THAT(m, HasSubstr("Check the service account key."));
  EXPECT_EQ(endpoint_.requests(), 1);  // a refusal is not retried

  // A key the endpoint does not know (signature check fails at the endpoint).
  absl::StatusOr<RsaKeyPair> other = GenerateRsaKeyPair();
  ASSERT_TRUE(other.ok());
  c = Config();
  c.private_key_pem = other->private_key_pem;
  source = Source(c);
  t = source->Token(false);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("Invalid JWT Signature."));

  // An assertion valid for longer than the endpoint allows.
  c = Config();
  c.assertion_lifetime = seconds(7200);
  source = Source(c);
  t = source->Token(false);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("short-lived"));
  EXPECT_EQ(endpoint_.issued(), 0);
}

TEST_F(JwtBearerTokenSourceTest, ServerErrorsAreRetriedWithBackoffOnTheClock) {
  endpoint_.Script({503, 0});  // a 503, then a reset connection
  auto source = Source(Config());
  absl::StatusOr<std::string> t = source->Token(false);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "tok-1");
  EXPECT_EQ(endpoint_.requests(), 3);
  EXPECT_LE(clock_.total_slept(), std::chrono::milliseconds(500 + 1000));

  // Still failing after max_retries: kUnavailable, and the failure is not cached.
  endpoint_.Script({500, 502, 503});
  t = source->Token(true);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("after 3 attempts"));
  EXPECT_EQ(*source->Token(false), "tok-2");
}

TEST_F(JwtBearerTokenSourceTest, WrongTokenUrlIsAConfigurationError) {
  JwtBearerConfig c = Config();
  c.token_url = endpoint_.Url() + "/nope";
  c.audience = endpoint_.Url();
  auto source = Source(c);
  absl::StatusOr<std::string> t = source->Token(false);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("check token_url"));

  c.token_url = "http://127.0.0.1:1/token";
  c.max_retries = 1;
  source = Source(c);
  t = source->Token(false);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("could not reach Google's token"));
  EXPECT_THAT(std::string(t.status().message()), Not(HasSubstr("PRIVATE KEY")));
}

TEST_F(JwtBearerTokenSourceTest, ConcurrentCallersShareOneMint) {
  auto source = Source(Config());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < 20; ++j) {
        absl::StatusOr<std::string> t = source->Token(false);
        if (t.ok() && *t == "tok-1") ok.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 160);
  EXPECT_EQ(endpoint_.issued(), 1);
}

}  // namespace
}  // namespace backflow
