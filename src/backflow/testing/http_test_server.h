// HttpTestServer: a small loopback HTTP/1.1 server for tests.
//
// Binds 127.0.0.1 on an ephemeral port, accepts connections on a background
// thread and serves each connection on its own thread (keep-alive, requests
// with Content-Length bodies; chunked request bodies are answered with 501).
// Replies carry a Content-Length body, or a chunked body produced piece by
// piece (TestResponse::stream).
// Every request is passed to the handler, whose TestResponse says what to
// answer, how long to wait first (to simulate slow replies and client
// timeouts) or whether to drop the connection without replying (a reset).
//
// Thread-safety: the handler runs on connection threads, possibly several at
// once, so it must be thread-safe. All public methods are thread-safe.
// Start() returns kUnavailable if the socket cannot be bound; Stop() (also
// run by the destructor) closes every connection, cuts short pending
// response delays and joins all threads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace backflow {

using TestHeaders = std::vector<std::pair<std::string, std::string>>;

struct TestRequest {
  std::string method;
  std::string target;   // path and query, as sent ("/hooks?x=1")
  TestHeaders headers;  // names lowercased, in arrival order
  std::string body;
  // 1-based: which connection (in accept order) and which request on it.
  int64_t connection_number = 0;
  int64_t request_on_connection = 0;

  // The first header named `name` (case-insensitive), if present.
  std::optional<std::string> Header(std::string_view name) const;
};

struct TestResponse {
  int status = 200;
  TestHeaders headers;  // Content-Length is added by the server
  std::string body;
  // Waits this long (real time) before replying; cut short by Stop().
  std::chrono::milliseconds delay{0};
  // Closes the connection with a TCP reset instead of replying (after `delay`).
  bool reset_connection = false;
  // Replies, then closes the connection ("Connection: close").
  bool close_after_reply = false;

  // Streaming replies. When `stream` is set, the body is sent with
  // "Transfer-Encoding: chunked" instead of `body` (and a Content-Length):
  // the connection thread calls `stream` until it returns kEnd or kAbort,
  // and sends each non-empty piece it appended as one chunk before asking
  // for the next, so a client that reads slowly holds the producer back (TCP
  // backpressure). A call that appends nothing and returns kMore lets the
  // server check the connection: a client that has closed it is noticed
  // then. kEnd sends the final zero-size chunk followed by the trailer fields
  // the producer put in `trailers`; kAbort closes the connection without it
  // (a deliberately broken framing, as servers do to signal a failure after
  // the status line went out). The producer runs without server locks held;
  // one that blocks must be released by its owner before Stop().
  enum class StreamStep { kMore, kEnd, kAbort };
  std::function<StreamStep(std::string& piece, TestHeaders& trailers)> stream;
  // With `stream`: called once if the client closed the connection (or
  // Stop() ran) before the whole body was sent; no more pieces are asked for.
  std::function<void()> on_client_gone;

  static TestResponse Json(int status, std::string body);
  static TestResponse Reset();
};

class HttpTestServer {
 public:
  using Handler = std::function<TestResponse(const TestRequest&)>;

  explicit HttpTestServer(Handler handler);
  ~HttpTestServer();
  HttpTestServer(const HttpTestServer&) = delete;
  HttpTestServer& operator=(const HttpTestServer&) = delete;

  // Binds and starts accepting. Call once.
  absl::Status Start();
  // Idempotent.
  void Stop();

  int port() const { return port_; }
  // "http://127.0.0.1:<port><path>".
  std::string Url(std::string_view path = "/") const;

  int64_t connections_accepted() const { return connections_accepted_.load(); }
  int64_t requests_received() const { return requests_received_.load(); }

 private:
  struct Connection {
    int fd = -1;
    std::thread thread;
    bool done = false;
  };

  void AcceptLoop();
  void Serve(Connection* conn, int64_t number);
  // Sleeps up to `d`; returns false if Stop() interrupted the wait.
  bool WaitUnlessStopped(std::chrono::milliseconds d);
  void ReapFinishedLocked();

  Handler handler_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread accept_thread_;
  std::atomic<int64_t> connections_accepted_{0};
  std::atomic<int64_t> requests_received_{0};

  std::mutex mu_;
  std::condition_variable stop_cv_;
  bool started_ = false;
  bool stopping_ = false;
  std::vector<std::unique_ptr<Connection>> connections_;
};

}  // namespace backflow
