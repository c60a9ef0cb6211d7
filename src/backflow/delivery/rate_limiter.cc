#include "backflow/delivery/rate_limiter.h"

#include <algorithm>

namespace backflow {

RateLimiter::RateLimiter(Clock& clock, int64_t requests, Clock::Duration window, double margin)
    : clock_(clock),
      requests_(static_cast<size_t>(std::max<int64_t>(1, requests))),
      window_(window +
              std::chrono::duration_cast<Clock::Duration>(window * std::max(0.0, margin))) {}

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
  if (wait > Clock::Duration::zero()) clock_.SleepFor(wait);
  return wait;
}

Clock::Duration RateLimiter::total_wait() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_wait_;
}

}  // namespace backflow
