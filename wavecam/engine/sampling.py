"""One sampler for every trainer: stateless, resumable, keyed by (seed, epoch or step, index).

A training run is a sequence of global batches. Batch t belongs to epoch t // E (E = n // global
batch, the last partial batch dropped); each epoch is a permutation of the dataset drawn from the
seed and the epoch, cut into global batches, each split into one slice per process. Every sample
comes with its own seed (`SampleKey`), from which its augmentation draws (`sample_generator`). All of
it is a function of (seed, t), so a run resumed at step t sees exactly what an uninterrupted one
would, whatever the number of processes or loader workers, and no `set_epoch` has to reach a
worker's copy of the dataset.

Two keyings exist because the two pipelines published their runs with them (outputs are kept
bit-identical across the engine's introduction):
  "epoch" (multi-stage): the permutation of torch's DistributedSampler (seeded with seed + epoch),
          processes taking strided positions of the global batch as it does; a sample's seed is
          a function of (seed, epoch, dataset index).
  "step"  (end to end): a permutation seeded with (seed, epoch), contiguous slices per process; a
          sample's seed is a function of (seed, step, position in the global batch), so no two
          samples of a run share one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from wavecam.errors import WavecamError


class SampleKey(NamedTuple):
    """What a keyed dataset receives in place of an index: the index and the seed of its randomness."""

    index: int
    seed: int


def sample_generator(key: int | SampleKey) -> tuple[int, torch.Generator]:
    """(index, generator) for a dataset's `__getitem__(key)`. A plain index (direct indexing, as tests
    and inference do) draws from the seed of epoch 0 of seed 0 under the "epoch" keying."""
    if not isinstance(key, SampleKey):
        key = SampleKey(int(key), epoch_sample_seed(0, 0, int(key)))
    return key.index, torch.Generator().manual_seed(key.seed)


def epoch_sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


def step_sample_seed(seed: int, sample: int) -> int:
    return seed * 1_000_003 + sample


KEYINGS = ("epoch", "step")


@dataclass(frozen=True)
class BatchPlan:
    """How the processes take a global batch: each `per_process` images, as `steps` micro-batches of
    `micro` images whose gradients it accumulates before the optimiser steps."""

    global_batch: int
    world_size: int
    per_process: int
    micro: int
    steps: int

    def describe(self) -> str:
        accumulated = (f", gradients accumulated over {self.steps} micro-batches of {self.micro}"
                       if self.steps > 1 else "")
        return (f"global batch {self.global_batch} = {self.world_size} process(es) x {self.per_process} "
                f"image(s){accumulated}")


def batch_plan(batch_size: int, world_size: int, micro_batch: int | None = None) -> BatchPlan:
    """Split the global batch `batch_size` over `world_size` processes (they must divide it), each
    taking its share in the fewest equal micro-batches of at most `micro_batch` images (default: all
    at once). AFA's VOC step (2 processes x 2 images) is then the same on 2 GPUs, on 1 (2 micro-batches
    of 2) or on 4 (1 each)."""
    micro_batch = micro_batch or batch_size
    if batch_size < 1 or micro_batch < 1:
        raise WavecamError(f"the batch size ({batch_size}) and the micro-batch ({micro_batch}) must be >= 1")
    if batch_size % world_size:
        raise WavecamError(f"the global batch {batch_size} is not divisible by the {world_size} processes; run a "
                           "number of processes (torchrun --nproc_per_node) that divides it, or change the batch size")
    per_process = batch_size // world_size
    steps = next(k for k in range(math.ceil(per_process / micro_batch), per_process + 1) if per_process % k == 0)
    return BatchPlan(batch_size, world_size, per_process, per_process // steps, steps)


def epoch_steps(n: int, plan: BatchPlan) -> int:
    """Optimiser steps in one epoch of `n` samples: whole global batches, the rest dropped."""
    if n < plan.global_batch:
        raise WavecamError(f"{n} training images are fewer than one global batch of {plan.global_batch}; "
                           "lower the batch size or train on a larger list")
    return n // plan.global_batch


class ShuffledBatches(Sampler):
    """Batch sampler over steps `start`..`stop`-1 yielding this rank's batch of `SampleKey`s, under
    one of `KEYINGS` (see the module docstring). Global batches are consecutive runs of the epoch's
    permutation under both keyings, so they hold the same images at any number of processes."""

    def __init__(self, n: int, plan: BatchPlan, rank: int, seed: int, start: int, stop: int, keying: str):
        if keying not in KEYINGS:
            raise ValueError(f"keying must be one of {KEYINGS}, got {keying!r}")
        self.per_epoch = epoch_steps(n, plan)
        self.n, self.plan, self.rank, self.seed, self.keying = n, plan, rank, seed, keying
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def permutation(self, epoch: int) -> torch.Tensor:
        seed = self.seed + epoch if self.keying == "epoch" else self.seed * 100_003 + epoch
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))

    def positions(self, t: int) -> list[int]:
        """Positions in the epoch's permutation of this rank's samples at step t."""
        plan = self.plan
        first = (t % self.per_epoch) * plan.global_batch
        if self.keying == "epoch":  # torch's DistributedSampler: rank r takes every world-th sample
            return [first + self.rank + plan.world_size * k for k in range(plan.per_process)]
        return [first + self.rank * plan.per_process + k for k in range(plan.per_process)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        order, epoch = None, None
        for t in range(self.start, self.stop):
            if t // self.per_epoch != epoch:
                epoch = t // self.per_epoch
                order = self.permutation(epoch).tolist()
            keys, first = [], t * self.plan.global_batch + self.rank * self.plan.per_process
            for k, pos in enumerate(self.positions(t)):
                index = order[pos]
                if self.keying == "epoch":
                    seed = epoch_sample_seed(self.seed, epoch, index)
                else:  # a number no other sample of the run has
                    seed = step_sample_seed(self.seed, first + k)
                keys.append(SampleKey(index, seed))
            yield keys


def micro_batch_seed(seed: int, t: int, index: int) -> int:
    """The seed of torch's generators (dropout, stochastic depth) for micro-batch `index` of the
    global batch at step t, counted over all processes. A pure function of the step: the same
    micro-batch draws the same numbers whichever process takes it, so one process accumulating two
    micro-batches steps as two processes do, and a resumed run as an uninterrupted one."""
    return (seed * 10_000_019 + t) * 100_003 + index


def train_loader(dataset: Dataset, plan: BatchPlan, rank: int, seed: int, start: int, stop: int, keying: str,
                 **options) -> DataLoader:
    """This process's batches of steps `start`..`stop`-1. Its own generator: creating an iterator
    must not draw from the global one that dropout uses."""
    batches = ShuffledBatches(len(dataset), plan, rank, seed, start, stop, keying)
    return DataLoader(dataset, batch_sampler=batches, generator=torch.Generator().manual_seed(seed), **options)
