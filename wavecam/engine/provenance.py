"""What made an output, so that a rerun trusts only outputs of the same inputs.

Every pass that writes outputs states its *maker*: a JSON-able dict of the pass, the identity of
each input it reads (`file_identity`: a file's content hash; `folder_identity`: an input folder's
own record) and the settings that change what it writes. The maker is recorded beside the outputs:

- an image-wise pass claims its folder (`claim_folder`) before writing into it. The folder's
  `.made_by.json` is kept, and so are its finished files, only when it names the same maker (a
  killed pass resumes where it stopped); otherwise the folder's outputs are removed first and the
  new record written, so that every file under a record was made by that maker.
- a training pass's weights file `<f>` has `<f>.made_by.json`, written after it (`record_file`).
  `trained_by` says whether existing weights may be kept: those of the same maker are, those of
  another are retrained. Weights without a record are kept as given: they are what a user brings
  (the reference code's `res50_cam.pth`, say), and retraining would overwrite them.

A record also holds when it was written, and `folder_identity` covers that time: `--force True`
rewrites the record, so everything made from the folder is redone, even where the new files come
out the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from wavecam.errors import WavecamError
from wavecam.io import load_json, save_json

log = logging.getLogger("wavecam")

RECORD = ".made_by.json"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def normalise(maker: dict) -> dict:
    """The maker as it reads back from JSON (tuples become lists), so that equal makers compare equal."""
    return json.loads(_canonical(maker))


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: str | os.PathLike | None) -> str | None:
    """A file's content hash ("sha256:<hex>"; computed once per pass, a fraction of a second for a
    ResNet's weights): a weights file copied or touched keeps its identity, one retrained with other
    results does not. None for no file; a path that names no file is the user's to fix (the pass that
    makes it has not run, or the flag names another place), so it is one error line."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise WavecamError(f"{path}: no such file; run the pass that writes it first, or give its path")
    st = os.stat(path)
    return "sha256:" + _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def read_record(path: str | os.PathLike) -> dict | None:
    """The record at `path`, or None where there is none or it cannot be read (an unreadable record
    proves nothing, so the outputs it describes are redone)."""
    try:
        record = load_json(path)
    except (OSError, WavecamError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("maker"), dict) else None


def folder_identity(folder: str | os.PathLike) -> dict:
    """What a folder of outputs is, for the makers of what is made from it: its maker's pass and a
    hash of its record. A folder without a record (files brought from elsewhere) is identified by
    its listing: names, sizes and modification times."""
    folder = Path(folder)
    record = read_record(folder / RECORD)
    if record is not None:
        return {"pass": record["maker"].get("pass"), "record": hashlib.sha1(_canonical(record).encode()).hexdigest()}
    stats = [(p.name, p.stat()) for p in folder.glob("*") if p.is_file()] if folder.is_dir() else []
    listing = sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats)
    return {"pass": None, "listing": hashlib.sha1(_canonical(listing).encode()).hexdigest()}


def _new_record(maker: dict) -> dict:
    return {"maker": normalise(maker), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _differences(old: dict | None, new: dict) -> str:
    if old is None:
        return "no record of what made them"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "other " + ", ".join(keys)


def claim_folder(folder: str | os.PathLike, suffix: str, maker: dict, force: bool, what: str) -> None:
    """Make `folder` the outputs of `maker` before any of them is written (the main process only).

    Same maker: the finished files stay (with `force` the record is rewritten, which tells what is
    made from the folder to redo itself). Another maker, or outputs without a record: every
    `*<suffix>` file in the folder is removed first, with one log line saying why. `what` names the
    pass for that line."""
    folder = Path(folder)
    path = folder / RECORD
    old = read_record(path)
    maker = normalise(maker)
    if old is not None and old["maker"] == maker:
        if force:
            save_json(path, _new_record(maker))
        return
    stale = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
    if stale:
        log.warning("%s: the %d files in %s were made by %s (%s): removing them, they are redone",
                    what, len(stale), folder, (old or {}).get("maker", {}).get("pass", "an unknown pass"),
                    _differences(old and old["maker"], maker))
    # Files first, record last: a run killed in between finds the old record, or none, and removes again.
    for p in stale:
        p.unlink(missing_ok=True)
    save_json(path, _new_record(maker))


def folder_maker(folder: str | os.PathLike) -> dict | None:
    """The record of `folder` (maker and time), for the results that read it."""
    return read_record(Path(folder) / RECORD)


def record_path(weights: str | os.PathLike) -> Path:
    return Path(f"{weights}.made_by.json")


def trained_by(weights: str | os.PathLike, maker: dict) -> str | None:
    """Why existing `weights` cannot be kept for `maker` (None: they can): another maker's record.
    Weights without a record are kept (see the module docstring)."""
    record = read_record(record_path(weights))
    maker = normalise(maker)
    if record is None or record["maker"] == maker:
        return None
    made_by = record["maker"].get("pass", "another pass")
    return f"they were trained by {made_by} with {_differences(record['maker'], maker)}"


def record_file(weights: str | os.PathLike, maker: dict) -> None:
    """Record `maker` for the `weights` it has just written."""
    save_json(record_path(weights), _new_record(maker))


def forget_file(weights: str | os.PathLike) -> None:
    """Remove weights and their record before they are retrained: a run killed before it writes new
    ones must not leave the old ones looking current."""
    Path(weights).unlink(missing_ok=True)
    record_path(weights).unlink(missing_ok=True)
