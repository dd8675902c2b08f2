"""Exact top-k by inner product in blocked torch operations, on the embeddings' own device (GPU evaluation).

:func:`deepmetric.retrieval.knn.topk_search` sends CUDA tensors here, so embeddings that live on a GPU
are searched there (no copy of the n × d matrix to the host); on the CPU the faiss-heap engine stays the
default. The same function runs on CPU tensors (``engine="torch"`` of ``topk_search`` and
``retrieval_metrics``), which is how the normal test suite checks it against the faiss engine.

Algorithm: query blocks of ``block_size`` rows × gallery tiles of ``tile`` columns; each tile's
similarities are sorted (stable, descending) and merged with the running top-k (stable again, earlier
tiles first). Memory: block_size × (tile + k) similarities plus the (nq, k) result, whatever ng is.

Tie rule, the same as the faiss path and stricter: rows are sorted by decreasing similarity with equal
similarities in increasing gallery index, and of items tied at the k-th place the LOWER indices are kept
(stable sorts over tiles visited in index order). Results equal the CPU path's to float tolerance (the
products may differ in the last bits between devices and tile shapes).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["topk_search_torch"]


def topk_search_torch(queries: torch.Tensor, gallery: Optional[torch.Tensor] = None, *, k: int,
                      exclude_self: Optional[bool] = None, self_cols: Optional[torch.Tensor] = None,
                      block_size: int = 4096, tile: int = 8192) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of ``queries`` (nq, d) among ``gallery`` (ng, d) rows on their device.

    Args:
        queries / gallery: float tensors on one device (gallery None = the queries themselves).
        k: neighbours per query. exclude_self: query r is gallery item r and is skipped (default: True
            for a self-search, False otherwise).
        self_cols: (nq,) int64, the gallery index of each query (its entry is skipped) or -1, for query and
            gallery sets that partly overlap; replaces ``exclude_self``.
        block_size: query rows per block. tile: gallery columns per tile.

    Returns:
        (similarities float32 (nq, k), indices int64 (nq, k)) on the CPU, as :func:`topk_search`.
    """
    if not isinstance(queries, torch.Tensor) or queries.dim() != 2:
        raise ValueError(f"queries must be a 2-D torch tensor, got {type(queries).__name__}")
    q = queries.detach().float()
    g = q if gallery is None else gallery.detach().float().to(q.device)
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"queries have dimension d={q.shape[1]} but gallery has d={g.shape[1]}; embed both with the same model")
    if self_cols is not None:
        own = torch.as_tensor(self_cols, dtype=torch.int64).to(q.device)
        if own.shape != (q.shape[0],):
            raise ValueError(f"self_cols must have one entry per query ({q.shape[0]}), got shape {tuple(own.shape)}")
        exclude = bool((own >= 0).any())
    else:
        exclude = (gallery is None) if exclude_self is None else bool(exclude_self)
        if exclude and q.shape[0] > g.shape[0]:
            raise ValueError(f"exclude_self=True means query r is gallery item r, but there are {q.shape[0]} queries and {g.shape[0]} items")
        own = torch.arange(q.shape[0], device=q.device) if exclude else None
    available = g.shape[0] - int(exclude)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
        raise ValueError(f"k={k!r} must be an integer in [1, {available}] (gallery items per query)")
    if not torch.isfinite(q).all() or not torch.isfinite(g).all():
        raise ValueError("the embeddings hold NaN or infinite values; fix them before searching")
    nq, ng = q.shape[0], g.shape[0]
    out_v = torch.empty(nq, k, dtype=torch.float32)
    out_i = torch.empty(nq, k, dtype=torch.int64)
    for r0 in range(0, nq, block_size):
        qb = q[r0 : r0 + block_size]
        rows = None if own is None else own[r0 : r0 + qb.shape[0]]
        best_v = torch.empty(qb.shape[0], 0, device=q.device)
        best_i = torch.empty(qb.shape[0], 0, dtype=torch.int64, device=q.device)
        for c0 in range(0, ng, tile):
            s = qb @ g[c0 : c0 + tile].t()
            if rows is not None:
                local = rows - c0
                hit = (rows >= 0) & (local >= 0) & (local < s.shape[1])
                s[hit.nonzero().flatten(), local[hit]] = float("-inf")
            v, i = torch.sort(s, dim=1, descending=True, stable=True)  # ties: lower column first
            v, i = v[:, :k], i[:, :k] + c0
            # earlier tiles (lower indices) first, so the stable merge keeps them ahead of equal values
            v, order = torch.sort(torch.cat([best_v, v], dim=1), dim=1, descending=True, stable=True)
            best_v, best_i = v[:, :k], torch.cat([best_i, i], dim=1).gather(1, order[:, :k])
        out_v[r0 : r0 + qb.shape[0]] = best_v.cpu()
        out_i[r0 : r0 + qb.shape[0]] = best_i.cpu()
    return out_v, out_i
