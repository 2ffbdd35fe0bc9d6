"""Stage 3's segmenter: DeepLab-v2 (MSC) and its weights, loss, parameter groups, training data and CRF.

Most tests use a ResNet with one block per layer (`SMALL`): the layer names, strides, dilations and
key maps are the same as ResNet-101's, only shorter. The real ResNet-101 layouts are loaded once each.
"""

import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_batchnorm
from PIL import Image
from torch import nn
from torchvision import models

from wavecam.data import transforms as T
from wavecam.data.seg_train import SegTrainDataset, rescale_pair
from wavecam.data.voc import VOC12
from wavecam.engine.sampling import SampleKey
from wavecam.errors import BadFileError, WavecamError
from wavecam.io import save_checkpoint, save_png
from wavecam.models import deeplab as D

SMALL = (1, 1, 1, 1)
C = 21


def small_model(scales=D.MSC_SCALES, seed=0) -> D.DeepLabV2MSC:
    torch.manual_seed(seed)
    return D.DeepLabV2MSC(D.DeepLabV2(C, n_blocks=SMALL), scales)


def deeplab_pytorch_state_dict(n_blocks, num_classes=C, head="aspp", prefix="base.") -> dict[str, torch.Tensor]:
    """A deeplab-pytorch checkpoint written out from its module names and ResNet's channel counts
    (not from our key map): `head="aspp"` as DeepLabV2_ResNet101_MSC saves it, "fc" as the
    caffe-converted DeepLab-v1 COCO init (no prefix there)."""
    g = torch.Generator().manual_seed(1)
    sd = {}

    def conv_bn(name, cin, cout, k):
        sd[f"{prefix}{name}.conv.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.1
        sd[f"{prefix}{name}.bn.weight"] = torch.rand(cout, generator=g) + 0.5
        sd[f"{prefix}{name}.bn.bias"] = torch.randn(cout, generator=g) * 0.1
        sd[f"{prefix}{name}.bn.running_mean"] = torch.randn(cout, generator=g) * 0.1
        sd[f"{prefix}{name}.bn.running_var"] = torch.rand(cout, generator=g) + 0.5
        sd[f"{prefix}{name}.bn.num_batches_tracked"] = torch.tensor(0)

    conv_bn("layer1.conv1", 3, 64, 7)
    cin = 64
    for layer, (n, cout) in enumerate(zip(n_blocks, (256, 512, 1024, 2048)), start=2):
        for b in range(1, n + 1):
            conv_bn(f"layer{layer}.block{b}.reduce", cin if b == 1 else cout, cout // 4, 1)
            conv_bn(f"layer{layer}.block{b}.conv3x3", cout // 4, cout // 4, 3)
            conv_bn(f"layer{layer}.block{b}.increase", cout // 4, cout, 1)
            if b == 1:
                conv_bn(f"layer{layer}.block{b}.shortcut", cin, cout, 1)
        cin = cout
    if head == "aspp":
        for i in range(4):
            sd[f"{prefix}aspp.c{i}.weight"] = torch.randn(num_classes, 2048, 3, 3, generator=g) * 0.01
            sd[f"{prefix}aspp.c{i}.bias"] = torch.randn(num_classes, generator=g)
    else:
        sd[f"{prefix}fc.weight"] = torch.randn(num_classes, 2048, 1, 1, generator=g)
        sd[f"{prefix}fc.bias"] = torch.randn(num_classes, generator=g)
    return sd


# Our bottleneck parts -> deeplab-pytorch's (branch, conv|bn), written out here rather than inverted
# from the library's table, so that the round trip checks that table.
_THEIR_PART = {"conv1": ("reduce", "conv"), "bn1": ("reduce", "bn"), "conv2": ("conv3x3", "conv"),
               "bn2": ("conv3x3", "bn"), "conv3": ("increase", "conv"), "bn3": ("increase", "bn"),
               "downsample.0": ("shortcut", "conv"), "downsample.1": ("shortcut", "bn")}


def to_deeplab_pytorch_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One of our DeepLabV2MSC state dicts under deeplab-pytorch's names (`base.*`), as its
    `DeepLabV2_ResNet101_MSC` would load it strictly."""
    out = {}
    for k, v in state_dict.items():
        if not k.startswith("base."):
            continue
        name = k.removeprefix("base.")
        if m := re.fullmatch(r"backbone\.(conv1|bn1)\.(\w+)", name):
            out[f"base.layer1.conv1.{'conv' if m[1] == 'conv1' else 'bn'}.{m[2]}"] = v
        elif m := re.fullmatch(r"backbone\.layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)", name):
            branch, kind = _THEIR_PART[m[3]]
            out[f"base.layer{int(m[1]) + 1}.block{int(m[2]) + 1}.{branch}.{kind}.{m[4]}"] = v
        elif m := re.fullmatch(r"aspp\.(\d+)\.(\w+)", name):
            out[f"base.aspp.c{m[1]}.{m[2]}"] = v
        else:
            raise ValueError(f"{k}: not a DeepLabV2 key")
    return out


# --- architecture --------------------------------------------------------------------------------

@pytest.mark.slow
def test_output_stride_8_and_dilations():
    net = D.DeepLabV2(C, n_blocks=(1, 1, 2, 2)).eval()
    bb = net.backbone
    assert bb.maxpool.ceil_mode
    for layer, d in ((bb.layer3, 2), (bb.layer4, 4)):
        assert layer[0].downsample[0].stride == (1, 1)
        for block in layer:  # every block, the first included (torchvision's dilation gives it the previous one)
            assert block.conv2.stride == (1, 1) and block.conv2.dilation == (d, d) and block.conv2.padding == (d, d)
    assert [c.dilation for c in net.aspp] == [(r, r) for r in D.ATROUS_RATES]
    assert all(c.bias is not None and c.in_channels == 2048 for c in net.aspp)
    with torch.no_grad():
        # conv1 halves (ceil), the pool halves rounding up, layer2 halves: 321 -> 161 -> 81 -> 41.
        assert net(torch.randn(1, 3, 321, 321)).shape == (1, C, 41, 41)
        assert net(torch.randn(1, 3, 320, 240)).shape == (1, C, 41, 31)
        assert net(torch.randn(1, 3, 65, 64)).shape == (1, C, 9, 9)


def test_stride_in_1x1_moves_layer2_stride_only():
    for in_1x1 in (False, True):
        bb = D.DilatedResNet(SMALL, stride_in_1x1=in_1x1)
        block = bb.layer2[0]
        assert bb.stride_in_1x1 == in_1x1
        assert (block.conv1.stride, block.conv2.stride) == (((2, 2), (1, 1)) if in_1x1 else ((1, 1), (2, 2)))
        assert block.downsample[0].stride == (2, 2)


def test_basic_blocks_take_a_torchvision_resnet18_at_output_stride_8():
    """The demo's DeepLab-v2 on ResNet-18: every 3x3 conv of layer3/layer4 dilated (a basic block
    has two), a torchvision ResNet-18 state dict fills the whole backbone, and a checkpoint of ours
    round-trips; caffe-convention weights (stride in a 1x1 conv) cannot fit basic blocks."""
    torch.manual_seed(0)
    tv = models.resnet18()
    randomise_batchnorm(tv)
    net = D.build_seg_network("deeplabv2_resnet101_msc", C, scales=(), n_blocks=(2, 2, 2, 2), block="basic")
    D.load_pretrained(net, tv.state_dict())
    net.eval()
    bb = net.backbone
    for layer, d in ((bb.layer3, 2), (bb.layer4, 4)):
        assert layer[0].downsample[0].stride == (1, 1)
        for block in layer:
            for conv in (block.conv1, block.conv2):
                assert conv.stride == (1, 1) and conv.dilation == (d, d) and conv.padding == (d, d)
    assert bb.layer2[0].conv1.stride == (2, 2) and not bb.stride_in_1x1 and net.convention == D.TORCHVISION
    assert all(c.in_channels == 512 for c in net.head)
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(bb.state_dict()[k], v), k
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (1, C, 13, 11)
        # stride 8 everywhere: the dilated layers see the same grid as layer2
        assert bb(x).shape[-2:] == bb.layer2(bb.layer1(bb.maxpool(bb.relu(bb.bn1(bb.conv1(x)))))).shape[-2:]
        again = D.build_seg_network("deeplabv2_resnet101_msc", C, scales=(), n_blocks=(2, 2, 2, 2), block="basic")
        D.load_seg_weights(again, net.state_dict())
        again.eval()
        assert torch.equal(again(x), out)
    with pytest.raises(WavecamError, match="bottleneck"):
        D.DilatedResNet((1, 1, 1, 1), stride_in_1x1=True, block="basic")
    with pytest.raises(WavecamError, match="unknown ResNet block"):
        D.DilatedResNet((1, 1, 1, 1), block="wide")


@pytest.mark.slow
def test_msc_train_and_eval_outputs():
    model = small_model()
    randomise_batchnorm(model)
    x = torch.randn(2, 3, 65, 65)
    model.train()
    out = model(x)
    with torch.no_grad():
        full = model.base(x)
        half = model.base(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
        three_q = model.base(F.interpolate(x, scale_factor=0.75, mode="bilinear", align_corners=False))
    # The reference's order: full scale, then the scales as listed, then the max.
    assert [tuple(o.shape) for o in out] == [(2, C, 9, 9), (2, C, 5, 5), (2, C, 7, 7), (2, C, 9, 9)]
    for got, want in zip(out[:3], (full, half, three_q)):
        torch.testing.assert_close(got, want)
    up = lambda t: F.interpolate(t, size=(9, 9), mode="bilinear", align_corners=False)
    fused = torch.maximum(torch.maximum(full, up(half)), up(three_q))
    torch.testing.assert_close(out[3], fused)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), fused)

    single = small_model(scales=())
    assert len(single.train()(x)) == 1
    assert single.eval()(x).shape == (2, C, 9, 9)
    assert len(small_model(scales=(0.5,)).train()(x)) == 3


@pytest.mark.slow
def test_batchnorm_frozen_through_a_training_step():
    model = small_model()
    randomise_batchnorm(model)
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert model.training and not any(m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(D.param_groups(model, 1e-3, 5e-4), lr=1e-3, momentum=0.9)
    labels = torch.randint(0, C, (2, 65, 65))
    D.msc_loss(model(torch.randn(2, 3, 65, 65)), labels).backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not {k for k in changed if ".bn" in k or "downsample.1" in k}  # statistics and affine terms
    assert "base.backbone.conv1.weight" in changed and "base.aspp.0.bias" in changed


# --- weights -------------------------------------------------------------------------------------

def test_deeplab_pytorch_checkpoint_loads_by_key_map():
    sd = deeplab_pytorch_state_dict(SMALL)
    model = small_model()
    assert D.load_seg_weights(model, sd) == D.DEEPLAB_PYTORCH
    bb = model.base.backbone
    pairs = {
        "base.layer1.conv1.conv.weight": bb.conv1.weight,
        "base.layer1.conv1.bn.running_var": bb.bn1.running_var,
        "base.layer2.block1.reduce.conv.weight": bb.layer1[0].conv1.weight,
        "base.layer3.block1.conv3x3.bn.weight": bb.layer2[0].bn2.weight,
        "base.layer4.block1.increase.conv.weight": bb.layer3[0].conv3.weight,
        "base.layer5.block1.shortcut.conv.weight": bb.layer4[0].downsample[0].weight,
        "base.layer5.block1.shortcut.bn.running_mean": bb.layer4[0].downsample[1].running_mean,
        "base.aspp.c3.bias": model.base.aspp[3].bias,
    }
    for key, tensor in pairs.items():
        assert torch.equal(sd[key], tensor), key
    # Caffe-converted weights: BGR minus the caffe mean, layer2 strided in its 1x1.
    assert model.convention == D.CAFFE and model.input_norm == D.CAFFE_BGR and bb.stride_in_1x1

    # Back to their names, key for key.
    theirs = to_deeplab_pytorch_layout(model.state_dict())
    assert set(theirs) == set(sd)
    assert all(torch.equal(theirs[k], sd[k]) for k in sd)


def test_deeplab_v1_coco_init_loads_backbone_and_keeps_aspp(tmp_path):
    sd = deeplab_pytorch_state_dict(SMALL, num_classes=91, head="fc", prefix="")
    path = tmp_path / "deeplabv1_resnet101-coco.pth"
    torch.save(sd, path)
    model = small_model()
    aspp = {k: v.clone() for k, v in model.base.aspp.state_dict().items()}
    D.load_seg_weights(model, path)
    assert torch.equal(model.base.backbone.layer4[0].conv3.weight, sd["layer5.block1.increase.conv.weight"])
    assert all(torch.equal(v, model.base.aspp.state_dict()[k]) for k, v in aspp.items())
    assert model.convention == D.CAFFE


@pytest.mark.slow
def test_real_resnet101_layouts_map_onto_deeplabv2():
    """ResNet-101's 23-block layer3 through both foreign key maps, shapes and all."""
    ref = deeplab_pytorch_state_dict(D.RESNET101_BLOCKS)
    model = D.build_seg_network("deeplabv2_resnet101_msc", C)
    D.load_pretrained(model, ref)
    assert torch.equal(model.base.backbone.layer3[22].conv2.weight, ref["base.layer4.block23.conv3x3.conv.weight"])
    assert model.convention == D.CAFFE

    torch.manual_seed(0)
    tv = models.resnet101(weights=None)
    randomise_batchnorm(tv)
    sd = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}  # as pre-0.4.1 files
    model = D.build_seg_network("deeplabv2_resnet101_msc", C)
    D.load_pretrained(model, sd)
    assert model.convention == D.TORCHVISION and not model.backbone.stride_in_1x1
    ours = model.base.backbone.state_dict()
    for k, v in sd.items():
        if not k.startswith("fc."):
            assert torch.equal(ours[k], v), k
    # Up to layer2 the two networks are the same computation (at a size where the rounded-up pool
    # agrees with torchvision's); after it ours dilates instead of striding.
    tv.eval()
    model.eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        want = tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))
        bb = model.backbone
        got = bb.layer2(bb.layer1(bb.maxpool(bb.relu(bb.bn1(bb.conv1(x))))))
    torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_our_checkpoint_round_trip_restores_the_convention(tmp_path):
    src = small_model()
    D.load_seg_weights(src, deeplab_pytorch_state_dict(SMALL))
    path = tmp_path / "seg.pth"
    save_checkpoint(path, src.state_dict())
    dst = small_model(seed=1)
    assert dst.convention == D.TORCHVISION and not dst.backbone.stride_in_1x1
    assert D.load_seg_weights(dst, path) == D.OURS
    assert dst.convention == D.CAFFE and dst.backbone.stride_in_1x1 and dst.input_norm == D.CAFFE_BGR
    x = torch.randn(1, 3, 41, 41)
    src.eval()
    dst.eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    # A plain load_state_dict re-places the stride as well.
    plain = small_model(seed=2)
    plain.load_state_dict(src.state_dict())
    assert plain.backbone.stride_in_1x1


def test_files_that_do_not_fit_are_refused_with_their_keys(tmp_path):
    model = small_model()
    wrong_classes = tmp_path / "voc.pth"
    torch.save(deeplab_pytorch_state_dict(SMALL, num_classes=81), wrong_classes)
    with pytest.raises(BadFileError, match=r"(?s)voc\.pth.*shape mismatch: aspp\.0\.bias.*\(81,\).*\(21,\)"):
        D.load_seg_weights(model, wrong_classes)

    deeper = deeplab_pytorch_state_dict((1, 1, 2, 1))
    with pytest.raises(BadFileError, match=r"unexpected: backbone\.layer3\.1\.bn1\.bias"):
        D.load_seg_weights(model, deeper)

    shallow_tv = models.resnet.ResNet(models.resnet.Bottleneck, [1, 1, 1, 1]).state_dict()
    with pytest.raises(BadFileError, match=r"missing: layer3\.1\.bn1\.bias"):
        D.load_seg_weights(D.DeepLabV2MSC(D.DeepLabV2(C, n_blocks=(1, 1, 2, 1))), shallow_tv)

    other = tmp_path / "res50_cam.pth"
    torch.save({"stage1.0.weight": torch.zeros(64, 3, 7, 7), "classifier.weight": torch.zeros(20, 2048, 1, 1)}, other)
    with pytest.raises(BadFileError, match=r"(?s)res50_cam\.pth.*missing: base\.aspp.*unexpected: classifier\.weight"
                                           r".*deeplab-pytorch"):
        D.load_seg_weights(model, other)


def test_unknown_network_name():
    with pytest.raises(WavecamError, match="deeplabv2_resnet101_msc"):
        D.build_seg_network("deeplabv2_resnet50", C)


# --- DeepLab-v3 ----------------------------------------------------------------------------------

def test_torchvision_deeplabv3_in_the_same_interface(monkeypatch):
    torch.manual_seed(0)
    imagenet = randomise_batchnorm(models.resnet101(weights=None)).state_dict()
    monkeypatch.setattr(D, "imagenet_state_dict", lambda arch: imagenet if arch == "resnet101" else None)
    model = D.build_seg_network("deeplabv3_resnet101", 5)
    D.load_pretrained(model, "imagenet")
    assert model.convention == D.TORCHVISION
    backbone = model.backbone.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in imagenet.items() if not k.startswith("fc."))
    x = torch.randn(2, 3, 33, 33)
    out = model.train()(x)
    assert isinstance(out, list) and out[0].shape == (2, 5, 33, 33)
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert any(m.training for m in model.head.modules() if isinstance(m, nn.BatchNorm2d))
    groups = {g["name"]: g for g in D.param_groups(model, 1.0, 5e-4)}
    assert set(groups) == {"1x", "10x", "20x", "10x_norm"}
    assert len(groups["20x"]["params"]) == 1  # the classifier's bias; the head's other convs have none
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 5, 33, 33)
    with pytest.raises(BadFileError, match="deeplabv2_resnet101_msc"):
        D.load_seg_weights(model, deeplab_pytorch_state_dict(D.RESNET101_BLOCKS, num_classes=5))


# --- loss and optimiser --------------------------------------------------------------------------

def test_resize_labels_is_pils_nearest():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 256, (2, 37, 53), generator=g)
    for size in ((5, 7), (21, 21), (37, 53), (41, 30), (80, 111), (8, 6)):
        want = torch.stack([torch.from_numpy(np.asarray(
            Image.fromarray(lab.numpy().astype(np.uint8)).resize(size[::-1], Image.NEAREST)).astype(np.int64))
            for lab in labels])
        assert torch.equal(D.resize_labels(labels, size), want), size
    # Where PIL's accumulated rounding and torch's nearest-exact part ways (8 -> 6 rows).
    col = torch.arange(8)[None, :, None]
    assert D.resize_labels(col, (6, 1)).flatten().tolist() == [0, 2, 3, 4, 5, 7]  # nearest-exact: 6 for 5


def test_msc_loss_is_the_sum_of_per_output_mean_cross_entropies():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 16, 16), generator=g)
    labels[0, :5] = 255
    outputs = [torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 8, 8, generator=g),
               torch.randn(2, 4, 12, 12, generator=g)]
    total = 0.0
    for out in outputs:
        h, w = out.shape[-2:]
        nll, count = 0.0, 0
        for n in range(2):
            lab = np.asarray(Image.fromarray(labels[n].numpy().astype(np.uint8)).resize((w, h), Image.NEAREST))
            logp = torch.log_softmax(out[n], dim=0)
            for i in range(h):
                for j in range(w):
                    if lab[i, j] != 255:
                        nll -= logp[lab[i, j], i, j].item()
                        count += 1
        total += nll / count
    assert D.msc_loss(outputs, labels).item() == pytest.approx(total, rel=1e-5)
    assert D.msc_loss(outputs[0], labels).item() == pytest.approx(D.msc_loss(outputs[:1], labels).item())


def test_param_groups_follow_the_reference_multipliers():
    model = small_model()
    groups = D.param_groups(model, 2.5e-4, 5e-4)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("1x", 2.5e-4, 5e-4), ("10x", 2.5e-3, 5e-4), ("20x", 5e-3, 0.0)]
    names = {id(p): n for n, p in model.named_parameters()}
    one, ten, twenty = ({names[id(p)] for p in g["params"]} for g in groups)
    convs = {n + ".weight" for n, m in model.base.backbone.named_modules() if isinstance(m, nn.Conv2d)}
    assert one == {"base.backbone." + n for n in convs}
    assert ten == {f"base.aspp.{i}.weight" for i in range(4)}
    assert twenty == {f"base.aspp.{i}.bias" for i in range(4)}
    assert not any("bn" in n or "downsample.1" in n for n in one)  # BatchNorm: in no group

    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="extra.weight"):
        D.param_groups(model, 1.0, 0.0)


# --- input normalisation -------------------------------------------------------------------------

def test_input_conventions():
    img = np.array([[[10, 20, 30]]], dtype=np.uint8)
    caffe = D.CAFFE_BGR(img)
    assert caffe.shape == (3, 1, 1) and caffe.dtype == torch.float32
    torch.testing.assert_close(caffe.flatten(), torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.675]))
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    assert torch.equal(D.TORCHVISION_RGB(rgb), T.hwc_to_chw(T.normalize(rgb)))
    assert pickle.loads(pickle.dumps(D.CAFFE_BGR)) == D.CAFFE_BGR  # travels to loader workers

    model = small_model()
    assert model.input_norm == D.TORCHVISION_RGB
    model.set_convention("caffe")
    assert torch.equal(model.preprocess(img), caffe) and model.backbone.stride_in_1x1
    with pytest.raises(ValueError):
        model.set_convention("bgr")


# --- training data -------------------------------------------------------------------------------

class _Source:
    num_classes = C - 1

    def __init__(self, img, gt):
        self.img, self.gt = img, gt

    def mask_path(self, image_id):
        return f"{image_id}.png"

    def load_image(self, image_id):
        return self.img

    def load_gt(self, image_id):
        return self.gt


def _image_and_labels(h=90, w=70):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    gt = rng.integers(0, 21, (h, w)).astype(np.uint8)
    gt[:10] = 255
    return img, gt


def test_augmentation_is_a_function_of_the_key():
    img, gt = _image_and_labels()
    ds = SegTrainDataset(_Source(img, gt), ["a"], crop_size=48, preprocess=D.CAFFE_BGR)
    key = SampleKey(0, 1234)
    first, again = ds[key], ds[key]
    assert torch.equal(first["img"], again["img"]) and torch.equal(first["label"], again["label"])
    assert first["img"].shape == (3, 48, 48) and first["img"].dtype == torch.float32
    assert first["label"].shape == (48, 48) and first["label"].dtype == torch.int64
    others = [ds[SampleKey(0, s)] for s in range(8)]
    assert any(not torch.equal(o["img"], first["img"]) for o in others)
    assert torch.equal(ds[0]["label"], ds[0]["label"])  # a plain index is keyed too


def test_scale_one_without_flip_pads_bottom_right_with_ignore_and_zero():
    img, gt = _image_and_labels(40, 30)
    ds = SegTrainDataset(_Source(img, gt), ["a"], crop_size=48, scales=(1.0,), hflip=False,
                         preprocess=D.TORCHVISION_RGB)
    item = ds[SampleKey(0, 7)]
    # Smaller than the crop: the whole image at the top left, then padding.
    assert torch.equal(item["label"][:40, :30], torch.from_numpy(gt.astype(np.int64)))
    assert (item["label"][40:] == 255).all() and (item["label"][:, 30:] == 255).all()
    torch.testing.assert_close(item["img"][:, :40, :30], D.TORCHVISION_RGB(img.astype(np.float32)))
    assert (item["img"][:, 40:] == 0).all() and (item["img"][:, :, 30:] == 0).all()

    flipped = SegTrainDataset(_Source(img, gt), ["a"], crop_size=48, scales=(1.0,), preprocess=D.TORCHVISION_RGB)
    items = [flipped[SampleKey(0, s)] for s in range(16)]
    assert any((it["label"][:, :18] == 255).all() for it in items)  # flipped: padding on the left
    assert any((it["label"][:, 30:] == 255).all() for it in items)


def test_rescale_pair_matches_cv2_and_pil():
    img, gt = _image_and_labels(90, 70)
    out_img, out_gt = rescale_pair(img, gt, 0.75)
    assert out_gt.shape == (67, 52) and out_img.shape == (67, 52, 3) and out_img.dtype == np.float32
    import cv2
    np.testing.assert_array_equal(out_img, cv2.resize(img.astype(np.float32), (52, 67), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out_gt, np.asarray(Image.fromarray(gt).resize((52, 67), Image.NEAREST)))


def test_pseudo_label_folder(voc_root, tmp_path):
    source = VOC12(voc_root)
    ids = source.split("train")[:3]
    label_dir = tmp_path / "sem_seg"
    for i in ids:
        save_png(label_dir / f"{i}.png", np.full(source.load_image(i).shape[:2], 3, np.uint8))
    ds = SegTrainDataset(source, ids, label_dir, crop_size=32, preprocess=D.CAFFE_BGR)
    item = ds[SampleKey(1, 5)]
    assert item["name"] == ids[1] and set(item["label"].unique().tolist()) <= {3, 255}
    gt_ds = SegTrainDataset(source, ids, None, crop_size=32, preprocess=D.CAFFE_BGR)
    assert gt_ds[SampleKey(1, 5)]["img"].shape == (3, 32, 32)

    with pytest.raises(WavecamError, match="1 id"):
        SegTrainDataset(source, ids + [source.split("train")[3]], label_dir, preprocess=D.CAFFE_BGR)
    save_png(label_dir / f"{ids[0]}.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(BadFileError, match="5x5"):
        ds[SampleKey(0, 0)]


# --- CRF -----------------------------------------------------------------------------------------

def test_deeplab_crf_settings_and_reference_image():
    from wavecam.labels.crf import DEEPLAB_CRF, crf_inference_deeplab, deeplab_reference_crf_image

    assert DEEPLAB_CRF == {"t": 10, "pos_w": 3, "pos_xy_std": 1, "bi_w": 4, "bi_xy_std": 67, "bi_rgb_std": 3}
    # R 200, G 116, B 100: BGR minus the mean, truncated, wrapped into uint8 as numpy's cast does.
    img = np.array([[[200, 116, 100]]], dtype=np.uint8)
    assert deeplab_reference_crf_image(img).tolist() == [[[252, 0, 77]]]
    pytest.importorskip("pydensecrf")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    probs = torch.softmax(torch.randn(3, 12, 16), 0).numpy()
    for reference_image in (True, False):
        q = crf_inference_deeplab(img, probs, reference_image)
        assert q.shape == (3, 12, 16) and np.allclose(q.sum(0), 1, atol=1e-4)
