// CheckpointFiles: per-mapping checkpoints and in-flight marks kept as files
// next to a local state store, so that a run reads its checkpoint as one
// sequential stream and each batch costs one appended, fdatasynced frame.
//
// Under `root`/<mapping>/ (the name hex-escaped where it is not [A-Za-z0-9_-]):
//   base-<gen>.ckpt   a run file (storage/run_file.h) of (key, fingerprint ·
//                     identity) in ascending byte order of key, written to a
//                     temporary name, fdatasynced and renamed into place;
//   inflight-<gen>    the records marked in flight and not settled when base
//                     <gen> was written: a run file of (key, identity), in
//                     key order; absent when there were none;
//   journal-<gen>     what happened since base <gen>: checksummed frames of
//                     marks (Mark()) and updates (Apply(), settles included),
//                     each appended and fdatasynced before the call returns.
// A key's state is the base's and in-flight file's, then each journal event
// in order: a mark sets its in-flight identity; an upsert or remove changes
// its checkpoint entry and clears its mark; a settle clears its mark.
// Scan() and ScanInFlight() stream the files of the current generation, with
// the journal's events (sorted externally, in bounded memory) merged in on
// the fly when it holds any. Fold() writes that merge as generation <gen+1>:
// inflight-<gen+1> durably first, then base-<gen+1>, whose rename is the
// commit point; only then are the old files removed. Commit(), at the end of
// a run, folds only once the journal has grown to a quarter of the base, so
// a run that changes few records does not rewrite the whole checkpoint. A
// crash at any point leaves either the old generation with its whole
// journal, or the new one. A torn last frame (a
// crash during Mark() or Apply(), which therefore never returned) is ignored;
// any other damage, to a file or the journal, fails with kDataLoss naming the
// mapping and how to recover.
//
// One object per root; used from one thread at a time. A scan reads its own
// open file, unaffected by later Mark(), Apply() or Fold() calls.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/state/state_store.h"
#include "backflow/storage/run_file.h"

namespace backflow {

class CheckpointFiles {
 public:
  // Folders are created when a mapping's first event is written; leftovers of
  // interrupted folds are removed by the mapping's next Fold().
  static absl::StatusOr<std::unique_ptr<CheckpointFiles>> Open(const std::string& root);
  ~CheckpointFiles();

  absl::StatusOr<std::unique_ptr<CheckpointScanner>> Scan(const std::string& mapping);
  // The records marked in flight, in ascending byte order of key (fingerprints
  // zero). Folds first, like Scan().
  absl::StatusOr<std::unique_ptr<CheckpointScanner>> ScanInFlight(const std::string& mapping);
  // Marks records in flight (a record marked again takes the new identity).
  // Durable when it returns.
  absl::Status Mark(const std::string& mapping, const std::vector<InFlightEntry>& entries);
  // Applies updates; every updated key is also settled. Durable when it returns.
  absl::Status Apply(const std::string& mapping, const std::vector<CheckpointUpdate>& updates);
  // Apply() then Mark() as one journal frame: both or neither, one sync.
  absl::Status ApplyAndMark(const std::string& mapping,
                            const std::vector<CheckpointUpdate>& updates,
                            const std::vector<InFlightEntry>& entries);
  // Folds the journal into a new generation now (a no-op when it is empty).
  absl::Status Fold(const std::string& mapping);
  // The end of a run's updates: folds when the journal has grown to a
  // quarter of the base (or there is no base yet), else leaves it for later
  // scans to merge.
  absl::Status Commit(const std::string& mapping);
  // Records in the checkpoint (reads the base when the journal holds events).
  absl::StatusOr<int64_t> Size(const std::string& mapping);
  absl::Status Reset(const std::string& mapping);

  struct FoldStats {
    int64_t records = 0;
    int64_t in_flight = 0;
    int64_t bytes = 0;
    double seconds = 0;
  };
  // What the last fold wrote (for benchmarks and logs).
  const FoldStats& last_fold() const { return last_fold_; }

 private:
  explicit CheckpointFiles(std::string root) : root_(std::move(root)) {}
  struct Generation;
  std::string DirOf(const std::string& mapping) const;
  absl::StatusOr<Generation> Current(const std::string& mapping) const;
  // Appends one frame to the mapping's journal and fdatasyncs it.
  absl::Status AppendFrame(const std::string& mapping, const std::string& payload);
  // A name prefix for the spill files of one journal sort.
  std::string NextSpillPrefix();

  std::string root_;
  // Open journal of the mapping last applied to (most runs touch one mapping at a time).
  std::string journal_mapping_;
  int journal_fd_ = -1;
  std::string journal_path_;
  FoldStats last_fold_;
  int64_t spills_ = 0;
};

// How checkpoint base files are written (durable; the compression level).
RunFileOptions CheckpointFileOptions();

}  // namespace backflow
