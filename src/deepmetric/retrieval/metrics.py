"""Retrieval and clustering metrics of SPEC.md §7 and the weighted kNN classifier of SPEC.md §1.

Everything here is a pure function of (embeddings, labels): embeddings are L2-normalised at the boundary
(so the inner product is the cosine similarity), the neighbours come from the blocked exact search in
:mod:`deepmetric.retrieval.knn`, and only an (n, k) neighbour table is ever held, with k chosen from the
data (never the n × n matrix that makes PML's default ``k`` run out of memory).

Conventions (identical to pytorch-metric-learning 2.9 ``AccuracyCalculator``, checked by the tests):

* Query set = gallery set (no masks, or equal masks): a query is excluded from its own gallery
  (PML's ``ref_includes_query=True``). Disjoint masks (In-Shop query/gallery): nothing is excluded.
  Partly overlapping masks: a query never retrieves itself, other items are all candidates.
* R of a query = number of OTHER items of its class in the gallery.
* Queries with R = 0 cannot retrieve anything relevant; like PML's "lone query labels" they are left out
  of EVERY retrieval metric (PML skips them for precision@1, MAP@R and R-precision; we do the same for
  Recall@K so all numbers are averages over the same queries).

Ties (SPEC.md §7). Datasets store items sorted by class, so ordering equal similarities by storage
position would reward a collapsed model (all-identical embeddings scored MAP@R 0.87 that way). Every
number here is instead the EXACT EXPECTATION over a uniformly random order of tied items:

* Similarities within :data:`TIE_TOLERANCE` of each other (chained: sorted values whose consecutive gaps
  are all <= the tolerance) form one tie group; a group of m items holding t relevant ones occupies a
  block of ranks whose relevant slots are a uniformly random t-subset of its m slots.
* With p = t/m and q = t(t−1)/(m(m−1)) for the group of rank i, o = i's offset in its group (1-based) and
  B = relevant items in the groups before it: E[rel(i)] = p and E[rel(i)·Σ_{j<=i} rel(j)] =
  p·(1 + B) + (o − 1)·q, which gives R-precision and MAP@R term by term; Recall@K = 1 when B > 0 at rank K,
  else 1 − C(m−t, o)/C(m, o) (no relevant item among the o slots the group gets before K).
* The blocked float32 search may give two equal pairs values that differ in the last bit, so the
  similarities of each query's top k are recomputed in float64 and re-sorted before grouping. The group
  that straddles the last searched rank is counted over the WHOLE gallery (its members beyond the top k
  included): rows whose float32 k-th and (k+1)-th values are closer than :data:`_NEAR_TIE_GAP` are
  re-scored in float64 against the whole gallery
  (:func:`~deepmetric.retrieval.knn.exact_similarity_rows`). Rows without ties get the numbers of the
  plain sorted order (PML agreement holds).
* Weighted kNN accuracy: the items tied at the k-th place share the remaining vote slots (each of the m
  votes with weight w·j/m for the j slots left: the expected vote), and a query whose top classes tie
  counts 1/(number of tied classes) if its class is among them (the expected accuracy of a random pick).
* NMI: k-means assigns a point by its coordinates only (nearest centroid; faiss breaks a centroid tie by
  the lower centroid id, which no label decides), so duplicates share a cluster and a collapsed
  embedding scores NMI 0 whatever the order.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from deepmetric.functional.similarity import l2_normalize
from deepmetric.retrieval.knn import (as_float32_matrix, exact_similarity_rows, resolve_engine, topk_search,
                                      topk_search_with_self_map)

__all__ = ["retrieval_metrics", "knn_accuracy", "nmi_score", "kmeans_assign", "KMEANS_NITER", "TIE_TOLERANCE"]

#: k-means iterations for NMI/AMI (faiss's and PML's default: 20). Documented and fixed so numbers repeat.
KMEANS_NITER = 20
#: entries of the dense (queries × classes) vote table of knn_accuracy per chunk (~32 MiB of float64)
_VOTE_TABLE_ENTRIES = 1 << 22
#: cosine similarities closer than this are ties (float64, on the L2-normalised float32 embeddings): two
#: float32 units in the last place at 1.0 (2^-22), which float32 embeddings cannot resolve, so duplicates
#: embedded in different batches (equal up to float32 rounding) tie
TIE_TOLERANCE = 2.0 ** -22
#: float32 gaps at most this large send a row to the float64 re-scoring: TIE_TOLERANCE plus twice the
#: float32 error of a similarity (measured at most 1.1e-7 = one float32 ulp at 1.0 for d = 512), doubled
_NEAR_TIE_GAP = 1e-6
#: relative difference under which two classes' kNN votes are tied
_VOTE_TIE_RTOL = 1e-9


# ------------------------------------------------------------------------------------------ boundary


def _as_labels(labels: Any, n: int, name: str = "labels") -> torch.Tensor:
    """Integer class labels (n,) from numpy or torch -> int64 CPU tensor, checked against n."""
    t = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (n,), got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}; cast them with .long()")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries but there are {n} embeddings; "
                         "pass one label per embedding row")
    return t.to(torch.int64)


def _as_mask(mask: Any, n: int, name: str) -> torch.Tensor:
    """Boolean selection mask (n,) or None (= everything) -> bool CPU tensor."""
    if mask is None:
        return torch.ones(n, dtype=torch.bool)
    t = mask.detach().cpu() if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
    if t.dtype != torch.bool:
        raise ValueError(f"{name} must be a boolean mask, got dtype {t.dtype}; "
                         "build it with e.g. `split == 'query'`")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (one flag per embedding), got {tuple(t.shape)}")
    return t


def _check_ks(ks: Any) -> Tuple[int, ...]:
    try:
        out = tuple(ks)
    except TypeError:
        raise ValueError(f"ks must be a sequence of positive integers such as (1, 2, 4, 8), got {ks!r}") from None
    if not out or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in out):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return tuple(sorted(set(int(v) for v in out)))


# ------------------------------------------------------------------------------------------ clustering


def kmeans_assign(embeddings: torch.Tensor, num_clusters: int, *, seed: int = 0,
                  niter: int = KMEANS_NITER) -> np.ndarray:
    """Cluster id (n,) of each row after faiss k-means (Lloyd, ``niter`` iterations, fixed ``seed``).

    faiss defaults otherwise, as PML's ``FaissKMeans``: at most 256 training points per centroid are
    sampled (with ``seed``) when n is larger, then every row is assigned to its nearest centroid.
    """
    import faiss  # imported here: keeps `import deepmetric.retrieval` light

    x = np.ascontiguousarray(embeddings.numpy(), dtype=np.float32)
    if not 1 <= num_clusters <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= num_clusters <= n, got num_clusters={num_clusters}, n={x.shape[0]}")
    # min_points_per_centroid=1 only silences faiss's "please provide more points" warning (SOP has ~5
    # points per class); it changes no computation.
    km = faiss.Kmeans(x.shape[1], int(num_clusters), niter=int(niter), seed=int(seed), verbose=False,
                      min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0]


def _cluster_scores(x: torch.Tensor, y: torch.Tensor, *, seed: int, ami: bool) -> Dict[str, float]:
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    truth = y.numpy()
    pred = kmeans_assign(x, int(torch.unique(y).numel()), seed=seed)
    out = {"nmi": float(normalized_mutual_info_score(truth, pred, average_method="arithmetic"))}
    if ami:
        out["ami"] = float(adjusted_mutual_info_score(truth, pred, average_method="arithmetic"))
    return out


def nmi_score(embeddings: Any, labels: Any, *, seed: int = 0) -> float:
    """Normalised mutual information between k-means clusters and classes (SPEC.md §7).

    k-means (faiss, :data:`KMEANS_NITER` iterations, ``seed``) on the L2-normalised embeddings with as
    many clusters as distinct labels; NMI with arithmetic normalisation (scikit-learn).

    Args:
        embeddings: (n, d) numpy or torch.
        labels: (n,) integer class ids.
        seed: k-means seed (same seed, same number).

    Returns:
        NMI in [0, 1].
    """
    x = l2_normalize(as_float32_matrix(embeddings, "embeddings"))
    y = _as_labels(labels, x.shape[0])
    return _cluster_scores(x, y, seed=seed, ami=False)["nmi"]


# ------------------------------------------------------------------------------------------ ties


def _near_tie_rows(sims: torch.Tensor, k: int) -> torch.Tensor:
    """Rows of a float32 top-(k+1) table whose k-th and (k+1)-th values are closer than _NEAR_TIE_GAP
    (the k-th place may tie with items past it); none when only k neighbours exist."""
    if sims.shape[1] <= k:
        return torch.zeros(0, dtype=torch.int64)
    return ((sims[:, k - 1] - sims[:, k]) <= _NEAR_TIE_GAP).nonzero().flatten()


def _float64_resorted(xq: torch.Tensor, xg: torch.Tensor, rows: torch.Tensor, nn: torch.Tensor):
    """Similarities of each row's neighbours recomputed in float64 and re-sorted (descending), in chunks.

    Returns ``(vals, nn)``, (N, k) float64 and int64. With the k-th place untied (gap above
    _NEAR_TIE_GAP) the top-k SET is exact; this makes its order and its ties exact too.
    """
    n_rows, k = nn.shape
    vals = torch.empty(n_rows, k, dtype=torch.float64)
    chunk = max(1, (1 << 21) // max(1, k * xq.shape[1]))
    dev = xq.device  # the embeddings' device (torch engine on CUDA); the result comes back to the CPU
    for a in range(0, n_rows, chunk):
        q = xq[rows[a : a + chunk].to(dev)].double()[:, :, None]
        vals[a : a + chunk] = torch.bmm(xg[nn[a : a + chunk].to(dev)].double(), q)[:, :, 0].cpu()
    vals, order = vals.sort(dim=1, descending=True, stable=True)
    return vals, nn.gather(1, order)


def _group_starts(vals: torch.Tensor) -> torch.Tensor:
    """(N, k) bool: rank i opens a new tie group (its gap to rank i-1 exceeds TIE_TOLERANCE)."""
    start = torch.ones_like(vals, dtype=torch.bool)
    start[:, 1:] = (vals[:, :-1] - vals[:, 1:]) > TIE_TOLERANCE
    return start


def _rescored(q: torch.Tensor, g: torch.Tensor, self_cols: Optional[torch.Tensor], k: int):
    """Float64 re-scoring of possibly tied rows against the whole gallery, in bounded chunks.

    Yields ``(a, b, s, top, top_idx, members, hi)`` for query rows a..b: their float64 similarities to the
    whole gallery s (b−a, ng) (own entry −inf), the k largest (descending) and their gallery indices,
    ``members`` (b−a, ng) bool, the gallery items of the tie group that holds the k-th place, counted over
    the whole gallery (chained down past rank k), and ``hi`` (b−a, 1), that group's largest similarity
    (items above it are the earlier groups, all inside the top k). Computed on the embeddings' device,
    yielded on the CPU (each chunk is bounded by :func:`~deepmetric.retrieval.knn.exact_similarity_rows`).
    """
    for a, b, s in exact_similarity_rows(q, g, self_cols=self_cols):
        s = s.cpu()
        top, top_idx = torch.topk(s, k, dim=1)
        start = _group_starts(top)
        last_open = torch.cummax(torch.where(start, torch.arange(k), 0), dim=1).values[:, -1]
        hi = top.gather(1, last_open[:, None])  # top of the group at rank k
        lo = top[:, -1:].clone()
        while True:  # chain the group down: members within TIE_TOLERANCE of its current lowest value
            below = (s < lo) & (s >= lo - TIE_TOLERANCE)
            grow = below.any(dim=1)
            if not bool(grow.any()):
                break
            lo = torch.where(grow[:, None], torch.where(below, s, lo).min(dim=1, keepdim=True).values, lo)
        yield a, b, s, top, top_idx, (s >= lo) & (s <= hi), hi


def _expected_retrieval(vals: torch.Tensor, rel: torch.Tensor, r: torch.Tensor, m_last: torch.Tensor,
                        t_last: torch.Tensor, ks: Tuple[int, ...]) -> Dict[str, float]:
    """Expected Recall@K, precision@1, MAP@R, R-precision over uniformly random orders of tied items.

    Args:
        vals: (N, k) float64 similarities, descending per row (k >= max(ks) and k >= R).
        rel: (N, k) bool, rank i's item has the query's class.
        r: (N,) float64 R of each query (>= 1).
        m_last, t_last: (N,) size and relevant count of the tie group at rank k over the WHOLE gallery;
            NaN where it has no member past rank k (then the top-k counts are used).
    See the module docstring for the formulas. Rows without any tie take the plain formulas (the same
    numbers, fewer operations: they are nearly all rows of real embeddings).
    """
    start = _group_starts(vals)
    grouped = (~start.all(dim=1)) | ~torch.isnan(m_last)
    plain = ~grouped
    sums = _per_query_plain(rel[plain], r[plain], ks) if bool(plain.any()) else {}
    if bool(grouped.any()):
        g = _per_query_grouped(start[grouped], rel[grouped], r[grouped], m_last[grouped], t_last[grouped], ks)
        sums = {key: sums.get(key, 0.0) + g[key] for key in g}
    return {key: value / rel.shape[0] for key, value in sums.items()}


def _per_query_plain(rel: torch.Tensor, r: torch.Tensor, ks: Tuple[int, ...]) -> Dict[str, float]:
    """Sums over rows WITHOUT ties of the metrics of their one order (SPEC.md §7 as written)."""
    k = rel.shape[1]
    out = {f"recall@{kk}": float(rel[:, :kk].any(dim=1).double().sum()) for kk in ks}
    out["precision@1"] = float(rel[:, 0].double().sum())
    rank = torch.arange(1, k + 1, dtype=torch.float64)
    rel_r = (rel & (rank[None, :] <= r[:, None])).double()  # only the first R neighbours count
    out["map@r"] = float(((rel_r.cumsum(dim=1) / rank * rel_r).sum(dim=1) / r).sum())
    out["r_precision"] = float((rel_r.sum(dim=1) / r).sum())
    return out


def _per_query_grouped(start: torch.Tensor, rel: torch.Tensor, r: torch.Tensor, m_last: torch.Tensor,
                       t_last: torch.Tensor, ks: Tuple[int, ...]) -> Dict[str, float]:
    """Sums over rows WITH ties of the expected metrics (module docstring); ``start`` from _group_starts."""
    n_rows, k = rel.shape
    ranks = torch.arange(k)
    ones = torch.ones(n_rows, k, dtype=torch.float64)
    gid = start.long().cumsum(dim=1) - 1
    m = torch.zeros(n_rows, k, dtype=torch.float64).scatter_add_(1, gid, ones).gather(1, gid)
    t = torch.zeros(n_rows, k, dtype=torch.float64).scatter_add_(1, gid, rel.double()).gather(1, gid)
    last = (gid == gid[:, -1:]) & ~torch.isnan(m_last)[:, None]
    m = torch.where(last, m_last[:, None], m)
    t = torch.where(last, t_last[:, None], t)
    p = t / m
    q = torch.where(m > 1, t * (t - 1) / (m * (m - 1)).clamp_min(1), torch.zeros_like(m))
    first = torch.cummax(torch.where(start, ranks, 0), dim=1).values  # rank where i's group opens
    offset = (ranks - first + 1).double()  # o, 1-based
    before = (rel.double().cumsum(dim=1) - rel.double()).gather(1, first)  # B: relevant in earlier groups

    out: Dict[str, float] = {}
    for kk in ks:
        i = kk - 1
        mm, tt, j = m[:, i], t[:, i], offset[:, i]
        free = mm - tt  # irrelevant members of the group: all o slots must come from them for a miss
        log_miss = (torch.lgamma(free + 1) - torch.lgamma((free - j).clamp_min(0) + 1)
                    - torch.lgamma(mm + 1) + torch.lgamma(mm - j + 1))
        miss = torch.where(free >= j, log_miss.exp(), torch.zeros_like(mm))
        out[f"recall@{kk}"] = float(torch.where(before[:, i] > 0, torch.ones_like(mm), 1 - miss).sum())
    out["precision@1"] = float(p[:, 0].sum())
    rank1 = (ranks + 1).double()
    within = (rank1[None, :] <= r[:, None]).double()  # only the first R ranks count
    out["map@r"] = float((((p * (1 + before) + (offset - 1) * q) / rank1 * within).sum(dim=1) / r).sum())
    out["r_precision"] = float(((p * within).sum(dim=1) / r).sum())
    return out

# ------------------------------------------------------------------------------------------ retrieval


def retrieval_metrics(
    embeddings: Any,
    labels: Any,
    *,
    query_mask: Any = None,
    gallery_mask: Any = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    nmi: bool = True,
    ami: bool = False,
    seed: int = 0,
    block_size: int = 4096,
    engine: str = "auto",
) -> Dict[str, float]:
    """Recall@K, precision@1, MAP@R, R-precision and NMI (SPEC.md §7; Musgrave et al., ECCV 2020).

    For a query q with class y_q, neighbours n_1, n_2, … by decreasing cosine similarity, rel(i) = 1 when
    n_i has class y_q, and R = number of other gallery items of class y_q:

    * Recall@K = 1 if rel(i) = 1 for some i <= K (averaged over queries);
    * precision@1 = rel(1);
    * R-precision = (1/R) Σ_{i<=R} rel(i);
    * MAP@R = (1/R) Σ_{i<=R} P(i)·rel(i), P(i) = (1/i) Σ_{j<=i} rel(j)  (Musgrave et al. 2020, eq. 1).

    Args:
        embeddings: (n, d) numpy or torch; L2-normalised here (cosine similarity).
        labels: (n,) integer class ids.
        query_mask: (n,) bool, rows used as queries; None = all.
        gallery_mask: (n,) bool, rows searched; None = all. Equal to ``query_mask`` (or both None):
            a query is excluded from its own gallery; disjoint (In-Shop): nothing is excluded.
        ks: the K of Recall@K.
        nmi: also cluster the query set (faiss k-means, one cluster per class, ``seed``) and report NMI.
        ami: also report adjusted mutual information from the same clustering.
        seed: k-means seed.
        block_size: query rows per tile of the exact search (memory ≈ 2·block_size·512·4 bytes).
        engine: ``"auto"`` (default): CUDA embeddings stay on their device and are searched there by the
            blocked torch engine (the float64 re-scoring of tied rows runs there too; only (n, k) tables
            and bounded chunks come to the CPU, and the k-means of NMI copies the query set to the CPU);
            anything else uses the faiss engine on the CPU. ``"torch"`` / ``"faiss"`` force one (the
            torch engine also runs on CPU tensors). Both give the same numbers to float tolerance.

    Returns:
        ``{"recall@K" for K in ks, "precision@1", "map@r", "r_precision", "nmi"?, "ami"?}`` as floats.
        Retrieval numbers average over queries with R >= 1 and are expectations over the order of tied
        items (see module docstring). The number of neighbours searched is ``max(max(ks), largest R) + 1``:
        enough for MAP@R and R-precision, plus one to see whether the last place is tied.

    Raises:
        ValueError: shape mismatch, NaN/inf embeddings, bad masks, empty query or gallery set, K larger
            than the gallery, or no query with any same-class item in the gallery.
    """
    engine = resolve_engine(engine, embeddings)
    x = as_float32_matrix(embeddings, "embeddings", keep_device=engine == "torch")
    n = x.shape[0]
    y = _as_labels(labels, n)
    qm = _as_mask(query_mask, n, "query_mask")
    gm = _as_mask(gallery_mask, n, "gallery_mask")
    ks = _check_ks(ks)
    nq, ng = int(qm.sum()), int(gm.sum())
    if nq == 0:
        raise ValueError("the query set is empty (query_mask selects no row); select at least one query")
    if ng == 0:
        raise ValueError("the gallery is empty (gallery_mask selects no row); select at least one gallery item")
    x = l2_normalize(x)  # cosine similarity = inner product of unit vectors

    q_idx, g_idx = qm.nonzero().flatten(), gm.nonzero().flatten()
    _, cls = torch.unique(y, return_inverse=True)  # class ids 0..U-1 for bincount
    g_count = torch.bincount(cls[g_idx], minlength=int(cls.max()) + 1)
    q_in_gallery = gm[q_idx]
    r = g_count[cls[q_idx]] - q_in_gallery.long()  # OTHER same-class gallery items of each query
    scored = r > 0
    if not bool(scored.any()):
        raise ValueError(f"none of the {nq} queries has another item of its class in the gallery "
                         f"({ng} items), so no retrieval metric is defined; check the masks and labels")

    same_set = torch.equal(qm, gm)
    available = ng - int(bool(q_in_gallery.any()))
    if ks[-1] > available:
        raise ValueError(f"ks={ks} asks for {ks[-1]} neighbours but the gallery offers only {available} "
                         "per query; drop the large K")
    k = max(ks[-1], int(r.max()))  # r.max() <= available always
    k_search = min(k + 1, available)  # one more: is the k-th place tied with what follows?
    xq = x[q_idx.to(x.device)]
    xg = xq if same_set else x[g_idx.to(x.device)]
    if same_set:
        self_cols = torch.arange(nq)
        sims, nn = topk_search(xq, None, k=k_search, exclude_self=True, block_size=block_size, engine=engine)
    elif not bool(q_in_gallery.any()):
        self_cols = None
        sims, nn = topk_search(xq, xg, k=k_search, exclude_self=False, block_size=block_size, engine=engine)
    else:  # partial overlap: each query's own gallery position, -1 if it is not in the gallery
        pos = torch.full((n,), -1, dtype=torch.int64)
        pos[g_idx] = torch.arange(ng)
        self_cols = pos[q_idx]
        sims, nn = topk_search_with_self_map(xq, xg, k=k_search, self_cols=self_cols, block_size=block_size,
                                             engine=engine)

    cls_q, cls_g = cls[q_idx], cls[g_idx]
    rows = scored.nonzero().flatten()
    vals, nn_k = sims[rows, :k].double(), nn[rows, :k]
    close = ((sims[rows, :-1] - sims[rows, 1:]) <= _NEAR_TIE_GAP).any(dim=1).nonzero().flatten()
    if close.numel():  # equal pairs may differ in the last float32 bit: their top k in float64, re-sorted
        vals[close], nn_k[close] = _float64_resorted(xq, xg, rows[close], nn_k[close])
    rel = cls_g[nn_k] == cls_q[rows][:, None]
    m_last = torch.full((rows.numel(),), float("nan"), dtype=torch.float64)  # NaN: no member past rank k
    t_last = m_last.clone()
    tied = _near_tie_rows(sims[rows], k)  # the k-th place may tie with items past k
    if tied.numel():
        cols = None if self_cols is None else self_cols[rows[tied]]
        for a, b, _, top, top_idx, members, _ in _rescored(xq[rows[tied].to(xq.device)], xg, cols, k):
            sel = tied[a:b]
            same = cls_g[None, :] == cls_q[rows[sel]][:, None]
            vals[sel] = top
            rel[sel] = cls_g[top_idx] == cls_q[rows[sel]][:, None]
            m_last[sel] = members.sum(dim=1).double()
            t_last[sel] = (members & same).sum(dim=1).double()
    out = _expected_retrieval(vals, rel, r[scored].double(), m_last, t_last, ks)
    if nmi or ami:
        scores = _cluster_scores(xq.cpu(), y[q_idx], seed=seed, ami=ami)  # faiss k-means: host memory
        out.update(scores if nmi else {"ami": scores["ami"]})
    return out


# ------------------------------------------------------------------------------------------ kNN classifier


def knn_accuracy(
    train_emb: Any,
    train_labels: Any,
    test_emb: Any,
    test_labels: Any,
    *,
    k: int = 200,
    temperature: float = 0.1,
    block_size: int = 4096,
    exclude_self: bool = False,
    engine: str = "auto",
) -> float:
    """Top-1 accuracy of the weighted kNN classifier (Wu et al. CVPR 2018 §3.4; Ye et al. CVPR 2019 §4.1).

    Each test item's k most similar training items (cosine s_i) vote for their class c_i with weight
    w_i = exp(s_i / τ); the prediction is argmax_c Σ_{i: c_i = c} w_i. Ties (module docstring): the m items
    tied at the k-th place share its j remaining slots (each votes w_i·j/m, the expected vote over tie
    orders), and a query whose top classes tie scores 1/(number tied) when its class is among them.

    Args:
        train_emb: (n_train, d) memory bank embeddings; L2-normalised here.
        train_labels: (n_train,) integer class ids.
        test_emb: (n_test, d) embeddings to classify; L2-normalised here.
        test_labels: (n_test,) integer class ids.
        k: neighbours that vote (paper: 200); at most n_train.
        temperature: τ of the vote weights (paper: 0.1), > 0.
        block_size: block of the exact search.
        exclude_self: leave-one-out: the memory IS the test set (same rows, same order) and each item's
            own entry does not vote — the protocol for unseen classes, where the training split has other
            classes than the evaluated one.
        engine: kNN search engine, as in :func:`retrieval_metrics` (``"auto"``: CUDA tensors on their device).

    Returns:
        Expected fraction of test items whose predicted class equals their label, in [0, 1].
    """
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 (paper: 0.1), got {temperature!r}")
    engine = resolve_engine(engine, test_emb)
    keep = engine == "torch"
    train = l2_normalize(as_float32_matrix(train_emb, "train_emb", keep_device=keep))
    test = l2_normalize(as_float32_matrix(test_emb, "test_emb", keep_device=keep).to(train.device))
    y_train = _as_labels(train_labels, train.shape[0], "train_labels")
    y_test = _as_labels(test_labels, test.shape[0], "test_labels")
    if test.shape[0] == 0:
        raise ValueError("test_emb is empty; nothing to classify")
    if exclude_self:
        if train.shape != test.shape or not torch.equal(y_train, y_test):
            raise ValueError("exclude_self=True needs the memory to be the test set itself (same embeddings and labels)")
        k = min(k, test.shape[0] - 1)
        available, self_cols = test.shape[0] - 1, torch.arange(test.shape[0])
        sims, nn = topk_search(test, k=min(k + 1, available), block_size=block_size, engine=engine)
    else:
        available, self_cols = train.shape[0], None
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 1 <= k <= available:
            sims, nn = topk_search(test, train, k=min(k + 1, available), block_size=block_size, engine=engine)
        else:
            sims, nn = topk_search(test, train, k=k, block_size=block_size, engine=engine)  # raises the k error
    k = int(k)
    classes, cls_train = torch.unique(y_train, return_inverse=True)
    n_cls, n_test = classes.numel(), test.shape[0]
    # each test label's column in the vote table (-1: a class the memory does not hold, never right)
    col = torch.searchsorted(classes, y_test).clamp_max(n_cls - 1)
    truth = torch.where(classes[col] == y_test, col, torch.full_like(col, -1))
    tied = _near_tie_rows(sims, k)
    untied = torch.ones(n_test, dtype=torch.bool)
    untied[tied] = False
    credit = 0.0
    chunk = max(1, _VOTE_TABLE_ENTRIES // n_cls)  # bounded memory even with 11k classes
    for a in range(0, n_test, chunk):
        rows = untied[a : a + chunk].nonzero().flatten() + a
        votes = torch.zeros(rows.numel(), n_cls, dtype=torch.float64)
        votes.scatter_add_(1, cls_train[nn[rows, :k]], torch.exp(sims[rows, :k].double() / temperature))
        credit += _vote_credit(votes, truth[rows])
    if tied.numel():
        memory = test if exclude_self else train
        cols = None if self_cols is None else self_cols[tied]
        # the items tied at the k-th place share its remaining slots: each votes with w * (slots / members)
        for a, b, s64, _, _, members, hi in _rescored(test[tied.to(test.device)], memory, cols, k):
            w = torch.exp(s64 / temperature)
            above = s64 > hi  # the groups before the one at rank k: all of them vote
            share = (k - above.sum(dim=1, keepdim=True)).double() / members.sum(dim=1, keepdim=True).double()
            weight = torch.where(above, w, torch.zeros_like(w)) + torch.where(members, w * share, torch.zeros_like(w))
            votes = torch.zeros(b - a, n_cls, dtype=torch.float64).index_add_(1, cls_train, weight)
            credit += _vote_credit(votes, truth[tied[a:b]])
    return credit / n_test


def _vote_credit(votes: torch.Tensor, truth: torch.Tensor) -> float:
    """Sum over rows of the expected correctness of argmax(votes) with ties broken uniformly at random."""
    if votes.shape[0] == 0:
        return 0.0
    best = votes.max(dim=1, keepdim=True).values
    top = votes >= best * (1 - _VOTE_TIE_RTOL)
    hit = top.gather(1, truth.clamp_min(0)[:, None])[:, 0] & (truth >= 0)
    return float((hit.double() / top.sum(dim=1).double()).sum())
