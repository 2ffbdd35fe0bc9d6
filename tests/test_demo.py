"""The README's first command at toy size: the demo runs the proxy's chain for CAM and WaveCAM, prints
its table and each stage's time, and writes the report."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wavecam.multi_stage.workspace import settings_path
from wavecam.proxy import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "multi_stage" / "run_demo.py"
RECIPE = ROOT / "multi_stage" / "configs" / "proxy_demo.yaml"


def _row_names(text: str) -> list[str]:
    """The first column of a printed table's rows and stage lines: what they are, not their numbers."""
    names = []
    for line in text.splitlines():
        head = line.split("  ")[0].strip()
        if head and line[:1].isalpha() and not head.startswith(("labels", "(mIoU", "seconds per")):
            names.append(" ".join(w for w in head.split() if w not in ("train", "val")))
    return names


def _readme_demo_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### What `make demo` prints"):]
    return section.split("```")[1]


@pytest.mark.slow
def test_quick_demo_runs_the_chain(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(DEMO), "--quick", "--stage3", "--out", str(tmp_path / "demo"),
                           "--workers", "0"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.rindex("\nlabels ") + 1:]
    for row in ("CAM seeds", "WaveCAM seeds", "IRN labels from CAM", "stage 3 from CAM"):
        assert row in table
    assert "ReCAM" not in table and "IRN labels from WaveCAM" not in table  # the latter with --irn-wavecam
    for stage in ("data", "pretrain", "CAM seeds", "IRN from CAM", "WaveCAM seeds", "stage 3 from CAM", "report",
                  "total"):
        assert f"\n{stage} " in table
    # The README shows what the demo prints: the same rows and stages, in the same order (--stage3 adds its
    # own, and the rows on val it is compared with).
    printed = _row_names("\n".join(line for line in table[:table.index("\nwork spaces:")].splitlines()
                                   if "stage 3" not in line and " val " not in line))
    assert printed == _row_names(_readme_demo_block())
    out = tmp_path / "demo"
    assert (out / "report" / "results.md").is_file() and (out / "report" / "gallery.html").is_file()
    # Every pass starts from the pretraining's file (in the user's cache), as the paper's from ImageNet's.
    pretrained = list((Path(os.environ["WAVECAM_CACHE"]) / "pretrained").glob("resnet18_proxy_scenes*.pth"))
    assert len(pretrained) == 1
    # The recipe's settings reach the passes (the toy sizes change the schedules, not these).
    recipe = load_recipe(RECIPE)
    wave = yaml.safe_load(settings_path(out / "seed0" / "ws_wavecam").read_text())
    for key in ("exp_times", "irn_path_radius", "conf_fg_thres"):
        assert wave[key] == recipe.passes[key]
    assert wave["pretrained"] == str(pretrained[0]) and wave["make_wavecam_pass"] is True
    assert wave["wavecam_learning_rate"] == recipe.fine_tune["learning_rate"]
    seg = yaml.safe_load(settings_path(out / "seed0" / "ws_cam").read_text())
    assert seg["seg_pretrained"] == str(pretrained[0]) and seg["seg_block"] == "basic"
    assert seg["train_seg_pass"] is True and seg["seg_eval_set"] == "val"
