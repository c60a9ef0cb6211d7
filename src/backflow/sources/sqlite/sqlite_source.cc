#include "backflow/sources/sqlite/sqlite_source.h"

#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/status_macros.h"
#include "backflow/sources/source.h"
#include "backflow/sqlite/database.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using sqlite::Database;
using sqlite::Statement;

// The declared type's intent, or kNull when it has none.
ValueType DeclaredType(const char* decl) {
  if (decl == nullptr) return ValueType::kNull;
  std::string t = absl::AsciiStrToUpper(decl);
  if (absl::StrContains(t, "BOOL")) return ValueType::kBool;
  if (absl::StrContains(t, "INT")) return ValueType::kInt64;
  if (absl::StrContains(t, "REAL") || absl::StrContains(t, "FLOA") ||
      absl::StrContains(t, "DOUB")) {
    return ValueType::kDouble;
  }
  if (absl::StrContains(t, "DEC") || absl::StrContains(t, "NUMERIC")) return ValueType::kDecimal;
  if (absl::StrContains(t, "TIMESTAMP") || absl::StrContains(t, "DATETIME")) {
    return ValueType::kTimestamp;
  }
  if (absl::StrContains(t, "DATE")) return ValueType::kDate;
  if (absl::StrContains(t, "JSON")) return ValueType::kJson;
  if (absl::StrContains(t, "BLOB")) return ValueType::kBytes;
  return ValueType::kString;
}

ValueType StorageType(int storage) {
  switch (storage) {
    case SQLITE_INTEGER:
      return ValueType::kInt64;
    case SQLITE_FLOAT:
      return ValueType::kDouble;
    case SQLITE_BLOB:
      return ValueType::kBytes;
    default:
      return ValueType::kString;
  }
}

class SqliteRowReader : public RowReader {
 public:
  SqliteRowReader(std::unique_ptr<Database> db, Statement stmt)
      : db_(std::move(db)), stmt_(std::move(stmt)) {}

  // Steps to the first row so that undeclared column types can be inferred.
  absl::Status Init() {
    int n = sqlite3_column_count(stmt_.raw());
    auto first = stmt_.Step();
    if (!first.ok()) return first.status();
    pending_ = *first;
    for (int i = 0; i < n; ++i) {
      Column c;
      c.name = sqlite3_column_name(stmt_.raw(), i);
      const char* decl = sqlite3_column_decltype(stmt_.raw(), i);
      c.source_type = decl != nullptr ? decl : "";
      c.type = DeclaredType(decl);
      if (c.type == ValueType::kNull) {
        int storage = pending_ ? sqlite3_column_type(stmt_.raw(), i) : SQLITE_TEXT;
        c.type = storage == SQLITE_NULL ? ValueType::kString : StorageType(storage);
        if (c.source_type.empty()) c.source_type = "(expression)";
      }
      schema_.push_back(std::move(c));
    }
    return absl::OkStatus();
  }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!pending_) {
      if (done_) return false;
      BACKFLOW_ASSIGN_OR_RETURN(bool more, stmt_.Step());
      if (!more) {
        done_ = true;
        return false;
      }
    }
    pending_ = false;
    row.resize(schema_.size());
    for (size_t i = 0; i < schema_.size(); ++i) row[i] = Convert(static_cast<int>(i));
    return true;
  }

 private:
  Value Convert(int i) const {
    sqlite3_stmt* s = stmt_.raw();
    int storage = sqlite3_column_type(s, i);
    if (storage == SQLITE_NULL) return Value::Null();
    ValueType want = schema_[i].type;
    switch (want) {
      case ValueType::kBool:
        if (storage == SQLITE_INTEGER) return Value::Bool(sqlite3_column_int64(s, i) != 0);
        break;
      case ValueType::kInt64:
        if (storage == SQLITE_INTEGER) return Value::Int64(sqlite3_column_int64(s, i));
        break;
      case ValueType::kDouble:
        if (storage == SQLITE_INTEGER || storage == SQLITE_FLOAT) {
          return Value::Double(sqlite3_column_double(s, i));
        }
        break;
      case ValueType::kDecimal:
        if (storage == SQLITE_INTEGER) {
          return Value::Text(ValueType::kDecimal, std::to_string(sqlite3_column_int64(s, i)));
        }
        if (storage == SQLITE_FLOAT) return Value::Double(sqlite3_column_double(s, i));
        break;
      case ValueType::kBytes:
        return Value::Text(ValueType::kBytes, std::string(stmt_.ColumnBlob(i)));
      case ValueType::kTimestamp:
      case ValueType::kDate:
      case ValueType::kJson:
      case ValueType::kString:
        if (storage == SQLITE_TEXT) return Value::Text(want, std::string(stmt_.ColumnText(i)));
        break;
      case ValueType::kNull:
        break;
    }
    // The value does not match the column's declared type (SQLite allows
    // that): keep it as what it is.
    switch (storage) {
      case SQLITE_INTEGER:
        return Value::Int64(sqlite3_column_int64(s, i));
      case SQLITE_FLOAT:
        return Value::Double(sqlite3_column_double(s, i));
      case SQLITE_BLOB:
        return Value::Text(ValueType::kBytes, std::string(stmt_.ColumnBlob(i)));
      default:
        return Value::String(std::string(stmt_.ColumnText(i)));
    }
  }

  std::unique_ptr<Database> db_;
  Statement stmt_;
  Schema schema_;
  bool pending_ = false;
  bool done_ = false;
};

class SqliteSource : public Source {
 public:
  explicit SqliteSource(std::string path) : path_(std::move(path)) {}

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, Query("SELECT 1"));
    Row row;
    return reader->Next(row).status();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    std::error_code ec;
    if (!std::filesystem::exists(path_, ec)) {
      return absl::FailedPreconditionError(fmt::format(
          "SQLite database {} does not exist; check the source's path (relative paths are "
          "relative to the workspace file)",
          path_));
    }
    BACKFLOW_ASSIGN_OR_RETURN(auto db,
                              Database::Open(path_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX));
    auto stmt = db->Prepare(sql);
    if (!stmt.ok()) {
      return absl::InvalidArgumentError(
          fmt::format("the query failed: {}", stmt.status().message()));
    }
    auto reader = std::make_unique<SqliteRowReader>(std::move(db), std::move(*stmt));
    absl::Status init = reader->Init();
    if (!init.ok()) {
      return absl::Status(init.code(), fmt::format("the query failed: {}", init.message()));
    }
    return std::unique_ptr<RowReader>(std::move(reader));
  }

 private:
  std::string path_;
};

}  // namespace

SourceDefinition SqliteSourceDefinition() {
  SourceDefinition def;
  def.type = "sqlite";
  def.title = "SQLite";
  def.description = "A local SQLite database file, opened read-only.";
  def.maturity = "stable";
  def.settings = {{.key = "path",
                   .label = "Database file",
                   .description = "path of the .db file, relative to the workspace file",
                   .type = SettingType::kString,
                   .required = true,
                   .is_path = true}};
  def.create = [](const nlohmann::json& settings,
                  const ConnectorEnv&) -> absl::StatusOr<std::unique_ptr<Source>> {
    return std::make_unique<SqliteSource>(settings.at("path").get<std::string>());
  };
  return def;
}

}  // namespace backflow
