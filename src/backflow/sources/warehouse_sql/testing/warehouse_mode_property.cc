#include "backflow/sources/warehouse_sql/testing/warehouse_mode_property.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow::warehouse_testing {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A JSON value as the text a warehouse row holds.
std::string Text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

void Insert(WarehouseModeFixture& f, const std::string& table, int n, const std::string& plan,
            int age) {
  f.WarehouseExec(fmt::format("INSERT INTO {} VALUES ({}, 'u{}@x.io', '{}', {}, 'n')", table,
                              f.KeyLiteral(n), n + 1, plan, age));
}

// The destinations hold the model: every unique key's current values, and
// (for m, which sends deletes) no key the model lost.
void ExpectDestinationsHoldTheModel(WarehouseModeFixture& f, const std::string& table,
                                    const Side& side) {
  std::map<std::string, std::vector<std::vector<std::string>>> model;
  for (auto& row : f.WarehouseRows(fmt::format(
           "SELECT id AS c0, email AS c1, plan AS c2, age AS c3 FROM {} WHERE id IS NOT NULL",
           table))) {
    const std::string key = row.at(0);
    model[key].push_back(std::move(row));
  }
  for (const auto& [key, rows] : model) {
    if (rows.size() != 1) continue;  // a duplicated key keeps what it had
    const auto m = side.m->records.find(key);
    const auto m2 = side.m2->records.find(key);
    ASSERT_NE(m, side.m->records.end()) << key;
    ASSERT_NE(m2, side.m2->records.end()) << key;
    const json payload = json::parse(m->second), payload2 = json::parse(m2->second);
    EXPECT_EQ(Text(payload["customer_id"]), key) << m->second;
    EXPECT_EQ(Text(payload["email"]), rows[0][1]) << m->second;
    EXPECT_EQ(Text(payload["plan"]), rows[0][2]) << m->second;
    EXPECT_EQ(Text(payload2["customer_id"]), key) << m2->second;
    EXPECT_EQ(Text(payload2["age"]), rows[0][3]) << m2->second;
  }
  for (const auto& [key, payload] : side.m->records) {
    EXPECT_EQ(model.count(key), 1u) << "deleted key still in the destination: " << key;
  }
}

}  // namespace

std::string WarehouseModeFixture::ResolveOneDuplicateSql(const std::string& table) const {
  return fmt::format(
      "DELETE FROM {0} WHERE rowid IN (SELECT min(rowid) FROM {0} WHERE id IS NOT NULL GROUP BY "
      "id HAVING count(*) > 1 LIMIT 1)",
      table);
}

std::string CountsText(const RunCounts& c) {
  return fmt::format(
      "added {} updated {} deleted {} unchanged {} skipped {} succeeded {} failed {} rejected {}",
      c.added, c.updated, c.deleted, c.unchanged, c.skipped, c.succeeded, c.failed, c.rejected);
}

WarehouseModeHarness::WarehouseModeHarness(WarehouseModeFixture& fixture)
    : fixture_(fixture), scratch_(fixture.WarehouseName() + "-warehouse-mode") {}

WarehouseModeHarness::~WarehouseModeHarness() = default;

void WarehouseModeHarness::Setup(Side& side, const std::string& name, const std::string& mode,
                                 const std::string& table, const std::string& m_extra) {
  side.dir = dir_ / name;
  fs::create_directories(side.dir);
  ASSERT_TRUE(side.registry.AddSource(fixture_.WarehouseDefinition()).ok());
  ASSERT_TRUE(side.registry.AddDestination(testing::MemoryDestinationDefinition(side.m)).ok());
  DestinationDefinition second = testing::MemoryDestinationDefinition(side.m2);
  second.type = "memory2";
  ASSERT_TRUE(side.registry.AddDestination(second).ok());
  auto c = [&](const char* column) { return fixture_.ColumnName(column); };
  const std::string yaml = fmt::format(
      R"(
sources:
  - name: wh
{source}models:
  - name: people
    source: wh
    sql: "SELECT id, email, plan, age, note FROM {table}"
    primary_key: {id}
    change_detection: {mode}
destinations:
  - {{ name: mem, type: memory }}
  - {{ name: mem2, type: memory2 }}
mappings:
  - name: m
    model: people
    destination: mem
    action: upsert
    batch_size: 3
    fields: {{ customer_id: {id}, email: {email}, plan: {plan} }}
{m_extra}
  - name: m2
    model: people
    destination: mem2
    action: upsert
    records: added_or_updated
    max_deletes: 100%
    fields: {{ customer_id: {id}, age: {age} }}
)",
      fmt::arg("source", fixture_.SourceYaml()), fmt::arg("table", table), fmt::arg("mode", mode),
      fmt::arg("id", c("id")), fmt::arg("email", c("email")), fmt::arg("plan", c("plan")),
      fmt::arg("age", c("age")), fmt::arg("m_extra", m_extra));
  LoadResult r =
      LoadWorkspaceFromString(yaml, (side.dir / "backflow.yaml").string(), side.registry);
  ASSERT_TRUE(r.ok()) << (r.diagnostics.empty() ? "" : r.diagnostics[0].ToString());
  side.workspace = std::move(r.workspace);
  auto state = OpenSqliteStateStore((side.dir / "state.db").string());
  ASSERT_TRUE(state.ok()) << state.status();
  side.state = std::move(*state);
}

std::vector<MappingRunResult> WarehouseModeHarness::Sync(Side& side, SyncOptions options,
                                                         const std::vector<std::string>& mappings) {
  SyncEngine engine(side.workspace, side.registry, *side.state, fixture_.WarehouseEnv(),
                    (side.dir / ".backflow").string());
  auto results = engine.Run("people", mappings, options);
  EXPECT_TRUE(results.ok()) << results.status();
  return results.ok() ? *results : std::vector<MappingRunResult>{};
}

void ExpectSameChangeSetsAsLocalMode(WarehouseModeFixture& f, const PropertyRounds& rounds) {
  for (int seed : rounds.seeds) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    WarehouseModeHarness harness(f);
    const std::string table = f.NewModelTable(seed);
    Side local, warehouse;
    harness.Setup(local, "local", "local", table);
    harness.Setup(warehouse, "warehouse", "warehouse", table);
    if (::testing::Test::HasFatalFailure()) return;
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
    const std::vector<std::string> plans = {"free", "pro", "team"};
    int next = 0;              // keys 0 .. next-1 were inserted
    std::vector<int> deleted;  // keys deleted, some of them inserted again later
    for (int i = 0; i < rounds.initial_rows; ++i, ++next)
      Insert(f, table, next, "free", 20 + pick(50));
    for (int round = 0; round < rounds.rounds; ++round) {
      SCOPED_TRACE(fmt::format("round {}", round));
      if (round > 0) {
        for (int i = pick(4); i > 0; --i, ++next)
          Insert(f, table, next, plans[pick(3)], 20 + pick(50));
        auto random_key = [&]() { return f.KeyIs(pick(next)); };
        for (int i = pick(4); i > 0; --i) {  // mapped by m
          const std::string plan = plans[pick(3)];
          f.WarehouseExec(
              fmt::format("UPDATE {} SET plan = '{}' WHERE {}", table, plan, random_key()));
        }
        for (int i = pick(3); i > 0; --i) {  // mapped by m2 only
          f.WarehouseExec(fmt::format("UPDATE {} SET age = age + 1 WHERE {}", table, random_key()));
        }
        for (int i = pick(4); i > 0; --i) {  // mapped by neither; sometimes NULL vs ''
          const std::string note =
              pick(2) == 0 ? f.Concat("note", "'x'") : (pick(2) == 0 ? "''" : "NULL");
          f.WarehouseExec(
              fmt::format("UPDATE {} SET note = {} WHERE {}", table, note, random_key()));
        }
        for (int i = rounds.min_deletes + pick(3); i > 0; --i) {
          const int n = pick(next);
          f.WarehouseExec(fmt::format("DELETE FROM {} WHERE {}", table, f.KeyIs(n)));
          deleted.push_back(n);
        }
        if (rounds.deleted_keys_come_back && !deleted.empty() && pick(2) == 0) {
          const int n = deleted[static_cast<size_t>(pick(static_cast<int>(deleted.size())))];
          f.WarehouseExec(fmt::format("DELETE FROM {} WHERE {}", table, f.KeyIs(n)));
          Insert(f, table, n, plans[pick(3)], 20 + pick(50));
        }
        if (pick(3) == 0) {  // a duplicate key, identical or not
          const char* plan = pick(2) == 0 ? "plan" : "'dup'";
          f.WarehouseExec(fmt::format(
              "INSERT INTO {0} SELECT id, email, {1}, age, note FROM {0} WHERE {2} LIMIT 1", table,
              plan, random_key()));
        }
        if (pick(3) == 0) f.WarehouseExec(f.ResolveOneDuplicateSql(table));  // a duplicate resolved
        if (pick(4) == 0) {
          f.WarehouseExec(
              fmt::format("INSERT INTO {} VALUES (NULL, 'null@x.io', 'free', 1, 'n')", table));
        }
        if (pick(4) == 0) f.WarehouseExec(fmt::format("DELETE FROM {} WHERE id IS NULL", table));
      }
      // Sometimes a record the destination refuses (on both sides).
      std::set<std::string> reject;
      if (pick(3) == 0) reject.insert(f.KeyText(pick(next)));
      for (Side* side : {&local, &warehouse}) {
        side->m->reject_keys = reject;
        side->m->sent_keys.clear();
        side->m2->sent_keys.clear();
      }
      SyncOptions options;
      options.full_resync = round == rounds.full_resync_round;
      std::vector<MappingRunResult> l = harness.Sync(local, options);
      std::vector<MappingRunResult> w = harness.Sync(warehouse, options);
      ASSERT_EQ(l.size(), 2u);
      ASSERT_EQ(w.size(), 2u);
      for (size_t i = 0; i < 2; ++i) {
        SCOPED_TRACE(l[i].run.mapping);
        EXPECT_EQ(w[i].run.status, l[i].run.status) << w[i].run.error << " / " << l[i].run.error;
        EXPECT_EQ(CountsText(w[i].run.counts), CountsText(l[i].run.counts));
        EXPECT_LE(w[i].run.counts.extracted, l[i].run.counts.extracted);
      }
      for (auto [lm, wm] : {std::pair{local.m, warehouse.m}, std::pair{local.m2, warehouse.m2}}) {
        std::vector<std::string> ls = lm->sent_keys, ws = wm->sent_keys;
        std::sort(ls.begin(), ls.end());
        std::sort(ws.begin(), ws.end());
        EXPECT_EQ(ws, ls);
        EXPECT_EQ(wm->records, lm->records);
      }
      if (round > 0 && round != rounds.full_resync_round) {
        // Only what changed was pulled (plus NULL and duplicated keys).
        EXPECT_LT(w[0].run.counts.extracted, l[0].run.counts.extracted);
      }
      f.ExpectAfterRound();
      if (!reject.empty() || l[0].run.status == RunStatus::kFailed) continue;
      ExpectDestinationsHoldTheModel(f, table, warehouse);
    }
    f.ExpectNothingLeftBehind();
  }
}

void ExpectFailedRecordRetriedNextRun(WarehouseModeFixture& f) {
  const std::string table = f.NewModelTable(0);
  for (int n = 0; n < 8; ++n) Insert(f, table, n, "free", 30);
  WarehouseModeHarness harness(f);
  Side side;
  harness.Setup(side, "w", "warehouse", table);
  const std::string rejected = f.KeyText(2);
  side.m->reject_keys = {rejected};
  auto first = harness.Sync(side, {}, {"m"});
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].run.status, RunStatus::kPartial);
  EXPECT_EQ(first[0].run.counts.failed, 1);
  EXPECT_EQ(side.m->records.count(rejected), 0u);

  side.m->reject_keys.clear();
  side.m->sent_keys.clear();
  auto second = harness.Sync(side, {}, {"m"});
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].run.status, RunStatus::kSucceeded) << second[0].run.error;
  EXPECT_EQ(second[0].run.counts.extracted, 1);  // only the failed record was pulled
  EXPECT_EQ(second[0].run.counts.added, 1);
  EXPECT_EQ(second[0].run.counts.unchanged, 7);
  EXPECT_EQ(side.m->sent_keys, std::vector<std::string>{rejected});
  EXPECT_EQ(side.m->records.size(), 8u);

  side.m->sent_keys.clear();
  auto third = harness.Sync(side, {}, {"m"});
  ASSERT_EQ(third.size(), 1u);
  EXPECT_EQ(third[0].run.counts.extracted, 0);
  EXPECT_EQ(third[0].run.counts.unchanged, 8);
  EXPECT_TRUE(side.m->sent_keys.empty());
}

void ExpectInterruptedCheckpointWriteResendsOnlyTheBatchInFlight(WarehouseModeFixture& f,
                                                                 const std::string& break_sql,
                                                                 const std::string& repair_sql,
                                                                 const std::string& count_sql) {
  const std::string table = f.NewModelTable(0);
  for (int n = 0; n < 10; ++n) Insert(f, table, n, "free", 30);
  WarehouseModeHarness harness(f);
  Side side;
  harness.Setup(side, "w", "warehouse", table);
  // The second batch reaches the destination, then the warehouse refuses the
  // checkpoint write that should follow it.
  side.m->on_batch = [&](int batches) {
    if (batches == 2) f.WarehouseExec(break_sql);
  };
  auto first = harness.Sync(side, {}, {"m"});
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].run.status, RunStatus::kFailed);
  EXPECT_NE(first[0].run.error.find("delivery stopped"), std::string::npos) << first[0].run.error;
  std::vector<std::string> sent_first = side.m->sent_keys;
  ASSERT_EQ(sent_first.size(), 6u);
  std::set<std::string> batch2(sent_first.begin() + 3, sent_first.end());

  side.m->on_batch = nullptr;
  f.WarehouseExec(repair_sql);
  side.m->sent_keys.clear();
  auto second = harness.Sync(side, {}, {"m"});
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].run.status, RunStatus::kSucceeded) << second[0].run.error;
  std::set<std::string> resent;
  for (const std::string& k : side.m->sent_keys) {
    if (std::find(sent_first.begin(), sent_first.end(), k) != sent_first.end()) resent.insert(k);
  }
  EXPECT_EQ(resent, batch2);  // the batch in flight, nothing else
  // As in local mode: records never checkpointed count as added, in flight or not.
  EXPECT_EQ(second[0].run.counts.added, 7);
  EXPECT_EQ(side.m->records.size(), 10u);
  auto count = f.WarehouseRows(count_sql);
  ASSERT_EQ(count.size(), 1u);
  EXPECT_EQ(count[0].at(0), "10");
}

}  // namespace backflow::warehouse_testing
