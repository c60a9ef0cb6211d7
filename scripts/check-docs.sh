#!/usr/bin/env bash
# Fails when docs/sources, docs/destinations or docs/mapping.md differ from what the connector
# definitions generate. Usage: check-docs.sh BACKFLOW_BINARY
# Regenerate with: backflow catalog --docs docs
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$1" catalog --docs "$tmp"
for kind in sources destinations; do
  if ! diff -ru "$root/docs/$kind" "$tmp/$kind"; then
    echo "docs/$kind is out of date: run \`backflow catalog --docs docs\` and commit the result" >&2
    exit 1
  fi
done
if ! diff -u "$root/docs/mapping.md" "$tmp/mapping.md"; then
  echo "docs/mapping.md is out of date: run \`backflow catalog --docs docs\` and commit the result" >&2
  exit 1
fi

# The workspace example in the README must stay a valid workspace.
awk '/^## The workspace file/{f=1} f&&/^```yaml/{p=1;next} p&&/^```/{exit} p' "$root/README.md" \
  > "$tmp/readme.yaml"
if ! HOOK_SECRET=x SEGMENT_WRITE_KEY=x PGPASSWORD=x "$1" -c "$tmp/readme.yaml" validate >"$tmp/out"; then
  cat "$tmp/out" >&2
  echo "the README's workspace example is not valid" >&2
  exit 1
fi
