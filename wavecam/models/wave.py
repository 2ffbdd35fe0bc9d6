"""The wave module of WaveCAM and the class predictor trained on its fused class representations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _phase_conv(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 1, bias=True), nn.BatchNorm2d(c), nn.ReLU())


class WaveModeling(nn.Module):
    """Treats each class's CAM as a wave: amplitude and phase come from the foreground (the CAM) for
    the horizontal branch and from the background (its complement) for the vertical branch; the two
    branches are fused per class with softmax weights from the CAM's mean activation.

    Parameter names follow the paper's code so its checkpoints load; `fc_c` is unused there too and
    is kept for that reason only.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        c = num_classes
        self.fc_h = nn.Conv2d(c, c, 1, bias=False)
        self.fc_w = nn.Conv2d(c, c, 1, bias=False)
        self.fc_c = nn.Conv2d(c, c, 1, bias=False)
        # Frozen so that DistributedDataParallel needs no find_unused_parameters for it.
        self.fc_c.requires_grad_(False)
        self.tfc_h = nn.Conv2d(2 * c, c, (1, 7), padding=(0, 3), groups=c, bias=False)
        self.tfc_w = nn.Conv2d(2 * c, c, (7, 1), padding=(3, 0), groups=c, bias=False)
        self.w1 = nn.Conv2d(c, c, 1, bias=True)
        self.w2 = nn.Conv2d(c, c, 1, bias=True)
        self.theta_R_conv = _phase_conv(c)
        self.theta_I_conv = _phase_conv(c)

    def forward(self, cams: torch.Tensor) -> torch.Tensor:
        """cams: (B, C, g, g) max-normalised CAMs -> (B, 2C, g, g)."""
        b, c = cams.shape[:2]
        fg = F.relu(cams / 3 + 0.1)
        bg = (1 - fg) / 3
        h = self.tfc_h(_wave(self.fc_h(fg), self.theta_R_conv(fg)))
        w = self.tfc_w(_wave(self.fc_w(bg), self.theta_I_conv(bg)))

        pooled = F.adaptive_avg_pool2d(fg, 1)  # (B, C, 1, 1)
        # Channel pairs (2c, 2c+1) of the concatenation weigh class c's two branches, as in the paper's code.
        s = torch.cat([self.w1(pooled), self.w2(pooled)], dim=1).reshape(b, c, 2).softmax(dim=-1)
        return torch.cat([h * s[..., 0, None, None], w * s[..., 1, None, None]], dim=1)


def _wave(amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    # Real and imaginary parts side by side: (B, C, g, g) -> (B, 2C, g, g).
    return torch.cat([amplitude * torch.cos(phase), amplitude * torch.sin(phase)], dim=1)


class ClassPredictor(nn.Module):
    """Classifies each present class's fused representation as its own class (ReCAM's
    `Class_Predictor`; the attribute name `classifier` keeps its checkpoints loadable)."""

    def __init__(self, num_classes: int, dim: int = 2048):
        super().__init__()
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(dim, num_classes, 1, bias=False)

    def forward(self, fused: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fused (B, C, D) class representations, labels (B, C) multi-hot -> (loss, accuracy).

        The loss is the cross-entropy of each present class's representation against its own index,
        averaged over the image's classes, summed over images and divided by B (an image without
        classes adds 0). Accuracy is over all present classes of the batch.
        """
        b, c = labels.shape
        logits = torch.einsum("bkd,jd->bkj", fused, self.classifier.weight.flatten(1))  # (B, C, C)
        targets = torch.arange(c, device=fused.device).expand(b, c)
        # Absent classes get logits too (cheap at C x C), but the mask zeroes their loss and gradient.
        ce = F.cross_entropy(logits.reshape(b * c, c), targets.reshape(-1), reduction="none").view(b, c)
        present = labels > 0
        n_per_image = present.sum(dim=1)
        loss = ((ce * present).sum(dim=1) / n_per_image.clamp(min=1)).sum() / b

        correct = (logits.argmax(dim=-1) == targets) & present
        acc = correct.sum() / n_per_image.sum().clamp(min=1)
        return loss, acc
