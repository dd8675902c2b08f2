"""Re-ranking as post-processing of a retrieval: α-query expansion, database-side augmentation, k-reciprocal.

Each method takes unit-norm embeddings and returns new ones (QE, DBA) or a re-ranked neighbour table
(k-reciprocal); :func:`rerank_metrics` scores any of them with the retrieval metrics of SPEC.md §7 so
their effect is measured, not assumed (``benchmarks/bench_retrieval.py`` reports it on the embedded data).

* α-QE (Radenović, Tolias & Chum, TPAMI 2019, eq. 5): q' = normalize(q + Σ_{i≤k} s(q, g_i)^α g_i) over the
  query's k nearest gallery items g_i (similarities clamped at 0 before the power); α = 0 is average QE
  (Chum et al., ICCV 2007).
* DBA (Arandjelović & Zisserman, CVPR 2012; weighting as α-QE): every gallery item is replaced by the
  same weighted mean of itself and its k nearest OTHER gallery items; queries are searched against it.
* k-reciprocal re-ranking (Zhong, Zheng, Cao & Li, CVPR 2017, eqs. 1–14): the final distance is
  d* = (1 − λ)·d_J + λ·d, with d the squared Euclidean distance of unit vectors (2 − 2 cos), divided by
  its largest value per query as in the authors' code (so λ means what it meant for them), and d_J the
  Jaccard distance between k-reciprocal encodings V (eq. 7–10, Gaussian weights exp(−d) normalised to
  sum 1, the expansion R* of eq. 6 with k₁/2 when the overlap exceeds 2/3, local query expansion over
  the k₂ nearest, eq. 11). It needs the distances among
  ALL items, so it holds an (n, n) matrix: :data:`KRECIPROCAL_MAX_ITEMS` bounds n.

Self-search protocol (query set = gallery, as :func:`~deepmetric.retrieval.metrics.retrieval_metrics`
without masks): each query's own item is excluded from its ranking, also inside QE and DBA (an item never
expands with itself twice).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
import torch

from deepmetric.functional.similarity import l2_normalize
from deepmetric.retrieval.knn import as_float32_matrix, topk_search

__all__ = ["alpha_query_expansion", "database_augmentation", "k_reciprocal_distances", "rerank_metrics",
           "ranking_metrics", "KRECIPROCAL_MAX_ITEMS", "METHODS"]

#: k-reciprocal holds (n, n) float32 distances and encodings: 20,000 items ≈ 3.2 GB; larger is refused
KRECIPROCAL_MAX_ITEMS = 20_000
METHODS = ("none", "qe", "dba", "dba+qe", "k_reciprocal")


def _check(k: int, alpha: float, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise ValueError(f"k={k!r} must be an integer in [1, n - 1] = [1, {n - 1}] (neighbours that expand each item)")
    if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha={alpha!r} must be a finite number >= 0 (0 = plain average; the paper uses 3)")


def _expand(x: torch.Tensor, sims: torch.Tensor, nn: torch.Tensor, base: torch.Tensor, alpha: float) -> torch.Tensor:
    w = sims.clamp(min=0) ** alpha if alpha > 0 else torch.ones_like(sims)
    return l2_normalize(base + (w[..., None] * x[nn]).sum(dim=1))


def alpha_query_expansion(queries: Any, gallery: Any = None, *, k: int = 2, alpha: float = 3.0) -> torch.Tensor:
    """α-QE: each query replaced by normalize(q + Σ_{i≤k} max(s_i, 0)^α g_i) over its k nearest gallery items.

    Args:
        queries: (nq, d). gallery: (ng, d); None = the queries are the gallery (own item excluded).
        k: neighbours added to each query. alpha: weight exponent α (0 = average QE).

    Returns:
        (nq, d) float32 unit-norm expanded queries, to search the ORIGINAL gallery with.
    """
    q = l2_normalize(as_float32_matrix(queries, "queries"))
    g = q if gallery is None else l2_normalize(as_float32_matrix(gallery, "gallery"))
    _check(k, alpha, g.shape[0] + (0 if gallery is None else 1))
    sims, nn = topk_search(q, None if gallery is None else g, k=k)
    return _expand(g, sims, nn, q, alpha)


def database_augmentation(gallery: Any, *, k: int = 2, alpha: float = 3.0) -> torch.Tensor:
    """DBA: each gallery item replaced by normalize(g + Σ_{i≤k} max(s_i, 0)^α g_i) over its k nearest other items.

    Returns:
        (ng, d) float32 unit-norm augmented gallery (search it with plain or expanded queries).
    """
    g = l2_normalize(as_float32_matrix(gallery, "gallery"))
    _check(k, alpha, g.shape[0])
    sims, nn = topk_search(g, None, k=k)
    return _expand(g, sims, nn, g, alpha)


def k_reciprocal_distances(embeddings: Any, *, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Zhong et al. 2017 re-ranked distances d* among ``embeddings`` (self-search: queries = gallery).

    Args:
        embeddings: (n, d); L2-normalised here. n <= :data:`KRECIPROCAL_MAX_ITEMS`.
        k1: size of the k-reciprocal neighbourhoods (paper: 20). k2: local query expansion (paper: 6).
        lambda_value: λ, weight of the original distance (paper: 0.3).

    Returns:
        (n, n) float32 distances d*, smaller = more similar; the diagonal is +inf (an item is not its own
        neighbour).
    """
    x = l2_normalize(as_float32_matrix(embeddings, "embeddings"))
    n = x.shape[0]
    if n > KRECIPROCAL_MAX_ITEMS:
        raise ValueError(f"k-reciprocal re-ranking holds {n} x {n} distances; {n} items exceed the limit of "
                         f"{KRECIPROCAL_MAX_ITEMS}: re-rank a shortlist or use qe/dba")
    if not 1 <= k2 <= k1 < n:
        raise ValueError(f"need 1 <= k2 <= k1 < n; got k1={k1}, k2={k2}, n={n}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value={lambda_value} must be in [0, 1]")
    dist = (2 - 2 * (x @ x.t())).clamp(min=0).numpy().astype(np.float32)  # squared Euclidean of unit vectors
    # ranking of every item (itself first: distance 0), ties broken by index
    order = np.argsort(dist, axis=1, kind="stable")
    top = order[:, : k1 + 1]  # N(i, k1), itself included as in the paper's code and eq. 3

    def reciprocal(i: int, kk: int) -> np.ndarray:
        fwd = order[i, : kk + 1]
        back = order[fwd, : kk + 1]
        return fwd[(back == i).any(axis=1)]

    v = np.zeros((n, n), dtype=np.float32)
    half = int(round(k1 / 2))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = r
        for j in r:  # eq. 6: add R(j, k1/2) when more than 2/3 of it lies in R(i, k1)
            rj = reciprocal(int(j), half)
            if len(np.intersect1d(rj, r)) > 2 / 3 * len(rj):
                expanded = np.union1d(expanded, rj)
        expanded = np.unique(expanded)
        w = np.exp(-dist[i, expanded])
        v[i, expanded] = w / w.sum()  # eq. 7 with the paper's normalisation
    if k2 > 1:  # eq. 11: local query expansion over the k2 nearest
        v = v[top[:, :k2]].mean(axis=1)
    # Jaccard distance, eq. 10: 1 − Σ min(V_i, V_j) / Σ max(V_i, V_j); Σ max = Σ V_i + Σ V_j − Σ min
    mins = np.zeros((n, n), dtype=np.float32)
    for j in range(n):  # by column of V: only items with V[:, j] > 0 share mass on j
        holders = np.nonzero(v[:, j])[0]
        if holders.size:
            mins[:, holders] += np.minimum(v[:, j : j + 1], v[holders, j][None, :])
    sums = v.sum(axis=1)
    jaccard = 1 - mins / np.maximum(sums[:, None] + sums[None, :] - mins, 1e-12)
    final = (1 - lambda_value) * jaccard + lambda_value * dist / np.maximum(dist.max(axis=1, keepdims=True), 1e-12)
    np.fill_diagonal(final, np.inf)
    return final.astype(np.float32)


def ranking_metrics(nn: Any, labels: Any, *, ks: Sequence[int] = (1, 2, 4, 8)) -> Dict[str, float]:
    """Recall@K and MAP@R (SPEC.md §7, Musgrave et al. 2020) of a given ranking, self-search protocol.

    Args:
        nn: (n, m) gallery indices per query, best first, own item absent, m >= max(max(ks), largest R).
        labels: (n,) class ids. Queries with R = 0 are left out (as in retrieval_metrics).
    """
    nn = torch.as_tensor(np.asarray(nn), dtype=torch.int64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    _, cls = torch.unique(y, return_inverse=True)
    r = torch.bincount(cls)[cls] - 1
    if nn.shape[1] < max(max(ks), int(r.max())):
        raise ValueError(f"the ranking has {nn.shape[1]} columns; MAP@R and R@K need {max(max(ks), int(r.max()))}")
    rel = cls[nn] == cls[:, None]
    keep = r > 0
    rel, r = rel[keep], r[keep]
    out = {f"recall@{k}": float(rel[:, :k].any(dim=1).double().mean()) for k in ks}
    rank = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    rel_r = (rel & (rank[None, :] <= r[:, None])).double()
    out["map@r"] = float(((rel_r.cumsum(dim=1) / rank * rel_r).sum(dim=1) / r.double()).mean())
    return out


def rerank_metrics(embeddings: Any, labels: Any, *, method: str, ks: Sequence[int] = (1, 2, 4, 8), k: int = 2,
                   alpha: float = 3.0, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> Dict[str, float]:
    """R@K and MAP@R of the self-search after re-ranking with ``method`` (one of :data:`METHODS`).

    ``"qe"``: α-QE queries against the original items; ``"dba"``: DBA items as queries and gallery;
    ``"dba+qe"``: α-QE on top of DBA; ``"k_reciprocal"``: ranking by :func:`k_reciprocal_distances`.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    x = l2_normalize(as_float32_matrix(embeddings, "embeddings"))
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    depth = max(max(ks), int(np.bincount(np.unique(y, return_inverse=True)[1]).max()) - 1)
    if method == "k_reciprocal":
        d = k_reciprocal_distances(x, k1=k1, k2=k2, lambda_value=lambda_value)
        nn = np.argsort(d, axis=1, kind="stable")[:, :depth]
        return ranking_metrics(nn, y, ks=ks)
    g = x
    if method in ("dba", "dba+qe"):
        g = database_augmentation(x, k=k, alpha=alpha)
    q = g
    if method in ("qe", "dba+qe"):
        q = alpha_query_expansion(g, None, k=k, alpha=alpha)
    # query r is gallery item r: its own entry is excluded
    _, nn = topk_search(q, g, k=depth, exclude_self=True)
    return ranking_metrics(nn, y, ks=ks)
