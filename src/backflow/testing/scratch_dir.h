// A test's scratch folder: created empty under the test temp dir
// (::testing::TempDir()) and removed with everything in it when the
// ScratchDir is destroyed, unless the test failed: then it stays on disk for
// debugging and one line "kept scratch folder <path> of failed test <name>"
// goes to stderr.
//
// Declare the ScratchDir before (above) any fixture member that holds files
// or processes in the folder (stores, servers, child processes), or stop
// those in TearDown(), so they are gone before the folder is removed.
//
// Not thread-safe: create and destroy a ScratchDir on the test's thread.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <iostream>
#include <ostream>
#include <string>
#include <system_error>

namespace backflow::testing {

// Ends the life of a scratch folder: removes `path` recursively when
// `test_failed` is false; otherwise keeps it and writes the line
// "kept scratch folder <path> of failed test <test_name>" to `log`. A folder
// that cannot be removed is reported on `log` too. Returns whether the
// folder was kept.
inline bool FinishScratchDir(const std::filesystem::path& path, bool test_failed,
                             const std::string& test_name, std::ostream& log) {
  if (test_failed) {
    log << "kept scratch folder " << path.string() << " of failed test " << test_name << "\n";
    return true;
  }
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) {
    log << "could not remove scratch folder " << path.string() << ": " << ec.message()
        << " (remove it by hand)\n";
  }
  return false;
}

class ScratchDir {
 public:
  // Creates <TempDir>/<prefix>-<pid>-<test name> (the running test's name
  // with characters other than [A-Za-z0-9._-] replaced by '_'; just
  // <prefix>-<pid> outside a test). The name gets a "-2", "-3", ... suffix
  // when it exists already (another ScratchDir, or a folder kept by an
  // earlier process with the same pid), so the folder is always new and
  // empty and nothing else is ever removed. A folder that cannot be created
  // is a fatal failure (std::filesystem_error).
  explicit ScratchDir(const std::string& prefix)
      : test_(::testing::UnitTest::GetInstance()->current_test_info()) {
    std::string name = prefix + "-" + std::to_string(getpid());
    if (test_ != nullptr) {
      test_name_ = std::string(test_->test_suite_name()) + "." + test_->name();
      std::string part = test_->name();
      for (char& c : part) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') {
          c = '_';
        }
      }
      name += "-" + part.substr(0, 150);
    }
    const std::filesystem::path root(::testing::TempDir());
    std::filesystem::create_directories(root);
    path_ = root / name;
    for (int n = 2; !std::filesystem::create_directory(path_); ++n) {
      path_ = root / (name + "-" + std::to_string(n));
    }
  }

  // Removes the folder, or keeps it when the test that created it failed
  // (see FinishScratchDir).
  ~ScratchDir() {
    const bool failed =
        test_ != nullptr ? test_->result()->Failed() : ::testing::Test::HasFailure();
    FinishScratchDir(path_, failed, test_name_.empty() ? "(none)" : test_name_, std::cerr);
  }

  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string string() const { return path_.string(); }

 private:
  // The test running at construction; its result decides keep/remove, also
  // when the ScratchDir outlives it.
  const ::testing::TestInfo* test_;
  std::string test_name_;
  std::filesystem::path path_;
};

}  // namespace backflow::testing
