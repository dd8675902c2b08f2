"""Intra-variance synthesis before the embedding head (SPEC.md §5 default): formula, learnability, gradients.

The references here are written from the equations in the synthesiser's docstring (SPEC §5):
f^j = f + j·α·‖σ‖·normalise(ε^j ⊙ σ), r^j = head(f^j), and the ranking loss
mean [m − (s(r, r^j) − s(r, r^{j+1}))]_+ + mean [max_{c≠y} s(r^j, c) − s(r^j, r) + m_c]_+.
"""
import pytest
import torch
from torch import nn

from deepmetric.losses.synthesis_loss import SynthesisLoss
from deepmetric.synthesis.intra_variance import IntraVarianceSynthesis

D64 = torch.float64


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


class Head(nn.Module):
    """features (B, F) -> unit embeddings (B, d): a Linear layer then L2 (the model's head, in float64)."""

    def __init__(self, f, d, seed=0):
        super().__init__()
        self.fc = nn.Linear(f, d).double()
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            self.fc.weight.copy_(torch.randn(d, f, generator=g, dtype=D64) / f**0.5)
            self.fc.bias.zero_()

    def forward(self, x):
        return unit(self.fc(x))


def batch(b=24, f=20, d=12, c=3, seed=0):
    """Non-negative pooled-like features with a class structure; proxies near the class embeddings."""
    g = torch.Generator().manual_seed(seed)
    head = Head(f, d, seed)
    y = torch.arange(b) % c
    means = torch.rand(c, f, generator=g, dtype=D64) * 2
    feats = torch.relu(means[y] + 0.5 * torch.randn(b, f, generator=g, dtype=D64))
    with torch.no_grad():
        z = head(feats)
        proxies = unit(torch.stack([z[y == k].mean(0) for k in range(c)]) + 0.3 * torch.randn(c, d, generator=g, dtype=D64))
    return feats, y, head, proxies


def reference_points(feats, sel, noise, alpha):
    """f^j from the docstring's equation, sources in ``sel`` order."""
    sigma = feats.std(dim=0, unbiased=False)
    step = noise * sigma
    step = step / step.norm(dim=-1, keepdim=True) * sigma.norm()
    j = torch.arange(1, noise.shape[1] + 1, dtype=D64)[None, :, None]
    return feats[sel][:, None, :] + j * alpha * step


def reference_ranking(r, rj, src_labels, proxies, margin, class_margin):
    """The ranking loss of SPEC §5, loop by loop."""
    m, J, _ = rj.shape
    drops, closes = [], []
    for i in range(m):
        s = torch.stack([unit(rj[i, j]) @ unit(r[i]) for j in range(J)])
        for j in range(J - 1):
            drops.append(torch.relu(margin - (s[j] - s[j + 1])))
        for j in range(J):
            other = max(unit(rj[i, j]) @ unit(proxies[k]) for k in range(len(proxies)) if k != int(src_labels[i]))
            closes.append(torch.relu(other - s[j] + class_margin))
    return torch.stack(drops).mean() + torch.stack(closes).mean()


def test_points_are_the_head_image_of_graded_features():
    feats, y, head, p = batch()
    iv = IntraVarianceSynthesis(num_intensities=3, alpha=0.3, band=(-1.0, 1.0))
    assert iv.space == "features"  # the SPEC §5 default
    z = head(feats)
    out = iv(z, y, generator=torch.Generator().manual_seed(5), proxies=p, features=feats, head=head)
    cos = (z * p[y]).sum(1)
    order = torch.argsort(cos, descending=True, stable=True)
    noise = torch.randn(len(order), 3, feats.shape[1], generator=torch.Generator().manual_seed(5), dtype=D64)
    want = head(reference_points(feats, order, noise, 0.3).reshape(-1, feats.shape[1]))
    torch.testing.assert_close(out.embeddings[out.is_synthetic], want)
    assert out.owner[out.is_synthetic, 0].tolist() == order.repeat_interleave(3).tolist()
    assert out.intensity[out.is_synthetic].tolist() == [1, 2, 3] * len(order)
    torch.testing.assert_close(out.embeddings[:24], z)  # originals first, untouched


def test_similarities_are_set_by_the_network_not_by_alpha():
    """On the embedding sphere s(r, r^j) ≈ 1/√(1+j²α²) whatever the network: the ranking holds by
    construction. Before the head, the same draws give similarities that depend on the head: a head blind
    to the directions the features vary in makes all intensities identical (the ranking is violated and
    the loss must teach the head); a random head gives something else again."""
    feats, y, _, _ = batch(f=20)
    head = Head(20, 64, seed=0)
    p = unit(torch.randn(3, 64, generator=torch.Generator().manual_seed(9), dtype=D64))
    varying = torch.zeros(20, dtype=torch.bool)
    varying[:10] = True
    feats = feats.clone()
    feats[:, ~varying] = 1.0  # these dimensions do not vary in the batch: σ = 0 there, never perturbed
    blind = Head(20, 64, seed=1)
    with torch.no_grad():
        blind.fc.weight[:, varying] = 0.0

    def sims(h, space="features"):
        ivs = IntraVarianceSynthesis(num_intensities=3, alpha=0.5, band=(-1.0, 1.0), space=space)
        with torch.no_grad():
            z = h(feats)
            out = ivs(z, y, generator=torch.Generator().manual_seed(0), proxies=p, features=feats, head=h)
        src = out.owner[out.is_synthetic, 0]
        return (out.embeddings[out.is_synthetic] * z[src]).sum(1).reshape(-1, 3)

    s_blind, s_random = sims(blind), sims(head)
    torch.testing.assert_close(s_blind, torch.ones_like(s_blind))  # no drop at all: ranking violated
    assert float((s_random[:, 0] - s_random[:, 2]).mean()) > 0.01  # this head does see the perturbations
    # the embedding-space construction ignores the network: the same numbers for both heads
    e_blind, e_random = sims(blind, "embedding"), sims(head, "embedding")
    fixed = 1 / torch.sqrt(1 + (0.5 * torch.arange(1.0, 4.0, dtype=D64)) ** 2)  # 0.89, 0.71, 0.55
    torch.testing.assert_close(e_blind.mean(0), fixed, atol=0.06, rtol=0)
    torch.testing.assert_close(e_random.mean(0), fixed, atol=0.06, rtol=0)


def test_ranking_term_trains_the_head_through_the_synthetic_points():
    """Real embeddings detached: the only path from the loss to the head is through the synthetic points
    (killed by the mutation "intra-variance points always detached")."""
    feats, y, head, p = batch()
    base = nn.Module()  # a base loss with proxies and no dependence on anything trainable here
    base.proxies = nn.Parameter(p.clone())
    base.forward = lambda e, l: (e * 0.0).sum()
    iv = IntraVarianceSynthesis(num_intensities=3, alpha=0.4, band=(-1.0, 1.0), margin=0.2, class_margin=0.3, weight=0.7)
    loss = SynthesisLoss(base, iv)
    assert loss.uses_features
    z = head(feats).detach()
    got = loss(z, y, generator=torch.Generator().manual_seed(3), features=feats, head=head)
    (g_head,) = torch.autograd.grad(got, [head.fc.weight])

    cos = (z * p[y]).sum(1)
    order = torch.argsort(cos, descending=True, stable=True)
    noise = torch.randn(len(order), 3, feats.shape[1], generator=torch.Generator().manual_seed(3), dtype=D64)
    w = head.fc.weight.detach().clone().requires_grad_(True)
    rj = unit(reference_points(feats, order, noise, 0.4) @ w.t() + head.fc.bias.detach())
    want = 0.7 * reference_ranking(z[order], rj, y[order], p, 0.2, 0.3)
    (g_want,) = torch.autograd.grad(want, [w])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_head, g_want)
    assert float(g_head.norm()) > 1e-3


def test_gradient_reaches_the_features_through_the_points_unless_detached():
    feats, y, head, p = batch()
    base = nn.Module()
    base.proxies = nn.Parameter(p.clone())
    base.forward = lambda e, l: (e * 0.0).sum()
    grads = {}
    for detach in (False, True):
        f = feats.clone().requires_grad_(True)
        iv = IntraVarianceSynthesis(band=(-1.0, 1.0), margin=0.2, detach=detach)
        out = SynthesisLoss(base, iv)(head(f).detach(), y, generator=torch.Generator().manual_seed(0), features=f, head=head)
        grads[detach] = torch.autograd.grad(out, [f], allow_unused=True)[0]
    assert grads[False] is not None and float(grads[False].norm()) > 1e-4
    assert grads[True] is None or float(grads[True].norm()) == 0.0


def test_needs_features_and_head_and_collapsed_features_synthesise_nothing():
    feats, y, head, p = batch()
    z = head(feats)
    iv = IntraVarianceSynthesis(band=(-1.0, 1.0))
    with pytest.raises(ValueError, match="needs the pooled backbone features and the head"):
        iv(z, y, proxies=p)
    with pytest.raises(ValueError, match=r"features must be \(B, F\) with B=24"):
        iv(z, y, proxies=p, features=feats[:5], head=head)
    with pytest.raises(ValueError, match="space must be one of"):
        IntraVarianceSynthesis(space="pixels")
    same = feats[:1].expand(24, -1)  # collapsed: no spread to grade against
    out = iv(head(same), y, proxies=p, features=same, head=head)
    assert not out.is_synthetic.any()
    one = iv(z[:1], y[:1], proxies=p, features=feats[:1], head=head)
    assert not one.is_synthetic.any()


def test_batchnorm_head_keeps_its_running_statistics():
    feats, y, _, p = batch()
    head = nn.Sequential(nn.Linear(20, 12), nn.BatchNorm1d(12)).double().train()
    z = unit(head(feats))
    before = (head[1].running_mean.clone(), head[1].running_var.clone(), int(head[1].num_batches_tracked))
    out = IntraVarianceSynthesis(band=(-1.0, 1.0))(z, y, proxies=p, features=feats, head=head)
    assert out.is_synthetic.any() and head[1].track_running_stats
    torch.testing.assert_close(head[1].running_mean, before[0])
    torch.testing.assert_close(head[1].running_var, before[1])
    assert int(head[1].num_batches_tracked) == before[2]


def test_ranking_share_of_the_embedding_gradient_is_not_negligible():
    """The issue's measurement in miniature: on one batch, the ranking term's share of the gradient on
    the real embeddings, ‖g_rank‖ / (‖g_base‖ + ‖g_rank‖), next to Proxy-Anchor. The old construction
    (embedding sphere, α 0.2, margin 0.05, γ 1) is a near no-op; the defaults (before the head) are not."""
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    feats, y, head, p = batch(b=60, f=64, d=32, c=6, seed=1)
    pa = ProxyAnchorLoss(6, 32)
    with torch.no_grad():
        pa.proxies.copy_(p.float())
    old = IntraVarianceSynthesis(space="embedding", alpha=0.2, margin=0.05, weight=1.0)
    shares = {}
    for name, synth in (("old", old), ("default", IntraVarianceSynthesis())):
        z = head(feats).detach().requires_grad_(True)
        terms = SynthesisLoss(pa, synth)(z, y, generator=torch.Generator().manual_seed(0), features=feats, head=head, return_terms=True)
        (g_total,) = torch.autograd.grad(terms.loss, [z])
        (g_base,) = torch.autograd.grad(pa(z, y), [z])
        g_aux = g_total - g_base
        shares[name] = float(g_aux.norm() / (g_aux.norm() + g_base.norm()))
    assert shares["old"] < 0.01, shares
    assert shares["default"] > 0.05, shares
