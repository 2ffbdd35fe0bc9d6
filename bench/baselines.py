"""The baseline rows of the paper's tables from one tool: CAM, ReCAM and WaveCAM side by side.

    python bench/baselines.py [--out baselines_output] [--quick]

Writes a synthetic VOC root, trains the CAM network once (`ws_cam`: train_cam, make_cam), then
fine-tunes that res50_cam.pth twice with the same settings, ReCAM (`ws_recam`: train_recam,
make_recam) and WaveCAM (`ws_wavecam`: train_wavecam, make_wavecam), which differ in the wave module
alone. Every work space then runs eval_cam and IRN (cam_to_ir_label, train_irn, make_sem_seg,
eval_sem_seg), and `wavecam.report` writes `<out>/report/results.md` with one row per method: seeds,
IRN pseudo labels and, once stage 3 writes results/eval_seg.json, the final segmentation.

The settings are the demo's (wavecam.multi_stage.demo), for the same reason: no ImageNet weights
offline, so ResNet-18 from random initialisation on small images, conventional momentum, and
thresholds raised for the flatter CAMs of a network trained from scratch. The numbers show that the
three rows come from one tool on one dataset, not the paper's ranking. `--quick` runs toy sizes (the
test suite's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from wavecam.data.synthetic import make_synthetic_voc
from wavecam.multi_stage.demo import demo_flags
from wavecam.multi_stage.runner import main as pipeline_main
from wavecam.multi_stage.workspace import default_path
from wavecam.report import report

METHODS = (  # (row, work space, the passes that make its CAMs)
    ("CAM", "ws_cam", ("train_cam", "make_cam")),
    ("ReCAM", "ws_recam", ("train_recam", "make_recam")),
    ("WaveCAM", "ws_wavecam", ("train_wavecam", "make_wavecam")),
)
IRN = ("eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg", "eval_sem_seg")
QUICK = {"n_train": 24, "n_val": 8, "size": 64, "cam_epochs": 2, "wavecam_epochs": 1, "irn_epochs": 1}


def flags(a) -> list[str]:
    """The demo's settings for every work space; ReCAM gets WaveCAM's fine-tuning ones."""
    return [*demo_flags(a), "--recam_num_epoches", str(a.wavecam_epochs), "--recam_learning_rate", str(a.wavecam_lr)]


def run(argv: list[str]) -> None:
    code = pipeline_main("voc", argv)
    if code:
        sys.exit(code)


def main_table(results_md: Path) -> str:
    """The report's main table with its caption, without the per-class appendix."""
    text = results_md.read_text()
    return text[:text.index("## Appendix")].rstrip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="baselines_output")
    p.add_argument("--network", default="resnet18", help="backbone of every pass (the paper's: resnet50)")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--cam-epochs", type=int, default=10)
    p.add_argument("--wavecam-epochs", type=int, default=8, help="train_recam's and train_wavecam's epochs")
    p.add_argument("--wavecam-lr", type=float, default=0.01, help="train_recam's and train_wavecam's learning rate")
    p.add_argument("--irn-epochs", type=int, default=5)
    p.add_argument("--irn-path-radius", type=int, default=5)
    p.add_argument("--exp-times", type=int, default=1)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--quick", action="store_true", help="toy sizes: shows the tool runs, not how the methods rank")
    if p.parse_known_args()[0].quick:  # explicit flags still win over these
        p.set_defaults(**QUICK)
    a = p.parse_args()
    a.dataset = "voc"

    start = time.perf_counter()
    out = Path(a.out).resolve()
    root = make_synthetic_voc(out / "voc", n_train=a.n_train, n_val=a.n_val, size=a.size, seed=0)
    common = ["--voc12_root", str(root), *flags(a)]
    cam_weights = default_path(out / "ws_cam", "cam_weights_name")
    for _, ws, passes in METHODS:
        line = [*common, "--work_space", str(out / ws), "--cam_weights_name", cam_weights]
        run([*line, *(x for name in (*passes, *IRN) for x in (f"--{name}_pass", "True"))])

    names = [name for name, _, _ in METHODS]
    report([out / ws for _, ws, _ in METHODS], out / "report", names=names)
    print("\n" + main_table(out / "report" / "results.md"))
    print(f"\nreport: {out / 'report' / 'results.md'}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
