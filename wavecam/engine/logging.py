"""Logging for training runs: the log file, meters with throughput and ETA (DINO's MetricLogger),
TensorBoard scalars."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from wavecam.engine.runtime import Context

log = logging.getLogger("wavecam")


DATED = "%Y-%m-%d %H:%M:%S"  # for runs that last days (the end-to-end trainer)


def setup_logging(log_file: str | os.PathLike | None, ctx: Context | None = None, datefmt: str = "%H:%M:%S") -> None:
    """Rank 0 logs INFO to stderr and to `log_file`; other ranks only warnings. `datefmt` is the
    timestamp's strftime format."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    main = ctx is None or ctx.is_main
    root.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and main:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)


class SmoothedValue:
    """A series' median over the last `window` values and its mean since the start."""

    def __init__(self, window: int = 20):
        self.recent: deque[float] = deque(maxlen=window)
        self.total, self.count = 0.0, 0

    def update(self, value: float) -> None:
        self.recent.append(value)
        self.total += value
        self.count += 1

    @property
    def median(self) -> float:
        return float(np.median(self.recent))

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)


class MetricLogger:
    """DINO-style progress: every `log_iters` iterations one line with the iteration, ETA, smoothed
    metrics, seconds per iteration (and waiting for data) and images per second over all ranks."""

    def __init__(self, start: int, stop: int, images_per_iter: int, log_iters: int):
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.start, self.stop, self.images_per_iter, self.log_iters = start, stop, images_per_iter, log_iters
        self.last = time.time()

    def update(self, **values: float) -> None:
        for k, v in values.items():
            self.meters[k].update(float(v))

    def iterations(self, loader: DataLoader) -> Iterator[tuple[int, Any]]:
        """(iteration, batch) pairs, timing the wait for each batch."""
        for t, batch in zip(range(self.start, self.stop), loader):
            self.update(data=time.time() - self.last)
            yield t, batch

    def step_done(self, t: int, **values: float) -> None:
        """Record iteration t's metrics and its time since the previous one; log every `log_iters`."""
        now = time.time()
        self.update(time=now - self.last, **values)
        self.last = now
        if (t + 1) % self.log_iters == 0 or t + 1 == self.stop:
            log.info(self.line(t))

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Leave what runs inside (validation, checkpoints) out of the iteration times and the ETA."""
        start = time.time()
        yield
        self.last += time.time() - start

    def line(self, t: int) -> str:
        step = self.meters["time"]
        eta = datetime.timedelta(seconds=int(step.global_avg * (self.stop - t - 1)))
        metrics = "  ".join(f"{k} {m.median:.4g} ({m.global_avg:.4g})" for k, m in self.meters.items()
                            if k not in ("time", "data"))
        return (f"iter {t + 1}/{self.stop}  eta {eta}  {metrics}  time {step.median:.3f}s  "
                f"data {self.meters['data'].median:.3f}s  {self.images_per_iter / max(step.median, 1e-9):.1f} img/s")


def tensorboard(log_dir: str | os.PathLike, ctx: Context):
    """A SummaryWriter on rank 0 when TensorBoard is installed, else None."""
    if not ctx.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("TensorBoard is not installed, so there are no TensorBoard logs; it is one of wavecam's "
                    "dependencies: pip install tensorboard")
        return None
    return SummaryWriter(str(log_dir))


def add_scalars(writer, prefix: str, values: dict[str, float], step: int) -> None:
    if writer is not None:
        for k, v in values.items():
            writer.add_scalar(f"{prefix}/{k}", v, step)
