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
