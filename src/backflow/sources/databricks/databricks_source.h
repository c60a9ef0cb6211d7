// Databricks source ("databricks"): runs a model's SQL on a Databricks SQL
// warehouse through the SQL Statement Execution API 2.0
// (../shared/reference/warehouses.md §3) and streams the result one chunk
// at a time.
//
// Auth, on every API request (never on cloud-storage downloads):
//   personal access token: "Authorization: Bearer dapi..." (`token`);
//   OAuth M2M (a service principal's `client_id` + `client_secret`): a
//     client-credentials grant POSTed to `token_url` (default
//     {base_url}/oidc/v1/token) with HTTP Basic client auth and
//     scope=all-apis; the access token (1 h) is cached until 5 minutes before
//     it expires and re-minted once when the API answers 401.
//
// Query(sql):
//   1. POST {base_url}/api/2.0/sql/statements/ with {"statement",
//      "warehouse_id", "catalog"?, "schema"?, "wait_timeout": "<N>s",
//      "on_wait_timeout": "CONTINUE", "disposition", "format": "JSON_ARRAY"}.
//      The server holds the reply up to wait_timeout, so this request's HTTP
//      timeout is at least wait_timeout + 10 s. 429 and 5xx replies (and
//      400s that say the warehouse's cluster is not ready) are retried with
//      backoff (Retry-After honoured) on the injected clock. Databricks has
//      no idempotency key: a re-sent submit after a lost reply may leave a
//      first, unreferenced run of the read-only query behind.
//   2. While status.state is PENDING or RUNNING: GET .../statements/{id}
//      after 100 ms, the wait doubling up to 2 s, on the clock. A statement
//      still running after query_timeout_s is cancelled (kDeadlineExceeded).
//   3. SUCCEEDED: manifest.schema.columns gives the schema before any row;
//      a manifest with truncated=true fails (kFailedPrecondition: the rows
//      would not be the whole model). Chunk 0 comes with the reply; chunk
//      i+1 is fetched only when the reader has used up chunk i (following
//      next_chunk_internal_link, else GET .../result/chunks/{i+1}), so one
//      chunk is held at a time. Each chunk must hold its row_count rows and
//      all chunks total_row_count rows; anything else is kDataLoss, never a
//      clean end.
//   Dispositions (`disposition`):
//     inline: rows come in the API replies (data_array). Databricks fails a
//       statement whose result exceeds 25 MiB ("Inline byte limit
//       exceeded"): kFailedPrecondition naming the setting.
//     external_links: each reply carries a presigned cloud-storage link per
//       chunk; it is downloaded with a plain GET carrying exactly the
//       link's http_headers and no Authorization header. A link within
//       link_refresh_margin of its expiration, or refused by the storage
//       (400/401/403/404, e.g. S3's 403 "Request has expired"), is replaced
//       by a fresh one from GET .../result/chunks/{i} (at most
//       max_link_refreshes times per chunk). The body is a compact
//       [[...],[...]] JSON array, decoded one row at a time (the body is
//       held, not a parsed tree). Links and their headers are secrets:
//       messages never quote them. Replies that carry data_array instead
//       of links are read inline.
//     auto (default): inline first; when Databricks fails the statement
//       for the inline byte limit, it is run again with external_links.
//   Dropping a reader before its end, or a reader that failed while the
//   statement ran or chunks remained, sends POST .../statements/{id}/cancel
//   (one attempt, errors ignored). Databricks may ignore a cancel; nothing
//   waits for it.
//   QueryOptions::cancel is checked before each submit, before and after
//   each wait between status polls, and before each chunk fetch: once set,
//   the statement is cancelled as above and kCancelled returned, with no
//   further poll (a submit the server holds for wait_timeout_s ends first).
//
// Type mapping (JSON_ARRAY: every cell is a JSON string or null, decoded by
// the column's type, never by looking at the cell; the type is the leading
// keyword of type_text when known, else type_name):
//   BIGINT/LONG, INT, SMALLINT/SHORT, TINYINT/BYTE -> kInt64
//   DECIMAL(p,s)        -> kDecimal, exact text as sent ("12.50"); an
//                          exponent form ("0E-10") is expanded exactly
//   DOUBLE, FLOAT       -> kDouble ("NaN", "Infinity", "-Infinity" accepted)
//   BOOLEAN             -> kBool
//   DATE                -> kDate "YYYY-MM-DD"
//   TIMESTAMP           -> kTimestamp ISO-8601 UTC "2024-06-01T00:02:03.123Z"
//                          (accepts a Z, +0000, +00:00 or no suffix and any
//                          offset, converted to UTC; trailing fraction zeros
//                          dropped)
//   TIMESTAMP_NTZ       -> kTimestamp without zone "2024-06-01T00:02:03.123"
//   STRING, CHAR, VARCHAR, INTERVAL, VOID and unknown types -> kString
//   BINARY (base64)     -> kBytes; a cell that is not base64 fails, naming
//                          base64(col) / hex(col) as the fix
//   ARRAY, MAP, STRUCT, VARIANT -> kJson: the rendering compacted when it is
//                          strict JSON; otherwise (warehouses render e.g.
//                          ARRAY<DATE> as [2021-07-20,2021-07-19]) the
//                          rendering as a JSON string, so wrap the column in
//                          to_json() in SQL for structured values.
//
// Errors:
//   FAILED inside an HTTP 200 -> kInvalidArgument quoting status.error
//     (error_code, SQLSTATE, message), except: TEMPORARILY_UNAVAILABLE,
//     WORKSPACE_TEMPORARILY_UNAVAILABLE and SERVICE_UNDER_MAINTENANCE are
//     re-submitted up to max_retries times, then kUnavailable;
//     INTERNAL_ERROR/IO_ERROR/UNKNOWN/ABORTED/CANCELLED -> kUnavailable;
//     RESOURCE_EXHAUSTED -> kResourceExhausted; DEADLINE_EXCEEDED ->
//     kDeadlineExceeded; UNAUTHENTICATED -> kUnauthenticated;
//     [INSUFFICIENT_PERMISSIONS] -> kPermissionDenied naming the grants;
//     an unknown configured catalog/schema -> kFailedPrecondition naming
//     the setting; the inline byte limit -> see dispositions.
//   CANCELED or CLOSED -> kUnavailable (cancelled elsewhere / results gone).
//   HTTP (after retries): 401 -> kUnauthenticated (what to check for the
//     PAT or the service principal); 403 -> kPermissionDenied (workspace
//     access, CAN USE on the warehouse); 404 or 400 about the warehouse ->
//     kFailedPrecondition naming warehouse_id; 404 on submit otherwise ->
//     kFailedPrecondition naming host/base_url; 404 on a statement ->
//     kUnavailable; other 400 -> kInvalidArgument; 429 ->
//     kResourceExhausted; 5xx, transport -> kUnavailable/kDeadlineExceeded.
// An error from Next() is sticky.
//
// change_detection: warehouse (Source::warehouse_change_detection()) runs
// through pass tables in `state_schema` of the statements' catalog (the
// `catalog` setting, else the workspace default)
// (../warehouse_sql/pass_change_detection.h, databricks_change_detection.cc);
// its statements carry "parameters" ([{"name": "p1", "value": ..., "type":
// "STRING"}]) for :p1, :p2, ... markers. Statements without a result (DDL)
// read as zero rows; a privilege refusal names the grants on the state
// schema instead of the model's.
//
// Thread-safety: a source and its readers are used from one thread at a
// time; the OAuth token cache is thread-safe. The HttpClient and Clock of
// the ConnectorEnv must outlive the source and its readers.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/model/value.h"
#include "backflow/sources/source.h"
#include "backflow/sources/warehouse_sql/pass_change_detection.h"
#include "nlohmann/json.hpp"

namespace backflow {

// The definition of the "databricks" source type.
SourceDefinition DatabricksSourceDefinition();

inline constexpr char kDatabricksStatementsPath[] = "/api/2.0/sql/statements";
inline constexpr char kDatabricksTokenPath[] = "/oidc/v1/token";
inline constexpr char kDatabricksOAuthScope[] = "all-apis";
// Databricks' limits (§3.3, §3.5).
inline constexpr size_t kDatabricksMaxStatementBytes = 16 * 1024 * 1024;
inline constexpr int64_t kDatabricksInlineByteLimit = 26'214'400;  // 25 MiB

enum class DatabricksAuth { kPersonalAccessToken, kOAuthM2M };
enum class DatabricksDisposition { kAuto, kInline, kExternalLinks };

struct DatabricksConfig {
  std::string host;  // as the user gave it (may be empty when base_url is set)
  std::string warehouse_id;
  std::string catalog;
  std::string schema;
  DatabricksAuth auth = DatabricksAuth::kPersonalAccessToken;
  std::string token;  // PAT
  std::string client_id;
  std::string client_secret;
  std::string token_url;  // OAuth M2M token endpoint
  DatabricksDisposition disposition = DatabricksDisposition::kAuto;
  int64_t wait_timeout_s = 10;     // 0, or 5..50
  int64_t query_timeout_s = 3600;  // 0: no client-side limit
  // The schema of change_detection: warehouse's tables (a plain identifier).
  std::string state_schema = "backflow_state";
  HttpSettings http;  // base_url, timeout, retry policy
  // Status polling: the first wait, doubling up to the cap.
  std::chrono::milliseconds poll_initial{100};
  std::chrono::milliseconds poll_max{2000};
  // External links: replaced this long before their expiration, and at
  // most this many times per chunk when storage refuses them.
  std::chrono::seconds link_refresh_margin{30};
  int max_link_refreshes = 3;
};

// Reads settings already checked against the definition (defaults filled
// in). kInvalidArgument, naming the setting, for a missing host/base_url or
// warehouse_id, no or two kinds of credentials, an incomplete client
// id/secret pair, a wait_timeout_s outside 0 and 5..50, or a bad base_url.
absl::StatusOr<DatabricksConfig> ParseDatabricksSettings(const nlohmann::json& settings);

absl::StatusOr<std::unique_ptr<Source>> NewDatabricksSource(DatabricksConfig config,
                                                            const ConnectorEnv& env);

// --- Exposed for tests and the fake server. ---------------------------------

// A named STRING parameter of a statement (`:name` in its text).
struct DatabricksParameter {
  std::string name;
  std::string value;
};

// Runs one statement with named STRING parameters; `cancel` (may be null) as
// QueryOptions::cancel.
using DatabricksSqlRunner = std::function<absl::StatusOr<std::unique_ptr<RowReader>>(
    const std::string& sql, const std::vector<DatabricksParameter>& parameters,
    const std::atomic<bool>* cancel)>;

// Databricks' dialect of the pass-table change detection, running its
// statements through `run`.
std::unique_ptr<WarehouseSql> NewDatabricksWarehouseSql(DatabricksSqlRunner run);

// `name` as a backquoted identifier (backquotes doubled).
std::string DatabricksQuoteIdentifier(std::string_view name);

// `sql` with its `?` placeholders (outside literals, quoted names and `--`
// comments) replaced by :p1, :p2, ...; kInternal unless there are exactly
// `bindings` of them.
absl::StatusOr<std::string> DatabricksNamedMarkers(const std::string& sql, size_t bindings);

// "https://<host>" for a workspace host or URL ("dbc-1.cloud.databricks.com",
// "https://adb-12.3.azuredatabricks.net/?o=12#"): lowercased, without path,
// query or trailing slash; an http:// URL keeps its scheme.
std::string DatabricksDefaultBaseUrl(std::string_view host);

// One manifest.schema.columns[] entry and how its cells decode.
struct DatabricksColumnType {
  Column column;          // name, ValueType, source_type (type_text)
  std::string type_name;  // as sent, upper-cased ("LONG", "DECIMAL")
  std::string kind;       // the effective type keyword ("BIGINT", "TIMESTAMP_NTZ")
};

// Reads one column entry. kDataLoss when it has no name or type.
absl::StatusOr<DatabricksColumnType> ParseDatabricksColumn(const nlohmann::json& column);

// Decodes one JSON_ARRAY cell of a column. kDataLoss, naming the column,
// for a cell that does not fit the column's type.
absl::StatusOr<Value> DecodeDatabricksCell(const DatabricksColumnType& type,
                                           const nlohmann::json& cell);

// A TIMESTAMP cell as ISO-8601 UTC with Z ("2024-06-01T00:02:03.123Z"):
// "YYYY-MM-DD[T| ]HH:MM[:SS[.fraction]]" followed by Z, +HHMM, +HH:MM, +HH
// (or -), or nothing (UTC). kInvalidArgument for anything else.
absl::StatusOr<std::string> DatabricksTimestampText(std::string_view text);

// Reads a JSON_ARRAY chunk body ("[[...],[...]]", whitespace tolerated) one
// row at a time, parsing only the row being read.
class JsonArrayRowScanner {
 public:
  JsonArrayRowScanner() = default;
  explicit JsonArrayRowScanner(std::string text) : text_(std::move(text)) {}

  // Replaces `row` with the next row (a JSON array). false at the end of
  // the outer array. kDataLoss for text that is not an array of arrays
  // (including a body cut short).
  absl::StatusOr<bool> Next(nlohmann::json& row);

 private:
  std::string text_;
  size_t pos_ = 0;
  bool started_ = false;
  bool after_row_ = false;
  bool done_ = false;
};

}  // namespace backflow
