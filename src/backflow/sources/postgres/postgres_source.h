// PostgreSQL source: runs a model's SQL on PostgreSQL (or a wire-compatible
// warehouse) and streams the rows with bounded memory.
//
// Each Query() opens its own connection (url + optional password) and pins the
// session (DateStyle=ISO, TimeZone=UTC, IntervalStyle=iso_8601,
// extra_float_digits=3, bytea_output=hex, default_transaction_read_only=on;
// application_name defaults to "backflow"). Two ways to read the rows, with
// identical schemas and values (see pg/types.h for the decoding):
//   kCopy (default): the statement is prepared and described without running
//     it (schema before the first row; SQL errors reported before any row),
//     then `COPY (<sql>) TO STDOUT` streams it in text format (pg/copy_text.h),
//     one row at a time, at close to the server's own speed. Trailing
//     semicolons and whitespace are removed first. A statement PostgreSQL
//     accepts but cannot run inside COPY (...) (SHOW, EXPLAIN, a comment after
//     a trailing semicolon; or a server that lacks COPY TO STDOUT) fails with
//     kInvalidArgument suggesting `extraction: rows`; there is no silent
//     fallback.
//   kRows: libpq single-row mode, so only one row is held in memory at a time.
//     The first row is fetched eagerly, which makes the schema (from the
//     result's column OIDs) available before Next() is called. Costs one
//     PGresult per row; for servers and poolers without COPY (Redshift).
// Both: an error that arrives after rows were delivered (division by zero at
// row N, the backend terminated) is returned by Next(), never reported as a
// clean end, and is sticky. Abandoning a reader early cancels the query and
// closes its connection. Status codes follow pg/connection.h: kInvalidArgument
// for SQL PostgreSQL rejects (with its message and position),
// kUnauthenticated for a wrong user/password, kUnavailable when the server
// cannot be reached or the connection drops.
// A source and its readers are used from one thread at a time.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/sources/source.h"

namespace backflow {

// How a PostgreSQL source reads a result (the `extraction` setting).
enum class PostgresExtraction { kCopy, kRows };

// The definition of the "postgres" source type (settings: url, password,
// extraction).
SourceDefinition PostgresSourceDefinition();

// A PostgreSQL source for `url` (postgresql:// URI or conninfo) and an
// optional `password` that overrides one in the url. Does not connect.
std::unique_ptr<Source> NewPostgresSource(
    std::string url, std::string password,
    PostgresExtraction extraction = PostgresExtraction::kCopy);

}  // namespace backflow
