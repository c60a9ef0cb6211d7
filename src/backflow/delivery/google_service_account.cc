#include "backflow/delivery/google_service_account.h"

#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {

absl::StatusOr<GoogleServiceAccountKey> ParseGoogleServiceAccountKey(const std::string& text) {
  nlohmann::json key = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!key.is_object()) {
    return absl::InvalidArgumentError(
        "service_account_key: not JSON; set it to the content (not the path) of the service "
        "account's JSON key file (IAM & Admin > Service accounts > Keys > Add key > JSON), e.g. "
        "${env:GOOGLE_SA_KEY} after export GOOGLE_SA_KEY=\"$(cat key.json)\"");
  }
  auto text_of = [&](const char* name) -> std::string {
    auto it = key.find(name);
    return it != key.end() && it->is_string() ? it->get<std::string>() : "";
  };
  std::string type = text_of("type");
  if (!type.empty() && type != "service_account") {
    return absl::InvalidArgumentError(fmt::format(
        "service_account_key: the key's type is \"{}\", not \"service_account\": create a key "
        "for a service account (user OAuth client files do not work)",
        type));
  }
  GoogleServiceAccountKey out;
  out.client_email = text_of("client_email");
  out.private_key = text_of("private_key");
  out.private_key_id = text_of("private_key_id");
  out.project_id = text_of("project_id");
  if (out.client_email.empty() || out.private_key.empty()) {
    return absl::InvalidArgumentError(
        "service_account_key: the key has no client_email or private_key; use the service "
        "account's JSON key file as downloaded");
  }
  return out;
}

}  // namespace backflow
