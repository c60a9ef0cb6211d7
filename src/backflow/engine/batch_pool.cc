#include "backflow/engine/batch_pool.h"

#include <utility>

namespace backflow {

BatchPool::BatchPool(std::vector<std::unique_ptr<ActionSession>> sessions)
    : sessions_(std::move(sessions)) {
  for (auto& s : sessions_) {
    auto w = std::make_unique<Worker>();
    w->session = s.get();
    workers_.push_back(std::move(w));
  }
  for (auto& w : workers_) w->thread = std::thread([this, p = w.get()] { Loop(p); });
}

BatchPool::~BatchPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
}

void BatchPool::Loop(Worker* w) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] { return w->job != nullptr || stopping_; });
    if (w->job == nullptr) return;  // stopping with nothing to finish
    std::unique_ptr<BatchJob> job = std::move(w->job);
    lock.unlock();
    job->outcomes = w->session->SendBatch(job->records);
    lock.lock();
    w->busy = false;
    done_.push_back(std::move(job));
    done_cv_.notify_all();
  }
}

bool BatchPool::HasIdle() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!done_.empty()) return false;
  for (const auto& w : workers_) {
    if (!w->busy) return true;
  }
  return false;
}

bool BatchPool::HasDone() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !done_.empty();
}

int BatchPool::outstanding() const {
  std::lock_guard<std::mutex> lock(mu_);
  return outstanding_;
}

void BatchPool::Submit(std::unique_ptr<BatchJob> job) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& w : workers_) {
    if (w->busy) continue;
    w->busy = true;
    w->job = std::move(job);
    ++outstanding_;
    work_cv_.notify_all();
    return;
  }
}

std::unique_ptr<BatchJob> BatchPool::WaitDone() {
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return !done_.empty(); });
  std::unique_ptr<BatchJob> job = std::move(done_.front());
  done_.pop_front();
  --outstanding_;
  return job;
}

absl::Status BatchPool::FinishAll() {
  absl::Status first;
  for (auto& s : sessions_) {
    absl::Status st = s->Finish();
    if (first.ok() && !st.ok()) first = st;
  }
  return first;
}

}  // namespace backflow
