// End-to-end: a PostgreSQL model of purchases (the ctest `postgres` fixture)
// synced through the real `backflow` binary to the fake Meta Conversions API;
// the fake must hold exactly one event per model row, with the customer
// information normalised and hashed, and later syncs send only new rows.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "backflow/common/crypto.h"
#include "backflow/destinations/meta_capi/fake_meta_capi_server.h"
#include "backflow/pg/testing/test_server.h"
#include "cli_runner.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "pg_e2e.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using e2e::CliResult;
using e2e::RunCli;
using json = nlohmann::json;

constexpr char kToken[] = "e2e_meta_token_7d1a";
constexpr char kPixel[] = "770011223344";

std::string Sha(const std::string& s) { return HexEncode(Sha256(s)); }

class MetaCapiE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("meta_purchases")) return;
    setenv("BACKFLOW_E2E_META_TOKEN", kToken, 1);
    FakeMetaCapiOptions options;
    options.access_tokens = {kToken};
    options.pixel_ids = {kPixel};
    fake_ = std::make_unique<FakeMetaCapiServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
  }

  void WriteWorkspace(const std::string& token_ref) {
    std::ofstream(dir_ + "/backflow.yaml")
        << fmt::format(R"(
sources:
  - name: warehouse
    type: postgres
    url: {}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
models:
  - name: purchases
    source: warehouse
    sql: |
      SELECT order_id, email, phone, amount, currency, created_at, ip
      FROM {} WHERE created_at > now() - interval '6 days'
    primary_key: order_id
destinations:
  - name: meta
    type: meta_capi
    settings:
      pixel_id: "{}"
      access_token: {}
      base_url: "{}"
mappings:
  - name: purchases_to_meta
    model: purchases
    destination: meta
    action: send_event
    batch_size: 50
    fields:
      event_name: "'Purchase'"
      event_time: created_at
      action_source: "'system_generated'"
      user_data.ph: phone
      user_data.client_ip_address: ip
      custom_data.order_id: order_id
      custom_data.value: amount
      custom_data.currency: currency
)",
                       server().url, table_, kPixel, token_ref, fake_->BaseUrl());
  }

  // The events Meta should hold for the model's rows: order_id -> event
  // fields that depend on the row (user_data, custom_data, event_time).
  std::map<std::string, json> ExpectedEvents() {
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return {};
    auto result = (*conn)->Exec(
        fmt::format("SELECT order_id, email, phone, amount::text, currency, "
                    "extract(epoch from date_trunc('second', created_at))::bigint, ip FROM {} "
                    "WHERE created_at > now() - interval '6 days' ORDER BY order_id",
                    table_));
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    std::map<std::string, json> out;
    PGresult* r = result->get();
    for (int i = 0; i < PQntuples(r); ++i) {
      // Normalised as Meta documents it, independently of the destination's code.
      std::string email;
      for (char c : std::string(PQgetvalue(r, i, 1))) {
        if (c != ' ')
          email.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
      }
      json user = {{"em", json::array({Sha(email)})}, {"client_ip_address", PQgetvalue(r, i, 6)}};
      if (!PQgetisnull(r, i, 2)) {
        std::string digits;
        for (char c : std::string(PQgetvalue(r, i, 2))) {
          if (std::isdigit(static_cast<unsigned char>(c))) digits.push_back(c);
        }
        user["ph"] = json::array({Sha(digits)});
      }
      out[PQgetvalue(r, i, 0)] = {{"event_time", std::stoll(PQgetvalue(r, i, 5))},
                                  {"user_data", user},
                                  {"custom_data",
                                   {{"order_id", PQgetvalue(r, i, 0)},
                                    {"value", std::stod(PQgetvalue(r, i, 3))},
                                    {"currency", PQgetvalue(r, i, 4)}}}};
    }
    return out;
  }

  // The fake's events, keyed by custom_data.order_id; fails on a second event for an order.
  std::map<std::string, json> ReceivedEvents() {
    std::map<std::string, json> out;
    for (const json& ev : fake_->Events()) {
      std::string order = ev["custom_data"]["order_id"].get<std::string>();
      EXPECT_FALSE(out.contains(order)) << "two events for " << order;
      EXPECT_EQ(ev["event_name"], "Purchase");
      EXPECT_EQ(ev["action_source"], "system_generated");
      EXPECT_TRUE(ev["event_id"].get<std::string>().starts_with("bf-")) << ev.dump();
      out[order] = {{"event_time", ev["event_time"]},
                    {"user_data", ev["user_data"]},
                    {"custom_data", ev["custom_data"]}};
    }
    return out;
  }

  std::unique_ptr<FakeMetaCapiServer> fake_;
};

TEST_F(MetaCapiE2eTest, PostgresPurchasesBecomeOneHashedEventEach) {
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (order_id text PRIMARY KEY, email text, phone text, amount numeric(10,2), "
      "currency text, created_at timestamptz, ip text)",
      table_));
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT 'ord-' || g, ' Buyer' || g || '@Example.COM ', "
      "CASE WHEN g % 7 = 0 THEN NULL ELSE '+1 (415) 555-' || lpad(g::text, 4, '0') END, "
      "g * 1.25, CASE WHEN g % 2 = 0 THEN 'USD' ELSE 'EUR' END, "
      "now() - (g || ' minutes')::interval, '203.0.113.' || (g % 250) "
      "FROM generate_series(1, 120) g",
      table_));
  // Older than the model's window: never selected, never sent.
  ExecOrFail(
      fmt::format("INSERT INTO {} VALUES ('ord-old', 'old@example.com', NULL, 5, 'USD', "
                  "now() - interval '30 days', '203.0.113.1')",
                  table_));
  WriteWorkspace("${env:BACKFLOW_E2E_META_TOKEN}");

  CliResult check = RunCli(dir_, {"test-connection", "meta", "--json"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  EXPECT_EQ(json::parse(check.LastLine())["ok"], true) << check.out;
  EXPECT_TRUE(fake_->Events().empty());

  CliResult r = RunCli(dir_, {"sync", "purchases_to_meta", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 120);
  EXPECT_EQ(s["succeeded"], 120);
  EXPECT_EQ(fake_->request_count(), 1 + 3);  // the check, then batches of 50, 50, 20
  std::map<std::string, json> expected = ExpectedEvents();
  ASSERT_EQ(expected.size(), 120u);
  EXPECT_EQ(ReceivedEvents(), expected);
  // Spot check against Meta's normalisation by hand.
  json ord7 = ReceivedEvents()["ord-7"];
  EXPECT_EQ(ord7["user_data"]["em"], json::array({Sha("buyer7@example.com")}));
  EXPECT_FALSE(ord7["user_data"].contains("ph"));
  EXPECT_EQ(ReceivedEvents()["ord-8"]["user_data"]["ph"], json::array({Sha("14155550008")}));
  EXPECT_EQ(fake_->duplicate_count(), 0);
  EXPECT_EQ(fake_->rejected_count(), 0);

  // New purchases: only they are sent.
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT 'ord-' || g, 'late' || g || '@example.com', '+44 844 412 4653', 9.99, "
      "'GBP', now() - interval '2 hours', '198.51.100.' || (g - 1000) "
      "FROM generate_series(1001, 1004) g",
      table_));
  int64_t before = fake_->request_count();
  r = RunCli(dir_, {"sync", "purchases_to_meta", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 4);
  EXPECT_EQ(s["succeeded"], 4);
  EXPECT_EQ(fake_->request_count(), before + 1);
  ASSERT_EQ(fake_->Requests().back().event_count, 4u);
  expected = ExpectedEvents();
  ASSERT_EQ(expected.size(), 124u);
  EXPECT_EQ(ReceivedEvents(), expected);
  EXPECT_EQ(ReceivedEvents()["ord-1002"]["user_data"]["ph"],
            json::array({"dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383"}));

  // Nothing new: nothing is sent.
  before = fake_->request_count();
  r = RunCli(dir_, {"sync", "purchases_to_meta", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(fake_->request_count(), before);
  EXPECT_EQ(fake_->Events().size(), 124u);
  EXPECT_EQ(fake_->duplicate_count(), 0);

  for (const CliResult* c : {&check, &r}) {
    EXPECT_EQ(c->out.find(kToken), std::string::npos);
    EXPECT_EQ(c->err.find(kToken), std::string::npos);
  }
}

TEST_F(MetaCapiE2eTest, WrongTokenFailsConnectionCheckAndStopsTheSync) {
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (order_id text PRIMARY KEY, email text, phone text, amount numeric(10,2), "
      "currency text, created_at timestamptz, ip text)",
      table_));
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT 'ord-' || g, 'b' || g || '@example.com', NULL, 1, 'USD', now(), "
      "'203.0.113.9' FROM generate_series(1, 10) g",
      table_));
  WriteWorkspace("not-the-token");
  CliResult check = RunCli(dir_, {"test-connection", "meta", "--json"});
  EXPECT_NE(check.exit_code, 0) << check.out;
  EXPECT_NE(json::parse(check.LastLine())["error"].get<std::string>().find("access_token"),
            std::string::npos)
      << check.out;
  CliResult r = RunCli(dir_, {"sync", "purchases_to_meta", "--json"});
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("access_token"), std::string::npos) << r.out;
  EXPECT_TRUE(fake_->Events().empty());
  EXPECT_EQ(fake_->unauthorized_count(), 2);  // one request each: no retries, no bisecting
  EXPECT_EQ(fake_->request_count(), 2);
}

}  // namespace
}  // namespace backflow
