#include "backflow/scheduler/planner.h"

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

std::vector<ScheduleDecision> PlanScheduledRuns(const std::vector<ModelConfig>& models,
                                                const std::set<std::string>& busy, absl::Time now,
                                                std::map<std::string, ScheduleState>& states) {
  std::vector<ScheduleDecision> out;
  for (const ModelConfig& model : models) {
    if (model.schedule.kind == Schedule::Kind::kManual) continue;
    auto it = states.find(model.name);
    if (it == states.end()) {
      ScheduleState fresh;
      fresh.last_tick = absl::ToUnixSeconds(now);
      states[model.name] = fresh;
      continue;
    }
    ScheduleState& state = it->second;
    absl::Time last = absl::FromUnixSeconds(state.last_tick);
    absl::StatusOr<absl::Time> next = NextScheduleTick(model.schedule, last);
    if (!next.ok() || *next > now) continue;
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
    if (busy.count(model.name)) {
      d.action = ScheduleDecision::Action::kSkip;
      state.skipped_ticks += folded + 1;
    } else {
      d.action = ScheduleDecision::Action::kRun;
      state.missed_ticks += folded;
    }
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace backflow
