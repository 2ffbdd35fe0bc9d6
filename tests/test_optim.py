"""The optimiser helpers: IRN's SGD quirk and poly schedule, and the fp16 loss scaler."""

import pytest
import torch

from wavecam.optim import poly_sgd


def test_reference_momentum_is_the_weight_decay_and_poly_decays():
    w = torch.nn.Parameter(torch.ones(3))
    opt, sched = poly_sgd([{"params": [w], "lr": 0.1}], 0.1, 1e-4, max_step=10)
    assert opt.param_groups[0]["momentum"] == 1e-4
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 * (1 - 5 / 10) ** 0.9)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    _, _ = poly_sgd([{"params": [w]}], 0.1, 1e-4, 10, momentum=0.9)
