import os

import pytest
import torch
from torch import nn

from deepmetric.config import build_config
from deepmetric.train.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from deepmetric.train.optim import build_optimizer, lr_factor


def test_atomic_save_leaves_no_temp_and_roundtrips(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.arange(3)}, "config": {"a": 1}}, p)
    save_checkpoint({"model": {"w": torch.arange(4)}, "config": {"a": 2}}, p)
    assert os.listdir(tmp_path) == ["c.pt"]
    assert load_checkpoint(p)["model"]["w"].tolist() == [0, 1, 2, 3]


def test_failed_save_keeps_previous_file(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint({"model": {}, "config": {"v": 1}}, p)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint({"model": {}, "config": {}, "x": Boom()}, p)
    assert load_checkpoint(p)["config"] == {"v": 1}
    assert os.listdir(tmp_path) == ["c.pt"]


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a deepmetric checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"embedding_dim: checkpoint 64 vs config 32"):
        check_compatible({"model_signature": {"embedding_dim": 64}}, {"embedding_dim": 32}, "x.pt")


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
