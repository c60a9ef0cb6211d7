#include "backflow/destinations/meta_capi/fake_meta_capi_server.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <utility>

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

bool IsLowerHex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out.push_back(' ');
    } else if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 &&
               HexValue(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The value of query parameter `name` in a request target, if present.
std::optional<std::string> QueryParam(const std::string& target, std::string_view name) {
  size_t q = target.find('?');
  if (q == std::string::npos) return std::nullopt;
  std::string_view query = std::string_view(target).substr(q + 1);
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    if (PercentDecode(pair.substr(0, eq)) == name) {
      return eq == std::string_view::npos ? std::string() : PercentDecode(pair.substr(eq + 1));
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::vector<std::string> SplitPath(std::string_view path) {
  std::vector<std::string> parts;
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    size_t slash = path.find('/');
    parts.emplace_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash);
  }
  return parts;
}

bool IsGraphVersion(std::string_view v) {
  if (v.size() < 4 || v.front() != 'v') return false;
  size_t dot = v.find('.');
  if (dot == std::string_view::npos || dot < 2 || dot + 1 >= v.size()) return false;
  for (size_t i = 1; i < v.size(); ++i) {
    if (i != dot && !std::isdigit(static_cast<unsigned char>(v[i]))) return false;
  }
  return true;
}

// "fb.<subdomain index>.<creation time>.<id>".
bool IsFbCookie(std::string_view v) {
  if (!v.starts_with("fb.")) return false;
  v.remove_prefix(3);
  for (int part = 0; part < 2; ++part) {
    size_t dot = v.find('.');
    if (dot == std::string_view::npos || dot == 0) return false;
    for (size_t i = 0; i < dot; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(v[i]))) return false;
    }
    v.remove_prefix(dot + 1);
  }
  return !v.empty();
}

bool IsIpAddress(const std::string& v) {
  unsigned char buf[16];
  return inet_pton(AF_INET, v.c_str(), buf) == 1 || inet_pton(AF_INET6, v.c_str(), buf) == 1;
}

json GraphErrorJson(int64_t code, int64_t subcode, const std::string& message,
                    const std::string& user_title, const std::string& user_msg, bool is_transient,
                    const std::string& trace) {
  json err = {{"message", message},
              {"type", "OAuthException"},
              {"code", code},
              {"is_transient", is_transient},
              {"fbtrace_id", trace}};
  if (subcode != 0) err["error_subcode"] = subcode;
  if (!user_title.empty()) err["error_user_title"] = user_title;
  if (!user_msg.empty()) err["error_user_msg"] = user_msg;
  return json{{"error", err}};
}

}  // namespace

FakeMetaReply FakeMetaReply::GraphError(int status, int64_t code, int64_t subcode,
                                        std::string message, bool is_transient) {
  FakeMetaReply r;
  r.status = status;
  r.body = GraphErrorJson(code, subcode, message, "", "", is_transient, "FakeScripted").dump();
  return r;
}

FakeMetaReply FakeMetaReply::RateLimited(int64_t code, int regain_minutes) {
  std::string message = code == 17    ? "(#17) User request limit reached"
                        : code == 4   ? "(#4) Application request limit reached"
                        : code == 613 ? "(#613) Calls to this api have exceeded the rate limit."
                                      : fmt::format("(#{}) There have been too many calls", code);
  FakeMetaReply r = GraphError(400, code, 0, message, /*is_transient=*/true);
  if (regain_minutes >= 0) {
    r.headers.emplace_back(
        "X-Business-Use-Case-Usage",
        json{{"1234567890", json::array({{{"type", "ads_management"},
                                          {"call_count", 100},
                                          {"total_cputime", 20},
                                          {"total_time", 30},
                                          {"estimated_time_to_regain_access", regain_minutes}}})}}
            .dump());
  }
  return r;
}

FakeMetaReply FakeMetaReply::Status(int status, std::string body) {
  FakeMetaReply r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

FakeMetaCapiServer::FakeMetaCapiServer(FakeMetaCapiOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {}

FakeMetaCapiServer::~FakeMetaCapiServer() { Stop(); }

absl::Status FakeMetaCapiServer::Start() { return server_.Start(); }

void FakeMetaCapiServer::Stop() { server_.Stop(); }

std::string FakeMetaCapiServer::BaseUrl() const {
  return fmt::format("http://127.0.0.1:{}", server_.port());
}

Clock::TimePoint FakeMetaCapiServer::Now() const {
  return options_.clock != nullptr ? options_.clock->Now() : SystemClock().Now();
}

void FakeMetaCapiServer::EnqueueReply(FakeMetaReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

void FakeMetaCapiServer::EnqueueReplies(int count, const FakeMetaReply& reply) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < count; ++i) script_.push_back(reply);
}

void FakeMetaCapiServer::RejectEventId(const std::string& event_id) {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_event_ids_.insert(event_id);
}

void FakeMetaCapiServer::ClearRejections() {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_event_ids_.clear();
}

std::string FakeMetaCapiServer::ValidateEventLocked(const json& ev, int64_t now_s,
                                                    int64_t* subcode) const {
  *subcode = 0;
  if (!ev.is_object()) return "each element of data must be an object";
  auto name = ev.find("event_name");
  if (name == ev.end() || !name->is_string() || name->get_ref<const std::string&>().empty()) {
    return "The parameter event_name is required";
  }
  auto time = ev.find("event_time");
  if (time == ev.end() || !time->is_number_integer()) {
    return "The parameter event_time is required and must be an integer (Unix seconds)";
  }
  if (time->get<int64_t>() < now_s - options_.max_event_age.count()) {
    *subcode = 2804003;
    return "Event Timestamp Too Old: the timestamp for this event is more than 7 days in the "
           "past. Events must be sent within 7 days of when they occurred";
  }
  auto source = ev.find("action_source");
  if (source == ev.end() || !source->is_string()) {
    return "The parameter action_source is required";
  }
  if (!options_.action_sources.contains(source->get<std::string>())) {
    return fmt::format("Invalid action_source value: {}", source->get<std::string>());
  }
  if (auto id = ev.find("event_id"); id != ev.end()) {
    if (!id->is_string()) return "event_id must be a string";
    if (rejected_event_ids_.contains(id->get<std::string>())) {
      return fmt::format("The event with event_id {} was rejected", id->get<std::string>());
    }
  }
  auto user = ev.find("user_data");
  if (user == ev.end() || !user->is_object() || user->empty()) {
    return "Missing user_data: the event must include at least one customer information "
           "parameter";
  }
  for (const auto& [key, value] : user->items()) {
    if (options_.hashed_keys.contains(key)) {
      std::vector<json> items;
      if (value.is_array()) {
        items.assign(value.begin(), value.end());
      } else {
        items.push_back(value);
      }
      if (items.empty()) return fmt::format("user_data.{} is an empty list", key);
      for (const json& item : items) {
        if (!item.is_string() || !IsLowerHex64(item.get_ref<const std::string&>())) {
          return fmt::format(
              "Unhashed user data: user_data.{} must be hashed with SHA-256 (64 lowercase hex "
              "digits), got {}",
              key, item.dump());
        }
      }
      continue;
    }
    if (!options_.check_unhashed_formats) continue;
    if (key == "client_ip_address" &&
        (!value.is_string() || !IsIpAddress(value.get_ref<const std::string&>()))) {
      return fmt::format("Invalid client_ip_address: {}", value.dump());
    }
    if ((key == "fbc" || key == "fbp") &&
        (!value.is_string() || !IsFbCookie(value.get_ref<const std::string&>()))) {
      return fmt::format("Invalid {} value (expected fb.<n>.<time>.<id>, unhashed): {}", key,
                         value.dump());
    }
    if (key == "client_user_agent" && !value.is_string()) {
      return "client_user_agent must be a string";
    }
  }
  if (options_.require_website_fields && source->get<std::string>() == "website") {
    auto url = ev.find("event_source_url");
    if (url == ev.end() || !url->is_string() || url->get_ref<const std::string&>().empty()) {
      return "Website events require the event_source_url parameter";
    }
    if (!user->contains("client_user_agent")) {
      return "Website events require the client_user_agent parameter";
    }
  }
  return "";
}

TestResponse FakeMetaCapiServer::Handle(const TestRequest& req) {
  MetaRequest rec;
  rec.method = req.method;
  rec.target = req.target;
  rec.path = req.target.substr(0, req.target.find('?'));
  rec.headers = req.headers;
  rec.body = req.body;

  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  const bool parsed = !req.body.empty() && !body.is_discarded();
  if (parsed && body.is_object()) {
    if (auto data = body.find("data"); data != body.end() && data->is_array()) {
      rec.event_count = data->size();
      for (const json& ev : *data) {
        if (!ev.is_object()) continue;
        if (auto id = ev.find("event_id"); id != ev.end() && id->is_string()) {
          rec.event_ids.push_back(id->get<std::string>());
        }
      }
    }
  }

  std::lock_guard<std::mutex> lock(mu_);
  const std::string trace = fmt::format("Fake{:08}", ++trace_counter_);
  auto finish = [&](TestResponse resp) {
    rec.reply_status = resp.reset_connection ? 0 : resp.status;
    requests_.push_back(std::move(rec));
    return resp;
  };
  auto graph_error = [&](int status, int64_t code, int64_t subcode, const std::string& message,
                         const std::string& user_title = "", const std::string& user_msg = "") {
    return finish(TestResponse::Json(
        status, GraphErrorJson(code, subcode, message, user_title, user_msg, false, trace).dump()));
  };

  std::vector<std::string> parts = SplitPath(rec.path);
  const bool events_path = parts.size() == 3 && parts[2] == "events";
  if ((parts.size() != 2 && !events_path) || !IsGraphVersion(parts[0])) {
    return graph_error(400, 2500, 0, "Unknown path components: " + rec.path);
  }
  if (!options_.api_versions.contains(parts[0])) {
    return graph_error(400, 2635, 0,
                       fmt::format("(#2635) You are calling a deprecated or unknown version of "
                                   "the Graph API ({}).",
                                   parts[0]));
  }
  if ((events_path && req.method != "POST") || (!events_path && req.method != "GET")) {
    return graph_error(400, 100, 0, fmt::format("Unsupported {} request.", Lower(req.method)));
  }

  // Auth: the query parameter, else (POST) the body member.
  std::optional<std::string> token = QueryParam(req.target, "access_token");
  if (!token && parsed && body.is_object()) {
    if (auto t = body.find("access_token"); t != body.end() && t->is_string()) {
      token = t->get<std::string>();
    }
  }
  if (!token || token->empty()) {
    ++unauthorized_;
    return graph_error(400, 104, 0, "An access token is required to request this resource.");
  }
  rec.access_token = *token;
  if (!options_.access_tokens.contains(*token) && !options_.denied_tokens.contains(*token)) {
    ++unauthorized_;
    return graph_error(400, 190, 0, "Invalid OAuth access token - Cannot parse access token");
  }
  const std::string& pixel = parts[1];
  if (!options_.pixel_ids.contains(pixel)) {
    return graph_error(
        400, 100, 33,
        fmt::format("Unsupported {} request. Object with ID '{}' does not exist, cannot be loaded "
                    "due to missing permissions, or does not support this operation.",
                    Lower(req.method), pixel));
  }
  if (options_.denied_tokens.contains(*token)) {
    return graph_error(403, 200, 0, "(#200) Permissions error");
  }
  if (!events_path) {
    return finish(
        TestResponse::Json(200, json{{"id", pixel}, {"name", "Fake pixel " + pixel}}.dump()));
  }

  std::optional<FakeMetaReply> scripted;
  if (!script_.empty()) {
    scripted = std::move(script_.front());
    script_.pop_front();
  }
  auto scripted_response = [&](int status) {
    std::string text = scripted->body;
    if (text.empty()) {
      text = Is2xx(status)
                 ? json{{"events_received", rec.event_count},
                        {"messages", json::array()},
                        {"fbtrace_id", trace}}
                       .dump()
                 : GraphErrorJson(2, 0, "An unexpected error has occurred.", "", "", true, trace)
                       .dump();
    }
    TestResponse resp = TestResponse::Json(status, text);
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
    return graph_error(400, 100, 0, "Invalid parameter", "Invalid body",
                       "The request body must be JSON (Content-Type: application/json)");
  }
  if (!parsed || !body.is_object()) {
    return graph_error(400, 100, 0, "Invalid parameter", "Invalid JSON",
                       "The request body is not a JSON object");
  }
  auto data = body.find("data");
  if (data == body.end() || !data->is_array() || data->empty()) {
    return graph_error(400, 100, 0, "(#100) The parameter data is required", "Missing data",
                       "data must be a non-empty array of events");
  }
  if (data->size() > options_.max_events_per_request) {
    return graph_error(400, 100, 0, "Invalid parameter", "Too many events",
                       fmt::format("data may hold at most {} events, got {}",
                                   options_.max_events_per_request, data->size()));
  }
  const int64_t now_s = static_cast<int64_t>(std::floor(ToUnixSeconds(Now())));
  for (size_t i = 0; i < data->size(); ++i) {
    int64_t subcode = 0;
    std::string why = ValidateEventLocked((*data)[i], now_s, &subcode);
    if (!why.empty()) {
      ++rejected_;
      return graph_error(400, 100, subcode, "Invalid parameter", "Invalid event",
                         fmt::format("data[{}]: {}", i, why));
    }
  }

  std::string test_code;
  if (auto t = body.find("test_event_code"); t != body.end() && t->is_string()) {
    test_code = t->get<std::string>();
  }
  const Clock::TimePoint now = Now();
  for (const json& ev : *data) {
    if (!test_code.empty()) {
      test_events_.push_back(ev);
      test_codes_.insert(test_code);
      continue;
    }
    std::string name = ev["event_name"].get<std::string>();
    auto id = ev.find("event_id");
    if (id != ev.end()) {
      std::string id_text = id->get<std::string>();
      ++event_id_counts_[name + "/" + id_text];
      std::string key = name + "\n" + id_text;
      auto seen = stored_at_.find(key);
      if (seen != stored_at_.end() && now - seen->second < options_.dedup_window) {
        ++duplicates_;
        continue;
      }
      stored_at_[key] = now;
    }
    events_.push_back(ev);
  }
  if (scripted) return finish(scripted_response(scripted->status));
  return finish(TestResponse::Json(
      200,
      json{{"events_received", data->size()}, {"messages", json::array()}, {"fbtrace_id", trace}}
          .dump()));
}

std::vector<json> FakeMetaCapiServer::Events() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

std::vector<json> FakeMetaCapiServer::TestEvents() const {
  std::lock_guard<std::mutex> lock(mu_);
  return test_events_;
}

std::set<std::string> FakeMetaCapiServer::TestEventCodes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return test_codes_;
}

std::vector<MetaRequest> FakeMetaCapiServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeMetaCapiServer::request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(requests_.size());
}

int64_t FakeMetaCapiServer::unauthorized_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unauthorized_;
}

int64_t FakeMetaCapiServer::duplicate_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return duplicates_;
}

int64_t FakeMetaCapiServer::rejected_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rejected_;
}

std::map<std::string, int> FakeMetaCapiServer::EventIdCounts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return event_id_counts_;
}

void FakeMetaCapiServer::ClearHistory() {
  std::lock_guard<std::mutex> lock(mu_);
  events_.clear();
  test_events_.clear();
  test_codes_.clear();
  requests_.clear();
  stored_at_.clear();
  event_id_counts_.clear();
  unauthorized_ = 0;
  duplicates_ = 0;
  rejected_ = 0;
}

}  // namespace backflow
