#include "backflow/common/errors.h"

#include <charconv>

#include "absl/strings/cord.h"

namespace backflow {
namespace {
constexpr char kRetryAfterPayload[] = "backflow.dev/retry-after-ms";
}  // namespace

RetryClass ClassifyStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return RetryClass::kTransient;
    case absl::StatusCode::kResourceExhausted:
      return RetryClass::kRateLimited;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kNotFound:
      return RetryClass::kRecord;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kFailedPrecondition:
      return RetryClass::kConfiguration;
    default:
      return RetryClass::kInternal;
  }
}

bool IsRetryable(const absl::Status& status) {
  RetryClass c = ClassifyStatus(status);
  return c == RetryClass::kTransient || c == RetryClass::kRateLimited;
}

std::string_view RetryClassName(RetryClass c) {
  switch (c) {
    case RetryClass::kTransient:
      return "transient";
    case RetryClass::kRateLimited:
      return "rate_limited";
    case RetryClass::kRecord:
      return "record";
    case RetryClass::kConfiguration:
      return "configuration";
    case RetryClass::kInternal:
      return "internal";
  }
  return "internal";
}

absl::Status WithRetryAfter(absl::Status status, std::chrono::milliseconds delay) {
  status.SetPayload(kRetryAfterPayload, absl::Cord(std::to_string(delay.count())));
  return status;
}

std::optional<std::chrono::milliseconds> RetryAfter(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(kRetryAfterPayload);
  if (!payload) return std::nullopt;
  std::string text(*payload);
  long long ms = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), ms);
  if (ec != std::errc()) return std::nullopt;
  return std::chrono::milliseconds(ms);
}

std::string RecommendedAction(const absl::Status& status) {
  switch (ClassifyStatus(status)) {
    case RetryClass::kTransient:
      return "Temporary destination error; the record is retried automatically on the next run.";
    case RetryClass::kRateLimited:
      return "The destination rate-limited Backflow; the record is retried on the next run. "
             "Lower max_requests_per_second or the batch size if this persists.";
    case RetryClass::kRecord:
      return "The destination rejected this record's data: fix the value in the model or the "
             "mapping; the record is retried on every run until it succeeds.";
    case RetryClass::kConfiguration:
      return "Fix the destination's credentials or permissions, then run the sync again; "
             "the record is retried on the next run.";
    case RetryClass::kInternal:
      return "Unexpected error; the record is retried on the next run. Report it if it persists.";
  }
  return "";
}

}  // namespace backflow
