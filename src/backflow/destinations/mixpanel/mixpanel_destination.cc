#include "backflow/destinations/mixpanel/mixpanel_destination.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/civil_date.h"
#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/hash.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/destinations/destination.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kWhat[] = "Mixpanel";
constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kDefaultBaseUrl[] = "https://api.mixpanel.com";
constexpr char kEuBaseUrl[] = "https://api-eu.mixpanel.com";
constexpr char kInBaseUrl[] = "https://api-in.mixpanel.com";
constexpr int64_t kDefaultMegabytesPerMinute = 2000;  // "2 GB of uncompressed JSON per minute"
constexpr int64_t kDefaultEventsPerSecond = 30'000;   // "about 30k events/s per project"
constexpr size_t kBytesPerRateUnit = 1'000'000;
constexpr std::chrono::milliseconds kBaseBackoff{2000};
constexpr std::chrono::milliseconds kMaxRateLimitBackoff{60'000};
constexpr int64_t kJitterMinMs = 1000;
constexpr int64_t kJitterMaxMs = 5000;
constexpr int64_t kFutureSlackMs = 3'600'000;  // "now + 1 h"

// Profile fields declared by set_profile and the reserved property each sets.
struct ReservedProperty {
  const char* field;
  const char* property;
  const char* label;
  FieldType type;
  const char* default_column;
};
constexpr ReservedProperty kReservedProfileProperties[] = {
    {"email", "$email", "Email", FieldType::kString, "email"},
    {"name", "$name", "Name", FieldType::kString, ""},
    {"first_name", "$first_name", "First name", FieldType::kString, "first_name"},
    {"last_name", "$last_name", "Last name", FieldType::kString, "last_name"},
    {"phone", "$phone", "Phone", FieldType::kString, "phone"},
    {"avatar", "$avatar", "Avatar URL", FieldType::kString, ""},
    {"created", "$created", "Created", FieldType::kTimestamp, ""},
};

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// "2024-05-01T12:00:00": the date-time form Mixpanel reads for properties (UTC).
std::string MixpanelDateTime(int64_t ms) {
  std::time_t secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int64_t NowMs(const Clock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock.Now().time_since_epoch())
      .count();
}

// The record's payload, with timestamps (except the field `keep`) in
// Mixpanel's property date-time form.
json MixpanelPayload(const FieldLayout& layout, const OutgoingRecord& record,
                     std::string_view keep) {
  const std::vector<std::string>& names = record.is_delete() ? layout.identity : layout.fields;
  std::optional<OutgoingRecord> copy;
  for (size_t i = 0; i < names.size() && i < record.values.size(); ++i) {
    const Value& v = record.values[i];
    if (v.type() != ValueType::kTimestamp || names[i] == keep) continue;
    int64_t ms = 0;
    if (!ParseMixpanelTimestampMs(v.text(), &ms)) continue;
    if (!copy) copy = record;
    copy->values[i] = Value::String(MixpanelDateTime(ms));
  }
  return RecordPayload(layout, copy ? *copy : record);
}

// An id as Mixpanel reads it: a string, or a number as text.
std::optional<std::string> IdText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && std::trunc(d) == d && std::fabs(d) < 9e15) {
      return std::to_string(static_cast<int64_t>(d));
    }
    return v.dump();
  }
  return std::nullopt;
}

// The path of the first object or array with too many entries, if any.
std::optional<std::string> OversizedContainer(const json& v, const std::string& path) {
  if (v.is_object()) {
    if (v.size() >= kMixpanelMaxProperties) return path;
    for (const auto& [k, child] : v.items()) {
      if (auto p = OversizedContainer(child, path + "." + k)) return p;
    }
  } else if (v.is_array()) {
    if (v.size() >= kMixpanelMaxProperties) return path;
    for (size_t i = 0; i < v.size(); ++i) {
      if (auto p = OversizedContainer(v[i], fmt::format("{}[{}]", path, i))) return p;
    }
  }
  return std::nullopt;
}

bool IsValidInsertId(std::string_view id) {
  if (id.empty() || id.size() > kMixpanelMaxInsertIdChars) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-';
  });
}

enum class ImportAuth { kServiceAccount, kProjectToken };

struct MixpanelConfig {
  std::string project_token;
  std::string service_account_username;
  std::string service_account_secret;
  int64_t project_id = 0;
  size_t import_max_request_bytes = kMixpanelImportMaxBytes;
  size_t engage_max_request_bytes = kMixpanelEngageMaxBytes;
  int64_t max_megabytes_per_minute = kDefaultMegabytesPerMinute;
  int64_t max_events_per_second = kDefaultEventsPerSecond;
  HttpSettings http;

  bool has_service_account() const { return !service_account_username.empty(); }
  ImportAuth import_auth() const {
    return has_service_account() ? ImportAuth::kServiceAccount : ImportAuth::kProjectToken;
  }
};

// Per-session retry bookkeeping for Mixpanel's 429 schedule: the attempt
// number of the request being sent and the jitter source.
struct RetryState {
  int attempt = 0;
  std::mt19937_64 rng{std::random_device{}()};
};

class MixpanelDestination final : public Destination {
 public:
  MixpanelDestination(MixpanelConfig cfg, HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)), http_(http), clock_(clock) {
    if (cfg_.max_megabytes_per_minute > 0) {
      bytes_limiter_ = std::make_unique<RateLimiter>(*clock_, cfg_.max_megabytes_per_minute,
                                                     std::chrono::minutes(1));
    }
    if (cfg_.max_events_per_second > 0) {
      events_limiter_ = std::make_unique<RateLimiter>(*clock_, cfg_.max_events_per_second,
                                                      std::chrono::seconds(1));
    }
    user_limiter_ = cfg_.http.UserLimiter(*clock_);
  }

  absl::Status CheckConnection() override;
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override;

  // A sender for one session; `state` (owned by the session) drives the 429 schedule.
  HttpDelivery NewDelivery(RetryState* state) const {
    RetryPolicy policy = cfg_.http.retry;
    policy.base_backoff = kBaseBackoff;
    policy.multiplier = 2.0;
    VendorRules rules;
    rules.requested_wait = [state](
                               const HttpResponse& r,
                               Clock::TimePoint now) -> std::optional<std::chrono::milliseconds> {
      if (auto ra = r.Header("retry-after")) {
        if (auto wait = ParseRetryAfter(*ra, now)) return wait;
      }
      if (r.status != 429) return std::nullopt;
      // Mixpanel sends no Retry-After: 2 s doubling to 60 s, plus 1-5 s jitter.
      std::uniform_int_distribution<int64_t> jitter(kJitterMinMs, kJitterMaxMs);
      return MixpanelRateLimitBackoff(std::max(1, state->attempt)) +
             std::chrono::milliseconds(jitter(state->rng));
    };
    return HttpDelivery(http_, clock_, {user_limiter_.get()}, policy, std::move(rules));
  }

  // Takes Mixpanel's per-project ingestion allowance for one attempt.
  void AcquireVolume(size_t bytes, size_t events) const {
    if (bytes_limiter_) {
      size_t units = std::max<size_t>(1, (bytes + kBytesPerRateUnit - 1) / kBytesPerRateUnit);
      for (size_t i = 0; i < units; ++i) bytes_limiter_->Acquire();
    }
    if (events_limiter_) {
      for (size_t i = 0; i < events; ++i) events_limiter_->Acquire();
    }
  }

  std::string ImportUrl(ImportAuth auth) const {
    std::string url = cfg_.http.base_url + "/import?strict=1";
    if (auth == ImportAuth::kServiceAccount) url += fmt::format("&project_id={}", cfg_.project_id);
    return url;
  }
  std::string EngageUrl() const { return cfg_.http.base_url + "/engage?verbose=1"; }

  HttpRequest ImportRequest(std::string body, ImportAuth auth) const {
    HttpRequest req = JsonPost(ImportUrl(auth), std::move(body));
    req.headers.emplace_back("Authorization", auth == ImportAuth::kServiceAccount
                                                  ? MixpanelBasicAuth(cfg_.service_account_username,
                                                                      cfg_.service_account_secret)
                                                  : MixpanelBasicAuth(cfg_.project_token, ""));
    return req;
  }

  HttpRequest EngageRequest(std::string body) const {
    return JsonPost(EngageUrl(), std::move(body));
  }

  // The status that stops the run for an /import reply, or OK.
  absl::Status ImportStop(const HttpResponse& resp, ImportAuth auth) const;
  // The status that stops the run for an /engage reply, or OK.
  absl::Status EngageStop(const HttpResponse& resp) const;

  const MixpanelConfig& cfg() const { return cfg_; }
  Clock* clock() const { return clock_; }

 private:
  HttpRequest JsonPost(std::string url, std::string body) const {
    HttpRequest req;
    req.method = "POST";
    req.url = std::move(url);
    req.body = std::move(body);
    req.timeout = cfg_.http.timeout;
    req.headers.emplace_back("Content-Type", "application/json");
    req.headers.emplace_back("Accept", "application/json");
    req.headers.emplace_back("User-Agent", kUserAgent);
    return req;
  }

  std::string ResidencyHint() const {
    return fmt::format(
        "base_url ({}) must be the host of the project's data residency: {} (US), {} (EU) or {} "
        "(India)",
        cfg_.http.base_url, kDefaultBaseUrl, kEuBaseUrl, kInBaseUrl);
  }

  MixpanelConfig cfg_;
  HttpClient* http_;
  Clock* clock_;
  std::unique_ptr<RateLimiter> bytes_limiter_;
  std::unique_ptr<RateLimiter> events_limiter_;
  std::unique_ptr<RateLimiter> user_limiter_;
};

absl::Status MixpanelDestination::ImportStop(const HttpResponse& resp, ImportAuth auth) const {
  std::string said = BodySnippet(resp.body);
  if (resp.status == 401 || resp.status == 403) {
    std::string fix =
        auth == ImportAuth::kServiceAccount
            ? fmt::format(
                  "check service_account_username and service_account_secret, that the service "
                  "account has the Owner or Admin role on project_id {} (Organization Settings > "
                  "Service Accounts), and that project_id is that project's id",
                  cfg_.project_id)
            : "check project_token (Project Settings > Overview > Access Keys), or set a "
              "service account (service_account_username, service_account_secret, project_id)";
    std::string message =
        fmt::format("Mixpanel refused the /import credentials (HTTP {}): {}; {}. Mixpanel said: {}",
                    resp.status, fix, ResidencyHint(), said);
    return resp.status == 401 ? absl::UnauthenticatedError(message)
                              : absl::PermissionDeniedError(message);
  }
  if (resp.status == 404) {
    return absl::FailedPreconditionError(
        fmt::format("no Mixpanel Import API at {} (HTTP 404): {}. Server said: {}", ImportUrl(auth),
                    ResidencyHint(), said));
  }
  return absl::OkStatus();
}

absl::Status MixpanelDestination::EngageStop(const HttpResponse& resp) const {
  std::string said = BodySnippet(resp.body);
  if (resp.status == 401 || resp.status == 403) {
    std::string message = fmt::format(
        "Mixpanel refused the profile updates (HTTP {}): check that project_token is the token "
        "of the project to write to (Project Settings > Overview > Access Keys); {}. Mixpanel "
        "said: {}",
        resp.status, ResidencyHint(), said);
    return resp.status == 401 ? absl::UnauthenticatedError(message)
                              : absl::PermissionDeniedError(message);
  }
  if (resp.status == 404) {
    return absl::FailedPreconditionError(
        fmt::format("no Mixpanel Engage API at {} (HTTP 404): {}. Server said: {}", EngageUrl(),
                    ResidencyHint(), said));
  }
  return absl::OkStatus();
}

absl::Status MixpanelDestination::CheckConnection() {
  // The cheapest authenticated call: an empty /import batch, once per
  // configured credential (nothing is ingested). /engage checks no credential.
  std::vector<ImportAuth> auths;
  if (cfg_.has_service_account()) auths.push_back(ImportAuth::kServiceAccount);
  if (!cfg_.project_token.empty()) auths.push_back(ImportAuth::kProjectToken);
  RetryState state;
  HttpDelivery delivery = NewDelivery(&state);
  for (ImportAuth auth : auths) {
    DeliveryResult d = delivery.Send([&] { return ImportRequest("[]", auth); }, /*retry=*/false);
    if (!d.response.ok()) {
      return absl::UnavailableError(fmt::format("could not reach Mixpanel at {}: {}",
                                                cfg_.http.base_url,
                                                std::string(d.response.status().message())));
    }
    const HttpResponse& resp = *d.response;
    // 400 is a validation answer, given only to authenticated requests.
    if ((resp.status >= 200 && resp.status < 300) || resp.status == 400) continue;
    if (absl::Status s = ImportStop(resp, auth); !s.ok()) return s;
    if (DefaultRetryableStatus(resp.status)) {
      return absl::UnavailableError(
          fmt::format("Mixpanel at {} is not accepting requests right now (HTTP {}): {}",
                      cfg_.http.base_url, resp.status, BodySnippet(resp.body)));
    }
    return absl::FailedPreconditionError(fmt::format(
        "Mixpanel at {} answered HTTP {} to an empty /import batch; {}. Server said: {}",
        cfg_.http.base_url, resp.status, ResidencyHint(), BodySnippet(resp.body)));
  }
  return absl::OkStatus();
}

// One record turned into request items, or why it cannot be sent.
struct Prepared {
  std::vector<std::string> items;
  absl::Status status;
};

Prepared Invalid(std::string message) {
  return Prepared{.items = {}, .status = absl::InvalidArgumentError(std::move(message))};
}

// Sends the valid records of a batch in requests within the count and size
// limits, bisecting parts the API rejects as a whole. `send` gets the
// records and their items (each record's items stay together).
using ItemSender = std::function<absl::StatusOr<PartOutcome>(
    std::span<const OutgoingRecord>, std::span<const std::vector<std::string>>)>;

absl::StatusOr<std::vector<absl::Status>> SendPrepared(std::span<const OutgoingRecord> batch,
                                                       std::vector<Prepared> prepared,
                                                       size_t max_items, size_t max_bytes,
                                                       const ItemSender& send) {
  std::vector<absl::Status> out(batch.size(), absl::OkStatus());
  std::vector<size_t> valid_index;
  std::vector<OutgoingRecord> valid;
  std::vector<std::vector<std::string>> items;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!prepared[i].status.ok()) {
      out[i] = std::move(prepared[i].status);
      continue;
    }
    valid_index.push_back(i);
    valid.push_back(batch[i]);
    items.push_back(std::move(prepared[i].items));
  }
  // Consecutive records packed into requests: "[" item ("," item)* "]".
  std::vector<std::pair<size_t, size_t>> chunks;
  for (size_t begin = 0; begin < valid.size();) {
    size_t end = begin, count = 0, bytes = 2;
    while (end < valid.size()) {
      size_t add_count = items[end].size(), add_bytes = 0;
      for (const std::string& item : items[end]) add_bytes += item.size() + 1;
      if (end > begin && (count + add_count > max_items || bytes + add_bytes > max_bytes)) break;
      count += add_count;
      bytes += add_bytes;
      ++end;
    }
    chunks.emplace_back(begin, end);
    begin = end;
  }
  bool delivered = false;
  std::span<const OutgoingRecord> records(valid);
  std::span<const std::vector<std::string>> all_items(items);
  for (auto [begin, end] : chunks) {
    absl::StatusOr<std::vector<absl::Status>> results =
        SendBisecting(records.subspan(begin, end - begin), [&](std::span<const OutgoingRecord> p) {
          size_t offset = static_cast<size_t>(p.data() - records.data());
          return send(p, all_items.subspan(offset, p.size()));
        });
    if (!results.ok()) {
      // A stop (credentials, URL): fail the batch when nothing was accepted,
      // otherwise the unsent records carry it.
      if (!delivered) return results.status();
      for (size_t k = begin; k < valid.size(); ++k) out[valid_index[k]] = results.status();
      break;
    }
    for (size_t k = 0; k < results->size(); ++k) {
      if ((*results)[k].ok()) delivered = true;
      out[valid_index[begin + k]] = std::move((*results)[k]);
    }
  }
  return out;
}

std::string JoinArray(std::span<const std::vector<std::string>> items) {
  size_t size = 2;
  for (const auto& v : items) {
    for (const std::string& s : v) size += s.size() + 1;
  }
  std::string body;
  body.reserve(size);
  body.push_back('[');
  bool first = true;
  for (const auto& v : items) {
    for (const std::string& s : v) {
      if (!first) body.push_back(',');
      first = false;
      body.append(s);
    }
  }
  body.push_back(']');
  return body;
}

size_t ItemCount(std::span<const std::vector<std::string>> items) {
  size_t n = 0;
  for (const auto& v : items) n += v.size();
  return n;
}

// --- track_event -----------------------------------------------------------

class ImportSession final : public ActionSession {
 public:
  ImportSession(MixpanelDestination* dest, SessionOptions options)
      : dest_(dest),
        options_(std::move(options)),
        retry_(std::make_unique<RetryState>()),
        delivery_(dest->NewDelivery(retry_.get())) {}

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override {
    std::vector<Prepared> prepared;
    prepared.reserve(batch.size());
    for (const OutgoingRecord& r : batch) prepared.push_back(Prepare(r));
    return SendPrepared(batch, std::move(prepared), kMixpanelMaxImportEvents,
                        dest_->cfg().import_max_request_bytes,
                        [this](std::span<const OutgoingRecord> records,
                               std::span<const std::vector<std::string>> items) {
                          return SendPart(records, items);
                        });
  }

  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  Prepared Prepare(const OutgoingRecord& record) const;
  absl::StatusOr<PartOutcome> SendPart(std::span<const OutgoingRecord> records,
                                       std::span<const std::vector<std::string>> items);

  MixpanelDestination* dest_;
  SessionOptions options_;
  std::unique_ptr<RetryState> retry_;
  HttpDelivery delivery_;
};

Prepared ImportSession::Prepare(const OutgoingRecord& record) const {
  if (record.change != ChangeKind::kAdded) {
    return Invalid(fmt::format(
        "track_event sends each new row as one event, so a {} row cannot be sent (an event "
        "cannot be changed or deleted through /import): set records: added on this mapping",
        ChangeKindName(record.change)));
  }
  json p = MixpanelPayload(options_.layout, record, "time");

  auto ev = p.find("event");
  std::optional<std::string> event = ev == p.end() ? std::nullopt : IdText(*ev);
  if (!event || event->empty()) {
    return Invalid(
        "event is empty: Mixpanel rejects events without a name; map event to a column that "
        "always holds the event's name, or to a text literal such as 'Order Completed'");
  }

  auto did = p.find("distinct_id");
  std::optional<std::string> distinct_id = did == p.end() ? std::nullopt : IdText(*did);
  if (!distinct_id) {
    return Invalid(
        "distinct_id is NULL: Mixpanel needs the user's id on every event (use '' for events "
        "that belong to no user, e.g. distinct_id: coalesce(user_id, ''))");
  }
  if (IsMixpanelPlaceholderId(*distinct_id)) {
    return Invalid(fmt::format(
        "distinct_id \"{}\" is a placeholder Mixpanel rejects (like null, anon, undefined or the "
        "all-zero UUID): map the user's real id, or '' for events that belong to no user",
        *distinct_id));
  }

  auto t = p.find("time");
  int64_t time_ms = 0;
  if (t == p.end() || t->is_null()) {
    return Invalid(
        "time is NULL: Mixpanel needs when the event happened; map time to a "
        "timestamp column that is never NULL");
  }
  if (t->is_number()) {
    double n = t->get<double>();
    time_ms = static_cast<int64_t>(n >= kMixpanelMillisecondsThreshold ? n : n * 1000);
  } else if (!t->is_string() || !ParseMixpanelTimestampMs(t->get<std::string>(), &time_ms)) {
    return Invalid(
        fmt::format("time {} is not a timestamp (ISO-8601 expected)", BodySnippet(Dump(*t), 60)));
  }
  const int64_t now_ms = NowMs(*dest_->clock());
  if (time_ms < kMixpanelMinTimeMs) {
    return Invalid(fmt::format(
        "time {} is before 1971-01-01, which Mixpanel rejects: check the column mapped to time",
        MixpanelDateTime(time_ms)));
  }
  if (time_ms > now_ms + kFutureSlackMs) {
    return Invalid(fmt::format(
        "time {} is more than an hour in the future ({} UTC now), which Mixpanel rejects: check "
        "the column mapped to time and its time zone",
        MixpanelDateTime(time_ms), MixpanelDateTime(now_ms)));
  }

  std::string insert_id = MixpanelInsertId(record.dedup_id);
  if (auto iid = p.find("insert_id"); iid != p.end() && !iid->is_null()) {
    std::optional<std::string> text = IdText(*iid);
    if (!text || !IsValidInsertId(*text) || IsMixpanelPlaceholderId(*text)) {
      return Invalid(fmt::format(
          "insert_id {} is not a valid $insert_id: Mixpanel wants at most {} letters, digits and "
          "dashes, not a placeholder; leave insert_id unmapped to use Backflow's own id",
          BodySnippet(Dump(*iid), 60), kMixpanelMaxInsertIdChars));
    }
    insert_id = *text;
  }

  json properties = json::object();
  if (auto pr = p.find("properties"); pr != p.end() && !pr->is_null()) {
    if (!pr->is_object()) {
      return Invalid(fmt::format(
          "properties must be an object, got {}: map properties.<name> fields, or a JSON column "
          "holding an object",
          BodySnippet(Dump(*pr), 100)));
    }
    properties = std::move(*pr);
  }
  properties["time"] = time_ms;
  properties["distinct_id"] = *distinct_id;
  properties["$insert_id"] = insert_id;
  if (properties.size() >= kMixpanelMaxProperties) {
    return Invalid(fmt::format(
        "the event has {} properties; Mixpanel accepts fewer than {}: map fewer properties.<name> "
        "fields",
        properties.size(), kMixpanelMaxProperties));
  }
  for (const auto& [k, v] : properties.items()) {
    if (auto path = OversizedContainer(v, "properties." + k)) {
      return Invalid(fmt::format(
          "{} has {} or more keys or elements; Mixpanel accepts fewer than {} in a nested "
          "object or list",
          *path, kMixpanelMaxProperties, kMixpanelMaxProperties));
    }
  }
  json item = {{"event", *event}, {"properties", std::move(properties)}};
  std::string text = Dump(item);
  if (text.size() >= kMixpanelMaxEventBytes) {
    return Invalid(fmt::format(
        "the event is {} bytes; Mixpanel accepts events under {} bytes (1 MB): map fewer or "
        "shorter properties",
        text.size(), kMixpanelMaxEventBytes));
  }
  return Prepared{.items = {std::move(text)}, .status = absl::OkStatus()};
}

absl::StatusOr<PartOutcome> ImportSession::SendPart(
    std::span<const OutgoingRecord> records, std::span<const std::vector<std::string>> items) {
  const ImportAuth auth = dest_->cfg().import_auth();
  const std::string body = JoinArray(items);
  const size_t events = ItemCount(items);
  retry_->attempt = 0;
  DeliveryResult d = delivery_.Send([&] {
    ++retry_->attempt;
    dest_->AcquireVolume(body.size(), events);
    return dest_->ImportRequest(body, auth);
  });
  const size_t n = records.size();
  if (!d.response.ok()) return PartOutcome::AllRecords(n, delivery_.FailureStatus(d, kWhat));
  const HttpResponse& resp = *d.response;
  if (resp.status >= 200 && resp.status < 300) return PartOutcome::AllRecords(n, absl::OkStatus());
  if (absl::Status stop = dest_->ImportStop(resp, auth); !stop.ok()) return stop;
  if (resp.status == 413) {
    return PartOutcome::Split(absl::InvalidArgumentError(fmt::format(
        "Mixpanel refused the event as too large (HTTP 413): {}; map fewer or shorter properties",
        BodySnippet(resp.body))));
  }
  if (resp.status == 400) {
    json doc = json::parse(resp.body, nullptr, /*allow_exceptions=*/false);
    auto failed = doc.is_object() ? doc.find("failed_records") : doc.end();
    if (!doc.is_object() || failed == doc.end() || !failed->is_array() || failed->empty()) {
      // Rejected as a whole without naming a record: isolate it.
      return PartOutcome::Split(absl::InvalidArgumentError(
          fmt::format("Mixpanel rejected the event (HTTP 400): {}", BodySnippet(resp.body))));
    }
    // A partial success: the listed events failed validation, the others were ingested.
    std::vector<absl::Status> out(n, absl::OkStatus());
    std::vector<std::string> insert_ids(n);
    for (size_t i = 0; i < n; ++i) {
      json ev = json::parse(items[i].front(), nullptr, /*allow_exceptions=*/false);
      if (ev.is_object() && ev.contains("properties") && ev["properties"].is_object()) {
        insert_ids[i] = ev["properties"].value("$insert_id", "");
      }
    }
    for (const json& f : *failed) {
      if (!f.is_object()) continue;
      std::optional<size_t> at;
      if (auto iid = f.find("insert_id"); iid != f.end() && iid->is_string() && !iid->empty()) {
        for (size_t i = 0; i < n; ++i) {
          if (insert_ids[i] == iid->get_ref<const std::string&>()) {
            at = i;
            break;
          }
        }
      }
      if (!at) {
        auto index = f.find("index");
        if (index != f.end() && index->is_number_integer() && index->get<int64_t>() >= 0 &&
            static_cast<size_t>(index->get<int64_t>()) < n) {
          at = static_cast<size_t>(index->get<int64_t>());
        }
      }
      if (!at) continue;
      std::string field = f.value("field", "");
      std::string message = f.contains("message") && f["message"].is_string()
                                ? f["message"].get<std::string>()
                                : Dump(f);
      out[*at] = absl::InvalidArgumentError(fmt::format("Mixpanel rejected the event{}: {}",
                                                        field.empty() ? "" : " (" + field + ")",
                                                        BodySnippet(message, 300)));
    }
    return PartOutcome::PerRecord(std::move(out));
  }
  return PartOutcome::AllRecords(n, delivery_.FailureStatus(d, kWhat));
}

// --- set_profile -----------------------------------------------------------

class EngageSession final : public ActionSession {
 public:
  EngageSession(MixpanelDestination* dest, SessionOptions options)
      : dest_(dest),
        options_(std::move(options)),
        retry_(std::make_unique<RetryState>()),
        delivery_(dest->NewDelivery(retry_.get())) {}

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override {
    std::vector<Prepared> prepared;
    prepared.reserve(batch.size());
    for (const OutgoingRecord& r : batch) prepared.push_back(Prepare(r));
    return SendPrepared(batch, std::move(prepared), kMixpanelMaxEngageUpdates,
                        dest_->cfg().engage_max_request_bytes,
                        [this](std::span<const OutgoingRecord> records,
                               std::span<const std::vector<std::string>> items) {
                          return SendPart(records, items);
                        });
  }

  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  Prepared Prepare(const OutgoingRecord& record) const;
  absl::StatusOr<PartOutcome> SendPart(std::span<const OutgoingRecord> records,
                                       std::span<const std::vector<std::string>> items);

  MixpanelDestination* dest_;
  SessionOptions options_;
  std::unique_ptr<RetryState> retry_;
  HttpDelivery delivery_;
};

Prepared EngageSession::Prepare(const OutgoingRecord& record) const {
  json p = MixpanelPayload(options_.layout, record, "");
  const std::string& token = dest_->cfg().project_token;
  auto did = p.find("distinct_id");
  std::optional<std::string> distinct_id =
      did == p.end() || did->is_null() ? std::nullopt : IdText(*did);
  if (!distinct_id) {
    if (record.is_delete()) {
      return Invalid(
          "the deleted row has no distinct_id: deletes carry only the fields mapped from the "
          "model's primary key, so map distinct_id from it (e.g. distinct_id: user_id with "
          "primary_key: user_id) to delete profiles");
    }
    return Invalid(
        "distinct_id is NULL: a profile update needs the user's id; make sure the "
        "column mapped to distinct_id is never NULL");
  }
  if (distinct_id->empty() || IsMixpanelPlaceholderId(*distinct_id)) {
    return Invalid(fmt::format(
        "distinct_id \"{}\" is empty or a placeholder (like null, anon or undefined), which "
        "would write every such row to one bogus profile: map the user's real id",
        *distinct_id));
  }
  std::vector<json> updates;
  if (record.is_delete()) {
    updates.push_back({{"$token", token},
                       {"$distinct_id", *distinct_id},
                       {"$delete", "null"},
                       {"$ignore_alias", true}});
  } else {
    json set = json::object();
    json unset = json::array();
    if (auto pr = p.find("properties"); pr != p.end() && !pr->is_null()) {
      if (!pr->is_object()) {
        return Invalid(fmt::format(
            "properties must be an object, got {}: map properties.<name> fields, or a JSON "
            "column holding an object",
            BodySnippet(Dump(*pr), 100)));
      }
      for (auto& [k, v] : pr->items()) {
        if (v.is_null()) {
          unset.push_back(k);
        } else {
          set[k] = std::move(v);
        }
      }
    }
    for (const ReservedProperty& r : kReservedProfileProperties) {
      auto it = p.find(r.field);
      if (it == p.end()) continue;
      if (it->is_null()) {
        unset.push_back(r.property);
        set.erase(r.property);
      } else {
        set[r.property] = std::move(*it);
      }
    }
    std::string ip = "0";  // "0": do not geolocate the profile from Backflow's address
    if (auto it = p.find("ip"); it != p.end() && !it->is_null()) {
      std::optional<std::string> text = IdText(*it);
      if (text && !text->empty()) ip = *text;
    }
    for (const auto& [k, v] : set.items()) {
      if (auto path = OversizedContainer(v, k)) {
        return Invalid(fmt::format(
            "{} has {} or more keys or elements; Mixpanel accepts fewer than {} in a nested "
            "object or list",
            *path, kMixpanelMaxProperties, kMixpanelMaxProperties));
      }
    }
    updates.push_back({{"$token", token},
                       {"$distinct_id", *distinct_id},
                       {"$ip", ip},
                       {"$ignore_time", true},
                       {"$set", std::move(set)}});
    if (!unset.empty()) {
      updates.push_back({{"$token", token},
                         {"$distinct_id", *distinct_id},
                         {"$ignore_time", true},
                         {"$unset", std::move(unset)}});
    }
  }
  Prepared out;
  for (const json& u : updates) {
    std::string text = Dump(u);
    if (text.size() >= kMixpanelMaxEventBytes) {
      return Invalid(fmt::format(
          "the profile update is {} bytes; Mixpanel accepts updates under {} bytes (1 MB): map "
          "fewer or shorter properties",
          text.size(), kMixpanelMaxEventBytes));
    }
    out.items.push_back(std::move(text));
  }
  return out;
}

absl::StatusOr<PartOutcome> EngageSession::SendPart(
    std::span<const OutgoingRecord> records, std::span<const std::vector<std::string>> items) {
  const std::string body = JoinArray(items);
  const size_t updates = ItemCount(items);
  retry_->attempt = 0;
  DeliveryResult d = delivery_.Send([&] {
    ++retry_->attempt;
    dest_->AcquireVolume(body.size(), updates);
    return dest_->EngageRequest(body);
  });
  const size_t n = records.size();
  if (!d.response.ok()) return PartOutcome::AllRecords(n, delivery_.FailureStatus(d, kWhat));
  const HttpResponse& resp = *d.response;
  if (resp.status >= 200 && resp.status < 300) {
    // 200 even when validation fails: the body says. "1"/"0" without
    // verbose, {"status":1|0,"error":...} with it.
    json doc = json::parse(resp.body, nullptr, /*allow_exceptions=*/false);
    std::optional<int64_t> status;
    std::string error;
    if (doc.is_number_integer()) {
      status = doc.get<int64_t>();
    } else if (doc.is_object() && doc.contains("status")) {
      const json& s = doc["status"];
      if (s.is_number_integer()) status = s.get<int64_t>();
      if (s.is_string()) status = s == "1" || s == "ok" || s == "OK" ? 1 : 0;
      if (doc.contains("error") && doc["error"].is_string()) error = doc["error"];
    }
    if (status && *status == 1) return PartOutcome::AllRecords(n, absl::OkStatus());
    if (!status) {
      // Nothing says whether the updates were applied; they are idempotent,
      // so the records are retried.
      return PartOutcome::AllRecords(
          n, absl::UnavailableError(fmt::format(
                 "Mixpanel answered HTTP {} with an unexpected body (expected {{\"status\":1}}): "
                 "{}; the profile updates are retried next run",
                 resp.status, BodySnippet(resp.body))));
    }
    std::string lower = Lower(error);
    if (lower.find("$token") != std::string::npos ||
        lower.find("invalid token") != std::string::npos ||
        lower.find("project token") != std::string::npos) {
      return absl::UnauthenticatedError(fmt::format(
          "Mixpanel refused the profile updates: \"{}\"; check that project_token is the token "
          "of the project to write to (Project Settings > Overview > Access Keys)",
          BodySnippet(error, 300)));
    }
    return PartOutcome::Split(absl::InvalidArgumentError(
        fmt::format("Mixpanel rejected the profile update (HTTP {} with status 0): {}", resp.status,
                    error.empty() ? BodySnippet(resp.body) : BodySnippet(error, 300))));
  }
  if (absl::Status stop = dest_->EngageStop(resp); !stop.ok()) return stop;
  if (resp.status == 400 || resp.status == 413) {
    return PartOutcome::Split(
        absl::InvalidArgumentError(fmt::format("Mixpanel rejected the profile update (HTTP {}): {}",
                                               resp.status, BodySnippet(resp.body))));
  }
  return PartOutcome::AllRecords(n, delivery_.FailureStatus(d, kWhat));
}

absl::StatusOr<std::unique_ptr<ActionSession>> MixpanelDestination::StartSession(
    const SessionOptions& options) {
  if (options.action == nullptr) {
    return absl::InvalidArgumentError("Mixpanel session needs an action");
  }
  const std::string& id = options.action->id;
  if (id == "track_event") {
    return std::unique_ptr<ActionSession>(std::make_unique<ImportSession>(this, options));
  }
  if (id == "set_profile") {
    if (cfg_.project_token.empty()) {
      return absl::FailedPreconditionError(
          "set_profile needs project_token: Mixpanel's /engage authenticates every profile "
          "update by the project token (Project Settings > Overview > Access Keys)");
    }
    return std::unique_ptr<ActionSession>(std::make_unique<EngageSession>(this, options));
  }
  return absl::InvalidArgumentError(fmt::format("Mixpanel has no action \"{}\"", id));
}

// --- definition ------------------------------------------------------------

absl::StatusOr<MixpanelConfig> ParseConfig(const json& settings) {
  if (!settings.is_object()) return absl::InvalidArgumentError("mixpanel settings must be a map");
  MixpanelConfig cfg;
  auto text = [&](const char* key) -> std::string {
    auto it = settings.find(key);
    return it != settings.end() && it->is_string() ? it->get<std::string>() : "";
  };
  cfg.project_token = text("project_token");
  cfg.service_account_username = text("service_account_username");
  cfg.service_account_secret = text("service_account_secret");
  if (cfg.project_token.find_first_of(":\r\n ") != std::string::npos) {
    return absl::InvalidArgumentError(
        "project_token: must not contain ':', spaces or line breaks; paste only the project's "
        "token");
  }
  if (cfg.service_account_username.find_first_of(":\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        "service_account_username: must not contain ':' or line breaks");
  }
  if (auto it = settings.find("project_id"); it != settings.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
      return absl::InvalidArgumentError(
          "project_id: must be the project's numeric id (Project Settings > Overview)");
    }
    cfg.project_id = it->get<int64_t>();
  }
  const bool any_account =
      !cfg.service_account_username.empty() || !cfg.service_account_secret.empty();
  if (any_account) {
    if (cfg.service_account_username.empty() || cfg.service_account_secret.empty()) {
      return absl::InvalidArgumentError(
          "service_account_username and service_account_secret: set both (Organization "
          "Settings > Service Accounts), or neither to import with project_token");
    }
    if (cfg.project_id == 0) {
      return absl::InvalidArgumentError(
          "project_id: required with a service account (Mixpanel needs it to know which "
          "project the service account writes to)");
    }
  } else if (cfg.project_token.empty()) {
    return absl::InvalidArgumentError(
        "project_token: required unless a service account is set (service_account_username, "
        "service_account_secret and project_id); set_profile always needs project_token");
  }
  auto integer = [&](const char* key, int64_t def, int64_t min) -> absl::StatusOr<int64_t> {
    auto it = settings.find(key);
    if (it == settings.end() || it->is_null()) return def;
    if (!it->is_number_integer() || it->get<int64_t>() < min) {
      return absl::InvalidArgumentError(fmt::format("{}: must be an integer >= {}", key, min));
    }
    return it->get<int64_t>();
  };
  absl::StatusOr<int64_t> v =
      integer("import_max_request_bytes", static_cast<int64_t>(kMixpanelImportMaxBytes), 1024);
  if (!v.ok()) return v.status();
  cfg.import_max_request_bytes = static_cast<size_t>(*v);
  v = integer("engage_max_request_bytes", static_cast<int64_t>(kMixpanelEngageMaxBytes), 1024);
  if (!v.ok()) return v.status();
  cfg.engage_max_request_bytes = static_cast<size_t>(*v);
  v = integer("max_megabytes_per_minute", kDefaultMegabytesPerMinute, 0);
  if (!v.ok()) return v.status();
  cfg.max_megabytes_per_minute = *v;
  v = integer("max_events_per_second", kDefaultEventsPerSecond, 0);
  if (!v.ok()) return v.status();
  cfg.max_events_per_second = *v;
  absl::StatusOr<HttpSettings> http = ParseHttpSettings(settings);
  if (!http.ok()) return http.status();
  cfg.http = *std::move(http);
  return cfg;
}

FieldSpec Field(const char* key, const char* label, FieldType type, const char* description) {
  FieldSpec f;
  f.key = key;
  f.label = label;
  f.type = type;
  f.description = description;
  return f;
}

SettingSpec Setting(const char* key, const char* label, SettingType type, const char* description) {
  SettingSpec s;
  s.key = key;
  s.label = label;
  s.type = type;
  s.description = description;
  return s;
}

std::vector<std::string> RequireProjectToken(const json& settings,
                                             const std::vector<MappedField>& /*fields*/) {
  auto it = settings.find("project_token");
  if (it != settings.end() && it->is_string() && !it->get<std::string>().empty()) return {};
  return {
      "set_profile needs the destination's project_token: Mixpanel's /engage authenticates "
      "every profile update by the project token (Project Settings > Overview > Access Keys); "
      "a service account is not enough"};
}

constexpr char kNotes[] = R"md(## Example

```yaml
destinations:
  - name: mixpanel
    type: mixpanel
    settings:
      project_token: ${env:MIXPANEL_PROJECT_TOKEN}
      # For /import, a service account is preferred (Owner or Admin role on the project):
      service_account_username: backflow.1a2b3c.mp-service-account
      service_account_secret: ${env:MIXPANEL_SERVICE_ACCOUNT_SECRET}
      project_id: 1234567
      # base_url: https://api-eu.mixpanel.com   # EU data residency
mappings:
  - name: users_to_mixpanel
    model: users
    destination: mixpanel
    action: set_profile
    records: all            # deleted rows delete the profile
    fields:
      distinct_id: user_id  # map it from the primary key so deletes can name the profile
      email: email
      properties.plan: plan
      properties.seats: seats
  - name: orders_to_mixpanel
    model: orders
    destination: mixpanel
    action: track_event
    records: added
    fields:
      event: "'Order Completed'"
      distinct_id: user_id
      time: created_at
      properties.revenue: amount
```

## Credentials

| endpoint | credential |
| --- | --- |
| `/import` (track_event) | HTTP Basic with the service account (`service_account_username:service_account_secret`) and `project_id` in the query; without a service account, the project token as user name and an empty password |
| `/engage` (set_profile) | `$token` (the project token) inside every update; no header |

`backflow test-connection` sends an empty `/import` batch (`[]`, nothing is ingested) with each
configured credential: the service account and the project token. A `401` is reported with the
settings to check. `/engage` has no call that checks a token without writing, so a wrong token
with a right service account is only found by the first `set_profile` sync (Mixpanel answers
`403` or `"status": 0`, and the run stops).

## track_event: wire format

Each batch is one or more `POST <base_url>/import?strict=1&project_id=<id>` with
`Content-Type: application/json` (at most 2,000 events and `import_max_request_bytes`, 10 MB by
default, per request):

```json
[{"event": "Order Completed",
  "properties": {"revenue": 14.99, "time": 1767322245000, "distinct_id": "u_1",
                 "$insert_id": "5d1e0c8a9b7f4e21a3c6d8e9f0a1b2c3"}}]
```

- `time` is sent in milliseconds since the epoch. Mixpanel rejects events before 1971-01-01 or
  more than an hour in the future; Backflow checks this against its own clock first.
- `$insert_id` is 32 hex characters derived from the record's dedup id (or the column mapped to
  `insert_id`): a re-sent event (after a timeout, or in a later run) carries the same one, and
  Mixpanel deduplicates on (event, distinct_id, time, `$insert_id`).
- `distinct_id` is required; map `''` (a text literal) for events that belong to no user.
  Placeholders such as `null`, `none`, `anon`, `undefined`, `nil`, `n/a` or the all-zero UUID
  are rejected by Mixpanel, so Backflow fails those rows itself.
- Other timestamp properties are sent as `YYYY-MM-DDTHH:MM:SS` (UTC), the form Mixpanel reads as
  a date.
- Only added rows are sent (an event cannot be changed or deleted through `/import`): use
  `records: added`; updated or deleted rows otherwise fail with a message saying so.

## set_profile: wire format

`POST <base_url>/engage?verbose=1` with a JSON array of updates (at most 2,000 per request and
`engage_max_request_bytes`, 2 MB by default):

```json
[{"$token": "…", "$distinct_id": "u_1", "$ip": "0", "$ignore_time": true,
  "$set": {"$email": "ada@example.com", "plan": "pro"}},
 {"$token": "…", "$distinct_id": "u_1", "$ignore_time": true, "$unset": ["seats"]},
 {"$token": "…", "$distinct_id": "u_3", "$delete": "null", "$ignore_alias": true}]
```

- Non-null values are `$set`; NULL values are `$unset` (removed from the profile) in a second
  update for the same profile.
- `email`, `name`, `first_name`, `last_name`, `phone`, `avatar` and `created` set Mixpanel's
  reserved `$email`, `$name`, … properties; `properties.<name>` sets any other property.
- `$ip: "0"` keeps Mixpanel from geolocating the profile from Backflow's address (map `ip` to
  use a real one); `$ignore_time: true` keeps the sync from bumping "last seen".
- A deleted row sends `$delete` with `$ignore_alias: true` (only the profile with exactly this
  `distinct_id` is deleted). Deletes carry only fields mapped from the model's primary key, so
  map `distinct_id` from it.

## Replies

| reply | outcome |
| --- | --- |
| `/import` 200 | every event of the request ingested |
| `/import` 400 with `failed_records` | a partial success: the listed events (matched by `insert_id`, else `index`) fail with Mixpanel's message; the others were ingested and are not sent again |
| `/import` 400 without `failed_records`, 413 | the request is split in halves and re-sent until the rejected records are isolated |
| `/engage` 200 with `{"status": 1}` | every update applied |
| `/engage` 200 with `{"status": 0, "error": "…"}` | Mixpanel rejected an update without saying which: the request is split in halves and re-sent (updates are idempotent) until the rejected records are isolated; they fail with Mixpanel's error. An error about the token stops the run |
| 429 | retried after 2 s, doubling to 60 s, plus 1–5 s of random jitter (Mixpanel sends no `Retry-After`); after `max_retries` the records fail and are retried next run |
| 5xx, timeout, connection error | retried with exponential backoff from 2 s; then the records fail and are retried next run |
| 401, 403 | the run stops: check the credentials named in the message and that `base_url` matches the project's data residency |
| 404 | the run stops: check `base_url` |

## Rate limits

Mixpanel limits ingestion per project to 2 GB of uncompressed JSON per minute (about 30k events
per second) on a rolling minute. Backflow paces every request (retries included) below
`max_megabytes_per_minute` and `max_events_per_second` across all mappings of the destination;
lower them when other tools write to the same project, and use `max_requests_per_second` for a
plain request cap.
)md";

}  // namespace

std::string MixpanelInsertId(std::string_view dedup_id) {
  Hasher128 h;
  h.Add("backflow-mixpanel-insert-v1").Add(dedup_id);
  return h.Finish().ToHex();
}

bool IsMixpanelPlaceholderId(std::string_view id) {
  while (!id.empty() && std::isspace(static_cast<unsigned char>(id.front()))) id.remove_prefix(1);
  while (!id.empty() && std::isspace(static_cast<unsigned char>(id.back()))) id.remove_suffix(1);
  if (id.empty()) return false;
  static constexpr std::string_view kPlaceholders[] = {
      "00000000-0000-0000-0000-000000000000",
      "<nil>",
      "[]",
      "{}",
      "anon",
      "anonymous",
      "false",
      "true",
      "lmy47d",
      "n/a",
      "na",
      "nil",
      "none",
      "null",
      "undefined",
      "unknown",
  };
  std::string lower = Lower(id);
  return std::find(std::begin(kPlaceholders), std::end(kPlaceholders), lower) !=
         std::end(kPlaceholders);
}

std::string MixpanelBasicAuth(std::string_view user, std::string_view password) {
  std::string pair(user);
  pair.push_back(':');
  pair.append(password);
  return "Basic " + Base64Encode(pair);
}

std::chrono::milliseconds MixpanelRateLimitBackoff(int n) {
  std::chrono::milliseconds wait = kBaseBackoff;
  for (int i = 1; i < n && wait < kMaxRateLimitBackoff; ++i) wait *= 2;
  return std::min(wait, kMaxRateLimitBackoff);
}

bool ParseMixpanelTimestampMs(std::string_view s, int64_t* ms) {
  std::optional<IsoInstant> t = ParseIsoInstant(s);
  if (!t) return false;
  *ms = t->seconds * 1000 + t->micros / 1000;
  return true;
}

DestinationDefinition MixpanelDestinationDefinition() {
  DestinationDefinition def;
  def.type = "mixpanel";
  def.title = "Mixpanel";
  def.description =
      "Sends model rows to Mixpanel: new rows as events through the Import API (strict "
      "validation, deterministic $insert_id so re-sends are deduplicated) and rows as user "
      "profiles through the Engage API ($set, $unset for NULLs, $delete for deleted rows).";
  def.maturity = "beta";

  SettingSpec token = Setting(
      "project_token", "Project token", SettingType::kString,
      "The project's token (Project Settings > Overview > Access Keys). Required for "
      "set_profile, whose updates carry it as $token; for track_event it authenticates /import "
      "(as the Basic user name) when no service account is set.");
  token.secret = true;
  def.settings.push_back(token);
  def.settings.push_back(Setting(
      "service_account_username", "Service account username", SettingType::kString,
      "A service account with the Owner or Admin role on the project (Organization Settings > "
      "Service Accounts), used by track_event for /import. Needs service_account_secret and "
      "project_id."));
  SettingSpec secret =
      Setting("service_account_secret", "Service account secret", SettingType::kString,
              "The service account's secret (shown once when the account is created).");
  secret.secret = true;
  def.settings.push_back(secret);
  def.settings.push_back(Setting(
      "project_id", "Project ID", SettingType::kInteger,
      "The project's numeric id (Project Settings > Overview); required with a service account."));
  SettingSpec import_bytes = Setting(
      "import_max_request_bytes", "Max /import request bytes", SettingType::kInteger,
      "Largest uncompressed /import request Backflow builds; Mixpanel's limit is 10 MB (older "
      "documentation says 2 MB). A 413 reply splits the request anyway.");
  import_bytes.default_value = static_cast<int64_t>(kMixpanelImportMaxBytes);
  def.settings.push_back(import_bytes);
  SettingSpec engage_bytes = Setting(
      "engage_max_request_bytes", "Max /engage request bytes", SettingType::kInteger,
      "Largest /engage request Backflow builds (Mixpanel documents 2,000 updates of at most "
      "1 MB each per request).");
  engage_bytes.default_value = static_cast<int64_t>(kMixpanelEngageMaxBytes);
  def.settings.push_back(engage_bytes);
  SettingSpec mb = Setting(
      "max_megabytes_per_minute", "Max megabytes per minute", SettingType::kInteger,
      "Mixpanel's per-project ingestion limit: megabytes (10^6 bytes) of uncompressed JSON per "
      "rolling minute, across all mappings of this destination, retries included; 0 turns the "
      "pacing off. Lower it when other tools write to the same project.");
  mb.default_value = kDefaultMegabytesPerMinute;
  def.settings.push_back(mb);
  SettingSpec eps =
      Setting("max_events_per_second", "Max events per second", SettingType::kInteger,
              "Events and profile updates per second across all mappings of this destination "
              "(Mixpanel's limit is about 30,000 per project); 0 turns the pacing off.");
  eps.default_value = kDefaultEventsPerSecond;
  def.settings.push_back(eps);

  HttpSettingsDefaults http;
  http.base_url = kDefaultBaseUrl;
  http.base_url_help = fmt::format(
      "Projects with EU data residency must use {}, India residency {}; the host must match the "
      "project's residency.",
      kEuBaseUrl, kInBaseUrl);
  for (SettingSpec& s : HttpSettingSpecs(http)) def.settings.push_back(std::move(s));

  FieldSpec distinct_id = Field("distinct_id", "Distinct ID", FieldType::kString, "");

  ActionSpec track;
  track.id = "track_event";
  track.title = "Track events";
  track.description =
      "Sends an event per added row through /import: each new row of the model (an order, a "
      "signup) is one event, named by event, for the user distinct_id, at time, with its "
      "properties (properties.<name>).";
  track.selections = {RecordSelection::kAdded};
  FieldSpec event = Field("event", "Event name", FieldType::kString,
                          "The event's name, e.g. \"Order Completed\": a column, or a text "
                          "literal ('Order Completed') when every row is the same event.");
  event.required = true;
  track.fields.push_back(event);
  FieldSpec track_id = distinct_id;
  track_id.description =
      "The user who did the event. Use '' (a text literal) for events of no user; placeholders "
      "such as null, anon or undefined are rejected.";
  track_id.required = true;
  track.fields.push_back(track_id);
  FieldSpec time = Field("time", "Time", FieldType::kTimestamp,
                         "When the event happened; sent in milliseconds. Must be after "
                         "1971-01-01 and at most an hour in the future. Part of Mixpanel's "
                         "dedup key, so it must not change between runs.");
  time.required = true;
  track.fields.push_back(time);
  FieldSpec insert_id = Field(
      "insert_id", "Insert ID", FieldType::kString,
      "A natural unique id of the event (at most 36 letters, digits and dashes), sent as "
      "$insert_id. When unmapped, Backflow derives one from the record, stable across re-sends.");
  track.fields.push_back(insert_id);
  track.fields.push_back(Field(
      "properties", "Properties", FieldType::kObject,
      "Event properties, e.g. properties.revenue, properties.$user_id; or the whole object from "
      "a JSON column. Fewer than 255 per event."));
  track.extra_field_parents = {"properties"};
  track.max_batch_records = kMixpanelMaxImportEvents;
  track.default_batch_records = 1000;
  def.actions.push_back(track);

  ActionSpec profile;
  profile.id = "set_profile";
  profile.title = "Set user profiles";
  profile.description =
      "Creates or updates a user profile per added or updated row through /engage ($set, and "
      "$unset for NULL values), and deletes the profile of a deleted row ($delete).";
  profile.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                        RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                        RecordSelection::kAll};
  FieldSpec profile_id = distinct_id;
  profile_id.description =
      "The profile's id ($distinct_id). Map it from the model's primary key so deleted rows can "
      "delete their profile.";
  profile_id.required = true;
  profile_id.identifier = true;
  profile.fields.push_back(profile_id);
  for (const ReservedProperty& r : kReservedProfileProperties) {
    FieldSpec f = Field(r.field, r.label, r.type,
                        r.type == FieldType::kTimestamp
                            ? "Sets Mixpanel's reserved $created property (sent as "
                              "YYYY-MM-DDTHH:MM:SS, UTC)."
                            : "");
    if (f.description.empty()) {
      f.description = fmt::format("Sets Mixpanel's reserved {} property.", r.property);
    }
    f.default_column = r.default_column;
    profile.fields.push_back(f);
  }
  profile.fields.push_back(Field("ip", "IP address", FieldType::kString,
                                 "Geolocates the profile from this address; when unmapped, "
                                 "$ip is \"0\" (no geolocation)."));
  profile.fields.push_back(Field(
      "properties", "Properties", FieldType::kObject,
      "Profile properties, e.g. properties.plan; or the whole object from a JSON column. NULL "
      "values are removed from the profile ($unset)."));
  profile.extra_field_parents = {"properties"};
  profile.max_batch_records = kMixpanelMaxEngageUpdates;
  profile.default_batch_records = 500;
  profile.validate = RequireProjectToken;
  def.actions.push_back(profile);

  def.notes = kNotes;
  def.create = HttpDestinationFactory<MixpanelDestination>(def.type, ParseConfig);
  return def;
}

}  // namespace backflow
