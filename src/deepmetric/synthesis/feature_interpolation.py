"""Feature-space interpolation between the views of an instance and between instances (TPAMI 2022 feature
augmentation (a); SPEC.md §1 [choice]).

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
    """Interpolation on the sphere: new views of every instance, and new instances between two instances.

    **[choice]** (SPEC §1, TPAMI augmentation (a): "interpolation between the two views of an instance and
    between different instances"). Both parts are exact slerp on the sphere (rows L2-normalised first),
    so an interpolant lies on the great circle between its two ends at angle t·Ω from the first, with an
    arc fraction t ~ U[alpha, 1 − alpha] that keeps it at least that fraction of the arc from both ends
    (not a near-copy the loss would then push away from its own end).

    * Between instances (``num_synthetic`` = S new instances): two different instances i ≠ j are drawn
      uniformly (by id: pairs come from the labels, never from row positions) with one t; view v of the
      new instance is ``slerp(view_v(i), view_v(j), t)`` for every view v. The new instance gets a NEW
      id ``max(labels) + 1 …`` and is an extra negative of every other one: a larger batch without
      extra forward passes.
    * Between views (``views``): every instance, real or new, gets one more view
      ``slerp(view_1, view_2, t)`` on the arc between its first two views, labelled with its id: a new
      positive between the two augmentations.

    Every id then appears equally often (k views, plus one with ``views``), so ``InstanceSoftmaxLoss``
    accepts the enlarged batch unchanged. Output rows: the originals (unchanged), then view 1 of the S new
    instances, then view 2, …, then (``views``) the between-view rows of the real instances (in increasing
    id order) and of the S new ones.

    Random draws (in this order, all from ``generator``): first parents (S,), offsets to the second
    parents (S,), arc fractions (S,), then with ``views`` the between-view fractions (m + S,).

    Args:
        num_synthetic: number S of new instances; None = m, the batch's number of instances (doubling the
            batch); 0 makes none.
        alpha: in [0, 0.5]; t ~ U[alpha, 1 − alpha] (0.5: always the midpoint).
        views: also add one between-view interpolant per instance (default True).
        detach: True stops gradients through the synthetic points (they act as constant extra
            instances); False (default) lets their loss train the parents' embeddings.
    """

    #: The SynthesisLoss wrapper applies the base loss once to the whole enlarged batch.
    combine = "joint"

    def __init__(
        self, *, num_synthetic: Optional[int] = None, alpha: float = 0.25, views: bool = True, detach: bool = False
    ) -> None:
        super().__init__()
        if num_synthetic is not None and (isinstance(num_synthetic, bool) or not isinstance(num_synthetic, int) or num_synthetic < 0):
            raise ValueError(f"num_synthetic must be None (as many as the batch has instances) or an integer >= 0, got {num_synthetic!r}")
        if not 0.0 <= alpha <= 0.5:
            raise ValueError(f"alpha must be in [0, 0.5] (arc fractions are drawn from [alpha, 1 - alpha]), got {alpha}")
        if not isinstance(views, bool):
            raise ValueError(f"views must be true or false (interpolate between the views of each instance), got {views!r}")
        if not isinstance(detach, bool):
            raise ValueError(f"detach must be true or false, got {detach!r}")
        self.num_synthetic = num_synthetic
        self.alpha = float(alpha)
        self.views = views
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
        """embeddings (B, d), labels (B,) instance ids (each k >= 2 times) -> SynthBatch of B + k·S (+ m + S) rows.

        ``proxies`` and ``progress`` are part of the synthesiser contract and unused here.
        """
        if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
            raise ValueError(f"expected embeddings (B, d) and labels (B,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
        _, index = instance_views(labels)
        m, k = index.shape
        s = m if self.num_synthetic is None else self.num_synthetic
        if s == 0 and not self.views:
            return SynthBatch.identity(embeddings, labels)
        if s > 0 and m < 2:
            raise ValueError(f"feature_interpolation needs at least 2 instances in the batch to interpolate between, got {m}")
        if generator is None:  # a local, fixed seed: never the global RNG
            generator = torch.Generator(device=embeddings.device).manual_seed(0)
        dev = generator.device
        dtype = embeddings.dtype if embeddings.dtype.is_floating_point else torch.float32
        first = torch.randint(m, (s,), generator=generator, device=dev)
        # An offset in 1..m-1 guarantees a second parent different from the first.
        second = (first + 1 + torch.randint(max(1, m - 1), (s,), generator=generator, device=dev)) % m
        t = self._fractions(s, generator, dtype)
        first, second, t = first.to(embeddings.device), second.to(embeddings.device), t.to(embeddings.device)

        z = l2_normalize(embeddings)
        if self.detach:
            z = z.detach()  # synthetic points are constants: they add instances without training the parents
        new_views = [slerp(z[index[first, v]], z[index[second, v]], t) for v in range(k)]
        new_ids = labels.max() + 1 + torch.arange(s, device=labels.device, dtype=labels.dtype)
        rows, ids = new_views, [new_ids.repeat(k)]
        if self.views:
            tv = self._fractions(m + s, generator, dtype).to(embeddings.device)
            a = torch.cat([z[index[:, 0]], new_views[0]])
            b = torch.cat([z[index[:, 1]], new_views[1]])
            rows = rows + [slerp(a, b, tv)]
            ids = ids + [torch.cat([labels[index[:, 0]], new_ids])]
        return SynthBatch.concat(embeddings, labels, torch.cat(rows), torch.cat(ids))

    def _fractions(self, count: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """Arc fractions t ~ U[alpha, 1 − alpha], (count,)."""
        return self.alpha + (1.0 - 2.0 * self.alpha) * torch.rand(count, generator=generator, device=generator.device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"num_synthetic={self.num_synthetic}, alpha={self.alpha}, views={self.views}, detach={self.detach}"
