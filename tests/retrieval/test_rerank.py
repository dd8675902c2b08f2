"""Re-ranking: α-QE, DBA and k-reciprocal against references written from the papers' equations."""
import numpy as np
import pytest
import torch

from deepmetric.retrieval import retrieval_metrics
from deepmetric.retrieval.rerank import (alpha_query_expansion, database_augmentation, k_reciprocal_distances,
                                         ranking_metrics, rerank_metrics)


def _data(n=60, d=8, classes=5, seed=0, spread=0.9):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(classes, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.nn.functional.normalize(c[y] + spread * torch.randn(n, d, generator=g), dim=1), y


def test_alpha_qe_closed_form():
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.6, -0.8]])
    # k=2 nearest: g0 (s=0.8), g2 (s=0.6); alpha=2: q + 0.64*g0 + 0.36*g2
    expect = torch.tensor([1 + 0.64 * 0.8 + 0.36 * 0.6, 0.64 * 0.6 - 0.36 * 0.8])
    got = alpha_query_expansion(q, g, k=2, alpha=2.0)
    assert torch.allclose(got[0], expect / expect.norm(), atol=1e-6)
    avg = alpha_query_expansion(q, g, k=2, alpha=0.0)  # average QE
    e = q[0] + g[0] + g[2]
    assert torch.allclose(avg[0], e / e.norm(), atol=1e-6)


def test_dba_and_self_qe_exclude_the_item_itself():
    x, _ = _data(n=20)
    ref = []
    xs = x.double().numpy()
    for i in range(20):
        s = xs @ xs[i]
        s[i] = -np.inf
        nn = np.argsort(-s)[:3]
        v = xs[i] + sum(max(s[j], 0) ** 3 * xs[j] for j in nn)
        ref.append(v / np.linalg.norm(v))
    np.testing.assert_allclose(database_augmentation(x, k=3, alpha=3).numpy(), np.array(ref), atol=1e-5)
    np.testing.assert_allclose(alpha_query_expansion(x, None, k=3, alpha=3).numpy(), np.array(ref), atol=1e-5)


def _krecip_reference(x, k1, k2, lam):
    """Plain loops from Zhong et al. 2017 eqs. 3-11 (sets, float64)."""
    x = x.double().numpy()
    n = len(x)
    d = np.maximum(2 - 2 * x @ x.T, 0)
    rank = [list(np.argsort(d[i], kind="stable")) for i in range(n)]
    N = lambda i, k: set(rank[i][: k + 1])
    R = lambda i, k: {j for j in N(i, k) if i in N(j, k)}
    V = np.zeros((n, n))
    for i in range(n):
        star = set(R(i, k1))
        for j in R(i, k1):
            rj = R(j, round(k1 / 2))
            if len(rj & R(i, k1)) > 2 / 3 * len(rj):
                star |= rj
        idx = sorted(star)
        w = np.exp(-d[i, idx])
        V[i, idx] = w / w.sum()
    V = np.array([V[rank[i][:k2]].mean(axis=0) for i in range(n)])
    J = np.array([[1 - np.minimum(V[i], V[j]).sum() / np.maximum(V[i], V[j]).sum() for j in range(n)] for i in range(n)])
    out = (1 - lam) * J + lam * d / d.max(axis=1, keepdims=True)
    np.fill_diagonal(out, np.inf)
    return out


@pytest.mark.parametrize("k1,k2,lam", [(6, 3, 0.3), (4, 1, 0.0), (8, 4, 0.7)])
def test_k_reciprocal_matches_the_equations(k1, k2, lam):
    x, _ = _data(n=40, seed=k1)
    got = k_reciprocal_distances(x, k1=k1, k2=k2, lambda_value=lam)
    ref = _krecip_reference(x, k1, k2, lam)
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_lambda_one_keeps_the_original_ranking():
    x, y = _data(n=50, seed=3)
    d = k_reciprocal_distances(x, k1=6, k2=3, lambda_value=1.0)
    s = (x @ x.T).numpy()
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_array_equal(np.argsort(d, axis=1, kind="stable")[:, :10], np.argsort(-s, axis=1, kind="stable")[:, :10])


def test_no_rerank_equals_retrieval_metrics_and_ranking_metrics_checks_depth():
    x, y = _data(n=80, seed=5)
    ref = retrieval_metrics(x, y, ks=(1, 2, 4), nmi=False)
    got = rerank_metrics(x, y, method="none", ks=(1, 2, 4))
    for key in ("recall@1", "recall@2", "recall@4", "map@r"):
        assert got[key] == pytest.approx(ref[key], abs=1e-9)
    with pytest.raises(ValueError, match="columns"):
        ranking_metrics(np.zeros((80, 2), dtype=np.int64), y, ks=(1,))


def test_reranking_helps_on_clustered_data_and_errors_are_clear():
    x, y = _data(n=200, classes=4, spread=1.2, seed=1)
    base = rerank_metrics(x, y, method="none")["map@r"]
    for method in ("qe", "dba", "dba+qe", "k_reciprocal"):
        # compact clusters: pulling items toward their neighbourhood raises MAP@R
        assert rerank_metrics(x, y, method=method, k=3, alpha=1.0)["map@r"] > base, method
    with pytest.raises(ValueError, match="not one of"):
        rerank_metrics(x, y, method="magic")
    with pytest.raises(ValueError, match="alpha"):
        alpha_query_expansion(x, k=2, alpha=-1)
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal_distances(x[:5], k1=8)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_search_time_query_expansion(kind):
    from deepmetric.retrieval.index import SearchIndex, clustered_vectors

    g, _ = clustered_vectors(500, 16, clusters=5, seed=2)
    q, _ = clustered_vectors(20, 16, clusters=5, seed=3)
    index = SearchIndex.build(g, kind=kind, ef_search=200)
    scores, ids = index.search(q, 5, qe=3, alpha=3.0)
    if kind == "flat":  # exact: the same as expanding with the reference function, then searching
        expanded = alpha_query_expansion(q, g, k=3, alpha=3.0).numpy()
        s = expanded @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
        np.testing.assert_array_equal(ids, np.argsort(-s, axis=1, kind="stable")[:, :5])
        np.testing.assert_allclose(scores, np.sort(s, axis=1)[:, ::-1][:, :5], atol=1e-5)
    else:
        assert ids.shape == (20, 5) and (ids >= 0).all()
        assert np.all(np.diff(scores, axis=1) <= 1e-6)
    np.testing.assert_array_equal(index.search(q, 5, qe=0)[1], index.search(q, 5)[1])
