// Pieces of the PostgreSQL source shared by its files (not a public API).
#pragma once

#include <libpq-fe.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/model/value.h"
#include "backflow/pg/connection.h"
#include "backflow/sources/postgres/postgres_source.h"
#include "backflow/sources/source.h"

namespace backflow {
class WarehouseChangeDetection;
}

namespace backflow::postgres_internal {

// A statement's result columns, known before it runs.
struct Described {
  Schema schema;
  std::vector<Oid> oids;
};

// The source's session settings (UTC, ISO dates, read-only by default...).
pg::ConnectOptions ConnectOptionsFor(const std::string& url, const std::string& password);

// Prepares and describes `text` (one statement) without running it.
absl::StatusOr<Described> Describe(pg::Connection& conn, const std::string& text);

// Starts `COPY (<text>) TO STDOUT` on `conn` (in binary format when `format`
// allows it for these columns) and reads it. The reader shares the
// connection: once it has returned its clean end, the connection (and its
// transaction) can run other statements.
absl::StatusOr<std::unique_ptr<RowReader>> StartCopy(
    std::shared_ptr<pg::Connection> conn, const std::string& text, Described described,
    PostgresCopyFormat format = PostgresCopyFormat::kAuto);

// Warehouse change detection for the source at `url`, keeping its checkpoint
// table in `state_schema` and reading candidates in `copy_format`
// (postgres_change_detection.cc).
std::unique_ptr<WarehouseChangeDetection> NewChangeDetection(
    std::string url, std::string password, std::string state_schema,
    PostgresCopyFormat copy_format = PostgresCopyFormat::kAuto);

}  // namespace backflow::postgres_internal
