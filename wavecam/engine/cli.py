"""The command line's side of a job: errors the user can fix as one line, whatever the job."""

from __future__ import annotations

import sys
from collections.abc import Callable

from wavecam.engine.runtime import shutdown
from wavecam.errors import WavecamError, WriteError


def run_cli(job: Callable[[], None], work_dir_flag: str) -> int:
    """Run a command-line job: a WavecamError becomes one `error:` line and exit code 2, and so does an
    OSError (a full or read-only disk, a vanished folder), where the user needs the file, not where in
    the code it failed; `work_dir_flag` names the option that chooses another place. The process group
    (if any) is torn down whatever happens."""
    try:
        job()
    except WriteError as e:
        print(f"error: {e.message(f'a writable {work_dir_flag}')}", file=sys.stderr)
        return 2
    except WavecamError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write or read {e.filename or 'a file'}: {e.strerror or e}; free some space or "
              f"choose a writable {work_dir_flag}, then re-run: finished outputs are kept", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0


def user_message(e: WavecamError) -> str:
    """The error's own message. torch's DataLoader re-raises an error of a worker process as the same
    type whose message is the worker's whole traceback ("Caught BadFileError in DataLoader worker
    process 0.\\nOriginal Traceback ..."), ending in the line `module.Type: message`: the user gets
    that message alone."""
    text = str(e)
    if "\nOriginal Traceback" not in text:
        return text
    return text.rstrip().splitlines()[-1].partition(": ")[2]
