// bench_http_sink: a loopback HTTP/1.1 sink for the benchmarks.
//
// Usage: bench_http_sink PORT_FILE
//
// Listens on 127.0.0.1 on an ephemeral port (backflow::HttpTestServer: one
// thread per connection, keep-alive), writes the port to PORT_FILE (atomically,
// via PORT_FILE.tmp and rename) once it accepts connections, and then answers
// every request:
//   - GET /stats: 200 with {"requests": R, "records": N, "bytes": B}, the totals
//     of the POSTs received so far;
//   - anything else: 200 with an empty JSON object ("{}"), after adding 1 to
//     the request count, the body's size to the byte count and the body's
//     top-level "count" number (the webhook destination's and
//     bench/baseline_sync.py's batch size field; 0 if absent) to the record
//     count. The body is not otherwise parsed, so the sink costs next to
//     nothing per request.
// On SIGTERM or SIGINT it stops, prints the same JSON totals on stdout and
// exits 0. Exit code 1 if the server cannot start.
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "backflow/testing/http_test_server.h"
#include "fmt/format.h"

namespace {

std::atomic<int64_t> g_requests{0};
std::atomic<int64_t> g_records{0};
std::atomic<int64_t> g_bytes{0};

// The value of the first `"count":` in `body`, or 0.
int64_t CountField(std::string_view body) {
  size_t at = body.find("\"count\"");
  if (at == std::string_view::npos) return 0;
  at += 7;
  while (at < body.size() && (body[at] == ' ' || body[at] == ':')) ++at;
  int64_t n = 0;
  while (at < body.size() && body[at] >= '0' && body[at] <= '9') {
    n = n * 10 + (body[at] - '0');
    ++at;
  }
  return n;
}

std::string StatsJson() {
  return fmt::format("{{\"requests\": {}, \"records\": {}, \"bytes\": {}}}", g_requests.load(),
                     g_records.load(), g_bytes.load());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    fmt::print(stderr, "usage: {} PORT_FILE\n", argv[0]);
    return 2;
  }
  const std::string port_file = argv[1];

  // Block the stop signals before any thread starts so only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  backflow::HttpTestServer server([](const backflow::TestRequest& req) {
    if (req.method == "GET" && req.target == "/stats") {
      return backflow::TestResponse::Json(200, StatsJson());
    }
    g_requests.fetch_add(1, std::memory_order_relaxed);
    g_bytes.fetch_add(static_cast<int64_t>(req.body.size()), std::memory_order_relaxed);
    g_records.fetch_add(CountField(std::string_view(req.body).substr(0, 4096)),
                        std::memory_order_relaxed);
    return backflow::TestResponse::Json(200, "{}");
  });
  absl::Status started = server.Start();
  if (!started.ok()) {
    fmt::print(stderr, "bench_http_sink: {}\n", started.ToString());
    return 1;
  }
  {
    std::string tmp = port_file + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (f == nullptr || std::fprintf(f, "%d\n", server.port()) < 0 || std::fclose(f) != 0 ||
        std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      fmt::print(stderr, "bench_http_sink: cannot write {}\n", port_file);
      return 1;
    }
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  server.Stop();
  fmt::print("{}\n", StatsJson());
  return 0;
}
