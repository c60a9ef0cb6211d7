// change_detection: warehouse on Snowflake stops when its run is cancelled:
// the pass's statement that is running (the copy of the model in Begin, the
// candidate keys in ReadCandidates) is cancelled in Snowflake, the step
// returns kCancelled, and the pass tables are dropped; through the engine, a
// run cancelled during the pass ends cancelled with nothing sent and the
// warehouse checkpoint untouched.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/sources/snowflake/fake_snowflake_server.h"
#include "backflow/sources/snowflake/snowflake_source.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_pass_cancel.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using warehouse_testing::CancelWhenClock;

class SnowflakePassCancelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeSnowflakeOptions options;
    options.clock = &clock_;
    fake_ = std::make_unique<FakeSnowflakeServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    FakeSnowflakeUser user;
    user.name = "SYNC_USER";
    user.roles = {"PUBLIC", "RETL"};
    fake_->AddUser(user);
    fake_->AddToken("pat-1", "SYNC_USER", "PROGRAMMATIC_ACCESS_TOKEN");
    ASSERT_TRUE(fake_->CreateTable("CUSTOMERS", {{"ID", "VARCHAR"}, {"PLAN", "VARCHAR"}}).ok());
    for (int i = 1; i <= 5; ++i) {
      ASSERT_TRUE(fake_->Exec(fmt::format("INSERT INTO customers VALUES ('k{}', 'free')", i)).ok());
    }
    fake_->set_still_running_polls(2);  // every statement answers 202 twice first
  }

  std::unique_ptr<Source> MakeSource() {
    json settings = {
        {"account", "myorg-myaccount"}, {"token", "pat-1"},   {"warehouse", "COMPUTE_WH"},
        {"database", "ANALYTICS"},      {"schema", "PUBLIC"}, {"role", "RETL"},
        {"base_url", fake_->BaseUrl()}, {"max_retries", 0},   {"state_schema", "bf_state"}};
    auto source = SnowflakeSourceDefinition().create(settings, ConnectorEnv{http_.get(), &clock_});
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }

  // Cancels once the last statement submitted contains `part`.
  void CancelDuring(const std::string& part) {
    clock_.when = [this, part] {
      json body = fake_->LastSubmitBody();
      return body.is_object() && body.value("statement", "").find(part) != std::string::npos;
    };
  }

  std::vector<std::string> Tables() {
    std::vector<std::string> names;
    auto rows =
        fake_->Select("SELECT name FROM bf_state.sqlite_master WHERE type = 'table' ORDER BY name");
    EXPECT_TRUE(rows.ok()) << rows.status();
    if (rows.ok()) {
      for (const auto& r : *rows) names.push_back(r[0].get<std::string>());
    }
    return names;
  }

  int64_t Registered() {
    auto rows = fake_->Select("SELECT count(*) FROM bf_state.pass_tables");
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() ? (*rows)[0][0].get<int64_t>() : -1;
  }

  // Whether no status poll of statement `handle` followed its cancel.
  bool NotPolledAfterItsCancel(const std::string& handle) {
    bool cancelled = false;
    for (const SnowflakeRequestLog& r : fake_->Requests()) {
      if (r.target.find(handle) == std::string::npos) continue;
      if (r.method == "POST" && r.target.find("/cancel") != std::string::npos) cancelled = true;
      if (r.method == "GET" && cancelled) return false;
    }
    return cancelled;
  }

  std::atomic<bool> cancel_{false};
  CancelWhenClock clock_{&cancel_};
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeSnowflakeServer> fake_;
};

TEST_F(SnowflakePassCancelTest, CancelDuringBeginCancelsTheCopyOfTheModelAndDropsIt) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  CancelDuring("CREATE TABLE bf_state.PASS_");
  auto snapshot = cd->Begin("SELECT id, plan FROM customers", "ID", WarehousePassOptions{&cancel_});
  ASSERT_EQ(snapshot.status().code(), absl::StatusCode::kCancelled) << snapshot.status();
  std::vector<SnowflakeCancellation> cancelled = fake_->cancellations();
  ASSERT_EQ(cancelled.size(), 1u);
  EXPECT_TRUE(cancelled[0].was_running);
  EXPECT_TRUE(NotPolledAfterItsCancel(cancelled[0].handle));
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
  EXPECT_EQ(Registered(), 0);

  // The next pass works.
  clock_.when = nullptr;
  cancel_ = false;
  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fingerprint{1, 2}}};
  int rows = 0;
  auto next = warehouse_testing::PassReadingCandidates(*cd, "SELECT id, plan FROM customers", "ID",
                                                       filter, &cancel_, rows);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(rows, 5);
  ASSERT_TRUE(next->Close().ok());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
}

TEST_F(SnowflakePassCancelTest, CancelDuringReadCandidatesCancelsTheKeysStatementAndDropsThePass) {
  auto source = MakeSource();
  WarehouseChangeDetection* cd = source->warehouse_change_detection();
  auto snapshot = cd->Begin("SELECT id, plan FROM customers", "ID", WarehousePassOptions{&cancel_});
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_EQ(Tables().size(), 3u);  // CHECKPOINTS, PASS_TABLES, PASS_x
  CancelDuring("_K AS");
  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fingerprint{1, 2}}};
  const int64_t submitted = fake_->CountRequests("POST /api/v2/statements?");
  auto reader = (*snapshot)->ReadCandidates(filter);
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
  std::vector<SnowflakeCancellation> cancelled = fake_->cancellations();
  ASSERT_EQ(cancelled.size(), 1u);
  EXPECT_TRUE(cancelled[0].was_running);
  EXPECT_TRUE(NotPolledAfterItsCancel(cancelled[0].handle));
  // Only the keys statement was submitted: the candidates' SELECT never was.
  EXPECT_EQ(fake_->CountRequests("POST /api/v2/statements?"), submitted + 1);
  EXPECT_EQ((*snapshot)->ScanEntries("m").status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(fake_->CountRequests("POST /api/v2/statements?"), submitted + 1);
  clock_.when = nullptr;
  ASSERT_TRUE((*snapshot)->Close().ok());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
  EXPECT_EQ(Registered(), 0);
}

// --- Through the engine ----------------------------------------------------------

TEST_F(SnowflakePassCancelTest, RunCancelledDuringAWarehousePassEndsCancelledAndSendsNothing) {
  testing::ScratchDir scratch("sf-pass-cancel");
  const fs::path dir = scratch.path();
  Registry registry;
  auto dest = std::make_shared<testing::MemoryDestinationState>();
  ASSERT_TRUE(registry.AddSource(SnowflakeSourceDefinition()).ok());
  ASSERT_TRUE(registry.AddDestination(testing::MemoryDestinationDefinition(dest)).ok());
  const std::string yaml = fmt::format(R"(
sources:
  - name: sf
    type: snowflake
    account: myorg-myaccount
    token: pat-1
    warehouse: COMPUTE_WH
    database: ANALYTICS
    schema: PUBLIC
    role: RETL
    base_url: "{}"
    max_retries: 0
    state_schema: bf_state
models:
  - name: people
    source: sf
    sql: "SELECT id, plan FROM customers"
    primary_key: ID
    change_detection: warehouse
destinations:
  - {{ name: mem, type: memory }}
mappings:
  - name: m
    model: people
    destination: mem
    action: upsert
    fields: {{ customer_id: ID, plan: PLAN }}
)",
                                       fake_->BaseUrl());
  LoadResult r = LoadWorkspaceFromString(yaml, (dir / "backflow.yaml").string(), registry);
  ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].ToString());
  auto state = OpenSqliteStateStore((dir / "state.db").string());
  ASSERT_TRUE(state.ok()) << state.status();
  auto sync = [&]() -> RunInfo {
    SyncEngine engine(r.workspace, registry, **state, ConnectorEnv{http_.get(), &clock_},
                      (dir / ".backflow").string());
    SyncOptions options;
    options.cancel = &cancel_;
    auto results = engine.Run("people", {"m"}, options);
    EXPECT_TRUE(results.ok()) << results.status();
    return results.ok() && !results->empty() ? (*results)[0].run : RunInfo{};
  };
  auto checkpoint = [&] {
    auto rows = fake_->Select(
        "SELECT record_key, row_hash, fingerprint FROM bf_state.checkpoints ORDER BY record_key");
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() ? json(*rows).dump() : std::string();
  };

  RunInfo first = sync();
  ASSERT_EQ(first.status, RunStatus::kSucceeded) << first.error;
  ASSERT_EQ(dest->records.size(), 5u);
  const std::string stored = checkpoint();

  // Changes the next run would send.
  ASSERT_TRUE(fake_->Exec("UPDATE customers SET plan = 'pro' WHERE id = 'k2'").ok());
  ASSERT_TRUE(fake_->Exec("INSERT INTO customers VALUES ('k6', 'free')").ok());
  dest->sent_keys.clear();
  const int batches = dest->batches;
  const size_t cancels = fake_->cancellations().size();

  CancelDuring("CREATE TABLE bf_state.PASS_");  // the pass's copy of the model
  RunInfo cancelled = sync();
  EXPECT_EQ(cancelled.status, RunStatus::kCancelled) << cancelled.error;
  EXPECT_THAT(cancelled.error, HasSubstr("nothing was sent"));
  EXPECT_EQ(fake_->cancellations().size(), cancels + 1);
  EXPECT_TRUE(dest->sent_keys.empty());
  EXPECT_EQ(dest->batches, batches);
  EXPECT_EQ(checkpoint(), stored);
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));

  // Cancelled while the candidate keys are chosen: the same.
  cancel_ = false;
  CancelDuring("_K AS");
  cancelled = sync();
  EXPECT_EQ(cancelled.status, RunStatus::kCancelled) << cancelled.error;
  EXPECT_EQ(fake_->cancellations().size(), cancels + 2);
  EXPECT_TRUE(dest->sent_keys.empty());
  EXPECT_EQ(checkpoint(), stored);
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));

  // The next run sends exactly the two changes.
  clock_.when = nullptr;
  cancel_ = false;
  RunInfo next = sync();
  EXPECT_EQ(next.status, RunStatus::kSucceeded) << next.error;
  EXPECT_EQ(next.counts.added, 1);
  EXPECT_EQ(next.counts.updated, 1);
  EXPECT_EQ(dest->sent_keys.size(), 2u);
  EXPECT_NE(checkpoint(), stored);
}

}  // namespace
}  // namespace backflow
