// The connectors this binary ships: one line each.
#include "backflow/catalog/registry.h"
#include "backflow/destinations/braze/braze_destination.h"
#include "backflow/destinations/file/file_destination.h"
#include "backflow/destinations/google_sheets/google_sheets_destination.h"
#include "backflow/destinations/hubspot/hubspot_destination.h"
#include "backflow/destinations/iterable/iterable_destination.h"
#include "backflow/destinations/meta_capi/meta_capi_destination.h"
#include "backflow/destinations/mixpanel/mixpanel_destination.h"
#include "backflow/destinations/postgres/postgres_destination.h"
#include "backflow/destinations/salesforce/salesforce_destination.h"
#include "backflow/destinations/segment/segment_destination.h"
#include "backflow/destinations/webhook/webhook_destination.h"
#include "backflow/sources/bigquery/bigquery_source.h"
#include "backflow/sources/clickhouse/clickhouse_source.h"
#include "backflow/sources/databricks/databricks_source.h"
#include "backflow/sources/mysql/mysql_source.h"
#include "backflow/sources/postgres/postgres_source.h"
#include "backflow/sources/redshift/redshift_data_api.h"
#include "backflow/sources/redshift/redshift_source.h"
#include "backflow/sources/snowflake/snowflake_source.h"
#include "backflow/sources/sqlite/sqlite_source.h"

namespace backflow {
namespace {

void Add(absl::Status status) {
  if (!status.ok()) {
    // A malformed built-in definition is a programming error caught by tests.
    fprintf(stderr, "backflow: invalid built-in connector: %s\n",
            std::string(status.message()).c_str());
    abort();
  }
}

Registry* BuildRegistry() {
  auto* registry = new Registry();
  Add(registry->AddSource(SqliteSourceDefinition()));
  Add(registry->AddSource(PostgresSourceDefinition()));
  Add(registry->AddSource(MysqlSourceDefinition()));
  Add(registry->AddSource(SnowflakeSourceDefinition()));
  Add(registry->AddSource(BigQuerySourceDefinition()));
  Add(registry->AddSource(RedshiftSourceDefinition()));
  Add(registry->AddSource(RedshiftDataApiSourceDefinition()));
  Add(registry->AddSource(DatabricksSourceDefinition()));
  Add(registry->AddSource(ClickHouseSourceDefinition()));
  Add(registry->AddDestination(WebhookDestinationDefinition()));
  Add(registry->AddDestination(SegmentDestinationDefinition()));
  Add(registry->AddDestination(HubSpotDestinationDefinition()));
  Add(registry->AddDestination(BrazeDestinationDefinition()));
  Add(registry->AddDestination(MixpanelDestinationDefinition()));
  Add(registry->AddDestination(GoogleSheetsDestinationDefinition()));
  Add(registry->AddDestination(MetaCapiDestinationDefinition()));
  Add(registry->AddDestination(IterableDestinationDefinition()));
  Add(registry->AddDestination(SalesforceDestinationDefinition()));
  Add(registry->AddDestination(FileDestinationDefinition()));
  Add(registry->AddDestination(PostgresDestinationDefinition()));
  return registry;
}

}  // namespace

const Registry& BuiltinRegistry() {
  static const Registry* registry = BuildRegistry();
  return *registry;
}

}  // namespace backflow
