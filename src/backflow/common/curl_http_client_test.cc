#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "backflow/common/http_client.h"
#include "backflow/testing/http_test_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Records requests and answers with whatever `next` says.
class Recorder {
 public:
  TestResponse Handle(const TestRequest& req) {
    std::lock_guard<std::mutex> lock(mu_);
    requests_.push_back(req);
    return next_;
  }
  void SetNext(TestResponse r) {
    std::lock_guard<std::mutex> lock(mu_);
    next_ = std::move(r);
  }
  std::vector<TestRequest> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  std::mutex mu_;
  std::vector<TestRequest> requests_;
  TestResponse next_;
};

class CurlHttpClientTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.Start().ok()); }

  Recorder recorder_;
  HttpTestServer server_{[this](const TestRequest& r) { return recorder_.Handle(r); }};
  std::unique_ptr<HttpClient> client_ = NewCurlHttpClient();
};

TEST_F(CurlHttpClientTest, PostSendsBodyAndHeadersAndReadsResponse) {
  TestResponse reply = TestResponse::Json(201, R"({"ok":true})");
  reply.headers.emplace_back("X-Custom-Thing", "Value 1");
  recorder_.SetNext(reply);

  HttpRequest req;
  req.url = server_.Url("/hook?a=1");
  req.headers = {{"Content-Type", "application/json"}, {"X-Test", "yes"}};
  req.body = R"({"hello":"world"})";
  absl::StatusOr<HttpResponse> resp = client_->Send(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->status, 201);
  EXPECT_EQ(resp->body, R"({"ok":true})");
  EXPECT_EQ(resp->Header("x-custom-thing"), "Value 1");
  EXPECT_EQ(resp->Header("X-CUSTOM-THING"), "Value 1");
  for (const auto& [name, value] : resp->headers) {
    EXPECT_EQ(name, absl::AsciiStrToLower(name));
  }

  std::vector<TestRequest> got = recorder_.requests();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].method, "POST");
  EXPECT_EQ(got[0].target, "/hook?a=1");
  EXPECT_EQ(got[0].body, R"({"hello":"world"})");
  EXPECT_EQ(got[0].Header("x-test"), "yes");
  EXPECT_EQ(got[0].Header("content-type"), "application/json");
}

TEST_F(CurlHttpClientTest, NoExpectHeaderForLargeBodies) {
  HttpRequest req;
  req.url = server_.Url();
  req.body = std::string(3 * 1024 * 1024, 'x');
  absl::StatusOr<HttpResponse> resp = client_->Send(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  std::vector<TestRequest> got = recorder_.requests();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_FALSE(got[0].Header("expect").has_value());
  EXPECT_EQ(got[0].body.size(), req.body.size());
}

TEST_F(CurlHttpClientTest, ReusesConnection) {
  HttpRequest req;
  req.url = server_.Url();
  req.body = "1";
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<HttpResponse> resp = client_->Send(req);
    ASSERT_TRUE(resp.ok()) << resp.status();
  }
  EXPECT_EQ(server_.connections_accepted(), 1);
  std::vector<TestRequest> got = recorder_.requests();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].request_on_connection, 3);
}

TEST_F(CurlHttpClientTest, ConcurrentCallersEachGetAConnectionAndReuseIt) {
  TestResponse slow;
  slow.delay = std::chrono::milliseconds(50);
  recorder_.SetNext(slow);
  constexpr int kThreads = 4;
  constexpr int kRequestsEach = 5;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRequestsEach; ++i) {
        HttpRequest req;
        req.url = server_.Url("/t" + std::to_string(t));
        req.body = std::to_string(i);
        absl::StatusOr<HttpResponse> resp = client_->Send(req);
        if (resp.ok() && resp->status == 200) ++ok;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads * kRequestsEach);
  // At most one connection per concurrent caller, each reused.
  EXPECT_GE(server_.connections_accepted(), 2);
  EXPECT_LE(server_.connections_accepted(), kThreads);
}

TEST_F(CurlHttpClientTest, NonIdempotentRequestsUseAFreshConnection) {
  HttpRequest req;
  req.url = server_.Url();
  req.body = "1";
  ASSERT_TRUE(client_->Send(req).ok());
  req.idempotent = false;
  ASSERT_TRUE(client_->Send(req).ok());
  EXPECT_EQ(server_.connections_accepted(), 2);
  std::vector<TestRequest> got = recorder_.requests();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].request_on_connection, 1);
}

TEST_F(CurlHttpClientTest, GetAndPutMethods) {
  HttpRequest get;
  get.method = "GET";
  get.url = server_.Url("/x");
  ASSERT_TRUE(client_->Send(get).ok());
  HttpRequest put;
  put.method = "PUT";
  put.url = server_.Url("/y");
  put.body = "payload";
  ASSERT_TRUE(client_->Send(put).ok());
  std::vector<TestRequest> got = recorder_.requests();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].method, "GET");
  EXPECT_EQ(got[0].body, "");
  EXPECT_EQ(got[1].method, "PUT");
  EXPECT_EQ(got[1].body, "payload");
}

TEST_F(CurlHttpClientTest, ErrorStatusesAreResponses) {
  recorder_.SetNext(TestResponse::Json(503, "busy"));
  HttpRequest req;
  req.url = server_.Url();
  absl::StatusOr<HttpResponse> resp = client_->Send(req);
  ASSERT_TRUE(resp.ok());
  EXPECT_EQ(resp->status, 503);
  EXPECT_EQ(resp->body, "busy");
}

TEST_F(CurlHttpClientTest, DoesNotFollowRedirects) {
  TestResponse redirect;
  redirect.status = 302;
  redirect.headers.emplace_back("Location", server_.Url("/elsewhere"));
  recorder_.SetNext(redirect);
  HttpRequest req;
  req.url = server_.Url("/start");
  absl::StatusOr<HttpResponse> resp = client_->Send(req);
  ASSERT_TRUE(resp.ok());
  EXPECT_EQ(resp->status, 302);
  EXPECT_EQ(recorder_.requests().size(), 1u);
}

TEST_F(CurlHttpClientTest, TimeoutIsDeadlineExceeded) {
  TestResponse slow;
  slow.delay = std::chrono::milliseconds(3000);
  recorder_.SetNext(slow);
  HttpRequest req;
  req.url = server_.Url("/slow?token=secret");
  req.timeout = std::chrono::milliseconds(200);
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<HttpResponse> resp = client_->Send(req);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(2500));
  ASSERT_FALSE(resp.ok());
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(resp.status().message(), HasSubstr(server_.Url("/slow")));
  EXPECT_THAT(resp.status().message(), Not(HasSubstr("secret")));

  // The client recovers on the next call.
  recorder_.SetNext(TestResponse());
  req.timeout = std::chrono::milliseconds(5000);
  EXPECT_TRUE(client_->Send(req).ok());
}

TEST_F(CurlHttpClientTest, ResetIsUnavailable) {
  recorder_.SetNext(TestResponse::Reset());
  HttpRequest req;
  req.url = server_.Url("/reset");
  absl::StatusOr<HttpResponse> resp = client_->Send(req);
  ASSERT_FALSE(resp.ok());
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(resp.status().message(), HasSubstr("/reset"));
}

TEST(CurlHttpClientStandaloneTest, ConnectionRefusedIsUnavailable) {
  int port;
  {
    HttpTestServer server([](const TestRequest&) { return TestResponse(); });
    ASSERT_TRUE(server.Start().ok());
    port = server.port();
  }
  HttpRequest req;
  req.url = "http://127.0.0.1:" + std::to_string(port) + "/";
  req.timeout = std::chrono::milliseconds(2000);
  absl::StatusOr<HttpResponse> resp = NewCurlHttpClient()->Send(req);
  ASSERT_FALSE(resp.ok());
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kUnavailable);
}

TEST(CurlHttpClientStandaloneTest, UnsupportedSchemeIsAnError) {
  HttpRequest req;
  req.url = "file:///etc/passwd";
  absl::StatusOr<HttpResponse> resp = NewCurlHttpClient()->Send(req);
  EXPECT_FALSE(resp.ok());
}

}  // namespace
}  // namespace backflow
