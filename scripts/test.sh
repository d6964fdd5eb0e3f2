#!/usr/bin/env bash
# Set up (if needed) and run the test suite, real-model tests included. Arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/setup.sh")"
cd "$root"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
