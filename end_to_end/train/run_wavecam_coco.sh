#!/usr/bin/env bash
# Train WaveCAM end to end on MS COCO 2014, validate every train.eval_iters iterations, then test.
#
#   cd end_to_end && bash train/run_wavecam_coco.sh [train.py arguments...]
#
# The VOC launcher with the COCO config: NPROC, CONFIG and PYTHON work as described there.
# Extra arguments go to train.py, e.g. --work_dir DIR --resume auto --set dataset.root=/data/mscoco
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIG="${CONFIG:-$HERE/../configs/coco.yaml}" exec bash "$HERE/run_wavecam_voc.sh" "$@"
