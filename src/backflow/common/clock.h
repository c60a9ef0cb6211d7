// Clock: the seam through which all code reads time and waits.
//
// Production code uses SystemClock(); tests inject FakeClock so that retries,
// backoff and schedules run instantly and deterministically. Implementations
// are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace backflow {

class Clock {
 public:
  using TimePoint = std::chrono::system_clock::time_point;
  using Duration = std::chrono::nanoseconds;

  virtual ~Clock() = default;
  // Wall-clock time.
  virtual TimePoint Now() const = 0;
  // Blocks the caller for `d` of this clock's time.
  virtual void SleepFor(Duration d) = 0;
};

// The process-wide real clock. Never null, never destroyed.
Clock& SystemClock();

// A manually advanced clock. SleepFor() advances the time instead of blocking,
// and records the total slept so tests can assert on backoff.
class FakeClock : public Clock {
 public:
  explicit FakeClock(TimePoint start = TimePoint(std::chrono::seconds(1'700'000'000)));
  TimePoint Now() const override;
  void SleepFor(Duration d) override;
  void Advance(Duration d);
  Duration total_slept() const;

 private:
  mutable std::mutex mu_;
  TimePoint now_;
  Duration slept_{0};
};

// Seconds since the Unix epoch, with fractions.
double ToUnixSeconds(Clock::TimePoint t);
// "2026-11-26T21:05:11.123Z" (UTC, millisecond precision).
std::string FormatIso8601(Clock::TimePoint t);

}  // namespace backflow
