#include "backflow/destinations/webhook/webhook_destination.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/testing/webhook_receiver.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::testing::UnorderedElementsAre;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

// "whsec_" + base64("backflow-test-signing-key-32byte").
const std::string kSecret = "whsec_" + Base64Encode("backflow-test-signing-key-32byte");

OutgoingRecord Upsert(const std::string& key, const std::string& email,
                      ChangeKind change = ChangeKind::kAdded) {
  OutgoingRecord r;
  r.change = change;
  r.key = key;
  r.dedup_id = "d_" + key + "_" + email;
  r.values = {Value::String(email), Value::Int64(std::stoll(key))};
  return r;
}

OutgoingRecord Delete(const std::string& key, const std::string& email) {
  OutgoingRecord r;
  r.change = ChangeKind::kDeleted;
  r.key = key;
  r.dedup_id = "d_" + key + "_deleted";
  r.values = {Value::String(email)};
  return r;
}

class WebhookDestinationTest : public ::testing::Test {
 protected:
  void StartReceiver(std::string secret = kSecret, int per_record_error_status = 200) {
    WebhookReceiverOptions opts;
    opts.signing_secret = std::move(secret);
    opts.clock = &clock_;
    opts.per_record_error_status = per_record_error_status;
    receiver_ = std::make_unique<WebhookReceiver>(opts);
    ASSERT_TRUE(receiver_->Start().ok());
  }

  json Settings(json extra = json::object()) {
    json s = {{"url", receiver_->Url("/hooks")}, {"signing_secret", kSecret}};
    for (auto& [k, v] : extra.items()) s[k] = v;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Destination>> Create(json settings) {
    std::vector<std::string> problems = CheckSettings(def_.settings, settings);
    if (!problems.empty()) return absl::InvalidArgumentError(problems.front());
    return def_.create(settings, ConnectorEnv{http_.get(), &clock_});
  }

  std::unique_ptr<ActionSession> Session(json extra = json::object()) {
    absl::StatusOr<std::unique_ptr<Destination>> dest = Create(Settings(std::move(extra)));
    EXPECT_TRUE(dest.ok()) << dest.status();
    if (!dest.ok()) return nullptr;
    dest_ = *std::move(dest);
    SessionOptions opts;
    opts.mapping = "users_to_hook";
    opts.run_id = 42;
    opts.action = def_.FindAction("send_batch");
    opts.layout.fields = {"email", "user_id"};
    opts.layout.identity = {"email"};
    absl::StatusOr<std::unique_ptr<ActionSession>> session = dest_->StartSession(opts);
    EXPECT_TRUE(session.ok());
    return session.ok() ? *std::move(session) : nullptr;
  }

  static std::vector<absl::StatusCode> Codes(const std::vector<absl::Status>& statuses) {
    std::vector<absl::StatusCode> out;
    for (const absl::Status& s : statuses) out.push_back(s.code());
    return out;
  }

  DestinationDefinition def_ = WebhookDestinationDefinition();
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<WebhookReceiver> receiver_;
  std::unique_ptr<Destination> dest_;
};

TEST_F(WebhookDestinationTest, DefinitionDeclaresSettingsAndAction) {
  EXPECT_EQ(def_.type, "webhook");
  const ActionSpec* action = def_.FindAction("send_batch");
  ASSERT_NE(action, nullptr);
  EXPECT_EQ(action->title, "Send batch");
  EXPECT_TRUE(action->allows_extra_fields);
  EXPECT_EQ(action->default_batch_records, 100);
  EXPECT_EQ(action->max_batch_records, 1000);
  EXPECT_THAT(action->selections, SizeIs(5));
  ASSERT_NE(FindSetting(def_.settings, "url"), nullptr);
  EXPECT_TRUE(FindSetting(def_.settings, "url")->required);
  EXPECT_TRUE(FindSetting(def_.settings, "signing_secret")->secret);
  EXPECT_EQ(FindSetting(def_.settings, "timeout_ms")->default_value, 30000);
  EXPECT_EQ(FindSetting(def_.settings, "max_retries")->default_value, 5);
  EXPECT_EQ(FindSetting(def_.settings, "max_retry_wait_s")->default_value, 300);
}

TEST_F(WebhookDestinationTest, DeliversSignedBatchThatReceiverApplies) {
  StartReceiver();
  auto session = Session({{"headers", {{"Authorization", "Bearer abc"}}}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> first = {Upsert("1", "a@x.io"), Upsert("2", "b@x.io")};
  auto result = session->SendBatch(first);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));

  std::vector<OutgoingRecord> second = {Upsert("1", "a2@x.io", ChangeKind::kUpdated),
                                        Delete("2", "b@x.io")};
  result = session->SendBatch(second);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  EXPECT_TRUE(session->Finish().ok());

  EXPECT_EQ(receiver_->bad_signature_count(), 0);
  std::map<std::string, json> state = receiver_->State();
  ASSERT_EQ(state.size(), 1u);
  EXPECT_EQ(state["1"], json({{"email", "a2@x.io"}, {"user_id", 1}}));

  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  const ReceivedRequest& r = reqs[0];
  EXPECT_TRUE(r.signature_valid);
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/hooks");
  EXPECT_EQ(r.webhook_id, "msg_" + WebhookBatchId(first));
  EXPECT_EQ(r.idempotency_key, r.webhook_id);
  EXPECT_EQ(r.webhook_timestamp, "1700000000");
  EXPECT_EQ(r.webhook_signature, WebhookSignature("backflow-test-signing-key-32byte", r.webhook_id,
                                                  r.webhook_timestamp, r.body));
  auto header = [&](const char* name) -> std::string {
    for (const auto& [k, v] : r.headers) {
      if (k == name) return v;
    }
    return "";
  };
  EXPECT_EQ(header("content-type"), "application/json");
  EXPECT_EQ(header("user-agent"), "backflow/0.1");
  EXPECT_EQ(header("authorization"), "Bearer abc");

  json body = json::parse(r.body);
  EXPECT_EQ(body["batch_id"], WebhookBatchId(first));
  EXPECT_EQ(body["mapping"], "users_to_hook");
  EXPECT_EQ(body["run_id"], 42);
  EXPECT_EQ(body["count"], 2);
  ASSERT_EQ(body["records"].size(), 2u);
  EXPECT_EQ(body["records"][0], json({{"id", "d_1_a@x.io"},
                                      {"operation", "upsert"},
                                      {"change", "added"},
                                      {"key", "1"},
                                      {"fields", {{"email", "a@x.io"}, {"user_id", 1}}}}));
  json del = json::parse(reqs[1].body)["records"][1];
  EXPECT_EQ(del["operation"], "delete");
  EXPECT_EQ(del["change"], "deleted");
  EXPECT_EQ(del["fields"], json({{"email", "b@x.io"}}));
  EXPECT_EQ(json::parse(reqs[1].body)["records"][0]["change"], "updated");
}

TEST_F(WebhookDestinationTest, UnsignedWhenNoSecret) {
  StartReceiver(/*secret=*/"");
  auto session = Session({{"signing_secret", nullptr}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].webhook_signature, "");
  EXPECT_FALSE(reqs[0].webhook_id.empty());
}

TEST_F(WebhookDestinationTest, RawSecretIsUsedAsBytes) {
  StartReceiver("plain-secret");
  auto session = Session({{"signing_secret", "plain-secret"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(receiver_->bad_signature_count(), 0);
}

TEST_F(WebhookDestinationTest, WrongSecretIsUnauthenticated) {
  StartReceiver("whsec_" + Base64Encode("another key"));
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(result.status().message(), HasSubstr("signing_secret"));
  EXPECT_EQ(receiver_->bad_signature_count(), 1);
  EXPECT_EQ(receiver_->request_count(), 1);  // not retried
  EXPECT_TRUE(receiver_->State().empty());
}

TEST_F(WebhookDestinationTest, PerRecordErrorsIn200) {
  StartReceiver();
  receiver_->RejectKey("2", "email is invalid", /*retryable=*/false);
  receiver_->RejectKey("3", "row locked", /*retryable=*/true);
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io"), Upsert("2", "bad"),
                                       Upsert("3", "c@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
                                          absl::StatusCode::kUnavailable));
  EXPECT_THAT((*result)[1].message(), HasSubstr("email is invalid"));
  EXPECT_THAT((*result)[2].message(), HasSubstr("row locked"));
  EXPECT_EQ(receiver_->Requests()[0].reply_status, 200);
  EXPECT_EQ(receiver_->request_count(), 1);
  std::map<std::string, json> state = receiver_->State();
  EXPECT_EQ(state.size(), 1u);
  EXPECT_TRUE(state.contains("1"));
}

TEST_F(WebhookDestinationTest, PerRecordErrorsIn207) {
  StartReceiver(kSecret, /*per_record_error_status=*/207);
  receiver_->RejectKey("1", "duplicate email");
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io"), Upsert("2", "b@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kInvalidArgument, absl::StatusCode::kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("HTTP 207"));
  EXPECT_EQ(receiver_->Requests()[0].reply_status, 207);
}

TEST_F(WebhookDestinationTest, NonJsonSuccessBodyMeansAllOk) {
  StartReceiver();
  receiver_->EnqueueReply(WebhookReply::Status(202, "accepted, thanks"));
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
}

TEST_F(WebhookDestinationTest, TooManyRequestsHonoursRetryAfterAndKeepsWebhookId) {
  StartReceiver();
  receiver_->EnqueueReply(WebhookReply::TooManyRequests("7"));
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io"), Upsert("2", "b@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  EXPECT_EQ(clock_.total_slept(), seconds(7));

  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].reply_status, 429);
  EXPECT_EQ(reqs[1].reply_status, 200);
  EXPECT_EQ(reqs[0].webhook_id, reqs[1].webhook_id);
  EXPECT_EQ(reqs[0].body, reqs[1].body);
  // The timestamp (and so the signature) is per attempt.
  EXPECT_EQ(std::stoll(reqs[1].webhook_timestamp) - std::stoll(reqs[0].webhook_timestamp), 7);
  EXPECT_TRUE(reqs[1].signature_valid);
  EXPECT_THAT(receiver_->WebhookIdCounts(), ElementsAre(std::pair(reqs[0].webhook_id, 2)));
  EXPECT_TRUE(receiver_->DuplicateRecordIds().empty());
}

TEST_F(WebhookDestinationTest, RetryAfterHttpDate) {
  StartReceiver();
  // FakeClock starts at 1700000000 = Tue, 14 Nov 2023 22:13:20 GMT.
  receiver_->EnqueueReply(WebhookReply::TooManyRequests("Tue, 14 Nov 2023 22:14:00 GMT"));
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  EXPECT_EQ(clock_.total_slept(), seconds(40));
}

TEST_F(WebhookDestinationTest, RetryAfterIsCappedByMaxRetryWait) {
  StartReceiver();
  receiver_->EnqueueReply(WebhookReply::TooManyRequests("3600"));
  auto session = Session({{"max_retry_wait_s", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  EXPECT_EQ(clock_.total_slept(), seconds(2));
}

TEST_F(WebhookDestinationTest, ServerErrorThenSuccess) {
  StartReceiver();
  receiver_->EnqueueReply(WebhookReply::Status(500));
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  EXPECT_EQ(receiver_->request_count(), 2);
  EXPECT_LE(clock_.total_slept(), seconds(1));  // full jitter within the first 1 s step
  EXPECT_EQ(receiver_->State().size(), 1u);
}

TEST_F(WebhookDestinationTest, MaxRequestsPerSecondPacesEveryRequest) {
  StartReceiver();
  receiver_->EnqueueReply(WebhookReply::Status(500));  // the retry is paced too
  auto session = Session({{"max_requests_per_second", 4}});
  ASSERT_NE(session, nullptr);
  for (int i = 0; i < 20; ++i) {
    std::vector<OutgoingRecord> batch = {Upsert(std::to_string(i), "a@x.io")};
    ASSERT_TRUE(session->SendBatch(batch).ok());
  }
  // 21 requests at 4 per second: the last starts no earlier than 4 s after the first.
  EXPECT_EQ(receiver_->request_count(), 21);
  EXPECT_GE(clock_.total_slept(), seconds(4));
  EXPECT_EQ(receiver_->State().size(), 20u);
}

TEST_F(WebhookDestinationTest, RetriesExhausted) {
  StartReceiver();
  receiver_->EnqueueReplies(4, WebhookReply::Status(503, "maintenance"));
  auto session = Session({{"max_retries", 3}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io"), Upsert("2", "b@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kUnavailable, absl::StatusCode::kUnavailable));
  EXPECT_THAT((*result)[0].message(), HasSubstr("4 attempts"));
  EXPECT_THAT((*result)[0].message(), HasSubstr("HTTP 503"));
  EXPECT_THAT((*result)[0].message(), HasSubstr("maintenance"));
  EXPECT_EQ(receiver_->request_count(), 4);
  EXPECT_LE(clock_.total_slept(), seconds(1 + 2 + 4));
  EXPECT_TRUE(receiver_->State().empty());
}

TEST_F(WebhookDestinationTest, RateLimitExhaustedIsResourceExhausted) {
  StartReceiver();
  receiver_->EnqueueReplies(2, WebhookReply::TooManyRequests("5"));
  auto session = Session({{"max_retries", 1}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  ASSERT_EQ(result->size(), 1u);
  EXPECT_EQ((*result)[0].code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RetryAfter((*result)[0]), milliseconds(5000));
  EXPECT_THAT((*result)[0].message(), HasSubstr("2 attempts"));
  EXPECT_EQ(clock_.total_slept(), seconds(5));
}

TEST_F(WebhookDestinationTest, PayloadTooLargeSplitsBatch) {
  StartReceiver();
  // 4 records -> 413; first half (2) -> 413; then singles and the second half pass.
  receiver_->EnqueueReply(WebhookReply::Status(413));
  receiver_->EnqueueReply(WebhookReply::Status(413));
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io"), Upsert("2", "b@x.io"),
                                       Upsert("3", "c@x.io"), Upsert("4", "d@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk,
                                          absl::StatusCode::kOk, absl::StatusCode::kOk));
  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 5u);
  std::vector<size_t> sizes;
  for (const auto& r : reqs) sizes.push_back(r.record_ids.size());
  EXPECT_THAT(sizes, ElementsAre(4, 2, 1, 1, 2));
  EXPECT_EQ(receiver_->State().size(), 4u);
  EXPECT_EQ(clock_.total_slept(), seconds(0));
  EXPECT_EQ(reqs[3].webhook_id, "msg_" + WebhookBatchId(std::span(batch).subspan(1, 1)));
}

TEST_F(WebhookDestinationTest, PayloadTooLargeForOneRecordFailsIt) {
  StartReceiver();
  receiver_->EnqueueReply(WebhookReply::Status(413, "max 1 byte"));
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*result)[0].message(), HasSubstr("413"));
}

TEST_F(WebhookDestinationTest, ConfigurationErrorsStopTheRun) {
  StartReceiver();
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  const std::pair<int, absl::StatusCode> kCases[] = {
      {401, absl::StatusCode::kUnauthenticated},
      {403, absl::StatusCode::kPermissionDenied},
      {404, absl::StatusCode::kFailedPrecondition},
      {410, absl::StatusCode::kFailedPrecondition},
  };
  for (const auto& [status, code] : kCases) {
    receiver_->EnqueueReply(WebhookReply::Status(status));
    auto result = session->SendBatch(batch);
    ASSERT_FALSE(result.ok()) << status;
    EXPECT_EQ(result.status().code(), code) << status;
  }
  EXPECT_EQ(receiver_->request_count(), 4);  // never retried
}

TEST_F(WebhookDestinationTest, OtherClientErrorsFailRecords) {
  StartReceiver();
  receiver_->EnqueueReply(WebhookReply::Status(422, std::string(600, 'e') + "TAIL"));
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io"), Upsert("2", "b@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kInvalidArgument, absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*result)[0].message(), HasSubstr("HTTP 422"));
  EXPECT_THAT((*result)[0].message(), HasSubstr(std::string(500, 'e')));
  EXPECT_THAT((*result)[0].message(), ::testing::Not(HasSubstr("TAIL")));
  EXPECT_EQ(receiver_->request_count(), 1);
}

TEST_F(WebhookDestinationTest, SlowReplyBeyondTimeoutIsRetriedWithSameId) {
  StartReceiver();
  // The receiver applies the batch but answers too late: an ambiguous timeout.
  receiver_->EnqueueReply(WebhookReply::Slow(milliseconds(2000)));
  auto session = Session({{"timeout_ms", 150}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto started = std::chrono::steady_clock::now();
  auto result = session->SendBatch(batch);
  EXPECT_LT(std::chrono::steady_clock::now() - started, milliseconds(1500));
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].webhook_id, reqs[1].webhook_id);
  // The receiver can see (and dedup by webhook-id) the duplicate delivery.
  EXPECT_THAT(receiver_->DuplicateRecordIds(), ElementsAre("d_1_a@x.io"));
}

TEST_F(WebhookDestinationTest, TimeoutsExhaustedAreUnavailable) {
  StartReceiver();
  receiver_->EnqueueReplies(2, WebhookReply::Slow(milliseconds(2000)));
  auto session = Session({{"timeout_ms", 100}, {"max_retries", 1}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*result)[0].message(), HasSubstr("2 attempts"));
}

TEST_F(WebhookDestinationTest, ConnectionResetIsRetried) {
  StartReceiver();
  receiver_->EnqueueReply(WebhookReply::ConnectionReset());
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io"), Upsert("2", "b@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].reply_status, 0);
  EXPECT_EQ(reqs[0].webhook_id, reqs[1].webhook_id);
  EXPECT_TRUE(receiver_->DuplicateRecordIds().empty());
  EXPECT_EQ(receiver_->State().size(), 2u);
}

TEST_F(WebhookDestinationTest, UnreachableReceiverFailsRecordsAfterRetries) {
  StartReceiver();
  std::string url = receiver_->Url("/hooks");
  receiver_->Stop();
  auto session = Session({{"url", url}, {"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Upsert("1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*result)[0].message(), HasSubstr("3 attempts"));
}

TEST_F(WebhookDestinationTest, BatchIdIsDeterministic) {
  std::vector<OutgoingRecord> a = {Upsert("1", "a@x.io"), Upsert("2", "b@x.io")};
  std::vector<OutgoingRecord> same = {Upsert("1", "a@x.io"), Upsert("2", "b@x.io")};
  std::vector<OutgoingRecord> reordered = {Upsert("2", "b@x.io"), Upsert("1", "a@x.io")};
  std::vector<OutgoingRecord> changed = {Upsert("1", "a@x.io"), Upsert("2", "c@x.io")};
  EXPECT_EQ(WebhookBatchId(a), WebhookBatchId(same));
  EXPECT_NE(WebhookBatchId(a), WebhookBatchId(reordered));
  EXPECT_NE(WebhookBatchId(a), WebhookBatchId(changed));
  EXPECT_EQ(WebhookBatchId(a).size(), 32u);

  // A re-send of the same content (e.g. by a later run) reuses the webhook-id.
  StartReceiver();
  auto session = Session();
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(session->SendBatch(a).ok());
  ASSERT_TRUE(session->SendBatch(same).ok());
  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].webhook_id, reqs[1].webhook_id);
}

TEST_F(WebhookDestinationTest, EmptyBatchSendsNothing) {
  StartReceiver();
  auto session = Session();
  ASSERT_NE(session, nullptr);
  auto result = session->SendBatch({});
  ASSERT_TRUE(result.ok());
  EXPECT_TRUE(result->empty());
  EXPECT_EQ(receiver_->request_count(), 0);
}

TEST_F(WebhookDestinationTest, CheckConnectionSendsSignedTestBatch) {
  StartReceiver();
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  EXPECT_TRUE((*dest)->CheckConnection().ok());
  std::vector<ReceivedRequest> reqs = receiver_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_TRUE(reqs[0].test);
  EXPECT_TRUE(reqs[0].signature_valid);
  json body = json::parse(reqs[0].body);
  EXPECT_EQ(body["count"], 0);
  EXPECT_EQ(body["records"], json::array());
  EXPECT_EQ(body["test"], true);
  EXPECT_TRUE(receiver_->State().empty());
}

TEST_F(WebhookDestinationTest, CheckConnectionFailures) {
  StartReceiver("whsec_" + Base64Encode("other"));
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  absl::Status s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;

  std::string url = receiver_->Url("/hooks");
  receiver_->Stop();
  auto unreachable = Create(Settings({{"url", url}}));
  ASSERT_TRUE(unreachable.ok());
  s = (*unreachable)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr(url));
}

TEST_F(WebhookDestinationTest, RejectsBadSettings) {
  StartReceiver();
  EXPECT_FALSE(Create(Settings({{"url", "ftp://example.com"}})).ok());
  EXPECT_FALSE(Create(Settings({{"signing_secret", "whsec_***"}})).ok());
  EXPECT_FALSE(Create(Settings({{"headers", {{"webhook-id", "x"}}}})).ok());
  EXPECT_FALSE(Create(Settings({{"headers", {{"X-Evil", "a\r\nb: c"}}}})).ok());
  EXPECT_FALSE(Create(Settings({{"timeout_ms", 0}})).ok());
  EXPECT_FALSE(Create(Settings({{"max_retries", -1}})).ok());
  json no_url = Settings();
  no_url.erase("url");
  EXPECT_FALSE(Create(no_url).ok());
  EXPECT_FALSE(def_.create(json::object(), ConnectorEnv{http_.get(), &clock_}).ok());
}

TEST(ParseRetryAfterTest, SecondsAndDates) {
  Clock::TimePoint now{seconds(1'700'000'000)};
  EXPECT_EQ(ParseRetryAfter("120", now), milliseconds(120'000));
  EXPECT_EQ(ParseRetryAfter(" 0 ", now), milliseconds(0));
  EXPECT_EQ(ParseRetryAfter("Tue, 14 Nov 2023 22:13:30 GMT", now), milliseconds(10'000));
  EXPECT_EQ(ParseRetryAfter("Mon, 13 Nov 2023 22:13:30 GMT", now), milliseconds(0));
  EXPECT_EQ(ParseRetryAfter("soon", now), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("", now), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("-5", now), std::nullopt);
}

TEST(WebhookSignatureTest, MatchesStandardWebhooksReference) {
  // Example from the Standard Webhooks reference libraries.
  absl::StatusOr<std::string> key = WebhookSigningKey("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(WebhookSignature(*key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330",
                             R"({"test": 2432232314})"),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
  EXPECT_EQ(*WebhookSigningKey("raw"), "raw");
  EXPECT_FALSE(WebhookSigningKey("whsec_!!").ok());
}

}  // namespace
}  // namespace backflow
