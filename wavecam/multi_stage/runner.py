"""The multi-stage runner: the flags switch passes on, and the switched-on passes run in order.

As in IRN's `run_sample.py`, the runner is a list of flags; each pass is a module of
wavecam.multi_stage.passes exposing `run(args)`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

import torch

from wavecam import dist
from wavecam.io import WavecamError
from wavecam.multi_stage import passes
from wavecam.multi_stage.flags import build_parser, finalize

# Flag -> pass module, in the order a full run executes them.
PASSES = {f"{name}_pass": f"{passes.__name__}.{name}" for name in passes.ORDER}


def main(dataset: str, argv: list[str] | None = None) -> int:
    args = build_parser(dataset).parse_args(argv)
    try:
        args = finalize(args)
        os.makedirs(args.work_space, exist_ok=True)
        ctx = dist.init(args.device)
        dist.setup_logging(args.log_name, ctx)
        if args.deterministic:
            make_deterministic()
        log = logging.getLogger("wavecam")
        log.info("arguments: %s", vars(args))
        for flag, module in PASSES.items():
            if getattr(args, flag):
                run_pass(module, args, log)
    except WavecamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk, a vanished folder: say which file, not where in the code
        print(f"error: cannot write or read {e.filename or 'a file'}: {e.strerror or e}; free some space or "
              "choose a writable --work_space, then re-run: finished outputs are kept", file=sys.stderr)
        return 2
    return 0


def run_pass(module: str, args, log: logging.Logger) -> None:
    name = module.rpartition(".")[2]
    start = time.perf_counter()
    log.info("== %s", name)
    torch.backends.cudnn.benchmark = False  # the training passes turn it on (common.wrap_ddp)
    importlib.import_module(module).run(args)
    log.info("== %s done in %.1f s", name, time.perf_counter() - start)


def make_deterministic() -> None:
    # cuBLAS needs a fixed workspace for reproducible matrix products.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
