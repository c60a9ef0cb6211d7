#include "backflow/config/workspace.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>

#include "backflow/destinations/destination.h"
#include "backflow/destinations/testing/memory_destination.h"
#include "backflow/sources/sqlite/sqlite_source.h"

namespace backflow {
namespace {

class WorkspaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(registry_.AddSource(SqliteSourceDefinition()).ok());
    ASSERT_TRUE(registry_
                    .AddDestination(testing::MemoryDestinationDefinition(
                        std::make_shared<testing::MemoryDestinationState>()))
                    .ok());
  }
  LoadResult Load(const std::string& yaml) {
    return LoadWorkspaceFromString(yaml, "/ws/backflow.yaml", registry_);
  }
  // All error messages, one per line, as `validate` prints them.
  std::string Errors(const LoadResult& r) {
    std::string out;
    for (const Diagnostic& d : r.diagnostics) {
      if (d.is_error()) out += d.ToString() + "\n";
    }
    return out;
  }
  Registry registry_;
};

constexpr char kValid[] = R"(
state: sqlite:.backflow/state.db
sources:
  - name: sample
    type: sqlite
    path: sample/warehouse.db
models:
  - name: customers
    source: sample
    sql: SELECT id, email FROM customers
    primary_key: id
    schedule: { days: [mon, thu], at: "09:00" }
destinations:
  - name: mem
    type: memory
    settings: { label: crm }
mappings:
  - name: to_mem
    model: customers
    destination: mem
    action: upsert
    records: added_or_updated
    fields: { customer_id: id, email: email }
    batch_size: 50
)";

TEST_F(WorkspaceTest, LoadsAValidWorkspace) {
  LoadResult r = Load(kValid);
  ASSERT_TRUE(r.ok()) << Errors(r);
  const Workspace& ws = r.workspace;
  EXPECT_EQ(ws.state_url, "sqlite:/ws/.backflow/state.db");
  ASSERT_EQ(ws.sources.size(), 1u);
  EXPECT_EQ(ws.sources[0].settings["path"], "/ws/sample/warehouse.db");
  ASSERT_EQ(ws.models.size(), 1u);
  EXPECT_EQ(ws.models[0].schedule.kind, Schedule::Kind::kWeekly);
  EXPECT_EQ(ws.models[0].schedule.weekdays, (std::vector<int>{1, 4}));
  EXPECT_EQ(ws.models[0].schedule.hour, 9);
  EXPECT_EQ(ws.models[0].schedule.ToString(), "mon,thu at 09:00 UTC");
  const MappingConfig* m = ws.FindMapping("to_mem");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->records, RecordSelection::kAddedOrUpdated);
  EXPECT_EQ(m->batch_size, 50);
  ASSERT_EQ(m->fields.size(), 2u);
  EXPECT_EQ(m->fields[0].field, "customer_id");
  EXPECT_EQ(m->fields[0].value, "id");
}

TEST_F(WorkspaceTest, ReportsEveryErrorWithPositionAndHint) {
  LoadResult r = Load(R"(
sources:
  - name: sample
    type: sqlite
    path: x.db
models:
  - name: customers
    source: sampel
    sql: SELECT 1
    primary_key: id
    schedule: { every: 5m }
destinations:
  - name: mem
    type: memroy
mappings:
  - name: m
    model: customer
    destination: mem
    action: upsert
    records: some
    fields: { a: b }
    enabld: true
)");
  EXPECT_FALSE(r.ok());
  std::string errors = Errors(r);
  EXPECT_NE(errors.find("/ws/backflow.yaml:8:13: error: models[0].source: unknown source "
                        "\"sampel\" (hint: did you mean \"sample\"?)"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("models[0].schedule.every: unsupported interval \"5m\""), std::string::npos)
      << errors;
  EXPECT_NE(errors.find("destinations[0].type: unknown destination type \"memroy\" (hint: did "
                        "you mean \"memory\"?)"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("mappings[0].model: unknown model \"customer\" (hint: did you mean "
                        "\"customers\"?)"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("mappings[0].records: unknown record selection \"some\""),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("mappings[0].enabld: unknown key \"enabld\" (hint: did you mean "
                        "\"enabled\"?)"),
            std::string::npos)
      << errors;
  // The mapping names a destination that failed to load: not reported twice.
  EXPECT_EQ(errors.find("unknown destination \"mem\""), std::string::npos) << errors;
  EXPECT_EQ(r.error_count(), 6u) << errors;
}

TEST_F(WorkspaceTest, ChecksActionFieldsAndSelections) {
  LoadResult r = Load(R"(
sources: [{ name: s, type: sqlite, path: x.db }]
models: [{ name: m, source: s, sql: SELECT 1, primary_key: id }]
destinations: [{ name: d, type: memory }]
mappings:
  - { name: a, model: m, destination: d, action: typed, records: deleted,
      fields: { age: age, nickname: nick } }
  - { name: b, model: m, destination: d, action: upsrt, fields: { x: y } }
  - { name: c, model: m, destination: d, action: typed, fields: { email: e }, batch_size: 11 }
)");
  std::string errors = Errors(r);
  EXPECT_NE(errors.find("action \"typed\" cannot send \"deleted\" records (hint: use one of: "
                        "added_or_updated, all)"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("action \"typed\" has no field \"nickname\""), std::string::npos) << errors;
  EXPECT_NE(errors.find("required field \"email\" is not mapped"), std::string::npos) << errors;
  EXPECT_NE(errors.find("destination type \"memory\" has no action \"upsrt\" (hint: did you mean "
                        "\"upsert\"?)"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("mappings[2].batch_size: must be a whole number from 1 to 10"),
            std::string::npos)
      << errors;
}

TEST_F(WorkspaceTest, UnsetRecordsDefaultsToWhatTheActionCanSend) {
  DestinationDefinition events;
  events.type = "events";
  events.title = "Events";
  ActionSpec track;
  track.id = "track";
  track.selections = {RecordSelection::kAdded};
  track.allows_extra_fields = true;
  events.actions.push_back(track);
  events.create = [](const nlohmann::json&,
                     const ConnectorEnv&) -> absl::StatusOr<std::unique_ptr<Destination>> {
    return absl::UnimplementedError("not used");
  };
  absl::Status added = registry_.AddDestination(events);
  ASSERT_TRUE(added.ok()) << added;
  LoadResult r = Load(R"(
sources: [{ name: s, type: sqlite, path: x.db }]
models: [{ name: m, source: s, sql: SELECT 1, primary_key: id }]
destinations: [{ name: d, type: events }, { name: mem, type: memory }]
mappings:
  - { name: a, model: m, destination: d, action: track, fields: { x: id } }
  - { name: b, model: m, destination: mem, action: upsert, fields: { x: id } }
)");
  ASSERT_TRUE(r.ok()) << Errors(r);
  EXPECT_EQ(r.workspace.mappings[0].records, RecordSelection::kAdded);
  EXPECT_EQ(r.workspace.mappings[1].records, RecordSelection::kAll);
}

TEST_F(WorkspaceTest, ChecksMappingExpressions) {
  LoadResult r = Load(R"yaml(
sources: [{ name: s, type: sqlite, path: x.db }]
models: [{ name: m, source: s, sql: SELECT 1, primary_key: id }]
destinations: [{ name: d, type: memory }]
mappings:
  - name: a
    model: m
    destination: d
    action: upsert
    fields:
      ok: "lower(trim(email))"
      literal: "'pro'"
      spaced: Email Address
      bad: "lowr(email)"
)yaml");
  std::string errors = Errors(r);
  EXPECT_NE(errors.find("/ws/backflow.yaml:14:12: error: mappings[0].fields.bad: unknown function "
                        "lowr() at character 1 of `lowr(email)`"),
            std::string::npos)
      << errors;
  EXPECT_EQ(std::count(errors.begin(), errors.end(), '\n'), 1) << errors;
}

TEST_F(WorkspaceTest, ResolvesEnvironmentAndWarnsAboutClearSecrets) {
  setenv("BACKFLOW_TEST_LABEL", "from-env", 1);
  unsetenv("BACKFLOW_TEST_MISSING");
  LoadResult r = Load(R"(
sources: [{ name: s, type: sqlite, path: x.db }]
models: [{ name: m, source: s, sql: SELECT 1, primary_key: id }]
destinations:
  - { name: d, type: memory, settings: { label: "${env:BACKFLOW_TEST_LABEL}", token: hunter2 } }
  - { name: e, type: memory, settings: { label: "${env:BACKFLOW_TEST_MISSING}" } }
mappings: []
)");
  EXPECT_EQ(r.workspace.FindDestination("d")->settings["label"], "from-env");
  std::string all;
  for (const Diagnostic& d : r.diagnostics) all += d.ToString() + "\n";
  EXPECT_NE(all.find("warning: destinations[0].settings.token: secret written in clear"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("environment variable BACKFLOW_TEST_MISSING is not set"), std::string::npos)
      << all;
  EXPECT_EQ(all.find("hunter2"), std::string::npos);
}

TEST_F(WorkspaceTest, InvalidYamlIsOneDiagnosticWithPosition) {
  LoadResult r = Load("sources:\n  - name: [unclosed\n");
  ASSERT_EQ(r.diagnostics.size(), 1u);
  EXPECT_EQ(r.diagnostics[0].line, 3);
  EXPECT_NE(r.diagnostics[0].message.find("invalid YAML"), std::string::npos);
}

TEST_F(WorkspaceTest, DuplicateNamesAndMissingFile) {
  LoadResult r = Load(R"(
sources:
  - { name: s, type: sqlite, path: a.db }
  - { name: s, type: sqlite, path: b.db }
)");
  EXPECT_NE(Errors(r).find("duplicate source name \"s\""), std::string::npos);
  LoadResult missing = LoadWorkspace("/nonexistent/backflow.yaml", registry_);
  ASSERT_EQ(missing.diagnostics.size(), 1u);
  EXPECT_NE(missing.diagnostics[0].message.find("cannot read the workspace file"),
            std::string::npos);
}

TEST_F(WorkspaceTest, AcceptsPostgresStateAsWrittenWithEnvReferences) {
  setenv("BACKFLOW_TEST_STATE_PASSWORD", "s3cret", 1);
  LoadResult r = Load(
      "state: postgresql://bf:${env:BACKFLOW_TEST_STATE_PASSWORD}@db.internal:5433/backflow\n");
  ASSERT_TRUE(r.ok()) << Errors(r);
  EXPECT_EQ(r.workspace.state_url, "postgresql://bf:s3cret@db.internal:5433/backflow");

  LoadResult short_scheme = Load("state: postgres://db.internal/backflow\n");
  ASSERT_TRUE(short_scheme.ok()) << Errors(short_scheme);
  EXPECT_EQ(short_scheme.workspace.state_url, "postgres://db.internal/backflow");

  unsetenv("BACKFLOW_TEST_STATE_UNSET");
  LoadResult missing = Load("state: postgresql://bf:${env:BACKFLOW_TEST_STATE_UNSET}@db/x\n");
  EXPECT_NE(Errors(missing).find("environment variable BACKFLOW_TEST_STATE_UNSET is not set"),
            std::string::npos)
      << Errors(missing);

  // SQLite state is unchanged: relative to the workspace, and the default.
  EXPECT_EQ(Load("state: sqlite:s.db\n").workspace.state_url, "sqlite:/ws/s.db");
  EXPECT_EQ(Load("sources: []\n").workspace.state_url, "sqlite:/ws/.backflow/state.db");
}

TEST_F(WorkspaceTest, SpoolKeepMibDefaultsTo4GiBAndTakesWholeMiB) {
  EXPECT_EQ(Load("sources: []\n").workspace.spool_keep_bytes, uint64_t{4096} << 20);
  LoadResult zero = Load("spool_keep_mib: 0\n");
  ASSERT_TRUE(zero.ok()) << Errors(zero);
  EXPECT_EQ(zero.workspace.spool_keep_bytes, 0u);
  EXPECT_EQ(Load("spool_keep_mib: 512\n").workspace.spool_keep_bytes, uint64_t{512} << 20);
  for (const char* bad : {"spool_keep_mib: -1\n", "spool_keep_mib: 2GiB\n", "spool_keep_mib: [1]\n",
                          "spool_keep_mib: 1.5\n"}) {
    LoadResult r = Load(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_NE(Errors(r).find("spool_keep_mib: must be a whole number of MiB"), std::string::npos)
        << Errors(r);
  }
}

TEST_F(WorkspaceTest, LocalStateDirAndStateForDisplay) {
  Workspace sqlite = Load("state: sqlite:state/s.db\n").workspace;
  EXPECT_EQ(sqlite.LocalStateDir(), "/ws/state");
  EXPECT_EQ(sqlite.StateForDisplay(), "/ws/state/s.db");
  Workspace pg = Load("state: postgresql://bf:s3cret@db:5432/backflow\n").workspace;
  EXPECT_EQ(pg.LocalStateDir(), "/ws/.backflow");
  EXPECT_EQ(pg.StateForDisplay(), "postgresql://bf:********@db:5432/backflow");
}

TEST(MaskUrlPasswordTest, MasksUserInfoAndQueryPasswords) {
  EXPECT_EQ(MaskUrlPassword("postgresql://u:p@h/db"), "postgresql://u:********@h/db");
  EXPECT_EQ(MaskUrlPassword("postgres://u:p%40ss@h:1,h2:2/db?sslmode=require"),
            "postgres://u:********@h:1,h2:2/db?sslmode=require");
  EXPECT_EQ(MaskUrlPassword("postgresql://u@h/db"), "postgresql://u@h/db");
  EXPECT_EQ(MaskUrlPassword("postgresql://h:5432/db"), "postgresql://h:5432/db");
  EXPECT_EQ(MaskUrlPassword("postgresql://h/db?user=u&password=p&sslmode=verify-full"),
            "postgresql://h/db?user=u&password=********&sslmode=verify-full");
  EXPECT_EQ(MaskUrlPassword("postgresql://u:pw@h?password=x"),
            "postgresql://u:********@h?password=********");
}

TEST_F(WorkspaceTest, UnknownStateKindIsRejectedWithoutEchoingTheUrl) {
  LoadResult r = Load("state: mysql://bf:hunter2@db/backflow\n");
  std::string errors = Errors(r);
  EXPECT_NE(errors.find("unknown state store kind \"mysql\""), std::string::npos) << errors;
  EXPECT_NE(errors.find("postgresql://USER:PASSWORD@HOST:PORT/DATABASE"), std::string::npos);
  EXPECT_EQ(errors.find("hunter2"), std::string::npos) << errors;
}

TEST_F(WorkspaceTest, ParsesMaxDeletes) {
  LoadResult r = Load(R"(
sources: [{ name: s, type: sqlite, path: x.db }]
models: [{ name: m, source: s, sql: SELECT 1, primary_key: id }]
destinations: [{ name: d, type: memory }]
mappings:
  - { name: a, model: m, destination: d, action: upsert, fields: { x: y } }
  - { name: b, model: m, destination: d, action: upsert, fields: { x: y }, max_deletes: 12.5% }
  - { name: c, model: m, destination: d, action: upsert, fields: { x: y }, max_deletes: 300 }
  - { name: e, model: m, destination: d, action: upsert, fields: { x: y }, max_deletes: lots }
  - { name: f, model: m, destination: d, action: upsert, fields: { x: y }, max_deletes: 150% }
)");
  const Workspace& ws = r.workspace;
  EXPECT_TRUE(ws.FindMapping("a")->max_deletes.is_percent);
  EXPECT_EQ(ws.FindMapping("a")->max_deletes.percent, 50);
  EXPECT_EQ(ws.FindMapping("b")->max_deletes.percent, 12.5);
  EXPECT_FALSE(ws.FindMapping("c")->max_deletes.is_percent);
  EXPECT_EQ(ws.FindMapping("c")->max_deletes.count, 300);
  std::string errors = Errors(r);
  EXPECT_NE(errors.find("mappings[3].max_deletes: \"lots\" is not a percentage or a count"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("mappings[4].max_deletes: \"150%\""), std::string::npos) << errors;
}

TEST_F(WorkspaceTest, ValidatesCronAndTimeZones) {
  LoadResult r = Load(R"(
sources: [{ name: s, type: sqlite, path: x.db }]
models:
  - { name: a, source: s, sql: SELECT 1, primary_key: id,
      schedule: { cron: "0 9 * * 1-5", timezone: Europe/Paris } }
  - { name: b, source: s, sql: SELECT 1, primary_key: id, schedule: { cron: "0 24 * * *" } }
  - { name: c, source: s, sql: SELECT 1, primary_key: id,
      schedule: { days: [mon], at: "09:00", timezone: Europe/Pariss } }
)");
  const ModelConfig* a = r.workspace.FindModel("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->schedule.kind, Schedule::Kind::kCron);
  EXPECT_EQ(a->schedule.ToString(), "cron \"0 9 * * 1-5\" Europe/Paris");
  std::string errors = Errors(r);
  EXPECT_NE(errors.find("models[1].schedule.cron: hour: 24 is out of range 0-23"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("models[2].schedule.timezone: unknown time zone \"Europe/Pariss\""),
            std::string::npos)
      << errors;
}

TEST(ClosestMatchTest, SuggestsOnlyPlausibleTypos) {
  EXPECT_EQ(ClosestMatch("warehous", {"warehouse", "sample"}), "warehouse");
  EXPECT_EQ(ClosestMatch("zzzz", {"warehouse", "sample"}), "");
}

}  // namespace
}  // namespace backflow

namespace backflow {
namespace {

TEST_F(WorkspaceTest, ChangeDetectionIsCheckedAgainstTheSource) {
  SourceDefinition able = SqliteSourceDefinition();
  able.type = "able";
  able.warehouse_change_detection = true;
  ASSERT_TRUE(registry_.AddSource(able).ok());
  const std::string yaml = R"(
sources:
  - { name: lite, type: sqlite, path: w.db }
  - { name: wh, type: able, path: w.db }
models:
  - name: a
    source: lite
    sql: SELECT 1 AS id
    primary_key: id
    change_detection: warehouse
  - name: b
    source: wh
    sql: SELECT 1 AS id
    primary_key: id
    change_detection: warehouse
  - name: c
    source: wh
    sql: SELECT 1 AS id
    primary_key: id
    change_detection: sometimes
  - { name: d, source: lite, sql: SELECT 1 AS id, primary_key: id, change_detection: local }
)";
  LoadResult r = Load(yaml);
  const std::string errors = Errors(r);
  EXPECT_NE(errors.find("backflow.yaml:10:23: error: models[0].change_detection: source \"lite\" "
                        "(type sqlite) cannot detect changes itself (hint: remove "
                        "change_detection (or set it to local); warehouse mode needs a source of "
                        "type able)"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("models[2].change_detection: \"sometimes\" is not a change detection mode"),
            std::string::npos)
      << errors;
  EXPECT_EQ(std::count(errors.begin(), errors.end(), '\n'), 2) << errors;
  ASSERT_EQ(r.workspace.models.size(), 4u);
  EXPECT_EQ(r.workspace.models[1].change_detection, ChangeDetection::kWarehouse);
  EXPECT_EQ(r.workspace.models[3].change_detection, ChangeDetection::kLocal);
}

}  // namespace
}  // namespace backflow
