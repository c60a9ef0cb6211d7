#include "backflow/destinations/testing/memory_destination.h"

#include <algorithm>
#include <thread>

#include "backflow/destinations/destination.h"

namespace backflow::testing {
namespace {

class MemorySession : public ActionSession {
 public:
  MemorySession(std::shared_ptr<MemoryDestinationState> state, SessionOptions options)
      : state_(std::move(state)), options_(std::move(options)) {}

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override {
    std::chrono::milliseconds delay;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->max_in_flight = std::max(state_->max_in_flight, ++state_->in_flight);
      delay = state_->send_delay;
    }
    if (delay.count() > 0) std::this_thread::sleep_for(delay);
    std::lock_guard<std::mutex> lock(state_->mu);
    --state_->in_flight;
    ++state_->batches;
    state_->batch_sizes.push_back(static_cast<int>(batch.size()));
    for (const OutgoingRecord& r : batch) state_->sent_keys.push_back(r.key);
    if (state_->on_batch) state_->on_batch(state_->batches);
    if (!state_->batch_error.ok()) return state_->batch_error;
    std::vector<absl::Status> out;
    for (const OutgoingRecord& r : batch) {
      if (state_->reject_keys.count(r.key)) {
        out.push_back(absl::InvalidArgumentError("rejected by the fake destination"));
        continue;
      }
      if (r.is_delete()) {
        state_->records.erase(r.key);
      } else {
        state_->records[r.key] = RecordFieldsJson(options_.layout, r);
      }
      out.push_back(state_->lost_reply_keys.count(r.key)
                        ? absl::UnavailableError("timed out waiting for the reply")
                        : absl::OkStatus());
    }
    return out;
  }

  absl::Status Finish() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    ++state_->finished_sessions;
    return state_->finish_error;
  }

 private:
  std::shared_ptr<MemoryDestinationState> state_;
  SessionOptions options_;
};

class MemoryDestination : public Destination {
 public:
  explicit MemoryDestination(std::shared_ptr<MemoryDestinationState> state)
      : state_(std::move(state)) {}
  absl::Status CheckConnection() override { return absl::OkStatus(); }
  int concurrency() const override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->concurrency;
  }
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override {
    return std::make_unique<MemorySession>(state_, options);
  }

 private:
  std::shared_ptr<MemoryDestinationState> state_;
};

}  // namespace

DestinationDefinition MemoryDestinationDefinition(std::shared_ptr<MemoryDestinationState> state,
                                                  bool commit_on_finish) {
  DestinationDefinition def;
  def.type = "memory";
  def.title = "Memory (tests)";
  def.description = "Keeps records in memory.";
  def.settings = {
      {.key = "label", .description = "free text", .type = SettingType::kString},
      {.key = "token", .description = "a secret", .type = SettingType::kString, .secret = true}};
  ActionSpec upsert;
  upsert.id = "upsert";
  upsert.title = "Upsert";
  upsert.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                       RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                       RecordSelection::kAll};
  upsert.allows_extra_fields = true;
  upsert.default_batch_records = 3;
  upsert.max_batch_records = 100;
  upsert.commit_on_finish = commit_on_finish;
  ActionSpec typed;
  typed.id = "typed";
  typed.title = "Typed";
  typed.selections = {RecordSelection::kAddedOrUpdated, RecordSelection::kAll};
  typed.fields = {{.key = "email", .type = FieldType::kString, .required = true},
                  {.key = "age", .type = FieldType::kInteger},
                  {.key = "vip", .type = FieldType::kBoolean, .default_column = "vip"}};
  typed.default_batch_records = 10;
  typed.max_batch_records = 10;
  def.actions = {upsert, typed};
  def.create = [state](const nlohmann::json&,
                       const ConnectorEnv&) -> absl::StatusOr<std::unique_ptr<Destination>> {
    return std::make_unique<MemoryDestination>(state);
  };
  return def;
}

}  // namespace backflow::testing
