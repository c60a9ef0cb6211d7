// Run files: append-only sequences of (key, value) records, written once and
// read sequentially, in checksummed and optionally zstd-compressed blocks.
//
// They hold the engine's scratch data (sorted spills, change sets) and any
// durable sorted data: a writer can produce its file atomically (temporary
// name, fdatasync, rename, fsync of the folder).
//
// Layout (integers little-endian):
//   file   := magic "BFRUN001" block* end
//   block  := u32 raw_size | u32 stored_size | u32 codec (0 raw, 1 zstd)
//             | u32 records | u64 XXH3-64(stored bytes) | stored bytes
//   end    := u32 0 | u32 0 | u32 0xFFFFFFFF | u32 0 | u64 total records
//             | u64 chain (XXH3-64 folded over every block checksum)
//   record := varint key_size | key | varint value_size | value   (inside raw bytes)
// A reader verifies every block's checksum as it reads it, and at the end the
// record count and the chain, so a damaged, truncated or reordered file fails
// with kDataLoss naming the file and the byte offset, never a short read.
//
// Neither class is thread-safe; distinct objects may be used concurrently
// (a reader reading ahead uses a thread of its own, see ReadAhead()).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/storage/read_ahead.h"
#include "backflow/storage/scratch_pool.h"

namespace backflow {

// Little-endian base-128 varints, as used inside run files and by their users.
void AppendVarint(std::string& out, uint64_t v);
// Reads a varint at data[pos], advancing pos; false if it runs past `size`.
bool ReadVarintSlow(const char* data, size_t size, size_t& pos, uint64_t& v);
inline bool ReadVarint(const char* data, size_t size, size_t& pos, uint64_t& v) {
  // Sizes below 128, most of them, are one byte: inline, no loop.
  if (pos < size && static_cast<signed char>(data[pos]) >= 0) {
    v = static_cast<unsigned char>(data[pos++]);
    return true;
  }
  return ReadVarintSlow(data, size, pos, v);
}

struct RunFileOptions {
  // zstd level; 0 stores blocks uncompressed. Negative levels are zstd's fast modes.
  int compression_level = 1;
  // Raw bytes per block (a record larger than this gets a block of its own).
  size_t block_bytes = 256 * 1024;
  // Finish() writes `path`.tmp, fdatasyncs it, renames it over `path` and
  // fsyncs the folder: after a crash `path` is either the old file or the
  // whole new one. Without it the file is written in place and not synced.
  bool durable = false;
  // Not durable files only: write over a file kept in this pool (truncated
  // to its new size by Finish()), and give the file back to it when the
  // writer is destroyed unfinished. Null: a new file.
  ScratchPool* pool = nullptr;
};

class RunFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<RunFileWriter>> Create(const std::string& path,
                                                               const RunFileOptions& options = {});
  ~RunFileWriter();  // an unfinished writer removes its (temporary) file

  absl::Status Add(std::string_view key, std::string_view value);
  // Writes the end marker (and makes the file durable if asked). No Add() after.
  absl::Status Finish();

  int64_t records() const { return records_; }
  // Bytes written to the file so far (all of them after Finish()).
  int64_t bytes_written() const { return file_bytes_; }
  const std::string& path() const { return path_; }

 private:
  RunFileWriter(std::string path, std::string write_path, int fd, const RunFileOptions& options);
  absl::Status FlushBlock();
  absl::Status WriteOut(std::string_view data, bool force);

  std::string path_;
  std::string write_path_;
  int fd_ = -1;
  RunFileOptions options_;
  std::string block_;  // raw records of the current block
  uint32_t block_records_ = 0;
  std::string stored_;  // compression output
  std::string out_;     // bytes waiting for write()
  void* cctx_ = nullptr;
  int64_t records_ = 0;
  int64_t file_bytes_ = 0;
  int64_t writeback_from_ = 0;  // durable files: bytes before it are being written back
  uint64_t chain_ = 0;
  bool finished_ = false;
};

class RunFileReader {
 public:
  static absl::StatusOr<std::unique_ptr<RunFileReader>> Open(const std::string& path);
  ~RunFileReader();

  // From now on, reads, verifies and decompresses up to `blocks` blocks ahead
  // on a background thread, so that Next() only parses records. Same records,
  // same errors (each in its place). Call it before the first Next().
  void ReadAhead(int blocks);

  // The next record; the views stay valid until the next call. False at the
  // (verified) end of the file; an error (kDataLoss naming the file and the
  // byte offset for damage) is returned again by every later call.
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) {
    if (NextInBlock(key, value)) return true;
    return NextSlow(key, value);
  }
  // Next() when the current block holds a record that parses cleanly (the
  // hot path, inline); false otherwise, with nothing consumed: Next() then
  // loads the next block or reports the damage.
  bool NextInBlock(std::string_view& key, std::string_view& value) {
    if (block_records_ == 0) return false;
    const std::string& raw = block_->raw;
    size_t pos = pos_;
    uint64_t key_size = 0, value_size = 0;
    if (!ReadVarint(raw.data(), raw.size(), pos, key_size) || key_size > raw.size() - pos) {
      return false;
    }
    const char* key_data = raw.data() + pos;
    pos += key_size;
    if (!ReadVarint(raw.data(), raw.size(), pos, value_size) || value_size > raw.size() - pos) {
      return false;
    }
    key = std::string_view(key_data, key_size);
    value = std::string_view(raw.data() + pos, value_size);
    pos_ = pos + value_size;
    --block_records_;
    ++records_;
    return true;
  }

  int64_t records_read() const { return records_; }
  const std::string& path() const { return path_; }

 private:
  // One block as loaded: its records' bytes, or the file's verified end, or
  // why it could not be read. `offset` is where the file was read up to.
  struct Loaded {
    std::string raw;
    uint32_t records = 0;
    int64_t offset = 0;
    bool end = false;
    absl::Status status;
  };
  RunFileReader(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status ReadExactly(char* data, size_t size, const char* what);
  absl::Status Corrupt(const std::string& what, int64_t offset) const;
  // Loads the next block into `out` (the loader's side: file, checksums, zstd).
  void Load(Loaded& out);
  // Moves to the next block (the consumer's side); false at the end.
  absl::StatusOr<bool> NextBlock();
  absl::Status Fail(absl::Status error);  // ends the reader with `error`, returned
  // Next() once NextInBlock() declined: the next block, or the damage.
  absl::StatusOr<bool> NextSlow(std::string_view& key, std::string_view& value);

  std::string path_;
  // The loader's state: the background thread's alone when reading ahead.
  int fd_ = -1;
  int64_t offset_ = 0;  // file offset of the next unread byte
  std::string stored_;
  void* dctx_ = nullptr;
  int64_t loaded_records_ = 0;  // sum of the blocks' record counts
  uint64_t chain_ = 0;
  // The consumer's state.
  Loaded own_;               // the block being parsed, when not reading ahead
  Loaded* block_ = nullptr;  // the block being parsed (own_, or a read-ahead one)
  std::unique_ptr<backflow::ReadAhead<Loaded>> ahead_;
  size_t pos_ = 0;              // in block_->raw
  uint32_t block_records_ = 0;  // records left to parse in block_
  int64_t records_ = 0;
  bool ended_ = false;
  absl::Status error_;  // why it ended early
};

// The record count a finished run file's end marker states (without reading
// its blocks: a damaged file is only detected by reading it).
absl::StatusOr<int64_t> RunFileRecordCount(const std::string& path);

}  // namespace backflow
