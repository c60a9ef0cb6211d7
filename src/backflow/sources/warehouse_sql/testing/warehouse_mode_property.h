// The engine with `change_detection: warehouse` against local mode, shared by
// every warehouse that supports it: the same model synced in local mode and
// in warehouse mode (two workspaces, each with its own state store and memory
// destinations) must produce the same change sets, round after round of
// random inserts, updates of mapped and unmapped columns (NULL and '' too),
// deletes, duplicate and NULL keys, rejected records and a full resync; and
// the destinations must hold the model. A warehouse's test implements
// WarehouseModeFixture over its fake or test server and calls the checks
// below from its own TEST_F (see snowflake_change_detection_test.cc,
// ../../../engine/warehouse_mode_test.cc).
//
// Test-only; single-threaded, like the tests that use it.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "backflow/catalog/definitions.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/testing/scratch_dir.h"

namespace backflow::warehouse_testing {

// What one warehouse supplies. The model table has the columns (id, email,
// plan, age, note) in that order: id the key (an integer, or text where
// KeyLiteral() says so), email, plan and note text, age an integer.
class WarehouseModeFixture {
 public:
  virtual ~WarehouseModeFixture() = default;

  // A short name for directories ("snowflake").
  virtual std::string WarehouseName() const = 0;
  virtual SourceDefinition WarehouseDefinition() const = 0;
  // The settings of the source (`type:` first), as YAML lines indented by
  // four spaces; the checkpoint lives in their `state_schema`.
  virtual std::string SourceYaml() const = 0;
  virtual ConnectorEnv WarehouseEnv() = 0;
  // A column's name as the model returns it (Snowflake: upper case).
  virtual std::string ColumnName(const std::string& name) const { return name; }

  // Makes an empty model table for `seed` (a new one, or the fixture's own
  // emptied) and drops what earlier seeds left in the state schema; returns
  // the table's name as the SQL of the model and of WarehouseExec names it.
  virtual std::string NewModelTable(int seed) = 0;
  // Runs `sql` on the warehouse (the fake's SQL for a fake); fails the test
  // when it fails.
  virtual void WarehouseExec(const std::string& sql) = 0;
  // The rows of `sql`, whose columns are named c0, c1, ... (at most ten), each
  // value as text (numbers in decimal; NULL as the fixture writes it).
  virtual std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) = 0;

  // Key number n (0, 1, ...): as an SQL literal, as the destination's record
  // key, and a predicate selecting the rows with exactly that key.
  virtual std::string KeyLiteral(int n) const { return std::to_string(n + 1); }
  virtual std::string KeyText(int n) const { return std::to_string(n + 1); }
  virtual std::string KeyIs(int n) const { return "id = " + KeyLiteral(n); }
  // SQL: the text `a` followed by the text `b`.
  virtual std::string Concat(const std::string& a, const std::string& b) const {
    return a + " || " + b;
  }
  // SQL deleting one row of one duplicated non-NULL key of `table`. The
  // default uses SQLite's rowid (the fakes).
  virtual std::string ResolveOneDuplicateSql(const std::string& table) const;

  // Checks, after a seed's rounds, that the passes left nothing behind in
  // the warehouse (pass-table warehouses: no PASS_ table in the schema).
  virtual void ExpectNothingLeftBehind() {}
  // Checks the warehouse's own state after each round's syncs (e.g. that
  // its checkpoint was compacted as it should be).
  virtual void ExpectAfterRound() {}
};

// How many rows and rounds the property test runs.
struct PropertyRounds {
  std::vector<int> seeds = {1, 2, 3};
  int initial_rows = 20;
  int rounds = 10;
  int full_resync_round = 7;
  // Rows deleted each round at the least (more at random).
  int min_deletes = 0;
  // Whether, at random, a deleted key comes back (a new row) in a round.
  bool deleted_keys_come_back = false;
};

// One workspace syncing the model "people" with two mappings: m (id, email,
// plan; all records; batches of 3) and m2 (id, age; added_or_updated) to two
// memory destinations ("memory" and "memory2").
struct Side {
  Registry registry;
  std::shared_ptr<testing::MemoryDestinationState> m =
      std::make_shared<testing::MemoryDestinationState>();
  std::shared_ptr<testing::MemoryDestinationState> m2 =
      std::make_shared<testing::MemoryDestinationState>();
  Workspace workspace;
  std::unique_ptr<StateStore> state;
  std::filesystem::path dir;
};

// Workspaces over a fixture's warehouse, in a scratch folder of the current
// test (removed by the destructor unless the test failed; see ScratchDir).
class WarehouseModeHarness {
 public:
  explicit WarehouseModeHarness(WarehouseModeFixture& fixture);
  ~WarehouseModeHarness();
  WarehouseModeHarness(const WarehouseModeHarness&) = delete;
  WarehouseModeHarness& operator=(const WarehouseModeHarness&) = delete;

  // Loads the workspace of `side` (in directory `name`) over `table` with
  // `change_detection: mode`; `m_extra` is appended to mapping m's YAML.
  void Setup(Side& side, const std::string& name, const std::string& mode, const std::string& table,
             const std::string& m_extra = "");
  std::vector<MappingRunResult> Sync(Side& side, SyncOptions options = {},
                                     const std::vector<std::string>& mappings = {"m", "m2"});

 private:
  WarehouseModeFixture& fixture_;
  testing::ScratchDir scratch_;
  const std::filesystem::path dir_ = scratch_.path();
};

// The counts of a run as one line, for comparisons with a readable diff.
std::string CountsText(const RunCounts& c);

// The property: warehouse mode makes the change sets of local mode and
// extracts fewer rows (except on a full resync).
void ExpectSameChangeSetsAsLocalMode(WarehouseModeFixture& fixture, const PropertyRounds& rounds);

// A record the destination rejected is the only one pulled next run, and is
// settled after it.
void ExpectFailedRecordRetriedNextRun(WarehouseModeFixture& fixture);

// A checkpoint write refused after a batch was delivered (`break_sql` runs
// after the second batch, `repair_sql` before the next run): the next run
// resends that batch and nothing else that was delivered. `count_sql`
// counts mapping m's stored entries (as c0).
void ExpectInterruptedCheckpointWriteResendsOnlyTheBatchInFlight(WarehouseModeFixture& fixture,
                                                                 const std::string& break_sql,
                                                                 const std::string& repair_sql,
                                                                 const std::string& count_sql);

}  // namespace backflow::warehouse_testing
