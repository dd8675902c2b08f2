"""Embedding model = backbone -> head ([LayerNorm] -> Linear -> [BatchNorm1d / LayerNorm] -> L2 normalisation).

``build_model`` is the one factory the training loop, evaluation and export call; ``model_signature``
summarises a model so that checkpoints and indexes built with another model are detected.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from deepmetric.functional.similarity import l2_normalize
from deepmetric.models.backbones import Backbone, build_backbone

HEAD_NORMS = ("none", "bn", "ln", "pre_ln")
HEAD_INITS = ("kaiming_fan_out", "orthogonal")


class EmbeddingHead(nn.Module):
    """features (B, in_features) -> embeddings (B, embedding_dim): Linear, then BatchNorm1d (``"bn"``),
    LayerNorm (``"ln"``) or nothing (``"none"``), then L2 normalisation when ``normalize``.

    ``"pre_ln"`` instead normalises the features before the Linear layer with a LayerNorm that has no affine
    parameters: SEE's ``--use_lastnorm`` head (PAKDD24-SEE trainer/models/model.py l.116-117,
    ``nn.Sequential(nn.LayerNorm(bdim, elementwise_affine=False), nn.Linear(bdim, emb), NormLayer())``).
    ``"ln"`` is a different head: an affine LayerNorm on the embedding, after the Linear layer.

    ``init``: ``"kaiming_fan_out"`` (Proxy-Anchor code/net/resnet.py l.193) or ``"orthogonal"`` (SEE
    model.py l.75-79); the bias starts at zero in both.
    """

    def __init__(self, in_features: int, embedding_dim: int, *, norm: str = "none", normalize: bool = True,
                 init: str = "kaiming_fan_out") -> None:
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ValueError(f"head_norm={norm!r} is not one of {HEAD_NORMS}")
        if init not in HEAD_INITS:
            raise ValueError(f"head_init={init!r} is not one of {HEAD_INITS}")
        # no parameters and no buffers: state dicts of the other heads are unchanged
        self.pre_norm: nn.Module = nn.LayerNorm(in_features, elementwise_affine=False) if norm == "pre_ln" else nn.Identity()
        self.fc = nn.Linear(in_features, embedding_dim)
        if init == "orthogonal":
            nn.init.orthogonal_(self.fc.weight, gain=1.0)
        else:  # Proxy-Anchor's Kaiming (fan_out) keeps early embeddings spread
            nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
        nn.init.zeros_(self.fc.bias)
        post = norm if norm in ("bn", "ln") else "none"
        self.norm: nn.Module = {"none": nn.Identity, "bn": nn.BatchNorm1d, "ln": nn.LayerNorm}[post](*([] if post == "none" else [embedding_dim]))
        self.norm_kind = norm
        self.normalize = normalize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.norm(self.fc(self.pre_norm(features)))
        return l2_normalize(z) if self.normalize else z


class EmbeddingModel(nn.Module):
    """images (B, in_chans, H, W) -> embeddings (B, embedding_dim).

    Attributes:
        backbone: ``Backbone`` giving (B, backbone.num_features) features.
        head: ``EmbeddingHead``.
        embedding_dim, in_chans, head_norm, freeze_bn: as built.
    """

    def __init__(self, backbone: Backbone, head: EmbeddingHead, *, freeze_bn: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.embedding_dim = head.fc.out_features
        self.in_chans = backbone.in_chans
        self.head_norm = head.norm_kind
        self.freeze_bn = freeze_bn
        if freeze_bn:
            for m in self._backbone_bns():
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
            self.train(self.training)

    def _backbone_bns(self) -> List[nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> "EmbeddingModel":
        super().train(mode)
        if self.freeze_bn:
            # Frozen BN keeps its pretrained running statistics: small DML batches would corrupt them.
            for m in self._backbone_bns():
                m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, backbone.num_features), before the head."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor, *, return_features: bool = False):
        """images (B, in_chans, H, W) -> embeddings (B, embedding_dim), or with ``return_features`` the pair
        (pooled backbone features (B, backbone.num_features), embeddings) from one pass.

        The pair is what losses that synthesise before the head need (intra-variance, SPEC §5): they map
        their synthetic features through :attr:`head`. It goes through ``forward`` (a keyword, not another
        method) so that DistributedDataParallel and ``torch.compile`` wrappers see the call.
        """
        features = self.backbone(x)
        embeddings = self.head(features)
        return (features, embeddings) if return_features else embeddings

    def features_and_embeddings(self, x: torch.Tensor):
        """(pooled backbone features, embeddings) of images x: ``forward(x, return_features=True)``."""
        return self(x, return_features=True)

    def param_groups(self, lr: float, backbone_lr_mult: float = 1.0) -> List[Dict[str, Any]]:
        """Optimiser groups: ``backbone`` at ``lr * backbone_lr_mult`` and ``head`` at ``lr``; each trainable
        parameter appears exactly once (frozen BatchNorm parameters are left out)."""
        if lr <= 0 or backbone_lr_mult < 0:
            raise ValueError(f"lr={lr} must be > 0 and backbone_lr_mult={backbone_lr_mult} >= 0")
        return [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr * backbone_lr_mult},
            {"name": "head", "params": [p for p in self.head.parameters() if p.requires_grad], "lr": lr},
        ]


def build_model(backbone: str, *, embedding_dim: int = 128, pretrained: Optional[str] = None, pooling: str = "avg",
                head_norm: str = "none", normalize: bool = True, freeze_bn: bool = False, in_chans: int = 3,
                head_init: str = "kaiming_fan_out", frozen: Sequence[str] = ()) -> EmbeddingModel:
    """Build backbone + embedding head.

    Args:
        backbone: a name in ``deepmetric.registry.BACKBONES`` (``small_cnn``, ``cifar_resnet18``, ``resnet18``,
            ``resnet50``, ``googlenet``, ``bn_inception``, ``vit_small``, ``deit_small``, ``efficientnet_lite0``)
            or ``"timm:<any timm model>"``.
        embedding_dim: output dimension d.
        pretrained: None, a local weights file, or ``"offline"`` (packaged weights; see
            ``deepmetric.models.pretrained``). Never downloads.
        pooling: ``"avg"``, ``"max"``, ``"avgmax"`` (GAP + GMP) or ``"gem"`` (generalised mean, learned p)
            for CNNs; ignored by ViTs (CLS token).
        head_norm: ``"none"``, ``"bn"`` (BatchNorm1d) or ``"ln"`` (LayerNorm) after the Linear layer, or
            ``"pre_ln"`` (LayerNorm without affine parameters before it; see ``EmbeddingHead``).
        normalize: L2-normalise the embeddings.
        freeze_bn: keep the backbone's BatchNorm layers in eval mode with frozen affine parameters.
        in_chans: input image channels.
        head_init: ``"kaiming_fan_out"`` or ``"orthogonal"`` initialisation of the head's Linear layer.
        frozen: backbone parameter-name prefixes that never train (requires_grad off), e.g.
            ``["body.patch_embed"]``: SEE freezes DeiT's patch embedding (PAKDD24-SEE model.py l.113, 149-157).

    Returns:
        ``EmbeddingModel`` mapping (B, in_chans, H, W) to (B, embedding_dim).
    """
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"embedding_dim={embedding_dim!r} must be a positive int")
    bb = build_backbone(backbone, pretrained=pretrained, in_chans=in_chans, pooling=pooling)
    head = EmbeddingHead(bb.num_features, embedding_dim, norm=head_norm, normalize=normalize, init=head_init)
    for prefix in frozen:
        matched = [p for n, p in bb.named_parameters() if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            tops = sorted({n.split(".")[0] + "." + n.split(".")[1] if n.count(".") > 1 else n for n, _ in bb.named_parameters()})
            raise ValueError(f"frozen prefix {prefix!r} matches no parameter of backbone {backbone!r}; its parameters start with: {', '.join(tops[:12])}")
        for p in matched:
            p.requires_grad_(False)
    return EmbeddingModel(bb, head, freeze_bn=freeze_bn)


def model_signature(model: nn.Module) -> Dict[str, Any]:
    """What identifies a model's architecture, to refuse checkpoints or indexes built with another one.

    Returns:
        JSON-serialisable dict: ``backbone``, ``embedding_dim``, ``in_chans``, ``pooling``, ``head_norm``,
        ``normalize``, ``num_parameters`` and ``shapes_sha256`` (hash of every state-dict name and shape).
        Works on any ``nn.Module`` (fields an ``EmbeddingModel`` has are ``None`` otherwise); a
        DistributedDataParallel wrapper is looked through.
    """
    model = getattr(model, "module", model)
    items = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    digest = hashlib.sha256(";".join(f"{k}:{list(s)}" for k, s in items).encode()).hexdigest()
    bb = getattr(model, "backbone", None)
    head = getattr(model, "head", None)
    return {
        "backbone": getattr(bb, "name", None),
        "embedding_dim": getattr(model, "embedding_dim", None),
        "in_chans": getattr(model, "in_chans", None),
        "pooling": getattr(bb, "pooling", None),
        "head_norm": getattr(model, "head_norm", None),
        "normalize": getattr(head, "normalize", None),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "shapes_sha256": digest,
    }
