"""Process pools for image-wise work."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any

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


class BackgroundPool:
    """`fn(*args)` of each submitted job in `workers` processes beside the main loop, which meanwhile
    goes on (a network segmenting the next images while the dense CRF refines the last); 0 runs each
    job at once in this process. At most 2 x workers jobs wait, so memory stays bounded. `submit` and
    `drain` return the finished jobs as (result, payload) pairs; `fn` must be a module-level function
    (the processes are spawned)."""

    def __init__(self, workers: int, fn: Callable[..., Any]):
        self.workers, self.fn, self.pool, self.waiting = workers, fn, None, []

    def __enter__(self) -> BackgroundPool:
        if self.workers > 0:
            # spawn: forked children of a process that has run torch/OpenMP threads can deadlock.
            self.pool = mp.get_context("spawn").Pool(self.workers)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is None:
            return
        if exc[0] is None:
            self.pool.close()
        else:  # an error in the loop: waiting jobs do not matter any more
            self.pool.terminate()
        self.pool.join()

    def submit(self, args: tuple, payload: Any = None) -> list[tuple[Any, Any]]:
        if self.pool is None:
            return [(self.fn(*args), payload)]
        self.waiting.append((self.pool.apply_async(self.fn, args), payload))
        finished = []
        while len(self.waiting) > 2 * self.workers or (self.waiting and self.waiting[0][0].ready()):
            job, its_payload = self.waiting.pop(0)
            finished.append((job.get(), its_payload))
        return finished

    def drain(self) -> list[tuple[Any, Any]]:
        finished = [(job.get(), payload) for job, payload in self.waiting]
        self.waiting = []
        return finished
