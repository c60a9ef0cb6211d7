// FakeMixpanelServer: a protocol-faithful fake of Mixpanel's ingestion API
// (POST /import and POST /engage) for tests.
//
// Built on HttpTestServer. Every limit is an option, defaulting to the value
// in ../shared/reference/destinations.md §6.
//
// POST /import, in order:
//   1. auth: "Authorization: Basic base64(user:password)". A service account
//      (user and secret from `service_accounts`) also needs
//      ?project_id=<project_id>; the project token is accepted as the user
//      with an empty password (no project_id needed). Anything else gets
//      401 {"code":401,"error":...,"status":"Unauthorized"}, nothing applied;
//   2. the next scripted reply for /import, if any, decides the status,
//      headers and delay; the events are applied only when it says so
//      (default: for 2xx replies);
//   3. Content-Type must be application/json (an array) or
//      application/x-ndjson, without Content-Encoding (gzip is not
//      modelled): else 400; a body over max_import_bytes gets 413; unparsable
//      JSON or more than max_import_events events get 400 without
//      failed_records (nothing applied);
//   4. a rolling-minute byte bucket: when the bytes of the requests accepted
//      in the last 60 s (on `now_ms`) plus this one exceed
//      max_bytes_per_minute, 429 {"code":429,"error":"Project exceeded rate
//      limits. Please retry the request with exponential backoff.",...} with
//      no Retry-After;
//   5. with strict=1 every event is validated: event name, properties
//      object, properties.time (seconds or ms; from 1971-01-01 to now + 1 h),
//      properties.distinct_id (string or number, not a placeholder),
//      properties.$insert_id (1-36 letters, digits, dashes, not a
//      placeholder), fewer than max_properties properties and nested
//      entries, under max_event_bytes; a distinct_id listed by
//      RejectDistinctId() fails too. Valid events are ingested, deduplicated
//      on (event, distinct_id, time in ms, $insert_id); if any failed the
//      reply is the documented 400 partial success with
//      failed_records[{index,insert_id,field,message}] and
//      num_records_imported. Without strict=1 invalid events are dropped
//      silently and the reply is 200.
//
// POST /engage (no auth header; the project token rides in each update):
//   1. the next scripted reply for /engage, as above;
//   2. Content-Encoding (gzip is not supported on profile updates) gets 400;
//      a body over max_engage_bytes gets 413;
//   3. each update must be an object with $token and a non-empty
//      $distinct_id, known top-level keys and exactly one operation of $set,
//      $set_once, $add, $union, $append, $remove, $unset, $delete with the
//      right value shape, under max_event_bytes; more than max_engage_updates
//      updates, unparsable JSON, or a $distinct_id listed by
//      RejectDistinctId() are errors too. A $token other than project_token
//      gets 403 {"error":...,"status":"error"} (or, with
//      forbid_unknown_token = false, an error like the others);
//   4. errors are answered with HTTP 200 and {"status":0,"error":"<first
//      error>"} (body "0" without ?verbose=1), applying nothing (or the valid
//      updates, with engage_apply_valid_on_error); otherwise every update is
//      applied and the reply is {"status":1,"error":null} (body "1").
//      Semantics: $set merges, $set_once sets absent keys, $add adds numbers,
//      $append/$union/$remove edit lists, $unset removes keys, $delete
//      removes the profile; unless "$ignore_time": true, a write also sets
//      "$last_seen" (as Mixpanel bumps it).
// Other paths or methods get 404.
//
// Thread-safety: every public method is thread-safe. Start() returns
// kUnavailable if the port cannot be bound; Stop() (also run by the
// destructor) joins the server threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct FakeMixpanelOptions {
  std::string project_token = "test_project_token";
  int64_t project_id = 4242;
  // Service account username -> secret, each with access to project_id.
  std::map<std::string, std::string> service_accounts = {{"sa.backflow.test", "sa_secret"}};

  size_t max_import_events = 2000;
  size_t max_import_bytes = 10'000'000;
  size_t max_engage_updates = 2000;
  size_t max_engage_bytes = 2'000'000;
  size_t max_event_bytes = 1'000'000;
  size_t max_properties = 255;
  size_t max_insert_id_chars = 36;
  int64_t min_time_ms = 31'536'000'000;  // 1971-01-01
  int64_t future_slack_ms = 3'600'000;
  // Rejected as distinct_id and $insert_id (compared lowercased, trimmed).
  std::set<std::string> placeholder_ids = {"00000000-0000-0000-0000-000000000000",
                                           "<nil>",
                                           "[]",
                                           "{}",
                                           "anon",
                                           "anonymous",
                                           "false",
                                           "true",
                                           "lmy47d",
                                           "n/a",
                                           "na",
                                           "nil",
                                           "none",
                                           "null",
                                           "undefined",
                                           "unknown"};
  // Bytes of accepted requests per rolling minute before 429; 0: no limit.
  size_t max_bytes_per_minute = 2'000'000'000;
  // 403 for an /engage update with another project's token (else status 0).
  bool forbid_unknown_token = true;
  bool engage_apply_valid_on_error = false;
  // Milliseconds since the epoch, for time validation, $last_seen and the
  // rate window. Default: the real time.
  std::function<int64_t()> now_ms;
};

// One scripted reply.
struct FakeMixpanelReply {
  // "/import", "/engage", or empty for whichever request comes next.
  std::string endpoint;
  int status = 200;
  std::string body;  // empty: the endpoint's usual body for `status`
  TestHeaders headers;
  std::chrono::milliseconds delay{0};  // real time, before replying
  bool reset_connection = false;
  // Whether the request is processed (validated and applied) before the
  // scripted reply replaces the real one. Default: for 2xx replies.
  std::optional<bool> apply;

  static FakeMixpanelReply Status(int status, std::string endpoint = "", std::string body = "");
  // Processes the request, then answers `status` after `delay`.
  static FakeMixpanelReply Slow(std::chrono::milliseconds delay, int status = 200);
};

struct MixpanelRequest {
  std::string method;
  std::string target;
  std::string path;  // target without the query
  TestHeaders headers;
  std::string body;
  // How /import authenticated: "service_account:<user>", "project_token",
  // or empty when refused (or for /engage).
  std::string auth;
  int reply_status = 0;  // 0 for a reset connection
  std::string reply_body;
  size_t item_count = 0;  // events or updates in a parsed body
};

struct FailedRecord {
  size_t index = 0;
  std::string insert_id;
  std::string field;
  std::string message;
};

class FakeMixpanelServer {
 public:
  explicit FakeMixpanelServer(FakeMixpanelOptions options = {});
  ~FakeMixpanelServer();
  FakeMixpanelServer(const FakeMixpanelServer&) = delete;
  FakeMixpanelServer& operator=(const FakeMixpanelServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url to configure.
  std::string BaseUrl() const;

  // --- Scripting ---------------------------------------------------------
  void EnqueueReply(FakeMixpanelReply reply);
  void EnqueueReplies(int count, const FakeMixpanelReply& reply);
  // Events and profile updates for this distinct_id fail validation until
  // cleared (a record Mixpanel refuses for reasons a client cannot check).
  void RejectDistinctId(const std::string& distinct_id);
  void ClearRejections();

  // --- Inspection --------------------------------------------------------
  // Ingested events (after dedup), in arrival order.
  std::vector<nlohmann::json> Events() const;
  // distinct_id -> profile properties.
  std::map<std::string, nlohmann::json> Profiles() const;
  std::vector<MixpanelRequest> Requests() const;
  int64_t request_count() const;
  int64_t import_request_count() const;
  int64_t engage_request_count() const;
  int64_t unauthorized_count() const;
  int64_t rate_limited_count() const;
  // Valid events not ingested again because their dedup key was seen.
  int64_t duplicate_count() const;
  // Validation failures reported by /import (strict) so far.
  std::vector<FailedRecord> FailedRecords() const;
  // Forgets events, profiles, requests and counters (not the script).
  void ClearHistory();

 private:
  TestResponse Handle(const TestRequest& req);
  TestResponse HandleImport(const TestRequest& req, MixpanelRequest& rec);
  TestResponse HandleEngage(const TestRequest& req, MixpanelRequest& rec);
  std::optional<FakeMixpanelReply> NextScriptedLocked(const std::string& path);
  // The validation error of one event, if any: {field, message}.
  std::optional<std::pair<std::string, std::string>> CheckEventLocked(const nlohmann::json& ev,
                                                                      int64_t now) const;
  std::optional<std::string> CheckUpdateLocked(const nlohmann::json& u) const;
  void ApplyUpdateLocked(const nlohmann::json& u, int64_t now);
  bool IsPlaceholder(std::string id) const;
  int64_t Now() const;

  FakeMixpanelOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::deque<FakeMixpanelReply> script_;
  std::set<std::string> rejected_ids_;
  std::vector<nlohmann::json> events_;
  std::set<std::string> event_keys_;
  std::map<std::string, nlohmann::json> profiles_;
  std::vector<MixpanelRequest> requests_;
  std::vector<FailedRecord> failed_;
  std::deque<std::pair<int64_t, size_t>> window_;  // (ms, bytes) of accepted requests
  size_t window_bytes_ = 0;
  int64_t import_requests_ = 0;
  int64_t engage_requests_ = 0;
  int64_t unauthorized_ = 0;
  int64_t rate_limited_ = 0;
  int64_t duplicates_ = 0;
};

}  // namespace backflow
