#include "backflow/destinations/meta_capi/meta_capi_destination.h"

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/destination.h"
#include "backflow/destinations/meta_capi/fake_meta_capi_server.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::SizeIs;
using json = nlohmann::json;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;

constexpr char kToken[] = "test_access_token";
constexpr char kPixel[] = "1234567890";
// Meta's documented examples (customer information parameters): the
// normalised value and its SHA-256.
constexpr char kPersonEmailHash[] =
    "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345";  // person@example.com
constexpr char kUkPhoneHash[] =
    "dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383";  // 448444124653

std::string Sha(const std::string& s) { return HexEncode(Sha256(s)); }

std::vector<absl::StatusCode> Codes(const std::vector<absl::Status>& statuses) {
  std::vector<absl::StatusCode> out;
  for (const absl::Status& s : statuses) out.push_back(s.code());
  return out;
}

Value Ts(Clock::TimePoint t) { return Value::Text(ValueType::kTimestamp, FormatIso8601(t)); }

class MetaCapiDestinationTest : public ::testing::Test {
 protected:
  void SetUp() override { StartFake({}); }

  void StartFake(FakeMetaCapiOptions options) {
    if (options.clock == nullptr) options.clock = &clock_;
    fake_ = std::make_unique<FakeMetaCapiServer>(std::move(options));
    ASSERT_TRUE(fake_->Start().ok());
  }

  json Settings(json extra = json::object()) {
    json s = {{"pixel_id", kPixel}, {"access_token", kToken}, {"base_url", fake_->BaseUrl()}};
    for (auto& [k, v] : extra.items()) s[k] = v;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Destination>> Create(json settings) {
    std::vector<std::string> problems = CheckSettings(def_.settings, settings);
    if (!problems.empty()) return absl::InvalidArgumentError(problems.front());
    return def_.create(settings, ConnectorEnv{http_.get(), &clock_});
  }

  // A session of send_event with the given field layout.
  std::unique_ptr<ActionSession> Session(std::vector<std::string> fields,
                                         json extra = json::object()) {
    absl::StatusOr<std::unique_ptr<Destination>> dest = Create(Settings(std::move(extra)));
    EXPECT_TRUE(dest.ok()) << dest.status();
    if (!dest.ok()) return nullptr;
    dest_ = *std::move(dest);
    SessionOptions opts;
    opts.mapping = "purchases_to_meta";
    opts.run_id = 3;
    opts.action = def_.FindAction("send_event");
    EXPECT_NE(opts.action, nullptr);
    opts.layout.fields = std::move(fields);
    absl::StatusOr<std::unique_ptr<ActionSession>> session = dest_->StartSession(opts);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *std::move(session) : nullptr;
  }

  // Layout {event_name, event_time, action_source, user_data.em, custom_data.value}.
  std::unique_ptr<ActionSession> PurchaseSession(json extra = json::object()) {
    return Session(
        {"event_name", "event_time", "action_source", "user_data.em", "custom_data.value"},
        std::move(extra));
  }

  OutgoingRecord Purchase(const std::string& key, const std::string& email, hours age = hours(1)) {
    OutgoingRecord r;
    r.change = ChangeKind::kAdded;
    r.key = key;
    r.dedup_id = "dedup" + key;
    r.values = {Value::String("Purchase"), Ts(clock_.Now() - age),
                Value::String("system_generated"), Value::String(email), Value::Double(10.5)};
    return r;
  }

  std::vector<OutgoingRecord> Purchases(int n) {
    std::vector<OutgoingRecord> out;
    for (int i = 1; i <= n; ++i) {
      out.push_back(Purchase(std::to_string(i), "user" + std::to_string(i) + "@example.com"));
    }
    return out;
  }

  DestinationDefinition def_ = MetaCapiDestinationDefinition();
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeMetaCapiServer> fake_;
  std::unique_ptr<Destination> dest_;
};

TEST_F(MetaCapiDestinationTest, DefinitionDeclaresSettingsAndAction) {
  EXPECT_EQ(def_.type, "meta_capi");
  const SettingSpec* pixel = FindSetting(def_.settings, "pixel_id");
  ASSERT_NE(pixel, nullptr);
  EXPECT_TRUE(pixel->required);
  const SettingSpec* token = FindSetting(def_.settings, "access_token");
  ASSERT_NE(token, nullptr);
  EXPECT_TRUE(token->required);
  EXPECT_TRUE(token->secret);
  const SettingSpec* version = FindSetting(def_.settings, "api_version");
  ASSERT_NE(version, nullptr);
  EXPECT_EQ(version->default_value, kMetaApiVersion);
  EXPECT_EQ(std::string(kMetaApiVersion), "v24.0");
  ASSERT_NE(FindSetting(def_.settings, "test_event_code"), nullptr);
  EXPECT_FALSE(FindSetting(def_.settings, "test_event_code")->required);
  const SettingSpec* base = FindSetting(def_.settings, "base_url");
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(base->default_value, "https://graph.facebook.com");
  for (const char* s : {"max_requests_per_second", "timeout_ms", "max_retries", "max_retry_wait_s",
                        "concurrency", "hash_external_id"}) {
    EXPECT_NE(FindSetting(def_.settings, s), nullptr) << s;
  }

  const ActionSpec* send = def_.FindAction("send_event");
  ASSERT_NE(send, nullptr);
  EXPECT_THAT(send->selections, ElementsAre(RecordSelection::kAdded));
  EXPECT_EQ(send->max_batch_records, 1000);
  EXPECT_LE(send->default_batch_records, 1000);
  for (const char* f : {"event_name", "event_time", "action_source"}) {
    ASSERT_NE(send->FindField(f), nullptr) << f;
    EXPECT_TRUE(send->FindField(f)->required) << f;
  }
  EXPECT_EQ(send->FindField("event_time")->type, FieldType::kTimestamp);
  EXPECT_THAT(send->FindField("action_source")->allowed_values,
              ::testing::IsSupersetOf({"website", "app", "physical_store", "system_generated",
                                       "email", "chat", "phone_call", "other"}));
  ASSERT_NE(send->FindField("event_id"), nullptr);
  EXPECT_FALSE(send->FindField("event_id")->required);
  EXPECT_EQ(send->FindField("user_data.em")->default_column, "email");
  EXPECT_TRUE(send->AcceptsField("user_data.madid"));
  EXPECT_TRUE(send->AcceptsField("custom_data.content_ids"));
  EXPECT_TRUE(send->AcceptsField("app_data.extinfo"));
  EXPECT_FALSE(send->AcceptsField("properties.x"));
}

TEST_F(MetaCapiDestinationTest, SendsEventsAndMetaAcknowledgesThem) {
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Purchase("1", " Person@Example.com "),
                                       Purchase("2", "b@example.com")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));

  std::vector<MetaRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].target, fmt::format("/v24.0/{}/events?access_token={}", kPixel, kToken));
  EXPECT_EQ(reqs[0].access_token, kToken);
  EXPECT_EQ(reqs[0].reply_status, 200);
  json body = json::parse(reqs[0].body);
  EXPECT_FALSE(body.contains("test_event_code"));
  EXPECT_FALSE(body.contains("access_token"));
  ASSERT_EQ(body["data"].size(), 2u);
  const int64_t expected_time = static_cast<int64_t>(ToUnixSeconds(clock_.Now() - hours(1)));
  EXPECT_EQ(body["data"][0], json({{"event_name", "Purchase"},
                                   {"event_time", expected_time},
                                   {"action_source", "system_generated"},
                                   {"event_id", MetaEventId("dedup1")},
                                   {"user_data", {{"em", json::array({kPersonEmailHash})}}},
                                   {"custom_data", {{"value", 10.5}}}}));
  EXPECT_EQ(MetaEventId("dedup1"), "bf-dedup1");

  std::vector<json> events = fake_->Events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1]["user_data"]["em"], json::array({Sha("b@example.com")}));
  EXPECT_EQ(fake_->duplicate_count(), 0);
  EXPECT_EQ(clock_.total_slept(), seconds(0));
}

TEST_F(MetaCapiDestinationTest, HashesContactInformationAsMetaDocuments) {
  auto session =
      Session({"event_name", "event_time", "action_source", "user_data.em", "user_data.ph",
               "user_data.fn", "user_data.ln", "user_data.ge", "user_data.db", "user_data.ct",
               "user_data.st", "user_data.zp", "user_data.country", "user_data.external_id"});
  ASSERT_NE(session, nullptr);
  OutgoingRecord r;
  r.key = "o1";
  r.dedup_id = "d1";
  r.values = {Value::String("Lead"),
              Ts(clock_.Now() - minutes(5)),
              Value::String("phone_call"),
              Value::String("  Person@Example.com"),
              Value::String("+44 844 412 4653"),
              Value::String(" Mary-Ann "),
              Value::String("O'Neil"),
              Value::String("Female"),
              Value::Text(ValueType::kDate, "1990-05-17"),
              Value::String("New York"),
              Value::String("California"),
              Value::String("94107-1234"),
              Value::String("United States"),
              Value::String(" cust-42 ")};
  std::vector<OutgoingRecord> batch = {r};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  ASSERT_THAT(fake_->Events(), SizeIs(1));
  json user = fake_->Events()[0]["user_data"];
  EXPECT_EQ(user, json({{"em", json::array({kPersonEmailHash})},
                        {"ph", json::array({kUkPhoneHash})},
                        {"fn", Sha("maryann")},
                        {"ln", Sha("oneil")},
                        {"ge", Sha("f")},
                        {"db", Sha("19900517")},
                        {"ct", Sha("newyork")},
                        {"st", Sha("ca")},
                        {"zp", Sha("94107")},
                        {"country", Sha("us")},
                        {"external_id", json::array({Sha("cust-42")})}}));
}

TEST_F(MetaCapiDestinationTest, NormalisationRules) {
  EXPECT_EQ(*MetaNormalizeUserValue("em", " Person@Example.COM\t"), "person@example.com");
  EXPECT_EQ(*MetaNormalizeUserValue("ph", "+44 844 412 4653"), "448444124653");
  EXPECT_EQ(*MetaNormalizeUserValue("ph", "0044 (844) 412-4653"), "448444124653");
  EXPECT_EQ(*MetaNormalizeUserValue("fn", "José"), "josé");
  EXPECT_EQ(*MetaNormalizeUserValue("ge", "M"), "m");
  EXPECT_EQ(*MetaNormalizeUserValue("ge", "unknown"), "");
  EXPECT_EQ(*MetaNormalizeUserValue("db", "19851231"), "19851231");
  EXPECT_EQ(MetaNormalizeUserValue("db", "12/31/1985").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*MetaNormalizeUserValue("st", "NY"), "ny");
  EXPECT_EQ(*MetaNormalizeUserValue("st", "New Hampshire"), "nh");
  EXPECT_EQ(*MetaNormalizeUserValue("st", "Île-de-France"), "îledefrance");
  EXPECT_EQ(*MetaNormalizeUserValue("ct", "ZÜRICH"), "zürich");
  EXPECT_EQ(*MetaNormalizeUserValue("zp", "SW1A 1AA"), "sw1a1aa");
  EXPECT_EQ(*MetaNormalizeUserValue("zp", "941071234", "us"), "94107");
  EXPECT_EQ(*MetaNormalizeUserValue("zp", "941071234", "gb"), "941071234");
  EXPECT_EQ(*MetaNormalizeUserValue("country", "DE"), "de");
  EXPECT_EQ(*MetaNormalizeUserValue("country", "United Kingdom"), "gb");
  absl::StatusOr<std::string> narnia = MetaNormalizeUserValue("country", "Narnia");
  EXPECT_EQ(narnia.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(narnia.status().message(), HasSubstr("2-letter"));
  EXPECT_TRUE(IsMetaHashed(kPersonEmailHash));
  EXPECT_FALSE(IsMetaHashed("person@example.com"));
}

TEST_F(MetaCapiDestinationTest, AlreadyHashedValuesAreNeverHashedTwice) {
  auto session = Session({"event_name", "event_time", "action_source", "user_data.em",
                          "user_data.ph", "user_data.external_id"});
  ASSERT_NE(session, nullptr);
  std::string upper = kUkPhoneHash;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  OutgoingRecord r;
  r.key = "o1";
  r.dedup_id = "d1";
  r.values = {Value::String("Purchase"), Ts(clock_.Now()), Value::String("email"),
              // A list of emails from a JSON column: one raw, one pre-hashed.
              Value::Text(ValueType::kJson,
                          json::array({"Person@Example.com ", Sha("other@example.com")}).dump()),
              Value::String(upper), Value::String(Sha("cust-1"))};
  std::vector<OutgoingRecord> batch = {r};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  json user = fake_->Events().at(0)["user_data"];
  EXPECT_EQ(user["em"], json::array({kPersonEmailHash, Sha("other@example.com")}));
  EXPECT_EQ(user["ph"], json::array({kUkPhoneHash}));
  EXPECT_EQ(user["external_id"], json::array({Sha("cust-1")}));
}

TEST_F(MetaCapiDestinationTest, IpUserAgentAndClickIdsAreSentUnhashed) {
  auto session =
      Session({"event_name", "event_time", "action_source", "event_source_url",
               "user_data.client_ip_address", "user_data.client_user_agent", "user_data.fbc",
               "user_data.fbp", "user_data.external_id", "user_data.lead_id"},
              {{"hash_external_id", false}});
  ASSERT_NE(session, nullptr);
  OutgoingRecord r;
  r.key = "o1";
  r.dedup_id = "d1";
  r.values = {Value::String("ViewContent"),
              Ts(clock_.Now()),
              Value::String("website"),
              Value::String("https://shop.example/p/1"),
              Value::String("203.0.113.7"),
              Value::String("Mozilla/5.0 (X11; Linux x86_64)"),
              Value::String("fb.1.1554763741205.AbCdEfGh"),
              Value::String("fb.1.1558571054389.1098115397"),
              Value::String("cust-7"),
              Value::Int64(1234567)};
  std::vector<OutgoingRecord> batch = {r};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  json ev = fake_->Events().at(0);
  EXPECT_EQ(ev["event_source_url"], "https://shop.example/p/1");
  EXPECT_EQ(ev["user_data"], json({{"client_ip_address", "203.0.113.7"},
                                   {"client_user_agent", "Mozilla/5.0 (X11; Linux x86_64)"},
                                   {"fbc", "fb.1.1554763741205.AbCdEfGh"},
                                   {"fbp", "fb.1.1558571054389.1098115397"},
                                   {"external_id", json::array({"cust-7"})},
                                   {"lead_id", 1234567}}));
}

TEST_F(MetaCapiDestinationTest, BadEventIsIsolatedByBisecting) {
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(8);
  fake_->RejectEventId(MetaEventId(batch[4].dedup_id));
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  std::vector<absl::StatusCode> codes = Codes(*result);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(codes[i], i == 4 ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kOk) << i;
  }
  // The Graph error of the request carrying only that event.
  const std::string message((*result)[4].message());
  EXPECT_THAT(message, HasSubstr("Invalid parameter (code 100, HTTP 400)"));
  EXPECT_THAT(message, HasSubstr("data[0]: The event with event_id bf-dedup5 was rejected"));
  EXPECT_THAT(message, HasSubstr("fbtrace_id Fake"));
  EXPECT_EQ(fake_->Events().size(), 7u);
  // 8 -> 400; [1..4] ok; [5..8] -> 400; [5,6] -> 400; [5] -> 400; [6] ok; [7,8] ok.
  std::vector<size_t> sizes;
  for (const MetaRequest& r : fake_->Requests()) sizes.push_back(r.event_count);
  EXPECT_THAT(sizes, ElementsAre(8, 4, 4, 2, 1, 1, 2));
  EXPECT_EQ(clock_.total_slept(), seconds(0));  // a rejected event is not retried
  EXPECT_EQ(fake_->duplicate_count(), 0);
}

TEST_F(MetaCapiDestinationTest, RateLimitCodesAreRetriedWithBackoff) {
  fake_->EnqueueReply(FakeMetaReply::RateLimited(17));
  fake_->EnqueueReply(FakeMetaReply::RateLimited(613));
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(3);
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk, absl::StatusCode::kOk));
  std::vector<MetaRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].reply_status, 400);
  EXPECT_EQ(reqs[1].reply_status, 400);
  EXPECT_EQ(reqs[2].reply_status, 200);
  EXPECT_EQ(reqs[0].event_ids, reqs[2].event_ids);
  EXPECT_EQ(fake_->Events().size(), 3u);
  // Exponential backoff with full jitter: at most 1 s + 2 s.
  EXPECT_LE(clock_.total_slept(), seconds(3));
}

TEST_F(MetaCapiDestinationTest, RateLimitWaitFromBusinessUseCaseHeaderIsHonoured) {
  fake_->EnqueueReply(FakeMetaReply::RateLimited(80004, /*regain_minutes=*/2));
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(1);
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk));
  EXPECT_EQ(clock_.total_slept(), minutes(2));
  EXPECT_EQ(fake_->request_count(), 2);
}

TEST_F(MetaCapiDestinationTest, RateLimitExhaustedStopsTheRunWithResourceExhausted) {
  fake_->EnqueueReplies(3, FakeMetaReply::RateLimited(4));
  auto session = PurchaseSession({{"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(2);
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(result.status().message(), HasSubstr("code 4"));
  EXPECT_THAT(result.status().message(), HasSubstr("Application request limit reached"));
  EXPECT_EQ(fake_->request_count(), 3);
  EXPECT_TRUE(fake_->Events().empty());
}

TEST_F(MetaCapiDestinationTest, LongThrottleIsNotWaitedOutAndHoldsOtherSessions) {
  // Meta says access returns in 60 minutes, longer than max_retry_wait_s.
  fake_->EnqueueReply(FakeMetaReply::RateLimited(80004, /*regain_minutes=*/60));
  auto session = PurchaseSession({{"max_retry_wait_s", 120}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(2);
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(RetryAfter(result.status()).has_value());
  EXPECT_EQ(*RetryAfter(result.status()), minutes(60));
  EXPECT_EQ(fake_->request_count(), 1);
  EXPECT_EQ(clock_.total_slept(), seconds(0));

  // Another session of the same destination does not call Meta while held.
  SessionOptions opts;
  opts.action = def_.FindAction("send_event");
  opts.layout.fields = {"event_name", "event_time", "action_source", "user_data.em",
                        "custom_data.value"};
  auto other = dest_->StartSession(opts);
  ASSERT_TRUE(other.ok());
  auto held = (*other)->SendBatch(batch);
  EXPECT_EQ(held.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(fake_->request_count(), 1);
  // Once the hour has passed, it sends again.
  clock_.Advance(minutes(61));
  batch = {Purchase("9", "late@example.com")};
  auto later = (*other)->SendBatch(batch);
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_THAT(Codes(*later), ElementsAre(absl::StatusCode::kOk));
}

TEST_F(MetaCapiDestinationTest, ServerErrorsAreRetried) {
  fake_->EnqueueReply(FakeMetaReply::Status(500));
  fake_->EnqueueReply(FakeMetaReply::GraphError(400, 2, 0, "Service temporarily unavailable",
                                                /*is_transient=*/true));
  fake_->EnqueueReply(FakeMetaReply::Status(503, "<html>upstream</html>"));
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(2);
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  EXPECT_EQ(fake_->request_count(), 4);
  EXPECT_EQ(fake_->Events().size(), 2u);
}

TEST_F(MetaCapiDestinationTest, ServerErrorsExhaustedFailRecordsAsUnavailable) {
  fake_->EnqueueReplies(3, FakeMetaReply::Status(502));
  auto session = PurchaseSession({{"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(2);
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kUnavailable, absl::StatusCode::kUnavailable));
  EXPECT_THAT((*result)[0].message(), HasSubstr("after 3 attempts"));
  EXPECT_EQ(fake_->request_count(), 3);
}

TEST_F(MetaCapiDestinationTest, InvalidTokenStopsTheRun) {
  auto session = PurchaseSession({{"access_token", "EAAB-not-valid"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(4);
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(result.status().message(), HasSubstr("access_token"));
  EXPECT_THAT(result.status().message(), HasSubstr("code 190"));
  EXPECT_THAT(result.status().message(), Not(HasSubstr("EAAB-not-valid")));
  EXPECT_EQ(fake_->request_count(), 1);  // not bisected, not retried
  EXPECT_EQ(fake_->unauthorized_count(), 1);
  // The session stays stopped.
  auto again = session->SendBatch(batch);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(fake_->request_count(), 1);
}

TEST_F(MetaCapiDestinationTest, ExpiredTokenErrorStopsTheRun) {
  fake_->EnqueueReply(FakeMetaReply::GraphError(
      400, 190, 463, "Error validating access token: Session has expired"));
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(2);
  auto result = session->SendBatch(batch);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(result.status().message(), HasSubstr("Session has expired"));
  EXPECT_THAT(result.status().message(), HasSubstr("subcode 463"));
}

TEST_F(MetaCapiDestinationTest, PermissionErrorStopsTheRun) {
  FakeMetaCapiOptions options;
  options.denied_tokens = {"token_without_access"};
  StartFake(options);
  auto session = PurchaseSession({{"access_token", "token_without_access"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(4);
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(result.status().message(), HasSubstr("(#200) Permissions error"));
  EXPECT_THAT(result.status().message(), HasSubstr(kPixel));
  EXPECT_EQ(fake_->request_count(), 1);
}

TEST_F(MetaCapiDestinationTest, UnknownPixelStopsTheRunWithoutBisecting) {
  auto session = PurchaseSession({{"pixel_id", "999"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(4);
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("pixel_id"));
  EXPECT_THAT(result.status().message(), HasSubstr("subcode 33"));
  EXPECT_EQ(fake_->request_count(), 1);
}

TEST_F(MetaCapiDestinationTest, OldEventTimeIsRejectedLocallyAndNotSent) {
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Purchase("1", "a@example.com", hours(8 * 24)),
                                       Purchase("2", "b@example.com", hours(6 * 24))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kInvalidArgument, absl::StatusCode::kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("8.0 days ago"));
  EXPECT_THAT((*result)[0].message(), HasSubstr("older than 7 days"));
  ASSERT_EQ(fake_->request_count(), 1);
  EXPECT_EQ(fake_->Requests()[0].event_count, 1u);
  EXPECT_EQ(fake_->Events().size(), 1u);
}

TEST_F(MetaCapiDestinationTest, EventMetaFindsTooOldFailsWithItsSubcode) {
  // Meta's clock is a day ahead of ours: an event 6.5 days old by our clock
  // is 7.5 days old for Meta, which refuses the request.
  FakeClock meta_clock(clock_.Now() + hours(24));
  FakeMetaCapiOptions options;
  options.clock = &meta_clock;
  StartFake(options);
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Purchase("1", "a@example.com", hours(156)),
                                       Purchase("2", "b@example.com", hours(1))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kInvalidArgument, absl::StatusCode::kOk));
  EXPECT_THAT((*result)[0].message(), HasSubstr("subcode 2804003"));
  EXPECT_THAT((*result)[0].message(), HasSubstr("Event Timestamp Too Old"));
  EXPECT_EQ(fake_->Events().size(), 1u);
}

TEST_F(MetaCapiDestinationTest, RetriedEventKeepsItsEventIdAndIsDeduplicated) {
  // Meta stores the events but the reply is lost (a 500 after applying).
  FakeMetaReply lost = FakeMetaReply::Status(500);
  lost.apply = true;
  fake_->EnqueueReply(lost);
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(2);
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  std::vector<MetaRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].event_ids, reqs[1].event_ids);
  EXPECT_EQ(fake_->Events().size(), 2u);
  EXPECT_EQ(fake_->duplicate_count(), 2);

  // A later run re-sending the same rows (e.g. after a crash) is deduplicated too.
  auto rerun = PurchaseSession();
  ASSERT_NE(rerun, nullptr);
  result = rerun->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(fake_->Events().size(), 2u);
  EXPECT_EQ(fake_->duplicate_count(), 4);
  EXPECT_EQ(fake_->EventIdCounts()["Purchase/bf-dedup1"], 3);
}

TEST_F(MetaCapiDestinationTest, MappedEventIdIsUsed) {
  auto session = Session({"event_name", "event_time", "action_source", "event_id", "user_data.em"});
  ASSERT_NE(session, nullptr);
  OutgoingRecord r;
  r.key = "o1";
  r.dedup_id = "d1";
  r.values = {Value::String("Purchase"), Ts(clock_.Now()), Value::String("physical_store"),
              Value::Int64(12345), Value::String("a@example.com")};
  std::vector<OutgoingRecord> batch = {r};
  ASSERT_TRUE(session->SendBatch(batch).ok());
  EXPECT_EQ(fake_->Events().at(0)["event_id"], "12345");
}

TEST_F(MetaCapiDestinationTest, EventsReceivedMismatchFailsTheRequestsRecords) {
  FakeMetaReply partial = FakeMetaReply::Status(200, R"({"events_received":1,"messages":[]})");
  partial.apply = false;
  fake_->EnqueueReply(partial);
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(2);
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kUnavailable, absl::StatusCode::kUnavailable));
  EXPECT_THAT((*result)[0].message(), HasSubstr("acknowledged 1 of the 2 events"));
}

TEST_F(MetaCapiDestinationTest, LocalValidationFailsRecordsWithoutSendingThem) {
  auto session = Session({"event_name", "event_time", "action_source", "event_source_url",
                          "user_data.em", "user_data.client_user_agent", "user_data.db"});
  ASSERT_NE(session, nullptr);
  auto rec = [&](std::string key, Value name, Value source, Value url, Value email, Value ua,
                 Value db = Value::Null()) {
    OutgoingRecord r;
    r.key = key;
    r.dedup_id = "d" + key;
    r.values = {std::move(name),  Ts(clock_.Now()), std::move(source), std::move(url),
                std::move(email), std::move(ua),    std::move(db)};
    return r;
  };
  std::vector<OutgoingRecord> batch = {
      // Website events need the URL and the user agent.
      rec("1", Value::String("Purchase"), Value::String("website"), Value::Null(),
          Value::String("a@example.com"), Value::Null()),
      // No customer information at all.
      rec("2", Value::String("Purchase"), Value::String("email"), Value::Null(), Value::Null(),
          Value::Null()),
      // No event name.
      rec("3", Value::String(" "), Value::String("email"), Value::Null(),
          Value::String("a@example.com"), Value::Null()),
      // An action_source Meta does not know.
      rec("4", Value::String("Purchase"), Value::String("carrier_pigeon"), Value::Null(),
          Value::String("a@example.com"), Value::Null()),
      // A date of birth that is not a date.
      rec("5", Value::String("Purchase"), Value::String("email"), Value::Null(),
          Value::String("a@example.com"), Value::Null(), Value::String("someday")),
      // Valid.
      rec("6", Value::String("Purchase"), Value::String("website"),
          Value::String("https://shop.example/"), Value::String("a@example.com"),
          Value::String("Mozilla/5.0")),
  };
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result),
              ElementsAre(absl::StatusCode::kInvalidArgument, absl::StatusCode::kInvalidArgument,
                          absl::StatusCode::kInvalidArgument, absl::StatusCode::kInvalidArgument,
                          absl::StatusCode::kInvalidArgument, absl::StatusCode::kOk));
  EXPECT_THAT((*result)[0].message(),
              HasSubstr("event_source_url and user_data.client_user_agent"));
  EXPECT_THAT((*result)[1].message(), HasSubstr("no customer information parameter"));
  EXPECT_THAT((*result)[2].message(), HasSubstr("event_name is empty"));
  EXPECT_THAT((*result)[3].message(), HasSubstr("not one of Meta's values"));
  EXPECT_THAT((*result)[4].message(), HasSubstr("user_data.db"));
  ASSERT_EQ(fake_->request_count(), 1);
  EXPECT_EQ(fake_->Requests()[0].event_count, 1u);
  EXPECT_EQ(fake_->rejected_count(), 0);
}

TEST_F(MetaCapiDestinationTest, UpdatedAndDeletedRowsFailPerRecord) {
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(3);
  batch[1].change = ChangeKind::kUpdated;
  batch[2].change = ChangeKind::kDeleted;
  batch[2].values = {Value::String("3")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
                                          absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*result)[1].message(), HasSubstr("records: added"));
}

TEST_F(MetaCapiDestinationTest, TestEventCodeRoutesEventsToTestEvents) {
  auto session = PurchaseSession({{"test_event_code", "TEST12345"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(2);
  ASSERT_TRUE(session->SendBatch(batch).ok());
  EXPECT_EQ(json::parse(fake_->Requests()[0].body)["test_event_code"], "TEST12345");
  EXPECT_TRUE(fake_->Events().empty());
  EXPECT_EQ(fake_->TestEvents().size(), 2u);
  EXPECT_THAT(fake_->TestEventCodes(), ElementsAre("TEST12345"));
}

TEST_F(MetaCapiDestinationTest, MoreThanOneThousandEventsAreSplit) {
  auto session = PurchaseSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = Purchases(1001);
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->size(), 1001u);
  std::vector<size_t> sizes;
  for (const MetaRequest& r : fake_->Requests()) sizes.push_back(r.event_count);
  EXPECT_THAT(sizes, ElementsAre(1000, 1));
  EXPECT_EQ(fake_->Events().size(), 1001u);
}

TEST_F(MetaCapiDestinationTest, ConcurrentSessionsShareTheDestination) {
  auto dest = Create(Settings({{"concurrency", 4}, {"max_requests_per_second", 50}}));
  ASSERT_TRUE(dest.ok()) << dest.status();
  EXPECT_EQ((*dest)->concurrency(), 4);
  // One transient failure somewhere: whichever session gets it retries.
  fake_->EnqueueReply(FakeMetaReply::Status(503));
  SessionOptions opts;
  opts.action = def_.FindAction("send_event");
  opts.layout.fields = {"event_name", "event_time", "action_source", "user_data.em",
                        "custom_data.value"};
  std::vector<std::vector<OutgoingRecord>> batches;
  for (int b = 0; b < 12; ++b) {
    std::vector<OutgoingRecord> batch;
    for (int i = 0; i < 10; ++i) {
      std::string key = std::to_string(b * 10 + i);
      batch.push_back(Purchase(key, "c" + key + "@example.com"));
    }
    batches.push_back(std::move(batch));
  }
  std::vector<std::vector<absl::StatusCode>> codes(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto session = (*dest)->StartSession(opts);
      if (!session.ok()) return;
      for (int b = t; b < 12; b += 4) {
        auto result = (*session)->SendBatch(batches[b]);
        if (!result.ok()) {
          codes[t].push_back(result.status().code());
          continue;
        }
        for (const absl::Status& s : *result) codes[t].push_back(s.code());
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < 4; ++t) {
    EXPECT_THAT(codes[t], SizeIs(30)) << t;
    EXPECT_THAT(codes[t], ::testing::Each(absl::StatusCode::kOk)) << t;
  }
  EXPECT_EQ(fake_->Events().size(), 120u);
  EXPECT_EQ(fake_->duplicate_count(), 0);
  EXPECT_EQ(fake_->request_count(), 13);
}

TEST_F(MetaCapiDestinationTest, UnreachableIsUnavailableAndDoesNotLeakTheToken) {
  auto session = PurchaseSession({{"max_retries", 1}});
  ASSERT_NE(session, nullptr);
  fake_->Stop();
  std::vector<OutgoingRecord> batch = Purchases(1);
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ((*result)[0].code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT((*result)[0].message(), Not(HasSubstr(kToken)));
}

TEST_F(MetaCapiDestinationTest, CheckConnectionReadsThePixel) {
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  EXPECT_TRUE((*dest)->CheckConnection().ok());
  ASSERT_EQ(fake_->request_count(), 1);
  EXPECT_EQ(fake_->Requests()[0].method, "GET");
  EXPECT_EQ(fake_->Requests()[0].path, fmt::format("/v24.0/{}", kPixel));
  EXPECT_TRUE(fake_->Events().empty());

  auto bad_token = Create(Settings({{"access_token", "wrong"}}));
  ASSERT_TRUE(bad_token.ok());
  absl::Status s = (*bad_token)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("access_token"));

  auto bad_pixel = Create(Settings({{"pixel_id", "42"}}));
  ASSERT_TRUE(bad_pixel.ok());
  s = (*bad_pixel)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("pixel_id"));

  auto old_version = Create(Settings({{"api_version", "v2.1"}}));
  ASSERT_TRUE(old_version.ok());
  s = (*old_version)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("api_version"));
  EXPECT_THAT(s.message(), HasSubstr("2635"));

  auto newer = Create(Settings({{"api_version", "v25.0"}}));
  ASSERT_TRUE(newer.ok());
  EXPECT_TRUE((*newer)->CheckConnection().ok());
  EXPECT_EQ(fake_->Requests().back().path, fmt::format("/v25.0/{}", kPixel));

  fake_->Stop();
  s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), Not(HasSubstr(kToken)));
}

TEST_F(MetaCapiDestinationTest, RejectsBadSettings) {
  auto missing_pixel = Create({{"access_token", kToken}});
  EXPECT_EQ(missing_pixel.status().code(), absl::StatusCode::kInvalidArgument);
  auto letters = Create(Settings({{"pixel_id", "my-pixel"}}));
  EXPECT_EQ(letters.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(letters.status().message(), HasSubstr("pixel_id"));
  auto version = Create(Settings({{"api_version", "24"}}));
  EXPECT_EQ(version.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(version.status().message(), HasSubstr("v24.0"));
  auto spaces = Create(Settings({{"access_token", "Bearer abc"}}));
  EXPECT_EQ(spaces.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(spaces.status().message(), Not(HasSubstr("abc")));
}

// ----------------------------------------------------------- the fake itself

class FakeMetaCapiServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeMetaCapiOptions options;
    options.clock = &clock_;
    fake_ = std::make_unique<FakeMetaCapiServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
  }

  HttpResponse Post(const json& body, const std::string& query = "?access_token=test_access_token",
                    const std::string& path = "/v24.0/1234567890/events") {
    HttpRequest req;
    req.method = "POST";
    req.url = fake_->BaseUrl() + path + query;
    req.body = body.dump();
    req.headers.emplace_back("Content-Type", "application/json");
    absl::StatusOr<HttpResponse> r = http_->Send(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  json Event(json user_data, std::string id = "e1", int64_t age_s = 60) {
    return {{"event_name", "Purchase"},
            {"event_time", static_cast<int64_t>(ToUnixSeconds(clock_.Now())) - age_s},
            {"action_source", "system_generated"},
            {"event_id", id},
            {"user_data", std::move(user_data)}};
  }

  static json ErrorOf(const HttpResponse& r) { return json::parse(r.body)["error"]; }

  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeMetaCapiServer> fake_;
};

TEST_F(FakeMetaCapiServerTest, AcceptsTheTokenInTheQueryOrTheBody) {
  json hashed = {{"em", json::array({Sha("a@example.com")})}};
  HttpResponse r = Post({{"data", json::array({Event(hashed)})}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body)["events_received"], 1);
  r = Post({{"data", json::array({Event(hashed, "e2")})}, {"access_token", "test_access_token"}},
           "");
  EXPECT_EQ(r.status, 200);
  r = Post({{"data", json::array({Event(hashed, "e3")})}}, "");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(ErrorOf(r)["code"], 104);
  r = Post({{"data", json::array({Event(hashed, "e4")})}}, "?access_token=nope");
  EXPECT_EQ(ErrorOf(r)["code"], 190);
  EXPECT_EQ(ErrorOf(r)["type"], "OAuthException");
  EXPECT_EQ(fake_->unauthorized_count(), 2);
  EXPECT_EQ(fake_->Events().size(), 2u);
}

TEST_F(FakeMetaCapiServerTest, RejectsTheWholeBatchForOneInvalidEvent) {
  json good = Event({{"em", Sha("a@example.com")}}, "e1");
  json raw_email = Event({{"em", "a@example.com"}}, "e2");
  HttpResponse r = Post({{"data", json::array({good, raw_email})}});
  EXPECT_EQ(r.status, 400);
  json err = ErrorOf(r);
  EXPECT_EQ(err["code"], 100);
  EXPECT_THAT(err["error_user_msg"].get<std::string>(), HasSubstr("data[1]: Unhashed user data"));
  EXPECT_TRUE(err.contains("fbtrace_id"));

  json old = Event({{"ph", Sha("15551234567")}}, "e3", 8 * 24 * 3600);
  r = Post({{"data", json::array({good, old})}});
  EXPECT_EQ(ErrorOf(r)["error_subcode"], 2804003);

  json hashed_fbp = Event({{"fbp", Sha("fb.1.2.3")}}, "e4");
  r = Post({{"data", json::array({hashed_fbp})}});
  EXPECT_EQ(r.status, 400);
  json website = Event({{"em", Sha("a@example.com")}}, "e5");
  website["action_source"] = "website";
  r = Post({{"data", json::array({website})}});
  EXPECT_THAT(ErrorOf(r)["error_user_msg"].get<std::string>(), HasSubstr("event_source_url"));
  json no_user = Event(json::object(), "e6");
  r = Post({{"data", json::array({no_user})}});
  EXPECT_EQ(r.status, 400);
  EXPECT_TRUE(fake_->Events().empty());
  EXPECT_EQ(fake_->rejected_count(), 5);
}

TEST_F(FakeMetaCapiServerTest, DeduplicatesByEventNameAndIdWithinTheWindow) {
  json ev = Event({{"em", Sha("a@example.com")}}, "order-1");
  EXPECT_EQ(Post({{"data", json::array({ev})}}).status, 200);
  json other_name = ev;
  other_name["event_name"] = "Lead";
  HttpResponse r = Post({{"data", json::array({ev, other_name})}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body)["events_received"], 2);  // received, then deduplicated
  EXPECT_EQ(fake_->Events().size(), 2u);
  EXPECT_EQ(fake_->duplicate_count(), 1);
  clock_.Advance(hours(49));
  ev["event_time"] = static_cast<int64_t>(ToUnixSeconds(clock_.Now()));
  EXPECT_EQ(Post({{"data", json::array({ev})}}).status, 200);
  EXPECT_EQ(fake_->Events().size(), 3u);
}

TEST_F(FakeMetaCapiServerTest, EnforcesPathVersionPixelAndBatchSize) {
  json ev = Event({{"em", Sha("a@example.com")}});
  EXPECT_EQ(ErrorOf(Post({{"data", json::array({ev})}}, "?access_token=test_access_token",
                         "/v24.0/1234567890/evnts"))["code"],
            2500);
  EXPECT_EQ(ErrorOf(Post({{"data", json::array({ev})}}, "?access_token=test_access_token",
                         "/v9.0/1234567890/events"))["code"],
            2635);
  json unknown = ErrorOf(
      Post({{"data", json::array({ev})}}, "?access_token=test_access_token", "/v24.0/555/events"));
  EXPECT_EQ(unknown["code"], 100);
  EXPECT_EQ(unknown["error_subcode"], 33);
  json many = json::array();
  for (int i = 0; i < 1001; ++i) many.push_back(Event({{"em", Sha("a")}}, std::to_string(i)));
  EXPECT_EQ(Post({{"data", many}}).status, 400);
  EXPECT_EQ(Post({{"data", json::array()}}).status, 400);
  EXPECT_TRUE(fake_->Events().empty());
}

}  // namespace
}  // namespace backflow
