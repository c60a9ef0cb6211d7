#include "backflow/sources/warehouse_sql/pass_change_detection.h"

#include <cctype>
#include <map>
#include <optional>
#include <utility>

#include "backflow/common/crypto.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/numbers.h"
#include "backflow/common/status_macros.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {

constexpr char kPassKey[] = "BACKFLOW_PASS_KEY";
constexpr char kRowHash[] = "BACKFLOW_ROW_HASH";

bool IsPlainSqlIdentifier(std::string_view name) {
  if (name.empty() || name.size() > 255) return false;
  if (std::isdigit(static_cast<unsigned char>(name[0])) || name[0] == '$') return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '$') return false;
  }
  return true;
}

namespace pass_sql {

std::string RowHash(const WarehouseSql& sql, const Schema& schema, const std::string& alias) {
  std::string text;
  for (const Column& c : schema) {
    const std::string ref = alias + "." + sql.QuoteIdentifier(c.name);
    const std::string t = sql.ToText(c, ref);
    if (!text.empty()) text += " || ";
    text += fmt::format("CASE WHEN {0} IS NULL THEN 'n' ELSE 'v' || {2} || ':' || {1} END", ref, t,
                        sql.LengthText(t));
  }
  return sql.Md5Hex(text);
}

BoundSql CreatePassTable(const WarehouseSql& sql, const std::string& table,
                         const std::string& model_sql, const Schema& schema, int key_index) {
  const Column& key = schema[static_cast<size_t>(key_index)];
  return {fmt::format("CREATE TABLE {} AS\nSELECT m.*, {} AS {}, {} AS {}\nFROM (\n{}\n) AS m",
                      table, sql.ToText(key, "m." + sql.QuoteIdentifier(key.name)), kPassKey,
                      RowHash(sql, schema, "m"), kRowHash, model_sql),
          {}};
}

BoundSql CreateKeysTable(const WarehouseSql& sql, const std::string& checkpoints,
                         const std::string& pass, const std::string& keys,
                         const WarehouseCandidateFilter& filter) {
  BoundSql out = SelectKeys(sql, checkpoints, pass, filter);
  out.sql = fmt::format("CREATE TABLE {} AS\n{}", keys, out.sql);
  return out;
}

BoundSql SelectKeys(const WarehouseSql& sql, const std::string& checkpoints,
                    const std::string& pass, const WarehouseCandidateFilter& filter) {
  BoundSql out;
  std::string joins, conditions;
  if (filter.all_rows) {
    conditions = "TRUE";
  } else {
    for (size_t i = 0; i < filter.mappings.size(); ++i) {
      joins +=
          fmt::format("LEFT JOIN {0} AS c{1} ON c{1}.mapping = ? AND c{1}.record_key = p.{2}\n",
                      checkpoints, i, kPassKey);
      out.bindings.push_back(filter.mappings[i].first);
    }
    nlohmann::json in_flight = filter.in_flight_keys;
    conditions = fmt::format(
        "p.{0} IN (SELECT {1} FROM {2})\n"
        "   OR p.{0} IN (SELECT d.{0} FROM {3} AS d GROUP BY d.{0} HAVING COUNT(*) > 1)",
        kPassKey, sql.JsonValueText("j"), sql.JsonArrayTable("j"), pass);
    out.bindings.push_back(in_flight.dump());
    for (size_t i = 0; i < filter.mappings.size(); ++i) {
      conditions += fmt::format(
          "\n   OR {} OR {}",
          sql.DiffersFrom(fmt::format("c{}.row_hash", i), fmt::format("p.{}", kRowHash)),
          sql.DiffersFrom(fmt::format("c{}.mapping_version", i), "?"));
      out.bindings.push_back(filter.mappings[i].second.ToHex());
    }
  }
  out.sql = fmt::format(
      "SELECT p.{0} AS record_key FROM {1} AS p\n"
      "{2}"
      "WHERE p.{0} IS NOT NULL AND ({3})",
      kPassKey, pass, joins, conditions);
  if (!filter.mappings.empty()) {
    std::string marks;
    for (const auto& [name, version] : filter.mappings) {
      marks += marks.empty() ? "?" : ", ?";
      out.bindings.push_back(name);
    }
    out.sql += fmt::format(
        "\n{4}\n"
        "SELECT c.record_key FROM {0} AS c WHERE c.mapping IN ({1})\n"
        "  AND NOT EXISTS (SELECT 1 FROM {2} AS g WHERE g.{3} = c.record_key)",
        checkpoints, marks, pass, kPassKey, sql.UnionDistinct());
  }
  return out;
}

BoundSql SelectCandidates(const WarehouseSql& sql, const std::string& pass, const std::string& keys,
                          const Schema& schema) {
  std::string columns;
  for (const Column& c : schema) columns += "p." + sql.QuoteIdentifier(c.name) + ", ";
  return {fmt::format("SELECT {0}p.{1} FROM {2} AS p\n"
                      "WHERE p.{3} IS NULL OR p.{3} IN (SELECT k.record_key FROM {4} AS k)",
                      columns, kRowHash, pass, kPassKey, keys),
          {}};
}

BoundSql SelectEntries(const std::string& checkpoints, const std::string& keys,
                       const std::string& mapping) {
  return {fmt::format("SELECT c.record_key, c.fingerprint, c.record_identity FROM {} AS c\n"
                      "WHERE c.mapping = ? AND c.record_key IN (SELECT k.record_key FROM {} AS k)\n"
                      "ORDER BY c.record_key",
                      checkpoints, keys),
          {mapping}};
}

BoundSql Merge(const WarehouseSql& sql, const std::string& checkpoints, const std::string& mapping,
               std::string json) {
  std::string items;
  const char* names[] = {"record_key", "op",          "row_hash",
                         "version",    "fingerprint", "record_identity"};
  for (int i = 0; i < 6; ++i) {
    items += fmt::format("{}{} AS {}", i ? ", " : "", sql.JsonItemText("j", i), names[i]);
  }
  return {fmt::format(
              "MERGE INTO {0} AS t\n"
              "USING (SELECT {1} FROM {2}) AS w\n"
              "ON t.mapping = ? AND t.record_key = w.record_key\n"
              "WHEN MATCHED AND w.op = 'D' THEN DELETE\n"
              "WHEN MATCHED THEN UPDATE SET row_hash = w.row_hash, mapping_version = w.version, "
              "fingerprint = w.fingerprint, record_identity = w.record_identity\n"
              "WHEN NOT MATCHED AND w.op = 'U' THEN INSERT (mapping, record_key, row_hash, "
              "mapping_version, fingerprint, record_identity) VALUES (?, w.record_key, "
              "w.row_hash, w.version, w.fingerprint, w.record_identity)",
              checkpoints, items, sql.JsonArrayTable("j")),
          {std::move(json), mapping, mapping}};
}

}  // namespace pass_sql

// --- WarehouseSql's default statements. ---

std::string WarehouseSql::CreateSchemaSql(const std::string& schema) const {
  return fmt::format("CREATE SCHEMA IF NOT EXISTS {}", schema);
}

std::string WarehouseSql::CreateCheckpointsSql(const std::string& table) const {
  const std::string text = TextType();
  const std::string primary_key = PrimaryKey("mapping, record_key");
  return fmt::format(
      "CREATE TABLE IF NOT EXISTS {} (\n"
      "  mapping {} NOT NULL,\n"
      "  record_key {} NOT NULL,\n"
      "  row_hash {},\n"
      "  mapping_version {},\n"
      "  fingerprint {} NOT NULL,\n"
      "  record_identity {} NOT NULL{})",
      table, text, KeyType(), text, text, text, text,
      primary_key.empty() ? "" : ",\n  " + primary_key);
}

std::string WarehouseSql::CreateRegistrySql(const std::string& table) const {
  return fmt::format(
      "CREATE TABLE IF NOT EXISTS {} (table_name {} NOT NULL, created_at {} "
      "NOT NULL)",
      table, TextType(), IntegerType());
}

std::string WarehouseSql::RegisterPassSql(const std::string& registry) const {
  return fmt::format("INSERT INTO {} (table_name, created_at) VALUES (?, {})", registry,
                     IntegerParameter());
}

std::string WarehouseSql::StalePassesSql(const std::string& registry) const {
  return fmt::format("SELECT table_name FROM {} WHERE created_at < {}", registry,
                     IntegerParameter());
}

BoundSql WarehouseSql::CreatePassTableSql(const std::string& table, const std::string& model_sql,
                                          const Schema& schema, int key_index) const {
  return pass_sql::CreatePassTable(*this, table, model_sql, schema, key_index);
}

BoundSql WarehouseSql::CreateKeysTableSql(const std::string& checkpoints, const std::string& pass,
                                          const std::string& keys,
                                          const WarehouseCandidateFilter& filter) const {
  return pass_sql::CreateKeysTable(*this, checkpoints, pass, keys, filter);
}

BoundSql WarehouseSql::ApplySql(const std::string& checkpoints, const std::string& mapping,
                                std::string json) const {
  return pass_sql::Merge(*this, checkpoints, mapping, std::move(json));
}

namespace {

absl::StatusOr<std::string> FromHex(std::string_view hex) {
  std::optional<std::string> bytes = HexDecode(hex);
  if (!bytes) return absl::DataLossError("invalid hex in the checkpoint table");
  return *std::move(bytes);
}

// Reads a statement's whole (small) result.
absl::StatusOr<std::vector<Row>> ReadAll(RowReader& reader) {
  std::vector<Row> rows;
  Row row;
  while (true) {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, reader.Next(row));
    if (!more) return rows;
    rows.push_back(row);
  }
}

// The status of a pass step stopped by its cancel flag before it sent its
// next statement.
absl::Status PassCancelledError() {
  return absl::CancelledError(
      "the run was cancelled during a change detection pass; its next statement was not sent");
}

// Runs a statement unless the step's cancel flag is set.
absl::StatusOr<std::unique_ptr<RowReader>> Start(WarehouseSql& sql, const std::string& statement,
                                                 const std::vector<std::string>& bindings) {
  if (QueryCancelRequested(sql.cancel())) return PassCancelledError();
  return sql.Run(statement, bindings);
}

// Runs a statement and reads its answer to the end (so that nothing is left
// to cancel).
absl::Status Exec(WarehouseSql& sql, const std::string& statement,
                  const std::vector<std::string>& bindings = {}) {
  BACKFLOW_ASSIGN_OR_RETURN(auto reader, Start(sql, statement, bindings));
  return ReadAll(*reader).status();
}

// Gives the statements run in a scope `cancel` as their cancel flag
// (WarehouseSql::cancel()), restoring the previous flag at its end.
class CancelScope {
 public:
  CancelScope(WarehouseSql& sql, const std::atomic<bool>* cancel)
      : sql_(sql), previous_(sql.cancel()) {
    sql_.set_cancel(cancel);
  }
  ~CancelScope() { sql_.set_cancel(previous_); }
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  WarehouseSql& sql_;
  const std::atomic<bool>* const previous_;
};

}  // namespace

std::optional<std::string> JsonArrayChunks::Add(std::string_view item) {
  std::optional<std::string> full;
  if (json_.size() > 1 && json_.size() + item.size() + 2 > max_bytes_) full = Finish();
  if (json_.size() > 1) json_.push_back(',');
  json_.append(item);
  return full;
}

std::optional<std::string> JsonArrayChunks::Finish() {
  if (json_.size() <= 1) return std::nullopt;
  json_.push_back(']');
  return std::exchange(json_, "[");
}

std::string WarehouseSql::DiffersFrom(const std::string& a, const std::string& b) const {
  return fmt::format("{} IS DISTINCT FROM {}", a, b);
}

std::vector<BoundSql> WarehouseSql::ApplyBatch(const std::string& checkpoints,
                                               const std::string& mapping,
                                               const std::string& json) const {
  return {ApplySql(checkpoints, mapping, json)};
}

absl::Status WarehouseSql::RunAll(const std::vector<BoundSql>& statements) {
  for (const BoundSql& s : statements) BACKFLOW_RETURN_IF_ERROR(Exec(*this, s.sql, s.bindings));
  return absl::OkStatus();
}

namespace {

class EntryScanner : public WarehouseEntryScanner {
 public:
  explicit EntryScanner(std::unique_ptr<RowReader> reader) : reader_(std::move(reader)) {}

  absl::StatusOr<bool> Next(WarehouseCheckpointEntry& entry) override {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, reader_->Next(row_));
    if (!more) return false;
    if (row_.size() != 3 || row_[0].is_null() || row_[1].is_null() || row_[2].is_null()) {
      return absl::DataLossError("the warehouse checkpoint table returned a malformed entry");
    }
    entry.key = row_[0].ToString();
    if (started_ && !(last_ < entry.key)) {
      return absl::FailedPreconditionError(fmt::format(
          "the warehouse returned the checkpoint keys \"{}\" and \"{}\" out of byte order; the "
          "record_key column of the checkpoint table must compare by UTF-8 bytes (drop the "
          "table so that Backflow creates it again, or remove its collation)",
          last_, entry.key));
    }
    started_ = true;
    last_ = entry.key;
    BACKFLOW_ASSIGN_OR_RETURN(std::string fp, FromHex(row_[1].ToString()));
    if (fp.size() != 16) {
      return absl::DataLossError(fmt::format(
          "the warehouse checkpoint entry of key \"{}\" has a fingerprint of {} bytes, not 16",
          entry.key, fp.size()));
    }
    entry.fingerprint = Fingerprint::FromBytes(fp.data(), fp.size());
    BACKFLOW_ASSIGN_OR_RETURN(entry.identity, FromHex(row_[2].ToString()));
    return true;
  }

 private:
  std::unique_ptr<RowReader> reader_;
  Row row_;
  bool started_ = false;
  std::string last_;
};

class PassChangeDetection;

class PassSnapshot : public WarehouseSnapshot {
 public:
  PassSnapshot(PassChangeDetection* owner, std::string pass_name, Schema schema, int key_index,
               const std::atomic<bool>* cancel);
  ~PassSnapshot() override { (void)Close(); }

  const Schema& schema() const override { return schema_; }
  absl::StatusOr<std::unique_ptr<RowReader>> ReadCandidates(
      const WarehouseCandidateFilter& filter) override;
  absl::StatusOr<std::unique_ptr<WarehouseEntryScanner>> ScanEntries(
      const std::string& mapping) override;
  absl::StatusOr<int64_t> CountEntries(const std::string& mapping) override;
  absl::Status Close() override;

 private:
  // ChunkInFlightKeys(): the pass's keys among `in_flight` into `keys`.
  absl::Status InsertInFlightKeys(WarehouseSql& sql, const std::string& pass,
                                  const std::string& keys,
                                  const std::vector<std::string>& in_flight);

  PassChangeDetection* owner_;
  std::string pass_name_;
  Schema schema_;
  int key_index_;
  const std::atomic<bool>* cancel_;  // WarehousePassOptions::cancel
  bool keys_made_ = false;
  bool closed_ = false;
};

class PassChangeDetection : public WarehouseChangeDetection {
 public:
  PassChangeDetection(std::unique_ptr<WarehouseSql> sql, PassChangeDetectionOptions options)
      : sql_(std::move(sql)),
        options_(std::move(options)),
        schema_(options_.state_schema),
        checkpoints_(schema_ + ".CHECKPOINTS"),
        registry_(schema_ + ".PASS_TABLES") {
    if (options_.clock == nullptr) options_.clock = &SystemClock();
  }

  absl::StatusOr<std::unique_ptr<WarehouseSnapshot>> Begin(
      const std::string& sql, const std::string& key,
      const WarehousePassOptions& pass_options) override {
    CancelScope scope(*sql_, pass_options.cancel);
    if (QueryCancelRequested(pass_options.cancel)) return PassCancelledError();
    BACKFLOW_RETURN_IF_ERROR(EnsureTables());
    DropStalePasses();
    const std::string model = TrimModelSql(sql);
    BACKFLOW_ASSIGN_OR_RETURN(
        auto probe, Start(*sql_, fmt::format("SELECT * FROM (\n{}\n) AS m LIMIT 0", model), {}));
    Schema schema = probe->schema();
    // Read to its end (no rows), so that the reader ends as a finished query
    // rather than one abandoned (which a source stops with a KILL or cancel
    // request of its own).
    BACKFLOW_RETURN_IF_ERROR(ReadAll(*probe).status());
    probe.reset();
    const int key_index = FindColumn(schema, key);
    if (key_index < 0) {
      std::vector<std::string> names;
      for (const Column& c : schema) names.push_back(c.name);
      return absl::FailedPreconditionError(
          fmt::format("the model does not return its unique identifier column \"{}\" (columns: {})",
                      key, fmt::join(names, ", ")));
    }
    for (const Column& c : schema) {
      if (c.name == kPassKey || c.name == kRowHash) {
        return absl::FailedPreconditionError(fmt::format(
            "change_detection: warehouse adds a column {} to the model's rows; rename the "
            "model's column of that name",
            c.name));
      }
    }
    const int64_t now = static_cast<int64_t>(ToUnixSeconds(options_.clock->Now()));
    const std::string name = fmt::format("PASS_{}_{}", now, HexEncode(RandomBytes(6)));
    BACKFLOW_RETURN_IF_ERROR(
        Use(Exec(*sql_, sql_->RegisterPassSql(registry_), {name, std::to_string(now)})));
    auto snapshot =
        std::make_unique<PassSnapshot>(this, name, schema, key_index, pass_options.cancel);
    BoundSql create = sql_->CreatePassTableSql(Table(name), model, schema, key_index);
    absl::Status made = Exec(*sql_, create.sql, create.bindings);
    if (!made.ok()) {
      (void)snapshot->Close();
      if (sql_->IsPrivilegeError(made)) return Denied(WarehouseSql::Step::kCreateTable, made);
      return made;
    }
    return std::unique_ptr<WarehouseSnapshot>(std::move(snapshot));
  }

  absl::Status Apply(const std::string& mapping,
                     const std::vector<WarehouseCheckpointWrite>& writes) override {
    if (writes.empty()) return absl::OkStatus();
    CancelScope scope(*sql_, nullptr);  // commits whole or fails whole
    BACKFLOW_RETURN_IF_ERROR(EnsureTables());
    std::map<std::string_view, const WarehouseCheckpointWrite*> last;
    for (const WarehouseCheckpointWrite& w : writes) last[w.key] = &w;
    size_t removes = 0;
    for (const auto& [key, w] : last) {
      if (w->kind == WarehouseCheckpointWrite::Kind::kRemove) ++removes;
    }
    JsonArrayChunks chunks(sql_->MaxBindingBytes());
    auto apply = [&](const std::string& json) {
      return Use(sql_->RunAll(sql_->ApplyBatch(checkpoints_, mapping, json)));
    };
    for (const auto& [key, w] : last) {
      nlohmann::json item;
      if (w->kind == WarehouseCheckpointWrite::Kind::kRemove) {
        item = {std::string(key), "D", "", "", "", ""};
      } else {
        item = {std::string(key),      "U", w->row_hash, w->version.ToHex(), w->fingerprint.ToHex(),
                HexEncode(w->identity)};
      }
      std::optional<std::string> full =
          chunks.Add(item.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      if (full) BACKFLOW_RETURN_IF_ERROR(apply(*full));
    }
    if (std::optional<std::string> last = chunks.Finish()) {
      BACKFLOW_RETURN_IF_ERROR(apply(*last));
    }
    return Use(sql_->AfterApply(checkpoints_, mapping, removes));
  }

  // --- For PassSnapshot. ---
  WarehouseSql& sql() { return *sql_; }
  const std::string& checkpoints() const { return checkpoints_; }
  std::string Table(const std::string& name) const { return schema_ + "." + name; }

  // A failure to read or write the managed tables, with what to grant.
  absl::Status Use(absl::Status status) {
    if (status.ok() || !sql_->IsPrivilegeError(status)) return status;
    return Denied(WarehouseSql::Step::kUseTables, status);
  }

  absl::Status Denied(WarehouseSql::Step step, const absl::Status& status) {
    return absl::PermissionDeniedError(
        fmt::format("change_detection: warehouse keeps its checkpoint in schema {}: {} ({})",
                    schema_, sql_->PrivilegeAdvice(step, schema_), status.message()));
  }

  // Drops a pass's tables and forgets it; the first error. `bounded`: stop
  // at the first failure (after a cancel), leaving the registry row for a
  // later Begin().
  absl::Status DropPass(const std::string& name, bool bounded = false) {
    absl::Status first;
    for (const std::string& table : {Table(name), Table(name + "_K")}) {
      absl::Status s = Exec(*sql_, fmt::format("DROP TABLE IF EXISTS {}", table), {});
      if (first.ok()) first = s;
      if (bounded && !first.ok()) return Use(first);
    }
    absl::Status s =
        Exec(*sql_, fmt::format("DELETE FROM {} WHERE table_name = ?", registry_), {name});
    if (first.ok()) first = s;
    return Use(first);
  }

 private:
  absl::Status EnsureTables() {
    if (ensured_) return absl::OkStatus();
    // The schema may exist already (made by an administrator) while the role
    // may not create schemas: then creating the tables tells.
    absl::Status schema = Exec(*sql_, sql_->CreateSchemaSql(schema_), {});
    if (!schema.ok() && !sql_->IsPrivilegeError(schema)) return schema;
    for (const std::string& ddl :
         {sql_->CreateCheckpointsSql(checkpoints_), sql_->CreateRegistrySql(registry_)}) {
      absl::Status made = Exec(*sql_, ddl, {});
      if (made.ok()) continue;
      if (!schema.ok()) return Denied(WarehouseSql::Step::kCreateSchema, schema);
      if (sql_->IsPrivilegeError(made)) return Denied(WarehouseSql::Step::kCreateTable, made);
      return made;
    }
    ensured_ = true;
    return absl::OkStatus();
  }

  // Best effort: the tables of passes that never ended.
  void DropStalePasses() {
    const int64_t cutoff =
        static_cast<int64_t>(ToUnixSeconds(options_.clock->Now())) - options_.stale_after.count();
    auto reader = Start(*sql_, sql_->StalePassesSql(registry_), {std::to_string(cutoff)});
    if (!reader.ok()) return;
    auto rows = ReadAll(**reader);
    if (!rows.ok()) return;
    for (const Row& row : *rows) {
      if (row.empty() || row[0].is_null()) continue;
      const std::string name = row[0].ToString();
      if (!IsPlainSqlIdentifier(name)) continue;
      (void)DropPass(name);
    }
  }

  std::unique_ptr<WarehouseSql> sql_;
  PassChangeDetectionOptions options_;
  std::string schema_;
  std::string checkpoints_;
  std::string registry_;
  bool ensured_ = false;
};

PassSnapshot::PassSnapshot(PassChangeDetection* owner, std::string pass_name, Schema schema,
                           int key_index, const std::atomic<bool>* cancel)
    : owner_(owner),
      pass_name_(std::move(pass_name)),
      schema_(std::move(schema)),
      key_index_(key_index),
      cancel_(cancel) {}

absl::StatusOr<std::unique_ptr<RowReader>> PassSnapshot::ReadCandidates(
    const WarehouseCandidateFilter& filter) {
  WarehouseSql& sql = owner_->sql();
  CancelScope scope(sql, cancel_);
  const Column& key = schema_[static_cast<size_t>(key_index_)];
  if (!sql.KeyTypeSupported(key)) {
    return absl::FailedPreconditionError(fmt::format(
        "change_detection: warehouse needs the unique identifier column \"{}\" to be an "
        "integer or text column (it is {}); cast it in the model's SQL, e.g. {}",
        key.name, key.source_type, sql.KeyCastAdvice(key.name)));
  }
  const std::string pass = owner_->Table(pass_name_);
  const std::string keys = owner_->Table(pass_name_ + "_K");
  keys_made_ = true;
  if (sql.BindingsInCreateTableAs() && !sql.ChunkInFlightKeys()) {
    BoundSql create = sql.CreateKeysTableSql(owner_->checkpoints(), pass, keys, filter);
    BACKFLOW_RETURN_IF_ERROR(owner_->Use(Exec(sql, create.sql, create.bindings)));
  } else {
    BACKFLOW_RETURN_IF_ERROR(owner_->Use(
        Exec(sql, fmt::format("CREATE TABLE {} (record_key {})", keys, sql.KeyType()))));
    WarehouseCandidateFilter rest;
    const WarehouseCandidateFilter* main = &filter;
    if (sql.ChunkInFlightKeys() && !filter.all_rows) {
      BACKFLOW_RETURN_IF_ERROR(InsertInFlightKeys(sql, pass, keys, filter.in_flight_keys));
      rest.mappings = filter.mappings;
      main = &rest;
    }
    BoundSql select = pass_sql::SelectKeys(sql, owner_->checkpoints(), pass, *main);
    BACKFLOW_RETURN_IF_ERROR(owner_->Use(Exec(
        sql, fmt::format("INSERT INTO {} (record_key)\n{}", keys, select.sql), select.bindings)));
  }
  BoundSql select = pass_sql::SelectCandidates(sql, pass, keys, schema_);
  BACKFLOW_ASSIGN_OR_RETURN(auto reader, Start(sql, select.sql, select.bindings));
  if (reader->schema().size() != schema_.size() + 1) {
    return absl::DataLossError(
        fmt::format("the warehouse returned {} columns for the candidate rows; expected {}",
                    reader->schema().size(), schema_.size() + 1));
  }
  return reader;
}

absl::Status PassSnapshot::InsertInFlightKeys(WarehouseSql& sql, const std::string& pass,
                                              const std::string& keys,
                                              const std::vector<std::string>& in_flight) {
  const std::string insert = fmt::format(
      "INSERT INTO {0} (record_key)\nSELECT DISTINCT p.{1} FROM {2} AS p\n"
      "WHERE p.{1} IN (SELECT {3} FROM {4})",
      keys, kPassKey, pass, sql.JsonValueText("j"), sql.JsonArrayTable("j"));
  const size_t limit = sql.MaxBindingBytes();
  JsonArrayChunks chunks(limit);
  auto insert_chunk = [&](const std::string& json) {
    return owner_->Use(Exec(sql, insert, {json}));
  };
  for (const std::string& key : in_flight) {
    std::string text =
        nlohmann::json(key).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() + 2 > limit) {
      return absl::FailedPreconditionError(fmt::format(
          "the in-flight key \"{}...\" is {} bytes as JSON, more than the {} bytes the "
          "warehouse takes in one binding; shorten the model's unique identifier (e.g. hash "
          "it), or use change_detection: local for this model",
          key.substr(0, 40), text.size(), limit - 2));
    }
    if (std::optional<std::string> full = chunks.Add(text)) {
      BACKFLOW_RETURN_IF_ERROR(insert_chunk(*full));
    }
  }
  std::optional<std::string> last = chunks.Finish();
  return last ? insert_chunk(*last) : absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<WarehouseEntryScanner>> PassSnapshot::ScanEntries(
    const std::string& mapping) {
  if (!keys_made_) {
    return absl::FailedPreconditionError("ScanEntries() before ReadCandidates()");
  }
  CancelScope scope(owner_->sql(), cancel_);
  BoundSql select = pass_sql::SelectEntries(owner_->sql().CheckpointsToRead(owner_->checkpoints()),
                                            owner_->Table(pass_name_ + "_K"), mapping);
  auto reader = Start(owner_->sql(), select.sql, select.bindings);
  if (!reader.ok()) return owner_->Use(reader.status());
  return std::unique_ptr<WarehouseEntryScanner>(new EntryScanner(*std::move(reader)));
}

absl::StatusOr<int64_t> PassSnapshot::CountEntries(const std::string& mapping) {
  CancelScope scope(owner_->sql(), cancel_);
  auto reader = Start(owner_->sql(),
                      fmt::format("SELECT COUNT(*) FROM {} WHERE mapping = ?",
                                  owner_->sql().CheckpointsToRead(owner_->checkpoints())),
                      {mapping});
  if (!reader.ok()) return owner_->Use(reader.status());
  BACKFLOW_ASSIGN_OR_RETURN(std::vector<Row> rows, ReadAll(**reader));
  if (rows.size() != 1 || rows[0].size() != 1) {
    return absl::DataLossError("counting the warehouse checkpoint returned no count");
  }
  std::optional<int64_t> n = ParseInt64(rows[0][0].ToString());
  if (!n) return absl::DataLossError("counting the warehouse checkpoint returned no number");
  return *n;
}

absl::Status PassSnapshot::Close() {
  if (closed_) return absl::OkStatus();
  closed_ = true;
  // Not stopped by the pass's flag; bounded once it is set.
  CancelScope scope(owner_->sql(), nullptr);
  return owner_->DropPass(pass_name_, /*bounded=*/QueryCancelRequested(cancel_));
}

}  // namespace

std::unique_ptr<WarehouseChangeDetection> NewPassChangeDetection(
    std::unique_ptr<WarehouseSql> sql, PassChangeDetectionOptions options) {
  return std::make_unique<PassChangeDetection>(std::move(sql), std::move(options));
}

}  // namespace backflow
