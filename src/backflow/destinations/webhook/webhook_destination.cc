#include "backflow/destinations/webhook/webhook_destination.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>
#include <map>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/hash.h"
#include "backflow/common/http_client.h"
#include "backflow/common/json_writer.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/rate_limiter.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

constexpr char kUserAgent[] = "backflow/0.1";
constexpr std::chrono::milliseconds kBaseBackoff{1000};
constexpr size_t kBodySnippetBytes = 500;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string Snippet(std::string_view body) { return BodySnippet(body, kBodySnippetBytes); }

bool IsRetryableStatus(int status) { return status == 408 || status == 429 || status >= 500; }

struct WebhookConfig {
  std::string url;
  std::string key;  // empty when unsigned
  bool sign = false;
  HttpHeaders static_headers;
  std::chrono::milliseconds timeout{30'000};
  int max_retries = 5;
  std::chrono::milliseconds max_retry_wait{300'000};
  int64_t max_requests_per_second = 0;  // 0: no limit
  int concurrency = 1;
};

absl::StatusOr<WebhookConfig> ParseConfig(const nlohmann::json& settings) {
  WebhookConfig cfg;
  if (!settings.is_object()) return absl::InvalidArgumentError("webhook settings must be a map");
  auto url = settings.find("url");
  if (url == settings.end() || !url->is_string() || url->get<std::string>().empty()) {
    return absl::InvalidArgumentError("url: required; the receiver's http(s) address");
  }
  cfg.url = url->get<std::string>();
  std::string scheme = Lower(cfg.url.substr(0, cfg.url.find(':')));
  if (scheme != "http" && scheme != "https") {
    return absl::InvalidArgumentError(
        fmt::format("url: must start with https:// or http://, got \"{}\"", cfg.url));
  }
  if (auto s = settings.find("signing_secret"); s != settings.end() && !s->is_null()) {
    if (!s->is_string()) return absl::InvalidArgumentError("signing_secret: must be a string");
    std::string secret = s->get<std::string>();
    if (!secret.empty()) {
      absl::StatusOr<std::string> key = WebhookSigningKey(secret);
      if (!key.ok()) {
        return absl::InvalidArgumentError(
            "signing_secret: the part after \"whsec_\" must be valid base64");
      }
      cfg.key = *std::move(key);
      cfg.sign = true;
    }
  }
  if (auto h = settings.find("headers"); h != settings.end() && !h->is_null()) {
    if (!h->is_object()) return absl::InvalidArgumentError("headers: must be a map of strings");
    for (const auto& [name, value] : h->items()) {
      if (!value.is_string()) {
        return absl::InvalidArgumentError(fmt::format("headers.{}: must be a string", name));
      }
      std::string lower = Lower(name);
      if (lower == "webhook-id" || lower == "webhook-timestamp" || lower == "webhook-signature" ||
          lower == "x-idempotency-key" || lower == "content-length") {
        return absl::InvalidArgumentError(
            fmt::format("headers.{}: set by Backflow itself and cannot be overridden", name));
      }
      if (name.empty() || name.find_first_of(":\r\n ") != std::string::npos ||
          value.get<std::string>().find_first_of("\r\n") != std::string::npos) {
        return absl::InvalidArgumentError(
            fmt::format("headers.{}: not a valid HTTP header name or value", name));
      }
      cfg.static_headers.emplace_back(name, value.get<std::string>());
    }
  }
  auto int_setting = [&](const char* key, int64_t def, int64_t min, int64_t* out) -> absl::Status {
    auto it = settings.find(key);
    if (it == settings.end() || it->is_null()) {
      *out = def;
      return absl::OkStatus();
    }
    if (!it->is_number_integer() || it->get<int64_t>() < min) {
      return absl::InvalidArgumentError(fmt::format("{}: must be an integer >= {}", key, min));
    }
    *out = it->get<int64_t>();
    return absl::OkStatus();
  };
  int64_t timeout_ms = 0, max_retries = 0, max_wait_s = 0;
  if (absl::Status s = int_setting("max_requests_per_second", 0, 0, &cfg.max_requests_per_second);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = int_setting("timeout_ms", 30'000, 1, &timeout_ms); !s.ok()) return s;
  if (absl::Status s = int_setting("max_retries", 5, 0, &max_retries); !s.ok()) return s;
  if (absl::Status s = int_setting("max_retry_wait_s", 300, 0, &max_wait_s); !s.ok()) return s;
  absl::StatusOr<int> concurrency = ParseConcurrency(settings);
  if (!concurrency.ok()) return concurrency.status();
  cfg.concurrency = *concurrency;
  cfg.timeout = std::chrono::milliseconds(timeout_ms);
  cfg.max_retries = static_cast<int>(std::min<int64_t>(max_retries, 100));
  cfg.max_retry_wait = std::chrono::seconds(max_wait_s);
  return cfg;
}

std::string BuildBody(std::string_view batch_id, const SessionOptions& options,
                      std::span<const OutgoingRecord> records) {
  JsonWriter w;
  w.BeginObject();
  w.Key("batch_id").String(batch_id);
  w.Key("mapping").String(options.mapping);
  w.Key("run_id").Int(options.run_id);
  w.Key("count").Int(static_cast<int64_t>(records.size()));
  w.Key("records").BeginArray();
  for (const OutgoingRecord& r : records) {
    w.BeginObject();
    w.Key("id").String(r.dedup_id);
    w.Key("operation").String(r.is_delete() ? "delete" : "upsert");
    w.Key("change").String(ChangeKindName(r.change));
    w.Key("key").String(r.key);
    w.Key("fields").Raw(RecordFieldsJson(options.layout, r));
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return w.Release();
}

class WebhookDestination final : public Destination {
 public:
  WebhookDestination(WebhookConfig cfg, HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)), http_(http), clock_(clock) {
    if (cfg_.max_requests_per_second > 0) {
      limiter_ = std::make_unique<RateLimiter>(*clock_, cfg_.max_requests_per_second,
                                               std::chrono::seconds(1));
    }
  }

  absl::Status CheckConnection() override;
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override;
  int concurrency() const override { return cfg_.concurrency; }

  // A sender for one session (or one connection check).
  HttpDelivery NewDelivery() const {
    RetryPolicy policy;
    policy.max_retries = cfg_.max_retries;
    policy.base_backoff = kBaseBackoff;
    policy.max_wait = cfg_.max_retry_wait;
    VendorRules rules;
    rules.retryable = [](const HttpResponse& r) { return IsRetryableStatus(r.status); };
    return HttpDelivery(http_, clock_, {limiter_.get()}, policy, rules);
  }

  HttpRequest BuildRequest(const std::string& body, const std::string& webhook_id) const;

  // Non-OK status for replies that call for stopping the run, else OK.
  absl::Status ConfigurationError(const HttpResponse& resp) const;

  const WebhookConfig& cfg() const { return cfg_; }
  Clock* clock() const { return clock_; }

 private:
  WebhookConfig cfg_;
  HttpClient* http_;
  Clock* clock_;
  std::unique_ptr<RateLimiter> limiter_;  // shared by every session of this destination
};

HttpRequest WebhookDestination::BuildRequest(const std::string& body,
                                             const std::string& webhook_id) const {
  HttpRequest req;
  req.method = "POST";
  req.url = cfg_.url;
  req.body = body;
  req.timeout = cfg_.timeout;
  std::string timestamp =
      std::to_string(static_cast<int64_t>(std::floor(ToUnixSeconds(clock_->Now()))));
  auto overridden = [&](std::string_view name) {
    for (const auto& [k, v] : cfg_.static_headers) {
      if (Lower(k) == name) return true;
    }
    return false;
  };
  if (!overridden("content-type")) req.headers.emplace_back("Content-Type", "application/json");
  if (!overridden("user-agent")) req.headers.emplace_back("User-Agent", kUserAgent);
  req.headers.emplace_back("webhook-id", webhook_id);
  req.headers.emplace_back("webhook-timestamp", timestamp);
  if (cfg_.sign) {
    req.headers.emplace_back("webhook-signature",
                             WebhookSignature(cfg_.key, webhook_id, timestamp, body));
  }
  req.headers.emplace_back("X-Idempotency-Key", webhook_id);
  for (const auto& h : cfg_.static_headers) req.headers.push_back(h);
  return req;
}

absl::Status WebhookDestination::ConfigurationError(const HttpResponse& resp) const {
  const int status = resp.status;
  if (status == 401) {
    return absl::UnauthenticatedError(fmt::format(
        "webhook receiver at {} answered HTTP 401 (unauthorized): check signing_secret and "
        "the auth headers in headers. Receiver said: {}",
        cfg_.url, Snippet(resp.body)));
  }
  if (status == 403) {
    return absl::PermissionDeniedError(fmt::format(
        "webhook receiver at {} answered HTTP 403 (forbidden): check signing_secret and the "
        "credentials in headers. Receiver said: {}",
        cfg_.url, Snippet(resp.body)));
  }
  if (status == 404 || status == 410) {
    return absl::FailedPreconditionError(
        fmt::format("webhook receiver answered HTTP {}: nothing accepts webhooks at {}; check "
                    "the url. Receiver said: {}",
                    status, cfg_.url, Snippet(resp.body)));
  }
  if (status >= 300 && status < 400) {
    return absl::FailedPreconditionError(fmt::format(
        "webhook receiver at {} answered HTTP {} redirecting to {}; redirects are not followed, "
        "so set url to the final address",
        cfg_.url, status, resp.Header("location").value_or("(no Location header)")));
  }
  return absl::OkStatus();
}

absl::Status WebhookDestination::CheckConnection() {
  Hasher128 h;
  h.Add("backflow-webhook-connection-test");
  h.Add(std::to_string(clock_->Now().time_since_epoch().count()));
  std::string batch_id = h.Finish().ToHex();
  std::string body = fmt::format(
      R"({{"batch_id":"{}","mapping":"","run_id":0,"count":0,"records":[],"test":true}})",
      batch_id);
  HttpDelivery delivery = NewDelivery();
  DeliveryResult d =
      delivery.Send([&] { return BuildRequest(body, "msg_" + batch_id); }, /*retry=*/false);
  if (!d.response.ok()) {
    return absl::UnavailableError(fmt::format("could not reach the webhook receiver at {}: {}",
                                              cfg_.url,
                                              std::string(d.response.status().message())));
  }
  const HttpResponse& resp = *d.response;
  if (resp.status >= 200 && resp.status < 300) return absl::OkStatus();
  if (absl::Status s = ConfigurationError(resp); !s.ok()) return s;
  if (IsRetryableStatus(resp.status)) {
    return absl::UnavailableError(
        fmt::format("webhook receiver at {} is not accepting requests right now (HTTP {}): {}",
                    cfg_.url, resp.status, Snippet(resp.body)));
  }
  return absl::FailedPreconditionError(
      fmt::format("webhook receiver at {} rejected the test batch (HTTP {}); it must answer 2xx to "
                  "{{\"count\":0,\"records\":[],\"test\":true}}. Receiver said: {}",
                  cfg_.url, resp.status, Snippet(resp.body)));
}

class WebhookSession final : public ActionSession {
 public:
  WebhookSession(WebhookDestination* dest, SessionOptions options)
      : dest_(dest), options_(std::move(options)), delivery_(dest->NewDelivery()) {}

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override {
    if (batch.empty()) return std::vector<absl::Status>();
    return SendPart(batch);
  }

  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  absl::StatusOr<std::vector<absl::Status>> SendPart(std::span<const OutgoingRecord> records);
  std::vector<absl::Status> PerRecordResults(const HttpResponse& resp,
                                             std::span<const OutgoingRecord> records) const;

  WebhookDestination* dest_;
  SessionOptions options_;
  HttpDelivery delivery_;
};

absl::StatusOr<std::vector<absl::Status>> WebhookSession::SendPart(
    std::span<const OutgoingRecord> records) {
  const WebhookConfig& cfg = dest_->cfg();
  std::string batch_id = WebhookBatchId(records);
  std::string body = BuildBody(batch_id, options_, records);
  const std::string webhook_id = "msg_" + batch_id;
  DeliveryResult d = delivery_.Send([&] { return dest_->BuildRequest(body, webhook_id); });
  auto all = [&](const absl::Status& s) { return std::vector<absl::Status>(records.size(), s); };

  if (!d.response.ok()) {
    return all(absl::UnavailableError(
        fmt::format("webhook delivery to {} failed {}; last error: {}", cfg.url, d.AttemptsText(),
                    std::string(d.response.status().message()))));
  }
  const HttpResponse& resp = *d.response;
  const int status = resp.status;
  if (status >= 200 && status < 300) return PerRecordResults(resp, records);
  if (status == 413) {
    if (records.size() == 1) {
      return all(absl::InvalidArgumentError(fmt::format(
          "webhook receiver answered HTTP 413 (content too large) for a single record of {} "
          "bytes: {}",
          body.size(), Snippet(resp.body))));
    }
    size_t half = records.size() / 2;
    absl::StatusOr<std::vector<absl::Status>> first = SendPart(records.subspan(0, half));
    if (!first.ok()) return first;
    absl::StatusOr<std::vector<absl::Status>> second = SendPart(records.subspan(half));
    std::vector<absl::Status> out = *std::move(first);
    if (!second.ok()) {
      // The first half was delivered, so the batch cannot fail as a whole:
      // the second half's records carry the configuration error instead.
      out.insert(out.end(), records.size() - half, second.status());
    } else {
      out.insert(out.end(), second->begin(), second->end());
    }
    return out;
  }
  if (IsRetryableStatus(status)) {
    std::string message = fmt::format("webhook delivery to {} failed {}; last reply: HTTP {}: {}",
                                      cfg.url, d.AttemptsText(), status, Snippet(resp.body));
    if (status == 429) {
      absl::Status s = absl::ResourceExhaustedError(message);
      if (auto ra = resp.Header("retry-after")) {
        if (auto delay = ParseRetryAfter(*ra, dest_->clock()->Now())) s = WithRetryAfter(s, *delay);
      }
      return all(s);
    }
    return all(absl::UnavailableError(message));
  }
  if (absl::Status s = dest_->ConfigurationError(resp); !s.ok()) return s;
  return all(absl::InvalidArgumentError(
      fmt::format("webhook receiver at {} rejected the batch with HTTP {}: {}", cfg.url, status,
                  Snippet(resp.body))));
}

std::vector<absl::Status> WebhookSession::PerRecordResults(
    const HttpResponse& resp, std::span<const OutgoingRecord> records) const {
  std::vector<absl::Status> out(records.size(), absl::OkStatus());
  nlohmann::json doc = nlohmann::json::parse(resp.body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object()) return out;
  auto results = doc.find("results");
  if (results == doc.end() || !results->is_array()) return out;
  std::map<std::string, absl::Status> failures;
  for (const nlohmann::json& r : *results) {
    if (!r.is_object()) continue;
    auto id = r.find("id");
    auto st = r.find("status");
    if (id == r.end() || !id->is_string() || st == r.end() || !st->is_string()) continue;
    if (st->get<std::string>() != "error") continue;
    std::string message = "rejected by the webhook receiver";
    if (auto e = r.find("error"); e != r.end()) {
      message = e->is_string() ? e->get<std::string>() : e->dump();
    }
    bool retryable = false;
    if (auto rt = r.find("retryable"); rt != r.end() && rt->is_boolean()) retryable = *rt;
    message = fmt::format("webhook receiver rejected the record (HTTP {}): {}", resp.status,
                          Snippet(message));
    failures[id->get<std::string>()] =
        retryable ? absl::UnavailableError(message) : absl::InvalidArgumentError(message);
  }
  for (size_t i = 0; i < records.size(); ++i) {
    auto it = failures.find(records[i].dedup_id);
    if (it != failures.end()) out[i] = it->second;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ActionSession>> WebhookDestination::StartSession(
    const SessionOptions& options) {
  return std::unique_ptr<ActionSession>(std::make_unique<WebhookSession>(this, options));
}

}  // namespace

std::string WebhookBatchId(std::span<const OutgoingRecord> records) {
  Hasher128 h;
  h.Add("backflow-webhook-batch-v1");
  for (const OutgoingRecord& r : records) h.Add(r.dedup_id);
  return h.Finish().ToHex();
}

absl::StatusOr<std::string> WebhookSigningKey(std::string_view secret) {
  if (secret.starts_with("whsec_")) return Base64Decode(secret.substr(6));
  return std::string(secret);
}

std::string WebhookSignature(std::string_view key, std::string_view webhook_id,
                             std::string_view timestamp, std::string_view body) {
  std::string signed_content;
  signed_content.reserve(webhook_id.size() + timestamp.size() + body.size() + 2);
  signed_content.append(webhook_id).append(".").append(timestamp).append(".").append(body);
  return "v1," + Base64Encode(HmacSha256(key, signed_content));
}

DestinationDefinition WebhookDestinationDefinition() {
  DestinationDefinition def;
  def.type = "webhook";
  def.title = "Webhook";
  def.description =
      "POSTs batches of changed records as signed JSON (Standard Webhooks) to any HTTP "
      "endpoint, with retries and a stable idempotency key per batch.";
  def.maturity = "beta";

  SettingSpec url;
  url.key = "url";
  url.label = "URL";
  url.description = "The receiver's http(s) address; every batch is POSTed here.";
  url.required = true;
  def.settings.push_back(url);

  SettingSpec secret;
  secret.key = "signing_secret";
  secret.label = "Signing secret";
  secret.description =
      "Signs each request (Standard Webhooks webhook-signature). \"whsec_<base64>\" uses the "
      "decoded bytes as the key; any other value is used as-is. Leave unset to send unsigned.";
  secret.secret = true;
  def.settings.push_back(secret);

  SettingSpec headers;
  headers.key = "headers";
  headers.label = "Extra headers";
  headers.description =
      "Static headers added to every request, such as Authorization. May override "
      "Content-Type and User-Agent but not the webhook-* headers.";
  headers.type = SettingType::kStringMap;
  def.settings.push_back(headers);

  SettingSpec timeout;
  timeout.key = "timeout_ms";
  timeout.label = "Timeout (ms)";
  timeout.description = "How long to wait for each reply before retrying.";
  timeout.type = SettingType::kInteger;
  timeout.default_value = 30000;
  def.settings.push_back(timeout);

  SettingSpec retries;
  retries.key = "max_retries";
  retries.label = "Max retries";
  retries.description =
      "Retries per batch after timeouts, connection errors, 408, 429 and 5xx replies.";
  retries.type = SettingType::kInteger;
  retries.default_value = 5;
  def.settings.push_back(retries);

  SettingSpec rate;
  rate.key = "max_requests_per_second";
  rate.label = "Max requests per second";
  rate.description =
      "Caps the requests (retries included) sent to this destination per second, across all of "
      "its mappings; 0 means no cap. Use it when the receiver's quota is shared with other tools.";
  rate.type = SettingType::kInteger;
  rate.default_value = 0;
  def.settings.push_back(rate);

  SettingSpec wait;
  wait.key = "max_retry_wait_s";
  wait.label = "Max retry wait (s)";
  wait.description = "Upper bound on any single wait between retries, Retry-After included.";
  wait.type = SettingType::kInteger;
  wait.default_value = 300;
  def.settings.push_back(wait);

  def.settings.push_back(ConcurrencySettingSpec(1));

  ActionSpec send;
  send.id = "send_batch";
  send.title = "Send batch";
  send.description =
      "Sends added, updated and deleted records in batches; each mapped field becomes a key of "
      "the record's \"fields\" object, and deletes carry only the identity fields.";
  send.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                     RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                     RecordSelection::kAll};
  send.allows_extra_fields = true;
  send.default_batch_records = 100;
  send.max_batch_records = 1000;
  def.actions.push_back(send);
  def.notes = R"md(## Wire format

Each batch is one `POST` with `Content-Type: application/json`:

```json
{"batch_id": "9f2c…", "mapping": "customers_to_crm", "run_id": 12, "count": 2,
 "records": [
   {"id": "5d1e…", "operation": "upsert", "change": "added", "key": "42",
    "fields": {"customer_id": 42, "email": "ada@example.com", "plan": "pro"}},
   {"id": "a07b…", "operation": "delete", "change": "deleted", "key": "7",
    "fields": {"customer_id": 7}}]}
```

- `id` is deterministic (mapping, key, change, payload): the same change always carries the same
  id, so receivers can deduplicate. `batch_id` derives from the record ids.
- Headers: `webhook-id: msg_<batch_id>` (the same on every retry of the batch),
  `webhook-timestamp` (Unix seconds), `webhook-signature: v1,<base64 HMAC-SHA256 of
  "<webhook-id>.<webhook-timestamp>.<body>">` when `signing_secret` is set (Standard Webhooks),
  `X-Idempotency-Key` (= `webhook-id`), `User-Agent: backflow/<version>`, plus `headers`.
- A connection check (`backflow test-connection`) sends `{"count":0,"records":[],"test":true}`.

## Replies

| reply | outcome |
| --- | --- |
| 2xx | every record accepted, unless the body lists per-record results (below) |
| 2xx or 207 with `{"results":[{"id":"<record id>","status":"error","error":"…","retryable":false}]}` | listed records failed (retried next run); the others accepted |
| 408, 429, 5xx, timeout, connection error | retried with exponential backoff and jitter, honouring `Retry-After`; after `max_retries` the batch's records fail and are retried next run |
| 413 | the batch is split in halves and re-sent |
| 401, 403 | the run stops: check `signing_secret` and `headers` |
| 404, 410, 3xx | the run stops: check `url` |
| other 4xx | the batch's records fail with the receiver's message |
)md";

  def.create = HttpDestinationFactory<WebhookDestination>(def.type, ParseConfig);
  return def;
}

}  // namespace backflow
