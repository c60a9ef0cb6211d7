// The email alert channel (libcurl SMTP) against the loopback SMTP fake.
#include "backflow/alerts/smtp_channel.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <regex>

#include "backflow/alerts/alert_manager.h"
#include "backflow/alerts/testing/fake_smtp_server.h"
#include "backflow/common/crypto.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using std::chrono::milliseconds;

AlertMessage Message() {
  AlertMessage m;
  m.id = "mail:crm:failure:7";
  m.alert = "mail";
  m.kind = AlertKind::kFailure;
  m.incident = AlertKind::kFailure;
  m.run.id = 7;
  m.run.mapping = "crm";
  m.run.model = "customers";
  m.run.destination = "hub";
  m.run.trigger = "api";
  m.run.status = RunStatus::kFailed;
  m.run.started_at = "2026-03-01T09:00:00.000Z";
  m.run.finished_at = "2026-03-01T09:00:02.000Z";
  m.run.duration_s = 2;
  // Lines starting with a dot must survive SMTP's dot-stuffing.
  m.run.error = "query failed:\n.hidden line\n.\nend";
  m.failing_runs = 1;
  m.incident_first_run_id = 7;
  m.incident_started_at = m.run.started_at;
  DescribeAlert(m);
  return m;
}

class SmtpChannelTest : public ::testing::Test {
 protected:
  void StartServer(FakeSmtpOptions options = {}) {
    server_ = std::make_unique<FakeSmtpServer>(options);
    ASSERT_TRUE(server_->Start().ok());
  }
  AlertConfig::Email Config() {
    AlertConfig::Email c;
    c.smtp_url = server_->Url();
    c.from = "Backflow Alerts <alerts@example.com>";
    c.to = {"oncall@example.com", "Data Team <data@example.com>"};
    c.starttls = false;
    return c;
  }
  std::unique_ptr<AlertChannel> Channel(const AlertConfig::Email& config,
                                        milliseconds timeout = milliseconds(5000)) {
    auto channel = NewEmailAlertChannel(config, clock_, AlertChannelOptions{timeout});
    EXPECT_TRUE(channel.ok()) << channel.status();
    return std::move(*channel);
  }
  std::string Joined(const std::vector<std::string>& lines) {
    std::string out;
    for (const std::string& l : lines) out += l + "\n";
    return out;
  }

  FakeClock clock_;
  std::unique_ptr<FakeSmtpServer> server_;
};

TEST_F(SmtpChannelTest, SendsAnRfc5322Message) {
  StartServer();
  absl::Status s = Channel(Config())->Send(Message());
  ASSERT_TRUE(s.ok()) << s << "\n" << Joined(server_->Transcript());
  ASSERT_EQ(server_->Messages().size(), 1u);
  const SmtpMessage m = server_->Messages()[0];
  EXPECT_TRUE(m.esmtp);
  EXPECT_FALSE(m.helo.empty());
  EXPECT_EQ(m.mail_from, "alerts@example.com");
  EXPECT_EQ(m.rcpt_to, (std::vector<std::string>{"oncall@example.com", "data@example.com"}));
  EXPECT_TRUE(m.auth_mechanism.empty());

  EXPECT_EQ(m.Header("Date"), "Tue, 14 Nov 2023 22:13:20 +0000");  // FakeClock's start
  EXPECT_EQ(m.Header("From"), "Backflow Alerts <alerts@example.com>");
  EXPECT_EQ(m.Header("To"), "oncall@example.com, Data Team <data@example.com>");
  EXPECT_EQ(m.Header("Subject"), "[Backflow] crm failed (run 7)");
  std::string id = m.Header("Message-ID").value_or("");
  EXPECT_TRUE(std::regex_match(id, std::regex("^<[0-9a-f]{32}\\.1700000000@example\\.com>$")))
      << id;
  EXPECT_EQ(m.Header("MIME-Version"), "1.0");
  EXPECT_EQ(m.Header("Content-Type"), "text/plain; charset=utf-8");
  EXPECT_EQ(m.Header("Content-Transfer-Encoding"), "7bit");
  EXPECT_EQ(m.Header("X-Backflow-Alert"), "mail");
  EXPECT_EQ(m.Header("X-Backflow-Kind"), "failure");
  EXPECT_EQ(m.Header("X-Backflow-Run-Id"), "7");

  EXPECT_EQ(m.body,
            "Mapping crm (customers -> hub) failed in run 7: query failed:\r\n"
            ".hidden line\r\n"
            ".\r\n"
            "end\r\n"
            "\r\n"
            "Alert:       mail (failure)\r\n"
            "Mapping:     crm\r\n"
            "Model:       customers\r\n"
            "Destination: hub\r\n"
            "Run:         7, failed, triggered by api\r\n"
            "Started:     2026-03-01T09:00:00.000Z\r\n"
            "Finished:    2026-03-01T09:00:02.000Z\r\n"
            "Duration:    2.0 s\r\n"
            "Records:     0 succeeded, 0 failed, 0 rejected (0.00% failed or rejected)\r\n"
            "Error:       query failed:\r\n"
            ".hidden line\r\n"
            ".\r\n"
            "end\r\n"
            "\r\n"
            "Details: backflow runs show 7\r\n"
            "\r\n"
            "-- \r\n"
            "Sent by Backflow (alert \"mail\").\r\n");
  // Each message gets its own Message-ID.
  ASSERT_TRUE(Channel(Config())->Send(Message()).ok());
  EXPECT_NE(server_->Messages()[1].Header("Message-ID"), m.Header("Message-ID"));
}

TEST_F(SmtpChannelTest, LogsInWithPlainOrLoginAndNeverShowsThePassword) {
  for (const char* mechanism : {"PLAIN", "LOGIN"}) {
    FakeSmtpOptions options;
    options.username = "alerts@example.com";
    options.password = "planted-smtp-password";
    options.auth_mechanisms = {mechanism};
    StartServer(options);
    AlertConfig::Email config = Config();
    config.username = "alerts@example.com";
    config.password = "planted-smtp-password";
    absl::Status s = Channel(config)->Send(Message());
    ASSERT_TRUE(s.ok()) << mechanism << ": " << s << "\n" << Joined(server_->Transcript());
    ASSERT_EQ(server_->Messages().size(), 1u);
    EXPECT_EQ(server_->Messages()[0].auth_mechanism, mechanism);
    EXPECT_EQ(server_->Messages()[0].auth_user, "alerts@example.com");
    std::string transcript = Joined(server_->Transcript());
    EXPECT_NE(transcript.find(fmt::format("C: AUTH {}", mechanism)), std::string::npos)
        << transcript;
    EXPECT_EQ(transcript.find("planted-smtp-password"), std::string::npos);
    EXPECT_EQ(transcript.find(Base64Encode("planted-smtp-password")), std::string::npos);
  }
}

TEST_F(SmtpChannelTest, AWrongPasswordIsAnAuthenticationError) {
  FakeSmtpOptions options;
  options.username = "alerts";
  options.password = "right";
  StartServer(options);
  AlertConfig::Email config = Config();
  config.username = "alerts";
  config.password = "planted-wrong-password";
  absl::Status s = Channel(config)->Send(Message());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_NE(s.message().find("refused the login (AUTH "), std::string::npos) << s;
  EXPECT_NE(s.message().find("535 5.7.8"), std::string::npos) << s;
  EXPECT_NE(s.message().find("check the alert's email.username and email.password"),
            std::string::npos)
      << s;
  EXPECT_EQ(s.message().find("planted-wrong-password"), std::string::npos) << s;
  EXPECT_EQ(server_->auth_failures(), 1);
  EXPECT_TRUE(server_->Messages().empty());
}

TEST_F(SmtpChannelTest, WithoutLoginTheServerRequiresAuth) {
  FakeSmtpOptions options;
  options.username = "alerts";
  options.password = "pw";
  StartServer(options);
  absl::Status s = Channel(Config())->Send(Message());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_NE(s.message().find("530 5.7.0 Authentication required"), std::string::npos) << s;
}

TEST_F(SmtpChannelTest, ARefusedRecipientIsReportedClearlyAndNotRetried) {
  StartServer();
  server_->RejectRecipient("data@example.com", 550,
                           "5.1.1 <data@example.com>: Recipient address rejected: User unknown");
  AlertConfig alert;
  alert.name = "mail";
  alert.channel = AlertConfig::Channel::kEmail;
  alert.email = Config();
  auto store = OpenSqliteStateStore(":memory:");
  ASSERT_TRUE(store.ok());
  std::vector<std::unique_ptr<AlertChannel>> channels;
  channels.push_back(Channel(alert.email));
  auto manager =
      AlertManager::CreateWithChannels({alert}, std::move(channels), **store, clock_, {});
  ASSERT_TRUE(manager.ok());
  AlertReport report = (*manager)->OnRunFinished(Message().run);
  ASSERT_EQ(report.events.size(), 1u);
  const AlertEvent& e = report.events[0];
  EXPECT_EQ(e.event, "alert_failed");
  EXPECT_EQ(e.channel, "email");
  EXPECT_EQ(e.attempts, 1);
  EXPECT_EQ(e.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(e.status.message(),
            fmt::format("SMTP server smtp://127.0.0.1:{} refused the recipient "
                        "RCPT TO:<data@example.com>: 550 5.1.1 <data@example.com>: Recipient "
                        "address rejected: User unknown (check the alert's email.to)",
                        server_->port()));
  EXPECT_TRUE(server_->Messages().empty());
}

TEST_F(SmtpChannelTest, ATemporaryRefusalIsRetried) {
  StartServer();
  server_->FailCommand("MAIL", 451, "4.3.0 Try again later");
  AlertConfig alert;
  alert.name = "mail";
  alert.channel = AlertConfig::Channel::kEmail;
  alert.email = Config();
  auto store = OpenSqliteStateStore(":memory:");
  ASSERT_TRUE(store.ok());
  std::vector<std::unique_ptr<AlertChannel>> channels;
  channels.push_back(Channel(alert.email));
  AlertManagerOptions options;
  options.first_backoff = milliseconds(1500);
  auto manager =
      AlertManager::CreateWithChannels({alert}, std::move(channels), **store, clock_, {}, options);
  ASSERT_TRUE(manager.ok());
  AlertReport report = (*manager)->OnRunFinished(Message().run);
  ASSERT_EQ(report.events.size(), 1u);
  EXPECT_EQ(report.events[0].event, "alert_sent") << report.events[0].status;
  EXPECT_EQ(report.events[0].attempts, 2);
  EXPECT_EQ(clock_.total_slept(), std::chrono::duration_cast<Clock::Duration>(milliseconds(1500)));
  EXPECT_EQ(server_->Messages().size(), 1u);
}

TEST_F(SmtpChannelTest, RefusalsAtEachStepNameTheStep) {
  StartServer();
  struct Case {
    const char* verb;
    int code;
    const char* text;
    absl::StatusCode status;
    const char* expected;
  };
  for (const Case& c : {
           Case{"MAIL", 553, "5.7.1 Sender address rejected: not owned by user",
                absl::StatusCode::kFailedPrecondition,
                "refused the sender MAIL FROM:<alerts@example.com>: 553 5.7.1 Sender address "
                "rejected: not owned by user (check the alert's email.from"},
           Case{"DATA_END", 554, "5.7.1 Message rejected as spam",
                absl::StatusCode::kFailedPrecondition,
                "refused the message: 554 5.7.1 Message rejected as spam"},
           Case{"GREETING", 554, "5.3.2 No SMTP service here",
                absl::StatusCode::kFailedPrecondition,
                "refused the connection: 554 5.3.2 No SMTP service here"},
           Case{"RCPT", 452, "4.5.3 Too many recipients", absl::StatusCode::kUnavailable,
                "refused the recipient RCPT TO:<oncall@example.com>: 452 4.5.3 Too many "
                "recipients (a temporary refusal; retried)"},
       }) {
    server_->FailCommand(c.verb, c.code, c.text);
    absl::Status s = Channel(Config())->Send(Message());
    EXPECT_EQ(s.code(), c.status) << c.verb << ": " << s;
    EXPECT_NE(s.message().find(c.expected), std::string::npos) << c.verb << ": " << s;
  }
  EXPECT_TRUE(server_->Messages().empty());
}

TEST_F(SmtpChannelTest, StartTlsIsRequiredWhenConfigured) {
  for (bool advertise : {false, true}) {
    FakeSmtpOptions options;
    options.advertise_starttls = advertise;
    StartServer(options);
    AlertConfig::Email config = Config();
    config.starttls = true;
    absl::Status s = Channel(config)->Send(Message());
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("does not offer STARTTLS"), std::string::npos) << s;
    EXPECT_TRUE(server_->Messages().empty());
    // Nothing in clear after the refusal: no MAIL was sent.
    std::string transcript = Joined(server_->Transcript());
    EXPECT_EQ(transcript.find("C: MAIL"), std::string::npos) << transcript;
    if (advertise) {
      EXPECT_NE(s.message().find("454 4.7.0 TLS not available"), std::string::npos) << s;
    }
  }
}

TEST_F(SmtpChannelTest, UnreachableServerIsTransient) {
  StartServer();
  std::string url = server_->Url();
  server_->Stop();
  AlertConfig::Email config = Config();
  config.smtp_url = url;
  absl::Status s = Channel(config)->Send(Message());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find(fmt::format("SMTP server {} could not be reached", url)),
            std::string::npos)
      << s;
}

TEST_F(SmtpChannelTest, ASilentServerTimesOut) {
  // A socket that accepts connections (in the kernel backlog) and never
  // greets: the attempt ends at the channel's timeout.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  AlertConfig::Email config;
  config.smtp_url = fmt::format("smtp://127.0.0.1:{}", ntohs(addr.sin_port));
  config.from = "a@example.com";
  config.to = {"b@example.com"};
  config.starttls = false;
  absl::Status s = Channel(config, milliseconds(300))->Send(Message());
  ::close(fd);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("did not answer within 300 ms"), std::string::npos) << s;
}

TEST(SmtpMessageTest, NonAsciiSubjectIsEncodedAndBodyIs8bit) {
  AlertConfig::Email config;
  config.from = "a@example.com";
  config.to = {"b@example.com"};
  AlertMessage m = Message();
  m.subject = "[Backflow] clients_é failed";
  m.summary = "Échec";
  std::string mail = BuildAlertEmail(config, m, FakeClock().Now(), "<id@example.com>");
  EXPECT_NE(
      mail.find("Subject: =?UTF-8?B?" + Base64Encode("[Backflow] clients_é failed") + "?=\r\n"),
      std::string::npos)
      << mail;
  EXPECT_NE(mail.find("Content-Transfer-Encoding: 8bit\r\n"), std::string::npos) << mail;
  EXPECT_NE(mail.find("\r\n\r\nÉchec\r\n"), std::string::npos) << mail;
}

TEST(SmtpMessageTest, LongLinesAreSplitBelowTheSmtpLimit) {
  AlertConfig::Email config;
  config.from = "a@example.com";
  config.to = {"b@example.com"};
  AlertMessage m = Message();
  m.run.error = std::string(3000, 'x');
  m.summary = "s";
  std::string mail = BuildAlertEmail(config, m, FakeClock().Now(), "<id@example.com>");
  size_t start = 0;
  size_t longest = 0;
  for (size_t end; (end = mail.find("\r\n", start)) != std::string::npos; start = end + 2) {
    longest = std::max(longest, end - start);
  }
  EXPECT_EQ(longest, 998u);
  EXPECT_EQ(mail.find('\n', 0) - 1, mail.find('\r'));  // CRLF, not bare LF
}

TEST(SmtpMessageTest, Rfc5322Date) {
  EXPECT_EQ(Rfc5322Date(Clock::TimePoint(std::chrono::seconds(0))),
            "Thu, 01 Jan 1970 00:00:00 +0000");
  EXPECT_EQ(Rfc5322Date(Clock::TimePoint(std::chrono::seconds(1'772'400'005))),
            "Sun, 01 Mar 2026 21:20:05 +0000");
}

}  // namespace
}  // namespace backflow
