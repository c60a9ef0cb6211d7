// ${secret:NAME} in workspace files: the resolver that reads a workspace's
// secrets from its state store, and the one load function every command that
// uses a workspace's values calls.
#pragma once

#include <string>

#include "backflow/catalog/registry.h"
#include "backflow/config/workspace.h"

namespace backflow {

// Resolves ${secret:NAME} from the state store the workspace's `state:` names,
// decrypting with BACKFLOW_SECRET_KEY or the workspace's secret_key_file. The
// store is opened on the first reference, and only if it exists (a SQLite
// state file that does not exist yet holds no secrets, so every reference is
// missing); the key is read when a referenced secret exists, and a missing key
// file is an error then rather than created (a new key could not read the
// secrets anyway).
SecretResolverFactory StateSecretResolverFactory();

// LoadWorkspace() with ${secret:NAME} references resolved from the workspace's
// state store.
LoadResult LoadWorkspaceWithSecrets(const std::string& path, const Registry& registry);

}  // namespace backflow
