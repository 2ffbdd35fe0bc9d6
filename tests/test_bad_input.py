"""Every row of the README's table of bad inputs: one readable message, exit code 2, no traceback."""

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wavecam.data.voc import VOC12
from wavecam.io import save_checkpoint
from wavecam.models import CAMNet

RUNNER = Path(__file__).resolve().parents[1] / "multi_stage" / "run_wavecam_voc.py"
SMALL = ["--pretrained", "none", "--num_workers", "0", "--cam_crop_size", "48", "--cam_resize_long", "40", "56",
         "--cam_batch_size", "4", "--cam_num_epoches", "1", "--cam_scales", "1.0"]


def fails(root, ws, *flags) -> str:
    proc = subprocess.run([sys.executable, str(RUNNER), "--voc12_root", str(root), "--work_space", str(ws),
                           *SMALL, *flags], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return proc.stderr[proc.stderr.index("error: "):]


@pytest.fixture
def root(voc_root, tmp_path):
    copy = tmp_path / "voc"
    shutil.copytree(voc_root, copy)
    return copy


def test_missing_dataset_root(tmp_path):
    msg = fails(tmp_path / "nowhere", tmp_path / "ws", "--train_cam_pass", "True")
    assert "folder not found" in msg and "JPEGImages" in msg


def test_root_of_another_layout(tmp_path):
    (tmp_path / "not_voc").mkdir()
    assert "no JPEGImages folder" in fails(tmp_path / "not_voc", tmp_path / "ws", "--train_cam_pass", "True")


def test_id_list_naming_a_missing_image(root, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("2007_000032\n2099_123456\n")
    msg = fails(root, tmp_path / "ws", "--train_list", str(ids), "--train_cam_pass", "True")
    assert "2099_123456" in msg and "JPEGImages/2099_123456.jpg" in msg


def test_truncated_jpeg_is_named(root, tmp_path):
    bad = VOC12(root).split("train_aug")[0]
    path = root / "JPEGImages" / f"{bad}.jpg"
    path.write_bytes(path.read_bytes()[:300])
    save_checkpoint(tmp_path / "ws" / "res50_cam.pth", CAMNet(20, pretrained=None).state_dict())
    msg = fails(root, tmp_path / "ws", "--make_cam_pass", "True")
    assert str(path) in msg and "unreadable image" in msg


def test_checkpoint_of_another_class_count(root, tmp_path):
    save_checkpoint(tmp_path / "ws" / "res50_cam.pth", CAMNet(5, pretrained=None).state_dict())
    msg = fails(root, tmp_path / "ws", "--make_cam_pass", "True")
    assert "does not fit" in msg and "classifier.weight" in msg and "(5, 2048, 1, 1)" in msg


def test_checkpoint_that_would_run_code(root, tmp_path):
    (tmp_path / "ws").mkdir()
    with open(tmp_path / "ws" / "res50_cam.pth", "wb") as f:
        pickle.dump({"model": print}, f)  # a callable: unpickling would have to import and call
    msg = fails(root, tmp_path / "ws", "--make_cam_pass", "True")
    assert "refused: it holds Python objects" in msg


def test_cam_file_of_the_wrong_format(root, tmp_path):
    image_id = VOC12(root).split("train")[0]
    (tmp_path / "ws" / "cam_mask").mkdir(parents=True)
    bogus = tmp_path / "ws" / "cam_mask" / f"{image_id}.npz"
    np.savez(bogus, cams=np.zeros((1, 4, 4)))
    msg = fails(root, tmp_path / "ws", "--eval_cam_pass", "True", "--chainer_eval_set", "train")
    assert "not a cam_mask file" in msg and str(bogus) in msg


def test_conflicting_flags(root, tmp_path):
    msg = fails(root, tmp_path / "ws", "--make_cam_pass", "True", "--make_wavecam_pass", "True")
    assert "--make_cam_pass and --make_wavecam_pass" in msg


def test_diverging_loss_stops_with_the_step(root, tmp_path):
    msg = fails(root, tmp_path / "ws", "--train_cam_pass", "True", "--cam_learning_rate", "1e12",
                "--sgd_momentum", "0.9")
    assert "the loss became" in msg and "epoch 1, step" in msg
    assert not (tmp_path / "ws" / "res50_cam.pth").exists(), "no weights of a diverged run are written"


def test_skip_bad_images_lists_them_and_goes_on(root, tmp_path):
    ids = VOC12(root).split("train_aug")
    path = root / "JPEGImages" / f"{ids[0]}.jpg"
    path.write_bytes(path.read_bytes()[:300])
    save_checkpoint(tmp_path / "ws" / "res50_cam.pth", CAMNet(20, pretrained=None).state_dict())
    proc = subprocess.run([sys.executable, str(RUNNER), "--voc12_root", str(root), "--work_space",
                           str(tmp_path / "ws"), *SMALL, "--make_cam_pass", "True", "--skip_bad_images", "True"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = (tmp_path / "ws" / "skipped_images.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"make_cam\t{ids[0]}\t") and str(path) in listed[0]
    written = {p.stem for p in (tmp_path / "ws" / "cam_mask").glob("*.npz")}
    assert written == set(ids[1:])


def test_reference_pickled_cams_need_explicit_consent(root, tmp_path):
    ids = VOC12(root).split("train")
    (tmp_path / "ws" / "cam_mask").mkdir(parents=True)
    for image_id in ids:
        h, w = VOC12(root).load_gt(image_id).shape
        np.save(tmp_path / "ws" / "cam_mask" / f"{image_id}.npy",
                {"keys": np.array([0]), "cam": np.ones((1, h // 4, w // 4)), "high_res": np.ones((1, h, w))})
    msg = fails(root, tmp_path / "ws", "--eval_cam_pass", "True")
    assert "--allow_pickle_cams True" in msg
    proc = subprocess.run([sys.executable, str(RUNNER), "--voc12_root", str(root), "--work_space",
                           str(tmp_path / "ws"), *SMALL, "--eval_cam_pass", "True", "--allow_pickle_cams", "True"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "only do this for files you trust" in proc.stderr
    assert (tmp_path / "ws" / "results" / "eval_cam.json").is_file()


def test_unwritable_work_space_names_the_file(root, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the work space should go")
    msg = fails(root, blocker, "--train_cam_pass", "True")
    assert "cannot write or read" in msg and str(blocker) in msg and "finished outputs are kept" in msg
