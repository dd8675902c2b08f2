"""Cost of the retrieval extensions (issue 18), as ratios against a peer measured in the same run.

* open-set: ``topk_metrics`` (tie-neutral P@k / R@k / mAP@k) against ``retrieval_metrics`` on the same
  embeddings; ``pair_scores`` (every pair for FNMR@FMR) against the matmul bound of its n²/2·d products.

Writes benchmarks/results/retrieval.md. Usage: ``python benchmarks/bench_retrieval.py [--n 5924]``.
"""
from __future__ import annotations

import argparse
import os
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, matmul_peak, median_time  # noqa: E402


def clustered(n: int, d: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.nn.functional.normalize(centres[y] + 4.0 * torch.randn(n, d, generator=g), dim=1)
    return x, y


def bench_openset(n: int, d: int, classes: int) -> list[str]:
    from deepmetric.retrieval import pair_scores, retrieval_metrics, threshold_at_fmr, topk_metrics

    x, y = clustered(n, d, classes)
    ks = (1, 5, 10)
    t_ref = median_time(lambda: retrieval_metrics(x, y, ks=ks, nmi=False), repeat=3)
    t_top = median_time(lambda: topk_metrics(x, y, ks=ks, per_class=True), repeat=3)
    collapsed = torch.ones(n // 4, d)
    t_col = median_time(lambda: topk_metrics(collapsed, y[: n // 4], ks=ks), repeat=1)
    t_pairs = median_time(lambda: pair_scores(x, y), repeat=3)
    ps = pair_scores(x, y)
    t_th = median_time(lambda: threshold_at_fmr(ps, 1e-3), repeat=3)
    peak = matmul_peak()
    bound = (n * n / 2 * d * 2) / peak
    top = topk_metrics(x, y, ks=ks)
    th = threshold_at_fmr(ps, 1e-3)
    return [
        f"## Open-set decisions and tie-neutral top-k metrics: {n:,} × {d} synthetic clusters, {classes} classes",
        "",
        "| what | seconds | against |",
        "| --- | ---: | --- |",
        f"| `retrieval_metrics` (R@1/5/10, MAP@R; no NMI) | {t_ref:.2f} | the peer |",
        f"| `topk_metrics` (P@k, R@k, mAP@k, per class; ties expected) | {t_top:.2f} | {t_top / t_ref:.2f}× `retrieval_metrics` |",
        f"| `topk_metrics` on {n // 4:,} identical embeddings (every query tied: full-row path) | {t_col:.2f} | worst case of the tie path |",
        f"| `pair_scores` (all {n * (n - 1) // 2:,} pairs) | {t_pairs:.2f} | {bound / t_pairs:.0%} of the matmul bound ({bound:.2f} s at {peak / 1e9:.0f} GFLOP/s) |",
        f"| `threshold_at_fmr` (sort of the impostor scores) | {t_th:.2f} | — |",
        "",
        f"P@1 {top['precision@1']:.4f}, mAP@10 {top['map@10']:.4f}; threshold at FMR 1e-3: {th.value:.4f}, FNMR {th.fnmr:.4f}.",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5924, help="items (default: CUB test size)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    a = ap.parse_args()
    m = machine()
    lines = ["# Retrieval extensions: open-set, re-ranking, deployed-index quality, GPU kNN", "",
             f"Command: `python benchmarks/bench_retrieval.py --n {a.n} --d {a.d} --classes {a.classes}`  ",
             f"Date: {dt.datetime.now().isoformat(timespec='seconds')}  ",
             f"Machine: {m}; load average (1 min) at the start: {os.getloadavg()[0]:.1f} "
             "(above the core count, other jobs shared the machine: compare the ratios, not the seconds)", ""]
    lines += bench_openset(a.n, a.d, a.classes)
    out = HERE / "results" / "retrieval.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
