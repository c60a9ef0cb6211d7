// Braze destination ("braze"): user attributes and custom events through the
// REST API's POST /users/track, and user deletion through POST /users/delete
// (see ../shared/reference/destinations.md §4).
//
// Wire protocol (what FakeBrazeServer checks):
//   POST <base_url>/users/track
//   Authorization: Bearer <api_key>, Content-Type: application/json
//   {"attributes":[{"external_id":"u1","email":"a@b.co","plan":"pro",
//                   "_update_existing_only":false}, ...]}     track_attributes
//   {"events":[{"external_id":"u1","name":"Signed Up",
//               "time":"2026-01-02T03:04:05Z","properties":{...}}, ...]} track_event
//   POST <base_url>/users/delete   {"external_ids":["u1", ...]}  (deleted records)
// Each object carries one identifier: external_id, else braze_id, else
// user_alias {alias_name, alias_label}, else email, else phone (email and
// phone are also sent as attributes). Records without one fail locally with
// kInvalidArgument and are not sent. Requests hold at most
// max_objects_per_request objects (75) or 50 delete ids.
//
// Replies: 2xx (201 "success", 202 "queued") accepts every object except
// those listed in errors[] as {"input_array","index"}, which fail with
// kInvalidArgument (the index is mapped back to the record through the
// sent-object order). 400/413 reject the request as a whole: the part is
// bisected (SendBisecting) down to the offending record. 429 waits until
// X-RateLimit-Reset (epoch seconds; Retry-After as a fallback) and 5xx,
// 408 and transport errors back off exponentially, both up to max_retries,
// then the records fail with kResourceExhausted / kUnavailable. 401 stops
// the run with kUnauthenticated, 403 with kPermissionDenied naming the
// missing permission (users.track / users.delete), 404 and 3xx with
// kFailedPrecondition (check base_url). Other 4xx fail the records.
//
// Rate limits: every request first takes the destination's vendor limiter
// (track_requests_per_3s over 3 s for /users/track,
// delete_requests_per_minute over 60 s for /users/delete) and the user's
// max_requests_per_second limiter; the limiters are shared by all sessions
// of one destination and are thread-safe. Sessions are used from one thread
// at a time; the destination holds no other mutable state.
#pragma once

#include "backflow/catalog/definitions.h"

namespace backflow {

DestinationDefinition BrazeDestinationDefinition();

}  // namespace backflow
