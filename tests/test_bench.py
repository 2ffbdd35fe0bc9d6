"""The benchmark scripts run: bench/gpu_check.py at toy sizes on the CPU goes through every step the
GPU check takes (each pass's benchmark against its plain formulation, float32 and autocast, the
multi-stage chain, the projection) and writes one JSON file. Their figures are not checked here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_at_toy_sizes(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    passes = {row["pass"]: row for row in report["passes_float32"]["rows"]}
    assert set(passes) == {"train_cam", "train_wavecam", "train_irn", "make_wavecam", "cam_to_ir_label",
                           "make_sem_seg", "eval", "train_seg", "make_seg"}
    for row in passes.values():
        assert row["ours"]["seconds"] > 0 and row["plain"]["seconds"] > 0 and row["ours"]["peak_mb"] > 0
    # Ours and the plain formulation compute the same thing.
    assert passes["eval"]["outputs"] == "equal"
    assert passes["cam_to_ir_label"]["outputs"].startswith("labels 100.00% equal")
    assert passes["make_sem_seg"]["outputs"].startswith("labels 100.00% equal")
    assert passes["make_seg"]["outputs"].startswith("labels 100.00% equal")
    assert {row["pass"] for row in report["passes_bf16"]["rows"]} == {"train_cam", "train_wavecam", "train_irn",
                                                                     "make_wavecam", "train_seg", "make_seg"}
    chain = report["chain"]
    assert set(chain["pass_s"]) >= {"train_cam", "train_wavecam", "make_wavecam", "eval_cam", "cam_to_ir_label",
                                    "train_irn", "make_sem_seg", "eval_sem_seg", "train_seg", "make_seg", "eval_seg"}
    assert 0 <= chain["miou"]["eval_sem_seg"] <= 1 and 0 <= chain["miou"]["eval_seg"] <= 1
    assert report["projection"]["total_s"] > 0 and "train_cam" in report["projection"]["text"]
    assert {"train_seg", "make_seg", "eval_seg"} <= set(report["projection"]["seconds"])
