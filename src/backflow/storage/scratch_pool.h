// ScratchPool: scratch files kept between uses, so that the next extraction
// writes over pages the page cache already holds instead of new ones.
//
// Writing a new file makes the kernel allocate (and zero) a page for every
// 4 KiB; on virtual machines whose host takes freed guest memory back (free
// page reporting, ballooning) each of those pages also faults in the host.
// Measured on the 2-core benchmark VM: 1 GiB written to a new file costs
// 2.3 s of system time, the same gigabyte written over a file already cached
// 0.09 s (bench/README.md). An extraction writes about 130 bytes of scratch
// per row, so recycling its files is worth seconds per 10 million rows.
//
// The pool is one folder on the scratch files' filesystem. Take() moves a
// kept file to the caller's path (the largest one first: the first file a
// spool opens is its row log); the caller writes over it from offset 0 and
// truncates it to what it wrote (RecycledFile). Keep() moves a finished-with
// file into the pool, or removes it when the pool would exceed its byte
// budget (0 keeps nothing). Files move by rename(), so several processes may
// share one pool: of two taking the same file, one gets it. Thread-safe.
#pragma once

#include <cstdint>
#include <string>

namespace backflow {

class ScratchPool {
 public:
  ScratchPool(std::string dir, uint64_t max_bytes);

  // Moves a kept file to `path` (which must not exist); false when the pool
  // has none (or its folder cannot be read): the caller creates the file.
  bool Take(const std::string& path);
  // Moves `path` into the pool, or removes it when the pool's files would
  // then exceed the budget.
  void Keep(const std::string& path);

  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  uint64_t max_bytes_;
};

// Opens `path` for writing over whatever it holds (no truncation), taking a
// kept file from `pool` first when there is one (null: a plain new file).
// Returns the descriptor or -1 with errno set. Whoever writes it truncates
// the file to the bytes it wrote once done (the rest is an earlier user's).
int OpenRecycled(ScratchPool* pool, const std::string& path, int flags);

}  // namespace backflow
