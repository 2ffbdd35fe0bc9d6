"""Test an end-to-end WaveCAM segmenter: multi-scale, flipped inference, optional dense CRF.

    torchrun --nproc_per_node N end_to_end/test.py --config end_to_end/configs/voc.yaml \
        [--checkpoint PATH] [--work_dir DIR] [--crf] [--set test.eval_set=val ...]

The checkpoint (default: the latest in <work_dir>/checkpoints) is one of train.py's, AFA's
`wetr_iter_*.pth` (whose missing WaveCAM parts do not matter here) or a SegFormer checkpoint of
mmseg's layout trained for this dataset's classes (encoder and decoder are all the test uses). Writes
<work_dir>/test/<set>[_crf]/<id>.png (VOC palette) and, where the set has ground truth,
<work_dir>/results/test_<set>[_crf].json; the `test` section of the config sets the rest.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wavecam.end_to_end.checkpoints import latest_checkpoint
from wavecam.end_to_end.config import Config, config_from_args, front_door_parser
from wavecam.end_to_end.data import make_source
from wavecam.end_to_end.evaluation import run_test
from wavecam.end_to_end.model import load_trained
from wavecam.end_to_end.preflight import preflight
from wavecam.engine import runtime
from wavecam.engine.cli import run_cli
from wavecam.engine.logging import DATED, setup_logging
from wavecam.errors import WavecamError
from wavecam.metrics import format_iou_table

log = logging.getLogger("wavecam")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = front_door_parser("Test an end-to-end WaveCAM segmenter (multi-scale + flip, CRF).",
                          "where outputs go (default: the config's work_dir)", "test.eval_set=train test.scales=[1.0]")
    p.add_argument("--checkpoint", default=None, help="default: the latest in <work_dir>/checkpoints")
    p.add_argument("--crf", action="store_true", help="dense CRF on the probabilities (same as --set test.crf=true)")
    return p.parse_args(argv)


def test(cfg: Config, checkpoint: str | None, ctx: runtime.Context) -> None:
    work_dir = Path(cfg.work_dir)
    path = Path(checkpoint) if checkpoint else latest_checkpoint(work_dir)
    if path is None:
        raise WavecamError(f"no checkpoint in {work_dir / 'checkpoints'}; train first or give --checkpoint")
    cfg.model.pretrained = None  # every weight comes from the checkpoint
    preflight(cfg, [path])
    setup_logging(work_dir / "test.log", ctx, DATED)
    source = make_source(cfg)
    net, _, iteration = load_trained(cfg, source.num_classes, path, ctx.device)
    result = run_test(net, cfg, ctx, work_dir, path, iteration)
    if result is not None:
        print(format_iou_table(result["iou"], source.class_names, title=f"segmentation, {cfg.test.eval_set}"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        cfg = config_from_args(args)
        cfg.test.crf = cfg.test.crf or args.crf
        test(cfg, args.checkpoint, runtime.init(args.device))

    return run_cli(job, "--work_dir")
