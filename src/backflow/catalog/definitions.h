// Connector definitions: the one declaration of each source and destination
// type, its settings and (for destinations) its actions and their fields.
//
// Config validation, `backflow catalog` and the generated docs all derive
// from these values; nothing else restates a connector's fields or limits.
// Definitions are immutable after registration and safe to share.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace backflow {

class Clock;
class HttpClient;
class Destination;
class Source;

enum class SettingType { kString, kInteger, kBoolean, kStringMap, kEnum };

struct SettingSpec {
  std::string key;
  std::string label;
  std::string description;
  SettingType type = SettingType::kString;
  bool required = false;
  bool secret = false;   // never logged or echoed; should come from ${env:...}
  bool is_path = false;  // a filesystem path: relative values resolve against the workspace folder
  nlohmann::json default_value;             // null when none
  std::vector<std::string> allowed_values;  // for kEnum
};

enum class FieldType { kString, kInteger, kNumber, kBoolean, kTimestamp, kDate, kObject, kAny };

struct FieldSpec {
  std::string key;
  std::string label;
  std::string description;
  FieldType type = FieldType::kAny;
  bool required = false;
  bool identifier = false;     // identifies the record in the destination
  std::string default_column;  // mapped automatically when the model has it
  // When non-empty, the only values the field accepts (checked per record).
  std::vector<std::string> allowed_values;
};

// Which changes a mapping sends.
enum class RecordSelection { kAdded, kUpdated, kAddedOrUpdated, kDeleted, kAll };

std::string_view RecordSelectionName(RecordSelection s);
absl::StatusOr<RecordSelection> ParseRecordSelection(std::string_view name);
std::string_view FieldTypeName(FieldType t);
std::string_view SettingTypeName(SettingType t);

struct MappedField {
  std::string field;  // destination field key ("email", "traits.plan")
  // What the value is computed from: a model column name, or an expression
  // of the mapping language (mapping/expression.h).
  std::string value;
};

struct ActionSpec {
  std::string id;
  std::string title;
  std::string description;
  std::vector<RecordSelection> selections;
  std::vector<FieldSpec> fields;
  // When true, a mapping may map fields the action does not declare (free-form payloads).
  bool allows_extra_fields = false;
  // Objects under which a mapping may add any field: {"traits"} accepts
  // "traits.plan", "traits.address.city". Each is also a declared kObject
  // field (mapping it whole, e.g. from a JSON column, is allowed too).
  std::vector<std::string> extra_field_parents;
  int max_batch_records = 1000;
  int default_batch_records = 100;
  // When true, acknowledged records become durable only when the run's
  // session finishes (one file per run): the engine advances checkpoints then.
  bool commit_on_finish = false;
  // Optional cross-field checks beyond the declared fields: returns one
  // message per problem, empty when valid.
  std::function<std::vector<std::string>(const nlohmann::json& settings,
                                         const std::vector<MappedField>& fields)>
      validate;

  const FieldSpec* FindField(std::string_view key) const;
  // Whether a mapping may map `key`: declared, under an extra_field_parent,
  // or any key when allows_extra_fields.
  bool AcceptsField(std::string_view key) const;
  bool Supports(RecordSelection s) const;
};

// Shared services a connector may use; owned by the caller and outliving it.
struct ConnectorEnv {
  HttpClient* http = nullptr;
  Clock* clock = nullptr;
};

struct DestinationDefinition {
  std::string type;
  std::string title;
  std::string description;
  std::string maturity = "beta";
  std::vector<SettingSpec> settings;
  std::vector<ActionSpec> actions;
  // Extra reference prose (markdown) for the generated docs: wire format,
  // vendor quirks. Optional.
  std::string notes;
  // Builds a destination from settings already validated against `settings`
  // (defaults filled in, ${env:...} resolved).
  std::function<absl::StatusOr<std::unique_ptr<Destination>>(const nlohmann::json& settings,
                                                             const ConnectorEnv& env)>
      create;

  const ActionSpec* FindAction(std::string_view id) const;
};

struct SourceDefinition {
  std::string type;
  std::string title;
  std::string description;
  std::string maturity = "beta";
  // Keys given directly on the source entry (e.g. `url`, `password`, `path`).
  std::vector<SettingSpec> settings;
  // Its models may set `change_detection: warehouse` (the source implements
  // Source::warehouse_change_detection()).
  bool warehouse_change_detection = false;
  std::function<absl::StatusOr<std::unique_ptr<Source>>(const nlohmann::json& settings,
                                                        const ConnectorEnv& env)>
      create;
};

// A setting with its key, label, description, type and default (null: none)
// filled in; the caller sets the rest (allowed values, flags) on the result.
SettingSpec MakeSetting(std::string key, std::string label, std::string description,
                        SettingType type = SettingType::kString,
                        nlohmann::json default_value = nullptr);

const SettingSpec* FindSetting(const std::vector<SettingSpec>& specs, std::string_view key);

// Fills defaults and checks every setting against its spec. Returns one
// message per problem, each prefixed by the setting key.
std::vector<std::string> CheckSettings(const std::vector<SettingSpec>& specs,
                                       nlohmann::json& settings);

}  // namespace backflow
