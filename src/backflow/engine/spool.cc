#include "backflow/engine/spool.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>

#include "backflow/common/status_macros.h"
#include "fmt/format.h"

namespace backflow {
namespace {
namespace fs = std::filesystem;

constexpr int64_t kRowsPerTransaction = 50'000;

void RemoveDeadSpools(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    int pid = 0;
    if (sscanf(name.c_str(), "extract-%d-", &pid) != 1 || pid <= 0) continue;
    if (kill(pid, 0) != 0 && errno == ESRCH) fs::remove(entry.path(), ec);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Spool>> Spool::Create(const std::string& dir) {
  static std::atomic<int> counter{0};
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::UnavailableError(
        fmt::format("cannot create the spool folder {}: {}", dir, ec.message()));
  }
  RemoveDeadSpools(dir);
  std::string path =
      (fs::path(dir) / fmt::format("extract-{}-{}.db", getpid(), counter++)).string();
  fs::remove(path, ec);
  BACKFLOW_ASSIGN_OR_RETURN(
      auto db, sqlite::Database::Open(
                   path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX));
  // Scratch data: a crash discards it, so no journal and no fsync.
  BACKFLOW_RETURN_IF_ERROR(db->Exec(
      "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-65536; "
      "PRAGMA temp_store=FILE; PRAGMA locking_mode=EXCLUSIVE;"
      "CREATE TABLE rows (key TEXT PRIMARY KEY, copies INTEGER NOT NULL, row BLOB NOT NULL) "
      "WITHOUT ROWID;"
      "CREATE TABLE null_key_rows (seq INTEGER PRIMARY KEY, row BLOB NOT NULL);"
      "CREATE TABLE changes (mapping INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, "
      "change INTEGER NOT NULL, fingerprint BLOB NOT NULL, payload BLOB NOT NULL, "
      "PRIMARY KEY (mapping, seq)) WITHOUT ROWID;"
      "CREATE TABLE acks (mapping INTEGER NOT NULL, list INTEGER NOT NULL, seq INTEGER NOT NULL, "
      "key TEXT NOT NULL, kind INTEGER NOT NULL, fingerprint BLOB NOT NULL, "
      "identity BLOB NOT NULL, PRIMARY KEY (mapping, list, seq)) WITHOUT ROWID;"));
  auto spool = std::unique_ptr<Spool>(new Spool(path, std::move(db)));
  BACKFLOW_ASSIGN_OR_RETURN(
      spool->insert_row_,
      spool->db_->Prepare("INSERT INTO rows (key, copies, row) VALUES (?, 1, ?) "
                          "ON CONFLICT (key) DO UPDATE SET copies = copies + 1"));
  BACKFLOW_ASSIGN_OR_RETURN(spool->insert_null_,
                            spool->db_->Prepare("INSERT INTO null_key_rows (row) VALUES (?)"));
  BACKFLOW_ASSIGN_OR_RETURN(
      spool->insert_change_,
      spool->db_->Prepare("INSERT INTO changes (mapping, seq, key, change, fingerprint, payload) "
                          "VALUES (?,?,?,?,?,?)"));
  BACKFLOW_ASSIGN_OR_RETURN(
      spool->insert_ack_,
      spool->db_->Prepare("INSERT INTO acks (mapping, list, seq, key, kind, fingerprint, "
                          "identity) VALUES (?,?,?,?,?,?,?)"));
  return spool;
}

Spool::~Spool() {
  insert_row_ = sqlite::Statement();
  insert_null_ = sqlite::Statement();
  insert_change_ = sqlite::Statement();
  insert_ack_ = sqlite::Statement();
  db_.reset();
  std::error_code ec;
  fs::remove(path_, ec);
}

absl::Status Spool::MaybeCommit() {
  if (!in_transaction_) {
    BACKFLOW_RETURN_IF_ERROR(db_->Exec("BEGIN"));
    in_transaction_ = true;
  }
  if (++pending_ >= kRowsPerTransaction) {
    pending_ = 0;
    in_transaction_ = false;
    return db_->Exec("COMMIT");
  }
  return absl::OkStatus();
}

absl::Status Spool::AddRow(std::string_view key, std::string_view encoded_row) {
  BACKFLOW_RETURN_IF_ERROR(MaybeCommit());
  return insert_row_.Bind(1, key).BindBlob(2, encoded_row).Run();
}

absl::Status Spool::AddNullKeyRow(std::string_view encoded_row) {
  BACKFLOW_RETURN_IF_ERROR(MaybeCommit());
  return insert_null_.BindBlob(1, encoded_row).Run();
}

absl::Status Spool::FinishLoad() {
  if (!in_transaction_) return absl::OkStatus();
  in_transaction_ = false;
  pending_ = 0;
  return db_->Exec("COMMIT");
}

absl::StatusOr<sqlite::Statement> Spool::ScanRows() {
  return db_->Prepare("SELECT key, copies, row FROM rows ORDER BY key");
}

absl::StatusOr<sqlite::Statement> Spool::ScanNullKeyRows() {
  return db_->Prepare("SELECT row FROM null_key_rows ORDER BY seq");
}

absl::Status Spool::AddChange(int mapping, int change, std::string_view key, const Fingerprint& fp,
                              std::string_view encoded_payload) {
  BACKFLOW_RETURN_IF_ERROR(MaybeCommit());
  auto bytes = fp.ToBytes();
  return insert_change_.Bind(1, int64_t{mapping})
      .Bind(2, ++change_seq_)
      .Bind(3, key)
      .Bind(4, int64_t{change})
      .BindBlob(5, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()))
      .BindBlob(6, encoded_payload)
      .Run();
}

absl::Status Spool::FinishChanges() { return FinishLoad(); }

absl::StatusOr<sqlite::Statement> Spool::ScanChanges(int mapping) {
  BACKFLOW_ASSIGN_OR_RETURN(
      sqlite::Statement s,
      db_->Prepare("SELECT key, change, fingerprint, payload FROM changes WHERE mapping = ? "
                   "ORDER BY seq"));
  s.Bind(1, int64_t{mapping});
  return s;
}

absl::Status Spool::AddAck(int mapping, AckList list, const CheckpointUpdate& update) {
  BACKFLOW_RETURN_IF_ERROR(MaybeCommit());
  auto bytes = update.fingerprint.ToBytes();
  return insert_ack_.Bind(1, int64_t{mapping})
      .Bind(2, static_cast<int64_t>(list))
      .Bind(3, ++change_seq_)
      .Bind(4, update.key)
      .Bind(5, static_cast<int64_t>(update.kind))
      .BindBlob(6, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()))
      .BindBlob(7, update.identity)
      .Run();
}

absl::Status Spool::FinishAcks() { return FinishLoad(); }

absl::StatusOr<sqlite::Statement> Spool::ScanAcks(int mapping, AckList list) {
  BACKFLOW_ASSIGN_OR_RETURN(
      sqlite::Statement s,
      db_->Prepare("SELECT key, kind, fingerprint, identity FROM acks WHERE mapping = ? AND "
                   "list = ? ORDER BY seq"));
  s.Bind(1, int64_t{mapping}).Bind(2, static_cast<int64_t>(list));
  return s;
}

}  // namespace backflow
