"""Category-wise softmax embedding: the supervised variant of the instance softmax (SPEC.md §1 [choice]).

Ye, Shen, Zhang, Yuen, Chang, "Augmentation Invariant and Instance Spreading Feature for Softmax
Embedding", IEEE TPAMI 44(2), 2022. Only the abstract is known; the formula below is the project's
documented choice. The maths lives in :func:`deepmetric.functional.instance.category_softmax_loss`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from deepmetric.functional.instance import category_softmax_loss
from deepmetric.registry import LOSSES

__all__ = ["CategorySoftmaxLoss"]


@LOSSES.register("category_softmax")
class CategorySoftmaxLoss(nn.Module):
    """Binary-discrimination softmax over the batch with classes as the positive sets.

    For query a (self excluded), P_a = the other samples of its class, N_a = the other classes' samples::

        D_a = Σ_{p∈P_a} e^{s(a,p)/τ} + w Σ_{n∈N_a} e^{s(a,n)/τ},   p(a,b) = e^{s(a,b)/τ} / D_a
        L   = −(1/|A|) Σ_{a∈A} [ (1/|P_a|) Σ_{p∈P_a} log p(a,p) + w Σ_{n∈N_a} log(1 − p(a,n)) ]

    **[choice]** (SPEC §1): the softmax is the instance loss's (Ye et al., CVPR 2019, released-code form)
    with every same-class sample in D_a and the positive log-probabilities averaged. A is the set of
    anchors with at least one positive: anchors alone in their class are skipped (they remain keys). A
    batch with no positive pair at all returns a zero attached to the graph (zero gradients). When every
    class has exactly two samples this equals ``InstanceSoftmaxLoss(form="code")`` with the same
    ``stop_gradient``. Embeddings are L2-normalised inside.

    Args:
        temperature: τ = 0.1 (as the instance loss).
        negative_weight: w = 1.
        stop_gradient: detach the key side of every similarity (False: full gradient, the supervised
            default; True mirrors the released instance code).

    Shapes:
        embeddings (B, d), labels (B,) -> scalar.
    """

    def __init__(self, *, temperature: float = 0.1, negative_weight: float = 1.0, stop_gradient: bool = False) -> None:
        super().__init__()
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if not (negative_weight >= 0 and math.isfinite(negative_weight)):
            raise ValueError(f"negative_weight must be a finite number >= 0, got {negative_weight}")
        if not isinstance(stop_gradient, bool):
            raise ValueError(f"stop_gradient must be true or false, got {stop_gradient!r}")
        self.temperature = float(temperature)
        self.negative_weight = float(negative_weight)
        self.stop_gradient = stop_gradient

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, *, is_synthetic: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """embeddings (B, d), labels (B,) class labels -> scalar; ``is_synthetic`` rows are never anchors."""
        return category_softmax_loss(
            embeddings,
            labels,
            temperature=self.temperature,
            negative_weight=self.negative_weight,
            stop_gradient=self.stop_gradient,
            is_synthetic=is_synthetic,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, negative_weight={self.negative_weight}, stop_gradient={self.stop_gradient}"
