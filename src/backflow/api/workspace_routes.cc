#include "backflow/api/workspace_routes.h"

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "backflow/common/crypto.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/config/workspace_editor.h"
#include "backflow/secrets/secret_box.h"
#include "backflow/secrets/secret_store.h"
#include "backflow/secrets/workspace_secrets.h"
#include "backflow/state/open_state_store.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow::api {
namespace {

using ojson = nlohmann::ordered_json;

constexpr EntryKind kKinds[] = {EntryKind::kSource, EntryKind::kModel, EntryKind::kDestination,
                                EntryKind::kMapping};

std::string Dump(const ojson& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

HttpResponse JsonReply(int status, const ojson& body) {
  HttpResponse r;
  r.status = status;
  r.body = Dump(body);
  return r;
}

HttpResponse WithEtag(HttpResponse r, const std::string& etag) {
  if (etag.empty()) return r;
  std::erase_if(r.headers, [](const auto& h) { return h.first == "ETag"; });
  r.headers.emplace_back("ETag", etag);
  return r;
}

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
      return 422;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:  // a secret key that does not match the secrets
      return 409;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return 503;
    default:
      return 500;
  }
}

std::string CodeOf(int http_status) {
  switch (http_status) {
    case 404:
      return "not_found";
    case 409:
      return "conflict";
    case 422:
      return "invalid";
    case 503:
      return "unavailable";
    default:
      return "internal";
  }
}

HttpResponse FromStatus(const absl::Status& status, std::string_view hint = "") {
  int http = HttpStatusOf(status.code());
  return ErrorResponse(http, CodeOf(http), std::string(status.message()), hint);
}

std::string Plural(std::string_view noun, size_t n) {
  return n == 1 ? std::string(noun) : std::string(noun) + "s";
}

std::string QuotedList(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? " and " : ", ";
    out += "\"" + names[i] + "\"";
  }
  return out;
}

// 422 with the loader's diagnostics, errors first: what `validate` prints.
HttpResponse Invalid(const std::vector<Diagnostic>& diagnostics) {
  const Diagnostic* first = nullptr;
  for (const Diagnostic& d : diagnostics) {
    if (d.is_error()) {
      first = &d;
      break;
    }
  }
  ojson error = {{"code", "invalid"}};
  error["message"] = first ? first->message : "the workspace is invalid";
  if (first && !first->hint.empty()) error["hint"] = first->hint;
  if (first && !first->path.empty()) error["field"] = first->path;
  ojson all = ojson::array();
  for (const Diagnostic& d : diagnostics) {
    all.push_back({{"severity", d.is_error() ? "error" : "warning"},
                   {"path", d.path},
                   {"message", d.message},
                   {"hint", d.hint},
                   {"line", d.line},
                   {"column", d.column},
                   {"text", d.ToString()}});
  }
  error["errors"] = all;
  return JsonReply(422, {{"error", error}});
}

// The request body as a JSON object, or the error reply. Parse errors give
// the position only: the body may hold a secret.
std::optional<HttpResponse> ParseObjectBody(const std::string& text, ojson& out) {
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return ErrorResponse(400, "bad_request", "the request body is empty",
                         "send a JSON object (Content-Type: application/json)");
  }
  try {
    out = ojson::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    return ErrorResponse(400, "bad_request",
                         fmt::format("the request body is not valid JSON (at byte {})", e.byte),
                         "send a JSON object (Content-Type: application/json)");
  }
  if (!out.is_object()) {
    return ErrorResponse(422, "invalid", "the request body must be a JSON object");
  }
  return std::nullopt;
}

std::string JsonTypeName(const ojson& v) {
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  return "null";
}

enum class Shape {
  kString,
  kBool,
  kInt,
  kObject,
  kStringOrObject,
  kStringOrInt,
  kStringList,
  kStringMap
};

struct KeyRule {
  const char* key;
  Shape shape;
};

const std::vector<KeyRule>& Rules(EntryKind kind) {
  static const std::vector<KeyRule> kSource = {
      {"name", Shape::kString}, {"type", Shape::kString}, {"description", Shape::kString}};
  static const std::vector<KeyRule> kModel = {{"name", Shape::kString},
                                              {"source", Shape::kString},
                                              {"sql", Shape::kString},
                                              {"primary_key", Shape::kString},
                                              {"description", Shape::kString},
                                              {"schedule", Shape::kStringOrObject},
                                              {"change_detection", Shape::kString}};
  static const std::vector<KeyRule> kDestination = {{"name", Shape::kString},
                                                    {"type", Shape::kString},
                                                    {"description", Shape::kString},
                                                    {"settings", Shape::kObject}};
  static const std::vector<KeyRule> kMapping = {
      {"name", Shape::kString},        {"model", Shape::kString},
      {"destination", Shape::kString}, {"action", Shape::kString},
      {"records", Shape::kString},     {"description", Shape::kString},
      {"fields", Shape::kStringMap},   {"enabled", Shape::kBool},
      {"batch_size", Shape::kInt},     {"max_deletes", Shape::kStringOrInt},
      {"alerts", Shape::kStringList}};
  switch (kind) {
    case EntryKind::kSource:
      return kSource;
    case EntryKind::kModel:
      return kModel;
    case EntryKind::kDestination:
      return kDestination;
    case EntryKind::kMapping:
      return kMapping;
  }
  return kSource;
}

// JSON types of the members the YAML would take loosely (a quoted "true" for
// a boolean, a number for a name); unknown members and values are left to
// the loader, which reports them as `validate` does. Null members (removals
// in a patch) pass.
std::optional<HttpResponse> CheckTypes(EntryKind kind, const ojson& body,
                                       const std::string& prefix) {
  auto bad = [&](const std::string& field, const std::string& what, const ojson& v) {
    return ErrorResponse(422, "invalid",
                         fmt::format("{} must be {}, not {}", field.substr(prefix.size() + 1), what,
                                     JsonTypeName(v)),
                         "", field);
  };
  for (const KeyRule& rule : Rules(kind)) {
    auto it = body.find(rule.key);
    if (it == body.end() || it->is_null()) continue;
    const ojson& v = *it;
    const std::string field = prefix + "." + rule.key;
    switch (rule.shape) {
      case Shape::kString:
        if (!v.is_string()) return bad(field, "a string", v);
        break;
      case Shape::kBool:
        if (!v.is_boolean()) return bad(field, "true or false", v);
        break;
      case Shape::kInt:
        if (!v.is_number_integer()) return bad(field, "a whole number", v);
        break;
      case Shape::kObject:
        if (!v.is_object()) return bad(field, "an object", v);
        break;
      case Shape::kStringOrObject:
        if (!v.is_string() && !v.is_object()) return bad(field, "a string or an object", v);
        break;
      case Shape::kStringOrInt:
        if (!v.is_string() && !v.is_number_integer()) {
          return bad(field, "a percentage like \"20%\" or a whole number", v);
        }
        break;
      case Shape::kStringList:
        if (!v.is_array()) return bad(field, "a list of names", v);
        for (size_t i = 0; i < v.size(); ++i) {
          if (!v[i].is_string()) {
            return bad(fmt::format("{}[{}]", field, i), "a string", v[i]);
          }
        }
        break;
      case Shape::kStringMap:
        if (!v.is_object()) return bad(field, "an object of field: column", v);
        for (auto f = v.begin(); f != v.end(); ++f) {
          if (!f.value().is_string() && !f.value().is_null()) {
            return bad(field + "." + f.key(), "a model column or an expression (a string)",
                       f.value());
          }
        }
        break;
    }
  }
  return std::nullopt;
}

// A source's settings are members of the entry in the file; the API also
// takes them under "settings", as GET shows them.
std::optional<HttpResponse> FlattenSourceSettings(ojson& body, const std::string& prefix) {
  auto it = body.find("settings");
  if (it == body.end()) return std::nullopt;
  if (it->is_null()) {
    body.erase("settings");
    return std::nullopt;
  }
  if (!it->is_object()) {
    return ErrorResponse(422, "invalid",
                         fmt::format("settings must be an object, not {}", JsonTypeName(*it)), "",
                         prefix + ".settings");
  }
  ojson settings = *it;
  body.erase("settings");
  for (auto s = settings.begin(); s != settings.end(); ++s) {
    if (body.contains(s.key())) {
      return ErrorResponse(422, "invalid",
                           fmt::format("{} is given twice, in settings and beside it", s.key()),
                           "give each setting once", prefix + "." + s.key());
    }
    body[s.key()] = s.value();
  }
  return std::nullopt;
}

// Settings the catalog marks secret take only references through the API.
std::optional<HttpResponse> CheckSecretSettings(EntryKind kind, const ojson& body,
                                                const ojson& entry, const Registry& registry,
                                                const std::string& prefix) {
  if (kind != EntryKind::kSource && kind != EntryKind::kDestination) return std::nullopt;
  std::string type = entry.contains("type") && entry["type"].is_string()
                         ? entry["type"].get<std::string>()
                         : std::string();
  const std::vector<SettingSpec>* specs = nullptr;
  if (kind == EntryKind::kSource) {
    if (const SourceDefinition* d = registry.FindSource(type)) specs = &d->settings;
  } else if (const DestinationDefinition* d = registry.FindDestination(type)) {
    specs = &d->settings;
  }
  if (specs == nullptr) return std::nullopt;  // an unknown type: the loader says so
  const ojson* given = &body;
  std::string at = prefix + ".";
  if (kind == EntryKind::kDestination) {
    auto it = body.find("settings");
    if (it == body.end() || !it->is_object()) return std::nullopt;
    given = &*it;
    at = prefix + ".settings.";
  }
  for (const SettingSpec& spec : *specs) {
    if (!spec.secret) continue;
    auto it = given->find(spec.key);
    if (it == given->end() || it->is_null()) continue;
    if (it->is_string() && IsPureSecretReference(it->get_ref<const std::string&>())) continue;
    return ErrorResponse(
        422, "invalid",
        fmt::format("{} is a secret setting: the API takes a reference here, ${{secret:NAME}} or "
                    "${{env:NAME}}, never the value (it would be written in clear into the "
                    "workspace file)",
                    spec.key),
        fmt::format("store the value first with PUT /api/v1/secrets/NAME and body "
                    "{{\"value\": \"...\"}} (it is kept encrypted), then send \"{}\": "
                    "\"${{secret:NAME}}\"",
                    spec.key),
        at + spec.key);
  }
  return std::nullopt;
}

std::string StringMember(const ojson& e, const char* key) {
  auto it = e.find(key);
  return it != e.end() && it->is_string() ? it->get<std::string>() : "";
}

// A 409 when other entries use entry `name` of `kind`.
std::optional<HttpResponse> InUse(const WorkspaceDocument& doc, EntryKind kind,
                                  const std::string& name) {
  std::vector<std::string> users;
  std::string user_noun;
  auto collect = [&](EntryKind user_kind, const char* member) {
    user_noun = EntryNoun(user_kind);
    for (const ojson& e : doc.Entries(user_kind)) {
      if (e.is_object() && StringMember(e, member) == name)
        users.push_back(StringMember(e, "name"));
    }
  };
  switch (kind) {
    case EntryKind::kSource:
      collect(EntryKind::kModel, "source");
      break;
    case EntryKind::kModel:
      collect(EntryKind::kMapping, "model");
      break;
    case EntryKind::kDestination:
      collect(EntryKind::kMapping, "destination");
      break;
    case EntryKind::kMapping: {
      user_noun = "alert";
      auto alerts = doc.json().find("alerts");
      if (alerts == doc.json().end() || !alerts->is_array()) break;
      for (const ojson& a : *alerts) {
        if (!a.is_object() || !a.contains("mappings") || !a["mappings"].is_array()) continue;
        for (const ojson& m : a["mappings"]) {
          if (m == name) users.push_back(StringMember(a, "name"));
        }
      }
      break;
    }
  }
  if (users.empty()) return std::nullopt;
  return ErrorResponse(409, "conflict",
                       fmt::format("{} \"{}\" is used by {} {}", EntryNoun(kind), name,
                                   Plural(user_noun, users.size()), QuotedList(users)),
                       fmt::format("delete {} first, or change {} to use another {}",
                                   users.size() == 1 ? "it" : "them",
                                   users.size() == 1 ? "it" : "them", EntryNoun(kind)));
}

// The paths in `doc` whose values reference ${secret:name}.
void SecretReferences(const ojson& v, const std::string& path, const std::string& reference,
                      std::vector<std::string>& out) {
  if (v.is_string()) {
    if (v.get_ref<const std::string&>().find(reference) != std::string::npos) out.push_back(path);
  } else if (v.is_array()) {
    for (size_t i = 0; i < v.size(); ++i) {
      SecretReferences(v[i], fmt::format("{}[{}]", path, i), reference, out);
    }
  } else if (v.is_object()) {
    for (auto it = v.begin(); it != v.end(); ++it) {
      SecretReferences(it.value(), path.empty() ? it.key() : path + "." + it.key(), reference, out);
    }
  }
}

// ------------------------------------------------------------ schemas

ojson NameSchema() {
  return {{"type", "string"},
          {"pattern", "^[A-Za-z][A-Za-z0-9_-]{0,127}$"},
          {"description", "unique within its kind"}};
}

ojson EntrySchema(EntryKind kind) {
  ojson s = {{"type", "object"}};
  ojson p = ojson::object();
  p["name"] = NameSchema();
  p["description"] = {{"type", "string"}};
  switch (kind) {
    case EntryKind::kSource:
      p["type"] = {{"type", "string"}, {"description", "a source type of GET /api/v1/catalog"}};
      p["settings"] = {{"type", "object"},
                       {"description",
                        "the type's settings; they may also be given beside name and type, as in "
                        "the YAML file. Secret settings take ${secret:NAME} or ${env:NAME}."}};
      s["required"] = {"name", "type"};
      s["additionalProperties"] = true;
      break;
    case EntryKind::kModel:
      p["source"] = {{"type", "string"}};
      p["sql"] = {{"type", "string"}};
      p["primary_key"] = {{"type", "string"}};
      p["change_detection"] = {
          {"enum", {"local", "warehouse"}},
          {"description", "local (default) or warehouse: see the source type's change_detection"}};
      p["schedule"] = {
          {"oneOf",
           {{{"const", "manual"}},
            {{"type", "object"},
             {"additionalProperties", false},
             {"properties",
              {{"every", {{"enum", {"15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"}}}},
               {"days", {{"type", "array"}, {"items", {{"type", "string"}}}}},
               {"at", {{"type", "string"}, {"description", "HH:00"}}},
               {"cron", {{"type", "string"}}},
               {"timezone", {{"type", "string"}}}}}}}}};
      s["required"] = {"name", "source", "sql", "primary_key"};
      s["additionalProperties"] = false;
      break;
    case EntryKind::kDestination:
      p["type"] = {{"type", "string"},
                   {"description", "a destination type of GET /api/v1/catalog"}};
      p["settings"] = {
          {"type", "object"},
          {"description", "the type's settings; secret ones take ${secret:NAME} or ${env:NAME}"}};
      s["required"] = {"name", "type"};
      s["additionalProperties"] = false;
      break;
    case EntryKind::kMapping: {
      p["model"] = {{"type", "string"}};
      p["destination"] = {{"type", "string"}};
      p["action"] = {{"type", "string"}};
      ojson selections = ojson::array();
      for (RecordSelection r :
           {RecordSelection::kAll, RecordSelection::kAddedOrUpdated, RecordSelection::kAdded,
            RecordSelection::kUpdated, RecordSelection::kDeleted}) {
        selections.push_back(std::string(RecordSelectionName(r)));
      }
      p["records"] = {{"enum", selections}};
      p["fields"] = {{"type", "object"},
                     {"additionalProperties", {{"type", "string"}}},
                     {"description", "destination field: model column or expression"}};
      p["enabled"] = {{"type", "boolean"}};
      p["batch_size"] = {{"type", "integer"}, {"minimum", 1}};
      p["max_deletes"] = {{"type", {"string", "integer"}}};
      p["alerts"] = {{"type", "array"}, {"items", {{"type", "string"}}}};
      s["required"] = {"name", "model", "destination", "action", "fields"};
      s["additionalProperties"] = false;
      break;
    }
  }
  s["properties"] = p;
  return s;
}

// The schema of a merge patch: no member required, null removes one.
ojson PatchSchema(EntryKind kind) {
  ojson s = EntrySchema(kind);
  s.erase("required");
  for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it) {
    it.value() = {{"anyOf", {it.value(), {{"type", "null"}}}}};
  }
  s["description"] =
      "a JSON merge patch (RFC 7396): members replace those of the object, null removes one, "
      "objects such as fields and settings merge member by member";
  return s;
}

// ------------------------------------------------------------ handlers

class WorkspaceApi {
 public:
  WorkspaceApi(const ApiOptions& options, Router& router) : options_(options), router_(router) {}

  void Decorate(const std::shared_ptr<WorkspaceApi>& self);
  void Add(const std::shared_ptr<WorkspaceApi>& self);

 private:
  enum class Op { kCreate, kUpdate, kDelete };

  std::string Path() const { return options_.workspace()->file; }
  const Registry& registry() const { return *options_.registry; }
  void Reload(bool force) const {
    if (options_.reload) options_.reload(force);
  }
  // The file's current ETag; empty when it cannot be read.
  std::string CurrentEtag() const {
    absl::StatusOr<std::string> text = ReadTextFile(Path());
    return text.ok() ? WorkspaceEtag(*text) : "";
  }

  HttpResponse Unreadable(const absl::Status& status) const {
    return ErrorResponse(503, "unavailable",
                         fmt::format("cannot read the workspace file: {}", status.message()),
                         "check that the file exists and the service may read it");
  }
  std::optional<HttpResponse> CheckIfMatch(const Call& call, const std::string& etag) const;
  HttpResponse Change(Call& call, EntryKind kind, Op op, const std::optional<ojson>& patch);
  HttpResponse View(EntryKind kind, const std::string& name, const std::string& text, int status);
  HttpResponse GetWorkspace(Call& call);
  HttpResponse ListSecrets(Call& call);
  HttpResponse PutSecret(Call& call);
  HttpResponse DeleteSecret(Call& call);

  ApiOptions options_;
  Router& router_;
  // The GET handler of one object of each kind, before decoration.
  std::map<EntryKind, std::function<HttpResponse(Call&)>> get_one_;
  std::mutex write_mu_;  // one change to the file at a time
};

std::optional<HttpResponse> WorkspaceApi::CheckIfMatch(const Call& call,
                                                       const std::string& etag) const {
  std::string header = call.request.Header("if-match");
  if (header.find_first_not_of(" \t") == std::string::npos) {
    return WithEtag(
        ErrorResponse(428, "precondition_required",
                      "changing the workspace needs an If-Match header with the workspace "
                      "file's current ETag",
                      "read the ETag from GET /api/v1/workspace (or any GET of a source, model, "
                      "destination or mapping; it is also in this reply's ETag header) and send "
                      "it as If-Match, so that a change made meanwhile is never overwritten"),
        etag);
  }
  size_t pos = 0;
  while (pos <= header.size()) {
    size_t comma = header.find(',', pos);
    if (comma == std::string::npos) comma = header.size();
    std::string tag = header.substr(pos, comma - pos);
    size_t b = tag.find_first_not_of(" \t");
    size_t e = tag.find_last_not_of(" \t");
    tag = b == std::string::npos ? "" : tag.substr(b, e - b + 1);
    // Strong comparison: a weak tag never matches; quotes may be left out.
    if (tag == "*" || tag == etag || "\"" + tag + "\"" == etag) return std::nullopt;
    pos = comma + 1;
  }
  return WithEtag(ErrorResponse(412, "precondition_failed",
                                "the workspace file changed since the ETag in If-Match was read",
                                "read it again (the current ETag is in this reply's ETag "
                                "header), apply your change to what it holds now, and retry"),
                  etag);
}

HttpResponse WorkspaceApi::View(EntryKind kind, const std::string& name, const std::string& text,
                                int status) {
  static const HttpRequest kNoRequest;
  if (auto get = get_one_.find(kind); get != get_one_.end()) {
    Call call{kNoRequest, {{"name", name}}, {}, ""};
    HttpResponse r = get->second(call);
    if (r.status == 200) {
      r.status = status;
      return r;
    }
  }
  // No reload wired (or it failed): the entry as written, secrets masked.
  absl::StatusOr<WorkspaceDocument> doc = WorkspaceDocument::Parse(text);
  if (doc.ok()) {
    if (std::optional<size_t> i = doc->Find(kind, name)) {
      return JsonReply(
          status, ExportDocument(*doc, nullptr, registry())[std::string(SectionKey(kind))][*i]);
    }
  }
  return JsonReply(status, {{"name", name}});
}

HttpResponse WorkspaceApi::Change(Call& call, EntryKind kind, Op op,
                                  const std::optional<ojson>& patch) {
  const std::string path = Path();
  const std::string section(SectionKey(kind));
  const std::string noun(EntryNoun(kind));
  ojson body = ojson::object();
  if (patch) {
    body = *patch;
  } else if (op != Op::kDelete) {
    if (std::optional<HttpResponse> bad = ParseObjectBody(call.request.body, body)) return *bad;
  }

  std::lock_guard<std::mutex> lock(write_mu_);
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return Unreadable(text.status());
  const std::string etag = WorkspaceEtag(*text);
  if (std::optional<HttpResponse> refused = CheckIfMatch(call, etag)) return *refused;
  absl::StatusOr<WorkspaceDocument> doc = WorkspaceDocument::Parse(*text);
  if (!doc.ok()) {
    // The file on disk is broken: say so as `validate` would.
    return WithEtag(Invalid(LoadWorkspaceFromString(*text, path, registry()).diagnostics), etag);
  }
  const ojson entries = doc->Entries(kind);
  const std::string name = call.path.count("name") ? call.path["name"] : "";
  std::optional<size_t> index;
  if (op != Op::kCreate) {
    index = doc->Find(kind, name);
    if (!index) {
      return WithEtag(ErrorResponse(404, "not_found", fmt::format("no {} \"{}\"", noun, name),
                                    fmt::format("list them with GET /api/v1/{}", section)),
                      etag);
    }
  }
  const std::string prefix = fmt::format("{}[{}]", section, index ? *index : entries.size());

  absl::StatusOr<WorkspaceDocument::Edit> edit;
  std::string result_name = name;
  if (op == Op::kDelete) {
    if (std::optional<HttpResponse> used = InUse(*doc, kind, name)) return WithEtag(*used, etag);
    edit = doc->Remove(kind, *index);
  } else {
    if (kind == EntryKind::kSource) {
      if (std::optional<HttpResponse> bad = FlattenSourceSettings(body, prefix)) return *bad;
    }
    if (op == Op::kCreate) {
      // Nothing to remove in a new entry: null members are left out.
      for (auto it = body.begin(); it != body.end();) {
        it = it.value().is_null() ? body.erase(it) : std::next(it);
      }
    }
    if (std::optional<HttpResponse> bad = CheckTypes(kind, body, prefix)) return *bad;
    ojson entry = op == Op::kCreate ? body : MergePatch(entries[*index], body);
    result_name = StringMember(entry, "name");
    if (result_name.empty()) {
      return ErrorResponse(422, "invalid", "\"name\" is required",
                           fmt::format("give every {} a name", noun), prefix);
    }
    if ((op == Op::kCreate || result_name != name) && doc->Find(kind, result_name)) {
      return WithEtag(
          ErrorResponse(409, "already_exists",
                        fmt::format("a {} named \"{}\" exists already", noun, result_name),
                        fmt::format("change it with PATCH /api/v1/{}/{}, or pick another name",
                                    section, result_name),
                        prefix + ".name"),
          etag);
    }
    if (std::optional<HttpResponse> bad =
            CheckSecretSettings(kind, body, entry, registry(), prefix)) {
      return *bad;
    }
    if (op == Op::kUpdate && entry == entries[*index]) {
      return WithEtag(View(kind, name, *text, 200), etag);  // nothing changes
    }
    edit = op == Op::kCreate ? doc->Append(kind, entry) : doc->Replace(kind, *index, entry);
  }
  if (!edit.ok()) return FromStatus(edit.status());

  // The same check as `backflow validate` (and the service's own load).
  LoadResult loaded =
      LoadWorkspaceFromString(edit->text, path, registry(), StateSecretResolverFactory());
  if (!loaded.ok()) return WithEtag(Invalid(loaded.diagnostics), etag);
  if (absl::Status written = WriteFileAtomically(path, edit->text); !written.ok()) {
    return ErrorResponse(
        503, "unavailable",
        fmt::format("the change is valid but could not be saved: {}", written.message()),
        "check that the service may write the workspace file and its folder");
  }
  Reload(/*force=*/true);

  const std::string new_etag = WorkspaceEtag(edit->text);
  HttpResponse r;
  if (op == Op::kDelete) {
    r.status = 204;
    r.content_type = "application/json";
  } else {
    r = View(kind, result_name, edit->text, op == Op::kCreate ? 201 : 200);
  }
  if (op == Op::kCreate) {
    r.headers.emplace_back("Location", fmt::format("/api/v1/{}/{}", section, result_name));
  }
  r.headers.emplace_back("X-Backflow-File-Layout", edit->layout_kept ? "kept" : "rewritten");
  return WithEtag(std::move(r), new_etag);
}

HttpResponse WorkspaceApi::GetWorkspace(Call&) {
  const std::string path = Path();
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return Unreadable(text.status());
  const std::string etag = WorkspaceEtag(*text);
  LoadResult loaded =
      LoadWorkspaceFromString(*text, path, registry(), StateSecretResolverFactory());
  ojson out;
  out["file"] = path;
  out["etag"] = etag;
  out["valid"] = loaded.ok();
  ojson diagnostics = ojson::array();
  for (const Diagnostic& d : loaded.diagnostics) {
    diagnostics.push_back({{"severity", d.is_error() ? "error" : "warning"},
                           {"path", d.path},
                           {"message", d.message},
                           {"hint", d.hint},
                           {"line", d.line},
                           {"column", d.column}});
  }
  out["diagnostics"] = diagnostics;
  absl::StatusOr<WorkspaceDocument> doc = WorkspaceDocument::Parse(*text);
  out["workspace"] =
      doc.ok() ? ExportDocument(*doc, loaded.ok() ? &loaded.workspace : nullptr, registry())
               : ojson(nullptr);
  return WithEtag(JsonReply(200, out), etag);
}

HttpResponse WorkspaceApi::ListSecrets(Call&) {
  std::shared_ptr<const Workspace> ws = options_.workspace();
  absl::StatusOr<std::unique_ptr<StateStore>> store = OpenStateStore(options_.state_url);
  if (!store.ok()) return FromStatus(absl::UnavailableError(std::string(store.status().message())));
  absl::StatusOr<std::vector<SecretInfo>> secrets = SecretStore(**store, nullptr).List();
  if (!secrets.ok()) return FromStatus(secrets.status());
  // Masking needs the values: read with the key when there is one.
  std::optional<SecretBox> box;
  if (!secrets->empty()) {
    absl::StatusOr<SecretBox> loaded = SecretBox::Load(ws->secret_key_file, false);
    if (loaded.ok()) box.emplace(*std::move(loaded));
  }
  absl::StatusOr<std::string> text = ReadTextFile(ws->file);
  ojson list = ojson::array();
  for (const SecretInfo& s : *secrets) {
    ojson item = {{"name", s.name}, {"updated_at", s.updated_at}};
    absl::StatusOr<std::string> value =
        box ? SecretStore(**store, &*box).Get(s.name)
            : absl::StatusOr<std::string>(absl::FailedPreconditionError("no secret key"));
    item["masked"] = value.ok() ? ojson(MaskSecret(*value)) : ojson(nullptr);
    if (!value.ok()) item["error"] = std::string(value.status().message());
    item["referenced"] = text.ok() && text->find("${secret:" + s.name + "}") != std::string::npos;
    list.push_back(std::move(item));
  }
  return JsonReply(200, {{"secrets", list}});
}

HttpResponse WorkspaceApi::PutSecret(Call& call) {
  const std::string name = call.path["name"];
  if (absl::Status valid = ValidateSecretName(name); !valid.ok()) {
    return ErrorResponse(422, "invalid", std::string(valid.message()), "", "name");
  }
  ojson body;
  if (std::optional<HttpResponse> bad = ParseObjectBody(call.request.body, body)) return *bad;
  for (auto it = body.begin(); it != body.end(); ++it) {
    if (it.key() != "value") {
      return ErrorResponse(422, "invalid",
                           fmt::format("unknown field \"{}\"; the only field is value", it.key()),
                           "", it.key());
    }
  }
  if (!body.contains("value")) {
    return ErrorResponse(422, "invalid", "\"value\" is required", "send {\"value\": \"...\"}",
                         "value");
  }
  if (!body["value"].is_string()) {
    return ErrorResponse(422, "invalid",
                         fmt::format("value must be a string, not {}", JsonTypeName(body["value"])),
                         "", "value");
  }
  std::string value = body["value"].get<std::string>();
  body["value"] = "";
  std::shared_ptr<const Workspace> ws = options_.workspace();
  absl::StatusOr<std::unique_ptr<StateStore>> store = OpenStateStore(options_.state_url);
  if (!store.ok()) return FromStatus(absl::UnavailableError(std::string(store.status().message())));
  absl::StatusOr<SecretBox> box = SecretBox::Load(ws->secret_key_file);
  if (!box.ok()) {
    return FromStatus(box.status(), "check BACKFLOW_SECRET_KEY or the workspace's secret_key_file");
  }
  absl::Status saved = SecretStore(**store, &*box).Set(name, value);
  const std::string masked = MaskSecret(value);
  std::fill(value.begin(), value.end(), '\0');
  if (!saved.ok()) {
    HttpResponse r = FromStatus(saved);
    if (r.status == 422) {
      ojson j = ojson::parse(r.body);
      j["error"]["field"] = "value";
      r.body = Dump(j);
    }
    return r;
  }
  // References to it resolve anew.
  Reload(/*force=*/true);
  ojson out = {{"name", name}, {"masked", masked}};
  absl::StatusOr<std::vector<SecretInfo>> list = SecretStore(**store, nullptr).List();
  if (list.ok()) {
    for (const SecretInfo& s : *list) {
      if (s.name == name) out["updated_at"] = s.updated_at;
    }
  }
  absl::StatusOr<std::string> text = ReadTextFile(ws->file);
  out["referenced"] = text.ok() && text->find("${secret:" + name + "}") != std::string::npos;
  return JsonReply(200, out);
}

HttpResponse WorkspaceApi::DeleteSecret(Call& call) {
  const std::string name = call.path["name"];
  if (absl::Status valid = ValidateSecretName(name); !valid.ok()) {
    return ErrorResponse(422, "invalid", std::string(valid.message()), "", "name");
  }
  std::shared_ptr<const Workspace> ws = options_.workspace();
  absl::StatusOr<std::string> text = ReadTextFile(ws->file);
  if (text.ok()) {
    absl::StatusOr<WorkspaceDocument> doc = WorkspaceDocument::Parse(*text);
    std::vector<std::string> users;
    if (doc.ok()) SecretReferences(doc->json(), "", "${secret:" + name + "}", users);
    if (!users.empty()) {
      return ErrorResponse(
          409, "conflict",
          fmt::format("secret \"{}\" is referenced by {}", name, fmt::join(users, ", ")),
          "remove those references from the workspace first");
    }
  }
  absl::StatusOr<std::unique_ptr<StateStore>> store = OpenStateStore(options_.state_url);
  if (!store.ok()) return FromStatus(absl::UnavailableError(std::string(store.status().message())));
  absl::Status deleted = SecretStore(**store, nullptr).Delete(name);
  if (!deleted.ok()) return FromStatus(deleted, "list them with GET /api/v1/secrets");
  Reload(/*force=*/true);
  HttpResponse r;
  r.status = 204;
  return r;
}

void WorkspaceApi::Decorate(const std::shared_ptr<WorkspaceApi>& self) {
  for (EntryKind kind : kKinds) {
    const std::string base = "/api/v1/" + std::string(SectionKey(kind));
    for (const std::string& path : {base, base + "/{name}"}) {
      Route* route = router_.FindDeclared("GET", path);
      if (route == nullptr) continue;
      std::function<HttpResponse(Call&)> inner = route->handler;
      if (path != base) get_one_[kind] = inner;
      route->handler = [self, inner](Call& call) {
        self->Reload(/*force=*/false);  // an edit of the file on disk shows at once
        return WithEtag(inner(call), self->CurrentEtag());
      };
    }
  }
}

void WorkspaceApi::Add(const std::shared_ptr<WorkspaceApi>& self) {
  const Param name_param{"name", "path", "string", "the object's name", true, {}};
  const Param if_match{"If-Match",
                       "header",
                       "string",
                       "the ETag of the workspace file the change is based on (from the ETag "
                       "header of GET /api/v1/workspace or any GET of its objects)",
                       true,
                       {}};
  const std::string object_reply = R"({"type":"object"})";
  for (EntryKind kind : kKinds) {
    const std::string section(SectionKey(kind));
    const std::string noun(EntryNoun(kind));
    router_.Add({"POST",
                 "/api/v1/" + section,
                 Access::kWrite,
                 section,
                 fmt::format("Adds a {} to the workspace file (validated like `backflow "
                             "validate`; 201 with it, and the file's new ETag).",
                             noun),
                 {if_match},
                 Dump(EntrySchema(kind)),
                 201,
                 object_reply,
                 "application/json",
                 [self, kind](Call& c) { return self->Change(c, kind, Op::kCreate, {}); }});
    router_.Add({"PATCH",
                 "/api/v1/" + section + "/{name}",
                 Access::kWrite,
                 section,
                 fmt::format("Changes a {} (JSON merge patch; validated like `backflow "
                             "validate`); only its changed lines of the file are rewritten.",
                             noun),
                 {name_param, if_match},
                 Dump(PatchSchema(kind)),
                 200,
                 object_reply,
                 "application/json",
                 [self, kind](Call& c) { return self->Change(c, kind, Op::kUpdate, {}); }});
    router_.Add(
        {"DELETE",
         "/api/v1/" + section + "/{name}",
         Access::kWrite,
         section,
         fmt::format("Removes a {} from the workspace file (409 while others use it).", noun),
         {name_param, if_match},
         "",
         204,
         "",
         "application/json",
         [self, kind](Call& c) { return self->Change(c, kind, Op::kDelete, {}); }});
  }
  for (bool enable : {true, false}) {
    router_.Add(
        {"POST",
         std::string("/api/v1/mappings/{name}/") + (enable ? "enable" : "disable"),
         Access::kWrite,
         "mappings",
         enable ? "Enables a mapping (enabled: true in the workspace file)."
                : "Disables a mapping (enabled: false in the workspace file); its "
                  "schedule no longer runs it.",
         {name_param, if_match},
         "",
         200,
         object_reply,
         "application/json",
         [self, enable](Call& c) {
           return self->Change(c, EntryKind::kMapping, Op::kUpdate, ojson{{"enabled", enable}});
         }});
  }
  router_.Add(
      {"GET",
       "/api/v1/workspace",
       Access::kRead,
       "workspace",
       "The workspace file as the service reads it: defaults filled in, ${secret:...} and "
       "${env:...} references as written, secret values masked; its diagnostics and ETag.",
       {},
       "",
       200,
       R"({"type":"object","properties":{"file":{"type":"string"},"etag":{"type":"string"},"valid":{"type":"boolean"},"diagnostics":{"type":"array","items":{"type":"object"}},"workspace":{"type":["object","null"]}}})",
       "application/json",
       [self](Call& c) { return self->GetWorkspace(c); }});
  const std::string secret_reply =
      R"({"type":"object","properties":{"name":{"type":"string"},"updated_at":{"type":"string"},"masked":{"type":["string","null"],"description":"never the value: at most its last 4 characters"},"referenced":{"type":"boolean"}}})";
  router_.Add({"GET",
               "/api/v1/secrets",
               Access::kRead,
               "secrets",
               "The secrets: names, update times and masked values (never the values).",
               {},
               "",
               200,
               R"({"type":"object","properties":{"secrets":{"type":"array","items":)" +
                   secret_reply + "}}}",
               "application/json",
               [self](Call& c) { return self->ListSecrets(c); }});
  router_.Add(
      {"PUT",
       "/api/v1/secrets/{name}",
       Access::kWrite,
       "secrets",
       "Creates or replaces a secret, kept encrypted in the state store; refer to it in the "
       "workspace as ${secret:NAME}. The value is never returned.",
       {{"name", "path", "string", "the secret's name: letters, digits and '_'", true, {}}},
       R"({"type":"object","required":["value"],"additionalProperties":false,"properties":{"value":{"type":"string","minLength":1,"writeOnly":true}}})",
       200,
       secret_reply,
       "application/json",
       [self](Call& c) { return self->PutSecret(c); }});
  router_.Add({"DELETE",
               "/api/v1/secrets/{name}",
               Access::kWrite,
               "secrets",
               "Deletes a secret (409 while the workspace refers to it).",
               {{"name", "path", "string", "the secret's name", true, {}}},
               "",
               204,
               "",
               "application/json",
               [self](Call& c) { return self->DeleteSecret(c); }});
}

}  // namespace

std::string WorkspaceEtag(std::string_view text) {
  return "\"" + HexEncode(Sha256(text)).substr(0, 32) + "\"";
}

void AddWorkspaceRoutes(Router& router, const ApiOptions& options) {
  auto api = std::make_shared<WorkspaceApi>(options, router);
  api->Decorate(api);
  api->Add(api);
}

}  // namespace backflow::api
