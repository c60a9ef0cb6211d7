// The AWS side of the Redshift sources (../shared/reference/warehouses.md
// §4): AWS credential settings, AWS error replies and their retry classes,
// and temporary database passwords for IAM authentication.
//
// Temporary database credentials (RedshiftIamCredentials), SigV4-signed
// with the configured access key (common/aws_sigv4.h):
//   provisioned cluster (`cluster_identifier`): redshift:GetClusterCredentials,
//     AWS Query protocol: POST https://redshift.<region>.amazonaws.com/
//     (Content-Type application/x-www-form-urlencoded; charset=utf-8) with
//     Action=GetClusterCredentials&Version=2012-12-01&ClusterIdentifier=..&
//     DbUser=..[&DbName=..]&DurationSeconds=..[&AutoCreate=true], SigV4
//     service "redshift". The reply is XML:
//     <GetClusterCredentialsResponse><GetClusterCredentialsResult>
//     <DbUser>IAM:analytics</DbUser><DbPassword>..</DbPassword>
//     <Expiration>2024-06-01T12:15:00Z</Expiration>...; errors are
//     <ErrorResponse><Error><Code>..</Code><Message>..</Message>.
//   serverless workgroup (`workgroup_name`): redshift-serverless:GetCredentials,
//     AWS JSON 1.1: POST https://redshift-serverless.<region>.amazonaws.com/
//     with X-Amz-Target RedshiftServerless.GetCredentials and
//     {"workgroupName","dbName"?,"durationSeconds"} → {"dbUser","dbPassword",
//     "expiration" (epoch seconds)}; SigV4 service "redshift-serverless".
//   `aws_endpoint` replaces the https://<service>.<region>.amazonaws.com
//   part (private endpoints, tests). A password is reused until one minute
//   before it expires; Refresh() forces a new one.
//
// Errors (AwsFailure): throttling (Throttling, ThrottlingException,
// TooManyRequestsException, RequestLimitExceeded, 429),
// ActiveStatementsExceeded/ActiveSessionsExceeded and 5xx are retried with
// backoff on the injected Clock (HttpDelivery), then kResourceExhausted
// (throttling) or kUnavailable (server errors). InvalidClientTokenId,
// UnrecognizedClientException, SignatureDoesNotMatch,
// InvalidSignatureException, IncompleteSignature,
// MissingAuthenticationToken -> kUnauthenticated naming access_key_id /
// secret_access_key; ExpiredToken(Exception) -> kUnauthenticated naming
// session_token; AccessDenied(Exception) -> kPermissionDenied naming the
// IAM action; ClusterNotFound / ResourceNotFoundException (on credentials)
// -> kFailedPrecondition naming cluster_identifier / workgroup_name and the
// region; other 4xx -> kFailedPrecondition quoting AWS. Transport errors ->
// kUnavailable / kDeadlineExceeded naming the endpoint. Messages never
// contain the secret key, the session token or a database password.
//
// Thread-safety: RedshiftIamCredentials is thread-safe. The HttpClient and
// Clock must outlive it.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/common/aws_sigv4.h"
#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/http_delivery.h"
#include "nlohmann/json.hpp"

namespace backflow {

inline constexpr char kRedshiftApiVersion[] = "2012-12-01";

// access_key_id, secret_access_key, session_token and region, described for
// `purpose` ("to request temporary database passwords").
std::vector<SettingSpec> AwsCredentialSettingSpecs(std::string_view purpose);

// Reads those settings; kInvalidArgument naming the setting when
// access_key_id or secret_access_key is missing, or a region that is not
// like "us-east-1".
absl::StatusOr<AwsCredentials> ParseAwsCredentialSettings(const nlohmann::json& settings);
absl::Status CheckAwsRegion(const std::string& region);

// The region in a Redshift endpoint host
// ("examplecluster.abc123.us-east-1.redshift.amazonaws.com",
// "wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com"); empty
// when the host is not one.
std::string RegionFromRedshiftHost(std::string_view host);

// An AWS error reply: `code` from the JSON "__type" (the part after '#')
// or the x-amzn-ErrorType header, or the XML <Code>; `message` from
// "message"/"Message" or <Message>.
struct AwsErrorReply {
  int status = 0;
  std::string code;
  std::string message;

  // "ValidationException: <message>" (or the body's start when unparsed).
  std::string Said() const;
};
AwsErrorReply ParseAwsError(const HttpResponse& response);

// Whether a reply should be retried (see the header comment).
bool AwsRetryableReply(const HttpResponse& response);

// What a failed AWS call (already retried) means. `what` says what was
// being done ("request a temporary password for cluster x"); `action` is
// the IAM action to name when access is denied ("redshift:GetClusterCredentials");
// `not_found` is the message for ClusterNotFound/ResourceNotFound, empty
// to classify those like other 4xx replies.
absl::Status AwsFailure(const DeliveryResult& result, std::string_view endpoint,
                        std::string_view what, std::string_view action, std::string_view not_found);

// "https://<service>.<region>.amazonaws.com", or `override_endpoint`
// without a trailing '/' when set.
std::string AwsEndpoint(std::string_view service, std::string_view region,
                        std::string_view override_endpoint);

struct RedshiftIamConfig {
  AwsCredentials credentials;
  std::string region;
  std::string aws_endpoint;  // empty: AWS's regional endpoint
  // Exactly one of the two.
  std::string cluster_identifier;
  std::string workgroup_name;
  std::string db_user;   // provisioned: required (the url's user)
  std::string db_name;   // empty: any database the user may log on to
  int duration_s = 900;  // 900..3600
  bool auto_create = false;
  RetryPolicy retry;
  std::chrono::milliseconds timeout{30'000};
};

struct RedshiftDbCredentials {
  std::string user;
  std::string password;
  Clock::TimePoint expiration;
};

class RedshiftIamCredentials {
 public:
  RedshiftIamCredentials(RedshiftIamConfig config, HttpClient* http, Clock* clock);

  // Cached credentials, or new ones when none are cached or they expire
  // within a minute.
  absl::StatusOr<RedshiftDbCredentials> Get();
  // Always asks AWS (after the database refused a cached password).
  absl::StatusOr<RedshiftDbCredentials> Refresh();

  const RedshiftIamConfig& config() const { return config_; }

 private:
  absl::StatusOr<RedshiftDbCredentials> Fetch();

  const RedshiftIamConfig config_;
  HttpClient* const http_;
  Clock* const clock_;
  std::mutex mu_;
  std::optional<RedshiftDbCredentials> cached_;
};

// Parses an ISO-8601 UTC timestamp as AWS writes them
// ("2024-06-01T12:15:00Z", "2024-06-01T12:15:00.123Z").
std::optional<Clock::TimePoint> ParseAwsTimestamp(std::string_view text);

// The text of the first <tag>...</tag> in `xml`, entities decoded; nullopt
// when absent.
std::optional<std::string> XmlElementText(std::string_view xml, std::string_view tag);

}  // namespace backflow
