"""Per-image time of make_cam's multi-scale, flipped CAM inference on a VOC-sized image.

    python bench/bench_make_cam.py [--size 500 375] [--scales 1.0 0.5 1.5 2.0] [--repeats 5] [--device cpu]

Prints the median over repeats for the full computation (ResNet-50 at every scale and its
flip, the 1x1 CAM projection, resizing and normalisation) with random weights, which cost
the same as trained ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wavecam.cam import multiscale_cam
from wavecam.models import CAMNet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    p.add_argument("--scales", type=float, nargs="+", default=(1.0, 0.5, 1.5, 2.0))
    p.add_argument("--classes", type=int, default=2, help="classes present in the image")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()

    device = torch.device(a.device)
    net = CAMNet(20, pretrained=None).to(device).eval()
    image = torch.randn(3, *a.size)
    keys = torch.arange(a.classes)
    weight = net.classifier.weight

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        multiscale_cam(net.features, image, weight, keys, a.scales, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()  # warm-up: allocator, kernels
    times = [once() for _ in range(a.repeats)]
    print(f"make_cam, {a.size[0]}x{a.size[1]} image, scales {tuple(a.scales)} + flips, {a.classes} classes, "
          f"{device}, {torch.get_num_threads()} threads")
    print(f"per image: median {statistics.median(times):.3f} s  (min {min(times):.3f}, max {max(times):.3f}, "
          f"{a.repeats} runs)")


if __name__ == "__main__":
    main()
