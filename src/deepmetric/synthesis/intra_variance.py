"""Intra-variance synthesis: points at increasing intensity around a sample (Liu et al., EAAI 2024; SPEC.md §5).

The geometry is :func:`deepmetric.functional.geometry.intensity_points`; the loss on the points is
:class:`deepmetric.losses.intra_ranking.IntraClassRankingLoss`, combined by
:class:`deepmetric.losses.synthesis_loss.SynthesisLoss` (``combine = "ranking"``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from deepmetric.functional.geometry import intensity_points
from deepmetric.functional.similarity import l2_normalize
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.embedding_expansion import TracedSynthBatch, check_batch, compute_dtype, traced
from deepmetric.synthesis.spherical_expansion import class_axes, rank_order

__all__ = ["IntraVarianceSynthesis"]


@SYNTHESISERS.register("intra_variance")
class IntraVarianceSynthesis(nn.Module):
    """J points per gated sample at increasing intensity: r^j = normalise(r + j·α·u^j), u^j random unit.

    SPEC §5. Gate (**[choice]**): a (unit) sample is used when its cosine to its class proxy — or, without
    proxies, to its class centre in the batch — lies in ``band`` = [lo, hi]: not already collapsed onto
    the proxy, not an outlier. Each gated sample gets J points with independent Gaussian directions
    u^j (normalised), so the similarity to the source falls with j on average (diversity from the
    random directions). Gradients flow through the points to their sources unless ``detach``.

    Output: originals, then for each gated sample (by decreasing cosine, the order of the random draws)
    its J points with intensities 1..J (``batch.intensity``) and source (``batch.owner[:, 0]``).
    Random draws (from ``generator``, a local one seeded 0 if None): directions (m, J, d).

    Loss (SynthesisLoss, ``combine = "ranking"``): L = base(real) + γ·IntraClassRankingLoss(batch), with
    the ranking loss built from ``margin`` and ``class_margin`` (``ranking_loss_params``).

    Args:
        num_intensities: J >= 1.
        alpha: α > 0, the step per intensity.
        band: (lo, hi), −1 <= lo <= hi <= 1, the gate on the cosine to the proxy/centre.
        weight: γ, the weight of the ranking loss (SynthesisLoss's default).
        margin: the ranking loss's required similarity drop per intensity step.
        class_margin: the ranking loss's margin between the source and other classes.
        detach: stop gradients through the synthetic points.
    """

    combine = "ranking"

    def __init__(
        self,
        *,
        num_intensities: int = 3,
        alpha: float = 0.2,
        band: Sequence[float] = (0.2, 0.9),
        weight: float = 1.0,
        margin: float = 0.05,
        class_margin: float = 0.1,
        detach: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_intensities, bool) or not isinstance(num_intensities, int) or num_intensities < 1:
            raise ValueError(f"num_intensities (J) must be an integer >= 1, got {num_intensities!r}")
        if not (isinstance(alpha, (int, float)) and alpha > 0):
            raise ValueError(f"alpha (step per intensity) must be a number > 0, got {alpha!r}")
        b = tuple(band)
        if len(b) != 2 or not all(isinstance(v, (int, float)) for v in b) or not -1.0 <= b[0] <= b[1] <= 1.0:
            raise ValueError(f"band must be (lo, hi) with -1 <= lo <= hi <= 1 (cosine to the class proxy), got {band!r}")
        for name, v in (("weight", weight), ("margin", margin), ("class_margin", class_margin)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if not isinstance(detach, bool):
            raise ValueError(f"detach must be true or false, got {detach!r}")
        self.num_intensities = num_intensities
        self.alpha = float(alpha)
        self.band: Tuple[float, float] = (float(b[0]), float(b[1]))
        self.weight = float(weight)
        self.margin = float(margin)
        self.class_margin = float(class_margin)
        self.detach = detach

    def ranking_loss_params(self) -> Dict[str, Any]:
        """Keyword arguments of the IntraClassRankingLoss that SynthesisLoss builds for this synthesiser."""
        return {"margin": self.margin, "class_margin": self.class_margin}

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        proxies: Optional[torch.Tensor] = None,
        progress: float = 0.0,
    ) -> TracedSynthBatch:
        """embeddings (B, d), labels (B,), proxies (C, d) or None -> B + J·m rows. ``progress`` is unused."""
        check_batch(embeddings, labels, "intra_variance")
        b, d = embeddings.shape
        if b == 0:
            return traced(embeddings, labels)
        z = l2_normalize(compute_dtype(embeddings))
        w = class_axes(z, labels, proxies, "intra_variance")
        cos = (z * w).sum(dim=1).detach()  # gating is discrete
        order = rank_order(cos)
        sel = order[(cos[order] >= self.band[0]) & (cos[order] <= self.band[1])]
        if len(sel) == 0:
            return traced(embeddings, labels)
        if generator is None:  # a local, fixed seed: never the global RNG
            generator = torch.Generator(device=embeddings.device).manual_seed(0)
        j = self.num_intensities
        directions = torch.randn(len(sel), j, d, generator=generator, device=generator.device, dtype=z.dtype).to(z.device)
        src = z[sel].detach() if self.detach else z[sel]  # detach option: points do not train their sources
        pts = intensity_points(src, directions, self.alpha)
        owner = sel.repeat_interleave(j)[:, None].expand(-1, 2)
        inten = torch.arange(1, j + 1, device=labels.device).repeat(len(sel))
        return traced(embeddings, labels, pts.reshape(-1, d), labels[sel].repeat_interleave(j), owner, inten)

    def extra_repr(self) -> str:
        return (
            f"num_intensities={self.num_intensities}, alpha={self.alpha}, band={self.band}, weight={self.weight}, "
            f"margin={self.margin}, class_margin={self.class_margin}, detach={self.detach}"
        )
