// Source and RowReader: the seam between a warehouse and the engine.
//
// A Source runs read-only SQL and streams the result with bounded memory.
// Sources are used from one thread at a time (a source may use threads of its
// own inside a reader).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/model/value.h"

namespace backflow {

class WarehouseChangeDetection;  // sources/warehouse_change_detection.h

class RowReader {
 public:
  virtual ~RowReader() = default;

  // The result's columns, known before the first row.
  virtual const Schema& schema() const = 0;

  // Replaces `row` with the next row (one Value per schema column). Returns
  // false at the clean end of the result. An error means the stream was cut
  // short (kUnavailable: connection lost; kInvalidArgument: the query failed
  // at run time) and no conclusion may be drawn from the rows seen so far.
  virtual absl::StatusOr<bool> Next(Row& row) = 0;

  // The next row in EncodeRow()'s form, for callers that spool or hash rows
  // rather than look at values: `row` views bytes the reader owns, valid
  // until the next call. Same rows, end and errors as Next(). The default
  // encodes Next()'s row; a reader that can write the encoding from what the
  // warehouse sent overrides it. A caller reads with one of the two methods.
  virtual absl::StatusOr<bool> NextEncoded(std::string_view& row);

 private:
  Row decoded_;  // NextEncoded()'s default
  std::string encoded_;
};

// What the caller knows about a query beyond its SQL. Hints: a source may use
// them to read faster, never to return other rows; and a way to stop it.
struct QueryOptions {
  // The column that identifies each row (a model's primary key); empty when
  // unknown.
  std::string key_column;
  // Null, or a flag another thread may set to stop the query. Once it reads
  // true, Query() and the reader's Next() ask the warehouse to cancel the
  // query (best effort, one attempt; the query is not left running on
  // purpose) and return kCancelled (QueryCancelledError), sending no further
  // status polls. A source that waits for a query to finish checks the flag
  // before and after every wait between polls, so a cancel is seen within one
  // poll interval (a request already in flight, such as a submit the
  // warehouse holds open for a few seconds, ends first); a reader checks it
  // before each fetch from the warehouse (rows it already holds may still be
  // handed out first). Sources without a cancellable wait ignore it: the
  // caller still stops between rows. It must outlive the reader.
  const std::atomic<bool>* cancel = nullptr;
};

// Whether `cancel` (QueryOptions::cancel) is set and true.
inline bool QueryCancelRequested(const std::atomic<bool>* cancel) {
  return cancel != nullptr && cancel->load(std::memory_order_relaxed);
}

// The kCancelled status of a query stopped through QueryOptions::cancel;
// `what` names it ("Snowflake statement 01b2..."), which was asked to stop.
absl::Status QueryCancelledError(std::string_view what);

class Source {
 public:
  virtual ~Source() = default;

  // Connects and runs a trivial query. Errors carry an actionable message.
  virtual absl::Status CheckConnection() = 0;

  // Starts `sql` and returns a reader positioned before the first row.
  // kInvalidArgument for SQL the warehouse rejects (message from the
  // warehouse), kUnavailable / kUnauthenticated for connection problems.
  virtual absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql) = 0;

  // Query(sql) with hints (see QueryOptions); same contract. The default
  // ignores the hints.
  virtual absl::StatusOr<std::unique_ptr<RowReader>> Query(std::string_view sql,
                                                           const QueryOptions& options);

  // Change detection inside the warehouse (a model's `change_detection:
  // warehouse`), owned by the source; null when the source cannot (the
  // default).
  virtual WarehouseChangeDetection* warehouse_change_detection() { return nullptr; }
};

// The model's SQL without surrounding whitespace and trailing semicolons,
// ready to be wrapped as a subquery (wrap it between newlines so a trailing
// "--" comment stays inside).
std::string TrimModelSql(std::string_view sql);

// Wraps a model query so that at most `limit` rows come back.
std::string LimitQuery(std::string_view sql, int limit);

}  // namespace backflow
