#include "warehouse_e2e.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fmt/format.h"

namespace backflow::e2e {

std::unique_ptr<WebhookReceiver> StartWebhookReceiver(bool signed_requests) {
  WebhookReceiverOptions options;
  if (signed_requests) {
    setenv("HOOK_SECRET", kHookSecret, 1);
    options.signing_secret = kHookSecret;
  }
  auto receiver = std::make_unique<WebhookReceiver>(options);
  absl::Status started = receiver->Start();
  if (!started.ok()) {
    ADD_FAILURE() << "the webhook receiver did not start: " << started;
    return nullptr;
  }
  return receiver;
}

void WriteWarehouseWorkspace(const std::string& dir, const WarehouseWorkspace& w) {
  std::string source;
  for (const std::string& line : w.source) source += "    " + line + "\n";
  std::ofstream(dir + "/backflow.yaml") << fmt::format(
      R"(
state: sqlite:.backflow/state.db
sources:
  - name: warehouse
{}models:
  - name: customers
    source: warehouse
    sql: {}
    primary_key: {}
    schedule: manual
destinations:
  - name: hook
    type: webhook
    settings:
      url: {}
{}      max_retries: 2
mappings:
  - name: customers_to_hook
    model: customers
    destination: hook
    action: send_batch
    records: all
    batch_size: {}
    fields: {{ {} }}
)",
      source, nlohmann::json(w.model_sql).dump(), w.primary_key, w.hook_url,
      w.signed_hook ? "      signing_secret: ${env:HOOK_SECRET}\n" : "", w.batch_size, w.fields);
}

CliResult SyncCustomers(const std::string& dir) {
  return RunCli(dir, {"sync", "customers_to_hook", "--json"});
}

nlohmann::json Summary(const CliResult& r) {
  nlohmann::json j = nlohmann::json::parse(r.LastLine(), nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "stdout: " << r.out << "\nstderr: " << r.err;
  return j;
}

}  // namespace backflow::e2e
