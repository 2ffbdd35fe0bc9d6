"""--config recipes (multi_stage/configs/*.yaml) and the resolved settings a run writes."""

import sys
from pathlib import Path

import pytest
import yaml

from wavecam import demo
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


@pytest.mark.parametrize("name,datasets", [("voc", ["voc"]), ("coco", ["coco"]), ("demo", ["voc", "coco"]),
                                           ("demo_stage3", ["voc", "coco"])])
def test_each_recipe_loads_and_passes_finalize(name, datasets, tmp_path):
    path = CONFIGS / f"{name}.yaml"
    for dataset in datasets:
        args = finalize(parse_args(dataset, ["--config", str(path), "--work_space", str(tmp_path)]))
        assert args.config == [str(path)]


def test_every_recipe_file_is_tested():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == ["coco", "demo", "demo_stage3", "voc"]


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
    argv = ["--config", str(CONFIGS / "demo.yaml"), "--work_space", str(ws), "--device", "cpu",
            "--cam_batch_size", "4", "--seg_crf_bi", "4", "67", "15", "--cache_dir", str(tmp_path / "cache")]
    assert main("voc", argv) == 0  # no pass switched on: the settings are all it writes
    path = settings_path(ws)
    assert path == ws / "results" / "settings.yaml" and path.is_file()
    written = yaml.safe_load(path.read_text())
    assert written["cam_batch_size"] == 4 and written["irn_learning_rate"] == 0.05 and written["seed"] == 0
    assert "config" not in written and "dataset" not in written
    reloaded = flags_of(parse_args("voc", ["--config", str(path)]))
    assert as_lists(reloaded) == as_lists(flags_of(parse_args("voc", argv)))


# The argv lists demo.main passed to the runner before its settings moved to configs/demo.yaml and
# demo_stage3.yaml, as recorded from that code with `--out /OUT` and the pretraining's file stubbed as
# /OUT/pretrained/W.pth: each call is its run's common flags, then its work space and passes.
COMMON_BEFORE = (
    "--pretrained {weights} --num_workers {workers} --seed 0 --cam_network {net} --irn_network {net} "
    "--train_list {train} --val_list val --infer_list train --chainer_eval_set train --cam_crop_size {crop} "
    "--cam_resize_long {resize} --cam_batch_size 16 --cam_num_epoches {cam_epochs} --cam_learning_rate 0.01 "
    "--sgd_momentum 0.9 --cam_scales 1.0 0.5 1.5 --cam_eval_sweep 0.05 0.95 0.05 "
    "--sem_seg_eval_sweep 0.05 0.95 0.05 --wavecam_num_epoches {wave_epochs} --wavecam_learning_rate 0.0005 "
    "--cam_eval_thres 0.5 --conf_fg_thres 0.5 --conf_bg_thres 0.25 --sem_seg_bg_thres 0.5 "
    "--irn_crop_size {crop} --irn_batch_size 16 --irn_num_epoches {irn_epochs} --irn_learning_rate 0.05 "
    "--irn_path_radius 5 --exp_times {exp_times}"
)
SEG_BEFORE = (
    "--seg_block basic --seg_n_blocks {blocks} --seg_pretrained {weights} --seg_train_list train "
    "--seg_eval_set train --seg_crop_size 64 --seg_batch_size 8 --seg_iter_size 1 --seg_msc_scales "
    "--seg_num_iters {iters} --seg_learning_rate 0.002 --seg_lr_decay 1 --seg_warmup_iters {iters} "
    "--seg_log_iters 20 --seg_save_iters {save} --seg_crf_bi 4 67 {rgb} --train_seg_pass True --make_seg_pass True "
    "--eval_seg_pass True"
)
CAM_WS = "--work_space /OUT/ws_cam"
WAVE_WS = "--work_space /OUT/ws_wavecam --cam_weights_name /OUT/ws_cam/res50_cam.pth"
CAM_PASSES = "--train_cam_pass True --make_cam_pass True --eval_cam_pass True"
WAVE_PASSES = "--train_wavecam_pass True --make_wavecam_pass True --eval_cam_pass True"
IRN_PASSES = "--cam_to_ir_label_pass True --train_irn_pass True --make_sem_seg_pass True --eval_sem_seg_pass True"
W = "/OUT/pretrained/W.pth"
QUICK = dict(weights=W, workers=2, net="resnet18", crop=64, resize="51 76", cam_epochs=2, wave_epochs=1,
             irn_epochs=1, exp_times=1)
QUICK_SEG = SEG_BEFORE.format(blocks="2 2 2 2", weights=W, iters=2, save=1, rgb=15)
DEMO_RUNS = {  # the demo's flags: (dataset, its common flags, the calls after them)
    "default": ("voc", [],
                dict(QUICK, crop=96, resize="76 115", cam_epochs=5, wave_epochs=4, irn_epochs=5), []),
    "quick": ("voc", ["--quick"], QUICK, [f"{CAM_WS} {QUICK_SEG}"]),
    "coco_quick_both": ("coco", ["--quick", "--dataset", "coco", "--seg-from", "both"], QUICK,
                        [f"{CAM_WS} {QUICK_SEG}", f"{WAVE_WS} {QUICK_SEG}"]),
    "custom": ("voc", "--cam-epochs 3 --seg-iters 7 --size 80 --network resnet34 --pretrain-steps 0 "
                      "--seg-crf-rgb 9 --exp-times 2 --workers 1".split(),
               dict(weights="none", workers=1, net="resnet34", crop=80, resize="64 96", cam_epochs=3, wave_epochs=4,
                    irn_epochs=5, exp_times=2),
               [f"{CAM_WS} " + SEG_BEFORE.format(blocks="3 4 6 3", weights="none", iters=7, save=3, rgb=9.0)]),
}


def calls_before(run: str) -> list[tuple[str, list[str]]]:
    dataset, _, common, seg = DEMO_RUNS[run]
    root = "--voc12_root /OUT/voc" if dataset == "voc" else "--mscoco_root /OUT/coco"
    common = f"{root} " + COMMON_BEFORE.format(train="train_aug" if dataset == "voc" else "train", **common)
    tails = [f"{CAM_WS} {CAM_PASSES}", f"{CAM_WS} {IRN_PASSES}", f"{WAVE_WS} {WAVE_PASSES}",
             f"{WAVE_WS} {IRN_PASSES}", *seg]
    return [(dataset, f"{common} {tail}".split()) for tail in tails]


def demo_calls(monkeypatch, demo_argv: list[str]) -> list[tuple[str, list[str]]]:
    """The (dataset, argv) of each runner call demo.main makes, with its data, pretraining and report stubbed."""
    calls = []
    monkeypatch.setattr(demo, "run", lambda dataset, argv: calls.append((dataset, list(argv))))
    monkeypatch.setattr(demo, "make_synthetic_voc", lambda out, **kwargs: Path(out))
    monkeypatch.setattr(demo, "make_synthetic_coco", lambda out, **kwargs: Path(out))
    monkeypatch.setattr(demo, "backbone_weights", lambda a, out: None if a.pretrain_steps <= 0 else Path(W))
    monkeypatch.setattr(demo, "table", lambda *args: "")
    monkeypatch.setattr(demo, "report", lambda *args, **kwargs: None)
    monkeypatch.setattr(sys, "argv", ["run_demo.py", "--out", "/OUT", *demo_argv])
    demo.main()
    return calls


@pytest.mark.parametrize("run", list(DEMO_RUNS))
def test_the_demo_passes_receive_the_flags_they_did_before_its_recipes(monkeypatch, run):
    """Each pass of the demo gets exactly the values (and their types) of the flags it got when the demo
    built every flag in code, so that its outputs stay bit-identical."""
    after = demo_calls(monkeypatch, DEMO_RUNS[run][1])
    before = calls_before(run)
    assert [dataset for dataset, _ in after] == [dataset for dataset, _ in before]
    for (dataset, new), (_, old) in zip(after, before):
        assert "--config" in new and "--config" not in old
        new_args, old_args = parse_args(dataset, new), parse_args(dataset, old)
        assert repr(flags_of(new_args)) == repr(flags_of(old_args))
        assert repr(flags_of(finalize(new_args))) == repr(flags_of(finalize(old_args)))
