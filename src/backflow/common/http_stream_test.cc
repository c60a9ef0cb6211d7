#include "backflow/common/http_stream.h"

#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "backflow/testing/http_test_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;
using Step = TestResponse::StreamStep;

constexpr size_t kPiece = 16 * 1024;

// Deterministic content: byte j of piece i.
char ContentByte(int64_t i, size_t j) { return static_cast<char>((i * 31 + j * 7) % 251); }

HttpRequest Get(const HttpTestServer& server, const std::string& path = "/") {
  HttpRequest r;
  r.method = "GET";
  r.url = server.Url(path);
  return r;
}

TEST(HttpStreamTest, LargeChunkedBodyStreamsWithBoundedBuffer) {
  constexpr int64_t kPieces = 2048;  // 32 MiB
  std::atomic<int64_t> produced{0};
  HttpTestServer server([&](const TestRequest&) {
    TestResponse r;
    r.headers.emplace_back("X-Test", "big");
    auto next = std::make_shared<int64_t>(0);
    r.stream = [&produced, next](std::string& piece, TestHeaders&) {
      const int64_t i = (*next)++;
      piece.resize(kPiece);
      for (size_t j = 0; j < kPiece; ++j) piece[j] = ContentByte(i, j);
      produced = i + 1;
      return i + 1 < kPieces ? Step::kMore : Step::kEnd;
    };
    return r;
  });
  ASSERT_TRUE(server.Start().ok());

  auto client = NewCurlHttpStreamClient();
  HttpStreamOptions options;
  options.max_buffered_bytes = 64 * 1024;
  auto stream = client->Open(Get(server), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->status(), 200);
  EXPECT_EQ((*stream)->Header("x-test"), "big");

  std::string piece;
  auto more = (*stream)->Read(piece);
  ASSERT_TRUE(more.ok() && *more) << more.status();
  // While the caller holds back, the server is held back too: far from
  // everything has been produced (socket buffers hold a few MiB at most).
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_LT(produced.load(), kPieces / 2) << "the body was not streamed";

  size_t total = piece.size();
  size_t largest = piece.size();
  // Check the content as one byte sequence across piece boundaries.
  size_t offset = 0;
  bool content_ok = true;
  auto check = [&](const std::string& p) {
    for (char c : p) {
      if (c != ContentByte(static_cast<int64_t>(offset / kPiece), offset % kPiece)) {
        content_ok = false;
      }
      ++offset;
    }
  };
  check(piece);
  while (true) {
    more = (*stream)->Read(piece);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    ASSERT_FALSE(piece.empty());
    total += piece.size();
    largest = std::max(largest, piece.size());
    check(piece);
  }
  EXPECT_TRUE(content_ok);
  EXPECT_EQ(total, static_cast<size_t>(kPieces) * kPiece);
  EXPECT_LE(largest, options.max_buffered_bytes + 16 * 1024);
  EXPECT_LE((*stream)->peak_buffered_bytes(), options.max_buffered_bytes + 16 * 1024);
  EXPECT_GT((*stream)->peak_buffered_bytes(), 0u);
  // The end is sticky.
  more = (*stream)->Read(piece);
  ASSERT_TRUE(more.ok());
  EXPECT_FALSE(*more);
}

TEST(HttpStreamTest, ContentLengthBodyAndErrorStatusesAreResponses) {
  HttpTestServer server([](const TestRequest& req) {
    TestResponse r;
    r.status = 503;
    r.body = "busy: " + req.method + " " + req.body + " " + req.Header("x-auth").value_or("-");
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpStreamClient();
  HttpRequest req;
  req.url = server.Url("/q?x=1");
  req.body = "SELECT 1";
  req.headers = {{"X-Auth", "k"}};
  auto stream = client->Open(req, {});
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->status(), 503);
  std::string body, piece;
  while (true) {
    auto more = (*stream)->Read(piece);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    body += piece;
  }
  EXPECT_EQ(body, "busy: POST SELECT 1 k");
}

TEST(HttpStreamTest, BrokenChunkedFramingIsAnErrorNotAnEnd) {
  HttpTestServer server([](const TestRequest&) {
    TestResponse r;
    auto n = std::make_shared<int>(0);
    r.stream = [n](std::string& piece, TestHeaders&) {
      piece = "part" + std::to_string((*n)++);
      return *n < 3 ? Step::kMore : Step::kAbort;
    };
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpStreamClient();
  auto stream = client->Open(Get(server), {});
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string body, piece;
  absl::Status error;
  while (true) {
    auto more = (*stream)->Read(piece);
    if (!more.ok()) {
      error = more.status();
      break;
    }
    ASSERT_TRUE(*more) << "a truncated chunked body must not end cleanly";
    body += piece;
  }
  EXPECT_EQ(body, "part0part1part2");
  EXPECT_EQ(error.code(), absl::StatusCode::kUnavailable) << error;
  // Sticky.
  auto again = (*stream)->Read(piece);
  EXPECT_EQ(again.status(), error);
}

TEST(HttpStreamTest, TrailersAreAvailableAfterTheEnd) {
  HttpTestServer server([](const TestRequest&) {
    TestResponse r;
    auto n = std::make_shared<int>(0);
    r.stream = [n](std::string& piece, TestHeaders& trailers) {
      piece = "x";
      if (++*n < 2) return Step::kMore;
      trailers = {{"X-Outcome", "done"}};
      return Step::kEnd;
    };
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpStreamClient();
  HttpRequest req = Get(server);
  req.headers = {{"TE", "trailers"}};
  auto stream = client->Open(req, {});
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string piece, body;
  while (true) {
    auto more = (*stream)->Read(piece);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    body += piece;
  }
  EXPECT_EQ(body, "xx");
  ASSERT_EQ((*stream)->trailers().size(), 1u);
  EXPECT_EQ((*stream)->trailers()[0].first, "x-outcome");
  EXPECT_EQ((*stream)->trailers()[0].second, "done");
}

TEST(HttpStreamTest, IdleTimeouts) {
  HttpTestServer server([](const TestRequest& req) {
    TestResponse r;
    if (req.target == "/slow-headers") {
      r.delay = milliseconds(1500);
      r.body = "late";
      return r;
    }
    auto n = std::make_shared<int>(0);
    r.stream = [n](std::string& piece, TestHeaders&) {
      if ((*n)++ == 1) std::this_thread::sleep_for(milliseconds(1500));
      piece = "p";
      return *n < 3 ? Step::kMore : Step::kEnd;
    };
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpStreamClient();
  HttpStreamOptions options;
  options.idle_timeout = milliseconds(300);

  auto slow = client->Open(Get(server, "/slow-headers"), options);
  EXPECT_EQ(slow.status().code(), absl::StatusCode::kDeadlineExceeded) << slow.status();

  auto stream = client->Open(Get(server, "/stall"), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string piece;
  auto more = (*stream)->Read(piece);
  ASSERT_TRUE(more.ok() && *more) << more.status();
  more = (*stream)->Read(piece);
  EXPECT_EQ(more.status().code(), absl::StatusCode::kDeadlineExceeded) << more.status();
  EXPECT_THAT(more.status().message(), HasSubstr("no data for 300 ms"));
}

TEST(HttpStreamTest, DroppingTheStreamClosesTheConnection) {
  std::atomic<bool> gone{false};
  HttpTestServer server([&](const TestRequest&) {
    TestResponse r;
    auto n = std::make_shared<int64_t>(0);
    r.stream = [n](std::string& piece, TestHeaders&) {
      // A slow, endless body: one small piece, then idle polls.
      if ((*n)++ % 20 == 0) piece = "row\n";
      std::this_thread::sleep_for(milliseconds(5));
      return Step::kMore;
    };
    r.on_client_gone = [&gone] { gone = true; };
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpStreamClient();
  auto stream = client->Open(Get(server), {});
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string piece;
  auto more = (*stream)->Read(piece);
  ASSERT_TRUE(more.ok() && *more);
  EXPECT_FALSE(gone.load());
  stream->reset();
  for (int i = 0; i < 500 && !gone.load(); ++i) std::this_thread::sleep_for(milliseconds(10));
  EXPECT_TRUE(gone.load());
}

TEST(HttpStreamTest, GzipBodyIsDecodedAsItArrives) {
  const std::string plain = [] {
    std::string s;
    for (int i = 0; i < 20000; ++i) s += "line " + std::to_string(i) + "\n";
    return s;
  }();
  HttpTestServer server([&](const TestRequest& req) {
    TestResponse r;
    r.headers.emplace_back("Content-Encoding", "gzip");
    r.headers.emplace_back("X-Accept", req.Header("accept-encoding").value_or(""));
    auto zs = std::shared_ptr<z_stream>(new z_stream{}, [](z_stream* z) {
      deflateEnd(z);
      delete z;
    });
    deflateInit2(zs.get(), Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8,
                 Z_DEFAULT_STRATEGY);
    auto offset = std::make_shared<size_t>(0);
    r.stream = [zs, offset, &plain](std::string& piece, TestHeaders&) {
      const size_t n = std::min<size_t>(10000, plain.size() - *offset);
      const bool last = *offset + n >= plain.size();
      zs->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(plain.data() + *offset));
      zs->avail_in = static_cast<uInt>(n);
      *offset += n;
      char buf[65536];
      do {
        zs->next_out = reinterpret_cast<Bytef*>(buf);
        zs->avail_out = sizeof(buf);
        deflate(zs.get(), last ? Z_FINISH : Z_SYNC_FLUSH);
        piece.append(buf, sizeof(buf) - zs->avail_out);
      } while (zs->avail_out == 0);
      return last ? Step::kEnd : Step::kMore;
    };
    return r;
  });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpStreamClient();
  HttpStreamOptions options;
  options.max_buffered_bytes = 4096;
  auto stream = client->Open(Get(server), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_THAT((*stream)->Header("x-accept").value_or(""), HasSubstr("gzip"));
  std::string body, piece;
  while (true) {
    auto more = (*stream)->Read(piece);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    EXPECT_LE(piece.size(), options.max_buffered_bytes + 16 * 1024);
    body += piece;
  }
  EXPECT_EQ(body, plain);
}

TEST(HttpStreamTest, ConnectionRefusedIsUnavailable) {
  int port;
  {
    HttpTestServer server([](const TestRequest&) { return TestResponse(); });
    ASSERT_TRUE(server.Start().ok());
    port = server.port();
  }
  auto client = NewCurlHttpStreamClient();
  HttpRequest req;
  req.method = "GET";
  req.url = "http://127.0.0.1:" + std::to_string(port) + "/";
  auto stream = client->Open(req, {});
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kUnavailable) << stream.status();
}

TEST(HttpStreamTest, ResetBeforeTheReplyIsUnavailable) {
  HttpTestServer server([](const TestRequest&) { return TestResponse::Reset(); });
  ASSERT_TRUE(server.Start().ok());
  auto client = NewCurlHttpStreamClient();
  auto stream = client->Open(Get(server), {});
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kUnavailable) << stream.status();
}

}  // namespace
}  // namespace backflow
