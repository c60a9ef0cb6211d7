#include "backflow/cli/output.h"

#include <gtest/gtest.h>

namespace backflow::cli {
namespace {

TEST(OutputTest, FormatsNumbersAndDurations) {
  EXPECT_EQ(Thousands(0), "0");
  EXPECT_EQ(Thousands(999), "999");
  EXPECT_EQ(Thousands(1234567), "1,234,567");
  EXPECT_EQ(Thousands(-1000), "-1,000");
  EXPECT_EQ(Duration(0.25), "250ms");
  EXPECT_EQ(Duration(12.34), "12.3s");
  EXPECT_EQ(Duration(245), "4m05s");
  EXPECT_EQ(Duration(3720), "1h02m");
}

TEST(OutputTest, AlignsTablesAndCutsLongCells) {
  std::string t = Table({{"id", "email"}, {"1", "a@b.c"}, {"22", "élodie@example.com"}}, 10);
  EXPECT_EQ(t,
            "id  email\n"
            "--  ----------\n"
            "1   a@b.c\n"
            "22  élodie@ex…\n");
}

}  // namespace
}  // namespace backflow::cli
