import math

import numpy as np
import pytest
import torch

from wavecam.labels.randomwalk import (
    PathIndex,
    _image_pairs,
    affinity_labels,
    downsample_label,
    edge_to_affinity,
    propagate,
    propagate_dense,
    rw_to_label,
    transition_stencil,
)


def brute_directions(radius):
    """Every offset strictly inside the radius, keeping one of each (d, -d) pair."""
    return {
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if 0 < math.hypot(dy, dx) < radius and (dy > 0 or (dy == 0 and dx > 0))
    }


def brute_path(dy, dx):
    """Grid points of the segment's bounding box closer than 1 to the line through it."""
    norm = math.hypot(dy, dx)
    return {
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if abs(dy * x - dx * y) / norm < 1
    }


@pytest.mark.parametrize("radius,size", [(2, (5, 6)), (3, (7, 9)), (5, (12, 14)), (10, (20, 24))])
def test_path_index_matches_brute_force(radius, size):
    pi = PathIndex(radius, size)
    h, w = size
    rf = radius - 1
    dirs = [tuple(d) for d in pi.search_dst]
    assert len(dirs) == len(set(dirs)) == pi.n_directions
    assert set(dirs) == brute_directions(radius)

    assert pi.src_indices.shape == ((h - rf) * (w - 2 * rf),)
    for d, (dy, dx) in enumerate(dirs):
        np.testing.assert_array_equal(pi.dst_indices[d], pi.src_indices + dy * w + dx)
    assert pi.dst_indices.min() >= 0 and pi.dst_indices.max() < h * w

    n_seen = 0
    for offsets, idx in zip(pi.search_paths, pi.path_indices):
        assert idx.shape == (offsets.shape[0], offsets.shape[1], pi.src_indices.size)
        for off, rows in zip(offsets, idx):
            dy, dx = off[0]
            assert {tuple(p) for p in off} == brute_path(dy, dx)
            np.testing.assert_array_equal(rows, pi.src_indices + (off[:, :1] * w + off[:, 1:]))
            n_seen += 1
    assert n_seen == pi.n_directions
    # grouped by path length, shortest first
    assert [p.shape[1] for p in pi.search_paths] == sorted({p.shape[1] for p in pi.search_paths})


def test_path_index_irn_direction_counts():
    # IRN trains with radius 10 and propagates with radius 5
    assert PathIndex(5, (20, 20)).n_directions == 34
    assert PathIndex(10, (40, 40)).n_directions == len(brute_directions(10))


def test_path_index_rejects_small_maps():
    with pytest.raises(ValueError, match="too small"):
        PathIndex(5, (4, 20))


def test_affinity_labels_on_hand_made_map():
    label = np.array([[9, 0, 1, 7],
                      [0, 255, 1, 1],
                      [2, 2, 1, 1]], dtype=np.uint8)
    pi = PathIndex(2, label.shape)
    # Radius 2: sources (0,1) (0,2) (1,1) (1,2); directions, length-2 paths first.
    assert [tuple(d) for d in pi.search_dst] == [(0, 1), (1, 0), (1, -1), (1, 1)]
    # b: background pair, f: same foreground class, n: different labels, -: touches 255
    expected = [
        "nn-f",  # (0, 1): 0|1, 1|7, 255|1, 1|1
        "-f-f",  # (1, 0): 0|255, 1|1, 255|2, 1|1
        "b--n",  # (1, -1): 0|0, 1|255, 255|2, 1|2
        "nf-f",  # (1, 1): 0|1, 1|1, 255|1, 1|1
    ]
    bg_pos, fg_pos, neg = affinity_labels(label, pi)
    got = np.full(bg_pos.shape, "-")
    got[bg_pos.numpy() == 1] = "b"
    got[fg_pos.numpy() == 1] = "f"
    got[neg.numpy() == 1] = "n"
    assert ["".join(row) for row in got] == expected
    assert ((bg_pos + fg_pos + neg) <= 1).all()
    assert bg_pos.dtype == torch.float32


def test_downsample_label_takes_centre_pixels():
    label = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(downsample_label(label, 4), label[2::4, 2::4])
    assert downsample_label(np.zeros((10, 13), np.uint8)).shape == (2, 3)


def test_edge_to_affinity_is_one_minus_max_on_path():
    pi = PathIndex(3, (6, 8))
    edge = torch.zeros(1, 6, 8)
    assert torch.equal(edge_to_affinity(edge, pi), torch.ones(1, pi.n_directions, pi.src_indices.size))
    edge[0, :, 4] = 0.9  # a vertical wall at column 4
    aff = edge_to_affinity(edge, pi)[0]
    src_x = pi.src_indices % 8
    for d, (_, dx) in enumerate(pi.search_dst):
        dst_x = src_x + dx
        crosses = (np.minimum(src_x, dst_x) <= 4) & (np.maximum(src_x, dst_x) >= 4)
        np.testing.assert_allclose(aff[d].numpy(), np.where(crosses, 0.1, 1.0), atol=1e-6)


def dense_transition(edge, beta, radius):
    """IRN's column-normalised transition matrix (h*w, h*w), float64, as propagate_dense builds it."""
    n = edge.numel()
    src, dst, aff = _image_pairs(edge.double(), radius)
    affinity = torch.eye(n, dtype=torch.float64)
    affinity[src, dst] = aff
    affinity[dst, src] = aff
    trans = affinity.pow(beta)
    return trans / trans.sum(dim=0, keepdim=True)


@pytest.mark.parametrize("radius,size", [(2, (5, 6)), (5, (9, 13)), (5, (3, 4)), (7, (15, 12))])
def test_stencil_holds_the_transition_matrix(radius, size):
    # Entry [R + dy, R + dx, y, x] is the step's weight of neighbour (y + dy, x + dx) in pixel
    # (y, x)'s new score: IRN's trans[(y + dy, x + dx), (y, x)], as x @ trans takes column (y, x).
    g = torch.Generator().manual_seed(radius)
    edge = (torch.rand(size, generator=g) ** 2).double()
    edge[0, -1] = 1.0
    stencil = transition_stencil(edge, beta=10, radius=radius)
    reach = radius - 1
    assert stencil.shape == (2 * reach + 1, 2 * reach + 1, *size) and stencil.dtype == torch.float64
    trans = dense_transition(edge, 10, radius)
    h, w = size
    expected = torch.zeros_like(stencil)
    for y in range(h):
        for x in range(w):
            for dy in range(-reach, reach + 1):
                for dx in range(-reach, reach + 1):
                    if 0 <= y + dy < h and 0 <= x + dx < w and dy * dy + dx * dx < radius**2:
                        expected[reach + dy, reach + dx, y, x] = trans[(y + dy) * w + x + dx, y * w + x]
    torch.testing.assert_close(stencil, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(stencil.sum(dim=(0, 1)), torch.ones(size, dtype=torch.float64))


@pytest.mark.parametrize("radius,size,exp_times", [(2, (6, 7), 5), (3, (9, 8), 6), (5, (13, 11), 6), (5, (4, 3), 3),
                                                   (5, (20, 31), 8), (10, (23, 21), 4), (5, (7, 9), 0)])
def test_stencil_walk_equals_dense_formula(radius, size, exp_times):
    g = torch.Generator().manual_seed(radius * 100 + size[0])
    cams = torch.rand(3, *size, generator=g)
    edge = torch.rand(size, generator=g) ** 2
    edge[0, 0], edge[-1, -1] = 1.0, 0.0  # saturated boundaries give zero / full affinity
    fast = propagate(cams, edge, beta=10, exp_times=exp_times, radius=radius)
    ref = propagate_dense(cams, edge, beta=10, exp_times=exp_times, radius=radius)
    assert fast.shape == cams.shape and fast.dtype == torch.float32
    rel = (fast.double() - ref).abs().max() / ref.abs().max()
    assert rel < 1e-4


def test_walk_over_threads_equals_one_thread():
    # On a CPU the classes are split over torch's threads; each class's arithmetic is unchanged.
    g = torch.Generator().manual_seed(3)
    cams, edge = torch.rand(3, 17, 23, generator=g), torch.rand(17, 23, generator=g) ** 2
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = propagate(cams, edge, exp_times=5)
        torch.set_num_threads(2)
        two = propagate(cams, edge, exp_times=5)
        assert torch.get_num_threads() == 2  # the walk gives the caller's setting back
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, two)


def test_walk_of_no_class():
    rw = propagate(torch.zeros(0, 6, 8), torch.rand(6, 8))
    assert rw.shape == (0, 6, 8) and rw.dtype == torch.float32


def test_walk_stays_inside_walls():
    # A closed wall splits the map: scores never cross it.
    cams = torch.zeros(1, 10, 10)
    cams[0, 2, 2] = 1.0
    edge = torch.zeros(10, 10)
    edge[:, 5] = 1.0
    rw = propagate(cams, edge, beta=10, exp_times=6, radius=5)
    assert rw[0, :, 5:].abs().max() < 1e-12
    assert rw[0, :, :5].min() > 0  # spread over the whole left part


def test_rw_to_label():
    rw = torch.zeros(2, 3, 4)
    rw[0, 0, 0] = 2.0  # strongest class at one corner
    rw[1, 2, 3] = 0.4  # 0.2 after normalisation: below the 0.25 background threshold
    label = rw_to_label(rw, keys=np.array([4, 11]), bg_thres=0.25, size=(10, 14))
    assert label.shape == (10, 14)
    assert label[0, 0] == 5 and label[9, 13] == 0
    assert set(np.unique(label)) <= {0, 5}
    assert (rw_to_label(rw, [4, 11], bg_thres=0.1, size=(10, 14))[9, 13]) == 12
    assert not rw_to_label(torch.zeros(0, 3, 4), [], 0.25, (10, 14)).any()
