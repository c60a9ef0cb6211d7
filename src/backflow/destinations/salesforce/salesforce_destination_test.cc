#include "backflow/destinations/salesforce/salesforce_destination.h"

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/destinations/destination.h"
#include "backflow/destinations/salesforce/fake_salesforce_server.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
using json = nlohmann::json;
using Code = absl::StatusCode;

constexpr char kConsumerKey[] = "3MVG9fake.consumer.key";
constexpr char kUser[] = "integration@acme.test";

const std::vector<std::string> kContactFields = {"Warehouse_Id__c", "LastName", "Email", "Plan__c"};

// A contact for kContactFields; empty strings are NULL.
OutgoingRecord Contact(const std::string& key, const std::string& last, const std::string& email,
                       const std::string& plan = "", ChangeKind change = ChangeKind::kAdded) {
  auto v = [](const std::string& s) { return s.empty() ? Value::Null() : Value::String(s); };
  OutgoingRecord r;
  r.change = change;
  r.key = key;
  r.dedup_id = "d_" + key;
  r.values = {Value::String(key), v(last), v(email), v(plan)};
  return r;
}

OutgoingRecord Deleted(const std::string& key) {
  OutgoingRecord r;
  r.change = ChangeKind::kDeleted;
  r.key = key;
  r.dedup_id = "d_" + key + "_deleted";
  r.values = {Value::String(key)};
  return r;
}

std::vector<Code> Codes(const std::vector<absl::Status>& statuses) {
  std::vector<Code> out;
  for (const absl::Status& s : statuses) out.push_back(s.code());
  return out;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

class SalesforceDestinationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<RsaKeyPair> pair = GenerateRsaKeyPair();
    ASSERT_TRUE(pair.ok()) << pair.status();
    keys_ = new RsaKeyPair(*pair);
    absl::StatusOr<RsaKeyPair> other = GenerateRsaKeyPair();
    ASSERT_TRUE(other.ok()) << other.status();
    other_keys_ = new RsaKeyPair(*other);
  }
  static void TearDownTestSuite() {
    delete keys_;
    delete other_keys_;
    keys_ = other_keys_ = nullptr;
  }

  void StartFake(FakeSalesforceOptions opts = {}) {
    opts.clock = &clock_;
    fake_ = std::make_unique<FakeSalesforceServer>(opts);
    ASSERT_TRUE(fake_->Start().ok());
    fake_->AddConnectedApp(kConsumerKey, keys_->public_key_pem);
    fake_->AddUser(kUser);
  }

  json Settings(const json& extra = json::object()) {
    json s = {{"consumer_key", kConsumerKey},
              {"username", kUser},
              {"private_key", keys_->private_key_pem},
              {"login_url", fake_->BaseUrl()},
              {"object", "Contact"}};
    for (auto& [k, v] : extra.items()) s[k] = v;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Destination>> Create(json settings) {
    std::vector<std::string> problems = CheckSettings(def_.settings, settings);
    if (!problems.empty()) return absl::InvalidArgumentError(problems.front());
    return def_.create(settings, ConnectorEnv{http_.get(), &clock_});
  }

  absl::StatusOr<std::unique_ptr<ActionSession>> TrySession(std::vector<std::string> fields,
                                                            std::vector<std::string> identity,
                                                            const json& extra = json::object()) {
    absl::StatusOr<std::unique_ptr<Destination>> dest = Create(Settings(extra));
    if (!dest.ok()) return dest.status();
    dest_ = *std::move(dest);
    SessionOptions opts;
    opts.mapping = "to_salesforce";
    opts.run_id = 3;
    opts.action = def_.FindAction("upsert_record");
    opts.layout.fields = std::move(fields);
    opts.layout.identity = std::move(identity);
    return dest_->StartSession(opts);
  }

  std::unique_ptr<ActionSession> ContactSession(const json& extra = json::object()) {
    auto s = TrySession(kContactFields, {"Warehouse_Id__c"}, extra);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  // Live contacts as Warehouse_Id__c -> fields (without the external id).
  std::map<std::string, std::map<std::string, json>> Contacts() {
    std::map<std::string, std::map<std::string, json>> out;
    for (FakeSalesforceRecord& r : fake_->Records("Contact")) {
      std::string key = r.fields["Warehouse_Id__c"].get<std::string>();
      r.fields.erase("Warehouse_Id__c");
      out[key] = r.fields;
    }
    return out;
  }

  std::vector<FakeSalesforceRequest> OfKind(const std::string& kind) {
    std::vector<FakeSalesforceRequest> out;
    for (const FakeSalesforceRequest& r : fake_->Requests()) {
      if (r.kind == kind) out.push_back(r);
    }
    return out;
  }

  std::vector<std::string> Kinds() {
    std::vector<std::string> out;
    for (const FakeSalesforceRequest& r : fake_->Requests()) out.push_back(r.kind);
    return out;
  }

  static RsaKeyPair* keys_;
  static RsaKeyPair* other_keys_;
  DestinationDefinition def_ = SalesforceDestinationDefinition();
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeSalesforceServer> fake_;
  std::unique_ptr<Destination> dest_;
};

RsaKeyPair* SalesforceDestinationTest::keys_ = nullptr;
RsaKeyPair* SalesforceDestinationTest::other_keys_ = nullptr;

// ---------------------------------------------------------------- helpers

TEST(SalesforceHelpersTest, ParsesSforceLimitInfo) {
  auto usage = ParseSforceLimitInfo("api-usage=123/15000");
  ASSERT_TRUE(usage.has_value());
  EXPECT_EQ(usage->used, 123);
  EXPECT_EQ(usage->limit, 15000);
  usage = ParseSforceLimitInfo("per-app-api-usage=2/250(appName=x), api-usage=7/100");
  ASSERT_TRUE(usage.has_value());
  EXPECT_EQ(usage->used, 7);
  EXPECT_FALSE(ParseSforceLimitInfo("api-usage=/15000").has_value());
  EXPECT_FALSE(ParseSforceLimitInfo("nothing").has_value());
}

TEST(SalesforceHelpersTest, QuotesSoqlAndCsv) {
  EXPECT_EQ(SoqlQuote("O'Brien"), "'O\\'Brien'");
  EXPECT_EQ(SoqlQuote("a\\b\n"), "'a\\\\b\\n'");
  EXPECT_EQ(SalesforceCsvCell("plain"), "plain");
  EXPECT_EQ(SalesforceCsvCell("#N/A"), "#N/A");
  EXPECT_EQ(SalesforceCsvCell("a,b"), "\"a,b\"");
  EXPECT_EQ(SalesforceCsvCell("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(SalesforceCsvCell("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(SalesforceCsvCell(" padded"), "\" padded\"");
}

TEST(SalesforceHelpersTest, ParsesCsv) {
  auto rows = ParseSalesforceCsv(
      "\"sf__Id\",\"sf__Created\",Name\r\n\"001\",true,\"a,\"\"b\"\"\"\n"
      "x,,\"multi\nline\"");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_THAT((*rows)[0], ElementsAre("sf__Id", "sf__Created", "Name"));
  EXPECT_THAT((*rows)[1], ElementsAre("001", "true", "a,\"b\""));
  EXPECT_THAT((*rows)[2], ElementsAre("x", "", "multi\nline"));
  EXPECT_FALSE(ParseSalesforceCsv("\"open").ok());
  EXPECT_TRUE(ParseSalesforceCsv("")->empty());
}

// ---------------------------------------------------------------- definition

TEST_F(SalesforceDestinationTest, DefinitionDeclaresSettingsAndAction) {
  EXPECT_EQ(def_.type, "salesforce");
  for (const char* key : {"consumer_key", "username", "private_key", "object"}) {
    const SettingSpec* s = FindSetting(def_.settings, key);
    ASSERT_NE(s, nullptr) << key;
    EXPECT_TRUE(s->required) << key;
  }
  EXPECT_TRUE(FindSetting(def_.settings, "private_key")->secret);
  EXPECT_EQ(FindSetting(def_.settings, "login_url")->default_value, kSalesforceDefaultLoginUrl);
  EXPECT_EQ(FindSetting(def_.settings, "api_version")->default_value, "62.0");
  EXPECT_EQ(FindSetting(def_.settings, "bulk_threshold")->default_value, 2000);
  const SettingSpec* base = FindSetting(def_.settings, "base_url");
  ASSERT_NE(base, nullptr);
  EXPECT_TRUE(base->default_value.is_null());
  EXPECT_THAT(base->description, HasSubstr("instance_url"));
  EXPECT_NE(FindSetting(def_.settings, "max_retries"), nullptr);

  const ActionSpec* a = def_.FindAction("upsert_record");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->max_batch_records, 10'000);
  EXPECT_TRUE(a->Supports(RecordSelection::kAll));
  EXPECT_TRUE(a->Supports(RecordSelection::kDeleted));
  EXPECT_TRUE(a->AcceptsField("Any_Custom__c"));
  ASSERT_TRUE(a->validate);
  EXPECT_TRUE(
      a->validate(json::object(), {{"LastName", "x"}, {"Account.Ext_Acct__c", "y"}}).empty());
  EXPECT_THAT(a->validate(json::object(), {{"Id", "id"}}),
              ElementsAre(HasSubstr("External ID field, not by record Id")));
  EXPECT_THAT(a->validate(json::object(), {{"Account.Ext_Acct__c", "x"}, {"Account.Name", "y"}}),
              ElementsAre(HasSubstr("map only one field under Account")));
  EXPECT_THAT(a->validate(json::object(), {{"Last Name", "x"}, {"a.b.c", "y"}}),
              ElementsAre(HasSubstr("not a Salesforce field API name"),
                          HasSubstr("not a Salesforce field API name")));
}

TEST_F(SalesforceDestinationTest, RejectsBadSettings) {
  StartFake();
  auto object = Create(Settings({{"object", "Contact Person"}}));
  EXPECT_EQ(object.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(Message(object.status()), HasSubstr("object"));
  auto version = Create(Settings({{"api_version", "40.0"}}));
  EXPECT_EQ(version.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(Message(version.status()), HasSubstr("46.0"));
  EXPECT_TRUE(Create(Settings({{"api_version", "v60.0"}})).ok());
  auto key = Create(Settings({{"private_key", "not a key"}}));
  EXPECT_EQ(key.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(Message(key.status()), HasSubstr("private_key"));
  auto threshold = Create(Settings({{"bulk_threshold", 20'000}}));
  EXPECT_EQ(threshold.status().code(), Code::kInvalidArgument);
  auto login = Create(Settings({{"login_url", "login.salesforce.com"}}));
  EXPECT_EQ(login.status().code(), Code::kInvalidArgument);
  // A key pasted with literal "\n" still works.
  std::string one_line;
  for (char c : keys_->private_key_pem) {
    if (c == '\n') {
      one_line += "\\n";
    } else {
      one_line.push_back(c);
    }
  }
  auto pasted = Create(Settings({{"private_key", one_line}}));
  ASSERT_TRUE(pasted.ok()) << pasted.status();
  EXPECT_TRUE((*pasted)->CheckConnection().ok());
}

// ---------------------------------------------------------------- auth

TEST_F(SalesforceDestinationTest, CheckConnectionMintsAJwtAndUsesTheInstanceUrl) {
  StartFake();
  // The token reply names another host for the same server: API calls must go there.
  std::string base = fake_->BaseUrl();
  std::string instance = "http://localhost" + base.substr(base.rfind(':'));
  fake_->SetInstanceUrl(instance);
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok()) << dest.status();
  absl::Status s = (*dest)->CheckConnection();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(fake_->sessions_issued(), 1);

  std::vector<FakeSalesforceRequest> tokens = OfKind("token");
  ASSERT_EQ(tokens.size(), 1u);
  std::string body = tokens[0].body;
  size_t at = body.find("assertion=");
  ASSERT_NE(at, std::string::npos);
  absl::StatusOr<DecodedJwt> jwt = DecodeJwt(body.substr(at + 10));
  ASSERT_TRUE(jwt.ok()) << jwt.status();
  EXPECT_EQ(jwt->header["alg"], "RS256");
  EXPECT_EQ(jwt->claims["iss"], kConsumerKey);
  EXPECT_EQ(jwt->claims["sub"], kUser);
  EXPECT_EQ(jwt->claims["aud"], fake_->BaseUrl());
  EXPECT_LE(jwt->claims["exp"].get<int64_t>() - jwt->claims["iat"].get<int64_t>(), 180);
  EXPECT_GT(jwt->claims["exp"].get<int64_t>(), 1'700'000'000);  // seconds, not milliseconds
  EXPECT_LT(jwt->claims["exp"].get<int64_t>(), 100'000'000'000);

  std::vector<FakeSalesforceRequest> describe = OfKind("describe");
  ASSERT_EQ(describe.size(), 1u);
  EXPECT_EQ(describe[0].target, "/services/data/v62.0/sobjects/Contact/describe");
  EXPECT_THAT(describe[0].host, HasSubstr("localhost:"));
  EXPECT_THAT(describe[0].authorization, HasSubstr("Bearer 00DFAKE"));

  // base_url overrides instance_url.
  fake_->ClearRequests();
  auto proxied = Create(Settings({{"base_url", fake_->BaseUrl() + "/"}}));
  ASSERT_TRUE(proxied.ok()) << proxied.status();
  ASSERT_TRUE((*proxied)->CheckConnection().ok());
  EXPECT_THAT(OfKind("describe")[0].host, HasSubstr("127.0.0.1:"));
}

TEST_F(SalesforceDestinationTest, CheckConnectionExplainsRefusedGrants) {
  StartFake();
  fake_->AddUser("new.user@acme.test", /*pre_authorized=*/false);
  auto unapproved = Create(Settings({{"username", "new.user@acme.test"}}));
  ASSERT_TRUE(unapproved.ok());
  absl::Status s = (*unapproved)->CheckConnection();
  EXPECT_EQ(s.code(), Code::kUnauthenticated);
  EXPECT_THAT(Message(s), HasSubstr("user hasn't approved this consumer"));
  EXPECT_THAT(Message(s), HasSubstr("Admin approved users are pre-authorized"));

  auto client = Create(Settings({{"consumer_key", "3MVG9unknown"}}));
  s = (*client)->CheckConnection();
  EXPECT_EQ(s.code(), Code::kUnauthenticated);
  EXPECT_THAT(Message(s), HasSubstr("Consumer Key"));

  auto wrong_key = Create(Settings({{"private_key", other_keys_->private_key_pem}}));
  s = (*wrong_key)->CheckConnection();
  EXPECT_EQ(s.code(), Code::kUnauthenticated);
  EXPECT_THAT(Message(s), HasSubstr("invalid assertion"));
  EXPECT_THAT(Message(s), HasSubstr("certificate uploaded"));

  auto audience = Create(Settings({{"audience", "https://login.salesforce.com"}}));
  s = (*audience)->CheckConnection();
  EXPECT_EQ(s.code(), Code::kUnauthenticated);
  EXPECT_THAT(Message(s), HasSubstr("https://test.salesforce.com"));

  EXPECT_EQ(fake_->request_count(), 0);  // no API request without a session
  EXPECT_EQ(fake_->CountRequests("token", 400), 4);
}

TEST_F(SalesforceDestinationTest, CheckConnectionReportsAnUnknownObject) {
  StartFake();
  auto dest = Create(Settings({{"object", "Subscription__c"}}));
  ASSERT_TRUE(dest.ok());
  absl::Status s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), Code::kFailedPrecondition);
  EXPECT_THAT(Message(s), HasSubstr("no object \"Subscription__c\""));
}

// ---------------------------------------------------------------- upserts

TEST_F(SalesforceDestinationTest, UpsertsThroughSObjectCollections) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> first = {Contact("w1", "Doe", "ann@x.io", "pro"),
                                       Contact("w2", "Roe", "", "free")};
  auto result = session->SendBatch(first);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));
  auto live = Contacts();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live["w1"], (std::map<std::string, json>{
                            {"LastName", "Doe"}, {"Email", "ann@x.io"}, {"Plan__c", "pro"}}));
  EXPECT_EQ(live["w2"], (std::map<std::string, json>{{"LastName", "Roe"}, {"Plan__c", "free"}}));

  std::vector<FakeSalesforceRequest> upserts = OfKind("upsert");
  ASSERT_EQ(upserts.size(), 1u);
  EXPECT_EQ(upserts[0].method, "PATCH");
  EXPECT_EQ(upserts[0].target, "/services/data/v62.0/composite/sobjects/Contact/Warehouse_Id__c");
  json body = json::parse(upserts[0].body);
  EXPECT_EQ(body["allOrNone"], false);
  EXPECT_EQ(body["records"][0],
            json::parse(R"({"attributes":{"type":"Contact"},"Warehouse_Id__c":"w1",
                "LastName":"Doe","Email":"ann@x.io","Plan__c":"pro"})"));
  EXPECT_TRUE(body["records"][1]["Email"].is_null());

  // An update keeps the record id and clears a field set to NULL.
  std::string id = fake_->Find("Contact", "Warehouse_Id__c", "w1")[0].id;
  std::vector<OutgoingRecord> second = {
      Contact("w1", "Doe-Smith", "ann@x.io", "", ChangeKind::kUpdated)};
  result = session->SendBatch(second);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  live = Contacts();
  EXPECT_EQ(live["w1"],
            (std::map<std::string, json>{{"LastName", "Doe-Smith"}, {"Email", "ann@x.io"}}));
  EXPECT_EQ(fake_->Find("Contact", "Warehouse_Id__c", "w1")[0].id, id);
  // The object is described once; one token for the whole session.
  EXPECT_EQ(fake_->CountRequests("describe"), 1);
  EXPECT_EQ(fake_->sessions_issued(), 1);
  EXPECT_TRUE(session->Finish().ok());
}

TEST_F(SalesforceDestinationTest, SendsAtMost200RecordsPerRequest) {
  StartFake();
  auto session = ContactSession({{"bulk_threshold", 0}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 450; ++i) {
    batch.push_back(Contact(fmt::format("w{}", i), fmt::format("Last{}", i), ""));
  }
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  for (const absl::Status& s : *result) EXPECT_TRUE(s.ok()) << s;
  std::vector<FakeSalesforceRequest> upserts = OfKind("upsert");
  ASSERT_EQ(upserts.size(), 3u);
  EXPECT_EQ(upserts[0].records, 200);
  EXPECT_EQ(upserts[1].records, 200);
  EXPECT_EQ(upserts[2].records, 50);
  EXPECT_EQ(fake_->Records("Contact").size(), 450u);
}

TEST_F(SalesforceDestinationTest, PerRecordErrorsFailOnlyTheirRecords) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Contact("w1", "Doe", "ann@x.io"),
      Contact("w2", "", "bob@x.io"),                   // LastName required on create
      Contact("w3", "Poe", "not-an-email"),            // INVALID_EMAIL_ADDRESS
      Contact("w4", "Loe", "", std::string(41, 'p')),  // Plan__c holds 40
      Contact("w5", "Moe", "moe@x.io", "pro"),
  };
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kInvalidArgument, Code::kInvalidArgument,
                                          Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT(Message((*result)[1]), HasSubstr("REQUIRED_FIELD_MISSING"));
  EXPECT_THAT(Message((*result)[1]), HasSubstr("fields: LastName"));
  EXPECT_THAT(Message((*result)[2]), HasSubstr("INVALID_EMAIL_ADDRESS"));
  EXPECT_THAT(Message((*result)[3]), HasSubstr("STRING_TOO_LONG"));
  EXPECT_THAT(Message((*result)[3]), HasSubstr("Plan__c"));
  EXPECT_EQ(Contacts().size(), 2u);
  EXPECT_EQ(fake_->CountRequests("upsert"), 1);  // validation errors are not retried
  // An empty external id is refused locally.
  std::vector<OutgoingRecord> empty = {Contact("", "Nobody", "")};
  result = session->SendBatch(empty);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kInvalidArgument));
  EXPECT_THAT(Message((*result)[0]), HasSubstr("Warehouse_Id__c is empty"));
  EXPECT_EQ(fake_->CountRequests("upsert"), 1);
}

TEST_F(SalesforceDestinationTest, LockedRowsAreRetriedPerRecord) {
  StartFake();
  auto session = ContactSession({{"max_retries", 3}});
  ASSERT_NE(session, nullptr);
  fake_->LockRecord("Contact", "w2", 2);
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", ""), Contact("w2", "Roe", ""),
                                       Contact("w3", "Poe", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk));
  std::vector<FakeSalesforceRequest> upserts = OfKind("upsert");
  ASSERT_EQ(upserts.size(), 3u);
  EXPECT_EQ(upserts[0].records, 3);
  EXPECT_EQ(upserts[1].records, 1);  // only the locked record is re-sent
  EXPECT_EQ(json::parse(upserts[2].body)["records"][0]["Warehouse_Id__c"], "w2");
  EXPECT_GT(clock_.total_slept(), std::chrono::milliseconds(0));  // backoff between rounds
  EXPECT_EQ(Contacts().size(), 3u);

  // A lock that never clears gives up after max_retries and is retryable.
  fake_->LockRecord("Contact", "w9", 100);
  std::vector<OutgoingRecord> stuck = {Contact("w9", "Stuck", "")};
  result = session->SendBatch(stuck);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kUnavailable));
  EXPECT_THAT(Message((*result)[0]), HasSubstr("UNABLE_TO_LOCK_ROW"));
  EXPECT_EQ(fake_->CountRequests("upsert"), 3 + 4);
}

TEST_F(SalesforceDestinationTest, RolledBackRowsAreResentWithoutTheFailingOne) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  json rolled_back = {{"statusCode", "ALL_OR_NONE_OPERATION_ROLLED_BACK"},
                      {"message",
                       "Record rolled back because not all records were valid and the "
                       "request was using AllOrNone header"},
                      {"fields", json::array()}};
  json reply = json::array({{{"id", nullptr}, {"success", false}, {"errors", {rolled_back}}},
                            {{"id", nullptr},
                             {"success", false},
                             {"errors",
                              {{{"statusCode", "FIELD_CUSTOM_VALIDATION_EXCEPTION"},
                                {"message", "Plan must be pro or free"},
                                {"fields", {"Plan__c"}}}}}},
                            {{"id", nullptr}, {"success", false}, {"errors", {rolled_back}}}});
  FakeSalesforceReply scripted;
  scripted.match = "/composite/sobjects/";
  scripted.status = 200;
  scripted.body = reply.dump();
  fake_->Enqueue(scripted);
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", ""), Contact("w2", "Roe", "", "gold"),
                                       Contact("w3", "Poe", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT(Message((*result)[1]), HasSubstr("FIELD_CUSTOM_VALIDATION_EXCEPTION"));
  std::vector<FakeSalesforceRequest> upserts = OfKind("upsert");
  ASSERT_EQ(upserts.size(), 2u);
  json second = json::parse(upserts[1].body);
  ASSERT_EQ(second["records"].size(), 2u);
  EXPECT_EQ(second["records"][0]["Warehouse_Id__c"], "w1");
  EXPECT_EQ(second["records"][1]["Warehouse_Id__c"], "w3");
  EXPECT_EQ(clock_.total_slept(), std::chrono::milliseconds(0));  // innocent rows: no wait
  EXPECT_THAT(Contacts(), testing::SizeIs(2));
}

TEST_F(SalesforceDestinationTest, AWholeRequestRejectionIsBisectedToTheBadRecord) {
  StartFake();
  auto session = TrySession({"Warehouse_Id__c", "LastName", "Seats__c"}, {"Warehouse_Id__c"});
  ASSERT_TRUE(session.ok()) << session.status();
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 4; ++i) {
    OutgoingRecord r;
    r.key = fmt::format("w{}", i);
    r.values = {Value::String(r.key), Value::String("Last"),
                i == 2 ? Value::String("twelve") : Value::Int64(i)};
    batch.push_back(r);
  }
  auto result = (*session)->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT(Message((*result)[2]), HasSubstr("JSON_PARSER_ERROR"));
  EXPECT_THAT(Message((*result)[2]), HasSubstr("twelve"));
  EXPECT_EQ(fake_->Records("Contact").size(), 3u);
  EXPECT_EQ(fake_->Find("Contact", "Warehouse_Id__c", "w3")[0].fields["Seats__c"], 3.0);
}

TEST_F(SalesforceDestinationTest, RecordsOfOneExternalIdAreCollapsed) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("w1", "First", ""), Contact("w2", "Other", ""),
                                       Contact("w1", "Second", "", "", ChangeKind::kUpdated)};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk));
  EXPECT_EQ(OfKind("upsert")[0].records, 2);
  EXPECT_EQ(Contacts()["w1"]["LastName"], "Second");
}

TEST_F(SalesforceDestinationTest, SetsLookupsByTheParentsExternalId) {
  StartFake();
  std::string acme = fake_->Seed("Account", {{"Name", "Acme"}, {"Ext_Acct__c", "A-1"}});
  auto session =
      TrySession({"Warehouse_Id__c", "LastName", "Account.Ext_Acct__c"}, {"Warehouse_Id__c"});
  ASSERT_TRUE(session.ok()) << session.status();
  auto row = [](const std::string& key, Value account) {
    OutgoingRecord r;
    r.key = key;
    r.values = {Value::String(key), Value::String("Doe"), std::move(account)};
    return r;
  };
  std::vector<OutgoingRecord> batch = {row("w1", Value::String("A-1")),
                                       row("w2", Value::String("A-9")), row("w3", Value::Null())};
  auto result = (*session)->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT(Message((*result)[1]), HasSubstr("Foreign key external ID: A-9 not found"));
  json body = json::parse(OfKind("upsert")[0].body);
  EXPECT_EQ(body["records"][0]["Account"], json::parse(R"({"Ext_Acct__c":"A-1"})"));
  EXPECT_FALSE(body["records"][2].contains("Account"));  // NULL leaves the lookup alone
  EXPECT_EQ(fake_->Find("Contact", "Warehouse_Id__c", "w1")[0].fields["AccountId"], acme);
}

TEST_F(SalesforceDestinationTest, MappingProblemsStopTheRunBeforeAnyWrite) {
  StartFake();
  auto unknown = TrySession({"Warehouse_Id__c", "LastName", "Nope__c"}, {"Warehouse_Id__c"});
  ASSERT_TRUE(unknown.ok());
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", "")};
  batch[0].values.resize(3);
  auto result = (*unknown)->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(Message(result.status()), HasSubstr("\"Nope__c\""));
  // The session stays stopped.
  EXPECT_EQ((*unknown)->SendBatch(batch).status().code(), Code::kFailedPrecondition);

  auto read_only = TrySession({"Warehouse_Id__c", "LastName", "Score__c"}, {"Warehouse_Id__c"});
  ASSERT_TRUE(read_only.ok());
  result = (*read_only)->SendBatch(batch);
  EXPECT_EQ(result.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(Message(result.status()), HasSubstr("read-only"));

  auto not_external = TrySession({"Email", "LastName"}, {"Email"});
  ASSERT_TRUE(not_external.ok());
  batch[0].values.resize(2);
  result = (*not_external)->SendBatch(batch);
  EXPECT_EQ(result.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(Message(result.status()), HasSubstr("not an External ID field"));

  auto relationship = TrySession({"Warehouse_Id__c", "Owner__r.Ext__c"}, {"Warehouse_Id__c"});
  ASSERT_TRUE(relationship.ok());
  result = (*relationship)->SendBatch(batch);
  EXPECT_EQ(result.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(Message(result.status()), HasSubstr("no lookup relationship named Owner__r"));
  EXPECT_EQ(fake_->CountRequests("upsert"), 0);
}

TEST_F(SalesforceDestinationTest, SessionNeedsTheExternalIdMappedFromThePrimaryKey) {
  StartFake();
  auto session = TrySession(kContactFields, {});
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(Message(session.status()), HasSubstr("Warehouse_Id__c: <primary key column>"));
}

// ---------------------------------------------------------------- limits and failures

TEST_F(SalesforceDestinationTest, DailyRequestLimitStopsTheRunAndHolds) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", "")};
  ASSERT_TRUE(session->SendBatch(batch).ok());
  auto* reporter = dynamic_cast<SalesforceApiUsageReporter*>(dest_.get());
  ASSERT_NE(reporter, nullptr);
  ASSERT_TRUE(reporter->last_api_usage().has_value());
  EXPECT_EQ(reporter->last_api_usage()->used, 2);  // describe + upsert
  EXPECT_EQ(reporter->last_api_usage()->limit, 15'000);

  fake_->SetApiUsage(15'000, 15'000);
  std::vector<OutgoingRecord> more = {Contact("w2", "Roe", "")};
  auto result = session->SendBatch(more);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kResourceExhausted);
  EXPECT_THAT(Message(result.status()), HasSubstr("REQUEST_LIMIT_EXCEEDED"));
  EXPECT_THAT(Message(result.status()), HasSubstr("15000/15000"));
  ASSERT_TRUE(RetryAfter(result.status()).has_value());
  EXPECT_EQ(fake_->CountRequests("upsert", 403), 1);  // not retried
  EXPECT_EQ(clock_.total_slept(), std::chrono::milliseconds(0));

  // The destination holds: nothing is sent, even by a new session, for 15 minutes.
  SessionOptions opts;
  opts.action = def_.FindAction("upsert_record");
  opts.layout = {kContactFields, {"Warehouse_Id__c"}};
  auto again = dest_->StartSession(opts);
  ASSERT_TRUE(again.ok());
  int64_t before = fake_->request_count();
  EXPECT_EQ((*again)->SendBatch(more).status().code(), Code::kResourceExhausted);
  EXPECT_EQ(dest_->CheckConnection().code(), Code::kResourceExhausted);
  EXPECT_EQ(fake_->request_count(), before);
  fake_->SetApiUsage(14'000, 15'000);
  clock_.Advance(std::chrono::minutes(16));
  result = (*again)->SendBatch(more);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
}

TEST_F(SalesforceDestinationTest, ConcurrentRequestLimitIsRetriedWithBackoff) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  fake_->EnqueueN(2, FakeSalesforceReply::ConcurrentLimit("/composite/sobjects/"));
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->CountRequests("upsert", 403), 2);
  EXPECT_EQ(fake_->CountRequests("upsert", 200), 1);
  EXPECT_GT(clock_.total_slept(), std::chrono::milliseconds(0));

  // Still limited after max_retries: the record is rate limited, the run goes on.
  fake_->EnqueueN(10, FakeSalesforceReply::ConcurrentLimit("/composite/sobjects/"));
  auto limited = ContactSession({{"max_retries", 2}});
  result = limited->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kResourceExhausted));
  EXPECT_THAT(Message((*result)[0]), HasSubstr("concurrent"));
}

TEST_F(SalesforceDestinationTest, ServerErrorsAreRetriedThenLeftForTheNextRun) {
  StartFake();
  auto session = ContactSession({{"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  fake_->EnqueueN(2, FakeSalesforceReply::Error(503, "SERVER_UNAVAILABLE", "maintenance",
                                                "/composite/sobjects/"));
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->CountRequests("upsert", 503), 2);

  fake_->EnqueueN(
      3, FakeSalesforceReply::Error(500, "UNKNOWN_EXCEPTION", "boom", "/composite/sobjects/"));
  std::vector<OutgoingRecord> next = {Contact("w2", "Roe", "")};
  result = session->SendBatch(next);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kUnavailable));
  EXPECT_THAT(Message((*result)[0]), HasSubstr("HTTP 500"));
  EXPECT_THAT(Message((*result)[0]), HasSubstr("after 3 attempts"));
}

TEST_F(SalesforceDestinationTest, ExpiredSessionIsReMintedOnceThenTheRunStops) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", "")};
  ASSERT_TRUE(session->SendBatch(batch).ok());
  fake_->ExpireSessions();
  std::vector<OutgoingRecord> next = {Contact("w2", "Roe", "")};
  auto result = session->SendBatch(next);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->sessions_issued(), 2);
  EXPECT_EQ(fake_->CountRequests("upsert", 401), 1);

  // The user loses its pre-authorisation: the new grant is refused.
  fake_->ExpireSessions();
  fake_->SetPreAuthorized(kUser, false);
  std::vector<OutgoingRecord> last = {Contact("w3", "Poe", "")};
  result = session->SendBatch(last);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kUnauthenticated);
  EXPECT_THAT(Message(result.status()), HasSubstr("pre-authorised"));
  EXPECT_EQ(Contacts().size(), 2u);

  // A 401 that persists after a fresh token stops the run too.
  fake_->SetPreAuthorized(kUser, true);
  auto fresh = ContactSession();
  fake_->EnqueueN(2, FakeSalesforceReply::Error(401, "INVALID_SESSION_ID",
                                                "Session expired or invalid", "/describe"));
  result = fresh->SendBatch(last);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kUnauthenticated);
  EXPECT_THAT(Message(result.status()), HasSubstr("API Enabled"));
}

TEST_F(SalesforceDestinationTest, OtherForbiddenRepliesStopTheRun) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  fake_->Enqueue(FakeSalesforceReply::Error(
      403, "INSUFFICIENT_ACCESS", "insufficient access rights on object id", "/composite/"));
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", "")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(Message(result.status()), HasSubstr("insufficient access rights"));
  EXPECT_EQ(fake_->CountRequests("upsert"), 1);
}

TEST_F(SalesforceDestinationTest, PausesAtMaxApiUsagePercent) {
  StartFake();
  fake_->SetApiUsage(5, 20);
  auto session = ContactSession({{"max_api_usage_percent", 50}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();  // 7/20 after describe + upsert
  fake_->SetApiUsage(9, 20);
  result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();  // this reply reports 10/20: at 50%
  int64_t before = fake_->request_count();
  result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kResourceExhausted);
  EXPECT_THAT(Message(result.status()), HasSubstr("max_api_usage_percent"));
  EXPECT_EQ(fake_->request_count(), before);
}

// ---------------------------------------------------------------- bulk

TEST_F(SalesforceDestinationTest, LargeBatchesGoThroughABulkJob) {
  FakeSalesforceOptions opts;
  opts.bulk_polls_in_progress = 2;
  StartFake(opts);
  auto session = ContactSession({{"bulk_threshold", 4}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Contact("w1", "Doe", "ann@x.io", "pro"), Contact("w2", "", "bob@x.io"),
      Contact("w3", "Poe, Jr.", "not-an-email"), Contact("w4", "Loe \"L\"", ""),
      Contact("w5", "Moe", "moe@x.io")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kInvalidArgument, Code::kInvalidArgument,
                                          Code::kOk, Code::kOk));
  EXPECT_THAT(Message((*result)[1]), HasSubstr("REQUIRED_FIELD_MISSING"));
  EXPECT_THAT(Message((*result)[2]), HasSubstr("INVALID_EMAIL_ADDRESS"));
  auto live = Contacts();
  ASSERT_EQ(live.size(), 3u);
  EXPECT_EQ(live["w4"], (std::map<std::string, json>{{"LastName", "Loe \"L\""}}));
  EXPECT_EQ(live["w1"]["Plan__c"], "pro");
  EXPECT_EQ(fake_->CountRequests("upsert"), 0);
  EXPECT_THAT(Kinds(),
              ElementsAre("token", "describe", "job_create", "job_upload", "job_state", "job_get",
                          "job_get", "job_get", "job_results", "job_results", "job_results"));
  std::vector<FakeSalesforceJob> jobs = fake_->Jobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].state, "JobComplete");
  EXPECT_EQ(jobs[0].operation, "upsert");
  EXPECT_EQ(jobs[0].external_id_field, "Warehouse_Id__c");
  EXPECT_EQ(jobs[0].processed, 5);
  EXPECT_EQ(jobs[0].failed, 2);
  json create = json::parse(OfKind("job_create")[0].body);
  EXPECT_EQ(create, json::parse(R"({"object":"Contact","operation":"upsert",
      "externalIdFieldName":"Warehouse_Id__c","contentType":"CSV","lineEnding":"LF",
      "columnDelimiter":"COMMA"})"));
  EXPECT_EQ(OfKind("job_upload")[0].body,
            "Warehouse_Id__c,LastName,Email,Plan__c\n"
            "w1,Doe,ann@x.io,pro\n"
            "w2,#N/A,bob@x.io,#N/A\n"
            "w3,\"Poe, Jr.\",not-an-email,#N/A\n"
            "w4,\"Loe \"\"L\"\"\",#N/A,#N/A\n"
            "w5,Moe,moe@x.io,#N/A\n");
  EXPECT_EQ(json::parse(OfKind("job_state")[0].body)["state"], "UploadComplete");
  EXPECT_GT(clock_.total_slept(), std::chrono::milliseconds(0));  // polls wait

  // #N/A clears a field in an update.
  std::vector<OutgoingRecord> update;
  for (int i = 1; i <= 5; ++i) {
    update.push_back(Contact(fmt::format("w{}", i), "Last", "", "", ChangeKind::kUpdated));
  }
  result = session->SendBatch(update);
  ASSERT_TRUE(result.ok()) << result.status();
  live = Contacts();
  EXPECT_EQ(live.size(), 5u);
  EXPECT_EQ(live["w1"], (std::map<std::string, json>{{"LastName", "Last"}}));
}

TEST_F(SalesforceDestinationTest, BulkResultsAreMatchedByExternalIdNotOrder) {
  FakeSalesforceOptions opts;
  opts.bulk_polls_in_progress = 0;
  opts.shuffle_bulk_results = true;
  StartFake(opts);
  auto session = ContactSession({{"bulk_threshold", 10}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 60; ++i) {
    // Every third record lacks its required LastName.
    batch.push_back(Contact(fmt::format("w{}", i), i % 3 == 0 ? "" : "Last", ""));
  }
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  for (int i = 0; i < 60; ++i) {
    EXPECT_EQ((*result)[i].code(), i % 3 == 0 ? Code::kInvalidArgument : Code::kOk) << i;
  }
  EXPECT_EQ(Contacts().size(), 40u);
}

TEST_F(SalesforceDestinationTest, LockedBulkRowsAreRetriedThroughCollections) {
  FakeSalesforceOptions opts;
  opts.bulk_polls_in_progress = 0;
  StartFake(opts);
  auto session = ContactSession({{"bulk_threshold", 3}});
  ASSERT_NE(session, nullptr);
  fake_->LockRecord("Contact", "w2", 1);
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", ""), Contact("w2", "Roe", ""),
                                       Contact("w3", "Poe", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk));
  std::vector<FakeSalesforceRequest> upserts = OfKind("upsert");
  ASSERT_EQ(upserts.size(), 1u);
  EXPECT_EQ(upserts[0].records, 1);
  EXPECT_EQ(Contacts().size(), 3u);
}

TEST_F(SalesforceDestinationTest, AFailedUploadAbortsTheJobAndTriesANewOne) {
  FakeSalesforceOptions opts;
  opts.bulk_polls_in_progress = 0;
  StartFake(opts);
  auto session = ContactSession({{"bulk_threshold", 2}});
  ASSERT_NE(session, nullptr);
  fake_->Enqueue(FakeSalesforceReply::Error(503, "SERVER_UNAVAILABLE", "try later", "/batches"));
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", ""), Contact("w2", "Roe", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));
  std::vector<FakeSalesforceJob> jobs = fake_->Jobs();
  ASSERT_EQ(jobs.size(), 2u);
  std::vector<std::string> states = {jobs[0].state, jobs[1].state};
  EXPECT_THAT(states, UnorderedElementsAre("Aborted", "JobComplete"));
  EXPECT_EQ(fake_->CountRequests("job_upload", 503), 1);
  EXPECT_EQ(Contacts().size(), 2u);
}

TEST_F(SalesforceDestinationTest, ASlowJobIsAbortedAfterTheTimeout) {
  FakeSalesforceOptions opts;
  opts.bulk_polls_in_progress = 1000;
  StartFake(opts);
  auto session = ContactSession({{"bulk_threshold", 2}, {"bulk_job_timeout_s", 60}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", ""), Contact("w2", "Roe", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kUnavailable, Code::kUnavailable));
  EXPECT_THAT(Message((*result)[0]), HasSubstr("bulk_job_timeout_s"));
  ASSERT_EQ(fake_->Jobs().size(), 1u);
  EXPECT_EQ(fake_->Jobs()[0].state, "Aborted");
  EXPECT_LE(clock_.total_slept(), std::chrono::seconds(60));
  EXPECT_LE(fake_->CountRequests("job_get"), 8);  // backoff, not a busy loop
  EXPECT_TRUE(Contacts().empty());
}

TEST_F(SalesforceDestinationTest, AJobThatFailsOnItsColumnsStopsTheRun) {
  FakeSalesforceOptions opts;
  opts.bulk_polls_in_progress = 0;
  StartFake(opts);
  auto session = ContactSession({{"bulk_threshold", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("w1", "Doe", ""), Contact("w2", "Roe", "")};
  ASSERT_TRUE(session->SendBatch(batch).ok());
  // Plan__c is deleted in Salesforce after the object was described.
  SfObjectDef contact = DefaultSalesforceObjects()["Contact"];
  contact.fields.erase("Plan__c");
  fake_->DefineObject("Contact", contact);
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(Message(result.status()), HasSubstr("InvalidBatch : Field name not found : Plan__c"));
  ASSERT_EQ(fake_->Jobs().size(), 2u);
  EXPECT_EQ(fake_->Jobs()[1].state, "Failed");
}

// ---------------------------------------------------------------- deletes

TEST_F(SalesforceDestinationTest, DeletesByExternalId) {
  StartFake();
  fake_->Seed("Contact", {{"LastName", "A"}, {"Warehouse_Id__c", "w1"}});
  fake_->Seed("Contact", {{"LastName", "B"}, {"Warehouse_Id__c", "W2"}});  // other case
  fake_->Seed("Contact", {{"LastName", "C"}, {"Warehouse_Id__c", "w3"}});
  fake_->Seed("Contact", {{"LastName", "Q"}, {"Warehouse_Id__c", "it's"}});
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Deleted("w1"), Deleted("w2"), Deleted("gone"),
                                       Deleted("it's"), Contact("w5", "New", "")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk, Code::kOk, Code::kOk));
  auto live = Contacts();
  EXPECT_EQ(live.size(), 2u);
  EXPECT_EQ(live.count("w3"), 1u);
  EXPECT_EQ(live.count("w5"), 1u);
  EXPECT_EQ(fake_->recycle_bin_size(), 3u);
  std::vector<FakeSalesforceRequest> queries = OfKind("query");
  ASSERT_EQ(queries.size(), 1u);
  EXPECT_THAT(queries[0].target, HasSubstr("SELECT%20Id%2C%20Warehouse_Id__c%20FROM%20Contact"));
  EXPECT_EQ(fake_->CountRequests("delete"), 1);
  EXPECT_THAT(OfKind("delete")[0].target, HasSubstr("allOrNone=false"));

  // Deleting again is a no-op: the query finds nothing, nothing is deleted.
  result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(fake_->CountRequests("delete"), 1);
}

TEST_F(SalesforceDestinationTest, DeletesFollowQueryPagesAndRetryLocks) {
  FakeSalesforceOptions opts;
  opts.query_page_size = 2;
  StartFake(opts);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 5; ++i) {
    std::string key = fmt::format("w{}", i);
    fake_->Seed("Contact", {{"LastName", "X"}, {"Warehouse_Id__c", key}});
    batch.push_back(Deleted(key));
  }
  fake_->LockRecord("Contact", "w3", 1);
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  for (const absl::Status& s : *result) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(fake_->CountRequests("query"), 3);   // 2 + 2 + 1
  EXPECT_EQ(fake_->CountRequests("delete"), 2);  // the locked one again
  EXPECT_TRUE(Contacts().empty());
}

TEST_F(SalesforceDestinationTest, DeletesByANumericExternalId) {
  StartFake();
  SfObjectDef order;
  order.key_prefix = "a01";
  order.fields["Order_No__c"] = {.type = SfFieldType::kDouble, .external_id = true, .unique = true};
  order.fields["Name"] = {.type = SfFieldType::kString};
  fake_->DefineObject("Order__c", order);
  fake_->Seed("Order__c", {{"Order_No__c", 42.0}, {"Name", "x"}});
  fake_->Seed("Order__c", {{"Order_No__c", 43.0}, {"Name", "y"}});
  auto session = TrySession({"Order_No__c", "Name"}, {"Order_No__c"}, {{"object", "Order__c"}});
  ASSERT_TRUE(session.ok()) << session.status();
  OutgoingRecord del;
  del.change = ChangeKind::kDeleted;
  del.key = "42";
  del.values = {Value::Int64(42)};
  OutgoingRecord up;
  up.key = "44";
  up.values = {Value::Int64(44), Value::String("z")};
  std::vector<OutgoingRecord> batch = {del, up};
  auto result = (*session)->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));
  EXPECT_THAT(OfKind("query")[0].target, HasSubstr("IN%20%2842%29"));  // unquoted
  EXPECT_EQ(json::parse(OfKind("upsert")[0].body)["records"][0]["Order_No__c"], 44);
  std::vector<FakeSalesforceRecord> left = fake_->Records("Order__c");
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].fields["Order_No__c"], 43.0);
  EXPECT_EQ(left[1].fields["Order_No__c"], 44.0);
}

TEST_F(SalesforceDestinationTest, UndeletableRecordsFailWithSalesforcesReason) {
  StartFake();
  fake_->Seed("Contact", {{"LastName", "A"}, {"Warehouse_Id__c", "w1"}});
  FakeSalesforceReply reply;
  reply.match = "/composite/sobjects?ids=";
  reply.status = 200;
  reply.body = R"([{"id":null,"success":false,"errors":[{"statusCode":"DELETE_FAILED",
      "message":"Your attempt to delete A could not be completed because it is associated with cases",
      "fields":[]}]}])";
  fake_->Enqueue(reply);
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Deleted("w1")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kInvalidArgument));
  EXPECT_THAT(Message((*result)[0]), HasSubstr("DELETE_FAILED"));
  EXPECT_EQ(Contacts().size(), 1u);
}

// ---------------------------------------------------------------- fake

TEST_F(SalesforceDestinationTest, FakeRollsBackEverythingWithAllOrNone) {
  StartFake();
  auto dest = Create(Settings());
  ASSERT_TRUE((*dest)->CheckConnection().ok());
  std::string token = OfKind("describe")[0].authorization;
  HttpRequest req;
  req.method = "PATCH";
  req.url = fake_->BaseUrl() + "/services/data/v62.0/composite/sobjects/Contact/Warehouse_Id__c";
  req.headers = {{"Authorization", token}, {"Content-Type", "application/json"}};
  req.body = R"({"allOrNone":true,"records":[
      {"attributes":{"type":"Contact"},"Warehouse_Id__c":"a","LastName":"A"},
      {"attributes":{"type":"Contact"},"Warehouse_Id__c":"b"}]})";
  auto resp = http_->Send(req);
  ASSERT_TRUE(resp.ok());
  ASSERT_EQ(resp->status, 200) << resp->body;
  json body = json::parse(resp->body);
  EXPECT_EQ(body[0]["errors"][0]["statusCode"], "ALL_OR_NONE_OPERATION_ROLLED_BACK");
  EXPECT_EQ(body[1]["errors"][0]["statusCode"], "REQUIRED_FIELD_MISSING");
  EXPECT_TRUE(fake_->Records("Contact").empty());
  EXPECT_TRUE(resp->Header("sforce-limit-info").has_value());
  // Over 200 records is refused as a whole.
  json many = {{"allOrNone", false}, {"records", json::array()}};
  for (int i = 0; i < 201; ++i) {
    many["records"].push_back({{"attributes", {{"type", "Contact"}}},
                               {"Warehouse_Id__c", std::to_string(i)},
                               {"LastName", "x"}});
  }
  req.body = many.dump();
  resp = http_->Send(req);
  ASSERT_TRUE(resp.ok());
  EXPECT_EQ(resp->status, 400);
  EXPECT_THAT(resp->body, HasSubstr("EXCEEDED_ID_LIMIT"));
}

}  // namespace
}  // namespace backflow
