#include "backflow/testing/http_test_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "backflow/common/http_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

// Sends raw bytes and reads until the server closes the connection.
std::string RawExchange(int port, const std::string& bytes) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "connect failed";
  }
  ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

TEST(HttpTestServerTest, ServesRequestsWithKeepAlive) {
  HttpTestServer server([](const TestRequest& req) {
    TestResponse r =
        TestResponse::Json(200, "echo:" + req.method + " " + req.target + " " + req.body + " " +
                                    req.Header("X-Thing").value_or("-"));
    r.headers.emplace_back("X-Reply", std::to_string(req.request_on_connection));
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  EXPECT_GT(server.port(), 0);
  EXPECT_EQ(server.Url("/a"), "http://127.0.0.1:" + std::to_string(server.port()) + "/a");

  auto client = NewCurlHttpClient();
  for (int i = 1; i <= 2; ++i) {
    HttpRequest req;
    req.url = server.Url("/p?q=1");
    req.headers = {{"X-Thing", "t"}};
    req.body = "b" + std::to_string(i);
    auto resp = client->Send(req);
    ASSERT_TRUE(resp.ok()) << resp.status();
    EXPECT_EQ(resp->body, "echo:POST /p?q=1 b" + std::to_string(i) + " t");
    EXPECT_EQ(resp->Header("x-reply"), std::to_string(i));
  }
  EXPECT_EQ(server.connections_accepted(), 1);
  EXPECT_EQ(server.requests_received(), 2);
}

TEST(HttpTestServerTest, PipelinedRequestsAndConnectionClose) {
  HttpTestServer server([](const TestRequest& req) {
    TestResponse r;
    r.body = req.body;
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  std::string out = RawExchange(server.port(),
                                "POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                                "POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                "Connection: close\r\n\r\nde");
  EXPECT_THAT(out, HasSubstr("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"));
  EXPECT_THAT(out, HasSubstr("Connection: close\r\n\r\nde"));
  EXPECT_EQ(server.requests_received(), 2);
}

TEST(HttpTestServerTest, ExpectContinueAndChunkedRejected) {
  HttpTestServer server([](const TestRequest&) { return TestResponse(); });
  ASSERT_TRUE(server.Start().ok());
  std::string out =
      RawExchange(server.port(), "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  EXPECT_THAT(out, HasSubstr("501"));
}

TEST(HttpTestServerTest, CloseAfterReply) {
  HttpTestServer server([](const TestRequest&) {
    TestResponse r;
    r.close_after_reply = true;
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpClient();
  HttpRequest req;
  req.url = server.Url();
  ASSERT_TRUE(client->Send(req).ok());
  ASSERT_TRUE(client->Send(req).ok());
  EXPECT_EQ(server.connections_accepted(), 2);
}

TEST(HttpTestServerTest, DelayAndReset) {
  HttpTestServer server([](const TestRequest& req) {
    if (req.target == "/reset") return TestResponse::Reset();
    TestResponse r;
    r.delay = milliseconds(req.target == "/slow" ? 100 : 5000);
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpClient();
  HttpRequest req;
  req.url = server.Url("/slow");
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(client->Send(req).ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(100));

  req.url = server.Url("/reset");
  auto reset = client->Send(req);
  EXPECT_EQ(reset.status().code(), absl::StatusCode::kUnavailable);

  req.url = server.Url("/very-slow");
  req.timeout = milliseconds(100);
  EXPECT_EQ(client->Send(req).status().code(), absl::StatusCode::kDeadlineExceeded);
  // Stop() does not wait for the 5 s delay to run out.
  start = std::chrono::steady_clock::now();
  server.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(2000));
  server.Stop();  // idempotent
}

TEST(HttpTestServerTest, StopWithIdleKeepAliveConnection) {
  HttpTestServer server([](const TestRequest&) { return TestResponse(); });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpClient();
  HttpRequest req;
  req.url = server.Url();
  ASSERT_TRUE(client->Send(req).ok());
  server.Stop();  // the idle connection's thread is woken and joined
  req.timeout = milliseconds(1000);
  EXPECT_FALSE(client->Send(req).ok());
}

}  // namespace
}  // namespace backflow
