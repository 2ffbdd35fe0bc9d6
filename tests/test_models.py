"""CAM nets, the wave module, the class predictor, checkpoint key layouts and multi-scale CAM inference."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_batchnorm
from torch import nn

from wavecam.errors import BadFileError
from wavecam.io import save_checkpoint
from wavecam.labels.cam import multiscale_cam_batch
from wavecam.models import CAMNet, ClassPredictor, WaveCAMNet, WaveModeling, cam_weight, load_cam_weights
from wavecam.models.cam import class_features, normalised_cams, to_reference_layout
from wavecam.models.irn import EdgeDisplacement, IRNet
from wavecam.models.resnet import build_resnet, load_pretrained

C = 20


@pytest.fixture(scope="module")
def cam_net():
    torch.manual_seed(0)
    return CAMNet(C).eval()


# --- WaveModeling ------------------------------------------------------------------------------

def _naive_wave(m: WaveModeling, cams: torch.Tensor) -> torch.Tensor:
    """The wave module written out channel by channel."""
    b, c, g, _ = cams.shape

    def conv1x1(conv, x):
        out = torch.zeros(b, conv.out_channels, g, g, dtype=x.dtype)
        for o in range(conv.out_channels):
            for i in range(conv.in_channels):
                out[:, o] += conv.weight[o, i, 0, 0] * x[:, i]
            if conv.bias is not None:
                out[:, o] += conv.bias[o]
        return out

    def phase(seq, x):
        conv, bn = seq[0], seq[1]
        y = conv1x1(conv, x)
        for k in range(c):
            y[:, k] = (y[:, k] - bn.running_mean[k]) / torch.sqrt(bn.running_var[k] + bn.eps)
            y[:, k] = y[:, k] * bn.weight[k] + bn.bias[k]
        return torch.clamp(y, min=0)

    def line_conv(conv, x, horizontal):
        # groups = c: output k sees input channels 2k and 2k+1 along a 7-tap line.
        pad = F.pad(x, (3, 3, 0, 0) if horizontal else (0, 0, 3, 3))
        out = torch.zeros(b, c, g, g, dtype=x.dtype)
        for k in range(c):
            for i in range(2):
                for t in range(7):
                    wt = conv.weight[k, i, 0, t] if horizontal else conv.weight[k, i, t, 0]
                    src = pad[:, 2 * k + i, :, t:t + g] if horizontal else pad[:, 2 * k + i, t:t + g, :]
                    out[:, k] += wt * src
        return out

    fg = torch.clamp(cams / 3 + 0.1, min=0)
    bg = (1 - fg) / 3
    t_r, t_i = phase(m.theta_R_conv, fg), phase(m.theta_I_conv, bg)
    a_r, a_i = conv1x1(m.fc_h, fg), conv1x1(m.fc_w, bg)
    h = line_conv(m.tfc_h, torch.cat([a_r * torch.cos(t_r), a_r * torch.sin(t_r)], 1), horizontal=True)
    w = line_conv(m.tfc_w, torch.cat([a_i * torch.cos(t_i), a_i * torch.sin(t_i)], 1), horizontal=False)

    out = torch.zeros(b, 2 * c, g, g, dtype=cams.dtype)
    for n in range(b):
        mean = fg[n].mean(dim=(1, 2))
        v = torch.cat([m.w1.weight[:, :, 0, 0] @ mean + m.w1.bias, m.w2.weight[:, :, 0, 0] @ mean + m.w2.bias])
        for k in range(c):
            pair = torch.softmax(v[2 * k:2 * k + 2], dim=0)
            out[n, k] = h[n, k] * pair[0]
            out[n, c + k] = w[n, k] * pair[1]
    return out


def test_wave_forward_matches_naive_formula():
    torch.manual_seed(1)
    m = randomise_batchnorm(WaveModeling(4)).double().eval()
    cams = torch.rand(2, 4, 8, 8, dtype=torch.float64) * 1.2 - 0.1
    with torch.no_grad():
        out = m(cams)
        expected = _naive_wave(m, cams)
    assert out.shape == (2, 8, 8, 8)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_wave_parameter_names():
    m = WaveModeling(C)
    names = {k.rsplit(".", 1)[0] for k, _ in m.named_parameters()}
    assert names == {"fc_h", "fc_w", "fc_c", "tfc_h", "tfc_w", "w1", "w2", "theta_R_conv.0", "theta_R_conv.1",
                     "theta_I_conv.0", "theta_I_conv.1"}
    assert m.fc_c.bias is None and m.fc_h.bias is None and m.w1.bias is not None
    assert m.tfc_h.weight.shape == (C, 2, 1, 7) and m.tfc_w.weight.shape == (C, 2, 7, 1)
    assert isinstance(m.theta_I_conv[2], nn.ReLU)


# --- CAM nets ----------------------------------------------------------------------------------

def test_cam_net_keeps_backbone_statistics_and_stem_frozen():
    cam_net, wave_net = CAMNet(C), WaveCAMNet(C)
    for net in (cam_net, wave_net):
        net.train()
        for stage in net.backbone_stages():
            assert all(not m.training for m in stage.modules() if isinstance(m, nn.BatchNorm2d))
        assert not any(p.requires_grad for p in net.stage1[0].parameters())
        assert not any(p.requires_grad for p in net.stage1[1].parameters())
    assert wave_net.wave.theta_R_conv[1].training  # the wave module's own BatchNorms do train

    backbone, new = cam_net.param_groups()
    assert all(p.requires_grad for p in backbone) and len(new) == 1 and new[0] is cam_net.classifier.weight
    assert len(backbone) == sum(p.requires_grad for s in cam_net.backbone_stages() for p in s.parameters())
    base, wave = wave_net.param_groups()
    assert any(p is wave_net.classifier.weight for p in base)
    # fc_c is never used: frozen, so DDP needs no find_unused_parameters.
    assert len(wave) == len(list(wave_net.wave.parameters())) - 1
    assert not any(p is wave_net.wave.fc_c.weight for p in wave)


def test_random_init_learns_batchnorm_statistics():
    net = CAMNet(C, freeze_bn=False).train()
    assert all(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_resnet18_backbone_fits_the_wave_grid():
    net = WaveCAMNet(C, arch="resnet18")
    logits, fused = net(torch.randn(2, 3, 64, 64))
    assert net.classifier.in_channels == 512 and fused.shape == (2, C, 512) and logits.shape == (2, C)


def test_wave_cam_net_loads_cam_net_checkpoint(cam_net, tmp_path):
    save_checkpoint(tmp_path / "res50_cam.pth", cam_net.state_dict())
    wave_net = WaveCAMNet(C).eval()
    load_cam_weights(wave_net, tmp_path / "res50_cam.pth", cam_only=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, fused = wave_net(x)
        torch.testing.assert_close(logits, cam_net(x))
    assert fused.shape == (2, C, 2048)

    # ... and its own checkpoint back into a WaveCAMNet (all keys) or a CAMNet (backbone + classifier).
    again = WaveCAMNet(C).eval()
    load_cam_weights(again, wave_net.state_dict())
    plain = CAMNet(C).eval()
    load_cam_weights(plain, wave_net.state_dict(), cam_only=True)
    with torch.no_grad():
        torch.testing.assert_close(again(x)[1], fused)
        torch.testing.assert_close(plain(x), logits)


def test_class_features_and_fused_representation():
    torch.manual_seed(2)
    net = WaveCAMNet(C).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = net.features(x)  # (2, 2048, 2, 2)
        cams = normalised_cams(f, net.classifier.weight)
        naive = (cams[:, :, None] * f[:, None]).flatten(3).mean(-1)  # (B, C, D, hw) materialised
        torch.testing.assert_close(class_features(cams, f), naive, rtol=1e-5, atol=1e-6)

        raw = F.relu(F.conv2d(f, net.classifier.weight)).amax(dim=(2, 3))
        torch.testing.assert_close(cams.amax(dim=(2, 3)), raw / (raw + 1e-5))
        grid = F.interpolate(cams, size=(32, 32), mode="bilinear", align_corners=False)
        wave = net.wave(grid).reshape(2, C, 2048)
        torch.testing.assert_close(net(x)[1], naive + wave, rtol=1e-5, atol=1e-5)


def test_wave_module_switched_off_is_recams_class_feature():
    """ReCAM's `Net_CAM_Feature`: ReLU'd CAMs of the classifier, each divided by its maximum + 1e-5,
    times the features, averaged over pixels; no wave parameters to train or save."""
    torch.manual_seed(2)
    net = WaveCAMNet(C, wave=False).eval()
    assert net.wave is None and not any(k.startswith("wave.") for k in net.state_dict())
    backbone, wave = net.param_groups()
    assert wave == [] and len(backbone) == len([p for p in net.parameters() if p.requires_grad])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = net.features(x)
        cams = F.relu(F.conv2d(f, net.classifier.weight))
        cams = cams / (F.adaptive_max_pool2d(cams, (1, 1)) + 1e-5)
        recam = (cams.unsqueeze(2) * f.unsqueeze(1)).flatten(3).mean(-1)
        logits, fused = net(x)
    torch.testing.assert_close(fused, recam, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, net.classifier(f.mean(dim=(2, 3), keepdim=True)).flatten(1))


def test_predictor_loss_matches_per_image_loop():
    torch.manual_seed(3)
    predictor = ClassPredictor(C, dim=16)
    fused = torch.randn(3, C, 16)
    labels = torch.zeros(3, C)
    labels[0, [2, 5, 7]] = 1
    labels[2, 11] = 1  # image 1 has no class
    loss, acc = predictor(fused, labels)

    w = predictor.classifier.weight.flatten(1)
    total, correct, count = 0.0, 0, 0
    for n in range(3):
        present = labels[n].nonzero()[:, 0]
        if len(present) == 0:
            continue
        logits = fused[n, present] @ w.T
        total = total + F.cross_entropy(logits, present)
        correct += (logits.argmax(1) == present).sum().item()
        count += len(present)
    torch.testing.assert_close(loss, total / 3)
    assert acc.item() == pytest.approx(correct / count)

    loss.backward()
    assert predictor.classifier.weight.grad is not None


def test_cam_weight():
    cls, pred = torch.randn(C, 8, 1, 1), torch.randn(C, 8, 1, 1)
    assert cam_weight(cls) is cls
    torch.testing.assert_close(cam_weight(cls, pred), cls * pred)


# --- the reference's checkpoint layout ---------------------------------------------------------

class _ReCAMLayout(nn.Module):
    """The module tree of ReCAM's `net/resnet50_cam.Net` (stride 16): the ResNet registered as
    `resnet50`, its parts again as `stage1..4`, those again as `backbone`, the classifier again as
    `newly_added`. Its state dict holds every alias."""

    def __init__(self, num_classes):
        super().__init__()
        self.resnet50 = build_resnet("resnet50")
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
        self.stage2 = nn.Sequential(r.layer2)
        self.stage3 = nn.Sequential(r.layer3)
        self.stage4 = nn.Sequential(r.layer4)
        self.classifier = nn.Conv2d(2048, num_classes, 1, bias=False)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4])
        self.newly_added = nn.ModuleList([self.classifier])

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.classifier(x.mean(dim=(2, 3), keepdim=True)).flatten(1)


def test_recam_checkpoint_loads_with_identical_outputs(tmp_path):
    torch.manual_seed(4)
    ref = randomise_batchnorm(_ReCAMLayout(C)).eval()
    sd = ref.state_dict()
    assert {"resnet50.layer4.2.bn3.running_var", "backbone.0.4.0.conv1.weight", "stage2.0.0.downsample.0.weight",
            "newly_added.0.weight"} <= set(sd)
    sd["resnet50.fc.weight"], sd["resnet50.fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    save_checkpoint(tmp_path / "res50_cam.pth", sd)

    net = CAMNet(C).eval()
    load_cam_weights(net, tmp_path / "res50_cam.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x))

    # The `resnet50.*` aliases alone are enough, and ours go back into their layout strictly.
    only_resnet = {k: v for k, v in sd.items() if k.startswith("resnet50.") or k == "classifier.weight"}
    load_cam_weights(CAMNet(C), only_resnet)
    _ReCAMLayout(C).load_state_dict(to_reference_layout(net.state_dict()), strict=True)


def test_wrong_checkpoint_raises_readable_error(cam_net, tmp_path):
    path = tmp_path / "res50_cam.pth"
    save_checkpoint(path, cam_net.state_dict())
    with pytest.raises(BadFileError, match=r"(?s)res50_cam\.pth.*shape mismatch.*classifier\.weight"):
        load_cam_weights(CAMNet(80), path)

    partial = {k: v for k, v in cam_net.state_dict().items() if not k.startswith("stage4.")}
    with pytest.raises(BadFileError, match=r"(?s)missing: stage4\.0\.0\..*60 in all"):
        load_cam_weights(CAMNet(C), partial)


# --- multi-scale CAM inference -----------------------------------------------------------------

def multiscale_cam(features_fn, image, weight, keys, **options):
    """`multiscale_cam_batch` for one image (3, H, W): its (strided, high_res) pair."""
    (out,) = multiscale_cam_batch(features_fn, image[None], weight, [keys], **options)
    return out


def test_multiscale_cam_shapes_and_normalisation(cam_net):
    torch.manual_seed(5)
    image, keys = torch.randn(3, 50, 70), torch.tensor([3, 1, 8])
    weight = torch.randn(C, 2048, 1, 1) * 0.05
    strided, high_res = multiscale_cam(cam_net.features, image, weight, keys)
    assert strided.shape == (3, 13, 18) and high_res.shape == (3, 50, 70)
    assert strided.dtype == high_res.dtype == torch.float32
    for maps in (strided, high_res):
        assert maps.min() >= 0
        maxima = maps.amax(dim=(1, 2))
        assert maxima.max() <= 1 and maxima.max() > 0.99

    # Keys pick rows of the same maps, in their order.
    swapped, _ = multiscale_cam(cam_net.features, image, weight, keys[[2, 0]])
    torch.testing.assert_close(swapped, strided[[2, 0]])
    empty, empty_hr = multiscale_cam(cam_net.features, image, weight, keys[:0])
    assert empty.shape == (0, 13, 18) and empty_hr.shape == (0, 50, 70)


def test_multiscale_cam_single_scale_matches_reference_recipe(cam_net):
    torch.manual_seed(6)
    image, keys = torch.randn(3, 40, 56), torch.arange(C)
    weight = torch.randn(C, 2048, 1, 1) * 0.05
    strided, high_res = multiscale_cam(cam_net.features, image, weight, keys, scales=(1.0,))
    with torch.no_grad():
        cams = F.relu(F.conv2d(cam_net.features(torch.stack([image, image.flip(-1)])), weight))
        cam = (cams[0] + cams[1].flip(-1))[None]  # (1, C, 3, 4)
        small = F.interpolate(cam, (10, 14), mode="bilinear", align_corners=False)[0]
        big = F.interpolate(cam, (48, 64), mode="bilinear", align_corners=False)[0, :, :40, :56]
    torch.testing.assert_close(strided, small / (small.amax(dim=(1, 2), keepdim=True) + 1e-5))
    torch.testing.assert_close(high_res, big / (big.amax(dim=(1, 2), keepdim=True) + 1e-5))


def test_multiscale_cam_flip_consistency_and_batching(cam_net):
    torch.manual_seed(7)
    image = torch.randn(3, 48, 64)
    symmetric = (image + image.flip(-1)) / 2
    weight, keys = torch.randn(C, 2048, 1, 1) * 0.05, torch.arange(C)
    strided, high_res = multiscale_cam(cam_net.features, symmetric, weight, keys)
    torch.testing.assert_close(strided, strided.flip(-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(high_res, high_res.flip(-1), rtol=1e-4, atol=1e-5)

    # Two images in one batch give what each gives alone.
    other_keys = torch.tensor([0, 5])
    both = multiscale_cam_batch(cam_net.features, torch.stack([symmetric, image]), weight, [keys, other_keys])
    alone = multiscale_cam(cam_net.features, image, weight, other_keys)
    torch.testing.assert_close(both[0][1], high_res, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1][0], alone[0], rtol=1e-4, atol=1e-5)


def test_multiscale_cam_resizes_as_the_reference(cam_net, voc_root):
    """The reference resizes each scale as uint8 with PIL's bicubic, then normalises in float64:
    the loader's `scaled` inputs give those CAMs to float rounding; resizing the normalised tensor
    (the torch path) is visibly off (a 0.999 correlation on a 500x375 image)."""
    from PIL import Image

    from wavecam.data.datasets import InferenceDataset
    from wavecam.data.voc import VOC12

    source = VOC12(voc_root)
    image_id = source.split("val")[0]
    scales, keys = (1.0, 0.5, 1.5, 2.0), torch.tensor([2, 7])
    item = InferenceDataset(source, [image_id], scales=scales)[0]
    torch.manual_seed(8)
    weight = torch.randn(C, 2048, 1, 1) * 0.05
    ((strided, high_res),) = multiscale_cam_batch(cam_net.features, item["img"][None], weight, [keys], scales,
                                                  scaled=[x[None] for x in item["scaled"]])

    img = source.load_image(image_id)
    h, w = img.shape[:2]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    small, big = 0, 0
    with torch.no_grad():
        for s in scales:
            size = (int(np.round(w * s)), int(np.round(h * s)))
            resized = img if s == 1 else np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))
            x = torch.from_numpy(((resized / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1).copy())
            cams = F.relu(F.conv2d(cam_net.features(torch.stack([x, x.flip(-1)])), weight))
            cam = (cams[0] + cams[1].flip(-1))[None]
            small = small + F.interpolate(cam, ((h + 3) // 4, (w + 3) // 4), mode="bilinear", align_corners=False)[0]
            big = big + F.interpolate(cam, ((h + 15) // 16 * 16, (w + 15) // 16 * 16), mode="bilinear",
                                      align_corners=False)[0, :, :h, :w]
    small, big = small[keys], big[keys]
    torch.testing.assert_close(strided, small / (small.amax(dim=(1, 2), keepdim=True) + 1e-5), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(high_res, big / (big.amax(dim=(1, 2), keepdim=True) + 1e-5), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="scales"):
        multiscale_cam_batch(cam_net.features, item["img"][None], weight, [keys], scales, scaled=item["scaled"][:2])


def test_networks_are_built_without_weights_and_loaded_second(caplog):
    """Constructors build at random initialisation and say nothing: a network built to load a trained
    checkpoint into (make_cam, the fine-tuning passes, IRN's inference) must not warn. Starting
    training from random weights (`load_pretrained(net, None)`) is worth a warning; a file fills
    the backbone of CAM and IRN nets alike, whose modules are grouped differently."""
    with caplog.at_level(logging.WARNING, logger="wavecam"):
        cam, irn = CAMNet(20, arch="resnet18"), IRNet(arch="resnet18")
        EdgeDisplacement(arch="resnet18")
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="wavecam"):
        load_pretrained(cam, None)
    assert "resnet18 starts from RANDOM weights" in caplog.text

    torch.manual_seed(0)
    tv = build_resnet("resnet18").state_dict()
    for net in (cam, irn):
        load_pretrained(net, tv)
        assert all(torch.equal(v, net.resnet().state_dict()[k]) for k, v in tv.items())
    assert torch.equal(cam.stage4[0][1].conv2.weight, tv["layer4.1.conv2.weight"])
    assert torch.equal(irn.stage2[0][0].bn1.running_var, tv["layer1.0.bn1.running_var"])
    with pytest.raises(BadFileError, match="does not fit ResNet"):
        load_pretrained(cam, build_resnet("resnet34").state_dict())
