// PostgreSQL source: runs a model's SQL on PostgreSQL (or a wire-compatible
// warehouse) and streams the rows with bounded memory.
//
// Each Query() opens its own connection (url + optional password), pins the
// session (DateStyle=ISO, TimeZone=UTC, IntervalStyle=iso_8601,
// extra_float_digits=3, bytea_output=hex, default_transaction_read_only=on;
// application_name defaults to "backflow") and runs the statement in
// libpq single-row mode, so only one row is held in memory at a time. The
// first row is fetched eagerly, which makes the schema (from the result's
// column OIDs, see pg/types.h) available before Next() is called. An error
// that arrives after rows were delivered (division by zero at row N, the
// backend terminated) is returned by Next(), never reported as a clean end.
// Abandoning a reader early cancels the query. Status codes follow
// pg/connection.h: kInvalidArgument for SQL PostgreSQL rejects (with its
// message and position), kUnauthenticated for a wrong user/password,
// kUnavailable when the server cannot be reached or the connection drops.
// A source and its readers are used from one thread at a time.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/sources/source.h"

namespace backflow {

// The definition of the "postgres" source type (settings: url, password).
SourceDefinition PostgresSourceDefinition();

// A PostgreSQL source for `url` (postgresql:// URI or conninfo) and an
// optional `password` that overrides one in the url. Does not connect.
std::unique_ptr<Source> NewPostgresSource(std::string url, std::string password);

}  // namespace backflow
