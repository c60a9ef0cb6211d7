// HttpStreamClient: HTTP exchanges whose response body is read piece by piece
// as it arrives, for results too large to hold in memory (a warehouse query
// streaming millions of rows on one connection).
//
// Open() sends the request and returns once the final response's status line
// and headers have arrived; the body has not been read yet. The caller then
// pulls the body with Read(). The transfer is paused whenever the stream
// holds max_buffered_bytes that the caller has not taken, so a slow caller
// holds the server back through TCP flow control instead of growing a
// buffer: at most max_buffered_bytes plus one libcurl delivery (16 KiB) of
// body bytes are held by the stream at any time. Content-Encoding (gzip,
// deflate, br, zstd: whatever libcurl was built with) is decoded on the fly.
//
// Errors: transport failures before the headers (DNS, connect, TLS, reset)
// come back from Open() as kUnavailable, timeouts as kDeadlineExceeded.
// After the headers, a body cut short (a chunked body without its final
// chunk, fewer bytes than Content-Length, a reset) is an error from Read(),
// never a clean end: kUnavailable, or kDeadlineExceeded when no byte arrived
// for `idle_timeout` while Read() waited. Any HTTP status is a response.
//
// Thread-safety: the client is thread-safe (each Open() uses its own handle
// and connection); a stream is used by one thread at a time. Destroying a
// stream before its end closes its connection, which is how a caller
// abandons a response. No redirects are followed; TLS peers and host names
// are verified.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "backflow/common/http_client.h"

namespace backflow {

struct HttpStreamOptions {
  // Limit for establishing the connection (TCP and TLS).
  std::chrono::milliseconds connect_timeout{30'000};
  // The longest wait for the response headers after the request was sent,
  // and for each further piece of the body while Read() waits. Time the
  // caller spends between Read() calls does not count.
  std::chrono::milliseconds idle_timeout{300'000};
  // Body bytes the stream holds for the caller before it pauses the transfer.
  size_t max_buffered_bytes = 64 * 1024;
};

class HttpResponseStream {
 public:
  virtual ~HttpResponseStream() = default;

  virtual int status() const = 0;
  // Names lowercased, in arrival order.
  virtual const HttpHeaders& headers() const = 0;
  // The first header named `name` (case-insensitive), if present.
  std::optional<std::string> Header(std::string_view name) const;

  // Replaces `piece` with the next body bytes (never empty when true is
  // returned). Returns false at the clean end of the body; errors as in the
  // file comment. After an error or the end, further calls return the same.
  virtual absl::StatusOr<bool> Read(std::string& piece) = 0;

  // Trailer fields of a chunked body (names lowercased); complete once Read()
  // returned false.
  virtual const HttpHeaders& trailers() const = 0;

  // The most body bytes this stream held at once (not counting what the
  // caller took with Read()).
  virtual size_t peak_buffered_bytes() const = 0;
};

class HttpStreamClient {
 public:
  virtual ~HttpStreamClient() = default;
  // Sends `request` (its `timeout` is not used: see HttpStreamOptions) and
  // waits for the response headers.
  virtual absl::StatusOr<std::unique_ptr<HttpResponseStream>> Open(
      const HttpRequest& request, const HttpStreamOptions& options) = 0;
};

// The libcurl implementation (multi interface, one connection per stream).
std::unique_ptr<HttpStreamClient> NewCurlHttpStreamClient();

}  // namespace backflow
