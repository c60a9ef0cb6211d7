// change_detection: warehouse on Redshift with many in-flight keys, against
// the Data API fake (which refuses a JSON_PARSE argument over 65535 bytes, as
// Redshift's VARCHAR does): the keys go into the pass's keys table in several
// statements, each binding at most 60000 bytes of JSON, and exactly the
// in-flight keys of the model come back as candidates, whatever characters
// they hold; a key that cannot be bound at all fails the pass saying so.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/http_client.h"
#include "backflow/sources/redshift/fake_redshift_aws_server.h"
#include "backflow/sources/redshift/redshift_data_api.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

Fingerprint Fp(uint64_t n) { return Fingerprint{n, n * 7}; }

// A key with a quote, a double quote, a comma, a backslash and non-ASCII
// text, about 100 bytes long.
std::string Key(int i) {
  return fmt::format("k'{:05},\"\xC3\xA9\xE2\x82\xAC\\{}", i, std::string(80, 'a' + i % 26));
}

class RedshiftInFlightKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FakeRedshiftAwsOptions options;
    options.clock = &clock_;
    options.page_rows = 500;
    options.polls_submitted = 0;
    options.polls_started = 0;
    fake_ = std::make_unique<FakeRedshiftAwsServer>(options);
    ASSERT_TRUE(fake_->Start().ok());
    ASSERT_TRUE(fake_->Exec("CREATE TABLE customers (id varchar(256), plan varchar(16))").ok());
    std::string values;
    for (int i = 0; i < kKeys; ++i) {
      std::string quoted = Key(i);
      for (size_t at = quoted.find('\''); at != std::string::npos; at = quoted.find('\'', at + 2)) {
        quoted.insert(at, 1, '\'');
      }
      values += fmt::format("{}('{}', 'free')", values.empty() ? "" : ", ", quoted);
    }
    ASSERT_TRUE(fake_->Exec("INSERT INTO customers VALUES " + values).ok());
    SourceDefinition def = RedshiftDataApiSourceDefinition();
    auto source = def.create(fake_->SourceSettings(), ConnectorEnv{http_.get(), &clock_});
    ASSERT_TRUE(source.ok()) << source.status();
    source_ = *std::move(source);
    cd_ = source_->warehouse_change_detection();
    ASSERT_NE(cd_, nullptr);
  }

  // The candidate keys of one pass with `filter`; every one delivered.
  std::set<std::string> Candidates(const WarehouseCandidateFilter& filter, bool deliver) {
    std::set<std::string> keys;
    auto snapshot = cd_->Begin(sql_, "id");
    EXPECT_TRUE(snapshot.ok()) << snapshot.status();
    if (!snapshot.ok()) return keys;
    auto reader = (*snapshot)->ReadCandidates(filter);
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return keys;
    std::vector<WarehouseCheckpointWrite> writes;
    Row row;
    while (true) {
      auto more = (*reader)->Next(row);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      keys.insert(row[0].ToString());
      WarehouseCheckpointWrite w;
      w.key = row[0].ToString();
      w.fingerprint = Fp(1);
      w.identity = "id";
      w.row_hash = row[2].ToString();
      w.version = Fp(1);
      writes.push_back(w);
    }
    EXPECT_TRUE((*snapshot)->Close().ok());
    if (deliver) {
      absl::Status applied = cd_->Apply("m", writes);
      EXPECT_TRUE(applied.ok()) << applied;
    }
    return keys;
  }

  // The JSON_PARSE parameter values of the INSERTs into a keys table since
  // request `from`.
  std::vector<std::string> InFlightBindings(size_t from) {
    std::vector<std::string> values;
    std::vector<json> requests = fake_->ExecuteRequests();
    for (size_t i = from; i < requests.size(); ++i) {
      const std::string sql = requests[i].value("Sql", "");
      if (sql.find("INSERT INTO bf_state.PASS_") == std::string::npos ||
          sql.find("SELECT DISTINCT") == std::string::npos) {
        continue;
      }
      for (const json& p : requests[i].value("Parameters", json::array())) {
        values.push_back(p.value("value", ""));
      }
    }
    return values;
  }

  static constexpr int kKeys = 2000;  // about 230 KB of keys as JSON
  FakeClock clock_;
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  std::unique_ptr<FakeRedshiftAwsServer> fake_;
  std::unique_ptr<Source> source_;
  WarehouseChangeDetection* cd_ = nullptr;
  std::string sql_ = "SELECT id, plan FROM customers";
};

TEST_F(RedshiftInFlightKeysTest, ManyInFlightKeysTravelInSeveralBindingsUnderTheLimit) {
  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fp(1)}};
  // First pass: every key is new; all are delivered.
  ASSERT_EQ(Candidates(filter, /*deliver=*/true).size(), static_cast<size_t>(kKeys));
  // Nothing changed: no candidates.
  EXPECT_TRUE(Candidates(filter, /*deliver=*/false).empty());

  // Every key in flight, plus keys the model does not return.
  std::set<std::string> expected;
  for (int i = 0; i < kKeys; ++i) {
    filter.in_flight_keys.push_back(Key(i));
    expected.insert(Key(i));
  }
  filter.in_flight_keys.push_back("not in the model, \"quoted\"");
  const size_t before = fake_->ExecuteRequests().size();
  EXPECT_EQ(Candidates(filter, /*deliver=*/false), expected);
  std::vector<std::string> bindings = InFlightBindings(before);
  ASSERT_GE(bindings.size(), 4u);  // ~230 KB in chunks of at most 60000 bytes
  size_t keys_bound = 0;
  for (const std::string& b : bindings) {
    EXPECT_LE(b.size(), 60000u);
    json parsed = json::parse(b);
    ASSERT_TRUE(parsed.is_array());
    keys_bound += parsed.size();
  }
  EXPECT_EQ(keys_bound, static_cast<size_t>(kKeys) + 1);  // each key in exactly one chunk

  // Every third key in flight: exactly those are candidates.
  filter.in_flight_keys.clear();
  expected.clear();
  for (int i = 0; i < kKeys; i += 3) {
    filter.in_flight_keys.push_back(Key(i));
    expected.insert(Key(i));
  }
  EXPECT_EQ(Candidates(filter, /*deliver=*/false), expected);

  // A changed row and in-flight keys together: the union, once each.
  ASSERT_TRUE(fake_->Exec("UPDATE customers SET plan = 'pro' WHERE id LIKE 'k''00001,%'").ok());
  expected.insert(Key(1));
  EXPECT_EQ(Candidates(filter, /*deliver=*/false), expected);
  // The pass tables are gone.
  auto tables = fake_->Select(
      "SELECT count(*) FROM bf_state.sqlite_master WHERE type = 'table' AND name LIKE 'PASS_%' "
      "AND name <> 'PASS_TABLES'");
  ASSERT_TRUE(tables.ok()) << tables.status();
  EXPECT_EQ((*tables)[0][0], "0");
}

TEST_F(RedshiftInFlightKeysTest, AKeyTooLongToBindFailsThePassSayingSo) {
  WarehouseCandidateFilter filter;
  filter.mappings = {{"m", Fp(1)}};
  filter.in_flight_keys = {"short", std::string(70000, 'x')};
  auto snapshot = cd_->Begin(sql_, "id");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  auto reader = (*snapshot)->ReadCandidates(filter);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(reader.status().message()),
              HasSubstr("is 70002 bytes as JSON, more than the 59998 bytes"));
  EXPECT_TRUE((*snapshot)->Close().ok());
}

TEST_F(RedshiftInFlightKeysTest, TheFakeRefusesAJsonParseArgumentOverTheVarcharLimit) {
  // Apply binds one write alone when it is larger than the chunk size: the
  // fake refuses its JSON as Redshift's VARCHAR argument would.
  WarehouseCheckpointWrite w;
  w.key = Key(0);
  w.fingerprint = Fp(1);
  w.identity = std::string(40000, 'i');  // 80000 hex characters
  w.row_hash = "h";
  w.version = Fp(1);
  absl::Status applied = cd_->Apply("m", {w});
  ASSERT_FALSE(applied.ok());
  EXPECT_THAT(std::string(applied.message()), HasSubstr("character varying(65535)"));
}

}  // namespace
}  // namespace backflow
