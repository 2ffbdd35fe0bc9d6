"""The command line's side of a job: errors the user can fix as one line, whatever the job."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch.distributed as tdist

from wavecam.io import WavecamError


def run_cli(job: Callable[[], None]) -> int:
    """Run a command-line job: a WavecamError becomes one `error:` line and exit code 2, and the
    process group (if any) is torn down whatever happens."""
    try:
        job()
    except WavecamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    return 0
