// HttpServer: the service's HTTP/1.1 listener (Boost.Beast on Asio).
//
// A fixed pool of threads runs every connection asynchronously: keep-alive,
// pipelining-safe (one request at a time per connection), request bodies
// limited to Options::max_body_bytes (413 beyond), a read timeout per
// request (408) so idle or slow clients cannot hold a connection forever.
// Each complete request is passed to the handler on a pool thread; the
// handler must be thread-safe. Handlers may block (they do state-store and
// warehouse calls), so the pool has more threads than cores.
//
// Start() binds and returns the bound port (Options::port 0 = ephemeral);
// Stop() (also run by the destructor) stops accepting, closes connections
// and joins the threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace backflow::api {

struct HttpRequest {
  std::string method;                                        // "GET", "POST", ...
  std::string target;                                        // path and query as sent
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
  std::string body;
  std::string remote_address;

  // The first header named `name` (lowercase), or empty.
  std::string Header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

class HttpServer {
 public:
  struct Options {
    std::string address = "127.0.0.1";
    uint16_t port = 8321;
    int threads = 4;
    size_t max_body_bytes = 1 << 20;
    std::chrono::seconds read_timeout{30};
  };

  HttpServer(Options options, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // kUnavailable when the address cannot be bound (with the reason).
  absl::StatusOr<uint16_t> Start();
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace backflow::api
