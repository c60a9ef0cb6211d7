// SyncOptions::cancel reaches the source while its query still runs: the
// engine hands it to Source::Query() (QueryOptions::cancel), a warehouse that
// polls stops there, and the run ends cancelled with nothing delivered and
// the checkpoint as it was.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>

#include "backflow/common/clock.h"
#include "backflow/config/workspace.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/sources/source.h"
#include "backflow/sources/sqlite/sqlite_source.h"
#include "backflow/sqlite/database.h"
#include "backflow/state/state_store.h"
#include "backflow/testing/cancelling_clock.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using testing::MemoryDestinationState;

// What the polling test warehouse saw.
struct PollProbe {
  int polls_per_query = 5;
  int polls = 0;                 // status polls sent, over all queries
  bool got_cancel_flag = false;  // Query() received a QueryOptions::cancel
  int cancelled = 0;             // queries stopped by the flag
};

// A warehouse whose queries run for `polls_per_query` polls, one second
// apart on the injected clock, before the SQLite result is ready; it checks
// QueryOptions::cancel before each poll, as the warehouse sources do.
class PollingSource : public Source {
 public:
  PollingSource(std::unique_ptr<Source> inner, Clock* clock, std::shared_ptr<PollProbe> probe)
      : inner_(std::move(inner)), clock_(clock), probe_(std::move(probe)) {}

  absl::Status CheckConnection() override { return inner_->CheckConnection(); }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    return Query(sql, QueryOptions{});
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql,
                                                   const QueryOptions& options) override {
    if (options.cancel != nullptr) probe_->got_cancel_flag = true;
    for (int i = 0; i < probe_->polls_per_query; ++i) {
      clock_->SleepFor(std::chrono::seconds(1));
      if (QueryCancelRequested(options.cancel)) {
        ++probe_->cancelled;
        return QueryCancelledError("test query");
      }
      ++probe_->polls;
    }
    return inner_->Query(sql, options);
  }

 private:
  std::unique_ptr<Source> inner_;
  Clock* clock_;
  std::shared_ptr<PollProbe> probe_;
};

SourceDefinition PollingSourceDefinition(std::shared_ptr<PollProbe> probe) {
  SourceDefinition def = SqliteSourceDefinition();
  def.type = "polling_sqlite";
  def.title = "Polling SQLite (test)";
  auto sqlite_create = def.create;
  def.create = [probe, sqlite_create](
                   const nlohmann::json& settings,
                   const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Source>> {
    auto inner = sqlite_create(settings, env);
    if (!inner.ok()) return inner.status();
    return std::make_unique<PollingSource>(*std::move(inner), env.clock, probe);
  };
  return def;
}

class QueryCancelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dest_ = std::make_shared<MemoryDestinationState>();
    ASSERT_TRUE(registry_.AddSource(PollingSourceDefinition(probe_)).ok());
    ASSERT_TRUE(registry_.AddDestination(MemoryDestinationDefinition(dest_)).ok());
    auto db = sqlite::Database::Open((dir_ / "wh.db").string(),
                                     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    warehouse_ = std::move(*db);
    Exec("CREATE TABLE customers (id INTEGER, email TEXT)");
    for (int i = 1; i <= 10; ++i) {
      Exec(fmt::format("INSERT INTO customers VALUES ({0}, 'u{0}@x.io')", i));
    }
    LoadResult r = LoadWorkspaceFromString(R"(
state: sqlite:state.db
sources:
  - { name: wh, type: polling_sqlite, path: wh.db }
models:
  - name: customers
    source: wh
    sql: "SELECT id, email FROM customers"
    primary_key: id
destinations:
  - { name: mem, type: memory }
mappings:
  - name: m
    model: customers
    destination: mem
    action: upsert
    fields: { customer_id: id, email: email }
)",
                                           (dir_ / "backflow.yaml").string(), registry_);
    ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].ToString());
    workspace_ = std::move(r.workspace);
    auto state = OpenSqliteStateStore((dir_ / "state.db").string());
    ASSERT_TRUE(state.ok()) << state.status();
    state_ = std::move(*state);
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(warehouse_->Exec(sql).ok()) << sql; }

  RunInfo Sync(const SyncOptions& options) {
    SyncEngine engine(workspace_, registry_, *state_, ConnectorEnv{nullptr, &clock_},
                      (dir_ / ".backflow").string());
    auto results = engine.Run("customers", {"m"}, options);
    EXPECT_TRUE(results.ok()) << results.status();
    if (!results.ok() || results->empty()) return {};
    return (*results)[0].run;
  }

  testing::ScratchDir scratch_{"query-cancel"};
  const fs::path dir_ = scratch_.path();
  std::shared_ptr<PollProbe> probe_ = std::make_shared<PollProbe>();
  std::atomic<bool> cancel_{false};
  CancellingClock clock_{&cancel_};
  Registry registry_;
  std::shared_ptr<MemoryDestinationState> dest_;
  std::unique_ptr<sqlite::Database> warehouse_;
  Workspace workspace_;
  std::unique_ptr<StateStore> state_;
};

TEST_F(QueryCancelTest, CancelWhileTheWarehouseRunsTheQueryEndsTheRunCancelled) {
  SyncOptions options;
  options.cancel = &cancel_;
  RunInfo first = Sync(options);  // never cancelled
  ASSERT_EQ(first.status, RunStatus::kSucceeded) << first.error;
  EXPECT_TRUE(probe_->got_cancel_flag);
  EXPECT_EQ(probe_->polls, 5);
  ASSERT_EQ(dest_->records.size(), 10u);
  ASSERT_EQ(*state_->CheckpointSize("m"), 10);

  // Changes the next run would send.
  Exec("UPDATE customers SET email = 'new@x.io' WHERE id = 3");
  Exec("INSERT INTO customers VALUES (11, 'u11@x.io')");
  dest_->sent_keys.clear();
  const int batches = dest_->batches;

  clock_.CancelDuringSleep(2);  // while the warehouse still runs the query
  RunInfo cancelled = Sync(options);
  EXPECT_EQ(cancelled.status, RunStatus::kCancelled) << cancelled.error;
  EXPECT_NE(cancelled.error.find("during extraction; nothing was sent"), std::string::npos)
      << cancelled.error;
  EXPECT_EQ(probe_->cancelled, 1);
  EXPECT_EQ(probe_->polls, 5 + 1);  // one poll, then the cancel: no more polls
  EXPECT_EQ(cancelled.counts.extracted, 0);
  EXPECT_TRUE(dest_->sent_keys.empty());
  EXPECT_EQ(dest_->batches, batches);
  EXPECT_EQ(dest_->records.size(), 10u);
  EXPECT_EQ(*state_->CheckpointSize("m"), 10);

  // The checkpoint was left as it was: the next run sends exactly the two
  // changes.
  cancel_ = false;
  RunInfo next = Sync(options);
  EXPECT_EQ(next.status, RunStatus::kSucceeded) << next.error;
  EXPECT_EQ(next.counts.added, 1);
  EXPECT_EQ(next.counts.updated, 1);
  EXPECT_EQ(dest_->sent_keys.size(), 2u);
  EXPECT_EQ(dest_->records.size(), 11u);
}

}  // namespace
}  // namespace backflow
