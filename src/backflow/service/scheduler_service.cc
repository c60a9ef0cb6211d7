#include "backflow/service/scheduler_service.h"

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/json_writer.h"
#include "backflow/config/workspace.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/scheduler/planner.h"
#include "backflow/state/open_state_store.h"
#include "backflow/state/state_store.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

std::optional<fs::file_time_type> ModifiedAt(const std::string& path) {
  std::error_code ec;
  fs::file_time_type t = fs::last_write_time(path, ec);
  if (ec) return std::nullopt;
  return t;
}

// One JSON object per line: {"ts": ..., "event": ..., ...fields}.
class Log {
 public:
  explicit Log(std::FILE* out) : out_(out) {}

  template <typename Fill>
  void Write(std::string_view event, Fill fill) {
    JsonWriter w;
    w.BeginObject();
    w.Key("ts").String(FormatIso8601(SystemClock().Now()));
    w.Key("event").String(event);
    fill(w);
    w.EndObject();
    std::lock_guard<std::mutex> lock(mu_);
    std::fputs((w.Release() + "\n").c_str(), out_);
    std::fflush(out_);
  }

 private:
  std::FILE* out_;
  std::mutex mu_;
};

std::string TickText(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

struct Job {
  std::string model;
  std::shared_ptr<const Workspace> workspace;
  ScheduleState previous;  // restored if the job is dropped at shutdown
};

}  // namespace

SchedulerService::SchedulerService(SchedulerOptions options, const Registry& registry,
                                   ConnectorEnv env, std::FILE* log)
    : options_(std::move(options)), registry_(registry), env_(env), log_(log) {}

absl::StatusOr<SchedulerOutcome> SchedulerService::Run() {
  Log log(log_);
  LoadResult loaded = LoadWorkspace(options_.config_path, registry_);
  if (!loaded.ok()) {
    std::string first;
    for (const Diagnostic& d : loaded.diagnostics) {
      if (d.is_error()) {
        first = d.ToString();
        break;
      }
    }
    return absl::FailedPreconditionError(fmt::format(
        "{} error(s) in {}; the first: {}", loaded.error_count(), options_.config_path, first));
  }
  auto workspace = std::make_shared<const Workspace>(std::move(loaded.workspace));
  std::optional<fs::file_time_type> loaded_at = ModifiedAt(options_.config_path);
  const std::string spool_dir = workspace->LocalStateDir();

  absl::StatusOr<std::unique_ptr<StateStore>> store = OpenStateStore(workspace->state_url);
  if (!store.ok()) return store.status();
  (void)(*store)->MarkInterruptedRuns();

  std::map<std::string, ScheduleState> states;
  for (const ModelConfig& m : workspace->models) {
    absl::StatusOr<std::optional<ScheduleState>> s = (*store)->GetScheduleState(m.name);
    if (!s.ok()) return s.status();
    if (s->has_value()) states[m.name] = **s;
  }

  SchedulerOutcome outcome;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> queue;
  std::set<std::string> busy;  // queued or running
  bool worker_stop = false;    // finish the current job, drop the rest
  bool drain = false;          // finish every queued job, then stop
  std::vector<Job> dropped;

  std::thread worker([&] {
    absl::StatusOr<std::unique_ptr<StateStore>> worker_store = OpenStateStore(workspace->state_url);
    while (true) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return !queue.empty() || worker_stop || drain; });
        if (queue.empty() || (worker_stop && !drain)) {
          for (Job& j : queue) dropped.push_back(std::move(j));
          queue.clear();
          return;
        }
        job = std::move(queue.front());
        queue.pop_front();
      }
      std::vector<std::string> mappings;
      for (const MappingConfig& m : job.workspace->mappings) {
        if (m.model == job.model && m.enabled) mappings.push_back(m.name);
      }
      bool failed = false, partial = false;
      if (!worker_store.ok()) {
        failed = true;
        log.Write("run_failed", [&](JsonWriter& w) {
          w.Key("model").String(job.model);
          w.Key("error").String(std::string(worker_store.status().message()));
        });
      } else if (mappings.empty()) {
        log.Write("run_skipped", [&](JsonWriter& w) {
          w.Key("model").String(job.model);
          w.Key("reason").String("the model has no enabled mapping");
        });
      } else {
        log.Write("run_started", [&](JsonWriter& w) {
          w.Key("model").String(job.model);
          w.Key("mappings").BeginArray();
          for (const std::string& m : mappings) w.String(m);
          w.EndArray();
        });
        SyncEngine engine(*job.workspace, registry_, **worker_store, env_, spool_dir);
        absl::StatusOr<std::vector<MappingRunResult>> results =
            engine.Run(job.model, mappings, SyncOptions{});
        if (!results.ok()) {
          failed = true;
          log.Write("run_failed", [&](JsonWriter& w) {
            w.Key("model").String(job.model);
            w.Key("error").String(std::string(results.status().message()));
          });
        } else {
          for (const MappingRunResult& r : *results) {
            failed |= r.run.status == RunStatus::kFailed;
            partial |= r.run.status == RunStatus::kPartial;
            log.Write("run_finished", [&](JsonWriter& w) {
              w.Key("model").String(job.model);
              w.Key("mapping").String(r.run.mapping);
              w.Key("run_id").Int(r.run.id);
              w.Key("status").String(RunStatusName(r.run.status));
              const RunCounts& c = r.run.counts;
              w.Key("extracted").Int(c.extracted);
              w.Key("added").Int(c.added);
              w.Key("updated").Int(c.updated);
              w.Key("deleted").Int(c.deleted);
              w.Key("succeeded").Int(c.succeeded);
              w.Key("failed").Int(c.failed);
              w.Key("rejected").Int(c.rejected);
              if (!r.run.error.empty()) w.Key("error").String(r.run.error);
            });
          }
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      ++outcome.runs;
      if (failed) {
        ++outcome.failed_runs;
      } else if (partial) {
        ++outcome.partial_runs;
      }
      busy.erase(job.model);
    }
  });

  log.Write("scheduler_started", [&](JsonWriter& w) {
    w.Key("config").String(options_.config_path);
    int scheduled = 0;
    for (const ModelConfig& m : workspace->models) {
      scheduled += m.schedule.kind != Schedule::Kind::kManual;
    }
    w.Key("scheduled_models").Int(scheduled);
  });

  SchedulePlanner planner;
  absl::Status error;
  while (true) {
    // Pick up edits of the workspace file; an invalid edit keeps the last valid one.
    std::optional<fs::file_time_type> modified = ModifiedAt(options_.config_path);
    if (modified && modified != loaded_at) {
      loaded_at = modified;
      LoadResult reloaded = LoadWorkspace(options_.config_path, registry_);
      if (reloaded.ok()) {
        workspace = std::make_shared<const Workspace>(std::move(reloaded.workspace));
        planner.Invalidate();
        log.Write("workspace_reloaded", [&](JsonWriter&) {});
      } else {
        log.Write("workspace_invalid", [&](JsonWriter& w) {
          w.Key("errors").BeginArray();
          for (const Diagnostic& d : reloaded.diagnostics) {
            if (d.is_error()) w.String(d.ToString());
          }
          w.EndArray();
          w.Key("action").String("kept the last valid workspace; fix the file");
        });
      }
    }

    absl::Time now = options_.once && options_.now ? *options_.now : absl::Now();
    std::set<std::string> busy_now;
    {
      std::lock_guard<std::mutex> lock(mu);
      busy_now = busy;
    }
    std::map<std::string, ScheduleState> before = states;
    std::vector<ScheduleDecision> decisions =
        planner.Plan(workspace->models, busy_now, now, states);
    for (const auto& [model, state] : states) {
      auto it = before.find(model);
      if (it != before.end() && it->second.last_tick == state.last_tick) continue;
      absl::Status saved = (*store)->SetScheduleState(model, state);
      if (!saved.ok()) {
        error = saved;
        break;
      }
    }
    if (!error.ok()) break;
    for (const ScheduleDecision& d : decisions) {
      const bool run = d.action == ScheduleDecision::Action::kRun;
      log.Write(run ? "schedule_due" : "schedule_skipped", [&](JsonWriter& w) {
        w.Key("model").String(d.model);
        w.Key("tick").String(TickText(d.tick));
        if (d.missed > 0) w.Key("missed_ticks").Int(d.missed);
        if (!run) w.Key("reason").String("the previous run of this model is still going");
      });
      if (!run) continue;
      std::lock_guard<std::mutex> lock(mu);
      busy.insert(d.model);
      queue.push_back(Job{d.model, workspace, before[d.model]});
      cv.notify_all();
    }
    if (options_.once || stop_.load()) break;
    for (auto waited = std::chrono::milliseconds(0); waited < options_.poll && !stop_.load();
         waited += std::chrono::milliseconds(50)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (stop_.load()) break;
  }

  {
    std::lock_guard<std::mutex> lock(mu);
    if (options_.once && error.ok()) {
      drain = true;
    } else {
      worker_stop = true;
    }
  }
  cv.notify_all();
  worker.join();
  // Runs that were queued but not started are due again at the next start.
  for (const Job& job : dropped) {
    (void)(*store)->SetScheduleState(job.model, job.previous);
    log.Write("run_not_started", [&](JsonWriter& w) {
      w.Key("model").String(job.model);
      w.Key("reason").String("stopping; the run is due again when the service restarts");
    });
  }
  log.Write("scheduler_stopped", [&](JsonWriter& w) { w.Key("runs").Int(outcome.runs); });
  if (!error.ok()) return error;
  return outcome;
}

}  // namespace backflow
