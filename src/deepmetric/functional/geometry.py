"""Sphere geometry of embedding-space synthesis (SPEC.md §2–5), as pure functions.

* Max-Mahalanobis centres: Pang, Du, Zhu, "Max-Mahalanobis Linear Discriminant Analysis Networks",
  ICML 2018 (Algorithm 1, the recursion quoted in SPEC §4).
* Spherical Embedding Expansion (SEE): Le & Woo, PAKDD 2024 (SPEC §4): a regular simplex around the
  proxy axis with the sample's residual direction as one vertex.
* Embedding Expansion (EE): Ko & Gu, CVPR 2020 (SPEC §2): points on the chord between same-class
  pairs (all of them, or each class's samples paired off in batch order).
* Symmetrical synthesis: Gu & Ko, AAAI 2020 (SPEC §3): reflection of a positive about the anchor axis.
* Intra-variance synthesis: Liu et al., EAAI 2024 (SPEC §5): points at increasing intensity.

Every function is stateless; randomness comes in as tensors drawn by the caller with its generator.
"""
from __future__ import annotations

import functools
import math
from typing import Tuple

import torch

from deepmetric.functional.similarity import l2_normalize

__all__ = [
    "max_mahalanobis_centers",
    "max_pairwise_cosine",
    "complement_frame",
    "simplex_vertices_around",
    "spherical_expansion_points",
    "same_class_pairs",
    "disjoint_class_pairs",
    "class_centres",
    "chord_points",
    "reflect",
    "intensity_points",
    "feature_intensity_points",
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


def max_mahalanobis_centers(num: int, dim: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``num`` <= dim + 1 unit vectors in R^dim with every pairwise inner product −1/(num−1).

    The regular simplex of Pang et al. 2018 (Algorithm 1; SPEC §4), deterministic and closed-form::

        μ_1 = e_1;  for i >= 2, j < i:  μ_i[j] = −(1/(L−1) + μ_i·μ_j)/μ_j[j];  μ_i[i] = sqrt(1 − ‖μ_i‖²)

    (L = num). For num > dim + 1 no regular simplex exists; nothing in deepmetric needs that case (SEE asks
    for n + 1 vertices in R^n), so it is an error rather than a slow numerical search.

    Args:
        num: number of centres L, 1 <= L <= dim + 1.
        dim: dimension d >= 1.
        dtype: dtype of the result (computed in float64).

    Returns:
        (num, dim) unit rows.
    """
    for name, v in (("num", num), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if num > dim + 1:
        raise ValueError(
            f"max_mahalanobis_centers: a regular simplex of num={num} points needs dim >= num - 1 = {num - 1}, got "
            f"dim={dim}; use at most {dim + 1} centres or a larger dimension"
        )
    return _simplex_recursion(num, dim).to(dtype, copy=True)  # a copy: the cached tensor stays intact


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


def disjoint_class_pairs(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each class's samples paired off into disjoint pairs, in batch order within the class: (P,), (P,).

    The rows of a class, in increasing row order r_1 < r_2 < …, give the pairs (r_1, r_2), (r_3, r_4), …;
    with an odd count the last one stays unpaired. This is the released EE code's pairing (rows 2t, 2t+1,
    which its sampler fills with one class) computed from the labels, so it does not depend on the row
    layout. Pairs are returned in increasing order of their first row.
    """
    order = torch.argsort(labels, stable=True)  # rows grouped by class, batch order inside a class
    grouped = labels[order]
    pos = torch.arange(len(labels), device=labels.device)
    starts = torch.ones_like(grouped, dtype=torch.bool)
    starts[1:] = grouped[1:] != grouped[:-1]
    first = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), dim=0).values  # start of each row's group
    rank = pos - first
    head = (rank % 2 == 0) & torch.cat([grouped[1:] == grouped[:-1], torch.zeros(1, dtype=torch.bool, device=labels.device)])
    i, j = order[head], order[torch.nonzero(head, as_tuple=True)[0] + 1]
    keep = torch.argsort(i)
    return i[keep], j[keep]


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
