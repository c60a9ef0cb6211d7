#include "backflow/sources/postgres/postgres_source.h"

#include <libpq-fe.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/status_macros.h"
#include "backflow/pg/connection.h"
#include "backflow/pg/copy_binary.h"
#include "backflow/pg/copy_text.h"
#include "backflow/pg/decode_binary.h"
#include "backflow/pg/types.h"
#include "backflow/sources/parallel_reader.h"
#include "backflow/sources/postgres/postgres_internal.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"

namespace backflow {
namespace {

pg::ConnectOptions SourceConnectOptions(const std::string& url, const std::string& password) {
  pg::ConnectOptions options;
  options.url = url;
  options.password = password;
  options.settings = {
      {"DateStyle", "ISO, MDY"},   {"TimeZone", "UTC"},     {"IntervalStyle", "iso_8601"},
      {"extra_float_digits", "3"}, {"bytea_output", "hex"}, {"default_transaction_read_only", "on"},
  };
  return options;
}

// A COPY reader waits for this many bytes on the socket (or kWaitMillis)
// before it reads again.
constexpr int kWakeBytes = 64 * 1024;
constexpr int kWaitMillis = 2;

// Asks the server to stop the running statement (best effort).
void CancelQuery(PGconn* conn) {
  if (PGcancel* cancel = PQgetCancel(conn); cancel != nullptr) {
    char buf[256];
    PQcancel(cancel, buf, sizeof(buf));
    PQfreeCancel(cancel);
  }
}

absl::Status NoResultSetError() {
  return absl::InvalidArgumentError(
      "the query returned no result set; a model must be a SELECT (or another statement "
      "that returns rows)");
}

// Single-row mode: one PGresult per row.
class PostgresRowsReader : public RowReader {
 public:
  PostgresRowsReader(std::unique_ptr<pg::Connection> conn, pg::Result first)
      : conn_(std::move(conn)), pending_(std::move(first)) {
    schema_ = pg::SchemaFromResult(pending_.get());
    oids_.reserve(schema_.size());
    for (int i = 0; i < PQnfields(pending_.get()); ++i) oids_.push_back(PQftype(pending_.get(), i));
  }

  ~PostgresRowsReader() override {
    // Abandoned mid-stream: ask the server to stop rather than letting it
    // produce rows nobody reads.
    if (!done_ && error_.ok() && !conn_->broken()) CancelQuery(conn_->get());
  }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<bool> Next(Row& row) override {
    if (!error_.ok()) return error_;
    if (done_) return false;
    pg::Result result =
        pending_ != nullptr ? std::move(pending_) : pg::Result(PQgetResult(conn_->get()));
    if (result == nullptr) {
      // The stream ended without the final TUPLES_OK: never a clean end.
      return Fail(conn_->ErrorFromResult(nullptr, "query ended unexpectedly"));
    }
    switch (PQresultStatus(result.get())) {
      case PGRES_SINGLE_TUPLE: {
        row.resize(oids_.size());
        for (size_t i = 0; i < oids_.size(); ++i) {
          int col = static_cast<int>(i);
          if (PQgetisnull(result.get(), 0, col)) {
            row[i] = Value::Null();
          } else {
            row[i] = pg::DecodeText(oids_[i], std::string_view(PQgetvalue(result.get(), 0, col),
                                                               PQgetlength(result.get(), 0, col)));
          }
        }
        return true;
      }
      case PGRES_TUPLES_OK: {
        // The end marker. Anything after it other than NULL is an error.
        while (pg::Result extra{PQgetResult(conn_->get())}) {
          ExecStatusType st = PQresultStatus(extra.get());
          if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
            return Fail(conn_->ErrorFromResult(extra.get(), "query failed"));
          }
        }
        done_ = true;
        return false;
      }
      default:
        return Fail(conn_->ErrorFromResult(result.get(), "query failed while streaming rows"));
    }
  }

 private:
  absl::Status Fail(absl::Status status) {
    error_ = std::move(status);
    // Consume what is left so the connection is in a defined state.
    while (pg::Result rest{PQgetResult(conn_->get())}) {
    }
    return error_;
  }

  std::unique_ptr<pg::Connection> conn_;
  pg::Result pending_;
  Schema schema_;
  std::vector<Oid> oids_;
  bool done_ = false;
  absl::Status error_;
};

// SO_RCVLOWAT of a socket, set for a bulk read and put back to 1 (the
// default, which libpq's own waits rely on) after it.
class LowWaterMark {
 public:
  LowWaterMark() = default;
  LowWaterMark(const LowWaterMark&) = delete;
  LowWaterMark& operator=(const LowWaterMark&) = delete;
  ~LowWaterMark() { Reset(); }
  void Set(int fd) {
    if (fd_ >= 0 || fd < 0) return;
    int bytes = kWakeBytes;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof(bytes)) == 0) fd_ = fd;
  }
  void Reset() {
    if (fd_ < 0) return;
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// COPY (...) TO STDOUT: one CopyData message per row, parsed in place
// (pg/copy_text.h or pg/copy_binary.h) and decoded with the same per-OID rules
// as the single-row reader (pg/types.h; pg/decode_binary.h gives the same
// values from the binary format).
class PostgresCopyReader : public RowReader {
 public:
  PostgresCopyReader(std::shared_ptr<pg::Connection> conn, Schema schema, std::vector<Oid> oids,
                     bool binary)
      : conn_(std::move(conn)),
        schema_(std::move(schema)),
        oids_(std::move(oids)),
        binary_(binary),
        encrypted_(PQsslInUse(conn_->get()) || PQgssEncInUse(conn_->get())),
        tuples_(static_cast<int>(oids_.size())) {
    fields_.reserve(oids_.size());
  }

  ~PostgresCopyReader() override {
    // Abandoned (or failed) mid-stream: stop the server; the connection,
    // owned here, is then closed.
    if (in_copy_ && !conn_->broken()) CancelQuery(conn_->get());
    FreeChunk();
  }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<bool> Next(Row& row) override {
    std::string_view line;
    BACKFLOW_ASSIGN_OR_RETURN(bool more, Advance(line));
    if (!more) return false;
    if (binary_) return DecodeBinaryRow(row);
    pg::SplitCopyTextFields(line, fields_);
    if (fields_.size() != oids_.size()) {
      return Fail(absl::InternalError(
          fmt::format("COPY sent a row of {} fields for a query of {} columns (did the tables "
                      "change while the model ran?)",
                      fields_.size(), oids_.size())));
    }
    row.resize(oids_.size());
    for (size_t i = 0; i < oids_.size(); ++i) {
      if (pg::IsCopyTextNull(fields_[i])) {
        row[i] = Value::Null();
      } else {
        row[i] = pg::DecodeText(oids_[i], pg::DecodeCopyTextField(fields_[i], scratch_));
      }
    }
    return true;
  }

  // Binary COPY is encoded straight from the tuple's fields.
  absl::StatusOr<bool> NextEncoded(std::string_view& row) override {
    if (!binary_) return RowReader::NextEncoded(row);
    std::string_view unused;
    BACKFLOW_ASSIGN_OR_RETURN(bool more, Advance(unused));
    if (!more) return false;
    encoder_.Begin(oids_.size());
    scratch_values_.resize(oids_.size());
    for (size_t i = 0; i < oids_.size(); ++i) {
      const pg::CopyBinaryField& field = binary_fields_[i];
      if (field.null) {
        encoder_.AppendNull();
        continue;
      }
      absl::Status encoded =
          pg::AppendBinaryEncoded(oids_[i], field.bytes, scratch_values_[i], encoder_);
      if (!encoded.ok()) return Fail(ColumnError(i, encoded));
    }
    row = encoder_.row();
    return true;
  }

 private:
  // Moves to the next row: the next binary tuple (in binary_fields_) or text
  // line (in `line`). False at the clean end.
  absl::StatusOr<bool> Advance(std::string_view& line) {
    if (!error_.ok()) return error_;
    if (done_) return false;
    while (true) {
      if (binary_) {
        absl::StatusOr<bool> got = tuples_.Next(binary_fields_);
        if (!got.ok()) return Fail(got.status());
        if (*got) break;
      } else if (lines_.NextLine(line)) {
        break;
      }
      FreeChunk();
      int n = NextCopyData();
      if (n > 0) {
        std::string_view chunk(chunk_, static_cast<size_t>(n));
        if (binary_) {
          tuples_.Feed(chunk);
        } else {
          lines_.Feed(chunk);
        }
        continue;
      }
      in_copy_ = false;
      if (n == -1) return Finish();
      // -2 (or 0, which blocking mode never returns): the stream broke.
      pg::Result result(PQgetResult(conn_->get()));
      if (result != nullptr && PQresultStatus(result.get()) == PGRES_FATAL_ERROR) {
        return Fail(conn_->ErrorFromResult(result.get(), "query failed while streaming rows"));
      }
      return Fail(conn_->ErrorFromResult(nullptr, "query failed while streaming rows"));
    }
    return true;
  }

  // PQgetCopyData in blocking fashion, but the socket is waited on with a
  // low-water mark (kWakeBytes) so that a reader faster than the server
  // wakes up once per many rows instead of once per packet; the wait is
  // bounded (kWaitMillis), so a slow trickle or the stream's short end is
  // read late by at most that much. Over TLS or GSSAPI encryption, where
  // decrypted bytes can wait in the library rather than on the socket,
  // libpq's own wait is used.
  int NextCopyData() {
    PGconn* c = conn_->get();
    if (encrypted_) return PQgetCopyData(c, &chunk_, /*async=*/0);
    bool wait = false;  // read what is there before waiting
    while (true) {
      int n = PQgetCopyData(c, &chunk_, /*async=*/1);
      if (n != 0) {
        if (n < 0) low_water_.Reset();
        return n;
      }
      if (wait) {
        low_water_.Set(PQsocket(c));
        pollfd p{PQsocket(c), POLLIN, 0};
        poll(&p, 1, kWaitMillis);
      }
      wait = !wait;
      if (PQconsumeInput(c) == 0) {
        low_water_.Reset();
        return -2;
      }
    }
  }

  absl::Status ColumnError(size_t column, const absl::Status& decoded) const {
    return absl::Status(decoded.code(),
                        fmt::format("column {}: {}", schema_[column].name, decoded.message()));
  }

  // The tuple just parsed (its field count already checked by the parser).
  absl::StatusOr<bool> DecodeBinaryRow(Row& row) {
    row.resize(oids_.size());
    for (size_t i = 0; i < oids_.size(); ++i) {
      const pg::CopyBinaryField& field = binary_fields_[i];
      if (field.null) {
        row[i].SetNull();
        continue;
      }
      absl::Status decoded = pg::DecodeBinaryInto(oids_[i], field.bytes, row[i]);
      if (!decoded.ok()) return Fail(ColumnError(i, decoded));
    }
    return true;
  }

  // PQgetCopyData returned -1: the final status says whether COPY completed.
  absl::StatusOr<bool> Finish() {
    pg::Result result(PQgetResult(conn_->get()));
    if (result == nullptr) {
      return Fail(conn_->ErrorFromResult(nullptr, "query ended unexpectedly"));
    }
    if (PQresultStatus(result.get()) != PGRES_COMMAND_OK) {
      return Fail(conn_->ErrorFromResult(result.get(), "query failed while streaming rows"));
    }
    while (pg::Result extra{PQgetResult(conn_->get())}) {
      ExecStatusType st = PQresultStatus(extra.get());
      if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        return Fail(conn_->ErrorFromResult(extra.get(), "query failed"));
      }
    }
    if (!binary_ && lines_.has_partial()) {
      return Fail(absl::UnavailableError(fmt::format(
          "the COPY stream from PostgreSQL at {} ended in the middle of a row", conn_->target())));
    }
    if (binary_) {
      if (absl::Status end = tuples_.Finish(); !end.ok()) {
        return Fail(absl::UnavailableError(fmt::format("the COPY stream from PostgreSQL at {} {}",
                                                       conn_->target(), end.message())));
      }
    }
    done_ = true;
    FreeChunk();
    return false;
  }

  absl::Status Fail(absl::Status status) {
    error_ = std::move(status);
    low_water_.Reset();
    FreeChunk();
    return error_;
  }

  void FreeChunk() {
    if (chunk_ != nullptr) PQfreemem(chunk_);
    chunk_ = nullptr;
  }

  // Shared with warehouse change detection, which goes on using the
  // connection's transaction after the COPY ended.
  std::shared_ptr<pg::Connection> conn_;
  Schema schema_;
  std::vector<Oid> oids_;
  const bool binary_;
  const bool encrypted_;   // TLS or GSSAPI: NextCopyData leaves the wait to libpq
  char* chunk_ = nullptr;  // the CopyData message being read (libpq-allocated)
  pg::CopyTextLines lines_;
  std::vector<std::string_view> fields_;
  std::string scratch_;
  pg::CopyBinaryTuples tuples_;
  std::vector<pg::CopyBinaryField> binary_fields_;
  LowWaterMark low_water_;
  RowEncoder encoder_;  // NextEncoded()'s row
  Row scratch_values_;  // per column, for AppendBinaryEncoded
  bool in_copy_ = true;
  bool done_ = false;
  absl::Status error_;
};

// Every connection of a parallel read runs in this kind of transaction.
constexpr char kBeginSnapshot[] = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

class PostgresSource : public Source {
 public:
  PostgresSource(std::string url, std::string password, PostgresSourceOptions options)
      : url_(std::move(url)), password_(std::move(password)), options_(std::move(options)) {}

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn,
                              pg::Connection::Open(SourceConnectOptions(url_, password_)));
    return conn->Exec("SELECT 1", {}, "connection check failed").status();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn,
                              pg::Connection::Open(SourceConnectOptions(url_, password_)));
    if (options_.extraction == PostgresExtraction::kCopy) return QueryCopy(std::move(conn), sql);
    return QueryRows(std::move(conn), sql);
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql,
                                                   const QueryOptions& options) override {
    if (options_.extraction != PostgresExtraction::kCopy || options.key_column.empty()) {
      return Query(sql);
    }
    if (options_.parallel_connections <= 1) return QueryReadAhead(sql);
    return QueryParallel(sql, options.key_column);
  }

 private:
  absl::StatusOr<std::unique_ptr<RowReader>> QueryRows(std::unique_ptr<pg::Connection> conn,
                                                       std::string_view sql) {
    std::string text(sql);
    // The extended protocol runs exactly one statement.
    if (PQsendQueryParams(conn->get(), text.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0) !=
        1) {
      return conn->ErrorFromResult(nullptr, "sending the query failed");
    }
    if (PQsetSingleRowMode(conn->get()) != 1) {
      return absl::InternalError("libpq refused single-row mode");
    }
    pg::Result first(PQgetResult(conn->get()));
    if (first == nullptr) return conn->ErrorFromResult(nullptr, "query failed");
    switch (PQresultStatus(first.get())) {
      case PGRES_SINGLE_TUPLE:
      case PGRES_TUPLES_OK:
        return std::unique_ptr<RowReader>(
            new PostgresRowsReader(std::move(conn), std::move(first)));
      case PGRES_COMMAND_OK:
        return NoResultSetError();
      default: {
        absl::Status status = conn->ErrorFromResult(first.get(), "query failed");
        while (pg::Result rest{PQgetResult(conn->get())}) {
        }
        return status;
      }
    }
  }

 public:
  WarehouseChangeDetection* warehouse_change_detection() override {
    if (change_detection_ == nullptr) {
      change_detection_ = postgres_internal::NewChangeDetection(
          url_, password_, options_.state_schema, options_.copy_format);
    }
    return change_detection_.get();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> QueryCopy(std::unique_ptr<pg::Connection> conn,
                                                       std::string_view sql) {
    std::string text = TrimModelSql(sql);
    BACKFLOW_ASSIGN_OR_RETURN(postgres_internal::Described described, Describe(*conn, text));
    return StartCopy(std::move(conn), text, std::move(described), options_.copy_format);
  }

  // Parses and describes `text` without running it: the schema, and any SQL
  // error, before the first row. The unnamed statement is one statement only.
  static absl::StatusOr<postgres_internal::Described> Describe(pg::Connection& conn,
                                                               const std::string& text) {
    pg::Result prepared(PQprepare(conn.get(), "", text.c_str(), 0, nullptr));
    if (prepared == nullptr || PQresultStatus(prepared.get()) != PGRES_COMMAND_OK) {
      return conn.ErrorFromResult(prepared.get(), "query failed");
    }
    pg::Result described(PQdescribePrepared(conn.get(), ""));
    if (described == nullptr || PQresultStatus(described.get()) != PGRES_COMMAND_OK) {
      return conn.ErrorFromResult(described.get(), "query failed");
    }
    int columns = PQnfields(described.get());
    if (columns == 0) return NoResultSetError();
    postgres_internal::Described out;
    out.schema = pg::SchemaFromResult(described.get());
    out.oids.reserve(columns);
    for (int i = 0; i < columns; ++i) out.oids.push_back(PQftype(described.get(), i));
    return out;
  }

  // Starts `COPY (<text>) TO STDOUT` for a statement described as `described`,
  // in binary format when `format` allows it (see PostgresCopyFormat).
  static absl::StatusOr<std::unique_ptr<RowReader>> StartCopy(
      std::shared_ptr<pg::Connection> conn, const std::string& text,
      postgres_internal::Described described, PostgresCopyFormat format) {
    const int columns = static_cast<int>(described.oids.size());
    bool binary = false;
    if (format != PostgresCopyFormat::kText) {
      int unsupported = -1;
      for (int i = 0; i < columns && unsupported < 0; ++i) {
        if (!pg::HasBinaryDecoder(described.oids[i])) unsupported = i;
      }
      if (format == PostgresCopyFormat::kBinary && unsupported >= 0) {
        return absl::InvalidArgumentError(fmt::format(
            "copy_format: binary cannot read column \"{}\" of type {}; set copy_format: auto "
            "(reads such models in text format) or cast the column in the model",
            described.schema[unsupported].name, described.schema[unsupported].source_type));
      }
      // Before PostgreSQL 12, float text output was not the shortest form,
      // so only the text format gives the values that version always gave.
      binary = unsupported < 0 &&
               (format == PostgresCopyFormat::kBinary || PQserverVersion(conn->get()) >= 120000);
    }
    // Newlines around the statement keep a trailing "-- comment" inside it.
    std::string copy = "COPY (\n" + text + "\n) TO STDOUT";
    if (binary) copy += " (FORMAT binary)";
    pg::Result started(
        PQexecParams(conn->get(), copy.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0));
    ExecStatusType st = started != nullptr ? PQresultStatus(started.get()) : PGRES_FATAL_ERROR;
    if (st == PGRES_COPY_OUT) {
      if (PQnfields(started.get()) != columns ||
          PQbinaryTuples(started.get()) != (binary ? 1 : 0)) {
        return absl::InternalError(
            fmt::format("COPY announced {} columns in {} format where the query has {} in {}",
                        PQnfields(started.get()), PQbinaryTuples(started.get()) ? "binary" : "text",
                        columns, binary ? "binary" : "text"));
      }
      return std::unique_ptr<RowReader>(new PostgresCopyReader(
          std::move(conn), std::move(described.schema), std::move(described.oids), binary));
    }
    absl::Status status = conn->ErrorFromResult(started.get(), "query failed");
    const char* state =
        started != nullptr ? PQresultErrorField(started.get(), PG_DIAG_SQLSTATE) : nullptr;
    std::string_view sqlstate = state != nullptr ? state : "";
    if (st == PGRES_FATAL_ERROR && (sqlstate == "42601" || sqlstate == "0A000")) {
      // The statement is valid on its own (it was prepared above) but not as
      // the query of COPY (...): SHOW, EXPLAIN, a comment after a trailing
      // semicolon, or a server without COPY TO STDOUT.
      return absl::InvalidArgumentError(fmt::format(
          "PostgreSQL accepts this query but cannot run it inside COPY (...) TO STDOUT, which "
          "the source uses to read rows; set `extraction: rows` on the source to read it row by "
          "row. The server said: {}",
          status.message()));
    }
    if (st != PGRES_FATAL_ERROR) {
      return absl::InternalError(
          fmt::format("COPY did not start (libpq status {})", PQresStatus(st)));
    }
    return status;
  }

 private:
  // parallel_connections > 1: see the header comment.
  absl::StatusOr<std::unique_ptr<RowReader>> QueryParallel(std::string_view sql,
                                                           const std::string& key_column) {
    const std::string text = TrimModelSql(sql);
    BACKFLOW_ASSIGN_OR_RETURN(auto first,
                              pg::Connection::Open(SourceConnectOptions(url_, password_)));
    // One snapshot for every connection: the first exports it (its first
    // statement, which fixes the snapshot), the others import it.
    BACKFLOW_RETURN_IF_ERROR(
        first->Exec(kBeginSnapshot, {}, "starting the extraction's transaction failed").status());
    absl::StatusOr<pg::Result> exported = first->Exec("SELECT pg_export_snapshot()");
    if (!exported.ok()) {
      return absl::Status(
          exported.status().code(),
          fmt::format("{}; parallel_connections needs a PostgreSQL server that exports snapshots "
                      "(pg_export_snapshot): set parallel_connections: 1 for this source",
                      exported.status().message()));
    }
    const std::string snapshot = PQgetvalue(exported->get(), 0, 0);
    if (snapshot.empty() ||
        snapshot.find_first_not_of("0123456789ABCDEFabcdef-") != std::string::npos) {
      return absl::InternalError("PostgreSQL exported a snapshot id of an unexpected form");
    }
    BACKFLOW_ASSIGN_OR_RETURN(postgres_internal::Described described, Describe(*first, text));

    BACKFLOW_ASSIGN_OR_RETURN(std::vector<std::string> predicates,
                              SplitPredicates(*first, text, described, key_column));
    if (predicates.size() <= 1) {
      // Nothing to split on: one COPY, in the transaction already open.
      return StartCopy(std::move(first), text, std::move(described), options_.copy_format);
    }
    if (options_.after_snapshot_export_for_testing) options_.after_snapshot_export_for_testing();

    std::vector<std::unique_ptr<pg::Connection>> conns;
    conns.push_back(std::move(first));
    for (size_t i = 1; i < predicates.size(); ++i) {
      BACKFLOW_ASSIGN_OR_RETURN(auto conn,
                                pg::Connection::Open(SourceConnectOptions(url_, password_)));
      BACKFLOW_RETURN_IF_ERROR(
          conn->Exec(kBeginSnapshot, {}, "starting the extraction's transaction failed").status());
      if (options_.share_snapshot) {
        BACKFLOW_RETURN_IF_ERROR(conn->Exec("SET TRANSACTION SNAPSHOT '" + snapshot + "'", {},
                                            "importing the extraction's snapshot failed")
                                     .status());
      }
      conns.push_back(std::move(conn));
    }

    // Every COPY is started before any thread runs, so a failure to start
    // one closes them all (their readers cancel on destruction).
    std::vector<ParallelReaderPart> parts;
    parts.reserve(conns.size());
    for (size_t i = 0; i < conns.size(); ++i) {
      std::shared_ptr<PGcancel> cancel(PQgetCancel(conns[i]->get()), PQfreeCancel);
      if (cancel == nullptr) return absl::InternalError("libpq could not prepare a cancel request");
      std::string part =
          fmt::format("SELECT * FROM (\n{}\n) AS backflow_model WHERE {}", text, predicates[i]);
      BACKFLOW_ASSIGN_OR_RETURN(
          auto reader, StartCopy(std::move(conns[i]), part, described, options_.copy_format));
      parts.push_back(ParallelReaderPart{std::move(reader), [cancel] {
                                           char buf[256];
                                           PQcancel(cancel.get(), buf, sizeof(buf));
                                         }});
    }
    return NewParallelRowReader(std::move(described.schema), std::move(parts));
  }

  // One COPY decoded on a thread of its own, so that decoding overlaps the
  // caller's work on each row (an extraction's mapping and fingerprinting).
  absl::StatusOr<std::unique_ptr<RowReader>> QueryReadAhead(std::string_view sql) {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn,
                              pg::Connection::Open(SourceConnectOptions(url_, password_)));
    std::shared_ptr<PGcancel> cancel(PQgetCancel(conn->get()), PQfreeCancel);
    if (cancel == nullptr) return absl::InternalError("libpq could not prepare a cancel request");
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, QueryCopy(std::move(conn), sql));
    Schema schema = reader->schema();
    std::vector<ParallelReaderPart> parts;
    parts.push_back(ParallelReaderPart{std::move(reader), [cancel] {
                                         char buf[256];
                                         PQcancel(cancel.get(), buf, sizeof(buf));
                                       }});
    return NewParallelRowReader(std::move(schema), std::move(parts));
  }

  // The WHERE condition of each connection's share of the rows (over the
  // model as `backflow_model`), one per connection; a single entry when the
  // read is not split (no usable key column, fewer than two integer key
  // values in the range).
  absl::StatusOr<std::vector<std::string>> SplitPredicates(
      pg::Connection& conn, const std::string& text, const postgres_internal::Described& described,
      const std::string& key_column) const {
    const std::vector<std::string> whole = {"true"};
    int key = -1;
    for (size_t i = 0; i < described.schema.size(); ++i) {
      if (described.schema[i].name != key_column) continue;
      // A name returned twice cannot be referenced unambiguously.
      if (key >= 0) return whole;
      key = static_cast<int>(i);
    }
    // Without the key column the engine reports the model's error itself.
    if (key < 0) return whole;
    const std::string k = "backflow_model." + pg::QuoteIdentifier(described.schema[key].name);
    const int n = options_.parallel_connections;
    std::vector<std::string> predicates;
    Oid oid = described.oids[key];
    if (oid != pg::kInt2Oid && oid != pg::kInt4Oid && oid != pg::kInt8Oid) {
      // Any other type: by hash of the key's text.
      for (int i = 0; i < n; ++i) {
        predicates.push_back(fmt::format("(hashtext({}::text) & 2147483647) % {} = {}{}", k, n, i,
                                         i == 0 ? fmt::format(" OR {} IS NULL", k) : ""));
      }
      return predicates;
    }
    absl::StatusOr<pg::Result> bounds = conn.Exec(
        fmt::format("SELECT min({0})::int8, max({0})::int8 FROM (\n{1}\n) AS backflow_model", k,
                    text),
        {}, "finding the key range to split the model failed");
    if (!bounds.ok()) return bounds.status();
    if (PQgetisnull(bounds->get(), 0, 0) || PQgetisnull(bounds->get(), 0, 1)) return whole;
    const __int128 lo = std::stoll(PQgetvalue(bounds->get(), 0, 0));
    const __int128 hi = std::stoll(PQgetvalue(bounds->get(), 0, 1));
    const __int128 span = hi - lo + 1;
    const int parts = static_cast<int>(std::min<__int128>(n, span));
    if (parts <= 1) return whole;
    // Range i is [lo + span*i/parts, lo + span*(i+1)/parts); the first and the
    // last are open-ended, and NULL keys belong to the first.
    auto bound = [&](int i) {
      return fmt::format("'{}'::int8", static_cast<int64_t>(lo + span * i / parts));
    };
    for (int i = 0; i < parts; ++i) {
      if (i == 0) {
        predicates.push_back(fmt::format("{0} < {1} OR {0} IS NULL", k, bound(1)));
      } else if (i == parts - 1) {
        predicates.push_back(fmt::format("{} >= {}", k, bound(i)));
      } else {
        predicates.push_back(fmt::format("{0} >= {1} AND {0} < {2}", k, bound(i), bound(i + 1)));
      }
    }
    return predicates;
  }

  std::string url_;
  std::string password_;
  PostgresSourceOptions options_;
  std::unique_ptr<WarehouseChangeDetection> change_detection_;
};

}  // namespace

namespace postgres_internal {

pg::ConnectOptions ConnectOptionsFor(const std::string& url, const std::string& password) {
  return SourceConnectOptions(url, password);
}

absl::StatusOr<Described> Describe(pg::Connection& conn, const std::string& text) {
  return PostgresSource::Describe(conn, text);
}

absl::StatusOr<std::unique_ptr<RowReader>> StartCopy(std::shared_ptr<pg::Connection> conn,
                                                     const std::string& text, Described described,
                                                     PostgresCopyFormat format) {
  return PostgresSource::StartCopy(std::move(conn), text, std::move(described), format);
}

}  // namespace postgres_internal

std::unique_ptr<Source> NewPostgresSource(std::string url, std::string password,
                                          PostgresExtraction extraction) {
  PostgresSourceOptions options;
  options.extraction = extraction;
  return NewPostgresSource(std::move(url), std::move(password), std::move(options));
}

std::unique_ptr<Source> NewPostgresSource(std::string url, std::string password,
                                          PostgresSourceOptions options) {
  return std::make_unique<PostgresSource>(std::move(url), std::move(password), std::move(options));
}

SourceDefinition PostgresSourceDefinition() {
  SourceDefinition def;
  def.type = "postgres";
  def.title = "PostgreSQL";
  def.description =
      "Runs model SQL on PostgreSQL 12+ (or a wire-compatible database) and streams the rows in "
      "a read-only session pinned to UTC. Timestamps become ISO-8601, numeric stays exact, "
      "json/jsonb become JSON; arrays and other types arrive as their text form.";
  def.maturity = "beta";
  SettingSpec url;
  url.key = "url";
  url.label = "Connection URL";
  url.description =
      "postgresql://user@host:5432/database (add ?sslmode=verify-full for TLS), or a libpq "
      "connection string such as \"host=db port=5432 dbname=analytics user=backflow\". Keep "
      "the password out of it; use `password`.";
  url.type = SettingType::kString;
  url.required = true;
  def.settings.push_back(url);
  SettingSpec password;
  password.key = "password";
  password.label = "Password";
  password.description =
      "Password of the url's user, e.g. ${env:PG_PASSWORD}; overrides a password in the url. "
      "Leave out for ~/.pgpass or certificate authentication.";
  password.type = SettingType::kString;
  password.secret = true;
  def.settings.push_back(password);
  SettingSpec extraction;
  extraction.key = "extraction";
  extraction.label = "Extraction";
  extraction.description =
      "How rows are read. copy (default) streams the model with `COPY (query) TO STDOUT`, at "
      "about the speed the server produces rows. rows reads the result row by row (libpq "
      "single-row mode), which costs more client CPU per row: use it for servers or poolers "
      "that do not support COPY TO STDOUT (some proxies; Amazon Redshift has its own `redshift` "
      "source type), or for statements "
      "PostgreSQL cannot run inside COPY such as SHOW or EXPLAIN. Both give the same columns "
      "and values.";
  extraction.type = SettingType::kEnum;
  extraction.default_value = "copy";
  extraction.allowed_values = {"copy", "rows"};
  def.settings.push_back(extraction);
  SettingSpec copy_format;
  copy_format.key = "copy_format";
  copy_format.label = "COPY format";
  copy_format.description =
      "Wire format of `extraction: copy`. auto (default) uses COPY's binary format when every "
      "column of the model is boolean, smallint, integer, bigint, real, double precision, "
      "numeric, text, varchar, char, name, uuid, date, timestamp, timestamptz, json, jsonb or "
      "bytea (domains over them included) and the server is PostgreSQL 12+, which costs the "
      "server and Backflow less CPU per row; models with other column types (arrays, interval, "
      "time, enums, ...) are read in text format. text always uses the text format; binary "
      "always uses the binary format and rejects models with other column types. The values "
      "are the same in every format.";
  copy_format.type = SettingType::kEnum;
  copy_format.default_value = "auto";
  copy_format.allowed_values = {"auto", "text", "binary"};
  def.settings.push_back(copy_format);
  SettingSpec parallel;
  parallel.key = "parallel_connections";
  parallel.label = "Parallel connections";
  parallel.description = fmt::format(
      "Connections that read a model at once during a sync, 1 to {} (default 1). Above 1, the "
      "model's rows are split by its unique identifier column and read with COPY over that many "
      "connections sharing one snapshot (REPEATABLE READ READ ONLY transactions, "
      "pg_export_snapshot), so writes committed during the read never produce a mix. Integer "
      "identifiers (smallint, integer, bigint) are split into equal ranges between their min and "
      "max (one extra min/max query over the model); other types by a hash of their text, each "
      "connection then evaluating the whole model and keeping its share. Worth it when the "
      "server has idle cores and the model is a plain scan of a table; it costs one server "
      "process per connection, and one decoding thread each on Backflow's host: with the server "
      "on the same small host, one connection can be faster (2 cores: bench/README.md). Needs "
      "`extraction: copy` and PostgreSQL itself (not a "
      "look-alike without exported snapshots). The model must return the same rows each time "
      "it runs in one snapshot: no random(), no LIMIT without ORDER BY; now() is each "
      "connection's own transaction start. Previews and connection tests use one connection.",
      kMaxPostgresParallelConnections);
  parallel.type = SettingType::kInteger;
  parallel.default_value = 1;
  def.settings.push_back(parallel);
  SettingSpec state_schema;
  state_schema.key = "state_schema";
  state_schema.label = "State schema";
  state_schema.description =
      "Schema where models with `change_detection: warehouse` keep their checkpoint (one table, "
      "`checkpoints`: per mapping and record key, the hash of the row last delivered and the "
      "payload's fingerprint and identity). Created on first use when missing, which needs "
      "CREATE on the database (or an existing schema where the user may create tables); the "
      "user then needs SELECT, INSERT, UPDATE and DELETE on the table. Give each Backflow "
      "deployment reading this database its own schema. Unused by models in local mode.";
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
    std::string password;
    auto pw = settings.find("password");
    if (pw != settings.end() && pw->is_string()) password = pw->get<std::string>();
    PostgresExtraction mode = PostgresExtraction::kCopy;
    auto extraction = settings.find("extraction");
    if (extraction != settings.end() && !extraction->is_null()) {
      if (*extraction == "rows") {
        mode = PostgresExtraction::kRows;
      } else if (*extraction != "copy") {
        return absl::InvalidArgumentError("extraction: must be copy or rows");
      }
    }
    PostgresSourceOptions options;
    options.extraction = mode;
    auto copy_format = settings.find("copy_format");
    if (copy_format != settings.end() && !copy_format->is_null()) {
      if (*copy_format == "text") {
        options.copy_format = PostgresCopyFormat::kText;
      } else if (*copy_format == "binary") {
        options.copy_format = PostgresCopyFormat::kBinary;
      } else if (*copy_format != "auto") {
        return absl::InvalidArgumentError("copy_format: must be auto, text or binary");
      }
    }
    auto parallel = settings.find("parallel_connections");
    if (parallel != settings.end() && !parallel->is_null()) {
      if (!parallel->is_number_integer() || *parallel < 1 ||
          *parallel > kMaxPostgresParallelConnections) {
        return absl::InvalidArgumentError(
            fmt::format("parallel_connections: must be an integer from 1 to {}, got {}",
                        kMaxPostgresParallelConnections, parallel->dump()));
      }
      options.parallel_connections = parallel->get<int>();
    }
    auto state_schema = settings.find("state_schema");
    if (state_schema != settings.end() && !state_schema->is_null()) {
      if (!state_schema->is_string() || state_schema->get<std::string>().empty() ||
          state_schema->get<std::string>().size() > 63) {
        return absl::InvalidArgumentError(
            "state_schema: must be a schema name of 1 to 63 characters, e.g. backflow_state");
      }
      options.state_schema = state_schema->get<std::string>();
    }
    if (options.parallel_connections > 1 && mode != PostgresExtraction::kCopy) {
      return absl::InvalidArgumentError(
          "parallel_connections: reading over several connections needs `extraction: copy`; "
          "remove `extraction: rows` or set parallel_connections: 1");
    }
    return NewPostgresSource(url->get<std::string>(), std::move(password), std::move(options));
  };
  return def;
}

}  // namespace backflow
