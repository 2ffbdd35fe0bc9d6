import numpy as np
import pytest
import torch
from torch import nn

from wavecam.errors import BadFileError
from wavecam.labels.randomwalk import PathIndex, affinity_labels
from wavecam.models.irn import AffinityDisplacementLoss, EdgeDisplacement, IRNet, load_irn_weights

SIZE = 64  # input pixels; features are SIZE // 4


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return IRNet()


def batch_labels(pi, n):
    rng = np.random.default_rng(0)
    label = np.zeros(pi.feature_size, dtype=np.uint8)
    label[4:12, 3:9] = 1
    label[rng.random(label.shape) < 0.05] = 255
    return [t[None].expand(n, -1, -1) for t in affinity_labels(label, pi)]


def test_output_shapes(net):
    net.eval()
    with torch.no_grad():
        edge, dp = net(torch.randn(2, 3, SIZE, SIZE))
        assert edge.shape == (2, 1, 16, 16) and dp.shape == (2, 2, 16, 16)
        edge, dp = net(torch.randn(1, 3, 70, 45))  # odd sizes: coarse levels are cropped to stride 4
        assert edge.shape == (1, 1, 18, 12) and dp.shape == (1, 2, 18, 12)


def test_backbone_frozen_and_parameter_groups(net):
    net.train()
    for stage in net.backbone_stages():
        assert not stage.training
        assert not any(p.requires_grad for p in stage.parameters())
    assert net.fc_edge1.training and net.fc_dp7.training

    edge_params, dp_params = net.trainable_parameters()
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for p in edge_params} | {id(p) for p in dp_params} == trainable
    assert not {id(p) for p in edge_params} & {id(p) for p in dp_params}
    assert len(edge_params) == 5 * 3 + 2 and len(dp_params) == 7 * 3 + 1


def test_losses_finite_and_backward(net):
    net.train()
    net.zero_grad(set_to_none=True)
    pi = PathIndex(5, (16, 16))
    criterion = AffinityDisplacementLoss(pi)
    edge, dp = net(torch.randn(2, 3, SIZE, SIZE))
    losses = criterion(edge, dp, *batch_labels(pi, 2))
    assert set(losses) == {"bg_pos_aff", "fg_pos_aff", "pos_aff", "neg_aff", "dp_fg", "dp_bg", "total"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    losses["total"].backward()
    assert all(p.grad is None for s in net.backbone_stages() for p in s.parameters())
    edge_params, dp_params = net.trainable_parameters()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in edge_params + dp_params)
    assert criterion.state_dict() == {}  # path buffers are derived, never saved


def test_displacement_loss_sign_convention():
    # A field pointing every pixel at the origin, dp(p) = -p, satisfies dp(p) - dp(p + d) = d.
    pi = PathIndex(5, (16, 16))
    criterion = AffinityDisplacementLoss(pi)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    dp = -torch.stack([ys, xs])[None]
    bg_pos, fg_pos, neg = batch_labels(pi, 1)
    losses = criterion(torch.zeros(1, 1, 16, 16), dp, bg_pos, fg_pos, neg)
    assert losses["dp_fg"] < 1e-6
    assert criterion(torch.zeros(1, 1, 16, 16), torch.zeros_like(dp), bg_pos, fg_pos, neg)["dp_bg"] == 0
    with pytest.raises(ValueError, match="path index"):
        criterion(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8), bg_pos, fg_pos, neg)


def test_mean_shift_only_in_eval(net):
    net.mean_shift.running_mean.fill_(0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        net.eval()
        _, dp0 = net(x)
        net.mean_shift.running_mean.copy_(torch.tensor([1.0, -2.0]))
        _, dp1 = net(x)
        torch.testing.assert_close(dp0 - dp1, torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand_as(dp0))
    net.mean_shift.running_mean.fill_(0)


class IRNLayout(nn.Module):
    """IRN's `AffinityDisplacementLoss` registration order and aliases, around our modules."""

    def __init__(self, ours: IRNet):
        super().__init__()
        self.resnet50 = nn.Module()
        self.resnet50.conv1, self.resnet50.bn1 = ours.stage1[0], ours.stage1[1]
        for i in range(4):
            setattr(self.resnet50, f"layer{i + 1}", getattr(ours, f"stage{i + 2}")[0])
        for i, stage in enumerate(ours.backbone_stages()):
            setattr(self, f"stage{i + 1}", stage)
        self.mean_shift = ours.mean_shift
        for i, m in enumerate(ours.edge_layers()):
            setattr(self, f"fc_edge{i + 1}", m)
        for i, m in enumerate(ours.dp_layers()):
            setattr(self, f"fc_dp{i + 1}", m)
        self.backbone = nn.ModuleList(ours.backbone_stages())
        self.edge_layers = nn.ModuleList(ours.edge_layers())
        self.dp_layers = nn.ModuleList(ours.dp_layers())
        self.register_buffer("path_indices0", torch.zeros(3, 2, 5, dtype=torch.long))
        self.register_buffer("disp_target", torch.zeros(1, 2, 3, 1))


def test_loads_irn_layout_state_dict(net, tmp_path):
    net.mean_shift.running_mean.copy_(torch.tensor([0.5, 0.25]))
    irn_sd = IRNLayout(net).state_dict()
    assert "resnet50.layer4.2.conv3.weight" in irn_sd and "dp_layers.6.4.running_mean" in irn_sd
    path = tmp_path / "res50_irn.pth"
    torch.save({f"module.{k}": v for k, v in irn_sd.items()}, path)

    torch.manual_seed(1)
    fresh = IRNet()
    load_irn_weights(fresh, path)
    ours = net.state_dict()
    assert fresh.state_dict().keys() == ours.keys()
    assert all(torch.equal(v, ours[k]) for k, v in fresh.state_dict().items())

    # our own checkpoints load too, and into EdgeDisplacement
    torch.save(ours, tmp_path / "ours.pth")
    infer = EdgeDisplacement.from_checkpoint(tmp_path / "ours.pth", crop_size=SIZE)
    assert not infer.training and torch.equal(infer.mean_shift.running_mean, torch.tensor([0.5, 0.25]))
    net.mean_shift.running_mean.fill_(0)

    with pytest.raises(BadFileError, match="missing"):
        load_irn_weights(fresh, {k: v for k, v in ours.items() if not k.startswith("fc_dp7")})


def test_edge_displacement_inference(net):
    model = EdgeDisplacement(crop_size=SIZE)
    model.load_state_dict(net.state_dict())
    model.eval()
    img = torch.randn(3, 50, 45)
    with torch.no_grad():
        edge, dp = model(img)
        edge2, _ = model(torch.stack([img, img.flip(-1)]))
    assert edge.shape == (13, 12) and dp.shape == (2, 13, 12)
    assert ((edge > 0) & (edge < 1)).all()
    torch.testing.assert_close(edge, edge2)
    with pytest.raises(ValueError, match="image"):
        model(torch.randn(3, 3, 50, 45))


def test_edge_displacement_pads_only_on_request(net):
    """ReCAM (which WaveCAM follows) runs the image as it is; IRN pads it to the training crop.
    GroupNorm spans the whole map, so the padding moves every score, not only the border's."""
    img = torch.randn(3, 50, 45)
    both = torch.stack([img, img.flip(-1)])
    with torch.no_grad():
        plain = EdgeDisplacement(crop_size=SIZE)
        plain.load_state_dict(net.state_dict())
        padded = EdgeDisplacement(crop_size=SIZE, pad_to_crop=True)
        padded.load_state_dict(net.state_dict())
        edge, dp = plain.eval()(img)
        edge_pad, dp_pad = padded.eval()(img)

        logits, disp = IRNet.forward(plain, both)
        torch.testing.assert_close(edge, torch.sigmoid(logits[0, 0] / 2 + logits[1, 0].flip(-1) / 2))
        torch.testing.assert_close(dp, disp[0])
        logits, disp = IRNet.forward(padded, torch.nn.functional.pad(both, [0, SIZE - 45, 0, SIZE - 50]))
        logits = logits[..., :13, :12]
        torch.testing.assert_close(edge_pad, torch.sigmoid(logits[0, 0] / 2 + logits[1, 0].flip(-1) / 2))
    # far from the padded border too
    assert (edge[:6, :6] - edge_pad[:6, :6]).abs().max() > 1e-3
