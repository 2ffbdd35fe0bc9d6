"""The proxy benchmark: the paper's chain at laptop scale, in a regime read from one recipe file.

A seed of the proxy draws a synthetic VOC root (`synthetic.STYLES`: the proxy style has the failure
modes CAM methods address on photos), pretrains the backbone that plays ImageNet's part on scenes of
its own stream (kept under the user's cache, `wavecam.io.user_cache()`, for the next run with the same
settings), and runs the paper's command lines in one work space per method:

    ws_cam      train_cam, make_cam, eval_cam; IRN (cam_to_ir_label, train_irn, make_sem_seg,
                eval_sem_seg); stage 3 (train_seg, make_seg, eval_seg)
    ws_recam    train_recam from ws_cam's CAM weights, make_recam, eval_cam; IRN
    ws_wavecam  train_wavecam from the same weights, make_wavecam, eval_cam; IRN; stage 3

Seeds and pseudo labels are scored on training images, as the paper's tables are; stage 3 and the
pseudo labels it learns from are scored on val images, which nothing trained on (their seeds and
pseudo labels are made from their image labels, as for any image). The seed changes the dataset's
draw, the pretraining's scenes and initialisation, and every pass's `--seed`.

The recipe (multi_stage/configs/proxy.yaml) holds every setting: `data` (synthetic.make_synthetic_voc's
arguments), `pretrain` (PretrainSettings but its seed), `fine_tune` (ReCAM's and WaveCAM's settings,
one set for both, so that the two can only differ in the wave module), `passes` (flags of every pass)
and `stage3` (flags of stage 3). Each seed writes `<out>/seed<k>/summary.json`; `table` merges the
summaries found under `<out>`, so seeds may run as separate commands.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from wavecam.data.synthetic import make_synthetic_voc
from wavecam.engine.state import settings_changes
from wavecam.errors import WavecamError
from wavecam.io import atomic_path, save_json, user_cache
from wavecam.multi_stage.pretrain import PretrainSettings, pretrain
from wavecam.multi_stage.runner import main as pipeline_main
from wavecam.multi_stage.workspace import default_path, results_path

METHODS = ("cam", "recam", "wavecam")
NAMES = {"cam": "CAM", "recam": "ReCAM", "wavecam": "WaveCAM"}
IRN = ("cam_to_ir_label", "train_irn", "make_sem_seg", "eval_sem_seg")
STAGE3 = ("train_seg", "make_seg", "eval_seg")
SECTIONS = ("data", "pretrain", "fine_tune", "passes", "stage3")
FINE_TUNE_KEYS = ("num_epoches", "learning_rate", "loss_weight", "batch_size", "kernel")
PRETRAIN_SEED = 1000  # the pretraining of seed k draws stream PRETRAIN_SEED + k; datasets use k itself
# Toy sizes (`--quick`, the tests): they show that the chain runs, not that it works.
TOY_CHANGES = ("data.n_train=16", "data.n_val=6", "data.size=64", "pretrain.steps=3", "pretrain.batch=8",
               "pretrain.size=48", "passes.cam_num_epoches=1", "passes.irn_num_epoches=1", "fine_tune.num_epoches=1",
               "passes.cam_crop_size=64", "passes.irn_crop_size=64", "passes.cam_resize_long=[51,76]",
               "stage3.seg_num_iters=2", "stage3.seg_save_iters=1")


@dataclass(frozen=True)
class Recipe:
    data: dict[str, Any]
    pretrain: dict[str, Any]
    fine_tune: dict[str, Any]
    passes: dict[str, Any]
    stage3: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def load_recipe(path: str | Path) -> Recipe:
    """Read a proxy recipe; unknown sections and fine-tuning keys are refused (a typo must not run the
    default silently). `base: FILE` (relative to the recipe) starts from another recipe, whose keys
    this one's sections change. Pass flags are checked by the runner, which reads them as --config."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise WavecamError(f"proxy recipe {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise WavecamError(f"proxy recipe {path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict) or not set(raw) <= {*SECTIONS, "base"}:
        got = ", ".join(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise WavecamError(f"proxy recipe {path}: expected the sections {', '.join(SECTIONS)} (and base), got {got}")
    sections = {k: dict(raw.get(k) or {}) for k in SECTIONS}
    if "base" in raw:
        base = load_recipe(Path(path).parent / raw["base"])
        sections = {k: {**getattr(base, k), **sections[k]} for k in SECTIONS}
    if not sections["data"] or not sections["passes"]:
        raise WavecamError(f"proxy recipe {path}: the data and passes sections are empty")
    unknown = set(sections["fine_tune"]) - set(FINE_TUNE_KEYS)
    if unknown:
        raise WavecamError(f"proxy recipe {path}: unknown fine_tune keys {sorted(unknown)}; "
                           f"known: {', '.join(FINE_TUNE_KEYS)}")
    for name in ("recam", "wavecam"):
        if any(k.startswith(f"{name}_") for k in sections["passes"]):
            raise WavecamError(f"proxy recipe {path}: {name}_* flags belong in fine_tune, which sets ReCAM's "
                               "and WaveCAM's alike")
    return Recipe(**sections, path=str(path))


def with_changes(recipe: Recipe, changes: list[str]) -> Recipe:
    """`section.key=value` changes (values in YAML) over a recipe, for searches from the command line."""
    sections = {k: dict(getattr(recipe, k)) for k in SECTIONS}
    for change in changes:
        key, sep, value = change.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in sections:
            raise WavecamError(f"--set {change}: expected SECTION.KEY=VALUE with SECTION one of {', '.join(SECTIONS)}")
        sections[section][name] = yaml.safe_load(value)
    return Recipe(**sections, path=recipe.path)


def _write_yaml(path: Path, values: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(values, f, sort_keys=False)
    return path


class SeedRun:
    """One seed of the proxy under `out/seed<k>`: its dataset, pretrained backbone, work spaces."""

    def __init__(self, recipe: Recipe, seed: int, out: Path, workers: int):
        self.recipe, self.seed, self.workers = recipe, seed, workers
        self.dir = out / f"seed{seed}"
        # Kept across runs and output folders: its file name holds every setting, the seed included.
        self.pretrained_dir = user_cache() / "pretrained"
        self.times: dict[str, float] = {}

    def ws(self, method: str) -> Path:
        return self.dir / f"ws_{method}"

    def timed(self, stage: str, fn, *a):
        start = time.perf_counter()
        result = fn(*a)
        self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start
        return result

    def prepare(self) -> None:
        self.root = self.timed("data", lambda: make_synthetic_voc(self.dir / "voc", seed=self.seed,
                                                                  jobs=max(self.workers, 1), **self.recipe.data))
        weights = None
        if self.recipe.pretrain.get("steps", 1) > 0:
            settings = PretrainSettings(**{**self.recipe.pretrain, "seed": PRETRAIN_SEED + self.seed})
            weights = self.timed("pretrain", pretrain, settings, self.pretrained_dir, self.workers)
        # Seeds and pseudo labels for every image with labels, val included: stage 3 is scored on val
        # against the pseudo labels it would have had there.
        lists = self.root / "ImageSets" / "Segmentation"
        ids = [*_read_ids(lists / "train_aug.txt"), *_read_ids(lists / "val.txt")]
        infer = self.dir / "infer_list.txt"
        with atomic_path(infer) as tmp:
            Path(tmp).write_text("".join(f"{i}\n" for i in ids))
        ft = self.recipe.fine_tune
        self.infer_list = str(infer)
        flags = {**self.recipe.passes, "seed": self.seed, "infer_list": str(infer), "num_workers": self.workers,
                 "pretrained": str(weights or "none"), "seg_pretrained": str(weights or "none"),
                 **{f"{m}_{k}": v for m in ("recam", "wavecam") for k, v in ft.items()}}
        self.passes = _write_yaml(self.dir / "passes.yaml", flags)
        self.stage3 = _write_yaml(self.dir / "stage3.yaml", self.recipe.stage3)
        self.val_list = str(self.recipe.stage3.get("seg_eval_set", "val"))

    def run(self, method: str, passes: tuple[str, ...], *extra: str, stage: str, work_space: Path | None = None
            ) -> None:
        argv = ["--voc12_root", str(self.root), "--config", str(self.passes), *extra,
                "--work_space", str(work_space or self.ws(method)),
                *(a for p in passes for a in (f"--{p}_pass", "True"))]
        if method != "cam":  # ReCAM and WaveCAM start from the CAM network, as in the paper's command lines
            argv += ["--cam_weights_name", default_path(self.ws("cam"), "cam_weights_name")]
        code = self.timed(stage, pipeline_main, "voc", argv)
        if code:  # the runner has printed its one error line
            sys.exit(code)

    def score_on_val(self, method: str) -> None:
        """eval_cam and eval_sem_seg of the method's files on val, into ws_<method>/on_val/results."""
        ws = self.ws(method)
        self.run(method, ("eval_cam", "eval_sem_seg"), "--chainer_eval_set", self.val_list,
                 "--cam_out_dir", str(ws / "cam_mask"), "--sem_seg_out_dir", str(ws / "sem_seg"),
                 "--sem_seg_score_dir", str(ws / "sem_seg_score"), stage=f"{NAMES[method]} labels scored on val",
                 work_space=ws / "on_val")

    def summary(self, methods: tuple[str, ...], irn_from: tuple[str, ...], stage3_from: tuple[str, ...]) -> dict:
        rows: dict[str, float] = {}
        for m in methods:
            ws = self.ws(m)
            rows[f"{m}.seeds"] = _miou(results_path(ws, "eval_cam"))
            if m in irn_from:
                rows[f"{m}.irn"] = _miou(results_path(ws, "eval_sem_seg"))
            if m in stage3_from:
                rows[f"{m}.irn_val"] = _miou(results_path(ws / "on_val", "eval_sem_seg"))
                rows[f"{m}.seg_val"] = _miou(results_path(ws, "eval_seg"))
        recipe = {"path": self.recipe.path, **{k: getattr(self.recipe, k) for k in SECTIONS}}
        return {"seed": self.seed, "recipe": recipe, "rows": rows,
                "n_eval": {"train": _read(results_path(self.ws("cam"), "eval_cam"))["n_images"],
                           "val": len(_read_ids(self.root / "ImageSets" / "Segmentation" / "val.txt"))},
                "times": self.times}


def _read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _miou(path: Path) -> float:
    return float(_read(path)["miou"])


def run_seed(recipe: Recipe, seed: int, out: str | Path, methods: tuple[str, ...] = METHODS,
             stage3_from: tuple[str, ...] = ("cam", "wavecam"), workers: int = 1,
             irn_from: tuple[str, ...] | None = None) -> dict:
    """Run one seed of the proxy; write and return its summary (mIoU per row, seconds per stage).
    IRN runs on the seeds of `irn_from` (all methods by default), stage 3 on the labels of `stage3_from`."""
    irn_from = methods if irn_from is None else irn_from
    if "cam" not in methods or not set(stage3_from) <= set(irn_from) <= set(methods) <= set(METHODS):
        raise WavecamError(f"methods must include cam and come from {', '.join(METHODS)}; IRN runs on some of them, "
                           f"stage 3 on some of those (got {', '.join(methods)} / {', '.join(irn_from)} / "
                           f"{', '.join(stage3_from)})")
    s = SeedRun(recipe, seed, Path(out).resolve(), workers)
    s.prepare()
    for m in methods:
        s.run(m, (f"train_{m}",), stage=f"{NAMES[m]} seeds")
        # make_cam and its kin read --train_list, as in the reference; here it covers val too.
        s.run(m, (f"make_{m}", "eval_cam"), "--train_list", s.infer_list, stage=f"{NAMES[m]} seeds")
        if m in irn_from:
            s.run(m, IRN, stage=f"IRN from {NAMES[m]}")
        if m in stage3_from:
            s.run(m, STAGE3, "--config", str(s.stage3), stage=f"stage 3 from {NAMES[m]}")
            s.score_on_val(m)
    result = s.summary(methods, irn_from, stage3_from)
    save_json(s.dir / "summary.json", result)
    return result


# --- the table ---------------------------------------------------------------------------------

ROWS = (  # (row key, label, scored on)
    ("cam.seeds", "CAM seeds", "train"), ("recam.seeds", "ReCAM seeds", "train"),
    ("wavecam.seeds", "WaveCAM seeds", "train"),
    ("cam.irn", "IRN labels from CAM", "train"), ("recam.irn", "IRN labels from ReCAM", "train"),
    ("wavecam.irn", "IRN labels from WaveCAM", "train"),
    ("cam.irn_val", "IRN labels from CAM", "val"), ("cam.seg_val", "stage 3 from CAM", "val"),
    ("wavecam.irn_val", "IRN labels from WaveCAM", "val"), ("wavecam.seg_val", "stage 3 from WaveCAM", "val"),
)
# The calibration's criteria, on the published baselines only (ReCAM's and IRN's papers, stage 3):
# (description, row, reference row, margin in mIoU points)
CRITERIA = (
    ("1. ReCAM seeds >= CAM seeds + 3", "recam.seeds", "cam.seeds", 3.0),
    ("2. IRN labels from CAM >= CAM seeds + 10", "cam.irn", "cam.seeds", 10.0),
    ("3. stage 3 from CAM >= its IRN labels (val)", "cam.seg_val", "cam.irn_val", 0.0),
)


def load_summaries(out: str | Path) -> list[dict]:
    return sorted((_read(p) for p in Path(out).glob("seed*/summary.json")), key=lambda s: s["seed"])


def recipe_changes(summary: dict, recipe: Recipe | dict) -> list[str]:
    """The `section.key` settings where a seed's summary was run under another recipe (its file aside):
    a table must not merge seeds of two regimes, nor a rerun keep a seed of another."""
    values = recipe if isinstance(recipe, dict) else vars(recipe)
    return settings_changes({k: summary["recipe"].get(k) for k in SECTIONS}, {k: values.get(k) for k in SECTIONS})


def _one_recipe(summaries: list[dict]) -> None:
    first = summaries[0]
    for s in summaries[1:]:
        changed = recipe_changes(s, first["recipe"])
        if changed:
            raise WavecamError(f"seeds {first['seed']} and {s['seed']} ran different recipes ({', '.join(changed[:4])}"
                               f"{' ...' if len(changed) > 4 else ''}); a table merges the seeds of one recipe: "
                               "give each recipe its own --out")


def table(summaries: list[dict]) -> str:
    """Rows by seeds, with mean and min-max over several, then the criteria per seed. mIoU in percent."""
    if not summaries:
        raise WavecamError("no seed has finished: no seed*/summary.json")
    _one_recipe(summaries)
    several = len(summaries) > 1
    head = f"{'labels':<26} {'on':<5} " + " ".join(f"{'seed ' + str(s['seed']):>7}" for s in summaries)
    head += f" {'mean':>6}  min-max" if several else ""
    lines = [head, "-" * len(head)]
    for key, label, on in ROWS:
        values = [s["rows"].get(key) for s in summaries]
        got = [100 * v for v in values if v is not None]
        if not got:
            continue
        cells = " ".join(f"{'-':>7}" if v is None else f"{100 * v:7.1f}" for v in values)
        spread = f" {np.mean(got):6.1f}  {min(got):.1f}-{max(got):.1f}" if several else ""
        lines.append(f"{label:<26} {on:<5} {cells}{spread}")
    checks = []
    for text, row, ref, margin in CRITERIA:
        marks = []
        for s in summaries:
            a, b = s["rows"].get(row), s["rows"].get(ref)
            if a is None or b is None:
                continue
            gap = 100 * (a - b)
            marks.append(f"seed {s['seed']} {'yes' if gap >= margin else 'NO'} ({gap:+.1f})")
        if marks:
            checks.append(f"{text}: " + ", ".join(marks))
    n = summaries[0]["n_eval"]
    return "\n".join([*lines, f"(mIoU %; 'train': {n['train']} training images; 'val': {n['val']} images nothing "
                       "trained on)", "", *checks])


def times_table(summary: dict) -> str:
    """Seconds per stage of one seed, in the order they ran."""
    lines = [f"{stage:<32} {seconds:7.0f} s" for stage, seconds in summary["times"].items()]
    return "\n".join([*lines, f"{'total':<32} {sum(summary['times'].values()):7.0f} s"])
