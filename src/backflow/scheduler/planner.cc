#include "backflow/scheduler/planner.h"

#include <algorithm>

#include "backflow/scheduler/schedule.h"

namespace backflow {

absl::StatusOr<absl::Time> NextScheduleTick(const Schedule& schedule, absl::Time after) {
  switch (schedule.kind) {
    case Schedule::Kind::kManual:
      return absl::NotFoundError("manual schedule");
    case Schedule::Kind::kInterval:
      return NextIntervalTick(absl::Minutes(schedule.interval_minutes), after);
    case Schedule::Kind::kWeekly: {
      absl::StatusOr<absl::TimeZone> tz = LoadScheduleTimeZone(schedule.timezone);
      if (!tz.ok()) return tz.status();
      std::bitset<7> days;
      for (int d : schedule.weekdays) days.set(d);
      return NextWeeklyTick(days, schedule.hour, *tz, after);
    }
    case Schedule::Kind::kCron: {
      absl::StatusOr<CronExpression> cron = ParseCron(schedule.cron);
      if (!cron.ok()) return cron.status();
      absl::StatusOr<absl::TimeZone> tz = LoadScheduleTimeZone(schedule.timezone);
      if (!tz.ok()) return tz.status();
      return NextCronTick(*cron, *tz, after);
    }
  }
  return absl::NotFoundError("unknown schedule kind");
}

std::optional<absl::Time> SchedulePlanner::Next(const ModelConfig& model,
                                                const ScheduleState& state) {
  auto it = next_.find(model.name);
  if (it != next_.end() && it->second.after == state.last_tick &&
      it->second.schedule == model.schedule) {
    return it->second.at;
  }
  NextTick fresh;
  fresh.after = state.last_tick;
  fresh.schedule = model.schedule;
  absl::StatusOr<absl::Time> next =
      NextScheduleTick(model.schedule, absl::FromUnixSeconds(state.last_tick));
  if (next.ok()) fresh.at = *next;
  std::optional<absl::Time> at = fresh.at;
  next_[model.name] = std::move(fresh);
  return at;
}

std::vector<ScheduleDecision> PlanScheduledRuns(const std::vector<ModelConfig>& models,
                                                const std::set<std::string>& busy, absl::Time now,
                                                std::map<std::string, ScheduleState>& states) {
  SchedulePlanner planner;
  return planner.Plan(models, busy, now, states);
}

std::vector<ScheduleDecision> SchedulePlanner::Plan(const std::vector<ModelConfig>& models,
                                                    const std::set<std::string>& busy,
                                                    absl::Time now,
                                                    std::map<std::string, ScheduleState>& states) {
  std::vector<ScheduleDecision> out;
  // Nothing can be due before the earliest next tick seen by the last scan.
  if (!dirty_ && models.size() == scanned_models_ && now < earliest_) return out;
  earliest_ = absl::InfiniteFuture();
  scanned_models_ = models.size();
  dirty_ = false;
  for (const ModelConfig& model : models) {
    if (model.schedule.kind == Schedule::Kind::kManual) continue;
    auto it = states.find(model.name);
    if (it == states.end()) {
      ScheduleState fresh;
      fresh.last_tick = absl::ToUnixSeconds(now);
      it = states.emplace(model.name, fresh).first;
    }
    ScheduleState& state = it->second;
    std::optional<absl::Time> next = Next(model, state);
    if (next && *next > now) earliest_ = std::min(earliest_, *next);
    if (!next || *next > now) continue;
    // Walk to the latest due tick, counting the ones folded into it.
    absl::Time latest = *next;
    int64_t folded = 0;
    while (folded < kMaxCountedTicks) {
      absl::StatusOr<absl::Time> after = NextScheduleTick(model.schedule, latest);
      if (!after.ok() || *after > now) break;
      latest = *after;
      ++folded;
    }
    ScheduleDecision d;
    d.model = model.name;
    d.tick = latest;
    d.missed = folded;
    state.last_tick = absl::ToUnixSeconds(latest);
    d.state_if_busy = state;
    d.state_if_busy.skipped_ticks += folded + 1;
    if (busy.count(model.name)) {
      d.action = ScheduleDecision::Action::kSkip;
      state = d.state_if_busy;
    } else {
      d.action = ScheduleDecision::Action::kRun;
      state.missed_ticks += folded;
    }
    if (std::optional<absl::Time> after = Next(model, state)) {
      earliest_ = std::min(earliest_, *after);
    }
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace backflow
