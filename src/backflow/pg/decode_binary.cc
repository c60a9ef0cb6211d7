#include "backflow/pg/decode_binary.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>

#include "absl/time/civil_time.h"
#include "backflow/common/status_macros.h"
#include "backflow/pg/connection.h"
#include "backflow/pg/types.h"
#include "fmt/format.h"

namespace backflow::pg {
namespace {

constexpr int64_t kMicrosPerSecond = 1000000;
constexpr int64_t kMicrosPerDay = 86400 * kMicrosPerSecond;

// Unsigned views of the network-order integers (FromBinaryInt sign-extends).
uint16_t ReadUint16(const char* p) { return static_cast<uint16_t>(FromBinaryInt(p, 2)); }
uint32_t ReadUint32(const char* p) { return static_cast<uint32_t>(FromBinaryInt(p, 4)); }
uint64_t ReadUint64(const char* p) { return static_cast<uint64_t>(FromBinaryInt(p, 8)); }

absl::Status BadValue(Oid oid, std::string_view bytes, std::string_view why) {
  return absl::DataLossError(fmt::format(
      "PostgreSQL sent a binary {} value that is not valid ({} bytes: {}); read the model with "
      "`copy_format: text` and report this",
      TypeNameForOid(oid, -1), bytes.size(), why));
}

absl::Status WrongSize(Oid oid, std::string_view bytes, size_t want) {
  return BadValue(oid, bytes, fmt::format("expected {}", want));
}

// Appends `value` as exactly `width` decimal digits (value < 10^width).
void AppendDigits(std::string& out, uint64_t value, int width) {
  char buf[20];
  for (int i = width - 1; i >= 0; --i) {
    buf[i] = static_cast<char>('0' + value % 10);
    value /= 10;
  }
  out.append(buf, width);
}

// Appends `value` in decimal, zero-padded to at least `width` digits.
void AppendPadded(std::string& out, int64_t value, int width) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  (void)ec;
  for (int pad = width - static_cast<int>(end - buf); pad > 0; --pad) out.push_back('0');
  out.append(buf, end);
}

char* Put2(char* p, int v) {
  p[0] = static_cast<char>('0' + v / 10);
  p[1] = static_cast<char>('0' + v % 10);
  return p + 2;
}

char* Put4(char* p, int v) {
  p = Put2(p, v / 100);
  return Put2(p, v % 100);
}

// The civil date `days` after 2000-01-01 (astronomical year: 0 is 1 BC);
// the last one is cached per thread, as a column's dates often repeat.
absl::CivilDay DayAfter2000(int64_t days) {
  thread_local int64_t cached_days = 0;
  thread_local absl::CivilDay cached(2000, 1, 1);
  if (days != cached_days) {
    cached = absl::CivilDay(2000, 1, 1) + days;
    cached_days = days;
  }
  return cached;
}

Value Double(double d) {
  // One NaN whatever the sign and payload the server's bits have, as the
  // text path gives.
  if (std::isnan(d)) return Value::Double(std::numeric_limits<double>::quiet_NaN());
  return Value::Double(d);
}

// A positive decimal number held exactly: 0.d1d2d3... × 10^exponent, digits
// without trailing zeros (never empty).
struct Decimal {
  std::string digits;
  int exponent = 0;
};

// From printf's "%.*e" text ("4.6597128e+07"), which glibc writes exactly.
Decimal DecimalFromScientific(std::string_view text) {
  Decimal out;
  const size_t e = text.find('e');
  for (char c : text.substr(0, e)) {
    if (c >= '0' && c <= '9') out.digits.push_back(c);
  }
  int exponent = 0;
  std::from_chars(text.data() + e + 1 + (text[e + 1] == '+'), text.data() + text.size(), exponent);
  out.exponent = exponent + 1;
  while (out.digits.size() > 1 && out.digits.back() == '0') out.digits.pop_back();
  return out;
}

// The exact decimal value of a positive double.
Decimal ExactDecimal(double d) {
  char buf[160];
  int n = std::snprintf(buf, sizeof(buf), "%.119e", d);
  return DecimalFromScientific(std::string_view(buf, n));
}

int Compare(const Decimal& a, const Decimal& b) {
  if (a.exponent != b.exponent) return a.exponent < b.exponent ? -1 : 1;
  const size_t n = std::max(a.digits.size(), b.digits.size());
  for (size_t i = 0; i < n; ++i) {
    char x = i < a.digits.size() ? a.digits[i] : '0';
    char y = i < b.digits.size() ? b.digits[i] : '0';
    if (x != y) return x < y ? -1 : 1;
  }
  return 0;
}

// The integer `mantissa` × 10^`power` (mantissa > 0).
Decimal DecimalOf(int64_t mantissa, int power) {
  Decimal out;
  out.digits = std::to_string(mantissa);
  out.exponent = static_cast<int>(out.digits.size()) + power;
  while (out.digits.size() > 1 && out.digits.back() == '0') out.digits.pop_back();
  return out;
}

double ParseDecimal(const Decimal& d) {
  std::string text = "0." + d.digits + "e" + std::to_string(d.exponent);
  double out = 0;
  std::from_chars(text.data(), text.data() + text.size(), out);
  return out;
}

// PostgreSQL 12+ prints a float4 as the shortest decimal strictly inside the
// interval of reals that round to it (its Ryu never accepts an interval
// bound, even where round-half-even would map the bound to the float),
// picking the closest such decimal. Returns that decimal's double for a
// positive finite `f`.
double ShortestFloat4Text(float f) {
  // Bounds of the interval, exact in double (25 significant bits).
  const double value = f;
  const double below = std::nextafter(f, 0.0f);
  const double lo = (below + value) / 2;
  const double hi = f == std::numeric_limits<float>::max()
                        ? value + (value - below) / 2
                        : (value + static_cast<double>(
                                       std::nextafter(f, std::numeric_limits<float>::infinity()))) /
                              2;
  // Fast path: the C++ library's shortest form (Ryu), scientific so that it
  // is the shortest digits, differs from PostgreSQL's only when it is one of
  // the bounds (then its double is that bound exactly).
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), f, std::chars_format::scientific);
  double shortest = 0;
  if (ec == std::errc()) std::from_chars(buf, end, shortest);
  if (ec == std::errc() && shortest != lo && shortest != hi) return shortest;
  // Exact search: for each length, the nearest decimal of that length, then
  // its neighbour on the other side of the value.
  const Decimal exact = ExactDecimal(value);
  const Decimal lo_exact = ExactDecimal(lo);
  const Decimal hi_exact = ExactDecimal(hi);
  auto inside = [&](const Decimal& d) {
    return Compare(lo_exact, d) < 0 && Compare(d, hi_exact) < 0;
  };
  for (int length = 1; length <= 9; ++length) {
    int n = std::snprintf(buf, sizeof(buf), "%.*e", length - 1, value);
    const Decimal nearest = DecimalFromScientific(std::string_view(buf, n));
    if (inside(nearest)) return ParseDecimal(nearest);
    int64_t mantissa = 0;
    for (char c : nearest.digits) mantissa = mantissa * 10 + (c - '0');
    for (size_t i = nearest.digits.size(); i < static_cast<size_t>(length); ++i) mantissa *= 10;
    const int power = nearest.exponent - length;
    const int side = Compare(nearest, exact);
    const int64_t other = mantissa - side;
    if (other > 0) {
      const Decimal neighbour = DecimalOf(other, power);
      if (inside(neighbour)) return ParseDecimal(neighbour);
    }
  }
  return value;  // unreachable: nine digits always fall strictly inside
}

// float4: what parsing PostgreSQL's shortest text of the float gives.
Value Float4(float f) {
  if (std::isnan(f)) return Value::Double(std::numeric_limits<double>::quiet_NaN());
  if (std::isinf(f) || f == 0) return Value::Double(f);
  const double magnitude = ShortestFloat4Text(std::fabs(f));
  return Value::Double(f < 0 ? -magnitude : magnitude);
}

// A binary numeric, its header and digits checked: an int16 digit count,
// int16 weight (of the first base-10000 digit), uint16 sign and int16 display
// scale, then the digits.
struct BinaryNumeric {
  std::string_view special;  // "NaN", "Infinity" or "-Infinity"; empty for a number
  std::string_view digits;   // 2 bytes per base-10000 digit
  int ndigits = 0;
  int weight = 0;
  int dscale = 0;
  bool negative = false;

  int digit(int i) const {
    if (i < 0 || i >= ndigits) return 0;
    return ReadUint16(digits.data() + 2 * i);
  }
  // The most bytes WriteText() writes.
  size_t max_text() const {
    return 2 + 4 * (static_cast<size_t>(std::max(weight, 0)) + 1) + 1 +
           static_cast<size_t>(dscale) + 4;
  }
  // Writes PostgreSQL's text of the number at `p` (room for max_text()) and
  // returns its end.
  char* WriteText(char* p) const {
    if (negative) *p++ = '-';
    // The integer part: base-10000 digit i stands for 10000^(weight - i).
    if (weight < 0) {
      *p++ = '0';
    } else {
      const int first = digit(0);
      if (first >= 1000) *p++ = static_cast<char>('0' + first / 1000);
      if (first >= 100) *p++ = static_cast<char>('0' + first / 100 % 10);
      if (first >= 10) *p++ = static_cast<char>('0' + first / 10 % 10);
      *p++ = static_cast<char>('0' + first % 10);
      for (int i = 1; i <= weight; ++i) p = Put4(p, digit(i));
    }
    if (dscale > 0) {
      *p++ = '.';
      char* const end = p + dscale;
      for (int i = weight + 1; p < end; ++i) p = Put4(p, digit(i));
      p = end;
    }
    return p;
  }
};

absl::StatusOr<BinaryNumeric> ParseNumeric(std::string_view bytes) {
  if (bytes.size() < 8) return WrongSize(kNumericOid, bytes, 8);
  BinaryNumeric n;
  n.ndigits = static_cast<int16_t>(ReadUint16(bytes.data()));
  n.weight = static_cast<int16_t>(ReadUint16(bytes.data() + 2));
  const uint16_t sign = ReadUint16(bytes.data() + 4);
  n.dscale = static_cast<int16_t>(ReadUint16(bytes.data() + 6));
  switch (sign) {
    case 0xC000:
      n.special = "NaN";
      return n;
    case 0xD000:
      n.special = "Infinity";
      return n;
    case 0xF000:
      n.special = "-Infinity";
      return n;
    case 0x0000:
    case 0x4000:
      break;
    default:
      return BadValue(kNumericOid, bytes, fmt::format("sign {:#x}", sign));
  }
  if (n.ndigits < 0 || n.dscale < 0 || bytes.size() != 8 + 2 * static_cast<size_t>(n.ndigits)) {
    return BadValue(kNumericOid, bytes, fmt::format("{} digits, scale {}", n.ndigits, n.dscale));
  }
  n.negative = sign == 0x4000;
  n.digits = bytes.substr(8);
  for (int i = 0; i < n.ndigits; ++i) {
    if (n.digit(i) > 9999) return BadValue(kNumericOid, bytes, "a digit above 9999");
  }
  return n;
}

absl::Status Numeric(std::string_view bytes, Value& value) {
  BACKFLOW_ASSIGN_OR_RETURN(const BinaryNumeric n, ParseNumeric(bytes));
  if (!n.special.empty()) {
    value.SetText(ValueType::kString, n.special);
    return absl::OkStatus();
  }
  // Sized for the worst case, written through a pointer, trimmed after.
  std::string& out = value.MutableText(ValueType::kDecimal);
  out.resize(n.max_text());
  out.resize(static_cast<size_t>(n.WriteText(out.data()) - out.data()));
  return absl::OkStatus();
}

// PostgreSQL's ISO text of a date (astronomical `year`: 0 is 1 BC).
void AppendPgDate(std::string& out, int64_t year, int month, int day) {
  AppendPadded(out, year > 0 ? year : 1 - year, 4);
  out.push_back('-');
  AppendDigits(out, month, 2);
  out.push_back('-');
  AppendDigits(out, day, 2);
}

void Date(int32_t days, Value& value) {
  if (days == std::numeric_limits<int32_t>::min())
    return value.SetText(ValueType::kString, "-infinity");
  if (days == std::numeric_limits<int32_t>::max())
    return value.SetText(ValueType::kString, "infinity");
  const absl::CivilDay day = DayAfter2000(days);
  const bool iso = day.year() >= 1 && day.year() <= 9999;
  std::string& out = value.MutableText(iso ? ValueType::kDate : ValueType::kString);
  AppendPgDate(out, day.year(), day.month(), day.day());
  if (day.year() < 1) out += " BC";
}

// Days since 2000-01-01 and microseconds into that day.
struct DayAndTime {
  int64_t days;
  int64_t second_of_day;
  int fraction;  // microseconds
};

DayAndTime Split(int64_t micros) {
  int64_t days = micros / kMicrosPerDay;
  int64_t rest = micros % kMicrosPerDay;
  if (rest < 0) {
    rest += kMicrosPerDay;
    --days;
  }
  return {days, rest / kMicrosPerSecond, static_cast<int>(rest % kMicrosPerSecond)};
}

// The kTimestamp text of a finite timestamp in years 1..9999,
// "YYYY-MM-DDTHH:MM:SS[.ffffff][Z]", written into `buf` (40 bytes); empty
// for any other timestamp.
std::string_view IsoTimestamp(int64_t micros, bool with_zone, char* buf) {
  if (micros == std::numeric_limits<int64_t>::min() ||
      micros == std::numeric_limits<int64_t>::max()) {
    return {};
  }
  const DayAndTime t = Split(micros);
  const absl::CivilDay day = DayAfter2000(t.days);
  if (day.year() < 1 || day.year() > 9999) return {};
  char* p = Put4(buf, static_cast<int>(day.year()));
  *p++ = '-';
  p = Put2(p, day.month());
  *p++ = '-';
  p = Put2(p, day.day());
  *p++ = 'T';
  p = Put2(p, static_cast<int>(t.second_of_day / 3600));
  *p++ = ':';
  p = Put2(p, static_cast<int>(t.second_of_day / 60 % 60));
  *p++ = ':';
  p = Put2(p, static_cast<int>(t.second_of_day % 60));
  if (t.fraction != 0) {
    *p++ = '.';
    p = Put2(p, t.fraction / 10000);
    p = Put4(p, t.fraction % 10000);
    while (p[-1] == '0') --p;
  }
  if (with_zone) *p++ = 'Z';
  return std::string_view(buf, static_cast<size_t>(p - buf));
}

void Timestamp(int64_t micros, bool with_zone, Value& value) {
  char buf[40];
  if (std::string_view iso = IsoTimestamp(micros, with_zone, buf); !iso.empty()) {
    return value.SetText(ValueType::kTimestamp, iso);
  }
  if (micros == std::numeric_limits<int64_t>::min())
    return value.SetText(ValueType::kString, "-infinity");
  if (micros == std::numeric_limits<int64_t>::max())
    return value.SetText(ValueType::kString, "infinity");
  const DayAndTime t = Split(micros);
  const absl::CivilDay day = DayAfter2000(t.days);
  const int64_t second_of_day = t.second_of_day;
  const int fraction = t.fraction;
  // PostgreSQL's own text, as the text path keeps it.
  std::string& out = value.MutableText(ValueType::kString);
  AppendPgDate(out, day.year(), day.month(), day.day());
  out.push_back(' ');
  AppendDigits(out, second_of_day / 3600, 2);
  out.push_back(':');
  AppendDigits(out, second_of_day / 60 % 60, 2);
  out.push_back(':');
  AppendDigits(out, second_of_day % 60, 2);
  if (fraction != 0) {
    out.push_back('.');
    AppendDigits(out, fraction, 6);
    while (out.back() == '0') out.pop_back();
  }
  if (with_zone) out += "+00";
  if (day.year() < 1) out += " BC";
}

Value Uuid(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    const auto b = static_cast<unsigned char>(bytes[i]);
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return Value::String(std::move(out));
}

}  // namespace

bool HasBinaryDecoder(Oid oid) {
  switch (oid) {
    case kBoolOid:
    case kInt2Oid:
    case kInt4Oid:
    case kInt8Oid:
    case kFloat4Oid:
    case kFloat8Oid:
    case kNumericOid:
    case kTextOid:
    case kVarcharOid:
    case kBpcharOid:
    case kNameOid:
    case kUuidOid:
    case kDateOid:
    case kTimestampOid:
    case kTimestamptzOid:
    case kJsonOid:
    case kJsonbOid:
    case kByteaOid:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<Value> DecodeBinary(Oid oid, std::string_view bytes) {
  Value value;
  if (absl::Status decoded = DecodeBinaryInto(oid, bytes, value); !decoded.ok()) return decoded;
  return value;
}

absl::Status DecodeBinaryInto(Oid oid, std::string_view bytes, Value& out) {
  switch (oid) {
    case kBoolOid:
      if (bytes.size() != 1) return WrongSize(oid, bytes, 1);
      out.SetBool(bytes[0] != 0);
      return absl::OkStatus();
    case kInt2Oid:
      if (bytes.size() != 2) return WrongSize(oid, bytes, 2);
      out.SetInt64(static_cast<int16_t>(ReadUint16(bytes.data())));
      return absl::OkStatus();
    case kInt4Oid:
      if (bytes.size() != 4) return WrongSize(oid, bytes, 4);
      out.SetInt64(static_cast<int32_t>(ReadUint32(bytes.data())));
      return absl::OkStatus();
    case kInt8Oid:
      if (bytes.size() != 8) return WrongSize(oid, bytes, 8);
      out.SetInt64(static_cast<int64_t>(ReadUint64(bytes.data())));
      return absl::OkStatus();
    case kFloat4Oid:
      if (bytes.size() != 4) return WrongSize(oid, bytes, 4);
      out = Float4(std::bit_cast<float>(ReadUint32(bytes.data())));
      return absl::OkStatus();
    case kFloat8Oid:
      if (bytes.size() != 8) return WrongSize(oid, bytes, 8);
      out = Double(std::bit_cast<double>(ReadUint64(bytes.data())));
      return absl::OkStatus();
    case kNumericOid:
      return Numeric(bytes, out);
    case kTextOid:
    case kVarcharOid:
    case kBpcharOid:
    case kNameOid:
      out.SetText(ValueType::kString, bytes);
      return absl::OkStatus();
    case kUuidOid:
      if (bytes.size() != 16) return WrongSize(oid, bytes, 16);
      out = Uuid(bytes);
      return absl::OkStatus();
    case kDateOid:
      if (bytes.size() != 4) return WrongSize(oid, bytes, 4);
      Date(static_cast<int32_t>(ReadUint32(bytes.data())), out);
      return absl::OkStatus();
    case kTimestampOid:
    case kTimestamptzOid:
      if (bytes.size() != 8) return WrongSize(oid, bytes, 8);
      Timestamp(static_cast<int64_t>(ReadUint64(bytes.data())), oid == kTimestamptzOid, out);
      return absl::OkStatus();
    case kJsonOid:
      out = Value::Text(ValueType::kJson, CompactJson(bytes));
      return absl::OkStatus();
    case kJsonbOid:
      if (bytes.empty() || bytes[0] != 1) return BadValue(oid, bytes, "not jsonb version 1");
      out = Value::Text(ValueType::kJson, CompactJson(bytes.substr(1)));
      return absl::OkStatus();
    case kByteaOid:
      out.SetText(ValueType::kBytes, bytes);
      return absl::OkStatus();
    default:
      return absl::InternalError(
          fmt::format("no binary decoder for PostgreSQL type oid {} (a bug: such columns are "
                      "read in text form)",
                      oid));
  }
}

absl::Status AppendBinaryEncoded(Oid oid, std::string_view bytes, Value& scratch, RowEncoder& out) {
  switch (oid) {
    case kBoolOid:
      if (bytes.size() != 1) return WrongSize(oid, bytes, 1);
      out.AppendInt(ValueType::kBool, bytes[0] != 0);
      return absl::OkStatus();
    case kInt2Oid:
      if (bytes.size() != 2) return WrongSize(oid, bytes, 2);
      out.AppendInt(ValueType::kInt64, static_cast<int16_t>(ReadUint16(bytes.data())));
      return absl::OkStatus();
    case kInt4Oid:
      if (bytes.size() != 4) return WrongSize(oid, bytes, 4);
      out.AppendInt(ValueType::kInt64, static_cast<int32_t>(ReadUint32(bytes.data())));
      return absl::OkStatus();
    case kInt8Oid:
      if (bytes.size() != 8) return WrongSize(oid, bytes, 8);
      out.AppendInt(ValueType::kInt64, static_cast<int64_t>(ReadUint64(bytes.data())));
      return absl::OkStatus();
    case kTextOid:
    case kVarcharOid:
    case kBpcharOid:
    case kNameOid:
      out.AppendText(ValueType::kString, bytes);
      return absl::OkStatus();
    case kByteaOid:
      out.AppendText(ValueType::kBytes, bytes);
      return absl::OkStatus();
    case kNumericOid: {
      BACKFLOW_ASSIGN_OR_RETURN(const BinaryNumeric n, ParseNumeric(bytes));
      if (!n.special.empty()) {
        out.AppendText(ValueType::kString, n.special);
      } else {
        out.AppendTextInPlace(ValueType::kDecimal, n.max_text(),
                              [&n](char* p) { return n.WriteText(p); });
      }
      return absl::OkStatus();
    }
    case kTimestampOid:
    case kTimestamptzOid: {
      if (bytes.size() != 8) return WrongSize(oid, bytes, 8);
      char buf[40];
      std::string_view iso =
          IsoTimestamp(static_cast<int64_t>(ReadUint64(bytes.data())), oid == kTimestamptzOid, buf);
      if (iso.empty()) break;  // PostgreSQL's own text, below
      out.AppendText(ValueType::kTimestamp, iso);
      return absl::OkStatus();
    }
    default:
      break;
  }
  BACKFLOW_RETURN_IF_ERROR(DecodeBinaryInto(oid, bytes, scratch));
  out.Append(scratch);
  return absl::OkStatus();
}

}  // namespace backflow::pg
