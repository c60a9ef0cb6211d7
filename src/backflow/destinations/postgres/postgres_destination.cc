#include "backflow/destinations/postgres/postgres_destination.h"

#include <libpq-fe.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/status_macros.h"
#include "backflow/pg/connection.h"
#include "fmt/format.h"

namespace backflow {
namespace {

constexpr int kMaxAttempts = 4;                // per transaction, for transient failures
constexpr int kMaxParamsPerStatement = 30000;  // protocol limit is 65535

struct Settings {
  std::string url;
  std::string password;
  std::string schema = "public";
  std::string table;
  std::string key_column;
  bool create_table = false;

  std::string QualifiedTable() const {
    return pg::QuoteIdentifier(schema) + "." + pg::QuoteIdentifier(table);
  }
  std::string DisplayTable() const { return schema + "." + table; }
};

pg::ConnectOptions ConnectOptionsFor(const Settings& s) {
  pg::ConnectOptions options;
  options.url = s.url;
  options.password = s.password;
  options.settings = {{"TimeZone", "UTC"},
                      {"DateStyle", "ISO, MDY"},
                      {"statement_timeout", "300000"},
                      {"lock_timeout", "60000"}};
  return options;
}

struct TableInfo {
  bool exists = false;
  std::string oid;
  std::map<std::string, std::string> column_types;  // name -> format_type()
};

absl::StatusOr<TableInfo> LoadTable(pg::Connection& conn, const Settings& s) {
  TableInfo info;
  BACKFLOW_ASSIGN_OR_RETURN(
      pg::Result rel,
      conn.Exec("SELECT c.oid::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                {s.schema.c_str(), s.table.c_str()}, "looking up the table failed"));
  if (PQntuples(rel.get()) == 0) return info;
  info.exists = true;
  info.oid = PQgetvalue(rel.get(), 0, 0);
  BACKFLOW_ASSIGN_OR_RETURN(
      pg::Result cols,
      conn.Exec("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped",
                {info.oid.c_str()}, "reading the table's columns failed"));
  for (int i = 0; i < PQntuples(cols.get()); ++i) {
    info.column_types[PQgetvalue(cols.get(), i, 0)] = PQgetvalue(cols.get(), i, 1);
  }
  return info;
}

// Whether `key` has a unique, immediate, non-partial index on it alone, which
// ON CONFLICT (key) can use as its arbiter.
absl::StatusOr<bool> HasUsableUniqueIndex(pg::Connection& conn, const TableInfo& info,
                                          const std::string& key) {
  BACKFLOW_ASSIGN_OR_RETURN(
      pg::Result r,
      conn.Exec("SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "WHERE i.indrelid = $1::oid AND a.attname = $2 AND i.indisunique "
                "AND i.indimmediate AND i.indisvalid AND i.indpred IS NULL "
                "AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum",
                {info.oid.c_str(), key.c_str()}, "checking the key column's constraint failed"));
  return PQntuples(r.get()) > 0;
}

std::string ColumnTypeFor(ValueType t) {
  switch (t) {
    case ValueType::kInt64:
      return "bigint";
    case ValueType::kDouble:
      return "double precision";
    case ValueType::kDecimal:
      return "numeric";
    case ValueType::kBool:
      return "boolean";
    case ValueType::kTimestamp:
      return "timestamptz";
    case ValueType::kDate:
      return "date";
    case ValueType::kJson:
      return "jsonb";
    case ValueType::kBytes:
      return "bytea";
    default:
      return "text";
  }
}

// The text a parameter carries for `v` into a column of SQL type `column_type`.
std::optional<std::string> ParamText(const Value& v, const std::string& column_type) {
  switch (v.type()) {
    case ValueType::kNull:
      return std::nullopt;
    case ValueType::kBool:
      return v.bool_value() ? "true" : "false";
    case ValueType::kInt64:
      return std::to_string(v.int_value());
    case ValueType::kDouble: {
      double d = v.double_value();
      if (std::isnan(d)) return "NaN";
      if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
      return fmt::format("{}", d);
    }
    case ValueType::kBytes: {
      if (column_type != "bytea") return v.ToString();  // base64 text
      std::string hex = "\\x";
      for (unsigned char c : v.text()) hex += fmt::format("{:02x}", c);
      return hex;
    }
    default:
      return v.text();
  }
}

class PostgresSession : public ActionSession {
 public:
  PostgresSession(Settings settings, SessionOptions options, Clock* clock,
                  std::unique_ptr<pg::Connection> conn, TableInfo table)
      : settings_(std::move(settings)),
        options_(std::move(options)),
        clock_(clock),
        conn_(std::move(conn)),
        table_(std::move(table)) {
    key_in_identity_ = std::find(options_.layout.identity.begin(), options_.layout.identity.end(),
                                 settings_.key_column) -
                       options_.layout.identity.begin();
  }

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override {
    results_.assign(batch.size(), std::nullopt);
    committed_any_ = false;
    if (!table_.exists) {
      auto first = std::find_if(batch.begin(), batch.end(),
                                [](const OutgoingRecord& r) { return !r.is_delete(); });
      if (first == batch.end()) {
        // Only deletes and no table yet: nothing to delete.
        return std::vector<absl::Status>(batch.size(), absl::OkStatus());
      }
      BACKFLOW_RETURN_IF_ERROR(WithRetries([&] { return CreateTable(*first); }));
    }
    std::vector<size_t> all(batch.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = i;
    absl::Status status = Deliver(batch, all);
    if (!status.ok() && !committed_any_) return status;
    std::vector<absl::Status> out;
    out.reserve(batch.size());
    for (auto& r : results_) out.push_back(r.has_value() ? *r : status);
    return out;
  }

  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  // Sends the records `idx` of `batch` in one transaction; on a data error,
  // bisects. Returns non-OK only for failures that are not about a record.
  absl::Status Deliver(std::span<const OutgoingRecord> batch, const std::vector<size_t>& idx) {
    if (idx.empty()) return absl::OkStatus();
    std::string sqlstate;
    absl::Status status = WithRetries([&] { return RunTransaction(batch, idx, &sqlstate); });
    if (status.ok()) {
      for (size_t i : idx) results_[i] = absl::OkStatus();
      committed_any_ = true;
      return absl::OkStatus();
    }
    bool data_error = sqlstate.size() == 5 && (sqlstate.starts_with("22") ||
                                               sqlstate.starts_with("23") || sqlstate == "21000");
    if (!data_error) return status;
    if (idx.size() == 1) {
      results_[idx[0]] = absl::InvalidArgumentError(std::string(status.message()));
      return absl::OkStatus();
    }
    std::vector<size_t> left(idx.begin(), idx.begin() + idx.size() / 2);
    std::vector<size_t> right(idx.begin() + idx.size() / 2, idx.end());
    BACKFLOW_RETURN_IF_ERROR(Deliver(batch, left));
    return Deliver(batch, right);
  }

  // Runs `attempt` until it succeeds, fails for good or kMaxAttempts are
  // used; transient failures reconnect and back off on the clock.
  template <typename F>
  absl::Status WithRetries(F attempt) {
    absl::Status status;
    auto delay = std::chrono::milliseconds(500);
    for (int i = 0; i < kMaxAttempts; ++i) {
      if (i > 0) {
        clock_->SleepFor(delay);
        delay *= 2;
      }
      if (conn_ == nullptr || conn_->broken()) {
        conn_.reset();
        absl::StatusOr<std::unique_ptr<pg::Connection>> conn =
            pg::Connection::Open(ConnectOptionsFor(settings_));
        if (!conn.ok()) {
          status = conn.status();
          if (IsRetryable(status)) continue;
          return status;
        }
        conn_ = *std::move(conn);
      }
      status = attempt();
      if (status.ok() || !IsRetryable(status)) return status;
    }
    return absl::UnavailableError(
        fmt::format("PostgreSQL table {}: giving up after {} attempts: {}",
                    settings_.DisplayTable(), kMaxAttempts, status.message()));
  }

  absl::Status Exec(const std::string& sql, const std::vector<std::optional<std::string>>& params,
                    std::string* sqlstate, std::string_view what) {
    std::vector<const char*> raw;
    raw.reserve(params.size());
    for (const auto& p : params) raw.push_back(p.has_value() ? p->c_str() : nullptr);
    pg::Result r(PQexecParams(conn_->get(), sql.c_str(), static_cast<int>(raw.size()), nullptr,
                              raw.data(), nullptr, nullptr, 0));
    ExecStatusType st = r != nullptr ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return absl::OkStatus();
    if (sqlstate != nullptr && r != nullptr) {
      const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
      *sqlstate = state != nullptr ? state : "";
    }
    return conn_->ErrorFromResult(r.get(), what);
  }

  const std::string& ColumnType(const std::string& column) const {
    static const std::string kText = "text";
    auto it = table_.column_types.find(column);
    return it != table_.column_types.end() ? it->second : kText;
  }

  absl::Status RunTransaction(std::span<const OutgoingRecord> batch, const std::vector<size_t>& idx,
                              std::string* sqlstate) {
    sqlstate->clear();
    BACKFLOW_RETURN_IF_ERROR(Exec("BEGIN", {}, nullptr, "starting a transaction failed"));
    absl::Status status = RunStatements(batch, idx, sqlstate);
    if (status.ok()) status = Exec("COMMIT", {}, sqlstate, "record rejected");
    if (!status.ok() && !conn_->broken()) {
      (void)Exec("ROLLBACK", {}, nullptr, "rollback failed");
    }
    return status;
  }

  // Groups consecutive records of the same kind with distinct keys into one
  // statement each, so input order is preserved and ON CONFLICT never sees a
  // key twice in one statement.
  absl::Status RunStatements(std::span<const OutgoingRecord> batch, const std::vector<size_t>& idx,
                             std::string* sqlstate) {
    const auto& fields = options_.layout.fields;
    size_t per_row = std::max<size_t>(1, fields.size());
    size_t max_rows = std::max<size_t>(1, kMaxParamsPerStatement / per_row);
    size_t start = 0;
    while (start < idx.size()) {
      bool del = batch[idx[start]].is_delete();
      std::set<std::string> keys;
      size_t end = start;
      while (end < idx.size() && end - start < max_rows) {
        const OutgoingRecord& r = batch[idx[end]];
        if (r.is_delete() != del || !keys.insert(r.key).second) break;
        ++end;
      }
      std::vector<const OutgoingRecord*> group;
      for (size_t i = start; i < end; ++i) group.push_back(&batch[idx[i]]);
      BACKFLOW_RETURN_IF_ERROR(del ? Delete(group, sqlstate) : Upsert(group, sqlstate));
      start = end;
    }
    return absl::OkStatus();
  }

  absl::Status Upsert(const std::vector<const OutgoingRecord*>& group, std::string* sqlstate) {
    const auto& fields = options_.layout.fields;
    std::string columns;
    std::string updates;
    for (const std::string& f : fields) {
      if (!columns.empty()) columns += ", ";
      columns += pg::QuoteIdentifier(f);
      if (f == settings_.key_column) continue;
      if (!updates.empty()) updates += ", ";
      updates += fmt::format("{0} = EXCLUDED.{0}", pg::QuoteIdentifier(f));
    }
    std::string sql =
        fmt::format("INSERT INTO {} ({}) VALUES ", settings_.QualifiedTable(), columns);
    std::vector<std::optional<std::string>> params;
    params.reserve(group.size() * fields.size());
    for (size_t r = 0; r < group.size(); ++r) {
      sql += r == 0 ? "(" : ", (";
      for (size_t c = 0; c < fields.size(); ++c) {
        const std::string& type = ColumnType(fields[c]);
        const Value& v = c < group[r]->values.size() ? group[r]->values[c] : Value();
        params.push_back(ParamText(v, type));
        sql += fmt::format("{}${}::{}", c == 0 ? "" : ", ", params.size(), type);
      }
      sql += ")";
    }
    sql += fmt::format(" ON CONFLICT ({}) DO ", pg::QuoteIdentifier(settings_.key_column));
    sql += updates.empty() ? "NOTHING" : "UPDATE SET " + updates;
    return Exec(sql, params, sqlstate, "record rejected");
  }

  absl::Status Delete(const std::vector<const OutgoingRecord*>& group, std::string* sqlstate) {
    const std::string& type = ColumnType(settings_.key_column);
    std::string sql = fmt::format("DELETE FROM {} WHERE {} IN (", settings_.QualifiedTable(),
                                  pg::QuoteIdentifier(settings_.key_column));
    std::vector<std::optional<std::string>> params;
    for (const OutgoingRecord* r : group) {
      const Value& v = key_in_identity_ < r->values.size() ? r->values[key_in_identity_] : Value();
      params.push_back(ParamText(v, type));
      sql += fmt::format("{}${}::{}", params.size() == 1 ? "" : ", ", params.size(), type);
    }
    sql += ")";
    return Exec(sql, params, sqlstate, "delete rejected");
  }

  absl::Status CreateTable(const OutgoingRecord& first) {
    std::string columns;
    const auto& fields = options_.layout.fields;
    for (size_t c = 0; c < fields.size(); ++c) {
      ValueType t = c < first.values.size() ? first.values[c].type() : ValueType::kNull;
      columns +=
          fmt::format("{}{} {}{}", c == 0 ? "" : ", ", pg::QuoteIdentifier(fields[c]),
                      ColumnTypeFor(t), fields[c] == settings_.key_column ? " PRIMARY KEY" : "");
    }
    BACKFLOW_RETURN_IF_ERROR(
        Exec(fmt::format("CREATE TABLE IF NOT EXISTS {} ({})", settings_.QualifiedTable(), columns),
             {}, nullptr, fmt::format("creating table {} failed", settings_.DisplayTable())));
    BACKFLOW_ASSIGN_OR_RETURN(table_, LoadTable(*conn_, settings_));
    if (!table_.exists) {
      return absl::InternalError(
          fmt::format("table {} is missing right after CREATE TABLE", settings_.DisplayTable()));
    }
    return absl::OkStatus();
  }

  Settings settings_;
  SessionOptions options_;
  Clock* clock_;
  std::unique_ptr<pg::Connection> conn_;
  TableInfo table_;
  size_t key_in_identity_ = 0;
  std::vector<std::optional<absl::Status>> results_;
  bool committed_any_ = false;
};

class PostgresDestination : public Destination {
 public:
  PostgresDestination(Settings settings, Clock* clock)
      : settings_(std::move(settings)), clock_(clock) {}

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn, pg::Connection::Open(ConnectOptionsFor(settings_)));
    BACKFLOW_ASSIGN_OR_RETURN(TableInfo table, LoadTable(*conn, settings_));
    if (table.exists) {
      BACKFLOW_ASSIGN_OR_RETURN(
          pg::Result r,
          conn->Exec("SELECT has_table_privilege($1::oid, 'SELECT, INSERT, UPDATE, DELETE')",
                     {table.oid.c_str()}, "checking privileges failed"));
      if (std::string_view(PQgetvalue(r.get(), 0, 0)) != "t") {
        return absl::PermissionDeniedError(fmt::format(
            "the user of `url` may not INSERT, UPDATE and DELETE on table {}; GRANT it these "
            "privileges",
            settings_.DisplayTable()));
      }
      return absl::OkStatus();
    }
    if (!settings_.create_table) return MissingTable();
    BACKFLOW_ASSIGN_OR_RETURN(
        pg::Result r, conn->Exec("SELECT has_schema_privilege(n.oid, 'CREATE') FROM pg_namespace n "
                                 "WHERE n.nspname = $1",
                                 {settings_.schema.c_str()}, "checking privileges failed"));
    if (PQntuples(r.get()) == 0) {
      return absl::FailedPreconditionError(fmt::format(
          "schema \"{}\" does not exist; create it or change `schema`", settings_.schema));
    }
    if (std::string_view(PQgetvalue(r.get(), 0, 0)) != "t") {
      return absl::PermissionDeniedError(fmt::format(
          "table {} does not exist and the user of `url` may not create tables in schema "
          "\"{}\"; create the table or GRANT CREATE ON SCHEMA",
          settings_.DisplayTable(), settings_.schema));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override {
    const auto& identity = options.layout.identity;
    if (std::find(identity.begin(), identity.end(), settings_.key_column) == identity.end()) {
      return absl::FailedPreconditionError(fmt::format(
          "key_column {} must be mapped from the model's unique identifier", settings_.key_column));
    }
    const auto& fields = options.layout.fields;
    if (std::find(fields.begin(), fields.end(), settings_.key_column) == fields.end()) {
      return absl::FailedPreconditionError(fmt::format(
          "key_column {} is not among the mapped fields; map the model's unique identifier to it",
          settings_.key_column));
    }
    BACKFLOW_ASSIGN_OR_RETURN(auto conn, pg::Connection::Open(ConnectOptionsFor(settings_)));
    BACKFLOW_ASSIGN_OR_RETURN(TableInfo table, LoadTable(*conn, settings_));
    if (!table.exists) {
      if (!settings_.create_table) return MissingTable();
    } else {
      std::string missing;
      for (const std::string& f : fields) {
        if (table.column_types.count(f) == 0) missing += (missing.empty() ? "" : ", ") + f;
      }
      if (!missing.empty()) {
        return absl::FailedPreconditionError(fmt::format(
            "table {} has no column(s) {}; add them (ALTER TABLE ... ADD COLUMN) or change the "
            "mapping",
            settings_.DisplayTable(), missing));
      }
      BACKFLOW_ASSIGN_OR_RETURN(bool unique,
                                HasUsableUniqueIndex(*conn, table, settings_.key_column));
      if (!unique) {
        return absl::FailedPreconditionError(fmt::format(
            "key_column {} of table {} has no PRIMARY KEY or UNIQUE constraint of its own, which "
            "upserts need; add one (ALTER TABLE ... ADD PRIMARY KEY ({}))",
            settings_.key_column, settings_.DisplayTable(), settings_.key_column));
      }
    }
    return std::unique_ptr<ActionSession>(
        new PostgresSession(settings_, options, clock_, std::move(conn), std::move(table)));
  }

 private:
  absl::Status MissingTable() const {
    return absl::FailedPreconditionError(
        fmt::format("table {} does not exist; create it with a PRIMARY KEY on {} or set "
                    "create_table: true to let Backflow create it",
                    settings_.DisplayTable(), settings_.key_column));
  }

  Settings settings_;
  Clock* clock_;
};

SettingSpec Setting(std::string key, std::string label, std::string description, SettingType type,
                    bool required, nlohmann::json default_value = nullptr, bool secret = false) {
  SettingSpec s;
  s.key = std::move(key);
  s.label = std::move(label);
  s.description = std::move(description);
  s.type = type;
  s.required = required;
  s.secret = secret;
  s.default_value = std::move(default_value);
  return s;
}

std::string StringSetting(const nlohmann::json& settings, const char* key,
                          std::string fallback = "") {
  auto it = settings.find(key);
  return it != settings.end() && it->is_string() ? it->get<std::string>() : fallback;
}

}  // namespace

DestinationDefinition PostgresDestinationDefinition() {
  DestinationDefinition def;
  def.type = "postgres";
  def.title = "PostgreSQL";
  def.description =
      "Upserts model rows into a PostgreSQL table (INSERT ... ON CONFLICT) and deletes rows "
      "whose records left the model. Rows whose values do not fit the table are reported one "
      "by one; the rest of the batch is written.";
  def.settings = {
      Setting("url", "Connection URL",
              "postgresql://user@host:5432/database (or a libpq connection string) of the "
              "database to write to",
              SettingType::kString, true),
      Setting("password", "Password",
              "Password of the url's user, e.g. ${env:PG_PASSWORD}; overrides one in the url",
              SettingType::kString, false, nullptr, true),
      Setting("schema", "Schema", "Schema of the table", SettingType::kString, false, "public"),
      Setting("table", "Table", "Table to upsert into (exact name, case-sensitive)",
              SettingType::kString, true),
      Setting("key_column", "Key column",
              "Column identifying a row; map the model's unique identifier to it. Needs a "
              "PRIMARY KEY or UNIQUE constraint",
              SettingType::kString, true),
      Setting("create_table", "Create table",
              "Create the table on the first sync when it does not exist (column types from "
              "the first record, key_column as PRIMARY KEY)",
              SettingType::kBoolean, false, false),
  };
  ActionSpec upsert;
  upsert.id = "upsert";
  upsert.title = "Upsert rows";
  upsert.description =
      "Inserts new records and updates changed ones by key_column; deletes the rows of "
      "deleted records. Each mapped field key is a column name.";
  upsert.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                       RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                       RecordSelection::kAll};
  upsert.allows_extra_fields = true;
  upsert.default_batch_records = 500;
  upsert.max_batch_records = 5000;
  upsert.validate = [](const nlohmann::json& settings, const std::vector<MappedField>& fields) {
    std::vector<std::string> problems;
    std::string key = StringSetting(settings, "key_column");
    bool mapped = std::any_of(fields.begin(), fields.end(),
                              [&](const MappedField& f) { return f.field == key; });
    if (!key.empty() && !mapped) {
      problems.push_back(
          fmt::format("key_column \"{}\" is not one of the mapped fields; map the model's unique "
                      "identifier to the field \"{}\"",
                      key, key));
    }
    return problems;
  };
  def.actions.push_back(std::move(upsert));
  def.create = [](const nlohmann::json& settings,
                  const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Destination>> {
    Settings s;
    s.url = StringSetting(settings, "url");
    s.password = StringSetting(settings, "password");
    s.schema = StringSetting(settings, "schema", "public");
    s.table = StringSetting(settings, "table");
    s.key_column = StringSetting(settings, "key_column");
    auto create = settings.find("create_table");
    s.create_table = create != settings.end() && create->is_boolean() && create->get<bool>();
    const std::pair<const char*, const std::string*> required[] = {
        {"url", &s.url}, {"table", &s.table}, {"key_column", &s.key_column}};
    for (const auto& [key, value] : required) {
      if (value->empty()) {
        return absl::InvalidArgumentError(fmt::format("{}: required setting is missing", key));
      }
    }
    Clock* clock = env.clock != nullptr ? env.clock : &SystemClock();
    return std::unique_ptr<Destination>(new PostgresDestination(std::move(s), clock));
  };
  return def;
}

}  // namespace backflow
