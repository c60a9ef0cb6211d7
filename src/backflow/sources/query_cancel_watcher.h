// QueryCancelWatcher: for sources whose client library blocks in one call
// until the warehouse answers (MySQL's mysql_real_query, ClickHouse's HTTP
// request waiting for its first bytes), a thread that watches a run's cancel
// flag (QueryOptions::cancel) and, once it reads true, runs a callback that
// asks the warehouse to stop the query from the side (KILL QUERY on a second
// connection), which makes the blocked call return.
//
// Contract: with a null flag nothing is started. Otherwise the flag is read
// every `interval`; the first time it reads true, `on_cancel` runs once on the
// watcher's thread and the watch ends. Stop() (also run by the destructor)
// ends the watch: once it returns, `on_cancel` is not running and never will,
// and fired() says whether it ran. `on_cancel` must be safe to run
// concurrently with whatever the owner's thread does meanwhile (it must not
// touch the owner's connection object; a second connection, or shutdown() of
// a socket that stays open until Stop() returned, is fine).
//
// Thread-safety: Stop() and fired() are called from the owner's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace backflow {

class QueryCancelWatcher {
 public:
  QueryCancelWatcher(const std::atomic<bool>* cancel, std::function<void()> on_cancel,
                     std::chrono::milliseconds interval = std::chrono::milliseconds(100));
  ~QueryCancelWatcher();
  QueryCancelWatcher(const QueryCancelWatcher&) = delete;
  QueryCancelWatcher& operator=(const QueryCancelWatcher&) = delete;

  void Stop();
  // Whether on_cancel ran (complete only after Stop()).
  bool fired() const { return fired_.load(std::memory_order_acquire); }

 private:
  void Run();

  const std::atomic<bool>* const cancel_;
  const std::function<void()> on_cancel_;
  const std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::atomic<bool> fired_{false};
  std::thread thread_;
};

}  // namespace backflow
