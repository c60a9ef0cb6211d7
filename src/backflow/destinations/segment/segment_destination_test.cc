#include "backflow/destinations/segment/segment_destination.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/segment/fake_segment_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::Each;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kKey[] = "test_write_key";

OutgoingRecord Rec(const std::string& key, Row values, ChangeKind change = ChangeKind::kAdded) {
  OutgoingRecord r;
  r.change = change;
  r.key = key;
  r.dedup_id = "d" + key + "_" + std::to_string(values.size()) + "_" +
               std::string(ChangeKindName(change)) + "_" + values.front().ToString();
  r.values = std::move(values);
  return r;
}

// An identify record for layout {userId, traits.email, traits.plan}.
OutgoingRecord User(const std::string& id, const std::string& plan,
                    ChangeKind change = ChangeKind::kAdded) {
  OutgoingRecord r =
      Rec(id, {Value::String("u" + id), Value::String("u" + id + "@x.io"), Value::String(plan)},
          change);
  r.dedup_id += "_" + plan;
  return r;
}

std::vector<absl::StatusCode> Codes(const std::vector<absl::Status>& statuses) {
  std::vector<absl::StatusCode> out;
  for (const absl::Status& s : statuses) out.push_back(s.code());
  return out;
}

class SegmentDestinationTest : public ::testing::Test {
 protected:
  void SetUp() override { StartFake({}); }

  void StartFake(FakeSegmentOptions options) {
    fake_ = std::make_unique<FakeSegmentServer>(std::move(options));
    ASSERT_TRUE(fake_->Start().ok());
  }

  json Settings(json extra = json::object()) {
    json s = {{"write_key", kKey}, {"base_url", fake_->BaseUrl()}};
    for (auto& [k, v] : extra.items()) s[k] = v;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Destination>> Create(json settings) {
    std::vector<std::string> problems = CheckSettings(def_.settings, settings);
    if (!problems.empty()) return absl::InvalidArgumentError(problems.front());
    return def_.create(settings, ConnectorEnv{http_.get(), &clock_});
  }

  std::unique_ptr<ActionSession> Session(const std::string& action, std::vector<std::string> fields,
                                         json extra = json::object(), int64_t run_id = 7) {
    absl::StatusOr<std::unique_ptr<Destination>> dest = Create(Settings(std::move(extra)));
    EXPECT_TRUE(dest.ok()) << dest.status();
    if (!dest.ok()) return nullptr;
    dest_ = *std::move(dest);
    SessionOptions opts;
    opts.mapping = "to_segment";
    opts.run_id = run_id;
    opts.action = def_.FindAction(action);
    EXPECT_NE(opts.action, nullptr) << action;
    opts.layout.fields = std::move(fields);
    opts.layout.identity = {opts.layout.fields.front()};
    absl::StatusOr<std::unique_ptr<ActionSession>> session = dest_->StartSession(opts);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *std::move(session) : nullptr;
  }

  std::unique_ptr<ActionSession> IdentifySession(json extra = json::object(), int64_t run = 7) {
    return Session("identify", {"userId", "traits.email", "traits.plan"}, std::move(extra), run);
  }

  DestinationDefinition def_ = SegmentDestinationDefinition();
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeSegmentServer> fake_;
  std::unique_ptr<Destination> dest_;
};

TEST_F(SegmentDestinationTest, DefinitionDeclaresSettingsAndActions) {
  EXPECT_EQ(def_.type, "segment");
  const SettingSpec* key = FindSetting(def_.settings, "write_key");
  ASSERT_NE(key, nullptr);
  EXPECT_TRUE(key->required);
  EXPECT_TRUE(key->secret);
  const SettingSpec* base = FindSetting(def_.settings, "base_url");
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(base->default_value, "https://api.segment.io");
  EXPECT_THAT(base->description, HasSubstr("https://events.eu1.segmentapis.com"));
  EXPECT_THAT(base->description, HasSubstr("silently lost"));
  for (const char* s :
       {"max_requests_per_second", "timeout_ms", "max_retries", "max_retry_wait_s"}) {
    EXPECT_NE(FindSetting(def_.settings, s), nullptr) << s;
  }

  const ActionSpec* identify = def_.FindAction("identify");
  ASSERT_NE(identify, nullptr);
  EXPECT_EQ(identify->max_batch_records, 2500);
  EXPECT_THAT(identify->selections, ElementsAre(RecordSelection::kAdded, RecordSelection::kUpdated,
                                                RecordSelection::kAddedOrUpdated));
  EXPECT_FALSE(identify->Supports(RecordSelection::kDeleted));
  EXPECT_TRUE(identify->AcceptsField("traits.plan"));
  EXPECT_TRUE(identify->AcceptsField("userId"));
  EXPECT_FALSE(identify->AcceptsField("properties.revenue"));

  const ActionSpec* track = def_.FindAction("track");
  ASSERT_NE(track, nullptr);
  EXPECT_THAT(track->selections, ElementsAre(RecordSelection::kAdded));
  ASSERT_NE(track->FindField("event"), nullptr);
  EXPECT_TRUE(track->FindField("event")->required);
  EXPECT_TRUE(track->AcceptsField("properties.revenue"));

  const ActionSpec* group = def_.FindAction("group");
  ASSERT_NE(group, nullptr);
  ASSERT_NE(group->FindField("groupId"), nullptr);
  EXPECT_TRUE(group->FindField("groupId")->required);
  EXPECT_TRUE(group->FindField("groupId")->identifier);
  EXPECT_FALSE(group->Supports(RecordSelection::kDeleted));

  // Every action insists on userId or anonymousId at configuration time.
  for (const ActionSpec* a : {identify, track, group}) {
    ASSERT_TRUE(a->validate);
    EXPECT_THAT(a->validate(json::object(), {{"traits.plan", "plan"}}), SizeIs(1));
    EXPECT_THAT(a->validate(json::object(), {{"anonymousId", "device"}}), SizeIs(0));
    EXPECT_THAT(a->validate(json::object(), {{"userId", "id"}}), SizeIs(0));
  }
}

TEST_F(SegmentDestinationTest, IdentifySendsBatchAndTraitsAreMerged) {
  auto session = Session("identify", {"userId", "traits.email", "traits.plan", "timestamp"});
  ASSERT_NE(session, nullptr);
  OutgoingRecord a = Rec("1", {Value::String("u1"), Value::String("a@x.io"), Value::String("pro"),
                               Value::Text(ValueType::kTimestamp, "2026-01-02T03:04:05Z")});
  OutgoingRecord b =
      Rec("2", {Value::String("u2"), Value::String("b@x.io"), Value::Null(), Value::Null()});
  std::vector<OutgoingRecord> batch = {a, b};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));

  std::vector<SegmentRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  const SegmentRequest& r = reqs[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/v1/batch");
  EXPECT_EQ(r.reply_status, 200);
  EXPECT_EQ(r.write_key, kKey);
  auto header = [&](const char* name) -> std::string {
    for (const auto& [k, v] : r.headers) {
      if (k == name) return v;
    }
    return "";
  };
  EXPECT_EQ(header("authorization"), "Basic " + Base64Encode("test_write_key:"));
  EXPECT_EQ(header("content-type"), "application/json");
  json body = json::parse(r.body);
  ASSERT_EQ(body["batch"].size(), 2u);
  EXPECT_EQ(body["batch"][0], json({{"type", "identify"},
                                    {"messageId", SegmentMessageId("identify", a.dedup_id, 7)},
                                    {"userId", "u1"},
                                    {"traits", {{"email", "a@x.io"}, {"plan", "pro"}}},
                                    {"timestamp", "2026-01-02T03:04:05Z"}}));
  // A NULL trait is sent as null (it clears the trait); an unset timestamp is left out.
  EXPECT_EQ(body["batch"][1]["traits"], json({{"email", "b@x.io"}, {"plan", nullptr}}));
  EXPECT_FALSE(body["batch"][1].contains("timestamp"));
  EXPECT_EQ(body["context"]["library"]["name"], "backflow");
  EXPECT_EQ(body["sentAt"], "2023-11-14T22:13:20.000Z");

  // An update merges into the user's traits.
  std::vector<OutgoingRecord> update = {Rec(
      "1", {Value::String("u1"), Value::String("a2@x.io"), Value::String("team"), Value::Null()},
      ChangeKind::kUpdated)};
  result = session->SendBatch(update);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  std::map<std::string, json> users = fake_->UserTraits();
  ASSERT_EQ(users.size(), 2u);
  EXPECT_EQ(users["u1"], json({{"email", "a2@x.io"}, {"plan", "team"}}));
  EXPECT_EQ(users["u2"], json({{"email", "b@x.io"}, {"plan", nullptr}}));
  EXPECT_TRUE(fake_->DroppedItems().empty());
}

TEST_F(SegmentDestinationTest, IdentifyByAnonymousIdAndNumericUserId) {
  auto session = Session("identify", {"userId", "anonymousId", "traits.plan"});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Rec("1", {Value::Null(), Value::String("dev-1"), Value::String("free")}),
      Rec("2", {Value::Int64(42), Value::Null(), Value::String("pro")})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  json body = json::parse(fake_->Requests()[0].body);
  EXPECT_FALSE(body["batch"][0].contains("userId"));
  EXPECT_EQ(body["batch"][1]["userId"], "42");
  EXPECT_FALSE(body["batch"][1].contains("anonymousId"));
  EXPECT_EQ(fake_->AnonymousTraits()["dev-1"], json({{"plan", "free"}}));
  EXPECT_EQ(fake_->UserTraits()["42"], json({{"plan", "pro"}}));
}

TEST_F(SegmentDestinationTest, TrackSendsOneEventPerRecord) {
  auto session = Session("track", {"userId", "event", "properties.revenue", "properties.sku",
                                   "timestamp", "context.ip"});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Rec("o1", {Value::String("u1"), Value::String("Order Completed"), Value::Double(14.99),
                 Value::String("A-1"), Value::Text(ValueType::kTimestamp, "2026-01-02T03:04:06Z"),
                 Value::String("10.0.0.1")}),
      Rec("o2", {Value::String("u2"), Value::String("Order Completed"), Value::Int64(5),
                 Value::String("B-2"), Value::Null(), Value::Null()})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  std::vector<json> events = fake_->Events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0]["type"], "track");
  EXPECT_EQ(events[0]["event"], "Order Completed");
  EXPECT_EQ(events[0]["userId"], "u1");
  EXPECT_EQ(events[0]["properties"], json({{"revenue", 14.99}, {"sku", "A-1"}}));
  EXPECT_EQ(events[0]["timestamp"], "2026-01-02T03:04:06Z");
  EXPECT_EQ(events[0]["messageId"], SegmentMessageId("track", batch[0].dedup_id, 7));
  // The item's own context and the request's shared context are both there.
  EXPECT_EQ(events[0]["context"]["ip"], "10.0.0.1");
  EXPECT_EQ(events[0]["context"]["library"]["name"], "backflow");
  EXPECT_EQ(events[1]["properties"]["revenue"], 5);
  EXPECT_TRUE(fake_->UserTraits().empty());
}

TEST_F(SegmentDestinationTest, TrackWithoutEventNameFailsLocally) {
  auto session = Session("track", {"userId", "event"});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Rec("o1", {Value::String("u1"), Value::String("")}),
      Rec("o2", {Value::String("u1"), Value::String("Signed Up")})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kInvalidArgument, absl::StatusCode::kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("event"));
  ASSERT_EQ(fake_->request_count(), 1);
  EXPECT_EQ(fake_->Requests()[0].item_count, 1u);
  EXPECT_TRUE(fake_->DroppedItems().empty());
}

TEST_F(SegmentDestinationTest, GroupSetsGroupTraitsAndMembership) {
  auto session = Session("group", {"groupId", "userId", "traits.name", "traits.seats"});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Rec("acct_7", {Value::String("acct_7"), Value::String("u1"),
                                                      Value::String("Initech"), Value::Int64(30)}),
                                       Rec("acct_8", {Value::Int64(8), Value::String("u2"),
                                                      Value::String("Globex"), Value::Int64(5)})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  std::map<std::string, json> groups = fake_->Groups();
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups["acct_7"], json({{"name", "Initech"}, {"seats", 30}}));
  EXPECT_EQ(groups["8"], json({{"name", "Globex"}, {"seats", 5}}));
  EXPECT_THAT(fake_->GroupMembers(),
              ElementsAre(std::pair<std::string, std::string>("u1", "acct_7"),
                          std::pair<std::string, std::string>("u2", "8")));
  json item = json::parse(fake_->Requests()[0].body)["batch"][0];
  EXPECT_EQ(item["type"], "group");
  EXPECT_EQ(item["groupId"], "acct_7");
}

TEST_F(SegmentDestinationTest, PoisonRecordIsIsolatedByBisecting) {
  fake_->RejectUserId("u5");
  auto session = IdentifySession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 1; i <= 8; ++i) batch.push_back(User(std::to_string(i), "pro"));
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  std::vector<absl::StatusCode> codes = Codes(*result);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(codes[i], i == 4 ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kOk) << i;
  }
  EXPECT_THAT((*result)[4].message(), HasSubstr("HTTP 400"));
  EXPECT_THAT((*result)[4].message(), HasSubstr("userId u5 was rejected"));
  std::map<std::string, json> users = fake_->UserTraits();
  EXPECT_EQ(users.size(), 7u);
  EXPECT_FALSE(users.contains("u5"));
  // 8 -> 400; [1..4] ok; [5..8] -> 400; [5,6] -> 400; [5] -> 400; [6] ok; [7,8] ok.
  std::vector<size_t> sizes;
  for (const SegmentRequest& r : fake_->Requests()) sizes.push_back(r.item_count);
  EXPECT_THAT(sizes, ElementsAre(8, 4, 4, 2, 1, 1, 2));
  EXPECT_EQ(clock_.total_slept(), seconds(0));  // 400 is not retried
  EXPECT_EQ(fake_->duplicate_count(), 0);
}

TEST_F(SegmentDestinationTest, RateLimitHonoursRetryAfter) {
  fake_->EnqueueReply(FakeSegmentReply::TooManyRequests("7", "7"));
  auto session = IdentifySession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("1", "pro"), User("2", "pro")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  EXPECT_EQ(clock_.total_slept(), seconds(7));
  std::vector<SegmentRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].reply_status, 429);
  EXPECT_EQ(reqs[1].reply_status, 200);
  EXPECT_EQ(reqs[0].message_ids, reqs[1].message_ids);
  EXPECT_EQ(fake_->UserTraits().size(), 2u);
}

TEST_F(SegmentDestinationTest, RateLimitResetHeaderAloneIsHonoured) {
  fake_->EnqueueReply(FakeSegmentReply::TooManyRequests("", "3"));
  // An epoch-seconds reset (FakeClock starts at 1700000000) is understood too.
  fake_->EnqueueReply(FakeSegmentReply::TooManyRequests("", "1700000012"));
  auto session = IdentifySession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("1", "pro")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  EXPECT_EQ(clock_.total_slept(), seconds(12));  // 3 s, then until 1700000012
  EXPECT_EQ(fake_->request_count(), 3);
}

TEST_F(SegmentDestinationTest, RateLimitExhaustedIsResourceExhausted) {
  fake_->EnqueueReplies(3, FakeSegmentReply::TooManyRequests("5", "5"));
  auto session = IdentifySession({{"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("1", "pro"), User("2", "pro")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), Each(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(RetryAfter((*result)[0]), milliseconds(5000));
  EXPECT_THAT((*result)[0].message(), HasSubstr("3 attempts"));
  EXPECT_EQ(clock_.total_slept(), seconds(10));
  EXPECT_TRUE(fake_->UserTraits().empty());
}

TEST_F(SegmentDestinationTest, ServerErrorIsRetriedThenSucceeds) {
  fake_->EnqueueReply(FakeSegmentReply::Status(502));
  auto session = IdentifySession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("1", "pro")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  EXPECT_EQ(fake_->request_count(), 2);
  EXPECT_LE(clock_.total_slept(), seconds(1));
  EXPECT_EQ(fake_->UserTraits().size(), 1u);
}

TEST_F(SegmentDestinationTest, ServerErrorsExhaustedAreUnavailablePerRecord) {
  fake_->EnqueueReplies(3, FakeSegmentReply::Status(503, "upstream down"));
  auto session = IdentifySession({{"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("1", "pro"), User("2", "pro")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kUnavailable, absl::StatusCode::kUnavailable));
  EXPECT_THAT((*result)[0].message(), HasSubstr("HTTP 503"));
  EXPECT_THAT((*result)[0].message(), HasSubstr("3 attempts"));
  EXPECT_THAT((*result)[0].message(), HasSubstr("upstream down"));
  EXPECT_EQ(fake_->request_count(), 3);
  EXPECT_TRUE(fake_->UserTraits().empty());
}

TEST_F(SegmentDestinationTest, UnreachableIsUnavailable) {
  std::string url = fake_->BaseUrl();
  fake_->Stop();
  auto session = IdentifySession({{"base_url", url}, {"max_retries", 1}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("1", "pro")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*result)[0].message(), HasSubstr("2 attempts"));
}

TEST_F(SegmentDestinationTest, BadWriteKeyStopsTheRun) {
  auto session = IdentifySession({{"write_key", "wrong_key"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("1", "pro"), User("2", "pro")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(result.status().message(), HasSubstr("write_key"));
  EXPECT_THAT(result.status().message(), HasSubstr("invalid write key"));  // the fake's reply
  EXPECT_EQ(fake_->unauthorized_count(), 1);
  EXPECT_EQ(fake_->request_count(), 1);  // not retried
  EXPECT_TRUE(fake_->UserTraits().empty());
}

TEST_F(SegmentDestinationTest, ForbiddenAndWrongUrlStopTheRun) {
  auto session = IdentifySession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("1", "pro")};
  fake_->EnqueueReply(FakeSegmentReply::Status(403));
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied);

  auto wrong = IdentifySession({{"base_url", fake_->BaseUrl() + "/segment"}});
  ASSERT_NE(wrong, nullptr);
  result = wrong->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("base_url"));
  EXPECT_EQ(fake_->request_count(), 2);
}

TEST_F(SegmentDestinationTest, MissingUserIdFailsLocallyAndIsNotSent) {
  auto session = Session("identify", {"userId", "anonymousId", "traits.plan"});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Rec("1", {Value::String("u1"), Value::Null(), Value::String("pro")}),
      Rec("2", {Value::Null(), Value::Null(), Value::String("free")}),
      Rec("3", {Value::String(""), Value::String(""), Value::String("free")}),
      Rec("4", {Value::String("u4"), Value::Null(), Value::String("pro")})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
                          absl::StatusCode::kInvalidArgument, absl::StatusCode::kOk));
  EXPECT_THAT((*result)[1].message(), HasSubstr("neither userId nor anonymousId"));
  EXPECT_THAT((*result)[1].message(), HasSubstr("silently drops"));
  std::vector<SegmentRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].item_count, 2u);
  EXPECT_EQ(reqs[0].message_ids,
            (std::vector<std::string>{SegmentMessageId("identify", batch[0].dedup_id, 7),
                                      SegmentMessageId("identify", batch[3].dedup_id, 7)}));
  EXPECT_TRUE(fake_->DroppedItems().empty());  // nothing for Segment to drop silently
  EXPECT_EQ(fake_->UserTraits().size(), 2u);

  // A batch with no valid record sends nothing.
  std::vector<OutgoingRecord> none = {batch[1]};
  result = session->SendBatch(none);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(fake_->request_count(), 1);
}

TEST_F(SegmentDestinationTest, OversizeEventFailsLocallyAndIsNotSent) {
  auto session = IdentifySession();
  ASSERT_NE(session, nullptr);
  OutgoingRecord big = User("2", std::string(40 * 1024, 'x'));
  std::vector<OutgoingRecord> batch = {User("1", "pro"), big, User("3", "pro")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
                                          absl::StatusCode::kOk));
  EXPECT_THAT((*result)[1].message(), HasSubstr("32 KB"));
  std::vector<SegmentRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].item_count, 2u);
  EXPECT_LT(reqs[0].body.size(), 1024u);
  EXPECT_FALSE(fake_->UserTraits().contains("u2"));
}

TEST_F(SegmentDestinationTest, NonObjectTraitsFailLocally) {
  auto session = Session("identify", {"userId", "traits"});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Rec("1", {Value::String("u1"), Value::Text(ValueType::kJson, R"({"plan":"pro"})")}),
      Rec("2", {Value::String("u2"), Value::Text(ValueType::kJson, "[1,2]")})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*result)[1].message(), HasSubstr("traits must be an object"));
  EXPECT_EQ(fake_->UserTraits()["u1"], json({{"plan", "pro"}}));
}

TEST_F(SegmentDestinationTest, AmbiguousTimeoutRetryReusesMessageIdAndIsDeduplicated) {
  // Segment applies the batch but the reply comes too late: the client retries.
  fake_->EnqueueReply(FakeSegmentReply::Slow(milliseconds(2000)));
  auto session = IdentifySession({{"timeout_ms", 150}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("1", "pro"), User("2", "free")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  std::vector<SegmentRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].message_ids, reqs[1].message_ids);
  EXPECT_EQ(fake_->duplicate_count(), 2);
  EXPECT_EQ(fake_->accepted_count(), 2);
  for (const std::string& id : reqs[0].message_ids) EXPECT_EQ(fake_->MessageIdCounts()[id], 2);
  EXPECT_EQ(fake_->UserTraits().size(), 2u);
}

TEST_F(SegmentDestinationTest, TrackMessageIdIsStableAcrossRuns) {
  std::vector<OutgoingRecord> batch = {
      Rec("o1", {Value::String("u1"), Value::String("Order Completed")})};
  auto run1 = Session("track", {"userId", "event"}, json::object(), /*run_id=*/1);
  ASSERT_NE(run1, nullptr);
  ASSERT_TRUE(run1->SendBatch(batch).ok());
  // A later run re-sending the same event (its reply was lost) is deduplicated.
  auto run2 = Session("track", {"userId", "event"}, json::object(), /*run_id=*/2);
  ASSERT_NE(run2, nullptr);
  ASSERT_TRUE(run2->SendBatch(batch).ok());
  EXPECT_EQ(fake_->Events().size(), 1u);
  EXPECT_EQ(fake_->duplicate_count(), 1);
}

TEST(SegmentMessageIdTest, DeterministicAndShort) {
  std::string d(32, 'a');
  EXPECT_EQ(SegmentMessageId("track", d, 1), "bf-" + d);
  EXPECT_EQ(SegmentMessageId("track", d, 1), SegmentMessageId("track", d, 2));
  EXPECT_EQ(SegmentMessageId("identify", d, 3), "bf-" + d + "-3");
  EXPECT_NE(SegmentMessageId("identify", d, 3), SegmentMessageId("identify", d, 4));
  std::string longer(200, 'z');
  std::string id = SegmentMessageId("identify", longer, 123456789);
  EXPECT_LT(id.size(), 100u);
  EXPECT_EQ(id, SegmentMessageId("identify", longer, 123456789));
  EXPECT_NE(id, SegmentMessageId("identify", longer + "z", 123456789));
  EXPECT_EQ(SegmentBasicAuth("abc"), "Basic " + Base64Encode("abc:"));
}

TEST_F(SegmentDestinationTest, LargeBatchIsSplitLocallyUnder500KB) {
  auto session = IdentifySession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 60; ++i) {
    batch.push_back(User(std::to_string(i), std::string(20 * 1024, 'a' + i % 26)));
  }
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), Each(absl::StatusCode::kOk));
  std::vector<SegmentRequest> reqs = fake_->Requests();
  ASSERT_GE(reqs.size(), 3u);
  size_t items = 0;
  for (const SegmentRequest& r : reqs) {
    EXPECT_LE(r.body.size(), kSegmentMaxBatchBytes);
    EXPECT_EQ(r.reply_status, 200);
    items += r.item_count;
  }
  EXPECT_EQ(items, 60u);
  EXPECT_EQ(reqs.size(), 3u);  // 24 + 24 + 12 items of ~20.5 KB
  EXPECT_EQ(fake_->UserTraits().size(), 60u);
}

TEST_F(SegmentDestinationTest, StopAfterPartOfTheBatchWasAcceptedFailsTheRest) {
  auto session = IdentifySession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 30; ++i) {
    batch.push_back(User(std::to_string(i), std::string(20 * 1024, 'q')));
  }
  fake_->EnqueueReply(FakeSegmentReply::Status(200));
  fake_->EnqueueReply(FakeSegmentReply::Status(401, R"({"message":"key revoked"})"));
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  std::vector<absl::StatusCode> codes = Codes(*result);
  for (int i = 0; i < 24; ++i) EXPECT_EQ(codes[i], absl::StatusCode::kOk) << i;
  for (int i = 24; i < 30; ++i) EXPECT_EQ(codes[i], absl::StatusCode::kUnauthenticated) << i;
  EXPECT_EQ(fake_->request_count(), 2);
  EXPECT_EQ(fake_->UserTraits().size(), 24u);
}

TEST_F(SegmentDestinationTest, ChangesTheActionCannotSendFailPerRecord) {
  // A mapping left at records: all hands deletes (and, for track, updates) over.
  auto identify = IdentifySession();
  ASSERT_NE(identify, nullptr);
  OutgoingRecord deleted = Rec("9", {Value::String("u9")}, ChangeKind::kDeleted);
  std::vector<OutgoingRecord> batch = {User("1", "pro"), deleted};
  auto result = identify->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*result)[1].message(), HasSubstr("records: added_or_updated"));

  auto track = Session("track", {"userId", "event"});
  ASSERT_NE(track, nullptr);
  std::vector<OutgoingRecord> events = {
      Rec("o1", {Value::String("u1"), Value::String("Signed Up")}, ChangeKind::kUpdated)};
  result = track->SendBatch(events);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*result)[0].message(), HasSubstr("records: added"));
  EXPECT_EQ(fake_->request_count(), 1);
  EXPECT_TRUE(fake_->Events().empty());
}

TEST_F(SegmentDestinationTest, EmptyBatchSendsNothing) {
  auto session = IdentifySession();
  ASSERT_NE(session, nullptr);
  auto result = session->SendBatch({});
  ASSERT_TRUE(result.ok());
  EXPECT_TRUE(result->empty());
  EXPECT_EQ(fake_->request_count(), 0);
}

TEST_F(SegmentDestinationTest, CheckConnectionPostsEmptyBatch) {
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  EXPECT_TRUE((*dest)->CheckConnection().ok());
  std::vector<SegmentRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(json::parse(reqs[0].body), json({{"batch", json::array()}}));
  EXPECT_EQ(reqs[0].write_key, kKey);
  EXPECT_EQ(fake_->accepted_count(), 0);

  auto bad = Create(Settings({{"write_key", "nope"}}));
  ASSERT_TRUE(bad.ok());
  absl::Status s = (*bad)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(s.message(), HasSubstr("write_key"));

  fake_->EnqueueReply(FakeSegmentReply::Status(503));
  s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(fake_->request_count(), 3);  // never retried

  std::string url = fake_->BaseUrl();
  fake_->Stop();
  auto gone = Create(Settings({{"base_url", url}}));
  ASSERT_TRUE(gone.ok());
  s = (*gone)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr(url));
}

TEST_F(SegmentDestinationTest, RejectsBadSettings) {
  json no_key = Settings();
  no_key.erase("write_key");
  EXPECT_FALSE(Create(no_key).ok());
  EXPECT_FALSE(Create(Settings({{"write_key", ""}})).ok());
  EXPECT_FALSE(Create(Settings({{"write_key", "a:b"}})).ok());
  EXPECT_FALSE(Create(Settings({{"base_url", "ftp://x"}})).ok());
  EXPECT_FALSE(Create(Settings({{"max_retries", -1}})).ok());
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  SessionOptions opts;
  opts.action = nullptr;
  EXPECT_FALSE((*dest)->StartSession(opts).ok());
}

// --- The fake itself enforces the protocol. ----------------------------------

class FakeSegmentServerTest : public ::testing::Test {
 protected:
  void Start(FakeSegmentOptions options = {}) {
    fake_ = std::make_unique<FakeSegmentServer>(std::move(options));
    ASSERT_TRUE(fake_->Start().ok());
  }

  HttpResponse Post(const std::string& body, std::string auth = SegmentBasicAuth(kKey),
                    std::string content_type = "application/json",
                    const std::string& path = "/v1/batch") {
    HttpRequest req;
    req.url = fake_->BaseUrl() + path;
    req.body = body;
    if (!auth.empty()) req.headers.emplace_back("Authorization", std::move(auth));
    if (!content_type.empty()) req.headers.emplace_back("Content-Type", std::move(content_type));
    absl::StatusOr<HttpResponse> resp = http_->Send(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : HttpResponse{};
  }

  static std::string Batch(const json& items) { return json({{"batch", items}}).dump(); }

  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeSegmentServer> fake_;
};

TEST_F(FakeSegmentServerTest, EnforcesBasicAuthFormat) {
  Start();
  std::string body = Batch(json::array({{{"type", "identify"}, {"userId", "u1"}}}));
  EXPECT_EQ(Post(body).status, 200);
  EXPECT_EQ(Post(body, "Basic " + Base64Encode("test_write_key")).status, 401);  // no colon
  EXPECT_EQ(Post(body, "Basic " + Base64Encode("test_write_key:pw")).status, 401);
  EXPECT_EQ(Post(body, "Basic " + Base64Encode("other:")).status, 401);
  EXPECT_EQ(Post(body, "Bearer test_write_key").status, 401);
  EXPECT_EQ(Post(body, "").status, 401);
  // The alternative: writeKey in the body.
  EXPECT_EQ(Post(json({{"batch", json::array({{{"type", "identify"}, {"userId", "u2"}}})},
                       {"writeKey", kKey}})
                     .dump(),
                 "")
                .status,
            200);
  EXPECT_EQ(fake_->unauthorized_count(), 5);
  EXPECT_EQ(fake_->UserTraits().size(), 2u);
  EXPECT_EQ(Post(body, SegmentBasicAuth(kKey), "application/json", "/v1/nope").status, 404);
  EXPECT_EQ(Post(body, SegmentBasicAuth(kKey), "application/json", "/v1/import").status, 200);
}

TEST_F(FakeSegmentServerTest, EnforcesContentTypeJsonAndSizeLimits) {
  FakeSegmentOptions options;
  options.max_batch_events = 3;
  Start(options);
  json item = {{"type", "identify"}, {"userId", "u1"}};
  EXPECT_EQ(Post(Batch(json::array({item})), SegmentBasicAuth(kKey), "text/plain").status, 400);
  EXPECT_EQ(
      Post(Batch(json::array({item})), SegmentBasicAuth(kKey), "application/json; charset=utf-8")
          .status,
      200);
  HttpResponse bad = Post("{\"batch\": [");
  EXPECT_EQ(bad.status, 400);
  EXPECT_THAT(bad.body, HasSubstr("invalid JSON"));
  EXPECT_EQ(Post(R"({"items":[]})").status, 400);

  json big = item;
  big["traits"] = {{"blob", std::string(33 * 1024, 'x')}};
  EXPECT_EQ(Post(Batch(json::array({item, big}))).status, 400);

  json many = json::array();
  for (int i = 0; i < 20; ++i) {
    json it = item;
    it["userId"] = "m" + std::to_string(i);
    it["traits"] = {{"blob", std::string(30 * 1024, 'y')}};
    many.push_back(it);
  }
  EXPECT_EQ(Post(Batch(many)).status, 400);  // ~600 KB
  EXPECT_TRUE(fake_->DroppedItems().empty());

  // Above max_batch_events: 200, yet every item is dropped.
  json four = json::array();
  for (int i = 0; i < 4; ++i) four.push_back({{"type", "identify"}, {"userId", std::to_string(i)}});
  HttpResponse over = Post(Batch(four));
  EXPECT_EQ(over.status, 200);
  std::vector<DroppedItem> dropped = fake_->DroppedItems();
  ASSERT_EQ(dropped.size(), 4u);
  EXPECT_EQ(dropped[0].reason, "batch_too_large");
  EXPECT_EQ(fake_->UserTraits().size(), 1u);  // only the charset request's u1
}

TEST_F(FakeSegmentServerTest, DropsInvalidItemsSilentlyAndDedupes) {
  Start();
  json items = json::array({
      {{"type", "identify"}, {"traits", {{"a", 1}}}, {"messageId", "m1"}},
      {{"type", "track"}, {"userId", "u1"}, {"messageId", "m2"}},
      {{"type", "group"}, {"userId", "u1"}, {"messageId", "m3"}},
      {{"type", "bogus"}, {"userId", "u1"}},
      {{"type", "track"}, {"userId", "u1"}, {"event", "E"}, {"messageId", "m4"}},
      {{"type", "track"}, {"userId", "u1"}, {"event", "E"}, {"messageId", "m4"}},
  });
  HttpResponse r = Post(Batch(items));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body), json({{"success", true}}));
  std::vector<std::string> reasons;
  for (const DroppedItem& d : fake_->DroppedItems()) reasons.push_back(d.reason);
  EXPECT_THAT(reasons,
              ElementsAre("no_user_anon_id", "missing_event", "missing_group_id", "bad_type"));
  EXPECT_EQ(fake_->Events().size(), 1u);
  EXPECT_EQ(fake_->duplicate_count(), 1);
  EXPECT_EQ(Post(Batch(json::array({items[4]}))).status,
            200);  // a later re-send is deduplicated too
  EXPECT_EQ(fake_->Events().size(), 1u);
  EXPECT_EQ(fake_->duplicate_count(), 2);
}

TEST_F(FakeSegmentServerTest, CanRejectInvalidItemsWith400) {
  FakeSegmentOptions options;
  options.reject_invalid_items_with_400 = true;
  Start(options);
  json items = json::array(
      {{{"type", "identify"}, {"userId", "u1"}}, {{"type", "identify"}, {"traits", {{"a", 1}}}}});
  HttpResponse r = Post(Batch(items));
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("no_user_anon_id"));
  EXPECT_TRUE(fake_->UserTraits().empty());
}

TEST_F(FakeSegmentServerTest, ScriptedRateLimitCarriesBothHeaders) {
  Start();
  fake_->EnqueueReply(FakeSegmentReply::TooManyRequests("2", "2"));
  HttpResponse r = Post(Batch(json::array({{{"type", "identify"}, {"userId", "u1"}}})));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.Header("retry-after"), "2");
  EXPECT_EQ(r.Header("x-ratelimit-reset"), "2");
  EXPECT_TRUE(fake_->UserTraits().empty());
  EXPECT_EQ(Post(Batch(json::array({{{"type", "identify"}, {"userId", "u1"}}}))).status, 200);
  EXPECT_EQ(fake_->UserTraits().size(), 1u);
}

}  // namespace
}  // namespace backflow
