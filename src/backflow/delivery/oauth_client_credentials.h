// OAuth 2.0 client credentials grant (RFC 6749 §4.4): the machine-to-machine
// auth of a service principal (Databricks OAuth M2M, see
// ../shared/reference/warehouses.md §0.4 and §3.1).
//
// The client POSTs, form-encoded, to the vendor's token endpoint
//   grant_type=client_credentials[&scope=<scope>][&<extra params>]
// authenticating itself with HTTP Basic (base64 of "client_id:client_secret")
// or, for endpoints that want it, with client_id and client_secret in the
// form body (RFC 6749 §2.3.1). The reply {"access_token","token_type",
// "expires_in"} carries no refresh token: a new grant is requested whenever
// the access token expires or is refused.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/http_delivery.h"
#include "nlohmann/json.hpp"

namespace backflow {

enum class ClientAuthMethod {
  // Authorization: Basic base64(client_id ":" client_secret).
  kBasic,
  // client_id and client_secret as form parameters.
  kRequestBody,
};

struct ClientCredentialsConfig {
  // The vendor's name for messages ("Databricks").
  std::string vendor;
  std::string token_url;
  std::string client_id;
  std::string client_secret;
  // Sent as `scope` when non-empty (Databricks: "all-apis").
  std::string scope;
  ClientAuthMethod client_auth = ClientAuthMethod::kBasic;
  // With kBasic: form-urlencode the id and secret before joining them, as
  // RFC 6749 §2.3.1 says. Off by default: vendors document the raw form
  // (`curl -u id:secret`), and the two differ only for ids or secrets with
  // characters outside [A-Za-z0-9-._~].
  bool form_encode_basic_credentials = false;
  // More form parameters (e.g. an `audience`), sent in this order.
  std::vector<std::pair<std::string, std::string>> extra_params;
  // A token is replaced this long before its expires_in runs out (at most
  // half its lifetime), so a request never carries one about to expire.
  std::chrono::seconds expiry_margin{300};
  // When the reply has no expires_in: how long to keep the token; nullopt
  // keeps it until a caller asks for a refresh.
  std::optional<std::chrono::seconds> lifetime_without_expires_in;
  // Retries of the token request after 429, 5xx and transport errors, with
  // exponential backoff (full jitter) from `base_backoff`, on the clock.
  int max_retries = 2;
  std::chrono::milliseconds base_backoff{500};
  std::chrono::milliseconds max_backoff{30'000};
  std::chrono::milliseconds timeout{30'000};
  // Appended to a refused grant's message: what the user should check for
  // this vendor (which settings hold the id and secret, where to create one).
  std::string hint;
};

// A TokenSource that mints access tokens with the client credentials grant.
//
// Token(false) returns the cached access token while it is valid (until
// expires_in minus the margin, by the injected clock) and requests a new one
// otherwise; Token(true) always requests a new one. Errors:
//   - kUnauthenticated when the endpoint refuses the grant (HTTP 400/401/403,
//     e.g. {"error":"invalid_client","error_description":"Client
//     authentication failed"}): the message quotes the vendor's error and
//     description and says what to check (never the secret);
//   - kFailedPrecondition when there is no token endpoint at token_url (404
//     and other 4xx) or it answers 2xx without an access_token;
//   - kUnavailable / kDeadlineExceeded when it could not be reached or kept
//     answering 429/5xx after max_retries retries.
// Failures are not cached: the next call tries again.
//
// Thread-safety: all methods are thread-safe. One mutex serialises minting,
// so concurrent callers that find the token expired wait for one request and
// share its result. `http` and `clock` must outlive the source.
class ClientCredentialsTokenSource : public TokenSource {
 public:
  // kInvalidArgument for a missing token_url, client_id or client_secret.
  static absl::StatusOr<std::unique_ptr<ClientCredentialsTokenSource>> Create(
      ClientCredentialsConfig config, HttpClient* http, Clock* clock);

  absl::StatusOr<std::string> Token(bool refresh) override;

  // The JSON body of the last successful token reply; null before the first.
  nlohmann::json LastTokenResponse() const;
  // Successful grants so far.
  int64_t mint_count() const;

  // The request this source sends (for tests): headers and form body.
  HttpRequest TokenRequest() const;

 private:
  ClientCredentialsTokenSource(ClientCredentialsConfig config, HttpClient* http, Clock* clock)
      : config_(std::move(config)), http_(http), clock_(clock) {}
  // Requires mu_.
  absl::StatusOr<std::string> MintLocked();

  const ClientCredentialsConfig config_;
  HttpClient* const http_;
  Clock* const clock_;

  mutable std::mutex mu_;
  std::string token_;
  std::optional<Clock::TimePoint> refresh_at_;  // nullopt: valid until refused
  nlohmann::json last_response_;
  int64_t mints_ = 0;
};

}  // namespace backflow
