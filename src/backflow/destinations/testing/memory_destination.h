// MemoryDestination: an in-process fake destination for engine and config
// tests. It applies accepted records to an in-memory table (key -> payload
// JSON), can be told to reject chosen keys or whole batches, and records what
// it was sent. Thread-safe.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "backflow/catalog/definitions.h"

namespace backflow::testing {

struct MemoryDestinationState {
  std::mutex mu;
  std::map<std::string, std::string> records;  // key -> fields JSON
  std::set<std::string> reject_keys;           // rejected per record (kInvalidArgument)
  std::set<std::string> lost_reply_keys;       // applied, but answered kUnavailable
  absl::Status batch_error;                    // when set, SendBatch fails whole
  absl::Status finish_error;                   // when set, Finish fails
  int batches = 0;
  int finished_sessions = 0;
  std::vector<std::string> sent_keys;  // every attempted record, in order
  std::vector<int> batch_sizes;
  // Concurrency: what Destination::concurrency() returns, how long each
  // SendBatch takes (real time, outside the lock), and the most batches seen
  // in flight at once.
  int concurrency = 1;
  std::chrono::milliseconds send_delay{0};
  int in_flight = 0;
  int max_in_flight = 0;
  // Called (under the lock) after each batch is recorded, with the count of
  // batches so far.
  std::function<void(int)> on_batch;
};

// Type "memory". Actions: "upsert" (free-form fields, all selections) and
// "typed" (fields: email string required identifier-free, age integer,
// vip boolean; selections added_or_updated and all).
DestinationDefinition MemoryDestinationDefinition(std::shared_ptr<MemoryDestinationState> state,
                                                  bool commit_on_finish = false);

}  // namespace backflow::testing
