"""Symmetrical synthesis (Gu & Ko, "Symmetrical Synthesis for Deep Metric Learning", AAAI 2020; SPEC.md §3).

The geometry is :func:`deepmetric.functional.geometry.reflect`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from deepmetric.functional.geometry import reflect, same_class_pairs
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.embedding_expansion import TracedSynthBatch, check_batch, compute_dtype, traced

__all__ = ["SymmetricalSynthesis"]


@SYNTHESISERS.register("symmetrical")
class SymmetricalSynthesis(nn.Module):
    """Reflections of each positive about the axis through its anchor, both ways (SPEC §3).

    For every unordered same-class pair {A, P} (from the labels, never from row positions) two points:
    Q = 2(P·Â)Â − P (P reflected about A's axis) and its symmetric 2(A·P̂)P̂ − A, labelled with the class.
    The reflection is applied to the embeddings as given (not re-normalised), so ‖Q‖ = ‖P‖ and the angle
    between Q and A equals that between P and A. S = 2 × (number of same-class pairs) rows, pair by
    pair in row order of (i, j), i < j: first x_j reflected about x_i, then x_i about x_j. Gradients
    flow through the synthetic points.
    """

    #: The SynthesisLoss wrapper applies the base loss once to real ∪ synthetic, anchors on real rows.
    combine = "joint"

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        proxies: Optional[torch.Tensor] = None,
        progress: float = 0.0,
    ) -> TracedSynthBatch:
        """embeddings (B, d), labels (B,) -> B + 2P rows. Deterministic: the keyword context is unused."""
        check_batch(embeddings, labels, "symmetrical")
        i, j = same_class_pairs(labels)
        if len(i) == 0:
            return traced(embeddings, labels)
        x = compute_dtype(embeddings)
        q = torch.stack([reflect(x[j], x[i]), reflect(x[i], x[j])], dim=1).reshape(-1, x.shape[1])
        owner = torch.stack([torch.stack([i, j], dim=1), torch.stack([j, i], dim=1)], dim=1).reshape(-1, 2)
        return traced(embeddings, labels, q, labels[i].repeat_interleave(2), owner)
