#include "backflow/scheduler/schedule.h"

#include <cstdlib>
#include <string_view>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "backflow/common/fmt_absl.h"
#include "fmt/format.h"

namespace backflow {
namespace {

constexpr int kSearchDays = 5 * 366;

struct FieldSpec {
  const char* name;
  int min;
  int max;
  const char* const* names;  // index 0 = `min`, or null
};

constexpr const char* kMonthNames[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                       "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr const char* kDayNames[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

absl::StatusOr<int> ParseValue(const FieldSpec& f, std::string_view text) {
  std::string lower = absl::AsciiStrToLower(std::string(text));
  if (f.names != nullptr) {
    for (int i = 0; i <= f.max - f.min; ++i) {
      if (lower == f.names[i]) return f.min + i;
    }
  }
  int v = 0;
  if (!absl::SimpleAtoi(lower, &v)) {
    return absl::InvalidArgumentError(fmt::format("{}: \"{}\" is not a number", f.name, text));
  }
  // Day of week 7 is Sunday too.
  if (f.max == 6 && v == 7) return 0;
  if (v < f.min || v > f.max) {
    return absl::InvalidArgumentError(
        fmt::format("{}: {} is out of range {}-{}", f.name, v, f.min, f.max));
  }
  return v;
}

// Parses one field into `bits` (indexed by value); `restricted` is false for "*".
template <size_t N>
absl::Status ParseField(const FieldSpec& f, std::string_view text, std::bitset<N>& bits,
                        bool& restricted) {
  restricted = text != "*";
  std::vector<std::string> parts = absl::StrSplit(std::string(text), ',');
  for (const std::string& part_text : parts) {
    std::string_view part = part_text;
    int step = 1;
    std::string_view range = part;
    if (size_t slash = part.find('/'); slash != std::string_view::npos) {
      range = part.substr(0, slash);
      if (!absl::SimpleAtoi(std::string(part.substr(slash + 1)), &step) || step < 1) {
        return absl::InvalidArgumentError(
            fmt::format("{}: bad step in \"{}\"", f.name, std::string(part)));
      }
    }
    int lo = f.min, hi = f.max;
    if (range != "*") {
      size_t dash = range.find('-');
      auto first = ParseValue(f, range.substr(0, dash));
      if (!first.ok()) return first.status();
      lo = hi = *first;
      if (dash != std::string_view::npos) {
        auto last = ParseValue(f, range.substr(dash + 1));
        if (!last.ok()) return last.status();
        hi = *last;
        if (f.max == 6 && hi == 0 && lo > 0) hi = 6;  // "fri-7" / "fri-sun"
        if (hi < lo) {
          return absl::InvalidArgumentError(
              fmt::format("{}: range \"{}\" runs backwards", f.name, std::string(range)));
        }
      } else if (step > 1) {
        hi = f.max;  // "5/15" means 5, 20, 35, 50
      }
    }
    for (int v = lo; v <= hi; v += step) bits.set(v);
  }
  return absl::OkStatus();
}

// The instant a wall-clock time in `tz` happens: the transition for a time
// skipped by DST, the first occurrence for a repeated one.
absl::Time At(absl::TimeZone tz, absl::CivilMinute civil) {
  absl::TimeZone::TimeInfo info = tz.At(civil);
  switch (info.kind) {
    case absl::TimeZone::TimeInfo::SKIPPED:
      return info.trans;
    default:
      return info.pre;
  }
}

}  // namespace

absl::StatusOr<CronExpression> ParseCron(const std::string& text) {
  std::vector<std::string> fields = absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (fields.size() != 5) {
    return absl::InvalidArgumentError(fmt::format(
        "a cron expression has 5 fields (minute hour day-of-month month day-of-week); \"{}\" "
        "has {}",
        text, fields.size()));
  }
  static constexpr FieldSpec kMinute{"minute", 0, 59, nullptr};
  static constexpr FieldSpec kHour{"hour", 0, 23, nullptr};
  static constexpr FieldSpec kDay{"day-of-month", 1, 31, nullptr};
  static constexpr FieldSpec kMonth{"month", 1, 12, kMonthNames};
  static constexpr FieldSpec kWeekday{"day-of-week", 0, 6, kDayNames};
  CronExpression c;
  bool unused;
  absl::Status s = ParseField(kMinute, fields[0], c.minutes, unused);
  if (s.ok()) s = ParseField(kHour, fields[1], c.hours, unused);
  if (s.ok()) s = ParseField(kDay, fields[2], c.days_of_month, c.day_of_month_restricted);
  if (s.ok()) s = ParseField(kMonth, fields[3], c.months, unused);
  if (s.ok()) s = ParseField(kWeekday, fields[4], c.days_of_week, c.day_of_week_restricted);
  if (!s.ok()) return s;
  // "0 0 30 2 *" parses but never runs.
  if (!NextCronTick(c, absl::UTCTimeZone(), absl::FromUnixSeconds(0)).ok()) {
    return absl::InvalidArgumentError(fmt::format("\"{}\" never matches a date", text));
  }
  return c;
}

absl::StatusOr<absl::TimeZone> LoadScheduleTimeZone(const std::string& name) {
  absl::TimeZone tz;
  if (!absl::LoadTimeZone(name, &tz)) {
    return absl::InvalidArgumentError(fmt::format(
        "unknown time zone \"{}\"; use an IANA name such as Europe/Paris or America/New_York",
        name));
  }
  return tz;
}

absl::Time NextIntervalTick(absl::Duration interval, absl::Time after) {
  absl::Duration since_epoch = after - absl::UnixEpoch();
  int64_t ticks = absl::IDivDuration(since_epoch, interval, &since_epoch);
  return absl::UnixEpoch() + (ticks + 1) * interval;
}

absl::StatusOr<absl::Time> NextWeeklyTick(const std::bitset<7>& weekdays, int hour,
                                          absl::TimeZone tz, absl::Time after) {
  CronExpression c;
  c.minutes.set(0);
  c.hours.set(hour);
  c.days_of_month.set();
  c.months.set();
  c.days_of_week = weekdays;
  c.day_of_week_restricted = true;
  return NextCronTick(c, tz, after);
}

absl::StatusOr<absl::Time> NextCronTick(const CronExpression& cron, absl::TimeZone tz,
                                        absl::Time after) {
  absl::CivilDay day = absl::ToCivilDay(after, tz);
  for (int i = 0; i < kSearchDays; ++i, ++day) {
    if (!cron.months.test(day.month())) continue;
    bool dom = cron.days_of_month.test(day.day());
    bool dow = cron.days_of_week.test(static_cast<int>(absl::GetWeekday(day)) == 6
                                          ? 0
                                          : static_cast<int>(absl::GetWeekday(day)) + 1);
    bool match =
        cron.day_of_month_restricted && cron.day_of_week_restricted ? (dom || dow) : (dom && dow);
    if (!match) continue;
    for (int h = 0; h < 24; ++h) {
      if (!cron.hours.test(h)) continue;
      for (int m = 0; m < 60; ++m) {
        if (!cron.minutes.test(m)) continue;
        absl::CivilMinute civil(day.year(), day.month(), day.day(), h, m);
        absl::Time t = At(tz, civil);
        // A repeated wall time (DST fall-back) maps to its first instant; a
        // later civil minute can map to an earlier instant only inside the
        // repeated hour, so strictly-after keeps each run once.
        if (t > after) return t;
      }
    }
  }
  return absl::NotFoundError("the schedule has no run in the next 5 years");
}

}  // namespace backflow
