#include "backflow/destinations/postgres/postgres_destination.h"

#include <unistd.h>

#include "backflow/common/clock.h"
#include "backflow/pg/testing/test_server.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::HasSubstr;

OutgoingRecord Upsert(ChangeKind kind, int64_t id, Row rest) {
  OutgoingRecord r;
  r.change = kind;
  r.key = std::to_string(id);
  r.values.push_back(Value::Int64(id));
  for (Value& v : rest) r.values.push_back(std::move(v));
  return r;
}

OutgoingRecord Delete(int64_t id) {
  OutgoingRecord r;
  r.change = ChangeKind::kDeleted;
  r.key = std::to_string(id);
  r.values.push_back(Value::Int64(id));
  return r;
}

class PostgresDestinationTest : public pg::testing::PostgresTest {
 protected:
  void SetUp() override {
    PostgresTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    table_ = pg::testing::UniqueName("dest");
  }

  nlohmann::json Settings(bool create_table, std::string url = "") const {
    return {{"url", url.empty() ? server().url : url},
            {"password", server().password},
            {"schema", "public"},
            {"table", table_},
            {"key_column", "id"},
            {"create_table", create_table}};
  }

  std::unique_ptr<Destination> Make(const nlohmann::json& settings) {
    nlohmann::json s = settings;
    EXPECT_TRUE(CheckSettings(def_.settings, s).empty());
    auto dest = def_.create(s, ConnectorEnv{nullptr, &clock_});
    EXPECT_TRUE(dest.ok()) << dest.status();
    return dest.ok() ? *std::move(dest) : nullptr;
  }

  SessionOptions Options(std::vector<std::string> fields) const {
    SessionOptions o;
    o.mapping = "test";
    o.action = &def_.actions[0];
    o.layout.fields = std::move(fields);
    o.layout.identity = {"id"};
    return o;
  }

  // Rows of the table as "id|col|..." strings ordered by id.
  std::vector<std::string> Rows(const std::string& columns) {
    std::vector<std::string> out;
    auto conn = Connect();
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return out;
    auto r = (*conn)->Exec(fmt::format("SELECT concat_ws('|', {}) FROM {} ORDER BY id", columns,
                                       pg::QuoteIdentifier(table_)));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return out;
    for (int i = 0; i < PQntuples(r->get()); ++i) out.push_back(PQgetvalue(r->get(), i, 0));
    return out;
  }

  DestinationDefinition def_ = PostgresDestinationDefinition();
  FakeClock clock_;
  std::string table_;
};

TEST(PostgresDestinationDefinitionTest, DeclaresTheUpsertAction) {
  DestinationDefinition def = PostgresDestinationDefinition();
  EXPECT_EQ(def.type, "postgres");
  ASSERT_EQ(def.actions.size(), 1u);
  const ActionSpec& a = def.actions[0];
  EXPECT_EQ(a.id, "upsert");
  EXPECT_EQ(a.title, "Upsert rows");
  EXPECT_TRUE(a.allows_extra_fields);
  EXPECT_EQ(a.default_batch_records, 500);
  EXPECT_EQ(a.max_batch_records, 5000);
  EXPECT_EQ(a.selections.size(), 5u);
  ASSERT_TRUE(FindSetting(def.settings, "password") != nullptr);
  EXPECT_TRUE(FindSetting(def.settings, "password")->secret);
  nlohmann::json settings = {{"url", "postgresql://x@h/db"}, {"table", "t"}, {"key_column", "id"}};
  EXPECT_TRUE(CheckSettings(def.settings, settings).empty());
  EXPECT_EQ(settings["schema"], "public");
  EXPECT_EQ(settings["create_table"], false);
  EXPECT_TRUE(a.validate(settings, {{"id", "user_id"}, {"email", "email"}}).empty());
  auto problems = a.validate(settings, {{"email", "email"}});
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_THAT(problems[0], HasSubstr("key_column"));
}

TEST_F(PostgresDestinationTest, CreatesTableThenUpsertsUpdatesAndDeletes) {
  auto dest = Make(Settings(/*create_table=*/true));
  ASSERT_NE(dest, nullptr);
  EXPECT_TRUE(dest->CheckConnection().ok()) << dest->CheckConnection();
  auto session = dest->StartSession(
      Options({"id", "name", "score", "amount", "active", "seen_at", "born", "meta"}));
  ASSERT_TRUE(session.ok()) << session.status();

  std::vector<OutgoingRecord> batch = {
      Upsert(ChangeKind::kAdded, 1,
             {Value::String("ann"), Value::Double(1.5),
              Value::Text(ValueType::kDecimal, "12345678901234567890.0123456789"),
              Value::Bool(true), Value::Text(ValueType::kTimestamp, "2024-01-02T03:04:05.5Z"),
              Value::Text(ValueType::kDate, "1990-05-06"),
              Value::Text(ValueType::kJson, R"({"a":[1,2]})")}),
      Upsert(ChangeKind::kAdded, 2,
             {Value::String("bob"), Value::Double(-2), Value::Text(ValueType::kDecimal, "0"),
              Value::Bool(false), Value::Null(), Value::Null(), Value::Null()}),
      Upsert(ChangeKind::kAdded, 3,
             {Value::String("cy"), Value::Null(), Value::Null(), Value::Null(), Value::Null(),
              Value::Null(), Value::Null()}),
  };
  auto statuses = (*session)->SendBatch(batch);
  ASSERT_TRUE(statuses.ok()) << statuses.status();
  for (const absl::Status& s : *statuses) EXPECT_TRUE(s.ok()) << s;

  // Column types come from the first record; id is the primary key.
  auto conn = Connect();
  ASSERT_TRUE(conn.ok());
  auto types = (*conn)->Exec(fmt::format(
      "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY "
      "attnum) FROM pg_attribute WHERE attrelid = '{}'::regclass AND attnum > 0",
      pg::QuoteIdentifier(table_)));
  ASSERT_TRUE(types.ok()) << types.status();
  EXPECT_EQ(std::string(PQgetvalue(types->get(), 0, 0)),
            "id bigint, name text, score double precision, amount numeric, active boolean, "
            "seen_at timestamp with time zone, born date, meta jsonb");
  EXPECT_THAT(
      Rows("id, name, score, amount, active, seen_at, born, meta"),
      ::testing::ElementsAre("1|ann|1.5|12345678901234567890.0123456789|t|2024-01-02 03:04:05.5+00|"
                             "1990-05-06|{\"a\": [1, 2]}",
                             "2|bob|-2|0|f", "3|cy"));

  std::vector<OutgoingRecord> changes = {
      Upsert(ChangeKind::kUpdated, 2,
             {Value::String("bobby"), Value::Double(3), Value::Text(ValueType::kDecimal, "1.25"),
              Value::Bool(true), Value::Null(), Value::Null(), Value::Null()}),
      Delete(3),
      Upsert(ChangeKind::kAdded, 4,
             {Value::String("dee"), Value::Null(), Value::Null(), Value::Null(), Value::Null(),
              Value::Null(), Value::Null()}),
  };
  statuses = (*session)->SendBatch(changes);
  ASSERT_TRUE(statuses.ok()) << statuses.status();
  for (const absl::Status& s : *statuses) EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE((*session)->Finish().ok());
  EXPECT_THAT(
      Rows("id, name, amount"),
      ::testing::ElementsAre("1|ann|12345678901234567890.0123456789", "2|bobby|1.25", "4|dee"));
}

TEST_F(PostgresDestinationTest, BadRecordIsIsolatedAndTheOthersLand) {
  ExecOrFail(fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, n integer NOT NULL, note text)",
                         pg::QuoteIdentifier(table_)));
  auto dest = Make(Settings(false));
  ASSERT_NE(dest, nullptr);
  auto session = dest->StartSession(Options({"id", "n", "note"}));
  ASSERT_TRUE(session.ok()) << session.status();
  std::vector<OutgoingRecord> batch;
  for (int i = 1; i <= 10; ++i) {
    batch.push_back(Upsert(
        ChangeKind::kAdded, i,
        {i == 7 ? Value::String("not a number") : Value::Int64(i * 10), Value::String("row")}));
  }
  auto statuses = (*session)->SendBatch(batch);
  ASSERT_TRUE(statuses.ok()) << statuses.status();
  ASSERT_EQ(statuses->size(), 10u);
  for (int i = 0; i < 10; ++i) {
    if (i == 6) {
      EXPECT_EQ((*statuses)[i].code(), absl::StatusCode::kInvalidArgument) << (*statuses)[i];
      EXPECT_THAT((*statuses)[i].message(), HasSubstr("invalid input syntax for type integer"));
    } else {
      EXPECT_TRUE((*statuses)[i].ok()) << i << ": " << (*statuses)[i];
    }
  }
  EXPECT_EQ(Rows("id").size(), 9u);

  // A NOT NULL violation is a record error too.
  std::vector<OutgoingRecord> more = {
      Upsert(ChangeKind::kAdded, 11, {Value::Int64(1), Value::Null()}),
      Upsert(ChangeKind::kAdded, 12, {Value::Null(), Value::Null()}),
      Upsert(ChangeKind::kUpdated, 1, {Value::Int64(5), Value::String("changed")}),
  };
  statuses = (*session)->SendBatch(more);
  ASSERT_TRUE(statuses.ok()) << statuses.status();
  EXPECT_TRUE((*statuses)[0].ok());
  EXPECT_EQ((*statuses)[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT((*statuses)[1].message(), HasSubstr("not-null"));
  EXPECT_TRUE((*statuses)[2].ok());
  EXPECT_EQ(Rows("id").size(), 10u);
  EXPECT_EQ(Rows("id, n, note").front(), "1|5|changed");
}

TEST_F(PostgresDestinationTest, ExistingTableWithMissingColumnsFailsToStart) {
  ExecOrFail(fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, name text)",
                         pg::QuoteIdentifier(table_)));
  auto dest = Make(Settings(true));
  ASSERT_NE(dest, nullptr);
  auto session = dest->StartSession(Options({"id", "name", "email", "plan"}));
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(session.status().message(), HasSubstr("email, plan"));
}

TEST_F(PostgresDestinationTest, KeyColumnWithoutUniqueConstraintFailsToStart) {
  ExecOrFail(fmt::format("CREATE TABLE {} (id bigint, name text)", pg::QuoteIdentifier(table_)));
  auto dest = Make(Settings(false));
  ASSERT_NE(dest, nullptr);
  auto session = dest->StartSession(Options({"id", "name"}));
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(session.status().message(), HasSubstr("PRIMARY KEY"));
}

TEST_F(PostgresDestinationTest, MissingTableWithoutCreateTableFails) {
  auto dest = Make(Settings(false));
  ASSERT_NE(dest, nullptr);
  absl::Status check = dest->CheckConnection();
  EXPECT_EQ(check.code(), absl::StatusCode::kFailedPrecondition) << check;
  EXPECT_THAT(check.message(), HasSubstr("create_table"));
  auto session = dest->StartSession(Options({"id", "name"}));
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(session.status().message(), HasSubstr("does not exist"));
  EXPECT_THAT(session.status().message(), HasSubstr("create_table"));
}

TEST_F(PostgresDestinationTest, KeyColumnMustBeTheIdentifier) {
  auto dest = Make(Settings(true));
  ASSERT_NE(dest, nullptr);
  SessionOptions options = Options({"id", "name"});
  options.layout.identity = {"name"};
  auto session = dest->StartSession(options);
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(session.status().message(),
              HasSubstr("key_column id must be mapped from the model's unique identifier"));
}

TEST_F(PostgresDestinationTest, ReconnectsAfterTheConnectionIsLost) {
  std::string app = pg::testing::UniqueName("dest_kill");
  auto dest = Make(Settings(true, server().UrlWith("application_name=" + app)));
  ASSERT_NE(dest, nullptr);
  auto session = dest->StartSession(Options({"id", "name"}));
  ASSERT_TRUE(session.ok()) << session.status();
  auto statuses = (*session)->SendBatch(
      std::vector<OutgoingRecord>{Upsert(ChangeKind::kAdded, 1, {Value::String("a")})});
  ASSERT_TRUE(statuses.ok()) << statuses.status();

  auto admin = Connect();
  ASSERT_TRUE(admin.ok());
  auto killed = (*admin)->Exec(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
      {app.c_str()});
  ASSERT_TRUE(killed.ok()) << killed.status();
  ASSERT_EQ(PQntuples(killed->get()), 1);
  usleep(100000);  // let the backend exit

  statuses = (*session)->SendBatch(
      std::vector<OutgoingRecord>{Upsert(ChangeKind::kAdded, 2, {Value::String("b")})});
  ASSERT_TRUE(statuses.ok()) << statuses.status();
  EXPECT_TRUE((*statuses)[0].ok()) << (*statuses)[0];
  EXPECT_THAT(Rows("id, name"), ::testing::ElementsAre("1|a", "2|b"));
}

}  // namespace
}  // namespace backflow
