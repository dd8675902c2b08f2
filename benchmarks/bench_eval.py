"""Retrieval evaluation: deepmetric.retrieval_metrics vs pytorch-metric-learning's AccuracyCalculator.

Synthetic clustered, unit-normalised 512-d embeddings of the sizes of the CUB-200-2011 test split
(5,924 items, 100 classes) and the Stanford Online Products test split (60,502 items, 11,316 classes of
2–12 items). Each measured thing runs in its own subprocess so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; tracemalloc cannot see torch/faiss allocations) is its own:

* ``ours``      ``retrieval_metrics(x, y, nmi=False)``; the kNN stage (``topk_search``) is timed inside it;
* ``ours+nmi``  the same with NMI (faiss k-means, one cluster per class, 20 iterations);
* ``pml``       ``AccuracyCalculator(include=(precision_at_1, mean_average_precision_at_r, r_precision),
                k="max_bin_count").get_accuracy(x, y)`` (query = reference, self excluded); its default
                kNN is faiss ``IndexFlatL2``, whose float32 ‖a‖²+‖b‖²−2a·b rounding reorders near-ties;
* ``pml-ip``    the same with ``FaissKNN(index_init_fn=faiss.IndexFlatIP)`` (inner product, like ours);
* ``exact64``   (CUB size only) float64 brute force: full similarity matrix, ``torch.topk``, the metric
                formulas written out again: the ground truth both float32 engines are compared with;
* ``knn``       the kNN stage alone, interleaved in one process (best of 3 at CUB size, 1 at SOP size):
                the torch.mm rate on the 4096×512×4096 block shape, our ``topk_search`` and faiss
                ``IndexFlatIP`` self-search with the same k (the non-symmetric peer: 2·N²·d FLOPs);
* ``baseline``  interpreter + imports + loading the data, so the rows above can be read as increments.

The kNN stage's FLOP/s counts the FLOPs actually needed, N²·d (the symmetric path computes each
similarity once), and is quoted against the float32 matmul peak measured in this run (torch, 2 threads).
Targets are reported, never asserted: SOP time <= 0.5 × PML, peak <= 4 GiB, metrics equal to 1e-6,
kNN >= 70% of the matmul peak.

    python benchmarks/bench_eval.py [--sizes cub,sop] [--out benchmarks/results/eval.md] [--no-pml]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THREADS = 2
# noise: per-dimension std of the within-class scatter (centres have std 1), chosen so Recall@1 is
# realistic (CUB ≈ 0.75, SOP ≈ 0.7) rather than trivially 1.0
SIZES = {
    "cub": dict(n=5924, classes=100, lo=None, hi=None, noise=3.3),
    "sop": dict(n=60502, classes=11316, lo=2, hi=12, noise=2.3),
}
DIM = 512
PML_KEYS = {"precision@1": "precision_at_1", "map@r": "mean_average_precision_at_r", "r_precision": "r_precision"}


def make_data(name: str, seed: int = 0):
    """Unit vectors around random class centres; class sizes like the real test split."""
    spec = SIZES[name]
    rng = np.random.default_rng(seed)
    n, c = spec["n"], spec["classes"]
    if spec["lo"] is None:  # CUB: near-balanced classes (41–60 images in the real split)
        sizes = np.full(c, n // c)
        sizes[: n - sizes.sum()] += 1
    else:  # SOP: 2..12 per class, many small classes, a tail up to 12; then nudged to exactly n in total
        mean = n / c
        sizes = np.clip(spec["lo"] - 1 + rng.geometric(1 / (mean - spec["lo"] + 1), size=c), spec["lo"], spec["hi"])
        while sizes.sum() != n:
            grow = sizes.sum() < n
            room = np.flatnonzero(sizes < spec["hi"]) if grow else np.flatnonzero(sizes > spec["lo"])
            pick = rng.choice(room, size=min(abs(n - int(sizes.sum())), room.size), replace=False)
            sizes[pick] += 1 if grow else -1
    labels = np.repeat(np.arange(c), sizes)
    rng.shuffle(labels)
    centres = rng.standard_normal((c, DIM)).astype(np.float32)
    x = centres[labels] + spec["noise"] * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)


# ------------------------------------------------------------------------------------------ children


def _child(mode: str, data: str) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    arrays = np.load(data)
    x, y = arrays["x"], arrays["y"]
    out: dict = {}
    t0 = time.perf_counter()
    if mode in ("ours", "ours+nmi"):
        from deepmetric.retrieval import metrics as m

        knn_time = []
        real = m.topk_search

        def timed(*args, **kwargs):
            t = time.perf_counter()
            res = real(*args, **kwargs)
            knn_time.append(time.perf_counter() - t)
            out["k"] = kwargs["k"]
            return res

        m.topk_search = timed  # time the kNN stage inside the real call
        out["metrics"] = m.retrieval_metrics(x, y, nmi=mode == "ours+nmi")
        out["knn_s"] = knn_time[0]
    elif mode in ("pml", "pml-ip"):
        import faiss
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import FaissKNN

        knn = FaissKNN(index_init_fn=faiss.IndexFlatIP) if mode == "pml-ip" else None
        calc = AccuracyCalculator(include=tuple(PML_KEYS.values()), k="max_bin_count", device=torch.device("cpu"),
                                  knn_func=knn)
        res = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
        out["metrics"] = {ours: res[theirs] for ours, theirs in PML_KEYS.items()}
    elif mode == "knn":
        out.update(_knn_rates(x, y))
    elif mode == "exact64":
        out["metrics"] = _exact64(torch.from_numpy(x).double(), torch.from_numpy(y))
    elif mode != "baseline":
        raise ValueError(f"unknown mode {mode!r}")
    out["wall_s"] = time.perf_counter() - t0
    out["maxrss_gib"] = _peak_rss_gib()
    return out


def _knn_rates(x: np.ndarray, y: np.ndarray) -> dict:
    """kNN stage only, interleaved in ONE process so that the shared machine's load hits all alike:
    torch.mm peak on the block shape, our symmetric topk_search, faiss IndexFlatIP self-search (best of R)."""
    import faiss
    import torch

    from deepmetric.retrieval import topk_search

    n, d = x.shape
    k = max(8, int(np.bincount(y).max()) - 1)  # what retrieval_metrics picks
    repeat = 3 if n < 20000 else 1
    a, b = torch.randn(4096, d), torch.randn(4096, d)
    buf = torch.empty(4096, 4096)
    xt = torch.from_numpy(x)
    index = faiss.IndexFlatIP(d)
    index.add(x)
    peak, ours, peer = 0.0, float("inf"), float("inf")
    for _ in range(repeat):
        for _ in range(3):
            t = time.perf_counter()
            torch.mm(a, b.t(), out=buf)
            peak = max(peak, 2 * 4096 * 4096 * d / (time.perf_counter() - t))
        t = time.perf_counter()
        topk_search(xt, k=k)
        ours = min(ours, time.perf_counter() - t)
        t = time.perf_counter()
        index.search(x, k + 1)
        peer = min(peer, time.perf_counter() - t)
    return {"k": k, "repeat": repeat, "block_peak_gflops": peak / 1e9, "ours_knn_s": ours, "faiss_knn_s": peer,
            "ours_knn_gflops": n * n * d / ours / 1e9}


def _peak_rss_gib() -> float:
    """Peak resident memory of THIS process. VmHWM, not ru_maxrss: after fork+exec Linux carries the
    parent's high-water mark into ru_maxrss, so every child would report at least the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _exact64(x, y) -> dict:
    """Float64 ground truth: full matrix, self excluded, lone queries skipped, SPEC §7 formulas."""
    import torch

    s = x @ x.t()
    s.fill_diagonal_(float("-inf"))
    r = (y[:, None] == y[None, :]).sum(dim=1) - 1
    k = int(r.max())
    nn = s.topk(k, dim=1).indices
    rel = (y[nn] == y[:, None])[r > 0]
    r = r[r > 0]
    rank = torch.arange(1, k + 1, dtype=torch.float64)
    rel_r = (rel & (rank <= r[:, None])).double()
    return {"precision@1": float(rel[:, 0].double().mean()),
            "map@r": float(((rel_r.cumsum(1) / rank * rel_r).sum(1) / r).mean()),
            "r_precision": float((rel_r.sum(1) / r).mean())}


def run_child(mode: str, data: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--data", data], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_peak() -> float:
    import torch

    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(Path(__file__).parent))
    from common import matmul_peak as peak

    return max(peak(n=2048), peak(n=4096))


# ------------------------------------------------------------------------------------------ report


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import common

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="cub,sop")
    ap.add_argument("--out", default="benchmarks/results/eval.md")
    ap.add_argument("--no-pml", action="store_true", help="skip PML (it takes ~2 min and 7.5 GB at SOP size)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.data)))
        return

    import faiss
    import torch

    load_before = os.getloadavg()[0]
    peak = matmul_peak()
    results = {"command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": {"nproc": os.cpu_count(), "torch_threads": THREADS, "cpu": common.cpu_model(),
                           "torch": torch.__version__, "faiss": faiss.__version__},
               "matmul_peak_gflops": peak / 1e9, "sizes": {}}
    base_modes = ["baseline", "ours", "ours+nmi", "knn"] + ([] if args.no_pml else ["pml", "pml-ip"])
    with tempfile.TemporaryDirectory() as tmp:
        for name in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            x, y = make_data(name)
            path = os.path.join(tmp, f"{name}.npz")
            np.savez(path, x=x, y=y)
            rows = {}
            for mode in base_modes + (["exact64"] if name == "cub" else []):
                print(f"[{name}] {mode} ...", flush=True)
                rows[mode] = run_child(mode, path)
                print(f"    {rows[mode]}", flush=True)
            n = x.shape[0]
            results["sizes"][name] = {"n": n, "d": DIM, "classes": int(y.max()) + 1,
                                      "max_class": int(np.bincount(y).max()), "rows": rows}
    results["load"] = [load_before, os.getloadavg()[0]]
    write_markdown(results, args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def _max_diff(a: dict, b: dict) -> float:
    return max(abs(a["metrics"][k] - b["metrics"][k]) for k in PML_KEYS)


def write_markdown(res: dict, out: str) -> None:
    peak = res["matmul_peak_gflops"]
    mach = res["machine"]
    lines = [
        "# Retrieval evaluation: deepmetric vs PML AccuracyCalculator",
        "",
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}  ",
        f"Machine: {mach['cpu']}, nproc={mach['nproc']}, torch threads={mach['torch_threads']}, "
        f"torch {mach['torch']}, faiss {mach['faiss']}  ",
        f"Measured float32 matmul peak (torch, {mach['torch_threads']} threads, same run): {peak:.1f} GFLOP/s",
        "",
        f"Machine load average (1 min) before / after the run: {res['load'][0]:.2f} / {res['load'][1]:.2f} "
        "(above the 2 cores means other jobs shared the machine and inflated the times); ratios taken inside "
        "one process (`knn` row) are the most robust to such noise. Each row ran in its own subprocess; peak "
        "RSS is that process's VmHWM (interpreter, imports and the data included: see `baseline`).",
        "Data: synthetic unit-norm 512-d clusters with the test split's size and class sizes (see the script).",
        "",
    ]
    for name, s in res["sizes"].items():
        rows = s["rows"]
        lines += [f"## {name.upper()} size: {s['n']:,} × {s['d']}, {s['classes']:,} classes "
                  f"(largest {s['max_class']})", "",
                  "| run | wall s | peak RSS GiB | precision@1 | MAP@R | R-precision | NMI |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for mode, r in rows.items():
            m = r.get("metrics", {})
            cell = lambda k: f"{m[k]:.6f}" if k in m else "—"  # noqa: E731
            lines.append(f"| {mode} | {r['wall_s']:.2f} | {r['maxrss_gib']:.2f} | {cell('precision@1')} | "
                         f"{cell('map@r')} | {cell('r_precision')} | {cell('nmi')} |")
        ours, kr = rows["ours"], rows["knn"]
        best = max([peak] + [z["rows"]["knn"]["block_peak_gflops"] for z in res["sizes"].values()])
        lines += ["", f"- kNN stage inside `ours` (`topk_search`, symmetric, k={ours['k']}): {ours['knn_s']:.2f} s "
                      f"= {s['n'] ** 2 * s['d'] / ours['knn_s'] / 1e9:.1f} GFLOP/s of N²·d "
                      f"({s['n'] ** 2 * s['d'] / ours['knn_s'] / 1e9 / best:.0%} of the best matmul rate seen in this "
                      f"run, {best:.1f} GFLOP/s)",
                  f"- kNN stage alone (`knn` row, best of {kr['repeat']}): ours {kr['ours_knn_s']:.2f} s = "
                  f"{kr['ours_knn_gflops']:.1f} GFLOP/s = {kr['ours_knn_gflops'] / kr['block_peak_gflops']:.0%} of the "
                  f"torch.mm rate measured beside it on the block shape ({kr['block_peak_gflops']:.1f} GFLOP/s; "
                  f"target ≥ 70%); faiss IndexFlatIP {kr['faiss_knn_s']:.2f} s → ours/faiss time = "
                  f"{kr['ours_knn_s'] / kr['faiss_knn_s']:.2f}"]
        if "pml" in rows:
            pml = rows["pml"]
            lines += [f"- time ours/PML = {ours['wall_s'] / pml['wall_s']:.2f} (target ≤ 0.5); "
                      f"peak RSS ours {ours['maxrss_gib']:.2f} GiB vs PML {pml['maxrss_gib']:.2f} GiB (target ≤ 4 GiB)"]
        for a_mode, b_mode in (("ours", "pml"), ("ours", "pml-ip"), ("ours", "exact64"), ("pml", "exact64"),
                               ("pml-ip", "exact64")):
            if a_mode in rows and b_mode in rows:
                lines.append(f"- max |Δ| precision@1 / MAP@R / R-precision, {a_mode} vs {b_mode}: "
                             f"{_max_diff(rows[a_mode], rows[b_mode]):.1e} (target ours vs PML ≤ 1e-6)")
        lines.append("")
    lines += [
        "## Reading",
        "",
        "- The symmetric search multiplies each pair of rows once, in 512-column tiles (only the tile's "
        "512 × 512 diagonal square is multiplied whole): (N² + 512·N)·d FLOPs against the N²·d needed, 1.09× "
        "the need at CUB size and 1.01× at SOP size, against 2× for a plain search such as faiss `IndexFlatIP`. "
        "The rest of the kNN stage is memory traffic over each tile (heap pushes for its rows and, transposed, "
        "for its columns).",
        "- The non-kNN part of `retrieval_metrics` (labels, R, MAP@R on the (N, k) table) costs well under a second "
        "at SOP size; NMI (faiss k-means, one centroid per class, 20 iterations) dominates `ours+nmi`.",
        "- PML's default kNN is `IndexFlatL2`; on unit vectors it ranks like the inner product up to float32 "
        "rounding, which reorders a few near-ties: that, not a definition difference, is the residual |Δ| "
        "(at CUB size all engines are within 2e-7 of the float64 ground truth `exact64`).",
        "- Peak memory: ours holds two 4096 × 512 float32 tiles (16 MiB) plus the N·k heaps; PML builds (N, k) "
        "label/mask tensors in float64 and several copies of the embeddings.",
        "",
    ]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
