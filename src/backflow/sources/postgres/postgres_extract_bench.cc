// postgres_extract_bench: times the PostgreSQL source's readers over a query.
//
//   PGPASSWORD=... postgres_extract_bench URL SQL [MODE ...] [--key COLUMN]
//                                         [--runs N] [--psql] [--json]
//                                         [--formats auto,text,binary]
//
// MODE is `copy` (one connection), `rows` (single-row mode) or `copy:N` (N
// connections, parallel_connections: N, split on --key, default "id");
// default: copy then rows. --formats runs each COPY mode once per listed
// copy_format (auto, text, binary), named "copy@text", "copy:2@binary"...,
// interleaved within each run; without it COPY modes use the default
// (auto) under their plain names. Each run reads SQL to the end through
// NewPostgresSource(...)->Query(sql, QueryOptions{key}) and NextEncoded()
// (as a sync's extraction reads), modes
// back to back; with --psql each run first times the baseline
// `psql -X -c "COPY (SQL) TO STDOUT" > /dev/null` (psql from PATH, same URL
// and PGPASSWORD). Prints rows, seconds and rows/s per run, then per mode the
// median and, with --psql, its row rate as a ratio of the baseline's median
// rate. --json adds one last line: {"psql_s": [...], "modes": {"copy:2":
// {"rows": R, "runs_s": [...], "median_s": S, "ratio": X}, ...}}.
// A measuring tool, not a test; bench/run.sh uses it for the issue-3 figure
// "extraction, 2 connections over key ranges".
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "backflow/common/fmt_absl.h"
#include "backflow/sources/postgres/postgres_source.h"
#include "fmt/format.h"
#include "fmt/ranges.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Mode {
  std::string name;
  backflow::PostgresExtraction extraction = backflow::PostgresExtraction::kCopy;
  int connections = 1;
  backflow::PostgresCopyFormat format = backflow::PostgresCopyFormat::kAuto;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Seconds `psql -X -q -c "COPY (sql) TO STDOUT" > /dev/null` took; < 0 on failure.
double TimePsqlCopy(const std::string& url, const std::string& sql) {
  std::string copy = "COPY (\n" + sql + "\n) TO STDOUT";
  auto start = Clock::now();
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (freopen("/dev/null", "w", stdout) == nullptr) _exit(127);
    execlp("psql", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url.c_str(), "-c", copy.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return -1;
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  using backflow::PostgresExtraction;
  if (argc < 3) {
    std::cerr << "usage: PGPASSWORD=... postgres_extract_bench URL SQL [copy|rows|copy:N ...] "
                 "[--key COLUMN] [--runs N] [--psql] [--json] [--formats auto,text,binary]\n";
    return 2;
  }
  std::string url = argv[1];
  std::string sql = argv[2];
  std::vector<Mode> modes;
  std::string key = "id";
  int runs = 3;
  bool psql = false;
  bool json = false;
  std::vector<std::pair<std::string, backflow::PostgresCopyFormat>> formats;
  for (int i = 3; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "copy") {
      modes.push_back({"copy", PostgresExtraction::kCopy, 1});
    } else if (arg == "rows") {
      modes.push_back({"rows", PostgresExtraction::kRows, 1});
    } else if (arg.rfind("copy:", 0) == 0 && std::atoi(arg.c_str() + 5) >= 1 &&
               std::atoi(arg.c_str() + 5) <= backflow::kMaxPostgresParallelConnections) {
      modes.push_back({arg, PostgresExtraction::kCopy, std::atoi(arg.c_str() + 5)});
    } else if (arg == "--runs" && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--key" && i + 1 < argc) {
      key = argv[++i];
    } else if (arg == "--formats" && i + 1 < argc) {
      std::string list = argv[++i];
      for (size_t start = 0; start <= list.size();) {
        size_t comma = std::min(list.find(',', start), list.size());
        std::string name = list.substr(start, comma - start);
        start = comma + 1;
        if (name == "auto") {
          formats.emplace_back(name, backflow::PostgresCopyFormat::kAuto);
        } else if (name == "text") {
          formats.emplace_back(name, backflow::PostgresCopyFormat::kText);
        } else if (name == "binary") {
          formats.emplace_back(name, backflow::PostgresCopyFormat::kBinary);
        } else {
          std::cerr << "unknown format " << name << " (auto, text or binary)\n";
          return 2;
        }
      }
    } else if (arg == "--psql") {
      psql = true;
    } else if (arg == "--json") {
      json = true;
    } else {
      std::cerr << "unknown argument " << arg << "\n";
      return 2;
    }
  }
  if (modes.empty()) {
    modes = {{"copy", PostgresExtraction::kCopy, 1}, {"rows", PostgresExtraction::kRows, 1}};
  }
  if (!formats.empty()) {
    std::vector<Mode> expanded;
    for (const Mode& mode : modes) {
      if (mode.extraction != PostgresExtraction::kCopy) {
        expanded.push_back(mode);
        continue;
      }
      for (const auto& [name, format] : formats) {
        expanded.push_back({mode.name + "@" + name, mode.extraction, mode.connections, format});
      }
    }
    modes = std::move(expanded);
  }
  const char* password = std::getenv("PGPASSWORD");
  std::vector<double> psql_seconds;
  std::map<std::string, std::vector<double>> seconds;
  std::map<std::string, long> rows_of;
  for (int run = 0; run < runs; ++run) {
    if (psql) {
      double s = TimePsqlCopy(url, sql);
      if (s < 0) {
        std::cerr << "psql COPY baseline failed (is psql on PATH and PGPASSWORD set?)\n";
        return 1;
      }
      psql_seconds.push_back(s);
      fmt::print(stderr, "psql COPY run {}: {:.3f} s\n", run + 1, s);
    }
    for (const Mode& mode : modes) {
      backflow::PostgresSourceOptions options;
      options.extraction = mode.extraction;
      options.parallel_connections = mode.connections;
      options.copy_format = mode.format;
      auto source =
          backflow::NewPostgresSource(url, password != nullptr ? password : "", std::move(options));
      auto start = Clock::now();
      auto reader = source->Query(sql, backflow::QueryOptions{key});
      if (!reader.ok()) {
        std::cerr << mode.name << ": " << reader.status() << "\n";
        return 1;
      }
      std::string_view row;
      long rows = 0;
      absl::StatusOr<bool> more;
      while ((more = (*reader)->NextEncoded(row)).ok() && *more) ++rows;
      if (!more.ok()) {
        std::cerr << mode.name << ": " << more.status() << "\n";
        return 1;
      }
      reader->reset();
      double s = std::chrono::duration<double>(Clock::now() - start).count();
      seconds[mode.name].push_back(s);
      rows_of[mode.name] = rows;
      fmt::print(stderr, "{} run {}: {} rows in {:.3f} s = {:.0f} rows/s\n", mode.name, run + 1,
                 rows, s, rows / s);
    }
  }
  double psql_median = psql ? Median(psql_seconds) : 0;
  if (psql) fmt::print("psql COPY median: {:.3f} s\n", psql_median);
  std::string modes_json;
  for (const Mode& mode : modes) {
    double median = Median(seconds[mode.name]);
    long rows = rows_of[mode.name];
    // Same rows, so the ratio of row rates is the inverse ratio of times.
    double ratio = psql ? psql_median / median : 0;
    fmt::print("{} median: {} rows in {:.3f} s = {:.0f} rows/s", mode.name, rows, median,
               rows / median);
    if (psql) fmt::print(" = {:.2f}x the psql COPY row rate", ratio);
    fmt::print("\n");
    if (!modes_json.empty()) modes_json += ", ";
    modes_json += fmt::format(R"("{}": {{"rows": {}, "runs_s": [{:.6f}], "median_s": {:.6f})",
                              mode.name, rows, fmt::join(seconds[mode.name], ", "), median);
    if (psql) modes_json += fmt::format(R"(, "ratio": {:.6f})", ratio);
    modes_json += "}";
  }
  if (json) {
    fmt::print(R"({{"psql_s": [{:.6f}], "modes": {{{}}}}})"
               "\n",
               fmt::join(psql_seconds, ", "), modes_json);
  }
  return 0;
}
