// QueryCancelWatcher: for sources whose client library blocks in one call
// until the warehouse answers (MySQL's mysql_real_query, ClickHouse's HTTP
// request waiting for its first bytes), a thread that watches a run's cancel
// flag (QueryOptions::cancel) and, once it reads true, runs a callback that
// asks the warehouse to stop the query from the side (KILL QUERY on a second
// connection), which makes the blocked call return.
//
// Contract: with a null flag nothing is started. Otherwise the flag is read
// every `interval`; the first time it reads true, `on_cancel` runs on the
// watcher's thread and the watch ends, or, with `Repeat::kUntilStopped`, runs
// again every `interval` until Stop() (a cancel request that reaches a server
// before its statement has started is ignored there; an owner whose statements
// all check the flag before they are sent, so that nothing new starts once it
// is set, can repeat safely). Stop() (also run by the destructor) ends the
// watch: once it returns, `on_cancel` is not running and never will, and
// fired() says whether it ran. `on_cancel` must be safe to run
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
  enum class Repeat { kOnce, kUntilStopped };
  QueryCancelWatcher(const std::atomic<bool>* cancel, std::function<void()> on_cancel,
                     std::chrono::milliseconds interval = std::chrono::milliseconds(100),
                     Repeat repeat = Repeat::kOnce);
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
  const Repeat repeat_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::atomic<bool> fired_{false};
  std::thread thread_;
};

}  // namespace backflow
