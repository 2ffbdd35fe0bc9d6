#!/usr/bin/env bash
# The prepared GPU check: per-pass benchmarks at the paper's sizes (512 crops, batch 16 for CAM, 32 for
# IRN; float32 and bf16), the whole multi-stage chain on synthetic VOC-sized images, and the projected
# VOC wall time, written to one JSON file. Under 8 minutes on one recent GPU.
#
#   bash bench/gpu_check.sh [OUT.json]          (default: gpu_check.json)
#   PYTHON=/path/to/python bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check.json}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  [ -x .venv/bin/python ] || bash scripts/setup_env.sh >&2
  python=.venv/bin/python
fi
exec timeout 470 "$python" bench/gpu_check.py --out "$out"
