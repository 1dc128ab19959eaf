#!/usr/bin/env bash
# Set up the virtual environment (first run only) and run the built-in demo on the CPU.
#   bash scripts/demo.sh                 # writes runs/demo/
#   bash scripts/demo.sh --out /tmp/d    # extra arguments go to `python -m train_cli demo`
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$(bash "$root/scripts/setup.sh")"
cd "$root"
exec "$py" -m train_cli demo "$@"
