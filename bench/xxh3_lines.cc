// bench_xxh3_lines: the "hash the same rows with XXH3" baseline.
//
// Usage: bench_xxh3_lines FILE [PASSES]
//
// Reads FILE (e.g. the output of `COPY (query) TO STDOUT`, one row per line)
// into memory, then, PASSES times (default 3), splits it into lines and hashes
// each line (without its newline) with XXH3_64bits and, separately, with
// XXH3_128bits. Only the split + hash loops are timed, not the file read.
// Prints one JSON object on stdout:
//   {"rows": R, "bytes": B, "xxh3_64_s": T64, "xxh3_128_s": T128, "checksum": "..."}
// where T64/T128 are the median pass (seconds) and checksum folds every
// hash so the work cannot be optimised away. Exit code 1 if FILE cannot be
// read.
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fmt/format.h"

namespace {

using Clock = std::chrono::steady_clock;

template <typename HashLine>
double TimeLines(const std::string& data, int64_t& rows, HashLine&& hash_line) {
  auto start = Clock::now();
  const char* p = data.data();
  const char* end = p + data.size();
  int64_t n = 0;
  while (p < end) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
    const char* line_end = nl == nullptr ? end : nl;
    hash_line(p, static_cast<size_t>(line_end - p));
    ++n;
    p = nl == nullptr ? end : nl + 1;
  }
  rows = n;
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The median of `v` (the mean of the middle two for an even count); v is not empty.
double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t mid = v.size() / 2;
  return v.size() % 2 == 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    fmt::print(stderr, "usage: {} FILE [PASSES]\n", argv[0]);
    return 2;
  }
  int passes = argc == 3 ? std::max(1, std::atoi(argv[2])) : 3;
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    fmt::print(stderr, "bench_xxh3_lines: cannot open {}\n", argv[1]);
    return 1;
  }
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    fmt::print(stderr, "bench_xxh3_lines: cannot read {}\n", argv[1]);
    return 1;
  }

  uint64_t fold = 0;
  int64_t rows = 0;
  std::vector<double> t64, t128;
  for (int i = 0; i < passes; ++i) {
    t64.push_back(
        TimeLines(data, rows, [&](const char* p, size_t n) { fold ^= XXH3_64bits(p, n); }));
    t128.push_back(TimeLines(data, rows, [&](const char* p, size_t n) {
      XXH128_hash_t h = XXH3_128bits(p, n);
      fold ^= h.low64 + h.high64;
    }));
  }
  fmt::print(
      "{{\"rows\": {}, \"bytes\": {}, \"xxh3_64_s\": {:.6f}, \"xxh3_128_s\": {:.6f}, "
      "\"checksum\": \"{:016x}\"}}\n",
      rows, data.size(), Median(t64), Median(t128), fold);
  return 0;
}
