#include "backflow/state/open_state_store.h"

#include "fmt/format.h"

namespace backflow {

absl::StatusOr<std::unique_ptr<StateStore>> OpenStateStore(const std::string& url) {
  if (url.rfind("sqlite:", 0) == 0) return OpenSqliteStateStore(url.substr(7));
  return absl::InvalidArgumentError(
      fmt::format("unknown state store \"{}\"; write state: sqlite:PATH in the workspace", url));
}

}  // namespace backflow
