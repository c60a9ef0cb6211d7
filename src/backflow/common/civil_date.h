// Conversions between days since 1970-01-01 and dates of the proleptic
// Gregorian calendar (H. Hinnant's days_from_civil / civil_from_days), exact
// for every int64 day count a date's year fits, reading the fixed-width
// number fields of date and time text, and reading ISO-8601 instants. Pure
// and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace backflow {

struct CivilDate {
  int64_t year = 1970;
  int64_t month = 1;  // 1..12
  int64_t day = 1;    // 1..31
};

// Days since 1970-01-01 of year-month-day (negative before it). Expects
// month 1..12; a day outside the month counts on from its first day
// (2024-02-30 is 2024-03-01, day 0 the last day of the month before).
int64_t DaysFromCivil(int64_t year, int64_t month, int64_t day);

// The date `days` after 1970-01-01; the inverse of DaysFromCivil.
CivilDate CivilFromDays(int64_t days);

// The number written by the `n` ASCII digits s[pos, pos + n) ("2024" at 0
// of "2024-06-01" is 2024); nullopt when s is shorter or one of them is not
// a digit. n at most 18.
std::optional<int64_t> FixedDigits(std::string_view s, size_t pos, size_t n);

// An instant read by ParseIsoInstant.
struct IsoInstant {
  int64_t seconds = 0;    // since 1970-01-01T00:00:00Z
  int64_t micros = 0;     // 0..999999: the fraction's first six digits
  bool has_time = false;  // a time of day was given (else midnight UTC)
};

// Reads an ISO-8601 date or date-time, the one reader of them every
// connector shares:
//   YYYY-MM-DD[(T|t| )HH:MM[:SS[(.|,)DIGITS]][ ][Z|z|UTC|GMT|(+|-)HH[[:]MM]]]
// with spaces allowed around the whole. No zone means UTC; digits of the
// fraction past the sixth are dropped (not rounded). nullopt for any other
// text or a field out of range: month 1..12, day 1..31 (a day past the
// month's end counts on, as DaysFromCivil), hour 0..23, minute 0..59,
// second 0..60, zone offset up to 23:59.
std::optional<IsoInstant> ParseIsoInstant(std::string_view text);

}  // namespace backflow
