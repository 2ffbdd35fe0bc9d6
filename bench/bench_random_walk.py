"""Random-walk propagation: our sparse step-by-step walk vs IRN's dense matrix power.

A 500x375 VOC image gives a 125x94 map at stride 4: IRN's dense transition matrix would be
11750^2 floats (550 MB) raised to the 256th power by 8 products of 1.6 TFLOP each, so the dense
formula is timed on a smaller map, where both are also compared.

    python bench/bench_random_walk.py
"""

from __future__ import annotations

import statistics
import time

import torch

from wavecam.randomwalk import propagate, propagate_dense

N_CLASSES = 3 + 1  # three classes and background, as make_sem_seg would hold for a busy image
BETA, EXP_TIMES, RADIUS = 10, 8, 5
FULL = (125, 94)  # 500x375 at stride 4
SMALL = (40, 30)  # where the dense matrix (1200^2) is cheap


def inputs(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(N_CLASSES, *size, generator=g)
    edge = torch.rand(size, generator=g) ** 3  # mostly low, a few strong boundaries
    return cams, edge


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fmt_size(size):
    return f"{size[0]} x {size[1]}"


def max_rel_diff(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def main():
    print(f"K={N_CLASSES} beta={BETA} exp_times={EXP_TIMES} ({2**EXP_TIMES} steps) radius={RADIUS}, "
          f"CPU threads={torch.get_num_threads()}")
    print(f"{'map (h x w)':<14}{'sparse (s)':>12}{'dense (s)':>12}{'max rel diff':>15}")

    cams, edge = inputs(SMALL)
    sparse = median_time(lambda: propagate(cams, edge, BETA, EXP_TIMES, RADIUS), runs=5)
    dense = median_time(lambda: propagate_dense(cams, edge, BETA, EXP_TIMES, RADIUS), runs=3)
    diff = max_rel_diff(propagate(cams, edge, BETA, EXP_TIMES, RADIUS),
                        propagate_dense(cams, edge, BETA, EXP_TIMES, RADIUS))
    print(f"{fmt_size(SMALL):<14}{sparse:>12.4f}{dense:>12.4f}{diff:>15.2e}")

    cams, edge = inputs(FULL)
    sparse = median_time(lambda: propagate(cams, edge, BETA, EXP_TIMES, RADIUS), runs=7)
    print(f"{fmt_size(FULL):<14}{sparse:>12.4f}{'-':>12}{'-':>15}")
    n = FULL[0] * FULL[1]
    print(f"dense at {FULL[0]} x {FULL[1]} not run: a {n} x {n} matrix ({n * n * 4 / 2**20:.0f} MiB float32) "
          f"squared {EXP_TIMES} times ({2 * n**3 * EXP_TIMES / 1e12:.0f} TFLOP).")


if __name__ == "__main__":
    main()
