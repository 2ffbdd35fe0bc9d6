"""Both command lines of run_wavecam_coco.py on a tiny synthetic COCO 2014 root, with COCO's
default lists, thresholds and policies: the same pass modules as VOC, computing what ReCAM's
step_coco computes (train2014 throughout, every image of it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wavecam.data.coco import COCO2014
from wavecam.data.datasets import InferenceDataset
from wavecam.io import load_cam, load_checkpoint, load_png, save_checkpoint
from wavecam.labels.cam import multiscale_cam_batch
from wavecam.models import CAMNet, ClassPredictor
from wavecam.models.cam import load_cam_weights
from wavecam.multi_stage.flags import build_parser, finalize
from wavecam.multi_stage.runner import main

RUNNER = Path(__file__).resolve().parents[1] / "multi_stage" / "run_wavecam_coco.py"
# Sizes and speed only: every list, threshold, policy and kernel is the COCO default.
TINY = ("--pretrained none --num_workers 0 --cam_network resnet18 --irn_network resnet18 --cam_crop_size 64 "
        "--cam_resize_long 56 72 --cam_batch_size 4 --wavecam_batch_size 4 --cam_num_epoches 1 "
        "--wavecam_num_epoches 1 --irn_crop_size 64 --irn_batch_size 4 --irn_num_epoches 1 --irn_path_radius 5 "
        "--cam_scales 1.0")
FIRST = "--train_cam_pass True --train_wavecam_pass True --make_wavecam_pass True --eval_cam_pass True"
SECOND = "--cam_to_ir_label_pass True --train_irn_pass True --make_sem_seg_pass True --eval_sem_seg_pass True"


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """The synthetic root with the annotations of one train image removed: COCO has a few hundred
    such images, and ReCAM's splits keep them (label all zero, all background)."""
    from wavecam.data.synthetic import make_synthetic_coco

    root = make_synthetic_coco(tmp_path_factory.mktemp("coco"), n_train=12, n_val=4, size=64, seed=0)
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    bare = data["images"][1]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != bare]
    path.write_text(json.dumps(data))
    return root


def test_coco_defaults_are_the_papers():
    a = finalize(build_parser("coco").parse_args([]))
    assert (a.cam_eval_thres, a.wavecam_loss_weight, a.wavecam_batch_size, a.sem_seg_bg_thres) == (0.15, 0.1, 6, 0.25)
    assert (a.train_list, a.val_list, a.infer_list, a.chainer_eval_set) == ("train", "val", "train", "train")
    assert (a.coco_split_images, a.coco_crowd, a.wavecam_kernel) == ("all", "background", "classifier")
    # run_sample_coco.py's ReCAM flags; its make_recam takes the classifier alone.
    assert (a.recam_num_epoches, a.recam_learning_rate, a.recam_loss_weight, a.recam_batch_size) == (4, 0.0005, 0.1, 6)
    assert (a.recam_kernel, a.recam_weight_dir) == ("classifier", os.path.join("result_default", "recam_weight"))
    assert a.mscoco_root
    voc = finalize(build_parser("voc").parse_args([]))
    assert (voc.wavecam_kernel, voc.recam_kernel) == ("product", "product")


@pytest.mark.slow
def test_both_command_lines_with_default_lists(coco_root, tmp_path):
    ws = tmp_path / "ws"
    common = f"--mscoco_root {coco_root} --work_space {ws} {TINY}".split()
    assert main("coco", [*common, *FIRST.split()]) == 0
    assert main("coco", [*common, *SECOND.split()]) == 0

    source = COCO2014(coco_root)
    train = source.split("train")
    assert train == source.split("train_all")
    labels = source.labels(train)
    bare = [i for i, label in zip(train, labels) if not label.any()]
    assert len(bare) == 1

    cam_sd = load_checkpoint(ws / "res50_cam.pth")
    assert cam_sd["classifier.weight"].shape[0] == 80
    pred = load_checkpoint(ws / "wavecam_weight" / "wavecam_predictor_1.pth")
    assert pred["wave.w1.weight"].shape[:2] == (80, 80), "the wave module is built for COCO's 80 classes"
    for folder, suffix in (("cam_mask", ".npz"), ("ir_label", ".png"), ("sem_seg", ".png")):
        assert sorted(p.stem for p in (ws / folder).glob(f"*{suffix}")) == train, folder
    empty = load_cam(ws / "cam_mask" / f"{bare[0]}.npz")
    assert empty["keys"].size == 0 and empty["high_res"].shape[0] == 0 and empty["cam"].shape[0] == 0
    for folder in ("ir_label", "sem_seg"):
        assert not load_png(ws / folder / f"{bare[0]}.png").any(), folder
    for name in ("eval_cam", "eval_sem_seg"):
        result = json.loads((ws / "results" / f"{name}.json").read_text())
        assert len(result["iou"]) == 81 and result["n_images"] == len(train) and result["dataset"] == "coco"
        assert (result["eval_set"], result["coco_split_images"], result["coco_crowd"]) == ("train", "all", "background")

    # The default kernel on COCO: the fine-tuned network's classifier alone.
    image_id = next(i for i, label in zip(train, labels) if label.any())
    model = CAMNet(80, arch="resnet18").eval()
    load_cam_weights(model, ws / "wavecam_weight" / "res50_wavecam_1.pth", cam_only=True)
    item = InferenceDataset(source, [image_id])[0]
    [(_, high_res)] = multiscale_cam_batch(model.features, item["img"][None], model.classifier.weight,
                                           [torch.nonzero(item["label"]).flatten()], scales=(1.0,))
    np.testing.assert_allclose(load_cam(ws / "cam_mask" / f"{image_id}.npz")["high_res"], high_res.numpy(),
                               atol=1e-4)


@pytest.mark.parametrize("kernel", ["classifier", "product"])
@pytest.mark.parametrize("method", ["recam", "wavecam"])
def test_make_pass_kernel(coco_root, tmp_path, monkeypatch, method, kernel):
    import importlib

    from wavecam.multi_stage.workspace import fine_tune_checkpoints

    make_pass = importlib.import_module(f"wavecam.multi_stage.passes.make_{method}")
    args = finalize(build_parser("coco").parse_args(
        f"--mscoco_root {coco_root} --work_space {tmp_path} --cam_network resnet18 --{method}_num_epoches 2 "
        f"--{method}_kernel {kernel}".split()))
    net_path, predictor_path = fine_tune_checkpoints(args, method)
    assert net_path == str(tmp_path / f"{method}_weight" / f"res50_{method}_2.pth")
    torch.manual_seed(0)
    fine_tuned = CAMNet(80, arch="resnet18")
    save_checkpoint(net_path, fine_tuned.state_dict())
    predictor = ClassPredictor(80, 512)
    if kernel == "product":  # ReCAM's COCO make_recam never reads the predictor: with `classifier` it may be absent
        extra = {"wave.w1.weight": torch.zeros(80, 80, 1)} if method == "wavecam" else {}
        save_checkpoint(predictor_path, {**predictor.state_dict(), **extra})
    seen = {}
    monkeypatch.setattr(make_pass, "write_cams", lambda args, model, weight, desc, weights: seen.update(weight=weight))
    make_pass.run(args)

    expected = fine_tuned.classifier.weight
    if kernel == "product":
        expected = predictor.classifier.weight * expected
    assert seen["weight"].shape == (80, 512, 1, 1)
    assert torch.equal(seen["weight"], expected)


@pytest.mark.slow
def test_missing_annotation_file_is_named(coco_root, tmp_path):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(coco_root, root)
    (root / "annotations" / "instances_train2014.json").unlink()
    proc = subprocess.run([sys.executable, str(RUNNER), "--mscoco_root", str(root), "--work_space", str(tmp_path / "w"),
                           "--eval_cam_pass", "True"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "instances_train2014.json" in proc.stderr
