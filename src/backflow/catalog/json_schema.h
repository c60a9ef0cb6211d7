// JSON Schema (draft 2020-12) for connector settings and action fields,
// derived from the definitions: what `backflow catalog --json` prints and
// what a UI renders forms from. Secret settings carry "writeOnly": true.
#pragma once

#include "backflow/catalog/definitions.h"
#include "nlohmann/json.hpp"

namespace backflow {

nlohmann::ordered_json SettingsJsonSchema(const std::vector<SettingSpec>& settings);
nlohmann::ordered_json ActionFieldsJsonSchema(const ActionSpec& action);

// The whole catalog: {"sources": [...], "destinations": [...]}, each entry
// with its metadata and schemas.
nlohmann::ordered_json CatalogJson(const std::vector<SourceDefinition>& sources,
                                   const std::vector<DestinationDefinition>& destinations);

}  // namespace backflow
