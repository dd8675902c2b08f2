"""Tie-neutral metrics: every number is the exact expectation over uniformly random orders of tied items.

References here never call the library's helpers: closed forms for all-identical embeddings, and brute force
over every order of the tied items of tiny inputs (integer-valued vectors, so ties are exact in float64).
"""
import itertools
import math

import numpy as np
import pytest
import torch

from deepmetric.retrieval import knn_accuracy, retrieval_metrics


def _metrics_of_order(rel, ks):
    """SPEC §7 metrics of ONE ranked relevance list (all other-than-self gallery items)."""
    r = sum(rel)
    out = {f"recall@{k}": float(any(rel[:k])) for k in ks}
    out["precision@1"] = float(rel[0])
    hits, ap = 0, 0.0
    for i in range(r):
        if rel[i]:
            hits += 1
            ap += hits / (i + 1)
    out["map@r"] = ap / r
    out["r_precision"] = sum(rel[:r]) / r
    return out


def _brute_force(x, y, queries, gallery, ks):
    """Average over queries of the mean over EVERY order of tied candidates (exact float64 products)."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = np.asarray(y)
    per_query = []
    for q in queries:
        cands = [j for j in gallery if j != q]
        rel_of = {j: int(y[j] == y[q]) for j in cands}
        if sum(rel_of.values()) == 0:
            continue
        sims = {j: round(float(x[q] @ x[j]), 12) for j in cands}
        groups = [[j for j in cands if sims[j] == v] for v in sorted(set(sims.values()), reverse=True)]
        total, count = None, 0
        for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
            rel = [rel_of[j] for g in orders for j in g]
            m = _metrics_of_order(rel, ks)
            total = m if total is None else {key: total[key] + m[key] for key in m}
            count += 1
        per_query.append({key: v / count for key, v in total.items()})
    return {key: float(np.mean([m[key] for m in per_query])) for key in per_query[0]}


def _closed_form_identical(sizes, ks):
    """All n embeddings equal: each query's n-1 candidates are one tie group with t = R = its class size - 1."""
    n = sum(sizes)
    m = n - 1
    rows = []
    for size in sizes:
        t = size - 1
        if t == 0:
            continue
        p, q = t / m, t * (t - 1) / (m * (m - 1))
        row = {f"recall@{k}": 1 - math.comb(m - t, k) / math.comb(m, k) for k in ks}
        row["precision@1"] = p
        row["r_precision"] = p
        row["map@r"] = sum((p + (i - 1) * q) / i for i in range(1, t + 1)) / t
        rows += [row] * size
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


@pytest.mark.parametrize("sizes", [(10, 10, 10, 10), (3, 9, 5, 1, 12)])
def test_collapsed_embeddings_score_chance_whatever_the_storage_order(sizes):
    y_sorted = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    x = torch.randn(1, 16).expand(len(y_sorted), 16).contiguous()
    ks = (1, 2, 4, 8)
    expected = _closed_form_identical(sizes, ks)
    got = retrieval_metrics(x, y_sorted, ks=ks, block_size=7)
    shuffled = y_sorted[torch.randperm(len(y_sorted), generator=torch.Generator().manual_seed(0))]
    got_shuffled = retrieval_metrics(x, shuffled, ks=ks, block_size=7)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
        assert got_shuffled[key] == pytest.approx(value, abs=1e-12), key
    assert got["nmi"] == 0.0
    if sizes == (10, 10, 10, 10):  # the numbers of the collapsed model, now chance level
        assert got["recall@1"] == pytest.approx(9 / 39)
        assert got["map@r"] < 0.2


def _tiny_with_ties(seed, n=9, d=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-1, 2, (n, d), generator=g).double()
    x[x.abs().sum(dim=1) == 0, 0] = 1.0  # no zero vector
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("seed", range(6))
def test_brute_force_over_all_tie_orders_self_search(seed):
    x, y = _tiny_with_ties(seed)
    ks = (1, 2, 4)
    ref = _brute_force(x, y, range(len(y)), range(len(y)), ks)
    got = retrieval_metrics(x, y, ks=ks, nmi=False, block_size=2)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("seed", range(6, 10))
def test_brute_force_with_disjoint_and_overlapping_masks(seed):
    x, y = _tiny_with_ties(seed, n=10)
    query = torch.arange(10) < 5
    got = retrieval_metrics(x, y, query_mask=query, gallery_mask=~query, ks=(1, 2), nmi=False, block_size=3)
    ref = _brute_force(x, y, range(5), range(5, 10), (1, 2))
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    gallery = torch.arange(10) >= 3  # rows 3, 4 are queries and gallery items
    got = retrieval_metrics(x, y, query_mask=query, gallery_mask=gallery, ks=(1, 2), nmi=False, block_size=3)
    ref = _brute_force(x, y, range(5), range(3, 10), (1, 2))
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_a_tie_group_straddling_the_last_searched_rank_is_counted_beyond_it():
    # query 0 has ONE other item of its class (R = 1, so one neighbour would be searched) and it is tied
    # with 5 items of another class: only 1 of the 6 tied items is inside the top-1. Expected R@1 = 1/6.
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    x = torch.tensor([e1] + [e1] * 6 + [e2] * 2)
    y = torch.tensor([0, 1, 1, 1, 1, 1, 0, 2, 2])  # the relevant item (row 6) is stored last of the tie
    got = retrieval_metrics(x, y, query_mask=torch.arange(9) == 0, gallery_mask=torch.arange(9) >= 0,
                            ks=(1,), nmi=False)
    assert got["recall@1"] == pytest.approx(1 / 6)
    assert got["map@r"] == pytest.approx(1 / 6) and got["r_precision"] == pytest.approx(1 / 6)
    y2 = torch.tensor([0, 0, 1, 1, 1, 1, 1, 2, 2])  # the relevant item stored first: same numbers
    got2 = retrieval_metrics(x, y2, query_mask=torch.arange(9) == 0, gallery_mask=torch.arange(9) >= 0,
                             ks=(1,), nmi=False)
    assert got2 == pytest.approx(got, abs=1e-12)


def test_exact_duplicates_in_a_real_gallery_are_order_free_and_match_brute_force():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(5, 8, generator=g)
    x = base[torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4])]  # duplicated rows with different labels
    y = torch.tensor([0, 1, 1, 0, 2, 2, 0, 1, 2])
    ref = _brute_force(x, y, range(9), range(9), (1, 2, 4))
    for perm_seed in range(3):
        perm = torch.randperm(9, generator=torch.Generator().manual_seed(perm_seed))
        got = retrieval_metrics(x[perm], y[perm], ks=(1, 2, 4), nmi=False, block_size=2)
        for key, value in ref.items():
            assert got[key] == pytest.approx(value, abs=1e-9), key


def test_duplicates_that_differ_in_the_last_float32_bits_still_tie():
    # the same image embedded in two batches: equal up to float32 noise, counted as one tie group
    g = torch.Generator().manual_seed(4)
    base = torch.nn.functional.normalize(torch.randn(30, 64, generator=g), dim=1)
    noise = 1e-8 * torch.randn(120, 64, generator=g)  # ~ one float32 ulp of a 0.1 component
    idx = torch.arange(120) % 30
    y = torch.arange(120) // 30  # class-sorted storage: every copy of an item has a different class
    exact = retrieval_metrics(base[idx], y, nmi=False, block_size=16)
    noisy = retrieval_metrics(base[idx] + noise, y, nmi=False, block_size=16)
    for key in exact:
        assert noisy[key] == pytest.approx(exact[key], abs=1e-12), key
    # 3 tied copies of other classes, none relevant: a query's top-3 holds none of its class
    assert exact["recall@2"] == 0.0


def test_large_duplicated_gallery_is_invariant_to_block_size_and_storage_order():
    g = torch.Generator().manual_seed(5)
    base = torch.nn.functional.normalize(torch.randn(200, 32, generator=g), dim=1)
    idx = torch.randint(0, 200, (700,), generator=g)
    y = torch.randint(0, 20, (700,), generator=g)
    a = retrieval_metrics(base[idx], y, nmi=False, block_size=64)
    perm = torch.randperm(700, generator=g)
    b = retrieval_metrics(base[idx][perm], y[perm], nmi=False, block_size=300)
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-12), key


# ---------------------------------------------------------------------------------------- kNN accuracy


def _knn_expected_vote(train, ytr, test, yte, k, tau):
    """Loop reference of the documented rule: items tied at the k-th place share its remaining slots;
    a tie between the top classes scores 1/(number tied) when the true class is among them."""
    train = np.asarray(torch.nn.functional.normalize(train.double(), dim=1))
    test = np.asarray(torch.nn.functional.normalize(test.double(), dim=1))
    credit = 0.0
    for i in range(len(test)):
        sims = [round(float(test[i] @ train[j]), 12) for j in range(len(train))]
        kth = sorted(sims, reverse=True)[k - 1]
        above = [j for j in range(len(train)) if sims[j] > kth]
        tied = [j for j in range(len(train)) if sims[j] == kth]
        votes = {}
        for j in above:
            votes[int(ytr[j])] = votes.get(int(ytr[j]), 0.0) + math.exp(sims[j] / tau)
        for j in tied:
            votes[int(ytr[j])] = votes.get(int(ytr[j]), 0.0) + math.exp(sims[j] / tau) * (k - len(above)) / len(tied)
        best = max(votes.values())
        top = [c for c, v in votes.items() if v >= best * (1 - 1e-9)]
        credit += (int(yte[i]) in top) / len(top)
    return credit / len(test)


@pytest.mark.parametrize("seed, k", [(0, 1), (1, 3), (2, 5)])
def test_knn_accuracy_with_ties_follows_the_expected_vote_and_ignores_storage_order(seed, k):
    x, y = _tiny_with_ties(seed, n=14, d=2)
    ref = _knn_expected_vote(x[:10], y[:10], x[10:], y[10:], k, 0.5)
    assert knn_accuracy(x[:10], y[:10], x[10:], y[10:], k=k, temperature=0.5) == pytest.approx(ref, abs=1e-12)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(seed))
    assert knn_accuracy(x[:10][perm], y[:10][perm], x[10:], y[10:], k=k, temperature=0.5) == pytest.approx(ref, abs=1e-12)


def test_knn_accuracy_of_collapsed_embeddings_is_chance():
    # 4 balanced classes, one point for all: every class gets the same expected vote, so each test item
    # scores 1/4 whichever order or class ids (the old rule gave class 0 every time: 25% or 100% by label)
    x = torch.ones(40, 3)
    y = torch.arange(40) % 4
    assert knn_accuracy(x, y, x[:8], torch.zeros(8, dtype=torch.long), k=6) == pytest.approx(0.25)
    # leave-one-out: the own class has one item fewer among the others, so it never wins
    assert knn_accuracy(x, y, x, y, k=6, exclude_self=True) == 0.0
