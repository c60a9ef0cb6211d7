#include "backflow/storage/key_order.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace backflow {
namespace {

int Sign(int v) { return (v > 0) - (v < 0); }

TEST(KeyOrderTest, CompareKeysAgreesWithByteOrder) {
  // Short alphabets and lengths around 8 make shared prefixes, NUL padding
  // look-alikes ("ab" vs "ab\0") and equal keys common.
  std::mt19937 rng(17);
  const std::string alphabet(
      "\0\x01\x7f\x80\xff"
      "a",
      6);
  std::vector<std::string> keys = {"",
                                   std::string(1, '\0'),
                                   std::string(8, '\0'),
                                   std::string(9, '\0'),
                                   "12345678",
                                   "123456789",
                                   "1234567"};
  for (int i = 0; i < 400; ++i) {
    std::string k(rng() % 13, 'a');
    for (char& c : k) c = alphabet[rng() % alphabet.size()];
    keys.push_back(k);
  }
  for (const std::string& a : keys) {
    for (const std::string& b : keys) {
      const int expected = Sign(a.compare(b));
      ASSERT_EQ(Sign(CompareKeys(a, KeyPrefix(a), b, KeyPrefix(b))), expected)
          << testing::PrintToString(a) << " vs " << testing::PrintToString(b);
      PrefixedKey pa, pb;
      pa.Set(a);
      pb.Set(b);
      ASSERT_EQ(Sign(Compare(pa, pb)), expected);
    }
  }
}

TEST(KeyOrderTest, KeyPrefixIsTheFirstEightBytesBigEndianZeroPadded) {
  const std::string bytes("\x01\x02\x03\x04\x05\x06\x07\x08\x09\xff", 10);
  for (size_t n = 0; n <= bytes.size(); ++n) {
    uint64_t expected = 0;
    for (size_t i = 0; i < 8; ++i) {
      expected = (expected << 8) | (i < n ? static_cast<unsigned char>(bytes[i]) : 0);
    }
    EXPECT_EQ(KeyPrefix(std::string_view(bytes.data(), n)), expected) << n << " bytes";
  }
}

TEST(KeyOrderTest, DecimalIdsOrderAsText) {
  PrefixedKey a, b;
  a.Set("10");
  b.Set("9");
  EXPECT_LT(Compare(a, b), 0);  // bytes, not numbers
  a.Set("100000000");
  b.Set("10000000");
  EXPECT_GT(Compare(a, b), 0);
}

}  // namespace
}  // namespace backflow
