// Redshift's SQL for warehouse change detection through pass tables
// (../warehouse_sql/pass_change_detection.h), one dialect for both Redshift
// sources: `redshift` (libpq) and `redshift_data_api` (the Data API). Each
// source supplies a RedshiftSqlTransport that runs a statement with text
// bindings; the `?` placeholders become `$1, $2, ...` over libpq and
// `:p1, :p2, ...` with a Parameters list over the Data API
// (RewritePlaceholders).
//
// Redshift's SQL, as AWS documents it (and what is not verified):
//   row text:    CAST(x AS VARCHAR(65535)); booleans as CASE ... 'true' /
//                'false' (Redshift cannot cast BOOLEAN to VARCHAR);
//                JSON_SERIALIZE(x) for SUPER; FROM_VARBYTE(x, 'hex') for
//                VARBYTE (unverified against a cluster).
//   hash:        MD5(text): 32 lowercase hex characters.
//   `||`:        Redshift casts LENGTH()'s integer to VARCHAR implicitly (the
//                CONCAT page: "tries to implicitly type cast").
//   IS DISTINCT FROM: not implemented by Redshift (error 1001 "Not
//                implemented", reported by users), so DiffersFrom() is
//                `(a IS NULL OR a <> b)`.
//   key column:  VARCHAR(65535) COLLATE case_sensitive (documented in
//                CREATE TABLE; Redshift has no locale collations, so a
//                database created CASE_INSENSITIVE cannot make the key match
//                case-insensitively). That case_sensitive sorts by UTF-8 bytes
//                is believed, not verified: the ordered entry reader checks it
//                and fails the pass otherwise. TEXT would be VARCHAR(256) on
//                Redshift, so every text column is VARCHAR(65535).
//                Unverified: the pass table's key column (from CTAS) takes the
//                database's default collation.
//   JSON array:  (SELECT JSON_PARSE(?) AS elements) AS j_array,
//                j_array.elements AS j (PartiQL unnesting of a SUPER array
//                in FROM; unnesting a subquery's column is unverified);
//                items CAST(j[i] AS VARCHAR(65535)). JSON_PARSE
//                takes a VARCHAR, at most 65535 bytes, so Apply binds at
//                most 60000 bytes of JSON per statement (MaxBindingBytes).
//                The in-flight keys go into the pass's keys table the same
//                way, in as many INSERT ... SELECT statements of at most
//                60000 bytes of JSON as they need (ChunkInFlightKeys), so any
//                number of them works; a single key longer than that as JSON
//                fails the pass with a message saying so. (A whole statement
//                may be 16 MB; the Data API's own Sql limit is reported as
//                100 KB; Backflow's statements text is far below both, as the
//                values travel as parameters.)
//   Apply:       Redshift's MERGE has no conditional WHEN clauses and takes a
//                table, not a query, as its source, so one batch is three
//                statements: DELETE the removed keys; UPDATE ... FROM the
//                upserted keys already stored; INSERT ... SELECT those not
//                stored (NOT EXISTS). Each key is written by one statement
//                only; over libpq the three run in one transaction
//                (BEGIN ... COMMIT), over the Data API one by one (a failure
//                leaves each key either as before or as written).
//   CREATE SCHEMA IF NOT EXISTS, CREATE TABLE IF NOT EXISTS, CTAS, DROP
//   TABLE IF EXISTS, DELETE, UPDATE ... FROM: as in PostgreSQL 8.
//   PRIMARY KEY is informational only on Redshift (not enforced).
//   Privilege refusals: SQLSTATE 42501 / "permission denied for schema |
//   database | relation ..." -> GRANT advice naming CURRENT_USER and
//   CURRENT_DATABASE().
// Identifiers: unquoted names fold to lowercase (backflow_state.checkpoints);
// model columns are quoted as Redshift returns them.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/sources/source.h"
#include "backflow/sources/warehouse_sql/pass_change_detection.h"

namespace backflow {

// How one Redshift source runs the change detection's statements.
// Used from one thread at a time.
class RedshiftSqlTransport {
 public:
  virtual ~RedshiftSqlTransport() = default;
  // Runs one statement whose `?` placeholders take `bindings` (text) in
  // order; a statement without a result gives a reader without columns.
  // `cancel` (may be null) stops it as QueryOptions::cancel stops a query.
  virtual absl::StatusOr<std::unique_ptr<RowReader>> Run(const std::string& sql,
                                                         const std::vector<std::string>& bindings,
                                                         const std::atomic<bool>* cancel) = 0;
  // Runs `statements` in order, in one transaction if the transport can (not
  // cancellable: the checkpoint's writes commit whole or fail whole).
  virtual absl::Status RunAll(const std::vector<BoundSql>& statements) = 0;
};

std::unique_ptr<WarehouseSql> NewRedshiftWarehouseSql(
    std::unique_ptr<RedshiftSqlTransport> transport);

// `sql` with each `?` outside string literals, quoted identifiers and
// comments replaced by marker(n), n counting from 1.
std::string RewritePlaceholders(std::string_view sql,
                                const std::function<std::string(int)>& marker);

// The setting declared by both Redshift sources.
inline constexpr char kRedshiftStateSchemaHelp[] =
    "For models with change_detection: warehouse: the schema, in the connection's database, "
    "where Backflow keeps what each mapping last delivered (table checkpoints) and the "
    "tables of running passes (dropped when a pass ends). Created when missing; the user "
    "needs CREATE on the database, or USAGE and CREATE on this schema, and SELECT, INSERT, "
    "UPDATE, DELETE on its tables.";

}  // namespace backflow
