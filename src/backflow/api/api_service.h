// ApiService: the REST API of `backflow serve` under /api/v1, plus /healthz,
// /readyz and /metrics. Every answer is JSON shaped for a screen: runs with
// their counts, phases and links; errors as
//   {"error": {"code": "not_found", "message": "...", "hint": "...", "field": "..."}}
// with a stable code and the HTTP status that means it (400 malformed,
// 401 no/unknown token, 403 read-only token, 404, 405, 409 state conflict,
// 413 body too large, 422 invalid value, 429, 503 state store down).
//
// Auth: every route but /healthz and /readyz needs `Authorization: Bearer
// <token>` naming a token created with `backflow token create`; tokens are
// stored hashed (SHA-256). Read-only tokens may only call read routes.
//
// Thread-safety: Handle() is called from several server threads at once; the
// service keeps a pool of state-store handles, one per concurrent request.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "backflow/api/http_server.h"
#include "backflow/api/router.h"
#include "backflow/catalog/registry.h"
#include "backflow/common/metrics.h"
#include "backflow/config/workspace.h"
#include "backflow/state/state_store.h"

namespace backflow::api {

struct ApiOptions {
  const Registry* registry = nullptr;
  ConnectorEnv env;
  std::string state_url;
  // The workspace in force (the service swaps it when the file changes).
  std::function<std::shared_ptr<const Workspace>()> workspace;
  // Called after runs were queued, so idle workers look at once.
  std::function<void()> wake_workers;
  // Re-reads the workspace file (and its secrets) so that workspace() returns
  // what it holds now: always with force (after the API changed the file or a
  // secret), else only when the file changed since the last read. May be empty.
  std::function<void(bool force)> reload;
  Metrics* metrics = nullptr;
  std::function<absl::Time()> now = [] { return absl::Now(); };
};

class ApiService {
 public:
  explicit ApiService(ApiOptions options);
  ~ApiService();

  HttpResponse Handle(const HttpRequest& request);
  const Router& router() const { return router_; }
  // The OpenAPI 3.1 document of the routes above.
  std::string OpenApiJson() const;

 private:
  // A state-store handle borrowed from the pool for one request.
  class StoreLease;
  absl::StatusOr<StoreLease> Store();
  void AddRoutes();

  HttpResponse Healthz(Call& call);
  HttpResponse Readyz(Call& call);
  HttpResponse MetricsText(Call& call);
  HttpResponse OpenApi(Call& call);
  HttpResponse Catalog(Call& call);
  HttpResponse ListRuns(Call& call);
  HttpResponse GetRun(Call& call);
  HttpResponse GetRunRecords(Call& call);
  HttpResponse CancelRun(Call& call);
  HttpResponse TriggerMapping(Call& call);
  HttpResponse TriggerModel(Call& call);
  HttpResponse TestConnection(Call& call, const std::string& kind);
  HttpResponse PreviewModel(Call& call);
  HttpResponse TestMapping(Call& call);
  HttpResponse ListObjects(Call& call, const std::string& kind);
  HttpResponse GetObject(Call& call, const std::string& kind);
  HttpResponse Enqueue(Call& call, const std::string& model,
                       const std::vector<std::string>& mappings);

  ApiOptions options_;
  Router router_;
  std::mutex pool_mu_;
  std::vector<std::unique_ptr<StateStore>> idle_stores_;
};

// The JSON error body and status for `status` (its code chooses the HTTP status).
HttpResponse ErrorResponse(int http_status, std::string_view code, std::string_view message,
                           std::string_view hint = "", std::string_view field = "");

}  // namespace backflow::api
