"""A pass killed part-way and run again ends with exactly what an uninterrupted run writes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_killed_when

from wavecam.io import load_cam, load_checkpoint

pytestmark = pytest.mark.slow  # passes in subprocesses, killed with SIGKILL

RUNNER = Path(__file__).resolve().parents[1] / "multi_stage" / "run_wavecam_voc.py"
TINY = ("--pretrained none --num_workers 0 --cam_crop_size 48 --cam_resize_long 40 56 --cam_batch_size 4 "
        "--cam_num_epoches 3 --sgd_momentum 0.9 --cam_learning_rate 0.01 --cam_scales 1.0 --seed 3").split()


def command(root, ws, *passes):
    return [sys.executable, str(RUNNER), "--voc12_root", str(root), "--work_space", str(ws), *TINY, *passes]


def finished(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.npz") if not p.name.startswith(".")]


def test_train_cam_killed_after_an_epoch_resumes_to_identical_weights(voc_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    passes = ["--train_cam_pass", "True"]
    subprocess.run(command(voc_root, tmp_path / "whole", *passes), env=env, check=True, capture_output=True)

    ws = tmp_path / "killed"
    resume = ws / "resume" / "train_cam.pth"
    run_killed_when(command(voc_root, ws, *passes), resume.exists, env)
    assert not (ws / "res50_cam.pth").exists()
    subprocess.run(command(voc_root, ws, *passes), env=env, check=True, capture_output=True)

    whole = load_checkpoint(tmp_path / "whole" / "res50_cam.pth")
    resumed = load_checkpoint(ws / "res50_cam.pth")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    assert not resume.exists(), "the resume state is removed once the weights are written"


def test_make_cam_killed_part_way_redoes_only_what_is_missing(voc_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(voc_root, tmp_path / "whole", "--train_cam_pass", "True", "--make_cam_pass", "True",
                           "--cam_num_epoches", "1"), env=env, check=True, capture_output=True)
    ws = tmp_path / "killed"
    ws.mkdir()
    (ws / "res50_cam.pth").symlink_to(tmp_path / "whole" / "res50_cam.pth")
    out = ws / "cam_mask"
    run_killed_when(command(voc_root, ws, "--make_cam_pass", "True"),
                    lambda: out.is_dir() and len(finished(out)) >= 3, env)
    # The kill may have left a half-written temporary file; only finished outputs count.
    done_before = {p.name: p.stat().st_mtime_ns for p in finished(out)}
    subprocess.run(command(voc_root, ws, "--make_cam_pass", "True"), env=env, check=True, capture_output=True)

    expected = sorted(p.name for p in (tmp_path / "whole" / "cam_mask").glob("*.npz"))
    assert sorted(p.name for p in finished(out)) == expected
    assert not list(out.glob(".*.tmp*")), "no temporary file is left behind"
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was finished and must not be redone"
    for name in expected:
        a, b = load_cam(tmp_path / "whole" / "cam_mask" / name), load_cam(out / name)
        for key in ("keys", "cam", "high_res"):
            np.testing.assert_array_equal(a[key], b[key])
