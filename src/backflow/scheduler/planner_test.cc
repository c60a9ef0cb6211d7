#include "backflow/scheduler/planner.h"

#include "gtest/gtest.h"

namespace backflow {
namespace {

absl::Time At(const std::string& rfc3339) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << err;
  return t;
}

ModelConfig Hourly(const std::string& name) {
  ModelConfig m;
  m.name = name;
  m.schedule.kind = Schedule::Kind::kInterval;
  m.schedule.interval_minutes = 60;
  return m;
}

TEST(PlannerTest, FirstSightStartsCountingAndRunsAtTheNextTick) {
  std::vector<ModelConfig> models = {Hourly("a")};
  std::map<std::string, ScheduleState> states;
  EXPECT_TRUE(PlanScheduledRuns(models, {}, At("2026-03-01T10:20:00Z"), states).empty());
  ASSERT_EQ(states.count("a"), 1u);
  EXPECT_TRUE(PlanScheduledRuns(models, {}, At("2026-03-01T10:59:59Z"), states).empty());
  auto due = PlanScheduledRuns(models, {}, At("2026-03-01T11:00:00Z"), states);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].action, ScheduleDecision::Action::kRun);
  EXPECT_EQ(due[0].tick, At("2026-03-01T11:00:00Z"));
  EXPECT_EQ(due[0].missed, 0);
  // The same tick is never decided twice.
  EXPECT_TRUE(PlanScheduledRuns(models, {}, At("2026-03-01T11:00:30Z"), states).empty());
}

TEST(PlannerTest, DowntimeRunsOnceNotOncePerMissedTick) {
  std::vector<ModelConfig> models = {Hourly("a")};
  std::map<std::string, ScheduleState> states;
  states["a"] = ScheduleState{.last_tick = absl::ToUnixSeconds(At("2026-03-01T10:00:00Z"))};
  auto due = PlanScheduledRuns(models, {}, At("2026-03-01T14:30:00Z"), states);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].tick, At("2026-03-01T14:00:00Z"));
  EXPECT_EQ(due[0].missed, 3);  // 11:00, 12:00, 13:00 folded into the 14:00 run
  EXPECT_EQ(states["a"].missed_ticks, 3);
  EXPECT_TRUE(PlanScheduledRuns(models, {}, At("2026-03-01T14:59:00Z"), states).empty());
}

TEST(PlannerTest, BusyModelsAreSkippedNotOverlapped) {
  std::vector<ModelConfig> models = {Hourly("a"), Hourly("b")};
  std::map<std::string, ScheduleState> states;
  for (const char* m : {"a", "b"}) {
    states[m] = ScheduleState{.last_tick = absl::ToUnixSeconds(At("2026-03-01T10:00:00Z"))};
  }
  auto due = PlanScheduledRuns(models, {"a"}, At("2026-03-01T11:00:05Z"), states);
  ASSERT_EQ(due.size(), 2u);
  EXPECT_EQ(due[0].model, "a");
  EXPECT_EQ(due[0].action, ScheduleDecision::Action::kSkip);
  EXPECT_EQ(due[1].model, "b");
  EXPECT_EQ(due[1].action, ScheduleDecision::Action::kRun);
  EXPECT_EQ(states["a"].skipped_ticks, 1);
  // Once the run finished, "a" runs at its next tick, not to make up the skipped one.
  EXPECT_TRUE(PlanScheduledRuns(models, {}, At("2026-03-01T11:30:00Z"), states).empty());
  due = PlanScheduledRuns(models, {}, At("2026-03-01T12:00:00Z"), states);
  EXPECT_EQ(due.size(), 2u);
}

TEST(PlannerTest, ARunDecisionCarriesTheStateOfTheSameTickSkippedForABusyModel) {
  std::vector<ModelConfig> models = {Hourly("a")};
  std::map<std::string, ScheduleState> idle;
  idle["a"] = ScheduleState{.last_tick = absl::ToUnixSeconds(At("2026-03-01T10:00:00Z")),
                            .skipped_ticks = 4,
                            .missed_ticks = 1};
  std::map<std::string, ScheduleState> busy = idle;
  const absl::Time now = At("2026-03-01T13:00:05Z");  // 11:00 and 12:00 folded into 13:00
  auto run = PlanScheduledRuns(models, {}, now, idle);
  auto skip = PlanScheduledRuns(models, {"a"}, now, busy);
  ASSERT_EQ(run.size(), 1u);
  ASSERT_EQ(skip.size(), 1u);
  ASSERT_EQ(run[0].action, ScheduleDecision::Action::kRun);
  EXPECT_EQ(idle["a"].missed_ticks, 3);
  EXPECT_EQ(idle["a"].skipped_ticks, 4);
  // Stored when the model turns out busy as the run is queued: the same
  // state as the planner's own skip of that tick.
  const ScheduleState& if_busy = run[0].state_if_busy;
  EXPECT_EQ(if_busy.last_tick, absl::ToUnixSeconds(At("2026-03-01T13:00:00Z")));
  EXPECT_EQ(if_busy.skipped_ticks, 4 + 3);
  EXPECT_EQ(if_busy.missed_ticks, 1);
  EXPECT_EQ(if_busy.last_tick, busy["a"].last_tick);
  EXPECT_EQ(if_busy.skipped_ticks, busy["a"].skipped_ticks);
  EXPECT_EQ(if_busy.missed_ticks, busy["a"].missed_ticks);
  EXPECT_EQ(skip[0].state_if_busy.skipped_ticks, busy["a"].skipped_ticks);
}

TEST(PlannerTest, ManualModelsNeverRun) {
  ModelConfig m;
  m.name = "manual";
  std::map<std::string, ScheduleState> states;
  EXPECT_TRUE(PlanScheduledRuns({m}, {}, At("2026-03-01T10:00:00Z"), states).empty());
  EXPECT_TRUE(states.empty());
}

TEST(PlannerTest, WeeklyAcrossSpringForwardAndMonthEnd) {
  ModelConfig m;
  m.name = "weekly";
  m.schedule.kind = Schedule::Kind::kWeekly;
  m.schedule.weekdays = {0};  // Sundays
  m.schedule.hour = 2;        // 02:00 does not exist on 2026-03-29 in Paris
  m.schedule.timezone = "Europe/Paris";
  std::map<std::string, ScheduleState> states;
  states["weekly"] =
      ScheduleState{.last_tick = absl::ToUnixSeconds(At("2026-03-22T01:00:00Z"))};  // 02:00 CET
  EXPECT_TRUE(PlanScheduledRuns({m}, {}, At("2026-03-29T00:59:59Z"), states).empty());
  auto due = PlanScheduledRuns({m}, {}, At("2026-03-29T01:00:00Z"), states);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].tick, At("2026-03-29T01:00:00Z"));  // 03:00 CEST, the transition
  due = PlanScheduledRuns({m}, {}, At("2026-04-05T00:00:00Z"), states);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].tick, At("2026-04-05T00:00:00Z"));  // 02:00 CEST
}

TEST(PlannerTest, CronOnMonthEnds) {
  ModelConfig m;
  m.name = "cron";
  m.schedule.kind = Schedule::Kind::kCron;
  m.schedule.cron = "0 6 31 * *";  // only months with a 31st
  std::map<std::string, ScheduleState> states;
  states["cron"] = ScheduleState{.last_tick = absl::ToUnixSeconds(At("2026-03-31T06:00:00Z"))};
  EXPECT_TRUE(PlanScheduledRuns({m}, {}, At("2026-04-30T23:00:00Z"), states).empty());
  auto due = PlanScheduledRuns({m}, {}, At("2026-05-31T06:00:00Z"), states);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].missed, 0);
}

}  // namespace
}  // namespace backflow

namespace backflow {
namespace {

TEST(PlannerTest, AKeptPlannerSkipsIdlePollsAndSeesReloadedSchedules) {
  std::vector<ModelConfig> models = {Hourly("a")};
  std::map<std::string, ScheduleState> states;
  SchedulePlanner planner;
  EXPECT_TRUE(planner.Plan(models, {}, At("2026-03-01T10:05:00Z"), states).empty());
  EXPECT_TRUE(planner.Plan(models, {}, At("2026-03-01T10:20:00Z"), states).empty());
  // The workspace is reloaded with a 15-minute schedule.
  models[0].schedule.interval_minutes = 15;
  planner.Invalidate();
  auto due = planner.Plan(models, {}, At("2026-03-01T10:20:00Z"), states);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].tick, At("2026-03-01T10:15:00Z"));
  EXPECT_TRUE(planner.Plan(models, {}, At("2026-03-01T10:29:59Z"), states).empty());
  EXPECT_EQ(planner.Plan(models, {}, At("2026-03-01T10:30:00Z"), states).size(), 1u);
  // A model added by a reload is seen (the model count changed).
  models.push_back(Hourly("b"));
  EXPECT_TRUE(planner.Plan(models, {}, At("2026-03-01T10:31:00Z"), states).empty());
  EXPECT_EQ(states.count("b"), 1u);
}

}  // namespace
}  // namespace backflow
