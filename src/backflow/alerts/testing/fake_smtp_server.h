// FakeSmtpServer: a loopback SMTP server (RFC 5321, plain TCP) for tests.
//
// It speaks the receiving side of a mail submission:
//   220 greeting; EHLO (multi-line 250 listing SIZE, 8BITMIME, and AUTH with
//   the configured mechanisms when credentials are set, STARTTLS only when
//   asked to advertise it) or HELO; AUTH PLAIN (with or without an initial
//   response) and AUTH LOGIN, checked against the configured credentials
//   (235 / 535; "*" cancels with 501); MAIL FROM:<...> (530 before AUTH when
//   credentials are set; 503 before EHLO/HELO); RCPT TO:<...> (503 before
//   MAIL); DATA (503 without a recipient; 354, then the message up to
//   "<CRLF>.<CRLF>", dot-unstuffed, 250 with a queue id); RSET, NOOP, QUIT
//   (221, then closes); STARTTLS is answered 454 (the fake has no TLS);
//   anything else 502. Lines are CRLF-terminated; a bare LF is accepted.
// Failures can be scripted per command: the next `times` occurrences of a
// verb ("EHLO", "AUTH", "MAIL", "RCPT", "DATA", or "DATA_END" for the reply
// after the message, or "GREETING") get the given code and text instead,
// and a recipient can be refused by address.
// Every accepted message is recorded with its envelope, the parsed header
// fields (unfolded) and body; the client's commands are recorded too, with
// AUTH responses replaced by "***".
//
// Thread-safety: every public method is thread-safe. Start() binds
// 127.0.0.1 on an ephemeral port (kUnavailable on failure); Stop() (also run
// by the destructor) closes every connection and joins all threads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace backflow {

struct FakeSmtpOptions {
  // Non-empty: AUTH is advertised and required before MAIL.
  std::string username;
  std::string password;
  std::vector<std::string> auth_mechanisms = {"PLAIN", "LOGIN"};
  bool advertise_starttls = false;
  std::string hostname = "fake-smtp.test";
  // A connection idle this long is closed (421).
  std::chrono::milliseconds idle_timeout{10'000};
};

struct SmtpMessage {
  std::string helo;            // the EHLO / HELO argument
  bool esmtp = false;          // EHLO rather than HELO
  std::string auth_mechanism;  // "PLAIN" / "LOGIN"; empty without AUTH
  std::string auth_user;
  std::string mail_from;             // the address between < and >
  std::vector<std::string> rcpt_to;  // the accepted recipients
  std::string data;                  // as received, dot-unstuffed, CRLF line ends
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased, unfolded
  std::string body;                                          // after the blank line

  std::optional<std::string> Header(std::string_view name) const;
};

class FakeSmtpServer {
 public:
  explicit FakeSmtpServer(FakeSmtpOptions options = {});
  ~FakeSmtpServer();
  FakeSmtpServer(const FakeSmtpServer&) = delete;
  FakeSmtpServer& operator=(const FakeSmtpServer&) = delete;

  absl::Status Start();
  void Stop();
  int port() const { return port_; }
  // "smtp://127.0.0.1:<port>".
  std::string Url() const;

  // The next `times` occurrences of `verb` are answered `code text`.
  void FailCommand(std::string verb, int code, std::string text, int times = 1);
  // RCPT TO:<address> is answered `code text` (until the server stops).
  void RejectRecipient(std::string address, int code, std::string text);

  std::vector<SmtpMessage> Messages() const;
  // Client lines in arrival order, "C: EHLO x" style, AUTH data masked.
  std::vector<std::string> Transcript() const;
  int auth_failures() const;
  int connections() const;
  // Waits until `n` messages were accepted. False on timeout.
  bool WaitForMessages(size_t n, std::chrono::milliseconds timeout) const;

 private:
  void AcceptLoop();
  void Serve(int fd);
  // The scripted reply for `verb`, if any (consumes one occurrence).
  std::optional<std::string> Scripted(const std::string& verb);
  void Record(std::string line);

  FakeSmtpOptions options_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread accept_thread_;
  std::atomic<bool> stopping_{false};

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<int> open_fds_;
  std::vector<std::thread> threads_;
  struct Failure {
    int code;
    std::string text;
    int times;
  };
  std::map<std::string, std::vector<Failure>> failures_;
  std::map<std::string, std::pair<int, std::string>> rejected_recipients_;
  std::vector<SmtpMessage> messages_;
  std::vector<std::string> transcript_;
  int auth_failures_ = 0;
  int connections_ = 0;
  int queue_id_ = 0;
};

}  // namespace backflow
