#!/usr/bin/env bash
# Create the project's virtual environment (first run only) and install the project into it.
# Prints the environment's python path. NPEDIT_VENV chooses the folder (default: .venv).
# torch==2.13.0 is installed first: the CPU build on CPU-only machines with a CPU wheel index,
# PyPI's default (CUDA) build elsewhere; an existing torch in the venv is kept if it is that version.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${NPEDIT_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip >&2
"$py" -m pip install -q torch==2.13.0 >&2
"$py" -m pip install -q -e "$root[test]" >&2
echo "$py"
