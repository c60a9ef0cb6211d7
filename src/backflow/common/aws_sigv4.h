// AWS Signature Version 4 (AWS4-HMAC-SHA256) for requests to AWS APIs, and
// the pieces a fake AWS endpoint needs to check a signature the way AWS does.
//
// Signing (see the AWS IAM user guide, "Create a signed AWS API request"):
//   CanonicalRequest = Method \n CanonicalURI \n CanonicalQuery \n
//                      CanonicalHeaders \n SignedHeaders \n hex(SHA256(payload))
//   StringToSign     = "AWS4-HMAC-SHA256" \n AmzDate \n Scope \n
//                      hex(SHA256(CanonicalRequest))
//   Scope            = YYYYMMDD/region/service/aws4_request
//   SigningKey       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, YYYYMMDD), region),
//                      service), "aws4_request")
//   Signature        = hex(HMAC(SigningKey, StringToSign))
// The canonical URI is the request path as sent (already percent-encoded;
// "/" when empty): the APIs signed here all POST to "/". The canonical
// query sorts the parameters by name, then value, each re-encoded with
// RFC 3986 unreserved characters kept ("%20" for a space). Canonical headers
// are lowercased names with trimmed values (inner runs of spaces collapsed),
// sorted by name, repeated names joined with ','.
//
// Secrets (secret access key, session token) never appear in anything these
// functions return except the session token header SignAwsRequest adds.
// Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"

namespace backflow {

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  // Set for temporary (STS) credentials; sent as X-Amz-Security-Token.
  std::string session_token;
};

// One request as SigV4 sees it.
struct SigV4Request {
  std::string method = "POST";
  std::string path = "/";  // as sent, percent-encoded
  std::string query;       // as sent, without '?'
  HttpHeaders headers;     // exactly the headers to sign (host and x-amz-date included)
  std::string payload;
};

struct SigV4Signature {
  std::string canonical_request;
  std::string string_to_sign;
  std::string signed_headers;  // "content-type;host;x-amz-date"
  std::string signature;       // lowercase hex
  // "AWS4-HMAC-SHA256 Credential=<key id>/<scope>, SignedHeaders=..., Signature=..."
  std::string authorization;
};

// "20150830T123600Z" (UTC, whole seconds).
std::string AwsAmzDate(Clock::TimePoint t);

// The derived signing key (32 raw bytes) for `date` ("YYYYMMDD").
std::string SigV4SigningKey(std::string_view secret_access_key, std::string_view date,
                            std::string_view region, std::string_view service);

// The canonical form of a query string (see the header comment).
std::string SigV4CanonicalQuery(std::string_view query);

// Signs `request` at `amz_date` ("YYYYMMDDTHHMMSSZ").
SigV4Signature ComputeSigV4(const SigV4Request& request, const AwsCredentials& credentials,
                            std::string_view region, std::string_view service,
                            std::string_view amz_date);

// Signs an outgoing request in place for `service` in `region` at `now`:
// adds X-Amz-Date, X-Amz-Security-Token (with a session token) and
// Authorization, signing the host of the URL (with its port, as HTTP clients
// send it) and every header already on the request. Call it last, after all
// other headers are set, and again for every attempt. kInvalidArgument for
// a URL that is not http(s)://host[:port][/path][?query].
absl::Status SignAwsRequest(HttpRequest& request, const AwsCredentials& credentials,
                            std::string_view region, std::string_view service,
                            Clock::TimePoint now);

// A parsed Authorization header.
struct SigV4Authorization {
  std::string access_key_id;
  std::string date;  // YYYYMMDD of the scope
  std::string region;
  std::string service;
  std::vector<std::string> signed_headers;
  std::string signature;
};

// Parses "AWS4-HMAC-SHA256 Credential=.../aws4_request, SignedHeaders=...,
// Signature=..." (commas with or without spaces). kInvalidArgument, saying
// what is missing, for anything else.
absl::StatusOr<SigV4Authorization> ParseSigV4Authorization(std::string_view header);

}  // namespace backflow
