"""IRN's inter-pixel relations: path indices, affinity labels, and random-walk propagation.

Pixels are related to every neighbour within `radius` (in feature pixels, stride 4). A pair's
affinity is 1 - (the strongest class boundary on the straight path between them); the random
walk spreads CAM scores along high-affinity pairs, so they fill objects and stop at boundaries.

Only half of the neighbourhood is searched (dy > 0, or dy == 0 and dx > 0): a pair and its
reverse are the same pair. Directions are ordered as IRN orders them (grouped by path length,
then raster order), so every per-direction tensor here lines up with IRN's.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wavecam.classes import IGNORE_INDEX
from wavecam.labels.cam import channel_classes, threshold_channels


def search_directions(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) to every neighbour strictly inside `radius`, one of each +/- pair."""
    dirs = [(0, dx) for dx in range(1, radius)]
    dirs += [(dy, dx) for dy in range(1, radius) for dx in range(1 - radius, radius) if dy * dy + dx * dx < radius**2]
    return dirs


def path_coords(dy: int, dx: int) -> list[tuple[int, int]]:
    """Grid points within distance 1 of the segment (0, 0) -> (dy, dx), farthest (the destination) first."""
    length_sq = dy * dy + dx * dx
    pts = [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        # squared distance of (y, x) to the line is (dy*x - dx*y)^2 / length_sq; kept in integers
        if (dy * x - dx * y) ** 2 < length_sq
    ]
    pts.sort(key=lambda p: -(abs(p[0]) + abs(p[1])))  # stable: ties keep raster order, as IRN
    return pts


class PathIndex:
    """Pixel pairs and the paths between them on an (H, W) feature map, as flat indices.

    Sources are the pixels of the map cropped by `radius_floor` at the bottom, left and right,
    so every destination `source + (dy, dx)` stays on the map.

    Attributes:
        search_paths: per path length, (n_dirs, length, 2) int64 offsets (dy, dx), destination first.
        search_dst: (D, 2) the D directions, in the order of every per-direction tensor.
        path_indices: per path length, (n_dirs, length, S) int64 flat indices of the path points.
        src_indices: (S,) flat indices of the sources.
        dst_indices: (D, S) flat indices of the destinations.
    """

    def __init__(self, radius: int, feature_size: Sequence[int]):
        if int(radius) != radius or radius < 2:
            raise ValueError(f"radius must be an integer >= 2, got {radius}")
        self.radius = int(radius)
        self.radius_floor = self.radius - 1
        self.feature_size = (int(feature_size[0]), int(feature_size[1]))
        height, width = self.feature_size
        crop_h, crop_w = height - self.radius_floor, width - 2 * self.radius_floor
        if crop_h < 1 or crop_w < 1:
            raise ValueError(f"feature size {self.feature_size} is too small for radius {radius}")

        by_length: dict[int, list[list[tuple[int, int]]]] = {}
        for d in search_directions(self.radius):
            pts = path_coords(*d)
            by_length.setdefault(len(pts), []).append(pts)
        self.search_paths = [np.asarray(by_length[n], dtype=np.int64) for n in sorted(by_length)]
        self.search_dst = np.concatenate([p[:, 0] for p in self.search_paths])

        rows = np.arange(crop_h)[:, None]
        cols = np.arange(self.radius_floor, self.radius_floor + crop_w)[None, :]
        self.src_indices = (rows * width + cols).reshape(-1)
        self.path_indices = [
            self.src_indices + (p[..., 0] * width + p[..., 1])[..., None] for p in self.search_paths
        ]
        self.dst_indices = np.concatenate([p[:, 0] for p in self.path_indices])

    @property
    def n_directions(self) -> int:
        return len(self.search_dst)


def downsample_label(label: np.ndarray, stride: int = 4) -> np.ndarray:
    """Nearest-neighbour reduction of an ir_label crop to feature resolution (PIL, as IRN)."""
    h, w = label.shape
    size = (int(np.round(w / stride)), int(np.round(h / stride)))
    return np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))


def affinity_labels(label: np.ndarray, path_index: PathIndex) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IRN's pair labels from an ir_label map at feature resolution (0 bg, 1.. class, 255 unsure).

    Returns (bg_pos, fg_pos, neg), each (D, S) float32: same-label background pairs, same-label
    foreground pairs, and different-label pairs. Pairs touching an unsure pixel are in none.
    """
    if label.shape != path_index.feature_size:
        raise ValueError(f"label {label.shape} does not match the path index size {path_index.feature_size}")
    flat = label.reshape(-1)
    src = flat[path_index.src_indices][None, :]  # (1, S)
    dst = flat[path_index.dst_indices]  # (D, S)
    valid = (src != IGNORE_INDEX) & (dst != IGNORE_INDEX)
    same = (src == dst) & valid
    bg_pos = same & (src == 0)
    fg_pos = same & (src != 0)
    neg = ~same & valid
    return tuple(torch.from_numpy(m.astype(np.float32)) for m in (bg_pos, fg_pos, neg))


def edge_to_affinity(edge: torch.Tensor, path_index: PathIndex | Sequence[torch.Tensor]) -> torch.Tensor:
    """Boundary probabilities (B, H, W) or (B, 1, H, W) -> pair affinities (B, D, S).

    `path_index` may also be its `path_indices` as tensors already on the right device.
    """
    paths = path_index.path_indices if isinstance(path_index, PathIndex) else path_index
    flat = edge.reshape(edge.shape[0], -1)
    affs = []
    for idx in paths:
        idx = torch.as_tensor(idx, device=edge.device)
        on_path = flat[:, idx]  # (B, n_dirs, length, S)
        affs.append(1 - on_path.max(dim=2).values)
    return torch.cat(affs, dim=1)


def _image_pairs(edge: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs of pixels of an (h, w) map within `radius`, with their affinities.

    IRN pads the map by `radius` (left, right, bottom) so the cropped source grid covers every
    pixel, then drops pairs that reach into the padding. Returns flat (h*w) indices src, dst and
    their affinity, each (P,).
    """
    h, w = edge.shape
    padded = F.pad(edge, (radius, radius, 0, radius), value=1.0)
    pi = PathIndex(radius, padded.shape)
    aff = edge_to_affinity(padded[None], pi)[0].reshape(-1)  # (D*S,)

    width = padded.shape[1]
    src = np.broadcast_to(pi.src_indices, pi.dst_indices.shape).reshape(-1)
    dst = pi.dst_indices.reshape(-1)
    (sy, sx), (dy, dx) = np.divmod(src, width), np.divmod(dst, width)
    sx, dx = sx - radius, dx - radius
    inside = (sy < h) & (sx >= 0) & (sx < w) & (dy < h) & (dx >= 0) & (dx < w)
    to_t = lambda a: torch.from_numpy(a[inside]).to(edge.device)
    return to_t(sy * w + sx), to_t(dy * w + dx), aff[torch.from_numpy(inside).to(edge.device)]


def _check_inputs(cams: torch.Tensor, edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cams, edge = torch.as_tensor(cams), torch.as_tensor(edge)
    if edge.ndim != 2 or cams.ndim != 3 or cams.shape[1:] != edge.shape:
        raise ValueError(f"expected cams (K, h, w) and edge (h, w), got {tuple(cams.shape)} and {tuple(edge.shape)}")
    return cams, edge.to(cams.device, torch.float32)


def propagate(cams, edge, beta: float = 10, exp_times: int = 8, radius: int = 5) -> torch.Tensor:
    """IRN's random walk: (K, h, w) scores -> (K, h, w) float32 after 2**exp_times transition steps.

    Scores are first damped on boundaries (times 1 - edge), as IRN does. Equal to
    `propagate_dense`, which raises the (h*w)^2 transition matrix to the power 2**exp_times by
    repeated squaring; here the same matrix is applied to the scores 2**exp_times times as a
    stencil (`transition_stencil`), which is the same product T^(2^k) x at a fraction of the cost.

    float64 throughout: each step sums ~70 positive terms per pixel, and in float32 the smallest
    are rounded away more often than not, a loss that grows with the steps (3e-5 relative at
    exp_times=8 on a VOC-sized map, against a 1e-4 tolerance); float64 costs about twice the time.

    On a CPU the classes are split over the caller's torch threads (torch.get_num_threads()):
    each group walks on its own Python thread with single-threaded torch ops, which release the GIL.
    The groups never wait for each other, so a core taken by another process slows the walk
    down without stalling it, unlike intra-op threads (see `_one_cpu_thread`).
    """
    cams, edge = _check_inputs(cams, edge)
    groups = max(1, min(cams.shape[0], torch.get_num_threads())) if cams.device.type == "cpu" else 1
    with _one_cpu_thread(cams.device):
        edge = edge.double()
        layout = _FlatStencil(transition_stencil(edge, beta, radius))
        scores = (cams.double() * (1 - edge)).tensor_split(groups)

        def walk(x: torch.Tensor) -> torch.Tensor:
            return _StencilWalk(layout, x.shape[0]).run(x, 2**exp_times)

        if groups == 1:
            return walk(scores[0]).float()
        with ThreadPoolExecutor(groups) as pool:
            return torch.cat(list(pool.map(walk, scores))).float()


def transition_stencil(edge: torch.Tensor, beta: float, radius: int = 5) -> torch.Tensor:
    """One random-walk step as per-pixel weights on the (2r-1) x (2r-1) neighbourhood, r = radius.

    edge (h, w) -> W (2r-1, 2r-1, h, w), dtype of `edge`: W[R + dy, R + dx, y, x] = T[(y, x),
    (y + dy, x + dx)] with R = r - 1, where T = D^-1 A is IRN's transition matrix transposed: A holds
    affinity^beta of both directions of each pair and ones on the diagonal, D its row sums (A is
    symmetric, so IRN's column normalisation of A is this row normalisation seen from the other
    side). Offsets outside the radius, and neighbours off the map, have weight 0.
    """
    h, w = edge.shape
    reach = radius - 1
    # IRN pads with 1 (a wall): a pair whose far end is off the map gets affinity 0, as if dropped.
    padded = F.pad(edge, (reach, reach, 0, reach), value=1.0)
    size = 2 * reach + 1
    aff = edge.new_zeros(size, size, h + 2 * reach, w + 2 * reach)  # a margin for the mirrored half
    aff[reach, reach, reach:reach + h, reach:reach + w] = 1.0  # the self-loop
    for dy, dx in search_directions(radius):
        on_path = torch.stack([padded[py:py + h, reach + px:reach + px + w] for py, px in path_coords(dy, dx)])
        forward = (1 - on_path.amax(dim=0)).pow(beta)  # (h, w): pixel p to p + d
        aff[reach + dy, reach + dx, reach:reach + h, reach:reach + w] = forward
        # The same pair seen from p + d, so A is symmetric by construction.
        aff[reach - dy, reach - dx, reach + dy:reach + dy + h, reach + dx:reach + dx + w] = forward
    aff = aff[..., reach:reach + h, reach:reach + w]
    return aff / aff.sum(dim=(0, 1))


class _FlatStencil:
    """A `transition_stencil` laid out for `_StencilWalk`, read-only, shared by its walks.

    Scores live in a flat buffer of rows of length w + R (R zero columns after each row) with R
    rows plus R columns of zeros before and after, so every neighbour (y + dy, x + dx) of the map
    is the flat index i + dy * (w + R) + dx and a shift of the whole map is a slice. `rows` holds,
    per row dy of the neighbourhood, the weights (2s+1, 1, n) of its offsets (dy, -s..s) over the
    n = h * (w + R) flat pixels, zero on the gap columns (so the gaps stay zero step after step).
    """

    def __init__(self, stencil: torch.Tensor):
        size, _, self.h, self.w = stencil.shape
        self.reach = reach = size // 2
        self.row = self.w + reach
        self.n = self.h * self.row
        self.lead = reach * self.row + reach  # buffer index of pixel (0, 0)
        flat = F.pad(stencil, (0, reach)).reshape(size, size, 1, self.n)
        spans = {dy: _row_span(reach + 1, dy) for dy in range(-reach, reach + 1)}
        self.rows = [(dy, span, flat[reach + dy, reach - span:reach + span + 1].contiguous())
                     for dy, span in sorted(spans.items(), key=lambda item: -item[1])]  # full width first


class _StencilWalk:
    """Applies a `_FlatStencil` to (K, h, w) scores, one step at a time.

    Per step: for each row dy of the neighbourhood, its 2s+1 offsets as one strided view
    (2s+1, K, n) of the buffer, multiplied by their weights and accumulated into a (2R+1, K, n)
    sum, one slot per dx; then one sum over dx. Ten large operations per step instead of one per
    offset, each bound once to its views: a torch call costs microseconds, and there are
    2**exp_times steps.
    """

    def __init__(self, layout: _FlatStencil, n_classes: int):
        self.layout = layout
        reach, n = layout.reach, layout.n
        self.buffers = [layout.rows[0][2].new_zeros(n_classes, layout.lead + n + layout.lead) for _ in range(2)]
        acc = layout.rows[0][2].new_empty(2 * reach + 1, n_classes, n)
        ops = [[], []]  # per step parity: buffers[0] -> buffers[1], then back
        for parity, (src, dst) in enumerate((self.buffers, self.buffers[::-1])):
            for i, (dy, span, weights) in enumerate(layout.rows):
                shifted = src.as_strided((2 * span + 1, n_classes, n), (1, src.stride(0), 1),
                                         src.storage_offset() + layout.lead + dy * layout.row - span)
                slots = acc[reach - span:reach + span + 1]
                # The full-width row writes every slot, the others add to theirs.
                ops[parity].append(functools.partial(torch.mul, weights, shifted, out=slots) if i == 0 else
                                   functools.partial(slots.addcmul_, weights, shifted))
            ops[parity].append(functools.partial(torch.sum, acc, 0, out=self._interior(dst)))
        self.ops = ops

    def _interior(self, buffer: torch.Tensor) -> torch.Tensor:
        """(K, h * (w + R)) the map's rows with their gap columns."""
        return buffer[:, self.layout.lead:self.layout.lead + self.layout.n]

    def run(self, scores: torch.Tensor, steps: int) -> torch.Tensor:
        """(K, h, w) -> (K, h, w) after `steps` steps."""
        k, h, w = scores.shape[0], self.layout.h, self.layout.w
        self._interior(self.buffers[0]).view(k, h, self.layout.row)[..., :w] = scores
        for i in range(steps):
            for op in self.ops[i % 2]:
                op()
        return self._interior(self.buffers[steps % 2]).view(k, h, self.layout.row)[..., :w].clone()


def _row_span(radius: int, dy: int) -> int:
    """Largest |dx| with dy^2 + dx^2 < radius^2."""
    return max(dx for dx in range(radius) if dy * dy + dx * dx < radius * radius)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    # Every op here is small (a step is a few MB of memory traffic): intra-op threads gain little,
    # while thousands of thread barriers in a row stall badly when the cores are shared (over 10x
    # slower measured on a loaded 2-core machine). The walk splits its classes over threads that
    # never wait for each other instead, and callers parallelise over images.
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def propagate_dense(cams, edge, beta: float = 10, exp_times: int = 8, radius: int = 5) -> torch.Tensor:
    """IRN's formula as written, in float64: the dense transition matrix squared `exp_times`
    times. O((h*w)^2) memory and O((h*w)^3) time: a reference for small maps only."""
    cams, edge = _check_inputs(cams, edge)
    k, h, w = cams.shape
    n = h * w
    edge = edge.double()
    src, dst, aff = _image_pairs(edge, radius)
    affinity = torch.eye(n, dtype=torch.float64, device=edge.device)
    affinity[src, dst] = aff
    affinity[dst, src] = aff
    trans = affinity.pow(beta)
    trans = trans / trans.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    x = (cams.double() * (1 - edge)).reshape(k, n)
    return (x @ trans).reshape(k, h, w)


def rw_to_label(rw, keys, bg_thres: float, size: Sequence[int], stride: int = 4) -> np.ndarray:
    """make_sem_seg's per-image step: propagated scores (K, h, w) -> (H, W) int64 label map.

    Scores are upsampled by `stride`, cropped to `size`, divided by their maximum; a pixel is
    background (0) where no class reaches `bg_thres`, else class `keys[k] + 1` (keys are the
    0-based foreground class indices of the cam_mask file).
    """
    rw = torch.as_tensor(rw).float()
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if rw.ndim != 3 or rw.shape[0] != keys.size:
        raise ValueError(f"rw {tuple(rw.shape)} does not match {keys.size} keys")
    height, width = int(size[0]), int(size[1])
    if keys.size == 0:
        return np.zeros((height, width), dtype=np.int64)
    up = F.interpolate(rw[None], scale_factor=stride, mode="bilinear", align_corners=False)[0, :, :height, :width]
    up = up / up.max().clamp_min(1e-5)  # all-zero scores would divide by zero; they give background
    return channel_classes(keys)[threshold_channels(up.cpu().numpy(), bg_thres)]
