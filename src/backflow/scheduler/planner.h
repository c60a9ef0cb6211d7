// PlanScheduledRuns: which models' schedules are due now, under the
// service's rules (issue 6):
//  * A model seen for the first time starts counting from `now`: nothing
//    runs at once, the first run is at its next tick.
//  * Due ticks run the model once, for the latest of them; earlier ticks
//    that fell in downtime are folded into that run (counted as missed), so a
//    schedule that missed ten ticks runs once, not ten times.
//  * A model that is still queued or running (`busy`) is not overlapped: its
//    due ticks are skipped and counted.
// Pure: the caller persists `states` (StateStore::SetScheduleState) and
// supplies the time, so tests drive it with any clock. Thread-compatible.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "backflow/config/workspace.h"
#include "backflow/state/state_store.h"

namespace backflow {

// The first tick of `schedule` strictly after `after`. kNotFound for a
// manual schedule (or none within 5 years); kInvalidArgument for a schedule
// that does not parse (validation prevents it).
absl::StatusOr<absl::Time> NextScheduleTick(const Schedule& schedule, absl::Time after);

struct ScheduleDecision {
  enum class Action { kRun, kSkip };
  std::string model;
  Action action = Action::kRun;
  absl::Time tick;     // the latest due tick
  int64_t missed = 0;  // earlier due ticks folded into this decision
  // The model's state had it been busy: what the caller stores instead of
  // the planned state when the model turns out busy as its runs are queued
  // (StateStore::AdvanceSchedule): the tick then counts as skipped, as the
  // planner counts it for a busy model. For kSkip, the planned state.
  ScheduleState state_if_busy;
};

// Counting of folded ticks stops here (a year of 15-minute ticks is 35,040).
inline constexpr int64_t kMaxCountedTicks = 100'000;

// Decides for every model with a schedule; updates `states` (keyed by
// model) for each model it decided on or saw for the first time.
//
// A planner remembers each model's next tick until its state or schedule
// changes, and the earliest of them: a poll before that time costs nothing
// (bench/scheduler_bench.cc). Call Invalidate() when the models or the states
// change other than through Plan() (a reloaded workspace). Not thread-safe.
class SchedulePlanner {
 public:
  void Invalidate() { dirty_ = true; }
  std::vector<ScheduleDecision> Plan(const std::vector<ModelConfig>& models,
                                     const std::set<std::string>& busy, absl::Time now,
                                     std::map<std::string, ScheduleState>& states);

 private:
  struct NextTick {
    int64_t after = 0;             // the last_tick it was computed from
    Schedule schedule;             // the schedule it was computed for
    std::optional<absl::Time> at;  // nullopt: no next tick
  };
  // The first tick after `state.last_tick`, from the cache when still valid.
  std::optional<absl::Time> Next(const ModelConfig& model, const ScheduleState& state);

  std::map<std::string, NextTick> next_;
  bool dirty_ = true;
  size_t scanned_models_ = 0;
  absl::Time earliest_ = absl::InfinitePast();
};

// One-shot form of SchedulePlanner::Plan (no memory between calls).
std::vector<ScheduleDecision> PlanScheduledRuns(const std::vector<ModelConfig>& models,
                                                const std::set<std::string>& busy, absl::Time now,
                                                std::map<std::string, ScheduleState>& states);

}  // namespace backflow
