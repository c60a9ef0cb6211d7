// Databricks' SQL for warehouse change detection through pass tables
// (../warehouse_sql/pass_change_detection.h). Every statement is one
// Statement Execution API request; its values travel as named STRING
// parameters (the API takes `:name` markers only, not `?`, so the layer's
// `?`s become :p1, :p2, ...).
//   row text:   CAST(x AS STRING); to_json(x) for ARRAY/MAP/STRUCT/VARIANT;
//               hex(x) for BINARY
//   hash:       md5(text) (32 lowercase hex)
//   key types:  BIGINT/INT/SMALLINT/TINYINT (CAST writes the digits, as
//               Backflow's decoder does) and STRING/VARCHAR/CHAR
//   key column: STRING COLLATE UTF8_BINARY (compares by UTF-8 bytes, also in
//               a schema with another default collation; collations need
//               Databricks SQL or Runtime 16.1+)
//   JSON array: (SELECT explode(from_json(?, 'ARRAY<STRING>')) AS value): an
//               element that is itself an array arrives as its JSON text
//               (from_json's STRING conversion), read by get_json_object
//   tables:     Delta (the default table format); CHECKPOINTS declares no
//               PRIMARY KEY (informational only, and refused outside Unity
//               Catalog); the keys table is created, then filled by INSERT
//               ... SELECT, because Databricks SQL before Runtime 18 refuses
//               parameter markers in some DDL statements.
//   integers:   CAST(? AS BIGINT) (ANSI store assignment refuses STRING into
//               BIGINT).
//   privilege refusals: [INSUFFICIENT_PERMISSIONS] / PERMISSION_DENIED /
//               SQLSTATE 42501 ("User does not have CREATE SCHEMA on Catalog
//               'main'"), which the source reports as kPermissionDenied.
// Not verified against a live workspace (documentation and Spark sources
// only): the JSON text of nested elements under from_json(..., ARRAY<STRING>)
// on every runtime, and the largest parameter value the API accepts (Apply
// binds up to MaxBindingBytes()).
#include <utility>

#include "backflow/common/fmt_absl.h"
#include "backflow/sources/databricks/databricks_source.h"
#include "fmt/format.h"

namespace backflow {
namespace {

std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

class DatabricksWarehouseSql : public WarehouseSql {
 public:
  explicit DatabricksWarehouseSql(DatabricksSqlRunner run) : run_(std::move(run)) {}

  absl::StatusOr<std::unique_ptr<RowReader>> Run(
      const std::string& sql, const std::vector<std::string>& bindings) override {
    if (bindings.empty()) return run_(sql, {}, cancel());
    auto named = DatabricksNamedMarkers(sql, bindings.size());
    if (!named.ok()) return named.status();
    std::vector<DatabricksParameter> parameters;
    parameters.reserve(bindings.size());
    for (size_t i = 0; i < bindings.size(); ++i) {
      parameters.push_back({fmt::format("p{}", i + 1), bindings[i]});
    }
    return run_(*named, parameters, cancel());
  }

  std::string QuoteIdentifier(std::string_view name) const override {
    return DatabricksQuoteIdentifier(name);
  }

  std::string ToText(const Column& column, const std::string& expr) const override {
    if (column.type == ValueType::kJson) return fmt::format("to_json({})", expr);
    if (column.type == ValueType::kBytes) return fmt::format("hex({})", expr);
    return fmt::format("CAST({} AS STRING)", expr);
  }

  bool KeyTypeSupported(const Column& column) const override {
    if (column.type == ValueType::kInt64) return true;  // BIGINT, INT, SMALLINT, TINYINT
    if (column.type != ValueType::kString) return false;
    const std::string type = Upper(column.source_type);
    return type.starts_with("STRING") || type.starts_with("VARCHAR") || type.starts_with("CHAR");
  }

  std::string KeyCastAdvice(const std::string& key) const override {
    return fmt::format("CAST({0} AS STRING) AS {0}", QuoteIdentifier(key));
  }

  std::string Md5Hex(const std::string& expr) const override {
    return fmt::format("md5({})", expr);
  }
  std::string TextType() const override { return "STRING"; }
  std::string KeyType() const override { return "STRING COLLATE UTF8_BINARY"; }
  std::string IntegerType() const override { return "BIGINT"; }

  std::string JsonArrayTable(const std::string& alias) const override {
    return fmt::format("(SELECT explode(from_json(?, 'ARRAY<STRING>')) AS value) AS {}", alias);
  }
  std::string JsonValueText(const std::string& alias) const override {
    return fmt::format("{}.value", alias);
  }
  std::string JsonItemText(const std::string& alias, int index) const override {
    return fmt::format("get_json_object({}.value, '$[{}]')", alias, index);
  }

  bool IsPrivilegeError(const absl::Status& status) const override {
    if (status.code() != absl::StatusCode::kPermissionDenied) return false;
    const std::string message(status.message());
    return message.find("INSUFFICIENT_PERMISSIONS") != std::string::npos ||
           message.find("PERMISSION_DENIED") != std::string::npos ||
           message.find("42501") != std::string::npos;
  }

  std::string PrivilegeAdvice(Step step, const std::string& schema) override {
    std::string principal = "<principal>", catalog = "<catalog>";
    auto who = run_("SELECT current_user(), current_catalog()", {}, cancel());
    if (who.ok()) {
      Row row;
      auto more = (*who)->Next(row);
      if (more.ok() && *more && row.size() == 2) {
        if (!row[0].is_null()) principal = QuoteIdentifier(row[0].ToString());
        if (!row[1].is_null()) catalog = QuoteIdentifier(row[1].ToString());
      }
    }
    const std::string qualified = fmt::format("{}.{}", catalog, schema);
    const std::string use_schema = fmt::format(
        "GRANT USE CATALOG ON CATALOG {0} TO {2}; GRANT USE SCHEMA, CREATE TABLE, SELECT, MODIFY "
        "ON SCHEMA {1} TO {2};",
        catalog, qualified, principal);
    switch (step) {
      case Step::kCreateSchema:
        return fmt::format(
            "{0} may not create schema {1}. Have an administrator run `GRANT USE CATALOG, CREATE "
            "SCHEMA ON CATALOG {2} TO {0};` (or create the schema and run `{3}`), or set "
            "state_schema on the source to a schema where it may create tables",
            principal, qualified, catalog, use_schema);
      case Step::kCreateTable:
        return fmt::format(
            "{0} may not create tables in schema {1}. Have an administrator run `{2}`, or set "
            "state_schema on the source to a schema where it may create tables",
            principal, qualified, use_schema);
      case Step::kUseTables:
        break;
    }
    return fmt::format(
        "{0} may not read and write the tables of schema {1}. Have an administrator run `{2}` "
        "(SELECT and MODIFY on the schema cover its tables), or set state_schema on the source "
        "to a schema of its own",
        principal, qualified, use_schema);
  }

  bool BindingsInCreateTableAs() const override { return false; }
  std::string IntegerParameter() const override { return "CAST(? AS BIGINT)"; }
  std::string PrimaryKey(const std::string&) const override { return ""; }

 private:
  DatabricksSqlRunner run_;
};

}  // namespace

std::string DatabricksQuoteIdentifier(std::string_view name) {
  std::string out = "`";
  for (char c : name) {
    if (c == '`') out.push_back('`');
    out.push_back(c);
  }
  out.push_back('`');
  return out;
}

absl::StatusOr<std::string> DatabricksNamedMarkers(const std::string& sql, size_t bindings) {
  std::string out;
  out.reserve(sql.size() + bindings * 3);
  size_t count = 0;
  const size_t n = sql.size();
  for (size_t i = 0; i < n; ++i) {
    const char c = sql[i];
    if (c == '\'' || c == '"' || c == '`') {  // a literal or quoted name, copied as-is
      size_t end = i + 1;
      while (end < n && sql[end] != c) end += (c != '`' && sql[end] == '\\') ? 2 : 1;
      end = std::min(end, n - 1);
      out.append(sql, i, end - i + 1);
      i = end;
    } else if (c == '-' && i + 1 < n && sql[i + 1] == '-') {  // a comment to the end of the line
      size_t end = sql.find('\n', i);
      if (end == std::string::npos) end = n;
      out.append(sql, i, end - i);
      i = end - 1;
    } else if (c == '?') {
      out += fmt::format(":p{}", ++count);
    } else {
      out.push_back(c);
    }
  }
  if (count != bindings) {
    return absl::InternalError(
        fmt::format("a warehouse change detection statement has {} placeholders for {} values",
                    count, bindings));
  }
  return out;
}

std::unique_ptr<WarehouseSql> NewDatabricksWarehouseSql(DatabricksSqlRunner run) {
  return std::make_unique<DatabricksWarehouseSql>(std::move(run));
}

}  // namespace backflow
