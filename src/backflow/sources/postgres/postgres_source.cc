#include "backflow/sources/postgres/postgres_source.h"

#include <libpq-fe.h>

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/status_macros.h"
#include "backflow/pg/connection.h"
#include "backflow/pg/types.h"

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

class PostgresRowReader : public RowReader {
 public:
  PostgresRowReader(std::unique_ptr<pg::Connection> conn, pg::Result first)
      : conn_(std::move(conn)), pending_(std::move(first)) {
    schema_ = pg::SchemaFromResult(pending_.get());
    oids_.reserve(schema_.size());
    for (int i = 0; i < PQnfields(pending_.get()); ++i) oids_.push_back(PQftype(pending_.get(), i));
  }

  ~PostgresRowReader() override {
    if (!done_ && error_.ok() && !conn_->broken()) {
      // Abandoned mid-stream: ask the server to stop rather than letting it
      // produce rows nobody reads.
      if (PGcancel* cancel = PQgetCancel(conn_->get()); cancel != nullptr) {
        char buf[256];
        PQcancel(cancel, buf, sizeof(buf));
        PQfreeCancel(cancel);
      }
    }
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

class PostgresSource : public Source {
 public:
  PostgresSource(std::string url, std::string password)
      : url_(std::move(url)), password_(std::move(password)) {}

  absl::Status CheckConnection() override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn,
                              pg::Connection::Open(SourceConnectOptions(url_, password_)));
    return conn->Exec("SELECT 1", {}, "connection check failed").status();
  }

  absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) override {
    BACKFLOW_ASSIGN_OR_RETURN(auto conn,
                              pg::Connection::Open(SourceConnectOptions(url_, password_)));
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
        return std::unique_ptr<RowReader>(new PostgresRowReader(std::move(conn), std::move(first)));
      case PGRES_COMMAND_OK:
        return absl::InvalidArgumentError(
            "the query returned no result set; a model must be a SELECT (or another statement "
            "that returns rows)");
      default: {
        absl::Status status = conn->ErrorFromResult(first.get(), "query failed");
        while (pg::Result rest{PQgetResult(conn->get())}) {
        }
        return status;
      }
    }
  }

 private:
  std::string url_;
  std::string password_;
};

}  // namespace

std::unique_ptr<Source> NewPostgresSource(std::string url, std::string password) {
  return std::make_unique<PostgresSource>(std::move(url), std::move(password));
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
  def.create = [](const nlohmann::json& settings,
                  const ConnectorEnv&) -> absl::StatusOr<std::unique_ptr<Source>> {
    auto url = settings.find("url");
    if (url == settings.end() || !url->is_string() || url->get<std::string>().empty()) {
      return absl::InvalidArgumentError("url: required setting is missing");
    }
    std::string password;
    auto pw = settings.find("password");
    if (pw != settings.end() && pw->is_string()) password = pw->get<std::string>();
    return NewPostgresSource(url->get<std::string>(), std::move(password));
  };
  return def;
}

}  // namespace backflow
