#!/usr/bin/env bash
# Create .venv (if needed) and install ktracecli in it, editable, with the test extras.
# The tests build their programs with gcc, g++ and clang (clang for its own -pg forms);
# when one is missing and this runs as root on a Debian-like system, it is installed
# with apt-get, otherwise setup stops and says what to install.
# Usage: scripts/setup.sh        (prints nothing but pip's progress; safe to re-run)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
PACKAGES="gcc g++ clang libc6-dev"
missing=""
for tool in gcc g++ clang; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing$missing (apt-get install $PACKAGES)" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES >&2
    else
        echo "setup:$missing not found: install them (e.g. sudo apt-get install $PACKAGES)" >&2
        exit 1
    fi
fi
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PYTHON" -m venv "$ROOT/.venv"
fi
"$ROOT/.venv/bin/python" -m pip install --quiet -e "$ROOT[test]"
