"""Sphere geometry of embedding-space synthesis (SPEC.md §2–5), as pure functions.

* Max-Mahalanobis centres: Pang, Du, Zhu, "Max-Mahalanobis Linear Discriminant Analysis Networks",
  ICML 2018 (Algorithm 1, the recursion quoted in SPEC §4).
* Spherical Embedding Expansion (SEE): Le & Woo, PAKDD 2024 (SPEC §4): a regular simplex around the
  proxy axis with the sample's residual direction as one vertex.
* Embedding Expansion (EE): Ko & Gu, CVPR 2020 (SPEC §2): points on the chord between same-class
  pairs, and the hard-negative-pair mining over real and synthetic points.
* Symmetrical synthesis: Gu & Ko, AAAI 2020 (SPEC §3): reflection of a positive about the anchor axis.
* Intra-variance synthesis: Liu et al., EAAI 2024 (SPEC §5): points at increasing intensity.

Every function is stateless; randomness comes in as tensors drawn by the caller with its generator
(the only exception, ``max_mahalanobis_centers`` for num > dim + 1, takes the generator itself).
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch

from deepmetric.functional.similarity import l2_normalize

__all__ = [
    "max_mahalanobis_centers",
    "max_pairwise_cosine",
    "half_cosine_ramp",
    "complement_frame",
    "simplex_vertices_around",
    "spherical_expansion_points",
    "same_class_pairs",
    "class_centres",
    "chord_points",
    "reflect",
    "intensity_points",
    "feature_intensity_points",
    "ee_hard_mining",
]

#: A residual ‖r‖ = ‖z − (z·w)w‖ below this (for unit z) means z ∥ w: no direction to expand around.
MIN_RESIDUAL = 1e-6


# --------------------------------------------------------------------------------- Max-Mahalanobis centres


def max_pairwise_cosine(x: torch.Tensor) -> torch.Tensor:
    """Largest cosine similarity between two different rows of ``x`` (n, d), n >= 2; a 0-d tensor."""
    if x.shape[0] < 2:
        raise ValueError(f"max_pairwise_cosine needs at least 2 rows, got {x.shape[0]}")
    c = l2_normalize(x) @ l2_normalize(x).t()
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    return c.masked_fill(eye, float("-inf")).max()


@functools.lru_cache(maxsize=64)
def _simplex_recursion(num: int, dim: int) -> torch.Tensor:
    """Closed-form regular simplex (Pang et al. 2018, Algorithm 1), float64, num <= dim + 1.

    Cached (SEE asks for the same simplex every step): callers must not modify the result in place.
    """
    mu = torch.zeros(num, dim, dtype=torch.float64)
    mu[0, 0] = 1.0
    for i in range(1, num):
        for j in range(i):
            # μ_i[j] = −(1/(L−1) + μ_i·μ_j)/μ_j[j]; μ_i holds only entries < j so far.
            mu[i, j] = -(1.0 / (num - 1) + mu[i] @ mu[j]) / mu[j, j]
        rest = max(0.0, 1.0 - float(mu[i] @ mu[i]))
        if i < dim:
            mu[i, i] = math.sqrt(rest)
        # else: i == dim (num == dim + 1, the last vertex): the recursion's μ_i[i] is sqrt(0) = 0.
    return mu


def max_mahalanobis_centers(
    num: int,
    dim: int,
    *,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
    steps: int = 2000,
) -> torch.Tensor:
    """``num`` unit vectors in R^dim that are as spread out as possible (largest pairwise cosine minimal).

    For num <= dim + 1 this is the regular simplex of Pang et al. 2018 (Algorithm 1; SPEC §4), every
    pairwise inner product exactly −1/(num−1)::

        μ_1 = e_1;  for i >= 2, j < i:  μ_i[j] = −(1/(L−1) + μ_i·μ_j)/μ_j[j];  μ_i[i] = sqrt(1 − ‖μ_i‖²)

    (L = num). It is deterministic; ``generator`` is unused.

    For num > dim + 1 no closed form exists: the largest pairwise cosine is minimised numerically by
    projected gradient descent (Adam steps, then re-normalisation onto the sphere) on a smooth maximum,
    ``logsumexp(t·cos_ij)/t`` over pairs i < j, with the sharpness t rising geometrically from 10 to 1000,
    started from Gaussian points drawn from ``generator`` (a local generator seeded 0 if None); the best
    iterate (smallest true maximum) is returned. Achieved values (measured, default ``steps``, seed 0):
    10 points in R^3 → 0.4047 (the Tammes optimum is cos 66.15° = 0.4040), 20 in R^4 → 0.434, 100 in
    R^8 → 0.449, where Gaussian random points give 0.92–0.97. About 1–2 s on a CPU; the result is a
    local optimum, not certified.

    Args:
        num: number of centres L >= 1.
        dim: dimension d >= 1.
        generator: random start for num > dim + 1.
        dtype: dtype of the result (computed in float64).
        steps: optimisation steps for num > dim + 1.

    Returns:
        (num, dim) unit rows.
    """
    for name, v in (("num", num), ("dim", dim), ("steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if num <= dim + 1:
        return _simplex_recursion(num, dim).to(dtype, copy=True)  # a copy: the cached tensor stays intact
    if generator is None:  # a local, fixed seed: never the global RNG
        generator = torch.Generator().manual_seed(0)
    x = torch.randn(num, dim, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    x = l2_normalize(x)
    iu = torch.triu_indices(num, num, offset=1)
    best, best_val = x.clone(), float(max_pairwise_cosine(x))
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    lr, b1, b2 = 0.01, 0.9, 0.999
    with torch.enable_grad():
        for step in range(1, steps + 1):
            t = 10.0 * 100.0 ** ((step - 1) / max(1, steps - 1))
            xr = x.clone().requires_grad_(True)
            c = (l2_normalize(xr) @ l2_normalize(xr).t())[iu[0], iu[1]]
            smooth_max = torch.logsumexp(t * c, dim=0) / t
            (g,) = torch.autograd.grad(smooth_max, xr)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            step_lr = lr * (1.0 - 0.9 * step / steps)  # anneal so the last iterates settle
            x = l2_normalize(x - step_lr * (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + 1e-12))
            val = float(max_pairwise_cosine(x))
            if val < best_val:
                best, best_val = x.clone(), val
    return best.to(dtype)


def half_cosine_ramp(progress: float, start: float, end: float) -> float:
    """``start + (end − start)·(1 − cos(π·progress))/2``: start at progress 0, midpoint at 0.5, end at 1.

    ``progress`` is clipped to [0, 1] (the fraction of training done).
    """
    p = min(1.0, max(0.0, float(progress)))
    return start + (end - start) * 0.5 * (1.0 - math.cos(math.pi * p))


# ------------------------------------------------------------------------------------------------- SEE


def complement_frame(axes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A random orthonormal frame orthogonal to given orthonormal axes, row by row.

    The Gaussian ``noise`` columns are projected onto the orthogonal complement of the ``axes`` (twice,
    for accuracy) and orthonormalised by QR with the signs fixed so that diag(R) > 0: for Gaussian
    noise the frame is then Haar-distributed in the complement.

    Args:
        axes: (m, a, d) orthonormal rows per item (e.g. the proxy w and the residual direction u).
        noise: (m, d, k) Gaussian columns, k <= d − a.

    Returns:
        (m, d, k) orthonormal columns, each orthogonal to every axis.
    """
    q = noise
    for _ in range(2):
        q = q - axes.transpose(1, 2) @ (axes @ q)
    q, r = torch.linalg.qr(q)
    sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return q * sign[:, None, :]


def simplex_vertices_around(u: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The other n vertices of a regular simplex of n+1 unit vectors in w's complement with u as a vertex.

    SPEC §4: pairwise inner products −1/n, all vertices orthogonal to w, one vertex u, the orientation
    of the others random: the canonical simplex S ∈ R^{(n+1)×n} (``max_mahalanobis_centers(n+1, n)``,
    S[0] = e_1) is mapped by the frame [u, Q] with Q (d, n−1) a random orthonormal frame orthogonal to w
    and u (``complement_frame``): v_k = S[k, 0]·u + Q·S[k, 1:].

    Args:
        u: (m, d) unit vectors, orthogonal to w.
        w: (m, d) unit vectors.
        noise: (m, d, n − 1) Gaussian columns (n − 1 = 0 allowed: then n = 1 and v_1 = −u).

    Returns:
        (m, n, d) unit vectors v_1..v_n.
    """
    n = noise.shape[-1] + 1
    simplex = max_mahalanobis_centers(n + 1, n, dtype=u.dtype).to(u.device)
    frame = complement_frame(torch.stack([w, u], dim=1), noise)  # (m, d, n-1)
    # v_k = S[k,0] u + Σ_j S[k,j] Q[:, j-1]
    return simplex[1:, 0][None, :, None] * u[:, None, :] + torch.einsum("kj,mdj->mkd", simplex[1:, 1:], frame)


def spherical_expansion_points(z: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """SEE's synthetic points around the proxy axis (Le & Woo, PAKDD 2024; SPEC §4).

    For unit z of class c with unit proxy w: M = (z·w)w, r = z − M, u = r/‖r‖, and the n synthetic
    points are M + ‖r‖·v_k with v_k the other vertices of a regular simplex in w's complement that has
    u as a vertex (``simplex_vertices_around``). Each is a unit vector with exactly z's cosine to w.
    Rows with ‖r‖ < ``MIN_RESIDUAL`` (z ∥ w) have no direction u: the caller must leave them out (their
    points are returned as M, finite, with a zero residual norm).

    Args:
        z: (m, d) unit embeddings.
        w: (m, d) unit proxies (or class centres) of their classes.
        noise: (m, d, n − 1) Gaussian columns that orient the simplex.

    Returns:
        ``(points, residual_norm)``: (m, n, d) synthetic points and (m,) ‖r‖.
    """
    cos = (z * w).sum(dim=-1, keepdim=True)
    centre = cos * w  # M
    r = z - centre
    norm = torch.linalg.vector_norm(r, dim=-1)
    safe = torch.where(norm[:, None] > MIN_RESIDUAL, r, w.roll(1, dims=-1))  # any finite stand-in for u
    u = l2_normalize(safe - (safe * w).sum(dim=-1, keepdim=True) * w)
    v = simplex_vertices_around(u, w, noise)
    return centre[:, None, :] + norm[:, None, None] * v, norm


# -------------------------------------------------------------------------------- EE and reflections


def same_class_pairs(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """All unordered same-class pairs (i < j, ``labels[i] == labels[j]``) from the labels: (P,), (P,)."""
    same = labels[:, None] == labels[None, :]
    i, j = torch.nonzero(torch.triu(same, diagonal=1), as_tuple=True)
    return i, j


def class_centres(z: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised mean of each class present in the batch (the stand-in for a proxy, SPEC §4 [choice]).

    Args:
        z: (B, d) embeddings.
        labels: (B,) labels.

    Returns:
        ``(centres, classes, inverse)``: (K, d) unit centres of the K distinct classes (increasing),
        (K,) those classes, (B,) the centre row of every sample.
    """
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), z.shape[1], dtype=z.dtype, device=z.device).index_add(0, inverse, z)
    return l2_normalize(sums), classes, inverse


def chord_points(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """Embedding Expansion points (Ko & Gu, CVPR 2020, Eq. 1; SPEC §2), re-normalised.

    x̄_k = (k·b + (n+1−k)·a)/(n+1), k = 1..n, each L2-normalised (k = 1 is the point nearest a).

    Args:
        a, b: (P, d) the two members of each pair (x_i and x_j).
        n: points per pair.

    Returns:
        (P, n, d) unit vectors.
    """
    k = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)[None, :, None]
    return l2_normalize((k * b[:, None, :] + (n + 1 - k) * a[:, None, :]) / (n + 1))


def reflect(p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Symmetrical synthesis (Gu & Ko, AAAI 2020; SPEC §3): P reflected about the axis through A.

    Q = 2(P·Â)Â − P, Â = A/‖A‖: ‖Q‖ = ‖P‖ and the angle between Q and A equals that between P and A.

    Args:
        p: (P, d) points to reflect.
        a: (P, d) axes (non-zero; need not be unit).

    Returns:
        (P, d).
    """
    a_hat = l2_normalize(a)
    return 2.0 * (p * a_hat).sum(dim=-1, keepdim=True) * a_hat - p


# ----------------------------------------------------------------------------------- intra-variance


def intensity_points(r: torch.Tensor, directions: torch.Tensor, alpha: float) -> torch.Tensor:
    """Intra-variance synthesis (Liu et al., EAAI 2024; SPEC §5): r^j = normalise(r + j·α·u^j), j = 1..J.

    Args:
        r: (m, d) source embeddings (unit).
        directions: (m, J, d) random directions u^j (normalised here).
        alpha: step α > 0 per intensity.

    Returns:
        (m, J, d) unit vectors; row [i, j−1] is intensity j of source i.
    """
    j = torch.arange(1, directions.shape[1] + 1, dtype=r.dtype, device=r.device)[None, :, None]
    return l2_normalize(r[:, None, :] + j * alpha * l2_normalize(directions))


def feature_intensity_points(features: torch.Tensor, noise: torch.Tensor, spread: torch.Tensor, alpha: float) -> torch.Tensor:
    """Intra-variance synthesis before the embedding head (SPEC §5 default **[choice]**, Liu et al., EAAI 2024).

    f^j = f + j·α·‖σ‖·normalise(ε^j ⊙ σ), j = 1..J: intensity j moves the feature j·α times the batch's
    spread ‖σ‖ (the root-mean-square distance of a feature to the batch mean), in a random direction
    shaped like the batch's own variation (dimensions that do not vary in the batch are not perturbed).
    The embedding head then maps f^j; nothing fixes how far its image lies from the source's embedding.

    Args:
        features: (m, F) source features f (pooled backbone features, not normalised).
        noise: (m, J, F) standard normal draws ε^j.
        spread: (F,) per-dimension standard deviation σ of the batch's features (a constant here).
        alpha: step α > 0 per intensity, in units of ‖σ‖.

    Returns:
        (m, J, F) features; row [i, j−1] is intensity j of source i.
    """
    j = torch.arange(1, noise.shape[1] + 1, dtype=features.dtype, device=features.device)[None, :, None]
    step = l2_normalize(noise * spread) * spread.norm()
    return features[:, None, :] + j * alpha * step


# ---------------------------------------------------------------------------------------- EE mining


def ee_hard_mining(
    similarity: torch.Tensor,
    labels: torch.Tensor,
    is_synthetic: torch.Tensor,
    owner: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard positive and hard negative pair per real anchor (Ko & Gu, CVPR 2020, §3.2; SPEC §2).

    For every real anchor a (a row with ``is_synthetic`` False that has at least one real positive):

    * hardest positive p*: the real row of a's class (≠ a) least similar to a (real points only);
    * hardest negative pair (x*, n*): over x ∈ {a} ∪ S(a) — a and the synthetic points made from a
      pair containing a — and n any row (real or synthetic) of another class than x, the most similar
      pair. Ties go to the first in row order.

    Args:
        similarity: (N, N) similarities (larger = closer) of all rows, real first; only its order is used.
        labels: (N,) labels.
        is_synthetic: (N,) bool.
        owner: (N, 2) long: for a synthetic row the two real rows of its parent pair; real rows ignored.

    Returns:
        ``(anchor, positive, neg_first, neg_second)``, each (A,) long row indices; anchors without a
        real positive or without any negative are dropped.
    """
    n_rows = len(labels)
    real = ~is_synthetic
    sim = similarity.detach()  # selection is discrete: made on detached values
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n_rows, dtype=torch.bool, device=labels.device)
    pos_mask = same & ~eye & real[None, :] & real[:, None]
    # member[a, x]: x is a itself or a synthetic point with a as a parent.
    member = eye.clone()
    syn_idx = torch.nonzero(is_synthetic, as_tuple=True)[0]
    if len(syn_idx):
        member[owner[syn_idx, 0], syn_idx] = True
        member[owner[syn_idx, 1], syn_idx] = True
    neg_sim = sim.masked_fill(same, float("-inf"))
    best_neg_val, best_neg_col = neg_sim.max(dim=1)  # per row x: its hardest negative
    cand = best_neg_val[None, :].expand(n_rows, n_rows).masked_fill(~member, float("-inf"))
    pair_val, x_star = cand.max(dim=1)  # per anchor a: the best x among {a} ∪ S(a)
    pos_val, p_star = sim.masked_fill(~pos_mask, float("inf")).min(dim=1)
    ok = real & torch.isfinite(pos_val) & torch.isfinite(pair_val)
    a = torch.nonzero(ok, as_tuple=True)[0]
    return a, p_star[a], x_star[a], best_neg_col[x_star[a]]
