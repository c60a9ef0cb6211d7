#include "backflow/sources/bigquery/fake_bigquery_server.h"

#include <openssl/evp.h>
#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <regex>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "backflow/common/civil_date.h"
#include "backflow/common/crypto.h"
#include "backflow/common/url.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

std::string_view StatusName(int code) {
  switch (code) {
    case 400:
      return "INVALID_ARGUMENT";
    case 401:
      return "UNAUTHENTICATED";
    case 403:
      return "PERMISSION_DENIED";
    case 404:
      return "NOT_FOUND";
    case 409:
      return "ALREADY_EXISTS";
    case 429:
      return "RESOURCE_EXHAUSTED";
    case 500:
      return "INTERNAL";
    case 503:
      return "UNAVAILABLE";
    default:
      return "UNKNOWN";
  }
}

std::string DefaultMessage(const std::string& reason) {
  if (reason == "rateLimitExceeded") {
    return "Exceeded rate limits: too many api requests per user per method for this user_method. "
           "For more information, see "
           "https://cloud.google.com/bigquery/docs/troubleshoot-quotas";
  }
  if (reason == "quotaExceeded") {
    return "Quota exceeded: Your project exceeded quota for concurrent queries. For more "
           "information, see https://cloud.google.com/bigquery/docs/troubleshoot-quotas";
  }
  if (reason == "backendError" || reason == "internalError") {
    return "Error encountered during execution. Retrying may solve the problem.";
  }
  return "Scripted error (" + reason + ")";
}

// Google's error envelope with one ErrorProto.
TestResponse ApiError(int status, const std::string& reason, const std::string& message,
                      const std::string& location = "") {
  json proto = {
      {"message", message},
      {"domain",
       reason == "rateLimitExceeded" || reason == "quotaExceeded" ? "usageLimits" : "global"},
      {"reason", reason}};
  if (!location.empty()) {
    proto["location"] = location;
    proto["locationType"] = "parameter";
  }
  json body = {{"error",
                {{"code", status},
                 {"message", message},
                 {"errors", json::array({proto})},
                 {"status", StatusName(status)}}}};
  return TestResponse::Json(status, Dump(body));
}

TestResponse OAuthError(const std::string& error, const std::string& description) {
  return TestResponse::Json(400, Dump(json{{"error", error}, {"error_description", description}}));
}

bool SameLocation(const std::string& a, const std::string& b) { return Upper(a) == Upper(b); }

// ---------------------------------------------------------------- encoding

// Java's Double.toString layout of the shortest round-trip digits: plain
// ("1.5", "100.0") for 1e-3 <= |d| < 1e7, else "1.7172001231230001E9".
std::string JavaDouble(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e = sci.find('e');
  int exp = std::stoi(sci.substr(e + 1));
  std::string digits;
  for (char c : sci.substr(0, e)) {
    if (c != '.') digits.push_back(c);
  }
  std::string out = negative ? "-" : "";
  double mag = std::fabs(d);
  if (mag >= 1e-3 && mag < 1e7) {
    if (exp >= 0) {
      std::string whole = digits.substr(0, std::min<size_t>(digits.size(), exp + 1));
      whole.append(static_cast<size_t>(exp + 1) - whole.size(), '0');
      std::string frac = digits.size() > static_cast<size_t>(exp + 1) ? digits.substr(exp + 1) : "";
      out += whole + "." + (frac.empty() ? "0" : frac);
    } else {
      out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
    return out;
  }
  out += digits.substr(0, 1) + "." + (digits.size() > 1 ? digits.substr(1) : "0");
  out += "E" + std::to_string(exp);
  return out;
}

std::string ShortestDouble(double d) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d);
  return std::string(buf, res.ptr);
}

// "YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|+HH:MM|-HH:MM| UTC]" -> epoch micros.
std::optional<int64_t> ParseTimestampText(std::string_view s) {
  auto y = FixedDigits(s, 0, 4), mo = FixedDigits(s, 5, 2), d = FixedDigits(s, 8, 2);
  if (!y || !mo || !d || s[4] != '-' || s[7] != '-') return std::nullopt;
  int64_t micros = DaysFromCivil(*y, *mo, *d) * 86'400'000'000LL;
  if (s.size() == 10) return micros;
  auto h = FixedDigits(s, 11, 2), mi = FixedDigits(s, 14, 2), sec = FixedDigits(s, 17, 2);
  if (!h || !mi || !sec || (s[10] != ' ' && s[10] != 'T')) return std::nullopt;
  micros += ((*h * 3600LL) + (*mi * 60LL) + *sec) * 1'000'000LL;
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    int64_t frac = 0;
    int digits = 0;
    for (++i; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i) {
      if (digits < 6) frac = frac * 10 + (s[i] - '0');
      ++digits;
    }
    for (; digits < 6; ++digits) frac *= 10;
    micros += frac;
  }
  std::string_view zone = s.substr(i);
  if (zone.empty() || zone == "Z" || zone == " UTC" || zone == "+00" || zone == "+00:00") {
    return micros;
  }
  if ((zone[0] == '+' || zone[0] == '-') && zone.size() == 6 && zone[3] == ':') {
    auto zh = FixedDigits(s, i + 1, 2), zm = FixedDigits(s, i + 4, 2);
    if (!zh || !zm) return std::nullopt;
    int64_t offset = (*zh * 3600LL + *zm * 60LL) * 1'000'000LL;
    return zone[0] == '+' ? micros - offset : micros + offset;
  }
  return std::nullopt;
}

std::string TrimDecimal(std::string s) {
  if (s.find('.') != std::string::npos && s.find_first_of("eE") == std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  return s;
}

std::string BqTypeFromDecl(const char* decl) {
  if (decl == nullptr) return "";
  std::string d = Upper(decl);
  size_t end = d.find_first_of(" (<");
  std::string word = d.substr(0, end);
  if (word == "INT64" || word == "INTEGER" || word == "INT" || word == "BIGINT" ||
      word == "SMALLINT") {
    return "INTEGER";
  }
  if (word == "FLOAT64" || word == "FLOAT" || word == "REAL" || word == "DOUBLE") return "FLOAT";
  if (word == "NUMERIC" || word == "DECIMAL") return "NUMERIC";
  if (word == "BIGNUMERIC" || word == "BIGDECIMAL") return "BIGNUMERIC";
  if (word == "BOOL" || word == "BOOLEAN") return "BOOLEAN";
  if (word == "BYTES" || word == "BLOB") return "BYTES";
  if (word == "DATE" || word == "DATETIME" || word == "TIME" || word == "TIMESTAMP" ||
      word == "JSON" || word == "GEOGRAPHY" || word == "STRING") {
    return word;
  }
  return "STRING";
}

// `a.b.c` and `b.c` quoted in backticks -> b.c (SQLite schema.table).
std::string RewriteBackticks(const std::string& sql) {
  std::string out;
  for (size_t i = 0; i < sql.size(); ++i) {
    if (sql[i] == '\'') {  // copy string literals untouched
      size_t end = i + 1;
      while (end < sql.size()) {
        if (sql[end] == '\'') {
          if (end + 1 < sql.size() && sql[end + 1] == '\'') {
            end += 2;
            continue;
          }
          break;
        }
        ++end;
      }
      out += sql.substr(i, end - i + 1);
      i = end;
      continue;
    }
    if (sql[i] != '`') {
      out.push_back(sql[i]);
      continue;
    }
    size_t close = sql.find('`', i + 1);
    if (close == std::string::npos) {
      out += sql.substr(i);
      break;
    }
    std::string ident = sql.substr(i + 1, close - i - 1);
    size_t dots = std::count(ident.begin(), ident.end(), '.');
    if (dots == 2) ident = ident.substr(ident.find('.') + 1);
    if (dots >= 1) {
      size_t dot = ident.find('.');
      out += "\"" + ident.substr(0, dot) + "\".\"" + ident.substr(dot + 1) + "\"";
    } else {
      out += "\"" + ident + "\"";
    }
    i = close;
  }
  return out;
}

// --- The GoogleSQL beyond SQLite's that the fake understands -----------------

constexpr auto kIcase = std::regex::ECMAScript | std::regex::icase;

// Numbers the `?` placeholders outside quotes ?1, ?2, ... (so that the
// statements a MERGE becomes bind them by number); `count` gets how many.
std::string NumberPlaceholders(std::string_view sql, size_t& count) {
  std::string out;
  count = 0;
  char quote = 0;
  for (char c : sql) {
    if (quote != 0) {
      if (c == quote) quote = 0;
      out.push_back(c);
    } else if (c == '\'' || c == '"') {
      quote = c;
      out.push_back(c);
    } else if (c == '?') {
      out += fmt::format("?{}", ++count);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Rewrites the GoogleSQL forms SQLite spells otherwise.
std::string TranslateSql(std::string sql) {
  static const std::regex unnest(
      R"(UNNEST\s*\(\s*JSON_EXTRACT_ARRAY\s*\(\s*(\?\d+)\s*\)\s*\)\s+AS\s+(\w+))", kIcase);
  static const std::regex json_value_path(R"(JSON_VALUE\s*\(\s*(\w+)\s*,\s*('[^']*')\s*\))",
                                          kIcase);
  static const std::regex json_value(R"(JSON_VALUE\s*\(\s*(\w+)\s*\))", kIcase);
  static const std::regex as_string(R"(\bAS\s+STRING\s*\))", kIcase);
  static const std::regex union_distinct(R"(\bUNION\s+DISTINCT\b)", kIcase);
  static const std::regex not_enforced(R"(\s+NOT\s+ENFORCED\b)", kIcase);
  static const std::regex create_table(
      R"(^\s*CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?[^\s(]+\s*\()", kIcase);
  static const std::regex string_type(R"(\bSTRING\b)");
  sql = std::regex_replace(sql, unnest, "json_each($1) AS $2");
  sql = std::regex_replace(sql, json_value_path, "json_extract($1.value, $2)");
  sql = std::regex_replace(sql, json_value, "$1.value");
  sql = std::regex_replace(sql, as_string, "AS TEXT)");
  sql = std::regex_replace(sql, union_distinct, "UNION");
  sql = std::regex_replace(sql, not_enforced, "");
  // Column definitions: STRING keeps text as text (SQLite's affinity of a
  // bare STRING would be NUMERIC).
  if (std::regex_search(sql, create_table))
    sql = std::regex_replace(sql, string_type, "STRING TEXT");
  return sql;
}

std::string BlobOrText(sqlite3_value* v) {
  const void* data = sqlite3_value_type(v) == SQLITE_BLOB
                         ? sqlite3_value_blob(v)
                         : static_cast<const void*>(sqlite3_value_text(v));
  const int size = sqlite3_value_bytes(v);
  return data == nullptr ? std::string() : std::string(static_cast<const char*>(data), size);
}

// MD5(x): the 16-byte digest (BYTES).
void Md5Function(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return sqlite3_result_null(ctx);
  const std::string in = BlobOrText(argv[0]);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(in.data(), in.size(), digest, &length, EVP_md5(), nullptr);
  sqlite3_result_blob(ctx, digest, static_cast<int>(length), SQLITE_TRANSIENT);
}

// TO_HEX(bytes): lowercase hex.
void ToHexFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return sqlite3_result_null(ctx);
  const std::string hex = HexEncode(BlobOrText(argv[0]));
  sqlite3_result_text(ctx, hex.c_str(), static_cast<int>(hex.size()), SQLITE_TRANSIENT);
}

void ToBase64Function(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return sqlite3_result_null(ctx);
  const std::string b64 = Base64Encode(BlobOrText(argv[0]));
  sqlite3_result_text(ctx, b64.c_str(), static_cast<int>(b64.size()), SQLITE_TRANSIENT);
}

// TO_JSON_STRING(x): the value's text (the fake's values of JSON, STRUCT and
// ARRAY columns are JSON text already).
void ToJsonStringFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) {
    sqlite3_result_text(ctx, "null", 4, SQLITE_STATIC);
    return;
  }
  const std::string text = BlobOrText(argv[0]);
  sqlite3_result_text(ctx, text.c_str(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

// A job's statementType for SQL the fake ran.
std::string StatementType(const std::string& sql) {
  static const std::regex word(R"(^\s*(\w+)(?:\s+(\w+))?)");
  std::smatch m;
  if (!std::regex_search(sql, m, word)) return "SELECT";
  const std::string first = Upper(m[1].str()), second = Upper(m[2].str());
  if (first == "INSERT" || first == "UPDATE" || first == "DELETE" || first == "MERGE") {
    return first;
  }
  if (first == "CREATE" || first == "DROP") return first + "_" + second;
  return "SELECT";
}

}  // namespace

FakeBigQueryFault FakeBigQueryFault::RateLimit(std::string method, int times) {
  FakeBigQueryFault f;
  f.method = std::move(method);
  f.status = 403;
  f.reason = "rateLimitExceeded";
  f.times = times;
  return f;
}

FakeBigQueryFault FakeBigQueryFault::BackendError(std::string method, int times) {
  FakeBigQueryFault f;
  f.method = std::move(method);
  f.status = 500;
  f.reason = "backendError";
  f.times = times;
  return f;
}

FakeBigQueryFault FakeBigQueryFault::InvalidQuery(std::string message, std::string location) {
  FakeBigQueryFault f;
  f.method = "query";
  f.status = 400;
  f.reason = "invalidQuery";
  f.message = std::move(message);
  f.location = std::move(location);
  return f;
}

FakeBigQueryServer::FakeBigQueryServer(FakeBigQueryOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {
  auto db = sqlite::Database::Open(":memory:", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (db.ok()) {
    db_ = *std::move(db);
    const int pure = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
    sqlite3* raw = db_->raw();
    sqlite3_create_function_v2(raw, "MD5", 1, pure, nullptr, &Md5Function, nullptr, nullptr,
                               nullptr);
    sqlite3_create_function_v2(raw, "TO_HEX", 1, pure, nullptr, &ToHexFunction, nullptr, nullptr,
                               nullptr);
    sqlite3_create_function_v2(raw, "TO_BASE64", 1, pure, nullptr, &ToBase64Function, nullptr,
                               nullptr, nullptr);
    sqlite3_create_function_v2(raw, "TO_JSON_STRING", 1, pure, nullptr, &ToJsonStringFunction,
                               nullptr, nullptr, nullptr);
  }
  projects_.insert(options_.project_id);
}

FakeBigQueryServer::~FakeBigQueryServer() { Stop(); }

absl::Status FakeBigQueryServer::Start() {
  if (db_ == nullptr) return absl::InternalError("the fake's SQLite database did not open");
  return server_.Start();
}

void FakeBigQueryServer::Stop() { server_.Stop(); }

std::string FakeBigQueryServer::BaseUrl() const {
  std::string url = server_.Url("/");
  url.pop_back();
  return url;
}

std::string FakeBigQueryServer::TokenUrl() const { return BaseUrl() + options_.token_path; }

Clock& FakeBigQueryServer::clock() const {
  return options_.clock != nullptr ? *options_.clock : SystemClock();
}

std::string FakeBigQueryServer::AddServiceAccount(const std::string& client_email) {
  absl::StatusOr<RsaKeyPair> pair = GenerateRsaKeyPair();
  if (!pair.ok()) return "";
  absl::StatusOr<std::unique_ptr<Rs256Key>> pub = Rs256Key::FromPublicKeyPem(pair->public_key_pem);
  if (!pub.ok()) return "";
  std::lock_guard<std::mutex> lock(mu_);
  std::string key_id = fmt::format("key-{}", accounts_.size() + 1);
  Account& account = accounts_[client_email];
  account.public_key = *std::move(pub);
  account.key_id = key_id;
  return Dump(json{{"type", "service_account"},
                   {"project_id", options_.project_id},
                   {"private_key_id", key_id},
                   {"private_key", pair->private_key_pem},
                   {"client_email", client_email},
                   {"client_id", "100000000000000000001"},
                   {"token_uri", TokenUrl()}});
}

void FakeBigQueryServer::AddProject(const std::string& project_id) {
  std::lock_guard<std::mutex> lock(mu_);
  projects_.insert(project_id);
}

absl::Status FakeBigQueryServer::CreateDataset(const std::string& dataset,
                                               const std::string& location) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status s = db_->Exec(fmt::format("ATTACH DATABASE ':memory:' AS \"{}\"", dataset));
  if (s.ok()) datasets_[dataset] = location;
  return s;
}

absl::Status FakeBigQueryServer::Exec(const std::string& sql) {
  std::lock_guard<std::mutex> lock(mu_);
  return db_->Exec(sql);
}

void FakeBigQueryServer::SetColumnSchema(const std::string& column, json field) {
  std::lock_guard<std::mutex> lock(mu_);
  column_schemas_[column] = std::move(field);
}

void FakeBigQueryServer::DenyJobsCreate(const std::string& client_email) {
  std::lock_guard<std::mutex> lock(mu_);
  accounts_[client_email].deny_jobs_create = true;
}

void FakeBigQueryServer::DenyDataset(const std::string& client_email, const std::string& dataset) {
  std::lock_guard<std::mutex> lock(mu_);
  accounts_[client_email].denied_datasets.insert(dataset);
}

void FakeBigQueryServer::DenyDatasetCreate(const std::string& client_email) {
  std::lock_guard<std::mutex> lock(mu_);
  accounts_[client_email].deny_dataset_create = true;
}

void FakeBigQueryServer::DenyDatasetWrite(const std::string& client_email,
                                          const std::string& dataset) {
  std::lock_guard<std::mutex> lock(mu_);
  accounts_[client_email].denied_writes.insert(dataset);
}

void FakeBigQueryServer::ClearDenials(const std::string& client_email) {
  std::lock_guard<std::mutex> lock(mu_);
  Account& account = accounts_[client_email];
  account.deny_dataset_create = false;
  account.denied_writes.clear();
  account.denied_datasets.clear();
}

void FakeBigQueryServer::RevokeTokens() {
  std::lock_guard<std::mutex> lock(mu_);
  tokens_.clear();
}

void FakeBigQueryServer::SetPollsBeforeComplete(int polls) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.polls_before_complete = polls;
}

void FakeBigQueryServer::SetHonorInt64Timestamp(bool honor) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.honor_int64_timestamp = honor;
}

void FakeBigQueryServer::AddFault(FakeBigQueryFault fault) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.push_back(std::move(fault));
}

void FakeBigQueryServer::ClearFaults() {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.clear();
}

absl::StatusOr<json> FakeBigQueryServer::QueryRows(const std::string& sql) const {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<sqlite::Statement> stmt = db_->Prepare(sql);
  if (!stmt.ok()) return stmt.status();
  json rows = json::array();
  while (true) {
    absl::StatusOr<bool> more = stmt->Step();
    if (!more.ok()) return more.status();
    if (!*more) return rows;
    json row = json::object();
    for (int i = 0; i < sqlite3_column_count(stmt->raw()); ++i) {
      std::string name = sqlite3_column_name(stmt->raw(), i);
      switch (sqlite3_column_type(stmt->raw(), i)) {
        case SQLITE_INTEGER:
          row[name] = stmt->ColumnInt(i);
          break;
        case SQLITE_FLOAT:
          row[name] = stmt->ColumnDouble(i);
          break;
        case SQLITE_NULL:
          row[name] = nullptr;
          break;
        default:
          row[name] = std::string(stmt->ColumnText(i));
          break;
      }
    }
    rows.push_back(std::move(row));
  }
}

void FakeBigQueryServer::FailNextJob(FakeBigQueryJobError error) {
  std::lock_guard<std::mutex> lock(mu_);
  next_job_error_ = std::move(error);
}

std::vector<FakeBigQueryRequest> FakeBigQueryServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeBigQueryServer::CountRequests(const std::string& method, int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(), [&](const FakeBigQueryRequest& r) {
    return r.method == method && (status == 0 || r.status == status);
  });
}

std::vector<FakeBigQueryCancel> FakeBigQueryServer::Cancels() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancels_;
}

int64_t FakeBigQueryServer::jobs_created() const {
  std::lock_guard<std::mutex> lock(mu_);
  return jobs_created_;
}

int64_t FakeBigQueryServer::tokens_issued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_issued_;
}

DecodedJwt FakeBigQueryServer::LastAssertion() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_assertion_;
}

void FakeBigQueryServer::ClearRequests() {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.clear();
  cancels_.clear();
}

TestResponse FakeBigQueryServer::Handle(const TestRequest& req) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string_view target = req.target;
  size_t q = target.find('?');
  std::string path(target.substr(0, q));
  std::map<std::string, std::string> params =
      ParseQuery(q == std::string_view::npos ? "" : target.substr(q + 1));

  // Which method, project and job.
  std::string method = "unknown";
  std::string project;
  std::string job_id;
  constexpr std::string_view kPrefix = "/bigquery/v2/projects/";
  if (path == options_.token_path) {
    method = "token";
  } else if (std::string_view(path).starts_with(kPrefix)) {
    std::vector<std::string> parts;
    std::string_view rest = std::string_view(path).substr(kPrefix.size());
    while (true) {
      size_t slash = rest.find('/');
      parts.push_back(PercentDecode(rest.substr(0, slash), false));
      if (slash == std::string_view::npos) break;
      rest.remove_prefix(slash + 1);
    }
    project = parts[0];
    if (parts.size() == 2 && parts[1] == "queries" && req.method == "POST") {
      method = "query";
    } else if (parts.size() == 3 && parts[1] == "queries" && req.method == "GET") {
      method = "getQueryResults";
      job_id = parts[2];
    } else if (parts.size() == 3 && parts[1] == "jobs" && req.method == "GET") {
      method = "jobs.get";
      job_id = parts[2];
    } else if (parts.size() == 4 && parts[1] == "jobs" && parts[3] == "cancel" &&
               req.method == "POST") {
      method = "cancel";
      job_id = parts[2];
    }
  }
  FakeBigQueryRequest log{method, req.method, req.target, params, req.body, "", 0, ""};

  TestResponse resp;
  std::optional<FakeBigQueryFault> fault;
  auto take_fault = [&]() {
    for (auto it = faults_.begin(); it != faults_.end(); ++it) {
      bool matches = it->method.empty() ? method != "token" : it->method == method;
      if (!matches) continue;
      if (it->skip > 0) {
        --it->skip;
        return;
      }
      fault = *it;
      if (--it->times <= 0) faults_.erase(it);
      return;
    }
  };
  auto fault_reply = [&]() {
    if (fault->reset_connection) return TestResponse::Reset();
    return ApiError(fault->status, fault->reason,
                    fault->message.empty() ? DefaultMessage(fault->reason) : fault->message,
                    fault->location);
  };

  if (method == "token") {
    take_fault();
    resp = fault && !fault->apply_first ? fault_reply() : HandleToken(req);
    if (fault && fault->apply_first) resp = fault_reply();
  } else {
    std::optional<std::string> auth = req.Header("authorization");
    auto token =
        auth && auth->rfind("Bearer ", 0) == 0 ? tokens_.find(auth->substr(7)) : tokens_.end();
    if (token == tokens_.end() || clock().Now() >= token->second.expires) {
      resp = ApiError(401, "authError",
                      "Request had invalid authentication credentials. Expected OAuth 2 access "
                      "token, login cookie or other valid authentication credential. See "
                      "https://developers.google.com/identity/sign-in/web/devconsole-project.");
    } else {
      log.account = token->second.account;
      take_fault();
      if (fault && !fault->apply_first) {
        resp = fault_reply();
      } else {
        resp = Route(method, project, job_id, req, params, log.account);
        if (fault) resp = fault_reply();
      }
    }
  }
  log.status = resp.reset_connection ? 0 : resp.status;
  log.reply = resp.body;
  requests_.push_back(std::move(log));
  return resp;
}

TestResponse FakeBigQueryServer::HandleToken(const TestRequest& req) {
  if (req.method != "POST") return OAuthError("invalid_request", "Method not allowed");
  std::optional<std::string> type = req.Header("content-type");
  if (!type || type->rfind("application/x-www-form-urlencoded", 0) != 0) {
    return OAuthError("invalid_request", "Bad Request");
  }
  auto form = ParseQuery(req.body);
  if (form["grant_type"] != kJwtBearerGrantType) {
    return OAuthError("unsupported_grant_type", "Invalid grant_type: " + form["grant_type"]);
  }
  const std::string& assertion = form["assertion"];
  absl::StatusOr<DecodedJwt> decoded = DecodeJwt(assertion);
  if (!decoded.ok()) return OAuthError("invalid_grant", "Invalid JWT: malformed");
  last_assertion_ = *decoded;
  std::string iss = decoded->claims.value("iss", "");
  auto account = accounts_.find(iss);
  if (account == accounts_.end() || account->second.public_key == nullptr) {
    return OAuthError("invalid_grant", "Invalid grant: account not found");
  }
  if (decoded->header.contains("kid") && decoded->header["kid"] != account->second.key_id) {
    return OAuthError("invalid_grant", "Invalid JWT Signature.");
  }
  if (!VerifyJwtRs256(assertion, *account->second.public_key).ok()) {
    return OAuthError("invalid_grant", "Invalid JWT Signature.");
  }
  const json& c = decoded->claims;
  std::string audience = options_.audience.empty() ? TokenUrl() : options_.audience;
  if (c.value("aud", "") != audience) {
    return OAuthError("invalid_grant",
                      "Invalid JWT: Failed audience check. The right audience is " + audience);
  }
  int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(clock().Now().time_since_epoch()).count();
  if (!c.contains("iat") || !c["iat"].is_number_integer() || !c.contains("exp") ||
      !c["exp"].is_number_integer() || c["exp"].get<int64_t>() <= now ||
      c["exp"].get<int64_t>() - c["iat"].get<int64_t>() > options_.max_assertion_lifetime.count() ||
      c["iat"].get<int64_t>() > now + 300) {
    return OAuthError("invalid_grant",
                      "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                      "reasonable timeframe. Check your iat and exp values in the JWT claim.");
  }
  std::string scope = c.value("scope", "");
  bool has_scope = false;
  for (size_t pos = 0; pos <= scope.size();) {
    size_t space = scope.find(' ', pos);
    if (space == std::string::npos) space = scope.size();
    std::string one = scope.substr(pos, space - pos);
    has_scope |= std::find(options_.accepted_scopes.begin(), options_.accepted_scopes.end(), one) !=
                 options_.accepted_scopes.end();
    pos = space + 1;
  }
  if (!has_scope) {
    return OAuthError("invalid_scope",
                      "Invalid OAuth scope or ID token audience provided: " + scope);
  }
  ++tokens_issued_;
  std::string token = fmt::format("ya29.fake-bq-{}", tokens_issued_);
  tokens_[token] = IssuedToken{iss, clock().Now() + options_.token_lifetime};
  return TestResponse::Json(200, Dump(json{{"access_token", token},
                                           {"expires_in", options_.token_lifetime.count()},
                                           {"token_type", "Bearer"}}));
}

TestResponse FakeBigQueryServer::Route(const std::string& method, const std::string& project,
                                       const std::string& job_id, const TestRequest& req,
                                       const std::map<std::string, std::string>& params,
                                       const std::string& account) {
  if (method == "unknown") return ApiError(404, "notFound", "Not found: URL " + req.target);
  if (!projects_.contains(project)) {
    return ApiError(404, "notFound", "Not found: Project " + project);
  }
  if (method == "query") return JobsQuery(project, req, account);
  TestResponse error;
  Job* job = FindJob(project, job_id, params, error);
  if (job == nullptr) return error;
  if (method == "getQueryResults") return GetQueryResults(*job, params);
  if (method == "jobs.get") return JobsGet(*job);
  return Cancel(*job);
}

FakeBigQueryServer::Job* FakeBigQueryServer::FindJob(
    const std::string& project, const std::string& job_id,
    const std::map<std::string, std::string>& params, TestResponse& error) {
  auto it = jobs_.find(job_id);
  auto loc = params.find("location");
  std::string asked = loc == params.end() ? "" : loc->second;
  if (it == jobs_.end() || it->second->project != project) {
    error = ApiError(404, "notFound",
                     fmt::format("Not found: Job {}:{}{}", project,
                                 asked.empty() ? "" : Upper(asked) + ".", job_id));
    return nullptr;
  }
  Job& job = *it->second;
  bool multi_region = SameLocation(job.location, "US") || SameLocation(job.location, "EU");
  if ((asked.empty() && !multi_region) || (!asked.empty() && !SameLocation(asked, job.location))) {
    error = ApiError(404, "notFound",
                     fmt::format("Not found: Job {}:{}{}", project,
                                 asked.empty() ? "" : Upper(asked) + ".", job_id));
    return nullptr;
  }
  return &job;
}

json FakeBigQueryServer::JobReference(const Job& job) const {
  return {{"projectId", job.project}, {"jobId", job.id}, {"location", job.location}};
}

TestResponse FakeBigQueryServer::JobsQuery(const std::string& project, const TestRequest& req,
                                           const std::string& account) {
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) {
    return ApiError(400, "parseError", "Invalid JSON payload received. Unexpected token.");
  }
  if (!body.contains("query") || !body["query"].is_string()) {
    return ApiError(400, "required", "Required parameter is missing: query");
  }
  if (!body.contains("useLegacySql") || !body["useLegacySql"].is_boolean() ||
      body["useLegacySql"].get<bool>()) {
    return ApiError(400, "invalidQuery",
                    "Legacy SQL is in effect (useLegacySql defaults to true): this fake only "
                    "speaks GoogleSQL; send useLegacySql=false",
                    "query");
  }
  std::string request_id = body.value("requestId", "");
  if (request_id.size() > 36) {
    return ApiError(400, "invalid", "Invalid value for requestId: at most 36 characters");
  }
  std::string location = body.value("location", "");
  bool int64_timestamp = false;
  if (auto f = body.find("formatOptions"); f != body.end() && f->is_object()) {
    int64_timestamp = f->value("useInt64Timestamp", false);
  }
  int64_t max_rows = options_.default_page_rows;
  if (auto m = body.find("maxResults"); m != body.end() && m->is_number_integer()) {
    max_rows = m->get<int64_t>();
  }
  max_rows = std::clamp<int64_t>(max_rows, 1, options_.max_page_rows);

  auto first_reply = [&](Job& job) -> TestResponse {
    if (job.polls_left > 0 && !job.cancelled) {
      return TestResponse::Json(200, Dump(json{{"kind", "bigquery#queryResponse"},
                                               {"jobComplete", false},
                                               {"jobReference", JobReference(job)},
                                               {"queryId", job.id}}));
    }
    if (job.error && !job.error->warning_only) {
      if (job.error->http_status == 200) {  // errorResult inside a 200
        json proto = {{"reason", job.error->reason}, {"message", job.error->message}};
        if (!job.error->location.empty()) proto["location"] = job.error->location;
        return TestResponse::Json(200, Dump(json{{"kind", "bigquery#queryResponse"},
                                                 {"jobComplete", true},
                                                 {"jobReference", JobReference(job)},
                                                 {"errors", json::array({proto})}}));
      }
      return ApiError(job.error->http_status, job.error->reason, job.error->message,
                      job.error->location);
    }
    json reply = PageReply(job, 0, max_rows, int64_timestamp);
    reply["kind"] = "bigquery#queryResponse";
    return TestResponse::Json(200, Dump(reply));
  };

  if (!request_id.empty()) {
    auto seen = request_ids_.find(request_id);
    if (seen != request_ids_.end() &&
        clock().Now() - seen->second.second < std::chrono::minutes(15)) {
      auto job = jobs_.find(seen->second.first);
      if (job != jobs_.end()) return first_reply(*job->second);
    }
  }
  auto& acct = accounts_[account];
  if (acct.deny_jobs_create) {
    return ApiError(403, "accessDenied",
                    fmt::format("Access Denied: Project {0}: User does not have "
                                "bigquery.jobs.create permission in project {0}.",
                                project));
  }

  // Positional STRING parameters for the `?` of the statement.
  std::vector<std::string> parameters;
  if (auto list = body.find("queryParameters"); list != body.end() && !list->empty()) {
    if (body.value("parameterMode", "") != "POSITIONAL") {
      return ApiError(400, "invalid",
                      "Invalid value for parameterMode: this fake supports POSITIONAL query "
                      "parameters only",
                      "parameterMode");
    }
    for (const json& p : *list) {
      const json* type = p.contains("parameterType") ? &p["parameterType"] : nullptr;
      const json* value = p.contains("parameterValue") ? &p["parameterValue"] : nullptr;
      if (type == nullptr || !type->is_object() || type->value("type", "") != "STRING" ||
          value == nullptr || !value->is_object() || !value->contains("value") ||
          !(*value)["value"].is_string()) {
        return ApiError(400, "invalid",
                        "Invalid query parameter: this fake takes {\"parameterType\":{\"type\":"
                        "\"STRING\"},\"parameterValue\":{\"value\":\"...\"}} only",
                        "queryParameters");
      }
      parameters.push_back((*value)["value"].get<std::string>());
    }
  }
  size_t marks = 0;
  std::string sql =
      TranslateSql(NumberPlaceholders(RewriteBackticks(body["query"].get<std::string>()), marks));
  if (marks != parameters.size()) {
    return ApiError(400, "invalidQuery",
                    fmt::format("Query has {} positional parameters (?) but {} were given in "
                                "queryParameters",
                                marks, parameters.size()),
                    "q");
  }
  std::string where = location.empty() ? options_.default_location : location;
  auto new_job = [&](const std::string& job_location) {
    auto job = std::make_unique<Job>();
    job->project = project;
    job->id = fmt::format("job_fake{:04}", ++jobs_created_);
    job->location = job_location;
    job->account = account;
    job->polls_left = options_.polls_before_complete;
    job->error = next_job_error_;
    next_job_error_.reset();
    return job;
  };
  auto keep_job = [&](std::unique_ptr<Job> job) {
    Job& ref = *job;
    if (!request_id.empty()) request_ids_[request_id] = {job->id, clock().Now()};
    jobs_[job->id] = std::move(job);
    return first_reply(ref);
  };
  auto bind = [&](sqlite3_stmt* st) {
    const int count = sqlite3_bind_parameter_count(st);
    for (int i = 0; i < count && i < static_cast<int>(parameters.size()); ++i) {
      const std::string& v = parameters[static_cast<size_t>(i)];
      sqlite3_bind_text(st, i + 1, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    }
  };
  auto refused_write = [&](const std::string& dataset, const std::string& table,
                           const std::string& permission) {
    if (table.empty()) {
      return ApiError(403, "accessDenied",
                      fmt::format("Access Denied: Dataset {0}:{1}: Permission {2} denied on "
                                  "dataset {0}:{1} (or it may not exist).",
                                  project, dataset, permission));
    }
    return ApiError(403, "accessDenied",
                    fmt::format("Access Denied: Table {0}:{1}.{2}: Permission {3} denied on "
                                "table {0}:{1}.{2} (or it may not exist).",
                                project, dataset, table, permission));
  };
  static const std::regex create_schema(
      R"re(^\s*CREATE\s+SCHEMA\s+(IF\s+NOT\s+EXISTS\s+)?"?([A-Za-z0-9_]+)"?\s*(?:OPTIONS\s*\(\s*location\s*=\s*'([^']*)'\s*\))?\s*;?\s*$)re",
      kIcase);
  static const std::regex merge(
      R"(^\s*MERGE\s+(?:INTO\s+)?(\S+)\s+AS\s+(\w+)\s+USING\s+\(([\s\S]*)\)\s+AS\s+(\w+)\s+ON\s+([\s\S]*?)\s+(WHEN\s[\s\S]*)$)",
      kIcase);
  static const std::regex ctas(
      R"(^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z0-9_."]+)\s+AS\s+([\s\S]*)$)",
      kIcase);
  std::smatch match;
  if (std::regex_match(sql, match, create_schema)) {
    const std::string name = match[2].str();
    if (acct.deny_dataset_create) {
      return ApiError(403, "accessDenied",
                      fmt::format("Access Denied: Project {0}: User does not have "
                                  "bigquery.datasets.create permission in project {0}.",
                                  project));
    }
    std::string dataset_location = match[3].matched ? match[3].str() : where;
    if (datasets_.contains(name)) {
      if (!match[1].matched) {
        return ApiError(409, "duplicate",
                        fmt::format("Already Exists: Dataset {}:{}", project, name));
      }
    } else {
      if (!db_->Exec(fmt::format("ATTACH DATABASE ':memory:' AS \"{}\"", name)).ok()) {
        return ApiError(400, "invalidQuery", "could not create dataset " + name, "q");
      }
      datasets_[name] = dataset_location;
    }
    auto job = new_job(datasets_[name]);
    job->statement_type = "CREATE_SCHEMA";
    return keep_job(std::move(job));
  }
  if (std::regex_match(sql, match, merge)) {
    const std::string target = match[1].str();
    const size_t dot = target.find('.');
    const std::string dataset = dot == std::string::npos ? "" : target.substr(0, dot);
    auto ds = datasets_.find(dataset);
    if (ds == datasets_.end() || (!location.empty() && !SameLocation(ds->second, location))) {
      return ApiError(404, "notFound",
                      fmt::format("Not found: Dataset {}:{} was not found in location {}", project,
                                  dataset, Upper(where)));
    }
    if (acct.denied_writes.contains(dataset)) {
      return refused_write(dataset, target.substr(dot + 1), "bigquery.tables.updateData");
    }
    int64_t changed = 0;
    std::string error;
    if (!Merge(match, bind, changed, error)) {
      return ApiError(400, "invalidQuery", error, "q");
    }
    auto job = new_job(ds->second);
    job->statement_type = "MERGE";
    job->dml_rows = changed;
    return keep_job(std::move(job));
  }
  std::optional<std::string> created;  // CREATE TABLE ... AS SELECT: the table
  std::string ctas_select;
  if (std::regex_match(sql, match, ctas)) {
    created = match[1].str();
    ctas_select = match[2].str();
  }

  // Which dataset tables the statement reads and writes.
  struct Reads {
    std::vector<std::pair<std::string, std::string>> tables;        // (dataset, table)
    std::vector<std::tuple<std::string, std::string, int>> writes;  // (dataset, table, action)
  } reads;
  sqlite3* db = db_->raw();
  sqlite3_set_authorizer(
      db,
      [](void* user, int action, const char* a3, const char*, const char* a5, const char*) -> int {
        auto* r = static_cast<Reads*>(user);
        if (action == SQLITE_READ && a3 != nullptr && a5 != nullptr) {
          std::pair<std::string, std::string> entry{a5, a3};
          if (std::find(r->tables.begin(), r->tables.end(), entry) == r->tables.end()) {
            r->tables.push_back(entry);
          }
        }
        if ((action == SQLITE_INSERT || action == SQLITE_UPDATE || action == SQLITE_DELETE ||
             action == SQLITE_CREATE_TABLE || action == SQLITE_DROP_TABLE) &&
            a3 != nullptr && a5 != nullptr && !std::string_view(a3).starts_with("sqlite_")) {
          r->writes.emplace_back(a5, a3, action);
        }
        return SQLITE_OK;
      },
      &reads);
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &raw, nullptr);
  sqlite3_set_authorizer(db, nullptr, nullptr);
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, sqlite3_finalize);
  if (rc != SQLITE_OK) {
    std::string message = sqlite3_errmsg(db);
    constexpr std::string_view kNoTable = "no such table: ";
    constexpr std::string_view kNoDatabase = "unknown database ";
    if (message.starts_with(kNoDatabase)) {
      return ApiError(404, "notFound",
                      fmt::format("Not found: Dataset {}:{} was not found in location {}", project,
                                  message.substr(kNoDatabase.size()), Upper(where)));
    }
    if (message.starts_with(kNoTable)) {
      std::string name = message.substr(kNoTable.size());
      size_t dot = name.find('.');
      if (dot == std::string::npos) {
        return ApiError(400, "invalid",
                        fmt::format("Table \"{}\" must be qualified with a dataset (e.g. "
                                    "dataset.table).",
                                    name));
      }
      std::string dataset = name.substr(0, dot);
      auto ds = datasets_.find(dataset);
      if (ds == datasets_.end() || (!location.empty() && !SameLocation(ds->second, location))) {
        return ApiError(404, "notFound",
                        fmt::format("Not found: Dataset {}:{} was not found in location {}",
                                    project, dataset, Upper(where)));
      }
      return ApiError(404, "notFound",
                      fmt::format("Not found: Table {}:{} was not found in location {}", project,
                                  name, Upper(where)));
    }
    return ApiError(400, "invalidQuery", fmt::format("Syntax error: {} at [1:1]", message), "q");
  }
  bind(stmt.get());
  std::string job_location = location;
  for (const auto& [dataset, table] : reads.tables) {
    auto ds = datasets_.find(dataset);
    if (ds == datasets_.end()) continue;  // main/temp
    if (!location.empty() && !SameLocation(ds->second, location)) {
      return ApiError(404, "notFound",
                      fmt::format("Not found: Dataset {}:{} was not found in location {}", project,
                                  dataset, Upper(location)));
    }
    if (job_location.empty()) job_location = ds->second;
    if (acct.denied_datasets.contains(dataset)) {
      return ApiError(403, "accessDenied",
                      fmt::format("Access Denied: Table {0}:{1}.{2}: User does not have "
                                  "permission to query table {0}:{1}.{2}, or perhaps it does not "
                                  "exist.",
                                  project, dataset, table));
    }
  }
  for (const auto& [dataset, table, action] : reads.writes) {
    auto ds = datasets_.find(dataset);
    if (ds == datasets_.end()) continue;  // main/temp
    if (!location.empty() && !SameLocation(ds->second, location)) {
      return ApiError(404, "notFound",
                      fmt::format("Not found: Dataset {}:{} was not found in location {}", project,
                                  dataset, Upper(location)));
    }
    if (job_location.empty()) job_location = ds->second;
    if (!acct.denied_writes.contains(dataset)) continue;
    if (action == SQLITE_CREATE_TABLE) {
      return refused_write(dataset, "", "bigquery.tables.create");
    }
    return refused_write(
        dataset, table,
        action == SQLITE_DROP_TABLE ? "bigquery.tables.delete" : "bigquery.tables.updateData");
  }
  if (job_location.empty()) job_location = options_.default_location;

  auto job = new_job(job_location);
  job->statement_type = created ? "CREATE_TABLE_AS_SELECT" : StatementType(sql);

  // Run the statement to the end (BigQuery materialises the result).
  int columns = sqlite3_column_count(stmt.get());
  std::vector<std::string> names, declared;
  for (int i = 0; i < columns; ++i) {
    names.push_back(sqlite3_column_name(stmt.get(), i));
    declared.push_back(BqTypeFromDecl(sqlite3_column_decltype(stmt.get(), i)));
  }
  while (!job->error || job->error->warning_only) {
    rc = sqlite3_step(stmt.get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) {
      job->error = FakeBigQueryJobError{"invalidQuery", sqlite3_errmsg(db), "", 400, false};
      break;
    }
    std::vector<Cell> row(static_cast<size_t>(columns));
    for (int i = 0; i < columns; ++i) {
      Cell& c = row[static_cast<size_t>(i)];
      c.type = sqlite3_column_type(stmt.get(), i);
      if (c.type == SQLITE_INTEGER) c.i = sqlite3_column_int64(stmt.get(), i);
      if (c.type == SQLITE_FLOAT) c.d = sqlite3_column_double(stmt.get(), i);
      if (c.type == SQLITE_TEXT || c.type == SQLITE_BLOB) {
        const void* data = c.type == SQLITE_TEXT
                               ? static_cast<const void*>(sqlite3_column_text(stmt.get(), i))
                               : sqlite3_column_blob(stmt.get(), i);
        int n = sqlite3_column_bytes(stmt.get(), i);
        if (data != nullptr) c.s.assign(static_cast<const char*>(data), static_cast<size_t>(n));
      }
    }
    job->rows.push_back(std::move(row));
  }
  const bool failed = job->error && !job->error->warning_only;
  if (!failed && (job->statement_type == "INSERT" || job->statement_type == "UPDATE" ||
                  job->statement_type == "DELETE")) {
    job->dml_rows = sqlite3_changes(db);
  }
  if (created && !failed) {
    // The new table's columns keep the declared types of the columns they
    // copy (SQLite's CREATE TABLE AS keeps only affinities).
    stmt.reset();
    std::string error = TypeCreatedTable(*created, ctas_select);
    if (!error.empty()) job->error = FakeBigQueryJobError{"invalidQuery", error, "", 400, false};
  }
  for (int i = 0; i < columns; ++i) {
    auto schema = column_schemas_.find(names[static_cast<size_t>(i)]);
    json field;
    if (schema != column_schemas_.end()) {
      field = schema->second;
    } else {
      std::string type = declared[static_cast<size_t>(i)];
      if (type.empty()) {
        type = "STRING";
        for (const auto& row : job->rows) {
          int t = row[static_cast<size_t>(i)].type;
          if (t == SQLITE_NULL) continue;
          type = t == SQLITE_INTEGER ? "INTEGER"
                 : t == SQLITE_FLOAT ? "FLOAT"
                 : t == SQLITE_BLOB  ? "BYTES"
                                     : "STRING";
          break;
        }
      }
      field = {{"type", type}, {"mode", "NULLABLE"}};
    }
    field["name"] = names[static_cast<size_t>(i)];
    job->fields.push_back(field);
  }
  return keep_job(std::move(job));
}

namespace {

json EncodeJsonValue(const json& field, const json& v, bool element, bool int64_timestamp);

// A scalar from a SQLite cell's parts.
json EncodeScalar(const std::string& type, int storage, int64_t i, double d, const std::string& s,
                  bool int64_timestamp) {
  if (storage == SQLITE_NULL) return nullptr;
  if (type == "INTEGER" || type == "INT64") {
    if (storage == SQLITE_INTEGER) return std::to_string(i);
    if (storage == SQLITE_FLOAT) return std::to_string(static_cast<int64_t>(d));
    return s;
  }
  if (type == "FLOAT" || type == "FLOAT64") {
    if (storage == SQLITE_INTEGER) return JavaDouble(static_cast<double>(i));
    if (storage == SQLITE_FLOAT) return JavaDouble(d);
    return s;
  }
  if (type == "NUMERIC" || type == "BIGNUMERIC") {
    if (storage == SQLITE_INTEGER) return std::to_string(i);
    if (storage == SQLITE_FLOAT) return ShortestDouble(d);
    return TrimDecimal(s);
  }
  if (type == "BOOLEAN" || type == "BOOL") {
    if (storage == SQLITE_INTEGER) return i != 0 ? "true" : "false";
    if (storage == SQLITE_FLOAT) return d != 0 ? "true" : "false";
    std::string lower = s;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return lower == "true" || lower == "1" ? "true" : "false";
  }
  if (type == "BYTES") {
    if (storage == SQLITE_INTEGER) return Base64Encode(std::to_string(i));
    return Base64Encode(s);
  }
  if (type == "TIMESTAMP") {
    std::optional<int64_t> micros;
    if (storage == SQLITE_INTEGER) micros = i * 1'000'000;
    if (storage == SQLITE_FLOAT) micros = std::llround(d * 1e6);
    if (storage == SQLITE_TEXT) micros = ParseTimestampText(s);
    if (!micros) return s;  // garbage in, garbage out (the client must reject it)
    if (int64_timestamp) return std::to_string(*micros);
    return JavaDouble(static_cast<double>(*micros) / 1e6);
  }
  if (type == "DATETIME") {
    std::string out = s;
    if (out.size() > 10 && out[10] == ' ') out[10] = 'T';
    return out;
  }
  if (storage == SQLITE_INTEGER) return std::to_string(i);
  if (storage == SQLITE_FLOAT) return ShortestDouble(d);
  return s;
}

// A value taken from JSON text (RECORD / REPEATED columns).
json EncodeJsonScalar(const json& field, const json& v, bool int64_timestamp) {
  std::string type = Upper(field.value("type", "STRING"));
  if (v.is_null()) return nullptr;
  if (type == "RECORD" || type == "STRUCT") {
    json cells = json::array();
    for (const json& sub : field.value("fields", json::array())) {
      std::string name = sub.value("name", "");
      json inner = v.is_object() && v.contains(name) ? v[name] : json(nullptr);
      cells.push_back({{"v", EncodeJsonValue(sub, inner, false, int64_timestamp)}});
    }
    return {{"f", cells}};
  }
  if (type == "JSON") return Dump(v);
  if (v.is_boolean()) {
    return EncodeScalar(type, SQLITE_INTEGER, v.get<bool>() ? 1 : 0, 0, "", int64_timestamp);
  }
  if (v.is_number_integer()) {
    return EncodeScalar(type, SQLITE_INTEGER, v.get<int64_t>(), 0, "", int64_timestamp);
  }
  if (v.is_number()) {
    return EncodeScalar(type, SQLITE_FLOAT, 0, v.get<double>(), "", int64_timestamp);
  }
  if (v.is_string()) {
    return EncodeScalar(type, SQLITE_TEXT, 0, 0, v.get<std::string>(), int64_timestamp);
  }
  return Dump(v);
}

json EncodeJsonValue(const json& field, const json& v, bool element, bool int64_timestamp) {
  if (!element && Upper(field.value("mode", "NULLABLE")) == "REPEATED") {
    json out = json::array();
    if (v.is_array()) {
      for (const json& item : v) {
        out.push_back({{"v", EncodeJsonValue(field, item, true, int64_timestamp)}});
      }
    }
    return out;
  }
  return EncodeJsonScalar(field, v, int64_timestamp);
}

}  // namespace

json FakeBigQueryServer::PageReply(Job& job, int64_t offset, int64_t max_rows,
                                   bool int64_timestamp) {
  if (!job.statement_type.empty() && job.statement_type != "SELECT") {
    // DDL and DML: no schema, rows or totalRows.
    json reply = {{"jobComplete", true},        {"jobReference", JobReference(job)},
                  {"queryId", job.id},          {"statementType", job.statement_type},
                  {"totalBytesProcessed", "0"}, {"cacheHit", false}};
    if (job.dml_rows) reply["numDmlAffectedRows"] = std::to_string(*job.dml_rows);
    return reply;
  }
  bool as_int64 = int64_timestamp && options_.honor_int64_timestamp;
  json rows = json::array();
  size_t bytes = 0;
  int64_t end = offset;
  int64_t total = static_cast<int64_t>(job.rows.size());
  while (end < total && end - offset < max_rows) {
    const std::vector<Cell>& r = job.rows[static_cast<size_t>(end)];
    json cells = json::array();
    for (size_t i = 0; i < r.size(); ++i) {
      const json& field = job.fields[i];
      std::string type = Upper(field.value("type", "STRING"));
      bool nested = type == "RECORD" || type == "STRUCT" ||
                    Upper(field.value("mode", "NULLABLE")) == "REPEATED";
      const Cell& c = r[i];
      json v;
      if (nested) {
        json parsed = c.type == SQLITE_TEXT ? json::parse(c.s, nullptr, false) : json(nullptr);
        if (parsed.is_discarded()) parsed = nullptr;
        v = EncodeJsonValue(field, parsed, false, as_int64);
      } else {
        v = EncodeScalar(type, c.type, c.i, c.d, c.s, as_int64);
      }
      cells.push_back({{"v", std::move(v)}});
    }
    json row = {{"f", std::move(cells)}};
    size_t size = Dump(row).size();
    if (end > offset && bytes + size > options_.max_page_bytes) break;
    bytes += size;
    rows.push_back(std::move(row));
    ++end;
  }
  json reply = {{"jobComplete", true},
                {"jobReference", JobReference(job)},
                {"queryId", job.id},
                {"schema", {{"fields", job.fields}}},
                {"totalRows", std::to_string(total)},
                {"totalBytesProcessed", std::to_string(bytes)},
                {"cacheHit", false}};
  if (!rows.empty()) reply["rows"] = std::move(rows);
  if (end < total) {
    std::string token = fmt::format("BHDEPFTJ{:08X}{:04X}", ++page_tokens_issued_ * 2654435761U,
                                    static_cast<uint64_t>(end) & 0xffff);
    job.page_tokens[token] = end;
    reply["pageToken"] = token;
  }
  if (job.error && job.error->warning_only) {
    reply["errors"] =
        json::array({{{"reason", job.error->reason}, {"message", job.error->message}}});
  }
  return reply;
}

TestResponse FakeBigQueryServer::GetQueryResults(Job& job,
                                                 const std::map<std::string, std::string>& params) {
  if (job.polls_left > 0 && !job.cancelled) {
    --job.polls_left;
    return TestResponse::Json(200, Dump(json{{"kind", "bigquery#getQueryResultsResponse"},
                                             {"jobComplete", false},
                                             {"jobReference", JobReference(job)}}));
  }
  if (job.cancelled) {
    return ApiError(400, "stopped", "Job execution was cancelled: User requested cancellation");
  }
  if (job.error && !job.error->warning_only) {
    int status = job.error->http_status == 200 ? 400 : job.error->http_status;
    return ApiError(status, job.error->reason, job.error->message, job.error->location);
  }
  auto param = [&](const char* name) {
    auto it = params.find(name);
    return it == params.end() ? std::string() : it->second;
  };
  int64_t offset = 0;
  if (std::string token = param("pageToken"); !token.empty()) {
    auto it = job.page_tokens.find(token);
    if (it == job.page_tokens.end()) {
      return ApiError(400, "invalid", "Invalid page token: " + token);
    }
    offset = it->second;
  } else if (std::string start = param("startIndex"); !start.empty()) {
    offset = std::stoll(start);
  }
  int64_t max_rows = options_.default_page_rows;
  if (std::string m = param("maxResults"); !m.empty()) max_rows = std::stoll(m);
  max_rows = std::clamp<int64_t>(max_rows, 1, options_.max_page_rows);
  bool int64_timestamp = param("formatOptions.useInt64Timestamp") == "true" ||
                         param("formatOptions.timestampOutputFormat") == "INT64";
  json reply = PageReply(job, offset, max_rows, int64_timestamp);
  reply["kind"] = "bigquery#getQueryResultsResponse";
  return TestResponse::Json(200, Dump(reply));
}

TestResponse FakeBigQueryServer::JobsGet(Job& job) {
  json status = {{"state", job.polls_left > 0 && !job.cancelled ? "RUNNING" : "DONE"}};
  if (job.cancelled) {
    json proto = {{"reason", "stopped"},
                  {"message", "Job execution was cancelled: User requested cancellation"}};
    status["errorResult"] = proto;
    status["errors"] = json::array({proto});
  } else if (job.error && job.polls_left == 0) {
    json proto = {{"reason", job.error->reason}, {"message", job.error->message}};
    if (!job.error->location.empty()) proto["location"] = job.error->location;
    if (!job.error->warning_only) status["errorResult"] = proto;
    status["errors"] = json::array({proto});
  }
  return TestResponse::Json(
      200, Dump(json{{"kind", "bigquery#job"},
                     {"id", fmt::format("{}:{}.{}", job.project, job.location, job.id)},
                     {"jobReference", JobReference(job)},
                     {"status", status}}));
}

TestResponse FakeBigQueryServer::Cancel(Job& job) {
  cancels_.push_back({job.id, job.location});
  if (job.polls_left > 0) job.cancelled = true;
  return TestResponse::Json(
      200,
      Dump(json{{"kind", "bigquery#jobCancelResponse"},
                {"job", {{"jobReference", JobReference(job)}, {"status", {{"state", "DONE"}}}}}}));
}

std::string FakeBigQueryServer::TypeCreatedTable(const std::string& table,
                                                 const std::string& select) {
  sqlite3* db = db_->raw();
  const size_t dot = table.find('.');
  if (dot == std::string::npos) return "";
  const std::string dataset = table.substr(0, dot), name = table.substr(dot + 1);
  sqlite3_stmt* probe = nullptr;
  if (sqlite3_prepare_v2(db, select.c_str(), static_cast<int>(select.size()), &probe, nullptr) !=
          SQLITE_OK ||
      probe == nullptr) {
    if (probe != nullptr) sqlite3_finalize(probe);
    return "";
  }
  std::string columns;
  for (int i = 0; i < sqlite3_column_count(probe); ++i) {
    const char* decl = sqlite3_column_decltype(probe, i);
    std::string column = sqlite3_column_name(probe, i);
    std::string quoted = "\"";
    for (char c : column) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
    quoted += "\"";
    columns += fmt::format("{}{} {}", i ? ", " : "", quoted, decl == nullptr ? "" : decl);
  }
  sqlite3_finalize(probe);
  const std::string typed = name + "__fake_typed";
  for (const std::string& step :
       {fmt::format("CREATE TABLE \"{}\".\"{}\" ({})", dataset, typed, columns),
        fmt::format("INSERT INTO \"{0}\".\"{1}\" SELECT * FROM \"{0}\".\"{2}\"", dataset, typed,
                    name),
        fmt::format("DROP TABLE \"{}\".\"{}\"", dataset, name),
        fmt::format("ALTER TABLE \"{}\".\"{}\" RENAME TO \"{}\"", dataset, typed, name)}) {
    absl::Status done = db_->Exec(step);
    if (!done.ok()) return std::string(done.message());
  }
  return "";
}

bool FakeBigQueryServer::Merge(const std::smatch& match,
                               const std::function<void(sqlite3_stmt*)>& bind, int64_t& changed,
                               std::string& error) {
  const std::string target = match[1].str(), target_alias = match[2].str();
  const std::string source = match[3].str(), source_alias = match[4].str();
  const std::string on = match[5].str();
  static const std::regex clause(
      R"(^(NOT\s+)?MATCHED(?:\s+BY\s+TARGET)?(?:\s+AND\s+([\s\S]*?))?\s+THEN\s+(DELETE|UPDATE\s+SET\s+([\s\S]*?)|INSERT\s*\(([^)]*)\)\s*VALUES\s*\(([\s\S]*)\))\s*$)",
      kIcase);
  static const std::regex when(R"(\bWHEN\s+)", kIcase);
  std::vector<std::string> clauses;
  const std::string rest = match[6].str();
  for (std::sregex_token_iterator it(rest.begin(), rest.end(), when, -1), end; it != end; ++it) {
    if (it->str().find_first_not_of(" \t\r\n") != std::string::npos) clauses.push_back(it->str());
  }
  sqlite3* db = db_->raw();
  auto run = [&](const std::string& sql, int64_t* changes) -> bool {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &stmt, nullptr) !=
        SQLITE_OK) {
      error = fmt::format("Syntax error: {} at [1:1]", sqlite3_errmsg(db));
      if (stmt != nullptr) sqlite3_finalize(stmt);
      return false;
    }
    bind(stmt);
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) {
      error = fmt::format("Query error: {}", sqlite3_errmsg(db));
      return false;
    }
    if (changes != nullptr) *changes += sqlite3_changes(db);
    return true;
  };
  changed = 0;
  bool ok = run("SAVEPOINT fake_merge", nullptr) &&
            run(fmt::format("CREATE TEMP TABLE fake_merge_source AS SELECT {0}.*, (SELECT count(*) "
                            "FROM {1} AS {2} WHERE {3}) AS fake_matches FROM ({4}) AS {0}",
                            source_alias, target, target_alias, on, source),
                nullptr);
  // BigQuery fails a MERGE in which a target row matches several source rows.
  if (ok) {
    sqlite3_stmt* check = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT max(fake_matches) FROM temp.fake_merge_source", -1, &check,
                           nullptr) == SQLITE_OK &&
        sqlite3_step(check) == SQLITE_ROW && sqlite3_column_int64(check, 0) > 1) {
      error =
          "UPDATE/MERGE must match at most one source row for each target row";  // BigQuery's text
      ok = false;
    }
    if (check != nullptr) sqlite3_finalize(check);
  }
  std::string earlier = "0";  // the conditions of earlier WHEN MATCHED clauses
  for (size_t i = 0; ok && i < clauses.size(); ++i) {
    std::smatch c;
    if (!std::regex_match(clauses[i], c, clause)) {
      error = "Syntax error: unsupported MERGE clause (fake) at [1:1]";
      ok = false;
      break;
    }
    const std::string cond = c[2].matched ? c[2].str() : "1";
    const std::string from = fmt::format("temp.fake_merge_source AS {}", source_alias);
    if (c[1].matched) {  // WHEN NOT MATCHED ... THEN INSERT
      ok = run(fmt::format("INSERT INTO {} ({}) SELECT {} FROM {} WHERE {}.fake_matches = 0 AND "
                           "({})",
                           target, c[5].str(), c[6].str(), from, source_alias, cond),
               &changed);
      continue;
    }
    const std::string where = fmt::format("{}.fake_matches > 0 AND ({}) AND ({}) AND NOT ({})",
                                          source_alias, on, cond, earlier);
    if (Upper(c[3].str()) == "DELETE") {
      ok = run(fmt::format("DELETE FROM {} AS {} WHERE EXISTS (SELECT 1 FROM {} WHERE {})", target,
                           target_alias, from, where),
               &changed);
    } else {
      ok = run(fmt::format("UPDATE {} AS {} SET {} FROM {} WHERE {}", target, target_alias,
                           c[4].str(), from, where),
               &changed);
    }
    earlier = fmt::format("({}) OR ({})", earlier, cond);
  }
  std::string kept = error;
  (void)run("DROP TABLE IF EXISTS temp.fake_merge_source", nullptr);
  if (!ok) {
    (void)run("ROLLBACK TO fake_merge", nullptr);
    (void)run("RELEASE fake_merge", nullptr);
    error = kept;
    return false;
  }
  return run("RELEASE fake_merge", nullptr);
}

}  // namespace backflow
