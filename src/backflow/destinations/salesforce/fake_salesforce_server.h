// FakeSalesforceServer: a protocol-faithful fake of Salesforce's OAuth 2.0
// JWT bearer token endpoint and the REST API pieces the salesforce
// destination uses (see ../shared/reference/destinations.md §3), built on
// HttpTestServer. Every limit is an option; defaults come from the brief.
//
// Token endpoint (POST /services/oauth2/token, form-encoded): grant_type
// must be urn:ietf:params:oauth:grant-type:jwt-bearer; the assertion must be
// RS256-signed by the key registered for its iss (a connected app's consumer
// key), sub must be a known user who is pre-authorised for apps, aud must
// equal the audience option (default: the fake's own URL, standing in for
// https://login.salesforce.com), and exp must be in the future and at most
// max_assertion_lifetime away (exp in milliseconds is refused as expired).
// Errors are 400 {"error":"invalid_grant"|"invalid_client_id"|...,
// "error_description":...} with Salesforce's wording ("user hasn't approved
// this consumer", "audience is invalid", "invalid assertion", "expired
// authorization code", "client identifier invalid"). Success is
// {"access_token","instance_url","id","token_type":"Bearer","scope":"api",
// "issued_at"} with no refresh_token and no expires_in; the session lasts
// session_timeout on the fake's clock.
//
// REST API under /services/data/vNN.N/, for each request in order:
//   1. "Authorization: Bearer <session>" must name a live session, else 401
//      [{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}];
//   2. the next scripted reply whose `match` occurs in the target answers
//      instead (nothing applied), unless `apply_first`;
//   3. the daily API allocation: every authenticated request counts; past
//      daily_api_limit the reply is 403 [{"errorCode":"REQUEST_LIMIT_EXCEEDED",
//      "message":"TotalRequests Limit exceeded."}]. Every API reply carries
//      "Sforce-Limit-Info: api-usage=N/M";
//   4. the request is executed. Error bodies are always the JSON array
//      envelope [{"message","errorCode","fields"}].
// Supported:
//   GET  sobjects/{obj}/describe   name, createable/updateable/deletable and
//        fields [{name,type,externalId,idLookup,unique,nillable,createable,
//        updateable,length,referenceTo,relationshipName}] (404 NOT_FOUND for
//        an unknown object).
//   GET  limits                    DailyApiRequests {Max, Remaining}, ...
//   PATCH composite/sobjects/{obj}/{extField}  (API v46+) upsert by external
//        id: {"allOrNone":bool,"records":[{"attributes":{"type":obj},...}]}.
//        Whole-request errors (nothing applied): more than
//        max_collection_records records (400 EXCEEDED_ID_LIMIT), a record
//        without attributes.type (400 INVALID_FIELD) or of another type (400
//        INVALID_TYPE), an unknown field or a bad relationship (400
//        INVALID_FIELD "No such column ..."), a JSON value of the wrong type
//        (400 JSON_PARSER_ERROR "Cannot deserialize instance of ..."), an
//        extField that is not an External ID field (404 NOT_FOUND).
//        Otherwise 200 with one result per record in input order:
//        {"id","success","errors":[{"statusCode","message","fields"}],"created"}.
//        Per-record errors: external id missing (MISSING_ARGUMENT), the same
//        external id twice in the request or matching several records
//        (DUPLICATE_EXTERNAL_ID), required field missing on create
//        (REQUIRED_FIELD_MISSING), bad email (INVALID_EMAIL_ADDRESS), too long
//        text (STRING_TOO_LONG), read-only field (INVALID_FIELD_FOR_INSERT_UPDATE),
//        unknown parent external id (INVALID_FIELD "Foreign key external ID:
//        ... not found"), an injected lock (UNABLE_TO_LOCK_ROW). With
//        allOrNone true any failure rolls everything back: the failing
//        records keep their errors, the others get
//        ALL_OR_NONE_OPERATION_ROLLED_BACK. Field names are case-insensitive.
//   DELETE composite/sobjects?ids=a,b&allOrNone=false  per-id results in
//        order (MALFORMED_ID, ENTITY_IS_DELETED for deleted records,
//        INVALID_CROSS_REFERENCE_KEY for unknown ids, UNABLE_TO_LOCK_ROW).
//        Deleted records go to a recycle bin.
//   GET  query?q=SELECT f1, f2 FROM obj WHERE field IN ('a', 'b') (or
//        = 'a'): text values are compared case-insensitively like SOQL;
//        literals must be quoted for text fields and unquoted for numbers
//        (400 INVALID_QUERY_FILTER_OPERATOR otherwise); unknown fields 400
//        INVALID_FIELD; anything else 400 MALFORMED_QUERY. Results come in
//        pages of query_page_size with nextRecordsUrl (GET query/{locator}).
//        A target longer than max_url_length is 414.
//   Bulk API 2.0 ingest:
//     POST  jobs/ingest {"object","operation":"upsert"|"insert"|"update"|
//           "delete","externalIdFieldName","contentType":"CSV","lineEnding":
//           "LF"|"CRLF","columnDelimiter":"COMMA"} -> 200 job info, state Open.
//     PUT   jobs/ingest/{id}/batches (Content-Type text/csv, job Open, once,
//           at most max_upload_bytes) -> 201.
//     PATCH jobs/ingest/{id} {"state":"UploadComplete"|"Aborted"}.
//     GET   jobs/ingest/{id}: UploadComplete -> InProgress for
//           bulk_polls_in_progress polls, then the rows are applied with the
//           collections rules and the job is JobComplete (or Failed with
//           errorMessage "InvalidBatch : Field name not found : X" for an
//           unknown column, "ClientInputError : LineEnding is invalid ..." for
//           CR line ends under LF; then every row is unprocessed).
//     GET   jobs/ingest/{id}/successfulResults/ ("sf__Id","sf__Created",
//           original columns), failedResults/ ("sf__Id","sf__Error" as
//           "CODE:message:--", original columns), unprocessedrecords/
//           (original columns): CSV, rows shuffled when shuffle_bulk_results.
//     CSV cells: empty = leave unchanged, #N/A = set to null.
//
// Thread-safety: every public method is thread-safe; requests may arrive
// concurrently. Start() returns kUnavailable if the port cannot be bound.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/clock.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

enum class SfFieldType { kString, kEmail, kDouble, kBoolean, kDate, kDateTime, kReference };

struct SfFieldDef {
  SfFieldType type = SfFieldType::kString;
  bool required = false;  // on create (nillable false, no default)
  bool external_id = false;
  bool unique = false;
  bool updateable = true;  // false: a formula or system field
  int length = 255;        // text fields
  // kReference: the parent object and the relationship name used to set the
  // lookup by the parent's external id ("Account": {"Ext__c": "A-1"}).
  std::string reference_to;
  std::string relationship_name;
};

struct SfObjectDef {
  std::string key_prefix;                    // first three characters of record ids ("003")
  std::map<std::string, SfFieldDef> fields;  // by API name, without Id
};

// Contact (003: LastName required, FirstName, Email, Phone, Title, Plan__c
// (40 chars), Seats__c double, Active__c boolean, Birthdate date,
// Last_Seen__c datetime, Warehouse_Id__c external id, AccountId -> Account,
// Score__c read-only) and Account (001: Name required, Ext_Acct__c external
// id, Industry).
std::map<std::string, SfObjectDef> DefaultSalesforceObjects();

struct FakeSalesforceOptions {
  // Time for sessions, assertion expiry; null: the system clock.
  Clock* clock = nullptr;
  // The aud the assertion must carry; empty: BaseUrl().
  std::string audience;
  // The instance_url the token reply names; empty: BaseUrl().
  std::string instance_url;
  std::chrono::seconds max_assertion_lifetime{180};
  std::chrono::seconds session_timeout{7200};
  int min_api_version = 31;
  int min_upsert_api_version = 46;
  int max_collection_records = 200;
  int64_t daily_api_limit = 15'000;
  int bulk_polls_in_progress = 2;
  size_t max_upload_bytes = 150 * 1024 * 1024;
  size_t max_url_length = 16'384;
  int query_page_size = 2000;
  bool shuffle_bulk_results = true;
  uint64_t seed = 42;
  std::map<std::string, SfObjectDef> objects = DefaultSalesforceObjects();
};

// A scripted reply for the next request whose target contains `match`
// ("" = any API request; "/services/oauth2/token" for the token endpoint).
struct FakeSalesforceReply {
  std::string match;
  int status = 503;
  std::string body;  // empty: an error envelope for `status`
  TestHeaders headers;
  std::chrono::milliseconds delay{0};
  bool reset_connection = false;
  // Execute the request first, then answer with this reply.
  bool apply_first = false;

  static FakeSalesforceReply Error(int status, std::string error_code, std::string message,
                                   std::string match = "");
  // 403 REQUEST_LIMIT_EXCEEDED for the concurrent long-running request limit
  // (the daily allocation is not exhausted: Sforce-Limit-Info says so).
  static FakeSalesforceReply ConcurrentLimit(std::string match = "");
};

struct FakeSalesforceRecord {
  std::string id;
  std::map<std::string, nlohmann::json> fields;  // canonical names; null values left out
};

struct FakeSalesforceRequest {
  std::string method;
  std::string target;
  // "token", "describe", "limits", "upsert", "delete", "query", "job_create",
  // "job_upload", "job_state", "job_get", "job_results", "other".
  std::string kind;
  std::string body;
  std::string host;           // the Host header
  std::string authorization;  // the Authorization header
  int status = 0;             // 0 for a reset
  int records = 0;            // records in an upsert, ids in a delete
};

struct FakeSalesforceJob {
  std::string id;
  std::string object;
  std::string operation;
  std::string external_id_field;
  std::string state;
  std::string error_message;
  int64_t processed = 0;
  int64_t failed = 0;
  int polls = 0;
  int uploads = 0;
};

class FakeSalesforceServer {
 public:
  explicit FakeSalesforceServer(FakeSalesforceOptions options = {});
  ~FakeSalesforceServer();
  FakeSalesforceServer(const FakeSalesforceServer&) = delete;
  FakeSalesforceServer& operator=(const FakeSalesforceServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the login_url (and instance) to configure.
  std::string BaseUrl() const;

  // --- Setup ---------------------------------------------------------------
  // Registers a connected app (consumer key -> certificate's public key) and
  // returns a freshly generated private key PEM for it, unless
  // `public_key_pem` is given.
  std::string AddConnectedApp(const std::string& consumer_key,
                              const std::string& public_key_pem = "");
  void AddUser(const std::string& username, bool pre_authorized = true);
  void SetPreAuthorized(const std::string& username, bool pre_authorized);
  void DefineObject(const std::string& name, SfObjectDef def);
  // Creates a record directly (no validation); returns its id.
  std::string Seed(const std::string& object, const std::map<std::string, nlohmann::json>& fields);
  // The next `times` writes (upsert or delete) of the record whose external
  // id is `external_id` fail with UNABLE_TO_LOCK_ROW.
  void LockRecord(const std::string& object, const std::string& external_id, int times);
  // Ends every session (the next API request gets 401 INVALID_SESSION_ID).
  void ExpireSessions();
  void SetApiUsage(int64_t used, int64_t limit);
  // The instance_url later token replies name (empty: BaseUrl()).
  void SetInstanceUrl(const std::string& url);

  // --- Scripting -----------------------------------------------------------
  void Enqueue(FakeSalesforceReply reply);
  void EnqueueN(int count, const FakeSalesforceReply& reply);

  // --- Inspection ----------------------------------------------------------
  // Live records of `object`, ordered by id.
  std::vector<FakeSalesforceRecord> Records(const std::string& object) const;
  // Live records whose `field` equals `value` (exact text).
  std::vector<FakeSalesforceRecord> Find(const std::string& object, const std::string& field,
                                         const nlohmann::json& value) const;
  size_t recycle_bin_size() const;
  std::vector<FakeSalesforceRequest> Requests() const;
  int64_t CountRequests(const std::string& kind, int status = 0) const;
  int64_t request_count() const;  // API requests (token requests excluded)
  std::vector<FakeSalesforceJob> Jobs() const;
  int64_t sessions_issued() const;
  int64_t api_usage() const;
  void ClearRequests();

 private:
  struct App {
    std::unique_ptr<Rs256Key> public_key;
  };
  struct Session {
    std::string username;
    Clock::TimePoint expires;
  };
  struct Record {
    std::string id;
    std::map<std::string, nlohmann::json> fields;
  };
  struct ItemError {
    std::string code;
    std::string message;
    std::vector<std::string> fields;
  };
  struct ItemResult {
    std::string id;
    bool created = false;
    std::vector<ItemError> errors;
  };
  struct Job {
    FakeSalesforceJob info;
    std::string line_ending = "LF";
    std::string csv;
    std::vector<std::string> header;
    // Result rows: original cells plus sf__ columns.
    std::vector<std::vector<std::string>> successful;  // sf__Id, sf__Created, cells...
    std::vector<std::vector<std::string>> failed;      // sf__Id, sf__Error, cells...
    std::vector<std::vector<std::string>> unprocessed;
  };
  struct Reply {
    int status = 200;
    std::string body;
    std::string content_type = "application/json;charset=UTF-8";
  };
  // A value to write: null clears the field; a parent lookup by external id.
  struct Write {
    std::string field;  // canonical
    nlohmann::json value;
    bool is_relationship = false;
    std::string parent_field;  // canonical, on the parent object
  };

  TestResponse Handle(const TestRequest& req);
  TestResponse HandleToken(const TestRequest& req);
  Reply HandleApi(const std::string& method, const std::string& path, const std::string& query,
                  const TestRequest& req, FakeSalesforceRequest& log);
  Reply Describe(const std::string& object);
  Reply Limits();
  Reply Upsert(const std::string& object, const std::string& ext_field, const std::string& body,
               FakeSalesforceRequest& log);
  Reply Delete(const std::string& query, FakeSalesforceRequest& log);
  Reply Query(const std::string& soql);
  Reply QueryMore(const std::string& locator);
  Reply CreateJob(const std::string& body);
  Reply UploadJob(const std::string& id, const TestRequest& req);
  Reply ChangeJobState(const std::string& id, const std::string& body);
  Reply GetJob(const std::string& id);
  Reply JobResults(const std::string& id, const std::string& which);
  void ProcessJob(Job& job);

  // Applies one upsert (already resolved writes) by external id; `dry` only
  // validates. Requires mu_.
  ItemResult ApplyUpsert(const std::string& object, const std::string& ext_field,
                         const nlohmann::json& ext_value, const std::vector<Write>& writes,
                         bool dry);
  std::vector<std::string> MatchExternalId(const std::string& object, const std::string& field,
                                           const nlohmann::json& value) const;
  bool TakeLock(const std::string& object, const Record& record);
  bool TakeLockByValue(const std::string& object, const std::string& value);
  std::string NewId(const std::string& object);
  const SfObjectDef* FindObject(const std::string& name, std::string* canonical = nullptr) const;
  static const SfFieldDef* FindField(const SfObjectDef& def, const std::string& name,
                                     std::string* canonical = nullptr);
  Reply JobInfo(const Job& job) const;
  Clock& clock() const;

  FakeSalesforceOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::map<std::string, App> apps_;
  std::map<std::string, bool> users_;  // username -> pre-authorised
  std::map<std::string, Session> sessions_;
  std::map<std::string, std::map<std::string, Record>> records_;  // object -> id -> record
  std::map<std::string, std::map<std::string, Record>> recycle_bin_;
  std::map<std::pair<std::string, std::string>, int> locks_;  // (object, lower ext id) -> times
  std::map<std::string, Job> jobs_;
  std::map<std::string, std::vector<nlohmann::json>> query_pages_;  // locator -> remaining
  std::deque<FakeSalesforceReply> script_;
  std::vector<FakeSalesforceRequest> requests_;
  std::mt19937_64 rng_;
  int64_t next_id_ = 1;
  int64_t next_locator_ = 1;
  int64_t sessions_issued_ = 0;
  int64_t api_used_ = 0;
  int64_t api_limit_ = 0;
};

}  // namespace backflow
