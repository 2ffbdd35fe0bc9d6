"""Numeric flags and config keys out of range are refused before any work starts, naming the flag or
key and its range: argparse's usage and `error: argument --flag: ...` (exit 2) for one value, one
`error:` line (exit 2) for values that contradict each other; never a traceback or a NaN loss later."""

import argparse
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from wavecam.end_to_end.config import Config, load_config
from wavecam.errors import WavecamError
from wavecam.multi_stage.flags import TypedTuple, build_parser, finalize, momentum, str2bool
from wavecam.ranges import Range

RUNNER = Path(__file__).resolve().parents[1] / "multi_stage" / "run_wavecam_voc.py"
E2E_VOC = Path(__file__).resolve().parents[1] / "end_to_end" / "configs" / "voc.yaml"

# Numeric flags without a range, each with its reason.
UNRANGED = {
    "seed": "any integer seeds the generators",
}

# (command line, what the refusal says): one value out of its flag's range, refused by argparse.
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

# (command line, what the refusal says): values in range that contradict each other (check_conflicts).
CONTRADICTIONS = [
    ("--cam_resize_long 640 320", "--cam_resize_long 640 320: MIN is above MAX"),
    ("--irn_rescale 1.5 0.5", "--irn_rescale 1.5 0.5: MIN is above MAX"),
    ("--cam_eval_sweep 0.5 0.1 0.1", "--cam_eval_sweep 0.5 0.1 0.1: START is above STOP"),
    ("--sem_seg_eval_sweep 0.9 0.2 0.1", "--sem_seg_eval_sweep 0.9 0.2 0.1: START is above STOP"),
    ("--train_seg_pass True --seg_crop_size 1", "--seg_crop_size 1 is too small for --seg_msc_scales 0.5"),
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


@pytest.mark.parametrize("line", ["--cam_resize_long 320 320", "--cam_eval_sweep 0.3 0.3 0.1",
                                  "--seg_crf_iters 0 --seg_crf_pos 0 1 --seg_crf_bi 0 67 3",
                                  "--train_seg_pass True --seg_crop_size 2", "--train_seg_pass True --seg_msc_scales",
                                  "--train_seg_pass True --seg_crop_size 1 --seg_network deeplabv3_resnet101",
                                  "--cam_eval_thres 0 --conf_fg_thres 1 --exp_times 0 --seg_warmup_iters 0"])
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


@pytest.mark.parametrize("flags,named", [
    (["--seg_crop_size", "0", "--train_seg_pass", "True"], "argument --seg_crop_size: '0' is not an integer >= 1"),
    (["--seg_msc_scales", "0", "--train_seg_pass", "True"], "argument --seg_msc_scales: '0' is not a number > 0"),
    (["--cam_crop_size", "0", "--train_cam_pass", "True"], "argument --cam_crop_size: '0' is not an integer >= 1"),
    (["--seg_scales", "-1", "0", "--train_seg_pass", "True"], "argument --seg_scales: '-1' is not a number > 0"),
    (["--cam_resize_long", "640", "320", "--train_cam_pass", "True"],
     "error: --cam_resize_long 640 320: MIN is above MAX"),
])
def test_the_front_door_refuses_before_writing_anything(flags, named, tmp_path):
    """Through run_wavecam_voc.py, with passes switched on: exit 2, the flag named, no traceback, and
    nothing written (the work space and its log are made only once the flags are accepted)."""
    cwd = tmp_path / "run"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, str(RUNNER), "--voc12_root", str(tmp_path / "voc"),
                           "--work_space", "ws", *flags], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and named in proc.stderr, proc.stderr[-2000:]
    assert not list(cwd.iterdir())


# --- the end-to-end config: ranges declared on the schema's fields -----------------------------------

@pytest.mark.parametrize("item,says", [
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
])
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
