#include "backflow/storage/external_sorter.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "backflow/common/status_macros.h"
#include "backflow/storage/key_order.h"
#include "fmt/format.h"

namespace backflow {
namespace {

// Views of the record stored at `offset` in `arena`.
void RecordAt(const std::string& arena, uint32_t offset, std::string_view& key,
              std::string_view& value) {
  size_t pos = offset;
  uint64_t n = 0;
  ReadVarint(arena.data(), arena.size(), pos, n);
  key = std::string_view(arena.data() + pos, n);
  pos += n;
  ReadVarint(arena.data(), arena.size(), pos, n);
  value = std::string_view(arena.data() + pos, n);
}

class MemoryStream : public SortedStream {
 public:
  MemoryStream(const std::string& arena, const std::vector<uint32_t>& offsets)
      : arena_(arena), offsets_(offsets) {}
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) override {
    if (next_ >= offsets_.size()) return false;
    RecordAt(arena_, offsets_[next_++], key, value);
    return true;
  }

 private:
  const std::string& arena_;
  const std::vector<uint32_t>& offsets_;
  size_t next_ = 0;
};

class FileStream : public SortedStream {
 public:
  explicit FileStream(std::unique_ptr<RunFileReader> reader) : reader_(std::move(reader)) {}
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) override {
    return reader_->Next(key, value);
  }

 private:
  std::unique_ptr<RunFileReader> reader_;
};

// K-way merge; among equal keys, the stream added first wins. Every Add()
// comes before the first Next().
class MergeStream : public SortedStream {
 public:
  absl::Status Add(std::unique_ptr<SortedStream> stream) {
    Head h;
    h.index = static_cast<int>(streams_.size());
    streams_.push_back(std::move(stream));
    BACKFLOW_ASSIGN_OR_RETURN(bool more, streams_.back()->Next(h.key, h.value));
    h.prefix = KeyPrefix(h.key);
    if (more) Push(h);
    return absl::OkStatus();
  }
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) override {
    if (returned_) {
      // The top is the stream returned last: replace it by that stream's next
      // record and sift it down (one pass instead of a pop and a push).
      returned_ = false;
      Head& top = heap_.front();
      absl::StatusOr<bool> more = streams_[top.index]->Next(top.key, top.value);
      if (!more.ok()) return more.status();
      top.prefix = KeyPrefix(top.key);
      if (!*more) {
        top = heap_.back();
        heap_.pop_back();
      }
      if (!heap_.empty()) SiftDown();
    }
    if (heap_.empty()) return false;
    key = heap_.front().key;
    value = heap_.front().value;
    returned_ = true;
    return true;
  }

 private:
  struct Head {
    uint64_t prefix = 0;  // KeyPrefix(key): most comparisons end there
    std::string_view key;
    std::string_view value;
    int index = 0;
  };
  // Heap order: std::*_heap keep the greatest first, so "greater" = comes later.
  static bool After(const Head& a, const Head& b) {
    int c = CompareKeys(a.key, a.prefix, b.key, b.prefix);
    return c != 0 ? c > 0 : a.index > b.index;
  }
  void Push(const Head& h) {
    heap_.push_back(h);
    std::push_heap(heap_.begin(), heap_.end(), After);
  }
  // Restores the heap order after the top changed.
  void SiftDown() {
    const size_t n = heap_.size();
    size_t i = 0;
    while (true) {
      size_t child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && After(heap_[child], heap_[child + 1])) ++child;
      if (!After(heap_[i], heap_[child])) break;
      std::swap(heap_[i], heap_[child]);
      i = child;
    }
  }
  std::vector<std::unique_ptr<SortedStream>> streams_;
  std::vector<Head> heap_;
  bool returned_ = false;  // the top was handed out by the last Next()
};

}  // namespace

ExternalSorter::ExternalSorter(std::string dir, std::string prefix, Options options)
    : dir_(std::move(dir)), prefix_(std::move(prefix)), options_(options) {
  options_.memory_budget = std::min<size_t>(options_.memory_budget, size_t{3} << 30);
  options_.max_runs = std::max(2, options_.max_runs);
}

ExternalSorter::~ExternalSorter() {
  for (const std::string& run : runs_) Discard(run);
}

void ExternalSorter::Discard(const std::string& run) {
  if (options_.pool != nullptr) {
    options_.pool->Keep(run);
  } else {
    unlink(run.c_str());
  }
}

std::string ExternalSorter::NextRunPath() {
  return fmt::format("{}/{}-{}.run", dir_, prefix_, run_counter_++);
}

absl::Status ExternalSorter::Add(std::string_view key, std::string_view value) {
  if (finished_) return absl::FailedPreconditionError("ExternalSorter::Add after Finish");
  size_t need = key.size() + value.size() + 20;
  if (!entries_.empty() &&
      arena_.size() + need + 2 * entries_.size() * sizeof(Entry) > options_.memory_budget) {
    BACKFLOW_RETURN_IF_ERROR(Spill());
  }
  if (arena_.size() + need > (size_t{1} << 32)) {
    return absl::InvalidArgumentError("a record is too large to sort");
  }
  entries_.push_back({KeyPrefix(key), static_cast<uint32_t>(arena_.size())});
  AppendVarint(arena_, key.size());
  arena_.append(key);
  AppendVarint(arena_, value.size());
  arena_.append(value);
  ++records_;
  return absl::OkStatus();
}

void ExternalSorter::SortBuffer() {
  const size_t n = entries_.size();
  if (n < 2) return;
  // LSD radix sort on the 8-byte prefix, one byte per pass (a pass whose byte
  // is the same in every entry is skipped). It is stable, so entries with
  // equal prefixes stay in insertion order; unlike a comparison sort it does
  // not degrade on the patterns keys come in (e.g. decimal ids in numeric
  // order, whose byte order interleaves).
  std::array<std::array<uint32_t, 256>, 8> counts{};
  for (const Entry& e : entries_) {
    for (int d = 0; d < 8; ++d) ++counts[d][(e.prefix >> (8 * d)) & 0xFF];
  }
  scratch_.resize(n);
  Entry* src = entries_.data();
  Entry* dst = scratch_.data();
  bool in_scratch = false;
  for (int d = 0; d < 8; ++d) {
    const std::array<uint32_t, 256>& count = counts[d];
    if (count[(src[0].prefix >> (8 * d)) & 0xFF] == n) continue;
    std::array<uint32_t, 256> next;
    uint32_t sum = 0;
    for (int b = 0; b < 256; ++b) {
      next[b] = sum;
      sum += count[b];
    }
    for (size_t i = 0; i < n; ++i) dst[next[(src[i].prefix >> (8 * d)) & 0xFF]++] = src[i];
    std::swap(src, dst);
    in_scratch = !in_scratch;
  }
  if (in_scratch) entries_.swap(scratch_);
  // Entries whose prefixes are equal: by the whole key, then insertion order.
  const std::string& arena = arena_;
  auto by_key = [&arena](const Entry& a, const Entry& b) {
    std::string_view ka, va, kb, vb;
    RecordAt(arena, a.offset, ka, va);
    RecordAt(arena, b.offset, kb, vb);
    int c = ka.compare(kb);
    return c != 0 ? c < 0 : a.offset < b.offset;
  };
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && entries_[j].prefix == entries_[i].prefix) ++j;
    if (j - i > 1) std::sort(entries_.begin() + i, entries_.begin() + j, by_key);
    i = j;
  }
}

absl::Status ExternalSorter::Spill() {
  SortBuffer();
  RunFileOptions o;
  o.compression_level = options_.compression_level;
  o.pool = options_.pool;
  BACKFLOW_ASSIGN_OR_RETURN(auto writer, RunFileWriter::Create(NextRunPath(), o));
  std::string_view key, value;
  for (const Entry& e : entries_) {
    RecordAt(arena_, e.offset, key, value);
    BACKFLOW_RETURN_IF_ERROR(writer->Add(key, value));
  }
  BACKFLOW_RETURN_IF_ERROR(writer->Finish());
  runs_.push_back(writer->path());
  arena_.clear();
  entries_.clear();
  if (static_cast<int>(runs_.size()) >= options_.max_runs) return MergeRuns();
  return absl::OkStatus();
}

absl::Status ExternalSorter::MergeRuns() {
  MergeStream merge;
  for (const std::string& run : runs_) {
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, RunFileReader::Open(run));
    BACKFLOW_RETURN_IF_ERROR(merge.Add(std::make_unique<FileStream>(std::move(reader))));
  }
  RunFileOptions o;
  o.compression_level = options_.compression_level;
  o.pool = options_.pool;
  BACKFLOW_ASSIGN_OR_RETURN(auto writer, RunFileWriter::Create(NextRunPath(), o));
  std::string_view key, value;
  while (true) {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, merge.Next(key, value));
    if (!more) break;
    BACKFLOW_RETURN_IF_ERROR(writer->Add(key, value));
  }
  BACKFLOW_RETURN_IF_ERROR(writer->Finish());
  for (const std::string& run : runs_) Discard(run);
  runs_.assign(1, writer->path());
  return absl::OkStatus();
}

absl::Status ExternalSorter::Finish() {
  if (finished_) return absl::OkStatus();
  SortBuffer();
  finished_ = true;
  // The sorted offsets replace the entries (half the memory, and what streams read).
  offsets_.resize(entries_.size());
  for (size_t i = 0; i < entries_.size(); ++i) offsets_[i] = entries_[i].offset;
  std::vector<Entry>().swap(entries_);
  std::vector<Entry>().swap(scratch_);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SortedStream>> ExternalSorter::Open() const {
  if (!finished_) return absl::FailedPreconditionError("ExternalSorter::Open before Finish");
  auto memory = std::make_unique<MemoryStream>(arena_, offsets_);
  if (runs_.empty()) return std::unique_ptr<SortedStream>(std::move(memory));
  auto merge = std::make_unique<MergeStream>();
  for (const std::string& run : runs_) {
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, RunFileReader::Open(run));
    BACKFLOW_RETURN_IF_ERROR(merge->Add(std::make_unique<FileStream>(std::move(reader))));
  }
  BACKFLOW_RETURN_IF_ERROR(merge->Add(std::move(memory)));
  return std::unique_ptr<SortedStream>(std::move(merge));
}

}  // namespace backflow
