"""Bad label maps and failed writes: every reader of a label map refuses values beyond the classes and
sizes other than its image's, naming the file; every writer names its target when the disk is full
or the path cannot be written. The front door's side: one `error:` line, exit code 2, no traceback."""

import errno
import os
import pickle
import shutil
import subprocess
import sys
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fails_in_one_line

from wavecam.data.voc import VOC12
from wavecam.engine.cli import run_cli
from wavecam.errors import BadFileError, WriteError
from wavecam.io import check_label_map, save_cam, save_checkpoint, save_json, save_npz, save_png
from wavecam.models import CAMNet

RUNNER = Path(__file__).resolve().parents[1] / "multi_stage" / "run_wavecam_voc.py"
TINY = ("--pretrained none --num_workers 0 --seg_pretrained none --seg_block basic --seg_n_blocks 1 1 1 1 "
        "--seg_crop_size 32 --seg_batch_size 2 --seg_iter_size 1 --seg_num_iters 2 --seg_scales 1.0 "
        "--irn_crop_size 64 --irn_batch_size 2 --irn_num_epoches 1 --irn_path_radius 5").split()


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


def id_list(ws: Path, ids: list[str]) -> str:
    path = ws / "ids.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


# --- the front door, on each reader of a label map -----------------------------------------------

@dataclass
class Case:
    """`write(root, ws)` puts the bad input in place and returns (the flags of the run, the files the
    message may name: training reads its labels in a random order); the message holds every one of
    `says`, with `{h}x{w}` the size of the named file's image and `{n}` its pixels."""

    id: str
    write: object
    says: tuple[str, ...]
    flags: list[str] = field(default_factory=list)


def pseudo_labels(make):
    def write(root, ws):
        source = VOC12(root)
        ids = source.split("train")[:2]
        files = [ws / "sem_seg" / f"{i}.png" for i in ids]
        for i, path in zip(ids, files):
            save_png(path, make(source.load_image(i).shape[:2]))
        return ["--seg_train_list", id_list(ws, ids), "--train_seg_pass", "True"], files
    return write


def ir_labels(root, ws):
    source = VOC12(root)
    ids = source.split("train")[:2]
    files = [ws / "ir_label" / f"{i}.png" for i in ids]
    for i, path in zip(ids, files):
        save_png(path, patch_of_50(source.load_image(i).shape[:2]))
    save_checkpoint(ws / "res50_cam.pth", CAMNet(20, pretrained=None).state_dict())  # IRN's backbone
    return ["--train_list", id_list(ws, ids), "--train_irn_pass", "True"], files


def sem_seg_at_eval(root, ws):
    image_id = VOC12(root).split("val")[0]
    path = ws / "sem_seg" / f"{image_id}.png"
    save_png(path, patch_of_50(VOC12(root).load_gt(image_id).shape))
    return ["--chainer_eval_set", id_list(ws, [image_id]), "--eval_sem_seg_pass", "True"], [path]


def seg_prediction(make):
    def write(root, ws):
        image_id = VOC12(root).split("val")[0]
        path = ws / "seg_pred" / "val" / f"{image_id}.png"
        save_png(path, make(VOC12(root).load_gt(image_id).shape))
        return ["--seg_eval_set", "val", "--seg_crf", "False", "--eval_seg_pass", "True"], [path]
    return write


def cams_of_another_size(root, ws):
    image_id = VOC12(root).split("val")[0]
    path = ws / "cam_mask" / f"{image_id}.npz"
    save_cam(path, np.array([0]), np.ones((1, 3, 3)), np.ones((1, 10, 12)))
    return ["--chainer_eval_set", id_list(ws, [image_id]), "--eval_cam_pass", "True"], [path]


def ground_truth(root, ws):
    source = VOC12(root)
    image_id = source.split("val")[0]
    mask = source.mask_path(image_id)
    shape = source.load_gt(image_id).shape
    save_png(mask, patch_of_50(shape), palette=True)  # as VOC's own masks are stored
    save_png(ws / "sem_seg" / f"{image_id}.png", np.zeros(shape, np.uint8))
    return ["--chainer_eval_set", id_list(ws, [image_id]), "--eval_sem_seg_pass", "True"], [mask]


CASES = [
    Case("pseudo-label-patch-train-seg", pseudo_labels(patch_of_50),
         ("pseudo label", "value 50 at 100 pixels is not a label", "1..20 classes", "--make_sem_seg_pass")),
    Case("pseudo-label-all-50-train-seg", pseudo_labels(all_50),
         ("pseudo label", "value 50 at {n} pixels", "255 ignore", "--make_sem_seg_pass")),
    Case("pseudo-label-wrong-size-train-seg", pseudo_labels(ten_by_twelve),
         ("pseudo label", "is 10x12 but its image is {h}x{w}", "--make_sem_seg_pass")),
    Case("pseudo-label-read-in-a-loader-worker", pseudo_labels(patch_of_50),
         ("pseudo label", "value 50 at 100 pixels"), ["--num_workers", "1"]),
    Case("ir-label-train-irn", ir_labels, ("ir_label", "value 50 at 100 pixels", "--cam_to_ir_label_pass")),
    Case("sem-seg-eval-sem-seg", sem_seg_at_eval, ("pseudo label", "value 50 at 100 pixels", "--make_sem_seg_pass")),
    Case("seg-pred-eval-seg", seg_prediction(patch_of_50), ("prediction", "value 50 at 100 pixels", "--make_seg_pass")),
    Case("seg-pred-ignore-eval-seg", seg_prediction(patch_of_255),
         ("prediction", "value 255 at 100 pixels", "(valid: 0 background, 1..20 classes)")),
    Case("seg-pred-wrong-size-eval-seg", seg_prediction(ten_by_twelve),
         ("prediction", "is 10x12 but its ground truth is {h}x{w}", "--make_seg_pass")),
    Case("cams-wrong-size-eval-cam", cams_of_another_size, ("CAMs", "are 10x12 but its ground truth is {h}x{w}")),
    Case("ground-truth-eval-sem-seg", ground_truth, ("ground truth", "value 50 at 100 pixels", "check the dataset")),
]


@pytest.fixture
def root(voc_root, tmp_path):
    copy = tmp_path / "voc"
    shutil.copytree(voc_root, copy)
    return copy


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_front_door_refuses_a_bad_label_map_naming_it(case, root, tmp_path):
    ws = tmp_path / "ws"
    flags, files = case.write(root, ws)
    msg = fails_in_one_line([sys.executable, str(RUNNER), "--voc12_root", str(root), "--work_space", str(ws),
                             *TINY, *case.flags, *flags], env={**os.environ, "OMP_NUM_THREADS": "1"})
    named = [f for f in files if str(f) in msg]
    assert named, msg
    h, w = VOC12(root).load_image(named[0].stem).shape[:2]  # every file here is named for its image
    for part in case.says:
        assert part.format(h=h, w=w, n=h * w) in msg, msg


# --- the library's check, on arrays ----------------------------------------------------------------

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


# --- writers: a full disk, a path that cannot be made ----------------------------------------------

TORCH_FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
Usage = namedtuple("Usage", "total used free")


def torch_save_failing_with(error):
    def save(obj, path):
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
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
