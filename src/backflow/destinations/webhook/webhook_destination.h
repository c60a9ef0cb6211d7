// Generic webhook destination ("webhook"): POSTs each batch of changed records
// as one signed JSON document to a user-supplied URL.
//
// Wire protocol (what a receiver implements; see testing/webhook_receiver.h):
//   POST <url>
//   Content-Type: application/json, User-Agent: backflow/0.1
//   webhook-id: msg_<batch_id>        stable across retries of the batch
//   X-Idempotency-Key: <webhook-id>
//   webhook-timestamp: <unix seconds> per attempt
//   webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>
//                      (Standard Webhooks; only when signing_secret is set)
//   {"batch_id":"<32 hex>","mapping":"<name>","run_id":<n>,"count":<n>,
//    "records":[{"id":"<dedup id>","operation":"upsert"|"delete",
//                "change":"added"|"updated"|"deleted","key":"<key>",
//                "fields":{...}}]}
// batch_id is a hash of the records' dedup ids, so any re-send of the same
// records carries the same webhook-id.
//
// Replies: 2xx/207 accept every record except those listed as
// {"results":[{"id","status":"error","error","retryable"}]}; 408/429/5xx and
// transport errors are retried with exponential backoff and full jitter
// (Retry-After honoured, each wait capped at max_retry_wait_s, waits taken on
// ConnectorEnv::clock); 413 splits the batch in halves; 401/403 and 404/410
// (and 3xx, as redirects are not followed) stop the run with
// kUnauthenticated / kPermissionDenied / kFailedPrecondition; other 4xx fail
// the batch's records with kInvalidArgument. CheckConnection() POSTs one
// signed {"count":0,"records":[],"test":true} batch, without retries, and
// maps the reply the same way (2xx = OK; 408/429/5xx/transport errors =
// kUnavailable; other 4xx = kFailedPrecondition). A session is used from one
// thread at a time; `concurrency` sessions of a mapping may run at once (the
// destination's only shared state, the rate limiter, is thread-safe).
#pragma once

#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/common/clock.h"
#include "backflow/delivery/http_delivery.h"  // ParseRetryAfter
#include "backflow/destinations/destination.h"

namespace backflow {

DestinationDefinition WebhookDestinationDefinition();

// --- Exposed for tests and for receivers written against this protocol. ---

// The deterministic batch id (32 lowercase hex) of a batch's records.
std::string WebhookBatchId(std::span<const OutgoingRecord> records);

// The HMAC key of a signing secret: the base64-decoded bytes after "whsec_",
// otherwise the secret's own bytes. kInvalidArgument for bad base64.
absl::StatusOr<std::string> WebhookSigningKey(std::string_view secret);

// The webhook-signature header value: "v1,<base64 HMAC-SHA256>".
std::string WebhookSignature(std::string_view key, std::string_view webhook_id,
                             std::string_view timestamp, std::string_view body);

}  // namespace backflow
