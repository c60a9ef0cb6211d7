// MySQL / MariaDB source: runs a model's SQL on MySQL 5.7+/8 or MariaDB 10.x
// (libmariadb, the MariaDB Connector/C) and streams the rows with bounded
// memory.
//
// Each Query() opens its own TCP connection (utf8mb4) and pins the session:
// time_zone '+00:00', net_write_timeout 600, a READ ONLY transaction
// (`SET SESSION TRANSACTION READ ONLY` + `START TRANSACTION READ ONLY`).
// The statement runs with mysql_real_query + mysql_use_result: rows are read
// one at a time from the socket (never buffered), and the schema (from
// mysql_fetch_fields) is known before the first row. Only one statement may
// be sent (multi-statements are off); trailing semicolons are removed.
//
// Type mapping (text protocol):
//   TINYINT(1) (BOOL/BOOLEAN; a signed TINY with display width 1) -> kBool
//     (any non-zero value is true); BIT(1) -> kBool.
//   other integers, YEAR, BIT(2..63) -> kInt64; BIGINT UNSIGNED -> kDecimal
//     for the whole column (values above INT64_MAX never wrap); BIT(64) ->
//     kDecimal.
//   DECIMAL -> kDecimal (exact text); FLOAT/DOUBLE -> kDouble.
//   DATE -> kDate; DATETIME -> kTimestamp "YYYY-MM-DDTHH:MM:SS[.ffffff]"
//     without zone (DATETIME has none); TIMESTAMP -> the same with "Z" (the
//     session is UTC). Zero dates ('0000-00-00', or a zero month/day) -> NULL.
//   TIME -> kString ("-838:59:59" is a duration, not a time of day).
//   JSON -> kJson, compacted (whitespace outside strings removed): MySQL's
//     JSON type, and MariaDB's JSON alias when the server sends the
//     "format=json" extended metadata (MariaDB 10.5.2+); otherwise kString.
//   BLOB/BINARY/VARBINARY and other binary-charset (63) strings, GEOMETRY ->
//     kBytes; other strings, ENUM, SET -> kString. SQL NULL -> Null.
//
// Errors: cannot connect / unknown host -> kUnavailable naming host:port;
// access denied (1045) -> kUnauthenticated (never contains the password);
// unknown database (1049) -> kFailedPrecondition naming it; SQL the server
// rejects -> kInvalidArgument with the server's message; a lost connection
// (2006/2013) -> kUnavailable. An error after rows were delivered (a killed
// query, a runtime error) is returned by Next(), never a clean end, and is
// sticky. Dropping a reader mid-stream closes its connection without
// draining (the server notices and stops the query).
//
// Cancel (QueryOptions::cancel): a flag already set opens no connection.
// While the statement runs and until the reader ends, a watcher thread reads
// the flag every 100 ms; once it is true, it sends `KILL QUERY <connection
// id>` over a second connection (one attempt) and shuts the query's socket
// down, so a blocked mysql_real_query or row fetch returns at once; Query()
// and Next() then return kCancelled (also when they see the flag themselves,
// before each row, killing the query if the watcher has not). The
// connection is never used again.
// A source and its readers are used from one thread at a time.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/sources/source.h"

namespace backflow {

// The parts of mysql://user[:password]@host[:port]/database (also
// mariadb://). user, password and database are percent-decoded; host may be
// a bracketed IPv6 literal; port defaults to 3306. Query parameters are
// rejected.
struct MysqlUrl {
  std::string user;
  std::string password;
  std::string host;
  int port = 3306;
  std::string database;
};

// kInvalidArgument with a message that never includes the password.
absl::StatusOr<MysqlUrl> ParseMysqlUrl(const std::string& url);

// The definition of the "mysql" source type (settings: url, password,
// state_schema). It supports `change_detection: warehouse`
// (Source::warehouse_change_detection(); see mysql_change_detection.cc).
SourceDefinition MysqlSourceDefinition();

// A MySQL/MariaDB source for `url` and an optional `password` that overrides
// one in the url; models in warehouse mode keep their checkpoint in the
// database `state_schema`. Does not connect; a malformed url is reported by
// CheckConnection() and Query().
std::unique_ptr<Source> NewMysqlSource(std::string url, std::string password,
                                       std::string state_schema = "backflow_state");

}  // namespace backflow
