"""Composite losses report their terms (issue 13 item 7): loss = base + weight·aux, base = base loss on the
real rows, and asking for the terms changes nothing in the loss."""
import torch

from deepmetric.losses.build import build_loss
from deepmetric.losses.synthesis_loss import ComposedSynthesisLoss, LossTerms, SynthesisLoss
from deepmetric.synthesis import EmbeddingExpansion, IntraVarianceSynthesis, SphericalExpansion


def batch(seed=0, b=24, d=16, c=4, noise=0.5):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(b) % c
    z = torch.nn.functional.normalize(torch.randn(c, d, generator=g)[y] + noise * torch.randn(b, d, generator=g), dim=1)
    return z, y


def gen():
    return torch.Generator().manual_seed(3)


def check(loss_fn, base, z, y, weight, **ctx):
    plain = loss_fn(z, y, generator=gen(), **ctx)
    terms = loss_fn(z, y, generator=gen(), return_terms=True, **ctx)
    assert isinstance(terms, LossTerms) and terms.weight == weight
    torch.testing.assert_close(terms.loss, plain)
    torch.testing.assert_close(terms.base, base(z, y).detach())
    torch.testing.assert_close(terms.loss.detach(), terms.base + terms.weight * terms.aux)
    assert not terms.base.requires_grad and not terms.aux.requires_grad and terms.loss.requires_grad
    return terms


def test_separate_rule_terms():
    z, y = batch()
    z.requires_grad_(True)
    pa = build_loss("proxy_anchor", num_classes=4, embedding_dim=16)
    with torch.no_grad():  # proxies near the classes, so SEE's selection is not empty
        pa.proxies.copy_(torch.stack([z[y == k].mean(0) for k in range(4)]))
    terms = check(SynthesisLoss(pa, SphericalExpansion(n=4), weight=0.2), pa, z, y, 0.2, epoch=5, epochs=10)
    assert float(terms.aux) > 0


def test_joint_rule_terms_are_what_the_synthetic_rows_add():
    z, y = batch(1, noise=3.0)  # overlapping classes: violated triplets
    z.requires_grad_(True)
    trip = build_loss("triplet", num_classes=4, embedding_dim=16)
    terms = check(SynthesisLoss(trip, EmbeddingExpansion()), trip, z, y, 1.0)
    assert abs(float(terms.aux)) > 1e-6


def test_composed_terms_sum_every_synthesiser():
    z, y = batch(2)
    z.requires_grad_(True)
    pa = build_loss("proxy_anchor", num_classes=4, embedding_dim=16)
    with torch.no_grad():
        pa.proxies.copy_(torch.stack([z[y == k].mean(0) for k in range(4)]))
    iv = IntraVarianceSynthesis(space="embedding", band=(-1.0, 1.0))
    loss = ComposedSynthesisLoss(pa, [(iv, None), (SphericalExpansion(n=4), 0.2)])
    assert not loss.uses_features
    terms = check(loss, pa, z, y, 1.0, epoch=5, epochs=10)
    ranking = SynthesisLoss(pa, iv)(z, y, generator=gen(), return_terms=True)
    # the first synthesiser draws first, as alone: its γ·ranking is part of the sum, the SEE term (>= 0) the rest
    assert float(ranking.aux) > 0 and float(terms.aux) >= float(ranking.weight * ranking.aux) - 1e-5
