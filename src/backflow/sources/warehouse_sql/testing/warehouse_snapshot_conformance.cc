#include "backflow/sources/warehouse_sql/testing/warehouse_snapshot_conformance.h"

#include <chrono>

#include "fmt/format.h"
#include "gmock/gmock.h"

namespace backflow::warehouse_testing {

namespace {

// Begins a pass and reads every candidate `filter` selects, calling
// `on_candidate` with each; nullptr (the test failed) when a step failed.
std::unique_ptr<WarehouseSnapshot> BeginReadingCandidates(
    WarehouseChangeDetection& cd, const std::string& sql, const std::string& key,
    const WarehouseCandidateFilter& filter, const std::atomic<bool>* cancel,
    const std::function<void(const Row&)>& on_candidate) {
  auto snapshot = cd.Begin(sql, key, WarehousePassOptions{cancel});
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  if (!snapshot.ok()) return nullptr;
  auto reader = (*snapshot)->ReadCandidates(filter);
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!reader.ok()) return nullptr;
  Row row;
  while (true) {
    auto more = (*reader)->Next(row);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok()) return nullptr;
    if (!*more) break;
    on_candidate(row);
  }
  return *std::move(snapshot);
}

}  // namespace

std::unique_ptr<WarehouseSnapshot> PassReadingCandidates(
    WarehouseChangeDetection& cd, const std::string& sql, const std::string& key,
    const WarehouseCandidateFilter& filter, const std::atomic<bool>* cancel, int& candidates) {
  candidates = 0;
  return BeginReadingCandidates(cd, sql, key, filter, cancel, [&](const Row&) { ++candidates; });
}

StoredEntries PassOver(WarehouseChangeDetection& cd, const std::string& sql, const std::string& key,
                       const WarehouseCandidateFilter& filter, const std::string& mapping,
                       const std::function<void(const Row&)>& on_candidate) {
  StoredEntries stored;
  std::unique_ptr<WarehouseSnapshot> snapshot =
      BeginReadingCandidates(cd, sql, key, filter, nullptr, on_candidate);
  if (snapshot == nullptr) return stored;
  auto scanner = snapshot->ScanEntries(mapping);
  EXPECT_TRUE(scanner.ok()) << scanner.status();
  WarehouseCheckpointEntry entry;
  while (scanner.ok()) {
    auto more = (*scanner)->Next(entry);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    stored.entries.push_back(entry);
  }
  auto count = snapshot->CountEntries(mapping);
  EXPECT_TRUE(count.ok()) << count.status();
  if (count.ok()) stored.count = *count;
  EXPECT_TRUE(snapshot->Close().ok());
  return stored;
}

WarehouseCheckpointWrite DeliveredWrite(const std::string& key, const std::string& hash,
                                        const Fingerprint& version) {
  WarehouseCheckpointWrite w;
  w.key = key;
  w.fingerprint = Fp(key.size());
  w.identity = "id:" + key;
  w.row_hash = hash;
  w.version = version;
  return w;
}

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

Fingerprint Fp(uint64_t n) { return Fingerprint{n, n * 7}; }

std::string JsonText(const nlohmann::json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

std::vector<std::vector<std::string>> TextRows(const nlohmann::json& rows) {
  std::vector<std::vector<std::string>> out;
  for (const nlohmann::json& row : rows) {
    out.emplace_back();
    for (const auto& item : row.items()) out.back().push_back(JsonText(item.value()));
  }
  return out;
}

std::vector<std::vector<std::string>> TextRows(
    const std::vector<std::vector<nlohmann::json>>& rows) {
  std::vector<std::vector<std::string>> out;
  for (const auto& row : rows) {
    out.emplace_back();
    for (const nlohmann::json& v : row) out.back().push_back(JsonText(v));
  }
  return out;
}

std::vector<std::vector<std::string>> TextRows(const std::vector<std::vector<std::string>>& rows) {
  return rows;
}

std::unique_ptr<Source> WarehouseSnapshotChecks::SourceOrFail(
    absl::StatusOr<std::unique_ptr<Source>> source) {
  EXPECT_TRUE(source.ok()) << source.status();
  return source.ok() ? *std::move(source) : nullptr;
}

void WarehouseSnapshotChecks::ExpectRan(const absl::Status& status, const std::string& sql) {
  ASSERT_TRUE(status.ok()) << status << "\n" << sql;
}

std::vector<std::string> WarehouseSnapshotChecks::Tables() {
  std::vector<std::string> names;
  for (const auto& row :
       WarehouseRows("SELECT name AS c0 FROM bf_state.sqlite_master WHERE type = 'table' ORDER BY "
                     "name")) {
    names.push_back(row.at(0));
  }
  return names;
}

void WarehouseSnapshotChecks::ExpectRowHash(const std::string& hash) {
  EXPECT_EQ(hash.size(), 32u);
  EXPECT_EQ(hash.find_first_not_of("0123456789abcdef"), std::string::npos) << hash;
}

WarehouseSnapshotChecks::Pass WarehouseSnapshotChecks::RunPass(
    WarehouseChangeDetection& cd, const WarehouseCandidateFilter& filter) {
  Pass pass;
  auto snapshot = cd.Begin(sql_ + sql_suffix_, key_);
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  if (!snapshot.ok()) return pass;
  EXPECT_EQ((*snapshot)->schema().size(), model_columns_);
  auto reader = (*snapshot)->ReadCandidates(filter);
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!reader.ok()) return pass;
  const Schema& schema = (*reader)->schema();
  EXPECT_EQ(schema.size(), model_columns_ + 1);
  if (schema.size() == model_columns_ + 1) {
    if (model_columns_ > 2) {
      EXPECT_EQ(schema[2].type, ValueType::kInt64);
    }
    if (model_columns_ > 3) {
      EXPECT_EQ(schema[3].type, ValueType::kTimestamp);
    }
    ExpectCandidateSchema(schema);
  }
  Row row;
  int nulls = 0;
  while (true) {
    auto more = (*reader)->Next(row);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    if (row.size() != model_columns_ + 1) {
      ADD_FAILURE() << "a candidate of " << row.size() << " values";
      break;
    }
    std::string key = row[0].is_null() ? fmt::format("<null>#{}", nulls++) : row[0].ToString();
    if (pass.rows.count(key)) ++pass.duplicates;
    std::string values;
    for (size_t i = 1; i < model_columns_; ++i) {
      values += (i > 1 ? "|" : "") + row[i].ToString();
    }
    pass.rows[key] = values;
    pass.hashes[key] = row[model_columns_].ToString();
    ExpectRowHash(pass.hashes[key]);
  }
  for (const auto& [mapping, version] : filter.mappings) {
    auto scanner = (*snapshot)->ScanEntries(mapping);
    EXPECT_TRUE(scanner.ok()) << scanner.status();
    if (!scanner.ok()) continue;
    WarehouseCheckpointEntry entry;
    auto& keys = pass.entries[mapping];
    while (true) {
      auto more = (*scanner)->Next(entry);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      keys.push_back(entry.key);
      pass.full[mapping].push_back(entry);
      if (!entries_as_delivered_) continue;
      EXPECT_EQ(entry.identity, "id:" + entry.key);
      EXPECT_EQ(entry.fingerprint, Fp(entry.key.size()));
    }
    auto count = (*snapshot)->CountEntries(mapping);
    EXPECT_TRUE(count.ok()) << count.status();
    pass.counts[mapping] = count.ok() ? *count : -1;
  }
  EXPECT_TRUE((*snapshot)->Close().ok());
  return pass;
}

void WarehouseSnapshotChecks::Deliver(WarehouseChangeDetection& cd, const std::string& mapping,
                                      const Fingerprint& version, const Pass& pass,
                                      const std::set<std::string>& skip) {
  std::vector<WarehouseCheckpointWrite> writes;
  for (const auto& [key, hash] : pass.hashes) {
    if (key.rfind("<null>", 0) == 0 || skip.count(key)) continue;
    writes.push_back(DeliveredWrite(key, hash, version));
  }
  absl::Status applied = cd.Apply(mapping, writes);
  EXPECT_TRUE(applied.ok()) << applied;
}

WarehouseCandidateFilter WarehouseSnapshotChecks::Filter(
    std::vector<std::pair<std::string, Fingerprint>> mappings) {
  WarehouseCandidateFilter f;
  f.mappings = std::move(mappings);
  return f;
}

std::set<std::string> WarehouseSnapshotChecks::Keys(const Pass& pass) {
  std::set<std::string> keys;
  for (const auto& [k, v] : pass.rows) keys.insert(k);
  return keys;
}

void WarehouseSnapshotChecks::ExpectCandidatesAndEntries(Source& source) {
  Exec(fmt::format(
      "INSERT INTO {} VALUES ('a','free',1,'2024-01-01 00:00:00'), ('B','free',2,NULL), "
      "('_','pro',3,NULL), ('c','',4,NULL), (NULL,'free',5,NULL), ('\xC3\xA9','free',6,NULL)",
      customers_));
  WarehouseChangeDetection* cd = source.warehouse_change_detection();
  ASSERT_NE(cd, nullptr);

  // First pass: nothing stored, every row is a candidate; the schema and
  // tables were created.
  Pass first = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_EQ(first.rows.size(), 6u);
  EXPECT_EQ(first.rows["a"], "free|1|" + seen_text_);
  EXPECT_EQ(first.counts["m"], 0);
  EXPECT_TRUE(first.entries["m"].empty());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));  // the pass's tables are gone
  Deliver(*cd, "m", Fp(1), first);

  // Nothing changed: only the NULL key comes back.
  Pass second = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(second), ElementsAre("<null>#0"));
  EXPECT_EQ(second.counts["m"], 5);
  EXPECT_TRUE(second.entries["m"].empty());
  EXPECT_EQ(second.hashes["<null>#0"], first.hashes["<null>#0"]);

  // An update (any column, '' to NULL too), an insert, a delete, a duplicated key.
  Exec(fmt::format("UPDATE {} SET seen = '2024-01-02 00:00:00' WHERE id = 'a'", customers_));
  Exec(fmt::format("UPDATE {} SET plan = NULL WHERE id = 'c'", customers_));
  Exec(fmt::format("INSERT INTO {} VALUES ('d','free',7,NULL), ('B','free',2,NULL)", customers_));
  Exec(fmt::format("DELETE FROM {} WHERE id = '_'", customers_));
  Pass third = RunPass(*cd, Filter({{"m", Fp(1)}}));
  EXPECT_THAT(Keys(third), UnorderedElementsAre("a", "B", "c", "d", "<null>#0"));
  EXPECT_EQ(third.duplicates, 1);  // both rows of "B"
  EXPECT_NE(third.hashes["a"], first.hashes["a"]);
  EXPECT_NE(third.hashes["c"], first.hashes["c"]);
  // Stored entries of candidate keys and of the gone key, in byte order
  // ("B" < "_" < "a" < "c" < "é"; a case-insensitive order would put "_" first).
  EXPECT_THAT(third.entries["m"], ElementsAre("B", "_", "a", "c"));

  // In-flight keys, a full resync, another version, a second mapping.
  Deliver(*cd, "m", Fp(1), third, {"B"});
  Exec(fmt::format("DELETE FROM {0} WHERE id = 'B' AND rowid = (SELECT max(rowid) FROM {0})",
                   customers_));
  WarehouseCandidateFilter flight = Filter({{"m", Fp(1)}});
  flight.in_flight_keys = {"\xC3\xA9", "zz"};
  Pass fourth = RunPass(*cd, flight);
  EXPECT_THAT(Keys(fourth), UnorderedElementsAre("\xC3\xA9", "<null>#0"));
  EXPECT_THAT(fourth.entries["m"], ElementsAre("_", "\xC3\xA9"));  // "_" is still stored

  WarehouseCandidateFilter all = Filter({{"m", Fp(1)}});
  all.all_rows = true;
  EXPECT_EQ(RunPass(*cd, all).rows.size(), 6u);
  EXPECT_EQ(RunPass(*cd, Filter({{"m", Fp(2)}})).rows.size(), 6u);
  Pass both = RunPass(*cd, Filter({{"m", Fp(1)}, {"other", Fp(1)}}));
  EXPECT_EQ(both.rows.size(), 6u);
  EXPECT_THAT(both.entries["m"], ElementsAre("B", "_", "a", "c", "d", "\xC3\xA9"));
  EXPECT_TRUE(both.entries["other"].empty());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
}

std::vector<WarehouseCheckpointWrite> WarehouseSnapshotChecks::LastWriteWins(const Pass& first) {
  WarehouseCheckpointWrite remove;
  remove.kind = WarehouseCheckpointWrite::Kind::kRemove;
  remove.key = "a";
  WarehouseCheckpointWrite upsert;
  upsert.key = "b";
  upsert.fingerprint = Fp(99);
  upsert.identity = std::string("\x00\x01'\"", 4);
  upsert.row_hash = first.hashes.at("b");
  upsert.version = Fp(1);
  WarehouseCheckpointWrite upsert_again = upsert;
  upsert_again.fingerprint = Fp(1);
  upsert_again.identity = "id:b";
  return {upsert, remove, upsert_again};
}

void WarehouseSnapshotChecks::ExpectStoredAfterLastWriteWins(
    const std::vector<std::vector<std::string>>& more) {
  std::vector<std::vector<std::string>> expected = {
      {"b", Fp(1).ToHex(), "69643a62", Fp(1).ToHex()}};  // "id:b"
  expected.insert(expected.end(), more.begin(), more.end());
  EXPECT_EQ(WarehouseRows("SELECT record_key AS c0, fingerprint AS c1, record_identity AS c2, "
                          "mapping_version AS c3 FROM bf_state.checkpoints WHERE mapping = 'm' "
                          "ORDER BY 1"),
            expected);
}

void WarehouseSnapshotChecks::ExpectOtherMappingUntouched(WarehouseChangeDetection& cd,
                                                          const Pass& first, int64_t count) {
  // Another mapping's entries are untouched by this one's writes.
  Deliver(cd, "n", Fp(1), first);
  WarehouseCheckpointWrite remove;
  remove.kind = WarehouseCheckpointWrite::Kind::kRemove;
  remove.key = "a";
  ASSERT_TRUE(cd.Apply("m", {remove}).ok());
  EXPECT_EQ(RunPass(cd, Filter({{"n", Fp(1)}})).counts["n"], count);
}

std::string WarehouseSnapshotChecks::ExpectKeyRefused(Source& source, const std::string& sql,
                                                      const std::string& key,
                                                      const std::string& advice) {
  auto snapshot = source.warehouse_change_detection()->Begin(sql, key);
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  if (!snapshot.ok()) return "";
  auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
  EXPECT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(reader.status().message());
  EXPECT_THAT(message, HasSubstr(advice));
  EXPECT_TRUE((*snapshot)->Close().ok());
  return message;
}

std::pair<Schema, Row> WarehouseSnapshotChecks::FirstCandidate(Source& source,
                                                               const std::string& sql,
                                                               const std::string& key) {
  std::pair<Schema, Row> out;
  auto snapshot = source.warehouse_change_detection()->Begin(sql, key);
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  if (!snapshot.ok()) return out;
  auto reader = (*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}}));
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (reader.ok()) {
    out.first = (*reader)->schema();
    auto more = (*reader)->Next(out.second);
    EXPECT_TRUE(more.ok() && *more) << more.status();
  }
  EXPECT_TRUE((*snapshot)->Close().ok());
  return out;
}

std::string WarehouseSnapshotChecks::ExpectPassTablesGoOnCloseOnFailureAndWhenStale(
    Source& source, const std::string& failing_sql) {
  Exec(fmt::format("INSERT INTO {} VALUES ('a','free',1,NULL)", customers_));
  WarehouseChangeDetection* cd = source.warehouse_change_detection();
  {
    auto snapshot = cd->Begin(sql_, key_);
    EXPECT_TRUE(snapshot.ok()) << snapshot.status();
    if (!snapshot.ok()) return "";
    EXPECT_TRUE((*snapshot)->ReadCandidates(Filter({{"m", Fp(1)}})).ok());
    EXPECT_EQ(Tables().size(), 4u);  // CHECKPOINTS, PASS_TABLES, PASS_x, PASS_x_K
    // Dropped without Close(): the destructor ends the pass.
  }
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));

  // A model that fails while the pass table is made.
  auto failed = cd->Begin(failing_sql, key_);
  EXPECT_FALSE(failed.ok());
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
  EXPECT_EQ(WarehouseRows("SELECT count(*) AS c0 FROM bf_state.pass_tables"),
            (std::vector<std::vector<std::string>>{{"0"}}));

  // A pass that never ended (a crash): dropped by a Begin more than a day later.
  Exec("CREATE TABLE bf_state.PASS_1_ab (x)");
  Exec("CREATE TABLE bf_state.PASS_1_ab_K (x)");
  Exec(fmt::format("INSERT INTO bf_state.pass_tables VALUES ('PASS_1_ab', {})",
                   static_cast<int64_t>(ToUnixSeconds(clock_.Now()))));
  auto snapshot = cd->Begin(sql_, key_);
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  if (snapshot.ok()) {
    EXPECT_TRUE((*snapshot)->Close().ok());
  }
  EXPECT_EQ(Tables().size(), 4u);  // still young
  clock_.Advance(std::chrono::hours(25));
  snapshot = cd->Begin(sql_, key_);
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  if (snapshot.ok()) {
    EXPECT_TRUE((*snapshot)->Close().ok());
  }
  EXPECT_THAT(Tables(), ElementsAre("CHECKPOINTS", "PASS_TABLES"));
  return failed.ok() ? "" : std::string(failed.status().message());
}

void WarehouseSnapshotChecks::ExpectNoPassTablesLeft(const std::string& schema) {
  EXPECT_EQ(WarehouseRows(fmt::format(
                "SELECT count(*) AS c0 FROM {}.sqlite_master WHERE type = 'table' AND name LIKE "
                "'PASS\\_%' ESCAPE '\\' AND name <> 'PASS_TABLES'",
                schema)),
            (std::vector<std::vector<std::string>>{{"0"}}));
}

}  // namespace backflow::warehouse_testing
