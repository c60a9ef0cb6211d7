// Workspace: the configuration of one Backflow project (sources, models,
// destinations, mappings), loaded from one YAML file (config as code).
//
// LoadWorkspace() parses and validates the whole file and reports every
// problem at once, each with its file position, its path in the document
// (e.g. "mappings[0].fields.email") and a hint. ${env:NAME} references are
// resolved at load time, and so are ${secret:NAME} references when the caller
// gives a SecretResolverFactory (see secrets/workspace_secrets.h); the
// resolved values live only in memory and never appear in diagnostics.
// Alerts (`alerts:`) are described in README.md (Alerts).
// A Workspace is immutable after loading and safe to share between threads.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
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

// Where a model's changes are found (`change_detection`): kLocal reads every
// row and diffs against the state store's checkpoint; kWarehouse diffs inside
// the source (SourceDefinition::warehouse_change_detection) and reads only
// the rows that changed.
enum class ChangeDetection { kLocal, kWarehouse };
std::string_view ChangeDetectionName(ChangeDetection mode);

struct ModelConfig {
  std::string name;
  std::string source;
  std::string sql;
  std::string primary_key;
  Schedule schedule;
  ChangeDetection change_detection = ChangeDetection::kLocal;
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
  // Alerts (by name) that cover this mapping besides their own `mappings:`.
  std::vector<std::string> alerts;
};

// One alert rule (`alerts:` in the file): which run outcomes it reports, for
// which mappings, and the one channel it sends them to. Delivery and the
// once-per-incident rule live in alerts/alert_manager.h.
struct AlertConfig {
  enum class Channel { kWebhook, kSlack, kEmail };
  struct Webhook {
    std::string url;                                           // http(s), env resolved
    std::vector<std::pair<std::string, std::string>> headers;  // in file order
  };
  struct Slack {
    std::string webhook_url;  // a Slack incoming-webhook URL (a credential)
  };
  struct Email {
    std::string smtp_url;  // smtp://host[:port] or smtps://host[:port]
    std::string username;  // empty: no AUTH
    std::string password;
    std::string from;             // "alerts@example.com" or "Backflow <alerts@example.com>"
    std::vector<std::string> to;  // the same forms; at least one
    bool starttls = true;         // smtp:// only: require STARTTLS before AUTH and MAIL
  };

  std::string name;
  bool on_failure = true;         // a run failed
  bool on_failed_records = true;  // failed + rejected records above the threshold
  bool on_recovery = true;        // the first healthy run after an incident
  // Percent of a run's records (succeeded + failed + rejected) that failed or
  // were rejected above which the run counts as failing; 0 <= x < 100.
  double failed_records_threshold = 10;
  // True when neither `mappings:` nor any mapping's `alerts:` names it: it
  // then covers every mapping.
  bool workspace_wide = true;
  std::vector<std::string> mappings;  // sorted, unique; when not workspace_wide
  Channel channel = Channel::kWebhook;
  Webhook webhook;  // channel == kWebhook
  Slack slack;      // channel == kSlack
  Email email;      // channel == kEmail

  bool Covers(std::string_view mapping) const;
};
std::string_view AlertChannelName(AlertConfig::Channel channel);

struct Workspace {
  std::string file;      // the YAML file it came from
  std::string base_dir;  // relative paths (sqlite files, state) resolve against this
  // "sqlite:<absolute path>", or a "postgresql://" / "postgres://" URI as
  // written (it may hold a password: never print it).
  std::string state_url;
  // Absolute path of the key file that encrypts the secrets: `secret_key_file:`
  // when set, else secret.key next to the SQLite state file, else
  // .backflow/secret.key under base_dir. BACKFLOW_SECRET_KEY overrides it.
  std::string secret_key_file;
  // `spool_keep_mib:` (default 4096): how much of a run's scratch files
  // (the spool: the model's rows and their sorted keys) is kept in
  // LocalStateDir()/spool/recycled for the next run to write over, which is
  // much cheaper than writing new files (engine/spool.h); 0 removes them
  // after every run.
  uint64_t spool_keep_bytes = uint64_t{4096} << 20;
  std::vector<SourceConfig> sources;
  std::vector<ModelConfig> models;
  std::vector<DestinationConfig> destinations;
  std::vector<MappingConfig> mappings;
  std::vector<AlertConfig> alerts;
  // Name and value of every ${secret:NAME} the load resolved, for
  // RedactSecrets(). Never serialize this.
  std::vector<std::pair<std::string, std::string>> resolved_secrets;

  // `text` with every resolved secret value (of 4 characters or more; shorter
  // ones would garble the text) replaced by its reference "${secret:NAME}".
  // For messages built at run time from settings, e.g. a connector error that
  // quotes a URL holding a token.
  std::string RedactSecrets(std::string text) const;

  const SourceConfig* FindSource(std::string_view name) const;
  const ModelConfig* FindModel(std::string_view name) const;
  const DestinationConfig* FindDestination(std::string_view name) const;
  const MappingConfig* FindMapping(std::string_view name) const;
  const AlertConfig* FindAlert(std::string_view name) const;

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

// Looks up the values of ${secret:NAME} references during one load. Used
// from the loading thread only.
class SecretResolver {
 public:
  virtual ~SecretResolver() = default;
  // The secret's value; nullopt when no secret has that name; an error when
  // the secrets cannot be read (store unreachable, wrong key). Error messages
  // never contain secret values.
  virtual absl::StatusOr<std::optional<std::string>> Resolve(const std::string& name) = 0;
};

// Makes the resolver of a workspace whose `state:` and `secret_key_file:`
// have been parsed (`workspace` has state_url, secret_key_file, file and
// base_dir set; the rest is still loading). Called at most once per load, and
// only when the file references a secret.
using SecretResolverFactory =
    std::function<absl::StatusOr<std::unique_ptr<SecretResolver>>(const Workspace& workspace)>;

// Reads, parses and validates `path` against the connectors in `registry`.
// Never fails as a call: an unreadable file or invalid YAML is a diagnostic.
// With `secrets`, a ${secret:NAME} reference is replaced by the secret's value
// and a missing secret is an error at the reference; without it, references
// are kept as written (for tools that need the file's structure rather than
// its values, such as `backflow secret`).
LoadResult LoadWorkspace(const std::string& path, const Registry& registry,
                         const SecretResolverFactory& secrets = nullptr);
// The same for YAML text already in memory; `file` names it in diagnostics and
// its folder is the base for relative paths.
LoadResult LoadWorkspaceFromString(const std::string& yaml, const std::string& file,
                                   const Registry& registry,
                                   const SecretResolverFactory& secrets = nullptr);

// Whether `name` can name a secret: [A-Za-z_][A-Za-z0-9_]*, at most 128 characters.
bool IsValidSecretName(std::string_view name);

// Replaces ${env:NAME} references in `text`. Unset variables are reported in
// `missing` and replaced by nothing.
std::string ResolveEnvReferences(const std::string& text, std::vector<std::string>& missing);

// The address of a mailbox written "user@example.com" or
// "Display Name <user@example.com>"; nullopt when it is not one (no '@',
// spaces or line breaks in the address, unbalanced brackets, ...).
std::optional<std::string> MailboxAddress(std::string_view mailbox);
// `url` (a postgresql:// URI) with the password of its user info and any
// `password=` query parameter replaced by "********".
std::string MaskUrlPassword(const std::string& url);

// The closest of `candidates` to `word` by edit distance, if close enough to
// be a plausible typo; empty otherwise.
std::string ClosestMatch(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace backflow
