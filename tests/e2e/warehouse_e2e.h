// The setup shared by the end-to-end tests of the warehouse sources: the real
// `backflow` binary reads the model `customers` from one source `warehouse`
// and syncs it with the mapping `customers_to_hook` (send_batch, all records)
// to the webhook destination `hook`, whose requests a WebhookReceiver checks.
// The helpers are not thread-safe (they set environment variables); call them
// from the test's thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backflow/testing/webhook_receiver.h"
#include "cli_runner.h"
#include "nlohmann/json.hpp"

namespace backflow::e2e {

// The webhook signing secret a signed receiver checks; exported as
// HOOK_SECRET for the workspace's ${env:HOOK_SECRET}.
inline constexpr char kHookSecret[] = "whsec_c2VjcmV0LWZvci1lMmUtdGVzdHM=";

// A started receiver; when `signed_requests`, HOOK_SECRET is exported and
// the receiver rejects requests not signed with kHookSecret. nullptr (with a
// test failure added) when it cannot start.
std::unique_ptr<WebhookReceiver> StartWebhookReceiver(bool signed_requests);

// The workspace written by WriteWarehouseWorkspace (state in
// .backflow/state.db).
struct WarehouseWorkspace {
  // The source's settings, one "key: value" line each, "type: ..." first.
  std::vector<std::string> source;
  std::string model_sql;  // written as a double-quoted YAML scalar
  std::string primary_key = "id";
  std::string hook_url;      // the receiver's URL
  bool signed_hook = false;  // the destination signs with ${env:HOOK_SECRET}
  int batch_size = 50;
  std::string fields;  // the mapping's fields, "to: from, ..." inside { }
};

// Writes `workspace` as <dir>/backflow.yaml.
void WriteWarehouseWorkspace(const std::string& dir, const WarehouseWorkspace& workspace);

// `backflow sync customers_to_hook --json` in `dir`.
CliResult SyncCustomers(const std::string& dir);

// The --json summary (the last line of stdout); a test failure, and a
// discarded value, when it is not JSON.
nlohmann::json Summary(const CliResult& r);

}  // namespace backflow::e2e
