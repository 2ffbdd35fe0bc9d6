"""File formats and atomic, safe I/O.

Every writer goes through `atomic_path`: the data lands in a temporary file in the target's
folder, is fsynced, then renamed over the target, so a reader (or a resumed pass) never sees a
half-written file. Every reader refuses pickles.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wavecam.data.classes import voc_palette


class WavecamError(Exception):
    """An error with a message meant for the user: what went wrong, which file, what to do."""


class DatasetRootError(WavecamError):
    """A dataset root that is missing or not laid out as expected; the front door says which of its
    options named it (--voc12_root, dataset.root, ...)."""


class BadFileError(WavecamError):
    """A file exists but cannot be used (corrupt, wrong format, wrong shape)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The suffix is kept so writers that infer the format from the name (PIL, np.savez) still work.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates files readable by the owner only; give the output the usual permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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

def save_checkpoint(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
