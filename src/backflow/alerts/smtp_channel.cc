#include "backflow/alerts/smtp_channel.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backflow/common/crypto.h"
#include "fmt/format.h"

namespace backflow {
namespace {

void EnsureCurlGlobalInit() {
  static const CURLcode kInit = curl_global_init(CURL_GLOBAL_DEFAULT);
  (void)kInit;
}

bool IsAsciiText(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x80 && (u >= 0x20 || c == '\t');
  });
}

bool IsUtf8Start(char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }

// A header value as RFC 2047 encoded words when it is not plain ASCII.
std::string EncodeHeaderText(std::string_view text) {
  std::string clean;
  for (char c : text) clean += (c == '\r' || c == '\n') ? ' ' : c;
  if (IsAsciiText(clean)) return clean;
  // Encoded words of at most 75 characters: 45 bytes of text each, cut
  // between UTF-8 characters.
  std::string out;
  size_t pos = 0;
  while (pos < clean.size()) {
    size_t end = std::min(clean.size(), pos + 45);
    while (end < clean.size() && end > pos + 1 && !IsUtf8Start(clean[end])) --end;
    if (!out.empty()) out += "\r\n ";
    out += "=?UTF-8?B?" + Base64Encode(std::string_view(clean).substr(pos, end - pos)) + "?=";
    pos = end;
  }
  return out;
}

// `text` with CRLF line ends and no line longer than 998 bytes.
std::string SmtpLines(std::string_view text) {
  constexpr size_t kMaxLine = 998;
  std::string out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    std::string_view line =
        text.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    while (line.size() > kMaxLine) {
      size_t cut = kMaxLine;
      while (cut > 1 && !IsUtf8Start(line[cut])) --cut;
      out.append(line.substr(0, cut));
      out += "\r\n";
      line.remove_prefix(cut);
    }
    out.append(line);
    out += "\r\n";
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
  return out;
}

std::string NewMessageId(const std::string& from, Clock::TimePoint now) {
  std::random_device random;
  std::string bytes(16, '\0');
  for (char& b : bytes) b = static_cast<char>(random() & 0xFF);
  std::string address = MailboxAddress(from).value_or("backflow@localhost");
  std::string domain = address.substr(address.find('@') + 1);
  auto seconds = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  return fmt::format("<{}.{}@{}>", HexEncode(bytes), seconds, domain);
}

// What the SMTP dialogue showed, from libcurl's debug callback: the last
// command (credentials left out) and the server's last reply.
struct Transcript {
  std::string command;     // "MAIL FROM:<a@b.io>", "RCPT TO:<c@d.io>", "AUTH LOGIN", "DATA", ...
  bool in_auth = false;    // lines sent now are SASL responses: never recorded
  bool quitting = false;   // QUIT went out: what follows is not the failure
  bool data_sent = false;  // the message went out after DATA
  int code = 0;            // of the last complete reply
  std::string reply;       // the last complete reply, lines joined by " "
  std::string partial;     // continuation lines ("250-...") of a reply in progress
};

int OnDebug(CURL*, curl_infotype type, char* data, size_t size, void* user) {
  auto* t = static_cast<Transcript*>(user);
  std::string_view text(data, size);
  if (t->quitting) return 0;
  if (type == CURLINFO_HEADER_OUT) {
    if (t->in_auth) return 0;
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    std::string line(text);
    std::string verb = line.substr(0, line.find(' '));
    std::transform(verb.begin(), verb.end(), verb.begin(), ::toupper);
    if (verb == "QUIT") {
      t->quitting = true;
      return 0;
    }
    t->data_sent = false;
    if (verb == "AUTH") {
      t->in_auth = true;
      size_t mech_start = std::min(line.size(), verb.size() + 1);
      t->command = "AUTH " + line.substr(mech_start, line.find(' ', mech_start) - mech_start);
    } else if (verb == "MAIL" || verb == "RCPT") {
      size_t close = line.find('>');
      t->command = close == std::string::npos ? line : line.substr(0, close + 1);
    } else {
      t->command = verb;
    }
  } else if (type == CURLINFO_DATA_OUT) {
    t->data_sent = true;
  } else if (type == CURLINFO_HEADER_IN) {
    size_t start = 0;
    while (start < text.size()) {
      size_t nl = text.find('\n', start);
      std::string_view line =
          text.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
      start = nl == std::string_view::npos ? text.size() : nl + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.size() < 3 || !std::isdigit(static_cast<unsigned char>(line[0]))) continue;
      std::string_view rest = line.size() > 4 ? line.substr(4) : "";
      if (line.size() > 3 && line[3] == '-') {
        if (!t->partial.empty()) t->partial += " ";
        t->partial += std::string(rest);
        continue;
      }
      t->code = std::atoi(std::string(line.substr(0, 3)).c_str());
      t->reply = std::string(line.substr(0, 3));
      if (!t->partial.empty()) t->reply += " " + t->partial;
      if (!rest.empty()) t->reply += " " + std::string(rest);
      t->partial.clear();
      if (t->in_auth && t->code != 334) t->in_auth = false;
    }
  }
  return 0;
}

struct Upload {
  const std::string& data;
  size_t offset = 0;
};

size_t OnRead(char* buffer, size_t size, size_t nitems, void* user) {
  auto* u = static_cast<Upload*>(user);
  size_t n = std::min(size * nitems, u->data.size() - u->offset);
  std::memcpy(buffer, u->data.data() + u->offset, n);
  u->offset += n;
  return n;
}

struct CurlDeleter {
  void operator()(CURL* h) const { curl_easy_cleanup(h); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

class EmailAlertChannel final : public AlertChannel {
 public:
  EmailAlertChannel(AlertConfig::Email config, Clock& clock, AlertChannelOptions options)
      : config_(std::move(config)), clock_(clock), options_(options) {
    EnsureCurlGlobalInit();
  }
  std::string_view name() const override { return "email"; }

  absl::Status Send(const AlertMessage& message) override {
    std::unique_ptr<CURL, CurlDeleter> handle(curl_easy_init());
    if (!handle) return absl::InternalError("curl_easy_init failed");
    CURL* h = handle.get();
    Clock::TimePoint now = clock_.Now();
    std::string mail = BuildAlertEmail(config_, message, now, NewMessageId(config_.from, now));
    Upload upload{mail};
    Transcript transcript;
    char error_buffer[CURL_ERROR_SIZE] = {0};

    std::string from = "<" + MailboxAddress(config_.from).value_or(config_.from) + ">";
    curl_slist* raw_rcpt = nullptr;
    for (const std::string& to : config_.to) {
      std::string rcpt = "<" + MailboxAddress(to).value_or(to) + ">";
      raw_rcpt = curl_slist_append(raw_rcpt, rcpt.c_str());
    }
    std::unique_ptr<curl_slist, SlistDeleter> rcpt(raw_rcpt);

    long timeout_ms = std::max<long>(1, static_cast<long>(options_.timeout.count()));
    curl_easy_setopt(h, CURLOPT_URL, config_.smtp_url.c_str());
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error_buffer);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (config_.starttls && config_.smtp_url.rfind("smtp://", 0) == 0) {
      curl_easy_setopt(h, CURLOPT_USE_SSL, static_cast<long>(CURLUSESSL_ALL));
    }
    if (!config_.username.empty()) {
      curl_easy_setopt(h, CURLOPT_USERNAME, config_.username.c_str());
      curl_easy_setopt(h, CURLOPT_PASSWORD, config_.password.c_str());
    }
    curl_easy_setopt(h, CURLOPT_MAIL_FROM, from.c_str());
    curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpt.get());
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, &OnRead);
    curl_easy_setopt(h, CURLOPT_READDATA, &upload);
    curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(mail.size()));
    // The debug callback sees the dialogue (to explain a refusal); with it
    // set, VERBOSE writes nothing to stderr.
    curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, &OnDebug);
    curl_easy_setopt(h, CURLOPT_DEBUGDATA, &transcript);
    curl_easy_setopt(h, CURLOPT_VERBOSE, 1L);

    CURLcode rc = curl_easy_perform(h);
    if (rc == CURLE_OK) return absl::OkStatus();
    std::string detail = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(rc);
    return Failure(rc, detail, transcript);
  }

 private:
  absl::Status Failure(CURLcode rc, const std::string& detail, const Transcript& t) const {
    std::string server = fmt::format("SMTP server {}", RedactedAlertUrl(config_.smtp_url));
    if (rc == CURLE_OPERATION_TIMEDOUT) {
      return absl::DeadlineExceededError(
          fmt::format("{} did not answer within {} ms{}", server, options_.timeout.count(),
                      t.command.empty() ? "" : fmt::format(" (after {})", t.command)));
    }
    if (rc == CURLE_USE_SSL_FAILED) {
      return absl::FailedPreconditionError(fmt::format(
          "{} does not offer STARTTLS{} (use the server's STARTTLS port, usually 587, or "
          "smtps:// on port 465; set starttls: false only for a local relay you trust)",
          server, t.code >= 400 ? fmt::format(": {}", t.reply) : ""));
    }
    if (t.code >= 400) {
      std::string step;
      std::string hint;
      if (t.command.rfind("RCPT", 0) == 0) {
        step = "refused the recipient " + t.command;
        hint = "check the alert's email.to";
      } else if (t.command.rfind("MAIL", 0) == 0) {
        step = "refused the sender " + t.command;
        hint =
            "check the alert's email.from: servers often accept only their own domains or "
            "the logged-in user as sender";
      } else if (t.command.rfind("AUTH", 0) == 0) {
        step = "refused the login (" + t.command + ")";
        hint = "check the alert's email.username and email.password";
      } else if (t.command == "DATA") {
        step = t.data_sent ? "refused the message" : "refused DATA";
        hint = "the server's reply says why";
      } else if (t.command.empty()) {
        step = "refused the connection";
        hint = "check the alert's email.smtp_url";
      } else {
        step = "refused " + t.command;
        hint = "the server's reply says why";
      }
      std::string message = fmt::format("{} {}: {}", server, step, t.reply);
      if (t.code < 500) {
        return absl::UnavailableError(message + " (a temporary refusal; retried)");
      }
      if (t.code == 530 || t.code == 534 || t.code == 535 || t.code == 538) {
        return absl::UnauthenticatedError(
            fmt::format("{} ({})", message,
                        "check the alert's email.username and "
                        "email.password; the server requires a login"));
      }
      return absl::FailedPreconditionError(fmt::format("{} ({})", message, hint));
    }
    switch (rc) {
      case CURLE_LOGIN_DENIED:
        return absl::UnauthenticatedError(fmt::format(
            "{} refused the login: {} (check the alert's email.username and email.password)",
            server, detail));
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_SSL_CERTPROBLEM:
        return absl::FailedPreconditionError(
            fmt::format("{}: its TLS certificate is not trusted: {} (check the host name in "
                        "email.smtp_url)",
                        server, detail));
      default:
        return absl::UnavailableError(fmt::format("{} could not be reached: {}", server, detail));
    }
  }

  AlertConfig::Email config_;
  Clock& clock_;
  AlertChannelOptions options_;
};

}  // namespace

std::string Rfc5322Date(Clock::TimePoint t) {
  static const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  std::time_t seconds = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  return fmt::format("{}, {:02} {} {} {:02}:{:02}:{:02} +0000", kDays[tm.tm_wday], tm.tm_mday,
                     kMonths[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

std::string BuildAlertEmail(const AlertConfig::Email& config, const AlertMessage& m,
                            Clock::TimePoint now, const std::string& message_id) {
  const RunInfo& run = m.run;
  std::string body = m.summary + "\n\n";
  auto row = [&](std::string_view label, const std::string& value) {
    body += fmt::format("{:<13}{}\n", std::string(label) + ":", value);
  };
  row("Alert", fmt::format("{} ({})", m.alert, AlertKindName(m.kind)));
  row("Mapping", run.mapping);
  row("Model", run.model);
  row("Destination", run.destination);
  row("Run",
      fmt::format("{}, {}, triggered by {}", run.id, RunStatusName(run.status), run.trigger));
  row("Started", run.started_at);
  row("Finished", run.finished_at);
  row("Duration", fmt::format("{:.1f} s", run.duration_s));
  row("Records", fmt::format("{} succeeded, {} failed, {} rejected ({:.2f}% failed or rejected)",
                             run.counts.succeeded, run.counts.failed, run.counts.rejected,
                             m.failed_share_percent));
  if (!run.error.empty()) row("Error", run.error);
  body += fmt::format("\nDetails: backflow runs show {}\n", run.id);
  body += "\n-- \nSent by Backflow (alert \"" + m.alert + "\").\n";

  std::string to;
  for (const std::string& r : config.to) to += (to.empty() ? "" : ",\r\n ") + r;
  std::string headers;
  headers += "Date: " + Rfc5322Date(now) + "\r\n";
  headers += "From: " + config.from + "\r\n";
  headers += "To: " + to + "\r\n";
  headers += "Subject: " + EncodeHeaderText(m.subject) + "\r\n";
  headers += "Message-ID: " + message_id + "\r\n";
  headers += "MIME-Version: 1.0\r\n";
  headers += "Content-Type: text/plain; charset=utf-8\r\n";
  bool ascii = std::all_of(body.begin(), body.end(),
                           [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  headers += std::string("Content-Transfer-Encoding: ") + (ascii ? "7bit" : "8bit") + "\r\n";
  headers += "X-Backflow-Alert: " + m.alert + "\r\n";
  headers += "X-Backflow-Kind: " + std::string(AlertKindName(m.kind)) + "\r\n";
  headers += fmt::format("X-Backflow-Run-Id: {}\r\n", run.id);
  return headers + "\r\n" + SmtpLines(body);
}

absl::StatusOr<std::unique_ptr<AlertChannel>> NewEmailAlertChannel(const AlertConfig::Email& config,
                                                                   Clock& clock,
                                                                   AlertChannelOptions options) {
  if (config.smtp_url.rfind("smtp://", 0) != 0 && config.smtp_url.rfind("smtps://", 0) != 0) {
    return absl::InvalidArgumentError("email.smtp_url must start with smtp:// or smtps://");
  }
  if (!MailboxAddress(config.from)) {
    return absl::InvalidArgumentError("email.from is not an email address");
  }
  if (config.to.empty()) return absl::InvalidArgumentError("email.to names no recipient");
  for (const std::string& to : config.to) {
    if (!MailboxAddress(to)) {
      return absl::InvalidArgumentError(
          fmt::format("email.to: \"{}\" is not an email address", to));
    }
  }
  return std::unique_ptr<AlertChannel>(new EmailAlertChannel(config, clock, options));
}

}  // namespace backflow
