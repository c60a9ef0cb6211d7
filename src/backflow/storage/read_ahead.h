// ReadAhead: one background thread filling reusable blocks ahead of one
// consumer, so that producing data (reading and verifying a file, merging
// streams) and consuming it use two cores.
//
// The thread calls `fill(block)` on free blocks in turn and hands each filled
// block to the consumer in that order. `fill` returns false for the last block
// (the data ended, or it failed and the block says how); the thread then
// stops. Next() waits for the next filled block and lends it to the consumer
// until the following Next(), when it goes back to the free blocks: at most
// `blocks` (at least 2) blocks exist, so memory is bounded. Next() must not be
// called again after it returned the last block. The destructor stops the
// thread (once its current fill returns) and joins it; whatever `fill` uses
// must outlive the ReadAhead. Next() is for one consumer thread; `fill` runs
// only on the background thread.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

namespace backflow {

template <typename Block>
class ReadAhead {
 public:
  using Fill = std::function<bool(Block&)>;

  ReadAhead(int blocks, Fill fill) : fill_(std::move(fill)) {
    for (int i = 0; i < std::max(blocks, 2); ++i) free_.push_back(std::make_unique<Block>());
    thread_ = std::thread([this] { Produce(); });
  }
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;

  ~ReadAhead() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    free_cv_.notify_all();
    thread_.join();
  }

  Block& Next() {
    if (current_ != nullptr) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        free_.push_back(std::move(current_));
      }
      free_cv_.notify_one();
    }
    std::unique_lock<std::mutex> lock(mu_);
    full_cv_.wait(lock, [&] { return !full_.empty(); });
    current_ = std::move(full_.front());
    full_.pop_front();
    return *current_;
  }

 private:
  void Produce() {
    while (true) {
      std::unique_ptr<Block> block;
      {
        std::unique_lock<std::mutex> lock(mu_);
        free_cv_.wait(lock, [&] { return stop_ || !free_.empty(); });
        if (stop_) return;
        block = std::move(free_.front());
        free_.pop_front();
      }
      const bool more = fill_(*block);
      {
        std::lock_guard<std::mutex> lock(mu_);
        full_.push_back(std::move(block));
      }
      full_cv_.notify_one();
      if (!more) return;
    }
  }

  Fill fill_;  // the background thread's only
  std::mutex mu_;
  std::condition_variable free_cv_;  // free_ gained a block, or stop_
  std::condition_variable full_cv_;  // full_ gained a block
  std::deque<std::unique_ptr<Block>> free_;
  std::deque<std::unique_ptr<Block>> full_;
  bool stop_ = false;
  std::unique_ptr<Block> current_;  // lent to the consumer
  std::thread thread_;              // last: starts once every member above exists
};

}  // namespace backflow
