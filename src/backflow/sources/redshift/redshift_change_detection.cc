#include "backflow/sources/redshift/redshift_change_detection.h"

#include <cctype>
#include <utility>

#include "absl/strings/ascii.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/sql_identifier.h"
#include "fmt/format.h"

namespace backflow {
namespace {

constexpr char kText[] = "VARCHAR(65535)";

bool IsPlainLowerIdentifier(std::string_view name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    if (!(c >= 'a' && c <= 'z') && !std::isdigit(static_cast<unsigned char>(c)) && c != '_') {
      return false;
    }
  }
  return true;
}

class RedshiftWarehouseSql : public WarehouseSql {
 public:
  explicit RedshiftWarehouseSql(std::unique_ptr<RedshiftSqlTransport> transport)
      : transport_(std::move(transport)) {}

  absl::StatusOr<std::unique_ptr<RowReader>> Run(
      const std::string& sql, const std::vector<std::string>& bindings) override {
    return transport_->Run(sql, bindings, cancel());
  }

  absl::Status RunAll(const std::vector<BoundSql>& statements) override {
    return transport_->RunAll(statements);
  }

  std::string QuoteIdentifier(std::string_view name) const override {
    return QuoteSqlIdentifier(name);
  }

  std::string ToText(const Column& column, const std::string& expr) const override {
    switch (column.type) {
      case ValueType::kJson:
        return fmt::format("JSON_SERIALIZE({})", expr);
      case ValueType::kBool:
        return fmt::format("CASE WHEN {} THEN 'true' ELSE 'false' END", expr);
      case ValueType::kBytes:
        return fmt::format("FROM_VARBYTE({}, 'hex')", expr);
      default:
        return fmt::format("CAST({} AS {})", expr, kText);
    }
  }

  bool KeyTypeSupported(const Column& column) const override {
    if (column.type == ValueType::kInt64) return true;  // smallint, integer, bigint
    if (column.type != ValueType::kString) return false;
    const std::string t = absl::AsciiStrToLower(column.source_type);
    return t.starts_with("character varying") || t.starts_with("varchar") || t == "text";
  }

  std::string KeyCastAdvice(const std::string& key) const override {
    return fmt::format("CAST({0} AS VARCHAR(256)) AS {0}", QuoteIdentifier(key));
  }

  std::string Md5Hex(const std::string& expr) const override {
    return fmt::format("MD5({})", expr);
  }
  std::string TextType() const override { return kText; }
  std::string KeyType() const override { return fmt::format("{} COLLATE case_sensitive", kText); }
  std::string IntegerType() const override { return "BIGINT"; }

  std::string JsonArrayTable(const std::string& alias) const override {
    return fmt::format("(SELECT JSON_PARSE(?) AS elements) AS {0}_array, {0}_array.elements AS {0}",
                       alias);
  }
  std::string JsonValueText(const std::string& alias) const override {
    return fmt::format("CAST({} AS {})", alias, kText);
  }
  std::string JsonItemText(const std::string& alias, int index) const override {
    return fmt::format("CAST({}[{}] AS {})", alias, index, kText);
  }
  size_t MaxBindingBytes() const override { return 60000; }
  bool ChunkInFlightKeys() const override { return true; }

  std::string DiffersFrom(const std::string& a, const std::string& b) const override {
    return fmt::format("({0} IS NULL OR {0} <> {1})", a, b);
  }

  std::vector<BoundSql> ApplyBatch(const std::string& checkpoints, const std::string& mapping,
                                   const std::string& json) const override {
    std::string items;
    const char* names[] = {"record_key", "op",          "row_hash",
                           "version",    "fingerprint", "record_identity"};
    for (int i = 0; i < 6; ++i) {
      items += fmt::format("{}{} AS {}", i ? ", " : "", JsonItemText("j", i), names[i]);
    }
    const std::string writes = fmt::format("(SELECT {} FROM {}) AS w", items, JsonArrayTable("j"));
    // The target's unqualified name refers to it in UPDATE's WHERE.
    const std::string table = checkpoints.substr(checkpoints.rfind('.') + 1);
    return {
        {fmt::format("DELETE FROM {} WHERE mapping = ? AND record_key IN (SELECT w.record_key "
                     "FROM {} WHERE w.op = 'D')",
                     checkpoints, writes),
         {mapping, json}},
        {fmt::format("UPDATE {0} SET row_hash = w.row_hash, mapping_version = w.version, "
                     "fingerprint = w.fingerprint, record_identity = w.record_identity\n"
                     "FROM {1}\n"
                     "WHERE {2}.mapping = ? AND {2}.record_key = w.record_key AND w.op = 'U'",
                     checkpoints, writes, table),
         {json, mapping}},
        {fmt::format("INSERT INTO {0} (mapping, record_key, row_hash, mapping_version, "
                     "fingerprint, record_identity)\n"
                     "SELECT ?, w.record_key, w.row_hash, w.version, w.fingerprint, "
                     "w.record_identity FROM {1}\n"
                     "WHERE w.op = 'U' AND NOT EXISTS (SELECT 1 FROM {0} AS c WHERE c.mapping = ? "
                     "AND c.record_key = w.record_key)",
                     checkpoints, writes),
         {mapping, json, mapping}},
    };
  }

  bool IsPrivilegeError(const absl::Status& status) const override {
    if (status.code() == absl::StatusCode::kPermissionDenied) return true;
    const std::string message = absl::AsciiStrToLower(std::string(status.message()));
    return message.find("permission denied") != std::string::npos ||
           message.find("42501") != std::string::npos;
  }

  std::string PrivilegeAdvice(Step step, const std::string& schema) override {
    std::string user = "<user>", database = "<database>";
    auto who = transport_->Run("SELECT CURRENT_USER AS u, CURRENT_DATABASE() AS d", {}, cancel());
    if (who.ok()) {
      Row row;
      auto more = (*who)->Next(row);
      if (more.ok() && *more && row.size() == 2) {
        if (!row[0].is_null()) user = Name(row[0].ToString());
        if (!row[1].is_null()) database = Name(row[1].ToString());
      }
      while (more.ok() && *more) more = (*who)->Next(row);  // read to the end
    }
    switch (step) {
      case Step::kCreateSchema:
        return fmt::format(
            "user {0} may not create schema {1} in database {2}. Have an administrator run "
            "`GRANT CREATE ON DATABASE {2} TO {0};` (or create the schema and run `GRANT USAGE, "
            "CREATE ON SCHEMA {1} TO {0};`), or set state_schema on the source to a schema "
            "where the user may create tables",
            user, schema, database);
      case Step::kCreateTable:
        return fmt::format(
            "user {0} may not create tables in schema {1}. Have an administrator run `GRANT "
            "USAGE, CREATE ON SCHEMA {1} TO {0};`, or set state_schema on the source to a "
            "schema where the user may create tables",
            user, schema);
      case Step::kUseTables:
        break;
    }
    return fmt::format(
        "user {0} may not read and write the tables of schema {1}. Have an administrator run "
        "`GRANT USAGE, CREATE ON SCHEMA {1} TO {0}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL "
        "TABLES IN SCHEMA {1} TO {0};`, or set state_schema on the source to a schema of its "
        "own",
        user, schema);
  }

 private:
  // A user or database name as SQL: quoted unless plain lowercase.
  std::string Name(const std::string& name) const {
    return IsPlainLowerIdentifier(name) ? name : QuoteIdentifier(name);
  }

  std::unique_ptr<RedshiftSqlTransport> transport_;
};

}  // namespace

std::unique_ptr<WarehouseSql> NewRedshiftWarehouseSql(
    std::unique_ptr<RedshiftSqlTransport> transport) {
  return std::make_unique<RedshiftWarehouseSql>(std::move(transport));
}

std::string RewritePlaceholders(std::string_view sql,
                                const std::function<std::string(int)>& marker) {
  std::string out;
  out.reserve(sql.size() + 16);
  int n = 0;
  size_t i = 0;
  const size_t size = sql.size();
  while (i < size) {
    const char c = sql[i];
    if (c == '\'' || c == '"') {
      // A literal or quoted identifier; a doubled quote stays inside.
      size_t j = i + 1;
      while (j < size) {
        if (sql[j] == c) {
          if (j + 1 < size && sql[j + 1] == c) {
            j += 2;
            continue;
          }
          break;
        }
        if (c == '\'' && sql[j] == '\\' && j + 1 < size) ++j;  // backslash escape
        ++j;
      }
      j = std::min(j + 1, size);
      out.append(sql.substr(i, j - i));
      i = j;
    } else if (c == '-' && i + 1 < size && sql[i + 1] == '-') {
      size_t j = sql.find('\n', i);
      j = j == std::string_view::npos ? size : j;
      out.append(sql.substr(i, j - i));
      i = j;
    } else if (c == '/' && i + 1 < size && sql[i + 1] == '*') {
      size_t j = sql.find("*/", i + 2);
      j = j == std::string_view::npos ? size : j + 2;
      out.append(sql.substr(i, j - i));
      i = j;
    } else if (c == '?') {
      out += marker(++n);
      ++i;
    } else {
      out.push_back(c);
      ++i;
    }
  }
  return out;
}

}  // namespace backflow
