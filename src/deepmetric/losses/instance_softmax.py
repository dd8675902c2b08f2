"""Instance-wise softmax embedding: "invariant and spreading instance feature" (SPEC.md §1).

Ye, Zhang, Yuen, Chang, "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature",
CVPR 2019 — the loss that its released code trains with (default), and the paper's equations as an
option. The maths lives in :mod:`deepmetric.functional.instance`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from deepmetric.functional.instance import instance_softmax_loss
from deepmetric.registry import LOSSES

__all__ = ["InstanceSoftmaxLoss", "two_view_batch"]


def two_view_batch(
    view1_emb: torch.Tensor, view2_emb: torch.Tensor, instance_ids: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack the embeddings of two augmented views of m instances into the loss's (2m, d) / (2m,) inputs.

    Args:
        view1_emb: (m, d) embeddings of the first view of each instance.
        view2_emb: (m, d) embeddings of the second view, row i the same instance as ``view1_emb[i]``.
        instance_ids: (m,) distinct integer ids (e.g. dataset indices); default ``0..m-1``.

    Returns:
        ``(embeddings, labels)``: ``cat([view1, view2])`` (2m, d) and ``cat([ids, ids])`` (2m,), so the
        first occurrence of each id is view 1 (the f_i of the paper form) and the second view 2 (f̂_i).
    """
    if view1_emb.ndim != 2 or view1_emb.shape != view2_emb.shape:
        raise ValueError(
            f"the two views must both be (m, d) with the same shape, got {tuple(view1_emb.shape)} and {tuple(view2_emb.shape)}"
        )
    m = view1_emb.shape[0]
    if instance_ids is None:
        instance_ids = torch.arange(m, device=view1_emb.device)
    if instance_ids.shape != (m,):
        raise ValueError(f"instance_ids must have shape ({m},) to match the views, got {tuple(instance_ids.shape)}")
    if instance_ids.dtype.is_floating_point or instance_ids.dtype == torch.bool:
        raise ValueError(f"instance_ids must be integers, got dtype {instance_ids.dtype}")
    if torch.unique(instance_ids).numel() != m:
        raise ValueError(f"instance_ids must be distinct (one per instance), got {instance_ids.tolist()}")
    return torch.cat([view1_emb, view2_emb]), torch.cat([instance_ids, instance_ids])


@LOSSES.register("instance_softmax")
class InstanceSoftmaxLoss(nn.Module):
    """Instance-wise softmax embedding with invariance to augmentation and spread between instances.

    Ye et al., CVPR 2019 (SPEC §1). The batch is m instances seen in two augmented views: ``labels``
    are instance ids, each appearing exactly twice (``two_view_batch`` builds it). Embeddings are
    L2-normalised inside the loss, so s(a,b) is always a cosine similarity.

    ``form="code"`` (default, what produced the published numbers), for the B = 2m rows a with other view
    π(a)::

        p(a,b) = e^{s(a,b)/τ} / D_a,      D_a = e^{s(a,π(a))/τ} + w Σ_{b∉{a,π(a)}} e^{s(a,b)/τ}
        L = −(1/2m) Σ_a [ log p(a,π(a)) + w Σ_{b∉{a,π(a)}} log(1 − p(a,b)) ]

    ``form="paper"``: J = −Σ_i log P(i|x̂_i) − Σ_i Σ_{j≠i} log(1 − P(i|x_j)) literally (a sum over the
    m instances, so about m times the code form's scale; the first occurrence of an id is x_i, the
    second x̂_i). See :func:`deepmetric.functional.instance.instance_softmax_loss`.

    Extra views: a view synthesiser (``angular_perturbation``) gives every id the same number k > 2 of
    rows; the code form then averages log p over the k − 1 other views (unchanged for k = 2). Unequal
    counts are an error.

    Args:
        temperature: τ = 0.1.
        negative_weight: w = 1 (the released code's ``negM``).
        stop_gradient: True as in the released code: the key side of every similarity is a constant and
            gradients flow only through the query embedding; False trains both sides.
        form: ``"code"`` or ``"paper"``.
        hard_negative_fraction: keep only this most-similar fraction of each query's negatives (paper
            ablation: 0.5 ≈ no loss of accuracy); rounding ``max(1, ceil(fraction · n))``.

    Shapes:
        embeddings (2m, d), labels (2m,) -> scalar.
    """

    #: The training loop switches to the two-view, instance-id path for this loss.
    unsupervised = True

    def __init__(
        self,
        *,
        temperature: float = 0.1,
        negative_weight: float = 1.0,
        stop_gradient: bool = True,
        form: str = "code",
        hard_negative_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if not (negative_weight >= 0 and math.isfinite(negative_weight)):
            raise ValueError(f"negative_weight must be a finite number >= 0, got {negative_weight}")
        if not isinstance(stop_gradient, bool):
            raise ValueError(f"stop_gradient must be true or false, got {stop_gradient!r}")
        if form not in ("code", "paper"):
            raise ValueError(f"form must be 'code' (released code) or 'paper' (paper equations), got {form!r}")
        if not 0.0 < hard_negative_fraction <= 1.0:
            raise ValueError(f"hard_negative_fraction must be in (0, 1], got {hard_negative_fraction}")
        self.temperature = float(temperature)
        self.negative_weight = float(negative_weight)
        self.stop_gradient = stop_gradient
        self.form = form
        self.hard_negative_fraction = float(hard_negative_fraction)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, *, is_synthetic: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Loss of a two-view batch: embeddings (2m, d), labels (2m,) instance ids -> scalar.

        ``is_synthetic`` (from a synthesiser): those rows are keys only, never queries.
        """
        return instance_softmax_loss(
            embeddings,
            labels,
            temperature=self.temperature,
            negative_weight=self.negative_weight,
            stop_gradient=self.stop_gradient,
            form=self.form,
            hard_negative_fraction=self.hard_negative_fraction,
            is_synthetic=is_synthetic,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, negative_weight={self.negative_weight}, stop_gradient={self.stop_gradient}, "
            f"form={self.form!r}, hard_negative_fraction={self.hard_negative_fraction}"
        )
