// The REST API end to end: a real `backflow serve --listen` process, real
// HTTP, tokens made with `backflow token create`, runs triggered, followed,
// inspected and cancelled through the API while the loopback webhook
// receiver plays the destination.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "backflow/common/http_client.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/scratch_dir.h"
#include "backflow/testing/webhook_receiver.h"
#include "cli_runner.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using e2e::CliResult;
using e2e::RunCli;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ApiE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(receiver_.Start().ok());
    auto db =
        sqlite::Database::Open(dir_ + "/warehouse.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    warehouse_ = std::move(*db);
    Exec("CREATE TABLE customers (id INTEGER, email TEXT)");
    Exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
        "INSERT INTO customers SELECT i, 'c' || i || '@example.com' FROM n");
    std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(
state: sqlite:.backflow/state.db
sources:
  - {{ name: warehouse, type: sqlite, path: warehouse.db }}
models:
  - {{ name: customers, source: warehouse, sql: "SELECT id, email FROM customers",
      primary_key: id }}
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{}", max_retries: 0 }} }}
mappings:
  - {{ name: customers_to_hook, model: customers, destination: hook, action: send_batch,
      batch_size: 20, fields: {{ id: id, email: email }} }}
)",
                                                          receiver_.Url("/in"));
    http_ = NewCurlHttpClient();
  }

  void TearDown() override { Stop(); }

  void Exec(const std::string& sql) { ASSERT_TRUE(warehouse_->Exec(sql).ok()) << sql; }

  std::string CreateToken(const std::string& name, bool read_only) {
    std::vector<std::string> args = {"token", "create", name};
    if (read_only) args.push_back("--read-only");
    CliResult r = RunCli(dir_, args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.LastLine();
  }

  // Starts `backflow serve --listen 127.0.0.1:0` and learns its port from the log.
  void Serve() {
    out_ = dir_ + "/serve.out";
    pid_ = e2e::StartCli(dir_, {"serve", "--listen", "127.0.0.1:0", "--poll-seconds", "1"}, out_,
                         dir_ + "/serve.err");
    ASSERT_GT(pid_, 0);
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    while (Clock::now() < deadline) {
      std::istringstream lines(Slurp(out_));
      std::string line;
      while (std::getline(lines, line)) {
        json j = json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.value("event", "") == "api_listening") {
          base_ = fmt::format("http://127.0.0.1:{}", j["port"].get<int>());
          return;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "the service did not start listening: " << Slurp(out_) << Slurp(dir_ + "/serve.err");
  }

  // SIGTERM; returns the exit code.
  int Stop() {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  struct Reply {
    int status = 0;
    json body;
    std::string text;
  };

  Reply Call(const std::string& method, const std::string& path, const std::string& token,
             const std::string& body = "") {
    HttpRequest req;
    req.method = method;
    req.url = base_ + path;
    req.body = body;
    if (!token.empty()) req.headers.emplace_back("Authorization", "Bearer " + token);
    if (!body.empty()) req.headers.emplace_back("Content-Type", "application/json");
    auto res = http_->Send(req);
    EXPECT_TRUE(res.ok()) << res.status();
    Reply r;
    if (!res.ok()) return r;
    r.status = res->status;
    r.text = res->body;
    r.body = json::parse(res->body, nullptr, false);
    return r;
  }

  // Polls GET /runs/{id} until the run is no longer queued or running.
  json WaitForRun(int64_t id, const std::string& token) {
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    json run;
    while (Clock::now() < deadline) {
      run = Call("GET", fmt::format("/api/v1/runs/{}", id), token).body;
      std::string status = run.value("status", "");
      if (status != "queued" && status != "running") return run;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "run " << id << " did not finish: " << run.dump();
    return run;
  }

  int64_t Trigger(const std::string& token) {
    Reply r = Call("POST", "/api/v1/mappings/customers_to_hook/runs", token);
    EXPECT_EQ(r.status, 202) << r.text;
    if (r.status != 202) return 0;
    return r.body["runs"][0]["id"].get<int64_t>();
  }

  testing::ScratchDir scratch_{"api-e2e"};
  const std::string dir_ = scratch_.string();
  std::string out_;
  std::string base_;
  pid_t pid_ = 0;
  WebhookReceiver receiver_;
  std::unique_ptr<sqlite::Database> warehouse_;
  std::unique_ptr<HttpClient> http_;
};

TEST_F(ApiE2eTest, RunsAreTriggeredFollowedInspectedAndCancelledOverHttp) {
  const std::string writer = CreateToken("ci", false);
  const std::string reader = CreateToken("dashboard", true);
  ASSERT_EQ(writer.rfind("bf_", 0), 0u) << writer;
  Serve();

  EXPECT_EQ(Call("GET", "/healthz", "").status, 200);
  EXPECT_EQ(Call("GET", "/readyz", "").status, 200);
  EXPECT_EQ(Call("GET", "/api/v1/runs", "").status, 401);
  EXPECT_EQ(Call("POST", "/api/v1/mappings/customers_to_hook/runs", reader).status, 403);

  // A triggered run is picked up by the worker and delivers everything.
  int64_t first = Trigger(writer);
  json run = WaitForRun(first, reader);
  EXPECT_EQ(run["status"], "succeeded") << run.dump();
  EXPECT_EQ(run["trigger"], "api");
  EXPECT_EQ(run["counts"]["added"], 100);
  EXPECT_EQ(run["counts"]["succeeded"], 100);
  EXPECT_FALSE(run["worker"].is_null());
  EXPECT_EQ(receiver_.State().size(), 100u);

  // Failed records are listed with the error, the payload and what to do.
  receiver_.RejectKey("5", "email domain not allowed");
  Exec("UPDATE customers SET email = 'new5@example.com' WHERE id = 5");
  int64_t second = Trigger(writer);
  run = WaitForRun(second, reader);
  EXPECT_EQ(run["status"], "partial") << run.dump();
  EXPECT_EQ(run["counts"]["failed"], 1);
  Reply records =
      Call("GET", fmt::format("/api/v1/runs/{}/records?outcome=failed", second), reader);
  ASSERT_EQ(records.status, 200) << records.text;
  ASSERT_EQ(records.body["records"].size(), 1u);
  EXPECT_EQ(records.body["records"][0]["key"], "5");
  EXPECT_NE(records.body["records"][0]["error"].get<std::string>().find("email domain"),
            std::string::npos);
  EXPECT_EQ(records.body["records"][0]["payload"]["email"], "new5@example.com");
  EXPECT_FALSE(records.body["records"][0]["recommended_action"].get<std::string>().empty());
  receiver_.ClearRejections();

  // Cancel a run mid-delivery: it stops after the batch in flight, and the
  // next run sends the rest, nothing twice.
  Exec(
      "WITH RECURSIVE n(i) AS (SELECT 101 UNION ALL SELECT i + 1 FROM n WHERE i < 400) "
      "INSERT INTO customers SELECT i, 'c' || i || '@example.com' FROM n");
  receiver_.ClearHistory();
  receiver_.HoldFrom(3);
  int64_t third = Trigger(writer);
  ASSERT_TRUE(receiver_.WaitForHeld(std::chrono::seconds(30)));
  Reply cancelled = Call("POST", fmt::format("/api/v1/runs/{}/cancel", third), writer);
  EXPECT_EQ(cancelled.status, 202) << cancelled.text;
  EXPECT_EQ(cancelled.body["cancel_requested"], true);
  EXPECT_EQ(Call("POST", fmt::format("/api/v1/runs/{}/cancel", third), reader).status, 403);
  // The worker notices within a lease-keeper period; then the held batch completes.
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Slurp(out_).find("run_cancel_requested") == std::string::npos && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(Slurp(out_).find("run_cancel_requested"), std::string::npos);
  receiver_.Release();
  run = WaitForRun(third, reader);
  EXPECT_EQ(run["status"], "cancelled") << run.dump();
  EXPECT_LT(run["counts"]["succeeded"].get<int>(), 300) << run.dump();
  int64_t fourth = Trigger(writer);
  run = WaitForRun(fourth, reader);
  EXPECT_EQ(run["status"], "succeeded") << run.dump();
  // Since the history was cleared: the 300 new rows, and row 5, whose failed
  // update is retried by the next run.
  auto state = receiver_.State();
  EXPECT_EQ(state.size(), 301u);
  EXPECT_EQ(state["5"]["email"], "new5@example.com");
  EXPECT_EQ(state.count("400"), 1u);
  std::map<std::string, int> sent;
  for (const ReceivedRequest& r : receiver_.Requests()) {
    for (const std::string& k : r.record_keys) ++sent[k];
  }
  for (const auto& [key, n] : sent) EXPECT_EQ(n, 1) << "key " << key << " sent " << n << " times";
  EXPECT_EQ(sent.size(), 301u);

  // Runs list, newest first, filtered by status.
  Reply list = Call("GET", "/api/v1/runs?mapping=customers_to_hook&limit=2", reader);
  ASSERT_EQ(list.status, 200);
  ASSERT_EQ(list.body["runs"].size(), 2u);
  EXPECT_EQ(list.body["runs"][0]["id"], fourth);
  EXPECT_FALSE(list.body["next_cursor"].is_null());
  Reply cancelled_runs = Call("GET", "/api/v1/runs?status=cancelled", reader);
  ASSERT_EQ(cancelled_runs.body["runs"].size(), 1u);

  // Metrics.
  Reply metrics = Call("GET", "/metrics", reader);
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.text.find(
                "backflow_runs_total{mapping=\"customers_to_hook\",status=\"succeeded\"} 2"),
            std::string::npos)
      << metrics.text;
  EXPECT_NE(metrics.text.find("backflow_http_requests_total{host=\"127.0.0.1:"), std::string::npos);
  EXPECT_NE(metrics.text.find("backflow_run_duration_seconds_count{mapping=\"customers_to_hook\"}"),
            std::string::npos);
  for (const char* family :
       {"backflow_records_total{mapping=\"customers_to_hook\",outcome=\"failed\"} 1",
        "backflow_rows_extracted_total{model=\"customers\"}", "backflow_queue_depth{status=",
        "backflow_last_success_timestamp_seconds{mapping=\"customers_to_hook\"}",
        "backflow_rate_limit_wait_seconds_total "}) {
    EXPECT_NE(metrics.text.find(family), std::string::npos) << family << "\n" << metrics.text;
  }

  // The log has the run ids; the service stops cleanly.
  EXPECT_EQ(Stop(), 0);
  std::string log = Slurp(out_);
  EXPECT_NE(log.find(fmt::format("\"run_id\":{}", fourth)), std::string::npos) << log;
  EXPECT_EQ(log.find(writer), std::string::npos) << "a token leaked into the log";
}

// Against the real process: every operation of the OpenAPI document is
// served (never "no route" or 405), and bad input gets its status and field.
TEST_F(ApiE2eTest, TheOpenApiDocumentMatchesTheServedRoutesAndBadInputIsRefused) {
  const std::string token = CreateToken("ci", false);
  Serve();
  Reply doc = Call("GET", "/api/v1/openapi.json", token);
  ASSERT_EQ(doc.status, 200);
  ASSERT_EQ(doc.body["openapi"], "3.1.0");
  int operations = 0;
  for (auto& [path, item] : doc.body["paths"].items()) {
    for (auto& [method, op] : item.items()) {
      ++operations;
      std::string upper = method;
      for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      std::string concrete = path;
      for (const char* p : {"{id}", "{name}"}) {
        size_t at = concrete.find(p);
        if (at != std::string::npos) concrete.replace(at, strlen(p), "nope");
      }
      // No token: every operation but the health probes says 401.
      Reply anonymous = Call(upper, concrete, "");
      if (path == "/healthz" || path == "/readyz") {
        EXPECT_EQ(anonymous.status, 200) << path;
      } else {
        EXPECT_EQ(anonymous.status, 401) << upper << " " << path;
      }
      Reply r = Call(upper, concrete, token);
      EXPECT_NE(r.status, 405) << upper << " " << concrete;
      EXPECT_EQ(r.text.find("no route"), std::string::npos) << upper << " " << concrete;
      EXPECT_TRUE(op.contains("responses")) << path;
    }
  }
  EXPECT_GT(operations, 30);
  Reply unknown = Call("GET", "/api/v1/nothing-here", token);
  EXPECT_EQ(unknown.status, 404);
  EXPECT_NE(unknown.text.find("no route"), std::string::npos);

  Reply param = Call("GET", "/api/v1/runs?colour=red", token);
  EXPECT_EQ(param.status, 400);
  EXPECT_EQ(param.body["error"]["field"], "colour");
  Reply malformed = Call("POST", "/api/v1/mappings/customers_to_hook/runs", token, "{\"full");
  EXPECT_EQ(malformed.status, 400);
  Reply wrong_type =
      Call("POST", "/api/v1/mappings/customers_to_hook/runs", token, R"({"full_resync": 1})");
  EXPECT_EQ(wrong_type.status, 422);
  EXPECT_EQ(wrong_type.body["error"]["field"], "full_resync");
  Reply too_big =
      Call("POST", "/api/v1/mappings/customers_to_hook/runs", token, std::string(2 << 20, ' '));
  EXPECT_EQ(too_big.status, 413);
  EXPECT_EQ(Stop(), 0);
}

TEST_F(ApiE2eTest, TheApiIsRefusedOffLoopbackWithoutATokenAndRevokedTokensStopWorking) {
  CliResult refused = RunCli(dir_, {"serve", "--listen", "0.0.0.0:0"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("no API token"), std::string::npos) << refused.err;
  CliResult bad = RunCli(dir_, {"serve", "--listen", "localhost"});
  EXPECT_EQ(bad.exit_code, 3) << bad.err;

  const std::string token = CreateToken("ops", false);
  CliResult again = RunCli(dir_, {"token", "create", "ops"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("exists"), std::string::npos) << again.err;
  CliResult list = RunCli(dir_, {"token", "list"});
  EXPECT_NE(list.out.find("ops"), std::string::npos);
  EXPECT_EQ(list.out.find(token), std::string::npos) << "token list must not show the token";

  Serve();
  EXPECT_EQ(Call("GET", "/api/v1/runs", token).status, 200);
  ASSERT_EQ(RunCli(dir_, {"token", "revoke", "ops"}).exit_code, 0);
  Reply revoked = Call("GET", "/api/v1/runs", token);
  EXPECT_EQ(revoked.status, 401);
  EXPECT_EQ(revoked.body["error"]["code"], "unauthenticated");
}

}  // namespace
}  // namespace backflow
