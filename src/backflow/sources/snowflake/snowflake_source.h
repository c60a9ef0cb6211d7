// Snowflake source ("snowflake"): runs a model's SQL through the Snowflake
// SQL API v2 (../shared/reference/warehouses.md §1) and streams the result
// one partition at a time.
//
// Auth, on every request (there is no token exchange):
//   key pair: "Authorization: Bearer <JWT>" + "X-Snowflake-Authorization-
//     Token-Type: KEYPAIR_JWT". The JWT is RS256-signed with the user's
//     private key (PKCS#8 PEM, optionally passphrase-encrypted) and claims
//     iss = <ACCOUNT>.<USER>.SHA256:<fingerprint>, sub = <ACCOUNT>.<USER>,
//     iat = now, exp = iat + 59 min (epoch seconds); ACCOUNT is
//     SnowflakeJwtAccount(account), USER the user uppercased, the fingerprint
//     SnowflakePublicKeyFingerprint(). A JWT is reused for 50 minutes, then
//     re-minted; a 401 re-mints it once and repeats the request.
//   token: a programmatic access token or an OAuth access token as the
//     bearer, with token type PROGRAMMATIC_ACCESS_TOKEN or OAUTH.
//
// Query(sql):
//   1. POST {base_url}/api/v2/statements?requestId=<uuid v4> with
//      {"statement","timeout","warehouse","database","schema","role",
//       "parameters":{"timezone":"UTC","query_tag","binary_output_format":"HEX"}}
//      (empty settings are left out). The server waits up to 45 s before it
//      answers 202, so this request's timeout is at least 60 s. Re-submits
//      (after 429, 500/502/503/504 or a transport error) carry the same
//      requestId plus retry=true, so Snowflake never runs the statement twice;
//      the POST is never re-sent by the transport itself.
//   2. 202 + statementHandle: GET statementStatusUrl after 100 ms, then with
//      the wait doubling up to 5 s, on the injected clock, until 200. A 429
//      while polling also means "still running". The client gives up (and
//      cancels) statement_timeout_s + 5 min after submitting.
//   3. 200: resultSetMetaData.rowType gives the schema (before any row);
//      `data` holds partition 0. Partitions 1..N-1 are fetched one at a time
//      when the reader reaches them (GET ...?partition=N, gzip-encoded: the
//      HttpClient must decode Content-Encoding, and a body that still starts
//      with the gzip magic is inflated here), so memory holds one partition.
//      Each partition must hold partitionInfo[i].rowCount rows and the total
//      numRows; a short partition is kDataLoss, never a clean end.
//   Dropping a reader before its end, or a reader whose fetch failed, sends
//   POST .../{handle}/cancel (one attempt, errors ignored); a reader that
//   has handed out every row sends nothing.
//   QueryOptions::cancel is checked before the submit, before and after each
//   wait between status polls, and before each partition fetch: once set,
//   the statement is cancelled as above and kCancelled returned, with no
//   further poll (the submit itself, held up to 45 s by Snowflake, ends
//   first).
//
// Type mapping (rowType[].type, compared case-insensitively; cells are JSON
// strings or null, decoded by column type, never by looking at the cell):
//   FIXED scale 0             -> kInt64 (a value beyond int64, possible when
//                                precision > 18, arrives as an exact kDecimal)
//   FIXED scale > 0, DECFLOAT -> kDecimal, exact text (DECFLOAT exponents are
//                                expanded: "1.5e3" -> "1500")
//   REAL                      -> kDouble ("NaN", "inf", "-inf" accepted)
//   TEXT                      -> kString
//   BOOLEAN                   -> kBool
//   DATE ("18262", days)      -> kDate "2020-01-01"
//   TIME ("82919.5", seconds) -> kString "23:01:59.5"
//   TIMESTAMP_LTZ / _TZ       -> kTimestamp "2024-06-01T00:02:03.123Z" (UTC;
//                                TZ cells are "<sec.9dp> <offset+1440>", the
//                                offset only says how the value was entered)
//   TIMESTAMP_NTZ             -> kTimestamp without zone "2024-06-01T00:02:03"
//   timestamps also accepted as integer nanoseconds ("1611871777123456789");
//   fractions keep their significant digits (trailing zeros dropped)
//   VARIANT / OBJECT / ARRAY  -> kJson, compacted (Snowflake pretty-prints)
//   BINARY (hex)              -> kBytes
//   anything else (GEOGRAPHY, GEOMETRY, VECTOR...) -> kString, as sent.
// Column names are Snowflake's: unquoted identifiers come back UPPERCASE.
//
// Errors (after retries: 429, 500/502/503/504 and transport errors are
// retried with exponential backoff and full jitter on the clock):
//   422 QueryFailureStatus -> kInvalidArgument quoting Snowflake's message,
//     code and SQL state (000606 "no active warehouse" -> kFailedPrecondition
//     naming the `warehouse` setting); 401 (after one re-mint) ->
//     kUnauthenticated saying what to check (registered public key and its
//     fingerprint, account identifier format, token); 403 ->
//     kPermissionDenied; 404 -> kFailedPrecondition (unknown account or
//     base_url); 408 (statement timeout, cancelled by Snowflake) ->
//     kFailedPrecondition naming statement_timeout_s; 429 ->
//     kResourceExhausted; 5xx and transport -> kUnavailable /
//     kDeadlineExceeded; other replies -> kFailedPrecondition quoting them.
// change_detection: warehouse (Source::warehouse_change_detection()) runs
// through pass tables in `state_schema` of the connection's database
// (../warehouse_sql/pass_change_detection.h, snowflake_change_detection.cc);
// its statements carry "bindings" ({"1": {"type": "TEXT", "value": ...}}).
//
// CheckConnection() runs SELECT CURRENT_USER(), CURRENT_ROLE(),
// CURRENT_WAREHOUSE(), CURRENT_DATABASE(), CURRENT_SCHEMA() and fails with
// kFailedPrecondition when a configured warehouse, database or schema is not
// in effect (wrong name or no access), or when no warehouse is in effect.
//
// Thread-safety: a source and its readers are used from one thread at a
// time; the key-pair token cache is thread-safe. The HttpClient and Clock
// of the ConnectorEnv must outlive the source and its readers.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/common/clock.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/model/value.h"
#include "backflow/sources/source.h"
#include "backflow/sources/warehouse_sql/pass_change_detection.h"
#include "nlohmann/json.hpp"

namespace backflow {

// The definition of the "snowflake" source type.
SourceDefinition SnowflakeSourceDefinition();

enum class SnowflakeAuth { kKeyPair, kProgrammaticAccessToken, kOAuth };

struct SnowflakeConfig {
  std::string account;  // the account identifier, as the user gave it
  std::string user;
  SnowflakeAuth auth = SnowflakeAuth::kKeyPair;
  std::string private_key_pem;  // key pair: PKCS#8/PKCS#1 PEM, possibly encrypted
  std::string private_key_passphrase;
  std::string token;  // PAT or OAuth access token
  std::string warehouse;
  std::string database;
  std::string schema;
  std::string role;
  std::string query_tag;
  int64_t statement_timeout_s = 3600;  // 0: Snowflake's maximum (7 days)
  // The schema of change_detection: warehouse's tables (a plain identifier).
  std::string state_schema = "backflow_state";
  HttpSettings http;  // base_url, timeout, retry policy
  // Status polling: the first wait, doubling up to the cap.
  std::chrono::milliseconds poll_initial{100};
  std::chrono::milliseconds poll_max{5000};
  // Key-pair JWT lifetime (Snowflake caps it at 1 h) and when to re-mint.
  std::chrono::seconds jwt_lifetime{59 * 60};
  std::chrono::seconds jwt_renew_after{50 * 60};
};

// Reads settings already checked against the definition (defaults filled
// in). kInvalidArgument, naming the setting, for a missing account, no or
// two credentials, a key pair without user, or a bad base_url.
absl::StatusOr<SnowflakeConfig> ParseSnowflakeSettings(const nlohmann::json& settings);

// Builds a source; the key (decrypted with the passphrase when encrypted)
// is parsed here: kInvalidArgument when it cannot be used.
absl::StatusOr<std::unique_ptr<Source>> NewSnowflakeSource(SnowflakeConfig config,
                                                           const ConnectorEnv& env);

// --- Exposed for tests and the fake server. ---------------------------------

// The ACCOUNT part of the JWT claims: uppercased; an account locator with a
// region ("xy12345.us-east-2.aws") keeps only the locator; a ".global"
// identifier is cut at its first '-'; a "https://" prefix and a
// ".snowflakecomputing.com" suffix are ignored. "myorg-myacct" stays
// "MYORG-MYACCT" (an org-account identifier is never cut at the hyphen).
std::string SnowflakeJwtAccount(std::string_view account);

// https://<account>.snowflakecomputing.com, lowercased, '_' as '-'.
std::string SnowflakeDefaultBaseUrl(std::string_view account);

// "SHA256:" + standard base64 (with padding) of the SHA-256 of the key's
// SubjectPublicKeyInfo DER: what DESCRIBE USER shows as RSA_PUBLIC_KEY_FP.
std::string SnowflakePublicKeyFingerprint(const Rs256Key& key);

// The key-pair JWT for `account` (already SnowflakeJwtAccount form) and
// `user` (uppercased here), issued at `now` and valid for `lifetime`.
absl::StatusOr<std::string> SignSnowflakeJwt(const Rs256Key& key, std::string_view account,
                                             std::string_view user, Clock::TimePoint now,
                                             std::chrono::seconds lifetime);

// A private key PEM usable by Rs256Key: encrypted PKCS#8 ("BEGIN ENCRYPTED
// PRIVATE KEY") is decrypted with `passphrase`; other PEM is returned as is.
// kInvalidArgument for a wrong or missing passphrase.
absl::StatusOr<std::string> DecryptSnowflakePrivateKey(std::string_view pem,
                                                       std::string_view passphrase);

// Runs one statement with TEXT bindings for its `?` placeholders; `cancel`
// (may be null) as QueryOptions::cancel.
using SnowflakeSqlRunner = std::function<absl::StatusOr<std::unique_ptr<RowReader>>(
    const std::string& sql, const std::vector<std::string>& bindings,
    const std::atomic<bool>* cancel)>;

// Snowflake's dialect of the pass-table change detection, running its
// statements through `run`.
std::unique_ptr<WarehouseSql> NewSnowflakeWarehouseSql(SnowflakeSqlRunner run);

// One result column: the schema entry and how its cells decode.
struct SnowflakeColumnType {
  Column column;     // name, ValueType, source_type ("NUMBER(38,0)")
  std::string type;  // rowType type, lowercased ("fixed", "timestamp_tz")
  int64_t precision = 0;
  int64_t scale = 0;
};

// Reads one rowType entry. kDataLoss when it has no name or type.
absl::StatusOr<SnowflakeColumnType> ParseSnowflakeRowType(const nlohmann::json& entry);

// Decodes one cell (a JSON string or null) of a column. kDataLoss, naming
// the column, for a cell that does not fit the column's type.
absl::StatusOr<Value> DecodeSnowflakeCell(const SnowflakeColumnType& type,
                                          const nlohmann::json& cell);

}  // namespace backflow
