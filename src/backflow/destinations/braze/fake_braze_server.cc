#include "backflow/destinations/braze/fake_braze_server.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>
#include <utility>

#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kTrackPath[] = "/users/track";
constexpr char kDeletePath[] = "/users/delete";
constexpr const char* kTrackArrays[] = {"attributes", "events", "purchases"};
constexpr const char* kDeleteKeys[] = {"external_ids", "user_aliases", "braze_ids",
                                       "email_addresses", "phone_numbers"};
// Keys of an attributes object that steer the API rather than set attributes.
constexpr const char* kControlKeys[] = {"external_id", "braze_id", "user_alias",
                                        "_update_existing_only", "_merge_objects"};

std::string Message(std::string_view message) { return json{{"message", message}}.dump(); }

bool IsNonEmptyString(const json& v) { return v.is_string() && !v.get<std::string>().empty(); }

bool Present(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && !it->is_null();
}

bool ValidTime(const json& v) {
  static const std::regex kTime(
      R"(^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$)");
  return v.is_string() && std::regex_match(v.get<std::string>(), kTime);
}

bool ValidEmail(const std::string& s) {
  static const std::regex kEmail(R"(^[^@\s]+@[^@\s]+\.[^@\s]+$)");
  return std::regex_match(s, kEmail);
}

// Whether a nested value holds a null at any depth.
bool HasNestedNull(const json& v) {
  if (!v.is_object() && !v.is_array()) return false;
  for (const json& item : v) {
    if (item.is_null() || HasNestedNull(item)) return true;
  }
  return false;
}

bool ValidDate(const std::string& s) {
  static const std::regex kDate(R"(^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$)");
  return std::regex_match(s, kDate);
}

}  // namespace

FakeBrazeReply FakeBrazeReply::Status(int status, std::string body) {
  FakeBrazeReply r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

FakeBrazeReply FakeBrazeReply::RateLimited(int64_t seconds_from_now) {
  FakeBrazeReply r;
  r.status = 429;
  r.body = Message("Rate limit exceeded");
  r.reset_in_seconds = seconds_from_now;
  return r;
}

FakeBrazeReply FakeBrazeReply::Slow(std::chrono::milliseconds delay) {
  FakeBrazeReply r;
  r.delay = delay;
  r.apply = true;
  return r;
}

FakeBrazeServer::FakeBrazeServer(FakeBrazeOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {
  if (options_.clock == nullptr) options_.clock = &SystemClock();
}

FakeBrazeServer::~FakeBrazeServer() { Stop(); }

absl::Status FakeBrazeServer::Start() { return server_.Start(); }

void FakeBrazeServer::Stop() { server_.Stop(); }

std::string FakeBrazeServer::BaseUrl() const { return server_.Url(""); }

void FakeBrazeServer::SetApiKey(const std::string& key, std::set<std::string> permissions) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.api_keys[key] = std::move(permissions);
}

void FakeBrazeServer::EnqueueReply(FakeBrazeReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

void FakeBrazeServer::EnqueueReplies(int count, const FakeBrazeReply& reply) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < count; ++i) script_.push_back(reply);
}

void FakeBrazeServer::RejectRequestsWith(const std::string& external_id) {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_external_ids_.insert(external_id);
}

void FakeBrazeServer::ClearRejections() {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_external_ids_.clear();
}

void FakeBrazeServer::PutUser(const std::string& external_id, json attributes) {
  std::lock_guard<std::mutex> lock(mu_);
  FakeBrazeUser* user = FindUser(json{{"external_id", external_id}});
  if (user == nullptr) user = FindOrCreateUser(json{{"external_id", external_id}}, true);
  user->attributes = std::move(attributes);
}

std::map<std::string, json> FakeBrazeServer::Users() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, json> out;
  for (const auto& [id, user] : users_) {
    if (!user.external_id.empty()) out[user.external_id] = user.attributes;
  }
  return out;
}

std::vector<FakeBrazeUser> FakeBrazeServer::AllUsers() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FakeBrazeUser> out;
  for (const auto& [id, user] : users_) out.push_back(user);
  return out;
}

std::vector<FakeBrazeEvent> FakeBrazeServer::Events() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

std::vector<FakeBrazeEvent> FakeBrazeServer::Purchases() const {
  std::lock_guard<std::mutex> lock(mu_);
  return purchases_;
}

std::vector<std::string> FakeBrazeServer::Deleted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return deleted_;
}

std::vector<FakeBrazeRequest> FakeBrazeServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeBrazeServer::request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(requests_.size());
}

int64_t FakeBrazeServer::rate_limited_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rate_limited_;
}

int64_t FakeBrazeServer::count_with_status(int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(),
                       [&](const FakeBrazeRequest& r) { return r.status == status; });
}

void FakeBrazeServer::ClearHistory() {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.clear();
  rate_limited_ = 0;
}

void FakeBrazeServer::Record(const TestRequest& req, int status, const std::string& reply_body) {
  FakeBrazeRequest r;
  r.path = req.target;
  r.authorization = req.Header("authorization").value_or("");
  r.content_type = req.Header("content-type").value_or("");
  r.body = req.body;
  r.status = status;
  r.reply_body = reply_body;
  requests_.push_back(std::move(r));
}

TestResponse FakeBrazeServer::Handle(const TestRequest& req) {
  std::lock_guard<std::mutex> lock(mu_);
  auto reply = [&](int status, std::string body, TestHeaders headers = {}) {
    TestResponse r = TestResponse::Json(status, std::move(body));
    for (auto& h : headers) r.headers.push_back(std::move(h));
    Record(req, status, r.body);
    return r;
  };

  const std::string path = req.target.substr(0, req.target.find('?'));
  if (req.method != "POST" || (path != kTrackPath && path != kDeletePath)) {
    return reply(404, Message("Not Found"));
  }

  // Auth: "Bearer <key>" (scheme case-insensitive).
  std::string auth = req.Header("authorization").value_or("");
  std::string scheme = auth.substr(0, std::min<size_t>(auth.size(), 7));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::string key = scheme == "bearer " ? auth.substr(7) : "";
  auto known = options_.api_keys.find(key);
  if (key.empty() || known == options_.api_keys.end()) {
    return reply(401, Message("Unknown or missing REST API Key"));
  }
  const std::string permission = path == kTrackPath ? kBrazeUsersTrack : kBrazeUsersDelete;
  if (known->second.count(permission) == 0) {
    return reply(403, Message(fmt::format("This API key does not have the {} permission; "
                                          "enable it on the key in Settings > APIs and "
                                          "Identifiers.",
                                          permission)));
  }

  // Rate limit: fixed windows per key and endpoint.
  const bool track = path == kTrackPath;
  const int64_t limit = track ? options_.track_rate_limit : options_.delete_rate_limit;
  const int64_t window_s =
      (track ? options_.track_rate_window : options_.delete_rate_window).count();
  const double now_s = ToUnixSeconds(options_.clock->Now());
  const int64_t index = static_cast<int64_t>(std::floor(now_s / static_cast<double>(window_s)));
  Window& w = windows_[key + " " + path];
  if (w.index != index) w = Window{index, 0};
  const int64_t reset = (index + 1) * window_s;
  auto rate_headers = [&](int64_t remaining) {
    return TestHeaders{{"X-RateLimit-Limit", std::to_string(limit)},
                       {"X-RateLimit-Remaining", std::to_string(remaining)},
                       {"X-RateLimit-Reset", std::to_string(reset)}};
  };
  if (w.count >= limit) {
    ++rate_limited_;
    return reply(429, Message("Rate limit exceeded"), rate_headers(0));
  }
  ++w.count;
  TestHeaders headers = rate_headers(limit - w.count);

  std::optional<FakeBrazeReply> scripted;
  if (!script_.empty()) {
    scripted = std::move(script_.front());
    script_.pop_front();
  }
  if (scripted && !scripted->apply) {
    TestResponse r;
    r.status = scripted->status;
    r.headers = scripted->reset_in_seconds
                    ? TestHeaders{{"X-RateLimit-Limit", std::to_string(limit)},
                                  {"X-RateLimit-Remaining", "0"},
                                  {"X-RateLimit-Reset",
                                   std::to_string(static_cast<int64_t>(std::ceil(now_s)) +
                                                  *scripted->reset_in_seconds)}}
                    : headers;
    for (const auto& h : scripted->headers) r.headers.push_back(h);
    r.headers.emplace_back("Content-Type", "application/json");
    r.body = scripted->body.empty()
                 ? Message(fmt::format("scripted failure (HTTP {})", scripted->status))
                 : scripted->body;
    r.delay = scripted->delay;
    r.reset_connection = scripted->reset_connection;
    Record(req, r.reset_connection ? 0 : r.status, r.body);
    return r;
  }

  Outcome outcome;
  const std::string content_type = req.Header("content-type").value_or("");
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (!content_type.starts_with("application/json")) {
    outcome = {400, json{{"message", "Content-Type must be application/json"}}};
  } else if (!body.is_object()) {
    outcome = {400, json{{"message", "The request body must be a JSON object"}}};
  } else {
    outcome = track ? ProcessTrack(body) : ProcessDelete(body);
  }
  TestResponse r = reply(outcome.status, outcome.body.dump(), std::move(headers));
  if (scripted) {
    r.delay = scripted->delay;
    r.reset_connection = scripted->reset_connection;
    if (r.reset_connection) requests_.back().status = 0;
  }
  return r;
}

FakeBrazeServer::Outcome FakeBrazeServer::ProcessTrack(const json& body) {
  size_t total = 0;
  size_t largest = 0;
  for (const char* name : kTrackArrays) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) continue;
    if (!it->is_array()) {
      return {400, json{{"message", fmt::format("'{}' must be an array", name)}}};
    }
    total += it->size();
    largest = std::max(largest, it->size());
  }
  if (total == 0) {
    return {400, json{{"message",
                       "Valid data must be provided in the 'attributes', 'events', or "
                       "'purchases' fields."}}};
  }
  const size_t cap = static_cast<size_t>(options_.max_objects_per_array);
  if ((options_.combined_object_cap ? total : largest) > cap) {
    return {400,
            json{{"message", "Max Input Length Exceeded"},
                 {"errors", json::array({fmt::format(
                                "at most {} objects {}", cap,
                                options_.combined_object_cap ? "per request" : "per array")})}}};
  }
  for (const char* name : kTrackArrays) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) continue;
    for (const json& object : *it) {
      if (!object.is_object()) continue;
      auto id = object.find("external_id");
      if (id != object.end() && id->is_string() && rejected_external_ids_.count(*id) > 0) {
        return {400,
                json{{"message", "Invalid request"},
                     {"errors",
                      json::array({fmt::format("could not process the user with external_id {}",
                                               id->get<std::string>())})}}};
      }
    }
  }

  // Braze drops every nested custom attribute update of a request when one
  // of them holds a null (its documented FAQ); the rest still applies.
  bool drop_nested = false;
  if (auto attrs = body.find("attributes"); attrs != body.end() && attrs->is_array()) {
    for (const json& object : *attrs) {
      if (!object.is_object()) continue;
      for (const auto& [k, v] : object.items()) {
        if (k != "user_alias" && v.is_object() && HasNestedNull(v)) drop_nested = true;
      }
    }
  }

  json errors = json::array();
  json reply = {{"message", "success"}};
  for (const char* name : kTrackArrays) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) continue;
    int64_t processed = 0;
    const std::string array = name;
    for (size_t i = 0; i < it->size(); ++i) {
      const json& object = (*it)[i];
      std::string why = ValidateObject(array, object);
      if (!why.empty()) {
        errors.push_back({{"type", why}, {"input_array", array}, {"index", i}});
        continue;
      }
      ++processed;
      bool alias_only = !Present(object, "external_id") && !Present(object, "braze_id") &&
                        Present(object, "user_alias");
      bool update_only = object.value("_update_existing_only", alias_only);
      FakeBrazeUser* user = FindOrCreateUser(object, !update_only);
      if (user == nullptr) continue;
      if (array == "attributes") {
        for (const auto& [k, v] : object.items()) {
          if (std::find(std::begin(kControlKeys), std::end(kControlKeys), k) !=
              std::end(kControlKeys)) {
            continue;
          }
          if (drop_nested && v.is_object()) continue;
          if (v.is_null()) {
            user->attributes.erase(k);
          } else {
            user->attributes[k] = v;
          }
        }
      } else {
        FakeBrazeEvent e{user->braze_id, user->external_id, object};
        (array == "events" ? events_ : purchases_).push_back(std::move(e));
      }
    }
    reply[array + "_processed"] = processed;
  }
  if (!errors.empty()) reply["errors"] = std::move(errors);
  return {201, std::move(reply)};
}

std::string FakeBrazeServer::ValidateObject(const std::string& array, const json& object) const {
  if (!object.is_object()) return "object expected";
  int ids = 0;
  for (const char* key : {"external_id", "braze_id", "user_alias"}) ids += Present(object, key);
  if (ids > 1) return "only one of 'external_id', 'braze_id' or 'user_alias' may identify a user";
  const bool email = Present(object, "email");
  const bool phone = Present(object, "phone");
  if (ids == 0 && !email && !phone) {
    return "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required";
  }
  for (const char* key : {"external_id", "braze_id"}) {
    if (Present(object, key) && !IsNonEmptyString(object[key])) {
      return fmt::format("'{}' must be a non-empty string", key);
    }
  }
  if (Present(object, "user_alias")) {
    const json& alias = object["user_alias"];
    if (!alias.is_object() || !IsNonEmptyString(alias.value("alias_name", json())) ||
        !IsNonEmptyString(alias.value("alias_label", json()))) {
      return "'user_alias' must have string 'alias_name' and 'alias_label'";
    }
  }
  if (email && (!object["email"].is_string() || !ValidEmail(object["email"]))) {
    return fmt::format("Invalid email address '{}'", object["email"].is_string()
                                                         ? object["email"].get<std::string>()
                                                         : object["email"].dump());
  }
  if (phone && !IsNonEmptyString(object["phone"])) return "'phone' must be a string";
  if (array == "attributes") {
    if (Present(object, "dob") &&
        (!object["dob"].is_string() || !ValidDate(object["dob"].get<std::string>()))) {
      return "'dob' must be a date as YYYY-MM-DD";
    }
    if (Present(object, "gender")) {
      static const std::set<std::string> kGenders = {"M", "F", "O", "N", "P"};
      if (!object["gender"].is_string() || kGenders.count(object["gender"]) == 0) {
        return "'gender' must be one of M, F, O, N, P";
      }
    }
    return "";
  }
  if (!ValidTime(object.value("time", json()))) {
    return "'time' must be an ISO-8601 date-time with a time zone";
  }
  if (array == "events") {
    if (!IsNonEmptyString(object.value("name", json()))) return "'name' is required";
    if (Present(object, "properties") && !object["properties"].is_object()) {
      return "'properties' must be an object";
    }
    return "";
  }
  if (!IsNonEmptyString(object.value("product_id", json()))) return "'product_id' is required";
  json currency = object.value("currency", json());
  if (!currency.is_string() || currency.get<std::string>().size() != 3) {
    return "'currency' must be a three-letter ISO-4217 code";
  }
  if (!object.value("price", json()).is_number()) return "'price' must be a number";
  return "";
}

FakeBrazeUser* FakeBrazeServer::FindUser(const json& object) {
  auto find_if = [&](auto pred) -> FakeBrazeUser* {
    for (auto& [id, user] : users_) {
      if (pred(user)) return &user;
    }
    return nullptr;
  };
  if (Present(object, "external_id")) {
    const std::string id = object["external_id"];
    return find_if([&](const FakeBrazeUser& u) { return u.external_id == id; });
  }
  if (Present(object, "braze_id")) {
    auto it = users_.find(object["braze_id"].get<std::string>());
    return it == users_.end() ? nullptr : &it->second;
  }
  if (Present(object, "user_alias")) {
    std::pair<std::string, std::string> alias = {object["user_alias"]["alias_name"],
                                                 object["user_alias"]["alias_label"]};
    return find_if([&](const FakeBrazeUser& u) { return u.alias == alias; });
  }
  for (const char* key : {"email", "phone"}) {
    if (!Present(object, key)) continue;
    const json value = object[key];
    // Profiles with an external_id win, as Braze documents for duplicates.
    FakeBrazeUser* found = find_if([&](const FakeBrazeUser& u) {
      return !u.external_id.empty() && u.attributes.value(key, json()) == value;
    });
    if (found == nullptr) {
      found =
          find_if([&](const FakeBrazeUser& u) { return u.attributes.value(key, json()) == value; });
    }
    return found;
  }
  return nullptr;
}

FakeBrazeUser* FakeBrazeServer::FindOrCreateUser(const json& object, bool create) {
  if (FakeBrazeUser* user = FindUser(object); user != nullptr) return user;
  if (!create || Present(object, "braze_id")) return nullptr;
  FakeBrazeUser user;
  user.braze_id = fmt::format("fake-braze-{:08}", next_braze_id_++);
  if (Present(object, "external_id")) user.external_id = object["external_id"];
  if (Present(object, "user_alias")) {
    user.alias = std::make_pair(object["user_alias"]["alias_name"].get<std::string>(),
                                object["user_alias"]["alias_label"].get<std::string>());
  }
  for (const char* key : {"email", "phone"}) {
    if (Present(object, key)) user.attributes[key] = object[key];
  }
  std::string id = user.braze_id;
  return &users_.emplace(id, std::move(user)).first->second;
}

FakeBrazeServer::Outcome FakeBrazeServer::ProcessDelete(const json& body) {
  const char* given = nullptr;
  int count = 0;
  for (const char* key : kDeleteKeys) {
    if (Present(body, key)) {
      given = key;
      ++count;
    }
  }
  if (count != 1) {
    return {400, json{{"message",
                       "Exactly one of 'external_ids', 'user_aliases', 'braze_ids', "
                       "'email_addresses' or 'phone_numbers' must be given"}}};
  }
  const json& ids = body[given];
  if (!ids.is_array() || ids.empty()) {
    return {400, json{{"message", fmt::format("'{}' must be a non-empty array", given)}}};
  }
  if (ids.size() > static_cast<size_t>(options_.max_delete_ids)) {
    return {400, json{{"message", "The max number of ids per request was exceeded"}}};
  }
  const std::string kind = given;
  for (const json& id : ids) {
    bool ok = kind == "user_aliases"
                  ? id.is_object() && IsNonEmptyString(id.value("alias_name", json())) &&
                        IsNonEmptyString(id.value("alias_label", json()))
                  : IsNonEmptyString(id);
    if (!ok) {
      return {400, json{{"message",
                         fmt::format("'{}' holds an invalid identifier: {}", given, id.dump())}}};
    }
  }
  int64_t deleted = 0;
  for (const json& id : ids) {
    json lookup;
    if (kind == "external_ids") lookup = {{"external_id", id}};
    if (kind == "braze_ids") lookup = {{"braze_id", id}};
    if (kind == "user_aliases") lookup = {{"user_alias", id}};
    if (kind == "email_addresses") lookup = {{"email", id}};
    if (kind == "phone_numbers") lookup = {{"phone", id}};
    // Every profile matching an email or phone goes; ids match at most one.
    while (FakeBrazeUser* user = FindUser(lookup)) {
      deleted_.push_back(user->external_id.empty() ? user->braze_id : user->external_id);
      const std::string braze_id = user->braze_id;
      users_.erase(braze_id);
      ++deleted;
      if (kind != "email_addresses" && kind != "phone_numbers") break;
    }
  }
  return {201, json{{"deleted", deleted}, {"message", "success"}}};
}

}  // namespace backflow
