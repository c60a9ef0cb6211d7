#include "backflow/catalog/json_schema.h"

namespace backflow {
namespace {

constexpr char kDraft[] = "https://json-schema.org/draft/2020-12/schema";

nlohmann::ordered_json FieldTypeSchema(FieldType type) {
  switch (type) {
    case FieldType::kString:
      return {{"type", "string"}};
    case FieldType::kInteger:
      return {{"type", "integer"}};
    case FieldType::kNumber:
      return {{"type", "number"}};
    case FieldType::kBoolean:
      return {{"type", "boolean"}};
    case FieldType::kTimestamp:
      return {{"type", "string"}, {"format", "date-time"}};
    case FieldType::kDate:
      return {{"type", "string"}, {"format", "date"}};
    case FieldType::kObject:
      return {{"type", "object"}};
    case FieldType::kAny:
      return nlohmann::ordered_json::object();
  }
  return nlohmann::ordered_json::object();
}

}  // namespace

nlohmann::ordered_json SettingsJsonSchema(const std::vector<SettingSpec>& settings) {
  nlohmann::ordered_json properties = nlohmann::ordered_json::object();
  nlohmann::ordered_json required = nlohmann::ordered_json::array();
  for (const SettingSpec& s : settings) {
    nlohmann::ordered_json p;
    switch (s.type) {
      case SettingType::kString:
        p["type"] = "string";
        break;
      case SettingType::kInteger:
        p["type"] = "integer";
        break;
      case SettingType::kBoolean:
        p["type"] = "boolean";
        break;
      case SettingType::kStringMap:
        p["type"] = "object";
        p["additionalProperties"] = {{"type", "string"}};
        break;
      case SettingType::kEnum:
        p["type"] = "string";
        p["enum"] = s.allowed_values;
        break;
    }
    if (!s.label.empty()) p["title"] = s.label;
    if (!s.description.empty()) p["description"] = s.description;
    if (!s.default_value.is_null()) p["default"] = s.default_value;
    if (s.secret) p["writeOnly"] = true;
    if (s.is_path) p["x-backflow-path"] = true;
    properties[s.key] = std::move(p);
    if (s.required) required.push_back(s.key);
  }
  return {{"$schema", kDraft},
          {"type", "object"},
          {"properties", std::move(properties)},
          {"required", std::move(required)},
          {"additionalProperties", false}};
}

nlohmann::ordered_json ActionFieldsJsonSchema(const ActionSpec& action) {
  nlohmann::ordered_json properties = nlohmann::ordered_json::object();
  nlohmann::ordered_json required = nlohmann::ordered_json::array();
  for (const FieldSpec& f : action.fields) {
    nlohmann::ordered_json p = FieldTypeSchema(f.type);
    if (!f.label.empty()) p["title"] = f.label;
    if (!f.description.empty()) p["description"] = f.description;
    if (f.identifier) p["x-backflow-identifier"] = true;
    if (!f.default_column.empty()) p["x-backflow-default-column"] = f.default_column;
    if (!f.allowed_values.empty()) p["enum"] = f.allowed_values;
    properties[f.key] = std::move(p);
    if (f.required) required.push_back(f.key);
  }
  nlohmann::ordered_json schema = {{"$schema", kDraft},
                                   {"type", "object"},
                                   {"properties", std::move(properties)},
                                   {"required", std::move(required)},
                                   {"additionalProperties", action.allows_extra_fields}};
  if (!action.extra_field_parents.empty()) {
    // Mapping keys are flat ("traits.plan"): describe the accepted prefixes.
    nlohmann::ordered_json patterns = nlohmann::ordered_json::object();
    for (const std::string& parent : action.extra_field_parents) {
      patterns["^" + parent + "\\..+$"] = nlohmann::ordered_json::object();
    }
    schema["patternProperties"] = std::move(patterns);
  }
  return schema;
}

nlohmann::ordered_json CatalogJson(const std::vector<SourceDefinition>& sources,
                                   const std::vector<DestinationDefinition>& destinations) {
  nlohmann::ordered_json out = {{"sources", nlohmann::ordered_json::array()},
                                {"destinations", nlohmann::ordered_json::array()}};
  for (const SourceDefinition& s : sources) {
    out["sources"].push_back(
        {{"type", s.type},
         {"title", s.title},
         {"description", s.description},
         {"maturity", s.maturity},
         {"change_detection", s.warehouse_change_detection
                                  ? nlohmann::ordered_json::array({"local", "warehouse"})
                                  : nlohmann::ordered_json::array({"local"})},
         {"settings", SettingsJsonSchema(s.settings)}});
  }
  for (const DestinationDefinition& d : destinations) {
    nlohmann::ordered_json actions = nlohmann::ordered_json::array();
    for (const ActionSpec& a : d.actions) {
      std::vector<std::string> records;
      for (RecordSelection r : a.selections) records.emplace_back(RecordSelectionName(r));
      actions.push_back({{"id", a.id},
                         {"title", a.title},
                         {"description", a.description},
                         {"records", records},
                         {"default_batch_records", a.default_batch_records},
                         {"max_batch_records", a.max_batch_records},
                         {"fields", ActionFieldsJsonSchema(a)}});
    }
    out["destinations"].push_back({{"type", d.type},
                                   {"title", d.title},
                                   {"description", d.description},
                                   {"maturity", d.maturity},
                                   {"settings", SettingsJsonSchema(d.settings)},
                                   {"actions", std::move(actions)}});
  }
  return out;
}

}  // namespace backflow
