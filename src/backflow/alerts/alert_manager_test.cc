// AlertManager: the incident state machine (once per incident, recovery,
// thresholds, scope, persistence across restarts) and delivery retries.
#include "backflow/alerts/alert_manager.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>

#include "backflow/common/errors.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/sources/sqlite/sqlite_source.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/http_test_server.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::seconds;

// What the recording channels saw, shared by every channel of a test.
struct Outbox {
  std::vector<AlertMessage> sent;   // every attempt, in order
  std::deque<absl::Status> script;  // replies for the next attempts (then OK)
};

class RecordingChannel : public AlertChannel {
 public:
  explicit RecordingChannel(Outbox& outbox) : outbox_(outbox) {}
  std::string_view name() const override { return "webhook"; }
  absl::Status Send(const AlertMessage& message) override {
    outbox_.sent.push_back(message);
    if (outbox_.script.empty()) return absl::OkStatus();
    absl::Status s = outbox_.script.front();
    outbox_.script.pop_front();
    return s;
  }

 private:
  Outbox& outbox_;
};

AlertConfig Alert(std::string name, std::vector<std::string> mappings = {}) {
  AlertConfig a;
  a.name = std::move(name);
  a.workspace_wide = mappings.empty();
  a.mappings = std::move(mappings);
  a.failed_records_threshold = 5;
  return a;
}

class AlertManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { OpenStore(); }
  void TearDown() override {
    manager_.reset();
    store_.reset();
  }
  void OpenStore() {
    auto store = OpenSqliteStateStore((dir_ / "state.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void Build(std::vector<AlertConfig> alerts, AlertManagerOptions options = {}) {
    std::vector<std::unique_ptr<AlertChannel>> channels;
    for (size_t i = 0; i < alerts.size(); ++i) {
      channels.push_back(std::make_unique<RecordingChannel>(outbox_));
    }
    auto manager = AlertManager::CreateWithChannels(
        std::move(alerts), std::move(channels), *store_, clock_,
        [this](const AlertEvent& e) { logged_.push_back(e); }, options);
    ASSERT_TRUE(manager.ok()) << manager.status();
    manager_ = std::move(*manager);
  }
  // A finished run of `mapping` with a fresh id.
  RunInfo Run(RunStatus status, std::string mapping = "crm", RunCounts counts = {}) {
    RunInfo run;
    run.id = ++next_run_id_;
    run.mapping = std::move(mapping);
    run.model = "customers";
    run.destination = "hub";
    run.trigger = "schedule";
    run.status = status;
    run.started_at = fmt::format("2026-01-01T00:{:02}:00.000Z", run.id);
    run.finished_at = fmt::format("2026-01-01T00:{:02}:30.000Z", run.id);
    run.counts = counts;
    if (status == RunStatus::kFailed) run.error = "connection refused by hub.example.com";
    return run;
  }
  static RunCounts Records(int64_t succeeded, int64_t failed, int64_t rejected = 0) {
    RunCounts c;
    c.extracted = succeeded + failed + rejected;
    c.succeeded = succeeded;
    c.failed = failed;
    c.rejected = rejected;
    return c;
  }
  // Applies the run; returns the messages sent for it.
  std::vector<AlertMessage> Finish(const RunInfo& run) {
    size_t before = outbox_.sent.size();
    last_report_ = manager_->OnRunFinished(run);
    return std::vector<AlertMessage>(outbox_.sent.begin() + before, outbox_.sent.end());
  }

  testing::ScratchDir scratch_{"alerts"};
  const fs::path dir_ = scratch_.path();
  std::unique_ptr<StateStore> store_;
  FakeClock clock_;
  Outbox outbox_;
  std::vector<AlertEvent> logged_;
  std::unique_ptr<AlertManager> manager_;
  AlertReport last_report_;
  int64_t next_run_id_ = 0;
};

TEST_F(AlertManagerTest, OneAlertPerFailureIncidentAndOneRecovery) {
  Build({Alert("oncall")});
  RunInfo first = Run(RunStatus::kFailed);
  std::vector<AlertMessage> sent = Finish(first);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, AlertKind::kFailure);
  EXPECT_EQ(sent[0].incident, AlertKind::kFailure);
  EXPECT_EQ(sent[0].alert, "oncall");
  EXPECT_EQ(sent[0].run.id, first.id);
  EXPECT_EQ(sent[0].id, fmt::format("oncall:crm:failure:{}", first.id));
  EXPECT_EQ(sent[0].failing_runs, 1);
  EXPECT_EQ(sent[0].subject, fmt::format("[Backflow] crm failed (run {})", first.id));
  EXPECT_EQ(sent[0].summary,
            fmt::format("Mapping crm (customers -> hub) failed in run {}: connection refused by "
                        "hub.example.com",
                        first.id));
  EXPECT_TRUE(last_report_.ok());
  ASSERT_EQ(last_report_.events.size(), 1u);
  EXPECT_EQ(last_report_.events[0].event, "alert_sent");
  EXPECT_EQ(last_report_.events[0].attempts, 1);

  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Finish(Run(RunStatus::kFailed)).empty()) << "failing run " << i + 2;
  }

  RunInfo healthy = Run(RunStatus::kSucceeded, "crm", Records(10, 0));
  sent = Finish(healthy);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, AlertKind::kRecovery);
  EXPECT_EQ(sent[0].incident, AlertKind::kFailure);
  EXPECT_EQ(sent[0].failing_runs, 4);
  EXPECT_EQ(sent[0].incident_first_run_id, first.id);
  EXPECT_EQ(sent[0].incident_started_at, first.started_at);
  EXPECT_EQ(sent[0].id, fmt::format("oncall:crm:recovery:{}", healthy.id));
  EXPECT_EQ(sent[0].summary,
            fmt::format("Mapping crm (customers -> hub) recovered: run {} finished (succeeded) "
                        "after 4 runs that failed, since {} (run {}).",
                        healthy.id, first.started_at, first.id));

  EXPECT_TRUE(Finish(Run(RunStatus::kSucceeded)).empty());
  // A new failure is a new incident.
  sent = Finish(Run(RunStatus::kFailed));
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, AlertKind::kFailure);
  EXPECT_EQ(sent[0].failing_runs, 1);
  // Every event reached the log callback too.
  EXPECT_EQ(logged_.size(), 3u);
}

TEST_F(AlertManagerTest, PartialRunEndsAFailureIncident) {
  AlertConfig a = Alert("oncall");
  a.on_failed_records = false;
  Build({a});
  ASSERT_EQ(Finish(Run(RunStatus::kFailed)).size(), 1u);
  std::vector<AlertMessage> sent = Finish(Run(RunStatus::kPartial, "crm", Records(5, 5)));
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, AlertKind::kRecovery);
}

TEST_F(AlertManagerTest, WithoutRecoveryTheIncidentClosesSilently) {
  AlertConfig a = Alert("oncall");
  a.on_recovery = false;
  Build({a});
  EXPECT_EQ(Finish(Run(RunStatus::kFailed)).size(), 1u);
  EXPECT_TRUE(Finish(Run(RunStatus::kFailed)).empty());
  EXPECT_TRUE(Finish(Run(RunStatus::kSucceeded)).empty());
  EXPECT_EQ(Finish(Run(RunStatus::kFailed)).size(), 1u) << "a new incident after the silent close";
}

TEST_F(AlertManagerTest, FailedRecordShareAboveTheThresholdOpensAnIncident) {
  Build({Alert("quality")});  // threshold 5%
  // 4% and exactly 5% are not above the threshold.
  EXPECT_TRUE(Finish(Run(RunStatus::kPartial, "crm", Records(96, 4))).empty());
  EXPECT_TRUE(Finish(Run(RunStatus::kPartial, "crm", Records(95, 3, 2))).empty());
  // 6%: failed and rejected records both count.
  RunInfo bad = Run(RunStatus::kPartial, "crm", Records(94, 2, 4));
  std::vector<AlertMessage> sent = Finish(bad);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, AlertKind::kFailedRecords);
  EXPECT_DOUBLE_EQ(sent[0].failed_share_percent, 6.0);
  EXPECT_DOUBLE_EQ(sent[0].threshold_percent, 5.0);
  EXPECT_EQ(sent[0].subject, fmt::format("[Backflow] crm: 6% of records failed (run {})", bad.id));
  EXPECT_EQ(sent[0].summary,
            fmt::format("Mapping crm (customers -> hub): 2 failed and 4 rejected of 100 records "
                        "(6%) in run {}, above the alert's threshold of 5%. `backflow runs show "
                        "{}` lists each record with its error.",
                        bad.id, bad.id));
  // Still above: nothing more. A failed run says nothing about records.
  EXPECT_TRUE(Finish(Run(RunStatus::kPartial, "crm", Records(50, 50))).empty());
  sent = Finish(Run(RunStatus::kFailed));
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, AlertKind::kFailure) << "a failure is a separate incident";
  // Back to 5%: both incidents close, each with its own recovery.
  RunInfo good = Run(RunStatus::kPartial, "crm", Records(95, 5));
  sent = Finish(good);
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].kind, AlertKind::kRecovery);
  EXPECT_EQ(sent[0].incident, AlertKind::kFailure);
  EXPECT_EQ(sent[1].kind, AlertKind::kRecovery);
  EXPECT_EQ(sent[1].incident, AlertKind::kFailedRecords);
  EXPECT_EQ(sent[1].failing_runs, 2);
  EXPECT_EQ(sent[1].incident_first_run_id, bad.id);
  EXPECT_EQ(sent[1].summary,
            fmt::format("Mapping crm (customers -> hub) recovered: 5 failed and 0 rejected of 100 "
                        "records (5%) in run {}, within the alert's threshold of 5%, after 2 runs "
                        "above it since {} (run {}).",
                        good.id, bad.started_at, bad.id));
}

TEST_F(AlertManagerTest, ZeroPercentThresholdAlertsOnAnyFailedRecord) {
  AlertConfig a = Alert("strict");
  a.failed_records_threshold = 0;
  Build({a});
  EXPECT_TRUE(Finish(Run(RunStatus::kSucceeded, "crm", Records(0, 0))).empty());
  EXPECT_EQ(Finish(Run(RunStatus::kPartial, "crm", Records(100000, 1))).size(), 1u);
}

TEST_F(AlertManagerTest, WorkspaceWideAndPerMappingAlerts) {
  Build({Alert("crm_team", {"crm"}), Alert("everyone")});
  std::vector<AlertMessage> sent = Finish(Run(RunStatus::kFailed, "ads"));
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].alert, "everyone");
  EXPECT_EQ(sent[0].run.mapping, "ads");

  sent = Finish(Run(RunStatus::kFailed, "crm"));
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].alert, "crm_team");
  EXPECT_EQ(sent[1].alert, "everyone");
  // Incidents are per (alert, mapping): ads is still failing, crm recovers.
  sent = Finish(Run(RunStatus::kSucceeded, "crm"));
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].kind, AlertKind::kRecovery);
  EXPECT_EQ(sent[1].kind, AlertKind::kRecovery);
  EXPECT_EQ(sent[1].run.mapping, "crm");
  EXPECT_TRUE(Finish(Run(RunStatus::kFailed, "ads")).empty());
}

TEST_F(AlertManagerTest, ARestartDoesNotRepeatAnAlertOrForgetTheIncident) {
  Build({Alert("oncall")});
  ASSERT_EQ(Finish(Run(RunStatus::kFailed)).size(), 1u);
  // The service restarts: new manager, store reopened from disk.
  manager_.reset();
  store_.reset();
  OpenStore();
  Build({Alert("oncall")});
  EXPECT_TRUE(Finish(Run(RunStatus::kFailed)).empty());
  std::vector<AlertMessage> sent = Finish(Run(RunStatus::kSucceeded));
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, AlertKind::kRecovery);
  EXPECT_EQ(sent[0].failing_runs, 2);
  auto state = store_->GetAlertState("alert:oncall:crm:failure");
  ASSERT_TRUE(state.ok() && state->has_value());
  nlohmann::json j = nlohmann::json::parse(**state);
  EXPECT_EQ(j["open"], false);
  EXPECT_EQ(j["last_run_id"], next_run_id_);
}

TEST_F(AlertManagerTest, TheSameRunAppliedTwiceSendsOnce) {
  Build({Alert("oncall")});
  RunInfo run = Run(RunStatus::kFailed);
  EXPECT_EQ(Finish(run).size(), 1u);
  EXPECT_TRUE(Finish(run).empty());
  RunInfo ok = Run(RunStatus::kSucceeded);
  EXPECT_EQ(Finish(ok).size(), 1u);
  EXPECT_TRUE(Finish(ok).empty());
}

TEST_F(AlertManagerTest, DryRunsAndUnfinishedRunsChangeNothing) {
  Build({Alert("oncall")});
  RunInfo dry = Run(RunStatus::kFailed);
  dry.dry_run = true;
  EXPECT_TRUE(Finish(dry).empty());
  for (RunStatus s :
       {RunStatus::kCancelled, RunStatus::kInterrupted, RunStatus::kRunning, RunStatus::kQueued}) {
    EXPECT_TRUE(Finish(Run(s)).empty());
  }
  EXPECT_FALSE(store_->GetAlertState("alert:oncall:crm:failure")->has_value());
  ASSERT_EQ(Finish(Run(RunStatus::kFailed)).size(), 1u);
  EXPECT_TRUE(Finish(Run(RunStatus::kCancelled)).empty()) << "a cancelled run is no recovery";
}

TEST_F(AlertManagerTest, AnUndeliveredAlertIsTriedAgainOnTheNextFailingRun) {
  Build({Alert("oncall")});
  outbox_.script.push_back(absl::FailedPreconditionError("hook answered 404"));
  RunInfo first = Run(RunStatus::kFailed);
  EXPECT_EQ(Finish(first).size(), 1u);
  EXPECT_FALSE(last_report_.ok());
  ASSERT_EQ(last_report_.events.size(), 1u);
  EXPECT_EQ(last_report_.events[0].event, "alert_failed");
  EXPECT_EQ(last_report_.events[0].attempts, 1) << "a configuration error is not retried";
  EXPECT_EQ(last_report_.events[0].status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(clock_.total_slept(), Clock::Duration(0));

  std::vector<AlertMessage> sent = Finish(Run(RunStatus::kFailed));
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].kind, AlertKind::kFailure);
  EXPECT_EQ(sent[0].failing_runs, 2);
  EXPECT_NE(sent[0].summary.find(fmt::format("It has failed 2 runs in a row since {} (run {}).",
                                             first.started_at, first.id)),
            std::string::npos)
      << sent[0].summary;
  EXPECT_TRUE(last_report_.ok());
  EXPECT_TRUE(Finish(Run(RunStatus::kFailed)).empty());
}

TEST_F(AlertManagerTest, TransientFailuresAreRetriedWithBackoffOnTheClock) {
  AlertManagerOptions options;
  options.first_backoff = seconds(2);
  Build({Alert("oncall")}, options);
  outbox_.script = {absl::UnavailableError("reset"), absl::DeadlineExceededError("timeout")};
  EXPECT_EQ(Finish(Run(RunStatus::kFailed)).size(), 3u);
  ASSERT_EQ(last_report_.events.size(), 1u);
  EXPECT_EQ(last_report_.events[0].event, "alert_sent");
  EXPECT_EQ(last_report_.events[0].attempts, 3);
  EXPECT_EQ(clock_.total_slept(), std::chrono::duration_cast<Clock::Duration>(seconds(2 + 4)));
}

TEST_F(AlertManagerTest, GivesUpAfterMaxAttemptsAndReportsTheLastError) {
  Build({Alert("oncall")});
  outbox_.script = {absl::UnavailableError("a"), absl::UnavailableError("b"),
                    absl::UnavailableError("receiver down")};
  EXPECT_EQ(Finish(Run(RunStatus::kFailed)).size(), 3u);
  ASSERT_EQ(last_report_.events.size(), 1u);
  EXPECT_EQ(last_report_.events[0].event, "alert_failed");
  EXPECT_EQ(last_report_.events[0].attempts, 3);
  EXPECT_EQ(last_report_.events[0].status.message(), "receiver down");
}

TEST_F(AlertManagerTest, ARetryAfterBeyondTheWaitBudgetIsNotWaitedFor) {
  Build({Alert("oncall")});  // max_wait 30 s
  outbox_.script = {WithRetryAfter(absl::ResourceExhaustedError("429"), seconds(120))};
  EXPECT_EQ(Finish(Run(RunStatus::kFailed)).size(), 1u);
  ASSERT_EQ(last_report_.events.size(), 1u);
  const AlertEvent& e = last_report_.events[0];
  EXPECT_EQ(e.event, "alert_failed");
  EXPECT_EQ(e.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(
      e.status.message(),
      "429 (not retried: waiting 120000 ms more would exceed the 30000 ms an alert may wait)");
  EXPECT_EQ(clock_.total_slept(), Clock::Duration(0));
}

TEST_F(AlertManagerTest, EventJsonFields) {
  Build({Alert("oncall")});
  outbox_.script = {absl::PermissionDeniedError("hook answered 403")};
  RunInfo run = Run(RunStatus::kFailed);
  Finish(run);
  ASSERT_EQ(logged_.size(), 1u);
  JsonWriter w;
  w.BeginObject();
  w.Key("event").String(logged_[0].event);
  logged_[0].AppendJsonFields(w);
  w.EndObject();
  nlohmann::json j = nlohmann::json::parse(w.str());
  EXPECT_EQ(j["event"], "alert_failed");
  EXPECT_EQ(j["alert"], "oncall");
  EXPECT_EQ(j["channel"], "webhook");
  EXPECT_EQ(j["mapping"], "crm");
  EXPECT_EQ(j["kind"], "failure");
  EXPECT_EQ(j["incident"], "failure");
  EXPECT_EQ(j["run_id"], run.id);
  EXPECT_EQ(j["message_id"], fmt::format("oncall:crm:failure:{}", run.id));
  EXPECT_EQ(j["attempts"], 1);
  EXPECT_EQ(j["error"], "hook answered 403");
  EXPECT_EQ(j["error_class"], "configuration");
}

// The store behind the incidents breaks: reported, never fatal.
TEST_F(AlertManagerTest, StateStoreErrorsAreReportedAndNeverFatal) {
  Build({Alert("oncall")});
  auto db = sqlite::Database::Open((dir_ / "state.db").string(), SQLITE_OPEN_READWRITE);
  ASSERT_TRUE(db.ok()) << db.status();
  // Reads work, writes fail: the alert goes out, the failed save is reported.
  ASSERT_TRUE((*db)->Exec("DROP TABLE alert_state").ok());
  ASSERT_TRUE(
      (*db)->Exec("CREATE VIEW alert_state AS SELECT 'k' AS key, 'v' AS value WHERE 0").ok());
  RunInfo run = Run(RunStatus::kFailed);
  EXPECT_EQ(Finish(run).size(), 1u);
  EXPECT_FALSE(last_report_.ok());
  ASSERT_EQ(last_report_.events.size(), 2u);
  EXPECT_EQ(last_report_.events[0].event, "alert_sent");
  EXPECT_EQ(last_report_.events[1].event, "alert_state_error");
  EXPECT_EQ(last_report_.events[1].message_id, fmt::format("oncall:crm:failure:{}", run.id));
  EXPECT_NE(last_report_.events[1].status.message().find(
                "cannot save the incident state of alert \"oncall\" for mapping crm"),
            std::string::npos)
      << last_report_.events[1].status;
  // Reads fail too: nothing is sent blind, the problem is reported.
  ASSERT_TRUE((*db)->Exec("DROP VIEW alert_state").ok());
  EXPECT_TRUE(Finish(Run(RunStatus::kFailed)).empty());
  ASSERT_EQ(last_report_.events.size(), 1u);
  EXPECT_EQ(last_report_.events[0].event, "alert_state_error");
  EXPECT_NE(last_report_.events[0].status.message().find(
                "cannot read the incident state of alert \"oncall\" for mapping crm"),
            std::string::npos)
      << last_report_.events[0].status;
  EXPECT_EQ(logged_.back().event, "alert_state_error");
}

TEST_F(AlertManagerTest, CreateWithChannelsChecksItsArguments) {
  std::vector<std::unique_ptr<AlertChannel>> none;
  auto m = AlertManager::CreateWithChannels({Alert("a")}, std::move(none), *store_, clock_, {});
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
}

// From the workspace file to a real HTTP request.
TEST_F(AlertManagerTest, CreateFromAWorkspaceAndPostToAWebhook) {
  std::mutex mu;
  std::vector<TestRequest> received;
  HttpTestServer server([&](const TestRequest& r) {
    std::lock_guard<std::mutex> lock(mu);
    received.push_back(r);
    return TestResponse::Json(200, "{}");
  });
  ASSERT_TRUE(server.Start().ok());
  Registry registry;
  ASSERT_TRUE(registry.AddSource(SqliteSourceDefinition()).ok());
  ASSERT_TRUE(registry
                  .AddDestination(testing::MemoryDestinationDefinition(
                      std::make_shared<testing::MemoryDestinationState>()))
                  .ok());
  std::string yaml = fmt::format(R"(
sources: [{{ name: s, type: sqlite, path: x.db }}]
models: [{{ name: customers, source: s, sql: SELECT 1, primary_key: id }}]
destinations: [{{ name: hub, type: memory }}]
mappings:
  - {{ name: crm, model: customers, destination: hub, action: upsert, fields: {{ customer_id: id }},
       alerts: [oncall] }}
  - {{ name: ads, model: customers, destination: hub, action: upsert, fields: {{ customer_id: id }} }}
alerts:
  - name: oncall
    on: [failure]
    webhook: {{ url: "{}", headers: {{ X-Team: data }} }}
)",
                                 server.Url("/alerts"));
  LoadResult loaded = LoadWorkspaceFromString(yaml, "/ws/backflow.yaml", registry);
  ASSERT_TRUE(loaded.ok()) << (loaded.diagnostics.empty() ? "" : loaded.diagnostics[0].ToString());
  std::unique_ptr<HttpClient> http = NewCurlHttpClient();
  auto manager = AlertManager::Create(loaded.workspace, *store_, *http, clock_,
                                      [this](const AlertEvent& e) { logged_.push_back(e); });
  ASSERT_TRUE(manager.ok()) << manager.status();
  EXPECT_FALSE((*manager)->empty());

  EXPECT_TRUE((*manager)->OnRunFinished(Run(RunStatus::kFailed, "ads")).events.empty())
      << "ads is not covered";
  RunInfo run = Run(RunStatus::kFailed, "crm");
  AlertReport report = (*manager)->OnRunFinished(run);
  ASSERT_EQ(report.events.size(), 1u);
  EXPECT_TRUE(report.ok()) << report.events[0].status;
  EXPECT_EQ(report.events[0].channel, "webhook");
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(received[0].target, "/alerts");
  EXPECT_EQ(received[0].Header("x-team"), "data");
  nlohmann::json body = nlohmann::json::parse(received[0].body);
  EXPECT_EQ(body["alert"], "oncall");
  EXPECT_EQ(body["kind"], "failure");
  EXPECT_EQ(body["run_id"], run.id);
  EXPECT_TRUE((*manager)->OnRunFinished(Run(RunStatus::kSucceeded, "crm")).events.empty())
      << "recovery is not in on:";
}

}  // namespace
}  // namespace backflow
