"""Optimizer parameter groups and lr schedules."""
import pytest
import torch
from torch import nn

from deepmetric.config import build_config
from deepmetric.train.optim import build_optimizer, lr_factor


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)


def test_optimizer_groups_cover_proxies_with_their_multiplier():
    cfg = build_config({"optim": {"lr": 0.01, "backbone_lr_mult": 0.1}, "loss": {"proxy_lr_mult": 100}})
    model, loss = _Model(), nn.Module()
    loss.proxies = nn.Parameter(torch.randn(3, 2))
    opt = build_optimizer(model, loss, cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"backbone": 0.001, "head": 0.01, "loss": 1.0})
    assert any(p is loss.proxies for g in opt.param_groups for p in g["params"])


def test_lr_schedules():
    cos = build_config({"train": {"epochs": 10}, "optim": {"scheduler": "cosine", "warmup_epochs": 1}})
    assert lr_factor(0, steps_per_epoch=10, cfg=cos) == pytest.approx(0.1)
    assert lr_factor(10, steps_per_epoch=10, cfg=cos) == pytest.approx(1.0)
    assert lr_factor(55, steps_per_epoch=10, cfg=cos) == pytest.approx(0.5)
    step = build_config({"train": {"epochs": 10}, "optim": {"scheduler": "step", "milestones": [3, 6], "gamma": 0.5}})
    assert [lr_factor(e * 10, steps_per_epoch=10, cfg=step) for e in (0, 3, 6)] == pytest.approx([1, 0.5, 0.25])
