"""The README's first command: the whole multi-stage chain on the embedded synthetic dataset.

It writes a synthetic VOC root, pretrains the backbone that plays ImageNet's part (`pretrain.py`;
kept under `<out>/pretrained/` and reused by the next run), then runs the paper's command lines in
two work spaces: `ws_cam` (plain CAM baseline: train_cam, make_cam, eval_cam, then IRN on those
seeds: cam_to_ir_label, train_irn, make_sem_seg, eval_sem_seg, and with --seg-iters stage 3: a
DeepLab-v2 trained on those pseudo labels) and `ws_wavecam` (train_wavecam from the baseline's res50_cam.pth,
make_wavecam, eval_cam, then IRN on the WaveCAM seeds). It prints the table of every label set, so
that each stage can be read against the labels it started from, and writes the report with its
gallery under `<out>/report/`.

To fit a few minutes on two CPU cores the demo runs small images, ResNet-18 (`--network`; DeepLab-v2
on ResNet-18's basic blocks), short schedules with conventional momentum, and the random walk and
IRN's pair radius scaled to its small maps. Every such choice is a flag below or a setting of its
recipes, multi_stage/configs/demo.yaml and demo_stage3.yaml; `--network resnet50
--pretrained-weights FILE` runs the paper's backbone from ImageNet's weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from wavecam.data.synthetic import make_synthetic_coco, make_synthetic_voc
from wavecam.labels.crf import DEEPLAB_CRF
from wavecam.multi_stage.pretrain import PretrainSettings, pretrain
from wavecam.multi_stage.runner import main as pipeline_main
from wavecam.multi_stage.workspace import default_path, results_path
from wavecam.report import report

SEG_LAYOUT = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
              "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3))}


# The demo's recipes live with the paper's, in the front doors' folder of the (editable) checkout.
RECIPES = Path(__file__).resolve().parents[1] / "multi_stage" / "configs"
DEMO_RECIPE = RECIPES / "demo.yaml"
STAGE3_RECIPE = RECIPES / "demo_stage3.yaml"


def demo_flags(args, weights: Path | None) -> list[str]:
    """Flags of every pass of the demo: its recipe, then the settings that the demo's own flags choose
    (sizes, backbone, schedules), which win over the recipe's. `weights` is the backbone file every
    pass starts from, None for random initialisation."""
    crop = args.size
    return [
        "--config", str(DEMO_RECIPE),
        "--pretrained", str(weights or "none"), "--num_workers", str(args.workers),
        "--cam_network", args.network, "--irn_network", args.network,
        "--cam_crop_size", str(crop), "--cam_resize_long", str(int(crop * 0.8)), str(int(crop * 1.2)),
        "--cam_num_epoches", str(args.cam_epochs), "--cam_learning_rate", str(args.cam_lr),
        "--wavecam_num_epoches", str(args.wavecam_epochs), "--wavecam_learning_rate", str(args.wavecam_lr),
        "--irn_crop_size", str(crop), "--irn_num_epoches", str(args.irn_epochs),
        "--irn_path_radius", str(args.irn_path_radius),
        # The walk's reach grows with its steps (2^exp_times of radius 5 at stride 4) whatever the image
        # size: 256 steps suit VOC's 125 x 94 maps, while on 24 x 24 maps they spread every class over
        # the whole image (measured in the README's demo section).
        "--exp_times", str(args.exp_times),
    ]


def seg_flags(args, weights: Path | None) -> list[str]:
    """Flags of stage 3, after demo_flags': its recipe (the passes, batches, lists, single scale), then
    the settings that the demo's own flags choose."""
    block, n_blocks = SEG_LAYOUT[args.network]
    return [
        "--config", str(STAGE3_RECIPE),
        "--seg_block", block, "--seg_n_blocks", *map(str, n_blocks), "--seg_pretrained", str(weights or "none"),
        "--seg_crop_size", str(args.seg_crop), "--seg_num_iters", str(args.seg_iters),
        "--seg_learning_rate", str(args.seg_lr), "--seg_warmup_iters", str(min(args.seg_warmup, args.seg_iters)),
        "--seg_save_iters", str(max(args.seg_iters // 2, 1)),
        # deeplab-pytorch's CRF but for its colour std: 3 suits photographs; the synthetic objects'
        # noise and textures vary more than that within one object (a sweep on the 64 val images).
        "--seg_crf_bi", str(DEEPLAB_CRF["bi_w"]), str(DEEPLAB_CRF["bi_xy_std"]), str(args.seg_crf_rgb),
    ]


QUICK = {"n_train": 24, "n_val": 8, "size": 64, "cam_epochs": 2, "wavecam_epochs": 1, "irn_epochs": 1,
         "pretrain_steps": 4, "pretrain_size": 48, "pretrain_batch": 8, "seg_iters": 2}


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
                 (f"IRN pseudo labels (from {name})", sem["miou"], f"bg {sem['sem_seg_bg_thres']:.2f}",
                  sem.get("best_miou"), sem.get("best_threshold"))]
        if results_path(ws, "eval_seg").is_file():
            seg = read(ws, "eval_seg")
            rows.append((f"stage-3 DeepLab-v2 (from {name})", seg["miou"], "CRF" if seg["crf"] else "no CRF",
                         seg["variants"].get("no_crf", {}).get("miou"), None))
    lines = [f"{'labels':<34} {'mIoU':>6}  {'setting':<8} {'best (sweep)':>14}",
             f"{'-' * 34} {'-' * 6}  {'-' * 8} {'-' * 14}"]
    for name, m, setting, other, thr in rows:
        if other is None:
            extra = ""
        else:
            extra = f"{100 * other:5.1f} @ {thr:.2f}" if thr is not None else f"{100 * other:5.1f} no CRF"
        lines.append(f"{name:<34} {100 * m:6.1f}  {setting:<8} {extra:>14}")
    return "\n".join(lines) + f"\n(evaluated on {seeds['n_images']} '{seeds['eval_set']}' images)"


def backbone_weights(args, out: Path) -> Path | None:
    """The file every pass starts from: --pretrained-weights, the pretraining's (made now or
    reused), or None (random initialisation) with --pretrain-steps 0."""
    if args.pretrained_weights:
        return Path(args.pretrained_weights).resolve()
    if args.pretrain_steps <= 0:
        return None
    settings = PretrainSettings(arch=args.network, size=args.pretrain_size, steps=args.pretrain_steps,
                                batch=args.pretrain_batch)
    path = pretrain(settings, out / "pretrained", workers=args.workers)
    info = json.loads(path.with_suffix(".json").read_text())
    print(f"pretrained backbone: {path} ({info['steps']} steps of {info['batch']} scenes of {info['size']} px, "
          f"{info['seconds']:.0f} s when trained; held-out exact-match accuracy {info['held_out_exact_match']:.3f})")
    return path


def regime_parser(description: str | None, out: str) -> argparse.ArgumentParser:
    """The demo's settings as flags, shared with bench/baselines.py (which runs the same regime)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=out)
    p.add_argument("--network", default="resnet18", help="backbone of every pass (the paper's: resnet50)")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--pretrain-steps", type=int, default=300,
                   help="steps of the pretraining that plays ImageNet's part (0: every pass from random weights)")
    p.add_argument("--pretrain-size", type=int, default=64, help="side of the pretraining's scenes")
    p.add_argument("--pretrain-batch", type=int, default=64)
    p.add_argument("--pretrained-weights", default=None, metavar="FILE",
                   help="start every pass from this torchvision-layout ResNet state dict instead (ImageNet's "
                        "resnet18-f37072fd.pth, say); no pretraining")
    p.add_argument("--cam-epochs", type=int, default=5)
    p.add_argument("--cam-lr", type=float, default=0.01, help="train_cam's learning rate (x10 for the classifier)")
    p.add_argument("--wavecam-epochs", type=int, default=4, help="train_wavecam's epochs (the paper's 4)")
    p.add_argument("--wavecam-lr", type=float, default=0.0005,
                   help="train_wavecam's learning rate (the paper's; others measured in the README's demo section)")
    p.add_argument("--irn-epochs", type=int, default=5)
    p.add_argument("--irn-path-radius", type=int, default=5,
                   help="IRN's pair radius at stride 4 (the paper's 10 leaves a 24 x 24 map few source pixels)")
    p.add_argument("--exp-times", type=int, default=1, help="the random walk takes 2^N steps (the paper's: 8)")
    p.add_argument("--seg-iters", type=int, default=0,
                   help="stage 3's optimiser steps (0, the default: no stage 3, to keep the demo short; "
                        "docs/demo.md measures 600)")
    p.add_argument("--seg-lr", type=float, default=0.002, help="stage 3's learning rate (x10, x20 for the head)")
    p.add_argument("--seg-warmup", type=int, default=50,
                   help="stage 3's steps of linear warm-up, so that the demo's high rate does not derail the new "
                        "head in its first steps (docs/demo.md)")
    p.add_argument("--seg-crf-rgb", type=float, default=15,
                   help="the colour std of stage 3's CRF (deeplab-pytorch's: 3)")
    p.add_argument("--seg-crop", type=int, default=64,
                   help="stage 3's crops (64 of the 96 px images: more steps in the time than whole images)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--quick", action="store_true",
                   help="toy sizes (the test suite's): shows the chain runs, not that it works")
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    if p.parse_known_args()[0].quick:  # explicit flags still win over these
        p.set_defaults(**QUICK)
    return p.parse_args()


def main() -> None:
    p = regime_parser(__doc__, out="demo_output")
    p.add_argument("--dataset", choices=("voc", "coco"), default="voc", help="layout of the synthetic dataset")
    p.add_argument("--seg-from", choices=("cam", "wavecam", "both"), default="cam",
                   help="whose pseudo labels stage 3 trains on (with --seg-iters)")
    args = parse(p)

    start = time.perf_counter()
    out = Path(args.out).resolve()
    make = make_synthetic_voc if args.dataset == "voc" else make_synthetic_coco
    root = make(out / args.dataset, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=0)
    ws_cam, ws_wave = out / "ws_cam", out / "ws_wavecam"
    root_flag = "--voc12_root" if args.dataset == "voc" else "--mscoco_root"
    weights = backbone_weights(args, out)
    common = [root_flag, str(root), *demo_flags(args, weights)]

    irn = ["--cam_to_ir_label_pass", "True", "--train_irn_pass", "True", "--make_sem_seg_pass", "True",
           "--eval_sem_seg_pass", "True"]
    cam = [*common, "--work_space", str(ws_cam)]
    run(args.dataset, [*cam, "--train_cam_pass", "True", "--make_cam_pass", "True", "--eval_cam_pass", "True"])
    run(args.dataset, [*cam, *irn])
    wave = [*common, "--work_space", str(ws_wave), "--cam_weights_name", default_path(ws_cam, "cam_weights_name")]
    # The paper's two command lines, verbatim apart from the demo's sizes.
    run(args.dataset, [*wave, "--train_wavecam_pass", "True", "--make_wavecam_pass", "True", "--eval_cam_pass", "True"])
    run(args.dataset, [*wave, *irn])
    if args.seg_iters > 0:
        for name, flags in (("cam", cam), ("wavecam", wave)):
            if args.seg_from in (name, "both"):
                run(args.dataset, [*flags, *seg_flags(args, weights)])

    print("\n" + table(ws_cam, ws_wave))
    report([ws_cam, ws_wave], out / "report", gallery=9, names=["CAM", "WaveCAM"])
    print(f"\nwork spaces: {ws_cam} and {ws_wave}")
    print(f"report: {out / 'report' / 'results.md'}, gallery: {out / 'report' / 'gallery.html'}")
    print(f"total {time.perf_counter() - start:.0f} s")

