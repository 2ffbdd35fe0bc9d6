"""The global batch over processes and micro-batches, and the iteration-indexed sampler that gives a
resumed run the batches of an uninterrupted one: `batch_plan` splits `train.batch_size`,
`accumulated_step` takes one optimiser step over a process's micro-batches, `micro_batch_seed` and
`IterationBatches` / `SeededSamples` make every draw a function of the step."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from wavecam.io import WavecamError


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


def batch_plan(batch_size: int, micro_batch: int, world_size: int) -> BatchPlan:
    """Split the global batch `batch_size` over `world_size` processes (they must divide it), each
    taking its share in the fewest equal micro-batches of at most `micro_batch` images. AFA's VOC step
    (2 processes x 2 images) is then the same on 2 GPUs, on 1 (2 micro-batches of 2) or on 4 (1 each)."""
    if batch_size < 1 or micro_batch < 1:
        raise WavecamError(f"train.batch_size ({batch_size}) and train.micro_batch ({micro_batch}) must be >= 1")
    if batch_size % world_size:
        raise WavecamError(f"train.batch_size {batch_size} is not divisible by the {world_size} processes; run a "
                           "number of processes that divides it (NPROC), or change the batch")
    per_process = batch_size // world_size
    steps = next(k for k in range(math.ceil(per_process / micro_batch), per_process + 1) if per_process % k == 0)
    return BatchPlan(batch_size, world_size, per_process, per_process // steps, steps)


def micro_batch_seed(seed: int, t: int, index: int) -> int:
    """The seed of torch's generators (dropout, stochastic depth) for micro-batch `index` of the
    global batch at iteration t, counted over all processes. A pure function of the step: the same
    micro-batch draws the same numbers whichever process takes it, so one process accumulating two
    micro-batches steps as two processes do, and a resumed run as an uninterrupted one."""
    return (seed * 10_000_019 + t) * 100_003 + index


def accumulated_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     chunks: Sequence[Any], loss_of: Callable[[Any, int], torch.Tensor]) -> None:
    """One optimiser step over this process's micro-batches `chunks`: `loss_of(chunk, k)` runs the
    forward and returns the chunk's loss, whose backward is taken divided by the number of chunks.

    The gradient is thus the mean of the chunks' gradients; DistributedDataParallel averages it over
    the processes, in the last backward only (the others run under `no_sync`), so the step's gradient
    is the mean over all micro-batches of the global batch, whichever way processes and accumulation
    share them. Where the loss is a mean over samples this is the gradient of the whole batch's loss;
    AFA's losses are means per process, and this is the mean its processes' DDP step takes."""
    opt.zero_grad(set_to_none=True)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    for k, chunk in enumerate(chunks):
        last = k == len(chunks) - 1
        with contextlib.nullcontext() if last or not ddp else model.no_sync():
            loss = loss_of(chunk, k)
            scaler.scale(loss / len(chunks)).backward()
    scaler.step(opt)
    scaler.update()


class IterationBatches:
    """Batch sampler over iterations `start`..`stop`-1, yielding this rank's batch of (index, seed) keys.

    Iteration t belongs to epoch t // E (E = len(dataset) // global batch, the last partial batch
    dropped); each epoch is a permutation drawn from (seed, epoch) and split into global batches, each
    cut into one slice per rank. A sample's seed fixes its augmentation (see `SeededSamples`). Both
    depend only on (seed, t) and the global batch, so a run resumed at t sees exactly what an
    uninterrupted one would, and the global batch holds the same images at any number of processes."""

    def __init__(self, n: int, plan: BatchPlan, rank: int, seed: int, start: int, stop: int):
        self.global_batch = plan.global_batch
        if n < self.global_batch:
            raise WavecamError(f"{n} training images are fewer than one global batch of {self.global_batch}; "
                               "lower train.batch_size or use a larger split")
        self.n, self.per_rank, self.rank, self.seed = n, plan.per_process, rank, seed
        self.start, self.stop = start, stop
        self.per_epoch = n // self.global_batch

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, epoch = None, None
        for t in range(self.start, self.stop):
            if t // self.per_epoch != epoch:
                epoch = t // self.per_epoch
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            first = (t % self.per_epoch) * self.global_batch + self.rank * self.per_rank
            sample = t * self.global_batch + self.rank * self.per_rank  # a number no other sample of the run has
            yield [(int(order[first + k]), self.seed * 1_000_003 + sample + k) for k in range(self.per_rank)]


class SeededSamples(Dataset):
    """`dataset[index]` drawn under torch's generator seeded with the key's seed, so the random
    crop of a sample depends neither on the worker that loads it nor on what was loaded before."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
