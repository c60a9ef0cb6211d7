#include "backflow/destinations/hubspot/fake_hubspot_server.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "fmt/format.h"
#include "fmt/ranges.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kObjectsPrefix[] = "/crm/v3/objects/";
constexpr int64_t kSecondsPerDay = 86'400;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool LooksLikeEmail(const std::string& v) {
  size_t at = v.find('@');
  if (at == std::string::npos || at == 0 || v.find('@', at + 1) != std::string::npos) return false;
  std::string domain = v.substr(at + 1);
  if (domain.empty() || domain.front() == '.' || domain.back() == '.') return false;
  if (domain.find('.') == std::string::npos) return false;
  return v.find_first_of(" \t\r\n,;<>") == std::string::npos;
}

std::string QueryParam(const std::string& query, const std::string& name) {
  size_t pos = 0;
  while (pos < query.size()) {
    size_t amp = query.find('&', pos);
    if (amp == std::string::npos) amp = query.size();
    std::string pair = query.substr(pos, amp - pos);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string::npos ? "" : pair.substr(eq + 1);
    pos = amp + 1;
  }
  return "";
}

json RateLimitBody(const std::string& policy, const std::string& correlation) {
  std::string lower = Lower(policy);
  return json{{"status", "error"},
              {"message", fmt::format("You have reached your {} limit.", lower)},
              {"errorType", "RATE_LIMIT"},
              {"correlationId", correlation},
              {"policyName", policy}};
}

}  // namespace

std::map<std::string, HubSpotObjectSchema> DefaultHubSpotSchemas() {
  std::map<std::string, HubSpotObjectSchema> out;
  HubSpotObjectSchema contacts;
  contacts.label = "CONTACT";
  contacts.scope = "crm.objects.contacts";
  contacts.properties = {"email",   "firstname", "lastname", "phone",          "company",
                         "website", "jobtitle",  "city",     "lifecyclestage", "country"};
  contacts.unique_properties = {"email"};
  contacts.options["lifecyclestage"] = {
      "subscriber",         "lead",        "marketingqualifiedlead",
      "salesqualifiedlead", "opportunity", "customer",
      "evangelist",         "other"};
  contacts.email_properties = {"email"};
  out["contacts"] = contacts;

  HubSpotObjectSchema companies;
  companies.label = "COMPANY";
  companies.scope = "crm.objects.companies";
  companies.properties = {"name", "domain",  "industry",          "phone",
                          "city", "country", "numberofemployees", "annualrevenue"};
  out["companies"] = companies;

  HubSpotObjectSchema deals;
  deals.label = "DEAL";
  deals.scope = "crm.objects.deals";
  deals.properties = {"dealname", "amount", "dealstage", "pipeline", "closedate"};
  deals.options["pipeline"] = {"default"};
  deals.options["dealstage"] = {"appointmentscheduled",
                                "qualifiedtobuy",
                                "presentationscheduled",
                                "decisionmakerboughtin",
                                "contractsent",
                                "closedwon",
                                "closedlost"};
  out["deals"] = deals;
  return out;
}

FakeHubSpotReply FakeHubSpotReply::Status(int status, std::string body) {
  FakeHubSpotReply r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

FakeHubSpotReply FakeHubSpotReply::DailyLimit() {
  return Status(429, RateLimitBody("DAILY", "injected-daily").dump());
}

FakeHubSpotReply FakeHubSpotReply::TenSecondlyLimit() {
  return Status(429, RateLimitBody("TEN_SECONDLY_ROLLING", "injected-ten-secondly").dump());
}

FakeHubSpotReply FakeHubSpotReply::WithRetryAfter(int status, std::string retry_after) {
  FakeHubSpotReply r = Status(status);
  r.headers.emplace_back("Retry-After", std::move(retry_after));
  return r;
}

FakeHubSpotReply FakeHubSpotReply::Slow(std::chrono::milliseconds delay) {
  FakeHubSpotReply r;
  r.delay = delay;
  return r;
}

FakeHubSpotReply FakeHubSpotReply::Reset() {
  FakeHubSpotReply r;
  r.reset_connection = true;
  return r;
}

FakeHubSpotServer::FakeHubSpotServer(FakeHubSpotOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {
  if (options_.clock == nullptr) options_.clock = &SystemClock();
}

FakeHubSpotServer::~FakeHubSpotServer() { Stop(); }

absl::Status FakeHubSpotServer::Start() { return server_.Start(); }

void FakeHubSpotServer::Stop() { server_.Stop(); }

std::string FakeHubSpotServer::BaseUrl() const {
  std::string url = server_.Url("/");
  url.pop_back();
  return url;
}

void FakeHubSpotServer::AddSchema(const std::string& name, HubSpotObjectSchema schema,
                                  const std::string& alias) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.schemas[name] = std::move(schema);
  if (!alias.empty()) options_.aliases[alias] = name;
}

void FakeHubSpotServer::AddProperty(const std::string& type, const std::string& property,
                                    bool unique) {
  std::lock_guard<std::mutex> lock(mu_);
  HubSpotObjectSchema& schema = options_.schemas[Canonical(type)];
  schema.properties.insert(property);
  if (unique) schema.unique_properties.insert(property);
}

void FakeHubSpotServer::SetValidationMode(HubSpotValidationMode mode) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.validation = mode;
}

std::string FakeHubSpotServer::Seed(const std::string& type,
                                    const std::map<std::string, std::string>& properties) {
  std::lock_guard<std::mutex> lock(mu_);
  Record r;
  int64_t id = next_id_++;
  r.id = std::to_string(id);
  r.properties = properties;
  r.created = r.updated = options_.clock->Now();
  records_[Canonical(type)][id] = r;
  return r.id;
}

void FakeHubSpotServer::Enqueue(FakeHubSpotReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

void FakeHubSpotServer::EnqueueN(int count, const FakeHubSpotReply& reply) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < count; ++i) script_.push_back(reply);
}

std::vector<FakeHubSpotRecord> FakeHubSpotServer::Records(const std::string& type,
                                                          bool archived) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FakeHubSpotRecord> out;
  auto it = records_.find(Canonical(type));
  if (it == records_.end()) return out;
  for (const auto& [id, r] : it->second) {
    if (r.archived != archived) continue;
    out.push_back({r.id, r.properties, r.archived});
  }
  return out;
}

std::optional<FakeHubSpotRecord> FakeHubSpotServer::Find(const std::string& type,
                                                         const std::string& property,
                                                         const std::string& value) const {
  for (const FakeHubSpotRecord& r : Records(type)) {
    auto p = r.properties.find(property);
    if (p != r.properties.end() && p->second == value) return r;
  }
  return std::nullopt;
}

std::vector<FakeHubSpotRequest> FakeHubSpotServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeHubSpotServer::request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(requests_.size());
}

int64_t FakeHubSpotServer::CountOperation(const std::string& operation) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(),
                       [&](const FakeHubSpotRequest& r) { return r.operation == operation; });
}

int64_t FakeHubSpotServer::CountStatus(int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(),
                       [&](const FakeHubSpotRequest& r) { return r.status == status; });
}

int64_t FakeHubSpotServer::MaxRequestsInWindow(std::chrono::milliseconds window) const {
  std::vector<Clock::TimePoint> times;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const FakeHubSpotRequest& r : requests_) {
      if (r.status != 429) times.push_back(r.time);
    }
  }
  std::sort(times.begin(), times.end());
  int64_t best = 0;
  size_t first = 0;
  for (size_t i = 0; i < times.size(); ++i) {
    while (times[i] - times[first] >= window) ++first;
    best = std::max<int64_t>(best, static_cast<int64_t>(i - first + 1));
  }
  return best;
}

void FakeHubSpotServer::ClearRequests() {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.clear();
}

std::string FakeHubSpotServer::Canonical(const std::string& type) const {
  auto alias = options_.aliases.find(type);
  if (alias != options_.aliases.end()) return alias->second;
  return type;
}

std::string FakeHubSpotServer::NextCorrelationId() {
  ++correlation_;
  return fmt::format("{:08x}-fake-4000-8000-{:012x}", correlation_, correlation_ * 7919);
}

json FakeHubSpotServer::ErrorBody(const std::string& category, const std::string& message) const {
  return json{{"status", "error"},
              {"message", message},
              {"correlationId", fmt::format("fake-{}", correlation_)},
              {"category", category}};
}

void FakeHubSpotServer::PruneWindow(Clock::TimePoint now) {
  while (!window_.empty() && now - window_.front() >= options_.ten_secondly_window) {
    window_.pop_front();
  }
  int64_t day = static_cast<int64_t>(ToUnixSeconds(now)) / kSecondsPerDay;
  if (day != day_) {
    day_ = day;
    day_count_ = 0;
  }
}

TestHeaders FakeHubSpotServer::RateLimitHeaders(Clock::TimePoint) const {
  TestHeaders h;
  h.emplace_back("X-HubSpot-RateLimit-Max", std::to_string(options_.ten_secondly_limit));
  h.emplace_back("X-HubSpot-RateLimit-Remaining",
                 std::to_string(std::max<int64_t>(
                     0, options_.ten_secondly_limit - static_cast<int64_t>(window_.size()))));
  h.emplace_back("X-HubSpot-RateLimit-Interval-Milliseconds",
                 std::to_string(options_.ten_secondly_window.count()));
  h.emplace_back("X-HubSpot-RateLimit-Daily", std::to_string(options_.daily_limit));
  h.emplace_back("X-HubSpot-RateLimit-Daily-Remaining",
                 std::to_string(std::max<int64_t>(0, options_.daily_limit - day_count_)));
  return h;
}

TestResponse FakeHubSpotServer::Handle(const TestRequest& req) {
  std::lock_guard<std::mutex> lock(mu_);
  const Clock::TimePoint now = options_.clock->Now();
  FakeHubSpotRequest log;
  log.sequence = static_cast<int64_t>(requests_.size()) + 1;
  log.method = req.method;
  log.target = req.target;
  log.body = req.body;
  log.authorization = req.Header("authorization").value_or("");
  log.time = now;

  auto finish = [&](int status, const json& body, TestHeaders extra = {},
                    std::chrono::milliseconds delay = std::chrono::milliseconds(0)) {
    TestResponse r;
    r.status = status;
    r.delay = delay;
    if (status != 204) {
      r.headers.emplace_back("Content-Type", "application/json;charset=utf-8");
      r.body = body.is_null() ? std::string() : body.dump();
    }
    for (auto& h : RateLimitHeaders(now)) r.headers.push_back(std::move(h));
    for (auto& h : extra) r.headers.push_back(std::move(h));
    log.status = status;
    requests_.push_back(log);
    return r;
  };

  // Authentication.
  std::set<std::string> scopes;
  {
    const std::string& auth = log.authorization;
    bool known = false;
    if (auth.starts_with("Bearer ")) {
      auto it = options_.tokens.find(auth.substr(7));
      if (it != options_.tokens.end()) {
        known = true;
        scopes = it->second;
      }
    }
    if (!known) {
      NextCorrelationId();
      return finish(401,
                    ErrorBody("INVALID_AUTHENTICATION",
                              "Authentication credentials not found. This API supports OAuth 2.0 "
                              "authentication and you can find more details at "
                              "https://developers.hubspot.com/docs/methods/auth/oauth-overview"));
    }
  }

  std::string path = req.target;
  std::string query;
  if (size_t q = path.find('?'); q != std::string::npos) {
    query = path.substr(q + 1);
    path.resize(q);
  }

  std::chrono::milliseconds delay{0};
  if (!script_.empty()) {
    FakeHubSpotReply scripted = std::move(script_.front());
    script_.pop_front();
    if (scripted.reset_connection) {
      log.status = 0;
      requests_.push_back(log);
      TestResponse r = TestResponse::Reset();
      r.delay = scripted.delay;
      return r;
    }
    if (scripted.status != 0) {
      TestResponse r;
      r.status = scripted.status;
      r.delay = scripted.delay;
      r.body = scripted.body;
      if (!r.body.empty()) r.headers.emplace_back("Content-Type", "application/json;charset=utf-8");
      for (auto& h : RateLimitHeaders(now)) r.headers.push_back(std::move(h));
      for (auto& h : scripted.headers) r.headers.push_back(std::move(h));
      log.status = scripted.status;
      requests_.push_back(log);
      return r;
    }
    delay = scripted.delay;
  }

  // Account rate limits.
  PruneWindow(now);
  if (day_count_ >= options_.daily_limit) {
    return finish(429, RateLimitBody("DAILY", NextCorrelationId()), {}, delay);
  }
  if (static_cast<int64_t>(window_.size()) >= options_.ten_secondly_limit) {
    return finish(429, RateLimitBody("TEN_SECONDLY_ROLLING", NextCorrelationId()), {}, delay);
  }
  window_.push_back(now);
  ++day_count_;
  NextCorrelationId();

  json body;
  if (req.method == "POST") {
    std::string type = req.Header("content-type").value_or("");
    if (Lower(type).find("application/json") == std::string::npos) {
      return finish(415,
                    ErrorBody("VALIDATION_ERROR",
                              "Unsupported Media Type: send Content-Type: application/json"),
                    {}, delay);
    }
    body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) {
      return finish(400, ErrorBody("VALIDATION_ERROR", "Invalid input JSON on line 1"), {}, delay);
    }
  }
  Reply reply = Route(req.method, path, query, body, scopes, log);
  return finish(reply.status, reply.body, {}, delay);
}

FakeHubSpotServer::Reply FakeHubSpotServer::Route(const std::string& method,
                                                  const std::string& path, const std::string& query,
                                                  const json& body,
                                                  const std::set<std::string>& scopes,
                                                  FakeHubSpotRequest& log) {
  if (!path.starts_with(kObjectsPrefix)) {
    return {404, ErrorBody("OBJECT_NOT_FOUND", "Not Found: " + path)};
  }
  std::string rest = path.substr(sizeof(kObjectsPrefix) - 1);
  std::vector<std::string> parts;
  for (size_t pos = 0; pos <= rest.size();) {
    size_t slash = rest.find('/', pos);
    if (slash == std::string::npos) slash = rest.size();
    parts.push_back(rest.substr(pos, slash - pos));
    pos = slash + 1;
  }
  std::string type = Canonical(parts[0]);
  auto schema = options_.schemas.find(type);
  if (schema == options_.schemas.end()) {
    return {400, ErrorBody("VALIDATION_ERROR", "Unable to infer object type from: " + parts[0])};
  }
  log.object_type = type;
  std::string operation;
  if (parts.size() == 1 && method == "GET") {
    operation = "list";
  } else if (parts.size() == 3 && parts[1] == "batch" && method == "POST") {
    operation = parts[2];
  }
  if (operation != "list" && operation != "upsert" && operation != "update" &&
      operation != "read" && operation != "archive") {
    return {404, ErrorBody("OBJECT_NOT_FOUND", "Not Found: " + method + " " + path)};
  }
  log.operation = operation;
  if (body.is_object() && body.contains("inputs") && body["inputs"].is_array()) {
    log.inputs = static_cast<int>(body["inputs"].size());
  }
  bool write = operation != "list" && operation != "read";
  std::string needed = schema->second.scope + (write ? ".write" : ".read");
  if (!scopes.count("*") && !scopes.count(needed)) {
    json err = ErrorBody("MISSING_SCOPES",
                         "This app hasn't been granted all required scopes to make this call. "
                         "Read more about required scopes here: https://developers.hubspot.com/"
                         "scopes.");
    err["errors"] = json::array({{{"message", "One or more of the following scopes are required."},
                                  {"context", {{"requiredGranularScopes", {needed}}}}}});
    err["context"] = {{"missingScopes", {needed}}};
    return {403, err};
  }
  if (operation == "list") return List(type, query);
  if (operation == "read") return Read(type, body);
  if (operation == "archive") return Archive(type, body);
  return Upsert(type, body, operation == "update");
}

FakeHubSpotServer::Record* FakeHubSpotServer::FindLive(const std::string& type,
                                                       const std::string& property,
                                                       const std::string& value) {
  auto& table = records_[type];
  const HubSpotObjectSchema& schema = options_.schemas[type];
  bool fold = schema.email_properties.count(property) > 0;
  if (property == "hs_object_id") {
    int64_t id = 0;
    try {
      size_t used = 0;
      id = std::stoll(value, &used);
      if (used != value.size()) return nullptr;
    } catch (...) {
      return nullptr;
    }
    auto it = table.find(id);
    return it == table.end() || it->second.archived ? nullptr : &it->second;
  }
  for (auto& [id, r] : table) {
    if (r.archived) continue;
    auto p = r.properties.find(property);
    if (p == r.properties.end()) continue;
    if (fold ? Lower(p->second) == Lower(value) : p->second == value) return &r;
  }
  return nullptr;
}

std::vector<FakeHubSpotServer::InputError> FakeHubSpotServer::ValidateProperties(
    const std::string& type, const json& properties, const Record* target) {
  std::vector<InputError> errors;
  const HubSpotObjectSchema& schema = options_.schemas[type];
  static const std::set<std::string> kReadOnly = {"hs_object_id", "createdate", "lastmodifieddate",
                                                  "hs_lastmodifieddate"};
  for (const auto& [name, value] : properties.items()) {
    if (kReadOnly.count(name)) {
      errors.push_back(
          {"READ_ONLY_VALUE", name,
           fmt::format("\"{}\" is a read only property; its value cannot be set.", name)});
      continue;
    }
    if (options_.strict_properties && !schema.properties.count(name)) {
      errors.push_back(
          {"PROPERTY_DOESNT_EXIST", name, fmt::format("Property \"{}\" does not exist", name)});
      continue;
    }
    if (!value.is_string() && !value.is_number() && !value.is_boolean()) {
      errors.push_back({"INVALID_PROPERTY_VALUE", name,
                        fmt::format("{} is not a valid value for property {}; send text, a "
                                    "number or a boolean (\"\" clears it)",
                                    value.dump(), name)});
      continue;
    }
    std::string text = value.is_string() ? value.get<std::string>() : value.dump();
    if (text.empty()) continue;  // clears the property
    if (schema.email_properties.count(name) && !LooksLikeEmail(text)) {
      errors.push_back({"INVALID_EMAIL", name, fmt::format("Email address {} is invalid", text)});
      continue;
    }
    auto opts = schema.options.find(name);
    if (opts != schema.options.end() && !opts->second.count(text)) {
      std::vector<std::string> allowed(opts->second.begin(), opts->second.end());
      errors.push_back({"INVALID_OPTION", name,
                        fmt::format("{} was not one of the allowed options: [{}]", text,
                                    fmt::format("{}", fmt::join(allowed, ", ")))});
      continue;
    }
    if (schema.unique_properties.count(name)) {
      Record* holder = FindLive(type, name, text);
      if (holder != nullptr && holder != target) {
        errors.push_back({"CONFLICTING_UNIQUE_VALUE", name,
                          fmt::format("A {} with {} \"{}\" already exists (id {})", schema.label,
                                      name, text, holder->id)});
      }
    }
  }
  return errors;
}

json FakeHubSpotServer::RecordJson(const Record& r, const std::set<std::string>* only) const {
  json props = json::object();
  for (const auto& [k, v] : r.properties) {
    if (only == nullptr || only->count(k)) props[k] = v;
  }
  props["hs_object_id"] = r.id;
  props["createdate"] = FormatIso8601(r.created);
  props["lastmodifieddate"] = FormatIso8601(r.updated);
  return json{{"id", r.id},
              {"properties", props},
              {"createdAt", FormatIso8601(r.created)},
              {"updatedAt", FormatIso8601(r.updated)},
              {"archived", r.archived}};
}

FakeHubSpotServer::Reply FakeHubSpotServer::Upsert(const std::string& type, const json& body,
                                                   bool update) {
  const HubSpotObjectSchema& schema = options_.schemas[type];
  if (!body.is_object() || !body.contains("inputs") || !body["inputs"].is_array()) {
    return {400, ErrorBody("VALIDATION_ERROR", "Invalid input JSON: \"inputs\" is required")};
  }
  const json& inputs = body["inputs"];
  if (static_cast<int>(inputs.size()) > options_.max_inputs) {
    return {400, ErrorBody("VALIDATION_ERROR",
                           fmt::format("Batch input size {} exceeds the limit of {} inputs",
                                       inputs.size(), options_.max_inputs))};
  }
  // Structural checks: the whole batch fails.
  std::set<std::string> seen;
  std::vector<std::string> duplicates;
  for (const json& in : inputs) {
    if (!in.is_object() || !in.contains("id") || !in["id"].is_string() ||
        in["id"].get<std::string>().empty()) {
      return {400, ErrorBody("VALIDATION_ERROR",
                             "Invalid input JSON: every input needs a non-empty string \"id\"")};
    }
    if (!in.contains("properties") || !in["properties"].is_object()) {
      return {400, ErrorBody("VALIDATION_ERROR",
                             "Invalid input JSON: every input needs a \"properties\" object")};
    }
    std::string id_property;
    if (in.contains("idProperty")) {
      if (!in["idProperty"].is_string()) {
        return {400, ErrorBody("VALIDATION_ERROR", "Invalid input JSON: idProperty must be text")};
      }
      id_property = in["idProperty"].get<std::string>();
    } else if (!update) {
      return {400, ErrorBody("VALIDATION_ERROR",
                             "Invalid input JSON: upsert inputs need \"idProperty\"")};
    }
    if (!id_property.empty() && !schema.unique_properties.count(id_property)) {
      return {400, ErrorBody("VALIDATION_ERROR",
                             fmt::format("{} is not a unique property of {}; idProperty must be a "
                                         "property with unique values",
                                         id_property, schema.label))};
    }
    std::string id = in["id"].get<std::string>();
    std::string key =
        id_property + "\x1f" + (schema.email_properties.count(id_property) ? Lower(id) : id);
    if (!seen.insert(key).second) duplicates.push_back(id);
  }
  if (!duplicates.empty()) {
    return {400, ErrorBody("VALIDATION_ERROR",
                           fmt::format("Duplicate IDs found in batch input: [{}]. IDs must be "
                                       "unique",
                                       fmt::format("{}", fmt::join(duplicates, ", "))))};
  }

  const bool whole = options_.validation == HubSpotValidationMode::kWholeBatch;
  const Clock::TimePoint now = options_.clock->Now();
  json results = json::array();
  json errors = json::array();
  json whole_errors = json::array();
  // In whole-batch mode nothing is applied unless every input is valid, so
  // the inputs are checked first and applied in a second pass.
  std::set<std::string> batch_unique;  // unique values claimed earlier in this batch
  for (int pass = whole ? 0 : 1; pass < 2; ++pass) {
    batch_unique.clear();
    for (const json& in : inputs) {
      std::string id = in["id"].get<std::string>();
      std::string id_property = in.value("idProperty", std::string());
      json properties = in["properties"];
      Record* target = FindLive(type, id_property.empty() ? "hs_object_id" : id_property, id);
      std::vector<InputError> errs;
      std::string category = "VALIDATION_ERROR";
      if (update && target == nullptr) {
        category = "OBJECT_NOT_FOUND";
        errs.push_back({"OBJECT_NOT_FOUND", id_property.empty() ? "id" : id_property,
                        fmt::format("Could not find {} with {} {}", schema.label,
                                    id_property.empty() ? "id" : id_property, id)});
      } else {
        if (!update && !properties.contains(id_property)) properties[id_property] = id;
        errs = ValidateProperties(type, properties, target);
        for (const auto& [name, value] : properties.items()) {
          if (!schema.unique_properties.count(name) || !value.is_string()) continue;
          std::string v = value.get<std::string>();
          if (v.empty()) continue;
          if (schema.email_properties.count(name)) v = Lower(v);
          if (!batch_unique.insert(name + "\x1f" + v).second) {
            errs.push_back({"CONFLICTING_UNIQUE_VALUE", name,
                            fmt::format("Another input in this batch sets {} to \"{}\"", name,
                                        value.get<std::string>())});
          }
        }
      }
      if (!errs.empty()) {
        if (pass == 0) {
          for (const InputError& e : errs) {
            whole_errors.push_back({{"message", e.message},
                                    {"code", e.code},
                                    {"in", e.in},
                                    {"context", json::object()}});
          }
          continue;
        }
        json details = json::array();
        json valid = json::array();
        for (const InputError& e : errs) {
          details.push_back({{"code", e.code}, {"in", e.in}, {"message", e.message}});
          valid.push_back(
              {{"isValid", false}, {"message", e.message}, {"error", e.code}, {"name", e.in}});
        }
        std::string message = category == "OBJECT_NOT_FOUND"
                                  ? errs.front().message
                                  : "Property values were not valid: " + valid.dump();
        errors.push_back({{"status", "error"},
                          {"category", category},
                          {"message", message},
                          {"context", {{"ids", {id}}}},
                          {"errors", details}});
        continue;
      }
      if (pass == 0) continue;
      bool created = false;
      if (target == nullptr) {
        int64_t n = next_id_++;
        Record r;
        r.id = std::to_string(n);
        r.created = now;
        target = &(records_[type][n] = r);
        created = true;
      }
      for (const auto& [name, value] : properties.items()) {
        std::string text = value.is_string() ? value.get<std::string>() : value.dump();
        if (text.empty()) {
          target->properties.erase(name);
        } else {
          target->properties[name] = schema.email_properties.count(name) ? Lower(text) : text;
        }
      }
      target->updated = now;
      json result = RecordJson(*target, nullptr);
      if (!update) result["new"] = created;
      if (in.contains("objectWriteTraceId"))
        result["objectWriteTraceId"] = in["objectWriteTraceId"];
      results.push_back(result);
    }
    if (pass == 0 && !whole_errors.empty()) {
      json err =
          ErrorBody("VALIDATION_ERROR", "Property values were not valid: " + whole_errors.dump());
      err["errors"] = whole_errors;
      err["context"] = json::object();
      return {400, err};
    }
  }
  if (options_.reverse_results) std::reverse(results.begin(), results.end());
  std::string stamp = FormatIso8601(now);
  json out = {{"status", "COMPLETE"},
              {"results", results},
              {"requestedAt", stamp},
              {"startedAt", stamp},
              {"completedAt", stamp}};
  if (!errors.empty()) {
    out["numErrors"] = errors.size();
    out["errors"] = errors;
    return {207, out};
  }
  return {200, out};
}

FakeHubSpotServer::Reply FakeHubSpotServer::Read(const std::string& type, const json& body) {
  const HubSpotObjectSchema& schema = options_.schemas[type];
  if (!body.is_object() || !body.contains("inputs") || !body["inputs"].is_array()) {
    return {400, ErrorBody("VALIDATION_ERROR", "Invalid input JSON: \"inputs\" is required")};
  }
  const json& inputs = body["inputs"];
  int limit = options_.max_inputs;
  if (body.contains("propertiesWithHistory") && body["propertiesWithHistory"].is_array() &&
      !body["propertiesWithHistory"].empty()) {
    limit = std::min(limit, 50);
  }
  if (static_cast<int>(inputs.size()) > limit) {
    return {400, ErrorBody("VALIDATION_ERROR",
                           fmt::format("Batch input size {} exceeds the limit of {} inputs",
                                       inputs.size(), limit))};
  }
  std::string id_property = "hs_object_id";
  if (body.contains("idProperty")) {
    if (!body["idProperty"].is_string()) {
      return {400, ErrorBody("VALIDATION_ERROR", "Invalid input JSON: idProperty must be text")};
    }
    id_property = body["idProperty"].get<std::string>();
    if (!schema.unique_properties.count(id_property)) {
      return {400, ErrorBody("VALIDATION_ERROR", fmt::format("{} is not a unique property of {}",
                                                             id_property, schema.label))};
    }
  }
  std::set<std::string> wanted;
  if (body.contains("properties") && body["properties"].is_array()) {
    for (const json& p : body["properties"]) {
      if (p.is_string()) wanted.insert(p.get<std::string>());
    }
  }
  json results = json::array();
  json missing = json::array();
  std::set<std::string> done;
  for (const json& in : inputs) {
    if (!in.is_object() || !in.contains("id") || !in["id"].is_string()) {
      return {400, ErrorBody("VALIDATION_ERROR",
                             "Invalid input JSON: every input needs a string \"id\"")};
    }
    std::string id = in["id"].get<std::string>();
    if (!done.insert(id).second) continue;
    Record* r = FindLive(type, id_property, id);
    if (r == nullptr) {
      missing.push_back(id);
    } else {
      results.push_back(RecordJson(*r, &wanted));
    }
  }
  if (options_.reverse_results) std::reverse(results.begin(), results.end());
  std::string stamp = FormatIso8601(options_.clock->Now());
  json out = {{"status", "COMPLETE"},
              {"results", results},
              {"requestedAt", stamp},
              {"startedAt", stamp},
              {"completedAt", stamp}};
  if (!missing.empty()) {
    out["numErrors"] = 1;
    out["errors"] = json::array(
        {{{"status", "error"},
          {"category", "OBJECT_NOT_FOUND"},
          {"message", fmt::format("Could not get some {} objects, they may be deleted or not "
                                  "exist. Check that ids are valid.",
                                  schema.label)},
          {"context", {{"ids", missing}}}}});
    return {207, out};
  }
  return {200, out};
}

FakeHubSpotServer::Reply FakeHubSpotServer::Archive(const std::string& type, const json& body) {
  if (!body.is_object() || !body.contains("inputs") || !body["inputs"].is_array()) {
    return {400, ErrorBody("VALIDATION_ERROR", "Invalid input JSON: \"inputs\" is required")};
  }
  const json& inputs = body["inputs"];
  if (static_cast<int>(inputs.size()) > options_.max_inputs) {
    return {400, ErrorBody("VALIDATION_ERROR",
                           fmt::format("Batch input size {} exceeds the limit of {} inputs",
                                       inputs.size(), options_.max_inputs))};
  }
  for (const json& in : inputs) {
    if (!in.is_object() || !in.contains("id") || !in["id"].is_string()) {
      return {400, ErrorBody("VALIDATION_ERROR",
                             "Invalid input JSON: every input needs a string \"id\"")};
    }
  }
  const Clock::TimePoint now = options_.clock->Now();
  for (const json& in : inputs) {
    if (Record* r = FindLive(type, "hs_object_id", in["id"].get<std::string>())) {
      r->archived = true;
      r->updated = now;
    }
  }
  return {204, json()};
}

FakeHubSpotServer::Reply FakeHubSpotServer::List(const std::string& type,
                                                 const std::string& query) {
  int limit = 10;
  std::string text = QueryParam(query, "limit");
  if (!text.empty()) {
    try {
      limit = std::stoi(text);
    } catch (...) {
      return {400, ErrorBody("VALIDATION_ERROR", "limit must be a number")};
    }
  }
  limit = std::clamp(limit, 1, 100);
  json results = json::array();
  std::string after;
  for (const auto& [id, r] : records_[type]) {
    if (r.archived) continue;
    if (static_cast<int>(results.size()) == limit) {
      after = r.id;
      break;
    }
    results.push_back(RecordJson(r, nullptr));
  }
  json out = {{"results", results}};
  if (!after.empty()) out["paging"] = {{"next", {{"after", after}}}};
  return {200, out};
}

}  // namespace backflow
