#include "backflow/testing/scratch_dir.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

// A folder with a file and a subfolder, as a test leaves its scratch folder.
void Fill(const fs::path& dir) {
  fs::create_directories(dir / "sub");
  std::ofstream(dir / "state.db") << "x";
  std::ofstream(dir / "sub" / "run.log") << "y";
}

TEST(ScratchDirTest, CreatesAnEmptyFolderNamedAfterPrefixPidAndTestAndRemovesItWithItsFiles) {
  fs::path path;
  {
    testing::ScratchDir scratch("scratch-test");
    path = scratch.path();
    EXPECT_EQ(scratch.string(), path.string());
    EXPECT_TRUE(fs::is_directory(path));
    EXPECT_TRUE(fs::is_empty(path));
    EXPECT_EQ(path.parent_path(), (fs::path(::testing::TempDir()) / "x").parent_path())
        << "directly under the test temp dir";
    EXPECT_EQ(path.filename().string(),
              "scratch-test-" + std::to_string(getpid()) +
                  "-CreatesAnEmptyFolderNamedAfterPrefixPidAndTestAndRemovesItWithItsFiles");
    Fill(path);
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(ScratchDirTest, NeverReusesAnExistingFolder) {
  testing::ScratchDir first("scratch-test");
  // A folder of the same name left by an earlier process with the same pid
  // (say kept for a failed test) is neither reused nor removed.
  testing::ScratchDir second("scratch-test");
  EXPECT_NE(first.path(), second.path());
  EXPECT_EQ(second.path().string(), first.path().string() + "-2");
  EXPECT_TRUE(fs::is_empty(second.path()));
  Fill(first.path());
  fs::path second_path = second.path();
  {
    testing::ScratchDir third("scratch-test");
    EXPECT_EQ(third.path().string(), first.path().string() + "-3");
  }
  EXPECT_TRUE(fs::exists(first.path() / "state.db"));
  EXPECT_TRUE(fs::exists(second_path));
}

class ScratchDirParamTest : public ::testing::TestWithParam<int> {};

TEST_P(ScratchDirParamTest, ParameterizedTestNameIsOneFolder) {
  testing::ScratchDir scratch("scratch-param");
  EXPECT_EQ(scratch.path().filename().string(), "scratch-param-" + std::to_string(getpid()) +
                                                    "-ParameterizedTestNameIsOneFolder_" +
                                                    std::to_string(GetParam()));
  EXPECT_TRUE(fs::is_directory(scratch.path()));
}

INSTANTIATE_TEST_SUITE_P(Values, ScratchDirParamTest, ::testing::Values(0, 1));

TEST(FinishScratchDirTest, RemovesTheFolderOfAPassedTestSilently) {
  const fs::path dir =
      fs::path(::testing::TempDir()) / ("finish-scratch-passed-" + std::to_string(getpid()));
  Fill(dir);
  std::ostringstream log;
  EXPECT_FALSE(testing::FinishScratchDir(dir, /*test_failed=*/false, "Suite.Passed", log));
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_EQ(log.str(), "");
}

TEST(FinishScratchDirTest, KeepsTheFolderOfAFailedTestAndSaysWhere) {
  const fs::path dir =
      fs::path(::testing::TempDir()) / ("finish-scratch-failed-" + std::to_string(getpid()));
  Fill(dir);
  std::ostringstream log;
  EXPECT_TRUE(testing::FinishScratchDir(dir, /*test_failed=*/true, "Suite.Failed", log));
  EXPECT_TRUE(fs::exists(dir / "sub" / "run.log"));
  EXPECT_EQ(log.str(), "kept scratch folder " + dir.string() + " of failed test Suite.Failed\n");
  fs::remove_all(dir);
}

TEST(FinishScratchDirTest, AFolderAlreadyGoneIsNoError) {
  const fs::path dir =
      fs::path(::testing::TempDir()) / ("finish-scratch-gone-" + std::to_string(getpid()));
  std::ostringstream log;
  EXPECT_FALSE(testing::FinishScratchDir(dir, false, "Suite.Gone", log));
  EXPECT_EQ(log.str(), "");
}

}  // namespace
}  // namespace backflow
