#include "backflow/delivery/http_delivery.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <utility>

#include "backflow/common/errors.h"
#include "fmt/format.h"

namespace backflow {

bool DefaultRetryableStatus(int status) {
  return status == 408 || status == 425 || status == 429 || status >= 500;
}

std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value,
                                                         Clock::TimePoint now) {
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    if (value.size() > 9) return std::chrono::hours(24 * 365);  // absurdly large: capped later
    return std::chrono::seconds(std::stoll(std::string(value)));
  }
  // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
  std::tm tm{};
  std::string text(value);
  const char* end = strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  auto when = std::chrono::system_clock::from_time_t(timegm(&tm));
  if (when <= now) return std::chrono::milliseconds(0);
  return std::chrono::ceil<std::chrono::milliseconds>(when - now);
}

std::optional<std::chrono::milliseconds> WaitUntilEpochSeconds(std::string_view value,
                                                               Clock::TimePoint now) {
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
  if (value.empty() || value.size() > 15) return std::nullopt;
  double seconds = 0;
  try {
    size_t used = 0;
    seconds = std::stod(std::string(value), &used);
    if (used != value.size()) return std::nullopt;
  } catch (...) {
    return std::nullopt;
  }
  auto when = Clock::TimePoint(
      std::chrono::duration_cast<Clock::Duration>(std::chrono::duration<double>(seconds)));
  if (when <= now) return std::chrono::milliseconds(0);
  return std::chrono::ceil<std::chrono::milliseconds>(when - now);
}

std::string DeliveryResult::AttemptsText() const {
  return fmt::format("after {} attempt{}", attempts, attempts == 1 ? "" : "s");
}

std::string BodySnippet(std::string_view body, size_t max_bytes) {
  std::string out(body.substr(0, max_bytes));
  if (body.size() > max_bytes) out += "...";
  return out;
}

HttpDelivery::HttpDelivery(HttpClient* http, Clock* clock, std::vector<RateLimiter*> limiters,
                           RetryPolicy policy, VendorRules rules, TokenSource* auth)
    : http_(http),
      clock_(clock),
      limiters_(std::move(limiters)),
      policy_(policy),
      rules_(std::move(rules)),
      auth_(auth),
      rng_(std::random_device{}()) {
  if (!rules_.retryable) {
    rules_.retryable = [](const HttpResponse& r) { return DefaultRetryableStatus(r.status); };
  }
  if (!rules_.requested_wait) {
    rules_.requested_wait = [](const HttpResponse& r,
                               Clock::TimePoint now) -> std::optional<std::chrono::milliseconds> {
      if (auto ra = r.Header("retry-after")) return ParseRetryAfter(*ra, now);
      return std::nullopt;
    };
  }
}

DeliveryResult HttpDelivery::Send(const std::function<HttpRequest()>& build, bool retry) {
  DeliveryResult d;
  const int max_attempts = retry ? policy_.max_retries + 1 : 1;
  bool refreshed = false;
  for (int attempt = 1;; ++attempt) {
    d.attempts = attempt;
    // Wait for the limiters first, so that what `build` stamps (timestamps,
    // signatures) is fresh when the request leaves.
    for (RateLimiter* limiter : limiters_) {
      if (limiter != nullptr) limiter->Acquire();
    }
    HttpRequest request = build();
    if (auth_ != nullptr) {
      absl::StatusOr<std::string> token = auth_->Token(/*refresh=*/false);
      if (!token.ok()) {
        d.auth_error = token.status();
        d.response = token.status();
        return d;
      }
      request.headers.emplace_back("Authorization", "Bearer " + *token);
    }
    d.response = http_->Send(request);
    if (d.response.ok() && d.response->status == 401 && auth_ != nullptr && !refreshed) {
      // The token may have expired or been revoked: mint a new one, once.
      refreshed = true;
      absl::StatusOr<std::string> token = auth_->Token(/*refresh=*/true);
      if (!token.ok()) {
        d.auth_error = token.status();
        return d;
      }
      --attempt;  // the repeat is not a retry
      continue;
    }
    bool retryable = !d.response.ok() || rules_.retryable(*d.response);
    if (!retryable || attempt >= max_attempts) return d;

    std::optional<std::chrono::milliseconds> wait;
    if (d.response.ok()) wait = rules_.requested_wait(*d.response, clock_->Now());
    if (!wait) {
      double ceiling = static_cast<double>(policy_.base_backoff.count()) *
                       std::pow(policy_.multiplier, std::min(attempt - 1, 60));
      ceiling = std::min(ceiling, static_cast<double>(policy_.max_wait.count()));
      std::uniform_int_distribution<int64_t> dist(0, std::max<int64_t>(0, std::llround(ceiling)));
      wait = std::chrono::milliseconds(dist(rng_));
    }
    clock_->SleepFor(std::min(*wait, policy_.max_wait));
  }
}

absl::Status HttpDelivery::FailureStatus(const DeliveryResult& d, std::string_view what) const {
  if (!d.auth_error.ok()) return d.auth_error;
  if (!d.response.ok()) {
    const absl::Status& s = d.response.status();
    std::string message =
        fmt::format("could not reach {} {}: {}", what, d.AttemptsText(), std::string(s.message()));
    return s.code() == absl::StatusCode::kDeadlineExceeded ? absl::DeadlineExceededError(message)
                                                           : absl::UnavailableError(message);
  }
  const HttpResponse& r = *d.response;
  std::string said = BodySnippet(r.body);
  if (r.status == 401) {
    return absl::UnauthenticatedError(fmt::format(
        "{} refused the credentials (HTTP 401): check the API key or token. {} said: {}", what,
        what, said));
  }
  if (r.status == 403) {
    return absl::PermissionDeniedError(fmt::format(
        "{} denied the request (HTTP 403): the credentials lack a permission or scope this "
        "action needs. {} said: {}",
        what, what, said));
  }
  if (rules_.retryable(r)) {
    std::string message =
        fmt::format("{} answered HTTP {} {}: {}", what, r.status, d.AttemptsText(), said);
    if (r.status == 429) {
      absl::Status s = absl::ResourceExhaustedError(message);
      if (auto wait = rules_.requested_wait(r, clock_->Now())) s = WithRetryAfter(s, *wait);
      return s;
    }
    return absl::UnavailableError(message);
  }
  return absl::InvalidArgumentError(
      fmt::format("{} rejected the request (HTTP {}): {}", what, r.status, said));
}

PartOutcome PartOutcome::PerRecord(std::vector<absl::Status> results) {
  PartOutcome o;
  o.results = std::move(results);
  return o;
}

PartOutcome PartOutcome::AllRecords(size_t n, const absl::Status& status) {
  return PerRecord(std::vector<absl::Status>(n, status));
}

PartOutcome PartOutcome::Split(absl::Status why) {
  PartOutcome o;
  o.split = true;
  o.whole_error = std::move(why);
  return o;
}

namespace {

// `delivered` tells whether anything was accepted before this part.
absl::StatusOr<std::vector<absl::Status>> SendPart(std::span<const OutgoingRecord> records,
                                                   const PartSender& send, bool& delivered) {
  absl::StatusOr<PartOutcome> outcome = send(records);
  if (!outcome.ok()) {
    if (!delivered) return outcome.status();
    return std::vector<absl::Status>(records.size(), outcome.status());
  }
  if (!outcome->split) {
    if (outcome->results.size() != records.size()) {
      return absl::InternalError(fmt::format("destination returned {} results for {} records",
                                             outcome->results.size(), records.size()));
    }
    if (std::any_of(outcome->results.begin(), outcome->results.end(),
                    [](const absl::Status& s) { return s.ok(); })) {
      delivered = true;
    }
    return std::move(outcome->results);
  }
  if (records.size() == 1) return std::vector<absl::Status>{outcome->whole_error};
  const size_t half = records.size() / 2;
  absl::StatusOr<std::vector<absl::Status>> first =
      SendPart(records.subspan(0, half), send, delivered);
  if (!first.ok()) return first;
  absl::StatusOr<std::vector<absl::Status>> second =
      SendPart(records.subspan(half), send, delivered);
  if (!second.ok()) {
    if (!delivered) return second;
    second = std::vector<absl::Status>(records.size() - half, second.status());
  }
  std::vector<absl::Status> out = *std::move(first);
  out.insert(out.end(), second->begin(), second->end());
  return out;
}

}  // namespace

absl::StatusOr<std::vector<absl::Status>> SendBisecting(std::span<const OutgoingRecord> records,
                                                        const PartSender& send) {
  if (records.empty()) return std::vector<absl::Status>();
  bool delivered = false;
  return SendPart(records, send, delivered);
}

}  // namespace backflow
