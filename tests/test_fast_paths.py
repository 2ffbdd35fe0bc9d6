"""The fast paths change nothing but speed: persistent workers augment as the main process does,
channels_last and same-size inference batches give the CAMs of the plain layout and of one image
at a time (to float tolerance), and the switches reach the passes."""


import numpy as np
import pytest
import torch
from PIL import Image

from wavecam.data.datasets import ClassificationDataset
from wavecam.data.voc import VOC12
from wavecam.engine.sampling import batch_plan, train_loader
from wavecam.io import load_cam
from wavecam.multi_stage.cams import same_size_batches
from wavecam.multi_stage.runner import main

FLAGS = ("--pretrained none --num_workers 0 --cam_crop_size 48 --cam_resize_long 40 56 --cam_batch_size 4 "
         "--cam_num_epoches 1 --cam_scales 1.0 0.5 --sgd_momentum 0.9 --cam_learning_rate 0.01 --seed 3 "
         "--cam_network resnet18")


def test_loader_workers_draw_the_augmentations_of_the_main_process(voc_root):
    """Workers receive keys, not indices: sample i of epoch e is augmented as the main process would,
    in every worker and in every epoch of one loader spanning the run."""
    source = VOC12(voc_root)
    ids = source.split("train_aug")[:8]
    data = ClassificationDataset(source, ids, crop_size=32, resize_long=(28, 44), hflip=True)

    def batches(workers):
        loader = train_loader(data, batch_plan(4, 1), 0, 7, 0, 4, "epoch", num_workers=workers)
        return [batch["img"] for batch in loader]

    plain, workers = batches(0), batches(2)
    assert len(plain) == len(workers) == 4
    for a, b in zip(plain, workers):
        assert torch.equal(a, b)
    # The second epoch's crops are new ones, not the first epoch's again.
    assert not torch.equal(plain[0], plain[2]) or not torch.equal(plain[1], plain[3])


def test_same_size_batches_group_images_of_one_size(voc_root, tmp_path):
    source = VOC12(voc_root)
    ids = source.split("train_aug")
    groups = same_size_batches(source, ids, 3)
    assert sorted(i for g in groups for i in g) == list(range(len(ids)))
    assert any(len(g) > 1 for g in groups), "the synthetic root has no two images of one size: test is vacuous"
    for g in groups:
        assert 1 <= len(g) <= 3
        assert len({Image.open(source.image_path(ids[i])).size for i in g}) == 1


def test_unreadable_header_is_a_group_of_its_own(voc_root, tmp_path):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    source = VOC12(root)
    ids = source.split("train_aug")
    source.image_path(ids[0]).write_bytes(b"not a jpeg")
    groups = same_size_batches(source, ids, 8)
    assert [0] in groups


def make_cams(root, ws, *flags):
    argv = (f"--voc12_root {root} --work_space {ws} {FLAGS} --make_cam_pass True "
            f"--cam_weights_name {ws.parent / 'res50_cam.pth'}").split()
    assert main("voc", [*argv, *flags]) == 0
    return {p.stem: load_cam(p) for p in sorted((ws / "cam_mask").glob("*.npz"))}


@pytest.fixture(scope="module")
def trained(voc_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fast")
    argv = f"--voc12_root {voc_root} --work_space {tmp} {FLAGS} --train_cam_pass True".split()
    assert main("voc", argv) == 0
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("flags", [("--channels_last", "True", "--cam_infer_batch", "1"),
                                   ("--channels_last", "False", "--cam_infer_batch", "4")])
def test_fast_make_cam_matches_the_plain_one(voc_root, trained, flags):
    plain = make_cams(voc_root, trained / "plain", "--channels_last", "False", "--cam_infer_batch", "1")
    fast = make_cams(voc_root, trained / f"fast{'_'.join(flags)}", *flags)
    assert plain.keys() == fast.keys() and len(plain) == len(VOC12(voc_root).split("train_aug"))
    for name in plain:
        np.testing.assert_array_equal(plain[name]["keys"], fast[name]["keys"])
        for k in ("cam", "high_res"):
            np.testing.assert_allclose(fast[name][k], plain[name][k], atol=2e-4, err_msg=f"{name} {k}")


@pytest.mark.slow
def test_channels_last_training_matches_nchw(voc_root, tmp_path, monkeypatch):
    """train_cam with --channels_last True ends with the weights of NCHW training, compared in float64.

    NHWC and NCHW convolutions sum their products in different orders, so in float32 the two runs
    differ by rounding (~1e-7 relative) from the first step, and each optimiser step feeds that back
    into the next batch's activations and BatchNorm statistics: after the pass's 6 momentum steps
    running statistics of order 1 differed by up to 2.6e-4 (about 4000 float32 epsilons), by an
    amount that depends on the CPU's kernels and thread count, so no float32 tolerance is both safe
    and tight. In float64 (the default dtype while the pass runs, so the model is built in it; the
    images are cast to it keeping their layout) the same amplification of an epsilon of 2.2e-16
    stays near 1e-12 (measured: 4e-15 with 1 to 3 threads), far under the tolerance of 1e-9, while a
    real layout mistake is far over it (an NHWC batch read as NCHW, measured: every trained tensor
    off by at least 4e-5, the worst by 1.0)."""
    from wavecam.engine import runtime
    from wavecam.io import load_checkpoint
    from wavecam.multi_stage.passes import train_cam

    monkeypatch.setattr(train_cam, "to_device", lambda images, ctx, channels_last=False: runtime.to_device(
        images, ctx, channels_last).to(torch.float64))  # .to(dtype) preserves the memory format
    ws = {}
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for fmt in ("True", "False"):
            ws[fmt] = tmp_path / f"train_cl_{fmt}"
            argv = f"--voc12_root {voc_root} --work_space {ws[fmt]} {FLAGS} --train_cam_pass True".split()
            assert main("voc", [*argv, "--channels_last", fmt]) == 0
    finally:
        torch.set_default_dtype(dtype)
    a, b = (load_checkpoint(ws[f] / "res50_cam.pth") for f in ("True", "False"))
    for k in b:
        if b[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-9, msg=k)


def test_cudnn_benchmark_only_for_the_fixed_crops_of_training(voc_root, tmp_path, monkeypatch):
    """Image-wise passes see a new shape per image size and scale: cuDNN's autotuning is off there."""
    from wavecam.engine import trainer
    from wavecam.multi_stage.passes import eval_cam

    seen = []
    monkeypatch.setattr(eval_cam, "run", lambda args: seen.append(torch.backends.cudnn.benchmark))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    assert main("voc", f"--voc12_root {voc_root} --work_space {tmp_path} --eval_cam_pass True".split()) == 0
    assert seen == [False]

    # The training loop sees it on, unless --deterministic.
    def record(*args, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "fit", record)
    for deterministic in ("False", "True"):
        argv = f"--voc12_root {voc_root} --work_space {tmp_path / deterministic} {FLAGS} --train_cam_pass True"
        with pytest.raises(KeyboardInterrupt):
            main("voc", [*argv.split(), "--deterministic", deterministic])
    assert seen == [False, True, False]
