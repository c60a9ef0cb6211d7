#include "backflow/delivery/rate_limiter.h"

#include <algorithm>
#include <atomic>

namespace backflow {

RateLimiter::RateLimiter(Clock& clock, int64_t requests, Clock::Duration window, double margin)
    : clock_(clock),
      requests_(static_cast<size_t>(std::max<int64_t>(1, requests))),
      window_(window +
              std::chrono::duration_cast<Clock::Duration>(window * std::max(0.0, margin))) {}

namespace {
std::atomic<int64_t> g_process_wait_ns{0};
}  // namespace

Clock::Duration RateLimiter::process_total_wait() {
  return std::chrono::nanoseconds(g_process_wait_ns.load(std::memory_order_relaxed));
}

Clock::Duration RateLimiter::Acquire() {
  Clock::TimePoint start;
  Clock::Duration wait{0};
  {
    std::lock_guard<std::mutex> lock(mu_);
    Clock::TimePoint now = clock_.Now();
    start = now;
    if (starts_.size() >= requests_) {
      // The oldest of the last N starts leaves the window at `oldest + window`.
      start = std::max(
          now, starts_.front() + std::chrono::duration_cast<Clock::TimePoint::duration>(window_));
      starts_.pop_front();
    }
    starts_.push_back(start);
    wait = start - now;
    total_wait_ += wait;
  }
  g_process_wait_ns.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count(),
                              std::memory_order_relaxed);
  if (wait > Clock::Duration::zero()) clock_.SleepFor(wait);
  return wait;
}

Clock::Duration RateLimiter::total_wait() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_wait_;
}

}  // namespace backflow
