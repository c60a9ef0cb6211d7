// Meta Conversions API destination ("meta_capi"): sends each new model row as
// one server event to a Meta pixel / dataset (see
// ../shared/reference/destinations.md §8, §0.4, §0.5 and §14).
//
// Wire protocol:
//   POST <base_url>/<api_version>/<pixel_id>/events?access_token=<token>
//   Content-Type: application/json
//   {"data":[{"event_name":"Purchase","event_time":1767322245,
//             "action_source":"website","event_id":"bf-…",
//             "event_source_url":"https://…",
//             "user_data":{"em":["<sha256>"],"ph":["<sha256>"],
//                          "client_ip_address":"203.0.113.7",…},
//             "custom_data":{"currency":"USD","value":142.52}}, …],
//    "test_event_code":"TEST123"}                      (only when set)
//   → 200 {"events_received":N,"messages":[],"fbtrace_id":"…"}
// One event per record, at most kMetaMaxBatchEvents per request. event_id
// defaults to MetaEventId(dedup_id), so a re-sent record carries the same
// (event_name, event_id) pair and Meta counts it once.
//
// Checked locally, per record (kInvalidArgument, the record is not sent,
// because Meta rejects a whole request for one bad event): event_name,
// event_time and action_source present; event_time at most kMetaMaxEventAge
// old; website events need event_source_url and user_data.client_user_agent;
// user_data has at least one customer information parameter after
// normalisation; values that cannot be normalised (db, country).
//
// PII (user_data): em, ph, fn, ln, ge, db, ct, st, zp and country are
// normalised (MetaNormalizeUserValue) and SHA-256 hashed to lowercase hex;
// external_id is trimmed and hashed unless hash_external_id is false; a value
// that already is 64 hex digits is passed through lowercased, never hashed
// twice. client_ip_address, client_user_agent, fbc, fbp and Meta's other
// "do not hash" keys are sent as given. em, ph and external_id are sent as
// arrays.
//
// Replies, classified by the Graph error code in the body (HTTP status as a
// fallback): 2xx with events_received equal to the events sent accepts them
// (a different count fails them with kUnavailable); rate limiting (codes 4,
// 17, 32, 341, 613, 80000-80099, HTTP 429) is retried with backoff (waits
// from Retry-After or X-Business-Use-Case-Usage honoured) and then stops the
// run with kResourceExhausted; transient errors (codes 1, 2, is_transient,
// HTTP 5xx) are retried and then fail the request's records with
// kUnavailable; code 190/102 (token) stops the run with kUnauthenticated;
// codes 3, 10, 200-299 stop it with kPermissionDenied; an unknown pixel,
// path or API version (code 100/subcode 33, 803, 2500, 2635, HTTP 404) stops
// it with kFailedPrecondition; any other 4xx rejected the whole request, so
// it is bisected (SendBisecting) until the rejected events are isolated,
// each failing with kInvalidArgument and the Graph error (message,
// error_user_title/msg, code, error_subcode, fbtrace_id).
//
// CheckConnection() reads the pixel (GET /<api_version>/<pixel_id>?fields=id,name),
// once, without retries. Sessions are used from one thread at a time; state
// shared between a destination's sessions (rate limiter, rate-limit hold) is
// thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"

namespace backflow {

DestinationDefinition MetaCapiDestinationDefinition();

// --- Exposed for tests and for the fake server. ---

// The Graph API version used unless the api_version setting says otherwise.
inline constexpr char kMetaApiVersion[] = "v24.0";
inline constexpr int kMetaMaxBatchEvents = 1000;
// Meta refuses a request containing an event older than this.
inline constexpr std::chrono::hours kMetaMaxEventAge{7 * 24};

// The event_id sent for a record whose mapping leaves event_id unmapped:
// "bf-<dedup_id>" (a hash when that would exceed 64 characters).
std::string MetaEventId(std::string_view dedup_id);

// True for 64 hexadecimal digits (either case): a value already hashed.
bool IsMetaHashed(std::string_view value);

// Normalises one user_data value of a hashed key (em, ph, fn, ln, ge, db, ct,
// st, zp, country) the way Meta asks before hashing. `country` is the
// record's normalised country, if any (US ZIP codes keep 5 digits). Returns
// "" when nothing usable remains (the value is left out, e.g. ge "unknown"),
// kInvalidArgument when the value cannot be read (db, country).
absl::StatusOr<std::string> MetaNormalizeUserValue(std::string_view key, std::string_view value,
                                                   std::string_view country = "");

}  // namespace backflow
