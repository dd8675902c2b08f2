"""Spherical Embedding Expansion (Le & Woo, PAKDD 2024; SPEC.md §4).

The geometry is :func:`deepmetric.functional.geometry.spherical_expansion_points` (a regular simplex
from :func:`deepmetric.functional.geometry.max_mahalanobis_centers`, Pang et al. 2018).
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from deepmetric.functional.geometry import MIN_RESIDUAL, class_centres, spherical_expansion_points
from deepmetric.functional.similarity import l2_normalize
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.embedding_expansion import TracedSynthBatch, check_batch, compute_dtype, traced

__all__ = ["SphericalExpansion", "class_axes"]

SCHEDULES = ("epoch", "step")


def class_axes(z: torch.Tensor, labels: torch.Tensor, proxies: Optional[torch.Tensor], who: str) -> torch.Tensor:
    """(B, d) unit axis of every sample's class: its proxy, or (no proxies) its class centre in the batch.

    The axis is a fixed reference frame for the geometry: it is detached, the base loss trains the
    proxies directly.
    """
    if proxies is None:
        centres, _, inverse = class_centres(z, labels)
        return centres.detach()[inverse]  # reference frame only: no gradient through the centre
    if proxies.ndim != 2 or proxies.shape[1] != z.shape[1]:
        raise ValueError(f"{who}: proxies must be (C, d) with d = {z.shape[1]} (the embedding size), got {tuple(proxies.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= proxies.shape[0]):
        raise ValueError(
            f"{who}: labels must index the {proxies.shape[0]} proxies (0..{proxies.shape[0] - 1}), got labels in "
            f"[{int(labels.min())}, {int(labels.max())}]; remap the labels to 0..C-1 or pass proxies=None to use class centres"
        )
    return l2_normalize(proxies.detach().to(z.dtype))[labels]  # reference frame only: the loss trains the proxies


def rank_order(score: torch.Tensor) -> torch.Tensor:
    """Rows by decreasing score, ties by row index. Random draws follow this order, not row positions,
    so permuting the batch permutes the synthetic set with it."""
    return torch.argsort(score.detach(), descending=True, stable=True)


@SYNTHESISERS.register("see")
class SphericalExpansion(nn.Module):
    """SEE: n maximally spread points on each easy sample's circle of constant cosine to its proxy (SPEC §4).

    For a unit embedding z of class c with unit proxy w: M = (z·w)w, r = z − M, u = r/‖r‖. A regular
    simplex of n+1 unit vectors (pairwise −1/n) in w's orthogonal complement has u as one vertex and the
    others v_1..v_n in a fresh random orientation (from ``generator``) every call; the synthetic points
    are M + ‖r‖·v_k, unit-norm with exactly z's cosine to w.

    Which samples: the round(ρ·B) samples of the batch with the largest cosine to their own proxy (the
    easiest; ties by row index). The count and the schedule are the released code's
    (Leminhbinh0209/PAKDD24-SEE, trainer/sphericalexpansion.py): ``int(np.round(B·ρ))`` — round half to
    even, which Python's ``round`` also does (B·ρ = 2.5 gives 2, 3.5 gives 4) — with
    ρ = ρ1 − (ρ1 − ρ0)(cos πp + 1)/2 (a half-cosine from ρ0 to ρ1). ``schedule="epoch"`` (default,
    released): ρ is updated once per epoch, p = min(e, cap)/min(E, cap) for the 0-based epoch e of E
    (``cap_epochs`` = 200), so the last epoch has p = (E−1)/E and runs past the cap stay at ρ1.
    ``schedule="step"``: p = ``progress`` (the fraction of training steps done). A selected sample with
    z ∥ w (‖r‖ < 1e-6) has no residual direction and is not expanded (the others are not moved up to
    replace it).
    **[choice]** Without proxies (pair-based losses) the axis is the normalised mean of the class in the
    batch; a class with one sample then has z = w and is never expanded.

    Output: originals, then the n points of each expanded sample (samples by decreasing cosine, the
    order in which their random orientations are drawn), labelled with the sample's class. Random draws
    (from ``generator``, a local one seeded 0 if None): Gaussian frames (k, d, n − 1).

    Loss (SynthesisLoss, ``combine = "separate"``): L = base(real) + weight·base(synthetic), λ = 0.2.

    Args:
        n: synthetic points per sample (n >= 1); needs embedding dimension d >= n + 2.
        weight: λ, the weight of the synthetic term (SynthesisLoss's default).
        fraction_schedule: (ρ0, ρ1) in [0, 1], the expanded fraction at the start and end of training.
        schedule: ``"epoch"`` (released: ρ from the epoch, needs ``epoch=``/``epochs=`` in forward) or
            ``"step"`` (ρ from ``progress``).
        cap_epochs: the epoch after which ρ stays at ρ1 (released: 200), for ``schedule="epoch"``.
        detach: stop gradients through the synthetic points (released code: they train the proxies only).
    """

    combine = "separate"

    def __init__(
        self,
        *,
        n: int = 8,
        weight: float = 0.2,
        fraction_schedule: Sequence[float] = (0.0, 0.4),
        schedule: str = "epoch",
        cap_epochs: int = 200,
        detach: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (synthetic points per sample) must be an integer >= 1, got {n!r}")
        if not (isinstance(weight, (int, float)) and weight >= 0):
            raise ValueError(f"weight (λ) must be a number >= 0, got {weight!r}")
        sched = tuple(fraction_schedule)
        if len(sched) != 2 or not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in sched):
            raise ValueError(f"fraction_schedule must be two fractions (start, end) in [0, 1], got {fraction_schedule!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} (epoch: once per epoch, as the released code), got {schedule!r}")
        if isinstance(cap_epochs, bool) or not isinstance(cap_epochs, int) or cap_epochs < 1:
            raise ValueError(f"cap_epochs must be an integer >= 1 (released: 200), got {cap_epochs!r}")
        if not isinstance(detach, bool):
            raise ValueError(f"detach must be true or false, got {detach!r}")
        self.n = n
        self.schedule = schedule
        self.cap_epochs = cap_epochs
        self.weight = float(weight)
        self.fraction_schedule: Tuple[float, float] = (float(sched[0]), float(sched[1]))
        self.detach = detach

    def fraction(self, *, progress: float = 0.0, epoch: Optional[int] = None, epochs: Optional[int] = None) -> float:
        """ρ for this step: from the epoch (``schedule="epoch"``) or from ``progress`` (``"step"``)."""
        if self.schedule == "epoch":
            if epoch is None or epochs is None:
                raise ValueError(
                    "see: schedule='epoch' (the released per-epoch update) needs epoch= (0-based) and epochs= (total) in "
                    f"the call, got epoch={epoch!r}, epochs={epochs!r}; the training loop passes them, or use schedule='step'"
                )
            if not 0 <= epoch < epochs:
                raise ValueError(f"see: epoch must be in 0..epochs-1, got epoch={epoch} of epochs={epochs}")
            p = min(epoch, self.cap_epochs) / min(epochs, self.cap_epochs)
        else:
            p = min(1.0, max(0.0, float(progress)))
        lo, hi = self.fraction_schedule
        # The released formula term by term (max − Δ·(cos πp + 1)/2), so round() sees the same float.
        return hi - (hi - lo) * ((math.cos(math.pi * p) + 1.0) / 2.0)

    def count(self, batch_size: int, **schedule_context) -> int:
        """Samples to expand: ``round(B·ρ)``, round half to even as the released ``int(np.round(...))``."""
        return int(round(batch_size * self.fraction(**schedule_context)))

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        proxies: Optional[torch.Tensor] = None,
        progress: float = 0.0,
        epoch: Optional[int] = None,
        epochs: Optional[int] = None,
    ) -> TracedSynthBatch:
        """embeddings (B, d), labels (B,), proxies (C, d) or None -> B + n·k rows (k expanded samples).

        ``epoch`` (0-based) and ``epochs`` drive ρ for ``schedule="epoch"``, ``progress`` for ``"step"``.
        """
        check_batch(embeddings, labels, "see")
        b, d = embeddings.shape
        if d < self.n + 2:
            raise ValueError(
                f"see: the embedding dimension must be >= n + 2 for a simplex of n+1 vertices orthogonal to the proxy; "
                f"got embedding dimension d={d} with n={self.n}; lower n to at most {d - 2} or use a larger embedding"
            )
        k = self.count(b, progress=progress, epoch=epoch, epochs=epochs)
        if k == 0:
            return traced(embeddings, labels)
        z = l2_normalize(compute_dtype(embeddings))
        w = class_axes(z, labels, proxies, "see")
        cos = (z * w).sum(dim=1)
        top = rank_order(cos)[:k]
        residual = torch.linalg.vector_norm((z - cos[:, None] * w).detach(), dim=1)
        sel = top[residual[top] >= MIN_RESIDUAL]  # z ∥ w: no residual direction, not expanded
        if len(sel) == 0:
            return traced(embeddings, labels)
        if generator is None:  # a local, fixed seed: never the global RNG
            generator = torch.Generator(device=embeddings.device).manual_seed(0)
        noise = torch.randn(len(sel), d, self.n - 1, generator=generator, device=generator.device, dtype=z.dtype).to(z.device)
        # detach (released code): synthetic points train the proxies only, so their geometry needs no graph
        with torch.no_grad() if self.detach else contextlib.nullcontext():
            pts, _ = spherical_expansion_points(z[sel], w[sel], noise)
        owner = sel.repeat_interleave(self.n)[:, None].expand(-1, 2)
        return traced(embeddings, labels, pts.reshape(-1, d), labels[sel].repeat_interleave(self.n), owner)

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, weight={self.weight}, fraction_schedule={self.fraction_schedule}, schedule={self.schedule!r}, "
            f"cap_epochs={self.cap_epochs}, detach={self.detach}"
        )
