// SQLite implementation of StateStore (see state_store.h).
//
// WAL mode with synchronous=FULL: a committed write survives a process kill
// and a power loss. Checkpoints and in-flight marks live in files beside the
// database (<path>-checkpoints/, see checkpoint_files.h); the database keeps
// runs, the queue and the rest.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <set>

#include "backflow/common/clock.h"
#include "backflow/common/hash.h"
#include "backflow/common/status_macros.h"
#include "backflow/sqlite/database.h"
#include "backflow/state/checkpoint_files.h"
#include "backflow/state/state_store.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using sqlite::Database;
using sqlite::Statement;

// Each entry migrates the schema from version i to i+1. Append only.
const char* const kMigrations[] = {
    R"sql(
CREATE TABLE runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  mapping TEXT NOT NULL,
  model TEXT NOT NULL,
  destination TEXT NOT NULL,
  trigger TEXT NOT NULL,
  dry_run INTEGER NOT NULL DEFAULT 0,
  full_resync INTEGER NOT NULL DEFAULT 0,
  status TEXT NOT NULL,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  duration_s REAL NOT NULL DEFAULT 0,
  extracted INTEGER NOT NULL DEFAULT 0,
  added INTEGER NOT NULL DEFAULT 0,
  updated INTEGER NOT NULL DEFAULT 0,
  deleted INTEGER NOT NULL DEFAULT 0,
  unchanged INTEGER NOT NULL DEFAULT 0,
  skipped INTEGER NOT NULL DEFAULT 0,
  succeeded INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0,
  rejected INTEGER NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  pid INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_mapping ON runs (mapping, id);
CREATE TABLE run_records (
  run_id INTEGER NOT NULL REFERENCES runs (id),
  seq INTEGER NOT NULL,
  record_key TEXT NOT NULL,
  outcome TEXT NOT NULL,
  change TEXT NOT NULL,
  error TEXT NOT NULL,
  error_class TEXT NOT NULL,
  payload TEXT NOT NULL,
  recommended_action TEXT NOT NULL,
  PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
  mapping TEXT NOT NULL,
  record_key TEXT NOT NULL,
  fingerprint BLOB NOT NULL,
  identity BLOB NOT NULL,
  PRIMARY KEY (mapping, record_key)
) WITHOUT ROWID;
)sql",
    R"sql(
ALTER TABLE runs ADD COLUMN extract_s REAL NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN diff_s REAL NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN deliver_s REAL NOT NULL DEFAULT 0;
)sql",
    R"sql(
CREATE TABLE in_flight (
  mapping TEXT NOT NULL,
  record_key TEXT NOT NULL,
  identity BLOB NOT NULL,
  PRIMARY KEY (mapping, record_key)
) WITHOUT ROWID;
)sql",
    R"sql(
CREATE TABLE checkpoint_meta (
  mapping TEXT PRIMARY KEY,
  records INTEGER NOT NULL,
  checksum INTEGER NOT NULL
);
)sql",
    R"sql(
CREATE TABLE schedule_state (
  model TEXT PRIMARY KEY,
  last_tick INTEGER NOT NULL,
  skipped_ticks INTEGER NOT NULL,
  missed_ticks INTEGER NOT NULL
);
)sql",
    R"sql(
ALTER TABLE runs ADD COLUMN request_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN requested_at TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN worker TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN lease_until_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_by_status ON runs (status, request_id);
CREATE INDEX runs_by_model ON runs (model, id);
CREATE TABLE api_tokens (
  name TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  read_only INTEGER NOT NULL,
  created_at TEXT NOT NULL,
  last_used_at TEXT NOT NULL DEFAULT ''
);
CREATE TABLE secrets (
  name TEXT PRIMARY KEY,
  ciphertext BLOB NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE TABLE alert_state (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
)sql",
};

// An order-independent checksum of a checkpoint: the wrapping sum of one
// 64-bit hash per entry, so an update subtracts the old entry's hash and
// adds the new one. Together with the record count it detects entries that
// were lost, changed or invented by damage to the file.
uint64_t EntryHash(std::string_view key, std::string_view fingerprint, std::string_view identity) {
  Hasher128 h;
  h.Add(key).Add(fingerprint).Add(identity);
  return h.Finish().low;
}

struct CheckpointSummary {
  int64_t records = 0;
  uint64_t checksum = 0;
};

std::string_view Col(const Statement& s, int i) { return s.ColumnText(i); }

std::string Iso(absl::Time t) { return FormatIso8601(absl::ToChronoTime(t)); }

class SqliteCheckpointScanner : public CheckpointScanner {
 public:
  // `expected`: the summary to verify at the end of the scan, if any.
  SqliteCheckpointScanner(std::unique_ptr<Database> db, Statement stmt, std::string mapping,
                          std::optional<CheckpointSummary> expected)
      : db_(std::move(db)),
        stmt_(std::move(stmt)),
        mapping_(std::move(mapping)),
        expected_(expected) {}
  ~SqliteCheckpointScanner() override {
    stmt_ = Statement();
    (void)db_->Exec("COMMIT");
  }

  absl::StatusOr<bool> Next(CheckpointEntry& entry) override {
    auto more = stmt_.Step();
    if (!more.ok()) return Damaged(std::string(more.status().message()));
    if (!*more) {
      if (expected_ &&
          (seen_.records != expected_->records || seen_.checksum != expected_->checksum)) {
        return Damaged(fmt::format("read {} of its {} records, or some of them changed",
                                   seen_.records, expected_->records));
      }
      return false;
    }
    // Columns: key, fingerprint (NULL for in-flight entries), identity.
    entry.key.assign(stmt_.ColumnText(0));
    std::string_view fp = stmt_.ColumnBlob(1);
    entry.fingerprint = Fingerprint::FromBytes(fp.data(), fp.size());
    entry.identity.assign(stmt_.ColumnBlob(2));
    ++seen_.records;
    seen_.checksum += EntryHash(entry.key, fp, entry.identity);
    return true;
  }

 private:
  absl::Status Damaged(const std::string& detail) const {
    return DamagedCheckpointError(mapping_, detail, "the state store", "the state file");
  }

  std::unique_ptr<Database> db_;
  Statement stmt_;
  std::string mapping_;
  std::optional<CheckpointSummary> expected_;
  CheckpointSummary seen_;
};

class SqliteStateStore : public StateStore {
 public:
  SqliteStateStore(std::string path, std::unique_ptr<Database> db)
      : path_(std::move(path)), db_(std::move(db)) {}

  // Runs `body` in one IMMEDIATE transaction: committed if it returns OK,
  // rolled back otherwise.
  template <typename Body>
  absl::Status InTransaction(Body body) {
    BACKFLOW_RETURN_IF_ERROR(db_->Exec("BEGIN IMMEDIATE"));
    absl::Status status = body();
    if (!status.ok()) {
      (void)db_->Exec("ROLLBACK");
      return status;
    }
    return db_->Exec("COMMIT");
  }

  absl::Status Migrate() {
    BACKFLOW_RETURN_IF_ERROR(db_->Exec("PRAGMA journal_mode=WAL"));
    BACKFLOW_RETURN_IF_ERROR(db_->Exec("PRAGMA synchronous=FULL"));
    BACKFLOW_RETURN_IF_ERROR(db_->Exec("PRAGMA foreign_keys=ON"));
    return InTransaction([&]() -> absl::Status {
      BACKFLOW_RETURN_IF_ERROR(
          db_->Exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                    "applied_at TEXT NOT NULL)"));
      BACKFLOW_ASSIGN_OR_RETURN(Statement q, db_->Prepare("SELECT COALESCE(MAX(version), 0) FROM "
                                                          "schema_migrations"));
      BACKFLOW_ASSIGN_OR_RETURN(bool row, q.Step());
      int64_t version = row ? q.ColumnInt(0) : 0;
      constexpr int64_t kLatest = std::size(kMigrations);
      if (version > kLatest) {
        return absl::FailedPreconditionError(fmt::format(
            "state store {} has schema version {}, newer than this backflow ({}); upgrade "
            "backflow",
            path_, version, kLatest));
      }
      for (int64_t v = version; v < kLatest; ++v) {
        BACKFLOW_RETURN_IF_ERROR(db_->Exec(kMigrations[v]));
        BACKFLOW_ASSIGN_OR_RETURN(
            Statement ins,
            db_->Prepare("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"));
        ins.Bind(1, v + 1).Bind(2, FormatIso8601(SystemClock().Now()));
        BACKFLOW_RETURN_IF_ERROR(ins.Run());
      }
      return absl::OkStatus();
    });
  }

  absl::StatusOr<int64_t> CreateRun(const RunInfo& run) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare("INSERT INTO runs (mapping, model, destination, trigger, dry_run, "
                     "full_resync, status, started_at, pid) VALUES (?,?,?,?,?,?,?,?,?)"));
    s.Bind(1, run.mapping)
        .Bind(2, run.model)
        .Bind(3, run.destination)
        .Bind(4, run.trigger)
        .Bind(5, int64_t{run.dry_run})
        .Bind(6, int64_t{run.full_resync})
        .Bind(7, RunStatusName(run.status))
        .Bind(8, run.started_at)
        .Bind(9, run.pid);
    BACKFLOW_RETURN_IF_ERROR(s.Run());
    return db_->LastInsertId();
  }

  absl::Status UpdateRun(const RunInfo& run) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare(
            "UPDATE runs SET status=?, finished_at=?, duration_s=?, extracted=?, "
            "added=?, updated=?, deleted=?, unchanged=?, skipped=?, succeeded=?, "
            "failed=?, rejected=?, error=?, extract_s=?, diff_s=?, deliver_s=? WHERE id=? AND "
            "worker=?"));
    const RunCounts& c = run.counts;
    s.Bind(1, RunStatusName(run.status));
    if (run.finished_at.empty()) {
      s.BindNull(2);
    } else {
      s.Bind(2, run.finished_at);
    }
    s.BindDouble(3, run.duration_s)
        .Bind(4, c.extracted)
        .Bind(5, c.added)
        .Bind(6, c.updated)
        .Bind(7, c.deleted)
        .Bind(8, c.unchanged)
        .Bind(9, c.skipped)
        .Bind(10, c.succeeded)
        .Bind(11, c.failed)
        .Bind(12, c.rejected)
        .Bind(13, run.error)
        .BindDouble(14, run.extract_s)
        .BindDouble(15, run.diff_s)
        .BindDouble(16, run.deliver_s)
        .Bind(17, run.id)
        .Bind(18, run.worker);
    BACKFLOW_RETURN_IF_ERROR(s.Run());
    if (sqlite3_changes(db_->raw()) > 0) return absl::OkStatus();
    absl::StatusOr<RunInfo> current = GetRun(run.id);
    if (absl::IsNotFound(current.status())) return absl::OkStatus();  // as UPDATE ... WHERE id
    if (!current.ok()) return current.status();
    return RunTakenOverError(run.id, run.worker, current->worker);
  }

  absl::Status AddRunRecords(int64_t run_id, const std::vector<RunRecord>& records) override {
    if (records.empty()) return absl::OkStatus();
    return InTransaction([&]() -> absl::Status {
      BACKFLOW_ASSIGN_OR_RETURN(
          Statement seq_q,
          db_->Prepare("SELECT COALESCE(MAX(seq), 0) FROM run_records WHERE run_id=?"));
      seq_q.Bind(1, run_id);
      BACKFLOW_ASSIGN_OR_RETURN(bool row, seq_q.Step());
      int64_t seq = row ? seq_q.ColumnInt(0) : 0;
      BACKFLOW_ASSIGN_OR_RETURN(
          Statement s, db_->Prepare("INSERT INTO run_records (run_id, seq, record_key, outcome, "
                                    "change, error, error_class, payload, recommended_action) "
                                    "VALUES (?,?,?,?,?,?,?,?,?)"));
      for (const RunRecord& r : records) {
        s.Bind(1, run_id)
            .Bind(2, ++seq)
            .Bind(3, r.key)
            .Bind(4, r.outcome)
            .Bind(5, r.change)
            .Bind(6, r.error)
            .Bind(7, r.error_class)
            .Bind(8, r.payload)
            .Bind(9, r.recommended_action);
        BACKFLOW_RETURN_IF_ERROR(s.Run());
      }
      return absl::OkStatus();
    });
  }

  static RunInfo ReadRun(const Statement& s) {
    RunInfo r;
    r.id = s.ColumnInt(0);
    r.mapping = Col(s, 1);
    r.model = Col(s, 2);
    r.destination = Col(s, 3);
    r.trigger = Col(s, 4);
    r.dry_run = s.ColumnInt(5) != 0;
    r.full_resync = s.ColumnInt(6) != 0;
    r.status = ParseRunStatus(Col(s, 7)).value_or(RunStatus::kFailed);
    r.started_at = Col(s, 8);
    r.finished_at = Col(s, 9);
    r.duration_s = s.ColumnDouble(10);
    RunCounts& c = r.counts;
    c.extracted = s.ColumnInt(11);
    c.added = s.ColumnInt(12);
    c.updated = s.ColumnInt(13);
    c.deleted = s.ColumnInt(14);
    c.unchanged = s.ColumnInt(15);
    c.skipped = s.ColumnInt(16);
    c.succeeded = s.ColumnInt(17);
    c.failed = s.ColumnInt(18);
    c.rejected = s.ColumnInt(19);
    r.error = Col(s, 20);
    r.pid = s.ColumnInt(21);
    r.extract_s = s.ColumnDouble(22);
    r.diff_s = s.ColumnDouble(23);
    r.deliver_s = s.ColumnDouble(24);
    r.request_id = s.ColumnInt(25);
    r.requested_at = Col(s, 26);
    r.worker = Col(s, 27);
    r.cancel_requested = s.ColumnInt(28) != 0;
    return r;
  }

  static constexpr const char* kRunColumns =
      "id, mapping, model, destination, trigger, dry_run, full_resync, status, started_at, "
      "finished_at, duration_s, extracted, added, updated, deleted, unchanged, skipped, "
      "succeeded, failed, rejected, error, pid, extract_s, diff_s, deliver_s, request_id, "
      "requested_at, worker, cancel_requested";

  absl::StatusOr<std::vector<RunInfo>> ReadRuns(Statement& s) {
    std::vector<RunInfo> runs;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) break;
      runs.push_back(ReadRun(s));
    }
    return runs;
  }

  absl::StatusOr<RunInfo> GetRun(int64_t id) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s, db_->Prepare(fmt::format("SELECT {} FROM runs WHERE id=?", kRunColumns)));
    s.Bind(1, id);
    BACKFLOW_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) {
      return absl::NotFoundError(
          fmt::format("no run with id {}; list runs with `backflow runs list`", id));
    }
    return ReadRun(s);
  }

  absl::StatusOr<std::vector<RunInfo>> ListRuns(const RunFilter& f) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare(fmt::format(
            "SELECT {} FROM runs WHERE (?1 = '' OR mapping = ?1) AND (?2 = '' OR model = ?2) AND "
            "(?3 = '' OR status = ?3) AND (?4 = 0 OR id < ?4) ORDER BY id DESC LIMIT ?5",
            kRunColumns)));
    s.Bind(1, f.mapping)
        .Bind(2, f.model)
        .Bind(3, f.status ? RunStatusName(*f.status) : std::string_view(""))
        .Bind(4, f.before_id)
        .Bind(5, int64_t{f.limit});
    return ReadRuns(s);
  }

  absl::StatusOr<std::vector<RunRecord>> GetRunRecords(int64_t run_id, const std::string& outcome,
                                                       int limit) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare("SELECT record_key, outcome, change, error, error_class, payload, "
                     "recommended_action FROM run_records WHERE run_id=?1 AND (?2 = '' OR "
                     "outcome = ?2) ORDER BY seq LIMIT ?3"));
    s.Bind(1, run_id).Bind(2, outcome).Bind(3, int64_t{limit});
    std::vector<RunRecord> out;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) break;
      RunRecord r;
      r.key = Col(s, 0);
      r.outcome = Col(s, 1);
      r.change = Col(s, 2);
      r.error = Col(s, 3);
      r.error_class = Col(s, 4);
      r.payload = Col(s, 5);
      r.recommended_action = Col(s, 6);
      out.push_back(std::move(r));
    }
    return out;
  }

  absl::StatusOr<int> MarkInterruptedRuns() override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare("SELECT id, pid FROM runs WHERE status='running' AND lease_until_ms = 0"));
    std::vector<int64_t> dead;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) break;
      auto pid = static_cast<pid_t>(s.ColumnInt(1));
      if (pid == getpid()) continue;
      if (pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH)) dead.push_back(s.ColumnInt(0));
    }
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement u, db_->Prepare("UPDATE runs SET status='interrupted', error=? WHERE id=?"));
    for (int64_t id : dead) {
      u.Bind(1,
             "the process running this sync stopped before it finished; records it had not "
             "confirmed are sent again by the next run")
          .Bind(2, id);
      BACKFLOW_RETURN_IF_ERROR(u.Run());
    }
    return static_cast<int>(dead.size());
  }

  absl::StatusOr<EnqueueOutcome> EnqueueRunsUnlessActive(
      const std::vector<RunInfo>& runs) override {
    EnqueueOutcome out;
    // BEGIN IMMEDIATE: one writer at a time, so the check holds until the insert.
    BACKFLOW_RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
      BACKFLOW_ASSIGN_OR_RETURN(out.active, OldestActiveRun(runs));
      if (out.active) return absl::OkStatus();
      BACKFLOW_ASSIGN_OR_RETURN(out.ids, InsertQueued(runs));
      return absl::OkStatus();
    }));
    return out;
  }

  absl::StatusOr<std::vector<RunInfo>> ClaimRuns(const std::string& worker, absl::Time now,
                                                 absl::Duration lease) override {
    std::vector<RunInfo> claimed;
    const int64_t now_ms = absl::ToUnixMillis(now);
    BACKFLOW_RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
      BACKFLOW_ASSIGN_OR_RETURN(Statement q,
                                db_->Prepare("SELECT request_id FROM runs WHERE status='queued' OR "
                                             "(status='running' AND lease_until_ms > 0 AND "
                                             "lease_until_ms < ?) ORDER BY request_id LIMIT 1"));
      q.Bind(1, now_ms);
      BACKFLOW_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) return absl::OkStatus();
      const int64_t request = q.ColumnInt(0);
      BACKFLOW_ASSIGN_OR_RETURN(
          Statement u,
          db_->Prepare("UPDATE runs SET started_at = CASE WHEN status='queued' THEN ?1 ELSE "
                       "started_at END, status='running', worker=?2, pid=?3, lease_until_ms=?4 "
                       "WHERE request_id=?5 AND status IN ('queued', 'running')"));
      u.Bind(1, Iso(now))
          .Bind(2, worker)
          .Bind(3, int64_t{getpid()})
          .Bind(4, absl::ToUnixMillis(now + lease))
          .Bind(5, request);
      BACKFLOW_RETURN_IF_ERROR(u.Run());
      BACKFLOW_ASSIGN_OR_RETURN(
          Statement r,
          db_->Prepare(
              fmt::format("SELECT {} FROM runs WHERE request_id=? AND status='running' ORDER BY id",
                          kRunColumns)));
      r.Bind(1, request);
      BACKFLOW_ASSIGN_OR_RETURN(claimed, ReadRuns(r));
      return absl::OkStatus();
    }));
    return claimed;
  }

  absl::StatusOr<LeaseRenewal> RenewLeases(const std::string& worker,
                                           const std::vector<int64_t>& run_ids, absl::Time now,
                                           absl::Duration lease) override {
    LeaseRenewal out;
    BACKFLOW_RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
      BACKFLOW_ASSIGN_OR_RETURN(Statement u,
                                db_->Prepare("UPDATE runs SET lease_until_ms=? WHERE worker=? AND "
                                             "status='running' AND lease_until_ms > 0"));
      BACKFLOW_RETURN_IF_ERROR(u.Bind(1, absl::ToUnixMillis(now + lease)).Bind(2, worker).Run());
      BACKFLOW_ASSIGN_OR_RETURN(
          Statement q,
          db_->Prepare("SELECT worker, status, cancel_requested FROM runs WHERE id=?"));
      for (int64_t id : run_ids) {
        q.Bind(1, id);
        BACKFLOW_ASSIGN_OR_RETURN(bool row, q.Step());
        if (!row || Col(q, 0) != worker || Col(q, 1) != "running") {
          out.lost.push_back(id);
        } else if (q.ColumnInt(2) != 0) {
          out.cancel_requested.push_back(id);
        }
        q.Reset();
      }
      return absl::OkStatus();
    }));
    return out;
  }

  absl::Status ReleaseRuns(const std::string& worker) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement u, db_->Prepare("UPDATE runs SET status='queued', lease_until_ms=0 WHERE "
                                  "worker=? AND status='running' AND lease_until_ms > 0"));
    return u.Bind(1, worker).Run();
  }

  absl::StatusOr<RunInfo> CancelRun(int64_t id, absl::Time now) override {
    absl::StatusOr<RunInfo> out;
    BACKFLOW_RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
      BACKFLOW_ASSIGN_OR_RETURN(RunInfo run, GetRun(id));
      if (run.status == RunStatus::kQueued) {
        BACKFLOW_ASSIGN_OR_RETURN(Statement u,
                                  db_->Prepare("UPDATE runs SET status='cancelled', finished_at=?, "
                                               "cancel_requested=1, error=? WHERE id=?"));
        BACKFLOW_RETURN_IF_ERROR(
            u.Bind(1, Iso(now)).Bind(2, "cancelled before it started").Bind(3, id).Run());
      } else if (run.status == RunStatus::kRunning) {
        BACKFLOW_ASSIGN_OR_RETURN(Statement u,
                                  db_->Prepare("UPDATE runs SET cancel_requested=1 WHERE id=?"));
        BACKFLOW_RETURN_IF_ERROR(u.Bind(1, id).Run());
      } else {
        return absl::FailedPreconditionError(fmt::format(
            "run {} already finished ({}); only queued or running runs can be cancelled", id,
            RunStatusName(run.status)));
      }
      out = GetRun(id);
      return out.status();
    }));
    return out;
  }

  absl::StatusOr<int64_t> CountRuns(RunStatus status) override {
    BACKFLOW_ASSIGN_OR_RETURN(Statement s,
                              db_->Prepare("SELECT COUNT(*) FROM runs WHERE status=?"));
    s.Bind(1, RunStatusName(status));
    BACKFLOW_ASSIGN_OR_RETURN(bool row, s.Step());
    return row ? s.ColumnInt(0) : 0;
  }

  absl::Status CreateApiToken(const ApiToken& token) override {
    BACKFLOW_ASSIGN_OR_RETURN(Statement q, db_->Prepare("SELECT 1 FROM api_tokens WHERE name=?"));
    q.Bind(1, token.name);
    BACKFLOW_ASSIGN_OR_RETURN(bool exists, q.Step());
    if (exists) {
      return absl::AlreadyExistsError(fmt::format(
          "a token named \"{}\" exists; revoke it first with `backflow token revoke {}`",
          token.name, token.name));
    }
    BACKFLOW_ASSIGN_OR_RETURN(Statement s,
                              db_->Prepare("INSERT INTO api_tokens (name, token_hash, read_only, "
                                           "created_at) VALUES (?,?,?,?)"));
    return s.Bind(1, token.name)
        .Bind(2, token.token_hash)
        .Bind(3, int64_t{token.read_only})
        .Bind(4, token.created_at)
        .Run();
  }

  absl::StatusOr<std::optional<ApiToken>> UseApiToken(const std::string& token_hash,
                                                      absl::Time now) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement q, db_->Prepare("SELECT name, token_hash, read_only, created_at, last_used_at "
                                  "FROM api_tokens WHERE token_hash=?"));
    q.Bind(1, token_hash);
    BACKFLOW_ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) return std::optional<ApiToken>();
    ApiToken t{std::string(Col(q, 0)), std::string(Col(q, 1)), q.ColumnInt(2) != 0,
               std::string(Col(q, 3)), std::string(Col(q, 4))};
    // End the read first: an UPDATE upgrading a still-open read snapshot gets
    // SQLITE_BUSY at once when another connection writes, instead of waiting.
    q.Reset();
    // Last use is kept to the minute: no write per request.
    std::string minute = Iso(absl::FromUnixSeconds(absl::ToUnixSeconds(now) / 60 * 60));
    if (t.last_used_at < minute) {
      BACKFLOW_ASSIGN_OR_RETURN(Statement u,
                                db_->Prepare("UPDATE api_tokens SET last_used_at=? WHERE name=?"));
      BACKFLOW_RETURN_IF_ERROR(u.Bind(1, Iso(now)).Bind(2, t.name).Run());
      t.last_used_at = Iso(now);
    }
    return std::optional<ApiToken>(std::move(t));
  }

  absl::StatusOr<std::vector<ApiToken>> ListApiTokens() override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement q, db_->Prepare("SELECT name, token_hash, read_only, created_at, last_used_at "
                                  "FROM api_tokens ORDER BY name"));
    std::vector<ApiToken> out;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) break;
      out.push_back({std::string(Col(q, 0)), std::string(Col(q, 1)), q.ColumnInt(2) != 0,
                     std::string(Col(q, 3)), std::string(Col(q, 4))});
    }
    return out;
  }

  absl::Status RevokeApiToken(const std::string& name) override {
    return DeleteNamed(
        "api_tokens", name,
        fmt::format("no token named \"{}\"; list them with `backflow token list`", name));
  }

  absl::Status PutSecret(const std::string& name, const std::string& ciphertext,
                         absl::Time now) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare("INSERT INTO secrets (name, ciphertext, updated_at) VALUES "
                     "(?,?,?) ON CONFLICT (name) DO UPDATE SET "
                     "ciphertext=excluded.ciphertext, updated_at=excluded.updated_at"));
    return s.Bind(1, name).BindBlob(2, ciphertext).Bind(3, Iso(now)).Run();
  }

  absl::StatusOr<std::optional<std::string>> GetSecret(const std::string& name) override {
    BACKFLOW_ASSIGN_OR_RETURN(Statement q,
                              db_->Prepare("SELECT ciphertext FROM secrets WHERE name=?"));
    q.Bind(1, name);
    BACKFLOW_ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) return std::optional<std::string>();
    return std::optional<std::string>(std::string(q.ColumnBlob(0)));
  }

  absl::StatusOr<std::vector<SecretInfo>> ListSecrets() override {
    BACKFLOW_ASSIGN_OR_RETURN(Statement q,
                              db_->Prepare("SELECT name, updated_at FROM secrets ORDER BY name"));
    std::vector<SecretInfo> out;
    while (true) {
      BACKFLOW_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) break;
      out.push_back({std::string(Col(q, 0)), std::string(Col(q, 1))});
    }
    return out;
  }

  absl::Status DeleteSecret(const std::string& name) override {
    return DeleteNamed("secrets", name, fmt::format("no secret named \"{}\"", name));
  }

  absl::StatusOr<std::optional<std::string>> GetAlertState(const std::string& key) override {
    BACKFLOW_ASSIGN_OR_RETURN(Statement q,
                              db_->Prepare("SELECT value FROM alert_state WHERE key=?"));
    q.Bind(1, key);
    BACKFLOW_ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) return std::optional<std::string>();
    return std::optional<std::string>(std::string(Col(q, 0)));
  }

  absl::Status SetAlertState(const std::string& key, const std::string& value) override {
    BACKFLOW_ASSIGN_OR_RETURN(Statement s,
                              db_->Prepare("INSERT INTO alert_state (key, value) VALUES (?,?) ON "
                                           "CONFLICT (key) DO UPDATE SET value=excluded.value"));
    return s.Bind(1, key).Bind(2, value).Run();
  }

  absl::StatusOr<std::unique_ptr<CheckpointScanner>> ScanCheckpoint(
      const std::string& mapping) override {
    BACKFLOW_RETURN_IF_ERROR(MoveTableCheckpoint(mapping));
    return files_->Scan(mapping);
  }

  absl::StatusOr<std::unique_ptr<CheckpointScanner>> ScanInFlight(
      const std::string& mapping) override {
    BACKFLOW_RETURN_IF_ERROR(MoveTableCheckpoint(mapping));
    return files_->ScanInFlight(mapping);
  }

  // One journal frame: the updates and the settling of their keys together.
  absl::Status ApplyCheckpoint(const std::string& mapping,
                               const std::vector<CheckpointUpdate>& updates) override {
    if (updates.empty()) return absl::OkStatus();
    BACKFLOW_RETURN_IF_ERROR(MoveTableCheckpoint(mapping));
    return files_->Apply(mapping, updates);
  }

  absl::Status CommitCheckpoint(const std::string& mapping) override {
    return files_->Commit(mapping);
  }

  absl::Status ResetCheckpoint(const std::string& mapping) override {
    BACKFLOW_RETURN_IF_ERROR(files_->Reset(mapping));
    moved_.erase(mapping);
    return InTransaction([&]() -> absl::Status {
      for (const char* table : {"checkpoints", "checkpoint_meta", "in_flight"}) {
        BACKFLOW_ASSIGN_OR_RETURN(
            Statement s, db_->Prepare(fmt::format("DELETE FROM {} WHERE mapping=?", table)));
        BACKFLOW_RETURN_IF_ERROR(s.Bind(1, mapping).Run());
      }
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::optional<ScheduleState>> GetScheduleState(const std::string& model) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare(
            "SELECT last_tick, skipped_ticks, missed_ticks FROM schedule_state WHERE model=?"));
    s.Bind(1, model);
    BACKFLOW_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return std::optional<ScheduleState>();
    ScheduleState out;
    out.last_tick = s.ColumnInt(0);
    out.skipped_ticks = s.ColumnInt(1);
    out.missed_ticks = s.ColumnInt(2);
    return std::optional<ScheduleState>(out);
  }

  absl::Status SetScheduleState(const std::string& model, const ScheduleState& state) override {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare("INSERT INTO schedule_state (model, last_tick, skipped_ticks, missed_ticks) "
                     "VALUES (?,?,?,?) ON CONFLICT (model) DO UPDATE SET "
                     "last_tick=excluded.last_tick, skipped_ticks=excluded.skipped_ticks, "
                     "missed_ticks=excluded.missed_ticks"));
    return s.Bind(1, model)
        .Bind(2, state.last_tick)
        .Bind(3, state.skipped_ticks)
        .Bind(4, state.missed_ticks)
        .Run();
  }

  absl::StatusOr<AdvanceOutcome> AdvanceSchedule(const std::string& model,
                                                 std::optional<int64_t> expected_last_tick,
                                                 const ScheduleState& next,
                                                 const std::vector<RunInfo>& runs,
                                                 const ScheduleState& next_if_busy) override {
    AdvanceOutcome out;
    // BEGIN IMMEDIATE: the compare, the check for active runs and the set
    // happen under the write lock (as EnqueueRunsUnlessActive's check and insert).
    BACKFLOW_RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
      BACKFLOW_ASSIGN_OR_RETURN(out.active, OldestActiveRun(runs));
      const ScheduleState& state = out.active ? next_if_busy : next;
      BACKFLOW_ASSIGN_OR_RETURN(
          Statement s,
          db_->Prepare(expected_last_tick
                           ? "UPDATE schedule_state SET last_tick=?2, skipped_ticks=?3, "
                             "missed_ticks=?4 WHERE model=?1 AND last_tick=?5"
                           : "INSERT INTO schedule_state (model, last_tick, skipped_ticks, "
                             "missed_ticks) VALUES (?1,?2,?3,?4) ON CONFLICT (model) DO NOTHING"));
      s.Bind(1, model)
          .Bind(2, state.last_tick)
          .Bind(3, state.skipped_ticks)
          .Bind(4, state.missed_ticks);
      if (expected_last_tick) s.Bind(5, *expected_last_tick);
      BACKFLOW_RETURN_IF_ERROR(s.Run());
      return FinishAdvance(sqlite3_changes(db_->raw()) > 0, out,
                           [&] { return InsertQueued(runs); });
    }));
    return out;
  }

  absl::StatusOr<std::unique_ptr<MappingLockHandle>> LockMapping(const std::string&) override {
    // One host: the engine's lock file is the lock.
    return std::make_unique<MappingLockHandle>();
  }

  absl::Status MarkInFlight(const std::string& mapping,
                            const std::vector<InFlightEntry>& entries) override {
    if (entries.empty()) return absl::OkStatus();
    BACKFLOW_RETURN_IF_ERROR(MoveTableCheckpoint(mapping));
    return files_->Mark(mapping, entries);
  }

  // One journal frame, one sync.
  absl::Status ApplyAndMark(const std::string& mapping,
                            const std::vector<CheckpointUpdate>& updates,
                            const std::vector<InFlightEntry>& entries) override {
    if (updates.empty() && entries.empty()) return absl::OkStatus();
    BACKFLOW_RETURN_IF_ERROR(MoveTableCheckpoint(mapping));
    return files_->ApplyAndMark(mapping, updates, entries);
  }

  absl::StatusOr<int64_t> CheckpointSize(const std::string& mapping) override {
    BACKFLOW_RETURN_IF_ERROR(MoveTableCheckpoint(mapping));
    return files_->Size(mapping);
  }

  absl::Status OpenCheckpointFiles() {
    BACKFLOW_ASSIGN_OR_RETURN(files_, CheckpointFiles::Open(path_ + "-checkpoints"));
    return absl::OkStatus();
  }

 private:
  std::string path_;
  std::unique_ptr<Database> db_;
  std::unique_ptr<CheckpointFiles> files_;
  std::set<std::string> moved_;  // mappings whose table checkpoint is known to be empty

  // State files written before checkpoints became files hold them in the
  // `checkpoints` table, and in-flight marks in the `in_flight` table: the
  // first use of such a mapping moves its entries (verified against their
  // count and checksum) and its marks into the checkpoint files, then deletes
  // the rows. Interrupted, it starts over: upserts and marks are idempotent.
  absl::Status MoveTableCheckpoint(const std::string& mapping) {
    if (moved_.count(mapping) > 0) return absl::OkStatus();
    BACKFLOW_ASSIGN_OR_RETURN(
        auto old, Scan("SELECT record_key, fingerprint, identity FROM checkpoints WHERE mapping=? "
                       "ORDER BY record_key",
                       mapping, /*verify=*/true));
    std::vector<CheckpointUpdate> chunk;
    int64_t moved = 0;
    while (true) {
      CheckpointEntry e;
      BACKFLOW_ASSIGN_OR_RETURN(bool more, old->Next(e));
      if (more) {
        chunk.push_back({.key = std::move(e.key),
                         .kind = CheckpointUpdate::Kind::kUpsert,
                         .fingerprint = e.fingerprint,
                         .identity = std::move(e.identity)});
        ++moved;
      }
      if (chunk.size() >= 50'000 || (!more && !chunk.empty())) {
        BACKFLOW_RETURN_IF_ERROR(files_->Apply(mapping, chunk));
        chunk.clear();
      }
      if (!more) break;
    }
    old.reset();
    // Marks after the entries: an entry's upsert would settle its mark.
    BACKFLOW_ASSIGN_OR_RETURN(
        auto flights,
        Scan("SELECT record_key, NULL, identity FROM in_flight WHERE mapping=? ORDER BY record_key",
             mapping, /*verify=*/false));
    std::vector<InFlightEntry> marks;
    while (true) {
      CheckpointEntry e;
      BACKFLOW_ASSIGN_OR_RETURN(bool more, flights->Next(e));
      if (more) {
        marks.push_back({.key = std::move(e.key), .identity = std::move(e.identity)});
        ++moved;
      }
      if (marks.size() >= 50'000 || (!more && !marks.empty())) {
        BACKFLOW_RETURN_IF_ERROR(files_->Mark(mapping, marks));
        marks.clear();
      }
      if (!more) break;
    }
    flights.reset();
    if (moved > 0) {
      BACKFLOW_RETURN_IF_ERROR(files_->Fold(mapping));
      BACKFLOW_RETURN_IF_ERROR(InTransaction([&]() -> absl::Status {
        for (const char* table : {"checkpoints", "checkpoint_meta", "in_flight"}) {
          BACKFLOW_ASSIGN_OR_RETURN(
              Statement d, db_->Prepare(fmt::format("DELETE FROM {} WHERE mapping=?", table)));
          BACKFLOW_RETURN_IF_ERROR(d.Bind(1, mapping).Run());
        }
        return absl::OkStatus();
      }));
    }
    moved_.insert(mapping);
    return absl::OkStatus();
  }

  // The oldest run queued or running of a mapping of `runs` (nullopt: none);
  // the caller holds a transaction.
  absl::StatusOr<std::optional<RunInfo>> OldestActiveRun(const std::vector<RunInfo>& runs) {
    std::optional<RunInfo> oldest;
    if (runs.empty()) return oldest;
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement q, db_->Prepare(fmt::format("SELECT {} FROM runs WHERE mapping=? AND status "
                                              "IN ('queued', 'running') ORDER BY id LIMIT 1",
                                              kRunColumns)));
    for (const RunInfo& r : runs) {
      q.Bind(1, r.mapping);
      BACKFLOW_ASSIGN_OR_RETURN(std::vector<RunInfo> active, ReadRuns(q));
      q.Reset();
      if (!active.empty() && (!oldest || active.front().id < oldest->id)) oldest = active.front();
    }
    return oldest;
  }

  // Inserts queued runs under one request id (the first run's); the caller
  // holds a transaction.
  absl::StatusOr<std::vector<int64_t>> InsertQueued(const std::vector<RunInfo>& runs) {
    std::vector<int64_t> ids;
    if (runs.empty()) return ids;
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare("INSERT INTO runs (mapping, model, destination, trigger, dry_run, "
                     "full_resync, status, started_at, requested_at, request_id) VALUES "
                     "(?,?,?,?,?,?,'queued','',?,?)"));
    for (const RunInfo& run : runs) {
      s.Bind(1, run.mapping)
          .Bind(2, run.model)
          .Bind(3, run.destination)
          .Bind(4, run.trigger)
          .Bind(5, int64_t{run.dry_run})
          .Bind(6, int64_t{run.full_resync})
          .Bind(7, run.requested_at)
          .Bind(8, ids.empty() ? int64_t{0} : ids.front());
      BACKFLOW_RETURN_IF_ERROR(s.Run());
      ids.push_back(db_->LastInsertId());
    }
    BACKFLOW_ASSIGN_OR_RETURN(Statement u,
                              db_->Prepare("UPDATE runs SET request_id=?1 WHERE id=?1"));
    BACKFLOW_RETURN_IF_ERROR(u.Bind(1, ids.front()).Run());
    return ids;
  }

  absl::Status DeleteNamed(const char* table, const std::string& name,
                           const std::string& not_found) {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement s,
        db_->Prepare(fmt::format("DELETE FROM {} WHERE name=? RETURNING name", table)));
    s.Bind(1, name);
    BACKFLOW_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return absl::NotFoundError(not_found);
    s.Reset();
    return absl::OkStatus();
  }
  // Reads `sql` (one `?` for the mapping) on a second connection, inside one
  // read transaction, so the scan sees a snapshot while commits go on.
  // With `verify`, the scan checks what it read against the checkpoint's
  // summary (read in the same snapshot) when it reaches the end.
  absl::StatusOr<std::unique_ptr<CheckpointScanner>> Scan(const char* sql,
                                                          const std::string& mapping, bool verify) {
    BACKFLOW_ASSIGN_OR_RETURN(auto reader,
                              Database::Open(path_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX));
    BACKFLOW_RETURN_IF_ERROR(reader->Exec("BEGIN"));
    std::optional<CheckpointSummary> expected;
    if (verify) {
      BACKFLOW_ASSIGN_OR_RETURN(CheckpointSummary summary, ReadSummary(*reader, mapping));
      expected = summary;
    }
    BACKFLOW_ASSIGN_OR_RETURN(Statement s, reader->Prepare(sql));
    s.Bind(1, mapping);
    return std::unique_ptr<CheckpointScanner>(
        new SqliteCheckpointScanner(std::move(reader), std::move(s), mapping, expected));
  }

  static absl::StatusOr<CheckpointSummary> ReadSummary(Database& db, const std::string& mapping) {
    BACKFLOW_ASSIGN_OR_RETURN(
        Statement q, db.Prepare("SELECT records, checksum FROM checkpoint_meta WHERE mapping=?"));
    q.Bind(1, mapping);
    BACKFLOW_ASSIGN_OR_RETURN(bool row, q.Step());
    CheckpointSummary summary;
    if (row) {
      summary.records = q.ColumnInt(0);
      summary.checksum = static_cast<uint64_t>(q.ColumnInt(1));
    }
    return summary;
  }
};

}  // namespace

std::string_view RunStatusName(RunStatus s) {
  switch (s) {
    case RunStatus::kQueued:
      return "queued";
    case RunStatus::kCancelled:
      return "cancelled";
    case RunStatus::kRunning:
      return "running";
    case RunStatus::kSucceeded:
      return "succeeded";
    case RunStatus::kPartial:
      return "partial";
    case RunStatus::kFailed:
      return "failed";
    case RunStatus::kInterrupted:
      return "interrupted";
  }
  return "failed";
}

absl::StatusOr<RunStatus> ParseRunStatus(std::string_view name) {
  for (auto s :
       {RunStatus::kQueued, RunStatus::kRunning, RunStatus::kSucceeded, RunStatus::kPartial,
        RunStatus::kFailed, RunStatus::kInterrupted, RunStatus::kCancelled}) {
    if (RunStatusName(s) == name) return s;
  }
  return absl::InvalidArgumentError(fmt::format("unknown run status \"{}\"", name));
}

absl::StatusOr<std::unique_ptr<StateStore>> OpenSqliteStateStore(const std::string& path) {
  std::error_code ec;
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) {
    return absl::UnavailableError(
        fmt::format("cannot create the state folder {}: {}", parent.string(), ec.message()));
  }
  BACKFLOW_ASSIGN_OR_RETURN(
      auto db,
      Database::Open(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX));
  auto store = std::make_unique<SqliteStateStore>(path, std::move(db));
  BACKFLOW_RETURN_IF_ERROR(store->Migrate());
  BACKFLOW_RETURN_IF_ERROR(store->OpenCheckpointFiles());
  return std::unique_ptr<StateStore>(std::move(store));
}

}  // namespace backflow
