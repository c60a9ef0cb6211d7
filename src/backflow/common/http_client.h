// HttpClient: the seam through which every connector talks HTTP.
//
// Send() performs one request/response exchange, with no retries: retry
// policy belongs to the caller, which knows the vendor's signals. Transport
// failures (DNS, connect, TLS, reset, timeout) come back as a non-OK status:
// kDeadlineExceeded for timeouts, kUnavailable otherwise. Any HTTP status,
// including 4xx and 5xx, is a successful exchange and comes back as a
// response. Implementations are thread-safe: the engine delivers batches of
// one mapping from several threads at once (see Destination::concurrency()).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace backflow {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method = "POST";
  std::string url;
  HttpHeaders headers;
  std::string body;
  std::chrono::milliseconds timeout{30'000};
  // False for a request that must never be sent twice by the transport (an
  // append without an idempotency key). HTTP clients may re-send a request
  // once when a reused keep-alive connection turns out to be dead; such a
  // request goes over a fresh connection instead.
  bool idempotent = true;
};

struct HttpResponse {
  int status = 0;
  HttpHeaders headers;  // names lowercased
  std::string body;

  // The first header named `name` (case-insensitive), if present.
  std::optional<std::string> Header(std::string_view name) const;
};

class HttpClient {
 public:
  virtual ~HttpClient() = default;
  virtual absl::StatusOr<HttpResponse> Send(const HttpRequest& request) = 0;
};

// A libcurl-backed client that reuses connections between calls (a pool of
// handles, one per concurrent caller). TLS peers are verified.
std::unique_ptr<HttpClient> NewCurlHttpClient();

}  // namespace backflow
