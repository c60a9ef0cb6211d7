// Crypto helpers: HMAC-SHA256, base64, hex and constant-time comparison.
//
// Used by connectors that sign requests (webhook signing, JWT) and by the
// fake receivers that verify those signatures in tests. Thin wrappers over
// OpenSSL; every function is pure and thread-safe. Binary values travel as
// std::string holding raw bytes. Only Base64Decode can fail: it returns
// kInvalidArgument for text that is not valid standard base64.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace backflow {

// HMAC-SHA256 of `data` under `key`: 32 raw bytes.
std::string HmacSha256(std::string_view key, std::string_view data);

// SHA-256 of `data`: 32 raw bytes.
std::string Sha256(std::string_view data);

// Standard base64 (RFC 4648 section 4) with '=' padding.
std::string Base64Encode(std::string_view bytes);

// Decodes standard base64. Padding is optional; whitespace and characters
// outside the alphabet are rejected with kInvalidArgument.
absl::StatusOr<std::string> Base64Decode(std::string_view text);

// `n` bytes from the operating system's cryptographically secure generator.
std::string RandomBytes(size_t n);

// Lowercase hex of raw bytes.
std::string HexEncode(std::string_view bytes);
// The bytes of hex text (either case); nullopt for an odd length or a
// character that is not a hex digit.
std::optional<std::string> HexDecode(std::string_view hex);

// Compares in time that depends only on the lengths, not on where the inputs
// first differ (for comparing signatures and tokens).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace backflow
