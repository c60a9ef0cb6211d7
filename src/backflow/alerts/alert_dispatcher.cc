#include "backflow/alerts/alert_dispatcher.h"

#include <utility>

namespace backflow {

AlertDispatcher::AlertDispatcher(Sender send)
    : send_(std::move(send)), thread_([this] { Loop(); }) {}

AlertDispatcher::~AlertDispatcher() { Close(); }

void AlertDispatcher::Enqueue(RunInfo run) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closing_) {
      queue_.push_back(std::move(run));
      cv_.notify_all();
      return;
    }
  }
  std::lock_guard<std::mutex> send_lock(send_mu_);
  send_(run);
}

void AlertDispatcher::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) return;
    closing_ = true;
    cv_.notify_all();
  }
  thread_.join();
}

size_t AlertDispatcher::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size() + (sending_ ? 1 : 0);
}

void AlertDispatcher::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
    if (queue_.empty()) return;  // closing, and everything was sent
    RunInfo run = std::move(queue_.front());
    queue_.pop_front();
    sending_ = true;
    lock.unlock();
    {
      std::lock_guard<std::mutex> send_lock(send_mu_);
      send_(run);
    }
    lock.lock();
    sending_ = false;
  }
}

}  // namespace backflow
