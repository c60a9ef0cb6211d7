#include "backflow/alerts/alert.h"

#include <string>

#include "backflow/alerts/http_channels.h"
#include "backflow/alerts/smtp_channel.h"
#include "backflow/common/json_writer.h"
#include "fmt/format.h"

namespace backflow {
namespace {

// "12.5", "3", "0.25": at most two decimals, no trailing zeros.
std::string Percent(double p) {
  std::string text = fmt::format("{:.2f}", p);
  while (text.back() == '0') text.pop_back();
  if (text.back() == '.') text.pop_back();
  return text;
}

std::string Runs(int64_t n) { return n == 1 ? "1 run" : fmt::format("{} runs", n); }

}  // namespace

std::string_view AlertKindName(AlertKind kind) {
  switch (kind) {
    case AlertKind::kFailure:
      return "failure";
    case AlertKind::kFailedRecords:
      return "failed_records";
    case AlertKind::kRecovery:
      return "recovery";
  }
  return "failure";
}

double FailedRecordShare(const RunCounts& counts) {
  int64_t bad = counts.failed + counts.rejected;
  int64_t total = counts.succeeded + bad;
  if (total <= 0) return 0;
  return 100.0 * static_cast<double>(bad) / static_cast<double>(total);
}

void DescribeAlert(AlertMessage& m) {
  const RunInfo& run = m.run;
  std::string where = fmt::format("{} ({} -> {})", run.mapping, run.model, run.destination);
  int64_t bad = run.counts.failed + run.counts.rejected;
  int64_t total = run.counts.succeeded + bad;
  std::string records =
      fmt::format("{} failed and {} rejected of {} records ({}%)", run.counts.failed,
                  run.counts.rejected, total, Percent(m.failed_share_percent));
  switch (m.kind) {
    case AlertKind::kFailure:
      m.subject = fmt::format("[Backflow] {} failed (run {})", run.mapping, run.id);
      m.summary = fmt::format("Mapping {} failed in run {}: {}", where, run.id,
                              run.error.empty() ? "no error message was recorded" : run.error);
      if (m.failing_runs > 1) {
        m.summary +=
            fmt::format(" It has failed {} in a row since {} (run {}).", Runs(m.failing_runs),
                        m.incident_started_at, m.incident_first_run_id);
      }
      break;
    case AlertKind::kFailedRecords:
      m.subject = fmt::format("[Backflow] {}: {}% of records failed (run {})", run.mapping,
                              Percent(m.failed_share_percent), run.id);
      m.summary = fmt::format(
          "Mapping {}: {} in run {}, above the alert's threshold of {}%. `backflow runs show {}` "
          "lists each record with its error.",
          where, records, run.id, Percent(m.threshold_percent), run.id);
      if (m.failing_runs > 1) {
        m.summary +=
            fmt::format(" {} in a row above the threshold since {} (run {}).", Runs(m.failing_runs),
                        m.incident_started_at, m.incident_first_run_id);
      }
      break;
    case AlertKind::kRecovery:
      m.subject = fmt::format("[Backflow] {} recovered (run {})", run.mapping, run.id);
      if (m.incident == AlertKind::kFailure) {
        m.summary = fmt::format(
            "Mapping {} recovered: run {} finished ({}) after {} that failed, since {} (run {}).",
            where, run.id, RunStatusName(run.status), Runs(m.failing_runs), m.incident_started_at,
            m.incident_first_run_id);
      } else {
        m.summary = fmt::format(
            "Mapping {} recovered: {} in run {}, within the alert's threshold of {}%, after {} "
            "above it since {} (run {}).",
            where, records, run.id, Percent(m.threshold_percent), Runs(m.failing_runs),
            m.incident_started_at, m.incident_first_run_id);
      }
      break;
  }
}

std::string AlertWebhookBody(const AlertMessage& m) {
  const RunInfo& run = m.run;
  JsonWriter w;
  w.BeginObject();
  w.Key("id").String(m.id);
  w.Key("alert").String(m.alert);
  w.Key("kind").String(AlertKindName(m.kind));
  w.Key("incident").String(AlertKindName(m.incident));
  w.Key("mapping").String(run.mapping);
  w.Key("model").String(run.model);
  w.Key("destination").String(run.destination);
  w.Key("run_id").Int(run.id);
  w.Key("status").String(RunStatusName(run.status));
  w.Key("trigger").String(run.trigger);
  w.Key("started_at").String(run.started_at);
  w.Key("finished_at").String(run.finished_at);
  w.Key("duration_s").Double(run.duration_s);
  w.Key("error");
  if (run.error.empty()) {
    w.Null();
  } else {
    w.String(run.error);
  }
  w.Key("counts").BeginObject();
  w.Key("extracted").Int(run.counts.extracted);
  w.Key("added").Int(run.counts.added);
  w.Key("updated").Int(run.counts.updated);
  w.Key("deleted").Int(run.counts.deleted);
  w.Key("unchanged").Int(run.counts.unchanged);
  w.Key("skipped").Int(run.counts.skipped);
  w.Key("succeeded").Int(run.counts.succeeded);
  w.Key("failed").Int(run.counts.failed);
  w.Key("rejected").Int(run.counts.rejected);
  w.EndObject();
  w.Key("failed_share_percent").Double(m.failed_share_percent);
  w.Key("threshold_percent").Double(m.threshold_percent);
  w.Key("incident_started_at").String(m.incident_started_at);
  w.Key("incident_first_run_id").Int(m.incident_first_run_id);
  w.Key("failing_runs").Int(m.failing_runs);
  w.Key("subject").String(m.subject);
  w.Key("summary").String(m.summary);
  w.EndObject();
  return w.Release();
}

std::string RedactedAlertUrl(std::string_view url) {
  size_t scheme = url.find("://");
  if (scheme == std::string_view::npos) return "(URL)";
  size_t host_start = scheme + 3;
  size_t host_end = url.find_first_of("/?#", host_start);
  std::string_view authority =
      url.substr(host_start, host_end == std::string_view::npos ? std::string_view::npos
                                                                : host_end - host_start);
  size_t at = authority.rfind('@');  // user:password@host
  if (at != std::string_view::npos) authority.remove_prefix(at + 1);
  std::string out = fmt::format("{}://{}", url.substr(0, scheme), authority);
  if (host_end != std::string_view::npos && host_end + 1 < url.size()) out += "/…";
  return out;
}

absl::StatusOr<std::unique_ptr<AlertChannel>> NewAlertChannel(const AlertConfig& alert,
                                                              HttpClient& http, Clock& clock,
                                                              AlertChannelOptions options) {
  switch (alert.channel) {
    case AlertConfig::Channel::kWebhook:
      if (alert.webhook.url.empty()) {
        return absl::InvalidArgumentError(
            fmt::format("alert \"{}\": webhook.url is empty", alert.name));
      }
      return std::unique_ptr<AlertChannel>(
          new WebhookAlertChannel(alert.webhook, http, clock, options));
    case AlertConfig::Channel::kSlack:
      if (alert.slack.webhook_url.empty()) {
        return absl::InvalidArgumentError(
            fmt::format("alert \"{}\": slack.webhook_url is empty", alert.name));
      }
      return std::unique_ptr<AlertChannel>(
          new SlackAlertChannel(alert.slack, http, clock, options));
    case AlertConfig::Channel::kEmail:
      return NewEmailAlertChannel(alert.email, clock, options);
  }
  return absl::InvalidArgumentError(fmt::format("alert \"{}\": unknown channel", alert.name));
}

}  // namespace backflow
