// pg::Connection: a libpq connection with Backflow's error conventions.
//
// Used by the PostgreSQL source and destination. Open() connects from a user
// `url` (a postgresql:// URI or a key=value conninfo string) plus an optional
// separate password, with a short connect timeout, TCP keepalives and
// `fallback_application_name=backflow`, then applies the requested session
// settings. Every failure becomes an absl::Status whose code follows
// common/errors.h:
//   kInvalidArgument    malformed url; SQL the server rejects (syntax, unknown
//                       column/table: message and position from the server);
//                       data errors (SQLSTATE classes 21, 22, 23)
//   kUnauthenticated    bad user/password (SQLSTATE 28xxx)
//   kPermissionDenied   missing privileges (42501)
//   kFailedPrecondition unknown database (3D000) or schema (3F000)
//   kUnavailable        cannot connect, connection lost, server shutting down,
//                       serialization failure or deadlock (retryable)
//   kDeadlineExceeded   statement cancelled or timed out (57014)
//   kInternal/kUnknown  anything else
// Messages name the server as ConnectOptions::server_name ("PostgreSQL" by
// default; wire-compatible warehouses pass their own name). No message ever
// contains the password (neither the separate one nor one embedded in the
// url). A Connection is used from one thread at a time.
#pragma once

#include <libpq-fe.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace backflow::pg {

struct ResultDeleter {
  void operator()(PGresult* result) const { PQclear(result); }
};
// An owned PGresult.
using Result = std::unique_ptr<PGresult, ResultDeleter>;

// A parameter of Connection::ExecParams.
struct Param {
  std::string value;
  // `value` is the binary send format of `type` (e.g. a bytea's raw bytes, an
  // int8 in network byte order, an array built by BinaryArray()) instead of
  // its text form. Type OIDs are in types.h.
  bool binary = false;
  bool null = false;
  // The parameter's type OID; 0 lets the server infer it (text parameters only).
  Oid type = 0;

  static Param Text(std::string v) { return Param{std::move(v), false, false, 0}; }
  static Param Binary(std::string v, Oid type) { return Param{std::move(v), true, false, type}; }
  static Param Null() { return Param{"", false, true, 0}; }
};

// The binary send format of a one-dimensional array without NULLs whose
// elements (of type `element_type`) are already in their binary send format.
std::string BinaryArray(Oid element_type, const std::vector<std::string_view>& elements);
// An int8 in its binary send format (8 bytes, network byte order).
std::string BinaryInt8(int64_t value);
// Reads an int8 (or int4/int2, by size) received in binary format (network
// byte order, sign-extended). Inline: the binary COPY decoder reads every
// field's length and every integer cell through it.
inline int64_t FromBinaryInt(const char* data, int length) {
  uint64_t v = 0;
  for (int i = 0; i < length; ++i) v = (v << 8) | static_cast<unsigned char>(data[i]);
  // Sign-extend values narrower than 8 bytes.
  if (length > 0 && length < 8 && (static_cast<unsigned char>(data[0]) & 0x80) != 0) {
    v |= ~uint64_t{0} << (8 * length);
  }
  return static_cast<int64_t>(v);
}

struct ConnectOptions {
  // postgresql:// URI or conninfo string. May embed a password.
  std::string url;
  // When not empty, overrides any password in `url`.
  std::string password;
  // libpq's connect_timeout (seconds; libpq treats values below 2 as 2).
  int connect_timeout_seconds = 10;
  // Session settings applied right after connecting, as (name, value) pairs,
  // e.g. {"TimeZone", "UTC"}. Applied in one round trip with set_config().
  std::vector<std::pair<std::string, std::string>> settings;
  // libpq connection keywords (e.g. {"port", "5439"}): `defaults` apply
  // unless the url sets the same keyword; `overrides` win over the url.
  std::vector<std::pair<std::string, std::string>> defaults;
  std::vector<std::pair<std::string, std::string>> overrides;
  // How messages name the server ("PostgreSQL at host:port ...").
  std::string server_name = "PostgreSQL";
};

class Connection {
 public:
  // Connects and applies `options.settings`. See the header comment for the
  // status codes.
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const ConnectOptions& options);

  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  PGconn* get() const { return conn_; }
  // "host:port" of the server, for messages.
  const std::string& target() const { return target_; }
  // True once libpq considers the connection unusable (e.g. the server went away).
  bool broken() const { return PQstatus(conn_) != CONNECTION_OK; }

  // Runs `sql` with text parameters (nullptr = SQL NULL) and returns the
  // result when it succeeded (COMMAND_OK or TUPLES_OK); otherwise the
  // classified error, prefixed by `what`.
  absl::StatusOr<Result> Exec(const std::string& sql, const std::vector<const char*>& params = {},
                              std::string_view what = "query failed");

  // Like Exec, with each parameter in text or binary format (see Param), and
  // every result column in binary format when `binary_result` is true.
  absl::StatusOr<Result> ExecParams(const std::string& sql, const std::vector<Param>& params,
                                    bool binary_result = false,
                                    std::string_view what = "query failed");

  // The classified error carried by a failed `result` of this connection (or,
  // when `result` is null, by the connection itself). `what` prefixes the
  // message ("query failed"). The server's error position is reported minus
  // `position_offset` (the length of text the caller put before the user's
  // SQL), and left out when it falls inside that text.
  absl::Status ErrorFromResult(const PGresult* result, std::string_view what,
                               int position_offset = 0) const;

  // Removes every known secret from `text`.
  std::string Scrub(std::string text) const;

 private:
  Connection(PGconn* conn, std::string target, std::vector<std::string> secrets,
             std::string server_name = "PostgreSQL");

  PGconn* conn_;
  std::string target_;
  std::string server_name_;
  std::vector<std::string> secrets_;
};

// The status code for a SQLSTATE (five characters), per the header comment.
absl::StatusCode CodeForSqlState(std::string_view sqlstate);

// `name` as a double-quoted SQL identifier ("a""b").
std::string QuoteIdentifier(std::string_view name);

}  // namespace backflow::pg
