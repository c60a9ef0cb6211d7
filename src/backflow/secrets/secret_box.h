// SecretBox: authenticated encryption of secret values at rest (libsodium
// secretbox: XSalsa20-Poly1305 under one 32-byte workspace key).
//
// The key comes from the BACKFLOW_SECRET_KEY environment variable (standard
// base64 of 32 bytes) when it is set, else from a key file holding the same
// base64 text. A missing key file is created with a new random key, mode 0600,
// atomically (two processes starting at once end up with the same key); an
// existing one that group or others can access is refused.
//
// A sealed value is: version byte (1) || key id (8) || nonce (24) ||
// ciphertext with its Poly1305 tag (16 + plaintext). The key id is a keyed
// BLAKE2b hash of a constant under the key: it reveals nothing about the key
// but lets Open() tell a wrong key (kPermissionDenied) from a damaged value
// (kDataLoss). Every Seal() draws a fresh random nonce.
//
// A SecretBox is immutable and thread-safe; its key is wiped from memory when
// it is destroyed. Error messages never contain key material or plaintext.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace backflow {

class SecretBox {
 public:
  static constexpr size_t kKeyBytes = 32;
  static constexpr const char* kKeyEnvVar = "BACKFLOW_SECRET_KEY";

  // The key from BACKFLOW_SECRET_KEY when it is set and not empty, else from
  // `key_file`. When the file does not exist it is created with a new key if
  // `create_if_missing`, and otherwise kFailedPrecondition is returned.
  // Errors: kInvalidArgument for a key that is not base64 of 32 bytes,
  // kPermissionDenied for a key file group or others can access,
  // kFailedPrecondition / kInternal when the file cannot be read or written.
  static absl::StatusOr<SecretBox> Load(const std::string& key_file, bool create_if_missing = true);
  // The same with the variable's value given (nullopt: not set).
  static absl::StatusOr<SecretBox> LoadWith(const std::optional<std::string>& env_value,
                                            const std::string& key_file, bool create_if_missing);
  // A box over 32 raw key bytes; kInvalidArgument for another length.
  static absl::StatusOr<SecretBox> FromKey(std::string_view key);
  // A new random key, as base64 (what BACKFLOW_SECRET_KEY and key files hold).
  static std::string GenerateKeyBase64();

  SecretBox(const SecretBox& other) = default;
  SecretBox& operator=(const SecretBox& other) = default;
  ~SecretBox();

  // Where the key came from, for messages: "BACKFLOW_SECRET_KEY" or the key
  // file's path.
  const std::string& key_origin() const { return origin_; }
  // Whether Load() created the key file just now.
  bool created_key_file() const { return created_; }

  std::string Seal(std::string_view plaintext) const;
  // The plaintext. kPermissionDenied when `sealed` was written under another
  // key; kDataLoss when it was damaged or tampered with.
  absl::StatusOr<std::string> Open(std::string_view sealed) const;
  // Whether `sealed` carries this box's key id (says nothing about integrity).
  bool SameKey(std::string_view sealed) const;

 private:
  SecretBox() = default;

  std::array<unsigned char, kKeyBytes> key_{};
  std::array<unsigned char, 8> key_id_{};
  std::string origin_;
  bool created_ = false;
};

// The message for a value sealed under another key.
inline constexpr const char* kWrongSecretKeyMessage =
    "the secret key does not match the one the secrets were written with; set "
    "BACKFLOW_SECRET_KEY to the original key";

}  // namespace backflow
