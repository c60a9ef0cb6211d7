#include "backflow/state/open_state_store.h"

#include "backflow/state/postgres_state_store.h"
#include "fmt/format.h"

namespace backflow {

absl::StatusOr<std::unique_ptr<StateStore>> OpenStateStore(const std::string& url) {
  if (url.rfind("sqlite:", 0) == 0) return OpenSqliteStateStore(url.substr(7));
  if (url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0) {
    return OpenPostgresStateStore(url);
  }
  // The url may hold a password: name only its scheme.
  std::string scheme = url.substr(0, url.find(':'));
  return absl::InvalidArgumentError(
      fmt::format("unknown state store kind \"{}\"; write state: sqlite:PATH or state: "
                  "postgresql://USER:PASSWORD@HOST:PORT/DATABASE in the workspace",
                  scheme));
}

}  // namespace backflow
