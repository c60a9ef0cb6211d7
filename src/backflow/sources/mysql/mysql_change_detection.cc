// Warehouse change detection on MySQL / MariaDB (see
// warehouse_change_detection.h).
//
// The checkpoint is one InnoDB table, `<state_schema>`.`checkpoints` (in
// MySQL a schema is a database), keyed by (mapping, key_hash), where key_hash
// is UNHEX(MD5(record_key)) so that keys of any length up to 3072 bytes fit
// the primary key. record_key holds the key's utf8mb4 bytes (VARBINARY, so it
// compares and sorts byte by byte, as the engine merges), row_hash the MD5 of
// the model row (BINARY(16)), version the mapping version (BINARY(16)), and
// fingerprint and identity the delivered payload's (binary).
//
// A pass runs on one connection. Begin() creates one temporary table,
// `<state_schema>`.`backflow_keys` (MySQL cannot create temporary tables
// inside a READ ONLY transaction, but lets one fill them), then starts
// `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`: every statement of
// the pass reads the same snapshot, and the model cannot write. Only plain
// SELECTs read the model and the checkpoint (an INSERT ... SELECT would take
// shared locks on the model's rows under REPEATABLE READ and block writers):
//   ReadCandidates  one SELECT streams the candidate rows (mysql_use_result):
//                   the model runs once with MD5 over a length-prefixed text
//                   of every column (NULL-safe, one text per column), left
//                   joined to each mapping's stored entry, and once more
//                   reading only the key to find duplicated keys (GROUP BY
//                   the key's bytes). The candidate keys are kept in a
//                   temporary file as they pass.
//   ScanEntries     first (once) streams the stored keys of the run's
//                   mappings that the model no longer returns (the model's
//                   keys a third time), then loads those and the candidate
//                   keys into backflow_keys with batched INSERTs; each
//                   mapping's entries of those keys then come ORDER BY
//                   record_key.
// Close() closes the connection, which ends the transaction and drops the
// temporary table.
//
// Cancel (WarehousePassOptions::cancel): a QueryCanceller watches the pass's
// connection from Begin() to Close(); once the flag reads true it sends KILL
// QUERY for the statement running on it and shuts its socket down, so the
// blocked call returns, and the step (or reader) returns kCancelled. Nothing
// is left to clean up: closing the dead connection ends the transaction, and
// the server drops the temporary table with the session. Writes go through a second connection, one
// committed transaction of batched DELETE and INSERT ... ON DUPLICATE KEY UPDATE statements per
// Apply().
//
// Keys are compared as CAST(CONVERT(key USING utf8mb4) AS BINARY), the text
// Backflow's decoder gives integers and CHAR / VARCHAR / TEXT columns (over a
// utf8mb4 connection); other key types are refused.
#include <errmsg.h>
#include <mysql.h>
#include <mysqld_error.h>

#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backflow/common/fmt_absl.h"
#include "backflow/common/status_macros.h"
#include "backflow/sources/mysql/mysql_internal.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"

namespace backflow::mysql_internal {
namespace {

constexpr size_t kMaxKeyBytes = 3072;  // record_key VARBINARY(3072)
constexpr size_t kMaxMappingBytes = 255;
// Statements of batched values stay well under max_allowed_packet (4 MiB on
// MySQL 5.7, more elsewhere).
constexpr size_t kStatementBytes = 1 << 20;

std::string Quote(std::string_view name) {
  std::string out = "`";
  for (char c : name) {
    out.push_back(c);
    if (c == '`') out.push_back('`');
  }
  out.push_back('`');
  return out;
}

// X'...': any bytes as a binary string literal.
void AppendHex(std::string& out, std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  out.append("X'");
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  out.push_back('\'');
}
std::string Hex(std::string_view bytes) {
  std::string out;
  AppendHex(out, bytes);
  return out;
}

std::string FingerprintBytes(const Fingerprint& fp) {
  auto bytes = fp.ToBytes();
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// A row hash as the candidate reader returned it (32 hex digits) as a
// BINARY(16) literal; NULL (a candidate on every pass) for anything else.
std::string RowHashLiteral(std::string_view hash) {
  if (hash.size() != 32) return "NULL";
  for (char c : hash) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return "NULL";
    }
  }
  return fmt::format("X'{}'", std::string(hash));
}

// The key's bytes as Backflow's decoder writes them.
std::string KeyBytes(std::string_view column_expr) {
  return fmt::format("CAST(CONVERT({} USING utf8mb4) AS BINARY)", std::string(column_expr));
}

bool IsAccessDenied(unsigned err) {
  return err == ER_DBACCESS_DENIED_ERROR || err == ER_TABLEACCESS_DENIED_ERROR ||
         err == ER_COLUMNACCESS_DENIED_ERROR || err == ER_SPECIFIC_ACCESS_DENIED_ERROR ||
         err == ER_ACCESS_DENIED_ERROR;
}

// Runs one statement and discards any result.
absl::Status Exec(Conn& conn, const std::string& sql, std::string_view what) {
  if (mysql_real_query(conn.mysql, sql.data(), sql.size()) != 0) return QueryError(conn, what);
  MYSQL_RES* result = mysql_store_result(conn.mysql);
  if (result != nullptr) {
    mysql_free_result(result);
  } else if (mysql_errno(conn.mysql) != 0) {
    return QueryError(conn, what);
  }
  return absl::OkStatus();
}

// Runs a statement returning one row; its first row's values (NULL as "").
absl::StatusOr<std::vector<std::string>> QueryRow(Conn& conn, const std::string& sql,
                                                  std::string_view what) {
  if (mysql_real_query(conn.mysql, sql.data(), sql.size()) != 0) return QueryError(conn, what);
  MYSQL_RES* result = mysql_store_result(conn.mysql);
  if (result == nullptr) return QueryError(conn, what);
  std::vector<std::string> out;
  MYSQL_ROW row = mysql_fetch_row(result);
  if (row != nullptr) {
    unsigned long* lengths = mysql_fetch_lengths(result);
    for (unsigned i = 0; i < mysql_num_fields(result); ++i) {
      out.emplace_back(row[i] == nullptr ? "" : std::string(row[i], lengths[i]));
    }
  }
  mysql_free_result(result);
  if (out.empty()) return absl::InternalError(fmt::format("{}: no row returned", what));
  return out;
}

// Key types whose text MySQL and Backflow's decoder write alike.
bool KeyTypeSupported(const Column& column) {
  if (column.type == ValueType::kString) {
    return column.source_type == "CHAR" || column.source_type == "VARCHAR" ||
           column.source_type == "TEXT";
  }
  if (column.type != ValueType::kInt64 && column.type != ValueType::kDecimal) return false;
  for (std::string_view name : {"TINYINT", "SMALLINT", "MEDIUMINT", "INT", "BIGINT"}) {
    if (column.source_type == name || column.source_type == std::string(name) + " UNSIGNED") {
      return true;
    }
  }
  return false;
}

// Keys kept on disk between the passes over them (bounded memory).
class KeySpill {
 public:
  KeySpill() : file_(std::tmpfile()) {}
  ~KeySpill() {
    if (file_ != nullptr) std::fclose(file_);
  }
  KeySpill(const KeySpill&) = delete;
  KeySpill& operator=(const KeySpill&) = delete;

  absl::Status Add(std::string_view key) {
    if (file_ == nullptr) return Failed();
    uint32_t size = static_cast<uint32_t>(key.size());
    if (std::fwrite(&size, sizeof size, 1, file_) != 1 ||
        (size > 0 && std::fwrite(key.data(), 1, size, file_) != size)) {
      return Failed();
    }
    return absl::OkStatus();
  }
  absl::Status Rewind() {
    if (file_ == nullptr || std::fflush(file_) != 0 || std::fseek(file_, 0, SEEK_SET) != 0) {
      return Failed();
    }
    return absl::OkStatus();
  }
  // After Rewind(): the next key; false at the end.
  absl::StatusOr<bool> Next(std::string& key) {
    uint32_t size = 0;
    if (std::fread(&size, sizeof size, 1, file_) != 1) {
      if (std::feof(file_)) return false;
      return Failed();
    }
    key.resize(size);
    if (size > 0 && std::fread(key.data(), 1, size, file_) != size) return Failed();
    return true;
  }

 private:
  static absl::Status Failed() {
    return absl::ResourceExhaustedError(
        "change_detection: warehouse could not keep the candidate keys in a temporary file; "
        "check the free space of the temporary directory (TMPDIR)");
  }
  FILE* file_;
};

constexpr char kPassWhat[] = "the MySQL change detection statement";

// `status` of a pass step, or kCancelled once the pass's run is cancelled
// (`canceller` null: the pass cannot be).
absl::Status Checked(QueryCanceller* canceller, absl::Status status) {
  if (canceller != nullptr && canceller->requested()) return canceller->Cancel();
  return status;
}

// A reader of the pass's connection that stops once the run is cancelled.
class CancelCheckedReader : public RowReader {
 public:
  CancelCheckedReader(std::unique_ptr<RowReader> rows, std::shared_ptr<QueryCanceller> canceller)
      : rows_(std::move(rows)), canceller_(std::move(canceller)) {}

  const Schema& schema() const override { return rows_->schema(); }

  absl::StatusOr<bool> Next(Row& row) override {
    BACKFLOW_RETURN_IF_ERROR(Checked(canceller_.get(), absl::OkStatus()));
    absl::StatusOr<bool> more = rows_->Next(row);
    if (!more.ok()) return Checked(canceller_.get(), more.status());
    return more;
  }

 private:
  std::unique_ptr<RowReader> rows_;
  std::shared_ptr<QueryCanceller> canceller_;
};

// StreamQuery on the pass's connection, stopped once the run is cancelled.
absl::StatusOr<std::unique_ptr<RowReader>> StreamPassQuery(
    std::shared_ptr<Conn> conn, const std::shared_ptr<QueryCanceller>& canceller,
    const std::string& text, std::string_view what) {
  BACKFLOW_RETURN_IF_ERROR(Checked(canceller.get(), absl::OkStatus()));
  absl::StatusOr<std::unique_ptr<RowReader>> rows = StreamQuery(std::move(conn), text, what);
  if (!rows.ok()) return Checked(canceller.get(), rows.status());
  if (canceller == nullptr) return rows;
  return std::unique_ptr<RowReader>(new CancelCheckedReader(*std::move(rows), canceller));
}

// What a snapshot and its candidate reader share.
struct PassState {
  KeySpill keys;
  bool candidates_read = false;  // the candidate reader reached its clean end
};

class CandidateReader : public RowReader {
 public:
  CandidateReader(std::unique_ptr<RowReader> rows, int key, std::shared_ptr<PassState> state)
      : rows_(std::move(rows)), key_(key), state_(std::move(state)) {}

  const Schema& schema() const override { return rows_->schema(); }

  absl::StatusOr<bool> Next(Row& row) override {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, rows_->Next(row));
    if (!more) {
      state_->candidates_read = true;
      return false;
    }
    const Value& key = row[key_];
    if (!key.is_null()) {
      key_text_ = key.ToString();
      if (key_text_.size() > kMaxKeyBytes) {
        return absl::FailedPreconditionError(fmt::format(
            "change_detection: warehouse keeps record keys of at most {} bytes, and the model "
            "returned one of {} bytes (starting {:?}); shorten the unique identifier (e.g. a hash "
            "of it) or use change_detection: local",
            kMaxKeyBytes, key_text_.size(), key_text_.substr(0, 40)));
      }
      BACKFLOW_RETURN_IF_ERROR(state_->keys.Add(key_text_));
    }
    return true;
  }

 private:
  std::unique_ptr<RowReader> rows_;
  int key_;
  std::shared_ptr<PassState> state_;
  std::string key_text_;
};

class EntryScanner : public WarehouseEntryScanner {
 public:
  explicit EntryScanner(std::unique_ptr<RowReader> reader) : reader_(std::move(reader)) {}

  absl::StatusOr<bool> Next(WarehouseCheckpointEntry& entry) override {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, reader_->Next(row_));
    if (!more) return false;
    if (row_.size() != 3 || row_[0].is_null() || row_[1].is_null() || row_[2].is_null()) {
      return absl::DataLossError("the warehouse checkpoint table returned a malformed entry");
    }
    entry.key = row_[0].text();
    const std::string& fp = row_[1].text();
    if (fp.size() != 16) {
      return absl::DataLossError(fmt::format(
          "the warehouse checkpoint entry of key \"{}\" has a fingerprint of {} bytes, not 16",
          entry.key, fp.size()));
    }
    entry.fingerprint = Fingerprint::FromBytes(fp.data(), fp.size());
    entry.identity = row_[2].text();
    return true;
  }

 private:
  std::unique_ptr<RowReader> reader_;
  Row row_;
};

// The actionable error for a statement on the state database that the user
// may not run.
absl::Status PrivilegeError(const std::string& schema, const std::string& user,
                            std::string_view doing, std::string_view server_message) {
  const std::string grant_user = [&] {
    size_t at = user.rfind('@');
    if (at == std::string::npos) return fmt::format("'{}'", user);
    return fmt::format("'{}'@'{}'", user.substr(0, at), user.substr(at + 1));
  }();
  return absl::PermissionDeniedError(fmt::format(
      "change_detection: warehouse keeps its checkpoint in database {0} (table checkpoints), and "
      "user {1} may not {2} ({3}). Have an administrator run `GRANT CREATE, SELECT, INSERT, "
      "UPDATE, DELETE, CREATE TEMPORARY TABLES ON {0}.* TO {1};`, or set state_schema on the "
      "source to a database where {1} has these privileges",
      Quote(schema), grant_user, doing, server_message));
}

class Snapshot : public WarehouseSnapshot {
 public:
  Snapshot(std::shared_ptr<Conn> conn, std::shared_ptr<QueryCanceller> canceller, std::string sql,
           std::string key, std::string schema_name, Schema schema)
      : conn_(std::move(conn)),
        canceller_(std::move(canceller)),
        sql_(std::move(sql)),
        key_(std::move(key)),
        table_(Quote(schema_name) + ".`checkpoints`"),
        keys_table_(Quote(schema_name) + ".`backflow_keys`"),
        schema_(std::move(schema)),
        state_(std::make_shared<PassState>()) {}
  ~Snapshot() override { (void)Close(); }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<std::unique_ptr<RowReader>> ReadCandidates(
      const WarehouseCandidateFilter& filter) override {
    BACKFLOW_RETURN_IF_ERROR(Open());
    int key = -1;
    for (size_t i = 0; i < schema_.size(); ++i) {
      if (schema_[i].name == key_) key = static_cast<int>(i);
    }
    if (key < 0) {
      return absl::FailedPreconditionError(
          fmt::format("the model does not return its unique identifier column \"{}\"", key_));
    }
    if (!KeyTypeSupported(schema_[key])) {
      return absl::FailedPreconditionError(fmt::format(
          "change_detection: warehouse needs the unique identifier column \"{0}\" to be an "
          "integer, CHAR, VARCHAR or TEXT (it is {1}); cast it in the model's SQL, e.g. "
          "CAST({0} AS CHAR) AS {0}",
          key_, schema_[key].source_type));
    }
    mappings_.clear();
    for (const auto& [name, version] : filter.mappings) {
      if (name.size() > kMaxMappingBytes) {
        return absl::InvalidArgumentError(fmt::format(
            "change_detection: warehouse keeps mapping names of at most {} bytes; shorten "
            "mapping \"{}\"",
            kMaxMappingBytes, name));
      }
      mappings_.push_back(name);
    }
    const std::string k = "m." + Quote(key_);
    // One text per column: its length, ':', its bytes; '-' for NULL.
    std::string parts, columns;
    for (const Column& c : schema_) {
      const std::string v = fmt::format("CAST(m.{} AS BINARY)", Quote(c.name));
      if (!parts.empty()) parts += ", ";
      parts += fmt::format("IFNULL(CONCAT(LENGTH({0}), ':', {0}), '-')", v);
      columns += fmt::format("h.{}, ", Quote(c.name));
    }
    std::string joins, conditions;
    for (size_t i = 0; i < filter.mappings.size(); ++i) {
      const auto& [name, version] = filter.mappings[i];
      joins += fmt::format(
          "LEFT JOIN {0} AS c{1} ON c{1}.mapping = {2} AND c{1}.key_hash = "
          "UNHEX(MD5(h.backflow_record_key)) AND c{1}.record_key = h.backflow_record_key\n",
          table_, i, Hex(name));
      conditions += fmt::format(
          "\n   OR NOT (c{0}.row_hash <=> UNHEX(h.backflow_row_hash)) OR NOT (c{0}.version <=> "
          "{1})",
          i, Hex(FingerprintBytes(version)));
    }
    if (filter.all_rows) conditions += "\n   OR TRUE";
    if (!filter.in_flight_keys.empty()) {
      std::string list;
      for (const std::string& f : filter.in_flight_keys) {
        if (!list.empty()) list += ", ";
        AppendHex(list, f);
      }
      conditions += fmt::format("\n   OR h.backflow_record_key IN ({})", list);
    }
    const std::string select = fmt::format(
        "SELECT {0}h.backflow_row_hash FROM (\n"
        "  SELECT m.*, MD5(CONCAT({1})) AS backflow_row_hash, {2} AS backflow_record_key\n"
        "  FROM (\n{3}\n) AS m) AS h\n"
        "{4}"
        "WHERE h.backflow_record_key IS NULL OR h.backflow_row_hash IS NULL{5}\n"
        "   OR h.backflow_record_key IN (SELECT {6} FROM (\n{3}\n) AS d GROUP BY 1 HAVING "
        "COUNT(*) > 1)",
        columns, parts, KeyBytes(k), sql_, joins, conditions, KeyBytes("d." + Quote(key_)));
    BACKFLOW_ASSIGN_OR_RETURN(
        auto rows,
        StreamPassQuery(conn_, canceller_, select, "finding the model's changed rows failed"));
    return std::unique_ptr<RowReader>(new CandidateReader(std::move(rows), key, state_));
  }

  absl::StatusOr<std::unique_ptr<WarehouseEntryScanner>> ScanEntries(
      const std::string& mapping) override {
    BACKFLOW_RETURN_IF_ERROR(Open());
    BACKFLOW_RETURN_IF_ERROR(Checked(canceller_.get(), LoadKeys()));
    const std::string sql = fmt::format(
        "SELECT c.record_key, c.fingerprint, c.identity FROM {0} AS t\n"
        "JOIN {1} AS c ON c.mapping = {2} AND c.key_hash = UNHEX(MD5(t.k)) AND c.record_key = "
        "t.k\n"
        "ORDER BY c.record_key",
        keys_table_, table_, Hex(mapping));
    BACKFLOW_ASSIGN_OR_RETURN(
        auto reader,
        StreamPassQuery(conn_, canceller_, sql, "reading the warehouse checkpoint failed"));
    return std::unique_ptr<WarehouseEntryScanner>(new EntryScanner(std::move(reader)));
  }

  absl::StatusOr<int64_t> CountEntries(const std::string& mapping) override {
    BACKFLOW_RETURN_IF_ERROR(Open());
    BACKFLOW_RETURN_IF_ERROR(Checked(canceller_.get(), absl::OkStatus()));
    absl::StatusOr<std::vector<std::string>> row = QueryRow(
        *conn_, fmt::format("SELECT COUNT(*) FROM {} WHERE mapping = {}", table_, Hex(mapping)),
        "counting the warehouse checkpoint failed");
    if (!row.ok()) return Checked(canceller_.get(), row.status());
    return std::stoll((*row)[0]);
  }

  absl::Status Close() override {
    // Closing the connection ends the transaction and drops the temporary
    // table: nothing of the pass is kept. The watch ends first, while the
    // connection is still open.
    if (canceller_ != nullptr) canceller_->Stop();
    conn_.reset();
    return absl::OkStatus();
  }

 private:
  absl::Status Open() const {
    if (conn_ == nullptr) return absl::FailedPreconditionError("the snapshot is closed");
    return absl::OkStatus();
  }

  // Once per pass: the candidate keys and the stored keys gone from the
  // model into backflow_keys.
  absl::Status LoadKeys() {
    if (keys_loaded_) return absl::OkStatus();
    if (!state_->candidates_read) {
      return absl::FailedPreconditionError(
          "the warehouse checkpoint's entries were asked for before the candidate rows were read "
          "to their end");
    }
    if (!mappings_.empty()) {
      std::string names;
      for (const std::string& m : mappings_) {
        if (!names.empty()) names += ", ";
        AppendHex(names, m);
      }
      const std::string k = "d." + Quote(key_);
      const std::string gone = fmt::format(
          "SELECT DISTINCT c.record_key FROM {0} AS c\n"
          "WHERE c.mapping IN ({1}) AND c.record_key NOT IN (\n"
          "  SELECT {2} FROM (\n{3}\n) AS d WHERE {4} IS NOT NULL)",
          table_, names, KeyBytes(k), sql_, k);
      BACKFLOW_ASSIGN_OR_RETURN(
          auto reader,
          StreamPassQuery(conn_, canceller_, gone, "finding the keys gone from the model failed"));
      Row row;
      while (true) {
        BACKFLOW_ASSIGN_OR_RETURN(bool more, reader->Next(row));
        if (!more) break;
        if (row.size() != 1 || row[0].is_null()) {
          return absl::DataLossError("the warehouse checkpoint table returned a malformed key");
        }
        BACKFLOW_RETURN_IF_ERROR(state_->keys.Add(row[0].text()));
      }
    }
    BACKFLOW_RETURN_IF_ERROR(state_->keys.Rewind());
    const std::string prefix = fmt::format("INSERT INTO {} (k) VALUES ", keys_table_);
    constexpr char kSuffix[] = " ON DUPLICATE KEY UPDATE k = k";
    std::string statement = prefix, key;
    auto flush = [&]() -> absl::Status {
      if (statement.size() == prefix.size()) return absl::OkStatus();
      statement += kSuffix;
      BACKFLOW_RETURN_IF_ERROR(
          Exec(*conn_, statement, "loading the candidate keys into a temporary table failed"));
      statement = prefix;
      return absl::OkStatus();
    };
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool more, state_->keys.Next(key));
      if (!more) break;
      if (statement.size() > prefix.size()) statement += ", ";
      statement += "(";
      AppendHex(statement, key);
      statement += ")";
      if (statement.size() >= kStatementBytes) BACKFLOW_RETURN_IF_ERROR(flush());
    }
    BACKFLOW_RETURN_IF_ERROR(flush());
    keys_loaded_ = true;
    return absl::OkStatus();
  }

  std::shared_ptr<Conn> conn_;
  std::shared_ptr<QueryCanceller> canceller_;  // null: the pass cannot be cancelled
  std::string sql_;
  std::string key_;
  std::string table_;       // quoted `schema`.`checkpoints`
  std::string keys_table_;  // quoted `schema`.`backflow_keys` (temporary)
  Schema schema_;
  std::shared_ptr<PassState> state_;
  std::vector<std::string> mappings_;  // the filter's
  bool keys_loaded_ = false;
};

class ChangeDetection : public WarehouseChangeDetection {
 public:
  ChangeDetection(std::string url, std::string password, std::string schema)
      : url_(std::move(url)),
        password_(std::move(password)),
        schema_(std::move(schema)),
        table_(Quote(schema_) + ".`checkpoints`") {}

  absl::StatusOr<std::unique_ptr<WarehouseSnapshot>> Begin(
      const std::string& sql, const std::string& key,
      const WarehousePassOptions& options) override {
    // A run already cancelled opens no connection.
    if (QueryCancelRequested(options.cancel)) return QueryCancelledError(kPassWhat);
    BACKFLOW_ASSIGN_OR_RETURN(std::unique_ptr<Conn> opened,
                              Connect(url_, password_, /*read_only=*/false));
    std::shared_ptr<Conn> conn = std::move(opened);
    // Declared after the connection: stopped before it closes.
    std::shared_ptr<QueryCanceller> canceller;
    if (options.cancel != nullptr) {
      canceller =
          std::make_shared<QueryCanceller>(url_, password_, *conn, options.cancel, kPassWhat);
    }
    QueryCanceller* c = canceller.get();
    absl::StatusOr<std::string> ensured = EnsureTable(*conn);
    if (!ensured.ok()) return Checked(c, ensured.status());
    const std::string user = *ensured;
    // Keys sort on all their bytes (at most 3072).
    BACKFLOW_RETURN_IF_ERROR(Checked(
        c, Exec(*conn, "SET SESSION max_sort_length = 4096", "preparing change detection failed")));
    const std::string create = fmt::format(
        "CREATE TEMPORARY TABLE {}.`backflow_keys` (k VARBINARY({}) NOT NULL PRIMARY KEY)",
        Quote(schema_), kMaxKeyBytes);
    if (mysql_real_query(conn->mysql, create.data(), create.size()) != 0) {
      BACKFLOW_RETURN_IF_ERROR(Checked(c, absl::OkStatus()));
      if (IsAccessDenied(mysql_errno(conn->mysql))) {
        return PrivilegeError(schema_, user, "create a temporary table there",
                              mysql_error(conn->mysql));
      }
      return QueryError(*conn, "preparing change detection failed");
    }
    // From here on one snapshot, and the model cannot write (the temporary
    // table still can be filled).
    BACKFLOW_RETURN_IF_ERROR(
        Checked(c, Exec(*conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                        "starting the change detection's transaction failed")));
    const std::string text = TrimModelSql(sql);
    BACKFLOW_ASSIGN_OR_RETURN(
        auto probe,
        StreamPassQuery(conn, canceller, fmt::format("SELECT * FROM (\n{}\n) AS m LIMIT 0", text),
                        "query failed"));
    Schema schema = probe->schema();
    Row row;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool more, probe->Next(row));
      if (!more) break;
    }
    probe.reset();
    return std::unique_ptr<WarehouseSnapshot>(
        new Snapshot(std::move(conn), std::move(canceller), text, key, schema_, std::move(schema)));
  }

  absl::Status Apply(const std::string& mapping,
                     const std::vector<WarehouseCheckpointWrite>& writes) override {
    if (writes.empty()) return absl::OkStatus();
    if (mapping.size() > kMaxMappingBytes) {
      return absl::InvalidArgumentError(fmt::format(
          "change_detection: warehouse keeps mapping names of at most {} bytes; shorten mapping "
          "\"{}\"",
          kMaxMappingBytes, mapping));
    }
    // The last write of each key wins.
    std::map<std::string_view, const WarehouseCheckpointWrite*> last;
    for (const WarehouseCheckpointWrite& w : writes) {
      if (w.key.size() > kMaxKeyBytes) {
        return absl::FailedPreconditionError(
            fmt::format("change_detection: warehouse keeps record keys of at most {} bytes, not {}",
                        kMaxKeyBytes, w.key.size()));
      }
      last[w.key] = &w;
    }
    const std::string m = Hex(mapping);
    std::vector<std::string> statements;
    const std::string delete_prefix =
        fmt::format("DELETE FROM {} WHERE mapping = {} AND key_hash IN (", table_, m);
    const std::string upsert_prefix = fmt::format(
        "INSERT INTO {} (mapping, key_hash, record_key, row_hash, version, fingerprint, "
        "identity) VALUES ",
        table_);
    constexpr char kUpsertSuffix[] =
        " ON DUPLICATE KEY UPDATE record_key = VALUES(record_key), row_hash = VALUES(row_hash), "
        "version = VALUES(version), fingerprint = VALUES(fingerprint), identity = "
        "VALUES(identity)";
    std::string deletes = delete_prefix, upserts = upsert_prefix;
    for (const auto& [key, w] : last) {
      if (w->kind == WarehouseCheckpointWrite::Kind::kRemove) {
        if (deletes.size() > delete_prefix.size()) deletes += ", ";
        deletes += "UNHEX(MD5(";
        AppendHex(deletes, key);
        deletes += "))";
        if (deletes.size() >= kStatementBytes) {
          statements.push_back(deletes + ")");
          deletes = delete_prefix;
        }
        continue;
      }
      if (upserts.size() > upsert_prefix.size()) upserts += ", ";
      upserts += fmt::format("({}, UNHEX(MD5({})), ", m, Hex(key));
      AppendHex(upserts, key);
      upserts += fmt::format(", {}, ", RowHashLiteral(w->row_hash));
      AppendHex(upserts, FingerprintBytes(w->version));
      upserts += ", ";
      AppendHex(upserts, FingerprintBytes(w->fingerprint));
      upserts += ", ";
      AppendHex(upserts, w->identity);
      upserts += ")";
      if (upserts.size() >= kStatementBytes) {
        statements.push_back(upserts + kUpsertSuffix);
        upserts = upsert_prefix;
      }
    }
    if (deletes.size() > delete_prefix.size()) statements.push_back(deletes + ")");
    if (upserts.size() > upsert_prefix.size()) statements.push_back(upserts + kUpsertSuffix);

    if (write_conn_ == nullptr) {
      BACKFLOW_ASSIGN_OR_RETURN(write_conn_, Connect(url_, password_, /*read_only=*/false));
    }
    absl::Status status = [&]() -> absl::Status {
      BACKFLOW_ASSIGN_OR_RETURN(std::string user, EnsureTable(*write_conn_));
      BACKFLOW_RETURN_IF_ERROR(Exec(*write_conn_, "START TRANSACTION READ WRITE", kWriteFailed));
      for (const std::string& statement : statements) {
        if (mysql_real_query(write_conn_->mysql, statement.data(), statement.size()) != 0) {
          if (IsAccessDenied(mysql_errno(write_conn_->mysql))) {
            return PrivilegeError(schema_, user, "write it", mysql_error(write_conn_->mysql));
          }
          return QueryError(*write_conn_, kWriteFailed);
        }
      }
      return Exec(*write_conn_, "COMMIT", kWriteFailed);
    }();
    // A failed transaction goes with its connection (the server rolls it
    // back); the next Apply connects again.
    if (!status.ok()) write_conn_.reset();
    return status;
  }

 private:
  static constexpr char kWriteFailed[] = "writing the warehouse checkpoint failed";

  // Creates the database and table when missing; returns the current user
  // (user@host) for messages.
  absl::StatusOr<std::string> EnsureTable(Conn& conn) {
    if (ensured_) return user_;
    BACKFLOW_ASSIGN_OR_RETURN(
        std::vector<std::string> check,
        QueryRow(conn,
                 fmt::format("SELECT CURRENT_USER(), (SELECT COUNT(*) FROM "
                             "information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = "
                             "'checkpoints')",
                             Hex(schema_)),
                 "checking the warehouse checkpoint table failed"));
    const std::string user = check[0];
    if (check[1] == "0") {
      const std::string create_database =
          fmt::format("CREATE DATABASE IF NOT EXISTS {}", Quote(schema_));
      const std::string create_table = fmt::format(
          "CREATE TABLE IF NOT EXISTS {} (\n"
          "  mapping VARBINARY({}) NOT NULL,\n"
          "  key_hash BINARY(16) NOT NULL COMMENT 'UNHEX(MD5(record_key))',\n"
          "  record_key VARBINARY({}) NOT NULL,\n"
          "  row_hash BINARY(16) NULL,\n"
          "  version BINARY(16) NULL,\n"
          "  fingerprint BINARY(16) NOT NULL,\n"
          "  identity MEDIUMBLOB NOT NULL,\n"
          "  PRIMARY KEY (mapping, key_hash)\n"
          ") ENGINE=InnoDB COMMENT='Backflow change_detection: warehouse: what each mapping last "
          "delivered, per record key. Managed by Backflow.'",
          table_, kMaxMappingBytes, kMaxKeyBytes);
      for (const std::string* sql : {&create_database, &create_table}) {
        if (mysql_real_query(conn.mysql, sql->data(), sql->size()) == 0) continue;
        if (IsAccessDenied(mysql_errno(conn.mysql))) {
          return PrivilegeError(schema_, user, "create it", mysql_error(conn.mysql));
        }
        return QueryError(conn, "creating the warehouse checkpoint table failed");
      }
    }
    // The passes read it.
    const std::string probe = fmt::format("SELECT 1 FROM {} LIMIT 0", table_);
    if (mysql_real_query(conn.mysql, probe.data(), probe.size()) != 0) {
      if (IsAccessDenied(mysql_errno(conn.mysql))) {
        return PrivilegeError(schema_, user, "read it", mysql_error(conn.mysql));
      }
      return QueryError(conn, "checking the warehouse checkpoint table failed");
    }
    MYSQL_RES* result = mysql_store_result(conn.mysql);
    if (result != nullptr) mysql_free_result(result);
    ensured_ = true;
    user_ = user;
    return user;
  }

  std::string url_;
  std::string password_;
  std::string schema_;
  std::string table_;  // quoted `schema`.`checkpoints`
  bool ensured_ = false;
  std::string user_;  // CURRENT_USER(), once ensured_
  std::unique_ptr<Conn> write_conn_;
};

}  // namespace

std::unique_ptr<WarehouseChangeDetection> NewChangeDetection(std::string url, std::string password,
                                                             std::string state_schema) {
  return std::make_unique<ChangeDetection>(std::move(url), std::move(password),
                                           std::move(state_schema));
}

}  // namespace backflow::mysql_internal
