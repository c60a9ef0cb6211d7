#include "backflow/common/clock.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

TEST(FakeClockTest, SleepAdvancesTimeAndRecordsIt) {
  FakeClock clock;
  auto start = clock.Now();
  clock.SleepFor(std::chrono::seconds(3));
  clock.Advance(std::chrono::seconds(2));
  EXPECT_EQ(clock.Now() - start, std::chrono::seconds(5));
  EXPECT_EQ(clock.total_slept(), std::chrono::seconds(3));
}

TEST(ClockTest, FormatsIso8601InUtc) {
  Clock::TimePoint t{std::chrono::milliseconds(1'700'000'000'123)};
  EXPECT_EQ(FormatIso8601(t), "2023-11-14T22:13:20.123Z");
  EXPECT_DOUBLE_EQ(ToUnixSeconds(t), 1'700'000'000.123);
}

}  // namespace
}  // namespace backflow
