"""SEE synthesiser (SPEC.md §4): geometry, selection, schedule, guards, determinism, permutation."""
import math

import numpy as np
import pytest
import torch

from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.spherical_expansion import SphericalExpansion

D64 = torch.float64


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def data(b=20, d=12, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=D64), torch.arange(b) % c, torch.randn(c, d, generator=g, dtype=D64)


def gen(s=0):
    return torch.Generator().manual_seed(s)


def test_points_are_unit_keep_the_cosine_and_form_a_simplex_with_the_source():
    z, y, p = data()
    see = SphericalExpansion(n=8, fraction_schedule=(1.0, 1.0), schedule="step")
    out = see(z, y, generator=gen(), proxies=p)
    assert SYNTHESISERS.get("see") is SphericalExpansion
    zz, yy, flags = out
    torch.testing.assert_close(zz[:20], z)
    assert flags.sum() == 20 * 8 and not flags[:20].any()
    syn, src = zz[flags], out.owner[flags, 0]
    assert torch.equal(yy[flags], y[src])
    torch.testing.assert_close(syn.norm(dim=1), torch.ones(160, dtype=D64))
    w = unit(p)[y[src]]
    torch.testing.assert_close((syn * w).sum(1), (unit(z)[src] * w).sum(1), atol=1e-5, rtol=0)
    # Residual directions: the source's and its 8 points' form a regular simplex (pairwise −1/8).
    for s in range(20):
        rows = torch.cat([unit(z)[s:s + 1], syn[src == s]])
        wv = unit(p)[y[s]]
        r = unit(rows - (rows @ wv)[:, None] * wv)
        want = torch.full((9, 9), -1 / 8, dtype=D64).fill_diagonal_(1.0)
        torch.testing.assert_close(r @ r.t(), want, atol=1e-9, rtol=0)


def released_count(batch, epoch, epochs, lo=0.0, hi=0.4):
    """The released trainer/sphericalexpansion.py, transcribed: update_threshold (plan 1) then the top-k count."""
    rho = hi - (hi - lo) * ((np.cos(np.pi * min(epoch, 200) / min(epochs, 200)) + 1.0) / 2.0)
    return int(np.round(batch * rho))


def test_count_is_the_released_round_half_even_of_b_rho_per_epoch_with_the_200_epoch_cap():
    see = SphericalExpansion()
    for epochs in (1, 3, 7, 40, 100, 200, 300):
        for epoch in sorted({0, min(1, epochs - 1), epochs // 2, epochs - 1, min(epochs - 1, 199), min(epochs - 1, 200)}):
            for b in (2, 5, 9, 30, 64, 90, 120, 128, 180):
                assert see.count(b, epoch=epoch, epochs=epochs) == released_count(b, epoch, epochs), (b, epoch, epochs)
    # Round half to even, not floor and not half-up: ρ = 0.1 at the midpoint of (0, 0.2) -> B·ρ = 2.5 -> 2, 3.5 -> 4.
    mid = SphericalExpansion(fraction_schedule=(0.0, 0.2))
    assert mid.fraction(epoch=1, epochs=2) == pytest.approx(0.1)
    assert mid.count(25, epoch=1, epochs=2) == 2 and mid.count(35, epoch=1, epochs=2) == 4 and mid.count(15, epoch=1, epochs=2) == 2
    # The released cap: a 300-epoch run reaches ρ1 = 0.4 at epoch 200 and stays there; uncapped it would not.
    assert see.fraction(epoch=200, epochs=300) == pytest.approx(0.4) and see.fraction(epoch=299, epochs=300) == pytest.approx(0.4)
    assert SphericalExpansion(cap_epochs=1000).fraction(epoch=200, epochs=300) == pytest.approx(0.4 * (1 - math.cos(2 * math.pi / 3)) / 2)
    # One value per epoch: progress does not move it.
    assert see.count(120, epoch=5, epochs=10, progress=0.0) == see.count(120, epoch=5, epochs=10, progress=0.99)


@pytest.mark.parametrize("progress,rho", [(0.0, 0.0), (0.5, 0.2), (1.0, 0.4)])
def test_step_schedule_and_top_fraction_selection(progress, rho):
    z, y, p = data(b=20)
    see = SphericalExpansion(n=2, fraction_schedule=(0.0, 0.4), schedule="step")
    assert see.fraction(progress=progress) == pytest.approx(rho)
    out = see(z, y, generator=gen(), proxies=p, progress=progress)
    k = round(rho * 20)
    cos = (unit(z) * unit(p)[y]).sum(1)
    expected = set(torch.argsort(cos, descending=True)[:k].tolist())
    assert set(out.owner[out.is_synthetic, 0].tolist()) == expected
    assert int(out.is_synthetic.sum()) == 2 * k


def test_epoch_schedule_needs_the_epoch_and_validates_its_options():
    z, y, p = data()
    with pytest.raises(ValueError, match="schedule='epoch'.*needs epoch=.*got epoch=None"):
        SphericalExpansion()(z, y, proxies=p, progress=0.5)
    with pytest.raises(ValueError, match="epoch must be in 0..epochs-1, got epoch=10 of epochs=10"):
        SphericalExpansion()(z, y, proxies=p, epoch=10, epochs=10)
    with pytest.raises(ValueError, match="schedule must be one of"):
        SphericalExpansion(schedule="batch")
    with pytest.raises(ValueError, match="cap_epochs must be an integer >= 1"):
        SphericalExpansion(cap_epochs=0)


def test_zero_fraction_is_identity():
    z, y, p = data()
    out = SphericalExpansion()(z, y, generator=gen(), proxies=p, epoch=0, epochs=10)
    assert torch.equal(out.embeddings, z) and not out.is_synthetic.any()


def test_class_centres_without_proxies():
    z, y, _ = data(b=12, c=3)
    out = SphericalExpansion(n=3, fraction_schedule=(1.0, 1.0), schedule="step")(z, y, generator=gen())
    centres = torch.stack([unit(unit(z)[y == c].sum(0)) for c in range(3)])
    syn, src = out.embeddings[out.is_synthetic], out.owner[out.is_synthetic, 0]
    torch.testing.assert_close((syn * centres[y[src]]).sum(1), (unit(z)[src] * centres[y[src]]).sum(1))


def test_guards_dimension_and_parallel_samples():
    z, y, p = data(d=9)
    with pytest.raises(ValueError, match=r"embedding dimension must be >= n \+ 2.*d=9 with n=8"):
        SphericalExpansion(n=8, schedule="step")(z, y, proxies=p, progress=1.0)
    z, y, p = data(d=12)
    z[3] = 5 * p[y[3]]  # z ∥ w: the easiest sample, but no residual direction
    out = SphericalExpansion(n=2, fraction_schedule=(1.0, 1.0), schedule="step")(z, y, generator=gen(), proxies=p)
    assert 3 not in out.owner[:, 0].tolist() and int(out.is_synthetic.sum()) == 2 * 19
    assert torch.isfinite(out.embeddings).all()
    with pytest.raises(ValueError, match="labels must index the 4 proxies"):
        SphericalExpansion(fraction_schedule=(1.0, 1.0), schedule="step")(z, y + 1, proxies=p)
    with pytest.raises(ValueError, match="n .* must be an integer >= 1, got 0"):
        SphericalExpansion(n=0)


def test_fresh_orientation_every_call_but_deterministic_under_a_generator():
    z, y, p = data()
    see = SphericalExpansion(n=4, fraction_schedule=(0.5, 0.5), schedule="step")
    a = see(z, y, generator=gen(5), proxies=p).embeddings
    b = see(z, y, generator=gen(5), proxies=p).embeddings
    g = gen(5)
    c1, c2 = see(z, y, generator=g, proxies=p).embeddings, see(z, y, generator=g, proxies=p).embeddings
    assert torch.equal(a, b) and torch.equal(a, c1)
    assert not torch.allclose(c1, c2)
    torch.testing.assert_close(see(z, y, proxies=p).embeddings, see(z, y, generator=gen(0), proxies=p).embeddings)


def test_permuting_the_batch_permutes_the_synthetic_set():
    z, y, p = data()
    perm = torch.randperm(20, generator=gen(3))
    see = SphericalExpansion(n=3, fraction_schedule=(0.4, 0.4), schedule="step")
    a = see(z, y, generator=gen(1), proxies=p)
    b = see(z[perm], y[perm], generator=gen(1), proxies=p)
    sa = a.embeddings[a.is_synthetic]
    sb = b.embeddings[b.is_synthetic]
    torch.testing.assert_close(sa, sb)  # same rank order, same draws: identical rows
    assert torch.equal(perm[b.owner[b.is_synthetic, 0]], a.owner[a.is_synthetic, 0])


def test_detach_flag():
    z, y, p = data()
    z = z.requires_grad_()
    see = SphericalExpansion(n=2, fraction_schedule=(1.0, 1.0), schedule="step")
    (g0,) = torch.autograd.grad(see(z, y, proxies=p).embeddings[20:].sum(), z)
    assert torch.equal(g0, torch.zeros_like(z))  # detached: synthetic rows send nothing back
    live = SphericalExpansion(n=2, fraction_schedule=(1.0, 1.0), schedule="step", detach=False)(z, y, proxies=p).embeddings[20:]
    assert live.requires_grad
    (g,) = torch.autograd.grad(live.sum(), z)
    assert g.abs().sum() > 0
