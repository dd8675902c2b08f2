"""Top-k retrieval metrics that are neutral to ties: P@k, mAP@k, Recall@k, overall and per class.

Datasets store items sorted by class, so ordering items of EQUAL similarity by storage position would
reward a collapsed model (SPEC.md §7, "Ties"). Every number here is the **expectation over all orders of
tied items** (each tie group is shuffled uniformly at random, independently), computed in closed form —
no sampling, and no dependence on storage order or on which tied item a search happened to keep.

Definitions, for a query q with class y_q and R = number of OTHER gallery items of class y_q (queries with
R = 0 are left out of every average, as in :func:`deepmetric.retrieval.metrics.retrieval_metrics`); the
gallery is ranked by decreasing cosine similarity, rel(i) = 1 when the i-th item has class y_q:

* ``precision@k``  P@k = (1/k) Σ_{i≤k} rel(i)
* ``recall@k``     R@k = 1 if Σ_{i≤k} rel(i) ≥ 1 else 0 (the "Recall@K" of the DML papers)
* ``map@k``        AP@k = (1/min(k, R)) Σ_{i≤k} P(i)·rel(i), with P(i) = (1/i) Σ_{j≤i} rel(j); the mean over
  queries is mAP@k. Dividing by min(k, R) makes AP@k = 1 exactly when the first min(k, R) items are
  relevant (the Kaggle/OML convention; MAP@R of Musgrave et al. is mAP@k at k = R).

Expectation over tie orders (McSherry & Najork, ECIR 2008, "Computing information retrieval performance
measures efficiently in the presence of tied scores"): for a tie group that starts after t₀ items, holds n
items of which r are relevant, preceded by R_b relevant items, the j-th position of the group has

    E[rel] = r/n,   E[rel·Σ_{i≤t₀+j} rel(i)] = (r/n)(R_b + 1) + (j − 1)·r(r − 1)/(n(n − 1)),

and, when only the first s positions of the group fall inside the top k, P(none of them relevant) =
C(n − r, s)/C(n, s). Summing over positions gives E[P@k], E[R@k] and E[AP@k] exactly.

Memory stays bounded: the neighbour table is (queries × (k+1)); a query whose k-th and (k+1)-th
neighbours are tied (its boundary tie group may run past the table) is re-scored from its full similarity
row, in chunks of rows.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from deepmetric.functional.similarity import l2_normalize
from deepmetric.retrieval.knn import as_float32_matrix, topk_search, topk_search_with_self_map

__all__ = ["topk_metrics", "tie_expected_topk"]

#: similarity entries per chunk when a tied query is re-scored from its full row (~16 MiB float32)
_FULL_ROW_ENTRIES = 1 << 22


def _labels(labels: Any, n: int) -> torch.Tensor:
    t = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) (one per embedding row), got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class ids, got dtype {t.dtype}; cast them with .long()")
    return t.to(torch.int64)


def _mask(mask: Any, n: int, name: str) -> torch.Tensor:
    if mask is None:
        return torch.ones(n, dtype=torch.bool)
    t = mask.detach().cpu() if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
    if t.dtype != torch.bool or t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be a boolean mask of shape ({n},), got dtype {t.dtype} shape {tuple(t.shape)}")
    return t


def tie_expected_topk(scores: torch.Tensor, rel: torch.Tensor, ks: Sequence[int], r: torch.Tensor) -> Dict[int, Dict[str, torch.Tensor]]:
    """Expected hits, Recall@k and AP@k over random orders of tied items, per row, for each k.

    Args:
        scores: (m, L) similarities sorted descending per row, L >= max(ks). Every tie group that reaches
            into the first max(ks) columns must be complete inside the L columns (callers guarantee it).
        rel: (m, L) bool, item of the query's class.
        ks: cut-offs.
        r: (m,) number of relevant gallery items of each query (for AP@k's min(k, R)).

    Returns:
        ``{k: {"hits": E[Σ_{i≤k} rel(i)], "recall": E[R@k], "ap": E[AP@k]}}``, float64 tensors (m,).
    """
    m, width = scores.shape
    rel_f = rel.double()
    pos = torch.arange(width).expand(m, width)  # 0-based position
    new = torch.ones(m, width, dtype=torch.bool)
    new[:, 1:] = scores[:, 1:] != scores[:, :-1]
    gid = new.long().cumsum(dim=1) - 1  # tie-group id of each column, 0..G-1 per row
    # group statistics over the full width (groups may run past k), O(m·L) scatters only
    size = torch.zeros(m, width, dtype=torch.float64).scatter_add_(1, gid, torch.ones(m, width, dtype=torch.float64))
    n_rel = torch.zeros(m, width, dtype=torch.float64).scatter_add_(1, gid, rel_f)
    start = torch.zeros(m, width, dtype=torch.int64).scatter_reduce_(1, gid, pos, reduce="amin", include_self=False)
    rel_before = n_rel.cumsum(dim=1) - n_rel  # R_b of each group
    kmax = max(ks)
    g = gid[:, :kmax]  # the per-position terms are needed for the first kmax columns only
    n_g, r_g, t0, rb = size.gather(1, g), n_rel.gather(1, g), start.gather(1, g), rel_before.gather(1, g)
    i = torch.arange(1, kmax + 1, dtype=torch.float64)  # 1-based rank
    j = i - t0.double()  # 1-based place inside the group
    p_rel = r_g / n_g
    pair = r_g * (r_g - 1) / (n_g * (n_g - 1)).clamp(min=1)  # 0 for groups of one (r_g ∈ {0, 1})
    term = (p_rel * (rb + 1) + (j - 1) * pair) / i
    hits_cum, ap_cum = p_rel.cumsum(dim=1), term.cumsum(dim=1)
    out: Dict[int, Dict[str, torch.Tensor]] = {}
    for k in ks:
        # the group holding rank k: all groups before it lie wholly inside the top k
        nb, rb_, t0b, before = n_g[:, k - 1], r_g[:, k - 1], t0[:, k - 1].double(), rb[:, k - 1]
        s = k - t0b  # its slots inside the top k
        # P(none of its s slots relevant) = C(n−r, s)/C(n, s); 0 when fewer irrelevant items than slots
        log_none = (torch.lgamma(nb - rb_ + 1) - torch.lgamma((nb - rb_ - s).clamp(min=0) + 1)
                    - torch.lgamma(nb + 1) + torch.lgamma(nb - s + 1))
        p_none = torch.where((nb - rb_ < s) | (before > 0), torch.zeros_like(log_none), torch.exp(log_none))
        out[k] = {"hits": hits_cum[:, k - 1], "recall": 1.0 - p_none,
                  "ap": ap_cum[:, k - 1] / torch.minimum(r.double(), torch.tensor(float(k)))}
    return out


def _full_rows(q: torch.Tensor, g: torch.Tensor, q_cls: torch.Tensor, g_cls: torch.Tensor,
               self_cols: Optional[torch.Tensor], kmax: int):
    """Yield (rows, scores, rel) chunks: each row's gallery prefix holding every item tied with or above its
    kmax-th similarity (complete tie groups), padded with −inf / False."""
    ng = g.shape[0]
    step = max(1, _FULL_ROW_ENTRIES // max(ng, 1))
    for a in range(0, q.shape[0], step):
        s = q[a : a + step] @ g.t()
        rows = torch.arange(a, min(a + step, q.shape[0]))
        if self_cols is not None:
            sc = self_cols[rows]
            hit = sc >= 0
            s[hit.nonzero().flatten(), sc[hit]] = float("-inf")
        vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
        kth = vals[:, kmax - 1 : kmax]
        length = int((vals >= kth).sum(dim=1).max())
        vals, idx = vals[:, :length], idx[:, :length]
        rel = g_cls[idx] == q_cls[rows][:, None]
        keep = vals >= kth
        yield rows, torch.where(keep, vals, torch.full_like(vals, float("-inf"))), rel & keep


def topk_metrics(
    embeddings: Any,
    labels: Any,
    *,
    ks: Sequence[int] = (1, 5, 10),
    query_mask: Any = None,
    gallery_mask: Any = None,
    per_class: bool = False,
    block_size: int = 4096,
) -> Dict[str, Any]:
    """P@k, Recall@k and mAP@k (module docstring), expected over tie orders, overall and per class.

    Args:
        embeddings: (n, d) numpy or torch; L2-normalised here (cosine similarity).
        labels: (n,) integer class ids.
        ks: the cut-offs k.
        query_mask / gallery_mask: (n,) bool, as in :func:`~deepmetric.retrieval.metrics.retrieval_metrics`:
            None or equal masks = every query searches the others (itself excluded); disjoint = In-Shop style.
        per_class: also return ``"per_class"``: {label: {"queries": count, metric: value}} averaged over each
            class's scored queries (a class with a single item has no scored query and is absent).
        block_size: query rows per tile of the exact search.

    Returns:
        ``{"precision@k", "recall@k", "map@k" for k in ks, "queries": number of scored queries,
        "per_class"?: ...}``.

    Raises:
        ValueError: bad shapes/masks, k larger than the gallery offers, or no query with R >= 1.
    """
    x = l2_normalize(as_float32_matrix(embeddings, "embeddings"))
    n = x.shape[0]
    y = _labels(labels, n)
    qm, gm = _mask(query_mask, n, "query_mask"), _mask(gallery_mask, n, "gallery_mask")
    try:
        ks = tuple(sorted({int(v) for v in ks}))
    except (TypeError, ValueError):
        raise ValueError(f"ks must be a sequence of positive integers such as (1, 5, 10), got {ks!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    q_idx, g_idx = qm.nonzero().flatten(), gm.nonzero().flatten()
    if q_idx.numel() == 0 or g_idx.numel() == 0:
        raise ValueError(f"the query set ({q_idx.numel()} rows) and the gallery ({g_idx.numel()} rows) must both be non-empty")
    _, cls = torch.unique(y, return_inverse=True)
    g_count = torch.bincount(cls[g_idx], minlength=int(cls.max()) + 1)
    pos = torch.full((n,), -1, dtype=torch.int64)
    pos[g_idx] = torch.arange(g_idx.numel())
    self_cols = pos[q_idx]
    in_gallery = self_cols >= 0
    r = g_count[cls[q_idx]] - in_gallery.long()
    available = g_idx.numel() - int(bool(in_gallery.any()))
    kmax = ks[-1]
    if kmax > available:
        raise ValueError(f"ks={ks} asks for {kmax} neighbours but the gallery offers only {available} per query; drop the large k")
    if not bool((r > 0).any()):
        raise ValueError(f"none of the {q_idx.numel()} queries has another item of its class in the gallery; "
                         "no retrieval metric is defined (check the labels and masks)")
    q, g = x[q_idx], x[g_idx]
    width = min(kmax + 1, available)  # one more column shows whether the k-th item's tie group runs on
    if torch.equal(qm, gm):
        sims, nn = topk_search(q, None, k=width, exclude_self=True, block_size=block_size)
    elif not bool(in_gallery.any()):
        sims, nn = topk_search(q, g, k=width, exclude_self=False, block_size=block_size)
    else:
        sims, nn = topk_search_with_self_map(q, g, k=width, self_cols=self_cols, block_size=block_size)
    q_cls, g_cls = cls[q_idx], cls[g_idx]
    rel = g_cls[nn] == q_cls[:, None]
    open_tie = sims[:, kmax - 1] == sims[:, width - 1] if width > kmax else torch.zeros(len(q_idx), dtype=torch.bool)

    per_row = {f"{m}@{k}": torch.zeros(len(q_idx), dtype=torch.float64) for k in ks for m in ("precision", "recall", "map")}

    def fill(rows: torch.Tensor, s: torch.Tensor, rl: torch.Tensor) -> None:
        for k, e in tie_expected_topk(s, rl, ks, r[rows]).items():
            per_row[f"precision@{k}"][rows] = e["hits"] / k
            per_row[f"recall@{k}"][rows] = e["recall"]
            per_row[f"map@{k}"][rows] = e["ap"]

    closed = (~open_tie).nonzero().flatten()
    if closed.numel():
        fill(closed, sims[closed], rel[closed])
    tied = open_tie.nonzero().flatten()
    if tied.numel():
        for rows, s, rl in _full_rows(q[tied], g, q_cls[tied], g_cls, self_cols[tied] if bool(in_gallery.any()) else None, kmax):
            fill(tied[rows], s, rl)

    scored = r > 0
    out: Dict[str, Any] = {name: float(v[scored].mean()) for name, v in per_row.items()}
    out["queries"] = int(scored.sum())
    if per_class:
        lab = y[q_idx]
        table: Dict[int, Dict[str, float]] = {}
        for c in torch.unique(lab[scored]).tolist():
            sel = scored & (lab == c)
            table[int(c)] = {"queries": int(sel.sum()), **{name: float(v[sel].mean()) for name, v in per_row.items()}}
        out["per_class"] = table
    return out
