#!/usr/bin/env bash
# Set up a virtual environment (first run only) and run the test suite.
#   bash scripts/test.sh            # all tests
#   bash scripts/test.sh -k sampler # extra arguments go to pytest
# NPEDIT_VENV chooses where the environment lives (CI keeps it in a cache folder between runs).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${NPEDIT_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q -e "$root[test]"
cd "$root"
exec "$py" -m pytest "$@"
