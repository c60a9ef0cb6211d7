// The k-way merge of an external sort (Google Benchmark): draining an
// ExternalSorter whose records spilled into several sorted runs, against the
// baseline of reading the same records, already sorted, from one run file.
// The records are what a sync's spool sorts: decimal record keys and 28-byte
// summaries, the keys in random order or in about their order (ascending, 2%
// of them moved to the end, as a table read in its physical order returns
// its rows after some were updated). BM_SortIntoRuns times the adding and
// spilling that comes before a merge. After the benchmarks it prints, per
// merge, merge time / one-run scan time (measured in the same process).
// Usage: bench_external_sorter [--records=N] [google benchmark flags]
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backflow/storage/external_sorter.h"
#include "backflow/storage/run_file.h"
#include "fmt/format.h"

namespace {

namespace fs = std::filesystem;
using backflow::ExternalSorter;

int64_t g_records = 2'000'000;
std::string g_dir;

enum Order { kRandom = 0, kNearlySorted = 1 };

// Keys 1..N in a fixed order (`order`), each with a 28-byte value.
std::vector<std::pair<std::string, std::string>> Records(Order order) {
  std::vector<int64_t> ids(static_cast<size_t>(g_records));
  std::iota(ids.begin(), ids.end(), 1);
  if (order == kRandom) {
    std::shuffle(ids.begin(), ids.end(), std::mt19937_64(42));
  } else {
    std::mt19937_64 pick(42);
    std::vector<int64_t> stay, moved;
    for (int64_t id : ids) (pick() % 50 == 0 ? moved : stay).push_back(id);
    std::shuffle(moved.begin(), moved.end(), pick);
    ids = std::move(stay);
    ids.insert(ids.end(), moved.begin(), moved.end());
  }
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(ids.size());
  std::mt19937_64 rng(7);
  for (int64_t id : ids) {
    std::string value(28, '\0');
    for (size_t i = 0; i + 8 <= value.size(); i += 8) {
      uint64_t v = rng();
      std::memcpy(value.data() + i, &v, 8);
    }
    out.emplace_back(std::to_string(id), std::move(value));
  }
  return out;
}

const std::vector<std::pair<std::string, std::string>>& SharedRecords(Order order = kRandom) {
  static const auto* random =
      new std::vector<std::pair<std::string, std::string>>(Records(kRandom));
  if (order == kRandom) return *random;
  static const auto* nearly =
      new std::vector<std::pair<std::string, std::string>>(Records(kNearlySorted));
  return *nearly;
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    fmt::print(stderr, "bench_external_sorter: {}\n", s.ToString());
    std::exit(1);
  }
}

// A sorter holding every record, spilled into about `runs` runs.
std::unique_ptr<ExternalSorter> Sorted(int runs, Order order = kRandom) {
  const auto& records = SharedRecords(order);
  ExternalSorter::Options o;
  o.compression_level = 0;  // as the spool writes them
  // Each buffered record costs its bytes, two varints and two 16-byte index entries.
  o.memory_budget = static_cast<size_t>(g_records) * (8 + 28 + 2 + 32) / static_cast<size_t>(runs);
  auto sorter = std::make_unique<ExternalSorter>(g_dir, fmt::format("m{}-{}", runs, order), o);
  for (const auto& [k, v] : records) Check(sorter->Add(k, v));
  Check(sorter->Finish());
  return sorter;
}

int64_t Drain(backflow::SortedStream& stream) {
  int64_t n = 0;
  std::string_view k, v;
  while (true) {
    auto more = stream.Next(k, v);
    Check(more.status());
    if (!*more) break;
    benchmark::DoNotOptimize(k.data());
    ++n;
  }
  return n;
}

void BM_ScanOneRun(benchmark::State& state) {
  const std::string path = g_dir + "/one.run";
  {
    std::unique_ptr<ExternalSorter> sorter = Sorted(1);
    auto stream = sorter->Open();
    Check(stream.status());
    backflow::RunFileOptions o;
    o.compression_level = 0;
    auto writer = backflow::RunFileWriter::Create(path, o);
    Check(writer.status());
    std::string_view k, v;
    while (true) {
      auto more = (*stream)->Next(k, v);
      Check(more.status());
      if (!*more) break;
      Check((*writer)->Add(k, v));
    }
    Check((*writer)->Finish());
  }
  for (auto _ : state) {
    auto reader = backflow::RunFileReader::Open(path);
    Check(reader.status());
    int64_t n = 0;
    std::string_view k, v;
    while (true) {
      auto more = (*reader)->Next(k, v);
      Check(more.status());
      if (!*more) break;
      benchmark::DoNotOptimize(k.data());
      ++n;
    }
    if (n != g_records) state.SkipWithError("lost records");
  }
  state.SetItemsProcessed(state.iterations() * g_records);
  fs::remove(path);
}

// Args: about how many runs, and the records' Order.
void BM_MergeRuns(benchmark::State& state) {
  std::unique_ptr<ExternalSorter> sorter =
      Sorted(static_cast<int>(state.range(0)), static_cast<Order>(state.range(1)));
  state.counters["spilled_runs"] = sorter->spilled_runs();
  for (auto _ : state) {
    auto stream = sorter->Open();
    Check(stream.status());
    if (Drain(**stream) != g_records) state.SkipWithError("lost records");
  }
  state.SetItemsProcessed(state.iterations() * g_records);
}

// Adding every record and spilling the sorted runs (what extraction pays).
void BM_SortIntoRuns(benchmark::State& state) {
  SharedRecords();
  for (auto _ : state) {
    std::unique_ptr<ExternalSorter> sorter = Sorted(static_cast<int>(state.range(0)));
    benchmark::DoNotOptimize(sorter.get());
    state.PauseTiming();  // removing the runs is not part of it
    sorter.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * g_records);
}

BENCHMARK(BM_SortIntoRuns)->Arg(11)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ScanOneRun)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MergeRuns)
    ->ArgsProduct({{4, 11, 32}, {kRandom, kNearlySorted}})
    ->ArgNames({"runs", "nearly_sorted"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Keeps each benchmark's time per iteration, to print the ratios.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.run_type == Run::RT_Iteration && r.iterations > 0) {
        seconds[r.benchmark_name()] = r.GetAdjustedRealTime();
      }
    }
  }
  std::map<std::string, double> seconds;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--records=", 0) == 0) {
      g_records = std::stoll(a.substr(10));
    } else {
      args.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  g_dir = (fs::temp_directory_path() / fmt::format("backflow-sort-bench-{}", getpid())).string();
  fs::create_directories(g_dir);
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  fs::remove_all(g_dir);
  const auto scan = reporter.seconds.find("BM_ScanOneRun/real_time");
  if (scan == reporter.seconds.end()) return 0;
  for (const auto& [name, t] : reporter.seconds) {
    if (name.rfind("BM_MergeRuns/", 0) == 0) {
      fmt::print("{}: {:.2f}x the one-run scan ({:.1f} ns per record)\n", name, t / scan->second,
                 t * 1e6 / static_cast<double>(g_records));
    }
  }
  return 0;
}
