#include "backflow/sources/redshift/redshift_data_api.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/common/numbers.h"
#include "backflow/common/status_macros.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/pg/types.h"
#include "backflow/sources/redshift/redshift_aws.h"
#include "backflow/sources/redshift/redshift_change_detection.h"
#include "backflow/sources/redshift/redshift_source.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kService[] = "redshift-data";
constexpr int kMaxEmptyPages = 1000;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string TextOf(const json& object, const char* key) {
  if (!object.is_object()) return "";
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

std::optional<double> ParseDouble(std::string_view s) {
  std::string l = Lower(s);
  if (l == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (l == "infinity" || l == "inf") return std::numeric_limits<double>::infinity();
  if (l == "-infinity" || l == "-inf") return -std::numeric_limits<double>::infinity();
  double d = 0;
  if (s.empty()) return std::nullopt;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
  if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return d;
}

// A UUID-shaped random idempotency token.
std::string NewClientToken() {
  std::string hex = HexEncode(RandomBytes(16));
  return fmt::format("{}-{}-{}-{}-{}", hex.substr(0, 8), hex.substr(8, 4), hex.substr(12, 4),
                     hex.substr(16, 4), hex.substr(20));
}

class DataApiClient {
 public:
  DataApiClient(RedshiftDataApiConfig cfg, HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)), http_(http), clock_(clock), limiter_(cfg_.http.UserLimiter(*clock)) {}

  const RedshiftDataApiConfig& cfg() const { return cfg_; }
  Clock* clock() const { return clock_; }

  // One operation with retries; the parsed JSON object of a 2xx reply.
  absl::StatusOr<json> Call(const std::string& op, const json& body, const std::string& what,
                            bool retry = true) const {
    HttpRequest base;
    base.method = "POST";
    base.url = cfg_.http.base_url + "/";
    base.timeout = cfg_.http.timeout;
    base.body = Dump(body);
    base.headers = {{"Content-Type", "application/x-amz-json-1.1"},
                    {"X-Amz-Target", "RedshiftData." + op}};
    VendorRules rules;
    rules.retryable = AwsRetryableReply;
    HttpDelivery delivery(http_, clock_, {limiter_.get()}, cfg_.http.retry, std::move(rules));
    absl::Status sign_error;
    DeliveryResult d = delivery.Send(
        [&] {
          HttpRequest req = base;
          absl::Status s =
              SignAwsRequest(req, cfg_.credentials, cfg_.region, kService, clock_->Now());
          if (!s.ok()) sign_error = s;
          return req;
        },
        retry);
    if (!sign_error.ok()) {
      return absl::InvalidArgumentError(fmt::format("base_url: {}", sign_error.message()));
    }
    if (!d.auth_error.ok() || !d.response.ok() || d.response->status < 200 ||
        d.response->status >= 300) {
      std::string not_found;
      if (op == "ExecuteStatement") {
        not_found = fmt::format(
            "Redshift has no {} in region {}: check {} and region",
            cfg_.workgroup_name.empty() ? "cluster \"" + cfg_.cluster_identifier + "\""
                                        : "workgroup \"" + cfg_.workgroup_name + "\"",
            cfg_.region, cfg_.workgroup_name.empty() ? "cluster_identifier" : "workgroup_name");
      }
      absl::Status s = AwsFailure(d, cfg_.http.base_url, what, "redshift-data:" + op, not_found);
      if (s.code() == absl::StatusCode::kPermissionDenied && op == "ExecuteStatement") {
        s = absl::PermissionDeniedError(
            fmt::format("{} (the Data API also needs {} for the identity)", s.message(),
                        !cfg_.secret_arn.empty() ? "secretsmanager:GetSecretValue on secret_arn"
                        : !cfg_.workgroup_name.empty() ? "redshift-serverless:GetCredentials"
                                                       : "redshift:GetClusterCredentials"));
      }
      // A statement AWS no longer knows while reading it: results expired.
      if (op != "ExecuteStatement" && d.response.ok() &&
          ParseAwsError(*d.response).code == "ResourceNotFoundException") {
        s = absl::UnavailableError(fmt::format(
            "the Redshift Data API no longer knows the statement while trying to {}: its results "
            "expired; the run is retried later. AWS said: {}",
            what, ParseAwsError(*d.response).Said()));
      }
      return s;
    }
    json reply = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
    if (!reply.is_object()) {
      return absl::UnavailableError(fmt::format(
          "the Redshift Data API answered HTTP {} to the request to {} with a body that is not a "
          "JSON object: {}",
          d.response->status, what, BodySnippet(d.response->body, 200)));
    }
    return reply;
  }

  // Best effort, one attempt.
  void Cancel(const std::string& id) const {
    (void)Call("CancelStatement", json{{"Id", id}}, "cancel statement " + id, /*retry=*/false);
  }

 private:
  const RedshiftDataApiConfig cfg_;
  HttpClient* const http_;
  Clock* const clock_;
  const std::unique_ptr<RateLimiter> limiter_;
};

class DataApiReader : public RowReader {
 public:
  // `cancel` as in QueryOptions (may be null).
  DataApiReader(const DataApiClient* client, const std::atomic<bool>* cancel)
      : client_(client), cancel_(cancel) {}

  ~DataApiReader() override {
    if (!finished_ && !id_.empty()) client_->Cancel(id_);
  }

  const Schema& schema() const override { return schema_; }

  // `parameters`: the Parameters list ([{name, value}]), or null. With
  // `allow_no_result`, a statement without a result set (DDL, DML) ends
  // cleanly with no columns.
  absl::Status Start(const std::string& sql, const json& parameters = nullptr,
                     bool allow_no_result = false) {
    allow_no_result_ = allow_no_result;
    const RedshiftDataApiConfig& cfg = client_->cfg();
    if (QueryCancelRequested(cancel_)) {
      finished_ = true;
      return absl::CancelledError(
          "the run was cancelled before the Redshift Data API statement was submitted");
    }
    json request = {{"Sql", sql},
                    {"Database", cfg.database},
                    {"StatementName", "backflow"},
                    {"ClientToken", NewClientToken()}};
    if (!cfg.cluster_identifier.empty()) request["ClusterIdentifier"] = cfg.cluster_identifier;
    if (!cfg.workgroup_name.empty()) request["WorkgroupName"] = cfg.workgroup_name;
    if (!cfg.db_user.empty()) request["DbUser"] = cfg.db_user;
    if (!cfg.secret_arn.empty()) request["SecretArn"] = cfg.secret_arn;
    if (parameters.is_array() && !parameters.empty()) request["Parameters"] = parameters;
    absl::StatusOr<json> submitted = client_->Call("ExecuteStatement", request, "run the query");
    if (!submitted.ok()) {
      finished_ = true;
      return submitted.status();
    }
    id_ = TextOf(*submitted, "Id");
    if (id_.empty()) {
      finished_ = true;
      return absl::UnavailableError(
          "the Redshift Data API accepted the query without a statement Id; the run is retried "
          "later");
    }
    BACKFLOW_RETURN_IF_ERROR(WaitUntilDone());
    if (no_result_) {
      finished_ = true;
      done_ = true;
      return absl::OkStatus();
    }
    absl::Status first = FetchPage("");
    if (!first.ok()) return Fail(first);
    return absl::OkStatus();
  }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!error_.ok()) return error_;
    if (done_) return false;
    int empty = 0;
    while (next_record_ >= records_.size()) {
      if (next_token_.empty()) {
        if (total_rows_ && delivered_ != *total_rows_) {
          return Fail(absl::DataLossError(fmt::format(
              "Redshift Data API statement {} reported {} rows but its pages held {}: the "
              "result was cut short; the run is retried later",
              id_, *total_rows_, delivered_)));
        }
        done_ = true;
        finished_ = true;
        records_ = json::array();
        return false;
      }
      if (++empty > kMaxEmptyPages) {
        return Fail(absl::DataLossError(
            fmt::format("Redshift Data API statement {} returned {} empty pages", id_, empty)));
      }
      if (QueryCancelRequested(cancel_)) return Fail(CancelStatement());
      absl::Status fetched = FetchPage(next_token_);
      if (!fetched.ok()) return Fail(fetched);
    }
    const json& record = records_[next_record_];
    if (!record.is_array() || record.size() != columns_.size()) {
      return Fail(absl::DataLossError(fmt::format(
          "Redshift Data API statement {} returned a record with {} fields for {} columns", id_,
          record.is_array() ? record.size() : 0, columns_.size())));
    }
    row.resize(columns_.size());
    for (size_t i = 0; i < columns_.size(); ++i) {
      absl::StatusOr<Value> v = DecodeRedshiftDataField(columns_[i], record[i]);
      if (!v.ok()) return Fail(v.status());
      row[i] = *std::move(v);
    }
    ++next_record_;
    ++delivered_;
    return true;
  }

 private:
  absl::Status Fail(absl::Status status) {
    error_ = status;
    records_ = json::array();
    next_record_ = 0;
    return status;
  }

  // Sends CancelStatement; the kCancelled status to return.
  absl::Status CancelStatement() {
    client_->Cancel(id_);
    finished_ = true;
    return QueryCancelledError(fmt::format("Redshift Data API statement {}", id_));
  }

  // Polls DescribeStatement until the statement is terminal.
  absl::Status WaitUntilDone() {
    const RedshiftDataApiConfig& cfg = client_->cfg();
    Clock* clock = client_->clock();
    Clock::TimePoint started = clock->Now();
    std::chrono::milliseconds wait = cfg.poll_initial;
    while (true) {
      // Also right after each wait: a cancel during it sends no more polls.
      if (QueryCancelRequested(cancel_)) return CancelStatement();
      absl::StatusOr<json> described =
          client_->Call("DescribeStatement", json{{"Id", id_}}, "check on statement " + id_);
      if (!described.ok()) {
        client_->Cancel(id_);
        finished_ = true;
        return described.status();
      }
      std::string status = TextOf(*described, "Status");
      if (status == "FINISHED") {
        auto has = described->find("HasResultSet");
        if (has != described->end() && has->is_boolean() && !has->get<bool>()) {
          finished_ = true;
          if (allow_no_result_) {
            no_result_ = true;
            return absl::OkStatus();
          }
          return absl::InvalidArgumentError(
              "the query returned no result set; a model must be a SELECT that returns rows");
        }
        return absl::OkStatus();
      }
      if (status == "FAILED") {
        finished_ = true;
        std::string error = TextOf(*described, "Error");
        if (error.empty()) error = "(no error text)";
        absl::Status s = ClassifyRedshiftError(absl::InvalidArgumentError(
            fmt::format("Redshift rejected the query (statement {}): {}", id_, error)));
        if (s.code() == absl::StatusCode::kInvalidArgument &&
            Lower(error).find("permission denied") != std::string::npos) {
          s = absl::PermissionDeniedError(fmt::format(
              "{}. Grant the database user SELECT on the model's tables and USAGE on their "
              "schemas",
              s.message()));
        }
        return s;
      }
      if (status == "ABORTED") {
        finished_ = true;
        return absl::UnavailableError(fmt::format(
            "Redshift Data API statement {} was aborted before it finished (cancelled by a user, "
            "an admin or a WLM rule); the run is retried later",
            id_));
      }
      if (status != "SUBMITTED" && status != "PICKED" && status != "STARTED") {
        client_->Cancel(id_);
        finished_ = true;
        return absl::InternalError(
            fmt::format("Redshift Data API statement {} is in unknown status \"{}\"", id_, status));
      }
      if (cfg.query_timeout_s > 0 &&
          clock->Now() - started >= std::chrono::seconds(cfg.query_timeout_s)) {
        client_->Cancel(id_);
        finished_ = true;
        return absl::DeadlineExceededError(fmt::format(
            "Redshift Data API statement {} was still {} after query_timeout_s ({} s) and was "
            "cancelled: make the model cheaper or raise query_timeout_s",
            id_, status, cfg.query_timeout_s));
      }
      clock->SleepFor(wait);
      wait = std::min(wait * 2, cfg.poll_max);
    }
  }

  absl::Status FetchPage(const std::string& token) {
    json request = {{"Id", id_}};
    if (!token.empty()) request["NextToken"] = token;
    ++page_;
    BACKFLOW_ASSIGN_OR_RETURN(
        json page, client_->Call("GetStatementResult", request,
                                 fmt::format("read page {} of statement {}", page_, id_)));
    if (columns_.empty()) {
      auto meta = page.find("ColumnMetadata");
      if (meta == page.end() || !meta->is_array() || meta->empty()) {
        return absl::InvalidArgumentError(
            "the query returned no columns; a model must be a SELECT that returns rows");
      }
      for (const json& m : *meta) {
        BACKFLOW_ASSIGN_OR_RETURN(RedshiftDataColumn c, ParseRedshiftDataColumn(m));
        schema_.push_back(c.column);
        columns_.push_back(std::move(c));
      }
    }
    auto records = page.find("Records");
    if (records == page.end() || !records->is_array()) {
      return absl::DataLossError(fmt::format(
          "page {} of Redshift Data API statement {} has no Records array", page_, id_));
    }
    if (auto total = page.find("TotalNumRows"); total != page.end() && total->is_number_integer()) {
      total_rows_ = total->get<int64_t>();
    }
    records_ = std::move(*records);
    next_record_ = 0;
    std::string next = TextOf(page, "NextToken");
    if (!next.empty() && next == token) {
      return absl::DataLossError(
          fmt::format("Redshift Data API statement {} returned the same NextToken twice", id_));
    }
    next_token_ = next;
    return absl::OkStatus();
  }

  const DataApiClient* client_;
  const std::atomic<bool>* const cancel_;
  std::string id_;
  Schema schema_;
  std::vector<RedshiftDataColumn> columns_;
  json records_ = json::array();
  size_t next_record_ = 0;
  std::string next_token_;
  std::optional<int64_t> total_rows_;
  int64_t delivered_ = 0;
  int page_ = 0;
  bool finished_ = false;  // nothing left to cancel
  bool done_ = false;      // clean end reached
  bool allow_no_result_ = false;
  bool no_result_ = false;  // finished without a result set (allow_no_result_)
  absl::Status error_;
};

// Change detection's statements, one ExecuteStatement each (the Data API
// holds no transaction across requests).
class DataApiTransport : public RedshiftSqlTransport {
 public:
  explicit DataApiTransport(const DataApiClient* client) : client_(client) {}

  absl::StatusOr<std::unique_ptr<RowReader>> Run(const std::string& sql,
                                                 const std::vector<std::string>& bindings,
                                                 const std::atomic<bool>* cancel) override {
    // A parameter value may not be empty (SqlParameter: minimum length 1):
    // an empty binding is written as the literal ''.
    json parameters = json::array();
    const std::string text = RewritePlaceholders(sql, [&](int n) -> std::string {
      const std::string& value = n <= static_cast<int>(bindings.size()) ? bindings[n - 1] : "";
      if (value.empty()) return "''";
      std::string name = fmt::format("p{}", n);
      parameters.push_back({{"name", name}, {"value", value}});
      return ":" + name;
    });
    auto reader = std::make_unique<DataApiReader>(client_, cancel);
    BACKFLOW_RETURN_IF_ERROR(reader->Start(text, parameters, /*allow_no_result=*/true));
    return std::unique_ptr<RowReader>(std::move(reader));
  }

  absl::Status RunAll(const std::vector<BoundSql>& statements) override {
    for (const BoundSql& s : statements) {
      BACKFLOW_ASSIGN_OR_RETURN(auto reader, Run(s.sql, s.bindings, /*cancel=*/nullptr));
      Row row;
      while (true) {
        BACKFLOW_ASSIGN_OR_RETURN(bool more, reader->Next(row));
        if (!more) break;
      }
    }
    return absl::OkStatus();
  }

 private:
  const DataApiClient* client_;
};

class RedshiftDataApiSource : public Source {
 public:
  RedshiftDataApiSource(RedshiftDataApiConfig cfg, HttpClient* http, Clock* clock)
      : state_schema_(cfg.state_schema), client_(std::move(cfg), http, clock) {}

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, Query("SELECT 1 AS ok"));
    Row row;
    BACKFLOW_ASSIGN_OR_RETURN(bool got, reader->Next(row));
    if (!got) return absl::UnavailableError("the Redshift Data API returned no row for SELECT 1");
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    return Query(sql, QueryOptions{});
  }

  WarehouseChangeDetection* warehouse_change_detection() override {
    if (change_detection_ == nullptr) {
      PassChangeDetectionOptions options;
      options.state_schema = state_schema_;
      options.clock = client_.clock();
      change_detection_ = NewPassChangeDetection(
          NewRedshiftWarehouseSql(std::make_unique<DataApiTransport>(&client_)),
          std::move(options));
    }
    return change_detection_.get();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql,
                                                   const QueryOptions& options) override {
    BACKFLOW_ASSIGN_OR_RETURN(std::string text,
                              SingleModelStatement(sql, "ExecuteStatement runs exactly one"));
    auto reader = std::make_unique<DataApiReader>(&client_, options.cancel);
    BACKFLOW_RETURN_IF_ERROR(reader->Start(text));
    return std::unique_ptr<RowReader>(std::move(reader));
  }

 private:
  std::string state_schema_;
  DataApiClient client_;
  std::unique_ptr<WarehouseChangeDetection> change_detection_;
};

}  // namespace

Oid RedshiftOidForTypeName(std::string_view type_name) {
  std::string t = Lower(type_name);
  if (size_t paren = t.find('('); paren != std::string::npos) t = t.substr(0, paren);
  while (!t.empty() && t.back() == ' ') t.pop_back();
  static const std::pair<std::string_view, Oid> kTypes[] = {
      {"int2", pg::kInt2Oid},
      {"smallint", pg::kInt2Oid},
      {"int4", pg::kInt4Oid},
      {"int", pg::kInt4Oid},
      {"integer", pg::kInt4Oid},
      {"int8", pg::kInt8Oid},
      {"bigint", pg::kInt8Oid},
      {"float4", pg::kFloat4Oid},
      {"real", pg::kFloat4Oid},
      {"float8", pg::kFloat8Oid},
      {"float", pg::kFloat8Oid},
      {"double precision", pg::kFloat8Oid},
      {"numeric", pg::kNumericOid},
      {"decimal", pg::kNumericOid},
      {"bool", pg::kBoolOid},
      {"boolean", pg::kBoolOid},
      {"char", pg::kBpcharOid},
      {"bpchar", pg::kBpcharOid},
      {"character", pg::kBpcharOid},
      {"varchar", pg::kVarcharOid},
      {"character varying", pg::kVarcharOid},
      {"nvarchar", pg::kVarcharOid},
      {"text", pg::kTextOid},
      {"name", pg::kNameOid},
      {"date", pg::kDateOid},
      {"timestamp", pg::kTimestampOid},
      {"timestamp without time zone", pg::kTimestampOid},
      {"timestamptz", pg::kTimestamptzOid},
      {"timestamp with time zone", pg::kTimestamptzOid},
      {"super", kRedshiftSuperOid},
      {"varbyte", kRedshiftVarbyteOid},
      {"varbinary", kRedshiftVarbyteOid},
      {"binary varying", kRedshiftVarbyteOid},
      {"geometry", kRedshiftGeometryOid},
      {"geography", kRedshiftGeographyOid},
      {"hllsketch", kRedshiftHllSketchOid},
  };
  for (const auto& [name, oid] : kTypes) {
    if (t == name) return oid;
  }
  return pg::kTextOid;
}

absl::StatusOr<RedshiftDataColumn> ParseRedshiftDataColumn(const json& metadata) {
  std::string name = TextOf(metadata, "name");
  if (name.empty()) name = TextOf(metadata, "label");
  if (name.empty()) {
    return absl::DataLossError(
        fmt::format("Redshift Data API column metadata without a name: {}", Dump(metadata)));
  }
  std::string type = TextOf(metadata, "typeName");
  RedshiftDataColumn c;
  c.oid = RedshiftOidForTypeName(type);
  c.column.name = name;
  c.column.type = RedshiftValueTypeForOid(c.oid);
  c.column.source_type = type.empty() ? "unknown" : type;
  if (c.oid == pg::kNumericOid && metadata.contains("precision") &&
      metadata["precision"].is_number_integer() && metadata["precision"].get<int64_t>() > 0) {
    c.column.source_type = fmt::format("numeric({},{})", metadata["precision"].get<int64_t>(),
                                       metadata.value("scale", int64_t{0}));
  }
  return c;
}

absl::StatusOr<Value> DecodeRedshiftDataField(const RedshiftDataColumn& column, const json& field) {
  auto bad = [&](std::string_view why) {
    return absl::DataLossError(fmt::format("column \"{}\" ({}): {} in Redshift Data API field {}",
                                           column.column.name, column.column.source_type, why,
                                           Dump(field).substr(0, 200)));
  };
  if (!field.is_object() || field.size() != 1) return bad("not a one-member union object");
  const auto first = field.begin();
  const std::string member = first.key();
  const json& v = first.value();
  const ValueType type = column.column.type;
  if (member == "isNull") {
    if (!v.is_boolean() || !v.get<bool>()) return bad("isNull that is not true");
    return Value::Null();
  }
  if (member == "longValue") {
    if (!v.is_number_integer()) return bad("longValue that is not an integer");
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return bad("longValue beyond 64 bits");
    }
    const int64_t i = v.get<int64_t>();
    switch (type) {
      case ValueType::kInt64:
        return Value::Int64(i);
      case ValueType::kDouble:
        return Value::Double(static_cast<double>(i));
      case ValueType::kBool:
        return Value::Bool(i != 0);
      case ValueType::kDecimal:
        return Value::Text(ValueType::kDecimal, std::to_string(i));
      case ValueType::kJson:
        return Value::Text(ValueType::kJson, std::to_string(i));
      default:
        return Value::String(std::to_string(i));
    }
  }
  if (member == "doubleValue") {
    if (!v.is_number()) return bad("doubleValue that is not a number");
    double d = v.get<double>();
    switch (type) {
      case ValueType::kDouble:
        return Value::Double(d);
      case ValueType::kInt64:
        if (std::trunc(d) != d || std::abs(d) > 9.007199254740992e15) return bad("not an integer");
        return Value::Int64(static_cast<int64_t>(d));
      case ValueType::kDecimal:
        return Value::Text(ValueType::kDecimal, Dump(v));
      default:
        return Value::String(Dump(v));
    }
  }
  if (member == "booleanValue") {
    if (!v.is_boolean()) return bad("booleanValue that is not a boolean");
    if (type == ValueType::kBool) return Value::Bool(v.get<bool>());
    return Value::String(v.get<bool>() ? "true" : "false");
  }
  if (member == "blobValue") {
    if (!v.is_string()) return bad("blobValue that is not a string");
    absl::StatusOr<std::string> bytes = Base64Decode(v.get<std::string>());
    if (!bytes.ok()) return bad("blobValue that is not base64");
    if (type == ValueType::kBytes) return Value::Text(ValueType::kBytes, *std::move(bytes));
    return Value::String(*std::move(bytes));
  }
  if (member == "stringValue") {
    if (!v.is_string()) return bad("stringValue that is not a string");
    const std::string& s = v.get_ref<const std::string&>();
    switch (type) {
      case ValueType::kInt64: {
        std::optional<int64_t> i = ParseInt64(s);
        if (!i) return bad("not an integer");
        return Value::Int64(*i);
      }
      case ValueType::kDouble: {
        std::optional<double> d = ParseDouble(s);
        if (!d) return bad("not a number");
        return Value::Double(*d);
      }
      case ValueType::kBool: {
        std::string l = Lower(s);
        if (l == "true" || l == "t") return Value::Bool(true);
        if (l == "false" || l == "f") return Value::Bool(false);
        return bad("not a boolean");
      }
      default:
        return DecodeRedshiftText(column.oid, s);
    }
  }
  return bad("an unknown union member");
}

absl::StatusOr<RedshiftDataApiConfig> ParseRedshiftDataApiSettings(const json& settings) {
  auto text = [&](const char* key) -> std::string {
    auto it = settings.find(key);
    return it != settings.end() && it->is_string() ? it->get<std::string>() : "";
  };
  RedshiftDataApiConfig c;
  BACKFLOW_ASSIGN_OR_RETURN(c.credentials, ParseAwsCredentialSettings(settings));
  c.region = text("region");
  BACKFLOW_RETURN_IF_ERROR(CheckAwsRegion(c.region));
  c.database = text("database");
  if (c.database.empty()) {
    return absl::InvalidArgumentError("database: required; the database to query, e.g. dev");
  }
  c.cluster_identifier = text("cluster_identifier");
  c.workgroup_name = text("workgroup_name");
  if (c.cluster_identifier.empty() == c.workgroup_name.empty()) {
    return absl::InvalidArgumentError(
        "cluster_identifier: set exactly one of cluster_identifier (a provisioned cluster, e.g. "
        "examplecluster) or workgroup_name (Redshift Serverless)");
  }
  c.db_user = text("db_user");
  c.secret_arn = text("secret_arn");
  if (!c.db_user.empty() && !c.secret_arn.empty()) {
    return absl::InvalidArgumentError(
        "db_user: set db_user (temporary credentials) or secret_arn (Secrets Manager), not both");
  }
  if (!c.cluster_identifier.empty() && c.db_user.empty() && c.secret_arn.empty()) {
    return absl::InvalidArgumentError(
        "db_user: required for a cluster unless secret_arn is set; the database user to run "
        "the query as (the Data API gets it a temporary password), e.g. analytics");
  }
  if (!c.workgroup_name.empty() && !c.db_user.empty()) {
    return absl::InvalidArgumentError(
        "db_user: not used with workgroup_name (Redshift Serverless maps the IAM identity to "
        "the database user IAM:<name>); remove it or use secret_arn");
  }
  auto timeout = settings.find("query_timeout_s");
  if (timeout != settings.end() && !timeout->is_null()) {
    if (!timeout->is_number_integer() || timeout->get<int64_t>() < 0 ||
        timeout->get<int64_t>() > 24 * 3600) {
      return absl::InvalidArgumentError("query_timeout_s: must be a whole number from 0 to 86400");
    }
    c.query_timeout_s = timeout->get<int64_t>();
  }
  BACKFLOW_ASSIGN_OR_RETURN(c.state_schema, ParseRedshiftStateSchema(settings));
  json http = settings;
  if (text("base_url").empty()) {
    http["base_url"] = AwsEndpoint(kService, c.region, "");
  }
  BACKFLOW_ASSIGN_OR_RETURN(c.http, ParseHttpSettings(http));
  return c;
}

absl::StatusOr<std::unique_ptr<Source>> NewRedshiftDataApiSource(RedshiftDataApiConfig config,
                                                                 const ConnectorEnv& env) {
  if (env.http == nullptr) {
    return absl::InternalError("redshift_data_api source needs an HTTP client (ConnectorEnv.http)");
  }
  Clock* clock = env.clock != nullptr ? env.clock : &SystemClock();
  return std::unique_ptr<Source>(
      std::make_unique<RedshiftDataApiSource>(std::move(config), env.http, clock));
}

SourceDefinition RedshiftDataApiSourceDefinition() {
  SourceDefinition def;
  def.type = "redshift_data_api";
  def.title = "Amazon Redshift (Data API)";
  def.description =
      "Runs model SQL on Amazon Redshift (provisioned or Serverless) through the Redshift Data "
      "API over HTTPS, with AWS credentials (SigV4) instead of a network path to port 5439: "
      "ExecuteStatement, then DescribeStatement polls until the statement finishes, then "
      "GetStatementResult pages (one page held at a time, NextToken followed to the end). "
      "BIGINT and DECIMAL stay exact, TIMESTAMPTZ becomes ISO-8601 UTC, SUPER becomes JSON. "
      "Throttling, too many active statements and AWS server errors are retried with backoff; "
      "a read abandoned early is cancelled (CancelStatement). AWS caps a Data API result "
      "(500 MB at the time of writing) and keeps results about a day: for very large models "
      "use the `redshift` source. The IAM identity needs redshift-data:ExecuteStatement, "
      "DescribeStatement, GetStatementResult and CancelStatement, plus "
      "redshift:GetClusterCredentials (cluster + db_user), "
      "redshift-serverless:GetCredentials (workgroup) or secretsmanager:GetSecretValue "
      "(secret_arn).";
  def.maturity = "beta";
  for (SettingSpec& spec : AwsCredentialSettingSpecs("allowed to use the Redshift Data API")) {
    if (spec.key == "access_key_id" || spec.key == "secret_access_key" || spec.key == "region") {
      spec.required = true;
    }
    def.settings.push_back(spec);
  }
  SettingSpec database = MakeSetting("database", "Database", "The database to query, e.g. dev.");
  database.required = true;
  def.settings.push_back(database);
  def.settings.push_back(MakeSetting(
      "cluster_identifier", "Cluster identifier",
      "A provisioned cluster's name, e.g. examplecluster (set this or workgroup_name)."));
  def.settings.push_back(MakeSetting("workgroup_name", "Workgroup name",
                                     "A Redshift Serverless workgroup's name or ARN (set this or "
                                     "cluster_identifier). The query runs as IAM:<identity>."));
  def.settings.push_back(MakeSetting(
      "db_user", "Database user",
      "With cluster_identifier: the database user to run as (the Data API gets it a temporary "
      "password with redshift:GetClusterCredentials), e.g. analytics."));
  def.settings.push_back(MakeSetting(
      "secret_arn", "Secret ARN",
      "Instead of db_user: the ARN of a Secrets Manager secret holding the database username "
      "and password."));
  def.settings.push_back(
      MakeSetting("query_timeout_s", "Query timeout (s)",
                  "A statement still running after this long is cancelled (0: no limit).",
                  SettingType::kInteger, 3600));
  def.settings.push_back(MakeSetting("state_schema", "State schema", kRedshiftStateSchemaHelp,
                                     SettingType::kString, "backflow_state"));
  def.warehouse_change_detection = true;
  HttpSettingsDefaults http;
  http.base_url = "";
  http.base_url_help =
      "Default: https://redshift-data.<region>.amazonaws.com; set it for a VPC endpoint.";
  http.max_retries = 5;
  http.timeout_ms = 30'000;
  for (SettingSpec& spec : HttpSettingSpecs(http)) {
    if (spec.key == "base_url") spec.default_value = nullptr;
    def.settings.push_back(spec);
  }
  def.create = [](const json& settings,
                  const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Source>> {
    BACKFLOW_ASSIGN_OR_RETURN(RedshiftDataApiConfig config, ParseRedshiftDataApiSettings(settings));
    return NewRedshiftDataApiSource(std::move(config), env);
  };
  return def;
}

}  // namespace backflow
