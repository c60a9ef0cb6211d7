#include "backflow/state/checkpoint_files.h"

#include <fcntl.h>
#include <signal.h>
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
// Scans that merge the journal on the fly sort it with less: two may be open
// during a run's diff, beside the engine's own sorter.
constexpr size_t kScanSortBudget = 8 << 20;
// Commit() folds when the journal reaches this fraction of the base's bytes
// (1 / kFoldRatio): below it, rewriting the whole base would cost more than
// the scans merging the journal until then.
constexpr int64_t kFoldRatio = 4;

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
std::string InFlightPath(const std::string& dir, int64_t gen) {
  return fmt::format("{}/inflight-{}", dir, gen);
}

// The first byte of a journal event: a CheckpointUpdate::Kind, or a mark.
constexpr char kUpsertEvent = static_cast<char>(CheckpointUpdate::Kind::kUpsert);
constexpr char kRemoveEvent = static_cast<char>(CheckpointUpdate::Kind::kRemove);
constexpr char kSettleEvent = static_cast<char>(CheckpointUpdate::Kind::kSettle);
constexpr char kMarkEvent = 3;
static_assert(kUpsertEvent != kMarkEvent && kRemoveEvent != kMarkEvent &&
              kSettleEvent != kMarkEvent);

absl::Status SyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open", dir);
  int rc = fsync(fd);
  close(fd);
  if (rc != 0) return IoError("cannot sync", dir);
  return absl::OkStatus();
}

// A journal event as the journal and the fold's sorter store it, after its
// key: kind | fingerprint | identity (a settle's identity is empty, a mark's
// fingerprint zero).
void AppendEvent(std::string& payload, std::string_view key, char kind, const Fingerprint& fp,
                 std::string_view identity) {
  AppendVarint(payload, key.size());
  payload.append(key);
  AppendVarint(payload, 17 + identity.size());
  payload.push_back(kind);
  payload.append(reinterpret_cast<const char*>(&fp.high), 8);
  payload.append(reinterpret_cast<const char*>(&fp.low), 8);
  payload.append(identity);
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

// Streams a base file (values: fingerprint · identity) or an in-flight file
// (values: identity; fingerprints zero).
class FileCheckpointScanner : public CheckpointScanner {
 public:
  FileCheckpointScanner(std::unique_ptr<RunFileReader> reader, std::string mapping,
                        bool in_flight = false)
      : reader_(std::move(reader)), mapping_(std::move(mapping)), in_flight_(in_flight) {}
  // Views of the reader's current block.
  absl::StatusOr<bool> NextView(CheckpointEntryView& entry) override {
    if (reader_ == nullptr) return false;
    std::string_view key, value;
    auto more = reader_->Next(key, value);
    if (!more.ok()) return DamagedCheckpointError(mapping_, std::string(more.status().message()));
    if (!*more) return false;
    entry.key = key;
    if (in_flight_) {
      entry.fingerprint = Fingerprint{};
      entry.identity = value;
      return true;
    }
    if (value.size() < 16) {
      return DamagedCheckpointError(mapping_, "an entry is shorter than its fingerprint");
    }
    std::memcpy(&entry.fingerprint.high, value.data(), 8);
    std::memcpy(&entry.fingerprint.low, value.data() + 8, 8);
    entry.identity = value.substr(16);
    return true;
  }
  absl::StatusOr<bool> Next(CheckpointEntry& entry) override {
    CheckpointEntryView view;
    BACKFLOW_ASSIGN_OR_RETURN(bool more, NextView(view));
    if (!more) return false;
    entry.key.assign(view.key);
    entry.fingerprint = view.fingerprint;
    entry.identity.assign(view.identity);
    return true;
  }
  bool StartReadAhead() override {
    if (reader_ != nullptr) reader_->ReadAhead(kReadAheadBlocks);
    return true;
  }

 private:
  static constexpr int kReadAheadBlocks = 4;
  std::unique_ptr<RunFileReader> reader_;
  std::string mapping_;
  bool in_flight_;
};

// The state of one generation (its base and in-flight files) with its
// journal applied, key by key in ascending byte order: for each key, its
// checkpoint entry (fingerprint · identity) if it has one, and its in-flight
// identity if it is marked. Inputs left out (`with_base`, `with_marks` false)
// are not read; keys only they hold are then not visited.
class GenerationMerge {
 public:
  static absl::StatusOr<std::unique_ptr<GenerationMerge>> Open(
      const std::string& mapping, const std::string& base, bool with_base,
      const std::string& in_flight, bool with_marks, const std::string& journal,
      const std::string& spill_dir, const std::string& spill_prefix, size_t sort_budget) {
    auto m = std::unique_ptr<GenerationMerge>(new GenerationMerge(mapping));
    ExternalSorter::Options so;
    so.memory_budget = sort_budget;
    m->events_ = std::make_unique<ExternalSorter>(spill_dir, spill_prefix, so);
    auto read = ReadJournal(journal, [&](std::string_view key, std::string_view value) {
      const char kind = value[0];
      if (kind != kUpsertEvent && kind != kRemoveEvent && kind != kSettleEvent &&
          kind != kMarkEvent) {
        return absl::DataLossError(
            fmt::format("journal {}: unknown event kind {}", journal, static_cast<int>(kind)));
      }
      return m->events_->Add(key, value);
    });
    if (!read.ok()) {
      if (read.status().code() == absl::StatusCode::kDataLoss) {
        return DamagedCheckpointError(mapping, std::string(read.status().message()));
      }
      return read.status();
    }
    BACKFLOW_RETURN_IF_ERROR(m->events_->Finish());
    BACKFLOW_ASSIGN_OR_RETURN(m->journal_, m->events_->Open());
    BACKFLOW_ASSIGN_OR_RETURN(m->have_event_, m->journal_->Next(m->event_key_, m->event_));
    std::error_code ec;
    if (with_base && fs::exists(base, ec)) BACKFLOW_RETURN_IF_ERROR(m->OpenInput(base, m->base_));
    if (with_marks && fs::exists(in_flight, ec)) {
      BACKFLOW_RETURN_IF_ERROR(m->OpenInput(in_flight, m->marks_));
    }
    return m;
  }

  // Moves to the next key; false at the end.
  absl::StatusOr<bool> Next() {
    while (base_.have || marks_.have || have_event_) {
      std::string_view smallest;
      bool first = true;
      for (const std::string_view* k :
           {base_.have ? &base_.key : nullptr, marks_.have ? &marks_.key : nullptr,
            have_event_ ? &event_key_ : nullptr}) {
        if (k != nullptr && (first || *k < smallest)) smallest = *k;
        if (k != nullptr) first = false;
      }
      key_.assign(smallest);
      has_entry_ = base_.have && base_.key == key_;
      marked_ = marks_.have && marks_.key == key_;
      if (has_entry_) entry_.assign(base_.value);
      if (marked_) mark_.assign(marks_.value);
      while (have_event_ && event_key_ == key_) {
        switch (event_[0]) {
          case kUpsertEvent:
            has_entry_ = true;
            entry_.assign(event_, 1);
            marked_ = false;
            break;
          case kRemoveEvent:
            has_entry_ = false;
            marked_ = false;
            break;
          case kSettleEvent:
            marked_ = false;
            break;
          default:  // kMarkEvent
            marked_ = true;
            mark_.assign(event_, 17);
        }
        BACKFLOW_ASSIGN_OR_RETURN(have_event_, journal_->Next(event_key_, event_));
      }
      if (base_.have && base_.key == key_) BACKFLOW_RETURN_IF_ERROR(Advance(base_));
      if (marks_.have && marks_.key == key_) BACKFLOW_RETURN_IF_ERROR(Advance(marks_));
      if (has_entry_ || marked_) return true;
    }
    return false;
  }

  std::string& key() { return key_; }
  bool has_entry() const { return has_entry_; }
  std::string& entry() { return entry_; }  // fingerprint (16 bytes) · identity
  bool marked() const { return marked_; }
  std::string& mark() { return mark_; }  // the in-flight identity

 private:
  struct Input {
    std::unique_ptr<RunFileReader> reader;
    std::string_view key, value;
    bool have = false;
  };
  explicit GenerationMerge(std::string mapping) : mapping_(std::move(mapping)) {}
  absl::Status OpenInput(const std::string& path, Input& in) {
    auto opened = RunFileReader::Open(path);
    if (!opened.ok())
      return DamagedCheckpointError(mapping_, std::string(opened.status().message()));
    in.reader = *std::move(opened);
    return Advance(in);
  }
  absl::Status Advance(Input& in) {
    auto more = in.reader->Next(in.key, in.value);
    if (!more.ok()) return DamagedCheckpointError(mapping_, std::string(more.status().message()));
    in.have = *more;
    return absl::OkStatus();
  }

  std::string mapping_;
  std::unique_ptr<ExternalSorter> events_;
  std::unique_ptr<SortedStream> journal_;
  std::string_view event_key_, event_;
  bool have_event_ = false;
  Input base_, marks_;
  std::string key_, entry_, mark_;
  bool has_entry_ = false, marked_ = false;
};

// A scan over a GenerationMerge: checkpoint entries, or in-flight marks.
class MergedScanner : public CheckpointScanner {
 public:
  MergedScanner(std::unique_ptr<GenerationMerge> merge, std::string mapping, bool in_flight)
      : merge_(std::move(merge)), mapping_(std::move(mapping)), in_flight_(in_flight) {}
  absl::StatusOr<bool> Next(CheckpointEntry& entry) override {
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool more, merge_->Next());
      if (!more) return false;
      if (in_flight_ ? !merge_->marked() : !merge_->has_entry()) continue;
      entry.key.swap(merge_->key());
      if (in_flight_) {
        entry.fingerprint = Fingerprint{};
        entry.identity.swap(merge_->mark());
      } else {
        const std::string& value = merge_->entry();
        if (value.size() < 16) {
          return DamagedCheckpointError(mapping_, "an entry is shorter than its fingerprint");
        }
        std::memcpy(&entry.fingerprint.high, value.data(), 8);
        std::memcpy(&entry.fingerprint.low, value.data() + 8, 8);
        entry.identity.assign(value, 16);
      }
      return true;
    }
  }

 private:
  std::unique_ptr<GenerationMerge> merge_;
  std::string mapping_;
  bool in_flight_;
};

}  // namespace

struct CheckpointFiles::Generation {
  std::string dir;
  int64_t gen = 0;
  bool has_base = false;
  int64_t base_bytes = 0;
  int64_t journal_bytes = 0;
  std::string base() const { return BasePath(dir, gen); }
  std::string journal() const { return JournalPath(dir, gen); }
  std::string in_flight() const { return InFlightPath(dir, gen); }
};

RunFileOptions CheckpointFileOptions() {
  RunFileOptions o;
  o.durable = true;
  // Blocks are stored raw: 16 bytes of each entry are a random fingerprint,
  // so zstd saved only a quarter of the bytes (1M entries: 28.9 MB raw, 21.5
  // MB at level 1) and made the write 1.9x slower (bench_checkpoint_write).
  o.compression_level = 0;
  return o;
}

absl::StatusOr<std::unique_ptr<CheckpointFiles>> CheckpointFiles::Open(const std::string& root) {
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
    // Exactly base-<n>.ckpt: a fold's temporary file is not a generation.
    if (sscanf(name.c_str(), "base-%lld.ckp%c", &n, &tail) == 2 && tail == 't' &&
        name == fmt::format("base-{}.ckpt", n) && n > max_base) {
      max_base = n;
    }
  }
  g.has_base = max_base >= 0;
  g.gen = g.has_base ? max_base : 0;
  auto size = fs::file_size(g.journal(), ec);
  g.journal_bytes = ec ? 0 : static_cast<int64_t>(size);
  if (g.has_base) {
    auto base_size = fs::file_size(g.base(), ec);
    g.base_bytes = ec ? 0 : static_cast<int64_t>(base_size);
  }
  return g;
}

namespace {

void AppendMarks(std::string& payload, const std::vector<InFlightEntry>& entries) {
  for (const InFlightEntry& e : entries) AppendEvent(payload, e.key, kMarkEvent, {}, e.identity);
}

void AppendUpdates(std::string& payload, const std::vector<CheckpointUpdate>& updates) {
  for (const CheckpointUpdate& u : updates) {
    if (u.kind == CheckpointUpdate::Kind::kSettle) {
      AppendEvent(payload, u.key, kSettleEvent, {}, {});
    } else {
      AppendEvent(payload, u.key, static_cast<char>(u.kind), u.fingerprint, u.identity);
    }
  }
}

}  // namespace

absl::Status CheckpointFiles::Mark(const std::string& mapping,
                                   const std::vector<InFlightEntry>& entries) {
  std::string payload;
  AppendMarks(payload, entries);
  return AppendFrame(mapping, payload);
}

absl::Status CheckpointFiles::Apply(const std::string& mapping,
                                    const std::vector<CheckpointUpdate>& updates) {
  std::string payload;
  AppendUpdates(payload, updates);
  return AppendFrame(mapping, payload);
}

absl::Status CheckpointFiles::ApplyAndMark(const std::string& mapping,
                                           const std::vector<CheckpointUpdate>& updates,
                                           const std::vector<InFlightEntry>& entries) {
  // Events replay in order: the updates settle their keys, then the marks.
  std::string payload;
  AppendUpdates(payload, updates);
  AppendMarks(payload, entries);
  return AppendFrame(mapping, payload);
}

absl::Status CheckpointFiles::AppendFrame(const std::string& mapping, const std::string& payload) {
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
    if (!valid.ok()) return DamagedCheckpointError(mapping, std::string(valid.status().message()));
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
  // Leftovers, removed under the mapping's lock (the caller holds it): files
  // of older generations (a crash came between a fold's rename and its
  // cleanup); in-flight files of newer ones and temporary files (a crash came
  // before the rename: that fold never happened); spills of dead processes.
  std::error_code ec;
  bool removed_newer = false;
  for (const auto& f : fs::directory_iterator(g.dir, ec)) {
    long long n = 0;
    const std::string name = f.path().filename().string();
    std::error_code ignored;
    if (name.ends_with(".tmp")) {
      fs::remove(f.path(), ignored);
      continue;
    }
    if (sscanf(name.c_str(), "fold-%lld-", &n) == 1) {
      if (n != getpid() && kill(static_cast<pid_t>(n), 0) != 0 && errno == ESRCH) {
        fs::remove(f.path(), ignored);
      }
      continue;
    }
    const bool in_flight = sscanf(name.c_str(), "inflight-%lld", &n) == 1;
    if (!in_flight && sscanf(name.c_str(), "base-%lld.", &n) != 1 &&
        sscanf(name.c_str(), "journal-%lld", &n) != 1) {
      continue;
    }
    if (n < g.gen) fs::remove(f.path(), ignored);
    if (in_flight && n > g.gen) removed_newer |= fs::remove(f.path(), ignored);
  }
  if (removed_newer) BACKFLOW_RETURN_IF_ERROR(SyncDir(g.dir));
  if (g.journal_bytes == 0) return absl::OkStatus();
  const auto started = std::chrono::steady_clock::now();
  if (journal_mapping_ == mapping && journal_fd_ >= 0) {
    close(journal_fd_);
    journal_fd_ = -1;
  }
  BACKFLOW_ASSIGN_OR_RETURN(
      auto merge, GenerationMerge::Open(mapping, g.base(), true, g.in_flight(), true, g.journal(),
                                        g.dir, NextSpillPrefix(), kFoldSortBudget));
  const std::string next = BasePath(g.dir, g.gen + 1);
  BACKFLOW_ASSIGN_OR_RETURN(auto writer, RunFileWriter::Create(next, CheckpointFileOptions()));
  std::unique_ptr<RunFileWriter> in_flight;  // created at the first mark left open
  while (true) {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, merge->Next());
    if (!more) break;
    if (merge->has_entry()) BACKFLOW_RETURN_IF_ERROR(writer->Add(merge->key(), merge->entry()));
    if (merge->marked()) {
      if (in_flight == nullptr) {
        BACKFLOW_ASSIGN_OR_RETURN(in_flight, RunFileWriter::Create(InFlightPath(g.dir, g.gen + 1),
                                                                   CheckpointFileOptions()));
      }
      BACKFLOW_RETURN_IF_ERROR(in_flight->Add(merge->key(), merge->mark()));
    }
  }
  merge.reset();
  // The in-flight file first: base-<gen+1> appearing is what commits the fold.
  if (in_flight != nullptr) BACKFLOW_RETURN_IF_ERROR(in_flight->Finish());
  BACKFLOW_RETURN_IF_ERROR(writer->Finish());
  // Generation <gen+1> is durable: the old one can go.
  fs::remove(g.journal(), ec);
  fs::remove(g.in_flight(), ec);
  if (g.has_base) fs::remove(g.base(), ec);
  BACKFLOW_RETURN_IF_ERROR(SyncDir(g.dir));
  last_fold_.records = writer->records();
  last_fold_.in_flight = in_flight == nullptr ? 0 : in_flight->records();
  last_fold_.bytes = writer->bytes_written();
  last_fold_.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return absl::OkStatus();
}

absl::Status CheckpointFiles::Commit(const std::string& mapping) {
  BACKFLOW_ASSIGN_OR_RETURN(Generation g, Current(mapping));
  if (g.journal_bytes == 0) return absl::OkStatus();
  if (g.has_base && g.journal_bytes * kFoldRatio < g.base_bytes) return absl::OkStatus();
  return Fold(mapping);
}

std::string CheckpointFiles::NextSpillPrefix() {
  return fmt::format("fold-{}-{}", getpid(), spills_++);
}

absl::StatusOr<std::unique_ptr<CheckpointScanner>> CheckpointFiles::Scan(
    const std::string& mapping) {
  BACKFLOW_ASSIGN_OR_RETURN(Generation g, Current(mapping));
  if (g.journal_bytes > 0) {
    BACKFLOW_ASSIGN_OR_RETURN(
        auto merge, GenerationMerge::Open(mapping, g.base(), true, g.in_flight(), false,
                                          g.journal(), g.dir, NextSpillPrefix(), kScanSortBudget));
    return std::unique_ptr<CheckpointScanner>(
        new MergedScanner(std::move(merge), mapping, /*in_flight=*/false));
  }
  if (!g.has_base)
    return std::unique_ptr<CheckpointScanner>(new FileCheckpointScanner({}, mapping));
  auto reader = RunFileReader::Open(g.base());
  if (!reader.ok()) return DamagedCheckpointError(mapping, std::string(reader.status().message()));
  return std::unique_ptr<CheckpointScanner>(new FileCheckpointScanner(*std::move(reader), mapping));
}

absl::StatusOr<std::unique_ptr<CheckpointScanner>> CheckpointFiles::ScanInFlight(
    const std::string& mapping) {
  BACKFLOW_ASSIGN_OR_RETURN(Generation g, Current(mapping));
  if (g.journal_bytes > 0) {
    BACKFLOW_ASSIGN_OR_RETURN(
        auto merge, GenerationMerge::Open(mapping, g.base(), false, g.in_flight(), true,
                                          g.journal(), g.dir, NextSpillPrefix(), kScanSortBudget));
    return std::unique_ptr<CheckpointScanner>(
        new MergedScanner(std::move(merge), mapping, /*in_flight=*/true));
  }
  std::error_code ec;
  if (!fs::exists(g.in_flight(), ec)) {
    return std::unique_ptr<CheckpointScanner>(
        new FileCheckpointScanner({}, mapping, /*in_flight=*/true));
  }
  auto reader = RunFileReader::Open(g.in_flight());
  if (!reader.ok()) return DamagedCheckpointError(mapping, std::string(reader.status().message()));
  return std::unique_ptr<CheckpointScanner>(
      new FileCheckpointScanner(*std::move(reader), mapping, /*in_flight=*/true));
}

absl::StatusOr<int64_t> CheckpointFiles::Size(const std::string& mapping) {
  BACKFLOW_ASSIGN_OR_RETURN(Generation g, Current(mapping));
  if (g.journal_bytes > 0) {
    BACKFLOW_ASSIGN_OR_RETURN(
        auto merge, GenerationMerge::Open(mapping, g.base(), true, g.in_flight(), false,
                                          g.journal(), g.dir, NextSpillPrefix(), kScanSortBudget));
    int64_t count = 0;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool more, merge->Next());
      if (!more) break;
      if (merge->has_entry()) ++count;
    }
    return count;
  }
  if (!g.has_base) return 0;
  auto count = RunFileRecordCount(g.base());
  if (!count.ok()) return DamagedCheckpointError(mapping, std::string(count.status().message()));
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
