#include "backflow/alerts/alert_manager.h"

#include <optional>
#include <utility>

#include "backflow/common/errors.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct AlertManager::Rule {
  AlertConfig config;
  std::unique_ptr<AlertChannel> channel;
};

namespace {

// One incident as stored (a JSON object).
struct Incident {
  bool open = false;
  bool notified = false;  // the opening alert was delivered
  std::string opened_at;  // started_at of the first failing run
  int64_t first_run_id = 0;
  int64_t last_run_id = 0;  // the last run applied (failing or healthy)
  int64_t failing_runs = 0;
  std::string closed_at;

  std::string Serialize() const {
    nlohmann::json j = {{"open", open},
                        {"notified", notified},
                        {"opened_at", opened_at},
                        {"first_run_id", first_run_id},
                        {"last_run_id", last_run_id},
                        {"failing_runs", failing_runs},
                        {"closed_at", closed_at}};
    return j.dump();
  }
  // A value that is not ours (damaged, or from a future format) reads as a
  // closed incident: the worst case is one alert too many.
  static Incident Parse(const std::string& text) {
    Incident in;
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return in;
    in.open = j.value("open", false);
    in.notified = j.value("notified", false);
    in.opened_at = j.value("opened_at", "");
    in.first_run_id = j.value("first_run_id", int64_t{0});
    in.last_run_id = j.value("last_run_id", int64_t{0});
    in.failing_runs = j.value("failing_runs", int64_t{0});
    in.closed_at = j.value("closed_at", "");
    return in;
  }
};

std::string IncidentKey(const std::string& alert, const std::string& mapping, AlertKind kind) {
  return fmt::format("alert:{}:{}:{}", alert, mapping, AlertKindName(kind));
}

}  // namespace

void AlertEvent::AppendJsonFields(JsonWriter& w) const {
  w.Key("alert").String(alert);
  w.Key("channel").String(channel);
  w.Key("mapping").String(mapping);
  w.Key("kind").String(AlertKindName(kind));
  w.Key("incident").String(AlertKindName(incident));
  w.Key("run_id").Int(run_id);
  w.Key("message_id").String(message_id);
  w.Key("attempts").Int(attempts);
  if (!status.ok()) {
    w.Key("error").String(std::string(status.message()));
    w.Key("error_class").String(RetryClassName(ClassifyStatus(status)));
  }
}

bool AlertReport::ok() const {
  for (const AlertEvent& e : events) {
    if (!e.status.ok()) return false;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<AlertManager>> AlertManager::Create(const Workspace& workspace,
                                                                   StateStore& store,
                                                                   HttpClient& http, Clock& clock,
                                                                   AlertLog log,
                                                                   AlertManagerOptions options) {
  std::vector<std::unique_ptr<AlertChannel>> channels;
  AlertChannelOptions channel_options;
  channel_options.timeout = options.send_timeout;
  for (const AlertConfig& alert : workspace.alerts) {
    absl::StatusOr<std::unique_ptr<AlertChannel>> channel =
        NewAlertChannel(alert, http, clock, channel_options);
    if (!channel.ok()) {
      return absl::InvalidArgumentError(
          fmt::format("alert \"{}\": {}", alert.name, channel.status().message()));
    }
    channels.push_back(std::move(*channel));
  }
  return CreateWithChannels(workspace.alerts, std::move(channels), store, clock, std::move(log),
                            options);
}

absl::StatusOr<std::unique_ptr<AlertManager>> AlertManager::CreateWithChannels(
    std::vector<AlertConfig> alerts, std::vector<std::unique_ptr<AlertChannel>> channels,
    StateStore& store, Clock& clock, AlertLog log, AlertManagerOptions options) {
  if (alerts.size() != channels.size()) {
    return absl::InvalidArgumentError(
        fmt::format("{} alerts but {} channels", alerts.size(), channels.size()));
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("max_attempts must be at least 1");
  }
  std::vector<Rule> rules;
  for (size_t i = 0; i < alerts.size(); ++i) {
    if (channels[i] == nullptr) {
      return absl::InvalidArgumentError(fmt::format("alert \"{}\" has no channel", alerts[i].name));
    }
    rules.push_back(Rule{std::move(alerts[i]), std::move(channels[i])});
  }
  return std::unique_ptr<AlertManager>(
      new AlertManager(std::move(rules), store, clock, std::move(log), options));
}

AlertManager::AlertManager(std::vector<Rule> rules, StateStore& store, Clock& clock, AlertLog log,
                           AlertManagerOptions options)
    : rules_(std::move(rules)),
      store_(store),
      clock_(clock),
      log_(std::move(log)),
      options_(options) {}

AlertManager::~AlertManager() = default;

bool AlertManager::empty() const { return rules_.empty(); }

void AlertManager::Emit(AlertReport& report, AlertEvent event) {
  if (log_) log_(event);
  report.events.push_back(std::move(event));
}

AlertReport AlertManager::OnRunFinished(const RunInfo& run) {
  AlertReport report;
  if (run.dry_run) return report;
  const bool failed = run.status == RunStatus::kFailed;
  const bool completed = run.status == RunStatus::kSucceeded || run.status == RunStatus::kPartial;
  if (!failed && !completed) return report;
  const double share = FailedRecordShare(run.counts);

  for (Rule& rule : rules_) {
    const AlertConfig& alert = rule.config;
    if (!alert.Covers(run.mapping)) continue;
    for (AlertKind kind : {AlertKind::kFailure, AlertKind::kFailedRecords}) {
      bool failing = false;
      if (kind == AlertKind::kFailure) {
        if (!alert.on_failure) continue;
        failing = failed;
      } else {
        if (!alert.on_failed_records || !completed) continue;
        failing = share > alert.failed_records_threshold;
      }

      AlertEvent state_event;
      state_event.event = "alert_state_error";
      state_event.alert = alert.name;
      state_event.channel = std::string(rule.channel->name());
      state_event.mapping = run.mapping;
      state_event.kind = kind;
      state_event.incident = kind;
      state_event.run_id = run.id;

      const std::string key = IncidentKey(alert.name, run.mapping, kind);
      absl::StatusOr<std::optional<std::string>> stored = store_.GetAlertState(key);
      if (!stored.ok()) {
        state_event.status = absl::Status(
            stored.status().code(),
            fmt::format("cannot read the incident state of alert \"{}\" for mapping {}: {}; no "
                        "alert is sent for this run",
                        alert.name, run.mapping, stored.status().message()));
        Emit(report, std::move(state_event));
        continue;
      }
      Incident incident = stored->has_value() ? Incident::Parse(**stored) : Incident{};
      if (run.id != 0 && incident.last_run_id == run.id) continue;  // already applied

      bool send = false;
      AlertMessage message;
      if (failing) {
        if (!incident.open) {
          incident = Incident{};
          incident.open = true;
          incident.opened_at = run.started_at.empty() ? run.finished_at : run.started_at;
          incident.first_run_id = run.id;
        }
        ++incident.failing_runs;
        incident.last_run_id = run.id;
        message.kind = kind;
        send = !incident.notified;
      } else {
        if (!incident.open) continue;
        incident.open = false;
        incident.closed_at = run.finished_at;
        incident.last_run_id = run.id;
        message.kind = AlertKind::kRecovery;
        send = alert.on_recovery;
      }

      message.alert = alert.name;
      message.incident = kind;
      message.run = run;
      message.failed_share_percent = share;
      message.threshold_percent = alert.failed_records_threshold;
      message.incident_started_at = incident.opened_at;
      message.incident_first_run_id = incident.first_run_id;
      message.failing_runs = incident.failing_runs;
      message.id =
          fmt::format("{}:{}:{}:{}", alert.name, run.mapping, AlertKindName(message.kind), run.id);
      DescribeAlert(message);

      if (send) {
        AlertEvent sent = Deliver(rule, message);
        if (failing && sent.status.ok()) incident.notified = true;
        Emit(report, std::move(sent));
      }
      absl::Status saved = store_.SetAlertState(key, incident.Serialize());
      if (!saved.ok()) {
        state_event.kind = message.kind;
        state_event.message_id = message.id;
        state_event.status = absl::Status(
            saved.code(),
            fmt::format("cannot save the incident state of alert \"{}\" for mapping {}: {}; the "
                        "next run may repeat this alert",
                        alert.name, run.mapping, saved.message()));
        Emit(report, std::move(state_event));
      }
    }
  }
  return report;
}

AlertEvent AlertManager::Deliver(Rule& rule, const AlertMessage& message) {
  AlertEvent event;
  event.alert = rule.config.name;
  event.channel = std::string(rule.channel->name());
  event.mapping = message.run.mapping;
  event.kind = message.kind;
  event.incident = message.incident;
  event.run_id = message.run.id;
  event.message_id = message.id;
  event.subject = message.subject;

  std::chrono::milliseconds waited{0};
  absl::Status status;
  for (int attempt = 1;; ++attempt) {
    event.attempts = attempt;
    status = rule.channel->Send(message);
    if (status.ok() || !IsRetryable(status) || attempt >= options_.max_attempts) break;
    std::chrono::milliseconds wait =
        RetryAfter(status).value_or(options_.first_backoff * (int64_t{1} << (attempt - 1)));
    if (waited + wait > options_.max_wait) {
      status = absl::Status(
          status.code(),
          fmt::format("{} (not retried: waiting {} ms more would exceed the {} ms an alert may "
                      "wait)",
                      status.message(), wait.count(), options_.max_wait.count()));
      break;
    }
    clock_.SleepFor(wait);
    waited += wait;
  }
  event.status = status;
  event.event = status.ok() ? "alert_sent" : "alert_failed";
  return event;
}

}  // namespace backflow
