// `backflow serve` end to end: schedules decided at chosen times with
// `--once --now`, downtime folded into one run, a manual model never run,
// and the long-running service catching up, then stopping on SIGTERM.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "backflow/sqlite/database.h"
#include "backflow/testing/http_test_server.h"
#include "backflow/testing/scratch_dir.h"
#include "backflow/testing/webhook_receiver.h"
#include "cli_runner.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using e2e::CliResult;
using e2e::RunCli;

class ServeE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(receiver_.Start().ok());
    auto db =
        sqlite::Database::Open(dir_ + "/warehouse.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    warehouse_ = std::move(*db);
    Exec("CREATE TABLE customers (id INTEGER, email TEXT)");
    Exec("CREATE TABLE leads (id INTEGER, email TEXT)");
    for (int i = 1; i <= 50; ++i) {
      Exec(fmt::format("INSERT INTO customers VALUES ({0}, 'c{0}@example.com')", i));
      Exec(fmt::format("INSERT INTO leads VALUES ({0}, 'l{0}@example.com')", i));
    }
    std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
state: sqlite:.backflow/state.db
sources:
  - {{ name: warehouse, type: sqlite, path: warehouse.db }}
models:
  - name: customers
    source: warehouse
    sql: SELECT id, email FROM customers
    primary_key: id
    schedule: {{ every: 1h }}
  - name: leads
    source: warehouse
    sql: SELECT id, email FROM leads
    primary_key: id
    schedule: manual
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{}" }} }}
mappings:
  - {{ name: customers_to_hook, model: customers, destination: hook, action: send_batch,
      fields: {{ id: id, email: email }} }}
  - {{ name: leads_to_hook, model: leads, destination: hook, action: send_batch,
      fields: {{ lead: id, email: email }} }}
)",
                                                          receiver_.Url("/in"));
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(warehouse_->Exec(sql).ok()) << sql; }

  CliResult ServeOnceAt(const std::string& now) {
    return RunCli(dir_, {"serve", "--once", "--now", now});
  }

  // The JSON log lines of `out` whose "event" is `event`.
  static std::vector<nlohmann::json> Events(const std::string& out, const std::string& event) {
    std::vector<nlohmann::json> found;
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line)) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.value("event", "") == event) found.push_back(j);
    }
    return found;
  }

  testing::ScratchDir scratch_{"serve-e2e"};
  const std::string dir_ = scratch_.string();
  WebhookReceiver receiver_;
  std::unique_ptr<sqlite::Database> warehouse_;
};

TEST_F(ServeE2eTest, SchedulesRunAtTheirTicksAndDowntimeRunsOnce) {
  CliResult r = ServeOnceAt("2026-03-01T10:20:00Z");  // first sight: nothing runs yet
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Events(r.out, "scheduler_started").size(), 1u) << r.out;
  EXPECT_TRUE(Events(r.out, "schedule_due").empty()) << r.out;
  EXPECT_EQ(receiver_.request_count(), 0);

  r = ServeOnceAt("2026-03-01T11:00:00Z");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto due = Events(r.out, "schedule_due");
  ASSERT_EQ(due.size(), 1u) << r.out;
  EXPECT_EQ(due[0]["model"], "customers");
  EXPECT_EQ(due[0]["tick"], "2026-03-01T11:00:00Z");
  auto finished = Events(r.out, "run_finished");
  ASSERT_EQ(finished.size(), 1u) << r.out;
  EXPECT_EQ(finished[0]["mapping"], "customers_to_hook");
  EXPECT_EQ(finished[0]["status"], "succeeded");
  EXPECT_EQ(finished[0]["added"], 50);
  EXPECT_EQ(receiver_.State().size(), 50u);

  r = ServeOnceAt("2026-03-01T11:59:59Z");  // the same tick is never run twice
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(Events(r.out, "schedule_due").empty()) << r.out;

  // Down from 11:59 to 15:10: the 12:00, 13:00 and 14:00 ticks fold into one run.
  Exec("INSERT INTO customers VALUES (51, 'c51@example.com')");
  r = ServeOnceAt("2026-03-01T15:10:00Z");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  due = Events(r.out, "schedule_due");
  ASSERT_EQ(due.size(), 1u) << r.out;
  EXPECT_EQ(due[0]["tick"], "2026-03-01T15:00:00Z");
  EXPECT_EQ(due[0]["missed_ticks"], 3);
  finished = Events(r.out, "run_finished");
  ASSERT_EQ(finished.size(), 1u) << r.out;
  EXPECT_EQ(finished[0]["added"], 1);
  EXPECT_EQ(receiver_.State().size(), 51u);
  // The manual model never ran.
  EXPECT_EQ(receiver_.State().count("1"), 1u);
  for (const auto& [key, fields] : receiver_.State()) EXPECT_FALSE(fields.contains("lead"));
}

TEST_F(ServeE2eTest, TheServiceCatchesUpThenStopsCleanlyOnSigterm) {
  // Seen long ago: the service is "back from downtime" as soon as it starts.
  ASSERT_EQ(ServeOnceAt("2026-01-01T00:00:00Z").exit_code, 0);
  pid_t pid = e2e::StartCli(dir_, {"serve", "--poll-seconds", "1"});
  ASSERT_GT(pid, 0);
  e2e::ChildGuard child(pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (receiver_.State().size() < 50u && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(receiver_.State().size(), 50u);
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by a signal: the service must stop cleanly";
  EXPECT_EQ(WEXITSTATUS(status), 0);

  // The catch-up ran once: nothing is due again right after.
  CliResult runs = RunCli(dir_, {"runs", "list", "customers_to_hook", "--json"});
  ASSERT_EQ(runs.exit_code, 0) << runs.err;
  nlohmann::json list = nlohmann::json::parse(runs.LastLine(), nullptr, false);
  ASSERT_FALSE(list.is_discarded()) << runs.out;
  EXPECT_EQ(list["runs"].size(), 1u) << runs.out;
}

// The harness itself: a child that outlives RunCli's deadline (here the
// long-running service) is killed, and the result says so with its threads,
// instead of the test binary hanging until ctest's timeout.
TEST_F(ServeE2eTest, RunCliKillsAChildPastItsDeadlineAndShowsItsThreads) {
  ASSERT_EQ(setenv("BACKFLOW_E2E_CLI_TIMEOUT_S", "2", 1), 0);
  const auto start = std::chrono::steady_clock::now();
  CliResult r = RunCli(dir_, {"serve", "--poll-seconds", "1"});
  const auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(unsetenv("BACKFLOW_E2E_CLI_TIMEOUT_S"), 0);
  EXPECT_EQ(r.exit_code, -1);
  EXPECT_GE(waited, std::chrono::seconds(2));
  EXPECT_LT(waited, std::chrono::seconds(90)) << "gdb is given at most 60 s";
  EXPECT_NE(r.err.find("`backflow serve --poll-seconds 1` (pid "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("still running after 2 s: killed; its threads were:"), std::string::npos)
      << r.err;
  // gdb's backtraces, or without gdb each thread's state.
  EXPECT_TRUE(r.err.find("Thread ") != std::string::npos ||
              r.err.find("thread ") != std::string::npos)
      << r.err;
}

// Alerts through the service: a failing mapping alerts once per incident,
// and its recovery once, to a webhook receiver on loopback.
TEST_F(ServeE2eTest, AFailingMappingAlertsOnceAndRecoversOnce) {
  std::mutex mu;
  std::vector<nlohmann::json> alerts;
  HttpTestServer alert_sink([&](const TestRequest& req) {
    std::lock_guard<std::mutex> lock(mu);
    alerts.push_back(nlohmann::json::parse(req.body, nullptr, false));
    return TestResponse{};
  });
  ASSERT_TRUE(alert_sink.Start().ok());
  auto write_workspace = [&](const std::string& hook_url) {
    std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
state: sqlite:.backflow/state.db
sources:
  - {{ name: warehouse, type: sqlite, path: warehouse.db }}
models:
  - {{ name: customers, source: warehouse, sql: "SELECT id, email FROM customers",
      primary_key: id, schedule: {{ every: 1h }} }}
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{}", max_retries: 0, timeout_ms: 2000 }} }}
mappings:
  - {{ name: customers_to_hook, model: customers, destination: hook, action: send_batch,
      fields: {{ id: id, email: email }} }}
alerts:
  - name: oncall
    webhook: {{ url: "{}" }}
)",
                                                          hook_url, alert_sink.Url("/alerts"));
  };
  // A destination that refuses every request: the runs fail.
  receiver_.EnqueueReplies(100, WebhookReply::Status(403, "forbidden"));
  write_workspace(receiver_.Url("/in"));
  ASSERT_EQ(ServeOnceAt("2026-03-01T10:20:00Z").exit_code, 0);
  CliResult r = ServeOnceAt("2026-03-01T11:00:00Z");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_EQ(Events(r.out, "alert_sent").size(), 1u) << r.out;
  r = ServeOnceAt("2026-03-01T12:00:00Z");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(Events(r.out, "alert_sent").empty()) << r.out;  // the incident is open
  // Fixed: the next run succeeds and the recovery is announced once.
  receiver_.ClearScript();
  r = ServeOnceAt("2026-03-01T13:00:00Z");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  r = ServeOnceAt("2026-03-01T14:00:00Z");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(alerts.size(), 2u);
  EXPECT_EQ(alerts[0]["kind"], "failure");
  EXPECT_EQ(alerts[0]["mapping"], "customers_to_hook");
  EXPECT_EQ(alerts[0]["status"], "failed");
  EXPECT_EQ(alerts[1]["kind"], "recovery");
  EXPECT_EQ(receiver_.State().size(), 50u);
}

TEST_F(ServeE2eTest, AnInvalidWorkspaceIsRefusedWithItsErrors) {
  std::ofstream(dir_ + "/backflow.yaml") << "models:\n  - name: m\n    schedule: { every: 7m }\n";
  CliResult r = RunCli(dir_, {"serve", "--once"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("schedule"), std::string::npos) << r.err;
  r = RunCli(dir_, {"serve", "--now", "2026-01-01T00:00:00Z"});
  EXPECT_EQ(r.exit_code, 3);
}

}  // namespace
}  // namespace backflow
