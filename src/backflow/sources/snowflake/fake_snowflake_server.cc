#include "backflow/sources/snowflake/fake_snowflake_server.h"

#include <openssl/evp.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <regex>
#include <string_view>
#include <utility>

#include "backflow/common/civil_date.h"
#include "backflow/common/crypto.h"
#include "backflow/common/url.h"
#include "backflow/sources/snowflake/snowflake_source.h"
#include "fmt/format.h"

namespace backflow {

using json = nlohmann::json;

namespace {

constexpr std::string_view kStatements = "/api/v2/statements";

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool IsUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

json Message(std::string code, std::string message, std::string sql_state = "") {
  json j = {{"code", std::move(code)}, {"message", std::move(message)}};
  if (!sql_state.empty()) j["sqlState"] = std::move(sql_state);
  return j;
}

json DefaultErrorBody(int status) {
  switch (status) {
    case 400:
      return Message("390142", "Incoming request does not contain a valid payload.");
    case 401:
      return Message("390303", "Invalid OAuth access token. ");
    case 403:
      return Message("390101", "Forbidden.");
    case 404:
      return Message("390404", "Not Found.");
    case 408:
      return Message("000630",
                     "Statement reached its statement or warehouse timeout of 1 second(s) and "
                     "was canceled.",
                     "57014");
    case 422:
      return Message("002003", "SQL compilation error:\nObject does not exist.", "02000");
    case 429:
      return Message("390505", "Too many requests.");
    default:
      return Message(std::to_string(status), fmt::format("HTTP {}", status));
  }
}

std::string Gzip(std::string_view in) {
  z_stream zs{};
  deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  std::string out(deflateBound(&zs, static_cast<uLong>(in.size())) + 32, '\0');
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// --- Snowflake types and encodings -----------------------------------------------

struct SfType {
  std::string type;  // rowType type, lowercase
  int64_t precision = 0;
  int64_t scale = 0;
  int64_t length = 0;
};

// A Snowflake type name as written in DDL; nullopt when not one.
std::optional<SfType> ParseTypeName(std::string_view name) {
  std::string n = Upper(name);
  while (!n.empty() && n.back() == ' ') n.pop_back();
  std::vector<int64_t> args;
  if (size_t paren = n.find('('); paren != std::string::npos) {
    std::string inner = n.substr(paren + 1, n.find(')') - paren - 1);
    n = n.substr(0, paren);
    while (!n.empty() && n.back() == ' ') n.pop_back();
    for (size_t start = 0; start <= inner.size();) {
      size_t comma = inner.find(',', start);
      std::string part =
          inner.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      part.erase(std::remove(part.begin(), part.end(), ' '), part.end());
      if (!part.empty()) args.push_back(std::stoll(part));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  auto arg = [&](size_t i, int64_t def) { return i < args.size() ? args[i] : def; };
  SfType t;
  if (n == "NUMBER" || n == "DECIMAL" || n == "NUMERIC") {
    t = {"fixed", arg(0, 38), arg(1, 0), 0};
  } else if (n == "INT" || n == "INTEGER" || n == "BIGINT" || n == "SMALLINT" || n == "TINYINT") {
    t = {"fixed", 38, 0, 0};
  } else if (n == "FLOAT" || n == "DOUBLE" || n == "REAL" || n == "DOUBLE PRECISION") {
    t = {"real", 0, 0, 0};
  } else if (n == "DECFLOAT") {
    t = {"decfloat", 38, 0, 0};
  } else if (n == "VARCHAR" || n == "STRING" || n == "TEXT" || n == "CHAR") {
    t = {"text", 0, 0, arg(0, 16777216)};
  } else if (n == "BINARY" || n == "VARBINARY") {
    t = {"binary", 0, 0, arg(0, 8388608)};
  } else if (n == "BOOLEAN") {
    t = {"boolean", 0, 0, 0};
  } else if (n == "DATE") {
    t = {"date", 0, 0, 0};
  } else if (n == "TIME") {
    t = {"time", 0, arg(0, 9), 0};
  } else if (n == "TIMESTAMP_NTZ" || n == "TIMESTAMP" || n == "DATETIME") {
    t = {"timestamp_ntz", 0, arg(0, 9), 0};
  } else if (n == "TIMESTAMP_LTZ") {
    t = {"timestamp_ltz", 0, arg(0, 9), 0};
  } else if (n == "TIMESTAMP_TZ") {
    t = {"timestamp_tz", 0, arg(0, 9), 0};
  } else if (n == "VARIANT" || n == "OBJECT" || n == "ARRAY" || n == "GEOGRAPHY" ||
             n == "GEOMETRY") {
    t = {Lower(n), 0, 0, 0};
  } else {
    return std::nullopt;
  }
  return t;
}

json RowTypeEntry(const std::string& name, const SfType& t, const std::string& table,
                  const std::string& database, const std::string& schema, bool uppercase) {
  json e = {{"name", name},
            {"database", database},
            {"schema", schema},
            {"table", Upper(table)},
            {"type", uppercase ? Upper(t.type) : t.type},
            {"nullable", true},
            {"collation", nullptr}};
  e["length"] = nullptr;
  e["byteLength"] = nullptr;
  e["precision"] = nullptr;
  e["scale"] = nullptr;
  if (t.type == "fixed") {
    e["precision"] = t.precision;
    e["scale"] = t.scale;
  } else if (t.type == "text" || t.type == "binary") {
    e["length"] = t.length;
    e["byteLength"] = t.type == "text" ? t.length * 4 : t.length;
  } else if (t.type == "time" || t.type.starts_with("timestamp")) {
    e["precision"] = 0;
    e["scale"] = t.scale;
  }
  return e;
}

// A value as SQLite returned it.
struct Raw {
  int type = SQLITE_NULL;
  int64_t i = 0;
  double d = 0;
  std::string s;  // TEXT or BLOB bytes
};

// Parses "YYYY-MM-DD[( |T)HH:MM[:SS[.fffffffff]]][Z|±HH[:MM]]".
struct Civil {
  int64_t days = 0;
  int64_t seconds = 0;  // of the day
  int64_t nanos = 0;
  std::optional<int64_t> offset_min;
};

// "HH:MM[:SS[.f]]" at `pos`; advances pos.
bool ParseClock(std::string_view s, size_t& pos, int64_t& seconds, int64_t& nanos) {
  auto h = FixedDigits(s, pos, 2);
  auto mi = FixedDigits(s, pos + 3, 2);
  if (!h || !mi || s[pos + 2] != ':') return false;
  pos += 5;
  int64_t sec = 0;
  if (pos < s.size() && s[pos] == ':') {
    auto ss = FixedDigits(s, pos + 1, 2);
    if (!ss) return false;
    sec = *ss;
    pos += 3;
  }
  nanos = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    std::string frac;
    while (pos < s.size() && std::isdigit(static_cast<unsigned char>(s[pos]))) frac += s[pos++];
    frac.resize(9, '0');
    nanos = std::stoll(frac.substr(0, 9));
  }
  seconds = *h * 3600 + *mi * 60 + sec;
  return true;
}

std::optional<Civil> ParseCivil(std::string_view s) {
  auto y = FixedDigits(s, 0, 4);
  auto mo = FixedDigits(s, 5, 2);
  auto d = FixedDigits(s, 8, 2);
  if (!y || !mo || !d || s[4] != '-' || s[7] != '-') return std::nullopt;
  Civil c;
  c.days = DaysFromCivil(*y, *mo, *d);
  size_t pos = 10;
  if (pos < s.size() && (s[pos] == ' ' || s[pos] == 'T')) {
    ++pos;
    if (!ParseClock(s, pos, c.seconds, c.nanos)) return std::nullopt;
  }
  while (pos < s.size() && s[pos] == ' ') ++pos;
  if (pos < s.size()) {
    if (s[pos] == 'Z') {
      c.offset_min = 0;
    } else if (s[pos] == '+' || s[pos] == '-') {
      auto oh = FixedDigits(s, pos + 1, 2);
      if (!oh) return std::nullopt;
      int64_t om = 0;
      if (pos + 3 < s.size()) {
        size_t mpos = s[pos + 3] == ':' ? pos + 4 : pos + 3;
        auto m = FixedDigits(s, mpos, 2);
        if (!m) return std::nullopt;
        om = *m;
      }
      c.offset_min = (s[pos] == '-' ? -1 : 1) * (*oh * 60 + om);
    } else {
      return std::nullopt;
    }
  }
  return c;
}

std::string EpochText(__int128 total_nanos, bool as_nanos) {
  bool neg = total_nanos < 0;
  unsigned __int128 a = neg ? static_cast<unsigned __int128>(-total_nanos)
                            : static_cast<unsigned __int128>(total_nanos);
  auto u128 = [](unsigned __int128 v) {
    std::string out;
    do {
      out.insert(out.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
      v /= 10;
    } while (v != 0);
    return out;
  };
  if (as_nanos) return (neg ? "-" : "") + u128(a);
  return fmt::format("{}{}.{:09d}", neg ? "-" : "", u128(a / 1'000'000'000),
                     static_cast<int64_t>(a % 1'000'000'000));
}

std::string StripJsonSpace(std::string_view text) {
  std::string out;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      out.push_back(c);
      if (c == '\\' && i + 1 < text.size()) {
        out.push_back(text[++i]);
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
      out.push_back(c);
    } else if (c != ' ' && c != '\n' && c != '\t' && c != '\r') {
      out.push_back(c);
    }
  }
  return out;
}

// Snowflake-style pretty printing (2 spaces, "key": value), numbers as written.
std::string PrettyJson(std::string_view text) {
  std::string in = StripJsonSpace(text);
  std::string out;
  int indent = 0;
  bool in_string = false;
  auto newline = [&] { out += "\n" + std::string(static_cast<size_t>(indent) * 2, ' '); };
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (in_string) {
      out.push_back(c);
      if (c == '\\' && i + 1 < in.size()) {
        out.push_back(in[++i]);
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        out.push_back(c);
        break;
      case '{':
      case '[':
        out.push_back(c);
        if (i + 1 < in.size() && (in[i + 1] == '}' || in[i + 1] == ']')) {
          out.push_back(in[++i]);
        } else {
          ++indent;
          newline();
        }
        break;
      case '}':
      case ']':
        --indent;
        newline();
        out.push_back(c);
        break;
      case ',':
        out.push_back(c);
        newline();
        break;
      case ':':
        out += ": ";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string RawText(const Raw& r) {
  switch (r.type) {
    case SQLITE_INTEGER:
      return std::to_string(r.i);
    case SQLITE_FLOAT:
      return fmt::format("{}", r.d);
    default:
      return r.s;
  }
}

std::string FixedText(const Raw& r, int64_t scale) {
  if (r.type == SQLITE_INTEGER) {
    return scale == 0 ? std::to_string(r.i)
                      : std::to_string(r.i) + "." + std::string(static_cast<size_t>(scale), '0');
  }
  if (r.type == SQLITE_FLOAT) return fmt::format("{:.{}f}", r.d, scale);
  std::string t = r.s;
  size_t dot = t.find('.');
  std::string whole = t.substr(0, dot);
  std::string frac = dot == std::string::npos ? "" : t.substr(dot + 1);
  frac.resize(static_cast<size_t>(scale), '0');
  return scale == 0 ? whole : whole + "." + frac;
}

// Encodes one SQLite value as Snowflake's default JSON output for `t`.
json Encode(const Raw& r, const SfType& t, const FakeSnowflakeOptions& o) {
  if (r.type == SQLITE_NULL) return nullptr;
  const std::string& ty = t.type;
  if (ty == "fixed") return FixedText(r, t.scale);
  if (ty == "real") {
    if (r.type == SQLITE_FLOAT) {
      if (std::isnan(r.d)) return "NaN";
      if (std::isinf(r.d)) return r.d > 0 ? "inf" : "-inf";
    }
    return RawText(r);
  }
  if (ty == "boolean") {
    if (r.type == SQLITE_INTEGER) return r.i != 0 ? "true" : "false";
    std::string l = Lower(RawText(r));
    return l == "true" || l == "1" || l == "t" ? "true" : "false";
  }
  if (ty == "binary") {
    std::string hex = HexEncode(r.type == SQLITE_BLOB || r.type == SQLITE_TEXT ? r.s : RawText(r));
    return Upper(hex);
  }
  if (ty == "date") {
    if (r.type == SQLITE_INTEGER) return std::to_string(r.i);
    std::optional<Civil> c = ParseCivil(r.s);
    if (!c) return r.s;
    return std::to_string(c->days);
  }
  if (ty == "time") {
    size_t pos = 0;
    int64_t secs = 0, nanos = 0;
    if (r.type != SQLITE_TEXT || !ParseClock(r.s, pos, secs, nanos)) return RawText(r);
    return EpochText(static_cast<__int128>(secs) * 1'000'000'000 + nanos, false);
  }
  if (ty.starts_with("timestamp")) {
    __int128 wall = 0;
    std::optional<int64_t> offset;
    if (r.type == SQLITE_INTEGER) {
      wall = static_cast<__int128>(r.i) * 1'000'000'000;
    } else {
      std::optional<Civil> c = ParseCivil(r.s);
      if (!c) return r.s;
      wall = (static_cast<__int128>(c->days) * 86400 + c->seconds) * 1'000'000'000 + c->nanos;
      offset = c->offset_min;
    }
    if (ty == "timestamp_ntz") return EpochText(wall, o.timestamps_as_nanoseconds);
    int64_t off = offset.value_or(0);  // the session time zone is UTC
    __int128 instant = wall - static_cast<__int128>(off) * 60 * 1'000'000'000;
    std::string text = EpochText(instant, o.timestamps_as_nanoseconds);
    if (ty == "timestamp_tz") text += " " + std::to_string(off + 1440);
    return text;
  }
  if (ty == "variant" || ty == "object" || ty == "array") {
    std::string text = RawText(r);
    if (r.type == SQLITE_TEXT && json::accept(text)) {
      return o.pretty_print_json ? PrettyJson(text) : StripJsonSpace(text);
    }
    if (r.type == SQLITE_TEXT) return Dump(json(text));  // a VARIANT string: "\"abc\""
    return text;
  }
  return RawText(r);
}

SfType InferType(const std::vector<std::vector<Raw>>& rows, size_t col) {
  for (const auto& row : rows) {
    switch (row[col].type) {
      case SQLITE_INTEGER:
        return {"fixed", 38, 0, 0};
      case SQLITE_FLOAT:
        return {"real", 0, 0, 0};
      case SQLITE_BLOB:
        return {"binary", 0, 0, 8388608};
      case SQLITE_TEXT:
        return {"text", 0, 0, 16777216};
      default:
        break;
    }
  }
  return {"text", 0, 0, 16777216};
}

const std::set<std::string>& KnownParameters() {
  static const std::set<std::string> k = {"timezone",
                                          "query_tag",
                                          "binary_output_format",
                                          "date_output_format",
                                          "time_output_format",
                                          "timestamp_output_format",
                                          "timestamp_ltz_output_format",
                                          "timestamp_ntz_output_format",
                                          "timestamp_tz_output_format",
                                          "multi_statement_count",
                                          "rows_per_resultset",
                                          "client_result_chunk_size",
                                          "use_cached_result"};
  return k;
}

// --- The Snowflake SQL subset beyond SQLite's own ---------------------------------

constexpr auto kIcase = std::regex::ECMAScript | std::regex::icase;

// Numbers the `?` placeholders outside quotes ?1, ?2, ... (SQLite binds
// numbered parameters by number, also across the statements a MERGE becomes).
std::string NumberPlaceholders(std::string_view sql) {
  std::string out;
  int n = 0;
  char quote = 0;
  for (char c : sql) {
    if (quote != 0) {
      if (c == quote) quote = 0;
      out.push_back(c);
    } else if (c == '\'' || c == '"') {
      quote = c;
      out.push_back(c);
    } else if (c == '?') {
      out += fmt::format("?{}", ++n);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Rewrites the Snowflake constructs SQLite spells otherwise.
std::string TranslateSql(std::string sql) {
  static const std::regex flatten(
      R"(TABLE\s*\(\s*FLATTEN\s*\(\s*INPUT\s*=>\s*PARSE_JSON\s*\(\s*(\?\d+)\s*\)\s*\)\s*\))",
      kIcase);
  static const std::regex collate(R"(COLLATE\s+'utf8')", kIcase);
  sql = std::regex_replace(sql, flatten, "json_each($1)");
  return std::regex_replace(sql, collate, "COLLATE BINARY");
}

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

// TO_VARCHAR / TO_JSON: the value's text (binary as uppercase hex).
void ToVarcharFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  switch (sqlite3_value_type(argv[0])) {
    case SQLITE_NULL:
      return sqlite3_result_null(ctx);
    case SQLITE_BLOB: {
      std::string hex =
          Upper(HexEncode(std::string_view(static_cast<const char*>(sqlite3_value_blob(argv[0])),
                                           static_cast<size_t>(sqlite3_value_bytes(argv[0])))));
      return sqlite3_result_text(ctx, hex.c_str(), static_cast<int>(hex.size()), SQLITE_TRANSIENT);
    }
    default: {
      const unsigned char* text = sqlite3_value_text(argv[0]);
      return sqlite3_result_text(ctx, reinterpret_cast<const char*>(text),
                                 sqlite3_value_bytes(argv[0]), SQLITE_TRANSIENT);
    }
  }
}

// GET(<JSON array text>, index): the item, NULL when missing or null.
void GetFunction(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return sqlite3_result_null(ctx);
  json array =
      json::parse(reinterpret_cast<const char*>(sqlite3_value_text(argv[0])), nullptr, false);
  const int64_t index = sqlite3_value_int64(argv[1]);
  if (!array.is_array() || index < 0 || static_cast<size_t>(index) >= array.size()) {
    return sqlite3_result_null(ctx);
  }
  const json& item = array[static_cast<size_t>(index)];
  if (item.is_null()) return sqlite3_result_null(ctx);
  if (item.is_number_integer()) return sqlite3_result_int64(ctx, item.get<int64_t>());
  if (item.is_number()) return sqlite3_result_double(ctx, item.get<double>());
  std::string text = item.is_string() ? item.get<std::string>() : Dump(item);
  sqlite3_result_text(ctx, text.c_str(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

// Binds the statement's numbered parameters ("?N") from Snowflake bindings
// ({"N": {"type", "value"}}); false (with `missing`) when one is not given.
bool BindParameters(sqlite3_stmt* stmt, const json& bindings, std::string& missing) {
  const int count = sqlite3_bind_parameter_count(stmt);
  for (int i = 1; i <= count; ++i) {
    const char* name = sqlite3_bind_parameter_name(stmt, i);
    if (name == nullptr) continue;  // ?N numbers that this statement skips
    std::string key = name[0] == '?' ? std::string(name + 1) : "";
    auto it = bindings.is_object() ? bindings.find(key) : bindings.end();
    if (key.empty() || it == bindings.end()) {
      missing = key.empty() ? std::to_string(i) : key;
      return false;
    }
    const json& value = (*it)["value"];
    const std::string type = Upper(it->value("type", "TEXT"));
    if (value.is_null()) {
      sqlite3_bind_null(stmt, i);
    } else if (type == "FIXED" && value.is_string()) {
      int64_t v = 0;
      const std::string& text = value.get_ref<const std::string&>();
      auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec == std::errc() && p == text.data() + text.size()) {
        sqlite3_bind_int64(stmt, i, v);
      } else {
        sqlite3_bind_text(stmt, i, text.c_str(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
      }
    } else {
      std::string text = value.is_string() ? value.get<std::string>() : Dump(value);
      sqlite3_bind_text(stmt, i, text.c_str(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    }
  }
  return true;
}

}  // namespace

// SQLite callbacks with access to the server's private state.
struct FakeSnowflakeSqlFunctions {
  template <int kWhich>
  static void CurrentValue(sqlite3_context* ctx, int, sqlite3_value**) {
    auto* self = static_cast<FakeSnowflakeServer*>(sqlite3_user_data(ctx));
    const FakeSnowflakeServer::Session* s = self->current_session_;
    std::optional<std::string> v;
    if (s != nullptr) {
      switch (kWhich) {
        case 0:
          v = s->user;
          break;
        case 1:
          v = s->role;
          break;
        case 2:
          v = s->warehouse;
          break;
        case 3:
          v = s->database;
          break;
        default:
          v = s->schema;
          break;
      }
    }
    if (!v) {
      sqlite3_result_null(ctx);
    } else {
      sqlite3_result_text(ctx, v->c_str(), static_cast<int>(v->size()), SQLITE_TRANSIENT);
    }
  }

  static int Authorizer(void* user, int action, const char* a1, const char*, const char*,
                        const char*) {
    auto* self = static_cast<FakeSnowflakeServer*>(user);
    if (action == SQLITE_READ && a1 != nullptr && !std::string_view(a1).starts_with("sqlite_")) {
      self->tables_read_.insert(Lower(a1));
    }
    return SQLITE_OK;
  }

  static void Register(FakeSnowflakeServer* self, sqlite3* db) {
    sqlite3_create_function_v2(db, "CURRENT_USER", 0, SQLITE_UTF8, self, &CurrentValue<0>, nullptr,
                               nullptr, nullptr);
    sqlite3_create_function_v2(db, "CURRENT_ROLE", 0, SQLITE_UTF8, self, &CurrentValue<1>, nullptr,
                               nullptr, nullptr);
    sqlite3_create_function_v2(db, "CURRENT_WAREHOUSE", 0, SQLITE_UTF8, self, &CurrentValue<2>,
                               nullptr, nullptr, nullptr);
    sqlite3_create_function_v2(db, "CURRENT_DATABASE", 0, SQLITE_UTF8, self, &CurrentValue<3>,
                               nullptr, nullptr, nullptr);
    sqlite3_create_function_v2(db, "CURRENT_SCHEMA", 0, SQLITE_UTF8, self, &CurrentValue<4>,
                               nullptr, nullptr, nullptr);
    const int pure = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
    sqlite3_create_function_v2(db, "MD5", 1, pure, nullptr, &Md5Function, nullptr, nullptr,
                               nullptr);
    sqlite3_create_function_v2(db, "TO_VARCHAR", 1, pure, nullptr, &ToVarcharFunction, nullptr,
                               nullptr, nullptr);
    sqlite3_create_function_v2(db, "TO_JSON", 1, pure, nullptr, &ToVarcharFunction, nullptr,
                               nullptr, nullptr);
    sqlite3_create_function_v2(db, "GET", 2, pure, nullptr, &GetFunction, nullptr, nullptr,
                               nullptr);
  }
};

FakeSnowflakeReply FakeSnowflakeReply::Error(int status, std::string match) {
  FakeSnowflakeReply r;
  r.status = status;
  r.match = std::move(match);
  return r;
}

FakeSnowflakeReply FakeSnowflakeReply::ApplyThenReset(std::string match) {
  FakeSnowflakeReply r;
  r.match = std::move(match);
  r.apply_first = true;
  r.reset_connection = true;
  return r;
}

FakeSnowflakeServer::FakeSnowflakeServer(FakeSnowflakeOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {
  auto db = sqlite::Database::Open(":memory:", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (db.ok()) {
    db_ = *std::move(db);
    FakeSnowflakeSqlFunctions::Register(this, db_->raw());
  }
}

FakeSnowflakeServer::~FakeSnowflakeServer() { Stop(); }

absl::Status FakeSnowflakeServer::Start() {
  if (!db_) return absl::InternalError("the fake's SQLite database could not be opened");
  return server_.Start();
}

void FakeSnowflakeServer::Stop() { server_.Stop(); }

std::string FakeSnowflakeServer::BaseUrl() const {
  std::string url = server_.Url("/");
  url.pop_back();
  return url;
}

Clock& FakeSnowflakeServer::clock() const {
  return options_.clock != nullptr ? *options_.clock : SystemClock();
}

void FakeSnowflakeServer::AddUser(FakeSnowflakeUser user) {
  User u;
  for (const std::string& pem : user.public_keys_pem) {
    absl::StatusOr<std::unique_ptr<Rs256Key>> key = Rs256Key::FromPublicKeyPem(pem);
    if (!key.ok()) continue;
    std::string fp = SnowflakePublicKeyFingerprint(**key);
    u.keys.emplace_back(fp, *std::move(key));
  }
  u.spec = std::move(user);
  std::lock_guard<std::mutex> lock(mu_);
  std::string name = u.spec.name;
  users_[name] = std::move(u);
}

void FakeSnowflakeServer::AddToken(const std::string& token, const std::string& user,
                                   const std::string& type,
                                   std::optional<Clock::TimePoint> expires) {
  std::lock_guard<std::mutex> lock(mu_);
  tokens_[token] = Token{user, type, expires};
}

absl::Status FakeSnowflakeServer::CreateTable(
    const std::string& table, const std::vector<std::pair<std::string, std::string>>& columns) {
  std::string sql = fmt::format("CREATE TABLE \"{}\" (", table);
  std::map<std::string, std::string> types;
  for (size_t i = 0; i < columns.size(); ++i) {
    if (!ParseTypeName(columns[i].second)) {
      return absl::InvalidArgumentError(
          fmt::format("unknown Snowflake type \"{}\"", columns[i].second));
    }
    // Untyped SQLite columns keep values exactly as inserted.
    sql += fmt::format("{}\"{}\"", i ? ", " : "", columns[i].first);
    types[Lower(columns[i].first)] = columns[i].second;
  }
  sql += ")";
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = db_->Exec(sql); !s.ok()) return s;
  column_types_[Lower(table)] = std::move(types);
  return absl::OkStatus();
}

absl::Status FakeSnowflakeServer::Exec(const std::string& sql) {
  std::lock_guard<std::mutex> lock(mu_);
  return db_->Exec(sql);
}

void FakeSnowflakeServer::set_rows_per_partition(int64_t rows) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.rows_per_partition = rows;
}

void FakeSnowflakeServer::set_still_running_polls(int polls) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.still_running_polls = polls;
}

void FakeSnowflakeServer::EnqueueReply(FakeSnowflakeReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

void FakeSnowflakeServer::RejectNextAuth(int count) {
  std::lock_guard<std::mutex> lock(mu_);
  reject_auth_ = count;
}

std::vector<SnowflakeRequestLog> FakeSnowflakeServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeSnowflakeServer::CountRequests(const std::string& match, int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t n = 0;
  for (const SnowflakeRequestLog& r : requests_) {
    if ((r.method + " " + r.target).find(match) != std::string::npos &&
        (status == 0 || r.status == status)) {
      ++n;
    }
  }
  return n;
}

int64_t FakeSnowflakeServer::executions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return executions_;
}

std::vector<SnowflakeCancellation> FakeSnowflakeServer::cancellations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancellations_;
}

std::string FakeSnowflakeServer::LastAuthFailure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_auth_failure_;
}

json FakeSnowflakeServer::LastSubmitBody() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_submit_body_;
}

absl::StatusOr<std::vector<std::vector<json>>> FakeSnowflakeServer::Select(
    const std::string& sql) const {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<sqlite::Statement> stmt = db_->Prepare(sql);
  if (!stmt.ok()) return stmt.status();
  std::vector<std::vector<json>> rows;
  const int n = sqlite3_column_count(stmt->raw());
  while (true) {
    absl::StatusOr<bool> more = stmt->Step();
    if (!more.ok()) return more.status();
    if (!*more) break;
    std::vector<json> row;
    for (int i = 0; i < n; ++i) {
      switch (sqlite3_column_type(stmt->raw(), i)) {
        case SQLITE_INTEGER:
          row.emplace_back(stmt->ColumnInt(i));
          break;
        case SQLITE_FLOAT:
          row.emplace_back(stmt->ColumnDouble(i));
          break;
        case SQLITE_NULL:
          row.emplace_back(nullptr);
          break;
        default:
          row.emplace_back(std::string(stmt->ColumnText(i)));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string FakeSnowflakeServer::StatusUrl(const Statement& st) {
  return fmt::format("{}/{}?requestId={}", kStatements, st.handle, st.request_id);
}

TestResponse FakeSnowflakeServer::Handle(const TestRequest& req) {
  std::lock_guard<std::mutex> lock(mu_);
  SnowflakeRequestLog log;
  log.method = req.method;
  log.target = req.target;
  log.body = req.body;
  log.token_type = req.Header("x-snowflake-authorization-token-type").value_or("");
  log.accept_encoding = req.Header("accept-encoding").value_or("");

  auto finish = [&](Reply r) {
    TestResponse resp;
    resp.status = r.status;
    resp.headers = std::move(r.headers);
    if (!r.raw_body.empty()) {
      resp.body = std::move(r.raw_body);
    } else {
      resp.body = Dump(r.body);
      resp.headers.emplace_back("Content-Type", "application/json");
    }
    log.status = resp.status;
    requests_.push_back(log);
    return resp;
  };
  auto error = [&](int status, json body) {
    Reply r;
    r.status = status;
    r.body = std::move(body);
    return finish(std::move(r));
  };

  // 1. Route.
  std::string_view target = req.target;
  std::string_view path = target.substr(0, target.find('?'));
  std::string_view query =
      target.find('?') == std::string_view::npos ? "" : target.substr(target.find('?') + 1);
  enum class Op { kSubmit, kStatus, kCancel } op;
  std::string handle;
  if (path == kStatements) {
    op = Op::kSubmit;
  } else if (path.starts_with(std::string(kStatements) + "/")) {
    std::string rest = PercentDecode(path.substr(kStatements.size() + 1), false);
    if (rest.ends_with("/cancel")) {
      op = Op::kCancel;
      handle = rest.substr(0, rest.size() - 7);
    } else {
      op = Op::kStatus;
      handle = rest;
    }
    if (handle.empty() || handle.find('/') != std::string::npos) {
      return error(404, DefaultErrorBody(404));
    }
  } else {
    return error(404, DefaultErrorBody(404));
  }
  const std::string want_method = op == Op::kStatus ? "GET" : "POST";
  if (req.method != want_method) return error(405, Message("405", "Method Not Allowed"));

  // 2. Headers.
  if (req.method == "POST") {
    std::string ct = Lower(req.Header("content-type").value_or(""));
    if (!ct.starts_with("application/json")) {
      return error(415, Message("415", "Unsupported Media Type"));
    }
  }
  std::string accept = Lower(req.Header("accept").value_or(""));
  if (accept.find("application/json") == std::string::npos &&
      accept.find("*/*") == std::string::npos) {
    return error(406, Message("406", "Not Acceptable: Accept must allow application/json"));
  }
  if (options_.require_user_agent && req.Header("user-agent").value_or("").empty()) {
    return error(400, Message("391903", "User-Agent header is missing."));
  }

  // 3. Auth.
  std::string failure, code;
  std::optional<std::string> user = Authenticate(req, failure, code);
  if (!user) {
    last_auth_failure_ = failure;
    return error(401, code == "390144" ? Message("390144", "JWT token is invalid.")
                                       : Message("390303", "Invalid OAuth access token. "));
  }
  log.user = *user;

  // 4. Script.
  std::optional<FakeSnowflakeReply> scripted;
  const std::string subject = req.method + " " + req.target;
  for (auto it = script_.begin(); it != script_.end(); ++it) {
    if (subject.find(it->match) != std::string::npos) {
      scripted = *it;
      script_.erase(it);
      break;
    }
  }
  auto scripted_response = [&]() {
    TestResponse resp;
    resp.status = scripted->status;
    resp.headers = scripted->headers;
    resp.delay = scripted->delay;
    resp.reset_connection = scripted->reset_connection;
    resp.body = scripted->body.empty() ? Dump(DefaultErrorBody(scripted->status)) : scripted->body;
    if (!resp.reset_connection) resp.headers.emplace_back("Content-Type", "application/json");
    log.status = resp.reset_connection ? 0 : resp.status;
    requests_.push_back(log);
    return resp;
  };
  if (scripted && !scripted->apply_first) return scripted_response();

  // 5. Endpoint.
  Reply reply;
  if (op == Op::kSubmit) {
    reply = Submit(req, *user);
  } else if (op == Op::kCancel) {
    reply = Cancel(handle);
  } else {
    std::optional<int64_t> partition;
    for (const auto& [k, v] : ParseQueryPairs(query)) {
      if (k == "partition") {
        int64_t n = -1;
        auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
        if (ec != std::errc() || p != v.data() + v.size() || n < 0) {
          return error(400, Message("390142", "Invalid partition number."));
        }
        partition = n;
      } else if (k != "requestId") {
        return error(400, Message("390142", fmt::format("Unsupported parameter {}.", k)));
      }
    }
    reply = Status(handle, partition);
  }
  if (scripted) return scripted_response();
  return finish(std::move(reply));
}

std::optional<std::string> FakeSnowflakeServer::Authenticate(const TestRequest& req,
                                                             std::string& failure,
                                                             std::string& code) {
  std::string type = req.Header("x-snowflake-authorization-token-type").value_or("OAUTH");
  code = type == "KEYPAIR_JWT" ? "390144" : "390303";
  std::string auth = req.Header("authorization").value_or("");
  if (!auth.starts_with("Bearer ") || auth.size() <= 7) {
    failure = "no Authorization: Bearer header";
    return std::nullopt;
  }
  std::string token = auth.substr(7);
  if (reject_auth_ > 0) {
    --reject_auth_;
    failure = "rejected by RejectNextAuth";
    return std::nullopt;
  }
  const int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(clock().Now().time_since_epoch()).count();
  if (type == "KEYPAIR_JWT") {
    absl::StatusOr<DecodedJwt> decoded = DecodeJwt(token);
    if (!decoded.ok()) {
      failure = "not a JWT: " + std::string(decoded.status().message());
      return std::nullopt;
    }
    const json& claims = decoded->claims;
    std::string iss = claims.value("iss", "");
    std::string sub = claims.value("sub", "");
    size_t fp_at = iss.find(".SHA256:");
    if (fp_at == std::string::npos) {
      failure = fmt::format("iss \"{}\" is not <ACCOUNT>.<USER>.SHA256:<fingerprint>", iss);
      return std::nullopt;
    }
    std::string prefix = iss.substr(0, fp_at);
    std::string fp = iss.substr(fp_at + 1);
    if (sub != prefix) {
      failure = fmt::format("sub \"{}\" does not match iss prefix \"{}\"", sub, prefix);
      return std::nullopt;
    }
    size_t dot = prefix.find('.');
    if (dot == std::string::npos) {
      failure = fmt::format("sub \"{}\" is not <ACCOUNT>.<USER>", sub);
      return std::nullopt;
    }
    std::string account = prefix.substr(0, dot);
    std::string user = prefix.substr(dot + 1);
    if (account != options_.account) {
      failure =
          fmt::format("account \"{}\" is not this account (\"{}\")", account, options_.account);
      return std::nullopt;
    }
    auto u = users_.find(user);
    if (u == users_.end()) {
      failure = fmt::format("unknown user \"{}\"", user);
      return std::nullopt;
    }
    const Rs256Key* key = nullptr;
    for (const auto& [kfp, k] : u->second.keys) {
      if (kfp == fp) key = k.get();
    }
    if (key == nullptr) {
      failure = fmt::format("fingerprint {} matches no public key of user {}", fp, user);
      return std::nullopt;
    }
    if (absl::StatusOr<DecodedJwt> v = VerifyJwtRs256(token, *key); !v.ok()) {
      failure = "signature: " + std::string(v.status().message());
      return std::nullopt;
    }
    auto seconds = [](const json& v) -> std::optional<int64_t> {
      if (!v.is_number()) return std::nullopt;
      int64_t n = v.is_number_float() ? static_cast<int64_t>(v.get<double>()) : v.get<int64_t>();
      return n > 100'000'000'000LL ? n / 1000 : n;  // milliseconds are accepted too
    };
    std::optional<int64_t> iat = seconds(claims.value("iat", json()));
    std::optional<int64_t> exp = seconds(claims.value("exp", json()));
    if (!iat || !exp) {
      failure = "iat or exp missing";
      return std::nullopt;
    }
    if (*iat > now + options_.clock_skew.count()) {
      failure = "iat is in the future";
      return std::nullopt;
    }
    if (now >= std::min(*exp, *iat + 3600)) {
      failure = "the JWT has expired";
      return std::nullopt;
    }
    return user;
  }
  if (type != "PROGRAMMATIC_ACCESS_TOKEN" && type != "OAUTH") {
    failure = fmt::format("unknown token type \"{}\"", type);
    return std::nullopt;
  }
  auto t = tokens_.find(token);
  if (t == tokens_.end() || t->second.type != type) {
    failure = fmt::format("unknown {} token", type);
    return std::nullopt;
  }
  if (t->second.expires && clock().Now() >= *t->second.expires) {
    failure = "the token has expired";
    return std::nullopt;
  }
  return t->second.user;
}

FakeSnowflakeServer::Reply FakeSnowflakeServer::QueryStatusReply(const Statement& st,
                                                                 int status) const {
  Reply r;
  r.status = status;
  r.body = {{"code", "333334"},
            {"message",
             "Asynchronous execution in progress. Use provided query id to perform query "
             "monitoring and management."},
            {"statementHandle", st.handle},
            {"statementStatusUrl", StatusUrl(st)}};
  return r;
}

FakeSnowflakeServer::Reply FakeSnowflakeServer::ResultSetReply(const Statement& st) const {
  const int64_t per = std::max<int64_t>(1, options_.rows_per_partition);
  const int64_t total = static_cast<int64_t>(st.rows.size());
  const int64_t partitions = std::max<int64_t>(1, (total + per - 1) / per);
  json info = json::array();
  json data0 = json::array();
  for (int64_t p = 0; p < partitions; ++p) {
    json data = json::array();
    for (int64_t i = p * per; i < std::min(total, (p + 1) * per); ++i) data.push_back(st.rows[i]);
    info.push_back({{"rowCount", data.size()}, {"uncompressedSize", Dump(data).size()}});
    if (p == 0) data0 = std::move(data);
  }
  Reply r;
  r.status = 200;
  r.body = {{"resultSetMetaData",
             {{"numRows", total},
              {"format", "jsonv2"},
              {"rowType", st.row_type},
              {"partitionInfo", info}}},
            {"data", std::move(data0)},
            {"code", "090001"},
            {"sqlState", "00000"},
            {"message", "Statement executed successfully."},
            {"statementHandle", st.handle},
            {"statementStatusUrl", StatusUrl(st)},
            {"createdOn", st.created_on_ms}};
  std::string base =
      fmt::format("{}/{}?requestId={}&partition=", kStatements, st.handle, st.request_id);
  std::string link = fmt::format("<{}0>; rel=\"first\"", base);
  if (partitions > 1) link += fmt::format(", <{}1>; rel=\"next\"", base);
  link += fmt::format(", <{}{}>; rel=\"last\"", base, partitions - 1);
  r.headers.emplace_back("Link", link);
  return r;
}

FakeSnowflakeServer::Reply FakeSnowflakeServer::Submit(const TestRequest& req,
                                                       const std::string& user) {
  auto fail = [](int status, json body) {
    Reply r;
    r.status = status;
    r.body = std::move(body);
    return r;
  };
  std::string_view target = req.target;
  std::string_view query =
      target.find('?') == std::string_view::npos ? "" : target.substr(target.find('?') + 1);
  std::string request_id;
  bool retry = false;
  bool async = false;
  for (const auto& [k, v] : ParseQueryPairs(query)) {
    if (k == "requestId") {
      if (!IsUuid(v)) return fail(400, Message("390142", "requestId must be a UUID."));
      request_id = v;
    } else if (k == "retry") {
      if (v != "true") return fail(400, Message("390142", "retry must be true when present."));
      retry = true;
    } else if (k == "async") {
      if (v != "true" && v != "false")
        return fail(400, Message("390142", "async must be boolean."));
      async = v == "true";
    } else if (k != "nullable") {
      return fail(400, Message("390142", fmt::format("Unsupported parameter {}.", k)));
    }
  }
  json body = json::parse(req.body, nullptr, false);
  if (!body.is_object() || !body.contains("statement") || !body["statement"].is_string() ||
      body["statement"].get<std::string>().empty()) {
    return fail(400, DefaultErrorBody(400));
  }
  last_submit_body_ = body;
  if (body.contains("timeout") &&
      (!body["timeout"].is_number_integer() || body["timeout"].get<int64_t>() < 0 ||
       body["timeout"].get<int64_t>() > 604800)) {
    return fail(400, DefaultErrorBody(400));
  }
  for (const char* key : {"warehouse", "database", "schema", "role"}) {
    if (body.contains(key) && !body[key].is_string()) return fail(400, DefaultErrorBody(400));
  }
  if (body.contains("parameters")) {
    if (!body["parameters"].is_object()) return fail(400, DefaultErrorBody(400));
    for (const auto& [k, v] : body["parameters"].items()) {
      if (!KnownParameters().contains(Lower(k))) {
        return fail(400, Message("390142", fmt::format("Unsupported session parameter {}.", k)));
      }
    }
  }

  if (retry && !request_id.empty()) {
    if (auto known = request_ids_.find(request_id); known != request_ids_.end()) {
      const Statement& st = *statements_.at(known->second);
      if (st.state == Statement::State::kCancelled) {
        json m = Message("000604", "SQL execution canceled", "57014");
        m["statementHandle"] = st.handle;
        return fail(422, m);
      }
      if (st.polls_left > 0) return QueryStatusReply(st, 202);
      return ResultSetReply(st);
    }
  }

  const User& u = users_.at(user);
  Session session;
  session.user = user;
  session.role = body.value("role", u.spec.default_role);
  if (std::find(u.spec.roles.begin(), u.spec.roles.end(), session.role) == u.spec.roles.end()) {
    return fail(422, Message("390189",
                             fmt::format("Role '{}' specified in the connect string is not "
                                         "granted to this user. Contact your local system "
                                         "administrator, or attempt to login with another role, "
                                         "e.g. PUBLIC.",
                                         session.role),
                             "08004"));
  }
  auto effective = [](const std::string& name,
                      const std::set<std::string>& known) -> std::optional<std::string> {
    if (name.empty() || (!known.empty() && !known.contains(name))) return std::nullopt;
    return name;
  };
  session.warehouse =
      effective(body.value("warehouse", u.spec.default_warehouse), options_.warehouses);
  session.database = effective(body.value("database", u.spec.default_database), options_.databases);
  session.schema = session.database
                       ? effective(body.value("schema", u.spec.default_schema), options_.schemas)
                       : std::nullopt;

  ++executions_;
  json error;
  if (body.contains("bindings") && !body["bindings"].is_object()) {
    return fail(400, DefaultErrorBody(400));
  }
  std::unique_ptr<Statement> st = Run(body["statement"].get<std::string>(),
                                      body.value("bindings", json::object()), session, error);
  const std::string handle =
      fmt::format("01b5c2d3-0000-{:04x}-0000-{:012x}", executions_ % 65536, next_handle_++);
  if (!st) {
    error["statementHandle"] = handle;
    error["createdOn"] =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock().Now().time_since_epoch())
            .count();
    return fail(422, error);
  }
  st->handle = handle;
  st->request_id = request_id.empty() ? "00000000-0000-4000-8000-000000000000" : request_id;
  st->polls_left = options_.still_running_polls;
  st->created_on_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(clock().Now().time_since_epoch())
          .count();
  if (!request_id.empty()) request_ids_[request_id] = handle;
  const Statement& ref = *st;
  statements_[handle] = std::move(st);
  if (async || ref.polls_left > 0) return QueryStatusReply(ref, 202);
  statements_[handle]->state = Statement::State::kSucceeded;
  return ResultSetReply(ref);
}

FakeSnowflakeServer::Reply FakeSnowflakeServer::Status(const std::string& handle,
                                                       std::optional<int64_t> partition) {
  Reply r;
  auto it = statements_.find(handle);
  if (it == statements_.end()) {
    r.status = 422;
    r.body = Message("000709", fmt::format("Statement {} not found", handle), "02000");
    return r;
  }
  Statement& st = *it->second;
  if (st.state == Statement::State::kCancelled) {
    r.status = 422;
    r.body = Message("000604", "SQL execution canceled", "57014");
    r.body["statementHandle"] = st.handle;
    return r;
  }
  if (st.polls_left > 0) {
    --st.polls_left;
    return QueryStatusReply(st, options_.still_running_status);
  }
  st.state = Statement::State::kSucceeded;
  if (!partition || *partition == 0) return ResultSetReply(st);
  const int64_t per = std::max<int64_t>(1, options_.rows_per_partition);
  const int64_t total = static_cast<int64_t>(st.rows.size());
  const int64_t partitions = std::max<int64_t>(1, (total + per - 1) / per);
  if (*partition >= partitions) {
    r.status = 422;
    r.body = Message("000709", fmt::format("Partition {} is out of range (the result has {})",
                                           *partition, partitions));
    return r;
  }
  json data = json::array();
  for (int64_t i = *partition * per; i < std::min(total, (*partition + 1) * per); ++i) {
    data.push_back(st.rows[i]);
  }
  std::string text = Dump(json{{"data", std::move(data)}});
  r.status = 200;
  r.headers.emplace_back("Content-Type", "application/json");
  if (options_.gzip_partitions) {
    r.raw_body = Gzip(text);
    r.headers.emplace_back("Content-Encoding", "gzip");
  } else {
    r.raw_body = std::move(text);
  }
  return r;
}

FakeSnowflakeServer::Reply FakeSnowflakeServer::Cancel(const std::string& handle) {
  Reply r;
  auto it = statements_.find(handle);
  if (it == statements_.end()) {
    r.status = 422;
    r.body = Message("000709", fmt::format("Statement {} not found", handle), "02000");
    return r;
  }
  Statement& st = *it->second;
  const bool running = st.state == Statement::State::kRunning && st.polls_left > 0;
  cancellations_.push_back({handle, running});
  if (running) st.state = Statement::State::kCancelled;
  r.status = 200;
  r.body = Message("000604", "SQL execution canceled", "57014");
  r.body["statementHandle"] = handle;
  r.body["statementStatusUrl"] = StatusUrl(st);
  return r;
}

std::unique_ptr<FakeSnowflakeServer::Statement> FakeSnowflakeServer::StatusStatement(
    const std::vector<std::pair<std::string, json>>& cells) const {
  auto st = std::make_unique<Statement>();
  st->row_type = json::array();
  std::vector<json> row;
  for (const auto& [name, cell] : cells) {
    SfType t = cell.is_string() ? SfType{"text", 0, 0, 16777216} : SfType{"fixed", 38, 0, 0};
    st->row_type.push_back(RowTypeEntry(name, t, "", "", "", options_.uppercase_type_names));
    row.push_back(cell.is_string() ? cell : json(Dump(cell)));
  }
  st->rows.push_back(std::move(row));
  return st;
}

std::unique_ptr<FakeSnowflakeServer::Statement> FakeSnowflakeServer::Run(
    const std::string& snowflake_sql, const json& bindings, const Session& session, json& error) {
  for (const auto& [contains, object] : denials_) {
    if (Upper(snowflake_sql).find(Upper(contains)) != std::string::npos) {
      error = Message("003001",
                      fmt::format("SQL access control error:\nInsufficient privileges to operate "
                                  "on {}.",
                                  object),
                      "42501");
      return nullptr;
    }
  }
  const std::string sql = TranslateSql(NumberPlaceholders(snowflake_sql));
  static const std::regex create_schema(
      R"(^\s*CREATE\s+SCHEMA\s+(IF\s+NOT\s+EXISTS\s+)?([A-Za-z_][A-Za-z0-9_$]*)\s*;?\s*$)", kIcase);
  static const std::regex merge(
      R"(^\s*MERGE\s+INTO\s+(\S+)\s+AS\s+(\w+)\s+USING\s+\(([\s\S]*)\)\s+AS\s+(\w+)\s+ON\s+([\s\S]*?)\s+(WHEN\s[\s\S]*)$)",
      kIcase);
  static const std::regex ctas(
      R"(^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z0-9_$."]+)\s+AS\s+([\s\S]*)$)",
      kIcase);
  std::smatch match;
  if (std::regex_match(sql, match, create_schema)) {
    return CreateSchema(match[2].str(), match[1].matched, error);
  }
  if (std::regex_match(sql, match, merge)) {
    return Merge(match, bindings, session, error);
  }
  std::optional<std::string> created;
  if (std::regex_match(sql, match, ctas)) created = match[1].str();
  sqlite3* db = db_->raw();
  current_session_ = &session;
  tables_read_.clear();
  sqlite3_set_authorizer(db, &FakeSnowflakeSqlFunctions::Authorizer, this);
  struct Cleanup {
    FakeSnowflakeServer* self;
    sqlite3* db;
    sqlite3_stmt* stmt = nullptr;
    ~Cleanup() {
      if (stmt != nullptr) sqlite3_finalize(stmt);
      sqlite3_set_authorizer(db, nullptr, nullptr);
      self->current_session_ = nullptr;
    }
  } cleanup{this, db};

  const char* tail = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &cleanup.stmt, &tail);
  if (rc != SQLITE_OK || cleanup.stmt == nullptr) {
    error = Message("001003",
                    fmt::format("SQL compilation error:\n{}",
                                rc != SQLITE_OK ? sqlite3_errmsg(db) : "Empty SQL statement."),
                    "42000");
    return nullptr;
  }
  if (tail != nullptr) {
    std::string_view rest(tail);
    if (rest.find_first_not_of(" \t\r\n;") != std::string_view::npos) {
      error =
          Message("000008", "Actual statement count 2 did not match the desired statement count 1.",
                  "0A000");
      return nullptr;
    }
  }
  if (std::string missing; !BindParameters(cleanup.stmt, bindings, missing)) {
    error = Message("002049",
                    fmt::format("SQL compilation error: error line 0 at position 0\nBind variable "
                                "?{} not set.",
                                missing),
                    "42601");
    return nullptr;
  }
  // CREATE TABLE ... AS SELECT: the new table's columns keep the Snowflake
  // types of the columns they come from.
  std::map<std::string, std::string> created_types;
  if (created) {
    sqlite3_stmt* probe = nullptr;
    const std::string select = match[2].str();
    if (sqlite3_prepare_v2(db, select.c_str(), static_cast<int>(select.size()), &probe, nullptr) ==
            SQLITE_OK &&
        probe != nullptr) {
      for (int i = 0; i < sqlite3_column_count(probe); ++i) {
        const char* table = sqlite3_column_table_name(probe, i);
        const char* origin = sqlite3_column_origin_name(probe, i);
        std::string type;
        if (table != nullptr && origin != nullptr) {
          auto tt = column_types_.find(Lower(table));
          if (tt != column_types_.end()) {
            auto ct = tt->second.find(Lower(origin));
            if (ct != tt->second.end()) type = ct->second;
          }
        }
        const char* decl = sqlite3_column_decltype(probe, i);
        if (type.empty() && decl != nullptr && ParseTypeName(decl)) type = decl;
        if (!type.empty()) created_types[Lower(sqlite3_column_name(probe, i))] = type;
      }
    }
    if (probe != nullptr) sqlite3_finalize(probe);
  }
  if (!tables_read_.empty() && !session.warehouse) {
    error = Message("000606",
                    "No active warehouse selected in the current session.  Select an active "
                    "warehouse with the 'use warehouse' command.\n",
                    "57P03");
    return nullptr;
  }
  if (!tables_read_.empty() && !session.database) {
    error = Message("090105",
                    "Cannot perform SELECT. This session does not have a current database. Call "
                    "'USE DATABASE', or use a qualified name.",
                    "22000");
    return nullptr;
  }
  sqlite3_stmt* stmt = cleanup.stmt;
  const int n = sqlite3_column_count(stmt);
  std::vector<std::vector<Raw>> rows;
  while (true) {
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) {
      error = Message("100038", fmt::format("Execution error: {}", sqlite3_errmsg(db)), "22018");
      return nullptr;
    }
    std::vector<Raw> row(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      Raw& v = row[static_cast<size_t>(i)];
      v.type = sqlite3_column_type(stmt, i);
      if (v.type == SQLITE_INTEGER) {
        v.i = sqlite3_column_int64(stmt, i);
      } else if (v.type == SQLITE_FLOAT) {
        v.d = sqlite3_column_double(stmt, i);
      } else if (v.type == SQLITE_TEXT || v.type == SQLITE_BLOB) {
        const void* p = v.type == SQLITE_TEXT
                            ? static_cast<const void*>(sqlite3_column_text(stmt, i))
                            : sqlite3_column_blob(stmt, i);
        v.s.assign(static_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt, i)));
      }
    }
    rows.push_back(std::move(row));
  }

  if (created) {
    std::string name = *created;
    if (size_t dot = name.rfind('.'); dot != std::string::npos) name = name.substr(dot + 1);
    name.erase(std::remove(name.begin(), name.end(), '"'), name.end());
    column_types_[Lower(name)] = std::move(created_types);
    return StatusStatement(
        {{"status", fmt::format("Table {} successfully created.", Upper(name))}});
  }
  if (n == 0) return StatusStatement({{"status", "Statement executed successfully."}});
  auto st = std::make_unique<Statement>();
  st->row_type = json::array();
  std::vector<SfType> types;
  for (int i = 0; i < n; ++i) {
    std::optional<SfType> t;
    const char* table = sqlite3_column_table_name(stmt, i);
    const char* origin = sqlite3_column_origin_name(stmt, i);
    if (table != nullptr && origin != nullptr) {
      auto tt = column_types_.find(Lower(table));
      if (tt != column_types_.end()) {
        auto ct = tt->second.find(Lower(origin));
        if (ct != tt->second.end()) t = ParseTypeName(ct->second);
      }
    }
    if (!t) {
      if (const char* decl = sqlite3_column_decltype(stmt, i)) t = ParseTypeName(decl);
    }
    if (!t) t = InferType(rows, static_cast<size_t>(i));
    std::string name = sqlite3_column_name(stmt, i);
    if (sql.find("\"" + name + "\"") == std::string::npos) name = Upper(name);
    st->row_type.push_back(RowTypeEntry(name, *t, table != nullptr ? table : "",
                                        session.database.value_or(""), session.schema.value_or(""),
                                        options_.uppercase_type_names));
    types.push_back(*t);
  }
  st->rows.reserve(rows.size());
  for (const auto& row : rows) {
    std::vector<json> cells;
    cells.reserve(row.size());
    for (size_t i = 0; i < row.size(); ++i) cells.push_back(Encode(row[i], types[i], options_));
    st->rows.push_back(std::move(cells));
  }
  return st;
}

}  // namespace backflow

namespace backflow {

std::unique_ptr<FakeSnowflakeServer::Statement> FakeSnowflakeServer::CreateSchema(
    const std::string& name, bool if_not_exists, json& error) {
  sqlite3* db = db_->raw();
  bool exists = false;
  {
    sqlite3_stmt* list = nullptr;
    sqlite3_prepare_v2(db, "PRAGMA database_list", -1, &list, nullptr);
    while (list != nullptr && sqlite3_step(list) == SQLITE_ROW) {
      if (Lower(reinterpret_cast<const char*>(sqlite3_column_text(list, 1))) == Lower(name)) {
        exists = true;
      }
    }
    if (list != nullptr) sqlite3_finalize(list);
  }
  if (exists) {
    if (if_not_exists) {
      return StatusStatement(
          {{"status", fmt::format("{} already exists, statement succeeded.", Upper(name))}});
    }
    error = Message("002002",
                    fmt::format("SQL compilation error:\nObject '{}' already exists.", Upper(name)),
                    "42710");
    return nullptr;
  }
  if (absl::Status s = db_->Exec(fmt::format("ATTACH DATABASE ':memory:' AS \"{}\"", name));
      !s.ok()) {
    error = Message("001003", fmt::format("SQL compilation error:\n{}", std::string(s.message())),
                    "42000");
    return nullptr;
  }
  return StatusStatement({{"status", fmt::format("Schema {} successfully created.", Upper(name))}});
}

std::unique_ptr<FakeSnowflakeServer::Statement> FakeSnowflakeServer::Merge(const std::smatch& match,
                                                                           const json& bindings,
                                                                           const Session& session,
                                                                           json& error) {
  const std::string target = match[1].str(), target_alias = match[2].str();
  const std::string source = match[3].str(), source_alias = match[4].str();
  const std::string on = match[5].str();
  static const std::regex clause(
      R"(^(NOT\s+)?MATCHED(?:\s+AND\s+([\s\S]*?))?\s+THEN\s+(DELETE|UPDATE\s+SET\s+([\s\S]*?)|INSERT\s*\(([^)]*)\)\s*VALUES\s*\(([\s\S]*)\))\s*$)",
      kIcase);
  static const std::regex when(R"(\bWHEN\s+)", kIcase);
  std::vector<std::string> clauses;
  const std::string rest = match[6].str();
  for (std::sregex_token_iterator it(rest.begin(), rest.end(), when, -1), end; it != end; ++it) {
    if (it->str().find_first_not_of(" \t\r\n") != std::string::npos) clauses.push_back(it->str());
  }
  sqlite3* db = db_->raw();
  current_session_ = &session;
  auto run = [&](const std::string& sql, int64_t* changes) -> bool {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &stmt, nullptr) !=
        SQLITE_OK) {
      error =
          Message("001003", fmt::format("SQL compilation error:\n{}", sqlite3_errmsg(db)), "42000");
      if (stmt != nullptr) sqlite3_finalize(stmt);
      return false;
    }
    std::string missing;
    if (!BindParameters(stmt, bindings, missing)) {
      error = Message("002049", fmt::format("Bind variable ?{} not set.", missing), "42601");
      sqlite3_finalize(stmt);
      return false;
    }
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) {
      error = Message("100038", fmt::format("Execution error: {}", sqlite3_errmsg(db)), "22018");
      return false;
    }
    if (changes != nullptr) *changes += sqlite3_changes(db);
    return true;
  };
  int64_t inserted = 0, updated = 0, deleted = 0;
  bool ok = run("SAVEPOINT fake_merge", nullptr) &&
            run(fmt::format("CREATE TEMP TABLE fake_merge_source AS SELECT {0}.*, EXISTS (SELECT 1 "
                            "FROM {1} AS {2} WHERE {3}) AS fake_matched FROM ({4}) AS {0}",
                            source_alias, target, target_alias, on, source),
                nullptr);
  std::string earlier = "0";  // the conditions of earlier WHEN MATCHED clauses
  for (size_t i = 0; ok && i < clauses.size(); ++i) {
    std::smatch c;
    if (!std::regex_match(clauses[i], c, clause)) {
      error = Message("001003", "SQL compilation error:\nunsupported MERGE clause (fake)", "42000");
      ok = false;
      break;
    }
    const std::string cond = c[2].matched ? c[2].str() : "1";
    const std::string from = fmt::format("temp.fake_merge_source AS {}", source_alias);
    if (c[1].matched) {  // WHEN NOT MATCHED ... THEN INSERT
      ok = run(fmt::format("INSERT INTO {} ({}) SELECT {} FROM {} WHERE NOT {}.fake_matched AND "
                           "({})",
                           target, c[5].str(), c[6].str(), from, source_alias, cond),
               &inserted);
      continue;
    }
    const std::string where = fmt::format("{}.fake_matched AND ({}) AND ({}) AND NOT ({})",
                                          source_alias, on, cond, earlier);
    if (Upper(c[3].str()) == "DELETE") {
      ok = run(fmt::format("DELETE FROM {} AS {} WHERE EXISTS (SELECT 1 FROM {} WHERE {})", target,
                           target_alias, from, where),
               &deleted);
    } else {
      ok = run(fmt::format("UPDATE {} AS {} SET {} FROM {} WHERE {}", target, target_alias,
                           c[4].str(), from, where),
               &updated);
    }
    earlier = fmt::format("({}) OR ({})", earlier, cond);
  }
  (void)run("DROP TABLE IF EXISTS temp.fake_merge_source", nullptr);
  if (!ok) {
    json kept = error;
    (void)run("ROLLBACK TO fake_merge", nullptr);
    (void)run("RELEASE fake_merge", nullptr);
    error = kept;
    current_session_ = nullptr;
    return nullptr;
  }
  ok = run("RELEASE fake_merge", nullptr);
  current_session_ = nullptr;
  if (!ok) return nullptr;
  return StatusStatement({{"number of rows inserted", inserted},
                          {"number of rows updated", updated},
                          {"number of rows deleted", deleted}});
}

void FakeSnowflakeServer::DenyPrivilege(const std::string& statement_contains,
                                        const std::string& object) {
  std::lock_guard<std::mutex> lock(mu_);
  denials_.emplace_back(statement_contains, object);
}

void FakeSnowflakeServer::ClearDenials() {
  std::lock_guard<std::mutex> lock(mu_);
  denials_.clear();
}

}  // namespace backflow
