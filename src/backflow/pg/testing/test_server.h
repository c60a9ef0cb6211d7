// Test support: the throwaway PostgreSQL server started for the test run.
//
// scripts/pg-test-server.sh (registered as the ctest fixture `postgres`)
// starts a cluster and describes it in files under $BACKFLOW_TEST_PG_DIR;
// LoadTestServer() reads them. Tests that need PostgreSQL derive their
// fixture from PostgresTest (or call LoadTestServer() themselves): when no
// server is configured the test is skipped, except when the environment
// variable CI is set, where it fails instead so CI can never silently skip.
// Thread-safe (reads files only).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "backflow/pg/connection.h"
#include "gtest/gtest.h"

namespace backflow::pg::testing {

struct TestServer {
  // postgresql://backflow@127.0.0.1:PORT/backflow_test, without password.
  std::string url;
  // The password of `backflow`.
  std::string password;
  // The superuser `postgres` on the same database, and its password.
  std::string admin_url;
  std::string admin_password;
  int port = 0;

  // `url` with extra URI query parameters appended ("application_name=x").
  std::string UrlWith(std::string_view query) const;
};

// kNotFound (with what is missing) when no server is configured.
absl::StatusOr<TestServer> LoadTestServer();

// True when the environment variable CI is set to a non-empty value.
bool RunningInCi();

// A name unique to this process and call, for tables and application names:
// "<prefix>_<pid>_<n>".
std::string UniqueName(std::string_view prefix);

// Base fixture: loads the server in SetUp (skips, or fails under CI, when
// none is configured) and offers connections for test setup.
class PostgresTest : public ::testing::Test {
 protected:
  void SetUp() override;

  const TestServer& server() const { return server_; }
  // A connection as `backflow` / as the superuser, with TimeZone=UTC.
  absl::StatusOr<std::unique_ptr<Connection>> Connect() const;
  absl::StatusOr<std::unique_ptr<Connection>> AdminConnect() const;
  // Runs `sql` as `backflow`; fails the test on error.
  void ExecOrFail(const std::string& sql) const;
  // Backends connected with application_name `app`, polled (every 50 ms, for
  // up to 5 s) until it equals `want`, since backends appear and go away
  // asynchronously; returns the last count, -1 (with a test failure) when the
  // server cannot be asked.
  int Backends(const std::string& app, int want = 0) const;

 private:
  TestServer server_;
};

}  // namespace backflow::pg::testing
