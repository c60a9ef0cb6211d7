#include "backflow/pg/connection.h"

#include "backflow/pg/testing/test_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow::pg {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ConnectionTest, ClassifiesSqlStates) {
  EXPECT_EQ(CodeForSqlState("28P01"), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CodeForSqlState("3D000"), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CodeForSqlState("08006"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("57P01"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("40001"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("42703"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeForSqlState("42501"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CodeForSqlState("22P02"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeForSqlState("23502"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeForSqlState("57014"), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(CodeForSqlState("XX000"), absl::StatusCode::kInternal);
  EXPECT_EQ(CodeForSqlState("F0000"), absl::StatusCode::kUnknown);
}

TEST(ConnectionTest, QuotesIdentifiers) {
  EXPECT_EQ(QuoteIdentifier("a"), "\"a\"");
  EXPECT_EQ(QuoteIdentifier("we\"ird"), "\"we\"\"ird\"");
}

TEST(ConnectionTest, MalformedUrlIsInvalidArgumentWithoutThePassword) {
  auto conn = Connection::Open({"postgresql://u:s3cr3t@host:notaport/db?bogus=1", "", 2, {}});
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kInvalidArgument) << conn.status();
  EXPECT_THAT(conn.status().message(), Not(HasSubstr("s3cr3t")));
}

class ConnectionServerTest : public testing::PostgresTest {};

TEST_F(ConnectionServerTest, AppliesSessionSettings) {
  auto conn = Connection::Open(
      {server().url, server().password, 5, {{"TimeZone", "UTC"}, {"DateStyle", "ISO, MDY"}}});
  ASSERT_TRUE(conn.ok()) << conn.status();
  auto result =
      (*conn)->Exec("SELECT current_setting('TimeZone'), current_setting('application_name')");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_STREQ(PQgetvalue(result->get(), 0, 0), "UTC");
  EXPECT_STREQ(PQgetvalue(result->get(), 0, 1), "backflow");
}

TEST_F(ConnectionServerTest, UnknownDatabaseIsFailedPreconditionNamingIt) {
  std::string url = server().url;
  url.replace(url.rfind('/'), std::string::npos, "/no_such_db");
  auto conn = Connection::Open({url, server().password, 5, {}});
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kFailedPrecondition) << conn.status();
  EXPECT_THAT(conn.status().message(), HasSubstr("no_such_db"));
}

TEST_F(ConnectionServerTest, PermissionDenied) {
  auto conn = Connection::Open({server().url, server().password, 5, {}});
  ASSERT_TRUE(conn.ok()) << conn.status();
  auto result = (*conn)->Exec("SELECT * FROM pg_authid");
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << result.status();
}

}  // namespace
}  // namespace backflow::pg
