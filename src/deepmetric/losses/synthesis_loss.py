"""Compose any embedding-space synthesiser with any loss (SPEC.md §2–5; DESIGN "Synthesiser" contract).

``SynthesisLoss(base_loss, synthesiser)`` is itself a loss: ``forward(embeddings, labels, *, generator,
progress, epoch, epochs) -> scalar``. How real and synthetic rows meet the base loss is chosen by the
synthesiser's class attribute ``combine``; in every rule a synthetic row is never the anchor of a
tuple (DESIGN: losses read ``is_synthetic``):

* ``"separate"`` (SEE, Le & Woo 2024): L = base(real) + λ·T, where T is the base loss's own mean over
  the tuples that contain synthetic points, whatever the number of synthetic rows (λ means λ):
  proxy/classification losses score the synthetic rows alone, base(synthetic); pair and triplet
  losses take the tuples anchored on a real row whose other member(s) are synthetic, and a loss that
  averages per anchor (Multi-Similarity) averages over the real anchors that have such tuples, not
  over every row of the enlarged batch; the softmax embeddings (no tuples) take the real queries'
  softmax over real ∪ synthetic keys.
* ``"joint"`` (EE, Ko & Gu 2020; symmetrical, Gu & Ko 2020; feature_interpolation and
  angular_perturbation): one base loss over real ∪ synthetic with anchors on real rows, averaged over
  the real rows as base(real) is; ``hphn_triplet`` mines EE's hard negative pairs itself.
* ``"ranking"`` (intra-variance, Liu et al. 2024): L = base(real) + γ·IntraClassRankingLoss(batch).

How a base loss keeps synthetic rows from anchoring (``base_kind``): PML pair and triplet losses get
explicit tuples with the real rows as queries and real ∪ synthetic as PML's reference set
(``ref_emb``); N-pair gets real-anchored pairs; losses with an ``is_synthetic`` argument (instance and
category softmax) use synthetic rows as keys only; proxy/classification losses (trainable per-class
weights or centres: Proxy-Anchor, normalised softmax, ArcFace, CosFace, SoftTriple) anchor on their
proxies, and synthetic rows are scored like real ones. Any other loss is refused with an error.

``forward(..., return_terms=True)`` returns :class:`LossTerms` (loss, base, aux, weight), loss = base +
weight·aux, which the training loop logs as ``loss_base`` and ``loss_aux``. Synthesisers that work
before the embedding head (intra-variance, ``space="features"``) also get the context ``features=`` and
``head=`` that the loss receives; those that augment images (intra-variance, ``space="image"``) get
``images=``, ``embed=`` and ``image_rows=``.
"""
from __future__ import annotations

import inspect
from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import nn

from deepmetric.losses.hphn_triplet import HPHNTripletLoss
from deepmetric.losses.intra_ranking import IntraClassRankingLoss

__all__ = ["ComposedSynthesisLoss", "LossTerms", "SynthesisLoss", "base_kind", "base_proxies", "real_anchored_pairs", "real_anchored_triplets"]

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


BASE_KINDS = ("hphn", "pair", "triplet", "npairs", "rows", "queries")


def base_kind(base_loss: nn.Module) -> Tuple[str, nn.Module]:
    """How ``base_loss`` meets synthetic rows (one of ``BASE_KINDS``) and the module that takes tuples.

    "pair"/"triplet": a PML pair (GenericPairLoss) or triplet loss, or a wrapper with one in ``.loss``
    (our MultiSimilarityWithMiner); "npairs": PML's N-pair loss; "hphn": the HPHN triplet loss;
    "rows": a loss with trainable proxies/centres; "queries": a loss whose forward takes ``is_synthetic``.
    Anything else is a ValueError: it could anchor on synthetic rows.
    """
    from pytorch_metric_learning.losses import GenericPairLoss, NPairsLoss, TripletMarginLoss  # here: PML imports in seconds

    inner = base_loss if isinstance(base_loss, (GenericPairLoss, TripletMarginLoss)) else getattr(base_loss, "loss", None)
    if isinstance(inner, TripletMarginLoss):
        return "triplet", inner
    if isinstance(inner, GenericPairLoss):
        return "pair", inner
    if isinstance(base_loss, NPairsLoss):
        return "npairs", base_loss
    if isinstance(base_loss, HPHNTripletLoss):
        return "hphn", base_loss
    if base_proxies(base_loss) is not None or any(p.requires_grad for p in base_loss.parameters()):
        return "rows", base_loss
    if "is_synthetic" in inspect.signature(base_loss.forward).parameters:
        return "queries", base_loss
    raise ValueError(
        f"SynthesisLoss cannot keep synthetic rows from anchoring {type(base_loss).__name__}: it takes no PML tuples, has no "
        "proxies and no is_synthetic argument. Use a pair/triplet/proxy loss, or give the loss an is_synthetic argument"
    )


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


#: Keyword context a synthesiser may take; each gets only the ones its forward names.
CONTEXT_KEYS = ("generator", "proxies", "progress", "epoch", "epochs", "features", "head", "images", "embed", "image_rows")


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
        base_loss: a loss ``(embeddings, labels) -> scalar`` of one of the kinds of ``base_kind``.
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
        kind, inner = base_kind(base_loss)
        if kind == "hphn" and combine != "joint":
            raise ValueError(
                f"hphn_triplet mines over real and synthetic rows in one loss (combine='joint', e.g. embedding_expansion); "
                f"{type(synthesiser).__name__} has combine={combine!r}: use another base loss with it"
            )
        self.base_loss = base_loss
        self.synthesiser = synthesiser
        self.combine = combine
        self.weight = weight
        self.kind = kind
        self._inner = [inner]  # the PML module that takes tuples (a list: not registered twice as a sub-module)
        accepted = inspect.signature(synthesiser.forward).parameters
        self._context_keys = tuple(k for k in CONTEXT_KEYS if k in accepted)
        self.ranking_loss = IntraClassRankingLoss(**synthesiser.ranking_loss_params()) if combine == "ranking" else None
        #: whether the synthesiser works before the head: the loop then passes ``features=`` and ``head=``
        self.uses_features = "features" in accepted and "head" in accepted and getattr(synthesiser, "space", "features") == "features"
        #: whether the synthesiser augments images: the loop then passes ``images=``, ``embed=``, ``image_rows=``
        self.uses_images = "images" in accepted and "embed" in accepted and getattr(synthesiser, "space", None) == "image"

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        progress: float = 0.0,
        epoch: Optional[int] = None,
        epochs: Optional[int] = None,
        features: Optional[torch.Tensor] = None,
        head: Optional[nn.Module] = None,
        images: Optional[torch.Tensor] = None,
        embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        image_rows: Optional[torch.Tensor] = None,
        return_terms: bool = False,
    ):
        """embeddings (B, d), labels (B,) -> scalar, or :class:`LossTerms` with ``return_terms``.

        The keyword context goes to the synthesiser, each if it takes it: ``generator``, ``progress``
        (fraction of steps done), ``epoch`` (0-based), ``epochs`` (total), ``features`` (B, F) (the pooled
        backbone features the embeddings were computed from) and ``head`` (the module mapping them to
        embeddings; used when :attr:`uses_features`), ``images`` (n, C, H, W) (the normalised images the
        embeddings were computed from), ``embed`` (images -> embeddings with the model) and ``image_rows``
        (n,) (the embedding row of each image; None: image i is row i), used when :attr:`uses_images`.
        """
        context = {"generator": generator, "proxies": base_proxies(self.base_loss), "progress": progress, "epoch": epoch,
                   "epochs": epochs, "features": features, "head": head, "images": images, "embed": embed,
                   "image_rows": image_rows}
        batch = self.synthesiser(embeddings, labels, **{k: context[k] for k in self._context_keys})
        terms = self._terms(batch, embeddings, labels, context["proxies"], return_terms)
        return terms if return_terms else terms.loss

    def _combined(self, real: torch.Tensor, extra: torch.Tensor) -> LossTerms:
        return LossTerms(real + self.weight * extra, real.detach(), extra.detach(), self.weight)

    def _joint(self, total: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, return_terms: bool) -> LossTerms:
        if not return_terms:  # the reference base loss costs a second evaluation: only when asked
            return LossTerms(total, total.detach(), torch.zeros_like(total.detach()), 1.0)
        with torch.no_grad():
            real = self.base_loss(embeddings, labels)
        return LossTerms(total, real, total.detach() - real, 1.0)

    def _terms(self, batch, embeddings: torch.Tensor, labels: torch.Tensor, proxies, return_terms: bool) -> LossTerms:
        z, y, syn = batch
        if self.kind == "hphn":  # mines its hard pairs itself, with or without synthetic rows (n = 0)
            total = self.base_loss(z, y, is_synthetic=syn, owner=getattr(batch, "owner", None))
            return self._joint(total, embeddings, labels, return_terms)
        if not bool(syn.any()):  # nothing synthesised: exactly the base loss
            real = self.base_loss(embeddings, labels)
            return LossTerms(real, real.detach(), torch.zeros_like(real.detach()), 1.0 if self.weight is None else self.weight)
        if self.combine == "separate":
            return self._combined(self.base_loss(embeddings, labels), self.synthetic_term(z, y, syn))
        if self.combine == "ranking":
            real = self.base_loss(embeddings, labels)
            owner = getattr(batch, "owner", None)
            intensity = getattr(batch, "intensity", None)
            if owner is None or intensity is None:
                raise ValueError(f"combine='ranking' needs a traced batch (owner, intensity) from the synthesiser, got {type(batch).__name__}")
            rank = self.ranking_loss(z, y, source=owner[:, 0], intensity=intensity, proxies=proxies)
            return self._combined(real, rank)
        return self._joint(self.joint_term(z, y, syn), embeddings, labels, return_terms)

    def synthetic_term(self, z: torch.Tensor, y: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
        """T of the "separate" rule: the base loss over the tuples that contain synthetic rows."""
        if self.kind == "rows":
            return self.base_loss(z[syn], y[syn])
        if self.kind == "queries":
            return self.base_loss(z, y, is_synthetic=syn)
        if self.kind == "npairs":
            return self.base_loss(z, y, real_anchored_pairs(y, syn, synthetic_partner=True))
        return self._tuple_loss(z, y, syn, synthetic_partner=True)

    def joint_term(self, z: torch.Tensor, y: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
        """The "joint" rule: one base loss over real ∪ synthetic rows, anchors on real rows."""
        if self.kind == "rows":
            return self.base_loss(z, y)
        if self.kind == "queries":
            return self.base_loss(z, y, is_synthetic=syn)
        if self.kind == "npairs":
            return self.base_loss(z, y, real_anchored_pairs(y, syn))
        return self._tuple_loss(z, y, syn, synthetic_partner=False)

    def _tuple_loss(self, z: torch.Tensor, y: torch.Tensor, syn: torch.Tensor, *, synthetic_partner: bool) -> torch.Tensor:
        """A PML pair/triplet loss with real queries against real ∪ synthetic references (PML ``ref_emb``).

        The queries are the real rows (``synthetic_partner=False``: all of them, as base(real) averages
        over its rows) or only the real rows that anchor a tuple with a synthetic member (True): a loss
        that averages per anchor then averages over exactly those anchors. The base loss's own miner,
        if any, mines the enlarged batch (its choice for an anchor depends on that anchor's row only).
        """
        inner = self._inner[0]
        n_real = int((~syn).sum())
        if bool(syn[:n_real].any()):
            raise ValueError("synthesisers must return the real rows first (SynthBatch contract)")
        if self.kind == "triplet":
            a, p, n = real_anchored_triplets(y, syn, synthetic_partner=synthetic_partner)
            anchors = a
        else:
            miner = getattr(self.base_loss, "miner", None)
            if miner is not None:
                # Mining is row by row: mine the enlarged batch, keep the rows of the real anchors.
                a1, p, a2, n = miner(z, y)
                keep1, keep2 = ~syn[a1], ~syn[a2]
                if synthetic_partner:
                    keep1, keep2 = keep1 & syn[p], keep2 & syn[n]
                a1, p, a2, n = a1[keep1], p[keep1], a2[keep2], n[keep2]
            else:
                a1, p, a2, n = real_anchored_pairs(y, syn, synthetic_partner=synthetic_partner)
            anchors = torch.cat([a1, a2])
        if len(anchors) == 0:
            return (z * 0.0).sum()
        if synthetic_partner:
            queries = torch.unique(anchors)
            slot = torch.full((len(y),), -1, dtype=torch.long, device=y.device)
            slot[queries] = torch.arange(len(queries), device=y.device)
        else:
            queries = torch.arange(n_real, device=y.device)
            slot = torch.arange(len(y), device=y.device)
        if self.kind == "triplet":
            tuples = (slot[a], p, n)
        else:
            tuples = (slot[a1], p, slot[a2], n)
        return inner(z[queries], y[queries], tuples, ref_emb=z, ref_labels=y)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, weight={self.weight}, base_kind={self.kind!r}"


class ComposedSynthesisLoss(nn.Module):
    """Several synthesisers on one base loss, each with its own weight.

    Each synthesiser i makes its own :class:`SynthesisLoss` L_i (its own rule and weight) on the same
    base loss, and their additions to the base loss are summed::

        L = base(real) + Σ_i (L_i − base(real))

    so a "separate" synthesiser adds λ_i·T_i, a "ranking" one γ_i·ranking, a "joint" one the change
    its enlarged batch makes to the base loss. With one synthesiser this is exactly L_1. The
    synthesisers draw from ``generator`` one after the other, in list order.

    Args:
        base_loss: the shared base loss (its proxies are trained once).
        synthesisers: ``(synthesiser, weight)`` pairs, at least two; weight None takes each rule's default.
    """

    def __init__(self, base_loss: nn.Module, synthesisers) -> None:
        super().__init__()
        parts = list(synthesisers)
        if len(parts) < 2:
            raise ValueError(f"ComposedSynthesisLoss needs at least two synthesisers, got {len(parts)}; use SynthesisLoss for one")
        self.base_loss = base_loss
        self.parts = nn.ModuleList([SynthesisLoss(base_loss, synth, weight=weight) for synth, weight in parts])
        #: whether any synthesiser works before the head (the loop then passes ``features=`` and ``head=``)
        self.uses_features = any(part.uses_features for part in self.parts)
        #: whether any synthesiser augments images (the loop then passes ``images=``, ``embed=``, ``image_rows=``)
        self.uses_images = any(part.uses_images for part in self.parts)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: Optional[torch.Generator] = None,
        progress: float = 0.0,
        epoch: Optional[int] = None,
        epochs: Optional[int] = None,
        features: Optional[torch.Tensor] = None,
        head: Optional[nn.Module] = None,
        images: Optional[torch.Tensor] = None,
        embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        image_rows: Optional[torch.Tensor] = None,
        return_terms: bool = False,
    ):
        """embeddings (B, d), labels (B,) -> scalar; the keyword context goes to every synthesiser. With
        ``return_terms``, :class:`LossTerms` with base = base(real) and aux = Σ_i (L_i − base(real)), weight 1."""
        real = self.base_loss(embeddings, labels)
        total = real
        for part in self.parts:
            total = total + (part(embeddings, labels, generator=generator, progress=progress, epoch=epoch, epochs=epochs,
                                  features=features, head=head, images=images, embed=embed, image_rows=image_rows) - real)
        if return_terms:
            return LossTerms(total, real.detach(), (total - real).detach(), 1.0)
        return total
