"""Loading state dicts by key mapping, with one readable error when they do not fit."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
from torch import nn

from wavecam.errors import BadFileError
from wavecam.io import load_checkpoint

KeyMap = Callable[[str], "str | None"]


def as_state_dict(obj, source: str) -> Mapping[str, torch.Tensor]:
    """The state dict in a loaded checkpoint `obj`: a bare one, or the common wrappers {"model": sd} /
    {"state_dict": sd}. Anything else raises BadFileError naming `source` (the file)."""
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                return obj[wrapper]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise BadFileError(f"{source}: holds no state dict (expected a mapping of parameter names to tensors)")


def read_state_dict(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]
                    ) -> tuple[str, Mapping[str, torch.Tensor]]:
    """(what errors call it, its state dict) for a path or an in-memory state dict, unwrapping
    {"model": sd} / {"state_dict": sd}; for loaders that look at the keys before choosing a key map."""
    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
    sd = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    return source, as_state_dict(sd, source)


def load_weights(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    key_map: KeyMap | None = None,
    strict: bool = True,
    *,
    name: str | None = None,
    network: str | None = None,
    hint: str = "Is it the right network and class count (--cam_network, dataset) for this pass?",
) -> tuple[list[str], list[str]]:
    """Load `checkpoint` (a path or a state dict) into `model`.

    `key_map` renames each checkpoint key to the model's name, or drops it by returning None
    (aliases such as ReCAM's `backbone.*` copies). With `strict`, missing/unexpected keys and
    shape mismatches raise one BadFileError that lists them, then `hint`. `name` is what the error
    calls a state dict passed in memory (by default its path, or "state dict"), `network` what it
    calls the model (by default its class, which tells a user little where the model is a view of
    some parts of a bigger one).
    Returns (missing, unexpected).
    """
    source, sd = read_state_dict(checkpoint)
    source = name or source

    mapped: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = k[len("module."):] if k.startswith("module.") else k  # saved from DDP/DataParallel
        name = key_map(k) if key_map else k
        if name is not None and name not in mapped:
            mapped[name] = v

    own = model.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(mapped))
        if mapped[k].shape != own[k].shape
    ]
    if strict and (missing or unexpected or mismatched):
        lines = [f"{source} does not fit {network or type(model).__name__}:"]
        for title, items in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"  {title}: {shown}")
        lines.append(f"  {hint}")
        raise BadFileError("\n".join(lines))
    ok = {k: v for k, v in mapped.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(ok, strict=False)
    return missing, unexpected
