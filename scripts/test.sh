#!/usr/bin/env bash
# Set up the virtual environment (first run only) and run the test suite.
#   bash scripts/test.sh             # all tests
#   bash scripts/test.sh -k sampler  # extra arguments go to pytest
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$(bash "$root/scripts/setup.sh")"
cd "$root"
exec "$py" -m pytest "$@"
