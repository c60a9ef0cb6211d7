// Spool: the on-disk scratch space of one extraction.
//
// Extracted rows are stored keyed by record key (so duplicate keys are found
// and rows come back in key order for the merge with the checkpoint), then
// each mapping's change set is written beside them so that a dry run can show
// it and delivery can stream it. Memory stays bounded (SQLite page cache);
// the file is removed when the Spool is destroyed, and a spool left behind by
// a killed process is removed by the next run. Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "backflow/common/hash.h"
#include "backflow/sqlite/database.h"
#include "backflow/state/state_store.h"

namespace backflow {

class Spool {
 public:
  // Creates `dir`/extract-<pid>-<n>.db and removes spools of dead processes.
  static absl::StatusOr<std::unique_ptr<Spool>> Create(const std::string& dir);
  ~Spool();

  // Extraction. Rows with the same key are counted, not overwritten.
  absl::Status AddRow(std::string_view key, std::string_view encoded_row);
  absl::Status AddNullKeyRow(std::string_view encoded_row);
  absl::Status FinishLoad();

  // Rows ordered by key: columns (key TEXT, copies INTEGER, row BLOB).
  absl::StatusOr<sqlite::Statement> ScanRows();
  // Rows whose key was NULL: column (row BLOB).
  absl::StatusOr<sqlite::Statement> ScanNullKeyRows();

  // Change set of mapping number `mapping`.
  absl::Status AddChange(int mapping, int change, std::string_view key, const Fingerprint& fp,
                         std::string_view encoded_payload);
  absl::Status FinishChanges();
  // Columns (key TEXT, change INTEGER, fingerprint BLOB, payload BLOB) in insertion order.
  absl::StatusOr<sqlite::Statement> ScanChanges(int mapping);

  // Checkpoint updates held back until they may be applied, in separate
  // lists per mapping: changes the mapping does not send (applied once the
  // run is allowed to proceed) and acknowledgements of a commit-on-finish
  // session (applied once it completes).
  enum class AckList { kSkipped = 0, kDeferred = 1 };
  absl::Status AddAck(int mapping, AckList list, const CheckpointUpdate& update);
  absl::Status FinishAcks();
  // Columns (key TEXT, kind INTEGER (CheckpointUpdate::Kind), fingerprint BLOB,
  // identity BLOB).
  absl::StatusOr<sqlite::Statement> ScanAcks(int mapping, AckList list);

 private:
  Spool(std::string path, std::unique_ptr<sqlite::Database> db)
      : path_(std::move(path)), db_(std::move(db)) {}
  absl::Status MaybeCommit();

  std::string path_;
  std::unique_ptr<sqlite::Database> db_;
  sqlite::Statement insert_row_;
  sqlite::Statement insert_null_;
  sqlite::Statement insert_change_;
  sqlite::Statement insert_ack_;
  int64_t pending_ = 0;
  int64_t change_seq_ = 0;
  bool in_transaction_ = false;
};

}  // namespace backflow
