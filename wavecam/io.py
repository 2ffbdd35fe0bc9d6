"""File formats and atomic, safe I/O.

Every writer goes through `atomic_path`: the data lands in a temporary file in the target's
folder, is fsynced, then renamed over the target, so a reader (or a resumed pass) never sees a
half-written file; a write that fails (a full or read-only disk) is a `WriteError` naming the
target. Every reader refuses pickles, and label maps are checked where they are read
(`load_label_map`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wavecam.classes import IGNORE_INDEX, voc_palette
from wavecam.errors import BadFileError, WavecamError, WriteError


def user_cache() -> Path:
    """The folder for what can be derived again (label caches, pretrained stand-ins): $WAVECAM_CACHE,
    else ~/.cache/wavecam."""
    return Path(os.environ.get("WAVECAM_CACHE", Path.home() / ".cache" / "wavecam"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it onto `path`. Any
    OSError on the way, the caller's writing included, becomes a WriteError naming `path`; the temp
    file is removed whatever happens."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The suffix is kept so writers that infer the format from the name (PIL, np.savez) still work.
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates files readable by the owner only; give the output the usual permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(path, _write_failure(path, e), e.errno in (errno.ENOSPC, errno.EDQUOT)) from e
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _write_failure(path: Path, e: OSError) -> str:
    """Why writing `path` failed, in the user's terms: a file standing where a folder of the path
    should be is named, since the system's 'File exists' / 'Not a directory' does not say which."""
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on its device"
    return e.strerror or str(e)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise BadFileError(f"{path}: not valid JSON ({e}); delete it and re-run the pass that writes it") from e


def save_png(path: str | os.PathLike, label: np.ndarray, palette: bool = False) -> None:
    """Write a uint8 label map as an 8-bit grayscale PNG, as SBD's SegmentationClassAug and the
    reference's outputs are: every reader gets the class indices back (imageio and cv2 would turn a
    palette PNG into colours or luminance). `palette` gives VOC's colours, for pictures only."""
    if label.dtype != np.uint8:
        if label.min() < 0 or label.max() > 255:
            raise ValueError(f"label values must lie in 0..255 to be written as PNG: {path}")
        label = label.astype(np.uint8)
    img = Image.fromarray(label, mode="P" if palette else "L")
    if palette:
        img.putpalette(voc_palette().flatten().tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def load_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as stored (palette indices, not colours)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise BadFileError(f"{path}: unreadable PNG ({e}); replace the file or re-run the pass that writes it") from e


def load_label_map(path: str | os.PathLike, num_classes: int, *, size: tuple[int, int] | None = None,
                   size_of: str = "its image", ignore: bool = True, what: str = "label map",
                   fix: str = "re-run the pass that writes it") -> np.ndarray:
    """Read a label PNG and check it (`check_label_map`): (H, W) uint8."""
    return check_label_map(load_png(path), path, num_classes, size=size, size_of=size_of, ignore=ignore, what=what,
                           fix=fix)


def check_label_map(label: np.ndarray, path: str | os.PathLike, num_classes: int, *,
                    size: tuple[int, int] | None = None, size_of: str = "its image", ignore: bool = True,
                    what: str = "label map", fix: str = "re-run the pass that writes it") -> np.ndarray:
    """A label map read from `path` as (H, W) uint8, refused unless it is one channel of integers in
    0 (background), 1..num_classes (classes) or, with `ignore`, 255 (ignored; a prediction being
    scored has none), and (H, W) == `size` where given (`size_of` says whose size that is). A value
    beyond the classes would otherwise train silently, stop cross_entropy with an index error, or
    stop an evaluation inside the confusion matrix, each far from the file. `what` names the kind of
    file and `fix` what the user should do, in the message."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype.kind not in "biu":
        raise BadFileError(f"{what} {path} is not a one-channel 8-bit label map (shape {label.shape}, "
                           f"{label.dtype}); {fix}")
    if size is not None and label.shape != tuple(size):
        raise BadFileError(f"{what} {path} is {label.shape[0]}x{label.shape[1]} but {size_of} is "
                           f"{size[0]}x{size[1]}; {fix}")
    if label.dtype == np.uint8:  # the PNG case: one bincount, no sort
        counts = np.bincount(label.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(label, return_counts=True)
    bad = (values < 0) | (values > num_classes)
    if ignore:
        bad &= values != IGNORE_INDEX
    if bad.any():
        first, n_first = int(values[bad][0]), int(counts[bad][0])
        others = f" ({int(counts[bad].sum())} pixels of {int(bad.sum())} bad values in all)" if bad.sum() > 1 else ""
        valid = f"0 background, 1..{num_classes} classes" + (f", {IGNORE_INDEX} ignore" if ignore else "")
        raise BadFileError(f"{what} {path}: value {first} at {n_first} pixel{'s' * (n_first != 1)}{others} is "
                           f"not a label (valid: {valid}); {fix}")
    return label.astype(np.uint8, copy=False)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise BadFileError(f"{path}: unreadable .npz ({e}); delete it and re-run the pass that writes it") from e


# --- cam_mask/<id>.npz -------------------------------------------------------------------------

CAM_KEYS = ("keys", "cam", "high_res")


def save_cam(path: str | os.PathLike, keys: np.ndarray, cam: np.ndarray, high_res: np.ndarray) -> None:
    """Write one image's CAMs: `keys` (K,) int64 class indices (0-based, foreground only),
    `cam` (K, h, w) float32 at stride 4 and `high_res` (K, H, W) float32, each map max-normalised."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    cam = np.asarray(cam, dtype=np.float32)
    high_res = np.asarray(high_res, dtype=np.float32)
    if cam.ndim != 3 or high_res.ndim != 3 or cam.shape[0] != keys.size or high_res.shape[0] != keys.size:
        raise ValueError(f"cam {cam.shape} / high_res {high_res.shape} do not match keys {keys.shape}")
    save_npz(path, keys=keys, cam=cam, high_res=high_res)


def load_cam(path: str | os.PathLike) -> dict[str, np.ndarray]:
    data = load_npz(path)
    missing = [k for k in CAM_KEYS if k not in data]
    if missing:
        raise BadFileError(
            f"{path}: not a cam_mask file (missing {', '.join(missing)}; has {', '.join(sorted(data))}); "
            "re-run make_cam/make_wavecam to rewrite it"
        )
    keys, cam, hr = data["keys"], data["cam"], data["high_res"]
    if keys.ndim != 1 or cam.ndim != 3 or hr.ndim != 3 or not (len(keys) == len(cam) == len(hr)):
        raise BadFileError(
            f"{path}: inconsistent cam_mask shapes keys {keys.shape} cam {cam.shape} high_res {hr.shape}; "
            "re-run make_cam/make_wavecam to rewrite it"
        )
    return data


def load_reference_cam(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A CAM dictionary as the reference code saves it (`np.save(path, {"keys", "cam", "high_res"})`,
    a pickle). Only for files you trust: unpickling can run code. Callers ask for it explicitly."""
    try:
        obj = np.load(path, allow_pickle=True).item()
    except (ValueError, OSError, pickle.UnpicklingError, EOFError) as e:
        raise BadFileError(f"{path}: unreadable reference CAM file ({e})") from e
    if not isinstance(obj, dict) or not {"keys", "cam", "high_res"} <= set(obj):
        raise BadFileError(f"{path}: not a reference CAM dictionary with keys, cam and high_res")
    return {"keys": np.asarray(obj["keys"], dtype=np.int64), "cam": np.asarray(obj["cam"], dtype=np.float32),
            "high_res": np.asarray(obj["high_res"], dtype=np.float32)}


def is_complete(path: str | os.PathLike) -> bool:
    """True when `path` exists as a finished output (atomic writes never leave a partial one
    under the final name; a zero-length file can only come from outside and is redone)."""
    try:
        return Path(path).stat().st_size > 0
    except FileNotFoundError:
        return False


# --- checkpoints -------------------------------------------------------------------------------

# Below this much free space a failed write is taken for a full disk (a block or two may be left).
_NEARLY_FULL = 1 << 20


def save_checkpoint(path: str | os.PathLike, obj: Any) -> None:
    """torch.save, atomically. Through a file object, whose archive torch names "archive" where it
    would name it after the (random) temporary file: equal tensors then give equal bytes, and so the
    same identity to engine.provenance. Torch's zip writer reports a write that fails half-way as a
    RuntimeError with no errno ('unexpected pos ...'); the free space left on the device then tells a
    full disk from anything else."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as e:
            said = str(e).splitlines()[0]
            if shutil.disk_usage(tmp.parent).free < _NEARLY_FULL:
                raise WriteError(path, f"no space left on its device (torch: {said})", True) from e
            raise WriteError(path, f"torch could not write it ({said})", False) from e


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint without ever unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WavecamError(f"checkpoint not found: {path}; run the pass that trains it or give the right path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadFileError(
            f"{path}: refused: it holds Python objects beyond tensors, and loading it would mean running "
            "code from the file, which wavecam never does. Re-create it as a state dict "
            "(torch.save(model.state_dict()))."
        ) from e
    except Exception as e:  # zip/EOF/runtime errors of a damaged file
        raise BadFileError(
            f"{path}: cannot be loaded as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "it is corrupt or truncated. Re-create it."
        ) from e
