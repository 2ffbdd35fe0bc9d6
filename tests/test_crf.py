import numpy as np
import pytest

from wavecam.labels.crf import crf_inference_label, crf_inference_labels


def scene():
    """Two flat-coloured objects on a grey background, with their exact label map."""
    rng = np.random.default_rng(0)
    img = np.full((48, 64, 3), 120, dtype=np.uint8)
    labels = np.zeros((48, 64), dtype=np.int64)
    img[8:30, 6:28] = (220, 40, 40)
    labels[8:30, 6:28] = 1
    img[20:44, 36:60] = (30, 60, 200)
    labels[20:44, 36:60] = 2
    img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    return img, labels


def test_clean_labels_mostly_unchanged_and_deterministic():
    img, labels = scene()
    out = crf_inference_label(img, labels, n_labels=3)
    assert out.shape == labels.shape
    assert (out == labels).mean() > 0.99
    np.testing.assert_array_equal(out, crf_inference_label(img, labels, n_labels=3))


def test_fixes_label_noise_along_colour_edges():
    img, labels = scene()
    noisy = labels.copy()
    noisy[8:30, 28:31] = 1  # the object label spills three pixels over the right edge
    out = crf_inference_label(img, noisy, n_labels=3)
    assert (out == labels).mean() > (noisy == labels).mean()


def test_views_are_read_correctly():
    img, labels = scene()
    flipped = img[:, ::-1]  # a strided view, not C-contiguous
    out = crf_inference_label(flipped, labels[:, ::-1], n_labels=3)
    np.testing.assert_array_equal(out, crf_inference_label(np.ascontiguousarray(flipped), labels[:, ::-1].copy(), 3))


def test_rejects_bad_inputs():
    img, labels = scene()
    with pytest.raises(ValueError, match="lie in"):
        crf_inference_label(img, labels + 1, n_labels=3)
    with pytest.raises(ValueError, match="uint8"):
        crf_inference_label(img.astype(np.float32), labels, n_labels=3)


def test_shared_pairwise_terms_give_what_separate_inferences_give():
    """cam_to_ir_label refines two seed maps per image with one lattice; each must equal its own CRF."""
    img, labels = scene()
    rng = np.random.default_rng(1)
    maps = [labels, np.where(rng.random(labels.shape) < 0.2, rng.integers(0, 3, labels.shape), labels),
            np.zeros_like(labels)]
    shared = crf_inference_labels(img, maps, n_labels=3)
    assert len(shared) == 3
    for m, out in zip(maps, shared):
        np.testing.assert_array_equal(out, crf_inference_label(img, m, n_labels=3))
    assert not np.array_equal(shared[0], shared[2])  # each map got its own unary
