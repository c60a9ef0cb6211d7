// Error classes: what the caller should do with a failed absl::Status.
//
// The status code decides the retry class (see ARCHITECTURE.md):
//   kUnavailable, kDeadlineExceeded  transient: retry with backoff
//   kResourceExhausted               rate limited: retry after the delay
//                                    carried by RetryAfter(), if any
//   kInvalidArgument                 this record/batch is bad: do not retry
//   kUnauthenticated, kPermissionDenied, kFailedPrecondition
//                                    configuration must be fixed by a user
//   anything else                    not retried; reported as-is
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "backflow/common/fmt_absl.h"

namespace backflow {

enum class RetryClass { kTransient, kRateLimited, kRecord, kConfiguration, kInternal };

RetryClass ClassifyStatus(const absl::Status& status);
bool IsRetryable(const absl::Status& status);
std::string_view RetryClassName(RetryClass c);

// Attaches a server-requested delay (Retry-After and friends) to a status.
absl::Status WithRetryAfter(absl::Status status, std::chrono::milliseconds delay);
std::optional<std::chrono::milliseconds> RetryAfter(const absl::Status& status);

// A one-sentence, user-facing suggestion for what to do about an error of this
// class, used as a failed record's "recommended action".
std::string RecommendedAction(const absl::Status& status);

}  // namespace backflow
