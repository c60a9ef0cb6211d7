#include "backflow/engine/spool.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "backflow/common/status_macros.h"
#include "fmt/format.h"

namespace backflow {
namespace {
namespace fs = std::filesystem;

constexpr size_t kRowBuffer = 1 << 20;

void RemoveDeadSpools(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    int pid = 0;
    // "extract-<pid>-<n>.db": the SQLite spool of earlier versions.
    if ((sscanf(name.c_str(), "spool-%d-", &pid) != 1 &&
         sscanf(name.c_str(), "extract-%d-", &pid) != 1) ||
        pid <= 0) {
      continue;
    }
    if (kill(pid, 0) != 0 && errno == ESRCH) fs::remove_all(entry.path(), ec);
  }
}

void PutFixed(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t GetFixed(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

absl::Status Damaged(const std::string& what) {
  return absl::DataLossError(fmt::format("the extraction spool is damaged: {}", what));
}

}  // namespace

Spool::Spool(std::string dir, Options options) : dir_(std::move(dir)), options_(options) {}

absl::StatusOr<std::unique_ptr<Spool>> Spool::Create(const std::string& dir, Options options) {
  static std::atomic<int> counter{0};
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::UnavailableError(
        fmt::format("cannot create the spool folder {}: {}", dir, ec.message()));
  }
  RemoveDeadSpools(dir);
  std::string path = (fs::path(dir) / fmt::format("spool-{}-{}", getpid(), counter++)).string();
  fs::remove_all(path, ec);
  fs::create_directories(path, ec);
  if (ec) {
    return absl::UnavailableError(
        fmt::format("cannot create the spool folder {}: {}", path, ec.message()));
  }
  auto spool = std::unique_ptr<Spool>(new Spool(path, options));
  spool->pool_ =
      std::make_unique<ScratchPool>((fs::path(dir) / "recycled").string(), options.keep_bytes);
  std::string rows = spool->PathOf("rows");
  spool->rows_fd_ = OpenRecycled(spool->pool_.get(), rows, O_RDWR);
  if (spool->rows_fd_ < 0) {
    return absl::UnavailableError(fmt::format("cannot create {}: {}", rows, std::strerror(errno)));
  }
  spool->rows_buffer_.reserve(kRowBuffer + 4096);
  ExternalSorter::Options so;
  so.memory_budget = options.sort_budget;
  // Spilled runs stay raw: 16 of each summary's ~40 bytes are a random
  // fingerprint, and the runs live only as long as the extraction.
  so.compression_level = 0;
  so.pool = spool->pool_.get();
  // The extraction thread adds a record per row: a full buffer is written
  // while it goes on (the source would otherwise wait for every spill). Each
  // buffer is then half the budget, so runs are twice as many: up to 128
  // (~60M rows at the default budget) before the runs are merged into one
  // while adding, at one 256 KiB block per run when they are read.
  so.background_spill = true;
  so.max_runs = 128;
  spool->keyed_ = std::make_unique<ExternalSorter>(path, "keyed", so);
  return spool;
}

Spool::~Spool() {
  // Change sets are removed, never kept: they hold mapped payloads, which
  // may carry values the mapping took from secrets (secrets_e2e_test).
  changes_.clear();
  acks_.clear();
  null_keys_file_.reset();
  keyed_.reset();
  if (rows_fd_ >= 0) {
    close(rows_fd_);
    pool_->Keep(PathOf("rows"));
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

absl::Status Spool::FlushRows() {
  size_t done = 0;
  while (done < rows_buffer_.size()) {
    ssize_t n = write(rows_fd_, rows_buffer_.data() + done, rows_buffer_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(
          fmt::format("cannot write the extraction spool in {}: {} (check free disk space)", dir_,
                      std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  rows_buffer_.clear();
  return absl::OkStatus();
}

absl::StatusOr<RowRef> Spool::AppendRow(std::string_view encoded_row) {
  if (encoded_row.size() > 0xFFFFFFFFu) {
    return absl::InvalidArgumentError("a row larger than 4 GiB cannot be synced");
  }
  RowRef ref{rows_bytes_, static_cast<uint32_t>(encoded_row.size())};
  rows_buffer_.append(encoded_row);
  rows_bytes_ += encoded_row.size();
  if (rows_buffer_.size() >= kRowBuffer) BACKFLOW_RETURN_IF_ERROR(FlushRows());
  return ref;
}

absl::Status Spool::AddKeyed(std::string_view key, std::string_view summary) {
  return keyed_->Add(key, summary);
}

absl::Status Spool::AddNullKey(RowRef row) {
  if (null_keys_file_ == nullptr) {
    BACKFLOW_ASSIGN_OR_RETURN(null_keys_file_, RunFileWriter::Create(PathOf("null-keys.run")));
  }
  std::string value;
  PutFixed(value, row.offset, 8);
  PutFixed(value, row.size, 4);
  ++null_keys_;
  return null_keys_file_->Add({}, value);
}

absl::Status Spool::FinishLoad() {
  BACKFLOW_RETURN_IF_ERROR(FlushRows());
  // A recycled row log may be longer than this extraction's rows.
  if (ftruncate(rows_fd_, static_cast<off_t>(rows_bytes_)) != 0) {
    return absl::UnavailableError(
        fmt::format("cannot truncate {}: {}", PathOf("rows"), std::strerror(errno)));
  }
  if (null_keys_file_ != nullptr) BACKFLOW_RETURN_IF_ERROR(null_keys_file_->Finish());
  return keyed_->Finish();
}

absl::StatusOr<std::unique_ptr<SortedStream>> Spool::ScanKeyed() const { return keyed_->Open(); }

absl::StatusOr<std::vector<RowRef>> Spool::NullKeyRows(size_t limit) const {
  std::vector<RowRef> refs;
  if (null_keys_file_ == nullptr) return refs;
  BACKFLOW_ASSIGN_OR_RETURN(auto reader, RunFileReader::Open(null_keys_file_->path()));
  std::string_view key, value;
  while (refs.size() < limit) {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, reader->Next(key, value));
    if (!more) break;
    if (value.size() != 12) return Damaged("a NULL-key row reference has the wrong size");
    refs.push_back(
        {GetFixed(value.data(), 8), static_cast<uint32_t>(GetFixed(value.data() + 8, 4))});
  }
  return refs;
}

absl::Status Spool::ReadRowLog(uint64_t offset, size_t size, char* out) const {
  size_t done = 0;
  while (done < size) {
    ssize_t n = pread(rows_fd_, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(fmt::format("cannot read the extraction spool in {}: {}", dir_,
                                                n < 0 ? std::strerror(errno) : "short read"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status Spool::ReadRow(RowRef ref, std::string& encoded_row) const {
  if (ref.offset + ref.size > rows_bytes_) return Damaged("a row reference is past the row log");
  encoded_row.resize(ref.size);
  return ReadRowLog(ref.offset, ref.size, encoded_row.data());
}

absl::Status Spool::RowReader::Read(RowRef ref, std::string& encoded_row) {
  if (ref.offset + ref.size > spool_.rows_bytes_) {
    return Damaged("a row reference is past the row log");
  }
  ++clock_;
  Window* oldest = &windows_[0];
  Window* before = nullptr;  // a window the row runs past, or starts at most kWindowBytes after
  for (Window& w : windows_) {
    const uint64_t end = w.start + w.bytes.size();
    if (!w.bytes.empty() && ref.offset >= w.start) {
      if (ref.offset + ref.size <= end) {
        w.used = clock_;
        encoded_row.assign(w.bytes, ref.offset - w.start, ref.size);
        return absl::OkStatus();
      }
      if (ref.offset <= end + kWindowBytes) before = &w;
    }
    if (w.used < oldest->used) oldest = &w;
  }
  Window& w = before != nullptr ? *before : *oldest;
  const uint64_t size = before != nullptr
                            ? std::min<uint64_t>(std::max<uint64_t>(kWindowBytes, ref.size),
                                                 spool_.rows_bytes_ - ref.offset)
                            : ref.size;
  w.start = ref.offset;
  w.used = clock_;
  w.bytes.resize(size);
  ++reads_;
  absl::Status read = spool_.ReadRowLog(ref.offset, size, w.bytes.data());
  if (!read.ok()) {
    w.bytes.clear();
    return read;
  }
  encoded_row.assign(w.bytes, 0, ref.size);
  return absl::OkStatus();
}

absl::Status Spool::AddChange(int mapping, int change, std::string_view key, const Fingerprint& fp,
                              std::string_view encoded_payload) {
  if (changes_finished_) return absl::FailedPreconditionError("change added after FinishChanges");
  auto& writer = changes_[mapping];
  if (writer == nullptr) {
    // Raw: compressing it cost the diff more time than it saved in bytes
    // (zstd on the change writer's thread), and it is read once, right after.
    RunFileOptions o;
    o.compression_level = 0;
    o.pool = pool_.get();
    BACKFLOW_ASSIGN_OR_RETURN(
        writer, RunFileWriter::Create(PathOf(fmt::format("changes-{}.run", mapping)), o));
  }
  std::string value;
  value.reserve(17 + encoded_payload.size());
  value.push_back(static_cast<char>(change));
  auto bytes = fp.ToBytes();
  value.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  value.append(encoded_payload);
  return writer->Add(key, value);
}

absl::Status Spool::FinishChanges() {
  if (changes_finished_) return absl::OkStatus();
  changes_finished_ = true;
  for (auto& [mapping, writer] : changes_) BACKFLOW_RETURN_IF_ERROR(writer->Finish());
  return absl::OkStatus();
}

absl::StatusOr<Spool::ChangeReader> Spool::ScanChanges(int mapping) const {
  ChangeReader reader;
  auto it = changes_.find(mapping);
  if (it == changes_.end()) return reader;
  BACKFLOW_ASSIGN_OR_RETURN(reader.file_, RunFileReader::Open(it->second->path()));
  return reader;
}

absl::StatusOr<bool> Spool::ChangeReader::Next(std::string_view& key, int& change, Fingerprint& fp,
                                               std::string_view& encoded_payload) {
  if (file_ == nullptr) return false;
  std::string_view value;
  BACKFLOW_ASSIGN_OR_RETURN(bool more, file_->Next(key, value));
  if (!more) return false;
  if (value.size() < 17) return Damaged("a change record is too short");
  change = static_cast<unsigned char>(value[0]);
  fp = Fingerprint::FromBytes(value.data() + 1, 16);
  encoded_payload = value.substr(17);
  return true;
}

absl::Status Spool::AddAck(int mapping, AckList list, const CheckpointUpdate& update) {
  auto slot = std::make_pair(mapping, static_cast<int>(list));
  if (acks_finished_[slot]) {
    return absl::FailedPreconditionError("checkpoint update added to a finished list");
  }
  auto& writer = acks_[slot];
  if (writer == nullptr) {
    BACKFLOW_ASSIGN_OR_RETURN(writer, RunFileWriter::Create(PathOf(fmt::format(
                                          "acks-{}-{}.run", mapping, static_cast<int>(list)))));
  }
  std::string value;
  value.reserve(18 + update.identity.size());
  value.push_back(static_cast<char>(update.kind));
  auto bytes = update.fingerprint.ToBytes();
  value.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  value.append(update.identity);
  return writer->Add(update.key, value);
}

absl::Status Spool::FinishAcks(int mapping, AckList list) {
  auto slot = std::make_pair(mapping, static_cast<int>(list));
  if (acks_finished_[slot]) return absl::OkStatus();
  acks_finished_[slot] = true;
  auto it = acks_.find(slot);
  if (it == acks_.end()) return absl::OkStatus();
  return it->second->Finish();
}

absl::StatusOr<Spool::AckReader> Spool::ScanAcks(int mapping, AckList list) const {
  AckReader reader;
  auto it = acks_.find(std::make_pair(mapping, static_cast<int>(list)));
  if (it == acks_.end()) return reader;
  BACKFLOW_ASSIGN_OR_RETURN(reader.file_, RunFileReader::Open(it->second->path()));
  return reader;
}

absl::StatusOr<bool> Spool::AckReader::Next(CheckpointUpdate& update) {
  if (file_ == nullptr) return false;
  std::string_view key, value;
  BACKFLOW_ASSIGN_OR_RETURN(bool more, file_->Next(key, value));
  if (!more) return false;
  if (value.size() < 17) return Damaged("a checkpoint update record is too short");
  update.key.assign(key);
  update.kind = static_cast<CheckpointUpdate::Kind>(static_cast<unsigned char>(value[0]));
  update.fingerprint = Fingerprint::FromBytes(value.data() + 1, 16);
  update.identity.assign(value.substr(17));
  return true;
}

}  // namespace backflow
