"""The README's first command: the whole multi-stage chain on the embedded synthetic dataset.

It writes a synthetic VOC root, then runs the paper's two command lines in two work spaces:
`ws_cam` (plain CAM baseline: train_cam, make_cam, eval_cam, then IRN on those seeds:
cam_to_ir_label, train_irn, make_sem_seg, eval_sem_seg) and `ws_wavecam` (train_wavecam from the
baseline's res50_cam.pth, make_wavecam, eval_cam, then IRN on the WaveCAM seeds), prints the table
of the four label sets, so that each stage can be read against the seeds it started from, and
writes the report with its gallery under `<out>/report/`.

ImageNet weights cannot be assumed offline, so the demo trains from random initialisation, on
small images, with conventional momentum and more epochs, and on ResNet-18 (`--network`), which
keeps it to a few minutes on two CPU cores. Every such choice is a flag below; `--network
resnet50` runs the paper's backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from wavecam.data.synthetic import make_synthetic_coco, make_synthetic_voc
from wavecam.multi_stage.runner import main as pipeline_main
from wavecam.multi_stage.workspace import default_path, results_path
from wavecam.report import report


def demo_flags(a) -> list[str]:
    """Settings shared by every pass of the demo (sizes scaled to the synthetic images)."""
    crop = a.size
    return [
        "--pretrained", "none", "--num_workers", str(a.workers), "--seed", "0",
        "--cam_network", a.network, "--irn_network", a.network,
        # Seeds and pseudo labels are scored on training images, as the paper's tables are.
        "--train_list", "train_aug" if a.dataset == "voc" else "train", "--val_list", "val",
        "--infer_list", "train", "--chainer_eval_set", "train",
        "--cam_crop_size", str(crop), "--cam_resize_long", str(int(crop * 0.8)), str(int(crop * 1.2)),
        "--cam_batch_size", "16", "--cam_num_epoches", str(a.cam_epochs), "--cam_learning_rate", "0.02",
        "--sgd_momentum", "0.9", "--cam_scales", "1.0", "0.5", "1.5",
        "--cam_eval_sweep", "0.05", "0.8", "0.05",
        "--wavecam_num_epoches", str(a.wavecam_epochs), "--wavecam_learning_rate", str(a.wavecam_lr),
        # CAMs of a network trained from scratch are flatter than ImageNet-initialised ones: their
        # best background threshold is higher, and IRN's thresholds move with it.
        "--cam_eval_thres", "0.5", "--conf_fg_thres", "0.5", "--conf_bg_thres", "0.25", "--sem_seg_bg_thres", "0.5",
        "--irn_crop_size", str(crop), "--irn_batch_size", "16", "--irn_num_epoches", str(a.irn_epochs),
        "--irn_learning_rate", "0.05", "--irn_path_radius", str(a.irn_path_radius),
        # The walk's reach grows with its steps (2^exp_times of radius 5 at stride 4) whatever the image
        # size: 256 steps suit VOC's 125 x 94 maps, while on 24 x 24 maps they spread every class over
        # the whole image (measured in the README's demo section).
        "--exp_times", str(a.exp_times),
    ]


QUICK = {"n_train": 24, "n_val": 8, "size": 64, "cam_epochs": 2, "wavecam_epochs": 1, "irn_epochs": 1}


def run(dataset: str, argv: list[str]) -> None:
    code = pipeline_main(dataset, argv)
    if code:
        sys.exit(code)


def read(ws: Path, name: str) -> dict:
    return json.loads(results_path(ws, name).read_text())


def table(ws_cam: Path, ws_wave: Path) -> str:
    rows = []
    for ws, name in ((ws_cam, "CAM"), (ws_wave, "WaveCAM")):
        seeds, sem = read(ws, "eval_cam"), read(ws, "eval_sem_seg")
        rows += [(f"{name} seeds", seeds["miou"], f"bg {seeds['threshold']:.2f}", seeds["best_miou"],
                  seeds["best_threshold"]),
                 (f"IRN pseudo labels (from {name})", sem["miou"], f"bg {sem['sem_seg_bg_thres']:.2f}", None, None)]
    lines = [f"{'labels':<34} {'mIoU':>6}  {'setting':<8} {'best (sweep)':>14}",
             f"{'-' * 34} {'-' * 6}  {'-' * 8} {'-' * 14}"]
    for name, m, setting, best, thr in rows:
        sweep = f"{100 * best:5.1f} @ {thr:.2f}" if best is not None else ""
        lines.append(f"{name:<34} {100 * m:6.1f}  {setting:<8} {sweep:>14}")
    return "\n".join(lines) + f"\n(evaluated on {seeds['n_images']} '{seeds['eval_set']}' images)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--dataset", choices=("voc", "coco"), default="voc", help="layout of the synthetic dataset")
    p.add_argument("--network", default="resnet18", help="backbone of every pass (the paper's: resnet50)")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--cam-epochs", type=int, default=10)
    p.add_argument("--wavecam-epochs", type=int, default=8)
    p.add_argument("--wavecam-lr", type=float, default=0.01,
                   help="train_wavecam's learning rate (0.05 diverged at epoch 5; see the README's demo section)")
    p.add_argument("--irn-epochs", type=int, default=5)
    p.add_argument("--irn-path-radius", type=int, default=5,
                   help="IRN's pair radius at stride 4 (the paper's 10 leaves a 24 x 24 map few source pixels)")
    p.add_argument("--exp-times", type=int, default=1, help="the random walk takes 2^N steps (the paper's: 8)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--quick", action="store_true",
                   help="toy sizes (the test suite's): shows the chain runs, not that it works")
    if p.parse_known_args()[0].quick:  # explicit flags still win over these
        p.set_defaults(**QUICK)
    a = p.parse_args()

    start = time.perf_counter()
    out = Path(a.out).resolve()
    make = make_synthetic_voc if a.dataset == "voc" else make_synthetic_coco
    root = make(out / a.dataset, n_train=a.n_train, n_val=a.n_val, size=a.size, seed=0)
    ws_cam, ws_wave = out / "ws_cam", out / "ws_wavecam"
    root_flag = "--voc12_root" if a.dataset == "voc" else "--mscoco_root"
    common = [root_flag, str(root), *demo_flags(a)]

    irn = ["--cam_to_ir_label_pass", "True", "--train_irn_pass", "True", "--make_sem_seg_pass", "True",
           "--eval_sem_seg_pass", "True"]
    cam = [*common, "--work_space", str(ws_cam)]
    run(a.dataset, [*cam, "--train_cam_pass", "True", "--make_cam_pass", "True", "--eval_cam_pass", "True"])
    run(a.dataset, [*cam, *irn])
    wave = [*common, "--work_space", str(ws_wave), "--cam_weights_name", default_path(ws_cam, "cam_weights_name")]
    # The paper's two command lines, verbatim apart from the demo's sizes.
    run(a.dataset, [*wave, "--train_wavecam_pass", "True", "--make_wavecam_pass", "True", "--eval_cam_pass", "True"])
    run(a.dataset, [*wave, *irn])

    print("\n" + table(ws_cam, ws_wave))
    report([ws_cam, ws_wave], out / "report", gallery=9, names=["CAM", "WaveCAM"])
    print(f"\nwork spaces: {ws_cam} and {ws_wave}")
    print(f"report: {out / 'report' / 'results.md'}, gallery: {out / 'report' / 'gallery.html'}")
    print(f"total {time.perf_counter() - start:.0f} s")

