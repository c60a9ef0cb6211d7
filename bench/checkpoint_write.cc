// bench_checkpoint_write: the "checkpoint write + fsync + rename" figure and
// its `dd conv=fdatasync` baseline.
//
// Usage: bench_checkpoint_write CHECKPOINT_FILE [REPS [ZSTD_LEVEL]]
//
// Loads every record of CHECKPOINT_FILE (a checkpoint base file, e.g. the one
// a sync left in <state>-checkpoints/<mapping>/) into memory, then REPS times
// (default 3), back to back:
//   1. writes them as a new checkpoint exactly as a fold does (RunFileWriter,
//      durable: temporary file, checksummed blocks, fdatasync, rename, fsync of the
//      folder) into a scratch folder next to the input (ZSTD_LEVEL: try
//      another compression level than the checkpoint files' default);
//   2. copies the file just written with `dd bs=1M conv=fdatasync` (the same
//      bytes, from the page cache, to a new file in the same folder).
// Prints one JSON object on stdout:
//   {"records": N, "bytes": B, "write_s": W, "dd_s": D, "write_runs_s": [...], "dd_runs_s": [...]}
// with W and D the medians (seconds). Exit code 1 on any error.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "backflow/state/checkpoint_files.h"
#include "backflow/storage/run_file.h"
#include "fmt/format.h"
#include "fmt/ranges.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t mid = v.size() / 2;
  return v.size() % 2 == 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

int Fail(const std::string& what) {
  fmt::print(stderr, "bench_checkpoint_write: {}\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 4) {
    return Fail("usage: bench_checkpoint_write CHECKPOINT_FILE [REPS [ZSTD_LEVEL]]");
  }
  const std::string input = argv[1];
  const int reps = argc >= 3 ? std::max(1, std::atoi(argv[2])) : 3;
  backflow::RunFileOptions options = backflow::CheckpointFileOptions();
  if (argc == 4) options.compression_level = std::atoi(argv[3]);

  // Records as (key size, key, value size, value) back to back.
  std::string arena;
  std::vector<std::pair<size_t, size_t>> records;  // offsets of each key and value
  std::vector<std::pair<uint32_t, uint32_t>> sizes;
  {
    auto reader = backflow::RunFileReader::Open(input);
    if (!reader.ok()) return Fail(std::string(reader.status().message()));
    std::string_view key, value;
    while (true) {
      auto more = (*reader)->Next(key, value);
      if (!more.ok()) return Fail(std::string(more.status().message()));
      if (!*more) break;
      records.emplace_back(arena.size(), arena.size() + key.size());
      sizes.emplace_back(static_cast<uint32_t>(key.size()), static_cast<uint32_t>(value.size()));
      arena.append(key);
      arena.append(value);
    }
  }
  const fs::path scratch = fs::path(input).parent_path() / "bench-checkpoint-write";
  std::error_code ec;
  fs::remove_all(scratch, ec);
  fs::create_directories(scratch);
  const std::string out = (scratch / "base.ckpt").string();
  const std::string copy = (scratch / "dd.copy").string();

  std::vector<double> write_s, dd_s;
  int64_t bytes = 0;
  for (int r = 0; r < reps; ++r) {
    fs::remove(out, ec);
    fs::remove(copy, ec);
    auto start = Clock::now();
    auto writer = backflow::RunFileWriter::Create(out, options);
    if (!writer.ok()) return Fail(std::string(writer.status().message()));
    for (size_t i = 0; i < records.size(); ++i) {
      std::string_view key(arena.data() + records[i].first, sizes[i].first);
      std::string_view value(arena.data() + records[i].second, sizes[i].second);
      absl::Status added = (*writer)->Add(key, value);
      if (!added.ok()) return Fail(std::string(added.message()));
    }
    absl::Status finished = (*writer)->Finish();
    if (!finished.ok()) return Fail(std::string(finished.message()));
    write_s.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    bytes = static_cast<int64_t>(fs::file_size(out));

    start = Clock::now();
    pid_t pid = fork();
    if (pid == 0) {
      std::string in_arg = "if=" + out, out_arg = "of=" + copy;
      execlp("dd", "dd", in_arg.c_str(), out_arg.c_str(), "bs=1M", "conv=fdatasync", "status=none",
             static_cast<char*>(nullptr));
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return Fail("dd failed");
    dd_s.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  fs::remove_all(scratch, ec);
  fmt::print(
      "{{\"records\": {}, \"bytes\": {}, \"write_s\": {:.6f}, \"dd_s\": {:.6f}, "
      "\"write_runs_s\": [{:.6f}], \"dd_runs_s\": [{:.6f}]}}\n",
      records.size(), bytes, Median(write_s), Median(dd_s), fmt::join(write_s, ", "),
      fmt::join(dd_s, ", "));
  return 0;
}
