"""Optimizer parameter groups, lr schedules, warm-ups and gradient clipping."""
import pytest
import torch
from torch import nn

from deepmetric.config import ConfigError, build_config
from deepmetric.train.optim import backbone_frozen, build_optimizer, clip_gradients, drop_backbone_grads, lr_factor, set_lr


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


def test_head_and_proxy_multipliers_and_adam_eps():
    """SEE: last layer at lr × fc_lr_scale, proxies at lr × 1e4, AdamW eps 1e-4 under fp16."""
    cfg = build_config({"optim": {"lr": 1e-5, "head_lr_mult": 100.0, "eps": 1e-4}, "loss": {"proxy_lr_mult": 1e4}})
    model, loss = _Model(), nn.Module()
    loss.proxies = nn.Parameter(torch.randn(3, 2))
    opt = build_optimizer(model, loss, cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"backbone": 1e-5, "head": 1e-3, "loss": 0.1})
    assert {g["eps"] for g in opt.param_groups} == {1e-4}
    assert {g["weight_decay"] for g in opt.param_groups} == {cfg.optim.weight_decay}


def test_frozen_warmups_do_not_ramp_and_freeze_the_backbone_for_whole_epochs():
    lin = build_config({"train": {"epochs": 4}, "optim": {"scheduler": "none", "warmup_epochs": 2}})
    assert lr_factor(0, steps_per_epoch=5, cfg=lin) == pytest.approx(0.1)
    assert not backbone_frozen(0, steps_per_epoch=5, cfg=lin)
    for mode in ("frozen_backbone", "zero_backbone_lr"):
        cfg = build_config({"train": {"epochs": 4}, "optim": {"scheduler": "none", "warmup_epochs": 2, "warmup": mode}})
        assert [lr_factor(s, steps_per_epoch=5, cfg=cfg) for s in (0, 9, 10)] == [1.0, 1.0, 1.0]
        assert [backbone_frozen(s, steps_per_epoch=5, cfg=cfg) for s in (0, 9, 10, 19)] == [True, True, False, False]
    # the step schedule counts the warm-up epochs (Proxy-Anchor's StepLR steps through them)
    pa = build_config({"train": {"epochs": 60}, "optim": {"scheduler": "step", "milestones": [5, 10], "gamma": 0.5,
                                                        "warmup_epochs": 5, "warmup": "frozen_backbone"}})
    assert [lr_factor(e * 3, steps_per_epoch=3, cfg=pa) for e in (0, 4, 5, 10)] == pytest.approx([1, 1, 0.5, 0.25])


def _step(mode, warm_epochs):
    torch.manual_seed(0)
    cfg = build_config({"optim": {"name": "adamw", "lr": 0.1, "weight_decay": 0.5, "warmup_epochs": warm_epochs, "warmup": mode}})
    model, loss = _Model(), nn.Module()
    loss.proxies = nn.Parameter(torch.randn(3, 2))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    proxies = loss.proxies.detach().clone()
    opt = build_optimizer(model, loss, cfg)
    frozen = backbone_frozen(0, steps_per_epoch=1, cfg=cfg)
    set_lr(opt, lr_factor(0, steps_per_epoch=1, cfg=cfg), zero_backbone=frozen and mode == "zero_backbone_lr")
    out = (model.head(model.backbone(torch.randn(5, 4))) ** 2).sum() + (loss.proxies ** 2).sum()
    out.backward()
    if frozen and mode == "frozen_backbone":
        drop_backbone_grads(opt)
    opt.step()
    moved = {k: not torch.equal(before[k], v) for k, v in model.state_dict().items()}
    return moved, not torch.equal(proxies, loss.proxies.detach()), opt


@pytest.mark.parametrize("mode", ["frozen_backbone", "zero_backbone_lr"])
def test_frozen_warmup_steps_only_head_and_proxies(mode):
    moved, proxies_moved, opt = _step(mode, warm_epochs=1)
    assert moved == {"backbone.weight": False, "backbone.bias": False, "head.weight": True, "head.bias": True}
    assert proxies_moved
    backbone_state = [opt.state[p] for g in opt.param_groups if g["name"] == "backbone" for p in g["params"]]
    # Proxy-Anchor (requires_grad off): the optimiser never saw the backbone; SEE (lr 0): its moments did
    assert all(len(s) == 0 for s in backbone_state) == (mode == "frozen_backbone")
    moved, proxies_moved, _ = _step(mode, warm_epochs=0)  # after the warm-up everything trains
    assert all(moved.values()) and proxies_moved


def test_clip_by_value_then_by_norm():
    model = nn.Linear(3, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model.weight.grad = torch.tensor([[30.0, -4.0, 0.5]])
    clip_gradients(opt, max_norm=None, max_value=10.0)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[10.0, -4.0, 0.5]]))
    clip_gradients(opt, max_norm=1.0, max_value=None)
    g = torch.tensor([[10.0, -4.0, 0.5]])
    torch.testing.assert_close(model.weight.grad, g / g.norm(), rtol=1e-4, atol=1e-6)
    model.weight.grad = torch.tensor([[0.3, -0.2, 0.1]])
    clip_gradients(opt, max_norm=1.0, max_value=10.0)  # both below their bounds: untouched
    torch.testing.assert_close(model.weight.grad, torch.tensor([[0.3, -0.2, 0.1]]))


def test_explicit_milestone_factors():
    """Ye et al. demo_seen.py: lr × 0.1 from epoch 120, × 0.05 from 160, × 0.01 from 200 (not a constant gamma)."""
    cfg = build_config({"train": {"epochs": 250}, "optim": {"scheduler": "step", "milestones": [120, 160, 200],
                                                           "milestone_factors": [0.1, 0.05, 0.01]}})
    got = [lr_factor(e * 2, steps_per_epoch=2, cfg=cfg) for e in (0, 119, 120, 159, 160, 200, 249)]
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.05, 0.01, 0.01])
    with pytest.raises(ConfigError, match="one positive factor per milestone"):
        build_config({"optim": {"milestones": [1, 2], "milestone_factors": [0.1]}})
    with pytest.raises(ConfigError, match="strictly increasing"):
        build_config({"optim": {"milestones": [20, 10]}})
