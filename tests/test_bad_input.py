"""Bad input, every row of the "Bad input" table in docs/reliability.md and those handled before it:
one readable `error:` line naming the file (or the flag), exit code 2, never a traceback.

- The front doors, table-driven: each case puts one bad input in place and runs the VOC runner
  (multi_stage/run_wavecam_voc.py), `python -m wavecam.report` or end_to_end/evaluate.py on it.
  Each is a subprocess, so the table is marked slow.
- In-process checks behind those doors: the flags' and the end-to-end config's ranges, the label-map
  check on arrays, writers on a full disk or under a file.
- What a flag lets through: --skip_bad_images goes on, --allow_pickle_cams reads (slow: whole passes).
"""

import argparse
import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import typing
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from wavecam.data.voc import VOC12
from wavecam.end_to_end.config import Config, load_config
from wavecam.engine.cli import run_cli
from wavecam.errors import BadFileError, WavecamError, WriteError
from wavecam.io import check_label_map, save_cam, save_checkpoint, save_json, save_npz, save_png
from wavecam.models import CAMNet
from wavecam.multi_stage.flags import TypedTuple, build_parser, finalize, momentum, str2bool
from wavecam.ranges import Range

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "multi_stage" / "run_wavecam_voc.py"
E2E = ROOT / "end_to_end"
E2E_VOC = E2E / "configs" / "voc.yaml"
E2E_SYNTHETIC = E2E / "configs" / "synthetic.yaml"  # MiT-B1 from random initialisation, VOC's 21 classes

# Sizes that keep a pass short: SMALL for the CAM passes, TINY for IRN and the segmenter.
SMALL = ("--pretrained none --num_workers 0 --cam_crop_size 48 --cam_resize_long 40 56 --cam_batch_size 4 "
         "--cam_num_epoches 1 --cam_scales 1.0").split()
TINY = ("--pretrained none --num_workers 0 --seg_pretrained none --seg_block basic --seg_n_blocks 1 1 1 1 "
        "--seg_crop_size 32 --seg_batch_size 2 --seg_iter_size 1 --seg_num_iters 2 --seg_scales 1.0 "
        "--irn_crop_size 64 --irn_batch_size 2 --irn_num_epoches 1 --irn_path_radius 5").split()
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


# ==== the front doors: one table, one subprocess a case =============================================

@dataclass
class Place:
    """Where a case puts its bad input: `tmp` is the test's own folder, `ws` the work space in it,
    `voc` the session's synthetic VOC root (read only) and `root` a copy of it in `tmp`, made on
    first use, for the cases that damage it or read it through the runner."""

    tmp: Path
    voc: Path

    @property
    def ws(self) -> Path:
        return self.tmp / "ws"

    @cached_property
    def root(self) -> Path:
        copy = self.tmp / "voc"
        shutil.copytree(self.voc, copy)
        return copy


class Bad(NamedTuple):
    """What a case's setup leaves: the command, and what its `error:` line must name, one of `names`
    at least (a path, or the flag or pass where no file is at fault; training reads its labels in a
    random order, so either of two files may be named). Run from `cwd`, the test's folder if None."""

    cmd: list[str]
    names: tuple
    cwd: Path | None = None


@dataclass(frozen=True)
class Case:
    """`setup(place)` puts one bad input in place; the message (the `error:` line and its indented
    continuation) then holds every one of `says`, with `{h}x{w}` the size of the image the named file
    is named for and `{n}` its pixels where `sized`; `then(place)` checks what the refusal left."""

    id: str
    setup: Callable[[Place], Bad]
    says: tuple[str, ...] = ()
    sized: bool = False
    then: Callable[[Place], None] | None = None


def runner(root: Path, ws: Path, *flags, sizes=SMALL) -> list[str]:
    return [sys.executable, str(RUNNER), "--voc12_root", str(root), "--work_space", str(ws), *sizes, *flags]


def voc_run(at: Place, *flags, sizes=SMALL) -> list[str]:
    """The runner on the copy of the VOC root, with the case's work space."""
    return runner(at.root, at.ws, *flags, sizes=sizes)


def id_list(at: Place, ids: list[str]) -> str:
    path = at.ws / "ids.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


def cam_weights(at: Place, classes: int = 20) -> None:
    """Weights of the CAM network in the work space, so that a pass reading them gets to its input."""
    save_checkpoint(at.ws / "res50_cam.pth", CAMNet(classes).state_dict())


# --- the VOC runner: dataset, checkpoints, CAM files, flags, training, work space ---------------------

def missing_root(at):
    nowhere = at.tmp / "nowhere"
    return Bad(runner(nowhere, at.ws, "--train_cam_pass", "True"), (nowhere,))


def root_of_another_layout(at):
    (at.tmp / "not_voc").mkdir()
    return Bad(runner(at.tmp / "not_voc", at.ws, "--train_cam_pass", "True"), (at.tmp / "not_voc",))


def id_list_naming_a_missing_image(at):
    ids = at.tmp / "ids.txt"
    ids.write_text("2007_000032\n2099_123456\n")
    return Bad(voc_run(at, "--train_list", str(ids), "--train_cam_pass", "True"),
               (at.root / "JPEGImages" / "2099_123456.jpg",))


def truncated_jpeg(at):
    path = at.root / "JPEGImages" / f"{VOC12(at.root).split('train_aug')[0]}.jpg"
    path.write_bytes(path.read_bytes()[:300])
    cam_weights(at)
    return Bad(voc_run(at, "--make_cam_pass", "True"), (path,))


def checkpoint_of_another_class_count(at):
    cam_weights(at, 5)
    return Bad(voc_run(at, "--make_cam_pass", "True"), (at.ws / "res50_cam.pth",))


def checkpoint_that_would_run_code(at):
    at.ws.mkdir()
    with open(at.ws / "res50_cam.pth", "wb") as f:
        pickle.dump({"model": print}, f)  # a callable: unpickling would have to import and call
    return Bad(voc_run(at, "--make_cam_pass", "True"), (at.ws / "res50_cam.pth",))


def cam_file_of_the_wrong_format(at):
    bogus = at.ws / "cam_mask" / f"{VOC12(at.root).split('train')[0]}.npz"
    bogus.parent.mkdir(parents=True)
    np.savez(bogus, cams=np.zeros((1, 4, 4)))
    return Bad(voc_run(at, "--eval_cam_pass", "True", "--chainer_eval_set", "train"), (bogus,))


def reference_pickled_cams(at) -> list[Path]:
    """cam_mask/<id>.npy as the reference code writes them: a pickled dict, readable only by consent."""
    files = []
    for image_id in VOC12(at.root).split("train"):
        h, w = VOC12(at.root).load_gt(image_id).shape
        files.append(at.ws / "cam_mask" / f"{image_id}.npy")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        np.save(files[-1], {"keys": np.array([0]), "cam": np.ones((1, h // 4, w // 4)),
                            "high_res": np.ones((1, h, w))})
    return files


def pickled_cams_without_consent(at):
    return Bad(voc_run(at, "--eval_cam_pass", "True"), tuple(reference_pickled_cams(at)))


def conflicting_flags(at):
    return Bad(voc_run(at, "--make_cam_pass", "True", "--make_wavecam_pass", "True"), (at.ws / "cam_mask",))


def diverging_loss(at):
    return Bad(voc_run(at, "--train_cam_pass", "True", "--cam_learning_rate", "1e12", "--sgd_momentum", "0.9"),
               ("of train_cam",))


def no_weights_written(at):
    assert not (at.ws / "res50_cam.pth").exists(), "no weights of a diverged run are written"


def weights_of_a_pass_not_run(at):
    """make_sem_seg before train_irn: the weights it reads are missing, not an unwritable disk."""
    return Bad(voc_run(at, "--make_sem_seg_pass", "True"), (at.ws / "res50_irn.pth",))


def unwritable_work_space(at):
    blocker = at.tmp / "not_a_folder"
    blocker.write_text("a file where the work space should go")
    return Bad(runner(at.root, blocker, "--train_cam_pass", "True"), (blocker,))


def flags_at_the_front_door(line: str, named: str):
    """The runner with passes switched on, a root that does not exist and a relative work space: a flag
    out of range is refused, `named`, before the root is looked at or anything is written."""
    def setup(at):
        cwd = at.tmp / "run"
        cwd.mkdir()
        cmd = [sys.executable, str(RUNNER), "--voc12_root", str(at.tmp / "voc"), "--work_space", "ws", *line.split()]
        return Bad(cmd, (named,), cwd)
    return setup


def nothing_written(at):
    assert not list((at.tmp / "run").iterdir()), "the work space and its log are made once the flags pass"


# --- the VOC runner, on each reader of a label map ------------------------------------------------

def patch_of_50(shape) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[10:20, 10:20] = 50
    return label


def all_50(shape) -> np.ndarray:
    return np.full(shape, 50, np.uint8)


def ten_by_twelve(shape) -> np.ndarray:
    return np.zeros((10, 12), np.uint8)


def patch_of_255(shape) -> np.ndarray:
    return patch_of_50(shape) // 50 * 255


def label_files(at, folder: str, make) -> tuple[list[str], tuple]:
    """Two train images' label maps in WS/<folder>, each `make(its image's (H, W))`: (ids, files)."""
    source = VOC12(at.root)
    ids = source.split("train")[:2]
    files = tuple(at.ws / folder / f"{i}.png" for i in ids)
    for i, path in zip(ids, files):
        save_png(path, make(source.load_image(i).shape[:2]))
    return ids, files


def pseudo_labels(make, workers: int = 0):
    def setup(at):
        ids, files = label_files(at, "sem_seg", make)
        return Bad(voc_run(at, "--num_workers", str(workers), "--seg_train_list", id_list(at, ids),
                           "--train_seg_pass", "True", sizes=TINY), files)
    return setup


def ir_labels(at):
    ids, files = label_files(at, "ir_label", patch_of_50)
    cam_weights(at)  # IRN's backbone
    return Bad(voc_run(at, "--train_list", id_list(at, ids), "--train_irn_pass", "True", sizes=TINY), files)


def sem_seg_at_eval(at):
    image_id = VOC12(at.root).split("val")[0]
    path = at.ws / "sem_seg" / f"{image_id}.png"
    save_png(path, patch_of_50(VOC12(at.root).load_gt(image_id).shape))
    return Bad(voc_run(at, "--chainer_eval_set", id_list(at, [image_id]), "--eval_sem_seg_pass", "True",
                       sizes=TINY), (path,))


def seg_prediction(make):
    def setup(at):
        image_id = VOC12(at.root).split("val")[0]
        path = at.ws / "seg_pred" / "val" / f"{image_id}.png"
        save_png(path, make(VOC12(at.root).load_gt(image_id).shape))
        return Bad(voc_run(at, "--seg_eval_set", "val", "--seg_crf", "False", "--eval_seg_pass", "True",
                           sizes=TINY), (path,))
    return setup


def cams_of_another_size(at):
    image_id = VOC12(at.root).split("val")[0]
    path = at.ws / "cam_mask" / f"{image_id}.npz"
    save_cam(path, np.array([0]), np.ones((1, 3, 3)), np.ones((1, 10, 12)))
    return Bad(voc_run(at, "--chainer_eval_set", id_list(at, [image_id]), "--eval_cam_pass", "True", sizes=TINY),
               (path,))


def ground_truth(at):
    source = VOC12(at.root)
    image_id = source.split("val")[0]
    mask = source.mask_path(image_id)
    shape = source.load_gt(image_id).shape
    save_png(mask, patch_of_50(shape), palette=True)  # as VOC's own masks are stored
    save_png(at.ws / "sem_seg" / f"{image_id}.png", np.zeros(shape, np.uint8))
    return Bad(voc_run(at, "--chainer_eval_set", id_list(at, [image_id]), "--eval_sem_seg_pass", "True",
                       sizes=TINY), (mask,))


# --- the report and the end-to-end evaluate.py ----------------------------------------------------

VALID = {"miou": 0.5, "iou": [0.6, 0.4], "n_images": 2}
TRIES = "re-run the eval pass that writes it (--{}_pass True"


def report_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "wavecam.report", *map(str, args)]


def work_space(at: Place, **results) -> Path:
    """A work space whose results/<pass>.json hold `results`, written verbatim (as text where a
    string is given, so that JSON can be anything)."""
    (at.ws / "results").mkdir(parents=True)
    for stage, content in results.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (at.ws / "results" / f"{stage}.json").write_text(text)
    return at.ws


def out_is_a_file(at):
    out = at.tmp / "report.txt"
    out.write_text("")
    return Bad(report_cmd(work_space(at, eval_cam=VALID), "--out", out), (out,))


def out_under_a_file(at):
    (at.tmp / "somefile.txt").write_text("")
    out = at.tmp / "somefile.txt" / "report"
    return Bad(report_cmd(work_space(at, eval_cam=VALID), "--out", out), (out,))


def results(stage: str, content, **others):
    def setup(at):
        ws = work_space(at, **{stage: content}, **others)
        return Bad(report_cmd(ws, "--out", at.tmp / "r"), (ws / "results" / f"{stage}.json",))
    return setup


def e2e_evaluate(state_dict: Callable[[], dict]):
    """evaluate.py with the synthetic config on a checkpoint holding `state_dict()`; the checkpoint
    is refused before any image is read."""
    def setup(at):
        checkpoint = at.tmp / "other.pth"
        save_checkpoint(checkpoint, state_dict())
        return Bad([sys.executable, str(E2E / "evaluate.py"), "--config", str(E2E_SYNTHETIC), "--device", "cpu",
                    "--checkpoint", str(checkpoint), "--work_dir", str(at.tmp / "w"),
                    "--set", f"dataset.root={at.voc}"], (checkpoint,))
    return setup


def resnet_cam() -> dict:
    return CAMNet(20, arch="resnet18").state_dict()


def mit_b0_train_state() -> dict:
    """A train state of the end-to-end layout whose encoder and decoder are MiT-B0's, a size the
    config does not build."""
    from wavecam.models.e2e import SegFormerHead
    from wavecam.models.mit import mit

    encoder = mit("mit_b0", (4, 2, 2, 1))
    model = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    model |= {f"decoder.{k}": v for k, v in SegFormerHead(encoder.embed_dims, 256, 21).state_dict().items()}
    return {"model": model, "iteration": 4}


def mit_b0_segformer() -> dict:
    """An mmseg SegFormer checkpoint on MiT-B0 (its backbone alone)."""
    from wavecam.models.mit import mit

    return {"state_dict": {f"backbone.{k}": v for k, v in mit("mit_b0").state_dict().items()}}


CASES = [
    # the dataset
    Case("voc-missing-root", missing_root, ("folder not found", "JPEGImages")),
    Case("voc-root-of-another-layout", root_of_another_layout, ("no JPEGImages folder",)),
    Case("voc-id-list-naming-a-missing-image", id_list_naming_a_missing_image,
         ("2099_123456", "JPEGImages/2099_123456.jpg")),
    Case("voc-truncated-jpeg", truncated_jpeg, ("unreadable image",)),
    # checkpoints and CAM files
    Case("voc-checkpoint-of-another-class-count", checkpoint_of_another_class_count,
         ("does not fit", "classifier.weight", "(5, 2048, 1, 1)")),
    Case("voc-checkpoint-that-would-run-code", checkpoint_that_would_run_code,
         ("refused: it holds Python objects",)),
    Case("voc-cam-file-of-the-wrong-format", cam_file_of_the_wrong_format, ("not a cam_mask file",)),
    Case("voc-pickled-reference-cams-without-consent", pickled_cams_without_consent,
         ("--allow_pickle_cams True",)),
    # flags, training, the work space
    Case("voc-conflicting-flags", conflicting_flags, ("--make_cam_pass and --make_wavecam_pass",)),
    Case("voc-diverging-loss", diverging_loss, ("the loss became", "epoch 1, step"), then=no_weights_written),
    Case("voc-weights-of-a-pass-not-run", weights_of_a_pass_not_run,
         ("no such file; run the pass that writes it first",)),
    Case("voc-unwritable-work-space", unwritable_work_space, ("cannot write or read", "finished outputs are kept")),
    *(Case(f"flag-{name}", flags_at_the_front_door(line, named), then=nothing_written) for name, line, named in [
        ("seg-crop-size-0", "--seg_crop_size 0 --train_seg_pass True",
         "argument --seg_crop_size: '0' is not an integer >= 1"),
        ("seg-msc-scales-0", "--seg_msc_scales 0 --train_seg_pass True",
         "argument --seg_msc_scales: '0' is not a number > 0"),
        ("cam-crop-size-0", "--cam_crop_size 0 --train_cam_pass True",
         "argument --cam_crop_size: '0' is not an integer >= 1"),
        ("seg-scales-negative", "--seg_scales -1 0 --train_seg_pass True",
         "argument --seg_scales: '-1' is not a number > 0"),
        ("cam-resize-long-the-wrong-way-round", "--cam_resize_long 640 320 --train_cam_pass True",
         "error: --cam_resize_long 640 320: MIN is above MAX"),
    ]),
    # label maps, at each of their readers
    Case("labels-pseudo-label-patch-train-seg", pseudo_labels(patch_of_50),
         ("pseudo label", "value 50 at 100 pixels is not a label", "1..20 classes", "--make_sem_seg_pass")),
    Case("labels-pseudo-label-all-50-train-seg", pseudo_labels(all_50),
         ("pseudo label", "value 50 at {n} pixels", "255 ignore", "--make_sem_seg_pass"), sized=True),
    Case("labels-pseudo-label-wrong-size-train-seg", pseudo_labels(ten_by_twelve),
         ("pseudo label", "is 10x12 but its image is {h}x{w}", "--make_sem_seg_pass"), sized=True),
    Case("labels-pseudo-label-read-in-a-loader-worker", pseudo_labels(patch_of_50, workers=1),
         ("pseudo label", "value 50 at 100 pixels")),
    Case("labels-ir-label-train-irn", ir_labels, ("ir_label", "value 50 at 100 pixels", "--cam_to_ir_label_pass")),
    Case("labels-sem-seg-eval-sem-seg", sem_seg_at_eval,
         ("pseudo label", "value 50 at 100 pixels", "--make_sem_seg_pass")),
    Case("labels-seg-pred-eval-seg", seg_prediction(patch_of_50),
         ("prediction", "value 50 at 100 pixels", "--make_seg_pass")),
    Case("labels-seg-pred-ignore-eval-seg", seg_prediction(patch_of_255),
         ("prediction", "value 255 at 100 pixels", "(valid: 0 background, 1..20 classes)")),
    Case("labels-seg-pred-wrong-size-eval-seg", seg_prediction(ten_by_twelve),
         ("prediction", "is 10x12 but its ground truth is {h}x{w}", "--make_seg_pass"), sized=True),
    Case("labels-cams-wrong-size-eval-cam", cams_of_another_size,
         ("CAMs", "are 10x12 but its ground truth is {h}x{w}"), sized=True),
    Case("labels-ground-truth-eval-sem-seg", ground_truth,
         ("ground truth", "value 50 at 100 pixels", "check the dataset")),
    # the report
    Case("report-out-is-a-file", out_is_a_file, ("is a file, not a folder", "choose another --out")),
    Case("report-out-under-a-file", out_under_a_file,
         ("somefile.txt is a file, so no folder can be made under it", "choose another --out")),
    Case("report-results-list", results("eval_cam", "[0.5, 0.4]"),
         ("not a results file of eval_cam", "expected a JSON object with miou, iou, n_images, found a JSON list",
          TRIES.format("eval_cam"))),
    Case("report-results-empty-object", results("eval_cam", {}),
         ("not a results file of eval_cam", "found one without miou, iou, n_images", TRIES.format("eval_cam"))),
    Case("report-results-missing-keys", results("eval_sem_seg", {"miou": 0.5}, eval_cam=VALID),
         ("not a results file of eval_sem_seg", "found one without iou, n_images", TRIES.format("eval_sem_seg"))),
    Case("report-results-garbage-values",
         results("eval_seg", {"miou": "high", "iou": "all", "n_images": -1}, eval_cam=VALID),
         ("not a results file of eval_seg", 'miou is "high", expected a number in 0..1',
          'iou is "all", expected a list of numbers in 0..1 or null', "n_images is -1, expected an integer >= 0")),
    Case("report-results-out-of-range",
         results("eval_cam", {"miou": 1.5, "iou": [0.5, 2], "n_images": 2.5, "threshold": "x"}),
         ("miou is 1.5, expected a number in 0..1", "iou is [0.5, 2], expected", "n_images is 2.5",
          'threshold is "x", expected a number')),
    Case("report-results-not-json", results("eval_cam", "{miou: 0.5"),
         ("not valid JSON", "re-run the pass that writes it")),
    # the end-to-end evaluate.py
    Case("e2e-resnet-cam-checkpoint", e2e_evaluate(resnet_cam),
         ("does not fit the end-to-end WaveCAM network on MiT-B1 with 21 classes (encoder.*, decoder.*",
          "unexpected: stage1.", "It holds no MiT encoder", "Give --checkpoint one written by a run of this config's "
          "model.backbone and dataset")),
    Case("e2e-mit-of-another-size", e2e_evaluate(mit_b0_train_state),
         ("does not fit the end-to-end WaveCAM network on MiT-B1 with 21 classes", "shape mismatch: ",
          "checkpoint (256, 32) vs model (256, 64)", "It holds a MiT-B0 encoder (model.backbone mit_b0) and 21 classes",
          "--set model.backbone=")),
    Case("e2e-segformer-of-another-size", e2e_evaluate(mit_b0_segformer),
         ("does not fit the encoder and decoder of the end-to-end WaveCAM network on MiT-B1 with 21 classes, in "
          "mmseg's SegFormer layout (backbone.*, decode_head.*)", "missing: decoder.",
          "It holds a MiT-B0 encoder (model.backbone mit_b0).")),
]

# An error line: ours, or argparse's own after its usage (`run_wavecam_voc.py: error: argument ...`).
ERROR_LINE = re.compile(r"(\S+\.py: )?error: ")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line_naming_the_file(case, voc_root, tmp_path):
    at = Place(tmp_path, voc_root)
    bad = case.setup(at)
    proc = subprocess.run(bad.cmd, cwd=bad.cwd or tmp_path, env=ONE_THREAD, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if ERROR_LINE.match(line)]
    assert len(errors) == 1, proc.stderr[-3000:]
    line = lines[errors[0]]
    if not line.startswith("error: "):
        assert proc.stderr.startswith("usage: "), proc.stderr[-3000:]
    rest = lines[errors[0] + 1:]
    indented = next((k for k, more in enumerate(rest) if not more[:1].isspace()), len(rest))
    message = "\n".join([line, *rest[:indented]])  # "does not fit" and the like go on indented
    named = [str(n) for n in bad.names if str(n) in line]
    assert named, f"none of {[str(n) for n in bad.names]} in {line}"
    if case.sized:
        h, w = VOC12(at.root).load_image(Path(named[0]).stem).shape[:2]  # every file here is named for its image
    for part in case.says:
        expected = part.format(h=h, w=w, n=h * w) if case.sized else part
        assert expected in message, f"{expected!r} not in {message}"
    if case.then is not None:
        case.then(at)


# ==== flags and config keys out of range, in process ==============================================
# One value out of its flag's range: argparse's usage and `error: argument --flag: ...`, exit 2.
# Values that contradict each other: one WavecamError (the front door's one `error:` line).

# Numeric flags without a range, each with its reason.
UNRANGED = {
    "seed": "any integer seeds the generators",
}

OUT_OF_RANGE = [
    ("--seg_crop_size 0", "argument --seg_crop_size: '0' is not an integer >= 1"),
    ("--seg_crop_size -5", "argument --seg_crop_size: '-5' is not an integer >= 1"),
    ("--cam_crop_size 0", "argument --cam_crop_size: '0' is not an integer >= 1"),
    ("--irn_crop_size 0", "argument --irn_crop_size: '0' is not an integer >= 1"),
    ("--cam_resize_long 0 640", "argument --cam_resize_long: '0' is not an integer >= 1"),
    ("--seg_msc_scales 0", "argument --seg_msc_scales: '0' is not a number > 0"),
    ("--seg_scales -1 0", "argument --seg_scales: '-1' is not a number > 0"),
    ("--cam_scales 1.0 0", "argument --cam_scales: '0' is not a number > 0"),
    ("--irn_rescale 0.5 -1.5", "argument --irn_rescale: '-1.5' is not a number > 0"),
    ("--cam_batch_size 0", "argument --cam_batch_size: '0' is not an integer >= 1"),
    ("--recam_batch_size 0", "argument --recam_batch_size: '0' is not an integer >= 1"),
    ("--wavecam_batch_size -2", "argument --wavecam_batch_size: '-2' is not an integer >= 1"),
    ("--irn_batch_size 0", "argument --irn_batch_size: '0' is not an integer >= 1"),
    ("--seg_batch_size 0", "argument --seg_batch_size: '0' is not an integer >= 1"),
    ("--seg_iter_size 0", "argument --seg_iter_size: '0' is not an integer >= 1"),
    ("--cam_num_epoches 0", "argument --cam_num_epoches: '0' is not an integer >= 1"),
    ("--irn_num_epoches -1", "argument --irn_num_epoches: '-1' is not an integer >= 1"),
    ("--seg_num_iters 0", "argument --seg_num_iters: '0' is not an integer >= 1"),
    ("--seg_num_iters 1.5", "argument --seg_num_iters: '1.5' is not an integer >= 1"),
    ("--seg_save_iters 0", "argument --seg_save_iters: '0' is not an integer >= 1"),
    ("--seg_log_iters 0", "argument --seg_log_iters: '0' is not an integer >= 1"),
    ("--seg_lr_decay 0", "argument --seg_lr_decay: '0' is not an integer >= 1"),
    ("--seg_warmup_iters -1", "argument --seg_warmup_iters: '-1' is not an integer >= 0"),
    ("--num_workers -1", "argument --num_workers: '-1' is not an integer >= 0"),
    ("--cam_infer_batch -1", "argument --cam_infer_batch: '-1' is not an integer >= 0"),
    ("--cam_learning_rate 0", "argument --cam_learning_rate: '0' is not a number > 0"),
    ("--seg_learning_rate -0.00025", "argument --seg_learning_rate: '-0.00025' is not a number > 0"),
    ("--irn_learning_rate nan", "argument --irn_learning_rate: 'nan' is not a number > 0"),
    ("--wavecam_learning_rate inf", "argument --wavecam_learning_rate: 'inf' is not a number > 0"),
    ("--cam_weight_decay -0.0001", "argument --cam_weight_decay: '-0.0001' is not a number >= 0"),
    ("--seg_momentum -0.9", "argument --seg_momentum: '-0.9' is not a number >= 0"),
    ("--sgd_momentum -0.9", "argument --sgd_momentum: '-0.9' is neither 'reference' nor a number >= 0"),
    ("--sgd_momentum fast", "argument --sgd_momentum: 'fast' is neither 'reference' nor a number >= 0"),
    ("--recam_loss_weight -1", "argument --recam_loss_weight: '-1' is not a number >= 0"),
    ("--cam_eval_thres 1.5", "argument --cam_eval_thres: '1.5' is not a number from 0 to 1"),
    ("--conf_fg_thres -0.1", "argument --conf_fg_thres: '-0.1' is not a number from 0 to 1"),
    ("--conf_bg_thres 2", "argument --conf_bg_thres: '2' is not a number from 0 to 1"),
    ("--sem_seg_bg_thres 1.01", "argument --sem_seg_bg_thres: '1.01' is not a number from 0 to 1"),
    ("--beta 0", "argument --beta: '0' is not a number > 0"),
    ("--exp_times -1", "argument --exp_times: '-1' is not an integer >= 0"),
    ("--irn_path_radius 0", "argument --irn_path_radius: '0' is not an integer >= 1"),
    ("--seg_poly_power -0.9", "argument --seg_poly_power: '-0.9' is not a number >= 0"),
    ("--seg_n_blocks 3 4 0 3", "argument --seg_n_blocks: '0' is not an integer >= 1"),
    ("--seg_crf_iters -1", "argument --seg_crf_iters: '-1' is not an integer >= 0"),
    ("--seg_crf_pos 3 0", "argument --seg_crf_pos: XY_STD '0' is not a number > 0"),
    ("--seg_crf_bi -4 67 3", "argument --seg_crf_bi: W '-4' is not a number >= 0"),
    ("--seg_crf_bi 4 67 0", "argument --seg_crf_bi: RGB_STD '0' is not a number > 0"),
    ("--cam_eval_sweep 0.1 0.5 0", "argument --cam_eval_sweep: STEP '0' is not a number > 0"),
    ("--cam_eval_sweep -0.1 0.5 0.1", "argument --cam_eval_sweep: START '-0.1' is not a number from 0 to 1"),
    ("--sem_seg_eval_sweep 0.1 1.5 0.1", "argument --sem_seg_eval_sweep: STOP '1.5' is not a number from 0 to 1"),
    ("--feature_dim 0", "argument --feature_dim: '0' is not an integer >= 1"),
]

CONTRADICTIONS = [
    ("--cam_resize_long 640 320", "--cam_resize_long 640 320: MIN is above MAX"),
    ("--irn_rescale 1.5 0.5", "--irn_rescale 1.5 0.5: MIN is above MAX"),
    ("--cam_eval_sweep 0.5 0.1 0.1", "--cam_eval_sweep 0.5 0.1 0.1: START is above STOP"),
    ("--sem_seg_eval_sweep 0.9 0.2 0.1", "--sem_seg_eval_sweep 0.9 0.2 0.1: START is above STOP"),
    ("--train_seg_pass True --seg_crop_size 1", "--seg_crop_size 1 is too small for --seg_msc_scales 0.5"),
]

AT_THE_EDGES = ["--cam_resize_long 320 320", "--cam_eval_sweep 0.3 0.3 0.1",
                "--seg_crf_iters 0 --seg_crf_pos 0 1 --seg_crf_bi 0 67 3",
                "--train_seg_pass True --seg_crop_size 2", "--train_seg_pass True --seg_msc_scales",
                "--train_seg_pass True --seg_crop_size 1 --seg_network deeplabv3_resnet101",
                "--cam_eval_thres 0 --conf_fg_thres 1 --exp_times 0 --seg_warmup_iters 0"]

E2E_OUT_OF_RANGE = [
    ("train.batch_size=0", "train.batch_size: 0 is not an integer >= 1"),
    ("dataset.crop_size=-5", "dataset.crop_size: -5 is not an integer >= 1"),
    ("dataset.scale_range=[0.0, 2.0]", "dataset.scale_range: 0.0 is not a number > 0"),
    ("cam.scales=[1.0, -0.5]", "cam.scales: -0.5 is not a number > 0"),
    ("test.scales=[0]", "test.scales: 0.0 is not a number > 0"),
    ("train.max_iters=0", "train.max_iters: 0 is not an integer >= 1"),
    ("train.eval_iters=0", "train.eval_iters: 0 is not an integer >= 1"),
    ("cam.high_thre=1.5", "cam.high_thre: 1.5 is not a number from 0 to 1"),
    ("optimizer.learning_rate=0", "optimizer.learning_rate: 0.0 is not a number > 0"),
    ("optimizer.betas=[0.9, 1.0]", "optimizer.betas: 1.0 is not a number >= 0 and < 1"),
]


def parse(dataset: str, line: str) -> argparse.Namespace:
    return finalize(build_parser(dataset).parse_args(line.split()))


def ranges_of(action: argparse.Action) -> tuple[Range, ...]:
    """The ranges an action checks its values against, one per value where they differ."""
    kinds = action.types if isinstance(action, TypedTuple) else (action.type,)
    return kinds if all(isinstance(kind, Range) for kind in kinds) else ()


@pytest.mark.parametrize("line,says", OUT_OF_RANGE, ids=[line for line, _ in OUT_OF_RANGE])
def test_a_value_out_of_its_flags_range_is_refused_by_argparse(line, says, capsys):
    with pytest.raises(SystemExit) as e:
        parse("voc", line)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: ") and says in err, err


@pytest.mark.parametrize("line,says", CONTRADICTIONS, ids=[line for line, _ in CONTRADICTIONS])
def test_values_that_contradict_each_other_are_refused_in_one_line(line, says):
    with pytest.raises(WavecamError, match="^" + re.escape(says)):
        parse("voc", line)


@pytest.mark.parametrize("line", AT_THE_EDGES)
def test_the_edges_of_each_range_are_accepted(line):
    parse("voc", line)


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_the_papers_defaults_lie_in_every_declared_range(dataset):
    """Types are not applied to non-string defaults (nor to the dataset's set_defaults), so each default
    is checked here against its flag's range: a range must never refuse the paper's settings."""
    parser = build_parser(dataset)
    parse(dataset, "")
    for action in parser._actions:
        default, ranges = parser.get_default(action.dest), ranges_of(action)
        if default is None or not ranges:
            continue
        values = default if isinstance(default, (list, tuple)) else (default,)
        per_value = ranges if isinstance(action, TypedTuple) else ranges * len(values)
        for kind, value in zip(per_value, values, strict=True):
            assert kind.holds(value), f"--{action.dest} default {value!r} is not {kind}"
    assert momentum(parser.get_default("sgd_momentum")) == "reference"


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_every_numeric_flag_declares_its_range(dataset):
    """A new flag taking a number gets a range type (wavecam.ranges) or a line in UNRANGED saying why not."""
    unchecked = []
    for action in build_parser(dataset)._actions:
        if action.dest in UNRANGED or ranges_of(action) or action.type is momentum:
            continue
        defaults = action.default if isinstance(action.default, (list, tuple)) else (action.default,)
        numeric = any(isinstance(v, int | float) and not isinstance(v, bool) for v in defaults)
        if numeric or action.type not in (None, str2bool):
            unchecked.append(action.option_strings[0])
    assert not unchecked, f"numeric flags without a range type: {unchecked}"
    assert set(UNRANGED) <= {action.dest for action in build_parser(dataset)._actions}


@pytest.mark.parametrize("item,says", E2E_OUT_OF_RANGE, ids=[item for item, _ in E2E_OUT_OF_RANGE])
def test_an_e2e_value_out_of_range_is_refused_naming_the_override(item, says):
    with pytest.raises(WavecamError, match="^" + re.escape(f"--set {item!r}: {says}")):
        load_config(E2E_VOC, [item])


def test_an_e2e_value_out_of_range_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(E2E_VOC.read_text().replace("crop_size: 512", "crop_size: 0"))
    with pytest.raises(WavecamError, match=r"bad\.yaml: dataset\.crop_size: 0 is not an integer >= 1$"):
        load_config(path)
    load_config(path, ["dataset.crop_size=1"])  # the override replaces the file's value


def test_every_numeric_e2e_key_declares_its_range():
    """As for the flags: a new number in the schema gets `ranged(...)` or a line here saying why not."""
    unranged = {"train.seed"}  # any integer seeds the generators
    numeric = {int, float, list[int], list[float], int | None, float | None, list[int] | None, list[float] | None}
    missing = []

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in cls.__dataclass_fields__.values():
            hint = hints[f.name]
            if hasattr(hint, "__dataclass_fields__"):
                walk(hint, f"{prefix}{f.name}.")
            elif hint in numeric and "range" not in f.metadata and f"{prefix}{f.name}" not in unranged:
                missing.append(f"{prefix}{f.name}")

    walk(Config, "")
    assert not missing, f"numeric config keys without a range: {missing}"


# ==== the label-map check, on arrays ==============================================================

LABEL_CASES = [
    ("class-beyond-the-last", np.array([[0, 21], [20, 255]], np.uint8), {}, "value 21 at 1 pixel "),
    ("several-bad-values", np.array([[50, 50], [21, 0]], np.uint8), {},
     "value 21 at 1 pixel (3 pixels of 2 bad values in all)"),
    ("negative-in-int32", np.array([[-1, 0], [1, 2]], np.int32), {}, "value -1 at 1 pixel "),
    ("ignore-where-none-may-be", np.array([[0, 255], [255, 2]], np.uint8), {"ignore": False},
     "value 255 at 2 pixels is not a label (valid: 0 background, 1..20 classes)"),
    ("three-channels", np.zeros((2, 2, 3), np.uint8), {}, "not a one-channel 8-bit label map (shape (2, 2, 3)"),
    ("floats", np.zeros((2, 2), np.float32), {}, "not a one-channel 8-bit label map (shape (2, 2), float32)"),
    ("wrong-size", np.zeros((2, 3), np.uint8), {"size": (3, 2)}, "x/7.png is 2x3 but its image is 3x2"),
]


@pytest.mark.parametrize("label, kwargs, says", [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_check_label_map_refuses(label, kwargs, says):
    with pytest.raises(BadFileError) as e:
        check_label_map(label, "x/7.png", 20, what="pseudo label", fix="re-run it", **kwargs)
    assert str(e.value).startswith("pseudo label x/7.png") and says in str(e.value) and "re-run it" in str(e.value)


def test_check_label_map_keeps_every_valid_value():
    label = np.array([[0, 1, 20, 255]], np.int64)
    out = check_label_map(label, "x.png", 20, size=(1, 4))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1, 20, 255]]


# ==== writers: a full disk, a path that cannot be made ============================================

TORCH_FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
Usage = namedtuple("Usage", "total used free")


def torch_save_failing_with(error):
    def save(obj, f):  # save_checkpoint hands torch an open file
        f.write(b"PK\x03\x04 half a checkpoint")
        raise error
    return save


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@dataclass
class WriteCase:
    """`arrange(monkeypatch)` breaks the disk; `write(target)` must then raise a WriteError naming
    `target` and holding every one of `says`, and leave nothing in the target's folder."""

    id: str
    arrange: object
    write: object
    says: tuple[str, ...]


def torch_full(monkeypatch):
    monkeypatch.setattr(torch, "save", torch_save_failing_with(TORCH_FULL_DISK))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(1 << 30, 1 << 30, 4096))


def torch_failing_with_space_left(monkeypatch):
    monkeypatch.setattr(torch, "save", torch_save_failing_with(TORCH_FULL_DISK))


def write_full(monkeypatch):
    monkeypatch.setattr(torch, "save", torch_save_failing_with(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))


WRITE_CASES = [
    WriteCase("checkpoint-torch-runtime-error-on-a-full-disk", torch_full,
              lambda p: save_checkpoint(p, {"w": torch.zeros(3)}),
              ("no space left on its device", "inline_container.cc", "free some space there")),
    WriteCase("checkpoint-torch-runtime-error-with-space-left", torch_failing_with_space_left,
              lambda p: save_checkpoint(p, {"w": torch.zeros(3)}), ("torch could not write it", "choose another")),
    WriteCase("checkpoint-enospc-from-write", write_full, lambda p: save_checkpoint(p, {"w": torch.zeros(3)}),
              ("no space left on its device", "free some space there")),
    WriteCase("npz-enospc", lambda mp: mp.setattr(np, "savez", no_space), lambda p: save_npz(p, a=np.zeros(2)),
              ("no space left on its device",)),
    WriteCase("json-enospc-at-fsync", lambda mp: mp.setattr(os, "fsync", no_space), lambda p: save_json(p, {}),
              ("no space left on its device",)),
]


@pytest.mark.parametrize("case", WRITE_CASES, ids=[c.id for c in WRITE_CASES])
def test_failed_write_names_the_target_and_leaves_nothing(case, tmp_path, monkeypatch):
    case.arrange(monkeypatch)
    target = tmp_path / "out" / "res50_cam.pth"
    with pytest.raises(WriteError) as e:
        case.write(target)
    msg = str(e.value)
    assert msg.startswith(f"cannot write {target}: ") and ".tmp" not in msg, msg
    for part in case.says:
        assert part in msg, msg
    assert list((tmp_path / "out").iterdir()) == []
    assert str(pickle.loads(pickle.dumps(e.value))) == msg  # as a process pool hands it back


@pytest.mark.parametrize("under", ["", "sub"], ids=["parent-is-a-file", "ancestor-is-a-file"])
def test_png_under_a_regular_file(tmp_path, under):
    blocker = tmp_path / "ws"
    blocker.write_text("a file where a folder should be")
    target = blocker / under / "2007_000032.png"
    with pytest.raises(WriteError, match=f"cannot write {target}: {blocker} is a file, not a folder; choose"):
        save_png(target, np.zeros((2, 2), np.uint8))


def test_front_door_names_its_option_for_a_failed_write(tmp_path, capsys):
    (tmp_path / "ws").write_text("")
    target = tmp_path / "ws" / "x.png"
    assert run_cli(lambda: save_png(target, np.zeros((2, 2), np.uint8)), "--work_space") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot write {target}: ")
    assert "choose a writable --work_space, then re-run" in err


def _can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and unshare to mount a 1 MiB tmpfs")
def test_checkpoint_on_a_real_full_disk(tmp_path):
    """The same as the monkeypatched cases, on a 1 MiB tmpfs in a private mount namespace: torch really
    fills it, and nothing but the error is left."""
    disk = tmp_path / "disk"
    disk.mkdir()
    code = ("import os, sys, torch; from wavecam.errors import WriteError; from wavecam.io import save_checkpoint\n"
            "try:\n    save_checkpoint(os.path.join(sys.argv[1], 'w.pth'), {'w': torch.zeros(1 << 20)})\n"
            "except WriteError as e:\n    print(e)\n"
            "print(os.listdir(sys.argv[1]))")
    script = f'mount -t tmpfs -o size=1m tmpfs "$1" && exec "{sys.executable}" -c "$0" "$1"'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, code, str(disk)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said, left = proc.stdout.splitlines()
    assert said.startswith(f"cannot write {disk}/w.pth: no space left on its device"), said
    assert left == "[]"


# ==== what a flag lets through ====================================================================

@pytest.mark.slow
def test_skip_bad_images_lists_them_and_goes_on(voc_root, tmp_path):
    at = Place(tmp_path, voc_root)
    ids = VOC12(at.root).split("train_aug")
    path = at.root / "JPEGImages" / f"{ids[0]}.jpg"
    path.write_bytes(path.read_bytes()[:300])
    cam_weights(at)
    proc = subprocess.run(voc_run(at, "--make_cam_pass", "True", "--skip_bad_images", "True"), env=ONE_THREAD,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = (at.ws / "skipped_images.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"make_cam\t{ids[0]}\t") and str(path) in listed[0]
    written = {p.stem for p in (at.ws / "cam_mask").glob("*.npz")}
    assert written == set(ids[1:])


@pytest.mark.slow
def test_reference_pickled_cams_are_read_with_consent(voc_root, tmp_path):
    """The other half of the table's voc-pickled-reference-cams-without-consent."""
    at = Place(tmp_path, voc_root)
    reference_pickled_cams(at)
    proc = subprocess.run(voc_run(at, "--eval_cam_pass", "True", "--allow_pickle_cams", "True"), env=ONE_THREAD,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "only do this for files you trust" in proc.stderr
    assert (at.ws / "results" / "eval_cam.json").is_file()
