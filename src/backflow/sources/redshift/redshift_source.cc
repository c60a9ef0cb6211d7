#include "backflow/sources/redshift/redshift_source.h"

#include <poll.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "backflow/common/clock.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/status_macros.h"
#include "backflow/pg/connection.h"
#include "backflow/pg/types.h"
#include "backflow/sources/redshift/redshift_change_detection.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kCursorName[] = "backflow_cursor";
constexpr char kSystemCaBundle[] = "/etc/ssl/certs/ca-certificates.crt";
constexpr int kMaxFetchSize = 100000;

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }
bool IsIdentStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         static_cast<unsigned char>(c) >= 0x80;
}
bool IsIdentChar(char c) { return IsIdentStart(c) || (c >= '0' && c <= '9') || c == '$'; }

// Characters (not bytes) in UTF-8 `text`: server error positions count
// characters.
int Utf8Chars(std::string_view text) {
  int n = 0;
  for (char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

std::string NormalizeUrl(const std::string& url) {
  for (std::string_view prefix : {"jdbc:redshift://", "redshift://"}) {
    if (absl::AsciiStrToLower(url.substr(0, prefix.size())) == prefix) {
      return "postgresql://" + url.substr(prefix.size());
    }
  }
  return url;
}

pg::ConnectOptions ConnectOptionsFor(const RedshiftConfig& config,
                                     const RedshiftDbCredentials* iam) {
  pg::ConnectOptions options;
  options.url = NormalizeUrl(config.url);
  options.password = iam != nullptr ? iam->password : config.password;
  options.connect_timeout_seconds = config.connect_timeout_s;
  options.server_name = "Redshift";
  options.defaults = {{"port", "5439"}};
  options.overrides = {{"sslmode", config.sslmode}};
  if (iam != nullptr) options.overrides.emplace_back("user", iam->user);
  if (config.sslmode == "verify-ca" || config.sslmode == "verify-full") {
    std::string root = config.sslrootcert;
    std::error_code ec;
    if (root.empty() && std::filesystem::exists(kSystemCaBundle, ec)) root = kSystemCaBundle;
    if (!root.empty()) options.overrides.emplace_back("sslrootcert", root);
  }
  return options;
}

absl::StatusOr<std::unique_ptr<pg::Connection>> ConnectWith(const RedshiftConfig& config,
                                                            RedshiftIamCredentials* iam) {
  if (iam == nullptr) {
    absl::StatusOr<std::unique_ptr<pg::Connection>> conn =
        pg::Connection::Open(ConnectOptionsFor(config, nullptr));
    if (!conn.ok()) return ClassifyRedshiftError(conn.status());
    return conn;
  }
  BACKFLOW_ASSIGN_OR_RETURN(RedshiftDbCredentials creds, iam->Get());
  absl::StatusOr<std::unique_ptr<pg::Connection>> conn =
      pg::Connection::Open(ConnectOptionsFor(config, &creds));
  if (conn.ok() || conn.status().code() != absl::StatusCode::kUnauthenticated) {
    if (!conn.ok()) return ClassifyRedshiftError(conn.status());
    return conn;
  }
  // The cached password may have been revoked or expired early: one new one.
  BACKFLOW_ASSIGN_OR_RETURN(creds, iam->Refresh());
  conn = pg::Connection::Open(ConnectOptionsFor(config, &creds));
  if (!conn.ok()) {
    absl::Status s = ClassifyRedshiftError(conn.status());
    if (s.code() == absl::StatusCode::kUnauthenticated) {
      return absl::UnauthenticatedError(fmt::format(
          "{}. Redshift refused the temporary IAM password for user \"{}\": check that the "
          "database user exists (or that it may be created) and that the url names the right "
          "database",
          s.message(), creds.user));
    }
    return s;
  }
  return conn;
}

// Runs `sql` with the simple-query protocol (text results; several
// statements allowed) and returns the last result, or the classified error.
absl::StatusOr<pg::Result> ExecSimple(pg::Connection& conn, const std::string& sql,
                                      std::string_view what, int position_offset = 0) {
  pg::Result result(PQexec(conn.get(), sql.c_str()));
  ExecStatusType st = result != nullptr ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return result;
  if (st == PGRES_COPY_OUT || st == PGRES_COPY_IN || st == PGRES_COPY_BOTH) {
    return absl::InternalError(fmt::format("{}: Redshift unexpectedly started a COPY", what));
  }
  return ClassifyRedshiftError(conn.ErrorFromResult(result.get(), what, position_offset));
}

// Asks the server to stop the running statement (best effort).
void CancelRunning(PGconn* conn) {
  if (PGcancel* cancel = PQgetCancel(conn); cancel != nullptr) {
    char buf[256];
    PQcancel(cancel, buf, sizeof(buf));
    PQfreeCancel(cancel);
  }
}

// Reads and discards results until the connection is idle. False when
// `deadline` passed first or the connection broke.
bool DrainUntil(PGconn* conn, std::chrono::steady_clock::time_point deadline) {
  while (true) {
    if (PQconsumeInput(conn) == 0) return false;
    while (PQisBusy(conn) == 0) {
      PGresult* result = PQgetResult(conn);
      if (result == nullptr) return true;
      PQclear(result);
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{PQsocket(conn), POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000))) < 0 &&
        errno != EINTR) {
      return false;
    }
  }
}

// Cancels the running statement and drains its results until `deadline`,
// repeating the cancel every half second: a cancel request that reaches the
// server before the statement has started (still in the socket, or queued
// behind the previous one) is ignored by the server. False when `deadline`
// passed first or the connection broke.
bool CancelAndDrain(PGconn* conn, std::chrono::steady_clock::time_point deadline) {
  constexpr auto kResendEvery = std::chrono::milliseconds(500);
  while (true) {
    CancelRunning(conn);
    const auto now = std::chrono::steady_clock::now();
    const auto slice = std::min(deadline, now + kResendEvery);
    if (DrainUntil(conn, slice)) return true;
    // Before the slice ended: the connection broke.
    if (std::chrono::steady_clock::now() < slice || slice == deadline) return false;
  }
}

// ExecSimple() for a statement that may run long (the first FETCH, which
// materialises the result on Redshift): sends it and waits for the answer
// at most a second at a time, checking `cancel` (QueryOptions::cancel) in
// between; once set, the statement is cancelled (PQcancel), its results
// drained for at most `cancel_wait`, and kCancelled returned.
absl::StatusOr<pg::Result> ExecCancellable(pg::Connection& conn, const std::string& sql,
                                           std::string_view what, const std::atomic<bool>* cancel,
                                           std::chrono::milliseconds cancel_wait) {
  if (cancel == nullptr) return ExecSimple(conn, sql, what);
  PGconn* c = conn.get();
  if (PQsendQuery(c, sql.c_str()) != 1) {
    return ClassifyRedshiftError(conn.ErrorFromResult(nullptr, what));
  }
  while (true) {
    if (PQconsumeInput(c) == 0) break;  // the error surfaces from PQgetResult
    if (PQisBusy(c) == 0) break;
    if (QueryCancelRequested(cancel)) {
      CancelAndDrain(c, std::chrono::steady_clock::now() + cancel_wait);
      return QueryCancelledError("the Redshift query");
    }
    pollfd p{PQsocket(c), POLLIN, 0};
    if (poll(&p, 1, 1000) < 0 && errno != EINTR) break;
  }
  // The last result is the statement's (one statement: nothing else follows).
  pg::Result result;
  while (pg::Result next{PQgetResult(c)}) result = std::move(next);
  ExecStatusType st = result != nullptr ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return result;
  return ClassifyRedshiftError(conn.ErrorFromResult(result.get(), what));
}

// FETCH FORWARD batches from the session's one cursor, one batch ahead.
class RedshiftCursorReader : public RowReader {
 public:
  RedshiftCursorReader(std::unique_ptr<pg::Connection> conn, pg::Result first,
                       const RedshiftConfig& config, const std::atomic<bool>* cancel)
      : conn_(std::move(conn)),
        cancel_(cancel),
        fetch_sql_(fmt::format("FETCH FORWARD {} FROM {}", config.fetch_size, kCursorName)),
        fetch_size_(config.fetch_size),
        cancel_wait_(config.cancel_wait) {
    int n = PQnfields(first.get());
    schema_.reserve(n);
    oids_.reserve(n);
    for (int i = 0; i < n; ++i) {
      Oid oid = PQftype(first.get(), i);
      oids_.push_back(oid);
      schema_.push_back(Column{PQfname(first.get(), i), RedshiftValueTypeForOid(oid),
                               RedshiftTypeName(oid, PQfmod(first.get(), i))});
    }
    TakeBatch(std::move(first));
  }

  ~RedshiftCursorReader() override {
    if (done_ || conn_->broken()) return;
    Abandon();
  }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!error_.ok()) return error_;
    if (done_) return false;
    while (next_row_ >= batch_rows_) {
      batch_.reset();
      if (!pending_.ok()) return Fail(pending_);
      if (last_batch_) return Finish();
      // Dropping the reader then cancels the FETCH in flight.
      if (QueryCancelRequested(cancel_)) return Fail(QueryCancelledError("the Redshift query"));
      absl::StatusOr<pg::Result> batch = ReceiveFetch();
      if (!batch.ok()) return Fail(batch.status());
      TakeBatch(*std::move(batch));
    }
    row.resize(oids_.size());
    for (size_t i = 0; i < oids_.size(); ++i) {
      int col = static_cast<int>(i);
      if (PQgetisnull(batch_.get(), next_row_, col)) {
        row[i] = Value::Null();
      } else {
        row[i] = DecodeRedshiftText(oids_[i],
                                    std::string_view(PQgetvalue(batch_.get(), next_row_, col),
                                                     PQgetlength(batch_.get(), next_row_, col)));
      }
    }
    ++next_row_;
    return true;
  }

 private:
  // Makes `batch` current and, unless it is the last, sends the next FETCH.
  void TakeBatch(pg::Result batch) {
    batch_ = std::move(batch);
    batch_rows_ = PQntuples(batch_.get());
    next_row_ = 0;
    last_batch_ = batch_rows_ < fetch_size_;
    if (!last_batch_) {
      if (PQsendQuery(conn_->get(), fetch_sql_.c_str()) == 1) {
        in_flight_ = true;
      } else {
        // Reported once the rows already received are handed out.
        pending_ =
            ClassifyRedshiftError(conn_->ErrorFromResult(nullptr, "fetching the next rows failed"));
      }
    }
  }

  absl::StatusOr<pg::Result> ReceiveFetch() {
    in_flight_ = false;
    pg::Result result(PQgetResult(conn_->get()));
    ExecStatusType st = result != nullptr ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
    absl::Status status;
    if (result == nullptr) {
      status = conn_->ErrorFromResult(nullptr, "query ended unexpectedly");
    } else if (st != PGRES_TUPLES_OK) {
      status = conn_->ErrorFromResult(result.get(), "query failed while fetching rows");
    } else if (PQnfields(result.get()) != static_cast<int>(oids_.size())) {
      status = absl::InternalError(fmt::format("FETCH returned {} columns where the cursor has {}",
                                               PQnfields(result.get()), oids_.size()));
    }
    // The FETCH is one statement: nothing but the end should follow.
    while (pg::Result extra{PQgetResult(conn_->get())}) {
    }
    if (!status.ok()) return ClassifyRedshiftError(status);
    return result;
  }

  absl::StatusOr<bool> Finish() {
    absl::StatusOr<pg::Result> closed =
        ExecSimple(*conn_, fmt::format("CLOSE {}; COMMIT", kCursorName),
                   "ending the read-only transaction failed");
    if (!closed.ok()) return Fail(closed.status());
    done_ = true;
    return false;
  }

  absl::Status Fail(absl::Status status) {
    error_ = std::move(status);
    batch_.reset();
    batch_rows_ = 0;
    next_row_ = 0;
    return error_;
  }

  // Stops a FETCH in flight and ends the transaction, each within
  // cancel_wait; the connection is closed by the destructor either way.
  void Abandon() {
    PGconn* conn = conn_->get();
    if (in_flight_) {
      // Cancel only a FETCH the server is still working on.
      if (PQconsumeInput(conn) == 0) return;
      const auto deadline = std::chrono::steady_clock::now() + cancel_wait_;
      const bool drained =
          PQisBusy(conn) != 0 ? CancelAndDrain(conn, deadline) : DrainUntil(conn, deadline);
      if (!drained) return;
      in_flight_ = false;
    }
    const char* sql = nullptr;
    std::string close_and_rollback = fmt::format("CLOSE {}; ROLLBACK", kCursorName);
    switch (PQtransactionStatus(conn)) {
      case PQTRANS_INTRANS:
        sql = close_and_rollback.c_str();
        break;
      case PQTRANS_INERROR:
        sql = "ROLLBACK";
        break;
      default:
        break;
    }
    if (sql != nullptr && PQsendQuery(conn, sql) == 1) {
      DrainUntil(conn, std::chrono::steady_clock::now() + cancel_wait_);
    }
  }

  std::unique_ptr<pg::Connection> conn_;
  const std::atomic<bool>* const cancel_;
  const std::string fetch_sql_;
  const int fetch_size_;
  const std::chrono::milliseconds cancel_wait_;
  Schema schema_;
  std::vector<Oid> oids_;
  pg::Result batch_;
  int batch_rows_ = 0;
  int next_row_ = 0;
  bool last_batch_ = false;
  bool in_flight_ = false;  // a FETCH was sent and its result not yet read
  bool done_ = false;
  absl::Status pending_;  // failure to report once the current batch is out
  absl::Status error_;
};

// Connections of change detection: one is reused while idle; a reader
// holds its own until it reaches its end.
struct RedshiftConnectionPool {
  std::function<absl::StatusOr<std::unique_ptr<pg::Connection>>()> connect;
  std::string session_sql;
  std::unique_ptr<pg::Connection> idle;

  absl::StatusOr<std::unique_ptr<pg::Connection>> Take() {
    if (idle != nullptr && !idle->broken() && PQtransactionStatus(idle->get()) == PQTRANS_IDLE) {
      return std::move(idle);
    }
    idle.reset();
    BACKFLOW_ASSIGN_OR_RETURN(auto conn, connect());
    BACKFLOW_RETURN_IF_ERROR(
        ExecSimple(*conn, session_sql + "SELECT 1", "setting up the session failed").status());
    return conn;
  }
  void Give(std::unique_ptr<pg::Connection> conn) {
    if (!conn->broken() && PQtransactionStatus(conn->get()) == PQTRANS_IDLE) idle = std::move(conn);
  }
};

// One statement's rows in single-row mode (PQsendQueryParams, text results).
// `cancel` (QueryOptions::cancel, may be null) is checked while the answer is
// awaited, at most a second apart, and before each row; once set, the
// statement is cancelled (PQcancel), drained for at most `wait`, and
// kCancelled returned.
class RedshiftStatementReader : public RowReader {
 public:
  RedshiftStatementReader(std::shared_ptr<RedshiftConnectionPool> pool,
                          std::unique_ptr<pg::Connection> conn, std::chrono::milliseconds wait,
                          const std::atomic<bool>* cancel)
      : pool_(std::move(pool)), conn_(std::move(conn)), cancel_wait_(wait), cancel_(cancel) {}

  ~RedshiftStatementReader() override {
    if (conn_ == nullptr || done_) return;
    CancelAndDrain(conn_->get(), std::chrono::steady_clock::now() + cancel_wait_);
  }

  // Reads the first result: the schema (and maybe a row), or the error.
  absl::Status Start() {
    BACKFLOW_RETURN_IF_ERROR(AwaitResult());
    pg::Result first(PQgetResult(conn_->get()));
    ExecStatusType st = first != nullptr ? PQresultStatus(first.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
      absl::Status error =
          ClassifyRedshiftError(conn_->ErrorFromResult(first.get(), "change detection failed"));
      first.reset();
      End();
      return error;
    }
    const int n = PQnfields(first.get());
    for (int i = 0; i < n; ++i) {
      Oid oid = PQftype(first.get(), i);
      oids_.push_back(oid);
      schema_.push_back(Column{PQfname(first.get(), i), RedshiftValueTypeForOid(oid),
                               RedshiftTypeName(oid, PQfmod(first.get(), i))});
    }
    if (st == PGRES_SINGLE_TUPLE) {
      row_ = std::move(first);
    } else {
      first.reset();
      End();
    }
    return absl::OkStatus();
  }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!error_.ok()) return error_;
    if (row_ == nullptr) {
      if (done_) return false;
      if (absl::Status s = AwaitResult(); !s.ok()) {
        error_ = s;
        return error_;
      }
      pg::Result next(PQgetResult(conn_->get()));
      ExecStatusType st = next != nullptr ? PQresultStatus(next.get()) : PGRES_FATAL_ERROR;
      if (st == PGRES_TUPLES_OK) {  // the end of the rows
        next.reset();
        End();
        return false;
      }
      if (st != PGRES_SINGLE_TUPLE) {
        error_ = ClassifyRedshiftError(
            conn_->ErrorFromResult(next.get(), "change detection failed while reading rows"));
        next.reset();
        End();
        return error_;
      }
      row_ = std::move(next);
    }
    row.resize(oids_.size());
    for (size_t i = 0; i < oids_.size(); ++i) {
      int col = static_cast<int>(i);
      row[i] =
          PQgetisnull(row_.get(), 0, col)
              ? Value::Null()
              : DecodeRedshiftText(oids_[i], std::string_view(PQgetvalue(row_.get(), 0, col),
                                                              PQgetlength(row_.get(), 0, col)));
    }
    row_.reset();
    return true;
  }

 private:
  // Waits until PQgetResult() would not block, unless the run is cancelled
  // first: then cancels the statement and returns kCancelled.
  absl::Status AwaitResult() {
    if (cancel_ == nullptr) return absl::OkStatus();
    PGconn* c = conn_->get();
    while (true) {
      if (PQconsumeInput(c) == 0 || PQisBusy(c) == 0) break;  // errors surface from PQgetResult
      if (QueryCancelRequested(cancel_)) {
        // A connection left busy is closed rather than returned to the pool.
        if (CancelAndDrain(c, std::chrono::steady_clock::now() + cancel_wait_)) {
          pool_->Give(std::move(conn_));
        } else {
          conn_.reset();
        }
        done_ = true;
        return QueryCancelledError("the Redshift change detection statement");
      }
      pollfd p{PQsocket(c), POLLIN, 0};
      if (poll(&p, 1, 1000) < 0 && errno != EINTR) break;
    }
    return absl::OkStatus();
  }

  // Reads what is left of the answer and returns the connection to the pool.
  void End() {
    while (pg::Result extra{PQgetResult(conn_->get())}) {
    }
    done_ = true;
    pool_->Give(std::move(conn_));
  }

  std::shared_ptr<RedshiftConnectionPool> pool_;
  std::unique_ptr<pg::Connection> conn_;
  const std::chrono::milliseconds cancel_wait_;
  const std::atomic<bool>* const cancel_;
  Schema schema_;
  std::vector<Oid> oids_;
  pg::Result row_;  // a row read ahead (the first)
  bool done_ = false;
  absl::Status error_;
};

class RedshiftLibpqTransport : public RedshiftSqlTransport {
 public:
  RedshiftLibpqTransport(std::shared_ptr<RedshiftConnectionPool> pool,
                         std::chrono::milliseconds cancel_wait)
      : pool_(std::move(pool)), cancel_wait_(cancel_wait) {}

  absl::StatusOr<std::unique_ptr<RowReader>> Run(const std::string& sql,
                                                 const std::vector<std::string>& bindings,
                                                 const std::atomic<bool>* cancel) override {
    if (QueryCancelRequested(cancel)) {
      return absl::CancelledError("the run was cancelled before the Redshift statement was sent");
    }
    BACKFLOW_ASSIGN_OR_RETURN(auto conn, pool_->Take());
    BACKFLOW_RETURN_IF_ERROR(Send(*conn, sql, bindings));
    auto reader =
        std::make_unique<RedshiftStatementReader>(pool_, std::move(conn), cancel_wait_, cancel);
    BACKFLOW_RETURN_IF_ERROR(reader->Start());
    return std::unique_ptr<RowReader>(std::move(reader));
  }

  absl::Status RunAll(const std::vector<BoundSql>& statements) override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn, pool_->Take());
    absl::Status status = ExecSimple(*conn, "BEGIN", "starting a transaction failed").status();
    for (const BoundSql& s : statements) {
      if (!status.ok()) break;
      std::vector<const char*> params;
      for (const std::string& b : s.bindings) params.push_back(b.c_str());
      absl::StatusOr<pg::Result> done =
          conn->Exec(Numbered(s.sql), params, "writing the warehouse checkpoint failed");
      if (!done.ok()) status = ClassifyRedshiftError(done.status());
    }
    if (status.ok()) {
      status = ExecSimple(*conn, "COMMIT", "committing the checkpoint failed").status();
    } else {
      (void)ExecSimple(*conn, "ROLLBACK", "rolling back");
    }
    pool_->Give(std::move(conn));
    return status;
  }

 private:
  static std::string Numbered(const std::string& sql) {
    return RewritePlaceholders(sql, [](int n) { return fmt::format("${}", n); });
  }

  absl::Status Send(pg::Connection& conn, const std::string& sql,
                    const std::vector<std::string>& bindings) {
    const std::string text = Numbered(sql);
    std::vector<const char*> values;
    for (const std::string& b : bindings) values.push_back(b.c_str());
    if (PQsendQueryParams(conn.get(), text.c_str(), static_cast<int>(values.size()), nullptr,
                          values.data(), nullptr, nullptr, 0) != 1 ||
        PQsetSingleRowMode(conn.get()) != 1) {
      return ClassifyRedshiftError(conn.ErrorFromResult(nullptr, "change detection failed"));
    }
    return absl::OkStatus();
  }

  std::shared_ptr<RedshiftConnectionPool> pool_;
  const std::chrono::milliseconds cancel_wait_;
};

class RedshiftSource : public Source {
 public:
  RedshiftSource(RedshiftConfig config, HttpClient* http, Clock* clock)
      : config_(std::move(config)), http_(http), clock_(clock) {
    if (config_.auth == RedshiftAuth::kIam && http_ != nullptr) {
      iam_ = std::make_unique<RedshiftIamCredentials>(config_.iam, http_, clock_);
    }
  }

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn, Connect());
    return ExecSimple(*conn, RedshiftSessionSql(config_) + "SELECT 1", "connection check failed")
        .status();
  }

  WarehouseChangeDetection* warehouse_change_detection() override {
    if (change_detection_ == nullptr) {
      auto pool = std::make_shared<RedshiftConnectionPool>();
      pool->connect = [this] { return Connect(); };
      pool->session_sql = RedshiftSessionSql(config_);
      PassChangeDetectionOptions options;
      options.state_schema = config_.state_schema;
      options.clock = clock_;
      change_detection_ =
          NewPassChangeDetection(NewRedshiftWarehouseSql(std::make_unique<RedshiftLibpqTransport>(
                                     std::move(pool), config_.cancel_wait)),
                                 std::move(options));
    }
    return change_detection_.get();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    return Query(sql, QueryOptions{});
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql,
                                                   const QueryOptions& options) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        std::string text,
        SingleModelStatement(sql,
                             "Redshift reads it through a cursor, which takes exactly one "
                             "query"));
    std::chrono::milliseconds wait = config_.retry_initial;
    for (int attempt = 0;; ++attempt) {
      if (QueryCancelRequested(options.cancel)) {
        return absl::CancelledError("the run was cancelled before the Redshift query was sent");
      }
      absl::StatusOr<std::unique_ptr<RowReader>> reader = TryQuery(text, options.cancel);
      if (reader.ok() || reader.status().code() != absl::StatusCode::kUnavailable ||
          attempt >= config_.max_retries) {
        return reader;
      }
      clock_->SleepFor(wait);
      wait = std::min(wait * 2, config_.retry_max);
    }
  }

 private:
  absl::StatusOr<std::unique_ptr<pg::Connection>> Connect() {
    if (config_.auth == RedshiftAuth::kIam && iam_ == nullptr) {
      return absl::InternalError("redshift auth: iam needs an HTTP client (ConnectorEnv.http)");
    }
    return ConnectWith(config_, iam_.get());
  }

  absl::StatusOr<std::unique_ptr<RowReader>> TryQuery(const std::string& text,
                                                      const std::atomic<bool>* cancel) {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn, Connect());
    // Newlines around the model keep a trailing "-- comment" inside it.
    std::string prefix = fmt::format("{}BEGIN READ ONLY; DECLARE {} CURSOR FOR\n",
                                     RedshiftSessionSql(config_), kCursorName);
    BACKFLOW_RETURN_IF_ERROR(
        ExecSimple(*conn, prefix + text + "\n", "query failed", Utf8Chars(prefix)).status());
    BACKFLOW_ASSIGN_OR_RETURN(
        pg::Result first,
        ExecCancellable(*conn,
                        fmt::format("FETCH FORWARD {} FROM {}", config_.fetch_size, kCursorName),
                        "query failed", cancel, config_.cancel_wait));
    if (PQresultStatus(first.get()) != PGRES_TUPLES_OK || PQnfields(first.get()) == 0) {
      return absl::InvalidArgumentError(
          "the query returned no columns; a model must be a SELECT that returns rows");
    }
    return std::unique_ptr<RowReader>(
        std::make_unique<RedshiftCursorReader>(std::move(conn), std::move(first), config_, cancel));
  }

  RedshiftConfig config_;
  HttpClient* http_;
  Clock* clock_;
  std::unique_ptr<RedshiftIamCredentials> iam_;
  std::unique_ptr<WarehouseChangeDetection> change_detection_;
};

int HexNibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// VARBYTE text: hex digits, with or without a leading \x.
Value DecodeVarbyte(std::string_view text) {
  std::string_view hex = text;
  if (hex.starts_with("\\x")) hex.remove_prefix(2);
  if (hex.size() % 2 != 0) return Value::String(std::string(text));
  std::string bytes;
  bytes.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = HexNibble(hex[i]);
    int lo = HexNibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return Value::String(std::string(text));
    bytes.push_back(static_cast<char>(hi * 16 + lo));
  }
  return Value::Text(ValueType::kBytes, std::move(bytes));
}

}  // namespace

ValueType RedshiftValueTypeForOid(Oid oid) {
  switch (oid) {
    case kRedshiftSuperOid:
      return ValueType::kJson;
    case kRedshiftVarbyteOid:
      return ValueType::kBytes;
    default:
      return pg::ValueTypeForOid(oid);
  }
}

std::string RedshiftTypeName(Oid oid, int typmod) {
  switch (oid) {
    case kRedshiftSuperOid:
      return "super";
    case kRedshiftVarbyteOid:
      return typmod >= 4 ? fmt::format("varbyte({})", typmod - 4) : "varbyte";
    case kRedshiftGeometryOid:
      return "geometry";
    case kRedshiftGeographyOid:
      return "geography";
    case kRedshiftHllSketchOid:
      return "hllsketch";
    case kRedshiftIntervalY2MOid:
      return "interval year to month";
    case kRedshiftIntervalD2SOid:
      return "interval day to second";
    case 3999:
      return "geometryhex";
    default:
      return pg::TypeNameForOid(oid, typmod);
  }
}

Value DecodeRedshiftText(Oid oid, std::string_view text) {
  switch (oid) {
    case kRedshiftSuperOid:
      return Value::Text(ValueType::kJson, CompactJson(text));
    case kRedshiftVarbyteOid:
      return DecodeVarbyte(text);
    default:
      return pg::DecodeText(oid, text);
  }
}

absl::Status ClassifyRedshiftError(absl::Status status) {
  if (status.ok()) return status;
  std::string message(status.message());
  if (absl::StrContains(message, "Serializable isolation violation") ||
      absl::StrContains(message, "reported: 1023 (SQLSTATE XX000") ||
      absl::StrContains(message, "conflict with concurrent transaction")) {
    return absl::UnavailableError(
        fmt::format("{}. Redshift aborted this read to resolve a conflict with concurrent "
                    "writes; retrying the run usually succeeds (schedule syncs away from loads "
                    "into the same tables if it keeps happening)",
                    message));
  }
  if (status.code() == absl::StatusCode::kUnavailable &&
      (absl::StrContains(message, "SSL") || absl::StrContains(message, "certificate"))) {
    bool lost = absl::StrContains(message, "SSL SYSCALL") ||
                absl::StrContains(message, "lost the connection") ||
                absl::StrContains(message, "EOF detected");
    if (!lost) {
      return absl::FailedPreconditionError(fmt::format(
          "{}. Check the `sslmode` setting (verify-full needs the server certificate to chain to "
          "a CA in `sslrootcert`, by default the system bundle; Redshift clusters accept TLS on "
          "their endpoint) and `sslrootcert`",
          message));
    }
  }
  return status;
}

absl::StatusOr<std::string> SingleModelStatement(std::string_view sql, std::string_view why_one) {
  std::string text = TrimModelSql(sql);
  std::vector<std::string_view> statements = SplitSqlStatements(text);
  if (statements.empty()) {
    return absl::InvalidArgumentError("the model's SQL is empty; a model must be one SELECT");
  }
  if (statements.size() > 1) {
    return absl::InvalidArgumentError(
        fmt::format("the model's SQL holds {} statements; a model must be one SELECT ({})",
                    statements.size(), why_one));
  }
  return text;
}

std::vector<std::string_view> SplitSqlStatements(std::string_view sql) {
  std::vector<std::string_view> out;
  size_t start = 0;
  bool content = false;
  auto emit = [&](size_t end) {
    if (content) {
      std::string_view piece = sql.substr(start, end - start);
      while (!piece.empty() && IsSpace(piece.front())) piece.remove_prefix(1);
      while (!piece.empty() && IsSpace(piece.back())) piece.remove_suffix(1);
      out.push_back(piece);
    }
    content = false;
  };
  size_t i = 0;
  const size_t n = sql.size();
  while (i < n) {
    char c = sql[i];
    if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
      while (i < n && sql[i] != '\n') ++i;
      continue;
    }
    if (c == '/' && i + 1 < n && sql[i + 1] == '*') {
      int depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] == '/' && i + 1 < n && sql[i + 1] == '*') {
          ++depth;
          i += 2;
        } else if (sql[i] == '*' && i + 1 < n && sql[i + 1] == '/') {
          --depth;
          i += 2;
        } else {
          ++i;
        }
      }
      continue;
    }
    if (c == ';') {
      emit(i);
      start = ++i;
      continue;
    }
    if (!IsSpace(c)) content = true;
    if (c == '\'' || c == '"') {
      // Backslash escapes apply in string literals (Redshift, like
      // PostgreSQL 8.0); doubled quotes in both.
      ++i;
      while (i < n) {
        if (c == '\'' && sql[i] == '\\') {
          i += 2;
        } else if (sql[i] == c) {
          if (i + 1 < n && sql[i + 1] == c) {
            i += 2;
          } else {
            ++i;
            break;
          }
        } else {
          ++i;
        }
      }
      continue;
    }
    if (c == '$' && (i == 0 || !IsIdentChar(sql[i - 1]))) {
      size_t j = i + 1;
      if (j < n && IsIdentStart(sql[j])) {
        while (j < n && IsIdentChar(sql[j]) && sql[j] != '$') ++j;
      }
      if (j < n && sql[j] == '$') {
        std::string_view tag = sql.substr(i, j - i + 1);
        size_t close = sql.find(tag, j + 1);
        i = close == std::string_view::npos ? n : close + tag.size();
        continue;
      }
    }
    if (IsIdentStart(c)) {
      while (i < n && IsIdentChar(sql[i])) ++i;
      continue;
    }
    ++i;
  }
  emit(n);
  return out;
}

std::string RedshiftSessionSql(const RedshiftConfig& config) {
  std::string sql =
      "SET timezone TO 'UTC'; SET datestyle TO 'ISO, MDY'; SET extra_float_digits TO 2; ";
  if (config.statement_timeout_s > 0) {
    sql += fmt::format("SET statement_timeout TO {}; ",
                       static_cast<int64_t>(config.statement_timeout_s) * 1000);
  }
  if (!config.query_group.empty()) {
    std::string quoted;
    for (char c : config.query_group) {
      if (c == '\'') quoted.push_back('\'');
      quoted.push_back(c);
    }
    sql += fmt::format("SET query_group TO '{}'; ", quoted);
  }
  return sql;
}

absl::StatusOr<RedshiftConfig> ParseRedshiftSettings(const json& settings) {
  auto text = [&](const char* key) -> std::string {
    auto it = settings.find(key);
    return it != settings.end() && it->is_string() ? it->get<std::string>() : "";
  };
  auto integer = [&](const char* key, int64_t fallback, int64_t min,
                     int64_t max) -> absl::StatusOr<int> {
    auto it = settings.find(key);
    if (it == settings.end() || it->is_null()) return static_cast<int>(fallback);
    if (!it->is_number_integer() || it->get<int64_t>() < min || it->get<int64_t>() > max) {
      return absl::InvalidArgumentError(
          fmt::format("{}: must be a whole number from {} to {}", key, min, max));
    }
    return static_cast<int>(it->get<int64_t>());
  };
  RedshiftConfig config;
  config.url = text("url");
  if (config.url.empty()) {
    return absl::InvalidArgumentError(
        "url: required; e.g. postgresql://analytics@examplecluster.abc123xyz789.us-east-1."
        "redshift.amazonaws.com:5439/dev");
  }
  // A url libpq cannot parse is reported (without echoing it) on connect.
  std::string normalized = NormalizeUrl(config.url);
  char* error = nullptr;
  std::string in_url;
  std::string url_user, url_dbname, url_host;
  if (PQconninfoOption* parsed = PQconninfoParse(normalized.c_str(), &error); parsed != nullptr) {
    for (PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
      std::string_view key = o->keyword;
      if (o->val == nullptr || o->val[0] == '\0') continue;
      if (key == "sslmode" || key == "sslrootcert") in_url = o->keyword;
      if (key == "user") url_user = o->val;
      if (key == "dbname") url_dbname = o->val;
      if (key == "host") url_host = o->val;
    }
    PQconninfoFree(parsed);
  }
  if (error != nullptr) PQfreemem(error);
  if (!in_url.empty()) {
    return absl::InvalidArgumentError(fmt::format(
        "url: remove {0} from the url and use the `{0}` setting instead (it defaults to "
        "verify-full for sslmode)",
        in_url));
  }
  config.password = text("password");
  std::string auth = text("auth");
  if (auth == "iam") {
    config.auth = RedshiftAuth::kIam;
    RedshiftIamConfig& iam = config.iam;
    BACKFLOW_ASSIGN_OR_RETURN(iam.credentials, ParseAwsCredentialSettings(settings));
    iam.region = text("region");
    if (iam.region.empty()) iam.region = RegionFromRedshiftHost(url_host);
    if (iam.region.empty()) {
      return absl::InvalidArgumentError(
          "region: required with auth: iam when the url's host is not a Redshift endpoint "
          "(<cluster>.<id>.<region>.redshift.amazonaws.com), e.g. us-east-1");
    }
    BACKFLOW_RETURN_IF_ERROR(CheckAwsRegion(iam.region));
    iam.cluster_identifier = text("cluster_identifier");
    iam.workgroup_name = text("workgroup_name");
    if (iam.cluster_identifier.empty() == iam.workgroup_name.empty()) {
      return absl::InvalidArgumentError(
          "cluster_identifier: with auth: iam set exactly one of cluster_identifier (a "
          "provisioned cluster, e.g. examplecluster) or workgroup_name (Redshift Serverless)");
    }
    iam.db_user = url_user;
    iam.db_name = url_dbname;
    if (!iam.cluster_identifier.empty() && iam.db_user.empty()) {
      return absl::InvalidArgumentError(
          "url: with auth: iam on a cluster the url must name the database user to get a "
          "password for, e.g. postgresql://analytics@<endpoint>:5439/dev");
    }
    iam.aws_endpoint = text("aws_endpoint");
    if (!iam.aws_endpoint.empty() && !iam.aws_endpoint.starts_with("https://") &&
        !iam.aws_endpoint.starts_with("http://")) {
      return absl::InvalidArgumentError(
          "aws_endpoint: must be an https:// URL, e.g. https://redshift.us-east-1.amazonaws.com");
    }
    BACKFLOW_ASSIGN_OR_RETURN(iam.duration_s, integer("iam_duration_s", iam.duration_s, 900, 3600));
    auto create = settings.find("auto_create");
    iam.auto_create = create != settings.end() && create->is_boolean() && create->get<bool>();
  } else if (!auth.empty() && auth != "password") {
    return absl::InvalidArgumentError("auth: must be password or iam");
  }
  std::string sslmode = text("sslmode");
  if (!sslmode.empty()) config.sslmode = sslmode;
  static const std::vector<std::string> kModes = {"disable", "allow",     "prefer",
                                                  "require", "verify-ca", "verify-full"};
  if (std::find(kModes.begin(), kModes.end(), config.sslmode) == kModes.end()) {
    return absl::InvalidArgumentError(
        "sslmode: must be one of disable, allow, prefer, require, verify-ca, verify-full");
  }
  config.sslrootcert = text("sslrootcert");
  config.query_group = text("query_group");
  BACKFLOW_ASSIGN_OR_RETURN(config.fetch_size,
                            integer("fetch_size", config.fetch_size, 1, kMaxFetchSize));
  BACKFLOW_ASSIGN_OR_RETURN(config.statement_timeout_s,
                            integer("statement_timeout_s", 0, 0, 7 * 24 * 3600));
  BACKFLOW_ASSIGN_OR_RETURN(config.max_retries, integer("max_retries", config.max_retries, 0, 10));
  BACKFLOW_ASSIGN_OR_RETURN(config.connect_timeout_s,
                            integer("connect_timeout_s", config.connect_timeout_s, 2, 600));
  BACKFLOW_ASSIGN_OR_RETURN(config.state_schema, ParseRedshiftStateSchema(settings));
  return config;
}

absl::StatusOr<std::string> ParseRedshiftStateSchema(const json& settings) {
  auto it = settings.find("state_schema");
  if (it == settings.end() || it->is_null()) return std::string("backflow_state");
  if (!it->is_string() || !IsPlainSqlIdentifier(it->get<std::string>())) {
    return absl::InvalidArgumentError(
        "state_schema: must be a plain schema name (letters, digits, '_', '$'; not starting "
        "with a digit), e.g. backflow_state");
  }
  return it->get<std::string>();
}

std::unique_ptr<Source> NewRedshiftSource(RedshiftConfig config, const ConnectorEnv& env) {
  Clock* clock = env.clock != nullptr ? env.clock : &SystemClock();
  return std::make_unique<RedshiftSource>(std::move(config), env.http, clock);
}

SourceDefinition RedshiftSourceDefinition() {
  SourceDefinition def;
  def.type = "redshift";
  def.title = "Amazon Redshift";
  def.description =
      "Runs model SQL on Amazon Redshift (provisioned or Serverless) over its PostgreSQL-"
      "compatible endpoint (port 5439) with TLS, in a read-only transaction pinned to UTC. Rows "
      "are read through a cursor (`DECLARE ... CURSOR FOR <model>`, then `FETCH FORWARD "
      "<fetch_size>` batches, the next batch requested while the current one is handed out), "
      "because Redshift has no COPY TO STDOUT and no binary results; only the simple-query "
      "protocol and text results are used. Note that Redshift materialises a cursor's whole "
      "result on the leader node at the first FETCH, within a per-cluster cursor size limit. "
      "BIGINT and DECIMAL stay exact, TIMESTAMPTZ becomes ISO-8601 UTC, SUPER becomes JSON, "
      "VARBYTE bytes; GEOMETRY, GEOGRAPHY, HLLSKETCH, TIME and intervals arrive as text. "
      "Connection failures, serializable isolation violations (error 1023) and other transient "
      "errors before the first row are retried with backoff; a read abandoned early is "
      "cancelled and rolled back. The user needs SELECT on the tables (and USAGE on their "
      "schemas). With auth: iam the password is a temporary one from AWS (GetClusterCredentials "
      "or Redshift Serverless GetCredentials, SigV4-signed). For the HTTP Redshift Data API see "
      "the `redshift_data_api` source.";
  def.maturity = "beta";

  SettingSpec url = MakeSetting(
      "url", "Connection URL",
      "postgresql://user@<cluster endpoint>:5439/<database>, e.g. "
      "postgresql://analytics@examplecluster.abc123xyz789.us-east-1.redshift.amazonaws.com:5439/"
      "dev (Serverless: <workgroup>.<account>.<region>.redshift-serverless.amazonaws.com). A "
      "jdbc:redshift:// or redshift:// prefix is read as postgresql://; the port defaults to "
      "5439. Keep the password and TLS options out of it.");
  url.required = true;
  def.settings.push_back(url);
  SettingSpec password =
      MakeSetting("password", "Password",
                  "Password of the url's database user, e.g. ${env:REDSHIFT_PASSWORD} (a temporary "
                  "password from GetClusterCredentials works too, until it expires).");
  password.secret = true;
  def.settings.push_back(password);
  SettingSpec auth = MakeSetting(
      "auth", "Authentication",
      "password (default): log on with `password`. iam: get a temporary password from AWS "
      "before connecting (redshift:GetClusterCredentials for cluster_identifier, with the url's "
      "user and database; or redshift-serverless:GetCredentials for workgroup_name), signed "
      "with access_key_id / secret_access_key; the user logs on as AWS names it (IAM:<user>).",
      SettingType::kEnum);
  auth.default_value = "password";
  auth.allowed_values = {"password", "iam"};
  def.settings.push_back(auth);
  for (SettingSpec& spec :
       AwsCredentialSettingSpecs("that may get temporary database passwords (auth: iam)")) {
    if (spec.key == "region") {
      spec.description =
          "With auth: iam, the AWS region of the cluster or workgroup, e.g. us-east-1. Default: "
          "the region in the url's host (<cluster>.<id>.<region>.redshift.amazonaws.com).";
    }
    def.settings.push_back(spec);
  }
  def.settings.push_back(MakeSetting(
      "cluster_identifier", "Cluster identifier",
      "With auth: iam on a provisioned cluster: the cluster's name (e.g. examplecluster, "
      "the first label of its endpoint). The IAM identity needs "
      "redshift:GetClusterCredentials on its dbuser and dbname resources."));
  def.settings.push_back(
      MakeSetting("workgroup_name", "Workgroup name",
                  "With auth: iam on Redshift Serverless: the workgroup's name. The IAM identity "
                  "needs redshift-serverless:GetCredentials on it."));
  def.settings.push_back(
      MakeSetting("iam_duration_s", "Temporary password lifetime (s)",
                  "With auth: iam: how long each temporary password is valid (900 to 3600); a new "
                  "one is fetched a minute before it expires.",
                  SettingType::kInteger, 900));
  def.settings.push_back(MakeSetting(
      "auto_create", "Create the database user",
      "With auth: iam on a cluster: create the url's user (AutoCreate) when it does not "
      "exist (needs redshift:CreateClusterUser).",
      SettingType::kBoolean, false));
  def.settings.push_back(
      MakeSetting("aws_endpoint", "AWS API endpoint",
                  "With auth: iam: the AWS API address to ask for passwords instead of "
                  "https://redshift.<region>.amazonaws.com (or redshift-serverless.<region>...), "
                  "e.g. a VPC endpoint; also for test servers."));
  SettingSpec sslmode =
      MakeSetting("sslmode", "TLS mode",
                  "libpq sslmode. verify-full (default) encrypts and checks that the certificate "
                  "matches the endpoint's host name; require encrypts without checking the "
                  "certificate; disable only for local test servers.",
                  SettingType::kEnum);
  sslmode.default_value = "verify-full";
  sslmode.allowed_values = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"};
  def.settings.push_back(sslmode);
  SettingSpec root = MakeSetting(
      "sslrootcert", "CA bundle",
      "PEM file of the CAs that may sign the cluster's certificate, for verify-ca and "
      "verify-full, e.g. AWS's redshift-ca-bundle.crt. Default: the system bundle "
      "/etc/ssl/certs/ca-certificates.crt, which holds the Amazon root CAs of current Redshift "
      "certificates.");
  root.is_path = true;
  def.settings.push_back(root);
  def.settings.push_back(MakeSetting(
      "fetch_size", "Rows per FETCH",
      "Rows read per FETCH FORWARD round trip; at most two batches are held in memory. 1 to "
      "100000. Single-node clusters accept at most 1000; AWS suggests about 4000 on multi-node "
      "clusters.",
      SettingType::kInteger, 1000));
  def.settings.push_back(MakeSetting(
      "statement_timeout_s", "Statement timeout (s)",
      "When above 0, sets Redshift's statement_timeout so a statement running longer is "
      "cancelled by the server; 0 keeps the cluster's setting.",
      SettingType::kInteger, 0));
  def.settings.push_back(
      MakeSetting("query_group", "Query group",
                  "When set, `SET query_group TO '<value>'` routes the queries to "
                  "the matching WLM queue."));
  def.settings.push_back(MakeSetting(
      "max_retries", "Max retries",
      "Retries (with exponential backoff from 1 s, at most 30 s apart) when connecting or "
      "starting the query fails transiently: connection refused or lost, serializable isolation "
      "violation, server restarting. Failures after rows were read are never retried.",
      SettingType::kInteger, 2));
  def.settings.push_back(MakeSetting("connect_timeout_s", "Connect timeout (s)",
                                     "How long to wait for the connection to be established.",
                                     SettingType::kInteger, 10));
  def.settings.push_back(MakeSetting("state_schema", "State schema", kRedshiftStateSchemaHelp,
                                     SettingType::kString, "backflow_state"));
  def.warehouse_change_detection = true;

  def.create = [](const json& settings,
                  const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Source>> {
    BACKFLOW_ASSIGN_OR_RETURN(RedshiftConfig config, ParseRedshiftSettings(settings));
    return NewRedshiftSource(std::move(config), env);
  };
  return def;
}

}  // namespace backflow
