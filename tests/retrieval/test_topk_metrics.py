"""topk_metrics: P@k, Recall@k, mAP@k expected over tie orders, against brute force over every tie order."""
import itertools
import math

import numpy as np
import pytest
import torch

from deepmetric.retrieval.topk_metrics import tie_expected_topk, topk_metrics


def _plain(rel, k, r):
    """P@k, R@k, AP@k of one fixed ranking (list of 0/1), written from the definitions."""
    top = rel[:k]
    hits, ap = 0, 0.0
    for i, v in enumerate(top):
        if v:
            hits += 1
            ap += hits / (i + 1)
    return sum(top) / k, float(any(top)), ap / min(k, r)


def _brute(x, y, ks, queries=None, gallery=None):
    """Average of the plain metrics over EVERY order of tied items (exact float64 similarities)."""
    x = np.asarray(torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float64), dim=1))
    y = np.asarray(y)
    n = len(y)
    queries = range(n) if queries is None else queries
    gallery = list(range(n)) if gallery is None else gallery
    per = {f"{m}@{k}": [] for k in ks for m in ("precision", "recall", "map")}
    for q in queries:
        cands = [j for j in gallery if j != q]
        r = sum(int(y[j] == y[q]) for j in cands)
        if r == 0:
            continue
        sims = {j: round(float(x[q] @ x[j]), 9) for j in cands}
        groups = [[j for j in cands if sims[j] == v] for v in sorted(set(sims.values()), reverse=True)]
        orders = list(itertools.product(*[list(itertools.permutations(gr)) for gr in groups]))
        for k in ks:
            acc = np.zeros(3)
            for o in orders:
                rel = [int(y[j] == y[q]) for grp in o for j in grp]
                acc += _plain(rel, k, r)
            acc /= len(orders)
            per[f"precision@{k}"].append(acc[0])
            per[f"recall@{k}"].append(acc[1])
            per[f"map@{k}"].append(acc[2])
    return {name: float(np.mean(v)) for name, v in per.items()}


def _tied_points(n, classes, directions, seed):
    """Points on a few distinct directions (exact duplicates give ties), random labels."""
    g = np.random.default_rng(seed)
    dirs = g.standard_normal((directions, 3))
    which = g.integers(0, directions, n)
    return dirs[which].astype(np.float32), g.integers(0, classes, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_over_all_tie_orders(seed):
    x, y = _tied_points(9, classes=3, directions=4, seed=seed)
    ks = (1, 2, 3, 5)
    got = topk_metrics(x, y, ks=ks)
    ref = _brute(x, y, ks)
    for name, v in ref.items():
        assert got[name] == pytest.approx(v, abs=1e-9), name


def test_no_ties_equals_the_plain_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=g), torch.randint(0, 4, (40,), generator=g)
    ks = (1, 4, 10)
    assert topk_metrics(x, y, ks=ks) == pytest.approx({**_brute(x, y, ks), "queries": 40}, abs=1e-9)


def test_collapsed_embeddings_score_the_class_prior_not_storage_order():
    # Everything identical and stored sorted by class: a storage-order tie rule would give P@1 = 1.
    y = np.repeat([0, 1], 5)
    out = topk_metrics(np.ones((10, 4)), y, ks=(1, 3))
    assert out["precision@1"] == pytest.approx(4 / 9)  # 4 of the 9 others share the class
    assert out["precision@3"] == pytest.approx(4 / 9)
    # P(no relevant in 3 of 9 with 4 relevant) = C(5,3)/C(9,3) = 10/84
    assert out["recall@3"] == pytest.approx(1 - 10 / 84)


def test_closed_form_perfect_and_worst_rankings():
    # two tight, far apart classes: every ranking puts the 2 same-class items first
    x = np.array([[1, 0], [1, 0.01], [1, -0.01], [-1, 0], [-1, 0.01], [-1, -0.01]], dtype=np.float32)
    y = np.array([0, 0, 0, 1, 1, 1])
    out = topk_metrics(x, y, ks=(1, 2, 3))
    assert out["precision@1"] == out["map@2"] == out["map@3"] == 1.0
    assert out["precision@3"] == pytest.approx(2 / 3)
    # labels swapped across the geometry: the 2 same-class items always come after the 3 others
    y_bad = np.array([0, 1, 2, 0, 1, 2])
    bad = topk_metrics(x, y_bad, ks=(1, 2, 3))
    assert bad["precision@1"] == bad["recall@2"] == 0.0
    assert bad["queries"] == 6


def test_disjoint_query_gallery_and_per_class():
    x, y = _tied_points(12, classes=3, directions=5, seed=4)
    qm = np.zeros(12, dtype=bool)
    qm[:4] = True
    ks = (1, 2, 4)
    got = topk_metrics(x, y, ks=ks, query_mask=qm, gallery_mask=~qm, per_class=True)
    ref = _brute(x, y, ks, queries=range(4), gallery=list(range(4, 12)))
    for name, v in ref.items():
        assert got[name] == pytest.approx(v, abs=1e-9), name
    # the per-class table re-weighted by query counts gives back the overall mean
    pc = got["per_class"]
    total = sum(c["queries"] for c in pc.values())
    assert total == got["queries"]
    assert sum(c["queries"] * c["map@2"] for c in pc.values()) / total == pytest.approx(got["map@2"])
    for c, row in pc.items():
        sel = [i for i in range(4) if y[i] == c]
        ref_c = _brute(x, y, ks, queries=sel, gallery=list(range(4, 12)))
        assert row["precision@2"] == pytest.approx(ref_c["precision@2"], abs=1e-9)


def test_tie_group_running_past_the_neighbour_table():
    # k-th and (k+1)-th neighbours tied, and the group continues far beyond: the full-row path must be exact
    x = np.concatenate([np.tile([[1.0, 0.0]], (7, 1)), np.array([[0.0, 1.0], [0.6, 0.8]])]).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0, 1, 0, 1])
    ks = (1, 2)
    got = topk_metrics(x, y, ks=ks)
    ref = _brute(x, y, ks)
    for name, v in ref.items():
        assert got[name] == pytest.approx(v, abs=1e-9), name


def test_group_formula_against_enumeration():
    # one row: groups [a], [b c d e] tied, [f]; 2 relevant in the tie group, 1 before
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.5, 0.1]])
    rel = torch.tensor([[1, 0, 1, 1, 0, 0]], dtype=torch.bool)
    for k in (1, 2, 3, 4, 5):
        e = tie_expected_topk(scores, rel, [k], torch.tensor([3]))[k]
        acc = np.zeros(3)
        perms = list(itertools.permutations([0, 1, 1, 0]))
        for p in perms:
            acc += _plain([1, *p, 0], k, 3)
        acc /= len(perms)
        assert float(e["hits"][0]) / k == pytest.approx(acc[0])
        assert float(e["recall"][0]) == pytest.approx(acc[1])
        assert float(e["ap"][0]) == pytest.approx(acc[2])


def test_errors_name_the_problem():
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="offers only 3"):
        topk_metrics(x, [0, 0, 1, 1], ks=(4,))
    with pytest.raises(ValueError, match="none of the 4 queries"):
        topk_metrics(x, [0, 1, 2, 3], ks=(1,))
    with pytest.raises(ValueError, match="integer class ids"):
        topk_metrics(x, np.zeros(4), ks=(1,))
