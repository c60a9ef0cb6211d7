#!/usr/bin/env bash
# Builds the bundled sample warehouse (sample/warehouse.db) from
# sample/warehouse.sql if it is missing or older than the SQL.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
db="$root/sample/warehouse.db"
sql="$root/sample/warehouse.sql"
if [[ ! -f "$db" || "$sql" -nt "$db" ]]; then
  rm -f "$db.tmp"
  sqlite3 "$db.tmp" < "$sql"
  mv "$db.tmp" "$db"
fi
