import os

import pytest

from wavecam.multi_stage.flags import build_parser, finalize, str2bool
from wavecam.multi_stage.runner import PASSES


def parse(dataset, line):
    return finalize(build_parser(dataset).parse_args(line.split()))


def test_paper_readme_lines_parse():
    a = parse("voc", "--voc12_root ROOT --work_space WS --train_cam_pass True --train_wavecam_pass True "
                     "--make_wavecam_pass True --eval_cam_pass True")
    assert a.train_cam_pass and a.train_wavecam_pass and a.make_wavecam_pass and a.eval_cam_pass
    assert not a.make_cam_pass and not a.train_irn_pass
    assert a.cam_weights_name == os.path.join("WS", "res50_cam.pth")
    assert a.wavecam_weight_dir == os.path.join("WS", "wavecam_weight")
    assert a.log_name == os.path.join("WS", "sample_train_eval.log")
    b = parse("voc", "--voc12_root ROOT --work_space WS --cam_to_ir_label_pass True --train_irn_pass True "
                     "--make_sem_seg_pass True --eval_sem_seg_pass True")
    assert b.cam_to_ir_label_pass and b.train_irn_pass and b.make_sem_seg_pass and b.eval_sem_seg_pass


def test_published_defaults():
    a = parse("voc", "")
    assert (a.cam_batch_size, a.cam_num_epoches, a.cam_learning_rate, a.cam_weight_decay) == (16, 5, 0.1, 1e-4)
    assert a.cam_scales == (1.0, 0.5, 1.5, 2.0) and a.cam_crop_size == 512
    assert (a.wavecam_num_epoches, a.wavecam_learning_rate, a.wavecam_loss_weight) == (4, 0.0005, 1.0)
    assert a.wavecam_batch_size == 16 and a.wavecam_wave is True
    # ReCAM's run_sample.py; its VOC train_recam batches by --cam_batch_size.
    assert (a.recam_num_epoches, a.recam_learning_rate, a.recam_loss_weight, a.recam_batch_size) == (4, 0.0005, 1.0, 16)
    assert a.recam_weight_dir == os.path.join("result_default", "recam_weight") and a.recam_kernel == "product"
    assert parse("voc", "--cam_batch_size 8").recam_batch_size == 8
    assert (a.irn_crop_size, a.irn_batch_size, a.irn_num_epoches, a.irn_learning_rate) == (512, 32, 3, 0.1)
    assert (a.beta, a.exp_times) == (10, 8)
    assert (a.conf_fg_thres, a.conf_bg_thres, a.sem_seg_bg_thres) == (0.35, 0.1, 0.28)
    c = parse("coco", "")
    assert (c.cam_eval_thres, c.wavecam_loss_weight, c.wavecam_batch_size, c.sem_seg_bg_thres) == (0.15, 0.1, 6, 0.25)
    assert (c.recam_loss_weight, c.recam_batch_size) == (0.1, 6)


def test_recam_passes_and_their_order():
    a = parse("voc", "--work_space WS --train_recam_pass True --make_recam_pass True")
    assert a.train_recam_pass and a.make_recam_pass and not a.train_wavecam_pass
    order = [module.rpartition(".")[2] for module in PASSES.values()]
    assert order[:7] == ["train_cam", "train_recam", "train_wavecam", "make_cam", "make_recam", "make_wavecam",
                         "eval_cam"]


@pytest.mark.parametrize("passes", [("make_cam", "make_recam"), ("make_recam", "make_wavecam"),
                                    ("make_cam", "make_recam", "make_wavecam")])
def test_cam_writers_conflict(passes):
    from wavecam.errors import WavecamError

    line = " ".join(f"--{p}_pass True" for p in passes)
    with pytest.raises(WavecamError, match=r"both|all") as e:
        parse("voc", f"--work_space WS {line}")
    assert all(f"--{p}_pass" in str(e.value) for p in passes) and "cam_mask" in str(e.value)
    parse("voc", f"--work_space WS --{passes[0]}_pass True")


@pytest.mark.parametrize("flag,bad,good", [("seg_warmup_iters", -1, 0), ("seg_num_iters", 0, 1),
                                           ("num_workers", -1, 0)])
def test_counts_out_of_range_are_refused(flag, bad, good, capsys):
    with pytest.raises(SystemExit) as e:
        parse("voc", f"--work_space WS --{flag} {bad}")
    assert e.value.code == 2
    assert f"argument --{flag}: '{bad}' is not an integer >= {good}" in capsys.readouterr().err
    assert getattr(parse("voc", f"--work_space WS --{flag} {good}"), flag) == good


@pytest.mark.parametrize("text,value", [("True", True), ("yes", True), ("1", True), ("False", False),
                                        ("no", False), ("0", False)])
def test_booleans(text, value):
    assert str2bool(text) is value
    assert parse("voc", f"--make_cam_pass {text}").make_cam_pass is value


def test_absolute_paths_are_kept():
    a = parse("voc", "--work_space WS --cam_weights_name /abs/cam.pth")
    assert a.cam_weights_name == "/abs/cam.pth"


def test_every_pass_has_a_module():
    import importlib

    for flag, module in PASSES.items():
        assert module == f"wavecam.multi_stage.passes.{flag.removesuffix('_pass')}"
        assert callable(importlib.import_module(module).run)


def test_no_pass_imports_another():
    """What passes share lives in the library, so that each pass can be read and re-run alone."""
    import ast
    import importlib

    for module in PASSES.values():
        tree = ast.parse(open(importlib.import_module(module).__file__).read())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [name for name in imported if name and name.startswith("wavecam.multi_stage.passes")], module


def test_fine_tune_settings_are_read_once_from_their_flags():
    from wavecam.multi_stage.flags import FineTune

    a = parse("voc", "--work_space WS --cam_batch_size 8 --recam_num_epoches 2 --wavecam_learning_rate 0.01 "
                     "--wavecam_kernel classifier")
    assert a.fine_tune["recam"] == FineTune(name="recam", num_epoches=2, learning_rate=0.0005, loss_weight=1.0,
                                            batch_size=8, weight_dir=os.path.join("WS", "recam_weight"),
                                            kernel="product", wave=False)
    assert a.fine_tune["wavecam"] == FineTune(name="wavecam", num_epoches=4, learning_rate=0.01, loss_weight=1.0,
                                              batch_size=8, weight_dir=os.path.join("WS", "wavecam_weight"),
                                              kernel="classifier", wave=True)
    assert parse("voc", "--wavecam_wave False").fine_tune["wavecam"].wave is False
    c = parse("coco", "")
    assert (c.fine_tune["recam"].batch_size, c.fine_tune["wavecam"].loss_weight) == (6, 0.1)


def test_no_setting_is_read_by_a_built_name():
    """grep must find every reader of a flag: no `getattr(args, f"{name}_...")` in the library."""
    import re
    from pathlib import Path

    import wavecam

    built = re.compile(r"getattr\(\s*args\s*,\s*f[\"']")
    hits = [f"{path}:{number}" for path in Path(wavecam.__file__).parent.rglob("*.py")
            for number, line in enumerate(path.read_text().splitlines(), 1) if built.search(line)]
    assert not hits
