// Routes of the REST API, declared once: the server dispatches on them and
// the OpenAPI document (openapi.h) is generated from them, so the document
// and the routes the server really has cannot drift apart.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "backflow/api/http_server.h"

namespace backflow::api {

// Who may call a route: anyone (health probes), any token, or a token that
// is not read-only.
enum class Access { kPublic, kRead, kWrite };

struct Param {
  std::string name;
  std::string in = "query";     // "path" or "query"
  std::string type = "string";  // JSON Schema type: string, integer, boolean
  std::string description;
  bool required = false;
  std::vector<std::string> allowed;  // enum values, empty = any
};

struct Call {
  const HttpRequest& request;
  std::map<std::string, std::string> path;   // path parameters by name
  std::map<std::string, std::string> query;  // decoded query parameters
  std::string token_name;                    // empty for public routes
  bool read_only = false;                    // the token may not change anything
};

struct Route {
  std::string method;  // GET, POST, PATCH, PUT, DELETE
  std::string path;    // "/api/v1/runs/{id}"
  Access access = Access::kRead;
  std::string tag;
  std::string summary;
  std::vector<Param> params;
  std::string request_schema;  // JSON Schema of the body (JSON text); empty = no body
  int success_status = 200;
  std::string response_schema;  // JSON Schema of the success body (JSON text)
  std::string content_type = "application/json";
  std::function<HttpResponse(Call&)> handler;
};

class Router {
 public:
  void Add(Route route) { routes_.push_back(std::move(route)); }
  const std::vector<Route>& routes() const { return routes_; }

  struct Match {
    const Route* route = nullptr;  // null: no route has this path and method
    bool path_known = false;       // some route has this path (with another method)
    std::vector<std::string> allowed_methods;
    std::map<std::string, std::string> path_params;
  };
  // `path` without the query string, percent-decoded per segment.
  Match Find(const std::string& method, const std::string& path) const;
  // The route declared with exactly this method and path pattern (e.g.
  // "/api/v1/runs/{id}"), so its handler can be wrapped; null if none.
  Route* FindDeclared(std::string_view method, std::string_view path);

 private:
  std::vector<Route> routes_;
};

}  // namespace backflow::api
