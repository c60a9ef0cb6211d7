#include "backflow/secrets/workspace_secrets.h"

#include <filesystem>
#include <memory>
#include <optional>

#include "backflow/common/fmt_absl.h"
#include "backflow/secrets/secret_box.h"
#include "backflow/secrets/secret_store.h"
#include "backflow/state/open_state_store.h"
#include "fmt/format.h"

namespace backflow {
namespace {

class StateSecretResolver : public SecretResolver {
 public:
  StateSecretResolver(std::string state_url, std::string key_file)
      : state_url_(std::move(state_url)), key_file_(std::move(key_file)) {}

  absl::StatusOr<std::optional<std::string>> Resolve(const std::string& name) override {
    if (!opened_) {
      opened_ = true;
      if (state_url_.rfind("sqlite:", 0) == 0) {
        std::error_code ec;
        if (!std::filesystem::exists(state_url_.substr(7), ec)) return std::nullopt;
      }
      absl::StatusOr<std::unique_ptr<StateStore>> store = OpenStateStore(state_url_);
      if (!store.ok()) {
        open_error_ =
            absl::Status(store.status().code(),
                         fmt::format("cannot open the state store: {}", store.status().message()));
      } else {
        store_ = *std::move(store);
      }
    }
    if (!open_error_.ok()) return open_error_;
    if (store_ == nullptr) return std::nullopt;
    absl::StatusOr<std::optional<std::string>> sealed = store_->GetSecret(name);
    if (!sealed.ok() || !sealed->has_value()) return sealed;
    if (!box_) {
      absl::StatusOr<SecretBox> box = SecretBox::Load(key_file_, /*create_if_missing=*/false);
      if (!box.ok()) return box.status();
      box_.emplace(*std::move(box));
    }
    absl::StatusOr<std::string> value = SecretStore(*store_, &*box_).Get(name);
    if (!value.ok()) return value.status();
    return std::optional<std::string>(*std::move(value));
  }

 private:
  std::string state_url_;
  std::string key_file_;
  bool opened_ = false;
  absl::Status open_error_;
  std::unique_ptr<StateStore> store_;
  std::optional<SecretBox> box_;
};

}  // namespace

SecretResolverFactory StateSecretResolverFactory() {
  return [](const Workspace& ws) -> absl::StatusOr<std::unique_ptr<SecretResolver>> {
    return std::make_unique<StateSecretResolver>(ws.state_url, ws.secret_key_file);
  };
}

LoadResult LoadWorkspaceWithSecrets(const std::string& path, const Registry& registry) {
  return LoadWorkspace(path, registry, StateSecretResolverFactory());
}

}  // namespace backflow
