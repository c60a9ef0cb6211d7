#include "backflow/common/sql_identifier.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

TEST(QuoteSqlIdentifierTest, DoubledAndBackslashStyles) {
  EXPECT_EQ(QuoteSqlIdentifier("id"), "\"id\"");
  EXPECT_EQ(QuoteSqlIdentifier("a\"b"), "\"a\"\"b\"");
  EXPECT_EQ(QuoteSqlIdentifier("a\\b"), "\"a\\b\"");  // no escaping of backslashes
  EXPECT_EQ(QuoteSqlIdentifier("a`b\\c", '`', QuoteEscape::kBackslash), "`a\\`b\\\\c`");
  EXPECT_EQ(QuoteSqlIdentifier("", '`', QuoteEscape::kBackslash), "``");
}

}  // namespace
}  // namespace backflow
