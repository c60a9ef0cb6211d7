// SyncEngine: one extraction of a model, synced to one or more of its mappings.
//
//   extract (stream into the spool) -> per mapping: map, fingerprint, merge
//   with the checkpoint -> change set -> deliver in batches -> advance the
//   checkpoint for what the destination accepted.
//
// Guarantees (see ARCHITECTURE.md): a failed or cut-short extraction sends
// nothing and deletes nothing; rows with a NULL or duplicated unique
// identifier are rejected and reported, never sent, never treated as deleted;
// a record that fails is retried by the next run; a process killed at any
// point re-sends at most the batch that was in flight.
// A SyncEngine is used from one thread; each Run() holds an exclusive lock on
// the mappings it syncs (a lock file on this host, and StateStore::LockMapping
// for processes on other hosts sharing the state store), so two processes
// never sync the same mapping at once.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/catalog/registry.h"
#include "backflow/config/workspace.h"
#include "backflow/state/state_store.h"

namespace backflow {

struct SyncProgress {
  std::string phase;  // "extracting", "diffing", "sending", "done"
  std::string mapping;
  int64_t extracted = 0;
  int64_t sent = 0;
  int64_t to_send = 0;
  double elapsed_s = 0;
};

struct SyncOptions {
  bool dry_run = false;
  bool full_resync = false;
  // Lifts every mapping's max_deletes limit for this run.
  bool allow_mass_delete = false;
  std::string trigger = "cli";
  // Called from the syncing thread, at most a few times per second.
  std::function<void(const SyncProgress&)> on_progress;
  // Per run, at most this many failed/rejected records are stored in full
  // (counts are always exact).
  int max_reported_records = 10'000;
  // Memory for sorting the extracted keys (about 40 bytes a row per mapping);
  // beyond it, sorted runs spill to the spool folder.
  size_t sort_memory_bytes = 64 << 20;
  // Dry runs keep this many changes per mapping for display.
  int dry_run_sample = 20;
  // Runs already queued in the state store (and claimed), by mapping name:
  // the engine reports into them instead of creating new runs.
  std::map<std::string, RunInfo> queued_runs;
  // When another thread sets it, the run stops: extraction ends early, no new
  // batch is sent, the batches in flight settle, and every unfinished mapping
  // run ends kCancelled (what was not sent is sent by the next run).
  const std::atomic<bool>* cancel = nullptr;
  // The same for one mapping's run: called from the syncing thread with a
  // mapping name; true when that run was asked to stop (the other mappings
  // go on; extraction stops only when every mapping was cancelled).
  std::function<bool(const std::string& mapping)> cancel_mapping;
};

struct PlannedChange {
  std::string key;
  std::string change;   // added, updated, deleted
  std::string payload;  // JSON
};

struct MappingRunResult {
  RunInfo run;
  std::vector<PlannedChange> sample;  // dry runs only
};

class SyncEngine {
 public:
  // `workspace`, `registry`, `state` and the env's services must outlive the engine.
  SyncEngine(const Workspace& workspace, const Registry& registry, StateStore& state,
             ConnectorEnv env, std::string spool_dir);

  // Extracts `model` once and syncs `mappings` (names of mappings of that
  // model) from it. Errors only when nothing could start or be recorded
  // (unknown names, a mapping locked by another process: IsMappingBusy(),
  // state store unavailable, a queued run taken over by another worker:
  // IsRunTakenOver()); a run that started and failed is a result with
  // status kFailed and its error.
  absl::StatusOr<std::vector<MappingRunResult>> Run(const std::string& model,
                                                    const std::vector<std::string>& mappings,
                                                    const SyncOptions& options);

  // Forgets what `mapping` delivered (StateStore::ResetCheckpoint) while
  // holding its locks, as a run does: an error for which IsMappingBusy() is
  // true while the mapping is being synced.
  absl::Status ResetCheckpoint(const std::string& mapping);

 private:
  const Workspace& workspace_;
  const Registry& registry_;
  StateStore& state_;
  ConnectorEnv env_;
  std::string spool_dir_;
};

}  // namespace backflow
