"""Hard-positive / hard-negative-pair (HPHN) triplet loss (Ko & Gu, "Embedding Expansion", CVPR 2020, §3.2;
SPEC.md §2), the loss of the released code (clovaai/embedding-expansion, loss/hphn_triplet.py).

It is a loss of its own, not a part of the synthesiser: with no synthetic rows (n = 0, or no
synthesiser at all) it is the batch-hard triplet loss of the released ``--n_inner_pts=0`` run, so
"HPHN triplet" vs "HPHN triplet + EE" changes only the synthesis.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from deepmetric.functional.similarity import l2_normalize
from deepmetric.registry import LOSSES

__all__ = ["HPHNTripletLoss", "hphn_triplet_loss"]

#: The released code's distance: sqrt of the squared distance clipped to [1e-12, 1e12] (so self = 1e-6).
_CLIP_MIN, _CLIP_MAX = 1e-12, 1e12


def _released_distance(x: torch.Tensor) -> torch.Tensor:
    """(N, N) Euclidean distances as the released ``euclidean_dist``: sqrt(clip(‖x‖² + ‖y‖² − 2x·y))."""
    sq = (x * x).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp(_CLIP_MIN, _CLIP_MAX).sqrt()


def hphn_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 1e-5,
    soft_margin: bool = False,
    is_synthetic: Optional[torch.Tensor] = None,
    owner: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """HPHN triplet loss, averaged over the real rows (the anchors).

    With d the Euclidean distance between L2-normalised rows (as the released code: sqrt of the squared
    distance clipped below at 1e-12, so d(a, a) = 1e-6), for every real row a::

        d_ap(a) = max_{p real, y_p = y_a} d(a, p)                           (hardest real positive; p = a allowed)
        d_an(a) = min_{x ∈ {a} ∪ S(a)} min_{n : y_n ≠ y_x} d(x, n)         (hardest negative pair)
        L       = mean_a [d_ap(a) − d_an(a) + m]_+        (soft_margin: log(1 + e^{d_ap − d_an}))

    S(a) = the synthetic rows made from a pair that contains a (``owner``); n runs over real and
    synthetic rows. A row x without any negative takes its largest distance instead (the released
    masking). The released trainer steps with the sum over the batch (``optimizer.step(1)``); the mean
    here only rescales the gradient, which Adam (the released optimiser) ignores.

    Args:
        embeddings: (N, d) rows, real first; L2-normalised here.
        labels: (N,) labels.
        margin: m >= 0 (released ``main.py`` default 1e-5).
        soft_margin: use the soft-plus form instead of the hinge.
        is_synthetic: (N,) bool, or None (all real: the batch-hard triplet loss).
        owner: (N, 2) long, the two parent rows of every synthetic row (ignored for real rows).

    Returns:
        Scalar loss; an attached zero when there is no row.
    """
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(f"expected embeddings (N, d) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
    n_rows = len(labels)
    x = l2_normalize(embeddings if embeddings.dtype == torch.float64 else embeddings.float())
    syn = torch.zeros(n_rows, dtype=torch.bool, device=labels.device) if is_synthetic is None else is_synthetic
    real = ~syn
    if not bool(real.any()):
        return (x * 0.0).sum()
    if bool(syn.any()) and (owner is None or owner.shape != (n_rows, 2)):
        raise ValueError(
            f"hphn_triplet: synthetic rows need owner (N, 2) = their parent rows (N={n_rows}), got "
            f"{None if owner is None else tuple(owner.shape)}; use a synthesiser that traces its rows (embedding_expansion, symmetrical)"
        )
    dist = _released_distance(x)
    same = labels[:, None] == labels[None, :]
    # Hardest positive: real rows of the class, self included (distance 1e-6), as the released max.
    d_ap = dist.masked_fill(~(same & real[None, :]), float("-inf")).max(dim=1).values
    # Every row's nearest negative; a row without negatives takes its largest distance (released masking).
    nearest = dist.masked_fill(same, float("inf")).min(dim=1).values
    nearest = torch.where(torch.isfinite(nearest), nearest, dist.max(dim=1).values)
    member = torch.eye(n_rows, dtype=torch.bool, device=labels.device)  # member[a, x]: x ∈ {a} ∪ S(a)
    syn_idx = torch.nonzero(syn, as_tuple=True)[0]
    if len(syn_idx):
        member[owner[syn_idx, 0], syn_idx] = True
        member[owner[syn_idx, 1], syn_idx] = True
    d_an = nearest[None, :].expand(n_rows, n_rows).masked_fill(~member, float("inf")).min(dim=1).values
    gap = (d_ap - d_an)[real]
    loss = torch.nn.functional.softplus(gap) if soft_margin else torch.relu(gap + margin)
    return loss.mean()


@LOSSES.register("hphn_triplet")
class HPHNTripletLoss(nn.Module):
    """EE's hard-positive / hard-negative-pair triplet loss (Ko & Gu, CVPR 2020; released hphn_triplet.py).

    ``forward(embeddings, labels, *, is_synthetic=None, owner=None)``: without synthetic rows the
    batch-hard triplet loss (the released n = 0 run); under
    :class:`~deepmetric.losses.synthesis_loss.SynthesisLoss` with ``embedding_expansion`` the hardest
    negative pair also searches each anchor's synthetic points (``hphn_triplet_loss``).

    Args:
        margin: m >= 0; 1e-5 as the released ``main.py``.
        soft_margin: soft-plus instead of the hinge (released option, off by default).
    """

    def __init__(self, *, margin: float = 1e-5, soft_margin: bool = False) -> None:
        super().__init__()
        if not (isinstance(margin, (int, float)) and not isinstance(margin, bool) and margin >= 0):
            raise ValueError(f"margin must be a number >= 0, got {margin!r}")
        if not isinstance(soft_margin, bool):
            raise ValueError(f"soft_margin must be true or false, got {soft_margin!r}")
        self.margin = float(margin)
        self.soft_margin = soft_margin

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        is_synthetic: Optional[torch.Tensor] = None,
        owner: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """embeddings (N, d), labels (N,) [, is_synthetic (N,), owner (N, 2)] -> scalar."""
        return hphn_triplet_loss(
            embeddings, labels, margin=self.margin, soft_margin=self.soft_margin, is_synthetic=is_synthetic, owner=owner
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, soft_margin={self.soft_margin}"
