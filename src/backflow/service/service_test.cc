// The service in process (so ThreadSanitizer sees its threads): workers,
// the lease keeper, the API server and the scheduler loop together.
#include "backflow/service/service.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>
#include <tuple>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/sources/sqlite/sqlite_source.h"
#include "backflow/sqlite/database.h"
#include "backflow/state/state_store.h"
#include "backflow/state/state_store_testing.h"
#include "backflow/testing/http_test_server.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dest_ = std::make_shared<testing::MemoryDestinationState>();
    dest_->send_delay = std::chrono::milliseconds(2);
    ASSERT_TRUE(registry_.AddSource(SqliteSourceDefinition()).ok());
    ASSERT_TRUE(registry_.AddDestination(testing::MemoryDestinationDefinition(dest_)).ok());
    auto db = sqlite::Database::Open((dir_ / "wh.db").string(),
                                     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("CREATE TABLE a (id INTEGER, v TEXT)").ok());
    ASSERT_TRUE((*db)->Exec("CREATE TABLE b (id INTEGER, v TEXT)").ok());
    for (const char* t : {"a", "b"}) {
      ASSERT_TRUE((*db)
                      ->Exec(fmt::format("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                                         "FROM n WHERE i < 300) INSERT INTO {} SELECT i, 'x' || "
                                         "i FROM n",
                                         t))
                      .ok());
    }
    std::ofstream(dir_ / "backflow.yaml") << R"(
state: sqlite:.backflow/state.db
sources:
  - { name: wh, type: sqlite, path: wh.db }
models:
  - { name: a, source: wh, sql: "SELECT id, v FROM a", primary_key: id }
  - { name: b, source: wh, sql: "SELECT id, v FROM b", primary_key: id }
destinations:
  - { name: mem, type: memory }
mappings:
  - { name: a1, model: a, destination: mem, action: upsert, batch_size: 10, fields: { k: id, v: v } }
  - { name: a2, model: a, destination: mem, action: upsert, batch_size: 10, fields: { k2: id } }
  - { name: b1, model: b, destination: mem, action: upsert, batch_size: 10, fields: { kb: id } }
)";
    auto store = OpenSqliteStateStore((dir_ / ".backflow/state.db").string());
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->CreateApiToken({"t", HexEncode(Sha256("tok")), false, "now", ""}).ok());
    store_ = std::move(*store);
    http_ = NewCurlHttpClient();
  }

  testing::ScratchDir scratch_{"service"};
  const fs::path dir_ = scratch_.path();
  Registry registry_;
  std::shared_ptr<testing::MemoryDestinationState> dest_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<HttpClient> http_;
};

TEST_F(ServiceTest, TwoWorkersTheApiAndTheKeeperWorkTogetherAndStopCleanly) {
  ServiceOptions options;
  options.config_path = (dir_ / "backflow.yaml").string();
  options.workers = 2;
  options.listen = "127.0.0.1:0";
  options.poll = std::chrono::milliseconds(100);
  std::atomic<int> finished{0};
  options.on_run_finished = [&](const RunInfo&) { ++finished; };
  const std::string log_path = (dir_ / "serve.log").string();
  std::FILE* log = std::fopen(log_path.c_str(), "w");
  ASSERT_NE(log, nullptr);
  Service service(options, registry_, ConnectorEnv{http_.get(), &SystemClock()}, log);
  absl::StatusOr<ServiceOutcome> outcome;
  std::thread runner([&] { outcome = service.Run(); });

  std::string base;
  for (int i = 0; i < 300 && base.empty(); ++i) {
    std::istringstream lines(Slurp(log_path));
    std::string line;
    while (std::getline(lines, line)) {
      json j = json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.value("event", "") == "api_listening") {
        base = fmt::format("http://127.0.0.1:{}", j["port"].get<int>());
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_FALSE(base.empty()) << Slurp(log_path);
  auto call = [&](const std::string& method, const std::string& path) {
    HttpRequest req;
    req.method = method;
    req.url = base + path;
    req.headers.emplace_back("Authorization", "Bearer tok");
    auto res = http_->Send(req);
    EXPECT_TRUE(res.ok()) << res.status();
    return res.ok() ? json::parse(res->body, nullptr, false) : json();
  };
  // Both models at once: the two workers take one request each.
  json ra = call("POST", "/api/v1/models/a/runs");
  json rb = call("POST", "/api/v1/models/b/runs");
  ASSERT_EQ(ra["runs"].size(), 2u) << ra.dump();
  ASSERT_EQ(rb["runs"].size(), 1u) << rb.dump();
  std::vector<int64_t> ids = {ra["runs"][0]["id"], ra["runs"][1]["id"], rb["runs"][0]["id"]};
  // Poll from this thread while workers write.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool done = false;
  while (!done && std::chrono::steady_clock::now() < deadline) {
    done = true;
    for (int64_t id : ids) {
      json run = call("GET", fmt::format("/api/v1/runs/{}", id));
      done &= run.value("status", "") == "succeeded";
    }
    call("GET", "/metrics");
  }
  EXPECT_TRUE(done);
  json a1 = call("GET", fmt::format("/api/v1/runs/{}", ids[0]));
  json b1 = call("GET", fmt::format("/api/v1/runs/{}", ids[2]));
  EXPECT_EQ(a1["counts"]["succeeded"], 300);
  EXPECT_EQ(b1["counts"]["succeeded"], 300);
  EXPECT_EQ(finished.load(), 3);

  service.RequestStop();
  runner.join();
  std::fclose(log);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->runs, 2);  // two model runs
  EXPECT_EQ(*store_->CountRuns(RunStatus::kRunning), 0);
  EXPECT_NE(Slurp(log_path).find("scheduler_stopped"), std::string::npos);
}

TEST_F(ServiceTest, StoppingMidRunQueuesTheRunAgainAndTheNextStartFinishesIt) {
  dest_->send_delay = std::chrono::milliseconds(20);
  RunInfo queued;
  queued.mapping = "b1";
  queued.model = "b";
  queued.destination = "mem";
  queued.trigger = "api";
  queued.requested_at = "2026-01-01T00:00:00.000Z";
  auto ids = testing::QueueRuns(*store_, {queued});
  ASSERT_TRUE(ids.ok());
  std::atomic<Service*> current{nullptr};
  dest_->on_batch = [&](int batches) {
    if (batches == 3 && current.load() != nullptr) current.load()->RequestStop();
  };
  ServiceOptions options;
  options.config_path = (dir_ / "backflow.yaml").string();
  options.poll = std::chrono::milliseconds(100);
  {
    Service service(options, registry_, ConnectorEnv{http_.get(), &SystemClock()}, stdout);
    current.store(&service);
    ASSERT_TRUE(service.Run().ok());
    current.store(nullptr);
  }
  auto run = store_->GetRun((*ids)[0]);
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(run->status, RunStatus::kQueued) << run->error;
  const size_t sent_before = dest_->sent_keys.size();
  EXPECT_LT(sent_before, 300u);

  // The next start (here with --once) finishes it; nothing is sent twice.
  options.once = true;
  dest_->on_batch = nullptr;
  Service again(options, registry_, ConnectorEnv{http_.get(), &SystemClock()}, stdout);
  ASSERT_TRUE(again.Run().ok());
  run = store_->GetRun((*ids)[0]);
  EXPECT_EQ(run->status, RunStatus::kSucceeded) << run->error;
  EXPECT_EQ(dest_->records.size(), 300u);
  EXPECT_EQ(dest_->sent_keys.size(), 300u);
}

// A slow alert receiver (here: it holds the first alert until the next
// model's run has finished) does not hold the worker: with one worker the
// next run goes on while the alert is being sent, and the service sends every
// alert before it returns.
TEST_F(ServiceTest, ASlowAlertReceiverDoesNotHoldTheWorker) {
  std::mutex mu;
  std::condition_variable cv;
  bool b_finished = false;
  bool held_until_b_finished = false;
  std::vector<std::string> alerted;  // the mapping of each alert, in order
  HttpTestServer receiver([&](const TestRequest& req) {
    json body = json::parse(req.body, nullptr, false);
    std::unique_lock<std::mutex> lock(mu);
    if (alerted.empty()) {
      // Less than the alert's send timeout (10 s), so a worker that waited
      // for this reply would still finish the test, only without b's run.
      held_until_b_finished =
          cv.wait_for(lock, std::chrono::seconds(8), [&] { return b_finished; });
    }
    alerted.push_back(body.is_object() ? body.value("mapping", "") : "");
    return TestResponse{};
  });
  ASSERT_TRUE(receiver.Start().ok());
  std::ofstream(dir_ / "backflow.yaml", std::ios::app) << fmt::format(
      "alerts:\n  - {{ name: oncall, webhook: {{ url: \"{}\" }} }}\n", receiver.Url("/alerts"));
  dest_->batch_error = absl::PermissionDeniedError("forbidden");  // every run fails
  std::vector<RunInfo> queued(2);
  for (auto [run, mapping, model] : {std::tuple{&queued[0], "a1", "a"}, {&queued[1], "b1", "b"}}) {
    run->mapping = mapping;
    run->model = model;
    run->destination = "mem";
    run->trigger = "api";
    run->requested_at = "2026-01-01T00:00:00.000Z";
  }
  ASSERT_TRUE(testing::QueueRuns(*store_, queued).ok());

  ServiceOptions options;
  options.config_path = (dir_ / "backflow.yaml").string();
  options.poll = std::chrono::milliseconds(100);
  options.once = true;
  std::vector<std::string> finished;
  options.on_run_finished = [&](const RunInfo& run) {
    std::lock_guard<std::mutex> lock(mu);
    finished.push_back(run.mapping);
    EXPECT_EQ(run.status, RunStatus::kFailed) << run.error;
    if (run.mapping == "b1") b_finished = true;
    cv.notify_all();
  };
  Service service(options, registry_, ConnectorEnv{http_.get(), &SystemClock()}, stdout);
  absl::StatusOr<ServiceOutcome> outcome = service.Run();
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(finished, (std::vector<std::string>{"a1", "b1"}));
  EXPECT_TRUE(held_until_b_finished) << "the worker waited for the alert of a1";
  EXPECT_EQ(alerted, (std::vector<std::string>{"a1", "b1"}));  // both sent before Run() returned
  receiver.Stop();
}

// The scheduler lists busy models, then queues the ticks it decided; an API
// request landing in between (here: from the hook in that window) makes the
// tick skipped, exactly as a run queued before the scheduler looked does.
TEST_F(ServiceTest, ARunQueuedWhileTheSchedulerDecidesSkipsTheTickAsABusyModelDoes) {
  std::string yaml = Slurp((dir_ / "backflow.yaml").string());
  const std::string model_a = R"(sql: "SELECT id, v FROM a", primary_key: id })";
  const size_t at = yaml.find(model_a);
  ASSERT_NE(at, std::string::npos);
  yaml.replace(at, model_a.size(),
               R"(sql: "SELECT id, v FROM a", primary_key: id, schedule: { every: 1h } })");
  std::ofstream(dir_ / "backflow.yaml") << yaml;
  auto at_time = [](const char* rfc3339) {
    absl::Time t;
    std::string err;
    EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << err;
    return t;
  };
  ASSERT_TRUE(
      store_->SetScheduleState("a", {absl::ToUnixSeconds(at_time("2026-03-01T10:00:00Z")), 0, 0})
          .ok());
  RunInfo api;
  api.mapping = "a1";
  api.model = "a";
  api.destination = "mem";
  api.trigger = "api";
  api.requested_at = "2026-03-01T11:00:00.000Z";

  // Runs the scheduler once at `now` (calling `hook` in its window) and
  // returns the log's "schedule_*" events for model "a".
  auto decide = [&](const char* now, std::function<void()> hook) {
    ServiceOptions options;
    options.config_path = (dir_ / "backflow.yaml").string();
    options.once = true;
    options.now = at_time(now);
    options.after_busy_check = std::move(hook);
    const std::string log_path = (dir_ / "serve.log").string();
    std::FILE* log = std::fopen(log_path.c_str(), "w");
    EXPECT_NE(log, nullptr);
    Service service(options, registry_, ConnectorEnv{http_.get(), &SystemClock()}, log);
    absl::StatusOr<ServiceOutcome> outcome = service.Run();
    std::fclose(log);
    EXPECT_TRUE(outcome.ok()) << outcome.status();
    std::vector<json> events;
    std::istringstream lines(Slurp(log_path));
    std::string line;
    while (std::getline(lines, line)) {
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded() || j.value("model", "") != "a") continue;
      if (j.value("event", "").rfind("schedule_", 0) == 0) events.push_back(j);
    }
    return events;
  };
  auto runs_of_a = [&] {
    RunFilter f;
    f.model = "a";
    auto runs = store_->ListRuns(f);
    EXPECT_TRUE(runs.ok());
    return runs.ok() ? *runs : std::vector<RunInfo>();
  };

  // 11:00 is due and nothing runs when the scheduler looks; the API queues a1
  // before the tick is stored.
  std::vector<int64_t> raced;
  std::vector<json> first = decide("2026-03-01T11:00:05Z", [&] {
    if (!raced.empty()) return;
    auto ids = testing::QueueRuns(*store_, {api});
    ASSERT_TRUE(ids.ok()) << ids.status();
    raced = *ids;
  });
  ASSERT_EQ(raced.size(), 1u);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0]["event"], "schedule_skipped") << first[0].dump();
  EXPECT_EQ(first[0]["tick"], "2026-03-01T11:00:00Z");
  EXPECT_EQ(first[0]["active_run_id"], raced[0]);
  EXPECT_FALSE(first[0].contains("run_ids"));
  std::vector<RunInfo> runs = runs_of_a();
  ASSERT_EQ(runs.size(), 1u);  // the API's run only (which the worker ran)
  EXPECT_EQ(runs[0].id, raced[0]);
  EXPECT_EQ(runs[0].status, RunStatus::kSucceeded) << runs[0].error;
  auto state = store_->GetScheduleState("a");
  ASSERT_TRUE(state.ok() && state->has_value());
  EXPECT_EQ((*state)->last_tick, absl::ToUnixSeconds(at_time("2026-03-01T11:00:00Z")));
  EXPECT_EQ((*state)->skipped_ticks, 1);
  EXPECT_EQ((*state)->missed_ticks, 0);

  // 12:00: a1 is queued before the scheduler looks: the planner skips the
  // tick, with the same event.
  api.requested_at = "2026-03-01T12:00:00.000Z";
  auto before = testing::QueueRuns(*store_, {api});
  ASSERT_TRUE(before.ok()) << before.status();
  std::vector<json> second = decide("2026-03-01T12:00:05Z", nullptr);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0]["event"], "schedule_skipped") << second[0].dump();
  EXPECT_EQ(second[0]["active_run_id"], (*before)[0]);
  json same_but_tick = second[0];
  same_but_tick["tick"] = first[0]["tick"];
  same_but_tick["active_run_id"] = first[0]["active_run_id"];
  same_but_tick.erase("ts");
  first[0].erase("ts");
  EXPECT_EQ(same_but_tick, first[0]);
  EXPECT_EQ((**store_->GetScheduleState("a")).skipped_ticks, 2);

  // 13:00, nothing running: the tick queues both mappings of "a".
  std::vector<json> third = decide("2026-03-01T13:00:05Z", nullptr);
  ASSERT_EQ(third.size(), 1u);
  EXPECT_EQ(third[0]["event"], "schedule_due") << third[0].dump();
  EXPECT_EQ(third[0]["run_ids"].size(), 2u);
  EXPECT_EQ(runs_of_a().size(), 4u);
  EXPECT_EQ((**store_->GetScheduleState("a")).skipped_ticks, 2);
}

}  // namespace
}  // namespace backflow
