// Mixpanel destination ("mixpanel"): events through the Import API and user
// profiles through the Engage API (see ../shared/reference/destinations.md §6).
//
// Actions:
//   track_event  POST <base_url>/import?strict=1[&project_id=<id>], a JSON
//                array of {"event","properties":{time (ms),distinct_id,
//                $insert_id,...}}; HTTP Basic with the service account
//                (username:secret, project_id in the query) or else the
//                project token as user name with an empty password. Sends
//                added records only: each new model row is one event.
//   set_profile  POST <base_url>/engage?verbose=1, a JSON array of update
//                objects carrying $token: $set (non-null values, $ip "0",
//                $ignore_time true) plus $unset for null values, and
//                $delete for deleted records.
//
// Records Mixpanel would reject (missing event name or distinct_id, time
// before 1971 or over an hour ahead of the injected clock, placeholder ids
// such as "null" or "anon", too many properties, events over 1 MB) fail
// locally with kInvalidArgument and are never sent.
//
// Replies: /import 200 accepts the request; 400 with failed_records[] is a
// partial success (listed records fail with Mixpanel's message, matched by
// insert_id, else by index; the rest were ingested); 400 without
// failed_records and 413 bisect the request. /engage answers 200 with
// {"status":0,"error":...} for invalid updates: the request is bisected until
// the rejected records are isolated (profile updates are idempotent, so
// re-sending the accepted ones is harmless). 429 (no Retry-After) is retried
// after 2 s doubling to 60 s plus 1-5 s jitter, as Mixpanel recommends; 5xx
// and transport errors with exponential backoff; each wait is capped by
// max_retry_wait_s and taken on ConnectorEnv::clock. 401/403/404 stop the
// run (kUnauthenticated / kPermissionDenied / kFailedPrecondition) with a
// message naming the settings to check.
//
// Limits: every attempt first takes the destination's limiters: Mixpanel's
// per-project ingestion rate (max_megabytes_per_minute of JSON on a rolling
// minute, max_events_per_second), and the user's max_requests_per_second.
// The limiters are shared by every session of one destination.
//
// Thread-safety: the destination may be shared; each session is used from
// one thread at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "backflow/catalog/definitions.h"

namespace backflow {

DestinationDefinition MixpanelDestinationDefinition();

// --- Exposed for tests and for the fake server. ---

// Mixpanel's documented limits (defaults; the size and rate limits are
// settings because Mixpanel has changed them before).
inline constexpr int kMixpanelMaxImportEvents = 2000;
inline constexpr int kMixpanelMaxEngageUpdates = 2000;
inline constexpr size_t kMixpanelMaxEventBytes = 1'000'000;    // "< 1 MB" per event/update
inline constexpr size_t kMixpanelMaxProperties = 255;          // "fewer than 255"
inline constexpr size_t kMixpanelImportMaxBytes = 10'000'000;  // per /import request
inline constexpr size_t kMixpanelEngageMaxBytes = 2'000'000;   // per /engage request
inline constexpr size_t kMixpanelMaxInsertIdChars = 36;
// 1971-01-01T00:00:00Z in milliseconds: the earliest event time accepted.
inline constexpr int64_t kMixpanelMinTimeMs = 31'536'000'000;
// Event times at or above this are read as milliseconds, below as seconds.
inline constexpr double kMixpanelMillisecondsThreshold = 1e11;

// The $insert_id of a record: 32 lowercase hex characters derived from its
// dedup id, so a re-sent event always carries the same one.
std::string MixpanelInsertId(std::string_view dedup_id);

// Whether Mixpanel rejects `id` as a distinct_id or $insert_id placeholder
// ("null", "anon", "undefined", the all-zero UUID...; case-insensitive,
// surrounding spaces ignored). The empty string is not a placeholder.
bool IsMixpanelPlaceholderId(std::string_view id);

// "Basic base64(<user>:<password>)".
std::string MixpanelBasicAuth(std::string_view user, std::string_view password);

// The wait before retrying after the n-th consecutive 429 (n >= 1), before
// jitter: 2 s, doubling, at most 60 s.
std::chrono::milliseconds MixpanelRateLimitBackoff(int n);

// A timestamp ("2024-05-01T12:00:00Z", "2024-05-01 12:00:00.250+02:00",
// "2024-05-01"; the forms of ParseIsoInstant, common/civil_date.h) as
// milliseconds since the epoch; false when unparsable. Text without a zone
// is read as UTC.
bool ParseMixpanelTimestampMs(std::string_view text, int64_t* ms);

}  // namespace backflow
