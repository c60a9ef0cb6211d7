#include "backflow/destinations/google_sheets/google_sheets_destination.h"

#include <chrono>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/destinations/destination.h"
#include "backflow/destinations/google_sheets/fake_sheets_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;
using Grid = std::vector<std::vector<json>>;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kEmail[] = "sync@backflow-test.iam.gserviceaccount.com";
constexpr char kDoc[] = "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms";
constexpr char kSheet[] = "Customers";

// One key for the whole binary: RSA generation is slow under sanitizers.
const std::string& TestPrivateKey() {
  static const std::string* pem = [] {
    absl::StatusOr<RsaKeyPair> k = GenerateRsaKeyPair();
    EXPECT_TRUE(k.ok());
    return new std::string(k->private_key_pem);
  }();
  return *pem;
}

OutgoingRecord Rec(ChangeKind change, Row values) {
  OutgoingRecord r;
  r.change = change;
  r.key = values.front().ToString();
  r.dedup_id = "d-" + r.key;
  r.values = std::move(values);
  return r;
}

// A customer for layout {id, email, plan}.
OutgoingRecord Customer(const std::string& id, const std::string& plan,
                        ChangeKind change = ChangeKind::kAdded) {
  return Rec(change, {Value::String(id), Value::String(id + "@x.io"), Value::String(plan)});
}

OutgoingRecord Deleted(const std::string& id) {
  return Rec(ChangeKind::kDeleted, {Value::String(id)});
}

std::vector<absl::StatusCode> Codes(const std::vector<absl::Status>& statuses) {
  std::vector<absl::StatusCode> out;
  for (const absl::Status& s : statuses) out.push_back(s.code());
  return out;
}

class GoogleSheetsTest : public ::testing::Test {
 protected:
  void SetUp() override { StartFake({}); }

  void StartFake(FakeSheetsOptions options) {
    options.clock = &clock_;
    fake_ = std::make_unique<FakeSheetsServer>(std::move(options));
    ASSERT_TRUE(fake_->Start().ok());
    key_json_ = fake_->AddServiceAccount(kEmail, TestPrivateKey());
    ASSERT_FALSE(key_json_.empty());
    fake_->CreateSpreadsheet(kDoc, kSheet);
    fake_->Share(kDoc, kEmail);
  }

  json Settings(const json& extra = json::object()) {
    json s = {{"service_account_key", key_json_},
              {"spreadsheet_id", kDoc},
              {"sheet", kSheet},
              {"token_url", fake_->TokenUrl()},
              {"base_url", fake_->BaseUrl()},
              {"read_requests_per_minute", 10'000},
              {"write_requests_per_minute", 10'000}};
    for (auto& [k, v] : extra.items()) s[k] = v;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Destination>> Create(json settings) {
    std::vector<std::string> problems = CheckSettings(def_.settings, settings);
    if (!problems.empty()) return absl::InvalidArgumentError(problems.front());
    return def_.create(settings, ConnectorEnv{http_.get(), &clock_});
  }

  std::unique_ptr<ActionSession> Session(const json& extra = json::object(),
                                         std::vector<std::string> fields = {"id", "email", "plan"},
                                         std::vector<std::string> identity = {"id"}) {
    absl::StatusOr<std::unique_ptr<Destination>> dest = Create(Settings(extra));
    EXPECT_TRUE(dest.ok()) << dest.status();
    if (!dest.ok()) return nullptr;
    dest_ = *std::move(dest);
    SessionOptions opts;
    opts.mapping = "to_sheet";
    opts.run_id = 3;
    opts.action = def_.FindAction("upsert_rows");
    opts.layout.fields = std::move(fields);
    opts.layout.identity = std::move(identity);
    absl::StatusOr<std::unique_ptr<ActionSession>> session = dest_->StartSession(opts);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *std::move(session) : nullptr;
  }

  std::vector<absl::Status> SendOk(ActionSession& session, std::vector<OutgoingRecord> batch) {
    absl::StatusOr<std::vector<absl::Status>> r = session.SendBatch(batch);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<absl::Status>();
  }

  Grid Values() const { return fake_->Values(kDoc, kSheet); }

  // Requests that are not reads (token requests aside).
  int64_t Writes() const {
    int64_t n = 0;
    for (const SheetsRequestLog& r : fake_->Requests()) {
      if (r.method != "GET" && r.target.find("/v4/") == 0) ++n;
    }
    return n;
  }

  DestinationDefinition def_ = GoogleSheetsDestinationDefinition();
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeSheetsServer> fake_;
  std::string key_json_;
  std::unique_ptr<Destination> dest_;
};

TEST(SheetsHelpersTest, ColumnsNamesIdsAndKeys) {
  EXPECT_EQ(SheetsColumnName(0), "A");
  EXPECT_EQ(SheetsColumnName(25), "Z");
  EXPECT_EQ(SheetsColumnName(26), "AA");
  EXPECT_EQ(SheetsColumnName(701), "ZZ");
  EXPECT_EQ(SheetsColumnName(702), "AAA");
  EXPECT_EQ(SheetsQuotedName("Bob's sheet"), "'Bob''s sheet'");
  EXPECT_EQ(SheetsSpreadsheetId("https://docs.google.com/spreadsheets/d/abc-_1/edit#gid=0"),
            "abc-_1");
  EXPECT_EQ(SheetsSpreadsheetId("abc-_1"), "abc-_1");
  EXPECT_EQ(SheetsKeyText(json("u1")), "u1");
  EXPECT_EQ(SheetsKeyText(json(42)), "42");
  EXPECT_EQ(SheetsKeyText(json(42.0)), "42");
  EXPECT_EQ(SheetsKeyText(json(1.5)), "1.5");
  EXPECT_EQ(SheetsKeyText(json(true)), "TRUE");
  EXPECT_EQ(SheetsKeyText(json(nullptr)), "");
}

TEST_F(GoogleSheetsTest, DefinitionDeclaresSettingsAndAction) {
  EXPECT_EQ(def_.type, "google_sheets");
  const SettingSpec* key = FindSetting(def_.settings, "service_account_key");
  ASSERT_NE(key, nullptr);
  EXPECT_TRUE(key->required);
  EXPECT_TRUE(key->secret);
  EXPECT_TRUE(FindSetting(def_.settings, "spreadsheet_id")->required);
  EXPECT_EQ(FindSetting(def_.settings, "sheet")->default_value, "Sheet1");
  EXPECT_EQ(FindSetting(def_.settings, "token_url")->default_value,
            "https://oauth2.googleapis.com/token");
  EXPECT_EQ(FindSetting(def_.settings, "base_url")->default_value, "https://sheets.googleapis.com");
  EXPECT_EQ(FindSetting(def_.settings, "write_requests_per_minute")->default_value, 60);
  EXPECT_EQ(FindSetting(def_.settings, "read_requests_per_minute")->default_value, 60);
  for (const char* s :
       {"max_requests_per_second", "timeout_ms", "max_retries", "max_retry_wait_s"}) {
    EXPECT_NE(FindSetting(def_.settings, s), nullptr) << s;
  }
  const ActionSpec* a = def_.FindAction("upsert_rows");
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(a->Supports(RecordSelection::kAll));
  EXPECT_TRUE(a->Supports(RecordSelection::kDeleted));
  EXPECT_TRUE(a->AcceptsField("Lifetime value"));
  EXPECT_EQ(a->max_batch_records, 10'000);
  EXPECT_FALSE(a->commit_on_finish);
}

TEST_F(GoogleSheetsTest, BadSettingsAreInvalidArgumentsWithoutEchoingTheKey) {
  auto code_and_message = [&](const json& extra) {
    absl::StatusOr<std::unique_ptr<Destination>> d = Create(Settings(extra));
    EXPECT_FALSE(d.ok());
    return d.ok() ? std::pair{absl::StatusCode::kOk, std::string()}
                  : std::pair{d.status().code(), std::string(d.status().message())};
  };
  auto [code, message] = code_and_message({{"service_account_key", "/home/me/key.json"}});
  EXPECT_EQ(code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message, HasSubstr("content (not the path) of the service account's JSON key file"));

  json key = json::parse(key_json_);
  key["private_key"] = "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n";
  std::tie(code, message) = code_and_message({{"service_account_key", key.dump()}});
  EXPECT_EQ(code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message, HasSubstr("service_account_key: private_key"));
  EXPECT_THAT(message, Not(HasSubstr("not a key")));

  key = json::parse(key_json_);
  key["type"] = "authorized_user";
  std::tie(code, message) = code_and_message({{"service_account_key", key.dump()}});
  EXPECT_THAT(message, HasSubstr("\"authorized_user\", not \"service_account\""));

  // A spreadsheet URL is accepted for spreadsheet_id.
  absl::StatusOr<std::unique_ptr<Destination>> d =
      Create(Settings({{"spreadsheet_id",
                        std::string("https://docs.google.com/spreadsheets/d/") + kDoc + "/edit"}}));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE((*d)->CheckConnection().ok());
}

TEST_F(GoogleSheetsTest, CheckConnectionMintsATokenAndReadsWithoutWriting) {
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  absl::Status s = (*dest)->CheckConnection();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(fake_->tokens_issued(), 1);
  EXPECT_EQ(Writes(), 0);
  EXPECT_GE(fake_->CountRequests("/v4/spreadsheets/", 200), 2);

  // The assertion the fake accepted carried Google's claims; check the token request.
  std::vector<SheetsRequestLog> reqs = fake_->Requests();
  ASSERT_FALSE(reqs.empty());
  EXPECT_EQ(reqs[0].target, "/token");
  EXPECT_THAT(reqs[0].body,
              HasSubstr("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"));

  fake_->AddSheet(kDoc, "Other");
  auto missing = Create(Settings({{"sheet", "Nope"}}));
  s = (*missing)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("no sheet named \"Nope\""));
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"Customers\", \"Other\""));

  fake_->Unshare(kDoc, kEmail);
  s = (*dest)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(std::string("share the spreadsheet with ") + kEmail + " as an Editor"));

  auto unknown = Create(Settings({{"spreadsheet_id", "does-not-exist"}}));
  s = (*unknown)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("check spreadsheet_id"));

  // A key Google does not know (deleted, or another account's).
  absl::StatusOr<RsaKeyPair> other = GenerateRsaKeyPair();
  json key = json::parse(key_json_);
  key["private_key"] = other->private_key_pem;
  auto wrong = Create(Settings({{"service_account_key", key.dump()}}));
  ASSERT_TRUE(wrong.ok());
  s = (*wrong)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(s.message()), HasSubstr("invalid_grant: Invalid JWT Signature."));
  EXPECT_THAT(std::string(s.message()), HasSubstr(kEmail));
}

TEST_F(GoogleSheetsTest, AddsUpdatesAndDeletesRows) {
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<absl::Status> r =
      SendOk(*session, {Customer("c1", "pro"), Customer("c2", "free"), Customer("c3", "team")});
  EXPECT_THAT(Codes(r),
              ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk, absl::StatusCode::kOk));
  EXPECT_EQ(Values(), (Grid{{"id", "email", "plan"},
                            {"c1", "c1@x.io", "pro"},
                            {"c2", "c2@x.io", "free"},
                            {"c3", "c3@x.io", "team"}}));
  // Header written once, new rows appended in one request, no update yet.
  EXPECT_EQ(fake_->CountRequests(":append"), 1);
  EXPECT_EQ(fake_->CountRequests("/values:batchUpdate"), 0);

  fake_->ClearRequests();
  r = SendOk(*session, {Customer("c2", "enterprise", ChangeKind::kUpdated), Deleted("c1"),
                        Customer("c4", "free")});
  EXPECT_THAT(Codes(r),
              ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk, absl::StatusCode::kOk));
  EXPECT_EQ(Values(), (Grid{{"id", "email", "plan"},
                            {"c2", "c2@x.io", "enterprise"},
                            {"c3", "c3@x.io", "team"},
                            {"c4", "c4@x.io", "free"}}));
  // One read, then one request per kind of write.
  EXPECT_EQ(fake_->CountRequests("/values:batchGet"), 1);
  EXPECT_EQ(fake_->CountRequests("/values:batchUpdate"), 1);
  EXPECT_EQ(fake_->CountRequests(std::string(kDoc) + ":batchUpdate"), 1);
  EXPECT_EQ(fake_->CountRequests(":append"), 1);
  for (const SheetsRequestLog& req : fake_->Requests()) {
    if (req.target.find("/values:batchUpdate") == std::string::npos) continue;
    json body = json::parse(req.body);
    EXPECT_EQ(body["valueInputOption"], "RAW");
    EXPECT_EQ(body["data"][0]["range"], "'Customers'!A3:C3");  // c2: header, c1, c2
  }

  // Deleting a key that is not in the sheet succeeds without a write.
  fake_->ClearRequests();
  r = SendOk(*session, {Deleted("c9")});
  EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk));
  EXPECT_EQ(Writes(), 0);
  EXPECT_TRUE(session->Finish().ok());
}

TEST_F(GoogleSheetsTest, ValuesAreWrittenRawWithTypes) {
  auto session = Session({}, {"id", "n", "ok", "note", "meta", "big"});
  ASSERT_NE(session, nullptr);
  OutgoingRecord a =
      Rec(ChangeKind::kAdded,
          {Value::Int64(42), Value::Double(1.5), Value::Bool(true), Value::String("=SUM(A1:A2)"),
           Value::Text(ValueType::kJson, R"({"a":[1,2]})"), Value::Int64(9007199254740993)});
  OutgoingRecord b = Rec(ChangeKind::kAdded, {Value::Int64(7), Value::Null(), Value::Bool(false),
                                              Value::String("x"), Value::Null(), Value::Null()});
  SendOk(*session, {a, b});
  EXPECT_EQ(Values(), (Grid{{"id", "n", "ok", "note", "meta", "big"},
                            {42, 1.5, true, "=SUM(A1:A2)", R"({"a":[1,2]})", "9007199254740993"},
                            {7, "", false, "x"}}));
  // Numeric keys are found again (read back unformatted): an update, not a new row.
  OutgoingRecord b2 = Rec(ChangeKind::kUpdated, {Value::Int64(7), Value::Double(2), Value::Null(),
                                                 Value::Null(), Value::Null(), Value::Null()});
  SendOk(*session, {b2});
  Grid v = Values();
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[2], (std::vector<json>{7, 2.0}));
}

TEST_F(GoogleSheetsTest, ExistingHeaderColumnsAreFoundByNameAndOthersKept) {
  fake_->AddSheet(kDoc, "Narrow", 1000, 3);
  fake_->SetValues(kDoc, "Narrow", 0, 0,
                   {{"Notes", "plan", "id"}, {"keep me", "old", "c1"}, {"", "x", "other"}});
  auto session = Session({{"sheet", "Narrow"}});
  ASSERT_NE(session, nullptr);
  SendOk(*session, {Customer("c1", "pro", ChangeKind::kUpdated), Customer("c2", "free")});
  // email was added as a new column (the grid grew to hold it); Notes and
  // rows without a mapped key are untouched.
  EXPECT_EQ(fake_->Values(kDoc, "Narrow"), (Grid{{"Notes", "plan", "id", "email"},
                                                 {"keep me", "pro", "c1", "c1@x.io"},
                                                 {"", "x", "other"},
                                                 {"", "free", "c2", "c2@x.io"}}));
  EXPECT_EQ(fake_->GridSize(kDoc, "Narrow").second, 4);

  // Someone swaps two columns between batches: the header is read again.
  fake_->SetValues(
      kDoc, "Narrow", 0, 0,
      {{"Notes", "id", "plan"}, {"keep me", "c1", "pro"}, {"", "other", "x"}, {"", "c2", "free"}});
  SendOk(*session, {Customer("c2", "team", ChangeKind::kUpdated)});
  EXPECT_EQ(fake_->Values(kDoc, "Narrow")[3], (std::vector<json>{"", "c2", "team", "c2@x.io"}));
}

TEST_F(GoogleSheetsTest, RetryAfterATimeoutNeverDuplicatesOrLosesRows) {
  auto session = Session({{"timeout_ms", 400}});
  ASSERT_NE(session, nullptr);
  SendOk(*session, {Customer("c1", "a"), Customer("c2", "b"), Customer("c3", "c")});

  // The append is applied, then the reply comes too late (the client times
  // out): the client cannot know whether the rows were added.
  fake_->EnqueueReply(FakeSheetsReply::CommitThenDelay(":append", milliseconds(1500)));
  fake_->ClearRequests();
  std::vector<absl::Status> r = SendOk(*session, {Customer("c4", "d"), Customer("c5", "e")});
  EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  // The key column was read again: c4 and c5 were there, so they were updated, not re-appended.
  EXPECT_EQ(fake_->CountRequests(":append"), 1);
  EXPECT_EQ(fake_->CountRequests("/values:batchGet"), 2);
  EXPECT_EQ(fake_->CountRequests("/values:batchUpdate", 200), 1);

  // A delete applied but answered too late (client timeout): re-read, not re-deleted.
  fake_->EnqueueReply(
      FakeSheetsReply::CommitThenDelay(std::string(kDoc) + ":batchUpdate", milliseconds(1500)));
  r = SendOk(*session, {Deleted("c2")});
  EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk));
  EXPECT_EQ(fake_->CountRequests(std::string(kDoc) + ":batchUpdate"), 1);

  // The next run re-sends records left in flight as updates: still one row each.
  r = SendOk(*session, {Customer("c4", "d", ChangeKind::kUpdated), Customer("c5", "e")});
  EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  EXPECT_EQ(Values(), (Grid{{"id", "email", "plan"},
                            {"c1", "c1@x.io", "a"},
                            {"c3", "c3@x.io", "c"},
                            {"c4", "c4@x.io", "d"},
                            {"c5", "c5@x.io", "e"}}));
}

TEST_F(GoogleSheetsTest, TokenExpiryMidRunMintsANewOne) {
  FakeSheetsOptions options;
  options.token_lifetime = seconds(300);
  StartFake(options);
  auto session = Session();
  ASSERT_NE(session, nullptr);
  SendOk(*session, {Customer("c1", "a")});
  EXPECT_EQ(fake_->tokens_issued(), 1);
  // Past expires_in minus the margin: a fresh token before any request fails.
  clock_.Advance(seconds(290));
  SendOk(*session, {Customer("c2", "b")});
  EXPECT_EQ(fake_->tokens_issued(), 2);
  EXPECT_EQ(fake_->CountRequests("/v4/", 401), 0);
  // A token revoked early: 401, one new token, the request repeated.
  fake_->RevokeTokens();
  std::vector<absl::Status> r = SendOk(*session, {Customer("c3", "c")});
  EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk));
  EXPECT_EQ(fake_->tokens_issued(), 3);
  EXPECT_EQ(fake_->CountRequests("/v4/", 401), 1);
  EXPECT_EQ(Values().size(), 4u);
}

TEST_F(GoogleSheetsTest, QuotaExceededIsRetriedWithBackoffOnTheClock) {
  FakeSheetsOptions options;
  options.write_requests_per_minute = 2;  // Google's limit, lower than the client's pacing
  StartFake(options);
  auto session = Session({{"max_retries", 20}, {"max_retry_wait_s", 60}});
  ASSERT_NE(session, nullptr);
  for (int i = 0; i < 3; ++i) {
    std::string id = "c" + std::to_string(i);
    std::vector<absl::Status> r = SendOk(*session, {Customer(id, "a"), Customer(id + "x", "b")});
    EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
    r = SendOk(*session, {Customer(id, "z", ChangeKind::kUpdated), Deleted(id + "x")});
    EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  }
  EXPECT_GT(fake_->CountRequests("/v4/", 429), 0);
  EXPECT_GE(clock_.total_slept(), seconds(30));
  EXPECT_EQ(Values(), (Grid{{"id", "email", "plan"},
                            {"c0", "c0@x.io", "z"},
                            {"c1", "c1@x.io", "z"},
                            {"c2", "c2@x.io", "z"}}));

  // With retries exhausted the records fail as rate limited (sent again next run).
  auto impatient = Session({{"max_retries", 0}});
  std::vector<absl::Status> r = SendOk(*impatient, {Customer("c9", "a")});
  SendOk(*impatient, {Customer("c8", "a")});
  r = SendOk(*impatient, {Customer("c7", "a")});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r[0].message()), HasSubstr("quota"));
}

TEST_F(GoogleSheetsTest, ServerErrorsAreRetried) {
  auto session = Session();
  ASSERT_NE(session, nullptr);
  SendOk(*session, {Customer("c1", "a")});
  fake_->ClearRequests();
  fake_->EnqueueReply(FakeSheetsReply::Error(503, "/values:batchUpdate"));
  fake_->EnqueueReply(FakeSheetsReply::Error(500, "/values:batchUpdate"));
  fake_->EnqueueReply(FakeSheetsReply::Error(500, ":append"));  // not applied
  std::vector<absl::Status> r =
      SendOk(*session, {Customer("c1", "b", ChangeKind::kUpdated), Customer("c2", "c")});
  EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  EXPECT_EQ(fake_->CountRequests("/values:batchUpdate", 503), 1);
  EXPECT_EQ(fake_->CountRequests("/values:batchUpdate", 500), 1);
  EXPECT_EQ(fake_->CountRequests(":append", 200), 1);
  EXPECT_EQ(Values(),
            (Grid{{"id", "email", "plan"}, {"c1", "c1@x.io", "b"}, {"c2", "c2@x.io", "c"}}));

  // Still failing after max_retries: the records fail as transient.
  auto short_session = Session({{"max_retries", 1}});
  for (int i = 0; i < 2; ++i) fake_->EnqueueReply(FakeSheetsReply::Error(503, ":append"));
  r = SendOk(*short_session, {Customer("c3", "d")});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r[0].message()), HasSubstr("HTTP 503"));
}

TEST_F(GoogleSheetsTest, NotSharedStopsTheRunWithTheServiceAccountToShareWith) {
  fake_->Unshare(kDoc, kEmail);
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {Customer("c1", "a")};
  absl::StatusOr<std::vector<absl::Status>> r = session->SendBatch(batch);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(std::string("share the spreadsheet with ") + kEmail));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("The caller does not have permission"));

  // A disabled API is a different fix.
  fake_->Share(kDoc, kEmail);
  fake_->EnqueueReply(FakeSheetsReply{
      .match = "",
      .status = 403,
      .body = R"({"error":{"code":403,"message":"Google Sheets API has not been used in project )"
              R"(123 before or it is disabled.","status":"PERMISSION_DENIED"}})"});
  session = Session();
  r = session->SendBatch(batch);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("enable it"));
}

TEST_F(GoogleSheetsTest, MissingSpreadsheetOrSheetStopsTheRun) {
  std::vector<OutgoingRecord> batch = {Customer("c1", "a")};
  auto session = Session({{"spreadsheet_id", "gone"}});
  absl::StatusOr<std::vector<absl::Status>> r = session->SendBatch(batch);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("spreadsheet gone was not found"));

  session = Session({{"sheet", "Renamed"}});
  r = session->SendBatch(batch);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("no sheet named \"Renamed\""));
  EXPECT_EQ(Writes(), 0);
}

TEST_F(GoogleSheetsTest, BadValuesFailTheirRecordOnly) {
  FakeSheetsOptions options;
  options.max_cell_chars = 100;  // lower than the client's check, so Google refuses
  StartFake(options);
  auto session = Session();
  ASSERT_NE(session, nullptr);
  OutgoingRecord too_long = Rec(ChangeKind::kAdded, {Value::String("c2"), Value::String("x"),
                                                     Value::String(std::string(50'001, 'a'))});
  OutgoingRecord refused = Rec(ChangeKind::kAdded, {Value::String("c3"), Value::String("x"),
                                                    Value::String(std::string(200, 'b'))});
  std::vector<absl::Status> r = SendOk(
      *session, {Customer("c1", "a"), too_long, refused, Customer("c4", "d"), Customer("c5", "e")});
  EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument,
                                    absl::StatusCode::kInvalidArgument, absl::StatusCode::kOk,
                                    absl::StatusCode::kOk));
  EXPECT_THAT(std::string(r[1].message()), HasSubstr("more than the 50000 a Google Sheets cell"));
  EXPECT_THAT(std::string(r[2].message()), HasSubstr("more than the maximum of 100 characters"));
  Grid v = Values();
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[1][0], "c1");
  EXPECT_EQ(v[2][0], "c4");
  EXPECT_EQ(v[3][0], "c5");
  // The 50,001-character value was never sent.
  for (const SheetsRequestLog& req : fake_->Requests()) EXPECT_LT(req.body.size(), 50'000u);
}

TEST_F(GoogleSheetsTest, LargeBatchesAreSplitUnderTheRequestSize) {
  FakeSheetsOptions options;
  options.max_request_bytes = kSheetsMaxRequestBytes + 4096;
  StartFake(options);
  auto session = Session();
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch;
  for (int i = 0; i < 120; ++i) {
    batch.push_back(
        Rec(ChangeKind::kAdded, {Value::String("k" + std::to_string(i)), Value::String("e"),
                                 Value::String(std::string(40'000, 'p'))}));
  }
  std::vector<absl::Status> r = SendOk(*session, batch);
  for (const absl::Status& s : r) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(fake_->CountRequests(":append", 200), 3);  // 4.8 MB in requests of at most 2 MB
  for (auto& rec : batch) rec.change = ChangeKind::kUpdated;
  r = SendOk(*session, batch);
  for (const absl::Status& s : r) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(fake_->CountRequests("/values:batchUpdate", 200), 3);
  EXPECT_EQ(fake_->CountRequests("/v4/", 400), 0);
  EXPECT_EQ(Values().size(), 121u);
}

TEST_F(GoogleSheetsTest, SpreadsheetCellLimitStopsTheRun) {
  FakeSheetsOptions options;
  options.max_cells = 1000 * 26 + 10;  // room for no more rows
  StartFake(options);
  auto session = Session();
  std::vector<OutgoingRecord> batch = {Customer("c1", "a")};
  absl::StatusOr<std::vector<absl::Status>> r = session->SendBatch(batch);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("above the limit of 26010 cells"));
  EXPECT_EQ(Values(), (Grid{{"id", "email", "plan"}}));
}

TEST_F(GoogleSheetsTest, KeyIsRequiredAndLaterRecordsOfAKeyWin) {
  auto dest = Create(Settings());
  ASSERT_TRUE(dest.ok());
  SessionOptions opts;
  opts.action = def_.FindAction("upsert_rows");
  opts.layout.fields = {"email"};
  absl::StatusOr<std::unique_ptr<ActionSession>> s = (*dest)->StartSession(opts);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("unique identifier"));

  auto session = Session();
  std::vector<absl::Status> r = SendOk(
      *session, {Customer("c1", "first"), Customer("c1", "second"),
                 Rec(ChangeKind::kAdded, {Value::String(""), Value::Null(), Value::Null()})});
  EXPECT_THAT(Codes(r), ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk,
                                    absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(Values(), (Grid{{"id", "email", "plan"}, {"c1", "c1@x.io", "second"}}));
}

}  // namespace
}  // namespace backflow
