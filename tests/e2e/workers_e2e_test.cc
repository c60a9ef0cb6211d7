// Several `backflow serve` processes sharing a PostgreSQL state store
// (ctest fixture `postgres`), through the real binary:
//  * a worker killed with SIGKILL mid-delivery loses its lease; the other
//    process takes the run over and finishes it from the in-flight journal:
//    the webhook receiver ends up exactly equal to the model (PostgreSQL
//    table), nothing lost, and only the batches in flight at the kill sent
//    twice; repeated at three kill points, with updates, deletes and inserts
//    in between (and while the run is orphaned), and once with the worker
//    stalled (SIGSTOP) rather than killed; meanwhile `backflow sync` of
//    the same mapping from another copy of the workspace is refused;
//  * processes started together queue each due schedule tick exactly once.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "absl/time/time.h"
#include "backflow/common/http_client.h"
#include "backflow/pg/connection.h"
#include "backflow/testing/process.h"
#include "backflow/testing/webhook_receiver.h"
#include "cli_runner.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "pg_e2e.h"

namespace backflow {
namespace {

using e2e::CliResult;
using e2e::RunCli;
using Json = nlohmann::json;
using Steady = std::chrono::steady_clock;

constexpr int kBatch = 50;
constexpr int kConcurrency = 2;

// A `backflow serve` child process.
struct ServeProcess {
  std::string name;
  pid_t pid = -1;
  int port = 0;
  std::string out;  // its stdout (JSON log lines)
};

struct ApiReply {
  int status = 0;  // 0: no answer
  Json body;
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The JSON log lines of `out` whose "event" is `event`.
std::vector<Json> Events(const std::string& out, const std::string& event) {
  std::vector<Json> found;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    Json j = Json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("event", "") == event) found.push_back(j);
  }
  return found;
}

// The pid in a worker id "HOST:PID:N".
pid_t WorkerPid(const std::string& worker) {
  size_t last = worker.rfind(':');
  if (last == std::string::npos || last == 0) return -1;
  size_t before = worker.rfind(':', last - 1);
  if (before == std::string::npos) return -1;
  return static_cast<pid_t>(std::stol(worker.substr(before + 1, last - before - 1)));
}

// What differs between the model and the receiver, briefly; empty when equal.
std::string Difference(const std::map<std::string, Json>& want,
                       const std::map<std::string, Json>& got) {
  std::vector<std::string> missing, extra, different;
  for (const auto& [key, fields] : want) {
    auto it = got.find(key);
    if (it == got.end()) {
      missing.push_back(key);
    } else if (it->second != fields) {
      different.push_back(fmt::format("{}: want {} got {}", key, fields.dump(), it->second.dump()));
    }
  }
  for (const auto& [key, fields] : got) {
    if (want.count(key) == 0) extra.push_back(key);
  }
  if (missing.empty() && extra.empty() && different.empty()) return "";
  auto some = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + v[i];
    return fmt::format("{} ({})", v.size(), s);
  };
  return fmt::format("model {} rows, receiver {} records; missing {}; extra {}; different {}",
                     want.size(), got.size(), some(missing), some(extra), some(different));
}

class WorkersE2eTest : public e2e::PostgresE2eTest {
 protected:
  void SetUp() override {
    if (!SetUpE2e("workers")) return;
    state_db_ = table_ + "_state";
    auto admin = AdminConnect();
    ASSERT_TRUE(admin.ok()) << admin.status();
    ASSERT_TRUE((*admin)->Exec(fmt::format("CREATE DATABASE {} OWNER backflow", state_db_)).ok());
    ASSERT_TRUE(receiver_.Start().ok());
    http_ = NewCurlHttpClient();
  }

  void TearDown() override {
    for (ServeProcess& p : procs_) Kill(p);
    receiver_.Stop();
    if (state_db_.empty()) return;
    auto admin = AdminConnect();
    if (admin.ok()) {
      (void)(*admin)->Exec(fmt::format("DROP DATABASE IF EXISTS {} WITH (FORCE)", state_db_));
    }
    auto conn = Connect();
    if (conn.ok()) (void)(*conn)->Exec(fmt::format("DROP TABLE IF EXISTS {}", table_));
  }

  void CreateTable(int rows) {
    ExecOrFail(fmt::format(
        "CREATE TABLE {} (id bigint PRIMARY KEY, email text NOT NULL, plan text NOT NULL, "
        "score integer NOT NULL)",
        table_));
    ExecOrFail(fmt::format(
        "INSERT INTO {} SELECT g, 'user' || g || '@example.com', CASE WHEN g % 3 = 0 THEN "
        "'team' ELSE 'free' END, g % 97 FROM generate_series(1, {}) g",
        table_, rows));
  }

  void WriteWorkspace(const std::string& schedule) {
    std::ofstream(dir_ + "/backflow.yaml")
        << fmt::format(R"(
state: postgresql://backflow:${{env:BACKFLOW_E2E_PG_PASSWORD}}@127.0.0.1:{port}/{state}
sources:
  - name: warehouse
    type: postgres
    url: {source}
    password: ${{env:BACKFLOW_E2E_PG_PASSWORD}}
models:
  - name: customers
    source: warehouse
    sql: SELECT id, email, plan, score FROM {table}
    primary_key: id
    schedule: {schedule}
destinations:
  - {{ name: hook, type: webhook, settings: {{ url: "{url}", concurrency: {concurrency} }} }}
mappings:
  - name: to_hook
    model: customers
    destination: hook
    action: send_batch
    batch_size: {batch}
    fields: {{ id: id, email: email, plan: plan, score: score }}
)",
                       fmt::arg("port", server().port), fmt::arg("state", state_db_),
                       fmt::arg("source", server().url), fmt::arg("table", table_),
                       fmt::arg("schedule", schedule), fmt::arg("url", receiver_.Url()),
                       fmt::arg("concurrency", kConcurrency), fmt::arg("batch", kBatch));
  }

  // The model as the receiver should hold it: id -> fields.
  std::map<std::string, Json> Model() {
    std::map<std::string, Json> rows;
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return rows;
    auto r = (*conn)->Exec(fmt::format("SELECT id, email, plan, score FROM {}", table_));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return rows;
    PGresult* res = r->get();
    for (int i = 0; i < PQntuples(res); ++i) {
      const std::string id = PQgetvalue(res, i, 0);
      rows[id] = Json{{"id", std::stoll(id)},
                      {"email", PQgetvalue(res, i, 1)},
                      {"plan", PQgetvalue(res, i, 2)},
                      {"score", std::stoll(PQgetvalue(res, i, 3))}};
    }
    return rows;
  }

  absl::StatusOr<std::unique_ptr<pg::Connection>> StateConnection() {
    return pg::Connection::Open(
        {fmt::format("postgresql://backflow@127.0.0.1:{}/{}", server().port, state_db_),
         server().password,
         10,
         {}});
  }

  // Sessions of the state database waiting for a lock.
  int LockWaiters() {
    std::string n = StateValue(fmt::format(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
        state_db_));
    return n.empty() ? -1 : std::stoi(n);
  }

  // The first column of the first row of `sql` on the state database.
  std::string StateValue(const std::string& sql) {
    auto conn = StateConnection();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return "";
    auto result = (*conn)->Exec(sql);
    EXPECT_TRUE(result.ok()) << result.status() << "\nSQL: " << sql;
    if (!result.ok() || PQntuples(result->get()) == 0) return "";
    return PQgetvalue(result->get(), 0, 0);
  }

  // Polls `done` every 20 ms until it holds or `timeout` passes.
  template <typename Done>
  static bool WaitFor(Done done, std::chrono::milliseconds timeout) {
    const auto deadline = Steady::now() + timeout;
    while (!done()) {
      if (Steady::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }

  ApiReply Call(const ServeProcess& p, const std::string& method, const std::string& path,
                const std::string& body = "") {
    HttpRequest req;
    req.method = method;
    req.url = fmt::format("http://127.0.0.1:{}{}", p.port, path);
    req.headers = {{"Authorization", "Bearer " + token_}};
    if (!body.empty()) req.headers.push_back({"Content-Type", "application/json"});
    req.body = body;
    req.timeout = std::chrono::milliseconds(5'000);
    absl::StatusOr<HttpResponse> r = http_->Send(req);
    ApiReply out;
    if (!r.ok()) return out;
    out.status = r->status;
    out.body = Json::parse(r->body, nullptr, false);
    return out;
  }

  // Starts `serve --listen` with a short lease and waits until it answers.
  ServeProcess StartServe(const std::string& name) {
    ServeProcess p;
    p.name = name;
    p.port = testing::UnusedPort();
    p.out = fmt::format("{}/{}.out", dir_, name);
    p.pid = e2e::StartCli(dir_,
                          {"serve", "--listen", fmt::format("127.0.0.1:{}", p.port),
                           "--lease-seconds", "3", "--poll-seconds", "1"},
                          p.out, fmt::format("{}/{}.err", dir_, name));
    bool exited = false;
    bool ready = WaitFor(
        [&] {
          int status = 0;
          if (waitpid(p.pid, &status, WNOHANG) == p.pid) {
            exited = true;
            return true;
          }
          HttpRequest req;
          req.method = "GET";
          req.url = fmt::format("http://127.0.0.1:{}/readyz", p.port);
          req.timeout = std::chrono::milliseconds(1'000);
          absl::StatusOr<HttpResponse> r = http_->Send(req);
          return r.ok() && r->status == 200;
        },
        std::chrono::seconds(30));
    EXPECT_TRUE(ready && !exited) << name << " did not start: " << Slurp(p.out)
                                  << Slurp(fmt::format("{}/{}.err", dir_, name));
    if (exited) p.pid = -1;
    return p;
  }

  static void Kill(ServeProcess& p, int signal = SIGKILL) {
    if (p.pid <= 0) return;
    kill(p.pid, signal);
    waitpid(p.pid, nullptr, 0);
    p.pid = -1;
  }

  std::string state_db_;
  WebhookReceiver receiver_;
  std::unique_ptr<HttpClient> http_;
  std::string token_;
  std::vector<ServeProcess> procs_;
};

// One run, killed once: what changes before it, how many batches the
// receiver answers before the kill (the next ones are held, in flight, when
// the worker dies), and what changes while the run has no live worker. With
// `stall`, the worker is stopped (SIGSTOP) instead, and resumed once the
// other process took its run over and waits for the mapping it still holds.
struct KillPoint {
  std::string name;
  std::vector<std::string> changes;
  int answered_before_kill = 0;
  std::vector<std::string> changes_while_orphaned;
  bool stall = false;
};

TEST_F(WorkersE2eTest, AKilledWorkersRunIsFinishedByTheOtherProcessWithNothingLost) {
  constexpr int kRows = 3000;
  CreateTable(kRows);
  WriteWorkspace("manual");
  CliResult token = RunCli(dir_, {"token", "create", "e2e"});
  ASSERT_EQ(token.exit_code, 0) << token.out << token.err;
  token_ = token.LastLine();
  ASSERT_FALSE(token_.empty());

  procs_.push_back(StartServe("a"));
  procs_.push_back(StartServe("b"));
  ASSERT_GT(procs_[0].pid, 0);
  ASSERT_GT(procs_[1].pid, 0);

  const std::string t = table_;
  const std::vector<KillPoint> points = {
      {"initial load, killed after 8 of 60 batches", {}, 8, {}},
      {"updates, deletes and inserts, killed after 3 batches",
       {fmt::format("UPDATE {} SET score = score + 1000, plan = 'pro' WHERE id % 7 = 0", t),
        fmt::format("DELETE FROM {} WHERE id % 11 = 0", t),
        fmt::format("INSERT INTO {} SELECT g, 'new' || g || '@example.com', 'free', 1 FROM "
                    "generate_series({}, {}) g",
                    t, kRows + 1, kRows + 250)},
       3,
       {}},
      {"killed with its first batches in flight, the table changing meanwhile",
       {fmt::format("UPDATE {} SET email = 'moved' || id || '@example.org' WHERE id % 5 = 0", t)},
       0,
       {fmt::format("UPDATE {} SET score = -1 WHERE id % 5 = 0 AND id < 500", t),
        fmt::format("DELETE FROM {} WHERE id BETWEEN 100 AND 150", t),
        fmt::format("INSERT INTO {} SELECT g, 'late' || g || '@example.com', 'team', 7 FROM "
                    "generate_series(5000, 5010) g",
                    t)}},
      {"stalled (SIGSTOP) after 5 batches until its run was taken over",
       {fmt::format("UPDATE {} SET plan = 'enterprise' WHERE id % 4 = 1", t)},
       5,
       {},
       true},
  };
  int restarts = 0;
  for (size_t round = 0; round < points.size(); ++round) {
    const KillPoint& point = points[round];
    SCOPED_TRACE(point.name);
    for (const std::string& sql : point.changes) ExecOrFail(sql);
    const int64_t before = receiver_.request_count();
    receiver_.HoldFrom(before + point.answered_before_kill + 1);

    // Triggered on one process (each in turn); either may claim it.
    const ServeProcess& trigger = procs_[round % 2];
    ApiReply queued = Call(trigger, "POST", "/api/v1/models/customers/runs", "{}");
    ASSERT_EQ(queued.status, 202) << queued.body.dump();
    const int64_t run_id = queued.body["runs"][0]["id"].get<int64_t>();
    ASSERT_TRUE(receiver_.WaitForHeld(std::chrono::seconds(30)))
        << "the run never reached its batch " << point.answered_before_kill + 1;
    ApiReply running = Call(trigger, "GET", fmt::format("/api/v1/runs/{}", run_id));
    ASSERT_EQ(running.status, 200);
    ASSERT_EQ(running.body["status"], "running") << running.body.dump();
    const pid_t claimer = WorkerPid(running.body.value("worker", ""));
    const int victim = procs_[0].pid == claimer ? 0 : procs_[1].pid == claimer ? 1 : -1;
    ASSERT_NE(victim, -1) << "worker " << running.body.dump() << " is neither process";
    ServeProcess& dead = procs_[victim];
    ServeProcess& survivor = procs_[1 - victim];
    // With two sessions, the batch before the held one may still be being
    // recorded when the held one arrives: wait for it (held ones never are).
    EXPECT_TRUE(
        receiver_.WaitForRequests(before + point.answered_before_kill, std::chrono::seconds(10)));
    EXPECT_EQ(receiver_.request_count(), before + point.answered_before_kill);
    if (round == 0) {
      // `backflow sync` from another machine's copy of the workspace (its own
      // local lock files, the same state store) is refused while the worker
      // syncs the mapping, and says who holds it.
      const std::string laptop = dir_ + "/laptop";
      std::filesystem::create_directories(laptop);
      std::filesystem::copy_file(dir_ + "/backflow.yaml", laptop + "/backflow.yaml");
      CliResult sync = RunCli(laptop, {"sync", "to_hook"});
      EXPECT_NE(sync.exit_code, 0) << sync.out << sync.err;
      EXPECT_NE(sync.err.find("mapping \"to_hook\" is being synced by another backflow process"),
                std::string::npos)
          << sync.err;
      EXPECT_NE(sync.err.find(fmt::format(" pid {}\" from 127.0.0.1", claimer)), std::string::npos)
          << sync.err;
      EXPECT_EQ(sync.err.find(server().password), std::string::npos);
    }

    if (!point.stall) {
      Kill(dead);  // SIGKILL mid-delivery, batches held in flight
      receiver_.Release();
    } else {
      // Stopped mid-delivery: its lease expires and the other process takes
      // the run over, but must wait for the mapping, which the stopped
      // process still holds.
      ASSERT_EQ(kill(dead.pid, SIGSTOP), 0);
      receiver_.Release();
      std::vector<Json> waiting;
      EXPECT_TRUE(WaitFor(
          [&] {
            waiting = Events(Slurp(survivor.out), "run_waiting");
            return !waiting.empty();
          },
          std::chrono::seconds(30)))
          << Slurp(survivor.out);
      if (!waiting.empty()) {
        EXPECT_NE(waiting.back().value("reason", "").find(fmt::format(" pid {}\"", dead.pid)),
                  std::string::npos)
            << waiting.back().dump();
      }
      // Resumed: it learns it lost the run, stops after its batches in
      // flight, and its late writes to the run are refused.
      ASSERT_EQ(kill(dead.pid, SIGCONT), 0);
      EXPECT_TRUE(WaitFor(
          [&] {
            for (const Json& e : Events(Slurp(dead.out), "run_abandoned")) {
              if (e["run_ids"].size() == 1 && e["run_ids"][0] == run_id) return true;
            }
            return false;
          },
          std::chrono::seconds(30)))
          << Slurp(dead.out);
    }
    for (const std::string& sql : point.changes_while_orphaned) ExecOrFail(sql);

    // The survivor takes the run over once the lease (3 s) expires, and finishes it.
    Json finished;
    ASSERT_TRUE(WaitFor(
        [&] {
          ApiReply r = Call(survivor, "GET", fmt::format("/api/v1/runs/{}", run_id));
          if (r.status != 200) return false;
          finished = r.body;
          return finished["status"] != "running" && finished["status"] != "queued";
        },
        std::chrono::seconds(40)))
        << "run " << run_id << " was not finished by the surviving process: " << finished.dump()
        << "\n"
        << Slurp(survivor.out);
    EXPECT_EQ(finished["status"], "succeeded") << finished.dump();
    EXPECT_EQ(WorkerPid(finished.value("worker", "")), survivor.pid) << finished.dump();

    // Exactly the model: every row with its latest values, nothing extra.
    EXPECT_EQ(Difference(Model(), receiver_.State()), "");
    // Sent twice: at most the batches in flight when the worker died.
    std::map<std::string, int> applied;
    for (const ReceivedRequest& r : receiver_.Requests()) {
      if (r.sequence <= before || !r.applied) continue;
      for (const std::string& key : r.record_keys) ++applied[key];
    }
    int twice = 0;
    for (const auto& [key, n] : applied) twice += n > 1;
    EXPECT_LE(twice, kBatch * kConcurrency);
    std::printf("[ kill     ] %s: run %lld taken over by %s; %d records received twice\n",
                point.name.c_str(), static_cast<long long>(run_id), survivor.name.c_str(), twice);
    EXPECT_EQ(StateValue("SELECT count(*) FROM backflow.in_flight"), "0");
    EXPECT_EQ(receiver_.bad_signature_count() + receiver_.malformed_count(), 0);

    // Two processes again for the next round.
    if (!point.stall) {
      dead = StartServe(fmt::format("restarted{}", ++restarts));
      ASSERT_GT(dead.pid, 0);
    }
  }

  // Every run finished once, by one worker; the survivors stop cleanly.
  ApiReply runs = Call(procs_[0], "GET", "/api/v1/runs?mapping=to_hook");
  ASSERT_EQ(runs.status, 200);
  ASSERT_EQ(runs.body["runs"].size(), points.size()) << runs.body.dump();
  for (const Json& r : runs.body["runs"]) EXPECT_EQ(r["status"], "succeeded") << r.dump();
  for (ServeProcess& p : procs_) {
    ASSERT_EQ(kill(p.pid, SIGTERM), 0);
    int status = 0;
    ASSERT_EQ(waitpid(p.pid, &status, 0), p.pid);
    p.pid = -1;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << Slurp(p.out);
  }
}

TEST_F(WorkersE2eTest, ProcessesStartedTogetherQueueEachScheduleTickOnce) {
  CreateTable(20);
  WriteWorkspace("{ every: 1h }");
  constexpr int kProcesses = 3;
  auto start_together = [&](const std::string& round, const std::vector<std::string>& args) {
    std::vector<ServeProcess> started;
    for (int i = 0; i < kProcesses; ++i) {
      ServeProcess p;
      p.name = fmt::format("{}-{}", round, i);
      p.out = fmt::format("{}/{}.out", dir_, p.name);
      p.pid = e2e::StartCli(dir_, args, p.out, fmt::format("{}/{}.err", dir_, p.name));
      started.push_back(p);
    }
    return started;
  };
  auto count_events = [&](const std::vector<ServeProcess>& ps, const std::string& event) {
    std::multiset<std::string> ticks;
    for (const ServeProcess& p : ps) {
      for (const Json& e : Events(Slurp(p.out), event)) ticks.insert(e["tick"]);
    }
    return ticks;
  };
  // Makes the race certain: the test holds the model's schedule row, so every
  // process reads the same state, decides the same tick and waits to store
  // it; then the row is let go and they race for it.
  std::unique_ptr<pg::Connection> holder;
  auto hold_schedule_row = [&] {
    auto conn = StateConnection();
    ASSERT_TRUE(conn.ok()) << conn.status();
    holder = *std::move(conn);
    ASSERT_TRUE(holder->Exec("BEGIN").ok());
    auto locked = holder->Exec(
        "SELECT last_tick FROM backflow.schedule_state WHERE model = 'customers' FOR UPDATE");
    ASSERT_TRUE(locked.ok()) << locked.status();
    ASSERT_EQ(PQntuples(locked->get()), 1);
  };
  auto let_them_race = [&] {
    EXPECT_TRUE(WaitFor([&] { return LockWaiters() == kProcesses; }, std::chrono::seconds(30)))
        << "not every process reached the schedule row; waiting: " << LockWaiters();
    ASSERT_TRUE(holder->Exec("COMMIT").ok());
    holder.reset();
  };

  // Decisions at chosen times: each process decides, runs what is queued and exits.
  struct Round {
    std::string now;
    std::vector<std::string> due;
  };
  const std::vector<Round> rounds = {
      {"2026-03-01T10:20:00Z", {}},  // first sight: counting starts
      {"2026-03-01T11:00:00Z", {"2026-03-01T11:00:00Z"}},
      {"2026-03-01T11:30:00Z", {}},
      {"2026-03-01T15:10:00Z", {"2026-03-01T15:00:00Z"}},  // 12:00 to 14:00 folded in
  };
  int64_t runs = 0;
  for (const Round& round : rounds) {
    SCOPED_TRACE(round.now);
    const bool race = !round.due.empty();
    if (race) hold_schedule_row();
    std::vector<ServeProcess> ps =
        start_together(round.now.substr(11, 5), {"serve", "--once", "--now", round.now});
    if (race) let_them_race();
    for (ServeProcess& p : ps) {
      int status = 0;
      ASSERT_EQ(waitpid(p.pid, &status, 0), p.pid);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << Slurp(p.out) << Slurp(dir_ + "/" + p.name + ".err");
    }
    EXPECT_EQ(count_events(ps, "schedule_due"),
              std::multiset<std::string>(round.due.begin(), round.due.end()));
    if (race) {
      EXPECT_EQ(count_events(ps, "schedule_decided_elsewhere").size(), size_t{kProcesses - 1});
    }
    runs += static_cast<int64_t>(round.due.size());
    EXPECT_EQ(StateValue("SELECT count(*) FROM backflow.runs WHERE trigger = 'schedule'"),
              std::to_string(runs));
  }
  EXPECT_EQ(StateValue("SELECT count(*) FROM backflow.runs WHERE status <> 'succeeded'"), "0");
  EXPECT_EQ(StateValue("SELECT missed_ticks FROM backflow.schedule_state WHERE model = "
                       "'customers'"),
            "3");
  EXPECT_EQ(Difference(Model(), receiver_.State()), "");

  // Long-running processes started together, with a tick due at once.
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  StateValue(fmt::format(
      "UPDATE backflow.schedule_state SET last_tick = {} WHERE model = 'customers' RETURNING 1",
      now - 2 * 3600));
  hold_schedule_row();
  std::vector<ServeProcess> ps = start_together("live", {"serve", "--poll-seconds", "1"});
  let_them_race();
  ASSERT_TRUE(WaitFor(
      [&] {
        return StateValue(
                   "SELECT count(*) FROM backflow.runs WHERE trigger = 'schedule' AND "
                   "status = 'succeeded'") == std::to_string(runs + 1);
      },
      std::chrono::seconds(30)));
  // SIGTERM: each process finishes its scheduling pass before it stops.
  for (ServeProcess& p : ps) {
    ASSERT_EQ(kill(p.pid, SIGTERM), 0);
    int status = 0;
    ASSERT_EQ(waitpid(p.pid, &status, 0), p.pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << Slurp(p.out);
  }
  std::multiset<std::string> ticks = count_events(ps, "schedule_due");
  ASSERT_EQ(ticks.size(), 1u) << "one tick was due, decided by one process";
  const std::vector<std::string> others(kProcesses - 1, *ticks.begin());
  EXPECT_EQ(count_events(ps, "schedule_decided_elsewhere"),
            std::multiset<std::string>(others.begin(), others.end()));
  EXPECT_EQ(StateValue("SELECT count(*) FROM backflow.runs WHERE trigger = 'schedule'"),
            std::to_string(runs + 1));
  absl::Time decided;
  std::string error;
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, *ticks.begin(), &decided, &error)) << error;
  EXPECT_EQ(StateValue("SELECT last_tick FROM backflow.schedule_state WHERE model = 'customers'"),
            std::to_string(absl::ToUnixSeconds(decided)));
  EXPECT_EQ(Difference(Model(), receiver_.State()), "");
}

}  // namespace
}  // namespace backflow
