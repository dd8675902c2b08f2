"""Compose any embedding-space synthesiser with any loss (SPEC.md §2–5; DESIGN "Synthesiser" contract).

``SynthesisLoss(base_loss, synthesiser)`` is itself a loss: ``forward(embeddings, labels, *, generator,
progress) -> scalar``. How real and synthetic rows meet the base loss is chosen by the synthesiser's
class attribute ``combine``:

* ``"separate"`` (SEE, Le & Woo 2024): L = base(real) + λ·base(synthetic) for proxy losses; for losses
  without proxies the second term is the base loss over real ∪ synthetic restricted to the tuples
  anchored on a real row whose other member(s) are synthetic.
* ``"joint"`` (EE, Ko & Gu 2020; symmetrical, Gu & Ko 2020; feature_interpolation and
  angular_perturbation): one base loss over real ∪ synthetic, anchors restricted to real rows where the
  base loss takes PML tuples; with EE's ``hard_pair_mining`` the tuples are EE's mined ones.
* ``"ranking"`` (intra-variance, Liu et al. 2024): L = base(real) + γ·IntraClassRankingLoss(batch).

``forward(..., return_terms=True)`` returns :class:`LossTerms` (loss, base, aux, weight), loss = base +
weight·aux, which the training loop logs as ``loss_base`` and ``loss_aux``. Synthesisers that work
before the embedding head (intra-variance, ``space="features"``) also get the context ``features=`` and
``head=`` that the loss receives.
"""
from __future__ import annotations

import inspect
from typing import NamedTuple, Optional, Tuple

import torch
from pytorch_metric_learning.losses import GenericPairLoss, TripletMarginLoss
from torch import nn

from deepmetric.losses.intra_ranking import IntraClassRankingLoss

__all__ = ["LossTerms", "SynthesisLoss", "base_proxies", "real_anchored_pairs", "real_anchored_triplets"]

COMBINE_RULES = ("separate", "joint", "ranking")


def base_proxies(base_loss: nn.Module) -> Optional[torch.Tensor]:
    """The (C, d) proxies of a base loss, or None.

    Read, in order: a ``proxies`` parameter of shape (C, d) (PML ProxyAnchorLoss, ProxyNCALoss), or a ``W``
    parameter, which PML's classification losses (NormalizedSoftmax, ArcFace, CosFace, …) store as
    (d, C) and is transposed here. Losses with several centres per class (SoftTriple) or none give None:
    synthesisers then work around class centres.
    """
    p = getattr(base_loss, "proxies", None)
    if isinstance(p, torch.Tensor) and p.ndim == 2:
        return p
    w = getattr(base_loss, "W", None)
    if isinstance(w, torch.Tensor) and w.ndim == 2:
        return w.t()
    return None


def _tuple_kind(base_loss: nn.Module) -> Tuple[Optional[str], nn.Module]:
    """("pair" | "triplet" | None, the PML loss): whether the base loss takes PML indices tuples.

    A wrapper with a PML loss in ``.loss`` and an ``indices_tuple`` argument (our MultiSimilarityWithMiner)
    counts as that loss.
    """
    inner = base_loss
    if not isinstance(base_loss, (GenericPairLoss, TripletMarginLoss)):
        inner = getattr(base_loss, "loss", None)
        if not isinstance(inner, (GenericPairLoss, TripletMarginLoss)):
            return None, base_loss
    if isinstance(inner, TripletMarginLoss):
        return "triplet", inner
    return "pair", inner


def real_anchored_pairs(labels: torch.Tensor, is_synthetic: torch.Tensor, *, synthetic_partner: bool = False):
    """PML pair tuple (a1, p, a2, n): every pair anchored on a real row (partner synthetic only, if asked)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    anchor = (~is_synthetic)[:, None]
    partner = is_synthetic[None, :] if synthetic_partner else torch.ones_like(anchor.t())
    a1, p = torch.nonzero(same & ~eye & anchor & partner, as_tuple=True)
    a2, n = torch.nonzero(~same & anchor & partner, as_tuple=True)
    return a1, p, a2, n


def real_anchored_triplets(labels: torch.Tensor, is_synthetic: torch.Tensor, *, synthetic_partner: bool = False):
    """PML triplets (a, p, n) with a real anchor (and p or n synthetic, if asked), built anchor by anchor."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    a, p = torch.nonzero(same & ~eye & (~is_synthetic)[:, None], as_tuple=True)
    neg = ~same[a]  # (T, N): the negatives of each (a, p)'s anchor
    t_idx, n = torch.nonzero(neg, as_tuple=True)
    a, p = a[t_idx], p[t_idx]
    if synthetic_partner:
        keep = is_synthetic[p] | is_synthetic[n]
        a, p, n = a[keep], p[keep], n[keep]
    return a, p, n


class LossTerms(NamedTuple):
    """A composite loss and its terms: ``loss = base + weight * aux``.

    Attributes:
        loss: the scalar that is minimised (carries the gradient).
        base: the base loss on the real rows. For ``combine="joint"`` (one loss over real ∪ synthetic
            rows) it is the base loss on the real rows alone, computed without gradient for reference.
        aux: the added term: λ·… / γ·… divided by its weight; for "joint" what the synthetic rows add
            (loss − base). Zero when nothing was synthesised.
        weight: λ or γ (1.0 for "joint").
    """

    loss: torch.Tensor
    base: torch.Tensor
    aux: torch.Tensor
    weight: float


class SynthesisLoss(nn.Module):
    """A base loss trained on real plus synthesised embeddings.

    The base loss's proxies (``base_proxies``) are passed to the synthesiser, which then works around the
    proxies (SEE, intra-variance) or, when there are none, around class centres. They stay parameters of
    ``base_loss`` (a sub-module), so the optimiser's loss group includes them.

    Args:
        base_loss: any loss ``(embeddings, labels) -> scalar`` (PML losses, our wrappers and losses).
        synthesiser: a synthesiser with a ``combine`` class attribute in {"separate", "joint", "ranking"}.
        weight: λ / γ of the synthetic term for "separate" and "ranking"; None takes the synthesiser's
            own ``weight`` (SEE λ = 0.2). "joint" has no weight: it must be None.
    """

    def __init__(self, base_loss: nn.Module, synthesiser: nn.Module, *, weight: Optional[float] = None) -> None:
        super().__init__()
        combine = getattr(synthesiser, "combine", None)
        if combine not in COMBINE_RULES:
            raise ValueError(
                f"synthesiser {type(synthesiser).__name__} has combine={combine!r}; it must declare a class attribute "
                f"combine in {COMBINE_RULES}"
            )
        if combine == "joint":
            if weight is not None:
                raise ValueError(
                    f"synthesis weight={weight} has no meaning for {type(synthesiser).__name__} (combine='joint': one "
                    "loss over real and synthetic rows); leave the weight unset (null)"
                )
        else:
            if weight is None:
                weight = getattr(synthesiser, "weight", None)
                if weight is None:
                    raise ValueError(f"{type(synthesiser).__name__} has no default weight: pass weight=")
            if not weight >= 0:
                raise ValueError(f"synthesis weight must be >= 0, got {weight}")
            weight = float(weight)
        self.base_loss = base_loss
        self.synthesiser = synthesiser
        self.combine = combine
        self.weight = weight
        self.ranking_loss = IntraClassRankingLoss(**synthesiser.ranking_loss_params()) if combine == "ranking" else None
        accepted = inspect.signature(synthesiser.forward).parameters
        #: whether the synthesiser works before the head: the loop then passes ``features=`` and ``head=``
        self.uses_features = "features" in accepted and "head" in accepted and getattr(synthesiser, "space", "features") == "features"

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        progress: float = 0.0,
        features: Optional[torch.Tensor] = None,
        head: Optional[nn.Module] = None,
        return_terms: bool = False,
    ):
        """embeddings (B, d), labels (B,) -> scalar, or :class:`LossTerms` with ``return_terms``.

        ``generator`` and ``progress`` go to the synthesiser, and so do ``features`` (B, F) (the pooled
        backbone features the embeddings were computed from) and ``head`` (the module mapping them to
        embeddings) when it uses them (:attr:`uses_features`).
        """
        terms = self._terms(embeddings, labels, generator=generator, progress=progress, features=features, head=head,
                            return_terms=return_terms)
        return terms if return_terms else terms.loss

    def _combined(self, real: torch.Tensor, extra: torch.Tensor) -> LossTerms:
        return LossTerms(real + self.weight * extra, real.detach(), extra.detach(), self.weight)

    def _joint(self, total: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, return_terms: bool) -> LossTerms:
        if not return_terms:  # the reference base loss costs a second evaluation: only when asked
            return LossTerms(total, total.detach(), torch.zeros_like(total.detach()), 1.0)
        with torch.no_grad():
            real = self.base_loss(embeddings, labels)
        return LossTerms(total, real, total.detach() - real, 1.0)

    def _terms(self, embeddings, labels, *, generator, progress, features, head, return_terms) -> LossTerms:
        proxies = base_proxies(self.base_loss)
        context = {"features": features, "head": head} if self.uses_features else {}
        batch = self.synthesiser(embeddings, labels, generator=generator, proxies=proxies, progress=progress, **context)
        z, y, syn = batch
        if not bool(syn.any()):  # nothing synthesised: exactly the base loss
            real = self.base_loss(embeddings, labels)
            return LossTerms(real, real.detach(), torch.zeros_like(real.detach()), 1.0 if self.weight is None else self.weight)
        kind, inner = _tuple_kind(self.base_loss)
        if self.combine == "separate":
            real = self.base_loss(embeddings, labels)
            if proxies is not None or kind is None:
                extra = self.base_loss(z[syn], y[syn]) if proxies is not None else self.base_loss(z, y)
            elif kind == "triplet":
                extra = self.base_loss(z, y, real_anchored_triplets(y, syn, synthetic_partner=True))
            else:
                extra = self.base_loss(z, y, real_anchored_pairs(y, syn, synthetic_partner=True))
            return self._combined(real, extra)
        if self.combine == "ranking":
            real = self.base_loss(embeddings, labels)
            owner = getattr(batch, "owner", None)
            intensity = getattr(batch, "intensity", None)
            if owner is None or intensity is None:
                raise ValueError(f"combine='ranking' needs a traced batch (owner, intensity) from the synthesiser, got {type(batch).__name__}")
            rank = self.ranking_loss(z, y, source=owner[:, 0], intensity=intensity, proxies=proxies)
            return self._combined(real, rank)
        # joint
        return self._joint(self._joint_loss(z, y, batch, kind, inner, syn, proxies), embeddings, labels, return_terms)

    def _joint_loss(self, z, y, batch, kind, inner, syn, proxies) -> torch.Tensor:
        if kind is None or proxies is not None:
            return self.base_loss(z, y)
        if getattr(self.synthesiser, "hard_pair_mining", False):
            return self._mined(z, y, batch, kind, inner)
        miner = getattr(self.base_loss, "miner", None)
        if kind == "pair" and miner is not None:
            # The base loss's own miner on the enlarged batch, then only the tuples anchored on real rows.
            a1, p, a2, n = miner(z, y)
            k1, k2 = ~syn[a1], ~syn[a2]
            return self.base_loss(z, y, (a1[k1], p[k1], a2[k2], n[k2]))
        tuples = real_anchored_triplets(y, syn) if kind == "triplet" else real_anchored_pairs(y, syn)
        return self.base_loss(z, y, tuples)

    def _mined(self, z: torch.Tensor, y: torch.Tensor, batch, kind: str, inner: nn.Module) -> torch.Tensor:
        """EE's hard positive and hard negative pair per real anchor (SPEC §2)."""
        mat = inner.distance(z)
        similarity = mat if inner.distance.is_inverted else -mat
        a, p, x, n = self.synthesiser.mine(similarity, batch)
        if kind == "pair":
            return self.base_loss(z, y, (a, p, x, n))
        if len(a) == 0:
            return (z * 0.0).sum()
        # The released HPHN triplet: [d(a, p*) − d(x*, n*) + m]_+, averaged over the real anchors.
        violation = inner.distance.margin(mat[a, p], mat[x, n]) + inner.margin
        loss = torch.nn.functional.softplus(violation) if inner.smooth_loss else torch.relu(violation)
        return loss.mean()

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, weight={self.weight}"
