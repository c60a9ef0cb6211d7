// ChangeWriter: writes one mapping's change set into the spool on a thread
// of its own, reading, decoding and mapping each changed row there, so that
// the diff's thread only merges keys.
//
// Changes are written in the order they are pushed. A row change is read at
// its RowRef in the row log (through a Spool::RowReader), mapped with
// `mapper` (it mapped during extraction: mapping is deterministic) and
// encoded, or written as read when the row is its own payload; in warehouse
// mode (engine/warehouse_mode.h) with the row hash appended. A change pushed
// encoded is written as it is. The first error (a damaged spool, a full
// disk) stops the writing: Push() returns it from then on, and Finish()
// returns it. Memory: at most a few batches of pushed changes.
//
// While a ChangeWriter exists, the spool's AddChange() is its thread's
// alone (the other Spool methods stay usable: see engine/spool.h). Push()
// and Finish() are for one thread; the destructor stops the thread (without
// writing what is still queued) if Finish() was not called.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/hash.h"
#include "backflow/engine/spool.h"
#include "backflow/mapping/mapper.h"

namespace backflow {

class ChangeWriter {
 public:
  ChangeWriter(Spool& spool, int mapping_index, const Mapper& mapper);
  ~ChangeWriter();
  ChangeWriter(const ChangeWriter&) = delete;
  ChangeWriter& operator=(const ChangeWriter&) = delete;

  // How a row change's payload comes from its row.
  enum class RowPayload {
    kMapped,  // Mapper::Map() of the row
    kAsIs,    // the row itself (Mapper::FingerprintOfRowAsPayload() held for it)
  };
  // The row at `row` as its payload; in warehouse mode (`with_row_hash`)
  // with `row_hash` appended.
  absl::Status PushRow(int change, std::string_view key, const Fingerprint& fp, RowRef row,
                       RowPayload payload, bool with_row_hash, std::string_view row_hash);
  // An encoded payload (row hash included), written as it is.
  absl::Status PushEncoded(int change, std::string_view key, const Fingerprint& fp,
                           std::string_view encoded_payload);
  // Writes what is queued, stops the thread; the first error, if any.
  absl::Status Finish();

 private:
  struct Job {
    int change = 0;
    std::string key;
    Fingerprint fp;
    bool from_row = false;
    RowPayload row_payload = RowPayload::kMapped;
    bool with_row_hash = false;
    RowRef row;
    std::string bytes;  // the encoded payload, or (from_row) the row hash
  };
  using Batch = std::vector<Job>;
  static constexpr size_t kBatch = 256;
  static constexpr size_t kMaxQueued = 8;  // batches

  absl::Status Push(Job job);
  absl::Status Submit();  // hands the current batch to the thread
  void Work();
  absl::Status Write(const Job& job, Spool::RowReader& rows, std::string& row_buffer, Row& payload,
                     std::string& encoded);

  Spool& spool_;
  const int index_;
  const Mapper& mapper_;
  Batch batch_;  // being filled by the pushing thread

  std::mutex mu_;
  std::condition_variable queued_cv_;  // queue_ gained a batch, or closed_
  std::condition_variable room_cv_;    // queue_ lost a batch, or the thread stopped
  std::deque<Batch> queue_;
  bool closed_ = false;   // no more batches (Finish) or stop (destructor)
  bool discard_ = false;  // the destructor: stop without writing
  bool stopped_ = false;  // the thread ended
  absl::Status error_;
  std::thread thread_;  // last: starts once every member above exists
};

}  // namespace backflow
