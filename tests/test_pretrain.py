"""The demo's pretraining (the stand-in for ImageNet): its scenes, its file, its cache, and that every
pass's network takes the file as it takes ImageNet's."""

import logging

import numpy as np
import pytest
import torch

from wavecam.classes import NUM_VOC_CLASSES
from wavecam.data.synthetic import render_scene
from wavecam.io import load_checkpoint, load_json
from wavecam.models.cam import CAMNet
from wavecam.models.deeplab import build_seg_network
from wavecam.models.deeplab import load_pretrained as load_seg_pretrained
from wavecam.models.irn import IRNet
from wavecam.models.resnet import load_pretrained
from wavecam.multi_stage.pretrain import PretrainSettings, SceneStream, pretrain

TINY = PretrainSettings(arch="resnet18", size=48, steps=3, batch=4, seed=5)


def test_scene_stream_is_a_function_of_seed_and_index():
    stream = SceneStream(10, 48, seed=5)
    img, label = stream[3]
    again, label_again = SceneStream(10, 48, seed=5)[3]
    assert img.shape == (3, 48, 48) and img.dtype == torch.float32 and label.shape == (NUM_VOC_CLASSES,)
    assert torch.equal(img, again) and torch.equal(label, label_again)
    # the labels are the drawn scene's classes
    rng = np.random.default_rng([5, 3])
    scene = render_scene(rng, 48, 48, int(rng.integers(0, NUM_VOC_CLASSES)))
    assert sorted(torch.nonzero(label).flatten().tolist()) == sorted(set(scene.classes))
    assert not torch.equal(SceneStream(10, 48, seed=6)[3][0], img)


@pytest.mark.slow
def test_pretrained_file_starts_every_pass_and_is_reused(tmp_path, caplog):
    path = pretrain(TINY, tmp_path, workers=0)
    assert path.name == TINY.file_name() and path.parent == tmp_path
    sd = load_checkpoint(path)
    assert "conv1.weight" in sd and not any(k.startswith("fc.") for k in sd)
    info = load_json(path.with_suffix(".json"))
    assert info["steps"] == 3 and 0 <= info["held_out_exact_match"] <= 1

    # train_cam (BatchNorm statistics and stem frozen, as from ImageNet), IRN's frozen backbone, DeepLab-v2
    cam = CAMNet(20, arch="resnet18")
    load_pretrained(cam, str(path))
    assert torch.equal(cam.stage1[0].weight, sd["conv1.weight"])
    assert torch.equal(cam.stage4[0][0].conv1.weight, sd["layer4.0.conv1.weight"])
    irn = IRNet(arch="resnet18")
    load_pretrained(irn, str(path))
    assert torch.equal(irn.stage5[0][1].bn2.running_var, sd["layer4.1.bn2.running_var"])
    seg = build_seg_network("deeplabv2_resnet101_msc", 21, scales=(), n_blocks=(2, 2, 2, 2), block="basic")
    load_seg_pretrained(seg, str(path))
    assert torch.equal(seg.backbone.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])

    # The same settings find the file; other settings train their own.
    mtime = path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="wavecam"):
        assert pretrain(TINY, tmp_path, workers=0) == path
    assert "reusing" in caplog.text and path.stat().st_mtime_ns == mtime
    other = PretrainSettings(arch="resnet18", size=48, steps=2, batch=4, seed=5)
    assert pretrain(other, tmp_path, workers=0) != path
    # A run killed between the weights and their record (written last) trains again.
    path.with_suffix(".json").unlink()
    assert pretrain(TINY, tmp_path, workers=0) == path
    assert path.with_suffix(".json").is_file() and path.stat().st_mtime_ns != mtime
