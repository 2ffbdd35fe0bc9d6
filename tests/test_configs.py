"""--config recipes (multi_stage/configs/*.yaml) and the resolved settings a run writes."""

from pathlib import Path

import pytest
import yaml

from wavecam.errors import WavecamError
from wavecam.multi_stage.flags import finalize, parse_args
from wavecam.multi_stage.runner import PASSES, main
from wavecam.multi_stage.workspace import settings_path

CONFIGS = Path(__file__).resolve().parents[1] / "multi_stage" / "configs"
# The passes of the paper's two command lines (README, "The multi-stage pipeline").
PAPER_PASSES = {"train_cam_pass", "train_wavecam_pass", "make_wavecam_pass", "eval_cam_pass",
                "cam_to_ir_label_pass", "train_irn_pass", "make_sem_seg_pass", "eval_sem_seg_pass"}


def as_lists(settings: dict) -> dict:
    """Settings with tuples as lists: a default may be a tuple where the command line and a recipe give
    a list of the same values."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}


def flags_of(args) -> dict:
    return {key: value for key, value in vars(args).items() if key != "config"}


def recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name,datasets", [("voc", ["voc"]), ("coco", ["coco"])])
def test_each_recipe_loads_and_passes_finalize(name, datasets, tmp_path):
    path = CONFIGS / f"{name}.yaml"
    for dataset in datasets:
        args = finalize(parse_args(dataset, ["--config", str(path), "--work_space", str(tmp_path)]))
        assert args.config == [str(path)]


def test_every_recipe_file_is_tested():
    # proxy*.yaml are the proxy benchmark's recipes, whose sections tests/test_proxy.py loads
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("proxy")) == ["coco", "voc"]


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_paper_recipes_are_the_runners_defaults_with_the_paper_passes(dataset):
    path = CONFIGS / f"{dataset}.yaml"
    recipe_args = flags_of(parse_args(dataset, ["--config", str(path)]))
    defaults = flags_of(parse_args(dataset, []))
    assert recipe_args.keys() == defaults.keys()
    changed = {key for key in defaults if as_lists(recipe_args)[key] != as_lists(defaults)[key]}
    assert changed == PAPER_PASSES
    assert all(recipe_args[key] is True for key in PAPER_PASSES)
    # Every key of the file says its value out loud, even where it is the default.
    keys = set(yaml.safe_load(path.read_text()))
    assert {"cam_batch_size", "wavecam_loss_weight", "wavecam_kernel", "sem_seg_bg_thres", "seg_num_iters"} <= keys
    assert {flag for flag in PASSES} <= keys


def test_a_typo_is_refused_naming_the_closest_flag(tmp_path):
    path = recipe(tmp_path, "cam_batch_size: 8\ncam_learnig_rate: 0.05\n")
    with pytest.raises(WavecamError) as e:
        parse_args("voc", ["--config", path])
    assert str(e.value) == f"{path}: unknown flag 'cam_learnig_rate' (did you mean 'cam_learning_rate'?)"
    # A flag of the other runner is no flag of this one.
    with pytest.raises(WavecamError, match="unknown flag 'voc12_root'"):
        parse_args("coco", ["--config", recipe(tmp_path, "voc12_root: ROOT\n")])


@pytest.mark.parametrize("line,message", [
    ("cam_batch_size: 0", "cam_batch_size: '0' is not an integer >= 1"),
    ("cam_batch_size: 1.5", "cam_batch_size: '1.5' is not an integer >= 1"),
    ("cam_eval_thres: 1.5", "cam_eval_thres: '1.5' is not a number from 0 to 1"),
    ("cam_learning_rate: .nan", "cam_learning_rate: 'nan' is not a number > 0"),
    ("cam_scales: [1.0, -0.5]", "cam_scales: '-0.5' is not a number > 0"),
    ("cam_scales: 1.0", "cam_scales: expects a list of values, got 1.0"),
    ("cam_resize_long: [320]", "cam_resize_long: expects 2 values (MIN MAX), got 1"),
    ("seg_crf_bi: [4, 67, 0]", "seg_crf_bi: RGB_STD '0' is not a number > 0"),
    ("cam_resample: bicubic", "cam_resample: 'bicubic' is not one of pil, torch"),
    ("amp: maybe", "amp: boolean value expected (True/False/yes/no/1/0), got 'maybe'"),
    ("seed: x", "seed: 'x' is not a valid int"),
    ("cam_num_epoches:", "cam_num_epoches: has no value: give one, or leave the key out for the default"),
    ("train_list: yes", "train_list: expects text, got the boolean True (quote the value)"),
    ("sgd_momentum: -1", "sgd_momentum: '-1' is neither 'reference' nor a number >= 0"),
])
def test_a_value_out_of_range_is_refused_naming_the_flag(tmp_path, line, message):
    path = recipe(tmp_path, line + "\n")
    with pytest.raises(WavecamError) as e:
        parse_args("voc", ["--config", path])
    assert str(e.value) == f"{path}: {message}"


def test_values_are_converted_as_the_command_line_converts_them(tmp_path):
    path = recipe(tmp_path, "cam_learning_rate: 1e-3\nbeta: 5\nseg_msc_scales: []\namp: yes\n"
                            "cam_eval_sweep: [0.1, 0.9, 0.1]\nrecam_batch_size: null\n")
    from_file = flags_of(parse_args("voc", ["--config", path]))
    from_line = flags_of(parse_args("voc", "--cam_learning_rate 1e-3 --beta 5 --seg_msc_scales --amp yes "
                                           "--cam_eval_sweep 0.1 0.9 0.1".split()))
    assert repr(from_file) == repr(from_line)


def test_the_command_line_wins_and_a_later_recipe_wins(tmp_path):
    first = recipe(tmp_path, "cam_batch_size: 8\ncam_num_epoches: 2\n")
    second = tmp_path / "second.yaml"
    second.write_text("cam_num_epoches: 3\n")
    assert parse_args("voc", ["--config", first]).cam_batch_size == 8
    args = parse_args("voc", ["--cam_batch_size", "4", "--config", first, "--config", str(second)])
    assert (args.cam_batch_size, args.cam_num_epoches) == (4, 3)
    # The seed's flag-only command lines are untouched.
    assert parse_args("voc", ["--cam_batch_size", "4"]).cam_batch_size == 4


@pytest.mark.parametrize("text,message", [
    (None, "--config {path}: no such file"),
    ("cam_batch_size: [1\n", "--config {path}: not valid YAML (expected ',' or ']', but got '<stream end>' "
                             "at line 2, column 1)"),
    ("- cam_batch_size\n", "--config {path}: expected `flag_name: value` lines, got a list"),
])
def test_a_bad_recipe_file_is_one_error_line(tmp_path, capsys, text, message):
    path = tmp_path / "recipe.yaml"
    if text is not None:
        path.write_text(text)
    assert main("voc", ["--config", str(path), "--work_space", str(tmp_path / "ws")]) == 2
    assert capsys.readouterr().err == f"error: {message.format(path=path)}\n"


def test_the_resolved_settings_are_written_and_reload_to_the_same_flags(tmp_path):
    ws = tmp_path / "ws"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("irn_learning_rate: 0.05\ncam_resize_long: [76, 115]\n")
    argv = ["--config", str(recipe), "--work_space", str(ws), "--device", "cpu",
            "--cam_batch_size", "4", "--seg_crf_bi", "4", "67", "15", "--cache_dir", str(tmp_path / "cache")]
    assert main("voc", argv) == 0  # no pass switched on: the settings are all it writes
    path = settings_path(ws)
    assert path == ws / "results" / "settings.yaml" and path.is_file()
    written = yaml.safe_load(path.read_text())
    assert written["cam_batch_size"] == 4 and written["irn_learning_rate"] == 0.05 and written["seed"] == 0
    assert "config" not in written and "dataset" not in written
    reloaded = flags_of(parse_args("voc", ["--config", str(path)]))
    assert as_lists(reloaded) == as_lists(flags_of(parse_args("voc", argv)))
