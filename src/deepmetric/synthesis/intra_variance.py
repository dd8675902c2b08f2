"""Intra-variance synthesis: points at increasing intensity around a sample (Liu et al., EAAI 2024; SPEC.md §5).

The geometry is :func:`deepmetric.functional.geometry.feature_intensity_points` (default: before the
embedding head) or :func:`deepmetric.functional.geometry.intensity_points` (on the embedding sphere); the
loss on the points is :class:`deepmetric.losses.intra_ranking.IntraClassRankingLoss`, combined by
:class:`deepmetric.losses.synthesis_loss.SynthesisLoss` (``combine = "ranking"``).

Not implemented: the graded *image* augmentations of Fu et al. (AAAI 2021), SPEC §5's other option.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

from deepmetric.functional.geometry import feature_intensity_points, intensity_points
from deepmetric.functional.similarity import l2_normalize
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.embedding_expansion import TracedSynthBatch, check_batch, compute_dtype, traced
from deepmetric.synthesis.spherical_expansion import class_axes, rank_order

__all__ = ["IntraVarianceSynthesis", "SPACES"]

SPACES = ("features", "embedding")


@contextmanager
def batch_statistics_only(module: nn.Module) -> Iterator[None]:
    """While active, BatchNorm layers of ``module`` that are training normalise with the batch's own
    statistics without updating their running statistics: synthetic rows must not move what the real
    images set (the head of a ``head_norm: bn`` model)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


@SYNTHESISERS.register("intra_variance")
class IntraVarianceSynthesis(nn.Module):
    """J points per gated sample at increasing intensity j = 1..J, which the network must rank (SPEC §5).

    Where the points are made (``space``, **[choice]**, SPEC §5 default ``"features"``):

    * ``"features"``: in the pooled backbone feature space, before the embedding head. The source's
      feature f moves by f^j = f + j·α·‖σ‖·normalise(ε^j ⊙ σ), σ the per-dimension standard deviation of
      the batch's features (detached: a scale, not a path for gradients), ε^j standard normal. So α is in
      units of the batch's spread ‖σ‖ (the RMS distance of a feature to the batch mean) and the random
      directions follow the batch's own variation. The model's head maps f^j to the embedding r^j. How
      fast s(r, r^j) falls with j is then a property of the learned head and features, which the ranking
      loss trains (gradients reach the head through r^j, and the backbone through f and r). Needs the
      context ``features=`` (B, F) and ``head=`` (the model's head module); the training loop passes
      both. A batch whose features do not vary (one row, or collapsed features) has no scale: nothing is
      synthesised. BatchNorm in the head normalises the synthetic rows with their own statistics
      and does not update its running statistics.
    * ``"embedding"``: r^j = normalise(r + j·α·u^j) on the unit sphere of the final embedding (the
      original implementation). s(r, r^j) ≈ 1/√(1+j²α²) then holds by construction and the ranking loss
      is close to a no-op; kept for comparison only.

    Gate (**[choice]**): a sample is used when the cosine of its embedding to its class proxy — or,
    without proxies, to its class centre in the batch — lies in ``band`` = [lo, hi]: not already collapsed
    onto the proxy, not an outlier. Each gated sample gets J points with independent random directions
    (diversity). Gradients flow through the points to their sources unless ``detach``.

    Output: originals, then for each gated sample (by decreasing cosine, the order of the random draws)
    its J points with intensities 1..J (``batch.intensity``) and source (``batch.owner[:, 0]``).
    Random draws (from ``generator``, a local one seeded 0 if None): (m, J, F) normal numbers (F the
    feature or embedding width).

    Loss (SynthesisLoss, ``combine = "ranking"``): L = base(real) + γ·IntraClassRankingLoss(batch), with
    the ranking loss built from ``margin`` and ``class_margin`` (``ranking_loss_params``).

    Defaults (**[choice]**, the paper's values are not available): J = 3, α = 0.5, margin 0.1 and γ = 32.
    The ranking loss is a hinge on cosines while Proxy-Anchor scales cosines by α = 32; γ = 32 puts the
    ranking on the same scale. With γ = 1 its share of the gradient on the real embeddings is below 0.5%
    on the MNIST recipe; ``benchmarks/bench_intra_variance.py`` measures it at the defaults
    (``benchmarks/results/intra_variance.md``).

    Args:
        num_intensities: J >= 1.
        alpha: α > 0, the step per intensity (units of the batch's feature spread ‖σ‖ for ``"features"``,
            of the unit sphere's radius for ``"embedding"``).
        band: (lo, hi), −1 <= lo <= hi <= 1, the gate on the cosine to the proxy/centre.
        weight: γ, the weight of the ranking loss (SynthesisLoss's default).
        margin: the ranking loss's required similarity drop per intensity step.
        class_margin: the ranking loss's margin between the source and other classes.
        detach: stop gradients through the synthetic points into their sources (the head still learns
            from them in ``"features"``).
        space: ``"features"`` (default) or ``"embedding"``, see above.
    """

    combine = "ranking"

    def __init__(
        self,
        *,
        num_intensities: int = 3,
        alpha: float = 0.5,
        band: Sequence[float] = (0.2, 0.9),
        weight: float = 32.0,
        margin: float = 0.1,
        class_margin: float = 0.1,
        detach: bool = False,
        space: str = "features",
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
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES} (where the graded points are made), got {space!r}")
        self.num_intensities = num_intensities
        self.alpha = float(alpha)
        self.band: Tuple[float, float] = (float(b[0]), float(b[1]))
        self.weight = float(weight)
        self.margin = float(margin)
        self.class_margin = float(class_margin)
        self.detach = detach
        self.space = space

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
        features: Optional[torch.Tensor] = None,
        head: Optional[nn.Module] = None,
    ) -> TracedSynthBatch:
        """embeddings (B, d), labels (B,), proxies (C, d) or None, features (B, F) and head (F -> d) for
        ``space="features"`` -> B + J·m rows. ``progress`` is unused."""
        check_batch(embeddings, labels, "intra_variance")
        b, d = embeddings.shape
        if self.space == "features":
            if features is None or head is None:
                raise ValueError(
                    "intra_variance (space='features') synthesises before the embedding head and needs the pooled "
                    "backbone features and the head: call the loss with features=(B, F) tensor and head=model.head "
                    "(the training loop does), or set synthesis.params.space=embedding"
                )
            if features.ndim != 2 or features.shape[0] != b:
                raise ValueError(f"intra_variance: features must be (B, F) with B={b} rows like the embeddings, got {tuple(features.shape)}")
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
        if self.space == "features":
            f = compute_dtype(features)
            spread = f.detach().std(dim=0, unbiased=False)  # a scale for the intensities, not a gradient path
            if not float(spread.norm()) > 0.0:  # one row or collapsed features: no scale to grade against
                return traced(embeddings, labels)
            noise = torch.randn(len(sel), j, f.shape[1], generator=generator, device=generator.device, dtype=f.dtype).to(f.device)
            src = f[sel].detach() if self.detach else f[sel]  # detach option: points do not train their sources
            graded = feature_intensity_points(src, noise, spread, self.alpha)
            with batch_statistics_only(head):
                pts = compute_dtype(head(graded.reshape(-1, f.shape[1])))
            if pts.ndim != 2 or pts.shape[1] != d:
                raise ValueError(f"intra_variance: head maps features to {tuple(pts.shape[1:])}, expected the embedding width {d}")
        else:
            directions = torch.randn(len(sel), j, d, generator=generator, device=generator.device, dtype=z.dtype).to(z.device)
            src = z[sel].detach() if self.detach else z[sel]  # detach option: points do not train their sources
            pts = intensity_points(src, directions, self.alpha).reshape(-1, d)
        owner = sel.repeat_interleave(j)[:, None].expand(-1, 2)
        inten = torch.arange(1, j + 1, device=labels.device).repeat(len(sel))
        return traced(embeddings, labels, pts, labels[sel].repeat_interleave(j), owner, inten)

    def extra_repr(self) -> str:
        return (
            f"num_intensities={self.num_intensities}, alpha={self.alpha}, band={self.band}, weight={self.weight}, "
            f"margin={self.margin}, class_margin={self.class_margin}, detach={self.detach}, space={self.space!r}"
        )
