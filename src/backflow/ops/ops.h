// Operations the CLI and the REST API both offer, written once: test a
// source's or destination's connection, preview a query's first rows, and
// show the payload a mapping would send for one record. Each returns a value
// the caller renders (text for the CLI, JSON for the API); errors in the
// user's objects (a query that fails, a missing key column) are part of the
// result, while kNotFound means the named object does not exist.
// Messages have the workspace's resolved secrets redacted.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/catalog/registry.h"
#include "backflow/config/workspace.h"
#include "backflow/model/value.h"

namespace backflow::ops {

struct ConnectionCheck {
  std::string name;
  std::string kind;  // "source" or "destination"
  std::string type;
  absl::Status status;  // OK when reachable with these credentials
  double duration_s = 0;
};

// kNotFound (with a did-you-mean) when no source or destination has `name`.
absl::StatusOr<ConnectionCheck> CheckConnection(const Workspace& ws, const Registry& registry,
                                                ConnectorEnv env, const std::string& name);

struct PreviewResult {
  Schema schema;
  std::vector<Row> rows;
  bool has_key = false;  // the primary key column is in the result
  absl::Status status;   // the query's error, if it failed
};

// Runs `sql` on source `source_name` limited to `limit` rows.
// kNotFound for an unknown source.
absl::StatusOr<PreviewResult> Preview(const Workspace& ws, const Registry& registry,
                                      ConnectorEnv env, const std::string& source_name,
                                      const std::string& sql, const std::string& primary_key,
                                      int limit);

struct MappingTestResult {
  std::string key;
  std::string row_json;      // the model row, as a JSON object
  std::string payload_json;  // what would be sent, "null" when rejected
  absl::Status mapped;       // why the record would be rejected
  absl::Status status;       // the model could not be read, or has no such row
};

// The first row of the mapping's model, or the row whose key is
// `record_key` (scanned on the client, so any SQL dialect works).
// kNotFound for an unknown mapping.
absl::StatusOr<MappingTestResult> TestMapping(const Workspace& ws, const Registry& registry,
                                              ConnectorEnv env, const std::string& mapping_name,
                                              const std::optional<std::string>& record_key);

}  // namespace backflow::ops
