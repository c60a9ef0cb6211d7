#include "backflow/delivery/rate_limiter.h"

#include <gtest/gtest.h>

#include <random>
#include <thread>
#include <vector>

namespace backflow {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Counts the starts in every window [t, t + window) that begins at a start.
size_t MaxInAnyWindow(const std::vector<Clock::TimePoint>& starts, Clock::Duration window) {
  size_t best = 0, j = 0;
  for (size_t i = 0; i < starts.size(); ++i) {
    while (j < starts.size() && starts[j] < starts[i] + window) ++j;
    best = std::max(best, j - i);
  }
  return best;
}

TEST(RateLimiterTest, NeverExceedsTheLimitInAnyWindowAndReachesIt) {
  FakeClock clock;
  RateLimiter limiter(clock, 190, seconds(10));  // HubSpot-style: 190 per 10 s
  std::vector<Clock::TimePoint> starts;
  Clock::TimePoint begin = clock.Now();
  for (int i = 0; i < 19'000; ++i) {
    limiter.Acquire();
    starts.push_back(clock.Now());
  }
  EXPECT_LE(MaxInAnyWindow(starts, seconds(10)), 190u);
  double elapsed = std::chrono::duration<double>(starts.back() - begin).count();
  double rate = (starts.size() - 1) / elapsed;
  // Within 5% of 19/s; slightly above only because the first window's 190 go at once.
  EXPECT_NEAR(rate, 19.0, 19.0 * 0.05) << rate;
}

TEST(RateLimiterTest, IrregularCallersStayUnderTheLimitAndIdleTimeIsNotBanked) {
  FakeClock clock;
  RateLimiter limiter(clock, 3, seconds(1));  // Braze-style small window
  std::mt19937 rng(7);
  std::vector<Clock::TimePoint> starts;
  for (int i = 0; i < 5'000; ++i) {
    clock.Advance(milliseconds(rng() % 700));  // work between requests
    limiter.Acquire();
    starts.push_back(clock.Now());
  }
  EXPECT_LE(MaxInAnyWindow(starts, seconds(1)), 3u);
  // After a long pause only one window's worth may go at once.
  clock.Advance(seconds(60));
  Clock::TimePoint t = clock.Now();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(limiter.Acquire(), Clock::Duration::zero());
  EXPECT_GT(limiter.Acquire(), Clock::Duration::zero());
  EXPECT_GE(clock.Now() - t, seconds(1));
  EXPECT_GT(limiter.total_wait(), Clock::Duration::zero());
}

TEST(RateLimiterTest, ConcurrentCallersShareOneLimiter) {
  RateLimiter limiter(SystemClock(), 1'000'000, seconds(1));  // never waits: checks races only
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2'000; ++i) limiter.Acquire();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(limiter.total_wait(), Clock::Duration::zero());
}

}  // namespace
}  // namespace backflow
