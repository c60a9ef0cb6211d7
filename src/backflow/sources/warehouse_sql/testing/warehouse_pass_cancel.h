// A pass-table warehouse's pass stopped by its run's cancel flag
// (WarehousePassOptions::cancel), checked the same way for every warehouse
// against its fake: a cancel while the pass's copy of the model runs (Begin)
// or while its candidate keys are chosen (ReadCandidates) returns kCancelled
// promptly, the warehouse saw that statement cancelled, the pass tables and
// their PASS_TABLES row are gone once the snapshot is closed (Close runs
// without the flag), and the next pass works.
//
// A warehouse's fixture derives from WarehousePassCancelTest, makes its fake
// and the customers table as for WarehouseSnapshotTest (its clock
// cancel_clock_ where the source polls), implements the hooks, and calls the
// Expect* checks from its TEST_Fs. Header-only, test-only.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/sources/source.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "nlohmann/json.hpp"

namespace backflow::warehouse_testing {

// A FakeClock that sets `flag` during a sleep (a poll's wait) once `when`
// holds, as a run's cancel from another thread would.
class CancelWhenClock : public FakeClock {
 public:
  explicit CancelWhenClock(std::atomic<bool>* flag) : flag_(flag) {}
  void SleepFor(Duration d) override {
    FakeClock::SleepFor(d);
    if (when && when()) flag_->store(true);
  }
  // Read by the thread that sleeps; set only while no pass runs.
  std::function<bool()> when;

 private:
  std::atomic<bool>* flag_;
};

// Over a fake's request log (requests with `method`, a JSON `body` and a
// JSON `reply`, as the BigQuery and Databricks fakes keep): the SQL of each
// request of `method` (its body's `sql_field`) with the reply to it, in order.
template <typename Request>
std::vector<std::pair<std::string, nlohmann::json>> SqlSent(const std::vector<Request>& requests,
                                                            const std::string& method,
                                                            const std::string& sql_field) {
  std::vector<std::pair<std::string, nlohmann::json>> sent;
  for (const Request& r : requests) {
    if (r.method != method) continue;
    sent.emplace_back(nlohmann::json::parse(r.body).value(sql_field, ""),
                      nlohmann::json::parse(r.reply, nullptr, false));
  }
  return sent;
}

class WarehousePassCancelTest : public WarehouseSnapshotTest {
 protected:
  // --- What the warehouse's fixture supplies ---
  // Sets cancel_ while the next statement whose SQL contains `part` runs in
  // the warehouse (and, where the fake holds statements, holds it running).
  virtual void CancelDuring(const std::string& part) = 0;
  // Undoes CancelDuring.
  virtual void StopCancelling() = 0;
  // How many statements the warehouse saw cancelled (or killed) while they
  // ran; the fixture checks its fake's record of each as it can.
  virtual int64_t StatementsCancelled() = 0;
  // Text only the pass's copy of the model (Begin) and only its statement
  // that fills the keys table (ReadCandidates: CREATE TABLE .._K AS, or the
  // INSERT INTO .._K (record_key) of a dialect without bindings in CREATE
  // TABLE AS) contain.
  virtual std::string CopyPart() const { return "AS\nSELECT m.*"; }
  virtual std::string KeysPart() const { return "_K AS\n"; }

  // The rows the fixture's SetUp put in customers_.
  int rows_ = 0;
  std::atomic<bool> cancel_{false};
  // The clock of the fake and the source where they poll.
  CancelWhenClock cancel_clock_{&cancel_};
  // What a step cancelled may take at most (the fakes answer at once).
  std::chrono::seconds prompt_{20};

  // Puts five rows (k1..k5, 'free', age 1..5, seen NULL) in the customers
  // table the fixture made, `table` as WarehouseExec's SQL names it, and sets
  // rows_, customers_, the model sql_ (over `model_table`, as the source
  // names it) and key_.
  void AddCustomers(const std::string& table, const std::string& model_table) {
    rows_ = 5;
    for (int i = 1; i <= rows_; ++i) {
      Exec(fmt::format("INSERT INTO {} VALUES ('k{}', 'free', {}, NULL)", table, i, i));
    }
    customers_ = table;
    sql_ = "SELECT id, plan, age, seen FROM " + model_table;
    key_ = "id";
  }

  int64_t Registered() {
    auto rows = WarehouseRows("SELECT count(*) AS c0 FROM bf_state.pass_tables");
    return rows.size() == 1 ? std::stoll(rows[0].at(0)) : -1;
  }

  // A whole pass without cancel: every row is a candidate of a new mapping,
  // and Close leaves only the managed tables.
  void ExpectNextPassWorks(WarehouseChangeDetection& cd) {
    cancel_ = false;
    int rows = 0;
    auto snapshot =
        PassReadingCandidates(cd, sql_, key_, Filter({{"next", Fp(7)}}), &cancel_, rows);
    ASSERT_NE(snapshot, nullptr);
    EXPECT_EQ(rows, rows_);
    auto count = snapshot->CountEntries("next");
    ASSERT_TRUE(count.ok()) << count.status();
    EXPECT_EQ(*count, 0);
    ASSERT_TRUE(snapshot->Close().ok());
    EXPECT_THAT(Tables(), ::testing::ElementsAre("CHECKPOINTS", "PASS_TABLES"));
    EXPECT_EQ(Registered(), 0);
  }

  // Cancelled while Begin copies the model: kCancelled, that statement
  // cancelled in the warehouse, nothing left, the next pass works.
  void ExpectCancelDuringBegin(Source& source) {
    WarehouseChangeDetection* cd = source.warehouse_change_detection();
    ASSERT_NE(cd, nullptr);
    const int64_t cancelled = StatementsCancelled();
    CancelDuring(CopyPart());
    const auto start = std::chrono::steady_clock::now();
    auto snapshot = cd->Begin(sql_, key_, WarehousePassOptions{&cancel_});
    const auto elapsed = std::chrono::steady_clock::now() - start;
    StopCancelling();
    ASSERT_EQ(snapshot.status().code(), absl::StatusCode::kCancelled) << snapshot.status();
    EXPECT_LT(elapsed, prompt_);
    EXPECT_TRUE(cancel_.load());
    EXPECT_EQ(StatementsCancelled(), cancelled + 1);
    // A pass cancelled in Begin leaves nothing behind.
    EXPECT_THAT(Tables(), ::testing::ElementsAre("CHECKPOINTS", "PASS_TABLES"));
    EXPECT_EQ(Registered(), 0);
    ExpectNextPassWorks(*cd);
  }

  // Cancelled while ReadCandidates chooses the keys: kCancelled, that
  // statement cancelled in the warehouse, the snapshot's later steps
  // cancelled without a statement, Close drops the pass, the next pass works.
  void ExpectCancelDuringReadCandidates(Source& source) {
    WarehouseChangeDetection* cd = source.warehouse_change_detection();
    ASSERT_NE(cd, nullptr);
    auto snapshot = cd->Begin(sql_, key_, WarehousePassOptions{&cancel_});
    ASSERT_TRUE(snapshot.ok()) << snapshot.status();
    EXPECT_EQ(Tables().size(), 3u);  // CHECKPOINTS, PASS_TABLES, PASS_x
    EXPECT_EQ(Registered(), 1);
    const int64_t cancelled = StatementsCancelled();
    CancelDuring(KeysPart());
    const auto start = std::chrono::steady_clock::now();
    auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
    const auto elapsed = std::chrono::steady_clock::now() - start;
    StopCancelling();
    ASSERT_EQ(reader.status().code(), absl::StatusCode::kCancelled) << reader.status();
    EXPECT_LT(elapsed, prompt_);
    EXPECT_EQ(StatementsCancelled(), cancelled + 1);
    EXPECT_EQ((*snapshot)->ScanEntries("m").status().code(), absl::StatusCode::kCancelled);
    EXPECT_EQ((*snapshot)->CountEntries("m").status().code(), absl::StatusCode::kCancelled);
    EXPECT_EQ(StatementsCancelled(), cancelled + 1);
    ASSERT_TRUE((*snapshot)->Close().ok());
    EXPECT_THAT(Tables(), ::testing::ElementsAre("CHECKPOINTS", "PASS_TABLES"));
    EXPECT_EQ(Registered(), 0);
    ExpectNextPassWorks(*cd);
  }
};

}  // namespace backflow::warehouse_testing
