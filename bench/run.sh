#!/usr/bin/env bash
# bench/run.sh: the change-detection benchmark of issue 3, one command.
#
#   bench/run.sh [--rows N] [--reps K] [--quick | --smoke] [--rss-sizes "A B ..."]
#                [--backflow PATH] [--sink PATH] [--hasher PATH]
#                [--extract-bench PATH] [--checkpoint-bench PATH] [--keep]
#
# Builds a RelWithDebInfo `backflow` plus the helpers in bench/ and
# postgres_extract_bench (in $BACKFLOW_BENCH_BUILD_DIR, default
# build-bench-release) unless all five binaries are given, starts a throwaway PostgreSQL (scripts/pg-test-server.sh)
# and a loopback HTTP sink (bench_http_sink) in a temporary directory
# ($BACKFLOW_BENCH_TMPDIR, default /tmp), generates the customers table
# (version 1: N rows; version 2: 1% updated, 0.5% deleted, 0.5% new) and
# measures every figure of issue 3 back to back with its baseline, K times,
# reporting medians. Prints a markdown table (figure, measured, baseline,
# ratio, target, PASS/MISS) and the raw per-repetition values on stdout;
# progress goes to stderr.
#
#   --rows N      rows of version 1 (default 10,000,000)
#   --reps K      repetitions per figure (default 5)
#   --quick       1,000,000 rows, 3 reps, peak RSS at 1M and 3M rows
#   --smoke       20,000 rows, 1 rep, peak RSS at 20k and 60k (the ctest run)
#   --rss-sizes   row counts for the peak-RSS figure (default 1M 10M 30M;
#                 --quick 1M 3M; with --rows N: N and 3N)
#   --keep        keep the temporary directory (logs, workspaces)
#
# Exit code: 0 when every step ran and every correctness check held (missed
# targets do not fail the run); 1 when a step failed or a check did not hold
# (e.g. a sync did not report or deliver the expected change counts); 2 on a
# usage error. Every child process (PostgreSQL, the sink) is stopped on exit,
# also on failure or interruption.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${BACKFLOW_BENCH_PYTHON:-/usr/bin/python3}
build_dir=${BACKFLOW_BENCH_BUILD_DIR:-$root/build-bench-release}

rows=10000000
reps=5
rss_sizes=""
rows_given=0
mode=full
backflow=""
sink_bin=""
hasher=""
extract_bench=""
checkpoint_bench=""
keep=0

usage() {
  sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while (($#)); do
  case $1 in
    --rows) rows=$2; rows_given=1; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --quick) mode=quick; shift ;;
    --smoke) mode=smoke; shift ;;
    --rss-sizes) rss_sizes=$2; shift 2 ;;
    --backflow) backflow=$2; shift 2 ;;
    --sink) sink_bin=$2; shift 2 ;;
    --hasher) hasher=$2; shift 2 ;;
    --extract-bench) extract_bench=$2; shift 2 ;;
    --checkpoint-bench) checkpoint_bench=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) usage ;;
    *) echo "run.sh: unknown argument $1" >&2; usage ;;
  esac
done
case $mode in
  quick)
    ((rows_given)) || rows=1000000
    reps=3
    [[ -n $rss_sizes ]] || rss_sizes="1000000 3000000"
    ;;
  smoke)
    ((rows_given)) || rows=20000
    reps=1
    [[ -n $rss_sizes ]] || rss_sizes="20000 60000"
    ;;
esac
if [[ -z $rss_sizes ]]; then
  if ((rows_given)); then rss_sizes="$rows $((3 * rows))"; else rss_sizes="1000000 10000000 30000000"; fi
fi
[[ $rows =~ ^[0-9]+$ && $rows -ge 1000 ]] || { echo "run.sh: --rows must be >= 1000" >&2; exit 2; }
[[ $reps =~ ^[0-9]+$ && $reps -ge 1 ]] || { echo "run.sh: --reps must be >= 1" >&2; exit 2; }

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
die() {
  echo "run.sh: FAILED: $*" >&2
  exit 1
}

# ------------------------------------------------------------------ binaries
if [[ -z $backflow || -z $sink_bin || -z $hasher || -z $extract_bench || -z $checkpoint_bench ]]; then
  log "building backflow and the bench helpers (RelWithDebInfo) in $build_dir"
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build_dir" -j "${BACKFLOW_BENCH_JOBS:-2}" \
    --target backflow bench_http_sink bench_xxh3_lines postgres_extract_bench \
    bench_checkpoint_write >&2
  [[ -n $backflow ]] || backflow=$build_dir/src/backflow/cli/backflow
  [[ -n $sink_bin ]] || sink_bin=$build_dir/bench/bench_http_sink
  [[ -n $hasher ]] || hasher=$build_dir/bench/bench_xxh3_lines
  [[ -n $extract_bench ]] || extract_bench=$build_dir/src/backflow/sources/postgres/postgres_extract_bench
  [[ -n $checkpoint_bench ]] || checkpoint_bench=$build_dir/bench/bench_checkpoint_write
fi
for b in "$backflow" "$sink_bin" "$hasher" "$extract_bench" "$checkpoint_bench"; do
  [[ -x $b ]] || die "not an executable: $b"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (Debian package 'time'; scripts/install-deps.sh)"
"$python" -c 'import psycopg2' 2>/dev/null ||
  die "$python cannot import psycopg2 (Debian package python3-psycopg2; scripts/install-deps.sh)"
command -v psql >/dev/null || die "psql is missing (postgresql-client)"
command -v curl >/dev/null || die "curl is missing"

# ------------------------------------------------------------ temp + cleanup
work=$(mktemp -d "${BACKFLOW_BENCH_TMPDIR:-/tmp}/backflow-bench.XXXXXX")
sink_pid=""
pg_started=0
cleanup() {
  local rc=$?
  set +e
  if [[ -n $sink_pid ]]; then
    kill -TERM "$sink_pid" 2>/dev/null
    wait "$sink_pid" 2>/dev/null
  fi
  if ((pg_started)); then
    "$root/scripts/pg-test-server.sh" stop "$work/pg" >/dev/null 2>&1
  fi
  if ((keep)); then
    log "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ helpers
# calc EXPR: floating-point arithmetic with awk.
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
# median V...: the median of the numbers.
median() {
  printf '%s\n' "$@" | sort -g |
    awk '{ a[NR] = $1 } END { if (NR % 2) printf "%.6f", a[(NR + 1) / 2];
                              else printf "%.6f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# jfield FILE PATH: a field (dotted path) of the JSON object on FILE's last line.
jfield() {
  "$python" - "$1" "$2" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
v = json.loads(lines[-1])
for k in sys.argv[2].split("."):
    v = v[k]
print(v)
EOF
}
fmt_s() { awk "BEGIN { if ($1 < 1) printf \"%.1f ms\", 1000 * $1; else printf \"%.2f s\", $1 }"; }
fmt_rate() { awk "BEGIN { printf \"%.2f M rows/s\", $1 / 1e6 }"; }
fmt_x() { awk "BEGIN { printf \"%.2f×\", $1 }"; }
# verdict OK_EXPR: PASS when the awk condition holds, MISS otherwise.
verdict() { awk "BEGIN { exit !($1) }" && echo PASS || echo MISS; }

export PGOPTIONS="-c client_min_messages=warning"
psql_run() { PGPASSWORD=$pg_password psql -X -q -v ON_ERROR_STOP=1 "$pg_url" "$@"; }

query="SELECT id, email, name, score, updated_at, plan, country, is_active, lifetime_value FROM customers"

# copy_seconds: wall time of the COPY baseline (prints seconds).
copy_seconds() {
  local t0 t1
  t0=$EPOCHREALTIME
  PGPASSWORD=$pg_password psql -X -q -v ON_ERROR_STOP=1 "$pg_url" \
    -c "COPY ($query) TO STDOUT" >/dev/null
  t1=$EPOCHREALTIME
  calc "$t1 - $t0"
}

# point_view TABLE: the model's `customers` view reads TABLE.
point_view() { psql_run -c "CREATE OR REPLACE VIEW customers AS SELECT * FROM $1"; }

# gen_rows TABLE LO HI: inserts customers LO..HI (deterministic values).
gen_rows() {
  psql_run <<EOF
INSERT INTO $1
SELECT g,
       'user' || g || '@' || (ARRAY['gmail.com','example.com','corp.io','mail.net'])[1 + g % 4],
       (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Ken','Dennis',
              'Margaret','John','Frances','Tony','Leslie','Niklaus','Radia','Guido'])[1 + g % 16]
         || ' ' ||
       (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Thompson','Ritchie',
              'Hamilton','Backus','Allen','Hoare','Lamport','Wirth','Perlman','Rossum'])[1 + (g / 16) % 16],
       ((g * 7919) % 1000)::int,
       timestamptz '2024-01-01 00:00:00+00' + ((g * 37) % 525600) * interval '1 minute',
       (ARRAY['free','starter','pro','enterprise'])[1 + g % 4],
       (ARRAY['US','DE','FR','GB','JP','BR','IN','CA','ES','IT'])[1 + g % 10],
       g % 10 <> 0,
       ((g * 104729) % 10000000) / 100.0
FROM generate_series($2::bigint, $3::bigint) AS g;
EOF
}

create_table() {
  psql_run -c "DROP TABLE IF EXISTS $1 CASCADE" -c "CREATE TABLE $1 (
    id bigint PRIMARY KEY, email text NOT NULL, name text NOT NULL, score integer,
    updated_at timestamptz NOT NULL, plan text NOT NULL, country text NOT NULL,
    is_active boolean NOT NULL, lifetime_value numeric(12,2) NOT NULL)"
}

# write_workspace DIR [CONNECTIONS]: a workspace syncing the customers model to
# the sink, its source reading over CONNECTIONS connections (default 1).
write_workspace() {
  mkdir -p "$1"
  cat >"$1/backflow.yaml" <<EOF
state: sqlite:state/state.db
sources:
  - name: warehouse
    type: postgres
    url: $pg_url
    password: \${env:BENCH_PGPASSWORD}
    parallel_connections: ${2:-1}
models:
  - name: customers
    source: warehouse
    sql: $query
    primary_key: id
destinations:
  - name: sink
    type: webhook
    settings: { url: "http://127.0.0.1:$sink_port/ingest" }
mappings:
  - name: customers_to_sink
    model: customers
    destination: sink
    action: send_batch
    records: all
    batch_size: 1000
    fields: { id: id, email: email, name: name, score: score, updated_at: updated_at,
              plan: plan, country: country, is_active: is_active,
              lifetime_value: lifetime_value }
    enabled: true
EOF
}

# backflow_sync WORKSPACE_DIR OUT [ARGS...]: one `sync --json`; the summary
# JSON ends OUT, the wall time (s) is written to OUT.wall and the peak RSS
# (KiB, /usr/bin/time %M) to OUT.rss, user/system CPU seconds to OUT.cpu. Fails the benchmark
# on a non-zero exit.
backflow_sync() {
  local ws=$1 out=$2
  shift 2
  local t0 t1 rc=0 rss user sys
  t0=$EPOCHREALTIME
  BENCH_PGPASSWORD=$pg_password /usr/bin/time -f "%M %U %S" -o "$out.time" \
    "$backflow" -c "$ws/backflow.yaml" sync customers_to_sink --json "$@" \
    >"$out" 2>"$out.err" || rc=$?
  t1=$EPOCHREALTIME
  if ((rc != 0)); then
    cat "$out.err" "$out" >&2
    die "backflow sync $* exited with $rc"
  fi
  calc "$t1 - $t0" >"$out.wall"
  read -r rss user sys <"$out.time"
  echo "$rss" >"$out.rss"
  echo "$user/$sys" >"$out.cpu"
}

sink_records() { curl -fsS "http://127.0.0.1:$sink_port/stats" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["records"])'; }

# expect NAME ACTUAL WANTED: a correctness check.
expect() { [[ $2 == "$3" ]] || die "$1: got $2, expected $3"; }

# ------------------------------------------------------------------ setup
log "work dir $work; rows $rows; reps $reps; peak RSS at: $rss_sizes"
"$root/scripts/pg-test-server.sh" start "$work/pg" >&2
pg_started=1
pg_url=$(cat "$work/pg/url")
pg_password=$(cat "$work/pg/password")
pg_version=$(psql_run -At -c "SHOW server_version")

"$sink_bin" "$work/sink.port" >"$work/sink.out" 2>"$work/sink.err" &
sink_pid=$!
for _ in $(seq 1 100); do
  [[ -s $work/sink.port ]] && break
  kill -0 "$sink_pid" 2>/dev/null || die "the HTTP sink did not start: $(cat "$work/sink.err")"
  sleep 0.05
done
[[ -s $work/sink.port ]] || die "the HTTP sink did not report its port"
sink_port=$(cat "$work/sink.port")

updated_n=$(((rows + 99) / 100))  # ids ≡ 1 (mod 100)
deleted_n=$(((rows + 198) / 200)) # ids ≡ 2 (mod 200)
added_n=$((rows / 200))
changed_n=$((updated_n + deleted_n + added_n))
rows_v2=$((rows - deleted_n + added_n))

log "generating customers_v1 ($rows rows) and customers_v2"
t_gen=$EPOCHREALTIME
create_table customers_v1
gen_rows customers_v1 1 "$rows"
psql_run <<EOF
CREATE TABLE customers_v2 (LIKE customers_v1 INCLUDING ALL);
INSERT INTO customers_v2 SELECT * FROM customers_v1;
UPDATE customers_v2 SET score = score + 1, updated_at = updated_at + interval '1 day'
  WHERE id % 100 = 1;
DELETE FROM customers_v2 WHERE id % 200 = 2;
EOF
gen_rows customers_v2 $((rows + 1)) $((rows + added_n))
psql_run -c "VACUUM (FREEZE, ANALYZE) customers_v1" -c "VACUUM (FREEZE, ANALYZE) customers_v2"
# Write the generated tables out now: the kernel's writeback of gigabytes of dirty pages would
# otherwise run during the first measurements (at 10M rows it slowed the dry runs by half).
sync
log "generated in $(fmt_s "$(calc "$EPOCHREALTIME - $t_gen")")"
expect "customers_v2 rows" "$(psql_run -At -c "SELECT count(*) FROM customers_v2")" "$rows_v2"

write_workspace "$work/ws-dry"
write_workspace "$work/ws-inc"
write_workspace "$work/ws-inc2" 2
declare -A raw=()

# reset_state WS [FROM]: empties WS's state folder (or restores FROM into it)
# but for its spool folder, whose recycled scratch files the next run of a
# workspace finds in production too (engine/spool.h, spool_keep_mib).
reset_state() {
  mkdir -p "$1/state"
  find "$1/state" -mindepth 1 -maxdepth 1 ! -name spool -exec rm -rf {} +
  if [[ -n ${2:-} ]]; then cp -a "$2/." "$1/state/"; fi
}

# ------------------------------------------- 1. extraction + fingerprint (v1)
point_view customers_v1
copy_seconds >/dev/null # warm the page cache
copy_v1=() bf_ed=() bf_ext1=()
for r in $(seq 1 "$reps"); do
  log "extraction + fingerprint: rep $r/$reps"
  copy_v1+=("$(copy_seconds)")
  reset_state "$work/ws-dry"
  backflow_sync "$work/ws-dry" "$work/dry.$r" --dry-run
  expect "dry run extracted" "$(jfield "$work/dry.$r" extracted)" "$rows"
  expect "dry run added" "$(jfield "$work/dry.$r" added)" "$rows"
  e=$(jfield "$work/dry.$r" timings.extract_s)
  d=$(jfield "$work/dry.$r" timings.diff_s)
  bf_ext1+=("$e")
  bf_ed+=("$(calc "$e + $d")")
done
raw[copy_v1]="${copy_v1[*]}"
raw[bf_extract_plus_diff]="${bf_ed[*]}"
raw[bf_dry_run_extract]="${bf_ext1[*]}"

# ------------------------------------------- 2. extraction over 2 connections (v1)
# postgres_extract_bench reads the model through the PostgreSQL source (rows
# decoded, nothing else) with one connection and with parallel_connections: 2
# (key ranges of id in one snapshot), each repetition right after its own
# `psql COPY` baseline (the same command as copy_seconds).
log "extraction over 1 and 2 connections ($reps repetitions, each after a psql COPY)"
PGPASSWORD=$pg_password "$extract_bench" "$pg_url" "$query" copy copy:2 --key id \
  --runs "$reps" --psql --json >"$work/extract.json" 2>"$work/extract.err" ||
  { cat "$work/extract.err" >&2; die "postgres_extract_bench failed"; }
expect "rows read over one connection" "$(jfield "$work/extract.json" modes.copy.rows)" "$rows"
expect "rows read over two connections" "$(jfield "$work/extract.json" modes.copy:2.rows)" "$rows"
x_psql=$(jfield "$work/extract.json" psql_s | tr -d '[],')
x_one=$(jfield "$work/extract.json" modes.copy.runs_s | tr -d '[],')
x_two=$(jfield "$work/extract.json" modes.copy:2.runs_s | tr -d '[],')
raw[extract_psql_copy]="$x_psql"
raw[extract_source_1_connection]="$x_one"
raw[extract_source_2_connections]="$x_two"

# ------------------------------------------- first (full) syncs of version 1
log "full sync of version 1 to the sink (backflow; also the peak RSS at $rows rows)"
rm -rf "$work/ws-inc/state"
before=$(sink_records)
backflow_sync "$work/ws-inc" "$work/full"
expect "full sync succeeded" "$(jfield "$work/full" succeeded)" "$rows"
expect "full sync records at the sink" "$(($(sink_records) - before))" "$rows"
full_wall=$(cat "$work/full.wall")
declare -A rss_kib=()
rss_kib[$rows]=$(cat "$work/full.rss")
cp -a "$work/ws-inc/state" "$work/state-v1"
rm -rf "$work/state-v1/spool" "$work/state-v1/locks"

log "full sync of version 1 to the sink (Python baseline)"
py_sync() {
  PGPASSWORD=$pg_password "$python" "$root/bench/baseline_sync.py" --dsn "$pg_url" \
    --query "$query" --key-column id --state "$work/py.state" \
    --url "http://127.0.0.1:$sink_port/python" --batch-size 1000 >"$1" 2>"$1.err" ||
    { cat "$1.err" >&2; die "baseline_sync.py failed"; }
}
rm -f "$work/py.state"
py_sync "$work/py.full"
expect "python full sync sent" "$(jfield "$work/py.full" sent)" "$rows"
cp "$work/py.state" "$work/py.state.v1"

log "PostgreSQL snapshot of version 1 (id, md5 of the row)"
psql_run -c "CREATE TABLE snap_v1 AS SELECT id, md5(t::text) AS h FROM customers t" \
  -c "VACUUM (FREEZE, ANALYZE) snap_v1"
# (VACUUM now, or autovacuum would vacuum the new table during the first measurements: at 10M
# rows it slowed the first incremental syncs by ~0.5 s.)

# ------------------------------------------- version 2
point_view customers_v2
PGPASSWORD=$pg_password psql -X -q -v ON_ERROR_STOP=1 "$pg_url" \
  -c "COPY ($query) TO STDOUT" >"$work/v2.copy"
log "hashing the $rows_v2 COPY lines of version 2 with XXH3 ($reps passes)"
"$hasher" "$work/v2.copy" "$reps" >"$work/xxh3.json"
expect "hashed lines" "$(jfield "$work/xxh3.json" rows)" "$rows_v2"
xxh3_128=$(jfield "$work/xxh3.json" xxh3_128_s)
xxh3_64=$(jfield "$work/xxh3.json" xxh3_64_s)
rm -f "$work/v2.copy"

pg_diff_sql="SET work_mem = '256MB';
SELECT count(*) FILTER (WHERE s.id IS NULL) AS added,
       count(*) FILTER (WHERE c.id IS NULL) AS deleted,
       count(*) FILTER (WHERE s.h <> c.h) AS updated
FROM (SELECT id, md5(t::text) AS h FROM customers t) AS c
FULL JOIN snap_v1 AS s ON s.id = c.id
WHERE s.id IS NULL OR c.id IS NULL OR s.h <> c.h;"

copy_v2=() bf_wall=() bf_cpu=() bf_diff=() bf_ext2=() bf_deliver=() pg_diff=() py_wall=() bf_wall2=()
for r in $(seq 1 "$reps"); do
  log "incremental sync: rep $r/$reps"
  copy_v2+=("$(copy_seconds)")

  reset_state "$work/ws-inc" "$work/state-v1"
  sync # the restored state's writeback is not part of the sync
  before=$(sink_records)
  backflow_sync "$work/ws-inc" "$work/inc.$r"
  expect "backflow added" "$(jfield "$work/inc.$r" added)" "$added_n"
  expect "backflow updated" "$(jfield "$work/inc.$r" updated)" "$updated_n"
  expect "backflow deleted" "$(jfield "$work/inc.$r" deleted)" "$deleted_n"
  expect "backflow succeeded" "$(jfield "$work/inc.$r" succeeded)" "$changed_n"
  expect "backflow records at the sink" "$(($(sink_records) - before))" "$changed_n"
  bf_wall+=("$(cat "$work/inc.$r.wall")")
  bf_cpu+=("$(cat "$work/inc.$r.cpu")")
  bf_diff+=("$(jfield "$work/inc.$r" timings.diff_s)")
  bf_ext2+=("$(jfield "$work/inc.$r" timings.extract_s)")
  bf_deliver+=("$(jfield "$work/inc.$r" timings.deliver_s)")

  # The same sync with the source's parallel_connections: 2 (two key ranges).
  reset_state "$work/ws-inc2" "$work/state-v1"
  sync
  before=$(sink_records)
  backflow_sync "$work/ws-inc2" "$work/inc2.$r"
  expect "backflow (2 connections) added" "$(jfield "$work/inc2.$r" added)" "$added_n"
  expect "backflow (2 connections) updated" "$(jfield "$work/inc2.$r" updated)" "$updated_n"
  expect "backflow (2 connections) deleted" "$(jfield "$work/inc2.$r" deleted)" "$deleted_n"
  expect "backflow (2 connections) records at the sink" "$(($(sink_records) - before))" \
    "$changed_n"
  bf_wall2+=("$(cat "$work/inc2.$r.wall")")

  t0=$EPOCHREALTIME
  counts=$(psql_run -At -F ' ' -c "$pg_diff_sql")
  pg_diff+=("$(calc "$EPOCHREALTIME - $t0")")
  expect "PostgreSQL diff (added deleted updated)" "$counts" "$added_n $deleted_n $updated_n"

  cp "$work/py.state.v1" "$work/py.state"
  before=$(sink_records)
  t0=$EPOCHREALTIME
  py_sync "$work/py.$r"
  py_wall+=("$(calc "$EPOCHREALTIME - $t0")")
  expect "python added" "$(jfield "$work/py.$r" added)" "$added_n"
  expect "python updated" "$(jfield "$work/py.$r" updated)" "$updated_n"
  expect "python deleted" "$(jfield "$work/py.$r" deleted)" "$deleted_n"
  expect "python records at the sink" "$(($(sink_records) - before))" "$changed_n"
done
raw[copy_v2]="${copy_v2[*]}"
raw[bf_incremental_wall]="${bf_wall[*]}"
raw[bf_incremental_cpu_user_sys]="${bf_cpu[*]}"
raw[bf_incremental_wall_2_connections]="${bf_wall2[*]}"
raw[bf_incremental_extract]="${bf_ext2[*]}"
raw[bf_incremental_diff]="${bf_diff[*]}"
raw[bf_incremental_deliver]="${bf_deliver[*]}"
raw[pg_full_join_diff]="${pg_diff[*]}"
raw[python_incremental_wall]="${py_wall[*]}"

# ------------------------------------------- checkpoint write vs dd
# The checkpoint base file the last incremental sync left (N rows), written
# again as a fold writes it, against dd of the same bytes.
ckpt_file=$(find "$work/ws-inc/state" -name 'base-*.ckpt' | head -1)
[[ -n $ckpt_file ]] || die "no checkpoint file under $work/ws-inc/state"
log "checkpoint write + fsync + rename vs dd conv=fdatasync ($reps repetitions)"
"$checkpoint_bench" "$ckpt_file" "$reps" >"$work/ckpt.json" 2>"$work/ckpt.err" ||
  { cat "$work/ckpt.err" >&2; die "bench_checkpoint_write failed"; }
# That base is the full sync's (version 1): an incremental sync that changes 2% of the records
# leaves them in the journal, folded once it reaches a quarter of the base.
expect "checkpoint records" "$(jfield "$work/ckpt.json" records)" "$rows"
raw[checkpoint_write]=$(jfield "$work/ckpt.json" write_runs_s | tr -d '[],')
raw[checkpoint_dd]=$(jfield "$work/ckpt.json" dd_runs_s | tr -d '[],')

# ------------------------------------------- peak RSS of full syncs
for s in $rss_sizes; do
  [[ -z ${rss_kib[$s]:-} ]] || continue
  log "peak RSS: full sync of $s rows"
  create_table customers_rss
  gen_rows customers_rss 1 "$s"
  psql_run -c "VACUUM (FREEZE, ANALYZE) customers_rss"
  point_view customers_rss
  rm -rf "$work/ws-inc/state"
  backflow_sync "$work/ws-inc" "$work/rss.$s"
  expect "full sync of $s rows succeeded" "$(jfield "$work/rss.$s" succeeded)" "$s"
  rss_kib[$s]=$(cat "$work/rss.$s.rss")
  raw[full_sync_wall_$s]=$(cat "$work/rss.$s.wall")
  psql_run -c "DROP TABLE customers_rss CASCADE"
done
raw[full_sync_wall_$rows]=$full_wall

# ------------------------------------------- report
m_copy1=$(median "${copy_v1[@]}")
# shellcheck disable=SC2086 # word splitting of the space-separated lists is intended
m_xpsql=$(median $x_psql)
# shellcheck disable=SC2086
m_xone=$(median $x_one)
# shellcheck disable=SC2086
m_xtwo=$(median $x_two)
m_ed=$(median "${bf_ed[@]}")
m_ext1=$(median "${bf_ext1[@]}")
m_copy2=$(median "${copy_v2[@]}")
m_wall=$(median "${bf_wall[@]}")
m_wall2=$(median "${bf_wall2[@]}")
m_diff=$(median "${bf_diff[@]}")
m_ext2=$(median "${bf_ext2[@]}")
m_pg=$(median "${pg_diff[@]}")
m_py=$(median "${py_wall[@]}")

rate_bf=$(calc "$rows / $m_ed")
rate_copy=$(calc "$rows / $m_copy1")
r_extract=$(calc "$rate_bf / $rate_copy")
rate_xpsql=$(calc "$rows / $m_xpsql")
rate_xone=$(calc "$rows / $m_xone")
rate_xtwo=$(calc "$rows / $m_xtwo")
r_xtwo=$(calc "$rate_xtwo / $rate_xpsql")
r_xone=$(calc "$rate_xone / $rate_xpsql")
r_diff_hash=$(calc "$m_diff / $xxh3_128")
r_diff_share=$(calc "$m_diff / $m_ext2")
r_sync_copy=$(calc "$m_wall / $m_copy2")
r_pg=$(calc "$m_pg / $m_wall")
r_py=$(calc "$m_py / $m_wall")
r_sync2_copy=$(calc "$m_wall2 / $m_copy2")
r_pg2=$(calc "$m_pg / $m_wall2")
r_py2=$(calc "$m_py / $m_wall2")

cpu_model=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
mem_gib=$(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)

echo "## Backflow benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "- machine: $(nproc) cores (${cpu_model:-unknown CPU}), ${mem_gib} GiB RAM, $(uname -sr)"
echo "- PostgreSQL $pg_version (scripts/pg-test-server.sh: fsync off, shared_buffers 32MB), loopback TCP"
echo "- backflow: $backflow"
echo "- rows: $rows (version 2: $updated_n updated, $deleted_n deleted, $added_n new = $rows_v2 rows);" \
  "median of $reps"
echo
echo "| figure | measured | baseline | ratio | target | result |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| extraction + fingerprint, one connection (extract_s + diff_s of a dry run, fresh state) |" \
  "$(fmt_rate "$rate_bf") ($(fmt_s "$m_ed"); extract_s alone $(fmt_s "$m_ext1")) | COPY to /dev/null: $(fmt_rate "$rate_copy") ($(fmt_s "$m_copy1")) |" \
  "$(fmt_x "$r_extract") | ≥ 0.85× | $(verdict "$r_extract >= 0.85") |"
echo "| extraction, 2 connections over key ranges (postgres_extract_bench copy:2; 1 connection: $(fmt_rate "$rate_xone"), $(fmt_x "$r_xone")) |" \
  "$(fmt_rate "$rate_xtwo") ($(fmt_s "$m_xtwo")) | COPY to /dev/null, same run: $(fmt_rate "$rate_xpsql") ($(fmt_s "$m_xpsql")) |" \
  "$(fmt_x "$r_xtwo") | ≥ 1.25× | $(verdict "$r_xtwo >= 1.25") |"
echo "| diff of $rows_v2 keys, excluding extraction (diff_s of the incremental sync) |" \
  "$(fmt_s "$m_diff") | XXH3-128 of the same COPY lines: $(fmt_s "$xxh3_128") (XXH3-64: $(fmt_s "$xxh3_64")) |" \
  "$(fmt_x "$r_diff_hash") | ≤ 10× | $(verdict "$r_diff_hash <= 10") |"
echo "| diff as a share of extraction time (same run) | $(fmt_s "$m_diff") | extract_s: $(fmt_s "$m_ext2") |" \
  "$(awk "BEGIN { printf \"%.1f%%\", 100 * $r_diff_share }") | ≤ 10% | $(verdict "$r_diff_share <= 0.10") |"
echo "| full incremental sync, 1% changed, to a local HTTP sink (wall time) |" \
  "$(fmt_s "$m_wall") | single COPY: $(fmt_s "$m_copy2") | $(fmt_x "$r_sync_copy") | ≤ 1.25× |" \
  "$(verdict "$r_sync_copy <= 1.25") |"
echo "| same, vs PostgreSQL computing the diff (FULL JOIN on id over md5 row hashes) |" \
  "$(fmt_s "$m_wall") | $(fmt_s "$m_pg") | backflow $(fmt_x "$r_pg") faster | ≥ 4× faster |" \
  "$(verdict "$r_pg >= 4") |"
echo "| same, vs bench/baseline_sync.py (psycopg2 + dict of hashes) |" \
  "$(fmt_s "$m_wall") | $(fmt_s "$m_py") | backflow $(fmt_x "$r_py") faster | ≥ 5× faster |" \
  "$(verdict "$r_py >= 5") |"
echo "| the same incremental sync with the source's \`parallel_connections: 2\` (wall time) |" \
  "$(fmt_s "$m_wall2") | single COPY: $(fmt_s "$m_copy2"); PostgreSQL diff: $(fmt_s "$m_pg");" \
  "Python: $(fmt_s "$m_py") | $(fmt_x "$r_sync2_copy") COPY; backflow $(fmt_x "$r_pg2") / $(fmt_x "$r_py2") faster |" \
  "≤ 1.25×; ≥ 4×; ≥ 5× | $(verdict "$r_sync2_copy <= 1.25") / $(verdict "$r_pg2 >= 4") / $(verdict "$r_py2 >= 5") |"
rss_min="" rss_max=""
for s in $rss_sizes; do
  k=${rss_kib[$s]}
  if [[ -z $rss_min ]] || ((k < rss_min)); then rss_min=$k; fi
  if [[ -z $rss_max ]] || ((k > rss_max)); then rss_max=$k; fi
  mib=$(calc "$k / 1024")
  echo "| peak RSS of a full sync, $s rows (/usr/bin/time %M) |" \
    "$(awk "BEGIN { printf \"%.1f MiB\", $mib }") | — | — | ≤ 256 MiB | $(verdict "$mib <= 256") |"
done
r_flat=$(calc "$rss_max / $rss_min")
echo "| peak RSS growth, largest / smallest size | $(fmt_x "$r_flat") | — | — |" \
  "flat (≤ 1.25×, our reading) | $(verdict "$r_flat <= 1.25") |"
m_ckpt=$(jfield "$work/ckpt.json" write_s)
m_dd=$(jfield "$work/ckpt.json" dd_s)
r_ckpt=$(calc "$m_ckpt / $m_dd")
echo "| checkpoint write + fsync + rename ($(jfield "$work/ckpt.json" records) entries," \
  "$(awk "BEGIN { printf \"%.1f MiB\", $(jfield "$work/ckpt.json" bytes) / 1048576 }")) |" \
  "$(fmt_s "$m_ckpt") | \`dd bs=1M conv=fdatasync\` of the same bytes: $(fmt_s "$m_dd") |" \
  "$(fmt_x "$r_ckpt") | ≤ 1.5× | $(verdict "$r_ckpt <= 1.5") |"
echo
echo "Raw values (seconds unless noted; one per repetition, in order):"
echo
for k in $(printf '%s\n' "${!raw[@]}" | sort); do
  echo "- $k: ${raw[$k]}"
done
echo "- xxh3 hashing of version 2 (median of $reps passes): 64-bit $xxh3_64, 128-bit $xxh3_128"
echo "- python first full sync: $(jfield "$work/py.full" duration_s); backflow first full sync: $full_wall"
for s in $rss_sizes; do
  echo "- peak RSS full sync $s rows: ${rss_kib[$s]} KiB"
done
log "done"
