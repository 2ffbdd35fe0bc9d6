"""Random-walk propagation: the stencil walk make_sem_seg runs, against the sparse operator it
replaced and IRN's dense transition-matrix power.

A 500x375 VOC image gives a 94x125 map at stride 4: IRN's dense transition matrix would be
11750^2 floats (527 MiB in float32) squared 8 times, so the dense formula is timed on a smaller
map, where all three are also compared, and its time at VOC size comes from a cost model.

    python bench/bench_random_walk.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from wavecam.labels.randomwalk import _image_pairs, _one_cpu_thread, propagate, propagate_dense, search_directions

N_CLASSES = 2  # foreground classes of the image: the walk runs on the CAMs of the classes present
BETA, EXP_TIMES, RADIUS = 10, 8, 5
FULL = (94, 125)  # 500x375 at stride 4
SMALL = (30, 40)  # where the dense matrix (1200^2) is cheap


def previous_sparse_walk(cams, edge, beta=BETA, exp_times=EXP_TIMES, radius=RADIUS):
    """The walk before the stencil: the transition matrix D^-1 A as a sparse CSR operator in
    float64, applied 2**exp_times times to the (h*w, K) scores, on one CPU thread as it ran."""
    with _one_cpu_thread(cams.device):
        return _sparse_walk(cams, edge, beta, exp_times, radius)


def _sparse_walk(cams, edge, beta, exp_times, radius):
    k, h, w = cams.shape
    n = h * w
    edge = edge.double()
    src, dst, aff = _image_pairs(edge, radius)
    loops = torch.arange(n)
    rows, cols = torch.cat([src, dst, loops]), torch.cat([dst, src, loops])
    vals = torch.cat([aff, aff, torch.ones(n, dtype=aff.dtype)]).pow(beta)
    vals = vals / torch.zeros(n, dtype=vals.dtype).index_add_(0, rows, vals)[rows]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        op = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=False)
        op = op.coalesce().to_sparse_csr()
    v = (cams.double() * (1 - edge)).reshape(k, n).T.contiguous()
    for _ in range(2**exp_times):
        v = op @ v
    return v.T.reshape(k, h, w).float()


def inputs(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(N_CLASSES, *size, generator=g)
    edge = torch.rand(size, generator=g) ** 3  # mostly low, a few strong boundaries
    return cams, edge


def median_time(fn, runs):
    """Median wall and CPU (all threads) seconds of `runs` calls."""
    fn()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def max_rel_diff(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9, help="timed runs per figure (median)")
    a = p.parse_args(argv)
    walks = {"stencil": propagate, "sparse": previous_sparse_walk, "dense": propagate_dense}
    threads = torch.get_num_threads()
    print(f"K={N_CLASSES} beta={BETA} exp_times={EXP_TIMES} ({2**EXP_TIMES} steps) radius={RADIUS}; median of "
          f"{a.repeats} runs, seconds\nCPU threads: stencil {min(threads, N_CLASSES)} (one per class), sparse 1, "
          f"dense {threads}")
    print(f"{'map (h x w)':<13}{'stencil':>10}{'sparse':>10}{'dense':>10}   max rel diff to dense")

    cams, edge = inputs(SMALL)
    small = {name: median_time(lambda f=f: f(cams, edge, BETA, EXP_TIMES, RADIUS), a.repeats)[0]
             for name, f in walks.items()}
    ref = propagate_dense(cams, edge, BETA, EXP_TIMES, RADIUS)
    diffs = {name: max_rel_diff(walks[name](cams, edge, BETA, EXP_TIMES, RADIUS), ref)
             for name in ("stencil", "sparse")}
    print(f"{SMALL[0]} x {SMALL[1]:<8}{small['stencil']:>10.4f}{small['sparse']:>10.4f}{small['dense']:>10.4f}   "
          f"stencil {diffs['stencil']:.1e}, sparse {diffs['sparse']:.1e}")

    cams, edge = inputs(FULL)
    timed = {name: median_time(lambda f=walks[name]: f(cams, edge, BETA, EXP_TIMES, RADIUS), a.repeats)
             for name in ("stencil", "sparse")}
    full = {name: wall for name, (wall, _) in timed.items()}
    same = max_rel_diff(propagate(cams, edge, BETA, EXP_TIMES, RADIUS), previous_sparse_walk(cams, edge))
    print(f"{FULL[0]} x {FULL[1]:<7}{full['stencil']:>10.4f}{full['sparse']:>10.4f}{'-':>10}   "
          f"stencil vs sparse {same:.1e}")
    print(f"{'  CPU time':<13}{timed['stencil'][1]:>10.4f}{timed['sparse'][1]:>10.4f}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in make_sem_seg's CPU workers
    try:
        single = median_time(lambda: propagate(cams, edge, BETA, EXP_TIMES, RADIUS), a.repeats)[0]
    finally:
        torch.set_num_threads(threads)
    print(f"{'  1 thread':<13}{single:>10.4f}")

    # Multiply-adds: the dense formula squares an (hw)^2 matrix exp_times times; the stencil applies
    # its offsets to every pixel and class once per step.
    offsets = 1 + 2 * len(search_directions(RADIUS))
    n_small, n_full = SMALL[0] * SMALL[1], FULL[0] * FULL[1]
    dense_ops = n_full**3 * EXP_TIMES
    stencil_ops = offsets * n_full * N_CLASSES * 2**EXP_TIMES
    projected = small["dense"] * (n_full / n_small) ** 3
    print(f"\nmultiply-adds at {FULL[0]} x {FULL[1]}: dense {dense_ops:.1e} (a {n_full} x {n_full} matrix, "
          f"{n_full**2 * 4 / 2**20:.0f} MiB in float32,\n  squared {EXP_TIMES} times), stencil {stencil_ops:.1e} "
          f"({offsets} offsets x {n_full} pixels x {N_CLASSES} classes x {2**EXP_TIMES} steps): "
          f"{dense_ops / stencil_ops:.0f}x fewer")
    print(f"dense at {FULL[0]} x {FULL[1]} projected from {SMALL[0]} x {SMALL[1]} by (h*w)^3: {projected:.0f} s, "
          f"{projected / full['stencil']:.0f}x the stencil;\nthe previous sparse operator: "
          f"{full['sparse'] / full['stencil']:.1f}x the stencil")

if __name__ == "__main__":
    main()
