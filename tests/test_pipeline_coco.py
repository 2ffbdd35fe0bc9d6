"""Both command lines of run_wavecam_coco.py on a tiny synthetic COCO 2014 root: the same pass
modules as VOC, with COCO's 80 classes and defaults."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wavecam.data.coco import COCO2014
from wavecam.io import load_cam, load_checkpoint

from pipeline import build_parser, finalize, main

RUNNER = Path(__file__).resolve().parents[1] / "multi_stage" / "run_wavecam_coco.py"
TINY = ("--pretrained none --num_workers 0 --cam_crop_size 64 --cam_resize_long 56 72 --cam_batch_size 4 "
        "--wavecam_batch_size 4 --cam_num_epoches 1 --wavecam_num_epoches 1 --irn_crop_size 64 --irn_batch_size 4 "
        "--irn_num_epoches 1 --irn_path_radius 5 --cam_scales 1.0 --sgd_momentum 0.9 --cam_learning_rate 0.01")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    from wavecam.data.synthetic import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), n_train=16, n_val=8, size=64, seed=0)


def test_coco_defaults_are_the_papers():
    a = finalize(build_parser("coco").parse_args([]))
    assert (a.cam_eval_thres, a.wavecam_loss_weight, a.wavecam_batch_size, a.sem_seg_bg_thres) == (0.15, 0.1, 6, 0.25)
    assert a.chainer_eval_set == "val" and a.mscoco_root


def test_both_command_lines_on_synthetic_coco(coco_root, tmp_path):
    ws = tmp_path / "ws"
    # Trained and evaluated on val here, so that the evaluation finds CAMs and pseudo labels for its images.
    common = (f"--mscoco_root {coco_root} --work_space {ws} {TINY} --train_list val_all --infer_list val "
              "--chainer_eval_set val").split()
    first = "--train_cam_pass True --train_wavecam_pass True --make_wavecam_pass True --eval_cam_pass True"
    second = "--cam_to_ir_label_pass True --train_irn_pass True --make_sem_seg_pass True --eval_sem_seg_pass True"
    assert main("coco", [*common, *first.split()]) == 0
    assert main("coco", [*common, *second.split()]) == 0

    cam_sd = load_checkpoint(ws / "res50_cam.pth")
    assert cam_sd["classifier.weight"].shape[0] == 80
    pred = load_checkpoint(ws / "wavecam_weight" / "wavecam_predictor_1.pth")
    assert pred["wave.w1.weight"].shape[:2] == (80, 80), "the wave module is built for COCO's 80 classes"
    val = COCO2014(coco_root).split("val")
    cam = load_cam(ws / "cam_mask" / f"{val[0]}.npz")
    assert cam["keys"].max(initial=0) < 80
    for name in ("eval_cam", "eval_sem_seg"):
        result = json.loads((ws / "results" / f"{name}.json").read_text())
        assert len(result["iou"]) == 81 and result["n_images"] == len(val) and result["dataset"] == "coco"
    assert len(list((ws / "sem_seg").glob("*.png"))) == len(val)


def test_missing_annotation_file_is_named(coco_root, tmp_path):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(coco_root, root)
    (root / "annotations" / "instances_val2014.json").unlink()
    proc = subprocess.run([sys.executable, str(RUNNER), "--mscoco_root", str(root), "--work_space", str(tmp_path / "w"),
                           "--eval_cam_pass", "True"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "instances_val2014.json" in proc.stderr
