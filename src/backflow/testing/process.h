// Small process-level helpers shared by tests: peak memory and free ports.
#pragma once

namespace backflow::testing {

// This process's peak resident set size so far, in KiB (getrusage).
long PeakRssKb();

// A TCP port on 127.0.0.1 that nothing listens on (bound, read, released).
int UnusedPort();

}  // namespace backflow::testing
