// Iterable destination ("iterable"): user profiles through POST
// /api/users/bulkUpdate, user deletion through DELETE /api/users/{email} or
// /api/users/byUserId/{userId}, and custom events through POST
// /api/events/trackBulk (see ../shared/reference/destinations.md §5).
//
// Wire protocol (what FakeIterableServer checks), every request carrying
// "Api-Key: <api_key>" and, with a body, "Content-Type: application/json":
//   update_users, added/updated records:
//     POST <base_url>/api/users/bulkUpdate
//     {"users":[{"email":"a@b.co","userId":"u1","dataFields":{...},
//                "preferUserId":true,"mergeNestedObjects":false}, ...],
//      "createNewFields":true}            (createNewFields only when set)
//   update_users, deleted records (one request per user):
//     DELETE <base_url>/api/users/byUserId/<userId>  when the model's primary
//     key is mapped to userId, else DELETE <base_url>/api/users/<email>
//     (path segment percent-encoded).
//   track_events, added records:
//     POST <base_url>/api/events/trackBulk
//     {"events":[{"email":...,"userId":...,"eventName":"Order Completed",
//                 "id":"<event id>","createdAt":<epoch s>,"dataFields":{...},
//                 "campaignId":1,"templateId":2}, ...]}
//   Each object carries email and/or userId (null or empty ones are left
//   out; a record with neither fails locally with kInvalidArgument). The
//   event id is the mapped `id` or else OutgoingRecord::dedup_id, so a
//   re-sent event overwrites itself in Iterable instead of counting twice.
//   Strings in dataFields that are ISO-8601 date-times (timestamps included)
//   are sent in Iterable's date format, "yyyy-MM-dd HH:mm:ss +00:00" (UTC,
//   whole seconds). A user appears at most once per bulkUpdate request
//   (repeats go in successive requests, so the last record wins).
//
// Replies: HTTP 200 carries per-record failures keyed by identifier, never
// by position: failedUpdates.{invalid,notFound,conflict,invalidData}
// {Emails,UserIds} fail the records with that email (case-insensitive) or
// userId with kInvalidArgument; forgotten{Emails,UserIds} (GDPR-forgotten
// users, which can never be written) are acknowledged as OK; events whose
// name is in disallowedEventNames fail; filteredOutFields (data fields
// Iterable dropped, listed for the whole request) fails the record carrying
// that key when it is alone. When a list names an identifier fewer times
// than records carry it, failCount exceeds the failures it names, or several
// records carry a dropped field, the records in doubt are sent again in
// halves, recursively, until each outcome is known (user updates merge and
// events overwrite by id, so re-sending is harmless). A 200 whose body has a "code" other than
// "Success" is a whole-request error: BadApiKey stops the run,
// RateLimitExceeded is retried like a 429, GenericError/DatabaseError like a
// 5xx, any other code bisects the request. 400/413/422 bisect the request
// (SendBisecting) down to the record Iterable refuses. 429 (no Retry-After:
// exponential backoff with jitter), 5xx, 408 and transport errors are
// retried up to max_retries, then the records fail with kResourceExhausted /
// kUnavailable. 401 stops the run with kUnauthenticated (wrong key, or a key
// of another data center), 403 with kPermissionDenied (a key type without
// access to the endpoint, e.g. a JavaScript or mobile key), 404 and 3xx with
// kFailedPrecondition (check base_url). A delete of a user Iterable does not
// have (404, or a "no user" error) counts as deleted.
//
// Rate limits: every request (retries included) first takes the limiter of
// its endpoint (bulk_update_requests_per_second,
// track_bulk_requests_per_second, delete_requests_per_second; one-second
// windows) and the user's max_requests_per_second; limiters are shared by
// all sessions of the destination and are thread-safe.
//
// CheckConnection() posts {"users":[]} to /api/users/bulkUpdate once,
// without retries: it checks the key and its access to the write endpoint
// and changes nothing (HTTP 200, or a 400 about the empty list, is a pass).
//
// Thread-safety: sessions may run concurrently (concurrency setting); each
// session is used from one thread at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "backflow/catalog/definitions.h"

namespace backflow {

DestinationDefinition IterableDestinationDefinition();

// --- Exposed for tests and for the fake server. ---

inline constexpr char kIterableBulkUpdatePath[] = "/api/users/bulkUpdate";
inline constexpr char kIterableTrackBulkPath[] = "/api/events/trackBulk";
inline constexpr char kIterableUsersPath[] = "/api/users/";
inline constexpr char kIterableUsersByIdPath[] = "/api/users/byUserId/";

// An ISO-8601 date-time ("2026-01-02T03:04:05.678+01:00", "...Z", or no
// zone, read as UTC; the forms of ParseIsoInstant, common/civil_date.h) in
// Iterable's date format ("2026-01-02 02:04:05 +00:00"); nullopt for
// anything else (date-only strings included).
std::optional<std::string> IterableDateString(std::string_view iso);

// Seconds since the epoch of an ISO-8601 date or date-time (no zone: UTC);
// nullopt when unreadable.
std::optional<int64_t> IterableEpochSeconds(std::string_view iso);

// `text` as one URL path segment: unreserved characters and '@' as-is,
// everything else percent-encoded ("a+b@x.io" -> "a%2Bb@x.io").
std::string IterablePathSegment(std::string_view text);

}  // namespace backflow
