// SecretStore: named secrets, sealed by a SecretBox, kept in the state store.
//
// Only ciphertext reaches the StateStore; List() returns names and update
// times, never values. Names are [A-Za-z_][A-Za-z0-9_]* (at most 128
// characters), the form ${secret:NAME} references use. Values are 1 byte to
// 64 KiB.
//
// Every secret of a store is sealed under the same key: Set() refuses to add
// a secret under a key other than the one the existing secrets were written
// with (kPermissionDenied), so a mistyped BACKFLOW_SECRET_KEY cannot leave a
// mix of keys behind.
//
// Not thread-safe (like the StateStore it uses). Error messages never contain
// secret values.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/secrets/secret_box.h"
#include "backflow/state/state_store.h"

namespace backflow {

// kInvalidArgument, with the rule, when `name` cannot name a secret.
absl::Status ValidateSecretName(const std::string& name);

// How an API shows a secret: "••••" followed by the last 4 characters when
// the value has at least 12 characters, else "••••" alone.
std::string MaskSecret(std::string_view value);

class SecretStore {
 public:
  static constexpr size_t kMaxValueBytes = 64 * 1024;

  // `state` and `box` must outlive the store. `box` may be null for a store
  // that only lists and deletes (no key is needed for that); Set() and Get()
  // then fail with kFailedPrecondition.
  SecretStore(StateStore& state, const SecretBox* box, const Clock& clock = SystemClock());

  // Creates or replaces the secret.
  absl::Status Set(const std::string& name, std::string_view value);
  // The value; kNotFound when no secret has this name; kPermissionDenied when
  // it was sealed under another key; kDataLoss when the stored value is damaged.
  absl::StatusOr<std::string> Get(const std::string& name);
  // Names and update times, by name.
  absl::StatusOr<std::vector<SecretInfo>> List();
  // kNotFound when no secret has this name.
  absl::Status Delete(const std::string& name);

 private:
  absl::Status RequireBox() const;

  StateStore& state_;
  const SecretBox* box_;
  const Clock& clock_;
};

}  // namespace backflow
