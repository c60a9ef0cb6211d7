#include "backflow/config/workspace_editor.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/sources/sqlite/sqlite_source.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

constexpr const char* kWorkspace = R"(# The team's workspace.
state: sqlite:state.db

sources:
  # The warehouse copy.
  - name: wh
    type: sqlite
    path: wh.db  # relative to this file

models:
  - name: customers
    source: wh
    # Only active ones.
    sql: >
      SELECT id, email
      FROM customers
    primary_key: id
    schedule: { every: 1h }

destinations:
  - { name: mem, type: memory, settings: { label: main } }

mappings:
  # First mapping.
  - name: m1
    model: customers
    destination: mem
    action: upsert
    fields:
      customer_id: id  # the key
      email: email
  # Second mapping.
  - name: m2
    model: customers
    destination: mem
    action: upsert
    fields: { customer_id: id }
    enabled: false
)";

WorkspaceDocument Parse(const std::string& text) {
  absl::StatusOr<WorkspaceDocument> doc = WorkspaceDocument::Parse(text);
  EXPECT_TRUE(doc.ok()) << doc.status();
  return *std::move(doc);
}

OrderedJson J(const char* text) { return OrderedJson::parse(text); }

// Every line of `before` but those in `changed` appears in `after`, in order.
void ExpectLinesKept(const std::string& before, const std::string& after,
                     const std::vector<std::string>& changed) {
  size_t pos = 0;
  std::istringstream in(before);
  std::string line;
  while (std::getline(in, line)) {
    if (std::find(changed.begin(), changed.end(), line) != changed.end()) continue;
    size_t at = after.find(line + "\n", pos);
    ASSERT_NE(at, std::string::npos) << "lost line: " << line << "\n--- after:\n" << after;
    pos = at + line.size();
  }
}

TEST(WorkspaceEditorTest, ParsesTheDocumentWithTheLoadersTypes) {
  WorkspaceDocument doc = Parse(kWorkspace);
  EXPECT_EQ(doc.json()["state"], "sqlite:state.db");
  EXPECT_EQ(doc.Entries(EntryKind::kMapping).size(), 2u);
  EXPECT_EQ(doc.json()["mappings"][1]["enabled"], false);
  EXPECT_EQ(doc.json()["models"][0]["sql"], "SELECT id, email FROM customers\n");
  EXPECT_EQ(doc.Find(EntryKind::kMapping, "m2"), 1u);
  EXPECT_FALSE(doc.Find(EntryKind::kMapping, "nope").has_value());
  EXPECT_TRUE(Parse("").json().empty());
  EXPECT_EQ(WorkspaceDocument::Parse("- a\n- b\n").status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status bad = WorkspaceDocument::Parse("sources: [\n").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("line"), std::string_view::npos) << bad;
}

TEST(WorkspaceEditorTest, AppendWritesOnlyTheNewEntryInTheSectionsStyle) {
  WorkspaceDocument doc = Parse(kWorkspace);
  OrderedJson entry = J(R"j({"name": "m3", "model": "customers", "destination": "mem",
      "action": "upsert", "fields": {"customer_id": "id", "plan": "lower(plan)"}})j");
  absl::StatusOr<WorkspaceDocument::Edit> edit = doc.Append(EntryKind::kMapping, entry);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_TRUE(edit->layout_kept);
  // The old text is a prefix: the new entry comes after the last one, at its indentation.
  ASSERT_EQ(edit->text.rfind(kWorkspace, 0), 0u) << edit->text;
  EXPECT_EQ(edit->text.substr(std::string(kWorkspace).size()),
            "  - name: m3\n"
            "    model: customers\n"
            "    destination: mem\n"
            "    action: upsert\n"
            "    fields:\n"
            "      customer_id: id\n"
            "      plan: lower(plan)\n");
  WorkspaceDocument after = Parse(edit->text);
  EXPECT_EQ(after.Entries(EntryKind::kMapping)[2], entry);

  // A section of one-line entries gets a one-line entry.
  edit = doc.Append(EntryKind::kDestination, J(R"({"name": "m2", "type": "memory"})"));
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_NE(edit->text.find("  - { name: mem, type: memory, settings: { label: main } }\n"
                            "  - { name: m2, type: memory }\n"),
            std::string::npos)
      << edit->text;
  ExpectLinesKept(kWorkspace, edit->text, {});
}

TEST(WorkspaceEditorTest, AppendCreatesAMissingSectionInItsPlace) {
  const std::string text =
      "# top\nsources:\n  - { name: wh, type: sqlite, path: wh.db }\n\n# the mappings\n"
      "mappings: []\n";
  WorkspaceDocument doc = Parse(text);
  absl::StatusOr<WorkspaceDocument::Edit> edit = doc.Append(
      EntryKind::kModel, J(R"({"name": "m", "source": "wh", "sql": "SELECT 1", "primary_key":
      "id"})"));
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_EQ(edit->text,
            "# top\nsources:\n  - { name: wh, type: sqlite, path: wh.db }\n\n"
            "models:\n  - name: m\n    source: wh\n    sql: SELECT 1\n    primary_key: id\n\n"
            "# the mappings\nmappings: []\n");
  // An empty flow section is written again as a block list.
  edit = doc.Append(EntryKind::kMapping, J(R"({"name": "x"})"));
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_NE(edit->text.find("# the mappings\nmappings:\n  - name: x\n"), std::string::npos)
      << edit->text;
  // An empty file.
  edit = Parse("").Append(EntryKind::kSource, J(R"({"name": "a", "type": "sqlite"})"));
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_EQ(edit->text, "sources:\n  - name: a\n    type: sqlite\n");
  // A file without a final line break.
  edit = Parse("sources:\n  - name: a\n    type: sqlite")
             .Append(EntryKind::kSource, J(R"({"name": "b", "type": "sqlite"})"));
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_EQ(edit->text, "sources:\n  - name: a\n    type: sqlite\n  - name: b\n    type: sqlite\n");
}

TEST(WorkspaceEditorTest, ReplaceRewritesOnlyTheChangedKeys) {
  WorkspaceDocument doc = Parse(kWorkspace);
  OrderedJson m1 = doc.Entries(EntryKind::kMapping)[0];
  OrderedJson patched =
      MergePatch(m1, J(R"({"action": "typed", "fields": {"email": null, "age": "age"},
                           "enabled": false, "batch_size": 10})"));
  absl::StatusOr<WorkspaceDocument::Edit> edit = doc.Replace(EntryKind::kMapping, 0, patched);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_TRUE(edit->layout_kept);
  EXPECT_NE(edit->text.find("  # First mapping.\n"
                            "  - name: m1\n"
                            "    model: customers\n"
                            "    destination: mem\n"
                            "    action: typed\n"
                            "    fields:\n"
                            "      customer_id: id  # the key\n"
                            "      age: age\n"
                            "    enabled: false\n"
                            "    batch_size: 10\n"
                            "  # Second mapping.\n"),
            std::string::npos)
      << edit->text;
  ExpectLinesKept(kWorkspace, edit->text, {"    action: upsert", "      email: email"});
  EXPECT_EQ(Parse(edit->text).Entries(EntryKind::kMapping)[0], patched);

  // A multi-line value becomes a literal block; the comment above the key stays.
  OrderedJson model = doc.Entries(EntryKind::kModel)[0];
  model["sql"] = "SELECT id,\n  email\nFROM customers";
  model["schedule"] = J(R"({"every": "30m"})");
  edit = doc.Replace(EntryKind::kModel, 0, model);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_NE(edit->text.find("    # Only active ones.\n"
                            "    sql: |-\n"
                            "      SELECT id,\n"
                            "        email\n"
                            "      FROM customers\n"
                            "    primary_key: id\n"
                            "    schedule: { every: 30m }\n"),
            std::string::npos)
      << edit->text;
  EXPECT_EQ(Parse(edit->text).Entries(EntryKind::kModel)[0], model);

  // A one-line entry is written again on one line.
  OrderedJson mem = doc.Entries(EntryKind::kDestination)[0];
  mem["settings"]["token"] = "${secret:MEM_TOKEN}";
  edit = doc.Replace(EntryKind::kDestination, 0, mem);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_NE(edit->text.find("  - { name: mem, type: memory, settings: { label: main, token: "
                            "\"${secret:MEM_TOKEN}\" } }\n"),
            std::string::npos)
      << edit->text;
}

TEST(WorkspaceEditorTest, ReplaceEditsNestedMappingsMemberByMember) {
  const std::string text =
      "destinations:\n"
      "  - name: hook\n"
      "    type: webhook\n"
      "    settings:\n"
      "      url: \"http://x/in\"  # the receiver\n"
      "      # Extra headers.\n"
      "      headers:\n"
      "        X-Team: data  # who\n"
      "      timeout_ms: 100\n"
      "    description: main hook  # shown in the UI\n";
  WorkspaceDocument doc = Parse(text);
  OrderedJson patched =
      MergePatch(doc.Entries(EntryKind::kDestination)[0],
                 J(R"j({"settings": {"timeout_ms": null, "headers": {"X-Env": "prod"},
                         "signing_secret": "${secret:HOOK}"}})j"));
  absl::StatusOr<WorkspaceDocument::Edit> edit = doc.Replace(EntryKind::kDestination, 0, patched);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_TRUE(edit->layout_kept);
  EXPECT_EQ(edit->text,
            "destinations:\n"
            "  - name: hook\n"
            "    type: webhook\n"
            "    settings:\n"
            "      url: \"http://x/in\"  # the receiver\n"
            "      # Extra headers.\n"
            "      headers:\n"
            "        X-Team: data  # who\n"
            "        X-Env: prod\n"
            "      signing_secret: ${secret:HOOK}\n"
            "    description: main hook  # shown in the UI\n");
  EXPECT_EQ(Parse(edit->text).Entries(EntryKind::kDestination)[0], patched);
}

// Many patches over the sample document: each gives exactly the intended
// document, and the layout is kept for all of them.
TEST(WorkspaceEditorTest, RandomPatchesGiveTheIntendedDocument) {
  WorkspaceDocument doc = Parse(kWorkspace);
  const std::vector<OrderedJson> values = {"x",
                                           "true",
                                           "12",
                                           "a: b",
                                           "${secret:T}",
                                           "SELECT 1\nFROM t\n",
                                           7,
                                           false,
                                           nullptr,
                                           J(R"j({"k": "v"})j"),
                                           J(R"j({"customer_id": null, "n": "lower(n)"})j"),
                                           J(R"j(["a", "b"])j")};
  const std::vector<std::string> keys = {"name",   "model", "fields", "enabled", "batch_size",
                                         "action", "extra", "sql",    "settings"};
  uint32_t seed = 12345;
  auto next = [&](size_t n) {
    seed = seed * 1103515245u + 12345u;
    return static_cast<size_t>((seed >> 8) % n);
  };
  int kept = 0;
  for (int round = 0; round < 300; ++round) {
    EntryKind kind = std::vector<EntryKind>{EntryKind::kSource, EntryKind::kModel,
                                            EntryKind::kDestination, EntryKind::kMapping}[next(4)];
    OrderedJson entries = doc.Entries(kind);
    size_t index = next(entries.size());
    OrderedJson patch = OrderedJson::object();
    for (size_t n = 1 + next(3); n > 0; --n)
      patch[keys[next(keys.size())]] = values[next(values.size())];
    patch["name"] = entries[index]["name"];  // the dash line's key stays
    OrderedJson entry = MergePatch(entries[index], patch);
    absl::StatusOr<WorkspaceDocument::Edit> edit = doc.Replace(kind, index, entry);
    ASSERT_TRUE(edit.ok()) << edit.status() << " patch " << patch.dump();
    WorkspaceDocument after = Parse(edit->text);
    EXPECT_EQ(after.Entries(kind)[index], entry) << patch.dump() << "\n" << edit->text;
    kept += edit->layout_kept;
  }
  EXPECT_EQ(kept, 300);
}

TEST(WorkspaceEditorTest, ReplaceWithKeysInAnotherOrderRewritesTheEntry) {
  WorkspaceDocument doc = Parse(kWorkspace);
  OrderedJson source = J(R"({"type": "sqlite", "name": "wh", "path": "other.db"})");
  absl::StatusOr<WorkspaceDocument::Edit> edit = doc.Replace(EntryKind::kSource, 0, source);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_NE(edit->text.find("  # The warehouse copy.\n  - type: sqlite\n    name: wh\n"
                            "    path: other.db\n\nmodels:"),
            std::string::npos)
      << edit->text;
  EXPECT_EQ(Parse(edit->text).Entries(EntryKind::kSource)[0], source);
}

TEST(WorkspaceEditorTest, RemoveDeletesTheEntryAndTheCommentAboveIt) {
  WorkspaceDocument doc = Parse(kWorkspace);
  absl::StatusOr<WorkspaceDocument::Edit> edit = doc.Remove(EntryKind::kMapping, 0);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_TRUE(edit->layout_kept);
  EXPECT_EQ(edit->text.find("First mapping"), std::string::npos);
  EXPECT_EQ(edit->text.find("m1"), std::string::npos);
  EXPECT_NE(edit->text.find("mappings:\n  # Second mapping.\n  - name: m2\n"), std::string::npos)
      << edit->text;
  WorkspaceDocument after = Parse(edit->text);
  ASSERT_EQ(after.Entries(EntryKind::kMapping).size(), 1u);
  EXPECT_EQ(after.Entries(EntryKind::kMapping)[0]["name"], "m2");

  // The last entry: the section stays, empty.
  edit = doc.Remove(EntryKind::kDestination, 0);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_TRUE(edit->layout_kept);
  EXPECT_NE(edit->text.find("destinations: []\n\nmappings:\n  # First mapping."), std::string::npos)
      << edit->text;
  EXPECT_TRUE(Parse(edit->text).Entries(EntryKind::kDestination).empty());
}

TEST(WorkspaceEditorTest, ValuesReadBackWithTheirTypes) {
  const std::vector<std::string> tricky = {"true",
                                           "False",
                                           "yes",
                                           "null",
                                           "~",
                                           "123",
                                           "-5",
                                           "1.5",
                                           "09:00",
                                           "1e3",
                                           ".5",
                                           "",
                                           " padded ",
                                           "a: b",
                                           "a #b",
                                           "# c",
                                           "- x",
                                           "[x]",
                                           "{x}",
                                           "a,b",
                                           "'q'",
                                           "\"dq\"",
                                           "tab\tin",
                                           "line\nbreak\n",
                                           "é ü",
                                           "*ref",
                                           "&a",
                                           "!t",
                                           "%p",
                                           "@at",
                                           "`bt",
                                           "trailing:",
                                           "x\n",
                                           "\n\nx",
                                           "a\r",
                                           "\x01",
                                           "multi\n\n\nend\n\n",
                                           "  lead\nx"};
  OrderedJson fields = OrderedJson::object();
  for (size_t i = 0; i < tricky.size(); ++i) fields[fmt::format("f{}", i)] = tricky[i];
  fields["odd key: x"] = "v";
  OrderedJson entry = {{"name", "t"},      {"fields", fields},
                       {"n", 42},          {"b", true},
                       {"d", 2.5},         {"nothing", nullptr},
                       {"empty", J("{}")}, {"list", J(R"(["a", "1", 1, {"k": "v"}, []])")}};
  for (const char* base : {"mappings:\n  - name: a\n", "mappings:\n  - { name: a }\n"}) {
    absl::StatusOr<WorkspaceDocument::Edit> edit = Parse(base).Append(EntryKind::kMapping, entry);
    ASSERT_TRUE(edit.ok()) << edit.status();
    EXPECT_TRUE(edit->layout_kept) << edit->text;
    EXPECT_EQ(Parse(edit->text).Entries(EntryKind::kMapping)[1], entry) << edit->text;
  }
  EXPECT_EQ(Parse(EmitYaml(entry)).json(), entry);
}

TEST(WorkspaceEditorTest, UnusualLayoutsAreRewrittenRightOrWhole) {
  // Items at column 0, a flow section, list items at their key's column.
  const std::string text =
      "sources:\n- name: a\n  type: sqlite\n  alerts:\n  - x\n  - y\n- name: b\n  type: sqlite\n"
      "models: [ { name: m, source: a } ]\n";
  WorkspaceDocument doc = Parse(text);
  OrderedJson a = doc.Entries(EntryKind::kSource)[0];
  a["alerts"] = J(R"(["z"])");
  absl::StatusOr<WorkspaceDocument::Edit> edit = doc.Replace(EntryKind::kSource, 0, a);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_TRUE(edit->layout_kept);
  EXPECT_EQ(edit->text,
            "sources:\n- name: a\n  type: sqlite\n  alerts:\n    - z\n- name: b\n  type: sqlite\n"
            "models: [ { name: m, source: a } ]\n");
  edit = doc.Append(EntryKind::kModel, J(R"({"name": "m2", "source": "b"})"));
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_NE(edit->text.find("models:\n  - name: m\n    source: a\n  - name: m2\n    source: b\n"),
            std::string::npos)
      << edit->text;
  edit = doc.Remove(EntryKind::kSource, 1);
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_EQ(edit->text,
            "sources:\n- name: a\n  type: sqlite\n  alerts:\n  - x\n  - y\n"
            "models: [ { name: m, source: a } ]\n");

  // A flow-style top level cannot be edited in place: written whole.
  doc = Parse("{sources: [{name: a, type: sqlite}]}");
  edit = doc.Append(EntryKind::kSource, J(R"({"name": "b", "type": "sqlite"})"));
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_FALSE(edit->layout_kept);
  EXPECT_EQ(Parse(edit->text).Entries(EntryKind::kSource).size(), 2u);
}

TEST(WorkspaceEditorTest, MergePatchFollowsRfc7396) {
  OrderedJson target = J(R"({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]})");
  OrderedJson out = MergePatch(target, J(R"({"b": {"c": null, "x": 4}, "e": [2], "a": null,
                                             "f": {"g": null, "h": 1}})"));
  EXPECT_EQ(out.dump(), R"({"b":{"d":3,"x":4},"e":[2],"f":{"h":1}})");
}

TEST(WorkspaceEditorTest, ExportMasksSecretsAndFillsDefaults) {
  Registry registry;
  ASSERT_TRUE(registry.AddSource(SqliteSourceDefinition()).ok());
  ASSERT_TRUE(registry
                  .AddDestination(testing::MemoryDestinationDefinition(
                      std::make_shared<testing::MemoryDestinationState>()))
                  .ok());
  const std::string text = R"(state: postgresql://bf:hunter2@db/backflow
sources:
  - { name: wh, type: sqlite, path: wh.db }
models:
  - { name: c, source: wh, sql: SELECT 1 AS id, primary_key: id }
destinations:
  - { name: clear, type: memory, settings: { token: plain-text-token-1234 } }
  - { name: ref, type: memory, settings: { token: "${secret:MEM_TOKEN}", label: x } }
mappings:
  - { name: m, model: c, destination: ref, action: upsert, fields: { customer_id: id } }
alerts:
  - name: ops
    slack: { webhook_url: https://hooks.slack.com/services/T/B/secretpart }
)";
  WorkspaceDocument doc = Parse(text);
  LoadResult loaded = LoadWorkspaceFromString(text, "/tmp/x/backflow.yaml", registry);
  OrderedJson out = ExportDocument(doc, &loaded.workspace, registry);
  EXPECT_EQ(out["state"], "postgresql://bf:********@db/backflow");
  EXPECT_EQ(out["destinations"][0]["settings"]["token"], "••••••");
  EXPECT_EQ(out["destinations"][1]["settings"]["token"], "${secret:MEM_TOKEN}");
  EXPECT_EQ(out["alerts"][0]["slack"]["webhook_url"], "••••••");
  EXPECT_EQ(out["models"][0]["schedule"], "manual");
  EXPECT_EQ(out["mappings"][0]["records"], "all");
  EXPECT_EQ(out["mappings"][0]["enabled"], true);
  std::string yaml = EmitYaml(out);
  EXPECT_EQ(yaml.find("hunter2"), std::string::npos);
  EXPECT_EQ(yaml.find("plain-text-token"), std::string::npos);
  EXPECT_EQ(yaml.find("secretpart"), std::string::npos);
  // Without a load, nothing is added.
  OrderedJson raw = ExportDocument(doc, nullptr, registry);
  EXPECT_FALSE(raw["models"][0].contains("schedule"));
  EXPECT_EQ(raw["destinations"][0]["settings"]["token"], "••••••");
}

TEST(WorkspaceEditorTest, WriteFileAtomicallyReplacesTheFileKeepingItsMode) {
  testing::ScratchDir scratch("editor-write");
  const fs::path dir = scratch.path();
  fs::create_directories(dir / "real");
  fs::path real = dir / "real" / "backflow.yaml";
  std::ofstream(real) << "old\n";
  ASSERT_EQ(chmod(real.c_str(), 0640), 0);
  fs::create_symlink(real, dir / "backflow.yaml");

  ASSERT_TRUE(WriteFileAtomically((dir / "backflow.yaml").string(), "new: text\n").ok());
  EXPECT_TRUE(fs::is_symlink(dir / "backflow.yaml"));  // the link is kept, its target replaced
  absl::StatusOr<std::string> read = ReadTextFile((dir / "backflow.yaml").string());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "new: text\n");
  struct stat st {};
  ASSERT_EQ(stat(real.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  int files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir / "real")) ++files;
  EXPECT_EQ(files, 1);  // no temporary file left behind

  EXPECT_EQ(ReadTextFile((dir / "missing.yaml").string()).status().code(),
            absl::StatusCode::kNotFound);
  absl::Status denied = WriteFileAtomically((dir / "nowhere" / "x.yaml").string(), "x");
  EXPECT_EQ(denied.code(), absl::StatusCode::kUnavailable);
}

// Readers see the old or the new file, never a mix, however often it is replaced.
TEST(WorkspaceEditorTest, ReadersNeverSeeAHalfWrittenFile) {
  testing::ScratchDir scratch("editor-atomic");
  const fs::path dir = scratch.path();
  const std::string path = (dir / "backflow.yaml").string();
  const std::string a(256 * 1024, 'a'), b(300 * 1024, 'b');
  ASSERT_TRUE(WriteFileAtomically(path, a).ok());
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int i = 0; i < 100; ++i) {
      absl::Status written = WriteFileAtomically(path, i % 2 ? a : b);
      if (!written.ok()) {
        ADD_FAILURE() << written;
        break;
      }
    }
    done.store(true);
  });
  // Failures end the loop rather than the test, so the writer is always joined.
  int reads = 0;
  std::string failure;
  while (failure.empty() && (!done.load() || reads < 10)) {
    absl::StatusOr<std::string> read = ReadTextFile(path);
    if (!read.ok()) {
      failure = read.status().ToString();
    } else if (*read != a && *read != b) {
      failure = "a read saw " + std::to_string(read->size()) + " bytes";
    }
    ++reads;
  }
  writer.join();
  EXPECT_EQ(failure, "");
}

TEST(WorkspaceEditorTest, PureReferences) {
  EXPECT_TRUE(IsPureSecretReference("${secret:HUBSPOT_TOKEN}"));
  EXPECT_TRUE(IsPureSecretReference("${env:X}"));
  EXPECT_FALSE(IsPureSecretReference("Bearer ${secret:X}"));
  EXPECT_FALSE(IsPureSecretReference("${secret:1X}"));
  EXPECT_FALSE(IsPureSecretReference("${vault:X}"));
  EXPECT_FALSE(IsPureSecretReference("hunter2"));
}

}  // namespace
}  // namespace backflow
