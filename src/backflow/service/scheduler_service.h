// SchedulerService: the scheduling half of `backflow serve`. It watches the
// workspace file, decides which models are due (scheduler/planner.h), queues
// their runs and runs them one at a time on a worker thread with the same
// engine as `backflow sync --model`, and writes one JSON log line per event
// to `log` (stdout in the CLI).
//
// Rules it adds to the planner's: a model with no enabled mapping is logged
// and skipped; the workspace file is re-read when it changes on disk, and an
// invalid edit is logged and ignored (the last valid workspace stays in
// force). Schedule state is persisted in the state store after every
// decision, so a restart neither re-runs a tick nor forgets a missed one.
//
// Thread-safety: Run() is called from one thread; RequestStop() from any
// thread or a signal handler (it only stores to an atomic).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "backflow/catalog/definitions.h"
#include "backflow/catalog/registry.h"

namespace backflow {

struct SchedulerOptions {
  std::string config_path;
  // Decide once (at `now` if set, else the current time), run what is due,
  // wait for those runs and return.
  bool once = false;
  std::optional<absl::Time> now;
  std::chrono::milliseconds poll{1000};
};

struct SchedulerOutcome {
  int runs = 0;          // model runs started
  int failed_runs = 0;   // model runs with a failed mapping run
  int partial_runs = 0;  // model runs with failed or rejected records
};

class SchedulerService {
 public:
  SchedulerService(SchedulerOptions options, const Registry& registry, ConnectorEnv env,
                   std::FILE* log);

  // Runs until RequestStop() (or one decision with `once`); waits for the run
  // in progress to finish before returning. Errors: the workspace cannot be
  // loaded at start, or the state store cannot be opened.
  absl::StatusOr<SchedulerOutcome> Run();

  void RequestStop() { stop_.store(true); }

 private:
  SchedulerOptions options_;
  const Registry& registry_;
  ConnectorEnv env_;
  std::FILE* log_;
  std::atomic<bool> stop_{false};
};

}  // namespace backflow
