"""Exact inner-product k-nearest-neighbour search that streams the gallery in blocks.

The engine behind every retrieval metric (:mod:`deepmetric.retrieval.metrics`) and the weighted kNN
classifier. Design:

* One boundary, :func:`as_float32_matrix`, turns numpy arrays or torch tensors into contiguous float32
  CPU tensors and checks their shape and finiteness; nothing past it re-checks.
* The similarity matrix is never materialised: tiles of ``block_size × TILE`` similarities (rows ×
  gallery columns) are computed with one ``torch.mm`` each and pushed into faiss's per-query min-heaps
  of size ``k`` (``faiss.float_minheap_array_t``), so memory is O(block_size·TILE + n·k) whatever n is.
* When the query set is the gallery (``gallery=None``) the matrix is symmetric: each pair of rows is
  multiplied ONCE, and the tile entries above the diagonal feed both their rows' heaps and, transposed,
  their columns' heaps: (n² + n·TILE)·d FLOPs instead of the 2·n²·d of a plain search.

Measured on the 2-core CPU machine (AVX-512, 340–380 GFLOP/s float32 matmul): a 4096 × 4096 block
of 512-d products takes ~48 ms; as whole blocks, the transpose copy added 39 ms and the two heap pushes
24 ms (64 MiB no longer fits in cache); in 512-wide tiles, the self-search at SOP size (60,502 rows,
k = 11) spends 5.5 s in products, 1.2 s in transposes and 1.0 s in heap pushes. Whole-pipeline timings
against PML and faiss ``IndexFlatIP.search``: ``benchmarks/results/eval.md``.

Ties: the result is deterministic (same inputs and ``block_size`` give the same output). Inside the
returned rows equal similarities are ordered by lower gallery index first; which of several items tied
exactly at the k-th place is kept is not specified. The float32 products of one pair can differ in the
last bit between tile shapes, so exact duplicates are not guaranteed to tie exactly here: callers that
must treat ties fairly (the metrics) re-score the affected rows with :func:`exact_similarity_rows`.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch

__all__ = ["ENGINES", "as_float32_matrix", "exact_similarity_rows", "resolve_engine", "topk_search"]

#: Gallery columns per similarity tile. A block_size × TILE tile (8 MiB at 4096 × 512) is pushed into
#: the heaps and transposed while it is still in cache; whole 4096 × 4096 blocks (64 MiB) made the
#: transpose copy alone cost 80% of the block's product (benchmarks/results/eval.md).
TILE = 512
#: rows per chunk of the tile transpose (see ``_transpose_into``)
_TRANSPOSE_CHUNK = 256
#: float64 entries of one chunk of :func:`exact_similarity_rows` (16 MiB) and gallery rows per conversion tile
_EXACT_CHUNK_ENTRIES = 1 << 21
_EXACT_TILE = 8192


#: search engines: "faiss" (CPU heaps), "torch" (blocked matmul + sort on the tensors' device), "auto"
ENGINES = ("auto", "faiss", "torch")


def resolve_engine(engine: str, x: Any) -> str:
    """``"auto"`` -> ``"torch"`` for a CUDA tensor, ``"faiss"`` otherwise; other names are checked."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not one of {ENGINES}: 'auto' searches CUDA tensors on their "
                         "device with torch and everything else with faiss on the CPU")
    if engine == "auto":
        return "torch" if isinstance(x, torch.Tensor) and x.is_cuda else "faiss"
    return engine


def as_float32_matrix(x: Any, name: str, *, keep_device: bool = False) -> torch.Tensor:
    """The one boundary: numpy array or torch tensor (n, d) -> contiguous float32 CPU tensor (n, d).

    Args:
        x: embeddings, shape (n, d), any real dtype, numpy or torch (any device).
        name: what to call ``x`` in error messages.
        keep_device: leave a tensor on its device (the torch engine) instead of moving it to the CPU.

    Returns:
        A contiguous float32 tensor on the CPU (no copy when ``x`` already is one), or on ``x``'s device
        with ``keep_device``.

    Raises:
        ValueError: ``x`` is not 2-D, has no columns, or holds NaN/inf values.
    """
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.dim() != 2 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D (n, d) matrix with d >= 1, got shape {tuple(t.shape)}")
    # faiss heaps read host memory, and the heaps hold float32: search in float32 on the CPU.
    t = t.to(device=t.device if keep_device else "cpu", dtype=torch.float32).contiguous()
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().cpu()
        raise ValueError(
            f"{name} holds {bad.numel()} row(s) with NaN or infinite values (first rows: {bad[:5].tolist()}); "
            "the model diverged or the embeddings were corrupted: fix them before searching"
        )
    return t


def _new_heaps(n: int, k: int) -> Tuple[Any, np.ndarray, np.ndarray]:
    """n empty min-heaps of size k (keep the k LARGEST values) over freshly allocated numpy storage."""
    import faiss  # imported here: keeps `import deepmetric.retrieval` light

    values = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    heaps = faiss.float_minheap_array_t()
    heaps.k, heaps.nh = k, n
    heaps.val, heaps.ids = faiss.swig_ptr(values), faiss.swig_ptr(ids)
    heaps.heapify()  # values := -FLT_MAX, ids := -1
    return heaps, values, ids


def _push(heaps: Any, block: torch.Tensor, col0: int, row0: int) -> None:
    """Offer block (rows row0.., columns col0..) to the heaps of those rows; ids are col0 + column."""
    import faiss

    rows, cols = block.shape
    heaps.addn(cols, faiss.swig_ptr(block.numpy()), col0, row0, rows)


def _mask_self(block: torch.Tensor, self_cols: Optional[torch.Tensor], row0: int, col0: int) -> None:
    """Set block[r, c] = -inf where query row0+r is gallery item col0+c (its own entry), in place."""
    if self_cols is None:
        return
    rows, cols = block.shape
    local = self_cols[row0 : row0 + rows] - col0
    hit = (local >= 0) & (local < cols)
    if bool(hit.any()):
        r = hit.nonzero().flatten()
        # -inf never enters a heap (strict comparison against -FLT_MAX), so the item itself is skipped.
        block[r, local[r]] = float("-inf")


def _sorted_result(values: np.ndarray, ids: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """Heaps -> rows sorted by similarity descending, equal similarities by lower index first."""
    order = np.lexsort((ids, -values), axis=-1)
    return (torch.from_numpy(np.take_along_axis(values, order, axis=1)),
            torch.from_numpy(np.take_along_axis(ids, order, axis=1)))


def _tile_width(block_size: int) -> int:
    return min(TILE, block_size)


def _transpose_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst (c, r) := src (r, c).T, in chunks of rows whose reads and writes stay in cache (measured: a
    30,000-row self-search runs 7-10% faster than with one ``copy_`` per 4096 x 512 tile)."""
    for r0 in range(0, src.shape[0], _TRANSPOSE_CHUNK):
        dst[:, r0 : r0 + _TRANSPOSE_CHUNK].copy_(src[r0 : r0 + _TRANSPOSE_CHUNK].t())


def _symmetric_topk(x: torch.Tensor, k: int, exclude_self: bool, block_size: int):
    """Self-search over the rows of x (n, d): every pair of rows is multiplied once.

    The columns are cut into tiles of width w. For tile [c0, c1) only the rows r < c1 are multiplied,
    in row blocks of ``block_size``: the rows r < c0 lie strictly above the diagonal, so their tile
    entries also feed, transposed, the heaps of rows c0..c1 (pair (r, c) is never multiplied again as
    (c, r)); the rows c0..c1 form the w × w diagonal square, whose row pushes alone cover both orders.
    Work: Σ_tiles c1·w ≈ (n² + n·w)/2 products, memory two block_size × w tiles.
    """
    n = x.shape[0]
    heaps, values, ids = _new_heaps(n, k)
    w = _tile_width(block_size)
    buf = torch.empty(min(block_size, n) * min(w, n))  # S tile, reused: the only large buffers
    buf_t = torch.empty(min(block_size, n) * min(w, n))  # its transpose, contiguous for the heaps
    self_cols = torch.arange(n) if exclude_self else None
    for c0 in range(0, n, w):
        c1 = min(c0 + w, n)
        xc = x[c0:c1]
        for r0 in range(0, c1, block_size):
            r1 = min(r0 + block_size, c1)
            s = buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            torch.mm(x[r0:r1], xc.t(), out=s)
            _mask_self(s, self_cols, r0, c0)  # only rows of the diagonal square can hit themselves
            _push(heaps, s, c0, r0)
            above = min(r1, c0) - r0  # rows strictly above the diagonal square
            if above > 0:
                # The same numbers seen from the tile's rows: s.T, so (c, r) is never multiplied.
                s_t = buf_t[: above * (c1 - c0)].view(c1 - c0, above)
                _transpose_into(s_t, s[:above])
                _push(heaps, s_t, r0, c0)
    heaps.reorder()
    return _sorted_result(values, ids)


def _gallery_topk(q: torch.Tensor, g: torch.Tensor, k: int, self_cols: Optional[torch.Tensor], block_size: int):
    """Search queries q (nq, d) in gallery g (ng, d); self_cols[r] = gallery index of query r or -1.

    Row blocks of ``block_size`` queries against gallery tiles of width w (the tile stays in cache while
    it is pushed into the heaps).
    """
    nq, ng = q.shape[0], g.shape[0]
    heaps, values, ids = _new_heaps(nq, k)
    w = _tile_width(block_size)
    buf = torch.empty(min(block_size, nq) * min(w, ng))
    for i0 in range(0, nq, block_size):
        qi = q[i0 : i0 + block_size]
        for j0 in range(0, ng, w):
            gj = g[j0 : j0 + w]
            s = buf[: len(qi) * len(gj)].view(len(qi), len(gj))
            torch.mm(qi, gj.t(), out=s)
            _mask_self(s, self_cols, i0, j0)
            _push(heaps, s, j0, i0)
    heaps.reorder()
    return _sorted_result(values, ids)


def _check_k_and_block(k: Any, block_size: Any, available: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got k={k!r}")
    if k > available:
        raise ValueError(f"k={k} neighbours asked for, but {what} has only {available}; lower k")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got block_size={block_size!r}")


def topk_search(
    queries: Any,
    gallery: Any = None,
    *,
    k: int,
    exclude_self: Optional[bool] = None,
    block_size: int = 4096,
    engine: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product, streaming the gallery in blocks (bounded memory).

    For unit-norm rows the inner product is the cosine similarity s(a, b) of SPEC.md §7; this function
    does NOT normalise (callers such as :func:`~deepmetric.retrieval.metrics.retrieval_metrics` do).

    Args:
        queries: query embeddings, shape (nq, d), numpy or torch, any float dtype.
        gallery: gallery embeddings, shape (ng, d); ``None`` means the queries are the gallery, which
            takes the symmetric path (each pair of rows is multiplied once and used for both rows:
            (n² + n·TILE)·d FLOPs instead of 2·n²·d).
        k: number of neighbours per query; at most ng (ng − 1 when excluding self).
        exclude_self: drop each query's own entry from its neighbours. Defaults to True when
            ``gallery is None`` and False otherwise. With a gallery, True means query r IS gallery item r
            (the queries are the first nq gallery rows), so it needs nq <= ng.
        block_size: query rows per similarity tile (tiles are ``block_size × min(block_size, TILE)``);
            peak extra memory is about 2·block_size·TILE·4 bytes plus n·k·12 bytes for the heaps.
        engine: ``"auto"`` (default: CUDA tensors -> ``"torch"``, the rest -> ``"faiss"``), ``"faiss"``
            (CPU heaps, below) or ``"torch"`` (:func:`~deepmetric.retrieval.knn_torch.topk_search_torch`
            on the queries' device, also on the CPU, which is how its equality with faiss is tested).

    Returns:
        ``(similarities, indices)``: float32 (nq, k) sorted descending per row, and int64 (nq, k) gallery
        indices. Equal similarities within a row are ordered by lower index first; which of several
        items tied exactly at the k-th place is kept is deterministic but unspecified.

    Raises:
        ValueError: bad shapes, NaN/inf values, dimension mismatch, k or block_size out of range.

    Queries on a CUDA device are searched there by :func:`~deepmetric.retrieval.knn_torch.topk_search_torch`
    (blocked matmul + top-k, bounded memory, the same tie rule); the CPU default stays this faiss engine.
    """
    if resolve_engine(engine, queries) == "torch":
        from deepmetric.retrieval.knn_torch import topk_search_torch

        q = as_float32_matrix(queries, "queries", keep_device=True)
        g = None if gallery is None else as_float32_matrix(gallery, "gallery", keep_device=True)
        return topk_search_torch(q, g, k=k, exclude_self=exclude_self, block_size=block_size)
    q = as_float32_matrix(queries, "queries")
    if gallery is None:
        exclude = True if exclude_self is None else bool(exclude_self)
        _check_k_and_block(k, block_size, q.shape[0] - int(exclude),
                           "the query set (= gallery" + (", self excluded)" if exclude else ")"))
        return _symmetric_topk(q, int(k), exclude, int(block_size))

    g = as_float32_matrix(gallery, "gallery")
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"queries have dimension d={q.shape[1]} but gallery has d={g.shape[1]}; "
                         "embed both with the same model")
    exclude = False if exclude_self is None else bool(exclude_self)
    self_cols = None
    if exclude:
        if q.shape[0] > g.shape[0]:
            raise ValueError(f"exclude_self=True with a gallery means query r is gallery item r, but there are "
                             f"{q.shape[0]} queries and only {g.shape[0]} gallery items; pass gallery=None "
                             "for a self-search or exclude_self=False")
        self_cols = torch.arange(q.shape[0])
    _check_k_and_block(k, block_size, g.shape[0] - int(exclude),
                       "the gallery" + (" (self excluded)" if exclude else ""))
    return _gallery_topk(q, g, int(k), self_cols, int(block_size))


def topk_search_with_self_map(
    queries: torch.Tensor, gallery: torch.Tensor, *, k: int, self_cols: torch.Tensor, block_size: int = 4096,
    engine: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_search` where query r is gallery item ``self_cols[r]`` (−1: not in the gallery).

    For query and gallery sets that partly overlap; inputs must already have passed the boundary
    (:func:`as_float32_matrix`) and k be at most the smallest number of other gallery items.
    """
    if resolve_engine(engine, queries) == "torch":
        from deepmetric.retrieval.knn_torch import topk_search_torch

        return topk_search_torch(queries, gallery, k=int(k), self_cols=self_cols, block_size=block_size)
    _check_k_and_block(k, block_size, gallery.shape[0] - int(bool((self_cols >= 0).any())), "the gallery")
    return _gallery_topk(queries, gallery, int(k), self_cols.to(torch.int64), int(block_size))


def exact_similarity_rows(queries: torch.Tensor, gallery: torch.Tensor, *, self_cols: Optional[torch.Tensor] = None,
                          max_entries: int = _EXACT_CHUNK_ENTRIES):
    """Full similarity rows in float64, in chunks of queries (bounded memory): for re-scoring tied rows.

    Every entry of a row comes from one float64 product of the float32 inputs, so exact duplicates in the
    gallery get values equal to ~1e-16 (the blocked float32 search only guarantees ~1e-7).

    Args:
        queries: (nq, d) float32 tensor that passed :func:`as_float32_matrix` (any device: S is made there).
        gallery: (ng, d) float32 tensor, same d and device.
        self_cols: (nq,) int64, gallery index of each query (its entry becomes -inf) or -1; None = none.
        max_entries: float64 entries per yielded chunk (rows = max(1, max_entries // ng)).

    Yields:
        ``(r0, r1, S)``: S is float64 (r1 - r0, ng), S[i, j] = <queries[r0 + i], gallery[j]>.
    """
    nq, ng = queries.shape[0], gallery.shape[0]
    rows = max(1, int(max_entries) // max(ng, 1))
    for r0 in range(0, nq, rows):
        r1 = min(r0 + rows, nq)
        q64 = queries[r0:r1].double()
        s = torch.empty(r1 - r0, ng, dtype=torch.float64, device=queries.device)
        for j0 in range(0, ng, _EXACT_TILE):
            s[:, j0 : j0 + _EXACT_TILE] = q64 @ gallery[j0 : j0 + _EXACT_TILE].double().t()
        if self_cols is not None:
            own = self_cols[r0:r1].to(s.device)
            hit = (own >= 0).nonzero().flatten()
            s[hit, own[hit]] = float("-inf")
        yield r0, r1, s
