#include "backflow/common/hash.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

TEST(HashTest, FingerprintIsStableAndRoundTripsThroughBytes) {
  Fingerprint a = Fingerprint128("hello");
  EXPECT_EQ(a, Fingerprint128("hello"));
  EXPECT_NE(a, Fingerprint128("hellp"));
  auto bytes = a.ToBytes();
  EXPECT_EQ(Fingerprint::FromBytes(bytes.data(), bytes.size()), a);
  EXPECT_EQ(a.ToHex().size(), 32u);
  EXPECT_EQ((Fingerprint{0x0123456789abcdefULL, 0xfedcba9876543210ULL}.ToHex()),
            "0123456789abcdeffedcba9876543210");
  EXPECT_EQ((Fingerprint{0, 0xa}.ToHex()), "0000000000000000000000000000000a");
}

TEST(HashTest, HasherLengthPrefixesPieces) {
  Hasher128 h1, h2, h3;
  h1.Add("ab").Add("c");
  h2.Add("a").Add("bc");
  h3.Add("ab").Add("c");
  Fingerprint f1 = h1.Finish();
  EXPECT_NE(f1, h2.Finish());
  EXPECT_EQ(f1, h3.Finish());
}

}  // namespace
}  // namespace backflow
