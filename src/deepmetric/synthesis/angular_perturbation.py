"""Angular perturbation of embeddings on the sphere (TPAMI 2022 feature augmentation (b); SPEC.md §1 [choice]).

Ye, Shen, Zhang, Yuen, Chang, "Augmentation Invariant and Instance Spreading Feature for Softmax
Embedding", IEEE TPAMI 44(2), 2022 ("two domain-agnostic augmentation strategies in feature space");
the paper text is unavailable, so this is the project's documented choice. The geometry is
:func:`deepmetric.functional.instance.rotate_on_sphere`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from deepmetric.functional.instance import rotate_on_sphere
from deepmetric.functional.similarity import l2_normalize
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.base import SynthBatch

__all__ = ["AngularPerturbation"]


@SYNTHESISERS.register("angular_perturbation")
class AngularPerturbation(nn.Module):
    """Extra views: every embedding rotated on the sphere by a random bounded angle.

    Each (L2-normalised) embedding z gets ``num_copies`` perturbed copies ``z cos θ + t sin θ`` — the
    exact geodesic at angle θ ~ U[0, max_angle] in the direction of a unit tangent t ⟂ z drawn uniformly
    (a Gaussian vector projected onto the tangent space). The angle between a copy and its source is θ.

    **[choice]** (SPEC §1, TPAMI augmentation (b)): a copy keeps the label (instance id) of its source,
    i.e. it is an extra *view* of the same instance. Giving it a new id would make a near-copy of
    instance i one of i's negatives, and the loss would push i away from itself. So with a two-view
    batch every id appears 2·(1 + num_copies) times afterwards: ``InstanceSoftmaxLoss`` (form "code")
    and ``CategorySoftmaxLoss`` treat all rows of an id as positives of each other (log-probabilities
    averaged), which reduces to the two-view loss when there are no copies. Because every row is copied
    the same number of times, equal id counts stay equal. Output rows: the originals (unchanged), then
    copy 1 of every row in the original order, then copy 2, ….

    Random draws (in this order, all from ``generator``): Gaussian directions (B·n, d), angles (B·n,).

    Args:
        max_angle_deg: the largest rotation, in degrees, in (0, 180).
        num_copies: perturbed copies n per embedding; 0 returns the batch unchanged.
        detach: True stops gradients through the copies; False (default) lets their loss train their
            source embeddings.
    """

    #: The SynthesisLoss wrapper applies the base loss once to the whole enlarged batch.
    combine = "joint"

    def __init__(self, *, max_angle_deg: float = 15.0, num_copies: int = 1, detach: bool = False) -> None:
        super().__init__()
        if not 0.0 < max_angle_deg < 180.0:
            raise ValueError(f"max_angle_deg must be in (0, 180) degrees, got {max_angle_deg}")
        if isinstance(num_copies, bool) or not isinstance(num_copies, int) or num_copies < 0:
            raise ValueError(f"num_copies must be an integer >= 0 (perturbed copies per embedding), got {num_copies!r}")
        if not isinstance(detach, bool):
            raise ValueError(f"detach must be true or false, got {detach!r}")
        self.max_angle_deg = float(max_angle_deg)
        self.num_copies = num_copies
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
        """embeddings (B, d), labels (B,) -> SynthBatch of B·(1 + num_copies) rows.

        ``proxies`` and ``progress`` are part of the synthesiser contract and unused here.
        """
        if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
            raise ValueError(f"expected embeddings (B, d) and labels (B,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
        n = self.num_copies
        if n == 0 or embeddings.shape[0] == 0:
            return SynthBatch.identity(embeddings, labels)
        b, d = embeddings.shape
        if d < 2:
            raise ValueError(f"angular_perturbation needs embedding dimension >= 2 (a tangent direction), got d={d}")
        if generator is None:  # a local, fixed seed: never the global RNG
            generator = torch.Generator(device=embeddings.device).manual_seed(0)
        dev = generator.device
        dtype = embeddings.dtype if embeddings.dtype.is_floating_point else torch.float32
        direction = torch.randn(b * n, d, generator=generator, device=dev, dtype=dtype).to(embeddings.device)
        angle = torch.rand(b * n, generator=generator, device=dev, dtype=dtype).to(embeddings.device)
        angle = angle * math.radians(self.max_angle_deg)

        z = l2_normalize(embeddings)
        if self.detach:
            z = z.detach()  # copies are constants: extra views that do not train their sources
        synth = rotate_on_sphere(z.repeat(n, 1), direction, angle)
        return SynthBatch.concat(embeddings, labels, synth, labels.repeat(n))

    def extra_repr(self) -> str:
        return f"max_angle_deg={self.max_angle_deg}, num_copies={self.num_copies}, detach={self.detach}"
