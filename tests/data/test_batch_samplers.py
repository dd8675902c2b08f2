"""MPerClassSampler and RandomBatchSampler: P×K structure, epochs, ranks, edge cases."""
from collections import Counter

import numpy as np
import pytest
import torch

from deepmetric.data.samplers import MPerClassSampler, RandomBatchSampler, _rank_share
from deepmetric.registry import SAMPLERS

LABELS = np.repeat(np.arange(10), [7, 5, 9, 4, 6, 8, 5, 4, 6, 10])  # 64 items, unequal classes, all >= K
P, K = 3, 4


def sampler(**kw):
    args = dict(classes_per_batch=P, samples_per_class=K, seed=1)
    args.update(kw)
    return MPerClassSampler(LABELS, **args)


def test_registry():
    assert SAMPLERS.get("m_per_class") is MPerClassSampler and SAMPLERS.get("random") is RandomBatchSampler


def test_every_batch_is_p_distinct_classes_times_k_distinct_samples_in_class_blocks():
    s = sampler()
    batches = list(s)
    assert len(batches) == len(s) == 64 // (P * K)
    for b in batches:
        assert len(b) == P * K
        labs = LABELS[b]
        blocks = [labs[i * K:(i + 1) * K] for i in range(P)]
        assert all(len(set(bl.tolist())) == 1 for bl in blocks)  # classes one after another
        assert len({int(bl[0]) for bl in blocks}) == P
        assert len(set(b)) == P * K  # no repeated sample: every class here has >= K samples


def test_samples_of_a_class_are_used_before_any_repeats():
    s = sampler(num_batches=40)
    used = {c: [] for c in range(10)}
    for b in s:
        for i in b:
            used[int(LABELS[i])].append(i)
    for c, idx in used.items():
        n = int((LABELS == c).sum())
        full = len(idx) // n
        for r in range(full):  # each complete cycle is a permutation of the class
            assert sorted(idx[r * n:(r + 1) * n]) == sorted(np.flatnonzero(LABELS == c).tolist())
    counts = Counter(int(LABELS[i]) for b in s for i in b)
    # classes are visited in rounds: every class appears, none more than one round ahead of another
    per_class_visits = np.array([counts[c] // K for c in range(10)])
    assert per_class_visits.max() - per_class_visits.min() <= 1


def test_deterministic_per_epoch_and_different_across_epochs_and_seeds():
    a, b = sampler(), sampler()
    assert list(a) == list(b)
    a.set_epoch(1)
    e1 = list(a)
    assert e1 != list(b)
    b.set_epoch(1)
    assert list(b) == e1
    assert list(sampler(seed=2)) != list(sampler())
    # no global RNG involvement
    torch.manual_seed(0)
    x = list(sampler())
    torch.manual_seed(123)
    assert list(sampler()) == x


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_take_interleaved_batches_of_the_global_sequence(world_size, drop_last):
    glob = sampler(num_batches=7).global_batches()
    ranks = [list(sampler(num_batches=7, rank=r, world_size=world_size, drop_last=drop_last)) for r in range(world_size)]
    lengths = {len(r) for r in ranks}
    assert len(lengths) == 1  # the same number of batches on every rank
    n = lengths.pop()
    assert n == (7 // world_size if drop_last else -(-7 // world_size))
    for r, got in enumerate(ranks):
        assert got == [glob[(r + i * world_size) % 7] for i in range(n)]
    used = [tuple(b) for r in ranks for b in r]
    if drop_last:
        assert len(set(used)) == len(used)  # disjoint batches across ranks
        assert sorted(used) == sorted(tuple(b) for b in glob[: n * world_size])
    else:
        assert set(used) == {tuple(b) for b in glob}  # together they cover every global batch


def test_rank_share_rule():
    assert _rank_share(7, 1, 3, True) == [1, 4]
    assert _rank_share(7, 2, 3, False) == [2, 5, 1]
    assert _rank_share(0, 0, 2, False) == []


def test_small_classes_are_sampled_with_replacement_and_reported_once():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 6 + [3])  # class 1 has 2 < K samples, class 3 a single one
    with pytest.warns(UserWarning, match=r"1 class\(es\) have fewer samples.*\(1, 2\).*1 class\(es\) with a single sample are left out") as rec:
        s = MPerClassSampler(labels, classes_per_batch=2, samples_per_class=K, num_batches=12, seed=0)
    assert len(rec) == 1
    seen1 = False
    for b in s:
        assert 14 not in b  # the singleton (index 14) is never used
        blocks = [b[i * K:(i + 1) * K] for i in range(2)]
        for bl in blocks:
            if labels[bl[0]] == 1:
                seen1 = True
                assert set(bl) == {6, 7}  # both samples, then repeats
    assert seen1


def test_too_few_classes_or_too_large_batch_are_clear_errors():
    with pytest.raises(ValueError, match=r"classes_per_batch=11 but only 10 class\(es\).*at most 10"):
        MPerClassSampler(LABELS, classes_per_batch=11, samples_per_class=2)
    with pytest.raises(ValueError, match=r"8 × 10 = 80 is larger than the dataset \(64 items\)"):
        MPerClassSampler(LABELS, classes_per_batch=8, samples_per_class=10)
    with pytest.raises(ValueError, match=r"rank=2, world_size=2"):
        MPerClassSampler(LABELS, classes_per_batch=2, samples_per_class=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"num_batches=0"):
        MPerClassSampler(LABELS, classes_per_batch=2, samples_per_class=2, num_batches=0)


def test_dataloader_integration():
    ds = torch.utils.data.TensorDataset(torch.arange(64), torch.as_tensor(LABELS))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler())
    for x, y in loader:
        assert x.shape == (P * K,) and torch.equal(y, torch.as_tensor(LABELS)[x])


# ---------------------------------------------------------------------------------------------- random


def test_random_batches_partition_a_permutation():
    s = RandomBatchSampler(23, batch_size=5, seed=3)
    batches = list(s)
    assert len(s) == len(batches) == 4 and all(len(b) == 5 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 20 and set(flat) <= set(range(23))
    full = list(RandomBatchSampler(23, batch_size=5, seed=3, drop_last=False))
    assert len(full) == 5 and len(full[-1]) == 3 and sorted(i for b in full for i in b) == list(range(23))
    assert full[:4] == batches  # the same permutation


def test_random_epochs_and_ranks():
    a = RandomBatchSampler(40, batch_size=4, seed=0)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0
    a.set_epoch(0)
    assert list(a) == e0
    ranks = [list(RandomBatchSampler(40, batch_size=4, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3]
    assert [b for i in range(3) for b in (ranks[0][i], ranks[1][i], ranks[2][i])] == e0[:9]


def test_random_errors():
    with pytest.raises(ValueError, match=r"batch_size=9 is larger than the dataset \(8 items\)"):
        RandomBatchSampler(8, batch_size=9)
    with pytest.raises(ValueError, match=r"batch_size=0"):
        RandomBatchSampler(8, batch_size=0)
