#include "backflow/storage/prefetch_stream.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/storage/read_ahead.h"

namespace backflow {
namespace {

// Records copied out of the inner stream, back to back, then how the inner
// stream went on after them: more blocks, its end, or an error.
struct Block {
  struct Record {
    size_t key_offset;
    uint32_t key_size;
    uint32_t value_size;  // the value follows the key
    int64_t copies;       // records of `inner` this one stands for
  };
  std::string bytes;
  std::vector<Record> records;
  bool end = false;
  absl::Status status;

  std::string_view key(const Record& r) const {
    return std::string_view(bytes.data() + r.key_offset, r.key_size);
  }
  std::string_view value(const Record& r) const {
    return std::string_view(bytes.data() + r.key_offset + r.key_size, r.value_size);
  }
  void Add(std::string_view k, std::string_view v) {
    records.push_back(
        {bytes.size(), static_cast<uint32_t>(k.size()), static_cast<uint32_t>(v.size()), 1});
    bytes.append(k);
    bytes.append(v);
  }
};

// The background thread's side: fills blocks from `inner`, merging records
// with equal keys into one when grouping. A record that does not fit the
// block waits (as views into `inner`, valid until its next Next()) for the
// next one, so that a key's records are never split between two blocks.
class Producer {
 public:
  Producer(std::unique_ptr<SortedStream> inner, size_t block_bytes, bool group)
      : inner_(std::move(inner)), block_bytes_(std::max<size_t>(block_bytes, 1)), group_(group) {}

  bool Fill(Block& block) {
    block.bytes.clear();
    block.records.clear();
    if (have_pending_) {
      block.Add(pending_key_, pending_value_);
      have_pending_ = false;
    }
    while (true) {
      std::string_view key, value;
      absl::StatusOr<bool> more = inner_->Next(key, value);
      if (!more.ok()) {
        block.status = more.status();
        return false;
      }
      if (!*more) {
        block.end = true;
        return false;
      }
      if (group_ && !block.records.empty() && block.key(block.records.back()) == key) {
        ++block.records.back().copies;
        continue;
      }
      if (block.bytes.size() >= block_bytes_) {
        pending_key_ = key;
        pending_value_ = value;
        have_pending_ = true;
        return true;
      }
      block.Add(key, value);
    }
  }

 private:
  std::unique_ptr<SortedStream> inner_;
  size_t block_bytes_;
  bool group_;
  bool have_pending_ = false;
  std::string_view pending_key_, pending_value_;
};

// The consumer's side: walks the filled blocks record by record.
class Consumer {
 public:
  Consumer(std::unique_ptr<SortedStream> inner, PrefetchOptions options, bool group)
      : producer_(std::move(inner), options.block_bytes, group),
        blocks_(options.blocks, [this](Block& b) { return producer_.Fill(b); }) {}

  // The next record (views valid until the next call) and how many records
  // of the inner stream it stands for; false at the end; errors are sticky.
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value, int64_t& copies) {
    while (current_ == nullptr || next_ >= current_->records.size()) {
      if (current_ != nullptr && current_->end) return false;
      if (current_ != nullptr && !current_->status.ok()) return current_->status;
      current_ = &blocks_.Next();
      next_ = 0;
    }
    const Block::Record& r = current_->records[next_++];
    key = current_->key(r);
    value = current_->value(r);
    copies = r.copies;
    return true;
  }

 private:
  Producer producer_;
  ReadAhead<Block> blocks_;  // after producer_, whose Fill it calls
  Block* current_ = nullptr;
  size_t next_ = 0;
};

class PrefetchStream : public SortedStream {
 public:
  PrefetchStream(std::unique_ptr<SortedStream> inner, PrefetchOptions options)
      : consumer_(std::move(inner), options, /*group=*/false) {}
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) override {
    int64_t copies = 0;  // always 1: not grouping
    return consumer_.Next(key, value, copies);
  }

 private:
  Consumer consumer_;
};

class PrefetchGroups : public KeyGroupStream {
 public:
  PrefetchGroups(std::unique_ptr<SortedStream> inner, PrefetchOptions options)
      : consumer_(std::move(inner), options, /*group=*/true) {}
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& first_value,
                            int64_t& copies) override {
    return consumer_.Next(key, first_value, copies);
  }

 private:
  Consumer consumer_;
};

}  // namespace

std::unique_ptr<SortedStream> PrefetchSortedStream(std::unique_ptr<SortedStream> inner,
                                                   PrefetchOptions options) {
  return std::make_unique<PrefetchStream>(std::move(inner), options);
}

std::unique_ptr<KeyGroupStream> PrefetchKeyGroups(std::unique_ptr<SortedStream> inner,
                                                  PrefetchOptions options) {
  return std::make_unique<PrefetchGroups>(std::move(inner), options);
}

}  // namespace backflow
