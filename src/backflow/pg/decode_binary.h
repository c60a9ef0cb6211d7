// PostgreSQL binary-format cells to Backflow values.
//
// DecodeBinary gives, for the binary form of a datum, exactly the Value that
// DecodeText (pg/types.h) gives for the text form the server prints for the
// same datum under the source's session settings (DateStyle=ISO, TimeZone=UTC,
// extra_float_digits=3 on PostgreSQL 12+, bytea_output=hex): same type, same
// text, same double bits (NaN is the one quiet NaN DecodeText uses). Stored
// fingerprints were computed from DecodeText values, so this equality is the
// contract (sources/postgres/postgres_copy_format_test.cc checks it against
// a real server).
//   bool, int2/int4/int8, float8: the value.
//   float4: the double that parsing PostgreSQL's shortest float4 text gives
//     (0.1::real -> 0.1, not the float's exact value).
//   numeric: the digits numeric_out prints (dscale digits after the point,
//     trailing zeros kept); NaN/Infinity/-Infinity -> kString.
//   text/varchar/bpchar/name -> kString of the bytes (client encoding);
//   uuid -> kString, lower-case 8-4-4-4-12.
//   date: kDate "YYYY-MM-DD" for years 1..9999; otherwise kString of
//     PostgreSQL's text ("infinity", "0044-03-15 BC", "10000-01-01").
//   timestamp/timestamptz: kTimestamp ISO-8601 ("2024-01-02T03:04:05.5", 'Z'
//     for timestamptz), fraction trimmed of trailing zeros; years outside
//     1..9999 and ±infinity -> kString of PostgreSQL's text.
//   json/jsonb -> kJson, compacted (jsonb: after its version byte 1).
//   bytea -> kBytes.
// Other types have no binary decoder: callers read them in text form.
// Pure functions; thread-safe.
#pragma once

#include <libpq-fe.h>

#include <string_view>

#include "absl/status/statusor.h"
#include "backflow/model/value.h"

namespace backflow::pg {

// True when DecodeBinary decodes columns of type `oid`.
bool HasBinaryDecoder(Oid oid);

// Decodes one non-NULL binary-format cell of a column of type `oid`
// (HasBinaryDecoder(oid) must hold). kDataLoss when the bytes are not a
// valid binary value of that type (wrong size, unknown jsonb version, a
// numeric digit out of range); kInternal for an OID without a decoder.
absl::StatusOr<Value> DecodeBinary(Oid oid, std::string_view bytes);
// The same into `out` (whatever it held), reusing its text buffer: for
// decoding row after row into one Row. On error `out` is unspecified.
absl::Status DecodeBinaryInto(Oid oid, std::string_view bytes, Value& out);
// Appends that value to `out` (RowEncoder::Append), writing integers,
// booleans, text, numerics and in-range timestamps straight from the wire; other types
// decode into `scratch` first (a Value the caller keeps, to reuse its
// buffer). Same errors as DecodeBinaryInto; on error `out` is unspecified.
absl::Status AppendBinaryEncoded(Oid oid, std::string_view bytes, Value& scratch, RowEncoder& out);

}  // namespace backflow::pg
