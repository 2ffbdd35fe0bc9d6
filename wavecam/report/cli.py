"""A report over multi-stage work spaces: the paper's results table, the threshold sweep plot and an
image gallery.

    python -m wavecam.report WS [WS ...] --out DIR [--gallery N] [--names a b ...]

writes DIR/results.md and DIR/results.csv (one row per work space, from its results/*.json: CAM,
ReCAM and WaveCAM work spaces side by side give the paper's baseline rows), DIR/per_class_iou.csv,
DIR/miou_vs_threshold.png and, with --gallery N, DIR/gallery.html with its pictures under
DIR/gallery/. Every number comes from the eval passes' JSON files; only the gallery reads images,
CAMs and labels, from the dataset root and folders those files record. The final segmentation's
column (stage 3, results/eval_seg.json) appears once a work space has that file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from wavecam.engine.cli import run_cli
from wavecam.errors import WavecamError
from wavecam.report.gallery import write_gallery
from wavecam.report.results import load_runs
from wavecam.report.tables import markdown, per_class_rows, plot_sweeps, summary_row, write_csv, write_text


def check_out(out: Path) -> None:
    """--out must be a folder or a path where one can be made; checked before anything is read or
    written, so that a wrong --out costs no work and leaves no half-written report."""
    if out.exists() and not out.is_dir():
        raise WavecamError(f"--out {out}: is a file, not a folder; choose another --out (a new or existing folder)")
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise WavecamError(f"--out {out}: {blocker} is a file, so no folder can be made under it; choose another "
                           "--out (a new or existing folder)")


def report(work_spaces: Sequence[str | Path], out: str | Path, gallery: int = 0,
           names: Sequence[str] | None = None) -> list[Path]:
    """Write the report of `work_spaces` under `out`; return the files written at its top level."""
    if not work_spaces:
        raise WavecamError("give at least one work space")
    out = Path(out)
    check_out(out)
    runs = load_runs(work_spaces, names)
    rows = [summary_row(r) for r in runs]
    write_text(out / "results.md", markdown(runs, rows) + "\n")
    write_csv(out / "results.csv", rows)
    written = [out / "results.md", out / "results.csv"]
    per_class = per_class_rows(runs)
    if per_class:
        write_csv(out / "per_class_iou.csv", per_class)
        written.append(out / "per_class_iou.csv")
    if plot_sweeps(runs, out / "miou_vs_threshold.png"):
        written.append(out / "miou_vs_threshold.png")
    if gallery > 0:
        write_gallery(runs, out, gallery)
        written.append(out / "gallery.html")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wavecam.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work_spaces", nargs="+", metavar="WS", help="multi-stage work spaces (--work_space)")
    p.add_argument("--out", required=True, help="folder for the report")
    p.add_argument("--gallery", type=int, default=0, metavar="N",
                   help="also write gallery.html with N images: best, median and worst by per-image mIoU")
    p.add_argument("--names", nargs="+", help="run names, one per work space (default: the folder names)")
    a = p.parse_args(argv)

    def job() -> None:
        written = report(a.work_spaces, a.out, a.gallery, a.names)
        print(Path(a.out, "results.md").read_text())
        print("wrote " + ", ".join(str(w) for w in written))

    return run_cli(job, "--out")
