// AlertManager: decides, after each finished run, whether an alert is due,
// and delivers it through the alert's channel.
//
// Incidents. For every (alert, mapping, incident kind) the alert covers
// there is an incident that is open or closed:
//   failure         a run with status kFailed is failing; kSucceeded and
//                   kPartial are healthy (the run completed).
//   failed_records  a completed run (kSucceeded / kPartial) is failing when
//                   FailedRecordShare(counts) is above the alert's
//                   failed_records_threshold, healthy otherwise; a kFailed
//                   run says nothing about it.
// Dry runs and runs in any other status (cancelled, interrupted, queued,
// running) change nothing. An incident kind the alert's `on:` leaves out is
// not tracked at all.
//   closed + failing run  -> opens, and sends ONE alert of that kind;
//   open   + failing run  -> sends nothing (unless the opening alert could
//                            not be delivered: then it is tried again, so an
//                            incident is announced at least once);
//   open   + healthy run  -> closes, and sends one recovery alert when `on:`
//                            includes recovery;
//   closed + healthy run  -> nothing.
// Incident state is kept in the StateStore (GetAlertState / SetAlertState,
// key "alert:<alert>:<mapping>:<failure|failed_records>", a small JSON
// value), so a restarted service neither repeats an alert nor forgets an
// open incident; a run id already applied to an incident is ignored (a
// second OnRunFinished for the same run sends nothing). If the store cannot
// be read for an incident, that incident is skipped for this run (and
// reported) rather than alerting blind.
//
// Delivery. Each alert is sent with up to `max_attempts` attempts of at
// most `send_timeout` each; retryable failures (common/errors.h) wait the
// receiver's Retry-After, or else first_backoff doubled per retry, on the
// injected Clock, and a retry whose wait would bring the total waited for
// that alert past `max_wait` is not made. So one alert holds the caller for
// at most about max_attempts × send_timeout + max_wait (3 × 10 s + 30 s with
// the defaults). A delivery that still fails is reported and logged; it
// never fails the run, throws, or stops other alerts of the same run.
//
// Thread-safety: not thread-safe. Call OnRunFinished from one thread at a
// time (e.g. the worker that finished the run, or a single alerting thread),
// and not while another thread uses the same StateStore unless that store
// allows it. Several service processes sharing one PostgreSQL state store may
// each run an AlertManager: runs of one mapping never overlap, so they never
// race on one incident.
//
// Configuration changes: build a new AlertManager from the reloaded
// workspace; open incidents carry over through the store (keyed by alert and
// mapping name).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/alerts/alert.h"
#include "backflow/common/json_writer.h"

namespace backflow {

struct AlertManagerOptions {
  int max_attempts = 3;
  std::chrono::milliseconds first_backoff{2'000};
  // Most time spent waiting between attempts of one alert.
  std::chrono::milliseconds max_wait{30'000};
  // Upper bound of one attempt.
  std::chrono::milliseconds send_timeout{10'000};
};

// What happened to one alert, or to one incident's state.
struct AlertEvent {
  // "alert_sent", "alert_failed" (not delivered after `attempts`), or
  // "alert_state_error" (the store could not be read or written; `kind` and
  // `incident` name the incident, nothing was sent for it when reading
  // failed).
  std::string event;
  std::string alert;
  std::string channel;  // "webhook", "slack", "email"
  std::string mapping;
  AlertKind kind = AlertKind::kFailure;
  AlertKind incident = AlertKind::kFailure;
  int64_t run_id = 0;
  std::string message_id;  // AlertMessage::id
  std::string subject;
  int attempts = 0;
  absl::Status status;  // OK for alert_sent

  // Writes the fields above as members of the object `w` is in:
  // "alert", "channel", "mapping", "kind", "incident", "run_id",
  // "message_id", "attempts" and, when not OK, "error" and "error_class".
  // (Not "event": a log writer usually puts that first.)
  void AppendJsonFields(JsonWriter& w) const;
};

struct AlertReport {
  std::vector<AlertEvent> events;  // in the order they happened
  // True when every alert due was delivered and every state was saved.
  bool ok() const;
};

// Receives every AlertEvent as it happens (e.g. to write a JSON log line).
using AlertLog = std::function<void(const AlertEvent&)>;

class AlertManager {
 public:
  // One channel per alert of `workspace`. `store`, `http` and `clock` must
  // outlive the manager; `log` may be empty. kInvalidArgument when an alert's
  // channel cannot be built (a workspace that passed validation always can).
  static absl::StatusOr<std::unique_ptr<AlertManager>> Create(const Workspace& workspace,
                                                              StateStore& store, HttpClient& http,
                                                              Clock& clock, AlertLog log,
                                                              AlertManagerOptions options = {});
  // The same with channels supplied by the caller: channels[i] delivers
  // alerts[i]'s messages.
  static absl::StatusOr<std::unique_ptr<AlertManager>> CreateWithChannels(
      std::vector<AlertConfig> alerts, std::vector<std::unique_ptr<AlertChannel>> channels,
      StateStore& store, Clock& clock, AlertLog log, AlertManagerOptions options = {});

  ~AlertManager();
  AlertManager(const AlertManager&) = delete;
  AlertManager& operator=(const AlertManager&) = delete;

  // Applies a finished run to the incidents of every alert covering its
  // mapping and delivers the alerts that are due. Never fails as a call:
  // problems are in the report (and the log).
  AlertReport OnRunFinished(const RunInfo& run);

  // Whether any alert is configured (callers may skip OnRunFinished if not).
  bool empty() const;

 private:
  struct Rule;
  AlertManager(std::vector<Rule> rules, StateStore& store, Clock& clock, AlertLog log,
               AlertManagerOptions options);
  AlertEvent Deliver(Rule& rule, const AlertMessage& message);
  void Emit(AlertReport& report, AlertEvent event);

  std::vector<Rule> rules_;
  StateStore& store_;
  Clock& clock_;
  AlertLog log_;
  AlertManagerOptions options_;
};

}  // namespace backflow
