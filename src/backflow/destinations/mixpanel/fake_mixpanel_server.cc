#include "backflow/destinations/mixpanel/fake_mixpanel_server.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>
#include <sstream>
#include <utility>

#include "backflow/common/crypto.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kRateLimited[] =
    "Project exceeded rate limits. Please retry the request with exponential backoff.";

bool Is2xx(int status) { return status >= 200 && status < 300; }

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string QueryParam(const std::string& target, const std::string& name) {
  size_t q = target.find('?');
  if (q == std::string::npos) return "";
  std::string query = target.substr(q + 1);
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    std::string part = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    size_t eq = part.find('=');
    if (part.substr(0, eq) == name) return eq == std::string::npos ? "" : part.substr(eq + 1);
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  return "";
}

std::string StatusText(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 413:
      return "Request Entity Too Large";
    case 429:
      return "Too Many Requests";
    default:
      return status >= 500 ? "Internal Server Error" : "Error";
  }
}

// /import's reply shape.
TestResponse ImportReply(int status, const std::string& error, int64_t imported = -1) {
  json body = {{"code", status}, {"status", StatusText(status)}};
  if (!Is2xx(status)) body["error"] = error;
  if (imported >= 0) body["num_records_imported"] = imported;
  return TestResponse::Json(status, body.dump());
}

// The id text of a distinct_id: a string, or a number.
std::optional<std::string> IdOf(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
  if (v.is_number_float()) return v.dump();
  return std::nullopt;
}

std::optional<std::string> Oversized(const json& v, const std::string& path, size_t max) {
  if (v.is_object()) {
    if (v.size() >= max) return path;
    for (const auto& [k, c] : v.items()) {
      if (auto p = Oversized(c, path + "." + k, max)) return p;
    }
  } else if (v.is_array()) {
    if (v.size() >= max) return path;
    for (size_t i = 0; i < v.size(); ++i) {
      if (auto p = Oversized(v[i], fmt::format("{}[{}]", path, i), max)) return p;
    }
  }
  return std::nullopt;
}

std::string IsoNow(int64_t ms) {
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

const char* const kOperations[] = {"$set",    "$set_once", "$add",   "$union",
                                   "$append", "$remove",   "$unset", "$delete"};
const char* const kUpdateKeys[] = {"$token",       "$distinct_id",  "$ip",        "$time",
                                   "$ignore_time", "$ignore_alias", "$device_id", "$user_id",
                                   "$latitude",    "$longitude"};

}  // namespace

FakeMixpanelReply FakeMixpanelReply::Status(int status, std::string endpoint, std::string body) {
  FakeMixpanelReply r;
  r.status = status;
  r.endpoint = std::move(endpoint);
  r.body = std::move(body);
  return r;
}

FakeMixpanelReply FakeMixpanelReply::Slow(std::chrono::milliseconds delay, int status) {
  FakeMixpanelReply r;
  r.status = status;
  r.delay = delay;
  r.apply = true;
  return r;
}

FakeMixpanelServer::FakeMixpanelServer(FakeMixpanelOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {}

FakeMixpanelServer::~FakeMixpanelServer() { Stop(); }

absl::Status FakeMixpanelServer::Start() { return server_.Start(); }

void FakeMixpanelServer::Stop() { server_.Stop(); }

std::string FakeMixpanelServer::BaseUrl() const {
  return fmt::format("http://127.0.0.1:{}", server_.port());
}

int64_t FakeMixpanelServer::Now() const {
  if (options_.now_ms) return options_.now_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool FakeMixpanelServer::IsPlaceholder(std::string id) const {
  while (!id.empty() && std::isspace(static_cast<unsigned char>(id.back()))) id.pop_back();
  size_t start = 0;
  while (start < id.size() && std::isspace(static_cast<unsigned char>(id[start]))) ++start;
  return options_.placeholder_ids.contains(Lower(id.substr(start)));
}

void FakeMixpanelServer::EnqueueReply(FakeMixpanelReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

void FakeMixpanelServer::EnqueueReplies(int count, const FakeMixpanelReply& reply) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < count; ++i) script_.push_back(reply);
}

void FakeMixpanelServer::RejectDistinctId(const std::string& distinct_id) {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_ids_.insert(distinct_id);
}

void FakeMixpanelServer::ClearRejections() {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_ids_.clear();
}

std::optional<FakeMixpanelReply> FakeMixpanelServer::NextScriptedLocked(const std::string& path) {
  for (auto it = script_.begin(); it != script_.end(); ++it) {
    if (it->endpoint.empty() || it->endpoint == path) {
      FakeMixpanelReply r = std::move(*it);
      script_.erase(it);
      return r;
    }
  }
  return std::nullopt;
}

TestResponse FakeMixpanelServer::Handle(const TestRequest& req) {
  MixpanelRequest rec;
  rec.method = req.method;
  rec.target = req.target;
  rec.path = req.target.substr(0, req.target.find('?'));
  rec.headers = req.headers;
  rec.body = req.body;
  std::lock_guard<std::mutex> lock(mu_);
  TestResponse resp;
  if (req.method == "POST" && rec.path == "/import") {
    ++import_requests_;
    resp = HandleImport(req, rec);
  } else if (req.method == "POST" && rec.path == "/engage") {
    ++engage_requests_;
    resp = HandleEngage(req, rec);
  } else {
    resp = TestResponse::Json(404, R"({"error":"not found","status":0})");
  }
  rec.reply_status = resp.reset_connection ? 0 : resp.status;
  rec.reply_body = resp.body;
  requests_.push_back(std::move(rec));
  return resp;
}

TestResponse FakeMixpanelServer::HandleImport(const TestRequest& req, MixpanelRequest& rec) {
  // 1. Auth.
  auto refuse = [&](const std::string& why) {
    ++unauthorized_;
    return ImportReply(401, why);
  };
  std::optional<std::string> header = req.Header("authorization");
  if (!header || header->size() < 6 || Lower(header->substr(0, 6)) != "basic ") {
    return refuse("Invalid credentials: send HTTP Basic auth");
  }
  absl::StatusOr<std::string> decoded = Base64Decode(header->substr(6));
  if (!decoded.ok() || decoded->find(':') == std::string::npos) {
    return refuse("Invalid credentials: malformed Basic auth (expected base64(user:password))");
  }
  std::string user = decoded->substr(0, decoded->find(':'));
  std::string password = decoded->substr(decoded->find(':') + 1);
  if (auto sa = options_.service_accounts.find(user);
      sa != options_.service_accounts.end() && sa->second == password && !password.empty()) {
    std::string project = QueryParam(req.target, "project_id");
    if (project.empty()) {
      return refuse("project_id is required when authenticating with a service account");
    }
    if (project != std::to_string(options_.project_id)) {
      return refuse(fmt::format("Invalid credentials: no access to project {}", project));
    }
    rec.auth = "service_account:" + user;
  } else if (!user.empty() && user == options_.project_token && password.empty()) {
    rec.auth = "project_token";
  } else {
    return refuse("Invalid credentials");
  }

  // 2. Script.
  std::optional<FakeMixpanelReply> scripted = NextScriptedLocked("/import");
  auto scripted_response = [&](TestResponse real) {
    TestResponse resp = real;
    if (scripted->status != real.status || !scripted->body.empty()) {
      resp = ImportReply(scripted->status, "scripted failure");
      if (!scripted->body.empty()) resp.body = scripted->body;
    }
    resp.headers = scripted->headers;
    resp.delay = scripted->delay;
    resp.reset_connection = scripted->reset_connection;
    return resp;
  };
  if (scripted &&
      !scripted->apply.value_or(Is2xx(scripted->status) && !scripted->reset_connection)) {
    return scripted_response(ImportReply(scripted->status, "scripted failure"));
  }
  auto finish = [&](TestResponse real) { return scripted ? scripted_response(real) : real; };

  // 3. Shape and size.
  std::optional<std::string> type = req.Header("content-type");
  std::string media = type ? Lower(type->substr(0, type->find(';'))) : "";
  while (!media.empty() && media.back() == ' ') media.pop_back();
  if (media != "application/json" && media != "application/x-ndjson") {
    return finish(
        ImportReply(400, "Content-Type must be application/json or application/x-ndjson"));
  }
  if (req.Header("content-encoding")) {
    return finish(ImportReply(400, "this fake does not decode Content-Encoding"));
  }
  if (req.body.size() > options_.max_import_bytes) {
    return finish(ImportReply(413, fmt::format("request body of {} bytes exceeds the {} byte limit",
                                               req.body.size(), options_.max_import_bytes)));
  }
  json events = json::array();
  if (media == "application/json") {
    events = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (events.is_object()) events = json::array({events});
  } else {
    std::istringstream lines(req.body);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
      json ev = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (ev.is_discarded()) {
        events = json::value_t::discarded;
        break;
      }
      events.push_back(std::move(ev));
    }
  }
  if (events.is_discarded() || !events.is_array()) {
    return finish(ImportReply(400, "unable to parse the request body as JSON"));
  }
  rec.item_count = events.size();
  if (events.size() > options_.max_import_events) {
    return finish(ImportReply(400, fmt::format("request has {} events; the limit is {}",
                                               events.size(), options_.max_import_events)));
  }

  // 4. Rolling-minute byte bucket.
  const int64_t now = Now();
  while (!window_.empty() && window_.front().first <= now - 60'000) {
    window_bytes_ -= window_.front().second;
    window_.pop_front();
  }
  if (options_.max_bytes_per_minute > 0 &&
      window_bytes_ + req.body.size() > options_.max_bytes_per_minute) {
    ++rate_limited_;
    return finish(ImportReply(429, kRateLimited));
  }
  window_.emplace_back(now, req.body.size());
  window_bytes_ += req.body.size();

  // 5. Validation and ingestion.
  const bool strict = QueryParam(req.target, "strict") == "1";
  json failed = json::array();
  int64_t imported = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    const json& ev = events[i];
    if (auto problem = CheckEventLocked(ev, now)) {
      std::string insert_id;
      if (ev.is_object() && ev.contains("properties") && ev["properties"].is_object()) {
        const json& props = ev["properties"];
        if (props.contains("$insert_id") && props["$insert_id"].is_string()) {
          insert_id = props["$insert_id"].get<std::string>();
        }
      }
      if (strict) {
        failed.push_back({{"index", i},
                          {"insert_id", insert_id},
                          {"field", problem->first},
                          {"message", problem->second}});
        failed_.push_back({i, insert_id, problem->first, problem->second});
      }
      continue;
    }
    ++imported;
    const json& props = ev["properties"];
    double t = props["time"].get<double>();
    int64_t ms = static_cast<int64_t>(t >= 1e11 ? t : t * 1000);
    std::string key =
        fmt::format("{}\x1f{}\x1f{}\x1f{}", ev["event"].get<std::string>(),
                    *IdOf(props["distinct_id"]), ms, props["$insert_id"].get<std::string>());
    if (!event_keys_.insert(key).second) {
      ++duplicates_;
      continue;
    }
    events_.push_back(ev);
  }
  if (!failed.empty()) {
    json body = {{"code", 400},
                 {"error", "some data points in the request failed validation"},
                 {"status", "Bad Request"},
                 {"num_records_imported", imported},
                 {"failed_records", failed}};
    return finish(TestResponse::Json(400, body.dump()));
  }
  return finish(ImportReply(200, "", imported));
}

std::optional<std::pair<std::string, std::string>> FakeMixpanelServer::CheckEventLocked(
    const json& ev, int64_t now) const {
  using Problem = std::pair<std::string, std::string>;
  if (!ev.is_object()) return Problem{"event", "each event must be a JSON object"};
  auto name = ev.find("event");
  if (name == ev.end() || !name->is_string() || name->get_ref<const std::string&>().empty()) {
    return Problem{"event", "'event' must be a non-empty string"};
  }
  auto props_it = ev.find("properties");
  if (props_it == ev.end() || !props_it->is_object()) {
    return Problem{"properties", "'properties' must be an object"};
  }
  const json& props = *props_it;
  auto time = props.find("time");
  if (time == props.end()) return Problem{"properties.time", "'properties.time' is required"};
  if (!time->is_number()) {
    return Problem{"properties.time",
                   "'properties.time' is invalid: must be specified as seconds since epoch"};
  }
  double t = time->get<double>();
  int64_t ms = static_cast<int64_t>(t >= 1e11 ? t : t * 1000);
  if (ms < options_.min_time_ms || ms > now + options_.future_slack_ms) {
    return Problem{"properties.time",
                   "'properties.time' is invalid: must be after 1971-01-01 and no more than 1 "
                   "hour in the future"};
  }
  auto did = props.find("distinct_id");
  if (did == props.end()) {
    return Problem{"properties.distinct_id", "'properties.distinct_id' is required"};
  }
  std::optional<std::string> id = IdOf(*did);
  if (!id) {
    return Problem{"properties.distinct_id",
                   "'properties.distinct_id' is invalid: must be a string or a number"};
  }
  if (IsPlaceholder(*id)) {
    return Problem{"properties.distinct_id",
                   fmt::format("'properties.distinct_id' is invalid: \"{}\" is not allowed", *id)};
  }
  if (rejected_ids_.contains(*id)) {
    return Problem{"properties.distinct_id",
                   fmt::format("'properties.distinct_id' \"{}\" was rejected", *id)};
  }
  auto iid = props.find("$insert_id");
  if (iid == props.end()) {
    return Problem{"properties.$insert_id", "'properties.$insert_id' is required"};
  }
  if (!iid->is_string() || iid->get_ref<const std::string&>().empty() ||
      iid->get_ref<const std::string&>().size() > options_.max_insert_id_chars ||
      !std::all_of(
          iid->get_ref<const std::string&>().begin(), iid->get_ref<const std::string&>().end(),
          [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-'; }) ||
      IsPlaceholder(iid->get<std::string>())) {
    return Problem{"properties.$insert_id",
                   fmt::format("'properties.$insert_id' is invalid: must be 1 to {} "
                               "alphanumeric characters or dashes",
                               options_.max_insert_id_chars)};
  }
  if (props.size() >= options_.max_properties) {
    return Problem{"properties", fmt::format("too many properties: {} (must be fewer than {})",
                                             props.size(), options_.max_properties)};
  }
  for (const auto& [k, v] : props.items()) {
    if (auto path = Oversized(v, "properties." + k, options_.max_properties)) {
      return Problem{
          *path, fmt::format("'{}' has too many keys or elements (must be fewer than {})", *path,
                             options_.max_properties)};
    }
  }
  if (Dump(ev).size() >= options_.max_event_bytes) {
    return Problem{"event", "event is too large (must be smaller than 1MB)"};
  }
  return std::nullopt;
}

TestResponse FakeMixpanelServer::HandleEngage(const TestRequest& req, MixpanelRequest& rec) {
  const bool verbose = QueryParam(req.target, "verbose") == "1";
  auto status_reply = [&](const std::optional<std::string>& error) {
    if (!verbose) return TestResponse::Json(200, error ? "0" : "1");
    json body = {{"status", error ? 0 : 1}, {"error", error ? json(*error) : json(nullptr)}};
    return TestResponse::Json(200, body.dump());
  };

  std::optional<FakeMixpanelReply> scripted = NextScriptedLocked("/engage");
  auto scripted_response = [&](TestResponse real) {
    TestResponse resp = real;
    if (scripted->status != real.status || !scripted->body.empty()) {
      json body = {{"status", 0}, {"error", "scripted failure"}};
      resp = TestResponse::Json(scripted->status, body.dump());
      if (!scripted->body.empty()) resp.body = scripted->body;
    }
    resp.headers = scripted->headers;
    resp.delay = scripted->delay;
    resp.reset_connection = scripted->reset_connection;
    return resp;
  };
  if (scripted &&
      !scripted->apply.value_or(Is2xx(scripted->status) && !scripted->reset_connection)) {
    return scripted_response(TestResponse::Json(0, ""));
  }
  auto finish = [&](TestResponse real) { return scripted ? scripted_response(real) : real; };

  if (req.Header("content-encoding")) {
    return finish(TestResponse::Json(
        400, R"({"status":0,"error":"Content-Encoding is not supported on profile updates"})"));
  }
  if (req.body.size() > options_.max_engage_bytes) {
    return finish(TestResponse::Json(
        413, json({{"status", 0},
                   {"error", fmt::format("request body of {} bytes exceeds the {} byte limit",
                                         req.body.size(), options_.max_engage_bytes)}})
                 .dump()));
  }
  json updates = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (updates.is_object()) updates = json::array({updates});
  if (updates.is_discarded() || !updates.is_array()) {
    return finish(status_reply("unable to parse the request body as JSON"));
  }
  rec.item_count = updates.size();
  if (updates.size() > options_.max_engage_updates) {
    return finish(status_reply(fmt::format("too many updates: {} (the limit is {})", updates.size(),
                                           options_.max_engage_updates)));
  }
  std::optional<std::string> first_error;
  std::vector<bool> valid(updates.size(), false);
  for (size_t i = 0; i < updates.size(); ++i) {
    const json& u = updates[i];
    if (u.is_object() && u.contains("$token") && u["$token"].is_string() &&
        !u["$token"].get_ref<const std::string&>().empty() &&
        u["$token"] != options_.project_token && options_.forbid_unknown_token) {
      return finish(TestResponse::Json(
          403,
          R"({"error":"Invalid project token: it does not belong to a project","status":"error"})"));
    }
    std::optional<std::string> problem = CheckUpdateLocked(u);
    if (problem) {
      if (!first_error) first_error = fmt::format("update {}: {}", i, *problem);
    } else {
      valid[i] = true;
    }
  }
  const int64_t now = Now();
  if (!first_error || options_.engage_apply_valid_on_error) {
    for (size_t i = 0; i < updates.size(); ++i) {
      if (valid[i]) ApplyUpdateLocked(updates[i], now);
    }
  }
  return finish(status_reply(first_error));
}

std::optional<std::string> FakeMixpanelServer::CheckUpdateLocked(const json& u) const {
  if (!u.is_object()) return "each update must be a JSON object";
  auto token = u.find("$token");
  if (token == u.end() || !token->is_string() || token->get_ref<const std::string&>().empty()) {
    return "$token, missing or empty";
  }
  if (*token != options_.project_token) return "$token is not a valid project token";
  auto did = u.find("$distinct_id");
  std::optional<std::string> id = did == u.end() ? std::nullopt : IdOf(*did);
  if (!id || id->empty()) return "$distinct_id, missing or empty";
  if (rejected_ids_.contains(*id))
    return fmt::format("profile update for \"{}\" was rejected", *id);
  std::vector<std::string> ops;
  for (const auto& item : u.items()) {
    const std::string& k = item.key();
    bool is_op = std::find_if(std::begin(kOperations), std::end(kOperations),
                              [&](const char* o) { return k == o; }) != std::end(kOperations);
    bool is_key = std::find_if(std::begin(kUpdateKeys), std::end(kUpdateKeys),
                               [&](const char* o) { return k == o; }) != std::end(kUpdateKeys);
    if (is_op) {
      ops.push_back(k);
    } else if (!is_key) {
      return fmt::format("unknown key \"{}\" in a profile update", k);
    }
  }
  if (ops.empty()) return "no operation ($set, $unset, $delete, ...) in a profile update";
  if (ops.size() > 1) {
    return fmt::format("a profile update may hold one operation, got {} and {}", ops[0], ops[1]);
  }
  const std::string& op = ops.front();
  const json& v = u[op];
  if (op == "$unset") {
    if (!v.is_array()) return "$unset must be a list of property names";
    for (const json& name : v) {
      if (!name.is_string()) return "$unset must be a list of property names";
    }
  } else if (op != "$delete") {
    if (!v.is_object()) return fmt::format("{} must be an object", op);
    for (const auto& [k, x] : v.items()) {
      if (op == "$add" && !x.is_number()) return fmt::format("$add: {} is not a number", k);
      if (op == "$union" && !x.is_array()) return fmt::format("$union: {} is not a list", k);
    }
    if (auto path = Oversized(v, op, options_.max_properties)) {
      return fmt::format("{} has too many keys or elements", *path);
    }
  }
  if (Dump(u).size() >= options_.max_event_bytes) return "profile update is too large";
  return std::nullopt;
}

void FakeMixpanelServer::ApplyUpdateLocked(const json& u, int64_t now) {
  const std::string id = *IdOf(u["$distinct_id"]);
  const bool ignore_time = u.value("$ignore_time", false) == true;
  if (u.contains("$delete")) {
    profiles_.erase(id);
    return;
  }
  if (u.contains("$unset")) {
    auto it = profiles_.find(id);
    if (it == profiles_.end()) return;
    for (const json& name : u["$unset"]) it->second.erase(name.get<std::string>());
    if (!ignore_time) it->second["$last_seen"] = IsoNow(now);
    return;
  }
  json& profile = profiles_[id];
  if (!profile.is_object()) profile = json::object();
  for (const char* op : {"$set", "$set_once", "$add", "$union", "$append", "$remove"}) {
    if (!u.contains(op)) continue;
    for (const auto& [k, v] : u[op].items()) {
      std::string o = op;
      if (o == "$set") {
        profile[k] = v;
      } else if (o == "$set_once") {
        if (!profile.contains(k)) profile[k] = v;
      } else if (o == "$add") {
        double base = profile.contains(k) && profile[k].is_number() ? profile[k].get<double>() : 0;
        double sum = base + v.get<double>();
        if (std::trunc(sum) == sum && std::fabs(sum) < 9e15) {
          profile[k] = static_cast<int64_t>(sum);
        } else {
          profile[k] = sum;
        }
      } else {
        json& list = profile[k];
        if (!list.is_array()) list = json::array();
        if (o == "$append") {
          list.push_back(v);
        } else if (o == "$union") {
          for (const json& x : v) {
            if (std::find(list.begin(), list.end(), x) == list.end()) list.push_back(x);
          }
        } else {  // $remove
          list.erase(std::remove(list.begin(), list.end(), v), list.end());
        }
      }
    }
  }
  if (!ignore_time) profile["$last_seen"] = IsoNow(now);
}

std::vector<json> FakeMixpanelServer::Events() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

std::map<std::string, json> FakeMixpanelServer::Profiles() const {
  std::lock_guard<std::mutex> lock(mu_);
  return profiles_;
}

std::vector<MixpanelRequest> FakeMixpanelServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeMixpanelServer::request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(requests_.size());
}

int64_t FakeMixpanelServer::import_request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return import_requests_;
}

int64_t FakeMixpanelServer::engage_request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return engage_requests_;
}

int64_t FakeMixpanelServer::unauthorized_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unauthorized_;
}

int64_t FakeMixpanelServer::rate_limited_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rate_limited_;
}

int64_t FakeMixpanelServer::duplicate_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return duplicates_;
}

std::vector<FailedRecord> FakeMixpanelServer::FailedRecords() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

void FakeMixpanelServer::ClearHistory() {
  std::lock_guard<std::mutex> lock(mu_);
  events_.clear();
  event_keys_.clear();
  profiles_.clear();
  requests_.clear();
  failed_.clear();
  window_.clear();
  window_bytes_ = 0;
  import_requests_ = 0;
  engage_requests_ = 0;
  unauthorized_ = 0;
  rate_limited_ = 0;
  duplicates_ = 0;
}

}  // namespace backflow
