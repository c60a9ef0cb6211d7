// Rate-limiter benchmark (issue 4): drives HttpDelivery + RateLimiter from
// several threads against a loopback HTTP server on the real clock and
// reports, for the configured limit of N requests per W:
//   - the achieved rate: requests started in [first start, last start) over
//     that span, as a ratio of N/W (target: 0.95-1.00),
//   - the most requests started in any window of length W (target: <= N),
//     measured at the client (request start times) and at the server
//     (arrival times, which add loopback jitter).
// Usage: bench_rate_limit [--limit N] [--window-ms W] [--seconds S] [--threads T]
// Exit code: 0 when every request succeeded (targets are reported, not
// enforced: this machine is noisy), 1 otherwise.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/testing/http_test_server.h"
#include "fmt/format.h"

namespace {

using Steady = std::chrono::steady_clock;

// The most entries of sorted `times` inside any window of length `window`.
size_t MaxInWindow(const std::vector<Steady::time_point>& times, Steady::duration window) {
  size_t best = 0;
  size_t begin = 0;
  for (size_t end = 0; end < times.size(); ++end) {
    while (times[end] - times[begin] >= window) ++begin;
    best = std::max(best, end - begin + 1);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t limit = 50;
  int64_t window_ms = 1000;
  double seconds = 6;
  int threads = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--limit")
      limit = std::atoll(argv[i + 1]);
    else if (flag == "--window-ms")
      window_ms = std::atoll(argv[i + 1]);
    else if (flag == "--seconds")
      seconds = std::atof(argv[i + 1]);
    else if (flag == "--threads")
      threads = std::atoi(argv[i + 1]);
  }
  if (limit < 1 || window_ms < 1 || seconds <= 0 || threads < 1) {
    fmt::print(stderr, "bench_rate_limit: bad arguments\n");
    return 1;
  }

  std::mutex mu;
  std::vector<Steady::time_point> arrivals;
  backflow::HttpTestServer server([&](const backflow::TestRequest&) {
    {
      std::lock_guard<std::mutex> lock(mu);
      arrivals.push_back(Steady::now());
    }
    return backflow::TestResponse::Json(200, R"({"ok":true})");
  });
  if (!server.Start().ok()) {
    fmt::print(stderr, "bench_rate_limit: cannot start the loopback server\n");
    return 1;
  }
  std::unique_ptr<backflow::HttpClient> http = backflow::NewCurlHttpClient();
  const auto window = std::chrono::milliseconds(window_ms);
  backflow::RateLimiter limiter(backflow::SystemClock(), limit, window);

  std::vector<Steady::time_point> starts;
  std::atomic<int64_t> failures{0};
  const Steady::time_point deadline = Steady::now() + std::chrono::duration_cast<Steady::duration>(
                                                          std::chrono::duration<double>(seconds));
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      backflow::HttpDelivery delivery(http.get(), &backflow::SystemClock(), {&limiter},
                                      backflow::RetryPolicy{});
      while (Steady::now() < deadline) {
        backflow::DeliveryResult d = delivery.Send([&] {
          {
            std::lock_guard<std::mutex> lock(mu);
            starts.push_back(Steady::now());
          }
          backflow::HttpRequest r;
          r.url = server.Url("/events");
          r.body = "{}";
          return r;
        });
        if (!d.response.ok() || d.response->status != 200) ++failures;
      }
    });
  }
  for (std::thread& w : workers) w.join();
  server.Stop();

  // `starts` is recorded when HttpDelivery builds the request, right after the
  // limiter granted it: these are the limiter's start times.
  std::sort(starts.begin(), starts.end());
  std::sort(arrivals.begin(), arrivals.end());
  if (starts.size() < 2) {
    fmt::print(stderr, "bench_rate_limit: too few requests\n");
    return 1;
  }
  // Starts in [first, last) over (last - first): the steady rate, whether the
  // limiter lets requests through in bursts or evenly spaced.
  const Steady::time_point last = starts.back();
  size_t before_last =
      static_cast<size_t>(std::lower_bound(starts.begin(), starts.end(), last) - starts.begin());
  double span_s = std::chrono::duration<double>(last - starts.front()).count();
  double configured = static_cast<double>(limit) / (window_ms / 1000.0);
  double achieved = span_s > 0 ? before_last / span_s : 0;
  size_t client_max = MaxInWindow(starts, window);
  size_t server_max = MaxInWindow(arrivals, window);

  fmt::print("# Rate limiter against a loopback server ({} threads, {:.1f} s)\n\n", threads,
             seconds);
  fmt::print("| figure | measured | target | result |\n| --- | --- | --- | --- |\n");
  fmt::print(
      "| achieved rate / configured ({} per {} ms = {:.1f}/s) | {:.3f} ({:.1f}/s over {} "
      "requests) | 0.95 to 1.00 | {} |\n",
      limit, window_ms, configured, achieved / configured, achieved, starts.size(),
      achieved / configured >= 0.95 && achieved / configured <= 1.0 + 1e-9 ? "PASS" : "MISS");
  fmt::print("| most request starts in any {} ms window (client) | {} | <= {} | {} |\n", window_ms,
             client_max, limit, client_max <= static_cast<size_t>(limit) ? "PASS" : "MISS");
  fmt::print(
      "| most arrivals in any {} ms window (server, adds loopback jitter) | {} | <= {} | {} "
      "|\n",
      window_ms, server_max, limit, server_max <= static_cast<size_t>(limit) ? "PASS" : "MISS");
  fmt::print("| failed requests | {} | 0 | {} |\n", failures.load(),
             failures.load() == 0 ? "PASS" : "FAIL");
  return failures.load() == 0 ? 0 : 1;
}
