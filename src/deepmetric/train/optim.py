"""Optimiser with explicit parameter groups (backbone, head, loss proxies) and a per-step lr schedule."""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

from deepmetric.config import RunConfig


def build_optimizer(model: nn.Module, loss_fn: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """Three groups: backbone (lr × backbone_lr_mult), the rest of the model (lr), loss parameters such as
    proxies (lr × loss.proxy_lr_mult). Every trainable parameter is in exactly one group: a loss's proxies
    can never be silently left out of the optimiser."""
    o = cfg.optim
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups = [
        {"name": "backbone", "params": [p for p in model.parameters() if p.requires_grad and id(p) in backbone_ids], "lr": o.lr * o.backbone_lr_mult},
        {"name": "head", "params": [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids], "lr": o.lr},
        {"name": "loss", "params": [p for p in loss_fn.parameters() if p.requires_grad], "lr": o.lr * cfg.loss.proxy_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    trainable = [p for m in (model, loss_fn) for p in m.parameters() if p.requires_grad]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(trainable) == len({id(p) for p in grouped}), "optimizer parameter groups must cover each trainable parameter once"
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(step: int, *, steps_per_epoch: int, cfg: RunConfig) -> float:
    """Multiplier of every group's initial lr at global ``step`` (linear warm-up, then cosine or steps)."""
    o = cfg.optim
    total = max(1, steps_per_epoch * cfg.train.epochs)
    warm = o.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return (step + 1) / warm
    if o.scheduler == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if o.scheduler == "step":
        epoch = step // max(1, steps_per_epoch)
        return o.gamma ** sum(epoch >= m for m in o.milestones)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> List[float]:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    return [g["lr"] for g in optimizer.param_groups]
