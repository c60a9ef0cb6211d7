// The configuration routes (workspace_routes.h) through real HTTP: an
// in-process HttpServer + ApiService over a workspace file on disk, which the
// test reloads the way `backflow serve` does.
#include "backflow/api/workspace_routes.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "backflow/api/api_service.h"
#include "backflow/api/http_server.h"
#include "backflow/catalog/registry.h"
#include "backflow/common/crypto.h"
#include "backflow/common/http_client.h"
#include "backflow/config/workspace_editor.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/secrets/workspace_secrets.h"
#include "backflow/sources/sqlite/sqlite_source.h"
#include "backflow/state/state_store.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow::api {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kWrite = "bf_write_token_for_workspace_tests_01";
constexpr const char* kRead = "bf_read_token_for_workspace_tests_012";
constexpr const char* kSecretValue = "s3cr3t-Value-planted-0123456789";

constexpr const char* kWorkspace = R"j(# Team workspace: edited by people and by the API.
state: sqlite:state.db

sources:
  # The warehouse copy.
  - name: wh
    type: sqlite
    path: wh.db  # next to this file

models:
  - name: customers
    source: wh
    # Every customer.
    sql: SELECT 1 AS id, 'a@example.com' AS email
    primary_key: id
    schedule: { every: 1h }

destinations:
  - name: mem
    type: memory
    settings: { label: main }

mappings:
  # The main sync.
  - name: m1
    model: customers
    destination: mem
    action: upsert
    fields:
      customer_id: id  # the key
)j";

std::string Slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class WorkspaceRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("BACKFLOW_SECRET_KEY");
    file_ = (dir_ / "backflow.yaml").string();
    std::ofstream(file_, std::ios::binary) << kWorkspace;
    ASSERT_TRUE(registry_.AddSource(SqliteSourceDefinition()).ok());
    ASSERT_TRUE(registry_
                    .AddDestination(testing::MemoryDestinationDefinition(
                        std::make_shared<testing::MemoryDestinationState>()))
                    .ok());
    auto store = OpenSqliteStateStore((dir_ / "state.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    ASSERT_TRUE(store_->CreateApiToken({"writer", HexEncode(Sha256(kWrite)), false, "t", ""}).ok());
    ASSERT_TRUE(store_->CreateApiToken({"reader", HexEncode(Sha256(kRead)), true, "t", ""}).ok());
    Reload(true);
    ASSERT_NE(workspace_, nullptr);

    ApiOptions options;
    options.registry = &registry_;
    options.state_url = "sqlite:" + (dir_ / "state.db").string();
    options.workspace = [this] {
      std::lock_guard<std::mutex> lock(mu_);
      return workspace_;
    };
    options.reload = [this](bool force) { Reload(force); };
    service_ = std::make_unique<ApiService>(options);
    HttpServer::Options server_options;
    server_options.port = 0;
    server_ = std::make_unique<HttpServer>(
        server_options, [this](const HttpRequest& r) { return service_->Handle(r); });
    auto port = server_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    base_ = fmt::format("http://127.0.0.1:{}", *port);
    http_ = NewCurlHttpClient();
  }

  // What `backflow serve` does: reload when forced or when the file changed.
  void Reload(bool force) {
    std::lock_guard<std::mutex> reload_lock(reload_mu_);
    std::error_code ec;
    fs::file_time_type modified = fs::last_write_time(file_, ec);
    if (!force && !ec && modified == loaded_at_) return;
    loaded_at_ = modified;
    LoadResult loaded = LoadWorkspaceWithSecrets(file_, registry_);
    ASSERT_TRUE(loaded.ok()) << (loaded.diagnostics.empty() ? ""
                                                            : loaded.diagnostics[0].ToString());
    std::lock_guard<std::mutex> lock(mu_);
    workspace_ = std::make_shared<const Workspace>(std::move(loaded.workspace));
  }

  std::shared_ptr<const Workspace> Current() {
    std::lock_guard<std::mutex> lock(mu_);
    return workspace_;
  }

  struct Reply {
    int status = 0;
    json body;
    std::string text;
    std::string etag;
    backflow::HttpResponse raw;
  };

  Reply Send(const std::string& method, const std::string& path, const std::string& body = "",
             const std::string& if_match = "", const char* token = kWrite) {
    backflow::HttpRequest req;
    req.method = method;
    req.url = base_ + path;
    req.body = body;
    req.headers.emplace_back("Authorization", fmt::format("Bearer {}", token));
    if (!body.empty()) req.headers.emplace_back("Content-Type", "application/json");
    if (!if_match.empty()) req.headers.emplace_back("If-Match", if_match);
    auto res = http_->Send(req);
    EXPECT_TRUE(res.ok()) << res.status();
    Reply r;
    if (!res.ok()) return r;
    r.status = res->status;
    r.text = res->body;
    r.body = json::parse(res->body, nullptr, false);
    r.etag = res->Header("etag").value_or("");
    r.raw = *res;
    replies_ += res->body;
    return r;
  }

  std::string Etag() {
    Reply r = Send("GET", "/api/v1/workspace", "", "", kRead);
    EXPECT_EQ(r.status, 200) << r.text;
    EXPECT_EQ(r.etag, r.body.value("etag", "")) << r.text;
    return r.etag;
  }

  // The file as `backflow validate` sees it.
  LoadResult Validate() { return LoadWorkspaceWithSecrets(file_, registry_); }

  testing::ScratchDir scratch_{"wsapi"};
  const fs::path dir_ = scratch_.path();
  std::string file_;
  Registry registry_;
  std::unique_ptr<StateStore> store_;
  std::mutex reload_mu_;
  fs::file_time_type loaded_at_;
  std::mutex mu_;
  std::shared_ptr<const Workspace> workspace_;
  std::unique_ptr<ApiService> service_;
  std::unique_ptr<HttpServer> server_;
  std::string base_;
  std::unique_ptr<HttpClient> http_;
  std::string replies_;  // every reply body, to look for secrets
};

TEST_F(WorkspaceRoutesTest, CreatesUpdatesAndDeletesEveryKindInTheFile) {
  std::string etag = Etag();
  ASSERT_FALSE(etag.empty());
  EXPECT_EQ(etag, WorkspaceEtag(kWorkspace));

  // Create one of each, each change based on the ETag the last one returned.
  struct Create {
    const char* section;
    const char* body;
  };
  const Create creates[] = {
      {"sources", R"j({"name": "wh2", "type": "sqlite", "settings": {"path": "other.db"}})j"},
      {"models",
       R"j({"name": "leads", "source": "wh2", "sql": "SELECT 2 AS id", "primary_key": "id"})j"},
      {"destinations", R"j({"name": "mem2", "type": "memory", "settings": {"label": "second"}})j"},
      {"mappings", R"j({"name": "m2", "model": "leads", "destination": "mem2", "action": "upsert",
                       "fields": {"customer_id": "id"}})j"}};
  for (const Create& c : creates) {
    Reply r = Send("POST", fmt::format("/api/v1/{}", c.section), c.body, etag);
    ASSERT_EQ(r.status, 201) << c.section << ": " << r.text;
    EXPECT_NE(r.etag, etag);
    EXPECT_EQ(r.etag, WorkspaceEtag(Slurp(file_))) << "the ETag is the file's";
    std::string name = json::parse(c.body)["name"];
    EXPECT_EQ(r.raw.Header("location").value_or(""), fmt::format("/api/v1/{}/{}", c.section, name));
    EXPECT_EQ(r.body["name"], name);
    EXPECT_EQ(r.raw.Header("x-backflow-file-layout").value_or(""), "kept");
    etag = r.etag;
    // Visible to the next read at once, with the same ETag.
    Reply got = Send("GET", fmt::format("/api/v1/{}/{}", c.section, name), "", "", kRead);
    EXPECT_EQ(got.status, 200) << got.text;
    EXPECT_EQ(got.etag, etag);
    // The file stays valid for `backflow validate`.
    LoadResult valid = Validate();
    EXPECT_TRUE(valid.ok()) << valid.diagnostics[0].ToString();
  }
  std::string text = Slurp(file_);
  // The user's lines stay, in order; the new entries come after each section's last.
  size_t at = 0;
  std::istringstream original(kWorkspace);
  for (std::string line; std::getline(original, line);) {
    size_t found = text.find(line + "\n", at);
    ASSERT_NE(found, std::string::npos) << "lost: " << line << "\n" << text;
    at = found + line.size();
  }
  EXPECT_NE(text.find("  - name: wh2\n    type: sqlite\n    path: other.db\n\nmodels:"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("  - name: m2\n    model: leads\n    destination: mem2\n"
                      "    action: upsert\n    fields:\n      customer_id: id\n"),
            std::string::npos)
      << text;
  EXPECT_NE(Current()->FindMapping("m2"), nullptr);
  // The mapping runs where its model is: two models, one mapping each.
  EXPECT_EQ(Current()->FindMapping("m2")->model, "leads");

  // Update each (merge patches).
  struct Patch {
    const char* path;
    const char* body;
  };
  const Patch patches[] = {
      {"/api/v1/sources/wh2", R"j({"settings": {"path": "third.db"}})j"},
      {"/api/v1/models/leads", R"j({"schedule": {"every": "30m"}, "sql": "SELECT 3 AS id"})j"},
      {"/api/v1/destinations/mem2", R"j({"settings": {"label": "renamed"}})j"},
      {"/api/v1/mappings/m2", R"j({"fields": {"email": "lower(email)"}, "batch_size": 5})j"}};
  for (const Patch& p : patches) {
    Reply r = Send("PATCH", p.path, p.body, etag);
    ASSERT_EQ(r.status, 200) << p.path << ": " << r.text;
    EXPECT_NE(r.etag, etag);
    etag = r.etag;
    EXPECT_TRUE(Validate().ok());
  }
  std::shared_ptr<const Workspace> ws = Current();
  EXPECT_EQ(ws->FindSource("wh2")->settings["path"], (dir_ / "third.db").string());
  EXPECT_EQ(ws->FindModel("leads")->schedule.interval_minutes, 30);
  EXPECT_EQ(ws->FindModel("leads")->sql, "SELECT 3 AS id");
  EXPECT_EQ(ws->FindDestination("mem2")->settings["label"], "renamed");
  ASSERT_EQ(ws->FindMapping("m2")->fields.size(), 2u);
  EXPECT_EQ(ws->FindMapping("m2")->fields[1].value, "lower(email)");
  EXPECT_EQ(ws->FindMapping("m2")->batch_size, 5);
  Reply model = Send("GET", "/api/v1/models/leads", "", "", kRead);
  EXPECT_EQ(model.body["schedule"]["every_minutes"], 30) << model.text;
  // A patch that changes nothing writes nothing.
  Reply same = Send("PATCH", "/api/v1/models/leads", R"j({"sql": "SELECT 3 AS id"})j", etag);
  EXPECT_EQ(same.status, 200);
  EXPECT_EQ(same.etag, etag);

  // Delete them, users first: the file is back to what the user wrote, byte for byte.
  for (const char* path : {"/api/v1/mappings/m2", "/api/v1/destinations/mem2",
                           "/api/v1/models/leads", "/api/v1/sources/wh2"}) {
    Reply r = Send("DELETE", path, "", etag);
    ASSERT_EQ(r.status, 204) << path << ": " << r.text;
    EXPECT_TRUE(r.text.empty());
    EXPECT_NE(r.etag, etag);
    etag = r.etag;
    EXPECT_EQ(Send("GET", path, "", "", kRead).status, 404) << path;
  }
  EXPECT_EQ(Slurp(file_), kWorkspace);
  EXPECT_EQ(etag, WorkspaceEtag(kWorkspace));
  EXPECT_EQ(Current()->FindMapping("m2"), nullptr);
  // Written through a temporary file renamed over the old one: none is left behind.
  for (const auto& entry : fs::directory_iterator(dir_)) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  }
}

TEST_F(WorkspaceRoutesTest, AnInvalidChangeIsA422WithValidatesDiagnostics) {
  const std::string etag = Etag();
  // What validate says about the same mapping written in the file by hand.
  const std::string by_hand = std::string(kWorkspace) +
                              "  - name: bad\n    model: customers\n    destination: mem\n"
                              "    action: upsert\n    fields:\n      email: lower(\n";
  LoadResult expected = LoadWorkspaceFromString(by_hand, file_, registry_);
  ASSERT_FALSE(expected.ok());
  const Diagnostic& want = expected.diagnostics[0];
  ASSERT_EQ(want.path, "mappings[1].fields.email");

  Reply r = Send("POST", "/api/v1/mappings",
                 R"j({"name": "bad", "model": "customers", "destination": "mem",
                      "action": "upsert", "fields": {"email": "lower("}})j",
                 etag);
  ASSERT_EQ(r.status, 422) << r.text;
  EXPECT_EQ(r.body["error"]["code"], "invalid");
  EXPECT_EQ(r.body["error"]["message"], want.message);
  EXPECT_EQ(r.body["error"]["hint"], want.hint);
  EXPECT_EQ(r.body["error"]["field"], "mappings[1].fields.email");
  ASSERT_EQ(r.body["error"]["errors"].size(), expected.diagnostics.size()) << r.text;
  EXPECT_EQ(r.body["error"]["errors"][0]["path"], want.path);
  EXPECT_EQ(r.body["error"]["errors"][0]["line"], want.line);
  EXPECT_EQ(r.body["error"]["errors"][0]["column"], want.column);
  EXPECT_EQ(r.body["error"]["errors"][0]["text"], want.ToString());
  EXPECT_EQ(Slurp(file_), kWorkspace);  // nothing written
  EXPECT_EQ(r.etag, etag);

  // An unknown member: the loader's message, with its suggestion and path.
  r = Send("PATCH", "/api/v1/models/customers", R"j({"scheduel": "manual"})j", etag);
  ASSERT_EQ(r.status, 422) << r.text;
  EXPECT_EQ(r.body["error"]["message"], "unknown key \"scheduel\"");
  EXPECT_EQ(r.body["error"]["hint"], "did you mean \"schedule\"?");
  EXPECT_EQ(r.body["error"]["field"], "models[0].scheduel");
  // A reference to nothing.
  r = Send("PATCH", "/api/v1/mappings/m1", R"j({"destination": "mme"})j", etag);
  ASSERT_EQ(r.status, 422) << r.text;
  EXPECT_EQ(r.body["error"]["message"], "unknown destination \"mme\"");
  EXPECT_EQ(r.body["error"]["field"], "mappings[0].destination");
  // Wrong JSON types, with the field's path.
  r = Send("PATCH", "/api/v1/mappings/m1", R"j({"enabled": "true"})j", etag);
  ASSERT_EQ(r.status, 422) << r.text;
  EXPECT_EQ(r.body["error"]["field"], "mappings[0].enabled");
  EXPECT_EQ(r.body["error"]["message"], "enabled must be true or false, not a string");
  r = Send("PATCH", "/api/v1/mappings/m1", R"j({"fields": {"email": 5}})j", etag);
  ASSERT_EQ(r.status, 422) << r.text;
  EXPECT_EQ(r.body["error"]["field"], "mappings[0].fields.email");
  r = Send("POST", "/api/v1/sources", R"j({"type": "sqlite"})j", etag);
  ASSERT_EQ(r.status, 422) << r.text;
  EXPECT_EQ(r.body["error"]["message"], "\"name\" is required");
  // Malformed JSON, or not an object.
  r = Send("PATCH", "/api/v1/mappings/m1", R"j({"enabled": tru)j", etag);
  EXPECT_EQ(r.status, 400) << r.text;
  EXPECT_EQ(r.body["error"]["code"], "bad_request");
  EXPECT_EQ(Send("PATCH", "/api/v1/mappings/m1", "[1]", etag).status, 422);
  // A name taken already.
  r = Send("POST", "/api/v1/sources", R"j({"name": "wh", "type": "sqlite", "path": "x.db"})j",
           etag);
  EXPECT_EQ(r.status, 409) << r.text;
  EXPECT_EQ(r.body["error"]["code"], "already_exists");
  EXPECT_EQ(Send("PATCH", "/api/v1/mappings/nope", "{}", etag).status, 404);
  EXPECT_EQ(Slurp(file_), kWorkspace);
}

TEST_F(WorkspaceRoutesTest, DeletingSomethingInUseIsA409NamingTheUsers) {
  const std::string etag = Etag();
  Reply r = Send("DELETE", "/api/v1/sources/wh", "", etag);
  ASSERT_EQ(r.status, 409) << r.text;
  EXPECT_EQ(r.body["error"]["message"], "source \"wh\" is used by model \"customers\"");
  r = Send("DELETE", "/api/v1/models/customers", "", etag);
  ASSERT_EQ(r.status, 409) << r.text;
  EXPECT_EQ(r.body["error"]["message"], "model \"customers\" is used by mapping \"m1\"");
  r = Send("DELETE", "/api/v1/destinations/mem", "", etag);
  ASSERT_EQ(r.status, 409) << r.text;
  EXPECT_EQ(r.body["error"]["message"], "destination \"mem\" is used by mapping \"m1\"");
  EXPECT_EQ(Slurp(file_), kWorkspace);
  EXPECT_EQ(Send("DELETE", "/api/v1/sources/nope", "", etag).status, 404);
}

TEST_F(WorkspaceRoutesTest, ChangesNeedTheCurrentEtagSoEditorsNeverOverwriteEachOther) {
  const std::string etag = Etag();
  Reply r = Send("PATCH", "/api/v1/mappings/m1", R"j({"batch_size": 7})j");
  ASSERT_EQ(r.status, 428) << r.text;
  EXPECT_EQ(r.body["error"]["code"], "precondition_required");
  EXPECT_EQ(r.etag, etag);
  r = Send("PATCH", "/api/v1/mappings/m1", R"j({"batch_size": 7})j", "\"0123\"");
  ASSERT_EQ(r.status, 412) << r.text;
  EXPECT_EQ(r.body["error"]["code"], "precondition_failed");
  EXPECT_EQ(Slurp(file_), kWorkspace);

  // Two editors read the same version; the second one's write is refused.
  const std::string alice = etag, bob = etag;
  Reply first = Send("PATCH", "/api/v1/mappings/m1", R"j({"batch_size": 7})j", alice);
  ASSERT_EQ(first.status, 200) << first.text;
  Reply second = Send("PATCH", "/api/v1/mappings/m1", R"j({"batch_size": 9})j", bob);
  ASSERT_EQ(second.status, 412) << second.text;
  EXPECT_EQ(second.etag, first.etag);  // the reply says what is current
  const std::string text = Slurp(file_);
  EXPECT_NE(text.find("    batch_size: 7\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("batch_size: 9"), std::string::npos) << text;
  EXPECT_EQ(Current()->FindMapping("m1")->batch_size, 7);
  // With the new ETag (or *), the second editor's change goes through.
  r = Send("PATCH", "/api/v1/mappings/m1", R"j({"batch_size": 9})j", second.etag);
  EXPECT_EQ(r.status, 200) << r.text;
  r = Send("PATCH", "/api/v1/mappings/m1", R"j({"batch_size": null})j", "*");
  EXPECT_EQ(r.status, 200) << r.text;
  EXPECT_EQ(Slurp(file_), kWorkspace);

  // A read-only token cannot change anything.
  r = Send("PATCH", "/api/v1/mappings/m1", R"j({"batch_size": 7})j", r.etag, kRead);
  EXPECT_EQ(r.status, 403);
}

// Editors racing on the same version: exactly one wins, the others are told
// the file changed, and every source written is one of the winners'.
TEST_F(WorkspaceRoutesTest, ConcurrentChangesFromTheSameVersionOneWins) {
  const std::string etag = Etag();
  constexpr int kEditors = 6;
  std::vector<int> statuses(kEditors);
  std::vector<std::string> bodies(kEditors);
  std::vector<std::thread> editors;
  for (int i = 0; i < kEditors; ++i) {
    editors.emplace_back([&, i] {
      auto client = NewCurlHttpClient();
      backflow::HttpRequest req;
      req.method = "POST";
      req.url = base_ + "/api/v1/sources";
      req.body = fmt::format(R"j({{"name": "s{}", "type": "sqlite", "path": "s.db"}})j", i);
      req.headers = {{"Authorization", fmt::format("Bearer {}", kWrite)}, {"If-Match", etag}};
      auto res = client->Send(req);
      statuses[i] = res.ok() ? res->status : -1;
      if (res.ok() && res->status != 201 && res->status != 412) bodies[i] = res->body;
    });
  }
  for (std::thread& t : editors) t.join();
  EXPECT_EQ(std::count(statuses.begin(), statuses.end(), 201), 1);
  EXPECT_EQ(std::count(statuses.begin(), statuses.end(), 412), kEditors - 1)
      << fmt::format("{}", fmt::join(bodies, "\n"));
  LoadResult valid = Validate();
  ASSERT_TRUE(valid.ok());
  EXPECT_EQ(valid.workspace.sources.size(), 2u);
}

TEST_F(WorkspaceRoutesTest, CommentsAndLayoutAreKeptAndDiskEditsShowAtOnce) {
  std::string etag = Etag();
  Reply r = Send("PATCH", "/api/v1/mappings/m1",
                 R"j({"fields": {"email": "email"}, "records": "added_or_updated"})j", etag);
  ASSERT_EQ(r.status, 200) << r.text;
  std::string text = Slurp(file_);
  // Every line the user wrote is still there: comments (also inside the changed
  // fields), flow maps, blank lines.
  std::istringstream in(kWorkspace);
  std::string line;
  while (std::getline(in, line)) {
    EXPECT_NE(text.find(line + "\n"), std::string::npos) << "lost: " << line << "\n" << text;
  }
  EXPECT_NE(text.find("  # The main sync.\n  - name: m1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("    fields:\n      customer_id: id  # the key\n      email: email\n"
                      "    records: added_or_updated\n"),
            std::string::npos)
      << text;

  // Someone edits the file by hand: the next read sees it, with its ETag.
  std::string edited = text +
                       "  - { name: m3, model: customers, destination: mem, action: upsert, "
                       "fields: { customer_id: id } }\n";
  std::ofstream(file_, std::ios::binary | std::ios::trunc) << edited;
  Reply got = Send("GET", "/api/v1/mappings/m3", "", "", kRead);
  EXPECT_EQ(got.status, 200) << got.text;
  EXPECT_EQ(got.etag, WorkspaceEtag(edited));
  // ... and a change based on the ETag from before the hand edit is refused.
  r = Send("PATCH", "/api/v1/mappings/m1", R"j({"batch_size": 2})j", r.etag);
  EXPECT_EQ(r.status, 412);
}

TEST_F(WorkspaceRoutesTest, EnableAndDisableAMapping) {
  std::string etag = Etag();
  Reply r = Send("POST", "/api/v1/mappings/m1/disable", "", etag);
  ASSERT_EQ(r.status, 200) << r.text;
  EXPECT_EQ(r.body["enabled"], false);
  EXPECT_NE(Slurp(file_).find("      customer_id: id  # the key\n    enabled: false\n"),
            std::string::npos)
      << Slurp(file_);
  EXPECT_FALSE(Current()->FindMapping("m1")->enabled);
  // A disabled mapping is not run.
  Reply run = Send("POST", "/api/v1/mappings/m1/runs");
  EXPECT_EQ(run.status, 409) << run.text;
  // Disabling again changes nothing.
  Reply again = Send("POST", "/api/v1/mappings/m1/disable", "", r.etag);
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(again.etag, r.etag);
  EXPECT_EQ(Send("POST", "/api/v1/mappings/m1/enable", "").status, 428);
  r = Send("POST", "/api/v1/mappings/m1/enable", "", r.etag);
  ASSERT_EQ(r.status, 200) << r.text;
  EXPECT_EQ(r.body["enabled"], true);
  EXPECT_TRUE(Current()->FindMapping("m1")->enabled);
  run = Send("POST", "/api/v1/mappings/m1/runs");
  EXPECT_EQ(run.status, 202) << run.text;
  EXPECT_EQ(Send("POST", "/api/v1/mappings/nope/enable", "", r.etag).status, 404);
}

TEST_F(WorkspaceRoutesTest, SecretsAreSealedNeverReturnedAndOnlyReferencedFromTheFile) {
  // A secret value for a secret setting is refused, without echoing it.
  std::string etag = Etag();
  Reply r = Send("PATCH", "/api/v1/destinations/mem",
                 fmt::format(R"j({{"settings": {{"token": "{}"}}}})j", kSecretValue), etag);
  ASSERT_EQ(r.status, 422) << r.text;
  EXPECT_EQ(r.body["error"]["field"], "destinations[0].settings.token");
  EXPECT_NE(r.body["error"]["hint"].get<std::string>().find("PUT /api/v1/secrets/"),
            std::string::npos);
  EXPECT_EQ(Slurp(file_), kWorkspace);

  // Set it through the API: encrypted at rest, only masked in replies.
  r = Send("PUT", "/api/v1/secrets/MEM_TOKEN", fmt::format(R"j({{"value": "{}"}})j", kSecretValue));
  ASSERT_EQ(r.status, 200) << r.text;
  EXPECT_EQ(r.body["name"], "MEM_TOKEN");
  EXPECT_EQ(r.body["masked"], "••••6789");
  EXPECT_EQ(r.body["referenced"], false);
  absl::StatusOr<std::optional<std::string>> sealed = store_->GetSecret("MEM_TOKEN");
  ASSERT_TRUE(sealed.ok() && sealed->has_value());
  EXPECT_EQ((*sealed)->find(kSecretValue), std::string::npos);
  EXPECT_EQ(Slurp(dir_ / "state.db").find(kSecretValue), std::string::npos);
  Reply list = Send("GET", "/api/v1/secrets", "", "", kRead);
  ASSERT_EQ(list.status, 200) << list.text;
  ASSERT_EQ(list.body["secrets"].size(), 1u);
  EXPECT_EQ(list.body["secrets"][0]["masked"], "••••6789");
  EXPECT_FALSE(list.body["secrets"][0]["updated_at"].get<std::string>().empty());

  // Reference it: the file holds the reference, the service the value.
  r = Send("PATCH", "/api/v1/destinations/mem",
           R"j({"settings": {"token": "${secret:MEM_TOKEN}"}})j", etag);
  ASSERT_EQ(r.status, 200) << r.text;
  EXPECT_NE(r.body["settings"]["token"], kSecretValue);
  EXPECT_NE(Slurp(file_).find("token: \"${secret:MEM_TOKEN}\""), std::string::npos) << Slurp(file_);
  EXPECT_EQ(Slurp(file_).find(kSecretValue), std::string::npos);
  EXPECT_EQ(Current()->FindDestination("mem")->settings["token"], kSecretValue);
  Reply whole = Send("GET", "/api/v1/workspace", "", "", kRead);
  EXPECT_EQ(whole.body["workspace"]["destinations"][0]["settings"]["token"], "${secret:MEM_TOKEN}");
  EXPECT_TRUE(whole.body["valid"]);
  EXPECT_TRUE(Send("GET", "/api/v1/secrets", "", "", kRead).body["secrets"][0]["referenced"]);

  // A new value is resolved at once.
  const std::string rotated = std::string(kSecretValue) + "-rotated";
  r = Send("PUT", "/api/v1/secrets/MEM_TOKEN", fmt::format(R"j({{"value": "{}"}})j", rotated));
  ASSERT_EQ(r.status, 200) << r.text;
  EXPECT_EQ(Current()->FindDestination("mem")->settings["token"], rotated);

  // Still referenced: not deleted.
  r = Send("DELETE", "/api/v1/secrets/MEM_TOKEN");
  ASSERT_EQ(r.status, 409) << r.text;
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("destinations[0].settings.token"),
            std::string::npos);
  // Bad requests.
  EXPECT_EQ(Send("PUT", "/api/v1/secrets/1BAD", R"j({"value": "x"})j").status, 422);
  EXPECT_EQ(Send("PUT", "/api/v1/secrets/OK", R"j({"value": ""})j").status, 422);
  EXPECT_EQ(Send("PUT", "/api/v1/secrets/OK", R"j({"value": 5})j").status, 422);
  EXPECT_EQ(Send("PUT", "/api/v1/secrets/OK", R"j({"valeu": "x"})j").body["error"]["field"],
            "valeu");
  EXPECT_EQ(Send("PUT", "/api/v1/secrets/OK", R"j({"value": "x"})j", "", kRead).status, 403);
  EXPECT_EQ(Send("DELETE", "/api/v1/secrets/NOPE").status, 404);
  // Unreferenced again, it can go.
  Reply got = Send("GET", "/api/v1/destinations/mem", "", "", kRead);
  r = Send("PATCH", "/api/v1/destinations/mem", R"j({"settings": {"token": null}})j", got.etag);
  ASSERT_EQ(r.status, 200) << r.text;
  EXPECT_EQ(Slurp(file_), kWorkspace);
  EXPECT_EQ(Send("DELETE", "/api/v1/secrets/MEM_TOKEN").status, 204);
  EXPECT_TRUE(Send("GET", "/api/v1/secrets", "", "", kRead).body["secrets"].empty());

  // No reply ever carried a value.
  EXPECT_EQ(replies_.find(kSecretValue), std::string::npos);
}

TEST_F(WorkspaceRoutesTest, TheWorkspaceAndTheOpenApiDocument) {
  Reply r = Send("GET", "/api/v1/workspace", "", "", kRead);
  ASSERT_EQ(r.status, 200) << r.text;
  EXPECT_EQ(r.body["file"], file_);
  EXPECT_TRUE(r.body["valid"]);
  EXPECT_EQ(r.body["workspace"]["mappings"][0]["enabled"], true);  // defaults filled
  EXPECT_EQ(r.body["workspace"]["mappings"][0]["records"], "all");
  EXPECT_EQ(r.body["workspace"]["sources"][0]["path"], "wh.db");  // as written
  // Every list and object read carries the ETag.
  for (const char* path : {"/api/v1/sources", "/api/v1/models/customers", "/api/v1/mappings"}) {
    EXPECT_EQ(Send("GET", path, "", "", kRead).etag, r.etag) << path;
  }

  Reply doc = Send("GET", "/api/v1/openapi.json", "", "", kRead);
  ASSERT_EQ(doc.status, 200);
  const json& paths = doc.body["paths"];
  for (const char* kind : {"sources", "models", "destinations", "mappings"}) {
    std::string list = fmt::format("/api/v1/{}", kind), one = list + "/{name}";
    ASSERT_TRUE(paths[list].contains("post")) << list;
    EXPECT_EQ(paths[list]["post"]["requestBody"]["content"]["application/json"]["schema"]["type"],
              "object");
    EXPECT_TRUE(paths[list]["post"]["responses"].contains("428"));
    EXPECT_TRUE(paths[one]["patch"]["responses"].contains("412"));
    EXPECT_TRUE(paths[one].contains("delete"));
    bool if_match = false;
    for (const json& p : paths[one]["patch"]["parameters"]) {
      if_match |= p["name"] == "If-Match" && p["in"] == "header" && p["required"] == true;
    }
    EXPECT_TRUE(if_match) << one;
  }
  EXPECT_TRUE(paths["/api/v1/mappings/{name}/enable"].contains("post"));
  EXPECT_TRUE(paths["/api/v1/mappings/{name}/disable"].contains("post"));
  EXPECT_TRUE(paths["/api/v1/workspace"].contains("get"));
  EXPECT_TRUE(paths["/api/v1/secrets"].contains("get"));
  EXPECT_TRUE(paths["/api/v1/secrets/{name}"].contains("put"));
  EXPECT_TRUE(paths["/api/v1/secrets/{name}"].contains("delete"));
  EXPECT_EQ(paths["/api/v1/mappings"]["post"]["requestBody"]["content"]["application/json"]
                 ["schema"]["properties"]["enabled"]["type"],
            "boolean");
}

}  // namespace
}  // namespace backflow::api
