#include "backflow/destinations/segment/segment_destination.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/hash.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/rate_limiter.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kWhat[] = "Segment";
constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kLibraryContext[] = R"({"library":{"name":"backflow","version":"0.1"}})";
constexpr char kDefaultBaseUrl[] = "https://api.segment.io";
constexpr char kEuBaseUrl[] = "https://events.eu1.segmentapis.com";
// Segment's recommended ceiling per workspace.
constexpr int64_t kVendorRequestsPerSecond = 1000;
constexpr size_t kMessageIdMax = 99;

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// Parses X-RateLimit-Reset: seconds to wait, or an epoch-seconds instant when
// the value is that large (the header's unit is not documented).
std::optional<std::chrono::milliseconds> RateLimitResetWait(std::string_view value,
                                                            Clock::TimePoint now) {
  std::optional<std::chrono::milliseconds> as_epoch = WaitUntilEpochSeconds(value, now);
  if (!as_epoch) return std::nullopt;
  std::string text(value);
  double seconds = std::strtod(text.c_str(), nullptr);
  if (seconds >= 1e9) return as_epoch;
  if (seconds < 0) return std::chrono::milliseconds(0);
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

struct SegmentConfig {
  std::string write_key;
  HttpSettings http;
};

// One record turned into a batch item, or why it cannot be sent.
struct PreparedItem {
  std::string text;  // serialized item, when status is OK
  absl::Status status;
};

class SegmentDestination final : public Destination {
 public:
  SegmentDestination(SegmentConfig cfg, HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)),
        http_(http),
        clock_(clock),
        vendor_limiter_(*clock, kVendorRequestsPerSecond, std::chrono::seconds(1)),
        user_limiter_(cfg_.http.UserLimiter(*clock)) {}

  absl::Status CheckConnection() override;
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override;
  int concurrency() const override { return cfg_.http.concurrency; }

  HttpDelivery NewDelivery() {
    VendorRules rules;
    rules.requested_wait = [](const HttpResponse& r,
                              Clock::TimePoint now) -> std::optional<std::chrono::milliseconds> {
      if (auto ra = r.Header("retry-after")) {
        if (auto wait = ParseRetryAfter(*ra, now)) return wait;
      }
      if (auto reset = r.Header("x-ratelimit-reset")) return RateLimitResetWait(*reset, now);
      return std::nullopt;
    };
    return HttpDelivery(http_, clock_, {&vendor_limiter_, user_limiter_.get()}, cfg_.http.retry,
                        std::move(rules));
  }

  HttpRequest BuildRequest(std::string body) const {
    HttpRequest req;
    req.method = "POST";
    req.url = BatchUrl();
    req.body = std::move(body);
    req.timeout = cfg_.http.timeout;
    req.headers.emplace_back("Authorization", SegmentBasicAuth(cfg_.write_key));
    req.headers.emplace_back("Content-Type", "application/json");
    req.headers.emplace_back("User-Agent", kUserAgent);
    return req;
  }

  std::string BatchUrl() const { return cfg_.http.base_url + "/v1/batch"; }

  // The status that stops the run for this reply, or OK when the reply does
  // not call for stopping.
  absl::Status StopStatus(const HttpResponse& resp) const;

  Clock* clock() const { return clock_; }

 private:
  SegmentConfig cfg_;
  HttpClient* http_;
  Clock* clock_;
  RateLimiter vendor_limiter_;
  std::unique_ptr<RateLimiter> user_limiter_;
};

absl::Status SegmentDestination::StopStatus(const HttpResponse& resp) const {
  std::string said = BodySnippet(resp.body);
  if (resp.status == 401) {
    return absl::UnauthenticatedError(fmt::format(
        "Segment refused the write key (HTTP 401): set write_key to the write key of an HTTP API "
        "source (Connections > Sources > <source> > Settings > API Keys) in the workspace that "
        "base_url points at ({}). Segment said: {}",
        cfg_.http.base_url, said));
  }
  if (resp.status == 403) {
    return absl::PermissionDeniedError(fmt::format(
        "Segment denied the request (HTTP 403): check that the source of write_key is enabled "
        "and belongs to the region of base_url ({}). Segment said: {}",
        cfg_.http.base_url, said));
  }
  if (resp.status == 404) {
    return absl::FailedPreconditionError(fmt::format(
        "no Segment tracking API at {} (HTTP 404): check base_url (https://api.segment.io, or "
        "{} for EU workspaces). Server said: {}",
        BatchUrl(), kEuBaseUrl, said));
  }
  return absl::OkStatus();
}

absl::Status SegmentDestination::CheckConnection() {
  HttpDelivery delivery = NewDelivery();
  std::string body = R"({"batch":[]})";
  DeliveryResult d = delivery.Send([&] { return BuildRequest(body); }, /*retry=*/false);
  if (!d.response.ok()) {
    return absl::UnavailableError(fmt::format("could not reach Segment at {}: {}", BatchUrl(),
                                              std::string(d.response.status().message())));
  }
  const HttpResponse& resp = *d.response;
  if (resp.status >= 200 && resp.status < 300) return absl::OkStatus();
  if (absl::Status s = StopStatus(resp); !s.ok()) return s;
  if (DefaultRetryableStatus(resp.status)) {
    return absl::UnavailableError(
        fmt::format("Segment at {} is not accepting requests right now (HTTP {}): {}", BatchUrl(),
                    resp.status, BodySnippet(resp.body)));
  }
  return absl::FailedPreconditionError(fmt::format(
      "Segment at {} rejected an empty batch (HTTP {}); check base_url. Server said: {}",
      BatchUrl(), resp.status, BodySnippet(resp.body)));
}

// True when `v` carries an identifier: a non-empty string or a number.
bool HasId(const json& v) {
  if (v.is_string()) return !v.get_ref<const std::string&>().empty();
  return v.is_number();
}

class SegmentSession final : public ActionSession {
 public:
  SegmentSession(SegmentDestination* dest, SessionOptions options)
      : dest_(dest), options_(std::move(options)), delivery_(dest->NewDelivery()) {
    action_ = options_.action != nullptr ? options_.action->id : "identify";
  }

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override;
  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  PreparedItem Prepare(const OutgoingRecord& record) const;
  absl::StatusOr<PartOutcome> SendPart(std::span<const std::string> items);

  SegmentDestination* dest_;
  SessionOptions options_;
  std::string action_;
  HttpDelivery delivery_;
};

PreparedItem SegmentSession::Prepare(const OutgoingRecord& record) const {
  auto invalid = [](std::string message) {
    return PreparedItem{.text = "", .status = absl::InvalidArgumentError(std::move(message))};
  };
  // Mappings whose `records` include changes the action cannot send (e.g. the
  // default, all) get a per-record error rather than a wrong call.
  if (record.is_delete()) {
    return invalid(fmt::format(
        "Segment's tracking API has no delete, so a deleted row cannot be sent with {}: set "
        "records: {} on this mapping",
        action_, action_ == "track" ? "added" : "added_or_updated"));
  }
  if (action_ == "track" && record.change != ChangeKind::kAdded) {
    return invalid(
        "track sends each new row as one event, so an updated row would count it twice: set "
        "records: added on this mapping");
  }
  json payload = RecordPayload(options_.layout, record);
  json item = json::object();
  item["type"] = action_;
  item["messageId"] = SegmentMessageId(action_, record.dedup_id, options_.run_id);
  for (auto& [key, value] : payload.items()) {
    if (value.is_null()) continue;  // an unset top-level field is left out
    if (key == "type" || key == "messageId") continue;
    item[key] = std::move(value);
  }
  for (const char* object_field : {"traits", "properties", "context"}) {
    auto it = item.find(object_field);
    if (it != item.end() && !it->is_object()) {
      return invalid(fmt::format(
          "{} must be an object, got {}: map {}.<name> fields, or a JSON column holding an object",
          object_field, BodySnippet(Dump(*it), 100), object_field));
    }
  }
  auto user = item.find("userId");
  auto anon = item.find("anonymousId");
  bool has_user = user != item.end() && HasId(*user);
  bool has_anon = anon != item.end() && HasId(*anon);
  if (!has_user && !has_anon) {
    return invalid(
        "neither userId nor anonymousId has a value, and Segment silently drops such events: "
        "make sure the column mapped to userId (or anonymousId) is never NULL or empty, e.g. "
        "filter these rows out in the model's SQL");
  }
  if (has_user && user->is_number()) *user = user->dump();
  if (has_anon && anon->is_number()) *anon = anon->dump();
  if (!has_user && user != item.end()) item.erase("userId");
  anon = item.find("anonymousId");
  if (!has_anon && anon != item.end()) item.erase(anon);
  if (action_ == "track") {
    auto ev = item.find("event");
    if (ev == item.end() || !ev->is_string() || ev->get_ref<const std::string&>().empty()) {
      return invalid(
          "event is empty, and Segment silently drops track calls without an event name: map "
          "event to a column that always holds the event's name");
    }
  }
  if (action_ == "group") {
    auto g = item.find("groupId");
    if (g == item.end() || !HasId(*g)) {
      return invalid(
          "groupId is empty, and Segment silently drops group calls without one: map groupId to "
          "a column that always holds the account's id");
    }
    if (g->is_number()) *g = g->dump();
  }
  std::string text = Dump(item);
  if (text.size() > kSegmentMaxEventBytes) {
    return invalid(fmt::format(
        "the {} event is {} bytes, over Segment's limit of {} bytes (32 KB) per event, so it was "
        "not sent: map fewer or shorter fields (large text or JSON columns)",
        action_, text.size(), kSegmentMaxEventBytes));
  }
  return PreparedItem{.text = std::move(text), .status = absl::OkStatus()};
}

// The request body around the items: {"batch":[ITEMS],"context":…,"sentAt":"<24 chars>"}.
constexpr std::string_view kBodyHead = R"({"batch":[)";
std::string BodyTail(std::string_view sent_at) {
  return fmt::format(R"(],"context":{},"sentAt":"{}"}})", kLibraryContext, sent_at);
}
size_t EnvelopeBytes() { return kBodyHead.size() + BodyTail("2000-01-01T00:00:00.000Z").size(); }

absl::StatusOr<PartOutcome> SegmentSession::SendPart(std::span<const std::string> items) {
  size_t size = EnvelopeBytes();
  for (const std::string& item : items) size += item.size() + 1;
  std::string joined;
  joined.reserve(size);
  joined.append(kBodyHead);
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) joined.push_back(',');
    joined.append(items[i]);
  }
  DeliveryResult d = delivery_.Send([&] {
    std::string body = joined;
    body.append(BodyTail(FormatIso8601(dest_->clock()->Now())));
    return dest_->BuildRequest(std::move(body));
  });
  if (!d.response.ok()) {
    return PartOutcome::AllRecords(items.size(), delivery_.FailureStatus(d, kWhat));
  }
  const HttpResponse& resp = *d.response;
  if (resp.status >= 200 && resp.status < 300) {
    return PartOutcome::AllRecords(items.size(), absl::OkStatus());
  }
  if (absl::Status stop = dest_->StopStatus(resp); !stop.ok()) return stop;
  if (resp.status == 400 || resp.status == 413) {
    return PartOutcome::Split(absl::InvalidArgumentError(fmt::format(
        "Segment rejected the {} event (HTTP {}): {}. Segment answers 400 for invalid JSON or "
        "events over its size limits; check this record's mapped values",
        action_, resp.status, BodySnippet(resp.body))));
  }
  return PartOutcome::AllRecords(items.size(), delivery_.FailureStatus(d, kWhat));
}

absl::StatusOr<std::vector<absl::Status>> SegmentSession::SendBatch(
    std::span<const OutgoingRecord> batch) {
  std::vector<absl::Status> out(batch.size(), absl::OkStatus());
  // Valid records (copied only when some were left out) and their items.
  std::vector<size_t> valid_index;
  std::vector<std::string> items;
  valid_index.reserve(batch.size());
  items.reserve(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    PreparedItem p = Prepare(batch[i]);
    if (!p.status.ok()) {
      out[i] = std::move(p.status);
      continue;
    }
    valid_index.push_back(i);
    items.push_back(std::move(p.text));
  }
  if (items.empty()) return out;
  std::vector<OutgoingRecord> compacted;
  std::span<const OutgoingRecord> valid = batch;
  if (valid_index.size() != batch.size()) {
    compacted.reserve(valid_index.size());
    for (size_t i : valid_index) compacted.push_back(batch[i]);
    valid = compacted;
  }

  // Packs consecutive items into requests within Segment's count and size limits.
  std::vector<std::pair<size_t, size_t>> chunks;  // [begin, end) into `items`
  const size_t envelope = EnvelopeBytes();
  for (size_t begin = 0; begin < items.size();) {
    size_t end = begin;
    size_t bytes = envelope;
    while (end < items.size() && end - begin < static_cast<size_t>(kSegmentMaxBatchEvents) &&
           bytes + items[end].size() + 1 <= kSegmentMaxBatchBytes) {
      bytes += items[end].size() + 1;
      ++end;
    }
    chunks.emplace_back(begin, end);
    begin = end;
  }

  bool delivered = false;
  for (size_t c = 0; c < chunks.size(); ++c) {
    auto [begin, end] = chunks[c];
    std::span<const OutgoingRecord> records = valid.subspan(begin, end - begin);
    absl::StatusOr<std::vector<absl::Status>> results =
        SendBisecting(records, [&](std::span<const OutgoingRecord> part) {
          size_t offset = static_cast<size_t>(part.data() - valid.data());
          return SendPart(std::span<const std::string>(items).subspan(offset, part.size()));
        });
    if (!results.ok()) {
      // A stop (bad key, wrong URL): the run ends. When nothing was accepted
      // the batch fails as a whole; otherwise the unsent records carry it.
      if (!delivered) return results.status();
      for (size_t k = begin; k < items.size(); ++k) out[valid_index[k]] = results.status();
      break;
    }
    for (size_t k = 0; k < results->size(); ++k) {
      if ((*results)[k].ok()) delivered = true;
      out[valid_index[begin + k]] = std::move((*results)[k]);
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ActionSession>> SegmentDestination::StartSession(
    const SessionOptions& options) {
  if (options.action == nullptr) {
    return absl::InvalidArgumentError("Segment session needs an action");
  }
  const std::string& id = options.action->id;
  if (id != "identify" && id != "track" && id != "group") {
    return absl::InvalidArgumentError(fmt::format("Segment has no action \"{}\"", id));
  }
  return std::unique_ptr<ActionSession>(std::make_unique<SegmentSession>(this, options));
}

FieldSpec IdField(const char* key, const char* label, const char* description) {
  FieldSpec f;
  f.key = key;
  f.label = label;
  f.description = description;
  f.type = FieldType::kString;
  return f;
}

FieldSpec ObjectField(const char* key, const char* label, const char* description) {
  FieldSpec f;
  f.key = key;
  f.label = label;
  f.description = description;
  f.type = FieldType::kObject;
  return f;
}

std::vector<FieldSpec> CommonFields() {
  std::vector<FieldSpec> fields;
  fields.push_back(IdField("userId", "User ID",
                           "Your stable id for the user (the warehouse's user key). Map userId, "
                           "anonymousId or both; a record with neither fails and is not sent."));
  fields.push_back(IdField("anonymousId", "Anonymous ID",
                           "Id of a user not known by userId yet (e.g. a device or cookie id)."));
  FieldSpec ts;
  ts.key = "timestamp";
  ts.label = "Timestamp";
  ts.description =
      "When the call happened (ISO-8601), for historical data; Segment uses the time it "
      "received the call when unset.";
  ts.type = FieldType::kTimestamp;
  fields.push_back(ts);
  fields.push_back(ObjectField(
      "context", "Context",
      "Extra information about the call (context.ip, context.locale, ...); map whole from a JSON "
      "column or field by field as context.<name>."));
  return fields;
}

// Every mapping must give Segment a userId or an anonymousId.
std::vector<std::string> RequireUserOrAnonymousId(const json& /*settings*/,
                                                  const std::vector<MappedField>& fields) {
  for (const MappedField& f : fields) {
    if (f.field == "userId" || f.field == "anonymousId") return {};
  }
  return {
      "map userId or anonymousId (or both): Segment silently drops calls that have neither, "
      "e.g. userId: user_id"};
}

constexpr char kNotes[] = R"md(## Example

```yaml
destinations:
  - name: segment
    type: segment
    settings:
      write_key: ${env:SEGMENT_WRITE_KEY}
      # base_url: https://events.eu1.segmentapis.com   # EU workspaces
mappings:
  - name: users_to_segment
    model: users
    destination: segment
    action: identify
    records: added_or_updated
    fields:
      userId: user_id
      traits.email: email
      traits.plan: plan
  - name: orders_to_segment
    model: orders
    destination: segment
    action: track
    records: added
    fields:
      userId: user_id
      event: event_name
      properties.revenue: amount
      timestamp: created_at
```

## Wire format

Every batch of records is one `POST <base_url>/v1/batch` (at most 2,500 calls and 500 KB; larger
batches are split locally) with `Authorization: Basic base64("<write_key>:")` (the write key as
user name and an empty password: note the trailing colon) and `Content-Type: application/json`:

```json
{"batch": [
   {"type": "identify", "messageId": "bf-5d1e…-12", "userId": "u_1",
    "traits": {"email": "ada@example.com", "plan": "pro"}, "timestamp": "2026-01-02T03:04:05Z"},
   {"type": "track", "messageId": "bf-a07b…", "userId": "u_1", "event": "Order Completed",
    "properties": {"revenue": 14.99}}],
 "context": {"library": {"name": "backflow", "version": "0.1"}},
 "sentAt": "2026-01-02T03:04:07.000Z"}
```

- Dotted fields become nested objects: `traits.plan: plan` sends `"traits": {"plan": …}`. Null
  values under `traits` / `properties` are sent as `null`; unset top-level fields are left out.
- `messageId` is deterministic, so a re-sent call (after a timeout or a retry) is deduplicated by
  Segment (its window is about 24 hours). For `track` it depends only on the record
  (`bf-<dedup id>`): an event is never counted twice. For `identify` and `group` it also carries
  the run id (`bf-<dedup id>-<run>`): retries within a run are deduplicated, while a trait that
  flips back to an earlier value in a later run is not mistaken for a duplicate and dropped.
- `track` sends only added records: each new row of the model is one event. `identify` and
  `group` send added and updated records. The tracking API has no delete: set `records:` on the
  mapping (`added_or_updated`, or `added` for `track`), otherwise each deleted (or, for `track`,
  updated) row fails with a message saying so. Use Segment's user deletion and suppression to
  remove users.

## Checked before sending

Segment answers `200` even for calls it drops, so Backflow checks these itself and fails the
record (with the reason in the run report) instead of sending it:

- a call needs `userId` or `anonymousId`; `track` needs `event`; `group` needs `groupId`;
- a call must be at most 32 KB as JSON;
- `traits`, `properties` and `context` must be objects.

## Replies

| reply | outcome |
| --- | --- |
| 2xx | every call of the request accepted |
| 400, 413 (invalid JSON, too large) | the request is split in halves and re-sent until the rejected records are isolated; they fail with Segment's message |
| 429 | retried after `Retry-After` (else `X-RateLimit-Reset`: seconds, or an epoch time); after `max_retries` the records fail and are retried next run |
| 5xx, timeout, connection error | retried with exponential backoff and jitter; then the records fail and are retried next run |
| 401, 403 | the run stops: check `write_key` (and that it belongs to the region of `base_url`) |
| 404 | the run stops: check `base_url` |
| other 4xx | the request's records fail with Segment's message |

## Regions and connection checks

EU workspaces must set `base_url: https://events.eu1.segmentapis.com`. Calls sent to the US
endpoint with an EU write key are answered `200` but never appear in the workspace.

Segment has no endpoint that checks a write key. `backflow test-connection` posts an empty batch
(`{"batch":[]}`) with the key: `401` is reported as a bad write key and any `2xx` as success.
Segment has been reported to answer `200` even for unknown write keys, so a passing check proves
that the endpoint is reachable, not that the key is right: check the source's debugger after the
first sync.
)md";

absl::StatusOr<SegmentConfig> ParseConfig(const json& settings) {
  if (!settings.is_object()) return absl::InvalidArgumentError("segment settings must be a map");
  SegmentConfig cfg;
  auto key = settings.find("write_key");
  if (key == settings.end() || !key->is_string() || key->get<std::string>().empty()) {
    return absl::InvalidArgumentError(
        "write_key: required; the write key of a Segment HTTP API source");
  }
  cfg.write_key = key->get<std::string>();
  if (cfg.write_key.find_first_of(":\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        "write_key: must not contain ':' or line breaks; paste only the source's write key");
  }
  absl::StatusOr<HttpSettings> http = ParseHttpSettings(settings);
  if (!http.ok()) return http.status();
  cfg.http = *std::move(http);
  return cfg;
}

}  // namespace

std::string SegmentMessageId(std::string_view action, std::string_view dedup_id, int64_t run_id) {
  std::string id = "bf-";
  id.append(dedup_id);
  if (action != "track") id += fmt::format("-{}", run_id);
  if (id.size() > kMessageIdMax) {
    Hasher128 h;
    h.Add(action).Add(dedup_id).Add(std::to_string(run_id));
    id = "bf-" + h.Finish().ToHex();
  }
  return id;
}

std::string SegmentBasicAuth(std::string_view write_key) {
  std::string user_pass(write_key);
  user_pass.push_back(':');
  return "Basic " + Base64Encode(user_pass);
}

DestinationDefinition SegmentDestinationDefinition() {
  DestinationDefinition def;
  def.type = "segment";
  def.title = "Segment";
  def.description =
      "Sends model rows to Segment's HTTP Tracking API as identify (user traits), track (one "
      "event per new row) and group (account traits) calls, batched, with deterministic "
      "messageIds so re-sends are deduplicated.";
  def.maturity = "beta";

  SettingSpec key;
  key.key = "write_key";
  key.label = "Write key";
  key.description =
      "Write key of a Segment HTTP API source (Connections > Sources > <source> > Settings > API "
      "Keys); sent as HTTP Basic auth.";
  key.required = true;
  key.secret = true;
  def.settings.push_back(key);

  HttpSettingsDefaults http;
  http.base_url = kDefaultBaseUrl;
  http.concurrency = 4;
  http.base_url_help = fmt::format(
      "EU workspaces must use {}: an EU workspace's events sent to the US endpoint are "
      "accepted (HTTP 200) but silently lost.",
      kEuBaseUrl);
  for (SettingSpec& s : HttpSettingSpecs(http)) def.settings.push_back(std::move(s));

  ActionSpec identify;
  identify.id = "identify";
  identify.title = "Identify users";
  identify.description =
      "Sends an identify call per added or updated row: who the user is (userId / anonymousId) "
      "and their traits (traits.<name>), which Segment forwards to its destinations.";
  identify.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                         RecordSelection::kAddedOrUpdated};
  identify.fields = CommonFields();
  identify.fields.push_back(ObjectField(
      "traits", "Traits",
      "User traits, e.g. traits.email, traits.plan; or the whole object from a JSON column."));
  identify.extra_field_parents = {"traits", "context"};
  identify.max_batch_records = kSegmentMaxBatchEvents;
  identify.default_batch_records = 500;
  identify.validate = RequireUserOrAnonymousId;
  def.actions.push_back(identify);

  ActionSpec track;
  track.id = "track";
  track.title = "Track events";
  track.description =
      "Sends a track call per added row: each new row of the model (an order, a signup) is one "
      "event, named by event, with its properties (properties.<name>).";
  track.selections = {RecordSelection::kAdded};
  track.fields = CommonFields();
  FieldSpec event = IdField(
      "event", "Event name",
      "The event's name, e.g. \"Order Completed\": a column, or a text literal when every row "
      "is the same event; a row without one fails.");
  event.required = true;
  track.fields.push_back(event);
  track.fields.push_back(ObjectField(
      "properties", "Properties",
      "Event properties, e.g. properties.revenue; or the whole object from a JSON column."));
  track.extra_field_parents = {"properties", "context"};
  track.max_batch_records = kSegmentMaxBatchEvents;
  track.default_batch_records = 500;
  track.validate = RequireUserOrAnonymousId;
  def.actions.push_back(track);

  ActionSpec group;
  group.id = "group";
  group.title = "Group users";
  group.description =
      "Sends a group call per added or updated row: associates the user with an account or "
      "organisation (groupId) and sets the group's traits (traits.<name>).";
  group.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                      RecordSelection::kAddedOrUpdated};
  group.fields = CommonFields();
  FieldSpec group_id = IdField("groupId", "Group ID", "Your stable id for the account or group.");
  group_id.required = true;
  group_id.identifier = true;
  group.fields.push_back(group_id);
  group.fields.push_back(ObjectField(
      "traits", "Traits",
      "Group traits, e.g. traits.name, traits.plan; or the whole object from a JSON column."));
  group.extra_field_parents = {"traits", "context"};
  group.max_batch_records = kSegmentMaxBatchEvents;
  group.default_batch_records = 500;
  group.validate = RequireUserOrAnonymousId;
  def.actions.push_back(group);

  def.notes = kNotes;
  def.create = HttpDestinationFactory<SegmentDestination>(def.type, ParseConfig);
  return def;
}

}  // namespace backflow
