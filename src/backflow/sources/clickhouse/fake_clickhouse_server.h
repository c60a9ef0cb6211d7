// FakeClickHouseServer: a protocol-faithful fake of a modern ClickHouse
// server's HTTP interface (../shared/reference/warehouses.md §5), backed by
// SQLite, for tests. It models a 24.x/25.x server, not Debian's 18.16.
//
// Data: each ClickHouse database is an SQLite schema ("default" is main,
// others are attached in-memory databases), so a query names tables
// unqualified or as db.table. CreateTable() declares ClickHouse column types
// (the SQLite columns are untyped: values are stored exactly as inserted).
// A result column's type is the type of the table column it reads (through
// subqueries too), else inferred from the values (INTEGER -> Int64, REAL ->
// Float64, TEXT/BLOB -> String, Nullable(...) when a NULL occurs,
// Nullable(Nothing) when all are NULL). Stored values are converted to the
// column type: integers from INTEGER or decimal TEXT (any width);
// Decimal(P,S) from TEXT or numbers, exactly; Bool from 0/1/'true'/'false';
// Date/Date32 from 'YYYY-MM-DD'; DateTime/DateTime64 from epoch seconds or
// 'YYYY-MM-DD hh:mm:ss[.fff]' read in the column's time zone (else the
// server's); UUID/IPv4/IPv6 from text; Enum from its label; Array, Map and
// Tuple from JSON text ([...], {...}, [...] or {...} for named tuples).
// SQL functions version(), currentUser(), currentDatabase(), timezone() and
// throwIf(cond[, message]) (code 395 FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)
// are available.
// ClickHouse forms it translates (for change_detection: warehouse; SQLite
// runs the rest):
//   {name:Type} query parameters, bound from param_<name> (missing: 400 code
//   456; an Int*/UInt* value that is not an integer: code 457); CREATE
//   DATABASE [IF NOT EXISTS] d (an attached in-memory database; exists: code
//   82); CREATE TABLE [IF NOT EXISTS] t (col Type, ...) ENGINE = <*MergeTree>
//   [(args)] ORDER BY <key> (the types are recorded) and CREATE TABLE t
//   ENGINE = ... ORDER BY ... AS SELECT ... (the columns keep the types of
//   the table columns they read), without ENGINE code 119, an existing table
//   code 57; UNION DISTINCT; (SELECT arrayJoin(JSONExtractArrayRaw(x)) AS v)
//   (one row per element, its JSON text); functions toString, length (bytes),
//   MD5 (16 bytes; hex() and lower() are SQLite's), concat (NULL if an
//   argument is), assumeNotNull, toInt64, JSONExtractString(json[, index]),
//   JSONExtract(json, 'Array(String)') (the fake carries the array as its
//   JSON text; [] when `json` is not an array of strings), has(array, x) and
//   the aggregate argMax(value, version). Lightweight DELETE FROM t WHERE ...
//   is SQLite's DELETE: the rows are gone for every later query when it
//   answers, as with ClickHouse's default lightweight_deletes_sync (the
//   statement waits for the mutation); its asynchronous form is not
//   modelled. Not modelled: engines' merges (a ReplacingMergeTree table
//   keeps every inserted row, which real ClickHouse may do until it merges,
//   so reads must not rely on merges); names are case-insensitive.
//   Statements without result columns (DDL, INSERT) answer with an empty
//   body, as ClickHouse does. Privilege refusals are scripted with
//   FailNext(FakeClickHouseFailure::Before(497, "...", "<statement text>")).
//
// Requests (POST with the SQL as body, optionally prefixed by ?query=; GET
// with ?query=; GET /ping answers "Ok."), checked in this order:
//   1. auth: X-ClickHouse-User/X-ClickHouse-Key headers, HTTP Basic, or
//      ?user=&password=; more than one method is 403 code 516; none means
//      user "default" without password. No credentials for a user with a
//      password: 401 code 194 REQUIRED_PASSWORD; unknown user or wrong
//      password: 403 code 516 AUTHENTICATION_FAILED (same message for both).
//   2. parameters: database (or X-ClickHouse-Database) must exist (404 code
//      81); every parameter that is not query/database/user/password/
//      query_id/default_format/session_*/param_*/role is a setting and must
//      be a known one (404 code 115 UNKNOWN_SETTING). Settings apply in URL
//      order: while readonly is 1 (the user's profile, or an earlier
//      readonly=1) changing one is 500 code 164 READONLY; with readonly >= 1
//      writes (INSERT, CREATE, ALTER, DROP...) are 500 code 164.
//   3. the statement: KILL QUERY WHERE query_id = '...' [ASYNC|SYNC] marks
//      that running query killed (recorded in Kills()) and answers a
//      TabSeparated row; several statements are 400 code 62.
//   4. the next scripted failure whose `match` is in the SQL (see
//      FakeClickHouseFailure); then the concurrency limit (500 code 202
//      TOO_MANY_SIMULTANEOUS_QUERIES) and query_id uniqueness (500 code 216
//      unless replace_running_query=1).
//   5. the query runs on SQLite: SQLite errors become ClickHouse exceptions
//      (no such table -> 404 code 60, no such column -> 404 code 47, syntax
//      -> 400 code 62, other -> 500 code 1001); tables outside the user's
//      grants -> 403 code 497 ACCESS_DENIED. A throwIf() that fires within
//      the first block is a 500 code 395 before the body; later, the blocks
//      before it are sent and the exception follows mid-stream.
// Errors before the body: the status ClickHouse maps the code to,
// X-ClickHouse-Exception-Code, a text/plain body
// "Code: N. DB::Exception: <message>. (NAME) (version V)\n".
// Success: 200 with X-ClickHouse-Query-Id (the query_id, or a generated
// UUID), X-ClickHouse-Format, X-ClickHouse-Timezone,
// X-ClickHouse-Server-Display-Name, X-ClickHouse-Summary (JSON of string
// counters) and, with the kTag framing, X-ClickHouse-Exception-Tag (16
// lowercase letters and digits, on every response); the body is chunked,
// one block of `block_rows` rows per chunk, in the format of a trailing
// FORMAT clause, else default_format, else X-ClickHouse-Format, else
// TabSeparated: RowBinaryWithNamesAndTypes (exact encoding, see
// clickhouse_rowbinary.h), TabSeparated(WithNames) or JSONEachRow; others
// are 404 code 73. With enable_http_compression=1 and an Accept-Encoding
// that allows gzip the body is gzip (Content-Encoding: gzip); without the
// setting it never is.
// A failure after the first byte is written in the configured framing
// (FakeClickHouseOptions::framing). A query whose client closes the
// connection stops when cancel_http_readonly_queries_on_client_close=1 and
// readonly >= 1 (recorded as kCancelledOnClose); otherwise it keeps running
// (kClientGone; a stalled one stays in RunningQueries() until killed or
// released), as ClickHouse does.
//
// Thread-safety: every public method is thread-safe (one mutex guards the
// state and the SQLite connection). Start() returns kUnavailable if the
// port cannot be bound; Stop() (also run by the destructor) releases stalled
// queries and joins threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

// How an exception after the first body byte is written.
enum class ClickHouseExceptionFraming {
  // Before 24.11: "Code: N. DB::Exception: ..." appended to the data; the
  // body then ends normally.
  kAppendedText,
  // 24.11+: "\r\n__exception__\r\n<message>\n", then the connection is
  // closed without the final chunk.
  kMarker,
  // 25.11+: X-ClickHouse-Exception-Tag: <tag> on every response; on failure
  // "\r\n__exception__\r\n<tag>\r\n<message>\n<length> <tag>\r\n__exception__\r\n",
  // then the connection is closed without the final chunk.
  kTag,
};

struct FakeClickHouseOptions {
  std::string version = "25.11.2.24";
  ClickHouseExceptionFraming framing = ClickHouseExceptionFraming::kTag;
  // With kAppendedText only: also send X-ClickHouse-Exception-Code as an HTTP
  // trailer after a mid-stream failure (whether servers do is unverified).
  bool exception_code_trailer = false;
  std::string server_timezone = "UTC";
  std::string display_name = "fake-clickhouse";
  // Rows per block; each block is one chunk of the body.
  int64_t block_rows = 1000;
  int max_concurrent_queries = 100;
  // Honour enable_http_compression=1 (gzip only).
  bool compression = true;
};

struct FakeClickHouseUser {
  std::string name;
  std::string password;  // empty: none
  std::string default_database = "default";
  int profile_readonly = 0;  // the profile's readonly setting
  // Tables the user may read ("db.table", lowercase); empty: all.
  std::set<std::string> grants;
};

// One scripted failure, used by the next query whose SQL contains `match`.
struct FakeClickHouseFailure {
  std::string match;  // "" = any query
  int code = 202;     // exception code (its name is looked up)
  std::string message = "Too many simultaneous queries. Maximum: 1";
  // >= 0: the query streams this many rows (HTTP 200), then fails mid-stream.
  int64_t after_rows = -1;
  // Drop the connection (TCP reset) instead of answering.
  bool reset_connection = false;
  // Answer with this status instead of the one ClickHouse maps the code to.
  int http_status = 0;

  static FakeClickHouseFailure Before(int code, std::string message, std::string match = "");
  static FakeClickHouseFailure MidStream(int64_t after_rows, int code, std::string message,
                                         std::string match = "");
  static FakeClickHouseFailure Reset(std::string match = "");
};

struct ClickHouseQueryLog {
  enum class Outcome {
    kRunning,
    kFinished,          // the whole result was sent
    kRejected,          // an error status before the body
    kFailedMidStream,   // an exception after the first byte
    kKilled,            // KILL QUERY stopped it
    kCancelledOnClose,  // the client closed the connection; the query stopped
    kClientGone,        // the client closed the connection; the query ran on
  };
  std::string query_id;
  std::string user;
  std::string database;
  std::string sql;
  std::string auth;                           // "headers", "basic", "url" or "none"
  std::map<std::string, std::string> params;  // URL parameters (password removed)
  std::string format;
  std::string accept_encoding;
  bool compressed = false;
  int status = 0;  // 0 for a reset connection
  int exception_code = 0;
  int64_t rows_sent = 0;
  Outcome outcome = Outcome::kRunning;
};

struct ClickHouseKill {
  std::string query_id;
  std::string user;
  bool was_running = false;
};

class FakeClickHouseServer {
 public:
  explicit FakeClickHouseServer(FakeClickHouseOptions options = {});
  ~FakeClickHouseServer();
  FakeClickHouseServer(const FakeClickHouseServer&) = delete;
  FakeClickHouseServer& operator=(const FakeClickHouseServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url to configure.
  std::string BaseUrl() const;

  // --- Setup -----------------------------------------------------------------
  // The "default" user without password exists until a user named
  // "default" is added.
  void AddUser(FakeClickHouseUser user);
  absl::Status CreateDatabase(const std::string& name);
  // Creates `database`.`table` with ClickHouse column types, e.g.
  // {{"id","UInt64"},{"email","Nullable(String)"},{"at","DateTime('Europe/Berlin')"}}.
  absl::Status CreateTable(const std::string& database, const std::string& table,
                           const std::vector<std::pair<std::string, std::string>>& columns);
  // Runs SQLite SQL (inserts, updates...).
  absl::Status Exec(const std::string& sql);
  void set_block_rows(int64_t rows);
  void set_framing(ClickHouseExceptionFraming framing);
  void set_max_concurrent_queries(int n);

  // --- Scripting -------------------------------------------------------------
  void FailNext(FakeClickHouseFailure failure);
  // Queries stop after sending this many rows (< 0: off) and wait, as if
  // computing, until killed, released, or the server stops.
  void StallAfterRows(int64_t rows);
  // While on, queries that would answer with rows wait before their response
  // headers, as a query still computing its first block does: until KILL
  // QUERY names them (they then answer HTTP 500, X-ClickHouse-Exception-Code
  // 394, "Code: 394. DB::Exception: Query was cancelled. (QUERY_WAS_CANCELLED)"
  // and are logged kKilled), ReleaseStalled() (they stream normally; it also
  // turns this off) or Stop() (the connection is reset). A held query does
  // not notice its client leaving. With `match`, only queries whose SQL
  // contains it wait.
  void StallBeforeHeaders(bool on, std::string match = "");
  void ReleaseStalled();

  // --- Inspection ------------------------------------------------------------
  std::vector<ClickHouseQueryLog> Queries() const;
  std::vector<ClickHouseKill> Kills() const;
  int64_t RunningQueries() const;
  // Waits (real time) until a query is held by StallBeforeHeaders and returns
  // its query_id; nullopt on timeout.
  std::optional<std::string> WaitForHeldQuery(std::chrono::milliseconds timeout) const;
  // Waits (real time) until no query runs; false on timeout.
  bool WaitUntilIdle(std::chrono::milliseconds timeout) const;
  // Body bytes produced (before compression) for `query_id` so far.
  int64_t BytesProduced(const std::string& query_id) const;
  // Runs SQLite SQL directly: rows of JSON values (integers, doubles,
  // strings, null; blobs as strings), for comparing with what a sync sent.
  absl::StatusOr<std::vector<std::vector<nlohmann::json>>> Select(const std::string& sql) const;

 private:
  struct Run;
  struct Session;

  TestResponse Handle(const TestRequest& req);
  TestResponse ErrorReply(int code, const std::string& message, const std::string& tag,
                          int status_override = 0) const;
  // Fills `run` from SQLite; on failure returns the exception code and sets
  // `message` (and `failed_at_row` for throwIf()).
  int Execute(Run& run, const Session& session, std::string& message);
  TestResponse Stream(std::shared_ptr<Run> run);
  // The column types of a table made by CREATE TABLE ... AS `select`: those of
  // the table columns it reads (mu_ held).
  void RecordTypes(const std::string& table, const std::string& select);
  void Finish(Run& run, ClickHouseQueryLog::Outcome outcome);

  friend struct FakeClickHouseSqlFunctions;

  FakeClickHouseOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool stopping_ = false;
  std::unique_ptr<sqlite::Database> db_;
  std::set<std::string> databases_ = {"default"};
  // "db.table" -> column (lowercase) -> ClickHouse type
  std::map<std::string, std::map<std::string, std::string>> column_types_;
  std::map<std::string, FakeClickHouseUser> users_;
  std::deque<FakeClickHouseFailure> failures_;
  int64_t stall_after_rows_ = -1;
  bool stall_before_headers_ = false;
  std::string stall_match_;  // StallBeforeHeaders: only queries containing it
  uint64_t release_generation_ = 0;
  std::vector<std::shared_ptr<Run>> runs_;  // every query, in arrival order
  std::vector<ClickHouseKill> kills_;
  // Valid while a query runs on SQLite (mu_ held).
  const Session* current_session_ = nullptr;
  std::set<std::string> tables_read_;
};

}  // namespace backflow
