// ClickHouse source ("clickhouse"): runs a model's SQL through the ClickHouse
// HTTP interface (../shared/reference/warehouses.md §5) and decodes the
// RowBinaryWithNamesAndTypes result as its bytes arrive, so memory holds one
// network buffer and one row, never the result.
//
// Query(sql): POST {base_url}/?<params> with the SQL as the body
// (Content-Type text/plain) and
//   database=<database> (when set), query_id=<query_id_prefix>-<uuid v4>
//   (a fresh id per attempt), default_format=RowBinaryWithNamesAndTypes,
//   readonly=2 (when `readonly`: reads only, settings may still be set),
//   max_execution_time=<query_timeout_s>,
//   cancel_http_readonly_queries_on_client_close=1,
//   enable_http_compression=1 (when `compression`; libcurl offers every
//   encoding it decodes in Accept-Encoding), and the user's `settings`.
// Auth: X-ClickHouse-User / X-ClickHouse-Key headers, or HTTP Basic
// (auth: basic) for proxies that want an Authorization header. The body is
// read with HttpStreamClient: the response headers, then the header block
// (names and types: the schema, known before the first row), then rows as
// Next() asks for them. Rows are decoded by the column types of the header
// (clickhouse_rowbinary.h has the type mapping), never by the bytes.
//
// Errors before the body (a non-200 status, or a 200 carrying
// X-ClickHouse-Exception-Code) quote ClickHouse's "Code: N. DB::Exception:"
// text and are classified by exception code, then status:
//   retried with exponential backoff and full jitter on the clock, up to
//   max_retries, each attempt with a new query_id (the previous attempt's
//   query is killed first when a transport error left it unknown):
//   transport errors and resets before the schema arrived, 502/503/504, a
//   500 without exception code, TOO_MANY_SIMULTANEOUS_QUERIES (202),
//   SOCKET_TIMEOUT (209), NETWORK_ERROR (210), NO_FREE_CONNECTION (203),
//   ALL_CONNECTION_TRIES_FAILED (279), QUERY_WAS_CANCELLED (394),
//   QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING (216), CANNOT_SCHEDULE_TASK (439),
//   MEMORY_LIMIT_EXCEEDED (241) when the server's total memory was exhausted
//   ("(total)" in the message); a 429 from a proxy honours Retry-After.
//   Exhausted: kResourceExhausted for 202 and 429, else kUnavailable /
//   kDeadlineExceeded.
//   REQUIRED_PASSWORD (194, HTTP 401), UNKNOWN_USER (192), WRONG_PASSWORD
//   (193), AUTHENTICATION_FAILED (516) -> kUnauthenticated (check user and
//   password); IP_ADDRESS_NOT_ALLOWED (195), ACCESS_DENIED (497),
//   DATABASE_ACCESS_DENIED (291), UNKNOWN_ROLE / SET_NON_GRANTED_ROLE
//   (511/512) -> kPermissionDenied (quoting the missing grant);
//   READONLY (164), READONLY_SETTING (472), SETTING_CONSTRAINT_VIOLATION
//   (452), UNKNOWN_SETTING (115), UNKNOWN_FORMAT (73), TIMEOUT_EXCEEDED
//   (159, HTTP 408), TOO_MANY_ROWS/BYTES (158/307/396), other
//   MEMORY_LIMIT_EXCEEDED, UNKNOWN_DATABASE (81) for the configured
//   database -> kFailedPrecondition naming what to change;
//   every other exception (SYNTAX_ERROR 62, UNKNOWN_TABLE 60,
//   UNKNOWN_IDENTIFIER 47, ... with 400/404/413/500/501) -> kInvalidArgument:
//   the model's SQL is at fault. Without an exception code: 401
//   kUnauthenticated, 403 kPermissionDenied, a reply from the native port
//   ("Port 9000 is for clickhouse-client") or any other status
//   kFailedPrecondition about base_url.
//
// Errors after the 200 (mid-stream) never end the result cleanly; the
// rows already returned may not be trusted. Three framings are recognised
// where a row would start (and, after a failure, anywhere in the bytes
// held): 25.11+ with an X-ClickHouse-Exception-Tag header:
// "\r\n__exception__\r\n<tag>\r\n<message>\n<length> <tag>\r\n__exception__\r\n";
// 24.11+: "__exception__" on its own line then the message, the chunked
// framing broken; older servers: "Code: N. DB::Exception: ..." appended to
// the data. X-ClickHouse-Exception-Code in the HTTP trailers also fails the
// result. A found exception is classified as above (retryable codes become
// kUnavailable, others kInvalidArgument / kFailedPrecondition); a body that
// is cut short (broken chunked framing, reset, truncated row) is
// kUnavailable; bytes that do not decode as the announced types are
// kDataLoss. Errors from Next() are sticky. Nothing is retried once the
// reader exists.
//
// Cancel: a reader destroyed before the clean end (or that failed while the
// query may still run) closes its connection, then sends
// `KILL QUERY WHERE query_id = '<id>' ASYNC` on a second connection (one
// attempt, errors ignored): closing alone does not stop a ClickHouse query
// unless cancel_http_readonly_queries_on_client_close applies.
// A run's cancel flag (QueryOptions::cancel): already set, no request is
// sent. While a request waits for the answer (ClickHouse sends its headers
// with the first block) and until the reader ends, a watcher thread reads the
// flag every 100 ms and, once it is true, sends that KILL QUERY (through the
// thread-safe env.http); the waiting request then ends (QUERY_WAS_CANCELLED,
// 394, or a cut body) and Query() / Next() return kCancelled, whatever the
// answer was, without retrying. Next() also checks the flag before each row
// (killing the query itself if the watcher has not), and a retry's backoff
// sleeps in steps of at most a second, checking it in between.
//
// change_detection: warehouse (Source::warehouse_change_detection()) runs
// through pass tables in the database `state_schema`
// (../warehouse_sql/pass_change_detection.h, clickhouse_change_detection.cc).
// Its statements carry their values as query parameters ({p0:String} in the
// SQL, param_p0=<value> in the URL), are sent without readonly (they create
// and write that database's tables; the model's SQL only ever runs inside
// CREATE TABLE ... AS SELECT) and may answer with an empty body.
//
// CheckConnection() runs SELECT version(), currentUser(), currentDatabase()
// and fails with kFailedPrecondition when the configured database is not the
// one in effect.
//
// Thread-safety: a source and its readers are used from one thread at a
// time. The HttpClient (for KILL QUERY) and Clock of the ConnectorEnv must
// outlive the source and its readers.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/common/http_stream.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/sources/source.h"
#include "backflow/sources/warehouse_sql/pass_change_detection.h"
#include "nlohmann/json.hpp"

namespace backflow {

// The definition of the "clickhouse" source type.
SourceDefinition ClickHouseSourceDefinition();

enum class ClickHouseAuth { kHeaders, kBasic };

// When change_detection: warehouse purges the tombstones of removed keys
// from its checkpoint table (clickhouse_change_detection.cc): after an
// Apply() with removes, once a mapping's tombstone rows are at least
// `min_tombstones` and at least `min_fraction` of its rows (both 0: after
// every Apply() with removes). One purge handles at most `max_keys` keys;
// the rest wait for the next one.
struct ClickHouseCheckpointPurge {
  int64_t min_tombstones = 1000;
  double min_fraction = 0.1;
  int64_t max_keys = 50000;
};

struct ClickHouseConfig {
  std::string base_url;  // http(s)://host:port[/path], without a trailing '/'
  std::string user = "default";
  std::string password;
  ClickHouseAuth auth = ClickHouseAuth::kHeaders;
  std::string database;  // empty: the user's default database
  bool readonly = true;
  bool compression = true;
  int64_t query_timeout_s = 3600;  // max_execution_time
  // Extra query settings sent as URL parameters (validated names).
  std::map<std::string, std::string> settings;
  std::string query_id_prefix = "backflow";
  // Connecting, and the KILL QUERY request.
  std::chrono::milliseconds timeout{30'000};
  RetryPolicy retry;
  // Body bytes the HTTP stream holds before it pauses the transfer.
  size_t stream_buffer_bytes = 64 * 1024;
  // The database of change_detection: warehouse's tables (a plain identifier).
  std::string state_schema = "backflow_state";
  // Not a setting: when its checkpoint's removed keys are purged.
  ClickHouseCheckpointPurge checkpoint_purge;
};

// Reads settings already checked against the definition (defaults filled
// in). kInvalidArgument, naming the setting, for a missing or non-http(s)
// base_url, a bad query_id_prefix, or `settings` that are not plain names or
// that Backflow sets itself.
absl::StatusOr<ClickHouseConfig> ParseClickHouseSettings(const nlohmann::json& settings);

// Builds a source. `stream` (null: a libcurl stream client owned by the
// source) carries the queries; env.http carries KILL QUERY.
absl::StatusOr<std::unique_ptr<Source>> NewClickHouseSource(
    ClickHouseConfig config, const ConnectorEnv& env,
    std::shared_ptr<HttpStreamClient> stream = nullptr);

// The reader Query() returns, for tests that observe its memory and query id.
class ClickHouseRowReader : public RowReader {
 public:
  virtual const std::string& query_id() const = 0;
  // The most undecoded body bytes the reader held at once (the HTTP stream
  // holds up to stream_buffer_bytes + 16 KiB more).
  virtual size_t peak_buffered_bytes() const = 0;
};

// --- Exposed for tests and the fake server. ---------------------------------

// A ClickHouse exception, from "Code: 60. DB::Exception: Table x.y does not
// exist. (UNKNOWN_TABLE) (version 25.3.1.1)".
struct ClickHouseException {
  int code = 0;         // 0: unknown
  std::string name;     // "UNKNOWN_TABLE" when the text names it
  std::string message;  // the text, trimmed (at most 2000 bytes)
};
ClickHouseException ParseClickHouseException(std::string_view text);

// Where a mid-stream exception starts in `bytes` (unparsed body bytes that
// begin where a row would): kNotFound, kNeedMore (the bytes are a proper
// prefix of an exception opening; read more unless at the end), or kFound.
// `tag` is the X-ClickHouse-Exception-Tag value ("" when absent).
enum class ClickHouseExceptionScan { kNotFound, kNeedMore, kFound };
ClickHouseExceptionScan ScanClickHouseException(std::string_view bytes, std::string_view tag);

// The exception in `bytes` (anywhere, for scanning what a failed body held,
// or from the start of a kFound block to the end of the body), if any.
std::optional<ClickHouseException> FindClickHouseException(std::string_view bytes,
                                                           std::string_view tag);

// The transient exception codes retried before the body (see above).
bool IsRetryableClickHouseCode(int code, std::string_view message);

// Runs one statement whose query parameters are `params` (name, value), sent
// as param_<name>; a statement without result (DDL, INSERT) gives a reader
// with no columns. `cancel` (may be null) as QueryOptions::cancel.
using ClickHouseSqlRunner = std::function<absl::StatusOr<std::unique_ptr<RowReader>>(
    const std::string& sql, const std::vector<std::pair<std::string, std::string>>& params,
    const std::atomic<bool>* cancel)>;

// ClickHouse's dialect of the pass-table change detection, running its
// statements through `run`.
std::unique_ptr<WarehouseSql> NewClickHouseWarehouseSql(ClickHouseSqlRunner run,
                                                        ClickHouseCheckpointPurge purge = {});

// `sql` with its i-th `?` placeholder (outside quoted strings, quoted
// identifiers and comments) written as the query parameter {p<i>:String}.
// kInternal when `sql` holds another number of placeholders than `count`.
absl::StatusOr<std::string> ClickHouseNamedParameters(std::string_view sql, size_t count);

}  // namespace backflow
