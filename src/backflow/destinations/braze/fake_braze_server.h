// FakeBrazeServer: a protocol-faithful fake of Braze's REST user-data
// endpoints (POST /users/track and POST /users/delete) for tests.
//
// Built on HttpTestServer. What it enforces, in order, for every request:
//   1. Routing: only POST /users/track and POST /users/delete exist; other
//      paths get 404 {"message":"Not Found"}.
//   2. Auth: "Authorization: Bearer <key>" with a key from api_keys. Missing,
//      malformed or unknown keys get 401 {"message":"Unknown or missing REST
//      API Key"}; a known key without the endpoint's permission ("users.track"
//      / "users.delete") gets 403 naming it.
//   3. Rate limit, per key and endpoint: at most `*_rate_limit` requests in
//      each fixed window of `*_rate_window` (windows aligned to multiples of
//      the window since the epoch, on `clock`). Every authenticated reply
//      carries X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset
//      (the window's end, UTC epoch seconds); over the limit the reply is 429
//      {"message":"Rate limit exceeded"} and nothing is applied.
//   4. A scripted reply, if one is queued (injected 5xx, 429, slow replies,
//      connection resets), replaces the normal outcome; by default nothing is
//      applied for non-2xx scripted statuses.
//   5. Request validation: Content-Type application/json and a JSON object
//      body, else 400. /users/track: `attributes`, `events`, `purchases` must
//      be arrays; all empty gives 400 "Valid data must be provided in the
//      'attributes', 'events', or 'purchases' fields."; more objects than
//      max_objects_per_array in one array (or, with combined_object_cap, in
//      all three together) gives 400 "Max Input Length Exceeded"; an object
//      for an external_id passed to RejectRequestsWith() gives a whole-request
//      400 (a stand-in for Braze's fatal errors). /users/delete: exactly one
//      of external_ids, user_aliases, braze_ids, email_addresses,
//      phone_numbers, non-empty, at most max_delete_ids, else 400.
//   6. Per-object validation on /users/track (non-fatal): each object needs
//      exactly one of external_id / braze_id / user_alias, or else email or
//      phone; external_id and braze_id must be non-empty strings, user_alias
//      {alias_name, alias_label} strings, a non-null email must look like an
//      address, dob must be YYYY-MM-DD, gender one of M F O N P; events need
//      a non-empty string name, an ISO-8601 time with a zone and an object
//      (or absent) properties; purchases need product_id, currency, price
//      and time. Invalid objects are skipped and listed as
//      {"type":"<reason>","input_array":"<array>","index":<i>} in `errors`
//      of the 201 {"message":"success","attributes_processed":n,...} reply.
//
// Effects of valid objects, in request order: attributes upsert the user
// (created unless `_update_existing_only` is true — then a missing user is
// skipped silently) and merge keys, a null value removing the key (but when
// any attributes object of the request holds a null inside a nested object,
// every object-valued attribute update of the request is dropped, as Braze
// documents); events
// and purchases are appended (creating the user like attributes do); a
// delete removes the users found and answers {"deleted":n,"message":"success"}.
// Users are found by external_id, braze_id, alias, then email or phone.
//
// Thread-safety: every public method is thread-safe; the handler runs on
// HttpTestServer's connection threads under one lock (scripted delays are
// taken outside it). Start() returns kUnavailable if no port can be bound.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/clock.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

inline constexpr char kBrazeUsersTrack[] = "users.track";
inline constexpr char kBrazeUsersDelete[] = "users.delete";

struct FakeBrazeOptions {
  // REST API key -> its permissions (kBrazeUsersTrack, kBrazeUsersDelete).
  std::map<std::string, std::set<std::string>> api_keys;
  // Rate windows and X-RateLimit-Reset use this clock; nullptr: SystemClock().
  Clock* clock = nullptr;
  int max_objects_per_array = 75;
  // When true, max_objects_per_array caps attributes + events + purchases
  // together (the newer "75 objects total" contracts).
  bool combined_object_cap = false;
  int max_delete_ids = 50;
  int64_t track_rate_limit = 3000;
  std::chrono::seconds track_rate_window{3};
  int64_t delete_rate_limit = 20000;
  std::chrono::seconds delete_rate_window{60};
};

// One scripted reply, used by the next authenticated, non-rate-limited request.
struct FakeBrazeReply {
  int status = 500;
  // Empty: {"message":"<reason>"}.
  std::string body;
  TestHeaders headers;
  // Real-time wait before replying (client timeouts).
  std::chrono::milliseconds delay{0};
  bool reset_connection = false;
  // Whether the request is processed (state changed) before this reply is
  // sent: the "written but the reply was lost" case. Default false.
  bool apply = false;
  // When set, X-RateLimit-Reset says the window ends this many seconds after
  // the fake's clock (rounded up to a whole second) and Remaining is 0.
  std::optional<int64_t> reset_in_seconds;

  static FakeBrazeReply Status(int status, std::string body = "");
  // 429 with X-RateLimit-Reset `seconds_from_now` after the fake's clock.
  static FakeBrazeReply RateLimited(int64_t seconds_from_now);
  // Processes the request, then replies normally after `delay`.
  static FakeBrazeReply Slow(std::chrono::milliseconds delay);
};

struct FakeBrazeUser {
  std::string braze_id;     // assigned by the fake ("fake-braze-<n>")
  std::string external_id;  // empty when the profile has none
  std::optional<std::pair<std::string, std::string>> alias;  // {alias_name, alias_label}
  // Every attribute set on the profile (standard and custom), identifiers excluded.
  nlohmann::json attributes = nlohmann::json::object();
};

struct FakeBrazeEvent {
  std::string braze_id;
  std::string external_id;
  nlohmann::json object;  // the event or purchase object as received
};

struct FakeBrazeRequest {
  std::string path;
  std::string authorization;
  std::string content_type;
  std::string body;
  int status = 0;  // 0 when the connection was reset
  std::string reply_body;
};

class FakeBrazeServer {
 public:
  explicit FakeBrazeServer(FakeBrazeOptions options = {});
  ~FakeBrazeServer();
  FakeBrazeServer(const FakeBrazeServer&) = delete;
  FakeBrazeServer& operator=(const FakeBrazeServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the REST endpoint to use as base_url.
  std::string BaseUrl() const;

  // --- Configuration and scripting -------------------------------------
  void SetApiKey(const std::string& key, std::set<std::string> permissions);
  void EnqueueReply(FakeBrazeReply reply);
  void EnqueueReplies(int count, const FakeBrazeReply& reply);
  // Requests to /users/track holding an object for this external_id are
  // rejected whole with 400 until cleared.
  void RejectRequestsWith(const std::string& external_id);
  void ClearRejections();
  // Creates or replaces a profile (for _update_existing_only tests).
  void PutUser(const std::string& external_id, nlohmann::json attributes);

  // --- Inspection --------------------------------------------------------
  // external_id -> merged attributes, for profiles with an external_id.
  std::map<std::string, nlohmann::json> Users() const;
  // Every profile, in braze_id order.
  std::vector<FakeBrazeUser> AllUsers() const;
  std::vector<FakeBrazeEvent> Events() const;
  std::vector<FakeBrazeEvent> Purchases() const;
  // Identifiers of deleted profiles, in deletion order (external_id when
  // set, else braze_id).
  std::vector<std::string> Deleted() const;
  std::vector<FakeBrazeRequest> Requests() const;
  int64_t request_count() const;
  // Requests answered 429 by the rate limiter (scripted ones excluded).
  int64_t rate_limited_count() const;
  // Requests with `status`, scripted or not.
  int64_t count_with_status(int status) const;
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

  TestResponse Handle(const TestRequest& req);
  Outcome ProcessTrack(const nlohmann::json& body);
  Outcome ProcessDelete(const nlohmann::json& body);
  // Why `object` of `array` is invalid, or "" when valid.
  std::string ValidateObject(const std::string& array, const nlohmann::json& object) const;
  FakeBrazeUser* FindUser(const nlohmann::json& object);
  FakeBrazeUser* FindOrCreateUser(const nlohmann::json& object, bool create);
  void Record(const TestRequest& req, int status, const std::string& reply_body);

  FakeBrazeOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::deque<FakeBrazeReply> script_;
  std::set<std::string> rejected_external_ids_;
  std::map<std::string, Window> windows_;  // "<key> <path>" -> current window
  int64_t next_braze_id_ = 1;
  std::map<std::string, FakeBrazeUser> users_;  // by braze_id
  std::vector<FakeBrazeEvent> events_;
  std::vector<FakeBrazeEvent> purchases_;
  std::vector<std::string> deleted_;
  std::vector<FakeBrazeRequest> requests_;
  int64_t rate_limited_ = 0;
};

}  // namespace backflow
