#include "backflow/state/checkpoint_files.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using Kind = CheckpointUpdate::Kind;

class CheckpointFilesTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }
  void TearDown() override { files_.reset(); }
  void Reopen() {
    files_.reset();
    auto f = CheckpointFiles::Open(root_);
    ASSERT_TRUE(f.ok()) << f.status();
    files_ = *std::move(f);
  }

  absl::StatusOr<std::map<std::string, std::string>> ScanAll(const std::string& mapping) {
    auto scanner = files_->Scan(mapping);
    if (!scanner.ok()) return scanner.status();
    std::map<std::string, std::string> out;
    std::string last;
    CheckpointEntry e;
    while (true) {
      auto more = (*scanner)->Next(e);
      if (!more.ok()) return more.status();
      if (!*more) break;
      EXPECT_TRUE(out.empty() || e.key > last) << "keys must ascend: " << last << " " << e.key;
      last = e.key;
      out[e.key] = e.fingerprint.ToHex() + "/" + e.identity;
    }
    return out;
  }

  absl::StatusOr<std::map<std::string, std::string>> ScanMarks(const std::string& mapping) {
    auto scanner = files_->ScanInFlight(mapping);
    if (!scanner.ok()) return scanner.status();
    std::map<std::string, std::string> out;
    std::string last;
    CheckpointEntry e;
    while (true) {
      auto more = (*scanner)->Next(e);
      if (!more.ok()) return more.status();
      if (!*more) break;
      EXPECT_TRUE(out.empty() || e.key > last) << "keys must ascend: " << last << " " << e.key;
      EXPECT_EQ(e.fingerprint, Fingerprint{});
      last = e.key;
      out[e.key] = e.identity;
    }
    return out;
  }

  static std::string Expected(const CheckpointUpdate& u) {
    return u.fingerprint.ToHex() + "/" + u.identity;
  }

  std::string MappingDir(const std::string& mapping) const { return root_ + "/" + mapping; }
  std::vector<std::string> FilesOf(const std::string& mapping) const {
    std::vector<std::string> names;
    for (const auto& f : fs::directory_iterator(MappingDir(mapping))) {
      names.push_back(f.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  testing::ScratchDir scratch_{"backflow-ckpt"};
  const std::string root_ = scratch_.string();
  std::unique_ptr<CheckpointFiles> files_;
};

// Random marks, upserts, removes and settles over a small key space, applied
// in batches, folded at random moments and read back: the checkpoint and the
// marks always equal two maps.
TEST_F(CheckpointFilesTest, MatchesAModelUnderRandomUpdatesMarksAndFolds) {
  for (uint32_t seed = 1; seed <= 5; ++seed) {
    std::mt19937 rng(seed);
    std::map<std::string, std::string> model, marks;
    const std::string mapping = fmt::format("m{}", seed);
    auto check = [&](int round) {
      auto got = ScanAll(mapping);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(*got, model) << "seed " << seed << " round " << round;
      auto got_marks = ScanMarks(mapping);
      ASSERT_TRUE(got_marks.ok()) << got_marks.status();
      ASSERT_EQ(*got_marks, marks) << "seed " << seed << " round " << round;
      ASSERT_EQ(*files_->Size(mapping), static_cast<int64_t>(model.size()));
    };
    for (int round = 0; round < 30; ++round) {
      std::vector<InFlightEntry> flights;
      if (rng() % 2 == 0) {
        int n = static_cast<int>(rng() % 150);
        for (int i = 0; i < n; ++i) {
          flights.push_back({fmt::format("k{:04}", rng() % 500), fmt::format("f-{}", rng() % 9)});
        }
      }
      std::vector<CheckpointUpdate> batch;
      int n = static_cast<int>(rng() % 200);
      for (int i = 0; i < n; ++i) {
        CheckpointUpdate u;
        u.key = fmt::format("k{:04}", rng() % 500);
        int what = static_cast<int>(rng() % 10);
        u.kind = what < 6 ? Kind::kUpsert : what < 8 ? Kind::kRemove : Kind::kSettle;
        u.fingerprint = Fingerprint128(fmt::format("{}-{}", u.key, rng()));
        u.identity = fmt::format("id-{}", rng() % 7);
        batch.push_back(u);
      }
      auto mark = [&] {
        for (const InFlightEntry& e : flights) marks[e.key] = e.identity;
      };
      auto apply = [&] {
        for (const CheckpointUpdate& u : batch) {
          if (u.kind == Kind::kUpsert) model[u.key] = Expected(u);
          if (u.kind == Kind::kRemove) model.erase(u.key);
          marks.erase(u.key);
        }
      };
      if (rng() % 3 == 0) {
        // The engine's way: the last batch's outcomes, then the next batch's marks.
        ASSERT_TRUE(files_->ApplyAndMark(mapping, batch, flights).ok());
        apply();
        mark();
      } else {
        if (!flights.empty()) {
          ASSERT_TRUE(files_->Mark(mapping, flights).ok());
        }
        mark();
        ASSERT_TRUE(files_->Apply(mapping, batch).ok());
        apply();
      }
      if (rng() % 4 == 0) {
        ASSERT_TRUE(files_->Fold(mapping).ok());
        EXPECT_EQ(files_->last_fold().in_flight, static_cast<int64_t>(marks.size()));
      } else if (rng() % 2 == 0) {
        ASSERT_TRUE(files_->Commit(mapping).ok());  // folds or not, by the journal's size
      }
      if (rng() % 7 == 0) Reopen();
      if (rng() % 3 == 0) check(round);
    }
    check(-1);
  }
}

TEST_F(CheckpointFilesTest, ScansMergeTheJournalAndCommitFoldsOnceItGrows) {
  std::vector<CheckpointUpdate> batch;
  for (int i = 0; i < 1000; ++i) {
    batch.push_back({.key = fmt::format("{:04}", i), .fingerprint = Fingerprint128("x")});
  }
  ASSERT_TRUE(files_->Apply("m", batch).ok());
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"journal-0"}));
  ASSERT_TRUE(files_->Commit("m").ok());  // no base yet: folds
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"base-1.ckpt"}));
  EXPECT_EQ(files_->last_fold().records, 1000);

  // A small journal stays: scans, sizes and marks merge it on the fly.
  ASSERT_TRUE(files_->Mark("m", {{"0005", "i5"}, {"0007", "i7"}}).ok());
  ASSERT_TRUE(files_
                  ->Apply("m", {{.key = "0005", .kind = Kind::kRemove},
                                {.key = "zz", .fingerprint = Fingerprint128("z")}})
                  .ok());
  ASSERT_TRUE(files_->Commit("m").ok());
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"base-1.ckpt", "journal-1"}));
  EXPECT_EQ(*files_->Size("m"), 1000);
  auto got = ScanAll("m");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), 1000u);
  EXPECT_EQ(got->count("0005"), 0u);
  EXPECT_EQ(got->count("zz"), 1u);
  EXPECT_EQ(*ScanMarks("m"), (std::map<std::string, std::string>{{"0007", "i7"}}));
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"base-1.ckpt", "journal-1"}));

  // Once the journal reaches a quarter of the base, Commit() folds.
  std::vector<CheckpointUpdate> updates;
  for (int i = 0; i < 300; ++i) {
    updates.push_back({.key = fmt::format("{:04}", 100 + i), .fingerprint = Fingerprint128("y")});
  }
  ASSERT_TRUE(files_->Apply("m", updates).ok());
  ASSERT_TRUE(files_->Commit("m").ok());
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"base-2.ckpt", "inflight-2"}));
  EXPECT_EQ(files_->last_fold().records, 1000);
  EXPECT_EQ(files_->last_fold().in_flight, 1);
  EXPECT_EQ(*files_->Size("m"), 1000);
  EXPECT_EQ((*ScanAll("m"))["0101"], Expected(updates[1]));
}

TEST_F(CheckpointFilesTest, ATornLastJournalFrameIsIgnoredAndOverwritten) {
  ASSERT_TRUE(files_->Apply("m", {{.key = "a", .fingerprint = Fingerprint128("1")}}).ok());
  ASSERT_TRUE(files_->Apply("m", {{.key = "b", .fingerprint = Fingerprint128("2")}}).ok());
  files_.reset();
  // A crash in the middle of the second Apply(): its frame is cut short.
  const std::string journal = MappingDir("m") + "/journal-0";
  fs::resize_file(journal, fs::file_size(journal) - 5);
  Reopen();
  ASSERT_TRUE(files_->Apply("m", {{.key = "c", .fingerprint = Fingerprint128("3")}}).ok());
  auto got = ScanAll("m");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), 2u);
  EXPECT_EQ(got->count("a"), 1u);
  EXPECT_EQ(got->count("c"), 1u);
}

TEST_F(CheckpointFilesTest, ApplyAndMarkIsOneFrame) {
  ASSERT_TRUE(files_->Mark("m", {{"a", "ia"}}).ok());
  const std::string journal = MappingDir("m") + "/journal-0";
  ASSERT_TRUE(
      files_->ApplyAndMark("m", {{.key = "a", .fingerprint = Fingerprint128("1")}}, {{"b", "ib"}})
          .ok());
  EXPECT_EQ(*ScanMarks("m"), (std::map<std::string, std::string>{{"b", "ib"}}));
  EXPECT_EQ(ScanAll("m")->count("a"), 1u);
  // One frame: cut short (a crash before it returned), neither is kept.
  files_.reset();
  fs::resize_file(journal, fs::file_size(journal) - 1);
  Reopen();
  EXPECT_TRUE(ScanAll("m")->empty());
  EXPECT_EQ(*ScanMarks("m"), (std::map<std::string, std::string>{{"a", "ia"}}));
}

TEST_F(CheckpointFilesTest, DamageIsDataLossWithTheWayOut) {
  std::vector<CheckpointUpdate> batch;
  for (int i = 0; i < 5000; ++i) {
    batch.push_back({.key = fmt::format("{:05}", i), .fingerprint = Fingerprint128("x")});
  }
  ASSERT_TRUE(files_->Apply("m", batch).ok());
  ASSERT_TRUE(files_->Fold("m").ok());
  const std::string base = MappingDir("m") + "/base-1.ckpt";
  {
    std::fstream f(base, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(base) / 2));
    f.put('\x5a');
  }
  auto got = ScanAll("m");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(got.status().message()).find("backflow checkpoint reset m"),
            std::string::npos)
      << got.status();
  // A fold over a damaged base refuses too, and keeps the journal.
  ASSERT_TRUE(files_->Apply("m", {{.key = "z", .fingerprint = Fingerprint128("y")}}).ok());
  EXPECT_EQ(files_->Fold("m").code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(fs::exists(MappingDir("m") + "/journal-1"));

  // A damaged frame in the middle of a journal (more frames follow) is damage, not a tear.
  ASSERT_TRUE(files_->Reset("m").ok());
  ASSERT_TRUE(files_->Apply("m", {{.key = "a", .fingerprint = Fingerprint128("1")}}).ok());
  ASSERT_TRUE(files_->Apply("m", {{.key = "b", .fingerprint = Fingerprint128("2")}}).ok());
  {
    std::fstream f(MappingDir("m") + "/journal-0", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(14);
    f.put('\x01');
  }
  got = ScanAll("m");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
}

TEST_F(CheckpointFilesTest, InterruptedFoldsRecover) {
  ASSERT_TRUE(files_->Apply("m", {{.key = "a", .fingerprint = Fingerprint128("1")}}).ok());
  ASSERT_TRUE(files_->Fold("m").ok());
  ASSERT_TRUE(files_->Apply("m", {{.key = "b", .fingerprint = Fingerprint128("2")}}).ok());
  files_.reset();
  // Crash before the rename: a temporary file and sorter spill are left behind.
  std::ofstream(MappingDir("m") + "/base-2.ckpt.tmp") << "partial";
  std::ofstream(MappingDir("m") + "/fold-999999999-0.run") << "partial";  // a dead process's
  Reopen();
  auto got = ScanAll("m");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), 2u);
  ASSERT_TRUE(files_->Fold("m").ok());
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"base-2.ckpt"}));

  // Crash after the rename but before the old generation was removed: the
  // newer base wins and the stale journal (already folded into it) goes.
  ASSERT_TRUE(files_->Apply("m", {{.key = "c", .fingerprint = Fingerprint128("3")}}).ok());
  fs::copy_file(MappingDir("m") + "/journal-2", root_ + "/journal-2.saved");
  ASSERT_TRUE(files_->Fold("m").ok());
  fs::copy_file(root_ + "/journal-2.saved", MappingDir("m") + "/journal-2");
  std::ofstream(MappingDir("m") + "/base-2.ckpt") << "stale";
  Reopen();
  got = ScanAll("m");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), 3u);
  ASSERT_TRUE(files_->Fold("m").ok());
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"base-3.ckpt"}));
}

TEST_F(CheckpointFilesTest, InterruptedFoldsKeepTheMarks) {
  ASSERT_TRUE(files_->Mark("m", {{"a", "ia"}, {"b", "ib"}}).ok());
  ASSERT_TRUE(files_->Apply("m", {{.key = "a", .fingerprint = Fingerprint128("1")}}).ok());
  ASSERT_TRUE(files_->Fold("m").ok());
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"base-1.ckpt", "inflight-1"}));
  ASSERT_TRUE(files_->Mark("m", {{"c", "ic"}}).ok());
  ASSERT_TRUE(files_->Apply("m", {{.key = "b", .kind = Kind::kSettle}}).ok());
  files_.reset();
  // A crash after the fold wrote inflight-2 but before base-2 was renamed:
  // that fold never happened, its in-flight file must not count.
  std::ofstream(MappingDir("m") + "/inflight-2") << "stale";
  std::ofstream(MappingDir("m") + "/base-2.ckpt.tmp") << "partial";
  Reopen();
  auto marks = ScanMarks("m");
  ASSERT_TRUE(marks.ok()) << marks.status();
  EXPECT_EQ(*marks, (std::map<std::string, std::string>{{"c", "ic"}}));
  ASSERT_TRUE(files_->Fold("m").ok());
  EXPECT_EQ(*ScanMarks("m"), (std::map<std::string, std::string>{{"c", "ic"}}));
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"base-2.ckpt", "inflight-2"}));

  // Every mark settled: the next generation has no in-flight file.
  ASSERT_TRUE(files_->Apply("m", {{.key = "c", .kind = Kind::kRemove}}).ok());
  ASSERT_TRUE(files_->Fold("m").ok());
  EXPECT_EQ(FilesOf("m"), (std::vector<std::string>{"base-3.ckpt"}));
  EXPECT_TRUE(ScanMarks("m")->empty());
  EXPECT_EQ(ScanAll("m")->size(), 1u);

  // A damaged in-flight file is data loss, like a damaged base.
  ASSERT_TRUE(files_->Mark("m", {{"d", "id"}}).ok());
  ASSERT_TRUE(files_->Fold("m").ok());
  {
    std::fstream f(MappingDir("m") + "/inflight-4",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    f.put('\x5a');
  }
  EXPECT_EQ(ScanMarks("m").status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(CheckpointFilesTest, MappingNamesAreEscapedAndIndependent) {
  ASSERT_TRUE(files_->Apply("a/b", {{.key = "k", .fingerprint = Fingerprint128("1")}}).ok());
  ASSERT_TRUE(files_->Apply("a b", {{.key = "j", .fingerprint = Fingerprint128("2")}}).ok());
  EXPECT_TRUE(fs::exists(root_ + "/a%2fb"));
  EXPECT_EQ(ScanAll("a/b")->count("k"), 1u);
  EXPECT_EQ(ScanAll("a b")->count("k"), 0u);
  ASSERT_TRUE(files_->Reset("a/b").ok());
  EXPECT_TRUE(ScanAll("a/b")->empty());
  EXPECT_EQ(ScanAll("a b")->size(), 1u);
}

}  // namespace
}  // namespace backflow
