"""The optimiser helpers: IRN's SGD quirk and poly schedule, and the fp16 loss scaler."""

import pytest
import torch

from wavecam.optim import loss_scaler, optimizer_step, poly_sgd


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


def make():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)


def test_only_fp16_gets_an_enabled_scaler():
    cpu = torch.device("cpu")
    assert loss_scaler(cpu, torch.float16).is_enabled()
    assert not loss_scaler(cpu, torch.bfloat16).is_enabled()
    assert not loss_scaler(cpu, None).is_enabled()


def test_scaled_step_equals_the_plain_step_and_skips_overflow():
    x = torch.randn(8, 4)
    plain, opt = make()
    for _ in range(3):
        optimizer_step(plain(x).pow(2).mean(), opt, loss_scaler(torch.device("cpu"), None))
    scaled, opt2 = make()
    scaler = loss_scaler(torch.device("cpu"), torch.float16)
    for _ in range(3):
        optimizer_step(scaled(x).pow(2).mean(), opt2, scaler)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b)  # the scale is a power of two: unscaling is exact
    before = [p.detach().clone() for p in scaled.parameters()]
    optimizer_step(scaled(x).sum() * float("inf"), opt2, scaler)  # overflow: no update, smaller scale
    for a, b in zip(before, scaled.parameters()):
        assert torch.equal(a, b)
    assert scaler.get_scale() < 2.0**16
