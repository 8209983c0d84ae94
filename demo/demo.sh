#!/usr/bin/env bash
# From a fresh checkout: set up .venv, build the demo, trace it and show the trace.
#   bash demo/demo.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/demo/_build"
bash "$ROOT/scripts/setup.sh"
mkdir -p "$BUILD"
gcc -O2 -o "$BUILD/demo" "$ROOT/demo/demo.c"

# A config of its own, so the demo never touches yours.
kt() {
    echo "\$ ktracecli $*" >&2
    "$ROOT/.venv/bin/ktracecli" --config "$BUILD/demo.toml" "$@"
}
kt engine ktrace
kt tracer function
kt ktrace clear
kt ktrace add 'count_words' 'next_word' 'is_space' 'remember' 'hash'
kt record -o "$BUILD/ktrace.data" -- "$BUILD/demo"
kt show "$BUILD/ktrace.data"
