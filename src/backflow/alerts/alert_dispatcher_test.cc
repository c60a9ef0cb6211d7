#include "backflow/alerts/alert_dispatcher.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>
#include <vector>

namespace backflow {
namespace {

RunInfo FinishedRun(int64_t id) {
  RunInfo run;
  run.id = id;
  run.mapping = "m";
  return run;
}

// The sender is held until the test lets it go: Enqueue() returning while it
// is held is what a worker relies on.
TEST(AlertDispatcherTest, EnqueueNeverWaitsForTheSender) {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::mutex mu;
  std::vector<int64_t> sent;
  std::vector<std::thread::id> threads;
  AlertDispatcher dispatcher([&](const RunInfo& run) {
    released.wait();
    std::lock_guard<std::mutex> lock(mu);
    sent.push_back(run.id);
    threads.push_back(std::this_thread::get_id());
  });
  for (int64_t id = 1; id <= 3; ++id) dispatcher.Enqueue(FinishedRun(id));
  EXPECT_EQ(dispatcher.pending(), 3u);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(sent.empty());
  }
  release.set_value();
  dispatcher.Close();
  EXPECT_EQ(dispatcher.pending(), 0u);
  EXPECT_EQ(sent, (std::vector<int64_t>{1, 2, 3}));  // in order
  ASSERT_EQ(threads.size(), 3u);
  EXPECT_NE(threads[0], std::this_thread::get_id());
  EXPECT_EQ(threads[0], threads[2]);
}

// Stopping the service loses no alert: Close() sends what was queued.
TEST(AlertDispatcherTest, CloseSendsEverythingQueuedFirst) {
  std::vector<int64_t> sent;
  {
    AlertDispatcher dispatcher([&](const RunInfo& run) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      sent.push_back(run.id);
    });
    for (int64_t id = 1; id <= 20; ++id) dispatcher.Enqueue(FinishedRun(id));
    dispatcher.Close();
    EXPECT_EQ(sent.size(), 20u);
    dispatcher.Close();  // idempotent
    // After Close(): sent at once, on the caller's thread.
    dispatcher.Enqueue(FinishedRun(21));
    EXPECT_EQ(sent.size(), 21u);
  }
  for (size_t i = 0; i < sent.size(); ++i) EXPECT_EQ(sent[i], static_cast<int64_t>(i + 1));
}

// Several workers enqueue at once; the sender is never called concurrently.
TEST(AlertDispatcherTest, SendsOneAtATimeWhateverTheEnqueuers) {
  std::atomic<int> inside{0};
  std::atomic<int> most{0};
  std::atomic<int> count{0};
  AlertDispatcher dispatcher([&](const RunInfo&) {
    int now = ++inside;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::yield();
    --inside;
    ++count;
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      for (int i = 0; i < 50; ++i) dispatcher.Enqueue(FinishedRun(w * 100 + i));
    });
  }
  for (std::thread& t : workers) t.join();
  dispatcher.Close();
  EXPECT_EQ(count.load(), 200);
  EXPECT_EQ(most.load(), 1);
}

}  // namespace
}  // namespace backflow
