// When a model's schedule is due: next run times for interval, weekly and
// cron schedules, in the schedule's IANA time zone, across DST changes.
//
// Pure functions of their arguments (no clock, no state), so the service's
// scheduler can be driven by a fake clock in tests. Thread-safe.
//
// Rules:
//  * every N: the ticks are the multiples of N since the Unix epoch (UTC), so
//    "every 1h" runs at the top of each hour whatever the time zone.
//  * weekly (days + at) and cron: wall-clock times in the time zone. A time
//    skipped by a DST change runs at the transition (02:30 on a spring-forward
//    night runs at 03:00); a time that occurs twice runs once, the first time.
//  * cron: five fields (minute hour day-of-month month day-of-week) with `*`,
//    lists, ranges, steps and names (jan..dec, sun..sat; 7 is also Sunday);
//    when both day fields are restricted a day matching either runs (as cron).
#pragma once

#include <bitset>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace backflow {

struct CronExpression {
  std::bitset<60> minutes;
  std::bitset<24> hours;
  std::bitset<32> days_of_month;  // 1..31
  std::bitset<13> months;         // 1..12
  std::bitset<7> days_of_week;    // 0 = Sunday
  bool day_of_month_restricted = false;
  bool day_of_week_restricted = false;
};

// kInvalidArgument naming the field and what is wrong, e.g.
// `hour: 25 is out of range 0-23`, or that the expression never matches.
absl::StatusOr<CronExpression> ParseCron(const std::string& text);

// kInvalidArgument for a name not in the time zone database.
absl::StatusOr<absl::TimeZone> LoadScheduleTimeZone(const std::string& name);

// The first tick strictly after `after`. kNotFound if none within 5 years.
absl::Time NextIntervalTick(absl::Duration interval, absl::Time after);
absl::StatusOr<absl::Time> NextWeeklyTick(const std::bitset<7>& weekdays, int hour,
                                          absl::TimeZone tz, absl::Time after);
absl::StatusOr<absl::Time> NextCronTick(const CronExpression& cron, absl::TimeZone tz,
                                        absl::Time after);

}  // namespace backflow
