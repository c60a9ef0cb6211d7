#include "backflow/sources/redshift/fake_redshift_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "backflow/sources/redshift/redshift_source.h"
#include "fmt/format.h"

namespace backflow {
namespace {

constexpr int32_t kSslRequestCode = 80877103;
constexpr int32_t kGssEncRequestCode = 80877104;
constexpr int32_t kCancelRequestCode = 80877102;
constexpr int32_t kProtocol3 = 196608;
// Substituted for a refused statement: PostgreSQL fails to parse it, which
// keeps its transaction state what Redshift's would be.
constexpr char kRefusedSql[] = "backflow_fake_redshift_refused";
constexpr int kSingleNodeMaxFetch = 1000;

// Parameters both PostgreSQL and Redshift know.
const std::set<std::string>& SharedParameters() {
  static const auto* names = new std::set<std::string>{
      "datestyle", "timezone", "extra_float_digits", "search_path", "statement_timeout"};
  return *names;
}

// Redshift-only parameters (Configuration reference), rewritten for PostgreSQL.
const std::set<std::string>& RedshiftOnlyParameters() {
  static const auto* names = new std::set<std::string>{"analyze_threshold_percent",
                                                       "cast_super_null_on_error",
                                                       "datashare_break_glass_session_var",
                                                       "default_geometry_encoding",
                                                       "describe_field_name_in_uppercase",
                                                       "downcase_delimited_identifier",
                                                       "enable_case_sensitive_identifier",
                                                       "enable_case_sensitive_super_attribute",
                                                       "enable_numeric_rounding",
                                                       "enable_result_cache_for_session",
                                                       "enable_spectrum_oid",
                                                       "enable_vacuum_boost",
                                                       "error_on_nondeterministic_update",
                                                       "interval_forbid_composite_literals",
                                                       "json_parse_dedup_attributes",
                                                       "json_serialization_enable",
                                                       "json_serialization_parse_nested_strings",
                                                       "max_concurrency_scaling_clusters",
                                                       "max_cursor_result_set_size",
                                                       "mv_enable_aqmv_for_session",
                                                       "navigate_super_null_on_error",
                                                       "parse_super_null_on_error",
                                                       "query_group",
                                                       "spectrum_enable_pseudo_columns",
                                                       "spectrum_query_maxerror",
                                                       "stored_proc_log_min_messages",
                                                       "wlm_query_slot_count"};
  return *names;
}

int32_t GetInt32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return static_cast<int32_t>(ntohl(v));
}
int16_t GetInt16(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return static_cast<int16_t>(ntohs(v));
}
void PutInt32(std::string& out, int32_t v) {
  uint32_t n = htonl(static_cast<uint32_t>(v));
  out.append(reinterpret_cast<const char*>(&n), 4);
}
void PutInt16(std::string& out, int16_t v) {
  uint16_t n = htons(static_cast<uint16_t>(v));
  out.append(reinterpret_cast<const char*>(&n), 2);
}
void SetInt32(std::string& out, size_t at, int32_t v) {
  uint32_t n = htonl(static_cast<uint32_t>(v));
  std::memcpy(out.data() + at, &n, 4);
}

// A typed protocol message: type byte, then length (self-inclusive) + body.
std::string Message(char type, std::string_view body) {
  std::string out(1, type);
  PutInt32(out, static_cast<int32_t>(body.size() + 4));
  out.append(body);
  return out;
}

// Reads NUL-terminated strings and integers from a message body.
class BodyReader {
 public:
  explicit BodyReader(std::string_view body) : body_(body) {}
  std::optional<std::string_view> CString() {
    size_t end = body_.find('\0', pos_);
    if (end == std::string_view::npos) return std::nullopt;
    std::string_view s = body_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }
  std::optional<int16_t> Int16() {
    if (pos_ + 2 > body_.size()) return std::nullopt;
    int16_t v = GetInt16(body_.data() + pos_);
    pos_ += 2;
    return v;
  }
  std::optional<int32_t> Int32() {
    if (pos_ + 4 > body_.size()) return std::nullopt;
    int32_t v = GetInt32(body_.data() + pos_);
    pos_ += 4;
    return v;
  }
  std::optional<std::string_view> Bytes(size_t n) {
    if (pos_ + n > body_.size()) return std::nullopt;
    std::string_view s = body_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string_view Rest() const { return body_.substr(pos_); }

 private:
  std::string_view body_;
  size_t pos_ = 0;
};

std::string ErrorResponse(std::string_view sqlstate, std::string_view message,
                          std::string_view detail = "", int position = 0) {
  std::string body;
  auto field = [&](char code, std::string_view value) {
    body.push_back(code);
    body.append(value);
    body.push_back('\0');
  };
  field('S', "ERROR");
  field('C', sqlstate);
  field('M', message);
  if (!detail.empty()) field('D', detail);
  if (position > 0) field('P', std::to_string(position));
  body.push_back('\0');
  return Message('E', body);
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool ReadMore(int fd, std::string& buf) {
  char chunk[65536];
  while (true) {
    ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf.append(chunk, static_cast<size_t>(n));
    return true;
  }
}

// --- A small SQL tokenizer (enough for the statements Redshift restricts). --

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }
bool IsIdentStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         static_cast<unsigned char>(c) >= 0x80;
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsIdentChar(char c) { return IsIdentStart(c) || IsDigit(c) || c == '$'; }

struct Token {
  enum Kind { kWord, kQuoted, kString, kNumber, kParam, kPunct };
  Kind kind;
  std::string_view text;  // as written (quotes included)
  size_t offset;          // in the whole query string
  std::string upper;      // kWord: uppercased
};

// Tokens of `stmt`, which starts at `base` in the query string.
std::vector<Token> Tokenize(std::string_view stmt, size_t base) {
  std::vector<Token> out;
  size_t i = 0;
  const size_t n = stmt.size();
  while (i < n) {
    char c = stmt[i];
    if (IsSpace(c)) {
      ++i;
      continue;
    }
    if (c == '-' && i + 1 < n && stmt[i + 1] == '-') {
      while (i < n && stmt[i] != '\n') ++i;
      continue;
    }
    if (c == '/' && i + 1 < n && stmt[i + 1] == '*') {
      size_t end = stmt.find("*/", i + 2);
      i = end == std::string_view::npos ? n : end + 2;
      continue;
    }
    size_t start = i;
    Token::Kind kind;
    if (c == '\'' || c == '"' || ((c == 'E' || c == 'e') && i + 1 < n && stmt[i + 1] == '\'')) {
      if (c != '\'' && c != '"') ++i;
      char q = stmt[i++];
      while (i < n) {
        if (q == '\'' && stmt[i] == '\\') {
          i += 2;
        } else if (stmt[i] == q) {
          if (i + 1 < n && stmt[i + 1] == q) {
            i += 2;
          } else {
            ++i;
            break;
          }
        } else {
          ++i;
        }
      }
      kind = q == '"' ? Token::kQuoted : Token::kString;
    } else if (IsIdentStart(c)) {
      while (i < n && IsIdentChar(stmt[i])) ++i;
      kind = Token::kWord;
    } else if (IsDigit(c)) {
      while (i < n && (IsDigit(stmt[i]) || stmt[i] == '.')) ++i;
      kind = Token::kNumber;
    } else if (c == '$' && i + 1 < n && IsDigit(stmt[i + 1])) {
      ++i;
      while (i < n && IsDigit(stmt[i])) ++i;
      kind = Token::kParam;
    } else if (c == '$') {
      size_t j = i + 1;
      while (j < n && IsIdentChar(stmt[j]) && stmt[j] != '$') ++j;
      if (j < n && stmt[j] == '$') {
        std::string_view tag = stmt.substr(i, j - i + 1);
        size_t close = stmt.find(tag, j + 1);
        i = close == std::string_view::npos ? n : close + tag.size();
        kind = Token::kString;
      } else {
        ++i;
        kind = Token::kPunct;
      }
    } else {
      ++i;
      kind = Token::kPunct;
    }
    Token t{kind, stmt.substr(start, i - start), base + start, ""};
    if (kind == Token::kWord) t.upper = absl::AsciiStrToUpper(std::string(t.text));
    out.push_back(std::move(t));
  }
  return out;
}

bool IsWord(const std::vector<Token>& tokens, size_t i, std::string_view upper) {
  return i < tokens.size() && tokens[i].kind == Token::kWord && tokens[i].upper == upper;
}
bool IsPunct(const std::vector<Token>& tokens, size_t i, char c) {
  return i < tokens.size() && tokens[i].kind == Token::kPunct && tokens[i].text.size() == 1 &&
         tokens[i].text[0] == c;
}

// An identifier's name: unquoted lowercased, quoted as written.
std::string IdentifierName(const Token& t) {
  if (t.kind == Token::kQuoted) {
    std::string out;
    std::string_view inner = t.text.substr(1, t.text.size() >= 2 ? t.text.size() - 2 : 0);
    for (size_t i = 0; i < inner.size(); ++i) {
      out.push_back(inner[i]);
      if (inner[i] == '"' && i + 1 < inner.size() && inner[i + 1] == '"') ++i;
    }
    return out;
  }
  return absl::AsciiStrToLower(std::string(t.text));
}

// The content of a '...' literal (doubled quotes and backslash escapes undone).
std::string StringValue(std::string_view literal) {
  size_t open = literal.find('\'');
  if (open == std::string_view::npos) return std::string(literal);
  std::string out;
  for (size_t i = open + 1; i + 1 < literal.size(); ++i) {
    char c = literal[i];
    if (c == '\\' && i + 2 < literal.size()) {
      out.push_back(literal[++i]);
    } else if (c == '\'' && literal[i + 1] == '\'') {
      out.push_back('\'');
      ++i;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

int Utf8Chars(std::string_view text) {
  int n = 0;
  for (char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// Redshift's syntax error: `syntax error at or near "<token>" in context
// "<text before it>", at line N`, positioned at the token.
std::string SyntaxError(std::string_view sql, const std::vector<Token>& tokens, size_t at) {
  if (at >= tokens.size()) {
    return ErrorResponse("42601", "syntax error at end of input", "", Utf8Chars(sql) + 1);
  }
  const Token& t = tokens[at];
  size_t end = t.offset + t.text.size();
  size_t from = end > 30 ? end - 30 : 0;
  size_t line_start = sql.rfind('\n', t.offset);
  if (line_start != std::string_view::npos && line_start + 1 > from) from = line_start + 1;
  int line = 1 + static_cast<int>(std::count(sql.begin(), sql.begin() + t.offset, '\n'));
  return ErrorResponse("42601",
                       fmt::format("syntax error at or near \"{}\" in context \"{}\", at line {}",
                                   t.text, sql.substr(from, end - from), line),
                       "", Utf8Chars(sql.substr(0, t.offset)) + 1);
}

// Whether a SET of `name` to `value` is allowed; the refusal otherwise.
std::optional<std::string> CheckParameter(const std::string& name, std::string_view value) {
  if (SharedParameters().count(name) == 0 && RedshiftOnlyParameters().count(name) == 0) {
    return ErrorResponse("42704", fmt::format("unrecognized configuration parameter \"{}\"", name));
  }
  if (name == "extra_float_digits" && !value.empty()) {
    std::string v(value);
    if (v.size() >= 2 && v.front() == '\'' && v.back() == '\'') v = v.substr(1, v.size() - 2);
    int digits = 0;
    auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), digits);
    if (ec != std::errc() || ptr != v.data() + v.size()) {
      return ErrorResponse(
          "22023", fmt::format("parameter \"extra_float_digits\" requires an integer value"));
    }
    if (digits < -15 || digits > 2) {
      return ErrorResponse(
          "22023",
          fmt::format(
              "{} is outside the valid range for parameter \"extra_float_digits\" (-15 .. 2)",
              digits));
    }
  }
  return std::nullopt;
}

std::string Quote(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out.push_back('\'');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

int ConnectTo(const std::string& host, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1 ||
      connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

}  // namespace

FakeRedshiftFault FakeRedshiftFault::SerializableViolation(std::string statement, int skip,
                                                           int times) {
  FakeRedshiftFault f;
  f.statement = std::move(statement);
  f.skip = skip;
  f.times = times;
  f.sqlstate = "XX000";
  f.message = "1023";
  f.detail =
      "Serializable isolation violation on table - 100167, transactions forming the cycle are: "
      "55705701, 55705754 (pid:16606);";
  return f;
}

FakeRedshiftFault FakeRedshiftFault::ConnectionLoss(std::string statement, int skip, int times) {
  FakeRedshiftFault f;
  f.statement = std::move(statement);
  f.skip = skip;
  f.times = times;
  f.drop_connection = true;
  return f;
}

struct FakeRedshiftServer::Session {
  int64_t number = 0;
  int client = -1;
  int upstream = -1;
  std::optional<std::string> cursor;  // the open cursor, if any
  // Redshift errors to send instead of PostgreSQL's next errors (cleared at
  // each ReadyForQuery).
  std::deque<std::string> replacements;
  // Prepared statement name -> $n indices that name a configuration parameter.
  std::map<std::string, std::vector<int>> config_params;
  int64_t rows_relayed = 0;
  int64_t rows_in_response = 0;
};

struct FakeRedshiftServer::Verdict {
  bool drop = false;
  bool refused = false;
  std::string error;  // ErrorResponse message to send when refused
  std::string sql;    // what PostgreSQL runs
  std::vector<int> config_params;
};

FakeRedshiftServer::FakeRedshiftServer(FakeRedshiftOptions options)
    : options_(std::move(options)) {}

FakeRedshiftServer::~FakeRedshiftServer() { Stop(); }

absl::Status FakeRedshiftServer::Start() {
  listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  if (listen_fd_ < 0) return absl::UnavailableError("socket() failed");
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(listen_fd_, 64) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(listen_fd_);
    listen_fd_ = -1;
    return absl::UnavailableError(fmt::format("cannot listen on 127.0.0.1: {}", strerror(errno)));
  }
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void FakeRedshiftServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  listen_fd_ = -1;
  std::vector<std::thread> workers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : open_fds_) shutdown(fd, SHUT_RDWR);
    workers.swap(workers_);
  }
  for (std::thread& t : workers) t.join();
}

std::string FakeRedshiftServer::Url(std::string_view user, std::string_view database) const {
  return fmt::format("postgresql://{}@127.0.0.1:{}/{}", user, port_, database);
}

void FakeRedshiftServer::AddFault(FakeRedshiftFault fault) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.push_back(std::move(fault));
}

void FakeRedshiftServer::ClearFaults() {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.clear();
  fault_seen_.clear();
}

void FakeRedshiftServer::DropAfterRows(int64_t rows) {
  std::lock_guard<std::mutex> lock(mu_);
  drop_after_rows_ = rows;
}

std::vector<FakeRedshiftStatement> FakeRedshiftServer::Statements() const {
  std::lock_guard<std::mutex> lock(mu_);
  return statements_;
}

int FakeRedshiftServer::CountStatements(std::string_view keyword) const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const FakeRedshiftStatement& s : statements_) {
    std::vector<Token> tokens = Tokenize(s.sql, 0);
    if (!tokens.empty() && tokens[0].upper == keyword) ++n;
  }
  return n;
}

std::vector<int64_t> FakeRedshiftServer::FetchCounts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fetch_counts_;
}

int64_t FakeRedshiftServer::max_rows_per_response() const {
  std::lock_guard<std::mutex> lock(mu_);
  return max_rows_per_response_;
}

int64_t FakeRedshiftServer::cancel_requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancel_requests_;
}

int64_t FakeRedshiftServer::sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sessions_;
}

int64_t FakeRedshiftServer::open_sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return open_sessions_;
}

int64_t FakeRedshiftServer::violations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return violations_;
}

void FakeRedshiftServer::ClearHistory() {
  std::lock_guard<std::mutex> lock(mu_);
  statements_.clear();
  fetch_counts_.clear();
  max_rows_per_response_ = 0;
  cancel_requests_ = 0;
  sessions_ = 0;
  violations_ = 0;
}

void FakeRedshiftServer::Record(FakeRedshiftStatement statement) {
  std::lock_guard<std::mutex> lock(mu_);
  statements_.push_back(std::move(statement));
}

void FakeRedshiftServer::AcceptLoop() {
  while (!stopping_) {
    int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) {
      if (errno == EINTR) continue;
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      close(fd);
      return;
    }
    open_fds_.push_back(fd);
    ++open_sessions_;
    workers_.emplace_back([this, fd] { Serve(fd); });
  }
}

namespace {

// Redshift's SQL forms that PostgreSQL spells differently (what
// change_detection: warehouse issues), rewritten as edits of the query
// string, and PostgreSQL forms Redshift refuses. Returns the refusal, if any.
std::optional<std::string> RedshiftForms(
    const std::vector<Token>& tokens, std::vector<std::tuple<size_t, size_t, std::string>>& edits) {
  std::set<std::string> arrays;  // aliases of unnested JSON_PARSE arrays
  auto end_of = [&](size_t i) { return tokens[i].offset + tokens[i].text.size(); };
  for (size_t i = 0; i < tokens.size(); ++i) {
    // IS [NOT] DISTINCT FROM: Redshift answers "Not implemented" (error 1001).
    if (IsWord(tokens, i, "IS") &&
        (IsWord(tokens, i + 1, "DISTINCT") ||
         (IsWord(tokens, i + 1, "NOT") && IsWord(tokens, i + 2, "DISTINCT")))) {
      return ErrorResponse("XX000", "Not implemented",
                           "IS [NOT] DISTINCT FROM (the fake's wording of error 1001)");
    }
    if (IsWord(tokens, i, "COLLATE") && i + 1 < tokens.size()) {
      const Token& name = tokens[i + 1];
      const std::string upper = absl::AsciiStrToUpper(IdentifierName(name));
      if (name.kind == Token::kWord && (upper == "CASE_SENSITIVE" || upper == "CS")) {
        edits.emplace_back(name.offset, name.text.size(), "\"C\"");
      } else if (name.kind != Token::kWord || (upper != "CASE_INSENSITIVE" && upper != "CI")) {
        // Redshift has no locale or user-defined collations (message unverified).
        return ErrorResponse("42704",
                             fmt::format("collation \"{}\" does not exist", IdentifierName(name)));
      }
    }
    // JSON_SERIALIZE(super) -> the value's text (a function-style cast).
    if (IsWord(tokens, i, "JSON_SERIALIZE") && IsPunct(tokens, i + 1, '(')) {
      edits.emplace_back(tokens[i].offset, tokens[i].text.size(), "pg_catalog.text");
    }
    // (SELECT JSON_PARSE($n) AS elements) AS a_array, a_array.elements AS a
    //   -> json_array_elements($n::json) AS a
    if (IsPunct(tokens, i, '(') && IsWord(tokens, i + 1, "SELECT") &&
        IsWord(tokens, i + 2, "JSON_PARSE") && IsPunct(tokens, i + 3, '(') &&
        i + 15 < tokens.size() && tokens[i + 4].kind == Token::kParam &&
        IsPunct(tokens, i + 5, ')') && IsWord(tokens, i + 6, "AS") &&
        IsWord(tokens, i + 7, "ELEMENTS") && IsPunct(tokens, i + 8, ')') &&
        IsWord(tokens, i + 9, "AS") && IsPunct(tokens, i + 11, ',') &&
        IsPunct(tokens, i + 13, '.') && IsWord(tokens, i + 14, "ELEMENTS") &&
        IsWord(tokens, i + 15, "AS") && i + 16 < tokens.size()) {
      const std::string alias(tokens[i + 16].text);
      arrays.insert(absl::AsciiStrToUpper(alias));
      edits.emplace_back(
          tokens[i].offset, end_of(i + 16) - tokens[i].offset,
          fmt::format("json_array_elements({}::json) AS {}", tokens[i + 4].text, alias));
      i += 16;
    }
  }
  // CAST(a AS VARCHAR(65535)) and CAST(a[k] AS VARCHAR(65535)) of such an
  // alias, before or after its FROM item.
  for (size_t i = 0; i < tokens.size() && !arrays.empty(); ++i) {
    if (IsWord(tokens, i, "CAST") && IsPunct(tokens, i + 1, '(') && i + 2 < tokens.size() &&
        tokens[i + 2].kind == Token::kWord && arrays.count(tokens[i + 2].upper) > 0) {
      size_t j = i + 3;
      std::string replacement;
      if (IsPunct(tokens, j, '[') && j + 2 < tokens.size() &&
          tokens[j + 1].kind == Token::kNumber && IsPunct(tokens, j + 2, ']')) {
        replacement = fmt::format("({} ->> {})", tokens[i + 2].text, tokens[j + 1].text);
        j += 3;
      } else {
        replacement = fmt::format("({} #>> '{{}}')", tokens[i + 2].text);
      }
      if (IsWord(tokens, j, "AS") && IsWord(tokens, j + 1, "VARCHAR") &&
          IsPunct(tokens, j + 2, '(') && IsPunct(tokens, j + 4, ')') &&
          IsPunct(tokens, j + 5, ')')) {
        edits.emplace_back(tokens[i].offset, end_of(j + 5) - tokens[i].offset, replacement);
        i = j + 5;
      }
    }
  }
  return std::nullopt;
}

}  // namespace

FakeRedshiftServer::Verdict FakeRedshiftServer::Inspect(Session& session, const std::string& sql,
                                                        bool extended) {
  Verdict verdict;
  std::optional<std::string> cursor = session.cursor;
  std::vector<int64_t> fetches;
  // Edits to the query string: (offset, length, replacement), in order.
  std::vector<std::tuple<size_t, size_t, std::string>> edits;
  std::vector<FakeRedshiftStatement> seen;
  std::string refusal;
  bool drop = false;

  for (std::string_view stmt : SplitSqlStatements(sql)) {
    size_t base = static_cast<size_t>(stmt.data() - sql.data());
    std::vector<Token> tokens = Tokenize(stmt, base);
    std::string keyword = !tokens.empty() ? tokens[0].upper : "";
    FakeRedshiftStatement record{session.number, std::string(stmt), false, ""};

    // Injected faults first.
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < faults_.size(); ++i) {
        const FakeRedshiftFault& f = faults_[i];
        if (f.statement != keyword) continue;
        int n = fault_seen_[i]++;
        if (n < f.skip || n >= f.skip + f.times) continue;
        if (f.drop_connection) {
          drop = true;
          record.error = "connection dropped (injected)";
        } else {
          refusal = ErrorResponse(f.sqlstate, f.message, f.detail);
          record.error = f.message + (f.detail.empty() ? "" : " " + f.detail);
        }
        break;
      }
    }
    if (drop || !refusal.empty()) {
      record.refused = true;
      seen.push_back(std::move(record));
      break;
    }

    std::optional<std::string> refused;
    if (keyword == "COPY") {
      if (IsPunct(tokens, 1, '(')) {
        refused = SyntaxError(sql, tokens, 1);
      } else {
        for (size_t i = 1; i < tokens.size() && !refused; ++i) {
          if (IsWord(tokens, i, "TO") || IsWord(tokens, i, "STDIN") ||
              IsWord(tokens, i, "STDOUT")) {
            refused = SyntaxError(sql, tokens, i);
          }
        }
      }
    } else if (keyword == "DECLARE") {
      bool named =
          tokens.size() > 1 && (tokens[1].kind == Token::kWord || tokens[1].kind == Token::kQuoted);
      if (!named) {
        refused = SyntaxError(sql, tokens, 1);
      } else if (!IsWord(tokens, 2, "CURSOR")) {
        refused = SyntaxError(sql, tokens, 2);
      } else if (!IsWord(tokens, 3, "FOR")) {
        refused = SyntaxError(sql, tokens, 3);
      } else if (cursor.has_value()) {
        refused = ErrorResponse(
            "0A000", fmt::format("only one cursor can be open per session; cursor \"{}\" is "
                                 "still open",
                                 *cursor));
      } else {
        cursor = IdentifierName(tokens[1]);
      }
    } else if (keyword == "FETCH") {
      size_t i = 1;
      int64_t count = 1;
      if (IsWord(tokens, i, "NEXT")) {
        ++i;
      } else if (IsWord(tokens, i, "ALL")) {
        count = -1;
        ++i;
      } else if (IsWord(tokens, i, "FORWARD")) {
        ++i;
        if (i < tokens.size() && tokens[i].kind == Token::kNumber) {
          std::from_chars(tokens[i].text.data(), tokens[i].text.data() + tokens[i].text.size(),
                          count);
          ++i;
        } else if (IsWord(tokens, i, "ALL")) {
          count = -1;
          ++i;
        }
      }
      if (!IsWord(tokens, i, "FROM")) {
        refused = SyntaxError(sql, tokens, i);
      } else if (i + 1 >= tokens.size() ||
                 (tokens[i + 1].kind != Token::kWord && tokens[i + 1].kind != Token::kQuoted)) {
        refused = SyntaxError(sql, tokens, i + 1);
      } else if (i + 2 < tokens.size()) {
        refused = SyntaxError(sql, tokens, i + 2);
      } else if (options_.single_node && count < 0) {
        refused = ErrorResponse("0A000", "FETCH ALL is not supported on single-node clusters");
      } else if (options_.single_node && count > kSingleNodeMaxFetch) {
        refused = ErrorResponse(
            "0A000", fmt::format("FETCH count {} exceeds the single-node cluster maximum of {}",
                                 count, kSingleNodeMaxFetch));
      } else {
        fetches.push_back(count);
      }
    } else if (keyword == "CLOSE" || keyword == "COMMIT" || keyword == "END" ||
               keyword == "ROLLBACK" || keyword == "ABORT") {
      cursor.reset();
    } else if (keyword == "BEGIN" || keyword == "START") {
      static const std::set<std::string> kAllowed = {
          "WORK",        "TRANSACTION", "ISOLATION",  "LEVEL", "SERIALIZABLE", "READ",
          "UNCOMMITTED", "COMMITTED",   "REPEATABLE", "WRITE", "ONLY"};
      for (size_t i = 1; i < tokens.size() && !refused; ++i) {
        bool ok = (tokens[i].kind == Token::kWord && kAllowed.count(tokens[i].upper) > 0) ||
                  IsPunct(tokens, i, ',');
        if (!ok) refused = SyntaxError(sql, tokens, i);
      }
    } else if (keyword == "SET" || keyword == "RESET") {
      size_t i = 1;
      if (keyword == "SET" && (IsWord(tokens, i, "SESSION") || IsWord(tokens, i, "LOCAL"))) ++i;
      bool other = IsWord(tokens, i, "TRANSACTION") || IsWord(tokens, i, "AUTHORIZATION") ||
                   IsWord(tokens, i, "CHARACTERISTICS") || IsWord(tokens, i, "ALL") ||
                   IsWord(tokens, i, "ROLE");
      if (!other && i < tokens.size()) {
        std::string name;
        size_t value_at = i + 1;
        if (keyword == "SET" && IsWord(tokens, i, "TIME") && IsWord(tokens, i + 1, "ZONE")) {
          name = "timezone";
          value_at = i + 2;
        } else {
          name = IdentifierName(tokens[i]);
          if (keyword == "SET") {
            if (!IsWord(tokens, value_at, "TO") && !IsPunct(tokens, value_at, '=')) {
              refused = SyntaxError(sql, tokens, value_at);
            }
            ++value_at;
          }
        }
        std::string_view value;
        if (!refused && keyword == "SET" && value_at < tokens.size()) {
          value = std::string_view(sql).substr(tokens[value_at].offset,
                                               base + stmt.size() - tokens[value_at].offset);
        }
        if (!refused) refused = CheckParameter(name, value);
        if (!refused && RedshiftOnlyParameters().count(name) > 0) {
          std::string replacement =
              keyword == "SET" ? fmt::format("SET redshift_fake.{} TO {}", name,
                                             value_at + 1 == tokens.size() &&
                                                     tokens[value_at].kind == Token::kString
                                                 ? std::string(value)
                                                 : Quote(value))
                               : fmt::format("RESET redshift_fake.{}", name);
          edits.emplace_back(base, stmt.size(), std::move(replacement));
        }
      }
    }
    if (!refused) refused = RedshiftForms(tokens, edits);
    // set_config('name', ...) anywhere in the statement.
    for (size_t i = 0; i + 2 < tokens.size() && !refused; ++i) {
      if (!IsWord(tokens, i, "SET_CONFIG") || !IsPunct(tokens, i + 1, '(')) continue;
      const Token& arg = tokens[i + 2];
      if (arg.kind == Token::kString) {
        std::string name = absl::AsciiStrToLower(StringValue(arg.text));
        refused = CheckParameter(name, "");
        if (!refused && RedshiftOnlyParameters().count(name) > 0) {
          edits.emplace_back(arg.offset, arg.text.size(), Quote("redshift_fake." + name));
        }
      } else if (arg.kind == Token::kParam && extended) {
        verdict.config_params.push_back(std::atoi(std::string(arg.text.substr(1)).c_str()));
      }
    }
    if (refused) {
      refusal = *refused;
      record.refused = true;
      // The message field, for the record.
      size_t m = refusal.find(std::string("\0M", 2));
      if (m != std::string::npos)
        record.error = refusal.substr(m + 2, refusal.find('\0', m + 2) - m - 2);
      seen.push_back(std::move(record));
      break;
    }
    seen.push_back(std::move(record));
  }

  for (FakeRedshiftStatement& s : seen) Record(std::move(s));
  if (drop) {
    verdict.drop = true;
    return verdict;
  }
  if (!refusal.empty()) {
    verdict.refused = true;
    verdict.error = std::move(refusal);
    verdict.sql = kRefusedSql;
    verdict.config_params.clear();
    return verdict;
  }
  session.cursor = cursor;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fetch_counts_.insert(fetch_counts_.end(), fetches.begin(), fetches.end());
  }
  std::sort(edits.begin(), edits.end());
  size_t copied = 0;
  for (const auto& [offset, length, replacement] : edits) {
    if (offset < copied) continue;
    verdict.sql.append(sql, copied, offset - copied);
    verdict.sql += replacement;
    copied = offset + length;
  }
  verdict.sql.append(sql, copied, std::string::npos);
  return verdict;
}

void FakeRedshiftServer::Serve(int client_fd) {
  Session session;
  session.client = client_fd;
  auto close_fd = [this](int& fd) {
    if (fd < 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    open_fds_.erase(std::remove(open_fds_.begin(), open_fds_.end(), fd), open_fds_.end());
    close(fd);
    fd = -1;
  };
  auto finish = [&] {
    close_fd(session.upstream);
    close_fd(session.client);
    std::lock_guard<std::mutex> lock(mu_);
    --open_sessions_;
  };
  auto connect_upstream = [&]() -> bool {
    int fd = ConnectTo(options_.upstream_host, options_.upstream_port);
    if (fd < 0) return false;
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      close(fd);
      return false;
    }
    open_fds_.push_back(fd);
    session.upstream = fd;
    return true;
  };

  // Startup: untyped messages until the startup packet.
  std::string in;
  while (true) {
    while (in.size() < 8 || in.size() < static_cast<size_t>(GetInt32(in.data()))) {
      if (!ReadMore(session.client, in)) return finish();
    }
    int32_t len = GetInt32(in.data());
    int32_t code = GetInt32(in.data() + 4);
    if (len < 8 || len > 10000) return finish();
    std::string packet = in.substr(0, len);
    in.erase(0, len);
    if (code == kSslRequestCode || code == kGssEncRequestCode) {
      if (!WriteAll(session.client, "N")) return finish();
      continue;
    }
    if (code == kCancelRequestCode) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++cancel_requests_;
      }
      if (connect_upstream()) {
        WriteAll(session.upstream, packet);
        // Wait for PostgreSQL to close its side: the cancel was processed.
        char buf[16];
        while (recv(session.upstream, buf, sizeof(buf), 0) > 0) {
        }
      }
      return finish();
    }
    if (code != kProtocol3) return finish();
    if (!connect_upstream()) {
      WriteAll(session.client, ErrorResponse("08006", "the fake cannot reach PostgreSQL"));
      return finish();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      session.number = ++sessions_;
    }
    if (!WriteAll(session.upstream, packet)) return finish();
    break;
  }

  std::string from_server;
  auto handle_client = [&](char type, std::string_view body, std::string& out) -> bool {
    switch (type) {
      case 'Q': {
        std::string sql(body.substr(0, body.find('\0')));
        Verdict v = Inspect(session, sql, false);
        if (v.drop) return false;
        if (v.refused) session.replacements.push_back(v.error);
        std::string q = v.sql;
        q.push_back('\0');
        out += Message('Q', q);
        return true;
      }
      case 'P': {
        BodyReader r(body);
        auto name = r.CString();
        auto query = r.CString();
        if (!name || !query) return false;
        Verdict v = Inspect(session, std::string(*query), true);
        if (v.drop) return false;
        if (v.refused) session.replacements.push_back(v.error);
        session.config_params[std::string(*name)] = v.config_params;
        std::string rebuilt(*name);
        rebuilt.push_back('\0');
        rebuilt += v.sql;
        rebuilt.push_back('\0');
        rebuilt += r.Rest();
        out += Message('P', rebuilt);
        return true;
      }
      case 'B': {
        BodyReader r(body);
        auto portal = r.CString();
        auto stmt = r.CString();
        auto nformats = r.Int16();
        if (!portal || !stmt || !nformats) return false;
        std::vector<int16_t> formats;
        for (int i = 0; i < *nformats; ++i) formats.push_back(r.Int16().value_or(0));
        auto nparams = r.Int16();
        if (!nparams) return false;
        std::vector<std::optional<std::string>> params;
        for (int i = 0; i < *nparams; ++i) {
          int32_t len = r.Int32().value_or(-1);
          if (len < 0) {
            params.push_back(std::nullopt);
          } else {
            auto bytes = r.Bytes(static_cast<size_t>(len));
            if (!bytes) return false;
            params.emplace_back(std::string(*bytes));
          }
        }
        auto nresults = r.Int16();
        if (!nresults) return false;
        std::vector<int16_t> results;
        for (int i = 0; i < *nresults; ++i) results.push_back(r.Int16().value_or(0));
        std::string refusal;
        if (std::find(results.begin(), results.end(), 1) != results.end()) {
          refusal = ErrorResponse("0A000", "binary result format is not supported");
        }
        bool changed = false;
        for (int n : session.config_params[std::string(*stmt)]) {
          if (!refusal.empty() || n < 1 || n > static_cast<int>(params.size()) ||
              !params[n - 1].has_value()) {
            continue;
          }
          std::string name = absl::AsciiStrToLower(*params[n - 1]);
          if (std::optional<std::string> bad = CheckParameter(name, ""); bad) {
            refusal = *bad;
          } else if (RedshiftOnlyParameters().count(name) > 0) {
            params[n - 1] = "redshift_fake." + name;
            changed = true;
          }
        }
        if (!refusal.empty()) {
          Record({session.number, fmt::format("<bind of statement \"{}\">", *stmt), true,
                  "refused bind"});
          session.replacements.push_back(refusal);
          std::string rebuilt = std::string(*portal) + '\0' + kRefusedSql + '\0';
          PutInt16(rebuilt, 0);
          PutInt16(rebuilt, 0);
          PutInt16(rebuilt, 0);
          out += Message('B', rebuilt);
          return true;
        }
        if (!changed) {
          out += Message('B', body);
          return true;
        }
        std::string rebuilt = std::string(*portal) + '\0' + std::string(*stmt) + '\0';
        PutInt16(rebuilt, static_cast<int16_t>(formats.size()));
        for (int16_t f : formats) PutInt16(rebuilt, f);
        PutInt16(rebuilt, static_cast<int16_t>(params.size()));
        for (const auto& p : params) {
          PutInt32(rebuilt, p ? static_cast<int32_t>(p->size()) : -1);
          if (p) rebuilt += *p;
        }
        PutInt16(rebuilt, static_cast<int16_t>(results.size()));
        for (int16_t f : results) PutInt16(rebuilt, f);
        out += Message('B', rebuilt);
        return true;
      }
      default:
        out += Message(type, body);
        return true;
    }
  };

  // Returns false when the connection must be cut after writing `out`.
  auto handle_server = [&](char type, std::string_view body, std::string& out) -> bool {
    switch (type) {
      case 'S': {
        BodyReader r(body);
        auto name = r.CString();
        auto value = r.CString();
        if (name && value && *name == "server_version") {
          std::string rebuilt = std::string(*name) + '\0' + options_.server_version + '\0';
          out += Message('S', rebuilt);
          return true;
        }
        break;
      }
      case 'T': {
        std::string rebuilt(body);
        BodyReader r(body);
        auto n = r.Int16();
        size_t pos = 2;
        for (int i = 0; n && i < *n; ++i) {
          auto name = r.CString();
          if (!name) break;
          pos += name->size() + 1;
          auto it = options_.column_types.find(std::string(*name));
          if (it != options_.column_types.end() && pos + 10 <= rebuilt.size()) {
            SetInt32(rebuilt, pos + 6, static_cast<int32_t>(it->second));
          }
          r.Bytes(18);
          pos += 18;
        }
        out += Message('T', rebuilt);
        return true;
      }
      case 'D': {
        ++session.rows_relayed;
        ++session.rows_in_response;
        out += Message('D', body);
        std::lock_guard<std::mutex> lock(mu_);
        return drop_after_rows_ <= 0 || session.rows_relayed < drop_after_rows_;
      }
      case 'E':
        if (!session.replacements.empty()) {
          out += session.replacements.front();
          session.replacements.pop_front();
          return true;
        }
        break;
      case 'Z': {
        {
          std::lock_guard<std::mutex> lock(mu_);
          max_rows_per_response_ = std::max(max_rows_per_response_, session.rows_in_response);
        }
        session.rows_in_response = 0;
        session.replacements.clear();
        if (!body.empty() && body[0] == 'I') session.cursor.reset();
        break;
      }
      case 'H':
      case 'G':
      case 'W': {
        std::lock_guard<std::mutex> lock(mu_);
        ++violations_;
        return false;
      }
      default:
        break;
    }
    out += Message(type, body);
    return true;
  };

  // Splits complete typed messages off `buf` and hands them to `handle`.
  auto drain = [](std::string& buf, std::string& out, auto& handle) -> bool {
    size_t pos = 0;
    bool keep = true;
    while (keep && buf.size() - pos >= 5) {
      int32_t len = GetInt32(buf.data() + pos + 1);
      if (len < 4) return false;
      if (buf.size() - pos < static_cast<size_t>(len) + 1) break;
      keep = handle(buf[pos], std::string_view(buf).substr(pos + 5, len - 4), out);
      pos += static_cast<size_t>(len) + 1;
    }
    buf.erase(0, pos);
    return keep;
  };

  std::string from_client = std::move(in);
  bool open = true;
  if (!from_client.empty()) {
    std::string out;
    open = drain(from_client, out, handle_client);
    if (!out.empty() && !WriteAll(session.upstream, out)) open = false;
  }
  while (open && !stopping_) {
    pollfd fds[2] = {{session.client, POLLIN, 0}, {session.upstream, POLLIN, 0}};
    int ready = poll(fds, 2, 200);
    if (ready < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents != 0) {
      if (!ReadMore(session.client, from_client)) break;
      std::string out;
      open = drain(from_client, out, handle_client);
      if (!out.empty() && !WriteAll(session.upstream, out)) break;
    }
    if (open && fds[1].revents != 0) {
      if (!ReadMore(session.upstream, from_server)) break;
      std::string out;
      open = drain(from_server, out, handle_server);
      if (!out.empty() && !WriteAll(session.client, out)) break;
    }
  }
  finish();
}

}  // namespace backflow
