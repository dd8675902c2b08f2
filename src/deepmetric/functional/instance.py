"""Instance-wise (and category-wise) softmax embedding, and the sphere geometry of its feature augmenters.

Pure tensor maths for SPEC.md §1:

* Ye, Zhang, Yuen, Chang, "Unsupervised Embedding Learning via Invariant and Spreading Instance
  Feature", CVPR 2019 (§3: P(i|x̂_i), P(i|x_j) and the negative log-likelihood J), and its released code;
* Ye, Shen, Zhang, Yuen, Chang, "Augmentation Invariant and Instance Spreading Feature for Softmax
  Embedding", IEEE TPAMI 44(2), 2022 (category-wise softmax embedding, feature-space augmentation;
  only the abstract is known, so those parts are the documented **[choice]** of SPEC.md §1).

Every function is stateless; randomness comes in as tensors drawn by the caller with its generator.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from deepmetric.functional.similarity import l2_normalize

__all__ = [
    "instance_views",
    "hardest_negatives_mask",
    "softmax_embedding_terms",
    "instance_softmax_loss",
    "category_softmax_loss",
    "slerp",
    "rotate_on_sphere",
]

#: In ``log(1 - p)`` with a negative weight w < 1 the released formula is undefined once p >= 1 (a
#: down-weighted negative can dominate D_a); ``1 - p`` is floored at this value there (see below).
MIN_ONE_MINUS_P = 1e-6


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """Half precision is promoted to float32 (DESIGN: losses compute in float32); float64 is kept."""
    return x if x.dtype == torch.float64 else x.float()


def _describe_counts(ids: torch.Tensor, counts: torch.Tensor, limit: int = 8) -> str:
    by_count: dict = {}
    for i, c in zip(ids.tolist(), counts.tolist()):
        by_count.setdefault(c, []).append(i)
    parts = []
    for c in sorted(by_count):
        members = by_count[c]
        shown = ", ".join(str(i) for i in members[:limit]) + (f", … ({len(members)} ids)" if len(members) > limit else "")
        parts.append(f"{c}× : {shown}")
    return "; ".join(parts)


def instance_views(labels: torch.Tensor, *, views: int | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Group the rows of an instance batch by id, in order of appearance.

    Args:
        labels: (B,) integer instance ids. Every id must appear the same number of times k >= 2 (k = 2:
            the two augmented views of SPEC §1; k > 2 when a view synthesiser added extra views).
        views: if given, the number of views every id must have (the paper form needs exactly 2).

    Returns:
        ``(ids, index)``: ids (m,) the distinct ids in increasing order and index (m, k) the row of the
        v-th occurrence of id ``ids[i]`` in ``labels`` (v = 0 is the first occurrence: "view 1").

    Raises:
        ValueError: labels not a 1-D integer tensor, or ids not all appearing the same number (>= 2) of
            times; the message lists the ids by how often they appear.
    """
    if labels.ndim != 1:
        raise ValueError(f"instance labels must be a 1-D tensor of ids, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise ValueError(f"instance labels must be integer ids, got dtype {labels.dtype}")
    want = "exactly twice (the two views of one instance)" if views in (None, 2) else f"exactly {views} times"
    if labels.numel() == 0:
        raise ValueError(f"empty batch: instance ids must each appear {want}")
    ids, counts = torch.unique(labels, return_counts=True)
    k = int(counts[0])
    if (views is not None and k != views) or k < 2 or not bool((counts == k).all()):
        hint = "" if views is not None else (
            "; more than two views per id are accepted only when every id has the same number (e.g. the"
            " extra views of an angular_perturbation synthesiser)"
        )
        raise ValueError(
            f"instance softmax expects every instance id {want}{hint}; got a batch of {labels.numel()} "
            f"rows where ids appear {_describe_counts(ids.cpu(), counts.cpu())}. Build the batch with "
            "two_view_batch(view1, view2) (instance ids 0..m-1, view 1 then view 2)."
        )
    # A stable sort keeps the rows of one id in order of appearance, so column 0 is the first view.
    order = torch.argsort(labels, stable=True)
    return ids, order.view(-1, k)


def hardest_negatives_mask(similarity: torch.Tensor, negative_mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep, per query row, only the most similar ``fraction`` of its negatives (SPEC §1 hard-negative variant).

    Rounding: a row with n negatives keeps ``min(n, max(1, ceil(fraction * n)))`` of them — at least the
    requested fraction and at least one. Ties are broken by the lower column index (a stable sort), so
    the selection is deterministic. The selection is discrete, hence made on detached similarities.

    Args:
        similarity: (q, k) similarities (or logits: only their order matters).
        negative_mask: (q, k) bool, the candidate negatives of each row.
        fraction: in (0, 1]; 1 returns ``negative_mask`` unchanged.

    Returns:
        (q, k) bool mask, a subset of ``negative_mask``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"hard-negative fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return negative_mask
    n_neg = negative_mask.sum(dim=1)
    # The small slack keeps e.g. ceil(0.3 * 10) at 3 despite 0.3 * 10 == 3.0000000000000004.
    keep = torch.ceil(n_neg.double() * fraction - 1e-9).long().clamp(min=1)
    keep = torch.minimum(keep, n_neg)
    # Selection is not differentiable: rank on detached values.
    masked = similarity.detach().masked_fill(~negative_mask, float("-inf"))
    order = torch.argsort(masked, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return negative_mask & (rank < keep[:, None])


def softmax_embedding_terms(
    logits: torch.Tensor,
    positive_mask: torch.Tensor,
    negative_mask: torch.Tensor,
    *,
    negative_weight: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-query terms of the binary-discrimination softmax of SPEC §1 (released-code form).

    For query row a with positives P_a and negatives N_a (self and other columns in neither mask are not
    part of the softmax), with l(a,b) = ``logits[a, b]`` = s(a,b)/τ and w = ``negative_weight``::

        D_a     = Σ_{b∈P_a} e^{l(a,b)} + w Σ_{b∈N_a} e^{l(a,b)}
        p(a,b)  = e^{l(a,b)} / D_a
        pos_a   = (1/|P_a|) Σ_{b∈P_a} log p(a,b)
        neg_a   = Σ_{b∈N_a} log(1 − p(a,b))

    With one positive per row this is the released code's D_a, log p(a,π(a)) and the sum of log(1−p)
    over negatives; the loss is then −mean_a(pos_a + w·neg_a).

    Numerics: log D_a is a log-sum-exp. log(1−p) is computed as log(D_a − e^{l}) − log D_a where the
    leave-one-out log(D_a − w e^{l}) is exact for the dominant entry of each row (a log-sum-exp without
    it) and a ``log1p`` of a share <= 1/2 for the others, so a negative that dominates D_a (p → 1) still
    gives a finite, accurate value. For w < 1 the formula itself is undefined once p >= 1; there
    1 − p is floored at ``MIN_ONE_MINUS_P`` (that entry then has no gradient).

    Args:
        logits: (q, k) scaled similarities s/τ, any real values.
        positive_mask: (q, k) bool; every row needs at least one positive.
        negative_mask: (q, k) bool, disjoint from ``positive_mask``.
        negative_weight: w >= 0.

    Returns:
        ``(pos, neg)``, both (q,): the mean positive log-probability and the (un-weighted) sum over
        negatives of log(1 − p).
    """
    if not bool(positive_mask.any(dim=1).all()):
        raise ValueError("softmax_embedding_terms needs at least one positive per query row; select the rows first")
    if bool((positive_mask & negative_mask).any()):
        raise ValueError("positive_mask and negative_mask overlap: a column cannot be both")
    w = float(negative_weight)
    neg_inf = float("-inf")
    in_d = positive_mask | negative_mask if w > 0 else positive_mask
    # Entries of D_a in log space: log(w e^l) = l + log w for negatives.
    entries = logits + negative_mask.to(logits.dtype) * (math.log(w) if w > 0 else 0.0)
    entries = entries.masked_fill(~in_d, neg_inf)
    log_d = torch.logsumexp(entries, dim=1)  # finite: every row has a positive
    log_p = logits - log_d[:, None]
    n_pos = positive_mask.sum(dim=1)
    pos = log_p.masked_fill(~positive_mask, 0.0).sum(dim=1) / n_pos
    if w == 0:
        return pos, torch.zeros_like(pos)

    # Leave-one-out log(D_a - w e^{l(a,b)}): for the dominant entry directly (log-sum-exp of the rest) ...
    is_max = torch.zeros_like(in_d).scatter_(1, entries.argmax(dim=1, keepdim=True), True)
    rest = entries.masked_fill(is_max, neg_inf)
    lonely = ~torch.isfinite(rest).any(dim=1, keepdim=True)  # one-entry rows: keep log-sum-exp finite
    rest = rest.masked_fill(lonely & (torch.arange(rest.shape[1], device=rest.device) == 0), 0.0)
    loo_max = torch.logsumexp(rest, dim=1, keepdim=True)
    # ... and for the others from their share of D_a, which is <= 1/2 so log1p(-share) is accurate.
    share = torch.exp(entries - log_d[:, None]).masked_fill(is_max, 0.0)
    loo = torch.where(is_max, loo_max, log_d[:, None] + torch.log1p(-share))
    # D_a - e^{l} = (D_a - w e^{l}) + (w - 1) e^{l}.
    if w == 1.0:
        log_rest = loo
    elif w > 1.0:
        log_rest = torch.logaddexp(loo, logits + math.log(w - 1.0))
    else:
        # Clamp in log space before exp so that neither value nor gradient can be inf/NaN.
        x = (logits - loo + math.log(1.0 - w)).clamp(max=math.log1p(-MIN_ONE_MINUS_P))
        log_rest = loo + torch.log1p(-torch.exp(x))
    log_one_minus_p = log_rest - log_d[:, None]
    neg = log_one_minus_p.masked_fill(~negative_mask, 0.0).sum(dim=1)
    return pos, neg


def _real_rows(is_synthetic: Optional[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the rows that may be queries (all of them when ``is_synthetic`` is None)."""
    if is_synthetic is None:
        return torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    if is_synthetic.shape != labels.shape or is_synthetic.dtype != torch.bool:
        raise ValueError(f"is_synthetic must be a bool tensor shaped like labels {tuple(labels.shape)}, got {is_synthetic.dtype} {tuple(is_synthetic.shape)}")
    return ~is_synthetic


def instance_softmax_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.1,
    negative_weight: float = 1.0,
    stop_gradient: bool = True,
    form: str = "code",
    hard_negative_fraction: float = 1.0,
    is_synthetic: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Instance-wise softmax embedding loss (Ye et al., CVPR 2019; SPEC §1).

    Embeddings are L2-normalised here, so s(a,b) is the cosine similarity whatever the caller passes.

    ``form="code"`` (released code, default): every row a is a query; the softmax runs over the other
    B − 1 rows; positives are the other views of a's instance (π(a) for two views), negatives every row of
    another instance::

        L = −(1/B) Σ_a [ log p(a,π(a)) + w Σ_{b∉{a,π(a)}} log(1 − p(a,b)) ],
        p(a,b) = e^{s(a,b)/τ} / D_a,   D_a = e^{s(a,π(a))/τ} + w Σ_{b∉{a,π(a)}} e^{s(a,b)/τ}.

    With k > 2 views per id (extra views from a synthesiser) log p(a,π(a)) becomes the mean over the k − 1
    other views and D_a sums all of them; for k = 2 this is exactly the formula above.

    ``form="paper"`` (the CVPR paper's equations literally; needs exactly two views): the first
    occurrence of each id is f_i (x_i), the second f̂_i (x̂_i), sums run over the m instances::

        P(i|x̂_i) = e^{f_i·f̂_i/τ} / Σ_k e^{f_k·f̂_i/τ}
        P(i|x_j) = e^{f_i·f_j/τ} / Σ_k e^{f_k·f_j/τ},  j ≠ i
        J = −Σ_i log P(i|x̂_i) − Σ_i Σ_{j≠i} log(1 − P(i|x_j))          (a sum, not a mean)

    with negative weight w multiplying the k ≠ (own instance) terms of each denominator and the
    log(1 − P) sum (w = 1 is the literal paper).

    Args:
        embeddings: (B, d) embeddings of the B = k·m rows.
        labels: (B,) instance ids, each appearing the same number k >= 2 of times (``instance_views``).
        temperature: τ > 0.
        negative_weight: w >= 0 (1 in the paper and code).
        stop_gradient: the key side of every similarity is detached (the released code); gradients flow
            only through the query. In the paper form the keys are the f_k of the denominators.
        form: ``"code"`` or ``"paper"``.
        hard_negative_fraction: keep only this most-similar fraction of each query's negatives, both in
            D_a and in the log(1 − p) sum (``hardest_negatives_mask`` gives the rounding).
        is_synthetic: (B,) bool or None. Synthetic rows (from a synthesiser) are never queries: they
            only enter the other rows' softmax as keys, and the mean runs over the real queries
            (``form="code"`` only).

    Returns:
        Scalar loss (float32, or float64 for float64 input).
    """
    if form not in ("code", "paper"):
        raise ValueError(f"form must be 'code' or 'paper', got {form!r}")
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"expected embeddings (B, d) and labels (B,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )
    query = _real_rows(is_synthetic, labels)
    if form == "paper" and not bool(query.all()):
        raise ValueError("instance_softmax_loss: form='paper' has no rule for synthetic rows; use form='code' with a synthesiser")
    _, index = instance_views(labels, views=2 if form == "paper" else None)
    z = l2_normalize(_compute_dtype(embeddings))
    # Stop-gradient (released code): keys are constants, only the query side of s(a,b) is trained.
    keys = z.detach() if stop_gradient else z
    w = float(negative_weight)
    if form == "code":
        # Queries are the real rows only; synthetic rows stay keys (SynthesisLoss's rule).
        logits = z[query] @ keys.t() / temperature
        same = (labels[:, None] == labels[None, :])[query]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)[query]
        negatives = hardest_negatives_mask(logits, ~same, hard_negative_fraction)
        pos, neg = softmax_embedding_terms(logits, same & ~eye, negatives, negative_weight=w)
        return -(pos + w * neg).mean()

    f, f_hat = z[index[:, 0]], z[index[:, 1]]
    f_keys = keys[index[:, 0]]
    eye = torch.eye(len(f), dtype=torch.bool, device=labels.device)
    # P(i|x̂_i): query f̂_i against the "weights" f_k; the positive is k = i.
    logits_pos = f_hat @ f_keys.t() / temperature
    pos, _ = softmax_embedding_terms(
        logits_pos, eye, hardest_negatives_mask(logits_pos, ~eye, hard_negative_fraction), negative_weight=w
    )
    # P(i|x_j): query f_j against f_k; k = j (self) is the "own instance" entry of the denominator.
    logits_neg = f @ f_keys.t() / temperature
    _, neg = softmax_embedding_terms(
        logits_neg, eye, hardest_negatives_mask(logits_neg, ~eye, hard_negative_fraction), negative_weight=w
    )
    return -(pos.sum() + w * neg.sum())


def category_softmax_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.1,
    negative_weight: float = 1.0,
    stop_gradient: bool = False,
    is_synthetic: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Category-wise softmax embedding (TPAMI 2022 supervised variant; SPEC §1 **[choice]**).

    The instance loss's binary-discrimination softmax with classes in place of instances: for query a,
    P_a = other rows of a's class, N_a = rows of other classes, self excluded::

        D_a = Σ_{p∈P_a} e^{s(a,p)/τ} + w Σ_{n∈N_a} e^{s(a,n)/τ},   p(a,b) = e^{s(a,b)/τ} / D_a
        L   = −(1/|A|) Σ_{a∈A} [ (1/|P_a|) Σ_{p∈P_a} log p(a,p) + w Σ_{n∈N_a} log(1 − p(a,n)) ]

    over the anchors A with at least one positive (anchors alone in their class are skipped, but stay
    keys of the others). With exactly two rows per class this is ``instance_softmax_loss(form="code")``.
    A batch without any positive pair returns ``0 · Σ embeddings``: a zero that is still attached to the
    graph (when the embeddings require grad), so ``backward()`` works and gives zero gradients.

    Args:
        embeddings: (B, d), L2-normalised here.
        labels: (B,) class labels.
        temperature: τ > 0.
        negative_weight: w >= 0.
        stop_gradient: detach the key side of every similarity (as the released instance code).
        is_synthetic: (B,) bool or None. Synthetic rows are never anchors: they are only keys (positives
            and negatives) of the real anchors.

    Returns:
        Scalar loss.
    """
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"expected embeddings (B, d) and labels (B,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )
    x = _compute_dtype(embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives = same & ~eye
    anchors = positives.any(dim=1) & _real_rows(is_synthetic, labels)
    if not bool(anchors.any()):
        return (x * 0.0).sum()
    z = l2_normalize(x)
    # Stop-gradient option: keys are constants, only the query side of s(a,b) is trained.
    keys = z.detach() if stop_gradient else z
    logits = z[anchors] @ keys.t() / temperature
    w = float(negative_weight)
    pos, neg = softmax_embedding_terms(logits, positives[anchors], ~same[anchors], negative_weight=w)
    return -(pos + w * neg).mean()


# ------------------------------------------------------------------ feature-space augmentation geometry


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Spherical linear interpolation between unit vectors, row by row.

    ``slerp(a, b, t) = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b`` with Ω the angle between a and b: the
    point at arc fraction t along the great circle from a to b (t = 0 gives a, t = 1 gives b). Ω is
    computed as 2·atan2(‖a−b‖, ‖a+b‖), accurate at every angle. For Ω < ``eps`` (a ≈ b) the weights
    become (1−t, t), the limit of the formula. Antipodal a, b (Ω → π) have no unique great circle; there
    sin Ω is floored at ``eps``. The result is re-normalised to remove rounding.

    Args:
        a, b: (n, d) unit vectors.
        t: (n,) arc fractions.

    Returns:
        (n, d) unit vectors.
    """
    diff = torch.linalg.vector_norm(a - b, dim=-1)
    summ = torch.linalg.vector_norm(a + b, dim=-1)
    omega = 2.0 * torch.atan2(diff, summ)
    small = omega < eps
    # Keep the unused branch finite so that torch.where cannot produce NaN gradients.
    omega_safe = torch.where(small, torch.ones_like(omega), omega)
    sin_omega = torch.sin(omega_safe).clamp(min=eps)
    wa = torch.where(small, 1.0 - t, torch.sin((1.0 - t) * omega_safe) / sin_omega)
    wb = torch.where(small, t, torch.sin(t * omega_safe) / sin_omega)
    return l2_normalize(wa[:, None] * a + wb[:, None] * b)


def rotate_on_sphere(z: torch.Tensor, direction: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Move unit vectors along the sphere by a given angle: the exact geodesic ``z cos θ + t sin θ``.

    ``t`` is the unit tangent at z obtained from ``direction`` by removing its component along z, so the
    result is a unit vector at exactly angle θ from z.

    Args:
        z: (n, d) unit vectors, d >= 2.
        direction: (n, d) arbitrary vectors (e.g. Gaussian: a uniformly random tangent direction); must not
            be parallel to z.
        angle: (n,) angles θ in radians.

    Returns:
        (n, d) unit vectors.
    """
    tangent = l2_normalize(direction - (direction * z).sum(dim=-1, keepdim=True) * z)
    return l2_normalize(z * torch.cos(angle)[:, None] + tangent * torch.sin(angle)[:, None])
