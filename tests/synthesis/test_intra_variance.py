"""Intra-variance synthesis (SPEC.md §5): gating band, intensities, draws, permutation."""
import pytest
import torch

from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.intra_variance import IntraVarianceSynthesis

D64 = torch.float64


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def data(b=30, d=16, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(c, d, generator=g, dtype=D64)
    y = torch.arange(b) % c
    z = unit(p)[y] + 0.9 * torch.randn(b, d, generator=g, dtype=D64) / d**0.5
    return z, y, p


def test_band_gating_shapes_and_formula():
    z, y, p = data()
    iv = IntraVarianceSynthesis(num_intensities=3, alpha=0.3, band=(0.6, 0.8), space="embedding")
    assert SYNTHESISERS.get("intra_variance") is IntraVarianceSynthesis
    g = torch.Generator().manual_seed(0)
    out = iv(z, y, generator=g, proxies=p)
    cos = (unit(z) * unit(p)[y]).sum(1)
    gated = ((cos >= 0.6) & (cos <= 0.8)).nonzero().flatten()
    assert 0 < len(gated) < 30
    src = out.owner[out.is_synthetic, 0]
    assert set(src.tolist()) == set(gated.tolist()) and int(out.is_synthetic.sum()) == 3 * len(gated)
    assert out.intensity[out.is_synthetic].tolist() == [1, 2, 3] * len(gated)
    # Reproduce the draws: directions (m, J, d) for sources by decreasing cosine.
    order = gated[torch.argsort(cos[gated], descending=True, stable=True)]
    dirs = torch.randn(len(order), 3, 16, generator=torch.Generator().manual_seed(0), dtype=D64)
    j = torch.arange(1, 4, dtype=D64)[None, :, None]
    want = unit(unit(z)[order][:, None] + j * 0.3 * unit(dirs)).reshape(-1, 16)
    torch.testing.assert_close(out.embeddings[out.is_synthetic], want)


def test_embedding_space_similarity_to_source_decreases_with_intensity_by_construction():
    z, y, p = data(b=60, d=32)
    out = IntraVarianceSynthesis(num_intensities=4, alpha=0.2, band=(-1.0, 1.0), space="embedding")(z, y, generator=torch.Generator().manual_seed(3), proxies=p)
    syn = out.embeddings[out.is_synthetic].reshape(60, 4, 32)
    src = unit(z)[out.owner[out.is_synthetic, 0].reshape(60, 4)[:, 0]]
    s = (syn * src[:, None]).sum(-1)
    mean = s.mean(0)
    assert (mean[:-1] > mean[1:]).all()
    assert float((s[:, :-1] > s[:, 1:]).double().mean()) > 0.9


def test_empty_band_is_identity_and_guards():
    z, y, p = data()
    out = IntraVarianceSynthesis(band=(0.99, 1.0), space="embedding")(z, y, proxies=p)
    assert not out.is_synthetic.any() and torch.equal(out.embeddings, z)
    with pytest.raises(ValueError, match="band must be"):
        IntraVarianceSynthesis(band=(0.5, 0.2))
    with pytest.raises(ValueError, match="num_intensities .* got 0"):
        IntraVarianceSynthesis(num_intensities=0)


def test_permutation_and_determinism():
    z, y, p = data()
    iv = IntraVarianceSynthesis(band=(0.5, 0.9), space="embedding")
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(2))
    a = iv(z, y, generator=torch.Generator().manual_seed(7), proxies=p)
    b = iv(z[perm], y[perm], generator=torch.Generator().manual_seed(7), proxies=p)
    torch.testing.assert_close(a.embeddings[a.is_synthetic], b.embeddings[b.is_synthetic])
    c = iv(z, y, proxies=p)
    d = iv(z, y, generator=torch.Generator().manual_seed(0), proxies=p)
    assert torch.equal(c.embeddings, d.embeddings)


def test_embedding_space_points_carry_gradient_to_their_sources_unless_detached():
    z, y, p = data()
    grads = {}
    for detach in (False, True):
        zz = z.clone().requires_grad_(True)
        out = IntraVarianceSynthesis(band=(0.5, 0.9), space="embedding", detach=detach)(zz, y, generator=torch.Generator().manual_seed(1), proxies=p)
        w = torch.randn(out.embeddings.shape, generator=torch.Generator().manual_seed(2), dtype=D64)
        (g,) = torch.autograd.grad((out.embeddings[out.is_synthetic] * w[out.is_synthetic]).sum(), [zz], allow_unused=True)
        grads[detach] = torch.zeros_like(z) if g is None else g
    sources = out.owner[out.is_synthetic, 0].unique()
    assert bool((grads[False][sources].norm(dim=1) > 1e-6).all())  # every source gets a gradient from its points
    assert float(grads[True].norm()) == 0.0
