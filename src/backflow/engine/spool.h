// Spool: the on-disk scratch space of one extraction.
//
// Extraction appends each row to a row log (plain bytes, read back by
// offset) and adds a small keyed summary of it to an external sorter, so that
// the merge with the checkpoint reads (key, summary) in key order without
// sorting whole rows; rows are read back only for the records that change.
// Each mapping's change set and its held-back checkpoint updates are
// sequential run files (a change set raw: it is read once, right after).
// Memory is bounded by the sorter's budget plus a few write buffers whatever
// the row count. Everything lives in one folder that is removed when the
// Spool is destroyed; a folder left behind by a killed process is removed by
// the next Create(). The row log, the sorted runs and the change sets, most
// of the bytes, are written over files kept from earlier spools of the same
// folder; the row log and the runs are kept for later ones, up to
// Options::keep_bytes (a ScratchPool in `dir`/recycled: see
// storage/scratch_pool.h for why), but not the change sets, whose payloads
// may hold values the mapping took from secrets.
// Thread-compatible, with two exceptions: ReadRow() may run on several
// threads at once, and one thread may AddChange() while another uses the
// methods other than AddChange() and FinishChanges() (engine/change_writer.h).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "backflow/common/hash.h"
#include "backflow/state/state_store.h"
#include "backflow/storage/external_sorter.h"
#include "backflow/storage/run_file.h"
#include "backflow/storage/scratch_pool.h"

namespace backflow {

// Where a row lives in the row log.
struct RowRef {
  uint64_t offset = 0;
  uint32_t size = 0;
};

class Spool {
 public:
  struct Options {
    // Memory for sorting the keyed summaries (beyond it, sorted runs spill to disk).
    size_t sort_budget = 64 << 20;
    // Scratch bytes kept between spools (0: none, every spool writes new files).
    uint64_t keep_bytes = uint64_t{4} << 30;
  };
  // Creates `dir`/spool-<pid>-<n>/ and removes the folders of dead processes.
  static absl::StatusOr<std::unique_ptr<Spool>> Create(const std::string& dir, Options options);
  static absl::StatusOr<std::unique_ptr<Spool>> Create(const std::string& dir) {
    return Create(dir, Options());
  }
  ~Spool();

  // ---- Extraction.
  absl::StatusOr<RowRef> AppendRow(std::string_view encoded_row);
  // `summary` is opaque to the spool; duplicates of a key are all kept.
  absl::Status AddKeyed(std::string_view key, std::string_view summary);
  absl::Status AddNullKey(RowRef row);
  absl::Status FinishLoad();

  // (key, summary) in key order, equal keys in extraction order.
  absl::StatusOr<std::unique_ptr<SortedStream>> ScanKeyed() const;
  // Rows whose key was NULL, in extraction order.
  absl::StatusOr<std::vector<RowRef>> NullKeyRows(size_t limit) const;
  int64_t null_key_rows() const { return null_keys_; }
  // A row appended before FinishLoad().
  absl::Status ReadRow(RowRef ref, std::string& encoded_row) const;
  // Reads rows appended before FinishLoad() for one thread, through a few
  // windows over the row log: a row inside a window costs no system call; a
  // row running past a window's end, or starting at most kWindowBytes after
  // it, refills that window with the kWindowBytes from the row on (or the
  // row, if larger); any other row is read alone (into the window used
  // longest ago), as ReadRow() would. So rows read in about their log order
  // (the changed rows of a table that appends its new and updated rows, say)
  // cost one read per window, and rows read at random what ReadRow() costs.
  // Memory: at most kWindows windows of kWindowBytes (or of one larger row).
  class RowReader {
   public:
    static constexpr size_t kWindows = 8;
    static constexpr size_t kWindowBytes = 64 << 10;
    explicit RowReader(const Spool& spool) : spool_(spool) {}
    absl::Status Read(RowRef ref, std::string& encoded_row);
    // Reads of the row log so far (for tests and benchmarks).
    int64_t reads() const { return reads_; }

   private:
    struct Window {
      uint64_t start = 0;
      std::string bytes;
      uint64_t used = 0;  // clock_ when last read
    };
    const Spool& spool_;
    std::array<Window, kWindows> windows_;
    uint64_t clock_ = 0;
    int64_t reads_ = 0;
  };

  // ---- Change set of mapping number `mapping` (one writer per mapping).
  absl::Status AddChange(int mapping, int change, std::string_view key, const Fingerprint& fp,
                         std::string_view encoded_payload);
  // Ends every change set (once); ScanChanges() reads them after.
  absl::Status FinishChanges();
  // Reads one mapping's change set in the order it was added.
  class ChangeReader {
   public:
    // False at the end; the views stay valid until the next call.
    absl::StatusOr<bool> Next(std::string_view& key, int& change, Fingerprint& fp,
                              std::string_view& encoded_payload);

   private:
    friend class Spool;
    std::unique_ptr<RunFileReader> file_;
  };
  absl::StatusOr<ChangeReader> ScanChanges(int mapping) const;

  // Checkpoint updates held back until they may be applied, in separate
  // lists per mapping: changes the mapping does not send (applied once the
  // run is allowed to proceed) and acknowledgements of a commit-on-finish
  // session (applied once it completes).
  enum class AckList { kSkipped = 0, kDeferred = 1 };
  absl::Status AddAck(int mapping, AckList list, const CheckpointUpdate& update);
  // Ends the list; ScanAcks() reads it (an empty list when nothing was added).
  absl::Status FinishAcks(int mapping, AckList list);
  class AckReader {
   public:
    absl::StatusOr<bool> Next(CheckpointUpdate& update);

   private:
    friend class Spool;
    std::unique_ptr<RunFileReader> file_;
  };
  absl::StatusOr<AckReader> ScanAcks(int mapping, AckList list) const;

 private:
  Spool(std::string dir, Options options);
  absl::Status FlushRows();
  // Reads `size` bytes of the row log at `offset` into `out`.
  absl::Status ReadRowLog(uint64_t offset, size_t size, char* out) const;
  std::string PathOf(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
  Options options_;
  std::unique_ptr<ScratchPool> pool_;
  int rows_fd_ = -1;
  std::string rows_buffer_;
  uint64_t rows_bytes_ = 0;
  std::unique_ptr<ExternalSorter> keyed_;
  std::unique_ptr<RunFileWriter> null_keys_file_;
  int64_t null_keys_ = 0;
  std::map<int, std::unique_ptr<RunFileWriter>> changes_;
  bool changes_finished_ = false;
  std::map<std::pair<int, int>, std::unique_ptr<RunFileWriter>> acks_;
  std::map<std::pair<int, int>, bool> acks_finished_;
};

}  // namespace backflow
