"""embed(): eval mode without gradients, mode restored, loader order, float32/int64 outputs, errors."""
import pytest
import torch
from torch import nn

from deepmetric.retrieval import embed, evaluate_retrieval, retrieval_metrics


def _model():
    torch.manual_seed(0)  # parameter init only; the data below use their own generator
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 4))


def _loader(n=20, batch=6):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 2, 2, generator=g)
    labels = torch.arange(n) % 4
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, n, batch)], images, labels


@pytest.mark.parametrize("training", [True, False])
def test_embed_uses_eval_mode_and_restores_the_previous_mode(training):
    model, (loader, images, labels) = _model(), _loader()
    model.train(training)
    emb, lab = embed(model, loader)
    assert model.training is training
    model.eval()
    with torch.no_grad():
        expected = model(images)  # eval mode: BatchNorm running stats, no dropout
    torch.testing.assert_close(emb, expected)
    assert emb.dtype == torch.float32 and lab.dtype == torch.int64
    assert torch.equal(lab, labels) and not emb.requires_grad


def test_embed_restores_the_mode_when_the_model_fails():
    model = _model().train()
    with pytest.raises(RuntimeError):
        embed(model, [(torch.randn(2, 5), torch.tensor([0, 1]))])  # 5 features, Linear expects 12
    assert model.training


def test_embed_with_bfloat16_autocast_is_close_and_float32():
    model, (loader, _, _) = _model(), _loader()
    ref, _ = embed(model, loader)
    emb, _ = embed(model, loader, amp_dtype=torch.bfloat16)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, ref, atol=5e-2, rtol=5e-2)
    assert not torch.equal(emb, ref)  # autocast really ran in bfloat16


@pytest.mark.parametrize(
    "loader, match",
    [
        ([], "no batch"),
        ([(torch.randn(2, 3, 2, 2),)], r"\(images, labels\) pairs"),
    ],
)
def test_embed_errors(loader, match):
    with pytest.raises(ValueError, match=match):
        embed(_model(), loader)


def test_embed_rejects_models_that_do_not_return_one_matrix():
    with pytest.raises(ValueError, match=r"\(batch, d\)"):
        embed(nn.Identity(), [(torch.randn(2, 3, 2, 2), torch.tensor([0, 1]))])


def test_evaluate_retrieval_is_embed_then_metrics():
    model, (loader, _, _) = _model(), _loader()
    emb, lab = embed(model, loader)
    assert evaluate_retrieval(model, loader, ks=(1, 2), nmi=False) == retrieval_metrics(emb, lab, ks=(1, 2), nmi=False)


def test_evaluate_retrieval_engine_torch_gives_the_same_metrics(monkeypatch):
    import deepmetric.retrieval.knn_torch as knn_torch

    seen = []
    real = knn_torch.topk_search_torch
    monkeypatch.setattr(knn_torch, "topk_search_torch", lambda q, *a, **k: (seen.append(q.device.type), real(q, *a, **k))[1])
    model, (loader, _, _) = _model(), _loader()
    faiss = evaluate_retrieval(model, loader, ks=(1, 2), nmi=False)
    assert seen == []  # faiss stays the CPU default
    got = evaluate_retrieval(model, loader, ks=(1, 2), nmi=False, engine="torch")
    assert seen == ["cpu"]
    assert got.keys() == faiss.keys() and all(got[k] == pytest.approx(faiss[k], abs=1e-9) for k in got)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_retrieval_on_cuda_keeps_embeddings_there():
    model, (loader, _, _) = _model(), _loader()
    emb, lab = embed(model.cuda(), loader, device="cuda", keep_on_device=True)
    assert emb.is_cuda and not lab.is_cuda
    cpu = retrieval_metrics(emb.cpu(), lab, ks=(1, 2), nmi=False)
    got = evaluate_retrieval(model, loader, device="cuda", ks=(1, 2), nmi=False)
    assert all(got[k] == pytest.approx(cpu[k], abs=1e-4) for k in cpu)
