#include "backflow/engine/change_writer.h"

#include <utility>

#include "backflow/common/status_macros.h"
#include "backflow/engine/warehouse_mode.h"

namespace backflow {

ChangeWriter::ChangeWriter(Spool& spool, int mapping_index, const Mapper& mapper)
    : spool_(spool), index_(mapping_index), mapper_(mapper), thread_([this] { Work(); }) {
  batch_.reserve(kBatch);
}

ChangeWriter::~ChangeWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closed_) discard_ = true;
    closed_ = true;
  }
  queued_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::Status ChangeWriter::PushRow(int change, std::string_view key, const Fingerprint& fp,
                                   RowRef row, RowPayload payload, bool with_row_hash,
                                   std::string_view row_hash) {
  Job job;
  job.change = change;
  job.key.assign(key);
  job.fp = fp;
  job.from_row = true;
  job.row = row;
  job.row_payload = payload;
  job.with_row_hash = with_row_hash;
  job.bytes.assign(row_hash);
  return Push(std::move(job));
}

absl::Status ChangeWriter::PushEncoded(int change, std::string_view key, const Fingerprint& fp,
                                       std::string_view encoded_payload) {
  Job job;
  job.change = change;
  job.key.assign(key);
  job.fp = fp;
  job.bytes.assign(encoded_payload);
  return Push(std::move(job));
}

absl::Status ChangeWriter::Push(Job job) {
  batch_.push_back(std::move(job));
  if (batch_.size() < kBatch) return absl::OkStatus();
  return Submit();
}

absl::Status ChangeWriter::Submit() {
  std::unique_lock<std::mutex> lock(mu_);
  room_cv_.wait(lock, [&] { return queue_.size() < kMaxQueued || stopped_; });
  if (!error_.ok()) return error_;
  if (!batch_.empty()) {
    queue_.push_back(std::move(batch_));
    batch_ = Batch();
    batch_.reserve(kBatch);
    queued_cv_.notify_one();
  }
  return absl::OkStatus();
}

absl::Status ChangeWriter::Finish() {
  absl::Status submitted = Submit();
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  queued_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (!submitted.ok()) return submitted;
  return error_;
}

void ChangeWriter::Work() {
  Spool::RowReader rows(spool_);
  std::string row_buffer, encoded;
  Row payload;
  while (true) {
    Batch batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      queued_cv_.wait(lock, [&] { return !queue_.empty() || closed_; });
      if (discard_ || (queue_.empty() && closed_)) break;
      batch = std::move(queue_.front());
      queue_.pop_front();
    }
    room_cv_.notify_one();
    absl::Status status;
    for (const Job& job : batch) {
      status = Write(job, rows, row_buffer, payload, encoded);
      if (!status.ok()) break;
    }
    if (!status.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::move(status);
      break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  room_cv_.notify_all();
}

absl::Status ChangeWriter::Write(const Job& job, Spool::RowReader& rows, std::string& row_buffer,
                                 Row& payload, std::string& encoded) {
  if (!job.from_row) return spool_.AddChange(index_, job.change, job.key, job.fp, job.bytes);
  BACKFLOW_RETURN_IF_ERROR(rows.Read(job.row, row_buffer));
  if (job.row_payload == RowPayload::kAsIs) {
    if (job.with_row_hash) AppendRowHash(row_buffer, job.bytes);
    return spool_.AddChange(index_, job.change, job.key, job.fp, row_buffer);
  }
  BACKFLOW_ASSIGN_OR_RETURN(Row values, DecodeRow(row_buffer));
  BACKFLOW_RETURN_IF_ERROR(mapper_.Map(values, payload));
  encoded.clear();
  EncodeRow(payload, encoded);
  if (job.with_row_hash) AppendRowHash(encoded, job.bytes);
  return spool_.AddChange(index_, job.change, job.key, job.fp, encoded);
}

}  // namespace backflow
