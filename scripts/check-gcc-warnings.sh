#!/usr/bin/env bash
# GCC's front-end warnings on every translation unit (library, tools, tests,
# benchmarks), without generating code.
#
# The test suite builds with clang, but `scripts/demo.sh`, `bench/run.sh` and a
# plain `cmake --build` use the default compiler, GCC, whose front end warns
# about code clang accepts (-Wdangling-else, for one), and every build has
# -Werror. This runs GCC over the compile commands CMake writes, with the
# project's flags plus -fsyntax-only, and without the tests' precompiled
# header (so a missing include shows too). About 14 minutes for the ~300 files
# on 2 cores (templates are still instantiated), which keeps it out of
# scripts/test.sh. Not covered: the warnings GCC gives only while optimizing
# (-Wmaybe-uninitialized, -Warray-bounds, ...).
#
# Usage: scripts/check-gcc-warnings.sh  (BACKFLOW_GCC_CHECK_DIR: the CMake
# build directory it configures, default build-gcc-check; BACKFLOW_GCC_CHECK_JOBS:
# compilers at once, default 2)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

dir="${BACKFLOW_GCC_CHECK_DIR:-build-gcc-check}"
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=g++ >/dev/null

# One NUL-terminated shell command per translation unit: its compile command
# with -fsyntax-only in place of the object file (and of the dependency file).
python3 - "$dir/compile_commands.json" <<'PY' >"$dir/syntax-check.commands"
import json, shlex, sys

for entry in json.load(open(sys.argv[1])):
    args = shlex.split(entry["command"])
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("-o", "-MF", "-MT", "-MQ"):
            skip = True
        elif a in ("-MD", "-MMD"):
            pass
        else:
            out.append(a)
    out.insert(1, "-fsyntax-only")
    cmd = "cd " + shlex.quote(entry["directory"]) + " && " + shlex.join(out)
    sys.stdout.write(cmd + "\0")
PY

count=$(tr -cd '\0' <"$dir/syntax-check.commands" | wc -c)
echo "check-gcc-warnings: $count translation units" >&2
if ! xargs -0 -n 1 -P "${BACKFLOW_GCC_CHECK_JOBS:-2}" sh -c <"$dir/syntax-check.commands"; then
  echo "check-gcc-warnings: GCC warns (an error with -Werror) in the files above" >&2
  exit 1
fi
