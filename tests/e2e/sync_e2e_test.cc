// End-to-end scenarios: the real `backflow` binary syncs a SQLite warehouse to
// a protocol-faithful webhook receiver on loopback, and we check what the
// receiver ends up holding against the model.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

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

constexpr char kSecret[] = "whsec_c2VjcmV0LWZvci1lMmUtdGVzdHM=";

class SyncE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("HOOK_SECRET", kSecret, 1);
    WebhookReceiverOptions options;
    options.signing_secret = kSecret;
    receiver_ = std::make_unique<WebhookReceiver>(options);
    ASSERT_TRUE(receiver_->Start().ok());
    auto db =
        sqlite::Database::Open(dir_ + "/warehouse.db", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    ASSERT_TRUE(db.ok());
    warehouse_ = std::move(*db);
    Exec("CREATE TABLE customers (id INTEGER, email TEXT, plan TEXT, ltv NUMERIC)");
    InsertCustomers(1, 200);
    WriteWorkspace();
  }

  void Exec(const std::string& sql) { ASSERT_TRUE(warehouse_->Exec(sql).ok()) << sql; }

  void InsertCustomers(int from, int to) {
    Exec("BEGIN");
    for (int i = from; i <= to; ++i) {
      Exec(fmt::format("INSERT INTO customers VALUES ({0}, 'user{0}@example.com', '{1}', {2})", i,
                       i % 3 == 0 ? "pro" : "free", i * 10));
    }
    Exec("COMMIT");
  }

  void WriteWorkspace(
      const std::string& sql = "SELECT id, email, plan, ltv FROM customers", int batch_size = 25,
      const std::string& fields = "{ customer_id: id, email: email, plan: plan, ltv: ltv }") {
    std::ofstream(dir_ + "/backflow.yaml")
        << fmt::format(R"(
state: sqlite:.backflow/state.db
sources:
  - name: warehouse
    type: sqlite
    path: warehouse.db
models:
  - name: customers
    source: warehouse
    sql: {}
    primary_key: id
    schedule: manual
destinations:
  - name: hook
    type: webhook
    settings:
      url: {}
      signing_secret: ${{env:HOOK_SECRET}}
      max_retries: 2
mappings:
  - name: customers_to_hook
    model: customers
    destination: hook
    action: send_batch
    records: all
    batch_size: {}
    fields: {}
)",
                       sql, receiver_->Url("/ingest"), batch_size, fields);
  }

  CliResult Sync(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"sync", "customers_to_hook", "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunCli(dir_, args);
  }

  // The model as the receiver should hold it: key -> fields.
  std::map<std::string, nlohmann::json> Model() {
    std::map<std::string, nlohmann::json> out;
    auto stmt = warehouse_->Prepare("SELECT id, email, plan, ltv FROM customers");
    EXPECT_TRUE(stmt.ok());
    while (*stmt->Step()) {
      int64_t id = stmt->ColumnInt(0);
      out[std::to_string(id)] = {{"customer_id", id},
                                 {"email", std::string(stmt->ColumnText(1))},
                                 {"plan", std::string(stmt->ColumnText(2))},
                                 {"ltv", stmt->ColumnInt(3)}};
    }
    return out;
  }

  // Requests received after the first `from` ones.
  std::vector<ReceivedRequest> RequestsSince(size_t from) {
    std::vector<ReceivedRequest> all = receiver_->Requests();
    return std::vector<ReceivedRequest>(all.begin() + std::min(from, all.size()), all.end());
  }

  static nlohmann::json Summary(const CliResult& r) {
    auto j = nlohmann::json::parse(r.LastLine(), nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "stdout: " << r.out << "\nstderr: " << r.err;
    return j;
  }

  testing::ScratchDir scratch_{"e2e"};
  const std::string dir_ = scratch_.string();
  std::unique_ptr<WebhookReceiver> receiver_;
  std::unique_ptr<sqlite::Database> warehouse_;
};

TEST_F(SyncE2eTest, InitialSyncThenExactlyTheChanges) {
  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json s = Summary(r);
  EXPECT_EQ(s["status"], "succeeded");
  EXPECT_EQ(s["extracted"], 200);
  EXPECT_EQ(s["added"], 200);
  EXPECT_EQ(s["succeeded"], 200);
  EXPECT_EQ(s["failed"], 0);
  EXPECT_EQ(s["rejected"], 0);
  for (const char* key : {"run_id", "updated", "deleted", "duration_s"}) {
    EXPECT_TRUE(s.contains(key)) << key;
  }
  EXPECT_EQ(receiver_->request_count(), 8);  // 200 records in batches of 25
  EXPECT_EQ(receiver_->bad_signature_count(), 0);
  EXPECT_EQ(receiver_->State(), Model());

  Exec("INSERT INTO customers VALUES (201, 'new@example.com', 'pro', 5)");
  Exec("UPDATE customers SET plan = 'enterprise' WHERE id = 7");
  Exec("DELETE FROM customers WHERE id IN (8, 9)");
  size_t seen = receiver_->Requests().size();
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  s = Summary(r);
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["deleted"], 2);
  EXPECT_EQ(s["succeeded"], 4);
  auto requests = RequestsSince(seen);
  ASSERT_EQ(requests.size(), 1u);
  std::vector<std::string> keys = requests[0].record_keys;
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"201", "7", "8", "9"}));
  nlohmann::json body = nlohmann::json::parse(requests[0].body);
  for (const auto& rec : body["records"]) {
    if (rec["key"] == "8") {
      EXPECT_EQ(rec["operation"], "delete");
      EXPECT_EQ(rec["fields"], nlohmann::json({{"customer_id", 8}}));
    }
  }

  // Nothing changed: nothing sent.
  seen = receiver_->Requests().size();
  r = Sync();
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(RequestsSince(seen).empty());
  EXPECT_EQ(receiver_->State(), Model());
}

TEST_F(SyncE2eTest, RejectedRecordIsReportedAndRetriedNextRun) {
  receiver_->RejectKey("42", "email domain is blocked");
  CliResult r = Sync();
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  nlohmann::json s = Summary(r);
  EXPECT_EQ(s["status"], "partial");
  EXPECT_EQ(s["failed"], 1);
  EXPECT_EQ(s["succeeded"], 199);

  CliResult show = RunCli(dir_, {"runs", "show", std::to_string(s["run_id"].get<int>()), "--json"});
  ASSERT_EQ(show.exit_code, 0) << show.err;
  nlohmann::json run = nlohmann::json::parse(show.LastLine());
  ASSERT_EQ(run["records"].size(), 1u);
  const auto& rec = run["records"][0];
  EXPECT_EQ(rec["key"], "42");
  EXPECT_EQ(rec["outcome"], "failed");
  EXPECT_NE(rec["error"].get<std::string>().find("email domain is blocked"), std::string::npos);
  EXPECT_EQ(rec["payload"]["email"], "user42@example.com");
  EXPECT_FALSE(rec["recommended_action"].get<std::string>().empty());
  CliResult human = RunCli(dir_, {"runs", "show", std::to_string(s["run_id"].get<int>())});
  EXPECT_NE(human.out.find("failed added key 42"), std::string::npos) << human.out;

  receiver_->ClearRejections();
  size_t seen = receiver_->Requests().size();
  r = Sync();
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  auto requests = RequestsSince(seen);
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].record_keys, (std::vector<std::string>{"42"}));
  EXPECT_EQ(receiver_->State(), Model());
}

TEST_F(SyncE2eTest, KilledMidDeliveryLosesNothing) {
  InsertCustomers(201, 1000);
  WriteWorkspace("SELECT id, email, plan, ltv FROM customers", 50);
  receiver_->HoldFrom(6);  // let 5 batches through, hold the 6th
  pid_t pid = e2e::StartCli(dir_, {"sync", "customers_to_hook"});
  e2e::ChildGuard child(pid);
  ASSERT_TRUE(receiver_->WaitForHeld(std::chrono::seconds(60)));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  receiver_->Release();  // the held batch is applied; its acknowledgement is lost
  ASSERT_TRUE(receiver_->WaitForRequests(6, std::chrono::seconds(10)));
  receiver_->HoldFrom(0);

  CliResult runs = RunCli(dir_, {"runs", "list", "--json"});
  nlohmann::json listed = nlohmann::json::parse(runs.LastLine());
  ASSERT_EQ(listed["runs"].size(), 1u);
  EXPECT_EQ(listed["runs"][0]["status"], "interrupted");

  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json s = Summary(r);
  EXPECT_EQ(s["added"], 1000 - 5 * 50);  // the 5 acknowledged batches are not re-sent
  EXPECT_EQ(receiver_->State(), Model());
  // Only the batch in flight at the kill was delivered twice.
  EXPECT_LE(receiver_->DuplicateRecordIds().size(), 50u);
}

TEST_F(SyncE2eTest, DuplicateAndNullKeysAreRejectedTheRestSyncs) {
  Exec("INSERT INTO customers VALUES (5, 'dupe@example.com', 'free', 1)");
  Exec("INSERT INTO customers VALUES (NULL, 'nokey@example.com', 'free', 1)");
  CliResult r = Sync();
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  nlohmann::json s = Summary(r);
  EXPECT_EQ(s["rejected"], 3);
  EXPECT_EQ(s["succeeded"], 199);
  EXPECT_EQ(receiver_->State().count("5"), 0u);
  EXPECT_EQ(receiver_->State().size(), 199u);
}

TEST_F(SyncE2eTest, FailingQuerySendsNothing) {
  WriteWorkspace("SELECT id, email, plan, ltv FROM customerz");
  CliResult r = Sync();
  EXPECT_EQ(r.exit_code, 1);
  nlohmann::json s = Summary(r);
  EXPECT_EQ(s["status"], "failed");
  EXPECT_NE(s["error"].get<std::string>().find("no such table: customerz"), std::string::npos)
      << s.dump();
  EXPECT_EQ(receiver_->request_count(), 0);
}

TEST_F(SyncE2eTest, DryRunSendsNothing) {
  CliResult r = Sync({"--dry-run"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json s = Summary(r);
  EXPECT_EQ(s["added"], 200);
  EXPECT_EQ(s["dry_run"], true);
  EXPECT_EQ(s["changes"].size(), 20u);
  EXPECT_EQ(receiver_->request_count(), 0);
  CliResult human = RunCli(dir_, {"sync", "customers_to_hook", "--dry-run"});
  EXPECT_NE(human.out.find("would send 200 records; nothing was sent"), std::string::npos)
      << human.out;
  EXPECT_EQ(receiver_->request_count(), 0);
}

TEST_F(SyncE2eTest, ConcurrentBatchesKeepTheReceiverExact) {
  std::string yaml;
  {
    std::ifstream in(dir_ + "/backflow.yaml");
    yaml.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  size_t at = yaml.find("      max_retries: 2\n");
  ASSERT_NE(at, std::string::npos);
  yaml.insert(at, "      concurrency: 4\n");
  std::ofstream(dir_ + "/backflow.yaml") << yaml;
  receiver_->EnqueueReplies(8, WebhookReply::Slow(std::chrono::milliseconds(100)));
  receiver_->RejectKey("13", "bad email", /*retryable=*/false);
  CliResult r = Sync();
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;  // one record rejected
  nlohmann::json s = Summary(r);
  EXPECT_EQ(s["succeeded"], 199);
  EXPECT_EQ(receiver_->request_count(), 8);
  EXPECT_TRUE(receiver_->DuplicateRecordIds().empty());

  receiver_->ClearRejections();
  Exec("UPDATE customers SET plan = 'enterprise' WHERE id BETWEEN 50 AND 120");
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Summary(r)["succeeded"], 72);  // 71 updates + the retried rejection
  EXPECT_EQ(receiver_->State(), Model());
}

TEST_F(SyncE2eTest, MappingExpressionsShapeThePayload) {
  WriteWorkspace("SELECT id, email, plan, ltv FROM customers", 25, R"yaml(
      user_id: "concat('u_', id)"
      traits.email: "upper(email)"
      traits.plan: coalesce(plan, 'none')
      greeting: "'Hello {{email}}'"
      email_sha256: hash_email(email)
      source: "'warehouse'")yaml");
  CliResult t = RunCli(dir_, {"mapping", "test", "customers_to_hook", "--record", "5", "--json"});
  ASSERT_EQ(t.exit_code, 0) << t.out << t.err;
  nlohmann::json payload = nlohmann::json::parse(t.LastLine())["payload"];
  EXPECT_EQ(payload["user_id"], "u_5");
  EXPECT_EQ(payload["traits.email"], "USER5@EXAMPLE.COM");
  EXPECT_EQ(payload["greeting"], "Hello user5@example.com");
  EXPECT_EQ(payload["email_sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(payload["source"], "warehouse");

  CliResult r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Summary(r)["succeeded"], 200);
  // Deletes carry the fields computed from the unique identifier alone.
  Exec("DELETE FROM customers WHERE id = 7");
  size_t before = receiver_->Requests().size();
  r = Sync();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  std::vector<ReceivedRequest> sent = RequestsSince(before);
  ASSERT_EQ(sent.size(), 1u);
  nlohmann::json body = nlohmann::json::parse(sent[0].body);
  EXPECT_EQ(body["records"][0]["fields"], nlohmann::json::parse(R"({"user_id":"u_7"})"));

  // A syntax error is a config error with the file position.
  WriteWorkspace("SELECT id, email, plan, ltv FROM customers", 25, "{ email: lowr(email) }");
  CliResult v = RunCli(dir_, {"validate"});
  EXPECT_EQ(v.exit_code, 3);
  EXPECT_NE(v.out.find("mappings[0].fields.email: unknown function lowr()"), std::string::npos)
      << v.out;
}

TEST_F(SyncE2eTest, ValidateAndPreview) {
  CliResult v = RunCli(dir_, {"validate"});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  EXPECT_NE(v.out.find("is valid: 1 source, 1 model, 1 destination, 1 mapping"), std::string::npos)
      << v.out;
  CliResult p = RunCli(dir_, {"preview", "customers", "--json"});
  ASSERT_EQ(p.exit_code, 0) << p.err;
  nlohmann::json preview = nlohmann::json::parse(p.LastLine());
  EXPECT_EQ(preview["rows"].size(), 10u);
  EXPECT_EQ(preview["columns"][0]["name"], "id");
  EXPECT_EQ(preview["columns"][0]["type"], "integer");

  CliResult t = RunCli(dir_, {"mapping", "test", "customers_to_hook", "--record", "5", "--json"});
  ASSERT_EQ(t.exit_code, 0) << t.err;
  nlohmann::json tested = nlohmann::json::parse(t.LastLine());
  EXPECT_EQ(tested["payload"], nlohmann::json::parse(R"({"customer_id":5,
      "email":"user5@example.com","plan":"free","ltv":50})"));
  EXPECT_EQ(receiver_->request_count(), 0);  // nothing sent
  Exec("INSERT INTO customers VALUES (5, 'again@example.com', 'free', 1)");
  t = RunCli(dir_, {"mapping", "test", "customers_to_hook", "--record", "5"});
  EXPECT_EQ(t.exit_code, 1);
  EXPECT_NE(t.out.find("rejected duplicate unique identifier"), std::string::npos) << t.out;
  t = RunCli(dir_, {"mapping", "test", "customers_to_hook", "--record", "404"});
  EXPECT_EQ(t.exit_code, 1);
  EXPECT_NE(t.err.find("has no row with id = 404"), std::string::npos) << t.err;

  std::ofstream(dir_ + "/bad.yaml") << "sources:\n  - name: w\n    type: snowflak\n";
  CliResult bad = RunCli(dir_, {"-c", "bad.yaml", "validate"});
  EXPECT_EQ(bad.exit_code, 3);
  EXPECT_NE(bad.out.find("bad.yaml:3:11: error: sources[0].type: unknown source type "
                         "\"snowflak\""),
            std::string::npos)
      << bad.out;
}

TEST_F(SyncE2eTest, DamagedStateIsDetectedAndNothingIsSent) {
  ASSERT_EQ(Sync().exit_code, 0);
  int64_t before = receiver_->request_count();
  {
    // Scribble over the middle of the mapping's checkpoint file.
    std::string base;
    for (const auto& e :
         fs::recursive_directory_iterator(dir_ + "/.backflow/state.db-checkpoints")) {
      if (e.path().extension() == ".ckpt") base = e.path().string();
    }
    ASSERT_FALSE(base.empty());
    std::fstream f(base, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    int64_t size = f.tellg();
    ASSERT_GT(size, 64);
    f.seekp(size / 2);
    f.write(std::string(16, '\xde').data(), 16);
  }
  Exec("DELETE FROM customers WHERE id = 1");
  CliResult r = Sync();
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  std::string all = r.out + r.err;
  EXPECT_TRUE(all.find("damaged") != std::string::npos ||
              all.find("malformed") != std::string::npos)
      << all;
  EXPECT_EQ(receiver_->request_count(), before);
}

}  // namespace
}  // namespace backflow
