"""Process pools for image-wise work."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

import torch
from tqdm import tqdm


def map_images(fn: Callable[[str], object], ids: list[str], workers: int, desc: str, show: bool = True,
               threads: int | None = None) -> None:
    """Apply fn(id) to every id, over `workers` processes when there are several, each limited to
    `threads` torch threads if given (so that the processes' threads add up to the cores)."""
    if workers <= 1 or len(ids) <= 1:
        for i in tqdm(ids, desc=desc, disable=not show):
            fn(i)
        return
    # spawn: forked children of a process that has run torch/OpenMP threads can deadlock.
    with mp.get_context("spawn").Pool(min(workers, len(ids)), initializer=_limit_threads, initargs=(threads,)) as pool:
        for _ in tqdm(pool.imap_unordered(fn, ids, chunksize=4), total=len(ids), desc=desc, disable=not show):
            pass


def _limit_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
