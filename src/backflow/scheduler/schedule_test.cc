#include "backflow/scheduler/schedule.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

absl::TimeZone Zone(const std::string& name) {
  auto tz = LoadScheduleTimeZone(name);
  EXPECT_TRUE(tz.ok()) << tz.status();
  return tz.value_or(absl::UTCTimeZone());
}

absl::Time Local(absl::TimeZone tz, int y, int mo, int d, int h, int mi) {
  return tz.At(absl::CivilMinute(y, mo, d, h, mi)).pre;
}

std::string Format(absl::Time t, absl::TimeZone tz) {
  return absl::FormatTime("%Y-%m-%d %H:%M %Ez", t, tz);
}

TEST(ScheduleTest, IntervalsAlignToTheEpoch) {
  absl::Time t = absl::FromUnixSeconds(1'700'000'123);  // 2023-11-14 22:15:23 UTC
  EXPECT_EQ(Format(NextIntervalTick(absl::Minutes(15), t), absl::UTCTimeZone()),
            "2023-11-14 22:30 +00:00");
  EXPECT_EQ(Format(NextIntervalTick(absl::Hours(1), t), absl::UTCTimeZone()),
            "2023-11-14 23:00 +00:00");
  EXPECT_EQ(Format(NextIntervalTick(absl::Hours(24), t), absl::UTCTimeZone()),
            "2023-11-15 00:00 +00:00");
  // Exactly on a tick: the next one.
  absl::Time on = absl::FromUnixSeconds(1'700'002'800);
  EXPECT_EQ(NextIntervalTick(absl::Minutes(15), on), on + absl::Minutes(15));
}

TEST(ScheduleTest, WeeklyRunsAtTheHourInTheTimeZone) {
  absl::TimeZone paris = Zone("Europe/Paris");
  std::bitset<7> mon_thu;
  mon_thu.set(1).set(4);
  // Wednesday 2026-11-25 10:00 Paris: next is Thursday 09:00.
  auto next = NextWeeklyTick(mon_thu, 9, paris, Local(paris, 2026, 11, 25, 10, 0));
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(Format(*next, paris), "2026-11-26 09:00 +01:00");
  next = NextWeeklyTick(mon_thu, 9, paris, *next);
  EXPECT_EQ(Format(*next, paris), "2026-11-30 09:00 +01:00");
}

TEST(ScheduleTest, SpringForwardRunsAtTheTransitionOnce) {
  absl::TimeZone ny = Zone("America/New_York");
  std::bitset<7> sunday;
  sunday.set(0);
  // 2026-03-08 02:00 does not exist in New York: the run happens at 03:00 EDT.
  auto next = NextWeeklyTick(sunday, 2, ny, Local(ny, 2026, 3, 7, 12, 0));
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(Format(*next, ny), "2026-03-08 03:00 -04:00");
  next = NextWeeklyTick(sunday, 2, ny, *next);
  EXPECT_EQ(Format(*next, ny), "2026-03-15 02:00 -04:00");
}

TEST(ScheduleTest, FallBackRunsTheRepeatedHourOnce) {
  absl::TimeZone ny = Zone("America/New_York");
  auto cron = ParseCron("30 1 * * *");
  ASSERT_TRUE(cron.ok());
  auto first = NextCronTick(*cron, ny, Local(ny, 2026, 11, 1, 0, 0));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(Format(*first, ny), "2026-11-01 01:30 -04:00");
  auto second = NextCronTick(*cron, ny, *first);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(Format(*second, ny), "2026-11-02 01:30 -05:00");
}

TEST(ScheduleTest, CronHandlesMonthEndsStepsAndNames) {
  absl::TimeZone utc = absl::UTCTimeZone();
  auto last_day = ParseCron("0 6 31 * *");
  ASSERT_TRUE(last_day.ok());
  auto next = NextCronTick(*last_day, utc, Local(utc, 2026, 4, 1, 0, 0));
  EXPECT_EQ(Format(*next, utc), "2026-05-31 06:00 +00:00");  // April has 30 days

  auto leap = ParseCron("0 0 29 feb *");
  ASSERT_TRUE(leap.ok());
  next = NextCronTick(*leap, utc, Local(utc, 2026, 3, 1, 0, 0));
  EXPECT_EQ(Format(*next, utc), "2028-02-29 00:00 +00:00");

  auto steps = ParseCron("*/20 9-10 * * mon-fri");
  ASSERT_TRUE(steps.ok());
  next = NextCronTick(*steps, utc, Local(utc, 2026, 11, 27, 10, 45));  // a Friday
  EXPECT_EQ(Format(*next, utc), "2026-11-30 09:00 +00:00");            // Monday
  next = NextCronTick(*steps, utc, *next);
  EXPECT_EQ(Format(*next, utc), "2026-11-30 09:20 +00:00");

  // Both day fields restricted: either matches (the 1st, or any Sunday).
  auto either = ParseCron("0 0 1 * 0");
  ASSERT_TRUE(either.ok());
  next = NextCronTick(*either, utc, Local(utc, 2026, 11, 26, 0, 0));
  EXPECT_EQ(Format(*next, utc), "2026-11-29 00:00 +00:00");
  auto sunday7 = ParseCron("0 0 * * 7");
  ASSERT_TRUE(sunday7.ok());
  EXPECT_TRUE(sunday7->days_of_week.test(0));
}

TEST(ScheduleTest, BadCronExpressionsSayWhatIsWrong) {
  EXPECT_EQ(ParseCron("0 25 * * *").status().message(), "hour: 25 is out of range 0-23");
  EXPECT_EQ(ParseCron("* * *").status().message(),
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week); \"* * "
            "*\" has 3");
  EXPECT_EQ(ParseCron("0 0 30 2 *").status().message(), "\"0 0 30 2 *\" never matches a date");
  EXPECT_EQ(ParseCron("0 0 * foo *").status().message(), "month: \"foo\" is not a number");
  EXPECT_EQ(ParseCron("0 0 * * 5-1").status().message(),
            "day-of-week: range \"5-1\" runs backwards");
  EXPECT_FALSE(ParseCron("*/0 * * * *").ok());
  EXPECT_FALSE(LoadScheduleTimeZone("Mars/Olympus").ok());
}

}  // namespace
}  // namespace backflow
