// Crash safety: `backflow sync` is SIGKILLed at random points (extraction,
// change detection, delivery, checkpoint commit) across many seeds, while the
// model keeps changing; after each kill a later sync must bring the receiver
// to exactly the model, with nothing lost, and re-send at most the batches
// that were in flight when the process died.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "backflow/sqlite/database.h"
#include "backflow/testing/scratch_dir.h"
#include "backflow/testing/webhook_receiver.h"
#include "cli_runner.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

namespace fs = std::filesystem;

class CrashE2eTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(receiver_.Start().ok());
    auto db =
        sqlite::Database::Open(dir_ + "/warehouse.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    warehouse_ = std::move(*db);
    ASSERT_TRUE(warehouse_->Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").ok());
    std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
sources: [{{ name: w, type: sqlite, path: warehouse.db }}]
models: [{{ name: t, source: w, sql: "SELECT id, v FROM t", primary_key: id }}]
destinations: [{{ name: hook, type: webhook, settings: {{ url: "{}" }} }}]
mappings:
  - {{ name: m, model: t, destination: hook, action: send_batch, batch_size: 40,
      max_deletes: 100%, fields: {{ id: id, v: v }} }}
)",
                                                          receiver_.Url());
  }

  // Applies a random mix of inserts, updates and deletes to the model.
  void Mutate(std::mt19937& rng, int round) {
    std::uniform_int_distribution<int> id(1, 1500);
    ASSERT_TRUE(warehouse_->Exec("BEGIN").ok());
    for (int i = 0; i < 300; ++i) {
      int k = id(rng);
      std::string sql;
      switch (rng() % 3) {
        case 0:
          sql = fmt::format("INSERT OR REPLACE INTO t VALUES ({}, 'r{}-{}')", k, round, i);
          break;
        case 1:
          sql = fmt::format("UPDATE t SET v = 'u{}-{}' WHERE id = {}", round, i, k);
          break;
        default:
          sql = fmt::format("DELETE FROM t WHERE id = {}", k);
      }
      ASSERT_TRUE(warehouse_->Exec(sql).ok());
    }
    ASSERT_TRUE(warehouse_->Exec("COMMIT").ok());
  }

  std::map<std::string, nlohmann::json> Model() {
    std::map<std::string, nlohmann::json> out;
    auto s = warehouse_->Prepare("SELECT id, v FROM t");
    while (*s->Step()) {
      out[std::to_string(s->ColumnInt(0))] = {{"id", s->ColumnInt(0)},
                                              {"v", std::string(s->ColumnText(1))}};
    }
    return out;
  }

  testing::ScratchDir scratch_{"crash-e2e"};
  const std::string dir_ = scratch_.string();
  WebhookReceiver receiver_;
  std::unique_ptr<sqlite::Database> warehouse_;
};

TEST_P(CrashE2eTest, KilledAtRandomPointsLosesNothing) {
  std::mt19937 rng(GetParam());
  std::uniform_int_distribution<int> kill_after_ms(0, 400);
  for (int round = 0; round < 3; ++round) {
    Mutate(rng, round);
    // Each batch takes a few milliseconds, so kills land in every phase.
    receiver_.EnqueueReplies(1000, WebhookReply::Slow(std::chrono::milliseconds(rng() % 4)));
    pid_t pid = e2e::StartCli(dir_, {"sync", "m"});
    std::this_thread::sleep_for(std::chrono::milliseconds(kill_after_ms(rng)));
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    receiver_.ClearScript();
  }
  e2e::CliResult r = e2e::RunCli(dir_, {"sync", "m", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto state = receiver_.State();
  auto model = Model();
  for (const auto& [key, fields] : model) {
    auto it = state.find(key);
    if (it == state.end()) {
      ADD_FAILURE() << "missing in the receiver: " << key << " " << fields.dump();
    } else if (it->second != fields) {
      ADD_FAILURE() << "stale in the receiver: " << key << " has " << it->second.dump()
                    << ", model " << fields.dump();
    }
  }
  for (const auto& [key, fields] : state) {
    if (!model.count(key)) {
      ADD_FAILURE() << "not deleted in the receiver: " << key;
      for (const ReceivedRequest& req : receiver_.Requests()) {
        auto body = nlohmann::json::parse(req.body, nullptr, false);
        if (body.is_discarded() || !body.contains("records")) continue;
        for (const auto& rec : body["records"]) {
          if (rec["key"] == key) {
            ADD_FAILURE() << "  it was sent in request " << req.sequence << " of run "
                          << body["run_id"].dump() << " (applied " << req.applied << ", reply "
                          << req.reply_status << "): " << rec.dump();
          }
        }
      }
    }
  }
  // A second run finds nothing left to do.
  int64_t before = receiver_.request_count();
  r = e2e::RunCli(dir_, {"sync", "m", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(receiver_.request_count(), before);
  // Re-sends are bounded by the batches in flight at the three kills.
  size_t duplicates = receiver_.DuplicateRecordIds().size();
  EXPECT_LE(duplicates, 3u * 40u) << "seed " << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Seeds, CrashE2eTest, ::testing::Range(1, 13));

}  // namespace
}  // namespace backflow
