#include "backflow/common/clock.h"

#include <ctime>
#include <string>
#include <thread>

#include "fmt/format.h"

namespace backflow {
namespace {

class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::system_clock::now(); }
  void SleepFor(Duration d) override { std::this_thread::sleep_for(d); }
};

}  // namespace

Clock& SystemClock() {
  static RealClock* clock = new RealClock();
  return *clock;
}

FakeClock::FakeClock(TimePoint start) : now_(start) {}

Clock::TimePoint FakeClock::Now() const {
  std::lock_guard<std::mutex> lock(mu_);
  return now_;
}

void FakeClock::SleepFor(Duration d) {
  std::lock_guard<std::mutex> lock(mu_);
  now_ += std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
  slept_ += d;
}

void FakeClock::Advance(Duration d) {
  std::lock_guard<std::mutex> lock(mu_);
  now_ += std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
}

Clock::Duration FakeClock::total_slept() const {
  std::lock_guard<std::mutex> lock(mu_);
  return slept_;
}

double ToUnixSeconds(Clock::TimePoint t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

std::string FormatIso8601(Clock::TimePoint t) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
}

}  // namespace backflow
