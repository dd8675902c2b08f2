"""TwoViewDataset: independent views, no labels, neighbour positives deterministic per (seed, epoch, index)."""
import numpy as np
import pytest
import torch

from deepmetric.data.embedded import Digits
from deepmetric.data.transforms import build_transform
from deepmetric.data.two_view import TwoViewDataset


def identity(img):
    return torch.tensor(np.array(img), dtype=torch.float32)


def test_items_are_two_views_and_the_index_never_the_label():
    base = Digits(None, "train")
    ds = TwoViewDataset(base, identity)
    v1, v2, i = ds[5]
    assert i == 5 and len(ds) == len(base)
    assert torch.equal(v1, v2) and torch.equal(v1, identity(base[5][0]))
    assert not hasattr(ds, "labels") and not hasattr(ds, "class_names")


def test_views_are_independently_augmented_and_reproducible_under_a_seed():
    ds = TwoViewDataset(Digits(None, "train"), build_transform("mnist", train=True, image_size=8))
    torch.manual_seed(0)
    a1, a2, _ = ds[3]
    torch.manual_seed(0)
    b1, b2, _ = ds[3]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)
    # across many items the two views differ (independent draws), not only occasionally
    torch.manual_seed(1)
    diffs = [not torch.equal(*ds[i][:2]) for i in range(20)]
    assert sum(diffs) >= 18


def test_neighbour_positives_follow_the_table_with_probability_prob():
    base = Digits(None, "all")
    n = len(base)
    ds = TwoViewDataset(base, identity)
    table = torch.roll(torch.arange(n), 1)  # partner of i is i - 1
    ds.set_neighbours(table, 0.5, seed=7)
    partners = np.array([ds.partner(i) for i in range(n)])
    used = partners != np.arange(n)
    assert (partners[used] == table.numpy()[used]).all()
    assert abs(used.mean() - 0.5) < 0.06  # 1,797 Bernoulli(0.5) draws
    # the second view really comes from the partner's image
    i = int(np.flatnonzero(used)[0])
    v1, v2, idx = ds[i]
    assert idx == i and torch.equal(v1, identity(base[i][0])) and torch.equal(v2, identity(base[int(table[i])][0]))
    # deterministic for (seed, epoch, index); another epoch or seed draws again
    again = TwoViewDataset(base, identity)
    again.set_neighbours(table.numpy(), 0.5, seed=7)
    assert [again.partner(i) for i in range(n)] == partners.tolist()
    ds.set_epoch(1)
    assert [ds.partner(i) for i in range(n)] != partners.tolist()
    ds.set_epoch(0)
    ds.set_neighbours(table, 0.5, seed=8)
    assert [ds.partner(i) for i in range(n)] != partners.tolist()


def test_neighbour_prob_edges_and_validation():
    base = Digits(None, "val")
    ds = TwoViewDataset(base, identity)
    n = len(ds)
    table = torch.arange(n).flip(0)
    ds.set_neighbours(table, 1.0)
    assert [ds.partner(i) for i in range(n)] == table.tolist()
    ds.set_neighbours(table, 0.0)
    assert [ds.partner(i) for i in range(n)] == list(range(n))
    ds.set_neighbours(None, 1.0)
    assert ds.partner(0) == 0
    with pytest.raises(ValueError, match=r"prob=1.5"):
        ds.set_neighbours(table, 1.5)
    with pytest.raises(ValueError, match=rf"table has 3 entries for {n} instances"):
        ds.set_neighbours(torch.arange(3), 0.5)
    with pytest.raises(ValueError, match=rf"span 0..{n}"):
        ds.set_neighbours(torch.arange(n) + torch.eye(n, dtype=torch.long)[-1], 0.5)
