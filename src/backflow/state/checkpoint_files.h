// CheckpointFiles: per-mapping checkpoints kept as files next to a local
// state store, so that a run reads its checkpoint as one sequential stream.
//
// Under `root`/<mapping>/ (the name hex-escaped where it is not [A-Za-z0-9_-]):
//   base-<gen>.ckpt   a run file (storage/run_file.h) of (key, fingerprint ·
//                     identity) in ascending byte order of key, written to a
//                     temporary name, fdatasynced and renamed into place;
//   journal-<gen>     the updates applied since base <gen>: checksummed
//                     frames appended and fdatasynced by each Apply() before
//                     it returns.
// Scan() streams the base; when the journal holds updates (a run committed
// nothing yet, or the process died), it first folds them into base <gen+1>:
// the journal is sorted externally, merged with the base (the last update of
// a key wins), written durably, and only then are the old base and journal
// removed. A crash at any point leaves either the old base and its whole
// journal, or the new base. A torn last frame (a crash during Apply(), which
// therefore never returned) is ignored; any other damage, to the base or the
// journal, fails with kDataLoss naming the mapping and how to recover.
//
// One object per root; used from one thread at a time. A Scan() stream reads
// its own open file, unaffected by later Apply() or Fold() calls.
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
  // Removes temporary files of interrupted folds; folders are created when
  // a mapping's first update is applied.
  static absl::StatusOr<std::unique_ptr<CheckpointFiles>> Open(const std::string& root);
  ~CheckpointFiles();

  absl::StatusOr<std::unique_ptr<CheckpointScanner>> Scan(const std::string& mapping);
  // Durable when it returns. kSettle updates are ignored (they change nothing here).
  absl::Status Apply(const std::string& mapping, const std::vector<CheckpointUpdate>& updates);
  // Folds the journal into a new base now (a no-op when it is empty).
  absl::Status Fold(const std::string& mapping);
  // Records in the checkpoint (folds first if needed).
  absl::StatusOr<int64_t> Size(const std::string& mapping);
  absl::Status Reset(const std::string& mapping);

  struct FoldStats {
    int64_t records = 0;
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
  absl::Status Damaged(const std::string& mapping, const std::string& detail) const;

  std::string root_;
  // Open journal of the mapping last applied to (most runs touch one mapping at a time).
  std::string journal_mapping_;
  int journal_fd_ = -1;
  std::string journal_path_;
  FoldStats last_fold_;
};

// How checkpoint base files are written (durable; the compression level).
RunFileOptions CheckpointFileOptions();

}  // namespace backflow
