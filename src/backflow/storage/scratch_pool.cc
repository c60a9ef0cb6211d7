#include "backflow/storage/scratch_pool.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <utility>
#include <vector>

#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

struct Kept {
  std::string path;
  uint64_t size;
};

// The pool's files, largest first.
std::vector<Kept> List(const std::string& dir) {
  std::vector<Kept> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::error_code size_ec;
    uint64_t size = entry.file_size(size_ec);
    if (size_ec || !entry.is_regular_file(size_ec)) continue;
    files.push_back({entry.path().string(), size});
  }
  std::sort(files.begin(), files.end(), [](const Kept& a, const Kept& b) {
    return a.size != b.size ? a.size > b.size : a.path < b.path;
  });
  return files;
}

}  // namespace

ScratchPool::ScratchPool(std::string dir, uint64_t max_bytes)
    : dir_(std::move(dir)), max_bytes_(max_bytes) {
  std::error_code ec;
  if (max_bytes_ > 0) fs::create_directories(dir_, ec);
}

bool ScratchPool::Take(const std::string& path) {
  for (const Kept& kept : List(dir_)) {
    if (rename(kept.path.c_str(), path.c_str()) == 0) return true;
    // Another process took it first (ENOENT), or it cannot move: the next.
  }
  return false;
}

void ScratchPool::Keep(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  uint64_t pooled = 0;
  if (!ec && max_bytes_ > 0) {
    for (const Kept& kept : List(dir_)) pooled += kept.size;
  }
  if (ec || max_bytes_ == 0 || pooled + size > max_bytes_ ||
      rename(path.c_str(), fmt::format("{}/kept-{}-{}", dir_, getpid(), counter++).c_str()) != 0) {
    unlink(path.c_str());
  }
}

int OpenRecycled(ScratchPool* pool, const std::string& path, int flags) {
  if (pool != nullptr) pool->Take(path);
  return open(path.c_str(), flags | O_CREAT | O_CLOEXEC, 0600);
}

}  // namespace backflow
