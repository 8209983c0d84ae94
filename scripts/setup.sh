#!/usr/bin/env bash
# Create .venv (if needed) and install ktracecli in it, editable, with the test extras.
# Usage: scripts/setup.sh        (prints nothing but pip's progress; safe to re-run)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
command -v gcc >/dev/null || { echo "setup: gcc is required (apt-get install gcc libc6-dev)" >&2; exit 1; }
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PYTHON" -m venv "$ROOT/.venv"
fi
"$ROOT/.venv/bin/python" -m pip install --quiet -e "$ROOT[test]"
