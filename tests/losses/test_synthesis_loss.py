"""SynthesisLoss: the combination rules of SPEC §2–5 against hand-composed references."""
import pytest
import torch
from pytorch_metric_learning import losses as pml

from deepmetric.losses.baselines import MultiSimilarityWithMiner
from deepmetric.losses.intra_ranking import IntraClassRankingLoss
from deepmetric.losses.synthesis_loss import SynthesisLoss, base_proxies
from deepmetric.synthesis.embedding_expansion import EmbeddingExpansion
from deepmetric.synthesis.intra_variance import IntraVarianceSynthesis
from deepmetric.synthesis.spherical_expansion import SphericalExpansion
from deepmetric.synthesis.symmetrical import SymmetricalSynthesis


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def data(b=24, d=16, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.arange(b) % c


def pa(c=4, d=16, seed=0):
    torch.manual_seed(seed)  # PML initialises proxies from the global RNG; fix it for the test only
    return pml.ProxyAnchorLoss(c, d, margin=0.1, alpha=32)


def gen(s=0):
    return torch.Generator().manual_seed(s)


def test_zero_synthesis_equals_the_base_loss():
    z, y = data()
    base = pa()
    assert float(SynthesisLoss(base, SphericalExpansion())(z, y, generator=gen(), progress=0.0)) == float(base(z, y))
    ms = pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    y_unique = torch.arange(24)
    assert float(SynthesisLoss(ms, EmbeddingExpansion())(z, y_unique)) == float(ms(z, y_unique))


def test_separate_proxy_rule_is_base_real_plus_lambda_base_synthetic_around_the_base_proxies():
    z, y = data()
    base = pa()
    see = SphericalExpansion(n=4, fraction_schedule=(0.5, 0.5))
    loss = SynthesisLoss(base, see)
    assert loss.weight == 0.2
    got = loss(z, y, generator=gen(3))
    batch = see(z, y, generator=gen(3), proxies=base.proxies)
    syn = batch.is_synthetic
    want = base(z, y) + 0.2 * base(batch.embeddings[syn], batch.labels[syn])
    torch.testing.assert_close(got, want)
    # The synthesiser worked around the base loss's proxies: same cosine to them as the source.
    w = unit(base.proxies.detach())[batch.labels[syn]]
    src = unit(z)[batch.owner[syn, 0]]
    torch.testing.assert_close((batch.embeddings[syn] * w).sum(1), (src * w).sum(1), atol=1e-5, rtol=0)
    # Detached synthetic points still train the proxies through the synthetic term.
    z.requires_grad_(True)
    SynthesisLoss(base, see, weight=1.0)(z, y, generator=gen(3)).backward()
    assert base.proxies.grad.abs().sum() > 0
    assert SynthesisLoss(base, see, weight=0.7).weight == 0.7


def test_separate_without_proxies_uses_real_anchored_synthetic_tuples():
    z, y = data()
    ms = pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    see = SphericalExpansion(n=2, fraction_schedule=(1.0, 1.0))
    got = SynthesisLoss(ms, see)(z, y, generator=gen(1))
    zz, yy, syn = see(z, y, generator=gen(1))
    same = yy[:, None] == yy[None, :]
    real = ~syn
    a1, p = torch.nonzero(same & real[:, None] & syn[None, :], as_tuple=True)
    a2, n = torch.nonzero(~same & real[:, None] & syn[None, :], as_tuple=True)
    torch.testing.assert_close(got, ms(z, y) + 0.2 * ms(zz, yy, (a1, p, a2, n)))


def hphn_reference(z, y, batch, margin):
    """EE's HPHN triplet written from SPEC §2 with plain loops (float64)."""
    x = unit(batch.embeddings.double())
    lab, syn, own = batch.labels, batch.is_synthetic, batch.owner
    dist = lambda i, j: float((x[i] - x[j]).norm())  # noqa: E731
    n_all, nr = len(lab), len(y)
    losses = []
    for a in range(nr):
        pos = [q for q in range(nr) if q != a and lab[q] == lab[a]]
        if not pos:
            continue
        d_ap = max(dist(a, q) for q in pos)
        members = [a] + [r for r in range(nr, n_all) if syn[r] and a in own[r].tolist()]
        d_an = min(dist(m, q) for m in members for q in range(n_all) if lab[q] != lab[m])
        losses.append(max(0.0, d_ap - d_an + margin))
    return sum(losses) / len(losses)


def test_ee_with_triplet_is_the_hard_positive_hard_negative_pair_triplet():
    z, y = data(b=12, d=8, c=3)
    trip = pml.TripletMarginLoss(margin=0.3)
    ee = EmbeddingExpansion(n=2)
    got = SynthesisLoss(trip, ee)(z, y)
    assert float(got) > 0
    assert float(got) == pytest.approx(hphn_reference(z, y, ee(z, y), 0.3), rel=1e-5)


def test_ee_with_a_pair_loss_gets_the_mined_pairs():
    z, y = data(b=12, d=8, c=3)
    ms = pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    ee = EmbeddingExpansion(n=2)
    batch = ee(z, y)
    sim = unit(batch.embeddings) @ unit(batch.embeddings).t()
    torch.testing.assert_close(SynthesisLoss(ms, ee)(z, y), ms(batch.embeddings, batch.labels, ee.mine(sim, batch)))


def test_joint_without_mining_restricts_anchors_to_real_rows():
    z, y = data(b=12, d=8, c=3)
    con = pml.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5)
    sym = SymmetricalSynthesis()
    zz, yy, syn = sym(z, y)
    same = yy[:, None] == yy[None, :]
    eye = torch.eye(len(yy), dtype=torch.bool)
    a1, p = torch.nonzero(same & ~eye & ~syn[:, None], as_tuple=True)
    a2, n = torch.nonzero(~same & ~syn[:, None], as_tuple=True)
    torch.testing.assert_close(SynthesisLoss(con, sym)(z, y), con(zz, yy, (a1, p, a2, n)))
    # With its own miner (MS): the miner's tuples on the enlarged batch, real anchors only.
    msm = MultiSimilarityWithMiner()
    b1, q, b2, m = msm.miner(zz, yy)
    k1, k2 = ~syn[b1], ~syn[b2]
    torch.testing.assert_close(SynthesisLoss(msm, sym)(z, y), msm.loss(zz, yy, (b1[k1], q[k1], b2[k2], m[k2])))
    # Proxy loss: one loss over all rows.
    base = pa(c=3, d=8)
    torch.testing.assert_close(SynthesisLoss(base, sym)(z, y), base(zz, yy))


def test_ranking_rule_is_base_plus_gamma_ranking():
    g = torch.Generator().manual_seed(0)
    base = pa(c=3, d=16)
    y = torch.arange(30) % 3
    z = unit(base.proxies.detach())[y] + 0.3 * torch.randn(30, 16, generator=g)
    iv = IntraVarianceSynthesis(band=(0.3, 0.99), margin=0.08, class_margin=0.2, space="embedding")
    loss = SynthesisLoss(base, iv)
    assert loss.weight == iv.weight and loss.ranking_loss.margin == 0.08 and loss.ranking_loss.class_margin == 0.2
    got = loss(z, y, generator=gen(2))
    batch = iv(z, y, generator=gen(2), proxies=base.proxies)
    assert batch.is_synthetic.any()
    rank = IntraClassRankingLoss(margin=0.08, class_margin=0.2)(
        batch.embeddings, batch.labels, source=batch.owner[:, 0], intensity=batch.intensity, proxies=base.proxies
    )
    assert float(rank) > 0
    torch.testing.assert_close(got, base(z, y) + iv.weight * rank)


def test_argument_errors_and_proxy_lookup():
    with pytest.raises(ValueError, match="weight=0.5 has no meaning"):
        SynthesisLoss(pml.TripletMarginLoss(), EmbeddingExpansion(), weight=0.5)
    with pytest.raises(ValueError, match="combine"):
        SynthesisLoss(pml.TripletMarginLoss(), torch.nn.Identity())
    arc = pml.ArcFaceLoss(5, 8)
    assert base_proxies(arc).shape == (5, 8)
    assert base_proxies(pml.TripletMarginLoss()) is None
