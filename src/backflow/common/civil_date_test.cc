#include "backflow/common/civil_date.h"

#include <gtest/gtest.h>

#include <optional>
#include <string_view>
#include <utility>

namespace backflow {
namespace {

void ExpectDate(int64_t days, int64_t y, int64_t m, int64_t d) {
  CivilDate c = CivilFromDays(days);
  EXPECT_EQ(c.year, y) << days;
  EXPECT_EQ(c.month, m) << days;
  EXPECT_EQ(c.day, d) << days;
  EXPECT_EQ(DaysFromCivil(y, m, d), days);
}

TEST(CivilDateTest, KnownDates) {
  ExpectDate(0, 1970, 1, 1);
  ExpectDate(-1, 1969, 12, 31);
  ExpectDate(59, 1970, 3, 1);
  ExpectDate(10957, 2000, 1, 1);
  ExpectDate(11017, 2000, 3, 1);  // 2000 is a leap year
  ExpectDate(19782, 2024, 2, 29);
  ExpectDate(19889, 2024, 6, 15);
  ExpectDate(-141427, 1582, 10, 15);  // proleptic: no Julian switch
  ExpectDate(-719528, 0, 1, 1);
  ExpectDate(-719529, -1, 12, 31);
  ExpectDate(2932896, 9999, 12, 31);
  ExpectDate(-4371587, -9999, 1, 1);
}

TEST(CivilDateTest, DaysOutsideTheMonthCountOn) {
  EXPECT_EQ(DaysFromCivil(2023, 2, 29), DaysFromCivil(2023, 3, 1));
  EXPECT_EQ(DaysFromCivil(2024, 2, 30), DaysFromCivil(2024, 3, 1));
  EXPECT_EQ(DaysFromCivil(2000, 3, 0), DaysFromCivil(2000, 2, 29));
  EXPECT_EQ(DaysFromCivil(1970, 1, 0), -1);
}

TEST(CivilDateTest, RoundTripsEveryDayOfEightHundredYearsAndIsMonotonic) {
  CivilDate prev = CivilFromDays(-146097 * 2 - 1);
  for (int64_t days = -146097 * 2; days <= 146097 * 2; ++days) {
    CivilDate c = CivilFromDays(days);
    ASSERT_EQ(DaysFromCivil(c.year, c.month, c.day), days);
    ASSERT_GE(c.month, 1);
    ASSERT_LE(c.month, 12);
    ASSERT_GE(c.day, 1);
    ASSERT_LE(c.day, 31);
    // Each day follows the one before: the next day, or the first of the next month/year.
    bool next_day = c.year == prev.year && c.month == prev.month && c.day == prev.day + 1;
    bool next_month = c.year == prev.year && c.month == prev.month + 1 && c.day == 1;
    bool next_year = c.year == prev.year + 1 && c.month == 1 && prev.month == 12 && c.day == 1;
    ASSERT_TRUE(next_day || next_month || next_year) << days;
    prev = c;
  }
}

TEST(CivilDateTest, FixedDigitsReadsExactlyTheFieldOrNothing) {
  constexpr std::string_view kText = "2024-06-01T08:05";
  EXPECT_EQ(FixedDigits(kText, 0, 4), 2024);
  EXPECT_EQ(FixedDigits(kText, 5, 2), 6);
  EXPECT_EQ(FixedDigits(kText, 14, 2), 5);
  EXPECT_EQ(FixedDigits(kText, 0, 0), 0);
  EXPECT_EQ(FixedDigits(kText, 0, 5), std::nullopt);   // '-' is not a digit
  EXPECT_EQ(FixedDigits(kText, 15, 2), std::nullopt);  // past the end
  EXPECT_EQ(FixedDigits(kText, 40, 1), std::nullopt);
  EXPECT_EQ(FixedDigits("+1", 0, 2), std::nullopt);
  EXPECT_EQ(FixedDigits(" 1", 0, 2), std::nullopt);
  EXPECT_EQ(FixedDigits("999999999999999999", 0, 18), 999999999999999999);
}

// Seconds and microseconds of `text`, or {-1, -1} when it is refused.
std::pair<int64_t, int64_t> Instant(std::string_view text) {
  std::optional<IsoInstant> t = ParseIsoInstant(text);
  if (!t) return {-1, -1};
  return {t->seconds, t->micros};
}

TEST(CivilDateTest, ParseIsoInstantReadsDatesTimesFractionsAndZones) {
  constexpr int64_t kDay = 1767312000;  // 2026-01-02T00:00:00Z
  EXPECT_EQ(Instant("2026-01-02"), std::make_pair(kDay, int64_t{0}));
  EXPECT_FALSE(ParseIsoInstant("2026-01-02")->has_time);
  EXPECT_TRUE(ParseIsoInstant("2026-01-02T00:00")->has_time);
  EXPECT_EQ(Instant("2026-01-02T03:04:05Z").first, kDay + 11045);
  EXPECT_EQ(Instant("2026-01-02t03:04:05z").first, kDay + 11045);
  EXPECT_EQ(Instant("2026-01-02 03:04:05").first, kDay + 11045);  // no zone: UTC
  EXPECT_EQ(Instant("2026-01-02T03:04").first, kDay + 11040);
  EXPECT_EQ(Instant("  2026-01-02T03:04:05 UTC "), std::make_pair(kDay + 11045, int64_t{0}));
  EXPECT_EQ(Instant("2026-01-02T03:04:05GMT").first, kDay + 11045);
  // Offsets: +HH:MM, +HHMM, +HH, a space before them.
  EXPECT_EQ(Instant("2026-01-02T05:04:05+02:00").first, kDay + 11045);
  EXPECT_EQ(Instant("2026-01-02T05:34:05+0230").first, kDay + 11045);
  EXPECT_EQ(Instant("2026-01-02T03:04:05 +00").first, kDay + 11045);
  EXPECT_EQ(Instant("2026-01-01T23:04:05-04:00").first, kDay + 11045);
  // Fractions: up to six digits kept, the rest dropped; a comma works too.
  EXPECT_EQ(Instant("2026-01-02T03:04:05.25Z"), std::make_pair(kDay + 11045, int64_t{250000}));
  EXPECT_EQ(Instant("2026-01-02T03:04:05,1234567"), std::make_pair(kDay + 11045, int64_t{123456}));
  // Before 1970, a leap second, a day past the month's end.
  EXPECT_EQ(Instant("1969-12-31T23:59:59Z").first, -1);
  EXPECT_EQ(Instant("2016-12-31T23:59:60Z").first, 1483228800);
  EXPECT_EQ(Instant("2024-02-30").first, Instant("2024-03-01").first);
}

TEST(CivilDateTest, ParseIsoInstantRefusesEverythingElse) {
  for (std::string_view bad : {"",
                               "soon",
                               "2026-1-02",
                               "2026-01-2",
                               "2026/01/02",
                               "2026-13-02",
                               "2026-00-02",
                               "2026-01-32",
                               "2026-01-00",
                               "2026-01-02T",
                               "2026-01-02T3:04",
                               "2026-01-02T03",
                               "2026-01-02T24:00",
                               "2026-01-02T03:60",
                               "2026-01-02T03:04:61",
                               "2026-01-02T03:04:05.",
                               "2026-01-02T03:04:05+",
                               "2026-01-02T03:04:05+2",
                               "2026-01-02T03:04:05+24:00",
                               "2026-01-02T03:04:05+01:60",
                               "2026-01-02T03:04:05Zed",
                               "2026-01-02T03:04:05 EST",
                               "2026-01-02X03:04",
                               "2026-01-02 garbage",
                               "20260102"}) {
    EXPECT_FALSE(ParseIsoInstant(bad).has_value()) << bad;
  }
}

}  // namespace
}  // namespace backflow
