// FakeIterableServer: a protocol-faithful fake of Iterable's user and event
// APIs (see ../shared/reference/destinations.md §5) for tests.
//
// Built on HttpTestServer. Routes: POST /api/users/bulkUpdate, POST
// /api/events/trackBulk, DELETE /api/users/{email}, DELETE
// /api/users/byUserId/{userId} (path segments percent-decoded) and GET
// /api/users/getFields; anything else gets 404 {"msg":"Not found",...}.
// Error bodies use Iterable's envelope {"msg":"…","code":"…","params":null}.
// For every request, in order:
//   1. auth: the "Api-Key" header must hold a key from api_keys, else 401
//      code BadApiKey (counted by unauthorized_count()). The key's type
//      decides what it may call: kServerSide everything, kReadOnly GET only,
//      kJavaScript and kMobile none of these endpoints (they are limited to
//      single-user endpoints): 403 code Forbidden otherwise.
//   2. rate limit, per key and endpoint: at most `*_per_second` requests in
//      each one-second window of `clock` (windows aligned to whole seconds);
//      over it, 429 code RateLimitExceeded without Retry-After (counted by
//      rate_limited_count()); nothing is applied.
//   3. the next scripted reply whose path matches, if any: it replaces the
//      outcome; with `apply` the request is processed first (the "written but
//      the reply was lost" case).
//   4. request checks: POST needs Content-Type application/json (else 400
//      BadJsonBody) and a body of at most max_body_bytes (else 413);
//      unparsable JSON gets 400 BadJsonBody; a body without the "users" /
//      "events" array, more than max_records_per_request of them, an object
//      without a non-empty email or userId, an event without a non-empty
//      eventName, a non-integer createdAt or a non-string id gets 400
//      BadParams; an empty array gets 400 BadParams with reject_empty_bulk,
//      else 200 with zero counts. A user or event with an email passed to
//      RejectRequestsWith() gets a whole-request 400 BadParams (a stand-in
//      for refusals the client cannot foresee). With reject_type_mismatch a
//      data field whose type conflicts with the schema gets a whole-request
//      400 code RequestFieldsTypesMismatched (params.validationErrors).
//   5. per record, keyed by identifier in the 200 reply: an email that is
//      not an address -> failedUpdates.invalidEmails; a userId with control
//      characters -> invalidUserIds; a forgotten (ForgetEmail/ForgetUserId)
//      user -> forgottenEmails / forgottenUserIds; an email and a userId of
//      two different users -> conflictEmails and conflictUserIds (users
//      only); dataFields that is not an object -> invalidDataEmails /
//      invalidDataUserIds (users only); a user the project cannot create ->
//      notFoundEmails / notFoundUserIds; an event name from
//      disallowed_event_names -> disallowedEventNames. Lists name the
//      identifier as sent (emails) and the record is not applied.
//
// Effects: users are found by email (case-insensitive) or userId and created
// as the project type allows: email-based projects create by email, and by
// userId only when preferUserId is true (with a placeholder, empty email);
// userId-based projects create by userId only; hybrid ones by either.
// dataFields merge into the user's (top-level keys replaced, or nested
// objects merged with mergeNestedObjects); a null value sets the field to
// null. Field types are inferred from the first non-null value (string,
// date, long/double (compatible), boolean, object, array); a later value of
// another type is dropped and listed in filteredOutFields, as is a new field
// when createNewFields (else create_new_fields_default) is false; new fields
// are listed in createdFields. Events are stored (creating their user like
// an update without preferUserId); an event whose id was already stored
// replaces it (counted by event_overwrite_count()). A delete removes the
// user and answers 200 code Success; an unknown user gets
// missing_user_delete_status with code error.users.noUserWithIdExists.
//
// Thread-safety: every public method is thread-safe; the handler runs on
// HttpTestServer's connection threads under one lock (scripted delays are
// taken outside it). Start() returns kUnavailable if no port can be bound.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
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

enum class IterableKeyType { kServerSide, kReadOnly, kJavaScript, kMobile };
enum class IterableProjectType { kEmailBased, kUserIdBased, kHybrid };

struct FakeIterableOptions {
  // API key -> its type.
  std::map<std::string, IterableKeyType> api_keys;
  // Rate windows use this clock; nullptr: SystemClock().
  Clock* clock = nullptr;
  IterableProjectType project_type = IterableProjectType::kHybrid;
  // The brief's defaults; the hard caps are unverified.
  size_t max_records_per_request = 1000;
  size_t max_body_bytes = 4 * 1024 * 1024;
  int64_t bulk_update_per_second = 5;
  int64_t track_bulk_per_second = 10;
  int64_t delete_per_second = 100;
  // The project's "create new fields" setting, used when a request omits
  // createNewFields.
  bool create_new_fields_default = true;
  // Type conflicts reject the whole request (400) instead of being filtered.
  bool reject_type_mismatch = false;
  // An empty users/events array gets 400 instead of 200 with zero counts.
  bool reject_empty_bulk = false;
  int missing_user_delete_status = 404;
  std::set<std::string> disallowed_event_names;
};

// One scripted reply, used by the next authenticated, non-rate-limited
// request to `path` (any path when empty).
struct FakeIterableReply {
  int status = 500;  // 0 with `apply`: the normal reply (only delayed)
  std::string code;  // the envelope's code; empty: one fitting the status
  std::string msg = "scripted reply";
  std::string body;  // when set, replaces the envelope
  TestHeaders headers;
  std::chrono::milliseconds delay{0};  // real time, before replying
  bool reset_connection = false;
  bool apply = false;  // process the request before answering
  std::string path;

  static FakeIterableReply Status(int status, std::string code = "", std::string path = "");
  // HTTP 200 whose envelope carries `code` (not "Success").
  static FakeIterableReply CodeIn200(std::string code, std::string msg, std::string path = "");
  // Processes the request, then answers normally after `delay`.
  static FakeIterableReply Slow(std::chrono::milliseconds delay);
};

struct FakeIterableUser {
  std::string email;  // as first given; empty for placeholder-email users
  std::string user_id;
  nlohmann::json data_fields = nlohmann::json::object();
};

struct FakeIterableEvent {
  std::string id;  // empty when none was sent
  std::string event_name;
  std::string email;
  std::string user_id;
  std::optional<int64_t> created_at;
  nlohmann::json data_fields = nlohmann::json::object();
  nlohmann::json object;  // as received
};

struct FakeIterableRequest {
  std::string method;
  std::string target;
  std::string api_key;  // the Api-Key header as sent
  std::string content_type;
  std::string body;
  int status = 0;  // 0 when the connection was reset
  std::string reply_body;
};

class FakeIterableServer {
 public:
  explicit FakeIterableServer(FakeIterableOptions options = {});
  ~FakeIterableServer();
  FakeIterableServer(const FakeIterableServer&) = delete;
  FakeIterableServer& operator=(const FakeIterableServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url to configure.
  std::string BaseUrl() const;

  // --- Configuration and scripting -------------------------------------
  void SetApiKey(const std::string& key, IterableKeyType type);
  void EnqueueReply(FakeIterableReply reply);
  void EnqueueReplies(int count, const FakeIterableReply& reply);
  // Requests holding a user or event with this email get 400 until cleared.
  void RejectRequestsWith(const std::string& email);
  void ClearRejections();
  // GDPR-forgets a user (removing them) and blocks later writes for them.
  void ForgetEmail(const std::string& email);
  void ForgetUserId(const std::string& user_id);
  // Creates or replaces a user (either identifier may be empty).
  void PutUser(const std::string& email, const std::string& user_id,
               nlohmann::json data_fields = nlohmann::json::object());

  // --- Inspection --------------------------------------------------------
  std::vector<FakeIterableUser> AllUsers() const;
  // Lowercased email -> dataFields, for users with an email.
  std::map<std::string, nlohmann::json> UsersByEmail() const;
  // userId -> dataFields, for users with a userId.
  std::map<std::string, nlohmann::json> UsersByUserId() const;
  std::optional<FakeIterableUser> FindUser(const std::string& email,
                                           const std::string& user_id) const;
  // Stored events in first-arrival order (an overwritten event keeps its place).
  std::vector<FakeIterableEvent> Events() const;
  int64_t event_overwrite_count() const;
  // Field name -> inferred type ("string", "date", "long", "double",
  // "boolean", "object", "array") of user fields.
  std::map<std::string, std::string> UserFieldTypes() const;
  // "email:<email>" / "userId:<id>" of deleted users, in order.
  std::vector<std::string> Deleted() const;
  std::vector<FakeIterableRequest> Requests() const;
  int64_t request_count() const;
  // Requests to `path` (query excluded), any method.
  int64_t count_for_path(const std::string& path) const;
  int64_t count_with_status(int status) const;
  int64_t unauthorized_count() const;
  int64_t rate_limited_count() const;
  // Forgets requests and counters (not users, events or the script).
  void ClearHistory();

 private:
  struct Window {
    int64_t index = -1;
    int64_t count = 0;
  };
  struct Outcome {
    int status = 200;
    nlohmann::json body;
  };
  struct User {
    std::string email;
    std::string user_id;
    nlohmann::json data_fields = nlohmann::json::object();
  };
  enum class Resolution { kFound, kConflict, kNotFound };

  TestResponse Handle(const TestRequest& req);
  Outcome ProcessBulkUpdate(const nlohmann::json& body);
  Outcome ProcessTrackBulk(const nlohmann::json& body);
  Outcome ProcessDelete(const std::string& path);
  // Checks the shape of a users/events array; a 400 outcome when invalid.
  std::optional<Outcome> CheckRecords(const nlohmann::json& body, const char* array,
                                      bool events) const;
  // Finds (or creates, as the project allows) the user; sets *user when found.
  Resolution ResolveLocked(const std::string& email, const std::string& user_id, bool create,
                           bool prefer_user_id, User** user);
  User* FindByEmailLocked(const std::string& email);
  User* FindByUserIdLocked(const std::string& user_id);
  // Merges `data` into `target` under `schema` (which learns new fields);
  // dropped and created field names are added to the sets.
  void MergeFieldsLocked(std::map<std::string, std::string>& schema, const nlohmann::json& data,
                         bool create_new, bool merge_nested, nlohmann::json* target,
                         std::set<std::string>& dropped, std::set<std::string>& created);
  void Record(const TestRequest& req, int status, const std::string& reply_body);

  FakeIterableOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::deque<FakeIterableReply> script_;
  std::set<std::string> rejected_emails_;   // lowercased
  std::set<std::string> forgotten_emails_;  // lowercased
  std::set<std::string> forgotten_user_ids_;
  std::map<std::string, Window> windows_;  // "<key> <endpoint>" -> current window
  std::list<User> users_;                  // stable addresses
  std::map<std::string, std::string> user_schema_;
  std::map<std::string, std::map<std::string, std::string>> event_schemas_;  // by event name
  std::vector<FakeIterableEvent> events_;
  int64_t overwrites_ = 0;
  std::vector<std::string> deleted_;
  std::vector<FakeIterableRequest> requests_;
  int64_t unauthorized_ = 0;
  int64_t rate_limited_ = 0;
};

}  // namespace backflow
