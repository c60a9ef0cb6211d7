// The configuration API end to end, through the real binary: `backflow serve
// --listen` with a token from `backflow token create`; a secret set and a
// destination and a mapping changed through the API land in the workspace
// file (comments kept, references only), the mapping runs at once through
// POST /mappings/{name}/runs to a signing-checking webhook receiver, and
// `backflow validate` and `backflow export` agree with the service.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "backflow/common/http_client.h"
#include "backflow/sqlite/database.h"
#include "backflow/testing/process.h"
#include "backflow/testing/scratch_dir.h"
#include "backflow/testing/webhook_receiver.h"
#include "cli_runner.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using e2e::CliResult;
using e2e::RunCli;
using nlohmann::json;

constexpr const char* kSigningSecret = "e2e-signing-secret-planted-0123456789";

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class WorkspaceApiE2eTest : public ::testing::Test {
 protected:
  WorkspaceApiE2eTest() : receiver_(WebhookReceiverOptions{.signing_secret = kSigningSecret}) {}

  void SetUp() override {
    ASSERT_TRUE(receiver_.Start().ok());
    auto db =
        sqlite::Database::Open(dir_ + "/warehouse.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("CREATE TABLE customers (id INTEGER, email TEXT)").ok());
    for (int i = 1; i <= 20; ++i) {
      ASSERT_TRUE(
          (*db)
              ->Exec(fmt::format("INSERT INTO customers VALUES ({0}, 'c{0}@example.com')", i))
              .ok());
    }
    std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(# Hand-written: the API keeps this.
state: sqlite:.backflow/state.db

sources:
  # The warehouse copy.
  - name: warehouse
    type: sqlite
    path: warehouse.db

models:
  - name: customers
    source: warehouse
    sql: SELECT id, email FROM customers
    primary_key: id

destinations:
  - name: hook
    type: webhook
    settings:
      url: "{}"  # the receiver
)",
                                                          receiver_.Url("/in"));
    unsetenv("BACKFLOW_SECRET_KEY");
    http_ = NewCurlHttpClient();
  }

  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  struct Reply {
    int status = 0;
    json body;
    std::string etag;
    std::string text;
  };

  Reply Send(const std::string& method, const std::string& path, const std::string& body = "",
             const std::string& if_match = "") {
    HttpRequest req;
    req.method = method;
    req.url = base_ + path;
    req.body = body;
    req.headers.emplace_back("Authorization", "Bearer " + token_);
    if (!body.empty()) req.headers.emplace_back("Content-Type", "application/json");
    if (!if_match.empty()) req.headers.emplace_back("If-Match", if_match);
    absl::StatusOr<HttpResponse> res = http_->Send(req);
    Reply r;
    if (!res.ok()) return r;
    r.status = res->status;
    r.text = res->body;
    r.body = json::parse(res->body, nullptr, false);
    r.etag = res->Header("etag").value_or("");
    replies_ += res->body;
    return r;
  }

  testing::ScratchDir scratch_{"wsapi-e2e"};
  const std::string dir_ = scratch_.string();
  WebhookReceiver receiver_;
  std::unique_ptr<HttpClient> http_;
  std::string base_;
  std::string token_;
  pid_t pid_ = -1;
  std::string replies_;
};

TEST_F(WorkspaceApiE2eTest, AMappingCreatedThroughTheApiRunsAndExportShowsIt) {
  CliResult created = RunCli(dir_, {"token", "create", "e2e"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  token_ = created.LastLine();
  ASSERT_FALSE(token_.empty());

  const int port = testing::UnusedPort();
  base_ = fmt::format("http://127.0.0.1:{}", port);
  pid_ = e2e::StartCli(
      dir_, {"serve", "--listen", fmt::format("127.0.0.1:{}", port), "--poll-seconds", "1"});
  ASSERT_GT(pid_, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (Send("GET", "/healthz").status != 200 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  Reply workspace = Send("GET", "/api/v1/workspace");
  ASSERT_EQ(workspace.status, 200) << workspace.text;
  std::string etag = workspace.etag;
  ASSERT_FALSE(etag.empty());

  // The signing secret: set through the API, referenced from the destination.
  Reply secret =
      Send("PUT", "/api/v1/secrets/HOOK_SIGNING", json({{"value", kSigningSecret}}).dump());
  ASSERT_EQ(secret.status, 200) << secret.text;
  Reply hook = Send("PATCH", "/api/v1/destinations/hook",
                    R"j({"settings": {"signing_secret": "${secret:HOOK_SIGNING}"}})j", etag);
  ASSERT_EQ(hook.status, 200) << hook.text;
  etag = hook.etag;

  // A mapping, created through the API, then run at once.
  Reply mapping = Send("POST", "/api/v1/mappings", R"j({"name": "customers_to_hook",
      "model": "customers", "destination": "hook", "action": "send_batch",
      "fields": {"id": "id", "email": "email"}})j",
                       etag);
  ASSERT_EQ(mapping.status, 201) << mapping.text;
  Reply queued = Send("POST", "/api/v1/mappings/customers_to_hook/runs");
  ASSERT_EQ(queued.status, 202) << queued.text;
  int64_t run_id = queued.body["runs"][0]["id"];
  Reply run;
  while (std::chrono::steady_clock::now() < deadline) {
    run = Send("GET", fmt::format("/api/v1/runs/{}", run_id));
    std::string status = run.body.is_object() ? run.body.value("status", "") : "";
    if (status != "queued" && status != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(run.body["status"], "succeeded") << run.text;
  EXPECT_EQ(run.body["counts"]["succeeded"], 20);
  EXPECT_EQ(receiver_.State().size(), 20u);
  EXPECT_EQ(receiver_.State().count("7"), 1u);

  // The file: the user's comments, the new entries, references only.
  const std::string text = Slurp(dir_ + "/backflow.yaml");
  EXPECT_NE(text.find("# Hand-written: the API keeps this.\n"), std::string::npos) << text;
  EXPECT_NE(text.find("  # The warehouse copy.\n"), std::string::npos) << text;
  EXPECT_NE(text.find("      url: \"" + receiver_.Url("/in") +
                      "\"  # the receiver\n"
                      "      signing_secret: ${secret:HOOK_SIGNING}\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("mappings:\n  - name: customers_to_hook\n"), std::string::npos) << text;
  EXPECT_EQ(text.find(kSigningSecret), std::string::npos);
  CliResult valid = RunCli(dir_, {"validate"});
  EXPECT_EQ(valid.exit_code, 0) << valid.out;

  // export: what the service sees, defaults filled in, no secret value.
  CliResult exported = RunCli(dir_, {"export"});
  ASSERT_EQ(exported.exit_code, 0) << exported.err;
  EXPECT_NE(exported.out.find("signing_secret: ${secret:HOOK_SIGNING}"), std::string::npos)
      << exported.out;
  EXPECT_NE(exported.out.find("  - name: customers_to_hook\n"), std::string::npos) << exported.out;
  EXPECT_NE(exported.out.find("    enabled: true\n"), std::string::npos) << exported.out;
  EXPECT_NE(exported.out.find("      timeout_ms: 30000\n"), std::string::npos) << exported.out;
  EXPECT_EQ(exported.out.find(kSigningSecret), std::string::npos);
  CliResult as_json = RunCli(dir_, {"export", "--json"});
  ASSERT_EQ(as_json.exit_code, 0) << as_json.err;
  json doc = json::parse(as_json.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << as_json.out;
  EXPECT_EQ(doc["mappings"][0]["name"], "customers_to_hook");
  EXPECT_EQ(doc["destinations"][0]["settings"]["signing_secret"], "${secret:HOOK_SIGNING}");
  // The exported YAML is itself a valid workspace.
  std::ofstream(dir_ + "/exported.yaml") << exported.out;
  CliResult revalidated = RunCli(dir_, {"-c", "exported.yaml", "validate"});
  EXPECT_EQ(revalidated.exit_code, 0) << revalidated.out;

  // The API never returned the value either.
  EXPECT_EQ(replies_.find(kSigningSecret), std::string::npos);

  ASSERT_EQ(kill(pid_, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid_, &status, 0), pid_);
  pid_ = -1;
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace backflow
