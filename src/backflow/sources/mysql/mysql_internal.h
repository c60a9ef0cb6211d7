// Pieces of the MySQL / MariaDB source shared by its files (not a public API).
#pragma once

#include <mysql.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/sources/query_cancel_watcher.h"
#include "backflow/sources/source.h"

namespace backflow {
class WarehouseChangeDetection;
}

namespace backflow::mysql_internal {

// One client connection. Not thread-safe.
struct Conn {
  MYSQL* mysql = nullptr;
  std::string target;  // host:port, for messages

  Conn() = default;
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  ~Conn() {
    if (mysql != nullptr) mysql_close(mysql);
  }

  // Shuts the socket down so that nothing (freeing an unread result,
  // mysql_close) waits for the server.
  void Abort();
};

// The status for the connection's current error, `what` describing the step
// (see mysql_source.h for the codes).
absl::Status QueryError(const Conn& conn, std::string_view what);

// Connects to `url` (utf8mb4, session time zone UTC). When `read_only`, the
// session is READ ONLY and a READ ONLY transaction is open, as for a model's
// query; otherwise the session is left in autocommit with no transaction.
absl::StatusOr<std::unique_ptr<Conn>> Connect(const std::string& url,
                                              const std::string& password_setting,
                                              bool read_only = true);

// Runs `text` on `conn` and streams its rows (mysql_use_result), decoded as
// the source decodes a model's rows. The reader shares the connection: once
// it has returned its clean end, the connection can run other statements;
// dropping it mid-stream cuts the connection.
absl::StatusOr<std::unique_ptr<RowReader>> StreamQuery(std::shared_ptr<Conn> conn,
                                                       const std::string& text,
                                                       std::string_view what);

// Stops the statement running on one connection when a run is cancelled
// (QueryOptions::cancel): a watcher thread, once the flag reads true, opens a
// second connection and sends `KILL QUERY <connection id>` (the server stops
// the statement; a user may always kill its own), then shuts the first
// connection's socket down so that whatever the owner's thread is blocked in
// (mysql_real_query, mysql_fetch_row) returns at once even when the KILL
// could not be sent, and so that no later statement runs on it. The
// connection is unusable afterwards; its owner only closes it. Created and
// stopped on the owner's thread.
class QueryCanceller {
 public:
  // `conn` must stay open until Stop() returned (or the canceller is gone).
  // `what` names the statements in the kCancelled status ("the MySQL query").
  QueryCanceller(const std::string& url, const std::string& password, const Conn& conn,
                 const std::atomic<bool>* cancel, std::string what);

  bool requested() const { return QueryCancelRequested(cancel_); }

  // Ends the watch (the connection may be closed afterwards).
  void Stop() { watcher_->Stop(); }

  // For the owner's thread once it saw the flag: ends the watch and kills the
  // statement unless the watcher already did. Returns QueryCancelledError.
  absl::Status Cancel() {
    watcher_->Stop();
    if (!watcher_->fired()) kill_();
    return QueryCancelledError(what_);
  }

 private:
  const std::atomic<bool>* const cancel_;
  const std::string what_;
  std::function<void()> kill_;
  std::unique_ptr<QueryCancelWatcher> watcher_;
};

// Warehouse change detection for the source at `url`, keeping its checkpoint
// table in the database `state_schema` (mysql_change_detection.cc).
std::unique_ptr<WarehouseChangeDetection> NewChangeDetection(std::string url, std::string password,
                                                             std::string state_schema);

}  // namespace backflow::mysql_internal
