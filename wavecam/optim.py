"""SGD with IRN's polynomial learning-rate decay.

The reference `PolyOptimizer` calls `torch.optim.SGD(params, lr, weight_decay)`, whose third
positional argument is *momentum*: the reference therefore trains with momentum equal to the
weight decay (1e-4), the weight decay itself coming from each parameter group. We reproduce that
by default (`momentum="reference"`) and offer a conventional momentum as an option.
"""

from __future__ import annotations

import torch


def poly_sgd(
    param_groups: list[dict],
    lr: float,
    weight_decay: float,
    max_step: int,
    momentum: float | str = "reference",
    power: float = 0.9,
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over groups ({'params', 'lr', 'weight_decay'}) and a per-step poly scheduler:
    lr_t = lr_0 * (1 - t / max_step) ** power, held at its last value after max_step."""
    m = weight_decay if momentum == "reference" else float(momentum)
    groups = [{"weight_decay": weight_decay, **g} for g in param_groups]
    opt = torch.optim.SGD(groups, lr=lr, momentum=m, weight_decay=weight_decay)
    last = max(max_step - 1, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (1 - min(t, last) / max(max_step, 1)) ** power
    )
    return opt, sched


def autocast_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """The type of mixed precision (an --amp switch): bf16 on GPUs that have it, else fp16; None
    (float32) when off or on a CPU."""
    if not (enabled and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def loss_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """fp16 autocast (GPUs without bf16) needs its loss scaled, or small gradients underflow to 0;
    bf16 and float32 do not, and get a disabled scaler, which passes everything through."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and update; with an enabled scaler, steps whose gradients overflowed are skipped."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
