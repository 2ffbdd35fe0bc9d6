"""The command line's side of a job: errors the user can fix as one line, whatever the job."""

from __future__ import annotations

import sys
from collections.abc import Callable

from wavecam.engine.runtime import shutdown
from wavecam.io import WavecamError


def run_cli(job: Callable[[], None], work_dir_flag: str) -> int:
    """Run a command-line job: a WavecamError becomes one `error:` line and exit code 2, and so does an
    OSError (a full or read-only disk, a vanished folder), where the user needs the file, not where in
    the code it failed; `work_dir_flag` names the option that chooses another place. The process group
    (if any) is torn down whatever happens."""
    try:
        job()
    except WavecamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write or read {e.filename or 'a file'}: {e.strerror or e}; free some space or "
              f"choose a writable {work_dir_flag}, then re-run: finished outputs are kept", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0
