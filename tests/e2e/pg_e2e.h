// PostgresE2eTest: the fixture of every end-to-end test that runs the real
// binary on a PostgreSQL model (ctest fixture `postgres`): a fresh working
// folder per test (dir_), the server's password exported as
// BACKFLOW_E2E_PG_PASSWORD for the workspace's ${env:...}, and a table name
// unique to the test (table_).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "backflow/pg/testing/test_server.h"
#include "fmt/format.h"

namespace backflow::e2e {

class PostgresE2eTest : public pg::testing::PostgresTest {
 protected:
  // Call first from SetUp(). False when the test was skipped (no server) or
  // failed to set up; SetUp() should then return.
  bool SetUpE2e(const std::string& table_prefix) {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFailure()) return false;
    namespace fs = std::filesystem;
    dir_ = (fs::path(::testing::TempDir()) /
            fmt::format("{}-e2e-{}-{}", table_prefix, getpid(),
                        ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    setenv("BACKFLOW_E2E_PG_PASSWORD", server().password.c_str(), 1);
    table_ = pg::testing::UniqueName(table_prefix);
    return true;
  }

  std::string dir_;
  std::string table_;
};

}  // namespace backflow::e2e
