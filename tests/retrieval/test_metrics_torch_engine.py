"""Evaluation through the blocked torch kNN engine (the GPU path) gives the faiss path's numbers (issue 18 item 5).

The torch engine runs on CPU tensors too (engine="torch"), so these CPU tests prove the path that CUDA
embeddings take; the `gpu`-marked test at the end checks the device itself.
"""
import math

import pytest
import torch

import deepmetric.retrieval.knn_torch as knn_torch
from deepmetric.retrieval.knn import resolve_engine, topk_search_with_self_map
from deepmetric.retrieval.metrics import knn_accuracy, retrieval_metrics


def _data(n=150, d=10, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + 1.5 * torch.randn(classes, d, generator=g)[y]
    return x, y


def _masks(kind, n):
    if kind == "same":
        return None, None
    q = torch.zeros(n, dtype=torch.bool)
    gm = torch.zeros(n, dtype=torch.bool)
    if kind == "disjoint":
        q[: n // 3], gm[n // 3 :] = True, True
    else:  # partial overlap
        q[: n // 2], gm[n // 4 :] = True, True
    return q, gm


@pytest.fixture
def torch_calls(monkeypatch):
    """Devices of the queries that reached the torch engine (proves engine="torch" really used it)."""
    seen = []
    real = knn_torch.topk_search_torch

    def spy(q, *a, **k):
        seen.append(q.device.type)
        return real(q, *a, **k)

    monkeypatch.setattr(knn_torch, "topk_search_torch", spy)
    return seen


def _both(x, y, **kw):
    return (retrieval_metrics(x, y, engine="faiss", **kw), retrieval_metrics(x, y, engine="torch", **kw))


def _assert_same(a, b, tol=1e-9):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=tol), key


@pytest.mark.parametrize("masks", ["same", "disjoint", "partial"])
@pytest.mark.parametrize("block", [7, 4096])
def test_torch_engine_gives_the_faiss_numbers(masks, block, torch_calls):
    x, y = _data()
    q, g = _masks(masks, len(y))
    a, b = _both(x, y, query_mask=q, gallery_mask=g, ks=(1, 2, 4), block_size=block)
    assert torch_calls == ["cpu"]  # faiss once, torch once
    _assert_same(a, b)
    assert 0.3 < a["recall@1"] < 1.0  # a real, non-trivial number was compared


@pytest.mark.parametrize("masks", ["same", "disjoint", "partial"])
def test_duplicates_and_ties_across_blocks(masks, torch_calls):
    # 5 distinct points repeated, labels not aligned with them: long tie groups crossing every block
    g = torch.Generator().manual_seed(3)
    base = torch.randn(5, 6, generator=g)
    pick = torch.randint(0, 5, (120,), generator=g)
    y = torch.randint(0, 4, (120,), generator=g)
    q, gm = _masks(masks, 120)
    a, b = _both(base[pick], y, query_mask=q, gallery_mask=gm, ks=(1, 3), block_size=7, nmi=False)
    _assert_same(a, b)
    assert torch_calls == ["cpu"]


def test_collapsed_embeddings_closed_form_on_the_torch_engine():
    # every item identical: any order is equally likely, so precision@1 = E[rel(1)] = (m - 1) / (n - 1)
    n_cls, m = 4, 9
    y = torch.arange(n_cls).repeat_interleave(m)
    x = torch.ones(n_cls * m, 3)
    b = retrieval_metrics(x, y, engine="torch", block_size=5, ks=(1,), nmi=False)
    p = (m - 1) / (n_cls * m - 1)
    assert b["precision@1"] == pytest.approx(p, abs=1e-12)
    assert b["r_precision"] == pytest.approx(p, abs=1e-12)  # E[rel(i)] = p at every rank
    _assert_same(retrieval_metrics(x, y, engine="faiss", ks=(1,), nmi=False), b)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_accuracy_engines_agree_with_ties(exclude_self, torch_calls):
    x, y = _data(n=120, seed=4)
    x = torch.cat([x, x[:30]])  # exact duplicates: ties at the k-th place
    y = torch.cat([y, y[:30]])
    if exclude_self:
        args = (x, y, x, y)
    else:
        args = (x[:100], y[:100], x[100:], y[100:])
    accs = [knn_accuracy(*args, k=7, exclude_self=exclude_self, engine=e, block_size=9) for e in ("faiss", "torch")]
    assert accs[0] == pytest.approx(accs[1], abs=1e-12)
    assert torch_calls == ["cpu"]
    assert 0.2 < accs[0] <= 1.0


def test_partial_overlap_self_map_matches_faiss():
    x, _ = _data(n=60, seed=5)
    x = torch.nn.functional.normalize(x, dim=1)
    q, g = x[:30], x[15:]
    own = torch.full((30,), -1, dtype=torch.int64)
    own[15:] = torch.arange(15)
    fv, fi = topk_search_with_self_map(q, g, k=6, self_cols=own, engine="faiss")
    tv, ti = knn_torch.topk_search_torch(q, g, k=6, self_cols=own, block_size=4, tile=7)
    torch.testing.assert_close(tv, fv, atol=1e-6, rtol=0)
    assert torch.equal(ti, fi)
    assert not (ti[15:] == own[15:, None]).any()  # a query never retrieves itself


def test_cpu_default_stays_faiss_and_bad_engine_is_explained(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch engine used on CPU by default")

    monkeypatch.setattr(knn_torch, "topk_search_torch", refuse)
    x, y = _data(n=40)
    assert math.isfinite(retrieval_metrics(x, y, nmi=False)["map@r"])
    assert resolve_engine("auto", x) == "faiss" and resolve_engine("auto", x.numpy()) == "faiss"
    with pytest.raises(ValueError, match=r"engine='gpu' is not one of \('auto', 'faiss', 'torch'\)"):
        retrieval_metrics(x, y, engine="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("masks", ["same", "disjoint", "partial"])
def test_cuda_embeddings_are_evaluated_on_the_device(masks, torch_calls):
    x, y = _data(n=3000, d=64, classes=40, seed=6)
    x = torch.cat([x, x[:200]])  # duplicates: the tie re-scoring also runs on the device
    y = torch.cat([y, y[:200]])
    q, g = _masks(masks, len(y))
    cpu = retrieval_metrics(x, y, query_mask=q, gallery_mask=g, engine="faiss")
    gpu = retrieval_metrics(x.cuda(), y, query_mask=q, gallery_mask=g)
    assert torch_calls == ["cuda"]
    _assert_same(cpu, gpu, tol=1e-4)
    acc = [knn_accuracy(x[:2000].to(dev), y[:2000], x[2000:].to(dev), y[2000:], k=20) for dev in ("cpu", "cuda")]
    assert acc[0] == pytest.approx(acc[1], abs=1e-3)
    assert torch_calls == ["cuda", "cuda"]
