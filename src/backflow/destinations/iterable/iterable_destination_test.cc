#include "backflow/destinations/iterable/iterable_destination.h"

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/destination.h"
#include "backflow/destinations/iterable/fake_iterable_server.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::Ge;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Le;
using ::testing::SizeIs;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Code = absl::StatusCode;

const std::string kKey = "itbl-server-key-0001";

OutgoingRecord Rec(ChangeKind change, const std::string& key, Row values) {
  OutgoingRecord r;
  r.change = change;
  r.key = key;
  r.dedup_id = "d" + key + std::string(ChangeKindName(change));
  r.values = std::move(values);
  return r;
}

Value S(const std::string& s) { return s.empty() ? Value::Null() : Value::String(s); }
Value Ts(const std::string& iso) { return Value::Text(ValueType::kTimestamp, iso); }

// A user row for the layout {email, userId, dataFields.plan, dataFields.ltv}.
OutgoingRecord User(const std::string& email, const std::string& user_id,
                    Value plan = Value::String("pro"), Value ltv = Value::Int64(10),
                    ChangeKind change = ChangeKind::kAdded) {
  return Rec(change, user_id.empty() ? email : user_id,
             {S(email), S(user_id), std::move(plan), std::move(ltv)});
}

OutgoingRecord Gone(const std::string& id) { return Rec(ChangeKind::kDeleted, id, {S(id)}); }

// An event row for the layout {email, userId, eventName, createdAt,
// dataFields.total, dataFields.orderedAt}.
OutgoingRecord Event(const std::string& key, const std::string& email, const std::string& user_id,
                     const std::string& name = "Order Completed", Value total = Value::Double(9.5),
                     Value created = Ts("2026-01-02T03:04:05Z")) {
  return Rec(ChangeKind::kAdded, key,
             {S(email), S(user_id), S(name), std::move(created), std::move(total),
              Ts("2026-01-02T04:05:06.789+01:00")});
}

std::vector<Code> Codes(const std::vector<absl::Status>& statuses) {
  std::vector<Code> out;
  for (const absl::Status& s : statuses) out.push_back(s.code());
  return out;
}

class IterableDestinationTest : public ::testing::Test {
 protected:
  void SetUp() override { StartFake(); }

  void StartFake(FakeIterableOptions options = {}) {
    options.clock = &clock_;
    if (options.api_keys.empty()) options.api_keys[kKey] = IterableKeyType::kServerSide;
    dest_.reset();
    fake_ = std::make_unique<FakeIterableServer>(options);
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

  absl::StatusOr<std::unique_ptr<ActionSession>> TrySession(const std::string& action,
                                                            FieldLayout layout,
                                                            const json& extra = json::object()) {
    absl::StatusOr<std::unique_ptr<Destination>> dest = Create(Settings(extra));
    if (!dest.ok()) return dest.status();
    dest_ = *std::move(dest);
    SessionOptions opts;
    opts.mapping = "users_to_iterable";
    opts.run_id = 7;
    opts.action = def_.FindAction(action);
    opts.layout = std::move(layout);
    return dest_->StartSession(opts);
  }

  std::unique_ptr<ActionSession> Session(const std::string& action, FieldLayout layout,
                                         const json& extra = json::object()) {
    auto s = TrySession(action, std::move(layout), extra);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  // Deletes by userId (the primary key is mapped to it).
  std::unique_ptr<ActionSession> UsersSession(const json& extra = json::object()) {
    return Session("update_users",
                   {{"email", "userId", "dataFields.plan", "dataFields.ltv"}, {"userId"}}, extra);
  }

  std::unique_ptr<ActionSession> EventsSession(const json& extra = json::object()) {
    return Session(
        "track_events",
        {{"email", "userId", "eventName", "createdAt", "dataFields.total", "dataFields.orderedAt"},
         {}},
        extra);
  }

  std::vector<json> Bodies(const std::string& path) {
    std::vector<json> out;
    for (const FakeIterableRequest& r : fake_->Requests()) {
      if (r.target == path && !r.body.empty()) out.push_back(json::parse(r.body));
    }
    return out;
  }

  DestinationDefinition def_ = IterableDestinationDefinition();
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeIterableServer> fake_;
  std::unique_ptr<Destination> dest_;
};

// ---------------------------------------------------------------- definition

TEST_F(IterableDestinationTest, DefinitionDeclaresSettingsAndActions) {
  EXPECT_EQ(def_.type, "iterable");
  const SettingSpec* key = FindSetting(def_.settings, "api_key");
  ASSERT_NE(key, nullptr);
  EXPECT_TRUE(key->required);
  EXPECT_TRUE(key->secret);
  const SettingSpec* base = FindSetting(def_.settings, "base_url");
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(base->default_value, "https://api.iterable.com");
  EXPECT_THAT(base->description, HasSubstr("https://api.eu.iterable.com"));
  EXPECT_EQ(FindSetting(def_.settings, "prefer_user_id")->default_value, true);
  EXPECT_EQ(FindSetting(def_.settings, "merge_nested_objects")->default_value, false);
  EXPECT_TRUE(FindSetting(def_.settings, "create_new_fields")->default_value.is_null());
  EXPECT_EQ(FindSetting(def_.settings, "bulk_update_requests_per_second")->default_value, 5);
  EXPECT_EQ(FindSetting(def_.settings, "track_bulk_requests_per_second")->default_value, 10);
  EXPECT_EQ(FindSetting(def_.settings, "delete_requests_per_second")->default_value, 100);
  for (const char* name : {"max_requests_per_second", "timeout_ms", "max_retries",
                           "max_retry_wait_s", "concurrency"}) {
    EXPECT_NE(FindSetting(def_.settings, name), nullptr) << name;
  }

  const ActionSpec* users = def_.FindAction("update_users");
  ASSERT_NE(users, nullptr);
  EXPECT_EQ(users->max_batch_records, 1000);
  EXPECT_EQ(users->default_batch_records, 100);
  EXPECT_TRUE(users->Supports(RecordSelection::kAll));
  EXPECT_TRUE(users->Supports(RecordSelection::kDeleted));
  EXPECT_TRUE(users->AcceptsField("dataFields.plan"));
  EXPECT_TRUE(users->AcceptsField("dataFields.address.city"));
  EXPECT_FALSE(users->AcceptsField("plan"));
  EXPECT_EQ(users->FindField("email")->default_column, "email");
  EXPECT_EQ(users->FindField("userId")->default_column, "user_id");

  const ActionSpec* events = def_.FindAction("track_events");
  ASSERT_NE(events, nullptr);
  EXPECT_EQ(events->selections, std::vector<RecordSelection>{RecordSelection::kAdded});
  EXPECT_TRUE(events->FindField("eventName")->required);
  EXPECT_EQ(events->FindField("createdAt")->type, FieldType::kTimestamp);
  EXPECT_NE(events->FindField("id"), nullptr);
  EXPECT_TRUE(events->AcceptsField("dataFields.total"));
  EXPECT_EQ(events->max_batch_records, 1000);
}

TEST_F(IterableDestinationTest, RejectsBadSettings) {
  EXPECT_EQ(Create({{"base_url", fake_->BaseUrl()}}).status().code(), Code::kInvalidArgument);
  auto spaced = Create(Settings({{"api_key", "Api-Key: abc"}}));
  EXPECT_EQ(spaced.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(spaced.status().message(), HasSubstr("whitespace"));
  auto rate = def_.create(Settings({{"bulk_update_requests_per_second", 0}}),
                          ConnectorEnv{http_.get(), &clock_});
  EXPECT_EQ(rate.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(rate.status().message(), HasSubstr("bulk_update_requests_per_second"));
  auto url = Create(Settings({{"base_url", "api.iterable.com"}}));
  EXPECT_EQ(url.status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(Create(Settings()).ok());
}

TEST_F(IterableDestinationTest, SessionNeedsEmailOrUserId) {
  auto s = TrySession("update_users", {{"dataFields.plan"}, {}});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("email or userId"));
  EXPECT_TRUE(TrySession("update_users", {{"userId", "dataFields.plan"}, {"userId"}}).ok());
  EXPECT_TRUE(TrySession("track_events", {{"email", "eventName"}, {}}).ok());
}

// ---------------------------------------------------------------- update_users

TEST_F(IterableDestinationTest, UpdateUsersSendsBulkUpdateAndMergesDataFields) {
  auto session = Session("update_users", {{"email", "userId", "dataFields.plan",
                                           "dataFields.address.city", "dataFields.signedUpAt"},
                                          {"userId"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Rec(ChangeKind::kAdded, "u1",
          {S("ann@x.io"), S("u1"), S("pro"), S("Oslo"), Ts("2026-01-02T03:04:05.250Z")}),
      Rec(ChangeKind::kAdded, "u2",
          {S("bob@x.io"), S("u2"), S("free"), Value::Null(), Ts("2026-01-02T01:00:00-02:30")})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));

  std::vector<FakeIterableRequest> requests = fake_->Requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].method, "POST");
  EXPECT_EQ(requests[0].target, "/api/users/bulkUpdate");
  EXPECT_EQ(requests[0].api_key, kKey);
  EXPECT_EQ(requests[0].content_type, "application/json");
  json body = json::parse(requests[0].body);
  EXPECT_FALSE(body.contains("createNewFields"));
  ASSERT_THAT(body["users"], SizeIs(2));
  EXPECT_EQ(body["users"][0], json::parse(R"({"email":"ann@x.io","userId":"u1",
      "dataFields":{"plan":"pro","address":{"city":"Oslo"},
                    "signedUpAt":"2026-01-02 03:04:05 +00:00"},
      "preferUserId":true,"mergeNestedObjects":false})"));
  EXPECT_EQ(body["users"][1]["dataFields"]["signedUpAt"], "2026-01-02 03:30:00 +00:00");
  EXPECT_TRUE(body["users"][1]["dataFields"]["address"]["city"].is_null());

  std::map<std::string, json> users = fake_->UsersByUserId();
  ASSERT_EQ(users.size(), 2u);
  EXPECT_EQ(users["u1"]["plan"], "pro");
  EXPECT_EQ(fake_->UserFieldTypes()["signedUpAt"], "date");
  EXPECT_EQ(fake_->FindUser("", "u2")->email, "bob@x.io");

  // A later update merges: fields that are not sent keep their value.
  auto plan_only = Session("update_users", {{"userId", "dataFields.plan"}, {"userId"}});
  std::vector<OutgoingRecord> update = {
      Rec(ChangeKind::kUpdated, "u1", {S("u1"), S("enterprise")})};
  EXPECT_THAT(Codes(*plan_only->SendBatch(update)), ElementsAre(Code::kOk));
  users = fake_->UsersByUserId();
  EXPECT_EQ(users["u1"]["plan"], "enterprise");
  EXPECT_EQ(users["u1"]["address"]["city"], "Oslo");
  EXPECT_EQ(fake_->AllUsers().size(), 2u);
}

TEST_F(IterableDestinationTest, SettingsSteerTheBulkUpdateFlags) {
  auto session = UsersSession(
      {{"prefer_user_id", false}, {"merge_nested_objects", true}, {"create_new_fields", false}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("ann@x.io", "u1")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  json body = Bodies("/api/users/bulkUpdate").at(0);
  EXPECT_EQ(body["createNewFields"], false);
  EXPECT_EQ(body["users"][0]["preferUserId"], false);
  EXPECT_EQ(body["users"][0]["mergeNestedObjects"], true);
  // The project does not know plan and ltv, and new fields are refused:
  // the user exists without them, and the record fails naming the field.
  EXPECT_EQ((*result)[0].code(), Code::kInvalidArgument);
  EXPECT_THAT((*result)[0].message(), HasSubstr("filteredOutFields"));
  EXPECT_EQ(fake_->UsersByUserId()["u1"], json::object());
}

TEST_F(IterableDestinationTest, UserIdOnlyUsersInEmailBasedProjectsNeedPreferUserId) {
  FakeIterableOptions options;
  options.project_type = IterableProjectType::kEmailBased;
  StartFake(options);
  auto session = UsersSession();
  std::vector<OutgoingRecord> batch = {User("", "u1")};
  EXPECT_THAT(Codes(*session->SendBatch(batch)), ElementsAre(Code::kOk));
  EXPECT_TRUE(fake_->FindUser("", "u1").has_value());

  session = UsersSession({{"prefer_user_id", false}});
  batch = {User("", "u2"), User("cy@x.io", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("notFoundUserIds"));
  EXPECT_THAT((*result)[0].message(), HasSubstr("prefer_user_id"));
  EXPECT_FALSE(fake_->FindUser("", "u2").has_value());
}

TEST_F(IterableDestinationTest, KeyedFailuresAreMatchedByIdentifierNotPosition) {
  fake_->PutUser("taken@x.io", "owner", json::object());
  fake_->PutUser("", "other", json::object());
  fake_->ForgetEmail("gdpr@x.io");
  auto session = UsersSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      User("ok1@x.io", "u1"),      User("not-an-email", "u2"), User("gdpr@x.io", "u3"),
      User("taken@x.io", "other"), User("ok2@x.io", "u5"),
  };
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  // Forgotten users can never be written: acknowledged, not failed.
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kInvalidArgument, Code::kOk,
                                          Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT((*result)[1].message(), HasSubstr("invalidEmails"));
  EXPECT_THAT((*result)[1].message(), HasSubstr("not-an-email"));
  EXPECT_THAT((*result)[3].message(), HasSubstr("different Iterable users"));
  EXPECT_EQ(fake_->request_count(), 1);
  EXPECT_TRUE(fake_->FindUser("ok2@x.io", "").has_value());
  EXPECT_FALSE(fake_->FindUser("gdpr@x.io", "").has_value());

  // Iterable's lists are in its own order and case: matching ignores both.
  fake_->EnqueueReply(
      FakeIterableReply{.status = 200, .body = R"({"successCount":1,"failCount":2,"failedUpdates":{
          "notFoundUserIds":["u9"],"invalidDataEmails":["ANN@X.IO"]}})"});
  batch = {User("ann@x.io", "u7"), User("zed@x.io", "u8"), User("", "u9")};
  result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(Code::kInvalidArgument, Code::kOk, Code::kInvalidArgument));
  EXPECT_THAT((*result)[0].message(), HasSubstr("invalidDataEmails"));
  EXPECT_THAT((*result)[2].message(), HasSubstr("notFoundUserIds"));
}

TEST_F(IterableDestinationTest, UnattributedFailuresAreResolvedByResending) {
  auto session = UsersSession();
  // failCount says one failed, but no list names it: each user is re-sent alone.
  fake_->EnqueueReply(FakeIterableReply{
      .status = 200, .body = R"({"successCount":1,"failCount":1,"failedUpdates":{}})"});
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1"), User("b@x.io", "u2")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));
  EXPECT_EQ(fake_->count_for_path("/api/users/bulkUpdate"), 3);
  EXPECT_THAT(Bodies("/api/users/bulkUpdate")[1]["users"], SizeIs(1));
  EXPECT_EQ(fake_->UsersByUserId().size(), 2u);

  // Alone, an unnamed failure is the record's own.
  fake_->EnqueueReply(FakeIterableReply{
      .status = 200, .body = R"({"successCount":0,"failCount":1,"failedUpdates":{}})"});
  batch = {User("c@x.io", "u3")};
  result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), Code::kInvalidArgument);
  EXPECT_THAT((*result)[0].message(), HasSubstr("without naming it"));
}

TEST_F(IterableDestinationTest, DuplicateUsersInABatchGoInSuccessiveRequests) {
  auto session = UsersSession();
  std::vector<OutgoingRecord> batch = {User("ann@x.io", "u1", S("free")),
                                       User("bob@x.io", "u2", S("free")),
                                       User("ANN@x.io", "u1", S("pro"))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk));
  std::vector<json> bodies = Bodies("/api/users/bulkUpdate");
  ASSERT_EQ(bodies.size(), 2u);
  EXPECT_THAT(bodies[0]["users"], SizeIs(2));
  EXPECT_THAT(bodies[1]["users"], SizeIs(1));
  EXPECT_EQ(fake_->UsersByUserId()["u1"]["plan"], "pro");
}

TEST_F(IterableDestinationTest, BadPayloadsFailLocallyAndAreNotSent) {
  auto session = Session("update_users", {{"email", "userId", "dataFields"}, {"userId"}});
  std::vector<OutgoingRecord> batch = {
      Rec(ChangeKind::kAdded, "1", {Value::Null(), S(""), Value::Null()}),
      Rec(ChangeKind::kAdded, "2", {S("a@x.io"), S("u2"), Value::Text(ValueType::kJson, "[1,2]")}),
      Rec(ChangeKind::kAdded, "3", {Value::Bool(true), S("u3"), Value::Null()}),
      Rec(ChangeKind::kAdded, "4",
          {S("d@x.io"), Value::Int64(4), Value::Text(ValueType::kJson, R"({"plan":"pro"})")})};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kInvalidArgument, Code::kInvalidArgument,
                                          Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("no user identifier"));
  EXPECT_THAT((*result)[1].message(), HasSubstr("dataFields must be a JSON object"));
  EXPECT_THAT((*result)[2].message(), HasSubstr("email must be text"));
  std::vector<json> bodies = Bodies("/api/users/bulkUpdate");
  ASSERT_EQ(bodies.size(), 1u);
  ASSERT_THAT(bodies[0]["users"], SizeIs(1));
  EXPECT_EQ(bodies[0]["users"][0]["userId"], "4");  // numeric ids are sent as text
  EXPECT_EQ(fake_->UsersByUserId()["4"]["plan"], "pro");
}

TEST_F(IterableDestinationTest, WholeBatch400IsBisectedToTheBadRecord) {
  fake_->RejectRequestsWith("poison@x.io");
  auto session = UsersSession();
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1"), User("b@x.io", "u2"),
                                       User("poison@x.io", "u3"), User("d@x.io", "u4")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT((*result)[2].message(), HasSubstr("HTTP 400"));
  EXPECT_THAT((*result)[2].message(), HasSubstr("BadParams"));
  // 4 -> (2 ok) + (2 -> 1 refused + 1 ok).
  EXPECT_EQ(fake_->request_count(), 5);
  EXPECT_EQ(fake_->UsersByUserId().size(), 3u);
}

TEST_F(IterableDestinationTest, FieldTypeMismatchRejectingTheRequestIsBisected) {
  FakeIterableOptions options;
  options.reject_type_mismatch = true;
  StartFake(options);
  auto session = UsersSession();
  std::vector<OutgoingRecord> first = {User("a@x.io", "u1", S("pro"), Value::Int64(5))};
  ASSERT_THAT(Codes(*session->SendBatch(first)), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->UserFieldTypes()["ltv"], "long");
  std::vector<OutgoingRecord> batch = {User("b@x.io", "u2", S("pro"), Value::Double(2.5)),
                                       User("c@x.io", "u3", S("pro"), S("lots"))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kInvalidArgument));
  EXPECT_THAT((*result)[1].message(), HasSubstr("RequestFieldsTypesMismatched"));
}

TEST_F(IterableDestinationTest, FilteredOutFieldFailsOnlyTheRecordsCarryingIt) {
  auto session = UsersSession();
  std::vector<OutgoingRecord> first = {User("a@x.io", "u1", S("pro"), Value::Int64(5))};
  ASSERT_THAT(Codes(*session->SendBatch(first)), ElementsAre(Code::kOk));
  std::vector<OutgoingRecord> batch = {User("b@x.io", "u2", S("pro"), S("lots")),
                                       User("c@x.io", "u3", S("free"), Value::Int64(7))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("dataFields.ltv"));
  // filteredOutFields is for the whole request: both carried ltv, so each
  // was sent again alone to find whose value was dropped.
  EXPECT_EQ(fake_->count_for_path("/api/users/bulkUpdate"), 1 + 1 + 2);
  // Iterable kept the rest of the user.
  EXPECT_EQ(fake_->UsersByUserId()["u2"], json({{"plan", "pro"}}));
  EXPECT_EQ(fake_->UsersByUserId()["u3"], json({{"plan", "free"}, {"ltv", 7}}));

  // Eight records carrying the field, one bad: halves find it in 6 more requests.
  fake_->ClearHistory();
  std::vector<OutgoingRecord> eight;
  for (int i = 0; i < 8; ++i) {
    eight.push_back(User(fmt::format("e{}@x.io", i), fmt::format("e{}", i), S("pro"),
                         i == 5 ? S("many") : Value::Int64(i)));
  }
  result = session->SendBatch(eight);
  ASSERT_TRUE(result.ok());
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ((*result)[i].code(), i == 5 ? Code::kInvalidArgument : Code::kOk) << i;
  }
  EXPECT_EQ(fake_->count_for_path("/api/users/bulkUpdate"), 1 + 2 + 2 + 2);
}

// ---------------------------------------------------------------- replies

TEST_F(IterableDestinationTest, ErrorCodeInside200IsNotSuccess) {
  auto session = UsersSession();
  // A code other than Success refuses the request: bisected like a 400.
  fake_->EnqueueReplies(
      3, FakeIterableReply::CodeIn200("BadParams", "dataFields invalid", "/api/users/bulkUpdate"));
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1"), User("b@x.io", "u2")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kInvalidArgument, Code::kInvalidArgument));
  EXPECT_THAT((*result)[0].message(), HasSubstr("dataFields invalid (BadParams)"));
  EXPECT_EQ(fake_->request_count(), 3);
  EXPECT_TRUE(fake_->AllUsers().empty());

  // RateLimitExceeded inside a 200 is retried after a backoff.
  fake_->EnqueueReply(FakeIterableReply::CodeIn200("RateLimitExceeded", "slow down"));
  auto before = clock_.total_slept();
  batch = {User("c@x.io", "u3")};
  EXPECT_THAT(Codes(*session->SendBatch(batch)), ElementsAre(Code::kOk));
  EXPECT_THAT(clock_.total_slept() - before, Le(seconds(1)));
  EXPECT_TRUE(fake_->FindUser("c@x.io", "").has_value());

  // GenericError inside a 200 is retried like a 5xx.
  fake_->EnqueueReply(FakeIterableReply::CodeIn200("GenericError", "try again"));
  batch = {User("d@x.io", "u4")};
  EXPECT_THAT(Codes(*session->SendBatch(batch)), ElementsAre(Code::kOk));

  // BadApiKey inside a 200 stops the run.
  fake_->EnqueueReply(FakeIterableReply::CodeIn200("BadApiKey", "Invalid API key"));
  batch = {User("e@x.io", "u5")};
  auto stopped = session->SendBatch(batch);
  EXPECT_EQ(stopped.status().code(), Code::kUnauthenticated);
}

TEST_F(IterableDestinationTest, RateLimit429BacksOffWithoutHeadersThenSucceeds) {
  auto session = UsersSession();
  fake_->EnqueueReplies(2, FakeIterableReply::Status(429));
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->count_with_status(429), 2);
  EXPECT_EQ(fake_->request_count(), 3);
  // Full-jitter exponential backoff: at most 1 s + 2 s.
  EXPECT_THAT(clock_.total_slept(), Le(seconds(3)));
  EXPECT_TRUE(fake_->FindUser("a@x.io", "").has_value());
}

TEST_F(IterableDestinationTest, RateLimitExhaustedIsResourceExhausted) {
  auto session = UsersSession({{"max_retries", 2}});
  fake_->EnqueueReplies(5, FakeIterableReply::Status(429));
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1"), User("b@x.io", "u2")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kResourceExhausted, Code::kResourceExhausted));
  EXPECT_THAT((*result)[0].message(), HasSubstr("after 3 attempts"));
  EXPECT_THAT((*result)[0].message(), HasSubstr("bulk_update_requests_per_second"));
  EXPECT_TRUE(IsRetryable((*result)[0]));
  EXPECT_EQ(fake_->request_count(), 3);
}

TEST_F(IterableDestinationTest, VendorLimiterKeepsWithinTheFakesWindows) {
  auto session = UsersSession();
  for (int i = 0; i < 12; ++i) {
    std::vector<OutgoingRecord> one = {User(fmt::format("u{}@x.io", i), fmt::format("u{}", i))};
    EXPECT_THAT(Codes(*session->SendBatch(one)), ElementsAre(Code::kOk));
  }
  // 5 per second: 12 requests span at least two more seconds, and none is refused.
  EXPECT_EQ(fake_->rate_limited_count(), 0);
  EXPECT_THAT(clock_.total_slept(), Ge(seconds(2)));
  EXPECT_EQ(fake_->UsersByUserId().size(), 12u);

  // A faster client setting than the project's limit meets 429s and backs off.
  FakeIterableOptions tight;
  tight.bulk_update_per_second = 1;
  StartFake(tight);
  session = UsersSession({{"bulk_update_requests_per_second", 2}, {"max_retries", 20}});
  for (int i = 0; i < 4; ++i) {
    std::vector<OutgoingRecord> one = {User(fmt::format("v{}@x.io", i), fmt::format("v{}", i))};
    EXPECT_THAT(Codes(*session->SendBatch(one)), ElementsAre(Code::kOk));
  }
  EXPECT_GT(fake_->rate_limited_count(), 0);
  EXPECT_EQ(fake_->UsersByUserId().size(), 4u);
}

TEST_F(IterableDestinationTest, UserRequestCapAppliesOnTopOfTheVendorLimit) {
  auto session = UsersSession({{"max_requests_per_second", 1}});
  for (int i = 0; i < 3; ++i) {
    std::vector<OutgoingRecord> one = {User(fmt::format("u{}@x.io", i), fmt::format("u{}", i))};
    EXPECT_THAT(Codes(*session->SendBatch(one)), ElementsAre(Code::kOk));
  }
  EXPECT_THAT(clock_.total_slept(), Ge(seconds(2)));
}

TEST_F(IterableDestinationTest, ServerErrorsAreRetriedThenExhausted) {
  auto session = UsersSession({{"max_retries", 3}});
  fake_->EnqueueReplies(2, FakeIterableReply::Status(503));
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1")};
  EXPECT_THAT(Codes(*session->SendBatch(batch)), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->request_count(), 3);

  fake_->EnqueueReplies(4, FakeIterableReply::Status(500));
  batch = {User("b@x.io", "u2")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), Code::kUnavailable);
  EXPECT_THAT((*result)[0].message(), HasSubstr("HTTP 500"));
  EXPECT_THAT((*result)[0].message(), HasSubstr("after 4 attempts"));
  EXPECT_FALSE(fake_->FindUser("b@x.io", "").has_value());
}

TEST_F(IterableDestinationTest, UnreadableReplyLeavesTheOutcomeUnknown) {
  auto session = UsersSession();
  fake_->EnqueueReply(FakeIterableReply{.status = 200, .body = "<html>ok</html>", .apply = true});
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), Code::kUnavailable);
  EXPECT_THAT((*result)[0].message(), HasSubstr("outcome is unknown"));
}

TEST_F(IterableDestinationTest, UnauthorizedStopsTheRun) {
  auto session = UsersSession({{"api_key", "itbl-revoked"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1"), Gone("u9")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kUnauthenticated);
  EXPECT_THAT(result.status().message(), HasSubstr("api_key"));
  EXPECT_THAT(result.status().message(), HasSubstr("https://api.eu.iterable.com"));
  EXPECT_THAT(result.status().message(), HasSubstr("BadApiKey"));
  EXPECT_EQ(fake_->unauthorized_count(), 1);
  // Nothing more is sent by this session.
  EXPECT_EQ(session->SendBatch(batch).status().code(), Code::kUnauthenticated);
  EXPECT_EQ(fake_->request_count(), 1);
}

TEST_F(IterableDestinationTest, ClientSideKeyIsPermissionDenied) {
  fake_->SetApiKey("itbl-js-key", IterableKeyType::kJavaScript);
  auto session = UsersSession({{"api_key", "itbl-js-key"}});
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(result.status().message(), HasSubstr("Server-side"));
  EXPECT_THAT(result.status().message(), HasSubstr("JavaScript API keys cannot call"));

  fake_->SetApiKey("itbl-read-key", IterableKeyType::kReadOnly);
  session = UsersSession({{"api_key", "itbl-read-key"}});
  batch = {Gone("u1")};
  EXPECT_EQ(session->SendBatch(batch).status().code(), Code::kPermissionDenied);
}

TEST_F(IterableDestinationTest, WrongBaseUrlStopsTheRun) {
  auto session = UsersSession({{"base_url", fake_->BaseUrl() + "/v2"}});
  std::vector<OutgoingRecord> batch = {User("a@x.io", "u1")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("base_url"));
}

// ---------------------------------------------------------------- deletes

TEST_F(IterableDestinationTest, DeletesByUserIdOrEmail) {
  fake_->PutUser("a@x.io", "u1");
  fake_->PutUser("b+tag@x.io", "u2");
  fake_->PutUser("c@x.io", "u3");
  auto session = UsersSession();
  std::vector<OutgoingRecord> batch = {Gone("u1"), Gone("missing"), User("c@x.io", "u3", S("vip"))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  // A user Iterable does not have counts as deleted.
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk));
  EXPECT_EQ(fake_->count_for_path("/api/users/byUserId/u1"), 1);
  EXPECT_EQ(fake_->count_for_path("/api/users/byUserId/missing"), 1);
  EXPECT_EQ(fake_->count_with_status(404), 1);
  EXPECT_THAT(fake_->Deleted(), ElementsAre("userId:u1"));

  // Primary key mapped to email: DELETE /api/users/{email}, percent-encoded.
  auto by_email = Session("update_users", {{"email", "dataFields.plan"}, {"email"}});
  batch = {Gone("b+tag@x.io")};
  EXPECT_THAT(Codes(*by_email->SendBatch(batch)), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->count_for_path("/api/users/b%2Btag@x.io"), 1);
  EXPECT_THAT(fake_->Deleted(), ElementsAre("userId:u1", "email:b+tag@x.io"));
  EXPECT_EQ(fake_->AllUsers().size(), 1u);
  EXPECT_EQ(fake_->UsersByUserId()["u3"]["plan"], "vip");
}

TEST_F(IterableDestinationTest, DeleteOfAUserWrittenInTheSameBatchIsSkipped) {
  fake_->PutUser("a@x.io", "u1");
  auto session = UsersSession();
  std::vector<OutgoingRecord> batch = {Gone("u1"), User("a@x.io", "u1", S("back"))};
  EXPECT_THAT(Codes(*session->SendBatch(batch)), ElementsAre(Code::kOk, Code::kOk));
  EXPECT_THAT(fake_->Deleted(), IsEmpty());
  EXPECT_EQ(fake_->UsersByUserId()["u1"]["plan"], "back");
}

TEST_F(IterableDestinationTest, DeletesNeedTheIdentifierMapped) {
  auto session = Session("update_users", {{"email", "userId"}, {}});
  std::vector<OutgoingRecord> batch = {Gone("u1")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("added_or_updated"));
  EXPECT_EQ(fake_->request_count(), 0);

  // A delete whose identifier is null fails alone.
  session = UsersSession();
  batch = {Rec(ChangeKind::kDeleted, "x", {Value::Null()})};
  EXPECT_THAT(Codes(*session->SendBatch(batch)), ElementsAre(Code::kInvalidArgument));
}

TEST_F(IterableDestinationTest, DeleteFailuresAreClassified) {
  fake_->PutUser("a@x.io", "u1");
  auto session = UsersSession({{"max_retries", 1}});
  fake_->EnqueueReplies(2, FakeIterableReply::Status(503, "", "/api/users/byUserId/u1"));
  std::vector<OutgoingRecord> batch = {Gone("u1")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), Code::kUnavailable);
  fake_->EnqueueReply(FakeIterableReply::Status(400, "BadParams", "/api/users/byUserId/u1"));
  result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), Code::kInvalidArgument);
  EXPECT_THAT((*result)[0].message(), HasSubstr("userId \"u1\""));
  EXPECT_THAT(Codes(*session->SendBatch(batch)), ElementsAre(Code::kOk));
  EXPECT_THAT(fake_->Deleted(), ElementsAre("userId:u1"));
}

// ---------------------------------------------------------------- track_events

TEST_F(IterableDestinationTest, TrackEventsSendsEventsWithDeterministicIds) {
  auto session = EventsSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("o1", "ann@x.io", ""), Event("o2", "", "u2")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));
  std::vector<json> bodies = Bodies("/api/events/trackBulk");
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_EQ(bodies[0]["events"][0], json::parse(R"({"email":"ann@x.io",
      "eventName":"Order Completed","id":"do1added","createdAt":1767323045,
      "dataFields":{"total":9.5,"orderedAt":"2026-01-02 03:05:06 +00:00"}})"));
  EXPECT_EQ(bodies[0]["events"][1]["userId"], "u2");
  std::vector<FakeIterableEvent> events = fake_->Events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].id, "do1added");
  EXPECT_EQ(events[0].created_at, 1767323045);
  EXPECT_EQ(events[1].user_id, "u2");

  // A mapped id wins, and attribution fields are sent as integers.
  auto mapped =
      Session("track_events", {{"userId", "eventName", "id", "campaignId", "templateId"}, {}});
  batch = {Rec(ChangeKind::kAdded, "o3",
               {S("u3"), S("Signed Up"), S("order-3"), Value::Int64(11), S("12")})};
  EXPECT_THAT(Codes(*mapped->SendBatch(batch)), ElementsAre(Code::kOk));
  json sent = Bodies("/api/events/trackBulk").back()["events"][0];
  EXPECT_EQ(sent["id"], "order-3");
  EXPECT_EQ(sent["campaignId"], 11);
  EXPECT_EQ(sent["templateId"], 12);
  EXPECT_FALSE(sent.contains("createdAt"));
}

TEST_F(IterableDestinationTest, RetriedEventOverwritesInsteadOfDuplicating) {
  auto session = EventsSession({{"timeout_ms", 300}});
  // The first attempt is stored, but its reply comes too late: the retry
  // carries the same id and overwrites the stored event.
  fake_->EnqueueReply(FakeIterableReply::Slow(milliseconds(1500)));
  std::vector<OutgoingRecord> batch = {Event("o1", "ann@x.io", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->count_for_path("/api/events/trackBulk"), 2);
  EXPECT_EQ(fake_->Events().size(), 1u);
  EXPECT_EQ(fake_->event_overwrite_count(), 1);

  // The next run sends the same record again: still one event.
  auto again = EventsSession();
  EXPECT_THAT(Codes(*again->SendBatch(batch)), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->Events().size(), 1u);
  EXPECT_EQ(fake_->event_overwrite_count(), 2);
}

TEST_F(IterableDestinationTest, AmbiguousEventFailuresAreResolvedByResending) {
  auto session = EventsSession();
  // Two events of one user, one listed: which failed is unknown, so both are
  // re-sent alone (the stored one is overwritten by its id).
  fake_->EnqueueReply(FakeIterableReply{
      .status = 200,
      .body = R"({"successCount":2,"failCount":1,"failedUpdates":{"invalidEmails":["ann@x.io"]}})",
      .apply = true});
  std::vector<OutgoingRecord> batch = {Event("o1", "ann@x.io", ""), Event("o2", "ann@x.io", ""),
                                       Event("o3", "bob@x.io", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk));
  EXPECT_EQ(fake_->count_for_path("/api/events/trackBulk"), 3);
  EXPECT_EQ(fake_->Events().size(), 3u);
  EXPECT_EQ(fake_->event_overwrite_count(), 2);
}

TEST_F(IterableDestinationTest, EventFailuresAreKeyedByIdentifierAndName) {
  FakeIterableOptions options;
  options.project_type = IterableProjectType::kEmailBased;
  options.disallowed_event_names = {"Blocked"};
  StartFake(options);
  fake_->ForgetUserId("gone");
  auto session = EventsSession();
  std::vector<OutgoingRecord> batch = {Event("o1", "bad-email", ""), Event("o2", "", "nobody"),
                                       Event("o3", "ann@x.io", "", "Blocked"),
                                       Event("o4", "", "gone"), Event("o5", "ann@x.io", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kInvalidArgument, Code::kInvalidArgument,
                                          Code::kInvalidArgument, Code::kOk, Code::kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("invalidEmails"));
  EXPECT_THAT((*result)[1].message(), HasSubstr("notFoundUserIds"));
  EXPECT_THAT((*result)[1].message(), HasSubstr("event was not tracked"));
  EXPECT_THAT((*result)[2].message(), HasSubstr("disallowedEventNames"));
  ASSERT_EQ(fake_->Events().size(), 1u);
  EXPECT_EQ(fake_->Events()[0].id, "do5added");
}

TEST_F(IterableDestinationTest, TrackEventsRejectsBadRecordsLocally) {
  auto session = EventsSession();
  std::vector<OutgoingRecord> batch = {
      Event("o1", "a@x.io", "", ""),
      Event("o2", "a@x.io", "", "Paid", Value::Double(1), Value::String("yesterday")),
      Event("o3", "", ""), Rec(ChangeKind::kUpdated, "o4", {}), Event("o5", "a@x.io", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(Code::kInvalidArgument, Code::kInvalidArgument, Code::kInvalidArgument,
                          Code::kFailedPrecondition, Code::kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("eventName"));
  EXPECT_THAT((*result)[1].message(), HasSubstr("createdAt"));
  EXPECT_THAT((*result)[3].message(), HasSubstr("records: added"));
  ASSERT_EQ(Bodies("/api/events/trackBulk").size(), 1u);
  EXPECT_THAT(Bodies("/api/events/trackBulk")[0]["events"], SizeIs(1));
}

TEST_F(IterableDestinationTest, TrackBulkHasItsOwnRateLimit) {
  auto session = EventsSession();
  for (int i = 0; i < 21; ++i) {
    std::vector<OutgoingRecord> one = {Event(fmt::format("o{}", i), "a@x.io", "")};
    EXPECT_THAT(Codes(*session->SendBatch(one)), ElementsAre(Code::kOk));
  }
  EXPECT_EQ(fake_->rate_limited_count(), 0);
  EXPECT_THAT(clock_.total_slept(), Ge(seconds(2)));
  EXPECT_THAT(clock_.total_slept(), Le(seconds(3)));
}

// ---------------------------------------------------------------- connection

TEST_F(IterableDestinationTest, CheckConnectionPostsAnEmptyUpdate) {
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  EXPECT_TRUE((*dest)->CheckConnection().ok());
  std::vector<FakeIterableRequest> requests = fake_->Requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].target, "/api/users/bulkUpdate");
  EXPECT_EQ(json::parse(requests[0].body), json::parse(R"({"users":[]})"));
  EXPECT_TRUE(fake_->AllUsers().empty());

  FakeIterableOptions strict;
  strict.reject_empty_bulk = true;
  StartFake(strict);
  dest = Create(Settings());
  EXPECT_TRUE((*dest)->CheckConnection().ok());
  EXPECT_EQ(fake_->count_with_status(400), 1);

  dest = Create(Settings({{"api_key", "nope"}}));
  absl::Status bad = (*dest)->CheckConnection();
  EXPECT_EQ(bad.code(), Code::kUnauthenticated);
  EXPECT_THAT(bad.message(), HasSubstr("api_key"));

  fake_->SetApiKey("mobile", IterableKeyType::kMobile);
  dest = Create(Settings({{"api_key", "mobile"}}));
  EXPECT_EQ((*dest)->CheckConnection().code(), Code::kPermissionDenied);

  dest = Create(Settings({{"base_url", fake_->BaseUrl() + "/wrong"}}));
  EXPECT_EQ((*dest)->CheckConnection().code(), Code::kFailedPrecondition);

  fake_->EnqueueReply(FakeIterableReply::Status(429));
  dest = Create(Settings());
  EXPECT_EQ((*dest)->CheckConnection().code(), Code::kUnavailable);

  dest = Create(Settings({{"base_url", "http://127.0.0.1:1"}}));
  absl::Status down = (*dest)->CheckConnection();
  EXPECT_EQ(down.code(), Code::kUnavailable);
  EXPECT_THAT(down.message(), HasSubstr("could not reach Iterable"));
}

// ---------------------------------------------------------------- concurrency

TEST_F(IterableDestinationTest, ConcurrentSessionsShareTheDestinationsLimiters) {
  // The fake's own windows are off: with a shared FakeClock, one thread's
  // wait moves time for all, so arrival times are not the reserved ones.
  FakeIterableOptions options;
  options.bulk_update_per_second = 1000;
  StartFake(options);
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  EXPECT_EQ((*dest)->concurrency(), 4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      SessionOptions opts;
      opts.mapping = "m";
      opts.action = def_.FindAction("update_users");
      opts.layout = {{"email", "userId", "dataFields.plan", "dataFields.ltv"}, {"userId"}};
      auto session = (*dest)->StartSession(opts);
      ASSERT_TRUE(session.ok());
      for (int b = 0; b < 5; ++b) {
        std::string id = fmt::format("{}-{}", t, b);
        std::vector<OutgoingRecord> one = {User("u" + id + "@x.io", "u" + id)};
        EXPECT_THAT(Codes(*(*session)->SendBatch(one)), ElementsAre(Code::kOk));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(fake_->UsersByUserId().size(), 20u);
  // 20 requests at 5 per second, shared by the four sessions.
  EXPECT_THAT(clock_.total_slept(), Ge(seconds(3)));
}

// ---------------------------------------------------------------- helpers

TEST(IterableFormatTest, DatesEpochsAndPathSegments) {
  EXPECT_EQ(IterableDateString("2026-01-02T03:04:05Z"), "2026-01-02 03:04:05 +00:00");
  EXPECT_EQ(IterableDateString("2026-01-02T03:04:05.999+02:00"), "2026-01-02 01:04:05 +00:00");
  EXPECT_EQ(IterableDateString("2026-01-02T03:04"), "2026-01-02 03:04:00 +00:00");
  EXPECT_EQ(IterableDateString("2026-01-02"), std::nullopt);
  // Iterable's own format is read too (and written back as it is, in UTC).
  EXPECT_EQ(IterableDateString("2026-01-02 05:04:05 +02:00"), "2026-01-02 03:04:05 +00:00");
  EXPECT_EQ(IterableDateString("soon"), std::nullopt);
  EXPECT_EQ(IterableEpochSeconds("1970-01-02"), 86400);
  EXPECT_EQ(IterableEpochSeconds("2026-01-02T03:04:05Z"), 1767323045);
  EXPECT_EQ(IterableEpochSeconds("2026-13-02"), std::nullopt);
  EXPECT_EQ(IterablePathSegment("a+b@x.io"), "a%2Bb@x.io");
  EXPECT_EQ(IterablePathSegment("team/42 x"), "team%2F42%20x");
}

// ---------------------------------------------------------------- the fake

class FakeIterableServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeIterableOptions options;
    options.clock = &clock_;
    options.api_keys = {{kKey, IterableKeyType::kServerSide}, {"read", IterableKeyType::kReadOnly}};
    options.project_type = IterableProjectType::kUserIdBased;
    options.max_records_per_request = 3;
    options.max_body_bytes = 2000;
    fake_ = std::make_unique<FakeIterableServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
  }

  HttpResponse Send(const std::string& method, const std::string& path, const std::string& body,
                    const std::string& key = kKey, const std::string& type = "application/json") {
    HttpRequest req;
    req.method = method;
    req.url = fake_->BaseUrl() + path;
    req.body = body;
    if (!key.empty()) req.headers.emplace_back("Api-Key", key);
    if (!body.empty()) req.headers.emplace_back("Content-Type", type);
    absl::StatusOr<HttpResponse> resp = http_->Send(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : HttpResponse{};
  }

  FakeClock clock_;
  std::unique_ptr<FakeIterableServer> fake_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

TEST_F(FakeIterableServerTest, EnforcesAuthKeyTypesAndRequestShape) {
  const std::string one = R"({"users":[{"userId":"u1","dataFields":{"a":1}}]})";
  HttpResponse r = Send("POST", "/api/users/bulkUpdate", one, "");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(json::parse(r.body)["code"], "BadApiKey");
  r = Send("POST", "/api/users/bulkUpdate", one, "read");
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(Send("GET", "/api/users/getFields", "", "read").status, 200);
  EXPECT_EQ(Send("POST", "/api/users/bulkUpdate", one, kKey, "text/plain").status, 400);
  EXPECT_EQ(json::parse(Send("POST", "/api/users/bulkUpdate", "{", kKey).body)["code"],
            "BadJsonBody");
  EXPECT_EQ(Send("POST", "/api/users/bulkUpdate", R"({"users":[{},{},{},{}]})").status, 400);
  r = Send("POST", "/api/users/bulkUpdate", R"({"users":[{"dataFields":{}}]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("email or userId"));
  std::string big =
      R"({"users":[{"userId":"u1","dataFields":{"a":")" + std::string(3000, 'x') + "\"}}]}";
  EXPECT_EQ(Send("POST", "/api/users/bulkUpdate", big).status, 413);
  EXPECT_EQ(Send("POST", "/api/events/trackBulk", R"({"events":[{"userId":"u1"}]})").status, 400);
  EXPECT_EQ(Send("GET", "/api/nothing", "").status, 404);
  EXPECT_TRUE(fake_->AllUsers().empty());
}

TEST_F(FakeIterableServerTest, ProjectTypeDecidesWhoIsCreated) {
  // userId-based: an unknown email alone cannot create a user.
  HttpResponse r = Send("POST", "/api/users/bulkUpdate",
                        R"({"users":[{"email":"a@x.io"},{"userId":"u1","email":"b@x.io"}]})");
  ASSERT_EQ(r.status, 200);
  json reply = json::parse(r.body);
  EXPECT_EQ(reply["successCount"], 1);
  EXPECT_EQ(reply["failCount"], 1);
  EXPECT_EQ(reply["failedUpdates"]["notFoundEmails"], json({"a@x.io"}));
  // Now b@x.io exists and can be found by email.
  r = Send("POST", "/api/users/bulkUpdate",
           R"({"users":[{"email":"B@x.io","dataFields":{"n":1}}]})");
  EXPECT_EQ(json::parse(r.body)["successCount"], 1);
  EXPECT_EQ(fake_->UsersByUserId()["u1"], json({{"n", 1}}));
}

TEST_F(FakeIterableServerTest, RateLimitIsPerSecondWithoutRetryAfter) {
  const std::string one = R"({"users":[{"userId":"u1"}]})";
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Send("POST", "/api/users/bulkUpdate", one).status, 200);
  HttpResponse r = Send("POST", "/api/users/bulkUpdate", one);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(json::parse(r.body)["code"], "RateLimitExceeded");
  EXPECT_FALSE(r.Header("retry-after").has_value());
  // Other endpoints have their own windows; the next second is free again.
  EXPECT_EQ(Send("POST", "/api/events/trackBulk",
                 R"({"events":[{"userId":"u1","eventName":"x","id":"e1"}]})")
                .status,
            200);
  clock_.Advance(seconds(1));
  EXPECT_EQ(Send("POST", "/api/users/bulkUpdate", one).status, 200);
  EXPECT_EQ(fake_->rate_limited_count(), 1);
}

TEST_F(FakeIterableServerTest, EventsOverwriteByIdAndDeletesAnswerMissingUsers) {
  const std::string ev =
      R"({"events":[{"userId":"u1","eventName":"x","id":"e1","dataFields":{"v":1}},
                                       {"userId":"u1","eventName":"x","id":"e1","dataFields":{"v":2}},
                                       {"userId":"u1","eventName":"x"}]})";
  HttpResponse r = Send("POST", "/api/events/trackBulk", ev);
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body)["successCount"], 3);
  std::vector<FakeIterableEvent> events = fake_->Events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].data_fields, json({{"v", 2}}));
  EXPECT_EQ(fake_->event_overwrite_count(), 1);

  r = Send("DELETE", "/api/users/byUserId/nobody", "");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(json::parse(r.body)["code"], "error.users.noUserWithIdExists");
  r = Send("DELETE", "/api/users/byUserId/u1", "");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body)["code"], "Success");
  EXPECT_TRUE(fake_->AllUsers().empty());
}

}  // namespace
}  // namespace backflow
