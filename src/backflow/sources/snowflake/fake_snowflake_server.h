// FakeSnowflakeServer: a protocol-faithful fake of the Snowflake SQL API v2
// (../shared/reference/warehouses.md §1), backed by SQLite, for tests.
//
// Built on HttpTestServer. Data lives in an SQLite database: CreateTable()
// declares columns with Snowflake types (the SQLite columns are untyped, so
// values are stored exactly as inserted), Exec() runs any SQLite SQL. A
// submitted statement runs on SQLite and its result is encoded the way
// Snowflake encodes results by default: every cell a JSON string or null;
// FIXED with exactly `scale` decimals; DATE as days since the epoch; TIME as
// seconds since midnight and TIMESTAMP_* as epoch seconds, both with 9
// decimals (or integer nanoseconds, see options); TIMESTAMP_TZ as
// "<epoch> <offset minutes + 1440>"; BOOLEAN "true"/"false"; BINARY as
// uppercase hex; VARIANT/OBJECT/ARRAY as pretty-printed JSON text (numbers
// kept exactly). A result column's type comes from the table column it reads
// (CreateTable), else from a Snowflake type name declared in SQLite DDL, else
// from the values (INTEGER -> FIXED(38,0), REAL -> REAL, BLOB -> BINARY,
// otherwise TEXT). Column names are uppercased unless the SQL names them in
// double quotes (Snowflake's identifier rule). SQL functions CURRENT_USER(),
// CURRENT_ROLE(), CURRENT_WAREHOUSE(), CURRENT_DATABASE() and
// CURRENT_SCHEMA() return the request's session (NULL when not in effect).
//
// The Snowflake SQL beyond SQLite's that it understands (what
// change_detection: warehouse issues): "bindings" {"N": {"type","value"}}
// for `?` placeholders (FIXED as integers, anything else as text; a missing
// one is 422 002049); CREATE SCHEMA [IF NOT EXISTS] s (an attached in-memory
// database); CREATE TABLE t AS SELECT (t's columns keep the Snowflake types
// of the columns they copy); COLLATE 'utf8' (byte order);
// TABLE(FLATTEN(INPUT => PARSE_JSON(?))) (json_each, column VALUE);
// GET(array, i), MD5(text) (lowercase hex), TO_VARCHAR(x) and TO_JSON(x)
// (the value's text, binary as uppercase hex); and MERGE INTO t AS a USING
// (select) AS b ON cond WHEN [NOT] MATCHED [AND cond] THEN DELETE | UPDATE SET
// ... | INSERT (...) VALUES (...), run as statements of one SQLite savepoint.
// Statements without a result answer a "status" row (MERGE: "number of rows
// inserted" / "updated" / "deleted"), as Snowflake does. DenyPrivilege()
// makes statements fail as a missing privilege does (422 003001).
//
// Requests, checked in this order:
//   1. path: POST /api/v2/statements, GET /api/v2/statements/{h}
//      [?partition=N], POST /api/v2/statements/{h}/cancel; others 404, a
//      wrong method 405;
//   2. headers: POST needs Content-Type application/json (else 415); Accept
//      must allow application/json (else 406, the fake's choice); a missing
//      User-Agent is 400 code 391903 (unverified, option);
//   3. auth: "Authorization: Bearer <t>" with X-Snowflake-Authorization-
//      Token-Type KEYPAIR_JWT (verified below), PROGRAMMATIC_ACCESS_TOKEN or
//      OAUTH (a token registered with that type, unexpired; no header means
//      OAUTH). Failures are 401 {"code":"390144","message":"JWT token is
//      invalid."} or {"code":"390303","message":"Invalid OAuth access
//      token."}; the reason is kept for LastAuthFailure(). A KEYPAIR_JWT
//      must be RS256 with iss "<ACCOUNT>.<USER>.SHA256:<fp>" and sub
//      "<ACCOUNT>.<USER>", ACCOUNT equal to options.account (canonical form
//      only), USER a registered user, fp the fingerprint of one of the user's
//      public keys, the signature valid under that key, iat (seconds or
//      milliseconds) not in the future beyond clock_skew, and exp in the
//      future; validity is capped at iat + 1 h. "aud" is ignored;
//   4. the next scripted reply whose `match` is in the target (see
//      FakeSnowflakeReply);
//   5. the endpoint:
//      submit: requestId must be a UUID; retry must be "true" if present;
//        only requestId, async, nullable, retry query parameters; the body
//        needs a non-empty "statement" (else 400 390142), "timeout" 0..604800,
//        parameter names from the documented list (either case). With
//        retry=true and a known requestId the earlier statement's current
//        state is answered and nothing runs again; otherwise the statement
//        runs (executions() counts runs). Session: role must be granted to
//        the user (else 422 390189); unknown warehouse/database/schema names
//        are not in effect (CURRENT_* NULL); a statement that reads a table
//        without a warehouse is 422 000606, without a database 422 090105.
//        More than one statement is 422 000008; SQL errors are 422 with
//        code 001003 and sqlState 42000, errors while running 422 100038.
//        Answer: 202 QueryStatus
//        {"code":"333334",...} when async=true or still_running_polls > 0,
//        else 200 ResultSet.
//      status: while the statement has polls left, 202 QueryStatus (or the
//        configured still_running_status, e.g. 429); then 200 ResultSet
//        (resultSetMetaData {numRows, format:"jsonv2", rowType,
//        partitionInfo}, data = partition 0, code 090001, Link header);
//        ?partition=N >= 1 answers {"data":[...]} gzip-compressed with
//        Content-Encoding: gzip whatever Accept-Encoding said (a partition
//        past the last is 422 000709). A cancelled
//        statement answers 422 000604 / 57014; an unknown handle 422 000709.
//      cancel: 200 {"code":"000604","sqlState":"57014",...}, recorded in
//        cancellations() (also for a finished statement); unknown 422 000709.
//
// Thread-safety: every public method is thread-safe (one mutex guards the
// state and the SQLite connection). Start() returns kUnavailable if the
// port cannot be bound; Stop() (also run by the destructor) joins threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/clock.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct FakeSnowflakeOptions {
  // Time for token checks and createdOn; null: the system clock. Must
  // outlive the server.
  Clock* clock = nullptr;
  // The canonical account name the JWTs must carry (uppercase).
  std::string account = "MYORG-MYACCOUNT";
  // Known objects (case-sensitive, as SHOW returns them); empty: any name.
  std::set<std::string> warehouses = {"COMPUTE_WH"};
  std::set<std::string> databases = {"ANALYTICS"};
  std::set<std::string> schemas = {"PUBLIC"};
  // Rows per partition (Snowflake chooses ~10k-50k; tests use few).
  int64_t rows_per_partition = 1000;
  // Answers "still running" this many times on status polls before 200;
  // when > 0 the submit itself answers 202 too.
  int still_running_polls = 0;
  // The status of a "still running" poll answer: 202, or 429 (the docs
  // list both).
  int still_running_status = 202;
  // Timestamps as integer nanoseconds instead of "<seconds>.<9 digits>".
  bool timestamps_as_nanoseconds = false;
  // rowType "type" in UPPERCASE instead of lowercase.
  bool uppercase_type_names = false;
  // VARIANT/OBJECT/ARRAY pretty-printed (Snowflake's output; unverified).
  bool pretty_print_json = true;
  // Partitions >= 1 gzip-compressed with Content-Encoding: gzip.
  bool gzip_partitions = true;
  bool require_user_agent = true;
  std::chrono::seconds clock_skew{60};
};

// One scripted reply.
struct FakeSnowflakeReply {
  // Applies to the next request whose method + " " + target contains this
  // ("" = any request; "POST /api/v2/statements?", "partition=2").
  std::string match;
  int status = 503;
  std::string body;  // empty: {"code":..., "message":...} for the status
  TestHeaders headers;
  std::chrono::milliseconds delay{0};
  bool reset_connection = false;
  // Handle the request first (a statement runs), then answer this instead
  // (the reply was lost).
  bool apply_first = false;

  static FakeSnowflakeReply Error(int status, std::string match = "");
  // Runs the request, then drops the connection.
  static FakeSnowflakeReply ApplyThenReset(std::string match);
};

struct FakeSnowflakeUser {
  std::string name;                          // login name, UPPERCASE
  std::vector<std::string> public_keys_pem;  // RSA_PUBLIC_KEY, RSA_PUBLIC_KEY_2
  std::vector<std::string> roles = {"PUBLIC"};
  std::string default_role = "PUBLIC";
  std::string default_warehouse;
  std::string default_database;
  std::string default_schema;
};

struct SnowflakeRequestLog {
  std::string method;
  std::string target;
  std::string body;
  std::string token_type;  // X-Snowflake-Authorization-Token-Type
  std::string user;        // authenticated user, if any
  std::string accept_encoding;
  int status = 0;  // 0 for a reset connection
};

struct SnowflakeCancellation {
  std::string handle;
  bool was_running = false;
};

class FakeSnowflakeServer {
 public:
  explicit FakeSnowflakeServer(FakeSnowflakeOptions options = {});
  ~FakeSnowflakeServer();
  FakeSnowflakeServer(const FakeSnowflakeServer&) = delete;
  FakeSnowflakeServer& operator=(const FakeSnowflakeServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url to configure.
  std::string BaseUrl() const;

  // --- Setup ---------------------------------------------------------------
  void AddUser(FakeSnowflakeUser user);
  // Registers a PAT or OAuth token ("PROGRAMMATIC_ACCESS_TOKEN" / "OAUTH")
  // for `user`, valid until `expires` (nullopt: forever).
  void AddToken(const std::string& token, const std::string& user, const std::string& type,
                std::optional<Clock::TimePoint> expires = std::nullopt);
  // Creates a table whose columns have Snowflake types, e.g.
  // {{"ID","NUMBER(38,0)"},{"EMAIL","VARCHAR"},{"AT","TIMESTAMP_TZ"}}.
  absl::Status CreateTable(const std::string& table,
                           const std::vector<std::pair<std::string, std::string>>& columns);
  // Runs SQLite SQL (inserts, updates...).
  absl::Status Exec(const std::string& sql);
  // Statements whose text contains `statement_contains` (case-insensitive)
  // fail as Snowflake refuses a missing privilege: 422 code 003001, sqlState
  // 42501, "SQL access control error:\nInsufficient privileges to operate on
  // <object>.".
  void DenyPrivilege(const std::string& statement_contains, const std::string& object);
  void ClearDenials();
  void set_rows_per_partition(int64_t rows);
  void set_still_running_polls(int polls);

  // --- Scripting -----------------------------------------------------------
  void EnqueueReply(FakeSnowflakeReply reply);
  // The next `count` authenticated requests are answered 401 (as if the
  // token had expired).
  void RejectNextAuth(int count);

  // --- Inspection ----------------------------------------------------------
  std::vector<SnowflakeRequestLog> Requests() const;
  // Requests whose method + " " + target contains `match` and that were
  // answered `status` (0: any).
  int64_t CountRequests(const std::string& match, int status = 0) const;
  // Statements run (a retry=true resubmission of a known requestId is not
  // a run).
  int64_t executions() const;
  std::vector<SnowflakeCancellation> cancellations() const;
  // Why the last 401 was answered ("" if none).
  std::string LastAuthFailure() const;
  // The last submitted statement body (JSON), null if none.
  nlohmann::json LastSubmitBody() const;
  // Runs SQLite SQL directly (no Snowflake encoding): rows of JSON values
  // (integers, doubles, strings, null; blobs as strings), for comparing
  // what a sync delivered with what the fake holds.
  absl::StatusOr<std::vector<std::vector<nlohmann::json>>> Select(const std::string& sql) const;

 private:
  struct User {
    FakeSnowflakeUser spec;
    std::vector<std::pair<std::string, std::unique_ptr<Rs256Key>>> keys;  // fp -> key
  };
  struct Token {
    std::string user;
    std::string type;
    std::optional<Clock::TimePoint> expires;
  };
  struct Session {
    std::string user;
    std::string role;
    std::optional<std::string> warehouse;
    std::optional<std::string> database;
    std::optional<std::string> schema;
  };
  struct Statement {
    std::string handle;
    std::string request_id;
    int polls_left = 0;
    enum class State { kRunning, kSucceeded, kCancelled } state = State::kRunning;
    nlohmann::json row_type;                        // array
    std::vector<std::vector<nlohmann::json>> rows;  // encoded cells
    int64_t created_on_ms = 0;
  };
  struct Reply {
    int status = 200;
    nlohmann::json body;
    TestHeaders headers;
    std::string raw_body;  // used instead of body when non-empty
  };

  TestResponse Handle(const TestRequest& req);
  // Returns the user, or sets `failure`.
  std::optional<std::string> Authenticate(const TestRequest& req, std::string& failure,
                                          std::string& code);
  Reply Submit(const TestRequest& req, const std::string& user);
  Reply Status(const std::string& handle, std::optional<int64_t> partition);
  Reply Cancel(const std::string& handle);
  // Runs `sql` in `session`; sets `error` (a 422 body) on failure.
  std::unique_ptr<Statement> Run(const std::string& sql, const nlohmann::json& bindings,
                                 const Session& session, nlohmann::json& error);
  std::unique_ptr<Statement> CreateSchema(const std::string& name, bool if_not_exists,
                                          nlohmann::json& error);
  std::unique_ptr<Statement> Merge(const std::smatch& match, const nlohmann::json& bindings,
                                   const Session& session, nlohmann::json& error);
  // A one-row result of named cells (DDL and DML answers).
  std::unique_ptr<Statement> StatusStatement(
      const std::vector<std::pair<std::string, nlohmann::json>>& cells) const;
  Reply ResultSetReply(const Statement& st) const;
  Reply QueryStatusReply(const Statement& st, int status) const;
  Clock& clock() const;
  static std::string StatusUrl(const Statement& st);

  friend struct FakeSnowflakeSqlFunctions;

  FakeSnowflakeOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::unique_ptr<sqlite::Database> db_;
  // lowercase table -> lowercase column -> Snowflake type
  std::map<std::string, std::map<std::string, std::string>> column_types_;
  std::map<std::string, User> users_;
  std::map<std::string, Token> tokens_;
  std::map<std::string, std::unique_ptr<Statement>> statements_;  // by handle
  std::map<std::string, std::string> request_ids_;                // requestId -> handle
  std::deque<FakeSnowflakeReply> script_;
  int reject_auth_ = 0;
  std::vector<SnowflakeRequestLog> requests_;
  std::vector<SnowflakeCancellation> cancellations_;
  int64_t executions_ = 0;
  int64_t next_handle_ = 1;
  std::string last_auth_failure_;
  nlohmann::json last_submit_body_;
  // Valid while a statement runs (mu_ held): what CURRENT_*() return and
  // whether a table was read.
  const Session* current_session_ = nullptr;
  std::set<std::string> tables_read_;
  std::vector<std::pair<std::string, std::string>> denials_;  // statement part, object
};

}  // namespace backflow
