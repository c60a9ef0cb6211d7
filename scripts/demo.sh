#!/usr/bin/env bash
# The main job on the embedded default: builds backflow (release), creates the
# bundled SQLite sample warehouse, then validates, previews and syncs the
# sample workspace (state in SQLite, records written to sample/out/).
# Idempotent: a second run finds no changes and sends nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF >/dev/null
cmake --build build-release --target backflow
scripts/make-sample.sh

bf() { echo "+ backflow $*" >&2; build-release/src/backflow/cli/backflow -c sample/backflow.yaml "$@"; }
bf validate
bf preview active_customers
bf sync --model active_customers
bf runs list --limit 5
echo "records written to: $root/sample/out/" >&2
