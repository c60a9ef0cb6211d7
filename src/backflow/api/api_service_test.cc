#include "backflow/api/api_service.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "backflow/api/http_server.h"
#include "backflow/catalog/registry.h"
#include "backflow/common/crypto.h"
#include "backflow/common/http_client.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/sources/sqlite/sqlite_source.h"
#include "backflow/sqlite/database.h"
#include "backflow/state/state_store.h"
#include "backflow/state/state_store_testing.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow::api {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kWrite = "bf_write_token_for_tests_0123456789";
constexpr const char* kRead = "bf_read_token_for_tests_0123456789";

class ApiServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(registry_.AddSource(SqliteSourceDefinition()).ok());
    ASSERT_TRUE(registry_
                    .AddDestination(testing::MemoryDestinationDefinition(
                        std::make_shared<testing::MemoryDestinationState>()))
                    .ok());
    std::string yaml = R"(
sources:
  - { name: wh, type: sqlite, path: wh.db }
models:
  - { name: customers, source: wh, sql: "SELECT 1 AS id", primary_key: id, schedule: { every: 1h } }
  - { name: orders, source: wh, sql: "SELECT 1 AS id", primary_key: id }
destinations:
  - { name: mem, type: memory }
mappings:
  - { name: m1, model: customers, destination: mem, action: upsert, fields: { customer_id: id } }
  - { name: m2, model: customers, destination: mem, action: upsert, fields: { customer_id: id } }
  - { name: off, model: orders, destination: mem, action: upsert, fields: { customer_id: id }, enabled: false }
)";
    LoadResult loaded = LoadWorkspaceFromString(yaml, (dir_ / "backflow.yaml").string(), registry_);
    ASSERT_TRUE(loaded.ok()) << loaded.diagnostics[0].ToString();
    workspace_ = std::make_shared<const Workspace>(std::move(loaded.workspace));
    auto store = OpenSqliteStateStore((dir_ / "state.db").string());
    ASSERT_TRUE(store.ok());
    store_ = std::move(*store);
    ASSERT_TRUE(store_->CreateApiToken({"writer", HexEncode(Sha256(kWrite)), false, "t", ""}).ok());
    ASSERT_TRUE(store_->CreateApiToken({"reader", HexEncode(Sha256(kRead)), true, "t", ""}).ok());

    ApiOptions options;
    options.registry = &registry_;
    options.state_url = "sqlite:" + (dir_ / "state.db").string();
    options.workspace = [this] { return workspace_; };
    options.wake_workers = [this] { ++wakes_; };
    options.metrics = &metrics_;
    service_ = std::make_unique<ApiService>(options);
    HttpServer::Options server_options;
    server_options.port = 0;
    server_options.max_body_bytes = 4096;
    server_ = std::make_unique<HttpServer>(
        server_options, [this](const HttpRequest& r) { return service_->Handle(r); });
    auto port = server_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    base_ = fmt::format("http://127.0.0.1:{}", *port);
    http_ = NewCurlHttpClient();
  }

  struct Reply {
    int status = 0;
    json body;
    std::string text;
    backflow::HttpResponse raw;
  };

  Reply Call(const std::string& method, const std::string& path, const std::string& body = "",
             const char* token = kWrite) {
    backflow::HttpRequest req;
    req.method = method;
    req.url = base_ + path;
    req.body = body;
    if (token != nullptr)
      req.headers.emplace_back("Authorization", fmt::format("Bearer {}", token));
    if (!body.empty()) req.headers.emplace_back("Content-Type", "application/json");
    auto res = http_->Send(req);
    EXPECT_TRUE(res.ok()) << res.status();
    Reply r;
    if (!res.ok()) return r;
    r.status = res->status;
    r.text = res->body;
    r.body = json::parse(res->body, nullptr, false);
    r.raw = *res;
    return r;
  }

  testing::ScratchDir scratch_{"api"};
  const fs::path dir_ = scratch_.path();
  Registry registry_;
  std::shared_ptr<const Workspace> workspace_;
  std::unique_ptr<StateStore> store_;
  Metrics metrics_;
  std::atomic<int> wakes_{0};
  std::unique_ptr<ApiService> service_;
  std::unique_ptr<HttpServer> server_;
  std::string base_;
  std::unique_ptr<HttpClient> http_;
};

TEST_F(ApiServiceTest, HealthIsPublicEverythingElseNeedsAToken) {
  EXPECT_EQ(Call("GET", "/healthz", "", nullptr).status, 200);
  Reply ready = Call("GET", "/readyz", "", nullptr);
  EXPECT_EQ(ready.status, 200);
  EXPECT_EQ(ready.body["status"], "ready");

  Reply anonymous = Call("GET", "/api/v1/runs", "", nullptr);
  EXPECT_EQ(anonymous.status, 401);
  EXPECT_EQ(anonymous.body["error"]["code"], "unauthenticated");
  EXPECT_TRUE(anonymous.raw.Header("www-authenticate").has_value());
  EXPECT_EQ(Call("GET", "/metrics", "", nullptr).status, 401);
  EXPECT_EQ(Call("GET", "/api/v1/runs", "", "bf_wrong").status, 401);
  EXPECT_EQ(Call("GET", "/api/v1/runs", "", kRead).status, 200);

  // Read-only tokens cannot trigger or cancel.
  Reply forbidden = Call("POST", "/api/v1/mappings/m1/runs", "", kRead);
  EXPECT_EQ(forbidden.status, 403);
  EXPECT_EQ(forbidden.body["error"]["code"], "forbidden");
  EXPECT_EQ(*store_->CountRuns(RunStatus::kQueued), 0);

  // A revoked token stops working at once.
  ASSERT_TRUE(store_->RevokeApiToken("reader").ok());
  EXPECT_EQ(Call("GET", "/api/v1/runs", "", kRead).status, 401);
}

TEST_F(ApiServiceTest, ConcurrentTriggersOfOneMappingQueueOneRun) {
  // Four "run now" clicks at once: one run is queued, the others are told
  // which run they would duplicate.
  std::vector<Reply> replies(4);
  std::vector<std::thread> threads;
  for (Reply& reply : replies) {
    threads.emplace_back([&] { reply = Call("POST", "/api/v1/mappings/m2/runs"); });
  }
  for (std::thread& t : threads) t.join();
  int accepted = 0;
  int64_t id = 0;
  for (const Reply& reply : replies) {
    if (reply.status == 202) {
      ++accepted;
      id = reply.body["runs"][0]["id"];
    }
  }
  ASSERT_EQ(accepted, 1);
  for (const Reply& reply : replies) {
    if (reply.status == 202) continue;
    EXPECT_EQ(reply.status, 409) << reply.text;
    EXPECT_NE(reply.body["error"]["message"].get<std::string>().find(std::to_string(id)),
              std::string::npos)
        << reply.text;
  }
}

TEST_F(ApiServiceTest, TriggerQueuesRunsThatCanBeFollowedAndCancelled) {
  Reply queued = Call("POST", "/api/v1/mappings/m1/runs");
  ASSERT_EQ(queued.status, 202) << queued.text;
  ASSERT_EQ(queued.body["runs"].size(), 1u);
  int64_t id = queued.body["runs"][0]["id"];
  EXPECT_EQ(queued.body["runs"][0]["status"], "queued");
  EXPECT_EQ(queued.body["runs"][0]["trigger"], "api");
  EXPECT_EQ(queued.raw.Header("location"), fmt::format("/api/v1/runs/{}", id));
  EXPECT_EQ(wakes_.load(), 1);

  // Already queued: not queued twice.
  Reply again = Call("POST", "/api/v1/mappings/m1/runs");
  EXPECT_EQ(again.status, 409);
  EXPECT_NE(again.body["error"]["message"].get<std::string>().find(std::to_string(id)),
            std::string::npos);

  Reply run = Call("GET", fmt::format("/api/v1/runs/{}", id));
  ASSERT_EQ(run.status, 200);
  EXPECT_EQ(run.body["mapping"], "m1");
  EXPECT_EQ(run.body["counts"]["extracted"], 0);
  EXPECT_TRUE(run.body["started_at"].is_null());
  EXPECT_EQ(run.body["links"]["records"], fmt::format("/api/v1/runs/{}/records", id));

  Reply cancelled = Call("POST", fmt::format("/api/v1/runs/{}/cancel", id));
  ASSERT_EQ(cancelled.status, 202);
  EXPECT_EQ(cancelled.body["status"], "cancelled");
  Reply twice = Call("POST", fmt::format("/api/v1/runs/{}/cancel", id));
  EXPECT_EQ(twice.status, 409);
  EXPECT_EQ(twice.body["error"]["code"], "conflict");

  // A model run queues every enabled mapping under one request.
  Reply model = Call("POST", "/api/v1/models/customers/runs", R"({"full_resync": true})");
  ASSERT_EQ(model.status, 202) << model.text;
  ASSERT_EQ(model.body["runs"].size(), 2u);
  EXPECT_EQ(model.body["runs"][1]["request_id"], model.body["request_id"]);
  EXPECT_EQ(model.body["runs"][0]["full_resync"], true);

  EXPECT_EQ(Call("POST", "/api/v1/models/orders/runs").status, 409);  // only a disabled mapping
  EXPECT_EQ(Call("POST", "/api/v1/mappings/off/runs").status, 409);
  EXPECT_EQ(Call("POST", "/api/v1/mappings/nope/runs").status, 404);
}

TEST_F(ApiServiceTest, RunsArePagedAndFiltered) {
  RunInfo r;
  r.model = "customers";
  r.destination = "mem";
  r.requested_at = "2026-01-01T00:00:00.000Z";
  for (int i = 0; i < 7; ++i) {
    r.mapping = i % 2 ? "m1" : "m2";
    RunStatus status = i == 5 ? RunStatus::kFailed : RunStatus::kSucceeded;
    ASSERT_TRUE(testing::RecordFinishedRuns(*store_, {r}, status).ok());
  }
  Reply page = Call("GET", "/api/v1/runs?limit=3");
  ASSERT_EQ(page.status, 200) << page.text;
  ASSERT_EQ(page.body["runs"].size(), 3u);
  std::vector<int64_t> seen;
  std::string cursor = page.body["next_cursor"];
  for (auto& run : page.body["runs"]) seen.push_back(run["id"]);
  while (!cursor.empty()) {
    Reply next = Call("GET", "/api/v1/runs?limit=3&cursor=" + cursor);
    ASSERT_EQ(next.status, 200);
    for (auto& run : next.body["runs"]) seen.push_back(run["id"]);
    cursor = next.body["next_cursor"].is_null() ? "" : next.body["next_cursor"].get<std::string>();
  }
  ASSERT_EQ(seen.size(), 7u);
  EXPECT_TRUE(std::is_sorted(seen.rbegin(), seen.rend()));

  Reply m1 = Call("GET", "/api/v1/runs?mapping=m1&status=succeeded");
  EXPECT_EQ(m1.body["runs"].size(), 2u);  // the third run of m1 failed
  EXPECT_TRUE(m1.body["next_cursor"].is_null());
}

TEST_F(ApiServiceTest, BadInputGetsTheRightStatusAndTheFieldPath) {
  Reply unknown_param = Call("GET", "/api/v1/runs?colour=red");
  EXPECT_EQ(unknown_param.status, 400);
  EXPECT_EQ(unknown_param.body["error"]["field"], "colour");
  Reply bad_status = Call("GET", "/api/v1/runs?status=done");
  EXPECT_EQ(bad_status.status, 422);
  EXPECT_EQ(bad_status.body["error"]["field"], "status");
  EXPECT_EQ(Call("GET", "/api/v1/runs?limit=0").status, 422);
  EXPECT_EQ(Call("GET", "/api/v1/runs?limit=501").status, 422);
  EXPECT_EQ(Call("GET", "/api/v1/runs/abc").status, 422);
  EXPECT_EQ(Call("GET", "/api/v1/runs/424242").status, 404);
  Reply not_found = Call("GET", "/api/v1/nothing");
  EXPECT_EQ(not_found.status, 404);
  Reply wrong_method = Call("DELETE", "/api/v1/runs");
  EXPECT_EQ(wrong_method.status, 405);
  EXPECT_EQ(wrong_method.raw.Header("allow"), "GET");

  Reply malformed = Call("POST", "/api/v1/mappings/m1/runs", "{\"full_resync\": tru");
  EXPECT_EQ(malformed.status, 400);
  Reply unknown_field = Call("POST", "/api/v1/mappings/m1/runs", R"({"fullresync": true})");
  EXPECT_EQ(unknown_field.status, 422);
  EXPECT_EQ(unknown_field.body["error"]["field"], "fullresync");
  Reply wrong_type = Call("POST", "/api/v1/mappings/m1/runs", R"({"full_resync": "yes"})");
  EXPECT_EQ(wrong_type.status, 422);
  EXPECT_EQ(wrong_type.body["error"]["field"], "full_resync");
  Reply too_big = Call("POST", "/api/v1/mappings/m1/runs", std::string(10000, ' '));
  EXPECT_EQ(too_big.status, 413);
  EXPECT_EQ(*store_->CountRuns(RunStatus::kQueued), 0);
}

TEST_F(ApiServiceTest, WorkspaceObjectsAndCatalogAreServed) {
  Reply mappings = Call("GET", "/api/v1/mappings", "", kRead);
  ASSERT_EQ(mappings.status, 200);
  ASSERT_EQ(mappings.body["mappings"].size(), 3u);
  EXPECT_EQ(mappings.body["mappings"][0]["fields"]["customer_id"], "id");
  EXPECT_EQ(mappings.body["mappings"][2]["enabled"], false);
  Reply model = Call("GET", "/api/v1/models/customers", "", kRead);
  EXPECT_EQ(model.body["schedule"]["kind"], "interval");
  EXPECT_EQ(model.body["schedule"]["every_minutes"], 60);
  EXPECT_EQ(model.body["mappings"], json({"m1", "m2"}));
  EXPECT_EQ(Call("GET", "/api/v1/sources/nope", "", kRead).status, 404);
  Reply catalog = Call("GET", "/api/v1/catalog", "", kRead);
  ASSERT_EQ(catalog.status, 200);
  EXPECT_TRUE(catalog.body.contains("destinations"));
}

TEST_F(ApiServiceTest, ConnectionTestsPreviewAndMappingTest) {
  {
    auto db = sqlite::Database::Open((dir_ / "wh.db").string(),
                                     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("CREATE TABLE people (id INTEGER, email TEXT)").ok());
    ASSERT_TRUE((*db)->Exec("INSERT INTO people VALUES (7, 'a@x.io'), (8, 'b@x.io')").ok());
  }
  Reply source = Call("POST", "/api/v1/sources/wh/test", "", kRead);
  ASSERT_EQ(source.status, 200) << source.text;
  EXPECT_EQ(source.body["ok"], true);
  EXPECT_EQ(source.body["kind"], "source");
  EXPECT_EQ(Call("POST", "/api/v1/sources/nope/test", "", kRead).status, 404);

  Reply preview = Call("POST", "/api/v1/models/customers/preview", "", kRead);
  ASSERT_EQ(preview.status, 200) << preview.text;
  EXPECT_EQ(preview.body["columns"][0]["name"], "id");
  EXPECT_EQ(preview.body["columns"][0]["is_key"], true);
  EXPECT_EQ(preview.body["rows"], json::parse("[[1]]"));

  // Unsaved SQL: a write token, and the model need not exist.
  std::string unsaved = R"({"sql": "SELECT id, email FROM people ORDER BY id", "source": "wh",
                             "primary_key": "id", "limit": 1})";
  EXPECT_EQ(Call("POST", "/api/v1/models/draft/preview", unsaved, kRead).status, 403);
  Reply draft = Call("POST", "/api/v1/models/draft/preview", unsaved);
  ASSERT_EQ(draft.status, 200) << draft.text;
  EXPECT_EQ(draft.body["rows"], json::parse(R"([[7, "a@x.io"]])"));
  EXPECT_EQ(draft.body["columns"][1]["type"], "string");
  Reply bad_sql = Call("POST", "/api/v1/models/draft/preview",
                       R"({"sql": "SELECT nope FROM people", "source": "wh"})");
  EXPECT_EQ(bad_sql.status, 422);
  EXPECT_EQ(bad_sql.body["error"]["code"], "query_failed");
  EXPECT_EQ(bad_sql.body["error"]["field"], "sql");
  EXPECT_NE(bad_sql.text.find("nope"), std::string::npos) << bad_sql.text;
  EXPECT_EQ(Call("POST", "/api/v1/models/draft/preview", "").status, 404);
  Reply bad_limit = Call("POST", "/api/v1/models/customers/preview", R"({"limit": "ten"})");
  EXPECT_EQ(bad_limit.status, 422);
  EXPECT_EQ(bad_limit.body["error"]["field"], "limit");

  Reply mapped = Call("POST", "/api/v1/mappings/m1/test", "", kRead);
  ASSERT_EQ(mapped.status, 200) << mapped.text;
  EXPECT_EQ(mapped.body["payload"], json::parse(R"({"customer_id": 1})"));
  EXPECT_TRUE(mapped.body["error"].is_null());
  Reply missing = Call("POST", "/api/v1/mappings/m1/test", R"({"record_key": "42"})", kRead);
  EXPECT_EQ(missing.status, 422);
  EXPECT_EQ(missing.body["error"]["code"], "no_record");
  EXPECT_EQ(Call("POST", "/api/v1/mappings/zz/test", "", kRead).status, 404);
}

// The OpenAPI document lists exactly the routes the server answers.
TEST_F(ApiServiceTest, OpenApiDocumentMatchesTheRoutesTheServerHas) {
  Reply doc = Call("GET", "/api/v1/openapi.json", "", kRead);
  ASSERT_EQ(doc.status, 200);
  EXPECT_EQ(doc.body["openapi"], "3.1.0");
  int operations = 0;
  for (auto& [path, item] : doc.body["paths"].items()) {
    for (auto& [method, op] : item.items()) {
      ++operations;
      std::string upper = method;
      for (char& c : upper) c = static_cast<char>(std::toupper(c));
      std::string concrete = path;
      for (const char* p : {"{id}", "{name}"}) {
        size_t at = concrete.find(p);
        if (at != std::string::npos) concrete.replace(at, strlen(p), p[1] == 'i' ? "1" : "m1");
      }
      Reply r = Call(upper, concrete, "", kWrite);
      EXPECT_NE(r.status, 405) << upper << " " << concrete;
      // 404 only for a missing object, never for a missing route.
      if (r.status == 404) {
        EXPECT_EQ(r.body["error"]["code"], "not_found") << concrete;
      }
      EXPECT_EQ(r.text.find("no route"), std::string::npos) << upper << " " << concrete;
      EXPECT_TRUE(op.contains("responses")) << concrete;
    }
  }
  EXPECT_EQ(operations, static_cast<int>(service_->router().routes().size()));
  for (const Route& route : service_->router().routes()) {
    std::string method = route.method;
    for (char& c : method) c = static_cast<char>(std::tolower(c));
    EXPECT_TRUE(doc.body["paths"][route.path].contains(method)) << route.path;
  }
}

TEST_F(ApiServiceTest, MetricsCountRequestsAndQueueDepth) {
  Call("POST", "/api/v1/mappings/m1/runs");
  Call("GET", "/api/v1/runs/999");
  Reply metrics = Call("GET", "/metrics", "", kRead);
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.text.find("backflow_api_requests_total{route=\"/api/v1/runs/{id}\",status="
                              "\"404\"} 1"),
            std::string::npos)
      << metrics.text;
  EXPECT_NE(metrics.text.find("backflow_queue_depth{status=\"queued\"} 1"), std::string::npos)
      << metrics.text;
}

}  // namespace
}  // namespace backflow::api
