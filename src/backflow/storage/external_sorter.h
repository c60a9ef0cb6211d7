// ExternalSorter: sorts any number of (key, value) records by key within a
// fixed memory budget.
//
// Records are buffered in memory (with an index of two 16-byte entries per
// record, for a radix sort); when the buffer reaches the budget it is
// sorted and written to a run file in `dir` (zstd-compressed unless
// Options::compression_level is 0), and at the end
// the runs and the last buffer are merged. Keys compare as unsigned bytes
// (the order of std::string, SQLite's BINARY collation and PostgreSQL bytea);
// records with equal keys come out in the order they were added. Memory is
// about the budget plus one block per spilled run, whatever the record count.
// With Options::background_spill, a full buffer is sorted and written on a
// helper thread while Add() fills a second one (each gets half the budget):
// Add() then waits only when the second buffer fills before that spill ends,
// and a spill's error is returned by the Add() that starts the next spill, or
// by Finish().
// Run files are removed (or given back to Options::pool) when the sorter is
// destroyed. Not thread-safe (the helper thread is internal).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/storage/run_file.h"

namespace backflow {

// A stream of (key, value) records in key order.
class SortedStream {
 public:
  virtual ~SortedStream() = default;
  // The next record; the views stay valid until the next call. False at the end.
  virtual absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) = 0;
};

class ExternalSorter {
 public:
  struct Options {
    size_t memory_budget = 64 << 20;
    int compression_level = 1;  // of the spilled runs
    // Runs merged into one when this many exist (bounds open files and memory).
    int max_runs = 64;
    // Spilled runs are written over files kept in this pool, and given back
    // to it when no longer needed (null: new files, removed).
    ScratchPool* pool = nullptr;
    // Spill on a helper thread (see above): for callers whose Add() loop is
    // itself the bottleneck, e.g. a pipeline fed by a network stream.
    bool background_spill = false;
  };
  // `dir` must exist; run files are named `prefix`-<n>.run inside it.
  ExternalSorter(std::string dir, std::string prefix, Options options);
  ExternalSorter(std::string dir, std::string prefix)
      : ExternalSorter(std::move(dir), std::move(prefix), Options()) {}
  ~ExternalSorter();

  absl::Status Add(std::string_view key, std::string_view value);
  // No Add() after this; streams may be opened any number of times.
  absl::Status Finish();
  // Every record added, in key order. Finish() first.
  absl::StatusOr<std::unique_ptr<SortedStream>> Open() const;

  int64_t records() const { return records_; }
  int spilled_runs() const { return static_cast<int>(runs_.size()); }

 private:
  struct Entry {
    uint64_t prefix;  // first 8 key bytes, big-endian, zero-padded
    uint32_t offset;  // of the record in the buffer's arena
  };
  struct Buffer {
    std::string arena;  // varint key size | key | varint value size | value, back to back
    std::vector<Entry> entries;
    std::vector<Entry> scratch;  // SortBuffer()'s second index (counted in the budget)
  };
  static void SortBuffer(Buffer& buffer);
  // Sorts `buffer`, writes it to `writer` and empties it (keeping its memory).
  static absl::Status WriteRun(Buffer& buffer, RunFileWriter& writer);
  absl::Status Spill();
  // Ends the background spill in progress, if any, with its status.
  absl::Status WaitForSpill();
  absl::Status MergeRuns();
  std::string NextRunPath();
  RunFileOptions RunOptions() const;
  void Discard(const std::string& run);

  std::string dir_;
  std::string prefix_;
  Options options_;
  size_t buffer_budget_;  // of one buffer
  Buffer buffer_;         // being filled
  // background_spill: the buffer the helper thread writes (then empty, its
  // memory kept for the next swap), and its outcome, read after the join.
  Buffer spilling_;
  std::thread spill_thread_;
  absl::Status spill_status_;
  std::vector<uint32_t> offsets_;  // after Finish(): the last buffer, sorted
  std::vector<std::string> runs_;  // spilled run files, in spill order
  int run_counter_ = 0;
  int64_t records_ = 0;
  bool finished_ = false;
};

}  // namespace backflow
