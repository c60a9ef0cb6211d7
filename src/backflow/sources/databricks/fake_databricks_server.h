// FakeDatabricksServer: a protocol-faithful fake of a Databricks workspace's
// SQL Statement Execution API 2.0, its OAuth M2M token endpoint and the
// cloud storage behind EXTERNAL_LINKS, backed by SQLite, for tests (see
// ../shared/reference/warehouses.md §3).
//
// Token endpoint (POST token_path, form-encoded): the client authenticates
// with "Authorization: Basic base64(client_id:client_secret)" of a
// registered service principal (else 401 {"error":"invalid_client"});
// grant_type must be client_credentials (400 unsupported_grant_type) and
// scope must include `required_scope` (400 invalid_scope). Success issues an
// opaque token valid for oauth_token_lifetime by the fake's clock:
// {"access_token","token_type":"Bearer","expires_in","scope"}.
//
// API (under /api/2.0/sql/statements), for each request in order:
//   1. "Authorization: Bearer <t>": a registered personal access token or an
//      issued, unexpired OAuth token, else 401 {"error_code":
//      "UNAUTHENTICATED"} (body shape unverified);
//   2. the first scripted fault whose method matches (after its `skip`
//      matching requests) answers instead, or after the request was applied
//      when `apply_first`; 429 faults carry Retry-After when set;
//   3. the method runs:
//   - POST /api/2.0/sql/statements[/] ("execute"): validates the body
//     (statement ≤ 16 MiB, warehouse_id, wait_timeout "0s" or "5s".."50s",
//     on_wait_timeout CONTINUE|CANCEL, disposition INLINE|EXTERNAL_LINKS,
//     format JSON_ARRAY; ARROW_STREAM/CSV are refused as unsupported by the
//     fake) with 400 INVALID_PARAMETER_VALUE. An unknown warehouse is
//     `unknown_warehouse_status` (404 RESOURCE_DOES_NOT_EXIST by default;
//     the real status is unverified); a principal denied the warehouse gets
//     403 PERMISSION_DENIED. The statement runs at once on SQLite (after
//     rewriting `catalog.schema.table` to schema.table and backticks to
//     double quotes; a schema is an attached SQLite database) and its result
//     is materialised and cut into chunks of at most chunk_rows rows and
//     chunk_bytes bytes of encoded rows. It then ends FAILED (in an HTTP
//     200) for: an unknown request catalog ([NO_SUCH_CATALOG_EXCEPTION]) or
//     schema ([SCHEMA_NOT_FOUND]), a denied schema
//     ([INSUFFICIENT_PERMISSIONS]), SQLite errors
//     ([TABLE_OR_VIEW_NOT_FOUND] 42P01, [UNRESOLVED_COLUMN] 42703,
//     [PARSE_SYNTAX_ERROR] 42601), a scripted FailNextStatement, or an
//     INLINE result over inline_byte_limit ("Inline byte limit exceeded..."
//     as Databricks words it); else SUCCEEDED. A result over
//     max_result_rows is cut and marked truncated. The reply shows the
//     terminal state at once unless wait_timeout is "0s" or the statement
//     has PENDING/RUNNING polls to go (then PENDING or RUNNING, or CANCELED
//     with on_wait_timeout=CANCEL).
//   - GET .../{id} ("status"): PENDING pending_polls times, then RUNNING
//     running_polls times, then the terminal reply: status (+error and
//     sql_state when FAILED), and when SUCCEEDED the manifest (format,
//     schema.columns with name/type_text/type_name/position and DECIMAL
//     precision/scale, total_row_count, total_chunk_count, chunks[],
//     total_byte_count for EXTERNAL_LINKS, truncated) and chunk 0 as
//     "result". A statement closed by ExpireResults() answers CLOSED.
//   - GET .../{id}/result/chunks/{i} ("chunk"): a bare ResultData for chunk
//     i (INLINE: data_array; EXTERNAL_LINKS: one fresh external link), with
//     next_chunk_index and next_chunk_internal_link when more follow. 404
//     for an unknown or closed statement, 400 for a statement that has not
//     succeeded or a chunk index out of range.
//   - POST .../{id}/cancel ("cancel"): recorded; a PENDING/RUNNING statement
//     becomes CANCELED; answers {}.
//   Unknown paths are 404 ENDPOINT_NOT_FOUND.
// Storage (GET storage_path/{id}/{chunk}?X-Amz-Signature=...: "download"),
// like a presigned S3 URL: a request carrying Authorization is 400 XML
// InvalidArgument "Only one auth mechanism allowed"; an unknown signature is
// 403 SignatureDoesNotMatch; a link past its expiration (link_lifetime after
// it was issued, by the fake's clock) is 403 AccessDenied "Request has
// expired"; the SSE-C headers of the link's http_headers must be sent as
// given (400 InvalidRequest otherwise). Success is the chunk's compact
// [[...],[...]] JSON.
//
// Cell encoding (JSON_ARRAY: strings or null). Column types come from
// SetColumnType (by result column name), else the column's declared SQLite
// type with the word TEXT dropped (declare e.g. `email STRING TEXT` or
// `score DECIMAL TEXT(38,9)` so SQLite keeps the text as-is; INTEGER maps to
// BIGINT, REAL to DOUBLE, BLOB to BINARY), else the first non-null value's
// storage class. BIGINT/INT/... are decimal text; DECIMAL(p,s) has exactly s
// decimals; DOUBLE/FLOAT Java-style ("1.5", "100.0", "1.0E10", "NaN",
// "Infinity"); BOOLEAN "true"/"false"; DATE as stored; TIMESTAMP (SQLite
// text "YYYY-MM-DD HH:MM:SS[.ffffff][Z|±HH:MM]" or integer epoch seconds)
// ISO-8601 UTC with milliseconds (microseconds when non-zero) and a "Z" or
// "+0000" suffix (timestamp_suffix; the real one is unverified);
// TIMESTAMP_NTZ the same without zone; BINARY base64 (unverified);
// ARRAY/MAP/STRUCT/VARIANT and STRING exactly as stored (so a test can store
// a non-JSON rendering such as [2021-07-20,2021-07-19]).
//
// SQL functions for the connection check: current_user() (the principal:
// the PAT's user or the service principal's client id), current_catalog()
// and current_schema() (the request's, else default_catalog /
// default_schema).
//
// The Databricks SQL beyond SQLite's that it understands (what
// change_detection: warehouse issues): "parameters" [{"name","value","type"}]
// for `:name` markers (BIGINT/INT/... as integers, anything else as text, a
// missing or null value as NULL); an unbound marker, or a positional `?`
// (which the API does not support), fails [UNBOUND_SQL_PARAMETER] 42P02.
// CREATE SCHEMA [IF NOT EXISTS] s (an attached in-memory database); CREATE
// TABLE [IF NOT EXISTS] t (...) with STRING columns (text affinity) and
// COLLATE UTF8_BINARY (byte order); CREATE TABLE t AS SELECT (t's columns
// keep the declared types of the columns they copy); CAST(x AS STRING);
// (SELECT explode(from_json(:p, 'ARRAY<STRING>')) AS value) (json_each:
// nested arrays as their JSON text); get_json_object(json, '$[i]'),
// md5(text) (lowercase hex), to_json(x) (the stored text); and MERGE INTO t
// AS a USING (select) AS b ON cond WHEN [NOT] MATCHED [AND cond] THEN DELETE
// | UPDATE SET ... | INSERT (...) VALUES (...), run as statements of one
// SQLite savepoint. INSERT/UPDATE/DELETE answer num_affected_rows (and
// num_inserted_rows), MERGE num_affected_rows, num_updated_rows,
// num_deleted_rows and num_inserted_rows, as Delta does; DDL (and CTAS)
// succeeds with a manifest of no columns and no rows (the real reply to DDL
// is unverified). DenyPrivilege() makes statements fail as a missing
// privilege does (FAILED BAD_REQUEST "[INSUFFICIENT_PERMISSIONS] ...",
// sql_state 42501).
//
// Thread-safety: every public method is thread-safe (one mutex guards the
// state and the SQLite connection). Start() returns kUnavailable if the port
// cannot be bound; Stop() (also run by the destructor) joins the threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct FakeDatabricksOptions {
  // The fake's time for token and link expiry; null: the system clock.
  // Must outlive the server.
  Clock* clock = nullptr;
  // The warehouse that exists from the start (AddWarehouse adds more).
  std::string warehouse_id = "abcdef0123456789";
  std::string token_path = "/oidc/v1/token";
  std::string storage_path = "/storage";
  std::string required_scope = "all-apis";
  std::chrono::seconds oauth_token_lifetime{3600};
  // Status polls answered PENDING, then RUNNING, before the terminal state.
  int pending_polls = 0;
  int running_polls = 0;
  // Chunk size caps (a chunk holds at least one row).
  int64_t chunk_rows = 10'000;
  size_t chunk_bytes = 16 * 1024 * 1024;
  // INLINE results whose chunks total more bytes fail (Databricks: 25 MiB).
  int64_t inline_byte_limit = 26'214'400;
  // Results with more rows are cut and marked truncated (0: no cap).
  int64_t max_result_rows = 0;
  // How long an external link is valid (Databricks: at most 15 min).
  std::chrono::seconds link_lifetime{900};
  // Links carry SSE-C headers that the download must send back.
  bool require_sse_headers = true;
  // "Z" or "+0000".
  std::string timestamp_suffix = "Z";
  int unknown_warehouse_status = 404;
  std::string default_catalog = "main";
  std::string default_schema = "default";
};

// A scripted error reply.
struct FakeDatabricksFault {
  // "execute", "status", "chunk", "cancel", "token", "download"; "" matches
  // every API call (not the token endpoint or downloads).
  std::string method;
  int status = 503;
  std::string error_code = "TEMPORARILY_UNAVAILABLE";
  std::string message;      // empty: a typical message
  std::string retry_after;  // Retry-After header value, when set
  bool reset_connection = false;
  // Run the request first, then answer with this fault (a lost reply).
  bool apply_first = false;
  int skip = 0;   // matching requests let through before this fault applies
  int times = 1;  // consecutive matching requests it answers

  static FakeDatabricksFault RateLimit(std::string method, int times = 1,
                                       std::string retry_after = "");
  static FakeDatabricksFault Unavailable(std::string method, int times = 1);
};

// How a statement ends FAILED (inside an HTTP 200).
struct FakeDatabricksStatementError {
  std::string error_code = "BAD_REQUEST";
  std::string message = "[INTERNAL_ERROR] scripted failure";
  std::string sql_state;
};

struct FakeDatabricksRequest {
  std::string method;  // as in FakeDatabricksFault ("unknown" for other paths)
  std::string http_method;
  std::string target;
  std::string body;
  std::string principal;  // who the API token belongs to
  bool had_authorization = false;
  int status = 0;  // 0 for a reset connection
  std::string reply;
};

class FakeDatabricksServer {
 public:
  explicit FakeDatabricksServer(FakeDatabricksOptions options = {});
  ~FakeDatabricksServer();
  FakeDatabricksServer(const FakeDatabricksServer&) = delete;
  FakeDatabricksServer& operator=(const FakeDatabricksServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url (or host) to configure.
  std::string BaseUrl() const;
  std::string TokenUrl() const;

  // --- Setup ---------------------------------------------------------------
  void AddPersonalAccessToken(const std::string& token, const std::string& user);
  void AddServicePrincipal(const std::string& client_id, const std::string& client_secret);
  void AddWarehouse(const std::string& warehouse_id);
  void AddCatalog(const std::string& catalog);
  // Attaches an empty schema (an in-memory SQLite database named `schema`).
  absl::Status CreateSchema(const std::string& schema);
  // Runs SQL on the fake's SQLite (tables as schema.table).
  absl::Status Exec(const std::string& sql);
  // The type_text used for result columns named `column` ("ARRAY<DATE>").
  void SetColumnType(const std::string& column, const std::string& type_text);
  void DenyWarehouse(const std::string& principal, const std::string& warehouse_id);
  void DenySchema(const std::string& principal, const std::string& schema);
  // Statements whose text contains `statement_contains` (case-insensitive)
  // fail FAILED: "[INSUFFICIENT_PERMISSIONS] Insufficient privileges: User
  // does not have <privilege> on <object>. SQLSTATE: 42501".
  void DenyPrivilege(const std::string& statement_contains, const std::string& privilege,
                     const std::string& object);
  void ClearDenials();
  // Invalidates every issued OAuth token (PATs stay valid).
  void RevokeOAuthTokens();
  void RevokePersonalAccessToken(const std::string& token);
  void SetPolls(int pending, int running);
  void SetChunkRows(int64_t rows);
  void SetLinkLifetime(std::chrono::seconds lifetime);
  void SetTimestampSuffix(const std::string& suffix);
  void SetMaxResultRows(int64_t rows);
  // Closes every statement: status answers CLOSED, chunks 404.
  void ExpireResults();

  // --- Scripting -----------------------------------------------------------
  void AddFault(FakeDatabricksFault fault);
  void ClearFaults();
  // The next statements (one each, in order) end FAILED with these.
  void FailNextStatement(FakeDatabricksStatementError error);

  // --- Inspection ----------------------------------------------------------
  // Runs `sql` on the fake's SQLite directly: one object per row, column
  // name -> integer, number, string or null.
  absl::StatusOr<nlohmann::json> QueryRows(const std::string& sql) const;
  std::vector<FakeDatabricksRequest> Requests() const;
  // Requests of `method` answered `status` (0: any).
  int64_t CountRequests(const std::string& method, int status = 0) const;
  // Statement ids cancelled, in order.
  std::vector<std::string> Cancels() const;
  int64_t statements_created() const;
  int64_t oauth_tokens_issued() const;
  // The last execute request's body.
  nlohmann::json LastExecuteBody() const;
  void ClearRequests();

 private:
  struct Statement {
    std::string id;
    std::string principal;
    bool external = false;
    nlohmann::json columns = nlohmann::json::array();
    std::vector<nlohmann::json> chunks;  // each a JSON array of rows
    std::vector<int64_t> chunk_offsets;
    std::vector<size_t> chunk_sizes;
    int64_t total_rows = 0;
    int64_t total_bytes = 0;
    bool truncated = false;
    int pending_left = 0;
    int running_left = 0;
    std::string state;  // the terminal state once the polls are used up
    bool cancelled = false;
    bool closed = false;
    std::optional<FakeDatabricksStatementError> error;
    std::string sse_key;
  };
  struct Link {
    std::string statement_id;
    int64_t chunk = 0;
    Clock::TimePoint expires;
  };
  struct IssuedToken {
    std::string principal;
    Clock::TimePoint expires;
  };

  TestResponse Handle(const TestRequest& req);
  TestResponse HandleToken(const TestRequest& req);
  TestResponse HandleDownload(const TestRequest& req, const std::string& path,
                              const std::string& query);
  TestResponse Route(const std::string& method, const std::string& statement_id, int64_t chunk,
                     const TestRequest& req, const std::string& principal);
  TestResponse Execute(const TestRequest& req, const std::string& principal);
  // Runs the SQL; FAILED statements get `error` set.
  void RunStatement(Statement& st, const std::string& sql, const std::string& catalog,
                    const std::string& schema, const nlohmann::json& parameters);
  // MERGE and CREATE TABLE AS SELECT as SQLite statements; "" or the error
  // message (a Databricks error class first).
  std::string RunMerge(const std::string& sql, const nlohmann::json& parameters, int64_t counts[3]);
  std::string RunCreateTableAs(const std::string& table, const std::string& select,
                               const nlohmann::json& parameters);
  // The reply of the statement's current visible state (consumes a poll
  // when `poll`).
  nlohmann::json StatusReply(Statement& st, bool poll);
  nlohmann::json Manifest(const Statement& st) const;
  nlohmann::json ResultData(Statement& st, int64_t chunk);
  std::string TerminalState(const Statement& st) const;
  Clock& clock() const;

  FakeDatabricksOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::unique_ptr<sqlite::Database> db_;
  std::set<std::string> schemas_;
  std::set<std::string> catalogs_;
  std::set<std::string> warehouses_;
  std::map<std::string, std::string> pats_;     // token -> user
  std::map<std::string, std::string> clients_;  // client id -> secret
  std::map<std::string, IssuedToken> oauth_tokens_;
  std::map<std::string, std::set<std::string>> denied_warehouses_;  // principal -> ids
  std::map<std::string, std::set<std::string>> denied_schemas_;     // principal -> schemas
  struct Denial {
    std::string statement_contains, privilege, object;
  };
  std::vector<Denial> denials_;
  std::map<std::string, std::string> column_types_;
  std::map<std::string, std::unique_ptr<Statement>> statements_;
  std::map<std::string, Link> links_;  // signature -> link
  std::deque<FakeDatabricksFault> faults_;
  std::deque<FakeDatabricksStatementError> next_errors_;
  std::vector<FakeDatabricksRequest> requests_;
  std::vector<std::string> cancels_;
  nlohmann::json last_execute_body_;
  int64_t statements_created_ = 0;
  int64_t oauth_tokens_issued_ = 0;
  int64_t links_issued_ = 0;
  // What the SQL functions answer while a statement runs.
  std::string current_principal_;
  std::string current_catalog_;
  std::string current_schema_;
};

}  // namespace backflow
