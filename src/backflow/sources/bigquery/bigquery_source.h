// Google BigQuery source: runs a model's GoogleSQL through the BigQuery REST
// API v2 (jobs.query + jobs.getQueryResults) and streams the result page by
// page (see ../shared/reference/warehouses.md §2).
//
// Auth: the service account's JSON key (`service_account_key`) signs an RS256
// JWT (kid = private_key_id, iss = client_email, scope
// https://www.googleapis.com/auth/bigquery, aud = token_url, exp = iat + 1 h)
// that is exchanged at `token_url` for an access token (delivery/jwt_bearer.h),
// cached until shortly before it expires and re-minted once on a 401.
//
// Query(sql): POST {base_url}/bigquery/v2/projects/{project_id}/queries with
// useLegacySql=false, formatOptions.useInt64Timestamp=true, maxResults =
// `max_results`, timeoutMs (the server-side wait, at most 10 s and half of
// timeout_ms), `location` when set, maximumBytesBilled when set, and a fresh
// requestId (a UUID) that makes retries of the same call idempotent. While
// jobComplete is false, GET .../queries/{jobId} long-polls (with a short
// growing pause between polls on the clock) until the job is done; the
// schema (schema.fields) is then known before the first row. Query() returns
// after the first page arrived; Next() decodes that page's rows and fetches
// the following page (pageToken, maxResults, location,
// formatOptions.useInt64Timestamp=true) only when the current one is used up,
// so one page is held at a time. Every call after jobs.query carries the
// job's location (from jobReference, else `location`). A query still running
// after `query_timeout_s` (also sent as jobTimeoutMs) is cancelled and fails
// with kDeadlineExceeded. The result must deliver exactly totalRows rows:
// fewer or more is an error (kUnavailable), never a clean end.
//
// Type mapping (schema.fields[].type; legacy and standard names alike):
//   INTEGER/INT64 (quoted) -> kInt64; NUMERIC/BIGNUMERIC -> kDecimal (exact
//   text; E-notation is expanded exactly); FLOAT/FLOAT64 -> kDouble ("NaN",
//   "Infinity", "-Infinity" accepted); BOOLEAN/BOOL -> kBool; STRING ->
//   kString; BYTES (base64) -> kBytes; DATE -> kDate; DATETIME -> kTimestamp
//   "YYYY-MM-DDTHH:MM:SS[.ffffff]" without zone; TIMESTAMP -> kTimestamp in
//   UTC "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" (trailing fraction zeros dropped)
//   from integer microseconds (useInt64Timestamp) or, when a server ignores
//   that option, from float seconds such as "1.7172001231230001E9", decoded
//   exactly as decimal text and rounded to the nearest microsecond; TIME,
//   GEOGRAPHY, INTERVAL, RANGE and unknown types -> kString; JSON -> kJson
//   (compacted); RECORD/STRUCT (nested {"f":[...]}) -> kJson object keyed by
//   the field names; mode REPEATED ([{"v":...}]) -> kJson array (empty
//   array, never null). Inside JSON, INT64 is a number when |v| <= 2^53 and
//   a string otherwise, NUMERIC/BIGNUMERIC are strings (exact), FLOAT64 a
//   number ("NaN"/"Infinity" as strings), BOOL true/false, TIMESTAMP an
//   ISO-8601 "Z" string, BYTES base64, JSON embedded as JSON, other types
//   strings. The decoding follows the schema, never the cell's look.
//
// Errors (classified on error.errors[0].reason, then the HTTP status):
//   - retried with exponential backoff on the clock up to max_retries:
//     transport errors, 403/429 rateLimitExceeded (and
//     jobRateLimitExceeded), backendError, internalError, badGateway, bare
//     429/5xx; exhausted: kResourceExhausted for rate limits, else
//     kUnavailable / kDeadlineExceeded;
//   - 403 quotaExceeded -> kResourceExhausted (not retried: a quota window);
//   - 400 invalidQuery/invalid -> kInvalidArgument quoting BigQuery's
//     message and the error's location;
//   - 404 notFound: a table or dataset -> kInvalidArgument (check the SQL
//     and that `location` is the dataset's); a job -> kFailedPrecondition
//     (the job's location); a project -> kFailedPrecondition (project_id);
//   - 401 after one re-mint -> kUnauthenticated; a refused JWT grant ->
//     kUnauthenticated with the token endpoint's error;
//   - 403 accessDenied -> kPermissionDenied naming the role that grants the
//     missing permission (roles/bigquery.jobUser for bigquery.jobs.create,
//     roles/bigquery.dataViewer for reading tables) when the message says,
//     or asking to enable the API when it is disabled;
//   - errors inside a 200 (a QueryResponse carrying errors[]) are checked
//     with jobs.get: a status.errorResult fails the query as above; without
//     one they are warnings and the rows are read;
//   - a job that fails while being polled arrives as an HTTP error of
//     getQueryResults and is classified the same way; a cancelled job
//     (reason "stopped") is kUnavailable.
// An error from Next() is sticky. A reader that fails, or is destroyed while
// its job runs or pages remain unfetched, sends jobs.cancel?location= once
// (best effort, not retried); Query() cancels the job it created when it
// fails while polling. QueryOptions::cancel is checked before jobs.query,
// before and after each wait between getQueryResults polls, and before each
// page fetch: once set, the job is cancelled as above and kCancelled
// returned, with no further poll (a getQueryResults already waiting on the
// server, up to its timeoutMs, ends first). One page's parsed JSON (at most max_results rows and
// 10 MB of text) is held at a time.
//
// change_detection: warehouse (Source::warehouse_change_detection()) runs
// through pass tables in the dataset `state_schema` of project_id
// (../warehouse_sql/pass_change_detection.h, bigquery_change_detection.cc);
// its statements are jobs.query calls with positional STRING parameters
// (parameterMode POSITIONAL), and DDL/DML jobs answer no schema and no rows.
//
// Thread-safety: a source and its readers are used from one thread at a
// time; the token cache is shared by the readers of a source.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/model/value.h"
#include "backflow/sources/source.h"
#include "backflow/sources/warehouse_sql/pass_change_detection.h"
#include "nlohmann/json.hpp"

namespace backflow {

inline constexpr char kBigQueryScope[] = "https://www.googleapis.com/auth/bigquery";
inline constexpr char kBigQueryDefaultBaseUrl[] = "https://bigquery.googleapis.com";
inline constexpr char kGoogleDefaultTokenUrl[] = "https://oauth2.googleapis.com/token";

// The definition of the "bigquery" source type (settings: project_id,
// location, service_account_key, token_url, max_results, query_timeout_s,
// maximum_bytes_billed, base_url, timeout_ms, max_retries,
// max_retry_wait_s).
SourceDefinition BigQuerySourceDefinition();

// One schema.fields[] entry (TableFieldSchema), with nested fields for
// RECORD/STRUCT.
struct BigQueryField {
  std::string name;
  std::string type;  // upper-cased as sent ("INTEGER", "INT64", "RECORD"...)
  std::string mode;  // "NULLABLE", "REQUIRED" or "REPEATED" (upper-cased)
  std::vector<BigQueryField> fields;
};

// Parses one TableFieldSchema. kInternal naming what is missing.
absl::StatusOr<BigQueryField> ParseBigQueryField(const nlohmann::json& field);

// The Backflow column for a top-level field: name, ValueType per the mapping
// above, and source_type such as "NUMERIC", "STRING REPEATED" or
// "RECORD<a INTEGER, b STRING>".
Column BigQueryColumn(const BigQueryField& field);

// Decodes the "v" of one top-level cell. kInternal, naming the column, for a
// cell that does not match its field's type.
absl::StatusOr<Value> DecodeBigQueryCell(const BigQueryField& field, const nlohmann::json& v);

// A TIMESTAMP cell as ISO-8601 UTC ("2024-06-01T00:02:03.123Z"): integer
// microseconds since the epoch ("1717200123123000"), decimal or E-notation
// seconds ("1717200123.123", "1.7172001231230001E9"; exact decimal
// arithmetic, rounded half away from zero to the microsecond), or an
// ISO-8601 string ending in Z. kInvalidArgument for anything else or a
// time outside 0001-01-01..9999-12-31.
absl::StatusOr<std::string> BigQueryTimestampText(std::string_view v);

// ISO-8601 UTC text for microseconds since the epoch (trailing fraction
// zeros dropped, no fraction when whole seconds).
std::string IsoFromUnixMicros(int64_t micros);

// Whether `name` is a dataset name BigQuery accepts (letters, digits, '_';
// at most 1024 characters).
bool IsBigQueryDatasetName(std::string_view name);

// Runs one statement whose `?` take `parameters` (positional STRING query
// parameters); DDL and DML statements read as no columns and no rows.
// `cancel` (may be null) as QueryOptions::cancel.
using BigQuerySqlRunner = std::function<absl::StatusOr<std::unique_ptr<RowReader>>(
    const std::string& sql, const std::vector<std::string>& parameters,
    const std::atomic<bool>* cancel)>;

// Who runs the statements and where, for DDL and privilege advice.
struct BigQueryWarehouseContext {
  std::string project_id;
  std::string location;  // empty: BigQuery's default (US) for new datasets
  std::string client_email;
};

// BigQuery's SQL for change_detection: warehouse (bigquery_change_detection.cc).
std::unique_ptr<WarehouseSql> NewBigQueryWarehouseSql(BigQuerySqlRunner run,
                                                      BigQueryWarehouseContext context);

}  // namespace backflow
