#include "backflow/common/url.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

TEST(UrlTest, PercentDecodingKeepsMalformedEscapesAndPlusOnlyInQueries) {
  EXPECT_EQ(PercentDecode("a%20b%2Fc", false), "a b/c");
  EXPECT_EQ(PercentDecode("a+b", false), "a+b");
  EXPECT_EQ(PercentDecode("a+b", true), "a b");
  EXPECT_EQ(PercentDecode("%zz%4%", true), "%zz%4%");
  EXPECT_EQ(PercentDecode("%e2%9C%93", false), "\xe2\x9c\x93");
}

TEST(UrlTest, QueryStringsKeepOrderSkipEmptyPairsAndLastValueWins) {
  auto pairs = ParseQueryPairs("a=1&&b=x+y%21&flag&a=2");
  ASSERT_EQ(pairs.size(), 4u);
  EXPECT_EQ(pairs[1], (std::pair<std::string, std::string>{"b", "x y!"}));
  EXPECT_EQ(pairs[2], (std::pair<std::string, std::string>{"flag", ""}));
  auto map = ParseQuery("a=1&&b=x+y%21&flag&a=2");
  EXPECT_EQ(map["a"], "2");
  EXPECT_EQ(map.size(), 3u);
  EXPECT_TRUE(ParseQuery("").empty());
}

}  // namespace
}  // namespace backflow
