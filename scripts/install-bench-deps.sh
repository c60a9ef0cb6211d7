#!/usr/bin/env bash
# Installs the extra Debian 12 packages of bench/api_bench.sh: the load
# generator (wrk), the baseline web server (nginx-light), and python3 / curl
# (the slow webhook receiver and the API calls). Idempotent: packages (or, for
# nginx, any nginx flavour already providing /usr/sbin/nginx) already present
# are left alone. Uses apt-get as root, or through sudo otherwise.
set -euo pipefail

missing=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in wrk python3 curl; do
  have "$p" || missing+=("$p")
done
if [[ ! -x /usr/sbin/nginx ]]; then missing+=(nginx-light); fi
if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || {
    echo "install-bench-deps: need root or sudo to install ${missing[*]}" >&2
    exit 1
  }
  SUDO="sudo"
fi
echo "backflow: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
