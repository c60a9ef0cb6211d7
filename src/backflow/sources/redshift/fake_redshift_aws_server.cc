#include "backflow/sources/redshift/fake_redshift_aws_server.h"

#include <openssl/evp.h>
#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <regex>
#include <set>
#include <utility>

#include "backflow/common/aws_sigv4.h"
#include "backflow/common/crypto.h"
#include "backflow/common/status_macros.h"
#include "backflow/common/url.h"
#include "fmt/format.h"

namespace backflow {

using json = nlohmann::json;

namespace {

constexpr auto kMaxSkew = std::chrono::minutes(15);

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

TestResponse JsonError(int status, const std::string& code, const std::string& message) {
  TestResponse r = TestResponse::Json(status, json{{"__type", code}, {"message", message}}.dump());
  r.headers = {{"Content-Type", "application/x-amz-json-1.1"}, {"x-amzn-RequestId", "fake-req"}};
  return r;
}

TestResponse XmlError(int status, const std::string& code, const std::string& message) {
  TestResponse r;
  r.status = status;
  r.headers = {{"Content-Type", "text/xml"}};
  r.body = fmt::format(
      "<ErrorResponse xmlns=\"http://redshift.amazonaws.com/doc/2012-12-01/\">\n  <Error>\n"
      "    <Type>Sender</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n"
      "  <RequestId>fake-request-id</RequestId>\n</ErrorResponse>\n",
      XmlEscape(code), XmlEscape(message));
  return r;
}

TestResponse JsonOk(const json& body) {
  TestResponse r = TestResponse::Json(200, body.dump());
  r.headers = {{"Content-Type", "application/x-amz-json-1.1"}, {"x-amzn-RequestId", "fake-req"}};
  return r;
}

// The Redshift type name for a SQLite declared type.
std::string TypeForDecl(const char* decl) {
  std::string d = decl == nullptr ? "" : Lower(decl);
  auto has = [&](const char* s) { return d.find(s) != std::string::npos; };
  if (has("timestamptz") || has("with time zone")) return "timestamptz";
  if (has("timestamp")) return "timestamp";
  if (has("bigint") || has("int8")) return "int8";
  if (has("smallint") || has("int2")) return "int2";
  if (has("int")) return "int4";
  if (has("bool")) return "bool";
  if (has("numeric") || has("decimal")) return "numeric";
  if (has("real") || has("float4")) return "float4";
  if (has("double") || has("float")) return "float8";
  if (has("date")) return "date";
  if (has("super")) return "super";
  if (has("varbyte") || has("blob")) return "varbyte";
  if (d.empty()) return "";
  return "varchar";
}

std::string IsoSeconds(Clock::TimePoint t) { return FormatIso8601(t); }

// MD5(text): lowercase hex, as Redshift's MD5.
void Md5Function(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return sqlite3_result_null(ctx);
  const unsigned char* text = sqlite3_value_text(argv[0]);
  const int size = sqlite3_value_bytes(argv[0]);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(text, static_cast<size_t>(size), digest, &length, EVP_md5(), nullptr);
  std::string hex = HexEncode(std::string_view(reinterpret_cast<const char*>(digest), length));
  sqlite3_result_text(ctx, hex.c_str(), static_cast<int>(hex.size()), SQLITE_TRANSIENT);
}

// JSON_SERIALIZE(super): the JSON text as stored.
void JsonSerializeFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  sqlite3_result_value(ctx, argv[0]);
}

// CURRENT_USER / CURRENT_DATABASE(): the request's (user data: a string).
void ContextTextFunction(sqlite3_context* ctx, int, sqlite3_value**) {
  const auto* text = static_cast<const std::string*>(sqlite3_user_data(ctx));
  sqlite3_result_text(ctx, text->c_str(), static_cast<int>(text->size()), SQLITE_TRANSIENT);
}

constexpr auto kIcase = std::regex::ECMAScript | std::regex::icase;
constexpr size_t kMaxVarcharBytes = 65535;

}  // namespace

std::string FakeRedshiftAwsServer::TranslateSql(const std::string& redshift_sql,
                                                std::string& error) {
  std::string sql = redshift_sql;
  static const std::regex distinct(R"(\bIS\s+(NOT\s+)?DISTINCT\s+FROM\b)", kIcase);
  if (std::regex_search(sql, distinct)) {
    error = "ERROR: Not implemented";  // Redshift's answer (error 1001)
    return "";
  }
  static const std::regex schema(R"(^\s*CREATE\s+SCHEMA\s+IF\s+NOT\s+EXISTS\s+(\w+)\s*;?\s*$)",
                                 kIcase);
  std::smatch m;
  if (std::regex_match(sql, m, schema)) {
    const std::string name = Lower(m[1].str());
    if (schemas_.count(name)) return "SELECT 1 AS exists_already WHERE 0";
    schemas_.insert(name);
    return fmt::format("ATTACH DATABASE ':memory:' AS {}", name);
  }
  static const std::regex collate(R"(COLLATE\s+(case_sensitive|cs)\b)", kIcase);
  sql = std::regex_replace(sql, collate, "COLLATE BINARY");
  static const std::regex user(R"(\bCURRENT_USER\b(?!\s*\())", kIcase);
  sql = std::regex_replace(sql, user, "CURRENT_USER()");
  static const std::regex array(
      R"(\(\s*SELECT\s+JSON_PARSE\s*\(\s*(:\w+)\s*\)\s+AS\s+elements\s*\)\s+AS\s+(\w+)_array\s*,\s*(\w+)_array\.elements\s+AS\s+(\w+))",
      kIcase);
  std::set<std::string> aliases;
  for (auto it = std::sregex_iterator(sql.begin(), sql.end(), array); it != std::sregex_iterator();
       ++it) {
    aliases.insert((*it)[4].str());
  }
  sql = std::regex_replace(sql, array, "json_each($1) AS $4");
  for (const std::string& a : aliases) {
    const std::regex item(fmt::format(R"(CAST\(\s*{}\[(\d+)\]\s+AS\s+VARCHAR\(65535\)\s*\))", a),
                          kIcase);
    sql = std::regex_replace(sql, item, fmt::format("json_extract({}.value, '$$[$1]')", a));
    const std::regex value(fmt::format(R"(CAST\(\s*{}\s+AS\s+VARCHAR\(65535\)\s*\))", a), kIcase);
    sql = std::regex_replace(sql, value, fmt::format("{}.value", a));
  }
  return sql;
}

struct FakeRedshiftAwsServer::Statement {
  std::string id;
  std::string sql;
  std::string database;
  std::string final_status = "FINISHED";
  std::string error;
  int polls = 0;
  bool cancelled = false;
  double created_at = 0;
  json columns = json::array();
  std::vector<json> rows;
  int64_t result_size = 0;
};

FakeRedshiftAwsServer::FakeRedshiftAwsServer(FakeRedshiftAwsOptions options)
    : options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : &SystemClock()) {
  auto db = sqlite::Database::Open(":memory:", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (db.ok()) db_ = *std::move(db);
  if (db_ != nullptr) {
    sqlite3* raw = db_->raw();
    const int pure = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
    sqlite3_create_function_v2(raw, "MD5", 1, pure, nullptr, &Md5Function, nullptr, nullptr,
                               nullptr);
    sqlite3_create_function_v2(raw, "JSON_SERIALIZE", 1, pure, nullptr, &JsonSerializeFunction,
                               nullptr, nullptr, nullptr);
    sqlite3_create_function_v2(raw, "CURRENT_USER", 0, SQLITE_UTF8, &current_user_,
                               &ContextTextFunction, nullptr, nullptr, nullptr);
    sqlite3_create_function_v2(raw, "CURRENT_DATABASE", 0, SQLITE_UTF8, &current_database_,
                               &ContextTextFunction, nullptr, nullptr, nullptr);
  }
}

void FakeRedshiftAwsServer::DenyPrivilege(std::string statement_prefix, std::string object) {
  std::lock_guard<std::mutex> lock(mu_);
  denials_.emplace_back(std::move(statement_prefix), std::move(object));
}

void FakeRedshiftAwsServer::ClearDenials() {
  std::lock_guard<std::mutex> lock(mu_);
  denials_.clear();
}

absl::StatusOr<std::vector<std::vector<std::string>>> FakeRedshiftAwsServer::Select(
    const std::string& sql) {
  std::lock_guard<std::mutex> lock(mu_);
  BACKFLOW_ASSIGN_OR_RETURN(sqlite::Statement stmt, db_->Prepare(sql));
  std::vector<std::vector<std::string>> rows;
  const int n = sqlite3_column_count(stmt.raw());
  while (true) {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, stmt.Step());
    if (!more) return rows;
    std::vector<std::string> row;
    for (int i = 0; i < n; ++i) {
      row.push_back(sqlite3_column_type(stmt.raw(), i) == SQLITE_NULL
                        ? "<null>"
                        : std::string(stmt.ColumnText(i)));
    }
    rows.push_back(std::move(row));
  }
}

FakeRedshiftAwsServer::~FakeRedshiftAwsServer() { Stop(); }

absl::Status FakeRedshiftAwsServer::Start() {
  if (db_ == nullptr) return absl::InternalError("fake redshift: cannot open SQLite");
  server_ = std::make_unique<HttpTestServer>([this](const TestRequest& r) { return Handle(r); });
  return server_->Start();
}

void FakeRedshiftAwsServer::Stop() {
  if (server_ != nullptr) server_->Stop();
}

std::string FakeRedshiftAwsServer::Url() const {
  std::string url = server_->Url("/");
  url.pop_back();
  return url;
}

absl::Status FakeRedshiftAwsServer::Exec(const std::string& sql) {
  std::lock_guard<std::mutex> lock(mu_);
  static const std::regex attach(R"(ATTACH\s+DATABASE\s+\S+\s+AS\s+(\w+))", kIcase);
  std::smatch m;
  if (std::regex_search(sql, m, attach)) schemas_.insert(Lower(m[1].str()));
  return db_->Exec(sql);
}

void FakeRedshiftAwsServer::InjectError(FakeAwsFault fault) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.push_back(std::move(fault));
}

void FakeRedshiftAwsServer::ExpireSessionToken() {
  std::lock_guard<std::mutex> lock(mu_);
  token_expired_ = true;
}

void FakeRedshiftAwsServer::SetPollsBeforeFinish(int submitted, int started) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.polls_submitted = submitted;
  options_.polls_started = started;
}

void FakeRedshiftAwsServer::AbortAtPoll(int poll) {
  std::lock_guard<std::mutex> lock(mu_);
  abort_at_poll_ = poll;
}

int FakeRedshiftAwsServer::Calls(std::string_view operation) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = calls_.find(std::string(operation));
  return it == calls_.end() ? 0 : it->second;
}

int FakeRedshiftAwsServer::auth_refusals() const {
  std::lock_guard<std::mutex> lock(mu_);
  return auth_refusals_;
}

std::vector<json> FakeRedshiftAwsServer::ExecuteRequests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return execute_requests_;
}

std::vector<std::map<std::string, std::string>> FakeRedshiftAwsServer::CredentialRequests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return credential_requests_;
}

std::string FakeRedshiftAwsServer::StatementStatus(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = statements_.find(id);
  if (it == statements_.end()) return "";
  const Statement& st = *it->second;
  if (st.cancelled) return "ABORTED";
  if (st.polls < options_.polls_submitted) return "SUBMITTED";
  if (st.polls < options_.polls_submitted + options_.polls_started) return "STARTED";
  return st.final_status;
}

std::vector<std::string> FakeRedshiftAwsServer::CancelRequests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancels_;
}

bool FakeRedshiftAwsServer::TakeFault(const std::string& operation, FakeAwsFault& fault) {
  for (auto it = faults_.begin(); it != faults_.end(); ++it) {
    if (it->operation != operation) continue;
    fault = *it;
    if (--it->times <= 0) faults_.erase(it);
    return true;
  }
  return false;
}

std::string FakeRedshiftAwsServer::CheckSignature(const TestRequest& request,
                                                  const std::string& service, bool json_protocol,
                                                  std::string& message) {
  const std::string bad_key =
      json_protocol ? "UnrecognizedClientException" : "InvalidClientTokenId";
  const std::string bad_sig = json_protocol ? "InvalidSignatureException" : "SignatureDoesNotMatch";
  std::optional<std::string> header = request.Header("authorization");
  if (!header) {
    message = "Missing Authentication Token";
    return json_protocol ? "MissingAuthenticationTokenException" : "MissingAuthenticationToken";
  }
  absl::StatusOr<SigV4Authorization> auth = ParseSigV4Authorization(*header);
  if (!auth.ok()) {
    message = std::string(auth.status().message());
    return json_protocol ? "IncompleteSignatureException" : "IncompleteSignature";
  }
  if (auth->access_key_id != options_.access_key_id) {
    message = "The security token included in the request is invalid.";
    return bad_key;
  }
  if (auth->service != service || auth->region != options_.region) {
    message =
        fmt::format("Credential should be scoped to a valid region and service '{}'.", service);
    return bad_sig;
  }
  std::optional<std::string> amz_date = request.Header("x-amz-date");
  bool signs_host = std::find(auth->signed_headers.begin(), auth->signed_headers.end(), "host") !=
                    auth->signed_headers.end();
  bool signs_date = std::find(auth->signed_headers.begin(), auth->signed_headers.end(),
                              "x-amz-date") != auth->signed_headers.end();
  if (!amz_date || !signs_host || !signs_date || amz_date->substr(0, 8) != auth->date) {
    message =
        "The request must sign the host and x-amz-date headers, and the credential scope "
        "must be for the request's date.";
    return bad_sig;
  }
  Clock::TimePoint now = clock_->Now();
  std::string earliest = AwsAmzDate(now - kMaxSkew);
  std::string latest = AwsAmzDate(now + kMaxSkew);
  if (*amz_date < earliest || *amz_date > latest) {
    message = fmt::format("Signature expired: {} is now earlier than {} ({} - 15 min.)", *amz_date,
                          earliest, AwsAmzDate(now));
    return bad_sig;
  }
  SigV4Request sig;
  sig.method = request.method;
  std::string_view target = request.target;
  size_t q = target.find('?');
  sig.path = std::string(target.substr(0, q));
  if (q != std::string_view::npos) sig.query = std::string(target.substr(q + 1));
  sig.payload = request.body;
  for (const std::string& name : auth->signed_headers) {
    bool found = false;
    for (const auto& [k, v] : request.headers) {
      if (k == name) {
        sig.headers.emplace_back(k, v);
        found = true;
      }
    }
    if (!found) {
      message = fmt::format("Signed header {} is not in the request.", name);
      return bad_sig;
    }
  }
  AwsCredentials creds{options_.access_key_id, options_.secret_access_key, ""};
  SigV4Signature expect = ComputeSigV4(sig, creds, auth->region, auth->service, *amz_date);
  if (!ConstantTimeEquals(expect.signature, auth->signature)) {
    message =
        "The request signature we calculated does not match the signature you provided. Check "
        "your AWS Secret Access Key and signing method. Consult the service documentation for "
        "details.";
    return bad_sig;
  }
  if (!options_.session_token.empty()) {
    std::optional<std::string> token = request.Header("x-amz-security-token");
    bool signed_token = std::find(auth->signed_headers.begin(), auth->signed_headers.end(),
                                  "x-amz-security-token") != auth->signed_headers.end();
    if (!token || *token != options_.session_token || !signed_token) {
      message = "The security token included in the request is invalid.";
      return bad_key;
    }
    if (token_expired_) {
      message = "The security token included in the request is expired";
      return json_protocol ? "ExpiredTokenException" : "ExpiredToken";
    }
  }
  return "";
}

TestResponse FakeRedshiftAwsServer::Handle(const TestRequest& request) {
  if (request.method != "POST" || request.target != "/") {
    return JsonError(404, "UnknownOperationException", "POST / only");
  }
  std::optional<std::string> target = request.Header("x-amz-target");
  if (target) return HandleJson(request, *target);
  return HandleQueryApi(request);
}

TestResponse FakeRedshiftAwsServer::HandleQueryApi(const TestRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string message;
  std::string code = CheckSignature(request, "redshift", /*json=*/false, message);
  if (!code.empty()) {
    ++auth_refusals_;
    return XmlError(code == "MissingAuthenticationToken" ? 403 : 403, code, message);
  }
  std::map<std::string, std::string> params = ParseQuery(request.body);
  const std::string action = params["Action"];
  if (action != "GetClusterCredentials") {
    return XmlError(
        400, "InvalidAction",
        fmt::format("Could not find operation {} for version {}", action, params["Version"]));
  }
  ++calls_[action];
  credential_requests_.push_back(params);
  if (params["Version"] != "2012-12-01") {
    return XmlError(400, "InvalidParameterValue", "Unsupported Version");
  }
  FakeAwsFault fault;
  if (TakeFault(action, fault)) return XmlError(fault.status, fault.code, fault.message);
  if (params["ClusterIdentifier"] != options_.cluster_identifier) {
    return XmlError(404, "ClusterNotFound",
                    fmt::format("Cluster {} not found.", params["ClusterIdentifier"]));
  }
  if (params["DbUser"].empty()) {
    return XmlError(400, "MissingParameter", "The request must contain the parameter DbUser");
  }
  int duration = 900;
  if (!params["DurationSeconds"].empty()) duration = std::stoi(params["DurationSeconds"]);
  if (duration < 900 || duration > 3600) {
    return XmlError(400, "InvalidParameterValue",
                    "DurationSeconds must be between 900 and 3600 seconds.");
  }
  std::string user = options_.db_user.empty() ? "IAM:" + params["DbUser"] : options_.db_user;
  TestResponse r;
  r.headers = {{"Content-Type", "text/xml"}};
  r.body = fmt::format(
      "<GetClusterCredentialsResponse xmlns=\"http://redshift.amazonaws.com/doc/2012-12-01/\">\n"
      "  <GetClusterCredentialsResult>\n    <DbUser>{}</DbUser>\n"
      "    <Expiration>{}</Expiration>\n    <DbPassword>{}</DbPassword>\n"
      "  </GetClusterCredentialsResult>\n  <ResponseMetadata>\n"
      "    <RequestId>fake-request-id</RequestId>\n  </ResponseMetadata>\n"
      "</GetClusterCredentialsResponse>\n",
      XmlEscape(user), IsoSeconds(clock_->Now() + std::chrono::seconds(duration)),
      XmlEscape(options_.db_password));
  return r;
}

TestResponse FakeRedshiftAwsServer::HandleJson(const TestRequest& request,
                                               const std::string& target) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t dot = target.find('.');
  std::string prefix = target.substr(0, dot);
  std::string op = dot == std::string::npos ? "" : target.substr(dot + 1);
  std::string service;
  if (prefix == "RedshiftData") service = "redshift-data";
  if (prefix == "RedshiftServerless") service = "redshift-serverless";
  if (service.empty()) return JsonError(400, "UnknownOperationException", "Unknown target");
  std::string message;
  std::string code = CheckSignature(request, service, /*json=*/true, message);
  if (!code.empty()) {
    ++auth_refusals_;
    return JsonError(
        code == "ExpiredTokenException" || code == "UnrecognizedClientException" ? 400 : 403, code,
        message);
  }
  if (request.Header("content-type").value_or("") != "application/x-amz-json-1.1") {
    return JsonError(400, "SerializationException", "Content-Type must be x-amz-json-1.1");
  }
  json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) return JsonError(400, "SerializationException", "body is not JSON");
  ++calls_[op];
  if (op == "ExecuteStatement") execute_requests_.push_back(body);
  FakeAwsFault fault;
  if (TakeFault(op, fault)) return JsonError(fault.status, fault.code, fault.message);
  if (service == "redshift-serverless") {
    if (op != "GetCredentials") return JsonError(400, "UnknownOperationException", op);
    std::string wg = body.value("workgroupName", "");
    if (wg != options_.workgroup_name) {
      return JsonError(400, "ResourceNotFoundException", fmt::format("Workgroup {} not found", wg));
    }
    int duration = body.value("durationSeconds", 900);
    std::string user = options_.db_user.empty() ? "IAM:fake-user" : options_.db_user;
    double expiration = ToUnixSeconds(clock_->Now() + std::chrono::seconds(duration));
    return JsonOk({{"dbUser", user},
                   {"dbPassword", options_.db_password},
                   {"expiration", expiration},
                   {"nextRefreshTime", expiration}});
  }
  return DataApi(op, body);
}

TestResponse FakeRedshiftAwsServer::DataApi(const std::string& op, const json& body) {
  if (op == "ExecuteStatement") return ExecuteStatement(body);
  if (op == "DescribeStatement") return DescribeStatement(body);
  if (op == "GetStatementResult") return GetStatementResult(body);
  if (op == "CancelStatement") return CancelStatement(body);
  return JsonError(400, "UnknownOperationException", "Unknown operation " + op);
}

TestResponse FakeRedshiftAwsServer::ExecuteStatement(const json& body) {
  std::string sql = body.value("Sql", "");
  std::string database = body.value("Database", "");
  std::string cluster = body.value("ClusterIdentifier", "");
  std::string workgroup = body.value("WorkgroupName", "");
  if (sql.empty()) return JsonError(400, "ValidationException", "Sql must not be empty");
  if (database.empty()) {
    return JsonError(400, "ValidationException", "Database must be specified");
  }
  if (cluster.empty() == workgroup.empty()) {
    return JsonError(400, "ValidationException",
                     "Either ClusterIdentifier or WorkgroupName must be specified");
  }
  if (!cluster.empty() && body.value("DbUser", "").empty() && body.value("SecretArn", "").empty()) {
    return JsonError(400, "ValidationException",
                     "DbUser or SecretArn is required for a provisioned cluster");
  }
  if ((!cluster.empty() && cluster != options_.cluster_identifier) ||
      (!workgroup.empty() && workgroup != options_.workgroup_name)) {
    return JsonError(400, "ValidationException", "Redshift endpoint doesn't exist in this region.");
  }
  std::string token = body.value("ClientToken", "");
  if (!token.empty()) {
    if (auto it = client_tokens_.find(token); it != client_tokens_.end()) {
      const Statement& st = *statements_[it->second];
      return JsonOk({{"Id", st.id}, {"CreatedAt", st.created_at}, {"Database", st.database}});
    }
  }
  auto st = std::make_unique<Statement>();
  st->id = fmt::format("d9b6c0c9-0747-4bf4-b142-{:012d}", next_id_++);
  st->sql = sql;
  st->database = database;
  st->created_at = ToUnixSeconds(clock_->Now());
  current_database_ = database;
  current_user_ = !body.value("DbUser", "").empty() ? "IAM:" + body.value("DbUser", "")
                  : options_.db_user.empty()        ? "IAM:fake-user"
                                                    : options_.db_user;
  RunSql(*st, body.value("Parameters", json::array()));
  json reply = {{"Id", st->id}, {"CreatedAt", st->created_at}, {"Database", database}};
  if (!cluster.empty()) reply["ClusterIdentifier"] = cluster;
  if (!workgroup.empty()) reply["WorkgroupName"] = workgroup;
  if (!token.empty()) client_tokens_[token] = st->id;
  statements_[st->id] = std::move(st);
  return JsonOk(reply);
}

void FakeRedshiftAwsServer::RunSql(Statement& st, const json& parameters) {
  for (const auto& [prefix, object] : denials_) {
    if (st.sql.rfind(prefix, 0) == 0) {
      st.final_status = "FAILED";
      st.error = "ERROR: permission denied for " + object;
      return;
    }
  }
  std::string error;
  const std::string sql = TranslateSql(st.sql, error);
  if (!error.empty()) {
    st.final_status = "FAILED";
    st.error = error;
    return;
  }
  absl::StatusOr<sqlite::Statement> stmt = db_->Prepare(sql);
  if (!stmt.ok()) {
    st.final_status = "FAILED";
    st.error = "ERROR: " + std::string(stmt.status().message());
    return;
  }
  sqlite3_stmt* raw = stmt->raw();
  // JSON_PARSE takes a VARCHAR: at most 65535 bytes.
  static const std::regex parsed(R"(JSON_PARSE\s*\(\s*(:\w+)\s*\))", kIcase);
  std::set<std::string> parsed_markers;
  for (auto it = std::sregex_iterator(st.sql.begin(), st.sql.end(), parsed);
       it != std::sregex_iterator(); ++it) {
    parsed_markers.insert((*it)[1].str());
  }
  for (const json& p : parameters.is_array() ? parameters : json::array()) {
    const std::string name = ":" + p.value("name", "");
    const std::string value = p.value("value", "");
    const int index = sqlite3_bind_parameter_index(raw, name.c_str());
    if (index == 0 || value.empty()) {
      st.final_status = "FAILED";
      st.error = index == 0 ? fmt::format("ERROR: parameter {} is not in the statement", name)
                            : fmt::format("ERROR: parameter {} has an empty value", name);
      return;
    }
    if (parsed_markers.count(name) != 0 && value.size() > kMaxVarcharBytes) {
      st.final_status = "FAILED";
      st.error =
          fmt::format("ERROR: value too long for type character varying({})", kMaxVarcharBytes);
      return;
    }
    sqlite3_bind_text(raw, index, value.c_str(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
  }
  if (sqlite3_bind_parameter_count(raw) >
      static_cast<int>(parameters.is_array() ? parameters.size() : 0)) {
    st.final_status = "FAILED";
    st.error = "ERROR: not all parameters of the statement have a value";
    return;
  }
  int n = sqlite3_column_count(raw);
  std::vector<std::string> types(n);
  for (int i = 0; i < n; ++i) {
    std::string name = sqlite3_column_name(raw, i);
    auto it = options_.column_types.find(name);
    types[i] = it != options_.column_types.end() ? it->second
                                                 : TypeForDecl(sqlite3_column_decltype(raw, i));
  }
  while (true) {
    absl::StatusOr<bool> step = stmt->Step();
    if (!step.ok()) {
      st.final_status = "FAILED";
      st.error = "ERROR: " + std::string(step.status().message());
      st.rows.clear();
      return;
    }
    if (!*step) break;
    json record = json::array();
    for (int i = 0; i < n; ++i) {
      int kind = sqlite3_column_type(raw, i);
      if (types[i].empty()) {
        types[i] = kind == SQLITE_INTEGER ? "int8" : kind == SQLITE_FLOAT ? "float8" : "varchar";
      }
      const std::string& t = types[i];
      if (kind == SQLITE_NULL) {
        record.push_back({{"isNull", true}});
      } else if (t == "int2" || t == "int4" || t == "int8") {
        record.push_back({{"longValue", stmt->ColumnInt(i)}});
      } else if (t == "float4" || t == "float8") {
        record.push_back({{"doubleValue", stmt->ColumnDouble(i)}});
      } else if (t == "bool") {
        std::string text(stmt->ColumnText(i));
        record.push_back({{"booleanValue", text == "1" || Lower(text) == "true" || text == "t"}});
      } else if (t == "varbyte") {
        record.push_back({{"blobValue", Base64Encode(stmt->ColumnBlob(i))}});
      } else {
        record.push_back({{"stringValue", std::string(stmt->ColumnText(i))}});
      }
      st.result_size += static_cast<int64_t>(record.back().dump().size());
    }
    st.rows.push_back(std::move(record));
  }
  for (int i = 0; i < n; ++i) {
    std::string name = sqlite3_column_name(raw, i);
    const std::string& t = types[i].empty() ? std::string("varchar") : types[i];
    json meta = {{"name", name},
                 {"label", name},
                 {"typeName", t},
                 {"nullable", 1},
                 {"isSigned", t.starts_with("int") || t == "numeric"},
                 {"precision", 0},
                 {"scale", 0},
                 {"length", 0},
                 {"schemaName", ""},
                 {"tableName", ""},
                 {"isCaseSensitive", t == "varchar"},
                 {"isCurrency", false},
                 {"columnDefault", nullptr}};
    st.columns.push_back(std::move(meta));
  }
}

TestResponse FakeRedshiftAwsServer::DescribeStatement(const json& body) {
  std::string id = body.value("Id", "");
  auto it = statements_.find(id);
  if (it == statements_.end()) {
    return JsonError(400, "ResourceNotFoundException", fmt::format("Query {} not found", id));
  }
  Statement& st = *it->second;
  if (abort_at_poll_ > 0 && st.polls + 1 == abort_at_poll_ &&
      st.polls < options_.polls_submitted + options_.polls_started) {
    st.cancelled = true;
  }
  std::string status;
  if (st.cancelled) {
    status = "ABORTED";
  } else if (st.polls < options_.polls_submitted) {
    status = "SUBMITTED";
  } else if (st.polls < options_.polls_submitted + options_.polls_started) {
    status = "STARTED";
  } else {
    status = st.final_status;
  }
  ++st.polls;
  json reply = {{"Id", st.id},
                {"Status", status},
                {"QueryString", st.sql},
                {"Database", st.database},
                {"CreatedAt", st.created_at},
                {"UpdatedAt", ToUnixSeconds(clock_->Now())},
                {"HasResultSet", status == "FINISHED" && !st.columns.empty()},
                {"RedshiftPid", 1073815778},
                {"RedshiftQueryId", 0},
                {"Duration", status == "FINISHED" ? 1'000'000 : -1}};
  if (status == "FINISHED") {
    reply["ResultRows"] = static_cast<int64_t>(st.rows.size());
    reply["ResultSize"] = st.result_size;
    reply["RedshiftQueryId"] = 104010;
  } else {
    reply["ResultRows"] = -1;
    reply["ResultSize"] = -1;
  }
  if (status == "FAILED") reply["Error"] = st.error;
  if (status == "ABORTED") reply["Error"] = "Query was cancelled by the user.";
  return JsonOk(reply);
}

TestResponse FakeRedshiftAwsServer::GetStatementResult(const json& body) {
  std::string id = body.value("Id", "");
  auto it = statements_.find(id);
  if (it == statements_.end()) {
    return JsonError(400, "ResourceNotFoundException", fmt::format("Query {} not found", id));
  }
  Statement& st = *it->second;
  bool finished = !st.cancelled && st.final_status == "FINISHED" &&
                  st.polls >= options_.polls_submitted + options_.polls_started + 1;
  if (!finished) {
    return JsonError(400, "ValidationException",
                     "Query does not have result. Please check query status with "
                     "DescribeStatement.");
  }
  size_t start = 0;
  std::string token = body.value("NextToken", "");
  if (!token.empty()) {
    std::string prefix = st.id + "/";
    if (!token.starts_with(prefix)) {
      return JsonError(400, "ValidationException", "Invalid NextToken");
    }
    start = static_cast<size_t>(std::stoll(token.substr(prefix.size())));
    if (start == 0 || start >= st.rows.size()) {
      return JsonError(400, "ValidationException", "Invalid NextToken");
    }
  }
  size_t end = std::min(st.rows.size(), start + static_cast<size_t>(options_.page_rows));
  json records = json::array();
  for (size_t i = start; i < end; ++i) records.push_back(st.rows[i]);
  json reply = {{"ColumnMetadata", st.columns},
                {"Records", records},
                {"TotalNumRows", static_cast<int64_t>(st.rows.size())}};
  if (end < st.rows.size()) reply["NextToken"] = fmt::format("{}/{}", st.id, end);
  return JsonOk(reply);
}

TestResponse FakeRedshiftAwsServer::CancelStatement(const json& body) {
  std::string id = body.value("Id", "");
  cancels_.push_back(id);
  auto it = statements_.find(id);
  if (it == statements_.end()) {
    return JsonError(400, "ResourceNotFoundException", fmt::format("Query {} not found", id));
  }
  Statement& st = *it->second;
  bool running = !st.cancelled && st.polls < options_.polls_submitted + options_.polls_started;
  if (!running) {
    std::string status = st.cancelled ? "ABORTED" : st.final_status;
    return JsonError(400, "ValidationException",
                     fmt::format("Could not cancel a query that is already in {} state.", status));
  }
  st.cancelled = true;
  return JsonOk({{"Status", true}});
}

}  // namespace backflow
