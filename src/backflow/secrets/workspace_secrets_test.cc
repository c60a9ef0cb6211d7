#include "backflow/secrets/workspace_secrets.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "backflow/destinations/destination.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/secrets/secret_store.h"
#include "backflow/sources/sqlite/sqlite_source.h"
#include "backflow/state/state_store.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

constexpr char kPlanted[] = "PLANTED-s3cr3t-do-not-leak-7d1e";

class WorkspaceSecretsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("BACKFLOW_SECRET_KEY");
    ASSERT_TRUE(registry_.AddSource(SqliteSourceDefinition()).ok());
    ASSERT_TRUE(registry_
                    .AddDestination(testing::MemoryDestinationDefinition(
                        std::make_shared<testing::MemoryDestinationState>()))
                    .ok());
  }

  std::string StatePath() const { return (dir_ / ".backflow" / "state.db").string(); }
  std::string KeyPath() const { return (dir_ / ".backflow" / "secret.key").string(); }

  // Stores secrets the way `backflow secret set` does (the key file is created).
  void SetSecret(const std::string& name, const std::string& value) {
    fs::create_directories(dir_ / ".backflow");
    auto state = OpenSqliteStateStore(StatePath());
    ASSERT_TRUE(state.ok()) << state.status();
    auto box = SecretBox::Load(KeyPath());
    ASSERT_TRUE(box.ok()) << box.status();
    ASSERT_TRUE(SecretStore(**state, &*box).Set(name, value).ok());
  }

  LoadResult Load(const std::string& yaml, const SecretResolverFactory& secrets) {
    std::string file = (dir_ / "backflow.yaml").string();
    std::ofstream(file) << yaml;
    return LoadWorkspace(file, registry_, secrets);
  }
  LoadResult Load(const std::string& yaml) { return Load(yaml, StateSecretResolverFactory()); }

  static std::string AllDiagnostics(const LoadResult& r) {
    std::string out;
    for (const Diagnostic& d : r.diagnostics) {
      out += d.ToString() + "\n" + d.message + "\n" + d.hint + "\n" + d.path + "\n";
    }
    return out;
  }

  Registry registry_;
  testing::ScratchDir scratch_{"ws-secrets"};
  const fs::path dir_ = scratch_.path();
};

// A workspace with `token` (a secret setting) and `label` to fill in.
std::string Workspace(const std::string& token, const std::string& label = "crm",
                      const std::string& extra_top = "") {
  return fmt::format(R"({}state: sqlite:.backflow/state.db
sources:
  - name: warehouse
    type: sqlite
    path: warehouse.db
models:
  - name: customers
    source: warehouse
    sql: SELECT id, email FROM customers
    primary_key: id
destinations:
  - name: mem
    type: memory
    settings:
      label: {}
      token: {}
mappings:
  - name: to_mem
    model: customers
    destination: mem
    action: upsert
    fields: {{ customer_id: id, email: email }}
)",
                     extra_top, label, token);
}

TEST_F(WorkspaceSecretsTest, ReferencesResolveFromTheStateStore) {
  SetSecret("MEM_TOKEN", kPlanted);
  SetSecret("LABEL_PART", "${env:HOME}");  // a value is never expanded again
  setenv("BACKFLOW_TEST_SUFFIX", "-env", 1);
  LoadResult r = Load(
      Workspace("${secret:MEM_TOKEN}", "\"${secret:LABEL_PART}/${env:BACKFLOW_TEST_SUFFIX}\""));
  ASSERT_TRUE(r.ok()) << AllDiagnostics(r);
  const DestinationConfig* mem = r.workspace.FindDestination("mem");
  ASSERT_NE(mem, nullptr);
  EXPECT_EQ(mem->settings["token"], kPlanted);
  EXPECT_EQ(mem->settings["label"], "${env:HOME}/-env");
  // A secret reference is not a secret written in clear: no warning at all.
  EXPECT_TRUE(r.diagnostics.empty()) << AllDiagnostics(r);
  EXPECT_EQ(r.workspace.secret_key_file, KeyPath());
}

TEST_F(WorkspaceSecretsTest, RedactSecretsReplacesResolvedValuesByTheirReference) {
  SetSecret("MEM_TOKEN", kPlanted);
  SetSecret("TINY", "ab");
  LoadResult r = Load(Workspace("${secret:MEM_TOKEN}", "${secret:TINY}"));
  ASSERT_TRUE(r.ok()) << AllDiagnostics(r);
  EXPECT_EQ(r.workspace.resolved_secrets.size(), 2u);
  std::string message = fmt::format("POST https://x.example/{0}?k={0} failed: about", kPlanted);
  EXPECT_EQ(r.workspace.RedactSecrets(message),
            "POST https://x.example/${secret:MEM_TOKEN}?k=${secret:MEM_TOKEN} failed: about");
  // Values under 4 characters are left alone ("ab" would garble "about").
  EXPECT_EQ(r.workspace.RedactSecrets("about"), "about");
  // Nothing to redact without secrets.
  LoadResult plain = Load(Workspace("${env:HOME}"));
  EXPECT_TRUE(plain.workspace.resolved_secrets.empty());
  EXPECT_EQ(plain.workspace.RedactSecrets(message), message);
}

TEST_F(WorkspaceSecretsTest, ClearSecretStillWarnsAndSuggestsASecret) {
  LoadResult r = Load(Workspace("plain-text-token"));
  ASSERT_TRUE(r.ok()) << AllDiagnostics(r);
  ASSERT_EQ(r.diagnostics.size(), 1u);
  EXPECT_EQ(r.diagnostics[0].message, "secret written in clear in the file");
  EXPECT_NE(r.diagnostics[0].hint.find("${secret:NAME}"), std::string::npos);
}

TEST_F(WorkspaceSecretsTest, MissingSecretIsAnErrorAtTheReferenceWithAHint) {
  SetSecret("OTHER", "x-value");
  // Line 16 is "      token: Bearer ${secret:NOPE}"; the reference starts at column 21.
  LoadResult r = Load(Workspace("Bearer ${secret:NOPE}", "\"a ${secret:ALSO_MISSING}\""));
  ASSERT_FALSE(r.ok());
  ASSERT_EQ(r.error_count(), 2u) << AllDiagnostics(r);
  const Diagnostic& label = r.diagnostics[0];
  EXPECT_EQ(label.line, 15);
  EXPECT_EQ(label.column, 17);  // `      label: "a ` is 16 characters
  EXPECT_EQ(label.message, "secret \"ALSO_MISSING\" is not set");
  const Diagnostic& token = r.diagnostics[1];
  EXPECT_EQ(token.file, (dir_ / "backflow.yaml").string());
  EXPECT_EQ(token.line, 16);
  EXPECT_EQ(token.column, 21);
  EXPECT_EQ(token.path, "destinations[0].settings.token");
  EXPECT_EQ(token.message, "secret \"NOPE\" is not set");
  EXPECT_NE(token.hint.find("backflow secret set NOPE"), std::string::npos) << token.hint;
  EXPECT_NE(token.ToString().find("backflow.yaml:16:21: error:"), std::string::npos)
      << token.ToString();
}

TEST_F(WorkspaceSecretsTest, RepeatedReferencesAreLocatedEach) {
  LoadResult r = Load(Workspace("\"${secret:GONE}:${secret:GONE}\""));
  ASSERT_EQ(r.error_count(), 2u) << AllDiagnostics(r);
  EXPECT_EQ(r.diagnostics[0].line, 16);
  EXPECT_EQ(r.diagnostics[0].column, 15);
  EXPECT_EQ(r.diagnostics[1].line, 16);
  EXPECT_EQ(r.diagnostics[1].column, 15 + 14 + 1);
}

TEST_F(WorkspaceSecretsTest, NoStateYetMeansMissingAndCreatesNothing) {
  LoadResult r = Load(Workspace("${secret:MEM_TOKEN}"));
  ASSERT_EQ(r.error_count(), 1u) << AllDiagnostics(r);
  EXPECT_EQ(r.diagnostics[0].message, "secret \"MEM_TOKEN\" is not set");
  EXPECT_FALSE(fs::exists(StatePath()));
  EXPECT_FALSE(fs::exists(KeyPath()));
}

TEST_F(WorkspaceSecretsTest, PlantedValueNeverAppearsInDiagnostics) {
  SetSecret("PLANTED", kPlanted);
  // Every place below quotes the value it rejects in its message: an unknown
  // source type, an unknown source reference, a mapping's unknown model.
  std::string yaml = fmt::format(R"(state: sqlite:.backflow/state.db
sources:
  - name: warehouse
    type: "${{secret:PLANTED}}"
  - name: other
    type: sqlite
    path: "${{secret:PLANTED}}.db"
models:
  - name: customers
    source: "x${{secret:PLANTED}}"
    sql: SELECT id FROM t
    primary_key: id
destinations:
  - name: mem
    type: memory
    settings: {{ token: "${{secret:PLANTED}}", label: "${{secret:MISSING_ONE}}" }}
mappings:
  - name: to_mem
    model: "${{secret:PLANTED}}"
    destination: mem
    action: upsert
    fields: {{ customer_id: id }}
)");
  LoadResult r = Load(yaml);
  ASSERT_FALSE(r.ok());
  std::string all = AllDiagnostics(r);
  EXPECT_GE(r.error_count(), 4u) << all;
  EXPECT_EQ(all.find(kPlanted), std::string::npos) << all;
  EXPECT_EQ(all.find("PLANTED-s3cr3t"), std::string::npos) << all;
  // The messages name the reference instead.
  EXPECT_NE(all.find("unknown source type \"${secret:PLANTED}\""), std::string::npos) << all;
  EXPECT_NE(all.find("unknown model \"${secret:PLANTED}\""), std::string::npos) << all;
  EXPECT_NE(all.find("secret \"MISSING_ONE\" is not set"), std::string::npos) << all;
  // The value was resolved where it is valid.
  ASSERT_NE(r.workspace.FindDestination("mem"), nullptr);
  EXPECT_EQ(r.workspace.FindDestination("mem")->settings["token"], kPlanted);
}

TEST_F(WorkspaceSecretsTest, WrongKeyIsReportedOnceWithoutTheValue) {
  SetSecret("MEM_TOKEN", kPlanted);
  SetSecret("LABEL", "label-value");
  // Another key in the environment overrides the key file.
  setenv("BACKFLOW_SECRET_KEY", SecretBox::GenerateKeyBase64().c_str(), 1);
  LoadResult r = Load(Workspace("${secret:MEM_TOKEN}", "${secret:LABEL}"));
  unsetenv("BACKFLOW_SECRET_KEY");
  ASSERT_EQ(r.error_count(), 1u) << AllDiagnostics(r);
  EXPECT_NE(r.diagnostics[0].message.find(kWrongSecretKeyMessage), std::string::npos)
      << AllDiagnostics(r);
  EXPECT_EQ(AllDiagnostics(r).find(kPlanted), std::string::npos);
}

TEST_F(WorkspaceSecretsTest, DeletedKeyFileIsAnErrorNotANewKey) {
  SetSecret("MEM_TOKEN", kPlanted);
  fs::remove(KeyPath());
  LoadResult r = Load(Workspace("${secret:MEM_TOKEN}"));
  ASSERT_EQ(r.error_count(), 1u) << AllDiagnostics(r);
  EXPECT_NE(r.diagnostics[0].message.find("does not exist"), std::string::npos)
      << AllDiagnostics(r);
  EXPECT_FALSE(fs::exists(KeyPath()));
}

TEST_F(WorkspaceSecretsTest, WithoutAResolverReferencesStayAsWritten) {
  LoadResult r = Load(Workspace("${secret:MEM_TOKEN}"), nullptr);
  ASSERT_TRUE(r.ok()) << AllDiagnostics(r);
  EXPECT_EQ(r.workspace.FindDestination("mem")->settings["token"], "${secret:MEM_TOKEN}");
  EXPECT_FALSE(fs::exists(StatePath()));
}

TEST_F(WorkspaceSecretsTest, SecretsAreNotAllowedWhereTheyCannotBeRead) {
  LoadResult r = Load("state: \"sqlite:${secret:X}\"\nsecret_key_file: \"${secret:Y}\"\n");
  ASSERT_EQ(r.error_count(), 2u) << AllDiagnostics(r);
  EXPECT_EQ(r.diagnostics[0].path, "state");
  EXPECT_NE(r.diagnostics[0].message.find("${secret:X} cannot be used here"), std::string::npos);
  EXPECT_EQ(r.diagnostics[1].path, "secret_key_file");
}

TEST_F(WorkspaceSecretsTest, InvalidSecretNameInAReference) {
  LoadResult r = Load(Workspace("${secret:not-valid}"));
  ASSERT_EQ(r.error_count(), 1u) << AllDiagnostics(r);
  EXPECT_EQ(r.diagnostics[0].message, "invalid secret name \"not-valid\"");
}

TEST_F(WorkspaceSecretsTest, SecretKeyFileSettingAndItsDefault) {
  fs::create_directories(dir_ / "keys");
  // Relative to the workspace file, and used to read the secrets.
  fs::create_directories(dir_ / ".backflow");
  {
    auto state = OpenSqliteStateStore(StatePath());
    ASSERT_TRUE(state.ok());
    auto box = SecretBox::Load((dir_ / "keys" / "backflow.key").string());
    ASSERT_TRUE(box.ok()) << box.status();
    ASSERT_TRUE(SecretStore(**state, &*box).Set("MEM_TOKEN", kPlanted).ok());
  }
  LoadResult r =
      Load(Workspace("${secret:MEM_TOKEN}", "crm", "secret_key_file: keys/backflow.key\n"));
  ASSERT_TRUE(r.ok()) << AllDiagnostics(r);
  EXPECT_EQ(r.workspace.secret_key_file, (dir_ / "keys" / "backflow.key").string());
  EXPECT_EQ(r.workspace.FindDestination("mem")->settings["token"], kPlanted);
  EXPECT_FALSE(fs::exists(KeyPath()));

  // Default: next to the SQLite state file.
  LoadResult other =
      LoadWorkspaceFromString("state: sqlite:/data/bf/state.db\n", "/ws/backflow.yaml", registry_);
  EXPECT_EQ(other.workspace.secret_key_file, "/data/bf/secret.key");
}

}  // namespace
}  // namespace backflow
