#include "backflow/engine/sync_engine.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <map>
#include <optional>
#include <set>

#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/status_macros.h"
#include "backflow/destinations/destination.h"
#include "backflow/engine/batch_pool.h"
#include "backflow/engine/change_writer.h"
#include "backflow/engine/spool.h"
#include "backflow/engine/warehouse_mode.h"
#include "backflow/mapping/mapper.h"
#include "backflow/sources/source.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/state/checkpoint_prefetch.h"
#include "backflow/storage/key_order.h"
#include "backflow/storage/prefetch_stream.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using Steady = std::chrono::steady_clock;

// Checkpoint updates applied per transaction when many are applied at once.
constexpr size_t kCheckpointChunk = 5'000;

// An exclusive, process-lifetime lock on one mapping (released by the kernel
// if the process dies). The holder writes who it is into the file, so that a
// refused process can say.
class MappingLock {
 public:
  static absl::StatusOr<std::unique_ptr<MappingLock>> Acquire(const std::string& dir,
                                                              const std::string& mapping) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    std::string path = (fs::path(dir) / (mapping + ".lock")).string();
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      return absl::UnavailableError(fmt::format("cannot open lock file {}", path));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      char buf[256];
      ssize_t n = pread(fd, buf, sizeof(buf), 0);
      close(fd);
      std::string holder(buf, n > 0 ? static_cast<size_t>(n) : 0);
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\0')) holder.pop_back();
      return MappingBusyError(
          mapping, holder.empty() ? "" : fmt::format("held by \"{}\" on this host", holder));
    }
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    const std::string me = fmt::format("backflow {} pid {}\n", host, getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, me.data(), me.size(), 0) < 0) {
      // Only the "busy" message of another process loses its detail.
    }
    return std::unique_ptr<MappingLock>(new MappingLock(fd));
  }
  ~MappingLock() {
    if (ftruncate(fd_, 0) != 0) {
      // A stale name is only shown while the next holder writes its own.
    }
    close(fd_);
  }

 private:
  explicit MappingLock(int fd) : fd_(fd) {}
  int fd_;
};

bool Selected(RecordSelection selection, ChangeKind change) {
  switch (selection) {
    case RecordSelection::kAll:
      return true;
    case RecordSelection::kAdded:
      return change == ChangeKind::kAdded;
    case RecordSelection::kUpdated:
      return change == ChangeKind::kUpdated;
    case RecordSelection::kAddedOrUpdated:
      return change != ChangeKind::kDeleted;
    case RecordSelection::kDeleted:
      return change == ChangeKind::kDeleted;
  }
  return true;
}

// What the spool keeps for each row with a key: where the row is in the row
// log, then for each mapping of the run (in order) whether the row mapped and
// the fingerprint of its payload.
class RowSummary {
 public:
  // kMappedAsRow: mapped, and the payload is the row itself (its encoding is
  // the row's bytes in the row log: Mapper::FingerprintOfRowAsPayload).
  enum Status : uint8_t { kMapped = 0, kRejected = 1, kNotMapped = 2, kMappedAsRow = 3 };
  static constexpr size_t kHead = 12;
  static constexpr size_t kPerMapping = 17;

  static void Start(std::string& out, RowRef ref) {
    out.append(reinterpret_cast<const char*>(&ref.offset), 8);
    out.append(reinterpret_cast<const char*>(&ref.size), 4);
  }
  static void Add(std::string& out, Status status, const Fingerprint& fp) {
    out.push_back(static_cast<char>(status));
    out.append(reinterpret_cast<const char*>(&fp.high), 8);
    out.append(reinterpret_cast<const char*>(&fp.low), 8);
  }

  explicit RowSummary(std::string_view data) : data_(data) {}
  bool valid(int index) const {
    return data_.size() >= kHead + kPerMapping * static_cast<size_t>(index + 1);
  }
  RowRef ref() const {
    RowRef r;
    std::memcpy(&r.offset, data_.data(), 8);
    std::memcpy(&r.size, data_.data() + 8, 4);
    return r;
  }
  Status status(int index) const {
    return static_cast<Status>(data_[kHead + kPerMapping * static_cast<size_t>(index)]);
  }
  bool mapped(int index) const {
    const Status s = status(index);
    return s == kMapped || s == kMappedAsRow;
  }
  Fingerprint fingerprint(int index) const {
    Fingerprint fp;
    const char* p = data_.data() + kHead + kPerMapping * static_cast<size_t>(index) + 1;
    std::memcpy(&fp.high, p, 8);
    std::memcpy(&fp.low, p + 8, 8);
    return fp;
  }

 private:
  std::string_view data_;
};

// One key of the model, as the merge sees it.
struct KeyedRow {
  std::string_view key;
  std::string_view summary;  // of its first row
  int64_t copies = 0;        // rows with this key
};

// Everything one mapping needs during a run.
struct MappingRun {
  const MappingConfig* config = nullptr;
  const DestinationConfig* destination_config = nullptr;
  const ActionSpec* action = nullptr;
  // Shared by the mappings of this run that use the same destination (and
  // so its rate limit).
  std::shared_ptr<Destination> destination;
  std::optional<Mapper> mapper;
  RunInfo run;
  Steady::time_point started;
  std::vector<RunRecord> records;  // failed/rejected, not yet stored
  int64_t reported = 0;
  std::vector<PlannedChange> sample;
  int64_t checkpoint_records = 0;  // records the destination held (or may hold) before this run
  bool done = false;               // failed before delivery
  bool cancelled = false;          // stopped by SyncOptions::cancel
};

class Runner {
 public:
  Runner(const Workspace& ws, const Registry& registry, StateStore& state, ConnectorEnv env,
         const std::string& spool_dir, const SyncOptions& options)
      : ws_(ws),
        registry_(registry),
        state_(state),
        env_(env),
        spool_dir_(spool_dir),
        options_(options) {}

  absl::StatusOr<std::vector<MappingRunResult>> Run(const ModelConfig& model,
                                                    const std::vector<std::string>& names);

 private:
  void Progress(const std::string& phase, const std::string& mapping, int64_t sent, int64_t to_send,
                bool force) {
    if (!options_.on_progress) return;
    auto now = Steady::now();
    if (!force && now - last_progress_ < std::chrono::milliseconds(200)) return;
    last_progress_ = now;
    SyncProgress p;
    p.phase = phase;
    p.mapping = mapping;
    p.extracted = extracted_;
    p.sent = sent;
    p.to_send = to_send;
    p.elapsed_s = std::chrono::duration<double>(now - start_).count();
    options_.on_progress(p);
  }

  void Report(MappingRun& m, RunRecord record) {
    if (m.reported >= options_.max_reported_records) return;
    ++m.reported;
    m.records.push_back(std::move(record));
  }

  absl::Status FlushRecords(MappingRun& m) {
    if (m.records.empty()) return absl::OkStatus();
    for (RunRecord& r : m.records) {  // connector errors may quote settings
      r.error = ws_.RedactSecrets(std::move(r.error));
      r.payload = ws_.RedactSecrets(std::move(r.payload));
    }
    absl::Status status = state_.AddRunRecords(m.run.id, m.records);
    m.records.clear();
    return status;
  }

  // Records a run-level failure and finishes the run.
  void Fail(MappingRun& m, const std::string& error) {
    m.run.error = error;
    m.done = true;
  }

  // The whole run (e.g. the service is stopping), or this mapping's run, was
  // asked to stop.
  bool CancelRequested(const std::string& mapping) const {
    if (options_.cancel != nullptr && options_.cancel->load(std::memory_order_relaxed)) {
      return true;
    }
    return options_.cancel_mapping && options_.cancel_mapping(mapping);
  }
  bool AllCancelled() const {
    for (const std::string& name : mapping_names_) {
      if (!CancelRequested(name)) return false;
    }
    return !mapping_names_.empty();
  }

  void Cancel(MappingRun& m, const std::string& what) {
    Fail(m, fmt::format("cancelled {}", what));
    m.cancelled = true;
  }

  absl::Status Finish(MappingRun& m) {
    if (m.cancelled) {
      m.run.status = RunStatus::kCancelled;
    } else if (!m.run.error.empty()) {
      m.run.status = RunStatus::kFailed;
    } else if (m.run.counts.failed > 0 || m.run.counts.rejected > 0) {
      m.run.status = RunStatus::kPartial;
    } else {
      m.run.status = RunStatus::kSucceeded;
    }
    m.run.finished_at = FormatIso8601(SystemClock().Now());
    m.run.duration_s = std::chrono::duration<double>(Steady::now() - m.started).count();
    m.run.error = ws_.RedactSecrets(std::move(m.run.error));
    absl::Status flushed = FlushRecords(m);
    absl::Status updated = state_.UpdateRun(m.run);
    return flushed.ok() ? updated : flushed;
  }

  absl::Status Extract(const ModelConfig& model, Source& source, Schema& schema,
                       std::vector<MappingRun>& runs);
  absl::Status Diff(MappingRun& m, int index, const ModelConfig& model, const Schema& schema,
                    const std::string& null_key_error);
  absl::Status Deliver(MappingRun& m, int index);
  // One model key of the merge: rejected, added, updated or unchanged.
  // `entry` is its checkpoint entry, null when it has none.
  template <typename Emit>
  absl::Status DiffRow(MappingRun& m, int index, const ModelConfig& model, const Schema& schema,
                       const KeyedRow& row, const CheckpointEntryView* entry, bool was_in_flight,
                       Emit& emit, Row& payload);
  absl::Status ApplyAcks(MappingRun& m, int index, Spool::AckList list);
  // The run-level error when the change set deletes more than the mapping's
  // max_deletes allows; empty when it may proceed.
  std::string CheckDeletionThreshold(const MappingRun& m) const;

  // Warehouse change detection (the model's change_detection: warehouse).
  absl::StatusOr<std::unique_ptr<RowReader>> OpenCandidates(const ModelConfig& model,
                                                            const Schema& schema,
                                                            std::vector<MappingRun>& runs);
  // Where the checkpoint advances: the state store, or the warehouse (whose
  // writes are committed before the state store clears the in-flight marks).
  absl::Status ApplyCheckpoint(int index, const std::string& mapping,
                               const std::vector<CheckpointUpdate>& updates);

  const Workspace& ws_;
  const Registry& registry_;
  StateStore& state_;
  ConnectorEnv env_;
  const std::string& spool_dir_;
  const SyncOptions& options_;
  WarehouseChangeDetection* warehouse_ = nullptr;  // owned by the run's source
  std::unique_ptr<WarehouseSnapshot> snapshot_;    // from extraction to the end of Diff
  std::vector<Fingerprint> versions_;              // per mapping of the run (warehouse mode)
  std::vector<std::string> mapping_names_;         // the mappings of this run
  std::unique_ptr<Spool> spool_;
  int64_t extracted_ = 0;
  std::string row_buffer_;
  Steady::time_point start_ = Steady::now();
  Steady::time_point last_progress_{};
};

absl::Status Runner::Extract(const ModelConfig& model, Source& source, Schema& schema,
                             std::vector<MappingRun>& runs) {
  std::unique_ptr<RowReader> reader;
  if (warehouse_ != nullptr) {
    BACKFLOW_ASSIGN_OR_RETURN(snapshot_, warehouse_->Begin(model.sql, model.primary_key,
                                                           WarehousePassOptions{options_.cancel}));
    schema = snapshot_->schema();
  } else {
    BACKFLOW_ASSIGN_OR_RETURN(
        reader, source.Query(model.sql, QueryOptions{model.primary_key, options_.cancel}));
    schema = reader->schema();
  }
  int key_index = FindColumn(schema, model.primary_key);
  if (key_index < 0) {
    std::vector<std::string> names;
    for (const Column& c : schema) names.push_back(c.name);
    return absl::FailedPreconditionError(fmt::format(
        "model \"{}\": its unique identifier column \"{}\" is not returned by the SQL (columns: "
        "{}); nothing was sent",
        model.name, model.primary_key, fmt::join(names, ", ")));
  }
  // Every mapping maps and fingerprints each row as it arrives: the spool
  // then sorts only (key, where the row is, each mapping's fingerprint).
  for (MappingRun& m : runs) {
    if (m.done) continue;
    auto mapper = Mapper::Create(m.config->name, model.name, m.config->fields, *m.action, schema,
                                 model.primary_key);
    if (!mapper.ok()) {
      Fail(m, std::string(mapper.status().message()));
      continue;
    }
    m.mapper = *std::move(mapper);
  }
  if (warehouse_ != nullptr) {
    BACKFLOW_ASSIGN_OR_RETURN(reader, OpenCandidates(model, schema, runs));
  }
  // Rows arrive encoded (RowReader::NextEncoded): spooled as they are, and
  // read through views; a Row is decoded only for a mapping that must map it.
  const size_t width = schema.size() + (warehouse_ != nullptr ? 1 : 0);  // + the row hash
  Row row, payload;
  std::vector<ValueView> values;
  std::string_view encoded;
  RowEncoder without_hash;
  std::string summary, row_hash;
  while (true) {
    auto more = reader->NextEncoded(encoded);
    if (!more.ok()) {
      return absl::Status(
          more.status().code(),
          fmt::format("extraction failed after {} rows: {}; nothing was sent and nothing was "
                      "treated as deleted",
                      extracted_, more.status().message()));
    }
    if (!*more) break;
    ++extracted_;
    if ((extracted_ & 1023) == 0) {  // not per row: these read the clock and flags
      if (AllCancelled()) {
        return absl::CancelledError(
            fmt::format("cancelled during extraction after {} rows; nothing was sent", extracted_));
      }
      Progress("extracting", "", 0, 0, false);
    }
    if (!DecodeRowViews(encoded, values).ok() || values.size() != width) {
      return absl::InternalError(fmt::format(
          "the source returned row {} with {} values for {} columns{}; nothing was sent",
          extracted_, values.size(), schema.size(),
          warehouse_ != nullptr ? " and the row hash" : ""));
    }
    if (warehouse_ != nullptr) {  // the row hash comes last
      row_hash = values.back().ToString();
      values.pop_back();  // the other views still view `encoded`
      without_hash.Begin(values.size());
      for (const ValueView& v : values) without_hash.AppendEncoded(v.encoded());
      encoded = without_hash.row();
    }
    BACKFLOW_ASSIGN_OR_RETURN(RowRef ref, spool_->AppendRow(encoded));
    const ValueView& key = values[key_index];
    if (key.is_null()) {
      BACKFLOW_RETURN_IF_ERROR(spool_->AddNullKey(ref));
    } else {
      summary.clear();
      RowSummary::Start(summary, ref);
      bool decoded = false;
      for (const MappingRun& m : runs) {
        if (!m.mapper) {
          RowSummary::Add(summary, RowSummary::kNotMapped, {});
          continue;
        }
        if (std::optional<Fingerprint> fp = m.mapper->FingerprintOfRowAsPayload(values, encoded)) {
          RowSummary::Add(summary, RowSummary::kMappedAsRow, *fp);
          continue;
        }
        if (!decoded) {
          BACKFLOW_RETURN_IF_ERROR(DecodeRowInto(encoded, row));
          decoded = true;
        }
        if (!m.mapper->Map(row, payload).ok()) {
          RowSummary::Add(summary, RowSummary::kRejected, {});
        } else {
          RowSummary::Add(summary, RowSummary::kMapped, m.mapper->PayloadFingerprint(payload));
        }
      }
      if (warehouse_ != nullptr) AppendRowHash(summary, row_hash);
      BACKFLOW_RETURN_IF_ERROR(spool_->AddKeyed(key.ToString(), summary));
    }
  }
  return spool_->FinishLoad();
}

absl::StatusOr<std::unique_ptr<RowReader>> Runner::OpenCandidates(const ModelConfig& model,
                                                                  const Schema& schema,
                                                                  std::vector<MappingRun>& runs) {
  WarehouseCandidateFilter filter;
  filter.all_rows = options_.full_resync;
  std::set<std::string> in_flight;
  for (size_t i = 0; i < runs.size(); ++i) {
    MappingRun& m = runs[i];
    if (!m.mapper) continue;
    versions_[i] = MappingVersion(*m.config, model, schema);
    filter.mappings.emplace_back(m.config->name, versions_[i]);
    BACKFLOW_ASSIGN_OR_RETURN(auto flights, state_.ScanInFlight(m.config->name));
    CheckpointEntry flight;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool more, flights->Next(flight));
      if (!more) break;
      in_flight.insert(flight.key);
    }
  }
  filter.in_flight_keys.assign(in_flight.begin(), in_flight.end());
  return snapshot_->ReadCandidates(filter);
}

absl::Status Runner::ApplyCheckpoint(int index, const std::string& mapping,
                                     const std::vector<CheckpointUpdate>& updates) {
  if (warehouse_ == nullptr) return state_.ApplyCheckpoint(mapping, updates);
  std::vector<WarehouseCheckpointWrite> writes;
  std::vector<CheckpointUpdate> settles;
  BACKFLOW_RETURN_IF_ERROR(ToWarehouseWrites(updates, versions_[index], writes, settles));
  BACKFLOW_RETURN_IF_ERROR(warehouse_->Apply(mapping, writes));
  return state_.ApplyCheckpoint(mapping, settles);
}

absl::Status Runner::Diff(MappingRun& m, int index, const ModelConfig& model, const Schema& schema,
                          const std::string& null_key_error) {
  RunCounts& c = m.run.counts;
  c.extracted = extracted_;
  const std::string& name = m.config->name;
  const Mapper& mapper = *m.mapper;
  const FieldLayout& layout = mapper.layout();
  std::string encoded;

  // NULL keys: rejected for every mapping.
  c.rejected += spool_->null_key_rows();
  if (spool_->null_key_rows() > 0) {
    BACKFLOW_ASSIGN_OR_RETURN(
        std::vector<RowRef> refs,
        spool_->NullKeyRows(static_cast<size_t>(
            std::max(0, options_.max_reported_records - static_cast<int>(m.reported)))));
    for (RowRef ref : refs) {
      BACKFLOW_RETURN_IF_ERROR(spool_->ReadRow(ref, encoded));
      BACKFLOW_ASSIGN_OR_RETURN(Row values, DecodeRow(encoded));
      Report(m, {.key = "",
                 .outcome = "rejected",
                 .change = "",
                 .error = null_key_error,
                 .error_class = "record",
                 .payload = JsonObject(schema, values),
                 .recommended_action = fmt::format(
                     "Make \"{}\" non-NULL in model \"{}\" (or filter those rows out in its SQL).",
                     model.primary_key, model.name)});
    }
  }

  // Three streams in key order: the model's rows, the checkpoint, and the
  // records a previous run sent without learning the outcome.
  // The rows' k-way merge runs on a second thread, a few blocks ahead, which
  // also groups the rows of each key.
  BACKFLOW_ASSIGN_OR_RETURN(std::unique_ptr<SortedStream> sorted, spool_->ScanKeyed());
  std::unique_ptr<KeyGroupStream> rows = PrefetchKeyGroups(std::move(sorted));
  std::unique_ptr<CheckpointScanner> checkpoint;
  CountingWarehouseScanner* warehouse_entries = nullptr;
  if (snapshot_ != nullptr) {
    BACKFLOW_ASSIGN_OR_RETURN(auto entries, snapshot_->ScanEntries(name));
    auto scanner = std::make_unique<CountingWarehouseScanner>(std::move(entries));
    warehouse_entries = scanner.get();
    checkpoint = std::move(scanner);
  } else {
    BACKFLOW_ASSIGN_OR_RETURN(checkpoint, state_.ScanCheckpoint(name));
    checkpoint = PrefetchCheckpointScanner(std::move(checkpoint));  // read on a third thread
  }
  // Warehouse mode: the row hash of the current model key (empty for a delete).
  std::string_view row_hash;
  BACKFLOW_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointScanner> in_flight,
                            state_.ScanInFlight(name));
  // Views into the scanners' buffers, valid until each scanner advances.
  CheckpointEntryView entry, flight;
  // The current model key (views into the rows' stream, valid until it
  // advances at the end of the key's iteration).
  KeyedRow current;
  // Each stream's current key with its prefix (most comparisons end there).
  PrefixedKey row_key, entry_key, flight_key;
  // Each steps its stream and says in `have` whether it has a current key.
  // (Once per key: plain checks rather than StatusOr<bool> temporaries.)
  bool have_row = false, have_entry = false, have_flight = false;
  auto step_rows = [&]() -> absl::Status {
    absl::StatusOr<bool> more = rows->Next(current.key, current.summary, current.copies);
    if (!more.ok()) return more.status();
    have_row = *more;
    if (have_row) row_key.Set(current.key);
    return absl::OkStatus();
  };
  auto step_entry = [&]() -> absl::Status {
    absl::StatusOr<bool> more = checkpoint->NextView(entry);
    if (!more.ok()) return more.status();
    have_entry = *more;
    entry_key.Set(entry.key);
    return absl::OkStatus();
  };
  auto step_flight = [&]() -> absl::Status {
    absl::StatusOr<bool> more = in_flight->NextView(flight);
    if (!more.ok()) return more.status();
    have_flight = *more;
    flight_key.Set(flight.key);
    return absl::OkStatus();
  };
  BACKFLOW_RETURN_IF_ERROR(step_rows());
  BACKFLOW_RETURN_IF_ERROR(step_entry());
  BACKFLOW_RETURN_IF_ERROR(step_flight());

  Row payload;
  // The change set is written on a thread of its own, which also reads and
  // maps the changed rows (engine/change_writer.h).
  std::unique_ptr<ChangeWriter> changes;
  if (!options_.dry_run) changes = std::make_unique<ChangeWriter>(*spool_, index, mapper);
  // `out` is the payload (identity values for a delete); null in a dry run
  // once the sample is full, where nothing is written, or when `row` is
  // given: a change to send whose row the change writer reads and, as
  // `row_payload` says, maps.
  auto emit = [&](ChangeKind kind, std::string_view key, const Fingerprint& fp, const Row* out,
                  const RowRef* row = nullptr,
                  ChangeWriter::RowPayload row_payload =
                      ChangeWriter::RowPayload::kMapped) -> absl::Status {
    switch (kind) {
      case ChangeKind::kAdded:
        ++c.added;
        break;
      case ChangeKind::kUpdated:
        ++c.updated;
        break;
      case ChangeKind::kDeleted:
        ++c.deleted;
        break;
    }
    if (!Selected(m.config->records, kind)) {
      ++c.skipped;
      if (options_.dry_run) return absl::OkStatus();
      // Changes this mapping does not send still advance its checkpoint (once
      // the run may proceed), so they are not reported again by every run.
      CheckpointUpdate u;
      u.key.assign(key);
      u.fingerprint = fp;
      if (kind == ChangeKind::kDeleted) {
        u.kind = CheckpointUpdate::Kind::kRemove;
        EncodeRow(*out, u.identity);
      } else {
        EncodeRow(mapper.Identity(*out), u.identity);
      }
      if (snapshot_ != nullptr) AppendRowHash(u.identity, row_hash);
      return spool_->AddAck(index, Spool::AckList::kSkipped, u);
    }
    if (options_.dry_run) {
      if (static_cast<int>(m.sample.size()) < options_.dry_run_sample) {
        const auto& names = kind == ChangeKind::kDeleted ? layout.identity : layout.fields;
        m.sample.push_back(
            {std::string(key), std::string(ChangeKindName(kind)), JsonObject(names, *out)});
      }
      return absl::OkStatus();
    }
    if (row != nullptr) {
      return changes->PushRow(static_cast<int>(kind), key, fp, *row, row_payload,
                              snapshot_ != nullptr, row_hash);
    }
    encoded.clear();
    EncodeRow(*out, encoded);
    if (snapshot_ != nullptr) AppendRowHash(encoded, row_hash);
    return changes->PushEncoded(static_cast<int>(kind), key, fp, encoded);
  };

  while (have_row || have_entry || have_flight) {
    // The smallest key of the three streams; a view of that stream's key,
    // valid until the streams advance at the end of this iteration.
    const PrefixedKey* smallest = nullptr;
    if (have_row) smallest = &row_key;
    if (have_entry && (smallest == nullptr || Compare(entry_key, *smallest) < 0)) {
      smallest = &entry_key;
    }
    if (have_flight && (smallest == nullptr || Compare(flight_key, *smallest) < 0)) {
      smallest = &flight_key;
    }
    auto at_smallest = [&](bool have, const PrefixedKey& k) {
      return have && (&k == smallest || Compare(k, *smallest) == 0);
    };
    const bool in_rows = at_smallest(have_row, row_key);
    const bool in_checkpoint = at_smallest(have_entry, entry_key);
    const bool was_in_flight = at_smallest(have_flight, flight_key);
    const std::string_view key = smallest->key;
    // Records the destination holds, or may hold: the base of max_deletes.
    if (in_checkpoint || was_in_flight) ++m.checkpoint_records;
    row_hash = {};
    if (snapshot_ != nullptr && in_rows) {
      std::string_view summary = current.summary;
      BACKFLOW_ASSIGN_OR_RETURN(row_hash, SplitRowHash(summary));
    }
    if (!in_rows) {
      // Gone from the model: delete what the destination holds, or may hold.
      BACKFLOW_ASSIGN_OR_RETURN(Row identity,
                                DecodeRow(in_checkpoint ? entry.identity : flight.identity));
      BACKFLOW_RETURN_IF_ERROR(emit(ChangeKind::kDeleted, key,
                                    in_checkpoint ? entry.fingerprint : Fingerprint{}, &identity));
    } else {
      BACKFLOW_RETURN_IF_ERROR(DiffRow(m, index, model, schema, current,
                                       in_checkpoint ? &entry : nullptr, was_in_flight, emit,
                                       payload));
    }
    if (in_rows) {
      BACKFLOW_RETURN_IF_ERROR(step_rows());
    }
    if (in_checkpoint) {
      BACKFLOW_RETURN_IF_ERROR(step_entry());
    }
    if (was_in_flight) {
      BACKFLOW_RETURN_IF_ERROR(step_flight());
    }
  }
  if (changes != nullptr) BACKFLOW_RETURN_IF_ERROR(changes->Finish());
  if (warehouse_entries != nullptr) {
    // The entries not streamed are the model rows that were not candidates:
    // delivered exactly as they are.
    BACKFLOW_ASSIGN_OR_RETURN(int64_t stored, snapshot_->CountEntries(name));
    const int64_t untouched = stored - warehouse_entries->count();
    c.unchanged += untouched;
    m.checkpoint_records += untouched;
  }
  return absl::OkStatus();
}

template <typename Emit>
absl::Status Runner::DiffRow(MappingRun& m, int index, const ModelConfig& model,
                             const Schema& schema, const KeyedRow& row,
                             const CheckpointEntryView* entry, bool was_in_flight, Emit& emit,
                             Row& payload) {
  RunCounts& c = m.run.counts;
  const Mapper& mapper = *m.mapper;
  const std::string_view key = row.key;
  RowSummary summary(row.summary);
  if (!summary.valid(index)) {
    return absl::DataLossError("the extraction spool holds a damaged row summary");
  }
  auto read_values = [&]() -> absl::StatusOr<Row> {
    BACKFLOW_RETURN_IF_ERROR(spool_->ReadRow(summary.ref(), row_buffer_));
    return DecodeRow(row_buffer_);
  };
  if (row.copies > 1) {
    c.rejected += row.copies;
    if (m.reported >= options_.max_reported_records) return absl::OkStatus();
    BACKFLOW_ASSIGN_OR_RETURN(Row values, read_values());
    Report(m, {.key = std::string(key),
               .outcome = "rejected",
               .change = "",
               .error = fmt::format("duplicate unique identifier: {} rows have {} = {}", row.copies,
                                    model.primary_key, key),
               .error_class = "record",
               .payload = JsonObject(schema, values),
               .recommended_action = fmt::format(
                   "Make \"{}\" unique in model \"{}\" (deduplicate in its SQL); none of these "
                   "rows is sent until then, and the record is not deleted.",
                   model.primary_key, model.name)});
    return absl::OkStatus();
  }
  if (!summary.mapped(index)) {
    ++c.rejected;
    if (m.reported >= options_.max_reported_records) return absl::OkStatus();
    BACKFLOW_ASSIGN_OR_RETURN(Row values, read_values());
    absl::Status mapped = mapper.Map(values, payload);
    Report(m, {.key = std::string(key),
               .outcome = "rejected",
               .change = "",
               .error = mapped.ok() ? "the row did not map during extraction"
                                    : std::string(mapped.message()),
               .error_class = "record",
               .payload = JsonObject(schema, values),
               .recommended_action =
                   "Fix this row's value in the model, or change the mapping's fields; the "
                   "record is sent once it maps cleanly."});
    return absl::OkStatus();
  }
  Fingerprint fp = summary.fingerprint(index);
  ChangeKind kind;
  if (entry == nullptr) {
    kind = ChangeKind::kAdded;
  } else if (was_in_flight || options_.full_resync || !(fp == entry->fingerprint)) {
    kind = ChangeKind::kUpdated;
  } else {
    ++c.unchanged;
    if (snapshot_ == nullptr || options_.dry_run) return absl::OkStatus();
    // Warehouse mode: the row was a candidate (its hash, or the mapping,
    // changed) but maps to what was delivered: store its new hash so that it
    // is not read again.
    std::string_view rest = row.summary;
    BACKFLOW_ASSIGN_OR_RETURN(std::string_view row_hash, SplitRowHash(rest));
    CheckpointUpdate u;
    u.key = key;
    u.fingerprint = entry->fingerprint;
    u.identity = entry->identity;
    AppendRowHash(u.identity, row_hash);
    return spool_->AddAck(index, Spool::AckList::kSkipped, u);
  }
  // The payload is needed to send it, to note what a skipped change leaves
  // in the destination, or to show it in a dry run's sample.
  const bool need_payload =
      !options_.dry_run || (Selected(m.config->records, kind) &&
                            static_cast<int>(m.sample.size()) < options_.dry_run_sample);
  if (!need_payload) return emit(kind, key, fp, nullptr);
  if (!options_.dry_run && Selected(m.config->records, kind)) {
    const RowRef ref = summary.ref();
    return emit(kind, key, fp, nullptr, &ref,
                summary.status(index) == RowSummary::kMappedAsRow
                    ? ChangeWriter::RowPayload::kAsIs
                    : ChangeWriter::RowPayload::kMapped);
  }
  BACKFLOW_ASSIGN_OR_RETURN(Row values, read_values());
  BACKFLOW_RETURN_IF_ERROR(mapper.Map(values, payload));
  return emit(kind, key, fp, &payload);
}

absl::Status Runner::ApplyAcks(MappingRun& m, int index, Spool::AckList list) {
  BACKFLOW_RETURN_IF_ERROR(spool_->FinishAcks(index, list));
  BACKFLOW_ASSIGN_OR_RETURN(Spool::AckReader acks, spool_->ScanAcks(index, list));
  std::vector<CheckpointUpdate> chunk;
  while (true) {
    CheckpointUpdate u;
    BACKFLOW_ASSIGN_OR_RETURN(bool row, acks.Next(u));
    if (row) chunk.push_back(std::move(u));
    if ((!row && !chunk.empty()) || chunk.size() >= kCheckpointChunk) {
      BACKFLOW_RETURN_IF_ERROR(ApplyCheckpoint(index, m.config->name, chunk));
      chunk.clear();
    }
    if (!row) return absl::OkStatus();
  }
}

std::string Runner::CheckDeletionThreshold(const MappingRun& m) const {
  const RunCounts& c = m.run.counts;
  if (options_.allow_mass_delete || c.deleted == 0) return "";
  const MappingConfig& config = *m.config;
  int64_t limit = config.max_deletes.count;
  std::string rule = fmt::format("{}", limit);
  if (config.max_deletes.is_percent) {
    if (config.max_deletes.percent >= 100) return "";
    limit = static_cast<int64_t>(config.max_deletes.percent / 100.0 *
                                 static_cast<double>(m.checkpoint_records));
    rule = fmt::format("{}% of the {} records last synced", config.max_deletes.percent,
                       m.checkpoint_records);
  }
  if (c.deleted <= limit) return "";
  return fmt::format(
      "refused: this run would delete {} records, more than max_deletes allows ({}); nothing "
      "was sent. If the model really lost these rows, run again with --allow-mass-delete (or "
      "raise max_deletes on mapping \"{}\"); otherwise check the model's SQL and source",
      c.deleted, rule, config.name);
}

absl::Status Runner::Deliver(MappingRun& m, int index) {
  RunCounts& c = m.run.counts;
  int64_t to_send = c.added + c.updated + c.deleted - c.skipped;
  if (to_send == 0) return absl::OkStatus();
  const std::string& name = m.config->name;
  SessionOptions so;
  so.mapping = name;
  so.run_id = m.run.id;
  so.action = m.action;
  so.layout = m.mapper->layout();
  so.batch_size = m.config->batch_size.value_or(m.action->default_batch_records);
  // commit_on_finish: acknowledgements wait in the spool until Finish() succeeds,
  // and the run's output is one stream, so one session.
  const bool deferred = m.action->commit_on_finish;
  int64_t batches = (to_send + so.batch_size - 1) / so.batch_size;
  int sessions_wanted = deferred ? 1 : std::max(1, m.destination->concurrency());
  sessions_wanted = static_cast<int>(std::min<int64_t>(sessions_wanted, batches));
  std::vector<std::unique_ptr<ActionSession>> sessions;
  for (int i = 0; i < sessions_wanted; ++i) {
    auto session_or = m.destination->StartSession(so);
    if (!session_or.ok()) {
      c.failed += to_send;
      m.run.error = fmt::format("destination \"{}\" could not start: {}; nothing was sent",
                                m.config->destination, session_or.status().message());
      return absl::OkStatus();
    }
    sessions.push_back(*std::move(session_or));
  }
  BatchPool pool(std::move(sessions));
  int64_t deferred_count = 0;

  BACKFLOW_ASSIGN_OR_RETURN(Spool::ChangeReader changes, spool_->ScanChanges(index));
  int64_t attempted = 0;
  absl::Status stop;  // set when the destination refused a batch as a whole

  // Outcomes received and not yet durable (file or table checkpoint only).
  // They become durable in the same write that marks the next batch, before
  // it is sent, or on their own when nothing is left to send: every outcome
  // that came back is durable before another batch goes out, so a crash
  // re-sends at most the batches in flight, with one durable write per batch.
  std::vector<CheckpointUpdate> acks;
  auto apply_acks = [&]() -> absl::Status {
    if (acks.empty()) return absl::OkStatus();
    absl::Status applied = state_.ApplyCheckpoint(name, acks);
    acks.clear();
    return applied;
  };

  // Reads the next batch from the spool, with the in-flight entries that
  // send() marks. Null when the spool is exhausted.
  bool spool_done = false;
  auto next_batch = [&]() -> absl::StatusOr<std::unique_ptr<BatchJob>> {
    auto job = std::make_unique<BatchJob>();
    while (!spool_done && static_cast<int>(job->records.size()) < so.batch_size) {
      std::string_view key, payload;
      int change = 0;
      Fingerprint fp;
      BACKFLOW_ASSIGN_OR_RETURN(bool row, changes.Next(key, change, fp, payload));
      if (!row) {
        spool_done = true;
        break;
      }
      OutgoingRecord r;
      r.key.assign(key);
      r.change = static_cast<ChangeKind>(change);
      if (warehouse_ != nullptr) {
        BACKFLOW_ASSIGN_OR_RETURN(std::string_view row_hash, SplitRowHash(payload));
        job->row_hashes.emplace_back(row_hash);
      }
      BACKFLOW_ASSIGN_OR_RETURN(r.values, DecodeRow(payload));
      r.dedup_id = m.mapper->DedupId(r.key, ChangeKindName(r.change), fp);
      job->records.push_back(std::move(r));
      job->fingerprints.push_back(fp);
    }
    if (job->records.empty()) return nullptr;
    job->in_flight.resize(job->records.size());
    for (size_t i = 0; i < job->records.size(); ++i) {
      const OutgoingRecord& r = job->records[i];
      job->in_flight[i].key = r.key;
      EncodeRow(r.is_delete() ? r.values : m.mapper->Identity(r.values),
                job->in_flight[i].identity);
    }
    return job;
  };

  // Durably notes what is about to be sent, with the outcomes received so
  // far, then sends it: if this process dies before the batch's outcome is
  // recorded, the next run re-sends these records' current state.
  auto send = [&](std::unique_ptr<BatchJob> job) -> absl::Status {
    absl::Status marked = state_.ApplyAndMark(name, acks, job->in_flight);
    acks.clear();
    BACKFLOW_RETURN_IF_ERROR(marked);
    pool.Submit(std::move(job));
    return absl::OkStatus();
  };

  // Records the outcome of a delivered batch.
  auto settle = [&](BatchJob& job) -> absl::Status {
    const auto& outcomes = job.outcomes;
    std::vector<CheckpointUpdate> updates;
    for (size_t i = 0; i < job.records.size(); ++i) {
      const OutgoingRecord& r = job.records[i];
      absl::Status status =
          outcomes.ok() && i < outcomes->size()
              ? (*outcomes)[i]
              : (outcomes.ok() ? absl::InternalError("no outcome for record") : outcomes.status());
      CheckpointUpdate u;
      u.key = r.key;
      u.fingerprint = job.fingerprints[i];
      u.identity = std::move(job.in_flight[i].identity);
      if (warehouse_ != nullptr) AppendRowHash(u.identity, job.row_hashes[i]);
      if (status.ok()) {
        ++c.succeeded;
        u.kind = r.is_delete() ? CheckpointUpdate::Kind::kRemove : CheckpointUpdate::Kind::kUpsert;
        updates.push_back(std::move(u));
      } else {
        // A definite "no" leaves the destination as the checkpoint describes
        // it; after a transient or unclassified failure the write may have
        // happened, so the record stays in flight.
        RetryClass retry = ClassifyStatus(status);
        if (!outcomes.ok() || retry == RetryClass::kRecord || retry == RetryClass::kConfiguration) {
          u.kind = CheckpointUpdate::Kind::kSettle;
          updates.push_back(std::move(u));
        }
        ++c.failed;
        Report(m, {.key = r.key,
                   .outcome = "failed",
                   .change = std::string(ChangeKindName(r.change)),
                   .error = std::string(status.message()),
                   .error_class = std::string(RetryClassName(ClassifyStatus(status))),
                   .payload = RecordFieldsJson(so.layout, r),
                   .recommended_action = RecommendedAction(status)});
      }
    }
    attempted += static_cast<int64_t>(job.records.size());
    if (deferred) {
      for (const CheckpointUpdate& u : updates) {
        BACKFLOW_RETURN_IF_ERROR(spool_->AddAck(index, Spool::AckList::kDeferred, u));
        if (u.kind != CheckpointUpdate::Kind::kSettle) ++deferred_count;
      }
    } else if (warehouse_ != nullptr) {
      BACKFLOW_RETURN_IF_ERROR(ApplyCheckpoint(index, name, updates));
    } else {
      acks.insert(acks.end(), std::make_move_iterator(updates.begin()),
                  std::make_move_iterator(updates.end()));
    }
    Progress("sending", name, attempted, to_send, false);
    // The destination refused the whole batch for a reason that will not go
    // away by itself (credentials, URL): send no more batches.
    if (!outcomes.ok() && stop.ok()) stop = outcomes.status();
    return FlushRecords(m);
  };

  // While the sessions send, the next batch is read here (`ready`), so that
  // it goes out, marked, as soon as a session is free. A batch dropped
  // unsent when the run stops (cancel, a refused batch) was never marked.
  std::unique_ptr<BatchJob> ready;
  bool exhausted = false;
  while (true) {
    // Settle finished batches first: memory stays bounded and a stop is seen early.
    while (pool.HasDone()) {
      std::unique_ptr<BatchJob> done = pool.WaitDone();
      BACKFLOW_RETURN_IF_ERROR(settle(*done));
    }
    if (!exhausted && CancelRequested(name)) {
      exhausted = true;
      m.cancelled = true;
    }
    if (!stop.ok() || m.cancelled) ready.reset();
    if (stop.ok() && !exhausted && ready == nullptr) {
      BACKFLOW_ASSIGN_OR_RETURN(ready, next_batch());
      if (ready == nullptr) exhausted = true;
    }
    if (ready != nullptr && pool.HasIdle()) {
      BACKFLOW_RETURN_IF_ERROR(send(std::move(ready)));
      continue;
    }
    if (pool.outstanding() == 0 && ready == nullptr) break;
    // Waiting with no batch ready to go: what came back must not wait for a
    // mark that may be far off (or never come).
    if (ready == nullptr) BACKFLOW_RETURN_IF_ERROR(apply_acks());
    std::unique_ptr<BatchJob> done = pool.WaitDone();
    BACKFLOW_RETURN_IF_ERROR(settle(*done));
  }
  BACKFLOW_RETURN_IF_ERROR(apply_acks());
  if (!stop.ok()) {
    c.failed += to_send - attempted;
    m.run.error = fmt::format(
        "destination \"{}\" refused the batch: {}; stopped after {} of {} records (the rest "
        "are sent by the next run)",
        m.config->destination, stop.message(), attempted, to_send);
    return absl::OkStatus();
  }

  absl::Status finished = pool.FinishAll();
  if (!finished.ok()) {
    if (deferred) {
      // Nothing became durable: every accepted record counts as failed.
      c.failed += deferred_count;
      c.succeeded -= deferred_count;
    }
    m.run.error = fmt::format("destination \"{}\" could not complete the run: {}",
                              m.config->destination, finished.message());
    return absl::OkStatus();
  }
  if (deferred) BACKFLOW_RETURN_IF_ERROR(ApplyAcks(m, index, Spool::AckList::kDeferred));
  if (m.cancelled) {
    m.run.error =
        fmt::format("cancelled after sending {} of {} records; the rest are sent by the next run",
                    attempted, to_send);
  }
  Progress("sending", name, attempted, to_send, true);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<MappingRunResult>> Runner::Run(const ModelConfig& model,
                                                          const std::vector<std::string>& names) {
  const SourceConfig* source_config = ws_.FindSource(model.source);
  if (source_config == nullptr) {
    return absl::NotFoundError(
        fmt::format("model \"{}\" names unknown source \"{}\"", model.name, model.source));
  }
  const SourceDefinition* source_def = registry_.FindSource(source_config->type);
  if (source_def == nullptr) {
    return absl::NotFoundError(fmt::format("unknown source type \"{}\"", source_config->type));
  }

  mapping_names_ = names;
  std::vector<std::unique_ptr<MappingLock>> locks;
  std::vector<std::unique_ptr<MappingLockHandle>> store_locks;
  std::vector<MappingRun> runs(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    MappingRun& m = runs[i];
    m.config = ws_.FindMapping(names[i]);
    if (m.config == nullptr || m.config->model != model.name) {
      return absl::NotFoundError(
          fmt::format("model \"{}\" has no mapping \"{}\"", model.name, names[i]));
    }
    m.destination_config = ws_.FindDestination(m.config->destination);
    const DestinationDefinition* def =
        m.destination_config ? registry_.FindDestination(m.destination_config->type) : nullptr;
    m.action = def ? def->FindAction(m.config->action) : nullptr;
    if (m.action == nullptr) {
      return absl::FailedPreconditionError(fmt::format(
          "mapping \"{}\" is not valid; run `backflow validate` for details", names[i]));
    }
    BACKFLOW_ASSIGN_OR_RETURN(auto lock,
                              MappingLock::Acquire(spool_dir_ + "/locks", m.config->name));
    locks.push_back(std::move(lock));
    // Other hosts sharing the state store.
    BACKFLOW_ASSIGN_OR_RETURN(auto held, state_.LockMapping(m.config->name));
    store_locks.push_back(std::move(held));
  }
  // Every mapping is locked: the runs can start.
  std::map<std::string, std::shared_ptr<Destination>> destinations;
  for (MappingRun& m : runs) {
    const DestinationDefinition* def = registry_.FindDestination(m.destination_config->type);
    absl::StatusOr<std::shared_ptr<Destination>> destination = destinations[m.config->destination];
    if (*destination == nullptr) {
      destination = def->create(m.destination_config->settings, env_);
      if (destination.ok()) destinations[m.config->destination] = *destination;
    }
    m.run.mapping = m.config->name;
    m.run.model = model.name;
    m.run.destination = m.config->destination;
    m.run.trigger = options_.trigger;
    m.run.dry_run = options_.dry_run;
    m.run.full_resync = options_.full_resync;
    m.run.started_at = FormatIso8601(SystemClock().Now());
    m.run.pid = getpid();
    m.started = Steady::now();
    auto queued = options_.queued_runs.find(m.config->name);
    if (queued != options_.queued_runs.end()) {
      const RunInfo& q = queued->second;
      m.run.id = q.id;
      m.run.trigger = q.trigger;
      m.run.full_resync = q.full_resync;
      m.run.request_id = q.request_id;
      m.run.requested_at = q.requested_at;
      m.run.worker = q.worker;
      if (!q.started_at.empty()) m.run.started_at = q.started_at;
      m.run.status = RunStatus::kRunning;
      BACKFLOW_RETURN_IF_ERROR(state_.UpdateRun(m.run));
    } else {
      BACKFLOW_ASSIGN_OR_RETURN(m.run.id, state_.CreateRun(m.run));
    }
    if (!destination.ok()) {
      Fail(m, fmt::format("destination \"{}\": {}", m.config->destination,
                          destination.status().message()));
    } else {
      m.destination = *std::move(destination);
    }
  }

  auto finish_all = [&]() -> absl::StatusOr<std::vector<MappingRunResult>> {
    std::vector<MappingRunResult> results;
    for (MappingRun& m : runs) {
      BACKFLOW_RETURN_IF_ERROR(Finish(m));
      results.push_back({m.run, std::move(m.sample)});
    }
    Progress("done", "", 0, 0, true);
    return results;
  };
  auto fail_all = [&](const std::string& error) {
    for (MappingRun& m : runs) {
      if (!m.done) Fail(m, error);
      m.run.counts.extracted = extracted_;
    }
    return finish_all();
  };

  Spool::Options spool_options;
  spool_options.sort_budget = options_.sort_memory_bytes;
  spool_options.keep_bytes = ws_.spool_keep_bytes;
  auto spool = Spool::Create(spool_dir_ + "/spool", spool_options);
  if (!spool.ok()) return fail_all(std::string(spool.status().message()));
  spool_ = *std::move(spool);

  // Extract once for every mapping.
  auto source = source_def->create(source_config->settings, env_);
  if (!source.ok()) {
    return fail_all(fmt::format("source \"{}\": {}", model.source, source.status().message()));
  }
  // A pass still open when the run ends early (a cancelled or failed
  // extraction) ends before its source goes.
  struct EndPass {
    std::unique_ptr<WarehouseSnapshot>& snapshot;
    ~EndPass() {
      if (snapshot != nullptr) (void)snapshot->Close();
      snapshot.reset();
    }
  } end_pass{snapshot_};
  if (model.change_detection == ChangeDetection::kWarehouse) {
    warehouse_ = (*source)->warehouse_change_detection();
    if (warehouse_ == nullptr) {
      return fail_all(fmt::format(
          "model \"{}\" sets change_detection: warehouse, which source \"{}\" (type {}) does "
          "not support; set change_detection: local",
          model.name, model.source, source_config->type));
    }
    versions_.resize(runs.size());
  }
  Schema schema;
  Progress("extracting", "", 0, 0, true);
  auto phase_start = Steady::now();
  auto seconds_since = [](Steady::time_point t) {
    return std::chrono::duration<double>(Steady::now() - t).count();
  };
  absl::Status extracted = Extract(model, **source, schema, runs);
  double extract_s = seconds_since(phase_start);
  for (MappingRun& m : runs) m.run.extract_s = extract_s;
  if (extracted.code() == absl::StatusCode::kCancelled) {
    for (MappingRun& m : runs) {
      if (!m.done) Cancel(m, "during extraction; nothing was sent");
    }
    return finish_all();
  }
  if (!extracted.ok()) {
    return fail_all(fmt::format("model \"{}\" on source \"{}\": {}", model.name, model.source,
                                extracted.message()));
  }
  Progress("diffing", "", 0, 0, true);
  std::string null_key_error = fmt::format("the unique identifier {} is NULL", model.primary_key);
  for (size_t i = 0; i < runs.size(); ++i) {
    MappingRun& m = runs[i];
    m.run.counts.extracted = extracted_;
    if (m.done) continue;
    phase_start = Steady::now();
    absl::Status diffed = Diff(m, static_cast<int>(i), model, schema, null_key_error);
    m.run.diff_s = seconds_since(phase_start);
    if (diffed.code() == absl::StatusCode::kCancelled) {  // a warehouse pass stopped
      Cancel(m, "during change detection; nothing was sent");
      continue;
    }
    if (!diffed.ok()) {
      Fail(m, fmt::format("change detection failed: {}", diffed.message()));
      continue;
    }
    std::string refused = CheckDeletionThreshold(m);
    if (!refused.empty()) Fail(m, refused);
  }
  if (snapshot_ != nullptr) {
    (void)snapshot_->Close();  // a read-only pass: nothing is lost if ending it fails
    snapshot_.reset();
  }
  BACKFLOW_RETURN_IF_ERROR(spool_->FinishChanges());

  for (size_t i = 0; i < runs.size(); ++i) {
    MappingRun& m = runs[i];
    if (m.done || options_.dry_run) continue;
    if (CancelRequested(m.config->name)) {
      Cancel(m, "before sending; the changes are sent by the next run");
      continue;
    }
    BACKFLOW_RETURN_IF_ERROR(state_.UpdateRun(m.run));  // counts visible while sending
    phase_start = Steady::now();
    absl::Status delivered = ApplyAcks(m, static_cast<int>(i), Spool::AckList::kSkipped);
    if (delivered.ok()) delivered = Deliver(m, static_cast<int>(i));
    // Every acknowledgement is durable already; this compacts them for the next run.
    if (delivered.ok()) delivered = state_.CommitCheckpoint(m.config->name);
    m.run.deliver_s = seconds_since(phase_start);
    if (!delivered.ok()) {
      Fail(m, fmt::format("delivery stopped: {}; records not confirmed are sent by the next run",
                          delivered.message()));
    }
  }
  return finish_all();
}

}  // namespace

SyncEngine::SyncEngine(const Workspace& workspace, const Registry& registry, StateStore& state,
                       ConnectorEnv env, std::string spool_dir)
    : workspace_(workspace),
      registry_(registry),
      state_(state),
      env_(env),
      spool_dir_(std::move(spool_dir)) {}

absl::Status SyncEngine::ResetCheckpoint(const std::string& mapping) {
  BACKFLOW_ASSIGN_OR_RETURN(auto lock, MappingLock::Acquire(spool_dir_ + "/locks", mapping));
  BACKFLOW_ASSIGN_OR_RETURN(auto held, state_.LockMapping(mapping));
  return state_.ResetCheckpoint(mapping);
}

absl::StatusOr<std::vector<MappingRunResult>> SyncEngine::Run(
    const std::string& model, const std::vector<std::string>& mappings,
    const SyncOptions& options) {
  const ModelConfig* m = workspace_.FindModel(model);
  if (m == nullptr) return absl::NotFoundError(fmt::format("unknown model \"{}\"", model));
  if (mappings.empty()) {
    return absl::FailedPreconditionError(
        fmt::format("model \"{}\" has no enabled mapping to sync", model));
  }
  BACKFLOW_RETURN_IF_ERROR(state_.MarkInterruptedRuns().status());
  Runner runner(workspace_, registry_, state_, env_, spool_dir_, options);
  return runner.Run(*m, mappings);
}

}  // namespace backflow
