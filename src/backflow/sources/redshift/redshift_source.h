// Amazon Redshift source ("redshift"): runs a model's SQL on Redshift over
// the PostgreSQL v3 wire protocol with libpq (../shared/reference/
// warehouses.md §4.1, §6.1) and streams the result one cursor batch at a time.
//
// Redshift speaks a PostgreSQL 8.0.2 dialect of the protocol: no COPY ...
// TO STDOUT, no binary result format, one open cursor per session, cursors
// only inside a transaction, Redshift-only configuration parameters. This
// source therefore uses only the simple-query protocol and text results:
//
// Connection: the `url` (postgresql://user@host:5439/dev; jdbc:redshift://
//   and redshift:// prefixes are accepted and read as postgresql://), the
//   `password` setting, port 5439 unless the url names one, and TLS from the
//   `sslmode` (default verify-full) and `sslrootcert` settings; with verify-ca
//   or verify-full and no sslrootcert the system CA bundle
//   (/etc/ssl/certs/ca-certificates.crt) is used when it exists; the url may
//   not carry sslmode/sslrootcert itself.
// IAM authentication (`auth: iam`): instead of `password`, a temporary
//   password is fetched before connecting (redshift_aws.h): GetClusterCredentials
//   for `cluster_identifier` with the url's user as DbUser and its database
//   as DbName, or redshift-serverless GetCredentials for `workgroup_name`;
//   the connection then logs on as the user AWS returns ("IAM:analytics").
//   The password is reused until a minute before it expires; when Redshift
//   refuses it (kUnauthenticated), one new password is fetched and the
//   connection tried again. `region` defaults to the one in the url's host.
//   Failures to get a password are classified as AwsFailure says
//   (redshift_aws.h), after retries of throttling and 5xx replies.
// The session is then pinned in the
//   same round trip as the cursor:
//     SET timezone TO 'UTC'; SET datestyle TO 'ISO, MDY';
//     SET extra_float_digits TO 2;   (Redshift's maximum; float8 round-trips)
//     [SET statement_timeout TO <ms>;] [SET query_group TO '<group>';]
//     BEGIN READ ONLY;
//     DECLARE backflow_cursor CURSOR FOR
//     <model sql>
// Query(sql):
//   The model must be one statement (trailing semicolons and comments are
//   fine; several statements are kInvalidArgument before anything is sent).
//   After the DECLARE above, `FETCH FORWARD <fetch_size> FROM backflow_cursor`
//   returns the first batch (on Redshift the first FETCH materialises the
//   whole result on the leader node); its column OIDs give the schema before
//   the first row, so SQL errors and errors while materialising surface from
//   Query(). While the reader hands out a batch, the next FETCH is already in
//   flight (at most two batches in memory). A batch shorter than fetch_size
//   is the last: no further FETCH is sent, and the reader ends with
//   `CLOSE backflow_cursor; COMMIT`, reporting a clean end only if that
//   succeeds. Errors before the first row (kUnavailable: connection refused
//   or lost, serialization conflict, server restarting) are retried up to
//   max_retries times with exponential backoff on the injected Clock; once a
//   row was handed out nothing is retried and every failure is a sticky
//   error from Next(), never a clean end.
// Abandoning a reader before its end (or after a failure): a FETCH in flight
//   is cancelled with PQcancel, the transaction is ended with
//   `CLOSE backflow_cursor; ROLLBACK` (or `ROLLBACK` when already aborted),
//   waiting at most cancel_wait for each, and the connection is closed.
// QueryOptions::cancel: checked before each attempt, at least once a second
//   while the first FETCH runs (it is then cancelled with PQcancel, its
//   results drained for at most cancel_wait, the connection closed, and
//   kCancelled returned), and before each later FETCH is read (the reader
//   returns kCancelled; dropping it cancels the FETCH as above). The
//   DECLARE and the session SET statements are not interruptible.
//
// Type mapping (by the column's type OID, never by the cell):
//   bool -> kBool; int2/int4/int8 -> kInt64; float4/float8 -> kDouble;
//   numeric(p,s) -> kDecimal, exact text; char/varchar/text -> kString;
//   date -> kDate; timestamp -> kTimestamp without zone,
//   timestamptz -> kTimestamp "2024-06-01T12:00:00.123456Z" (UTC);
//   SUPER (4000) -> kJson, compacted; VARBYTE (6551; hex text, unverified)
//   -> kBytes; GEOMETRY (3000), GEOGRAPHY (3001), HLLSKETCH (2935), time,
//   timetz, intervals (1186, 1188, 1190) and unknown OIDs -> kString as sent.
//
// Errors (codes per common/errors.h; messages name Redshift, host:port and
// quote the server): wrong user/password -> kUnauthenticated; unknown
// database -> kFailedPrecondition; missing privileges -> kPermissionDenied;
// TLS problems (server without TLS, certificate not trusted) ->
// kFailedPrecondition naming sslmode/sslrootcert; SQL Redshift rejects ->
// kInvalidArgument with SQLSTATE and the position within the model's SQL;
// connection refused or lost, serializable isolation violation (Redshift
// error 1023, SQLSTATE XX000), 40001, 40P01, class 53, 57P01 ->
// kUnavailable; statement timeout or cancellation (57014) ->
// kDeadlineExceeded. No message contains the password.
//
// change_detection: warehouse (Source::warehouse_change_detection()) runs
// through pass tables in `state_schema` (redshift_change_detection.h) on a
// connection of its own, session pinned as above: each statement with
// PQsendQueryParams ($1, $2, ... text parameters, text results) in
// single-row mode, so the candidate rows stream without a cursor; a second
// connection is opened while a reader still holds the first; Apply's
// statements run in one transaction (BEGIN ... COMMIT, ROLLBACK on failure).
//
// Thread-safety: a source and its readers are used from one thread at a
// time. The Clock of the ConnectorEnv must outlive the source.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/model/value.h"
#include "backflow/sources/redshift/redshift_aws.h"
#include "backflow/sources/source.h"
#include "nlohmann/json.hpp"

namespace backflow {

// The definition of the "redshift" source type.
SourceDefinition RedshiftSourceDefinition();

enum class RedshiftAuth { kPassword, kIam };

struct RedshiftConfig {
  // postgresql:// URI or conninfo string, without sslmode/sslrootcert.
  std::string url;
  std::string password;
  RedshiftAuth auth = RedshiftAuth::kPassword;
  // With kIam: how to get the temporary password (db_user and db_name come
  // from the url).
  RedshiftIamConfig iam;
  // libpq sslmode: disable, allow, prefer, require, verify-ca, verify-full.
  std::string sslmode = "verify-full";
  // CA bundle for verify-ca/verify-full; empty: the system bundle if present.
  std::string sslrootcert;
  // Rows per FETCH FORWARD (single-node clusters accept at most 1000).
  int fetch_size = 1000;
  // SET statement_timeout (0: the cluster's default).
  int statement_timeout_s = 0;
  // SET query_group (WLM queue routing); empty: none.
  std::string query_group;
  // Attempts after the first for transient failures before the first row.
  int max_retries = 2;
  std::chrono::milliseconds retry_initial{1000};
  std::chrono::milliseconds retry_max{30000};
  int connect_timeout_s = 10;
  // How long abandoning a reader waits for the cancel and the ROLLBACK.
  std::chrono::milliseconds cancel_wait{5000};
  // The schema of change_detection: warehouse's tables (a plain identifier).
  std::string state_schema = "backflow_state";
};

// Reads settings already checked against the definition (defaults filled
// in). kInvalidArgument, naming the setting, for a missing url, an sslmode
// or sslrootcert inside the url, or an out-of-range number; with auth: iam,
// for missing AWS credentials, no region (given or in the url's host), not
// exactly one of cluster_identifier / workgroup_name, or no user in the url
// for a cluster.
absl::StatusOr<RedshiftConfig> ParseRedshiftSettings(const nlohmann::json& settings);

// A Redshift source; does not connect. `env.clock` (SystemClock() when
// null) times the retry backoff; `env.http` carries the AWS requests of
// auth: iam (and must then outlive the source).
std::unique_ptr<Source> NewRedshiftSource(RedshiftConfig config, const ConnectorEnv& env);

// --- Exposed for tests and the fake server. ---------------------------------

// Redshift-specific type OIDs (the Redshift JDBC driver's Oid table).
inline constexpr Oid kRedshiftHllSketchOid = 2935;
inline constexpr Oid kRedshiftGeometryOid = 3000;
inline constexpr Oid kRedshiftGeographyOid = 3001;
inline constexpr Oid kRedshiftSuperOid = 4000;
inline constexpr Oid kRedshiftVarbyteOid = 6551;
inline constexpr Oid kRedshiftIntervalY2MOid = 1188;
inline constexpr Oid kRedshiftIntervalD2SOid = 1190;

// The Backflow type of a Redshift column of type `oid`.
ValueType RedshiftValueTypeForOid(Oid oid);

// The type's SQL name for display ("super", "numeric(38,10)").
std::string RedshiftTypeName(Oid oid, int typmod);

// Decodes one non-NULL text cell of a column of type `oid` (session pinned
// to UTC, ISO dates, extra_float_digits 2).
Value DecodeRedshiftText(Oid oid, std::string_view text);

// `status` from pg::Connection, reclassified for Redshift: serializable
// isolation violations (XX000 "1023") and concurrent-transaction conflicts
// become kUnavailable; a TLS failure becomes kFailedPrecondition naming the
// sslmode and sslrootcert settings. Other statuses are returned unchanged.
absl::Status ClassifyRedshiftError(absl::Status status);

// The statements of `sql` split at top-level semicolons (quotes, quoted
// identifiers, -- and /* */ comments, $tag$ bodies and backslash escapes in
// string literals respected), whitespace-trimmed; pieces holding only
// whitespace and comments are left out. Views into `sql`.
std::vector<std::string_view> SplitSqlStatements(std::string_view sql);

// The model's SQL, trimmed (TrimModelSql), when it is exactly one statement;
// otherwise kInvalidArgument saying a model must be one SELECT, followed by
// "(<why_one>)" when it holds several.
absl::StatusOr<std::string> SingleModelStatement(std::string_view sql, std::string_view why_one);

// `settings["state_schema"]` (default backflow_state); kInvalidArgument
// unless a plain identifier.
absl::StatusOr<std::string> ParseRedshiftStateSchema(const nlohmann::json& settings);

// The SET statements that pin a session (see the header comment), each
// followed by "; ".
std::string RedshiftSessionSql(const RedshiftConfig& config);

}  // namespace backflow
