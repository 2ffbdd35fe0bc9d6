import numpy as np
import pytest

from wavecam.classes import VOC_CLASSES
from wavecam.metrics import ConfusionMatrix, calc_semantic_segmentation_confusion, format_iou_table, iou_from_confusion


def reference_confusion(preds, gts):
    """chainercv's definition, pixel by pixel: -1 (and VOC's 255, which chainercv reads as -1)
    in the ground truth are ignored; the matrix grows to the largest label seen."""
    n = 0
    for p, g in zip(preds, gts):
        g = np.where(g == 255, -1, g)
        n = max(n, int(p.max()) + 1, int(g.max()) + 1)
    conf = np.zeros((n, n), dtype=np.int64)
    for p, g in zip(preds, gts):
        for pv, gv in zip(p.ravel(), g.ravel()):
            if gv == 255 or gv < 0:
                continue
            conf[gv, pv] += 1
    return conf


def reference_iou(conf):
    out = []
    for c in range(conf.shape[0]):
        tp = conf[c, c]
        denom = conf[c, :].sum() + conf[:, c].sum() - tp
        out.append(np.nan if denom == 0 else tp / denom)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_iou_match_chainercv_definition(seed):
    rng = np.random.default_rng(seed)
    n_class = 8
    preds, gts = [], []
    for _ in range(4):
        h, w = rng.integers(5, 30, size=2)
        # Classes 5 and 6 never occur: their IoU must be NaN and must not lower the mIoU.
        choices = np.array([0, 1, 2, 3, 4, 7])
        g = rng.choice(choices, size=(h, w))
        p = rng.choice(choices, size=(h, w))
        g[rng.random((h, w)) < 0.1] = 255
        g[rng.random((h, w)) < 0.05] = -1
        preds.append(p)
        gts.append(g)
    ref = reference_confusion(preds, gts)
    ours = calc_semantic_segmentation_confusion(preds, gts)
    np.testing.assert_array_equal(ours, ref)

    cm = ConfusionMatrix(n_class)
    for p, g in zip(preds, gts):
        cm.update(p, g)
    np.testing.assert_array_equal(cm.mat, ref)
    iou = cm.iou()
    np.testing.assert_allclose(iou, reference_iou(ref), equal_nan=True)
    assert np.isnan(iou[5]) and np.isnan(iou[6])
    assert cm.miou() == pytest.approx(np.nanmean(reference_iou(ref)))
    assert cm.n_images == 4


def test_prediction_at_ignored_pixels_is_not_counted():
    gt = np.array([[0, 255], [1, 1]])
    pred = np.array([[0, 1], [1, 0]])
    mat = calc_semantic_segmentation_confusion([pred], [gt], n_class=2)
    np.testing.assert_array_equal(mat, [[1, 0], [1, 1]])
    np.testing.assert_allclose(iou_from_confusion(mat), [0.5, 0.5])


def test_out_of_range_and_shape_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([[5]]), np.array([[1]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_merge_equals_single_stream():
    rng = np.random.default_rng(3)
    a, b, whole = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    for i in range(6):
        p, g = rng.integers(0, 4, (7, 9)), rng.integers(0, 4, (7, 9))
        (a if i % 2 else b).update(p, g)
        whole.update(p, g)
    a.merge(b)
    np.testing.assert_array_equal(a.mat, whole.mat)
    assert a.n_images == 6


def test_summary_and_table():
    cm = ConfusionMatrix(21)
    gt = np.arange(21).reshape(3, 7)
    cm.update(gt, gt)
    s = cm.summary()
    assert s["miou"] == 1.0 and len(s["iou"]) == 21 and s["n_images"] == 1
    table = format_iou_table(s["iou"], VOC_CLASSES, title="seeds")
    assert "tvmonitor" in table and table.splitlines()[-1].endswith("100.0")


@pytest.mark.parametrize("seed", [0, 1])
def test_uint8_fast_path_equals_the_general_one(seed):
    """PNG label maps (uint8) take a 16-bit bincount; it must count exactly what int64 inputs count,
    255 ignored, and refuse the same out-of-range labels."""
    rng = np.random.default_rng(seed)
    fast, general = ConfusionMatrix(21), ConfusionMatrix(21)
    for _ in range(5):
        g = rng.integers(0, 21, (37, 53)).astype(np.uint8)
        g[rng.random(g.shape) < 0.1] = 255
        p = rng.integers(0, 21, g.shape).astype(np.uint8)
        p[g == 255] = 250  # a prediction under an ignored pixel is never counted, whatever its value
        fast.update(p, g)
        general.update(p.astype(np.int64), g.astype(np.int64))
    np.testing.assert_array_equal(fast.mat, general.mat)
    assert fast.n_images == general.n_images == 5
    for bad_pred, bad_gt in ((21, 3), (3, 40)):
        with pytest.raises(ValueError, match="outside"):
            fast.update(np.full((2, 2), bad_pred, np.uint8), np.full((2, 2), bad_gt, np.uint8))
    assert fast.n_images == 5
