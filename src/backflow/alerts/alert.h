// Alerts: what one alert says (AlertMessage) and the seam through which it is
// delivered (AlertChannel: webhook, Slack incoming webhook, email over SMTP).
//
// AlertManager (alert_manager.h) decides when to alert and retries; a
// channel makes exactly one delivery attempt per Send() and says in the
// status code what a retry could achieve (common/errors.h):
//   kUnavailable, kDeadlineExceeded  transient (network, 5xx, SMTP 4xx)
//   kResourceExhausted               rate limited; RetryAfter() carries the
//                                    delay the receiver asked for, if any
//   kUnauthenticated, kPermissionDenied, kFailedPrecondition
//                                    the alert's configuration must be fixed
//   kInvalidArgument                 the receiver refused this message
// Error messages are meant for a log line read by a person: they say what
// answered what and what to check, and never contain credentials (webhook
// URL paths and queries, passwords, Slack webhook tokens).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/config/workspace.h"
#include "backflow/state/state_store.h"

namespace backflow {

enum class AlertKind {
  kFailure,        // the run failed
  kFailedRecords,  // the run's share of failed + rejected records is above the threshold
  kRecovery,       // the first healthy run after an incident
};
// "failure", "failed_records", "recovery".
std::string_view AlertKindName(AlertKind kind);

// Percent (0..100) of a run's records that failed or were rejected:
// (failed + rejected) / (succeeded + failed + rejected); 0 when it sent and
// rejected nothing.
double FailedRecordShare(const RunCounts& counts);

struct AlertMessage {
  // Stable per (alert, mapping, kind, run): "oncall:crm:failure:42". Every
  // retry of one delivery carries the same id (webhook Idempotency-Key).
  std::string id;
  std::string alert;  // the alert's name in the workspace
  AlertKind kind = AlertKind::kFailure;
  // The kind of incident: kind itself, or for a recovery the incident that
  // closed (kFailure or kFailedRecords).
  AlertKind incident = AlertKind::kFailure;
  RunInfo run;  // the run that opened the incident, is still failing, or closed it
  double failed_share_percent = 0;  // FailedRecordShare(run.counts)
  double threshold_percent = 0;     // the alert's failed_records_threshold
  // The incident: the started_at and id of its first failing run, and how
  // many failing runs it has had (for a recovery: in all).
  std::string incident_started_at;
  int64_t incident_first_run_id = 0;
  int64_t failing_runs = 0;
  // One line, e.g. "[Backflow] crm failed (run 42)".
  std::string subject;
  // A few sentences for a person: what happened, with the run's error.
  std::string summary;
};

// Fills `subject` and `summary` from the other fields.
void DescribeAlert(AlertMessage& message);

// The JSON document the webhook channel POSTs (see README.md, Alerts):
// {"id", "alert", "kind", "incident", "mapping", "model", "destination",
// "run_id", "status", "trigger", "started_at", "finished_at", "duration_s",
// "error", "counts": {...}, "failed_share_percent", "threshold_percent",
// "incident_started_at", "incident_first_run_id", "failing_runs", "subject",
// "summary"}.
std::string AlertWebhookBody(const AlertMessage& message);

class AlertChannel {
 public:
  virtual ~AlertChannel() = default;
  // "webhook", "slack" or "email".
  virtual std::string_view name() const = 0;
  // One delivery attempt, bounded by the channel's timeout. Thread-safe
  // implementations are not required: AlertManager calls one at a time.
  virtual absl::Status Send(const AlertMessage& message) = 0;
};

struct AlertChannelOptions {
  // Upper bound of one attempt (connect, send, reply).
  std::chrono::milliseconds timeout{10'000};
};

// The channel `alert` configures. `http` and `clock` must outlive it.
// kInvalidArgument when the configuration cannot be used (it passed
// LoadWorkspace's validation, so this means it was built by hand).
absl::StatusOr<std::unique_ptr<AlertChannel>> NewAlertChannel(const AlertConfig& alert,
                                                              HttpClient& http, Clock& clock,
                                                              AlertChannelOptions options = {});

// "https://hooks.slack.com/…": the URL's scheme and authority only. Used in
// messages in place of URLs whose path or query may be a credential.
std::string RedactedAlertUrl(std::string_view url);

}  // namespace backflow
