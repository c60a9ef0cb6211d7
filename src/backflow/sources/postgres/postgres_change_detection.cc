// Warehouse change detection on PostgreSQL (see warehouse_change_detection.h).
//
// The checkpoint is one table, <state_schema>.checkpoints, keyed by (mapping,
// record_key COLLATE "C"), holding the row hash (md5 of the row's text form,
// as uuid), the mapping version (uuid), the payload fingerprint and the
// identity (bytea). A pass runs in one REPEATABLE READ transaction on one
// connection: two temporary tables (dropped with the transaction) are made
// READ WRITE, then the transaction turns READ ONLY before the model runs, so
// the model cannot write (as with the plain source) while the temporary
// tables still can be filled:
//   backflow_candidates  the candidate rows with their row hash (the model
//                        runs once with md5 over each row, and a second time
//                        reading only the key, to find duplicated keys);
//   backflow_gone        the stored keys of the run's mappings that the model
//                        no longer returns (the model's keys a third time).
// The candidates are then read with COPY, and each mapping's entries of the
// candidate and gone keys with COPY ... ORDER BY record_key. Writes go
// through a second connection, one committed transaction per Apply().
//
// Cancel (WarehousePassOptions::cancel): a watcher thread (QueryCancelWatcher)
// follows the pass from Begin() to Close() and, once the flag reads true,
// sends PQcancel for the pass's connection, which stops the statement or
// COPY running there (best effort: a cancel that reaches the server between
// two statements stops nothing, and the flag, checked before each statement
// and each row, stops the pass instead). The step or reader then returns
// kCancelled. Close() after a cancel sends nothing: it closes the connection,
// and the server rolls the transaction back and drops the temporary tables
// with the session, so nothing is left behind.
#include <libpq-fe.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "backflow/common/crypto.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/status_macros.h"
#include "backflow/pg/connection.h"
#include "backflow/pg/types.h"
#include "backflow/sources/postgres/postgres_internal.h"
#include "backflow/sources/query_cancel_watcher.h"
#include "backflow/sources/warehouse_change_detection.h"
#include "fmt/format.h"

namespace backflow::postgres_internal {
namespace {

constexpr char kCandidates[] = "pg_temp.backflow_candidates";
constexpr char kGone[] = "pg_temp.backflow_gone";

std::string Literal(pg::Connection& conn, std::string_view value) {
  char* escaped = PQescapeLiteral(conn.get(), value.data(), value.size());
  if (escaped == nullptr) return "NULL";  // only on out-of-memory; matches nothing
  std::string out = escaped;
  PQfreemem(escaped);
  return out;
}

absl::StatusOr<std::string> FromHex(std::string_view hex) {
  std::optional<std::string> bytes = HexDecode(hex);
  if (!bytes) return absl::DataLossError("invalid hex in the checkpoint table");
  return *std::move(bytes);
}

// Key types whose text PostgreSQL (::text) and Backflow's decoder write alike.
bool KeyTypeSupported(Oid oid) {
  return oid == pg::kInt2Oid || oid == pg::kInt4Oid || oid == pg::kInt8Oid || oid == pg::kTextOid ||
         oid == pg::kVarcharOid || oid == pg::kUuidOid || oid == pg::kNameOid;
}

constexpr char kPassWhat[] = "the PostgreSQL change detection statement";

// Stops the pass's statements once its run is cancelled (see the top of the
// file). Created and used on the owner's thread.
class PassCanceller {
 public:
  // `cancel` may be null (nothing is watched).
  PassCanceller(pg::Connection& conn, const std::atomic<bool>* cancel) : cancel_(cancel) {
    if (cancel == nullptr) return;
    // Made now: PQcancel() with it is safe from another thread.
    std::shared_ptr<PGcancel> request(PQgetCancel(conn.get()), PQfreeCancel);
    if (request == nullptr) return;  // then the flag is only checked between steps
    // Repeated until Stop(): a cancel that reaches the server before the
    // step's statement has started is ignored there. Once the flag is set
    // every step ends kCancelled (Checked) whatever its statement did, and
    // Close() stops the watch before its ROLLBACK, so a repeat only ever stops
    // a statement whose outcome is discarded.
    watcher_ = std::make_unique<QueryCancelWatcher>(
        cancel,
        [request] {
          char error[256];
          PQcancel(request.get(), error, sizeof(error));
        },
        std::chrono::milliseconds(100), QueryCancelWatcher::Repeat::kUntilStopped);
  }

  bool requested() const { return QueryCancelRequested(cancel_); }

  // `status` of a step, or kCancelled once the run is cancelled.
  absl::Status Checked(absl::Status status) const {
    if (requested()) return QueryCancelledError(kPassWhat);
    return status;
  }

  // Ends the watch: no cancel request is sent afterwards.
  void Stop() {
    if (watcher_ != nullptr) watcher_->Stop();
  }

 private:
  const std::atomic<bool>* const cancel_;
  std::unique_ptr<QueryCancelWatcher> watcher_;
};

// A reader of the pass's connection that stops once the run is cancelled
// (its COPY, cancelled by the watcher or abandoned, is stopped by the inner
// reader's destructor).
class CancelCheckedReader : public RowReader {
 public:
  CancelCheckedReader(std::unique_ptr<RowReader> rows, std::shared_ptr<PassCanceller> canceller)
      : rows_(std::move(rows)), canceller_(std::move(canceller)) {}

  const Schema& schema() const override { return rows_->schema(); }

  absl::StatusOr<bool> Next(Row& row) override {
    BACKFLOW_RETURN_IF_ERROR(canceller_->Checked(absl::OkStatus()));
    absl::StatusOr<bool> more = rows_->Next(row);
    if (!more.ok()) return canceller_->Checked(more.status());
    return more;
  }

 private:
  std::unique_ptr<RowReader> rows_;
  std::shared_ptr<PassCanceller> canceller_;
};

class EntryScanner : public WarehouseEntryScanner {
 public:
  explicit EntryScanner(std::unique_ptr<RowReader> reader) : reader_(std::move(reader)) {}

  absl::StatusOr<bool> Next(WarehouseCheckpointEntry& entry) override {
    BACKFLOW_ASSIGN_OR_RETURN(bool more, reader_->Next(row_));
    if (!more) return false;
    if (row_.size() != 3 || row_[0].is_null()) {
      return absl::DataLossError("the warehouse checkpoint table returned a malformed entry");
    }
    entry.key = row_[0].text();
    BACKFLOW_ASSIGN_OR_RETURN(std::string fp, FromHex(row_[1].text()));
    if (fp.size() != 16) {
      return absl::DataLossError(fmt::format(
          "the warehouse checkpoint entry of key \"{}\" has a fingerprint of {} bytes, not 16",
          entry.key, fp.size()));
    }
    entry.fingerprint = Fingerprint::FromBytes(fp.data(), fp.size());
    BACKFLOW_ASSIGN_OR_RETURN(entry.identity, FromHex(row_[2].text()));
    return true;
  }

 private:
  std::unique_ptr<RowReader> reader_;
  Row row_;
};

class Snapshot : public WarehouseSnapshot {
 public:
  Snapshot(std::shared_ptr<pg::Connection> conn, std::shared_ptr<PassCanceller> canceller,
           std::string sql, std::string key, std::string table, Described described,
           PostgresCopyFormat copy_format)
      : copy_format_(copy_format),
        conn_(std::move(conn)),
        canceller_(std::move(canceller)),
        sql_(std::move(sql)),
        key_(std::move(key)),
        table_(std::move(table)),
        described_(std::move(described)) {
    schema_ = described_.schema;
    schema_.pop_back();  // backflow_row_hash
  }
  ~Snapshot() override { (void)Close(); }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<std::unique_ptr<RowReader>> ReadCandidates(
      const WarehouseCandidateFilter& filter) override {
    int key = -1;
    for (size_t i = 0; i < schema_.size(); ++i) {
      if (schema_[i].name == key_) key = static_cast<int>(i);
    }
    if (key < 0) {
      return absl::FailedPreconditionError(
          fmt::format("the model does not return its unique identifier column \"{}\"", key_));
    }
    const Oid oid = described_.oids[key];
    if (!KeyTypeSupported(oid)) {
      return absl::FailedPreconditionError(fmt::format(
          "change_detection: warehouse needs the unique identifier column \"{0}\" to be an "
          "integer, text, varchar or uuid (it is {1}); cast it in the model's SQL, e.g. "
          "{0}::text AS {0}",
          key_, schema_[key].source_type));
    }
    const std::string k = pg::QuoteIdentifier(key_);
    std::vector<pg::Param> params;
    std::vector<std::string_view> in_flight(filter.in_flight_keys.begin(),
                                            filter.in_flight_keys.end());
    params.push_back(
        pg::Param::Binary(pg::BinaryArray(pg::kTextOid, in_flight), pg::kTextArrayOid));
    params.push_back(pg::Param::Text(filter.all_rows ? "true" : "false"));
    std::string joins, conditions;
    std::vector<std::string_view> names;
    for (size_t i = 0; i < filter.mappings.size(); ++i) {
      const auto& [name, version] = filter.mappings[i];
      names.push_back(name);
      params.push_back(pg::Param::Text(name));
      params.push_back(pg::Param::Text(version.ToHex()));
      const size_t p = params.size() - 1;  // $p: name, $p+1: version
      joins += fmt::format(
          "LEFT JOIN {0} AS c{1} ON c{1}.mapping = ${2} AND c{1}.record_key = h.record_key\n",
          table_, i, p);
      conditions += fmt::format(
          "\n   OR c{0}.row_hash IS DISTINCT FROM h.row_hash OR c{0}.version IS DISTINCT FROM "
          "${1}::uuid",
          i, p + 1);
    }
    const std::string insert = fmt::format(
        "INSERT INTO {0}\n"
        "SELECT m.*, h.row_hash FROM (\n{1}\n) AS m\n"
        "CROSS JOIN LATERAL (SELECT md5(m::text)::uuid AS row_hash, (m.{2})::text COLLATE \"C\" "
        "AS record_key) AS h\n"
        "{3}"
        "WHERE h.record_key IS NULL OR $2::boolean OR h.record_key = ANY($1::text[]){4}\n"
        "   OR h.record_key IN (SELECT (d.{2})::text COLLATE \"C\" FROM (\n{1}\n) AS d "
        "GROUP BY 1 HAVING count(*) > 1)",
        kCandidates, sql_, k, joins, conditions);
    BACKFLOW_RETURN_IF_ERROR(canceller_->Checked(absl::OkStatus()));
    BACKFLOW_RETURN_IF_ERROR(canceller_->Checked(
        conn_->ExecParams(insert, params, false, "finding the model's changed rows failed")
            .status()));
    const std::string gone = fmt::format(
        "INSERT INTO {0}\n"
        "SELECT DISTINCT c.record_key FROM {1} AS c\n"
        "WHERE c.mapping = ANY($1::text[]) AND NOT EXISTS (\n"
        "  SELECT 1 FROM (\n{2}\n) AS d WHERE (d.{3})::text = c.record_key)",
        kGone, table_, sql_, k);
    BACKFLOW_RETURN_IF_ERROR(canceller_->Checked(
        conn_
            ->ExecParams(
                gone, {pg::Param::Binary(pg::BinaryArray(pg::kTextOid, names), pg::kTextArrayOid)},
                false, "finding the keys gone from the model failed")
            .status()));
    return Copy(fmt::format("SELECT * FROM {}", kCandidates), described_);
  }

  absl::StatusOr<std::unique_ptr<WarehouseEntryScanner>> ScanEntries(
      const std::string& mapping) override {
    const std::string k = pg::QuoteIdentifier(key_);
    const std::string sql = fmt::format(
        "SELECT c.record_key, encode(c.fingerprint, 'hex'), encode(c.identity, 'hex')\n"
        "FROM {0} AS c\n"
        "WHERE c.mapping = {1} AND c.record_key IN (\n"
        "  SELECT (bc.{2})::text FROM {3} AS bc WHERE bc.{2} IS NOT NULL\n"
        "  UNION SELECT g.record_key FROM {4} AS g)\n"
        "ORDER BY c.record_key",
        table_, Literal(*conn_, mapping), k, kCandidates, kGone);
    BACKFLOW_RETURN_IF_ERROR(canceller_->Checked(absl::OkStatus()));
    absl::StatusOr<Described> described = Describe(*conn_, sql);
    if (!described.ok()) return canceller_->Checked(described.status());
    BACKFLOW_ASSIGN_OR_RETURN(auto reader, Copy(sql, *std::move(described)));
    return std::unique_ptr<WarehouseEntryScanner>(new EntryScanner(std::move(reader)));
  }

  absl::StatusOr<int64_t> CountEntries(const std::string& mapping) override {
    BACKFLOW_RETURN_IF_ERROR(canceller_->Checked(absl::OkStatus()));
    absl::StatusOr<pg::Result> result = conn_->ExecParams(
        fmt::format("SELECT count(*) FROM {} WHERE mapping = $1", table_),
        {pg::Param::Text(mapping)}, false, "counting the warehouse checkpoint failed");
    if (!result.ok()) return canceller_->Checked(result.status());
    return std::stoll(PQgetvalue(result->get(), 0, 0));
  }

  absl::Status Close() override {
    if (closed_) return absl::OkStatus();
    closed_ = true;
    canceller_->Stop();
    if (canceller_->requested()) {
      // Bounded: closing the connection (once its readers are gone) ends the
      // transaction and drops the temporary tables without waiting on it.
      conn_.reset();
      return absl::OkStatus();
    }
    if (conn_->broken()) return absl::OkStatus();
    // Nothing of the pass is kept: the temporary tables go with the transaction.
    return conn_->Exec("ROLLBACK", {}, "ending the change detection's transaction failed").status();
  }

 private:
  // COPY of `text` on the pass's connection, stopped once the run is cancelled.
  absl::StatusOr<std::unique_ptr<RowReader>> Copy(const std::string& text, Described described) {
    BACKFLOW_RETURN_IF_ERROR(canceller_->Checked(absl::OkStatus()));
    absl::StatusOr<std::unique_ptr<RowReader>> rows =
        StartCopy(conn_, text, std::move(described), copy_format_);
    if (!rows.ok()) return canceller_->Checked(rows.status());
    return std::unique_ptr<RowReader>(new CancelCheckedReader(*std::move(rows), canceller_));
  }

  const PostgresCopyFormat copy_format_;
  std::shared_ptr<pg::Connection> conn_;
  std::shared_ptr<PassCanceller> canceller_;  // stopped before the connection closes
  std::string sql_;
  std::string key_;
  std::string table_;
  Described described_;  // of backflow_candidates: the model's columns, then the row hash
  Schema schema_;
  bool closed_ = false;
};

class ChangeDetection : public WarehouseChangeDetection {
 public:
  ChangeDetection(std::string url, std::string password, std::string schema,
                  PostgresCopyFormat copy_format)
      : copy_format_(copy_format),
        url_(std::move(url)),
        password_(std::move(password)),
        schema_(std::move(schema)),
        table_(pg::QuoteIdentifier(schema_) + ".checkpoints") {}

  absl::StatusOr<std::unique_ptr<WarehouseSnapshot>> Begin(
      const std::string& sql, const std::string& key,
      const WarehousePassOptions& options) override {
    // A run already cancelled opens no connection.
    if (QueryCancelRequested(options.cancel)) return QueryCancelledError(kPassWhat);
    BACKFLOW_ASSIGN_OR_RETURN(std::unique_ptr<pg::Connection> opened,
                              pg::Connection::Open(ConnectOptionsFor(url_, password_)));
    std::shared_ptr<pg::Connection> conn = std::move(opened);
    // Declared after the connection: its watch ends before the connection closes.
    auto canceller = std::make_shared<PassCanceller>(*conn, options.cancel);
    BACKFLOW_RETURN_IF_ERROR(canceller->Checked(EnsureTable(*conn)));
    BACKFLOW_RETURN_IF_ERROR(
        canceller->Checked(conn->Exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ WRITE", {},
                                      "starting the change detection's transaction failed")
                               .status()));
    const std::string text = TrimModelSql(sql);
    const std::string prefix = fmt::format(
        "CREATE TEMPORARY TABLE backflow_candidates ON COMMIT DROP AS SELECT m.*, NULL::uuid AS "
        "backflow_row_hash FROM (\n");
    const std::string create = prefix + text + "\n) AS m WITH NO DATA";
    pg::Result created(PQexec(conn->get(), create.c_str()));
    if (created == nullptr || PQresultStatus(created.get()) != PGRES_COMMAND_OK) {
      return canceller->Checked(
          conn->ErrorFromResult(created.get(), "query failed", static_cast<int>(prefix.size())));
    }
    BACKFLOW_RETURN_IF_ERROR(canceller->Checked(
        conn->Exec("CREATE TEMPORARY TABLE backflow_gone (record_key text COLLATE \"C\") ON "
                   "COMMIT DROP",
                   {}, "preparing change detection failed")
            .status()));
    // From here on the model cannot write (temporary tables still can be filled).
    BACKFLOW_RETURN_IF_ERROR(canceller->Checked(
        conn->Exec("SET LOCAL transaction_read_only = on", {}, "preparing change detection failed")
            .status()));
    absl::StatusOr<Described> described =
        Describe(*conn, fmt::format("SELECT * FROM {}", kCandidates));
    if (!described.ok()) return canceller->Checked(described.status());
    return std::unique_ptr<WarehouseSnapshot>(new Snapshot(std::move(conn), std::move(canceller),
                                                           text, key, table_, *std::move(described),
                                                           copy_format_));
  }

  absl::Status Apply(const std::string& mapping,
                     const std::vector<WarehouseCheckpointWrite>& writes) override {
    if (writes.empty()) return absl::OkStatus();
    // The last write of each key wins.
    std::map<std::string_view, const WarehouseCheckpointWrite*> last;
    for (const WarehouseCheckpointWrite& w : writes) last[w.key] = &w;
    std::vector<std::string_view> removed, keys, hashes, versions, fps, identities;
    std::vector<std::string> storage;
    storage.reserve(last.size() * 2);
    for (const auto& [key, w] : last) {
      if (w->kind == WarehouseCheckpointWrite::Kind::kRemove) {
        removed.push_back(key);
        continue;
      }
      keys.push_back(key);
      hashes.push_back(w->row_hash);
      storage.push_back(w->version.ToHex());
      versions.push_back(storage.back());
      auto fp = w->fingerprint.ToBytes();
      storage.emplace_back(reinterpret_cast<const char*>(fp.data()), fp.size());
      fps.push_back(storage.back());
      identities.push_back(w->identity);
    }
    if (write_conn_ == nullptr || write_conn_->broken()) {
      write_conn_.reset();
      BACKFLOW_ASSIGN_OR_RETURN(write_conn_,
                                pg::Connection::Open(ConnectOptionsFor(url_, password_)));
    }
    pg::Connection& conn = *write_conn_;
    auto run = [&]() -> absl::Status {
      BACKFLOW_RETURN_IF_ERROR(conn.Exec("BEGIN READ WRITE", {}, kWriteFailed).status());
      if (!removed.empty()) {
        BACKFLOW_RETURN_IF_ERROR(
            conn.ExecParams(
                    fmt::format("DELETE FROM {} WHERE mapping = $1 AND record_key = ANY($2)",
                                table_),
                    {pg::Param::Text(mapping),
                     pg::Param::Binary(pg::BinaryArray(pg::kTextOid, removed), pg::kTextArrayOid)},
                    false, kWriteFailed)
                .status());
      }
      if (!keys.empty()) {
        const std::string upsert = fmt::format(
            "INSERT INTO {} (mapping, record_key, row_hash, version, fingerprint, identity)\n"
            "SELECT $1, u.k, NULLIF(u.h, '')::uuid, u.v::uuid, u.f, u.i\n"
            "FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[]) "
            "AS u(k, h, v, f, i)\n"
            "ON CONFLICT (mapping, record_key) DO UPDATE SET row_hash = EXCLUDED.row_hash, "
            "version = EXCLUDED.version, fingerprint = EXCLUDED.fingerprint, identity = "
            "EXCLUDED.identity",
            table_);
        BACKFLOW_RETURN_IF_ERROR(
            conn.ExecParams(
                    upsert,
                    {pg::Param::Text(mapping),
                     pg::Param::Binary(pg::BinaryArray(pg::kTextOid, keys), pg::kTextArrayOid),
                     pg::Param::Binary(pg::BinaryArray(pg::kTextOid, hashes), pg::kTextArrayOid),
                     pg::Param::Binary(pg::BinaryArray(pg::kTextOid, versions), pg::kTextArrayOid),
                     pg::Param::Binary(pg::BinaryArray(pg::kByteaOid, fps), pg::kByteaArrayOid),
                     pg::Param::Binary(pg::BinaryArray(pg::kByteaOid, identities),
                                       pg::kByteaArrayOid)},
                    false, kWriteFailed)
                .status());
      }
      return conn.Exec("COMMIT", {}, kWriteFailed).status();
    };
    absl::Status status = run();
    if (!status.ok() && !conn.broken()) (void)conn.Exec("ROLLBACK");
    return status;
  }

 private:
  static constexpr char kWriteFailed[] = "writing the warehouse checkpoint failed";

  // Creates the schema and table when missing; checks the privileges the
  // passes and writes need.
  absl::Status EnsureTable(pg::Connection& conn) {
    if (ensured_) return absl::OkStatus();
    for (int attempt = 0;; ++attempt) {
      BACKFLOW_ASSIGN_OR_RETURN(
          pg::Result check,
          conn.ExecParams(
              "SELECT n.oid IS NOT NULL, t IS NOT NULL, current_user, current_database(),\n"
              "  n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'USAGE'),\n"
              "  t IS NOT NULL AND has_table_privilege(t, 'SELECT') AND\n"
              "  has_table_privilege(t, 'INSERT') AND has_table_privilege(t, 'UPDATE') AND\n"
              "  has_table_privilege(t, 'DELETE')\n"
              "FROM (SELECT $1::text AS s) AS x\n"
              "LEFT JOIN pg_namespace AS n ON n.nspname = x.s\n"
              "LEFT JOIN LATERAL (SELECT to_regclass(format('%I.checkpoints', x.s)) AS t) AS r "
              "ON true",
              {pg::Param::Text(schema_)}, false, "checking the warehouse checkpoint table failed"));
      auto flag = [&](int col) { return std::string_view(PQgetvalue(check.get(), 0, col)) == "t"; };
      const bool has_schema = flag(0), has_table = flag(1);
      const std::string user = PQgetvalue(check.get(), 0, 2);
      const std::string database = PQgetvalue(check.get(), 0, 3);
      const std::string qschema = pg::QuoteIdentifier(schema_);
      const std::string quser = pg::QuoteIdentifier(user);
      if (has_table) {
        if (!flag(4) || !flag(5)) {
          return absl::PermissionDeniedError(fmt::format(
              "change_detection: warehouse keeps its checkpoint in {0}.checkpoints, and user {1} "
              "may not read and write it. Have an administrator run `GRANT USAGE ON SCHEMA {0} "
              "TO {1}; GRANT SELECT, INSERT, UPDATE, DELETE ON {0}.checkpoints TO {1};`, or set "
              "state_schema on the source to a schema of its own",
              qschema, quser));
        }
        ensured_ = true;
        return absl::OkStatus();
      }
      absl::Status created = Create(conn, has_schema);
      if (created.ok()) {
        ensured_ = true;
        return absl::OkStatus();
      }
      if (!conn.broken()) (void)conn.Exec("ROLLBACK");
      if (created.code() == absl::StatusCode::kPermissionDenied) {
        if (!has_schema) {
          return absl::PermissionDeniedError(fmt::format(
              "change_detection: warehouse keeps its checkpoint in schema {0}, which does not "
              "exist, and user {1} may not create it in database {2} (it lacks the CREATE "
              "privilege on the database). Have an administrator run `GRANT CREATE ON DATABASE "
              "{2} TO {1};` (or `CREATE SCHEMA {0} AUTHORIZATION {1};`), or set state_schema on "
              "the source to a schema where {1} may create tables",
              qschema, quser, pg::QuoteIdentifier(database)));
        }
        return absl::PermissionDeniedError(fmt::format(
            "change_detection: warehouse keeps its checkpoint in {0}.checkpoints, and user {1} "
            "may not create that table (it lacks the CREATE privilege on schema {0}). Have an "
            "administrator run `GRANT USAGE, CREATE ON SCHEMA {0} TO {1};`, or set state_schema "
            "on the source to a schema where {1} may create tables",
            qschema, quser));
      }
      // Another process may have created them at the same time: look again once.
      if (attempt > 0) return created;
    }
  }

  absl::Status Create(pg::Connection& conn, bool has_schema) {
    const std::string qschema = pg::QuoteIdentifier(schema_);
    BACKFLOW_RETURN_IF_ERROR(conn.Exec("BEGIN READ WRITE").status());
    if (!has_schema) {
      BACKFLOW_RETURN_IF_ERROR(conn.Exec(fmt::format("CREATE SCHEMA IF NOT EXISTS {}", qschema), {},
                                         "creating the warehouse checkpoint's schema failed")
                                   .status());
    }
    BACKFLOW_RETURN_IF_ERROR(conn.Exec(fmt::format("CREATE TABLE IF NOT EXISTS {} (\n"
                                                   "  mapping text NOT NULL,\n"
                                                   "  record_key text COLLATE \"C\" NOT NULL,\n"
                                                   "  row_hash uuid,\n"
                                                   "  version uuid,\n"
                                                   "  fingerprint bytea NOT NULL,\n"
                                                   "  identity bytea NOT NULL,\n"
                                                   "  PRIMARY KEY (mapping, record_key))",
                                                   table_),
                                       {}, "creating the warehouse checkpoint table failed")
                                 .status());
    BACKFLOW_RETURN_IF_ERROR(
        conn.Exec(fmt::format("COMMENT ON TABLE {} IS 'Backflow change_detection: warehouse: what "
                              "each mapping last delivered, per record key. Managed by Backflow.'",
                              table_))
            .status());
    return conn.Exec("COMMIT", {}, "creating the warehouse checkpoint table failed").status();
  }

  const PostgresCopyFormat copy_format_;
  std::string url_;
  std::string password_;
  std::string schema_;
  std::string table_;  // quoted schema.checkpoints
  bool ensured_ = false;
  std::unique_ptr<pg::Connection> write_conn_;
};

}  // namespace

std::unique_ptr<WarehouseChangeDetection> NewChangeDetection(std::string url, std::string password,
                                                             std::string state_schema,
                                                             PostgresCopyFormat copy_format) {
  return std::make_unique<ChangeDetection>(std::move(url), std::move(password),
                                           std::move(state_schema), copy_format);
}

}  // namespace backflow::postgres_internal
