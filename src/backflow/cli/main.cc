// `backflow`: the command-line interface (config as code).
//
// Exit codes: 0 success; 1 a run or command failed; 2 a sync finished but
// some records failed or were rejected; 3 the workspace file is invalid.
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>

#include "backflow/catalog/json_schema.h"
#include "backflow/catalog/markdown.h"
#include "backflow/catalog/registry.h"
#include "backflow/cli/output.h"
#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/common/json_writer.h"
#include "backflow/config/workspace.h"
#include "backflow/config/workspace_editor.h"
#include "backflow/destinations/destination.h"
#include "backflow/engine/sync_engine.h"
#include "backflow/mapping/expression.h"
#include "backflow/mapping/mapper.h"
#include "backflow/ops/ops.h"
#include "backflow/secrets/secret_box.h"
#include "backflow/secrets/secret_store.h"
#include "backflow/secrets/workspace_secrets.h"
#include "backflow/service/service.h"
#include "backflow/sources/source.h"
#include "backflow/state/open_state_store.h"
#include "backflow/state/state_store.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitPartial = 2;
constexpr int kExitInvalidConfig = 3;

struct GlobalOptions {
  std::string config = "backflow.yaml";
  bool json = false;
};

void PrintError(const std::string& message) { fmt::print(stderr, "error: {}\n", message); }

// "no model named "x" (did you mean "y"?)" for a name not among `items`.
template <typename Config>
void PrintUnknown(const char* what, const std::string& name, const std::vector<Config>& items) {
  std::vector<std::string> names;
  for (const Config& item : items) names.push_back(item.name);
  std::string suggestion = ClosestMatch(name, names);
  PrintError(
      fmt::format("no {} named \"{}\"{}", what, name,
                  suggestion.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", suggestion)));
}

// Loads the workspace; prints diagnostics (warnings too) to stderr.
std::optional<Workspace> Load(const GlobalOptions& g, bool quiet_warnings = false) {
  LoadResult result = LoadWorkspaceWithSecrets(g.config, BuiltinRegistry());
  for (const Diagnostic& d : result.diagnostics) {
    if (!d.is_error() && quiet_warnings) continue;
    fmt::print(stderr, "{}\n", d.ToString());
  }
  if (!result.ok()) {
    fmt::print(stderr, "{} error{} in {}; run `backflow validate` after fixing them\n",
               result.error_count(), result.error_count() == 1 ? "" : "s", g.config);
    return std::nullopt;
  }
  return std::move(result.workspace);
}

std::string StatePath(const Workspace& ws) { return ws.StateForDisplay(); }

std::string StateDir(const Workspace& ws) { return ws.LocalStateDir(); }

absl::StatusOr<std::unique_ptr<StateStore>> OpenState(const Workspace& ws) {
  return OpenStateStore(ws.state_url);
}

// Opens the state store for the runs commands, first marking the runs of
// processes that died as interrupted. Prints the error and returns null on failure.
std::unique_ptr<StateStore> OpenStateForReading(const Workspace& ws) {
  auto state = OpenState(ws);
  if (!state.ok()) {
    PrintError(fmt::format("state store: {}", state.status().message()));
    return nullptr;
  }
  (void)(*state)->MarkInterruptedRuns();
  return *std::move(state);
}

// ---------------------------------------------------------------- validate

int Validate(const GlobalOptions& g) {
  LoadResult result = LoadWorkspaceWithSecrets(g.config, BuiltinRegistry());
  if (g.json) {
    nlohmann::json out;
    out["valid"] = result.ok();
    out["file"] = g.config;
    out["diagnostics"] = nlohmann::json::array();
    for (const Diagnostic& d : result.diagnostics) {
      out["diagnostics"].push_back({{"severity", d.is_error() ? "error" : "warning"},
                                    {"file", d.file},
                                    {"line", d.line},
                                    {"column", d.column},
                                    {"path", d.path},
                                    {"message", d.message},
                                    {"hint", d.hint}});
    }
    fmt::print("{}\n", out.dump());
    return result.ok() ? kExitOk : kExitInvalidConfig;
  }
  for (const Diagnostic& d : result.diagnostics) fmt::print("{}\n", d.ToString());
  if (!result.ok()) {
    fmt::print("{}: {} error{}\n", g.config, result.error_count(),
               result.error_count() == 1 ? "" : "s");
    return kExitInvalidConfig;
  }
  const Workspace& ws = result.workspace;
  fmt::print("{} is valid: {} source{}, {} model{}, {} destination{}, {} mapping{}\n", g.config,
             ws.sources.size(), ws.sources.size() == 1 ? "" : "s", ws.models.size(),
             ws.models.size() == 1 ? "" : "s", ws.destinations.size(),
             ws.destinations.size() == 1 ? "" : "s", ws.mappings.size(),
             ws.mappings.size() == 1 ? "" : "s");
  return kExitOk;
}

// ------------------------------------------------------------------ export

// The workspace as `backflow serve` sees it: the file's document with the
// defaults the loader fills in written out, ${secret:...} and ${env:...}
// references as written (never their values), clear secret values masked.
// Refused, like `serve`, when the workspace does not load.
int Export(const GlobalOptions& g) {
  LoadResult result = LoadWorkspaceWithSecrets(g.config, BuiltinRegistry());
  for (const Diagnostic& d : result.diagnostics) fmt::print(stderr, "{}\n", d.ToString());
  if (!result.ok()) {
    fmt::print(stderr, "{} error{} in {}; run `backflow validate` after fixing them\n",
               result.error_count(), result.error_count() == 1 ? "" : "s", g.config);
    return kExitInvalidConfig;
  }
  absl::StatusOr<std::string> text = ReadTextFile(g.config);
  if (!text.ok()) {
    PrintError(std::string(text.status().message()));
    return kExitFailed;
  }
  absl::StatusOr<WorkspaceDocument> doc = WorkspaceDocument::Parse(*text);
  if (!doc.ok()) {
    PrintError(std::string(doc.status().message()));
    return kExitFailed;
  }
  OrderedJson out = ExportDocument(*doc, &result.workspace, BuiltinRegistry());
  if (g.json) {
    fmt::print("{}\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
    return kExitOk;
  }
  fmt::print(
      "# The workspace {} as `backflow serve` sees it: defaults filled in, secret and\n"
      "# environment references as written (values never printed).\n{}",
      g.config, EmitYaml(out));
  return kExitOk;
}

// --------------------------------------------------------- test-connection

int TestConnection(const GlobalOptions& g, const std::string& name) {
  auto ws = Load(g, true);
  if (!ws) return kExitInvalidConfig;
  auto http = NewCurlHttpClient();
  absl::StatusOr<ops::ConnectionCheck> check =
      ops::CheckConnection(*ws, BuiltinRegistry(), ConnectorEnv{http.get(), &SystemClock()}, name);
  if (!check.ok()) {
    PrintError(std::string(check.status().message()));
    return kExitFailed;
  }
  const absl::Status& status = check->status;
  if (g.json) {
    nlohmann::json out = {{"name", name},
                          {"kind", check->kind},
                          {"type", check->type},
                          {"ok", status.ok()},
                          {"duration_s", check->duration_s}};
    if (!status.ok()) out["error"] = std::string(status.message());
    fmt::print("{}\n", out.dump());
  } else if (status.ok()) {
    fmt::print("ok: {} \"{}\" ({}) is reachable ({})\n", check->kind, name, check->type,
               Duration(check->duration_s));
  } else {
    fmt::print("failed: {} \"{}\" ({}): {}\n", check->kind, name, check->type, status.message());
  }
  return status.ok() ? kExitOk : kExitFailed;
}

// ----------------------------------------------------------------- preview

int Preview(const GlobalOptions& g, const std::string& model_name, int limit) {
  auto ws = Load(g, true);
  if (!ws) return kExitInvalidConfig;
  const ModelConfig* model = ws->FindModel(model_name);
  if (model == nullptr) {
    PrintUnknown("model", model_name, ws->models);
    return kExitFailed;
  }
  auto http = NewCurlHttpClient();
  absl::StatusOr<ops::PreviewResult> preview =
      ops::Preview(*ws, BuiltinRegistry(), ConnectorEnv{http.get(), &SystemClock()}, model->source,
                   model->sql, model->primary_key, limit);
  absl::Status status = preview.ok() ? preview->status : preview.status();
  if (!status.ok()) {
    PrintError(fmt::format("model \"{}\" on source \"{}\": {}", model->name, model->source,
                           status.message()));
    return kExitFailed;
  }
  const Schema& schema = preview->schema;
  const std::vector<Row>& rows = preview->rows;
  bool has_key = preview->has_key;
  if (g.json) {
    nlohmann::json out;
    out["model"] = model->name;
    out["primary_key"] = model->primary_key;
    out["columns"] = nlohmann::json::array();
    for (const Column& c : schema) {
      out["columns"].push_back({{"name", c.name},
                                {"type", std::string(ValueTypeName(c.type))},
                                {"source_type", c.source_type}});
    }
    out["rows"] = nlohmann::json::array();
    for (const Row& r : rows) {
      std::string text = "[";
      for (size_t i = 0; i < r.size(); ++i) {
        if (i > 0) text += ",";
        r[i].AppendJson(text);
      }
      out["rows"].push_back(nlohmann::json::parse(text + "]"));
    }
    fmt::print("{}\n", out.dump());
    return has_key ? kExitOk : kExitFailed;
  }
  std::vector<std::vector<std::string>> table;
  std::vector<std::string> header, types;
  for (const Column& c : schema) {
    header.push_back(c.name == model->primary_key ? c.name + " (key)" : c.name);
    types.push_back(std::string(ValueTypeName(c.type)) +
                    (c.source_type.empty() ? "" : " · " + c.source_type));
  }
  table.push_back(header);
  table.push_back(types);
  for (const Row& r : rows) {
    std::vector<std::string> cells;
    for (const Value& v : r) cells.push_back(v.is_null() ? "NULL" : v.ToString());
    table.push_back(cells);
  }
  fmt::print("{}", Table(table, 40, 2));
  fmt::print("{} row{} (first {} of model \"{}\" on source \"{}\")\n", rows.size(),
             rows.size() == 1 ? "" : "s", limit, model->name, model->source);
  if (!has_key) {
    PrintError(fmt::format("the model's unique identifier column \"{}\" is not in the result",
                           model->primary_key));
    return kExitFailed;
  }
  return kExitOk;
}

// ------------------------------------------------------------ mapping test

int MappingTest(const GlobalOptions& g, const std::string& mapping_name,
                const std::optional<std::string>& record_key) {
  auto ws = Load(g, true);
  if (!ws) return kExitInvalidConfig;
  const MappingConfig* mapping = ws->FindMapping(mapping_name);
  if (mapping == nullptr) {
    PrintUnknown("mapping", mapping_name, ws->mappings);
    return kExitFailed;
  }
  auto http = NewCurlHttpClient();
  absl::StatusOr<ops::MappingTestResult> t = ops::TestMapping(
      *ws, BuiltinRegistry(), ConnectorEnv{http.get(), &SystemClock()}, mapping_name, record_key);
  absl::Status status = t.ok() ? t->status : t.status();
  if (!status.ok()) {
    PrintError(std::string(status.message()));
    return kExitFailed;
  }
  const ModelConfig* model = ws->FindModel(mapping->model);
  if (g.json) {
    JsonWriter w;
    w.BeginObject().Key("mapping").String(mapping->name).Key("action").String(mapping->action);
    w.Key("key").String(t->key).Key("row").Raw(t->row_json).Key("payload").Raw(t->payload_json);
    if (!t->mapped.ok()) w.Key("error").String(std::string(t->mapped.message()));
    w.EndObject();
    fmt::print("{}\n", w.str());
  } else {
    fmt::print("mapping  {} ({} → {}.{})\n", mapping->name, model->name, mapping->destination,
               mapping->action);
    fmt::print("record   {} = {}\n", model->primary_key, t->key);
    fmt::print("row      {}\n", t->row_json);
    if (t->mapped.ok()) {
      fmt::print("payload  {}\n", t->payload_json);
      fmt::print("(nothing was sent)\n");
    } else {
      fmt::print("rejected {}\n", t->mapped.message());
    }
  }
  return t->mapped.ok() ? kExitOk : kExitFailed;
}

// -------------------------------------------------------------------- sync

void AppendRunJson(JsonWriter& w, const RunInfo& r) {
  const RunCounts& c = r.counts;
  w.Key("run_id").Int(r.id);
  w.Key("mapping").String(r.mapping);
  w.Key("status").String(RunStatusName(r.status));
  w.Key("dry_run").Bool(r.dry_run);
  w.Key("extracted").Int(c.extracted);
  w.Key("added").Int(c.added);
  w.Key("updated").Int(c.updated);
  w.Key("deleted").Int(c.deleted);
  w.Key("unchanged").Int(c.unchanged);
  w.Key("skipped").Int(c.skipped);
  w.Key("succeeded").Int(c.succeeded);
  w.Key("failed").Int(c.failed);
  w.Key("rejected").Int(c.rejected);
  w.Key("duration_s").Double(std::round(r.duration_s * 1000) / 1000);
  w.Key("timings").BeginObject();
  w.Key("extract_s").Double(std::round(r.extract_s * 1000) / 1000);
  w.Key("diff_s").Double(std::round(r.diff_s * 1000) / 1000);
  w.Key("deliver_s").Double(std::round(r.deliver_s * 1000) / 1000);
  w.EndObject();
  if (!r.error.empty()) w.Key("error").String(r.error);
}

void PrintRunSummary(const RunInfo& r, const std::vector<PlannedChange>& sample) {
  const RunCounts& c = r.counts;
  fmt::print("{} {} · {} ({} → {}) · {} in {}\n", r.dry_run ? "Dry run" : "Run", r.id, r.mapping,
             r.model, r.destination, RunStatusName(r.status), Duration(r.duration_s));
  if (r.status != RunStatus::kRunning) {
    fmt::print("  time       extract {} · compare {} · send {}\n", Duration(r.extract_s),
               Duration(r.diff_s), Duration(r.deliver_s));
  }
  fmt::print("  extracted  {} rows\n", Thousands(c.extracted));
  fmt::print("  changes    {} added · {} updated · {} deleted · {} unchanged", Thousands(c.added),
             Thousands(c.updated), Thousands(c.deleted), Thousands(c.unchanged));
  if (c.skipped > 0) fmt::print(" · {} not selected by `records`", Thousands(c.skipped));
  fmt::print("\n");
  if (r.dry_run) {
    int64_t would = c.added + c.updated + c.deleted - c.skipped;
    fmt::print("  would send {} records; nothing was sent\n", Thousands(would));
    if (c.rejected > 0) fmt::print("  rejected   {} rows\n", Thousands(c.rejected));
    if (!sample.empty()) {
      std::vector<std::vector<std::string>> table = {{"change", "key", "payload"}};
      for (const PlannedChange& p : sample) table.push_back({p.change, p.key, p.payload});
      fmt::print("\n{}", Table(table, 100));
      if (static_cast<int64_t>(sample.size()) < would) {
        fmt::print("… and {} more\n", Thousands(would - static_cast<int64_t>(sample.size())));
      }
    }
  } else {
    fmt::print("  delivery   {} succeeded · {} failed · {} rejected\n", Thousands(c.succeeded),
               Thousands(c.failed), Thousands(c.rejected));
  }
  if (!r.error.empty()) fmt::print("  error      {}\n", r.error);
  if (c.failed > 0 || c.rejected > 0) {
    fmt::print("  details    backflow runs show {}\n", r.id);
  }
}

int Sync(const GlobalOptions& g, const std::string& mapping_name, const std::string& model_name,
         const SyncOptions& base_options) {
  auto ws = Load(g, true);
  if (!ws) return kExitInvalidConfig;
  std::string model;
  std::vector<std::string> mappings;
  if (!model_name.empty()) {
    if (ws->FindModel(model_name) == nullptr) {
      PrintUnknown("model", model_name, ws->models);
      return kExitFailed;
    }
    model = model_name;
    for (const MappingConfig& m : ws->mappings) {
      if (m.model == model && m.enabled) mappings.push_back(m.name);
    }
    if (mappings.empty()) {
      PrintError(fmt::format("model \"{}\" has no enabled mapping", model));
      return kExitFailed;
    }
  } else {
    const MappingConfig* m = ws->FindMapping(mapping_name);
    if (m == nullptr) {
      PrintUnknown("mapping", mapping_name, ws->mappings);
      return kExitFailed;
    }
    if (!m->enabled) {
      PrintError(
          fmt::format("mapping \"{}\" is disabled (enabled: false in {})", m->name, g.config));
      return kExitFailed;
    }
    model = m->model;
    mappings.push_back(m->name);
  }
  auto state = OpenState(*ws);
  if (!state.ok()) {
    PrintError(fmt::format("state store: {}", state.status().message()));
    return kExitFailed;
  }
  auto http = NewCurlHttpClient();
  SyncEngine engine(*ws, BuiltinRegistry(), **state, ConnectorEnv{http.get(), &SystemClock()},
                    StateDir(*ws));
  SyncOptions options;
  options = base_options;
  const bool dry_run = options.dry_run;
  bool tty = isatty(STDERR_FILENO);
  if (tty) {
    options.on_progress = [](const SyncProgress& p) {
      double rate = 0;
      std::string line;
      if (p.phase == "extracting") {
        rate = p.elapsed_s > 0 ? p.extracted / p.elapsed_s : 0;
        line = fmt::format("extracting: {} rows ({} rows/s)", Thousands(p.extracted),
                           Thousands(static_cast<int64_t>(rate)));
      } else if (p.phase == "diffing") {
        line = fmt::format("comparing {} rows with the last sync", Thousands(p.extracted));
      } else if (p.phase == "sending") {
        line = fmt::format("sending {}: {}/{} records", p.mapping, Thousands(p.sent),
                           Thousands(p.to_send));
      }
      fmt::print(stderr, "\r\033[K{}", line);
      if (p.phase == "done") fmt::print(stderr, "\r\033[K");
      fflush(stderr);
    };
  }
  auto results = engine.Run(model, mappings, options);
  if (!results.ok()) {
    PrintError(ws->RedactSecrets(std::string(results.status().message())));
    return kExitFailed;
  }
  for (MappingRunResult& r : *results) {
    for (PlannedChange& p : r.sample) p.payload = ws->RedactSecrets(std::move(p.payload));
  }
  int exit_code = kExitOk;
  for (const MappingRunResult& r : *results) {
    if (r.run.status == RunStatus::kFailed) {
      exit_code = kExitFailed;
    } else if (r.run.status == RunStatus::kPartial && exit_code == kExitOk) {
      exit_code = kExitPartial;
    }
  }
  if (!g.json) {
    for (size_t i = 0; i < results->size(); ++i) {
      if (i > 0) fmt::print("\n");
      PrintRunSummary((*results)[i].run, (*results)[i].sample);
    }
    return exit_code;
  }
  JsonWriter w;
  if (model_name.empty()) {
    w.BeginObject();
    AppendRunJson(w, (*results)[0].run);
    if (dry_run) {
      w.Key("changes").BeginArray();
      for (const PlannedChange& p : (*results)[0].sample) {
        w.BeginObject().Key("change").String(p.change).Key("key").String(p.key);
        w.Key("payload").Raw(p.payload).EndObject();
      }
      w.EndArray();
    }
    w.EndObject();
  } else {
    RunCounts total;
    double duration = 0;
    for (const MappingRunResult& r : *results) {
      total.succeeded += r.run.counts.succeeded;
      total.failed += r.run.counts.failed;
      total.rejected += r.run.counts.rejected;
      total.added += r.run.counts.added;
      total.updated += r.run.counts.updated;
      total.deleted += r.run.counts.deleted;
      total.extracted = r.run.counts.extracted;
      duration = std::max(duration, r.run.duration_s);
    }
    w.BeginObject();
    w.Key("model").String(model);
    w.Key("run_id").Int((*results)[0].run.id);
    w.Key("status").String(exit_code == kExitOk        ? "succeeded"
                           : exit_code == kExitPartial ? "partial"
                                                       : "failed");
    w.Key("extracted").Int(total.extracted);
    w.Key("added").Int(total.added);
    w.Key("updated").Int(total.updated);
    w.Key("deleted").Int(total.deleted);
    w.Key("succeeded").Int(total.succeeded);
    w.Key("failed").Int(total.failed);
    w.Key("rejected").Int(total.rejected);
    w.Key("duration_s").Double(std::round(duration * 1000) / 1000);
    w.Key("runs").BeginArray();
    for (const MappingRunResult& r : *results) {
      w.BeginObject();
      AppendRunJson(w, r.run);
      w.EndObject();
    }
    w.EndArray().EndObject();
  }
  fmt::print("{}\n", w.str());
  return exit_code;
}

// -------------------------------------------------------------------- runs

int RunsList(const GlobalOptions& g, const std::string& mapping, int limit) {
  auto ws = Load(g, true);
  if (!ws) return kExitInvalidConfig;
  auto state = OpenStateForReading(*ws);
  if (!state) return kExitFailed;
  auto runs = state->ListRuns(mapping, limit);
  if (!runs.ok()) {
    PrintError(std::string(runs.status().message()));
    return kExitFailed;
  }
  if (g.json) {
    JsonWriter w;
    w.BeginObject().Key("runs").BeginArray();
    for (const RunInfo& r : *runs) {
      w.BeginObject();
      AppendRunJson(w, r);
      w.Key("model").String(r.model).Key("destination").String(r.destination);
      w.Key("started_at").String(r.started_at).Key("finished_at").String(r.finished_at);
      w.EndObject();
    }
    w.EndArray().EndObject();
    fmt::print("{}\n", w.str());
    return kExitOk;
  }
  if (runs->empty()) {
    fmt::print("no runs yet{}; start one with `backflow sync MAPPING`\n",
               mapping.empty() ? "" : " for mapping \"" + mapping + "\"");
    return kExitOk;
  }
  std::vector<std::vector<std::string>> table = {{"run", "mapping", "status", "started", "duration",
                                                  "extracted", "added", "updated", "deleted",
                                                  "succeeded", "failed", "rejected"}};
  for (const RunInfo& r : *runs) {
    const RunCounts& c = r.counts;
    table.push_back({std::to_string(r.id), r.mapping,
                     std::string(RunStatusName(r.status)) + (r.dry_run ? " (dry run)" : ""),
                     r.started_at.substr(0, 19), Duration(r.duration_s), Thousands(c.extracted),
                     Thousands(c.added), Thousands(c.updated), Thousands(c.deleted),
                     Thousands(c.succeeded), Thousands(c.failed), Thousands(c.rejected)});
  }
  fmt::print("{}", Table(table));
  return kExitOk;
}

int RunsShow(const GlobalOptions& g, int64_t id, int limit) {
  auto ws = Load(g, true);
  if (!ws) return kExitInvalidConfig;
  auto state = OpenStateForReading(*ws);
  if (!state) return kExitFailed;
  auto run = state->GetRun(id);
  if (!run.ok()) {
    PrintError(std::string(run.status().message()));
    return kExitFailed;
  }
  auto records = state->GetRunRecords(id, "", limit);
  if (!records.ok()) {
    PrintError(std::string(records.status().message()));
    return kExitFailed;
  }
  if (g.json) {
    JsonWriter w;
    w.BeginObject();
    AppendRunJson(w, *run);
    w.Key("model").String(run->model).Key("destination").String(run->destination);
    w.Key("trigger").String(run->trigger).Key("full_resync").Bool(run->full_resync);
    w.Key("started_at").String(run->started_at).Key("finished_at").String(run->finished_at);
    w.Key("records").BeginArray();
    for (const RunRecord& r : *records) {
      w.BeginObject();
      w.Key("key").String(r.key).Key("outcome").String(r.outcome).Key("change").String(r.change);
      w.Key("error").String(r.error).Key("error_class").String(r.error_class);
      w.Key("payload").Raw(r.payload.empty() ? "null" : r.payload);
      w.Key("recommended_action").String(r.recommended_action);
      w.EndObject();
    }
    w.EndArray().EndObject();
    fmt::print("{}\n", w.str());
    return kExitOk;
  }
  PrintRunSummary(*run, {});
  fmt::print("  started    {}{}\n", run->started_at,
             run->finished_at.empty() ? "" : "  finished " + run->finished_at);
  if (records->empty()) return kExitOk;
  int64_t total = run->counts.failed + run->counts.rejected;
  fmt::print("\n{} of {} failed or rejected records:\n", records->size(), Thousands(total));
  for (const RunRecord& r : *records) {
    fmt::print("\n  {} {} {}\n", r.outcome, r.change.empty() ? "row" : r.change,
               r.key.empty() ? "(no key)" : "key " + r.key);
    fmt::print("    error   {} [{}]\n", r.error, r.error_class);
    fmt::print("    payload {}\n", r.payload);
    fmt::print("    action  {}\n", r.recommended_action);
  }
  return kExitOk;
}

// -------------------------------------------------------------- checkpoint

int CheckpointReset(const GlobalOptions& g, const std::string& mapping_name) {
  auto ws = Load(g, true);
  if (!ws) return kExitInvalidConfig;
  if (ws->FindMapping(mapping_name) == nullptr) {
    PrintUnknown("mapping", mapping_name, ws->mappings);
    return kExitFailed;
  }
  auto state = OpenState(*ws);
  absl::Status status = state.status();
  if (state.ok()) {
    // Under the mapping's locks: never under a sync that is running.
    SyncEngine engine(*ws, BuiltinRegistry(), **state, ConnectorEnv{nullptr, &SystemClock()},
                      StateDir(*ws));
    status = engine.ResetCheckpoint(mapping_name);
  }
  if (IsMappingBusy(status)) {
    PrintError(
        fmt::format("could not reset the checkpoint of \"{}\": {}; try again when its "
                    "run has finished (or cancel it)",
                    mapping_name, status.message()));
    return kExitFailed;
  }
  if (!status.ok()) {
    PrintError(
        fmt::format("could not reset the checkpoint of \"{}\": {}; if the state file is "
                    "damaged, move {} aside (every mapping then starts over)",
                    mapping_name, status.message(), StatePath(*ws)));
    return kExitFailed;
  }
  fmt::print(
      "the checkpoint of mapping \"{}\" is reset: its next run sends every record as added\n",
      mapping_name);
  return kExitOk;
}

// ------------------------------------------------------------------- serve

Service* g_service = nullptr;  // for the signal handler

extern "C" void OnStopSignal(int) {
  if (g_service != nullptr) g_service->RequestStop();
}

struct ServeFlags {
  bool once = false;
  std::string now_text;
  int poll_seconds = 1;
  std::string listen;
  int workers = 1;
  int lease_seconds = 30;
};

int Serve(const GlobalOptions& g, const ServeFlags& flags) {
  ServiceOptions options;
  options.config_path = g.config;
  options.once = flags.once;
  options.poll = std::chrono::seconds(flags.poll_seconds);
  options.listen = flags.listen;
  options.workers = flags.workers;
  options.lease = absl::Seconds(flags.lease_seconds);
  if (!flags.now_text.empty()) {
    if (!flags.once) {
      PrintError("--now only applies with --once");
      return kExitInvalidConfig;
    }
    absl::Time t;
    std::string err;
    if (!absl::ParseTime(absl::RFC3339_full, flags.now_text, &t, &err)) {
      PrintError(
          fmt::format("--now: \"{}\" is not an RFC 3339 time such as "
                      "2026-11-27T09:00:00Z ({})",
                      flags.now_text, err));
      return kExitInvalidConfig;
    }
    options.now = t;
  }
  if (!flags.listen.empty()) {
    std::string host;
    uint16_t port = 0;
    if (absl::Status s = ParseListenAddress(flags.listen, host, port); !s.ok()) {
      PrintError(std::string(s.message()));
      return kExitInvalidConfig;
    }
  }
  // Validate first, printing every problem the way `validate` does.
  if (!Load(g)) return kExitInvalidConfig;
  auto http = NewCurlHttpClient();
  Service service(options, BuiltinRegistry(), ConnectorEnv{http.get(), &SystemClock()}, stdout);
  g_service = &service;
  struct sigaction action {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  absl::StatusOr<ServiceOutcome> outcome = service.Run();
  g_service = nullptr;
  if (!outcome.ok()) {
    PrintError(std::string(outcome.status().message()));
    return kExitFailed;
  }
  // A long-running service that was asked to stop has done its job; with
  // --once the exit code says how the runs went (for cron).
  if (!flags.once) return kExitOk;
  if (outcome->failed_runs > 0) return kExitFailed;
  if (outcome->partial_runs > 0) return kExitPartial;
  return kExitOk;
}

std::optional<Workspace> LoadForSecrets(const GlobalOptions& g);

// ------------------------------------------------------------------- token

int TokenCreate(const GlobalOptions& g, const std::string& name, bool read_only) {
  auto ws = LoadForSecrets(g);
  if (!ws) return kExitInvalidConfig;
  bool valid = !name.empty() && name.size() <= 64;
  for (char c : name) {
    valid &= std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  }
  if (!valid) {
    PrintError(
        fmt::format("token name \"{}\": use 1 to 64 letters, digits, '_', '-' or '.'", name));
    return kExitInvalidConfig;
  }
  auto state = OpenState(*ws);
  if (!state.ok()) {
    PrintError(fmt::format("state store: {}", state.status().message()));
    return kExitFailed;
  }
  const std::string token = "bf_" + HexEncode(RandomBytes(32));
  ApiToken t{name, HexEncode(Sha256(token)), read_only, FormatIso8601(SystemClock().Now()), ""};
  if (absl::Status s = (*state)->CreateApiToken(t); !s.ok()) {
    PrintError(std::string(s.message()));
    return kExitFailed;
  }
  fmt::print(stderr,
             "token \"{}\" created ({}); it is shown once, below: store it now. Send it as "
             "Authorization: Bearer <token>\n",
             name, read_only ? "read-only" : "read and write");
  fmt::print("{}\n", token);
  return kExitOk;
}

int TokenList(const GlobalOptions& g) {
  auto ws = LoadForSecrets(g);
  if (!ws) return kExitInvalidConfig;
  auto state = OpenState(*ws);
  absl::StatusOr<std::vector<ApiToken>> tokens =
      state.ok() ? (*state)->ListApiTokens() : state.status();
  if (!tokens.ok()) {
    PrintError(fmt::format("state store: {}", tokens.status().message()));
    return kExitFailed;
  }
  if (g.json) {
    JsonWriter w;
    w.BeginObject().Key("tokens").BeginArray();
    for (const ApiToken& t : *tokens) {
      w.BeginObject().Key("name").String(t.name).Key("read_only").Bool(t.read_only);
      w.Key("created_at").String(t.created_at).Key("last_used_at").String(t.last_used_at);
      w.EndObject();
    }
    w.EndArray().EndObject();
    fmt::print("{}\n", w.str());
    return kExitOk;
  }
  if (tokens->empty()) {
    fmt::print("no API tokens; create one with `backflow token create NAME`\n");
    return kExitOk;
  }
  for (const ApiToken& t : *tokens) {
    fmt::print("{:<24} {:<10} created {}  last used {}\n", t.name,
               t.read_only ? "read-only" : "write", t.created_at,
               t.last_used_at.empty() ? "never" : t.last_used_at);
  }
  return kExitOk;
}

int TokenRevoke(const GlobalOptions& g, const std::string& name) {
  auto ws = LoadForSecrets(g);
  if (!ws) return kExitInvalidConfig;
  auto state = OpenState(*ws);
  absl::Status s = state.ok() ? (*state)->RevokeApiToken(name) : state.status();
  if (!s.ok()) {
    PrintError(std::string(s.message()));
    return kExitFailed;
  }
  fmt::print("token \"{}\" revoked: requests with it are refused from now on\n", name);
  return kExitOk;
}

// ------------------------------------------------------------------ secret

// The workspace for the secret commands: only `state:` and `secret_key_file:`
// must be valid, since the rest may reference secrets not set yet.
std::optional<Workspace> LoadForSecrets(const GlobalOptions& g) {
  LoadResult result = LoadWorkspace(g.config, BuiltinRegistry());
  bool usable = !result.workspace.state_url.empty();
  for (const Diagnostic& d : result.diagnostics) {
    if (d.is_error() && (d.path.empty() || d.path == "state" || d.path == "secret_key_file")) {
      fmt::print(stderr, "{}\n", d.ToString());
      usable = false;
    }
  }
  if (!usable) {
    PrintError(fmt::format("{} must name a valid state store to keep secrets in", g.config));
    return std::nullopt;
  }
  return std::move(result.workspace);
}

// Reads a secret value from stdin: the whole input, less one trailing newline.
// On a terminal, one line typed without echo.
std::string ReadSecretValue(const std::string& name) {
  std::string value;
  if (isatty(STDIN_FILENO)) {
    fmt::print(stderr, "value of secret {} (not shown): ", name);
    std::fflush(stderr);
    termios saved{};
    bool hidden = tcgetattr(STDIN_FILENO, &saved) == 0;
    if (hidden) {
      termios quiet = saved;
      quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
      hidden = tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) == 0;
    }
    std::getline(std::cin, value);
    if (hidden) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
    fmt::print(stderr, "\n");
    return value;
  }
  value.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  if (!value.empty() && value.back() == '\n') {
    value.pop_back();
    if (!value.empty() && value.back() == '\r') value.pop_back();
  }
  return value;
}

int SecretSet(const GlobalOptions& g, const std::string& name) {
  if (absl::Status valid = ValidateSecretName(name); !valid.ok()) {
    PrintError(std::string(valid.message()));
    return kExitFailed;
  }
  auto ws = LoadForSecrets(g);
  if (!ws) return kExitInvalidConfig;
  std::string value = ReadSecretValue(name);
  auto state = OpenState(*ws);
  if (!state.ok()) {
    PrintError(fmt::format("state store: {}", state.status().message()));
    return kExitFailed;
  }
  absl::StatusOr<SecretBox> box = SecretBox::Load(ws->secret_key_file);
  if (!box.ok()) {
    PrintError(fmt::format("secret key: {}", box.status().message()));
    return kExitFailed;
  }
  if (box->created_key_file()) {
    fmt::print(stderr,
               "created the secret key file {} (mode 0600); back it up: the secrets cannot be "
               "read without it (or give its content as {})\n",
               ws->secret_key_file, SecretBox::kKeyEnvVar);
  }
  absl::Status saved = SecretStore(**state, &*box).Set(name, value);
  std::fill(value.begin(), value.end(), '\0');
  if (!saved.ok()) {
    PrintError(std::string(saved.message()));
    return kExitFailed;
  }
  if (g.json) {
    fmt::print("{}\n", nlohmann::json({{"name", name}, {"saved", true}}).dump());
  } else {
    fmt::print("secret {} saved\n", name);
  }
  return kExitOk;
}

int SecretList(const GlobalOptions& g) {
  auto ws = LoadForSecrets(g);
  if (!ws) return kExitInvalidConfig;
  auto state = OpenState(*ws);
  if (!state.ok()) {
    PrintError(fmt::format("state store: {}", state.status().message()));
    return kExitFailed;
  }
  absl::StatusOr<std::vector<SecretInfo>> secrets = SecretStore(**state, nullptr).List();
  if (!secrets.ok()) {
    PrintError(std::string(secrets.status().message()));
    return kExitFailed;
  }
  if (g.json) {
    nlohmann::json out = {{"secrets", nlohmann::json::array()}};
    for (const SecretInfo& s : *secrets) {
      out["secrets"].push_back({{"name", s.name}, {"updated_at", s.updated_at}});
    }
    fmt::print("{}\n", out.dump());
    return kExitOk;
  }
  if (secrets->empty()) {
    fmt::print("no secrets yet; set one with `backflow secret set NAME` (value on stdin)\n");
    return kExitOk;
  }
  std::vector<std::vector<std::string>> table = {{"name", "updated"}};
  for (const SecretInfo& s : *secrets) table.push_back({s.name, s.updated_at.substr(0, 19)});
  fmt::print("{}", Table(table));
  return kExitOk;
}

int SecretDelete(const GlobalOptions& g, const std::string& name) {
  auto ws = LoadForSecrets(g);
  if (!ws) return kExitInvalidConfig;
  auto state = OpenState(*ws);
  if (!state.ok()) {
    PrintError(fmt::format("state store: {}", state.status().message()));
    return kExitFailed;
  }
  absl::Status deleted = SecretStore(**state, nullptr).Delete(name);
  if (!deleted.ok()) {
    PrintError(std::string(deleted.message()));
    return kExitFailed;
  }
  if (g.json) {
    fmt::print("{}\n", nlohmann::json({{"name", name}, {"deleted", true}}).dump());
  } else {
    fmt::print("secret {} deleted\n", name);
  }
  return kExitOk;
}

// ----------------------------------------------------------------- catalog

// Writes one markdown page per connector under `dir`/sources and `dir`/destinations, and
// the mapping language reference as `dir`/mapping.md.
int WriteDocs(const std::string& dir) {
  namespace fs = std::filesystem;
  const Registry& r = BuiltinRegistry();
  auto write = [](const fs::path& path, const std::string& text) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    return static_cast<bool>(out);
  };
  for (const SourceDefinition& s : r.sources()) {
    if (!write(fs::path(dir) / "sources" / (s.type + ".md"), SourceMarkdown(s))) {
      PrintError("cannot write docs under " + dir);
      return kExitFailed;
    }
  }
  for (const DestinationDefinition& d : r.destinations()) {
    if (!write(fs::path(dir) / "destinations" / (d.type + ".md"), DestinationMarkdown(d))) {
      PrintError("cannot write docs under " + dir);
      return kExitFailed;
    }
  }
  if (!write(fs::path(dir) / "mapping.md", MappingLanguageMarkdown())) {
    PrintError("cannot write docs under " + dir);
    return kExitFailed;
  }
  return kExitOk;
}

int Catalog(const GlobalOptions& g, const std::string& docs_dir) {
  if (!docs_dir.empty()) return WriteDocs(docs_dir);
  const Registry& r = BuiltinRegistry();
  if (g.json) {
    fmt::print("{}\n", CatalogJson(r.sources(), r.destinations()).dump(2));
    return kExitOk;
  }
  fmt::print("Sources\n");
  for (const SourceDefinition& s : r.sources()) {
    fmt::print("  {:<10} {} [{}]\n", s.type, s.description, s.maturity);
  }
  fmt::print("\nDestinations\n");
  for (const DestinationDefinition& d : r.destinations()) {
    fmt::print("  {:<10} {} [{}]\n", d.type, d.description, d.maturity);
    for (const ActionSpec& a : d.actions) {
      fmt::print("    action {:<12} {} (batches of up to {})\n", a.id, a.title,
                 a.max_batch_records);
    }
  }
  fmt::print("\n`backflow catalog --json` prints every setting and field.\n");
  return kExitOk;
}

int Main(int argc, char** argv) {
  CLI::App app{"Backflow: sync warehouse rows into business tools (Reverse ETL)", "backflow"};
  app.set_version_flag("--version", "backflow 0.1.0");
  app.require_subcommand(1);
  app.fallthrough();
  GlobalOptions g;
  app.add_option("-c,--config", g.config, "workspace file")->capture_default_str();
  app.add_flag("--json", g.json, "machine-readable output");
  int result = kExitOk;

  auto* validate = app.add_subcommand("validate", "check the workspace file; lists every error");
  validate->callback([&] { result = Validate(g); });

  auto* export_cmd = app.add_subcommand(
      "export",
      "print the workspace as the service sees it (defaults filled in, references kept, no "
      "secret values)");
  export_cmd->callback([&] { result = Export(g); });

  std::string name;
  auto* test = app.add_subcommand("test-connection", "check a source's or destination's access");
  test->add_option("NAME", name, "source or destination name")->required();
  test->callback([&] { result = TestConnection(g, name); });

  int limit = 10;
  auto* preview = app.add_subcommand("preview", "show a model's first rows with column types");
  preview->add_option("MODEL", name, "model name")->required();
  preview->add_option("--limit", limit, "rows to show")->check(CLI::Range(1, 1000));
  preview->callback([&] { result = Preview(g, name, limit); });

  std::string model;
  SyncOptions sync_options;
  auto* sync = app.add_subcommand("sync", "sync one mapping, or every enabled mapping of a model");
  sync->add_option("MAPPING", name, "mapping name");
  sync->add_option("--model", model, "sync every enabled mapping of MODEL from one extraction");
  sync->add_flag("--dry-run", sync_options.dry_run, "show the change set; send nothing");
  sync->add_flag("--full-resync", sync_options.full_resync,
                 "send every record again, not only the changes");
  sync->add_flag("--allow-mass-delete", sync_options.allow_mass_delete,
                 "send the deletes even when they exceed the mapping's max_deletes");
  sync->callback([&] {
    if (name.empty() == model.empty()) {
      throw CLI::ValidationError("sync", "give either MAPPING or --model MODEL");
    }
    result = Sync(g, name, model, sync_options);
  });

  ServeFlags serve_flags;
  auto* serve = app.add_subcommand(
      "serve",
      "run models on their schedules and queued runs until stopped, optionally with the REST "
      "API (SIGTERM/SIGINT: the run in progress stops after its batches in flight and is "
      "queued again); logs one JSON line per event");
  serve->add_flag("--once", serve_flags.once,
                  "decide once, run what is due now and what is queued, wait for it and exit");
  serve->add_option("--now", serve_flags.now_text,
                    "with --once: decide as if it were this RFC 3339 time");
  serve
      ->add_option("--poll-seconds", serve_flags.poll_seconds,
                   "how often schedules and the queue are checked")
      ->check(CLI::Range(1, 3600));
  serve->add_option("--listen", serve_flags.listen,
                    "serve the REST API on HOST:PORT (e.g. 127.0.0.1:8321)");
  serve->add_option("--workers", serve_flags.workers, "runs worked on at once")
      ->check(CLI::Range(1, 64));
  serve
      ->add_option("--lease-seconds", serve_flags.lease_seconds,
                   "how long a worker's claim on a run lasts unless renewed (it is renewed every "
                   "third of it): a worker that dies loses its run to another after this long")
      ->check(CLI::Range(2, 3600));
  serve->callback([&] { result = Serve(g, serve_flags); });

  auto* token = app.add_subcommand("token", "API tokens for `backflow serve --listen`");
  token->require_subcommand(1);
  bool read_only = false;
  auto* token_create =
      token->add_subcommand("create", "create a token; prints it once, alone on the last line");
  token_create->add_option("NAME", name, "a name for the token (who or what uses it)")->required();
  token_create->add_flag("--read-only", read_only, "may read, but not change or trigger anything");
  token_create->callback([&] { result = TokenCreate(g, name, read_only); });
  auto* token_list = token->add_subcommand("list", "tokens with their last use (never the token)");
  token_list->callback([&] { result = TokenList(g); });
  auto* token_revoke = token->add_subcommand("revoke", "revoke a token at once");
  token_revoke->add_option("NAME", name, "token name")->required();
  token_revoke->callback([&] { result = TokenRevoke(g, name); });

  auto* runs = app.add_subcommand("runs", "inspect past runs");
  runs->require_subcommand(1);
  int runs_limit = 20;
  auto* list = runs->add_subcommand("list", "recent runs, newest first");
  list->add_option("MAPPING", name, "only this mapping's runs");
  list->add_option("--limit", runs_limit, "how many runs")->check(CLI::Range(1, 10000));
  list->callback([&] { result = RunsList(g, name, runs_limit); });
  int64_t run_id = 0;
  int records_limit = 50;
  auto* show = runs->add_subcommand("show", "one run with its failed and rejected records");
  show->add_option("RUN_ID", run_id, "run id")->required();
  show->add_option("--limit", records_limit, "how many records")->check(CLI::Range(1, 100000));
  show->callback([&] { result = RunsShow(g, run_id, records_limit); });

  auto* checkpoint = app.add_subcommand("checkpoint", "manage what mappings last delivered");
  checkpoint->require_subcommand(1);
  auto* reset = checkpoint->add_subcommand(
      "reset", "forget what MAPPING delivered: its next run sends every record again");
  reset->add_option("MAPPING", name, "mapping name")->required();
  reset->callback([&] { result = CheckpointReset(g, name); });

  std::string docs_dir;
  std::string record_key;
  auto* mapping_cmd = app.add_subcommand("mapping", "inspect mappings");
  mapping_cmd->require_subcommand(1);
  auto* mapping_test = mapping_cmd->add_subcommand(
      "test", "show the payload one record would produce; send nothing");
  mapping_test->add_option("MAPPING", name, "mapping name")->required();
  mapping_test->add_option("--record", record_key,
                           "the record's unique identifier, found by reading the model's rows "
                           "(default: the first row)");
  mapping_test->callback([&] {
    result = MappingTest(
        g, name, record_key.empty() ? std::nullopt : std::optional<std::string>(record_key));
  });

  auto* secret = app.add_subcommand(
      "secret", "manage the secrets ${secret:NAME} refers to (kept encrypted in the state store)");
  secret->require_subcommand(1);
  auto* secret_set = secret->add_subcommand(
      "set",
      "create or replace secret NAME; the value is read from stdin, never from the "
      "command line");
  secret_set->add_option("NAME", name, "secret name: letters, digits and '_'")->required();
  secret_set->callback([&] { result = SecretSet(g, name); });
  auto* secret_list = secret->add_subcommand("list", "secret names and update times (no values)");
  secret_list->callback([&] { result = SecretList(g); });
  auto* secret_delete = secret->add_subcommand("delete", "delete secret NAME");
  secret_delete->add_option("NAME", name, "secret name")->required();
  secret_delete->callback([&] { result = SecretDelete(g, name); });

  auto* catalog = app.add_subcommand("catalog", "list source and destination types");
  catalog->add_option("--docs", docs_dir, "write one markdown page per connector under DIR");
  catalog->callback([&] { result = Catalog(g, docs_dir); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return result;
}

}  // namespace
}  // namespace backflow::cli

int main(int argc, char** argv) { return backflow::cli::Main(argc, argv); }
