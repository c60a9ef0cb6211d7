#include "backflow/testing/webhook_receiver.h"

#include <chrono>
#include <future>
#include <string>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/http_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

const std::string kKey = "receiver-test-key";
const std::string kSecret = "whsec_" + Base64Encode(kKey);

std::string Body(const std::string& batch, const std::vector<json>& records) {
  return json{{"batch_id", batch},
              {"mapping", "m"},
              {"run_id", 1},
              {"count", records.size()},
              {"records", json(records)}}
      .dump();
}

json Rec(const std::string& id, const std::string& key, const std::string& op = "upsert",
         json fields = json{{"v", 1}}) {
  return json{{"id", id},
              {"operation", op},
              {"change", op == "delete" ? "deleted" : "added"},
              {"key", key},
              {"fields", fields}};
}

class WebhookReceiverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WebhookReceiverOptions opts;
    opts.signing_secret = kSecret;
    opts.clock = &clock_;
    receiver_ = std::make_unique<WebhookReceiver>(opts);
    ASSERT_TRUE(receiver_->Start().ok());
  }

  absl::StatusOr<HttpResponse> Post(const std::string& body, const std::string& id = "msg_1",
                                    std::optional<int64_t> ts = std::nullopt,
                                    std::string signature = "") {
    std::string timestamp =
        std::to_string(ts.value_or(static_cast<int64_t>(ToUnixSeconds(clock_.Now()))));
    if (signature.empty()) {
      signature = "v1," + Base64Encode(HmacSha256(kKey, id + "." + timestamp + "." + body));
    }
    HttpRequest req;
    req.url = receiver_->Url("/in");
    req.headers = {{"webhook-id", id},
                   {"webhook-timestamp", timestamp},
                   {"webhook-signature", signature},
                   {"X-Idempotency-Key", id}};
    req.body = body;
    req.timeout = milliseconds(3000);
    return client_->Send(req);
  }

  FakeClock clock_;
  std::unique_ptr<WebhookReceiver> receiver_;
  std::unique_ptr<HttpClient> client_ = NewCurlHttpClient();
};

TEST_F(WebhookReceiverTest, AppliesSignedUpsertsAndDeletes) {
  auto r = Post(Body("b1", {Rec("r1", "1", "upsert", {{"a", 1}}), Rec("r2", "2")}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  r = Post(Body("b2", {Rec("r3", "1", "upsert", {{"a", 2}}), Rec("r4", "2", "delete")}), "msg_2");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  auto state = receiver_->State();
  ASSERT_EQ(state.size(), 1u);
  EXPECT_EQ(state["1"], json({{"a", 2}}));
  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_TRUE(reqs[0].signature_valid);
  EXPECT_TRUE(reqs[0].applied);
  EXPECT_EQ(reqs[0].batch_id, "b1");
  EXPECT_EQ(reqs[0].target, "/in");
  EXPECT_EQ(reqs[0].idempotency_key, "msg_1");
  EXPECT_THAT(reqs[0].record_ids, ElementsAre("r1", "r2"));
  EXPECT_THAT(reqs[1].record_keys, ElementsAre("1", "2"));
  EXPECT_EQ(receiver_->bad_signature_count(), 0);
}

TEST_F(WebhookReceiverTest, RejectsBadSignaturesAndStaleTimestamps) {
  std::string body = Body("b", {Rec("r1", "1")});
  auto r = Post(body, "msg_1", std::nullopt, "v1,AAAA");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 401);
  int64_t now = static_cast<int64_t>(ToUnixSeconds(clock_.Now()));
  r = Post(body, "msg_1", now - 301);
  EXPECT_EQ(r->status, 401);
  EXPECT_THAT(r->body, HasSubstr("timestamp"));
  r = Post(body, "msg_1", now + 301);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(receiver_->bad_signature_count(), 3);
  EXPECT_TRUE(receiver_->State().empty());

  // Within tolerance, and one good entry among several (secret rotation).
  std::string ts = std::to_string(now - 299);
  std::string good = Base64Encode(HmacSha256(kKey, "msg_1." + ts + "." + body));
  r = Post(body, "msg_1", now - 299, "v1,bm9wZQ== v1," + good);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(receiver_->State().size(), 1u);

  // Missing headers.
  HttpRequest bare;
  bare.url = receiver_->Url();
  bare.body = body;
  EXPECT_EQ(client_->Send(bare)->status, 401);
  EXPECT_EQ(receiver_->bad_signature_count(), 4);
}

TEST_F(WebhookReceiverTest, MalformedAndTestBatches) {
  auto r = Post("not json");
  EXPECT_EQ(r->status, 400);
  r = Post(R"({"records":[{"key":"no id"}]})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(receiver_->malformed_count(), 2);
  r = Post(R"({"batch_id":"t","count":0,"records":[],"test":true})");
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(receiver_->Requests().back().test);
  EXPECT_FALSE(receiver_->Requests().back().applied);
}

TEST_F(WebhookReceiverTest, ScriptedRepliesInOrder) {
  receiver_->EnqueueReply(WebhookReply::Status(500, "boom"));
  receiver_->EnqueueReply(WebhookReply::TooManyRequests("12"));
  receiver_->EnqueueReply(WebhookReply::ConnectionReset());
  receiver_->EnqueueReply(WebhookReply::ConnectionReset(/*applied=*/true));
  std::string body = Body("b", {Rec("r1", "1")});
  auto r = Post(body);
  EXPECT_EQ(r->status, 500);
  EXPECT_EQ(r->body, "boom");
  r = Post(body);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->Header("retry-after"), "12");
  EXPECT_TRUE(receiver_->State().empty());
  // libcurl silently re-sends a request once when a *reused* connection dies
  // before any reply, so the resets below go over fresh connections.
  client_ = NewCurlHttpClient();
  r = Post(body);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(receiver_->State().empty());
  client_ = NewCurlHttpClient();
  r = Post(body);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(receiver_->State().size(), 1u);  // applied, reply lost
  r = Post(body);
  EXPECT_EQ(r->status, 200);  // script exhausted
  EXPECT_THAT(receiver_->DuplicateRecordIds(), ElementsAre("r1"));
  EXPECT_EQ(receiver_->RecordApplyCounts()["r1"], 2);
  EXPECT_EQ(receiver_->WebhookIdCounts()["msg_1"], 5);
  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 5u);
  EXPECT_EQ(reqs[2].reply_status, 0);
}

TEST_F(WebhookReceiverTest, SlowReply) {
  receiver_->EnqueueReply(WebhookReply::Slow(milliseconds(100), 202));
  auto start = std::chrono::steady_clock::now();
  auto r = Post(Body("b", {Rec("r1", "1")}));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(100));
  EXPECT_EQ(r->status, 202);
  EXPECT_EQ(receiver_->State().size(), 1u);
}

TEST_F(WebhookReceiverTest, PerRecordRejections) {
  receiver_->RejectKey("2", "bad email", /*retryable=*/false);
  receiver_->RejectKey("3", "busy", /*retryable=*/true);
  auto r = Post(Body("b", {Rec("r1", "1"), Rec("r2", "2"), Rec("r3", "3")}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  json results = json::parse(r->body)["results"];
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0], json({{"id", "r1"}, {"status", "ok"}}));
  EXPECT_EQ(
      results[1],
      json({{"id", "r2"}, {"status", "error"}, {"error", "bad email"}, {"retryable", false}}));
  EXPECT_EQ(results[2]["retryable"], true);
  EXPECT_EQ(receiver_->State().size(), 1u);

  receiver_->EnqueueReply(WebhookReply::Status(207));
  r = Post(Body("b", {Rec("r2", "2")}), "msg_9");
  EXPECT_EQ(r->status, 207);
  EXPECT_EQ(json::parse(r->body)["results"][0]["status"], "error");

  receiver_->ClearRejections();
  r = Post(Body("b", {Rec("r2", "2")}), "msg_10");
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(receiver_->State().size(), 2u);
}

TEST_F(WebhookReceiverTest, HoldBlocksFromNthRequestUntilReleased) {
  std::vector<int64_t> observed;
  std::mutex mu;
  receiver_->SetObserver([&](const ReceivedRequest& r) {
    std::lock_guard<std::mutex> lock(mu);
    observed.push_back(r.sequence);
  });
  receiver_->HoldFrom(2);
  std::string body = Body("b", {Rec("r1", "1")});
  ASSERT_EQ(Post(body)->status, 200);
  auto second = std::async(std::launch::async, [&] {
    auto client = NewCurlHttpClient();
    std::string ts = std::to_string(static_cast<int64_t>(ToUnixSeconds(clock_.Now())));
    HttpRequest req;
    req.url = receiver_->Url();
    req.headers = {
        {"webhook-id", "msg_2"},
        {"webhook-timestamp", ts},
        {"webhook-signature", "v1," + Base64Encode(HmacSha256(kKey, "msg_2." + ts + "." + body))}};
    req.body = body;
    req.timeout = milliseconds(10000);
    return client->Send(req);
  });
  ASSERT_TRUE(receiver_->WaitForHeld(milliseconds(5000)));
  EXPECT_EQ(receiver_->request_count(), 1);
  receiver_->Release();
  auto r = second.get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(receiver_->WaitForRequests(2, milliseconds(1000)));
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_THAT(observed, ElementsAre(1, 2));
}

TEST_F(WebhookReceiverTest, StopReleasesHeldRequests) {
  receiver_->HoldFrom(1);
  std::string body = Body("b", {Rec("r1", "1")});
  auto pending = std::async(std::launch::async, [&] { return Post(body); });
  ASSERT_TRUE(receiver_->WaitForHeld(milliseconds(5000)));
  receiver_->Stop();
  EXPECT_FALSE(pending.get().ok());
  EXPECT_TRUE(receiver_->State().empty());
}

TEST_F(WebhookReceiverTest, ClearHistory) {
  ASSERT_EQ(Post(Body("b", {Rec("r1", "1")}))->status, 200);
  receiver_->ClearHistory();
  EXPECT_TRUE(receiver_->State().empty());
  EXPECT_EQ(receiver_->request_count(), 0);
  EXPECT_TRUE(receiver_->RecordApplyCounts().empty());
}

TEST(WebhookReceiverUnsignedTest, AcceptsUnsignedRequestsWithoutSecret) {
  WebhookReceiver receiver;
  ASSERT_TRUE(receiver.Start().ok());
  HttpRequest req;
  req.url = receiver.Url();
  req.body = Body("b", {Rec("r1", "1")});
  auto r = NewCurlHttpClient()->Send(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(receiver.State().size(), 1u);
}

}  // namespace
}  // namespace backflow
