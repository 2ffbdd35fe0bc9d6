"""Dense CRF refinement of a label map (pydensecrf2), with IRN's settings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wavecam.errors import WavecamError


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError as e:
        raise WavecamError(f"the dense CRF needs pydensecrf ({e}); install it with `pip install pydensecrf2`") from e
    return dcrf, unary_from_labels


def crf_inference_label(img: np.ndarray, labels: np.ndarray, n_labels: int, t: int = 10,
                        gt_prob: float = 0.7) -> np.ndarray:
    """Refine `labels` (H, W) ints in [0, n_labels) on `img` (H, W, 3) uint8 RGB; returns (H, W) int64.

    Every label, 0 included, is trusted with probability `gt_prob` (zero_unsure=False); pairwise
    terms are IRN's: Gaussian sxy 3 compat 3, bilateral sxy 50 srgb 5 compat 10; `t` mean-field steps.
    """
    (out,) = crf_inference_labels(img, [labels], n_labels, t, gt_prob)
    return out


def crf_inference_labels(img: np.ndarray, label_maps: Sequence[np.ndarray], n_labels: int, t: int = 10,
                         gt_prob: float = 0.7) -> list[np.ndarray]:
    """`crf_inference_label` of several label maps of one image, sharing the pairwise terms.

    Building the bilateral term's permutohedral lattice is most of one inference's cost
    (docs/benchmarks.md); it depends on the image only, so every map after the first costs the
    mean-field steps alone. The results equal separate calls exactly.
    """
    dcrf, unary_from_labels = _densecrf()
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"img must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    for labels in label_maps:
        if labels.shape != img.shape[:2]:
            raise ValueError(f"labels {labels.shape} do not match img {img.shape[:2]}")
        if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
            raise ValueError(f"labels must lie in [0, {n_labels}), got {labels.min()}..{labels.max()}")

    h, w = img.shape[:2]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.addPairwiseGaussian(sxy=3, compat=3)
    # The C++ side reads the buffer raw: a view (crop, flip, BGR->RGB slice) would be read wrongly.
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(img), compat=10)
    out = []
    for labels in label_maps:
        crf.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
        q = np.asarray(crf.inference(t)).reshape(n_labels, h, w)
        out.append(q.argmax(axis=0).astype(np.int64))
    return out


def crf_inference_prob(img: np.ndarray, probs: np.ndarray, t: int = 10, pos_xy_std: float = 3, pos_w: float = 3,
                       bi_xy_std: float = 64, bi_rgb_std: float = 5, bi_w: float = 4) -> np.ndarray:
    """Refine class probabilities `probs` (C, H, W) on `img` (H, W, 3) uint8 RGB; returns (C, H, W) float32.

    Unlike `crf_inference_label`, the unary is -log of the probabilities themselves. The defaults are the
    end-to-end segmenter's post-processing (AFA's test script): Gaussian sxy 3 compat 3, bilateral sxy 64
    srgb 5 compat 4, `t` mean-field steps.
    """
    dcrf, _ = _densecrf()
    from pydensecrf.utils import unary_from_softmax

    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"img must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != img.shape[:2]:
        raise ValueError(f"probs {probs.shape} must be (C, H, W) with H, W of img {img.shape[:2]}")

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(img), compat=bi_w)
    return np.asarray(crf.inference(t), dtype=np.float32).reshape(c, h, w)


# deeplab-pytorch's test-time CRF (configs/voc12.yaml and coco.yaml, section CRF; libs/utils/crf.py
# runs it on softmax probabilities, as `crf_inference_prob`).
DEEPLAB_CRF = {"t": 10, "pos_w": 3, "pos_xy_std": 1, "bi_w": 4, "bi_xy_std": 67, "bi_rgb_std": 3}
# The caffe-converted ResNets' BGR input mean: deeplab-pytorch's input convention (models.deeplab
# CAFFE_BGR) and the picture its CRF is handed.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)


def deeplab_reference_crf_image(img: np.ndarray) -> np.ndarray:
    """The picture deeplab-pytorch's `main.py crf` actually hands the CRF for an (H, W, 3) uint8 RGB
    image: its dataset item, BGR minus the caffe mean, cast back to uint8 (`image.astype(np.uint8)`).
    Values below the mean wrap around (-5.3 -> 251, numpy's cast on x86; other platforms may
    saturate), so each channel jumps by about 256 where it crosses its mean: edges that the image
    does not have, which the bilateral term sees. The channel order itself changes nothing (one
    colour std for all three)."""
    shifted = img[..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, np.float32)
    return np.ascontiguousarray(np.mod(np.trunc(shifted).astype(np.int64), 256).astype(np.uint8))


def crf_inference_deeplab(img: np.ndarray, probs: np.ndarray, reference_image: bool = True,
                          settings: dict | None = None) -> np.ndarray:
    """deeplab-pytorch's CRF of softmax `probs` (C, H, W) on `img` (H, W, 3) uint8 RGB; returns
    (C, H, W) float32. With `reference_image` (the default, what the reference computes) the
    bilateral term sees `deeplab_reference_crf_image(img)`; without, the image itself. `settings`
    replaces DEEPLAB_CRF (its keys)."""
    rgbim = deeplab_reference_crf_image(img) if reference_image else img
    return crf_inference_prob(rgbim, probs, **(settings or DEEPLAB_CRF))
