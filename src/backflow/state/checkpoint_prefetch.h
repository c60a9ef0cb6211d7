// PrefetchCheckpointScanner: reads a CheckpointScanner on a background
// thread, a few blocks of entries ahead of its consumer (PrefetchSortedStream
// underneath), so that reading and verifying the checkpoint and diffing
// against it use two cores.
//
// A scanner that can read ahead by itself (CheckpointScanner::StartReadAhead,
// e.g. one over a single checkpoint file, whose blocks are then read and
// verified on its own thread) is asked to and returned as it is. Otherwise
// the returned scanner yields exactly `inner`'s entries, then its end or its
// error (sticky). `inner` must not share mutable state with anything used
// meanwhile on other threads (the state stores' scanners own their files or
// connection); it is used only by the background thread from the call on,
// and destroyed, after that thread stops, by the returned scanner's
// destructor. The returned scanner has one consumer.
#pragma once

#include <memory>

#include "backflow/state/state_store.h"

namespace backflow {

std::unique_ptr<CheckpointScanner> PrefetchCheckpointScanner(
    std::unique_ptr<CheckpointScanner> inner);

}  // namespace backflow
