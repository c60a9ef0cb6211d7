#include "backflow/config/workspace.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
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
// Shorter secret values are not scrubbed from diagnostics: replacing every
// occurrence of two letters would garble the messages.
constexpr size_t kMinScrubbedSecret = 4;

bool IsValidName(const std::string& name) {
  static const std::regex kName("^[A-Za-z][A-Za-z0-9_-]{0,127}$");
  return std::regex_match(name, kName);
}

// Walks one YAML document, collecting diagnostics as it goes.
class Loader {
 public:
  Loader(std::string file, const Registry& registry, const SecretResolverFactory& secrets)
      : file_(std::move(file)), registry_(registry), secrets_(secrets) {}

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
    int line = current_line_, column = current_column_;
    if (at.IsDefined() && at.Mark().line >= 0) {
      line = at.Mark().line + 1;
      column = at.Mark().column + 1;
    }
    AddAt(severity, line, column, std::move(path), std::move(message), std::move(hint));
  }
  void AddAt(Diagnostic::Severity severity, int line, int column, std::string path,
             std::string message, std::string hint) {
    Diagnostic d;
    d.severity = severity;
    d.file = file_;
    d.line = line;
    d.column = column;
    d.path = std::move(path);
    d.message = std::move(message);
    d.hint = std::move(hint);
    result_.diagnostics.push_back(std::move(d));
  }

  // A scalar as text with ${env:NAME} and ${secret:NAME} resolved in one pass
  // (a value is never expanded again); reports a missing variable or secret.
  // `allow_secrets` is false where the secrets cannot be read yet (state:).
  std::string Text(const YAML::Node& node, const std::string& path, bool allow_secrets = true) {
    const std::string& raw = node.Scalar();
    std::string out;
    size_t pos = 0;
    std::map<std::string, int> seen;  // reference text -> occurrences so far
    while (true) {
      size_t start = raw.find("${", pos);
      if (start == std::string::npos) break;
      size_t end = raw.find('}', start);
      if (end == std::string::npos) break;
      std::string body = raw.substr(start + 2, end - start - 2);
      if (body.rfind("env:", 0) == 0) {
        out.append(raw, pos, start - pos);
        std::string var = body.substr(4);
        const char* value = std::getenv(var.c_str());
        if (value == nullptr) {
          Error(node, path, fmt::format("environment variable {} is not set", var),
                fmt::format("export {}=... before running backflow", var));
        } else {
          out.append(value);
        }
      } else if (body.rfind("secret:", 0) == 0) {
        out.append(raw, pos, start - pos);
        std::string reference = raw.substr(start, end - start + 1);
        auto [line, column] = PositionOf(node, reference, seen[reference]++);
        out.append(SecretValue(body.substr(7), reference, allow_secrets, line, column, path));
      } else {
        out.append(raw, pos, start + 2 - pos);
        pos = start + 2;
        continue;
      }
      pos = end + 1;
    }
    out.append(raw, pos);
    return out;
  }

  // Where the `nth` (0-based) occurrence of `needle` in `node`'s text is in
  // the file; the node's own position when the text is not found verbatim
  // (e.g. written with escapes).
  std::pair<int, int> PositionOf(const YAML::Node& node, const std::string& needle, int nth) {
    const YAML::Mark mark = node.Mark();
    if (yaml_ == nullptr || mark.pos < 0 || static_cast<size_t>(mark.pos) > yaml_->size()) {
      return {mark.line + 1, mark.column + 1};
    }
    const size_t begin = mark.pos;
    const size_t limit = std::min(yaml_->size(), begin + 2 * node.Scalar().size() + 256);
    size_t at = begin;
    for (int i = 0; i <= nth; ++i) {
      at = yaml_->find(needle, i == 0 ? at : at + 1);
      if (at == std::string::npos || at + needle.size() > limit) {
        return {mark.line + 1, mark.column + 1};
      }
    }
    int line = mark.line, column = mark.column;
    for (size_t i = begin; i < at; ++i) {
      if ((*yaml_)[i] == '\n') {
        ++line;
        column = 0;
      } else {
        ++column;
      }
    }
    return {line + 1, column + 1};
  }

  // The value of ${secret:NAME} (`reference`) found at line:column.
  std::string SecretValue(const std::string& name, const std::string& reference, bool allow_secrets,
                          int line, int column, const std::string& path) {
    auto error = [&](std::string message, std::string hint) {
      AddAt(Diagnostic::Severity::kError, line, column, path, std::move(message), std::move(hint));
    };
    if (!allow_secrets) {
      error(fmt::format("{} cannot be used here: the secrets are read from the state store "
                        "this setting names",
                        reference),
            "use ${env:NAME} for this setting");
      return reference;
    }
    if (!IsValidSecretName(name)) {
      error(fmt::format("invalid secret name \"{}\"", name),
            "secret names are letters, digits and '_', not starting with a digit");
      return "";
    }
    // Without a resolver, or when state: is invalid (reported already), the
    // reference stays as written.
    if (!secrets_ || result_.workspace.state_url.empty()) return reference;
    if (auto cached = secret_values_.find(name); cached != secret_values_.end()) {
      if (!cached->second) ReportMissingSecret(name, line, column, path);
      return cached->second.value_or("");
    }
    if (resolver_ == nullptr && !resolver_failed_) {
      absl::StatusOr<std::unique_ptr<SecretResolver>> made = secrets_(result_.workspace);
      if (made.ok()) {
        resolver_ = *std::move(made);
      } else {
        resolver_failed_ = true;
        error(fmt::format("cannot read the secrets: {}", made.status().message()), "");
      }
    }
    if (resolver_ == nullptr) return "";
    absl::StatusOr<std::optional<std::string>> value = resolver_->Resolve(name);
    if (!value.ok()) {
      std::string message =
          fmt::format("cannot read secret \"{}\": {}", name, value.status().message());
      // One report per distinct failure (a wrong key fails every reference alike).
      if (resolver_errors_.insert(std::string(value.status().message())).second) {
        error(message, "");
      }
      return "";
    }
    secret_values_[name] = *value;
    if (!*value) ReportMissingSecret(name, line, column, path);
    return value->value_or("");
  }

  void ReportMissingSecret(const std::string& name, int line, int column, const std::string& path) {
    AddAt(Diagnostic::Severity::kError, line, column, path,
          fmt::format("secret \"{}\" is not set", name),
          fmt::format("set it with `backflow secret set {}`, which reads the value from stdin",
                      name));
  }

  // Replaces every resolved secret value in the diagnostics by its reference:
  // values may reach messages through checks that quote what they rejected.
  void ScrubSecretValues() {
    Workspace& ws = result_.workspace;
    for (const auto& [name, value] : secret_values_) {
      if (value) ws.resolved_secrets.emplace_back(name, *value);
    }
    if (ws.resolved_secrets.empty()) return;
    for (Diagnostic& d : result_.diagnostics) {
      d.message = ws.RedactSecrets(std::move(d.message));
      d.hint = ws.RedactSecrets(std::move(d.hint));
      d.path = ws.RedactSecrets(std::move(d.path));
    }
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
                fmt::format("store it with `backflow secret set NAME` and write {}: "
                            "${{secret:NAME}} (or use ${{env:NAME}}), and keep the value out of "
                            "version control",
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
  void LoadSecretKeyFile(const YAML::Node& root);
  void LoadSpoolKeep(const YAML::Node& root);
  void LoadSources(const YAML::Node& root);
  void LoadModels(const YAML::Node& root);
  void LoadChangeDetection(const YAML::Node& e, const std::string& path, ModelConfig& model);
  void LoadDestinations(const YAML::Node& root);
  void LoadMappings(const YAML::Node& root);
  // alerts: (after the mappings, whose `alerts:` it resolves).
  void LoadAlerts(const YAML::Node& root);
  void LoadMappingAlerts(const YAML::Node& list, const std::string& path, MappingConfig& mapping);
  void LoadAlertWebhook(const YAML::Node& node, const std::string& path, AlertConfig& alert);
  void LoadAlertSlack(const YAML::Node& node, const std::string& path, AlertConfig& alert);
  void LoadAlertEmail(const YAML::Node& node, const std::string& path, AlertConfig& alert);
  // Warns about a credential written in the file instead of referenced.
  void WarnIfClear(const YAML::Node& node, const std::string& path, const std::string& what,
                   const std::string& key) {
    if (node.IsDefined() && node.IsScalar() && !node.Scalar().empty() &&
        node.Scalar().find("${") == std::string::npos) {
      Warning(node, path, fmt::format("{} written in clear in the file", what),
              fmt::format("use {}: ${{env:NAME}} and keep the value out of version control", key));
    }
  }
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
  const SecretResolverFactory& secrets_;
  const std::string* yaml_ = nullptr;  // the text being loaded
  std::unique_ptr<SecretResolver> resolver_;
  bool resolver_failed_ = false;
  std::set<std::string> resolver_errors_;
  std::map<std::string, std::optional<std::string>> secret_values_;  // name -> value, if set
  LoadResult result_;
  std::set<std::string> declared_destinations_;
  // A mapping's `alerts: [name]` entries, resolved once the alerts are loaded.
  struct AlertReference {
    YAML::Node node;
    std::string path;
    std::string alert;
    std::string mapping;
  };
  std::vector<AlertReference> alert_references_;
  int current_line_ = 0;
  int current_column_ = 0;
};

LoadResult Loader::Load(const std::string& yaml) {
  yaml_ = &yaml;
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
    CheckKeys(root, "",
              {"version", "state", "secret_key_file", "spool_keep_mib", "sources", "models",
               "destinations", "mappings", "alerts"});
    // "".key → "key" for top-level paths.
    for (Diagnostic& d : result_.diagnostics) {
      if (!d.path.empty() && d.path[0] == '.') d.path.erase(0, 1);
    }
    LoadState(root);
    LoadSources(root);
    LoadModels(root);
    LoadDestinations(root);
    LoadMappings(root);
    LoadAlerts(root);
  } catch (const YAML::Exception& e) {
    Diagnostic d;
    d.file = file_;
    d.line = e.mark.line + 1;
    d.column = e.mark.column + 1;
    d.message = fmt::format("unexpected YAML structure: {}", e.msg);
    result_.diagnostics.push_back(std::move(d));
  }
  ScrubSecretValues();
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
    state = Text(node, "state", /*allow_secrets=*/false);
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
  LoadSecretKeyFile(root);
  LoadSpoolKeep(root);
}

void Loader::LoadSpoolKeep(const YAML::Node& root) {
  YAML::Node node = root["spool_keep_mib"];
  if (!node.IsDefined() || node.IsNull()) return;
  static const std::regex kMib("^[0-9]{1,7}$");
  if (!node.IsScalar() || !std::regex_match(node.Scalar(), kMib)) {
    Error(node, "spool_keep_mib",
          "must be a whole number of MiB (0 to 9999999): how much of a run's scratch files "
          "the next run may write over",
          "e.g. spool_keep_mib: 4096, or 0 to remove the scratch files after every run");
    return;
  }
  result_.workspace.spool_keep_bytes = std::stoull(node.Scalar()) << 20;
}

void Loader::LoadSecretKeyFile(const YAML::Node& root) {
  Workspace& ws = result_.workspace;
  YAML::Node node = root["secret_key_file"];
  if (node.IsDefined() && !node.IsNull()) {
    if (!node.IsScalar() || node.Scalar().empty()) {
      Error(node, "secret_key_file", "must be the path of the key file that encrypts secrets",
            "e.g. secret_key_file: /etc/backflow/secret.key (created, mode 0600, on first use)");
    } else {
      std::string path = Text(node, "secret_key_file", /*allow_secrets=*/false);
      if (!path.empty()) {
        ws.secret_key_file = ResolvePath(path);
        return;
      }
    }
  }
  if (ws.state_url.rfind("sqlite:", 0) == 0) {
    ws.secret_key_file = (fs::path(ws.state_url.substr(7)).parent_path() / "secret.key").string();
  } else {
    ws.secret_key_file = ResolvePath(".backflow/secret.key");
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

void Loader::LoadChangeDetection(const YAML::Node& e, const std::string& path, ModelConfig& model) {
  const YAML::Node node = e["change_detection"];
  if (!node.IsDefined() || node.IsNull()) return;
  const std::string text = node.IsScalar() ? node.Scalar() : "";
  if (text == "local") return;
  if (text != "warehouse") {
    Error(node, path + ".change_detection",
          fmt::format("\"{}\" is not a change detection mode", text),
          "use local (the default: Backflow reads every row and diffs them) or warehouse (the "
          "source diffs and only changed rows are read)");
    return;
  }
  model.change_detection = ChangeDetection::kWarehouse;
  const SourceConfig* source = result_.workspace.FindSource(model.source);
  const SourceDefinition* def = source ? registry_.FindSource(source->type) : nullptr;
  if (def == nullptr || def->warehouse_change_detection) return;  // unknown: reported already
  std::vector<std::string> able;
  for (const SourceDefinition& d : registry_.sources()) {
    if (d.warehouse_change_detection) able.push_back(d.type);
  }
  Error(node, path + ".change_detection",
        fmt::format("source \"{}\" (type {}) cannot detect changes itself", model.source,
                    source->type),
        fmt::format("remove change_detection (or set it to local); warehouse mode needs a source "
                    "of type {}",
                    fmt::join(able, " or ")));
}

void Loader::LoadModels(const YAML::Node& root) {
  std::set<std::string> seen;
  std::vector<std::string> source_names;
  for (const SourceConfig& s : result_.workspace.sources) source_names.push_back(s.name);
  auto entries = Entries(root, "models");
  for (size_t i = 0; i < entries.size(); ++i) {
    const YAML::Node& e = entries[i];
    std::string path = fmt::format("models[{}]", i);
    CheckKeys(
        e, path,
        {"name", "source", "sql", "primary_key", "schedule", "description", "change_detection"});
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
    LoadChangeDetection(e, path, model);
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
               "batch_size", "max_deletes", "description", "alerts"});
    MappingConfig mapping;
    auto name = EntryName(e, path, seen, "mapping");
    if (name) mapping.name = *name;
    LoadMappingAlerts(e["alerts"], path + ".alerts", mapping);
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

void Loader::LoadMappingAlerts(const YAML::Node& list, const std::string& path,
                               MappingConfig& mapping) {
  if (!list.IsDefined() || list.IsNull()) return;
  if (!list.IsSequence()) {
    Error(list, path, "must be a list of alert names", "e.g. alerts: [oncall]");
    return;
  }
  for (size_t i = 0; i < list.size(); ++i) {
    std::string item_path = fmt::format("{}[{}]", path, i);
    if (!list[i].IsScalar() || list[i].Scalar().empty()) {
      Error(list[i], item_path, "must be the name of an alert", "e.g. alerts: [oncall]");
      continue;
    }
    std::string alert = list[i].Scalar();
    if (std::find(mapping.alerts.begin(), mapping.alerts.end(), alert) != mapping.alerts.end()) {
      continue;
    }
    mapping.alerts.push_back(alert);
    alert_references_.push_back({list[i], item_path, alert, mapping.name});
  }
}

void Loader::LoadAlerts(const YAML::Node& root) {
  std::set<std::string> seen;
  std::vector<std::string> mapping_names;
  for (const MappingConfig& m : result_.workspace.mappings) mapping_names.push_back(m.name);
  const std::vector<std::string> kEvents = {"failure", "failed_records", "recovery"};
  const std::vector<std::string> kChannels = {"webhook", "slack", "email"};
  const std::string kChannelHint =
      "add one of webhook: { url: ... }, slack: { webhook_url: ... } or "
      "email: { smtp_url: ..., from: ..., to: [...] }";
  auto entries = Entries(root, "alerts");
  for (size_t i = 0; i < entries.size(); ++i) {
    const YAML::Node& e = entries[i];
    std::string path = fmt::format("alerts[{}]", i);
    CheckKeys(e, path,
              {"name", "description", "on", "failed_records_threshold", "mappings", "webhook",
               "slack", "email"});
    AlertConfig alert;
    auto name = EntryName(e, path, seen, "alert");
    if (name) alert.name = *name;

    YAML::Node on = e["on"];
    if (on.IsDefined() && !on.IsNull()) {
      std::vector<YAML::Node> events;
      if (on.IsScalar()) {
        events.push_back(on);
      } else if (on.IsSequence()) {
        for (size_t k = 0; k < on.size(); ++k) events.push_back(on[k]);
      }
      if (events.empty()) {
        Error(on, path + ".on", "must list the events to alert on",
              "e.g. on: [failure, failed_records, recovery] (the default when omitted)");
      } else {
        alert.on_failure = alert.on_failed_records = alert.on_recovery = false;
        for (size_t k = 0; k < events.size(); ++k) {
          std::string event_path =
              on.IsSequence() ? fmt::format("{}.on[{}]", path, k) : path + ".on";
          std::string event = events[k].IsScalar() ? events[k].Scalar() : "";
          if (event == "failure") {
            alert.on_failure = true;
          } else if (event == "failed_records") {
            alert.on_failed_records = true;
          } else if (event == "recovery") {
            alert.on_recovery = true;
          } else {
            std::string suggestion = ClosestMatch(event, kEvents);
            Error(events[k], event_path, fmt::format("unknown alert event \"{}\"", event),
                  suggestion.empty() ? "use failure, failed_records or recovery"
                                     : fmt::format("did you mean \"{}\"?", suggestion));
          }
        }
        if (alert.on_recovery && !alert.on_failure && !alert.on_failed_records) {
          Error(on, path + ".on", "\"recovery\" alone never fires",
                "a recovery closes an incident that failure or failed_records opened: add one of "
                "them");
        }
      }
    }

    YAML::Node threshold = e["failed_records_threshold"];
    if (threshold.IsDefined() && !threshold.IsNull()) {
      static const std::regex kPercent("^([0-9]{1,3}(\\.[0-9]+)?)%$");
      std::string text = threshold.IsScalar() ? threshold.Scalar() : "";
      std::smatch match;
      if (std::regex_match(text, match, kPercent) && std::stod(match[1].str()) < 100) {
        alert.failed_records_threshold = std::stod(match[1].str());
        if (!alert.on_failed_records) {
          Warning(threshold, path + ".failed_records_threshold",
                  "has no effect: \"on\" does not include failed_records",
                  "add failed_records to on: or remove the threshold");
        }
      } else {
        Error(threshold, path + ".failed_records_threshold",
              fmt::format("\"{}\" is not a percentage from 0% to below 100%", text),
              "e.g. failed_records_threshold: 5%, the share of a run's records that failed or "
              "were rejected; 0% alerts on any failed record; the default is 10%");
      }
    }

    YAML::Node mappings = e["mappings"];
    if (mappings.IsDefined() && !mappings.IsNull()) {
      if (!mappings.IsSequence() || mappings.size() == 0) {
        Error(mappings, path + ".mappings", "must be a non-empty list of mapping names",
              "e.g. mappings: [customers_to_crm]; omit it to cover every mapping");
      } else {
        alert.workspace_wide = false;
        for (size_t k = 0; k < mappings.size(); ++k) {
          std::string item_path = fmt::format("{}.mappings[{}]", path, k);
          std::string mapping = mappings[k].IsScalar() ? mappings[k].Scalar() : "";
          if (result_.workspace.FindMapping(mapping) == nullptr) {
            Error(mappings[k], item_path, fmt::format("unknown mapping \"{}\"", mapping),
                  ReferenceHint("mapping", mapping, mapping_names));
            continue;
          }
          alert.mappings.push_back(mapping);
        }
      }
    }

    std::vector<std::string> channels;
    for (const std::string& c : kChannels) {
      if (e[c].IsDefined()) channels.push_back(c);
    }
    if (channels.empty()) {
      Error(e, path, "an alert needs a channel", kChannelHint);
    } else if (channels.size() > 1) {
      Error(e[channels[1]], path + "." + channels[1],
            fmt::format("\"{}\" and \"{}\" are both set: an alert has exactly one channel",
                        channels[0], channels[1]),
            "split it into one alert per channel, each with its own name");
    } else if (channels[0] == "webhook") {
      LoadAlertWebhook(e["webhook"], path + ".webhook", alert);
    } else if (channels[0] == "slack") {
      LoadAlertSlack(e["slack"], path + ".slack", alert);
    } else {
      LoadAlertEmail(e["email"], path + ".email", alert);
    }
    result_.workspace.alerts.push_back(std::move(alert));
  }

  std::vector<std::string> alert_names;
  for (const AlertConfig& a : result_.workspace.alerts) alert_names.push_back(a.name);
  for (const AlertReference& ref : alert_references_) {
    auto it = std::find_if(result_.workspace.alerts.begin(), result_.workspace.alerts.end(),
                           [&](const AlertConfig& a) { return a.name == ref.alert; });
    if (it == result_.workspace.alerts.end()) {
      Error(ref.node, ref.path, fmt::format("unknown alert \"{}\"", ref.alert),
            ReferenceHint("alert", ref.alert, alert_names));
      continue;
    }
    it->workspace_wide = false;
    if (!ref.mapping.empty()) it->mappings.push_back(ref.mapping);
  }
  for (AlertConfig& a : result_.workspace.alerts) {
    std::sort(a.mappings.begin(), a.mappings.end());
    a.mappings.erase(std::unique(a.mappings.begin(), a.mappings.end()), a.mappings.end());
  }
}

// True for an http(s) URL with a host.
static bool IsHttpUrl(const std::string& url) {
  static const std::regex kUrl("^https?://[^/?#@\\s]+(/\\S*)?$");
  return std::regex_match(url, kUrl);
}

void Loader::LoadAlertWebhook(const YAML::Node& node, const std::string& path, AlertConfig& alert) {
  alert.channel = AlertConfig::Channel::kWebhook;
  if (!node.IsMap()) {
    Error(node, path, "must be a mapping with a url",
          "e.g. webhook: { url: https://hooks.example.com/backflow }");
    return;
  }
  CheckKeys(node, path, {"url", "headers"});
  if (auto url = RequiredString(node, "url", path, "the URL alerts are POSTed to")) {
    alert.webhook.url = *url;
    if (!url->empty() && !IsHttpUrl(*url)) {
      Error(node["url"], path + ".url", "must be an http:// or https:// URL with a host",
            "e.g. url: https://hooks.example.com/backflow");
    }
  }
  YAML::Node headers = node["headers"];
  if (!headers.IsDefined() || headers.IsNull()) return;
  if (!headers.IsMap()) {
    Error(headers, path + ".headers", "must map header names to values",
          "e.g. headers: { Authorization: \"Bearer ${env:ALERT_TOKEN}\" }");
    return;
  }
  static const std::regex kToken("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$");
  for (auto it = headers.begin(); it != headers.end(); ++it) {
    std::string header = it->first.Scalar();
    std::string hpath = path + ".headers." + header;
    if (!std::regex_match(header, kToken)) {
      Error(it->first, hpath, fmt::format("\"{}\" is not a valid HTTP header name", header),
            "use letters, digits and '-'");
      continue;
    }
    if (!it->second.IsScalar()) {
      Error(it->second, hpath, "must be a string");
      continue;
    }
    std::string value = Text(it->second, hpath);
    if (value.find_first_of("\r\n") != std::string::npos) {
      Error(it->second, hpath, "must not contain line breaks");
      continue;
    }
    std::string lower = header;
    std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
    if (lower == "authorization" || lower.find("token") != std::string::npos ||
        lower.find("key") != std::string::npos || lower.find("secret") != std::string::npos) {
      WarnIfClear(it->second, hpath, "credential header", header);
    }
    alert.webhook.headers.emplace_back(header, value);
  }
}

void Loader::LoadAlertSlack(const YAML::Node& node, const std::string& path, AlertConfig& alert) {
  alert.channel = AlertConfig::Channel::kSlack;
  const std::string kHint =
      "create an incoming webhook in Slack (Apps > Incoming Webhooks) and write "
      "slack: { webhook_url: ${env:SLACK_WEBHOOK_URL} }";
  if (!node.IsMap()) {
    Error(node, path, "must be a mapping with a webhook_url", kHint);
    return;
  }
  CheckKeys(node, path, {"webhook_url"});
  if (auto url = RequiredString(node, "webhook_url", path, kHint)) {
    alert.slack.webhook_url = *url;
    if (!url->empty() && !IsHttpUrl(*url)) {
      Error(node["webhook_url"], path + ".webhook_url",
            "must be a URL like https://hooks.slack.com/services/T…/B…/…", kHint);
    }
    WarnIfClear(node["webhook_url"], path + ".webhook_url",
                "Slack webhook URL (it is a credential)", "webhook_url");
  }
}

void Loader::LoadAlertEmail(const YAML::Node& node, const std::string& path, AlertConfig& alert) {
  alert.channel = AlertConfig::Channel::kEmail;
  if (!node.IsMap()) {
    Error(node, path, "must be a mapping with smtp_url, from and to",
          "e.g. email: { smtp_url: smtp://smtp.example.com:587, from: alerts@example.com, "
          "to: [oncall@example.com] }");
    return;
  }
  CheckKeys(node, path, {"smtp_url", "username", "password", "from", "to", "starttls"});
  AlertConfig::Email& email = alert.email;
  if (auto url = RequiredString(node, "smtp_url", path,
                                "e.g. smtp_url: smtp://smtp.example.com:587 (STARTTLS) or "
                                "smtps://smtp.example.com:465")) {
    email.smtp_url = *url;
    static const std::regex kSmtpUrl("^smtps?://([^/?#\\s]+)/?$");
    std::smatch match;
    if (email.smtp_url.empty()) {
      // an unset ${env:...}, reported already
    } else if (!std::regex_match(email.smtp_url, match, kSmtpUrl)) {
      Error(node["smtp_url"], path + ".smtp_url",
            "must be smtp://HOST[:PORT] or smtps://HOST[:PORT]",
            "e.g. smtp_url: smtp://smtp.example.com:587");
    } else if (match[1].str().find('@') != std::string::npos) {
      Error(node["smtp_url"], path + ".smtp_url", "must not carry credentials",
            "write them as username: and password: ${env:SMTP_PASSWORD}");
    }
  }
  for (const char* key : {"username", "password"}) {
    YAML::Node v = node[key];
    if (!v.IsDefined() || v.IsNull()) continue;
    if (!v.IsScalar()) {
      Error(v, path + "." + key, "must be a string");
      continue;
    }
    (std::string(key) == "username" ? email.username : email.password) = Text(v, path + "." + key);
  }
  if (node["username"].IsDefined() != node["password"].IsDefined()) {
    Error(node, path, "username and password go together",
          "set both to log in to the SMTP server, or neither for a relay without AUTH");
  }
  WarnIfClear(node["password"], path + ".password", "SMTP password", "password");
  if (auto from = RequiredString(node, "from", path, "e.g. from: Backflow <alerts@example.com>")) {
    email.from = *from;
    if (!MailboxAddress(*from)) {
      Error(node["from"], path + ".from", fmt::format("\"{}\" is not an email address", *from),
            "write user@example.com or Name <user@example.com>");
    }
  }
  YAML::Node to = node["to"];
  if (!to.IsDefined() || to.IsNull()) {
    Error(node, path, "\"to\" is required", "e.g. to: [oncall@example.com]");
  } else {
    std::vector<std::pair<YAML::Node, std::string>> items;
    if (to.IsScalar()) {
      items.emplace_back(to, path + ".to");
    } else if (to.IsSequence()) {
      for (size_t k = 0; k < to.size(); ++k) {
        items.emplace_back(to[k], fmt::format("{}.to[{}]", path, k));
      }
    }
    if (items.empty()) {
      Error(to, path + ".to", "must list at least one recipient", "e.g. to: [oncall@example.com]");
    }
    for (const auto& [item, item_path] : items) {
      std::string text = item.IsScalar() ? Text(item, item_path) : "";
      if (!MailboxAddress(text)) {
        Error(item, item_path, fmt::format("\"{}\" is not an email address", text),
              "write user@example.com or Name <user@example.com>");
        continue;
      }
      email.to.push_back(text);
    }
  }
  YAML::Node starttls = node["starttls"];
  if (starttls.IsDefined() && !starttls.IsNull()) {
    std::string v = starttls.IsScalar() ? starttls.Scalar() : "";
    if (v != "true" && v != "false") {
      Error(starttls, path + ".starttls", "must be true or false");
    } else {
      email.starttls = v == "true";
    }
  }
  if (email.smtp_url.rfind("smtp://", 0) == 0 && !email.starttls && !email.password.empty()) {
    Warning(node["starttls"], path + ".starttls",
            "the SMTP password will cross the network unencrypted",
            "keep starttls: true (the default) or use smtps://, unless the server is a local "
            "relay");
  }
}

}  // namespace

std::string_view ChangeDetectionName(ChangeDetection mode) {
  return mode == ChangeDetection::kWarehouse ? "warehouse" : "local";
}

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

std::string Workspace::RedactSecrets(std::string text) const {
  for (const auto& [name, value] : resolved_secrets) {
    if (value.size() < kMinScrubbedSecret) continue;
    std::string reference = fmt::format("${{secret:{}}}", name);
    for (size_t at = text.find(value); at != std::string::npos;
         at = text.find(value, at + reference.size())) {
      text.replace(at, value.size(), reference);
    }
  }
  return text;
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
const AlertConfig* Workspace::FindAlert(std::string_view name) const {
  return FindByName(alerts, name);
}

bool AlertConfig::Covers(std::string_view mapping) const {
  return workspace_wide || std::find(mappings.begin(), mappings.end(), mapping) != mappings.end();
}

std::string_view AlertChannelName(AlertConfig::Channel channel) {
  switch (channel) {
    case AlertConfig::Channel::kWebhook:
      return "webhook";
    case AlertConfig::Channel::kSlack:
      return "slack";
    case AlertConfig::Channel::kEmail:
      return "email";
  }
  return "webhook";
}

std::optional<std::string> MailboxAddress(std::string_view mailbox) {
  if (mailbox.find_first_of("\r\n") != std::string_view::npos) return std::nullopt;
  std::string_view address = mailbox;
  size_t open = mailbox.find('<');
  if (open != std::string_view::npos) {
    size_t close = mailbox.find('>', open);
    if (close == std::string_view::npos || close + 1 != mailbox.size()) return std::nullopt;
    address = mailbox.substr(open + 1, close - open - 1);
  } else if (mailbox.find('>') != std::string_view::npos) {
    return std::nullopt;
  }
  static const std::regex kAddress("^[^\\s<>@,;:\"()\\[\\]]+@[A-Za-z0-9.-]+$");
  std::string text(address);
  if (!std::regex_match(text, kAddress)) return std::nullopt;
  return text;
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

LoadResult LoadWorkspace(const std::string& path, const Registry& registry,
                         const SecretResolverFactory& secrets) {
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
  return LoadWorkspaceFromString(buffer.str(), path, registry, secrets);
}

LoadResult LoadWorkspaceFromString(const std::string& yaml, const std::string& file,
                                   const Registry& registry, const SecretResolverFactory& secrets) {
  return Loader(file, registry, secrets).Load(yaml);
}

bool IsValidSecretName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  auto alpha = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
  if (!alpha(name[0])) return false;
  return std::all_of(name.begin(), name.end(),
                     [&](char c) { return alpha(c) || (c >= '0' && c <= '9'); });
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
