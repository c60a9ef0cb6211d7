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

TEST(UrlTest, PercentEncodingKeepsOnlyTheRfc3986UnreservedSet) {
  EXPECT_EQ(PercentEncode(""), "");
  EXPECT_EQ(PercentEncode("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(PercentEncode("a b"), "a%20b");
  EXPECT_EQ(PercentEncode("a+b/c?d=e&f#g%h:i@j!k'l(m)n*o,p;q$r"),
            "a%2Bb%2Fc%3Fd%3De%26f%23g%25h%3Ai%40j%21k%27l%28m%29n%2Ao%2Cp%3Bq%24r");
  // UTF-8 is encoded byte by byte, with uppercase hex digits.
  EXPECT_EQ(PercentEncode("\xe2\x9c\x93 \xc3\xa9"), "%E2%9C%93%20%C3%A9");
  EXPECT_EQ(PercentEncode(std::string_view("\0\x7f\xff", 3)), "%00%7F%FF");
  // Every byte round-trips through PercentDecode.
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  EXPECT_EQ(PercentDecode(PercentEncode(all), false), all);
}

TEST(UrlTest, PercentEncodingKeepsTheCallersExtraCharacters) {
  EXPECT_EQ(PercentEncode("a@b.c/d", "@"), "a@b.c%2Fd");
  EXPECT_EQ(PercentEncode("a/b c", "/"), "a/b%20c");
}

TEST(UrlTest, FormEncodingTurnsSpaceIntoPlus) {
  EXPECT_EQ(FormUrlEncode(""), "");
  EXPECT_EQ(FormUrlEncode("a b+c/d=e&f~g.h_i-j"), "a+b%2Bc%2Fd%3De%26f~g.h_i-j");
  EXPECT_EQ(FormUrlEncode("\xc3\xa9 x"), "%C3%A9+x");
  EXPECT_EQ(PercentDecode(FormUrlEncode("a b+c%"), true), "a b+c%");
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
