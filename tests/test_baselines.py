"""bench/baselines.py at toy sizes: CAM, ReCAM and WaveCAM work spaces from one script, printed as
the rows of one report table."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wavecam.io import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "baselines.py"


@pytest.mark.slow
def test_quick_baselines_give_three_rows(tmp_path):
    out = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--workers", "0"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("# Results"):]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][2:]  # header, rule
    assert rows == ["CAM", "ReCAM", "WaveCAM"]

    with open(out / "report" / "results.csv") as f:
        results = {r["run"]: r for r in csv.DictReader(f)}
    for name in ("CAM", "ReCAM", "WaveCAM"):
        assert 0 <= float(results[name]["seeds_miou"]) <= 1 and 0 <= float(results[name]["irn_miou"]) <= 1
    # The two fine-tuned methods: their own files, from the one CAM network, with the same settings.
    assert set(load_checkpoint(out / "ws_recam" / "recam_weight" / "recam_predictor_1.pth")) == {"classifier.weight"}
    assert "wave.w1.weight" in load_checkpoint(out / "ws_wavecam" / "wavecam_weight" / "wavecam_predictor_1.pth")
    assert not (out / "ws_recam" / "res50_cam.pth").exists() and not (out / "ws_wavecam" / "res50_cam.pth").exists()
    for ws in ("ws_recam", "ws_wavecam"):
        log = (out / ws / "sample_train_eval.log").read_text()
        assert str(out / "ws_cam" / "res50_cam.pth") in log
        assert "'recam_num_epoches': 1, 'recam_learning_rate': 0.0005" in log
        assert "'wavecam_num_epoches': 1, 'wavecam_learning_rate': 0.0005" in log
        # every work space starts from the demo's pretraining, as the paper's from ImageNet
        assert f"'pretrained': '{next((out / 'pretrained').glob('resnet18_scenes*.pth'))}'" in log
