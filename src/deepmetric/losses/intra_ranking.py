"""Intra-class ranking loss over intensity-graded synthetic points (Liu et al., EAAI 2024; SPEC.md §5).

The maths is :func:`deepmetric.functional.ranking.intra_ranking_loss`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from deepmetric.functional.geometry import class_centres
from deepmetric.functional.ranking import intra_ranking_loss
from deepmetric.functional.similarity import l2_normalize
from deepmetric.registry import LOSSES

__all__ = ["IntraClassRankingLoss"]


@LOSSES.register("intra_ranking")
class IntraClassRankingLoss(nn.Module):
    """Similarity to the source must fall with the intensity, and stay above other classes (SPEC §5).

    Applied to a batch from the ``intra_variance`` synthesiser (real rows, then the J intensities of each
    selected source): ``L = mean [m − (s(r, r^j) − s(r, r^{j+1}))]_+ + mean [max_{c≠y} s(r^j, c) − s(r^j, r) + m_c]_+``
    with c the proxies of the other classes, or the normalised class centres of the real rows when
    there are no proxies. It is an auxiliary term: the composite of the paper is
    ``SynthesisLoss(proxy_anchor, IntraVarianceSynthesis())`` = Proxy-Anchor + γ·this loss.

    Args:
        margin: m >= 0, the required drop of s(r, r^j) per intensity step.
        class_margin: m_c >= 0, how much closer a synthetic point must be to its source than to any other class.
    """

    def __init__(self, *, margin: float = 0.05, class_margin: float = 0.1) -> None:
        super().__init__()
        for name, v in (("margin", margin), ("class_margin", class_margin)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        self.margin = float(margin)
        self.class_margin = float(class_margin)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        source: Optional[torch.Tensor] = None,
        intensity: Optional[torch.Tensor] = None,
        proxies: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """embeddings (N, d), labels (N,), source (N,) long (−1 for real rows, else the real row the point
        was made from), intensity (N,) long (j = 1..J for synthetic rows), proxies (C, d) or None -> scalar.

        Every source must carry each intensity 1..J exactly once (J the same for all).
        """
        if source is None or intensity is None:
            raise ValueError(
                "intra_ranking needs source and intensity for every row: apply it to the output of the "
                "intra_variance synthesiser (batch.owner[:, 0], batch.intensity), e.g. through SynthesisLoss"
            )
        if embeddings.ndim != 2 or not (labels.shape == source.shape == intensity.shape == (embeddings.shape[0],)):
            raise ValueError(
                f"expected embeddings (N, d) and labels, source, intensity (N,), got {tuple(embeddings.shape)}, "
                f"{tuple(labels.shape)}, {tuple(source.shape)}, {tuple(intensity.shape)}"
            )
        x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
        syn = source >= 0
        rows = torch.nonzero(syn, as_tuple=True)[0]
        if proxies is not None:
            refs = proxies.to(x.dtype)
            ref_labels = torch.arange(len(proxies), device=labels.device)
        else:
            refs, ref_labels, _ = class_centres(l2_normalize(x[~syn]), labels[~syn])
        if len(rows) == 0:
            return intra_ranking_loss(x[:0], x[:0, None], labels[:0], refs, ref_labels, margin=self.margin, class_margin=self.class_margin)
        srcs, inverse = torch.unique(source[rows], return_inverse=True)
        num_j = int(intensity[rows].max())
        counts = torch.zeros(len(srcs), num_j + 1, dtype=torch.long, device=labels.device)
        counts.index_put_((inverse, intensity[rows]), torch.ones_like(inverse), accumulate=True)
        if int(intensity[rows].min()) < 1 or not bool((counts[:, 1:] == 1).all()):
            raise ValueError(
                f"intra_ranking: every source needs each intensity 1..{num_j} exactly once; got per-source counts "
                f"{counts[:, 1:].tolist()[:8]} (intensities start at 1)"
            )
        grid = torch.empty(len(srcs), num_j, dtype=torch.long, device=labels.device)
        grid[inverse, intensity[rows] - 1] = rows
        return intra_ranking_loss(
            x[srcs], x[grid], labels[srcs], refs, ref_labels, margin=self.margin, class_margin=self.class_margin
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, class_margin={self.class_margin}"
