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
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from deepmetric.functional.similarity import l2_normalize
from deepmetric.retrieval.knn import as_float32_matrix, topk_search, topk_search_with_self_map

__all__ = ["retrieval_metrics", "knn_accuracy", "nmi_score", "kmeans_assign", "KMEANS_NITER"]

#: k-means iterations for NMI/AMI (faiss's and PML's default: 20). Documented and fixed so numbers repeat.
KMEANS_NITER = 20
#: entries of the dense (queries × classes) vote table of knn_accuracy per chunk (~32 MiB of float64)
_VOTE_TABLE_ENTRIES = 1 << 22


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

    Returns:
        ``{"recall@K" for K in ks, "precision@1", "map@r", "r_precision", "nmi"?, "ami"?}`` as floats.
        Retrieval numbers average over queries with R >= 1 (see module docstring). The number of
        neighbours searched is ``max(max(ks), largest R)``: exactly enough for MAP@R and R-precision.

    Raises:
        ValueError: shape mismatch, NaN/inf embeddings, bad masks, empty query or gallery set, K larger
            than the gallery, or no query with any same-class item in the gallery.
    """
    x = as_float32_matrix(embeddings, "embeddings")
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
    if same_set:
        _, nn = topk_search(x[q_idx], None, k=k, exclude_self=True, block_size=block_size)
    elif not bool(q_in_gallery.any()):
        _, nn = topk_search(x[q_idx], x[g_idx], k=k, exclude_self=False, block_size=block_size)
    else:  # partial overlap: each query's own gallery position, -1 if it is not in the gallery
        pos = torch.full((n,), -1, dtype=torch.int64)
        pos[g_idx] = torch.arange(ng)
        _, nn = topk_search_with_self_map(x[q_idx], x[g_idx], k=k, self_cols=pos[q_idx], block_size=block_size)

    rel = cls[g_idx][nn] == cls[q_idx][:, None]  # (nq, k) rel(i)
    rel, r = rel[scored], r[scored]
    out: Dict[str, float] = {}
    for kk in ks:
        out[f"recall@{kk}"] = float(rel[:, :kk].any(dim=1).double().mean())
    out["precision@1"] = float(rel[:, 0].double().mean())
    rank = torch.arange(1, k + 1, dtype=torch.float64)
    rel_r = (rel & (rank[None, :] <= r[:, None])).double()  # only the first R neighbours count
    precision_at_i = rel_r.cumsum(dim=1) / rank
    rd = r.double()
    out["map@r"] = float(((precision_at_i * rel_r).sum(dim=1) / rd).mean())
    out["r_precision"] = float((rel_r.sum(dim=1) / rd).mean())
    if nmi or ami:
        scores = _cluster_scores(x[q_idx], y[q_idx], seed=seed, ami=ami)
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
) -> float:
    """Top-1 accuracy of the weighted kNN classifier (Wu et al. CVPR 2018 §3.4; Ye et al. CVPR 2019 §4.1).

    Each test item's k most similar training items (cosine s_i) vote for their class c_i with weight
    w_i = exp(s_i / τ); the prediction is argmax_c Σ_{i: c_i = c} w_i (ties: the lower class id).

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

    Returns:
        Fraction of test items whose predicted class equals their label, in [0, 1].
    """
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 (paper: 0.1), got {temperature!r}")
    train = l2_normalize(as_float32_matrix(train_emb, "train_emb"))
    test = l2_normalize(as_float32_matrix(test_emb, "test_emb"))
    y_train = _as_labels(train_labels, train.shape[0], "train_labels")
    y_test = _as_labels(test_labels, test.shape[0], "test_labels")
    if test.shape[0] == 0:
        raise ValueError("test_emb is empty; nothing to classify")
    if exclude_self:
        if train.shape != test.shape or not torch.equal(y_train, y_test):
            raise ValueError("exclude_self=True needs the memory to be the test set itself (same embeddings and labels)")
        sims, nn = topk_search(test, k=min(k, test.shape[0] - 1), block_size=block_size)
    else:
        sims, nn = topk_search(test, train, k=k, block_size=block_size)
    classes, cls_train = torch.unique(y_train, return_inverse=True)  # sorted: argmax ties -> lower id
    votes_for = cls_train[nn]  # (n_test, k)
    weights = torch.exp(sims.double() / temperature)
    n_cls = classes.numel()
    correct = 0
    chunk = max(1, _VOTE_TABLE_ENTRIES // n_cls)  # bounded memory even with 11k classes
    for a in range(0, test.shape[0], chunk):
        votes = torch.zeros(min(chunk, test.shape[0] - a), n_cls, dtype=torch.float64)
        votes.scatter_add_(1, votes_for[a : a + chunk], weights[a : a + chunk])
        pred = classes[votes.argmax(dim=1)]
        correct += int((pred == y_test[a : a + chunk]).sum())
    return correct / test.shape[0]
