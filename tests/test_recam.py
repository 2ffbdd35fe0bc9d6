"""ReCAM's passes: make_recam on checkpoints in ReCAM's own layout computes its make_recam.py formula,
train_recam is train_wavecam with the wave module switched off, and the files go both ways."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_batchnorm
from torch import nn

from wavecam.io import load_cam, load_checkpoint, save_checkpoint
from wavecam.models import CAMNet
from wavecam.models.cam import to_reference_layout
from wavecam.models.resnet import build_resnet, stage_channels
from wavecam.multi_stage.runner import main

pytestmark = pytest.mark.slow  # each test runs passes (make_recam, train_recam/train_wavecam)

ATOL = 1e-4  # on maps divided by their maximum: see test_make_recam_on_recam_checkpoint_is_its_formula
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


class _ReCAMCAM(nn.Module):
    """ReCAM's `net/resnet50_cam.CAM` as its checkpoints see it (the ResNet as `resnet50`, its parts
    again as `stage1..4` and `backbone`, the classifier again as `newly_added`), with its `forward2`:
    the CAM of the kernel `weight * classifier.weight`, summed with the flipped image's."""

    def __init__(self, num_classes: int, arch: str = "resnet50"):
        super().__init__()
        self.resnet50 = r = build_resnet(arch, (2, 2, 2, 1))
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
        self.stage2 = nn.Sequential(r.layer2)
        self.stage3 = nn.Sequential(r.layer3)
        self.stage4 = nn.Sequential(r.layer4)
        self.classifier = nn.Conv2d(stage_channels(arch)[-1], num_classes, 1, bias=False)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4])
        self.newly_added = nn.ModuleList([self.classifier])

    def forward2(self, x, weight):
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        x = F.relu(F.conv2d(x, weight * self.classifier.weight))
        return x[0] + x[1].flip(-1)


class _ClassPredictor(nn.Module):
    """ReCAM's `Class_Predictor` module tree: one bias-free 1x1 conv named `classifier`."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.classifier = nn.Conv2d(dim, num_classes, 1, bias=False)


def recam_formula(net: _ReCAMCAM, image: np.ndarray, weight: torch.Tensor, keys: torch.Tensor):
    """ReCAM's make_recam at scale 1 written out: the image and its flip through `forward2`, the
    sum resized bilinearly to stride 4 (`cam`) and to the next multiple of 16, then cropped
    (`high_res`), the present classes kept and each divided by its maximum + 1e-5."""
    h, w = image.shape[:2]
    x = torch.from_numpy(((image / 255.0 - MEAN) / STD).astype(np.float32).transpose(2, 0, 1).copy())
    with torch.no_grad():
        o = net.forward2(torch.stack([x, x.flip(-1)]), weight)[None]
        strided = F.interpolate(o, ((h + 3) // 4, (w + 3) // 4), mode="bilinear", align_corners=False)[0]
        high_res = F.interpolate(o, ((h + 15) // 16 * 16, (w + 15) // 16 * 16), mode="bilinear",
                                 align_corners=False)[0, :, :h, :w]
    strided, high_res = strided[keys], high_res[keys]
    return (strided / (strided.amax(dim=(1, 2), keepdim=True) + 1e-5),
            high_res / (high_res.amax(dim=(1, 2), keepdim=True) + 1e-5))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    from wavecam.data.synthetic import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), n_train=4, n_val=2, size=64, seed=1)


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_make_recam_on_recam_checkpoint_is_its_formula(dataset, voc_root, coco_root, tmp_path):
    """Default kernel per dataset: predictor ⊙ classifier on VOC (`forward2(img, predictor.classifier.weight)`),
    the classifier alone on COCO (`model(img)`, i.e. forward2 with a weight of ones).

    Tolerance: both sides compute the same float32 ResNet-50 sums in different orders (our
    channels_last convolutions and a kernel multiplied once before the pass, against NCHW here), each
    rounding at 2^-24 relative; through 50 layers and 2048-channel sums that stays near 1e-6 of a map's
    maximum on any CPU (3e-7 measured here), and every map is divided by its maximum, so an absolute
    1e-4 leaves two orders of margin. The other dataset's kernel moves the maps by over 100 times the
    tolerance (1.3e-2 at least on these seeded weights: a random ResNet's maps are flat, 0.57-0.70),
    so the comparison tells the two formulas apart."""
    from wavecam.data.coco import COCO2014
    from wavecam.data.voc import VOC12

    root, n_class = (voc_root, 20) if dataset == "voc" else (coco_root, 80)
    source = VOC12(root) if dataset == "voc" else COCO2014(root)
    ids = [i for i, label in zip(source.split("train"), source.labels(source.split("train"))) if label.any()][:2]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    torch.manual_seed(10)
    ref = randomise_batchnorm(_ReCAMCAM(n_class)).eval()
    predictor = _ClassPredictor(n_class, 2048)
    with torch.no_grad():
        # Kernels mostly positive on the non-negative features, so that every class responds
        # somewhere (an all-zero map would compare 0 with 0), yet different in every channel.
        ref.classifier.weight.abs_()
        predictor.classifier.weight.normal_(1, 1)
    ws = tmp_path / "ws"
    # ReCAM writes both with a plain torch.save of the state dict: every alias of its module tree.
    (ws / "recam_weight").mkdir(parents=True)
    torch.save(ref.state_dict(), ws / "recam_weight" / "res50_recam_4.pth")
    torch.save(predictor.state_dict(), ws / "recam_weight" / "recam_predictor_4.pth")
    assert {"resnet50.layer1.0.conv1.weight", "backbone.3.0.2.bn3.running_var", "newly_added.0.weight",
            "stage2.0.0.conv1.weight"} <= set(ref.state_dict())

    root_flag = "--voc12_root" if dataset == "voc" else "--mscoco_root"
    assert main(dataset, [root_flag, str(root), "--work_space", str(ws), "--train_list", str(tmp_path / "ids.txt"),
                          "--cam_scales", "1.0", "--num_workers", "0", "--make_recam_pass", "True"]) == 0

    product = predictor.classifier.weight if dataset == "voc" else torch.ones(())
    other = torch.ones(()) if dataset == "voc" else predictor.classifier.weight
    for image_id, label in zip(ids, source.labels(ids)):
        keys = torch.from_numpy(np.flatnonzero(label))
        ours = load_cam(ws / "cam_mask" / f"{image_id}.npz")
        np.testing.assert_array_equal(ours["keys"], keys.numpy())
        strided, high_res = recam_formula(ref, source.load_image(image_id), product, keys)
        assert high_res.amax(dim=(1, 2)).min() > 0.99, "every map responds somewhere: the comparison is not 0 == 0"
        np.testing.assert_allclose(ours["cam"], strided.numpy(), rtol=0, atol=ATOL)
        np.testing.assert_allclose(ours["high_res"], high_res.numpy(), rtol=0, atol=ATOL)
        _, wrong = recam_formula(ref, source.load_image(image_id), other, keys)
        assert np.abs(ours["high_res"] - wrong.numpy()).max() > 100 * ATOL


def test_train_recam_is_train_wavecam_without_the_wave_module(voc_root, tmp_path):
    """Same seed and settings: train_recam and train_wavecam --wavecam_wave False write the same
    weights, to the bit (CPU runs with one seed are deterministic), each under its own names; and
    those files load into ReCAM's modules strictly."""
    torch.manual_seed(11)
    ws = tmp_path / "ws"
    save_checkpoint(ws / "res50_cam.pth", CAMNet(20, arch="resnet18").state_dict())
    flags = (f"--voc12_root {voc_root} --work_space {ws} --pretrained none --num_workers 0 --cam_network resnet18 "
             "--train_list train --cam_crop_size 48 --cam_resize_long 40 56 --cam_batch_size 4 --sgd_momentum 0.9 "
             "--recam_num_epoches 1 --wavecam_num_epoches 1 --recam_learning_rate 0.01 --wavecam_learning_rate 0.01 "
             "--train_recam_pass True --train_wavecam_pass True --wavecam_wave False")
    assert main("voc", flags.split()) == 0

    recam_net = load_checkpoint(ws / "recam_weight" / "res50_recam_1.pth")
    recam_pred = load_checkpoint(ws / "recam_weight" / "recam_predictor_1.pth")
    wave_net = load_checkpoint(ws / "wavecam_weight" / "res50_wavecam_1.pth")
    wave_pred = load_checkpoint(ws / "wavecam_weight" / "wavecam_predictor_1.pth")
    assert set(recam_pred) == set(wave_pred) == {"classifier.weight"} and recam_pred["classifier.weight"].shape == (
        20, 512, 1, 1)
    assert recam_net.keys() == wave_net.keys()
    for k in recam_net:
        assert torch.equal(recam_net[k], wave_net[k]), k
    assert torch.equal(recam_pred["classifier.weight"], wave_pred["classifier.weight"])
    start = load_checkpoint(ws / "res50_cam.pth")
    assert not torch.equal(start["classifier.weight"], recam_net["classifier.weight"]), "fine-tuning changed nothing"

    # Ours into ReCAM's modules, strictly: the predictor as it is, the net with its aliases added.
    _ClassPredictor(20, 512).load_state_dict(recam_pred, strict=True)
    _ReCAMCAM(20, arch="resnet18").load_state_dict(to_reference_layout(recam_net), strict=True)
