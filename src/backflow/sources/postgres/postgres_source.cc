#include "backflow/sources/postgres/postgres_source.h"

#include <libpq-fe.h>

#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/status_macros.h"
#include "backflow/pg/connection.h"
#include "backflow/pg/copy_text.h"
#include "backflow/pg/types.h"
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

// COPY (...) TO STDOUT in text format: one CopyData message per row, parsed
// in place (pg/copy_text.h) and decoded with the same per-OID rules as the
// single-row reader.
class PostgresCopyReader : public RowReader {
 public:
  PostgresCopyReader(std::unique_ptr<pg::Connection> conn, Schema schema, std::vector<Oid> oids)
      : conn_(std::move(conn)), schema_(std::move(schema)), oids_(std::move(oids)) {
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
    if (!error_.ok()) return error_;
    if (done_) return false;
    std::string_view line;
    while (!lines_.NextLine(line)) {
      FreeChunk();
      int n = PQgetCopyData(conn_->get(), &chunk_, /*async=*/0);
      if (n > 0) {
        lines_.Feed(std::string_view(chunk_, static_cast<size_t>(n)));
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

 private:
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
    if (lines_.has_partial()) {
      return Fail(absl::UnavailableError(fmt::format(
          "the COPY stream from PostgreSQL at {} ended in the middle of a row", conn_->target())));
    }
    done_ = true;
    FreeChunk();
    return false;
  }

  absl::Status Fail(absl::Status status) {
    error_ = std::move(status);
    FreeChunk();
    return error_;
  }

  void FreeChunk() {
    if (chunk_ != nullptr) PQfreemem(chunk_);
    chunk_ = nullptr;
  }

  std::unique_ptr<pg::Connection> conn_;
  Schema schema_;
  std::vector<Oid> oids_;
  char* chunk_ = nullptr;  // the CopyData message being read (libpq-allocated)
  pg::CopyTextLines lines_;
  std::vector<std::string_view> fields_;
  std::string scratch_;
  bool in_copy_ = true;
  bool done_ = false;
  absl::Status error_;
};

class PostgresSource : public Source {
 public:
  PostgresSource(std::string url, std::string password, PostgresExtraction extraction)
      : url_(std::move(url)), password_(std::move(password)), extraction_(extraction) {}

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn,
                              pg::Connection::Open(SourceConnectOptions(url_, password_)));
    return conn->Exec("SELECT 1", {}, "connection check failed").status();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn,
                              pg::Connection::Open(SourceConnectOptions(url_, password_)));
    if (extraction_ == PostgresExtraction::kCopy) return QueryCopy(std::move(conn), sql);
    return QueryRows(std::move(conn), sql);
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

  absl::StatusOr<std::unique_ptr<RowReader>> QueryCopy(std::unique_ptr<pg::Connection> conn,
                                                       std::string_view sql) {
    std::string text = TrimModelSql(sql);
    // Parse and describe without running: the schema, and any SQL error,
    // before the first row. The unnamed statement is one statement only.
    pg::Result prepared(PQprepare(conn->get(), "", text.c_str(), 0, nullptr));
    if (prepared == nullptr || PQresultStatus(prepared.get()) != PGRES_COMMAND_OK) {
      return conn->ErrorFromResult(prepared.get(), "query failed");
    }
    pg::Result described(PQdescribePrepared(conn->get(), ""));
    if (described == nullptr || PQresultStatus(described.get()) != PGRES_COMMAND_OK) {
      return conn->ErrorFromResult(described.get(), "query failed");
    }
    int columns = PQnfields(described.get());
    if (columns == 0) return NoResultSetError();
    Schema schema = pg::SchemaFromResult(described.get());
    std::vector<Oid> oids;
    oids.reserve(columns);
    for (int i = 0; i < columns; ++i) oids.push_back(PQftype(described.get(), i));
    described.reset();

    // Newlines around the statement keep a trailing "-- comment" inside it.
    std::string copy = "COPY (\n" + text + "\n) TO STDOUT";
    pg::Result started(
        PQexecParams(conn->get(), copy.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0));
    ExecStatusType st = started != nullptr ? PQresultStatus(started.get()) : PGRES_FATAL_ERROR;
    if (st == PGRES_COPY_OUT) {
      if (PQnfields(started.get()) != columns || PQbinaryTuples(started.get()) != 0) {
        return absl::InternalError(fmt::format("COPY announced {} columns where the query has {}",
                                               PQnfields(started.get()), columns));
      }
      return std::unique_ptr<RowReader>(
          new PostgresCopyReader(std::move(conn), std::move(schema), std::move(oids)));
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

  std::string url_;
  std::string password_;
  PostgresExtraction extraction_;
};

}  // namespace

std::unique_ptr<Source> NewPostgresSource(std::string url, std::string password,
                                          PostgresExtraction extraction) {
  return std::make_unique<PostgresSource>(std::move(url), std::move(password), extraction);
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
    return NewPostgresSource(url->get<std::string>(), std::move(password), mode);
  };
  return def;
}

}  // namespace backflow
