#include "backflow/sources/parallel_reader.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "backflow/common/status_macros.h"

namespace backflow {
namespace {

// Rows in EncodeRow()'s form, back to back; row i ends at ends[i]. Cleared
// batches keep their capacity for reuse.
struct Batch {
  std::string bytes;
  std::vector<size_t> ends;
  std::string_view Row(size_t i) const {
    const size_t start = i == 0 ? 0 : ends[i - 1];
    return std::string_view(bytes).substr(start, ends[i] - start);
  }
  void Clear() {
    bytes.clear();
    ends.clear();
  }
};

class ParallelRowReader : public RowReader {
 public:
  ParallelRowReader(Schema schema, std::vector<ParallelReaderPart> parts,
                    ParallelReaderLimits limits)
      : schema_(std::move(schema)), limits_(limits) {
    if (limits_.batch_rows == 0) limits_.batch_rows = 1;
    if (limits_.queue_batches == 0) limits_.queue_batches = 2 * parts.size();
    running_ = parts.size();
    cancels_.reserve(parts.size());
    for (ParallelReaderPart& part : parts) cancels_.push_back(std::move(part.cancel));
    threads_.reserve(parts.size());
    for (ParallelReaderPart& part : parts) {
      threads_.emplace_back(
          [this, reader = std::move(part.reader)]() mutable { Work(std::move(reader)); });
    }
  }

  ~ParallelRowReader() override { Stop(); }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<bool> Next(Row& row) override {
    std::string_view encoded;
    BACKFLOW_ASSIGN_OR_RETURN(bool more, NextEncoded(encoded));
    if (!more) return false;
    BACKFLOW_RETURN_IF_ERROR(DecodeRowInto(encoded, row));
    return true;
  }

  absl::StatusOr<bool> NextEncoded(std::string_view& row) override {
    if (!sticky_.ok()) return sticky_;
    if (finished_) return false;
    while (current_.ends.size() == pos_) {
      std::unique_lock lock(mu_);
      if (current_.bytes.capacity() > 0) {
        current_.Clear();
        free_.push_back(std::move(current_));
        current_ = Batch{};
      }
      pos_ = 0;
      ready_.wait(lock, [&] { return !error_.ok() || !queue_.empty() || running_ == 0; });
      if (!error_.ok()) {
        sticky_ = error_;
        lock.unlock();
        Stop();
        return sticky_;
      }
      if (queue_.empty()) {  // every part ended cleanly
        lock.unlock();
        finished_ = true;
        Stop();
        return false;
      }
      current_ = std::move(queue_.front());
      queue_.pop_front();
      space_.notify_one();
    }
    row = current_.Row(pos_++);
    return true;
  }

 private:
  void Work(std::unique_ptr<RowReader> reader) {
    Batch batch = TakeFreeBatch();
    absl::Status error;
    std::string_view row;
    while (true) {
      absl::StatusOr<bool> more = reader->NextEncoded(row);
      if (!more.ok()) {
        error = more.status();
        break;
      }
      if (!*more) break;
      batch.bytes.append(row);
      batch.ends.push_back(batch.bytes.size());
      if (batch.ends.size() >= limits_.batch_rows || batch.bytes.size() >= limits_.batch_bytes) {
        if (!Push(std::move(batch))) break;  // stopping
        batch = TakeFreeBatch();
      }
    }
    if (error.ok() && !batch.ends.empty()) Push(std::move(batch));
    // Close the part (e.g. its connection) on this thread, before reporting.
    reader.reset();
    std::lock_guard lock(mu_);
    if (!error.ok() && error_.ok() && !stop_) error_ = std::move(error);
    --running_;
    ready_.notify_all();
  }

  Batch TakeFreeBatch() {
    std::lock_guard lock(mu_);
    if (free_.empty()) return Batch{};
    Batch batch = std::move(free_.back());
    free_.pop_back();
    return batch;
  }

  // Queues `batch`, waiting for space. False when the reader is stopping or
  // another part failed (the batch is dropped).
  bool Push(Batch batch) {
    std::unique_lock lock(mu_);
    space_.wait(lock,
                [&] { return stop_ || !error_.ok() || queue_.size() < limits_.queue_batches; });
    if (stop_ || !error_.ok()) return false;
    queue_.push_back(std::move(batch));
    ready_.notify_one();
    return true;
  }

  // Stops and joins every part thread (idempotent).
  void Stop() {
    bool any_running;
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      any_running = running_ > 0;
    }
    space_.notify_all();
    if (any_running) {
      for (const std::function<void()>& cancel : cancels_) {
        if (cancel) cancel();
      }
    }
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
    std::lock_guard lock(mu_);
    queue_.clear();
    free_.clear();
  }

  const Schema schema_;
  ParallelReaderLimits limits_;
  std::vector<std::function<void()>> cancels_;
  std::vector<std::thread> threads_;

  std::mutex mu_;
  std::condition_variable ready_;  // a batch was queued, a part ended or failed
  std::condition_variable space_;  // a batch left the queue, or stopping
  std::deque<Batch> queue_;        // guarded by mu_
  std::vector<Batch> free_;        // guarded by mu_
  size_t running_ = 0;             // guarded by mu_: parts whose thread has not ended
  absl::Status error_;             // guarded by mu_: the first part error
  bool stop_ = false;              // guarded by mu_

  // Consumer side (the thread calling Next()).
  Batch current_;
  size_t pos_ = 0;
  bool finished_ = false;
  absl::Status sticky_;
};

}  // namespace

std::unique_ptr<RowReader> NewParallelRowReader(Schema schema,
                                                std::vector<ParallelReaderPart> parts,
                                                ParallelReaderLimits limits) {
  return std::make_unique<ParallelRowReader>(std::move(schema), std::move(parts), limits);
}

}  // namespace backflow
