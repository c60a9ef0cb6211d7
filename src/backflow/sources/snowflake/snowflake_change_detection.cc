// Snowflake's SQL for warehouse change detection through pass tables
// (../warehouse_sql/pass_change_detection.h). Every statement is one SQL API
// request with TEXT bindings.
//   row text:   TO_VARCHAR(x), TO_JSON(x) for VARIANT/OBJECT/ARRAY
//   hash:       MD5(text) (32 lowercase hex)
//   key types:  FIXED scale 0 (TO_VARCHAR writes its digits, as Backflow's
//               decoder does) and TEXT
//   key column: VARCHAR COLLATE 'utf8' (compares by UTF-8 bytes whatever the
//               schema's DEFAULT_DDL_COLLATION)
//   JSON array: TABLE(FLATTEN(INPUT => PARSE_JSON(?))), items by GET(VALUE, i)
//   privilege refusals: error 003001 ("Insufficient privileges ...").
#include <utility>

#include "backflow/common/fmt_absl.h"
#include "backflow/common/sql_identifier.h"
#include "backflow/sources/snowflake/snowflake_source.h"
#include "fmt/format.h"

namespace backflow {
namespace {

class SnowflakeWarehouseSql : public WarehouseSql {
 public:
  explicit SnowflakeWarehouseSql(SnowflakeSqlRunner run) : run_(std::move(run)) {}

  absl::StatusOr<std::unique_ptr<RowReader>> Run(
      const std::string& sql, const std::vector<std::string>& bindings) override {
    return run_(sql, bindings, cancel());
  }

  std::string QuoteIdentifier(std::string_view name) const override {
    return QuoteSqlIdentifier(name);
  }

  std::string ToText(const Column& column, const std::string& expr) const override {
    if (column.type == ValueType::kJson) return fmt::format("TO_JSON({})", expr);
    return fmt::format("TO_VARCHAR({})", expr);
  }

  bool KeyTypeSupported(const Column& column) const override {
    if (column.type == ValueType::kInt64) return true;  // FIXED with scale 0
    return column.type == ValueType::kString && column.source_type.starts_with("VARCHAR");
  }

  std::string KeyCastAdvice(const std::string& key) const override {
    return fmt::format("TO_VARCHAR({0}) AS {0}", QuoteIdentifier(key));
  }

  std::string Md5Hex(const std::string& expr) const override {
    return fmt::format("MD5({})", expr);
  }
  std::string TextType() const override { return "VARCHAR"; }
  std::string KeyType() const override { return "VARCHAR COLLATE 'utf8'"; }
  std::string IntegerType() const override { return "NUMBER(19,0)"; }

  std::string JsonArrayTable(const std::string& alias) const override {
    return fmt::format("TABLE(FLATTEN(INPUT => PARSE_JSON(?))) AS {}", alias);
  }
  std::string JsonValueText(const std::string& alias) const override {
    return fmt::format("CAST({}.VALUE AS VARCHAR)", alias);
  }
  std::string JsonItemText(const std::string& alias, int index) const override {
    return fmt::format("CAST(GET({}.VALUE, {}) AS VARCHAR)", alias, index);
  }

  bool IsPrivilegeError(const absl::Status& status) const override {
    const std::string message(status.message());
    return message.find("code 003001") != std::string::npos ||
           message.find("Insufficient privileges") != std::string::npos;
  }

  std::string PrivilegeAdvice(Step step, const std::string& schema) override {
    std::string role = "<role>", database = "<database>";
    auto who = run_("SELECT CURRENT_ROLE(), CURRENT_DATABASE()", {}, cancel());
    if (who.ok()) {
      Row row;
      auto more = (*who)->Next(row);
      if (more.ok() && *more && row.size() == 2) {
        if (!row[0].is_null()) role = QuoteIdentifier(row[0].ToString());
        if (!row[1].is_null()) database = QuoteIdentifier(row[1].ToString());
      }
    }
    const std::string qualified = fmt::format("{}.{}", database, schema);
    switch (step) {
      case Step::kCreateSchema:
        return fmt::format(
            "role {0} may not create schema {1}. Have an administrator run `GRANT CREATE SCHEMA "
            "ON DATABASE {2} TO ROLE {0};` (or create the schema and run `GRANT USAGE, CREATE "
            "TABLE ON SCHEMA {1} TO ROLE {0};`), or set state_schema on the source to a schema "
            "where the role may create tables",
            role, qualified, database);
      case Step::kCreateTable:
        return fmt::format(
            "role {0} may not create tables in schema {1}. Have an administrator run `GRANT "
            "USAGE, CREATE TABLE ON SCHEMA {1} TO ROLE {0};`, or set state_schema on the source "
            "to a schema where the role may create tables",
            role, qualified);
      case Step::kUseTables:
        break;
    }
    return fmt::format(
        "role {0} may not read and write the tables of schema {1}. Have an administrator run "
        "`GRANT USAGE ON SCHEMA {1} TO ROLE {0}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL "
        "TABLES IN SCHEMA {1} TO ROLE {0}; GRANT CREATE TABLE ON SCHEMA {1} TO ROLE {0};`, or set "
        "state_schema on the source to a schema of its own",
        role, qualified);
  }

 private:
  SnowflakeSqlRunner run_;
};

}  // namespace

std::unique_ptr<WarehouseSql> NewSnowflakeWarehouseSql(SnowflakeSqlRunner run) {
  return std::make_unique<SnowflakeWarehouseSql>(std::move(run));
}

}  // namespace backflow
