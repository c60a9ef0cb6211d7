#include "backflow/storage/prefetch_stream.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace backflow {
namespace {

// Records copied out of the inner stream, back to back, then how the inner
// stream went on after them: more blocks, its end, or an error.
struct Block {
  struct Record {
    size_t key_offset;
    size_t key_size;
    size_t value_size;  // the value follows the key
  };
  std::string bytes;
  std::vector<Record> records;
  bool end = false;
  absl::Status status;

  void Clear() {
    bytes.clear();
    records.clear();
  }
  bool last() const { return end || !status.ok(); }
};

class PrefetchStream : public SortedStream {
 public:
  PrefetchStream(std::unique_ptr<SortedStream> inner, PrefetchOptions options)
      : inner_(std::move(inner)), options_(options) {
    options_.blocks = std::max(options_.blocks, 2);
    options_.block_bytes = std::max<size_t>(options_.block_bytes, 1);
    for (int i = 0; i < options_.blocks; ++i) free_.push_back(std::make_unique<Block>());
    thread_ = std::thread([this] { Produce(); });
  }

  ~PrefetchStream() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    free_cv_.notify_all();
    thread_.join();
  }

  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) override {
    while (current_ == nullptr || next_ >= current_->records.size()) {
      if (current_ != nullptr) {
        if (!current_->status.ok()) return current_->status;
        if (current_->end) return false;
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
      next_ = 0;
    }
    const Block::Record& r = current_->records[next_++];
    const char* base = current_->bytes.data();
    key = std::string_view(base + r.key_offset, r.key_size);
    value = std::string_view(base + r.key_offset + r.key_size, r.value_size);
    return true;
  }

 private:
  // The background thread: fills free blocks until the inner stream ends or
  // fails, or the stream is destroyed.
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
      block->Clear();
      while (block->bytes.size() < options_.block_bytes) {
        std::string_view key, value;
        absl::StatusOr<bool> more = inner_->Next(key, value);
        if (!more.ok()) {
          block->status = more.status();
          break;
        }
        if (!*more) {
          block->end = true;
          break;
        }
        block->records.push_back({block->bytes.size(), key.size(), value.size()});
        block->bytes.append(key);
        block->bytes.append(value);
      }
      const bool last = block->last();
      {
        std::lock_guard<std::mutex> lock(mu_);
        full_.push_back(std::move(block));
      }
      full_cv_.notify_one();
      if (last) return;
    }
  }

  std::unique_ptr<SortedStream> inner_;  // the background thread's only
  PrefetchOptions options_;

  std::mutex mu_;
  std::condition_variable free_cv_;  // free_ gained a block, or stop_
  std::condition_variable full_cv_;  // full_ gained a block
  std::deque<std::unique_ptr<Block>> free_;
  std::deque<std::unique_ptr<Block>> full_;
  bool stop_ = false;

  // The consumer's block and its next record.
  std::unique_ptr<Block> current_;
  size_t next_ = 0;

  std::thread thread_;  // last: starts once every member above exists
};

}  // namespace

std::unique_ptr<SortedStream> PrefetchSortedStream(std::unique_ptr<SortedStream> inner,
                                                   PrefetchOptions options) {
  return std::make_unique<PrefetchStream>(std::move(inner), options);
}

}  // namespace backflow
