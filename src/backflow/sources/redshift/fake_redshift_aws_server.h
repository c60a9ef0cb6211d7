// FakeRedshiftAwsServer: the AWS APIs of Redshift on loopback, for tests
// (../shared/reference/warehouses.md §4): the Redshift Data API, the
// GetClusterCredentials action of the Redshift API and Redshift
// Serverless GetCredentials, with data from an in-memory SQLite database.
//
// Wire formats, as AWS speaks them:
//   * Redshift API (AWS Query protocol): POST / with a form-encoded body
//     Action=GetClusterCredentials&Version=2012-12-01&... ; the reply is
//     <GetClusterCredentialsResponse> XML, errors <ErrorResponse><Error>
//     <Type>Sender</Type><Code>..</Code><Message>..</Message></Error>
//     <RequestId>..</RequestId></ErrorResponse> (ClusterNotFound is 404;
//     throttling is 400 Throttling).
//   * Redshift Serverless and the Data API (AWS JSON 1.1): POST / with
//     X-Amz-Target RedshiftServerless.GetCredentials or
//     RedshiftData.<Operation> and a JSON body; errors are HTTP 400 (500 for
//     InternalServerException) {"__type": "<Code>", "message": ".."}.
//   * Every request must carry a valid SigV4 Authorization header: the
//     signature is recomputed with the configured secret over the signed
//     headers (host and x-amz-date required), the body and the path/query,
//     for the service the request is addressed to ("redshift",
//     "redshift-serverless", "redshift-data") and the configured region.
//     Refusals as AWS answers them (403): a missing header
//     MissingAuthenticationToken(Exception), an unknown access key
//     InvalidClientTokenId / UnrecognizedClientException, a wrong scope or
//     signature, or an X-Amz-Date more than 15 minutes from the fake's
//     clock SignatureDoesNotMatch / InvalidSignatureException; when a
//     session token is configured, a missing or unsigned token
//     InvalidClientTokenId / UnrecognizedClientException and, after
//     ExpireSessionToken(), ExpiredToken / ExpiredTokenException.
// Data API behaviour:
//   ExecuteStatement {Sql, Database, ClusterIdentifier + DbUser | SecretArn,
//     or WorkgroupName; ClientToken} → {Id, CreatedAt, Database, ...}; the
//     same ClientToken returns the same Id. The SQL runs on SQLite at once;
//     a SQLite error makes the statement FAILED with Error "ERROR: <text>".
//   DescribeStatement {Id}: SUBMITTED for `polls_submitted` calls, then
//     STARTED for `polls_started` calls, then the final status (FINISHED,
//     FAILED with Error, or ABORTED after CancelStatement), with
//     HasResultSet, ResultRows, ResultSize.
//   GetStatementResult {Id, NextToken?}: `page_rows` records per page,
//     ColumnMetadata on every page, TotalNumRows, NextToken while rows
//     remain; 400 ValidationException for a statement not FINISHED or a
//     NextToken that is not the one handed out (unverified message texts).
//   CancelStatement {Id}: a statement not yet finished becomes ABORTED
//     ({"Status": true}); a finished one is a 400 ValidationException.
//   Column types: `column_types` (name → Redshift type name), else from
//   the SQLite declared type (bigint → int8, integer → int4, real/double →
//   float8, numeric → numeric, boolean → bool, timestamptz, timestamp, date,
//   super, varbyte; anything else varchar). Cells: int2/int4/int8 →
//   longValue, float4/float8 → doubleValue, bool → booleanValue, varbyte →
//   blobValue (base64), everything else → stringValue of SQLite's text
//   (declare exact decimals as TEXT and name their type in column_types),
//   NULL → isNull.
// Faults: InjectError makes the next `times` calls of an operation answer
// an AWS error of any status and code (throttling, 5xx, ...).
//
// The Redshift SQL beyond SQLite's that it understands (what
// change_detection: warehouse issues, redshift_change_detection.h):
// Parameters [{name, value}] bound to `:name` markers (an empty value, a
// parameter the statement lacks, or a marker without a parameter makes the
// statement FAILED); CREATE SCHEMA IF NOT EXISTS s (an attached in-memory
// database); COLLATE case_sensitive | cs (byte order, SQLite's BINARY);
// (SELECT JSON_PARSE(:p) AS elements) AS j_array, j_array.elements AS j
// (json_each) with CAST(j AS VARCHAR(65535)) and CAST(j[i] AS
// VARCHAR(65535)); a parameter of JSON_PARSE longer than 65535 bytes (its
// VARCHAR argument's limit) makes the statement FAILED with "ERROR: value too
// long for type character varying(65535)" (message unverified); MD5(text) (lowercase hex);
// JSON_SERIALIZE(x) (the text as stored); CURRENT_USER ("IAM:<DbUser>", else the configured db_user
// or "IAM:fake-user") and CURRENT_DATABASE() (the request's Database). IS [NOT] DISTINCT FROM fails
// as Redshift answers it ("Not implemented"). DenyPrivilege() makes statements starting with a
// prefix FAILED with "ERROR: permission denied for <object>", as Redshift words it.
//
// Thread-safety: all public methods are thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/clock.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct FakeRedshiftAwsOptions {
  std::string access_key_id = "AKIDEXAMPLE";
  std::string secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
  std::string session_token;  // when set, every request must carry it
  std::string region = "us-east-1";
  Clock* clock = nullptr;  // X-Amz-Date checks and expirations; SystemClock() when null

  // GetClusterCredentials / GetCredentials.
  std::string cluster_identifier = "examplecluster";
  std::string workgroup_name = "retl-wg";
  // The password handed out (e.g. the real test PostgreSQL's password).
  std::string db_password = "temporary-password-123";
  // The user handed out; empty: "IAM:<DbUser>" (serverless: "IAM:fake-user").
  std::string db_user;

  // Data API.
  int page_rows = 100;
  int polls_submitted = 1;
  int polls_started = 1;
  std::map<std::string, std::string> column_types;
};

// An error answered instead of running an operation.
struct FakeAwsFault {
  std::string operation;  // "ExecuteStatement", "GetClusterCredentials", ...
  int times = 1;
  int status = 400;
  std::string code = "ThrottlingException";
  std::string message = "Rate exceeded";
};

class FakeRedshiftAwsServer {
 public:
  explicit FakeRedshiftAwsServer(FakeRedshiftAwsOptions options);
  ~FakeRedshiftAwsServer();

  absl::Status Start();
  void Stop();
  std::string Url() const;  // "http://127.0.0.1:<port>"
  // Settings of a `redshift_data_api` source over this fake (its
  // credentials and cluster, database dev, db_user analytics;
  // no retries; state_schema bf_state), for tests.
  nlohmann::json SourceSettings() const {
    return {{"access_key_id", options_.access_key_id},
            {"secret_access_key", options_.secret_access_key},
            {"region", options_.region},
            {"database", "dev"},
            {"cluster_identifier", options_.cluster_identifier},
            {"db_user", "analytics"},
            {"base_url", Url()},
            {"max_retries", 0},
            {"state_schema", "bf_state"}};
  }

  // Runs setup SQL on the backing SQLite database.
  absl::Status Exec(const std::string& sql);

  // Rows of a SQLite query on the backing database, each cell as text
  // ("<null>" for NULL).
  absl::StatusOr<std::vector<std::vector<std::string>>> Select(const std::string& sql);
  // Statements starting with `statement_prefix` fail with "permission
  // denied for <object>" (e.g. "schema bf_state").
  void DenyPrivilege(std::string statement_prefix, std::string object);
  void ClearDenials();

  void InjectError(FakeAwsFault fault);
  void ExpireSessionToken();
  void SetPollsBeforeFinish(int submitted, int started);
  // Statements become ABORTED (as if cancelled by someone else) when
  // DescribeStatement is called for the `poll`-th time (1-based; 0: never).
  void AbortAtPoll(int poll);

  // --- Inspection ----------------------------------------------------------
  // Calls per operation that passed the signature check.
  int Calls(std::string_view operation) const;
  // Requests refused for their signature or credentials.
  int auth_refusals() const;
  // The JSON bodies of the ExecuteStatement calls (faulted ones too), in order.
  std::vector<nlohmann::json> ExecuteRequests() const;
  // The form parameters of the GetClusterCredentials calls, in order.
  std::vector<std::map<std::string, std::string>> CredentialRequests() const;
  // The status of a statement ("" when unknown).
  std::string StatementStatus(const std::string& id) const;
  // Ids of statements CancelStatement was called for (accepted or not).
  std::vector<std::string> CancelRequests() const;

 private:
  struct Statement;
  TestResponse Handle(const TestRequest& request);
  TestResponse HandleQueryApi(const TestRequest& request);
  TestResponse HandleJson(const TestRequest& request, const std::string& target);
  TestResponse DataApi(const std::string& op, const nlohmann::json& body);
  TestResponse ExecuteStatement(const nlohmann::json& body);
  TestResponse DescribeStatement(const nlohmann::json& body);
  TestResponse GetStatementResult(const nlohmann::json& body);
  TestResponse CancelStatement(const nlohmann::json& body);
  // An auth problem's AWS error code, or "" when the request is properly
  // signed for `service`. Sets `message`.
  std::string CheckSignature(const TestRequest& request, const std::string& service, bool json,
                             std::string& message);
  bool TakeFault(const std::string& operation, FakeAwsFault& fault);
  void RunSql(Statement& st, const nlohmann::json& parameters);
  // SQLite SQL for a Redshift statement (see the header comment); sets
  // `error` (and returns "") for SQL Redshift refuses.
  std::string TranslateSql(const std::string& redshift_sql, std::string& error);

  FakeRedshiftAwsOptions options_;
  Clock* clock_;
  std::unique_ptr<HttpTestServer> server_;
  mutable std::mutex mu_;
  std::unique_ptr<sqlite::Database> db_;
  std::vector<FakeAwsFault> faults_;
  bool token_expired_ = false;
  int abort_at_poll_ = 0;
  std::map<std::string, int> calls_;
  int auth_refusals_ = 0;
  std::vector<nlohmann::json> execute_requests_;
  std::vector<std::map<std::string, std::string>> credential_requests_;
  std::vector<std::string> cancels_;
  std::map<std::string, std::unique_ptr<Statement>> statements_;
  std::map<std::string, std::string> client_tokens_;
  int64_t next_id_ = 1;
  std::set<std::string> schemas_;  // attached (lowercase)
  std::vector<std::pair<std::string, std::string>> denials_;
  std::string current_user_;
  std::string current_database_;
};

}  // namespace backflow
