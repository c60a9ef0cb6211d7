#include "backflow/storage/external_sorter.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <set>

#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

class ExternalSorterTest : public ::testing::Test {
 protected:
  static std::vector<std::pair<std::string, std::string>> Drain(const ExternalSorter& sorter) {
    auto stream = sorter.Open();
    EXPECT_TRUE(stream.ok()) << stream.status();
    std::vector<std::pair<std::string, std::string>> out;
    std::string_view k, v;
    while (true) {
      auto more = (*stream)->Next(k, v);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      out.emplace_back(std::string(k), std::string(v));
    }
    return out;
  }

  size_t FilesInDir() const {
    return static_cast<size_t>(std::distance(fs::directory_iterator(dir_), {}));
  }

  testing::ScratchDir scratch_{"backflow-sorter"};
  const std::string dir_ = scratch_.string();
};

// Random keys with duplicates, shared prefixes longer than 8 bytes, embedded
// NUL and high bytes; the expected order is std::stable_sort by key.
std::vector<std::pair<std::string, std::string>> RandomRecords(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::pair<std::string, std::string>> records;
  const std::string prefixes[] = {"", "customer-000", std::string("\0\0", 2), "\xff\xfe"};
  for (int i = 0; i < n; ++i) {
    std::string key = prefixes[rng() % 4];
    int len = static_cast<int>(rng() % 12);
    for (int j = 0; j < len; ++j) key.push_back(static_cast<char>(rng() % 4 == 0 ? 0 : rng()));
    if (rng() % 10 == 0 && !records.empty()) key = records[rng() % records.size()].first;
    records.emplace_back(key, "v" + std::to_string(i));
  }
  return records;
}

TEST_F(ExternalSorterTest, SortsInMemoryAndKeepsInsertionOrderOfEqualKeys) {
  auto records = RandomRecords(5000, 1);
  ExternalSorter sorter(dir_, "t");
  for (const auto& [k, v] : records) ASSERT_TRUE(sorter.Add(k, v).ok());
  ASSERT_TRUE(sorter.Finish().ok());
  EXPECT_EQ(sorter.spilled_runs(), 0);
  std::stable_sort(records.begin(), records.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  EXPECT_EQ(Drain(sorter), records);
  EXPECT_EQ(Drain(sorter), records) << "a second stream sees the same records";
}

// Decimal ids in numeric order (their byte order interleaves: 1, 10, 100, ...),
// some repeated, and keys that differ only after their first 8 bytes or by
// trailing NULs: sorted by bytes, equal keys in insertion order.
TEST_F(ExternalSorterTest, SortsPatternedKeysByBytes) {
  std::vector<std::pair<std::string, std::string>> records;
  for (int i = 1; i <= 200'000; ++i) {
    records.emplace_back(std::to_string(i), "v" + std::to_string(i));
    if (i % 997 == 0) records.emplace_back(std::to_string(i / 2), "dup" + std::to_string(i));
  }
  for (const char* k : {"a", "abcdefgh", "abcdefgh1", "abcdefgh0"}) records.emplace_back(k, k);
  records.emplace_back(std::string("a\0", 2), "a-nul");
  records.emplace_back(std::string("abcdefgh\0", 9), "nul9");
  ExternalSorter sorter(dir_, "t");
  for (const auto& [k, v] : records) ASSERT_TRUE(sorter.Add(k, v).ok());
  ASSERT_TRUE(sorter.Finish().ok());
  std::stable_sort(records.begin(), records.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  EXPECT_EQ(Drain(sorter), records);
}

// In the foreground and on the helper thread (background_spill).
TEST_F(ExternalSorterTest, SpillsMergesAndCleansUp) {
  for (bool background : {false, true}) {
    for (int max_runs : {64, 3}) {
      SCOPED_TRACE(::testing::Message()
                   << "background " << background << ", max_runs " << max_runs);
      auto records = RandomRecords(40'000, 2 + max_runs);
      ExternalSorter::Options o;
      o.memory_budget = 64 * 1024;  // many spills
      o.max_runs = max_runs;        // 3: runs merged into one while adding
      o.background_spill = background;
      {
        ExternalSorter sorter(dir_, "t", o);
        for (const auto& [k, v] : records) ASSERT_TRUE(sorter.Add(k, v).ok());
        ASSERT_TRUE(sorter.Finish().ok());
        EXPECT_GT(sorter.spilled_runs(), 0);
        EXPECT_LT(sorter.spilled_runs(), max_runs);
        EXPECT_EQ(sorter.records(), 40'000);
        std::stable_sort(records.begin(), records.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
        EXPECT_EQ(Drain(sorter), records);
        EXPECT_GT(FilesInDir(), 0u);
      }
      EXPECT_EQ(FilesInDir(), 0u) << "run files are removed with the sorter";
    }
  }
}

// A sorter destroyed while its helper thread writes a run (an extraction that
// failed or was cancelled) waits for it and removes every run file.
TEST_F(ExternalSorterTest, DestroyedWhileSpillingCleansUp) {
  for (int records : {1, 3'000, 20'000}) {
    {
      ExternalSorter::Options o;
      o.memory_budget = 32 * 1024;
      o.background_spill = true;
      ExternalSorter sorter(dir_, "t", o);
      for (const auto& [k, v] : RandomRecords(records, 7)) ASSERT_TRUE(sorter.Add(k, v).ok());
    }
    EXPECT_EQ(FilesInDir(), 0u) << records << " records";
  }
}

// The merge for every number of runs from 1 to 17 (the tournament is padded
// to a power of two), with keys repeated across runs, empty keys and keys
// that share their first 8 bytes: byte order, equal keys in insertion order.
// A spill that cannot be written (here: files limited to 64 KiB) fails the
// sort with the write error, in the foreground or from the helper thread (at
// the next spill or at Finish), and the sorter still removes its files.
TEST_F(ExternalSorterTest, FailedSpillIsReported) {
  struct rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous = signal(SIGXFSZ, SIG_IGN);  // write() then fails with EFBIG
  for (bool background : {false, true}) {
    {
      ExternalSorter::Options o;
      o.memory_budget = 1 << 20;
      o.compression_level = 0;
      o.background_spill = background;
      ExternalSorter sorter(dir_, "t", o);
      struct rlimit small = saved;
      small.rlim_cur = 64 * 1024;
      ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
      absl::Status status;
      for (int i = 0; i < 200'000 && status.ok(); ++i) {
        status = sorter.Add(std::to_string(i * 7919 % 200'000), std::string(40, 'x'));
      }
      if (status.ok()) status = sorter.Finish();
      ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &saved), 0);
      EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
      EXPECT_NE(status.message().find("cannot write"), std::string::npos) << status;
    }
    EXPECT_EQ(FilesInDir(), 0u) << "background " << background;
  }
  signal(SIGXFSZ, previous);
}

TEST_F(ExternalSorterTest, MergesAnyNumberOfRuns) {
  std::set<int> seen;
  for (bool background : {false, true}) {
    for (int runs = 1; runs <= 17; ++runs) {
      auto records = RandomRecords(300 * runs, 100 + runs);
      ExternalSorter::Options o;
      o.memory_budget = background ? 32 * 1024 : 16 * 1024;  // the same buffer size
      o.compression_level = 0;
      o.background_spill = background;
      ExternalSorter sorter(dir_, "t", o);
      for (const auto& [k, v] : records) ASSERT_TRUE(sorter.Add(k, v).ok());
      ASSERT_TRUE(sorter.Finish().ok());
      seen.insert(sorter.spilled_runs());
      std::stable_sort(records.begin(), records.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      EXPECT_EQ(Drain(sorter), records)
          << sorter.spilled_runs() << " runs, background " << background;
    }
  }
  EXPECT_GE(seen.size(), 10u) << "the record counts give many different run counts";
  EXPECT_TRUE(seen.count(2) || seen.count(3)) << "small merges";
}

// Records added in about their key order (a table read in its physical
// order): runs of disjoint key ranges, where one run wins many times in a row,
// with keys from earlier runs repeated in later ones (equal keys in insertion
// order) and a tail of keys anywhere (updated rows at the table's end).
TEST_F(ExternalSorterTest, MergesRunsThatFollowOneAnother) {
  std::mt19937 rng(7);
  std::vector<std::pair<std::string, std::string>> records;
  auto id = [](int i) { return fmt::format("{:012d}", i); };
  for (int i = 0; i < 30'000; ++i) {
    records.emplace_back(id(i * 2), "v" + std::to_string(i));
    if (i % 50 == 49) records.emplace_back(id(static_cast<int>(rng() % (2 * i))), "again");
  }
  for (int i = 0; i < 500; ++i) {
    records.emplace_back(id(static_cast<int>(rng() % 60'000)), "tail" + std::to_string(i));
  }
  for (bool background : {false, true}) {
    ExternalSorter::Options o;
    o.memory_budget = 64 * 1024;
    o.background_spill = background;
    ExternalSorter sorter(dir_, "t", o);
    for (const auto& [k, v] : records) ASSERT_TRUE(sorter.Add(k, v).ok());
    ASSERT_TRUE(sorter.Finish().ok());
    EXPECT_GT(sorter.spilled_runs(), 8);
    auto expected = records;
    std::stable_sort(expected.begin(), expected.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    EXPECT_EQ(Drain(sorter), expected) << "background " << background;
  }
}

TEST_F(ExternalSorterTest, DamagedSpillIsDataLoss) {
  ExternalSorter::Options o;
  o.memory_budget = 16 * 1024;
  ExternalSorter sorter(dir_, "t", o);
  for (int i = 0; i < 5000; ++i) {
    ASSERT_TRUE(sorter.Add(std::to_string(i * 7919 % 5000), std::string(20, 'x')).ok());
  }
  ASSERT_TRUE(sorter.Finish().ok());
  ASSERT_GT(sorter.spilled_runs(), 0);
  for (const auto& entry : fs::directory_iterator(dir_)) {
    fs::resize_file(entry.path(), fs::file_size(entry.path()) / 2);
  }
  auto stream = sorter.Open();
  absl::Status status = stream.status();
  std::string_view k, v;
  while (status.ok()) {
    auto more = (*stream)->Next(k, v);
    if (!more.ok()) {
      status = more.status();
    } else if (!*more) {
      break;
    }
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
}

TEST_F(ExternalSorterTest, AddAfterFinishIsRefused) {
  ExternalSorter sorter(dir_, "t");
  ASSERT_TRUE(sorter.Finish().ok());
  EXPECT_FALSE(sorter.Add("a", "b").ok());
  EXPECT_TRUE(Drain(sorter).empty());
}

}  // namespace
}  // namespace backflow
