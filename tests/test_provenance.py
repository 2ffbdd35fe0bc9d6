"""Outputs know what made them: a rerun keeps only outputs of the same inputs (engine.provenance),
checked on its own and as chains of passes in one work space."""

import hashlib
import json
import logging
from pathlib import Path

import pytest

from wavecam.data.voc import VOC12
from wavecam.engine import provenance as P
from wavecam.io import save_json
from wavecam.multi_stage.runner import main

TINY = ("--pretrained none --num_workers 0 --cam_crop_size 48 --cam_resize_long 40 56 --cam_batch_size 4 "
        "--cam_num_epoches 1 --recam_num_epoches 1 --cam_scales 1.0 --chainer_eval_set train "
        "--train_list train --sgd_momentum 0.9 --cam_learning_rate 0.01").split()
IRN = ("--irn_crop_size 40 --irn_batch_size 4 --irn_num_epoches 1 --irn_path_radius 5 --infer_list train").split()
SEG = ("--seg_n_blocks 1 1 1 1 --seg_pretrained none --seg_crop_size 32 --seg_batch_size 2 --seg_iter_size 1 "
       "--seg_learning_rate 0.002 --seg_num_iters 2 --seg_label_dir gt --seg_train_list train --seg_eval_set val "
       "--seg_crf False").split()


def run(root, ws, *flags):
    assert main("voc", ["--voc12_root", str(root), "--work_space", str(ws), *TINY, *flags]) == 0


def digests(folder: Path, pattern: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def results(ws, name) -> dict:
    return json.loads((Path(ws) / "results" / f"{name}.json").read_text())


# --- the mechanism -------------------------------------------------------------------------------

def test_a_folder_keeps_the_files_of_its_maker_and_loses_anothers(tmp_path, caplog):
    folder = tmp_path / "out"
    P.claim_folder(folder, ".png", {"pass": "a", "w": 1}, force=False, what="a")
    (folder / "x.png").write_bytes(b"1")
    P.claim_folder(folder, ".png", {"pass": "a", "w": 1}, force=False, what="a")
    assert (folder / "x.png").exists(), "the same maker resumes: finished files stay"
    with caplog.at_level(logging.WARNING, logger="wavecam"):
        P.claim_folder(folder, ".png", {"pass": "b", "w": 1}, force=False, what="b")
    assert not (folder / "x.png").exists()
    assert "made by a" in caplog.text and "other pass" in caplog.text
    assert P.folder_maker(folder)["maker"] == {"pass": "b", "w": 1}


def test_files_without_a_record_are_redone(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"1")
    (folder / "keep.txt").write_text("not an output of the pass")
    P.claim_folder(folder, ".png", {"pass": "a"}, force=False, what="a")
    assert not (folder / "x.png").exists() and (folder / "keep.txt").exists()


def test_force_changes_the_folders_identity_for_what_is_made_from_it(tmp_path):
    folder = tmp_path / "out"
    P.claim_folder(folder, ".png", {"pass": "a"}, force=False, what="a")
    before = P.folder_identity(folder)
    P.claim_folder(folder, ".png", {"pass": "a"}, force=False, what="a")
    assert P.folder_identity(folder) == before
    record = P.folder_maker(folder)
    save_json(folder / P.RECORD, {**record, "written": "another time"})  # what --force's rewrite amounts to
    assert P.folder_identity(folder) != before


def test_an_unrecorded_folder_is_identified_by_its_files(tmp_path):
    folder = tmp_path / "cams"
    folder.mkdir()
    (folder / "a.npz").write_bytes(b"1")
    before = P.folder_identity(folder)
    assert before["pass"] is None
    (folder / "a.npz").write_bytes(b"22")
    assert P.folder_identity(folder) != before


def test_weights_are_kept_unless_another_maker_recorded_them(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    assert P.trained_by(weights, {"pass": "t", "lr": 1}) is None, "weights a user brings are kept"
    P.record_file(weights, {"pass": "t", "lr": 1})
    assert P.trained_by(weights, {"pass": "t", "lr": 1}) is None
    assert "other lr" in P.trained_by(weights, {"pass": "t", "lr": 2})
    first = P.file_identity(weights)
    weights.write_bytes(b"other weights")
    assert P.file_identity(weights) != first


def test_equal_weights_saved_twice_have_one_identity(tmp_path):
    import torch

    from wavecam.io import save_checkpoint

    for name in ("a.pth", "b.pth"):
        save_checkpoint(tmp_path / name, {"w": torch.arange(6.0)})
    assert P.file_identity(tmp_path / "a.pth") == P.file_identity(tmp_path / "b.pth")


def test_an_edited_xml_is_read_again(voc_root, tmp_path):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    image_id = VOC12(root).split("train")[0]
    before = VOC12(root).labels([image_id])[0]
    xml = root / "Annotations" / f"{image_id}.xml"
    new_class = next(c for i, c in enumerate(VOC12.class_names) if not before[i])
    text = xml.read_text()
    xml.write_text(text.replace("</annotation>", f"<object><name>{new_class}</name></object></annotation>"))
    after = VOC12(root).labels([image_id])[0]
    assert after[VOC12.class_names.index(new_class)] == 1 and after.sum() == before.sum() + 1


def test_a_synthetic_set_drawn_again_with_other_settings_is_another_dataset(tmp_path):
    """Same folder, other images: the settings the set was drawn with are part of what made an output."""
    from argparse import Namespace

    from wavecam.data.synthetic import make_synthetic_voc
    from wavecam.multi_stage.pass_io import data_identity

    args = Namespace(dataset="voc", voc12_root=str(tmp_path / "voc"), voc12_label_source="xml")
    make_synthetic_voc(tmp_path / "voc", n_train=4, n_val=2, size=48, seed=0)
    first = data_identity(args)
    make_synthetic_voc(tmp_path / "voc", n_train=4, n_val=2, size=48, seed=0)
    assert data_identity(args) == first
    make_synthetic_voc(tmp_path / "voc", n_train=4, n_val=2, size=56, seed=0, style="proxy")
    assert data_identity(args) != first and data_identity(args)["synthetic"]["style"] == "proxy"


# --- chains of passes in one work space --------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(voc_root, tmp_path_factory):
    """make_cam, then make_recam, then make_cam again in one work space, with the files and results
    after each."""
    ws = tmp_path_factory.mktemp("chain")
    seen = []
    for flags in (["--train_cam_pass", "True", "--make_cam_pass", "True"],
                  ["--train_recam_pass", "True", "--make_recam_pass", "True"],
                  ["--make_cam_pass", "True"]):
        run(voc_root, ws, *flags, "--eval_cam_pass", "True", "--cam_to_ir_label_pass", "True")
        seen.append({"cams": digests(ws / "cam_mask", "*.npz"), "ir": digests(ws / "ir_label", "*.png"),
                     "written": {p.name: p.stat().st_mtime_ns for p in (ws / "cam_mask").glob("*.npz")},
                     "eval": results(ws, "eval_cam")})
    return ws, seen


@pytest.mark.slow
def test_make_recam_replaces_the_cams_of_make_cam(chain):
    _, (cam, recam, _) = chain
    assert set(recam["cams"]) == set(cam["cams"])
    assert all(recam["written"][k] != cam["written"][k] for k in cam["written"]), "every CAM file was redone"
    assert any(recam["cams"][k] != cam["cams"][k] for k in cam["cams"])
    assert recam["ir"] != cam["ir"], "labels made from the old CAMs were redone too"


@pytest.mark.slow
def test_make_cam_again_gives_back_its_own_cams(chain):
    _, (cam, _, again) = chain
    assert again["cams"] == cam["cams"] and again["ir"] == cam["ir"]


@pytest.mark.slow
def test_each_evaluation_reads_the_maps_of_the_pass_that_ran_last(chain):
    ws, seen = chain
    assert [s["eval"]["cams_made_by"]["maker"]["pass"] for s in seen] == ["make_cam", "make_recam", "make_cam"]
    assert seen[1]["eval"]["miou"] != seen[0]["eval"]["miou"] or seen[1]["eval"]["iou"] != seen[0]["eval"]["iou"]
    assert seen[2]["eval"]["iou"] == seen[0]["eval"]["iou"]
    maker = P.folder_maker(ws / "cam_mask")["maker"]
    assert maker["cam_weights"] == P.file_identity(ws / "res50_cam.pth")


@pytest.mark.slow
def test_new_cams_retrain_irn_and_relabel(voc_root, tmp_path):
    ws = tmp_path / "ws"
    second = ["--cam_to_ir_label_pass", "True", "--train_irn_pass", "True", "--make_sem_seg_pass", "True", *IRN]
    run(voc_root, ws, "--train_cam_pass", "True", "--make_cam_pass", "True", *second)
    old_labels = P.folder_identity(ws / "ir_label")
    assert P.read_record(P.record_path(ws / "res50_irn.pth"))["maker"]["ir_labels"] == old_labels
    labels = digests(ws / "sem_seg", "*.png")
    run(voc_root, ws, "--cam_scales", "1.0", "0.5", "--make_cam_pass", "True", *second)
    assert P.folder_maker(ws / "cam_mask")["maker"]["cam_scales"] == [1.0, 0.5]
    assert P.folder_identity(ws / "ir_label") != old_labels, "labels made from the old CAMs were redone"
    record = P.read_record(P.record_path(ws / "res50_irn.pth"))
    assert record["maker"]["ir_labels"] == P.folder_identity(ws / "ir_label"), "IRN was retrained on them"
    assert P.folder_maker(ws / "sem_seg")["maker"]["irn_weights"] == P.file_identity(ws / "res50_irn.pth")
    assert digests(ws / "sem_seg", "*.png").keys() == labels.keys()


@pytest.mark.slow
def test_retrained_segmenter_repredicts(voc_root, tmp_path):
    ws = tmp_path / "ws"
    run(voc_root, ws, *SEG, "--train_seg_pass", "True", "--make_seg_pass", "True")
    first = P.file_identity(ws / "res101_seg.pth")
    run(voc_root, ws, *SEG, "--seed", "7", "--train_seg_pass", "True", "--force", "True")
    assert P.file_identity(ws / "res101_seg.pth") != first
    run(voc_root, ws, *SEG, "--make_seg_pass", "True")
    maker = P.folder_maker(ws / "seg_pred" / "val")["maker"]
    assert maker["seg_weights"] == P.file_identity(ws / "res101_seg.pth")


@pytest.mark.slow
def test_other_settings_retrain_and_the_same_skip(voc_root, tmp_path):
    ws = tmp_path / "ws"
    log = ws / "sample_train_eval.log"  # the runner's log file (it sets up logging of its own)
    run(voc_root, ws, *SEG, "--train_seg_pass", "True")
    first = P.file_identity(ws / "res101_seg.pth")
    before = len(log.read_text())
    run(voc_root, ws, *SEG, "--train_seg_pass", "True")
    assert "skipping train_seg" in log.read_text()[before:] and P.file_identity(ws / "res101_seg.pth") == first
    before = len(log.read_text())
    run(voc_root, ws, *SEG, "--seg_learning_rate", "0.001", "--train_seg_pass", "True")
    said = log.read_text()[before:]
    assert "retraining" in said and "seg_learning_rate" in said
    assert P.file_identity(ws / "res101_seg.pth") != first
