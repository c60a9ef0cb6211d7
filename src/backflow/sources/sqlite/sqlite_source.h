// The SQLite source: a model's SQL run on a local SQLite database file,
// opened read-only. Column types come from declared types (INTEGER, REAL,
// NUMERIC/DECIMAL, BOOLEAN, DATE, DATETIME/TIMESTAMP, JSON, BLOB, TEXT) and,
// for expressions without one, from each value's storage class.
#pragma once

#include "backflow/catalog/definitions.h"

namespace backflow {

SourceDefinition SqliteSourceDefinition();

}  // namespace backflow
