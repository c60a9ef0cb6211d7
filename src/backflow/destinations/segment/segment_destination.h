// Segment destination ("segment"): sends identify, track and group calls to
// the Segment HTTP Tracking API (see ../shared/reference/destinations.md §1).
//
// Wire protocol:
//   POST <base_url>/v1/batch
//   Authorization: Basic base64("<write_key>:")   (the trailing colon matters)
//   Content-Type: application/json
//   {"batch":[{"type":"identify","messageId":"bf-…","userId":"u1",
//              "traits":{…},"timestamp":"…"}, …],
//    "context":{"library":{"name":"backflow","version":"…"}},"sentAt":"<now>"}
// One item per record. messageId is derived from OutgoingRecord::dedup_id
// (SegmentMessageId), so every re-send of a record carries the same id and
// Segment deduplicates it.
//
// Limits, checked locally because Segment answers 200 and silently drops
// what it does not accept: an item needs a userId or an anonymousId (track:
// an event, group: a groupId), or the record fails with kInvalidArgument and
// is not sent; an item over 32 KB fails with kInvalidArgument and is not
// sent; the rest is packed into requests of at most 2,500 items and 500 KB.
//
// Replies: 2xx accepts every item of the request. 429, 5xx and transport
// errors are retried by HttpDelivery (Retry-After, else X-RateLimit-Reset,
// honoured; each wait capped by max_retry_wait_s); when retries run out the
// request's records fail with kResourceExhausted / kUnavailable. 400 and 413
// (the request as a whole was refused) are bisected to isolate the bad
// records, which fail with kInvalidArgument. 401 / 403 stop the run
// (kUnauthenticated / kPermissionDenied) and 404 stops it with
// kFailedPrecondition (wrong base_url); other 4xx fail the request's records.
//
// CheckConnection() posts an empty batch {"batch":[]} once, without retries.
// Sessions are used from one thread at a time; the destination's rate
// limiters are shared by its sessions and are thread-safe.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "backflow/catalog/definitions.h"
#include "backflow/destinations/destination.h"

namespace backflow {

DestinationDefinition SegmentDestinationDefinition();

// --- Exposed for tests and for the fake server. ---

inline constexpr size_t kSegmentMaxEventBytes = 32 * 1024;
inline constexpr size_t kSegmentMaxBatchBytes = 500 * 1024;
inline constexpr int kSegmentMaxBatchEvents = 2500;

// The messageId sent for a record: "bf-<dedup_id>" for track (the same event
// is never counted twice, whichever run re-sends it), "bf-<dedup_id>-<run>"
// for identify and group (see the notes: Segment's 24 h dedup window would
// otherwise drop a legitimate flip back to an earlier value). Ids longer than
// 99 characters are replaced by a hash. Always fewer than 100 characters.
std::string SegmentMessageId(std::string_view action, std::string_view dedup_id, int64_t run_id);

// The Authorization header value for a write key: "Basic base64(key:)".
std::string SegmentBasicAuth(std::string_view write_key);

}  // namespace backflow
