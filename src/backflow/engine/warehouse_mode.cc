#include "backflow/engine/warehouse_mode.h"

#include "backflow/common/hash.h"
#include "backflow/common/status_macros.h"

namespace backflow {

Fingerprint MappingVersion(const MappingConfig& mapping, const ModelConfig& model,
                           const Schema& schema) {
  Hasher128 h;
  h.Add("backflow warehouse mapping version 1");
  h.Add(mapping.action);
  h.Add(model.primary_key);
  h.Add(std::to_string(mapping.fields.size()));
  for (const MappedField& f : mapping.fields) h.Add(f.field).Add(f.value);
  h.Add(std::to_string(schema.size()));
  for (const Column& c : schema) h.Add(c.name).Add(ValueTypeName(c.type)).Add(c.source_type);
  return h.Finish();
}

void AppendRowHash(std::string& bytes, std::string_view row_hash) {
  if (row_hash.size() > 255) row_hash = row_hash.substr(0, 255);
  bytes.append(row_hash);
  bytes.push_back(static_cast<char>(row_hash.size()));
}

absl::StatusOr<std::string_view> SplitRowHash(std::string_view& bytes) {
  if (bytes.empty()) return absl::DataLossError("a warehouse-mode record lacks its row hash");
  size_t size = static_cast<unsigned char>(bytes.back());
  if (bytes.size() < size + 1) {
    return absl::DataLossError("a warehouse-mode record has a damaged row hash");
  }
  std::string_view hash = bytes.substr(bytes.size() - 1 - size, size);
  bytes.remove_suffix(size + 1);
  return hash;
}

absl::StatusOr<bool> CountingWarehouseScanner::Next(CheckpointEntry& entry) {
  BACKFLOW_ASSIGN_OR_RETURN(bool more, entries_->Next(entry_));
  if (!more) return false;
  ++count_;
  entry.key = std::move(entry_.key);
  entry.fingerprint = entry_.fingerprint;
  entry.identity = std::move(entry_.identity);
  return true;
}

absl::Status ToWarehouseWrites(const std::vector<CheckpointUpdate>& updates,
                               const Fingerprint& version,
                               std::vector<WarehouseCheckpointWrite>& writes,
                               std::vector<CheckpointUpdate>& settles) {
  writes.reserve(writes.size() + updates.size());
  settles.reserve(settles.size() + updates.size());
  for (const CheckpointUpdate& u : updates) {
    std::string_view identity = u.identity;
    BACKFLOW_ASSIGN_OR_RETURN(std::string_view row_hash, SplitRowHash(identity));
    CheckpointUpdate settle;
    settle.key = u.key;
    settle.kind = CheckpointUpdate::Kind::kSettle;
    settles.push_back(std::move(settle));
    if (u.kind == CheckpointUpdate::Kind::kSettle) continue;
    WarehouseCheckpointWrite w;
    w.key = u.key;
    if (u.kind == CheckpointUpdate::Kind::kRemove) {
      w.kind = WarehouseCheckpointWrite::Kind::kRemove;
    } else {
      w.kind = WarehouseCheckpointWrite::Kind::kUpsert;
      w.fingerprint = u.fingerprint;
      w.identity.assign(identity);
      w.row_hash.assign(row_hash);
      w.version = version;
    }
    writes.push_back(std::move(w));
  }
  return absl::OkStatus();
}

}  // namespace backflow
