// RateLimiter: at most N requests in any window of length W, the way vendors
// state their limits ("190 requests per 10 seconds").
//
// A sliding-window log: a request may start once fewer than N requests
// started in the W' before it, where W' is W plus a safety margin (2% of W
// by default), so no window of length W ever holds more than N starts and
// the requests' *arrivals* at the vendor stay within the limit too, as long
// as network latency varies by less than the margin. Under saturation the
// rate converges to N/W' (98% of the limit). One limiter is shared by every
// mapping that sends to the same destination.
// Thread-safe: each caller reserves its start time under a lock, then waits
// outside it on the injected Clock (instant with a FakeClock).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>

#include "backflow/common/clock.h"

namespace backflow {

class RateLimiter {
 public:
  // Requires: requests >= 1, window > 0, margin >= 0; `clock` outlives the
  // limiter.
  RateLimiter(Clock& clock, int64_t requests, Clock::Duration window, double margin = 0.02);

  // Waits until one more request may start and returns how long it waited.
  Clock::Duration Acquire();

  // Total time callers have waited, for metrics.
  Clock::Duration total_wait() const;
  // Total time callers of every limiter in this process have waited (the
  // service's backflow_rate_limit_wait_seconds_total).
  static Clock::Duration process_total_wait();

 private:
  Clock& clock_;
  const size_t requests_;
  const Clock::Duration window_;
  mutable std::mutex mu_;
  std::deque<Clock::TimePoint> starts_;  // the last `requests_` reserved start times
  Clock::Duration total_wait_{0};
};

}  // namespace backflow
