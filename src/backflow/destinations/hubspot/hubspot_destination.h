// HubSpot CRM objects destination ("hubspot"): upserts and archives contacts,
// companies, deals and custom objects through HubSpot's batch object API
// (pinned to /crm/v3/objects; see ../shared/reference/destinations.md §2).
//
// Wire protocol, per batch of at most 100 records:
//   POST {base_url}/crm/v3/objects/{type}/batch/upsert
//     Authorization: Bearer <access_token>
//     {"inputs":[{"idProperty":"email","id":"ann@x.com",
//                 "properties":{"email":"ann@x.com","firstname":"Ann"},
//                 "objectWriteTraceId":"<record dedup id>"}]}
//   The idProperty is the HubSpot property mapped from the model's unique
//   identifier ("properties.<name>: <primary key column>"); when the
//   identifier is mapped to properties.hs_object_id (the record id), records
//   go to .../batch/update as {"id":"<record id>","properties":{...}}
//   instead. Null values are sent as "" (HubSpot's "clear this property"),
//   lists as ";"-joined text (multiple checkboxes). Ids that occur twice in a
//   batch are sent in successive requests, as HubSpot rejects duplicates.
//   Deletes: POST .../batch/read {"idProperty","properties":[idProperty],
//   "inputs":[{"id"}]} finds the record ids, then POST .../batch/archive
//   {"inputs":[{"id":"<record id>"}]} archives them (204). Records HubSpot
//   does not have count as deleted. A delete whose id is upserted by another
//   record of the same batch is acknowledged without archiving.
//
// Replies: 200/207 results and errors are matched to records by the id
// property value, objectWriteTraceId or record id, never by position; a
// record named in errors[].context.ids fails with HubSpot's message. 400 (and
// 409/413/414/422) for a whole batch splits it in halves to isolate the bad
// record (SendBisecting). 429 TEN_SECONDLY_ROLLING / SECONDLY waits for the
// window (Retry-After or X-HubSpot-RateLimit-Interval-Milliseconds when
// sent) and retries; 429 DAILY is never retried: the batch fails with
// kResourceExhausted ("daily limit reached, resets at midnight in the
// account's time zone"), the run stops, and this destination sends nothing
// for 15 minutes. 5xx, 408, 423 (after >= 2 s), 477 and 524 are retried with
// backoff up to max_retries. 401 stops the run with kUnauthenticated (token
// wrong, expired or revoked), 403 with kPermissionDenied naming the missing
// scopes when HubSpot lists them.
//
// Rate limits: every request (retries included) first acquires this
// destination's vendor limiter (requests_per_10_seconds per rolling 10 s,
// shared by all its mappings) and the user's max_requests_per_second cap.
//
// CheckConnection(): GET /crm/v3/objects/contacts?limit=1 without retries.
// Thread-safety: the destination may be shared by sessions on several
// threads; each session is used by one thread at a time.
#pragma once

#include <string>

#include "backflow/catalog/definitions.h"

namespace backflow {

DestinationDefinition HubSpotDestinationDefinition();

// The pinned object API path (no trailing slash), for tests and fakes.
inline constexpr char kHubSpotObjectsPath[] = "/crm/v3/objects";

}  // namespace backflow
