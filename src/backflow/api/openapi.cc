// The OpenAPI 3.1 document, generated from the route table.
#include "backflow/api/api_service.h"
#include "nlohmann/json.hpp"

namespace backflow::api {
namespace {

using ojson = nlohmann::ordered_json;

ojson Parse(const std::string& schema) {
  return schema.empty() ? ojson::object() : ojson::parse(schema);
}

ojson Components() {
  ojson counts = {{"type", "object"}, {"properties", ojson::object()}};
  for (const char* k : {"extracted", "added", "updated", "deleted", "unchanged", "skipped",
                        "succeeded", "failed", "rejected"}) {
    counts["properties"][k] = {{"type", "integer"}};
  }
  ojson nullable_string = {{"type", {"string", "null"}}};
  ojson run = {
      {"type", "object"},
      {"required", {"id", "mapping", "model", "destination", "status", "counts"}},
      {"properties",
       {{"id", {{"type", "integer"}}},
        {"mapping", {{"type", "string"}}},
        {"model", {{"type", "string"}}},
        {"destination", {{"type", "string"}}},
        {"status",
         {{"type", "string"},
          {"enum",
           {"queued", "running", "succeeded", "partial", "failed", "interrupted", "cancelled"}}}},
        {"trigger", {{"type", "string"}, {"description", "cli, schedule or api"}}},
        {"dry_run", {{"type", "boolean"}}},
        {"full_resync", {{"type", "boolean"}}},
        {"request_id", {{"type", {"integer", "null"}}}},
        {"requested_at", nullable_string},
        {"started_at", nullable_string},
        {"finished_at", nullable_string},
        {"duration_s", {{"type", "number"}}},
        {"phases",
         {{"type", "object"},
          {"properties",
           {{"extract_s", {{"type", "number"}}},
            {"diff_s", {{"type", "number"}}},
            {"deliver_s", {{"type", "number"}}}}}}},
        {"counts", counts},
        {"error", nullable_string},
        {"cancel_requested", {{"type", "boolean"}}},
        {"worker", nullable_string},
        {"links", {{"type", "object"}}}}}};
  ojson record = {{"type", "object"},
                  {"properties",
                   {{"key", {{"type", "string"}}},
                    {"outcome", {{"type", "string"}, {"enum", {"failed", "rejected"}}}},
                    {"change", nullable_string},
                    {"error", {{"type", "string"}}},
                    {"error_class", {{"type", "string"}}},
                    {"payload", {{"description", "the JSON that was (or would have been) sent"}}},
                    {"recommended_action", {{"type", "string"}}}}}};
  ojson error = {
      {"type", "object"},
      {"required", {"error"}},
      {"properties",
       {{"error",
         {{"type", "object"},
          {"required", {"code", "message"}},
          {"properties",
           {{"code", {{"type", "string"}, {"description", "stable, for programs"}}},
            {"message", {{"type", "string"}}},
            {"hint", {{"type", "string"}}},
            {"field", {{"type", "string"}, {"description", "the offending field's path"}}}}}}}}}};
  return {{"schemas", {{"Run", run}, {"RunRecord", record}, {"Error", error}}},
          {"securitySchemes", {{"bearer", {{"type", "http"}, {"scheme", "bearer"}}}}}};
}

}  // namespace

std::string ApiService::OpenApiJson() const {
  ojson doc;
  doc["openapi"] = "3.1.0";
  doc["info"] = {{"title", "Backflow API"},
                 {"version", "1"},
                 {"description",
                  "Sources, models, destinations, mappings and their runs. Every route but "
                  "/healthz and /readyz needs Authorization: Bearer <token>."}};
  doc["security"] = {{{"bearer", ojson::array()}}};
  ojson paths = ojson::object();
  ojson error_ref = {{"$ref", "#/components/schemas/Error"}};
  for (const Route& route : router_.routes()) {
    ojson op;
    op["operationId"] = route.method + " " + route.path;
    op["summary"] = route.summary;
    op["tags"] = {route.tag};
    if (route.access == Access::kPublic) op["security"] = ojson::array();
    ojson params = ojson::array();
    for (const Param& p : route.params) {
      ojson schema = {{"type", p.type}};
      if (!p.allowed.empty()) schema["enum"] = p.allowed;
      params.push_back({{"name", p.name},
                        {"in", p.in},
                        {"required", p.required || p.in == "path"},
                        {"description", p.description},
                        {"schema", schema}});
    }
    if (!params.empty()) op["parameters"] = params;
    if (!route.request_schema.empty()) {
      op["requestBody"] = {
          {"required", false},
          {"content", {{"application/json", {{"schema", Parse(route.request_schema)}}}}}};
    }
    ojson responses;
    std::string media = route.content_type.substr(0, route.content_type.find(';'));
    responses[std::to_string(route.success_status)] = {
        {"description", route.summary},
        {"content", {{media, {{"schema", Parse(route.response_schema)}}}}}};
    auto add_error = [&](int status, const char* what) {
      responses[std::to_string(status)] = {
          {"description", what}, {"content", {{"application/json", {{"schema", error_ref}}}}}};
    };
    if (route.access != Access::kPublic) add_error(401, "no token, or an unknown one");
    if (route.access == Access::kWrite) add_error(403, "a read-only token");
    if (!route.params.empty()) add_error(400, "an unknown query parameter");
    if (route.path.find('{') != std::string::npos) add_error(404, "no such object");
    if (!route.params.empty() || !route.request_schema.empty()) add_error(422, "an invalid value");
    if (route.access == Access::kWrite) add_error(409, "the object's state does not allow it");
    for (const Param& p : route.params) {
      if (p.in == "header" && p.name == "If-Match") {
        add_error(412, "If-Match is not the current ETag: the file changed meanwhile");
        add_error(428, "no If-Match header");
      }
    }
    op["responses"] = responses;
    std::string method = route.method;
    for (char& c : method) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    paths[route.path][method] = op;
  }
  doc["paths"] = paths;
  doc["components"] = Components();
  return doc.dump(2);
}

}  // namespace backflow::api
