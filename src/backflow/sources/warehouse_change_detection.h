// WarehouseChangeDetection: change detection computed inside the warehouse
// (a model's `change_detection: warehouse`), so that only the rows that may
// have changed leave it.
//
// The warehouse keeps, per mapping and record key, what the mapping last
// delivered: the payload fingerprint and identity (as the local state store
// would) plus the hash of the model row they came from and the version of
// the mapping that produced them. A pass over the model then returns only the
// candidate rows, those whose key is new, NULL, duplicated or in flight, or
// whose row hash or mapping version differs from the stored one for any of
// the run's mappings, and the stored entries the engine's merge needs: those
// of the candidate keys and of the keys gone from the model. Every other
// model row is, for every mapping of the run, exactly what was delivered.
//
// Used from one thread at a time, like its Source, which owns it.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/hash.h"
#include "backflow/model/value.h"
#include "backflow/sources/source.h"

namespace backflow {

// A stored checkpoint entry, as the engine's merge reads it.
struct WarehouseCheckpointEntry {
  std::string key;
  Fingerprint fingerprint;
  std::string identity;  // EncodeRow() of the identity values
};

// One change of a mapping's stored checkpoint.
struct WarehouseCheckpointWrite {
  enum class Kind { kUpsert, kRemove };
  Kind kind = Kind::kUpsert;
  std::string key;
  // kUpsert only.
  Fingerprint fingerprint;
  std::string identity;
  std::string row_hash;  // as the candidate reader returned it
  Fingerprint version;   // the mapping's version (see WarehouseCandidateFilter)
};

struct WarehouseCandidateFilter {
  // The run's mappings and their versions: a stored entry written under
  // another version makes its row a candidate.
  std::vector<std::pair<std::string, Fingerprint>> mappings;
  // Keys to return whatever is stored (records sent without a known outcome).
  std::vector<std::string> in_flight_keys;
  // Every row is a candidate (a full resync).
  bool all_rows = false;
};

// How a pass may be stopped.
struct WarehousePassOptions {
  // Null, or a flag another thread may set to stop the pass (a run's cancel,
  // as QueryOptions::cancel). Once it reads true, the pass's statement that
  // runs in the warehouse is asked to stop there (best effort, through the
  // source's own cancel, as for Query()), and Begin(), ReadCandidates(), the
  // candidate reader, ScanEntries(), the entry scanner and CountEntries()
  // return kCancelled (QueryCancelledError) instead of waiting for it to
  // finish. The snapshot must still be closed (or destroyed); it then removes
  // what the pass made, without waiting on the flag (see Close()). It must
  // outlive the snapshot and its readers.
  const std::atomic<bool>* cancel = nullptr;
};

// Ordered reader of stored entries.
class WarehouseEntryScanner {
 public:
  virtual ~WarehouseEntryScanner() = default;
  // The next entry in ascending byte order of key; false at the end.
  virtual absl::StatusOr<bool> Next(WarehouseCheckpointEntry& entry) = 0;
};

// One change detection pass: one snapshot of the model and of the stored
// checkpoint, from Begin() to Close(). Calls in this order: schema(),
// ReadCandidates() (read to its end), then ScanEntries() / CountEntries() for
// the filter's mappings, one scanner at a time; then Close().
class WarehouseSnapshot {
 public:
  virtual ~WarehouseSnapshot() = default;

  // The model's columns.
  virtual const Schema& schema() const = 0;

  // The candidate rows: schema()'s columns, then the row hash (a string) as
  // one more last column. kFailedPrecondition when the model's key column
  // has a type whose text the warehouse and Backflow could write differently.
  virtual absl::StatusOr<std::unique_ptr<RowReader>> ReadCandidates(
      const WarehouseCandidateFilter& filter) = 0;

  // The stored entries of `mapping` whose key is a candidate's or is no
  // longer in the model, in ascending byte order of key.
  virtual absl::StatusOr<std::unique_ptr<WarehouseEntryScanner>> ScanEntries(
      const std::string& mapping) = 0;

  // How many entries `mapping` has stored in all.
  virtual absl::StatusOr<int64_t> CountEntries(const std::string& mapping) = 0;

  // Ends the snapshot; it leaves nothing behind in the warehouse. The
  // destructor does it too. After a cancel (WarehousePassOptions::cancel) it
  // is bounded: what the pass made is removed by at most one attempt of each
  // cleanup statement, stopping at the first that fails; what an
  // implementation leaves then, and how a later pass removes it, is in its
  // header.
  virtual absl::Status Close() = 0;
};

class WarehouseChangeDetection {
 public:
  virtual ~WarehouseChangeDetection() = default;

  // Creates the managed schema and checkpoint table when missing (an
  // actionable error naming the privilege to grant when it cannot), then
  // starts a pass over the model (`sql`, whose unique identifier column is
  // `key_column`). `options.cancel` stops the pass (see WarehousePassOptions);
  // a pass cancelled in Begin() leaves nothing behind (as Close()).
  virtual absl::StatusOr<std::unique_ptr<WarehouseSnapshot>> Begin(
      const std::string& sql, const std::string& key_column,
      const WarehousePassOptions& options) = 0;
  // Begin() that cannot be cancelled.
  absl::StatusOr<std::unique_ptr<WarehouseSnapshot>> Begin(const std::string& sql,
                                                           const std::string& key_column) {
    return Begin(sql, key_column, WarehousePassOptions{});
  }

  // Applies `writes` to `mapping`'s stored checkpoint in one transaction,
  // committed before it returns (the last write of a key wins). Independent
  // of any open snapshot. It takes no cancel flag: it commits whole or fails
  // whole (where a warehouse splits a large batch into several atomic
  // statements, each key is either as before or as written), so the writes
  // of deliveries a cancelled run already acknowledged are never lost to a
  // cancel.
  virtual absl::Status Apply(const std::string& mapping,
                             const std::vector<WarehouseCheckpointWrite>& writes) = 0;
};

}  // namespace backflow
