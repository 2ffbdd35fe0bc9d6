"""The multi-stage runner: the flags switch passes on, and the switched-on passes run in order.

As in IRN's `run_sample.py`, the runner is a list of flags; each pass is a module of
wavecam.multi_stage.passes exposing `run(args)`. The flags may come from --config recipes
(multi_stage/configs/); every run writes its resolved flags to workspace.settings_path.
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from wavecam.engine import runtime
from wavecam.engine.cli import run_cli
from wavecam.engine.logging import setup_logging
from wavecam.multi_stage import passes
from wavecam.multi_stage.flags import finalize, parse_args, resolved_settings, save_settings
from wavecam.multi_stage.workspace import settings_path

# Flag -> pass module, in the order a full run executes them.
PASSES = {f"{name}_pass": f"{passes.__name__}.{name}" for name in passes.ORDER}


def main(dataset: str, argv: list[str] | None = None) -> int:
    def job() -> None:
        # A recipe that is missing, not YAML or holds a bad value is a WavecamError: one line, exit 2.
        args = parse_args(dataset, argv)
        settings = resolved_settings(args)  # before finalize joins the paths to the work space
        finalize(args)
        os.makedirs(args.work_space, exist_ok=True)
        ctx = runtime.init(args.device)
        setup_logging(args.log_name, ctx)
        if ctx.is_main:
            save_settings(settings_path(args.work_space), dataset, settings, args.config)
        if args.deterministic:
            runtime.make_deterministic()
        log = logging.getLogger("wavecam")
        log.info("arguments: %s", vars(args))
        for flag, module in PASSES.items():
            if getattr(args, flag):
                run_pass(module, args, log)

    return run_cli(job, "--work_space")


def run_pass(module: str, args, log: logging.Logger) -> None:
    name = module.rpartition(".")[2]
    start = time.perf_counter()
    log.info("== %s", name)
    # Image-wise passes see a new shape per image size and scale; training passes turn it on for their
    # fixed crops (multi_stage.training.train_epochs).
    runtime.set_cudnn(benchmark=False, deterministic=args.deterministic)
    importlib.import_module(module).run(args)
    log.info("== %s done in %.1f s", name, time.perf_counter() - start)
