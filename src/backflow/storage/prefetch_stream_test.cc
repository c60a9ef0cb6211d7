#include "backflow/storage/prefetch_stream.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backflow/testing/scratch_dir.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using Records = std::vector<std::pair<std::string, std::string>>;

// The records of a vector, then optionally an error; counts its destruction.
class VectorStream : public SortedStream {
 public:
  VectorStream(Records records, std::optional<absl::Status> error = std::nullopt,
               std::atomic<int>* destroyed = nullptr)
      : records_(std::move(records)), error_(std::move(error)), destroyed_(destroyed) {}
  ~VectorStream() override {
    if (destroyed_ != nullptr) ++*destroyed_;
  }
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) override {
    if (next_ == records_.size()) {
      if (error_) return *error_;
      return false;
    }
    key = records_[next_].first;
    value = records_[next_].second;
    ++next_;
    return true;
  }

 private:
  Records records_;
  std::optional<absl::Status> error_;
  std::atomic<int>* destroyed_;
  size_t next_ = 0;
};

// An endless stream of distinct records.
class EndlessStream : public SortedStream {
 public:
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) override {
    key_ = std::to_string(1000000000 + n_++);
    key = key_;
    value = "v";
    return true;
  }

 private:
  std::string key_;
  int64_t n_ = 0;
};

Records RandomRecords(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  Records out;
  for (int i = 0; i < n; ++i) {
    std::string key = std::to_string(i);
    std::string value(rng() % 64, static_cast<char>('a' + rng() % 26));
    if (rng() % 50 == 0) value.assign(5000, 'x');  // larger than a small block
    if (rng() % 40 == 0) value.clear();
    out.emplace_back(std::move(key), std::move(value));
  }
  return out;
}

Records ReadAll(SortedStream& stream) {
  Records out;
  std::string_view key, value;
  while (true) {
    absl::StatusOr<bool> more = stream.Next(key, value);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    out.emplace_back(std::string(key), std::string(value));
  }
  return out;
}

TEST(PrefetchSortedStreamTest, YieldsTheInnerRecordsInOrderForAnyBlockSize) {
  const Records records = RandomRecords(20000, 7);
  for (size_t block_bytes : {size_t{1}, size_t{100}, size_t{4096}, size_t{1} << 20}) {
    for (int blocks : {1, 2, 5}) {
      auto stream = PrefetchSortedStream(std::make_unique<VectorStream>(records),
                                         {.block_bytes = block_bytes, .blocks = blocks});
      EXPECT_EQ(ReadAll(*stream), records) << block_bytes << " bytes, " << blocks << " blocks";
      // The end is sticky.
      std::string_view key, value;
      absl::StatusOr<bool> more = stream->Next(key, value);
      ASSERT_TRUE(more.ok());
      EXPECT_FALSE(*more);
    }
  }
}

TEST(PrefetchSortedStreamTest, EmptyInner) {
  auto stream = PrefetchSortedStream(std::make_unique<VectorStream>(Records{}));
  EXPECT_TRUE(ReadAll(*stream).empty());
}

TEST(PrefetchSortedStreamTest, AnErrorComesAfterTheRecordsBeforeItAndStays) {
  const Records records = RandomRecords(3000, 11);
  for (size_t block_bytes : {size_t{1}, size_t{512}, size_t{1} << 20}) {
    auto stream = PrefetchSortedStream(
        std::make_unique<VectorStream>(records, absl::DataLossError("run file damaged")),
        {.block_bytes = block_bytes, .blocks = 3});
    std::string_view key, value;
    for (const auto& [k, v] : records) {
      absl::StatusOr<bool> more = stream->Next(key, value);
      ASSERT_TRUE(more.ok()) << more.status();
      ASSERT_TRUE(*more);
      ASSERT_EQ(key, k);
      ASSERT_EQ(value, v);
    }
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<bool> more = stream->Next(key, value);
      ASSERT_FALSE(more.ok());
      EXPECT_EQ(more.status().code(), absl::StatusCode::kDataLoss);
      EXPECT_EQ(more.status().message(), "run file damaged");
    }
  }
}

TEST(PrefetchSortedStreamTest, ViewsStayValidUntilTheNextCall) {
  const Records records = RandomRecords(500, 3);
  auto stream = PrefetchSortedStream(std::make_unique<VectorStream>(records),
                                     {.block_bytes = 64, .blocks = 2});
  std::string_view key, value;
  for (const auto& [k, v] : records) {
    ASSERT_TRUE(*stream->Next(key, value));
    // Let the background thread run ahead and refill every free block.
    for (int spin = 0; spin < 100; ++spin) std::this_thread::yield();
    ASSERT_EQ(key, k);
    ASSERT_EQ(value, v);
  }
}

TEST(PrefetchSortedStreamTest, DestroyingMidStreamStopsTheThreadAndTheInnerStream) {
  std::atomic<int> destroyed = 0;
  {
    auto stream = PrefetchSortedStream(
        std::make_unique<VectorStream>(RandomRecords(100000, 5), std::nullopt, &destroyed),
        {.block_bytes = 128, .blocks = 2});
    std::string_view key, value;
    ASSERT_TRUE(*stream->Next(key, value));
    EXPECT_EQ(key, "0");
  }
  EXPECT_EQ(destroyed.load(), 1);
  {  // An inner stream that never ends, never read: the destructor returns.
    auto stream = PrefetchSortedStream(std::make_unique<EndlessStream>());
  }
  {  // Read a while.
    auto stream =
        PrefetchSortedStream(std::make_unique<EndlessStream>(), {.block_bytes = 1000, .blocks = 2});
    std::string_view key, value;
    for (int i = 0; i < 10000; ++i) {
      ASSERT_TRUE(*stream->Next(key, value));
      ASSERT_EQ(key, std::to_string(1000000000 + i));
    }
  }
}

// Sorted records where many keys repeat (1 to 4 records each), and the
// groups PrefetchKeyGroups should make of them.
struct Group {
  std::string key, first_value;
  int64_t copies;
  bool operator==(const Group&) const = default;
};
Records RepeatedKeys(int keys, uint32_t seed, std::vector<Group>& groups) {
  std::mt19937 rng(seed);
  Records records;
  groups.clear();
  for (int i = 0; i < keys; ++i) {
    std::string key = "key" + std::to_string(1000000 + i);
    const int copies = 1 + static_cast<int>(rng() % 4);
    for (int c = 0; c < copies; ++c) {
      records.emplace_back(key, std::string(rng() % 40, static_cast<char>('a' + c)));
    }
    groups.push_back({key, records[records.size() - copies].second, copies});
  }
  return records;
}

std::vector<Group> ReadGroups(KeyGroupStream& stream) {
  std::vector<Group> out;
  std::string_view key, value;
  int64_t copies = 0;
  while (true) {
    absl::StatusOr<bool> more = stream.Next(key, value, copies);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    out.push_back({std::string(key), std::string(value), copies});
  }
  return out;
}

TEST(PrefetchKeyGroupsTest, EachKeyOnceWithItsFirstValueAndCountForAnyBlockSize) {
  std::vector<Group> groups;
  const Records records = RepeatedKeys(5000, 9, groups);
  for (size_t block_bytes : {size_t{1}, size_t{30}, size_t{4096}, size_t{1} << 20}) {
    for (int blocks : {1, 2, 5}) {
      auto stream = PrefetchKeyGroups(std::make_unique<VectorStream>(records),
                                      {.block_bytes = block_bytes, .blocks = blocks});
      EXPECT_EQ(ReadGroups(*stream), groups) << block_bytes << " bytes, " << blocks << " blocks";
      std::string_view key, value;
      int64_t copies = 0;
      absl::StatusOr<bool> more = stream->Next(key, value, copies);
      ASSERT_TRUE(more.ok());
      EXPECT_FALSE(*more);
    }
  }
  EXPECT_TRUE(ReadGroups(*PrefetchKeyGroups(std::make_unique<VectorStream>(Records{}))).empty());
}

TEST(PrefetchKeyGroupsTest, AnErrorComesAfterTheGroupsBeforeItAndStays) {
  std::vector<Group> groups;
  const Records records = RepeatedKeys(800, 4, groups);
  for (size_t block_bytes : {size_t{1}, size_t{64}, size_t{1} << 20}) {
    auto stream = PrefetchKeyGroups(
        std::make_unique<VectorStream>(records, absl::DataLossError("run file damaged")),
        {.block_bytes = block_bytes, .blocks = 2});
    std::string_view key, value;
    int64_t copies = 0;
    for (const Group& g : groups) {
      absl::StatusOr<bool> more = stream->Next(key, value, copies);
      ASSERT_TRUE(more.ok()) << more.status();
      ASSERT_TRUE(*more);
      ASSERT_EQ(key, g.key);
      ASSERT_EQ(value, g.first_value);
      ASSERT_EQ(copies, g.copies);
    }
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<bool> more = stream->Next(key, value, copies);
      ASSERT_FALSE(more.ok());
      EXPECT_EQ(more.status().message(), "run file damaged");
    }
  }
}

TEST(PrefetchSortedStreamTest, OverAnExternalSortWithSpilledRuns) {
  testing::ScratchDir scratch("prefetch-sorter");
  const std::string dir = scratch.string();
  ExternalSorter sorter(dir, "t", {.memory_budget = 64 << 10, .compression_level = 0});
  std::mt19937 rng(42);
  Records added;
  for (int i = 0; i < 50000; ++i) {
    std::string key = std::to_string(rng() % 20000);  // duplicates keep their order
    std::string value = std::to_string(i);
    ASSERT_TRUE(sorter.Add(key, value).ok());
    added.emplace_back(std::move(key), std::move(value));
  }
  ASSERT_TRUE(sorter.Finish().ok());
  ASSERT_GT(sorter.spilled_runs(), 2);
  std::stable_sort(added.begin(), added.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  auto direct = sorter.Open();
  ASSERT_TRUE(direct.ok());
  auto prefetched = sorter.Open();
  ASSERT_TRUE(prefetched.ok());
  auto stream = PrefetchSortedStream(*std::move(prefetched));
  EXPECT_EQ(ReadAll(**direct), added);
  EXPECT_EQ(ReadAll(*stream), added);
  stream.reset();
}

}  // namespace
}  // namespace backflow
