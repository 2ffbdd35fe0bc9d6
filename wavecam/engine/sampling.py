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

from typing import NamedTuple

import torch


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
