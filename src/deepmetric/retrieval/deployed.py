"""Quality of a deployed index: R@K and MAP@R through approximate search and compressed embeddings.

Exact evaluation (:func:`~deepmetric.retrieval.metrics.retrieval_metrics`) scores the embedding; a deployed
system answers through an index that approximates it. :func:`deployed_quality` runs the same self-search
protocol (every item queries all the others) through each variant and reports, next to the exact numbers,
what the variant costs and gives:

* ``flat``: exact ``IndexFlatIP`` (the reference row, float32).
* ``hnsw``: ``IndexHNSWFlat`` graph search (efSearch raised to the search depth when smaller).
* ``ivfpq``: IVF-PQ with the sizes :class:`~deepmetric.retrieval.index.SearchIndex` derives from n and d.
* ``float16`` / ``int8``: exact search over scalar-quantised vectors (faiss ``IndexScalarQuantizer``
  ``QT_fp16`` / ``QT_8bit``, 2 and 1 bytes per dimension).
* ``pcaD`` (e.g. ``pca32``): PCA to D dimensions (faiss ``PCAMatrix``, trained on the gallery), the
  projections re-normalised (cosine in the reduced space), then exact.

For each: R@K, MAP@R (SPEC.md §7; ties are rare in approximate scores and are broken by the index's
order), the serialised index size in bytes, and the median single-query latency.
"""
from __future__ import annotations

import re
import time
from typing import Any, Dict, List, Sequence

import numpy as np

from deepmetric.retrieval.index import SearchIndex
from deepmetric.retrieval.knn import as_float32_matrix
from deepmetric.retrieval.rerank import ranking_metrics

__all__ = ["deployed_quality", "build_variant", "VARIANTS"]

VARIANTS = ("flat", "hnsw", "ivfpq", "float16", "int8", "pcaD")


def build_variant(x: np.ndarray, name: str, *, depth: int) -> Any:
    """A faiss index of kind ``name`` over unit rows ``x`` (n, d), ready to search ``depth`` neighbours."""
    import faiss

    n, d = x.shape
    pca = re.fullmatch(r"pca(\d+)", name)
    if name == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index
    if name == "hnsw":  # the same graph parameters as SearchIndex.build's defaults
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(x)
        index.hnsw.efSearch = max(64, depth)
        return index
    if name == "ivfpq":  # SearchIndex's sizes (nlist, PQ sub-quantisers, bits, nprobe) derived from n and d
        return SearchIndex.build(x, kind="ivfpq").index  # IVF-PQ is not wrapped: its ids are the rows
    if name in ("float16", "int8"):
        qtype = faiss.ScalarQuantizer.QT_fp16 if name == "float16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexScalarQuantizer(d, qtype, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add(x)
        return index
    if pca:
        dims = int(pca.group(1))
        if not 1 <= dims < d:
            raise ValueError(f"{name}: the PCA dimension must be between 1 and {d - 1} (the embedding has {d})")
        # PCA centres the data: the projections are re-normalised so that the inner product is again the
        # cosine (in the reduced space); without it large-norm projections win every search
        index = faiss.IndexPreTransform(faiss.NormalizationTransform(dims, 2.0), faiss.IndexFlatIP(dims))
        index.prepend_transform(faiss.PCAMatrix(d, dims))
        index.train(x)
        index.add(x)
        return index
    raise ValueError(f"index variant {name!r} is not one of {', '.join(VARIANTS)} (pcaD with a number, e.g. pca32)")


def _self_search(index: Any, x: np.ndarray, depth: int) -> np.ndarray:
    """(n, depth) neighbours of every row, its own id removed (or the last one when the index missed it)."""
    search = getattr(index, "search_numpy", index.search)  # PML's faiss.contrib.torch_utils patches search
    _, ids = search(x, depth + 1)
    own = ids == np.arange(len(x))[:, None]
    out = np.empty((len(x), depth), dtype=np.int64)
    for i in range(len(x)):
        row = ids[i][~own[i]]
        out[i] = row[:depth]
    return out


def deployed_quality(embeddings: Any, labels: Any, *, variants: Sequence[str] = ("flat", "hnsw", "ivfpq", "float16", "int8", "pca32"),
                     ks: Sequence[int] = (1, 2, 4, 8), latency_queries: int = 200) -> List[Dict[str, Any]]:
    """R@K, MAP@R, index size and query latency of each variant (module docstring), exact ``flat`` first.

    Args:
        embeddings: (n, d) numpy or torch; L2-normalised here.
        labels: (n,) class ids.
        variants: names from :data:`VARIANTS`; ``flat`` is always measured (first) as the reference.
        ks: the K of R@K.
        latency_queries: single-row searches timed per variant (median reported).

    Returns:
        One dict per variant: ``{"variant", "recall@K"..., "map@r", "bytes", "bytes_per_item", "latency_ms"}``.
    """
    import faiss

    x = as_float32_matrix(embeddings, "embeddings").numpy().copy()
    faiss.normalize_L2(x)
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if len(y) != len(x):
        raise ValueError(f"labels has {len(y)} entries for {len(x)} embeddings")
    depth = max(max(ks), int(np.bincount(np.unique(y, return_inverse=True)[1]).max()) - 1)
    if depth >= len(x):
        raise ValueError(f"the split has {len(x)} items; R@{max(ks)} and MAP@R need more than {depth}")
    names = ["flat"] + [v for v in variants if v != "flat"]
    rng = np.random.default_rng(0)
    probe = x[rng.choice(len(x), size=min(latency_queries, len(x)), replace=False)]
    rows = []
    for name in names:
        index = build_variant(x, name, depth=depth)
        metrics = ranking_metrics(_self_search(index, x, depth), y, ks=ks)
        search = getattr(index, "search_numpy", index.search)
        times = []
        for q in probe:
            t = time.perf_counter()
            search(q[None, :], max(ks))
            times.append(time.perf_counter() - t)
        size = int(faiss.serialize_index(index).nbytes)
        rows.append({"variant": name, **metrics, "bytes": size, "bytes_per_item": size / len(x),
                     "latency_ms": 1000 * float(np.median(times))})
    return rows
