// postgres_extract_bench: times the PostgreSQL source's readers over a query.
//
//   PGPASSWORD=... postgres_extract_bench URL SQL [copy|rows ...] [--runs N]
//
// For each extraction mode (default: copy then rows) runs SQL N times
// (default 3) through NewPostgresSource(...)->Query() and Next() until the
// end, and prints rows, seconds and rows/s per run plus the median. A manual
// measuring tool: built on request (EXCLUDE_FROM_ALL), not a test.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "backflow/common/fmt_absl.h"
#include "backflow/sources/postgres/postgres_source.h"
#include "fmt/format.h"

int main(int argc, char** argv) {
  using backflow::PostgresExtraction;
  if (argc < 3) {
    std::cerr << "usage: PGPASSWORD=... postgres_extract_bench URL SQL [copy|rows ...] "
                 "[--runs N]\n";
    return 2;
  }
  std::string url = argv[1];
  std::string sql = argv[2];
  std::vector<PostgresExtraction> modes;
  int runs = 3;
  for (int i = 3; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "copy") {
      modes.push_back(PostgresExtraction::kCopy);
    } else if (arg == "rows") {
      modes.push_back(PostgresExtraction::kRows);
    } else if (arg == "--runs" && i + 1 < argc) {
      runs = std::atoi(argv[++i]);
    } else {
      std::cerr << "unknown argument " << arg << "\n";
      return 2;
    }
  }
  if (modes.empty()) modes = {PostgresExtraction::kCopy, PostgresExtraction::kRows};
  const char* password = std::getenv("PGPASSWORD");
  for (PostgresExtraction mode : modes) {
    const char* name = mode == PostgresExtraction::kCopy ? "copy" : "rows";
    std::vector<double> seconds;
    long rows = 0;
    for (int run = 0; run < runs; ++run) {
      auto source = backflow::NewPostgresSource(url, password != nullptr ? password : "", mode);
      auto start = std::chrono::steady_clock::now();
      auto reader = source->Query(sql);
      if (!reader.ok()) {
        std::cerr << name << ": " << reader.status() << "\n";
        return 1;
      }
      backflow::Row row;
      rows = 0;
      absl::StatusOr<bool> more;
      while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
      if (!more.ok()) {
        std::cerr << name << ": " << more.status() << "\n";
        return 1;
      }
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      seconds.push_back(s);
      fmt::print("{} run {}: {} rows in {:.2f} s = {:.0f} rows/s\n", name, run + 1, rows, s,
                 rows / s);
    }
    std::sort(seconds.begin(), seconds.end());
    double median = seconds[seconds.size() / 2];
    fmt::print("{} median: {} rows in {:.2f} s = {:.0f} rows/s\n", name, rows, median,
               rows / median);
  }
  return 0;
}
