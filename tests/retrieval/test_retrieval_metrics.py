"""retrieval_metrics / knn_accuracy / nmi_score: hand-computed cases, PML's AccuracyCalculator, loop references."""
import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import normalized_mutual_info_score

from deepmetric.retrieval import knn_accuracy, nmi_score, retrieval_metrics
from deepmetric.retrieval import metrics as metrics_module
from deepmetric.retrieval.metrics import kmeans_assign

PML_KEYS = {"precision@1": "precision_at_1", "map@r": "mean_average_precision_at_r", "r_precision": "r_precision"}


def _circle(degrees):
    a = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=1)


def _clustered(n, d, n_classes, seed, spread=0.8):
    """Unit vectors around random class centres, uneven class sizes (labels drawn at random)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = centres[y] + spread * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1), y


def _loop_reference(x, y, queries, gallery, ks):
    """Plain-loop float64 metrics from SPEC §7: full sort per query, own item excluded, R = other same-class."""
    x = np.asarray(torch.nn.functional.normalize(x.double(), dim=1))
    y = np.asarray(y)
    rec = {kk: [] for kk in ks}
    p1, mapr, rprec = [], [], []
    for q in queries:
        cands = [j for j in gallery if j != q]
        cands.sort(key=lambda j: -float(x[q] @ x[j]))
        rel = [int(y[j] == y[q]) for j in cands]
        r = sum(rel)
        if r == 0:
            continue
        for kk in ks:
            rec[kk].append(float(any(rel[:kk])))
        p1.append(rel[0])
        hits, ap = 0, 0.0
        for i in range(r):
            if rel[i]:
                hits += 1
                ap += hits / (i + 1)
        mapr.append(ap / r)
        rprec.append(sum(rel[:r]) / r)
    out = {f"recall@{kk}": float(np.mean(v)) for kk, v in rec.items()}
    out.update({"precision@1": float(np.mean(p1)), "map@r": float(np.mean(mapr)), "r_precision": float(np.mean(rprec))})
    return out


# ---------------------------------------------------------------------------------------- hand-computed


def test_six_points_on_a_circle_by_hand():
    # class 0 at 0°, 10°, 100°; class 1 at 25°, 110°, 205°. Neighbour classes (nearest first, worked out by
    # angle): p0 [0,1,0,1,1]  p1 [0,1,0,1,1]  p2 [1,1,0,0,1]  p3 [0,0,0,1,1]  p4 [0,1,1,0,0]  p5 [1,0,0,0,1]
    # -> rel p0 10100, p1 10100, p2 00110, p3 00011, p4 01100, p5 10001; R = 2 for everyone.
    x = _circle([0, 10, 100, 25, 110, 205])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    m = retrieval_metrics(x, y, ks=(1, 2, 4), nmi=False)
    assert m["recall@1"] == pytest.approx(3 / 6)  # p0, p1, p5
    assert m["recall@2"] == pytest.approx(4 / 6)  # + p4
    assert m["recall@4"] == pytest.approx(1.0)  # p2 at rank 3, p3 at rank 4
    assert m["precision@1"] == pytest.approx(3 / 6)
    # MAP@R with R = 2: p0, p1, p5 -> (1/2)(1/1); p4 -> (1/2)(1/2); p2, p3 -> 0
    assert m["map@r"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0.25 + 0.5) / 6)
    assert m["r_precision"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0.5 + 0.5) / 6)
    assert set(m) == {"recall@1", "recall@2", "recall@4", "precision@1", "map@r", "r_precision"}


def test_queries_without_any_same_class_item_are_skipped():
    # the circle case plus a lone class-2 item at -1°: it would count as a miss if it were scored, and it
    # becomes p0's nearest neighbour (p0 loses its recall@1 hit; p1 still has p0 at 10° before it at 11°)
    x = _circle([0, 10, 100, 25, 110, 205, -1])
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    m = retrieval_metrics(x, y, ks=(1, 2), nmi=False)
    assert m["recall@1"] == pytest.approx(2 / 6)  # averaged over the 6 scored queries only
    assert m["recall@2"] == pytest.approx(4 / 6)
    # p0: rel now 0,1,0,1 with R = 2 -> MAP@R = (1/2)(1/2)
    assert m["map@r"] == pytest.approx((0.25 + 0.5 + 0 + 0 + 0.25 + 0.5) / 6)


def test_scale_and_permutation_invariance():
    x, y = _clustered(60, 6, 5, seed=1)
    m = retrieval_metrics(x, y, nmi=False)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(2))
    scale = torch.rand(60, 1, generator=torch.Generator().manual_seed(3)) * 10 + 0.1
    m2 = retrieval_metrics((x * scale)[perm], y[perm], nmi=False)
    for key in m:
        assert m2[key] == pytest.approx(m[key], abs=1e-12)


# ---------------------------------------------------------------------------------------- against PML


def _pml(query, ql, ref, rl, ref_includes_query):
    calc = AccuracyCalculator(include=tuple(PML_KEYS.values()), k="max_bin_count", device=torch.device("cpu"))
    return calc.get_accuracy(query, ql, ref, rl, ref_includes_query=ref_includes_query)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pml_accuracy_calculator_query_equals_gallery(seed):
    x, y = _clustered(150, 16, 12, seed=seed)
    y[0] = 99  # a lone query: PML skips it, so must we
    m = retrieval_metrics(x, y, nmi=False, block_size=32)
    ref = _pml(x, y, x, y, ref_includes_query=True)
    for ours, theirs in PML_KEYS.items():
        assert m[ours] == pytest.approx(ref[theirs], abs=1e-6)


@pytest.mark.parametrize("seed", [3, 4])
def test_equals_pml_with_disjoint_query_and_gallery_masks(seed):
    x, y = _clustered(160, 12, 10, seed=seed)
    query = torch.rand(160, generator=torch.Generator().manual_seed(seed)) < 0.4
    gallery = ~query
    m = retrieval_metrics(x, y, query_mask=query, gallery_mask=gallery, ks=(1, 10), nmi=False, block_size=16)
    ref = _pml(x[query], y[query], x[gallery], y[gallery], ref_includes_query=False)
    for ours, theirs in PML_KEYS.items():
        assert m[ours] == pytest.approx(ref[theirs], abs=1e-6)
    loop = _loop_reference(x, y, query.nonzero().flatten().tolist(), gallery.nonzero().flatten().tolist(), (1, 10))
    for key, value in loop.items():
        assert m[key] == pytest.approx(value, abs=1e-9)


def test_equal_masks_are_a_self_search_on_the_subset():
    x, y = _clustered(90, 8, 6, seed=5)
    mask = torch.arange(90) % 3 != 0
    m = retrieval_metrics(x, y, query_mask=mask, gallery_mask=mask.clone(), nmi=False)
    ref = _pml(x[mask], y[mask], x[mask], y[mask], ref_includes_query=True)
    for ours, theirs in PML_KEYS.items():
        assert m[ours] == pytest.approx(ref[theirs], abs=1e-6)


def test_partly_overlapping_masks_match_the_loop_reference():
    x, y = _clustered(80, 8, 5, seed=6)
    query = torch.arange(80) < 50
    gallery = torch.arange(80) >= 30  # rows 30..49 are both: they must not retrieve themselves
    m = retrieval_metrics(x, y, query_mask=query, gallery_mask=gallery, nmi=False, block_size=9)
    loop = _loop_reference(x, y, list(range(50)), list(range(30, 80)), (1, 2, 4, 8))
    for key, value in loop.items():
        assert m[key] == pytest.approx(value, abs=1e-9)


def test_neighbour_count_is_chosen_from_the_largest_class():
    # one class of 40 items: MAP@R needs 39 neighbours although max(ks) = 1
    x, y = _clustered(70, 5, 4, seed=7, spread=2.0)
    y[:40] = 0
    m = retrieval_metrics(x, y, ks=(1,), nmi=False)
    loop = _loop_reference(x, y, list(range(70)), list(range(70)), (1,))
    for key, value in loop.items():
        assert m[key] == pytest.approx(value, abs=1e-9)


# ---------------------------------------------------------------------------------------- clustering


def test_nmi_of_two_antipodal_clusters_is_one():
    g = torch.Generator().manual_seed(8)
    y = torch.arange(40) % 2
    x = (y.double() * 2 - 1)[:, None] * torch.ones(1, 4) + 0.05 * torch.randn(40, 4, generator=g)
    assert nmi_score(x, y) == pytest.approx(1.0)
    m = retrieval_metrics(x, y, ami=True)
    assert m["nmi"] == pytest.approx(1.0) and m["ami"] == pytest.approx(1.0)


def test_nmi_is_sklearn_arithmetic_nmi_of_the_seeded_kmeans_on_the_query_set():
    x, y = _clustered(120, 8, 6, seed=9, spread=1.5)
    query = torch.arange(120) < 70
    m = retrieval_metrics(x, y, query_mask=query, gallery_mask=~query, seed=3)
    assign = kmeans_assign(x[query], int(torch.unique(y[query]).numel()), seed=3)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y[query].numpy(), assign))
    assert 0.0 < m["nmi"] < 1.0
    assert retrieval_metrics(x, y, query_mask=query, gallery_mask=~query, seed=3)["nmi"] == m["nmi"]


# ---------------------------------------------------------------------------------------- kNN classifier


def _knn_loop(train, ytr, test, yte, k, tau):
    train = torch.nn.functional.normalize(train.double(), dim=1)
    test = torch.nn.functional.normalize(test.double(), dim=1)
    correct = 0
    for i in range(len(test)):
        sims = [(float(test[i] @ train[j]), j) for j in range(len(train))]
        sims.sort(key=lambda t: -t[0])
        votes = {}
        for s, j in sims[:k]:
            votes[int(ytr[j])] = votes.get(int(ytr[j]), 0.0) + math.exp(s / tau)
        best = max(votes.values())
        pred = min(c for c, v in votes.items() if v == best)
        correct += pred == int(yte[i])
    return correct / len(test)


@pytest.mark.parametrize("k, tau", [(1, 0.1), (7, 0.1), (25, 0.5)])
def test_knn_accuracy_equals_a_plain_loop(k, tau):
    x, y = _clustered(130, 8, 7, seed=10, spread=1.2)
    acc = knn_accuracy(x[:100], y[:100], x[100:], y[100:], k=k, temperature=tau, block_size=16)
    assert acc == pytest.approx(_knn_loop(x[:100], y[:100], x[100:], y[100:], k, tau))


def test_knn_accuracy_chunked_votes_and_weights_matter(monkeypatch):
    # the test item at 1°: two class-1 items (30°, 32°) outvote the class-0 item (0°) when τ is large (equal
    # weights), but at small τ the much closer class-0 item's weight exp(s/τ) dominates
    train = _circle([0, 30, 32])
    ytr = torch.tensor([0, 1, 1])
    test = _circle([1])
    assert knn_accuracy(train, ytr, test, torch.tensor([0]), k=3, temperature=0.01) == 1.0
    assert knn_accuracy(train, ytr, test, torch.tensor([0]), k=3, temperature=100.0) == 0.0
    x, y = _clustered(90, 6, 9, seed=11, spread=1.2)
    full = knn_accuracy(x[:60], y[:60], x[60:], y[60:], k=10)
    monkeypatch.setattr(metrics_module, "_VOTE_TABLE_ENTRIES", 20)  # 2 test items per vote chunk
    assert knn_accuracy(x[:60], y[:60], x[60:], y[60:], k=10) == full


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(labels=torch.tensor([0, 0, 1])), "3 entries but there are 6"),
        (dict(labels=torch.tensor([0.0, 0, 0, 1, 1, 1])), "integer class ids"),
        (dict(query_mask=torch.zeros(6, dtype=torch.bool)), "query set is empty"),
        (dict(gallery_mask=torch.zeros(6, dtype=torch.bool)), "gallery is empty"),
        (dict(query_mask=torch.ones(5, dtype=torch.bool)), r"shape \(6,\)"),
        (dict(query_mask=torch.ones(6)), "boolean mask"),
        (dict(ks=(1, 6)), "only 5"),
        (dict(ks=(0,)), "positive integers"),
        (dict(labels=torch.arange(6)), "none of the 6 queries"),
        (dict(embeddings=torch.full((6, 2), float("inf"))), "NaN or infinite"),
    ],
)
def test_retrieval_metrics_errors(kwargs, match):
    args = dict(embeddings=_circle([0, 10, 100, 25, 110, 205]), labels=torch.tensor([0, 0, 0, 1, 1, 1]), nmi=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(args.pop("embeddings"), args.pop("labels"), **args)


def test_knn_accuracy_errors():
    x, y = _circle([0, 10, 20]), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(x, y, x, y, k=1, temperature=0.0)
    with pytest.raises(ValueError, match="k=4 neighbours"):
        knn_accuracy(x, y, x, y, k=4)
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(x, y, x, y[:2], k=1)
