#include "backflow/api/api_service.h"

#include <set>

#include "backflow/api/workspace_routes.h"
#include "backflow/catalog/json_schema.h"
#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/json_writer.h"
#include "backflow/common/url.h"
#include "backflow/ops/ops.h"
#include "backflow/state/open_state_store.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow::api {
namespace {

using ojson = nlohmann::ordered_json;

constexpr int kMaxPageSize = 500;
constexpr const char* kMasked = "••••••";

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kInvalidArgument:
      return 422;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return 503;
    default:
      return 500;
  }
}

std::string CodeFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kNotFound:
      return "not_found";
    case absl::StatusCode::kInvalidArgument:
      return "invalid";
    case absl::StatusCode::kAlreadyExists:
      return "already_exists";
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted:
      return "conflict";
    case absl::StatusCode::kPermissionDenied:
      return "forbidden";
    case absl::StatusCode::kUnauthenticated:
      return "unauthenticated";
    case absl::StatusCode::kResourceExhausted:
      return "rate_limited";
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return "unavailable";
    default:
      return "internal";
  }
}

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

HttpResponse FromStatus(const absl::Status& status, std::string_view hint = "") {
  return ErrorResponse(HttpStatusFor(status.code()), CodeFor(status.code()), Msg(status), hint);
}

HttpResponse Json(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

HttpResponse Json(int status, const ojson& body) { return Json(status, body.dump()); }

void WriteRun(JsonWriter& w, const RunInfo& r) {
  auto opt_string = [&](std::string_view key, const std::string& v) {
    w.Key(key);
    if (v.empty()) {
      w.Null();
    } else {
      w.String(v);
    }
  };
  w.BeginObject();
  w.Key("id").Int(r.id);
  w.Key("mapping").String(r.mapping);
  w.Key("model").String(r.model);
  w.Key("destination").String(r.destination);
  w.Key("status").String(RunStatusName(r.status));
  w.Key("trigger").String(r.trigger);
  w.Key("dry_run").Bool(r.dry_run);
  w.Key("full_resync").Bool(r.full_resync);
  w.Key("request_id");
  if (r.request_id == 0) {
    w.Null();
  } else {
    w.Int(r.request_id);
  }
  opt_string("requested_at", r.requested_at);
  opt_string("started_at", r.started_at);
  opt_string("finished_at", r.finished_at);
  w.Key("duration_s").Double(r.duration_s);
  w.Key("phases").BeginObject();
  w.Key("extract_s").Double(r.extract_s);
  w.Key("diff_s").Double(r.diff_s);
  w.Key("deliver_s").Double(r.deliver_s);
  w.EndObject();
  const RunCounts& c = r.counts;
  w.Key("counts").BeginObject();
  w.Key("extracted").Int(c.extracted);
  w.Key("added").Int(c.added);
  w.Key("updated").Int(c.updated);
  w.Key("deleted").Int(c.deleted);
  w.Key("unchanged").Int(c.unchanged);
  w.Key("skipped").Int(c.skipped);
  w.Key("succeeded").Int(c.succeeded);
  w.Key("failed").Int(c.failed);
  w.Key("rejected").Int(c.rejected);
  w.EndObject();
  opt_string("error", r.error);
  w.Key("cancel_requested").Bool(r.cancel_requested);
  opt_string("worker", r.worker);
  w.Key("links").BeginObject();
  w.Key("self").String(fmt::format("/api/v1/runs/{}", r.id));
  w.Key("records").String(fmt::format("/api/v1/runs/{}/records", r.id));
  w.Key("mapping").String(fmt::format("/api/v1/mappings/{}", r.mapping));
  w.EndObject();
  w.EndObject();
}

std::string RunJson(const RunInfo& r) {
  JsonWriter w;
  WriteRun(w, r);
  return w.Release();
}

absl::StatusOr<int64_t> ParseId(const std::string& text, std::string_view what) {
  int64_t v = 0;
  if (text.empty() || text.size() > 18) {
    return absl::InvalidArgumentError(fmt::format("{} must be a positive integer", what));
  }
  for (char c : text) {
    if (c < '0' || c > '9') {
      return absl::InvalidArgumentError(
          fmt::format("{} must be a positive integer, not \"{}\"", what, text));
    }
    v = v * 10 + (c - '0');
  }
  if (v <= 0) return absl::InvalidArgumentError(fmt::format("{} must be a positive integer", what));
  return v;
}

// Reads the "limit" query parameter (1 to kMaxPageSize; `fallback` when
// absent) into `limit`; on a bad value, the 422 to send.
std::optional<HttpResponse> PageLimit(const Call& call, int fallback, int& limit) {
  limit = fallback;
  auto it = call.query.find("limit");
  if (it == call.query.end()) return std::nullopt;
  absl::StatusOr<int64_t> parsed = ParseId(it->second, "limit");
  if (!parsed.ok() || *parsed > kMaxPageSize) {
    return ErrorResponse(422, "invalid",
                         fmt::format("limit must be an integer from 1 to {}", kMaxPageSize), "",
                         "limit");
  }
  limit = static_cast<int>(*parsed);
  return std::nullopt;
}

// Reads the {id} path parameter into `id`; on a bad value, the 422 to send.
std::optional<HttpResponse> RunIdParam(Call& call, int64_t& id) {
  absl::StatusOr<int64_t> parsed = ParseId(call.path["id"], "the run id");
  if (!parsed.ok()) return ErrorResponse(422, "invalid", Msg(parsed.status()), "", "id");
  id = *parsed;
  return std::nullopt;
}

// The response for a failed state-store call about run `id`.
HttpResponse RunError(const absl::Status& status, int64_t id) {
  if (status.code() == absl::StatusCode::kNotFound) {
    return ErrorResponse(404, "not_found", fmt::format("no run with id {}", id),
                         "list runs with GET /api/v1/runs");
  }
  return FromStatus(status);
}

// Masks the settings a connector declares secret.
ojson MaskedSettings(const nlohmann::json& settings, const std::vector<SettingSpec>& specs) {
  ojson out = ojson::object();
  std::set<std::string> secret;
  for (const SettingSpec& s : specs) {
    if (s.secret) secret.insert(s.key);
  }
  for (auto it = settings.begin(); it != settings.end(); ++it) {
    if (secret.count(it.key())) {
      out[it.key()] = it.value().is_null() ? ojson(nullptr) : ojson(kMasked);
    } else {
      out[it.key()] = ojson::parse(it.value().dump());
    }
  }
  return out;
}

ojson ScheduleJson(const Schedule& s) {
  ojson j;
  switch (s.kind) {
    case Schedule::Kind::kManual:
      j["kind"] = "manual";
      break;
    case Schedule::Kind::kInterval:
      j["kind"] = "interval";
      j["every_minutes"] = s.interval_minutes;
      break;
    case Schedule::Kind::kWeekly: {
      static const char* kDays[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
      j["kind"] = "weekly";
      ojson days = ojson::array();
      for (int d : s.weekdays) days.push_back(kDays[d % 7]);
      j["days"] = days;
      j["at"] = fmt::format("{:02}:00", s.hour);
      j["timezone"] = s.timezone;
      break;
    }
    case Schedule::Kind::kCron:
      j["kind"] = "cron";
      j["cron"] = s.cron;
      j["timezone"] = s.timezone;
      break;
  }
  j["text"] = s.ToString();
  return j;
}

// The body of a trigger request: optional {"full_resync": bool}.
absl::StatusOr<bool> ParseTriggerBody(const std::string& body, std::string& field) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) return false;
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError("the request body is not valid JSON");
  }
  if (!j.is_object()) {
    field = "";
    return absl::InvalidArgumentError("the request body must be a JSON object");
  }
  bool full_resync = false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "full_resync") {
      if (!it.value().is_boolean()) {
        field = "full_resync";
        return absl::InvalidArgumentError("full_resync must be a boolean");
      }
      full_resync = it.value().get<bool>();
    } else {
      field = it.key();
      return absl::InvalidArgumentError(
          fmt::format("unknown field \"{}\"; the only field is full_resync", it.key()));
    }
  }
  return full_resync;
}

const char* kRunSchema = R"({"$ref": "#/components/schemas/Run"})";

}  // namespace

HttpResponse ErrorResponse(int http_status, std::string_view code, std::string_view message,
                           std::string_view hint, std::string_view field) {
  JsonWriter w;
  w.BeginObject().Key("error").BeginObject();
  w.Key("code").String(code);
  w.Key("message").String(message);
  if (!hint.empty()) w.Key("hint").String(hint);
  if (!field.empty()) w.Key("field").String(field);
  w.EndObject().EndObject();
  HttpResponse r;
  r.status = http_status;
  r.body = w.Release();
  return r;
}

class ApiService::StoreLease {
 public:
  StoreLease(ApiService* owner, std::unique_ptr<StateStore> store)
      : owner_(owner), store_(std::move(store)) {}
  StoreLease(StoreLease&& other) noexcept = default;
  ~StoreLease() {
    if (store_ == nullptr) return;
    std::lock_guard<std::mutex> lock(owner_->pool_mu_);
    owner_->idle_stores_.push_back(std::move(store_));
  }
  StateStore* operator->() { return store_.get(); }
  // Drops the handle instead of returning it (after an error on it).
  void Discard() { store_.reset(); }

 private:
  ApiService* owner_;
  std::unique_ptr<StateStore> store_;
};

ApiService::ApiService(ApiOptions options) : options_(std::move(options)) {
  if (options_.metrics) {
    options_.metrics->Declare("backflow_api_requests_total", Metrics::Type::kCounter,
                              "API requests answered, by route and HTTP status.",
                              {"route", "status"});
    options_.metrics->Declare("backflow_queue_depth", Metrics::Type::kGauge,
                              "Runs waiting for a worker (queued) and being worked on (running).",
                              {"status"});
  }
  AddRoutes();
}

ApiService::~ApiService() = default;

absl::StatusOr<ApiService::StoreLease> ApiService::Store() {
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (!idle_stores_.empty()) {
      std::unique_ptr<StateStore> s = std::move(idle_stores_.back());
      idle_stores_.pop_back();
      return StoreLease(this, std::move(s));
    }
  }
  absl::StatusOr<std::unique_ptr<StateStore>> opened = OpenStateStore(options_.state_url);
  if (!opened.ok()) {
    return absl::UnavailableError(
        fmt::format("the state store is unavailable: {}", Msg(opened.status())));
  }
  return StoreLease(this, *std::move(opened));
}

HttpResponse ApiService::Handle(const HttpRequest& request) {
  std::string path = request.target;
  std::string query;
  if (size_t q = path.find('?'); q != std::string::npos) {
    query = path.substr(q + 1);
    path.resize(q);
  }
  Router::Match match = router_.Find(request.method, path);
  std::string route_label = match.route ? match.route->path : "unmatched";
  auto count = [&](HttpResponse r) {
    if (options_.metrics) {
      options_.metrics->Add("backflow_api_requests_total", {route_label, std::to_string(r.status)});
    }
    return r;
  };
  if (match.route == nullptr) {
    if (match.path_known) {
      HttpResponse r = ErrorResponse(
          405, "method_not_allowed", fmt::format("{} is not allowed on {}", request.method, path),
          fmt::format("allowed: {}", fmt::join(match.allowed_methods, ", ")));
      r.headers.emplace_back("Allow", fmt::format("{}", fmt::join(match.allowed_methods, ", ")));
      return count(std::move(r));
    }
    return count(ErrorResponse(404, "not_found", fmt::format("no route {}", path),
                               "the routes are listed in GET /api/v1/openapi.json"));
  }
  const Route& route = *match.route;
  Call call{request, std::move(match.path_params), ParseQuery(query), ""};

  if (route.access != Access::kPublic) {
    std::string auth = request.Header("authorization");
    constexpr std::string_view kBearer = "Bearer ";
    if (auth.size() <= kBearer.size() || auth.compare(0, kBearer.size(), kBearer) != 0) {
      HttpResponse r =
          ErrorResponse(401, "unauthenticated", "this route needs an API token",
                        "send Authorization: Bearer <token>; create one with `backflow token "
                        "create NAME`");
      r.headers.emplace_back("WWW-Authenticate", "Bearer");
      return count(std::move(r));
    }
    absl::StatusOr<StoreLease> store = Store();
    if (!store.ok()) return count(FromStatus(store.status()));
    std::string hash = HexEncode(Sha256(auth.substr(kBearer.size())));
    absl::StatusOr<std::optional<ApiToken>> token = (*store)->UseApiToken(hash, options_.now());
    if (!token.ok()) {
      store->Discard();
      return count(FromStatus(absl::UnavailableError(
          fmt::format("the state store is unavailable: {}", Msg(token.status())))));
    }
    if (!token->has_value()) {
      HttpResponse r = ErrorResponse(401, "unauthenticated", "the API token is not valid",
                                     "it may have been revoked; list tokens with `backflow "
                                     "token list`");
      r.headers.emplace_back("WWW-Authenticate", "Bearer error=\"invalid_token\"");
      return count(std::move(r));
    }
    if (route.access == Access::kWrite && (*token)->read_only) {
      return count(ErrorResponse(403, "forbidden",
                                 fmt::format("token \"{}\" is read-only and cannot call {} {}",
                                             (*token)->name, route.method, route.path),
                                 "use a token created without --read-only"));
    }
    call.token_name = (*token)->name;
    call.read_only = (*token)->read_only;
  }
  // Query parameters: known names, declared types and values.
  for (const auto& [name, value] : call.query) {
    const Param* param = nullptr;
    for (const Param& p : route.params) {
      if (p.in == "query" && p.name == name) param = &p;
    }
    if (param == nullptr) {
      std::vector<std::string> known;
      for (const Param& p : route.params) {
        if (p.in == "query") known.push_back(p.name);
      }
      return count(ErrorResponse(400, "bad_request",
                                 fmt::format("unknown query parameter \"{}\"", name),
                                 known.empty() ? "this route takes no query parameters"
                                               : fmt::format("known: {}", fmt::join(known, ", ")),
                                 name));
    }
    if (!param->allowed.empty() &&
        std::find(param->allowed.begin(), param->allowed.end(), value) == param->allowed.end()) {
      return count(ErrorResponse(
          422, "invalid",
          fmt::format("{} must be one of {}", name, fmt::join(param->allowed, ", ")), "", name));
    }
  }
  return count(route.handler(call));
}

// ------------------------------------------------------------------ routes

void ApiService::AddRoutes() {
  auto bind = [this](HttpResponse (ApiService::*fn)(Call&)) {
    return [this, fn](Call& c) { return (this->*fn)(c); };
  };
  Param name_param{"name", "path", "string", "the object's name", true, {}};
  Param id_param{"id", "path", "integer", "the run id", true, {}};
  std::vector<std::string> statuses;
  for (auto s :
       {RunStatus::kQueued, RunStatus::kRunning, RunStatus::kSucceeded, RunStatus::kPartial,
        RunStatus::kFailed, RunStatus::kInterrupted, RunStatus::kCancelled}) {
    statuses.emplace_back(RunStatusName(s));
  }

  router_.Add({"GET",
               "/healthz",
               Access::kPublic,
               "health",
               "The process is up.",
               {},
               "",
               200,
               R"({"type":"object","properties":{"status":{"const":"ok"}}})",
               "application/json",
               bind(&ApiService::Healthz)});
  router_.Add({"GET",
               "/readyz",
               Access::kPublic,
               "health",
               "The state store is reachable (503 when it is not).",
               {},
               "",
               200,
               R"({"type":"object","properties":{"status":{"type":"string"}}})",
               "application/json",
               bind(&ApiService::Readyz)});
  router_.Add({"GET",
               "/metrics",
               Access::kRead,
               "health",
               "Prometheus metrics (text exposition format 0.0.4).",
               {},
               "",
               200,
               R"({"type":"string"})",
               "text/plain; version=0.0.4",
               bind(&ApiService::MetricsText)});
  router_.Add({"GET",
               "/api/v1/openapi.json",
               Access::kRead,
               "meta",
               "This document.",
               {},
               "",
               200,
               R"({"type":"object"})",
               "application/json",
               bind(&ApiService::OpenApi)});
  router_.Add({"GET",
               "/api/v1/catalog",
               Access::kRead,
               "catalog",
               "Source and destination types, their settings, actions and fields (JSON Schema).",
               {},
               "",
               200,
               R"({"type":"object"})",
               "application/json",
               bind(&ApiService::Catalog)});
  router_.Add(
      {"GET",
       "/api/v1/runs",
       Access::kRead,
       "runs",
       "Runs, newest first, a page at a time.",
       {{"mapping", "query", "string", "only this mapping's runs", false, {}},
        {"model", "query", "string", "only this model's runs", false, {}},
        {"status", "query", "string", "only runs in this status", false, statuses},
        {"limit", "query", "integer", "page size, 1 to 500 (default 50)", false, {}},
        {"cursor", "query", "string", "next_cursor of the previous page", false, {}}},
       "",
       200,
       R"({"type":"object","properties":{"runs":{"type":"array","items":{"$ref":"#/components/schemas/Run"}},"next_cursor":{"type":["string","null"]}}})",
       "application/json",
       bind(&ApiService::ListRuns)});
  router_.Add({"GET",
               "/api/v1/runs/{id}",
               Access::kRead,
               "runs",
               "One run: status, duration, phases, counts, error.",
               {id_param},
               "",
               200,
               kRunSchema,
               "application/json",
               bind(&ApiService::GetRun)});
  router_.Add(
      {"GET",
       "/api/v1/runs/{id}/records",
       Access::kRead,
       "runs",
       "The run's failed and rejected records: key, error, payload sent, recommended action.",
       {id_param,
        {"outcome",
         "query",
         "string",
         "failed or rejected (default both)",
         false,
         {"failed", "rejected"}},
        {"limit", "query", "integer", "at most this many, 1 to 500 (default 100)", false, {}}},
       "",
       200,
       R"({"type":"object","properties":{"run_id":{"type":"integer"},"records":{"type":"array","items":{"$ref":"#/components/schemas/RunRecord"}}}})",
       "application/json",
       bind(&ApiService::GetRunRecords)});
  router_.Add({"POST",
               "/api/v1/runs/{id}/cancel",
               Access::kWrite,
               "runs",
               "Cancels a queued run at once, or asks a running run to stop after the batches "
               "in flight (202).",
               {id_param},
               "",
               202,
               kRunSchema,
               "application/json",
               bind(&ApiService::CancelRun)});
  const char* trigger_body =
      R"({"type":"object","additionalProperties":false,"properties":{"full_resync":{"type":"boolean","description":"send every record again, not only the changes"}}})";
  const char* trigger_reply =
      R"({"type":"object","properties":{"request_id":{"type":"integer"},"runs":{"type":"array","items":{"$ref":"#/components/schemas/Run"}}}})";
  router_.Add({"POST",
               "/api/v1/mappings/{name}/runs",
               Access::kWrite,
               "runs",
               "Queues a run of one mapping (202 with the run).",
               {name_param},
               trigger_body,
               202,
               trigger_reply,
               "application/json",
               bind(&ApiService::TriggerMapping)});
  router_.Add({"POST",
               "/api/v1/models/{name}/runs",
               Access::kWrite,
               "runs",
               "Queues a run of every enabled mapping of the model, from one extraction (202).",
               {name_param},
               trigger_body,
               202,
               trigger_reply,
               "application/json",
               bind(&ApiService::TriggerModel)});
  const char* check_reply =
      R"({"type":"object","properties":{"name":{"type":"string"},"kind":{"type":"string"},"type":{"type":"string"},"ok":{"type":"boolean"},"duration_s":{"type":"number"},"error":{"type":["string","null"]}}})";
  router_.Add({"POST",
               "/api/v1/sources/{name}/test",
               Access::kRead,
               "sources",
               "Tests the source's connection and credentials (200 with ok false and the "
               "reason when it fails).",
               {name_param},
               "",
               200,
               check_reply,
               "application/json",
               [this](Call& c) { return TestConnection(c, "source"); }});
  router_.Add({"POST",
               "/api/v1/destinations/{name}/test",
               Access::kRead,
               "destinations",
               "Tests the destination's connection and credentials (200 with ok false and the "
               "reason when it fails).",
               {name_param},
               "",
               200,
               check_reply,
               "application/json",
               [this](Call& c) { return TestConnection(c, "destination"); }});
  router_.Add(
      {"POST",
       "/api/v1/models/{name}/preview",
       Access::kRead,
       "models",
       "The first rows of the model with column types. The body may give unsaved SQL (and "
       "source, primary_key) to preview before saving; that needs a write token, and then "
       "{name} need not exist yet.",
       {name_param},
       R"({"type":"object","additionalProperties":false,"properties":{"sql":{"type":"string"},"source":{"type":"string"},"primary_key":{"type":"string"},"limit":{"type":"integer","minimum":1,"maximum":100}}})",
       200,
       R"({"type":"object","properties":{"model":{"type":"string"},"source":{"type":"string"},"sql":{"type":"string"},"primary_key":{"type":"string"},"columns":{"type":"array","items":{"type":"object","properties":{"name":{"type":"string"},"type":{"type":"string"},"source_type":{"type":"string"},"is_key":{"type":"boolean"}}}},"rows":{"type":"array","items":{"type":"array"}},"key_found":{"type":"boolean"}}})",
       "application/json",
       bind(&ApiService::PreviewModel)});
  router_.Add(
      {"POST",
       "/api/v1/mappings/{name}/test",
       Access::kRead,
       "mappings",
       "The payload one record would produce (the first row, or record_key's); nothing is "
       "sent.",
       {name_param},
       R"({"type":"object","additionalProperties":false,"properties":{"record_key":{"type":"string"}}})",
       200,
       R"({"type":"object","properties":{"mapping":{"type":"string"},"action":{"type":"string"},"key":{"type":"string"},"row":{"type":"object"},"payload":{"type":["object","null"]},"error":{"type":["string","null"]}}})",
       "application/json",
       bind(&ApiService::TestMapping)});
  for (const char* kind : {"sources", "models", "destinations", "mappings"}) {
    std::string k = kind;
    router_.Add({"GET",
                 "/api/v1/" + k,
                 Access::kRead,
                 k,
                 fmt::format("Every {} of the workspace (secret settings masked).",
                             k.substr(0, k.size() - 1)),
                 {},
                 "",
                 200,
                 R"({"type":"object"})",
                 "application/json",
                 [this, k](Call& c) { return ListObjects(c, k); }});
    router_.Add({"GET",
                 "/api/v1/" + k + "/{name}",
                 Access::kRead,
                 k,
                 fmt::format("One {} (secret settings masked).", k.substr(0, k.size() - 1)),
                 {name_param},
                 "",
                 200,
                 R"({"type":"object"})",
                 "application/json",
                 [this, k](Call& c) { return GetObject(c, k); }});
  }
  // Create, update, delete, enable/disable, the workspace, secrets (workspace_routes.h).
  AddWorkspaceRoutes(router_, options_);
}

HttpResponse ApiService::Healthz(Call&) { return Json(200, std::string(R"({"status":"ok"})")); }

HttpResponse ApiService::Readyz(Call&) {
  absl::StatusOr<StoreLease> store = Store();
  absl::Status ok = store.ok() ? (*store)->CountRuns(RunStatus::kQueued).status() : store.status();
  if (!ok.ok()) {
    if (store.ok()) store->Discard();
    JsonWriter w;
    w.BeginObject().Key("status").String("unavailable");
    w.Key("reason").String(Msg(ok)).EndObject();
    return Json(503, w.Release());
  }
  return Json(200, std::string(R"({"status":"ready"})"));
}

HttpResponse ApiService::MetricsText(Call&) {
  HttpResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  if (options_.metrics) {
    absl::StatusOr<StoreLease> store = Store();
    if (store.ok()) {
      for (RunStatus s : {RunStatus::kQueued, RunStatus::kRunning}) {
        absl::StatusOr<int64_t> n = (*store)->CountRuns(s);
        if (n.ok()) {
          options_.metrics->Set("backflow_queue_depth", {std::string(RunStatusName(s))},
                                static_cast<double>(*n));
        }
      }
    }
    r.body = options_.metrics->Render();
  }
  return r;
}

HttpResponse ApiService::OpenApi(Call&) { return Json(200, OpenApiJson()); }

HttpResponse ApiService::Catalog(Call&) {
  return Json(200, CatalogJson(options_.registry->sources(), options_.registry->destinations()));
}

HttpResponse ApiService::ListRuns(Call& call) {
  RunFilter f;
  if (auto bad = PageLimit(call, 50, f.limit)) return *bad;
  if (auto it = call.query.find("cursor"); it != call.query.end()) {
    absl::StatusOr<int64_t> cursor = ParseId(it->second, "cursor");
    if (!cursor.ok()) {
      return ErrorResponse(422, "invalid", "cursor is not one this API returned",
                           "pass next_cursor from the previous page", "cursor");
    }
    f.before_id = *cursor;
  }
  if (auto it = call.query.find("mapping"); it != call.query.end()) f.mapping = it->second;
  if (auto it = call.query.find("model"); it != call.query.end()) f.model = it->second;
  if (auto it = call.query.find("status"); it != call.query.end()) {
    f.status = ParseRunStatus(it->second).value();  // validated against the enum above
  }
  absl::StatusOr<StoreLease> store = Store();
  if (!store.ok()) return FromStatus(store.status());
  // One more than the page tells whether there is a next page.
  ++f.limit;
  absl::StatusOr<std::vector<RunInfo>> runs = (*store)->ListRuns(f);
  if (!runs.ok()) {
    store->Discard();
    return FromStatus(runs.status());
  }
  bool more = static_cast<int>(runs->size()) == f.limit;
  if (more) runs->pop_back();
  JsonWriter w;
  w.BeginObject().Key("runs").BeginArray();
  for (const RunInfo& r : *runs) WriteRun(w, r);
  w.EndArray().Key("next_cursor");
  if (more) {
    w.String(std::to_string(runs->back().id));
  } else {
    w.Null();
  }
  w.EndObject();
  return Json(200, w.Release());
}

HttpResponse ApiService::GetRun(Call& call) {
  int64_t id = 0;
  if (auto bad = RunIdParam(call, id)) return *bad;
  absl::StatusOr<StoreLease> store = Store();
  if (!store.ok()) return FromStatus(store.status());
  absl::StatusOr<RunInfo> run = (*store)->GetRun(id);
  if (!run.ok()) return RunError(run.status(), id);
  return Json(200, RunJson(*run));
}

HttpResponse ApiService::GetRunRecords(Call& call) {
  int64_t id = 0;
  if (auto bad = RunIdParam(call, id)) return *bad;
  int limit = 100;
  if (auto bad = PageLimit(call, 100, limit)) return *bad;
  std::string outcome = call.query.count("outcome") ? call.query["outcome"] : "";
  absl::StatusOr<StoreLease> store = Store();
  if (!store.ok()) return FromStatus(store.status());
  absl::StatusOr<RunInfo> run = (*store)->GetRun(id);
  if (!run.ok()) return RunError(run.status(), id);
  absl::StatusOr<std::vector<RunRecord>> records = (*store)->GetRunRecords(id, outcome, limit);
  if (!records.ok()) return FromStatus(records.status());
  JsonWriter w;
  w.BeginObject();
  w.Key("run_id").Int(id);
  w.Key("records").BeginArray();
  for (const RunRecord& r : *records) {
    w.BeginObject();
    w.Key("key").String(r.key);
    w.Key("outcome").String(r.outcome);
    w.Key("change");
    if (r.change.empty()) {
      w.Null();
    } else {
      w.String(r.change);
    }
    w.Key("error").String(r.error);
    w.Key("error_class").String(r.error_class);
    w.Key("payload");
    if (r.payload.empty() || !nlohmann::json::accept(r.payload)) {
      w.String(r.payload);
    } else {
      w.Raw(r.payload);
    }
    w.Key("recommended_action").String(r.recommended_action);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return Json(200, w.Release());
}

HttpResponse ApiService::CancelRun(Call& call) {
  int64_t id = 0;
  if (auto bad = RunIdParam(call, id)) return *bad;
  absl::StatusOr<StoreLease> store = Store();
  if (!store.ok()) return FromStatus(store.status());
  absl::StatusOr<RunInfo> run = (*store)->CancelRun(id, options_.now());
  if (!run.ok()) return RunError(run.status(), id);
  return Json(202, RunJson(*run));
}

HttpResponse ApiService::TriggerMapping(Call& call) {
  std::shared_ptr<const Workspace> ws = options_.workspace();
  const MappingConfig* m = ws->FindMapping(call.path["name"]);
  if (m == nullptr) {
    return ErrorResponse(404, "not_found", fmt::format("no mapping \"{}\"", call.path["name"]),
                         "list mappings with GET /api/v1/mappings");
  }
  if (!m->enabled) {
    return ErrorResponse(409, "conflict", fmt::format("mapping \"{}\" is disabled", m->name),
                         fmt::format("enable it first (enabled: true in the workspace)"));
  }
  return Enqueue(call, m->model, {m->name});
}

HttpResponse ApiService::TriggerModel(Call& call) {
  std::shared_ptr<const Workspace> ws = options_.workspace();
  const ModelConfig* model = ws->FindModel(call.path["name"]);
  if (model == nullptr) {
    return ErrorResponse(404, "not_found", fmt::format("no model \"{}\"", call.path["name"]),
                         "list models with GET /api/v1/models");
  }
  std::vector<std::string> mappings;
  for (const MappingConfig& m : ws->mappings) {
    if (m.model == model->name && m.enabled) mappings.push_back(m.name);
  }
  if (mappings.empty()) {
    return ErrorResponse(409, "conflict",
                         fmt::format("model \"{}\" has no enabled mapping to run", model->name),
                         "add a mapping for it, or enable one");
  }
  return Enqueue(call, model->name, mappings);
}

HttpResponse ApiService::Enqueue(Call& call, const std::string& model,
                                 const std::vector<std::string>& mappings) {
  std::string field;
  absl::StatusOr<bool> full_resync = ParseTriggerBody(call.request.body, field);
  if (!full_resync.ok()) {
    bool malformed = field.empty() && call.request.body.find('{') == std::string::npos;
    return ErrorResponse(
        malformed || Msg(full_resync.status()).find("valid JSON") != std::string_view::npos ? 400
                                                                                            : 422,
        malformed ? "bad_request" : "invalid", Msg(full_resync.status()), "", field);
  }
  std::shared_ptr<const Workspace> ws = options_.workspace();
  absl::StatusOr<StoreLease> store = Store();
  if (!store.ok()) return FromStatus(store.status());
  std::vector<RunInfo> runs;
  const std::string requested_at = FormatIso8601(absl::ToChronoTime(options_.now()));
  for (const std::string& name : mappings) {
    const MappingConfig* m = ws->FindMapping(name);
    RunInfo r;
    r.mapping = name;
    r.model = model;
    r.destination = m ? m->destination : "";
    r.trigger = "api";
    r.full_resync = *full_resync;
    r.requested_at = requested_at;
    runs.push_back(std::move(r));
  }
  // A mapping already queued or running is not queued twice (checked in the
  // store's transaction: two clicks at once queue one run).
  absl::StatusOr<StateStore::EnqueueOutcome> queued = (*store)->EnqueueRunsUnlessActive(runs);
  if (!queued.ok()) return FromStatus(queued.status());
  if (queued->active) {
    const RunInfo& r = *queued->active;
    return ErrorResponse(409, "conflict",
                         fmt::format("mapping \"{}\" already has run {} {}", r.mapping, r.id,
                                     RunStatusName(r.status)),
                         fmt::format("follow it with GET /api/v1/runs/{}, or cancel it with POST "
                                     "/api/v1/runs/{}/cancel",
                                     r.id, r.id));
  }
  const std::vector<int64_t>& ids = queued->ids;
  if (options_.wake_workers) options_.wake_workers();
  JsonWriter w;
  w.BeginObject();
  w.Key("request_id").Int(ids.front());
  w.Key("runs").BeginArray();
  for (int64_t id : ids) {
    absl::StatusOr<RunInfo> run = (*store)->GetRun(id);
    if (run.ok()) WriteRun(w, *run);
  }
  w.EndArray();
  w.EndObject();
  HttpResponse r = Json(202, w.Release());
  r.headers.emplace_back("Location", fmt::format("/api/v1/runs/{}", ids.front()));
  return r;
}

// A JSON object body with only `allowed` string/integer members; on error,
// the response to send.
std::optional<HttpResponse> ParseSmallBody(const std::string& body,
                                           const std::map<std::string, std::string>& allowed,
                                           nlohmann::json& out) {
  out = nlohmann::json::object();
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) return std::nullopt;
  out = nlohmann::json::parse(body, nullptr, false);
  if (out.is_discarded()) {
    return ErrorResponse(400, "bad_request", "the request body is not valid JSON");
  }
  if (!out.is_object()) {
    return ErrorResponse(422, "invalid", "the request body must be a JSON object");
  }
  for (auto it = out.begin(); it != out.end(); ++it) {
    auto spec = allowed.find(it.key());
    if (spec == allowed.end()) {
      std::vector<std::string> names;
      for (const auto& [name, type] : allowed) names.push_back(name);
      return ErrorResponse(422, "invalid", fmt::format("unknown field \"{}\"", it.key()),
                           fmt::format("known fields: {}", fmt::join(names, ", ")), it.key());
    }
    bool ok = spec->second == "integer" ? it.value().is_number_integer() : it.value().is_string();
    if (!ok) {
      return ErrorResponse(422, "invalid",
                           fmt::format("{} must be a{} {}", it.key(),
                                       spec->second == "integer" ? "n" : "", spec->second),
                           "", it.key());
    }
  }
  return std::nullopt;
}

HttpResponse ApiService::TestConnection(Call& call, const std::string& kind) {
  std::shared_ptr<const Workspace> ws = options_.workspace();
  const std::string& name = call.path["name"];
  bool exists =
      kind == "source" ? ws->FindSource(name) != nullptr : ws->FindDestination(name) != nullptr;
  if (!exists) {
    return ErrorResponse(404, "not_found", fmt::format("no {} \"{}\"", kind, name),
                         fmt::format("list them with GET /api/v1/{}s", kind));
  }
  absl::StatusOr<ops::ConnectionCheck> check =
      ops::CheckConnection(*ws, *options_.registry, options_.env, name);
  if (!check.ok()) return FromStatus(check.status());
  JsonWriter w;
  w.BeginObject();
  w.Key("name").String(check->name);
  w.Key("kind").String(check->kind);
  w.Key("type").String(check->type);
  w.Key("ok").Bool(check->status.ok());
  w.Key("duration_s").Double(check->duration_s);
  w.Key("error");
  if (check->status.ok()) {
    w.Null();
  } else {
    w.String(Msg(check->status));
  }
  w.EndObject();
  return Json(200, w.Release());
}

HttpResponse ApiService::PreviewModel(Call& call) {
  nlohmann::json body;
  if (auto bad = ParseSmallBody(call.request.body,
                                {{"sql", "string"},
                                 {"source", "string"},
                                 {"primary_key", "string"},
                                 {"limit", "integer"}},
                                body)) {
    return *bad;
  }
  std::shared_ptr<const Workspace> ws = options_.workspace();
  const std::string& name = call.path["name"];
  const ModelConfig* model = ws->FindModel(name);
  if (body.contains("sql") && call.read_only) {
    return ErrorResponse(403, "forbidden",
                         "previewing SQL given in the request runs it on the warehouse; a "
                         "read-only token may only preview saved models",
                         "use a token created without --read-only", "sql");
  }
  if (model == nullptr && !(body.contains("sql") && body.contains("source"))) {
    return ErrorResponse(404, "not_found", fmt::format("no model \"{}\"", name),
                         "give sql and source in the body to preview a model not saved yet");
  }
  std::string sql = body.value("sql", model ? model->sql : "");
  std::string source = body.value("source", model ? model->source : "");
  std::string primary_key = body.value("primary_key", model ? model->primary_key : "");
  int limit = body.value("limit", 10);
  if (limit < 1 || limit > 100) {
    return ErrorResponse(422, "invalid", "limit must be from 1 to 100", "", "limit");
  }
  if (sql.find_first_not_of(" \t\r\n") == std::string::npos) {
    return ErrorResponse(422, "invalid", "sql is empty", "", "sql");
  }
  absl::StatusOr<ops::PreviewResult> preview =
      ops::Preview(*ws, *options_.registry, options_.env, source, sql, primary_key, limit);
  if (!preview.ok()) {
    if (preview.status().code() == absl::StatusCode::kNotFound) {
      return ErrorResponse(422, "invalid", Msg(preview.status()), "", "source");
    }
    return FromStatus(preview.status());
  }
  if (!preview->status.ok()) {
    return ErrorResponse(
        422, "query_failed",
        fmt::format("the query failed on source \"{}\": {}", source, Msg(preview->status)),
        "fix the SQL and preview again", "sql");
  }
  JsonWriter w;
  w.BeginObject();
  w.Key("model").String(name);
  w.Key("source").String(source);
  w.Key("sql").String(sql);
  w.Key("primary_key").String(primary_key);
  w.Key("columns").BeginArray();
  for (const Column& c : preview->schema) {
    w.BeginObject();
    w.Key("name").String(c.name);
    w.Key("type").String(ValueTypeName(c.type));
    w.Key("source_type").String(c.source_type);
    w.Key("is_key").Bool(c.name == primary_key);
    w.EndObject();
  }
  w.EndArray();
  w.Key("rows").BeginArray();
  for (const Row& r : preview->rows) {
    std::string text = "[";
    for (size_t i = 0; i < r.size(); ++i) {
      if (i > 0) text += ",";
      r[i].AppendJson(text);
    }
    w.Raw(text + "]");
  }
  w.EndArray();
  w.Key("key_found").Bool(preview->has_key);
  if (!preview->has_key) {
    w.Key("warning").String(fmt::format(
        "the unique identifier column \"{}\" is not in the result; a model needs it", primary_key));
  }
  w.EndObject();
  return Json(200, w.Release());
}

HttpResponse ApiService::TestMapping(Call& call) {
  nlohmann::json body;
  if (auto bad = ParseSmallBody(call.request.body, {{"record_key", "string"}}, body)) return *bad;
  std::shared_ptr<const Workspace> ws = options_.workspace();
  std::optional<std::string> key;
  if (body.contains("record_key")) key = body["record_key"].get<std::string>();
  absl::StatusOr<ops::MappingTestResult> t =
      ops::TestMapping(*ws, *options_.registry, options_.env, call.path["name"], key);
  if (!t.ok()) {
    return t.status().code() == absl::StatusCode::kNotFound
               ? ErrorResponse(404, "not_found", Msg(t.status()),
                               "list mappings with GET /api/v1/mappings")
               : FromStatus(t.status());
  }
  if (!t->status.ok()) {
    bool no_row = t->status.code() == absl::StatusCode::kNotFound;
    return ErrorResponse(422, no_row ? "no_record" : "query_failed", Msg(t->status),
                         no_row ? "check the key, or omit record_key to use the first row"
                                : "check the model with POST /api/v1/models/{name}/preview",
                         no_row ? "record_key" : "");
  }
  JsonWriter w;
  w.BeginObject();
  w.Key("mapping").String(call.path["name"]);
  w.Key("key").String(t->key);
  w.Key("row").Raw(t->row_json);
  w.Key("payload").Raw(t->payload_json);
  w.Key("error");
  if (t->mapped.ok()) {
    w.Null();
  } else {
    w.String(Msg(t->mapped));
  }
  w.EndObject();
  return Json(200, w.Release());
}

namespace {

// One workspace object as the API shows it (secret settings masked); null
// when `kind` has no object named `name`.
ojson ObjectJson(const Workspace& ws, const Registry& registry, const std::string& kind,
                 const std::string& name) {
  ojson j;
  if (kind == "sources") {
    const SourceConfig* s = ws.FindSource(name);
    if (s != nullptr) {
      const SourceDefinition* def = registry.FindSource(s->type);
      j["name"] = s->name;
      j["type"] = s->type;
      j["settings"] = MaskedSettings(s->settings, def ? def->settings : std::vector<SettingSpec>{});
    }
  } else if (kind == "models") {
    const ModelConfig* m = ws.FindModel(name);
    if (m != nullptr) {
      j["name"] = m->name;
      j["source"] = m->source;
      j["sql"] = m->sql;
      j["primary_key"] = m->primary_key;
      j["schedule"] = ScheduleJson(m->schedule);
      ojson mappings = ojson::array();
      for (const MappingConfig& mc : ws.mappings) {
        if (mc.model == m->name) mappings.push_back(mc.name);
      }
      j["mappings"] = mappings;
    }
  } else if (kind == "destinations") {
    const DestinationConfig* d = ws.FindDestination(name);
    if (d != nullptr) {
      const DestinationDefinition* def = registry.FindDestination(d->type);
      j["name"] = d->name;
      j["type"] = d->type;
      j["settings"] = MaskedSettings(d->settings, def ? def->settings : std::vector<SettingSpec>{});
    }
  } else {
    const MappingConfig* m = ws.FindMapping(name);
    if (m != nullptr) {
      j["name"] = m->name;
      j["model"] = m->model;
      j["destination"] = m->destination;
      j["action"] = m->action;
      j["records"] = std::string(RecordSelectionName(m->records));
      ojson fields = ojson::object();
      for (const MappedField& f : m->fields) fields[f.field] = f.value;
      j["fields"] = fields;
      j["enabled"] = m->enabled;
      j["batch_size"] = m->batch_size ? ojson(*m->batch_size) : ojson(nullptr);
      j["links"] = {{"runs", fmt::format("/api/v1/runs?mapping={}", m->name)}};
    }
  }
  return j;
}

}  // namespace

HttpResponse ApiService::ListObjects(Call&, const std::string& kind) {
  // One snapshot of the workspace for the whole list.
  std::shared_ptr<const Workspace> ws = options_.workspace();
  ojson items = ojson::array();
  auto add = [&](const std::string& name) {
    items.push_back(ObjectJson(*ws, *options_.registry, kind, name));
  };
  if (kind == "sources") {
    for (const SourceConfig& s : ws->sources) add(s.name);
  } else if (kind == "models") {
    for (const ModelConfig& m : ws->models) add(m.name);
  } else if (kind == "destinations") {
    for (const DestinationConfig& d : ws->destinations) add(d.name);
  } else {
    for (const MappingConfig& m : ws->mappings) add(m.name);
  }
  ojson out;
  out[kind] = items;
  return Json(200, out);
}

HttpResponse ApiService::GetObject(Call& call, const std::string& kind) {
  const std::string& name = call.path["name"];
  ojson j = ObjectJson(*options_.workspace(), *options_.registry, kind, name);
  if (j.is_null()) {
    return ErrorResponse(404, "not_found",
                         fmt::format("no {} \"{}\"", kind.substr(0, kind.size() - 1), name),
                         fmt::format("list them with GET /api/v1/{}", kind));
  }
  return Json(200, j);
}

}  // namespace backflow::api
