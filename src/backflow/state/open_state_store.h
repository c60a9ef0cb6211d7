// Opens the state store a workspace's `state:` names.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "backflow/state/state_store.h"

namespace backflow {

// `url` as in Workspace::state_url: "sqlite:<absolute path>", or a
// "postgresql://" / "postgres://" URI (see postgres_state_store.h). Creates
// and migrates the store when needed. Messages never contain a password the
// url holds.
absl::StatusOr<std::unique_ptr<StateStore>> OpenStateStore(const std::string& url);

}  // namespace backflow
