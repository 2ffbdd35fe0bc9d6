"""End-to-end training crops against a re-derivation of AFA's loader (datasets/voc.py VOC12ClsDataset
with datasets/transforms.py: random_scaling, random_fliplr, random_crop, normalize_img)."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from wavecam.data import transforms as T
from wavecam.data.datasets import E2ETrainDataset
from wavecam.engine.sampling import SampleKey

AFA_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
AFA_STD = np.array([58.395, 57.12, 57.375], np.float32)


def afa_crop(image: np.ndarray, scale: float, flip: bool, crop: int, h_pad: int, w_pad: int, h_start: int,
             w_start: int) -> tuple[np.ndarray, list[int]]:
    """AFA's training transform with its random draws given: PIL bilinear to (int(scale * w),
    int(scale * h)) as float32; the mirror image if `flip`; a float canvas of zeros max(crop, h) x
    max(crop, w) with the image at (h_pad, w_pad); the crop x crop window at (h_start, w_start);
    then (x - mean) / std with means and deviations on the 0..255 scale. Returns the CHW crop and
    its img_box [y0, y1, x0, x1] as AFA computes it (ends in canvas coordinates)."""
    h, w = image.shape[:2]
    img = np.asarray(Image.fromarray(image).resize((int(scale * w), int(scale * h)), Image.BILINEAR))
    img = img.astype(np.float32)
    if flip:
        img = np.fliplr(img)
    h, w = img.shape[:2]
    canvas = np.zeros((max(crop, h), max(crop, w), 3), np.float32)
    canvas[h_pad:h_pad + h, w_pad:w_pad + w] = img
    out = canvas[h_start:h_start + crop, w_start:w_start + crop]
    box = [max(h_pad - h_start, 0), min(h_start + crop, h_pad + h),
           max(w_pad - w_start, 0), min(w_start + crop, w_pad + w)]
    return ((out - AFA_MEAN) / AFA_STD).transpose(2, 0, 1), box


class OneImage:
    num_classes = 20

    def __init__(self, image: np.ndarray):
        self.image = image

    def load_image(self, image_id: str) -> np.ndarray:
        return self.image

    def labels(self, ids: list[str]) -> np.ndarray:
        return np.zeros((len(ids), 20), np.float32)


@pytest.mark.parametrize("shape", [(13, 29), (30, 11)])
def test_crops_are_afas(shape):
    """Each crop (13 x 29 at scale 1.3 is 16 x 37: padded along one axis, cropped along the other) is
    the one AFA's transform gives for one of its possible draws, to float32 rounding of the two ways
    of normalising, and its img_box selects the same pixels. The padding is black before
    normalisation, -mean/std after."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
    crop, scale = 24, 1.3
    dataset = E2ETrainDataset(OneImage(image), ["x"], crop, (scale, scale))
    h, w = int(scale * shape[0]), int(scale * shape[1])
    H, W = max(crop, h), max(crop, w)
    draws = list(itertools.product((False, True), range(H - h + 1), range(W - w + 1), range(H - crop + 1),
                                   range(W - crop + 1)))
    seen = set()
    for seed in range(12):
        item = dataset[SampleKey(0, seed)]
        ours = item["img"].numpy()
        matches = [d for d in draws if np.allclose(afa_crop(image, scale, *d[:1], crop, *d[1:])[0], ours, atol=2e-5)]
        assert len(matches) == 1, (seed, len(matches))
        _, box = afa_crop(image, scale, matches[0][0], crop, *matches[0][1:])
        y0, y1, x0, x1 = item["img_box"].tolist()
        assert (y0, min(y1, crop), x0, min(x1, crop)) == (box[0], min(box[1], crop), box[2], min(box[3], crop))
        outside = np.ones((crop, crop), bool)
        outside[y0:y1, x0:x1] = False
        black = (-AFA_MEAN / AFA_STD)[:, None]
        assert outside.any() and np.allclose(ours[:, outside], black, atol=1e-5)
        seen.add(matches[0])
    assert {flip for flip, *_ in seen} == {False, True}


def test_truncating_bilinear_rescale_is_pils_at_afas_size():
    image = np.random.default_rng(1).integers(0, 256, (13, 29, 3)).astype(np.uint8)
    out = T.truncating_bilinear_rescale(image, 1.3)
    assert out.shape == (16, 37, 3)  # int(), where `rescale` rounds to 17 x 38
    assert T.rescale(image, 1.3).shape == (17, 38, 3)
    assert np.array_equal(out, np.asarray(Image.fromarray(image).resize((37, 16), Image.BILINEAR)))


def test_the_previous_crops_remain_options():
    image = np.random.default_rng(2).integers(0, 256, (13, 29, 3)).astype(np.uint8)
    torch.manual_seed(0)
    item = E2ETrainDataset(OneImage(image), ["x"], 24, (1.3, 1.3), resample="cv2_bicubic", pad="mean")[0]
    y0, y1, x0, x1 = item["img_box"].tolist()
    assert (y1 - y0, x1 - x0) == (17, 24)  # cv2 to the rounded size 17 x 38
    outside = np.ones((24, 24), bool)
    outside[y0:y1, x0:x1] = False
    assert np.all(item["img"].numpy()[:, outside] == 0)  # the mean colour once normalised
    with pytest.raises(ValueError, match="pad"):
        E2ETrainDataset(OneImage(image), ["x"], 24, pad="grey")
