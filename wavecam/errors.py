"""The errors a user can act on: each carries one line for the user, naming the file, what is wrong
and the fix; the front doors (engine.cli.run_cli) print it as `error: ...` and exit with code 2."""

from __future__ import annotations

import os
from pathlib import Path


class WavecamError(Exception):
    """An error with a message meant for the user: what went wrong, which file, what to do."""


class DatasetRootError(WavecamError):
    """A dataset root that is missing or not laid out as expected; the front door says which of its
    options named it (--voc12_root, dataset.root, ...)."""


class BadFileError(WavecamError):
    """A file exists but cannot be used (corrupt, wrong format, wrong shape)."""


class WriteError(WavecamError):
    """A file that could not be written: `path` is the target (never the temp file beside it, which
    the user has never heard of), `reason` what the system said, `disk_full` whether freeing space
    would help. The arguments are kept as the exception's args so that it survives the pickling of a
    process pool."""

    def __init__(self, path: str | os.PathLike, reason: str, disk_full: bool):
        super().__init__(str(path), reason, disk_full)
        self.path, self.reason, self.disk_full = Path(path), reason, disk_full

    def message(self, place: str = "another folder") -> str:
        """The user's line; `place` is where else to write (a front door names its option)."""
        fix = f"free some space there or choose {place}" if self.disk_full else f"choose {place}"
        return f"cannot write {self.path}: {self.reason}; {fix}, then re-run: finished outputs are kept"

    def __str__(self) -> str:
        return self.message()
