#!/usr/bin/env bash
# Set up .venv like scripts/setup.sh, then run the whole test suite.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k threads -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -q tests "$@"
