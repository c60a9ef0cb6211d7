#!/usr/bin/env bash
# bench/api_bench.sh: the REST API benchmark of issue 6, one command.
#
#   bench/api_bench.sh [--reps K] [--duration S] [--threads T] [--connections C]
#                      [--delay S] [--batch N] [--backflow PATH] [--smoke]
#                      [--no-install] [--keep]
#
# Installs wrk and nginx-light if missing (scripts/install-bench-deps.sh),
# builds a RelWithDebInfo `backflow` (in $BACKFLOW_BENCH_BUILD_DIR, default
# build-bench-release, as bench/run.sh does) unless --backflow is given, and
# in a temporary directory ($BACKFLOW_BENCH_TMPDIR, default /tmp) creates a
# workspace: a SQLite warehouse with enough rows, a webhook destination
# pointing at bench/slow_receiver.py (sleeps --delay per batch, so the run
# stays in progress), SQLite state and an API token. Starts `backflow serve
# --listen 127.0.0.1:0`, triggers a run of the model (POST
# /api/v1/models/items/runs), and once the run is `running` measures
# GET /api/v1/runs/{id} with wrk, K rounds, each followed by the same wrk
# command against nginx (started as the current user from a temporary config)
# serving a static file holding the API's response body byte for byte. The
# run's status is checked through the API before and after every backflow
# round: the benchmark fails if it is not `running` (raise --delay).
# Prints a markdown table (median req/s and p99 latency of both, ratio,
# target >= 5,000 req/s, PASS/MISS) and the raw per-round values on stdout;
# progress on stderr.
#
#   --reps K         measured rounds (default 5); medians are reported
#   --duration S     seconds per wrk round (default 10)
#   --threads T      wrk threads (default 2)
#   --connections C  wrk connections (default 32)
#   --delay S        the receiver's sleep per webhook batch (default 0.1)
#   --batch N        the mapping's batch_size (default 10)
#   --smoke          1 round of 2 s (the ctest run; figures meaningless)
#   --no-install     do not install packages; exit 77 if wrk or nginx is missing
#   --keep           keep the temporary directory (logs, workspace, configs)
#
# $BACKFLOW_BENCH_WRK_SCRIPT: a wrk Lua script for every round, e.g.
# bench/wrk_non2xx.lua to see the answers of a round that failed on non-2xx
# (it slows wrk down: not for measuring).
#
# Exit code: 0 when every step ran and every check held (all answers 2xx, the
# run in progress throughout), whatever the target says; 1 when a step or a
# check failed; 2 on a usage error; 77 with --no-install when wrk or nginx
# is missing. backflow, nginx and the receiver are stopped on every exit path.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${BACKFLOW_BENCH_PYTHON:-/usr/bin/python3}
build_dir=${BACKFLOW_BENCH_BUILD_DIR:-$root/build-bench-release}
nginx_bin=${BACKFLOW_BENCH_NGINX:-/usr/sbin/nginx}

reps=5
duration=10
threads=2
connections=32
delay=0.1
batch=10
backflow=""
install=1
keep=0
warmup=2
target=5000

usage() {
  sed -n '2,43p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while (($#)); do
  case $1 in
    --reps) reps=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --delay) delay=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --backflow) backflow=$2; shift 2 ;;
    --smoke) reps=1; duration=2; warmup=1; shift ;;
    --no-install) install=0; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) usage ;;
    *) echo "api_bench.sh: unknown argument $1" >&2; usage ;;
  esac
done
for v in reps duration threads connections batch; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -ge 1 ]] || { echo "api_bench.sh: --$v must be a positive integer" >&2; exit 2; }
done
if ! [[ $delay =~ ^[0-9]*\.?[0-9]+$ ]] || ! awk "BEGIN { exit !($delay > 0) }"; then
  echo "api_bench.sh: --delay must be a positive number of seconds" >&2
  exit 2
fi

log() { echo "[api-bench $(date +%H:%M:%S)] $*" >&2; }
die() {
  echo "api_bench.sh: FAILED: $*" >&2
  exit 1
}

# ------------------------------------------------------------------ packages
if ((install)); then
  "$root/scripts/install-bench-deps.sh" || die "could not install wrk / nginx-light (scripts/install-bench-deps.sh)"
fi
for tool in wrk curl "$nginx_bin" "$python"; do
  if ! command -v "$tool" >/dev/null; then
    ((install)) || { echo "api_bench.sh: $tool is missing; skipped (run scripts/install-bench-deps.sh)" >&2; exit 77; }
    die "$tool is missing (scripts/install-bench-deps.sh installs wrk, nginx-light, python3, curl)"
  fi
done

# ------------------------------------------------------------------ binary
build_type=given
if [[ -z $backflow ]]; then
  log "building backflow (RelWithDebInfo) in $build_dir"
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build_dir" -j "${BACKFLOW_BENCH_JOBS:-2}" --target backflow >&2
  backflow=$build_dir/src/backflow/cli/backflow
fi
[[ -x $backflow ]] || die "not an executable: $backflow"
if [[ -f $(dirname "$backflow")/../../../CMakeCache.txt ]]; then
  build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$(dirname "$backflow")/../../../CMakeCache.txt")
  grep -q '^BACKFLOW_SANITIZE:BOOL=ON' "$(dirname "$backflow")/../../../CMakeCache.txt" &&
    build_type="$build_type + sanitizers"
fi

# ------------------------------------------------------------ temp + cleanup
work=$(mktemp -d "${BACKFLOW_BENCH_TMPDIR:-/tmp}/backflow-api-bench.XXXXXX")
serve_pid="" receiver_pid="" nginx_pid=""
# stop PID [GRACE_SECONDS]: SIGTERM, then SIGKILL after the grace period.
stop() {
  local pid=$1 grace=${2:-5}
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 $((grace * 20))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
cleanup() {
  local rc=$?
  set +e
  stop "$nginx_pid"
  stop "$serve_pid" 20 # finishes the batch in flight, re-queues the run
  stop "$receiver_pid"
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
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
median() {
  printf '%s\n' "$@" | sort -g |
    awk '{ a[NR] = $1 } END { if (NR % 2) printf "%.6f", a[(NR + 1) / 2];
                              else printf "%.6f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
verdict() { awk "BEGIN { exit !($1) }" && echo PASS || echo MISS; }
# jget FIELD: a top-level field of the JSON object on stdin.
jget() { "$python" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
# wait_for FILE PID WHAT: until FILE is non-empty (10 s), failing if PID exits.
wait_for() {
  for _ in $(seq 1 200); do
    [[ -s $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || die "$3 did not start"
    sleep 0.05
  done
  die "$3 did not start within 10 s"
}
free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wrk_round URL OUT [SECONDS]: one wrk round (default --duration), its output
# in OUT, parsed into OUT.rps and OUT.p99_ms; fails on any non-2xx answer or
# socket error.
wrk_round() {
  local url=$1 out=$2 seconds=${3:-$duration}
  wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency ${BACKFLOW_BENCH_WRK_SCRIPT:+-s "$BACKFLOW_BENCH_WRK_SCRIPT"} \
    -H "Authorization: Bearer $token" "$url" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed against $url"; }
  if grep -q 'Non-2xx' "$out"; then
    cat "$out" >&2
    die "answers other than 2xx from $url (see above; BACKFLOW_BENCH_WRK_SCRIPT=bench/wrk_non2xx.lua shows them)"
  fi
  if grep -q 'Socket errors' "$out"; then
    cat "$out" >&2
    die "socket errors against $url (see above)"
  fi
  awk '/^Requests\/sec:/ { print $2 }' "$out" >"$out.rps"
  awk '$1 == "99%" { v = $2; u = v; sub(/[a-z]+$/, "", v); sub(/^[0-9.]+/, "", u);
                     f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1;
                     printf "%.3f\n", v * f }' "$out" >"$out.p99_ms"
  [[ -s $out.rps && -s $out.p99_ms ]] || { cat "$out" >&2; die "could not read wrk's output"; }
}

# ------------------------------------------------------------------ workspace
# Rows: the run must outlast every round, warm-ups and start-up three times
# over at one batch per --delay seconds.
needed_s=$((reps * 2 * (duration + 2) + 2 * warmup + 30))
requests=$(awk "BEGIN { printf \"%d\", 3 * $needed_s / $delay + 1 }")
rows=$((requests * batch))
log "work dir $work; $rows rows, batches of $batch, receiver delay ${delay}s (run ≥ $(awk "BEGIN { printf \"%d\", $requests * $delay }") s)"
mkdir -p "$work/ws"
"$python" - "$work/ws/warehouse.db" "$rows" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
           "email TEXT NOT NULL, score INTEGER NOT NULL, updated_at TEXT NOT NULL)")
db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)",
               ((i, f"item {i}", f"user{i}@example.com", (i * 7919) % 1000,
                 f"2026-01-{1 + i % 28:02d}T00:00:00Z") for i in range(1, int(sys.argv[2]) + 1)))
db.commit()
EOF

"$python" "$root/bench/slow_receiver.py" "$work/receiver.port" "$delay" \
  >"$work/receiver.log" 2>&1 &
receiver_pid=$!
wait_for "$work/receiver.port" "$receiver_pid" "the slow receiver"
receiver_port=$(cat "$work/receiver.port")
receiver_stats() { curl -fsS "http://127.0.0.1:$receiver_port/stats" | jget requests; }

cat >"$work/ws/backflow.yaml" <<EOF
state: sqlite:state/state.db
sources:
  - name: warehouse
    type: sqlite
    path: warehouse.db
models:
  - name: items
    source: warehouse
    sql: SELECT id, name, email, score, updated_at FROM items
    primary_key: id
destinations:
  - name: slow
    type: webhook
    settings: { url: "http://127.0.0.1:$receiver_port/ingest" }
mappings:
  - name: items_to_slow
    model: items
    destination: slow
    action: send_batch
    records: all
    batch_size: $batch
    fields: { id: id, name: name, email: email, score: score, updated_at: updated_at }
    enabled: true
EOF
cfg=$work/ws/backflow.yaml
"$backflow" -c "$cfg" validate >&2 || die "the generated workspace does not validate"
token=$("$backflow" -c "$cfg" token create bench 2>"$work/token.err" | tail -n 1)
[[ $token == bf_* ]] || { cat "$work/token.err" >&2; die "backflow token create printed no token"; }

# ------------------------------------------------------------------ serve
"$backflow" -c "$cfg" serve --listen 127.0.0.1:0 >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 200); do
  grep -q '"api_listening"' "$work/serve.log" && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; die "backflow serve exited"; }
  sleep 0.05
done
api_port=$(grep -m1 '"api_listening"' "$work/serve.log" | "$python" -c 'import json,sys; print(json.loads(sys.stdin.readline())["port"])') ||
  die "backflow serve did not report its port"
api=http://127.0.0.1:$api_port/api/v1
auth=(-H "Authorization: Bearer $token")

trigger=$(curl -fsS -X POST "${auth[@]}" "$api/models/items/runs") || die "POST $api/models/items/runs failed"
run_id=$(echo "$trigger" | jget request_id)
run_url=$api/runs/$run_id
run_status() { curl -fsS "${auth[@]}" "$run_url" | jget status; }
log "backflow serve on port $api_port; run $run_id triggered"
# Running, and past extraction (the receiver has seen a batch).
for _ in $(seq 1 600); do
  st=$(run_status)
  [[ $st == running && $(receiver_stats) -gt 0 ]] && break
  [[ $st == queued || $st == running ]] || die "run $run_id is $st before the measurement"
  sleep 0.05
done
[[ $(run_status) == running ]] || die "run $run_id did not start delivering within 30 s"
curl -fsS "${auth[@]}" -o "$work/run.json" "$run_url"
body_bytes=$(stat -c %s "$work/run.json")
log "GET /api/v1/runs/$run_id answers $body_bytes bytes (status running)"

# ------------------------------------------------------------------ nginx
mkdir -p "$work/nginx/html" "$work/nginx/tmp"
cp "$work/run.json" "$work/nginx/html/run.json"
nginx_port=$(free_port)
user_line=""
if [[ $(id -u) -eq 0 ]]; then user_line="user root root;"; fi # else workers would be nobody
cat >"$work/nginx/nginx.conf" <<EOF
$user_line
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/nginx/html;
    default_type application/json;
    location / { try_files /run.json =404; }
  }
}
EOF
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" \
  >"$work/nginx/stdout.log" 2>&1 &
nginx_pid=$!
nginx_url=http://127.0.0.1:$nginx_port/api/v1/runs/$run_id
for _ in $(seq 1 200); do
  curl -fsS -o "$work/nginx.json" "$nginx_url" 2>/dev/null && break
  kill -0 "$nginx_pid" 2>/dev/null || { cat "$work/nginx/stdout.log" "$work/nginx/error.log" >&2; die "nginx exited"; }
  sleep 0.05
done
cmp -s "$work/nginx.json" "$work/run.json" || die "nginx does not serve the API's body"
nginx_version=$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')

# ------------------------------------------------------------------ rounds
log "warm-up (${warmup}s each)"
wrk_round "$run_url" "$work/warm.bf" "$warmup"
wrk_round "$nginx_url" "$work/warm.nginx" "$warmup"
bf_rps=() bf_p99=() ng_rps=() ng_p99=() delivered=()
for r in $(seq 1 "$reps"); do
  st=$(run_status)
  [[ $st == running ]] || die "run $run_id is $st before round $r; raise --delay"
  before=$(receiver_stats)
  log "round $r/$reps: backflow"
  wrk_round "$run_url" "$work/bf.$r"
  st=$(run_status)
  [[ $st == running ]] || die "run $run_id is $st after round $r; raise --delay"
  delivered+=("$(($(receiver_stats) - before))")
  log "round $r/$reps: nginx"
  wrk_round "$nginx_url" "$work/nginx.$r"
  bf_rps+=("$(cat "$work/bf.$r.rps")") bf_p99+=("$(cat "$work/bf.$r.p99_ms")")
  ng_rps+=("$(cat "$work/nginx.$r.rps")") ng_p99+=("$(cat "$work/nginx.$r.p99_ms")")
done
final_status=$(run_status)
[[ $final_status == running ]] || die "run $run_id is $final_status after the rounds"

# ------------------------------------------------------------------ report
m_bf=$(median "${bf_rps[@]}")
m_ng=$(median "${ng_rps[@]}")
m_bf99=$(median "${bf_p99[@]}")
m_ng99=$(median "${ng_p99[@]}")
ratio=$(calc "$m_bf / $m_ng")
cpu_model=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$root" status --porcelain -- src 2>/dev/null | head -1)
fmt_rps() { printf '%.0f' "$1" | sed ':a; s/\B[0-9]\{3\}\>/,&/; ta; s/$/ req\/s/'; }

echo "## Backflow API benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "- machine: $(nproc) cores (${cpu_model:-unknown CPU}), $(uname -sr); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- backflow: $backflow ($build_type; commit $commit${dirty:+ plus uncommitted changes in src/})"
echo "- baseline: $nginx_version, worker_processes auto, access_log off, keep-alive, a static file of $body_bytes bytes (the API's body, byte for byte)"
echo "- load: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2) -t$threads -c$connections -d${duration}s --latency, same machine, loopback; $reps rounds, backflow then nginx in each; medians"
echo "- run in progress: run $run_id of $rows rows in batches of $batch to a receiver sleeping ${delay}s per batch; \`running\` before and after every round; batches delivered during the backflow rounds: ${delivered[*]}"
echo
echo "| figure | backflow | nginx (static file, same size) | backflow / nginx | target | result |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| GET /api/v1/runs/{id}, run in progress: requests/s | $(fmt_rps "$m_bf") | $(fmt_rps "$m_ng") |" \
  "$(awk "BEGIN { printf \"%.2f×\", $ratio }") | ≥ 5,000 req/s | $(verdict "$m_bf >= $target") |"
echo "| p99 latency | $(awk "BEGIN { printf \"%.2f ms\", $m_bf99 }") | $(awk "BEGIN { printf \"%.2f ms\", $m_ng99 }") |" \
  "$(awk "BEGIN { printf \"%.2f×\", $m_bf99 / $m_ng99 }") | — | — |"
echo
echo "Raw values (one per round, in order):"
echo
echo "- backflow req/s: ${bf_rps[*]}"
echo "- backflow p99 ms: ${bf_p99[*]}"
echo "- nginx req/s: ${ng_rps[*]}"
echo "- nginx p99 ms: ${ng_p99[*]}"
log "done"
