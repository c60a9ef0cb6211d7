// WebhookReceiver: a protocol-faithful fake webhook endpoint for tests.
//
// Built on HttpTestServer. It speaks the receiving side of Backflow's webhook
// protocol (destinations/webhook) and of Standard Webhooks signing:
//   * verifies webhook-id / webhook-timestamp (within the tolerance of the
//     receiver's clock) / webhook-signature ("v1,<base64 HMAC-SHA256>", several
//     space-separated entries allowed) in constant time; a missing or bad
//     signature or a stale timestamp is counted and answered 401, and nothing
//     is applied;
//   * applies each accepted record to an in-memory state (key -> fields
//     object for upserts, erase for deletes), in request and record order, so
//     tests can compare the receiver's state with the model;
//   * records every request (headers, body, record ids, reply) so tests can
//     detect duplicate deliveries and check retries reuse the webhook-id;
//   * can be scripted: a FIFO of replies for the next requests (2xx, 207,
//     4xx, 429 + Retry-After, 5xx, slow replies, connection resets), a set of
//     record keys rejected per record until cleared, and a hold that blocks
//     requests from the n-th on until released (e.g. so a test can SIGKILL
//     the sending process mid-delivery).
//
// Reply rules for a validly signed request, in order: a "test":true batch
// gets 200 and is not applied; a malformed body gets 400; otherwise the next
// scripted reply (if any) decides the status, headers, delay and whether the
// records are applied (default: only for 2xx). When records are applied and
// some keys are rejected, the reply body is {"results":[{"id","status",
// "error","retryable"}...]} for every record, with the scripted status or
// else per_record_error_status; rejected records are not applied.
//
// Thread-safety: every public method is thread-safe. Start() returns
// kUnavailable if the port cannot be bound; Stop() (also run by the
// destructor) releases held requests (they are answered with a reset).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
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

// One scripted reply.
struct WebhookReply {
  int status = 200;
  // Empty: the receiver's usual body for the outcome.
  std::string body;
  TestHeaders headers;
  // Real-time wait before replying (simulates slow receivers / timeouts).
  std::chrono::milliseconds delay{0};
  // Drops the connection (TCP reset) instead of replying, after `delay`.
  bool reset_connection = false;
  // Whether the records are applied to the state before replying. Default:
  // true for 2xx statuses (not reset), false otherwise.
  std::optional<bool> apply;

  static WebhookReply Status(int status, std::string body = "");
  // 429 with "Retry-After: <retry_after>" (seconds or an HTTP-date).
  static WebhookReply TooManyRequests(std::string retry_after);
  // Applies the records (by default), then answers `status` after `delay`.
  static WebhookReply Slow(std::chrono::milliseconds delay, int status = 200);
  // Resets the connection; `applied` says whether the records were applied
  // first (the "write happened but the reply was lost" case).
  static WebhookReply ConnectionReset(bool applied = false);
};

struct WebhookReceiverOptions {
  // "whsec_<base64>" (the key is the decoded bytes) or a raw secret. Empty:
  // signatures are not checked.
  std::string signing_secret;
  // Clock for timestamp checks; nullptr means SystemClock(). Use the same
  // FakeClock as the sender.
  Clock* clock = nullptr;
  std::chrono::seconds timestamp_tolerance{300};
  // Status for replies carrying per-record errors when no scripted reply
  // sets one (200 or 207).
  int per_record_error_status = 200;
};

struct ReceivedRequest {
  int64_t sequence = 0;  // 1-based arrival order
  std::string method;
  std::string target;
  TestHeaders headers;  // names lowercased
  std::string body;
  std::string webhook_id;
  std::string webhook_timestamp;
  std::string webhook_signature;
  std::string idempotency_key;
  bool signature_valid = false;  // true when no secret is configured
  bool test = false;             // a connection-check batch
  std::string batch_id;
  std::vector<std::string> record_ids;
  std::vector<std::string> record_keys;
  bool applied = false;
  int reply_status = 0;  // 0 when the connection was reset
};

class WebhookReceiver {
 public:
  explicit WebhookReceiver(WebhookReceiverOptions options = {});
  ~WebhookReceiver();
  WebhookReceiver(const WebhookReceiver&) = delete;
  WebhookReceiver& operator=(const WebhookReceiver&) = delete;

  absl::Status Start();
  void Stop();
  int port() const { return server_.port(); }
  // "http://127.0.0.1:<port><path>"; any path is accepted.
  std::string Url(std::string_view path = "/hooks") const { return server_.Url(path); }

  // --- Scripting ---------------------------------------------------------
  // Appends a reply used by the next validly signed, non-test request.
  void EnqueueReply(WebhookReply reply);
  void EnqueueReplies(int count, const WebhookReply& reply);
  void ClearScript();
  // Rejects records with this key (per record) until cleared.
  void RejectKey(const std::string& key, std::string message = "rejected by receiver",
                 bool retryable = false);
  void ClearRejections();
  // Holds request number `n` (1-based, counting every request since Start()
  // or the last ClearHistory()) and all later ones before handling them,
  // until Release() or Stop(). n <= 0 disables. Release() also disables it.
  void HoldFrom(int64_t n);
  void Release();
  // Waits until some request is being held. False on timeout.
  bool WaitForHeld(std::chrono::milliseconds timeout);
  // Waits until at least `n` requests have been answered. False on timeout.
  bool WaitForRequests(int64_t n, std::chrono::milliseconds timeout);
  // Called with every recorded request after it was handled (outside the
  // receiver's lock; on the connection thread).
  void SetObserver(std::function<void(const ReceivedRequest&)> observer);

  // --- Inspection --------------------------------------------------------
  // key -> fields object of every live record.
  std::map<std::string, nlohmann::json> State() const;
  std::vector<ReceivedRequest> Requests() const;
  int64_t request_count() const;
  int64_t bad_signature_count() const;
  int64_t malformed_count() const;
  // record id -> how many times it was applied.
  std::map<std::string, int> RecordApplyCounts() const;
  // Record ids applied more than once (duplicate deliveries).
  std::vector<std::string> DuplicateRecordIds() const;
  // webhook-id -> how many requests carried it (retries reuse the id).
  std::map<std::string, int> WebhookIdCounts() const;
  // Forgets state, requests and counters, including the request numbering
  // used by HoldFrom() (not the script, rejections or a pending hold).
  void ClearHistory();

 private:
  TestResponse Handle(const TestRequest& req);
  bool VerifySignature(const TestRequest& req, std::string* why) const;

  WebhookReceiverOptions options_;
  std::string key_;  // HMAC key bytes
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  int64_t arrived_ = 0;
  int64_t hold_from_ = 0;
  int64_t held_now_ = 0;
  uint64_t release_generation_ = 0;
  std::deque<WebhookReply> script_;
  struct Rejection {
    std::string message;
    bool retryable = false;
  };
  std::map<std::string, Rejection> rejections_;
  std::function<void(const ReceivedRequest&)> observer_;

  std::map<std::string, nlohmann::json> state_;
  std::vector<ReceivedRequest> requests_;
  int64_t bad_signatures_ = 0;
  int64_t malformed_ = 0;
  std::map<std::string, int> record_apply_counts_;
};

}  // namespace backflow
