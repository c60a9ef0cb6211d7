#include "backflow/secrets/secret_store.h"

#include "backflow/common/status_macros.h"
#include "backflow/config/workspace.h"
#include "fmt/format.h"

namespace backflow {

absl::Status ValidateSecretName(const std::string& name) {
  if (IsValidSecretName(name)) return absl::OkStatus();
  // The name is what the user typed, not a value: safe to quote.
  return absl::InvalidArgumentError(fmt::format(
      "invalid secret name \"{}\": use letters, digits and '_', not starting with a digit, at "
      "most 128 characters (e.g. HUBSPOT_TOKEN)",
      name));
}

std::string MaskSecret(std::string_view value) {
  constexpr std::string_view kMask = "••••";
  // Counts and cuts UTF-8 characters, not bytes, so a character is never split.
  auto is_start = [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; };
  size_t characters = 0;
  for (char c : value) characters += is_start(c);
  if (characters < 12) return std::string(kMask);
  size_t at = value.size();
  for (int seen = 0; seen < 4 && at > 0;) {
    --at;
    if (is_start(value[at])) ++seen;
  }
  return std::string(kMask) + std::string(value.substr(at));
}

SecretStore::SecretStore(StateStore& state, const SecretBox* box, const Clock& clock)
    : state_(state), box_(box), clock_(clock) {}

absl::Status SecretStore::RequireBox() const {
  if (box_ != nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError("reading or writing a secret value needs the secret key");
}

absl::Status SecretStore::Set(const std::string& name, std::string_view value) {
  BACKFLOW_RETURN_IF_ERROR(ValidateSecretName(name));
  BACKFLOW_RETURN_IF_ERROR(RequireBox());
  if (value.empty()) {
    return absl::InvalidArgumentError(
        fmt::format("the value of secret \"{}\" is empty; give the value on stdin", name));
  }
  if (value.size() > kMaxValueBytes) {
    return absl::InvalidArgumentError(
        fmt::format("the value of secret \"{}\" is {} bytes; at most {} are allowed", name,
                    value.size(), kMaxValueBytes));
  }
  // Every secret shares one key: check it against another secret, if any.
  BACKFLOW_ASSIGN_OR_RETURN(std::vector<SecretInfo> existing, state_.ListSecrets());
  for (const SecretInfo& other : existing) {
    if (other.name == name) continue;
    BACKFLOW_ASSIGN_OR_RETURN(std::optional<std::string> sealed, state_.GetSecret(other.name));
    if (sealed && !box_->SameKey(*sealed)) {
      return absl::PermissionDeniedError(fmt::format(
          "{} (the key from {} did not write secret \"{}\"); or, if that key is lost, delete the "
          "old secrets (`backflow secret list`, `backflow secret delete NAME`) and set them again",
          kWrongSecretKeyMessage, box_->key_origin(), other.name));
    }
    break;
  }
  return state_.PutSecret(name, box_->Seal(value), absl::FromChrono(clock_.Now()));
}

absl::StatusOr<std::string> SecretStore::Get(const std::string& name) {
  BACKFLOW_RETURN_IF_ERROR(ValidateSecretName(name));
  BACKFLOW_RETURN_IF_ERROR(RequireBox());
  BACKFLOW_ASSIGN_OR_RETURN(std::optional<std::string> sealed, state_.GetSecret(name));
  if (!sealed) {
    return absl::NotFoundError(
        fmt::format("no secret named \"{}\"; set it with `backflow secret set {}`", name, name));
  }
  absl::StatusOr<std::string> value = box_->Open(*sealed);
  if (value.ok()) return value;
  if (value.status().code() == absl::StatusCode::kPermissionDenied) {
    return absl::PermissionDeniedError(fmt::format("{} (the key in use comes from {})",
                                                   kWrongSecretKeyMessage, box_->key_origin()));
  }
  return absl::DataLossError(fmt::format("secret \"{}\": {} with `backflow secret set {}`", name,
                                         value.status().message(), name));
}

absl::StatusOr<std::vector<SecretInfo>> SecretStore::List() { return state_.ListSecrets(); }

absl::Status SecretStore::Delete(const std::string& name) {
  BACKFLOW_RETURN_IF_ERROR(ValidateSecretName(name));
  absl::Status status = state_.DeleteSecret(name);
  if (absl::IsNotFound(status)) {
    return absl::NotFoundError(
        fmt::format("no secret named \"{}\"; list them with `backflow secret list`", name));
  }
  return status;
}

}  // namespace backflow
