#include "backflow/alerts/testing/fake_smtp_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "backflow/common/crypto.h"
#include "fmt/format.h"

namespace backflow {
namespace {

constexpr size_t kMaxLine = 64 * 1024;
constexpr size_t kMaxMessage = 10 * 1024 * 1024;

std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), ::toupper);
  return s;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), ::tolower);
  return s;
}

// The address in "FROM:<a@b.io> SIZE=12" after the given prefix ("FROM:" /
// "TO:"), case-insensitive; nullopt when malformed.
std::optional<std::string> PathArgument(const std::string& argument, const std::string& prefix) {
  if (Upper(argument.substr(0, prefix.size())) != prefix) return std::nullopt;
  std::string rest = argument.substr(prefix.size());
  size_t start = rest.find_first_not_of(' ');
  if (start == std::string::npos || rest[start] != '<') return std::nullopt;
  size_t close = rest.find('>', start);
  if (close == std::string::npos) return std::nullopt;
  return rest.substr(start + 1, close - start - 1);
}

// Reads CRLF (or LF) terminated lines from a socket, giving up when the
// server stops or the connection is idle too long.
class LineReader {
 public:
  LineReader(int fd, const std::atomic<bool>& stopping, std::chrono::milliseconds idle)
      : fd_(fd), stopping_(stopping), idle_(idle) {}

  // nullopt: closed, stopped, idle timeout or an over-long line.
  std::optional<std::string> Next() {
    auto deadline = std::chrono::steady_clock::now() + idle_;
    while (true) {
      size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return line;
      }
      if (buffer_.size() > kMaxLine) return std::nullopt;
      if (stopping_.load()) return std::nullopt;
      if (std::chrono::steady_clock::now() > deadline) {
        timed_out_ = true;
        return std::nullopt;
      }
      pollfd p{fd_, POLLIN, 0};
      int ready = ::poll(&p, 1, 50);
      if (ready < 0 && errno != EINTR) return std::nullopt;
      if (ready <= 0) continue;
      char chunk[4096];
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) return std::nullopt;
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }
  bool timed_out() const { return timed_out_; }

 private:
  int fd_;
  const std::atomic<bool>& stopping_;
  std::chrono::milliseconds idle_;
  std::string buffer_;
  bool timed_out_ = false;
};

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    sent += static_cast<size_t>(n);
  }
  return true;
}

void ParseMessage(SmtpMessage& m) {
  size_t pos = 0;
  const std::string& d = m.data;
  while (pos < d.size()) {
    size_t end = d.find("\r\n", pos);
    if (end == std::string::npos) end = d.size();
    std::string line = d.substr(pos, end - pos);
    pos = end + 2;
    if (line.empty()) {
      m.body = pos < d.size() ? d.substr(pos) : "";
      return;
    }
    if ((line[0] == ' ' || line[0] == '\t') && !m.headers.empty()) {
      m.headers.back().second += line;  // unfolding removes only the CRLF
      continue;
    }
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    m.headers.emplace_back(Lower(line.substr(0, colon)), value);
  }
}

}  // namespace

std::optional<std::string> SmtpMessage::Header(std::string_view name) const {
  std::string lower = Lower(std::string(name));
  for (const auto& [key, value] : headers) {
    if (key == lower) return value;
  }
  return std::nullopt;
}

FakeSmtpServer::FakeSmtpServer(FakeSmtpOptions options) : options_(std::move(options)) {}

FakeSmtpServer::~FakeSmtpServer() { Stop(); }

std::string FakeSmtpServer::Url() const { return fmt::format("smtp://127.0.0.1:{}", port_); }

absl::Status FakeSmtpServer::Start() {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  if (listen_fd_ < 0) return absl::UnavailableError(std::strerror(errno));
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_, 16) != 0) {
    std::string why = std::strerror(errno);
    ::close(listen_fd_);
    listen_fd_ = -1;
    return absl::UnavailableError("fake SMTP server cannot listen: " + why);
  }
  socklen_t len = sizeof(addr);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void FakeSmtpServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
}

void FakeSmtpServer::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    int ready = ::poll(&p, 1, 50);
    if (ready <= 0) continue;
    int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_.load()) {
      ::close(fd);
      break;
    }
    ++connections_;
    open_fds_.push_back(fd);
    threads_.emplace_back([this, fd] { Serve(fd); });
  }
}

void FakeSmtpServer::FailCommand(std::string verb, int code, std::string text, int times) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_[Upper(verb)].push_back({code, std::move(text), times});
}

void FakeSmtpServer::RejectRecipient(std::string address, int code, std::string text) {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_recipients_[Lower(address)] = {code, std::move(text)};
}

std::optional<std::string> FakeSmtpServer::Scripted(const std::string& verb) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = failures_.find(verb);
  if (it == failures_.end() || it->second.empty()) return std::nullopt;
  Failure& f = it->second.front();
  std::string reply = fmt::format("{} {}", f.code, f.text);
  if (--f.times <= 0) it->second.erase(it->second.begin());
  return reply;
}

void FakeSmtpServer::Record(std::string line) {
  std::lock_guard<std::mutex> lock(mu_);
  transcript_.push_back(std::move(line));
}

std::vector<SmtpMessage> FakeSmtpServer::Messages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return messages_;
}

std::vector<std::string> FakeSmtpServer::Transcript() const {
  std::lock_guard<std::mutex> lock(mu_);
  return transcript_;
}

int FakeSmtpServer::auth_failures() const {
  std::lock_guard<std::mutex> lock(mu_);
  return auth_failures_;
}

int FakeSmtpServer::connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return connections_;
}

bool FakeSmtpServer::WaitForMessages(size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return messages_.size() >= n; });
}

void FakeSmtpServer::Serve(int fd) {
  LineReader reader(fd, stopping_, options_.idle_timeout);
  auto reply = [&](const std::string& line) { return SendAll(fd, line + "\r\n"); };
  const bool auth_required = !options_.username.empty();

  SmtpMessage session;  // helo + auth persist; the envelope resets per message
  bool greeted = false;
  bool authenticated = false;
  bool in_transaction = false;

  auto reset_envelope = [&] {
    session.mail_from.clear();
    session.rcpt_to.clear();
    session.data.clear();
    session.headers.clear();
    session.body.clear();
    in_transaction = false;
  };

  if (auto scripted = Scripted("GREETING")) {
    reply(*scripted);
  } else if (reply(fmt::format("220 {} ESMTP fake ready", options_.hostname))) {
    while (true) {
      std::optional<std::string> line = reader.Next();
      if (!line) {
        if (reader.timed_out()) reply("421 4.4.2 Idle timeout, closing connection");
        break;
      }
      std::string verb = Upper(line->substr(0, line->find(' ')));
      std::string argument =
          line->find(' ') == std::string::npos ? "" : line->substr(line->find(' ') + 1);
      Record(verb == "AUTH" ? "C: AUTH " + Upper(argument.substr(0, argument.find(' '))) +
                                  (argument.find(' ') == std::string::npos ? "" : " ***")
                            : "C: " + *line);

      if (verb == "EHLO" || verb == "HELO") {
        if (auto scripted = Scripted(verb)) {
          reply(*scripted);
          continue;
        }
        if (argument.empty()) {
          reply("501 5.5.4 Syntax: " + verb + " hostname");
          continue;
        }
        greeted = true;
        session.helo = argument;
        session.esmtp = verb == "EHLO";
        reset_envelope();
        if (verb == "HELO") {
          reply("250 " + options_.hostname);
          continue;
        }
        std::vector<std::string> lines = {options_.hostname, "SIZE 10240000", "8BITMIME",
                                          "ENHANCEDSTATUSCODES"};
        if (options_.advertise_starttls) lines.push_back("STARTTLS");
        if (auth_required && !options_.auth_mechanisms.empty()) {
          std::string auth = "AUTH";
          for (const std::string& m : options_.auth_mechanisms) auth += " " + m;
          lines.push_back(auth);
        }
        std::string out;
        for (size_t i = 0; i < lines.size(); ++i) {
          out += fmt::format("250{}{}\r\n", i + 1 == lines.size() ? " " : "-", lines[i]);
        }
        SendAll(fd, out);
      } else if (verb == "AUTH") {
        std::string mechanism = Upper(argument.substr(0, argument.find(' ')));
        std::string initial =
            argument.find(' ') == std::string::npos ? "" : argument.substr(argument.find(' ') + 1);
        bool offered = std::find(options_.auth_mechanisms.begin(), options_.auth_mechanisms.end(),
                                 mechanism) != options_.auth_mechanisms.end();
        if (!greeted) {
          reply("503 5.5.1 Error: send EHLO first");
          continue;
        }
        if (!auth_required || !offered) {
          reply("504 5.5.4 Unrecognized authentication type");
          continue;
        }
        if (authenticated) {
          reply("503 5.5.1 Error: already authenticated");
          continue;
        }
        // Reads one SASL response line (after `challenge`); nullopt if the
        // client cancelled ("*") or went away.
        bool cancelled = false;
        auto respond = [&](const std::string& challenge) -> std::optional<std::string> {
          if (!reply(challenge)) return std::nullopt;
          std::optional<std::string> r = reader.Next();
          if (!r) return std::nullopt;
          Record("C: ***");
          if (*r == "*") {
            cancelled = true;
            return std::nullopt;
          }
          return r;
        };
        std::string user;
        std::string pass;
        bool parsed = false;
        if (mechanism == "PLAIN") {
          std::optional<std::string> encoded = initial;
          if (initial.empty()) encoded = respond("334 ");
          if (encoded) {
            absl::StatusOr<std::string> decoded = Base64Decode(*encoded);
            if (decoded.ok()) {
              // authzid NUL authcid NUL passwd
              size_t first = decoded->find('\0');
              size_t second =
                  first == std::string::npos ? std::string::npos : decoded->find('\0', first + 1);
              if (second != std::string::npos) {
                user = decoded->substr(first + 1, second - first - 1);
                pass = decoded->substr(second + 1);
                parsed = true;
              }
            }
          }
        } else if (mechanism == "LOGIN") {
          std::optional<std::string> encoded_user = initial;
          if (initial.empty()) encoded_user = respond("334 VXNlcm5hbWU6");  // "Username:"
          std::optional<std::string> encoded_pass;
          if (encoded_user) encoded_pass = respond("334 UGFzc3dvcmQ6");  // "Password:"
          if (encoded_user && encoded_pass) {
            absl::StatusOr<std::string> u = Base64Decode(*encoded_user);
            absl::StatusOr<std::string> p = Base64Decode(*encoded_pass);
            if (u.ok() && p.ok()) {
              user = *u;
              pass = *p;
              parsed = true;
            }
          }
        }
        if (cancelled) {
          reply("501 5.7.0 Authentication cancelled");
          continue;
        }
        if (!parsed) {
          reply("501 5.5.2 Cannot decode response");
          continue;
        }
        if (auto scripted = Scripted("AUTH")) {
          reply(*scripted);
          continue;
        }
        if (user == options_.username && pass == options_.password) {
          authenticated = true;
          session.auth_mechanism = mechanism;
          session.auth_user = user;
          reply("235 2.7.0 Authentication successful");
        } else {
          {
            std::lock_guard<std::mutex> lock(mu_);
            ++auth_failures_;
          }
          reply("535 5.7.8 Error: authentication failed: bad username or password");
        }
      } else if (verb == "MAIL") {
        if (!greeted) {
          reply("503 5.5.1 Error: send HELO/EHLO first");
        } else if (auth_required && !authenticated) {
          reply("530 5.7.0 Authentication required");
        } else if (in_transaction) {
          reply("503 5.5.1 Error: nested MAIL command");
        } else if (auto from = PathArgument(argument, "FROM:"); !from) {
          reply("501 5.5.4 Syntax: MAIL FROM:<address>");
        } else if (auto scripted = Scripted("MAIL")) {
          reply(*scripted);
        } else {
          session.mail_from = *from;
          in_transaction = true;
          reply("250 2.1.0 Ok");
        }
      } else if (verb == "RCPT") {
        std::optional<std::string> to = PathArgument(argument, "TO:");
        std::optional<std::pair<int, std::string>> rejected;
        if (to) {
          std::lock_guard<std::mutex> lock(mu_);
          auto it = rejected_recipients_.find(Lower(*to));
          if (it != rejected_recipients_.end()) rejected = it->second;
        }
        if (!in_transaction) {
          reply("503 5.5.1 Error: need MAIL command");
        } else if (!to) {
          reply("501 5.5.4 Syntax: RCPT TO:<address>");
        } else if (rejected) {
          reply(fmt::format("{} {}", rejected->first, rejected->second));
        } else if (auto scripted = Scripted("RCPT")) {
          reply(*scripted);
        } else {
          session.rcpt_to.push_back(*to);
          reply("250 2.1.5 Ok");
        }
      } else if (verb == "DATA") {
        if (!in_transaction || session.rcpt_to.empty()) {
          reply("503 5.5.1 Error: need RCPT command");
          continue;
        }
        if (auto scripted = Scripted("DATA")) {
          reply(*scripted);
          continue;
        }
        reply("354 End data with <CR><LF>.<CR><LF>");
        std::string data;
        bool complete = false;
        while (std::optional<std::string> l = reader.Next()) {
          if (*l == ".") {
            complete = true;
            break;
          }
          if (!l->empty() && (*l)[0] == '.') l->erase(0, 1);  // dot-unstuffing
          data += *l + "\r\n";
          if (data.size() > kMaxMessage) break;
        }
        if (!complete) break;
        Record(fmt::format("C: <message of {} bytes>", data.size()));
        if (auto scripted = Scripted("DATA_END")) {
          reply(*scripted);
          reset_envelope();
          continue;
        }
        SmtpMessage message = session;
        message.data = std::move(data);
        ParseMessage(message);
        int id = 0;
        {
          std::lock_guard<std::mutex> lock(mu_);
          messages_.push_back(std::move(message));
          id = ++queue_id_;
        }
        cv_.notify_all();
        reset_envelope();
        reply(fmt::format("250 2.0.0 Ok: queued as FAKE{}", id));
      } else if (verb == "RSET") {
        reset_envelope();
        reply("250 2.0.0 Ok");
      } else if (verb == "NOOP") {
        reply("250 2.0.0 Ok");
      } else if (verb == "STARTTLS") {
        reply("454 4.7.0 TLS not available");
      } else if (verb == "QUIT") {
        reply("221 2.0.0 Bye");
        break;
      } else {
        reply("502 5.5.2 Error: command not recognized");
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
  open_fds_.erase(std::remove(open_fds_.begin(), open_fds_.end(), fd), open_fds_.end());
}

}  // namespace backflow
