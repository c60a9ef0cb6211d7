// Encrypted secrets end to end: `backflow secret set` (value on stdin), a
// webhook destination whose signing secret and Authorization header come from
// ${secret:NAME}, and every command that reads the workspace (validate,
// preview, mapping test, test-connection, sync, serve) resolving them. The
// planted values must reach the receiver and nowhere else: not in any output
// of the binary, not in the state store's files.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "backflow/sqlite/database.h"
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

// Standard Webhooks secret: the key is the decoded bytes.
constexpr char kSigningSecret[] = "whsec_UExBTlRFRC1zaWduaW5nLWtleS1mb3ItZTJl";
constexpr char kSigningKeyText[] = "PLANTED-signing-key-for-e2e";  // its decoded bytes
constexpr char kToken[] = "PLANTED-bearer-token-4c7f02e9";

class SecretsE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("BACKFLOW_SECRET_KEY");
    WebhookReceiverOptions options;
    options.signing_secret = kSigningSecret;
    receiver_ = std::make_unique<WebhookReceiver>(options);
    ASSERT_TRUE(receiver_->Start().ok());
    auto db =
        sqlite::Database::Open(dir_ + "/warehouse.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    warehouse_ = std::move(*db);
    Exec("CREATE TABLE customers (id INTEGER, email TEXT)");
    for (int i = 1; i <= 30; ++i) {
      Exec(fmt::format("INSERT INTO customers VALUES ({0}, 'c{0}@example.com')", i));
    }
    std::ofstream(dir_ + "/backflow.yaml") << fmt::format(R"(state: sqlite:.backflow/state.db
sources:
  - {{ name: warehouse, type: sqlite, path: warehouse.db }}
models:
  - name: customers
    source: warehouse
    sql: SELECT id, email FROM customers
    primary_key: id
    schedule: {{ every: 1h }}
destinations:
  - name: hook
    type: webhook
    settings:
      url: "{}"
      signing_secret: ${{secret:HOOK_SIGNING}}
      headers:
        Authorization: "Bearer ${{secret:HOOK_TOKEN}}"
mappings:
  - name: customers_to_hook
    model: customers
    destination: hook
    action: send_batch
    batch_size: 10
    fields: {{ id: id, email: email }}
)",
                                                          receiver_->Url("/in"));
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(warehouse_->Exec(sql).ok()) << sql; }

  // Runs the binary and keeps everything it printed for the leak check.
  CliResult Run(const std::vector<std::string>& args, const std::string* input = nullptr) {
    CliResult r = input != nullptr ? RunCli(dir_, args, *input) : RunCli(dir_, args);
    printed_ += r.out + r.err;
    return r;
  }

  // Every request since `from` carried a valid signature and the token.
  void ExpectAuthenticated(size_t from) {
    std::vector<ReceivedRequest> all = receiver_->Requests();
    ASSERT_GT(all.size(), from);
    for (size_t i = from; i < all.size(); ++i) {
      EXPECT_TRUE(all[i].signature_valid) << "request " << all[i].sequence;
      std::vector<std::string> auth;
      for (const auto& [name, value] : all[i].headers) {
        if (name == "authorization") auth.push_back(value);
      }
      EXPECT_EQ(auth, std::vector<std::string>{std::string("Bearer ") + kToken})
          << "request " << all[i].sequence;
    }
  }

  // Fails if any planted value appears in `text` (`where` names it).
  static void ExpectNoPlantedValue(const std::string& text, const std::string& where) {
    for (const char* planted : {kSigningSecret, kSigningKeyText, kToken, "PLANTED"}) {
      EXPECT_EQ(text.find(planted), std::string::npos) << planted << " found in " << where;
    }
  }

  testing::ScratchDir scratch_{"secrets-e2e"};
  const std::string dir_ = scratch_.string();
  std::string printed_;
  std::unique_ptr<WebhookReceiver> receiver_;
  std::unique_ptr<sqlite::Database> warehouse_;
};

TEST_F(SecretsE2eTest, SecretsReachTheDestinationAndNothingElse) {
  // Before the secrets are set: an error at each reference, with the fix.
  CliResult r = Run({"validate"});
  EXPECT_EQ(r.exit_code, 3) << r.out << r.err;
  EXPECT_NE(r.out.find("backflow.yaml:15:23: error: destinations[0].settings.signing_secret: "
                       "secret \"HOOK_SIGNING\" is not set"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("backflow secret set HOOK_SIGNING"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("backflow.yaml:17:32: error: destinations[0].settings.headers."
                       "Authorization: secret \"HOOK_TOKEN\" is not set"),
            std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(dir_ + "/.backflow/secret.key"));

  // Set them through stdin (one with a trailing newline, which is dropped).
  std::string signing = std::string(kSigningSecret) + "\n";
  r = Run({"secret", "set", "HOOK_SIGNING"}, &signing);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out, "secret HOOK_SIGNING saved\n");
  EXPECT_NE(r.err.find("created the secret key file"), std::string::npos) << r.err;
  struct stat st {};
  ASSERT_EQ(stat((dir_ + "/.backflow/secret.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  std::string token = kToken;
  r = Run({"secret", "set", "HOOK_TOKEN"}, &token);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out, "secret HOOK_TOKEN saved\n");
  EXPECT_EQ(r.err, "");  // the key file exists now

  // Bad input is refused with a reason.
  std::string empty;
  r = Run({"secret", "set", "EMPTY_ONE"}, &empty);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("is empty"), std::string::npos) << r.err;
  r = Run({"secret", "set", "bad-name"}, &token);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("invalid secret name \"bad-name\""), std::string::npos) << r.err;

  // Listed by name, never by value.
  r = Run({"secret", "list"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("HOOK_SIGNING"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("HOOK_TOKEN"), std::string::npos) << r.out;
  r = Run({"secret", "list", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json list = nlohmann::json::parse(r.out);
  ASSERT_EQ(list["secrets"].size(), 2u) << r.out;
  EXPECT_EQ(list["secrets"][0]["name"], "HOOK_SIGNING");
  EXPECT_EQ(list["secrets"][0].size(), 2u);  // name and updated_at only
  EXPECT_FALSE(list["secrets"][0]["updated_at"].get<std::string>().empty());

  r = Run({"validate"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out.find("warning"), std::string::npos) << r.out;

  // Every command that reads the workspace resolves the secrets.
  r = Run({"preview", "customers", "--limit", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  r = Run({"mapping", "test", "customers_to_hook"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  size_t before = receiver_->Requests().size();
  r = Run({"test-connection", "hook"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  ExpectAuthenticated(before);

  ASSERT_EQ(Run({"serve", "--once", "--now", "2026-03-01T10:20:00Z"}).exit_code, 0);  // first sight

  before = receiver_->Requests().size();
  r = Run({"sync", "customers_to_hook", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.LastLine())["succeeded"], 30) << r.out;
  EXPECT_EQ(receiver_->State().size(), 30u);
  EXPECT_EQ(receiver_->bad_signature_count(), 0);
  EXPECT_EQ(receiver_->Requests().size() - before, 3u);  // batches of 10
  ExpectAuthenticated(before);

  // The scheduled run resolves them too.
  Exec("INSERT INTO customers VALUES (31, 'c31@example.com')");
  before = receiver_->Requests().size();
  r = Run({"serve", "--once", "--now", "2026-03-01T11:00:00Z"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("\"run_finished\""), std::string::npos) << r.out;
  EXPECT_EQ(receiver_->State().size(), 31u);
  ExpectAuthenticated(before);

  // The wrong key is named as such.
  setenv("BACKFLOW_SECRET_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", 1);
  r = Run({"validate"});
  unsetenv("BACKFLOW_SECRET_KEY");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.out.find("the secret key does not match the one the secrets were written with; "
                       "set BACKFLOW_SECRET_KEY to the original key"),
            std::string::npos)
      << r.out;
  // So is a key of the wrong length.
  setenv("BACKFLOW_SECRET_KEY", "c2hvcnQ=", 1);
  r = Run({"sync", "customers_to_hook"});
  unsetenv("BACKFLOW_SECRET_KEY");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("BACKFLOW_SECRET_KEY decodes to 5 bytes"), std::string::npos) << r.err;

  // Deleting one makes its references errors again.
  r = Run({"secret", "delete", "HOOK_TOKEN"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "secret HOOK_TOKEN deleted\n");
  r = Run({"secret", "delete", "HOOK_TOKEN"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no secret named \"HOOK_TOKEN\""), std::string::npos) << r.err;
  r = Run({"validate", "--json"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.out.find("secret \\\"HOOK_TOKEN\\\" is not set"), std::string::npos) << r.out;

  // The planted values were printed nowhere, and are stored nowhere in clear.
  ExpectNoPlantedValue(printed_, "the binary's output");
  for (const auto& entry : fs::recursive_directory_iterator(dir_)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ExpectNoPlantedValue(bytes, entry.path().string());
  }
  EXPECT_TRUE(fs::exists(dir_ + "/.backflow/state.db"));
}

// Run-time messages that quote a setting (here a receiver URL holding a token,
// and a payload field filled from a secret) show the reference, not the value.
TEST_F(SecretsE2eTest, RunTimeErrorsAndPayloadsShowTheReference) {
  std::string url = receiver_->Url(std::string("/in/") + kToken);
  std::ofstream(dir_ + "/backflow.yaml") << R"(state: sqlite:.backflow/state.db
sources:
  - { name: warehouse, type: sqlite, path: warehouse.db }
models:
  - { name: customers, source: warehouse, sql: "SELECT id, email FROM customers", primary_key: id }
destinations:
  - name: hook
    type: webhook
    settings: { url: "${secret:HOOK_URL}", signing_secret: "${secret:HOOK_SIGNING}" }
mappings:
  - name: customers_to_hook
    model: customers
    destination: hook
    action: send_batch
    fields: { id: id, email: email, api_key: "'${secret:API_KEY}'" }
)";
  std::string signing = kSigningSecret, api_key = kSigningKeyText;
  ASSERT_EQ(Run({"secret", "set", "HOOK_URL"}, &url).exit_code, 0) << printed_;
  ASSERT_EQ(Run({"secret", "set", "HOOK_SIGNING"}, &signing).exit_code, 0) << printed_;
  ASSERT_EQ(Run({"secret", "set", "API_KEY"}, &api_key).exit_code, 0) << printed_;

  CliResult r = Run({"mapping", "test", "customers_to_hook"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("\"api_key\":\"${secret:API_KEY}\""), std::string::npos) << r.out;
  r = Run({"sync", "customers_to_hook", "--dry-run", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("${secret:API_KEY}"), std::string::npos) << r.out;

  receiver_->EnqueueReplies(5, WebhookReply::Status(401, "token revoked"));
  r = Run({"sync", "customers_to_hook"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE((r.out + r.err).find("${secret:HOOK_URL}"), std::string::npos) << r.out << r.err;
  // The receiver did get the real values.
  ASSERT_GE(receiver_->Requests().size(), 1u);
  EXPECT_EQ(receiver_->Requests()[0].target, std::string("/in/") + kToken);
  EXPECT_NE(receiver_->Requests()[0].body.find(kSigningKeyText), std::string::npos);
  EXPECT_TRUE(receiver_->Requests()[0].signature_valid);

  r = Run({"runs", "list", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Run({"runs", "show", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Run({"runs", "show", "2", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  ExpectNoPlantedValue(printed_, "the binary's output");
  for (const auto& entry : fs::recursive_directory_iterator(dir_)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ExpectNoPlantedValue(bytes, entry.path().string());
  }
}

}  // namespace
}  // namespace backflow
