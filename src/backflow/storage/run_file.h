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
// Neither class is thread-safe; distinct objects may be used concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace backflow {

struct RunFileOptions {
  // zstd level; 0 stores blocks uncompressed. Negative levels are zstd's fast modes.
  int compression_level = 1;
  // Raw bytes per block (a record larger than this gets a block of its own).
  size_t block_bytes = 256 * 1024;
  // Finish() writes `path`.tmp, fdatasyncs it, renames it over `path` and
  // fsyncs the folder: after a crash `path` is either the old file or the
  // whole new one. Without it the file is written in place and not synced.
  bool durable = false;
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
  uint64_t chain_ = 0;
  bool finished_ = false;
};

class RunFileReader {
 public:
  static absl::StatusOr<std::unique_ptr<RunFileReader>> Open(const std::string& path);
  ~RunFileReader();

  // The next record; the views stay valid until the next call. False at the
  // (verified) end of the file.
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value);

  int64_t records_read() const { return records_; }
  const std::string& path() const { return path_; }

 private:
  RunFileReader(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status ReadExactly(char* data, size_t size, const char* what);
  absl::Status Corrupt(const std::string& what) const;
  absl::StatusOr<bool> LoadBlock();

  std::string path_;
  int fd_ = -1;
  int64_t offset_ = 0;  // file offset of the next unread byte
  std::string raw_;
  std::string stored_;
  size_t pos_ = 0;              // in raw_
  uint32_t block_records_ = 0;  // records left to parse in raw_
  void* dctx_ = nullptr;
  int64_t records_ = 0;
  uint64_t chain_ = 0;
  bool ended_ = false;
};

// The record count a finished run file's end marker states (without reading
// its blocks: a damaged file is only detected by reading it).
absl::StatusOr<int64_t> RunFileRecordCount(const std::string& path);

// Little-endian base-128 varints, as used inside run files and by their users.
void AppendVarint(std::string& out, uint64_t v);
// Reads a varint at data[pos], advancing pos; false if it runs past `size`.
bool ReadVarint(const char* data, size_t size, size_t& pos, uint64_t& v);

}  // namespace backflow
