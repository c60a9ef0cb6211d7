#include "backflow/common/civil_date.h"

namespace backflow {

// Eras are 400-year cycles of 146097 days starting on 0000-03-01; day 719468
// of era 0 is 1970-01-01.
int64_t DaysFromCivil(int64_t year, int64_t month, int64_t day) {
  year -= month <= 2;
  const int64_t era = (year >= 0 ? year : year - 399) / 400;
  const int64_t yoe = year - era * 400;                                               // [0, 399]
  const int64_t doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;  // [0, 365]
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;                          // [0, 146096]
  return era * 146097 + doe - 719468;
}

CivilDate CivilFromDays(int64_t days) {
  const int64_t z = days + 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t doe = z - era * 146097;                                       // [0, 146096]
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;  // [0, 399]
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);                // [0, 365]
  const int64_t mp = (5 * doy + 2) / 153;                                     // [0, 11]
  CivilDate out;
  out.day = doy - (153 * mp + 2) / 5 + 1;
  out.month = mp < 10 ? mp + 3 : mp - 9;
  out.year = yoe + era * 400 + (out.month <= 2 ? 1 : 0);
  return out;
}

std::optional<int64_t> FixedDigits(std::string_view s, size_t pos, size_t n) {
  if (pos > s.size() || n > s.size() - pos) return std::nullopt;
  int64_t v = 0;
  for (size_t i = pos; i < pos + n; ++i) {
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
    v = v * 10 + (s[i] - '0');
  }
  return v;
}

std::optional<IsoInstant> ParseIsoInstant(std::string_view s) {
  auto trim = [&] {
    while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
    while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  };
  // Reads the n-digit field at the front into `out`.
  auto field = [&](size_t n, int64_t& out) {
    std::optional<int64_t> v = FixedDigits(s, 0, n);
    if (!v) return false;
    out = *v;
    s.remove_prefix(n);
    return true;
  };
  auto take = [&](char c) {
    if (s.empty() || s.front() != c) return false;
    s.remove_prefix(1);
    return true;
  };
  trim();
  int64_t year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0, offset = 0;
  IsoInstant out;
  if (!field(4, year) || !take('-') || !field(2, month) || !take('-') || !field(2, day)) {
    return std::nullopt;
  }
  if (month < 1 || month > 12 || day < 1 || day > 31) return std::nullopt;
  if (take('T') || take('t') || take(' ')) {
    out.has_time = true;
    if (!field(2, hour) || !take(':') || !field(2, minute)) return std::nullopt;
    if (take(':')) {
      if (!field(2, second)) return std::nullopt;
      if (take('.') || take(',')) {
        int digits = 0;
        for (; !s.empty() && s.front() >= '0' && s.front() <= '9'; s.remove_prefix(1), ++digits) {
          if (digits < 6) out.micros = out.micros * 10 + (s.front() - '0');
        }
        if (digits == 0) return std::nullopt;
        for (int i = digits; i < 6; ++i) out.micros *= 10;
      }
    }
    if (hour > 23 || minute > 59 || second > 60) return std::nullopt;
    trim();
    if (s == "Z" || s == "z" || s == "UTC" || s == "GMT") {
      s = {};
    } else if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
      const int64_t sign = s.front() == '-' ? -1 : 1;
      s.remove_prefix(1);
      int64_t oh = 0, om = 0;
      if (!field(2, oh)) return std::nullopt;
      take(':');
      if (!s.empty() && !field(2, om)) return std::nullopt;
      if (oh > 23 || om > 59) return std::nullopt;
      offset = sign * (oh * 3600 + om * 60);
    }
  }
  if (!s.empty()) return std::nullopt;
  out.seconds =
      DaysFromCivil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset;
  return out;
}

}  // namespace backflow
