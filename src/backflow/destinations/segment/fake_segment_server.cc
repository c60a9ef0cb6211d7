#include "backflow/destinations/segment/fake_segment_server.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "backflow/common/crypto.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

bool Is2xx(int status) { return status >= 200 && status < 300; }

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// An id value as Segment reads it: a non-empty string, or a number as text.
std::optional<std::string> IdOf(const json& item, const char* key) {
  auto it = item.find(key);
  if (it == item.end()) return std::nullopt;
  if (it->is_string() && !it->get_ref<const std::string&>().empty()) return it->get<std::string>();
  if (it->is_number()) return it->dump();
  return std::nullopt;
}

TestResponse Reply(int status, const std::string& message = "") {
  json body =
      Is2xx(status) ? json{{"success", true}} : json{{"success", false}, {"message", message}};
  return TestResponse::Json(status, body.dump());
}

void MergeInto(json& target, const json& traits) {
  if (!target.is_object()) target = json::object();
  if (!traits.is_object()) return;
  for (const auto& [k, v] : traits.items()) target[k] = v;
}

}  // namespace

FakeSegmentReply FakeSegmentReply::Status(int status, std::string body) {
  FakeSegmentReply r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

FakeSegmentReply FakeSegmentReply::TooManyRequests(std::string retry_after_s, std::string reset_s) {
  FakeSegmentReply r;
  r.status = 429;
  if (!retry_after_s.empty()) r.headers.emplace_back("Retry-After", std::move(retry_after_s));
  if (!reset_s.empty()) r.headers.emplace_back("X-RateLimit-Reset", std::move(reset_s));
  return r;
}

FakeSegmentReply FakeSegmentReply::Slow(std::chrono::milliseconds delay, int status) {
  FakeSegmentReply r;
  r.status = status;
  r.delay = delay;
  return r;
}

FakeSegmentServer::FakeSegmentServer(FakeSegmentOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {}

FakeSegmentServer::~FakeSegmentServer() { Stop(); }

absl::Status FakeSegmentServer::Start() { return server_.Start(); }

void FakeSegmentServer::Stop() { server_.Stop(); }

std::string FakeSegmentServer::BaseUrl() const {
  return fmt::format("http://127.0.0.1:{}", server_.port());
}

void FakeSegmentServer::EnqueueReply(FakeSegmentReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

void FakeSegmentServer::EnqueueReplies(int count, const FakeSegmentReply& reply) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < count; ++i) script_.push_back(reply);
}

void FakeSegmentServer::RejectUserId(const std::string& user_id) {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_user_ids_.insert(user_id);
}

void FakeSegmentServer::ClearRejections() {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_user_ids_.clear();
}

bool FakeSegmentServer::Authenticate(const TestRequest& req, const json* body, std::string* key,
                                     std::string* why) const {
  if (std::optional<std::string> auth = req.Header("authorization")) {
    if (auth->size() < 6 || Lower(auth->substr(0, 6)) != "basic ") {
      *why = "Authorization must be Basic base64(writeKey:)";
      return false;
    }
    absl::StatusOr<std::string> decoded = Base64Decode(auth->substr(6));
    if (!decoded.ok()) {
      *why = "Authorization: invalid base64";
      return false;
    }
    size_t colon = decoded->find(':');
    if (colon == std::string::npos) {
      *why = "Authorization: missing ':' after the write key (expected base64(writeKey:))";
      return false;
    }
    if (colon + 1 != decoded->size()) {
      *why = "Authorization: the password must be empty (expected base64(writeKey:))";
      return false;
    }
    *key = decoded->substr(0, colon);
  } else if (body != nullptr && body->is_object() && body->contains("writeKey") &&
             (*body)["writeKey"].is_string()) {
    *key = (*body)["writeKey"].get<std::string>();
  } else {
    *why = "no write key: send Authorization: Basic base64(writeKey:) or writeKey in the body";
    return false;
  }
  if (!options_.write_keys.contains(*key)) {
    *why = "invalid write key";
    key->clear();
    return false;
  }
  return true;
}

TestResponse FakeSegmentServer::Handle(const TestRequest& req) {
  SegmentRequest rec;
  rec.method = req.method;
  rec.target = req.target;
  rec.headers = req.headers;
  rec.body = req.body;
  auto finish = [&](TestResponse resp) {
    rec.reply_status = resp.reset_connection ? 0 : resp.status;
    requests_.push_back(std::move(rec));
    return resp;
  };

  std::string path = req.target.substr(0, req.target.find('?'));
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  const bool parsed = !body.is_discarded();

  if (parsed && body.is_object() && body.contains("batch") && body["batch"].is_array()) {
    rec.item_count = body["batch"].size();
    for (const json& item : body["batch"]) {
      if (!item.is_object()) continue;
      if (auto id = item.find("messageId"); id != item.end() && id->is_string()) {
        rec.message_ids.push_back(id->get<std::string>());
      }
    }
  }

  std::lock_guard<std::mutex> lock(mu_);
  if (req.method != "POST" || (path != "/v1/batch" && path != "/v1/import")) {
    return finish(Reply(404, "not found: use POST /v1/batch"));
  }
  std::string why;
  if (!Authenticate(req, parsed ? &body : nullptr, &rec.write_key, &why)) {
    ++unauthorized_;
    return finish(Reply(401, why));
  }

  std::optional<FakeSegmentReply> scripted;
  if (!script_.empty()) {
    scripted = std::move(script_.front());
    script_.pop_front();
  }
  auto scripted_response = [&](int status) {
    TestResponse resp = Reply(status, "scripted failure");
    if (!scripted->body.empty()) resp.body = scripted->body;
    resp.headers = scripted->headers;
    resp.delay = scripted->delay;
    resp.reset_connection = scripted->reset_connection;
    return resp;
  };
  if (scripted &&
      !scripted->apply.value_or(Is2xx(scripted->status) && !scripted->reset_connection)) {
    return finish(scripted_response(scripted->status));
  }

  std::optional<std::string> content_type = req.Header("content-type");
  if (!content_type ||
      Lower(content_type->substr(0, content_type->find(';'))) != "application/json") {
    return finish(Reply(400, "Content-Type must be application/json"));
  }
  if (req.body.size() > options_.max_batch_bytes) {
    return finish(Reply(400, fmt::format("batch of {} bytes is over the {} byte limit",
                                         req.body.size(), options_.max_batch_bytes)));
  }
  if (!parsed) return finish(Reply(400, "invalid JSON"));
  if (!body.is_object() || !body.contains("batch") || !body["batch"].is_array()) {
    return finish(Reply(400, "the body must be an object with a \"batch\" array"));
  }
  const json& batch = body["batch"];
  for (const json& item : batch) {
    size_t size = Dump(item).size();
    if (size > options_.max_event_bytes) {
      return finish(Reply(400, fmt::format("event of {} bytes is over the {} byte limit", size,
                                           options_.max_event_bytes)));
    }
  }
  auto ok_response = [&] { return scripted ? scripted_response(scripted->status) : Reply(200); };
  if (batch.size() > options_.max_batch_events) {
    for (const json& item : batch) dropped_.push_back({"batch_too_large", item});
    return finish(ok_response());
  }

  std::vector<json> valid;
  std::vector<DroppedItem> invalid;
  for (const json& raw : batch) {
    json item = raw.is_object() ? raw : json::object();
    for (const char* shared : {"context", "integrations"}) {
      auto top = body.find(shared);
      if (top == body.end() || !top->is_object()) continue;
      json& own = item[shared];
      if (!own.is_object()) own = json::object();
      for (const auto& [k, v] : top->items()) {
        if (!own.contains(k)) own[k] = v;
      }
    }
    static const std::set<std::string> kTypes = {"identify", "track",  "group",
                                                 "page",     "screen", "alias"};
    auto type = item.find("type");
    if (type == item.end() || !type->is_string() || !kTypes.contains(type->get<std::string>())) {
      invalid.push_back({"bad_type", item});
      continue;
    }
    if (!IdOf(item, "userId") && !IdOf(item, "anonymousId")) {
      invalid.push_back({"no_user_anon_id", item});
      continue;
    }
    if (*type == "track") {
      auto ev = item.find("event");
      if (ev == item.end() || !ev->is_string() || ev->get_ref<const std::string&>().empty()) {
        invalid.push_back({"missing_event", item});
        continue;
      }
    }
    if (*type == "group" && !IdOf(item, "groupId")) {
      invalid.push_back({"missing_group_id", item});
      continue;
    }
    valid.push_back(std::move(item));
  }
  for (const json& item : valid) {
    if (std::optional<std::string> user = IdOf(item, "userId");
        user && rejected_user_ids_.contains(*user)) {
      return finish(Reply(400, fmt::format("event for userId {} was rejected", *user)));
    }
  }
  if (!invalid.empty() && options_.reject_invalid_items_with_400) {
    return finish(
        Reply(400, fmt::format("{} invalid event(s): {}", invalid.size(), invalid.front().reason)));
  }
  for (DroppedItem& d : invalid) dropped_.push_back(std::move(d));
  ApplyLocked(valid);
  return finish(ok_response());
}

void FakeSegmentServer::ApplyLocked(const std::vector<json>& items) {
  for (const json& item : items) {
    std::string message_id;
    if (auto id = item.find("messageId"); id != item.end() && id->is_string()) {
      message_id = id->get<std::string>();
    }
    if (!message_id.empty()) {
      ++message_id_counts_[message_id];
      if (!seen_message_ids_.insert(message_id).second) {
        ++duplicates_;
        continue;
      }
    }
    ++accepted_;
    const std::string type = item["type"].get<std::string>();
    std::optional<std::string> user = IdOf(item, "userId");
    std::optional<std::string> anon = IdOf(item, "anonymousId");
    const json traits = item.contains("traits") ? item["traits"] : json::object();
    if (type == "identify") {
      json& target = user ? users_[*user] : anonymous_[*anon];
      MergeInto(target, traits);
    } else if (type == "track") {
      events_.push_back(item);
    } else if (type == "group") {
      std::string group = *IdOf(item, "groupId");
      MergeInto(groups_[group], traits);
      members_.emplace(user ? *user : *anon, group);
    }
  }
}

std::map<std::string, json> FakeSegmentServer::UserTraits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return users_;
}

std::map<std::string, json> FakeSegmentServer::AnonymousTraits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return anonymous_;
}

std::vector<json> FakeSegmentServer::Events() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

std::map<std::string, json> FakeSegmentServer::Groups() const {
  std::lock_guard<std::mutex> lock(mu_);
  return groups_;
}

std::set<std::pair<std::string, std::string>> FakeSegmentServer::GroupMembers() const {
  std::lock_guard<std::mutex> lock(mu_);
  return members_;
}

std::vector<DroppedItem> FakeSegmentServer::DroppedItems() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

std::vector<SegmentRequest> FakeSegmentServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeSegmentServer::request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(requests_.size());
}

int64_t FakeSegmentServer::unauthorized_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unauthorized_;
}

int64_t FakeSegmentServer::duplicate_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return duplicates_;
}

std::map<std::string, int> FakeSegmentServer::MessageIdCounts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return message_id_counts_;
}

int64_t FakeSegmentServer::accepted_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return accepted_;
}

void FakeSegmentServer::ClearHistory() {
  std::lock_guard<std::mutex> lock(mu_);
  users_.clear();
  anonymous_.clear();
  events_.clear();
  groups_.clear();
  members_.clear();
  dropped_.clear();
  requests_.clear();
  seen_message_ids_.clear();
  message_id_counts_.clear();
  unauthorized_ = 0;
  duplicates_ = 0;
  accepted_ = 0;
}

}  // namespace backflow
