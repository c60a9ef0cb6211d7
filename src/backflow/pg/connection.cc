#include "backflow/pg/connection.h"

#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "backflow/common/sql_identifier.h"
#include "fmt/format.h"

namespace backflow::pg {
namespace {

struct ConninfoDeleter {
  void operator()(PQconninfoOption* options) const { PQconninfoFree(options); }
};

// Collapses libpq's multi-line messages into one line.
std::string OneLine(std::string_view text) {
  std::string out;
  bool space = false;
  for (char c : text) {
    if (c == '\n' || c == '\t' || c == '\r' || c == ' ') {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

// Drops libpq's `connection to server at "h", port p failed: ` prefix (the
// caller names the target itself) and the server's "FATAL:" severity.
std::string ServerPart(std::string message) {
  size_t failed = message.find(" failed: ");
  if (absl::StartsWith(message, "connection to server") && failed != std::string::npos) {
    message.erase(0, failed + 9);
  }
  for (const char* severity : {"FATAL: ", "ERROR: "}) {
    if (absl::StartsWith(message, severity)) message.erase(0, std::string(severity).size());
  }
  return message;
}

std::string Target(PGconn* conn) {
  std::string host = PQhost(conn) != nullptr ? PQhost(conn) : "";
  std::string port = PQport(conn) != nullptr ? PQport(conn) : "";
  if (host.empty()) host = "localhost";
  if (port.empty()) port = "5432";
  if (absl::StartsWith(host, "/")) return fmt::format("{} (socket, port {})", host, port);
  return fmt::format("{}:{}", host, port);
}

absl::Status ConnectError(const std::string& server, const std::string& target,
                          std::string message) {
  message = ServerPart(OneLine(message));
  if (absl::StrContains(message, "password authentication failed") ||
      absl::StrContains(message, "no password supplied") ||
      absl::StrContains(message, "authentication failed") ||
      (absl::StrContains(message, "role \"") && absl::StrContains(message, "does not exist")) ||
      absl::StrContains(message, "pg_hba.conf")) {
    return absl::UnauthenticatedError(
        fmt::format("{} at {} rejected the login: {}. Check the user in `url` and the "
                    "password (the `password` setting or the url)",
                    server, target, message));
  }
  if (absl::StrContains(message, "database \"") && absl::StrContains(message, "does not exist")) {
    return absl::FailedPreconditionError(
        fmt::format("{} at {}: {}. Check the database name in `url`", server, target, message));
  }
  if (absl::StrContains(message, "permission denied")) {
    return absl::PermissionDeniedError(fmt::format("{} at {}: {}", server, target, message));
  }
  return absl::UnavailableError(
      fmt::format("cannot connect to {} at {}: {}. Check the host and port in `url` and that the "
                  "server accepts connections",
                  server, target, message));
}

}  // namespace

absl::StatusCode CodeForSqlState(std::string_view s) {
  if (s.size() != 5) return absl::StatusCode::kUnknown;
  std::string_view cls = s.substr(0, 2);
  if (cls == "28") return absl::StatusCode::kUnauthenticated;
  if (s == "3D000" || s == "3F000") return absl::StatusCode::kFailedPrecondition;
  if (s == "42501") return absl::StatusCode::kPermissionDenied;
  if (s == "57014") return absl::StatusCode::kDeadlineExceeded;
  if (cls == "08" || cls == "53" || s == "57P01" || s == "57P02" || s == "57P03" || s == "40001" ||
      s == "40P01" || s == "55P03") {
    return absl::StatusCode::kUnavailable;
  }
  if (cls == "42" || cls == "21" || cls == "22" || cls == "23" || cls == "54" || cls == "P0" ||
      s == "0A000" || s == "25006" || cls == "2F" || cls == "39" || cls == "44") {
    return absl::StatusCode::kInvalidArgument;
  }
  if (cls == "XX") return absl::StatusCode::kInternal;
  return absl::StatusCode::kUnknown;
}

std::string QuoteIdentifier(std::string_view name) { return QuoteSqlIdentifier(name); }

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const ConnectOptions& options) {
  std::vector<std::string> secrets;
  if (!options.password.empty()) secrets.push_back(options.password);

  // Validate the url and find any password in it (so messages can hide it).
  char* parse_error = nullptr;
  std::unique_ptr<PQconninfoOption, ConninfoDeleter> parsed(
      PQconninfoParse(options.url.c_str(), &parse_error));
  if (parsed == nullptr) {
    std::string message = parse_error != nullptr ? OneLine(parse_error) : "out of memory";
    if (parse_error != nullptr) PQfreemem(parse_error);
    Connection scrubber(nullptr, "", secrets);
    // The url itself may hold a password: never echo it.
    return absl::InvalidArgumentError(
        fmt::format("invalid PostgreSQL url ({}); expected postgresql://user@host:port/database "
                    "or \"host=... port=... dbname=... user=...\"",
                    scrubber.Scrub(message)));
  }
  for (PQconninfoOption* o = parsed.get(); o->keyword != nullptr; ++o) {
    if (std::string_view(o->keyword) == "password" && o->val != nullptr && o->val[0] != '\0') {
      secrets.push_back(o->val);
    }
  }

  std::string timeout = std::to_string(std::max(2, options.connect_timeout_seconds));
  std::vector<const char*> keys;
  std::vector<const char*> values;
  auto add = [&](const char* key, const char* value) {
    keys.push_back(key);
    values.push_back(value);
  };
  // Keywords before the url are overridden by it; those after override it.
  for (const auto& [key, value] : options.defaults) add(key.c_str(), value.c_str());
  add("dbname", options.url.c_str());
  for (const auto& [key, value] : options.overrides) add(key.c_str(), value.c_str());
  if (!options.password.empty()) add("password", options.password.c_str());
  add("connect_timeout", timeout.c_str());
  add("fallback_application_name", "backflow");
  add("keepalives", "1");
  add("keepalives_idle", "30");
  add("keepalives_interval", "10");
  add("keepalives_count", "3");
  keys.push_back(nullptr);
  values.push_back(nullptr);

  PGconn* raw = PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1);
  if (raw == nullptr) return absl::ResourceExhaustedError("libpq could not allocate a connection");
  std::string target = Target(raw);
  std::unique_ptr<Connection> conn(
      new Connection(raw, target, std::move(secrets), options.server_name));
  if (PQstatus(raw) != CONNECTION_OK) {
    absl::Status status = ConnectError(options.server_name, target, PQerrorMessage(raw));
    return absl::Status(status.code(), conn->Scrub(std::string(status.message())));
  }

  if (!options.settings.empty()) {
    std::string sql = "SELECT ";
    std::vector<const char*> params;
    for (size_t i = 0; i < options.settings.size(); ++i) {
      if (i > 0) sql += ", ";
      sql += fmt::format("set_config(${}, ${}, false)", 2 * i + 1, 2 * i + 2);
      params.push_back(options.settings[i].first.c_str());
      params.push_back(options.settings[i].second.c_str());
    }
    absl::StatusOr<Result> result = conn->Exec(sql, params, "applying session settings failed");
    if (!result.ok()) return result.status();
  }
  return conn;
}

Connection::Connection(PGconn* conn, std::string target, std::vector<std::string> secrets,
                       std::string server_name)
    : conn_(conn),
      target_(std::move(target)),
      server_name_(std::move(server_name)),
      secrets_(std::move(secrets)) {}

Connection::~Connection() {
  if (conn_ != nullptr) PQfinish(conn_);
}

absl::StatusOr<Result> Connection::Exec(const std::string& sql,
                                        const std::vector<const char*>& params,
                                        std::string_view what) {
  Result result(PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), nullptr,
                             params.data(), nullptr, nullptr, /*resultFormat=*/0));
  ExecStatusType st = result != nullptr ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return result;
  return ErrorFromResult(result.get(), what);
}

absl::StatusOr<Result> Connection::ExecParams(const std::string& sql,
                                              const std::vector<Param>& params, bool binary_result,
                                              std::string_view what) {
  std::vector<Oid> types;
  std::vector<const char*> values;
  std::vector<int> lengths;
  std::vector<int> formats;
  types.reserve(params.size());
  values.reserve(params.size());
  lengths.reserve(params.size());
  formats.reserve(params.size());
  for (const Param& p : params) {
    types.push_back(p.type);
    values.push_back(p.null ? nullptr : p.value.c_str());
    lengths.push_back(static_cast<int>(p.value.size()));
    formats.push_back(p.binary ? 1 : 0);
  }
  Result result(PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), types.data(),
                             values.data(), lengths.data(), formats.data(), binary_result ? 1 : 0));
  ExecStatusType st = result != nullptr ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return result;
  return ErrorFromResult(result.get(), what);
}

std::string BinaryArray(Oid element_type, const std::vector<std::string_view>& elements) {
  std::string out;
  size_t size = 20;
  for (std::string_view e : elements) size += 4 + e.size();
  out.reserve(size);
  auto put32 = [&out](uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(v >> shift));
  };
  put32(elements.empty() ? 0 : 1);  // dimensions
  put32(0);                         // no NULLs
  put32(element_type);
  if (elements.empty()) return out;
  put32(static_cast<uint32_t>(elements.size()));
  put32(1);  // lower bound
  for (std::string_view e : elements) {
    put32(static_cast<uint32_t>(e.size()));
    out.append(e.data(), e.size());
  }
  return out;
}

std::string BinaryInt8(int64_t value) {
  std::string out(8, '\0');
  auto v = static_cast<uint64_t>(value);
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return out;
}

absl::Status Connection::ErrorFromResult(const PGresult* result, std::string_view what,
                                         int position_offset) const {
  const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  if (state == nullptr) {
    // Client-side failure: no SQLSTATE. Usually the connection is gone.
    std::string message =
        OneLine(result != nullptr ? PQresultErrorMessage(result) : PQerrorMessage(conn_));
    if (message.empty()) message = OneLine(PQerrorMessage(conn_));
    if (broken() || message.empty() || absl::StrContains(message, "connection") ||
        absl::StrContains(message, "server closed")) {
      return absl::UnavailableError(
          Scrub(fmt::format("{}: lost the connection to {} at {}: {}", what, server_name_, target_,
                            message.empty() ? "no response" : message)));
    }
    return absl::UnknownError(Scrub(fmt::format("{}: {}", what, message)));
  }
  auto field = [&](int code) -> std::string {
    const char* v = PQresultErrorField(result, code);
    return v != nullptr ? OneLine(v) : "";
  };
  std::string primary = field(PG_DIAG_MESSAGE_PRIMARY);
  std::string message = fmt::format("{}: {} at {} reported: {} (SQLSTATE {}", what, server_name_,
                                    target_, primary, state);
  std::string position = field(PG_DIAG_STATEMENT_POSITION);
  if (!position.empty()) {
    int at = std::atoi(position.c_str()) - position_offset;
    if (at > 0) message += fmt::format(", at character {}", at);
  }
  message += ")";
  std::string detail = field(PG_DIAG_MESSAGE_DETAIL);
  if (!detail.empty()) message += ". Detail: " + detail;
  std::string hint = field(PG_DIAG_MESSAGE_HINT);
  if (!hint.empty()) message += ". Hint: " + hint;
  absl::StatusCode code = CodeForSqlState(state);
  if (code == absl::StatusCode::kUnauthenticated) {
    message += ". Check the user and password";
  }
  return absl::Status(code, Scrub(std::move(message)));
}

std::string Connection::Scrub(std::string text) const {
  for (const std::string& secret : secrets_) {
    if (!secret.empty()) text = absl::StrReplaceAll(text, {{secret, "********"}});
  }
  return text;
}

}  // namespace backflow::pg
