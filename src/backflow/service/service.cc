#include "backflow/service/service.h"

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "backflow/alerts/alert_dispatcher.h"
#include "backflow/alerts/alert_manager.h"
#include "backflow/api/api_service.h"
#include "backflow/api/http_server.h"
#include "backflow/common/clock.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/common/json_writer.h"
#include "backflow/common/metrics.h"
#include "backflow/config/workspace.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/scheduler/planner.h"
#include "backflow/secrets/workspace_secrets.h"
#include "backflow/state/open_state_store.h"
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

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

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

// Counts every HTTP request connectors make, by host and status code.
class MeteredHttpClient : public HttpClient {
 public:
  MeteredHttpClient(HttpClient* inner, Metrics* metrics) : inner_(inner), metrics_(metrics) {}
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request) override {
    absl::StatusOr<HttpResponse> r = inner_->Send(request);
    std::string host = request.url;
    if (size_t scheme = host.find("://"); scheme != std::string::npos) host.erase(0, scheme + 3);
    host = host.substr(0, host.find('/'));
    metrics_->Add("backflow_http_requests_total",
                  {host, r.ok() ? std::to_string(r->status) : "error"});
    return r;
  }

 private:
  HttpClient* inner_;
  Metrics* metrics_;
};

void DeclareMetrics(Metrics& m) {
  m.Declare("backflow_runs_total", Metrics::Type::kCounter, "Mapping runs finished, by status.",
            {"mapping", "status"});
  m.Declare("backflow_records_total", Metrics::Type::kCounter,
            "Records a run sent or rejected, by outcome (succeeded, failed, rejected).",
            {"mapping", "outcome"});
  m.Declare("backflow_rows_extracted_total", Metrics::Type::kCounter,
            "Rows read from the model's query.", {"model"});
  m.Declare("backflow_run_duration_seconds", Metrics::Type::kHistogram,
            "Duration of finished mapping runs.", {"mapping"},
            {1, 5, 15, 60, 300, 900, 1800, 3600, 7200});
  m.Declare("backflow_last_success_timestamp_seconds", Metrics::Type::kGauge,
            "When the mapping last finished a run without a run-level failure (Unix seconds).",
            {"mapping"});
  m.Declare("backflow_http_requests_total", Metrics::Type::kCounter,
            "HTTP requests to destinations and warehouses, by host and status code.",
            {"host", "code"});
  m.Declare("backflow_queue_depth", Metrics::Type::kGauge,
            "Runs waiting for a worker (queued) and being worked on (running).", {"status"});
  m.Declare("backflow_rate_limit_wait_seconds_total", Metrics::Type::kCounter,
            "Time requests waited for a destination's rate limiter, in all.", {});
  m.AddCollector([](Metrics& self) {
    self.Set("backflow_rate_limit_wait_seconds_total", {},
             std::chrono::duration<double>(RateLimiter::process_total_wait()).count());
  });
  m.Declare("backflow_schedule_skipped_ticks_total", Metrics::Type::kCounter,
            "Schedule ticks skipped because the model's previous run was still going.", {"model"});
}

// What a worker is doing, shared with the lease keeper.
struct WorkerSlot {
  std::string id;
  std::mutex mu;
  std::vector<int64_t> run_ids;       // claimed and not finished
  std::set<int64_t> cancelled_ids;    // of run_ids: cancellation requested
  std::atomic<bool> cancel{false};    // stop every run of the claim
  std::atomic<bool> shutdown{false};  // the cancel comes from stopping the service
};

}  // namespace

absl::Status ParseListenAddress(const std::string& listen, std::string& host, uint16_t& port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size()) {
    return absl::InvalidArgumentError(
        fmt::format("--listen \"{}\" must be HOST:PORT, e.g. 127.0.0.1:8321", listen));
  }
  host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int64_t p = 0;
  for (char c : listen.substr(colon + 1)) {
    if (c < '0' || c > '9' || p > 65535) {
      return absl::InvalidArgumentError(fmt::format("--listen \"{}\": bad port", listen));
    }
    p = p * 10 + (c - '0');
  }
  if (p > 65535)
    return absl::InvalidArgumentError(fmt::format("--listen \"{}\": bad port", listen));
  port = static_cast<uint16_t>(p);
  if (host.empty()) host = "127.0.0.1";
  return absl::OkStatus();
}

bool IsLoopbackAddress(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

Service::Service(ServiceOptions options, const Registry& registry, ConnectorEnv env, std::FILE* log)
    : options_(std::move(options)), registry_(registry), env_(env), log_(log) {}

absl::StatusOr<ServiceOutcome> Service::Run() {
  Log log(log_);
  LoadResult loaded = LoadWorkspaceWithSecrets(options_.config_path, registry_);
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
  std::mutex ws_mu;
  auto workspace = std::make_shared<const Workspace>(std::move(loaded.workspace));
  auto current = [&] {
    std::lock_guard<std::mutex> lock(ws_mu);
    return workspace;
  };
  std::optional<fs::file_time_type> loaded_at = ModifiedAt(options_.config_path);
  // Re-reads the workspace file (and its secrets) when it changed since the
  // last read, or always with `force` (the API changed the file or a secret).
  // An invalid file keeps the last valid workspace. Called by the scheduler
  // and, through ApiOptions::reload, by API requests.
  std::mutex reload_mu;
  std::atomic<bool> workspace_changed{false};  // the planner must look again
  auto reload = [&](bool force) {
    std::lock_guard<std::mutex> reload_lock(reload_mu);
    std::optional<fs::file_time_type> modified = ModifiedAt(options_.config_path);
    if (!force && (!modified || modified == loaded_at)) return;
    loaded_at = modified;
    LoadResult reloaded = LoadWorkspaceWithSecrets(options_.config_path, registry_);
    if (reloaded.ok()) {
      {
        std::lock_guard<std::mutex> lock(ws_mu);
        workspace = std::make_shared<const Workspace>(std::move(reloaded.workspace));
      }
      workspace_changed.store(true);
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
  };
  const std::string state_url = workspace->state_url;
  const std::string local_dir = workspace->LocalStateDir();

  absl::StatusOr<std::unique_ptr<StateStore>> opened = OpenStateStore(state_url);
  if (!opened.ok()) return opened.status();
  std::unique_ptr<StateStore> store = *std::move(opened);
  (void)store->MarkInterruptedRuns();

  Metrics metrics;
  DeclareMetrics(metrics);
  MeteredHttpClient metered(env_.http, &metrics);
  ConnectorEnv env = env_;
  if (env.http != nullptr) env.http = &metered;

  // Alerts: one manager, rebuilt when the workspace changes, on its own
  // state-store handle, used by the alert thread only: a worker hands the
  // run over and goes on (a receiver that is down holds an alert for up to
  // about a minute). Stopping sends what is queued.
  std::unique_ptr<StateStore> alerts_store;
  std::unique_ptr<AlertManager> alerts;
  std::shared_ptr<const Workspace> alerts_workspace;
  auto send_alerts = [&](const RunInfo& run) {
    if (env.http == nullptr || env.clock == nullptr) return;
    std::shared_ptr<const Workspace> ws = current();
    if (ws != alerts_workspace) {
      alerts.reset();
      alerts_workspace = ws;
      if (ws->alerts.empty()) return;
      if (alerts_store == nullptr) {
        absl::StatusOr<std::unique_ptr<StateStore>> opened = OpenStateStore(state_url);
        if (!opened.ok()) return;
        alerts_store = *std::move(opened);
      }
      absl::StatusOr<std::unique_ptr<AlertManager>> created =
          AlertManager::Create(*ws, *alerts_store, *env.http, *env.clock, [&](const AlertEvent& e) {
            log.Write(e.event, [&](JsonWriter& w) { e.AppendJsonFields(w); });
          });
      if (!created.ok()) {
        log.Write("alerts_unavailable",
                  [&](JsonWriter& w) { w.Key("error").String(Msg(created.status())); });
        return;
      }
      alerts = *std::move(created);
    }
    if (alerts != nullptr && !alerts->empty()) alerts->OnRunFinished(run);
  };
  AlertDispatcher alert_thread(send_alerts);
  auto alert = [&](const RunInfo& run) {
    if (options_.on_run_finished) options_.on_run_finished(run);
    alert_thread.Enqueue(run);
  };

  std::mutex mu;
  std::condition_variable cv;
  bool deciding_done = false;  // with `once`: the scheduler has queued what is due
  ServiceOutcome outcome;
  auto wake = [&] { cv.notify_all(); };

  // ---- REST API.
  std::unique_ptr<api::ApiService> api_service;
  std::unique_ptr<api::HttpServer> server;
  if (!options_.listen.empty()) {
    std::string host;
    uint16_t port = 0;
    if (absl::Status s = ParseListenAddress(options_.listen, host, port); !s.ok()) return s;
    absl::StatusOr<std::vector<ApiToken>> tokens = store->ListApiTokens();
    if (!tokens.ok()) return tokens.status();
    if (!IsLoopbackAddress(host) && tokens->empty()) {
      return absl::FailedPreconditionError(fmt::format(
          "refusing to serve the API on {} (not loopback) with no API token: anyone who can "
          "reach it could not use it, and an open door is worse; create a token with `backflow "
          "token create NAME` first, or listen on 127.0.0.1",
          options_.listen));
    }
    api::ApiOptions api_options;
    api_options.registry = &registry_;
    api_options.env = env;
    api_options.state_url = state_url;
    api_options.workspace = current;
    api_options.wake_workers = wake;
    api_options.reload = reload;
    api_options.metrics = &metrics;
    api_service = std::make_unique<api::ApiService>(std::move(api_options));
    api::HttpServer::Options server_options;
    server_options.address = host;
    server_options.port = port;
    server = std::make_unique<api::HttpServer>(
        server_options, [&](const api::HttpRequest& r) { return api_service->Handle(r); });
    absl::StatusOr<uint16_t> bound = server->Start();
    if (!bound.ok()) return bound.status();
    log.Write("api_listening", [&](JsonWriter& w) {
      w.Key("address").String(host);
      w.Key("port").Int(*bound);
      w.Key("url").String(fmt::format("http://{}:{}/api/v1", host, *bound));
      w.Key("tokens").Int(static_cast<int64_t>(tokens->size()));
    });
  }

  // ---- Workers.
  char hostname[256] = {};
  gethostname(hostname, sizeof(hostname) - 1);
  const int worker_count = std::max(1, options_.workers);
  std::vector<std::unique_ptr<WorkerSlot>> slots;
  for (int i = 0; i < worker_count; ++i) {
    slots.push_back(std::make_unique<WorkerSlot>());
    slots.back()->id = fmt::format("{}:{}:{}", hostname, getpid(), i + 1);
  }

  auto work = [&](WorkerSlot& slot) {
    absl::StatusOr<std::unique_ptr<StateStore>> own = OpenStateStore(state_url);
    if (!own.ok()) {
      log.Write("worker_failed", [&](JsonWriter& w) {
        w.Key("worker").String(slot.id);
        w.Key("error").String(Msg(own.status()));
      });
      return;
    }
    StateStore& st = **own;
    while (true) {
      if (stop_.load() && !options_.once) break;
      absl::StatusOr<std::vector<RunInfo>> claimed =
          st.ClaimRuns(slot.id, absl::Now(), options_.lease);
      if (!claimed.ok() || claimed->empty()) {
        if (!claimed.ok()) {
          log.Write("queue_unavailable", [&](JsonWriter& w) {
            w.Key("worker").String(slot.id);
            w.Key("error").String(Msg(claimed.status()));
          });
        }
        std::unique_lock<std::mutex> lock(mu);
        if (options_.once && deciding_done && claimed.ok()) break;
        cv.wait_for(lock, options_.poll);
        continue;
      }
      std::shared_ptr<const Workspace> ws = current();
      const std::string model = claimed->front().model;
      {
        std::lock_guard<std::mutex> lock(slot.mu);
        slot.run_ids.clear();
        slot.cancelled_ids.clear();
        for (const RunInfo& r : *claimed) slot.run_ids.push_back(r.id);
      }
      slot.cancel.store(false);
      SyncOptions so;
      so.trigger = claimed->front().trigger;
      so.cancel = &slot.cancel;
      // One mapping's run cancelled through the API: only that mapping stops.
      so.cancel_mapping = [&slot, &so](const std::string& mapping) {
        auto it = so.queued_runs.find(mapping);
        if (it == so.queued_runs.end()) return false;
        std::lock_guard<std::mutex> lock(slot.mu);
        return slot.cancelled_ids.count(it->second.id) > 0;
      };
      std::vector<std::string> mappings;
      auto finish_unrunnable = [&](RunInfo run, const std::string& error) {
        run.status = RunStatus::kFailed;
        run.error = error;
        run.finished_at = FormatIso8601(SystemClock().Now());
        (void)st.UpdateRun(run);
        log.Write("run_failed", [&](JsonWriter& w) {
          w.Key("model").String(run.model);
          w.Key("mapping").String(run.mapping);
          w.Key("run_id").Int(run.id);
          w.Key("error").String(error);
        });
        alert(run);
      };
      for (const RunInfo& r : *claimed) {
        const MappingConfig* m = ws->FindMapping(r.mapping);
        if (m == nullptr || m->model != r.model) {
          finish_unrunnable(r, fmt::format("mapping \"{}\" is no longer in the workspace of model "
                                           "\"{}\"; nothing was sent",
                                           r.mapping, r.model));
          continue;
        }
        so.full_resync |= r.full_resync;
        so.queued_runs[r.mapping] = r;
        mappings.push_back(r.mapping);
      }
      bool failed = false, partial = false;
      if (!mappings.empty()) {
        log.Write("run_started", [&](JsonWriter& w) {
          w.Key("model").String(model);
          w.Key("worker").String(slot.id);
          w.Key("runs").BeginArray();
          for (const std::string& m : mappings) {
            w.BeginObject().Key("mapping").String(m);
            w.Key("run_id").Int(so.queued_runs[m].id).EndObject();
          }
          w.EndArray();
        });
        SyncEngine engine(*ws, registry_, st, env, local_dir);
        absl::StatusOr<std::vector<MappingRunResult>> results = engine.Run(model, mappings, so);
        // Another process syncs one of these mappings (a `backflow sync`, or
        // a worker that lost its lease settling its last batches): wait for
        // it under this worker's lease.
        for (bool told = false;
             !results.ok() && IsMappingBusy(results.status()) && !slot.cancel.load(); told = true) {
          if (!told) {
            log.Write("run_waiting", [&](JsonWriter& w) {
              w.Key("model").String(model);
              w.Key("worker").String(slot.id);
              w.Key("reason").String(Msg(results.status()));
            });
          }
          {
            std::unique_lock<std::mutex> lock(mu);
            cv.wait_for(lock, options_.poll);
          }
          if (slot.cancel.load()) break;
          results = engine.Run(model, mappings, so);
        }
        if (!results.ok() &&
            (IsRunTakenOver(results.status()) || IsMappingBusy(results.status()))) {
          // Stopped while waiting, or no longer this worker's run: stopping
          // leaves the runs to ReleaseRuns (below); a cancellation is
          // recorded; a run another worker took is left to it (the store
          // refuses this worker's writes).
          bool taken = IsRunTakenOver(results.status());
          if (!taken && !slot.shutdown.load()) {
            for (const std::string& m : mappings) {
              RunInfo run = so.queued_runs[m];
              run.status = RunStatus::kCancelled;
              run.error = "cancelled before it started; nothing was sent";
              run.finished_at = FormatIso8601(SystemClock().Now());
              absl::Status updated = st.UpdateRun(run);
              taken |= IsRunTakenOver(updated);
            }
          }
          log.Write(taken ? "run_abandoned" : "run_stopped_waiting", [&](JsonWriter& w) {
            w.Key("model").String(model);
            w.Key("worker").String(slot.id);
            w.Key("run_ids").BeginArray();
            for (const std::string& m : mappings) w.Int(so.queued_runs[m].id);
            w.EndArray();
            w.Key("reason").String(taken ? "another worker took the run over after this "
                                           "worker's lease expired; it finishes the run"
                                         : Msg(results.status()));
          });
        } else if (!results.ok()) {
          failed = true;
          for (const std::string& m : mappings) {
            finish_unrunnable(so.queued_runs[m],
                              fmt::format("the run could not start: {}", Msg(results.status())));
          }
        } else {
          for (const MappingRunResult& r : *results) {
            RunInfo run = r.run;
            if (run.status == RunStatus::kCancelled && slot.shutdown.load()) {
              // Stopping: the batches in flight settled; the next worker finishes the run.
              run.status = RunStatus::kQueued;
              run.finished_at.clear();
              run.error.clear();
              (void)st.UpdateRun(run);
              log.Write("run_requeued", [&](JsonWriter& w) {
                w.Key("mapping").String(run.mapping);
                w.Key("run_id").Int(run.id);
                w.Key("reason").String(
                    "the service is stopping; the run continues at the "
                    "next start or on another worker");
              });
              continue;
            }
            failed |= run.status == RunStatus::kFailed;
            partial |= run.status == RunStatus::kPartial;
            const RunCounts& c = run.counts;
            const std::string status(RunStatusName(run.status));
            metrics.Add("backflow_runs_total", {run.mapping, status});
            metrics.Add("backflow_records_total", {run.mapping, "succeeded"},
                        static_cast<double>(c.succeeded));
            metrics.Add("backflow_records_total", {run.mapping, "failed"},
                        static_cast<double>(c.failed));
            metrics.Add("backflow_records_total", {run.mapping, "rejected"},
                        static_cast<double>(c.rejected));
            metrics.Observe("backflow_run_duration_seconds", {run.mapping}, run.duration_s);
            if (run.status == RunStatus::kSucceeded || run.status == RunStatus::kPartial) {
              metrics.Set("backflow_last_success_timestamp_seconds", {run.mapping},
                          static_cast<double>(absl::ToUnixSeconds(absl::Now())));
            }
            log.Write("run_finished", [&](JsonWriter& w) {
              w.Key("model").String(model);
              w.Key("mapping").String(run.mapping);
              w.Key("run_id").Int(run.id);
              w.Key("status").String(status);
              w.Key("extracted").Int(c.extracted);
              w.Key("added").Int(c.added);
              w.Key("updated").Int(c.updated);
              w.Key("deleted").Int(c.deleted);
              w.Key("succeeded").Int(c.succeeded);
              w.Key("failed").Int(c.failed);
              w.Key("rejected").Int(c.rejected);
              w.Key("duration_s").Double(run.duration_s);
              if (!run.error.empty()) w.Key("error").String(run.error);
            });
            alert(run);
          }
          if (!results->empty()) {
            metrics.Add("backflow_rows_extracted_total", {model},
                        static_cast<double>(results->front().run.counts.extracted));
          }
        }
      }
      {
        std::lock_guard<std::mutex> lock(slot.mu);
        slot.run_ids.clear();
      }
      std::lock_guard<std::mutex> lock(mu);
      ++outcome.runs;
      if (failed) {
        ++outcome.failed_runs;
      } else if (partial) {
        ++outcome.partial_runs;
      }
    }
    (void)st.ReleaseRuns(slot.id);
  };
  std::vector<std::thread> workers;
  for (auto& slot : slots) workers.emplace_back(work, std::ref(*slot));

  // ---- Leases: renewed while runs go on; cancellations and lost leases seen.
  std::atomic<bool> keeper_stop{false};
  std::thread keeper([&] {
    absl::StatusOr<std::unique_ptr<StateStore>> own = OpenStateStore(state_url);
    const auto period = std::min<std::chrono::milliseconds>(
        options_.poll, std::chrono::milliseconds(absl::ToInt64Milliseconds(options_.lease / 3)));
    while (!keeper_stop.load()) {
      for (auto& slot : slots) {
        std::vector<int64_t> ids;
        {
          std::lock_guard<std::mutex> lock(slot->mu);
          ids = slot->run_ids;
        }
        if (ids.empty() || !own.ok()) continue;
        absl::StatusOr<LeaseRenewal> renewal =
            (*own)->RenewLeases(slot->id, ids, absl::Now(), options_.lease);
        if (!renewal.ok()) continue;
        // Only what concerns the runs the worker still holds (it may have
        // finished them and claimed others meanwhile).
        std::vector<int64_t> newly_cancelled, lost;
        bool all_cancelled = true;
        {
          std::lock_guard<std::mutex> lock(slot->mu);
          auto held = [&](int64_t id) {
            return std::find(slot->run_ids.begin(), slot->run_ids.end(), id) != slot->run_ids.end();
          };
          for (int64_t id : renewal->cancel_requested) {
            if (held(id) && slot->cancelled_ids.insert(id).second) newly_cancelled.push_back(id);
          }
          for (int64_t id : renewal->lost) {
            if (held(id)) lost.push_back(id);
          }
          for (int64_t id : slot->run_ids) all_cancelled &= slot->cancelled_ids.count(id) > 0;
          all_cancelled &= !slot->run_ids.empty();
        }
        if (!newly_cancelled.empty()) {
          log.Write("run_cancel_requested", [&](JsonWriter& w) {
            w.Key("worker").String(slot->id);
            w.Key("run_ids").BeginArray();
            for (int64_t id : newly_cancelled) w.Int(id);
            w.EndArray();
          });
        }
        // Every run of the claim cancelled: stop it all (extraction too).
        if (all_cancelled) slot->cancel.store(true);
        if (!lost.empty() && !slot->cancel.exchange(true)) {
          log.Write("lease_lost", [&](JsonWriter& w) {
            w.Key("worker").String(slot->id);
            w.Key("run_ids").BeginArray();
            for (int64_t id : lost) w.Int(id);
            w.EndArray();
          });
        }
      }
      std::unique_lock<std::mutex> lock(mu);
      cv.wait_for(lock, period, [&] { return keeper_stop.load(); });
    }
  });

  // The API may swap the workspace from now on: read it through current().
  const std::shared_ptr<const Workspace> started_with = current();
  log.Write("scheduler_started", [&](JsonWriter& w) {
    w.Key("config").String(options_.config_path);
    int scheduled = 0;
    for (const ModelConfig& m : started_with->models) {
      scheduled += m.schedule.kind != Schedule::Kind::kManual;
    }
    w.Key("scheduled_models").Int(scheduled);
    w.Key("workers").Int(worker_count);
  });

  // ---- Scheduler.
  // From here on a failure stops the threads before it is returned.
  absl::Status error;
  std::map<std::string, ScheduleState> states;
  for (const ModelConfig& m : started_with->models) {
    absl::StatusOr<std::optional<ScheduleState>> s = store->GetScheduleState(m.name);
    if (!s.ok()) {
      error = s.status();
      break;
    }
    if (s->has_value()) states[m.name] = **s;
  }
  SchedulePlanner planner;
  while (error.ok()) {
    // Pick up edits of the workspace file; an invalid edit keeps the last valid one.
    reload(/*force=*/false);
    if (workspace_changed.exchange(false)) planner.Invalidate();
    std::shared_ptr<const Workspace> ws = current();

    // Models with a run queued or running are busy: their ticks are skipped.
    // (AdvanceSchedule checks again as it queues: a run queued meanwhile,
    // e.g. through the API, makes it skip the tick all the same.)
    std::map<std::string, int64_t> active_run;  // busy model -> its oldest active run
    for (RunStatus s : {RunStatus::kQueued, RunStatus::kRunning}) {
      RunFilter f;
      f.status = s;
      f.limit = 100'000;
      absl::StatusOr<std::vector<RunInfo>> active = store->ListRuns(f);
      if (!active.ok()) {
        error = active.status();
        break;
      }
      for (const RunInfo& r : *active) {
        auto [it, inserted] = active_run.emplace(r.model, r.id);
        if (!inserted) it->second = std::min(it->second, r.id);
      }
      metrics.Set("backflow_queue_depth", {std::string(RunStatusName(s))},
                  static_cast<double>(active->size()));
    }
    if (!error.ok()) break;
    std::set<std::string> busy;
    for (const auto& [model, id] : active_run) busy.insert(model);
    if (options_.after_busy_check) options_.after_busy_check();

    absl::Time now = options_.once && options_.now ? *options_.now : absl::Now();
    std::map<std::string, ScheduleState> before = states;
    std::vector<ScheduleDecision> decisions = planner.Plan(ws->models, busy, now, states);
    // Every changed state is stored by compare-and-set on the state this
    // process read, with the decision's runs: when several processes share
    // the store, the first to decide a tick queues it and the others learn
    // the stored state instead; when a mapping of the model has a run queued
    // or running by then, the tick is skipped as for a busy model.
    std::map<std::string, const ScheduleDecision*> decided;
    for (const ScheduleDecision& d : decisions) decided[d.model] = &d;
    auto advance = [&](const std::string& model, const std::vector<RunInfo>& runs,
                       const ScheduleState& if_busy) -> StateStore::AdvanceOutcome {
      auto was = before.find(model);
      std::optional<int64_t> expected;
      if (was != before.end()) expected = was->second.last_tick;
      absl::StatusOr<StateStore::AdvanceOutcome> outcome =
          store->AdvanceSchedule(model, expected, states[model], runs, if_busy);
      if (!outcome.ok()) {
        error = outcome.status();
        return {};
      }
      if (outcome->result == StateStore::AdvanceOutcome::Result::kSkippedBusy) {
        states[model] = if_busy;
        planner.Invalidate();
      }
      if (outcome->result != StateStore::AdvanceOutcome::Result::kDecidedElsewhere) {
        return *std::move(outcome);
      }
      absl::StatusOr<std::optional<ScheduleState>> stored = store->GetScheduleState(model);
      if (!stored.ok()) {
        error = stored.status();
        return {};
      }
      if (stored->has_value()) {
        states[model] = **stored;
      } else {
        states.erase(model);
      }
      planner.Invalidate();
      return *std::move(outcome);
    };
    for (const auto& [model, state] : std::map<std::string, ScheduleState>(states)) {
      auto was = before.find(model);
      if (decided.count(model) > 0) continue;
      if (was != before.end() && was->second.last_tick == state.last_tick) continue;
      advance(model, {}, state);  // first sight of the model: counting starts now
      if (!error.ok()) break;
    }
    if (!error.ok()) break;
    for (const ScheduleDecision& d : decisions) {
      std::vector<RunInfo> runs;
      if (d.action == ScheduleDecision::Action::kRun) {
        for (const MappingConfig& m : ws->mappings) {
          if (m.model != d.model || !m.enabled) continue;
          RunInfo r;
          r.mapping = m.name;
          r.model = d.model;
          r.destination = m.destination;
          r.trigger = "schedule";
          r.requested_at = FormatIso8601(SystemClock().Now());
          runs.push_back(std::move(r));
        }
      }
      StateStore::AdvanceOutcome outcome = advance(d.model, runs, d.state_if_busy);
      if (!error.ok()) break;
      if (outcome.result == StateStore::AdvanceOutcome::Result::kDecidedElsewhere) {
        log.Write("schedule_decided_elsewhere", [&](JsonWriter& w) {
          w.Key("model").String(d.model);
          w.Key("tick").String(TickText(d.tick));
          w.Key("reason").String(
              "another process sharing the state store acted on this tick first");
        });
        continue;
      }
      // Skipped by the planner (busy when listed) or by the store (a run was
      // queued since, e.g. through the API): the same skipped tick.
      std::optional<int64_t> still_going;
      if (outcome.result == StateStore::AdvanceOutcome::Result::kSkippedBusy) {
        still_going = outcome.active->id;
      } else if (d.action == ScheduleDecision::Action::kSkip) {
        auto it = active_run.find(d.model);
        if (it != active_run.end()) still_going = it->second;
      }
      const bool run = d.action == ScheduleDecision::Action::kRun &&
                       outcome.result == StateStore::AdvanceOutcome::Result::kQueued;
      if (!run) metrics.Add("backflow_schedule_skipped_ticks_total", {d.model});
      log.Write(run ? "schedule_due" : "schedule_skipped", [&](JsonWriter& w) {
        w.Key("model").String(d.model);
        w.Key("tick").String(TickText(d.tick));
        if (d.missed > 0) w.Key("missed_ticks").Int(d.missed);
        if (!run) w.Key("reason").String("the previous run of this model is still going");
        if (still_going) w.Key("active_run_id").Int(*still_going);
        if (!outcome.ids.empty()) {
          w.Key("run_ids").BeginArray();
          for (int64_t id : outcome.ids) w.Int(id);
          w.EndArray();
        }
      });
      if (run && runs.empty()) {
        log.Write("run_skipped", [&](JsonWriter& w) {
          w.Key("model").String(d.model);
          w.Key("reason").String("the model has no enabled mapping");
        });
      }
    }
    if (!error.ok()) break;
    wake();
    if (options_.once || stop_.load()) break;
    for (auto waited = std::chrono::milliseconds(0); waited < options_.poll && !stop_.load();
         waited += std::chrono::milliseconds(50)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (stop_.load()) break;
  }

  // ---- Stopping.
  {
    std::lock_guard<std::mutex> lock(mu);
    deciding_done = true;
    if (!options_.once || !error.ok()) stop_.store(true);
  }
  if (stop_.load()) {
    for (auto& slot : slots) {
      slot->shutdown.store(true);
      slot->cancel.store(true);
    }
  }
  cv.notify_all();
  for (std::thread& t : workers) t.join();
  alert_thread.Close();
  keeper_stop.store(true);
  cv.notify_all();
  keeper.join();
  if (server) server->Stop();
  log.Write("scheduler_stopped", [&](JsonWriter& w) { w.Key("runs").Int(outcome.runs); });
  if (!error.ok()) return error;
  return outcome;
}

}  // namespace backflow
