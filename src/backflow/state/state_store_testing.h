// Test helpers that put runs in a StateStore: queued as the API queues them
// (EnqueueRunsUnlessActive), or recorded as finished. Header-only, test-only.
#pragma once

#include <cstdint>
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
        "that has one (use RecordFinishedRuns for several runs of one mapping)",
        outcome->active->id, outcome->active->mapping, RunStatusName(outcome->active->status)));
  }
  return std::move(outcome->ids);
}

// Records `runs` as runs that ran and finished with `status` (CreateRun, then
// UpdateRun), in order, and returns their ids: for tests that need several
// runs of one mapping (the queue holds at most one run queued or running per
// mapping, whichever path queued it).
inline absl::StatusOr<std::vector<int64_t>> RecordFinishedRuns(
    StateStore& store, const std::vector<RunInfo>& runs, RunStatus status = RunStatus::kSucceeded) {
  std::vector<int64_t> ids;
  for (RunInfo run : runs) {
    if (run.started_at.empty()) run.started_at = "2026-01-01T00:00:00.000Z";
    run.status = RunStatus::kRunning;
    absl::StatusOr<int64_t> id = store.CreateRun(run);
    if (!id.ok()) return id.status();
    run.id = *id;
    run.status = status;
    if (run.finished_at.empty()) run.finished_at = run.started_at;
    if (absl::Status s = store.UpdateRun(run); !s.ok()) return s;
    ids.push_back(*id);
  }
  return ids;
}

}  // namespace backflow::testing
