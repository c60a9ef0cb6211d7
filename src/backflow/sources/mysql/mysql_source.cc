#include "backflow/sources/mysql/mysql_source.h"

#include <errmsg.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <sys/socket.h>

#include <atomic>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/status_macros.h"
#include "backflow/sources/mysql/mysql_internal.h"
#include "backflow/sources/query_cancel_watcher.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"

namespace backflow {
namespace mysql_internal {

void Conn::Abort() {
  if (mysql == nullptr) return;
  int fd = -1;
  if (mariadb_get_infov(mysql, MARIADB_CONNECTION_SOCKET, &fd) == 0 && fd >= 0) {
    shutdown(fd, SHUT_RDWR);
  }
}

QueryCanceller::QueryCanceller(const std::string& url, const std::string& password,
                               const Conn& conn, const std::atomic<bool>* cancel, std::string what)
    : cancel_(cancel), what_(std::move(what)) {
  const unsigned long id = mysql_thread_id(conn.mysql);
  int fd = -1;
  if (mariadb_get_infov(conn.mysql, MARIADB_CONNECTION_SOCKET, &fd) != 0) fd = -1;
  kill_ = [url, password, id, fd] {
    absl::StatusOr<std::unique_ptr<Conn>> killer = Connect(url, password, /*read_only=*/false);
    if (killer.ok()) {
      const std::string sql = fmt::format("KILL QUERY {}", id);
      (void)mysql_query((*killer)->mysql, sql.c_str());
    }
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
  };
  watcher_ = std::make_unique<QueryCancelWatcher>(cancel, kill_);
}

}  // namespace mysql_internal

namespace {

using mysql_internal::Conn;
using mysql_internal::Connect;
using mysql_internal::QueryCanceller;
using mysql_internal::QueryError;

constexpr unsigned kBinaryCharset = 63;

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes `in`; false on a malformed escape.
bool PercentDecode(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = HexDigit(in[i + 1]);
    int lo = HexDigit(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

// How one column's text is turned into a Value.
enum class Decode {
  kNull,
  kBool,
  kBit,  // big-endian bytes; kBool for BIT(1), kInt64 / kDecimal for wider
  kInt64,
  kUnsigned,  // BIGINT UNSIGNED as decimal text
  kDecimal,
  kDouble,
  kDate,
  kDatetime,
  kTimestamp,
  kString,
  kJson,
  kBytes,
};

struct ColumnDecoder {
  Decode decode = Decode::kString;
  unsigned bits = 0;  // for kBit
};

bool IsJsonField(const MYSQL_FIELD& field) {
  if (field.type == MYSQL_TYPE_JSON) return true;
  MARIADB_CONST_STRING attr{};
  if (mariadb_field_attr(&attr, &field, MARIADB_FIELD_ATTR_FORMAT_NAME) == 0 &&
      attr.str != nullptr) {
    return std::string_view(attr.str, attr.length) == "json";
  }
  return false;
}

// Chooses the decoding and the schema column for a result field.
ColumnDecoder DescribeField(const MYSQL_FIELD& field, Column& column) {
  column.name.assign(field.name, field.name_length);
  bool is_unsigned = (field.flags & UNSIGNED_FLAG) != 0;
  bool binary = field.charsetnr == kBinaryCharset;
  auto set = [&](Decode d, ValueType t, std::string source_type) {
    column.type = t;
    column.source_type = std::move(source_type);
    return ColumnDecoder{d, 0};
  };
  std::string_view uns = is_unsigned ? " UNSIGNED" : "";
  switch (field.type) {
    case MYSQL_TYPE_NULL:
      return set(Decode::kNull, ValueType::kString, "NULL");
    case MYSQL_TYPE_TINY:
      if (field.length == 1 && !is_unsigned)
        return set(Decode::kBool, ValueType::kBool, "TINYINT(1)");
      return set(Decode::kInt64, ValueType::kInt64, fmt::format("TINYINT{}", uns));
    case MYSQL_TYPE_SHORT:
      return set(Decode::kInt64, ValueType::kInt64, fmt::format("SMALLINT{}", uns));
    case MYSQL_TYPE_INT24:
      return set(Decode::kInt64, ValueType::kInt64, fmt::format("MEDIUMINT{}", uns));
    case MYSQL_TYPE_LONG:
      return set(Decode::kInt64, ValueType::kInt64, fmt::format("INT{}", uns));
    case MYSQL_TYPE_LONGLONG:
      if (is_unsigned) return set(Decode::kUnsigned, ValueType::kDecimal, "BIGINT UNSIGNED");
      return set(Decode::kInt64, ValueType::kInt64, "BIGINT");
    case MYSQL_TYPE_YEAR:
      return set(Decode::kInt64, ValueType::kInt64, "YEAR");
    case MYSQL_TYPE_BIT: {
      unsigned bits = static_cast<unsigned>(field.length);
      ValueType t = bits <= 1   ? ValueType::kBool
                    : bits < 64 ? ValueType::kInt64
                                : ValueType::kDecimal;
      column.type = t;
      column.source_type = fmt::format("BIT({})", bits);
      return ColumnDecoder{Decode::kBit, bits};
    }
    case MYSQL_TYPE_DECIMAL:
    case MYSQL_TYPE_NEWDECIMAL:
      return set(Decode::kDecimal, ValueType::kDecimal,
                 fmt::format("DECIMAL{}", is_unsigned ? " UNSIGNED" : ""));
    case MYSQL_TYPE_FLOAT:
      return set(Decode::kDouble, ValueType::kDouble, "FLOAT");
    case MYSQL_TYPE_DOUBLE:
      return set(Decode::kDouble, ValueType::kDouble, "DOUBLE");
    case MYSQL_TYPE_DATE:
    case MYSQL_TYPE_NEWDATE:
      return set(Decode::kDate, ValueType::kDate, "DATE");
    case MYSQL_TYPE_DATETIME:
    case MYSQL_TYPE_DATETIME2:
      return set(Decode::kDatetime, ValueType::kTimestamp, "DATETIME");
    case MYSQL_TYPE_TIMESTAMP:
    case MYSQL_TYPE_TIMESTAMP2:
      return set(Decode::kTimestamp, ValueType::kTimestamp, "TIMESTAMP");
    case MYSQL_TYPE_TIME:
    case MYSQL_TYPE_TIME2:
      return set(Decode::kString, ValueType::kString, "TIME");
    case MYSQL_TYPE_JSON:
      return set(Decode::kJson, ValueType::kJson, "JSON");
    case MYSQL_TYPE_GEOMETRY:
      return set(Decode::kBytes, ValueType::kBytes, "GEOMETRY");
    case MYSQL_TYPE_ENUM:
      return set(Decode::kString, ValueType::kString, "ENUM");
    case MYSQL_TYPE_SET:
      return set(Decode::kString, ValueType::kString, "SET");
    case MYSQL_TYPE_TINY_BLOB:
    case MYSQL_TYPE_MEDIUM_BLOB:
    case MYSQL_TYPE_LONG_BLOB:
    case MYSQL_TYPE_BLOB:
      if (IsJsonField(field)) return set(Decode::kJson, ValueType::kJson, "JSON");
      if (binary) return set(Decode::kBytes, ValueType::kBytes, "BLOB");
      return set(Decode::kString, ValueType::kString, "TEXT");
    case MYSQL_TYPE_VARCHAR:
    case MYSQL_TYPE_VAR_STRING:
      if (IsJsonField(field)) return set(Decode::kJson, ValueType::kJson, "JSON");
      if (binary) return set(Decode::kBytes, ValueType::kBytes, "VARBINARY");
      return set(Decode::kString, ValueType::kString, "VARCHAR");
    case MYSQL_TYPE_STRING:
      if ((field.flags & ENUM_FLAG) != 0) return set(Decode::kString, ValueType::kString, "ENUM");
      if ((field.flags & SET_FLAG) != 0) return set(Decode::kString, ValueType::kString, "SET");
      if (binary) return set(Decode::kBytes, ValueType::kBytes, "BINARY");
      return set(Decode::kString, ValueType::kString, "CHAR");
    default:
      if (binary)
        return set(Decode::kBytes, ValueType::kBytes, fmt::format("type {}", +field.type));
      return set(Decode::kString, ValueType::kString, fmt::format("type {}", +field.type));
  }
}

// A DATE / DATETIME / TIMESTAMP text with a zero month or day ('0000-00-00').
bool IsZeroDate(std::string_view text) {
  return text.size() >= 10 && (text.substr(5, 2) == "00" || text.substr(8, 2) == "00");
}

absl::StatusOr<Value> DecodeValue(const ColumnDecoder& decoder, const Column& column,
                                  std::string_view text) {
  auto bad = [&]() {
    return absl::InternalError(fmt::format("MySQL sent {:?} for column {} of type {}",
                                           std::string(text.substr(0, 64)), column.name,
                                           column.source_type));
  };
  switch (decoder.decode) {
    case Decode::kNull:
      return Value::Null();
    case Decode::kBool:
    case Decode::kInt64: {
      int64_t v = 0;
      auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || ptr != text.data() + text.size()) return bad();
      return decoder.decode == Decode::kBool ? Value::Bool(v != 0) : Value::Int64(v);
    }
    case Decode::kUnsigned:
      return Value::Text(ValueType::kDecimal, std::string(text));
    case Decode::kBit: {
      uint64_t v = 0;
      for (char c : text) v = (v << 8) | static_cast<unsigned char>(c);
      if (column.type == ValueType::kBool) return Value::Bool(v != 0);
      if (column.type == ValueType::kInt64) return Value::Int64(static_cast<int64_t>(v));
      return Value::Text(ValueType::kDecimal, std::to_string(v));
    }
    case Decode::kDecimal:
      return Value::Text(ValueType::kDecimal, std::string(text));
    case Decode::kDouble: {
      std::string s(text);
      char* end = nullptr;
      double d = std::strtod(s.c_str(), &end);
      if (end != s.c_str() + s.size()) return bad();
      return Value::Double(d);
    }
    case Decode::kDate:
      if (IsZeroDate(text)) return Value::Null();
      return Value::Text(ValueType::kDate, std::string(text));
    case Decode::kDatetime:
    case Decode::kTimestamp: {
      if (IsZeroDate(text)) return Value::Null();
      std::string s(text);
      if (s.size() > 10 && s[10] == ' ') s[10] = 'T';
      if (decoder.decode == Decode::kTimestamp) s.push_back('Z');
      return Value::Text(ValueType::kTimestamp, std::move(s));
    }
    case Decode::kJson:
      return Value::Text(ValueType::kJson, CompactJson(text));
    case Decode::kBytes:
      return Value::Text(ValueType::kBytes, std::string(text));
    case Decode::kString:
      return Value::String(std::string(text));
  }
  return bad();
}

constexpr std::string_view kQueryWhat = "the MySQL query";

class MysqlRowReader : public RowReader {
 public:
  // `canceller`: null when the query cannot be cancelled by a run.
  MysqlRowReader(std::shared_ptr<Conn> conn, MYSQL_RES* result,
                 std::unique_ptr<QueryCanceller> canceller = nullptr)
      : conn_(std::move(conn)), result_(result), canceller_(std::move(canceller)) {
    unsigned n = mysql_num_fields(result_);
    MYSQL_FIELD* fields = mysql_fetch_fields(result_);
    schema_.resize(n);
    decoders_.reserve(n);
    for (unsigned i = 0; i < n; ++i) decoders_.push_back(DescribeField(fields[i], schema_[i]));
  }

  ~MysqlRowReader() override {
    if (canceller_ != nullptr) canceller_->Stop();
    // Abandoned (or failed) mid-stream: freeing the result would read every
    // remaining row, so cut the connection first.
    if (!done_) conn_->Abort();
    mysql_free_result(result_);
  }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!error_.ok()) return error_;
    if (done_) return false;
    if (canceller_ != nullptr && canceller_->requested()) {
      error_ = canceller_->Cancel();
      return error_;
    }
    MYSQL_ROW values = mysql_fetch_row(result_);
    if (canceller_ != nullptr && canceller_->requested()) {
      // Killed (or cut) by the canceller while the fetch waited. A row that
      // still arrived is dropped: KILL QUERY can cut an expression short
      // without failing the row (MariaDB's BENCHMARK() then yields 0, and the
      // row is sent before the statement's error).
      error_ = canceller_->Cancel();
      return error_;
    }
    if (values == nullptr) {
      if (mysql_errno(conn_->mysql) != 0) {
        error_ = QueryError(*conn_, "query failed while streaming rows");
        return error_;
      }
      done_ = true;
      return false;
    }
    unsigned long* lengths = mysql_fetch_lengths(result_);
    row.resize(decoders_.size());
    for (size_t i = 0; i < decoders_.size(); ++i) {
      if (values[i] == nullptr) {
        row[i] = Value::Null();
        continue;
      }
      absl::StatusOr<Value> v =
          DecodeValue(decoders_[i], schema_[i], std::string_view(values[i], lengths[i]));
      if (!v.ok()) {
        error_ = v.status();
        return error_;
      }
      row[i] = *std::move(v);
    }
    return true;
  }

 private:
  std::shared_ptr<Conn> conn_;
  MYSQL_RES* result_;
  Schema schema_;
  std::vector<ColumnDecoder> decoders_;
  std::unique_ptr<QueryCanceller> canceller_;
  bool done_ = false;
  absl::Status error_;
};

// StreamQuery (mysql_internal.h), the statement stopped when `canceller`
// (may be null) sees the run cancelled.
absl::StatusOr<std::unique_ptr<RowReader>> StreamCancellableQuery(
    std::shared_ptr<Conn> conn, const std::string& text, std::string_view what,
    std::unique_ptr<QueryCanceller> canceller) {
  // The canceller may have cut the connection: it is never used again, and
  // the canceller stops before the connection closes.
  auto cancelled = [&] {
    absl::Status s = canceller->Cancel();
    conn->Abort();
    return s;
  };
  auto fail = [&](absl::Status s) {
    if (canceller != nullptr) canceller->Stop();
    return s;
  };
  const bool failed = mysql_real_query(conn->mysql, text.data(), text.size()) != 0;
  if (canceller != nullptr && canceller->requested()) return cancelled();
  if (failed) return fail(QueryError(*conn, what));
  MYSQL_RES* result = mysql_use_result(conn->mysql);
  if (result == nullptr) {
    if (mysql_errno(conn->mysql) != 0) return fail(QueryError(*conn, what));
    return fail(absl::InvalidArgumentError(
        "the query returned no result set; a model must be a SELECT (or another statement "
        "that returns rows)"));
  }
  return std::unique_ptr<RowReader>(
      new MysqlRowReader(std::move(conn), result, std::move(canceller)));
}

class MysqlSource : public Source {
 public:
  MysqlSource(std::string url, std::string password, std::string state_schema)
      : url_(std::move(url)),
        password_(std::move(password)),
        state_schema_(std::move(state_schema)) {}

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn, Connect(url_, password_));
    if (mysql_query(conn->mysql, "SELECT 1") != 0) {
      return QueryError(*conn, "connection check failed");
    }
    MYSQL_RES* result = mysql_store_result(conn->mysql);  // one tiny row
    if (result == nullptr) return QueryError(*conn, "connection check failed");
    mysql_free_result(result);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    return Query(sql, QueryOptions{});
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql,
                                                   const QueryOptions& options) override {
    // A run already cancelled opens no query (nor a connection).
    if (QueryCancelRequested(options.cancel)) return QueryCancelledError(kQueryWhat);
    BACKFLOW_ASSIGN_OR_RETURN(std::shared_ptr<Conn> conn, Connect(url_, password_));
    if (QueryCancelRequested(options.cancel)) return QueryCancelledError(kQueryWhat);
    std::unique_ptr<QueryCanceller> canceller;
    if (options.cancel != nullptr) {
      canceller = std::make_unique<QueryCanceller>(url_, password_, *conn, options.cancel,
                                                   std::string(kQueryWhat));
    }
    return StreamCancellableQuery(std::move(conn), TrimModelSql(sql), "query failed",
                                  std::move(canceller));
  }

  WarehouseChangeDetection* warehouse_change_detection() override {
    if (change_detection_ == nullptr) {
      change_detection_ = mysql_internal::NewChangeDetection(url_, password_, state_schema_);
    }
    return change_detection_.get();
  }

 private:
  std::string url_;
  std::string password_;
  std::string state_schema_;
  std::unique_ptr<WarehouseChangeDetection> change_detection_;
};

}  // namespace

namespace mysql_internal {

bool IsConnectionLoss(unsigned err) {
  return err == CR_SERVER_GONE_ERROR || err == CR_SERVER_LOST || err == CR_CONNECTION_ERROR ||
         err == CR_CONN_HOST_ERROR || err == CR_UNKNOWN_HOST || err == ER_QUERY_INTERRUPTED ||
         err == ER_SERVER_SHUTDOWN || err == ER_CON_COUNT_ERROR || err == ER_LOCK_WAIT_TIMEOUT ||
         err == ER_LOCK_DEADLOCK || err == CR_SERVER_LOST_EXTENDED || err == ER_CONNECTION_KILLED;
}

// The status for the connection's current error, `what` describing the step.
absl::Status QueryError(const Conn& conn, std::string_view what) {
  unsigned err = mysql_errno(conn.mysql);
  std::string message = mysql_error(conn.mysql);
  if (IsConnectionLoss(err)) {
    return absl::UnavailableError(
        fmt::format("{} on MySQL at {}: {} (error {})", what, conn.target, message, err));
  }
  if (err >= CR_MIN_ERROR && err <= CR_MAX_ERROR) {
    return absl::UnavailableError(
        fmt::format("{} on MySQL at {}: {} (client error {})", what, conn.target, message, err));
  }
  if (err == 0) {
    return absl::InternalError(fmt::format("{} on MySQL at {}: unknown error", what, conn.target));
  }
  return absl::InvalidArgumentError(
      fmt::format("{}: MySQL error {} ({}): {}", what, err, mysql_sqlstate(conn.mysql), message));
}

absl::StatusOr<std::unique_ptr<Conn>> Connect(const std::string& url,
                                              const std::string& password_setting, bool read_only) {
  BACKFLOW_ASSIGN_OR_RETURN(MysqlUrl parsed, ParseMysqlUrl(url));
  if (!password_setting.empty()) parsed.password = password_setting;
  auto conn = std::make_unique<Conn>();
  conn->target = parsed.host.find(':') != std::string::npos
                     ? fmt::format("[{}]:{}", parsed.host, parsed.port)
                     : fmt::format("{}:{}", parsed.host, parsed.port);
  conn->mysql = mysql_init(nullptr);
  if (conn->mysql == nullptr) return absl::ResourceExhaustedError("mysql_init failed");
  unsigned timeout = 10;
  unsigned protocol = MYSQL_PROTOCOL_TCP;
  mysql_optionsv(conn->mysql, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
  mysql_optionsv(conn->mysql, MYSQL_OPT_PROTOCOL, &protocol);
  mysql_optionsv(conn->mysql, MYSQL_SET_CHARSET_NAME, "utf8mb4");
  // libmariadb asks MariaDB 10.5+ for extended metadata (format=json marks
  // JSON columns) by itself; multi-statements stay off.
  unsigned long flags = 0;
  if (mysql_real_connect(conn->mysql, parsed.host.c_str(), parsed.user.c_str(),
                         parsed.password.c_str(),
                         parsed.database.empty() ? nullptr : parsed.database.c_str(),
                         static_cast<unsigned>(parsed.port), nullptr, flags) == nullptr) {
    unsigned err = mysql_errno(conn->mysql);
    std::string message = mysql_error(conn->mysql);
    switch (err) {
      case ER_ACCESS_DENIED_ERROR:
      case ER_ACCESS_DENIED_NO_PASSWORD_ERROR:
        return absl::UnauthenticatedError(fmt::format(
            "MySQL at {} rejected user '{}': {}. Check the user in `url` and the `password` "
            "setting, and that the user may connect from this host",
            conn->target, parsed.user, message));
      case ER_BAD_DB_ERROR:
        return absl::FailedPreconditionError(
            fmt::format("database '{}' does not exist on MySQL at {} ({}); check the database "
                        "in `url`",
                        parsed.database, conn->target, message));
      case ER_DBACCESS_DENIED_ERROR:
        return absl::PermissionDeniedError(
            fmt::format("MySQL at {}: {} (error {})", conn->target, message, err));
      default:
        return absl::UnavailableError(fmt::format("cannot connect to MySQL at {}: {} (error {})",
                                                  conn->target, message, err));
    }
  }
  for (const char* sql : {"SET time_zone = '+00:00'", "SET SESSION net_write_timeout = 600",
                          "SET SESSION TRANSACTION READ ONLY", "START TRANSACTION READ ONLY"}) {
    if (!read_only && std::string_view(sql).find("READ ONLY") != std::string_view::npos) continue;
    if (mysql_query(conn->mysql, sql) != 0) {
      return QueryError(*conn, fmt::format("setting up the session ({})", sql));
    }
  }
  return conn;
}

absl::StatusOr<std::unique_ptr<RowReader>> StreamQuery(std::shared_ptr<Conn> conn,
                                                       const std::string& text,
                                                       std::string_view what) {
  return StreamCancellableQuery(std::move(conn), text, what, nullptr);
}

}  // namespace mysql_internal

absl::StatusOr<MysqlUrl> ParseMysqlUrl(const std::string& url) {
  std::string_view rest = url;
  size_t scheme_end = rest.find("://");
  if (scheme_end == std::string_view::npos) {
    return absl::InvalidArgumentError(
        "url: expected mysql://user@host:3306/database (the scheme is missing)");
  }
  std::string_view scheme = rest.substr(0, scheme_end);
  if (scheme != "mysql" && scheme != "mariadb") {
    return absl::InvalidArgumentError(fmt::format(
        "url: the scheme must be mysql:// or mariadb://, not {}://", std::string(scheme)));
  }
  rest.remove_prefix(scheme_end + 3);
  if (rest.find_first_of("?#") != std::string_view::npos) {
    return absl::InvalidArgumentError(
        "url: query parameters and fragments are not supported; use "
        "mysql://user@host:3306/database");
  }
  MysqlUrl out;
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) {
    std::string_view db = rest.substr(slash + 1);
    if (db.find('/') != std::string_view::npos) {
      return absl::InvalidArgumentError("url: the path must be a single database name");
    }
    if (!PercentDecode(db, out.database)) {
      return absl::InvalidArgumentError("url: malformed percent escape in the database name");
    }
  }
  size_t at = authority.rfind('@');
  std::string_view hostport = authority;
  if (at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    hostport = authority.substr(at + 1);
    size_t colon = userinfo.find(':');
    if (!PercentDecode(userinfo.substr(0, colon), out.user)) {
      return absl::InvalidArgumentError("url: malformed percent escape in the user name");
    }
    if (colon != std::string_view::npos &&
        !PercentDecode(userinfo.substr(colon + 1), out.password)) {
      // Never echo the password.
      return absl::InvalidArgumentError("url: malformed percent escape in the password");
    }
  }
  std::string_view port_text;
  if (!hostport.empty() && hostport[0] == '[') {
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError("url: unterminated [ in the IPv6 host");
    }
    out.host = std::string(hostport.substr(1, close - 1));
    std::string_view after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return absl::InvalidArgumentError("url: unexpected text after ]");
      port_text = after.substr(1);
    }
  } else {
    size_t colon = hostport.rfind(':');
    out.host = std::string(hostport.substr(0, colon));
    if (colon != std::string_view::npos) port_text = hostport.substr(colon + 1);
  }
  if (out.host.empty()) return absl::InvalidArgumentError("url: the host is missing");
  if (!port_text.empty()) {
    int port = 0;
    auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || ptr != port_text.data() + port_text.size() || port <= 0 ||
        port > 65535) {
      return absl::InvalidArgumentError(
          fmt::format("url: invalid port {:?}", std::string(port_text)));
    }
    out.port = port;
  }
  if (out.user.empty()) {
    return absl::InvalidArgumentError("url: the user is missing (mysql://user@host/database)");
  }
  return out;
}

std::unique_ptr<Source> NewMysqlSource(std::string url, std::string password,
                                       std::string state_schema) {
  return std::make_unique<MysqlSource>(std::move(url), std::move(password),
                                       std::move(state_schema));
}

SourceDefinition MysqlSourceDefinition() {
  SourceDefinition def;
  def.type = "mysql";
  def.title = "MySQL / MariaDB";
  def.description =
      "Runs model SQL on MySQL 5.7+ or MariaDB 10.x and streams the rows unbuffered in a "
      "read-only transaction with the session time zone set to UTC. TINYINT(1) becomes a "
      "boolean, BIGINT UNSIGNED and DECIMAL stay exact decimals, DATETIME becomes an ISO-8601 "
      "timestamp without zone and TIMESTAMP one in UTC (zero dates such as 0000-00-00 become "
      "null), JSON becomes JSON, binary strings become bytes and TIME arrives as text.";
  def.maturity = "beta";
  SettingSpec url;
  url.key = "url";
  url.label = "Connection URL";
  url.description =
      "mysql://user@host:3306/database (mariadb:// also accepted; the port defaults to 3306; "
      "percent-encode special characters in the user or database name; IPv6 hosts in "
      "brackets). Always connects over TCP. Keep the password out of it; use `password`.";
  url.type = SettingType::kString;
  url.required = true;
  def.settings.push_back(url);
  SettingSpec password;
  password.key = "password";
  password.label = "Password";
  password.description =
      "Password of the url's user, e.g. ${env:MYSQL_PASSWORD}; overrides a password in the url.";
  password.type = SettingType::kString;
  password.secret = true;
  def.settings.push_back(password);
  SettingSpec state_schema;
  state_schema.key = "state_schema";
  state_schema.label = "State database";
  state_schema.description =
      "Database (MySQL's schema) where models with `change_detection: warehouse` keep their "
      "checkpoint (one table, `checkpoints`: per mapping and record key, the hash of the row "
      "last delivered and the payload's fingerprint and identity). Created on first use when "
      "missing; the user needs CREATE, SELECT, INSERT, UPDATE, DELETE and CREATE TEMPORARY "
      "TABLES on it (`GRANT ... ON backflow_state.* TO ...`). Give each Backflow deployment "
      "reading this server its own database. Unused by models in local mode.";
  state_schema.type = SettingType::kString;
  state_schema.default_value = "backflow_state";
  def.settings.push_back(state_schema);
  def.warehouse_change_detection = true;
  def.create = [](const nlohmann::json& settings,
                  const ConnectorEnv&) -> absl::StatusOr<std::unique_ptr<Source>> {
    auto url = settings.find("url");
    if (url == settings.end() || !url->is_string() || url->get<std::string>().empty()) {
      return absl::InvalidArgumentError("url: required setting is missing");
    }
    BACKFLOW_RETURN_IF_ERROR(ParseMysqlUrl(url->get<std::string>()).status());
    std::string password;
    auto pw = settings.find("password");
    if (pw != settings.end() && pw->is_string()) password = pw->get<std::string>();
    std::string schema = "backflow_state";
    auto state_schema = settings.find("state_schema");
    if (state_schema != settings.end() && !state_schema->is_null()) {
      if (!state_schema->is_string() || state_schema->get<std::string>().empty() ||
          state_schema->get<std::string>().size() > 64) {
        return absl::InvalidArgumentError(
            "state_schema: must be a database name of 1 to 64 characters, e.g. backflow_state");
      }
      schema = state_schema->get<std::string>();
    }
    return NewMysqlSource(url->get<std::string>(), std::move(password), std::move(schema));
  };
  return def;
}

}  // namespace backflow
