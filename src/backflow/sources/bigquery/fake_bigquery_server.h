// FakeBigQueryServer: a protocol-faithful fake of Google's OAuth 2.0 token
// endpoint (JWT bearer grant) and the BigQuery REST API v2 query methods,
// backed by SQLite, for tests (see ../shared/reference/warehouses.md §2).
//
// Token endpoint (POST token_path, form-encoded): grant_type must be the JWT
// bearer grant; the assertion's iss must be a registered service account
// whose public key verifies the RS256 signature (and whose key id matches
// the header's kid); aud must equal the audience option (default: the token
// URL); scope must include one of accepted_scopes; exp must be in the
// future and at most max_assertion_lifetime after iat. Failures are 400
// {"error":"invalid_grant"|"invalid_scope"|...,"error_description":...}.
// Success issues an opaque token valid for token_lifetime by the fake's
// clock: {"access_token","expires_in","token_type":"Bearer"}.
//
// API (under /bigquery/v2/projects/{project}), for each request in order:
//   1. "Authorization: Bearer <token>" must carry an issued, unexpired token,
//      else 401 (reason authError);
//   2. the first scripted fault whose method matches (after its `skip`
//      matching requests) answers instead, or after the request was applied
//      when `apply_first`;
//   3. an unknown project is 404 notFound "Not found: Project <p>";
//   4. the method runs:
//   - POST /queries (jobs.query): useLegacySql must be false (absent means
//     legacy SQL: 400 invalidQuery); a repeated requestId returns the job it
//     created before (no new job); the account needs bigquery.jobs.create
//     (403 accessDenied otherwise). The SQL runs on SQLite after rewriting
//     `project.dataset.table` and `dataset.table` quoted in backticks to
//     dataset.table. A dataset is an attached SQLite database
//     (CreateDataset) with a location: reading a dataset outside the
//     request's location, or a missing dataset/table, is 404 notFound "Not
//     found: Dataset|Table p:d[.t] was not found in location L"; an
//     unqualified table is 400 invalid; other SQL errors are 400
//     invalidQuery with errors[0].location "q". A table the account may not
//     read (DenyDataset) is 403 accessDenied. The job runs in the request's
//     location, else the first dataset's, else default_location. The whole
//     result is materialised (as BigQuery does into a temporary table). A
//     SQLite runtime error fails the job (invalidQuery).
//     With polls_before_complete > 0 the reply is {"jobComplete":false,
//     "jobReference"} without schema or rows; else the first page.
//   - GET /queries/{jobId} (getQueryResults): location must match the job's
//     (missing is accepted only for US and EU jobs), else 404 "Not found:
//     Job p:L.id"; answers jobComplete=false polls_before_complete times; a
//     failed job is an HTTP error (its reason and message); else the page at
//     pageToken (tokens are opaque and per job; an unknown one is 400
//     invalid) or startIndex, of maxResults rows (default
//     default_page_rows, at most max_page_rows) and at most max_page_bytes
//     of encoded rows (at least one row), with schema, totalRows (a string)
//     and a pageToken when rows remain.
//   - GET /jobs/{jobId} (jobs.get): {"status":{"state":"RUNNING"|"DONE",
//     "errorResult","errors"}}; same location rule.
//   - POST /jobs/{jobId}/cancel: recorded (Cancels()); a running job becomes
//     DONE with errorResult reason "stopped"; same location rule.
//
// Result encoding (f/v): rows {"f":[{"v":...}]}, every scalar a JSON string,
// NULL null. Column types come from SetColumnSchema (by result column
// name; may be RECORD with "fields" and/or mode REPEATED, the SQLite value
// then being JSON text of an object/array), else the first word of the
// column's declared SQLite type (INT64/INTEGER, FLOAT64/FLOAT, NUMERIC,
// BIGNUMERIC, BOOL/BOOLEAN, STRING, BYTES, DATE, DATETIME, TIME, TIMESTAMP,
// JSON, GEOGRAPHY; declare e.g. `score NUMERIC TEXT` or `name STRING TEXT`
// so SQLite keeps the text as-is), else the first non-null value's storage
// class. Schema type names are BigQuery's legacy ones (INTEGER, FLOAT,
// BOOLEAN, RECORD). INT64 is a decimal string, FLOAT64 Java-style
// ("1.5", "1.0E10", "NaN", "Infinity"), NUMERIC trimmed decimal text, BOOL
// "true"/"false", BYTES base64, DATETIME with 'T'. TIMESTAMP values (SQLite
// text "YYYY-MM-DD HH:MM:SS[.ffffff][Z|±HH:MM]", or integer/real epoch
// seconds) are integer microseconds when the request asks
// formatOptions.useInt64Timestamp=true and honor_int64_timestamp is set,
// else float seconds in Java's E-notation ("1.7172001231230001E9").
// RECORD is {"f":[...]} in the record's field order, REPEATED [{"v":...}]
// (an empty array for NULL).
//
// The GoogleSQL beyond SQLite's that it understands (what
// change_detection: warehouse issues): queryParameters with parameterMode
// POSITIONAL, each {"parameterType":{"type":"STRING"},"parameterValue":
// {"value":...}} (others are 400 invalid; a count that differs from the `?`
// is 400 invalidQuery), bound as text; CREATE SCHEMA [IF NOT EXISTS] d
// [OPTIONS(location = 'L')] (an attached in-memory database in L, else the
// request's location; an existing one without IF NOT EXISTS is 409
// duplicate); column type STRING in CREATE TABLE (text kept as text);
// PRIMARY KEY (...) NOT ENFORCED; CREATE TABLE t AS SELECT (t's columns keep
// the declared types of the columns they copy); CAST(x AS STRING);
// UNION DISTINCT; UNNEST(JSON_EXTRACT_ARRAY(?)) AS j (json_each), with
// JSON_VALUE(j) and JSON_VALUE(j, '$[i]'); MD5(x) (16 bytes), TO_HEX(b)
// (lowercase), TO_BASE64(b), TO_JSON_STRING(x) (the value's text); and
// MERGE [INTO] t AS a USING (select) AS b ON cond WHEN [NOT] MATCHED [AND
// cond] THEN DELETE | UPDATE SET ... | INSERT (...) VALUES (...), run in
// one SQLite savepoint (a target row matched by several source rows fails
// it, as in BigQuery). DDL and DML jobs answer jobComplete with
// statementType (CREATE_SCHEMA, CREATE_TABLE, CREATE_TABLE_AS_SELECT,
// DROP_TABLE, INSERT, UPDATE, DELETE, MERGE), numDmlAffectedRows (a string)
// for DML, and no schema, rows or totalRows. Privilege refusals are 403
// accessDenied: DenyDatasetCreate ("User does not have
// bigquery.datasets.create permission in project p."), DenyDatasetWrite
// ("Permission bigquery.tables.create denied on dataset p:d", or
// updateData / delete on a table).
//
// Thread-safety: every public method is thread-safe (one mutex guards the
// state and the SQLite connection). Start() returns kUnavailable if the port
// cannot be bound; Stop() (also run by the destructor) joins the threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
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

struct sqlite3_stmt;

namespace backflow {

struct FakeBigQueryOptions {
  // The fake's time for token and assertion expiry and requestId memory;
  // null: the system clock. Must outlive the server.
  Clock* clock = nullptr;
  // The project that exists from the start (AddProject adds more).
  std::string project_id = "test-project";
  std::string default_location = "US";
  std::string token_path = "/token";
  // The aud the assertion must carry; empty: the token URL.
  std::string audience;
  std::vector<std::string> accepted_scopes = {"https://www.googleapis.com/auth/bigquery",
                                              "https://www.googleapis.com/auth/cloud-platform"};
  std::chrono::seconds token_lifetime{3599};
  std::chrono::seconds max_assertion_lifetime{3600};
  // jobs.query answers jobComplete=false when > 0, then getQueryResults
  // (and jobs.get reports RUNNING) this many times before the job is done.
  int polls_before_complete = 0;
  // Rows per page when maxResults is absent, the cap on maxResults, and the
  // cap on a page's encoded rows (BigQuery: 10 MB).
  int64_t default_page_rows = 100'000;
  int64_t max_page_rows = 100'000;
  size_t max_page_bytes = 10 * 1024 * 1024;
  // false: TIMESTAMP is always float seconds, as if useInt64Timestamp were
  // ignored.
  bool honor_int64_timestamp = true;
};

// A scripted error reply.
struct FakeBigQueryFault {
  // "query", "getQueryResults", "jobs.get", "cancel", "token"; "" matches
  // every API call (not the token endpoint).
  std::string method;
  int status = 503;
  std::string reason = "backendError";
  std::string message;   // empty: a message typical of the reason
  std::string location;  // errors[0].location, e.g. "q"
  bool reset_connection = false;
  // Run the request first, then answer with this fault (a reply lost after
  // the server acted).
  bool apply_first = false;
  int skip = 0;   // matching requests let through before this fault applies
  int times = 1;  // consecutive matching requests it answers

  static FakeBigQueryFault RateLimit(std::string method, int times = 1);
  static FakeBigQueryFault BackendError(std::string method, int times = 1);
  static FakeBigQueryFault InvalidQuery(std::string message, std::string location = "q");
};

// How the next job fails, reported inside a 200: jobs.query answers
// jobComplete=true with errors[] and no schema (or, after polls,
// getQueryResults answers the HTTP error), jobs.get carries
// status.errorResult. With warning_only the job succeeds and its replies
// just carry errors[].
struct FakeBigQueryJobError {
  std::string reason = "invalidQuery";
  std::string message = "Query error";
  std::string location;
  int http_status = 400;  // what getQueryResults answers for the failed job
  bool warning_only = false;
};

struct FakeBigQueryRequest {
  std::string method;  // as in FakeBigQueryFault ("unknown" for other paths)
  std::string http_method;
  std::string target;                         // as sent (percent-encoded)
  std::map<std::string, std::string> params;  // decoded query parameters
  std::string body;
  std::string account;
  int status = 0;     // 0 for a reset connection
  std::string reply;  // the body answered
};

struct FakeBigQueryCancel {
  std::string job_id;
  std::string location;
};

class FakeBigQueryServer {
 public:
  explicit FakeBigQueryServer(FakeBigQueryOptions options = {});
  ~FakeBigQueryServer();
  FakeBigQueryServer(const FakeBigQueryServer&) = delete;
  FakeBigQueryServer& operator=(const FakeBigQueryServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url to configure.
  std::string BaseUrl() const;
  // BaseUrl() + token_path: the token_url to configure.
  std::string TokenUrl() const;

  // --- Setup ---------------------------------------------------------------
  // Registers a service account (with every permission); returns its JSON
  // key file content with a fresh private key.
  std::string AddServiceAccount(const std::string& client_email);
  void AddProject(const std::string& project_id);
  // Attaches an empty dataset (an in-memory SQLite database named `dataset`).
  absl::Status CreateDataset(const std::string& dataset, const std::string& location = "US");
  // Runs SQL on the fake's SQLite (tables as dataset.table).
  absl::Status Exec(const std::string& sql);
  // The schema field (TableFieldSchema JSON without "name") used for result
  // columns named `column`.
  void SetColumnSchema(const std::string& column, nlohmann::json field);
  // The account lacks bigquery.jobs.create on every project.
  void DenyJobsCreate(const std::string& client_email);
  // The account may not read tables of `dataset`.
  void DenyDataset(const std::string& client_email, const std::string& dataset);
  // The account lacks bigquery.datasets.create (CREATE SCHEMA is refused,
  // also for a dataset that exists).
  void DenyDatasetCreate(const std::string& client_email);
  // The account may not create, change or drop tables of `dataset`.
  void DenyDatasetWrite(const std::string& client_email, const std::string& dataset);
  // Lifts the account's DenyDataset, DenyDatasetCreate and DenyDatasetWrite.
  void ClearDenials(const std::string& client_email);
  // Invalidates every issued access token.
  void RevokeTokens();
  void SetPollsBeforeComplete(int polls);
  void SetHonorInt64Timestamp(bool honor);

  // --- Scripting -----------------------------------------------------------
  void AddFault(FakeBigQueryFault fault);
  // Drops the faults not yet used up.
  void ClearFaults();
  void FailNextJob(FakeBigQueryJobError error);

  // --- Inspection ----------------------------------------------------------
  // Runs `sql` on the fake's SQLite directly: one object per row, column
  // name -> integer, number, string (text and blobs) or null.
  absl::StatusOr<nlohmann::json> QueryRows(const std::string& sql) const;
  std::vector<FakeBigQueryRequest> Requests() const;
  // Requests of `method` answered `status` (0: any).
  int64_t CountRequests(const std::string& method, int status = 0) const;
  std::vector<FakeBigQueryCancel> Cancels() const;
  int64_t jobs_created() const;
  int64_t tokens_issued() const;
  // The last assertion presented to the token endpoint, decoded.
  DecodedJwt LastAssertion() const;
  void ClearRequests();

 private:
  struct Cell {
    int type = 5;  // SQLITE_NULL
    int64_t i = 0;
    double d = 0;
    std::string s;
  };
  struct Job {
    std::string project;
    std::string id;
    std::string location;
    std::string account;
    nlohmann::json fields = nlohmann::json::array();
    std::vector<std::vector<Cell>> rows;
    int polls_left = 0;
    std::optional<FakeBigQueryJobError> error;
    bool cancelled = false;
    std::map<std::string, int64_t> page_tokens;
    // Empty or "SELECT": a result set; else DDL/DML without one.
    std::string statement_type;
    std::optional<int64_t> dml_rows;
  };
  struct Account {
    std::unique_ptr<Rs256Key> public_key;
    std::string key_id;
    bool deny_jobs_create = false;
    bool deny_dataset_create = false;
    std::set<std::string> denied_datasets;
    std::set<std::string> denied_writes;
  };
  struct IssuedToken {
    std::string account;
    Clock::TimePoint expires;
  };

  TestResponse Handle(const TestRequest& req);
  TestResponse HandleToken(const TestRequest& req);
  TestResponse Route(const std::string& method, const std::string& project,
                     const std::string& job_id, const TestRequest& req,
                     const std::map<std::string, std::string>& params, const std::string& account);
  TestResponse JobsQuery(const std::string& project, const TestRequest& req,
                         const std::string& account);
  TestResponse GetQueryResults(Job& job, const std::map<std::string, std::string>& params);
  TestResponse JobsGet(Job& job);
  TestResponse Cancel(Job& job);
  // Finds the job and checks the location parameter; null with `error` set.
  Job* FindJob(const std::string& project, const std::string& job_id,
               const std::map<std::string, std::string>& params, TestResponse& error);
  nlohmann::json PageReply(Job& job, int64_t offset, int64_t max_rows, bool int64_timestamp);
  nlohmann::json JobReference(const Job& job) const;
  // Re-creates `table` ("dataset.table", made by CREATE TABLE AS `select`)
  // with the declared column types of `select`; an error text or "".
  std::string TypeCreatedTable(const std::string& table, const std::string& select);
  // Runs a MERGE (`match` of the fake's MERGE pattern) with `bind` binding
  // each statement's parameters; false with `error` set on failure.
  bool Merge(const std::smatch& match, const std::function<void(sqlite3_stmt*)>& bind,
             int64_t& changed, std::string& error);
  Clock& clock() const;

  FakeBigQueryOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::unique_ptr<sqlite::Database> db_;
  std::map<std::string, std::string> datasets_;  // name -> location
  std::set<std::string> projects_;
  std::map<std::string, Account> accounts_;
  std::map<std::string, IssuedToken> tokens_;
  std::map<std::string, nlohmann::json> column_schemas_;
  std::map<std::string, std::unique_ptr<Job>> jobs_;  // by job id
  std::map<std::string, std::pair<std::string, Clock::TimePoint>> request_ids_;
  std::deque<FakeBigQueryFault> faults_;
  std::optional<FakeBigQueryJobError> next_job_error_;
  std::vector<FakeBigQueryRequest> requests_;
  std::vector<FakeBigQueryCancel> cancels_;
  DecodedJwt last_assertion_;
  int64_t tokens_issued_ = 0;
  int64_t jobs_created_ = 0;
  int64_t page_tokens_issued_ = 0;
};

}  // namespace backflow
