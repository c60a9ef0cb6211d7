#include "backflow/sources/databricks/fake_databricks_server.h"

#include <openssl/evp.h>
#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <random>
#include <regex>
#include <string_view>
#include <utility>

#include "backflow/common/civil_date.h"
#include "backflow/common/crypto.h"
#include "backflow/common/url.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kStatementsPath[] = "/api/2.0/sql/statements";
constexpr size_t kMaxStatementBytes = 16 * 1024 * 1024;

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

TestResponse ApiError(int status, const std::string& code, const std::string& message) {
  return TestResponse::Json(status, Dump(json{{"error_code", code}, {"message", message}}));
}

TestResponse OAuthError(int status, const std::string& error, const std::string& description) {
  return TestResponse::Json(status,
                            Dump(json{{"error", error}, {"error_description", description}}));
}

TestResponse S3Error(int status, const std::string& code, const std::string& message) {
  TestResponse r;
  r.status = status;
  r.headers.emplace_back("Content-Type", "application/xml");
  r.body = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message>"
      "<RequestId>FAKE0REQUEST0ID</RequestId></Error>",
      code, message);
  return r;
}

std::vector<std::string> SplitPath(std::string_view path) {
  std::vector<std::string> parts;
  while (!path.empty()) {
    size_t slash = path.find('/');
    if (slash != 0) parts.push_back(PercentDecode(path.substr(0, slash), false));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return parts;
}

std::string RandomHex(size_t bytes) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  std::string out;
  while (out.size() < bytes * 2) out += fmt::format("{:016x}", rng());
  return out.substr(0, bytes * 2);
}

std::string NewStatementId() {
  std::string hex = RandomHex(16);
  return fmt::format("{}-{}-{}-{}-{}", hex.substr(0, 8), hex.substr(8, 4), hex.substr(12, 4),
                     hex.substr(16, 4), hex.substr(20, 12));
}

// ------------------------------------------------------------- SQL rewrite

bool IdentStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IdentChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// `a`.`b`.`c` and a.b.c with a known catalog -> b.c; backticks -> "...".
std::string RewriteSql(const std::string& sql, const std::set<std::string>& catalogs) {
  std::string out;
  size_t i = 0;
  const size_t n = sql.size();
  while (i < n) {
    char c = sql[i];
    if (c == '\'') {  // a string literal, copied as-is
      size_t end = i + 1;
      while (end < n) {
        if (sql[end] == '\\') {
          end += 2;
          continue;
        }
        if (sql[end] == '\'') break;
        ++end;
      }
      end = std::min(end, n - 1);
      out += sql.substr(i, end - i + 1);
      i = end + 1;
      continue;
    }
    if (c == '-' && i + 1 < n && sql[i + 1] == '-') {  // a comment to the end of the line
      size_t end = sql.find('\n', i);
      if (end == std::string::npos) end = n;
      out += sql.substr(i, end - i);
      i = end;
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      while (i < n && (IdentChar(sql[i]) || sql[i] == '.')) out.push_back(sql[i++]);
      continue;
    }
    if (c != '`' && !IdentStart(c)) {
      out.push_back(c);
      ++i;
      continue;
    }
    // A chain of identifiers joined by dots.
    std::vector<std::pair<std::string, bool>> parts;  // (name, quoted)
    size_t j = i;
    while (j < n) {
      if (sql[j] == '`') {
        size_t close = sql.find('`', j + 1);
        if (close == std::string::npos) break;
        parts.emplace_back(sql.substr(j + 1, close - j - 1), true);
        j = close + 1;
      } else if (IdentStart(sql[j])) {
        size_t end = j;
        while (end < n && IdentChar(sql[end])) ++end;
        parts.emplace_back(sql.substr(j, end - j), false);
        j = end;
      } else {
        break;
      }
      if (j + 1 < n && sql[j] == '.' && (sql[j + 1] == '`' || IdentStart(sql[j + 1]))) {
        ++j;
        continue;
      }
      break;
    }
    if (parts.empty()) {  // an unterminated backtick
      out.push_back(c);
      ++i;
      continue;
    }
    if (parts.size() == 3 && catalogs.contains(Lower(parts[0].first))) parts.erase(parts.begin());
    for (size_t k = 0; k < parts.size(); ++k) {
      if (k > 0) out.push_back('.');
      out += parts[k].second ? "\"" + parts[k].first + "\"" : parts[k].first;
    }
    i = j;
  }
  return out;
}

// ---------------------------------------------------------------- encoding

struct Cell {
  int type = SQLITE_NULL;
  int64_t i = 0;
  double d = 0;
  std::string s;
};

// Java's Double.toString layout: "1.5", "100.0", "1.0E10", "1.0E-4".
std::string JavaStyleDouble(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  double mag = std::fabs(d);
  char buf[64];
  if (mag >= 1e-3 && mag < 1e7) {
    auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::fixed);
    std::string s(buf, res.ptr);
    if (s.find('.') == std::string::npos) s += ".0";
    return s;
  }
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string s(buf, res.ptr);  // "1.5e+10"
  size_t e = s.find('e');
  std::string mantissa = s.substr(0, e);
  if (mantissa.find('.') == std::string::npos) mantissa += ".0";
  int exp = std::stoi(s.substr(e + 1));
  return mantissa + "E" + std::to_string(exp);
}

// "YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|±HH:MM]" -> micros since the epoch.
std::optional<int64_t> MicrosFromText(std::string_view s) {
  auto y = FixedDigits(s, 0, 4), mo = FixedDigits(s, 5, 2), d = FixedDigits(s, 8, 2);
  if (!y || !mo || !d) return std::nullopt;
  int64_t micros = DaysFromCivil(*y, *mo, *d) * 86'400'000'000LL;
  if (s.size() == 10) return micros;
  auto h = FixedDigits(s, 11, 2), mi = FixedDigits(s, 14, 2), sec = FixedDigits(s, 17, 2);
  if (!h || !mi || !sec) return std::nullopt;
  micros += (*h * 3600 + *mi * 60 + *sec) * 1'000'000LL;
  size_t k = 19;
  if (k < s.size() && s[k] == '.') {
    int64_t frac = 0;
    int digits = 0;
    for (++k; k < s.size() && std::isdigit(static_cast<unsigned char>(s[k])); ++k) {
      if (digits < 6) frac = frac * 10 + (s[k] - '0');
      ++digits;
    }
    for (; digits < 6; ++digits) frac *= 10;
    micros += frac;
  }
  std::string_view zone = s.substr(k);
  if (zone.empty() || zone == "Z") return micros;
  if ((zone[0] == '+' || zone[0] == '-') && zone.size() == 6 && zone[3] == ':') {
    auto zh = FixedDigits(s, k + 1, 2), zm = FixedDigits(s, k + 4, 2);
    if (!zh || !zm) return std::nullopt;
    int64_t offset = (*zh * 3600 + *zm * 60) * 1'000'000LL;
    return zone[0] == '+' ? micros - offset : micros + offset;
  }
  return std::nullopt;
}

std::string TimestampFromMicros(int64_t micros, const std::string& suffix) {
  int64_t secs = micros / 1'000'000 - (micros % 1'000'000 < 0 ? 1 : 0);
  int64_t frac = micros - secs * 1'000'000;
  int64_t days = secs / 86'400 - (secs % 86'400 < 0 ? 1 : 0);
  int64_t sod = secs - days * 86'400;
  const CivilDate date = CivilFromDays(days);
  std::string fraction =
      frac % 1000 == 0 ? fmt::format("{:03}", frac / 1000) : fmt::format("{:06}", frac);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{}{}", date.year, date.month, date.day,
                     sod / 3600, (sod / 60) % 60, sod % 60, fraction, suffix);
}

// DECIMAL text with exactly `scale` decimals.
std::string DecimalWithScale(const Cell& c, int scale) {
  if (c.type == SQLITE_INTEGER) {
    return scale > 0 ? fmt::format("{}.{}", c.i, std::string(static_cast<size_t>(scale), '0'))
                     : std::to_string(c.i);
  }
  if (c.type == SQLITE_FLOAT) return fmt::format("{:.{}f}", c.d, scale);
  std::string s = c.s;
  size_t dot = s.find('.');
  std::string whole = dot == std::string::npos ? s : s.substr(0, dot);
  std::string frac = dot == std::string::npos ? "" : s.substr(dot + 1);
  if (static_cast<int>(frac.size()) < scale) {
    frac.append(static_cast<size_t>(scale) - frac.size(), '0');
  }
  return scale > 0 || !frac.empty() ? whole + "." + frac : whole;
}

json EncodeCell(const std::string& type_text, const Cell& c, const std::string& suffix) {
  if (c.type == SQLITE_NULL) return nullptr;
  std::string upper = Upper(type_text);
  std::string word = upper.substr(0, upper.find_first_of("(< "));
  auto plain = [&]() -> std::string {
    if (c.type == SQLITE_INTEGER) return std::to_string(c.i);
    if (c.type == SQLITE_FLOAT) return JavaStyleDouble(c.d);
    return c.s;
  };
  if (word == "BIGINT" || word == "INT" || word == "SMALLINT" || word == "TINYINT") {
    if (c.type == SQLITE_FLOAT) return std::to_string(std::llround(c.d));
    return plain();
  }
  if (word == "DECIMAL") {
    int scale = 0;
    size_t comma = upper.find(',');
    if (comma != std::string::npos) scale = std::atoi(upper.c_str() + comma + 1);
    return DecimalWithScale(c, scale);
  }
  if (word == "DOUBLE" || word == "FLOAT") {
    if (c.type == SQLITE_INTEGER) return JavaStyleDouble(static_cast<double>(c.i));
    return plain();
  }
  if (word == "BOOLEAN") {
    if (c.type == SQLITE_INTEGER) return c.i != 0 ? "true" : "false";
    if (c.type == SQLITE_FLOAT) return c.d != 0 ? "true" : "false";
    std::string lower = Lower(c.s);
    return lower == "true" || lower == "1" ? "true" : "false";
  }
  if (word == "TIMESTAMP" || word == "TIMESTAMP_NTZ") {
    std::optional<int64_t> micros;
    if (c.type == SQLITE_INTEGER) micros = c.i * 1'000'000;
    if (c.type == SQLITE_FLOAT) micros = std::llround(c.d * 1e6);
    if (c.type == SQLITE_TEXT) micros = MicrosFromText(c.s);
    if (!micros) return c.s;  // garbage in, garbage out: the client must reject it
    return TimestampFromMicros(*micros, word == "TIMESTAMP" ? suffix : "");
  }
  if (word == "BINARY") return Base64Encode(c.type == SQLITE_BLOB ? c.s : plain());
  return plain();
}

// The Databricks type of a result column from its declared SQLite type.
std::string TypeFromDecl(const char* decl) {
  if (decl == nullptr) return "";
  std::string d = Upper(decl);
  // " TEXT" only forces TEXT affinity: "STRING TEXT", "DECIMAL TEXT(38,9)".
  for (size_t at = d.find(" TEXT"); at != std::string::npos; at = d.find(" TEXT")) d.erase(at, 5);
  std::string word = d.substr(0, d.find_first_of("(< "));
  if (word == "INTEGER") return "BIGINT";
  if (word == "REAL") return "DOUBLE";
  if (word == "BLOB") return "BINARY";
  if (word == "TEXT") return "STRING";
  static const char* kKnown[] = {"BIGINT",    "INT",           "SMALLINT", "TINYINT", "DECIMAL",
                                 "DOUBLE",    "FLOAT",         "BOOLEAN",  "STRING",  "DATE",
                                 "TIMESTAMP", "TIMESTAMP_NTZ", "BINARY",   "ARRAY",   "MAP",
                                 "STRUCT",    "VARIANT",       "INTERVAL"};
  for (const char* k : kKnown) {
    if (word == k) return d;
  }
  return "";
}

json ColumnInfo(const std::string& name, const std::string& type_text, int position) {
  std::string upper = Upper(type_text);
  std::string word = upper.substr(0, upper.find_first_of("(< "));
  static const std::pair<const char*, const char*> kNames[] = {{"BIGINT", "LONG"},
                                                               {"INT", "INT"},
                                                               {"SMALLINT", "SHORT"},
                                                               {"TINYINT", "BYTE"},
                                                               {"DECIMAL", "DECIMAL"},
                                                               {"DOUBLE", "DOUBLE"},
                                                               {"FLOAT", "FLOAT"},
                                                               {"BOOLEAN", "BOOLEAN"},
                                                               {"STRING", "STRING"},
                                                               {"DATE", "DATE"},
                                                               {"TIMESTAMP", "TIMESTAMP"},
                                                               {"TIMESTAMP_NTZ", "TIMESTAMP_NTZ"},
                                                               {"BINARY", "BINARY"},
                                                               {"ARRAY", "ARRAY"},
                                                               {"MAP", "MAP"},
                                                               {"STRUCT", "STRUCT"},
                                                               {"VARIANT", "VARIANT"},
                                                               {"INTERVAL", "INTERVAL"}};
  std::string type_name = "USER_DEFINED_TYPE";
  for (const auto& [w, t] : kNames) {
    if (word == w) type_name = t;
  }
  json col = {
      {"name", name}, {"type_text", upper}, {"type_name", type_name}, {"position", position}};
  if (word == "DECIMAL") {
    int precision = 10, scale = 0;
    size_t open = upper.find('(');
    if (open != std::string::npos) {
      precision = std::atoi(upper.c_str() + open + 1);
      size_t comma = upper.find(',', open);
      if (comma != std::string::npos) scale = std::atoi(upper.c_str() + comma + 1);
    } else {
      col["type_text"] = "DECIMAL(10,0)";
    }
    col["type_precision"] = precision;
    col["type_scale"] = scale;
  }
  return col;
}

// SQL functions reading the fake's request context.
void ContextFunction(sqlite3_context* ctx, int, sqlite3_value**) {
  const auto* value = static_cast<const std::string*>(sqlite3_user_data(ctx));
  sqlite3_result_text(ctx, value->c_str(), static_cast<int>(value->size()), SQLITE_TRANSIENT);
}

// md5(text): 32 lowercase hex digits.
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

// to_json(x): the stored rendering (the fake keeps nested values as JSON text).
void ToJsonFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  sqlite3_result_value(ctx, argv[0]);
}

constexpr auto kIcase = std::regex::ECMAScript | std::regex::icase;

// The Databricks forms change detection issues, in SQLite (after RewriteSql).
std::string TranslateDatabricksSql(std::string sql) {
  static const std::regex cast_string(R"(\s+AS\s+STRING\s*\))", kIcase);
  static const std::regex explode(
      R"(explode\s*\(\s*from_json\s*\(\s*(:\w+)\s*,\s*'ARRAY<STRING>'\s*\)\s*\)\s+AS\s+value)",
      kIcase);
  static const std::regex get_json(R"(\bget_json_object\s*\()", kIcase);
  static const std::regex collate(R"(\bCOLLATE\s+UTF8_BINARY\b)", kIcase);
  static const std::regex create_table(
      R"(^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?[A-Za-z0-9_."]+\s*\()", kIcase);
  static const std::regex string_type(R"(\bSTRING\b)", kIcase);
  sql = std::regex_replace(sql, cast_string, " AS TEXT)");
  sql = std::regex_replace(sql, explode, "value AS value FROM json_each($1)");
  sql = std::regex_replace(sql, get_json, "json_extract(");
  sql = std::regex_replace(sql, collate, "COLLATE BINARY");
  std::smatch m;
  if (std::regex_search(sql, m, create_table)) {
    // Column definitions: STRING keeps text as text (SQLite's affinity of
    // "STRING" alone is NUMERIC).
    sql = m.str() + std::regex_replace(m.suffix().str(), string_type, "STRING TEXT");
  }
  return sql;
}

// Binds `parameters` to the statement's :name markers; "" or the marker left
// unbound.
std::string BindNamed(sqlite3_stmt* stmt, const json& parameters) {
  for (int i = 1; i <= sqlite3_bind_parameter_count(stmt); ++i) {
    const char* marker = sqlite3_bind_parameter_name(stmt, i);
    if (marker == nullptr || marker[0] != ':') return marker == nullptr ? "?" : marker;
    const json* found = nullptr;
    for (const json& p : parameters) {
      if (p.value("name", "") == marker + 1) found = &p;
    }
    if (found == nullptr) return marker + 1;
    auto value = found->find("value");
    if (value == found->end() || value->is_null()) {
      sqlite3_bind_null(stmt, i);
      continue;
    }
    const std::string text = value->is_string() ? value->get<std::string>() : Dump(*value);
    const std::string type = Upper(found->value("type", "STRING"));
    if (type == "BIGINT" || type == "INT" || type == "INTEGER" || type == "SMALLINT" ||
        type == "TINYINT" || type == "LONG") {
      sqlite3_bind_int64(stmt, i, std::stoll(text));
    } else {
      sqlite3_bind_text(stmt, i, text.c_str(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    }
  }
  return "";
}

std::string Unbound(const std::string& name) {
  return fmt::format(
      "[UNBOUND_SQL_PARAMETER] Found the unbound parameter: {}. Please, fix `args` and provide a "
      "mapping of the parameter to either a SQL literal or collection constructor functions such "
      "as `map()`, `array()`, `struct()`.",
      name);
}

}  // namespace

FakeDatabricksFault FakeDatabricksFault::RateLimit(std::string method, int times,
                                                   std::string retry_after) {
  FakeDatabricksFault f;
  f.method = std::move(method);
  f.status = 429;
  f.error_code = "RESOURCE_EXHAUSTED";
  f.message = "Too many requests. Please wait a moment and try again.";
  f.retry_after = std::move(retry_after);
  f.times = times;
  return f;
}

FakeDatabricksFault FakeDatabricksFault::Unavailable(std::string method, int times) {
  FakeDatabricksFault f;
  f.method = std::move(method);
  f.status = 503;
  f.error_code = "TEMPORARILY_UNAVAILABLE";
  f.message = "The service is temporarily unavailable. Please try again later.";
  f.times = times;
  return f;
}

FakeDatabricksServer::FakeDatabricksServer(FakeDatabricksOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {
  auto db = sqlite::Database::Open(":memory:", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (db.ok()) {
    db_ = *std::move(db);
    sqlite3* raw = db_->raw();
    sqlite3_create_function(raw, "current_user", 0, SQLITE_UTF8, &current_principal_,
                            ContextFunction, nullptr, nullptr);
    sqlite3_create_function(raw, "current_catalog", 0, SQLITE_UTF8, &current_catalog_,
                            ContextFunction, nullptr, nullptr);
    sqlite3_create_function(raw, "current_schema", 0, SQLITE_UTF8, &current_schema_,
                            ContextFunction, nullptr, nullptr);
    const int pure = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
    sqlite3_create_function(raw, "md5", 1, pure, nullptr, Md5Function, nullptr, nullptr);
    sqlite3_create_function(raw, "to_json", 1, pure, nullptr, ToJsonFunction, nullptr, nullptr);
  }
  warehouses_.insert(options_.warehouse_id);
  catalogs_.insert(Lower(options_.default_catalog));
}

FakeDatabricksServer::~FakeDatabricksServer() { Stop(); }

absl::Status FakeDatabricksServer::Start() {
  if (db_ == nullptr) return absl::InternalError("the fake's SQLite database did not open");
  return server_.Start();
}

void FakeDatabricksServer::Stop() { server_.Stop(); }

std::string FakeDatabricksServer::BaseUrl() const {
  std::string url = server_.Url("/");
  url.pop_back();
  return url;
}

std::string FakeDatabricksServer::TokenUrl() const { return BaseUrl() + options_.token_path; }

Clock& FakeDatabricksServer::clock() const {
  return options_.clock != nullptr ? *options_.clock : SystemClock();
}

void FakeDatabricksServer::AddPersonalAccessToken(const std::string& token,
                                                  const std::string& user) {
  std::lock_guard<std::mutex> lock(mu_);
  pats_[token] = user;
}

void FakeDatabricksServer::AddServicePrincipal(const std::string& client_id,
                                               const std::string& client_secret) {
  std::lock_guard<std::mutex> lock(mu_);
  clients_[client_id] = client_secret;
}

void FakeDatabricksServer::AddWarehouse(const std::string& warehouse_id) {
  std::lock_guard<std::mutex> lock(mu_);
  warehouses_.insert(warehouse_id);
}

void FakeDatabricksServer::AddCatalog(const std::string& catalog) {
  std::lock_guard<std::mutex> lock(mu_);
  catalogs_.insert(Lower(catalog));
}

absl::Status FakeDatabricksServer::CreateSchema(const std::string& schema) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status s = db_->Exec(fmt::format("ATTACH DATABASE ':memory:' AS \"{}\"", schema));
  if (s.ok()) schemas_.insert(Lower(schema));
  return s;
}

absl::Status FakeDatabricksServer::Exec(const std::string& sql) {
  std::lock_guard<std::mutex> lock(mu_);
  return db_->Exec(sql);
}

void FakeDatabricksServer::SetColumnType(const std::string& column, const std::string& type_text) {
  std::lock_guard<std::mutex> lock(mu_);
  column_types_[column] = type_text;
}

void FakeDatabricksServer::DenyWarehouse(const std::string& principal,
                                         const std::string& warehouse_id) {
  std::lock_guard<std::mutex> lock(mu_);
  denied_warehouses_[principal].insert(warehouse_id);
}

void FakeDatabricksServer::DenySchema(const std::string& principal, const std::string& schema) {
  std::lock_guard<std::mutex> lock(mu_);
  denied_schemas_[principal].insert(Lower(schema));
}

void FakeDatabricksServer::DenyPrivilege(const std::string& statement_contains,
                                         const std::string& privilege, const std::string& object) {
  std::lock_guard<std::mutex> lock(mu_);
  denials_.push_back({statement_contains, privilege, object});
}

void FakeDatabricksServer::ClearDenials() {
  std::lock_guard<std::mutex> lock(mu_);
  denials_.clear();
}

void FakeDatabricksServer::RevokeOAuthTokens() {
  std::lock_guard<std::mutex> lock(mu_);
  oauth_tokens_.clear();
}

void FakeDatabricksServer::RevokePersonalAccessToken(const std::string& token) {
  std::lock_guard<std::mutex> lock(mu_);
  pats_.erase(token);
}

void FakeDatabricksServer::SetPolls(int pending, int running) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.pending_polls = pending;
  options_.running_polls = running;
}

void FakeDatabricksServer::SetChunkRows(int64_t rows) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.chunk_rows = rows;
}

void FakeDatabricksServer::SetLinkLifetime(std::chrono::seconds lifetime) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.link_lifetime = lifetime;
}

void FakeDatabricksServer::SetTimestampSuffix(const std::string& suffix) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.timestamp_suffix = suffix;
}

void FakeDatabricksServer::SetMaxResultRows(int64_t rows) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.max_result_rows = rows;
}

void FakeDatabricksServer::ExpireResults() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, st] : statements_) st->closed = true;
}

void FakeDatabricksServer::AddFault(FakeDatabricksFault fault) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.push_back(std::move(fault));
}

void FakeDatabricksServer::ClearFaults() {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.clear();
}

void FakeDatabricksServer::FailNextStatement(FakeDatabricksStatementError error) {
  std::lock_guard<std::mutex> lock(mu_);
  next_errors_.push_back(std::move(error));
}

absl::StatusOr<json> FakeDatabricksServer::QueryRows(const std::string& sql) const {
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

std::vector<FakeDatabricksRequest> FakeDatabricksServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeDatabricksServer::CountRequests(const std::string& method, int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(), [&](const FakeDatabricksRequest& r) {
    return r.method == method && (status == 0 || r.status == status);
  });
}

std::vector<std::string> FakeDatabricksServer::Cancels() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancels_;
}

int64_t FakeDatabricksServer::statements_created() const {
  std::lock_guard<std::mutex> lock(mu_);
  return statements_created_;
}

int64_t FakeDatabricksServer::oauth_tokens_issued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return oauth_tokens_issued_;
}

json FakeDatabricksServer::LastExecuteBody() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_execute_body_;
}

void FakeDatabricksServer::ClearRequests() {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.clear();
  cancels_.clear();
}

TestResponse FakeDatabricksServer::Handle(const TestRequest& req) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string_view target = req.target;
  size_t q = target.find('?');
  std::string path(target.substr(0, q));
  std::string query(q == std::string_view::npos ? "" : target.substr(q + 1));

  std::string method = "unknown";
  std::string statement_id;
  int64_t chunk = -1;
  if (path == options_.token_path) {
    method = "token";
  } else if (path.starts_with(options_.storage_path + "/")) {
    method = "download";
  } else if (path.starts_with(kStatementsPath)) {
    std::vector<std::string> parts =
        SplitPath(path.substr(std::string_view(kStatementsPath).size()));
    if (parts.empty() && req.method == "POST") {
      method = "execute";
    } else if (parts.size() == 1 && req.method == "GET") {
      method = "status";
      statement_id = parts[0];
    } else if (parts.size() == 2 && parts[1] == "cancel" && req.method == "POST") {
      method = "cancel";
      statement_id = parts[0];
    } else if (parts.size() == 4 && parts[1] == "result" && parts[2] == "chunks" &&
               req.method == "GET") {
      method = "chunk";
      statement_id = parts[0];
      int64_t index = -1;
      auto [ptr, ec] = std::from_chars(parts[3].data(), parts[3].data() + parts[3].size(), index);
      chunk = ec == std::errc() && ptr == parts[3].data() + parts[3].size() ? index : -2;
    }
  }
  FakeDatabricksRequest log{
      method, req.method, req.target, req.body, "", req.Header("authorization").has_value(), 0, ""};

  std::optional<FakeDatabricksFault> fault;
  for (auto it = faults_.begin(); it != faults_.end(); ++it) {
    bool matches =
        it->method.empty() ? method != "token" && method != "download" : it->method == method;
    if (!matches) continue;
    if (it->skip > 0) {
      --it->skip;
      break;
    }
    fault = *it;
    if (--it->times <= 0) faults_.erase(it);
    break;
  }
  auto fault_reply = [&]() {
    if (fault->reset_connection) return TestResponse::Reset();
    TestResponse r = ApiError(fault->status, fault->error_code,
                              fault->message.empty() ? "Scripted failure" : fault->message);
    if (fault->method == "download") {
      r = S3Error(fault->status,
                  fault->status == 503   ? "SlowDown"
                  : fault->status == 403 ? "AccessDenied"
                                         : "InternalError",
                  fault->message.empty() ? "Please reduce your request rate." : fault->message);
    }
    if (!fault->retry_after.empty()) r.headers.emplace_back("Retry-After", fault->retry_after);
    return r;
  };

  TestResponse resp;
  if (method == "token" || method == "download") {
    if (fault && !fault->apply_first) {
      resp = fault_reply();
    } else {
      resp = method == "token" ? HandleToken(req) : HandleDownload(req, path, query);
      if (fault) resp = fault_reply();
    }
  } else {
    std::optional<std::string> auth = req.Header("authorization");
    std::string principal;
    bool authorized = false;
    if (auth && auth->starts_with("Bearer ")) {
      std::string token = auth->substr(7);
      if (auto pat = pats_.find(token); pat != pats_.end()) {
        principal = pat->second;
        authorized = true;
      } else if (auto oauth = oauth_tokens_.find(token);
                 oauth != oauth_tokens_.end() && clock().Now() < oauth->second.expires) {
        principal = oauth->second.principal;
        authorized = true;
      }
    }
    if (!authorized) {
      resp = ApiError(401, "UNAUTHENTICATED",
                      auth ? "Invalid access token." : "Missing Authorization header.");
    } else {
      log.principal = principal;
      if (fault && !fault->apply_first) {
        resp = fault_reply();
      } else {
        resp = Route(method, statement_id, chunk, req, principal);
        if (fault) resp = fault_reply();
      }
    }
  }
  log.status = resp.reset_connection ? 0 : resp.status;
  log.reply = resp.body;
  requests_.push_back(std::move(log));
  return resp;
}

TestResponse FakeDatabricksServer::HandleToken(const TestRequest& req) {
  if (req.method != "POST") return OAuthError(405, "invalid_request", "Method not allowed");
  std::optional<std::string> type = req.Header("content-type");
  if (!type || !type->starts_with("application/x-www-form-urlencoded")) {
    return OAuthError(400, "invalid_request", "Content-Type must be form-urlencoded");
  }
  std::optional<std::string> auth = req.Header("authorization");
  std::string id, secret;
  if (auth && auth->starts_with("Basic ")) {
    absl::StatusOr<std::string> decoded = Base64Decode(auth->substr(6));
    if (decoded.ok()) {
      size_t colon = decoded->find(':');
      if (colon != std::string::npos) {
        id = decoded->substr(0, colon);
        secret = decoded->substr(colon + 1);
      }
    }
  }
  auto client = clients_.find(id);
  if (id.empty() || client == clients_.end() || client->second != secret) {
    return OAuthError(401, "invalid_client", "Client authentication failed");
  }
  auto form = ParseQuery(req.body);
  if (form["grant_type"] != "client_credentials") {
    return OAuthError(400, "unsupported_grant_type",
                      "Unsupported grant_type: " + form["grant_type"]);
  }
  std::string scope = form["scope"];
  bool has_scope = false;
  for (size_t pos = 0; pos <= scope.size();) {
    size_t space = scope.find(' ', pos);
    if (space == std::string::npos) space = scope.size();
    has_scope |= scope.substr(pos, space - pos) == options_.required_scope;
    pos = space + 1;
  }
  if (!has_scope) return OAuthError(400, "invalid_scope", "Invalid scope: " + scope);
  ++oauth_tokens_issued_;
  std::string token =
      fmt::format("eyJraWQiOiJmYWtlIn0.dbx-{}.{}", oauth_tokens_issued_, RandomHex(8));
  oauth_tokens_[token] = IssuedToken{id, clock().Now() + options_.oauth_token_lifetime};
  return TestResponse::Json(200, Dump(json{{"access_token", token},
                                           {"token_type", "Bearer"},
                                           {"expires_in", options_.oauth_token_lifetime.count()},
                                           {"scope", options_.required_scope}}));
}

TestResponse FakeDatabricksServer::HandleDownload(const TestRequest& req, const std::string& path,
                                                  const std::string& query) {
  if (req.method != "GET") return S3Error(405, "MethodNotAllowed", "The method is not allowed");
  if (req.Header("authorization")) {
    return S3Error(400, "InvalidArgument",
                   "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                   "Signature query string parameter or the Authorization header should be "
                   "specified");
  }
  auto params = ParseQuery(query);
  auto link = links_.find(params["X-Amz-Signature"]);
  std::vector<std::string> parts = SplitPath(path.substr(options_.storage_path.size()));
  if (link == links_.end() || parts.size() != 2 || parts[0] != link->second.statement_id ||
      parts[1] != std::to_string(link->second.chunk)) {
    return S3Error(403, "SignatureDoesNotMatch",
                   "The request signature we calculated does not match the signature you "
                   "provided.");
  }
  if (clock().Now() >= link->second.expires) {
    return S3Error(403, "AccessDenied", "Request has expired");
  }
  auto st = statements_.find(link->second.statement_id);
  if (st == statements_.end())
    return S3Error(404, "NoSuchKey", "The specified key does not exist.");
  Statement& s = *st->second;
  if (options_.require_sse_headers) {
    if (req.Header("x-amz-server-side-encryption-customer-algorithm").value_or("") != "AES256" ||
        req.Header("x-amz-server-side-encryption-customer-key").value_or("") != s.sse_key) {
      return S3Error(400, "InvalidRequest",
                     "The object was stored using a form of Server Side Encryption. The correct "
                     "parameters must be provided to retrieve the object.");
    }
  }
  TestResponse r;
  r.status = 200;
  r.headers.emplace_back("Content-Type", "application/octet-stream");
  r.body = Dump(s.chunks[static_cast<size_t>(link->second.chunk)]);
  return r;
}

TestResponse FakeDatabricksServer::Route(const std::string& method, const std::string& statement_id,
                                         int64_t chunk, const TestRequest& req,
                                         const std::string& principal) {
  if (method == "unknown") {
    return ApiError(404, "ENDPOINT_NOT_FOUND",
                    fmt::format("No API found for '{} {}'", req.method, req.target));
  }
  if (method == "execute") return Execute(req, principal);
  auto it = statements_.find(statement_id);
  if (it == statements_.end() || it->second->principal != principal) {
    return ApiError(404, "RESOURCE_DOES_NOT_EXIST",
                    fmt::format("The statement {} was not found.", statement_id));
  }
  Statement& st = *it->second;
  if (method == "cancel") {
    cancels_.push_back(st.id);
    if (st.pending_left + st.running_left > 0 && TerminalState(st) != "CLOSED") st.cancelled = true;
    return TestResponse::Json(200, "{}");
  }
  if (method == "status") return TestResponse::Json(200, Dump(StatusReply(st, true)));
  // chunk
  if (st.closed) {
    return ApiError(404, "RESOURCE_DOES_NOT_EXIST",
                    fmt::format("The statement {} is closed; its results are gone.", st.id));
  }
  if (st.pending_left + st.running_left > 0 || TerminalState(st) != "SUCCEEDED") {
    return ApiError(400, "BAD_REQUEST",
                    fmt::format("The statement {} has no result to fetch (state {}).", st.id,
                                TerminalState(st)));
  }
  if (chunk < 0 || chunk >= static_cast<int64_t>(st.chunks.size())) {
    return ApiError(
        400, "INVALID_PARAMETER_VALUE",
        fmt::format("chunk_index {} is out of range [0, {}).", chunk, st.chunks.size()));
  }
  return TestResponse::Json(200, Dump(ResultData(st, chunk)));
}

TestResponse FakeDatabricksServer::Execute(const TestRequest& req, const std::string& principal) {
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  auto invalid = [](const std::string& message) {
    return ApiError(400, "INVALID_PARAMETER_VALUE", message);
  };
  if (!body.is_object()) return ApiError(400, "MALFORMED_REQUEST", "Invalid JSON in request body");
  last_execute_body_ = body;
  if (!body.contains("statement") || !body["statement"].is_string()) {
    return invalid("statement is required");
  }
  std::string sql = body["statement"];
  if (sql.size() > kMaxStatementBytes) return invalid("statement exceeds the size limit of 16 MiB");
  std::string warehouse = body.value("warehouse_id", "");
  if (warehouse.empty()) return invalid("warehouse_id is required");
  std::string wait = body.value("wait_timeout", "10s");
  int wait_s = -1;
  if (wait.size() >= 2 && wait.back() == 's') {
    auto [ptr, ec] = std::from_chars(wait.data(), wait.data() + wait.size() - 1, wait_s);
    if (ec != std::errc() || ptr != wait.data() + wait.size() - 1) wait_s = -1;
  }
  if (wait_s != 0 && (wait_s < 5 || wait_s > 50)) {
    return invalid("wait_timeout must be 0s or between 5s and 50s, got " + wait);
  }
  std::string on_wait = body.value("on_wait_timeout", "CONTINUE");
  if (on_wait != "CONTINUE" && on_wait != "CANCEL") {
    return invalid("on_wait_timeout must be CONTINUE or CANCEL");
  }
  std::string disposition = body.value("disposition", "INLINE");
  if (disposition != "INLINE" && disposition != "EXTERNAL_LINKS") {
    return invalid("disposition must be INLINE or EXTERNAL_LINKS");
  }
  std::string format = body.value("format", "JSON_ARRAY");
  if (format == "ARROW_STREAM" || format == "CSV") {
    if (disposition != "EXTERNAL_LINKS") {
      return invalid(format + " format requires the EXTERNAL_LINKS disposition");
    }
    return invalid(format + " is not supported by this fake; use JSON_ARRAY");
  }
  if (format != "JSON_ARRAY") return invalid("format must be JSON_ARRAY, ARROW_STREAM or CSV");
  if (!warehouses_.contains(warehouse)) {
    return ApiError(options_.unknown_warehouse_status,
                    options_.unknown_warehouse_status == 404 ? "RESOURCE_DOES_NOT_EXIST"
                                                             : "INVALID_PARAMETER_VALUE",
                    fmt::format("Warehouse {} does not exist.", warehouse));
  }
  if (denied_warehouses_[principal].contains(warehouse)) {
    return ApiError(403, "PERMISSION_DENIED",
                    fmt::format("User {} does not have CAN_USE permission on warehouse {}.",
                                principal, warehouse));
  }
  auto st = std::make_unique<Statement>();
  st->id = NewStatementId();
  st->principal = principal;
  st->external = disposition == "EXTERNAL_LINKS";
  st->pending_left = options_.pending_polls;
  st->running_left = options_.running_polls;
  st->sse_key = Base64Encode(RandomHex(16));
  ++statements_created_;
  json parameters = body.value("parameters", json::array());
  if (!parameters.is_array()) return invalid("parameters must be a list");
  for (const json& p : parameters) {
    if (!p.is_object() || !p.contains("name") || !p["name"].is_string()) {
      return invalid("each parameter needs a name");
    }
    if (p.contains("value") && !p["value"].is_null() && !p["value"].is_string()) {
      return invalid("parameter values are strings");
    }
  }
  RunStatement(*st, sql, body.value("catalog", ""), body.value("schema", ""), parameters);
  Statement& ref = *st;
  statements_[st->id] = std::move(st);
  bool done_now = wait_s > 0 && ref.pending_left + ref.running_left == 0;
  if (!done_now && on_wait == "CANCEL" && wait_s > 0) ref.cancelled = true;
  json reply =
      done_now || ref.cancelled
          ? StatusReply(ref, false)
          : json{{"statement_id", ref.id},
                 {"status",
                  {{"state", ref.pending_left > 0 || wait_s == 0 ? "PENDING" : "RUNNING"}}}};
  return TestResponse::Json(200, Dump(reply));
}

void FakeDatabricksServer::RunStatement(Statement& st, const std::string& sql_text,
                                        const std::string& catalog, const std::string& schema,
                                        const json& statement_parameters) {
  json parameters = statement_parameters;
  auto fail = [&](std::string code, std::string message, std::string sql_state) {
    st.error =
        FakeDatabricksStatementError{std::move(code), std::move(message), std::move(sql_state)};
  };
  if (!next_errors_.empty()) {
    st.error = next_errors_.front();
    next_errors_.pop_front();
    return;
  }
  std::string cat = catalog.empty() ? options_.default_catalog : catalog;
  std::string sch = schema.empty() ? options_.default_schema : schema;
  if (!catalogs_.contains(Lower(cat))) {
    return fail("BAD_REQUEST",
                fmt::format("[NO_SUCH_CATALOG_EXCEPTION] Catalog '{}' was not found. Please "
                            "verify the catalog name and then retry the query or command again.",
                            cat),
                "42704");
  }
  if (!schema.empty() && !schemas_.contains(Lower(schema))) {
    return fail("BAD_REQUEST",
                fmt::format("[SCHEMA_NOT_FOUND] The schema `{}`.`{}` cannot be found. Verify the "
                            "spelling and correctness of the schema and catalog.",
                            cat, schema),
                "42704");
  }
  current_principal_ = st.principal;
  current_catalog_ = cat;
  current_schema_ = sch;

  for (const Denial& d : denials_) {
    if (Upper(sql_text).find(Upper(d.statement_contains)) != std::string::npos) {
      return fail("BAD_REQUEST",
                  fmt::format("[INSUFFICIENT_PERMISSIONS] Insufficient privileges: User does not "
                              "have {} on {}. SQLSTATE: 42501",
                              d.privilege, d.object),
                  "42501");
    }
  }
  std::string sql = TranslateDatabricksSql(RewriteSql(sql_text, catalogs_));
  static const std::regex create_schema(
      R"(^\s*CREATE\s+(?:SCHEMA|DATABASE)\s+(IF\s+NOT\s+EXISTS\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*;?\s*$)",
      kIcase);
  static const std::regex ctas(R"(^\s*CREATE\s+TABLE\s+([A-Za-z0-9_."]+)\s+AS\s+([\s\S]*)$)",
                               kIcase);
  std::smatch match;
  if (std::regex_match(sql, match, create_schema)) {
    const std::string name = match[2].str();
    if (schemas_.contains(Lower(name))) {
      if (match[1].matched) return;
      return fail("BAD_REQUEST",
                  fmt::format("[SCHEMA_ALREADY_EXISTS] Cannot create schema `{}` because it "
                              "already exists.",
                              name),
                  "42P06");
    }
    absl::Status attached = db_->Exec(fmt::format("ATTACH DATABASE ':memory:' AS \"{}\"", name));
    if (!attached.ok()) return fail("BAD_REQUEST", std::string(attached.message()), "XX000");
    schemas_.insert(Lower(name));
    return;
  }
  if (std::regex_search(sql, std::regex(R"(^\s*MERGE\s+INTO\s)", kIcase))) {
    int64_t counts[3] = {0, 0, 0};  // inserted, updated, deleted
    std::string error = RunMerge(sql, parameters, counts);
    if (!error.empty()) return fail("BAD_REQUEST", error, "42000");
    sql = fmt::format(
        "SELECT {} AS num_affected_rows, {} AS num_updated_rows, {} AS num_deleted_rows, {} AS "
        "num_inserted_rows",
        counts[0] + counts[1] + counts[2], counts[1], counts[2], counts[0]);
    parameters = json::array();
  } else if (std::regex_match(sql, match, ctas)) {
    std::string error = RunCreateTableAs(match[1].str(), match[2].str(), parameters);
    if (!error.empty()) return fail("BAD_REQUEST", error, "42000");
    return;
  }
  struct Reads {
    std::vector<std::string> schemas;
  } reads;
  sqlite3* db = db_->raw();
  sqlite3_set_authorizer(
      db,
      [](void* user, int action, const char*, const char*, const char* a5, const char*) -> int {
        if (action == SQLITE_READ && a5 != nullptr) {
          static_cast<Reads*>(user)->schemas.push_back(Lower(a5));
        }
        return SQLITE_OK;
      },
      &reads);
  sqlite3_stmt* raw = nullptr;
  const char* tail = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &raw, &tail);
  sqlite3_set_authorizer(db, nullptr, nullptr);
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, sqlite3_finalize);
  if (rc != SQLITE_OK) {
    std::string message = sqlite3_errmsg(db);
    if (message.starts_with("no such table: ")) {
      std::string name = message.substr(15);
      return fail("BAD_REQUEST",
                  fmt::format("[TABLE_OR_VIEW_NOT_FOUND] The table or view `{}` cannot be found. "
                              "Verify the spelling and correctness of the schema and catalog.",
                              name),
                  "42P01");
    }
    if (message.starts_with("no such column: ")) {
      return fail("BAD_REQUEST",
                  fmt::format("[UNRESOLVED_COLUMN.WITHOUT_SUGGESTION] A column, variable, or "
                              "function parameter with name `{}` cannot be resolved.",
                              message.substr(16)),
                  "42703");
    }
    return fail("BAD_REQUEST", fmt::format("[PARSE_SYNTAX_ERROR] Syntax error: {}", message),
                "42601");
  }
  if (stmt == nullptr) return fail("BAD_REQUEST", "[PARSE_EMPTY_STATEMENT] empty", "42617");
  if (std::string unbound = BindNamed(stmt.get(), parameters); !unbound.empty()) {
    return fail("BAD_REQUEST", Unbound(unbound), "42P02");
  }
  if (sqlite3_column_count(stmt.get()) == 0) {  // DDL or DML
    rc = sqlite3_step(stmt.get());
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
      return fail("BAD_REQUEST", fmt::format("[INTERNAL_ERROR] {}", sqlite3_errmsg(db)), "XX000");
    }
    const std::string verb = Upper(sql.substr(0, sql.find_first_of(" \t\r\n(")));
    if (verb != "INSERT" && verb != "UPDATE" && verb != "DELETE") return;
    const int64_t changes = sqlite3_changes(db);
    sql = verb == "INSERT"
              ? fmt::format("SELECT {0} AS num_affected_rows, {0} AS num_inserted_rows", changes)
              : fmt::format("SELECT {} AS num_affected_rows", changes);
    raw = nullptr;
    rc = sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &raw, nullptr);
    stmt.reset(raw);
    if (rc != SQLITE_OK) return fail("BAD_REQUEST", sqlite3_errmsg(db), "XX000");
  }
  for (const std::string& s : reads.schemas) {
    if (denied_schemas_[st.principal].contains(s)) {
      return fail("BAD_REQUEST",
                  fmt::format("[INSUFFICIENT_PERMISSIONS] Insufficient privileges: User does not "
                              "have USE SCHEMA on Schema '{}.{}'.",
                              cat, s),
                  "42501");
    }
  }
  int columns = sqlite3_column_count(stmt.get());
  std::vector<std::string> names;
  std::vector<std::string> types;
  for (int i = 0; i < columns; ++i) {
    names.push_back(sqlite3_column_name(stmt.get(), i));
    types.push_back(TypeFromDecl(sqlite3_column_decltype(stmt.get(), i)));
  }
  std::vector<std::vector<Cell>> rows;
  while (true) {
    rc = sqlite3_step(stmt.get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) {
      return fail("BAD_REQUEST", fmt::format("[INTERNAL_ERROR] {}", sqlite3_errmsg(db)), "XX000");
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
    rows.push_back(std::move(row));
  }
  for (int i = 0; i < columns; ++i) {
    size_t k = static_cast<size_t>(i);
    auto forced = column_types_.find(names[k]);
    if (forced != column_types_.end()) {
      types[k] = Upper(forced->second);
    } else if (types[k].empty()) {
      types[k] = "STRING";
      for (const auto& r : rows) {
        int t = r[k].type;
        if (t == SQLITE_NULL) continue;
        types[k] = t == SQLITE_INTEGER ? "BIGINT"
                   : t == SQLITE_FLOAT ? "DOUBLE"
                   : t == SQLITE_BLOB  ? "BINARY"
                                       : "STRING";
        break;
      }
    }
    st.columns.push_back(ColumnInfo(names[k], types[k], i));
  }
  if (options_.max_result_rows > 0 &&
      static_cast<int64_t>(rows.size()) > options_.max_result_rows) {
    rows.resize(static_cast<size_t>(options_.max_result_rows));
    st.truncated = true;
  }
  // Encode and cut into chunks.
  json current = json::array();
  size_t current_bytes = 2;
  int64_t offset = 0;
  auto flush = [&] {
    st.chunk_offsets.push_back(offset);
    st.chunk_sizes.push_back(current_bytes);
    st.total_bytes += static_cast<int64_t>(current_bytes);
    offset += static_cast<int64_t>(current.size());
    st.chunks.push_back(std::move(current));
    current = json::array();
    current_bytes = 2;
  };
  for (const auto& r : rows) {
    json encoded = json::array();
    for (size_t k = 0; k < r.size(); ++k) {
      encoded.push_back(EncodeCell(types[k], r[k], options_.timestamp_suffix));
    }
    size_t size = Dump(encoded).size() + 1;
    if (!current.empty() && (static_cast<int64_t>(current.size()) >= options_.chunk_rows ||
                             current_bytes + size > options_.chunk_bytes)) {
      flush();
    }
    current_bytes += size;
    current.push_back(std::move(encoded));
  }
  if (!current.empty()) flush();
  st.total_rows = static_cast<int64_t>(rows.size());
  if (!st.external && st.total_bytes > options_.inline_byte_limit) {
    st.chunks.clear();
    return fail("BAD_REQUEST",
                fmt::format("Inline byte limit exceeded. Statements executed with "
                            "disposition=INLINE can have a result size of at most {} bytes. "
                            "Please execute the statement with disposition=EXTERNAL_LINKS if you "
                            "want to download the full result.",
                            options_.inline_byte_limit),
                "");
  }
}

std::string FakeDatabricksServer::TerminalState(const Statement& st) const {
  if (st.cancelled) return "CANCELED";
  if (st.error) return "FAILED";
  if (st.closed) return "CLOSED";
  return "SUCCEEDED";
}

json FakeDatabricksServer::StatusReply(Statement& st, bool poll) {
  json reply = {{"statement_id", st.id}};
  if (!st.cancelled && st.pending_left > 0) {
    if (poll) --st.pending_left;
    reply["status"] = {{"state", "PENDING"}};
    return reply;
  }
  if (!st.cancelled && st.running_left > 0) {
    if (poll) --st.running_left;
    reply["status"] = {{"state", "RUNNING"}};
    return reply;
  }
  std::string state = TerminalState(st);
  reply["status"] = {{"state", state}};
  if (state == "FAILED") {
    reply["status"]["error"] = {{"error_code", st.error->error_code},
                                {"message", st.error->message}};
    if (!st.error->sql_state.empty()) reply["status"]["sql_state"] = st.error->sql_state;
    return reply;
  }
  if (state != "SUCCEEDED") return reply;
  reply["manifest"] = Manifest(st);
  if (!st.chunks.empty()) reply["result"] = ResultData(st, 0);
  return reply;
}

json FakeDatabricksServer::Manifest(const Statement& st) const {
  json chunks = json::array();
  for (size_t i = 0; i < st.chunks.size(); ++i) {
    json c = {{"chunk_index", i},
              {"row_offset", st.chunk_offsets[i]},
              {"row_count", st.chunks[i].size()}};
    if (st.external) c["byte_count"] = st.chunk_sizes[i];
    chunks.push_back(std::move(c));
  }
  json manifest = {{"format", "JSON_ARRAY"},
                   {"schema", {{"column_count", st.columns.size()}, {"columns", st.columns}}},
                   {"total_row_count", st.total_rows},
                   {"total_chunk_count", st.chunks.size()},
                   {"chunks", std::move(chunks)},
                   {"truncated", st.truncated}};
  if (st.external) manifest["total_byte_count"] = st.total_bytes;
  return manifest;
}

json FakeDatabricksServer::ResultData(Statement& st, int64_t chunk) {
  size_t i = static_cast<size_t>(chunk);
  json data = {{"chunk_index", chunk},
               {"row_offset", st.chunk_offsets[i]},
               {"row_count", st.chunks[i].size()}};
  bool more = i + 1 < st.chunks.size();
  std::string next_link = fmt::format("{}/{}/result/chunks/{}", kStatementsPath, st.id, chunk + 1);
  if (!st.external) {
    data["data_array"] = st.chunks[i];
    if (more) {
      data["next_chunk_index"] = chunk + 1;
      data["next_chunk_internal_link"] = next_link;
    }
    return data;
  }
  std::string signature = RandomHex(20);
  Clock::TimePoint expires = clock().Now() + options_.link_lifetime;
  links_[signature] = Link{st.id, chunk, expires};
  ++links_issued_;
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(expires.time_since_epoch()).count();
  json link = {
      {"chunk_index", chunk},
      {"row_offset", st.chunk_offsets[i]},
      {"row_count", st.chunks[i].size()},
      {"byte_count", st.chunk_sizes[i]},
      {"external_link", fmt::format("{}{}/{}/{}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={}&"
                                    "X-Amz-Signature={}",
                                    BaseUrl(), options_.storage_path, st.id, chunk,
                                    options_.link_lifetime.count(), signature)},
      {"expiration", TimestampFromMicros(secs * 1'000'000, "Z")},
      {"http_headers", json::object()}};
  if (options_.require_sse_headers) {
    link["http_headers"] = {{"x-amz-server-side-encryption-customer-algorithm", "AES256"},
                            {"x-amz-server-side-encryption-customer-key", st.sse_key}};
  }
  if (more) {
    link["next_chunk_index"] = chunk + 1;
    link["next_chunk_internal_link"] = next_link;
  }
  return json{{"external_links", json::array({std::move(link)})}};
}

// MERGE INTO t AS a USING (select) AS b ON cond WHEN ...: the source is
// materialised with whether each row matches, then each clause runs as a
// DELETE, UPDATE ... FROM or INSERT ... SELECT over it (a target row takes the
// first WHEN MATCHED clause whose condition holds).
std::string FakeDatabricksServer::RunMerge(const std::string& sql, const json& parameters,
                                           int64_t counts[3]) {
  static const std::regex merge(
      R"(^\s*MERGE\s+INTO\s+(\S+)\s+AS\s+(\w+)\s+USING\s+\(([\s\S]*)\)\s+AS\s+(\w+)\s+ON\s+([\s\S]*?)\s+(WHEN\s[\s\S]*)$)",
      kIcase);
  static const std::regex clause(
      R"(^(NOT\s+)?MATCHED(?:\s+AND\s+([\s\S]*?))?\s+THEN\s+(DELETE|UPDATE\s+SET\s+([\s\S]*?)|INSERT\s*\(([^)]*)\)\s*VALUES\s*\(([\s\S]*)\))\s*$)",
      kIcase);
  static const std::regex when(R"(\bWHEN\s+)", kIcase);
  std::smatch m;
  if (!std::regex_match(sql, m, merge)) return "[PARSE_SYNTAX_ERROR] unsupported MERGE (fake)";
  const std::string target = m[1].str(), target_alias = m[2].str();
  const std::string source = m[3].str(), source_alias = m[4].str(), on = m[5].str();
  std::vector<std::string> clauses;
  const std::string rest = m[6].str();
  for (std::sregex_token_iterator it(rest.begin(), rest.end(), when, -1), end; it != end; ++it) {
    if (it->str().find_first_not_of(" \t\r\n") != std::string::npos) clauses.push_back(it->str());
  }
  sqlite3* db = db_->raw();
  std::string error;
  auto run = [&](const std::string& statement, int64_t* changes) -> bool {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, statement.c_str(), static_cast<int>(statement.size()), &stmt,
                           nullptr) != SQLITE_OK) {
      error = fmt::format("[PARSE_SYNTAX_ERROR] {}", sqlite3_errmsg(db));
      if (stmt != nullptr) sqlite3_finalize(stmt);
      return false;
    }
    if (std::string unbound = BindNamed(stmt, parameters); !unbound.empty()) {
      error = Unbound(unbound);
      sqlite3_finalize(stmt);
      return false;
    }
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) {
      error = fmt::format("[INTERNAL_ERROR] {}", sqlite3_errmsg(db));
      return false;
    }
    if (changes != nullptr) *changes += sqlite3_changes(db);
    return true;
  };
  bool ok = run("SAVEPOINT fake_merge", nullptr) &&
            run(fmt::format("CREATE TEMP TABLE fake_merge_source AS SELECT {0}.*, EXISTS (SELECT 1 "
                            "FROM {1} AS {2} WHERE {3}) AS fake_matched FROM ({4}) AS {0}",
                            source_alias, target, target_alias, on, source),
                nullptr);
  std::string earlier = "0";  // the conditions of earlier WHEN MATCHED clauses
  for (size_t i = 0; ok && i < clauses.size(); ++i) {
    std::smatch c;
    if (!std::regex_match(clauses[i], c, clause)) {
      error = "[PARSE_SYNTAX_ERROR] unsupported MERGE clause (fake)";
      ok = false;
      break;
    }
    const std::string cond = c[2].matched ? c[2].str() : "1";
    const std::string from = fmt::format("temp.fake_merge_source AS {}", source_alias);
    if (c[1].matched) {  // WHEN NOT MATCHED ... THEN INSERT
      ok = run(fmt::format("INSERT INTO {} ({}) SELECT {} FROM {} WHERE NOT {}.fake_matched AND "
                           "({})",
                           target, c[5].str(), c[6].str(), from, source_alias, cond),
               &counts[0]);
      continue;
    }
    const std::string where = fmt::format("{}.fake_matched AND ({}) AND ({}) AND NOT ({})",
                                          source_alias, on, cond, earlier);
    if (Upper(c[3].str()) == "DELETE") {
      ok = run(fmt::format("DELETE FROM {} AS {} WHERE EXISTS (SELECT 1 FROM {} WHERE {})", target,
                           target_alias, from, where),
               &counts[2]);
    } else {
      ok = run(fmt::format("UPDATE {} AS {} SET {} FROM {} WHERE {}", target, target_alias,
                           c[4].str(), from, where),
               &counts[1]);
    }
    earlier = fmt::format("({}) OR ({})", earlier, cond);
  }
  std::string kept = error;
  (void)run("DROP TABLE IF EXISTS temp.fake_merge_source", nullptr);
  if (!ok) {
    (void)run("ROLLBACK TO fake_merge", nullptr);
    (void)run("RELEASE fake_merge", nullptr);
    return kept;
  }
  return run("RELEASE fake_merge", nullptr) ? "" : error;
}

// CREATE TABLE t AS SELECT: t's columns are declared as the ones they copy
// (so that their Databricks types survive), then filled by INSERT ... SELECT.
std::string FakeDatabricksServer::RunCreateTableAs(const std::string& table,
                                                   const std::string& select,
                                                   const json& parameters) {
  sqlite3* db = db_->raw();
  sqlite3_stmt* probe = nullptr;
  if (sqlite3_prepare_v2(db, select.c_str(), static_cast<int>(select.size()), &probe, nullptr) !=
          SQLITE_OK ||
      probe == nullptr) {
    std::string message = sqlite3_errmsg(db);
    if (probe != nullptr) sqlite3_finalize(probe);
    if (message.starts_with("no such column: ")) {
      return "[UNRESOLVED_COLUMN.WITHOUT_SUGGESTION] " + message;
    }
    if (message.starts_with("no such table: ")) return "[TABLE_OR_VIEW_NOT_FOUND] " + message;
    return "[PARSE_SYNTAX_ERROR] " + message;
  }
  std::string columns;
  for (int i = 0; i < sqlite3_column_count(probe); ++i) {
    const char* decl = sqlite3_column_decltype(probe, i);
    columns += fmt::format("{}\"{}\" {}", i ? ", " : "", sqlite3_column_name(probe, i),
                           decl != nullptr ? decl : "");
  }
  sqlite3_finalize(probe);
  if (absl::Status made = db_->Exec(fmt::format("CREATE TABLE {} ({})", table, columns));
      !made.ok()) {
    return fmt::format("[TABLE_OR_VIEW_ALREADY_EXISTS] {}", std::string(made.message()));
  }
  const std::string insert = fmt::format("INSERT INTO {} {}", table, select);
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(db, insert.c_str(), static_cast<int>(insert.size()), &stmt, nullptr);
  std::string error;
  if (stmt == nullptr) {
    error = fmt::format("[PARSE_SYNTAX_ERROR] {}", sqlite3_errmsg(db));
  } else if (std::string unbound = BindNamed(stmt, parameters); !unbound.empty()) {
    error = Unbound(unbound);
  } else if (sqlite3_step(stmt) != SQLITE_DONE) {
    error = fmt::format("[INTERNAL_ERROR] {}", sqlite3_errmsg(db));
  }
  if (stmt != nullptr) sqlite3_finalize(stmt);
  if (!error.empty()) (void)db_->Exec(fmt::format("DROP TABLE IF EXISTS {}", table));
  return error;
}

}  // namespace backflow
