#include "backflow/storage/run_file.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zstd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "backflow/common/status_macros.h"
#include "backflow/storage/read_ahead.h"
#include "fmt/format.h"
#include "xxhash.h"

namespace backflow {
namespace {

constexpr char kMagic[8] = {'B', 'F', 'R', 'U', 'N', '0', '0', '1'};
constexpr size_t kHeaderSize = 24;
constexpr uint32_t kCodecRaw = 0;
constexpr uint32_t kCodecZstd = 1;
constexpr uint32_t kEndCodec = 0xFFFFFFFF;
constexpr size_t kWriteBuffer = 1 << 20;
// Durable files: writeback of what was written starts every this many bytes.
constexpr int64_t kWritebackEvery = 8 << 20;
// A block never claims more than this (guards allocations against damage).
constexpr uint32_t kMaxBlock = 1u << 30;

void Put32(std::string& out, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out.append(b, 4);
}
void Put64(std::string& out, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out.append(b, 8);
}
uint32_t Get32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint64_t Get64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

uint64_t Chain(uint64_t chain, uint64_t block_checksum) {
  return XXH3_64bits_withSeed(&block_checksum, sizeof(block_checksum), chain);
}

absl::Status IoError(const std::string& what, const std::string& path) {
  return absl::UnavailableError(
      fmt::format("{} {}: {} (check the disk space and permissions of that folder)", what, path,
                  std::strerror(errno)));
}

}  // namespace

void AppendVarint(std::string& out, uint64_t v) {
  char buf[10];
  int n = 0;
  while (v >= 0x80) {
    buf[n++] = static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  buf[n++] = static_cast<char>(v);
  out.append(buf, n);
}

bool ReadVarintSlow(const char* data, size_t size, size_t& pos, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && pos < size; shift += 7) {
    auto byte = static_cast<unsigned char>(data[pos++]);
    v |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// ---------------------------------------------------------------- writer

RunFileWriter::RunFileWriter(std::string path, std::string write_path, int fd,
                             const RunFileOptions& options)
    : path_(std::move(path)), write_path_(std::move(write_path)), fd_(fd), options_(options) {}

absl::StatusOr<std::unique_ptr<RunFileWriter>> RunFileWriter::Create(
    const std::string& path, const RunFileOptions& options) {
  std::string write_path = options.durable ? path + ".tmp" : path;
  ScratchPool* pool = options.durable ? nullptr : options.pool;
  int fd = pool != nullptr
               ? OpenRecycled(pool, write_path, O_WRONLY)
               : open(write_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return IoError("cannot create", write_path);
  auto writer = std::unique_ptr<RunFileWriter>(new RunFileWriter(path, write_path, fd, options));
  if (options.compression_level != 0) writer->cctx_ = ZSTD_createCCtx();
  writer->out_.reserve(kWriteBuffer + options.block_bytes + 64);
  writer->block_.reserve(options.block_bytes + 1024);
  writer->out_.append(kMagic, sizeof(kMagic));
  return writer;
}

RunFileWriter::~RunFileWriter() {
  if (cctx_ != nullptr) ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(cctx_));
  if (fd_ >= 0) close(fd_);
  if (finished_) return;
  if (options_.pool != nullptr && !options_.durable) {
    options_.pool->Keep(write_path_);
  } else {
    unlink(write_path_.c_str());
  }
}

absl::Status RunFileWriter::Add(std::string_view key, std::string_view value) {
  AppendVarint(block_, key.size());
  block_.append(key);
  AppendVarint(block_, value.size());
  block_.append(value);
  ++block_records_;
  ++records_;
  if (block_.size() >= options_.block_bytes) return FlushBlock();
  return absl::OkStatus();
}

absl::Status RunFileWriter::FlushBlock() {
  if (block_records_ == 0) return absl::OkStatus();
  if (block_.size() > kMaxBlock) {
    return absl::InvalidArgumentError(
        fmt::format("a record of {} bytes is too large for run file {}", block_.size(), path_));
  }
  std::string_view stored = block_;
  uint32_t codec = kCodecRaw;
  if (cctx_ != nullptr) {
    stored_.resize(ZSTD_compressBound(block_.size()));
    size_t n = ZSTD_compressCCtx(static_cast<ZSTD_CCtx*>(cctx_), stored_.data(), stored_.size(),
                                 block_.data(), block_.size(), options_.compression_level);
    if (ZSTD_isError(n)) {
      return absl::InternalError(
          fmt::format("zstd compression failed for {}: {}", path_, ZSTD_getErrorName(n)));
    }
    if (n < block_.size()) {
      stored = std::string_view(stored_.data(), n);
      codec = kCodecZstd;
    }
  }
  uint64_t checksum = XXH3_64bits(stored.data(), stored.size());
  chain_ = Chain(chain_, checksum);
  Put32(out_, static_cast<uint32_t>(block_.size()));
  Put32(out_, static_cast<uint32_t>(stored.size()));
  Put32(out_, codec);
  Put32(out_, block_records_);
  Put64(out_, checksum);
  absl::Status written = WriteOut(stored, false);
  block_.clear();
  block_records_ = 0;
  return written;
}

absl::Status RunFileWriter::WriteOut(std::string_view data, bool force) {
  if (!force && out_.size() + data.size() < kWriteBuffer) {
    out_.append(data);
    return absl::OkStatus();
  }
  // The buffer, then `data` without copying it.
  iovec parts[2] = {{out_.data(), out_.size()}, {const_cast<char*>(data.data()), data.size()}};
  const size_t total = out_.size() + data.size();
  size_t done = 0;
  while (done < total) {
    iovec rest[2];
    int count = 0;
    size_t skip = done;
    for (const iovec& p : parts) {
      if (skip >= p.iov_len) {
        skip -= p.iov_len;
        continue;
      }
      rest[count++] = {static_cast<char*>(p.iov_base) + skip, p.iov_len - skip};
      skip = 0;
    }
    ssize_t n = writev(fd_, rest, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError("cannot write", write_path_);
    }
    done += static_cast<size_t>(n);
  }
  file_bytes_ += static_cast<int64_t>(total);
  out_.clear();
  if (options_.durable && file_bytes_ - writeback_from_ >= kWritebackEvery) {
    // Starts writing back what is written so far without waiting for it, so
    // that the disk works while the rest is encoded and Finish()'s fdatasync
    // waits for the tail only. A hint: an I/O error still surfaces there.
    (void)sync_file_range(fd_, writeback_from_, file_bytes_ - writeback_from_,
                          SYNC_FILE_RANGE_WRITE);
    writeback_from_ = file_bytes_;
  }
  return absl::OkStatus();
}

absl::Status RunFileWriter::Finish() {
  if (finished_) return absl::FailedPreconditionError("run file already finished: " + path_);
  BACKFLOW_RETURN_IF_ERROR(FlushBlock());
  Put32(out_, 0);
  Put32(out_, 0);
  Put32(out_, kEndCodec);
  Put32(out_, 0);
  Put64(out_, static_cast<uint64_t>(records_));
  Put64(out_, chain_);
  BACKFLOW_RETURN_IF_ERROR(WriteOut({}, true));
  if (options_.durable && fdatasync(fd_) != 0) return IoError("cannot sync", write_path_);
  // A recycled file may be longer than what was written over it.
  if (options_.pool != nullptr && !options_.durable && ftruncate(fd_, file_bytes_) != 0) {
    return IoError("cannot truncate", write_path_);
  }
  if (close(fd_) != 0) {
    fd_ = -1;
    return IoError("cannot close", write_path_);
  }
  fd_ = -1;
  if (options_.durable) {
    if (rename(write_path_.c_str(), path_.c_str()) != 0) return IoError("cannot rename", path_);
    std::string dir = std::filesystem::path(path_).parent_path().string();
    int dfd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return IoError("cannot open folder", dir);
    int rc = fsync(dfd);
    close(dfd);
    if (rc != 0) return IoError("cannot sync folder", dir);
  }
  finished_ = true;
  return absl::OkStatus();
}

// ---------------------------------------------------------------- reader

absl::StatusOr<std::unique_ptr<RunFileReader>> RunFileReader::Open(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open", path);
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  auto reader = std::unique_ptr<RunFileReader>(new RunFileReader(path, fd));
  char magic[sizeof(kMagic)];
  BACKFLOW_RETURN_IF_ERROR(reader->ReadExactly(magic, sizeof(magic), "header"));
  if (std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) {
    return reader->Corrupt("it does not start with a Backflow run file header", reader->offset_);
  }
  return reader;
}

RunFileReader::~RunFileReader() {
  ahead_.reset();  // stops the loader thread before what it uses goes
  if (dctx_ != nullptr) ZSTD_freeDCtx(static_cast<ZSTD_DCtx*>(dctx_));
  if (fd_ >= 0) close(fd_);
}

void RunFileReader::ReadAhead(int blocks) {
  if (ahead_ != nullptr || block_ != nullptr) return;
  ahead_ = std::make_unique<backflow::ReadAhead<Loaded>>(blocks, [this](Loaded& out) {
    Load(out);
    return !out.end && out.status.ok();
  });
}

absl::Status RunFileReader::Corrupt(const std::string& what, int64_t offset) const {
  return absl::DataLossError(
      fmt::format("run file {} is damaged near byte {}: {}", path_, offset, what));
}

absl::Status RunFileReader::ReadExactly(char* data, size_t size, const char* what) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = pread(fd_, data + done, size - done, offset_ + static_cast<int64_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError("cannot read", path_);
    }
    if (n == 0) {
      return Corrupt(fmt::format("the file ends inside its {} (it was cut short)", what), offset_);
    }
    done += static_cast<size_t>(n);
  }
  offset_ += static_cast<int64_t>(size);
  return absl::OkStatus();
}

void RunFileReader::Load(Loaded& out) {
  out.records = 0;
  out.end = false;
  out.status = absl::OkStatus();
  auto fail = [&](absl::Status status) {
    out.status = std::move(status);
    out.offset = offset_;
  };
  char header[kHeaderSize];
  if (absl::Status read = ReadExactly(header, sizeof(header), "block header"); !read.ok()) {
    return fail(std::move(read));
  }
  uint32_t raw_size = Get32(header);
  uint32_t stored_size = Get32(header + 4);
  uint32_t codec = Get32(header + 8);
  uint32_t records = Get32(header + 12);
  uint64_t checksum = Get64(header + 16);
  if (codec == kEndCodec) {
    char tail[8];
    if (absl::Status read = ReadExactly(tail, sizeof(tail), "end marker"); !read.ok()) {
      return fail(std::move(read));
    }
    if (raw_size != 0 || stored_size != 0 || records != 0 ||
        checksum != static_cast<uint64_t>(loaded_records_)) {
      return fail(Corrupt(fmt::format("it ends after {} records but was written with {}",
                                      loaded_records_, checksum),
                          offset_));
    }
    if (Get64(tail) != chain_) {
      return fail(Corrupt("its blocks do not match its end marker", offset_));
    }
    out.end = true;
    out.offset = offset_;
    return;
  }
  if (raw_size > kMaxBlock || stored_size > kMaxBlock ||
      (codec != kCodecRaw && codec != kCodecZstd) ||
      (codec == kCodecRaw && raw_size != stored_size) || records == 0) {
    return fail(Corrupt("invalid block header", offset_));
  }
  std::string& target = codec == kCodecRaw ? out.raw : stored_;
  target.resize(stored_size);
  if (absl::Status read = ReadExactly(target.data(), stored_size, "block"); !read.ok()) {
    return fail(std::move(read));
  }
  if (XXH3_64bits(target.data(), target.size()) != checksum) {
    return fail(Corrupt("a block's checksum does not match its contents", offset_));
  }
  chain_ = Chain(chain_, checksum);
  if (codec == kCodecZstd) {
    if (dctx_ == nullptr) dctx_ = ZSTD_createDCtx();
    out.raw.resize(raw_size);
    size_t n = ZSTD_decompressDCtx(static_cast<ZSTD_DCtx*>(dctx_), out.raw.data(), out.raw.size(),
                                   stored_.data(), stored_.size());
    if (ZSTD_isError(n) || n != raw_size) {
      return fail(Corrupt("a block does not decompress", offset_));
    }
  }
  loaded_records_ += records;
  out.records = records;
  out.offset = offset_;
}

absl::StatusOr<bool> RunFileReader::NextBlock() {
  if (ahead_ != nullptr) {
    block_ = &ahead_->Next();
  } else {
    Load(own_);
    block_ = &own_;
  }
  if (!block_->status.ok()) return Fail(block_->status);
  if (block_->end) {
    ended_ = true;
    return false;
  }
  pos_ = 0;
  block_records_ = block_->records;
  return true;
}

absl::Status RunFileReader::Fail(absl::Status error) {
  ended_ = true;
  block_records_ = 0;  // NextInBlock() then declines, and Next() returns the error
  error_ = std::move(error);
  return error_;
}

absl::StatusOr<bool> RunFileReader::NextSlow(std::string_view& key, std::string_view& value) {
  if (ended_) {
    if (!error_.ok()) return error_;
    return false;
  }
  if (block_records_ == 0) {
    if (block_ != nullptr && pos_ != block_->raw.size()) {
      return Fail(Corrupt("a block holds more bytes than its records", block_->offset));
    }
    BACKFLOW_ASSIGN_OR_RETURN(bool more, NextBlock());
    if (!more) return false;  // a loaded block holds at least one record
    if (NextInBlock(key, value)) return true;
  }
  // The record at pos_ does not parse: say which part runs past the block.
  const std::string& raw = block_->raw;
  size_t pos = pos_;
  uint64_t key_size = 0;
  const bool key_fits =
      ReadVarint(raw.data(), raw.size(), pos, key_size) && key_size <= raw.size() - pos;
  return Fail(Corrupt(
      key_fits ? "a record's value runs past its block" : "a record's key runs past its block",
      block_->offset));
}

absl::StatusOr<int64_t> RunFileRecordCount(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open", path);
  off_t size = lseek(fd, 0, SEEK_END);
  char tail[32];
  ssize_t n = size >= static_cast<off_t>(sizeof(kMagic) + sizeof(tail))
                  ? pread(fd, tail, sizeof(tail), size - static_cast<off_t>(sizeof(tail)))
                  : -1;
  close(fd);
  if (n != static_cast<ssize_t>(sizeof(tail)) || Get32(tail + 8) != kEndCodec) {
    return absl::DataLossError(
        fmt::format("run file {} is damaged: it does not end with an end marker", path));
  }
  return static_cast<int64_t>(Get64(tail + 16));
}

}  // namespace backflow
