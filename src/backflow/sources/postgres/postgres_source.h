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
//     then `COPY (<sql>) TO STDOUT` streams it in binary format
//     (pg/copy_binary.h) or text format (pg/copy_text.h) as copy_format says
//     (PostgresCopyFormat), one row at a time, at close to the server's own
//     speed. Trailing
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
//
// Parallel extraction (parallel_connections N > 1, copy extraction, and a key
// column given through Query(sql, QueryOptions{key_column})): the first
// connection opens a REPEATABLE READ READ ONLY transaction, exports its
// snapshot (pg_export_snapshot) and describes the model; the model's rows are
// then split by the key into N shares, each read by its own connection whose
// own transaction imports that snapshot (SET TRANSACTION SNAPSHOT) before its
// COPY, so every share comes from the same snapshot, whatever commits
// meanwhile. Shares (conditions on the model wrapped as a subquery):
//   integer keys (smallint, integer, bigint): `SELECT min(k), max(k)` of the
//     model in that snapshot, then N equal ranges [a, b) of that span, the
//     first and last open-ended; NULL keys go to the first range. Fewer
//     ranges when the span has fewer values than N; one read when the model
//     has no non-NULL key.
//   other key types: `(hashtext(k::text) & 2147483647) % N = i`, NULL keys in
//     share 0. Each connection evaluates the whole model and keeps its share.
// A model without the key column, or returning it twice, is read by one
// connection (inside the same kind of transaction). The N COPY streams are
// read and decoded on N threads and merged by a ParallelRowReader
// (sources/parallel_reader.h): rows in no particular order, bounded memory,
// the first error of any connection is the reader's error, and destroying the
// reader cancels every connection's query and closes them all. Query(sql)
// without options, `extraction: rows`, and N = 1 read as described above,
// with no explicit transaction.
//
// A source and its readers are used from one thread at a time (a parallel
// reader uses its own threads internally).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/sources/source.h"

namespace backflow {

// How a PostgreSQL source reads a result (the `extraction` setting).
enum class PostgresExtraction { kCopy, kRows };

// The format of COPY extraction (the `copy_format` setting). Both formats
// give identical values (pg/decode_binary.h).
//   kAuto: binary when every column's type has a binary decoder
//     (pg::HasBinaryDecoder: bool, integers, floats, numeric, text types,
//     uuid, date, timestamps, json/jsonb, bytea) and the server is
//     PostgreSQL 12+; text otherwise (arrays, interval, time, enums, ...).
//   kText: always text.
//   kBinary: always binary; a model with a column without a binary decoder
//     fails with kInvalidArgument naming the column.
enum class PostgresCopyFormat { kAuto, kText, kBinary };

// The largest accepted parallel_connections.
inline constexpr int kMaxPostgresParallelConnections = 16;

struct PostgresSourceOptions {
  PostgresExtraction extraction = PostgresExtraction::kCopy;
  PostgresCopyFormat copy_format = PostgresCopyFormat::kAuto;
  // Connections of a parallel read (see above); 1 reads over one connection.
  int parallel_connections = 1;
  // Testing: called on the Query() thread of a parallel read after the first
  // connection exported its snapshot and found the key range, before the
  // other connections import the snapshot.
  std::function<void()> after_snapshot_export_for_testing;
  // Testing: false skips importing the snapshot, to show what it prevents.
  bool share_snapshot = true;
  // The schema where warehouse change detection keeps its checkpoint table
  // (`change_detection: warehouse`; see postgres_change_detection.h).
  std::string state_schema = "backflow_state";
};

// The definition of the "postgres" source type (settings: url, password,
// extraction, copy_format, parallel_connections, state_schema). It supports
// `change_detection: warehouse` (Source::warehouse_change_detection()).
SourceDefinition PostgresSourceDefinition();

// A PostgreSQL source for `url` (postgresql:// URI or conninfo) and an
// optional `password` that overrides one in the url. Does not connect.
std::unique_ptr<Source> NewPostgresSource(
    std::string url, std::string password,
    PostgresExtraction extraction = PostgresExtraction::kCopy);
std::unique_ptr<Source> NewPostgresSource(std::string url, std::string password,
                                          PostgresSourceOptions options);

}  // namespace backflow
