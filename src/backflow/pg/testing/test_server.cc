#include "backflow/pg/testing/test_server.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "fmt/format.h"

namespace backflow::pg::testing {
namespace {

absl::StatusOr<std::string> ReadLine(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(fmt::format("cannot read {}", path));
  std::string line;
  std::getline(in, line);
  if (line.empty()) return absl::NotFoundError(fmt::format("{} is empty", path));
  return line;
}

}  // namespace

std::string TestServer::UrlWith(std::string_view query) const {
  return fmt::format("{}{}{}", url, url.find('?') == std::string::npos ? "?" : "&", query);
}

bool RunningInCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && ci[0] != '\0';
}

absl::StatusOr<TestServer> LoadTestServer() {
  const char* dir = std::getenv("BACKFLOW_TEST_PG_DIR");
  if (dir == nullptr || dir[0] == '\0') {
    return absl::NotFoundError(
        "BACKFLOW_TEST_PG_DIR is not set; run the test through ctest (fixture `postgres`) or "
        "start a server with scripts/pg-test-server.sh start DIR and export "
        "BACKFLOW_TEST_PG_DIR=DIR");
  }
  std::string base(dir);
  TestServer server;
  const std::pair<const char*, std::string*> files[] = {{"url", &server.url},
                                                        {"password", &server.password},
                                                        {"admin_url", &server.admin_url},
                                                        {"admin_password", &server.admin_password}};
  for (const auto& [name, field] : files) {
    absl::StatusOr<std::string> line = ReadLine(base + "/" + name);
    if (!line.ok()) {
      return absl::NotFoundError(fmt::format(
          "no PostgreSQL test server in {} ({}); start one with scripts/pg-test-server.sh", base,
          std::string(line.status().message())));
    }
    *field = *line;
  }
  absl::StatusOr<std::string> port = ReadLine(base + "/port");
  if (port.ok()) server.port = std::atoi(port->c_str());
  return server;
}

std::string UniqueName(std::string_view prefix) {
  static std::atomic<int> counter{0};
  return fmt::format("{}_{}_{}", prefix, getpid(), counter.fetch_add(1));
}

void PostgresTest::SetUp() {
  absl::StatusOr<TestServer> server = LoadTestServer();
  if (!server.ok()) {
    if (RunningInCi()) {
      FAIL() << "CI is set but no PostgreSQL test server is available: " << server.status();
    }
    GTEST_SKIP() << server.status();
  }
  server_ = *std::move(server);
}

absl::StatusOr<std::unique_ptr<Connection>> PostgresTest::Connect() const {
  return Connection::Open(ConnectOptions{server_.url, server_.password, 10, {{"TimeZone", "UTC"}}});
}

absl::StatusOr<std::unique_ptr<Connection>> PostgresTest::AdminConnect() const {
  return Connection::Open(
      ConnectOptions{server_.admin_url, server_.admin_password, 10, {{"TimeZone", "UTC"}}});
}

void PostgresTest::ExecOrFail(const std::string& sql) const {
  absl::StatusOr<std::unique_ptr<Connection>> conn = Connect();
  ASSERT_TRUE(conn.ok()) << conn.status();
  absl::StatusOr<Result> result = (*conn)->Exec(sql);
  ASSERT_TRUE(result.ok()) << result.status() << "\nSQL: " << sql;
}

int PostgresTest::Backends(const std::string& app, int want) const {
  auto admin = Connect();
  EXPECT_TRUE(admin.ok()) << admin.status();
  if (!admin.ok()) return -1;
  int count = -1;
  for (int attempt = 0; attempt < 100 && count != want; ++attempt) {
    if (attempt > 0) usleep(50'000);
    auto active = (*admin)->Exec(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", {app.c_str()});
    EXPECT_TRUE(active.ok()) << active.status();
    if (!active.ok()) return -1;
    count = std::atoi(PQgetvalue(active->get(), 0, 0));
  }
  return count;
}

}  // namespace backflow::pg::testing
