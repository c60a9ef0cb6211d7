#include "backflow/storage/external_sorter.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "backflow/common/status_macros.h"
#include "backflow/storage/key_order.h"
#include "fmt/format.h"

namespace backflow {
namespace {

// How many records ahead a read of the arena in sorted order prefetches.
constexpr size_t kPrefetchAhead = 16;

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
    // The records sit in the arena in insertion order: fetch a few ahead.
    if (next_ + kPrefetchAhead < offsets_.size()) {
      __builtin_prefetch(arena_.data() + offsets_[next_ + kPrefetchAhead]);
    }
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

// K-way merge by a tournament ("loser") tree: each record costs one
// comparison per level (log2 of the streams, rounded up), most of them on the
// keys' 8-byte prefixes and without a data-dependent branch. Among equal
// keys, the stream added first wins. Every Add() comes before the first Next().
class MergeStream : public SortedStream {
 public:
  // `file`: the run file `stream` reads, if it reads one (its records are
  // then read inline while its current block lasts).
  absl::Status Add(std::unique_ptr<SortedStream> stream, RunFileReader* file = nullptr) {
    Head h;
    BACKFLOW_ASSIGN_OR_RETURN(bool more, stream->Next(h.key, h.value));
    h.Set(more);
    streams_.push_back(std::move(stream));
    files_.push_back(file);
    heads_.push_back(h);
    return absl::OkStatus();
  }
  absl::Status Add(std::unique_ptr<RunFileReader> reader) {
    RunFileReader* file = reader.get();
    return Add(std::make_unique<FileStream>(std::move(reader)), file);
  }
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) override {
    if (losers_.empty()) {
      Build();
    } else if (returned_) {
      // Replace the record handed out last by its stream's next one and
      // replay its path to the root.
      int w = losers_[0];
      Head& h = heads_[w];
      // A run file's records are read inline while its block lasts.
      if (files_[w] != nullptr && files_[w]->NextInBlock(h.key, h.value)) {
        h.Set(true);
      } else {
        absl::StatusOr<bool> more = streams_[w]->Next(h.key, h.value);
        if (!more.ok()) return more.status();
        h.Set(*more);
      }
      for (size_t node = (static_cast<size_t>(w) + leaves_) >> 1; node != 0; node >>= 1) {
        // Swapped by a mask, not a branch: who wins a match is unpredictable.
        const int l = losers_[node];
        const int swap = (l ^ w) & -static_cast<int>(Before(l, w));
        losers_[node] = l ^ swap;
        w ^= swap;
      }
      losers_[0] = w;
    }
    const Head& top = heads_[losers_[0]];
    returned_ = !top.done;
    if (top.done) return false;
    key = top.key;
    value = top.value;
    return true;
  }

 private:
  struct Head {
    uint64_t prefix = ~uint64_t{0};  // KeyPrefix(key); all ones when done
    std::string_view key;
    std::string_view value;
    bool done = true;
    void Set(bool more) {
      done = !more;
      prefix = more ? KeyPrefix(key) : ~uint64_t{0};
    }
  };
  // Whether stream `a`'s head comes strictly before stream `b`'s.
  bool Before(int a, int b) const {
    const Head& x = heads_[a];
    const Head& y = heads_[b];
    if (x.prefix != y.prefix) [[likely]]
      return x.prefix < y.prefix;
    if (x.done || y.done) return x.done == y.done ? a < b : y.done;
    int c = CompareKeys(x.key, x.prefix, y.key, y.prefix);
    return c != 0 ? c < 0 : a < b;
  }
  // Plays the first round: leaves_ is a power of two, padded with done heads;
  // losers_[node] is the loser of the match at `node`, losers_[0] the winner.
  void Build() {
    leaves_ = 1;
    while (leaves_ < heads_.size()) leaves_ <<= 1;
    heads_.resize(leaves_);  // padding heads are done
    std::vector<int> winners(2 * leaves_);
    for (size_t i = 0; i < leaves_; ++i) winners[leaves_ + i] = static_cast<int>(i);
    losers_.assign(leaves_, 0);
    for (size_t node = leaves_ - 1; node != 0; --node) {
      int a = winners[2 * node];
      int b = winners[2 * node + 1];
      if (Before(b, a)) std::swap(a, b);
      winners[node] = a;
      losers_[node] = b;
    }
    losers_[0] = winners[1];
  }

  std::vector<std::unique_ptr<SortedStream>> streams_;
  std::vector<RunFileReader*> files_;  // per stream: its run file, if it reads one
  std::vector<Head> heads_;            // per stream (then padding)
  std::vector<int> losers_;            // empty until the first Next()
  size_t leaves_ = 0;
  bool returned_ = false;  // the winner was handed out by the last Next()
};

}  // namespace

ExternalSorter::ExternalSorter(std::string dir, std::string prefix, Options options)
    : dir_(std::move(dir)), prefix_(std::move(prefix)), options_(options) {
  options_.memory_budget = std::min<size_t>(options_.memory_budget, size_t{3} << 30);
  options_.max_runs = std::max(2, options_.max_runs);
  buffer_budget_ = options_.background_spill ? options_.memory_budget / 2 : options_.memory_budget;
}

ExternalSorter::~ExternalSorter() {
  (void)WaitForSpill();  // its run is discarded below with the others
  for (const std::string& run : runs_) Discard(run);
}

void ExternalSorter::Discard(const std::string& run) {
  if (options_.pool != nullptr) {
    options_.pool->Keep(run);
  } else {
    unlink(run.c_str());
  }
}

RunFileOptions ExternalSorter::RunOptions() const {
  RunFileOptions o;
  o.compression_level = options_.compression_level;
  o.pool = options_.pool;
  return o;
}

std::string ExternalSorter::NextRunPath() {
  return fmt::format("{}/{}-{}.run", dir_, prefix_, run_counter_++);
}

absl::Status ExternalSorter::Add(std::string_view key, std::string_view value) {
  if (finished_) return absl::FailedPreconditionError("ExternalSorter::Add after Finish");
  size_t need = key.size() + value.size() + 20;
  std::string& arena = buffer_.arena;
  if (!buffer_.entries.empty() &&
      arena.size() + need + 2 * buffer_.entries.size() * sizeof(Entry) > buffer_budget_) {
    BACKFLOW_RETURN_IF_ERROR(Spill());
  }
  if (arena.size() + need > (size_t{1} << 32)) {
    return absl::InvalidArgumentError("a record is too large to sort");
  }
  buffer_.entries.push_back({KeyPrefix(key), static_cast<uint32_t>(arena.size())});
  AppendVarint(arena, key.size());
  arena.append(key);
  AppendVarint(arena, value.size());
  arena.append(value);
  ++records_;
  return absl::OkStatus();
}

void ExternalSorter::SortBuffer(Buffer& buffer) {
  std::vector<Entry>& entries = buffer.entries;
  const size_t n = entries.size();
  if (n < 2) return;
  // LSD radix sort on the 8-byte prefix, one byte per pass (a pass whose byte
  // is the same in every entry is skipped). It is stable, so entries with
  // equal prefixes stay in insertion order; unlike a comparison sort it does
  // not degrade on the patterns keys come in (e.g. decimal ids in numeric
  // order, whose byte order interleaves).
  std::array<std::array<uint32_t, 256>, 8> counts{};
  for (const Entry& e : entries) {
    for (int d = 0; d < 8; ++d) ++counts[d][(e.prefix >> (8 * d)) & 0xFF];
  }
  buffer.scratch.resize(n);
  Entry* src = entries.data();
  Entry* dst = buffer.scratch.data();
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
  if (in_scratch) entries.swap(buffer.scratch);
  // Entries whose prefixes are equal: by the whole key, then insertion order.
  const std::string& arena = buffer.arena;
  auto by_key = [&arena](const Entry& a, const Entry& b) {
    std::string_view ka, va, kb, vb;
    RecordAt(arena, a.offset, ka, va);
    RecordAt(arena, b.offset, kb, vb);
    int c = ka.compare(kb);
    return c != 0 ? c < 0 : a.offset < b.offset;
  };
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && entries[j].prefix == entries[i].prefix) ++j;
    if (j - i > 1) std::sort(entries.begin() + i, entries.begin() + j, by_key);
    i = j;
  }
}

absl::Status ExternalSorter::WriteRun(Buffer& buffer, RunFileWriter& writer) {
  SortBuffer(buffer);
  const std::vector<Entry>& entries = buffer.entries;
  std::string_view key, value;
  for (size_t i = 0; i < entries.size(); ++i) {
    // Sorted entries point all over the arena: fetch a few ahead.
    if (i + kPrefetchAhead < entries.size()) {
      __builtin_prefetch(buffer.arena.data() + entries[i + kPrefetchAhead].offset);
    }
    RecordAt(buffer.arena, entries[i].offset, key, value);
    BACKFLOW_RETURN_IF_ERROR(writer.Add(key, value));
  }
  BACKFLOW_RETURN_IF_ERROR(writer.Finish());
  buffer.arena.clear();
  buffer.entries.clear();
  return absl::OkStatus();
}

absl::Status ExternalSorter::WaitForSpill() {
  if (!spill_thread_.joinable()) return absl::OkStatus();
  spill_thread_.join();
  return std::exchange(spill_status_, absl::OkStatus());
}

absl::Status ExternalSorter::Spill() {
  // One spill at a time: a background one must have ended (its run is
  // already in runs_, so runs stay in spill order).
  BACKFLOW_RETURN_IF_ERROR(WaitForSpill());
  if (static_cast<int>(runs_.size()) + 1 >= options_.max_runs) {
    BACKFLOW_RETURN_IF_ERROR(MergeRuns());
  }
  BACKFLOW_ASSIGN_OR_RETURN(std::unique_ptr<RunFileWriter> writer,
                            RunFileWriter::Create(NextRunPath(), RunOptions()));
  runs_.push_back(writer->path());
  if (!options_.background_spill) return WriteRun(buffer_, *writer);
  std::swap(buffer_, spilling_);  // buffer_ is now the empty one
  spill_thread_ = std::thread(
      [this, writer = std::move(writer)] { spill_status_ = WriteRun(spilling_, *writer); });
  return absl::OkStatus();
}

absl::Status ExternalSorter::MergeRuns() {
  MergeStream merge;
  for (const std::string& run : runs_) {
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, RunFileReader::Open(run));
    BACKFLOW_RETURN_IF_ERROR(merge.Add(std::move(reader)));
  }
  RunFileOptions o = RunOptions();
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
  BACKFLOW_RETURN_IF_ERROR(WaitForSpill());
  spilling_ = Buffer();
  SortBuffer(buffer_);
  finished_ = true;
  // The sorted offsets replace the entries (half the memory, and what streams read).
  const std::vector<Entry>& entries = buffer_.entries;
  offsets_.resize(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) offsets_[i] = entries[i].offset;
  std::vector<Entry>().swap(buffer_.entries);
  std::vector<Entry>().swap(buffer_.scratch);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SortedStream>> ExternalSorter::Open() const {
  if (!finished_) return absl::FailedPreconditionError("ExternalSorter::Open before Finish");
  auto memory = std::make_unique<MemoryStream>(buffer_.arena, offsets_);
  if (runs_.empty()) return std::unique_ptr<SortedStream>(std::move(memory));
  auto merge = std::make_unique<MergeStream>();
  for (const std::string& run : runs_) {
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, RunFileReader::Open(run));
    BACKFLOW_RETURN_IF_ERROR(merge->Add(std::move(reader)));
  }
  BACKFLOW_RETURN_IF_ERROR(merge->Add(std::move(memory)));
  return std::unique_ptr<SortedStream>(std::move(merge));
}

}  // namespace backflow
