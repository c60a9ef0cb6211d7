#include "backflow/alerts/testing/fake_slack_webhook.h"

#include <utility>

namespace backflow {
namespace {

size_t Utf8Length(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

// A Block Kit text object: {"type": "mrkdwn"|"plain_text", "text": 1..max chars}.
bool IsTextObject(const nlohmann::json& t, size_t max, bool plain_only = false) {
  if (!t.is_object() || !t.contains("type") || !t.contains("text")) return false;
  if (!t["type"].is_string() || !t["text"].is_string()) return false;
  std::string type = t["type"];
  if (type != "plain_text" && (plain_only || type != "mrkdwn")) return false;
  size_t length = Utf8Length(t["text"].get<std::string>());
  if (length == 0 || length > max) return false;
  for (const auto& [key, value] : t.items()) {
    if (key == "type" || key == "text") continue;
    if (key == "emoji" && type == "plain_text" && value.is_boolean()) continue;
    if (key == "verbatim" && type == "mrkdwn" && value.is_boolean()) continue;
    return false;
  }
  return true;
}

bool IsValidBlock(const nlohmann::json& b) {
  if (!b.is_object() || !b.contains("type") || !b["type"].is_string()) return false;
  std::string type = b["type"];
  if (b.contains("block_id") && !b["block_id"].is_string()) return false;
  auto only = [&](std::initializer_list<const char*> keys) {
    for (const auto& [key, value] : b.items()) {
      if (key == "type" || key == "block_id") continue;
      bool known = false;
      for (const char* k : keys) known = known || key == k;
      if (!known) return false;
    }
    return true;
  };
  if (type == "header") {
    return only({"text"}) && b.contains("text") && IsTextObject(b["text"], 150, true);
  }
  if (type == "section") {
    if (!only({"text", "fields"})) return false;
    if (!b.contains("text") && !b.contains("fields")) return false;
    if (b.contains("text") && !IsTextObject(b["text"], 3000)) return false;
    if (b.contains("fields")) {
      const nlohmann::json& f = b["fields"];
      if (!f.is_array() || f.empty() || f.size() > 10) return false;
      for (const auto& field : f) {
        if (!IsTextObject(field, 2000)) return false;
      }
    }
    return true;
  }
  if (type == "context") {
    if (!only({"elements"}) || !b.contains("elements")) return false;
    const nlohmann::json& e = b["elements"];
    if (!e.is_array() || e.empty() || e.size() > 10) return false;
    for (const auto& element : e) {
      if (!IsTextObject(element, 3000)) return false;
    }
    return true;
  }
  if (type == "divider") return only({});
  return false;
}

}  // namespace

FakeSlackWebhook::FakeSlackWebhook(std::string path)
    : path_(std::move(path)), server_([this](const TestRequest& r) { return Handle(r); }) {}

FakeSlackWebhook::~FakeSlackWebhook() { Stop(); }

absl::Status FakeSlackWebhook::Start() { return server_.Start(); }
void FakeSlackWebhook::Stop() { server_.Stop(); }

std::string FakeSlackWebhook::WebhookUrl() const { return server_.Url(path_); }

void FakeSlackWebhook::EnqueueReply(int status, std::string body, std::string retry_after) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back({status, std::move(body), std::move(retry_after)});
}

std::vector<SlackWebhookRequest> FakeSlackWebhook::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

std::vector<nlohmann::json> FakeSlackWebhook::PostedMessages() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<nlohmann::json> out;
  for (const SlackWebhookRequest& r : requests_) {
    if (r.posted) out.push_back(r.payload);
  }
  return out;
}

std::string FakeSlackWebhook::Validate(const nlohmann::json& payload) {
  if (!payload.is_object()) return "invalid_payload";
  bool has_text = payload.contains("text");
  if (has_text && !payload["text"].is_string()) return "invalid_payload";
  bool text_empty = !has_text || payload["text"].get<std::string>().empty();
  if (text_empty && !payload.contains("blocks")) return "no_text";
  if (payload.contains("blocks")) {
    const nlohmann::json& blocks = payload["blocks"];
    if (!blocks.is_array() || blocks.empty() || blocks.size() > 50) return "invalid_blocks";
    for (const auto& block : blocks) {
      if (!IsValidBlock(block)) return "invalid_blocks";
    }
  }
  return "";
}

TestResponse FakeSlackWebhook::Handle(const TestRequest& request) {
  SlackWebhookRequest record;
  record.method = request.method;
  record.target = request.target;
  record.headers = request.headers;
  record.body = request.body;
  record.payload = nlohmann::json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (record.payload.is_discarded()) record.payload = nullptr;

  TestResponse response;
  response.headers = {{"Content-Type", "text/plain; charset=utf-8"}};
  std::lock_guard<std::mutex> lock(mu_);
  if (request.target != path_) {
    response.status = 404;
    response.body = "no_service";
  } else if (!script_.empty()) {
    Scripted s = std::move(script_.front());
    script_.pop_front();
    response.status = s.status;
    response.body = s.body;
    if (!s.retry_after.empty()) response.headers.emplace_back("Retry-After", s.retry_after);
  } else {
    std::string content_type = request.Header("content-type").value_or("");
    std::string problem;
    if (request.method != "POST" || content_type.rfind("application/json", 0) != 0 ||
        record.payload.is_null()) {
      problem = "invalid_payload";
    } else {
      problem = Validate(record.payload);
    }
    if (problem.empty()) {
      response.status = 200;
      response.body = "ok";
      response.headers = {{"Content-Type", "text/html"}};
      record.posted = true;
    } else {
      response.status = 400;
      response.body = problem;
    }
  }
  record.reply_status = response.status;
  record.reply_body = response.body;
  requests_.push_back(std::move(record));
  return response;
}

}  // namespace backflow
