"""Feature-space interpolation between instances (TPAMI 2022 feature augmentation (a); SPEC.md §1 [choice]).

Ye, Shen, Zhang, Yuen, Chang, "Augmentation Invariant and Instance Spreading Feature for Softmax
Embedding", IEEE TPAMI 44(2), 2022 propose "two domain-agnostic augmentation strategies in feature space
that simulate large-batch training with a small batch"; the paper text is unavailable, so this is the
project's documented choice. The geometry is :func:`deepmetric.functional.instance.slerp`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from deepmetric.functional.instance import instance_views, slerp
from deepmetric.functional.similarity import l2_normalize
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.base import SynthBatch

__all__ = ["FeatureInterpolation"]


@SYNTHESISERS.register("feature_interpolation")
class FeatureInterpolation(nn.Module):
    """New instances on the great circle between two different instances, built view by view.

    **[choice]** (SPEC §1, TPAMI augmentation (a)). For each of S new instances, two different instances
    i ≠ j of the batch are drawn uniformly (by id: pairs come from the labels, never from row positions)
    and one arc fraction t ~ U[alpha, 1 − alpha]; view v of the new instance is
    ``slerp(view_v(i), view_v(j), t)`` for every view v (view 1 of i with view 1 of j, view 2 of i with
    view 2 of j, same t). The two interpolated views are a new positive pair, and the new instance is an
    extra negative of every other one — a larger batch without extra forward passes. ``alpha`` keeps the
    new instance at least that fraction of the arc away from both parents, so it is not a near-copy of a
    parent that the loss would then push away from that parent.

    Interpolation is exact slerp on the sphere (the parents are L2-normalised first), so an interpolant
    lies on the great circle between its parents at angle t·Ω from the first. Synthetic rows get NEW
    instance ids ``max(labels) + 1 …`` each appearing as often as the real ids (twice for a two-view
    batch), so ``InstanceSoftmaxLoss`` accepts the enlarged batch unchanged. Output rows: the originals
    (unchanged), then view 1 of the S new instances, then view 2, ….

    Random draws (in this order, all from ``generator``): first parents (S,), offsets to the second
    parents (S,), arc fractions (S,).

    Args:
        num_synthetic: number S of new instances; None = m, the batch's number of instances (doubling the
            batch); 0 returns the batch unchanged.
        alpha: in [0, 0.5]; t ~ U[alpha, 1 − alpha] (0.5: always the midpoint).
        detach: True stops gradients through the synthetic points (they act as constant extra
            instances); False (default) lets their loss train the parents' embeddings.
    """

    #: The SynthesisLoss wrapper applies the base loss once to the whole enlarged batch.
    combine = "joint"

    def __init__(self, *, num_synthetic: Optional[int] = None, alpha: float = 0.25, detach: bool = False) -> None:
        super().__init__()
        if num_synthetic is not None and (isinstance(num_synthetic, bool) or not isinstance(num_synthetic, int) or num_synthetic < 0):
            raise ValueError(f"num_synthetic must be None (as many as the batch has instances) or an integer >= 0, got {num_synthetic!r}")
        if not 0.0 <= alpha <= 0.5:
            raise ValueError(f"alpha must be in [0, 0.5] (arc fractions are drawn from [alpha, 1 - alpha]), got {alpha}")
        if not isinstance(detach, bool):
            raise ValueError(f"detach must be true or false, got {detach!r}")
        self.num_synthetic = num_synthetic
        self.alpha = float(alpha)
        self.detach = detach

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        proxies: Optional[torch.Tensor] = None,
        progress: float = 0.0,
    ) -> SynthBatch:
        """embeddings (B, d), labels (B,) instance ids (each k >= 2 times) -> SynthBatch of B + k·S rows.

        ``proxies`` and ``progress`` are part of the synthesiser contract and unused here.
        """
        if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
            raise ValueError(f"expected embeddings (B, d) and labels (B,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
        _, index = instance_views(labels)
        m, k = index.shape
        s = m if self.num_synthetic is None else self.num_synthetic
        if s == 0:
            return SynthBatch.identity(embeddings, labels)
        if m < 2:
            raise ValueError(f"feature_interpolation needs at least 2 instances in the batch to interpolate between, got {m}")
        if generator is None:  # a local, fixed seed: never the global RNG
            generator = torch.Generator(device=embeddings.device).manual_seed(0)
        dev = generator.device
        dtype = embeddings.dtype if embeddings.dtype.is_floating_point else torch.float32
        first = torch.randint(m, (s,), generator=generator, device=dev)
        # An offset in 1..m-1 guarantees a second parent different from the first.
        second = (first + 1 + torch.randint(m - 1, (s,), generator=generator, device=dev)) % m
        t = self.alpha + (1.0 - 2.0 * self.alpha) * torch.rand(s, generator=generator, device=dev, dtype=dtype)
        first, second, t = first.to(embeddings.device), second.to(embeddings.device), t.to(embeddings.device)

        z = l2_normalize(embeddings)
        if self.detach:
            z = z.detach()  # synthetic points are constants: they add instances without training the parents
        synth = torch.cat([slerp(z[index[first, v]], z[index[second, v]], t) for v in range(k)])
        new_ids = labels.max() + 1 + torch.arange(s, device=labels.device, dtype=labels.dtype)
        return SynthBatch.concat(embeddings, labels, synth, new_ids.repeat(k))

    def extra_repr(self) -> str:
        return f"num_synthetic={self.num_synthetic}, alpha={self.alpha}, detach={self.detach}"
