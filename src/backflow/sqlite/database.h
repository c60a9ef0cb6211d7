// Thin RAII wrappers over the SQLite C API, shared by the SQLite source, the
// SQLite state store and the run spool. Errors come back as absl::Status
// (kUnavailable for busy/locked/IO, kInvalidArgument for SQL errors,
// kDataLoss for corruption). A Database and its Statements are used from one
// thread at a time.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace backflow::sqlite {

absl::Status StatusFromSqlite(int rc, sqlite3* db, std::string_view context);

class Statement {
 public:
  Statement() = default;
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  ~Statement();
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Binders take 1-based parameter indexes.
  Statement& Bind(int index, std::string_view text);
  Statement& Bind(int index, int64_t value);
  Statement& BindBlob(int index, std::string_view bytes);
  Statement& BindDouble(int index, double value);
  Statement& BindNull(int index);

  // true when a row is available, false when done.
  absl::StatusOr<bool> Step();
  // Steps to completion, for statements that return no rows.
  absl::Status Run();
  void Reset();

  int64_t ColumnInt(int i) const { return sqlite3_column_int64(stmt_, i); }
  double ColumnDouble(int i) const { return sqlite3_column_double(stmt_, i); }
  std::string_view ColumnText(int i) const;
  std::string_view ColumnBlob(int i) const;
  bool ColumnIsNull(int i) const { return sqlite3_column_type(stmt_, i) == SQLITE_NULL; }
  sqlite3_stmt* raw() const { return stmt_; }

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
};

class Database {
 public:
  // `flags`: SQLITE_OPEN_* flags. Sets a busy timeout.
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::string& path, int flags);
  ~Database();

  absl::Status Exec(const std::string& sql);
  absl::StatusOr<Statement> Prepare(std::string_view sql);
  sqlite3* raw() const { return db_; }
  int64_t LastInsertId() const { return sqlite3_last_insert_rowid(db_); }

 private:
  explicit Database(sqlite3* db) : db_(db) {}
  sqlite3* db_;
};

}  // namespace backflow::sqlite
