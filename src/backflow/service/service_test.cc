// The service in process (so ThreadSanitizer sees its threads): workers,
// the lease keeper, the API server and the scheduler loop together.
#include "backflow/service/service.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/sources/sqlite/sqlite_source.h"
#include "backflow/sqlite/database.h"
#include "backflow/state/state_store.h"
#include "backflow/state/state_store_testing.h"
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

}  // namespace
}  // namespace backflow
