// StateStore: durable run history, per-record failures and per-mapping
// checkpoints (what each mapping last delivered successfully).
//
// The checkpoint of a mapping maps a record key to the fingerprint of the
// payload the destination last accepted, plus the identity values a delete
// needs. It only advances through ApplyCheckpoint() (or ApplyAndMark()),
// which the engine calls after the destination acknowledged records.
//
// Records are marked in flight (MarkInFlight) durably before they are sent and
// settled by ApplyCheckpoint(); ApplyAndMark() does both in one durable write
// (the batches that came back, the next batch). A record still in flight when
// the next run starts (the process died, or the reply was ambiguous) may or
// may not have reached the destination, so that run sends its current state
// again (or a delete, if the model no longer has it): a crash re-sends at most
// the batches in flight, and never loses a change.
//
// Runs started by `backflow sync` are created directly (CreateRun). Runs
// requested through the service are queued first, by the API
// (EnqueueRunsUnlessActive) or by the scheduler (AdvanceSchedule), and taken
// by a worker (ClaimRuns) under a lease it renews while it works; a run whose
// lease expired (its worker died) is taken again by the next ClaimRuns and
// finished from the in-flight journal.
//
// Several processes may share one store (PostgreSQL): a schedule tick is
// queued by whichever of them advances the model's schedule state first
// (AdvanceSchedule), a run's row only takes the writes of the worker holding
// it (UpdateRun), and LockMapping keeps two processes from syncing one
// mapping at once.
//
// Implementations are used from one thread at a time; ScanCheckpoint() readers
// see a consistent snapshot even while ApplyCheckpoint() commits. A checkpoint
// scan verifies what it read against a count and checksum kept with the
// checkpoint, and fails with kDataLoss at its end if the store was damaged.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "backflow/common/hash.h"

namespace backflow {

enum class RunStatus {
  kQueued,
  kRunning,
  kSucceeded,
  kPartial,
  kFailed,
  kInterrupted,
  kCancelled,
};
std::string_view RunStatusName(RunStatus s);
absl::StatusOr<RunStatus> ParseRunStatus(std::string_view name);

struct RunCounts {
  int64_t extracted = 0;
  int64_t added = 0;
  int64_t updated = 0;
  int64_t deleted = 0;
  int64_t unchanged = 0;
  int64_t skipped = 0;  // changes the mapping's record selection does not send
  int64_t succeeded = 0;
  int64_t failed = 0;
  int64_t rejected = 0;
};

struct RunInfo {
  int64_t id = 0;
  std::string mapping;
  std::string model;
  std::string destination;
  std::string trigger = "cli";
  bool dry_run = false;
  bool full_resync = false;
  RunStatus status = RunStatus::kRunning;
  std::string started_at;   // ISO-8601 UTC
  std::string finished_at;  // empty while running
  double duration_s = 0;
  // Time spent per phase: reading the model, change detection, sending.
  double extract_s = 0;
  double diff_s = 0;
  double deliver_s = 0;
  RunCounts counts;
  std::string error;  // run-level error, empty when none
  int64_t pid = 0;
  // Queued runs only (0 / empty otherwise). Runs queued together (the
  // mappings of one model run) share request_id, the id of the first of them.
  int64_t request_id = 0;
  std::string requested_at;  // ISO-8601 UTC
  std::string worker;        // the worker holding (or that last held) the run
  bool cancel_requested = false;
};

// What ListRuns returns: newest first, at most `limit`, only ids below
// `before_id` when it is not 0 (the cursor of the next page).
struct RunFilter {
  std::string mapping;  // empty: every mapping
  std::string model;    // empty: every model
  std::optional<RunStatus> status;
  int limit = 50;
  int64_t before_id = 0;
};

// An API token as stored: only a hash of the token itself.
struct ApiToken {
  std::string name;
  std::string token_hash;  // lowercase hex SHA-256 of the token
  bool read_only = false;
  std::string created_at;    // ISO-8601 UTC
  std::string last_used_at;  // empty when never used
};

struct LeaseRenewal {
  std::vector<int64_t> cancel_requested;
  std::vector<int64_t> lost;  // no longer running under this worker's lease
};

struct SecretInfo {
  std::string name;
  std::string updated_at;  // ISO-8601 UTC
};

struct RunRecord {
  std::string key;
  std::string outcome;  // "failed" or "rejected"
  std::string change;   // "added", "updated", "deleted" or "" for rejected rows
  std::string error;
  std::string error_class;  // see RetryClassName()
  std::string payload;      // JSON of what was (or would have been) sent
  std::string recommended_action;
};

struct CheckpointEntry {
  std::string key;
  Fingerprint fingerprint;
  std::string identity;  // EncodeRow() of the identity values
};

struct CheckpointUpdate {
  enum class Kind {
    kUpsert,  // the destination holds this payload (fingerprint, identity)
    kRemove,  // the record was deleted in the destination
    kSettle,  // the destination definitely did not change: only clears "in flight"
  };
  std::string key;
  Kind kind = Kind::kUpsert;
  Fingerprint fingerprint;
  std::string identity;
};

struct InFlightEntry {
  std::string key;
  std::string identity;  // EncodeRow() of the identity values sent
};

struct ScheduleState {
  int64_t last_tick = 0;      // Unix seconds
  int64_t skipped_ticks = 0;  // ticks not run because the previous run was still going
  int64_t missed_ticks = 0;   // ticks that fell in downtime and were folded into one run
};

// An exclusive hold on one mapping, released when destroyed (or when the
// process holding it dies).
class MappingLockHandle {
 public:
  virtual ~MappingLockHandle() = default;
};

// Ordered reader over one mapping's checkpoint.
// A CheckpointEntry as views into its scanner's buffers.
struct CheckpointEntryView {
  std::string_view key;
  Fingerprint fingerprint;
  std::string_view identity;
};

class CheckpointScanner {
 public:
  virtual ~CheckpointScanner() = default;
  // Next entry in ascending byte order of key; false at the end.
  virtual absl::StatusOr<bool> Next(CheckpointEntry& entry) = 0;
  // Next(), as views valid until the next call on this scanner. The default
  // copies through Next(); scanners over buffers they own return views.
  virtual absl::StatusOr<bool> NextView(CheckpointEntryView& entry);
  // Before the first entry: asks the scanner to read ahead of its consumer
  // on a thread of its own. True when it does (or has nothing to read), so
  // the caller need not wrap it (PrefetchCheckpointScanner); the entries are
  // the same either way.
  virtual bool StartReadAhead() { return false; }

 private:
  CheckpointEntry view_buffer_;  // the default NextView()'s entry
};

class StateStore {
 public:
  virtual ~StateStore() = default;

  // Inserts a run in status kRunning and returns its id.
  virtual absl::StatusOr<int64_t> CreateRun(const RunInfo& run) = 0;
  // Writes the run's counts, status, error and end time, provided the run is
  // still held by `run.worker` (empty for runs created with CreateRun): a
  // worker that lost its lease cannot overwrite the row of the worker that
  // took the run over. Refused writes fail with RunTakenOverError().
  virtual absl::Status UpdateRun(const RunInfo& run) = 0;
  // Appends failed/rejected records to a run (not guarded by the worker: the
  // mapping lock keeps a worker that lost its lease from running alongside
  // the one that took over, and what it reports happened).
  virtual absl::Status AddRunRecords(int64_t run_id, const std::vector<RunRecord>& records) = 0;
  // kNotFound for an unknown id.
  virtual absl::StatusOr<RunInfo> GetRun(int64_t id) = 0;
  virtual absl::StatusOr<std::vector<RunInfo>> ListRuns(const RunFilter& filter) = 0;
  // Newest first; `mapping` empty means all mappings.
  absl::StatusOr<std::vector<RunInfo>> ListRuns(const std::string& mapping, int limit) {
    RunFilter f;
    f.mapping = mapping;
    f.limit = limit;
    return ListRuns(f);
  }
  // `outcome` empty means all outcomes.
  virtual absl::StatusOr<std::vector<RunRecord>> GetRunRecords(int64_t run_id,
                                                               const std::string& outcome,
                                                               int limit) = 0;
  // Marks runs left in kRunning by processes that no longer exist as
  // kInterrupted (runs under a lease are left to ClaimRuns). Returns how many
  // were marked.
  virtual absl::StatusOr<int> MarkInterruptedRuns() = 0;

  // --- Run queue -----------------------------------------------------------
  // Runs are queued here and by AdvanceSchedule (the scheduler's path); both
  // refuse a mapping that already has a run queued or running, under the same
  // serialization, so a mapping never has two runs queued or running at once.
  //
  // Queues one run per element (status kQueued, requested_at as given) under
  // one request id, whose ids it returns in order; unless a mapping of `runs`
  // already has a run queued or running: then nothing is queued and that run
  // (the oldest such) is returned instead. Check and insert are one
  // transaction, serialized against every other call on the same store (from
  // any process), so of two concurrent calls for a mapping only one queues.
  struct EnqueueOutcome {
    std::vector<int64_t> ids;       // queued runs, in order; empty when `active` is set
    std::optional<RunInfo> active;  // the run that kept them from being queued
  };
  virtual absl::StatusOr<EnqueueOutcome> EnqueueRunsUnlessActive(
      const std::vector<RunInfo>& runs) = 0;
  // Takes, for `worker` until now + lease, the oldest request that is queued
  // or whose lease expired; its runs (those not cancelled) become kRunning
  // with started_at = now when they were queued. Empty when nothing is due.
  // Safe to call from several processes at once: a request goes to one worker.
  virtual absl::StatusOr<std::vector<RunInfo>> ClaimRuns(const std::string& worker, absl::Time now,
                                                         absl::Duration lease) = 0;
  // Extends the worker's leases on its running runs and says which of them
  // to stop: cancellation requested, or the lease lost to another worker.
  virtual absl::StatusOr<LeaseRenewal> RenewLeases(const std::string& worker,
                                                   const std::vector<int64_t>& run_ids,
                                                   absl::Time now, absl::Duration lease) = 0;
  // Hands the worker's unfinished runs back to the queue (graceful shutdown).
  virtual absl::Status ReleaseRuns(const std::string& worker) = 0;
  // A queued run becomes kCancelled at once; a running one is flagged
  // cancel_requested for its worker. kFailedPrecondition when the run has
  // finished, kNotFound for an unknown id. Returns the run as it now is.
  virtual absl::StatusOr<RunInfo> CancelRun(int64_t id, absl::Time now) = 0;
  virtual absl::StatusOr<int64_t> CountRuns(RunStatus status) = 0;

  // --- API tokens ------------------------------------------------------------
  // kAlreadyExists when a token of that name exists.
  virtual absl::Status CreateApiToken(const ApiToken& token) = 0;
  // Looks a token up by hash and notes `now` as its last use.
  virtual absl::StatusOr<std::optional<ApiToken>> UseApiToken(const std::string& token_hash,
                                                              absl::Time now) = 0;
  virtual absl::StatusOr<std::vector<ApiToken>> ListApiTokens() = 0;
  // kNotFound for an unknown name.
  virtual absl::Status RevokeApiToken(const std::string& name) = 0;

  // --- Secrets (ciphertext only; see secrets/secret_box.h) -------------------
  virtual absl::Status PutSecret(const std::string& name, const std::string& ciphertext,
                                 absl::Time now) = 0;
  virtual absl::StatusOr<std::optional<std::string>> GetSecret(const std::string& name) = 0;
  virtual absl::StatusOr<std::vector<SecretInfo>> ListSecrets() = 0;
  // kNotFound for an unknown name.
  virtual absl::Status DeleteSecret(const std::string& name) = 0;

  // --- Alert incidents: a small opaque value per key (alerts/) ---------------
  virtual absl::StatusOr<std::optional<std::string>> GetAlertState(const std::string& key) = 0;
  virtual absl::Status SetAlertState(const std::string& key, const std::string& value) = 0;

  virtual absl::StatusOr<std::unique_ptr<CheckpointScanner>> ScanCheckpoint(
      const std::string& mapping) = 0;
  // Applies all updates atomically and durably; every updated key is also
  // settled (no longer in flight).
  virtual absl::Status ApplyCheckpoint(const std::string& mapping,
                                       const std::vector<CheckpointUpdate>& updates) = 0;
  // Called by the engine when a mapping's run has applied its last update: a
  // store may compact what was applied (e.g. fold a journal) so that the next
  // ScanCheckpoint() starts at once. Scans are correct without it.
  virtual absl::Status CommitCheckpoint(const std::string& mapping) {
    (void)mapping;
    return absl::OkStatus();
  }
  // Durably records that these records are about to be sent.
  virtual absl::Status MarkInFlight(const std::string& mapping,
                                    const std::vector<InFlightEntry>& entries) = 0;
  // ApplyCheckpoint(updates) then MarkInFlight(entries), durable together when
  // it returns (the engine settles the batches that came back as it marks the
  // next one). Interrupted, it leaves nothing, the updates, or both; never the
  // marks without the updates. Stores that can should write both with one
  // sync; this default makes the two calls.
  virtual absl::Status ApplyAndMark(const std::string& mapping,
                                    const std::vector<CheckpointUpdate>& updates,
                                    const std::vector<InFlightEntry>& entries) {
    absl::Status applied = ApplyCheckpoint(mapping, updates);
    if (!applied.ok()) return applied;
    return MarkInFlight(mapping, entries);
  }
  // The records still in flight, in ascending byte order of key (entries'
  // fingerprints are zero).
  virtual absl::StatusOr<std::unique_ptr<CheckpointScanner>> ScanInFlight(
      const std::string& mapping) = 0;
  virtual absl::StatusOr<int64_t> CheckpointSize(const std::string& mapping) = 0;
  // Forgets everything the mapping delivered: its next run starts over.
  virtual absl::Status ResetCheckpoint(const std::string& mapping) = 0;

  // The scheduler's memory per model: the last schedule tick it acted on
  // (ran or skipped), as Unix seconds, and how many ticks it skipped in all.
  // nullopt when the model was never scheduled.
  virtual absl::StatusOr<std::optional<ScheduleState>> GetScheduleState(
      const std::string& model) = 0;
  virtual absl::Status SetScheduleState(const std::string& model, const ScheduleState& state) = 0;
  // Compare-and-set of a model's schedule state, across processes, together
  // with the runs of the decided tick, in one transaction:
  //  - when the stored state's last_tick is no longer `expected_last_tick`
  //    (nullopt: the model has no state yet), another process decided first:
  //    nothing is written (kDecidedElsewhere);
  //  - else, when a mapping of `runs` has a run queued or running, `runs` are
  //    not queued and `next_if_busy` is stored: the tick counts as skipped,
  //    as the planner counts the tick of a busy model (kSkippedBusy, naming
  //    the oldest such run);
  //  - else `next` is stored and `runs` are queued as one request (none when
  //    empty) whose ids are returned in order (kQueued).
  // The check for active runs is serialized with EnqueueRunsUnlessActive's
  // (from any process): of a tick and a concurrent API request for one
  // mapping, only one queues.
  struct AdvanceOutcome {
    enum class Result { kQueued, kSkippedBusy, kDecidedElsewhere };
    Result result = Result::kQueued;
    std::vector<int64_t> ids;       // kQueued: the queued runs, in order
    std::optional<RunInfo> active;  // kSkippedBusy: the run that kept `runs` from being queued
  };
  virtual absl::StatusOr<AdvanceOutcome> AdvanceSchedule(const std::string& model,
                                                         std::optional<int64_t> expected_last_tick,
                                                         const ScheduleState& next,
                                                         const std::vector<RunInfo>& runs,
                                                         const ScheduleState& next_if_busy) = 0;

 protected:
  // The end of an AdvanceSchedule() whose compare-and-set ran (`stored`: it
  // wrote the state) after `out.active` was looked up: kDecidedElsewhere,
  // kSkippedBusy, or kQueued with the ids `queue` returns (called only then).
  static absl::Status FinishAdvance(
      bool stored, AdvanceOutcome& out,
      const std::function<absl::StatusOr<std::vector<int64_t>>()>& queue);

 public:
  // --- Mapping locks ---------------------------------------------------------
  // Holds `mapping` for one sync against every process sharing this store,
  // until the handle is destroyed. When another process holds it: an error
  // for which IsMappingBusy() is true, naming the holder when the store can
  // tell. The handle may outlive the store. A store whose processes all run
  // on one host (SQLite) returns a handle that holds nothing: the engine's
  // lock file covers that host.
  virtual absl::StatusOr<std::unique_ptr<MappingLockHandle>> LockMapping(
      const std::string& mapping) = 0;
};

// kAborted: the run is held by another worker now (`holder`); `worker` lost
// it and its write was not applied.
absl::Status RunTakenOverError(int64_t run_id, const std::string& worker,
                               const std::string& holder);
bool IsRunTakenOver(const absl::Status& status);

// kFailedPrecondition: another process is syncing `mapping`; `holder`
// describes it (may be empty when unknown).
absl::Status MappingBusyError(const std::string& mapping, const std::string& holder);
bool IsMappingBusy(const absl::Status& status);

// kDataLoss: the checkpoint of `mapping` in `store` (e.g. "the state store")
// is damaged (`detail`). Says that nothing was sent, what to restore from a
// backup (`backup`, e.g. "the state folder") and how to start the mapping over.
absl::Status DamagedCheckpointError(const std::string& mapping, const std::string& detail,
                                    const std::string& store = "the state store",
                                    const std::string& backup = "the state folder");

// Opens (creating and migrating if needed) a SQLite state store at `path`.
absl::StatusOr<std::unique_ptr<StateStore>> OpenSqliteStateStore(const std::string& path);

}  // namespace backflow
