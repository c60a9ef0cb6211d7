#include "backflow/destinations/file/file_destination.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "backflow/destinations/destination.h"
#include "backflow/testing/scratch_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using json = nlohmann::json;

std::vector<std::string> ListDir(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

OutgoingRecord Record(ChangeKind change, std::string key, Row values) {
  OutgoingRecord r;
  r.change = change;
  r.key = key;
  r.dedup_id = "dd_" + key;
  r.values = std::move(values);
  return r;
}

class FileDestinationTest : public ::testing::Test {
 protected:
  std::unique_ptr<Destination> Make(const std::string& format) {
    json settings = {{"path", dir_.string()}, {"format", format}};
    EXPECT_THAT(CheckSettings(def_.settings, settings), IsEmpty());
    auto dest = def_.create(settings, ConnectorEnv{});
    EXPECT_TRUE(dest.ok()) << dest.status();
    return dest.ok() ? *std::move(dest) : nullptr;
  }

  std::unique_ptr<ActionSession> Start(Destination& dest, int64_t run_id = 7) {
    SessionOptions opts;
    opts.mapping = "contacts";
    opts.run_id = run_id;
    opts.action = def_.FindAction("write_records");
    opts.layout.fields = {"email", "name", "score"};
    opts.layout.identity = {"email"};
    auto session = dest.StartSession(opts);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *std::move(session) : nullptr;
  }

  DestinationDefinition def_ = FileDestinationDefinition();
  testing::ScratchDir scratch_{"file-destination"};
  const fs::path root_ = scratch_.path();
  const fs::path dir_ = root_ / "out" / "nested";  // does not exist yet
};

TEST_F(FileDestinationTest, Definition) {
  EXPECT_EQ(def_.type, "file");
  const ActionSpec* a = def_.FindAction("write_records");
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(a->commit_on_finish);
  EXPECT_TRUE(a->allows_extra_fields);
  EXPECT_EQ(a->default_batch_records, 1000);
  EXPECT_EQ(a->max_batch_records, 10000);
  EXPECT_EQ(a->selections.size(), 5u);
  json settings = {{"path", "/tmp/x"}};
  EXPECT_THAT(CheckSettings(def_.settings, settings), IsEmpty());
  EXPECT_EQ(settings["format"], "jsonl");
  json bad = {{"path", "/tmp/x"}, {"format", "xml"}};
  EXPECT_FALSE(CheckSettings(def_.settings, bad).empty());
  EXPECT_FALSE(def_.create(json::object(), ConnectorEnv{}).ok());
}

TEST_F(FileDestinationTest, WritesJsonlOnlyOnFinish) {
  auto dest = Make("jsonl");
  ASSERT_NE(dest, nullptr);
  auto session = Start(*dest);
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Record(ChangeKind::kAdded, "1",
             {Value::String("a@x.io"), Value::String("Ann"), Value::Int64(3)}),
      Record(ChangeKind::kUpdated, "2",
             {Value::String("b@x.io"), Value::Null(), Value::Double(1.5)}),
  };
  auto result = session->SendBatch(batch);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->size(), 2u);
  EXPECT_TRUE((*result)[0].ok());
  std::vector<OutgoingRecord> deletes = {
      Record(ChangeKind::kDeleted, "3", {Value::String("c@x.io")})};
  ASSERT_TRUE(session->SendBatch(deletes).ok());

  // Nothing visible before Finish(): only the hidden temp file exists.
  EXPECT_THAT(ListDir(dir_), ElementsAre(".contacts-7.jsonl.tmp"));
  ASSERT_TRUE(session->Finish().ok());
  EXPECT_THAT(ListDir(dir_), ElementsAre("contacts-7.jsonl"));

  std::string text = ReadFile(dir_ / "contacts-7.jsonl");
  std::vector<json> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], json({{"operation", "upsert"},
                            {"change", "added"},
                            {"key", "1"},
                            {"id", "dd_1"},
                            {"fields", {{"email", "a@x.io"}, {"name", "Ann"}, {"score", 3}}}}));
  EXPECT_EQ(lines[1]["change"], "updated");
  EXPECT_EQ(lines[1]["fields"]["name"], nullptr);
  EXPECT_EQ(lines[2], json({{"operation", "delete"},
                            {"change", "deleted"},
                            {"key", "3"},
                            {"id", "dd_3"},
                            {"fields", {{"email", "c@x.io"}}}}));
  // Key order on the line is fixed.
  EXPECT_TRUE(text.starts_with(R"({"operation":"upsert","change":"added","key":"1","id":"dd_1",)"));
}

TEST_F(FileDestinationTest, WritesCsvWithQuoting) {
  auto dest = Make("csv");
  ASSERT_NE(dest, nullptr);
  auto session = Start(*dest, 12);
  ASSERT_NE(session, nullptr);
  std::vector<OutgoingRecord> batch = {
      Record(ChangeKind::kAdded, "1",
             {Value::String("a@x.io"), Value::String("Smith, Ann"), Value::Int64(3)}),
      Record(ChangeKind::kAdded, "k,2",
             {Value::String("b@x.io"), Value::String("say \"hi\""), Value::Null()}),
      Record(ChangeKind::kUpdated, "3",
             {Value::String("c@x.io"), Value::String("two\nlines\r\nhere"), Value::Int64(-1)}),
      Record(ChangeKind::kDeleted, "4", {Value::String("d@x.io")}),
  };
  ASSERT_TRUE(session->SendBatch(batch).ok());
  EXPECT_FALSE(fs::exists(dir_ / "contacts-12.csv"));
  ASSERT_TRUE(session->Finish().ok());
  EXPECT_EQ(ReadFile(dir_ / "contacts-12.csv"),
            "operation,change,key,email,name,score\r\n"
            "upsert,added,1,a@x.io,\"Smith, Ann\",3\r\n"
            "upsert,added,\"k,2\",b@x.io,\"say \"\"hi\"\"\",\r\n"
            "upsert,updated,3,c@x.io,\"two\nlines\r\nhere\",-1\r\n"
            "delete,deleted,4,d@x.io,,\r\n");
}

TEST_F(FileDestinationTest, NoFileWhenNothingSent) {
  auto dest = Make("jsonl");
  ASSERT_NE(dest, nullptr);
  auto session = Start(*dest);
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(session->SendBatch({}).ok());
  ASSERT_TRUE(session->Finish().ok());
  EXPECT_THAT(ListDir(dir_), IsEmpty());
}

TEST_F(FileDestinationTest, AbandonedSessionLeavesNoFile) {
  auto dest = Make("jsonl");
  ASSERT_NE(dest, nullptr);
  {
    auto session = Start(*dest);
    ASSERT_NE(session, nullptr);
    std::vector<OutgoingRecord> batch = {
        Record(ChangeKind::kAdded, "1", {Value::String("a"), Value::String("b"), Value::Int64(1)})};
    ASSERT_TRUE(session->SendBatch(batch).ok());
  }  // destroyed without Finish()
  EXPECT_THAT(ListDir(dir_), IsEmpty());
}

TEST_F(FileDestinationTest, StaleTempFilesOfSameMappingAreRemoved) {
  fs::create_directories(dir_);
  for (const char* name :
       {".contacts-3.jsonl.tmp", ".contacts-4.csv.tmp", ".contacts-extra-5.jsonl.tmp",
        ".other-3.jsonl.tmp", "contacts-2.jsonl"}) {
    std::ofstream(dir_ / name) << "partial";
  }
  auto dest = Make("jsonl");
  ASSERT_NE(dest, nullptr);
  auto session = Start(*dest);
  ASSERT_NE(session, nullptr);
  EXPECT_THAT(ListDir(dir_),
              ElementsAre(".contacts-extra-5.jsonl.tmp", ".other-3.jsonl.tmp", "contacts-2.jsonl"));
}

TEST_F(FileDestinationTest, RejectsUnsafeMappingNames) {
  auto dest = Make("jsonl");
  ASSERT_NE(dest, nullptr);
  SessionOptions opts;
  opts.mapping = "../escape";
  EXPECT_EQ(dest->StartSession(opts).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(FileDestinationTest, CheckConnection) {
  auto dest = Make("csv");
  ASSERT_NE(dest, nullptr);
  EXPECT_TRUE(dest->CheckConnection().ok());
  EXPECT_TRUE(fs::is_directory(dir_));
  EXPECT_THAT(ListDir(dir_), IsEmpty());  // probe removed

  // A path below a regular file cannot be created.
  std::ofstream(root_ / "plain") << "x";
  json settings = {{"path", (root_ / "plain" / "sub").string()}, {"format", "csv"}};
  auto blocked = def_.create(settings, ConnectorEnv{});
  ASSERT_TRUE(blocked.ok());
  absl::Status s = (*blocked)->CheckConnection();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;

  if (::geteuid() != 0) {  // root ignores permission bits
    fs::path ro = root_ / "readonly";
    fs::create_directories(ro);
    ::chmod(ro.c_str(), 0555);
    auto readonly = def_.create(json{{"path", ro.string()}, {"format", "csv"}}, ConnectorEnv{});
    ASSERT_TRUE(readonly.ok());
    EXPECT_EQ((*readonly)->CheckConnection().code(), absl::StatusCode::kFailedPrecondition);
    ::chmod(ro.c_str(), 0755);
  }
}

}  // namespace
}  // namespace backflow
