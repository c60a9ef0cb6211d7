// The `alerts:` section of the workspace file and the mappings' `alerts:`
// shorthand: parsing, defaults, and every validation error with its position.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#include "backflow/config/workspace.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/sources/sqlite/sqlite_source.h"

namespace backflow {
namespace {

class WorkspaceAlertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(registry_.AddSource(SqliteSourceDefinition()).ok());
    ASSERT_TRUE(registry_
                    .AddDestination(testing::MemoryDestinationDefinition(
                        std::make_shared<testing::MemoryDestinationState>()))
                    .ok());
  }
  // Two mappings (crm, crm_copy) followed by `alerts_yaml`.
  LoadResult Load(const std::string& alerts_yaml, const std::string& crm_extra = "") {
    std::string yaml = R"(
sources: [{ name: s, type: sqlite, path: x.db }]
models: [{ name: customers, source: s, sql: SELECT 1, primary_key: id }]
destinations: [{ name: mem, type: memory }]
mappings:
  - name: crm
    model: customers
    destination: mem
    action: upsert
    fields: { customer_id: id }
)" + crm_extra + R"(
  - name: crm_copy
    model: customers
    destination: mem
    action: upsert
    fields: { customer_id: id }
)" + alerts_yaml;
    return LoadWorkspaceFromString(yaml, "/ws/backflow.yaml", registry_);
  }
  static std::string All(const LoadResult& r) {
    std::string out;
    for (const Diagnostic& d : r.diagnostics) out += d.ToString() + "\n";
    return out;
  }
  Registry registry_;
};

TEST_F(WorkspaceAlertsTest, ParsesEachChannelWithDefaults) {
  setenv("BACKFLOW_TEST_SLACK_URL", "https://hooks.slack.com/services/T1/B2/secret3", 1);
  setenv("BACKFLOW_TEST_SMTP_PASSWORD", "smtp-pass", 1);
  setenv("BACKFLOW_TEST_ALERT_TOKEN", "tok", 1);
  LoadResult r = Load(R"(
alerts:
  - name: hook
    webhook:
      url: https://alerts.example.com/backflow
      headers: { Authorization: "Bearer ${env:BACKFLOW_TEST_ALERT_TOKEN}", X-Team: data }
  - name: chat
    on: [failure, recovery]
    mappings: [crm_copy]
    slack: { webhook_url: "${env:BACKFLOW_TEST_SLACK_URL}" }
  - name: mail
    on: failed_records
    failed_records_threshold: 2.5%
    email:
      smtp_url: smtp://smtp.example.com:587
      username: alerts
      password: ${env:BACKFLOW_TEST_SMTP_PASSWORD}
      from: Backflow <alerts@example.com>
      to: [oncall@example.com, "Data Team <data@example.com>"]
)");
  ASSERT_TRUE(r.ok()) << All(r);
  EXPECT_TRUE(r.diagnostics.empty()) << All(r);
  const Workspace& ws = r.workspace;
  ASSERT_EQ(ws.alerts.size(), 3u);

  const AlertConfig* hook = ws.FindAlert("hook");
  ASSERT_NE(hook, nullptr);
  EXPECT_EQ(hook->channel, AlertConfig::Channel::kWebhook);
  EXPECT_TRUE(hook->on_failure && hook->on_failed_records && hook->on_recovery);
  EXPECT_EQ(hook->failed_records_threshold, 10);
  EXPECT_TRUE(hook->workspace_wide);
  EXPECT_TRUE(hook->Covers("crm"));
  EXPECT_TRUE(hook->Covers("crm_copy"));
  EXPECT_EQ(hook->webhook.url, "https://alerts.example.com/backflow");
  ASSERT_EQ(hook->webhook.headers.size(), 2u);
  EXPECT_EQ(hook->webhook.headers[0],
            (std::pair<std::string, std::string>{"Authorization", "Bearer tok"}));
  EXPECT_EQ(hook->webhook.headers[1], (std::pair<std::string, std::string>{"X-Team", "data"}));

  const AlertConfig* chat = ws.FindAlert("chat");
  ASSERT_NE(chat, nullptr);
  EXPECT_EQ(chat->channel, AlertConfig::Channel::kSlack);
  EXPECT_TRUE(chat->on_failure);
  EXPECT_FALSE(chat->on_failed_records);
  EXPECT_TRUE(chat->on_recovery);
  EXPECT_FALSE(chat->workspace_wide);
  EXPECT_FALSE(chat->Covers("crm"));
  EXPECT_TRUE(chat->Covers("crm_copy"));
  EXPECT_EQ(chat->slack.webhook_url, "https://hooks.slack.com/services/T1/B2/secret3");

  const AlertConfig* mail = ws.FindAlert("mail");
  ASSERT_NE(mail, nullptr);
  EXPECT_EQ(mail->channel, AlertConfig::Channel::kEmail);
  EXPECT_FALSE(mail->on_failure);
  EXPECT_TRUE(mail->on_failed_records);
  EXPECT_FALSE(mail->on_recovery);
  EXPECT_DOUBLE_EQ(mail->failed_records_threshold, 2.5);
  EXPECT_EQ(mail->email.smtp_url, "smtp://smtp.example.com:587");
  EXPECT_EQ(mail->email.username, "alerts");
  EXPECT_EQ(mail->email.password, "smtp-pass");
  EXPECT_EQ(mail->email.from, "Backflow <alerts@example.com>");
  EXPECT_EQ(mail->email.to,
            (std::vector<std::string>{"oncall@example.com", "Data Team <data@example.com>"}));
  EXPECT_TRUE(mail->email.starttls);
}

TEST_F(WorkspaceAlertsTest, MappingShorthandNarrowsTheAlertToThoseMappings) {
  LoadResult r = Load(R"(
alerts:
  - name: oncall
    webhook: { url: "http://127.0.0.1:9/hook" }
  - name: everyone
    webhook: { url: "http://127.0.0.1:9/all" }
)",
                      "    alerts: [oncall]\n");
  ASSERT_TRUE(r.ok()) << All(r);
  EXPECT_EQ(r.workspace.FindMapping("crm")->alerts, (std::vector<std::string>{"oncall"}));
  const AlertConfig* oncall = r.workspace.FindAlert("oncall");
  EXPECT_FALSE(oncall->workspace_wide);
  EXPECT_EQ(oncall->mappings, (std::vector<std::string>{"crm"}));
  EXPECT_TRUE(oncall->Covers("crm"));
  EXPECT_FALSE(oncall->Covers("crm_copy"));
  EXPECT_TRUE(r.workspace.FindAlert("everyone")->Covers("crm_copy"));
}

TEST_F(WorkspaceAlertsTest, ShorthandAndMappingsListAreUnited) {
  LoadResult r = Load(R"(
alerts:
  - name: oncall
    mappings: [crm_copy]
    webhook: { url: "http://127.0.0.1:9/hook" }
)",
                      "    alerts: [oncall, oncall]\n");
  ASSERT_TRUE(r.ok()) << All(r);
  EXPECT_EQ(r.workspace.FindAlert("oncall")->mappings,
            (std::vector<std::string>{"crm", "crm_copy"}));
}

TEST_F(WorkspaceAlertsTest, ReportsEveryErrorWithPositionAndHint) {
  LoadResult r = Load(R"(
alerts:
  - name: a
    on: [failure, failed_record]
    failed_records_threshold: 0.05
    mappings: [crm_cpy]
    webhook: { url: "ftp://x", header: {} }
  - name: b
    slack: { webhook_url: "https://hooks.slack.com/services/T/B/x" }
    email: { smtp_url: "smtp://h", from: a@b.c, to: [x@y.z] }
  - name: c
  - name: d
    on: [recovery]
    email:
      smtp_url: "http://smtp.example.com"
      username: u
      from: not-an-address
      to: []
      starttls: maybe
)",
                      "    alerts: [oncal]\n");
  EXPECT_FALSE(r.ok());
  std::string all = All(r);
  auto has = [&](const std::string& text) {
    EXPECT_NE(all.find(text), std::string::npos) << "missing: " << text << "\n" << all;
  };
  // The mapping's shorthand is checked against the alerts' names.
  has("/ws/backflow.yaml:11:14: error: mappings[0].alerts[0]: unknown alert \"oncal\"");
  has("alerts[0].on[1]: unknown alert event \"failed_record\" (hint: did you mean "
      "\"failed_records\"?)");
  has("alerts[0].failed_records_threshold: \"0.05\" is not a percentage from 0% to below 100% "
      "(hint: e.g. failed_records_threshold: 5%");
  has("alerts[0].mappings[0]: unknown mapping \"crm_cpy\" (hint: did you mean \"crm_copy\"?)");
  has("alerts[0].webhook.header: unknown key \"header\" (hint: did you mean \"headers\"?)");
  has("alerts[0].webhook.url: must be an http:// or https:// URL with a host");
  has("alerts[1].email: \"slack\" and \"email\" are both set: an alert has exactly one channel");
  has("alerts[2]: an alert needs a channel (hint: add one of webhook:");
  has("alerts[3].on: \"recovery\" alone never fires");
  has("alerts[3].email.smtp_url: must be smtp://HOST[:PORT] or smtps://HOST[:PORT]");
  has("alerts[3].email: username and password go together");
  has("alerts[3].email.from: \"not-an-address\" is not an email address");
  has("alerts[3].email.to: must list at least one recipient");
  has("alerts[3].email.starttls: must be true or false");
  // Positions count from the first line of the file: "failed_record" is at line 21.
  has("/ws/backflow.yaml:21:19: error: alerts[0].on[1]:");
  EXPECT_EQ(r.error_count(), 14u) << all;
}

TEST_F(WorkspaceAlertsTest, WarnsAboutCredentialsInClearAndNeverPrintsThem) {
  unsetenv("BACKFLOW_TEST_UNSET_SLACK");
  LoadResult r = Load(R"(
alerts:
  - name: chat
    slack: { webhook_url: "https://hooks.slack.com/services/T1/B2/planted-slack-secret" }
  - name: mail
    failed_records_threshold: 5%
    on: [failure]
    email:
      smtp_url: smtp://127.0.0.1:2525
      username: u
      password: planted-smtp-secret
      starttls: false
      from: a@example.com
      to: b@example.com
  - name: hook
    webhook:
      url: https://x.example.com/h
      headers: { Authorization: "Bearer planted-token" }
  - name: unset
    slack: { webhook_url: "${env:BACKFLOW_TEST_UNSET_SLACK}" }
)");
  std::string all = All(r);
  EXPECT_NE(all.find("warning: alerts[0].slack.webhook_url: Slack webhook URL (it is a "
                     "credential) written in clear"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("warning: alerts[1].email.password: SMTP password written in clear"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("warning: alerts[1].email.starttls: the SMTP password will cross the "
                     "network unencrypted"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("warning: alerts[1].failed_records_threshold: has no effect"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("warning: alerts[2].webhook.headers.Authorization: credential header "
                     "written in clear"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("error: alerts[3].slack.webhook_url: environment variable "
                     "BACKFLOW_TEST_UNSET_SLACK is not set"),
            std::string::npos)
      << all;
  // Only the unset variable is an error, reported once.
  EXPECT_EQ(r.error_count(), 1u) << all;
  EXPECT_EQ(r.workspace.FindAlert("mail")->email.to, (std::vector<std::string>{"b@example.com"}));
  EXPECT_FALSE(r.workspace.FindAlert("mail")->email.starttls);
  for (const char* secret : {"planted-slack-secret", "planted-smtp-secret", "planted-token"}) {
    EXPECT_EQ(all.find(secret), std::string::npos) << secret;
  }
}

TEST_F(WorkspaceAlertsTest, SmtpUrlMustNotCarryCredentials) {
  LoadResult r = Load(R"(
alerts:
  - name: mail
    email: { smtp_url: "smtps://user:pw@smtp.example.com:465", from: a@b.io, to: [c@d.io] }
)");
  std::string all = All(r);
  EXPECT_NE(all.find("alerts[0].email.smtp_url: must not carry credentials"), std::string::npos)
      << all;
  EXPECT_EQ(all.find("user:pw"), std::string::npos) << all;
}

TEST(MailboxAddressTest, AcceptsBareAndNamedAddresses) {
  EXPECT_EQ(MailboxAddress("a.b+c@example.com"), "a.b+c@example.com");
  EXPECT_EQ(MailboxAddress("Data Team <data@example.com>"), "data@example.com");
  EXPECT_EQ(MailboxAddress("no-at-sign"), std::nullopt);
  EXPECT_EQ(MailboxAddress("a@b.io\r\nBcc: x@y.io"), std::nullopt);
  EXPECT_EQ(MailboxAddress("Name <a@b.io"), std::nullopt);
  EXPECT_EQ(MailboxAddress("a b@c.io"), std::nullopt);
  EXPECT_EQ(MailboxAddress("<a@b.io> trailing"), std::nullopt);
}

}  // namespace
}  // namespace backflow
