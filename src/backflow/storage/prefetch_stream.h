// PrefetchSortedStream: reads a SortedStream on a background thread, a few
// blocks of records ahead of its consumer, so that producing the records (a
// k-way merge of run files, say) and consuming them use two cores.
//
// The returned stream yields exactly the records of `inner`, in its order;
// an error of `inner` is returned in its place (after the records before it)
// and again by every later Next(). Views stay valid until the next Next().
// Memory: at most `blocks` blocks of about `block_bytes` each (a block holds
// at least one record, whatever its size). `inner` is used only by the
// background thread from the call on, and is destroyed with the returned
// stream, whose destructor stops and joins the thread. The returned stream
// itself is not thread-safe (one consumer).
//
// PrefetchKeyGroups is the same over a sorted stream read one key at a time:
// each distinct key once, with the value of its first record (equal keys in
// `inner`'s order) and how many records have that key; the grouping happens
// on the background thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "backflow/storage/external_sorter.h"

namespace backflow {

struct PrefetchOptions {
  size_t block_bytes = 256 << 10;
  int blocks = 4;
};

std::unique_ptr<SortedStream> PrefetchSortedStream(std::unique_ptr<SortedStream> inner,
                                                   PrefetchOptions options = {});

// A sorted stream by key: each key once.
class KeyGroupStream {
 public:
  virtual ~KeyGroupStream() = default;
  // The next key, the value of its first record and its record count (≥ 1);
  // the views stay valid until the next call. False at the end.
  virtual absl::StatusOr<bool> Next(std::string_view& key, std::string_view& first_value,
                                    int64_t& copies) = 0;
};

std::unique_ptr<KeyGroupStream> PrefetchKeyGroups(std::unique_ptr<SortedStream> inner,
                                                  PrefetchOptions options = {});

}  // namespace backflow
