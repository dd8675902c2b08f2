"""The common contract of every embedding-space synthesiser."""
from __future__ import annotations

from typing import NamedTuple

import torch


class SynthBatch(NamedTuple):
    """Output of a synthesiser: originals first, then synthetic points.

    Attributes:
        embeddings: (B + S, d) real embeddings (unchanged, first B rows) followed by S synthetic ones.
        labels: (B + S,) class (or instance) labels of every row.
        is_synthetic: (B + S,) bool, False for the first B rows.
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    is_synthetic: torch.Tensor

    @staticmethod
    def identity(embeddings: torch.Tensor, labels: torch.Tensor) -> "SynthBatch":
        """The batch with nothing synthesised."""
        return SynthBatch(embeddings, labels, torch.zeros(len(labels), dtype=torch.bool, device=labels.device))

    @staticmethod
    def concat(embeddings: torch.Tensor, labels: torch.Tensor, synth: torch.Tensor, synth_labels: torch.Tensor) -> "SynthBatch":
        """Originals first, then ``synth`` rows."""
        flags = torch.cat([
            torch.zeros(len(labels), dtype=torch.bool, device=labels.device),
            torch.ones(len(synth_labels), dtype=torch.bool, device=labels.device),
        ])
        return SynthBatch(torch.cat([embeddings, synth.to(embeddings.dtype)]), torch.cat([labels, synth_labels]), flags)
