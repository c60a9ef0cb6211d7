// ClickHouse's SQL for warehouse change detection through pass tables
// (../warehouse_sql/pass_change_detection.h). Every statement is one HTTP
// request; ClickHouse has neither MERGE nor multi-statement transactions, so
// what differs from the standard statements is overridden here:
//   parameters: the generic `?` placeholders become typed query parameters
//               {p0:String}, {p1:String}, ... sent as param_p0=... URL
//               parameters (ClickHousePlaceholders); numbers are converted
//               in SQL (toInt64(?)).
//   schema:     CREATE DATABASE IF NOT EXISTS <state_schema>.
//   CHECKPOINTS: ENGINE = ReplacingMergeTree(version) ORDER BY (mapping,
//               record_key), plus `version UInt64` and `deleted UInt8`.
//               Apply INSERTs one new row per written key (a remove is a
//               tombstone, deleted = 1) with version = the mapping's largest
//               version + 1, computed by the same INSERT. Reads never rely on
//               background merges: they take each key's row with the largest
//               version (argMax ... GROUP BY mapping, record_key) and skip
//               tombstones (CheckpointsToRead()). Merges only reclaim space
//               (they keep the same row: ReplacingMergeTree keeps the largest
//               version, the last inserted on ties; tombstones stay).
//   purge:      tombstones stay until Backflow removes them (AfterApply):
//               after an Apply() with removes, once the mapping's tombstone
//               rows reach ClickHouseCheckpointPurge's thresholds (by default
//               1000 and 10% of its rows; the count is one aggregate over
//               the mapping, sent only when this process's removes since the
//               last count could have crossed them), Backflow lists the keys
//               with a tombstone at or below the mapping's newest version M
//               (argMax(deleted, version), at most max_keys) and, with the
//               keys bound as JSON (has(JSONExtract(?, 'Array(String)'),
//               record_key): no subquery, so the mutation is deterministic):
//                 1. DELETE FROM ... WHERE mapping = ? AND version <= M AND
//                    deleted = 0 AND <key is removed>: the older live rows
//                    of removed keys. Their tombstone still hides them, so
//                    reads are right whichever parts the mutation reached.
//                 2. SELECT count(*) of those rows again: 0, or stop here
//                    (a lightweight DELETE runs asynchronously when the
//                    profile sets lightweight_deletes_sync = 0; the next
//                    purge repeats both steps).
//                 3. DELETE FROM ... WHERE mapping = ? AND version < M AND
//                    deleted = 1 AND <key listed>: the tombstones, no longer
//                    hiding anything (and the old tombstones of re-added
//                    keys, below their live row). Rows at M stay, so the
//                    mapping's largest version never goes back (a key
//                    written later gets a higher version than any of its
//                    deleted rows, whatever merges do with them).
//               Deleting only the tombstones first would show the removed
//               key's older version again; rows written after the listing
//               (above M) are never touched. Lightweight DELETE is generally
//               available since ClickHouse 23.3 (22.8-23.2 need the setting
//               allow_experimental_lightweight_delete) and needs the ALTER
//               DELETE grant, already needed for the PASS_TABLES rows. A
//               server that refuses the DELETE as unknown syntax (code 62),
//               not implemented (48) or disabled (344) keeps its tombstones:
//               purging stops for the source's lifetime, the writes go on.
//               Any other failure of a purge fails the Apply() (its writes
//               stand; the next one retries).
//               Verified in ClickHouse's docs, not against a server: that
//               lightweight DELETE accepts query parameters in a compound
//               predicate and has()/JSONExtract() as a mutation's condition.
//               Rejected: ReplacingMergeTree(version, is_deleted) with
//               OPTIMIZE ... FINAL CLEANUP (needs the experimental
//               allow_experimental_replacing_merge_with_cleanup table setting
//               and another engine, so existing tables would need copying, and
//               rewrites every part of the table), and ALTER TABLE ... DELETE
//               (rewrites whole parts; asynchronous unless mutations_sync).
//               The table and its columns are unchanged, so a table made
//               before the purge existed is purged the same way.
//   Apply atomicity: one INSERT ... SELECT over the JSON array parameter.
//               ClickHouse inserts a block into a MergeTree table atomically;
//               a batch (at most MaxBindingBytes() of JSON, a few thousand
//               rows, one partition) forms one block, so it lands whole or not
//               at all. Were it ever split into several blocks, each key is
//               still one row in one block: after a failure every key is
//               either as before or as written, which is safe because the
//               engine keeps every key of a failed write in flight and the
//               next run resends and rewrites them. A retried INSERT only
//               writes the same rows again with a higher version.
//   pass tables: CREATE TABLE t ENGINE = MergeTree ORDER BY tuple() AS
//               SELECT ...; the keys table is one CTAS with UNION DISTINCT and
//               NOT IN / tuple NOT IN instead of LEFT JOINs (whose unmatched
//               side is default values, not NULL, unless join_use_nulls) and
//               correlated NOT EXISTS (not supported).
//   row text:   toString(x); the length prefix is length(), in bytes; the
//               hash is lower(hex(MD5(...))) (MD5 gives 16 bytes, hex writes
//               them uppercase).
//   key types:  (U)Int8..64 and String (also Nullable / LowCardinality):
//               toString() writes them as Backflow's decoder does (decimal
//               digits; the bytes). Strings compare and sort by their bytes,
//               whatever the locale (ClickHouse's comparison rules).
//   JSON array: (SELECT arrayJoin(JSONExtractArrayRaw(?)) AS VALUE), items
//               by JSONExtractString(VALUE, i) (1-based).
//   privilege refusals: 497 ACCESS_DENIED ("Not enough privileges. To
//               execute this query, it's necessary to have the grant ...") and
//               291 DATABASE_ACCESS_DENIED, classified kPermissionDenied by
//               the source.
// Not verified against a real server (no server available; from the docs):
// that CREATE TABLE ... AS SELECT accepts a UNION DISTINCT, and that a
// model column of type Nullable(Nothing) (a bare NULL) cannot be copied
// into the pass table (cast it in the model's SQL).
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "backflow/common/fmt_absl.h"
#include "backflow/common/numbers.h"
#include "backflow/common/sql_identifier.h"
#include "backflow/common/status_macros.h"
#include "backflow/sources/clickhouse/clickhouse_source.h"
#include "fmt/format.h"

namespace backflow {

constexpr char kPassKey[] = "BACKFLOW_PASS_KEY";
constexpr char kRowHash[] = "BACKFLOW_ROW_HASH";

absl::StatusOr<std::string> ClickHouseNamedParameters(std::string_view sql, size_t count) {
  std::string out;
  out.reserve(sql.size() + count * 12);
  size_t n = 0;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    const char next = i + 1 < sql.size() ? sql[i + 1] : '\0';
    size_t end = std::string_view::npos;  // last byte of a quoted run or comment
    if (c == '\'' || c == '"' || c == '`') {
      size_t j = i + 1;
      while (j < sql.size()) {
        if (sql[j] == '\\') {
          j += 2;
        } else if (sql[j] == c && j + 1 < sql.size() && sql[j + 1] == c) {
          j += 2;
        } else if (sql[j] == c) {
          break;
        } else {
          ++j;
        }
      }
      end = std::min(j, sql.size() - 1);
    } else if (c == '-' && next == '-') {
      end = sql.find('\n', i);
      if (end == std::string_view::npos) end = sql.size() - 1;
    } else if (c == '/' && next == '*') {
      end = sql.find("*/", i + 2);
      end = end == std::string_view::npos ? sql.size() - 1 : end + 1;
    }
    if (end != std::string_view::npos) {
      out.append(sql.substr(i, end - i + 1));
      i = end;
    } else if (c == '?') {
      out += fmt::format("{{p{}:String}}", n++);
    } else {
      out.push_back(c);
    }
  }
  if (n != count) {
    return absl::InternalError(
        fmt::format("a statement has {} placeholders for {} values", n, count));
  }
  return out;
}

namespace {

// The type inside Nullable(...) / LowCardinality(...).
std::string BaseType(std::string type) {
  for (const char* wrapper : {"LowCardinality(", "Nullable("}) {
    const std::string w = wrapper;
    if (type.starts_with(w) && type.ends_with(")")) {
      type = type.substr(w.size(), type.size() - w.size() - 1);
    }
  }
  return type;
}

// A statement's whole (small) result.
absl::StatusOr<std::vector<Row>> ReadRows(absl::StatusOr<std::unique_ptr<RowReader>> reader) {
  if (!reader.ok()) return reader.status();
  std::vector<Row> rows;
  Row row;
  while (true) {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, (*reader)->Next(row));
    if (!more) return rows;
    rows.push_back(row);
  }
}

// A count or version from a result cell (NULL, as SQL gives for an empty
// set, is 0).
absl::StatusOr<int64_t> Number(const Value& v) {
  if (v.is_null()) return 0;
  std::optional<int64_t> n = ParseInt64(v.ToString());
  if (!n) {
    return absl::DataLossError(
        fmt::format("the checkpoint table gave \"{}\" where a number belongs", v.ToString()));
  }
  return *n;
}

class ClickHouseWarehouseSql : public WarehouseSql {
 public:
  ClickHouseWarehouseSql(ClickHouseSqlRunner run, ClickHouseCheckpointPurge purge)
      : run_(std::move(run)), purge_(purge) {}

  absl::StatusOr<std::unique_ptr<RowReader>> Run(
      const std::string& sql, const std::vector<std::string>& bindings) override {
    // Statements with bindings are Backflow's own; the model's SQL (where `?`
    // is the ternary operator) only ever travels without bindings.
    if (bindings.empty()) return run_(sql, {}, cancel());
    auto named = ClickHouseNamedParameters(sql, bindings.size());
    if (!named.ok()) return named.status();
    std::vector<std::pair<std::string, std::string>> params;
    for (size_t i = 0; i < bindings.size(); ++i) {
      params.emplace_back(fmt::format("p{}", i), bindings[i]);
    }
    return run_(*named, params, cancel());
  }

  std::string QuoteIdentifier(std::string_view name) const override {
    return QuoteSqlIdentifier(name, '`', QuoteEscape::kBackslash);
  }

  std::string ToText(const Column&, const std::string& expr) const override {
    return fmt::format("toString({})", expr);
  }

  bool KeyTypeSupported(const Column& column) const override {
    static const std::set<std::string> kTypes = {"Int8",   "Int16",  "Int32",  "Int64", "UInt8",
                                                 "UInt16", "UInt32", "UInt64", "String"};
    return kTypes.count(BaseType(column.source_type)) != 0;
  }

  std::string KeyCastAdvice(const std::string& key) const override {
    return fmt::format("toString({0}) AS {0}", QuoteIdentifier(key));
  }

  std::string Md5Hex(const std::string& expr) const override {
    return fmt::format("lower(hex(MD5({})))", expr);
  }
  std::string TextType() const override { return "String"; }
  std::string KeyType() const override { return "String"; }
  std::string IntegerType() const override { return "Int64"; }

  std::string JsonArrayTable(const std::string& alias) const override {
    return fmt::format("(SELECT arrayJoin(JSONExtractArrayRaw(?)) AS VALUE) AS {}", alias);
  }
  std::string JsonValueText(const std::string& alias) const override {
    return fmt::format("JSONExtractString({}.VALUE)", alias);
  }
  std::string JsonItemText(const std::string& alias, int index) const override {
    return fmt::format("JSONExtractString({}.VALUE, {})", alias, index + 1);
  }

  bool IsPrivilegeError(const absl::Status& status) const override {
    if (status.code() != absl::StatusCode::kPermissionDenied) return false;
    const std::string message(status.message());
    return message.find("ACCESS_DENIED") != std::string::npos ||
           message.find("Not enough privileges") != std::string::npos ||
           message.find("Code: 497") != std::string::npos ||
           message.find("Code: 291") != std::string::npos;
  }

  std::string PrivilegeAdvice(Step step, const std::string& schema) override {
    std::string user = "<user>";
    auto who = run_("SELECT currentUser()", {}, cancel());
    if (who.ok()) {
      Row row;
      auto more = (*who)->Next(row);
      if (more.ok() && *more && row.size() == 1 && !row[0].is_null()) {
        user = QuoteIdentifier(row[0].ToString());
      }
    }
    const std::string grant =
        fmt::format("GRANT CREATE TABLE, DROP TABLE, SELECT, INSERT, ALTER DELETE ON {}.* TO {};",
                    schema, user);
    switch (step) {
      case Step::kCreateSchema:
        return fmt::format(
            "user {0} may not create database {1}. Have an administrator run `GRANT CREATE "
            "DATABASE ON {1}.* TO {0};` (or create the database and run `{2}`), or set "
            "state_schema on the source to a database where the user may create tables",
            user, schema, grant);
      case Step::kCreateTable:
        return fmt::format(
            "user {0} may not create tables in database {1}. Have an administrator run `{2}`, "
            "or set state_schema on the source to a database where the user may create tables",
            user, schema, grant);
      case Step::kUseTables:
        break;
    }
    return fmt::format(
        "user {0} may not read and write the tables of database {1}. Have an administrator run "
        "`{2}`, or set state_schema on the source to a database of its own",
        user, schema, grant);
  }

  // Parameters travel in the URL (at most 1 MiB by default, http_max_uri_size),
  // percent-encoded: up to three bytes per JSON byte.
  size_t MaxBindingBytes() const override { return size_t{192} << 10; }

  std::string CreateSchemaSql(const std::string& schema) const override {
    return fmt::format("CREATE DATABASE IF NOT EXISTS {}", schema);
  }

  std::string CreateCheckpointsSql(const std::string& table) const override {
    return fmt::format(
        "CREATE TABLE IF NOT EXISTS {} (\n"
        "  mapping String,\n"
        "  record_key String,\n"
        "  row_hash String,\n"
        "  mapping_version String,\n"
        "  fingerprint String,\n"
        "  record_identity String,\n"
        "  version UInt64,\n"
        "  deleted UInt8\n"
        ") ENGINE = ReplacingMergeTree(version) ORDER BY (mapping, record_key)",
        table);
  }

  std::string CreateRegistrySql(const std::string& table) const override {
    return fmt::format(
        "CREATE TABLE IF NOT EXISTS {} (table_name String, created_at Int64) ENGINE = MergeTree "
        "ORDER BY tuple()",
        table);
  }

  std::string RegisterPassSql(const std::string& registry) const override {
    return fmt::format("INSERT INTO {} (table_name, created_at) SELECT ?, toInt64(?)", registry);
  }

  std::string StalePassesSql(const std::string& registry) const override {
    return fmt::format("SELECT table_name FROM {} WHERE created_at < toInt64(?)", registry);
  }

  BoundSql CreatePassTableSql(const std::string& table, const std::string& model_sql,
                              const Schema& schema, int key_index) const override {
    std::string parts = "''";
    for (const Column& c : schema) {
      const std::string ref = "m." + QuoteIdentifier(c.name);
      parts += fmt::format(
          ",\n    CASE WHEN {0} IS NULL THEN 'n' ELSE concat('v', toString(length({1})), ':', {1}) "
          "END",
          ref, ToText(c, ref));
    }
    const Column& key = schema[static_cast<size_t>(key_index)];
    return {
        fmt::format("CREATE TABLE {} ENGINE = MergeTree ORDER BY tuple() AS\n"
                    "SELECT m.*, {} AS {},\n  {} AS {}\nFROM (\n{}\n) AS m",
                    table, ToText(key, "m." + QuoteIdentifier(key.name)), kPassKey,
                    Md5Hex(fmt::format("assumeNotNull(concat({}))", parts)), kRowHash, model_sql),
        {}};
  }

  BoundSql CreateKeysTableSql(const std::string& checkpoints, const std::string& pass,
                              const std::string& keys,
                              const WarehouseCandidateFilter& filter) const override {
    BoundSql out;
    const std::string live = CheckpointsToRead(checkpoints);
    std::string conditions;
    if (filter.all_rows) {
      conditions = "1";
    } else {
      conditions = fmt::format(
          "p.{0} IN (SELECT {1} FROM {2})\n"
          "   OR p.{0} IN (SELECT d.{0} FROM {3} AS d WHERE d.{0} IS NOT NULL GROUP BY d.{0} "
          "HAVING COUNT(*) > 1)",
          kPassKey, JsonValueText("j"), JsonArrayTable("j"), pass);
      out.bindings.push_back(nlohmann::json(filter.in_flight_keys)
                                 .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      // A key is a candidate for a mapping unless that mapping stored it with
      // this row hash and version.
      for (const auto& [name, version] : filter.mappings) {
        conditions += fmt::format(
            "\n   OR (assumeNotNull(p.{0}), p.{1}, ?) NOT IN (SELECT c.record_key, c.row_hash, "
            "c.mapping_version FROM {2} AS c WHERE c.mapping = ?)",
            kPassKey, kRowHash, live);
        out.bindings.push_back(version.ToHex());
        out.bindings.push_back(name);
      }
    }
    out.sql = fmt::format(
        "CREATE TABLE {0} ENGINE = MergeTree ORDER BY tuple() AS\n"
        "SELECT assumeNotNull(p.{1}) AS record_key FROM {2} AS p\n"
        "WHERE p.{1} IS NOT NULL AND ({3})",
        keys, kPassKey, pass, conditions);
    if (!filter.mappings.empty()) {
      std::string marks;
      for (const auto& [name, version] : filter.mappings) {
        marks += marks.empty() ? "?" : ", ?";
        out.bindings.push_back(name);
      }
      out.sql += fmt::format(
          "\nUNION DISTINCT\n"
          "SELECT c.record_key FROM {0} AS c WHERE c.mapping IN ({1})\n"
          "  AND c.record_key NOT IN (SELECT assumeNotNull(g.{2}) FROM {3} AS g WHERE g.{2} IS "
          "NOT NULL)",
          live, marks, kPassKey, pass);
    }
    return out;
  }

  std::string CheckpointsToRead(const std::string& checkpoints) const override {
    return fmt::format(
        "(SELECT mapping, record_key, h AS row_hash, v AS mapping_version, f AS fingerprint, "
        "i AS record_identity FROM (SELECT mapping, record_key, argMax(row_hash, version) AS h, "
        "argMax(mapping_version, version) AS v, argMax(fingerprint, version) AS f, "
        "argMax(record_identity, version) AS i, argMax(deleted, version) AS d FROM {} GROUP BY "
        "mapping, record_key) WHERE d = 0)",
        checkpoints);
  }

  // Purges the mapping's tombstones once they are due (see the top of this
  // file). Cheap when nothing is due: no statement until the removes this
  // object wrote since its last count could make them due, then one count.
  absl::Status AfterApply(const std::string& checkpoints, const std::string& mapping,
                          size_t removes) override {
    if (removes == 0 || purge_unsupported_) return absl::OkStatus();
    Tally& t = tallies_[mapping];
    t.removes_since += static_cast<int64_t>(removes);
    if (t.counted && !Due(t.tombstones + t.removes_since, t.rows + t.removes_since)) {
      return absl::OkStatus();
    }
    BACKFLOW_ASSIGN_OR_RETURN(
        std::vector<Row> rows,
        ReadRows(Run(fmt::format("SELECT count(*), sum(deleted), max(version) FROM {} WHERE "
                                 "mapping = ?",
                                 checkpoints),
                     {mapping})));
    if (rows.size() != 1 || rows[0].size() != 3) {
      return absl::DataLossError("counting the checkpoint's tombstones returned no count");
    }
    BACKFLOW_ASSIGN_OR_RETURN(t.rows, Number(rows[0][0]));
    BACKFLOW_ASSIGN_OR_RETURN(t.tombstones, Number(rows[0][1]));
    BACKFLOW_ASSIGN_OR_RETURN(const int64_t newest, Number(rows[0][2]));
    t.counted = true;
    t.removes_since = 0;
    if (!Due(t.tombstones, t.rows)) return absl::OkStatus();
    t.counted = false;  // counted again after the next Apply() with removes
    absl::Status purged = Purge(checkpoints, mapping, newest);
    if (purged.ok()) return purged;
    const std::string message(purged.message());
    for (const char* code : {"Code: 62.", "Code: 48.", "Code: 344."}) {
      if (message.find(code) != std::string::npos) {
        purge_unsupported_ = true;  // a server without lightweight DELETE
        return absl::OkStatus();
      }
    }
    return absl::Status(purged.code(),
                        fmt::format("the checkpoint writes were applied, but purging the "
                                    "removed keys of mapping {} failed (the next run retries): {}",
                                    mapping, purged.message()));
  }

  BoundSql ApplySql(const std::string& checkpoints, const std::string& mapping,
                    std::string json) const override {
    std::string items;
    for (int i : {0, 2, 3, 4, 5}) items += ", " + JsonItemText("j", i);
    return {fmt::format("INSERT INTO {0} (mapping, record_key, row_hash, mapping_version, "
                        "fingerprint, record_identity, version, deleted)\n"
                        "SELECT ?{1},\n"
                        "  (SELECT coalesce(max(c.version), 0) + 1 FROM {0} AS c WHERE "
                        "c.mapping = ?),\n"
                        "  {2} = 'D'\n"
                        "FROM {3}",
                        checkpoints, items, JsonItemText("j", 1), JsonArrayTable("j")),
            {mapping, mapping, std::move(json)}};
  }

 private:
  // What this object knows of a mapping's checkpoint rows.
  struct Tally {
    bool counted = false;
    int64_t rows = 0;
    int64_t tombstones = 0;
    int64_t removes_since = 0;  // written since the count
  };

  bool Due(int64_t tombstones, int64_t rows) const {
    return tombstones > 0 && tombstones >= purge_.min_tombstones &&
           static_cast<double>(tombstones) >= purge_.min_fraction * static_cast<double>(rows);
  }

  // JSON arrays of `keys`, each at most MaxBindingBytes().
  std::vector<std::string> Chunks(const std::vector<std::string>& keys) const {
    std::vector<std::string> out;
    JsonArrayChunks chunks(MaxBindingBytes());
    for (const std::string& key : keys) {
      std::optional<std::string> full = chunks.Add(
          nlohmann::json(key).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      if (full) out.push_back(*std::move(full));
    }
    if (std::optional<std::string> last = chunks.Finish()) out.push_back(*std::move(last));
    return out;
  }

  // Removes every row of the keys whose latest row at or below version
  // `newest` is a tombstone, and the older tombstones of the others, in an
  // order that keeps reads right at every moment (see the top of this file).
  absl::Status Purge(const std::string& checkpoints, const std::string& mapping, int64_t newest) {
    const std::string version = std::to_string(newest);
    BACKFLOW_ASSIGN_OR_RETURN(
        std::vector<Row> rows,
        ReadRows(Run(fmt::format("SELECT record_key, argMax(deleted, version) FROM {} WHERE "
                                 "mapping = ? AND version <= toInt64(?) GROUP BY record_key "
                                 "HAVING max(deleted) = 1 LIMIT {}",
                                 checkpoints, purge_.max_keys),
                     {mapping, version})));
    std::vector<std::string> removed, all;
    for (const Row& row : rows) {
      if (row.size() != 2 || row[0].is_null()) {
        return absl::DataLossError("listing the checkpoint's tombstones returned a bad row");
      }
      BACKFLOW_ASSIGN_OR_RETURN(const int64_t latest_deleted, Number(row[1]));
      if (latest_deleted == 1) removed.push_back(row[0].ToString());
      all.push_back(row[0].ToString());
    }
    const std::string keys_in = "has(JSONExtract(?, 'Array(String)'), record_key)";
    // 1. The older, live rows of removed keys (their tombstone still hides
    //    them), then a check that none is visible any more: a lightweight
    //    DELETE may run asynchronously (lightweight_deletes_sync = 0).
    for (const std::string& chunk : Chunks(removed)) {
      BACKFLOW_ASSIGN_OR_RETURN(
          auto done, ReadRows(Run(fmt::format("DELETE FROM {} WHERE mapping = ? AND version <= "
                                              "toInt64(?) AND deleted = 0 AND {}",
                                              checkpoints, keys_in),
                                  {mapping, version, chunk})));
      (void)done;
    }
    for (const std::string& chunk : Chunks(removed)) {
      BACKFLOW_ASSIGN_OR_RETURN(
          std::vector<Row> left,
          ReadRows(Run(fmt::format("SELECT count(*) FROM {} WHERE mapping = ? AND version <= "
                                   "toInt64(?) AND deleted = 0 AND {}",
                                   checkpoints, keys_in),
                       {mapping, version, chunk})));
      if (left.size() != 1 || left[0].size() != 1) {
        return absl::DataLossError("checking the purge returned no count");
      }
      BACKFLOW_ASSIGN_OR_RETURN(const int64_t n, Number(left[0][0]));
      if (n != 0) return absl::OkStatus();  // not applied yet: the tombstones stay
    }
    // 2. The tombstones below the mapping's newest version (which stays, so
    //    that versions keep growing).
    for (const std::string& chunk : Chunks(all)) {
      BACKFLOW_ASSIGN_OR_RETURN(
          auto done, ReadRows(Run(fmt::format("DELETE FROM {} WHERE mapping = ? AND version < "
                                              "toInt64(?) AND deleted = 1 AND {}",
                                              checkpoints, keys_in),
                                  {mapping, version, chunk})));
      (void)done;
    }
    return absl::OkStatus();
  }

  ClickHouseSqlRunner run_;
  ClickHouseCheckpointPurge purge_;
  std::map<std::string, Tally> tallies_;
  bool purge_unsupported_ = false;
};

}  // namespace

std::unique_ptr<WarehouseSql> NewClickHouseWarehouseSql(ClickHouseSqlRunner run,
                                                        ClickHouseCheckpointPurge purge) {
  return std::make_unique<ClickHouseWarehouseSql>(std::move(run), purge);
}

}  // namespace backflow
