#include "backflow/config/workspace.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "backflow/common/fmt_absl.h"
#include "backflow/mapping/expression.h"
#include "backflow/scheduler/schedule.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

constexpr const char* kWeekdayNames[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
constexpr const char* kDefaultState = "sqlite:.backflow/state.db";

bool IsValidName(const std::string& name) {
  static const std::regex kName("^[A-Za-z][A-Za-z0-9_-]{0,127}$");
  return std::regex_match(name, kName);
}

// Walks one YAML document, collecting diagnostics as it goes.
class Loader {
 public:
  Loader(std::string file, const Registry& registry)
      : file_(std::move(file)), registry_(registry) {}

  LoadResult Load(const std::string& yaml);

 private:
  void Error(const YAML::Node& at, std::string path, std::string message, std::string hint = "") {
    Add(Diagnostic::Severity::kError, at, std::move(path), std::move(message), std::move(hint));
  }
  void Warning(const YAML::Node& at, std::string path, std::string message, std::string hint = "") {
    Add(Diagnostic::Severity::kWarning, at, std::move(path), std::move(message), std::move(hint));
  }
  void Add(Diagnostic::Severity severity, const YAML::Node& at, std::string path,
           std::string message, std::string hint) {
    Diagnostic d;
    d.severity = severity;
    d.file = file_;
    if (at.IsDefined() && at.Mark().line >= 0) {
      d.line = at.Mark().line + 1;
      d.column = at.Mark().column + 1;
    } else {
      d.line = current_line_;
      d.column = current_column_;
    }
    d.path = std::move(path);
    d.message = std::move(message);
    d.hint = std::move(hint);
    result_.diagnostics.push_back(std::move(d));
  }

  // A scalar as text with ${env:...} resolved; reports a missing variable.
  std::string Text(const YAML::Node& node, const std::string& path) {
    std::vector<std::string> missing;
    std::string value = ResolveEnvReferences(node.Scalar(), missing);
    for (const std::string& var : missing) {
      Error(node, path, fmt::format("environment variable {} is not set", var),
            fmt::format("export {}=... before running backflow", var));
    }
    return value;
  }

  // Reads a required string member of `map`.
  std::optional<std::string> RequiredString(const YAML::Node& map, const std::string& key,
                                            const std::string& path, const std::string& hint) {
    YAML::Node node = map[key];
    if (!node.IsDefined() || node.IsNull()) {
      Error(map, path, fmt::format("\"{}\" is required", key), hint);
      return std::nullopt;
    }
    if (!node.IsScalar()) {
      Error(node, path + "." + key, "must be a string", hint);
      return std::nullopt;
    }
    return Text(node, path + "." + key);
  }

  void CheckKeys(const YAML::Node& map, const std::string& path,
                 const std::vector<std::string>& allowed) {
    for (auto it = map.begin(); it != map.end(); ++it) {
      std::string key = it->first.Scalar();
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      std::string suggestion = ClosestMatch(key, allowed);
      std::string known;
      for (const std::string& a : allowed) known += (known.empty() ? "" : ", ") + a;
      Error(it->first, path + "." + key, fmt::format("unknown key \"{}\"", key),
            suggestion.empty() ? fmt::format("allowed keys: {}", known)
                               : fmt::format("did you mean \"{}\"?", suggestion));
    }
  }

  nlohmann::json ToJson(const YAML::Node& node, const std::string& path) {
    switch (node.Type()) {
      case YAML::NodeType::Scalar: {
        std::string text = Text(node, path);
        if (node.Tag() != "!") {  // unquoted: booleans and integers keep their type
          if (text == "true") return true;
          if (text == "false") return false;
          static const std::regex kInt("^-?[0-9]{1,18}$");
          if (node.Scalar() == text && std::regex_match(text, kInt)) return std::stoll(text);
        }
        return text;
      }
      case YAML::NodeType::Sequence: {
        nlohmann::json out = nlohmann::json::array();
        for (size_t i = 0; i < node.size(); ++i) {
          out.push_back(ToJson(node[i], fmt::format("{}[{}]", path, i)));
        }
        return out;
      }
      case YAML::NodeType::Map: {
        nlohmann::json out = nlohmann::json::object();
        for (auto it = node.begin(); it != node.end(); ++it) {
          std::string key = it->first.Scalar();
          out[key] = ToJson(it->second, path + "." + key);
        }
        return out;
      }
      default:
        return nullptr;
    }
  }

  // Checks settings against their specs; `at` locates the settings block.
  void CheckSettingsAt(const std::vector<SettingSpec>& specs, nlohmann::json& settings,
                       const YAML::Node& at, const std::string& path) {
    for (const std::string& problem : CheckSettings(specs, settings)) {
      std::string key = problem.substr(0, problem.find(':'));
      std::string top = key.substr(0, key.find('.'));
      YAML::Node where = at.IsMap() && at[top].IsDefined() ? at[top] : at;
      Error(where, path + "." + key, problem.substr(problem.find(':') + 2));
    }
    for (const SettingSpec& spec : specs) {
      if (!spec.secret || !at.IsMap()) continue;
      YAML::Node node = at[spec.key];
      if (node.IsDefined() && node.IsScalar() && !node.Scalar().empty() &&
          node.Scalar().find("${") == std::string::npos) {
        Warning(node, path + "." + spec.key, "secret written in clear in the file",
                fmt::format("use {}: ${{env:NAME}} and keep the value out of version control",
                            spec.key));
      }
    }
  }

  std::vector<YAML::Node> Entries(const YAML::Node& root, const std::string& key) {
    std::vector<YAML::Node> out;
    YAML::Node list = root[key];
    if (!list.IsDefined() || list.IsNull()) return out;
    if (!list.IsSequence()) {
      Error(list, key, "must be a list", fmt::format("write each entry as \"- name: ...\"", key));
      return out;
    }
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].IsMap()) {
        Error(list[i], fmt::format("{}[{}]", key, i), "must be a mapping with a name");
        continue;
      }
      out.push_back(list[i]);
    }
    return out;
  }

  std::optional<std::string> EntryName(const YAML::Node& entry, const std::string& path,
                                       std::set<std::string>& seen, const char* what) {
    auto name = RequiredString(entry, "name", path, fmt::format("give every {} a name", what));
    if (!name) return std::nullopt;
    if (!IsValidName(*name)) {
      Error(entry["name"], path + ".name", fmt::format("invalid {} name \"{}\"", what, *name),
            "use letters, digits, '_' or '-', starting with a letter");
    }
    if (!seen.insert(*name).second) {
      Error(entry["name"], path + ".name", fmt::format("duplicate {} name \"{}\"", what, *name),
            fmt::format("{} names must be unique", what));
    }
    return name;
  }

  void LoadState(const YAML::Node& root);
  void LoadSources(const YAML::Node& root);
  void LoadModels(const YAML::Node& root);
  void LoadDestinations(const YAML::Node& root);
  void LoadMappings(const YAML::Node& root);
  std::optional<Schedule> LoadSchedule(const YAML::Node& node, const std::string& path);
  std::string ResolvePath(const std::string& p) const {
    fs::path path(p);
    if (path.is_absolute()) return path.lexically_normal().string();
    return (fs::path(result_.workspace.base_dir) / path).lexically_normal().string();
  }
  void ResolvePathSettings(const std::vector<SettingSpec>& specs, nlohmann::json& settings) {
    for (const SettingSpec& spec : specs) {
      if (spec.is_path && settings.contains(spec.key) && settings[spec.key].is_string()) {
        settings[spec.key] = ResolvePath(settings[spec.key].get<std::string>());
      }
    }
  }
  std::string ReferenceHint(const std::string& what, const std::string& name,
                            const std::vector<std::string>& names) {
    std::string suggestion = ClosestMatch(name, names);
    if (!suggestion.empty()) return fmt::format("did you mean \"{}\"?", suggestion);
    if (names.empty()) return fmt::format("define it under {}s:", what);
    std::string known;
    for (const std::string& n : names) known += (known.empty() ? "" : ", ") + n;
    return fmt::format("defined {}s: {}", what, known);
  }

  std::string file_;
  const Registry& registry_;
  LoadResult result_;
  std::set<std::string> declared_destinations_;
  int current_line_ = 0;
  int current_column_ = 0;
};

LoadResult Loader::Load(const std::string& yaml) {
  result_.workspace.file = file_;
  result_.workspace.base_dir = fs::absolute(fs::path(file_)).parent_path().string();
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    Diagnostic d;
    d.file = file_;
    d.line = e.mark.line + 1;
    d.column = e.mark.column + 1;
    d.message = fmt::format("invalid YAML: {}", e.msg);
    d.hint = "check indentation and quoting around this position";
    result_.diagnostics.push_back(std::move(d));
    return std::move(result_);
  }
  if (!root.IsMap()) {
    Error(root, "",
          "the workspace file must be a mapping with sources, models, destinations "
          "and mappings");
    return std::move(result_);
  }
  try {
    CheckKeys(root, "", {"version", "state", "sources", "models", "destinations", "mappings"});
    // "".key → "key" for top-level paths.
    for (Diagnostic& d : result_.diagnostics) {
      if (!d.path.empty() && d.path[0] == '.') d.path.erase(0, 1);
    }
    LoadState(root);
    LoadSources(root);
    LoadModels(root);
    LoadDestinations(root);
    LoadMappings(root);
  } catch (const YAML::Exception& e) {
    Diagnostic d;
    d.file = file_;
    d.line = e.mark.line + 1;
    d.column = e.mark.column + 1;
    d.message = fmt::format("unexpected YAML structure: {}", e.msg);
    result_.diagnostics.push_back(std::move(d));
  }
  std::stable_sort(result_.diagnostics.begin(), result_.diagnostics.end(),
                   [](const Diagnostic& a, const Diagnostic& b) {
                     return std::tie(a.line, a.column) < std::tie(b.line, b.column);
                   });
  return std::move(result_);
}

void Loader::LoadState(const YAML::Node& root) {
  std::string state = kDefaultState;
  YAML::Node node = root["state"];
  if (node.IsDefined() && !node.IsNull()) {
    if (!node.IsScalar()) {
      Error(node, "state", "must be a string like \"sqlite:.backflow/state.db\"");
      return;
    }
    state = Text(node, "state");
  }
  if (state.rfind("sqlite:", 0) == 0) {
    std::string path = state.substr(7);
    if (path.empty()) {
      Error(node, "state", "the SQLite state path is empty", "write state: sqlite:PATH");
      return;
    }
    result_.workspace.state_url = "sqlite:" + ResolvePath(path);
  } else if (state.rfind("postgresql://", 0) == 0 || state.rfind("postgres://", 0) == 0) {
    // Shared state for several `backflow serve` processes; the url as written
    // (after ${env:...} references), checked when the store is opened.
    result_.workspace.state_url = state;
  } else {
    // Name only the kind: the rest may hold a password.
    Error(node, "state",
          fmt::format("unknown state store kind \"{}\"", state.substr(0, state.find(':'))),
          "write state: sqlite:PATH or state: postgresql://USER:PASSWORD@HOST:PORT/DATABASE");
  }
}

void Loader::LoadSources(const YAML::Node& root) {
  std::set<std::string> seen;
  std::vector<std::string> types;
  for (const SourceDefinition& d : registry_.sources()) types.push_back(d.type);
  auto entries = Entries(root, "sources");
  for (size_t i = 0; i < entries.size(); ++i) {
    const YAML::Node& e = entries[i];
    std::string path = fmt::format("sources[{}]", i);
    SourceConfig source;
    auto name = EntryName(e, path, seen, "source");
    if (name) source.name = *name;
    auto type = RequiredString(e, "type", path, "e.g. type: postgres");
    if (!type) continue;
    source.type = *type;
    const SourceDefinition* def = registry_.FindSource(*type);
    if (def == nullptr) {
      Error(e["type"], path + ".type", fmt::format("unknown source type \"{}\"", *type),
            ReferenceHint("source type", *type, types));
      continue;
    }
    std::vector<std::string> allowed = {"name", "type", "description"};
    for (const SettingSpec& s : def->settings) allowed.push_back(s.key);
    CheckKeys(e, path, allowed);
    source.settings = nlohmann::json::object();
    for (const SettingSpec& s : def->settings) {
      if (e[s.key].IsDefined()) source.settings[s.key] = ToJson(e[s.key], path + "." + s.key);
    }
    CheckSettingsAt(def->settings, source.settings, e, path);
    ResolvePathSettings(def->settings, source.settings);
    result_.workspace.sources.push_back(std::move(source));
  }
}

std::optional<Schedule> Loader::LoadSchedule(const YAML::Node& node, const std::string& path) {
  Schedule s;
  const std::string kHint =
      "use manual, { every: 1h } (15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h, 1d), "
      "{ days: [mon, thu], at: \"09:00\", timezone: Europe/Paris } or "
      "{ cron: \"0 9 * * 1-5\", timezone: UTC }";
  if (!node.IsDefined() || node.IsNull()) return s;
  if (node.IsScalar()) {
    if (node.Scalar() == "manual") return s;
    Error(node, path, fmt::format("unknown schedule \"{}\"", node.Scalar()), kHint);
    return std::nullopt;
  }
  if (!node.IsMap()) {
    Error(node, path, "must be manual or a mapping", kHint);
    return std::nullopt;
  }
  CheckKeys(node, path, {"every", "days", "at", "cron", "timezone"});
  if (node["timezone"].IsDefined()) {
    s.timezone = node["timezone"].Scalar();
    auto tz = LoadScheduleTimeZone(s.timezone);
    if (!tz.ok()) {
      Error(node["timezone"], path + ".timezone", std::string(tz.status().message()));
      return std::nullopt;
    }
  }
  if (node["cron"].IsDefined()) {
    if (node["every"].IsDefined() || node["days"].IsDefined() || node["at"].IsDefined()) {
      Error(node, path, "\"cron\" cannot be combined with \"every\", \"days\" or \"at\"", kHint);
      return std::nullopt;
    }
    s.kind = Schedule::Kind::kCron;
    s.cron = node["cron"].Scalar();
    auto cron = ParseCron(s.cron);
    if (!cron.ok()) {
      Error(node["cron"], path + ".cron", std::string(cron.status().message()),
            "five fields: minute hour day-of-month month day-of-week, e.g. \"0 9 * * 1-5\"");
      return std::nullopt;
    }
    return s;
  }
  if (node["every"].IsDefined()) {
    static const std::vector<std::pair<std::string, int>> kIntervals = {
        {"15m", 15}, {"30m", 30}, {"1h", 60},   {"2h", 120},  {"4h", 240},
        {"6h", 360}, {"8h", 480}, {"12h", 720}, {"1d", 1440}, {"24h", 1440}};
    std::string every = node["every"].Scalar();
    for (const auto& [text, minutes] : kIntervals) {
      if (every == text) {
        s.kind = Schedule::Kind::kInterval;
        s.interval_minutes = minutes;
      }
    }
    if (s.kind != Schedule::Kind::kInterval) {
      Error(node["every"], path + ".every", fmt::format("unsupported interval \"{}\"", every),
            "use one of 15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h, 1d");
      return std::nullopt;
    }
    if (node["days"].IsDefined() || node["at"].IsDefined()) {
      Error(node, path, "\"every\" cannot be combined with \"days\"/\"at\"", kHint);
      return std::nullopt;
    }
    return s;
  }
  YAML::Node days = node["days"];
  YAML::Node at = node["at"];
  if (!days.IsDefined() || !at.IsDefined()) {
    Error(node, path, "a weekly schedule needs both \"days\" and \"at\"", kHint);
    return std::nullopt;
  }
  s.kind = Schedule::Kind::kWeekly;
  bool ok = true;
  if (!days.IsSequence() || days.size() == 0) {
    Error(days, path + ".days", "must be a non-empty list of weekdays",
          "e.g. days: [mon, wed, fri]");
    ok = false;
  } else {
    std::set<int> picked;
    for (size_t i = 0; i < days.size(); ++i) {
      std::string day = days[i].Scalar();
      std::transform(day.begin(), day.end(), day.begin(), ::tolower);
      int found = -1;
      for (int d = 0; d < 7; ++d) {
        if (day.rfind(kWeekdayNames[d], 0) == 0 && day.size() >= 3) found = d;
      }
      if (found < 0) {
        Error(days[i], fmt::format("{}.days[{}]", path, i),
              fmt::format("unknown weekday \"{}\"", days[i].Scalar()),
              "use mon, tue, wed, thu, fri, sat or sun");
        ok = false;
      } else {
        picked.insert(found);
      }
    }
    s.weekdays.assign(picked.begin(), picked.end());
  }
  static const std::regex kHour("^([01]?[0-9]|2[0-3]):00$");
  std::smatch m;
  std::string at_text = at.Scalar();
  if (!std::regex_match(at_text, m, kHour)) {
    Error(at, path + ".at", fmt::format("\"{}\" is not a top-of-hour time", at_text),
          "write the hour as \"HH:00\", e.g. at: \"09:00\"");
    ok = false;
  } else {
    s.hour = std::stoi(m[1].str());
  }
  if (!ok) return std::nullopt;
  return s;
}

void Loader::LoadModels(const YAML::Node& root) {
  std::set<std::string> seen;
  std::vector<std::string> source_names;
  for (const SourceConfig& s : result_.workspace.sources) source_names.push_back(s.name);
  auto entries = Entries(root, "models");
  for (size_t i = 0; i < entries.size(); ++i) {
    const YAML::Node& e = entries[i];
    std::string path = fmt::format("models[{}]", i);
    CheckKeys(e, path, {"name", "source", "sql", "primary_key", "schedule", "description"});
    ModelConfig model;
    auto name = EntryName(e, path, seen, "model");
    if (name) model.name = *name;
    if (auto source = RequiredString(e, "source", path, "name one of the sources")) {
      model.source = *source;
      if (result_.workspace.FindSource(*source) == nullptr) {
        Error(e["source"], path + ".source", fmt::format("unknown source \"{}\"", *source),
              ReferenceHint("source", *source, source_names));
      }
    }
    if (auto sql = RequiredString(e, "sql", path, "the query whose rows this model syncs")) {
      model.sql = *sql;
      if (model.sql.find_first_not_of(" \t\r\n;") == std::string::npos) {
        Error(e["sql"], path + ".sql", "the SQL is empty", "write the SELECT this model runs");
      }
    }
    if (auto pk = RequiredString(e, "primary_key", path,
                                 "name the column that uniquely identifies a row")) {
      model.primary_key = *pk;
    }
    if (auto schedule = LoadSchedule(e["schedule"], path + ".schedule")) {
      model.schedule = *schedule;
    }
    result_.workspace.models.push_back(std::move(model));
  }
}

void Loader::LoadDestinations(const YAML::Node& root) {
  std::set<std::string> seen;
  std::vector<std::string> types;
  for (const DestinationDefinition& d : registry_.destinations()) types.push_back(d.type);
  auto entries = Entries(root, "destinations");
  for (size_t i = 0; i < entries.size(); ++i) {
    const YAML::Node& e = entries[i];
    std::string path = fmt::format("destinations[{}]", i);
    CheckKeys(e, path, {"name", "type", "settings", "description"});
    DestinationConfig dest;
    auto name = EntryName(e, path, seen, "destination");
    if (name) {
      dest.name = *name;
      declared_destinations_.insert(*name);
    }
    auto type = RequiredString(e, "type", path, "e.g. type: webhook");
    if (!type) continue;
    dest.type = *type;
    const DestinationDefinition* def = registry_.FindDestination(*type);
    if (def == nullptr) {
      Error(e["type"], path + ".type", fmt::format("unknown destination type \"{}\"", *type),
            ReferenceHint("destination type", *type, types));
      continue;
    }
    YAML::Node settings = e["settings"];
    std::string spath = path + ".settings";
    dest.settings = nlohmann::json::object();
    if (settings.IsDefined() && !settings.IsNull()) {
      if (!settings.IsMap()) {
        Error(settings, spath, "must be a mapping of setting names to values");
        continue;
      }
      std::vector<std::string> allowed;
      for (const SettingSpec& s : def->settings) allowed.push_back(s.key);
      CheckKeys(settings, spath, allowed);
      dest.settings = ToJson(settings, spath);
    }
    CheckSettingsAt(def->settings, dest.settings, settings.IsDefined() ? settings : e, spath);
    ResolvePathSettings(def->settings, dest.settings);
    result_.workspace.destinations.push_back(std::move(dest));
  }
}

void Loader::LoadMappings(const YAML::Node& root) {
  std::set<std::string> seen;
  std::vector<std::string> model_names, dest_names;
  for (const ModelConfig& m : result_.workspace.models) model_names.push_back(m.name);
  for (const DestinationConfig& d : result_.workspace.destinations) dest_names.push_back(d.name);
  auto entries = Entries(root, "mappings");
  for (size_t i = 0; i < entries.size(); ++i) {
    const YAML::Node& e = entries[i];
    std::string path = fmt::format("mappings[{}]", i);
    CheckKeys(e, path,
              {"name", "model", "destination", "action", "records", "fields", "enabled",
               "batch_size", "max_deletes", "description"});
    MappingConfig mapping;
    auto name = EntryName(e, path, seen, "mapping");
    if (name) mapping.name = *name;
    if (auto model = RequiredString(e, "model", path, "name the model whose rows are sent")) {
      mapping.model = *model;
      if (result_.workspace.FindModel(*model) == nullptr) {
        Error(e["model"], path + ".model", fmt::format("unknown model \"{}\"", *model),
              ReferenceHint("model", *model, model_names));
      }
    }
    const DestinationDefinition* def = nullptr;
    const DestinationConfig* dest_config = nullptr;
    if (auto dest = RequiredString(e, "destination", path, "name one of the destinations")) {
      mapping.destination = *dest;
      dest_config = result_.workspace.FindDestination(*dest);
      if (dest_config == nullptr) {
        // A destination declared with errors was reported already.
        if (!declared_destinations_.count(*dest)) {
          Error(e["destination"], path + ".destination",
                fmt::format("unknown destination \"{}\"", *dest),
                ReferenceHint("destination", *dest, dest_names));
        }
      } else {
        def = registry_.FindDestination(dest_config->type);
      }
    }
    const ActionSpec* action = nullptr;
    std::vector<std::string> action_ids;
    if (def != nullptr) {
      for (const ActionSpec& a : def->actions) action_ids.push_back(a.id);
    }
    if (auto id = RequiredString(e, "action", path,
                                 def ? "one of: " + fmt::format("{}", fmt::join(action_ids, ", "))
                                     : "the destination action to perform")) {
      mapping.action = *id;
      if (def != nullptr) {
        action = def->FindAction(*id);
        if (action == nullptr) {
          Error(e["action"], path + ".action",
                fmt::format("destination type \"{}\" has no action \"{}\"", def->type, *id),
                ReferenceHint("action", *id, action_ids));
        }
      }
    }
    if (e["records"].IsDefined()) {
      auto selection = ParseRecordSelection(e["records"].Scalar());
      if (!selection.ok()) {
        Error(e["records"], path + ".records", std::string(selection.status().message()));
      } else {
        mapping.records = *selection;
        if (action != nullptr && !action->Supports(*selection)) {
          std::vector<std::string> names;
          for (RecordSelection s : action->selections) {
            names.emplace_back(RecordSelectionName(s));
          }
          Error(e["records"], path + ".records",
                fmt::format("action \"{}\" cannot send \"{}\" records", action->id,
                            RecordSelectionName(*selection)),
                fmt::format("use one of: {}", fmt::join(names, ", ")));
        }
      }
    } else if (action != nullptr && !action->selections.empty()) {
      // Unset: everything the action can send (e.g. only added rows for an event action).
      mapping.records = action->selections.front();
      for (RecordSelection s : {RecordSelection::kAll, RecordSelection::kAddedOrUpdated,
                                RecordSelection::kAdded, RecordSelection::kDeleted}) {
        if (action->Supports(s)) {
          mapping.records = s;
          break;
        }
      }
    }
    if (e["enabled"].IsDefined()) {
      std::string v = e["enabled"].Scalar();
      if (v != "true" && v != "false") {
        Error(e["enabled"], path + ".enabled", "must be true or false");
      } else {
        mapping.enabled = v == "true";
      }
    }
    if (e["batch_size"].IsDefined()) {
      int max = action ? action->max_batch_records : 1'000'000;
      int size = 0;
      try {
        size = std::stoi(e["batch_size"].Scalar());
      } catch (...) {
        size = 0;
      }
      if (size < 1 || size > max) {
        Error(e["batch_size"], path + ".batch_size",
              fmt::format("must be a whole number from 1 to {}", max),
              action ? fmt::format("action \"{}\" accepts at most {} records per batch", action->id,
                                   max)
                     : "");
      } else {
        mapping.batch_size = size;
      }
    }
    if (e["max_deletes"].IsDefined()) {
      static const std::regex kPercent("^([0-9]{1,3}(\\.[0-9]+)?)%$");
      static const std::regex kCount("^[0-9]{1,15}$");
      std::string text = e["max_deletes"].Scalar();
      std::smatch match;
      if (std::regex_match(text, match, kPercent) && std::stod(match[1].str()) <= 100) {
        mapping.max_deletes = {.is_percent = true, .percent = std::stod(match[1].str())};
      } else if (std::regex_match(text, kCount)) {
        mapping.max_deletes = {.is_percent = false, .count = std::stoll(text)};
      } else {
        Error(e["max_deletes"], path + ".max_deletes",
              fmt::format("\"{}\" is not a percentage or a count", text),
              "e.g. max_deletes: 20% (of the records last synced) or max_deletes: 1000; "
              "100% turns the check off");
      }
    }
    YAML::Node fields = e["fields"];
    if (!fields.IsDefined() || fields.IsNull()) {
      Error(e, path, "\"fields\" is required",
            "map destination fields to model columns, e.g. fields: { email: email }");
    } else if (!fields.IsMap()) {
      Error(fields, path + ".fields", "must map destination fields to model columns",
            "e.g. fields: { email: email, plan: plan }");
    } else {
      std::vector<std::string> field_keys;
      if (action != nullptr) {
        for (const FieldSpec& f : action->fields) field_keys.push_back(f.key);
      }
      std::set<std::string> mapped;
      for (auto it = fields.begin(); it != fields.end(); ++it) {
        std::string key = it->first.Scalar();
        std::string fpath = path + ".fields." + key;
        if (!it->second.IsScalar() || it->second.Scalar().empty()) {
          Error(it->second, fpath, "must be a model column or an expression",
                "e.g. email: email_address, or email: lower(trim(email_address))");
          continue;
        }
        if (absl::StatusOr<Expression> expr = Expression::Parse(it->second.Scalar()); !expr.ok()) {
          Error(it->second, fpath, std::string(expr.status().message()),
                "columns are written as-is, text literals in single quotes ('pro'), functions "
                "as lower(email); see docs/mapping.md");
          continue;
        }
        if (action != nullptr && !action->AcceptsField(key)) {
          std::string hint = ReferenceHint("field", key, field_keys);
          if (!action->extra_field_parents.empty()) {
            hint += fmt::format("; any field under {} may be added, e.g. {}.{}",
                                fmt::join(action->extra_field_parents, ", "),
                                action->extra_field_parents.front(), key);
          }
          Error(it->first, fpath, fmt::format("action \"{}\" has no field \"{}\"", action->id, key),
                hint);
          continue;
        }
        mapped.insert(key);
        mapping.fields.push_back({key, Text(it->second, fpath)});
      }
      if (action != nullptr) {
        for (const FieldSpec& f : action->fields) {
          if (!f.required || mapped.count(f.key)) continue;
          if (!f.default_column.empty()) continue;  // the Mapper maps it from the model
          Error(fields, path + ".fields", fmt::format("required field \"{}\" is not mapped", f.key),
                fmt::format("add {}: <column> ({})", f.key, f.description));
        }
      }
      if (action != nullptr && action->validate && dest_config != nullptr) {
        for (const std::string& problem : action->validate(dest_config->settings, mapping.fields)) {
          Error(fields, path + ".fields", problem);
        }
      }
    }
    result_.workspace.mappings.push_back(std::move(mapping));
  }
}

}  // namespace

std::string Diagnostic::ToString() const {
  std::string out = file;
  if (line > 0) out += fmt::format(":{}:{}", line, column);
  out += is_error() ? ": error: " : ": warning: ";
  if (!path.empty()) out += path + ": ";
  out += message;
  if (!hint.empty()) out += " (hint: " + hint + ")";
  return out;
}

std::string Schedule::ToString() const {
  switch (kind) {
    case Kind::kManual:
      return "manual";
    case Kind::kInterval:
      if (interval_minutes % 1440 == 0) return fmt::format("every {}d", interval_minutes / 1440);
      if (interval_minutes % 60 == 0) return fmt::format("every {}h", interval_minutes / 60);
      return fmt::format("every {}m", interval_minutes);
    case Kind::kCron:
      return fmt::format("cron \"{}\" {}", cron, timezone);
    case Kind::kWeekly: {
      std::vector<std::string> days;
      for (int d : weekdays) days.emplace_back(kWeekdayNames[d]);
      return fmt::format("{} at {:02}:00 {}", fmt::join(days, ","), hour, timezone);
    }
  }
  return "manual";
}

template <typename T>
static const T* FindByName(const std::vector<T>& items, std::string_view name) {
  for (const T& item : items) {
    if (item.name == name) return &item;
  }
  return nullptr;
}

const SourceConfig* Workspace::FindSource(std::string_view name) const {
  return FindByName(sources, name);
}
const ModelConfig* Workspace::FindModel(std::string_view name) const {
  return FindByName(models, name);
}
const DestinationConfig* Workspace::FindDestination(std::string_view name) const {
  return FindByName(destinations, name);
}
const MappingConfig* Workspace::FindMapping(std::string_view name) const {
  return FindByName(mappings, name);
}

std::string Workspace::LocalStateDir() const {
  if (state_url.rfind("sqlite:", 0) == 0) {
    return fs::path(state_url.substr(7)).parent_path().string();
  }
  return (fs::path(base_dir) / ".backflow").lexically_normal().string();
}

std::string Workspace::StateForDisplay() const {
  if (state_url.rfind("sqlite:", 0) == 0) return state_url.substr(7);
  return MaskUrlPassword(state_url);
}

std::string MaskUrlPassword(const std::string& url) {
  static constexpr std::string_view kMask = "********";
  std::string out = url;
  size_t scheme = out.find("://");
  if (scheme == std::string::npos) return out;
  // user:password@ in the authority (which ends at the first '/' or '?').
  const size_t start = scheme + 3;
  size_t end = out.find_first_of("/?", start);
  if (end == std::string::npos) end = out.size();
  size_t at = out.rfind('@', end == 0 ? 0 : end - 1);
  if (at != std::string::npos && at >= start) {
    size_t colon = out.find(':', start);
    if (colon != std::string::npos && colon < at) {
      out.replace(colon + 1, at - colon - 1, kMask);
    }
  }
  // ?...&password=...&...
  size_t query = out.find('?');
  if (query == std::string::npos) return out;
  size_t pos = query + 1;
  while (pos < out.size()) {
    size_t amp = out.find('&', pos);
    if (amp == std::string::npos) amp = out.size();
    constexpr std::string_view kKey = "password=";
    if (out.compare(pos, kKey.size(), kKey) == 0) {
      out.replace(pos + kKey.size(), amp - pos - kKey.size(), kMask);
      amp = pos + kKey.size() + kMask.size();
    }
    pos = amp + 1;
  }
  return out;
}

bool LoadResult::ok() const { return error_count() == 0; }

size_t LoadResult::error_count() const {
  return std::count_if(diagnostics.begin(), diagnostics.end(),
                       [](const Diagnostic& d) { return d.is_error(); });
}

LoadResult LoadWorkspace(const std::string& path, const Registry& registry) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    LoadResult result;
    Diagnostic d;
    d.file = path;
    d.message = fmt::format("cannot read the workspace file: {}", std::strerror(errno));
    d.hint = "pass the file with -c FILE (default: backflow.yaml in the current folder)";
    result.diagnostics.push_back(std::move(d));
    return result;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return LoadWorkspaceFromString(buffer.str(), path, registry);
}

LoadResult LoadWorkspaceFromString(const std::string& yaml, const std::string& file,
                                   const Registry& registry) {
  return Loader(file, registry).Load(yaml);
}

std::string ResolveEnvReferences(const std::string& text, std::vector<std::string>& missing) {
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t start = text.find("${env:", pos);
    if (start == std::string::npos) break;
    size_t end = text.find('}', start);
    if (end == std::string::npos) break;
    out.append(text, pos, start - pos);
    std::string name = text.substr(start + 6, end - start - 6);
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) {
      missing.push_back(name);
    } else {
      out.append(value);
    }
    pos = end + 1;
  }
  out.append(text, pos);
  return out;
}

std::string ClosestMatch(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, word.size() / 3) + 1;
  for (const std::string& c : candidates) {
    std::vector<size_t> prev(c.size() + 1), cur(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= c.size(); ++j) {
        size_t cost = word[i - 1] == c[j - 1] ? 0 : 1;
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
      }
      std::swap(prev, cur);
    }
    if (prev[c.size()] < best_distance) {
      best_distance = prev[c.size()];
      best = c;
    }
  }
  return best;
}

}  // namespace backflow
