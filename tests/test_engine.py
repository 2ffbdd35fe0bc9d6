"""The engine's pieces on their own: sampler, batch plan, accumulation, NaN guard, train state."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from wavecam.engine import runtime
from wavecam.engine.loop import Hook, fit, optimizer_step
from wavecam.engine.runtime import loss_scaler
from wavecam.engine.sampling import (
    SampleKey,
    ShuffledBatches,
    batch_plan,
    epoch_sample_seed,
    sample_generator,
)
from wavecam.engine.state import TrainState
from wavecam.errors import WavecamError


def keys_of(n, batch, world, rank, seed, start, stop, keying):
    return list(ShuffledBatches(n, batch_plan(batch, world), rank, seed, start, stop, keying))


@pytest.mark.parametrize("n,batch,world", [(23, 4, 1), (23, 4, 2), (25, 6, 3)])
def test_epoch_keying_takes_the_batches_of_torchs_distributed_sampler(n, batch, world):
    per_epoch = n // batch
    for rank in range(world):
        ours = keys_of(n, batch, world, rank, seed=5, start=0, stop=3 * per_epoch, keying="epoch")
        theirs = []
        for epoch in range(3):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5, drop_last=True)
            sampler.set_epoch(epoch)
            order = list(sampler)
            p = batch // world
            theirs += [[SampleKey(i, epoch_sample_seed(5, epoch, i)) for i in order[b * p:(b + 1) * p]]
                       for b in range(per_epoch)]
        assert ours == theirs


@pytest.mark.parametrize("keying", ["epoch", "step"])
def test_a_resumed_sampler_continues_and_the_global_batch_ignores_the_world_size(keying):
    whole = keys_of(30, 4, 1, 0, seed=1, start=0, stop=20, keying=keying)
    assert keys_of(30, 4, 1, 0, seed=1, start=9, stop=20, keying=keying) == whole[9:]
    two = [keys_of(30, 4, 2, r, seed=1, start=0, stop=20, keying=keying) for r in range(2)]
    for t in range(20):
        assert sorted(two[0][t] + two[1][t]) == sorted(whole[t])
    seeds = [k.seed for batch in whole for k in batch]
    if keying == "step":  # every sample of the run draws from its own seed
        assert len(set(seeds)) == len(seeds)


def test_sample_generator_gives_a_plain_index_the_seed_of_epoch_zero():
    i, rng = sample_generator(7)
    j, rng2 = sample_generator(SampleKey(7, epoch_sample_seed(0, 0, 7)))
    assert i == j == 7 and torch.equal(torch.rand(3, generator=rng), torch.rand(3, generator=rng2))


def test_batch_plan_and_a_too_small_dataset():
    assert batch_plan(8, 2, 2).steps == 2 and batch_plan(8, 2, 2).micro == 2
    assert batch_plan(6, 1, 4).micro == 3  # the fewest equal micro-batches of at most 4
    with pytest.raises(WavecamError, match="not divisible by the 3"):
        batch_plan(4, 3)
    with pytest.raises(WavecamError, match="fewer than one global batch"):
        ShuffledBatches(3, batch_plan(4, 1), 0, 0, 0, 1, "step")


def test_a_diverging_loss_stops_the_loop_before_its_update_and_says_where():
    ctx = runtime.init("cpu")
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    batches = [{"x": torch.ones(2, 2)}] * 6
    seen = []

    def loss_of(batch, t, k):
        loss = model(batch["x"]).mean()
        return {"loss": loss * (float("nan") if t == 4 else 1.0), "part": loss}

    with pytest.raises(WavecamError) as err:
        fit("toy", model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), batches, 0, 6, loss_of,
            batch_plan(2, 1), ctx, seed=0, hooks=[Hook(2, lambda t, v: seen.append(t))], steps_per_epoch=3,
            kept=lambda: "the state of step 4 is kept")
    msg = str(err.value)
    assert "the loss became nan at iteration 4 (epoch 2, step 2) of toy" in msg and "state of step 4" in msg
    assert seen == [2, 4]


def test_train_state_round_trip_and_refusal(tmp_path):
    ctx = runtime.init("cpu")
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** t)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    state = TrainState(tmp_path / "s.pth", {"lr": 0.1, "batch": {"size": 4}}, name="toy")
    state.save(ctx, 7, model, opt, sched)

    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda t: 0.5 ** t)
    assert state.restore(model2, opt2, sched2) == 7
    assert torch.equal(model2.weight, model.weight) and sched2.last_epoch == sched.last_epoch
    assert opt2.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])

    other = TrainState(tmp_path / "s.pth", {"lr": 0.1, "batch": {"size": 8}}, name="toy")
    with pytest.raises(WavecamError, match=r"other settings \(batch.size\)"):
        other.restore(model2, opt2, sched2)
    lenient = TrainState(tmp_path / "s.pth", {"lr": 0.1, "batch": {"size": 8}}, strict=False)
    assert lenient.restore(model2, opt2, sched2) == 7
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(WavecamError, match="not a train state of toy"):
        state.restore(model2, opt2, sched2, path=tmp_path / "weights.pth")


def test_init_is_done_once_per_process():
    assert runtime.init("cpu") is runtime.init("cpu")


def make():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)


def step(model, opt, scaler, loss):
    optimizer_step(model, opt, scaler, [None], lambda chunk, k: {"loss": loss(model)})


def test_only_fp16_gets_an_enabled_scaler():
    cpu = torch.device("cpu")
    assert loss_scaler(cpu, torch.float16).is_enabled()
    assert not loss_scaler(cpu, torch.bfloat16).is_enabled()
    assert not loss_scaler(cpu, None).is_enabled()


def test_scaled_step_equals_the_plain_step_and_skips_overflow():
    x = torch.randn(8, 4)
    plain, opt = make()
    for _ in range(3):
        step(plain, opt, loss_scaler(torch.device("cpu"), None), lambda m: m(x).pow(2).mean())
    scaled, opt2 = make()
    scaler = loss_scaler(torch.device("cpu"), torch.float16)
    for _ in range(3):
        step(scaled, opt2, scaler, lambda m: m(x).pow(2).mean())
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b)  # the scale is a power of two: unscaling is exact
    before = [p.detach().clone() for p in scaled.parameters()]
    # A finite loss whose scaled gradients overflow float32: no update, a smaller scale.
    step(scaled, opt2, scaler, lambda m: m(x).pow(2).mean() * 1e35)
    for a, b in zip(before, scaled.parameters()):
        assert torch.equal(a, b)
    assert scaler.get_scale() < 2.0**16
