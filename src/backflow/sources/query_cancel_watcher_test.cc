#include "backflow/sources/query_cancel_watcher.h"

#include <atomic>
#include <chrono>
#include <future>

#include "gtest/gtest.h"

namespace backflow {
namespace {

TEST(QueryCancelWatcherTest, RunsTheCallbackOnceWhenTheFlagIsSet) {
  std::atomic<bool> cancel{false};
  std::atomic<int> calls{0};
  std::promise<void> called;
  QueryCancelWatcher watcher(
      &cancel,
      [&] {
        if (calls.fetch_add(1) == 0) called.set_value();
      },
      std::chrono::milliseconds(5));
  EXPECT_FALSE(watcher.fired());
  cancel = true;
  // An event, not a timer: the callback signals it ran.
  ASSERT_EQ(called.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
  watcher.Stop();
  EXPECT_TRUE(watcher.fired());
  EXPECT_EQ(calls.load(), 1);
}

TEST(QueryCancelWatcherTest, RepeatingRunsTheCallbackAgainUntilStopped) {
  std::atomic<bool> cancel{false};
  std::atomic<int> calls{0};
  std::promise<void> third;
  QueryCancelWatcher watcher(
      &cancel,
      [&] {
        if (calls.fetch_add(1) == 2) third.set_value();
      },
      std::chrono::milliseconds(5), QueryCancelWatcher::Repeat::kUntilStopped);
  cancel = true;
  ASSERT_EQ(third.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
  watcher.Stop();
  EXPECT_TRUE(watcher.fired());
  const int after_stop = calls.load();
  EXPECT_GE(after_stop, 3);
  // Stopped: never again (the watcher's thread has been joined).
  EXPECT_EQ(calls.load(), after_stop);
}

TEST(QueryCancelWatcherTest, StoppedBeforeTheFlagNeverRunsTheCallback) {
  std::atomic<bool> cancel{false};
  std::atomic<int> calls{0};
  {
    QueryCancelWatcher watcher(
        &cancel, [&] { ++calls; }, std::chrono::hours(1));
    watcher.Stop();
    cancel = true;  // after Stop(): ignored
    EXPECT_FALSE(watcher.fired());
  }
  EXPECT_EQ(calls.load(), 0);
}

TEST(QueryCancelWatcherTest, AFlagAlreadySetFiresWithoutWaitingForAnInterval) {
  std::atomic<bool> cancel{true};
  std::promise<void> called;
  // An interval of an hour: the first check happens before any wait.
  QueryCancelWatcher watcher(
      &cancel, [&] { called.set_value(); }, std::chrono::hours(1));
  ASSERT_EQ(called.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
  watcher.Stop();
  EXPECT_TRUE(watcher.fired());
}

TEST(QueryCancelWatcherTest, NullFlagStartsNothing) {
  bool called = false;
  QueryCancelWatcher watcher(nullptr, [&] { called = true; });
  watcher.Stop();
  EXPECT_FALSE(watcher.fired());
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace backflow
