"""End-to-end tests of train() on scikit-learn's 8x8 digits (seconds on CPU)."""
import json
import os
import signal

import numpy as np
import pytest
import torch

from deepmetric.config import build_config
from deepmetric.checkpoint import CheckpointError, load_checkpoint
from deepmetric.inference import evaluate_checkpoint
from deepmetric.train.loop import TrainingDiverged, train

TINY = {
    "device": "cpu",
    "data": {"dataset": "digits", "image_size": 8, "batch_size": 24, "samples_per_class": 8},
    "model": {"backbone": "small_cnn", "embedding_dim": 16},
    "train": {"epochs": 2, "max_steps_per_epoch": 4, "progress": False, "log_every": 1, "report": False},
    "eval": {"nmi": False},
}


def tiny(*overrides):
    return build_config(TINY, list(overrides))


def test_run_folder_holds_everything(tmp_path):
    res = train(tiny(), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "results.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["split"] == "train" for r in records) == 8  # 2 epochs x 4 steps, logged every step
    assert sum(r["split"] == "val" for r in records) == 2
    assert 0.0 <= res["test"]["recall@1"] <= 1.0 and res["test"]["recall@1"] <= res["test"]["recall@8"]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["state"]["step"] == 8 and ckpt["config"]["data"]["dataset"] == "digits"


def test_existing_run_needs_resume(tmp_path):
    train(tiny("train.epochs=1"), tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny("train.epochs=1"), tmp_path / "run")


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    full = train(tiny(), tmp_path / "full")
    import deepmetric.train.loop as loop

    real = loop.build_training_loss
    calls = {"n": 0}

    def interrupting(*a, **k):
        loss = real(*a, **k)
        fwd = loss.forward

        def forward(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 6:  # Ctrl-C in the middle of epoch 2, during a step
                os.kill(os.getpid(), signal.SIGINT)
            return fwd(*args, **kwargs)

        loss.forward = forward
        return loss

    monkeypatch.setattr(loop, "build_training_loss", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tmp_path / "cut")
    # the step in flight completes before the state is saved
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["state"]["batch"] == 2
    monkeypatch.setattr(loop, "build_training_loss", real)
    resumed = train(tiny(), tmp_path / "cut", resume=True)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6), k
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import deepmetric.train.loop as loop

    real = loop.build_training_loss
    calls = {"n": 0}

    def exploding(*a, **k):
        loss = real(*a, **k)
        fwd = loss.forward

        def forward(*args, **kwargs):
            calls["n"] += 1
            out = fwd(*args, **kwargs)
            return out * float("nan") if calls["n"] == 6 else out

        loss.forward = forward
        return loss

    monkeypatch.setattr(loop, "build_training_loss", exploding)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2.*last.pt"):
        train(tiny(), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["epoch"] == 1


def test_eval_checkpoint_and_mismatch(tmp_path):
    res = train(tiny("train.epochs=1"), tmp_path / "run")
    again = evaluate_checkpoint(tmp_path / "run" / "best.pt", split="test")
    assert again["recall@1"] == pytest.approx(res["test"]["recall@1"], abs=1e-6)
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    state["config"]["model"]["embedding_dim"] = 8  # a checkpoint whose config builds another model
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises((CheckpointError, RuntimeError), match="another model|size mismatch"):
        evaluate_checkpoint(tmp_path / "bad.pt")


def test_training_improves_retrieval_over_the_untrained_network(tmp_path):
    # Seen classes (train = test = digits 0-4): the loop must clearly learn. On 8x8 digits, transfer to
    # unseen classes is not reliable with so little data; the MNIST demo shows that part.
    cfg = tiny("train.epochs=2", "train.max_steps_per_epoch=null", "loss.name=multi_similarity", "data.train_split=trainval",
               "data.val_split=null", "data.test_split=trainval", "data.batch_size=40")
    res = train(cfg, tmp_path / "run", evaluate_before=True)
    assert res["test"]["map@r"] > res["before"]["map@r"] + 0.1


def test_monitor_split_logs_a_curve_and_is_never_selected_on(tmp_path):
    cfg = tiny("train.epochs=3", "train.monitor_split=test", "eval.knn_accuracy=true", "eval.knn_k=5")
    res = train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    monitor = [r for r in records if r.get("when") == "monitor"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["epoch"] for r in monitor] == [1, 2, 3] and all(r["split"] == "test" for r in monitor)
    assert all(0.0 <= r["knn_accuracy"] <= 1.0 for r in monitor)
    # selection is on validation MAP@R alone (first best wins) ...
    best = max(val, key=lambda r: (r["map@r"], -r["epoch"]))
    assert res["selected_epoch"] == best["epoch"]
    # ... and the final test numbers are that checkpoint's monitored numbers
    at_best = next(r for r in monitor if r["epoch"] == best["epoch"])
    for key in ("recall@1", "map@r", "knn_accuracy"):
        assert res["test"][key] == pytest.approx(at_best[key], abs=1e-9)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_and_channels_last_on_cpu_keep_the_loss_in_float32(tmp_path, monkeypatch, amp):
    from torch import nn
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    from deepmetric.registry import LOSSES

    seen = []

    class Recording(nn.Module):
        def __init__(self, *, num_classes, embedding_dim):
            super().__init__()
            self.inner = ProxyAnchorLoss(num_classes, embedding_dim)

        def forward(self, embeddings, labels):
            seen.append((embeddings.dtype, torch.is_autocast_enabled("cpu")))
            return self.inner(embeddings, labels)

    monkeypatch.setitem(LOSSES._table, "recording", Recording)
    res = train(tiny("loss.name=recording", f"train.amp={amp}", "model.channels_last=true"), tmp_path / "run")
    assert seen and all(s == (torch.float32, False) for s in seen)  # float32 and outside autocast
    assert 0.0 < res["test"]["recall@1"] <= 1.0
    assert all(torch.isfinite(p).all() for p in load_checkpoint(tmp_path / "run" / "last.pt")["model"].values()
               if torch.is_tensor(p) and p.is_floating_point())


def test_frozen_warmup_trains_only_the_head_in_the_loop(tmp_path):
    """Proxy-Anchor --warm through train(): after a 1-epoch frozen warm-up the backbone is its init."""
    from deepmetric.inference import build_embedding_model

    cfg = tiny("train.epochs=1", "optim.warmup_epochs=1", "optim.warmup=frozen_backbone", "train.grad_clip_value=10")
    train(cfg, tmp_path / "run")
    trained = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    torch.manual_seed(cfg.seed)  # the loop seeds model initialisation the same way
    init = build_embedding_model(cfg, in_chans=1).state_dict()
    params = [k for k in init if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(init[k], trained[k]) for k in params if k.startswith("backbone."))
    assert not torch.equal(init["head.fc.weight"], trained["head.fc.weight"])
