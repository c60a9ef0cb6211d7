#include "backflow/testing/webhook_receiver.h"

#include <charconv>
#include <cmath>
#include <utility>

#include "backflow/common/crypto.h"
#include "fmt/format.h"

namespace backflow {
namespace {

std::string HeaderOr(const TestRequest& req, std::string_view name) {
  return req.Header(name).value_or("");
}

bool Is2xx(int status) { return status >= 200 && status < 300; }

}  // namespace

WebhookReply WebhookReply::Status(int status, std::string body) {
  WebhookReply r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

WebhookReply WebhookReply::TooManyRequests(std::string retry_after) {
  WebhookReply r;
  r.status = 429;
  r.headers.emplace_back("Retry-After", std::move(retry_after));
  return r;
}

WebhookReply WebhookReply::Slow(std::chrono::milliseconds delay, int status) {
  WebhookReply r;
  r.status = status;
  r.delay = delay;
  return r;
}

WebhookReply WebhookReply::ConnectionReset(bool applied) {
  WebhookReply r;
  r.reset_connection = true;
  r.apply = applied;
  return r;
}

WebhookReceiver::WebhookReceiver(WebhookReceiverOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {
  if (options_.clock == nullptr) options_.clock = &SystemClock();
  const std::string& secret = options_.signing_secret;
  if (secret.starts_with("whsec_")) {
    absl::StatusOr<std::string> decoded = Base64Decode(std::string_view(secret).substr(6));
    // An undecodable secret matches nothing, so every request is rejected.
    key_ = decoded.ok() ? *decoded : std::string();
  } else {
    key_ = secret;
  }
}

WebhookReceiver::~WebhookReceiver() { Stop(); }

absl::Status WebhookReceiver::Start() { return server_.Start(); }

void WebhookReceiver::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  server_.Stop();
}

void WebhookReceiver::EnqueueReply(WebhookReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

void WebhookReceiver::EnqueueReplies(int count, const WebhookReply& reply) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < count; ++i) script_.push_back(reply);
}

void WebhookReceiver::ClearScript() {
  std::lock_guard<std::mutex> lock(mu_);
  script_.clear();
}

void WebhookReceiver::RejectKey(const std::string& key, std::string message, bool retryable) {
  std::lock_guard<std::mutex> lock(mu_);
  rejections_[key] = Rejection{std::move(message), retryable};
}

void WebhookReceiver::ClearRejections() {
  std::lock_guard<std::mutex> lock(mu_);
  rejections_.clear();
}

void WebhookReceiver::HoldFrom(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  hold_from_ = n;
}

void WebhookReceiver::Release() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    hold_from_ = 0;
    ++release_generation_;
  }
  cv_.notify_all();
}

bool WebhookReceiver::WaitForHeld(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [this] { return held_now_ > 0; });
}

bool WebhookReceiver::WaitForRequests(int64_t n, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout,
                      [this, n] { return static_cast<int64_t>(requests_.size()) >= n; });
}

void WebhookReceiver::SetObserver(std::function<void(const ReceivedRequest&)> observer) {
  std::lock_guard<std::mutex> lock(mu_);
  observer_ = std::move(observer);
}

std::map<std::string, nlohmann::json> WebhookReceiver::State() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_;
}

std::vector<ReceivedRequest> WebhookReceiver::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t WebhookReceiver::request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(requests_.size());
}

int64_t WebhookReceiver::bad_signature_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bad_signatures_;
}

int64_t WebhookReceiver::malformed_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return malformed_;
}

std::map<std::string, int> WebhookReceiver::RecordApplyCounts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return record_apply_counts_;
}

std::vector<std::string> WebhookReceiver::DuplicateRecordIds() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [id, count] : record_apply_counts_) {
    if (count > 1) out.push_back(id);
  }
  return out;
}

std::map<std::string, int> WebhookReceiver::WebhookIdCounts() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, int> out;
  for (const ReceivedRequest& r : requests_) {
    if (!r.webhook_id.empty()) ++out[r.webhook_id];
  }
  return out;
}

void WebhookReceiver::ClearHistory() {
  std::lock_guard<std::mutex> lock(mu_);
  state_.clear();
  requests_.clear();
  bad_signatures_ = 0;
  malformed_ = 0;
  record_apply_counts_.clear();
  arrived_ = 0;
}

bool WebhookReceiver::VerifySignature(const TestRequest& req, std::string* why) const {
  std::string id = HeaderOr(req, "webhook-id");
  std::string ts = HeaderOr(req, "webhook-timestamp");
  std::string sig = HeaderOr(req, "webhook-signature");
  if (id.empty() || ts.empty() || sig.empty()) {
    *why = "missing webhook-id, webhook-timestamp or webhook-signature";
    return false;
  }
  int64_t seconds = 0;
  auto [ptr, ec] = std::from_chars(ts.data(), ts.data() + ts.size(), seconds);
  if (ec != std::errc() || ptr != ts.data() + ts.size()) {
    *why = "webhook-timestamp is not an integer";
    return false;
  }
  int64_t now = static_cast<int64_t>(std::floor(ToUnixSeconds(options_.clock->Now())));
  if (std::llabs(now - seconds) > options_.timestamp_tolerance.count()) {
    *why = fmt::format("webhook-timestamp {} is more than {} s from now ({})", seconds,
                       options_.timestamp_tolerance.count(), now);
    return false;
  }
  std::string expected = Base64Encode(HmacSha256(key_, id + "." + ts + "." + req.body));
  std::string_view rest = sig;
  while (!rest.empty()) {
    size_t space = rest.find(' ');
    std::string_view entry = rest.substr(0, space);
    rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
    if (entry.starts_with("v1,") && ConstantTimeEquals(entry.substr(3), expected)) return true;
  }
  *why = "no webhook-signature entry matches";
  return false;
}

TestResponse WebhookReceiver::Handle(const TestRequest& req) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    int64_t seq = ++arrived_;
    if (hold_from_ > 0 && seq >= hold_from_ && !stopping_) {
      ++held_now_;
      cv_.notify_all();
      uint64_t generation = release_generation_;
      cv_.wait(lock, [&] { return stopping_ || release_generation_ != generation; });
      --held_now_;
    }
    if (stopping_) return TestResponse::Reset();
  }

  ReceivedRequest rec;
  rec.method = req.method;
  rec.target = req.target;
  rec.headers = req.headers;
  rec.body = req.body;
  rec.webhook_id = HeaderOr(req, "webhook-id");
  rec.webhook_timestamp = HeaderOr(req, "webhook-timestamp");
  rec.webhook_signature = HeaderOr(req, "webhook-signature");
  rec.idempotency_key = HeaderOr(req, "x-idempotency-key");

  std::string why;
  rec.signature_valid = options_.signing_secret.empty() || VerifySignature(req, &why);

  nlohmann::json body = nlohmann::json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  bool well_formed = body.is_object() && body.contains("records") && body["records"].is_array();
  if (well_formed) {
    if (auto it = body.find("test"); it != body.end() && it->is_boolean()) rec.test = *it;
    if (auto it = body.find("batch_id"); it != body.end() && it->is_string()) rec.batch_id = *it;
    for (const nlohmann::json& r : body["records"]) {
      if (!r.is_object() || !r.contains("id") || !r["id"].is_string() || !r.contains("key") ||
          !r["key"].is_string()) {
        well_formed = false;
        break;
      }
      rec.record_ids.push_back(r["id"].get<std::string>());
      rec.record_keys.push_back(r["key"].get<std::string>());
    }
  }

  TestResponse resp;
  resp.headers.emplace_back("Content-Type", "application/json");
  std::function<void(const ReceivedRequest&)> observer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rec.sequence = static_cast<int64_t>(requests_.size()) + 1;
    observer = observer_;
    if (!rec.signature_valid) {
      ++bad_signatures_;
      resp.status = 401;
      nlohmann::json err = {{"error", "invalid signature: " + why}};
      resp.body = err.dump();
    } else if (!well_formed) {
      ++malformed_;
      resp.status = 400;
      resp.body = R"({"error":"body must be a JSON object with a records array"})";
    } else if (rec.test) {
      resp.status = 200;
      resp.body = R"({"ok":true})";
    } else {
      std::optional<WebhookReply> scripted;
      if (!script_.empty()) {
        scripted = std::move(script_.front());
        script_.pop_front();
      }
      int status = scripted ? scripted->status : 200;
      bool reset = scripted && scripted->reset_connection;
      bool apply =
          scripted && scripted->apply.has_value() ? *scripted->apply : (Is2xx(status) && !reset);
      bool any_rejected = false;
      nlohmann::json results = nlohmann::json::array();
      if (apply) {
        rec.applied = true;
        for (const nlohmann::json& r : body["records"]) {
          std::string id = r["id"].get<std::string>();
          std::string key = r["key"].get<std::string>();
          auto rejected = rejections_.find(key);
          if (rejected != rejections_.end()) {
            any_rejected = true;
            results.push_back({{"id", id},
                               {"status", "error"},
                               {"error", rejected->second.message},
                               {"retryable", rejected->second.retryable}});
            continue;
          }
          results.push_back({{"id", id}, {"status", "ok"}});
          std::string operation = r.value("operation", "upsert");
          if (operation == "delete") {
            state_.erase(key);
          } else {
            state_[key] = r.contains("fields") ? r["fields"] : nlohmann::json::object();
          }
          ++record_apply_counts_[id];
        }
      }
      if (!scripted && any_rejected) status = options_.per_record_error_status;
      resp.status = status;
      if (scripted && !scripted->body.empty()) {
        resp.body = scripted->body;
      } else if (any_rejected) {
        resp.body = nlohmann::json{{"results", results}}.dump();
      } else if (Is2xx(status)) {
        resp.body = fmt::format(R"({{"ok":true,"accepted":{}}})", rec.record_ids.size());
      } else {
        resp.body = fmt::format(R"({{"error":"scripted status {}"}})", status);
      }
      if (scripted) {
        for (auto& h : scripted->headers) resp.headers.push_back(h);
        resp.delay = scripted->delay;
        resp.reset_connection = reset;
      }
    }
    rec.reply_status = resp.reset_connection ? 0 : resp.status;
    requests_.push_back(rec);
  }
  cv_.notify_all();
  if (observer) observer(rec);
  return resp;
}

}  // namespace backflow
