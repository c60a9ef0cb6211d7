// AlertDispatcher: hands finished runs to an alert sender on a thread of its
// own, one at a time and in the order they were enqueued, so whoever finished
// the run (a service worker) goes on to the next run at once instead of
// waiting for an alert receiver (AlertManager may hold its caller about a
// minute per alert when the receiver is down).
//
// Nothing enqueued is dropped: Close() (and the destructor) waits until every
// run enqueued before it has been handed to the sender, then stops the
// thread; a run enqueued after Close() is handed over on the caller's thread.
// Thread-safe; the sender is only ever called from one thread at a time.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "backflow/state/state_store.h"

namespace backflow {

class AlertDispatcher {
 public:
  using Sender = std::function<void(const RunInfo&)>;

  explicit AlertDispatcher(Sender send);
  ~AlertDispatcher();
  AlertDispatcher(const AlertDispatcher&) = delete;
  AlertDispatcher& operator=(const AlertDispatcher&) = delete;

  // Queues the run for the sender; never waits for it.
  void Enqueue(RunInfo run);
  // Sends what is queued, then stops the thread. Idempotent.
  void Close();
  // Runs enqueued and not yet handed to the sender, plus the one being sent.
  size_t pending() const;

 private:
  void Loop();

  Sender send_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RunInfo> queue_;
  bool sending_ = false;
  bool closing_ = false;  // Close() was called: the thread drains the queue and ends
  std::mutex send_mu_;    // the sender runs under it: one call at a time
  std::thread thread_;
};

}  // namespace backflow
