// CancellingClock: a FakeClock that sets a cancel flag (QueryOptions::cancel,
// SyncOptions::cancel) during its Nth SleepFor(), so tests can cancel a query
// in the middle of its polling without threads or real waits.
#pragma once

#include <atomic>

#include "backflow/common/clock.h"

namespace backflow {

class CancellingClock : public FakeClock {
 public:
  // `flag` must outlive the clock.
  explicit CancellingClock(std::atomic<bool>* flag) : flag_(flag) {}

  // Sets the flag during the `sleeps`th SleepFor() from now on (1: the next
  // one); 0 never sets it.
  void CancelDuringSleep(int sleeps) { after_sleeps_ = sleeps == 0 ? 0 : sleeps_.load() + sleeps; }

  void SleepFor(Duration d) override {
    FakeClock::SleepFor(d);
    if (++sleeps_ == after_sleeps_.load()) flag_->store(true);
  }

  // SleepFor() calls so far.
  int sleeps() const { return sleeps_.load(); }

 private:
  std::atomic<bool>* const flag_;
  std::atomic<int> after_sleeps_{0};
  std::atomic<int> sleeps_{0};
};

}  // namespace backflow
