#include "backflow/state/checkpoint_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "backflow/common/status_macros.h"
#include "backflow/storage/external_sorter.h"
#include "backflow/storage/run_file.h"
#include "fmt/format.h"
#include "xxhash.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

constexpr size_t kFrameHeader = 12;  // u32 payload size | u64 XXH3-64(payload)
constexpr uint32_t kMaxFrame = 1u << 30;
constexpr size_t kFoldSortBudget = 32 << 20;

absl::Status IoError(const std::string& what, const std::string& path) {
  return absl::UnavailableError(
      fmt::format("{} {}: {} (check the disk space and permissions of the state folder)", what,
                  path, std::strerror(errno)));
}

std::string BasePath(const std::string& dir, int64_t gen) {
  return fmt::format("{}/base-{}.ckpt", dir, gen);
}
std::string JournalPath(const std::string& dir, int64_t gen) {
  return fmt::format("{}/journal-{}", dir, gen);
}

absl::Status SyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open", dir);
  int rc = fsync(fd);
  close(fd);
  if (rc != 0) return IoError("cannot sync", dir);
  return absl::OkStatus();
}

// An update as the journal and the fold's sorter store it: kind | fingerprint | identity.
void EncodeUpdateValue(const CheckpointUpdate& u, std::string& out) {
  out.push_back(static_cast<char>(u.kind));
  out.append(reinterpret_cast<const char*>(&u.fingerprint.high), 8);
  out.append(reinterpret_cast<const char*>(&u.fingerprint.low), 8);
  out.append(u.identity);
}

// Reads the frames of a journal. Calls `on_update(key, value)` for every
// update of every whole frame; returns the byte length of the valid prefix
// (a torn last frame is not part of it), or kDataLoss for damage elsewhere.
template <typename OnUpdate>
absl::StatusOr<int64_t> ReadJournal(const std::string& path, OnUpdate on_update) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return 0;
    return IoError("cannot open", path);
  }
  struct stat st {};
  fstat(fd, &st);
  const int64_t size = st.st_size;
  int64_t offset = 0;
  std::string frame;
  absl::Status status;
  while (offset + static_cast<int64_t>(kFrameHeader) <= size) {
    char header[kFrameHeader];
    if (pread(fd, header, kFrameHeader, offset) != static_cast<ssize_t>(kFrameHeader)) {
      status = IoError("cannot read", path);
      break;
    }
    uint32_t length;
    uint64_t checksum;
    std::memcpy(&length, header, 4);
    std::memcpy(&checksum, header + 4, 8);
    const int64_t end = offset + static_cast<int64_t>(kFrameHeader) + length;
    if (length > kMaxFrame || end > size) break;  // torn: runs past the end
    frame.resize(length);
    if (pread(fd, frame.data(), length, offset + static_cast<int64_t>(kFrameHeader)) !=
        static_cast<ssize_t>(length)) {
      status = IoError("cannot read", path);
      break;
    }
    if (XXH3_64bits(frame.data(), frame.size()) != checksum) {
      if (end == size) break;  // torn last frame
      status = absl::DataLossError(fmt::format(
          "journal {} has a damaged frame at byte {} followed by more frames", path, offset));
      break;
    }
    size_t pos = 0;
    while (pos < frame.size()) {
      uint64_t key_size = 0, value_size = 0;
      if (!ReadVarint(frame.data(), frame.size(), pos, key_size) || key_size > frame.size() - pos) {
        status =
            absl::DataLossError(fmt::format("journal {}: bad record at byte {}", path, offset));
        break;
      }
      std::string_view key(frame.data() + pos, key_size);
      pos += key_size;
      if (!ReadVarint(frame.data(), frame.size(), pos, value_size) ||
          value_size > frame.size() - pos || value_size < 17) {
        status =
            absl::DataLossError(fmt::format("journal {}: bad record at byte {}", path, offset));
        break;
      }
      std::string_view value(frame.data() + pos, value_size);
      pos += value_size;
      status = on_update(key, value);
      if (!status.ok()) break;
    }
    if (!status.ok()) break;
    offset = end;
  }
  close(fd);
  if (!status.ok()) return status;
  return offset;
}

class FileCheckpointScanner : public CheckpointScanner {
 public:
  FileCheckpointScanner(std::unique_ptr<RunFileReader> reader, std::string mapping)
      : reader_(std::move(reader)), mapping_(std::move(mapping)) {}
  absl::StatusOr<bool> Next(CheckpointEntry& entry) override {
    if (reader_ == nullptr) return false;
    std::string_view key, value;
    auto more = reader_->Next(key, value);
    if (!more.ok()) return DamagedCheckpointError(mapping_, std::string(more.status().message()));
    if (!*more) return false;
    if (value.size() < 16) {
      return DamagedCheckpointError(mapping_, "an entry is shorter than its fingerprint");
    }
    entry.key.assign(key);
    std::memcpy(&entry.fingerprint.high, value.data(), 8);
    std::memcpy(&entry.fingerprint.low, value.data() + 8, 8);
    entry.identity.assign(value.substr(16));
    return true;
  }

 private:
  std::unique_ptr<RunFileReader> reader_;
  std::string mapping_;
};

}  // namespace

RunFileOptions CheckpointFileOptions() {
  RunFileOptions o;
  o.durable = true;
  // Blocks are stored raw: 16 bytes of each entry are a random fingerprint,
  // so zstd saved only a quarter of the bytes (1M entries: 28.9 MB raw, 21.5
  // MB at level 1) and made the write 1.9x slower (bench_checkpoint_write).
  o.compression_level = 0;
  return o;
}

struct CheckpointFiles::Generation {
  std::string dir;
  int64_t gen = 0;
  bool has_base = false;
  int64_t journal_bytes = 0;
  std::string base() const { return BasePath(dir, gen); }
  std::string journal() const { return JournalPath(dir, gen); }
};

absl::StatusOr<std::unique_ptr<CheckpointFiles>> CheckpointFiles::Open(const std::string& root) {
  std::error_code ec;
  // Leftovers of folds a crash interrupted (the old base and journal are intact).
  for (const auto& mapping_dir : fs::directory_iterator(root, ec)) {
    std::error_code ec2;
    for (const auto& f : fs::directory_iterator(mapping_dir.path(), ec2)) {
      const std::string name = f.path().filename().string();
      if (name.ends_with(".tmp") || name.starts_with("fold-")) fs::remove(f.path(), ec2);
    }
  }
  return std::unique_ptr<CheckpointFiles>(new CheckpointFiles(root));
}

CheckpointFiles::~CheckpointFiles() {
  if (journal_fd_ >= 0) close(journal_fd_);
}

std::string CheckpointFiles::DirOf(const std::string& mapping) const {
  std::string name;
  for (unsigned char c : mapping) {
    if (std::isalnum(c) || c == '_' || c == '-') {
      name.push_back(static_cast<char>(c));
    } else {
      name += fmt::format("%{:02x}", c);
    }
  }
  return root_ + "/" + name;
}

absl::Status CheckpointFiles::Damaged(const std::string& mapping, const std::string& detail) const {
  return DamagedCheckpointError(mapping, detail);
}

absl::StatusOr<CheckpointFiles::Generation> CheckpointFiles::Current(
    const std::string& mapping) const {
  Generation g;
  g.dir = DirOf(mapping);
  std::error_code ec;
  int64_t max_base = -1;
  for (const auto& f : fs::directory_iterator(g.dir, ec)) {
    long long n = 0;
    char tail = 0;
    const std::string name = f.path().filename().string();
    if (sscanf(name.c_str(), "base-%lld.ckp%c", &n, &tail) == 2 && tail == 't' && n > max_base) {
      max_base = n;
    }
  }
  g.has_base = max_base >= 0;
  g.gen = g.has_base ? max_base : 0;
  auto size = fs::file_size(g.journal(), ec);
  g.journal_bytes = ec ? 0 : static_cast<int64_t>(size);
  return g;
}

absl::Status CheckpointFiles::Apply(const std::string& mapping,
                                    const std::vector<CheckpointUpdate>& updates) {
  std::string payload;
  for (const CheckpointUpdate& u : updates) {
    if (u.kind == CheckpointUpdate::Kind::kSettle) continue;
    AppendVarint(payload, u.key.size());
    payload.append(u.key);
    AppendVarint(payload, 17 + u.identity.size());
    EncodeUpdateValue(u, payload);
  }
  if (payload.empty()) return absl::OkStatus();
  if (payload.size() > kMaxFrame) {
    return absl::InvalidArgumentError("too many checkpoint updates applied at once");
  }
  // The open journal stays current until this object folds or resets the
  // mapping (both close it); no other process writes it (the mapping's lock).
  if (journal_fd_ < 0 || journal_mapping_ != mapping) {
    BACKFLOW_ASSIGN_OR_RETURN(Generation g, Current(mapping));
    if (journal_fd_ >= 0) close(journal_fd_);
    journal_fd_ = -1;
    std::error_code ec;
    fs::create_directories(g.dir, ec);
    if (ec) {
      return absl::UnavailableError(
          fmt::format("cannot create the checkpoint folder {}: {}", g.dir, ec.message()));
    }
    // Drop a torn last frame before appending after it.
    auto valid = ReadJournal(g.journal(),
                             [](std::string_view, std::string_view) { return absl::OkStatus(); });
    if (!valid.ok()) return Damaged(mapping, std::string(valid.status().message()));
    int fd = open(g.journal().c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return IoError("cannot open", g.journal());
    if (ftruncate(fd, *valid) != 0 || lseek(fd, 0, SEEK_END) < 0) {
      close(fd);
      return IoError("cannot prepare", g.journal());
    }
    if (*valid == 0) BACKFLOW_RETURN_IF_ERROR(SyncDir(g.dir));
    journal_fd_ = fd;
    journal_mapping_ = mapping;
    journal_path_ = g.journal();
  }
  std::string frame;
  frame.reserve(kFrameHeader + payload.size());
  uint32_t length = static_cast<uint32_t>(payload.size());
  uint64_t checksum = XXH3_64bits(payload.data(), payload.size());
  frame.append(reinterpret_cast<const char*>(&length), 4);
  frame.append(reinterpret_cast<const char*>(&checksum), 8);
  frame.append(payload);
  size_t done = 0;
  while (done < frame.size()) {
    ssize_t n = write(journal_fd_, frame.data() + done, frame.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status error = IoError("cannot write", journal_path_);
      close(journal_fd_);  // reopening drops the partial frame
      journal_fd_ = -1;
      return error;
    }
    done += static_cast<size_t>(n);
  }
  if (fdatasync(journal_fd_) != 0) {
    absl::Status error = IoError("cannot sync", journal_path_);
    close(journal_fd_);
    journal_fd_ = -1;
    return error;
  }
  return absl::OkStatus();
}

absl::Status CheckpointFiles::Fold(const std::string& mapping) {
  BACKFLOW_ASSIGN_OR_RETURN(Generation g, Current(mapping));
  // Files of older generations: a crash came between a fold's rename and its cleanup.
  std::error_code ec;
  for (const auto& f : fs::directory_iterator(g.dir, ec)) {
    long long n = 0;
    const std::string name = f.path().filename().string();
    if ((sscanf(name.c_str(), "base-%lld.", &n) == 1 ||
         sscanf(name.c_str(), "journal-%lld", &n) == 1) &&
        n < g.gen) {
      std::error_code ignored;
      fs::remove(f.path(), ignored);
    }
  }
  if (g.journal_bytes == 0) return absl::OkStatus();
  const auto started = std::chrono::steady_clock::now();
  if (journal_mapping_ == mapping && journal_fd_ >= 0) {
    close(journal_fd_);
    journal_fd_ = -1;
  }
  // The journal's updates in key order; for a key updated several times the
  // last update comes last.
  ExternalSorter::Options so;
  so.memory_budget = kFoldSortBudget;
  ExternalSorter updates(g.dir, "fold", so);
  auto read = ReadJournal(g.journal(), [&](std::string_view key, std::string_view value) {
    return updates.Add(key, value);
  });
  if (!read.ok()) {
    if (read.status().code() == absl::StatusCode::kDataLoss) {
      return Damaged(mapping, std::string(read.status().message()));
    }
    return read.status();
  }
  BACKFLOW_RETURN_IF_ERROR(updates.Finish());
  BACKFLOW_ASSIGN_OR_RETURN(std::unique_ptr<SortedStream> journal, updates.Open());
  std::unique_ptr<RunFileReader> base;
  if (g.has_base) {
    auto opened = RunFileReader::Open(g.base());
    if (!opened.ok()) return Damaged(mapping, std::string(opened.status().message()));
    base = *std::move(opened);
  }
  const std::string next = BasePath(g.dir, g.gen + 1);
  BACKFLOW_ASSIGN_OR_RETURN(auto writer, RunFileWriter::Create(next, CheckpointFileOptions()));

  std::string_view base_key, base_value, key, value;
  bool have_base = false;
  auto next_base = [&]() -> absl::Status {
    if (base == nullptr) return absl::OkStatus();
    auto more = base->Next(base_key, base_value);
    if (!more.ok()) return Damaged(mapping, std::string(more.status().message()));
    have_base = *more;
    return absl::OkStatus();
  };
  BACKFLOW_RETURN_IF_ERROR(next_base());
  BACKFLOW_ASSIGN_OR_RETURN(bool have_update, journal->Next(key, value));
  std::string last_key, last_value, entry;
  while (have_base || have_update) {
    if (have_update && (!have_base || key <= base_key)) {
      // The last update of this key wins.
      last_key.assign(key);
      last_value.assign(value);
      while (true) {
        BACKFLOW_ASSIGN_OR_RETURN(have_update, journal->Next(key, value));
        if (!have_update || key != last_key) break;
        last_value.assign(value);
      }
      if (have_base && base_key == last_key) BACKFLOW_RETURN_IF_ERROR(next_base());
      if (static_cast<CheckpointUpdate::Kind>(last_value[0]) == CheckpointUpdate::Kind::kUpsert) {
        entry.assign(last_value, 1);
        BACKFLOW_RETURN_IF_ERROR(writer->Add(last_key, entry));
      }
    } else {
      BACKFLOW_RETURN_IF_ERROR(writer->Add(base_key, base_value));
      BACKFLOW_RETURN_IF_ERROR(next_base());
    }
  }
  BACKFLOW_RETURN_IF_ERROR(writer->Finish());
  // base-<gen+1> is durable: the old generation can go.
  fs::remove(g.journal(), ec);
  if (g.has_base) fs::remove(g.base(), ec);
  BACKFLOW_RETURN_IF_ERROR(SyncDir(g.dir));
  last_fold_.records = writer->records();
  last_fold_.bytes = writer->bytes_written();
  last_fold_.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CheckpointScanner>> CheckpointFiles::Scan(
    const std::string& mapping) {
  BACKFLOW_RETURN_IF_ERROR(Fold(mapping));
  BACKFLOW_ASSIGN_OR_RETURN(Generation g, Current(mapping));
  if (!g.has_base)
    return std::unique_ptr<CheckpointScanner>(new FileCheckpointScanner({}, mapping));
  auto reader = RunFileReader::Open(g.base());
  if (!reader.ok()) return Damaged(mapping, std::string(reader.status().message()));
  return std::unique_ptr<CheckpointScanner>(new FileCheckpointScanner(*std::move(reader), mapping));
}

absl::StatusOr<int64_t> CheckpointFiles::Size(const std::string& mapping) {
  BACKFLOW_RETURN_IF_ERROR(Fold(mapping));
  BACKFLOW_ASSIGN_OR_RETURN(Generation g, Current(mapping));
  if (!g.has_base) return 0;
  auto count = RunFileRecordCount(g.base());
  if (!count.ok()) return Damaged(mapping, std::string(count.status().message()));
  return *count;
}

absl::Status CheckpointFiles::Reset(const std::string& mapping) {
  if (journal_mapping_ == mapping && journal_fd_ >= 0) {
    close(journal_fd_);
    journal_fd_ = -1;
  }
  std::error_code ec;
  if (!fs::exists(DirOf(mapping), ec)) return absl::OkStatus();
  fs::remove_all(DirOf(mapping), ec);
  if (ec) {
    return absl::UnavailableError(
        fmt::format("cannot remove the checkpoint of \"{}\": {}", mapping, ec.message()));
  }
  return SyncDir(root_);
}

}  // namespace backflow
