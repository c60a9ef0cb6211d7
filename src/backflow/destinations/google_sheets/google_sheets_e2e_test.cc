// End-to-end: a PostgreSQL model (the ctest `postgres` fixture) synced
// through the real `backflow` binary to the fake Google token endpoint and
// Sheets API; after each sync the sheet must hold exactly the model's rows
// (header + one row per key).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backflow/destinations/google_sheets/fake_sheets_server.h"
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
using Grid = std::vector<std::vector<json>>;

constexpr char kEmail[] = "e2e-sync@backflow-e2e.iam.gserviceaccount.com";
constexpr char kDoc[] = "e2e-spreadsheet-7f3a";
constexpr char kSheet[] = "Customers";

class GoogleSheetsE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("sheet_customers")) return;
    fake_ = std::make_unique<FakeSheetsServer>();
    ASSERT_TRUE(fake_->Start().ok());
    key_json_ = fake_->AddServiceAccount(kEmail);
    ASSERT_FALSE(key_json_.empty());
    fake_->CreateSpreadsheet(kDoc, kSheet);
    setenv("BACKFLOW_E2E_SHEETS_KEY", key_json_.c_str(), 1);
  }

  void WriteConfig() {
    std::ofstream(dir_ + "/backflow.yaml")
        << fmt::format(R"(
sources:
  - name: warehouse
    type: postgres
    url: {}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
models:
  - name: customers
    source: warehouse
    sql: SELECT id, email, plan, seats FROM {} WHERE active
    primary_key: id
destinations:
  - name: sheet
    type: google_sheets
    settings:
      service_account_key: ${{env:BACKFLOW_E2E_SHEETS_KEY}}
      spreadsheet_id: "https://docs.google.com/spreadsheets/d/{}/edit#gid=0"
      sheet: {}
      token_url: "{}"
      base_url: "{}"
mappings:
  - name: customers_to_sheet
    model: customers
    destination: sheet
    action: upsert_rows
    batch_size: 50
    fields:
      id: id
      Email: email
      Plan: plan
      Seats: seats
)",
                       server().url, table_, kDoc, kSheet, fake_->TokenUrl(), fake_->BaseUrl());
  }

  // The model's rows as the sheet should hold them, by id.
  std::map<int64_t, std::vector<json>> ExpectedRows() {
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return {};
    auto result = (*conn)->Exec(
        fmt::format("SELECT id, email, plan, seats FROM {} WHERE active ORDER BY id", table_));
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    std::map<int64_t, std::vector<json>> out;
    PGresult* r = result->get();
    for (int i = 0; i < PQntuples(r); ++i) {
      int64_t id = std::stoll(PQgetvalue(r, i, 0));
      std::vector<json> row = {id, PQgetvalue(r, i, 1), PQgetvalue(r, i, 2)};
      // A NULL is a blank cell; trailing blank cells are not part of a row.
      if (!PQgetisnull(r, i, 3)) row.push_back(std::stoll(PQgetvalue(r, i, 3)));
      out[id] = row;
    }
    return out;
  }

  // The sheet's data rows by id; fails the test on a duplicated or missing id.
  std::map<int64_t, std::vector<json>> SheetRows() {
    Grid values = fake_->Values(kDoc, kSheet);
    EXPECT_FALSE(values.empty());
    if (values.empty()) return {};
    EXPECT_EQ(values[0], (std::vector<json>{"id", "Email", "Plan", "Seats"}));
    std::map<int64_t, std::vector<json>> out;
    for (size_t i = 1; i < values.size(); ++i) {
      EXPECT_FALSE(values[i].empty() || !values[i][0].is_number_integer())
          << "row " << i + 1 << " has no id";
      if (values[i].empty() || !values[i][0].is_number_integer()) continue;
      int64_t id = values[i][0].get<int64_t>();
      EXPECT_FALSE(out.contains(id)) << "id " << id << " is in the sheet twice";
      out[id] = values[i];
    }
    EXPECT_EQ(out.size(), values.size() - 1);
    return out;
  }

  int64_t WriteRequests() {
    int64_t n = 0;
    for (const SheetsRequestLog& r : fake_->Requests()) {
      if (r.method != "GET" && r.target.rfind("/v4/", 0) == 0) ++n;
    }
    return n;
  }

  std::string key_json_;
  std::unique_ptr<FakeSheetsServer> fake_;
};

TEST_F(GoogleSheetsE2eTest, PostgresModelToSheet) {
  fake_->Share(kDoc, kEmail);
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (id bigint PRIMARY KEY, email text, plan text, seats int, active boolean)",
      table_));
  ExecOrFail(fmt::format(
      "INSERT INTO {} SELECT g, 'user' || g || '@example.com', "
      "CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END, CASE WHEN g % 5 = 0 THEN NULL ELSE g END, "
      "true FROM generate_series(1, 120) g",
      table_));
  WriteConfig();

  CliResult check = RunCli(dir_, {"test-connection", "sheet", "--json"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  EXPECT_EQ(json::parse(check.LastLine())["ok"], true) << check.out;
  EXPECT_EQ(WriteRequests(), 0);

  CliResult r = RunCli(dir_, {"sync", "customers_to_sheet", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 120);
  EXPECT_EQ(s["succeeded"], 120);
  EXPECT_EQ(SheetRows(), ExpectedRows());
  EXPECT_EQ(fake_->Values(kDoc, kSheet).size(), 121u);
  EXPECT_EQ(SheetRows()[5], (std::vector<json>{5, "user5@example.com", "free"}));

  // Updates, a NULLed value, a row leaving the model, a row deleted, new rows.
  ExecOrFail(
      fmt::format("UPDATE {} SET plan = 'enterprise', seats = 500 WHERE id IN (3, 7)", table_));
  ExecOrFail(fmt::format("UPDATE {} SET email = 'renamed@example.com', seats = NULL WHERE id = 11",
                         table_));
  ExecOrFail(fmt::format("UPDATE {} SET active = false WHERE id = 12", table_));
  ExecOrFail(fmt::format("DELETE FROM {} WHERE id IN (1, 60)", table_));
  ExecOrFail(
      fmt::format("INSERT INTO {} SELECT g, 'late' || g || '@example.com', 'trial', 1, true "
                  "FROM generate_series(1001, 1004) g",
                  table_));
  r = RunCli(dir_, {"sync", "customers_to_sheet", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 4);
  EXPECT_EQ(s["updated"], 3);
  EXPECT_EQ(s["deleted"], 3);
  EXPECT_EQ(s["succeeded"], 10);
  std::map<int64_t, std::vector<json>> rows = SheetRows();
  EXPECT_EQ(rows, ExpectedRows());
  EXPECT_EQ(rows.size(), 120u - 3 + 4);
  EXPECT_EQ(rows[3], (std::vector<json>{3, "user3@example.com", "enterprise", 500}));
  EXPECT_EQ(rows[11], (std::vector<json>{11, "renamed@example.com", "free"}));
  EXPECT_FALSE(rows.contains(12));
  EXPECT_EQ(rows[1004], (std::vector<json>{1004, "late1004@example.com", "trial", 1}));

  // Nothing changed: nothing is written.
  Grid before = fake_->Values(kDoc, kSheet);
  int64_t writes = WriteRequests();
  r = RunCli(dir_, {"sync", "customers_to_sheet", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = json::parse(r.LastLine());
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(s["deleted"], 0);
  EXPECT_EQ(WriteRequests(), writes);
  EXPECT_EQ(fake_->Values(kDoc, kSheet), before);

  // The key never shows up in output.
  for (const CliResult* c : {&check, &r}) {
    EXPECT_EQ(c->out.find("PRIVATE KEY"), std::string::npos);
    EXPECT_EQ(c->err.find("PRIVATE KEY"), std::string::npos);
  }
}

TEST_F(GoogleSheetsE2eTest, SheetNotSharedFailsTheCheckAndTheSync) {
  ExecOrFail(fmt::format(
      "CREATE TABLE {} (id bigint PRIMARY KEY, email text, plan text, seats int, active boolean)",
      table_));
  ExecOrFail(fmt::format("INSERT INTO {} VALUES (1, 'a@example.com', 'pro', 1, true)", table_));
  WriteConfig();
  CliResult check = RunCli(dir_, {"test-connection", "sheet", "--json"});
  EXPECT_NE(check.exit_code, 0) << check.out;
  std::string error = json::parse(check.LastLine())["error"].get<std::string>();
  EXPECT_NE(error.find(std::string("share the spreadsheet with ") + kEmail), std::string::npos)
      << error;
  CliResult r = RunCli(dir_, {"sync", "customers_to_sheet", "--json"});
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find(kEmail), std::string::npos) << r.out;
  EXPECT_TRUE(fake_->Values(kDoc, kSheet).empty());

  // Once shared, the next sync writes the row.
  fake_->Share(kDoc, kEmail);
  r = RunCli(dir_, {"sync", "customers_to_sheet", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(SheetRows(), ExpectedRows());
}

}  // namespace
}  // namespace backflow
