"""The proxy benchmark: CAM, ReCAM and WaveCAM, IRN on each, stage 3 on CAM's and WaveCAM's, over
seeds of the whole chain, in a regime calibrated on the published baselines (docs/proxy.md).

    python bench/proxy.py [--seeds 0 1 2] [--out proxy_output] [--recipe FILE] [--set SECTION.KEY=VALUE ...]
    python bench/proxy.py --table-only --out proxy_output     # merge the seeds already run

Each seed runs in `<out>/seed<k>/` and writes its summary there; the table printed at the end merges
every seed found under `<out>`, so the seeds may run as separate commands (in one folder). A seed
already summarised is not run again (delete its folder to rerun it), and one summarised under
another recipe is refused: a table merges the seeds of one recipe.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wavecam.engine.cli import run_cli
from wavecam.errors import WavecamError
from wavecam.proxy import (
    METHODS,
    load_recipe,
    load_summaries,
    recipe_changes,
    run_seed,
    table,
    times_table,
    with_changes,
)

RECIPE = Path(__file__).resolve().parents[1] / "multi_stage" / "configs" / "proxy.yaml"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="proxy_output")
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                   help="change the recipe (e.g. data.size=128 passes.cam_num_epoches=10); the summary records it")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--stage3-from", nargs="*", choices=METHODS, default=["cam", "wavecam"])
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--table-only", action="store_true", help="print the table of the seeds run so far")
    a = p.parse_args(argv)

    out = Path(a.out)
    if not a.table_only:
        recipe = with_changes(load_recipe(a.recipe), a.set)
        summaries = load_summaries(out)
        for s in summaries:  # refused before a seed runs, not after its half hour
            changed = recipe_changes(s, recipe)
            if changed:
                folder = out / f"seed{s['seed']}"
                raise WavecamError(f"{folder} was run with another recipe ({', '.join(changed[:4])}"
                                   f"{' ...' if len(changed) > 4 else ''}): delete it to run that seed with this "
                                   "one, or give this recipe another --out")
        done = {s["seed"] for s in summaries}
        for seed in a.seeds:
            if seed in done:
                print(f"seed {seed}: summarised already ({out / f'seed{seed}' / 'summary.json'})")
                continue
            summary = run_seed(recipe, seed, out, tuple(a.methods), tuple(a.stage3_from), a.workers)
            print(f"\nseed {seed}, seconds per stage:\n{times_table(summary)}")
    print("\n" + table(load_summaries(out)))


if __name__ == "__main__":
    sys.exit(run_cli(main, "--out"))
