// BigQuery's SQL (GoogleSQL) for warehouse change detection through pass
// tables (../warehouse_sql/pass_change_detection.h). Every statement is one
// jobs.query call whose `?` are positional STRING query parameters
// ({"parameterMode":"POSITIONAL","queryParameters":[{"parameterType":
// {"type":"STRING"},"parameterValue":{"value":...}}]}).
//   managed schema: a dataset of project_id, CREATE SCHEMA IF NOT EXISTS d
//               OPTIONS(location = '<location>') (the models' location: a
//               CREATE TABLE AS SELECT reads and writes in one location)
//   row text:   the STRING itself; CAST(x AS STRING) for INT64, NUMERIC,
//               BIGNUMERIC, FLOAT64, BOOL, DATE, DATETIME, TIME, TIMESTAMP;
//               TO_BASE64(x) for BYTES; TO_JSON_STRING(x) for JSON, STRUCT,
//               ARRAY (REPEATED), GEOGRAPHY, INTERVAL, RANGE and anything
//               else. `||` takes only STRING (or BYTES), so the length is
//               CAST(LENGTH(t) AS STRING).
//   hash:       TO_HEX(MD5(text)) (MD5 returns 16 BYTES; TO_HEX lowercase)
//   key types:  INT64 (CAST to STRING writes its digits, as Backflow's decoder
//               does) and STRING
//   key order:  STRING without a collation compares case-sensitively by
//               code point ("Z" before "a"), which for UTF-8 is byte order;
//               the entry scanner checks it (a dataset made with a DEFAULT
//               COLLATE would give its tables a collation).
//   JSON array: UNNEST(JSON_EXTRACT_ARRAY(?)) AS j (ARRAY of JSON-formatted
//               STRING), values JSON_VALUE(j) and JSON_VALUE(j, '$[i]')
//   other forms: UNION DISTINCT (a bare UNION is a syntax error), PRIMARY
//               KEY (...) NOT ENFORCED (BigQuery enforces no keys), INT64
//               parameters as CAST(? AS INT64) (a STRING parameter is not
//               coerced to INT64), MERGE ... WHEN [NOT] MATCHED [AND c] THEN.
//   privilege refusals: 403 accessDenied ("Access Denied: ... Permission
//               bigquery.tables.create denied ...", "User does not have
//               bigquery.datasets.create permission ...").
// Verified against BigQuery's documentation: the query parameter shape, the
// `||` operand types, JSON_EXTRACT_ARRAY / JSON_VALUE, PRIMARY KEY ... NOT
// ENFORCED, UNION needing ALL or DISTINCT, the default case-sensitive string
// order. Not verified here against a live BigQuery: IS DISTINCT FROM (the
// shared layer's, listed among GoogleSQL's comparison operators) and the
// exact texts of the accessDenied messages.
#include <utility>

#include "backflow/common/fmt_absl.h"
#include "backflow/common/sql_identifier.h"
#include "backflow/sources/bigquery/bigquery_source.h"
#include "fmt/format.h"

namespace backflow {
namespace {

// A GoogleSQL string literal in single quotes.
std::string Literal(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

class BigQueryWarehouseSql : public WarehouseSql {
 public:
  BigQueryWarehouseSql(BigQuerySqlRunner run, BigQueryWarehouseContext context)
      : run_(std::move(run)), context_(std::move(context)) {}

  absl::StatusOr<std::unique_ptr<RowReader>> Run(
      const std::string& sql, const std::vector<std::string>& bindings) override {
    return run_(sql, bindings, cancel());
  }

  std::string QuoteIdentifier(std::string_view name) const override {
    return QuoteSqlIdentifier(name, '`', QuoteEscape::kBackslash);
  }

  std::string ToText(const Column& column, const std::string& expr) const override {
    const std::string& type = column.source_type;
    if (type == "STRING") return expr;
    if (type == "BYTES") return fmt::format("TO_BASE64({})", expr);
    for (const char* castable : {"INTEGER", "INT64", "NUMERIC", "BIGNUMERIC", "FLOAT", "FLOAT64",
                                 "BOOLEAN", "BOOL", "DATE", "DATETIME", "TIME", "TIMESTAMP"}) {
      if (type == castable) return fmt::format("CAST({} AS STRING)", expr);
    }
    return fmt::format("TO_JSON_STRING({})", expr);
  }

  bool KeyTypeSupported(const Column& column) const override {
    if (column.type == ValueType::kInt64) {
      return column.source_type == "INTEGER" || column.source_type == "INT64";
    }
    return column.type == ValueType::kString && column.source_type == "STRING";
  }

  std::string KeyCastAdvice(const std::string& key) const override {
    return fmt::format("CAST({0} AS STRING) AS {0}", QuoteIdentifier(key));
  }

  std::string Md5Hex(const std::string& expr) const override {
    return fmt::format("TO_HEX(MD5({}))", expr);
  }
  std::string TextType() const override { return "STRING"; }
  std::string KeyType() const override { return "STRING"; }
  std::string IntegerType() const override { return "INT64"; }

  std::string JsonArrayTable(const std::string& alias) const override {
    return fmt::format("UNNEST(JSON_EXTRACT_ARRAY(?)) AS {}", alias);
  }
  std::string JsonValueText(const std::string& alias) const override {
    return fmt::format("JSON_VALUE({})", alias);
  }
  std::string JsonItemText(const std::string& alias, int index) const override {
    return fmt::format("JSON_VALUE({}, '$[{}]')", alias, index);
  }

  bool IsPrivilegeError(const absl::Status& status) const override {
    const std::string message(status.message());
    return status.code() == absl::StatusCode::kPermissionDenied &&
           (message.find("Access Denied") != std::string::npos ||
            message.find("accessDenied") != std::string::npos);
  }

  std::string PrivilegeAdvice(Step step, const std::string& schema) override {
    const std::string& who = context_.client_email;
    const std::string dataset = fmt::format("`{}.{}`", context_.project_id, schema);
    const std::string grant = fmt::format(
        "GRANT `roles/bigquery.dataEditor` ON SCHEMA {} TO \"serviceAccount:{}\";", dataset, who);
    switch (step) {
      case Step::kCreateSchema:
        return fmt::format(
            "service account {0} may not create dataset {1} (it needs bigquery.datasets.create "
            "on project \"{2}\"). Grant it roles/bigquery.dataEditor on the project (`gcloud "
            "projects add-iam-policy-binding {2} --member=serviceAccount:{0} "
            "--role=roles/bigquery.dataEditor`), or have an administrator create the dataset "
            "(`CREATE SCHEMA {1}{3};`) and run `{4}`, or set state_schema on the source to a "
            "dataset where it may create tables",
            who, dataset, context_.project_id,
            context_.location.empty()
                ? ""
                : fmt::format(" OPTIONS(location = {})", Literal(context_.location)),
            grant);
      case Step::kCreateTable:
        return fmt::format(
            "service account {} may not create tables in dataset {} (bigquery.tables.create). "
            "Have an administrator run `{}`, or set state_schema on the source to a dataset "
            "where it may create tables",
            who, dataset, grant);
      case Step::kUseTables:
        break;
    }
    return fmt::format(
        "service account {} may not read and write the tables of dataset {} "
        "(bigquery.tables.getData, updateData, create, delete). Have an administrator run `{}` "
        "(it also needs roles/bigquery.jobUser on project \"{}\"), or set state_schema on the "
        "source to a dataset of its own",
        who, dataset, grant, context_.project_id);
  }

  // --- BigQuery's spellings. ---
  std::string CreateSchemaSql(const std::string& schema) const override {
    std::string sql = "CREATE SCHEMA IF NOT EXISTS " + schema;
    if (!context_.location.empty()) {
      sql += fmt::format(" OPTIONS(location = {})", Literal(context_.location));
    }
    return sql;
  }
  std::string PrimaryKey(const std::string& columns) const override {
    return "PRIMARY KEY (" + columns + ") NOT ENFORCED";
  }
  std::string LengthText(const std::string& expr) const override {
    return fmt::format("CAST(LENGTH({}) AS STRING)", expr);
  }
  std::string UnionDistinct() const override { return "UNION DISTINCT"; }
  std::string IntegerParameter() const override { return "CAST(? AS INT64)"; }

 private:
  BigQuerySqlRunner run_;
  BigQueryWarehouseContext context_;
};

}  // namespace

std::unique_ptr<WarehouseSql> NewBigQueryWarehouseSql(BigQuerySqlRunner run,
                                                      BigQueryWarehouseContext context) {
  return std::make_unique<BigQueryWarehouseSql>(std::move(run), std::move(context));
}

}  // namespace backflow
