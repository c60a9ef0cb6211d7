// The steps of a pass-table warehouse's change detection (see
// ../pass_change_detection.h), checked the same way for every warehouse
// against its SQLite-backed fake: which rows are candidates (new, changed,
// NULL, duplicated, in-flight keys; all_rows; another mapping version; a
// second mapping), which stored entries come back and in byte order, the last
// write of a key winning, key types refused, and pass tables dropped on
// Close, on failure and when stale.
//
// A warehouse's test fixture derives from WarehouseSnapshotTest, makes its
// fake in SetUp (a `customers` table of columns id (text), plan (text), age
// (integer), seen (timestamp); a source whose state_schema is `bf_state`),
// implements the three hooks, and calls the Expect* checks from its own
// TEST_Fs, adding what only its wire shows. A fixture with another gtest
// base (a real server's, e.g. PostgreSQL or MariaDB) mixes in
// WarehouseSnapshotChecks instead and uses RunPass/Deliver/Filter/Keys over
// its own model (model_columns_, sql_suffix_, ExpectRowHash). Test-only.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/sources/source.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_mode_property.h"
#include "nlohmann/json.hpp"

namespace backflow::warehouse_testing {

// The fingerprint the checks store for a key of `n` bytes.
Fingerprint Fp(uint64_t n);

// A JSON value of a fake's answer as text (a string as is, else its JSON).
std::string JsonText(const nlohmann::json& value);
// A fake's rows (arrays of values, or objects whose items iterate in name
// order: c0, c1, ...) as text (JsonText).
std::vector<std::vector<std::string>> TextRows(const nlohmann::json& rows);

// Begins a pass of `sql` (unique identifier `key`) and reads every candidate
// `filter` selects into `candidates`; the snapshot stays open for the
// caller's checks. A failed step fails the test and returns nullptr.
std::unique_ptr<WarehouseSnapshot> PassReadingCandidates(
    WarehouseChangeDetection& cd, const std::string& sql, const std::string& key,
    const WarehouseCandidateFilter& filter, const std::atomic<bool>* cancel, int& candidates);
std::vector<std::vector<std::string>> TextRows(
    const std::vector<std::vector<nlohmann::json>>& rows);
// Rows a fake answers as text already, as they are.
std::vector<std::vector<std::string>> TextRows(const std::vector<std::vector<std::string>>& rows);

// One pass of `sql` keyed by `key`, closed at its end: `on_candidate` sees
// each candidate `filter` selects; returns the entries stored for `mapping`
// in the order ScanEntries gave them, and CountEntries (-1 when it failed).
// A failed step fails the test (and ends the pass without Close).
// The write Deliver() makes for `key`: fingerprint Fp(key size), identity
// "id:<key>".
WarehouseCheckpointWrite DeliveredWrite(const std::string& key, const std::string& hash,
                                        const Fingerprint& version);

struct StoredEntries {
  std::vector<WarehouseCheckpointEntry> entries;
  int64_t count = -1;
};
StoredEntries PassOver(WarehouseChangeDetection& cd, const std::string& sql, const std::string& key,
                       const WarehouseCandidateFilter& filter, const std::string& mapping,
                       const std::function<void(const Row&)>& on_candidate);

// The hooks, helpers and checks, without a gtest base (see above).
class WarehouseSnapshotChecks {
 public:
  virtual ~WarehouseSnapshotChecks() = default;

 protected:
  // --- What the warehouse's fixture supplies ---
  // A source over the fake, with state_schema bf_state.
  virtual std::unique_ptr<Source> MakeSource() = 0;
  // Runs `sql` (SQLite, as the fake runs it); fails the test when it fails.
  virtual void WarehouseExec(const std::string& sql) = 0;
  // The rows of `sql` (SQLite, columns named c0, c1, ...) as text (JsonText).
  virtual std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) = 0;
  // What the hooks do with a fake's answers: the source made, or nullptr and
  // a failure; a failed statement fails the test (fatally, naming `sql`);
  // rows as text (TextRows), or none and a failure.
  static std::unique_ptr<Source> SourceOrFail(absl::StatusOr<std::unique_ptr<Source>> source);
  static void ExpectRan(const absl::Status& status, const std::string& sql);
  template <typename Rows>
  static std::vector<std::vector<std::string>> TextRowsOf(const absl::StatusOr<Rows>& rows,
                                                          const std::string& sql) {
    EXPECT_TRUE(rows.ok()) << rows.status() << "\n" << sql;
    return rows.ok() ? TextRows(*rows) : std::vector<std::vector<std::string>>{};
  }
  // Extra checks of the candidate reader's schema (model columns, then the hash).
  virtual void ExpectCandidateSchema(const Schema& schema) { (void)schema; }
  // Checks a candidate's row hash as text (default: 32 lower-case hex digits).
  virtual void ExpectRowHash(const std::string& hash);

  // Set by the fixture's SetUp.
  std::string customers_;  // the customers table, as WarehouseExec's SQL names it
  std::string sql_;        // the model: SELECT id, plan, age, seen FROM <customers>
  std::string key_;        // the key column as the model names it ("id", "ID")
  std::string seen_text_;  // Value::ToString() of seen = '2024-01-01 00:00:00'
  // What RunPass expects and sends: the model's columns (the key first, an
  // integer third, a timestamp fourth if any), and what follows sql_ in Begin.
  size_t model_columns_ = 4;
  std::string sql_suffix_ = ";\n";
  // Whether RunPass checks each stored entry as Deliver() writes it (identity
  // "id:<key>", fingerprint Fp(key size)); off for tests writing other ones.
  bool entries_as_delivered_ = true;

  void Exec(const std::string& sql) { WarehouseExec(sql); }
  // The tables of bf_state, by name.
  std::vector<std::string> Tables();

  struct Pass {
    // key (or "<null>#n") -> the other model columns joined by "|" ("plan|age|seen")
    std::map<std::string, std::string> rows;
    std::map<std::string, std::string> hashes;
    std::map<std::string, std::vector<std::string>> entries;            // mapping -> keys in order
    std::map<std::string, std::vector<WarehouseCheckpointEntry>> full;  // mapping -> entries
    std::map<std::string, int64_t> counts;
    int duplicates = 0;
  };
  // One pass over sql_ with `filter`: the candidates, then each mapping's
  // entries and count.
  Pass RunPass(WarehouseChangeDetection& cd, const WarehouseCandidateFilter& filter);
  // Stores for `mapping` the candidates of `pass` (except NULL keys and `skip`).
  void Deliver(WarehouseChangeDetection& cd, const std::string& mapping, const Fingerprint& version,
               const Pass& pass, const std::set<std::string>& skip = {});
  static WarehouseCandidateFilter Filter(std::vector<std::pair<std::string, Fingerprint>> mappings);
  static std::set<std::string> Keys(const Pass& pass);

  // --- The shared checks ---
  // The candidates and entries of six rows (incl. a NULL, a non-ASCII key and
  // keys whose case order differs from byte order) over passes: first,
  // unchanged, updated / inserted / deleted / duplicated, in-flight keys,
  // all_rows, another version, a second mapping.
  void ExpectCandidatesAndEntries(Source& source);
  // Rows a and b delivered as `first`, the writes of LastWriteWins() applied:
  // a is a candidate again.
  static std::vector<WarehouseCheckpointWrite> LastWriteWins(const Pass& first);
  // The stored entries (record_key, fingerprint, record_identity,
  // mapping_version) of mapping m once LastWriteWins() is applied: b's last
  // write (`more`: further rows after it).
  void ExpectStoredAfterLastWriteWins(const std::vector<std::vector<std::string>>& more = {});
  // `other` delivered to mapping n; a write to m leaves n's `count` entries.
  void ExpectOtherMappingUntouched(WarehouseChangeDetection& cd, const Pass& first, int64_t count);
  // A pass keyed by `key` over `sql` refuses the key with kFailedPrecondition
  // naming `advice`; returns the message.
  std::string ExpectKeyRefused(Source& source, const std::string& sql, const std::string& key,
                               const std::string& advice);
  // The first candidate of a pass keyed by `key` over `sql`, and the reader's
  // schema.
  std::pair<Schema, Row> FirstCandidate(Source& source, const std::string& sql,
                                        const std::string& key);
  // Pass tables go when a snapshot is dropped without Close, when Begin fails
  // (`failing_sql` fails while the pass table is made), and when stale (a
  // day). Returns the message of the failed Begin.
  std::string ExpectPassTablesGoOnCloseOnFailureAndWhenStale(Source& source,
                                                             const std::string& failing_sql);
  // No pass table is left in `schema`.
  void ExpectNoPassTablesLeft(const std::string& schema);

  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
};

class WarehouseSnapshotTest : public ::testing::Test, public WarehouseSnapshotChecks {};

// The property test of warehouse_mode_property.h over a fixture `Base`
// (derived from WarehouseSnapshotTest): the fake, its clock and HTTP client;
// the workspaces' state schema is wm_state, checked for pass tables left.
template <typename Base>
class PassTableWarehouseModeTest : public Base, public WarehouseModeFixture {
 protected:
  ConnectorEnv WarehouseEnv() override { return ConnectorEnv{this->http_.get(), &this->clock_}; }
  void WarehouseExec(const std::string& sql) override { Base::WarehouseExec(sql); }
  std::vector<std::vector<std::string>> WarehouseRows(const std::string& sql) override {
    return Base::WarehouseRows(sql);
  }
  void ExpectNothingLeftBehind() override { this->ExpectNoPassTablesLeft("wm_state"); }
};

}  // namespace backflow::warehouse_testing
