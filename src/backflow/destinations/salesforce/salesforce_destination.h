// Salesforce destination ("salesforce"): keeps the records of one sObject
// (Contact, Lead, Account, a custom object...) equal to a model by upserting
// them on an External ID field, through the REST API's sObject Collections
// and, for large batches, Bulk API 2.0 (see ../shared/reference/destinations.md
// §3).
//
// Auth: the OAuth 2.0 JWT bearer flow (delivery/jwt_bearer.h). The assertion
// is signed with the private key whose certificate is uploaded to the
// connected app: iss = consumer_key, sub = username, aud = audience (default
// login_url), exp = now + 150 s. It is exchanged at
// {login_url}/services/oauth2/token; the reply's instance_url is the API host
// unless base_url overrides it. Salesforce issues no refresh token and no
// expires_in: the session is kept until a request gets 401, then a new one is
// minted once and the request repeated; a second 401 stops the run.
//
// Action upsert_record. The field mapped from the model's primary key is the
// External ID field records are upserted and deleted by; the other mapped
// fields are Salesforce field API names ("Account.Ext_Acct__c" sets a lookup
// by the parent's external id). Per batch (at most 10,000 records):
//   0. once per destination, GET sobjects/{object}/describe checks that the
//      object, the External ID field and every mapped field exist and are
//      writable (else the run stops with kFailedPrecondition).
//   1. records of the same external id are collapsed (the last wins, the
//      earlier ones share its outcome).
//   2. when at least bulk_threshold records are upserted, a Bulk API 2.0
//      ingest job: create (operation upsert), PUT one CSV (empty cell =
//      unchanged, #N/A = null), PATCH UploadComplete, poll GET with backoff
//      (1 s doubling to 30 s, up to bulk_job_timeout_s; then the job is
//      aborted), read successfulResults / failedResults / unprocessedrecords
//      and match rows to records by the external id column (their order is not
//      guaranteed). An upload that fails aborts the job and a new one is tried.
//      The job id is not persisted: records of a job interrupted by a crash
//      are sent again by the next run (upsert is idempotent).
//   3. other upserts: PATCH composite/sobjects/{object}/{extField} with
//      {"allOrNone":false,"records":[...]} in requests of at most 200, results
//      read by position.
//   4. deletes: GET query (SOQL SELECT Id, {ext} FROM {object} WHERE {ext} IN
//      (...)) finds the record ids, then DELETE composite/sobjects?ids=...
//      (at most 200 per request); a record Salesforce does not have counts
//      as deleted.
//
// Replies: per-record errors are classified by statusCode: UNABLE_TO_LOCK_ROW
// is retried (backoff, up to max_retries rounds, then kUnavailable);
// ALL_OR_NONE_OPERATION_ROLLED_BACK rows are re-sent without the failing
// ones; other errors fail the record with kInvalidArgument quoting the code,
// message and fields. A whole-request 400 is bisected to the record at fault,
// except codes naming the mapping (INVALID_FIELD, NOT_FOUND, INVALID_TYPE,
// INVALIDJOB, ...) which stop the run with kFailedPrecondition. 403
// REQUEST_LIMIT_EXCEEDED is a rate limit: when Sforce-Limit-Info shows the
// daily allocation used up (or is absent) the run stops with
// kResourceExhausted and this destination sends nothing for 15 minutes;
// otherwise (the concurrent long-running request limit) it is retried with
// backoff. Other 403s stop the run (kPermissionDenied); 5xx, 408 and
// transport errors are retried with backoff up to max_retries.
//
// Thread-safety: the destination may be shared by sessions on several
// threads (its token source, caches and holds are thread-safe); each session
// is used by one thread at a time. concurrency() is 1: parallel writes to
// the same records cause UNABLE_TO_LOCK_ROW.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"

namespace backflow {

DestinationDefinition SalesforceDestinationDefinition();

// --- Exposed for tests and the fake server. ---

inline constexpr char kSalesforceDefaultApiVersion[] = "62.0";
inline constexpr char kSalesforceDefaultLoginUrl[] = "https://login.salesforce.com";
inline constexpr char kSalesforceTokenPath[] = "/services/oauth2/token";
// sObject Collections' limit per request.
inline constexpr int kSalesforceCollectionMax = 200;

// The API usage a reply reports in "Sforce-Limit-Info: api-usage=123/15000".
struct SforceApiUsage {
  int64_t used = 0;
  int64_t limit = 0;
};
std::optional<SforceApiUsage> ParseSforceLimitInfo(std::string_view header);

// A SOQL string literal: single-quoted, with \ ' " and control characters
// backslash-escaped.
std::string SoqlQuote(std::string_view text);

// One Bulk API 2.0 CSV cell: quoted (quotes doubled) when it holds a comma,
// quote, line break or leading/trailing space, else as-is.
std::string SalesforceCsvCell(std::string_view text);

// Parses RFC 4180 CSV (LF or CRLF line ends) as Bulk API 2.0 results come.
// kInvalidArgument for an unterminated quote.
absl::StatusOr<std::vector<std::vector<std::string>>> ParseSalesforceCsv(std::string_view text);

// Implemented by the destination the definition creates: the API usage the
// last reply reported, if any.
class SalesforceApiUsageReporter {
 public:
  virtual ~SalesforceApiUsageReporter() = default;
  virtual std::optional<SforceApiUsage> last_api_usage() const = 0;
};

}  // namespace backflow
