// The order of record keys everywhere in Backflow: unsigned bytes (the order
// of std::string, SQLite's BINARY collation and PostgreSQL bytea), with a
// fast path for hot loops: a key's first 8 bytes as one integer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace backflow {

// The first 8 bytes of `key`, big-endian, zero-padded: keys whose prefixes
// differ order as their prefixes do.
inline uint64_t KeyPrefix(std::string_view key) {
  const char* p = key.data();
  const size_t n = key.size();
  if (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return __builtin_bswap64(v);
  }
  if (n >= 4) {  // two overlapping 4-byte loads, no byte loop
    uint32_t head, tail;
    std::memcpy(&head, p, 4);
    std::memcpy(&tail, p + n - 4, 4);
    return (uint64_t{__builtin_bswap32(head)} << 32) |
           (uint64_t{__builtin_bswap32(tail)} << (8 * (8 - n)));
  }
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= uint64_t{static_cast<unsigned char>(p[i])} << (56 - 8 * i);
  return v;
}

// <0, 0, >0 as `a` orders before, equal to, after `b`; `a_prefix` and
// `b_prefix` are their KeyPrefix().
inline int CompareKeys(std::string_view a, uint64_t a_prefix, std::string_view b,
                       uint64_t b_prefix) {
  if (a_prefix != b_prefix) return a_prefix < b_prefix ? -1 : 1;
  // Equal prefixes: the first min(8, size) bytes agree, and when a key is
  // shorter than 8 the padding makes the rest of the other key's 8 bytes
  // zero, so a shorter key is a prefix of the longer one.
  if (a.size() <= 8 || b.size() <= 8) {
    return a.size() == b.size() ? 0 : (a.size() < b.size() ? -1 : 1);
  }
  return a.substr(8).compare(b.substr(8));
}

// A key view and its prefix, for loops that compare the same key many times.
struct PrefixedKey {
  std::string_view key;
  uint64_t prefix = 0;

  void Set(std::string_view k) {
    key = k;
    prefix = KeyPrefix(k);
  }
  friend int Compare(const PrefixedKey& a, const PrefixedKey& b) {
    return CompareKeys(a.key, a.prefix, b.key, b.prefix);
  }
};

}  // namespace backflow
