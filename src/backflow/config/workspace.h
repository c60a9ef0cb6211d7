// Workspace: the configuration of one Backflow project (sources, models,
// destinations, mappings), loaded from one YAML file (config as code).
//
// LoadWorkspace() parses and validates the whole file and reports every
// problem at once, each with its file position, its path in the document
// (e.g. "mappings[0].fields.email") and a hint. ${env:NAME} references are
// resolved at load time; the resolved secrets live only in memory.
// A Workspace is immutable after loading and safe to share between threads.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/catalog/registry.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct Diagnostic {
  enum class Severity { kError, kWarning };
  Severity severity = Severity::kError;
  std::string file;
  int line = 0;         // 1-based; 0 when unknown
  int column = 0;       // 1-based; 0 when unknown
  std::string path;     // e.g. "models[1].primary_key"
  std::string message;  // what is wrong
  std::string hint;     // how to fix it; may be empty

  bool is_error() const { return severity == Severity::kError; }
  // "backflow.yaml:12:5: error: models[1].primary_key: ... (hint: ...)"
  std::string ToString() const;
};

struct Schedule {
  enum class Kind { kManual, kInterval, kWeekly, kCron };
  Kind kind = Kind::kManual;
  int interval_minutes = 0;      // kInterval: 15, 30, 60, 120, 240, 360, 480, 720 or 1440
  std::vector<int> weekdays;     // kWeekly: 0 = Sunday … 6 = Saturday, ascending
  int hour = 0;                  // kWeekly: 0..23 (top of the hour)
  std::string cron;              // kCron: five fields, validated
  std::string timezone = "UTC";  // kWeekly and kCron: an IANA name, validated
  std::string ToString() const;
  bool operator==(const Schedule&) const = default;
};

struct SourceConfig {
  std::string name;
  std::string type;
  nlohmann::json settings;  // every key but name/type, defaults filled, env resolved
};

struct ModelConfig {
  std::string name;
  std::string source;
  std::string sql;
  std::string primary_key;
  Schedule schedule;
};

struct DestinationConfig {
  std::string name;
  std::string type;
  nlohmann::json settings;  // defaults filled, env resolved
};

// How many deletes one run may send before it is refused (see `max_deletes`).
struct DeleteLimit {
  bool is_percent = true;
  double percent = 50;  // of the records the mapping last synced
  int64_t count = 0;
};

struct MappingConfig {
  std::string name;
  std::string model;
  std::string destination;
  std::string action;
  // Unset in the file: the widest selection the action supports.
  RecordSelection records = RecordSelection::kAll;
  std::vector<MappedField> fields;  // in file order
  bool enabled = true;
  std::optional<int> batch_size;
  DeleteLimit max_deletes;
};

struct Workspace {
  std::string file;      // the YAML file it came from
  std::string base_dir;  // relative paths (sqlite files, state) resolve against this
  // "sqlite:<absolute path>", or a "postgresql://" / "postgres://" URI as
  // written (it may hold a password: never print it).
  std::string state_url;
  std::vector<SourceConfig> sources;
  std::vector<ModelConfig> models;
  std::vector<DestinationConfig> destinations;
  std::vector<MappingConfig> mappings;

  const SourceConfig* FindSource(std::string_view name) const;
  const ModelConfig* FindModel(std::string_view name) const;
  const DestinationConfig* FindDestination(std::string_view name) const;
  const MappingConfig* FindMapping(std::string_view name) const;

  // The folder for this process's local working files (the delivery spool):
  // the SQLite state file's folder, or <base_dir>/.backflow when the state
  // is in PostgreSQL.
  std::string LocalStateDir() const;
  // The state store for messages: the SQLite file's path, or the PostgreSQL
  // url with any password masked.
  std::string StateForDisplay() const;
};

struct LoadResult {
  Workspace workspace;
  std::vector<Diagnostic> diagnostics;  // errors and warnings, in file order

  bool ok() const;
  size_t error_count() const;
};

// Reads, parses and validates `path` against the connectors in `registry`.
// Never fails as a call: an unreadable file or invalid YAML is a diagnostic.
LoadResult LoadWorkspace(const std::string& path, const Registry& registry);
// The same for YAML text already in memory; `file` names it in diagnostics and
// its folder is the base for relative paths.
LoadResult LoadWorkspaceFromString(const std::string& yaml, const std::string& file,
                                   const Registry& registry);

// Replaces ${env:NAME} references in `text`. Unset variables are reported in
// `missing` and replaced by nothing.
std::string ResolveEnvReferences(const std::string& text, std::vector<std::string>& missing);

// `url` (a postgresql:// URI) with the password of its user info and any
// `password=` query parameter replaced by "********".
std::string MaskUrlPassword(const std::string& url);

// The closest of `candidates` to `word` by edit distance, if close enough to
// be a plausible typo; empty otherwise.
std::string ClosestMatch(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace backflow
