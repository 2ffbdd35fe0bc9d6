"""The baseline rows of the paper's tables from one tool: CAM, ReCAM and WaveCAM side by side.

    python bench/baselines.py [--out baselines_output] [--quick]

Writes a synthetic VOC root, trains the CAM network once (`ws_cam`: train_cam, make_cam), then
fine-tunes that res50_cam.pth twice with the same settings, ReCAM (`ws_recam`: train_recam,
make_recam) and WaveCAM (`ws_wavecam`: train_wavecam, make_wavecam), which differ in the wave module
alone. Every work space then runs eval_cam and IRN (cam_to_ir_label, train_irn, make_sem_seg,
eval_sem_seg), and `wavecam.report` writes `<out>/report/results.md` with one row per method: seeds,
IRN pseudo labels and, once stage 3 writes results/eval_seg.json, the final segmentation.

The settings and flags are the demo's (wavecam.demo), for the same reason: no ImageNet
weights offline, so ResNet-18 started from the demo's pretraining on synthetic scenes (its file under
`<out>/pretrained/`, reused by the next run), small images, short schedules, conventional momentum,
and thresholds raised for the broad CAMs of small images. The numbers show that the three rows come
from one tool on one dataset, not the paper's ranking. `--quick` runs toy sizes (the test suite's).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from wavecam.data.synthetic import make_synthetic_voc
from wavecam.demo import backbone_weights, demo_flags, parse, regime_parser
from wavecam.multi_stage.runner import main as pipeline_main
from wavecam.multi_stage.workspace import default_path
from wavecam.report import report

METHODS = (  # (row, work space, the passes that make its CAMs)
    ("CAM", "ws_cam", ("train_cam", "make_cam")),
    ("ReCAM", "ws_recam", ("train_recam", "make_recam")),
    ("WaveCAM", "ws_wavecam", ("train_wavecam", "make_wavecam")),
)
IRN = ("eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg", "eval_sem_seg")


def flags(a, weights: Path | None) -> list[str]:
    """The demo's settings for every work space; ReCAM gets WaveCAM's fine-tuning ones."""
    return [*demo_flags(a, weights), "--recam_num_epoches", str(a.wavecam_epochs),
            "--recam_learning_rate", str(a.wavecam_lr)]


def run(argv: list[str]) -> None:
    code = pipeline_main("voc", argv)
    if code:
        sys.exit(code)


def main_table(results_md: Path) -> str:
    """The report's main table with its caption, without the per-class appendix."""
    text = results_md.read_text()
    return text[:text.index("## Appendix")].rstrip()


def main() -> None:
    a = parse(regime_parser(__doc__, out="baselines_output"))
    a.dataset = "voc"

    start = time.perf_counter()
    out = Path(a.out).resolve()
    root = make_synthetic_voc(out / "voc", n_train=a.n_train, n_val=a.n_val, size=a.size, seed=0)
    common = ["--voc12_root", str(root), *flags(a, backbone_weights(a, out))]
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
