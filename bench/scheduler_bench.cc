// Scheduler benchmark (issue 6): the CPU the scheduler spends deciding over
// 10,000 scheduled models (a third each every-N, weekly in time zones, cron)
// while it polls every second for a simulated span (default one hour, so
// every model's ticks come due along the way), as a share of one core.
// Target: < 1%.
// Usage: bench_scheduler [--models N] [--polls P]   (P one-second polls)
#include <cstdlib>
#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "backflow/config/workspace.h"
#include "backflow/scheduler/planner.h"
#include "fmt/format.h"

int main(int argc, char** argv) {
  int models_count = 10'000;
  int polls = 3600;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--models") models_count = std::atoi(argv[i + 1]);
    if (flag == "--polls") polls = std::atoi(argv[i + 1]);
  }
  const char* zones[] = {"UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"};
  const int intervals[] = {15, 30, 60, 120, 240, 360, 480, 720, 1440};
  std::vector<backflow::ModelConfig> models(models_count);
  for (int i = 0; i < models_count; ++i) {
    backflow::ModelConfig& m = models[i];
    m.name = fmt::format("model_{}", i);
    switch (i % 3) {
      case 0:
        m.schedule.kind = backflow::Schedule::Kind::kInterval;
        m.schedule.interval_minutes = intervals[i % 9];
        break;
      case 1:
        m.schedule.kind = backflow::Schedule::Kind::kWeekly;
        m.schedule.weekdays = {1, 3, 5};
        m.schedule.hour = i % 24;
        m.schedule.timezone = zones[i % 4];
        break;
      default:
        m.schedule.kind = backflow::Schedule::Kind::kCron;
        m.schedule.cron = fmt::format("{} */2 * * 1-5", i % 60);
        m.schedule.timezone = zones[i % 4];
        break;
    }
  }
  std::map<std::string, backflow::ScheduleState> states;
  absl::Time now = absl::FromUnixSeconds(1'780'000'000);
  backflow::SchedulePlanner planner;      // as the service keeps it
  planner.Plan(models, {}, now, states);  // first sight
  int64_t decisions = 0;
  // CPU time, not wall time: the machine is shared.
  std::clock_t start = std::clock();
  for (int p = 1; p <= polls; ++p) {
    decisions += planner.Plan(models, {}, now + absl::Seconds(p), states).size();
  }
  double seconds = static_cast<double>(std::clock() - start) / CLOCKS_PER_SEC;
  double per_poll_ms = seconds / polls * 1000;
  double share = seconds / polls;  // CPU seconds per simulated second
  fmt::print("# Scheduler: {} models, {} polls ({} runs decided)\n\n", models_count, polls,
             decisions);
  fmt::print("| figure | measured | target | result |\n| --- | --- | --- | --- |\n");
  fmt::print("| CPU per poll, average | {:.3f} ms | - | - |\n", per_poll_ms);
  fmt::print("| share of one core at a 1 s poll | {:.3f}% | < 1% | {} |\n", share * 100,
             share < 0.01 ? "PASS" : "MISS");
  return 0;
}
