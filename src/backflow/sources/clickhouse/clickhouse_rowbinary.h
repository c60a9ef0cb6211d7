// ClickHouse data types and the RowBinaryWithNamesAndTypes wire format
// (../shared/reference/warehouses.md §5.2), decoded into Backflow values.
//
// Wire format: a header (LEB128 column count N, then N names and N type
// strings, each a LEB128 length and bytes), then rows: the values of each
// row back to back, little-endian, without separators:
//   (U)Int8..256      fixed width, two's complement
//   Float32/64        IEEE 754; BFloat16 the upper half of a Float32
//   Bool              1 byte
//   Decimal(P,S)      Int32/64/128/256 (by P: <=9, <=18, <=38, <=76) scaled by 10^S
//   String            LEB128 length + raw bytes (not necessarily UTF-8)
//   FixedString(N)    N bytes, zero-padded
//   Date / Date32     UInt16 / Int32 days since 1970-01-01
//   DateTime          UInt32 epoch seconds (UTC; the zone only affects display)
//   DateTime64(p)     Int64 ticks of 10^-p s
//   UUID              two UInt64 halves, each little-endian (byte-reversed)
//   IPv4 / IPv6       LE UInt32 / 16 bytes big-endian
//   Enum8 / Enum16    Int8 / Int16 value
//   Nullable(T)       1 flag byte (1 = NULL, nothing follows; 0 = a T follows)
//   LowCardinality(T), SimpleAggregateFunction(f, T)   as T
//   Array(T)          LEB128 count + elements; Map(K, V) count + key/value pairs
//   Tuple(...)        the elements back to back
//   Variant(T1, ...)  1 discriminant byte indexing the types sorted by name
//                     (0xFF = NULL), then the value
//   Interval*         Int64; Nothing: no bytes (only inside Nullable)
//   JSON / Object     a String of JSON text, only when the query sets
//                     output_format_binary_write_json_as_string=1
//   Point/Ring/LineString/Polygon/MultiLineString/MultiPolygon: their Tuple /
//   Array definitions.
//
// Value mapping (the column's ValueType comes from its type alone):
//   Int8..Int64, UInt8..UInt32, Interval*   -> kInt64
//   UInt64                                  -> kInt64; a value above 2^63-1
//                                              arrives as an exact kDecimal
//   Int128/256, UInt128/256                 -> kDecimal (exact integer text)
//   Decimal(P,S)                            -> kDecimal, exactly S decimals ("12.50")
//   Float32/64, BFloat16                    -> kDouble
//   Bool                                    -> kBool
//   String, FixedString (trailing NULs cut), UUID ("61f0c404-5cb3-11e7-907b-
//   a6006ad3dba0"), IPv4/IPv6 (text), Enum (its label) -> kString
//   Date, Date32                            -> kDate "YYYY-MM-DD"
//   DateTime, DateTime64                    -> kTimestamp "YYYY-MM-DDThh:mm:ss[.f]Z"
//                                              in UTC (fraction without
//                                              trailing zeros)
//   Array, Map, Tuple, Variant, geo types, JSON -> kJson, compact: arrays;
//     Map as an object (keys as text); a Tuple with element names as an
//     object, else an array; inside JSON integers and decimals are exact
//     number text, floats numbers (NaN/Inf null), dates and timestamps
//     strings as above, strings JSON strings (invalid UTF-8 replaced by
//     U+FFFD), NULL null.
//   Nullable(T)                             -> T's type; NULL is a null Value
// Other types (Dynamic, AggregateFunction, Time, JSON without the setting...)
// are rejected by ParseClickHouseType with kInvalidArgument saying how to
// cast the column in the model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/model/value.h"

namespace backflow {

struct ClickHouseType {
  enum class Kind {
    kInt,
    kUInt,
    kFloat32,
    kFloat64,
    kBFloat16,
    kBool,
    kDecimal,
    kString,
    kFixedString,
    kDate,
    kDate32,
    kDateTime,
    kDateTime64,
    kUuid,
    kIpv4,
    kIpv6,
    kEnum8,
    kEnum16,
    kInterval,
    kNothing,
    kNullable,
    kArray,
    kMap,
    kTuple,
    kVariant,
    kJsonString,
  };
  Kind kind = Kind::kString;
  int size = 0;       // bytes: (U)Int 1..32, Decimal 4..32, FixedString N
  int precision = 0;  // Decimal precision
  int scale = 0;      // Decimal scale; DateTime64 precision (0..9)
  std::string timezone;
  std::vector<std::pair<std::string, int64_t>> enum_values;  // label, value
  // Nullable/Array: 1; Map: key, value; Tuple/Variant: the elements (Variant
  // sorted by type name, the discriminant order).
  std::vector<ClickHouseType> elements;
  std::vector<std::string> element_names;  // a Tuple's names, when named
  std::string name;                        // the type as ClickHouse wrote it
};

struct ClickHouseTypeOptions {
  // The query sets output_format_binary_write_json_as_string=1.
  bool json_as_string = false;
};

// Parses a type string such as "Nullable(Decimal(18, 4))",
// "DateTime64(3, 'Europe/Berlin')", "Enum8('a' = 1, 'it\\'s' = 2)",
// "Tuple(id UInt64, tags Array(String))". kInvalidArgument for malformed or
// unsupported types (the message names the type and suggests a cast).
absl::StatusOr<ClickHouseType> ParseClickHouseType(std::string_view text,
                                                   const ClickHouseTypeOptions& options = {});

// The ValueType of a column of this type.
ValueType ClickHouseValueType(const ClickHouseType& type);

enum class RowBinaryResult {
  kOk,        // decoded; position() moved past it
  kNeedMore,  // the data ends inside it; nothing was consumed
  kCorrupt,   // not valid for the type; error() says why
};

// Decodes from a byte buffer that may end anywhere. Each Read* either
// decodes a whole item or reports kNeedMore (then call again from the same
// start with more bytes). Not thread-safe.
class RowBinaryDecoder {
 public:
  explicit RowBinaryDecoder(std::string_view data) : data_(data) {}

  size_t position() const { return pos_; }
  const std::string& error() const { return error_; }

  // The RowBinaryWithNamesAndTypes header.
  RowBinaryResult ReadHeader(std::vector<std::string>& names, std::vector<std::string>& types);
  // One row: a value per column.
  RowBinaryResult ReadRow(const std::vector<ClickHouseType>& columns, Row& row);
  // One value.
  RowBinaryResult ReadValue(const ClickHouseType& type, Value& out);

 private:
  RowBinaryResult ReadScalar(const ClickHouseType& type, Value& out);
  RowBinaryResult ReadJson(const ClickHouseType& type, std::string& out);
  RowBinaryResult ReadLeb128(uint64_t& v);
  RowBinaryResult ReadBytes(size_t n, std::string_view& out);
  RowBinaryResult ReadString(std::string_view& out);
  RowBinaryResult Corrupt(std::string message);

  std::string_view data_;
  size_t pos_ = 0;
  std::string error_;
};

// --- Helpers shared with the fake server and tests. ------------------------

// Little-endian two's complement (or unsigned) integer bytes as decimal text.
std::string ClickHouseIntegerText(std::string_view little_endian, bool is_signed);
// "2024-06-01" for days since 1970-01-01.
std::string ClickHouseDateText(int64_t days);
// "2024-06-01T00:02:03.5Z" for ticks of 10^-precision seconds since the epoch.
std::string ClickHouseTimestampText(int64_t ticks, int precision);

}  // namespace backflow
