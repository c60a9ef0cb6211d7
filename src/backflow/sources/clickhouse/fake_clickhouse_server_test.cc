// The fake's wire protocol, checked byte by byte with raw HTTP exchanges.
#include "backflow/sources/clickhouse/fake_clickhouse_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "backflow/common/crypto.h"
#include "backflow/common/http_stream.h"
#include "backflow/sources/clickhouse/clickhouse_rowbinary.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::StartsWith;
using Outcome = ClickHouseQueryLog::Outcome;

struct RawReply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lowercase names
  std::string body;                            // de-chunked
  bool terminated = false;                     // the final zero-size chunk arrived
  std::map<std::string, std::string> trailers;
};

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

void ParseFields(std::string_view block, std::map<std::string, std::string>& out) {
  while (!block.empty()) {
    size_t eol = block.find("\r\n");
    std::string_view line = block.substr(0, eol);
    block = eol == std::string_view::npos ? std::string_view() : block.substr(eol + 2);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && value[0] == ' ') value.remove_prefix(1);
    out[Lower(std::string(line.substr(0, colon)))] = std::string(value);
  }
}

// One request over a fresh connection ("Connection: close"), read to EOF.
RawReply Raw(int port, const std::string& target, const std::string& body,
             const std::vector<std::string>& headers = {}, const std::string& method = "POST") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  RawReply reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return reply;
  }
  std::string request =
      fmt::format("{} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", method, target);
  for (const auto& h : headers) request += h + "\r\n";
  request += fmt::format("Content-Length: {}\r\n\r\n{}", body.size(), body);
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string raw;
  char buf[65536];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) raw.append(buf, static_cast<size_t>(n));
  ::close(fd);

  size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos) return reply;
  std::string_view head(raw.data(), head_end);
  reply.status = std::atoi(std::string(head.substr(9, 3)).c_str());
  ParseFields(head.substr(head.find("\r\n") + 2), reply.headers);
  std::string_view rest = std::string_view(raw).substr(head_end + 4);
  if (reply.headers["transfer-encoding"] != "chunked") {
    reply.body = std::string(rest);
    reply.terminated = true;
    return reply;
  }
  while (true) {
    size_t eol = rest.find("\r\n");
    if (eol == std::string_view::npos) break;
    size_t size = std::stoul(std::string(rest.substr(0, eol)), nullptr, 16);
    rest.remove_prefix(eol + 2);
    if (size == 0) {
      reply.terminated = true;
      ParseFields(rest, reply.trailers);
      break;
    }
    if (rest.size() < size + 2) {
      reply.body.append(rest.substr(0, std::min(size, rest.size())));
      break;
    }
    reply.body.append(rest.substr(0, size));
    rest.remove_prefix(size + 2);
  }
  return reply;
}

std::string Gunzip(const std::string& in) {
  z_stream zs{};
  inflateInit2(&zs, 16 + MAX_WBITS);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  std::string out;
  char buf[65536];
  int rc;
  do {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof(buf) - zs.avail_out);
  } while (rc == Z_OK);
  inflateEnd(&zs);
  return out;
}

std::string Le(uint64_t v, size_t bytes) {
  std::string out;
  for (size_t i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return out;
}

class FakeClickHouseServerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(FakeClickHouseOptions options) {
    fake_ = std::make_unique<FakeClickHouseServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    port_ = std::stoi(fake_->BaseUrl().substr(fake_->BaseUrl().rfind(':') + 1));
    FakeClickHouseUser retl;
    retl.name = "retl";
    retl.password = "s3cret";
    fake_->AddUser(retl);
    ASSERT_TRUE(fake_->CreateTable("default", "t", {{"id", "UInt32"}, {"s", "String"}}).ok());
    ASSERT_TRUE(
        fake_->Exec("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e')").ok());
  }

  RawReply Query(const std::string& params, const std::string& sql,
                 std::vector<std::string> headers = {}) {
    headers.push_back("X-ClickHouse-User: retl");
    headers.push_back("X-ClickHouse-Key: s3cret");
    return Raw(port_, "/?" + params, sql, headers);
  }

  std::unique_ptr<FakeClickHouseServer> fake_;
  int port_ = 0;
};

TEST_F(FakeClickHouseServerTest, AuthenticatesLikeClickHouse) {
  RawReply r = Raw(port_, "/", "SELECT 1 AS x");  // no credentials: default, no password
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "1\n");
  EXPECT_EQ(r.headers["x-clickhouse-format"], "TabSeparated");

  r = Query("", "SELECT currentUser(), currentDatabase()");
  EXPECT_EQ(r.body, "retl\tdefault\n");

  r = Raw(port_, "/", "SELECT 1", {"X-ClickHouse-User: retl", "X-ClickHouse-Key: nope"});
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "516");
  EXPECT_THAT(r.body, StartsWith("Code: 516. DB::Exception: retl: Authentication failed"));
  EXPECT_THAT(r.body, HasSubstr("(AUTHENTICATION_FAILED) (version 25.11.2.24"));
  r = Raw(port_, "/", "SELECT 1", {"X-ClickHouse-User: ghost"});
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "516");  // same answer for unknown users

  r = Raw(port_, "/", "SELECT 1", {"Authorization: Basic " + Base64Encode("retl:s3cret")});
  EXPECT_EQ(r.status, 200);
  r = Raw(port_, "/?user=retl&password=s3cret", "SELECT 1");
  EXPECT_EQ(r.status, 200);
  r = Raw(port_, "/", "SELECT 1",
          {"Authorization: Basic " + Base64Encode("retl:s3cret"), "X-ClickHouse-User: retl"});
  EXPECT_EQ(r.status, 403);

  FakeClickHouseUser def;
  def.name = "default";
  def.password = "pw";
  fake_->AddUser(def);
  r = Raw(port_, "/", "SELECT 1");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "194");
  EXPECT_THAT(r.body, HasSubstr("(REQUIRED_PASSWORD)"));

  std::vector<ClickHouseQueryLog> log = fake_->Queries();
  EXPECT_EQ(log[1].auth, "headers");
  EXPECT_EQ(log[4].auth, "basic");
  EXPECT_EQ(log[5].auth, "url");
  EXPECT_EQ(log[5].params.count("password"), 0u);  // never logged
  EXPECT_EQ(log[5].params["user"], "retl");
}

TEST_F(FakeClickHouseServerTest, SettingsReadonlyAndDatabases) {
  RawReply r = Query("bogus_setting=1", "SELECT 1");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "115");
  r = Query("readonly=1&max_threads=2", "SELECT 1");
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "164");
  EXPECT_THAT(r.body, HasSubstr("Cannot modify 'max_threads' setting in readonly mode"));
  r = Query("readonly=2&max_threads=2&param_x=1", "SELECT 1");
  EXPECT_EQ(r.status, 200);
  r = Query("readonly=2", "CREATE TABLE t2 (x)");
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "164");
  EXPECT_THAT(r.body, HasSubstr("Cannot execute query in readonly mode"));
  r = Query("readonly=2&readonly=0", "SELECT 1");
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "164");

  FakeClickHouseUser ro;
  ro.name = "ro";
  ro.profile_readonly = 1;
  fake_->AddUser(ro);
  r = Raw(port_, "/?max_execution_time=10", "SELECT 1", {"X-ClickHouse-User: ro"});
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "164");
  r = Raw(port_, "/?database=default", "SELECT 1", {"X-ClickHouse-User: ro"});
  EXPECT_EQ(r.status, 200);  // parameters are not settings

  r = Query("database=nope", "SELECT 1");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "81");
  ASSERT_TRUE(fake_->CreateDatabase("analytics").ok());
  r = Query("", "SELECT currentDatabase()", {"X-ClickHouse-Database: analytics"});
  EXPECT_EQ(r.body, "analytics\n");
}

TEST_F(FakeClickHouseServerTest, FormatsAndHeaders) {
  RawReply r = Query("default_format=RowBinaryWithNamesAndTypes&query_id=q-1", "SELECT 7 AS x");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "\x01\x01x\x05Int64" + Le(7, 8));
  EXPECT_TRUE(r.terminated);
  EXPECT_EQ(r.headers["x-clickhouse-query-id"], "q-1");
  EXPECT_EQ(r.headers["x-clickhouse-format"], "RowBinaryWithNamesAndTypes");
  EXPECT_EQ(r.headers["content-type"], "application/octet-stream");
  EXPECT_EQ(r.headers["x-clickhouse-timezone"], "UTC");
  EXPECT_THAT(r.headers["x-clickhouse-exception-tag"], MatchesRegex("[a-z0-9]{16}"));
  nlohmann::json summary = nlohmann::json::parse(r.headers["x-clickhouse-summary"]);
  EXPECT_EQ(summary["result_rows"], "1");  // counters are strings

  // A typed table: UInt32 and String exactly.
  r = Query("default_format=RowBinaryWithNamesAndTypes", "SELECT id, s FROM t WHERE id <= 2");
  EXPECT_EQ(r.body, std::string("\x02\x02id\x01s\x06UInt32\x06String") + Le(1, 4) + "\x01" + "a" +
                        Le(2, 4) + "\x01" + "b");

  r = Query("", "SELECT id, s FROM t WHERE id = 1 FORMAT JSONEachRow");
  EXPECT_EQ(r.body, "{\"id\":1,\"s\":\"a\"}\n");
  EXPECT_EQ(r.headers["x-clickhouse-format"], "JSONEachRow");
  r = Query("", "SELECT 1 FORMAT Parquet");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "73");

  r = Query("", "SELECT * FROM nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "60");
  r = Query("", "SELECT 1; SELECT 2");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "62");
  r = Query("", "SELECT id, throwIf(id = 2, 'two') FROM t");
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "395");
  EXPECT_THAT(r.body, HasSubstr("DB::Exception: two."));

  r = Raw(port_, "/ping", "", {}, "GET");
  EXPECT_EQ(r.body, "Ok.\n");
  EXPECT_EQ(Raw(port_, "/play", "", {}, "GET").status, 404);
}

TEST_F(FakeClickHouseServerTest, CompressesOnlyWhenAsked) {
  const std::string params = "default_format=RowBinaryWithNamesAndTypes";
  RawReply plain = Query(params, "SELECT id, s FROM t", {"Accept-Encoding: gzip"});
  EXPECT_EQ(plain.headers.count("content-encoding"), 0u);
  RawReply gz = Query(params + "&enable_http_compression=1", "SELECT id, s FROM t",
                      {"Accept-Encoding: gzip"});
  EXPECT_EQ(gz.headers["content-encoding"], "gzip");
  EXPECT_NE(gz.body, plain.body);
  EXPECT_EQ(Gunzip(gz.body), plain.body);
  RawReply no_gzip =
      Query(params + "&enable_http_compression=1", "SELECT id, s FROM t", {"Accept-Encoding: br"});
  EXPECT_EQ(no_gzip.headers.count("content-encoding"), 0u);
}

std::string ExceptionText(int code, const std::string& name, const std::string& message) {
  return fmt::format("Code: {}. DB::Exception: {}. ({}) (version 25.11.2.24 (official build))",
                     code, message, name);
}

// Rows of (UInt32 id, String s) in a RowBinaryWithNamesAndTypes body.
size_t CountRows(std::string_view body) {
  RowBinaryDecoder dec(body);
  std::vector<std::string> names, types;
  if (dec.ReadHeader(names, types) != RowBinaryResult::kOk) return 0;
  std::vector<ClickHouseType> columns = {*ParseClickHouseType("UInt32"),
                                         *ParseClickHouseType("String")};
  size_t n = 0;
  Row row;
  while (dec.ReadRow(columns, row) == RowBinaryResult::kOk) ++n;
  return n;
}

TEST_F(FakeClickHouseServerTest, MidStreamFailureFramings) {
  const std::string params = "default_format=RowBinaryWithNamesAndTypes";
  const std::string text =
      ExceptionText(241, "MEMORY_LIMIT_EXCEEDED", "Memory limit (total) exceeded");
  fake_->set_block_rows(2);

  // 25.11+: tagged block, framing broken.
  fake_->FailNext(FakeClickHouseFailure::MidStream(3, 241, "Memory limit (total) exceeded"));
  RawReply r = Query(params, "SELECT id, s FROM t");
  EXPECT_EQ(r.status, 200);
  EXPECT_FALSE(r.terminated);
  const std::string tag = r.headers["x-clickhouse-exception-tag"];
  ASSERT_EQ(tag.size(), 16u);
  const std::string tagged = fmt::format(
      "\r\n__exception__\r\n{0}\r\n{1}\n{2} {0}\r\n__exception__\r\n", tag, text, text.size() + 1);
  ASSERT_GT(r.body.size(), tagged.size());
  EXPECT_EQ(r.body.substr(r.body.size() - tagged.size()), tagged);
  EXPECT_EQ(CountRows(r.body.substr(0, r.body.size() - tagged.size())), 3u);

  // 24.11+: a marker line, framing broken, no tag.
  fake_->set_framing(ClickHouseExceptionFraming::kMarker);
  fake_->FailNext(FakeClickHouseFailure::MidStream(3, 241, "Memory limit (total) exceeded"));
  r = Query(params, "SELECT id, s FROM t");
  EXPECT_FALSE(r.terminated);
  EXPECT_EQ(r.headers.count("x-clickhouse-exception-tag"), 0u);
  const std::string marked = "\r\n__exception__\r\n" + text + "\n";
  EXPECT_EQ(r.body.substr(r.body.size() - marked.size()), marked);
  EXPECT_EQ(CountRows(r.body.substr(0, r.body.size() - marked.size())), 3u);

  // Older servers: the text appended, the body ends normally.
  fake_->set_framing(ClickHouseExceptionFraming::kAppendedText);
  fake_->FailNext(FakeClickHouseFailure::MidStream(3, 241, "Memory limit (total) exceeded"));
  r = Query(params, "SELECT id, s FROM t");
  EXPECT_TRUE(r.terminated);
  EXPECT_EQ(r.body.substr(r.body.size() - text.size() - 1), text + "\n");
  EXPECT_TRUE(r.trailers.empty());

  std::vector<ClickHouseQueryLog> log = fake_->Queries();
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(log[i].outcome, Outcome::kFailedMidStream);
    EXPECT_EQ(log[i].rows_sent, 3);
    EXPECT_EQ(log[i].exception_code, 241);
  }
}

TEST(FakeClickHouseTrailerTest, AppendedTextCanCarryATrailer) {
  FakeClickHouseOptions options;
  options.framing = ClickHouseExceptionFraming::kAppendedText;
  options.exception_code_trailer = true;
  FakeClickHouseServer fake(options);
  ASSERT_TRUE(fake.Start().ok());
  const int port = std::stoi(fake.BaseUrl().substr(fake.BaseUrl().rfind(':') + 1));
  fake.FailNext(FakeClickHouseFailure::MidStream(0, 159, "Timeout exceeded"));
  RawReply r = Raw(port, "/", "SELECT 1");
  EXPECT_TRUE(r.terminated);
  EXPECT_EQ(r.trailers["x-clickhouse-exception-code"], "159");
}

TEST_F(FakeClickHouseServerTest, KillQueryAndQueryIds) {
  fake_->set_block_rows(1);
  fake_->StallAfterRows(2);
  auto client = NewCurlHttpStreamClient();
  HttpRequest req;
  req.url = fake_->BaseUrl() + "/?default_format=RowBinaryWithNamesAndTypes&query_id=q1";
  req.body = "SELECT id, s FROM t";
  req.headers = {{"X-ClickHouse-User", "retl"}, {"X-ClickHouse-Key", "s3cret"}};
  auto stream = client->Open(req, {});
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string body, piece;
  while (CountRows(body) < 2) {
    auto more = (*stream)->Read(piece);
    ASSERT_TRUE(more.ok() && *more);
    body += piece;
  }
  EXPECT_EQ(fake_->RunningQueries(), 1);

  // The id is taken while the query runs.
  RawReply r = Query("query_id=q1", "SELECT 1");
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "216");
  fake_->set_max_concurrent_queries(1);
  r = Query("query_id=q2", "SELECT 1");
  EXPECT_EQ(r.headers["x-clickhouse-exception-code"], "202");
  EXPECT_THAT(r.body, HasSubstr("Too many simultaneous queries. Maximum: 1"));

  r = Query("", "KILL QUERY WHERE query_id = 'q1' ASYNC");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "waiting\tq1\tretl\tSELECT id, s FROM t\n");
  ASSERT_EQ(fake_->Kills().size(), 1u);
  EXPECT_TRUE(fake_->Kills()[0].was_running);
  // The killed query ends its body with the cancellation, framing broken.
  absl::Status end;
  while (true) {
    auto more = (*stream)->Read(piece);
    if (!more.ok()) {
      end = more.status();
      break;
    }
    ASSERT_TRUE(*more) << "a killed query must not end cleanly";
    body += piece;
  }
  EXPECT_EQ(end.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(body, HasSubstr("(QUERY_WAS_CANCELLED)"));
  EXPECT_TRUE(fake_->WaitUntilIdle(std::chrono::seconds(5)));
  EXPECT_EQ(fake_->Queries()[0].outcome, Outcome::kKilled);
  r = Query("", "KILL QUERY WHERE query_id = 'q1'");
  EXPECT_EQ(r.body, "");
  EXPECT_FALSE(fake_->Kills()[1].was_running);
}

TEST_F(FakeClickHouseServerTest, ClosingTheConnectionStopsOnlyReadonlyQueries) {
  fake_->set_block_rows(1);
  fake_->StallAfterRows(1);
  auto client = NewCurlHttpStreamClient();
  auto open = [&](const std::string& params) {
    HttpRequest req;
    req.url = fake_->BaseUrl() + "/?default_format=RowBinaryWithNamesAndTypes&" + params;
    req.body = "SELECT id, s FROM t";
    auto stream = client->Open(req, {});
    EXPECT_TRUE(stream.ok()) << stream.status();
    std::string piece;
    EXPECT_TRUE((*stream)->Read(piece).ok());
    return *std::move(stream);
  };
  auto stream = open("query_id=ro&readonly=2&cancel_http_readonly_queries_on_client_close=1");
  stream.reset();
  EXPECT_TRUE(fake_->WaitUntilIdle(std::chrono::seconds(5)));
  EXPECT_EQ(fake_->Queries()[0].outcome, Outcome::kCancelledOnClose);

  stream = open("query_id=rw&cancel_http_readonly_queries_on_client_close=1");
  stream.reset();
  // The server keeps running it (it was not read-only) until KILL QUERY.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(fake_->RunningQueries(), 1);
  EXPECT_EQ(fake_->Queries()[1].outcome, Outcome::kClientGone);
  RawReply r = Raw(port_, "/", "KILL QUERY WHERE query_id = 'rw' SYNC");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(fake_->WaitUntilIdle(std::chrono::seconds(5)));
  EXPECT_EQ(fake_->Queries()[1].outcome, Outcome::kKilled);
}

}  // namespace
}  // namespace backflow
