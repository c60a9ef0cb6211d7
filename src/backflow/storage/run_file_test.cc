#include "backflow/storage/run_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "xxhash.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

class RunFileTest : public ::testing::TestWithParam<int> {
 protected:
  // Writes `n` records of the given shape; returns them.
  std::vector<std::pair<std::string, std::string>> Write(int n, size_t block_bytes = 4096,
                                                         bool durable = false) {
    RunFileOptions o;
    o.compression_level = GetParam();
    o.block_bytes = block_bytes;
    o.durable = durable;
    auto w = RunFileWriter::Create(path_, o);
    EXPECT_TRUE(w.ok()) << w.status();
    std::vector<std::pair<std::string, std::string>> records;
    std::mt19937 rng(7);
    for (int i = 0; i < n; ++i) {
      std::string key = "k" + std::to_string(i);
      std::string value(rng() % 300, static_cast<char>('a' + i % 26));
      if (i % 17 == 0) value.clear();
      if (i % 101 == 0) value.push_back('\0');
      EXPECT_TRUE((*w)->Add(key, value).ok());
      records.emplace_back(key, value);
    }
    EXPECT_TRUE((*w)->Finish().ok());
    EXPECT_EQ((*w)->records(), n);
    return records;
  }

  // Reads the file plainly and reading ahead (on a thread): both must give
  // the same records, or the same error.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadAll() {
    auto plain = ReadAllWith(0);
    for (int blocks : {2, 3}) {
      auto ahead = ReadAllWith(blocks);
      EXPECT_EQ(ahead.status(), plain.status()) << "reading " << blocks << " blocks ahead";
      if (ahead.ok() && plain.ok()) {
        EXPECT_TRUE(*ahead == *plain) << "reading " << blocks << " blocks ahead";
      }
    }
    return plain;
  }
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadAllWith(int read_ahead) {
    auto r = RunFileReader::Open(path_);
    if (!r.ok()) return r.status();
    if (read_ahead > 0) (*r)->ReadAhead(read_ahead);
    std::vector<std::pair<std::string, std::string>> out;
    std::string_view k, v;
    while (true) {
      auto more = (*r)->Next(k, v);
      if (!more.ok()) {
        // The error stays.
        auto again = (*r)->Next(k, v);
        EXPECT_EQ(again.status(), more.status());
        return more.status();
      }
      if (!*more) break;
      out.emplace_back(std::string(k), std::string(v));
    }
    auto after_end = (*r)->Next(k, v);
    EXPECT_TRUE(after_end.ok() && !*after_end) << "the end is sticky";
    return out;
  }

  testing::ScratchDir scratch_{"backflow-runfile"};
  const std::string dir_ = scratch_.string();
  const std::string path_ = dir_ + "/f.run";
};

TEST_P(RunFileTest, RoundTripsRecordsAcrossBlocks) {
  auto written = Write(5000);
  auto read = ReadAll();
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, written);
}

TEST_P(RunFileTest, EmptyFileAndHugeRecord) {
  Write(0);
  auto read = ReadAll();
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->empty());

  RunFileOptions o;
  o.compression_level = GetParam();
  o.block_bytes = 64;
  auto w = RunFileWriter::Create(path_, o);
  ASSERT_TRUE(w.ok());
  std::string big(1 << 20, 'x');
  ASSERT_TRUE((*w)->Add("big", big).ok());
  ASSERT_TRUE((*w)->Add("", "after").ok());
  ASSERT_TRUE((*w)->Finish().ok());
  read = ReadAll();
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 2u);
  EXPECT_EQ((*read)[0].second, big);
  EXPECT_EQ((*read)[1].first, "");
}

TEST_P(RunFileTest, DurableWriteReplacesAtomically) {
  Write(100, 4096, /*durable=*/true);
  EXPECT_FALSE(fs::exists(path_ + ".tmp"));
  {
    RunFileOptions o;
    o.durable = true;
    auto w = RunFileWriter::Create(path_, o);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Add("new", "x").ok());
    // Not finished: the old file stays whole and the temporary file goes.
  }
  EXPECT_FALSE(fs::exists(path_ + ".tmp"));
  auto read = ReadAll();
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->size(), 100u);
}

// A durable file larger than the writeback step (8 MiB): its early parts are
// written back while the rest is still being added; it reads back whole.
TEST_P(RunFileTest, LargeDurableFileReadsBackWhole) {
  RunFileOptions o;
  o.compression_level = GetParam();
  o.durable = true;
  auto w = RunFileWriter::Create(path_, o);
  ASSERT_TRUE(w.ok());
  std::mt19937_64 rng(11);
  std::string value(200, '\0');
  const int n = 50'000;  // ~10 MiB
  for (int i = 0; i < n; ++i) {
    for (char& c : value) c = static_cast<char>(rng());  // does not compress
    ASSERT_TRUE((*w)->Add(fmt::format("{:08}", i), value).ok());
  }
  ASSERT_TRUE((*w)->Finish().ok());
  EXPECT_GT((*w)->bytes_written(), 9 << 20);
  EXPECT_FALSE(fs::exists(path_ + ".tmp"));
  auto read = ReadAll();
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), static_cast<size_t>(n));
  EXPECT_EQ((*read)[n - 1].first, fmt::format("{:08}", n - 1));
  EXPECT_EQ((*read)[n - 1].second, value);
}

TEST_P(RunFileTest, EveryFlippedByteIsDetected) {
  Write(300, 1024);
  std::string bytes;
  {
    std::ifstream in(path_, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_GT(bytes.size(), 100u);
  // Every byte position in a sample spread over the file, each flipped alone.
  for (size_t pos = 0; pos < bytes.size(); pos += std::max<size_t>(1, bytes.size() / 97)) {
    std::string damaged = bytes;
    damaged[pos] ^= 0x20;
    {
      std::ofstream out(path_, std::ios::binary | std::ios::trunc);
      out << damaged;
    }
    auto read = ReadAll();
    ASSERT_FALSE(read.ok()) << "flipping byte " << pos << " went unnoticed";
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
    EXPECT_NE(std::string(read.status().message()).find(path_), std::string::npos);
  }
}

TEST_P(RunFileTest, TruncationIsDetectedAtEveryLength) {
  Write(200, 512);
  auto size = fs::file_size(path_);
  std::string bytes;
  {
    std::ifstream in(path_, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  for (size_t len = 0; len < size; len += 7) {
    {
      std::ofstream out(path_, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(len));
    }
    auto read = ReadAll();
    ASSERT_FALSE(read.ok()) << "a file cut at " << len << " of " << size << " bytes read cleanly";
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  }
}

TEST_P(RunFileTest, AReaderDestroyedWhileReadingAheadStopsCleanly) {
  auto records = Write(5000, 256);
  for (int stop_after : {0, 1, 700, 4999}) {
    auto r = RunFileReader::Open(path_);
    ASSERT_TRUE(r.ok()) << r.status();
    (*r)->ReadAhead(2);
    std::string_view k, v;
    for (int i = 0; i < stop_after; ++i) {
      auto more = (*r)->Next(k, v);
      ASSERT_TRUE(more.ok() && *more) << i;
      ASSERT_EQ(k, records[i].first);
    }
  }  // destroyed with its thread blocked on a full queue, or still reading
}

TEST_P(RunFileTest, MissingFileIsAnIoError) {
  auto r = RunFileReader::Open(dir_ + "/absent.run");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

INSTANTIATE_TEST_SUITE_P(Codecs, RunFileTest, ::testing::Values(0, 1, -3), [](const auto& info) {
  return info.param == 0  ? std::string("raw")
         : info.param > 0 ? "zstd" + std::to_string(info.param)
                          : "zstd_fast" + std::to_string(-info.param);
});

// A record that runs past its block (a writer bug: the block's checksum
// matches) is kDataLoss naming the part that does not fit, read directly or
// ahead.
TEST(RunFileReaderTest, ARecordRunningPastItsBlockIsDataLoss) {
  testing::ScratchDir scratch("backflow-runfile-record");
  const std::string path = scratch.string() + "/damaged.run";
  const std::pair<std::string, std::string> cases[] = {
      {std::string("\x05"
                   "ab",
                   3),
       "a record's key runs past its block"},
      {std::string("\x01"
                   "k"
                   "\x09"
                   "v",
                   4),
       "a record's value runs past its block"},
  };
  for (const auto& [raw, message] : cases) {
    std::string file("BFRUN001");
    auto put32 = [&](uint32_t v) { file.append(reinterpret_cast<const char*>(&v), 4); };
    put32(static_cast<uint32_t>(raw.size()));  // raw size
    put32(static_cast<uint32_t>(raw.size()));  // stored size
    put32(0);                                  // raw codec
    put32(1);                                  // records
    const uint64_t checksum = XXH3_64bits(raw.data(), raw.size());
    file.append(reinterpret_cast<const char*>(&checksum), 8);
    file.append(raw);
    std::ofstream(path, std::ios::binary) << file;
    for (bool ahead : {false, true}) {
      auto reader = RunFileReader::Open(path);
      ASSERT_TRUE(reader.ok()) << reader.status();
      if (ahead) (*reader)->ReadAhead(2);
      std::string_view key, value;
      for (int call = 0; call < 2; ++call) {  // and again: errors are sticky
        absl::StatusOr<bool> more = (*reader)->Next(key, value);
        ASSERT_FALSE(more.ok()) << message;
        EXPECT_EQ(more.status().code(), absl::StatusCode::kDataLoss);
        EXPECT_NE(more.status().message().find(message), std::string_view::npos) << more.status();
      }
    }
  }
}

TEST(VarintTest, RoundTripsBoundaries) {
  for (uint64_t v : {uint64_t{0}, uint64_t{127}, uint64_t{128}, uint64_t{16383}, uint64_t{16384},
                     uint64_t{1} << 35, ~uint64_t{0}}) {
    std::string s;
    AppendVarint(s, v);
    size_t pos = 0;
    uint64_t got = 1;
    ASSERT_TRUE(ReadVarint(s.data(), s.size(), pos, got));
    EXPECT_EQ(got, v);
    EXPECT_EQ(pos, s.size());
    pos = 0;
    EXPECT_FALSE(ReadVarint(s.data(), s.size() - 1, pos, got)) << "a cut varint is refused";
  }
}

TEST(VarintTest, ReadsBackToBackValuesOfEverySize) {
  const std::vector<uint64_t> values = {5, 300,          0, 127, 128, uint64_t{1} << 50,
                                        1, ~uint64_t{0}, 77};
  std::string s;
  for (uint64_t v : values) AppendVarint(s, v);
  size_t pos = 0;
  for (uint64_t v : values) {
    uint64_t got = 0;
    ASSERT_TRUE(ReadVarint(s.data(), s.size(), pos, got));
    EXPECT_EQ(got, v);
  }
  EXPECT_EQ(pos, s.size());
  uint64_t got = 0;
  EXPECT_FALSE(ReadVarint(s.data(), s.size(), pos, got)) << "nothing left to read";
  std::string unterminated(11, '\x80');
  pos = 0;
  EXPECT_FALSE(ReadVarint(unterminated.data(), unterminated.size(), pos, got))
      << "more than ten bytes of continuation";
}

}  // namespace
}  // namespace backflow
