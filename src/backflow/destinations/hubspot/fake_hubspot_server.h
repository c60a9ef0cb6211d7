// FakeHubSpotServer: a protocol-faithful fake of HubSpot's CRM object batch
// API (/crm/v3/objects) for tests, built on HttpTestServer.
//
// What it enforces (see ../shared/reference/destinations.md §2; every limit is
// an option, defaults from the brief):
//   * Auth: "Authorization: Bearer <token>" with a known token, else 401
//     (category INVALID_AUTHENTICATION). Each token has granted scopes
//     ("crm.objects.contacts.write", ... or "*"); a request needing a scope the
//     token lacks gets 403 MISSING_SCOPES naming it in context.missingScopes.
//   * Rate limits, per account: at most `ten_secondly_limit` requests in any
//     rolling `ten_secondly_window` and `daily_limit` per UTC day (both on
//     `clock`); over them, 429 with the documented body
//     {"status":"error","message":"You have reached your ten_secondly_rolling
//     limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}
//     (or DAILY). Every reply carries X-HubSpot-RateLimit-* headers.
//   * POST /crm/v3/objects/{type}/batch/upsert: inputs {idProperty, id,
//     properties[, objectWriteTraceId]}; more than `max_inputs` inputs,
//     malformed inputs, an idProperty that is not a unique property, or
//     duplicate ids in one request -> 400 for the whole batch, nothing
//     applied. Otherwise each input creates or updates the live record whose
//     idProperty equals id ("new": true|false). Invalid property values
//     (unknown or read-only property, bad email, value not among an
//     enumeration's options, object/array value, a unique value another
//     record holds) are reported, depending on `validation`, as 207 with
//     keyed errors {category, message, context:{ids:[id]}, errors:[{code,in,
//     message}]} while the valid inputs are applied, or as one 400 for the
//     whole batch with nothing applied. Property values are stored as text;
//     "" clears a property.
//   * POST .../batch/update: inputs {id[, idProperty], properties}: by record
//     id, or by a unique property; unknown records are OBJECT_NOT_FOUND errors.
//   * POST .../batch/read: {idProperty?, properties, inputs:[{id}]}: 200, or
//     207 with one OBJECT_NOT_FOUND error listing the missing ids in
//     context.ids; archived records are not found.
//   * POST .../batch/archive: inputs [{id}] (record ids) -> 204 No Content;
//     unknown ids are ignored (unverified in the brief).
//   * GET /crm/v3/objects/{type}?limit=N: the first N live records.
//   * Unknown object types -> 400 "Unable to infer object type from: <type>".
//   * Results are returned in reverse input order (`reverse_results`) so a
//     client that matches them by position fails its tests.
// Scripted replies (5xx, 423, 477 + Retry-After, an injected DAILY 429, slow
// replies, connection resets) are consumed, in order, by the next
// authenticated requests, before rate limiting.
//
// Thread-safety: every public method is thread-safe; requests may arrive
// concurrently on several connections. Start() returns kUnavailable if the
// port cannot be bound.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/clock.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

// One object type's properties as the fake's portal defines them.
struct HubSpotObjectSchema {
  // Singular upper-case name used in messages ("CONTACT").
  std::string label;
  // Scope prefix: "crm.objects.contacts" needs ".read" / ".write".
  std::string scope;
  // Writable properties. With FakeHubSpotOptions::strict_properties, writing
  // any other property is a PROPERTY_DOESNT_EXIST error.
  std::set<std::string> properties;
  // Properties with unique values, usable as idProperty (subset of properties).
  std::set<std::string> unique_properties;
  // Enumeration properties and their allowed option values.
  std::map<std::string, std::set<std::string>> options;
  // Properties whose values must look like an email address.
  std::set<std::string> email_properties;
};

// The standard contacts, companies and deals schemas (contacts: email unique).
std::map<std::string, HubSpotObjectSchema> DefaultHubSpotSchemas();

enum class HubSpotValidationMode {
  kMultiStatus,  // 207 with keyed per-input errors; valid inputs applied
  kWholeBatch,   // 400 for the whole batch; nothing applied
};

struct FakeHubSpotOptions {
  // token -> granted scopes; "*" grants every scope.
  std::map<std::string, std::set<std::string>> tokens = {{"pat-na1-fake-token", {"*"}}};
  // Time for the rate-limit windows; nullptr means SystemClock(). Tests pass
  // the client's FakeClock.
  Clock* clock = nullptr;
  int max_inputs = 100;
  int ten_secondly_limit = 190;
  std::chrono::milliseconds ten_secondly_window{10'000};
  int64_t daily_limit = 1'000'000;
  HubSpotValidationMode validation = HubSpotValidationMode::kMultiStatus;
  bool strict_properties = true;
  bool reverse_results = true;
  // Object type name -> schema; aliases map ids like "0-1" to names.
  std::map<std::string, HubSpotObjectSchema> schemas = DefaultHubSpotSchemas();
  std::map<std::string, std::string> aliases = {
      {"0-1", "contacts"}, {"0-2", "companies"}, {"0-3", "deals"}};
};

// A scripted reply. status 0 means "handle the request normally" (after
// `delay`), which makes a slow but otherwise ordinary reply.
struct FakeHubSpotReply {
  int status = 0;
  std::string body;
  TestHeaders headers;
  std::chrono::milliseconds delay{0};
  bool reset_connection = false;

  static FakeHubSpotReply Status(int status, std::string body = "");
  // 429 with policyName DAILY, as HubSpot sends when the account's daily
  // allowance is used up.
  static FakeHubSpotReply DailyLimit();
  // 429 with policyName TEN_SECONDLY_ROLLING.
  static FakeHubSpotReply TenSecondlyLimit();
  static FakeHubSpotReply WithRetryAfter(int status, std::string retry_after);
  static FakeHubSpotReply Slow(std::chrono::milliseconds delay);
  static FakeHubSpotReply Reset();
};

struct FakeHubSpotRecord {
  std::string id;
  std::map<std::string, std::string> properties;  // without the system properties
  bool archived = false;
};

struct FakeHubSpotRequest {
  int64_t sequence = 0;  // 1-based arrival order
  std::string method;
  std::string target;
  std::string object_type;  // canonical name, empty when not an objects call
  std::string operation;    // "upsert", "update", "read", "archive", "list", ""
  std::string body;
  std::string authorization;
  Clock::TimePoint time;  // on the fake's clock
  int status = 0;         // reply status; 0 for a reset
  int inputs = 0;         // number of inputs in a batch body
};

class FakeHubSpotServer {
 public:
  explicit FakeHubSpotServer(FakeHubSpotOptions options = {});
  ~FakeHubSpotServer();
  FakeHubSpotServer(const FakeHubSpotServer&) = delete;
  FakeHubSpotServer& operator=(const FakeHubSpotServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url to configure.
  std::string BaseUrl() const;

  // --- Setup and scripting ----------------------------------------------
  // Adds or replaces an object type (custom objects: "p_pets", alias "2-123").
  void AddSchema(const std::string& name, HubSpotObjectSchema schema,
                 const std::string& alias = "");
  // Adds a writable (optionally unique) property to an existing type.
  void AddProperty(const std::string& type, const std::string& property, bool unique = false);
  void SetValidationMode(HubSpotValidationMode mode);
  // Creates a live record directly; returns its id.
  std::string Seed(const std::string& type, const std::map<std::string, std::string>& properties);
  void Enqueue(FakeHubSpotReply reply);
  void EnqueueN(int count, const FakeHubSpotReply& reply);

  // --- Inspection -------------------------------------------------------
  // Records of `type` (name or alias), ordered by id; archived ones only
  // when `archived`.
  std::vector<FakeHubSpotRecord> Records(const std::string& type, bool archived = false) const;
  // The live record whose `property` equals `value`, if any.
  std::optional<FakeHubSpotRecord> Find(const std::string& type, const std::string& property,
                                        const std::string& value) const;
  std::vector<FakeHubSpotRequest> Requests() const;
  int64_t request_count() const;
  // Requests for one operation ("upsert", "read", ...).
  int64_t CountOperation(const std::string& operation) const;
  // Replies with this status.
  int64_t CountStatus(int status) const;
  // The most requests answered (other than 429) within any window of
  // `window` on the fake's clock.
  int64_t MaxRequestsInWindow(std::chrono::milliseconds window) const;
  void ClearRequests();

 private:
  struct Record {
    std::string id;
    std::map<std::string, std::string> properties;
    bool archived = false;
    Clock::TimePoint created;
    Clock::TimePoint updated;
  };
  struct InputError {
    std::string code;
    std::string in;
    std::string message;
  };
  struct Reply {
    int status = 200;
    nlohmann::json body;  // null: empty body
  };

  TestResponse Handle(const TestRequest& req);
  Reply Route(const std::string& method, const std::string& path, const std::string& query,
              const nlohmann::json& body, const std::set<std::string>& scopes,
              FakeHubSpotRequest& log);
  Reply Upsert(const std::string& type, const nlohmann::json& body, bool update);
  Reply Read(const std::string& type, const nlohmann::json& body);
  Reply Archive(const std::string& type, const nlohmann::json& body);
  Reply List(const std::string& type, const std::string& query);

  std::string Canonical(const std::string& type) const;
  Record* FindLive(const std::string& type, const std::string& property, const std::string& value);
  std::vector<InputError> ValidateProperties(const std::string& type,
                                             const nlohmann::json& properties,
                                             const Record* target);
  nlohmann::json RecordJson(const Record& r, const std::set<std::string>* only) const;
  nlohmann::json ErrorBody(const std::string& category, const std::string& message) const;
  std::string NextCorrelationId();
  TestHeaders RateLimitHeaders(Clock::TimePoint now) const;
  void PruneWindow(Clock::TimePoint now);

  FakeHubSpotOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::deque<FakeHubSpotReply> script_;
  // type -> id -> record.
  std::map<std::string, std::map<int64_t, Record>> records_;
  int64_t next_id_ = 1001;
  int64_t correlation_ = 0;
  std::deque<Clock::TimePoint> window_;  // start times of counted requests
  int64_t day_ = -1;                     // days since epoch of day_count_
  int64_t day_count_ = 0;
  std::vector<FakeHubSpotRequest> requests_;
};

}  // namespace backflow
