"""Baseline losses from pytorch-metric-learning (PML), registered by name with their papers' defaults.

They are not rewritten (DESIGN.md rule 2): each factory only fixes the paper's default hyper-parameters,
validates them, and returns PML's module, whose ``forward(embeddings, labels)`` matches our loss
contract. Proxy/centre based losses need ``num_classes`` and ``embedding_dim``; the factory receives them
from the training set. Their trainable proxies are ordinary parameters of the returned module, so
:func:`deepmetric.train.optim.build_optimizer` always puts them in their own parameter group.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from deepmetric.registry import LOSSES


class _ImportedOnUse:
    """A module imported at its first attribute access: importing PML costs seconds (it pulls in
    scipy.stats), which ``deepmetric list`` and ``--help`` must not pay just to see the loss names."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


pml_losses = _ImportedOnUse("pytorch_metric_learning.losses")
pml_miners = _ImportedOnUse("pytorch_metric_learning.miners")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@LOSSES.register("proxy_anchor")
def proxy_anchor(*, num_classes: int, embedding_dim: int, margin: float = 0.1, alpha: float = 32.0) -> nn.Module:
    """Proxy-Anchor (Kim et al., CVPR 2020): α = 32, δ = 0.1; proxies train at 100× lr (loss.proxy_lr_mult)."""
    _non_negative("margin", margin)
    _positive("alpha", alpha)
    return pml_losses.ProxyAnchorLoss(num_classes, embedding_dim, margin=margin, alpha=alpha)


class MultiSimilarityWithMiner(nn.Module):
    """Multi-Similarity loss (Wang et al., CVPR 2019) with its own pair miner, as in the paper.

    Args:
        alpha, beta, base: the paper's α = 2, β = 50, λ = 0.5.
        epsilon: the miner's margin ε = 0.1.
    """

    def __init__(self, *, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1) -> None:
        super().__init__()
        _positive("alpha", alpha)
        _positive("beta", beta)
        _non_negative("epsilon", epsilon)
        self.loss = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
        self.miner = pml_miners.MultiSimilarityMiner(epsilon=epsilon)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None) -> torch.Tensor:
        if indices_tuple is None:
            indices_tuple = self.miner(embeddings, labels)
        return self.loss(embeddings, labels, indices_tuple)


@LOSSES.register("multi_similarity")
def multi_similarity(*, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1) -> nn.Module:
    """Multi-Similarity loss + MS miner (α 2, β 50, λ 0.5, ε 0.1)."""
    return MultiSimilarityWithMiner(alpha=alpha, beta=beta, base=base, epsilon=epsilon)


@LOSSES.register("triplet")
def triplet(*, margin: float = 0.1, triplets_per_anchor: str | int = "all") -> nn.Module:
    """Triplet margin loss over all valid triplets of the batch (margin 0.1 on the unit sphere)."""
    _non_negative("margin", margin)
    return pml_losses.TripletMarginLoss(margin=margin, triplets_per_anchor=triplets_per_anchor)


@LOSSES.register("contrastive")
def contrastive(*, pos_margin: float = 0.0, neg_margin: float = 0.5) -> nn.Module:
    """Contrastive loss (Hadsell et al. 2006) on Euclidean distance between unit vectors."""
    _non_negative("pos_margin", pos_margin)
    _non_negative("neg_margin", neg_margin)
    return pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin)


@LOSSES.register("ntxent")
def ntxent(*, temperature: float = 0.07) -> nn.Module:
    """NT-Xent / InfoNCE (Chen et al., SimCLR 2020); with instance ids as labels it is the SimCLR loss."""
    _positive("temperature", temperature)
    return pml_losses.NTXentLoss(temperature=temperature)


@LOSSES.register("supcon")
def supcon(*, temperature: float = 0.1) -> nn.Module:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020)."""
    _positive("temperature", temperature)
    return pml_losses.SupConLoss(temperature=temperature)


@LOSSES.register("normalized_softmax")
def normalized_softmax(*, num_classes: int, embedding_dim: int, temperature: float = 0.05) -> nn.Module:
    """Normalised softmax (Zhai & Wu, BMVC 2019), temperature 0.05."""
    _positive("temperature", temperature)
    return pml_losses.NormalizedSoftmaxLoss(num_classes, embedding_dim, temperature=temperature)


@LOSSES.register("arcface")
def arcface(*, num_classes: int, embedding_dim: int, margin: float = 28.6, scale: float = 64.0) -> nn.Module:
    """ArcFace (Deng et al., CVPR 2019): additive angular margin 0.5 rad (28.6°), scale 64."""
    _non_negative("margin", margin)
    _positive("scale", scale)
    return pml_losses.ArcFaceLoss(num_classes, embedding_dim, margin=margin, scale=scale)


@LOSSES.register("cosface")
def cosface(*, num_classes: int, embedding_dim: int, margin: float = 0.35, scale: float = 64.0) -> nn.Module:
    """CosFace (Wang et al., CVPR 2018): additive cosine margin 0.35, scale 64."""
    _non_negative("margin", margin)
    _positive("scale", scale)
    return pml_losses.CosFaceLoss(num_classes, embedding_dim, margin=margin, scale=scale)


@LOSSES.register("soft_triple")
def soft_triple(
    *, num_classes: int, embedding_dim: int, centers_per_class: int = 10, la: float = 20.0, gamma: float = 0.1, margin: float = 0.01
) -> nn.Module:
    """SoftTriple (Qian et al., ICCV 2019): K = 10 centres, λ = 20, γ = 0.1, δ = 0.01."""
    if centers_per_class < 1:
        raise ValueError(f"centers_per_class must be >= 1, got {centers_per_class}")
    _positive("la", la)
    _positive("gamma", gamma)
    return pml_losses.SoftTripleLoss(num_classes, embedding_dim, centers_per_class=centers_per_class, la=la, gamma=gamma, margin=margin)


@LOSSES.register("npairs")
def npairs() -> nn.Module:
    """N-pair loss (Sohn, NeurIPS 2016)."""
    return pml_losses.NPairsLoss()


@LOSSES.register("lifted_structure")
def lifted_structure(*, pos_margin: float = 0.0, neg_margin: float = 1.0) -> nn.Module:
    """Lifted structured loss (Oh Song et al., CVPR 2016), generalised form."""
    return pml_losses.LiftedStructureLoss(pos_margin=pos_margin, neg_margin=neg_margin)
