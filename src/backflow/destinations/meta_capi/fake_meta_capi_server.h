// FakeMetaCapiServer: a protocol-faithful fake of Meta's Conversions API
// (Graph API POST /<version>/<pixel>/events and GET /<version>/<pixel>) for
// tests. Replies use the Graph error envelope
// {"error":{"message","type","code","error_subcode","is_transient",
//           "error_user_title","error_user_msg","fbtrace_id"}}.
//
// Built on HttpTestServer. For each request, in order:
//   1. a path that is not /<version>/<pixel>[/events] gets 400 code 2500
//      ("Unknown path components"); a version outside api_versions gets 400
//      code 2635; POST to the pixel or GET of /events gets 400 code 100;
//   2. auth: the access_token query parameter or, for POST, an
//      "access_token" member of the JSON body. None: 400 code 104; one not
//      in access_tokens: 400 code 190 (OAuthException), counted by
//      unauthorized_count();
//   3. a pixel not in pixel_ids: 400 code 100, error_subcode 33; then a
//      token in denied_tokens: 403 code 200 ("(#200) Permissions error");
//   4. GET /<version>/<pixel> answers {"id":"<pixel>","name":"…"};
//   5. the next scripted reply, if any, decides the status, body, headers
//      and delay; the request's events are applied only when `apply` says
//      so (default: 2xx replies);
//   6. validation of the body (Content-Type application/json, "data" an
//      array of 1..max_events_per_request events). Each event needs
//      event_name (non-empty text), event_time (integer Unix seconds, at
//      most max_event_age old by `clock`: else code 100 subcode 2804003),
//      action_source (one of action_sources), user_data (an object with at
//      least one parameter); keys in hashed_keys must be 64 lowercase hex
//      digits (a text or a list of texts); with check_unhashed_formats,
//      client_ip_address must be an IP address and fbc / fbp must look like
//      "fb.<n>.<time>.<id>" (a hashed value there is refused); with
//      require_website_fields, website events need event_source_url and
//      user_data.client_user_agent. An event whose event_id is listed by
//      RejectEventId() is refused too. ANY invalid event rejects the whole
//      request with 400 code 100 (nothing is applied), as Meta does;
//   7. otherwise 200 {"events_received":N,"messages":[],"fbtrace_id":"…"}
//      and each event is stored, except that an event whose (event_name,
//      event_id) was stored less than dedup_window before (by `clock`)
//      counts as a duplicate and is not stored again. Events sent with
//      test_event_code are stored apart (TestEvents()).
//
// Thread-safety: every public method is thread-safe. Start() returns
// kUnavailable if the port cannot be bound; Stop() (also run by the
// destructor) joins the server threads.
#pragma once

#include <chrono>
#include <cstddef>
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

struct FakeMetaCapiOptions {
  std::set<std::string> access_tokens = {"test_access_token"};
  // Valid tokens whose user may not use the pixels (code 200).
  std::set<std::string> denied_tokens;
  std::set<std::string> pixel_ids = {"1234567890"};
  std::set<std::string> api_versions = {"v23.0", "v24.0", "v25.0"};
  // Meta's documented limits and windows.
  size_t max_events_per_request = 1000;
  std::chrono::seconds max_event_age{7 * 24 * 3600};
  std::chrono::seconds dedup_window{48 * 3600};
  std::set<std::string> action_sources = {
      "website", "app",  "physical_store",     "system_generated",
      "email",   "chat", "business_messaging", "phone_call",
      "other"};
  // user_data keys that must arrive hashed. The brief names em and ph for
  // the fake; Meta says all of these require hashing.
  std::set<std::string> hashed_keys = {"em", "ph", "fn", "ln", "ge",
                                       "db", "ct", "st", "zp", "country"};
  // Refuse malformed client_ip_address / fbc / fbp (unverified: Meta may
  // only warn about these in "messages").
  bool check_unhashed_formats = true;
  bool require_website_fields = true;
  // The time events are judged by (null: the system clock).
  Clock* clock = nullptr;
};

// One scripted reply.
struct FakeMetaReply {
  int status = 200;
  std::string body;  // empty: the usual body for the status
  TestHeaders headers;
  std::chrono::milliseconds delay{0};  // real time, before replying
  bool reset_connection = false;
  // Whether the request's events are applied (after validation). Default:
  // for 2xx replies.
  std::optional<bool> apply;

  // A Graph error reply: {"error":{"message":…,"code":…,"error_subcode":…,
  // "is_transient":…,"fbtrace_id":…}} with the given HTTP status.
  static FakeMetaReply GraphError(int status, int64_t code, int64_t subcode, std::string message,
                                  bool is_transient = false);
  // A rate-limit error (HTTP 400, e.g. code 4, 17, 613, 80004) with
  // X-Business-Use-Case-Usage saying estimated_time_to_regain_access
  // (minutes) when regain_minutes >= 0.
  static FakeMetaReply RateLimited(int64_t code, int regain_minutes = -1);
  static FakeMetaReply Status(int status, std::string body = "");
};

struct MetaRequest {
  std::string method;
  std::string target;   // path and query, as sent
  std::string path;     // without the query
  TestHeaders headers;  // names lowercased
  std::string body;
  std::string access_token;  // as sent (query or body), empty when none
  int reply_status = 0;      // 0 for a reset connection
  size_t event_count = 0;    // events in a parsed body
  std::vector<std::string> event_ids;
};

class FakeMetaCapiServer {
 public:
  explicit FakeMetaCapiServer(FakeMetaCapiOptions options = {});
  ~FakeMetaCapiServer();
  FakeMetaCapiServer(const FakeMetaCapiServer&) = delete;
  FakeMetaCapiServer& operator=(const FakeMetaCapiServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url to configure.
  std::string BaseUrl() const;

  // --- Scripting ---------------------------------------------------------
  // Replies for the next authenticated event requests to a known pixel, in order.
  void EnqueueReply(FakeMetaReply reply);
  void EnqueueReplies(int count, const FakeMetaReply& reply);
  // Requests containing an event with this event_id get 400 code 100 (a
  // problem only Meta can see) until cleared.
  void RejectEventId(const std::string& event_id);
  void ClearRejections();

  // --- Inspection --------------------------------------------------------
  // Stored events (duplicates left out), in arrival order, as sent.
  std::vector<nlohmann::json> Events() const;
  // Events sent with a test_event_code, and the codes.
  std::vector<nlohmann::json> TestEvents() const;
  std::set<std::string> TestEventCodes() const;
  std::vector<MetaRequest> Requests() const;
  int64_t request_count() const;
  int64_t unauthorized_count() const;
  // Events received again within dedup_window (not stored twice).
  int64_t duplicate_count() const;
  // Requests refused with 400 because of their events.
  int64_t rejected_count() const;
  // "event_name/event_id" -> times received in applied requests.
  std::map<std::string, int> EventIdCounts() const;
  // Forgets events, requests and counters (not the script or rejections).
  void ClearHistory();

 private:
  TestResponse Handle(const TestRequest& req);
  // Why `event` is invalid, or "" when it is valid; requires mu_.
  std::string ValidateEventLocked(const nlohmann::json& event, int64_t now_s,
                                  int64_t* subcode) const;
  Clock::TimePoint Now() const;

  FakeMetaCapiOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::deque<FakeMetaReply> script_;
  std::set<std::string> rejected_event_ids_;
  std::vector<nlohmann::json> events_;
  std::vector<nlohmann::json> test_events_;
  std::set<std::string> test_codes_;
  std::vector<MetaRequest> requests_;
  // "event_name\n event_id" -> when first stored.
  std::map<std::string, Clock::TimePoint> stored_at_;
  std::map<std::string, int> event_id_counts_;
  int64_t unauthorized_ = 0;
  int64_t duplicates_ = 0;
  int64_t rejected_ = 0;
  int64_t trace_counter_ = 0;
};

}  // namespace backflow
