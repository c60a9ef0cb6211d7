// Registry: the set of connector definitions this binary ships.
//
// Built once at start-up by RegisterBuiltins() (one line per connector, see
// builtin.cc) and read-only afterwards, so it is safe to share between threads.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "backflow/catalog/definitions.h"

namespace backflow {

class Registry {
 public:
  // Rejects duplicate types or action ids, actions with no selections or
  // fields whose `identifier` is set without `required`.
  absl::Status AddSource(SourceDefinition def);
  absl::Status AddDestination(DestinationDefinition def);

  const SourceDefinition* FindSource(std::string_view type) const;
  const DestinationDefinition* FindDestination(std::string_view type) const;
  const std::vector<SourceDefinition>& sources() const { return sources_; }
  const std::vector<DestinationDefinition>& destinations() const { return destinations_; }

 private:
  std::vector<SourceDefinition> sources_;
  std::vector<DestinationDefinition> destinations_;
};

// The registry of every built-in connector.
const Registry& BuiltinRegistry();

}  // namespace backflow
