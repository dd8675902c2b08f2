"""Embedding Expansion (SPEC §2) and symmetrical synthesis (SPEC §3): chords, reflections, labels, pairing."""
from collections import Counter

import pytest
import torch

from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.embedding_expansion import EmbeddingExpansion
from deepmetric.synthesis.symmetrical import SymmetricalSynthesis

D64 = torch.float64


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([2, 0, 2, 1, 0, 2, 5, 1])
    return torch.randn(len(y), 6, generator=g, dtype=D64) * 2, y


def n_pairs(y):
    return sum(c * (c - 1) // 2 for c in Counter(y.tolist()).values())


def as_multiset(x, y):
    return sorted((int(l), tuple(round(v, 9) for v in row.tolist())) for row, l in zip(x, y))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ee_points_on_the_chord_with_the_parents_label(n):
    z, y = data()
    out = EmbeddingExpansion(n=n, pairs="all")(z, y)
    assert SYNTHESISERS.get("embedding_expansion") is EmbeddingExpansion
    zz, yy, flags = out
    assert int(flags.sum()) == n * n_pairs(y) == n * 5
    torch.testing.assert_close(zz[:8], z)
    syn, own = zz[flags], out.owner[flags]
    assert torch.equal(y[own[:, 0]], y[own[:, 1]]) and torch.equal(yy[flags], y[own[:, 0]])
    u = unit(z)
    for row, (i, j) in zip(syn, own.tolist()):
        # row ∝ (1 − t) u_i + t u_j with t in (0, 1): in the span, positive coefficients, unit norm.
        coef = torch.linalg.lstsq(torch.stack([u[i], u[j]], 1), row[:, None]).solution.squeeze(1)
        torch.testing.assert_close(torch.stack([u[i], u[j]], 1) @ coef, row)
        assert (coef > 0).all()
        assert abs(float(row.norm()) - 1) < 1e-12
    # The k-th point of a pair is at fraction k/(n+1) of the chord (before re-normalisation).
    i, j = own[:n].T
    k = torch.arange(1, n + 1, dtype=D64)[:, None]
    torch.testing.assert_close(syn[:n], unit((k * u[j] + (n + 1 - k) * u[i]) / (n + 1)))


def test_ee_no_pairs_or_n_zero_is_identity():
    z, y = data()
    for out in (EmbeddingExpansion(n=0)(z, y), EmbeddingExpansion()(z[:3], torch.tensor([0, 1, 2]))):
        assert not out.is_synthetic.any()


def test_symmetrical_reflections_preserve_norm_and_angle():
    z, y = data()
    out = SymmetricalSynthesis()(z, y)
    assert SYNTHESISERS.get("symmetrical") is SymmetricalSynthesis
    syn, own = out.embeddings[out.is_synthetic], out.owner[out.is_synthetic]
    assert len(syn) == 2 * n_pairs(y)
    a, p = z[own[:, 0]], z[own[:, 1]]
    torch.testing.assert_close(syn.norm(dim=1), p.norm(dim=1))
    torch.testing.assert_close((unit(syn) * unit(a)).sum(1), (unit(p) * unit(a)).sum(1))
    torch.testing.assert_close(syn, 2 * (p * unit(a)).sum(1, keepdim=True) * unit(a) - p)
    assert torch.equal(out.labels[out.is_synthetic], y[own[:, 0]])


def test_ee_default_pairs_each_class_off_into_disjoint_pairs_in_batch_order():
    # y = [2, 0, 2, 1, 0, 2, 5, 1]: class 2 at rows 0, 2, 5 -> (0, 2), 5 left over; class 0 -> (1, 4);
    # class 1 -> (3, 7); class 5 alone. The released code's layout (rows 2t, 2t+1 of one class) from labels.
    z, y = data()
    out = EmbeddingExpansion(n=2)(z, y)
    own = out.owner[out.is_synthetic]
    assert own.tolist() == [[0, 2], [0, 2], [1, 4], [1, 4], [3, 7], [3, 7]]
    u = unit(z)
    want = torch.cat([unit((k * u[j] + (3 - k) * u[i]) / 3)[None] for i, j in [(0, 2), (1, 4), (3, 7)] for k in (1, 2)])
    torch.testing.assert_close(out.embeddings[out.is_synthetic], want)
    # The layout: 32 per class in a batch of 128 gives 16 pairs per class, 2 x 64 synthetic rows (n = 2).
    yb = torch.arange(4).repeat_interleave(32)
    out = EmbeddingExpansion()(torch.randn(128, 8, generator=torch.Generator().manual_seed(0)), yb)
    assert int(out.is_synthetic.sum()) == 128 and EmbeddingExpansion(pairs="all")(out.embeddings[:128], yb).is_synthetic.sum() == 2 * 4 * 496
    with pytest.raises(ValueError, match="pairs must be one of"):
        EmbeddingExpansion(pairs="adjacent")


@pytest.mark.parametrize("synth", [EmbeddingExpansion(n=2, pairs="all"), SymmetricalSynthesis()])
def test_pairing_by_labels_permutation_gives_the_same_synthetic_multiset(synth):
    z, y = data()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    a, b = synth(z, y), synth(z[perm], y[perm])
    assert as_multiset(a.embeddings[a.is_synthetic], a.labels[a.is_synthetic]) == as_multiset(
        b.embeddings[b.is_synthetic], b.labels[b.is_synthetic]
    )


def test_gradcheck_float64():
    z, y = data()
    z = z[:5].clone().requires_grad_()
    y = y[:5]
    assert torch.autograd.gradcheck(lambda x: EmbeddingExpansion(n=2)(x, y).embeddings, (z,))
    assert torch.autograd.gradcheck(lambda x: SymmetricalSynthesis()(x, y).embeddings, (z,))
    with pytest.raises(ValueError, match="n .* must be an integer >= 0, got -1"):
        EmbeddingExpansion(n=-1)


def test_contract_unpacks_to_three_fields():
    z, y = data()
    zz, yy, flags = SymmetricalSynthesis()(z, y)
    assert len(SymmetricalSynthesis()(z, y)[:2]) == 2 and zz.shape[0] == yy.shape[0] == flags.shape[0]
