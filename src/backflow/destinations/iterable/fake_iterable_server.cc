#include "backflow/destinations/iterable/fake_iterable_server.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>
#include <utility>

#include "backflow/common/url.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kBulkUpdatePath[] = "/api/users/bulkUpdate";
constexpr char kTrackBulkPath[] = "/api/events/trackBulk";
constexpr char kUsersPrefix[] = "/api/users/";
constexpr char kByUserIdPrefix[] = "/api/users/byUserId/";
constexpr char kGetFieldsPath[] = "/api/users/getFields";

enum class Endpoint { kBulkUpdate, kTrackBulk, kDelete, kGetFields };

const char* EndpointName(Endpoint e) {
  switch (e) {
    case Endpoint::kBulkUpdate:
      return "bulkUpdate";
    case Endpoint::kTrackBulk:
      return "trackBulk";
    case Endpoint::kDelete:
      return "delete";
    case Endpoint::kGetFields:
      return "getFields";
  }
  return "";
}

const char* KeyTypeName(IterableKeyType t) {
  switch (t) {
    case IterableKeyType::kServerSide:
      return "server-side";
    case IterableKeyType::kReadOnly:
      return "read-only";
    case IterableKeyType::kJavaScript:
      return "JavaScript";
    case IterableKeyType::kMobile:
      return "mobile";
  }
  return "";
}

json Envelope(const std::string& code, const std::string& msg) {
  return json{{"msg", msg}, {"code", code}, {"params", nullptr}};
}

std::string DefaultCode(int status) {
  if (status >= 200 && status < 300) return "Success";
  if (status == 401) return "BadApiKey";
  if (status == 403) return "Forbidden";
  if (status == 429) return "RateLimitExceeded";
  if (status >= 400 && status < 500) return "BadParams";
  return "GenericError";
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool ValidEmail(const std::string& s) {
  static const std::regex kEmail(R"(^[^@\s]+@[^@\s]+\.[^@\s]+$)");
  return std::regex_match(s, kEmail);
}

bool HasControl(const std::string& s) {
  return std::any_of(s.begin(), s.end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; });
}

bool DateLike(const std::string& s) {
  static const std::regex kDate(
      R"(^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2}(\.\d{1,9})?( [+-]\d{2}:\d{2})?|T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$)");
  return std::regex_match(s, kDate);
}

// The schema type of a value; "" for null (fits any field).
std::string TypeOf(const json& v) {
  if (v.is_null()) return "";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer()) return "long";
  if (v.is_number()) return "double";
  if (v.is_string()) return DateLike(v.get<std::string>()) ? "date" : "string";
  if (v.is_object()) return "object";
  return "array";
}

bool Compatible(const std::string& field_type, const std::string& incoming) {
  if (incoming.empty() || incoming == field_type) return true;
  if ((field_type == "long" || field_type == "double") &&
      (incoming == "long" || incoming == "double")) {
    return true;
  }
  return field_type == "string" && incoming == "date";
}

void DeepMerge(json& target, const json& patch) {
  for (const auto& [k, v] : patch.items()) {
    if (v.is_object() && target.contains(k) && target[k].is_object()) {
      DeepMerge(target[k], v);
    } else {
      target[k] = v;
    }
  }
}

std::string StringOr(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

bool BoolOr(const json& object, const char* key, bool def) {
  auto it = object.find(key);
  return it != object.end() && it->is_boolean() ? it->get<bool>() : def;
}

json SetToArray(const std::set<std::string>& s) {
  return json(std::vector<std::string>(s.begin(), s.end()));
}

}  // namespace

FakeIterableReply FakeIterableReply::Status(int status, std::string code, std::string path) {
  FakeIterableReply r;
  r.status = status;
  r.code = std::move(code);
  r.path = std::move(path);
  return r;
}

FakeIterableReply FakeIterableReply::CodeIn200(std::string code, std::string msg,
                                               std::string path) {
  FakeIterableReply r;
  r.status = 200;
  r.code = std::move(code);
  r.msg = std::move(msg);
  r.path = std::move(path);
  return r;
}

FakeIterableReply FakeIterableReply::Slow(std::chrono::milliseconds delay) {
  FakeIterableReply r;
  r.status = 0;
  r.delay = delay;
  r.apply = true;
  return r;
}

FakeIterableServer::FakeIterableServer(FakeIterableOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {
  if (options_.clock == nullptr) options_.clock = &SystemClock();
}

FakeIterableServer::~FakeIterableServer() { Stop(); }

absl::Status FakeIterableServer::Start() { return server_.Start(); }

void FakeIterableServer::Stop() { server_.Stop(); }

std::string FakeIterableServer::BaseUrl() const { return server_.Url(""); }

void FakeIterableServer::SetApiKey(const std::string& key, IterableKeyType type) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.api_keys[key] = type;
}

void FakeIterableServer::EnqueueReply(FakeIterableReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

void FakeIterableServer::EnqueueReplies(int count, const FakeIterableReply& reply) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < count; ++i) script_.push_back(reply);
}

void FakeIterableServer::RejectRequestsWith(const std::string& email) {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_emails_.insert(Lower(email));
}

void FakeIterableServer::ClearRejections() {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_emails_.clear();
}

void FakeIterableServer::ForgetEmail(const std::string& email) {
  std::lock_guard<std::mutex> lock(mu_);
  forgotten_emails_.insert(Lower(email));
  users_.remove_if([&](const User& u) { return Lower(u.email) == Lower(email); });
}

void FakeIterableServer::ForgetUserId(const std::string& user_id) {
  std::lock_guard<std::mutex> lock(mu_);
  forgotten_user_ids_.insert(user_id);
  users_.remove_if([&](const User& u) { return u.user_id == user_id; });
}

void FakeIterableServer::PutUser(const std::string& email, const std::string& user_id,
                                 json data_fields) {
  std::lock_guard<std::mutex> lock(mu_);
  User* u = email.empty() ? nullptr : FindByEmailLocked(email);
  if (u == nullptr && !user_id.empty()) u = FindByUserIdLocked(user_id);
  if (u == nullptr) {
    users_.emplace_back();
    u = &users_.back();
  }
  u->email = email;
  u->user_id = user_id;
  u->data_fields = std::move(data_fields);
}

std::vector<FakeIterableUser> FakeIterableServer::AllUsers() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FakeIterableUser> out;
  for (const User& u : users_) out.push_back({u.email, u.user_id, u.data_fields});
  return out;
}

std::map<std::string, json> FakeIterableServer::UsersByEmail() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, json> out;
  for (const User& u : users_) {
    if (!u.email.empty()) out[Lower(u.email)] = u.data_fields;
  }
  return out;
}

std::map<std::string, json> FakeIterableServer::UsersByUserId() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, json> out;
  for (const User& u : users_) {
    if (!u.user_id.empty()) out[u.user_id] = u.data_fields;
  }
  return out;
}

std::optional<FakeIterableUser> FakeIterableServer::FindUser(const std::string& email,
                                                             const std::string& user_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const User& u : users_) {
    if ((!email.empty() && Lower(u.email) == Lower(email)) ||
        (!user_id.empty() && u.user_id == user_id)) {
      return FakeIterableUser{u.email, u.user_id, u.data_fields};
    }
  }
  return std::nullopt;
}

std::vector<FakeIterableEvent> FakeIterableServer::Events() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

int64_t FakeIterableServer::event_overwrite_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return overwrites_;
}

std::map<std::string, std::string> FakeIterableServer::UserFieldTypes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return user_schema_;
}

std::vector<std::string> FakeIterableServer::Deleted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return deleted_;
}

std::vector<FakeIterableRequest> FakeIterableServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeIterableServer::request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(requests_.size());
}

int64_t FakeIterableServer::count_for_path(const std::string& path) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(), [&](const FakeIterableRequest& r) {
    return r.target.substr(0, r.target.find('?')) == path;
  });
}

int64_t FakeIterableServer::count_with_status(int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(),
                       [&](const FakeIterableRequest& r) { return r.status == status; });
}

int64_t FakeIterableServer::unauthorized_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unauthorized_;
}

int64_t FakeIterableServer::rate_limited_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rate_limited_;
}

void FakeIterableServer::ClearHistory() {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.clear();
  unauthorized_ = 0;
  rate_limited_ = 0;
}

void FakeIterableServer::Record(const TestRequest& req, int status, const std::string& reply_body) {
  FakeIterableRequest r;
  r.method = req.method;
  r.target = req.target;
  r.api_key = req.Header("api-key").value_or("");
  r.content_type = req.Header("content-type").value_or("");
  r.body = req.body;
  r.status = status;
  r.reply_body = reply_body;
  requests_.push_back(std::move(r));
}

FakeIterableServer::User* FakeIterableServer::FindByEmailLocked(const std::string& email) {
  const std::string key = Lower(email);
  for (User& u : users_) {
    if (!u.email.empty() && Lower(u.email) == key) return &u;
  }
  return nullptr;
}

FakeIterableServer::User* FakeIterableServer::FindByUserIdLocked(const std::string& user_id) {
  for (User& u : users_) {
    if (!u.user_id.empty() && u.user_id == user_id) return &u;
  }
  return nullptr;
}

FakeIterableServer::Resolution FakeIterableServer::ResolveLocked(const std::string& email,
                                                                 const std::string& user_id,
                                                                 bool create, bool prefer_user_id,
                                                                 User** user) {
  User* by_email = email.empty() ? nullptr : FindByEmailLocked(email);
  User* by_id = user_id.empty() ? nullptr : FindByUserIdLocked(user_id);
  if (by_email != nullptr && by_id != nullptr && by_email != by_id) return Resolution::kConflict;
  User* u = by_email != nullptr ? by_email : by_id;
  if (u != nullptr) {
    if (!user_id.empty() && !u->user_id.empty() && u->user_id != user_id) {
      return Resolution::kConflict;
    }
    if (!email.empty() && !u->email.empty() && Lower(u->email) != Lower(email)) {
      return Resolution::kConflict;
    }
    if (u->user_id.empty()) u->user_id = user_id;
    if (u->email.empty()) u->email = email;
    *user = u;
    return Resolution::kFound;
  }
  if (!create) return Resolution::kNotFound;
  bool allowed = true;
  switch (options_.project_type) {
    case IterableProjectType::kEmailBased:
      allowed = !email.empty() || prefer_user_id;
      break;
    case IterableProjectType::kUserIdBased:
      allowed = !user_id.empty();
      break;
    case IterableProjectType::kHybrid:
      break;
  }
  if (!allowed) return Resolution::kNotFound;
  users_.push_back(User{email, user_id, json::object()});
  *user = &users_.back();
  return Resolution::kFound;
}

void FakeIterableServer::MergeFieldsLocked(std::map<std::string, std::string>& schema,
                                           const json& data, bool create_new, bool merge_nested,
                                           json* target, std::set<std::string>& dropped,
                                           std::set<std::string>& created) {
  if (!target->is_object()) *target = json::object();
  for (const auto& [k, v] : data.items()) {
    const std::string type = TypeOf(v);
    auto it = schema.find(k);
    if (it == schema.end()) {
      if (!create_new) {
        dropped.insert(k);
        continue;
      }
      if (!type.empty()) {
        schema[k] = type;
        created.insert(k);
      }
    } else if (!Compatible(it->second, type)) {
      dropped.insert(k);
      continue;
    }
    if (merge_nested && v.is_object() && target->contains(k) && (*target)[k].is_object()) {
      DeepMerge((*target)[k], v);
    } else {
      (*target)[k] = v;
    }
  }
}

std::optional<FakeIterableServer::Outcome> FakeIterableServer::CheckRecords(const json& body,
                                                                            const char* array,
                                                                            bool events) const {
  auto bad = [](const std::string& msg) { return Outcome{400, Envelope("BadParams", msg)}; };
  if (!body.is_object() || !body.contains(array) || !body[array].is_array()) {
    return bad(fmt::format("The request body must be an object with a \"{}\" array", array));
  }
  const json& items = body[array];
  if (items.size() > options_.max_records_per_request) {
    return bad(fmt::format("At most {} {} per request, got {}", options_.max_records_per_request,
                           array, items.size()));
  }
  if (items.empty() && options_.reject_empty_bulk) {
    return bad(fmt::format("\"{}\" must not be empty", array));
  }
  const char* what = events ? "event" : "user";
  for (size_t i = 0; i < items.size(); ++i) {
    const json& item = items[i];
    if (!item.is_object()) return bad(fmt::format("{}[{}] must be an object", array, i));
    for (const char* key : {"email", "userId"}) {
      auto it = item.find(key);
      if (it != item.end() && !it->is_null() && !it->is_string()) {
        return bad(fmt::format("{}[{}].{} must be a string", array, i, key));
      }
    }
    if (StringOr(item, "email").empty() && StringOr(item, "userId").empty()) {
      return bad(fmt::format("Each {} must have an email or userId ({}[{}])", what, array, i));
    }
    if (!events) continue;
    if (StringOr(item, "eventName").empty()) {
      return bad(fmt::format("{}[{}].eventName is required", array, i));
    }
    for (const char* key : {"createdAt", "campaignId", "templateId"}) {
      auto it = item.find(key);
      if (it != item.end() && !it->is_null() && !it->is_number_integer()) {
        return bad(fmt::format("{}[{}].{} must be an integer", array, i, key));
      }
    }
    if (auto it = item.find("id"); it != item.end() && !it->is_null() && !it->is_string()) {
      return bad(fmt::format("{}[{}].id must be a string", array, i));
    }
    if (auto it = item.find("dataFields"); it != item.end() && !it->is_null() && !it->is_object()) {
      return bad(fmt::format("{}[{}].dataFields must be an object", array, i));
    }
  }
  for (const json& item : items) {
    std::string email = Lower(StringOr(item, "email"));
    if (!email.empty() && rejected_emails_.count(email)) {
      return bad(fmt::format("The request was rejected because of {}", StringOr(item, "email")));
    }
  }
  return std::nullopt;
}

FakeIterableServer::Outcome FakeIterableServer::ProcessBulkUpdate(const json& body) {
  if (std::optional<Outcome> bad = CheckRecords(body, "users", false)) return *bad;
  const json& users = body["users"];
  const bool create_new = BoolOr(body, "createNewFields", options_.create_new_fields_default);
  if (options_.reject_type_mismatch) {
    json errors = json::object();
    for (const json& u : users) {
      auto data = u.find("dataFields");
      if (data == u.end() || !data->is_object()) continue;
      for (const auto& [k, v] : data->items()) {
        auto it = user_schema_.find(k);
        if (it == user_schema_.end() || Compatible(it->second, TypeOf(v))) continue;
        errors[k] = {{"incomingTypes", {TypeOf(v)}},
                     {"expectedType", it->second},
                     {"category", "user"},
                     {"offendingValue", v},
                     {"_type", "UnexpectedType"}};
      }
    }
    if (!errors.empty()) {
      json reply = Envelope("RequestFieldsTypesMismatched",
                            "The request does not have the same data types as the project");
      reply["params"] = {{"validationErrors", errors}};
      return {400, reply};
    }
  }
  json lists = json::object();
  for (const char* name : {"invalidEmails", "invalidUserIds", "notFoundEmails", "notFoundUserIds",
                           "forgottenEmails", "forgottenUserIds", "conflictEmails",
                           "conflictUserIds", "invalidDataEmails", "invalidDataUserIds"}) {
    lists[name] = json::array();
  }
  int64_t success = 0, fail = 0;
  std::set<std::string> dropped, created;
  for (const json& u : users) {
    const std::string email = StringOr(u, "email");
    const std::string user_id = StringOr(u, "userId");
    auto fail_as = [&](const char* email_list, const char* id_list) {
      if (!email.empty()) {
        lists[email_list].push_back(email);
      } else {
        lists[id_list].push_back(user_id);
      }
      ++fail;
    };
    if (!email.empty() && !ValidEmail(email)) {
      lists["invalidEmails"].push_back(email);
      ++fail;
      continue;
    }
    if (!user_id.empty() && HasControl(user_id)) {
      lists["invalidUserIds"].push_back(user_id);
      ++fail;
      continue;
    }
    if (!email.empty() && forgotten_emails_.count(Lower(email))) {
      lists["forgottenEmails"].push_back(email);
      ++fail;
      continue;
    }
    if (!user_id.empty() && forgotten_user_ids_.count(user_id)) {
      lists["forgottenUserIds"].push_back(user_id);
      ++fail;
      continue;
    }
    json data = json::object();
    if (auto it = u.find("dataFields"); it != u.end() && !it->is_null()) {
      if (!it->is_object()) {
        fail_as("invalidDataEmails", "invalidDataUserIds");
        continue;
      }
      data = *it;
    }
    User* user = nullptr;
    Resolution r =
        ResolveLocked(email, user_id, /*create=*/true, BoolOr(u, "preferUserId", false), &user);
    if (r == Resolution::kConflict) {
      if (!email.empty()) lists["conflictEmails"].push_back(email);
      if (!user_id.empty()) lists["conflictUserIds"].push_back(user_id);
      ++fail;
      continue;
    }
    if (r == Resolution::kNotFound) {
      fail_as("notFoundEmails", "notFoundUserIds");
      continue;
    }
    MergeFieldsLocked(user_schema_, data, create_new, BoolOr(u, "mergeNestedObjects", false),
                      &user->data_fields, dropped, created);
    ++success;
  }
  return {200, json{{"successCount", success},
                    {"failCount", fail},
                    {"filteredOutFields", SetToArray(dropped)},
                    {"createdFields", SetToArray(created)},
                    {"failedUpdates", lists}}};
}

FakeIterableServer::Outcome FakeIterableServer::ProcessTrackBulk(const json& body) {
  if (std::optional<Outcome> bad = CheckRecords(body, "events", true)) return *bad;
  const json& events = body["events"];
  if (options_.reject_type_mismatch) {
    json errors = json::object();
    for (const json& e : events) {
      auto data = e.find("dataFields");
      if (data == e.end() || !data->is_object()) continue;
      const auto& schema = event_schemas_[StringOr(e, "eventName")];
      for (const auto& [k, v] : data->items()) {
        auto it = schema.find(k);
        if (it == schema.end() || Compatible(it->second, TypeOf(v))) continue;
        errors[k] = {{"incomingTypes", {TypeOf(v)}},
                     {"expectedType", it->second},
                     {"category", "event"},
                     {"offendingValue", v},
                     {"_type", "UnexpectedType"}};
      }
    }
    if (!errors.empty()) {
      json reply = Envelope("RequestFieldsTypesMismatched",
                            "The request does not have the same data types as the project");
      reply["params"] = {{"validationErrors", errors}};
      return {400, reply};
    }
  }
  json lists = json::object();
  for (const char* name : {"invalidEmails", "invalidUserIds", "notFoundEmails", "notFoundUserIds",
                           "forgottenEmails", "forgottenUserIds"}) {
    lists[name] = json::array();
  }
  int64_t success = 0, fail = 0;
  std::set<std::string> disallowed, dropped, created;
  for (const json& e : events) {
    const std::string name = StringOr(e, "eventName");
    const std::string email = StringOr(e, "email");
    const std::string user_id = StringOr(e, "userId");
    auto fail_in = [&](const char* list, const std::string& value) {
      lists[list].push_back(value);
      ++fail;
    };
    if (options_.disallowed_event_names.count(name)) {
      disallowed.insert(name);
      ++fail;
      continue;
    }
    if (!email.empty() && !ValidEmail(email)) {
      fail_in("invalidEmails", email);
      continue;
    }
    if (!user_id.empty() && HasControl(user_id)) {
      fail_in("invalidUserIds", user_id);
      continue;
    }
    if (!email.empty() && forgotten_emails_.count(Lower(email))) {
      fail_in("forgottenEmails", email);
      continue;
    }
    if (!user_id.empty() && forgotten_user_ids_.count(user_id)) {
      fail_in("forgottenUserIds", user_id);
      continue;
    }
    User* user = nullptr;
    Resolution r = ResolveLocked(email, user_id, /*create=*/true, /*prefer_user_id=*/false, &user);
    if (r == Resolution::kConflict) {
      // The event goes to the user of the email.
      r = ResolveLocked(email, "", true, false, &user);
    }
    if (r != Resolution::kFound) {
      if (!email.empty()) {
        fail_in("notFoundEmails", email);
      } else {
        fail_in("notFoundUserIds", user_id);
      }
      continue;
    }
    FakeIterableEvent event;
    event.id = StringOr(e, "id");
    event.event_name = name;
    event.email = user->email;
    event.user_id = user->user_id;
    if (auto it = e.find("createdAt"); it != e.end() && it->is_number_integer()) {
      event.created_at = it->get<int64_t>();
    }
    event.object = e;
    json data =
        e.contains("dataFields") && e["dataFields"].is_object() ? e["dataFields"] : json::object();
    MergeFieldsLocked(event_schemas_[name], data, options_.create_new_fields_default, false,
                      &event.data_fields, dropped, created);
    auto same = event.id.empty()
                    ? events_.end()
                    : std::find_if(events_.begin(), events_.end(),
                                   [&](const FakeIterableEvent& x) { return x.id == event.id; });
    if (same != events_.end()) {
      *same = std::move(event);
      ++overwrites_;
    } else {
      events_.push_back(std::move(event));
    }
    ++success;
  }
  return {200, json{{"successCount", success},
                    {"failCount", fail},
                    {"disallowedEventNames", SetToArray(disallowed)},
                    {"filteredOutFields", SetToArray(dropped)},
                    {"createdFields", SetToArray(created)},
                    {"failedUpdates", lists}}};
}

FakeIterableServer::Outcome FakeIterableServer::ProcessDelete(const std::string& path) {
  const bool by_id = path.starts_with(kByUserIdPrefix);
  const std::string id =
      PercentDecode(path.substr(std::string(by_id ? kByUserIdPrefix : kUsersPrefix).size()), false);
  User* u = by_id ? FindByUserIdLocked(id) : FindByEmailLocked(id);
  if (u == nullptr) {
    return {options_.missing_user_delete_status,
            Envelope("error.users.noUserWithIdExists",
                     fmt::format("No user exists with {} {}", by_id ? "userId" : "email", id))};
  }
  deleted_.push_back(fmt::format("{}:{}", by_id ? "userId" : "email", id));
  users_.remove_if([&](const User& x) { return &x == u; });
  return {200, Envelope("Success", "User deleted")};
}

TestResponse FakeIterableServer::Handle(const TestRequest& req) {
  std::lock_guard<std::mutex> lock(mu_);
  auto reply = [&](int status, const json& body, bool reset = false,
                   std::chrono::milliseconds delay = std::chrono::milliseconds(0)) {
    TestResponse r = TestResponse::Json(status, body.dump());
    r.reset_connection = reset;
    r.delay = delay;
    Record(req, reset ? 0 : status, r.body);
    return r;
  };

  const std::string path = req.target.substr(0, req.target.find('?'));
  std::optional<Endpoint> endpoint;
  if (req.method == "POST" && path == kBulkUpdatePath) {
    endpoint = Endpoint::kBulkUpdate;
  } else if (req.method == "POST" && path == kTrackBulkPath) {
    endpoint = Endpoint::kTrackBulk;
  } else if (req.method == "GET" && path == kGetFieldsPath) {
    endpoint = Endpoint::kGetFields;
  } else if (req.method == "DELETE" && path.starts_with(kUsersPrefix) &&
             path.size() > sizeof(kUsersPrefix) - 1 &&
             path.find('/', sizeof(kUsersPrefix) - 1) == std::string::npos) {
    endpoint = Endpoint::kDelete;
  } else if (req.method == "DELETE" && path.starts_with(kByUserIdPrefix) &&
             path.size() > sizeof(kByUserIdPrefix) - 1 &&
             path.find('/', sizeof(kByUserIdPrefix) - 1) == std::string::npos) {
    endpoint = Endpoint::kDelete;
  }
  if (!endpoint) {
    // Not an API route: the ingress answers, not the API (no envelope).
    TestResponse r;
    r.status = 404;
    r.body = "Not Found";
    r.headers.emplace_back("Content-Type", "text/plain");
    Record(req, 404, r.body);
    return r;
  }

  // Auth.
  const std::string key = req.Header("api-key").value_or("");
  auto known = options_.api_keys.find(key);
  if (key.empty() || known == options_.api_keys.end()) {
    ++unauthorized_;
    return reply(401, Envelope("BadApiKey", "Invalid API key"));
  }
  const IterableKeyType type = known->second;
  const bool allowed = type == IterableKeyType::kServerSide ||
                       (type == IterableKeyType::kReadOnly && *endpoint == Endpoint::kGetFields);
  if (!allowed) {
    return reply(403, Envelope("Forbidden", fmt::format("{} API keys cannot call {} {}",
                                                        KeyTypeName(type), req.method, path)));
  }

  // Rate limit: one-second windows per key and endpoint.
  int64_t limit = 1'000'000;
  if (*endpoint == Endpoint::kBulkUpdate) limit = options_.bulk_update_per_second;
  if (*endpoint == Endpoint::kTrackBulk) limit = options_.track_bulk_per_second;
  if (*endpoint == Endpoint::kDelete) limit = options_.delete_per_second;
  const int64_t index = static_cast<int64_t>(std::floor(ToUnixSeconds(options_.clock->Now())));
  Window& w = windows_[key + " " + EndpointName(*endpoint)];
  if (w.index != index) w = Window{index, 0};
  if (w.count >= limit) {
    ++rate_limited_;
    return reply(429, Envelope("RateLimitExceeded", "Rate limit exceeded"));
  }
  ++w.count;

  std::optional<FakeIterableReply> scripted;
  for (auto it = script_.begin(); it != script_.end(); ++it) {
    if (it->path.empty() || it->path == path) {
      scripted = std::move(*it);
      script_.erase(it);
      break;
    }
  }
  auto scripted_reply = [&]() {
    json body =
        scripted->body.empty()
            ? Envelope(scripted->code.empty() ? DefaultCode(scripted->status) : scripted->code,
                       scripted->msg)
            : json();
    TestResponse r =
        TestResponse::Json(scripted->status, scripted->body.empty() ? body.dump() : scripted->body);
    for (const auto& h : scripted->headers) r.headers.push_back(h);
    r.delay = scripted->delay;
    r.reset_connection = scripted->reset_connection;
    Record(req, r.reset_connection ? 0 : r.status, r.body);
    return r;
  };
  if (scripted && !scripted->apply) return scripted_reply();

  Outcome outcome;
  if (*endpoint == Endpoint::kDelete) {
    outcome = ProcessDelete(path);
  } else if (*endpoint == Endpoint::kGetFields) {
    json fields = json::object();
    for (const auto& [k, t] : user_schema_) fields[k] = t;
    outcome = {200, json{{"fields", fields}}};
  } else {
    const std::string content_type = Lower(req.Header("content-type").value_or(""));
    json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (!content_type.starts_with("application/json")) {
      outcome = {400, Envelope("BadJsonBody", "Content-Type must be application/json")};
    } else if (req.body.size() > options_.max_body_bytes) {
      outcome = {413, Envelope("BadParams", fmt::format("Request body of {} bytes is over {}",
                                                        req.body.size(), options_.max_body_bytes))};
    } else if (body.is_discarded()) {
      outcome = {400, Envelope("BadJsonBody", "Could not parse the request body as JSON")};
    } else if (*endpoint == Endpoint::kBulkUpdate) {
      outcome = ProcessBulkUpdate(body);
    } else {
      outcome = ProcessTrackBulk(body);
    }
  }
  if (scripted && scripted->status != 0) return scripted_reply();
  return reply(outcome.status, outcome.body, scripted && scripted->reset_connection,
               scripted ? scripted->delay : std::chrono::milliseconds(0));
}

}  // namespace backflow
