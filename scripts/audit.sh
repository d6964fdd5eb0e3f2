#!/usr/bin/env bash
# Set up (if needed) and run `almostlinear audit` on the embedded default model. Arguments pass
# through, e.g. `bash scripts/audit.sh --quick --out my-report`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/setup.sh")"
exec "$venv/bin/almostlinear" audit "$@"
