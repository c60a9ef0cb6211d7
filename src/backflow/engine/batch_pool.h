// BatchPool: delivers batches through up to N sessions of one mapping at once.
//
// Each session has one batch in flight at most, sent on the session's own
// worker thread, so the caller can read the next batch while one is
// being sent. The caller (one thread) submits jobs while HasIdle(), and
// collects finished jobs with WaitDone() in completion order, so every
// state-store write stays on the caller's thread. The destructor waits for
// batches in flight to finish (a batch is never abandoned mid-request).
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/common/hash.h"
#include "backflow/destinations/destination.h"
#include "backflow/state/state_store.h"

namespace backflow {

struct BatchJob {
  std::vector<OutgoingRecord> records;
  std::vector<Fingerprint> fingerprints;  // per record
  std::vector<InFlightEntry> in_flight;   // per record, as marked before sending
  std::vector<std::string> row_hashes;    // per record, warehouse change detection only
  // Set when done: SendBatch's result.
  absl::StatusOr<std::vector<absl::Status>> outcomes;
};

class BatchPool {
 public:
  // Requires: at least one session.
  explicit BatchPool(std::vector<std::unique_ptr<ActionSession>> sessions);
  ~BatchPool();
  BatchPool(const BatchPool&) = delete;
  BatchPool& operator=(const BatchPool&) = delete;

  // Whether Submit() may be called: a session is free and every finished job
  // has been collected (so the caller sees each outcome, a refusal say,
  // before it sends more).
  bool HasIdle() const;
  // Requires: HasIdle().
  void Submit(std::unique_ptr<BatchJob> job);
  // Jobs submitted and not yet returned by WaitDone().
  int outstanding() const;
  // Whether WaitDone() would return without blocking.
  bool HasDone() const;
  // Blocks until a job is done. Requires: outstanding() > 0.
  std::unique_ptr<BatchJob> WaitDone();
  // Calls Finish() on every session; the first error wins. Requires:
  // outstanding() == 0.
  absl::Status FinishAll();

 private:
  struct Worker {
    ActionSession* session = nullptr;
    std::unique_ptr<BatchJob> job;  // the job to run, null when idle
    bool busy = false;
    std::thread thread;
  };
  void Loop(Worker* w);

  std::vector<std::unique_ptr<ActionSession>> sessions_;
  std::vector<std::unique_ptr<Worker>> workers_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::deque<std::unique_ptr<BatchJob>> done_;
  int outstanding_ = 0;
  bool stopping_ = false;
};

}  // namespace backflow
