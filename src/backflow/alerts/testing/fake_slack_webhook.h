// FakeSlackWebhook: a loopback fake of a Slack incoming webhook, for tests.
//
// Built on HttpTestServer. It answers like hooks.slack.com does:
//   * a path other than its own webhook path -> 404 "no_service";
//   * then, if a reply was scripted (EnqueueReply), that reply (e.g. 429 with
//     Retry-After, 403 "invalid_token", 404 "channel_not_found", 410
//     "channel_is_archived", 500 "rollup_error");
//   * a method other than POST, a Content-Type other than application/json,
//     or a body that is not a JSON object -> 400 "invalid_payload";
//   * neither a non-empty "text" string nor "blocks" -> 400 "no_text";
//   * "blocks" not valid Block Kit as far as the fake knows it -> 400
//     "invalid_blocks": at most 50 blocks, each an object with a known
//     "type"; header: a plain_text text object of 1..150 characters;
//     section: a text object (mrkdwn or plain_text, 1..3000 characters)
//     and/or "fields" (1..10 text objects of 1..2000 characters each);
//     context: "elements", 1..10 text objects; divider: nothing else.
//   * otherwise 200 "ok" (Content-Type text/html, as Slack sends it), and the
//     message counts as posted.
// Every request is recorded with the reply it got.
//
// Thread-safety: every public method is thread-safe. Start() returns
// kUnavailable if the port cannot be bound; Stop() runs in the destructor.
#pragma once

#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct SlackWebhookRequest {
  std::string method;
  std::string target;
  TestHeaders headers;  // names lowercased
  std::string body;
  int reply_status = 0;
  std::string reply_body;
  bool posted = false;     // accepted and "posted to the channel"
  nlohmann::json payload;  // the parsed body (null when it was not JSON)
};

class FakeSlackWebhook {
 public:
  // `path` is the webhook's secret path, e.g. "/services/T0/B0/abc".
  explicit FakeSlackWebhook(std::string path = "/services/T0FAKE/B0FAKE/fakeToken123");
  ~FakeSlackWebhook();
  FakeSlackWebhook(const FakeSlackWebhook&) = delete;
  FakeSlackWebhook& operator=(const FakeSlackWebhook&) = delete;

  absl::Status Start();
  void Stop();
  // The webhook's URL: "http://127.0.0.1:<port><path>".
  std::string WebhookUrl() const;
  // Any other URL on the same server.
  std::string Url(std::string_view path) const { return server_.Url(path); }

  // The next request to the webhook's path gets this reply instead of being
  // validated; `retry_after` (seconds or an HTTP date) is sent when set.
  void EnqueueReply(int status, std::string body, std::string retry_after = "");

  std::vector<SlackWebhookRequest> Requests() const;
  // The payloads of the messages accepted, in order.
  std::vector<nlohmann::json> PostedMessages() const;

  // Why Slack would refuse `payload` ("no_text", "invalid_blocks", ...), or
  // "" when it is acceptable. Exposed for tests of the fake itself.
  static std::string Validate(const nlohmann::json& payload);

 private:
  TestResponse Handle(const TestRequest& request);

  std::string path_;
  HttpTestServer server_;
  mutable std::mutex mu_;
  struct Scripted {
    int status;
    std::string body;
    std::string retry_after;
  };
  std::deque<Scripted> script_;
  std::vector<SlackWebhookRequest> requests_;
};

}  // namespace backflow
