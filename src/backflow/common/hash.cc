#include "backflow/common/hash.h"

#define XXH_INLINE_ALL
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "fmt/format.h"

namespace backflow {

std::array<unsigned char, 16> Fingerprint::ToBytes() const {
  std::array<unsigned char, 16> out{};
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<unsigned char>(high >> (56 - 8 * i));
    out[8 + i] = static_cast<unsigned char>(low >> (56 - 8 * i));
  }
  return out;
}

Fingerprint Fingerprint::FromBytes(const void* data, size_t size) {
  Fingerprint fp;
  if (size != 16) return fp;
  const auto* b = static_cast<const unsigned char*>(data);
  for (int i = 0; i < 8; ++i) {
    fp.high = (fp.high << 8) | b[i];
    fp.low = (fp.low << 8) | b[8 + i];
  }
  return fp;
}

std::string Fingerprint::ToHex() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '\0');
  for (int i = 0; i < 16; ++i) {
    const uint64_t half = i < 8 ? high : low;
    const unsigned byte = static_cast<unsigned>(half >> (56 - 8 * (i % 8))) & 0xff;
    out[2 * i] = kHex[byte >> 4];
    out[2 * i + 1] = kHex[byte & 0xf];
  }
  return out;
}

Fingerprint Fingerprint128(std::string_view data) {
  XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
  return Fingerprint{h.high64, h.low64};
}

Hasher128::Hasher128() : state_(XXH3_createState()) {
  XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_));
}

Hasher128::~Hasher128() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

Hasher128& Hasher128::Add(std::string_view piece) {
  uint64_t len = piece.size();
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), &len, sizeof(len));
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), piece.data(), piece.size());
  return *this;
}

Fingerprint Hasher128::FinishWith(std::string_view piece) const {
  XXH3_state_t copy;
  XXH3_copyState(&copy, static_cast<const XXH3_state_t*>(state_));
  uint64_t len = piece.size();
  XXH3_128bits_update(&copy, &len, sizeof(len));
  XXH3_128bits_update(&copy, piece.data(), piece.size());
  XXH128_hash_t h = XXH3_128bits_digest(&copy);
  return Fingerprint{h.high64, h.low64};
}

Fingerprint Hasher128::Finish() {
  XXH128_hash_t h = XXH3_128bits_digest(static_cast<XXH3_state_t*>(state_));
  return Fingerprint{h.high64, h.low64};
}

}  // namespace backflow
