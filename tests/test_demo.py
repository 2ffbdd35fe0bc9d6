"""The README's first command at toy size: the demo runs both command lines, prints its table and
writes the report."""

import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "multi_stage" / "run_demo.py"


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
    log = (out / "ws_wavecam" / "sample_train_eval.log").read_text()
    assert "'exp_times': 1" in log and "'irn_path_radius': 5" in log
    assert f"'pretrained': '{pretrained[0]}'" in log
    seg_log = (out / "ws_cam" / "sample_train_eval.log").read_text()
    assert f"'seg_pretrained': '{pretrained[0]}'" in seg_log and "'seg_block': 'basic'" in seg_log
    assert "'seg_warmup_iters': 2" in seg_log and "'seg_crf_bi': [4.0, 67.0, 15.0]" in seg_log
