"""torchrun with 2 CPU processes (gloo) gives what one process gives: the same weights after
train_cam with the same global batch, and the same files from an image-wise pass."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wavecam.data.voc import VOC12
from wavecam.io import load_cam, load_checkpoint, save_checkpoint
from wavecam.models.resnet import build_resnet

pytestmark = pytest.mark.slow  # torchrun

RUNNER = Path(__file__).resolve().parents[1] / "multi_stage" / "run_wavecam_voc.py"
# What is tested is the distributed machinery, whatever the depth. ResNet-50 from random weights
# amplifies the float rounding of batches of 2 against batches of 4 into differences of 5e-6 on some
# CPUs (AMD EPYC), which no tolerance both tight enough to catch a bug and loose enough for every CPU
# separates; ResNet-18 keeps them near 1e-8, far below a wrong gradient's effect (see below).
ARCH = "resnet18"


def launch(nproc, root, ws, init, ids, *flags):
    # Weights from a file (random here) freeze BatchNorm statistics as ImageNet weights do, so the
    # per-rank batches normalise exactly like the whole batch. NCHW: oneDNN's NHWC kernels round
    # batches of 2 and of 4 differently (3e-6 after two steps), which would hide what is tested here;
    # tests/test_fast_paths.py checks channels_last on its own.
    args = [str(RUNNER), "--voc12_root", str(root), "--work_space", str(ws), "--pretrained", str(init),
            "--num_workers", "0", "--cam_crop_size", "48", "--cam_resize_long", "40", "56", "--cam_batch_size", "4",
            "--cam_num_epoches", "1", "--sgd_momentum", "0.9", "--cam_learning_rate", "0.1", "--cam_scales", "1.0",
            "--seed", "5", "--channels_last", "False", "--cam_network", ARCH, "--train_list", str(ids), *flags]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def calibrated_resnet() -> torch.nn.Module:
    """Random weights whose BatchNorm statistics are measured on random images, so that frozen they
    normalise (as ImageNet statistics do) instead of letting activations grow layer after layer,
    where float rounding would be amplified."""
    torch.manual_seed(0)
    net = build_resnet(ARCH)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 3, 48, 48))
    return net


@pytest.fixture(scope="module")
def runs(voc_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    init = tmp / "init.pth"
    save_checkpoint(init, calibrated_resnet().state_dict())
    # Two steps of a global batch of 4: over many steps a randomly initialised network amplifies the
    # float rounding of batches of 2 against batches of 4.
    ids = tmp / "ids.txt"
    ids.write_text("\n".join(VOC12(voc_root).split("train_aug")[:8]) + "\n")
    launch(1, voc_root, tmp / "one", init, ids, "--train_cam_pass", "True", "--make_cam_pass", "True")
    launch(2, voc_root, tmp / "two", init, ids, "--train_cam_pass", "True")
    # The image-wise pass with the same weights, its images split between the two ranks.
    launch(2, voc_root, tmp / "two", init, ids, "--make_cam_pass", "True",
           "--cam_weights_name", str(tmp / "one" / "res50_cam.pth"))
    return tmp / "one", tmp / "two"


def test_two_processes_train_the_same_weights(runs):
    """Equal to float rounding, and the bound is far below what training moved: a rank that saw the
    wrong samples, a gradient summed instead of averaged or one rank's step alone would each differ
    by a sizeable fraction of the update, not by a thousandth of it."""
    one, two = (load_checkpoint(ws / "res50_cam.pth") for ws in runs)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-6, msg=k)
    init = load_checkpoint(runs[0].parent / "init.pth")
    layer4 = {k[len("layer4."):]: v for k, v in init.items() if k.startswith("layer4.")}
    update = max((one["stage4.0." + k] - v).abs().max().item() for k, v in layer4.items())
    gap = max((two[k] - one[k]).abs().max().item() for k in one if k.startswith("stage4."))
    assert update > 1e3 * max(gap, 1e-9), f"training moved layer4 by {update:g}, the runs differ by {gap:g}"


def test_two_processes_write_the_same_cams(runs):
    one, two = (sorted((ws / "cam_mask").glob("*.npz")) for ws in runs)
    assert [p.name for p in one] == [p.name for p in two] and one
    for a, b in zip(one, two):
        ca, cb = load_cam(a), load_cam(b)
        np.testing.assert_array_equal(ca["keys"], cb["keys"])
        for key in ("cam", "high_res"):
            np.testing.assert_allclose(ca[key], cb[key], rtol=1e-5, atol=1e-7)
