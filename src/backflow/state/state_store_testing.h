// Test helpers that queue runs through a StateStore's two queueing paths:
// the API's (EnqueueRunsUnlessActive) and the scheduler's (AdvanceSchedule).
// Header-only, test-only.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/state/state_store.h"
#include "fmt/format.h"

namespace backflow::testing {

// Queues `runs` as one request as the API does (EnqueueRunsUnlessActive) and
// returns their ids in order. kFailedPrecondition, naming the run, when a
// mapping of `runs` already has a run queued or running (nothing is queued).
inline absl::StatusOr<std::vector<int64_t>> QueueRuns(StateStore& store,
                                                      const std::vector<RunInfo>& runs) {
  absl::StatusOr<StateStore::EnqueueOutcome> outcome = store.EnqueueRunsUnlessActive(runs);
  if (!outcome.ok()) return outcome.status();
  if (outcome->active) {
    return absl::FailedPreconditionError(fmt::format(
        "run {} of mapping \"{}\" is already {}: the test queued runs for a mapping "
        "that has one (use QueueRunsAsScheduleTick for that)",
        outcome->active->id, outcome->active->mapping, RunStatusName(outcome->active->status)));
  }
  return std::move(outcome->ids);
}

// Queues `runs` as one request whether or not their mappings have runs queued
// or running, as a schedule tick does (AdvanceSchedule queues what it is given;
// the scheduler leaves out busy models before): for tests that need several
// runs of one mapping in the queue. Each call stores the schedule state of a
// model of its own ("test-queue-<pid>-<n>", which no workspace names).
inline absl::StatusOr<std::vector<int64_t>> QueueRunsAsScheduleTick(
    StateStore& store, const std::vector<RunInfo>& runs) {
  static std::atomic<int64_t> calls{0};
  const int64_t n = ++calls;
  const std::string model = fmt::format("test-queue-{}-{}", getpid(), n);
  absl::StatusOr<std::optional<std::vector<int64_t>>> ids =
      store.AdvanceSchedule(model, std::nullopt, ScheduleState{n, 0, 0}, runs);
  if (!ids.ok()) return ids.status();
  if (!ids->has_value()) {
    return absl::InternalError(
        fmt::format("the schedule state of \"{}\" already existed: nothing was queued", model));
  }
  return **std::move(ids);
}

}  // namespace backflow::testing
