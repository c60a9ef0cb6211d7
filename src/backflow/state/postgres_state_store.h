// PostgreSQL implementation of StateStore (see state_store.h): one state
// shared by several `backflow serve` processes, on one or several machines.
//
// Everything lives in the schema `backflow` of the database the url names;
// the schema and its tables are created and migrated on open (migrations
// are versioned in backflow.schema_migrations and serialised across
// processes with an advisory lock). A user without CREATE on the database
// can use a schema that an administrator created and migrated beforehand.
//
// Contract beyond state_store.h:
// - Checkpoint keys are bytea: scans return them in ascending byte order,
//   whatever their bytes (NUL, >= 0x80, invalid UTF-8).
// - A scan runs on its own connection in a REPEATABLE READ, READ ONLY
//   transaction through a server-side cursor, fetching
//   `scan_fetch_rows` rows per round trip: it sees one snapshot while
//   ApplyCheckpoint() commits, and holds at most that many rows in memory.
//   The snapshot lasts until the scanner is destroyed (and meanwhile keeps
//   VACUUM from removing rows deleted after it began): destroy scanners
//   once read. A scanner may outlive its store.
// - ApplyCheckpoint(), MarkInFlight() and ApplyAndMark() write
//   `write_batch_rows` records per statement in one transaction (one commit);
//   applying updates serialises writers of the same mapping (across
//   processes) on the mapping's summary row.
// - Commits are durable: a session whose server default is
//   synchronous_commit=off switches it on.
// - ClaimRuns() takes the oldest due request with SELECT ... FOR UPDATE SKIP
//   LOCKED on the request's first run: concurrent claimers, in any process,
//   never take the same request. RenewLeases() and ReleaseRuns() lock the
//   worker's runs in id order (a request's first run first), so they wait
//   for, rather than deadlock with, a take-over of the same runs.
// - AdvanceSchedule() is a conditional UPDATE (or INSERT ... ON CONFLICT DO
//   NOTHING) of the model's row: a racing process waits for the winner's
//   commit, then finds the condition false. With runs to queue it first takes
//   the transaction-level advisory lock EnqueueRunsUnlessActive() takes, so
//   its check for active runs and its inserts are serialized with the API's.
// - LockMapping() takes a session-level advisory lock (key: a 64-bit hash of
//   the mapping name) on a connection of its own, named "backflow HOST pid
//   PID" (application_name) so that a refused process can say who holds it.
//   The lock ends with that connection: when the handle is destroyed, or
//   when the process dies and the server sees its socket close (TCP
//   keepalives end it within about 30 s if the host vanished).
// - MarkInterruptedRuns() judges only runs started on this host (runs record
//   the host name with the pid); runs of other hosts are left alone.
// - A broken connection (server restart) is replaced on the next call; the
//   call that saw it fails with kUnavailable.
// A store, and each scanner, is used from one thread at a time; separate
// stores may be used from separate threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "backflow/state/state_store.h"

namespace backflow {

struct PostgresStateStoreOptions {
  // Rows a checkpoint or in-flight scan fetches per round trip.
  int scan_fetch_rows = 2'000;
  // Records per statement in ApplyCheckpoint() and MarkInFlight().
  int write_batch_rows = 5'000;
};

// Opens (creating and migrating the schema if needed) the state store in
// the PostgreSQL database `url` names (postgresql:// or postgres:// URI, or
// a key=value conninfo string; the password may be embedded and never
// appears in messages).
absl::StatusOr<std::unique_ptr<StateStore>> OpenPostgresStateStore(
    const std::string& url, const PostgresStateStoreOptions& options = {});

// What a scan of a PostgreSQL store has done so far.
struct PostgresScanStats {
  int64_t fetches = 0;        // FETCH round trips
  int64_t rows = 0;           // rows returned by Next()
  int64_t max_rows_held = 0;  // the most rows held in memory at once
};
// nullopt when `scanner` does not come from a PostgreSQL store.
std::optional<PostgresScanStats> GetPostgresScanStats(const CheckpointScanner& scanner);

}  // namespace backflow
