"""Every pass of the multi-stage pipeline on a tiny synthetic VOC root, driven by the paper's
command lines (at toy sizes), and the files of the design they must write."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wavecam.io import load_cam, load_checkpoint, load_png
from wavecam.multi_stage.runner import main

pytestmark = pytest.mark.slow  # the whole pipeline, and its runner in a subprocess

TINY = ("--pretrained none --num_workers 0 --cam_crop_size 64 --cam_resize_long 56 72 --cam_batch_size 4 "
        "--cam_num_epoches 1 --wavecam_num_epoches 2 --irn_crop_size 64 --irn_batch_size 4 --irn_num_epoches 1 "
        "--irn_path_radius 5 --chainer_eval_set train --infer_list train --cam_scales 1.0 0.5 "
        "--cam_eval_sweep 0.1 0.3 0.1 --sgd_momentum 0.9 --cam_learning_rate 0.01")
FIRST = "--train_cam_pass True --train_wavecam_pass True --make_wavecam_pass True --eval_cam_pass True"
SECOND = "--cam_to_ir_label_pass True --train_irn_pass True --make_sem_seg_pass True --eval_sem_seg_pass True"


def run(root, ws, *flags):
    argv = f"--voc12_root {root} --work_space {ws} {TINY} {' '.join(flags)}".split()
    assert main("voc", argv) == 0


@pytest.fixture(scope="module")
def workspace(voc_root, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    run(voc_root, ws, FIRST)
    run(voc_root, ws, SECOND)
    return ws


def ids_of(root, split):
    from wavecam.data.voc import VOC12

    return VOC12(root).split(split)


def test_first_command_writes_weights_and_cams(workspace, voc_root):
    assert set(load_checkpoint(workspace / "res50_cam.pth")) >= {"classifier.weight", "stage1.0.weight"}
    for ep in (1, 2):
        net = load_checkpoint(workspace / "wavecam_weight" / f"res50_wavecam_{ep}.pth")
        pred = load_checkpoint(workspace / "wavecam_weight" / f"wavecam_predictor_{ep}.pth")
        assert not any(k.startswith("wave.") for k in net)
        assert "classifier.weight" in pred and "wave.tfc_h.weight" in pred
    assert not (workspace / "resume").exists() or not any((workspace / "resume").iterdir())

    train_aug = ids_of(voc_root, "train_aug")
    assert sorted(p.stem for p in (workspace / "cam_mask").glob("*.npz")) == sorted(train_aug)
    cam = load_cam(workspace / "cam_mask" / f"{train_aug[0]}.npz")
    assert cam["keys"].dtype == np.int64 and cam["cam"].dtype == np.float32
    h, w = load_png(voc_root / "SegmentationClassAug" / f"{train_aug[0]}.png").shape
    assert cam["high_res"].shape[1:] == (h, w)
    assert cam["cam"].shape[1:] == ((h + 3) // 4, (w + 3) // 4)
    # Each map is divided by (its maximum + 1e-5), as the reference does.
    assert cam["high_res"].min(initial=0) >= 0 and cam["high_res"].max(initial=0) <= 1

    result = json.loads((workspace / "results" / "eval_cam.json").read_text())
    assert 0 <= result["miou"] <= 1 and len(result["iou"]) == 21
    assert result["n_images"] == len(ids_of(voc_root, "train"))
    assert [r["threshold"] for r in result["sweep"]] == [0.1, 0.2, 0.21, 0.3]
    assert result["best_miou"] == max(r["miou"] for r in result["sweep"])


def test_second_command_writes_labels_and_results(workspace, voc_root):
    train_aug = ids_of(voc_root, "train_aug")
    assert sorted(p.stem for p in (workspace / "ir_label").glob("*.png")) == sorted(train_aug)
    ir = load_png(workspace / "ir_label" / f"{train_aug[0]}.png")
    assert set(np.unique(ir)) <= set(range(21)) | {255}
    irn = load_checkpoint(workspace / "res50_irn.pth")
    assert "fc_edge6.weight" in irn and torch.any(irn["fc_dp7.4.running_mean"] != 0)
    train = ids_of(voc_root, "train")
    assert sorted(p.stem for p in (workspace / "sem_seg").glob("*.png")) == sorted(train)
    result = json.loads((workspace / "results" / "eval_sem_seg.json").read_text())
    assert result["n_images"] == len(train) and len(result["iou"]) == 21
    # 8-bit grayscale, as the reference writes them, so its readers get class indices
    for png in (workspace / "ir_label" / f"{train_aug[0]}.png", workspace / "sem_seg" / f"{train[0]}.png"):
        with Image.open(png) as img:
            assert img.mode == "L", png
    assert (workspace / "sample_train_eval.log").read_text().count("== eval_sem_seg done") == 1


def test_make_cam_baseline_and_rerun_skips(workspace, voc_root, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "res50_cam.pth").symlink_to(workspace / "res50_cam.pth")
    run(voc_root, ws, "--make_cam_pass True --eval_cam_pass True")
    files = sorted((ws / "cam_mask").glob("*.npz"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    run(voc_root, ws, "--make_cam_pass True")
    assert [f.stat().st_mtime_ns for f in files] == mtimes, "a finished image must not be redone"


def test_make_sem_seg_over_processes_equals_in_process_and_resumes(workspace, voc_root, tmp_path):
    # The fixture's sem_seg/ was made in one process (--num_workers 0); on a CPU, workers split the images.
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("res50_irn.pth", "cam_mask"):
        (ws / name).symlink_to(workspace / name)
    in_process = sorted((workspace / "sem_seg").glob("*.png"))
    run(voc_root, ws, "--device cpu --num_workers 2 --make_sem_seg_pass True")
    assert [p.name for p in sorted((ws / "sem_seg").glob("*.png"))] == [p.name for p in in_process]
    for png in in_process:
        np.testing.assert_array_equal(load_png(ws / "sem_seg" / png.name), load_png(png), err_msg=png.name)

    redo = in_process[:2]
    for png in redo:
        (ws / "sem_seg" / png.name).unlink()
    kept = {p: p.stat().st_mtime_ns for p in (ws / "sem_seg").glob("*.png")}
    run(voc_root, ws, "--device cpu --num_workers 2 --make_sem_seg_pass True")
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished image must not be redone"
    for png in redo:
        np.testing.assert_array_equal(load_png(ws / "sem_seg" / png.name), load_png(png), err_msg=png.name)
    assert not list((ws / "sem_seg").glob(".*.tmp*"))  # no temporary file left behind


def test_sem_seg_threshold_sweep_from_kept_scores(workspace, voc_root, tmp_path, capsys):
    """--sem_seg_eval_sweep: labels written without it get their walked scores on the next run (the
    PNGs unchanged), and eval_sem_seg's sweep at --sem_seg_bg_thres is the PNGs' own score."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("res50_irn.pth", "cam_mask"):
        (ws / name).symlink_to(workspace / name)
    (ws / "sem_seg").mkdir()
    for png in (workspace / "sem_seg").glob("*.png"):
        (ws / "sem_seg" / png.name).write_bytes(png.read_bytes())
    sweep = "--sem_seg_eval_sweep 0.1 0.5 0.2 --sem_seg_bg_thres 0.28"
    argv = f"--voc12_root {voc_root} --work_space {ws} {TINY} {sweep} --eval_sem_seg_pass True".split()
    assert main("voc", argv) == 2
    assert "--sem_seg_eval_sweep first" in capsys.readouterr().err

    run(voc_root, ws, sweep, "--make_sem_seg_pass True --eval_sem_seg_pass True")
    train = ids_of(voc_root, "train")
    assert sorted(p.stem for p in (ws / "sem_seg_score").glob("*.npz")) == sorted(train)
    for png in (workspace / "sem_seg").glob("*.png"):
        np.testing.assert_array_equal(load_png(ws / "sem_seg" / png.name), load_png(png), err_msg=png.name)
    result = json.loads((ws / "results" / "eval_sem_seg.json").read_text())
    assert [r["threshold"] for r in result["sweep"]] == [0.1, 0.28, 0.3, 0.5]
    at_main = next(r["miou"] for r in result["sweep"] if r["threshold"] == 0.28)
    assert at_main == pytest.approx(result["miou"], abs=1e-12)
    assert result["best_miou"] == max(r["miou"] for r in result["sweep"])
    miou = [r["miou"] for r in result["sweep"]]
    assert len(set(miou)) > 1, "different thresholds must give different labels"


def test_runner_from_multi_stage_folder_and_bad_root(tmp_path):
    proc = subprocess.run([sys.executable, "run_wavecam_voc.py", "--voc12_root", str(tmp_path / "nonexistent"),
                           "--work_space", str(tmp_path / "ws"), "--eval_cam_pass", "True"],
                          cwd=Path(__file__).parents[1] / "multi_stage", capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: --voc12_root" in proc.stderr and "JPEGImages" in proc.stderr
