#include "backflow/sources/query_cancel_watcher.h"

#include <utility>

#include "backflow/sources/source.h"

namespace backflow {

QueryCancelWatcher::QueryCancelWatcher(const std::atomic<bool>* cancel,
                                       std::function<void()> on_cancel,
                                       std::chrono::milliseconds interval, Repeat repeat)
    : cancel_(cancel), on_cancel_(std::move(on_cancel)), interval_(interval), repeat_(repeat) {
  if (cancel_ != nullptr) thread_ = std::thread([this] { Run(); });
}

QueryCancelWatcher::~QueryCancelWatcher() { Stop(); }

void QueryCancelWatcher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void QueryCancelWatcher::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (QueryCancelRequested(cancel_)) {
      lock.unlock();
      on_cancel_();
      fired_.store(true, std::memory_order_release);
      if (repeat_ == Repeat::kOnce) return;
      lock.lock();
    }
    cv_.wait_for(lock, interval_, [this] { return stopping_; });
  }
}

}  // namespace backflow
