"""A work space's results as the report reads them: the eval passes' results/*.json, checked value by
value before anything is rendered, gathered into one `Run` per work space."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wavecam.errors import BadFileError, WavecamError
from wavecam.io import load_json
from wavecam.multi_stage.workspace import results_path


@dataclass
class Run:
    name: str
    work_space: Path
    cam: dict | None  # results/eval_cam.json
    sem_seg: dict | None  # results/eval_sem_seg.json
    seg: dict | None = None  # results/eval_seg.json: the final segmentation (stage 3)

    @property
    def settings(self) -> dict:
        """Dataset, data root and evaluation set, which every eval pass records."""
        return self.cam or self.sem_seg or self.seg


def stages(run: Run) -> tuple[tuple[str, dict | None], ...]:
    """(label, results) of each stage a run may have: seeds, IRN pseudo labels, final segmentation."""
    return ("seeds", run.cam), ("irn", run.sem_seg), ("seg", run.seg)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _score(v) -> bool:
    """An mIoU: a fraction, or NaN where the pass scored no pixel (json writes nanmean's NaN as is)."""
    return _number(v) and (0 <= v <= 1 or math.isnan(v))


def _per_class(v) -> bool:
    """A per-class list of fractions, null for a class absent from both prediction and ground truth."""
    return isinstance(v, list) and all(x is None or (_number(x) and 0 <= x <= 1) for x in v)


def _sweep(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, dict) and _number(s.get("threshold")) and _score(s.get("miou"))
                                       for s in v)


RESULT_KEYS = ("miou", "iou", "n_images")
# key -> (test, what it must be) for every value the report renders: one that is not what the eval
# pass writes would otherwise end as a traceback deep in the formatting, or as a plausible number.
# Keys beyond RESULT_KEYS may be absent or null (that pass does not record them).
RESULT_VALUES = {
    "miou": (_score, "a number in 0..1"),
    "iou": (_per_class, "a list of numbers in 0..1 or null"),
    "n_images": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "precision": (_per_class, "a list of numbers in 0..1 or null"),
    "recall": (_per_class, "a list of numbers in 0..1 or null"),
    "best_miou": (_score, "a number in 0..1"),
    "threshold": (_number, "a number"),
    "best_threshold": (_number, "a number"),
    "sem_seg_bg_thres": (_number, "a number"),
    "sweep": (_sweep, "a list of {threshold, miou} objects"),
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "eval_set": (lambda v: isinstance(v, str), "a string"),
}
JSON_TYPES = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def result_problems(result) -> list[str]:
    """What keeps `result` from being an eval pass's results; empty when it is one."""
    expected = f"expected a JSON object with {', '.join(RESULT_KEYS)}"
    if not isinstance(result, dict):
        return [f"{expected}, found a JSON {JSON_TYPES.get(type(result), type(result).__name__)}"]
    missing = [k for k in RESULT_KEYS if k not in result]
    problems = [f"{expected}, found one without {', '.join(missing)}"] if missing else []
    for key, (test, what) in RESULT_VALUES.items():
        value = result.get(key)
        if key in result and (value is not None or key in RESULT_KEYS) and not test(value):
            shown = json.dumps(value)
            problems.append(f"{key} is {shown if len(shown) <= 40 else shown[:37] + '...'}, expected {what}")
    return problems


def load_result(work_space: Path, stage: str) -> dict | None:
    """results/<stage>.json of a work space, checked; None where the pass has not run."""
    path = results_path(work_space, stage)
    if not path.is_file():
        return None
    result = load_json(path)
    problems = result_problems(result)
    if problems:
        raise BadFileError(f"{path}: not a results file of {stage}: {'; '.join(problems)}; re-run the eval pass that "
                           f"writes it (--{stage}_pass True on {work_space}) or leave this work space out")
    return result


def load_run(work_space: str | Path, name: str) -> Run:
    ws = Path(work_space)
    if not ws.is_dir():
        raise WavecamError(f"work space {ws} not found")
    found = {stage: load_result(ws, stage) for stage in ("eval_cam", "eval_sem_seg", "eval_seg")}
    if not any(found.values()):
        raise WavecamError(f"{ws}: no results/eval_cam.json, results/eval_sem_seg.json or results/eval_seg.json; "
                           "run --eval_cam_pass True (and --eval_sem_seg_pass True) on it first")
    return Run(name, ws, found["eval_cam"], found["eval_sem_seg"], found["eval_seg"])


def load_runs(work_spaces: Sequence[str | Path], names: Sequence[str] | None = None) -> list[Run]:
    if names is None:
        names = [Path(ws).resolve().name for ws in work_spaces]
    if len(names) != len(work_spaces):
        raise WavecamError(f"{len(names)} --names for {len(work_spaces)} work spaces")
    if len(set(names)) != len(names):
        raise WavecamError(f"run names must differ ({', '.join(names)}); give --names")
    return [load_run(ws, name) for ws, name in zip(work_spaces, names)]
