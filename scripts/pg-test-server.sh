#!/usr/bin/env bash
# pg-test-server.sh start|stop DIR
#
# Starts (or stops) a throwaway PostgreSQL cluster for the test suite. The
# cluster lives in DIR/data, listens only on 127.0.0.1 on a free port (no Unix
# socket), uses scram-sha-256 password authentication and has:
#   - a login role `backflow` owning the database `backflow_test`;
#   - the superuser `postgres`, for tests that need it.
# For the tests it writes into DIR:
#   url             postgresql://backflow@127.0.0.1:PORT/backflow_test (no password)
#   password        the password of `backflow`
#   admin_url       postgresql://postgres@127.0.0.1:PORT/backflow_test
#   admin_password  the password of `postgres`
#   port
# `url` is written last; its presence means the server is ready.
#
# start is idempotent: a server already running from DIR is reused. Different
# DIRs may be started concurrently (each picks its own port). When run as root
# the server runs as the `postgres` OS user (initdb refuses root). The default
# cluster the Debian package may have created is neither used nor touched.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}

[[ $# -eq 2 ]] || usage
action=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd -P)

find_bindir() {
  local d
  if [[ -n ${BACKFLOW_PG_BINDIR:-} ]]; then
    echo "$BACKFLOW_PG_BINDIR"
    return
  fi
  if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
    echo /usr/lib/postgresql/15/bin
    return
  fi
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -z $d || ! -x $d/initdb ]]; then
    echo "pg-test-server: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin;" \
      "install the 'postgresql' package (scripts/install-deps.sh)" >&2
    exit 1
  fi
  echo "$d"
}

# Runs a server-side command as the cluster owner.
# fd 9 (the lock) is closed so the server does not inherit it.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@" 9>&-)
  else
    "$@" 9>&-
  fi
}

random_hex() {
  od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# Where the cluster lives: DIR itself, unless the postgres OS user cannot
# reach DIR (e.g. under /root), in which case a private directory under /tmp
# is used and its path recorded in DIR/state_root. It holds data/ (the
# cluster) and server.log.
state_root() {
  if [[ -f $dir/state_root ]]; then
    cat "$dir/state_root"
  else
    echo "$dir"
  fi
}

data_dir() {
  echo "$(state_root)/data"
}

server_running() {
  local data
  data=$(data_dir)
  [[ -f $data/postmaster.pid && -f $dir/port && -f $dir/url ]] || return 1
  as_owner "$bindir/pg_ctl" status -D "$data" >/dev/null 2>&1 || return 1
  "$bindir/pg_isready" -q -h 127.0.0.1 -p "$(cat "$dir/port")" -t 5
}

stop_server() {
  local data
  data=$(data_dir)
  if [[ -f $data/postmaster.pid ]]; then
    as_owner "$bindir/pg_ctl" stop -D "$data" -m fast -w -t 30 >/dev/null 2>&1 ||
      as_owner "$bindir/pg_ctl" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1 || true
  fi
  if [[ -f $dir/state_root ]]; then
    rm -rf "$(cat "$dir/state_root")"
  fi
  rm -rf "$dir/data" "$dir/state_root" "$dir/url" "$dir/url.tmp" "$dir/password" \
    "$dir/admin_url" "$dir/admin_password" "$dir/port" "$dir/pwfile" "$dir/server.log" \
    "$dir/initdb.log"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_server() {
  stop_server  # leftovers of a server that is no longer running

  local root=$dir
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$dir"
    chmod 700 "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
      root=$(mktemp -d /tmp/backflow-pg-test.XXXXXX)
      chown postgres: "$root"
      echo "$root" >"$dir/state_root"
    fi
  fi
  local data=$root/data logfile=$root/server.log pwfile=$root/pwfile

  local admin_password user_password
  admin_password=$(random_hex 16)
  user_password=$(random_hex 16)
  (umask 077 && printf '%s\n' "$admin_password" >"$pwfile")
  [[ $(id -u) -ne 0 ]] || chown postgres: "$pwfile"

  as_owner "$bindir/initdb" -D "$data" -U postgres --pwfile="$pwfile" \
    --auth-host=scram-sha-256 --auth-local=scram-sha-256 --no-locale -E UTF8 \
    >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    echo "pg-test-server: initdb failed" >&2
    exit 1
  }
  rm -f "$pwfile" "$dir/initdb.log"

  cat >>"$data/postgresql.conf" <<'EOF'
# Throwaway test cluster (scripts/pg-test-server.sh): speed over durability.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 100
lc_messages = 'C'
log_min_messages = warning
EOF

  # Pick a free port; postgres' own bind() settles races with other runs.
  local port attempt started=0
  [[ $(id -u) -ne 0 ]] || { touch "$logfile" && chown postgres: "$logfile"; }
  for attempt in $(seq 1 20); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 30000))
    if port_in_use "$port"; then continue; fi
    if as_owner "$bindir/pg_ctl" start -D "$data" -l "$logfile" -w -t 60 \
      -o "-p $port" >/dev/null 2>&1; then
      started=1
      break
    fi
    if ! grep -q "could not bind\|could not create any TCP/IP sockets\|Address already in use" \
      "$logfile" 2>/dev/null; then
      cat "$logfile" >&2 || true
      echo "pg-test-server: postgres failed to start" >&2
      exit 1
    fi
  done
  if [[ $started -ne 1 ]]; then
    echo "pg-test-server: no free port found after $attempt attempts" >&2
    exit 1
  fi

  PGPASSWORD=$admin_password "$bindir/psql" -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -v pw="$user_password" >/dev/null <<'EOF'
CREATE ROLE backflow LOGIN PASSWORD :'pw';
CREATE DATABASE backflow_test OWNER backflow;
EOF

  (
    umask 077
    printf '%s\n' "$port" >"$dir/port"
    printf '%s\n' "$user_password" >"$dir/password"
    printf '%s\n' "$admin_password" >"$dir/admin_password"
    printf 'postgresql://postgres@127.0.0.1:%s/backflow_test\n' "$port" >"$dir/admin_url"
    printf 'postgresql://backflow@127.0.0.1:%s/backflow_test\n' "$port" >"$dir/url.tmp"
    mv "$dir/url.tmp" "$dir/url"
  )
  echo "pg-test-server: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}')" \
    "running on 127.0.0.1:$port (data: $data)"
}

bindir=$(find_bindir)

# Serialise start/stop on the same DIR.
exec 9>"$dir.lock"
flock 9

case $action in
  start)
    if server_running; then
      echo "pg-test-server: reusing the server on 127.0.0.1:$(cat "$dir/port")"
      exit 0
    fi
    start_server
    ;;
  stop)
    stop_server
    rm -rf "$dir"
    ;;
  *)
    usage
    ;;
esac
