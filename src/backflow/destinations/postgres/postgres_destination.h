// PostgreSQL destination: upserts model rows into a table and deletes the
// rows of records that left the model.
//
// One action, "upsert": each mapped field key is a column name; `key_column`
// (which must be mapped from the model's unique identifier) is the conflict
// target. StartSession checks the table: it must exist with every mapped
// column and a unique constraint/index on key_column alone, unless
// create_table is set and the table is missing, in which case the first
// batch creates it (column types from that batch's first record, key_column
// as PRIMARY KEY). Each SendBatch runs in one transaction: INSERT ... ON
// CONFLICT (key) DO UPDATE for added/updated records, DELETE for deleted
// ones, parameters sent as text and cast to the column types. When the
// batch fails because of a record's data (SQLSTATE classes 22/23: a value
// that does not fit its column, a NOT NULL violation), the batch is split in
// halves until the bad records are isolated: they get kInvalidArgument with
// PostgreSQL's message and every other record is committed. A lost
// connection, deadlock or serialization failure is retried (reconnecting,
// with backoff on the ConnectorEnv clock) a few times before the batch fails
// with kUnavailable. Configuration problems (missing table/columns/key
// constraint, key_column not the identifier) are kFailedPrecondition;
// credentials kUnauthenticated; privileges kPermissionDenied.
// Sessions are used from one thread at a time.
#pragma once

#include "backflow/catalog/definitions.h"
#include "backflow/destinations/destination.h"

namespace backflow {

// The definition of the "postgres" destination type.
DestinationDefinition PostgresDestinationDefinition();

}  // namespace backflow
