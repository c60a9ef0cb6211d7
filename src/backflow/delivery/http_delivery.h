// HttpDelivery: one logical request to a destination's API, retried the way
// the vendor asks; and SendBisecting, which isolates the bad records of a
// batch the API rejects as a whole.
//
// Every HTTP destination sends through these, so backoff, Retry-After and
// vendor rate-limit headers, the shared rate limiter and token refresh behave
// the same everywhere (see ../shared/reference/destinations.md §0).
//
// Retry rules: transport errors and replies the VendorRules call retryable
// (default 408, 425, 429, 5xx) are retried up to RetryPolicy::max_retries
// times. The wait before attempt n+1 is what the server asked for
// (VendorRules::requested_wait: Retry-After by default) or else exponential
// backoff with full jitter, base × multiplier^(n-1); every wait is capped at
// max_wait and taken on the injected Clock. A 401 when a TokenSource is set
// re-mints the token once and repeats the attempt (not counted as a retry).
// Each attempt, retries included, first acquires the rate limiters.
//
// Thread-safety: an HttpDelivery holds a random generator, so use one per
// session (sessions run on one thread); the RateLimiter and TokenSource it
// points to may be shared and must be thread-safe.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/destinations/destination.h"

namespace backflow {

struct RetryPolicy {
  int max_retries = 5;
  std::chrono::milliseconds base_backoff{1000};
  double multiplier = 2.0;
  std::chrono::milliseconds max_wait{300'000};
};

// What a vendor's replies mean for retrying. Unset members use the defaults.
struct VendorRules {
  // Whether a reply should be retried. Default: DefaultRetryableStatus.
  std::function<bool(const HttpResponse&)> retryable;
  // How long the server asked us to wait, if it said. Default: Retry-After.
  std::function<std::optional<std::chrono::milliseconds>(const HttpResponse&, Clock::TimePoint)>
      requested_wait;
};

bool DefaultRetryableStatus(int status);

// Parses a Retry-After value: delay-seconds or an IMF-fixdate HTTP-date
// (relative to `now`; dates in the past give zero). nullopt when unparsable.
std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value,
                                                         Clock::TimePoint now);

// The wait until an epoch-seconds reset time ("X-RateLimit-Reset: 1700000060"),
// zero when it is in the past; nullopt when unparsable.
std::optional<std::chrono::milliseconds> WaitUntilEpochSeconds(std::string_view value,
                                                               Clock::TimePoint now);

// Supplies bearer tokens (OAuth access tokens, JWT-bearer grants).
// Implementations are thread-safe.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  // The current token; `refresh` forces a new one (the old one was refused).
  // Errors are kUnauthenticated for refused credentials, kUnavailable when
  // the token endpoint could not be reached.
  virtual absl::StatusOr<std::string> Token(bool refresh) = 0;
};

struct DeliveryResult {
  // The last reply, or the transport error of the last attempt.
  absl::StatusOr<HttpResponse> response;
  int attempts = 0;
  // Set when a TokenSource could not mint a token: nothing more was sent.
  absl::Status auth_error;

  // "after 3 attempts" / "after 1 attempt".
  std::string AttemptsText() const;
};

class HttpDelivery {
 public:
  // `http`, `clock`, the limiters and `auth` (may be null) must outlive
  // this. Every attempt acquires each limiter (e.g. the vendor's own limit
  // and the user's lower max_requests_per_second); null entries are skipped.
  HttpDelivery(HttpClient* http, Clock* clock, std::vector<RateLimiter*> limiters,
               RetryPolicy policy, VendorRules rules = {}, TokenSource* auth = nullptr);

  // Sends the request `build` makes (called per attempt, so timestamps and
  // signatures are fresh; with a TokenSource, "Authorization: Bearer <token>"
  // is appended). With retry = false only one attempt is made (401 refresh
  // still applies).
  DeliveryResult Send(const std::function<HttpRequest()>& build, bool retry = true);

  // The status a failed (non-2xx, already retried) reply or transport error
  // maps to by default: kResourceExhausted with the server's delay for 429,
  // kUnavailable for other retryable replies and transport errors,
  // kUnauthenticated for 401, kPermissionDenied for 403, kInvalidArgument for
  // other 4xx. `what` names the destination ("HubSpot"); the reply body is
  // quoted (trimmed).
  absl::Status FailureStatus(const DeliveryResult& result, std::string_view what) const;

  Clock* clock() const { return clock_; }

 private:
  HttpClient* http_;
  Clock* clock_;
  std::vector<RateLimiter*> limiters_;
  RetryPolicy policy_;
  VendorRules rules_;
  TokenSource* auth_;
  std::mt19937_64 rng_;
};

// The first `max_bytes` of a reply body for error messages ("..." when cut).
std::string BodySnippet(std::string_view body, size_t max_bytes = 500);

// What one request for a part of a batch produced.
struct PartOutcome {
  // Per record, in input order (size == part size) unless `split`.
  std::vector<absl::Status> results;
  // The API rejected the part as a whole without saying which record is at
  // fault (400 for the batch, 413, size limits): SendBisecting re-sends the
  // halves. A single record that is still rejected gets `whole_error`.
  bool split = false;
  absl::Status whole_error;

  static PartOutcome PerRecord(std::vector<absl::Status> results);
  static PartOutcome AllRecords(size_t n, const absl::Status& status);
  static PartOutcome Split(absl::Status why);
};

// Sends `records` through `send`, bisecting parts that come back `split`.
// `send` returning non-OK means "stop the run" (bad credentials...): that is
// returned as-is while nothing has been accepted yet; once a part was
// delivered, the remaining records carry it as their own status instead.
using PartSender = std::function<absl::StatusOr<PartOutcome>(std::span<const OutgoingRecord>)>;
absl::StatusOr<std::vector<absl::Status>> SendBisecting(std::span<const OutgoingRecord> records,
                                                        const PartSender& send);

}  // namespace backflow
