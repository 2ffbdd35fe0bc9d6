"""Stage 3 (train_seg, make_seg, eval_seg): the chain from image labels to the final score, the
ground-truth upper bound learning, resume after a kill, VOC's test layout and bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_killed_when
from PIL import Image

from wavecam.data.voc import VOC12
from wavecam.io import load_checkpoint, load_png
from wavecam.metrics import ConfusionMatrix
from wavecam.multi_stage.runner import main
from wavecam.report import report

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "multi_stage" / "run_wavecam_voc.py"
# A small DeepLab-v2 (one bottleneck per stage), random initialisation, toy crops.
SEG = ("--num_workers 0 --seg_n_blocks 1 1 1 1 --seg_pretrained none --seg_crop_size 48 --seg_batch_size 2 "
       "--seg_iter_size 2 --seg_learning_rate 0.002 --seg_log_iters 2 --seg_save_iters 2 --seed 1").split()
STAGE3 = "--train_seg_pass True --make_seg_pass True --eval_seg_pass True".split()
SEEDS = ("--pretrained none --num_workers 0 --cam_crop_size 64 --cam_resize_long 56 72 --cam_batch_size 4 "
         "--cam_num_epoches 1 --irn_crop_size 64 --irn_batch_size 4 --irn_num_epoches 1 --irn_path_radius 5 "
         "--chainer_eval_set train --infer_list train --cam_scales 1.0 0.5 --sgd_momentum 0.9 "
         "--cam_learning_rate 0.01").split()


def run(root, ws, *flags):
    assert main("voc", ["--voc12_root", str(root), "--work_space", str(ws), *flags]) == 0


@pytest.mark.slow
def test_image_labels_to_the_final_score(voc_root, tmp_path):
    """The two seed command lines and one stage-3 line: pseudo labels in, a scored segmenter out."""
    ws = tmp_path / "ws"
    run(voc_root, ws, *SEEDS, *"--train_cam_pass True --make_cam_pass True --eval_cam_pass True".split())
    run(voc_root, ws, *SEEDS, *("--cam_to_ir_label_pass True --train_irn_pass True --make_sem_seg_pass True "
                                "--eval_sem_seg_pass True").split())
    run(voc_root, ws, *SEEDS, *SEG, "--seg_num_iters", "4", "--seg_train_list", "train", *STAGE3)

    state = load_checkpoint(ws / "res101_seg.pth")
    assert state["base.aspp.0.weight"].shape[0] == 21 and "caffe_convention" in state
    val = sorted(p.stem for p in (voc_root / "JPEGImages").glob("*.jpg")
                 if p.stem in (voc_root / "ImageSets/Segmentation/val.txt").read_text().split())
    for folder in ("val", "val_crf"):
        files = sorted((ws / "seg_pred" / folder).glob("*.png"))
        assert [p.stem for p in files] == val
        with Image.open(files[0]) as img:
            assert img.mode == "L"
    result = json.loads((ws / "results" / "eval_seg.json").read_text())
    assert result["crf"] is True and set(result["variants"]) == {"crf", "no_crf"}
    assert result["miou"] == result["variants"]["crf"]["miou"] and result["n_images"] == len(val)
    assert result["eval_set"] == "val" and len(result["iou"]) == 21
    assert "stage 3" in (ws / "sample_train_eval.log").read_text()  # the per-class table is in the log
    assert not (ws / "resume" / "train_seg.pth").exists()
    report([ws], tmp_path / "report", gallery=0, names=["CAM"])
    assert "seg mIoU" in (tmp_path / "report" / "results.md").read_text()


@pytest.mark.slow
def test_trained_on_ground_truth_it_learns(voc_root, tmp_path):
    """The network can learn the synthetic shapes: 120 steps on the ground truth of 8 images take their
    mIoU to 39% (measured; crops of 32, one scale), against the 7.5% of predicting background
    everywhere. Three times the latter leaves room for another CPU's rounding while a network that
    does not learn (a lost gradient, labels not reaching the loss) stays at it."""
    ws = tmp_path / "ws"
    run(voc_root, ws, *SEG, "--seg_label_dir", "gt", "--seg_train_list", "val", "--seg_eval_set", "val",
        "--seg_num_iters", "120", "--seg_batch_size", "8", "--seg_iter_size", "1", "--seg_learning_rate", "0.01",
        "--seg_crop_size", "32", "--seg_scales", "1.0", "--seg_crf", "False", "--seg_log_iters", "40",
        "--seg_save_iters", "1000", "--seed", "0", *STAGE3)
    result = json.loads((ws / "results" / "eval_seg.json").read_text())
    source = VOC12(voc_root)
    background = ConfusionMatrix(21)
    for i in source.split("val"):
        gt = source.load_gt(i)
        background.update(np.zeros_like(gt), gt)
    assert result["miou"] > 3 * background.miou(), (result["miou"], background.miou())


@pytest.mark.slow
def test_train_seg_killed_resumes_to_identical_weights(voc_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(ws):
        return [sys.executable, str(RUNNER), "--voc12_root", str(voc_root), "--work_space", str(ws), *SEG,
                "--seg_label_dir", "gt", "--seg_num_iters", "16", "--seg_save_iters", "4", "--train_seg_pass", "True"]

    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)
    ws = tmp_path / "killed"
    state = ws / "resume" / "train_seg.pth"
    run_killed_when(command(ws), state.exists, env)
    assert not (ws / "res101_seg.pth").exists()
    subprocess.run(command(ws), env=env, check=True, capture_output=True)
    whole, resumed = load_checkpoint(tmp_path / "whole" / "res101_seg.pth"), load_checkpoint(ws / "res101_seg.pth")
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    assert not state.exists()


@pytest.mark.slow
def test_voc_test_images_in_the_servers_layout(voc_root, tmp_path):
    test_root = tmp_path / "VOC2012_test"
    (test_root / "ImageSets" / "Segmentation").mkdir(parents=True)
    shutil.copytree(voc_root / "JPEGImages", test_root / "JPEGImages")
    ids = sorted(p.stem for p in (test_root / "JPEGImages").glob("*.jpg"))[:3]
    (test_root / "ImageSets" / "Segmentation" / "test.txt").write_text("\n".join(ids) + "\n")
    ws = tmp_path / "ws"
    run(voc_root, ws, *SEG, "--seg_label_dir", "gt", "--seg_num_iters", "2", "--voc12_test_root", str(test_root),
        "--train_seg_pass", "True", "--make_seg_pass", "True")
    server = ws / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert sorted(p.stem for p in server.glob("*.png")) == ids
    for i in ids:
        with Image.open(server / f"{i}.png") as img:
            assert img.mode == "P"  # indexed with VOC's colours, as the server expects
        crf = load_png(ws / "seg_pred" / "test_crf" / f"{i}.png")
        np.testing.assert_array_equal(load_png(server / f"{i}.png"), crf)


def test_missing_pseudo_labels_and_a_foreign_checkpoint_are_one_line(voc_root, tmp_path, capsys):
    ws = tmp_path / "ws"
    assert main("voc", ["--voc12_root", str(voc_root), "--work_space", str(ws), *SEG, "--seg_num_iters", "2",
                        "--train_seg_pass", "True"]) == 2
    err = capsys.readouterr().err
    assert "no label map in" in err and "--make_sem_seg_pass" in err
    ws.mkdir(exist_ok=True)
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, ws / "res101_seg.pth")
    assert main("voc", ["--voc12_root", str(voc_root), "--work_space", str(ws), *SEG, "--make_seg_pass", "True"]) == 2
    err = capsys.readouterr().err
    assert "res101_seg.pth" in err and "conv.weight" in err and "Traceback" not in err


@pytest.mark.parametrize("t", [0, 9, 10, 19, 20])
def test_poly_rate_changes_every_lr_decay_steps_as_deeplab_pytorch(t):
    from wavecam.multi_stage.passes.train_seg import poly_every

    expected = (1 - 10 * (t // 10) / 100) ** 0.9
    assert poly_every(100, 0.9, 10)(t) == pytest.approx(expected)
    assert poly_every(100, 0.9, 10)(t) == poly_every(100, 0.9, 10)(t - t % 10)


def test_warmup_ramps_the_poly_rate_linearly_then_leaves_it():
    from wavecam.multi_stage.passes.train_seg import poly_every

    warm, plain = poly_every(100, 0.9, 1, warmup=20), poly_every(100, 0.9, 1)
    assert warm(0) == pytest.approx(plain(0) / 20)
    assert warm(9) == pytest.approx(plain(9) / 2)
    assert [warm(t) for t in (19, 20, 50, 99)] == pytest.approx([plain(t) for t in (19, 20, 50, 99)])


def test_crf_flags_default_to_deeplab_pytorchs_settings():
    from wavecam.labels.crf import DEEPLAB_CRF
    from wavecam.multi_stage.flags import build_parser
    from wavecam.multi_stage.passes.make_seg import crf_settings

    args = build_parser("voc").parse_args([])
    assert crf_settings(args) == DEEPLAB_CRF
    args = build_parser("voc").parse_args("--seg_crf_iters 5 --seg_crf_bi 5 50 4".split())
    assert crf_settings(args) == {**DEEPLAB_CRF, "t": 5, "bi_w": 5, "bi_xy_std": 50, "bi_rgb_std": 4}


@pytest.mark.slow
def test_two_processes_train_seg_as_one_accumulating(voc_root, tmp_path):
    """torchrun with 2 gloo processes, each forwarding 2 crops, takes the step of one process
    accumulating 2 micro-batches of 2 (the global batch of 4 either way): equal to float rounding,
    which stays far below what training moved (a rank with the wrong samples or a gradient summed
    instead of averaged would differ by a sizeable part of the update)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = [str(RUNNER), "--voc12_root", str(voc_root), *SEG, "--seg_label_dir", "gt", "--seg_num_iters", "2",
             "--seg_learning_rate", "0.001", "--channels_last", "False", "--train_seg_pass", "True"]
    subprocess.run([sys.executable, *flags, "--work_space", str(tmp_path / "one")], env=env, check=True,
                   capture_output=True, timeout=600)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *flags,
                           "--work_space", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (load_checkpoint(tmp_path / ws / "res101_seg.pth") for ws in ("one", "two"))
    torch.manual_seed(1)  # the runs' initial weights: --seed 1, random initialisation
    from wavecam.models.deeplab import build_seg_network

    init = build_seg_network(n_blocks=(1, 1, 1, 1)).state_dict()
    head = [k for k in one if k.startswith("base.aspp.") and k.endswith("weight")]
    update = max((one[k] - init[k]).abs().max().item() for k in head)
    gap = max((two[k] - one[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert update > 1e3 * max(gap, 1e-12), f"training moved the head by {update:g}, the runs differ by {gap:g}"
