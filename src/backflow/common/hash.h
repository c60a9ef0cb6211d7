// 128-bit content fingerprints (XXH3-128) and their hex form.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace backflow {

struct Fingerprint {
  uint64_t high = 0;
  uint64_t low = 0;

  friend bool operator==(const Fingerprint&, const Fingerprint&) = default;
  // 16 bytes, big-endian (high then low): the form stored in the state store.
  std::array<unsigned char, 16> ToBytes() const;
  static Fingerprint FromBytes(const void* data, size_t size);
  // 32 lowercase hex characters.
  std::string ToHex() const;
};

Fingerprint Fingerprint128(std::string_view data);

// Incremental XXH3-128 over several pieces; each piece is length-prefixed so
// ("ab","c") and ("a","bc") hash differently.
class Hasher128 {
 public:
  Hasher128();
  ~Hasher128();
  Hasher128(const Hasher128&) = delete;
  Hasher128& operator=(const Hasher128&) = delete;
  Hasher128& Add(std::string_view piece);
  Fingerprint Finish();
  // The fingerprint of what was added so far followed by `piece`, leaving
  // this hasher as it was (no allocation): for many hashes sharing a prefix.
  Fingerprint FinishWith(std::string_view piece) const;

 private:
  void* state_;
};

}  // namespace backflow
