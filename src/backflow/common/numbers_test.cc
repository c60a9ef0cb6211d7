#include "backflow/common/numbers.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

TEST(ParseInt64Test, AcceptsExactlyOneWholeInteger) {
  EXPECT_EQ(ParseInt64("0"), 0);
  EXPECT_EQ(ParseInt64("-42"), -42);
  EXPECT_EQ(ParseInt64("9223372036854775807"), INT64_MAX);
  EXPECT_EQ(ParseInt64("-9223372036854775808"), INT64_MIN);
  EXPECT_EQ(ParseInt64("9223372036854775808"), std::nullopt) << "overflow";
  for (const char* bad : {"", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "-", "12a"}) {
    EXPECT_EQ(ParseInt64(bad), std::nullopt) << bad;
  }
}

}  // namespace
}  // namespace backflow
