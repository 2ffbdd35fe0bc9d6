"""End-to-end network: MiT encoder and its NVlabs key layout, WaveAFA, PAR, AFA's pseudo and affinity labels, losses."""

import pytest
import torch

from wavecam.classes import IGNORE_INDEX
from wavecam.errors import BadFileError, WavecamError
from wavecam.io import save_checkpoint
from wavecam.labels import afa
from wavecam.labels.par import PAR
from wavecam.models.e2e import WaveAFA, load_pretrained, load_wave_afa_weights
from wavecam.models.mit import load_imagenet_weights, mit

AFA_STRIDE = (4, 2, 2, 1)


def nvlabs_mit_keys(embed_dims, depths, sr_ratios=(8, 4, 2, 1), mlp_ratio=4):
    """(name, shape) of every tensor of NVlabs' MixVisionTransformer, in their registration order:
    the four OverlapPatchEmbed (proj 7x7 then 3x3, norm), then per stage the Blocks (norm1; attn q, kv,
    proj, and sr + norm when sr_ratio > 1; norm2; mlp fc1, dwconv.dwconv, fc2) and the stage norm.
    Written down from their mix_transformer.py, independently of our modules."""
    keys = []
    in_ch = 3
    for s, d in enumerate(embed_dims):
        k = 7 if s == 0 else 3
        p = f"patch_embed{s + 1}."
        keys += [(p + "proj.weight", (d, in_ch, k, k)), (p + "proj.bias", (d,)),
                 (p + "norm.weight", (d,)), (p + "norm.bias", (d,))]
        in_ch = d
    for s, (d, depth, sr) in enumerate(zip(embed_dims, depths, sr_ratios)):
        hidden = mlp_ratio * d
        for i in range(depth):
            p = f"block{s + 1}.{i}."
            keys += [(p + "norm1.weight", (d,)), (p + "norm1.bias", (d,)),
                     (p + "attn.q.weight", (d, d)), (p + "attn.q.bias", (d,)),
                     (p + "attn.kv.weight", (2 * d, d)), (p + "attn.kv.bias", (2 * d,)),
                     (p + "attn.proj.weight", (d, d)), (p + "attn.proj.bias", (d,))]
            if sr > 1:
                keys += [(p + "attn.sr.weight", (d, d, sr, sr)), (p + "attn.sr.bias", (d,)),
                         (p + "attn.norm.weight", (d,)), (p + "attn.norm.bias", (d,))]
            keys += [(p + "norm2.weight", (d,)), (p + "norm2.bias", (d,)),
                     (p + "mlp.fc1.weight", (hidden, d)), (p + "mlp.fc1.bias", (hidden,)),
                     (p + "mlp.dwconv.dwconv.weight", (hidden, 1, 3, 3)), (p + "mlp.dwconv.dwconv.bias", (hidden,)),
                     (p + "mlp.fc2.weight", (d, hidden)), (p + "mlp.fc2.bias", (d,))]
        keys += [(f"norm{s + 1}.weight", (d,)), (f"norm{s + 1}.bias", (d,))]
    return keys


def afa_head_keys(embed_dims=(64, 128, 320, 512), embedding_dim=256, num_classes=21, heads=8):
    """AFA WeTr's tensors besides `encoder.*`, in its order (SegFormerHead, attn_proj, classifier)."""
    keys = []
    for s in (4, 3, 2, 1):
        keys += [(f"decoder.linear_c{s}.proj.weight", (embedding_dim, embed_dims[s - 1])),
                 (f"decoder.linear_c{s}.proj.bias", (embedding_dim,))]
    e = embedding_dim
    keys += [("decoder.linear_fuse.conv.weight", (e, 4 * e, 1, 1))]
    keys += [(f"decoder.linear_fuse.bn.{n}", (e,)) for n in ("weight", "bias", "running_mean", "running_var")]
    keys += [("decoder.linear_fuse.bn.num_batches_tracked", ()),
             ("decoder.linear_pred.weight", (num_classes, e, 1, 1)), ("decoder.linear_pred.bias", (num_classes,)),
             ("attn_proj.weight", (1, 2 * heads, 1, 1)), ("attn_proj.bias", (1,)),
             ("classifier.weight", (num_classes - 1, embed_dims[-1], 1, 1))]
    return keys


def _shapes(state_dict):
    return [(k, tuple(v.shape)) for k, v in state_dict.items()]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return WaveAFA("mit_b1", num_classes=21, stride=AFA_STRIDE)


@pytest.fixture(scope="module")
def cls_labels():
    y = torch.zeros(2, 20)
    y[0, 3] = 1
    y[1, [4, 7]] = 1
    return y


# --- MiT ---------------------------------------------------------------------------------------

def test_mit_b1_keys_are_nvlabs():
    assert _shapes(mit("mit_b1").state_dict()) == nvlabs_mit_keys((64, 128, 320, 512), (2, 2, 2, 2))


def test_mit_b0_round_trip_through_nvlabs_layout(tmp_path):
    torch.manual_seed(0)
    src = mit("mit_b0", stride=AFA_STRIDE).eval()
    sd = src.state_dict()
    assert _shapes(sd) == nvlabs_mit_keys((32, 64, 160, 256), (2, 2, 2, 2))
    # Released weights carry the ImageNet head, which loading must drop.
    head = {"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}
    save_checkpoint(tmp_path / "mit_b0.pth", {**sd, **head})

    torch.manual_seed(1)
    dst = mit("mit_b0", stride=AFA_STRIDE)
    load_imagenet_weights(dst, tmp_path / "mit_b0.pth")
    dst.eval()
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(src(x), dst(x)):
        assert torch.equal(a, b)

    del sd["block4.1.mlp.fc2.bias"]
    save_checkpoint(tmp_path / "broken.pth", sd)
    with pytest.raises(BadFileError, match="block4.1.mlp.fc2.bias"):
        load_imagenet_weights(mit("mit_b0"), tmp_path / "broken.pth")


def test_mit_attention_maps_and_strides():
    torch.manual_seed(0)
    model = mit("mit_b0", stride=AFA_STRIDE).eval()
    x = torch.randn(2, 3, 64, 64)
    features, attns = model(x, return_attn=True)
    assert [tuple(f.shape) for f in features] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 160, 4, 4), (2, 256, 4, 4)]
    # (B, heads, N, N_r): N_r = (h // sr) * (w // sr) with sr 8, 4, 2, 1; two blocks per stage.
    expected = [(2, 1, 256, 4)] * 2 + [(2, 2, 64, 4)] * 2 + [(2, 5, 16, 4)] * 2 + [(2, 8, 16, 16)] * 2
    assert [tuple(a.shape) for a in attns] == expected
    # The fused attention kernel used without maps computes the same thing.
    for a, b in zip(features, model(x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [tuple(f.shape[2:]) for f in mit("mit_b0")(x)] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_mit_rejects_unknown_variant():
    with pytest.raises(ValueError, match="mit_b7"):
        mit("mit_b7")


# --- WaveAFA -----------------------------------------------------------------------------------

def test_wave_afa_forward_shapes(net, cls_labels):
    out = net(torch.randn(2, 3, 64, 64), cls_labels)
    assert out.logits.shape == (2, 20)
    assert out.seg.shape == (2, 21, 16, 16)
    assert out.attn_pred.shape == (2, 16, 16)  # stride 16: a 4 x 4 grid, N = 16
    assert ((out.attn_pred > 0) & (out.attn_pred < 1)).all()
    assert out.wave_loss.ndim == 0 and torch.isfinite(out.wave_loss) and 0 <= out.wave_acc <= 1
    assert net(torch.randn(2, 3, 64, 64)).wave_loss is None

    cams, aff = net.cams_and_affinity(torch.randn(2, 3, 64, 64))
    assert cams.shape == (2, 20, 4, 4) and aff.shape == (2, 16, 16)


def test_wave_afa_state_dict_is_afa_plus_wavecam(net):
    sd = net.state_dict()
    afa_keys = [(k, s) for k, s in _shapes(sd) if not k.startswith(("wave.", "predictor."))]
    encoder = [("encoder." + k, s) for k, s in nvlabs_mit_keys((64, 128, 320, 512), (2, 2, 2, 2))]
    assert afa_keys == encoder + afa_head_keys()
    assert any(k.startswith("wave.") for k in sd) and "predictor.classifier.weight" in sd


def test_wavecam_cam_kernel_switch(net):
    assert torch.equal(net.cam_kernel(), net.classifier.weight)
    net.use_wavecam_cams = True
    try:
        assert torch.equal(net.cam_kernel(), net.classifier.weight * net.predictor.classifier.weight)
    finally:
        net.use_wavecam_cams = False


def test_param_groups_cover_every_parameter_once(net):
    groups = net.param_groups(lr=6e-5, weight_decay=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in net.parameters() if p.requires_grad])
    assert [g["lr"] for g in groups] == pytest.approx([6e-5, 0.0, 6e-4, 6e-4])
    assert id(net.predictor.classifier.weight) in {id(p) for p in groups[2]["params"]}


def test_wave_afa_needs_a_width_the_wave_module_can_use():
    with pytest.raises(ValueError, match="256"):
        WaveAFA("mit_b0")  # 256 is not 2 * g * g


def test_load_afa_and_own_checkpoints(net, tmp_path):
    torch.manual_seed(3)
    fresh = WaveAFA("mit_b1", stride=AFA_STRIDE)
    wave_before = fresh.wave.fc_h.weight.clone()
    # An AFA checkpoint, saved from DDP: no WaveCAM parts, `module.` prefixes.
    afa_sd = {"module." + k: v for k, v in net.state_dict().items() if not k.startswith(("wave.", "predictor."))}
    save_checkpoint(tmp_path / "wetr_iter_2000.pth", afa_sd)
    load_wave_afa_weights(fresh, tmp_path / "wetr_iter_2000.pth")
    assert torch.equal(fresh.decoder.linear_pred.weight, net.decoder.linear_pred.weight)
    assert torch.equal(fresh.wave.fc_h.weight, wave_before)

    load_wave_afa_weights(fresh, {"model": net.state_dict()})
    assert torch.equal(fresh.predictor.classifier.weight, net.predictor.classifier.weight)

    del afa_sd["module.attn_proj.bias"]
    with pytest.raises(BadFileError, match="attn_proj.bias"):
        load_wave_afa_weights(fresh, afa_sd)


def test_losses_are_finite_and_reach_every_branch(net, cls_labels):
    torch.manual_seed(0)
    net.train()
    net.zero_grad()
    images = torch.randn(2, 3, 64, 64)
    out = net(images, cls_labels)
    label = torch.randint(0, 21, (2, 64, 64))
    label[:, :8] = IGNORE_INDEX
    seg = torch.nn.functional.interpolate(out.seg, size=(64, 64), mode="bilinear", align_corners=False)
    aff_target = afa.affinity_label(label, (4, 4), afa.radius_mask(4, 4, 2))
    losses = [torch.nn.functional.multilabel_soft_margin_loss(out.logits, cls_labels), out.wave_loss,
              afa.seg_loss(seg, label), afa.affinity_loss(out.attn_pred, aff_target)]
    assert all(torch.isfinite(x) for x in losses)
    sum(losses).backward()
    for part in (net.encoder.patch_embed1, net.decoder, net.attn_proj, net.classifier, net.wave, net.predictor):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    net.eval()


def test_cam_passes_run_the_decoder_for_its_statistics_when_asked():
    """AFA's `cam_only` forward runs the decoder before returning the CAMs, so in training the
    decoder's BatchNorm running statistics also take in the multi-scale CAM passes."""
    torch.manual_seed(0)
    model = WaveAFA("mit_b1", stride=AFA_STRIDE).train()
    stats = model.decoder.linear_fuse.bn.running_mean
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = stats.clone()
        torch.manual_seed(1)  # the same stochastic depth draws in both calls
        cams, _ = model.cams_and_affinity(x)
        assert torch.equal(stats, before)
        torch.manual_seed(1)
        with_decoder, _ = model.cams_and_affinity(x, run_decoder=True)
        assert not torch.equal(stats, before) and torch.equal(cams, with_decoder)


def segformer_checkpoint(num_classes: int, embed_dims=(64, 128, 320, 512), embedding_dim=256, channels=128):
    """A state dict in the layout of NVlabs' SegFormer (mmseg) checkpoints, named here from their code
    independently of our modules: `backbone.` + the MiT names, and SegFormerHead's
    `decode_head.linear_c{1..4}.proj`, `linear_fuse.conv` (no bias: ConvModule with a norm),
    `linear_fuse.bn`, `linear_pred`, plus BaseDecodeHead's unused classifier `conv_seg` (channels 128).
    Random values, wrapped as mmseg saves them ({"meta", "state_dict"})."""
    g = torch.Generator().manual_seed(7)
    shapes = [("backbone." + k, s) for k, s in nvlabs_mit_keys(embed_dims, (2, 2, 2, 2))]
    for s in (1, 2, 3, 4):
        shapes += [(f"decode_head.linear_c{s}.proj.weight", (embedding_dim, embed_dims[s - 1])),
                   (f"decode_head.linear_c{s}.proj.bias", (embedding_dim,))]
    shapes += [("decode_head.linear_fuse.conv.weight", (embedding_dim, 4 * embedding_dim, 1, 1))]
    shapes += [(f"decode_head.linear_fuse.bn.{n}", (embedding_dim,))
               for n in ("weight", "bias", "running_mean", "running_var")]
    shapes += [("decode_head.linear_pred.weight", (num_classes, embedding_dim, 1, 1)),
               ("decode_head.linear_pred.bias", (num_classes,)),
               ("decode_head.conv_seg.weight", (num_classes, channels, 1, 1)),
               ("decode_head.conv_seg.bias", (num_classes,))]
    sd = {k: torch.randn(s, generator=g) for k, s in shapes}
    sd["decode_head.linear_fuse.bn.num_batches_tracked"] = torch.tensor(160000)
    return {"meta": {"iter": 160000}, "state_dict": sd}


def _ours(key: str) -> str:
    return key.replace("backbone.", "encoder.", 1).replace("decode_head.", "decoder.", 1)


def test_segformer_checkpoints_load_into_encoder_and_decoder(tmp_path):
    """An ADE20K SegFormer-B1 (150 classes) starts our model: every encoder and decoder tensor but the
    classifier; a 21-class one loads whole, for test.py and evaluate.py."""
    torch.manual_seed(0)
    model = WaveAFA("mit_b1", num_classes=21, stride=AFA_STRIDE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ade = segformer_checkpoint(150)
    save_checkpoint(tmp_path / "segformer.b1.512x512.ade.160k.pth", ade)
    note = load_pretrained(model, tmp_path / "segformer.b1.512x512.ade.160k.pth")
    assert "SegFormer" in note and "150-class linear_pred left out" in note
    after = model.state_dict()
    for key, value in ade["state_dict"].items():
        if "linear_pred" in key or "conv_seg" in key:
            continue
        assert torch.equal(after[_ours(key)], value), key
    kept = [k for k in after if not k.startswith(("encoder.", "decoder.")) or "linear_pred" in k]
    assert kept and all(torch.equal(after[k], before[k]) for k in kept)
    assert len([k for k in after if k.startswith(("encoder.", "decoder."))]) == len(ade["state_dict"]) - 2

    voc = segformer_checkpoint(21)
    assert load_wave_afa_weights(model, voc) == ("encoder", "decoder")
    assert torch.equal(model.decoder.linear_pred.weight, voc["state_dict"]["decode_head.linear_pred.weight"])
    del voc["state_dict"]["decode_head.linear_fuse.bn.running_var"]
    with pytest.raises(BadFileError, match="decoder.linear_fuse.bn.running_var"):
        load_wave_afa_weights(model, voc)


def test_imagenet_weights_start_the_encoder_and_a_missing_file_says_where_they_come_from(tmp_path):
    torch.manual_seed(0)
    src = mit("mit_b1", stride=AFA_STRIDE)
    save_checkpoint(tmp_path / "mit_b1.pth", {**src.state_dict(), "head.weight": torch.zeros(1000, 512),
                                             "head.bias": torch.zeros(1000)})
    model = WaveAFA("mit_b1", stride=AFA_STRIDE)
    load_pretrained(model, tmp_path / "mit_b1.pth")
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in src.state_dict().items())
    with pytest.raises(WavecamError, match="NVlabs/SegFormer.*ImageNet-1K"):
        load_pretrained(WaveAFA("mit_b1"), tmp_path / "nowhere" / "mit_b1.pth")


# --- PAR ---------------------------------------------------------------------------------------

def test_par_keeps_a_constant_map_constant():
    par = PAR()
    out = par(torch.full((1, 3, 20, 24), 0.4), torch.full((1, 2, 10, 12), 0.7))
    assert out.shape == (1, 2, 20, 24)
    # AFA's weights sum to 1 + w2 per pixel: the map stays flat and grows by (1 + w2) per iteration.
    torch.testing.assert_close(out, torch.full_like(out, 0.7 * 1.01**10))


def test_par_respects_colour_edges():
    image = torch.zeros(1, 3, 24, 24)
    image[..., 12:] = 1  # a vertical edge between columns 11 and 12
    fg = torch.zeros(1, 1, 24, 24)
    fg[..., :9] = 1
    fg[..., 9:15] = 0.5  # an undecided band across the edge
    out = PAR()(image, torch.cat([1 - fg, fg], dim=1))
    expected = torch.zeros(24, 24, dtype=torch.long)
    expected[:, :12] = 1
    assert torch.equal(out.argmax(dim=1)[0], expected)

    # A map that ends at the edge barely leaks across it.
    left = torch.zeros(1, 1, 24, 24)
    left[..., :12] = 1
    out = PAR()(image, left)
    assert out[..., 12:].max() < 0.01 and out[..., :12].min() > 1.0


# --- labels ------------------------------------------------------------------------------------

def test_affinity_label_on_a_hand_made_label():
    label = torch.zeros(1, 32, 32, dtype=torch.long)
    label[:, :16, :] = 1  # top half class 1
    label[:, 16:, 16:] = IGNORE_INDEX  # bottom-right unsure; bottom-left background
    # Grid cells in raster order: top-left 1, top-right 1, bottom-left 0, bottom-right unsure.
    i = IGNORE_INDEX
    expected = torch.tensor([[1, 1, 0, i], [1, 1, 0, i], [0, 0, 1, i], [i, i, i, i]])
    assert torch.equal(afa.affinity_label(label, (2, 2))[0], expected)

    diagonal_only = afa.radius_mask(2, 2, radius=0)
    assert torch.equal(diagonal_only, torch.eye(4, dtype=torch.bool))
    expected_masked = torch.where(torch.eye(4, dtype=torch.bool), expected, i)
    assert torch.equal(afa.affinity_label(label, (2, 2), diagonal_only)[0], expected_masked)


def test_affinity_loss_is_zero_for_a_perfect_prediction():
    target = torch.tensor([[[1, 0, IGNORE_INDEX], [0, 1, 1], [IGNORE_INDEX, 1, 1]]])
    perfect = (target == 1).float()
    assert afa.affinity_loss(perfect, target) == 0
    assert afa.affinity_loss(1 - perfect, target) > 0.4


def test_seg_loss_balances_background_and_foreground():
    pred = torch.zeros(1, 3, 2, 2, requires_grad=True)
    label = torch.tensor([[[0, 0], [0, 2]]])
    loss = afa.seg_loss(pred, label)
    torch.testing.assert_close(loss, torch.log(torch.tensor(3.0)))  # uniform logits: log C on each part
    loss.backward()
    assert pred.grad[0, :, 1, 1].abs().sum() > pred.grad[0, :, 0, 0].abs().sum()  # the lone fg pixel weighs more
    only_ignored = torch.full((1, 2, 2), IGNORE_INDEX)
    assert afa.seg_loss(pred, only_ignored) == 0


def test_cam_to_label_thresholds_and_box():
    cams = torch.tensor([0.2, 0.4, 0.5, 0.9]).view(1, 1, 1, 4).repeat(1, 2, 1, 1)
    cams[:, 0] = 1.0  # an absent class scoring high must not win
    labels = torch.tensor([[0.0, 1.0]])
    assert afa.cam_to_label(cams, labels, bg_thres=0.45).tolist() == [[[0, 0, 2, 2]]]
    banded = afa.cam_to_label(cams, labels, bg_thres=0.35, high_thre=0.55)
    assert banded.tolist() == [[[0, IGNORE_INDEX, IGNORE_INDEX, 2]]]
    boxed = afa.cam_to_label(cams, labels, bg_thres=0.35, high_thre=0.55, img_box=[(0, 1, 0, 2)])
    assert boxed.tolist() == [[[0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]]


def test_online_pseudo_labels_end_to_end(net, cls_labels):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    box = torch.tensor([[0, 64, 0, 48], [8, 64, 0, 64]])
    ms = afa.multi_scale_cams(net.cams_and_affinity, images, scales=(1.0, 0.5, 1.5))
    assert ms.cams.shape == (2, 20, 64, 64) and ms.cams.min() >= 0 and ms.cams.max() <= 1
    assert ms.aff_size == (6, 6) and ms.aff.shape == (2, 36, 36)  # from the 96 x 96 scale

    par = PAR(num_iter=2)
    allowed = [{0, 4, IGNORE_INDEX}, {0, 5, 8, IGNORE_INDEX}]  # background, present classes + 1, unsure
    refined = afa.refine_cams_with_bkg(par, images, ms.cams, cls_labels, img_box=box)
    propagated = afa.propagated_label(par, images, ms, cls_labels, afa.radius_mask(*ms.aff_size, 8), img_box=box)
    for label in (refined, propagated):
        assert label.shape == (2, 64, 64) and label.dtype == torch.long
        for i in range(2):
            assert set(label[i].unique().tolist()) <= allowed[i]
        assert (label[0, :, 48:] == IGNORE_INDEX).all() and (label[1, :8] == IGNORE_INDEX).all()

    probs = afa.propagate_cams(ms.cams[:, :, ::11, ::11], ms.aff, cls_labels, 0.45)
    assert probs.shape == (2, 21, 6, 6)
    absent = torch.ones(2, 21, dtype=torch.bool)
    absent[:, 0] = False
    absent[0, 4] = absent[1, 5] = absent[1, 8] = False
    assert (probs[absent] == 0).all() and (probs[~absent] > 0).all()
