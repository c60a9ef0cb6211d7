// The MariaDB server the `mariadb` ctest fixture starts
// (scripts/mariadb-test-server.sh), for tests: MariadbTest loads it in
// SetUp (skipping without one, failing under CI) and offers client
// connections as the test user `backflow` and as the server's administrator.
// Not thread-safe; use from the test's thread.
#pragma once

#include <gtest/gtest.h>
#include <mysql.h>
#include <pwd.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "fmt/format.h"

namespace backflow::mysql_testing {

struct MariadbServer {
  std::string url;  // mysql://backflow@127.0.0.1:PORT/backflow_test
  std::string password;
  int port = 0;
  std::string socket;
};

inline std::string ReadFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (in) std::getline(in, line);
  return line;
}

// A name unique to this process and call, starting with `prefix` (give it a
// backflow_ prefix for a database the user `backflow` may create).
inline std::string UniqueName(const std::string& prefix) {
  static std::atomic<int> counter{0};
  return fmt::format("{}_{}_{}", prefix, getpid(), counter++);
}

class MariadbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* dir = std::getenv("BACKFLOW_TEST_MARIADB_DIR");
    std::string problem;
    if (dir == nullptr || dir[0] == '\0') {
      problem =
          "BACKFLOW_TEST_MARIADB_DIR is not set; run through ctest (fixture `mariadb`) or start "
          "scripts/mariadb-test-server.sh start DIR and export BACKFLOW_TEST_MARIADB_DIR=DIR";
    } else {
      server_.url = ReadFirstLine(std::string(dir) + "/url");
      server_.password = ReadFirstLine(std::string(dir) + "/password");
      server_.port = std::atoi(ReadFirstLine(std::string(dir) + "/port").c_str());
      server_.socket = ReadFirstLine(std::string(dir) + "/socket");
      if (server_.url.empty() || server_.password.empty()) {
        problem = fmt::format("no MariaDB test server in {}", dir);
      }
    }
    if (!problem.empty()) {
      const char* ci = std::getenv("CI");
      if (ci != nullptr && ci[0] != '\0') {
        FAIL() << "CI is set but no MariaDB test server is available: " << problem;
      }
      GTEST_SKIP() << problem;
    }
  }

  const MariadbServer& server() const { return server_; }

  // A connection as `user` over TCP (nullptr, with a failure, when refused).
  MYSQL* ConnectAs(const std::string& user, const std::string& password,
                   const char* database = "backflow_test") {
    MYSQL* m = mysql_init(nullptr);
    unsigned protocol = MYSQL_PROTOCOL_TCP;
    mysql_optionsv(m, MYSQL_OPT_PROTOCOL, &protocol);
    mysql_optionsv(m, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    if (mysql_real_connect(m, "127.0.0.1", user.c_str(), password.c_str(), database, server_.port,
                           nullptr, 0) == nullptr) {
      ADD_FAILURE() << "cannot connect as " << user << ": " << mysql_error(m);
      mysql_close(m);
      return nullptr;
    }
    return m;
  }
  MYSQL* Connect() { return ConnectAs("backflow", server_.password); }

  // The administrator: the OS user, through the server's socket.
  MYSQL* Admin() {
    MYSQL* m = mysql_init(nullptr);
    unsigned protocol = MYSQL_PROTOCOL_SOCKET;
    mysql_optionsv(m, MYSQL_OPT_PROTOCOL, &protocol);
    const passwd* pw = getpwuid(geteuid());
    if (mysql_real_connect(m, nullptr, pw != nullptr ? pw->pw_name : "root", nullptr, nullptr, 0,
                           server_.socket.c_str(), 0) == nullptr) {
      ADD_FAILURE() << "cannot connect as the administrator: " << mysql_error(m);
      mysql_close(m);
      return nullptr;
    }
    return m;
  }

  // Runs `sql` as `backflow` (or on `m`); a test failure when it fails.
  bool Exec(const std::string& sql, MYSQL* m = nullptr) {
    MYSQL* conn = m != nullptr ? m : Connect();
    if (conn == nullptr) return false;
    bool ok = mysql_query(conn, sql.c_str()) == 0;
    EXPECT_TRUE(ok) << mysql_error(conn) << "\nSQL: " << sql;
    if (ok) {
      MYSQL_RES* r = mysql_store_result(conn);
      if (r != nullptr) mysql_free_result(r);
    }
    if (m == nullptr) mysql_close(conn);
    return ok;
  }

  // The rows of `sql` as `backflow`, each value as text ("NULL" for NULL).
  std::vector<std::vector<std::string>> Rows(const std::string& sql) {
    std::vector<std::vector<std::string>> rows;
    MYSQL* conn = Connect();
    if (conn == nullptr) return rows;
    if (mysql_query(conn, sql.c_str()) != 0) {
      ADD_FAILURE() << mysql_error(conn) << "\nSQL: " << sql;
      mysql_close(conn);
      return rows;
    }
    MYSQL_RES* r = mysql_store_result(conn);
    if (r != nullptr) {
      unsigned n = mysql_num_fields(r);
      while (MYSQL_ROW row = mysql_fetch_row(r)) {
        unsigned long* lengths = mysql_fetch_lengths(r);
        std::vector<std::string> values;
        for (unsigned i = 0; i < n; ++i) {
          values.push_back(row[i] == nullptr ? "NULL" : std::string(row[i], lengths[i]));
        }
        rows.push_back(std::move(values));
      }
      mysql_free_result(r);
    }
    mysql_close(conn);
    return rows;
  }

 private:
  MariadbServer server_;
};

}  // namespace backflow::mysql_testing
