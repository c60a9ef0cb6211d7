#include "backflow/catalog/registry.h"

#include "fmt/format.h"

namespace backflow {

absl::Status Registry::AddSource(SourceDefinition def) {
  if (FindSource(def.type) != nullptr) {
    return absl::AlreadyExistsError(fmt::format("source type \"{}\" registered twice", def.type));
  }
  if (!def.create) {
    return absl::InvalidArgumentError(fmt::format("source type \"{}\" has no factory", def.type));
  }
  sources_.push_back(std::move(def));
  return absl::OkStatus();
}

absl::Status Registry::AddDestination(DestinationDefinition def) {
  if (FindDestination(def.type) != nullptr) {
    return absl::AlreadyExistsError(
        fmt::format("destination type \"{}\" registered twice", def.type));
  }
  if (!def.create) {
    return absl::InvalidArgumentError(
        fmt::format("destination type \"{}\" has no factory", def.type));
  }
  for (size_t i = 0; i < def.actions.size(); ++i) {
    const ActionSpec& a = def.actions[i];
    for (size_t j = 0; j < i; ++j) {
      if (def.actions[j].id == a.id) {
        return absl::AlreadyExistsError(
            fmt::format("destination \"{}\": action \"{}\" declared twice", def.type, a.id));
      }
    }
    if (a.selections.empty()) {
      return absl::InvalidArgumentError(fmt::format(
          "destination \"{}\": action \"{}\" supports no record selection", def.type, a.id));
    }
    if (a.default_batch_records < 1 || a.default_batch_records > a.max_batch_records) {
      return absl::InvalidArgumentError(
          fmt::format("destination \"{}\": action \"{}\" default batch size is outside 1..max",
                      def.type, a.id));
    }
    for (const FieldSpec& f : a.fields) {
      if (f.identifier && !f.required) {
        return absl::InvalidArgumentError(
            fmt::format("destination \"{}\": action \"{}\": identifier field \"{}\" must be "
                        "required",
                        def.type, a.id, f.key));
      }
    }
  }
  destinations_.push_back(std::move(def));
  return absl::OkStatus();
}

const SourceDefinition* Registry::FindSource(std::string_view type) const {
  for (const SourceDefinition& s : sources_) {
    if (s.type == type) return &s;
  }
  return nullptr;
}

const DestinationDefinition* Registry::FindDestination(std::string_view type) const {
  for (const DestinationDefinition& d : destinations_) {
    if (d.type == type) return &d;
  }
  return nullptr;
}

}  // namespace backflow
