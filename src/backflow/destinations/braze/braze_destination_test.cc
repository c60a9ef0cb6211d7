#include "backflow/destinations/braze/braze_destination.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/braze/fake_braze_server.h"
#include "backflow/destinations/destination.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Code = absl::StatusCode;

const std::string kKey = "braze-rest-key-0001";

OutgoingRecord Rec(ChangeKind change, const std::string& key, Row values) {
  OutgoingRecord r;
  r.change = change;
  r.key = key;
  r.dedup_id = "d_" + key + "_" + std::string(ChangeKindName(change));
  r.values = std::move(values);
  return r;
}

Value S(const std::string& s) { return Value::String(s); }

// A user row for the attributes layout {external_id, email, first_name, plan}.
OutgoingRecord User(const std::string& id, const std::string& email, Value first_name = S("Ann"),
                    Value plan = S("pro"), ChangeKind change = ChangeKind::kAdded) {
  return Rec(change, id,
             {id.empty() ? Value::Null() : S(id), email.empty() ? Value::Null() : S(email),
              std::move(first_name), std::move(plan)});
}

OutgoingRecord Gone(const std::string& id) { return Rec(ChangeKind::kDeleted, id, {S(id)}); }

std::vector<Code> Codes(const std::vector<absl::Status>& statuses) {
  std::vector<Code> out;
  for (const absl::Status& s : statuses) out.push_back(s.code());
  return out;
}

class BrazeDestinationTest : public ::testing::Test {
 protected:
  void StartFake(FakeBrazeOptions options = {}) {
    options.clock = &clock_;
    if (options.api_keys.empty()) {
      options.api_keys[kKey] = {kBrazeUsersTrack, kBrazeUsersDelete};
    }
    fake_ = std::make_unique<FakeBrazeServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
  }

  json Settings(const json& extra = json::object()) {
    json s = {{"api_key", kKey}, {"base_url", fake_->BaseUrl()}};
    for (const auto& [k, v] : extra.items()) s[k] = v;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Destination>> Create(json settings) {
    std::vector<std::string> problems = CheckSettings(def_.settings, settings);
    if (!problems.empty()) return absl::InvalidArgumentError(problems.front());
    return def_.create(settings, ConnectorEnv{http_.get(), &clock_});
  }

  // A session of `action` on a fresh destination (kept in dest_).
  std::unique_ptr<ActionSession> Session(const std::string& action, FieldLayout layout,
                                         const json& extra = json::object()) {
    absl::StatusOr<std::unique_ptr<Destination>> dest = Create(Settings(extra));
    EXPECT_TRUE(dest.ok()) << dest.status();
    if (!dest.ok()) return nullptr;
    dest_ = *std::move(dest);
    SessionOptions opts;
    opts.mapping = "users_to_braze";
    opts.run_id = 7;
    opts.action = def_.FindAction(action);
    opts.layout = std::move(layout);
    absl::StatusOr<std::unique_ptr<ActionSession>> session = dest_->StartSession(opts);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *std::move(session) : nullptr;
  }

  std::unique_ptr<ActionSession> AttributesSession(const json& extra = json::object()) {
    return Session("track_attributes",
                   {{"external_id", "email", "first_name", "plan"}, {"external_id"}}, extra);
  }

  std::vector<json> SentBodies(const std::string& path) {
    std::vector<json> out;
    for (const FakeBrazeRequest& r : fake_->Requests()) {
      if (r.path == path) out.push_back(json::parse(r.body));
    }
    return out;
  }

  DestinationDefinition def_ = BrazeDestinationDefinition();
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeBrazeServer> fake_;
  std::unique_ptr<Destination> dest_;
};

TEST_F(BrazeDestinationTest, DefinitionDeclaresSettingsActionsAndChecks) {
  EXPECT_EQ(def_.type, "braze");
  const SettingSpec* key = FindSetting(def_.settings, "api_key");
  ASSERT_NE(key, nullptr);
  EXPECT_TRUE(key->required);
  EXPECT_TRUE(key->secret);
  const SettingSpec* base = FindSetting(def_.settings, "base_url");
  ASSERT_NE(base, nullptr);
  EXPECT_TRUE(base->required);
  EXPECT_TRUE(base->default_value.is_null());
  EXPECT_THAT(base->description, HasSubstr("https://rest.iad-01.braze.com"));
  for (const char* name : {"max_requests_per_second", "timeout_ms", "max_retries",
                           "max_retry_wait_s", "update_existing_only", "max_objects_per_request",
                           "track_requests_per_3s", "delete_requests_per_minute"}) {
    EXPECT_NE(FindSetting(def_.settings, name), nullptr) << name;
  }
  EXPECT_EQ(FindSetting(def_.settings, "track_requests_per_3s")->default_value, 3000);
  EXPECT_EQ(FindSetting(def_.settings, "max_objects_per_request")->default_value, 75);

  json missing = {{"api_key", kKey}};
  std::vector<std::string> problems = CheckSettings(def_.settings, missing);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_THAT(problems[0], HasSubstr("base_url"));
  json too_many = {{"api_key", kKey},
                   {"base_url", "https://rest.iad-01.braze.com"},
                   {"max_objects_per_request", 76}};
  EXPECT_TRUE(CheckSettings(def_.settings, too_many).empty());
  EXPECT_EQ(def_.create(too_many, ConnectorEnv{http_.get(), &clock_}).status().code(),
            Code::kInvalidArgument);

  const ActionSpec* attrs = def_.FindAction("track_attributes");
  ASSERT_NE(attrs, nullptr);
  EXPECT_TRUE(attrs->allows_extra_fields);
  EXPECT_EQ(attrs->max_batch_records, 75);
  EXPECT_TRUE(attrs->Supports(RecordSelection::kDeleted));
  EXPECT_TRUE(attrs->Supports(RecordSelection::kAll));
  EXPECT_EQ(attrs->FindField("gender")->allowed_values,
            (std::vector<std::string>{"M", "F", "O", "N", "P"}));
  EXPECT_TRUE(attrs->validate(json::object(), {{"external_id", "id"}, {"plan", "plan"}}).empty());
  EXPECT_TRUE(attrs->validate(json::object(), {{"email", "email"}}).empty());
  EXPECT_THAT(attrs->validate(json::object(), {{"plan", "plan"}}),
              ElementsAre(HasSubstr("map a user identifier")));
  EXPECT_THAT(attrs->validate(json::object(), {{"user_alias.alias_name", "a"}}),
              ElementsAre(HasSubstr("together"), HasSubstr("map a user identifier")));
  EXPECT_THAT(
      attrs->validate(json::object(), {{"external_id", "id"}, {"_update_existing_only", "flag"}}),
      ElementsAre(HasSubstr("update_existing_only")));

  const ActionSpec* events = def_.FindAction("track_event");
  ASSERT_NE(events, nullptr);
  EXPECT_FALSE(events->allows_extra_fields);
  EXPECT_TRUE(events->AcceptsField("properties.order_id"));
  EXPECT_FALSE(events->AcceptsField("plan"));
  EXPECT_TRUE(events->FindField("name")->required);
  EXPECT_EQ(events->selections, std::vector<RecordSelection>{RecordSelection::kAdded});
}

TEST_F(BrazeDestinationTest, TrackAttributesUpsertsAndMergesUsers) {
  StartFake();
  auto session =
      Session("track_attributes",
              {{"external_id", "email", "first_name", "plan", "address.city"}, {"external_id"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> first = {
      Rec(ChangeKind::kAdded, "u1", {S("u1"), S("a@x.io"), S("Ann"), S("pro"), S("Oslo")}),
      Rec(ChangeKind::kAdded, "u2", {S("u2"), S("b@x.io"), S("Bob"), S("free"), Value::Null()})};
  auto result = session->SendBatch(first);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));

  std::map<std::string, json> users = fake_->Users();
  ASSERT_EQ(users.size(), 2u);
  EXPECT_EQ(users["u1"], json::parse(R"({"email":"a@x.io","first_name":"Ann","plan":"pro",
                                         "address":{"city":"Oslo"}})"));
  EXPECT_EQ(users["u2"], json::parse(R"({"email":"b@x.io","first_name":"Bob","plan":"free"})"));

  std::vector<FakeBrazeRequest> requests = fake_->Requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].path, "/users/track");
  EXPECT_EQ(requests[0].authorization, "Bearer " + kKey);
  EXPECT_EQ(requests[0].content_type, "application/json");
  EXPECT_EQ(requests[0].status, 201);
  json body = json::parse(requests[0].body);
  ASSERT_EQ(body.size(), 1u);
  EXPECT_EQ(body["attributes"][0],
            json::parse(R"({"external_id":"u1","email":"a@x.io","first_name":"Ann","plan":"pro",
                            "address":{"city":"Oslo"},"_update_existing_only":false})"));
  EXPECT_EQ(json::parse(requests[0].reply_body)["attributes_processed"], 2);

  // An update with a null clears the attribute; other attributes stay.
  std::vector<OutgoingRecord> second = {
      Rec(ChangeKind::kUpdated, "u1", {S("u1"), S("a2@x.io"), S("Ann"), Value::Null(), S("Oslo")})};
  result = session->SendBatch(second);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->Users()["u1"],
            json::parse(R"({"email":"a2@x.io","first_name":"Ann","address":{"city":"Oslo"}})"));
  EXPECT_TRUE(session->Finish().ok());
}

TEST_F(BrazeDestinationTest, IdentifiersFallBackInOrder) {
  StartFake();
  auto session = Session("track_attributes", {{"external_id", "braze_id", "user_alias.alias_name",
                                               "user_alias.alias_label", "email", "plan"},
                                              {"external_id"}});
  ASSERT_NE(session, nullptr);
  Value null = Value::Null();
  std::vector<OutgoingRecord> batch = {
      Rec(ChangeKind::kAdded, "1", {S("u1"), S("b1"), S("n1"), S("l1"), S("a@x.io"), S("p1")}),
      Rec(ChangeKind::kAdded, "2", {null, null, S("n2"), S("crm"), null, S("p2")}),
      Rec(ChangeKind::kAdded, "3", {null, null, null, null, S("c@x.io"), S("p3")}),
      Rec(ChangeKind::kAdded, "4", {null, null, S("n4"), null, S("d@x.io"), S("p4")}),
      Rec(ChangeKind::kAdded, "5", {null, null, null, null, null, S("p5")})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk, Code::kInvalidArgument,
                                          Code::kInvalidArgument));
  EXPECT_THAT(std::string((*result)[3].message()), HasSubstr("alias_label"));
  EXPECT_THAT(std::string((*result)[4].message()), HasSubstr("no user identifier"));

  json sent = SentBodies("/users/track").at(0)["attributes"];
  ASSERT_EQ(sent.size(), 3u);
  EXPECT_EQ(sent[0]["external_id"], "u1");
  EXPECT_FALSE(sent[0].contains("braze_id"));
  EXPECT_FALSE(sent[0].contains("user_alias"));
  EXPECT_EQ(sent[1]["user_alias"], json::parse(R"({"alias_name":"n2","alias_label":"crm"})"));
  EXPECT_FALSE(sent[1].contains("external_id"));
  EXPECT_EQ(sent[2]["email"], "c@x.io");

  std::vector<FakeBrazeUser> all = fake_->AllUsers();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].external_id, "u1");
  ASSERT_TRUE(all[1].alias.has_value());
  EXPECT_EQ(all[1].alias->first, "n2");
  EXPECT_EQ(all[1].attributes["plan"], "p2");
  EXPECT_EQ(all[2].attributes, json::parse(R"({"email":"c@x.io","plan":"p3"})"));
}

TEST_F(BrazeDestinationTest, PartialFailureMapsErrorIndexesBackToRecords) {
  StartFake();
  auto session = AttributesSession();
  ASSERT_NE(session, nullptr);
  // Record 0 is not sent (no identifier), so the sent array is shifted by one.
  std::vector<OutgoingRecord> batch = {User("", ""), User("u1", "a@x.io"),
                                       User("u2", "not-an-email"), User("u3", "c@x.io"),
                                       User("u4", "d@@x")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kInvalidArgument, Code::kOk, Code::kInvalidArgument,
                                          Code::kOk, Code::kInvalidArgument));
  EXPECT_THAT(std::string((*result)[0].message()), HasSubstr("no user identifier"));
  EXPECT_THAT(std::string((*result)[2].message()),
              HasSubstr("Invalid email address 'not-an-email'"));
  EXPECT_THAT(std::string((*result)[4].message()), HasSubstr("Invalid email address 'd@@x'"));

  std::vector<FakeBrazeRequest> requests = fake_->Requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(json::parse(requests[0].body)["attributes"].size(), 4u);
  json reply = json::parse(requests[0].reply_body);
  EXPECT_EQ(reply["message"], "success");
  EXPECT_EQ(reply["errors"][0]["index"], 1);
  EXPECT_EQ(reply["errors"][1]["index"], 3);
  std::map<std::string, json> users = fake_->Users();
  EXPECT_EQ(users.size(), 2u);
  EXPECT_EQ(users.count("u1"), 1u);
  EXPECT_EQ(users.count("u3"), 1u);
}

TEST_F(BrazeDestinationTest, WholeBatchRejectionIsBisectedToThePoisonRecord) {
  StartFake();
  fake_->RejectRequestsWith("u3");
  auto session = AttributesSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 8; ++i) batch.push_back(User("u" + std::to_string(i), ""));
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ((*result)[i].code(), i == 3 ? Code::kInvalidArgument : Code::kOk) << i;
  }
  EXPECT_THAT(std::string((*result)[3].message()),
              HasSubstr("could not process the user with external_id u3"));
  EXPECT_EQ(fake_->Users().size(), 7u);
  EXPECT_EQ(fake_->Users().count("u3"), 0u);
  // 8 -> 4 -> 2 -> 1: one rejection per level, the innocent halves accepted.
  EXPECT_EQ(fake_->count_with_status(400), 4);
  EXPECT_EQ(fake_->count_with_status(201), 3);
}

TEST_F(BrazeDestinationTest, ObjectCapsSplitRequests) {
  // The workspace's contract allows 10 objects while Backflow assumes 75: the
  // 400 "Max Input Length Exceeded" is bisected until parts fit.
  FakeBrazeOptions options;
  options.max_objects_per_array = 10;
  StartFake(options);
  auto session = AttributesSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 25; ++i) batch.push_back(User("u" + std::to_string(i), ""));
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  for (const absl::Status& s : *result) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(fake_->Users().size(), 25u);
  EXPECT_GT(fake_->count_with_status(400), 0);
  for (const FakeBrazeRequest& r : fake_->Requests()) {
    if (r.status == 201) {
      EXPECT_LE(json::parse(r.body)["attributes"].size(), 10u);
    }
  }

  // With max_objects_per_request set to the contract, no request is rejected.
  fake_->ClearHistory();
  session = AttributesSession({{"max_objects_per_request", 10}});
  ASSERT_NE(session, nullptr);
  for (OutgoingRecord& r : batch) r.change = ChangeKind::kUpdated;
  result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  std::vector<size_t> sizes;
  for (const json& body : SentBodies("/users/track")) sizes.push_back(body["attributes"].size());
  EXPECT_THAT(sizes, ElementsAre(10u, 10u, 5u));
  EXPECT_EQ(fake_->count_with_status(400), 0);
}

TEST_F(BrazeDestinationTest, RateLimited429WaitsUntilResetThenSucceeds) {
  FakeBrazeOptions options;
  options.track_rate_limit = 2;
  options.track_rate_window = seconds(3);
  StartFake(options);
  auto session = AttributesSession();
  ASSERT_NE(session, nullptr);
  for (int i = 0; i < 3; ++i) {
    std::vector<OutgoingRecord> batch = {User("u" + std::to_string(i), "")};
    auto result = session->SendBatch(batch);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_TRUE((*result)[0].ok()) << (*result)[0];
  }
  // The fake's window [1699999998, 1700000001) held two requests: the third
  // was answered 429 with X-RateLimit-Reset 1700000001, one second after the
  // FakeClock's start, and the retry went out exactly then.
  EXPECT_EQ(fake_->rate_limited_count(), 1);
  EXPECT_EQ(clock_.total_slept(), seconds(1));
  EXPECT_EQ(fake_->Users().size(), 3u);
  std::vector<FakeBrazeRequest> requests = fake_->Requests();
  ASSERT_EQ(requests.size(), 4u);
  EXPECT_EQ(requests[2].status, 429);
  EXPECT_EQ(requests[3].status, 201);

  // A reset far ahead is waited for as well (up to max_retry_wait_s).
  fake_->EnqueueReply(FakeBrazeReply::RateLimited(40));
  std::vector<OutgoingRecord> batch = {User("u9", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_TRUE((*result)[0].ok());
  EXPECT_EQ(clock_.total_slept(), seconds(41));
}

TEST_F(BrazeDestinationTest, RateLimitOutlastingRetriesFailsRecordsWithRetryAfter) {
  StartFake();
  fake_->EnqueueReplies(3, FakeBrazeReply::RateLimited(5));
  auto session = AttributesSession({{"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("u1", ""), User("u2", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kResourceExhausted, Code::kResourceExhausted));
  EXPECT_THAT(std::string((*result)[0].message()), HasSubstr("after 3 attempts"));
  ASSERT_TRUE(RetryAfter((*result)[0]).has_value());
  EXPECT_EQ(*RetryAfter((*result)[0]), seconds(5));
  EXPECT_TRUE(fake_->Users().empty());
}

TEST_F(BrazeDestinationTest, ServerErrorsAreRetriedThenExhausted) {
  StartFake();
  fake_->EnqueueReplies(2, FakeBrazeReply::Status(503));
  auto session = AttributesSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("u1", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE((*result)[0].ok()) << (*result)[0];
  EXPECT_EQ(fake_->request_count(), 3);
  EXPECT_EQ(fake_->Users().size(), 1u);

  fake_->ClearHistory();
  fake_->EnqueueReplies(6, FakeBrazeReply::Status(500, R"({"message":"Internal Server Error"})"));
  batch = {User("u2", ""), User("u3", "")};
  result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kUnavailable, Code::kUnavailable));
  EXPECT_THAT(std::string((*result)[0].message()), HasSubstr("HTTP 500 after 6 attempts"));
  EXPECT_THAT(std::string((*result)[0].message()), HasSubstr("Internal Server Error"));
  EXPECT_EQ(fake_->request_count(), 6);
  EXPECT_EQ(fake_->Users().size(), 1u);
}

TEST_F(BrazeDestinationTest, SlowReplyTimesOutAndTheRetryIsIdempotent) {
  StartFake();
  // Braze applies the update but the reply comes after the client gave up.
  fake_->EnqueueReply(FakeBrazeReply::Slow(milliseconds(1500)));
  auto session = AttributesSession({{"timeout_ms", 200}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("u1", "a@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE((*result)[0].ok()) << (*result)[0];
  EXPECT_EQ(fake_->request_count(), 2);
  EXPECT_EQ(fake_->Users()["u1"], json::parse(R"({"email":"a@x.io","first_name":"Ann",
                                                  "plan":"pro"})"));
}

TEST_F(BrazeDestinationTest, UnauthorizedKeyStopsTheRun) {
  StartFake();
  auto session = AttributesSession({{"api_key", "not-a-key"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("u1", "")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kUnauthenticated);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("check api_key"));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("Unknown or missing REST API Key"));
  EXPECT_EQ(fake_->request_count(), 1);  // 401 is not retried
  EXPECT_EQ(dest_->CheckConnection().code(), Code::kUnauthenticated);
}

TEST_F(BrazeDestinationTest, ForbiddenNamesTheMissingPermission) {
  FakeBrazeOptions options;
  options.api_keys["track-only"] = {kBrazeUsersTrack};
  options.api_keys["delete-only"] = {kBrazeUsersDelete};
  StartFake(options);
  FieldLayout layout = {{"external_id", "email", "first_name", "plan"}, {"external_id"}};

  auto session = Session("track_attributes", layout, {{"api_key", "track-only"}});
  ASSERT_NE(session, nullptr);
  EXPECT_TRUE(dest_->CheckConnection().ok());
  std::vector<OutgoingRecord> deletes = {Gone("u1")};
  auto result = session->SendBatch(deletes);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("users.delete permission"));

  session = Session("track_attributes", layout, {{"api_key", "delete-only"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> upserts = {User("u1", "")};
  result = session->SendBatch(upserts);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("users.track permission"));
  absl::Status check = dest_->CheckConnection();
  EXPECT_EQ(check.code(), Code::kPermissionDenied);
  EXPECT_THAT(std::string(check.message()), HasSubstr("users.track"));
}

TEST_F(BrazeDestinationTest, StopAfterPartialDeliveryMarksTheRestInsteadOfFailingTheBatch) {
  FakeBrazeOptions options;
  options.api_keys["track-only"] = {kBrazeUsersTrack};
  StartFake(options);
  auto session = AttributesSession({{"api_key", "track-only"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("u1", ""), Gone("u2")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kPermissionDenied));
  EXPECT_EQ(fake_->Users().size(), 1u);
}

TEST_F(BrazeDestinationTest, CheckConnectionWritesNothingAndExplainsFailures) {
  StartFake();
  absl::StatusOr<std::unique_ptr<Destination>> dest = Create(Settings());
  ASSERT_TRUE(dest.ok()) << dest.status();
  EXPECT_TRUE((*dest)->CheckConnection().ok());
  std::vector<FakeBrazeRequest> requests = fake_->Requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].path, "/users/track");
  EXPECT_EQ(requests[0].body, R"({"attributes":[]})");
  EXPECT_EQ(requests[0].status, 400);
  EXPECT_TRUE(fake_->AllUsers().empty());

  dest = Create(Settings({{"base_url", fake_->BaseUrl() + "/wrong"}}));
  ASSERT_TRUE(dest.ok());
  absl::Status wrong_path = (*dest)->CheckConnection();
  EXPECT_EQ(wrong_path.code(), Code::kFailedPrecondition);
  EXPECT_THAT(std::string(wrong_path.message()), HasSubstr("base_url"));

  fake_->EnqueueReply(FakeBrazeReply::Status(503));
  dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  EXPECT_EQ((*dest)->CheckConnection().code(), Code::kUnavailable);

  std::string url = fake_->BaseUrl();
  fake_->Stop();
  dest = Create(Settings({{"base_url", url}}));
  ASSERT_TRUE(dest.ok());
  absl::Status unreachable = (*dest)->CheckConnection();
  EXPECT_EQ(unreachable.code(), Code::kUnavailable);
  EXPECT_THAT(std::string(unreachable.message()), HasSubstr("could not reach Braze"));
}

TEST_F(BrazeDestinationTest, TrackEventSendsOneEventPerAddedRecord) {
  StartFake();
  auto session =
      Session("track_event",
              {{"external_id", "name", "time", "properties.order_id", "properties.total"}, {}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Rec(ChangeKind::kAdded, "o1",
          {S("u1"), S("Order Completed"),
           Value::Text(ValueType::kTimestamp, "2026-01-02T03:04:05Z"), S("o1"),
           Value::Double(14.5)}),
      Rec(ChangeKind::kAdded, "o2",
          {S("u2"), S("Order Completed"), Value::Text(ValueType::kTimestamp, "2026-01-02T03:04:05"),
           S("o2"), Value::Int64(3)}),
      Rec(ChangeKind::kAdded, "o3",
          {S("u1"), S("Order Completed"), Value::Null(), S("o3"), Value::Null()})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk));

  std::vector<FakeBrazeEvent> events = fake_->Events();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].external_id, "u1");
  EXPECT_EQ(events[0].object["name"], "Order Completed");
  EXPECT_EQ(events[0].object["time"], "2026-01-02T03:04:05Z");
  EXPECT_EQ(events[0].object["properties"], json::parse(R"({"order_id":"o1","total":14.5})"));
  EXPECT_EQ(events[1].object["time"], "2026-01-02T03:04:05Z");  // zone-less means UTC
  EXPECT_EQ(events[2].object["time"], FormatIso8601(clock_.Now()));
  EXPECT_EQ(events[2].object["properties"], json::parse(R"({"order_id":"o3","total":null})"));
  json body = SentBodies("/users/track").at(0);
  EXPECT_FALSE(body.contains("attributes"));
  EXPECT_EQ(body["events"].size(), 3u);
  // Events create the users they name, with no attributes.
  EXPECT_EQ(fake_->Users().size(), 2u);

  std::vector<OutgoingRecord> updated = {batch[0]};
  updated[0].change = ChangeKind::kUpdated;
  auto refused = session->SendBatch(updated);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("records: added"));
  EXPECT_EQ(fake_->Events().size(), 3u);
}

TEST_F(BrazeDestinationTest, BadEventPayloadsFailPerRecord) {
  StartFake();
  auto session = Session("track_event", {{"external_id", "name", "time", "properties"}, {}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Rec(ChangeKind::kAdded, "1",
          {S("u1"), S("Signed Up"), Value::Null(), Value::Text(ValueType::kJson, R"([1,2])")}),
      Rec(ChangeKind::kAdded, "2",
          {S("u2"), S("Signed Up"), S("yesterday"), Value::Text(ValueType::kJson, R"({"a":1})")}),
      Rec(ChangeKind::kAdded, "3",
          {S("u3"), S("Signed Up"), Value::Null(), Value::Text(ValueType::kJson, R"({"a":2})")}),
      Rec(ChangeKind::kAdded, "4", {S("u4"), S(""), Value::Null(), Value::Null()})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kInvalidArgument, Code::kInvalidArgument, Code::kOk,
                                          Code::kInvalidArgument));
  EXPECT_THAT(std::string((*result)[0].message()), HasSubstr("properties must be a JSON object"));
  // Sent, and rejected by Braze at index 0 of the events array.
  EXPECT_THAT(std::string((*result)[1].message()), HasSubstr("'time' must be an ISO-8601"));
  EXPECT_THAT(std::string((*result)[3].message()), HasSubstr("event name is empty"));
  std::vector<FakeBrazeEvent> events = fake_->Events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].external_id, "u3");
  EXPECT_EQ(events[0].object["properties"], json::parse(R"({"a":2})"));
}

TEST_F(BrazeDestinationTest, DeletedRecordsDeleteUsersInChunksOfFifty) {
  StartFake();
  auto session = AttributesSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> users;
  for (int i = 0; i < 70; ++i) users.push_back(User("u" + std::to_string(i), ""));
  for (size_t start = 0; start < users.size(); start += 35) {
    auto sent = session->SendBatch(std::span<const OutgoingRecord>(users).subspan(start, 35));
    ASSERT_TRUE(sent.ok()) << sent.status();
  }
  ASSERT_EQ(fake_->Users().size(), 70u);
  fake_->ClearHistory();

  // 60 deletes and one update in one batch: /users/track once, /users/delete twice.
  std::vector<OutgoingRecord> batch = {User("u69", "", S("Zed"), S("pro"), ChangeKind::kUpdated)};
  for (int i = 0; i < 60; ++i) batch.push_back(Gone("u" + std::to_string(i)));
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  for (const absl::Status& s : *result) EXPECT_TRUE(s.ok()) << s;
  std::vector<json> deletes = SentBodies("/users/delete");
  ASSERT_EQ(deletes.size(), 2u);
  EXPECT_EQ(deletes[0]["external_ids"].size(), 50u);
  EXPECT_EQ(deletes[1]["external_ids"].size(), 10u);
  EXPECT_EQ(deletes[0]["external_ids"][0], "u0");
  EXPECT_EQ(SentBodies("/users/track").size(), 1u);
  std::map<std::string, json> left = fake_->Users();
  EXPECT_EQ(left.size(), 10u);
  EXPECT_EQ(left["u69"]["first_name"], "Zed");
  EXPECT_EQ(fake_->Deleted().size(), 60u);
  EXPECT_EQ(fake_->Deleted()[0], "u0");

  // Deleting a user Braze no longer has is still a success.
  std::vector<OutgoingRecord> again = {Gone("u0")};
  result = session->SendBatch(again);
  ASSERT_TRUE(result.ok());
  EXPECT_TRUE((*result)[0].ok());
}

TEST_F(BrazeDestinationTest, DeletesNeedTheKeyMappedToAnIdentifier) {
  StartFake();
  // The primary key is mapped to a custom attribute only.
  auto session = Session("track_attributes", {{"email", "account_id"}, {"account_id"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Rec(ChangeKind::kDeleted, "7", {S("7")})};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("primary key mapped to external_id"));
  EXPECT_EQ(fake_->request_count(), 0);

  // Keyed by email, deletes go by email_addresses.
  auto by_email = Session("track_attributes", {{"email", "plan"}, {"email"}});
  ASSERT_NE(by_email, nullptr);
  std::vector<OutgoingRecord> add = {Rec(ChangeKind::kAdded, "a@x.io", {S("a@x.io"), S("pro")})};
  ASSERT_TRUE(by_email->SendBatch(add).ok());
  ASSERT_EQ(fake_->AllUsers().size(), 1u);
  std::vector<OutgoingRecord> gone = {Rec(ChangeKind::kDeleted, "a@x.io", {S("a@x.io")})};
  result = by_email->SendBatch(gone);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE((*result)[0].ok());
  EXPECT_EQ(SentBodies("/users/delete").at(0), json::parse(R"({"email_addresses":["a@x.io"]})"));
  EXPECT_TRUE(fake_->AllUsers().empty());
}

TEST_F(BrazeDestinationTest, UpdateExistingOnlyNeverCreatesProfiles) {
  StartFake();
  fake_->PutUser("u1", json{{"plan", "free"}});
  auto session = AttributesSession({{"update_existing_only", true}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("u1", ""), User("u2", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));
  EXPECT_EQ(SentBodies("/users/track").at(0)["attributes"][1]["_update_existing_only"], true);
  std::map<std::string, json> users = fake_->Users();
  ASSERT_EQ(users.size(), 1u);
  EXPECT_EQ(users["u1"]["plan"], "pro");
}

TEST_F(BrazeDestinationTest, VendorRateLimiterKeepsWithinTheWindow) {
  FakeBrazeOptions options;
  options.track_rate_limit = 5;
  options.track_rate_window = seconds(3);
  options.api_keys[kKey] = {kBrazeUsersTrack};
  options.api_keys["second-key"] = {kBrazeUsersTrack};  // its own rate windows
  StartFake(options);
  auto session = AttributesSession({{"track_requests_per_3s", 5}});
  ASSERT_NE(session, nullptr);
  for (int i = 0; i < 20; ++i) {
    std::vector<OutgoingRecord> batch = {User("u" + std::to_string(i), "")};
    auto result = session->SendBatch(batch);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_TRUE((*result)[0].ok()) << (*result)[0];
  }
  // 5 requests per 3 s: requests 6, 11 and 16 each waited for a new window
  // (3 s plus the limiter's 2% safety margin, see delivery/rate_limiter.h).
  EXPECT_EQ(fake_->rate_limited_count(), 0);
  EXPECT_EQ(fake_->request_count(), 20);
  EXPECT_EQ(clock_.total_slept(), milliseconds(3 * 3060));
  EXPECT_EQ(fake_->Users().size(), 20u);

  // The user's max_requests_per_second caps below the vendor limit.
  auto capped = AttributesSession({{"api_key", "second-key"}, {"max_requests_per_second", 2}});
  ASSERT_NE(capped, nullptr);
  const auto before = clock_.total_slept();
  for (int i = 0; i < 6; ++i) {
    std::vector<OutgoingRecord> batch = {User("v" + std::to_string(i), "")};
    ASSERT_TRUE(capped->SendBatch(batch).ok());
  }
  EXPECT_EQ(clock_.total_slept() - before, milliseconds(2 * 1020));
  EXPECT_EQ(fake_->rate_limited_count(), 0);
}

TEST_F(BrazeDestinationTest, FakeEnforcesProtocolDirectly) {
  StartFake();
  auto post = [&](const std::string& path, const std::string& body,
                  const std::string& auth = "Bearer " + kKey,
                  const std::string& type = "application/json") {
    HttpRequest req;
    req.url = fake_->BaseUrl() + path;
    req.body = body;
    if (!auth.empty()) req.headers.emplace_back("Authorization", auth);
    req.headers.emplace_back("Content-Type", type);
    absl::StatusOr<HttpResponse> resp = http_->Send(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : HttpResponse{};
  };
  EXPECT_EQ(post("/users/track", R"({"attributes":[{"external_id":"a"}]})", "").status, 401);
  EXPECT_EQ(post("/users/track", R"({"attributes":[{"external_id":"a"}]})", kKey).status, 401);
  EXPECT_EQ(post("/users/export", "{}").status, 404);
  EXPECT_EQ(post("/users/track", R"({"attributes":[{"external_id":"a"}]})", "Bearer " + kKey,
                 "text/plain")
                .status,
            400);
  HttpResponse empty = post("/users/track", R"({"attributes":[],"events":[]})");
  EXPECT_EQ(empty.status, 400);
  EXPECT_THAT(empty.body, HasSubstr("Valid data must be provided"));
  ASSERT_TRUE(empty.Header("x-ratelimit-limit").has_value());
  EXPECT_EQ(*empty.Header("x-ratelimit-limit"), "3000");
  EXPECT_EQ(*empty.Header("x-ratelimit-reset"), "1700000001");

  json many = json::array();
  for (int i = 0; i < 76; ++i) many.push_back({{"external_id", std::to_string(i)}});
  HttpResponse over = post("/users/track", json{{"attributes", many}}.dump());
  EXPECT_EQ(over.status, 400);
  EXPECT_THAT(over.body, HasSubstr("Max Input Length Exceeded"));

  HttpResponse mixed = post("/users/track", R"({"attributes":[{"external_id":"a","braze_id":"b"},
      {"external_id":"c","dob":"1990-13-01"},{"external_id":"d","gender":"X"}],
      "purchases":[{"external_id":"a","product_id":"p","currency":"USD","price":1,
                    "time":"2026-01-01T00:00:00Z"}]})");
  EXPECT_EQ(mixed.status, 201);
  json reply = json::parse(mixed.body);
  EXPECT_EQ(reply["attributes_processed"], 0);
  EXPECT_EQ(reply["purchases_processed"], 1);
  ASSERT_EQ(reply["errors"].size(), 3u);
  EXPECT_THAT(reply["errors"][0]["type"].get<std::string>(), HasSubstr("only one of"));
  EXPECT_THAT(reply["errors"][1]["type"].get<std::string>(), HasSubstr("dob"));
  EXPECT_THAT(reply["errors"][2]["type"].get<std::string>(), HasSubstr("gender"));
  EXPECT_EQ(fake_->Purchases().size(), 1u);

  EXPECT_EQ(post("/users/delete", R"({"external_ids":["a"],"braze_ids":["b"]})").status, 400);
  json ids = json::array();
  for (int i = 0; i < 51; ++i) ids.push_back(std::to_string(i));
  EXPECT_EQ(post("/users/delete", json{{"external_ids", ids}}.dump()).status, 400);
  HttpResponse deleted = post("/users/delete", R"({"external_ids":["a","zz"]})");
  EXPECT_EQ(deleted.status, 201);
  EXPECT_EQ(json::parse(deleted.body), json::parse(R"({"deleted":1,"message":"success"})"));
}

}  // namespace
}  // namespace backflow
