#!/usr/bin/env bash
# Installs every Debian 12 package Backflow needs to build, test and run.
# Idempotent: packages already present are left alone.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config clang-format
  clang-14 lld-14 libclang-rt-14-dev
  libabsl-dev libyaml-cpp-dev libcli11-dev nlohmann-json3-dev libfmt-dev
  libsqlite3-dev sqlite3 libpq-dev libcurl4-openssl-dev libssl-dev libxxhash-dev libzstd-dev zlib1g-dev
  libboost1.81-dev libsodium-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  postgresql postgresql-client
  mariadb-server mariadb-client libmariadb-dev
  python3 python3-psycopg2 time curl gdb
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "backflow: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
