"""Small helpers shared by several test files (pytest puts this folder on the import path)."""

import os
import signal
import subprocess
import time

import torch
from torch import nn


def randomise_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine terms away from their defaults, so that a wrongly mapped or
    unloaded tensor changes the output instead of going unnoticed."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return module


def run_killed_when(cmd, ready, env) -> None:
    """Start cmd, SIGKILL it as soon as ready() holds (the test fails if it finished first)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, "the pass ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

