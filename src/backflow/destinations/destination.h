// Destination and ActionSession: the seam between the engine and a business tool.
//
// A Destination is built from validated settings (see catalog/definitions.h).
// For each run and mapping the engine opens one ActionSession (or
// concurrency() of them), sends the change set through them in batches no
// larger than the action's limit, then calls Finish() on each. A session is
// used from one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/model/value.h"
#include "nlohmann/json.hpp"

namespace backflow {

enum class ChangeKind { kAdded, kUpdated, kDeleted };
std::string_view ChangeKindName(ChangeKind k);

// The record payload layout shared by every record of a session: field keys
// in mapping order. `identity` lists the fields mapped from the model's unique
// identifier, which is all a delete carries.
struct FieldLayout {
  std::vector<std::string> fields;
  std::vector<std::string> identity;
};

struct OutgoingRecord {
  ChangeKind change = ChangeKind::kAdded;
  // The model's unique identifier, as text.
  std::string key;
  // Deterministic id for receiver-side dedup: the same mapping, key and
  // payload always give the same id, so a retry never looks like a new event.
  std::string dedup_id;
  // Values in FieldLayout::fields order for added/updated records, and in
  // FieldLayout::identity order for deleted ones.
  Row values;

  bool is_delete() const { return change == ChangeKind::kDeleted; }
};

// Renders a record's payload as a JSON object ({"field": value, ...}), nested
// paths not expanded. Used for run reports and JSON-speaking destinations.
std::string RecordFieldsJson(const FieldLayout& layout, const OutgoingRecord& record);

// The record's payload as a JSON object for building API bodies: dotted field
// keys become nested objects ("traits.plan" -> {"traits":{"plan":...}}), JSON
// values are embedded as JSON, nulls are kept (APIs use them to clear a
// field). When a path is both a value and a parent, the later field wins.
nlohmann::json RecordPayload(const FieldLayout& layout, const OutgoingRecord& record);

// One value as JSON: decimals as numbers when they fit a double exactly
// enough to round-trip their text, else as strings; timestamps and dates as
// their ISO-8601 text; bytes as base64.
nlohmann::json ValueToJson(const Value& v);

struct SessionOptions {
  std::string mapping;
  int64_t run_id = 0;
  const ActionSpec* action = nullptr;
  FieldLayout layout;
  int batch_size = 100;
};

class ActionSession {
 public:
  virtual ~ActionSession() = default;

  // Delivers one batch (at most the action's max_batch_records records),
  // retrying transient failures itself. Returns one status per record, in
  // input order: OK when the destination accepted it, otherwise why not
  // (its code gives the retry class, see common/errors.h). A non-OK return
  // means the batch as a whole was not delivered and stopping the run is
  // advised (bad credentials, destination gone); no record of it was accepted.
  virtual absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) = 0;

  // Completes the session (e.g. renames the run's file into place). For
  // actions with commit_on_finish, accepted records become durable only once
  // this returns OK.
  virtual absl::Status Finish() = 0;
};

class Destination {
 public:
  virtual ~Destination() = default;

  // Checks credentials and reachability without changing anything the user
  // can see. Errors carry an actionable message.
  virtual absl::Status CheckConnection() = 0;

  virtual absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) = 0;

  // How many sessions the engine may run at once for one mapping, each on its
  // own thread with one batch in flight. A destination returning more than 1
  // promises that its sessions may run concurrently (shared state such as
  // rate limiters is thread-safe). Actions with commit_on_finish always get
  // one session.
  virtual int concurrency() const { return 1; }
};

// The HTTP client and clock a destination of `type` runs on: env's, with
// the system clock when env has none. kInternal when env has no HTTP client
// (a wiring error of the caller, not a user's).
struct HttpServices {
  HttpClient* http = nullptr;
  Clock* clock = nullptr;
};
absl::StatusOr<HttpServices> HttpServicesOf(std::string_view type, const ConnectorEnv& env);

// DestinationDefinition::create for a destination `D` built as
// D(config, http, clock) from the settings `parse` reads, on HttpServicesOf.
template <class D, class Config>
auto HttpDestinationFactory(std::string type,
                            absl::StatusOr<Config> (*parse)(const nlohmann::json& settings)) {
  return [type = std::move(type), parse](
             const nlohmann::json& settings,
             const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Destination>> {
    absl::StatusOr<Config> config = parse(settings);
    if (!config.ok()) return config.status();
    absl::StatusOr<HttpServices> services = HttpServicesOf(type, env);
    if (!services.ok()) return services.status();
    return std::unique_ptr<Destination>(
        std::make_unique<D>(*std::move(config), services->http, services->clock));
  };
}

}  // namespace backflow
