"""Embedding Expansion (Ko & Gu, CVPR 2020; SPEC.md §2), and the traced batch that synthesisers of this
family return (where each synthetic row came from).

The geometry is :func:`deepmetric.functional.geometry.chord_points`; the released loss, with its
hard-negative-pair mining, is :class:`deepmetric.losses.hphn_triplet.HPHNTripletLoss`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from deepmetric.functional.geometry import chord_points, disjoint_class_pairs, same_class_pairs
from deepmetric.functional.similarity import l2_normalize
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.base import SynthBatch

__all__ = ["EmbeddingExpansion", "TracedSynthBatch", "traced"]


class TracedSynthBatch(SynthBatch):
    """A :class:`SynthBatch` that also records where every synthetic row came from.

    It is still the three-field tuple (``z, y, flags = batch`` and ``batch[:2]`` work unchanged); the
    trace rides along as attributes (a tuple subclass without ``__slots__`` has a ``__dict__``). Only
    the three fields survive ``_replace``/``_make``.

    Attributes:
        owner: (N, 2) long. For a synthetic row, the real row(s) it was made from (EE: the two parents
            x_i, x_j; symmetrical: the axis A then the reflected P; SEE and intra-variance: its source
            twice). −1 for real rows.
        intensity: (N,) long. Intra-variance: the intensity j >= 1 of a synthetic row; 0 elsewhere.
    """

    def __new__(cls, embeddings, labels, is_synthetic, owner=None, intensity=None):
        self = super().__new__(cls, embeddings, labels, is_synthetic)
        n = len(labels)
        self.owner = owner if owner is not None else torch.full((n, 2), -1, dtype=torch.long, device=labels.device)
        self.intensity = intensity if intensity is not None else torch.zeros(n, dtype=torch.long, device=labels.device)
        return self


def traced(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    synth: Optional[torch.Tensor] = None,
    synth_labels: Optional[torch.Tensor] = None,
    owner: Optional[torch.Tensor] = None,
    intensity: Optional[torch.Tensor] = None,
) -> TracedSynthBatch:
    """Originals first, then ``synth`` rows (S, d) with their (S, 2) owners and (S,) intensities."""
    b, dev = len(labels), labels.device
    if synth is None or len(synth) == 0:
        return TracedSynthBatch(*SynthBatch.identity(embeddings, labels))
    s = len(synth)
    base = SynthBatch.concat(embeddings, labels, synth, synth_labels)
    own = torch.cat([torch.full((b, 2), -1, dtype=torch.long, device=dev), owner.to(dev).long().reshape(s, 2)])
    inten = torch.zeros(b + s, dtype=torch.long, device=dev)
    if intensity is not None:
        inten[b:] = intensity.to(dev).long()
    return TracedSynthBatch(*base, owner=own, intensity=inten)


def check_batch(embeddings: torch.Tensor, labels: torch.Tensor, who: str) -> None:
    """The shape contract shared by the synthesisers of this family."""
    if embeddings.ndim != 2 or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{who}: expected embeddings (B, d) and labels (B,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")


def compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """float64 is kept (gradcheck), everything else is computed in float32 (DESIGN)."""
    return x if x.dtype == torch.float64 else x.float()


PAIRINGS = ("disjoint", "all")


@SYNTHESISERS.register("embedding_expansion")
class EmbeddingExpansion(nn.Module):
    """Embedding Expansion (Ko & Gu, CVPR 2020, Eq. 1; SPEC §2): points on the chord of same-class pairs.

    Pairs come from the labels, never from row positions. ``pairs="disjoint"`` (default, the released
    code clovaai/embedding-expansion loss/embedding_aug.py): each class's samples, in batch order, are
    paired off (1st with 2nd, 3rd with 4th, …; an odd one out stays unpaired) —
    ``disjoint_class_pairs``. ``pairs="all"``: every unordered same-class pair. For each pair (x_i, x_j),
    i < j, the n points x̄_k = (k·x_j + (n+1−k)·x_i)/(n+1), k = 1..n, are L2-normalised and labelled with
    the class (x_i, x_j are L2-normalised first). S = n × (number of pairs) rows, pair by pair, then k.
    The released code makes every point twice (once from each end of the pair, in mirrored order); one
    copy is kept here, which changes no hardest-pair (HPHN) value. Gradients flow through the synthetic
    points to both parents, as in the released code.

    The released loss is :class:`~deepmetric.losses.hphn_triplet.HPHNTripletLoss` (``loss.name:
    hphn_triplet``), which mines each anchor's hardest negative pair among its own synthetic points
    (``batch.owner``); any other loss sees real ∪ synthetic rows with anchors on real rows only
    (:class:`~deepmetric.losses.synthesis_loss.SynthesisLoss`, ``combine = "joint"``).

    Args:
        n: points per pair (n >= 0; 0 returns the batch unchanged). Released ``main.py``: 2.
        pairs: ``"disjoint"`` or ``"all"``.
    """

    #: The SynthesisLoss wrapper applies the base loss once to the enlarged batch, anchors on real rows.
    combine = "joint"

    def __init__(self, *, n: int = 2, pairs: str = "disjoint") -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n (points per same-class pair) must be an integer >= 0, got {n!r}")
        if pairs not in PAIRINGS:
            raise ValueError(f"pairs must be one of {PAIRINGS} (disjoint: each class's samples paired off, as the released code), got {pairs!r}")
        self.n = n
        self.pairs = pairs

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        proxies: Optional[torch.Tensor] = None,
        progress: float = 0.0,
    ) -> TracedSynthBatch:
        """embeddings (B, d), labels (B,) -> B + n·P rows (P pairs). Deterministic: ``generator``,
        ``proxies`` and ``progress`` are part of the contract and unused."""
        check_batch(embeddings, labels, "embedding_expansion")
        i, j = disjoint_class_pairs(labels) if self.pairs == "disjoint" else same_class_pairs(labels)
        if self.n == 0 or len(i) == 0:
            return traced(embeddings, labels)
        z = l2_normalize(compute_dtype(embeddings))
        pts = chord_points(z[i], z[j], self.n)  # (P, n, d)
        owner = torch.stack([i, j], dim=1).repeat_interleave(self.n, dim=0)
        return traced(embeddings, labels, pts.reshape(-1, z.shape[1]), labels[i].repeat_interleave(self.n), owner)

    def extra_repr(self) -> str:
        return f"n={self.n}, pairs={self.pairs!r}"
