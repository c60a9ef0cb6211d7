#include "backflow/api/router.h"

#include "backflow/common/url.h"

namespace backflow::api {
namespace {

std::vector<std::string> Segments(std::string_view path) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > pos) out.push_back(PercentDecode(path.substr(pos, slash - pos), false));
    pos = slash + 1;
  }
  return out;
}

}  // namespace

Route* Router::FindDeclared(std::string_view method, std::string_view path) {
  for (Route& route : routes_) {
    if (route.method == method && route.path == path) return &route;
  }
  return nullptr;
}

Router::Match Router::Find(const std::string& method, const std::string& path) const {
  Match match;
  std::vector<std::string> segments = Segments(path);
  for (const Route& route : routes_) {
    std::vector<std::string> pattern = Segments(route.path);
    if (pattern.size() != segments.size()) continue;
    std::map<std::string, std::string> params;
    bool ok = true;
    for (size_t i = 0; i < pattern.size() && ok; ++i) {
      const std::string& p = pattern[i];
      if (p.size() > 2 && p.front() == '{' && p.back() == '}') {
        params[p.substr(1, p.size() - 2)] = segments[i];
      } else {
        ok = p == segments[i];
      }
    }
    if (!ok) continue;
    match.path_known = true;
    match.allowed_methods.push_back(route.method);
    if (route.method == method && match.route == nullptr) {
      match.route = &route;
      match.path_params = std::move(params);
    }
  }
  return match;
}

}  // namespace backflow::api
