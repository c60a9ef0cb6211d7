// Errors shared by the StateStore implementations and their callers, and
// CheckpointScanner's default NextView().
#include "backflow/state/state_store.h"

#include "absl/strings/cord.h"
#include "fmt/format.h"

namespace backflow {
namespace {

constexpr char kRunTakenOverPayload[] = "backflow.dev/state/run-taken-over";
constexpr char kMappingBusyPayload[] = "backflow.dev/state/mapping-busy";

absl::Status Tagged(absl::Status status, const char* type_url) {
  status.SetPayload(type_url, absl::Cord("1"));
  return status;
}

bool HasTag(const absl::Status& status, const char* type_url) {
  return !status.ok() && status.GetPayload(type_url).has_value();
}

}  // namespace

absl::StatusOr<bool> CheckpointScanner::NextView(CheckpointEntryView& entry) {
  absl::StatusOr<bool> more = Next(view_buffer_);
  if (!more.ok() || !*more) return more;
  entry.key = view_buffer_.key;
  entry.fingerprint = view_buffer_.fingerprint;
  entry.identity = view_buffer_.identity;
  return true;
}

absl::Status StateStore::FinishAdvance(
    bool stored, AdvanceOutcome& out,
    const std::function<absl::StatusOr<std::vector<int64_t>>()>& queue) {
  if (!stored) {
    out.result = AdvanceOutcome::Result::kDecidedElsewhere;
    out.active.reset();
    return absl::OkStatus();
  }
  if (out.active) {
    out.result = AdvanceOutcome::Result::kSkippedBusy;
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<int64_t>> ids = queue();
  if (!ids.ok()) return ids.status();
  out.result = AdvanceOutcome::Result::kQueued;
  out.ids = *std::move(ids);
  return absl::OkStatus();
}

absl::Status RunTakenOverError(int64_t run_id, const std::string& worker,
                               const std::string& holder) {
  return Tagged(absl::AbortedError(fmt::format(
                    "run {} is held by worker \"{}\" now: worker \"{}\" lost its lease (it did "
                    "not renew it in time), so its update was not recorded",
                    run_id, holder, worker)),
                kRunTakenOverPayload);
}

bool IsRunTakenOver(const absl::Status& status) { return HasTag(status, kRunTakenOverPayload); }

absl::Status MappingBusyError(const std::string& mapping, const std::string& holder) {
  return Tagged(
      absl::FailedPreconditionError(fmt::format(
          "mapping \"{}\" is being synced by another backflow process{}; wait for it to finish",
          mapping, holder.empty() ? std::string() : fmt::format(" ({})", holder))),
      kMappingBusyPayload);
}

bool IsMappingBusy(const absl::Status& status) { return HasTag(status, kMappingBusyPayload); }

absl::Status DamagedCheckpointError(const std::string& mapping, const std::string& detail,
                                    const std::string& store, const std::string& backup) {
  return absl::DataLossError(fmt::format(
      "the checkpoint of mapping \"{}\" in {} is damaged ({}); nothing was sent. Restore {} "
      "from a backup, or run `backflow checkpoint reset {}` to start this mapping over (every "
      "record is then sent as added, and records deleted from the model meanwhile are not "
      "deleted in the destination)",
      mapping, store, detail, backup, mapping));
}

}  // namespace backflow
