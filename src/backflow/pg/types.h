// PostgreSQL type OIDs to Backflow values (text result format).
//
// Used by the PostgreSQL source to build a Schema from a result's column
// metadata and to decode each text-format cell by its column's OID (never by
// looking at the cell). Assumes the session settings the source applies:
// DateStyle=ISO, TimeZone=UTC, extra_float_digits=3, bytea_output=hex.
//   bool -> kBool; int2/int4/int8 -> kInt64; float4/float8 -> kDouble;
//   numeric -> kDecimal (exact text; NaN/Infinity -> kString);
//   text/varchar/bpchar/name/uuid -> kString; date -> kDate;
//   timestamp/timestamptz -> kTimestamp, ISO-8601 with 'T', fractional
//   seconds kept, 'Z' for timestamptz at UTC, no zone for timestamp;
//   json/jsonb -> kJson (compacted); bytea -> kBytes (raw bytes);
//   arrays and anything else -> kString of PostgreSQL's text form. Values
//   ISO-8601 cannot express (infinity, BC dates) also come back as kString.
// Pure functions; thread-safe.
#pragma once

#include <libpq-fe.h>

#include <string>
#include <string_view>

#include "backflow/model/value.h"

namespace backflow::pg {

// Built-in type OIDs (stable across PostgreSQL versions; pg_type.dat).
inline constexpr Oid kBoolOid = 16;
inline constexpr Oid kByteaOid = 17;
inline constexpr Oid kNameOid = 19;
inline constexpr Oid kInt8Oid = 20;
inline constexpr Oid kInt2Oid = 21;
inline constexpr Oid kInt4Oid = 23;
inline constexpr Oid kTextOid = 25;
inline constexpr Oid kJsonOid = 114;
inline constexpr Oid kFloat4Oid = 700;
inline constexpr Oid kFloat8Oid = 701;
inline constexpr Oid kBpcharOid = 1042;
inline constexpr Oid kVarcharOid = 1043;
inline constexpr Oid kDateOid = 1082;
inline constexpr Oid kTimestampOid = 1114;
inline constexpr Oid kTimestamptzOid = 1184;
inline constexpr Oid kNumericOid = 1700;
inline constexpr Oid kUuidOid = 2950;
inline constexpr Oid kJsonbOid = 3802;
// Arrays (for binary parameters; see Connection::ExecParams).
inline constexpr Oid kByteaArrayOid = 1001;
inline constexpr Oid kTextArrayOid = 1009;

// The Backflow type of a column of type `oid`.
ValueType ValueTypeForOid(Oid oid);

// The SQL name of a type for display ("numeric(38,10)", "timestamp with time
// zone"); "oid 1234" for types this table does not know.
std::string TypeNameForOid(Oid oid, int typmod);

// The result's columns (names, Backflow types, SQL type names).
Schema SchemaFromResult(const PGresult* result);

// Decodes one non-NULL text-format cell of a column of type `oid`.
Value DecodeText(Oid oid, std::string_view text);

}  // namespace backflow::pg
