#!/usr/bin/env bash
# Train WaveCAM end to end on PASCAL VOC 2012, validate every train.eval_iters iterations, then test.
#
#   cd end_to_end && bash train/run_wavecam_voc.sh [train.py arguments...]
#
# It runs from any directory; relative paths (CONFIG, dataset.root, model.pretrained, the work dir)
# are taken from the current one.
# NPROC    processes (default: every visible GPU, or 1 on a machine without one); they must divide
#          train.batch_size, and accumulate gradients where they are fewer than batch_size / micro_batch
# CONFIG   YAML config (default: end_to_end/configs/voc.yaml)
# PYTHON   interpreter with wavecam installed (default: python)
# Extra arguments go to train.py, e.g. --work_dir DIR --resume auto --set dataset.root=/data/VOC2012
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
CONFIG="${CONFIG:-$HERE/../configs/voc.yaml}"
# torch.cuda.device_count() honours CUDA_VISIBLE_DEVICES; no GPU means one CPU process.
NPROC="${NPROC:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
if [ "$NPROC" = 1 ]; then
    # One process needs no launcher, and its errors then reach the user without torchrun's report.
    exec "$PYTHON" "$HERE/../train.py" --config "$CONFIG" "$@"
fi
# --standalone: a local rendezvous on a free port, so several runs can share a machine.
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    "$HERE/../train.py" --config "$CONFIG" "$@"
