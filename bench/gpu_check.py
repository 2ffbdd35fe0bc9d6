"""The prepared GPU check behind bench/gpu_check.sh: per-pass benchmarks at the paper's sizes (float32
and bf16 autocast; stage 3's DeepLab-v2 ResNet-101 at deeplab-pytorch's 321 crops, batch 5), the
full multi-stage chain on a synthetic VOC root at VOC image sizes with the paper's flags, and the
projected wall time of the VOC pipeline, all in one JSON file.

    python bench/gpu_check.py --out gpu_check.json            # on a CUDA machine, < 8 min
    python bench/gpu_check.py --device cpu --quick --out x.json  # the same steps at toy sizes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PAPER = ["--crop", "512", "--cam-batch", "16", "--irn-batch", "32"]
QUICK = ["--crop", "64", "--cam-batch", "2", "--irn-batch", "2", "--arch", "resnet18", "--warmup", "1", "--steps", "1",
         "--images", "1", "--repeats", "1", "--crf-images", "1", "--workers", "1", "--size", "90", "120",
         "--dense-size", "40", "60", "--eval-images", "20", "--plain-eval-images", "5", "--scales", "1.0", "0.5",
         "--loader-images", "2", "--loader-crop", "64", "--seg-blocks", "1", "1", "1", "1", "--seg-crop", "64",
         "--seg-batch", "2", "--seg-images", "1"]


def run(cmd: list[str], log: Path, timeout: float) -> float:
    """Run cmd with its output in `log`; its wall time. A failure stops the check with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"gpu_check: {' '.join(cmd[:3])} ... failed (exit {proc.returncode}):\n{tail}")
    return time.perf_counter() - start


def chain(tmp: Path, device: str, quick: bool, timeout: float) -> dict:
    """Both of the paper's command lines on a synthetic VOC root, one epoch per training pass."""
    from wavecam.data.synthetic import make_synthetic_voc
    from wavecam.multi_stage.workspace import default_path, results_path

    root = make_synthetic_voc(tmp / "voc", n_train=16 if quick else 128, n_val=4 if quick else 16,
                              size=96 if quick else 500, seed=0, jobs=os.cpu_count() or 1)
    ws = tmp / "ws"
    flags = ["--voc12_root", str(root), "--work_space", str(ws), "--device", device, "--pretrained", "none",
             "--cache_dir", str(tmp / "cache"), "--cam_num_epoches", "1", "--wavecam_num_epoches", "1",
             "--irn_num_epoches", "1", "--train_list", "train_aug", "--infer_list", "train",
             "--chainer_eval_set", "train", "--sgd_momentum", "0.9", "--cam_learning_rate", "0.01"]
    if quick:
        flags += ["--cam_network", "resnet18", "--irn_network", "resnet18", "--cam_crop_size", "64",
                  "--cam_resize_long", "56", "72", "--cam_batch_size", "4", "--irn_crop_size", "64",
                  "--irn_batch_size", "4", "--irn_path_radius", "5", "--cam_scales", "1.0", "0.5", "--num_workers", "1"]
    runner = [sys.executable, str(ROOT / "multi_stage" / "run_wavecam_voc.py"), *flags]
    first = ["--train_cam_pass", "True", "--train_wavecam_pass", "True", "--make_wavecam_pass", "True",
             "--eval_cam_pass", "True"]
    second = ["--cam_to_ir_label_pass", "True", "--train_irn_pass", "True", "--make_sem_seg_pass", "True",
              "--eval_sem_seg_pass", "True"]
    # Stage 3 on the chain's pseudo labels (a few hundred steps: it checks the pass, not the paper's schedule).
    third = ["--train_seg_pass", "True", "--make_seg_pass", "True", "--eval_seg_pass", "True", "--seg_pretrained",
             "none", "--seg_train_list", "train", "--seg_eval_set", "val", "--seg_num_iters", "20" if quick else "200",
             "--seg_log_iters", "10", "--seg_save_iters", "100"]
    if quick:
        third += ["--seg_n_blocks", "1", "1", "1", "1", "--seg_crop_size", "64", "--seg_batch_size", "2"]
    wall = run([*runner, *first], tmp / "chain_first.log", timeout)
    wall += run([*runner, *second], tmp / "chain_second.log", timeout)
    wall += run([*runner, *third], tmp / "chain_third.log", timeout)
    log = Path(default_path(ws, "log_name")).read_text()
    passes = {m[1]: float(m[2]) for m in re.finditer(r"== (\w+) done in ([\d.]+) s", log)}
    results = {name: json.loads(results_path(ws, name).read_text())["miou"]
               for name in ("eval_cam", "eval_sem_seg", "eval_seg")}
    return {"n_train": len((root / "ImageSets/Segmentation/train.txt").read_text().split()), "wall_s": wall,
            "pass_s": passes, "miou": results, "note": "random init, one epoch each: times matter, mIoU does not"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing")
    a = p.parse_args(argv)

    import torch

    # A sibling module: Python puts bench/ on the path of a script run as python bench/<script>.py.
    from project_voc import project

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: PyTorch sees no CUDA device (use --device cpu --quick to test the script)")
    sizes = QUICK if a.quick else PAPER
    bench = [sys.executable, str(ROOT / "bench" / "bench_passes.py"), "--device", a.device, *sizes]
    started = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
                    "torch": torch.__version__, "cuda": torch.version.cuda, "quick": a.quick}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        autocast = ["--amp", "--cases", "train_cam,train_wavecam,train_irn,make_wavecam,train_seg,make_seg"]
        for key, extra in (("float32", []), ("bf16", autocast)):
            out = tmp / f"passes_{key}.json"
            report[f"passes_{key}_wall_s"] = run([*bench, *extra, "--json", str(out)], tmp / f"passes_{key}.log", 400)
            report[f"passes_{key}"] = json.loads(out.read_text())
            print((tmp / f"passes_{key}.log").read_text(), flush=True)
        report["chain"] = chain(tmp, a.device, a.quick, 300)
    report["projection"] = project(report["passes_float32"])
    report["total_wall_s"] = time.perf_counter() - started
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(report["projection"]["text"])
    print(f"gpu_check: {report['total_wall_s']:.0f} s, wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
