#include "backflow/catalog/definitions.h"

#include <utility>

#include "absl/status/status.h"
#include "fmt/format.h"

namespace backflow {

std::string_view RecordSelectionName(RecordSelection s) {
  switch (s) {
    case RecordSelection::kAdded:
      return "added";
    case RecordSelection::kUpdated:
      return "updated";
    case RecordSelection::kAddedOrUpdated:
      return "added_or_updated";
    case RecordSelection::kDeleted:
      return "deleted";
    case RecordSelection::kAll:
      return "all";
  }
  return "all";
}

absl::StatusOr<RecordSelection> ParseRecordSelection(std::string_view name) {
  for (auto s :
       {RecordSelection::kAdded, RecordSelection::kUpdated, RecordSelection::kAddedOrUpdated,
        RecordSelection::kDeleted, RecordSelection::kAll}) {
    if (RecordSelectionName(s) == name) return s;
  }
  return absl::InvalidArgumentError(fmt::format(
      "unknown record selection \"{}\"; use added, updated, added_or_updated, deleted or all",
      name));
}

std::string_view FieldTypeName(FieldType t) {
  switch (t) {
    case FieldType::kString:
      return "string";
    case FieldType::kInteger:
      return "integer";
    case FieldType::kNumber:
      return "number";
    case FieldType::kBoolean:
      return "boolean";
    case FieldType::kTimestamp:
      return "timestamp";
    case FieldType::kDate:
      return "date";
    case FieldType::kObject:
      return "object";
    case FieldType::kAny:
      return "any";
  }
  return "any";
}

std::string_view SettingTypeName(SettingType t) {
  switch (t) {
    case SettingType::kString:
      return "string";
    case SettingType::kInteger:
      return "integer";
    case SettingType::kBoolean:
      return "boolean";
    case SettingType::kStringMap:
      return "map of strings";
    case SettingType::kEnum:
      return "one of the allowed values";
  }
  return "string";
}

bool ActionSpec::AcceptsField(std::string_view key) const {
  if (allows_extra_fields || FindField(key) != nullptr) return true;
  for (const std::string& parent : extra_field_parents) {
    if (key.size() > parent.size() + 1 && key.starts_with(parent) && key[parent.size()] == '.') {
      return true;
    }
  }
  return false;
}

const FieldSpec* ActionSpec::FindField(std::string_view key) const {
  for (const FieldSpec& f : fields) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

bool ActionSpec::Supports(RecordSelection s) const {
  for (RecordSelection x : selections) {
    if (x == s) return true;
  }
  return false;
}

const ActionSpec* DestinationDefinition::FindAction(std::string_view id) const {
  for (const ActionSpec& a : actions) {
    if (a.id == id) return &a;
  }
  return nullptr;
}

SettingSpec MakeSetting(std::string key, std::string label, std::string description,
                        SettingType type, nlohmann::json default_value) {
  SettingSpec spec;
  spec.key = std::move(key);
  spec.label = std::move(label);
  spec.description = std::move(description);
  spec.type = type;
  spec.default_value = std::move(default_value);
  return spec;
}

const SettingSpec* FindSetting(const std::vector<SettingSpec>& specs, std::string_view key) {
  for (const SettingSpec& s : specs) {
    if (s.key == key) return &s;
  }
  return nullptr;
}

std::vector<std::string> CheckSettings(const std::vector<SettingSpec>& specs,
                                       nlohmann::json& settings) {
  std::vector<std::string> problems;
  if (settings.is_null()) settings = nlohmann::json::object();
  for (const SettingSpec& spec : specs) {
    auto it = settings.find(spec.key);
    if (it == settings.end() || it->is_null()) {
      if (!spec.default_value.is_null()) {
        settings[spec.key] = spec.default_value;
      } else if (spec.required) {
        problems.push_back(
            fmt::format("{}: required setting is missing ({})", spec.key, spec.description));
      }
      continue;
    }
    nlohmann::json& v = *it;
    bool ok = true;
    switch (spec.type) {
      case SettingType::kString:
        ok = v.is_string();
        break;
      case SettingType::kInteger:
        if (v.is_string()) {  // values from ${env:...} arrive as text
          try {
            size_t used = 0;
            long long n = std::stoll(v.get<std::string>(), &used);
            ok = used == v.get<std::string>().size();
            if (ok) v = n;
          } catch (...) {
            ok = false;
          }
        } else {
          ok = v.is_number_integer();
        }
        break;
      case SettingType::kBoolean:
        if (v.is_string() && (v == "true" || v == "false")) v = (v == "true");
        ok = v.is_boolean();
        break;
      case SettingType::kStringMap:
        ok = v.is_object();
        if (ok) {
          for (auto& [k, item] : v.items()) {
            if (!item.is_string()) {
              problems.push_back(fmt::format("{}.{}: must be a string", spec.key, k));
            }
          }
        }
        break;
      case SettingType::kEnum: {
        ok = v.is_string();
        if (ok) {
          bool found = false;
          for (const std::string& a : spec.allowed_values) found |= (v == a);
          if (!found) {
            std::string allowed;
            for (const std::string& a : spec.allowed_values) {
              allowed += (allowed.empty() ? "" : ", ") + a;
            }
            problems.push_back(fmt::format("{}: \"{}\" is not allowed; use one of: {}", spec.key,
                                           v.get<std::string>(), allowed));
            continue;
          }
        }
        break;
      }
    }
    if (!ok) {
      problems.push_back(fmt::format("{}: must be a {} ({})", spec.key, SettingTypeName(spec.type),
                                     spec.description));
    }
  }
  return problems;
}

}  // namespace backflow
