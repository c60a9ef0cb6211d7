#include "backflow/testing/http_test_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "fmt/format.h"

namespace backflow {
namespace {

constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxBodyBytes = 64 * 1024 * 1024;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string_view TrimView(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

const char* ReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 207:
      return "Multi-Status";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 408:
      return "Request Timeout";
    case 410:
      return "Gone";
    case 413:
      return "Content Too Large";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Status";
  }
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads more bytes into `buf`; false on EOF or error.
bool ReadMore(int fd, std::string& buf) {
  char chunk[16 * 1024];
  while (true) {
    ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf.append(chunk, static_cast<size_t>(n));
    return true;
  }
}

bool HeaderEqualsIgnoreCase(const std::string& a, std::string_view b) {
  return a.size() == b.size() && Lower(a) == Lower(b);
}

// Whether the peer has closed (or reset) the connection, without blocking.
bool PeerClosed(int fd) {
  char c;
  ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) return true;
  if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
  return false;
}

// Sends the chunks `resp.stream` produces, then (unless it aborts) the final
// chunk and the trailers. False when the client went away.
bool SendStream(int fd, const TestResponse& resp, bool& aborted) {
  std::string piece;
  TestHeaders trailers;
  aborted = false;
  while (true) {
    piece.clear();
    const TestResponse::StreamStep step = resp.stream(piece, trailers);
    if (!piece.empty()) {
      if (!SendAll(fd, fmt::format("{:x}\r\n", piece.size())) || !SendAll(fd, piece) ||
          !SendAll(fd, "\r\n")) {
        return false;
      }
    } else if (step == TestResponse::StreamStep::kMore && PeerClosed(fd)) {
      return false;
    }
    if (step == TestResponse::StreamStep::kAbort) {
      aborted = true;
      return true;
    }
    if (step == TestResponse::StreamStep::kEnd) break;
  }
  std::string end = "0\r\n";
  for (const auto& [name, value] : trailers) end += fmt::format("{}: {}\r\n", name, value);
  end += "\r\n";
  return SendAll(fd, end);
}

}  // namespace

std::optional<std::string> TestRequest::Header(std::string_view name) const {
  std::string wanted = Lower(name);
  for (const auto& [key, value] : headers) {
    if (key == wanted) return value;
  }
  return std::nullopt;
}

TestResponse TestResponse::Json(int status, std::string body) {
  TestResponse r;
  r.status = status;
  r.headers.emplace_back("Content-Type", "application/json");
  r.body = std::move(body);
  return r;
}

TestResponse TestResponse::Reset() {
  TestResponse r;
  r.reset_connection = true;
  return r;
}

HttpTestServer::HttpTestServer(Handler handler) : handler_(std::move(handler)) {}

HttpTestServer::~HttpTestServer() { Stop(); }

absl::Status HttpTestServer::Start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_) return absl::FailedPreconditionError("HttpTestServer already started");
    started_ = true;
  }
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(fmt::format("socket: {}", std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 64) != 0) {
    std::string err = std::strerror(errno);
    ::close(fd);
    return absl::UnavailableError(fmt::format("bind/listen on 127.0.0.1: {}", err));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  listen_fd_ = fd;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void HttpTestServer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || !started_) {
      stopping_ = true;
      return;
    }
    stopping_ = true;
    if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
    for (auto& conn : connections_) {
      if (conn->fd >= 0) ::shutdown(conn->fd, SHUT_RDWR);  // wakes recv()
    }
  }
  stop_cv_.notify_all();
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
  }
  // No new connections can appear now; join the rest without the lock held
  // (connection threads take it to close their sockets).
  std::vector<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connections.swap(connections_);
  }
  for (auto& conn : connections) {
    if (conn->thread.joinable()) conn->thread.join();
  }
}

std::string HttpTestServer::Url(std::string_view path) const {
  return fmt::format("http://127.0.0.1:{}{}", port_, path);
}

void HttpTestServer::ReapFinishedLocked() {
  for (auto it = connections_.begin(); it != connections_.end();) {
    if ((*it)->done) {
      if ((*it)->thread.joinable()) (*it)->thread.join();
      it = connections_.erase(it);
    } else {
      ++it;
    }
  }
}

void HttpTestServer::AcceptLoop() {
  while (true) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      if (fd >= 0) ::close(fd);
      return;
    }
    if (fd < 0) continue;  // EINTR, ECONNABORTED and the like
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ReapFinishedLocked();
    int64_t number = ++connections_accepted_;
    auto conn = std::make_unique<Connection>();
    conn->fd = fd;
    Connection* raw = conn.get();
    connections_.push_back(std::move(conn));
    raw->thread = std::thread([this, raw, number] { Serve(raw, number); });
  }
}

bool HttpTestServer::WaitUnlessStopped(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  return !stop_cv_.wait_for(lock, d, [this] { return stopping_; });
}

void HttpTestServer::Serve(Connection* conn, int64_t number) {
  int fd;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fd = conn->fd;
  }
  std::string buf;
  int64_t served = 0;
  bool reset = false;
  while (true) {
    // Request line and headers.
    size_t header_end;
    while ((header_end = buf.find("\r\n\r\n")) == std::string::npos) {
      if (buf.size() > kMaxHeaderBytes || !ReadMore(fd, buf)) goto done;
    }
    {
      TestRequest req;
      req.connection_number = number;
      req.request_on_connection = ++served;
      std::string_view head(buf.data(), header_end);
      size_t line_end = head.find("\r\n");
      std::string_view request_line = head.substr(0, line_end);
      size_t sp1 = request_line.find(' ');
      size_t sp2 = request_line.rfind(' ');
      if (sp1 == std::string_view::npos || sp2 == sp1) goto done;
      req.method = std::string(request_line.substr(0, sp1));
      req.target = std::string(request_line.substr(sp1 + 1, sp2 - sp1 - 1));
      std::string_view version = request_line.substr(sp2 + 1);
      std::string_view rest =
          line_end == std::string_view::npos ? std::string_view() : head.substr(line_end + 2);
      while (!rest.empty()) {
        size_t eol = rest.find("\r\n");
        std::string_view line = rest.substr(0, eol);
        rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 2);
        size_t colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        req.headers.emplace_back(Lower(TrimView(line.substr(0, colon))),
                                 std::string(TrimView(line.substr(colon + 1))));
      }
      buf.erase(0, header_end + 4);

      bool client_wants_close = version == "HTTP/1.0";
      if (auto c = req.Header("connection")) client_wants_close = Lower(*c) == "close";
      if (auto te = req.Header("transfer-encoding"); te && Lower(*te) != "identity") {
        SendAll(fd,
                "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n");
        goto done;
      }
      size_t content_length = 0;
      if (auto cl = req.Header("content-length")) {
        char* end = nullptr;
        unsigned long long n = std::strtoull(cl->c_str(), &end, 10);
        if (end == cl->c_str() || *end != '\0' || n > kMaxBodyBytes) goto done;
        content_length = static_cast<size_t>(n);
      }
      if (auto expect = req.Header("expect");
          expect && Lower(*expect) == "100-continue" && buf.size() < content_length) {
        if (!SendAll(fd, "HTTP/1.1 100 Continue\r\n\r\n")) goto done;
      }
      while (buf.size() < content_length) {
        if (!ReadMore(fd, buf)) goto done;
      }
      req.body = buf.substr(0, content_length);
      buf.erase(0, content_length);
      ++requests_received_;

      TestResponse resp = handler_(req);
      if (resp.delay.count() > 0 && !WaitUnlessStopped(resp.delay)) goto done;
      if (resp.reset_connection) {
        reset = true;
        goto done;
      }
      bool close_after = resp.close_after_reply || client_wants_close;
      const bool streamed = static_cast<bool>(resp.stream) && req.method != "HEAD";
      std::string out = fmt::format("HTTP/1.1 {} {}\r\n", resp.status, ReasonPhrase(resp.status));
      for (const auto& [name, value] : resp.headers) {
        if (HeaderEqualsIgnoreCase(name, "content-length") ||
            HeaderEqualsIgnoreCase(name, "connection") ||
            HeaderEqualsIgnoreCase(name, "transfer-encoding")) {
          continue;
        }
        out += fmt::format("{}: {}\r\n", name, value);
      }
      if (streamed) {
        out += "Transfer-Encoding: chunked\r\n";
      } else {
        out += fmt::format("Content-Length: {}\r\n", resp.body.size());
      }
      if (close_after) out += "Connection: close\r\n";
      out += "\r\n";
      if (!streamed) {
        if (req.method != "HEAD") out += resp.body;
        if (!SendAll(fd, out) || close_after) goto done;
        continue;
      }
      bool aborted = false;
      if (!SendAll(fd, out) || !SendStream(fd, resp, aborted)) {
        if (resp.on_client_gone) resp.on_client_gone();
        goto done;
      }
      if (aborted || close_after) goto done;
    }
  }
done:
  std::lock_guard<std::mutex> lock(mu_);
  if (reset) {
    linger lg{1, 0};  // close() now sends RST instead of FIN
    ::setsockopt(conn->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  }
  ::close(conn->fd);
  conn->fd = -1;
  conn->done = true;
}

}  // namespace backflow
