"""The demo's stand-in for ImageNet: a torchvision ResNet taught to name the classes of freshly
drawn synthetic scenes, whose weights then start every pass as ImageNet's start the paper's.

Every pass of the paper starts from ImageNet weights and keeps something of them fixed: train_cam
and train_wavecam their BatchNorm statistics and stem, IRN its whole backbone (only its two branches
learn), DeepLab its BatchNorms. Offline, ImageNet weights cannot be assumed; from random weights
that regime has nothing to keep, IRN's boundaries are learned on features trained for nothing but
the CAM, and the chain stays far from what the method does (the README's demo section has the
numbers). So the demo pretrains, in a couple of minutes on two CPU cores: multi-label
classification (binary cross-entropy over the 20 classes) of scenes drawn by
`synthetic.render_scene` from a seed of their own, so no demo image is ever seen, smaller than the
demo's images, each scene drawn once (a stream, as ImageNet's 1.2 M images are seen a few times
each). The file is a torchvision state dict without `fc`, which `--pretrained FILE` and
`--seg_pretrained FILE` take as they take ImageNet's. Its name holds every setting, so the next run
with the same settings finds it and skips the pretraining (the cache).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Dataset

from wavecam.classes import NUM_VOC_CLASSES
from wavecam.data.synthetic import render_scene
from wavecam.data.transforms import hwc_to_chw, normalize
from wavecam.engine import runtime
from wavecam.engine.loop import Hook
from wavecam.engine.sampling import batch_plan
from wavecam.engine.trainer import Trainer
from wavecam.io import save_json
from wavecam.models.resnet import resolve_arch

log = logging.getLogger("wavecam")

LOG_ITERS = 50  # a log line and TensorBoard scalars every so many steps


@dataclass(frozen=True)
class PretrainSettings:
    arch: str = "resnet18"
    size: int = 64         # square scenes of this side
    steps: int = 300
    batch: int = 64
    lr: float = 0.2        # the one-cycle schedule's peak
    seed: int = 1000       # the scenes' stream and the initialisation; datasets are drawn from their own seeds
    style: str = "basic"   # the scenes' style (synthetic.STYLES)

    def file_name(self) -> str:
        style = "" if self.style == "basic" else f"{self.style}_"
        return (f"{resolve_arch(self.arch)}_{style}scenes{self.size}px_{self.steps}x{self.batch}"
                f"_lr{self.lr:g}_seed{self.seed}.pth")


class SceneStream(Dataset):
    """Scene `i` of the stream `seed`: ((3, size, size) float32 ImageNet-normalised, horizontally
    flipped half the time; (20,) float32 multi-hot class labels). A pure function of (seed, i)."""

    def __init__(self, n: int, size: int, seed: int, style: str = "basic"):
        self.n, self.size, self.seed, self.style = n, size, seed, style

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        scene = render_scene(rng, self.size, self.size, int(rng.integers(0, NUM_VOC_CLASSES)), style=self.style)
        img = normalize(scene.image)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        label = torch.zeros(NUM_VOC_CLASSES)
        label[scene.classes] = 1
        return hwc_to_chw(np.ascontiguousarray(img)), label


@torch.no_grad()
def held_out_accuracy(net: torch.nn.Module, settings: PretrainSettings, n: int = 512) -> float:
    """Share of held-out scenes (another seed) whose every class is called right at logit 0."""
    net.eval()
    loader = DataLoader(SceneStream(n, settings.size, settings.seed + 1, settings.style), batch_size=128)
    right = sum(int(((net(x) > 0) == (y > 0)).all(dim=1).sum()) for x, y in loader)
    return right / n


def pretrain(settings: PretrainSettings, out_dir: str | Path, workers: int = 1) -> Path:
    """The pretrained backbone file under `out_dir`, trained now unless it is there already."""
    path = Path(out_dir) / settings.file_name()
    if path.exists() and path.with_suffix(".json").exists():  # the record is written last
        log.info("pretraining: reusing %s", path)
        return path
    torch.manual_seed(settings.seed)
    net = getattr(torchvision.models, resolve_arch(settings.arch))(num_classes=NUM_VOC_CLASSES)
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=settings.steps, pct_start=0.15)
    # One worker draws the scenes while the main process trains: drawing is ~5% of a step.
    loader = DataLoader(SceneStream(settings.steps * settings.batch, settings.size, settings.seed, settings.style),
                        batch_size=settings.batch, num_workers=min(workers, 1))
    ctx = runtime.init("cpu")
    trainer = Trainer("pretrain", ctx, net, opt, sched, runtime.loss_scaler(ctx.device, None), None,
                      stop=settings.steps, plan=batch_plan(settings.batch, 1), seed=settings.seed,
                      log_iters=LOG_ITERS, tb_dir=Path(out_dir) / "tb" / path.stem)
    start, smoothed = time.perf_counter(), {}

    def loss_of(batch: list, t: int, k: int) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": F.binary_cross_entropy_with_logits(net(x), y)}

    def smooth(t: int, values: dict[str, float]) -> None:
        loss = values["loss"]
        smoothed["loss"] = loss if not smoothed else 0.95 * smoothed["loss"] + 0.05 * loss

    trainer.fit(loader, loss_of, hooks=[Hook(1, smooth)])
    accuracy = held_out_accuracy(net, settings)
    seconds = time.perf_counter() - start
    log.info("pretraining: %d steps in %.0f s, loss %.4f, held-out exact-match accuracy %.3f",
             settings.steps, seconds, smoothed["loss"], accuracy)
    record = {**asdict(settings), "final_loss": smoothed["loss"], "held_out_exact_match": accuracy, "seconds": seconds}
    trainer.finish({path: {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}},
                   after_saving=lambda: save_json(path.with_suffix(".json"), record))
    return path
