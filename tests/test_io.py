import os
import pickle
import stat

import numpy as np
import pytest
import torch

from wavecam.errors import BadFileError
from wavecam.io import atomic_path, load_cam, load_checkpoint, load_npz, save_cam, save_checkpoint


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_outputs_get_the_usual_permissions(tmp_path):
    save_checkpoint(tmp_path / "w.pth", {"a": torch.zeros(1)})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "w.pth").stat().st_mode) == 0o666 & ~mask


class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["WAVECAM_PWNED"],))


def test_checkpoint_that_runs_code_is_refused(tmp_path, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("WAVECAM_PWNED", str(flag))
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": Payload()}, f)
    torch.save({"w": torch.zeros(1), "x": Payload()}, tmp_path / "evil2.pth")
    for path in (evil, tmp_path / "evil2.pth"):
        with pytest.raises(BadFileError, match="refused: it holds Python objects"):
            load_checkpoint(path)
    assert not flag.exists(), "unpickling must never run code"


def test_pickled_npz_is_refused(tmp_path):
    np.save(tmp_path / "cams.npy", {"keys": np.arange(2)}, allow_pickle=True)
    with pytest.raises(BadFileError):
        load_npz(tmp_path / "cams.npy")


def test_cam_file_round_trip_and_wrong_format(tmp_path):
    keys, cam, hr = np.array([3, 7]), np.random.rand(2, 4, 5), np.random.rand(2, 13, 17)
    save_cam(tmp_path / "a.npz", keys, cam, hr)
    back = load_cam(tmp_path / "a.npz")
    assert back["keys"].dtype == np.int64 and back["cam"].dtype == np.float32
    np.testing.assert_allclose(back["high_res"], hr.astype(np.float32))
    np.savez(tmp_path / "b.npz", cams=cam)
    with pytest.raises(BadFileError, match="not a cam_mask file"):
        load_cam(tmp_path / "b.npz")


def test_label_png_reads_back_as_indices_everywhere(tmp_path):
    """The reference's own readers (imageio in ReCAM/IRN, cv2 in many segmentation loaders) must get
    the class indices: a palette PNG would give them colours or luminance instead."""
    import cv2
    import imageio.v2 as imageio
    from PIL import Image

    from wavecam.io import load_png, save_png

    label = np.arange(256, dtype=np.uint8).reshape(16, 16)
    label[0, :3] = (0, 1, 15)
    save_png(tmp_path / "l.png", label)
    with Image.open(tmp_path / "l.png") as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), label)
    np.testing.assert_array_equal(imageio.imread(tmp_path / "l.png"), label)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "l.png"), cv2.IMREAD_GRAYSCALE), label)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "l.png"), cv2.IMREAD_UNCHANGED), label)
    np.testing.assert_array_equal(load_png(tmp_path / "l.png"), label)

    # the coloured variant is for pictures; our own reader still sees indices in it
    save_png(tmp_path / "p.png", label, palette=True)
    np.testing.assert_array_equal(load_png(tmp_path / "p.png"), label)
    assert cv2.imread(str(tmp_path / "p.png"), cv2.IMREAD_GRAYSCALE)[0, 1] != 1
