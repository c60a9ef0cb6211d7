#include "backflow/alerts/http_channels.h"

#include <cctype>
#include <string>
#include <vector>

#include "backflow/common/errors.h"
#include "backflow/common/json_writer.h"
#include "backflow/delivery/http_delivery.h"
#include "fmt/format.h"

namespace backflow {
namespace {

// Slack's documented limits (characters).
constexpr size_t kSlackHeaderMax = 150;
constexpr size_t kSlackSectionMax = 3000;
constexpr size_t kSlackFieldMax = 2000;

// At most `max` UTF-8 characters of `text`, ending in "…" when cut.
std::string TruncateChars(std::string_view text, size_t max) {
  auto starts_char = [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; };
  size_t chars = 0;
  for (char c : text) chars += starts_char(c) ? 1 : 0;
  if (chars <= max) return std::string(text);
  size_t keep = max - 1;
  size_t seen = 0;
  size_t i = 0;
  for (; i < text.size(); ++i) {
    if (!starts_char(text[i])) continue;
    if (seen == keep) break;
    ++seen;
  }
  return std::string(text.substr(0, i)) + "…";
}

std::string Trimmed(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

// A transport error from HttpClient, with the URL (which may be a
// credential) replaced by its redacted form and the status code kept.
absl::Status TransportError(const absl::Status& status, const std::string& what,
                            const std::string& url) {
  std::string detail(status.message());
  size_t failed = detail.find(" failed: ");
  if (failed != std::string::npos) detail = detail.substr(failed + 9);
  // Belt and braces: no part of the URL past the host survives.
  for (size_t pos; (pos = detail.find(url)) != std::string::npos;) {
    detail.replace(pos, url.size(), RedactedAlertUrl(url));
  }
  std::string message =
      fmt::format("{} {} could not be reached: {}", what, RedactedAlertUrl(url), detail);
  return absl::Status(status.code(), message);
}

absl::Status RateLimited(const HttpResponse& r, Clock& clock, std::string message) {
  absl::Status status = absl::ResourceExhaustedError(std::move(message));
  if (auto header = r.Header("retry-after")) {
    if (auto delay = ParseRetryAfter(*header, clock.Now())) {
      return WithRetryAfter(status, *delay);
    }
  }
  return status;
}

void RunFields(JsonWriter& w, const AlertMessage& m) {
  const RunInfo& run = m.run;
  auto field = [&](std::string_view label, const std::string& value) {
    w.BeginObject();
    w.Key("type").String("mrkdwn");
    w.Key("text").String(
        TruncateChars(fmt::format("*{}*\n{}", label, SlackEscape(value)), kSlackFieldMax));
    w.EndObject();
  };
  field("Mapping", run.mapping);
  field("Model", run.model);
  field("Destination", run.destination);
  field("Run", fmt::format("{} ({})", run.id, RunStatusName(run.status)));
  field("Records", fmt::format("{} succeeded, {} failed, {} rejected", run.counts.succeeded,
                               run.counts.failed, run.counts.rejected));
  if (!run.error.empty()) field("Error", run.error);
}

}  // namespace

std::string SlackEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string SlackMessageBody(const AlertMessage& m) {
  std::string title = m.subject;
  if (title.rfind("[Backflow] ", 0) == 0) title.erase(0, 11);
  const char* emoji = m.kind == AlertKind::kFailure         ? ":rotating_light: "
                      : m.kind == AlertKind::kFailedRecords ? ":warning: "
                                                            : ":white_check_mark: ";
  JsonWriter w;
  w.BeginObject();
  // The notification text, and what clients without Block Kit show.
  w.Key("text").String(TruncateChars(SlackEscape(m.subject + ": " + m.summary), kSlackSectionMax));
  w.Key("blocks").BeginArray();

  w.BeginObject();
  w.Key("type").String("header");
  w.Key("text").BeginObject();
  w.Key("type").String("plain_text");
  w.Key("text").String(TruncateChars(emoji + title, kSlackHeaderMax));
  w.Key("emoji").Bool(true);
  w.EndObject();
  w.EndObject();

  w.BeginObject();
  w.Key("type").String("section");
  w.Key("text").BeginObject();
  w.Key("type").String("mrkdwn");
  w.Key("text").String(TruncateChars(SlackEscape(m.summary), kSlackSectionMax));
  w.EndObject();
  w.EndObject();

  w.BeginObject();
  w.Key("type").String("section");
  w.Key("fields").BeginArray();
  RunFields(w, m);
  w.EndArray();
  w.EndObject();

  w.BeginObject();
  w.Key("type").String("context");
  w.Key("elements").BeginArray();
  w.BeginObject();
  w.Key("type").String("mrkdwn");
  w.Key("text").String(TruncateChars(
      SlackEscape(fmt::format("Backflow alert {} · {} · run started {}, finished {}", m.alert,
                              AlertKindName(m.kind), m.run.started_at, m.run.finished_at)),
      kSlackSectionMax));
  w.EndObject();
  w.EndArray();
  w.EndObject();

  w.EndArray();
  w.EndObject();
  return w.Release();
}

WebhookAlertChannel::WebhookAlertChannel(AlertConfig::Webhook config, HttpClient& http,
                                         Clock& clock, AlertChannelOptions options)
    : config_(std::move(config)), http_(http), clock_(clock), options_(options) {}

absl::Status WebhookAlertChannel::Send(const AlertMessage& message) {
  HttpRequest request;
  request.method = "POST";
  request.url = config_.url;
  request.timeout = options_.timeout;
  request.headers = {{"Content-Type", "application/json"},
                     {"User-Agent", "backflow-alerts"},
                     {"Idempotency-Key", message.id}};
  for (const auto& header : config_.headers) request.headers.push_back(header);
  request.body = AlertWebhookBody(message);
  absl::StatusOr<HttpResponse> reply = http_.Send(request);
  const std::string what = "alert webhook";
  if (!reply.ok()) return TransportError(reply.status(), what, config_.url);
  const HttpResponse& r = *reply;
  if (r.status >= 200 && r.status < 300) return absl::OkStatus();
  std::string message_text =
      fmt::format("{} {} answered {}: {}", what, RedactedAlertUrl(config_.url), r.status,
                  BodySnippet(Trimmed(r.body), 300));
  if (r.status == 429) {
    return RateLimited(r, clock_, message_text + " (rate limited; retried after its Retry-After)");
  }
  if (DefaultRetryableStatus(r.status)) return absl::UnavailableError(message_text);
  if (r.status == 401) {
    return absl::UnauthenticatedError(message_text + " (check the alert's webhook.headers)");
  }
  if (r.status == 403) {
    return absl::PermissionDeniedError(message_text + " (check the alert's webhook.headers)");
  }
  if (r.status == 404 || r.status == 405 || r.status == 410) {
    return absl::FailedPreconditionError(message_text + " (check the alert's webhook.url)");
  }
  return absl::InvalidArgumentError(message_text + " (the receiver refused the alert)");
}

SlackAlertChannel::SlackAlertChannel(AlertConfig::Slack config, HttpClient& http, Clock& clock,
                                     AlertChannelOptions options)
    : config_(std::move(config)), http_(http), clock_(clock), options_(options) {}

absl::Status SlackAlertChannel::Send(const AlertMessage& message) {
  HttpRequest request;
  request.method = "POST";
  request.url = config_.webhook_url;
  request.timeout = options_.timeout;
  request.headers = {{"Content-Type", "application/json; charset=utf-8"},
                     {"User-Agent", "backflow-alerts"}};
  request.body = SlackMessageBody(message);
  absl::StatusOr<HttpResponse> reply = http_.Send(request);
  const std::string what = "Slack incoming webhook";
  if (!reply.ok()) return TransportError(reply.status(), what, config_.webhook_url);
  const HttpResponse& r = *reply;
  if (r.status >= 200 && r.status < 300) return absl::OkStatus();
  std::string error = BodySnippet(Trimmed(r.body), 200);
  std::string text = fmt::format("{} {} answered {} \"{}\"", what,
                                 RedactedAlertUrl(config_.webhook_url), r.status, error);
  if (r.status == 429) {
    return RateLimited(r, clock_,
                       text +
                           ": Slack rate-limits incoming webhooks to about one "
                           "message per second");
  }
  if (r.status >= 500 || r.status == 408) {
    return absl::UnavailableError(text + ": a Slack-side problem, retried");
  }
  if (r.status == 400) {
    return absl::InvalidArgumentError(
        text + ": Slack refused the message Backflow built; this is a bug worth reporting");
  }
  const std::string recreate =
      ": create a new incoming webhook for the channel (Slack app settings > Incoming Webhooks) "
      "and update slack.webhook_url";
  if (r.status == 403) {
    return absl::PermissionDeniedError(
        text + ": the webhook's token was revoked or the workspace forbids it" + recreate);
  }
  if (r.status == 404) {
    return absl::FailedPreconditionError(
        text + ": Slack does not know this webhook or its channel" + recreate);
  }
  if (r.status == 410) {
    return absl::FailedPreconditionError(text + ": the channel was archived" + recreate);
  }
  return absl::FailedPreconditionError(text + recreate);
}

}  // namespace backflow
