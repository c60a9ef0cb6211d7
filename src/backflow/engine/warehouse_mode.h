// What the engine adds for models with `change_detection: warehouse` (see
// sources/warehouse_change_detection.h): the mapping version stored with each
// entry, the row hash carried from extraction to the checkpoint write, and
// the adapters between the warehouse's checkpoint and the engine's merge.
//
// The row hash travels as a suffix of bytes the engine already stores: each
// row's spool summary, each change's encoded payload, and, for every
// CheckpointUpdate of a warehouse-mode run, its `identity`
// (AppendRowHash / SplitRowHash). Thread-compatible.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/config/workspace.h"
#include "backflow/model/value.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/state/state_store.h"

namespace backflow {

// Changes whenever a row that did not change could map to another payload:
// the mapping's action and fields, the model's key, and the model's column
// names and types.
Fingerprint MappingVersion(const MappingConfig& mapping, const ModelConfig& model,
                           const Schema& schema);

// Appends `row_hash` (at most 255 bytes) so that SplitRowHash() finds it.
void AppendRowHash(std::string& bytes, std::string_view row_hash);
// Removes the suffix AppendRowHash() added from `bytes` and returns it;
// kDataLoss when `bytes` has none.
absl::StatusOr<std::string_view> SplitRowHash(std::string_view& bytes);

// The warehouse's entries as a CheckpointScanner, counting what it returned.
class CountingWarehouseScanner : public CheckpointScanner {
 public:
  explicit CountingWarehouseScanner(std::unique_ptr<WarehouseEntryScanner> entries)
      : entries_(std::move(entries)) {}
  absl::StatusOr<bool> Next(CheckpointEntry& entry) override;
  int64_t count() const { return count_; }

 private:
  std::unique_ptr<WarehouseEntryScanner> entries_;
  WarehouseCheckpointEntry entry_;
  int64_t count_ = 0;
};

// Splits updates whose identities carry row hashes into the writes of the
// warehouse's checkpoint (under `version`) and the kSettle updates that clear
// the same keys' in-flight marks in the state store.
absl::Status ToWarehouseWrites(const std::vector<CheckpointUpdate>& updates,
                               const Fingerprint& version,
                               std::vector<WarehouseCheckpointWrite>& writes,
                               std::vector<CheckpointUpdate>& settles);

}  // namespace backflow
