#include "backflow/destinations/hubspot/hubspot_destination.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/destination.h"
#include "backflow/destinations/hubspot/fake_hubspot_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using Code = absl::StatusCode;

const std::string kToken = "pat-na1-11111111-2222-3333-4444-555555555555";
const std::string kReadOnlyToken = "pat-na1-read-only";
const std::string kNoScopeToken = "pat-na1-no-scopes";

// A contact record for the layout {properties.email, properties.firstname,
// properties.lifecyclestage} (identity properties.email).
OutgoingRecord Contact(const std::string& key, const std::string& email, const std::string& first,
                       Value stage = Value::Null(), ChangeKind change = ChangeKind::kAdded) {
  OutgoingRecord r;
  r.change = change;
  r.key = key;
  r.dedup_id = "d_" + key + "_" + email + "_" + first;
  r.values = {email.empty() ? Value::Null() : Value::String(email), Value::String(first),
              std::move(stage)};
  return r;
}

OutgoingRecord Deleted(const std::string& key, Value id) {
  OutgoingRecord r;
  r.change = ChangeKind::kDeleted;
  r.key = key;
  r.dedup_id = "d_" + key + "_deleted";
  r.values = {std::move(id)};
  return r;
}

OutgoingRecord Row3(const std::string& key, Value a, Value b, Value c) {
  OutgoingRecord r;
  r.key = key;
  r.dedup_id = "d_" + key;
  r.values = {std::move(a), std::move(b), std::move(c)};
  return r;
}

std::vector<Code> Codes(const std::vector<absl::Status>& statuses) {
  std::vector<Code> out;
  for (const absl::Status& s : statuses) out.push_back(s.code());
  return out;
}

class HubSpotDestinationTest : public ::testing::Test {
 protected:
  void StartFake(FakeHubSpotOptions opts = {}) {
    opts.clock = &clock_;
    opts.tokens = {
        {kToken, {"*"}}, {kReadOnlyToken, {"crm.objects.contacts.read"}}, {kNoScopeToken, {}}};
    fake_ = std::make_unique<FakeHubSpotServer>(opts);
    ASSERT_TRUE(fake_->Start().ok());
  }

  json Settings(const json& extra = json::object()) {
    json s = {{"access_token", kToken}, {"base_url", fake_->BaseUrl()}};
    for (auto& [k, v] : extra.items()) s[k] = v;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Destination>> Create(json settings) {
    std::vector<std::string> problems = CheckSettings(def_.settings, settings);
    if (!problems.empty()) return absl::InvalidArgumentError(problems.front());
    return def_.create(settings, ConnectorEnv{http_.get(), &clock_});
  }

  absl::StatusOr<std::unique_ptr<ActionSession>> TrySession(const std::string& action,
                                                            std::vector<std::string> fields,
                                                            std::vector<std::string> identity,
                                                            const json& extra = json::object()) {
    absl::StatusOr<std::unique_ptr<Destination>> dest = Create(Settings(extra));
    if (!dest.ok()) return dest.status();
    dest_ = *std::move(dest);
    SessionOptions opts;
    opts.mapping = "to_hubspot";
    opts.run_id = 7;
    opts.action = def_.FindAction(action);
    opts.layout.fields = std::move(fields);
    opts.layout.identity = std::move(identity);
    return dest_->StartSession(opts);
  }

  std::unique_ptr<ActionSession> Session(const std::string& action, std::vector<std::string> fields,
                                         std::vector<std::string> identity,
                                         const json& extra = json::object()) {
    auto s = TrySession(action, std::move(fields), std::move(identity), extra);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  std::unique_ptr<ActionSession> ContactSession(const json& extra = json::object()) {
    return Session("upsert_contact",
                   {"properties.email", "properties.firstname", "properties.lifecyclestage"},
                   {"properties.email"}, extra);
  }

  // Live records of `type` as email/key property -> properties.
  std::map<std::string, std::map<std::string, std::string>> Live(const std::string& type,
                                                                 const std::string& by) {
    std::map<std::string, std::map<std::string, std::string>> out;
    for (const FakeHubSpotRecord& r : fake_->Records(type)) out[r.properties.at(by)] = r.properties;
    return out;
  }

  std::vector<json> Bodies(const std::string& operation) {
    std::vector<json> out;
    for (const FakeHubSpotRequest& r : fake_->Requests()) {
      if (r.operation == operation) out.push_back(json::parse(r.body));
    }
    return out;
  }

  DestinationDefinition def_ = HubSpotDestinationDefinition();
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeHubSpotServer> fake_;
  std::unique_ptr<Destination> dest_;
};

// ---------------------------------------------------------------- definition

TEST_F(HubSpotDestinationTest, DefinitionDeclaresActionsAndSettings) {
  EXPECT_EQ(def_.type, "hubspot");
  for (const char* id : {"upsert_contact", "upsert_company", "upsert_deal", "upsert_object"}) {
    const ActionSpec* a = def_.FindAction(id);
    ASSERT_NE(a, nullptr) << id;
    EXPECT_EQ(a->max_batch_records, 100) << id;
    EXPECT_EQ(a->default_batch_records, 100) << id;
    EXPECT_THAT(a->extra_field_parents, ElementsAre("properties")) << id;
    EXPECT_TRUE(a->AcceptsField("properties.any_custom_property")) << id;
    EXPECT_FALSE(a->AcceptsField("firstname")) << id;
    ASSERT_TRUE(a->validate);
    EXPECT_THAT(a->validate(json::object(), {{"properties.a.b", "x"}}),
                ElementsAre(HasSubstr("contain no dots")));
    EXPECT_TRUE(a->validate(json::object(), {{"properties.a", "x"}}).empty());
  }
  EXPECT_TRUE(def_.FindAction("upsert_contact")->Supports(RecordSelection::kAll));
  EXPECT_TRUE(def_.FindAction("upsert_deal")->Supports(RecordSelection::kDeleted));
  EXPECT_FALSE(def_.FindAction("upsert_object")->Supports(RecordSelection::kDeleted));
  const FieldSpec* email = def_.FindAction("upsert_contact")->FindField("properties.email");
  ASSERT_NE(email, nullptr);
  EXPECT_FALSE(email->required);
  EXPECT_TRUE(def_.FindAction("upsert_object")->FindField("object_type")->required);

  const SettingSpec* token = FindSetting(def_.settings, "access_token");
  ASSERT_NE(token, nullptr);
  EXPECT_TRUE(token->required);
  EXPECT_TRUE(token->secret);
  EXPECT_EQ(FindSetting(def_.settings, "base_url")->default_value, "https://api.hubapi.com");
  EXPECT_EQ(FindSetting(def_.settings, "requests_per_10_seconds")->default_value, 100);
  EXPECT_NE(FindSetting(def_.settings, "max_requests_per_second"), nullptr);
  EXPECT_NE(FindSetting(def_.settings, "max_retry_wait_s"), nullptr);
  EXPECT_STREQ(kHubSpotObjectsPath, "/crm/v3/objects");
}

TEST_F(HubSpotDestinationTest, RejectsBadSettings) {
  StartFake();
  auto missing = Create(json{{"base_url", fake_->BaseUrl()}});
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("access_token"));
  auto bearer = Create(Settings({{"access_token", "Bearer pat-1"}}));
  EXPECT_EQ(bearer.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(std::string(bearer.status().message()), HasSubstr("without \"Bearer\""));
  auto url = Create(Settings({{"base_url", "ftp://api.hubapi.com"}}));
  EXPECT_EQ(url.status().code(), Code::kInvalidArgument);
  auto rate = Create(Settings({{"requests_per_10_seconds", 0}}));
  EXPECT_EQ(rate.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(std::string(rate.status().message()), HasSubstr("requests_per_10_seconds"));
}

TEST_F(HubSpotDestinationTest, SessionNeedsAUniqueIdentifierProperty) {
  StartFake();
  auto company = TrySession("upsert_company", {"properties.name", "properties.domain"}, {});
  ASSERT_FALSE(company.ok());
  EXPECT_EQ(company.status().code(), Code::kFailedPrecondition);
  EXPECT_THAT(std::string(company.status().message()),
              HasSubstr("properties.warehouse_id: <primary key column>"));
  // Identity mapped to a non-property field is not an idProperty either.
  auto object = TrySession("upsert_object", {"object_type", "properties.name"}, {"object_type"});
  EXPECT_EQ(object.status().code(), Code::kFailedPrecondition);

  // Contacts fall back to email for upserts, but cannot archive deletes.
  auto contact =
      Session("upsert_contact",
              {"properties.email", "properties.firstname", "properties.lifecyclestage"}, {});
  ASSERT_NE(contact, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("1", "ann@x.io", "Ann"),
                                       Deleted("2", Value::Null())};
  batch[1].values.clear();  // a delete carries only identity values: none here
  auto result = contact->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kFailedPrecondition));
  EXPECT_THAT(std::string((*result)[1].message()), HasSubstr("primary key"));
  EXPECT_EQ(fake_->Records("contacts").size(), 1u);
}

// ---------------------------------------------------------------- upserts

TEST_F(HubSpotDestinationTest, UpsertsContactsByEmail) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> first = {
      Contact("1", "ann@x.io", "Ann", Value::String("lead")),
      Contact("2", "bob@x.io", "Bob"),
  };
  auto result = session->SendBatch(first);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));

  auto live = Live("contacts", "email");
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live["ann@x.io"],
            (std::map<std::string, std::string>{
                {"email", "ann@x.io"}, {"firstname", "Ann"}, {"lifecyclestage", "lead"}}));
  // A NULL is sent as "" and clears nothing that was never set.
  EXPECT_EQ(live["bob@x.io"],
            (std::map<std::string, std::string>{{"email", "bob@x.io"}, {"firstname", "Bob"}}));

  std::vector<FakeHubSpotRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].target, "/crm/v3/objects/contacts/batch/upsert");
  EXPECT_EQ(reqs[0].authorization, "Bearer " + kToken);
  json body = json::parse(reqs[0].body);
  EXPECT_EQ(body["inputs"][0],
            json::parse(R"({"id":"ann@x.io","idProperty":"email","objectWriteTraceId":
                "d_1_ann@x.io_Ann","properties":{"email":"ann@x.io","firstname":"Ann",
                "lifecyclestage":"lead"}})"));
  EXPECT_EQ(body["inputs"][1]["properties"]["lifecyclestage"], "");

  // An update keeps the HubSpot record and clears the property set to NULL.
  std::string ann_id = fake_->Find("contacts", "email", "ann@x.io")->id;
  std::vector<OutgoingRecord> second = {
      Contact("1", "ann@x.io", "Annie", Value::Null(), ChangeKind::kUpdated)};
  result = session->SendBatch(second);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  live = Live("contacts", "email");
  EXPECT_EQ(live["ann@x.io"],
            (std::map<std::string, std::string>{{"email", "ann@x.io"}, {"firstname", "Annie"}}));
  EXPECT_EQ(fake_->Find("contacts", "email", "ann@x.io")->id, ann_id);
  EXPECT_TRUE(session->Finish().ok());
}

TEST_F(HubSpotDestinationTest, UpsertsCompaniesAndDealsByCustomUniqueProperty) {
  StartFake();
  fake_->AddProperty("companies", "warehouse_id", /*unique=*/true);
  auto companies =
      Session("upsert_company", {"properties.warehouse_id", "properties.name", "properties.domain"},
              {"properties.warehouse_id"});
  ASSERT_NE(companies, nullptr);
  std::vector<OutgoingRecord> batch = {
      Row3("42", Value::Int64(42), Value::String("Acme"), Value::String("acme.com")),
      Row3("43", Value::Int64(43), Value::String("Globex"), Value::Null())};
  auto result = companies->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));
  auto live = Live("companies", "warehouse_id");
  EXPECT_EQ(live["42"], (std::map<std::string, std::string>{
                            {"warehouse_id", "42"}, {"name", "Acme"}, {"domain", "acme.com"}}));
  EXPECT_EQ(Bodies("upsert")[0]["inputs"][0]["idProperty"], "warehouse_id");
  EXPECT_EQ(Bodies("upsert")[0]["inputs"][0]["id"], "42");

  fake_->AddProperty("deals", "deal_key", /*unique=*/true);
  auto deals =
      Session("upsert_deal", {"properties.deal_key", "properties.amount", "properties.dealstage"},
              {"properties.deal_key"});
  ASSERT_NE(deals, nullptr);
  std::vector<OutgoingRecord> deal_batch = {
      Row3("d1", Value::String("d1"), Value::Double(1500.5), Value::String("closedwon")),
      Row3("d2", Value::String("d2"), Value::Double(10), Value::String("notastage"))};
  result = deals->SendBatch(deal_batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kInvalidArgument));
  EXPECT_THAT(std::string((*result)[1].message()), HasSubstr("INVALID_OPTION"));
  EXPECT_THAT(std::string((*result)[1].message()), HasSubstr("dealstage"));
  live = Live("deals", "deal_key");
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live["d1"]["amount"], "1500.5");
}

TEST_F(HubSpotDestinationTest, UpsertObjectSendsEachObjectTypeToItsPath) {
  StartFake();
  HubSpotObjectSchema pets;
  pets.label = "PET";
  pets.scope = "crm.objects.custom";
  pets.properties = {"pet_id", "name"};
  pets.unique_properties = {"pet_id"};
  fake_->AddSchema("p_pets", pets, "2-1001");
  HubSpotObjectSchema cars = pets;
  cars.label = "CAR";
  fake_->AddSchema("p_cars", cars);
  auto session = Session("upsert_object", {"object_type", "properties.pet_id", "properties.name"},
                         {"properties.pet_id"});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Row3("1", Value::String("p_pets"), Value::String("1"), Value::String("Rex")),
      Row3("2", Value::String("p_cars"), Value::String("2"), Value::String("Herbie")),
      Row3("3", Value::String("2-1001"), Value::String("3"), Value::String("Tom")),
      Row3("4", Value::String("p_nope"), Value::String("4"), Value::String("?")),
      Row3("5", Value::Null(), Value::String("5"), Value::String("?")),
      Deleted("6", Value::String("6"))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk, Code::kInvalidArgument,
                                          Code::kInvalidArgument, Code::kFailedPrecondition));
  EXPECT_THAT(std::string((*result)[3].message()), HasSubstr("no object type \"p_nope\""));
  EXPECT_THAT(std::string((*result)[4].message()), HasSubstr("object_type"));
  EXPECT_THAT(std::string((*result)[5].message()), HasSubstr("records: added_or_updated"));
  EXPECT_EQ(fake_->Records("p_pets").size(), 2u);
  EXPECT_EQ(fake_->Records("p_cars").size(), 1u);
  std::vector<std::string> targets;
  for (const FakeHubSpotRequest& r : fake_->Requests()) targets.push_back(r.target);
  EXPECT_THAT(
      targets,
      ElementsAre("/crm/v3/objects/p_pets/batch/upsert", "/crm/v3/objects/p_cars/batch/upsert",
                  "/crm/v3/objects/2-1001/batch/upsert", "/crm/v3/objects/p_nope/batch/upsert"));
  EXPECT_EQ(Bodies("upsert")[0]["inputs"][0]["properties"],
            json({{"pet_id", "1"}, {"name", "Rex"}}));
}

TEST_F(HubSpotDestinationTest, RecordIdIdentityUpdatesAndArchivesById) {
  StartFake();
  std::string acme = fake_->Seed("companies", {{"name", "Acme"}});
  std::string globex = fake_->Seed("companies", {{"name", "Globex"}});
  auto session = Session("upsert_company", {"properties.hs_object_id", "properties.name"},
                         {"properties.hs_object_id"});
  ASSERT_NE(session, nullptr);
  OutgoingRecord update;
  update.key = acme;
  update.change = ChangeKind::kUpdated;
  update.dedup_id = "u1";
  update.values = {Value::String(acme), Value::String("Acme Inc")};
  OutgoingRecord unknown = update;
  unknown.key = "999999";
  unknown.dedup_id = "u2";
  unknown.values = {Value::Int64(999999), Value::String("Nobody")};
  OutgoingRecord bad = update;
  bad.key = "x";
  bad.dedup_id = "u3";
  bad.values = {Value::String("abc"), Value::String("Bad")};
  std::vector<OutgoingRecord> batch = {update, unknown, bad,
                                       Deleted(globex, Value::String(globex))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result),
              ElementsAre(Code::kOk, Code::kInvalidArgument, Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT(std::string((*result)[1].message()), HasSubstr("OBJECT_NOT_FOUND"));
  EXPECT_THAT(std::string((*result)[2].message()), HasSubstr("digits only"));
  std::vector<FakeHubSpotRecord> live = fake_->Records("companies");
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].id, acme);
  EXPECT_EQ(live[0].properties.at("name"), "Acme Inc");
  EXPECT_EQ(fake_->Records("companies", /*archived=*/true)[0].id, globex);
  // By id: batch/update without idProperty and hs_object_id not sent as a property;
  // archive directly, no read.
  json body = Bodies("update")[0];
  EXPECT_EQ(
      body["inputs"][0],
      json({{"id", acme}, {"properties", {{"name", "Acme Inc"}}}, {"objectWriteTraceId", "u1"}}));
  EXPECT_EQ(fake_->CountOperation("read"), 0);
  EXPECT_EQ(Bodies("archive")[0], json({{"inputs", {{{"id", globex}}}}}));
}

// ---------------------------------------------------------------- partial failures

TEST_F(HubSpotDestinationTest, MultiStatusErrorsAreMatchedById) {
  StartFake();
  // `properties` mapped whole from a JSON column, then two properties into it.
  auto session =
      Session("upsert_contact", {"properties", "properties.email", "properties.firstname"},
              {"properties.email"});
  ASSERT_NE(session, nullptr);
  auto json_value = [](const char* text) { return Value::Text(ValueType::kJson, text); };
  std::vector<OutgoingRecord> batch = {
      Row3("1", json_value("{}"), Value::String("ann@x.io"), Value::String("Ann")),
      Row3("2", json_value("{}"), Value::String("not-an-email"), Value::String("Bob")),
      Row3("3", json_value(R"({"favourite":"tea"})"), Value::String("cy@x.io"),
           Value::String("Cy")),
      Row3("4", Value::Null(), Value::String("dee@x.io"), Value::String("Dee")),
  };
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result),
              ElementsAre(Code::kOk, Code::kInvalidArgument, Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT(std::string((*result)[1].message()), HasSubstr("INVALID_EMAIL"));
  EXPECT_THAT(std::string((*result)[1].message()), HasSubstr("not-an-email is invalid"));
  EXPECT_THAT(std::string((*result)[2].message()), HasSubstr("PROPERTY_DOESNT_EXIST"));
  EXPECT_THAT(std::string((*result)[2].message()), HasSubstr("favourite"));
  EXPECT_EQ(fake_->CountStatus(207), 1);
  EXPECT_EQ(fake_->request_count(), 1);
  auto live = Live("contacts", "email");
  EXPECT_EQ(live.size(), 2u);
  EXPECT_TRUE(live.count("ann@x.io") && live.count("dee@x.io"));
}

TEST_F(HubSpotDestinationTest, EmailsMatchRegardlessOfCase) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("1", "Ann@X.io", "Ann"),
                                       Contact("2", "BOB@x", "Bob")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  // The fake, like HubSpot, stores emails in lower case: results come back as
  // "ann@x.io" and errors name the id as sent; both still match their record.
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kInvalidArgument));
  ASSERT_TRUE(fake_->Find("contacts", "email", "ann@x.io").has_value());
}

TEST_F(HubSpotDestinationTest, WholeBatch400IsBisectedToTheBadRecord) {
  FakeHubSpotOptions opts;
  opts.validation = HubSpotValidationMode::kWholeBatch;
  StartFake(opts);
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("1", "a@x.io", "A"), Contact("2", "b@x.io", "B"),
                                       Contact("3", "c@x.io", "C", Value::String("notastage")),
                                       Contact("4", "d@x.io", "D")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kInvalidArgument, Code::kOk));
  EXPECT_THAT(std::string((*result)[2].message()), HasSubstr("HTTP 400"));
  EXPECT_THAT(std::string((*result)[2].message()), HasSubstr("lifecyclestage"));
  EXPECT_THAT(std::string((*result)[2].message()), HasSubstr("INVALID_OPTION"));
  // [1..4] 400 -> [1,2] ok, [3,4] 400 -> [3] 400, [4] ok.
  std::vector<int> sizes;
  for (const FakeHubSpotRequest& r : fake_->Requests()) sizes.push_back(r.inputs);
  EXPECT_THAT(sizes, ElementsAre(4, 2, 2, 1, 1));
  EXPECT_EQ(Live("contacts", "email").size(), 3u);
  EXPECT_EQ(clock_.total_slept(), seconds(0));
}

TEST_F(HubSpotDestinationTest, DuplicateIdsInABatchGoInSuccessiveRequests) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("1", "ann@x.io", "First"),
                                       Contact("2", "bob@x.io", "Bob"),
                                       Contact("3", "ANN@x.io", "Second")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk));
  std::vector<json> bodies = Bodies("upsert");
  ASSERT_EQ(bodies.size(), 2u);
  EXPECT_EQ(bodies[0]["inputs"].size(), 2u);
  EXPECT_EQ(bodies[1]["inputs"].size(), 1u);
  EXPECT_EQ(fake_->CountStatus(400), 0);
  auto live = Live("contacts", "email");
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live["ann@x.io"]["firstname"], "Second");
}

TEST_F(HubSpotDestinationTest, BadPayloadFailsOnlyThatRecord) {
  StartFake();
  fake_->AddProperty("contacts", "interests");
  auto session = Session("upsert_contact",
                         {"properties.email", "properties.firstname", "properties.interests"},
                         {"properties.email"});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Row3("1", Value::String("ann@x.io"), Value::String("Ann"),
           Value::Text(ValueType::kJson, R"(["golf","chess"])")),
      Row3("2", Value::String("bob@x.io"), Value::String("Bob"),
           Value::Text(ValueType::kJson, R"({"nested":true})")),
      Row3("3", Value::Null(), Value::String("NoEmail"), Value::Null()),
  };
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result),
              ElementsAre(Code::kOk, Code::kInvalidArgument, Code::kInvalidArgument));
  EXPECT_THAT(std::string((*result)[1].message()), HasSubstr("properties.interests is a JSON"));
  EXPECT_THAT(std::string((*result)[2].message()), HasSubstr("unique property email is empty"));
  std::vector<json> bodies = Bodies("upsert");
  ASSERT_EQ(bodies.size(), 1u);
  ASSERT_EQ(bodies[0]["inputs"].size(), 1u);
  EXPECT_EQ(Live("contacts", "email")["ann@x.io"]["interests"], "golf;chess");
}

// ---------------------------------------------------------------- deletes

TEST_F(HubSpotDestinationTest, DeletesAreFoundByIdPropertyThenArchived) {
  StartFake();
  std::string ann = fake_->Seed("contacts", {{"email", "ann@x.io"}});
  std::string bob = fake_->Seed("contacts", {{"email", "bob@x.io"}});
  fake_->Seed("contacts", {{"email", "cy@x.io"}});
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Deleted("1", Value::String("ann@x.io")),
                                       Deleted("2", Value::String("BOB@x.io")),
                                       Deleted("3", Value::String("gone@x.io"))};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk, Code::kOk));
  auto live = Live("contacts", "email");
  ASSERT_EQ(live.size(), 1u);
  EXPECT_TRUE(live.count("cy@x.io"));
  std::vector<std::string> archived;
  for (const FakeHubSpotRecord& r : fake_->Records("contacts", true)) archived.push_back(r.id);
  EXPECT_THAT(archived, UnorderedElementsAre(ann, bob));

  std::vector<FakeHubSpotRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].target, "/crm/v3/objects/contacts/batch/read?archived=false");
  EXPECT_EQ(json::parse(reqs[0].body),
            json::parse(R"({"idProperty":"email","properties":["email"],"inputs":[
                {"id":"ann@x.io"},{"id":"BOB@x.io"},{"id":"gone@x.io"}]})"));
  EXPECT_EQ(reqs[0].status, 207);  // gone@x.io is not found
  EXPECT_EQ(reqs[1].target, "/crm/v3/objects/contacts/batch/archive");
  EXPECT_EQ(reqs[1].status, 204);
  json archive = json::parse(reqs[1].body);
  EXPECT_THAT(archive["inputs"], UnorderedElementsAre(json({{"id", ann}}), json({{"id", bob}})));
}

TEST_F(HubSpotDestinationTest, DeleteOfAnIdUpsertedInTheSameBatchIsNotArchived) {
  StartFake();
  fake_->Seed("contacts", {{"email", "ann@x.io"}, {"firstname", "Old"}});
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  // Row 1 (ann) left the model and row 9 now holds her email.
  std::vector<OutgoingRecord> batch = {Deleted("1", Value::String("ann@x.io")),
                                       Contact("9", "ann@x.io", "New")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));
  EXPECT_EQ(fake_->CountOperation("archive"), 0);
  EXPECT_EQ(Live("contacts", "email")["ann@x.io"]["firstname"], "New");
}

// ---------------------------------------------------------------- rate limits

TEST_F(HubSpotDestinationTest, TenSecondlyLimitWaitsForTheWindowThenSucceeds) {
  FakeHubSpotOptions opts;
  opts.ten_secondly_limit = 2;
  StartFake(opts);
  auto session = ContactSession({{"requests_per_10_seconds", 100}});
  ASSERT_NE(session, nullptr);
  for (int i = 0; i < 3; ++i) {
    std::vector<OutgoingRecord> batch = {
        Contact(std::to_string(i), fmt::format("u{}@x.io", i), "U")};
    auto result = session->SendBatch(batch);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk)) << (*result)[0];
  }
  EXPECT_EQ(fake_->CountStatus(429), 1);
  EXPECT_EQ(fake_->request_count(), 4);
  // Waited for the window the 429 reply named (X-HubSpot-RateLimit-Interval-Milliseconds).
  EXPECT_EQ(clock_.total_slept(), seconds(10));
  EXPECT_EQ(Live("contacts", "email").size(), 3u);
}

TEST_F(HubSpotDestinationTest, TenSecondlyLimitExhaustedIsResourceExhausted) {
  StartFake();
  fake_->EnqueueN(3, FakeHubSpotReply::TenSecondlyLimit());
  auto session = ContactSession({{"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("1", "ann@x.io", "Ann")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ((*result)[0].code(), Code::kResourceExhausted);
  EXPECT_EQ(RetryAfter((*result)[0]), seconds(10));
  EXPECT_EQ(fake_->request_count(), 3);
  EXPECT_EQ(clock_.total_slept(), seconds(20));
}

TEST_F(HubSpotDestinationTest, DailyLimitIsNotRetriedAndPausesTheDestination) {
  StartFake();
  fake_->Enqueue(FakeHubSpotReply::DailyLimit());
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("1", "ann@x.io", "Ann"),
                                       Contact("2", "bob@x.io", "Bob")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kResourceExhausted);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("daily API limit"));
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("resets at midnight in the HubSpot account's time zone"));
  EXPECT_EQ(fake_->request_count(), 1);
  EXPECT_EQ(clock_.total_slept(), seconds(0));

  // The destination holds off: no request while the hold lasts, even from a new session.
  result = session->SendBatch(batch);
  EXPECT_EQ(result.status().code(), Code::kResourceExhausted);
  SessionOptions opts;
  opts.mapping = "other";
  opts.action = def_.FindAction("upsert_contact");
  opts.layout.fields = {"properties.email", "properties.firstname", "properties.lifecyclestage"};
  opts.layout.identity = {"properties.email"};
  auto other = dest_->StartSession(opts);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ((*other)->SendBatch(batch).status().code(), Code::kResourceExhausted);
  EXPECT_EQ(dest_->CheckConnection().code(), Code::kResourceExhausted);
  EXPECT_EQ(fake_->request_count(), 1);

  clock_.Advance(minutes(16));
  result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk, Code::kOk));
}

TEST_F(HubSpotDestinationTest, FakeEnforcesTheDailyLimit) {
  FakeHubSpotOptions opts;
  opts.daily_limit = 1;
  StartFake(opts);
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> first = {Contact("1", "ann@x.io", "Ann")};
  std::vector<OutgoingRecord> second = {Contact("2", "bob@x.io", "Bob")};
  ASSERT_TRUE(session->SendBatch(first).ok());
  auto result = session->SendBatch(second);
  EXPECT_EQ(result.status().code(), Code::kResourceExhausted);
  std::vector<FakeHubSpotRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].status, 429);
  EXPECT_EQ(Live("contacts", "email").size(), 1u);
}

TEST_F(HubSpotDestinationTest, VendorLimiterKeepsRequestsWithinTheWindow) {
  FakeHubSpotOptions opts;
  opts.ten_secondly_limit = 5;
  StartFake(opts);
  auto session = ContactSession({{"requests_per_10_seconds", 5}});
  ASSERT_NE(session, nullptr);
  for (int i = 0; i < 12; ++i) {
    std::vector<OutgoingRecord> batch = {
        Contact(std::to_string(i), fmt::format("u{}@x.io", i), "U")};
    auto result = session->SendBatch(batch);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_TRUE((*result)[0].ok()) << (*result)[0];
  }
  EXPECT_EQ(fake_->CountStatus(429), 0);
  EXPECT_EQ(fake_->request_count(), 12);
  EXPECT_EQ(fake_->MaxRequestsInWindow(seconds(10)), 5);
  EXPECT_GE(clock_.total_slept(), seconds(20));
  EXPECT_LE(clock_.total_slept(), seconds(21));
}

TEST_F(HubSpotDestinationTest, UserRequestCapAppliesOnTopOfTheVendorLimit) {
  StartFake();
  auto session = ContactSession({{"max_requests_per_second", 1}});
  ASSERT_NE(session, nullptr);
  for (int i = 0; i < 3; ++i) {
    std::vector<OutgoingRecord> batch = {
        Contact(std::to_string(i), fmt::format("u{}@x.io", i), "U")};
    ASSERT_TRUE(session->SendBatch(batch).ok());
  }
  EXPECT_EQ(fake_->MaxRequestsInWindow(seconds(1)), 1);
  EXPECT_GE(clock_.total_slept(), seconds(2));
}

// ---------------------------------------------------------------- transient errors

TEST_F(HubSpotDestinationTest, ServerErrorsAreRetriedThenExhausted) {
  StartFake();
  auto session = ContactSession({{"max_retries", 2}});
  ASSERT_NE(session, nullptr);
  fake_->Enqueue(FakeHubSpotReply::Status(502, "Bad Gateway"));
  fake_->Enqueue(FakeHubSpotReply::Status(524));
  std::vector<OutgoingRecord> batch = {Contact("1", "ann@x.io", "Ann")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->request_count(), 3);

  fake_->EnqueueN(3, FakeHubSpotReply::Status(503, R"({"status":"error","message":"down"})"));
  std::vector<OutgoingRecord> next = {Contact("2", "bob@x.io", "Bob")};
  result = session->SendBatch(next);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ((*result)[0].code(), Code::kUnavailable);
  EXPECT_THAT(std::string((*result)[0].message()), HasSubstr("HTTP 503 after 3 attempts"));
  EXPECT_EQ(fake_->request_count(), 6);
  EXPECT_FALSE(fake_->Find("contacts", "email", "bob@x.io").has_value());
}

TEST_F(HubSpotDestinationTest, LockedAndMigrationRepliesAreRetriedAfterTheirWait) {
  StartFake();
  auto session = ContactSession();
  ASSERT_NE(session, nullptr);
  fake_->Enqueue(FakeHubSpotReply::Status(423));
  fake_->Enqueue(FakeHubSpotReply::WithRetryAfter(477, "7"));
  std::vector<OutgoingRecord> batch = {Contact("1", "ann@x.io", "Ann")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  EXPECT_EQ(clock_.total_slept(), seconds(2 + 7));
  EXPECT_EQ(fake_->request_count(), 3);
}

TEST_F(HubSpotDestinationTest, SlowReplyBeyondTheTimeoutIsRetriedWithoutDuplicating) {
  StartFake();
  auto session = ContactSession({{"timeout_ms", 300}});
  ASSERT_NE(session, nullptr);
  fake_->Enqueue(FakeHubSpotReply::Slow(milliseconds(1500)));
  std::vector<OutgoingRecord> batch = {Contact("1", "ann@x.io", "Ann")};
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(Codes(*result), ElementsAre(Code::kOk));
  EXPECT_EQ(fake_->CountOperation("upsert"), 2);
  // The first (timed-out) attempt was applied too: upsert by email keeps one contact.
  EXPECT_EQ(fake_->Records("contacts").size(), 1u);
}

// ---------------------------------------------------------------- auth

TEST_F(HubSpotDestinationTest, UnauthorizedStopsTheRun) {
  StartFake();
  auto session = ContactSession({{"access_token", "pat-na1-revoked"}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("1", "ann@x.io", "Ann")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kUnauthenticated);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("access_token"));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("INVALID_AUTHENTICATION"));
  EXPECT_EQ(fake_->request_count(), 1);  // not retried
  // The session sends nothing more.
  EXPECT_EQ(session->SendBatch(batch).status().code(), Code::kUnauthenticated);
  EXPECT_EQ(fake_->request_count(), 1);

  absl::Status check = dest_->CheckConnection();
  EXPECT_EQ(check.code(), Code::kUnauthenticated);
  EXPECT_THAT(std::string(check.message()), HasSubstr("revoked"));
}

TEST_F(HubSpotDestinationTest, MissingScopeIsPermissionDeniedNamingTheScope) {
  StartFake();
  auto session = ContactSession({{"access_token", kReadOnlyToken}});
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Contact("1", "ann@x.io", "Ann")};
  auto result = session->SendBatch(batch);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), Code::kPermissionDenied);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("lacks the scope crm.objects.contacts.write"));
  EXPECT_EQ(fake_->request_count(), 1);
  // The read-only token passes the connection check (it reads one contact).
  EXPECT_TRUE(dest_->CheckConnection().ok());

  auto none = Create(Settings({{"access_token", kNoScopeToken}}));
  ASSERT_TRUE(none.ok());
  absl::Status check = (*none)->CheckConnection();
  EXPECT_EQ(check.code(), Code::kPermissionDenied);
  EXPECT_THAT(std::string(check.message()), HasSubstr("crm.objects.contacts.read"));
}

TEST_F(HubSpotDestinationTest, CheckConnectionListsOneContact) {
  StartFake();
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  EXPECT_TRUE((*dest)->CheckConnection().ok());
  std::vector<FakeHubSpotRequest> reqs = fake_->Requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "GET");
  EXPECT_EQ(reqs[0].target, "/crm/v3/objects/contacts?limit=1");
  EXPECT_EQ(reqs[0].authorization, "Bearer " + kToken);

  fake_->Enqueue(FakeHubSpotReply::Status(503));
  EXPECT_EQ((*dest)->CheckConnection().code(), Code::kUnavailable);
  EXPECT_EQ(fake_->request_count(), 2);  // not retried
  auto wrong = Create(Settings({{"base_url", fake_->BaseUrl() + "/proxy"}}));
  ASSERT_TRUE(wrong.ok());
  absl::Status s = (*wrong)->CheckConnection();
  EXPECT_EQ(s.code(), Code::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("base_url"));
}

// ---------------------------------------------------------------- the fake itself

class FakeHubSpotServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeHubSpotOptions opts;
    opts.clock = &clock_;
    opts.max_inputs = 3;
    fake_ = std::make_unique<FakeHubSpotServer>(opts);
    ASSERT_TRUE(fake_->Start().ok());
  }
  HttpResponse Post(const std::string& path, const std::string& body,
                    const std::string& token = "pat-na1-fake-token") {
    HttpRequest req;
    req.url = fake_->BaseUrl() + path;
    req.body = body;
    req.headers = {{"Content-Type", "application/json"}};
    if (!token.empty()) req.headers.emplace_back("Authorization", "Bearer " + token);
    absl::StatusOr<HttpResponse> r = http_->Send(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse();
  }

  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeHubSpotServer> fake_;
};

TEST_F(FakeHubSpotServerTest, EnforcesAuthLimitsAndDuplicateIds) {
  const std::string path = "/crm/v3/objects/contacts/batch/upsert";
  HttpResponse r = Post(path, R"({"inputs":[]})", "");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(json::parse(r.body)["category"], "INVALID_AUTHENTICATION");

  r = Post(path, R"({"inputs":[
      {"idProperty":"email","id":"a@x.io","properties":{}},
      {"idProperty":"email","id":"b@x.io","properties":{}},
      {"idProperty":"email","id":"c@x.io","properties":{}},
      {"idProperty":"email","id":"d@x.io","properties":{}}]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("exceeds the limit of 3"));

  r = Post(path, R"({"inputs":[{"idProperty":"email","id":"a@x.io","properties":{}},
                               {"idProperty":"email","id":"A@x.io","properties":{}}]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("Duplicate IDs found in batch input"));

  r = Post(path, R"({"inputs":[{"idProperty":"firstname","id":"Ann","properties":{}}]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("not a unique property"));
  EXPECT_TRUE(fake_->Records("contacts").empty());

  r = Post(path,
           R"({"inputs":[{"idProperty":"email","id":"a@x.io","properties":{"firstname":"A"}}]})");
  EXPECT_EQ(r.status, 200);
  json body = json::parse(r.body);
  EXPECT_EQ(body["status"], "COMPLETE");
  EXPECT_EQ(body["results"][0]["new"], true);
  EXPECT_EQ(body["results"][0]["properties"]["email"], "a@x.io");
  EXPECT_EQ(r.Header("x-hubspot-ratelimit-max"), "190");
  EXPECT_EQ(r.Header("x-hubspot-ratelimit-interval-milliseconds"), "10000");
  r = Post(path,
           R"({"inputs":[{"idProperty":"email","id":"a@x.io","properties":{"firstname":"B"}}]})");
  EXPECT_EQ(json::parse(r.body)["results"][0]["new"], false);
  EXPECT_EQ(fake_->Records("contacts").size(), 1u);

  // Unique values stay unique across records.
  fake_->AddProperty("contacts", "external_id", /*unique=*/true);
  Post(path,
       R"({"inputs":[{"idProperty":"email","id":"b@x.io","properties":{"external_id":"7"}}]})");
  r = Post(path,
           R"({"inputs":[{"idProperty":"email","id":"c@x.io","properties":{"external_id":"7"}}]})");
  EXPECT_EQ(r.status, 207);
  EXPECT_EQ(json::parse(r.body)["errors"][0]["context"]["ids"][0], "c@x.io");
}

TEST_F(FakeHubSpotServerTest, RateLimitBodyNamesThePolicy) {
  FakeHubSpotOptions opts;
  opts.clock = &clock_;
  opts.ten_secondly_limit = 1;
  fake_ = std::make_unique<FakeHubSpotServer>(opts);
  ASSERT_TRUE(fake_->Start().ok());
  const std::string read = "/crm/v3/objects/contacts/batch/read";
  EXPECT_EQ(Post(read, R"({"inputs":[]})").status, 200);
  HttpResponse r = Post(read, R"({"inputs":[]})");
  ASSERT_EQ(r.status, 429);
  json body = json::parse(r.body);
  EXPECT_EQ(body["policyName"], "TEN_SECONDLY_ROLLING");
  EXPECT_EQ(body["errorType"], "RATE_LIMIT");
  EXPECT_EQ(body["message"], "You have reached your ten_secondly_rolling limit.");
  clock_.Advance(seconds(10));
  EXPECT_EQ(Post(read, R"({"inputs":[]})").status, 200);
}

}  // namespace
}  // namespace backflow
