// The HTTP alert channels: a generic webhook and a Slack incoming webhook.
// Both POST JSON through the project's HttpClient, one attempt per Send()
// (see alert.h for the status codes they return).
//
// Webhook: POSTs AlertWebhookBody() with Content-Type: application/json,
// Idempotency-Key: <message id> (the same on every retry of one delivery)
// and the configured headers. Any 2xx is a delivery.
//
// Slack: POSTs {"text": <fallback>, "blocks": [header, section, fields
// section, context]} as Slack's incoming webhooks document it (Block Kit;
// text escaped for mrkdwn, header ≤ 150 characters, section text ≤ 3000,
// fields ≤ 2000 each). Slack answers 200 "ok"; errors come as plain text
// ("invalid_payload", "no_text", "invalid_blocks", "invalid_token",
// "action_prohibited", "channel_not_found", "no_service",
// "channel_is_archived", ...) and are quoted in the status with what to do.
// 429 carries Retry-After.
//
// The webhook URL of either may be a credential (Slack's always is): error
// messages name it only by scheme and host (RedactedAlertUrl).
// Not thread-safe (AlertManager calls one at a time).
#pragma once

#include <string>

#include "backflow/alerts/alert.h"

namespace backflow {

class WebhookAlertChannel final : public AlertChannel {
 public:
  WebhookAlertChannel(AlertConfig::Webhook config, HttpClient& http, Clock& clock,
                      AlertChannelOptions options);
  std::string_view name() const override { return "webhook"; }
  absl::Status Send(const AlertMessage& message) override;

 private:
  AlertConfig::Webhook config_;
  HttpClient& http_;
  Clock& clock_;
  AlertChannelOptions options_;
};

class SlackAlertChannel final : public AlertChannel {
 public:
  SlackAlertChannel(AlertConfig::Slack config, HttpClient& http, Clock& clock,
                    AlertChannelOptions options);
  std::string_view name() const override { return "slack"; }
  absl::Status Send(const AlertMessage& message) override;

 private:
  AlertConfig::Slack config_;
  HttpClient& http_;
  Clock& clock_;
  AlertChannelOptions options_;
};

// The JSON body the Slack channel posts for `message`.
std::string SlackMessageBody(const AlertMessage& message);

// `text` escaped for Slack mrkdwn: &, < and > as &amp; &lt; &gt;.
std::string SlackEscape(std::string_view text);

}  // namespace backflow
