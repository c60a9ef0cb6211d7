#include "backflow/storage/scratch_pool.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "backflow/storage/external_sorter.h"
#include "backflow/storage/run_file.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

class ScratchPoolTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  void WriteFile(const std::string& path, size_t size, char fill) {
    std::ofstream(path, std::ios::binary) << std::string(size, fill);
  }
  static uint64_t Inode(const std::string& path) {
    struct stat st {};
    return stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
  }
  size_t Kept(const ScratchPool& pool) const {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(pool.dir())) ++n;
    return n;
  }

  testing::ScratchDir scratch_{"scratch-pool"};
  const std::string dir_ = scratch_.string();
};

TEST_F(ScratchPoolTest, KeptFilesAreTakenLargestFirstAndOnlyOnce) {
  ScratchPool pool(Path("pool"), 1 << 20);
  EXPECT_FALSE(pool.Take(Path("nothing-yet")));
  WriteFile(Path("small"), 100, 's');
  WriteFile(Path("large"), 5000, 'l');
  const uint64_t large_inode = Inode(Path("large"));
  pool.Keep(Path("small"));
  pool.Keep(Path("large"));
  EXPECT_FALSE(fs::exists(Path("small")));
  EXPECT_FALSE(fs::exists(Path("large")));
  EXPECT_EQ(Kept(pool), 2u);

  ASSERT_TRUE(pool.Take(Path("a")));
  EXPECT_EQ(Inode(Path("a")), large_inode);  // the same file, not a copy
  EXPECT_EQ(fs::file_size(Path("a")), 5000u);
  ASSERT_TRUE(pool.Take(Path("b")));
  EXPECT_EQ(fs::file_size(Path("b")), 100u);
  EXPECT_FALSE(pool.Take(Path("c")));
  EXPECT_EQ(Kept(pool), 0u);
}

TEST_F(ScratchPoolTest, AFileBeyondTheBudgetIsRemovedAndAZeroBudgetKeepsNothing) {
  ScratchPool pool(Path("pool"), 6000);
  WriteFile(Path("f1"), 4000, 'x');
  WriteFile(Path("f2"), 4000, 'y');
  pool.Keep(Path("f1"));
  pool.Keep(Path("f2"));  // 8000 > 6000
  EXPECT_FALSE(fs::exists(Path("f2")));
  EXPECT_EQ(Kept(pool), 1u);

  ScratchPool none(Path("none"), 0);
  WriteFile(Path("f3"), 10, 'z');
  none.Keep(Path("f3"));
  EXPECT_FALSE(fs::exists(Path("f3")));
  EXPECT_FALSE(none.Take(Path("f4")));
}

TEST_F(ScratchPoolTest, ConcurrentTakersNeverGetTheSameFile) {
  ScratchPool pool(Path("pool"), 1 << 30);
  constexpr int kFiles = 40;
  for (int i = 0; i < kFiles; ++i) {
    WriteFile(Path("f" + std::to_string(i)), 10 + i, 'f');
    pool.Keep(Path("f" + std::to_string(i)));
  }
  std::atomic<int> taken{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kFiles; ++i) {
        if (pool.Take(Path(fmt::format("t{}-{}", t, i)))) ++taken;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(taken.load(), kFiles);
  EXPECT_EQ(Kept(pool), 0u);
}

// A run file written over a longer kept file reads back exactly what was
// written: the stale tail is cut off.
TEST_F(ScratchPoolTest, ARunFileWrittenOverALongerKeptFileHasOnlyItsOwnRecords) {
  ScratchPool pool(Path("pool"), 1 << 30);
  RunFileOptions o;
  o.compression_level = 0;
  o.block_bytes = 512;
  o.pool = &pool;
  {
    auto big = RunFileWriter::Create(Path("big.run"), o);
    ASSERT_TRUE(big.ok());
    for (int i = 0; i < 5000; ++i) ASSERT_TRUE((*big)->Add("old" + std::to_string(i), "v").ok());
    ASSERT_TRUE((*big)->Finish().ok());
  }
  const uint64_t inode = Inode(Path("big.run"));
  pool.Keep(Path("big.run"));
  auto small = RunFileWriter::Create(Path("small.run"), o);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(Inode(Path("small.run")), inode);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE((*small)->Add("new" + std::to_string(i), "w").ok());
  ASSERT_TRUE((*small)->Finish().ok());
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(Path("small.run"))), (*small)->bytes_written());
  auto count = RunFileRecordCount(Path("small.run"));
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 10);
  auto reader = RunFileReader::Open(Path("small.run"));
  ASSERT_TRUE(reader.ok());
  std::string_view k, v;
  for (int i = 0; i < 10; ++i) {
    auto more = (*reader)->Next(k, v);
    ASSERT_TRUE(more.ok() && *more) << i;
    EXPECT_EQ(k, "new" + std::to_string(i));
  }
  auto end = (*reader)->Next(k, v);
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_FALSE(*end);
}

// A sorter spilling into pooled files sorts as without them, and gives its
// runs back to the pool for the next sorter.
TEST_F(ScratchPoolTest, AnExternalSorterRecyclesItsRuns) {
  ScratchPool pool(Path("pool"), 1 << 30);
  for (int round = 0; round < 3; ++round) {
    ExternalSorter::Options so;
    so.memory_budget = 16 << 10;
    so.compression_level = 0;
    so.pool = &pool;
    ExternalSorter sorter(dir_, fmt::format("r{}", round), so);
    const int n = 3000 - round * 1000;  // fewer, shorter runs each round
    for (int i = n; i > 0; --i) {
      ASSERT_TRUE(sorter.Add(fmt::format("{:06}", i), std::string(round + 1, 'v')).ok());
    }
    ASSERT_TRUE(sorter.Finish().ok());
    EXPECT_GT(sorter.spilled_runs(), 0);
    auto stream = sorter.Open();
    ASSERT_TRUE(stream.ok());
    std::string_view k, v;
    for (int i = 1; i <= n; ++i) {
      auto more = (*stream)->Next(k, v);
      ASSERT_TRUE(more.ok() && *more)
          << "round " << round << " record " << i << ": " << more.status();
      ASSERT_EQ(k, fmt::format("{:06}", i));
      ASSERT_EQ(v, std::string(round + 1, 'v'));
    }
    auto end = (*stream)->Next(k, v);
    ASSERT_TRUE(end.ok() && !*end);
    stream->reset();
  }
  EXPECT_GT(Kept(pool), 0u);
}

}  // namespace
}  // namespace backflow
