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
#include <optional>
#include <string>

#include "backflow/pg/testing/test_server.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow::e2e {

class PostgresE2eTest : public pg::testing::PostgresTest {
 protected:
  // Call first from SetUp(). False when the test was skipped (no server) or
  // failed to set up; SetUp() should then return.
  bool SetUpE2e(const std::string& table_prefix) {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFailure()) return false;
    dir_ = scratch_.emplace(table_prefix + "-e2e").string();
    setenv("BACKFLOW_E2E_PG_PASSWORD", server().password.c_str(), 1);
    table_ = pg::testing::UniqueName(table_prefix);
    return true;
  }

  // Removed after the test unless it failed (see ScratchDir); derived
  // fixtures' members and TearDown() end before it goes.
  std::optional<backflow::testing::ScratchDir> scratch_;
  std::string dir_;
  std::string table_;
};

}  // namespace backflow::e2e
