// OAuth 2.0 JWT bearer grant (RFC 7523) with RS256 assertions (RFC 7515,
// RFC 7518 §3.3): the server-to-server auth of Google service accounts and
// Salesforce connected apps (see ../shared/reference/destinations.md §0.6,
// §3.1, §7.1).
//
// The client signs a short-lived JWT with its RSA private key and POSTs it,
// form-encoded, to the vendor's token endpoint:
//   grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>
// and receives an access token, with no refresh token: a new assertion is
// minted whenever the access token expires or is refused.
//
// Rs256Key, SignJwtRs256, VerifyJwtRs256 and the free functions are pure and
// thread-safe. JwtBearerTokenSource is thread-safe (see below).
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/http_delivery.h"
#include "nlohmann/json.hpp"

namespace backflow {

inline constexpr char kJwtBearerGrantType[] = "urn:ietf:params:oauth:grant-type:jwt-bearer";

// base64url without padding (RFC 7515 §2), and its inverse (padding
// optional; anything outside the alphabet is kInvalidArgument).
std::string Base64UrlEncode(std::string_view bytes);
absl::StatusOr<std::string> Base64UrlDecode(std::string_view text);

// An RSA key parsed once for signing or verifying RS256 (RSASSA-PKCS1-v1_5
// with SHA-256). Immutable; safe to share between threads.
class Rs256Key {
 public:
  ~Rs256Key();
  Rs256Key(const Rs256Key&) = delete;
  Rs256Key& operator=(const Rs256Key&) = delete;

  // A PEM private key: PKCS#8 ("BEGIN PRIVATE KEY", what Google key files
  // hold) or PKCS#1 ("BEGIN RSA PRIVATE KEY"). kInvalidArgument, saying
  // what is wrong, for text that is not a PEM key, an encrypted key, a key
  // that is not RSA, or an RSA key shorter than 2048 bits (RFC 7518 §3.3).
  static absl::StatusOr<std::unique_ptr<Rs256Key>> FromPrivateKeyPem(std::string_view pem);
  // A PEM public key ("BEGIN PUBLIC KEY"), for verifying. Same errors.
  static absl::StatusOr<std::unique_ptr<Rs256Key>> FromPublicKeyPem(std::string_view pem);

  bool has_private_key() const { return has_private_; }
  // The raw signature of `data`. kFailedPrecondition for a public-only key.
  absl::StatusOr<std::string> Sign(std::string_view data) const;
  // Whether `signature` is a valid signature of `data` under this key.
  bool Verify(std::string_view data, std::string_view signature) const;
  // The public half as PEM ("BEGIN PUBLIC KEY").
  std::string PublicKeyPem() const;

 private:
  struct Impl;
  explicit Rs256Key(Impl* impl, bool has_private) : impl_(impl), has_private_(has_private) {}
  Impl* impl_;
  bool has_private_;
};

// A fresh RSA key pair as PEM (private: PKCS#8), for tests and fake servers.
struct RsaKeyPair {
  std::string private_key_pem;
  std::string public_key_pem;
};
absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(int bits = 2048);

// Signs a compact JWS: base64url(header) "." base64url(claims) "."
// base64url(signature). The header is {"alg":"RS256","typ":"JWT"} plus
// "kid" when `key_id` is non-empty. `claims` must be a JSON object.
absl::StatusOr<std::string> SignJwtRs256(const Rs256Key& key, std::string_view key_id,
                                         const nlohmann::json& claims);

struct DecodedJwt {
  nlohmann::json header;
  nlohmann::json claims;
};

// Splits and decodes a compact JWS without checking the signature (to read
// "iss" before choosing the key to verify with). kInvalidArgument when it
// is not three base64url parts of which the first two are JSON objects.
absl::StatusOr<DecodedJwt> DecodeJwt(std::string_view jwt);

// Decodes and checks that the header's alg is RS256 and the signature is
// valid under `key`. kInvalidArgument for malformed tokens, kUnauthenticated
// for a wrong alg or a bad signature. Time claims are not checked.
absl::StatusOr<DecodedJwt> VerifyJwtRs256(std::string_view jwt, const Rs256Key& key);

// What the assertion claims and where it is exchanged.
struct JwtBearerConfig {
  // The vendor's name for messages ("Google", "Salesforce").
  std::string vendor;
  std::string token_url;
  // PEM private key (see Rs256Key::FromPrivateKeyPem) and its id, sent as
  // the header's "kid" when non-empty (Google: private_key_id).
  std::string private_key_pem;
  std::string key_id;
  // Claims. iss is required; sub and scope are left out when empty. aud
  // defaults to token_url when empty.
  std::string issuer;
  std::string subject;
  std::string audience;
  std::string scope;
  // exp = iat + this (Google allows at most 1 h, Salesforce 3 min).
  std::chrono::seconds assertion_lifetime{3600};
  // A token is replaced this long before its expires_in runs out (at most
  // half its lifetime), so a request never carries one about to expire.
  std::chrono::seconds expiry_margin{60};
  // When the reply has no expires_in (Salesforce): how long to keep the
  // token; nullopt keeps it until a caller asks for a refresh.
  std::optional<std::chrono::seconds> lifetime_without_expires_in;
  // Retries of the token request after 429, 5xx and transport errors, with
  // exponential backoff (full jitter) from `base_backoff`, on the clock.
  int max_retries = 2;
  std::chrono::milliseconds base_backoff{500};
  std::chrono::milliseconds max_backoff{30'000};
  std::chrono::milliseconds timeout{30'000};
  // Appended to a refused grant's message: what the user should check for
  // this vendor (e.g. that the key is not deleted, the app is pre-authorised).
  std::string hint;
};

// A TokenSource that mints access tokens with the JWT bearer grant.
//
// Token(false) returns the cached access token while it is valid (until
// expires_in minus the margin, by the injected clock) and mints a new one
// otherwise; Token(true) always mints a new one. Errors:
//   - kUnauthenticated when the endpoint refuses the grant (HTTP 400/401/403,
//     e.g. {"error":"invalid_grant","error_description":"Invalid JWT
//     Signature."}): the message quotes the vendor's error and description
//     and says what to check;
//   - kFailedPrecondition when there is no token endpoint at token_url (404
//     and other 4xx) or it answers 2xx without an access_token;
//   - kUnavailable / kDeadlineExceeded when it could not be reached or kept
//     answering 429/5xx after max_retries retries.
// Failures are not cached: the next call tries again.
//
// Thread-safety: all methods are thread-safe. One mutex serialises minting,
// so concurrent callers that find the token expired wait for one mint and
// share its result. `http` and `clock` must outlive the source, and `http`
// must not be used concurrently by others while a token is minted (the
// engine sends from one thread).
class JwtBearerTokenSource : public TokenSource {
 public:
  // kInvalidArgument for a bad key (see Rs256Key) or a missing token_url or
  // issuer.
  static absl::StatusOr<std::unique_ptr<JwtBearerTokenSource>> Create(JwtBearerConfig config,
                                                                      HttpClient* http,
                                                                      Clock* clock);

  absl::StatusOr<std::string> Token(bool refresh) override;

  // The JSON body of the last successful token reply (Salesforce's
  // instance_url is read from it); null before the first.
  nlohmann::json LastTokenResponse() const;
  // Successful mints so far.
  int64_t mint_count() const;

  // The assertion this source would send now (for tests).
  absl::StatusOr<std::string> MintAssertion() const;

 private:
  JwtBearerTokenSource(JwtBearerConfig config, std::unique_ptr<Rs256Key> key, HttpClient* http,
                       Clock* clock);
  // Requires mu_.
  absl::StatusOr<std::string> MintLocked();

  const JwtBearerConfig config_;
  const std::unique_ptr<Rs256Key> key_;
  HttpClient* const http_;
  Clock* const clock_;

  mutable std::mutex mu_;
  std::string token_;
  std::optional<Clock::TimePoint> refresh_at_;  // nullopt: valid until refused
  nlohmann::json last_response_;
  int64_t mints_ = 0;
};

}  // namespace backflow
