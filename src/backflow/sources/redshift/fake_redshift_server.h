// FakeRedshiftServer: a "Redshift personality" in front of a real PostgreSQL
// server, for tests (../shared/reference/warehouses.md §4.1, §7).
//
// Design: no emulator of Redshift exists, and PostgreSQL 15 speaks the same
// v3 wire protocol but accepts much that Redshift refuses. So this is a
// loopback TCP proxy that relays the PostgreSQL protocol between a client
// (libpq) and the PostgreSQL server of the ctest `postgres` fixture, parses
// every message in both directions and enforces Redshift's restrictions;
// queries, authentication (SCRAM passes through), types and errors are
// otherwise PostgreSQL's own. Enforced, with Redshift's error where known:
//   * COPY ... TO STDOUT / COPY (query) ... / COPY ... FROM STDIN: refused
//     with SQLSTATE 42601 `syntax error at or near "(" in context "COPY (",
//     at line 1` (the token and context as Redshift reports them: "(" for
//     COPY (query), "STDIN" for FROM STDIN, "TO" for table TO; the last two
//     unverified). Should PostgreSQL ever start a COPY anyway
//     (CopyOut/CopyIn response), the proxy counts a violation and cuts the
//     connection, so a client relying on COPY always fails.
//   * DECLARE: only `DECLARE name CURSOR FOR query` (no BINARY, SCROLL,
//     NO SCROLL, INSENSITIVE, WITH HOLD: 42601 at the unexpected word); one
//     open cursor per session (a second DECLARE before CLOSE/COMMIT/ROLLBACK
//     fails with 0A000, message unverified); outside a transaction block
//     PostgreSQL itself answers 25P01.
//   * FETCH: only `FETCH [NEXT | ALL | FORWARD [count | ALL]] FROM cursor`
//     (BACKWARD, PRIOR, ABSOLUTE, a bare count... are 42601). With
//     `single_node`, count above 1000 and ALL are refused (0A000).
//   * SET / RESET: only Redshift's configuration parameters; others fail
//     with 42704 `unrecognized configuration parameter "x"`;
//     extra_float_digits must be -15..2 (22023). Redshift-only parameters
//     (query_group, wlm_query_slot_count, ...) are rewritten to
//     `redshift_fake.<name>` so PostgreSQL accepts them. A literal
//     set_config('x', ...) and set_config($n, ...) with a bound name are
//     checked the same way.
//   * BEGIN / START TRANSACTION: only ISOLATION LEVEL, READ WRITE, READ ONLY.
//   * Binary results (a Bind asking for result format 1): refused (0A000).
//   * The ParameterStatus server_version is reported as "8.0.2" (libpq's
//     PQserverVersion() is then 80002).
//   * SSLRequest / GSSENCRequest are declined ('N'): TLS is not emulated, so
//     tests use sslmode=disable; sslmode=require fails as against a server
//     without TLS.
//   * CancelRequest is relayed to PostgreSQL and counted.
//   * Redshift SQL that change_detection: warehouse issues, rewritten for
//     PostgreSQL: COLLATE case_sensitive | cs -> COLLATE "C" (byte order);
//     (SELECT JSON_PARSE($n) AS elements) AS a_array, a_array.elements AS a
//     (a SUPER array unnested in FROM) -> json_array_elements($n::json) AS
//     a, with CAST(a AS VARCHAR(65535)) -> (a #>> '{}') and CAST(a[k] AS
//     VARCHAR(65535)) -> (a ->> k); JSON_SERIALIZE(x) -> pg_catalog.text(x).
//     Refused as Redshift refuses them: IS
//     [NOT] DISTINCT FROM (XX000 "Not implemented", Redshift's error 1001)
//     and any other COLLATE than case_sensitive/cs/case_insensitive/ci
//     (42704, message unverified).
// A refused statement refuses its whole simple-query message (PostgreSQL,
// like Redshift, parses every statement of a message before running any);
// the proxy substitutes a statement PostgreSQL fails to parse, so the
// transaction state stays consistent, and replaces PostgreSQL's error with
// the Redshift one. Column type OIDs in RowDescription can be rewritten by
// column name (e.g. a text column reported as SUPER 4000) so Redshift-only
// types can be tested.
// Injected failures (the brief's §0.6): an error on the n-th statement of a
// kind (e.g. serializable isolation violation, XX000 "1023", on DECLARE or
// FETCH), dropping the connection when a statement arrives, and dropping it
// after K rows (DataRow messages) were relayed on a connection.
// Everything observed is recorded: statements (with refusals), FETCH counts,
// the largest number of rows in one response, cancel requests, sessions.
//
// Thread-safety: every public method is thread-safe. Each client connection
// is served on its own thread. Stop() (also run by the destructor) closes
// every connection and joins all threads.
#pragma once

#include <libpq-fe.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace backflow {

struct FakeRedshiftOptions {
  // The PostgreSQL server the proxy relays to.
  std::string upstream_host = "127.0.0.1";
  int upstream_port = 0;
  std::string server_version = "8.0.2";
  // Single-node cluster limits: FETCH count at most 1000, no FETCH ALL.
  bool single_node = false;
  // Column name -> type OID reported in RowDescription instead of
  // PostgreSQL's (e.g. {"payload", 4000} for SUPER).
  std::map<std::string, Oid> column_types;
};

// A failure injected when a statement of a kind arrives.
struct FakeRedshiftFault {
  // First keyword of the statement, uppercase: "FETCH", "DECLARE", "SELECT"...
  std::string statement;
  // Matching statements let through before the first failure.
  int skip = 0;
  // Matching statements that fail (then the fault is spent).
  int times = 1;
  // The error sent instead of running the message...
  std::string sqlstate = "XX000";
  std::string message;
  std::string detail;
  // ...or the connection is cut without an answer.
  bool drop_connection = false;

  // Redshift's serializable isolation violation: XX000, message "1023".
  static FakeRedshiftFault SerializableViolation(std::string statement, int skip = 0,
                                                 int times = 1);
  static FakeRedshiftFault ConnectionLoss(std::string statement, int skip = 0, int times = 1);
};

// One statement as a client sent it.
struct FakeRedshiftStatement {
  int64_t session = 0;  // 1-based, in connection order
  std::string sql;
  bool refused = false;  // by a restriction or an injected fault
  std::string error;     // the refusal's message
};

class FakeRedshiftServer {
 public:
  explicit FakeRedshiftServer(FakeRedshiftOptions options);
  ~FakeRedshiftServer();
  FakeRedshiftServer(const FakeRedshiftServer&) = delete;
  FakeRedshiftServer& operator=(const FakeRedshiftServer&) = delete;

  // Binds 127.0.0.1 on an ephemeral port and starts accepting.
  absl::Status Start();
  void Stop();
  int port() const { return port_; }
  // postgresql://<user>@127.0.0.1:<port>/<database>
  std::string Url(std::string_view user, std::string_view database) const;

  // --- Scripting ---------------------------------------------------------
  void AddFault(FakeRedshiftFault fault);
  void ClearFaults();
  // Cuts a connection right after it relayed `rows` DataRow messages (0:
  // never). Applies to every connection, counting each from its start.
  void DropAfterRows(int64_t rows);

  // --- Inspection --------------------------------------------------------
  std::vector<FakeRedshiftStatement> Statements() const;
  // Statements whose first keyword is `keyword` (uppercase).
  int CountStatements(std::string_view keyword) const;
  // The row count of every FETCH relayed (-1 for ALL), in order.
  std::vector<int64_t> FetchCounts() const;
  // The most DataRow messages in one response (between two ReadyForQuery).
  int64_t max_rows_per_response() const;
  int64_t cancel_requests() const;
  int64_t sessions() const;       // startup packets relayed
  int64_t open_sessions() const;  // client connections still open
  // COPY started by PostgreSQL despite the restrictions (must stay 0).
  int64_t violations() const;
  // Forgets statements and counters (not faults or settings).
  void ClearHistory();

 private:
  struct Session;
  void AcceptLoop();
  void Serve(int client_fd);
  // Inspects one query string; see fake_redshift_server.cc.
  struct Verdict;
  Verdict Inspect(Session& session, const std::string& sql, bool extended);
  void Record(FakeRedshiftStatement statement);

  FakeRedshiftOptions options_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread acceptor_;
  std::atomic<bool> stopping_{false};

  mutable std::mutex mu_;
  std::vector<std::thread> workers_;
  std::vector<int> open_fds_;
  std::vector<FakeRedshiftFault> faults_;
  std::map<size_t, int> fault_seen_;  // fault index -> matching statements so far
  int64_t drop_after_rows_ = 0;
  std::vector<FakeRedshiftStatement> statements_;
  std::vector<int64_t> fetch_counts_;
  int64_t max_rows_per_response_ = 0;
  int64_t cancel_requests_ = 0;
  int64_t sessions_ = 0;
  int64_t open_sessions_ = 0;
  int64_t violations_ = 0;
};

}  // namespace backflow
