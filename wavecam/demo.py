"""The README's first command: the proxy benchmark's chain, reduced to a few minutes on two CPU cores.

One seed of the proxy (wavecam.proxy) with the reduced recipe multi_stage/configs/proxy_demo.yaml:
a synthetic VOC root in the proxy style, the pretraining that plays ImageNet's part (kept under the
user's cache and reused by the next run), then the paper's command lines in `ws_cam` (train_cam,
make_cam, eval_cam; IRN on those seeds) and `ws_wavecam` (train_wavecam from the CAM network,
make_wavecam, eval_cam; with `--irn-wavecam`, IRN on those seeds). It prints the table of every label
set and each stage's time, and writes the report with its gallery under `<out>/report/`. `--stage3` adds stage 3 on the
CAM -> IRN labels; `bench/proxy.py` runs the whole benchmark (ReCAM, stage 3 on both, three seeds).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from wavecam.proxy import TOY_CHANGES, load_recipe, run_seed, table, times_table, with_changes
from wavecam.report import report

# The demo's recipes live with the paper's, in the front doors' folder of the (editable) checkout.
RECIPES = Path(__file__).resolve().parents[1] / "multi_stage" / "configs"
DEMO_RECIPE = RECIPES / "proxy_demo.yaml"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--recipe", default=str(DEMO_RECIPE), help="a proxy recipe (multi_stage/configs/proxy*.yaml)")
    p.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                   help="change the recipe, e.g. passes.cam_num_epoches=10 pretrain.steps=0 (random weights)")
    p.add_argument("--seed", type=int, default=0, help="draws the data, the pretraining and every pass's shuffling")
    p.add_argument("--irn-wavecam", action="store_true", help="add IRN on the WaveCAM seeds")
    p.add_argument("--stage3", action="store_true", help="add stage 3 (DeepLab-v2) on the CAM -> IRN labels")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--quick", action="store_true", help="toy sizes (the test suite's): shows the chain runs, "
                   "not that it works")
    a = p.parse_args(argv)

    start = time.perf_counter()
    out = Path(a.out).resolve()
    recipe = with_changes(load_recipe(a.recipe), [*(TOY_CHANGES if a.quick else []), *a.set])
    summary = run_seed(recipe, a.seed, out, methods=("cam", "wavecam"), irn_from=("cam", "wavecam") if a.irn_wavecam
                       else ("cam",), stage3_from=("cam",) if a.stage3 else (), workers=a.workers)
    seed_dir = out / f"seed{a.seed}"
    work_spaces = [seed_dir / "ws_cam", seed_dir / "ws_wavecam"]
    reporting = time.perf_counter()
    report(work_spaces, out / "report", gallery=9, names=["CAM", "WaveCAM"])
    summary["times"]["report"] = time.perf_counter() - reporting
    print("\n" + table([summary]))
    print(f"\nseconds per stage:\n{times_table(summary)}")
    print(f"\nwork spaces: {work_spaces[0]} and {work_spaces[1]}")
    print(f"report: {out / 'report' / 'results.md'}, gallery: {out / 'report' / 'gallery.html'}")
    print(f"total {time.perf_counter() - start:.0f} s")
