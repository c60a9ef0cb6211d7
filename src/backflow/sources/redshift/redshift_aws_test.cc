// Temporary database passwords for auth: iam, against the fake AWS endpoint
// (which recomputes every SigV4 signature), and the AWS error parsing.
#include "backflow/sources/redshift/redshift_aws.h"

#include <gtest/gtest.h>

#include "backflow/common/clock.h"
#include "backflow/sources/redshift/fake_redshift_aws_server.h"
#include "backflow/sources/redshift/redshift_source.h"

namespace backflow {
namespace {

using json = nlohmann::json;

class RedshiftIamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeRedshiftAwsOptions options;
    options.clock = &clock_;
    options.session_token = "FQoGZXIvYXdzEXAMPLE";
    fake_ = std::make_unique<FakeRedshiftAwsServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    http_ = NewCurlHttpClient();
  }

  RedshiftIamConfig Config() {
    RedshiftIamConfig c;
    c.credentials = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                     "FQoGZXIvYXdzEXAMPLE"};
    c.region = "us-east-1";
    c.aws_endpoint = fake_->Url();
    c.cluster_identifier = "examplecluster";
    c.db_user = "analytics";
    c.db_name = "dev";
    c.retry.max_retries = 3;
    c.retry.base_backoff = std::chrono::milliseconds(100);
    return c;
  }

  FakeClock clock_;
  std::unique_ptr<FakeRedshiftAwsServer> fake_;
  std::unique_ptr<HttpClient> http_;
};

TEST_F(RedshiftIamTest, GetsAndCachesClusterCredentials) {
  RedshiftIamCredentials creds(Config(), http_.get(), &clock_);
  absl::StatusOr<RedshiftDbCredentials> c = creds.Get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->user, "IAM:analytics");
  EXPECT_EQ(c->password, "temporary-password-123");
  EXPECT_EQ(c->expiration, clock_.Now() + std::chrono::seconds(900));
  auto requests = fake_->CredentialRequests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0]["Action"], "GetClusterCredentials");
  EXPECT_EQ(requests[0]["Version"], "2012-12-01");
  EXPECT_EQ(requests[0]["ClusterIdentifier"], "examplecluster");
  EXPECT_EQ(requests[0]["DbUser"], "analytics");
  EXPECT_EQ(requests[0]["DbName"], "dev");
  EXPECT_EQ(requests[0]["DurationSeconds"], "900");

  // Cached until a minute before the expiration, then fetched again.
  clock_.Advance(std::chrono::seconds(800));
  ASSERT_TRUE(creds.Get().ok());
  EXPECT_EQ(fake_->Calls("GetClusterCredentials"), 1);
  clock_.Advance(std::chrono::seconds(50));
  ASSERT_TRUE(creds.Get().ok());
  EXPECT_EQ(fake_->Calls("GetClusterCredentials"), 2);
  ASSERT_TRUE(creds.Refresh().ok());
  EXPECT_EQ(fake_->Calls("GetClusterCredentials"), 3);
}

TEST_F(RedshiftIamTest, ServerlessGetCredentials) {
  RedshiftIamConfig c = Config();
  c.cluster_identifier.clear();
  c.workgroup_name = "retl-wg";
  c.duration_s = 3600;
  RedshiftIamCredentials creds(c, http_.get(), &clock_);
  absl::StatusOr<RedshiftDbCredentials> got = creds.Get();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->user, "IAM:fake-user");
  EXPECT_EQ(got->password, "temporary-password-123");
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::seconds>(got->expiration - clock_.Now()),
            std::chrono::seconds(3600));
  EXPECT_EQ(fake_->Calls("GetCredentials"), 1);
}

TEST_F(RedshiftIamTest, WrongSecretIsAConfigurationErrorNamingTheKeys) {
  RedshiftIamConfig c = Config();
  c.credentials.secret_access_key = "not-the-secret";
  RedshiftIamCredentials creds(c, http_.get(), &clock_);
  absl::StatusOr<RedshiftDbCredentials> got = creds.Get();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(got.status().message().find("SignatureDoesNotMatch"), std::string::npos);
  EXPECT_NE(got.status().message().find("secret_access_key"), std::string::npos);
  EXPECT_EQ(got.status().message().find("not-the-secret"), std::string::npos);
  EXPECT_EQ(fake_->auth_refusals(), 1);  // not retried

  c = Config();
  c.credentials.access_key_id = "AKIDUNKNOWN";
  RedshiftIamCredentials unknown(c, http_.get(), &clock_);
  got = unknown.Get();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(got.status().message().find("InvalidClientTokenId"), std::string::npos);
}

TEST_F(RedshiftIamTest, ExpiredSessionTokenNamesTheToken) {
  fake_->ExpireSessionToken();
  RedshiftIamCredentials creds(Config(), http_.get(), &clock_);
  absl::StatusOr<RedshiftDbCredentials> got = creds.Get();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(got.status().message().find("ExpiredToken"), std::string::npos);
  EXPECT_NE(got.status().message().find("session_token"), std::string::npos);
  EXPECT_EQ(got.status().message().find("FQoGZXIvYXdzEXAMPLE"), std::string::npos);
}

TEST_F(RedshiftIamTest, ThrottledThenOk) {
  fake_->InjectError({"GetClusterCredentials", 2, 400, "Throttling", "Rate exceeded"});
  RedshiftIamCredentials creds(Config(), http_.get(), &clock_);
  Clock::Duration slept = clock_.total_slept();
  absl::StatusOr<RedshiftDbCredentials> got = creds.Get();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(fake_->Calls("GetClusterCredentials"), 3);
  EXPECT_GT(clock_.total_slept(), slept);  // backed off on the injected clock
}

TEST_F(RedshiftIamTest, ThrottledBeyondRetriesIsRateLimited) {
  fake_->InjectError({"GetClusterCredentials", 10, 400, "Throttling", "Rate exceeded"});
  RedshiftIamCredentials creds(Config(), http_.get(), &clock_);
  absl::StatusOr<RedshiftDbCredentials> got = creds.Get();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(fake_->Calls("GetClusterCredentials"), 4);
}

TEST_F(RedshiftIamTest, ServerErrorsAreTransient) {
  fake_->InjectError({"GetClusterCredentials", 10, 503, "ServiceUnavailable", "try later"});
  RedshiftIamCredentials creds(Config(), http_.get(), &clock_);
  absl::StatusOr<RedshiftDbCredentials> got = creds.Get();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(RedshiftIamTest, UnknownClusterNamesTheSetting) {
  RedshiftIamConfig c = Config();
  c.cluster_identifier = "nosuchcluster";
  RedshiftIamCredentials creds(c, http_.get(), &clock_);
  absl::StatusOr<RedshiftDbCredentials> got = creds.Get();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(got.status().message().find("cluster_identifier"), std::string::npos);
  EXPECT_NE(got.status().message().find("ClusterNotFound"), std::string::npos);
}

TEST_F(RedshiftIamTest, AccessDeniedNamesTheAction) {
  fake_->InjectError({"GetClusterCredentials", 1, 403, "AccessDenied",
                      "User is not authorized to perform redshift:GetClusterCredentials"});
  RedshiftIamCredentials creds(Config(), http_.get(), &clock_);
  absl::StatusOr<RedshiftDbCredentials> got = creds.Get();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(got.status().message().find("redshift:GetClusterCredentials"), std::string::npos);
}

TEST(RedshiftAwsTest, ParsesErrorsAndTimestamps) {
  HttpResponse xml;
  xml.status = 404;
  xml.body =
      "<ErrorResponse><Error><Type>Sender</Type><Code>ClusterNotFound</Code><Message>Cluster "
      "a &amp; b not found.</Message></Error></ErrorResponse>";
  AwsErrorReply e = ParseAwsError(xml);
  EXPECT_EQ(e.code, "ClusterNotFound");
  EXPECT_EQ(e.message, "Cluster a & b not found.");
  EXPECT_FALSE(AwsRetryableReply(xml));

  HttpResponse js;
  js.status = 400;
  js.body = R"({"__type":"com.amazonaws.redshiftdata#ThrottlingException","Message":"slow"})";
  e = ParseAwsError(js);
  EXPECT_EQ(e.code, "ThrottlingException");
  EXPECT_EQ(e.message, "slow");
  EXPECT_TRUE(AwsRetryableReply(js));

  HttpResponse active;
  active.status = 400;
  active.body = R"({"__type":"ActiveStatementsExceededException","message":"too many"})";
  EXPECT_TRUE(AwsRetryableReply(active));
  HttpResponse invalid;
  invalid.status = 400;
  invalid.body = R"({"__type":"ValidationException","message":"bad"})";
  EXPECT_FALSE(AwsRetryableReply(invalid));
  HttpResponse internal;
  internal.status = 500;
  internal.body = R"({"__type":"InternalServerException","message":"oops"})";
  EXPECT_TRUE(AwsRetryableReply(internal));

  EXPECT_EQ(ParseAwsTimestamp("1970-01-02T00:00:01Z"),
            Clock::TimePoint(std::chrono::seconds(86401)));
  EXPECT_EQ(ParseAwsTimestamp("1970-01-01T00:00:00.250Z"),
            Clock::TimePoint(std::chrono::milliseconds(250)));
  EXPECT_EQ(ParseAwsTimestamp("2024-06-01"), std::nullopt);

  EXPECT_EQ(RegionFromRedshiftHost("examplecluster.abc123xyz789.us-east-1.redshift.amazonaws.com"),
            "us-east-1");
  EXPECT_EQ(RegionFromRedshiftHost("wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com"),
            "eu-west-1");
  EXPECT_EQ(RegionFromRedshiftHost("127.0.0.1"), "");
}

TEST(RedshiftAwsTest, IamSettings) {
  json s = {
      {"url", "postgresql://analytics@examplecluster.abc.eu-west-1.redshift.amazonaws.com/dev"},
      {"auth", "iam"},
      {"access_key_id", "AKIDEXAMPLE"},
      {"secret_access_key", "secret"},
      {"cluster_identifier", "examplecluster"}};
  absl::StatusOr<RedshiftConfig> c = ParseRedshiftSettings(s);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->auth, RedshiftAuth::kIam);
  EXPECT_EQ(c->iam.region, "eu-west-1");
  EXPECT_EQ(c->iam.db_user, "analytics");
  EXPECT_EQ(c->iam.db_name, "dev");

  json both = s;
  both["workgroup_name"] = "wg";
  EXPECT_EQ(ParseRedshiftSettings(both).status().code(), absl::StatusCode::kInvalidArgument);
  json no_key = s;
  no_key.erase("secret_access_key");
  absl::Status missing = ParseRedshiftSettings(no_key).status();
  EXPECT_NE(missing.message().find("secret_access_key"), std::string::npos);
  json no_user = s;
  no_user["url"] = "postgresql://examplecluster.abc.eu-west-1.redshift.amazonaws.com/dev";
  EXPECT_NE(ParseRedshiftSettings(no_user).status().message().find("url"), std::string::npos);
  json no_region = s;
  no_region["url"] = "postgresql://analytics@127.0.0.1:5439/dev";
  EXPECT_NE(ParseRedshiftSettings(no_region).status().message().find("region"), std::string::npos);
}

}  // namespace
}  // namespace backflow
