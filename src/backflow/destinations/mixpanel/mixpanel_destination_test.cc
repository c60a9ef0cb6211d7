#include "backflow/destinations/mixpanel/mixpanel_destination.h"

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/destination.h"
#include "backflow/destinations/mixpanel/fake_mixpanel_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::Ge;
using ::testing::HasSubstr;
using ::testing::Le;
using ::testing::SizeIs;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kToken[] = "test_project_token";
constexpr char kUser[] = "sa.backflow.test";
constexpr char kSecret[] = "sa_secret";
constexpr absl::StatusCode kOk = absl::StatusCode::kOk;
constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

std::vector<absl::StatusCode> Codes(const absl::StatusOr<std::vector<absl::Status>>& statuses) {
  std::vector<absl::StatusCode> out;
  if (!statuses.ok()) return out;
  for (const absl::Status& s : *statuses) out.push_back(s.code());
  return out;
}

std::string Header(const MixpanelRequest& r, const std::string& name) {
  for (const auto& [k, v] : r.headers) {
    if (k == name) return v;
  }
  return "";
}

// A track_event record for the layout {event, distinct_id, time, properties.revenue,
// properties.plan}.
OutgoingRecord Event(const std::string& key, Value user, std::string time = "2023-01-02T03:04:05Z",
                     Value event = Value::String("Order Completed")) {
  OutgoingRecord r;
  r.change = ChangeKind::kAdded;
  r.key = key;
  r.dedup_id = "dedup-" + key;
  r.values = {std::move(event), std::move(user), Value::Text(ValueType::kTimestamp, time),
              Value::Double(9.5), Value::String("pro")};
  return r;
}

// A set_profile record for the layout {distinct_id, email, properties.plan, properties.seats}.
OutgoingRecord Profile(const std::string& id, Value email, Value plan, Value seats,
                       ChangeKind change = ChangeKind::kAdded) {
  OutgoingRecord r;
  r.change = change;
  r.key = id;
  r.dedup_id = "p-" + id + "-" + plan.ToString() + seats.ToString();
  r.values = {Value::String(id), std::move(email), std::move(plan), std::move(seats)};
  return r;
}

OutgoingRecord Deleted(const std::string& id) {
  OutgoingRecord r;
  r.change = ChangeKind::kDeleted;
  r.key = id;
  r.dedup_id = "del-" + id;
  r.values = {Value::String(id)};
  return r;
}

class MixpanelDestinationTest : public ::testing::Test {
 protected:
  void SetUp() override { StartFake({}); }

  void StartFake(FakeMixpanelOptions options) {
    options.now_ms = [this] {
      return std::chrono::duration_cast<milliseconds>(clock_.Now().time_since_epoch()).count();
    };
    fake_ = std::make_unique<FakeMixpanelServer>(std::move(options));
    ASSERT_TRUE(fake_->Start().ok());
  }

  json Settings(json extra = json::object(), bool service_account = true) {
    json s = {{"project_token", kToken}, {"base_url", fake_->BaseUrl()}};
    if (service_account) {
      s["service_account_username"] = kUser;
      s["service_account_secret"] = kSecret;
      s["project_id"] = 4242;
    }
    for (auto& [k, v] : extra.items()) {
      if (v.is_null()) {
        s.erase(k);
      } else {
        s[k] = v;
      }
    }
    return s;
  }

  absl::StatusOr<std::unique_ptr<Destination>> Create(json settings) {
    std::vector<std::string> problems = CheckSettings(def_.settings, settings);
    if (!problems.empty()) return absl::InvalidArgumentError(problems.front());
    return def_.create(settings, ConnectorEnv{http_.get(), &clock_});
  }

  std::unique_ptr<ActionSession> Session(const std::string& action, std::vector<std::string> fields,
                                         json settings, std::vector<std::string> identity = {}) {
    absl::StatusOr<std::unique_ptr<Destination>> dest = Create(std::move(settings));
    EXPECT_TRUE(dest.ok()) << dest.status();
    if (!dest.ok()) return nullptr;
    dest_ = *std::move(dest);
    return Open(action, std::move(fields), std::move(identity));
  }

  // A session on the current destination.
  std::unique_ptr<ActionSession> Open(const std::string& action, std::vector<std::string> fields,
                                      std::vector<std::string> identity = {}) {
    SessionOptions opts;
    opts.mapping = "to_mixpanel";
    opts.run_id = 3;
    opts.action = def_.FindAction(action);
    EXPECT_NE(opts.action, nullptr) << action;
    opts.layout.fields = std::move(fields);
    opts.layout.identity =
        identity.empty() ? std::vector<std::string>{opts.layout.fields[0]} : identity;
    if (action == "track_event") opts.layout.identity = {};
    absl::StatusOr<std::unique_ptr<ActionSession>> session = dest_->StartSession(opts);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *std::move(session) : nullptr;
  }

  std::unique_ptr<ActionSession> TrackSession(json extra = json::object(), bool sa = true) {
    return Session("track_event",
                   {"event", "distinct_id", "time", "properties.revenue", "properties.plan"},
                   Settings(std::move(extra), sa));
  }

  std::unique_ptr<ActionSession> ProfileSession(json extra = json::object()) {
    return Session("set_profile", {"distinct_id", "email", "properties.plan", "properties.seats"},
                   Settings(std::move(extra)), {"distinct_id"});
  }

  DestinationDefinition def_ = MixpanelDestinationDefinition();
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeMixpanelServer> fake_;
  std::unique_ptr<Destination> dest_;
};

TEST_F(MixpanelDestinationTest, DefinitionDeclaresSettingsAndActions) {
  EXPECT_EQ(def_.type, "mixpanel");
  for (const char* key : {"project_token", "service_account_secret"}) {
    const SettingSpec* s = FindSetting(def_.settings, key);
    ASSERT_NE(s, nullptr) << key;
    EXPECT_TRUE(s->secret) << key;
  }
  ASSERT_NE(FindSetting(def_.settings, "service_account_username"), nullptr);
  ASSERT_NE(FindSetting(def_.settings, "project_id"), nullptr);
  EXPECT_EQ(FindSetting(def_.settings, "project_id")->type, SettingType::kInteger);
  const SettingSpec* base = FindSetting(def_.settings, "base_url");
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(base->default_value, "https://api.mixpanel.com");
  EXPECT_THAT(base->description, HasSubstr("https://api-eu.mixpanel.com"));
  EXPECT_THAT(base->description, HasSubstr("https://api-in.mixpanel.com"));
  EXPECT_EQ(FindSetting(def_.settings, "import_max_request_bytes")->default_value, 10'000'000);
  EXPECT_EQ(FindSetting(def_.settings, "max_megabytes_per_minute")->default_value, 2000);
  EXPECT_EQ(FindSetting(def_.settings, "max_events_per_second")->default_value, 30000);
  for (const char* s :
       {"max_requests_per_second", "timeout_ms", "max_retries", "max_retry_wait_s"}) {
    EXPECT_NE(FindSetting(def_.settings, s), nullptr) << s;
  }

  const ActionSpec* track = def_.FindAction("track_event");
  ASSERT_NE(track, nullptr);
  EXPECT_EQ(track->max_batch_records, 2000);
  EXPECT_THAT(track->selections, ElementsAre(RecordSelection::kAdded));
  for (const char* f : {"event", "distinct_id", "time"}) {
    ASSERT_NE(track->FindField(f), nullptr) << f;
    EXPECT_TRUE(track->FindField(f)->required) << f;
  }
  EXPECT_EQ(track->FindField("time")->type, FieldType::kTimestamp);
  EXPECT_FALSE(track->FindField("insert_id")->required);
  EXPECT_TRUE(track->AcceptsField("properties.revenue"));
  EXPECT_FALSE(track->AcceptsField("traits.plan"));

  const ActionSpec* profile = def_.FindAction("set_profile");
  ASSERT_NE(profile, nullptr);
  EXPECT_EQ(profile->max_batch_records, 2000);
  EXPECT_TRUE(profile->Supports(RecordSelection::kAddedOrUpdated));
  EXPECT_TRUE(profile->Supports(RecordSelection::kDeleted));
  EXPECT_TRUE(profile->Supports(RecordSelection::kAll));
  ASSERT_NE(profile->FindField("distinct_id"), nullptr);
  EXPECT_TRUE(profile->FindField("distinct_id")->identifier);
  EXPECT_TRUE(profile->FindField("distinct_id")->required);
  EXPECT_EQ(profile->FindField("email")->default_column, "email");
  EXPECT_TRUE(profile->AcceptsField("properties.plan"));
  ASSERT_TRUE(profile->validate);
  EXPECT_THAT(profile->validate(json::object(), {{"distinct_id", "id"}}), SizeIs(1));
  EXPECT_THAT(profile->validate(json{{"project_token", "t"}}, {{"distinct_id", "id"}}), SizeIs(0));
}

TEST_F(MixpanelDestinationTest, SettingsNeedACredential) {
  auto error = [&](json settings) {
    absl::StatusOr<std::unique_ptr<Destination>> d = Create(std::move(settings));
    return d.ok() ? std::string() : std::string(d.status().message());
  };
  EXPECT_THAT(error(Settings({{"project_token", nullptr}}, false)), HasSubstr("project_token"));
  EXPECT_THAT(error(Settings({{"project_id", nullptr}})), HasSubstr("project_id"));
  EXPECT_THAT(error(Settings({{"service_account_secret", nullptr}})),
              HasSubstr("service_account_secret"));
  EXPECT_THAT(error(Settings({{"project_token", "a:b"}}, false)), HasSubstr("project_token"));
  EXPECT_THAT(error(Settings({{"base_url", "ftp://x"}})), HasSubstr("base_url"));
  EXPECT_EQ(error(Settings({}, false)), "");
  EXPECT_EQ(error(Settings({{"project_token", nullptr}})), "");

  // A service account alone can import but cannot set profiles.
  absl::StatusOr<std::unique_ptr<Destination>> d = Create(Settings({{"project_token", nullptr}}));
  ASSERT_TRUE(d.ok());
  SessionOptions opts;
  opts.action = def_.FindAction("set_profile");
  opts.layout.fields = {"distinct_id"};
  absl::StatusOr<std::unique_ptr<ActionSession>> s = (*d)->StartSession(opts);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("project_token"));
}

TEST_F(MixpanelDestinationTest, TrackEventImportsWithServiceAccount) {
  auto session = TrackSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1"), "2023-01-02T03:04:05.250Z"),
                                       Event("2", Value::Int64(42), "2023-01-02 04:00:00+01:00")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(result), ElementsAre(kOk, kOk));

  std::vector<MixpanelRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  const MixpanelRequest& r = reqs[0];
  EXPECT_EQ(r.target, "/import?strict=1&project_id=4242");
  EXPECT_EQ(r.auth, "service_account:sa.backflow.test");
  EXPECT_EQ(Header(r, "authorization"), MixpanelBasicAuth(kUser, kSecret));
  EXPECT_EQ(Header(r, "content-type"), "application/json");
  EXPECT_EQ(r.reply_status, 200);
  json body = json::parse(r.body);
  ASSERT_TRUE(body.is_array());
  ASSERT_EQ(body.size(), 2u);
  EXPECT_EQ(body[0], json({{"event", "Order Completed"},
                           {"properties",
                            {{"revenue", 9.5},
                             {"plan", "pro"},
                             {"time", 1672628645250},
                             {"distinct_id", "u1"},
                             {"$insert_id", MixpanelInsertId("dedup-1")}}}}));
  // A numeric id is sent as text; the offset is applied to the time.
  EXPECT_EQ(body[1]["properties"]["distinct_id"], "42");
  EXPECT_EQ(body[1]["properties"]["time"], 1672628400000);
  EXPECT_EQ(MixpanelInsertId("dedup-1").size(), 32u);
  EXPECT_THAT(fake_->Events(), SizeIs(2));
  EXPECT_EQ(json::parse(r.reply_body)["num_records_imported"], 2);
}

TEST_F(MixpanelDestinationTest, TrackEventWithProjectTokenAuth) {
  auto session = TrackSession(json::object(), /*sa=*/false);
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1"))};
  EXPECT_THAT(Codes(session->SendBatch(batch)), ElementsAre(kOk));
  std::vector<MixpanelRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].target, "/import?strict=1");
  EXPECT_EQ(reqs[0].auth, "project_token");
  EXPECT_EQ(Header(reqs[0], "authorization"), MixpanelBasicAuth(kToken, ""));
}

TEST_F(MixpanelDestinationTest, TrackEventRejectsBadRecordsLocally) {
  auto session = TrackSession();
  ASSERT_NE(session, nullptr);
  OutgoingRecord updated = Event("8", Value::String("u8"));
  updated.change = ChangeKind::kUpdated;
  OutgoingRecord deleted = Event("9", Value::String("u9"));
  deleted.change = ChangeKind::kDeleted;
  std::vector<OutgoingRecord> batch = {
      Event("0", Value::String("u0"), "2023-01-02T03:04:05Z", Value::Null()),  // no event name
      Event("1", Value::Null()),                                               // no distinct_id
      Event("2", Value::String("undefined")),                                  // placeholder
      Event("3", Value::String(" NULL ")),                                     // placeholder
      Event("4", Value::String("u4"), "1970-06-01T00:00:00Z"),                 // before 1971
      Event("5", Value::String("u5"), "2023-11-15T00:13:21Z"),                 // > now + 1 h
      Event("6", Value::String("u6"), "not a time"),
      updated,
      deleted,
      Event("10", Value::String(""), "2023-11-14T23:13:20Z"),  // no user; exactly now + 1 h
  };
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(result), ElementsAre(kInvalid, kInvalid, kInvalid, kInvalid, kInvalid, kInvalid,
                                         kInvalid, kInvalid, kInvalid, kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("event is empty"));
  EXPECT_THAT((*result)[1].message(), HasSubstr("distinct_id is NULL"));
  EXPECT_THAT((*result)[2].message(), HasSubstr("placeholder"));
  EXPECT_THAT((*result)[4].message(), HasSubstr("before 1971-01-01"));
  EXPECT_THAT((*result)[5].message(), HasSubstr("in the future"));
  EXPECT_THAT((*result)[7].message(), HasSubstr("records: added"));
  // Only the valid event was sent, and the fake accepted it.
  std::vector<MixpanelRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].item_count, 1u);
  ASSERT_THAT(fake_->Events(), SizeIs(1));
  EXPECT_EQ(fake_->Events()[0]["properties"]["distinct_id"], "");
  EXPECT_TRUE(fake_->FailedRecords().empty());
}

TEST_F(MixpanelDestinationTest, TrackEventPropertyLimits) {
  auto session = Session("track_event", {"event", "distinct_id", "time", "properties"}, Settings());
  ASSERT_NE(session, nullptr);
  auto with_properties = [](const std::string& key, const json& props) {
    OutgoingRecord r;
    r.key = key;
    r.dedup_id = "d" + key;
    r.values = {Value::String("E"), Value::String("u" + key),
                Value::Text(ValueType::kTimestamp, "2023-05-01T00:00:00Z"),
                Value::Text(ValueType::kJson, props.dump())};
    return r;
  };
  json many = json::object();
  for (int i = 0; i < 252; ++i) many["p" + std::to_string(i)] = i;  // + 3 reserved = 255
  json fewer = many;
  fewer.erase("p0");
  json big_list = {{"items", json::array()}};
  for (int i = 0; i < 255; ++i) big_list["items"].push_back(i);
  json huge = {{"text", std::string(1'000'000, 'x')}};
  std::vector<OutgoingRecord> batch = {with_properties("1", many), with_properties("2", fewer),
                                       with_properties("3", big_list), with_properties("4", huge),
                                       with_properties("5", json::array({1}))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(result), ElementsAre(kInvalid, kOk, kInvalid, kInvalid, kInvalid));
  EXPECT_THAT((*result)[0].message(), HasSubstr("fewer than 255"));
  EXPECT_THAT((*result)[2].message(), HasSubstr("properties.items"));
  EXPECT_THAT((*result)[3].message(), HasSubstr("1 MB"));
  EXPECT_THAT((*result)[4].message(), HasSubstr("must be an object"));
  EXPECT_THAT(fake_->Events(), SizeIs(1));
}

TEST_F(MixpanelDestinationTest, MappedInsertIdIsUsedAndChecked) {
  auto session = Session("track_event", {"event", "distinct_id", "time", "insert_id"}, Settings());
  ASSERT_NE(session, nullptr);
  auto rec = [](const std::string& key, Value insert_id) {
    OutgoingRecord r;
    r.key = key;
    r.dedup_id = "d" + key;
    r.values = {Value::String("E"), Value::String("u"),
                Value::Text(ValueType::kTimestamp, "2023-05-01T00:00:00Z"), std::move(insert_id)};
    return r;
  };
  std::vector<OutgoingRecord> batch = {
      rec("1", Value::String("order-123")), rec("2", Value::String("has space")),
      rec("3", Value::String(std::string(37, 'a'))), rec("4", Value::Null())};
  auto result = session->SendBatch(batch);
  EXPECT_THAT(Codes(result), ElementsAre(kOk, kInvalid, kInvalid, kOk));
  std::vector<json> events = fake_->Events();
  ASSERT_THAT(events, SizeIs(2));
  EXPECT_EQ(events[0]["properties"]["$insert_id"], "order-123");
  EXPECT_EQ(events[1]["properties"]["$insert_id"], MixpanelInsertId("d4"));
}

TEST_F(MixpanelDestinationTest, PartialFailureMarksFailedRecordsByIndex) {
  fake_->RejectDistinctId("u2");
  auto session = TrackSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1")),
                                       Event("2", Value::String("u2")),
                                       Event("3", Value::String("u3"))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(result), ElementsAre(kOk, kInvalid, kOk));
  EXPECT_THAT((*result)[1].message(), HasSubstr("properties.distinct_id"));
  EXPECT_THAT((*result)[1].message(), HasSubstr("was rejected"));
  // The 400 is a partial success: the valid events were ingested, nothing re-sent.
  EXPECT_EQ(fake_->request_count(), 1);
  EXPECT_EQ(fake_->Requests()[0].reply_status, 400);
  EXPECT_THAT(fake_->Events(), SizeIs(2));
  ASSERT_THAT(fake_->FailedRecords(), SizeIs(1));
  EXPECT_EQ(fake_->FailedRecords()[0].index, 1u);

  // failed_records without insert_id are matched by index.
  FakeMixpanelReply reply = FakeMixpanelReply::Status(
      400, "/import",
      R"({"code":400,"error":"some data points in the request failed validation","status":"Bad Request","num_records_imported":1,"failed_records":[{"index":0,"field":"properties.time","message":"'properties.time' is invalid"}]})");
  reply.apply = false;
  fake_->EnqueueReply(reply);
  std::vector<OutgoingRecord> more = {Event("4", Value::String("u4")),
                                      Event("5", Value::String("u5"))};
  result = session->SendBatch(more);
  EXPECT_THAT(Codes(result), ElementsAre(kInvalid, kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("'properties.time' is invalid"));
  EXPECT_EQ(fake_->request_count(), 2);
}

TEST_F(MixpanelDestinationTest, ImportBadRequestWithoutFailedRecordsBisects) {
  FakeMixpanelReply reply = FakeMixpanelReply::Status(
      400, "/import", R"({"code":400,"error":"unable to parse","status":"Bad Request"})");
  reply.apply = false;
  fake_->EnqueueReply(reply);
  auto session = TrackSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1")),
                                       Event("2", Value::String("u2")),
                                       Event("3", Value::String("u3"))};
  auto result = session->SendBatch(batch);
  EXPECT_THAT(Codes(result), ElementsAre(kOk, kOk, kOk));
  EXPECT_EQ(fake_->request_count(), 3);  // the whole, then halves of 1 and 2
  EXPECT_THAT(fake_->Events(), SizeIs(3));
}

TEST_F(MixpanelDestinationTest, OversizedRequestIsSplitOn413) {
  FakeMixpanelOptions options;
  options.max_import_bytes = 400;  // about two events
  StartFake(options);
  auto session = TrackSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 4; ++i) batch.push_back(Event(std::to_string(i), Value::String("user")));
  auto result = session->SendBatch(batch);
  EXPECT_THAT(Codes(result), ElementsAre(kOk, kOk, kOk, kOk));
  std::vector<MixpanelRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].reply_status, 413);
  EXPECT_EQ(reqs[1].reply_status, 200);
  EXPECT_EQ(reqs[2].reply_status, 200);
  EXPECT_THAT(fake_->Events(), SizeIs(4));

  // One event still too large on its own fails alone.
  OutgoingRecord big = Event("big", Value::String(std::string(800, 'u')));
  std::vector<OutgoingRecord> one = {big, Event("5", Value::String("user"))};
  result = session->SendBatch(one);
  EXPECT_THAT(Codes(result), ElementsAre(kInvalid, kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("HTTP 413"));
}

TEST_F(MixpanelDestinationTest, RequestsArePackedWithinTheSizeLimit) {
  auto session = TrackSession({{"import_max_request_bytes", 1024}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 20; ++i) batch.push_back(Event(std::to_string(i), Value::String("u")));
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(*result, ::testing::Each(absl::OkStatus()));
  std::vector<MixpanelRequest> reqs = fake_->Requests();
  EXPECT_GE(reqs.size(), 3u);
  size_t events = 0;
  for (const MixpanelRequest& r : reqs) {
    EXPECT_LE(r.body.size(), 1024u);
    events += r.item_count;
  }
  EXPECT_EQ(events, 20u);
  EXPECT_THAT(fake_->Events(), SizeIs(20));
}

TEST_F(MixpanelDestinationTest, RateLimitBacksOffTwoSecondsDoublingWithJitter) {
  FakeMixpanelReply limited = FakeMixpanelReply::Status(
      429, "/import",
      R"({"code":429,"error":"Project exceeded rate limits. Please retry the request with exponential backoff.","status":"Too Many Requests"})");
  fake_->EnqueueReplies(2, limited);
  auto session = TrackSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1")),
                                       Event("2", Value::String("u2"))};
  auto result = session->SendBatch(batch);
  EXPECT_THAT(Codes(result), ElementsAre(kOk, kOk));
  EXPECT_EQ(fake_->request_count(), 3);
  // (2 s + 1..5 s) + (4 s + 1..5 s).
  EXPECT_THAT(clock_.total_slept(), Ge(seconds(8)));
  EXPECT_THAT(clock_.total_slept(), Le(seconds(16)));
  EXPECT_THAT(fake_->Events(), SizeIs(2));
  for (int n = 1; n <= 7; ++n) {
    EXPECT_EQ(MixpanelRateLimitBackoff(n), milliseconds(std::min(2000 << (n - 1), 60000))) << n;
  }
}

TEST_F(MixpanelDestinationTest, RollingMinuteWindowIsWaitedOut) {
  FakeMixpanelOptions options;
  options.max_bytes_per_minute = 400;  // about two events per minute
  StartFake(options);
  auto session = TrackSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> first = {Event("1", Value::String("u1")),
                                       Event("2", Value::String("u2"))};
  EXPECT_THAT(Codes(session->SendBatch(first)), ElementsAre(kOk, kOk));
  std::vector<OutgoingRecord> second = {Event("3", Value::String("u3"))};
  EXPECT_THAT(Codes(session->SendBatch(second)), ElementsAre(kOk));
  // Backoff (2, 4, 8, 16, 32 s + jitter) on the fake's clock frees the window.
  EXPECT_GE(fake_->rate_limited_count(), 1);
  EXPECT_THAT(clock_.total_slept(), Ge(seconds(60)));
  EXPECT_THAT(fake_->Events(), SizeIs(3));
}

TEST_F(MixpanelDestinationTest, RateLimitExhaustedFailsRecordsAsRateLimited) {
  fake_->EnqueueReplies(10, FakeMixpanelReply::Status(429, "/import"));
  auto session = TrackSession({{"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1"))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT((*result)[0].message(), HasSubstr("after 3 attempts"));
  EXPECT_TRUE(RetryAfter((*result)[0]).has_value());
  EXPECT_EQ(fake_->request_count(), 3);
  EXPECT_TRUE(fake_->Events().empty());
}

TEST_F(MixpanelDestinationTest, ServerErrorsAreRetriedThenExhausted) {
  fake_->EnqueueReplies(2, FakeMixpanelReply::Status(503, "/import"));
  auto session = TrackSession({{"max_retries", 3}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1"))};
  EXPECT_THAT(Codes(session->SendBatch(batch)), ElementsAre(kOk));
  EXPECT_EQ(fake_->request_count(), 3);

  fake_->ClearHistory();
  fake_->EnqueueReplies(10, FakeMixpanelReply::Status(500, "/import"));
  std::vector<OutgoingRecord> next = {Event("2", Value::String("u2")),
                                      Event("3", Value::String("u3"))};
  auto result = session->SendBatch(next);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*result)[1].code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT((*result)[0].message(), HasSubstr("HTTP 500"));
  EXPECT_EQ(fake_->request_count(), 4);
  EXPECT_TRUE(fake_->Events().empty());
}

TEST_F(MixpanelDestinationTest, UnauthorizedStopsTheRunWithActionableMessage) {
  auto session = TrackSession({{"service_account_secret", "wrong"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1"))};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(result.status().message(), HasSubstr("service_account_secret"));
  EXPECT_THAT(result.status().message(), HasSubstr("project_id 4242"));
  EXPECT_THAT(result.status().message(), HasSubstr("Invalid credentials"));
  EXPECT_EQ(fake_->request_count(), 1);  // not retried
  EXPECT_EQ(fake_->unauthorized_count(), 1);

  session = TrackSession({{"project_token", "nope"}}, /*sa=*/false);
  result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(result.status().message(), HasSubstr("project_token"));
  EXPECT_TRUE(fake_->Events().empty());
}

TEST_F(MixpanelDestinationTest, ForbiddenStopsTheRun) {
  fake_->EnqueueReply(
      FakeMixpanelReply::Status(403, "/import", R"({"error":"forbidden","status":"error"})"));
  auto session = TrackSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1"))};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied);

  // /engage answers 403 for another project's token.
  auto profiles = ProfileSession({{"project_token", "other_project_token"}});
  ASSERT_NE(profiles, nullptr);
  std::vector<OutgoingRecord> p = {
      Profile("u1", Value::String("a@x.io"), Value::String("pro"), Value::Int64(1))};
  result = profiles->SendBatch(p);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(result.status().message(), HasSubstr("project_token"));
  EXPECT_TRUE(fake_->Profiles().empty());
}

TEST_F(MixpanelDestinationTest, RetriedImportIsDeduplicatedByInsertId) {
  // The events land, but the reply is lost to a 500: the retry must not count them twice.
  FakeMixpanelReply lost = FakeMixpanelReply::Status(500, "/import");
  lost.apply = true;
  fake_->EnqueueReply(lost);
  auto session = TrackSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Event("1", Value::String("u1")),
                                       Event("2", Value::String("u2"))};
  EXPECT_THAT(Codes(session->SendBatch(batch)), ElementsAre(kOk, kOk));
  std::vector<MixpanelRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].body, reqs[1].body);
  EXPECT_EQ(fake_->duplicate_count(), 2);
  EXPECT_THAT(fake_->Events(), SizeIs(2));

  // A later session re-sending the same rows carries the same $insert_ids.
  auto again = Open("track_event",
                    {"event", "distinct_id", "time", "properties.revenue", "properties.plan"});
  EXPECT_THAT(Codes(again->SendBatch(batch)), ElementsAre(kOk, kOk));
  EXPECT_EQ(fake_->Requests().back().body, reqs[0].body);
  EXPECT_EQ(fake_->duplicate_count(), 4);
  EXPECT_THAT(fake_->Events(), SizeIs(2));
}

TEST_F(MixpanelDestinationTest, SetProfileSetsAndUnsets) {
  auto session = Session("set_profile",
                         {"distinct_id", "email", "properties.plan", "properties.seats", "created"},
                         Settings(), {"distinct_id"});
  ASSERT_NE(session, nullptr);
  OutgoingRecord a = Profile("u1", Value::String("a@x.io"), Value::String("pro"), Value::Int64(5));
  a.values.push_back(Value::Text(ValueType::kTimestamp, "2023-01-02T03:04:05.5Z"));
  OutgoingRecord b = Profile("u2", Value::String("b@x.io"), Value::String("free"), Value::Null());
  b.values.push_back(Value::Null());
  std::vector<OutgoingRecord> batch = {a, b};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(result), ElementsAre(kOk, kOk));

  std::vector<MixpanelRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].target, "/engage?verbose=1");
  EXPECT_EQ(Header(reqs[0], "authorization"), "");
  EXPECT_EQ(reqs[0].reply_body, R"({"error":null,"status":1})");
  json body = json::parse(reqs[0].body);
  ASSERT_EQ(body.size(), 3u);
  EXPECT_EQ(body[0], json({{"$token", kToken},
                           {"$distinct_id", "u1"},
                           {"$ip", "0"},
                           {"$ignore_time", true},
                           {"$set",
                            {{"$email", "a@x.io"},
                             {"plan", "pro"},
                             {"seats", 5},
                             {"$created", "2023-01-02T03:04:05"}}}}));
  EXPECT_EQ(body[1]["$set"], json({{"$email", "b@x.io"}, {"plan", "free"}}));
  EXPECT_EQ(body[2], json({{"$token", kToken},
                           {"$distinct_id", "u2"},
                           {"$ignore_time", true},
                           {"$unset", {"seats", "$created"}}}));
  std::map<std::string, json> profiles = fake_->Profiles();
  EXPECT_EQ(profiles["u1"], json({{"$email", "a@x.io"},
                                  {"plan", "pro"},
                                  {"seats", 5},
                                  {"$created", "2023-01-02T03:04:05"}}));
  EXPECT_EQ(profiles["u2"], json({{"$email", "b@x.io"}, {"plan", "free"}}));

  // An update merges; a value turned NULL is removed.
  OutgoingRecord a2 =
      Profile("u1", Value::String("a@x.io"), Value::Null(), Value::Int64(6), ChangeKind::kUpdated);
  a2.values.push_back(Value::Text(ValueType::kTimestamp, "2023-01-02T03:04:05.5Z"));
  std::vector<OutgoingRecord> update = {a2};
  EXPECT_THAT(Codes(session->SendBatch(update)), ElementsAre(kOk));
  EXPECT_EQ(fake_->Profiles()["u1"],
            json({{"$email", "a@x.io"}, {"seats", 6}, {"$created", "2023-01-02T03:04:05"}}));
}

TEST_F(MixpanelDestinationTest, SetProfileDeletesProfiles) {
  auto session = ProfileSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Profile("u1", Value::String("a@x.io"), Value::String("pro"), Value::Int64(1)),
      Profile("u2", Value::String("b@x.io"), Value::String("pro"), Value::Int64(2))};
  EXPECT_THAT(Codes(session->SendBatch(batch)), ElementsAre(kOk, kOk));
  std::vector<OutgoingRecord> deletes = {Deleted("u1"), Deleted("ghost")};
  EXPECT_THAT(Codes(session->SendBatch(deletes)), ElementsAre(kOk, kOk));
  json body = json::parse(fake_->Requests().back().body);
  EXPECT_EQ(body[0], json({{"$token", kToken},
                           {"$distinct_id", "u1"},
                           {"$delete", "null"},
                           {"$ignore_alias", true}}));
  std::map<std::string, json> profiles = fake_->Profiles();
  EXPECT_FALSE(profiles.contains("u1"));
  EXPECT_TRUE(profiles.contains("u2"));

  // Without distinct_id among the identity fields a delete cannot name the profile.
  auto no_identity = Open("set_profile", {"distinct_id", "email"}, {"email"});
  OutgoingRecord d = Deleted("u2");
  std::vector<OutgoingRecord> one = {d};
  auto result = no_identity->SendBatch(one);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), kInvalid);
  EXPECT_THAT((*result)[0].message(), HasSubstr("primary key"));
  EXPECT_TRUE(fake_->Profiles().contains("u2"));
}

TEST_F(MixpanelDestinationTest, EngageErrorInside200IsIsolatedByBisecting) {
  fake_->RejectDistinctId("u3");
  auto session = ProfileSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 1; i <= 4; ++i) {
    batch.push_back(Profile("u" + std::to_string(i), Value::String("x@x.io"), Value::String("pro"),
                            Value::Int64(i)));
  }
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(result), ElementsAre(kOk, kOk, kInvalid, kOk));
  EXPECT_THAT((*result)[2].message(), HasSubstr("status 0"));
  EXPECT_THAT((*result)[2].message(), HasSubstr("\"u3\" was rejected"));
  // Every reply was HTTP 200; the first said status 0.
  std::vector<MixpanelRequest> reqs = fake_->Requests();
  ASSERT_GE(reqs.size(), 3u);
  for (const MixpanelRequest& r : reqs) EXPECT_EQ(r.reply_status, 200);
  EXPECT_EQ(json::parse(reqs[0].reply_body)["status"], 0);
  std::map<std::string, json> profiles = fake_->Profiles();
  EXPECT_EQ(profiles.size(), 3u);
  EXPECT_FALSE(profiles.contains("u3"));

  // The terse form ("0" without verbose) is understood too.
  FakeMixpanelReply zero = FakeMixpanelReply::Status(200, "/engage", "0");
  zero.apply = false;
  fake_->EnqueueReply(zero);
  std::vector<OutgoingRecord> one = {batch[0]};
  result = session->SendBatch(one);
  EXPECT_THAT(Codes(result), ElementsAre(kInvalid));
}

TEST_F(MixpanelDestinationTest, EngageReplyThatSaysNothingIsRetriedLater) {
  FakeMixpanelReply odd = FakeMixpanelReply::Status(200, "/engage", "<html>maintenance</html>");
  odd.apply = false;
  fake_->EnqueueReply(odd);
  auto session = ProfileSession();
  std::vector<OutgoingRecord> batch = {
      Profile("u1", Value::String("a@x.io"), Value::String("pro"), Value::Int64(1))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT((*result)[0].message(), HasSubstr("maintenance"));
}

TEST_F(MixpanelDestinationTest, EngageTokenErrorInside200StopsTheRun) {
  FakeMixpanelReply bad = FakeMixpanelReply::Status(
      200, "/engage", R"({"status":0,"error":"$token, missing or empty"})");
  bad.apply = false;
  fake_->EnqueueReply(bad);
  auto session = ProfileSession();
  std::vector<OutgoingRecord> batch = {
      Profile("u1", Value::String("a@x.io"), Value::String("pro"), Value::Int64(1)),
      Profile("u2", Value::String("b@x.io"), Value::String("pro"), Value::Int64(1))};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(result.status().message(), HasSubstr("project_token"));
  EXPECT_EQ(fake_->request_count(), 1);  // no bisecting for a credential problem
}

TEST_F(MixpanelDestinationTest, EngageRetriesServerErrorsAndRateLimits) {
  fake_->EnqueueReply(FakeMixpanelReply::Status(502, "/engage"));
  fake_->EnqueueReply(FakeMixpanelReply::Status(429, "/engage"));
  auto session = ProfileSession();
  std::vector<OutgoingRecord> batch = {
      Profile("u1", Value::String("a@x.io"), Value::String("pro"), Value::Int64(1))};
  EXPECT_THAT(Codes(session->SendBatch(batch)), ElementsAre(kOk));
  EXPECT_EQ(fake_->engage_request_count(), 3);
  EXPECT_TRUE(fake_->Profiles().contains("u1"));
  // A 5xx waits up to 2 s (full jitter); the 429 after it waits 4 s + 1..5 s.
  EXPECT_THAT(clock_.total_slept(), Ge(seconds(5)));
}

TEST_F(MixpanelDestinationTest, SetProfileRejectsBadIdsLocally) {
  auto session = ProfileSession();
  std::vector<OutgoingRecord> batch = {
      Profile("null", Value::String("a@x.io"), Value::String("pro"), Value::Int64(1)),
      Profile("", Value::String("a@x.io"), Value::String("pro"), Value::Int64(1)),
      Profile("ok", Value::String("a@x.io"), Value::String("pro"), Value::Int64(1))};
  auto result = session->SendBatch(batch);
  EXPECT_THAT(Codes(result), ElementsAre(kInvalid, kInvalid, kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("placeholder"));
  EXPECT_EQ(fake_->Profiles().size(), 1u);
}

TEST_F(MixpanelDestinationTest, EngageSplitsOn413AndPacksUpdates) {
  FakeMixpanelOptions options;
  options.max_engage_bytes = 600;
  StartFake(options);
  auto session = ProfileSession();
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 6; ++i) {
    batch.push_back(Profile("u" + std::to_string(i), Value::String("x@x.io"), Value::Null(),
                            Value::Int64(i)));  // two updates each ($set and $unset)
  }
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(*result, ::testing::Each(absl::OkStatus()));
  EXPECT_EQ(fake_->Profiles().size(), 6u);
  bool saw_413 = false;
  for (const MixpanelRequest& r : fake_->Requests()) saw_413 |= r.reply_status == 413;
  EXPECT_TRUE(saw_413);
}

TEST_F(MixpanelDestinationTest, CheckConnectionUsesEveryCredential) {
  ASSERT_TRUE(Create(Settings()).ok());
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  EXPECT_TRUE((*dest)->CheckConnection().ok());
  std::vector<MixpanelRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].auth, "service_account:sa.backflow.test");
  EXPECT_EQ(reqs[1].auth, "project_token");
  EXPECT_EQ(reqs[0].body, "[]");
  EXPECT_TRUE(fake_->Events().empty());

  dest = Create(Settings({{"service_account_secret", "wrong"}}));
  absl::Status s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("service_account_secret"));
  EXPECT_THAT(s.message(), HasSubstr("api-eu.mixpanel.com"));

  dest = Create(Settings({{"project_token", "wrong"}}));
  s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("project_token"));

  dest = Create(Settings({{"project_id", 999}}));
  s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("no access to project 999"));

  fake_->EnqueueReply(FakeMixpanelReply::Status(503, "/import"));
  dest = Create(Settings());
  s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);

  std::string url = fake_->BaseUrl();
  fake_->Stop();
  dest = Create(Settings({{"base_url", url}}));
  s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("could not reach Mixpanel"));
}

TEST_F(MixpanelDestinationTest, UserAndVendorLimitsPaceRequests) {
  auto session = TrackSession({{"max_requests_per_second", 1}});
  for (int i = 0; i < 3; ++i) {
    std::vector<OutgoingRecord> batch = {Event(std::to_string(i), Value::String("u"))};
    EXPECT_THAT(Codes(session->SendBatch(batch)), ElementsAre(kOk));
  }
  EXPECT_THAT(clock_.total_slept(), Ge(seconds(2)));

  // 10 events per second: 30 events take 2 s more.
  auto before = clock_.total_slept();
  session = TrackSession({{"max_events_per_second", 10}});
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 30; ++i) batch.push_back(Event("e" + std::to_string(i), Value::String("u")));
  EXPECT_THAT(*session->SendBatch(batch), ::testing::Each(absl::OkStatus()));
  EXPECT_THAT(clock_.total_slept() - before, Ge(seconds(2)));

  // 1 MB per minute: each request takes at least one unit, so three take two more minutes.
  before = clock_.total_slept();
  session = TrackSession({{"max_megabytes_per_minute", 1}});
  for (int i = 0; i < 3; ++i) {
    std::vector<OutgoingRecord> one = {Event("m" + std::to_string(i), Value::String("u"))};
    EXPECT_THAT(Codes(session->SendBatch(one)), ElementsAre(kOk));
  }
  EXPECT_THAT(clock_.total_slept() - before, Ge(seconds(120)));
}

TEST_F(MixpanelDestinationTest, ConcurrentSendersShareTheFake) {
  // Like parallel runs: each thread has its own destination and HTTP client
  // (an HttpClient serves one thread at a time).
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([this, t] {
      std::unique_ptr<HttpClient> http = NewCurlHttpClient();
      json settings = Settings();
      ASSERT_TRUE(CheckSettings(def_.settings, settings).empty());
      absl::StatusOr<std::unique_ptr<Destination>> dest =
          def_.create(settings, ConnectorEnv{http.get(), &clock_});
      ASSERT_TRUE(dest.ok()) << dest.status();
      SessionOptions track;
      track.action = def_.FindAction("track_event");
      track.layout.fields = {"event", "distinct_id", "time", "properties.revenue",
                             "properties.plan"};
      SessionOptions profile;
      profile.action = def_.FindAction("set_profile");
      profile.layout.fields = {"distinct_id", "email", "properties.plan", "properties.seats"};
      profile.layout.identity = {"distinct_id"};
      auto events = (*dest)->StartSession(track);
      auto profiles = (*dest)->StartSession(profile);
      ASSERT_TRUE(events.ok() && profiles.ok());
      for (int b = 0; b < 5; ++b) {
        std::string id = std::to_string(t) + "-" + std::to_string(b);
        std::vector<OutgoingRecord> e = {Event(id, Value::String("u" + id))};
        std::vector<OutgoingRecord> p = {
            Profile("u" + id, Value::String("x@x.io"), Value::String("pro"), Value::Int64(b))};
        EXPECT_THAT(Codes((*events)->SendBatch(e)), ElementsAre(kOk));
        EXPECT_THAT(Codes((*profiles)->SendBatch(p)), ElementsAre(kOk));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_THAT(fake_->Events(), SizeIs(20));
  EXPECT_EQ(fake_->Profiles().size(), 20u);
  EXPECT_EQ(fake_->request_count(), 40);
}

// The fake itself, spoken to directly: the protocol details the destination never exercises.
class FakeMixpanelServerTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(fake_.Start().ok()); }

  HttpResponse Post(const std::string& target, const std::string& body,
                    const std::string& auth = MixpanelBasicAuth(kToken, ""),
                    const std::string& type = "application/json") {
    HttpRequest req;
    req.url = fake_.BaseUrl() + target;
    req.body = body;
    req.headers.emplace_back("Content-Type", type);
    if (!auth.empty()) req.headers.emplace_back("Authorization", auth);
    absl::StatusOr<HttpResponse> resp = http_->Send(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : HttpResponse{};
  }

  FakeMixpanelServer fake_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

TEST_F(FakeMixpanelServerTest, ImportAcceptsNdjsonAndDropsInvalidEventsWithoutStrict) {
  std::string good =
      R"({"event":"A","properties":{"time":1700000000,"distinct_id":"u","$insert_id":"i-1"}})";
  std::string bad = R"({"event":"A","properties":{"distinct_id":"u","$insert_id":"i-2"}})";
  HttpResponse r = Post("/import", good + "\n" + bad + "\n", MixpanelBasicAuth(kToken, ""),
                        "application/x-ndjson");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body)["num_records_imported"], 1);
  r = Post("/import?strict=1", "[" + good + "," + bad + "]");
  EXPECT_EQ(r.status, 400);
  json body = json::parse(r.body);
  EXPECT_EQ(body["num_records_imported"], 1);
  ASSERT_EQ(body["failed_records"].size(), 1u);
  EXPECT_EQ(body["failed_records"][0]["index"], 1);
  EXPECT_EQ(body["failed_records"][0]["insert_id"], "i-2");
  EXPECT_EQ(body["failed_records"][0]["field"], "properties.time");
  // The same event three times (seconds or milliseconds alike) is ingested once.
  std::string in_ms =
      R"({"event":"A","properties":{"time":1700000000000,"distinct_id":"u","$insert_id":"i-1"}})";
  Post("/import?strict=1", "[" + in_ms + "]");
  EXPECT_THAT(fake_.Events(), SizeIs(1));
  EXPECT_EQ(fake_.duplicate_count(), 2);

  EXPECT_EQ(Post("/import", "[]", "").status, 401);
  EXPECT_EQ(Post("/import", "[]", MixpanelBasicAuth(kToken, "pw")).status, 401);
  EXPECT_EQ(Post("/import", "[]", MixpanelBasicAuth(kUser, kSecret)).status, 401);  // no project_id
  EXPECT_EQ(Post("/import?project_id=4242", "[]", MixpanelBasicAuth(kUser, kSecret)).status, 200);
  EXPECT_EQ(Post("/import", "[]", MixpanelBasicAuth(kToken, ""), "text/plain").status, 400);
  EXPECT_EQ(Post("/import", "[{", MixpanelBasicAuth(kToken, "")).status, 400);
  EXPECT_EQ(Post("/track", "[]").status, 404);
  EXPECT_EQ(fake_.unauthorized_count(), 3);
}

TEST_F(FakeMixpanelServerTest, EngageOperations) {
  auto update = [](const std::string& op, json value) {
    return json{{"$token", kToken}, {"$distinct_id", "u1"}, {op, std::move(value)}};
  };
  json ops = json::array({update("$set", {{"plan", "pro"}, {"tags", {"a"}}}),
                          update("$set_once", {{"plan", "free"}, {"first", "x"}}),
                          update("$add", {{"n", 2}}), update("$add", {{"n", 3}}),
                          update("$union", {{"tags", {"a", "b"}}}),
                          update("$append", {{"tags", "c"}}), update("$remove", {{"tags", "a"}})});
  HttpResponse r = Post("/engage", ops.dump(), "");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "1");  // terse without verbose=1
  json profile = fake_.Profiles()["u1"];
  EXPECT_EQ(profile["plan"], "pro");
  EXPECT_EQ(profile["first"], "x");
  EXPECT_EQ(profile["n"], 5);
  EXPECT_EQ(profile["tags"], json({"b", "c"}));
  EXPECT_TRUE(profile.contains("$last_seen"));  // no $ignore_time

  auto error_of = [&](const json& u) {
    HttpResponse resp = Post("/engage?verbose=1", json::array({u}).dump(), "");
    EXPECT_EQ(resp.status, 200);
    json b = json::parse(resp.body);
    EXPECT_EQ(b["status"], 0) << resp.body;
    return b["error"].is_string() ? b["error"].get<std::string>() : "";
  };
  EXPECT_THAT(error_of({{"$distinct_id", "u1"}, {"$set", {{"a", 1}}}}), HasSubstr("$token"));
  EXPECT_THAT(error_of({{"$token", kToken}, {"$set", {{"a", 1}}}}), HasSubstr("$distinct_id"));
  json two = update("$set", {{"a", 1}});
  two["$unset"] = {"b"};
  EXPECT_THAT(error_of(two), HasSubstr("one operation"));
  EXPECT_THAT(error_of(update("$add", {{"n", "x"}})), HasSubstr("not a number"));
  EXPECT_THAT(error_of(update("$unset", "plan")), HasSubstr("list"));
  EXPECT_THAT(error_of(json{{"$token", kToken}, {"$distinct_id", "u1"}}),
              HasSubstr("no operation"));
  EXPECT_EQ(fake_.Profiles()["u1"]["n"], 5);  // nothing of the failed requests applied

  HttpResponse del = Post("/engage?verbose=1", json::array({update("$delete", "null")}).dump(), "");
  EXPECT_EQ(json::parse(del.body)["status"], 1);
  EXPECT_FALSE(fake_.Profiles().contains("u1"));
}

TEST(MixpanelHelpersTest, Timestamps) {
  int64_t ms = 0;
  ASSERT_TRUE(ParseMixpanelTimestampMs("2024-05-01T12:00:00Z", &ms));
  EXPECT_EQ(ms, 1714564800000);
  ASSERT_TRUE(ParseMixpanelTimestampMs("2024-05-01 12:00:00.25", &ms));
  EXPECT_EQ(ms, 1714564800250);
  ASSERT_TRUE(ParseMixpanelTimestampMs("2024-05-01T14:00:00.123456+02:00", &ms));
  EXPECT_EQ(ms, 1714564800123);
  ASSERT_TRUE(ParseMixpanelTimestampMs("2024-05-01", &ms));
  EXPECT_EQ(ms, 1714521600000);
  EXPECT_FALSE(ParseMixpanelTimestampMs("05/01/2024", &ms));
  EXPECT_FALSE(ParseMixpanelTimestampMs("2024-05-01T12", &ms));
}

TEST(MixpanelHelpersTest, Placeholders) {
  for (const char* id : {"null", "NULL", " anon ", "undefined", "None", "n/a", "lmy47d",
                         "00000000-0000-0000-0000-000000000000"}) {
    EXPECT_TRUE(IsMixpanelPlaceholderId(id)) << id;
  }
  for (const char* id : {"", "u_1", "nullable", "0"}) {
    EXPECT_FALSE(IsMixpanelPlaceholderId(id)) << id;
  }
  EXPECT_EQ(MixpanelInsertId("a"), MixpanelInsertId("a"));
  EXPECT_NE(MixpanelInsertId("a"), MixpanelInsertId("b"));
}

}  // namespace
}  // namespace backflow
