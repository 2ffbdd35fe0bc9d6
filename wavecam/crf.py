"""Dense CRF refinement of a label map (pydensecrf2), with IRN's settings."""

from __future__ import annotations

import numpy as np

from wavecam.io import WavecamError


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
    dcrf, unary_from_labels = _densecrf()
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"img must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if labels.shape != img.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match img {img.shape[:2]}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels must lie in [0, {n_labels}), got {labels.min()}..{labels.max()}")

    h, w = labels.shape
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    # The C++ side reads the buffer raw: a view (crop, flip, BGR->RGB slice) would be read wrongly.
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(img), compat=10)
    q = np.asarray(crf.inference(t)).reshape(n_labels, h, w)
    return q.argmax(axis=0).astype(np.int64)
