#include "backflow/engine/spool.h"

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "backflow/testing/scratch_dir.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

// A spool whose row log holds rows of assorted sizes (one larger than a
// RowReader window), each filled with bytes that name it.
class SpoolRowsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto spool = Spool::Create(scratch_.string());
    ASSERT_TRUE(spool.ok()) << spool.status();
    spool_ = *std::move(spool);
    std::mt19937 rng(11);
    for (int i = 0; i < kRows; ++i) {
      size_t size = i == kRows / 2 ? Spool::RowReader::kWindowBytes * 3 + 5 : 20 + rng() % 300;
      std::string row(size, static_cast<char>('a' + i % 26));
      row.replace(0, std::min(size, std::to_string(i).size()), std::to_string(i));
      auto ref = spool_->AppendRow(row);
      ASSERT_TRUE(ref.ok()) << ref.status();
      refs_.push_back(*ref);
      rows_.push_back(std::move(row));
    }
    ASSERT_TRUE(spool_->FinishLoad().ok());
  }

  // Reads rows `order` through `reader`, checking each against what was
  // appended and against ReadRow().
  void ReadInOrder(Spool::RowReader& reader, const std::vector<int>& order) {
    std::string got, direct;
    for (int i : order) {
      ASSERT_TRUE(reader.Read(refs_[i], got).ok()) << i;
      ASSERT_EQ(got, rows_[i]) << "row " << i;
      ASSERT_TRUE(spool_->ReadRow(refs_[i], direct).ok());
      ASSERT_EQ(direct, rows_[i]);
    }
  }

  static constexpr int kRows = 5000;
  testing::ScratchDir scratch_{"spool-rows"};
  std::unique_ptr<Spool> spool_;
  std::vector<RowRef> refs_;
  std::vector<std::string> rows_;
};

TEST_F(SpoolRowsTest, RowsReadInLogOrderCostOneReadPerWindow) {
  std::vector<int> order(kRows);
  for (int i = 0; i < kRows; ++i) order[i] = i;
  Spool::RowReader reader(*spool_);
  ReadInOrder(reader, order);
  const uint64_t log_bytes = refs_.back().offset + refs_.back().size;
  // One window per kWindowBytes of log, give or take the large row and the
  // first read (a row alone).
  EXPECT_LE(reader.reads(), static_cast<int64_t>(log_bytes / Spool::RowReader::kWindowBytes) + 4);
  // Every other row, then every tenth: still in log order, still windowed.
  Spool::RowReader skipping(*spool_);
  std::vector<int> sparse;
  for (int i = 0; i < kRows; i += 10) sparse.push_back(i);
  ReadInOrder(skipping, sparse);
  EXPECT_LE(skipping.reads(), static_cast<int64_t>(log_bytes / Spool::RowReader::kWindowBytes) + 4);
}

TEST_F(SpoolRowsTest, InterleavedSequencesEachKeepAWindow) {
  // Three runs through the log at once (as keys in byte order interleave
  // decimal ids of different lengths): one read per window of each.
  std::vector<int> order;
  for (int i = 0; i < kRows / 3; ++i) {
    order.push_back(i);
    order.push_back(kRows / 3 + i);
    order.push_back(2 * (kRows / 3) + i);
  }
  Spool::RowReader reader(*spool_);
  ReadInOrder(reader, order);
  const uint64_t log_bytes = refs_.back().offset + refs_.back().size;
  EXPECT_LE(reader.reads(),
            static_cast<int64_t>(log_bytes / Spool::RowReader::kWindowBytes) + 3 * 4);
}

TEST_F(SpoolRowsTest, RowsReadAtRandomOrBackwardsAreEachReadAlone) {
  std::vector<int> order(kRows);
  for (int i = 0; i < kRows; ++i) order[i] = kRows - 1 - i;
  Spool::RowReader backwards(*spool_);
  ReadInOrder(backwards, order);
  // Backwards, no row starts past a window: each row is a read of its own
  // (a row inside the window of the row after it cannot be: windows start at
  // their row).
  EXPECT_EQ(backwards.reads(), kRows);
  std::shuffle(order.begin(), order.end(), std::mt19937(5));
  Spool::RowReader random(*spool_);
  ReadInOrder(random, order);
  EXPECT_LE(random.reads(), kRows);
  // A row read again soon after is in a window still.
  Spool::RowReader again(*spool_);
  ReadInOrder(again, {7, 7, 7, 4000, 7});
  EXPECT_EQ(again.reads(), 2);
}

TEST_F(SpoolRowsTest, AReferencePastTheRowLogIsDataLossAndTheReaderGoesOn) {
  Spool::RowReader reader(*spool_);
  std::string got;
  const RowRef& last = refs_.back();
  absl::Status past = reader.Read(RowRef{last.offset, last.size + 1}, got);
  EXPECT_EQ(past.code(), absl::StatusCode::kDataLoss) << past;
  EXPECT_NE(std::string(past.message()).find("past the row log"), std::string::npos) << past;
  EXPECT_EQ(spool_->ReadRow(RowRef{uint64_t{1} << 40, 1}, got).code(), absl::StatusCode::kDataLoss);
  ReadInOrder(reader, {kRows - 1, 0, 1, kRows / 2, kRows / 2 + 1});
}

TEST(SpoolTest, TheRowLogIsKeptForTheNextSpoolButChangeSetsAreNot) {
  testing::ScratchDir dir("spool-keep");
  auto kept = [&] {
    int n = 0;
    std::error_code ec;
    for (const auto& f : std::filesystem::directory_iterator(dir.string() + "/recycled", ec)) {
      n += f.is_regular_file() ? 1 : 0;
    }
    return n;
  };
  for (int round = 0; round < 2; ++round) {
    auto spool = Spool::Create(dir.string());
    ASSERT_TRUE(spool.ok()) << spool.status();
    ASSERT_TRUE((*spool)->AppendRow("row").ok());
    ASSERT_TRUE((*spool)->FinishLoad().ok());
    for (int mapping : {0, 1}) {
      ASSERT_TRUE((*spool)->AddChange(mapping, 0, "k", Fingerprint{}, "payload").ok());
    }
    ASSERT_TRUE((*spool)->FinishChanges().ok());
    // The second round's row log took the file the first one kept.
    EXPECT_EQ(kept(), 0) << "round " << round;
    auto reader = (*spool)->ScanChanges(1);
    ASSERT_TRUE(reader.ok()) << reader.status();
    std::string_view key, payload;
    int change = -1;
    Fingerprint fp;
    auto more = reader->Next(key, change, fp, payload);
    ASSERT_TRUE(more.ok() && *more);
    EXPECT_EQ(payload, "payload");
    spool->reset();
    // Change sets hold payloads, which may carry values taken from secrets.
    EXPECT_EQ(kept(), 1) << "the row log only";
  }
}

}  // namespace
}  // namespace backflow
