#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv in the checkout and install wavecam into it
# with its test tools. Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.wavecam-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -c "${WAVECAM_TORCH_CONSTRAINTS:-constraints.txt}" -e ".[test]"
  touch "$stamp"
fi
