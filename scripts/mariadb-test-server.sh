#!/usr/bin/env bash
# mariadb-test-server.sh start|stop DIR
#
# Starts (or stops) a throwaway MariaDB server for the test suite. The server
# keeps its data, socket, pid file and log under DIR (or, when run as root and
# the `mysql` OS user cannot reach DIR, under a private /tmp directory recorded
# in DIR/state_root), listens only on 127.0.0.1 on a free port and has:
#   - a database `backflow_test` and a user `backflow` (password
#     authentication) with all privileges on the databases `backflow_%` (so
#     a missing `backflow_x` is reported as unknown, not as access denied)
#     plus PROCESS (to see and KILL QUERY its own connections);
#   - an administrator account named after the OS user running the server,
#     reachable only through the server's socket (unix_socket authentication).
# For the tests it writes into DIR:
#   url             mysql://backflow@127.0.0.1:PORT/backflow_test (no password)
#   password        the password of `backflow`
#   port
#   socket          the server's Unix socket
# `url` is written last; its presence means the server is ready.
#
# start is idempotent: a server already running from DIR is reused. Different
# DIRs may be started concurrently (each picks its own port). When run as root
# the server runs as the `mysql` OS user. The system-wide MariaDB the Debian
# package installs (/var/lib/mysql) is neither used nor touched.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}

[[ $# -eq 2 ]] || usage
action=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd -P)

find_binary() {
  local name
  for name in "$@"; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return
    fi
    if [[ -x /usr/sbin/$name ]]; then
      echo "/usr/sbin/$name"
      return
    fi
  done
  echo "mariadb-test-server: none of '$*' found; install the 'mariadb-server' and" \
    "'mariadb-client' packages (scripts/install-deps.sh)" >&2
  exit 1
}

# Runs a server-side command as the server's OS user.
# fd 9 (the lock) is closed so the server does not inherit it.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd / && runuser -u mysql -- "$@" 9>&-)
  else
    "$@" 9>&-
  fi
}

random_hex() {
  od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

state_root() {
  if [[ -f $dir/state_root ]]; then
    cat "$dir/state_root"
  else
    echo "$dir"
  fi
}

# Runs the client through the socket as the OS user running the server:
# mariadb-install-db gave that user an account with unix_socket
# authentication and all privileges.
admin_sql() {
  as_owner "$client" --no-defaults --protocol=socket --socket="$(state_root)/mysqld.sock" \
    --batch --skip-column-names "$@"
}

# Kills the server whose pid file is in the state root (if any).
kill_server() {
  local root pid i
  root=$(state_root)
  [[ -f $root/mysqld.pid ]] || return 0
  pid=$(cat "$root/mysqld.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$root/mysqld.pid"
}

server_running() {
  local root pid
  root=$(state_root)
  [[ -f $root/mysqld.pid && -f $dir/port && -f $dir/url ]] || return 1
  pid=$(cat "$root/mysqld.pid")
  kill -0 "$pid" 2>/dev/null || return 1
  admin_sql -e 'SELECT 1' >/dev/null 2>&1
}

stop_server() {
  kill_server
  if [[ -f $dir/state_root ]]; then
    rm -rf "$(cat "$dir/state_root")"
  fi
  rm -rf "$dir/data" "$dir/state_root" "$dir/url" "$dir/url.tmp" "$dir/password" "$dir/port" \
    "$dir/socket" "$dir/server.log" "$dir/install.log" "$dir/mysqld.pid" "$dir/mysqld.sock" \
    "$dir/my.cnf"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_server() {
  stop_server # leftovers of a server that is no longer running

  local root=$dir
  if [[ $(id -u) -eq 0 ]]; then
    chown mysql: "$dir"
    chmod 700 "$dir"
    if ! runuser -u mysql -- test -w "$dir"; then
      root=$(mktemp -d /tmp/backflow-mariadb-test.XXXXXX)
      chown mysql: "$root"
      echo "$root" >"$dir/state_root"
    fi
  fi
  local data=$root/data logfile=$root/server.log sock=$root/mysqld.sock

  as_owner "$install_db" --no-defaults --datadir="$data" --auth-root-authentication-method=socket \
    --skip-test-db >"$dir/install.log" 2>&1 || {
    cat "$dir/install.log" >&2
    echo "mariadb-test-server: mariadb-install-db failed" >&2
    exit 1
  }
  rm -f "$dir/install.log"

  local port attempt started=0 pid i
  [[ $(id -u) -ne 0 ]] || { touch "$logfile" && chown mysql: "$logfile"; }
  for attempt in $(seq 1 20); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 30000))
    if port_in_use "$port"; then continue; fi
    : >"$logfile"
    # Throwaway server: speed over durability, small buffers.
    as_owner "$mysqld" --no-defaults --datadir="$data" --socket="$sock" \
      --pid-file="$root/mysqld.pid" --log-error="$logfile" --bind-address=127.0.0.1 \
      --port="$port" --skip-name-resolve --innodb-buffer-pool-size=32M \
      --innodb-log-file-size=16M --innodb-flush-log-at-trx-commit=0 --skip-log-bin \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
      --max-connections=100 --lc-messages=en_US --max-allowed-packet=64M \
      >/dev/null 2>&1 </dev/null 9>&- &
    pid=$!
    for i in $(seq 1 600); do
      if ! kill -0 "$pid" 2>/dev/null; then break; fi
      if [[ -S $sock ]] && admin_sql -e 'SELECT 1' >/dev/null 2>&1; then
        started=1
        break
      fi
      sleep 0.1
    done
    [[ $started -eq 1 ]] && break
    kill_server
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if ! grep -q "Address already in use\|Can't start server: Bind" "$logfile" 2>/dev/null; then
      cat "$logfile" >&2 || true
      echo "mariadb-test-server: mariadbd failed to start" >&2
      exit 1
    fi
  done
  if [[ $started -ne 1 ]]; then
    echo "mariadb-test-server: no free port found after $attempt attempts" >&2
    exit 1
  fi

  local user_password
  user_password=$(random_hex 16)
  admin_sql <<EOF
CREATE DATABASE backflow_test CHARACTER SET utf8mb4;
CREATE USER 'backflow'@'127.0.0.1' IDENTIFIED BY '$user_password';
CREATE USER 'backflow'@'localhost' IDENTIFIED BY '$user_password';
GRANT ALL PRIVILEGES ON \`backflow\\_%\`.* TO 'backflow'@'127.0.0.1', 'backflow'@'localhost';
GRANT PROCESS ON *.* TO 'backflow'@'127.0.0.1', 'backflow'@'localhost';
EOF

  (
    umask 077
    printf '%s\n' "$port" >"$dir/port"
    printf '%s\n' "$sock" >"$dir/socket"
    printf '%s\n' "$user_password" >"$dir/password"
    printf 'mysql://backflow@127.0.0.1:%s/backflow_test\n' "$port" >"$dir/url.tmp"
    mv "$dir/url.tmp" "$dir/url"
  )
  echo "mariadb-test-server: $("$mysqld" --version | awk '{print $3}') running on" \
    "127.0.0.1:$port (data: $data)"
}

mysqld=$(find_binary mariadbd mysqld)
install_db=$(find_binary mariadb-install-db mysql_install_db)
client=$(find_binary mariadb mysql)

# Serialise start/stop on the same DIR.
exec 9>"$dir.lock"
flock 9

case $action in
  start)
    if server_running; then
      echo "mariadb-test-server: reusing the server on 127.0.0.1:$(cat "$dir/port")"
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
