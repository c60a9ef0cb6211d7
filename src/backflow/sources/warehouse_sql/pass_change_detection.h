// Warehouse change detection through a "pass table", for warehouses reached
// by stateless SQL requests (Snowflake's SQL API; later BigQuery, Databricks,
// ClickHouse): no transaction or temporary table spans two requests, so
// what one pass needs lives in ordinary tables of the managed schema
// (`state_schema`), dropped when the pass ends. See
// ../warehouse_change_detection.h for the contract.
//
// Tables in <state_schema> (created when missing; unquoted names, so the
// warehouse's identifier case rules apply):
//   CHECKPOINTS   (mapping, record_key, row_hash, mapping_version,
//                  fingerprint, record_identity): one row per mapping and
//                  record key, all text; fingerprint and identity in lowercase
//                  hex; record_key compares and sorts by its UTF-8 bytes
//                  (WarehouseSql::KeyType()).
//   PASS_TABLES   (table_name, created_at): the pass tables in use, so that
//                  those of a pass that never ended (a crash) are dropped by a
//                  later Begin() once older than `stale_after`.
//   PASS_<unix seconds>_<random hex>     one pass's copy of the model;
//   PASS_<unix seconds>_<random hex>_K   that pass's candidate and gone keys.
//
// One pass, in requests (each one statement; values travel as bindings):
//   Begin:  SELECT * FROM (model) LIMIT 0 (the columns, for the row hash);
//           CREATE TABLE PASS_x AS SELECT m.*, <key text>, <row hash> FROM
//           (model) AS m: the model runs once, and this table is the pass's
//           snapshot of it. The row hash is the MD5 (hex) of every column's
//           text, NULL-safe and length-prefixed ('n' for NULL, else
//           'v' <length> ':' <text>), so NULL differs from '' and no two rows
//           with different values hash alike by construction.
//   ReadCandidates: CREATE TABLE PASS_x_K AS the non-NULL keys of the
//           candidates (key new, duplicated, in flight, or a stored entry of
//           any run mapping with another row hash or version; every key when
//           all_rows) UNION the stored keys of the run's mappings that are not
//           in PASS_x (gone); then SELECT the model columns and the row hash
//           of the PASS_x rows whose key is NULL or in PASS_x_K.
//   ScanEntries: the mapping's CHECKPOINTS rows whose key is in PASS_x_K,
//           ORDER BY record_key (checked to be ascending in byte order).
//   CountEntries: COUNT(*) of the mapping's CHECKPOINTS rows.
//   Close:  DROP both tables, remove the PASS_TABLES row (also when a step
//           of Begin fails after the table was made).
// Cost: every pass writes one copy of the model (all columns, plus a key and
// a 32-character hash per row) into the warehouse and reads it three times
// (candidates, duplicates, gone keys) inside the warehouse; only the
// candidates and the entries of their keys travel to Backflow. Storing only
// keys and hashes would need a second run of the model for the candidates'
// columns, which could return another state of the model than the one the
// candidates were chosen from.
//
// Snapshot: the model is read once (the CREATE TABLE). The checkpoint is read
// at ReadCandidates and again at ScanEntries / CountEntries; Backflow writes
// a mapping's checkpoint only after the pass of its run is closed, and runs
// of one mapping do not overlap, so these reads see the same entries.
//
// Apply: one MERGE statement whose source is one bound JSON array of the
// writes (the last write of each key), so the writes of one Apply commit
// together. A batch whose JSON exceeds WarehouseSql::MaxBindingBytes() is
// split into several MERGE statements, each atomic; if a later one fails, the
// earlier ones stay applied, which leaves each key either as before or as
// written (the engine keeps every key of a failed write in flight).
// A warehouse without a conditional MERGE overrides WarehouseSql::ApplyBatch()
// and RunAll() (Redshift: UPDATE, INSERT and DELETE statements).
//
// Cancel (WarehousePassOptions::cancel): while a pass step runs (Begin,
// ReadCandidates and its reader, ScanEntries and its scanner, CountEntries),
// WarehouseSql::cancel() is the pass's flag, which each dialect hands to its
// source's query path, so the source's own cancel applies (Snowflake,
// BigQuery, Databricks, Redshift Data API: checked between polls and the
// statement cancelled in the warehouse; ClickHouse: KILL QUERY from a
// watcher; Redshift over libpq: PQcancel). A cancelled step returns
// kCancelled; the flag is also checked before each statement, so none is
// sent once it is set. Cleanup (Close, or a Begin that failed after
// registering its table) runs without the flag, one attempt per statement,
// and after a cancel stops at the first statement that fails (e.g. the
// warehouse is unreachable): the pass tables and their PASS_TABLES row are
// then left, and a later Begin() drops them once older than `stale_after`.
// Apply and EnsureTables' DDL outside a pass are never cancelled.
//
// Privileges: the role needs to create the schema (or USAGE and CREATE TABLE
// on an existing one) and to read and write the tables above; a refusal
// becomes kPermissionDenied with WarehouseSql::PrivilegeAdvice().
//
// Thread-compatible: used from one thread at a time, like its source.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/model/value.h"
#include "backflow/sources/source.h"
#include "backflow/sources/warehouse_change_detection.h"

namespace backflow {

// A statement and the text values of its `?` placeholders, in order.
struct BoundSql {
  std::string sql;
  std::vector<std::string> bindings;
};

// One warehouse's SQL and the way to run it. Each method that returns SQL
// returns a fragment of the warehouse's dialect.
class WarehouseSql {
 public:
  virtual ~WarehouseSql() = default;

  // Runs one statement whose `?` placeholders take `bindings` (text values)
  // in order, and returns its result.
  virtual absl::StatusOr<std::unique_ptr<RowReader>> Run(
      const std::string& sql, const std::vector<std::string>& bindings) = 0;

  // A model column's name as a quoted identifier.
  virtual std::string QuoteIdentifier(std::string_view name) const = 0;
  // The text of `expr`, a value of `column`, for the row hash (NULL stays
  // NULL). It must be stable: the same value gives the same text every run.
  virtual std::string ToText(const Column& column, const std::string& expr) const = 0;
  // Whether the warehouse writes `column`'s values (ToText) exactly as
  // Backflow's decoder writes them (Value::ToString()): only such a column
  // can be the key.
  virtual bool KeyTypeSupported(const Column& column) const = 0;
  // How to write the key column in the model's SQL so that it is supported,
  // for the error message ("CAST(ID AS VARCHAR) AS ID").
  virtual std::string KeyCastAdvice(const std::string& key) const = 0;
  // The lowercase hex MD5 of the text `expr`.
  virtual std::string Md5Hex(const std::string& expr) const = 0;
  // Column types for DDL: text, text compared and sorted by its UTF-8
  // bytes, and a 64-bit integer.
  virtual std::string TextType() const = 0;
  virtual std::string KeyType() const = 0;
  virtual std::string IntegerType() const = 0;
  // A FROM item named `alias` over the elements of a JSON array given as one
  // text binding: the fragment holds exactly one `?`.
  virtual std::string JsonArrayTable(const std::string& alias) const = 0;
  // The text of the element `alias` (a JSON string).
  virtual std::string JsonValueText(const std::string& alias) const = 0;
  // The text of item `index` of the element `alias` (an array of strings).
  virtual std::string JsonItemText(const std::string& alias, int index) const = 0;
  // Whether `status` says the role lacks a privilege.
  virtual bool IsPrivilegeError(const absl::Status& status) const = 0;

  enum class Step {
    kCreateSchema,  // creating <state_schema>
    kCreateTable,   // creating a table in it
    kUseTables,     // reading or writing its tables
  };
  // What to grant so that `step` in `schema` works (may ask the warehouse
  // for the current role and database); a sentence or two.
  virtual std::string PrivilegeAdvice(Step step, const std::string& schema) = 0;

  // The cancel flag (QueryOptions::cancel) of the pass step now running;
  // null when nothing may stop the statements. Run() and RunAll() hand it to
  // the source's query path. Set by the pass layer around each step.
  const std::atomic<bool>* cancel() const { return cancel_; }
  void set_cancel(const std::atomic<bool>* cancel) { cancel_ = cancel; }

  // The largest JSON text Apply binds in one statement.
  virtual size_t MaxBindingBytes() const { return size_t{4} << 20; }

  // --- Whole statements. The defaults are standard SQL (Snowflake's: CREATE
  // SCHEMA, CTAS, correlated NOT EXISTS, MERGE); a warehouse without some of
  // these overrides the statement. `?` placeholders as for Run(). ---
  virtual std::string CreateSchemaSql(const std::string& schema) const;
  // The checkpoint table (columns as described at the top of this file;
  // reads go through CheckpointsToRead()).
  virtual std::string CreateCheckpointsSql(const std::string& table) const;
  virtual std::string CreateRegistrySql(const std::string& table) const;
  // Registers a pass table: binds the table name and created_at (decimal).
  virtual std::string RegisterPassSql(const std::string& registry) const;
  // The pass tables created before the binding (decimal unix seconds).
  virtual std::string StalePassesSql(const std::string& registry) const;
  virtual BoundSql CreatePassTableSql(const std::string& table, const std::string& model_sql,
                                      const Schema& schema, int key_index) const;
  virtual BoundSql CreateKeysTableSql(const std::string& checkpoints, const std::string& pass,
                                      const std::string& keys,
                                      const WarehouseCandidateFilter& filter) const;
  // The current checkpoint rows (mapping, record_key, row_hash,
  // mapping_version, fingerprint, record_identity) as a FROM item: the table
  // itself, or a parenthesized query over it.
  virtual std::string CheckpointsToRead(const std::string& checkpoints) const {
    return checkpoints;
  }
  // One atomic write of `json` (a JSON array of [key, "U"|"D", row_hash,
  // version, fingerprint, identity], one per key) to `mapping`'s entries.
  virtual BoundSql ApplySql(const std::string& checkpoints, const std::string& mapping,
                            std::string json) const;

  // --- Forms some warehouses spell otherwise; the defaults are Snowflake's. ---
  // The table constraint naming `columns` ("a, b") as the primary key; empty
  // for none.
  virtual std::string PrimaryKey(const std::string& columns) const {
    return "PRIMARY KEY (" + columns + ")";
  }
  // The length of the text `expr`, as an operand of `||`.
  virtual std::string LengthText(const std::string& expr) const { return "LENGTH(" + expr + ")"; }
  // The set operator that unions two queries without duplicates.
  virtual std::string UnionDistinct() const { return "UNION"; }
  // A placeholder whose text binding compares to and is stored in a column
  // of IntegerType().
  virtual std::string IntegerParameter() const { return "?"; }
  // Whether CREATE TABLE ... AS SELECT may carry bindings. When not, the keys
  // table is made by CREATE TABLE (record_key <KeyType()>) and filled by
  // INSERT INTO ... SELECT (where every SQL dialect takes bindings), and
  // CreateKeysTableSql() is not used.
  virtual bool BindingsInCreateTableAs() const { return true; }
  // Whether the in-flight keys go into the keys table in chunks of at most
  // MaxBindingBytes() of JSON each (INSERT INTO ... SELECT the pass's keys
  // IN the chunk), for warehouses whose one JSON binding is small
  // (Redshift's JSON_PARSE takes 64 KB): then the keys table is made as when
  // BindingsInCreateTableAs() is false, and the in-flight condition of its
  // main INSERT is empty. A single key whose JSON exceeds MaxBindingBytes()
  // fails the pass with kFailedPrecondition.
  virtual bool ChunkInFlightKeys() const { return false; }
  // Runs after every statement of one Apply() succeeded, with the number of
  // removes among its writes: upkeep of the checkpoint table (ClickHouse
  // purges the tombstones of removed keys). An error fails that Apply()
  // (its writes stay applied, which the engine tolerates: it keeps the keys
  // in flight). Default: nothing.
  virtual absl::Status AfterApply(const std::string& checkpoints, const std::string& mapping,
                                  size_t removes) {
    (void)checkpoints;
    (void)mapping;
    (void)removes;
    return absl::OkStatus();
  }

  // --- Optional: warehouses without IS DISTINCT FROM or a conditional MERGE.
  // Whether `a` (may be NULL) differs from `b` (never NULL); each operand
  // appears once in the result. Default: `a IS DISTINCT FROM b`.
  virtual std::string DiffersFrom(const std::string& a, const std::string& b) const;
  // The statements that apply one batch of writes to `checkpoints`: `json` is
  // the JSON text bound in pass_sql::Merge (one array [key, op, row_hash,
  // version, fingerprint, identity] per key, op 'U' or 'D'). They run through
  // RunAll(). Default: the one statement of ApplySql().
  virtual std::vector<BoundSql> ApplyBatch(const std::string& checkpoints,
                                           const std::string& mapping,
                                           const std::string& json) const;
  // Runs `statements` in order and reads each answer to its end, in one
  // transaction where the warehouse can; where it cannot, ApplyBatch() must
  // write each key in one statement only, so that a failure leaves every key
  // either as before or as written. Default: each through Run(), in order.
  virtual absl::Status RunAll(const std::vector<BoundSql>& statements);

 private:
  const std::atomic<bool>* cancel_ = nullptr;
};

struct PassChangeDetectionOptions {
  // The managed schema, a plain identifier (letters, digits, '_', '$'; not
  // starting with a digit).
  std::string state_schema = "backflow_state";
  // Time for pass table names and for finding stale ones; must outlive the
  // change detection.
  Clock* clock = nullptr;
  // Pass tables older than this are dropped by a later Begin().
  std::chrono::seconds stale_after{24 * 3600};
};

std::unique_ptr<WarehouseChangeDetection> NewPassChangeDetection(
    std::unique_ptr<WarehouseSql> sql, PassChangeDetectionOptions options);

// Whether `name` is a plain identifier usable as state_schema.
bool IsPlainSqlIdentifier(std::string_view name);

// Packs JSON items (each already JSON text), in order, into JSON arrays of
// at most `max_bytes` each (WarehouseSql::MaxBindingBytes()); an item longer
// than that alone gets an array of its own.
class JsonArrayChunks {
 public:
  explicit JsonArrayChunks(size_t max_bytes) : max_bytes_(max_bytes) {}
  // Adds `item`; returns the array before it when `item` did not fit in it.
  std::optional<std::string> Add(std::string_view item);
  // The last array; nullopt when no item is left.
  std::optional<std::string> Finish();

 private:
  size_t max_bytes_;
  std::string json_ = "[";
};

// --- The statements, exposed for tests. --------------------------------------

namespace pass_sql {

// The NULL-safe, length-prefixed text of a row of `schema` read as alias
// `alias`, and its MD5.
std::string RowHash(const WarehouseSql& sql, const Schema& schema, const std::string& alias);
BoundSql CreatePassTable(const WarehouseSql& sql, const std::string& table,
                         const std::string& model_sql, const Schema& schema, int key_index);
BoundSql CreateKeysTable(const WarehouseSql& sql, const std::string& checkpoints,
                         const std::string& pass, const std::string& keys,
                         const WarehouseCandidateFilter& filter);
// The SELECT of CreateKeysTable (one column, record_key).
BoundSql SelectKeys(const WarehouseSql& sql, const std::string& checkpoints,
                    const std::string& pass, const WarehouseCandidateFilter& filter);
BoundSql SelectCandidates(const WarehouseSql& sql, const std::string& pass, const std::string& keys,
                          const Schema& schema);
BoundSql SelectEntries(const std::string& checkpoints, const std::string& keys,
                       const std::string& mapping);
// The MERGE of `writes` (already one per key) given as the JSON text `json`.
BoundSql Merge(const WarehouseSql& sql, const std::string& checkpoints, const std::string& mapping,
               std::string json);

}  // namespace pass_sql

}  // namespace backflow
