#include "backflow/pg/connection.h"

#include "backflow/pg/testing/test_server.h"
#include "backflow/pg/types.h"
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

TEST(ConnectionTest, EncodesBinaryInt8AndArrays) {
  EXPECT_EQ(BinaryInt8(0x0102030405060708), std::string("\x01\x02\x03\x04\x05\x06\x07\x08"));
  EXPECT_EQ(FromBinaryInt(BinaryInt8(-2).data(), 8), -2);
  EXPECT_EQ(FromBinaryInt("\xff\xfe", 2), -2);  // an int2
  // Empty array: no dimensions, no NULLs, element type.
  EXPECT_EQ(BinaryArray(kByteaOid, {}), std::string("\0\0\0\0\0\0\0\0\0\0\0\x11", 12));
}

TEST_F(ConnectionServerTest, BinaryParametersAndResultsRoundTrip) {
  auto conn = Connection::Open({server().url, server().password, 5, {}});
  ASSERT_TRUE(conn.ok()) << conn.status();
  std::string nul_and_high("a\0\x80\xff", 4);
  std::vector<std::string_view> elements = {nul_and_high, "", "x"};
  auto result = (*conn)->ExecParams(
      "SELECT $1::bytea, $2::bigint, cardinality($3::bytea[]), ($3::bytea[])[1], "
      "cardinality($4::bytea[]), $5::text IS NULL, $6::text",
      {Param::Binary(nul_and_high, kByteaOid), Param::Binary(BinaryInt8(-42), kInt8Oid),
       Param::Binary(BinaryArray(kByteaOid, elements), kByteaArrayOid),
       Param::Binary(BinaryArray(kByteaOid, {}), kByteaArrayOid), Param::Null(),
       Param::Text("t\u00e9xt")},
      /*binary_result=*/true);
  ASSERT_TRUE(result.ok()) << result.status();
  const PGresult* r = result->get();
  EXPECT_EQ(std::string(PQgetvalue(r, 0, 0), PQgetlength(r, 0, 0)), nul_and_high);
  EXPECT_EQ(FromBinaryInt(PQgetvalue(r, 0, 1), PQgetlength(r, 0, 1)), -42);
  EXPECT_EQ(FromBinaryInt(PQgetvalue(r, 0, 2), PQgetlength(r, 0, 2)), 3);
  EXPECT_EQ(std::string(PQgetvalue(r, 0, 3), PQgetlength(r, 0, 3)), nul_and_high);
  EXPECT_EQ(FromBinaryInt(PQgetvalue(r, 0, 4), PQgetlength(r, 0, 4)), 0);
  EXPECT_EQ(PQgetvalue(r, 0, 5)[0], 1);  // binary bool true
  EXPECT_EQ(std::string(PQgetvalue(r, 0, 6), PQgetlength(r, 0, 6)), "t\u00e9xt");

  auto bad = (*conn)->ExecParams("SELECT $1::bigint", {Param::Text("nope")});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

}  // namespace
}  // namespace backflow::pg
