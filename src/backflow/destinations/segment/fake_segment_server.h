// FakeSegmentServer: a protocol-faithful fake of Segment's HTTP Tracking API
// (POST /v1/batch, and /v1/import, its alias) for tests.
//
// Built on HttpTestServer. For each request, in order:
//   1. a path other than /v1/batch or /v1/import, or a method other than
//      POST, gets 404;
//   2. auth: "Authorization: Basic base64(<key>:)" (the trailing colon and an
//      empty password are required) or, without that header, "writeKey" in
//      the body; an unknown key or a malformed header gets 401 and nothing is
//      applied (counted by unauthorized_count());
//   3. the next scripted reply, if any, decides the status, headers and
//      delay; its items are applied only when `apply` says so (default: 2xx);
//   4. Content-Type other than application/json gets 400; a body over
//      max_batch_bytes gets 400; invalid JSON or a body without a "batch"
//      array gets 400; any item over max_event_bytes gets 400 (nothing of
//      the request is applied);
//   5. more than max_batch_events items: 200, and every item is dropped
//      (reason "batch_too_large"), as Segment documents;
//   6. each item, with the body's top-level "context" and "integrations"
//      merged in (the item's own keys win), is checked: a known type, a
//      userId or anonymousId ("no_user_anon_id"), track needs "event"
//      ("missing_event"), group needs "groupId" ("missing_group_id"). By
//      default invalid items are counted and dropped while the reply stays
//      200 (Segment's documented behaviour); with
//      reject_invalid_items_with_400 the whole request gets 400 instead and
//      nothing is applied. A userId listed by RejectUserId() also makes the
//      whole request 400 (a record Segment refuses for reasons the client
//      cannot check);
//   7. items whose messageId was already accepted are skipped (counted by
//      duplicate_count()); the others are applied: identify merges traits
//      into the user's (by userId, else by anonymousId), track appends to
//      Events(), group merges traits into the group and records the
//      membership.
//   Replies are {"success":true} for 2xx, {"success":false,"message":...}
//   otherwise.
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
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct FakeSegmentOptions {
  std::set<std::string> write_keys = {"test_write_key"};
  // Segment's documented limits.
  size_t max_event_bytes = 32 * 1024;
  size_t max_batch_bytes = 500 * 1024;
  size_t max_batch_events = 2500;
  // Segment's status for items without ids is undocumented: drop them and
  // answer 200 (default) or answer 400 for the whole request.
  bool reject_invalid_items_with_400 = false;
};

// One scripted reply.
struct FakeSegmentReply {
  int status = 200;
  std::string body;  // empty: the usual {"success":...} body
  TestHeaders headers;
  std::chrono::milliseconds delay{0};  // real time, before replying
  bool reset_connection = false;
  // Whether the request's items are applied (after validation). Default:
  // for 2xx replies.
  std::optional<bool> apply;

  static FakeSegmentReply Status(int status, std::string body = "");
  // 429 with "Retry-After: <retry_after_s>" and "X-RateLimit-Reset:
  // <reset_s>"; an empty value leaves that header out.
  static FakeSegmentReply TooManyRequests(std::string retry_after_s, std::string reset_s);
  // Applies the items, then answers `status` after `delay`.
  static FakeSegmentReply Slow(std::chrono::milliseconds delay, int status = 200);
};

struct DroppedItem {
  std::string reason;  // no_user_anon_id, missing_event, missing_group_id, bad_type,
                       // batch_too_large
  nlohmann::json item;
};

struct SegmentRequest {
  std::string method;
  std::string target;
  TestHeaders headers;  // names lowercased
  std::string body;
  std::string write_key;  // as authenticated, empty when refused
  int reply_status = 0;   // 0 for a reset connection
  size_t item_count = 0;  // items in a parsed body
  std::vector<std::string> message_ids;
};

class FakeSegmentServer {
 public:
  explicit FakeSegmentServer(FakeSegmentOptions options = {});
  ~FakeSegmentServer();
  FakeSegmentServer(const FakeSegmentServer&) = delete;
  FakeSegmentServer& operator=(const FakeSegmentServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url to configure.
  std::string BaseUrl() const;

  // --- Scripting ---------------------------------------------------------
  // Replies for the next authenticated requests, in order.
  void EnqueueReply(FakeSegmentReply reply);
  void EnqueueReplies(int count, const FakeSegmentReply& reply);
  // Requests containing an item with this userId get 400 until cleared.
  void RejectUserId(const std::string& user_id);
  void ClearRejections();

  // --- Inspection --------------------------------------------------------
  // userId -> merged traits of every identify call (anonymous-only calls
  // are under AnonymousTraits()).
  std::map<std::string, nlohmann::json> UserTraits() const;
  std::map<std::string, nlohmann::json> AnonymousTraits() const;
  // Accepted track calls, in arrival order (context merged in).
  std::vector<nlohmann::json> Events() const;
  // groupId -> merged traits; and (userId or anonymousId, groupId) pairs.
  std::map<std::string, nlohmann::json> Groups() const;
  std::set<std::pair<std::string, std::string>> GroupMembers() const;
  // Items accepted with a 2xx and then dropped, as Segment does silently.
  std::vector<DroppedItem> DroppedItems() const;
  std::vector<SegmentRequest> Requests() const;
  int64_t request_count() const;
  int64_t unauthorized_count() const;
  // Items skipped because their messageId had already been accepted.
  int64_t duplicate_count() const;
  // messageId -> how many times it arrived in requests that were applied.
  std::map<std::string, int> MessageIdCounts() const;
  // Accepted (applied) items, all types.
  int64_t accepted_count() const;
  // Forgets state, requests and counters (not the script or rejections).
  void ClearHistory();

 private:
  TestResponse Handle(const TestRequest& req);
  // The write key the request authenticates with, or why it does not.
  bool Authenticate(const TestRequest& req, const nlohmann::json* body, std::string* key,
                    std::string* why) const;
  // Applies validated items; requires mu_.
  void ApplyLocked(const std::vector<nlohmann::json>& items);

  FakeSegmentOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::deque<FakeSegmentReply> script_;
  std::set<std::string> rejected_user_ids_;
  std::map<std::string, nlohmann::json> users_;
  std::map<std::string, nlohmann::json> anonymous_;
  std::vector<nlohmann::json> events_;
  std::map<std::string, nlohmann::json> groups_;
  std::set<std::pair<std::string, std::string>> members_;
  std::vector<DroppedItem> dropped_;
  std::vector<SegmentRequest> requests_;
  std::set<std::string> seen_message_ids_;
  std::map<std::string, int> message_id_counts_;
  int64_t unauthorized_ = 0;
  int64_t duplicates_ = 0;
  int64_t accepted_ = 0;
};

}  // namespace backflow
