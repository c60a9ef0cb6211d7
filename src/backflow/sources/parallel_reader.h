// ParallelRowReader: one RowReader over several part readers, each read on
// its own thread, e.g. one per connection of a warehouse read split by key.
//
// Rows arrive in no particular order (interleaved across parts, in order
// within a part). Each part's thread reads rows with NextEncoded() into
// batches (one buffer of encoded rows each) and hands them over through a
// queue of bounded length; NextEncoded() returns views into the current
// batch, Next() decodes them. So memory stays bounded whatever
// the row count: at most queue_batches + parts + 1 batches exist at once,
// each of at most `batch_rows` rows and about `batch_bytes` bytes (the row
// that crosses the limit closes the batch).
//
// Next() reports the clean end only when every part reached its own clean
// end. The first error of any part is returned by the next call to Next()
// (even if other parts' rows are still queued) and on every call after it;
// the other parts are then cancelled and their threads joined. Destroying
// the reader early sets a stop flag, calls every part's `cancel`, joins the
// threads and destroys each part reader on its own thread.
//
// The reader itself is used from one thread at a time, like any RowReader.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "backflow/model/value.h"
#include "backflow/sources/source.h"

namespace backflow {

struct ParallelReaderPart {
  // Read on its own thread; destroyed on that thread when the part ends.
  std::unique_ptr<RowReader> reader;
  // Called from another thread to make a Next() of `reader` that is blocked
  // (or about to block) return soon, with an error or the end. Must be
  // thread-safe and callable even after `reader` was destroyed. May be empty
  // when Next() never blocks indefinitely.
  std::function<void()> cancel;
};

struct ParallelReaderLimits {
  size_t batch_rows = 1024;
  size_t batch_bytes = size_t{1} << 20;
  // Batches waiting for the consumer; 0 means two per part.
  size_t queue_batches = 0;
};

// Starts one thread per part. `schema` is what schema() returns (every part
// must produce rows of that shape). `parts` must not be empty.
std::unique_ptr<RowReader> NewParallelRowReader(Schema schema,
                                                std::vector<ParallelReaderPart> parts,
                                                ParallelReaderLimits limits = {});

}  // namespace backflow
