"""Hot paths of the multi-stage passes against the plain formulation of the reference code,
timed side by side in one run, with their outputs compared.

    python bench/bench_hot_paths.py [--repeats 5]

* class features (train_wavecam): one batched matmul vs ReCAM's (B, C, D, h*w) broadcast product
* predictor loss (train_wavecam): one masked cross-entropy vs the per-image loop
* evaluation (eval_cam / eval_sem_seg): streaming bincount confusion over 1,449 VOC-sized label
  maps vs a per-image confusion built class pair by class pair
* dense CRF (cam_to_ir_label): one 500x375 inference, the slowest CPU step
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from wavecam.labels.crf import crf_inference_label
from wavecam.metrics import ConfusionMatrix
from wavecam.models.cam import class_features
from wavecam.models.wave import ClassPredictor


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_class_features(cams: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    b, c = cams.shape[:2]
    d = feats.shape[1]
    return (cams.unsqueeze(2) * feats.unsqueeze(1)).view(b, c, d, -1).mean(-1)


def plain_predictor_loss(predictor: ClassPredictor, fused: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = fused.new_zeros(())
    for x, y in zip(fused, labels):
        present = torch.nonzero(y).squeeze(1)
        if len(present):
            logits = F.conv2d(x[present][..., None, None], predictor.classifier.weight).flatten(1)
            loss = loss + F.cross_entropy(logits, present)
    return loss / fused.shape[0]


def plain_confusion(preds, gts, n: int) -> np.ndarray:
    conf = np.zeros((n, n), np.int64)
    for p, g in zip(preds, gts):
        for i in range(n):
            gi = g == i
            if gi.any():
                for j in range(n):
                    conf[i, j] += np.count_nonzero(gi & (p == j))
    return conf


def row(name: str, ours: float, plain: float | None, diff: str) -> str:
    ratio = f"{plain / ours:8.1f}x" if plain else "        -"
    plain_s = f"{plain:10.4f}" if plain else "         -"
    return f"{name:<34} {ours:10.4f} {plain_s} {ratio}   {diff}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eval-images", type=int, default=1449)
    a = p.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    print(f"median of {a.repeats} runs, seconds; CPU threads {torch.get_num_threads()}")
    print(f"{'computation':<34} {'ours':>10} {'plain':>10} {'speed-up':>9}   max difference")

    # train_wavecam at the paper's size: batch 16, 20 classes, 2048 channels, 32x32 features.
    cams, feats = torch.rand(16, 20, 32, 32), torch.rand(16, 2048, 32, 32)
    ours = class_features(cams, feats)
    diff = (ours - plain_class_features(cams, feats)).abs().max().item()
    print(row("class features (16x20x2048x32x32)", median_time(lambda: class_features(cams, feats), a.repeats),
              median_time(lambda: plain_class_features(cams, feats), a.repeats), f"{diff:.1e}"))

    predictor = ClassPredictor(20, 2048)
    fused, labels = torch.randn(16, 20, 2048), (torch.rand(16, 20) < 0.15).float()
    labels[:, 0] = 1
    diff = abs(predictor(fused, labels)[0].item() - plain_predictor_loss(predictor, fused, labels).item())
    print(row("predictor loss (batch 16)", median_time(lambda: predictor(fused, labels), a.repeats),
              median_time(lambda: plain_predictor_loss(predictor, fused, labels), a.repeats), f"{diff:.1e}"))

    n = a.eval_images
    gts = [rng.integers(0, 21, (375, 500)).astype(np.uint8) for _ in range(n)]
    preds = [rng.integers(0, 21, (375, 500)).astype(np.uint8) for _ in range(n)]

    k = min(n, 50)  # the plain loop would take minutes on all 1,449: timed on 50 and scaled
    plain_t = median_time(lambda: plain_confusion(preds[:k], gts[:k], 21), 1) * n / k
    same = np.array_equal(plain_confusion(preds[:k], gts[:k], 21), streaming_of(preds[:k], gts[:k]))
    print(row(f"confusion of {n} 500x375 maps", median_time(lambda: streaming_of(preds, gts), 1), plain_t,
              "equal (on 50)" if same else "DIFFERENT"))

    img = rng.integers(0, 256, (375, 500, 3)).astype(np.uint8)
    labels_map = np.zeros((375, 500), np.int64)
    labels_map[100:250, 150:350] = 1
    print(row("dense CRF, 500x375, 10 iterations", median_time(
        lambda: crf_inference_label(img, labels_map, n_labels=2), a.repeats), None, ""))


def streaming_of(preds, gts) -> np.ndarray:
    cm = ConfusionMatrix(21)
    for pr, gt in zip(preds, gts):
        cm.update(pr, gt)
    return cm.mat


if __name__ == "__main__":
    main()
