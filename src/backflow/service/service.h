// Service: `backflow serve`. One process runs, on the same engine as
// `backflow sync`:
//   - the scheduler: watches the workspace file, decides which models are due
//     (scheduler/planner.h) and queues their runs in the state store;
//   - workers: take queued runs (schedule, API, or another process's) under a
//     lease they renew while they work, run them, and record the result;
//   - the REST API (api/), when `listen` is set.
// Several processes sharing a PostgreSQL state store share the queue: a
// request is taken by one worker; a worker that dies loses its lease and the
// run is taken over and finished from the in-flight journal.
//
// Rules beyond the planner's: a model with no enabled mapping is logged and
// skipped; a model with a run queued or running is not queued again (the
// tick is skipped and logged, naming that run), also when the run was queued
// (e.g. through the API) while the scheduler decided; an invalid edit of the workspace file is
// logged and ignored (the last valid workspace stays in force). Schedule
// state is persisted after every decision, by compare-and-set together with
// the runs it queues (StateStore::AdvanceSchedule): when several processes
// decide the same tick, one queues it and the others log
// "schedule_decided_elsewhere". A run whose mapping another process is
// syncing waits (under its lease) for it to finish. One JSON log line per event goes
// to `log` (stdout in the CLI), with run ids.
//
// Stopping (RequestStop, e.g. on SIGTERM): no new run is taken; a run in
// progress stops after the batches in flight settle and goes back to the
// queue, so the next worker (or the next start) finishes it. With `once`,
// the service decides once, runs everything queued, and returns.
//
// Thread-safety: Run() is called from one thread; RequestStop() from any
// thread or a signal handler (it only stores to an atomic).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "backflow/catalog/definitions.h"
#include "backflow/catalog/registry.h"
#include "backflow/state/state_store.h"

namespace backflow {

struct ServiceOptions {
  std::string config_path;
  // Decide once (at `now` if set, else the current time), run what is
  // queued, and return.
  bool once = false;
  std::optional<absl::Time> now;
  std::chrono::milliseconds poll{1000};
  int workers = 1;
  // "HOST:PORT" to serve the REST API on; empty = no API.
  std::string listen;
  absl::Duration lease = absl::Seconds(30);
  // Called after each run finished, from the worker that ran it (alerts).
  std::function<void(const RunInfo&)> on_run_finished;
  // Called by the scheduler after it listed the models with a run queued or
  // running and before it stores its decisions, on the scheduler's thread
  // (tests queue a run here, as an API request arriving then would).
  std::function<void()> after_busy_check;
};

struct ServiceOutcome {
  int runs = 0;          // model runs worked on
  int failed_runs = 0;   // ... with a failed mapping run
  int partial_runs = 0;  // ... with failed or rejected records
};

class Service {
 public:
  Service(ServiceOptions options, const Registry& registry, ConnectorEnv env, std::FILE* log);

  // Runs until RequestStop() (or one decision with `once`). Errors: the
  // workspace cannot be loaded at start, the state store cannot be opened,
  // the API address cannot be bound or is not loopback with no API token.
  absl::StatusOr<ServiceOutcome> Run();

  void RequestStop() { stop_.store(true); }

 private:
  ServiceOptions options_;
  const Registry& registry_;
  ConnectorEnv env_;
  std::FILE* log_;
  std::atomic<bool> stop_{false};
};

// Splits "HOST:PORT" ("[::1]:8321" for IPv6). kInvalidArgument when malformed.
absl::Status ParseListenAddress(const std::string& listen, std::string& host, uint16_t& port);
bool IsLoopbackAddress(const std::string& host);

}  // namespace backflow
