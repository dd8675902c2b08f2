"""Optimiser with explicit parameter groups (backbone, head, loss proxies) and a per-step lr schedule."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

from deepmetric.config import RunConfig


def build_optimizer(model: nn.Module, loss_fn: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """Three groups: backbone (lr × optim.backbone_lr_mult), the rest of the model (lr × optim.head_lr_mult),
    loss parameters such as proxies (lr × loss.proxy_lr_mult). Weight decay applies to every group, as in
    Proxy-Anchor (code/train.py l.236-254) and SEE (trainer/utils.py l.752-757). Every trainable parameter
    is in exactly one group: a loss's proxies can never be silently left out of the optimiser."""
    o = cfg.optim
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups = [
        {"name": "backbone", "params": [p for p in model.parameters() if p.requires_grad and id(p) in backbone_ids], "lr": o.lr * o.backbone_lr_mult},
        {"name": "head", "params": [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids], "lr": o.lr * o.head_lr_mult},
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
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay, eps=o.eps)
    return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay, eps=o.eps)


def lr_factor(step: int, *, steps_per_epoch: int, cfg: RunConfig) -> float:
    """Multiplier of every group's initial lr at global ``step``: linear warm-up (``optim.warmup: linear``),
    then cosine or steps. The frozen warm-up modes do not ramp: see :func:`backbone_frozen`."""
    o = cfg.optim
    total = max(1, steps_per_epoch * cfg.train.epochs)
    warm = o.warmup_epochs * steps_per_epoch if o.warmup == "linear" else 0
    if warm and step < warm:
        return (step + 1) / warm
    if o.scheduler == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if o.scheduler == "step":
        epoch = step // max(1, steps_per_epoch)
        passed = sum(epoch >= m for m in o.milestones)
        if o.milestone_factors is not None:
            return o.milestone_factors[passed - 1] if passed else 1.0
        return o.gamma ** passed
    return 1.0


def backbone_frozen(step: int, *, steps_per_epoch: int, cfg: RunConfig) -> bool:
    """True while a frozen warm-up (``optim.warmup`` frozen_backbone / zero_backbone_lr) holds the
    backbone still: the first ``optim.warmup_epochs`` epochs."""
    o = cfg.optim
    return o.warmup != "linear" and step < o.warmup_epochs * steps_per_epoch


def set_lr(optimizer: torch.optim.Optimizer, factor: float, *, zero_backbone: bool = False) -> List[float]:
    """Every group's lr = its initial lr × ``factor``; the backbone group's is 0 when ``zero_backbone``
    (SEE's warm-up, trainer/train.py l.158-159)."""
    for g in optimizer.param_groups:
        g["lr"] = 0.0 if zero_backbone and g.get("name") == "backbone" else g["initial_lr"] * factor
    return [g["lr"] for g in optimizer.param_groups]


def drop_backbone_grads(optimizer: torch.optim.Optimizer) -> None:
    """Forget the backbone group's gradients, so the optimiser skips those parameters entirely (no step,
    no moment update, no weight decay): Proxy-Anchor's ``--warm`` sets requires_grad=False on them
    (code/train.py l.275-287). Done after backward, so the parameters stay trainable and the model's
    structure (and DDP's view of it) never changes."""
    for g in optimizer.param_groups:
        if g.get("name") == "backbone":
            for p in g["params"]:
                p.grad = None


def clip_gradients(optimizer: torch.optim.Optimizer, *, max_norm: Optional[float], max_value: Optional[float]) -> None:
    """Clamp each gradient element to [-max_value, max_value] (``torch.nn.utils.clip_grad_value_``, as
    Proxy-Anchor code/train.py l.298-300 and SEE trainer/utils.py l.212-222 do), then rescale the global
    norm to at most ``max_norm``; either may be None. Gradients must already be unscaled."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if max_value:
        torch.nn.utils.clip_grad_value_(params, max_value)
    if max_norm:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
