"""The README's first command at toy size: the demo runs both command lines, prints its table and
writes the report."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wavecam.multi_stage.workspace import settings_path

DEMO = Path(__file__).resolve().parents[1] / "multi_stage" / "run_demo.py"


@pytest.mark.slow
def test_quick_demo_runs_the_chain(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(DEMO), "--quick", "--out", str(tmp_path / "demo"), "--workers", "0"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("CAM seeds", "IRN pseudo labels (from CAM)", "stage-3 DeepLab-v2 (from CAM)", "WaveCAM seeds",
                "IRN pseudo labels (from WaveCAM)"):
        assert row in proc.stdout
    out = tmp_path / "demo"
    assert (out / "report" / "results.md").is_file() and (out / "report" / "gallery.html").is_file()
    # Every pass starts from the pretraining's file, as the paper's start from ImageNet's.
    pretrained = list((out / "pretrained").glob("resnet18_scenes*.pth"))
    assert len(pretrained) == 1
    # Each work space's latest run: IRN on the WaveCAM seeds, stage 3 on the CAM ones. Its recipe's
    # settings and the demo's own both reach the passes.
    wave = yaml.safe_load(settings_path(out / "ws_wavecam").read_text())
    assert (wave["exp_times"], wave["irn_path_radius"], wave["irn_learning_rate"]) == (1, 5, 0.05)
    assert wave["pretrained"] == str(pretrained[0]) and wave["make_sem_seg_pass"] is True
    seg = yaml.safe_load(settings_path(out / "ws_cam").read_text())
    assert seg["seg_pretrained"] == str(pretrained[0]) and seg["seg_block"] == "basic"
    assert (seg["seg_warmup_iters"], seg["seg_crf_bi"], seg["seg_batch_size"]) == (2, [4.0, 67.0, 15.0], 8)
    assert seg["train_seg_pass"] is True and seg["cam_eval_thres"] == 0.5
    assert "'exp_times': 1" in (out / "ws_wavecam" / "sample_train_eval.log").read_text()
