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
# The installs run again only when pyproject.toml or this script changed (the project itself is installed
# editable, so code changes need none): their hash is kept in the venv.
stamp="$venv/.npedit-setup"
want="$("$py" -c 'import hashlib, sys; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in sys.argv[1:])).hexdigest())' \
    "$root/pyproject.toml" "$0")"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$py" -m pip install -q --upgrade pip >&2
    "$py" -m pip install -q torch==2.13.0 >&2
    "$py" -m pip install -q -e "$root[test]" >&2
    echo "$want" > "$stamp"
fi
echo "$py"
