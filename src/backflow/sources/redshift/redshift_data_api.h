// Redshift Data API source ("redshift_data_api"): runs a model's SQL
// through the Amazon Redshift Data API over HTTPS (../shared/reference/
// warehouses.md §4.2): no network path to port 5439 and no database
// password needed, only an IAM identity.
//
// Every call is AWS JSON 1.1: POST {base_url}/ (default
// https://redshift-data.<region>.amazonaws.com) with Content-Type
// application/x-amz-json-1.1, X-Amz-Target RedshiftData.<Operation>, SigV4
// for service "redshift-data" (common/aws_sigv4.h; X-Amz-Security-Token with
// a session token), re-signed on every attempt.
//
// Query(sql):
//   1. ExecuteStatement {Sql, Database, ClusterIdentifier + DbUser (IAM
//      temporary credentials) | ClusterIdentifier + SecretArn |
//      WorkgroupName [+ SecretArn], StatementName "backflow", ClientToken}.
//      The ClientToken (random, one per Query) makes re-sending after a lost
//      reply safe, so the submit is retried like every other call.
//   2. DescribeStatement {Id} until Status is FINISHED, FAILED or ABORTED,
//      waiting poll_initial (doubling up to poll_max) on the injected Clock
//      between polls. Still running after query_timeout_s: CancelStatement,
//      then kDeadlineExceeded.
//   3. GetStatementResult {Id[, NextToken]}: the first page's ColumnMetadata
//      is the schema; pages are fetched one at a time as the reader uses
//      them up (one page held), following NextToken until it is absent. The
//      rows must add up to TotalNumRows, else kDataLoss.
//   Dropping a reader before its end, or a failure while the statement
//   runs, sends CancelStatement (one attempt, errors ignored: AWS refuses to
//   cancel a statement that already finished).
//   QueryOptions::cancel is checked before ExecuteStatement, before each
//   DescribeStatement (so right after each wait) and before each page fetch:
//   once set, CancelStatement is sent and kCancelled returned, with no
//   further poll.
//
// Values (by ColumnMetadata typeName, never by the cell; the Field union
// member is converted to the column's type):
//   int2/int4/int8 (smallint, integer, bigint) -> kInt64 from longValue,
//   exact; numeric/decimal -> kDecimal from stringValue, exact text;
//   float4/float8 -> kDouble; bool -> kBool from booleanValue; date ->
//   kDate; timestamp -> kTimestamp without zone, timestamptz -> kTimestamp
//   ISO-8601 "2024-06-01T08:00:00.123Z"; super -> kJson (compacted);
//   varbyte -> kBytes (blobValue base64, or hex text); char/varchar/text,
//   time, geometry, intervals and unknown types -> kString;
//   {"isNull": true} -> NULL.
//
// Errors (after retries of ThrottlingException, 429,
// ActiveStatementsExceededException, ActiveSessionsExceededException and
// 5xx/InternalServerException with backoff on the clock; see AwsFailure in
// redshift_aws.h): ValidationException -> kInvalidArgument; bad or expired
// credentials -> kUnauthenticated; AccessDenied -> kPermissionDenied naming
// redshift-data:ExecuteStatement; throttling -> kResourceExhausted; server
// errors -> kUnavailable. A statement that ends FAILED -> kInvalidArgument
// quoting its Error (a serializable isolation violation -> kUnavailable,
// "permission denied" -> kPermissionDenied); ABORTED -> kUnavailable.
// An error from Next() is sticky.
//
// change_detection: warehouse (Source::warehouse_change_detection()) runs
// through pass tables in `state_schema` (redshift_change_detection.h), one
// ExecuteStatement per statement, bindings as Parameters (:p1, :p2, ...).
//
// Thread-safety: a source and its readers are used from one thread at a
// time. The HttpClient and Clock of the ConnectorEnv must outlive them.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/common/aws_sigv4.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/model/value.h"
#include "backflow/sources/source.h"
#include "nlohmann/json.hpp"

namespace backflow {

SourceDefinition RedshiftDataApiSourceDefinition();

struct RedshiftDataApiConfig {
  AwsCredentials credentials;
  std::string region;
  std::string database;
  std::string cluster_identifier;  // provisioned, or
  std::string workgroup_name;      // serverless
  std::string db_user;             // cluster + temporary credentials
  std::string secret_arn;          // Secrets Manager credentials
  HttpSettings http;               // base_url, timeout, retries
  std::chrono::milliseconds poll_initial{100};
  std::chrono::milliseconds poll_max{2000};
  int64_t query_timeout_s = 3600;  // 0: no client-side limit
  // The schema of change_detection: warehouse's tables (a plain identifier).
  std::string state_schema = "backflow_state";
};

// Reads settings already checked against the definition. kInvalidArgument,
// naming the setting, for missing credentials, region or database, not
// exactly one of cluster_identifier / workgroup_name, a cluster without
// db_user or secret_arn, both db_user and secret_arn, or a bad base_url.
absl::StatusOr<RedshiftDataApiConfig> ParseRedshiftDataApiSettings(const nlohmann::json& settings);

absl::StatusOr<std::unique_ptr<Source>> NewRedshiftDataApiSource(RedshiftDataApiConfig config,
                                                                 const ConnectorEnv& env);

// --- Exposed for tests. ------------------------------------------------------

// One ColumnMetadata entry: the column and the type OID its cells decode as.
struct RedshiftDataColumn {
  Column column;
  Oid oid = 0;
};

// The type OID for a Data API typeName ("int8", "numeric", "timestamptz",
// "super", "character varying"); text for unknown names.
Oid RedshiftOidForTypeName(std::string_view type_name);

// Reads one ColumnMetadata entry. kDataLoss when it has no name.
absl::StatusOr<RedshiftDataColumn> ParseRedshiftDataColumn(const nlohmann::json& metadata);

// Decodes one Field of a column. kDataLoss, naming the column, for a field
// that is not a union object or does not fit the column's type.
absl::StatusOr<Value> DecodeRedshiftDataField(const RedshiftDataColumn& column,
                                              const nlohmann::json& field);

}  // namespace backflow
