"""Training-loop plumbing of issue 13: neighbour positives from backbone features; composite loss terms logged."""
import json

import pytest
import torch

from deepmetric.config import build_config
from deepmetric.data.build import build_dataset
from deepmetric.distributed import DistContext
from deepmetric.inference import build_embedding_model
from deepmetric.train.loop import neighbour_table, train

UNSUP = {
    "device": "cpu",
    "data": {"dataset": "digits", "image_size": 8, "two_view": True, "sampler": "random", "batch_size": 16,
             "val_split": None, "neighbour_positives": 0.5},
    "model": {"backbone": "small_cnn", "embedding_dim": 16},
    "loss": {"name": "instance_softmax", "params": {"temperature": 0.1}},
    "train": {"epochs": 1, "max_steps_per_epoch": 2, "progress": False, "report": False},
    "eval": {"nmi": False},
}

TINY = {
    "device": "cpu",
    "data": {"dataset": "digits", "image_size": 8, "batch_size": 24, "samples_per_class": 8, "val_split": None},
    "model": {"backbone": "small_cnn", "embedding_dim": 16},
    "loss": {"name": "proxy_anchor", "params": {}},
    "train": {"epochs": 1, "max_steps_per_epoch": 4, "progress": False, "log_every": 1, "report": False},
    "eval": {"nmi": False},
}


def _unit(x):
    return x / x.norm(dim=1, keepdim=True)


def _nearest_similarity(x):
    """(N, N) cosine similarities with the diagonal removed, and each row's best other similarity."""
    s = _unit(x.double()) @ _unit(x.double()).t()
    s.fill_diagonal_(-float("inf"))
    return s, s.max(dim=1).values


def test_neighbour_table_comes_from_the_pooled_backbone_features():
    cfg = build_config(UNSUP)
    assert cfg.data.neighbour_space == "backbone"  # the released CUB code's default
    ds = build_dataset(cfg, cfg.data.train_split, train=False)  # eval transform, like the table's search
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    torch.manual_seed(0)
    model = build_embedding_model(cfg, in_chans=int(images.shape[1])).eval()
    with torch.no_grad():
        s_feat, best_feat = _nearest_similarity(model.features(images))
        s_emb, best_emb = _nearest_similarity(model(images))
    table = neighbour_table(model, ds, cfg, DistContext())
    rows = torch.arange(len(ds))
    assert table.shape == (len(ds),) and bool((table != rows).all())  # self excluded, never the identity
    # every partner is a nearest neighbour in the backbone features (ties allowed) ...
    torch.testing.assert_close(s_feat[rows, table], best_feat, atol=1e-5, rtol=0)
    # ... and for many instances NOT one in the embedding: the test tells the two spaces apart
    assert float((s_emb[rows, table] < best_emb - 1e-4).double().mean()) > 0.2
    table_emb = neighbour_table(model, ds, build_config(UNSUP, ["data.neighbour_space=embedding"]), DistContext())
    torch.testing.assert_close(s_emb[rows, table_emb], best_emb, atol=1e-5, rtol=0)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("synthesis, gamma", [("intra_variance", 32.0), ("embedding_expansion", 1.0)])
def test_composite_loss_logs_its_terms(tmp_path, synthesis, gamma):
    """loss = loss_base + weight·loss_aux on every logged step. Intra-variance (base + γ·ranking, the
    ranking made before the head: the run also proves the loop passes features and head); EE ("joint":
    one loss over real ∪ synthetic rows, loss_aux = what the synthetic rows add to the real-only loss)."""
    extra = {"intra_variance": ["synthesis.params.band=[-1.0,1.0]"], "embedding_expansion": ["loss.name=triplet"]}[synthesis]
    cfg = build_config(TINY, [f"synthesis.name={synthesis}"] + extra)
    train(cfg, tmp_path / "run")
    steps = [r for r in _records(tmp_path / "run") if r["split"] == "train"]
    assert len(steps) == 4
    for r in steps:
        assert r["loss_aux_weight"] == gamma
        assert r["loss"] == pytest.approx(r["loss_base"] + gamma * r["loss_aux"], rel=1e-5, abs=1e-6)
    assert all(abs(r["loss_aux"]) > 1e-6 for r in steps)  # the added term is active, and visible
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "run" / "tb"))
    tb.Reload()
    for tag in ("train/loss", "train/loss_base", "train/loss_aux"):
        assert len(tb.Scalars(tag)) == 4, tag


def test_image_space_ranking_logs_its_term(tmp_path):
    """Intra-variance on graded image augmentations (space=image): the loop passes images= and embed=
    (the synthesiser refuses to run without them) and the ranking of the embedded copies is a visible,
    non-zero loss_aux on every logged step, with loss = loss_base + γ·loss_aux."""
    cfg = build_config(TINY, ["synthesis.name=intra_variance", "synthesis.params.space=image",
                              "synthesis.params.band=[-1.0,1.0]", "model.channels_last=true"])
    train(cfg, tmp_path / "run")
    steps = [r for r in _records(tmp_path / "run") if r["split"] == "train"]
    assert len(steps) == 4
    for r in steps:
        assert r["loss_aux_weight"] == 32.0
        assert r["loss"] == pytest.approx(r["loss_base"] + 32.0 * r["loss_aux"], rel=1e-5, abs=1e-6)
        assert abs(r["loss_aux"]) > 1e-6


def test_plain_loss_logs_no_terms(tmp_path):
    train(build_config(TINY), tmp_path / "run")
    steps = [r for r in _records(tmp_path / "run") if r["split"] == "train"]
    assert steps and not any("loss_base" in r or "loss_aux" in r for r in steps)
