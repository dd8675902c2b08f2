"""Load test of the search service on loopback: latency percentiles and errors under concurrent uploads.

The service (``deepmetric serve``) runs in a subprocess under uvicorn; an httpx AsyncClient sends
``--requests`` POST /search uploads (gallery PNGs, k=10) with ``--concurrency`` in flight. The in-process
cost of one search (decode + embed + faiss, ``IndexSearcher.search``) is measured in the same run as the
peer the HTTP latency is compared with. Without ``--index`` a tiny digits model is trained (2 steps; the
weights do not matter for speed) and its test split (896 images) indexed in a temporary folder.

    python benchmarks/bench_serve.py [--index DIR] [--requests 500] [--concurrency 8] [--out benchmarks/results/serve.md]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_time  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_index(work: Path) -> Path:
    from deepmetric.config import build_config
    from deepmetric.serve.indexing import build_index_from_checkpoint
    from deepmetric.train.loop import train

    cfg = build_config({
        "device": "cpu",
        "data": {"dataset": "digits", "image_size": 8, "batch_size": 24, "samples_per_class": 8},
        "model": {"backbone": "small_cnn", "embedding_dim": 16},
        "train": {"epochs": 1, "max_steps_per_epoch": 2, "progress": False},
        "eval": {"nmi": False},
    })
    train(cfg, work / "run")
    build_index_from_checkpoint(work / "run" / "best.pt", split="test", out=work / "index", device="cpu")
    return work / "index"


def query_images(index_dir: Path, n: int = 16) -> list[bytes]:
    """PNG bytes of ``n`` gallery items (through the searcher's thumbnails: works for any index)."""
    from deepmetric.serve.indexing import IndexSearcher

    s = IndexSearcher(index_dir, device="cpu")
    ids = np.linspace(0, len(s) - 1, n).astype(int)
    return [s.thumbnail(int(i))[0] for i in ids]


def in_process_seconds(index_dir: Path, data: bytes) -> float:
    from deepmetric.serve.app import decode_image
    from deepmetric.serve.indexing import IndexSearcher

    s = IndexSearcher(index_dir, device="cpu")
    return median_time(lambda: s.search([decode_image(data, max_pixels=40_000_000)], 10), repeat=50, warmup=5)


def index_recall(n: int = 5000, dim: int = 64, queries: int = 200, k: int = 10) -> list[dict]:
    """Measured recall@k of the approximate index kinds against exact search, with build and search times."""
    from deepmetric.retrieval.index import SearchIndex, clustered_vectors, measured_recall

    both, _ = clustered_vectors(n + queries, dim, clusters=50, spread=0.6, seed=0)
    x, q = both[:n], both[n:]
    rows, exact = [], None
    for kind, params in (("flat", {}), ("hnsw", {}), ("hnsw", {"ef_search": 16}), ("ivfpq", {})):
        t = time.perf_counter()
        index = SearchIndex.build(x, kind=kind, **params)
        build = time.perf_counter() - t
        exact = exact or index
        search = median_time(lambda: index.search(q, k), repeat=5)
        rows.append({"kind": kind, "params": index.metadata["params"], "build_s": build, "search_ms_per_query": 1e3 * search / queries,
                     "recall": measured_recall(index, exact, q, k)})
    return rows


async def load(base: str, images: list[bytes], requests: int, concurrency: int, *, floor: bool = False):
    """Send ``requests`` searches (or, with ``floor``, GET /health: the HTTP floor) with ``concurrency`` in flight."""
    latencies, errors, statuses = [], 0, {}
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        async def worker():
            nonlocal errors
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                try:
                    if floor:
                        r = await client.get("/health")
                        ok = r.status_code == 200
                    else:
                        r = await client.post("/search?k=10", files={"file": ("q.png", images[i % len(images)], "image/png")})
                        ok = r.status_code == 200 and len(r.json()["results"]) == 10
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                except httpx.HTTPError as exc:
                    ok = False
                    statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                latencies.append(time.perf_counter() - t)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return np.array(latencies), errors, statuses, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=Path, default=None, help="index folder (default: a tiny digits index built here)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/serve.md")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = a.index or tiny_index(Path(tmp))
        images = query_images(index_dir)
        load_before = os.getloadavg()
        single = in_process_seconds(index_dir, images[0])
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "deepmetric", "serve", "--index", str(index_dir), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(base + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the service did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
                time.sleep(0.2)
            health = httpx.get(base + "/health").json()
            asyncio.run(load(base, images, 20, a.concurrency))  # warm-up, not recorded
            lat, errors, statuses, wall = asyncio.run(load(base, images, a.requests, a.concurrency))
            floor_lat, floor_errors, _, floor_wall = asyncio.run(load(base, images, a.requests, a.concurrency, floor=True))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        single_after = in_process_seconds(index_dir, images[0])
        load_after = os.getloadavg()
    recall_rows = index_recall()
    p50, p90, p99 = (float(np.percentile(lat, q)) for q in (50, 90, 99))
    lines = [
        "# Search service load test",
        "",
        f"Command: `python benchmarks/bench_serve.py --requests {a.requests} --concurrency {a.concurrency}"
        f"{' --index ' + str(a.index) if a.index else ''}` on {datetime.date.today()}; machine: {machine()}.",
        f"Service: `deepmetric serve` (uvicorn, one process) on loopback over an index of {health['items']} items "
        f"({health['kind']}, {health['dim']}-d){'' if a.index else ' — the tiny digits model (small_cnn, 8×8 inputs) on the digits test split'}. "
        "Each request uploads a gallery PNG as multipart and asks for k=10. The load generator (httpx AsyncClient) "
        "shares the machine's cores with the service, so these are upper bounds for the service alone.",
        "",
        "| route | requests | concurrency | errors | throughput (req/s) | p50 ms | p90 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| POST /search (k=10) | {len(lat)} | {a.concurrency} | {errors} | {len(lat) / wall:.1f} | {1e3 * p50:.1f} | {1e3 * p90:.1f} | {1e3 * p99:.1f} | {1e3 * lat.max():.1f} |",
        f"| GET /health (HTTP floor) | {len(floor_lat)} | {a.concurrency} | {floor_errors} | {len(floor_lat) / floor_wall:.1f} | "
        + " | ".join(f"{1e3 * float(np.percentile(floor_lat, q)):.1f}" for q in (50, 90, 99)) + f" | {1e3 * floor_lat.max():.1f} |",
        "",
        f"Peers in the same run: one in-process search (no HTTP) takes {1e3 * single:.2f} ms before the load test and "
        f"{1e3 * single_after:.2f} ms after it (median of 50 each; {1 / max(single, single_after):.0f}–{1 / min(single, single_after):.0f} "
        f"searches/s on one thread); the service reaches {len(lat) / wall:.0f} req/s, and "
        f"{(len(lat) / wall) / (len(floor_lat) / floor_wall):.0%} of the throughput of a route that does no work (GET /health).",
        f"Machine load average (1/5/15 min) before: {tuple(round(v, 2) for v in load_before)}, after: "
        f"{tuple(round(v, 2) for v in load_after)} — a load above the {os.cpu_count()} cores means other jobs shared the "
        "machine and every number above is inflated by them.",
        "",
        f"Status counts of the searches: {statuses}. In-process search = decode + transform + embed + faiss search of "
        f"one image (`IndexSearcher.search`). With {a.concurrency} requests in flight, latency includes queueing behind the others.",
        f"Mean latency {1e3 * statistics.fmean(lat):.1f} ms.",
        "",
        "## Approximate index kinds: measured recall@10 against exact search",
        "",
        "5,000 unit vectors (64-d) around 50 random centres (noise norm 0.6, `clustered_vectors`), 200 fresh queries from "
        "the same centres; recall@10 = share of the exact top-10 returned (`measured_recall`); search time per query in a "
        "batch of 200.",
        "",
        "| kind | parameters | build s | search ms/query | recall@10 |",
        "| --- | --- | ---: | ---: | ---: |",
    ] + [f"| {r['kind']} | {r['params'] or '-'} | {r['build_s']:.2f} | {r['search_ms_per_query']:.3f} | {r['recall']:.3f} |" for r in recall_rows]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
